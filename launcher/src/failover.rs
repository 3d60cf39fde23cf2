//! `instances.insert` with zone failover. Each zone gets one insert with its own
//! `requestId` (the HTTP call itself is retried by `RestCompute` with that same id, so a
//! retried insert never makes two VMs), then the Operation is waited on until DONE and its
//! late `error.errors` read — capacity stock-outs usually arrive that way, not as HTTP
//! errors. What an error means:
//!
//! - `ZONE_RESOURCE_POOL_EXHAUSTED(_WITH_DETAILS)`, `insufficientCapacity`,
//!   `resourceNotReady`, `UNSUPPORTED_OPERATION`, a GPU or machine type the zone lacks:
//!   try the next zone;
//! - `QUOTA_EXCEEDED` / `quotaExceeded`: regional quotas skip the rest of that region and
//!   say which quota and how to ask for more; `GPUS_ALL_REGIONS` stops the search;
//! - anything else: stop, with the error.
//!
//! Each attempt is reported as one line through a callback.

use std::time::Duration;

use cloudrun::compute::{Compute, ComputeError, Operation, OperationErrorItem};

/// How long one zone's insert Operation may take to reach DONE, in seconds: a GPU VM is
/// usually RUNNING within a minute or two; SkyPilot waits 300 s.
pub const OPERATION_DEADLINE_SECS: u64 = 300;

/// What to do after a zone failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The zone cannot serve now; try the next.
    NextZone(String),
    /// A regional quota is spent: skip the other zones of this region.
    NextRegion { why: String, advice: String },
    /// No zone can work (a global quota); stop.
    Stop { why: String, advice: String },
    /// Not a placement problem (bad request, permissions): stop.
    Fatal(String),
}

/// Where the VM was created.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub zone: String,
    pub operation: Operation,
}

/// No zone worked.
#[derive(Debug, thiserror::Error)]
#[error("could not create the VM: {summary}{}", .advice.as_ref().map(|a| format!("\n{a}")).unwrap_or_default())]
pub struct FailoverError {
    pub summary: String,
    /// How to fix it (quota requests), when known.
    pub advice: Option<String>,
    /// Per zone: what happened.
    pub attempts: Vec<(String, String)>,
}

fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map(|(r, _)| r).unwrap_or(zone)
}

const NEXT_ZONE_CODES: [&str; 8] = [
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "UNSUPPORTED_OPERATION",
    "RESOURCE_NOT_READY",
    "RESOURCE_OPERATION_RATE_EXCEEDED",
    "insufficientCapacity",
    "resourceNotReady",
    "RESOURCE_NOT_FOUND",
];

/// The quota name in a message like `Quota 'NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region us-central1.`
fn quota_name(item: &OperationErrorItem) -> Option<String> {
    for d in &item.error_details {
        if let Some(m) = d["quotaInfo"]["metricName"].as_str() {
            let name = d["quotaInfo"]["limitName"].as_str().unwrap_or(m);
            return Some(name.to_string());
        }
    }
    let m = &item.message;
    let start = m.find("Quota '")? + "Quota '".len();
    let end = m[start..].find('\'')? + start;
    Some(m[start..end].to_string())
}

fn quota_verdict(item: &OperationErrorItem, project: &str, zone: &str) -> Verdict {
    let name = quota_name(item).unwrap_or_else(|| "a quota".into());
    let url = format!("https://console.cloud.google.com/iam-admin/quotas?project={project}");
    if item.message.contains("GPUS_ALL_REGIONS") || name.contains("GPUS_ALL_REGIONS") {
        return Verdict::Stop {
            why: format!("the project-wide GPU quota GPUS_ALL_REGIONS is spent ({})", item.message.trim()),
            advice: format!(
                "Every region would fail. Ask for a higher GPUS_ALL_REGIONS limit at {url} (filter on \"GPUs (all regions)\"); new projects start at 0 and increases are reviewed within hours to days."
            ),
        };
    }
    let region = region_of(zone);
    Verdict::NextRegion {
        why: format!("quota {name} spent in {region} ({})", item.message.trim()),
        advice: format!(
            "Quota {name} is spent in region {region}. Ask for more at {url} (filter on {name}; Spot VMs draw on the PREEMPTIBLE_ variant), or run in another region with --zone."
        ),
    }
}

/// Classify an Operation's errors.
pub fn classify_operation(errors: &[OperationErrorItem], project: &str, zone: &str) -> Verdict {
    if let Some(q) = errors.iter().find(|e| e.code == "QUOTA_EXCEEDED") {
        return quota_verdict(q, project, zone);
    }
    if let Some(e) = errors
        .iter()
        .find(|e| NEXT_ZONE_CODES.contains(&e.code.as_str()))
    {
        return Verdict::NextZone(format!("{}: {}", e.code, e.message.trim()));
    }
    Verdict::Fatal(
        errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message.trim()))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// Classify an HTTP-level insert error (after the client's own retries).
pub fn classify_http(err: &ComputeError, project: &str, zone: &str) -> Verdict {
    match err {
        ComputeError::Api {
            status,
            reason,
            message,
            ..
        } => {
            let item = OperationErrorItem {
                code: reason.clone(),
                message: message.clone(),
                ..OperationErrorItem::default()
            };
            if reason == "quotaExceeded" || message.contains("Quota '") {
                return quota_verdict(&item, project, zone);
            }
            if NEXT_ZONE_CODES.contains(&reason.as_str()) {
                return Verdict::NextZone(format!("{reason}: {message}"));
            }
            // A GPU, machine type or disk type this zone does not offer.
            let zonal_resource = ["acceleratorTypes", "machineTypes", "diskTypes"]
                .iter()
                .any(|r| message.contains(r));
            if matches!(status, 400 | 403 | 404) && zonal_resource {
                return Verdict::NextZone(format!("{reason}: {message}"));
            }
            if *status == 503 || *status == 429 {
                return Verdict::NextZone(format!("HTTP {status} {reason}: {message}"));
            }
            Verdict::Fatal(err.to_string())
        }
        other => Verdict::Fatal(other.to_string()),
    }
}

/// Try `zones` in order until one creates the VM. `body_for(zone)` is the insert body;
/// `report(line)` gets one line per attempt.
pub async fn insert_with_failover(
    compute: &dyn Compute,
    project: &str,
    instance: &str,
    zones: &[String],
    body_for: &(dyn Fn(&str) -> serde_json::Value + Sync),
    report: &mut (dyn FnMut(String) + Send),
    op_deadline: Duration,
) -> Result<Placed, FailoverError> {
    let mut attempts = Vec::new();
    let mut skipped_regions: Vec<String> = Vec::new();
    let mut advice: Option<String> = None;
    for (i, zone) in zones.iter().enumerate() {
        let left = zones.len() - i - 1;
        if skipped_regions.iter().any(|r| r == region_of(zone)) {
            report(format!(
                "{zone}: skipped (quota spent in {})",
                region_of(zone)
            ));
            attempts.push((zone.clone(), "skipped: regional quota".into()));
            continue;
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        let verdict = match compute
            .insert_instance(project, zone, &body_for(zone), &request_id)
            .await
        {
            Err(e) => classify_http(&e, project, zone),
            Ok(op) => {
                match cloudrun::compute::wait_until_done(compute, project, zone, op, op_deadline)
                    .await
                {
                    Ok(done) if done.errors().is_empty() => {
                        report(format!("{zone}: created {instance}"));
                        return Ok(Placed {
                            zone: zone.clone(),
                            operation: done,
                        });
                    }
                    Ok(done) => {
                        let v = classify_operation(done.errors(), project, zone);
                        // A failed insert may leave a half-made instance behind; remove it so
                        // that it neither bills nor blocks the name in another zone.
                        cleanup(compute, project, zone, instance).await;
                        v
                    }
                    Err(e @ ComputeError::OperationTimeout { .. }) => Verdict::Fatal(format!(
                        "{e}; the VM may still appear: check `cloudrun-launch ls` and `sweep`"
                    )),
                    Err(e) => classify_http(&e, project, zone),
                }
            }
        };
        let next = if left > 0 {
            ", trying the next zone"
        } else {
            ""
        };
        match verdict {
            Verdict::NextZone(why) => {
                report(format!("{zone}: {}{next}", short(&why)));
                attempts.push((zone.clone(), why));
            }
            Verdict::NextRegion { why, advice: a } => {
                report(format!("{zone}: {}{next}", short(&why)));
                skipped_regions.push(region_of(zone).to_string());
                attempts.push((zone.clone(), why));
                advice = Some(a);
            }
            Verdict::Stop { why, advice: a } => {
                report(format!("{zone}: {}; stopping", short(&why)));
                attempts.push((zone.clone(), why.clone()));
                return Err(FailoverError {
                    summary: why,
                    advice: Some(a),
                    attempts,
                });
            }
            Verdict::Fatal(why) => {
                report(format!("{zone}: failed: {}", short(&why)));
                attempts.push((zone.clone(), why.clone()));
                return Err(FailoverError {
                    summary: why,
                    advice: None,
                    attempts,
                });
            }
        }
    }
    Err(FailoverError {
        summary: format!(
            "no zone had room: tried {} ({}); try again later, add zones with --zone, or use --spot / another GPU",
            zones.join(", "),
            attempts
                .iter()
                .map(|(z, why)| format!("{z}: {}", short(why)))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        advice,
        attempts,
    })
}

/// The first line of a reason, at most this many characters, for one-line reports.
const REPORT_LINE_MAX_CHARS: usize = 160;

fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() > REPORT_LINE_MAX_CHARS {
        format!(
            "{}…",
            line.chars().take(REPORT_LINE_MAX_CHARS).collect::<String>()
        )
    } else {
        line.to_string()
    }
}

async fn cleanup(compute: &dyn Compute, project: &str, zone: &str, instance: &str) {
    if let Ok(Some(_)) = compute.get_instance(project, zone, instance).await {
        let rid = uuid::Uuid::new_v4().to_string();
        if let Err(e) = compute.delete_instance(project, zone, instance, &rid).await {
            tracing::warn!("could not delete the half-created {instance} in {zone}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(code: &str, msg: &str) -> OperationErrorItem {
        OperationErrorItem {
            code: code.into(),
            message: msg.into(),
            ..OperationErrorItem::default()
        }
    }

    #[test]
    fn late_errors_are_classified() {
        assert!(matches!(
            classify_operation(
                &[item("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "no room")],
                "p",
                "us-central1-a"
            ),
            Verdict::NextZone(_)
        ));
        match classify_operation(
            &[item(
                "QUOTA_EXCEEDED",
                "Quota 'NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region us-central1.",
            )],
            "p",
            "us-central1-a",
        ) {
            Verdict::NextRegion { advice, .. } => {
                assert!(
                    advice.contains("NVIDIA_L4_GPUS") && advice.contains("us-central1"),
                    "{advice}"
                );
                assert!(advice.contains("console.cloud.google.com/iam-admin/quotas?project=p"));
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            classify_operation(
                &[item(
                    "QUOTA_EXCEEDED",
                    "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally."
                )],
                "p",
                "z-a-b"
            ),
            Verdict::Stop { .. }
        ));
        assert!(matches!(
            classify_operation(&[item("INVALID_FIELD", "bad")], "p", "z"),
            Verdict::Fatal(_)
        ));
    }

    #[test]
    fn quota_details_name_the_limit() {
        let mut q = item("QUOTA_EXCEEDED", "Quota exceeded");
        q.error_details = vec![
            serde_json::json!({"quotaInfo":{"metricName":"compute.googleapis.com/nvidia_h100_gpus","limitName":"NVIDIA-H100-GPUS-per-project-region","dimensions":{"region":"us-east4"},"limit":0}}),
        ];
        assert_eq!(
            quota_name(&q).as_deref(),
            Some("NVIDIA-H100-GPUS-per-project-region")
        );
    }
}
