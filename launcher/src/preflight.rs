//! The cheap, decisive checks before a launch uploads anything: do the chosen zones exist
//! and offer the GPU (`acceleratorTypes.list`), and does each zone's region have GPU
//! quota for the run (`regions.get`: `NVIDIA_*_GPUS`, or `PREEMPTIBLE_NVIDIA_*_GPUS` for
//! Spot when the project has that quota) and the project `GPUS_ALL_REGIONS`
//! (`projects.get`). `launch` drops zones that cannot start the VM and fails in seconds,
//! with the fix, when none can; `doctor` prints the same findings line by line.
//!
//! Only a definite answer blocks: a check that cannot be made (a missing permission, a
//! region that lists no such quota) is reported and the launch goes on, since the insert
//! itself is the final word.

use std::collections::BTreeMap;

use cloudrun::compute::{quota, zone_region, AcceleratorType, Compute, Quota};

use crate::gpu::Hardware;

/// The project-wide GPU quota.
pub const GLOBAL_GPU_METRIC: &str = "GPUS_ALL_REGIONS";
/// Most zones suggested in a fix.
pub const MAX_SUGGESTED_ZONES: usize = 5;

/// What one zone can do for this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneVerdict {
    Offers,
    LacksGpu,
    NoSuchZone,
    /// `acceleratorTypes.list` failed; the insert will tell.
    Unknown(String),
}

/// One zone's finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneFinding {
    pub zone: String,
    pub verdict: ZoneVerdict,
}

/// One region's GPU quota for the run.
#[derive(Debug, Clone, PartialEq)]
pub enum QuotaVerdict {
    Enough {
        metric: String,
        available: f64,
    },
    TooLow {
        metric: String,
        available: f64,
        limit: f64,
    },
    /// No such quota listed, or `regions.get` failed.
    Unknown(String),
}

/// Everything the preflight found.
#[derive(Debug, Clone, PartialEq)]
pub struct Findings {
    pub accelerator: String,
    pub count: u32,
    pub spot: bool,
    pub zones: Vec<ZoneFinding>,
    /// By region, for the regions of zones that offer the GPU.
    pub regions: BTreeMap<String, QuotaVerdict>,
    /// `GPUS_ALL_REGIONS`, when `projects.get` listed it.
    pub global: Option<Quota>,
    /// Zones that offer the GPU in a region with room for it, in the configured order
    /// (unknown answers count as usable).
    pub usable: Vec<String>,
    /// Zones elsewhere that offer the GPU (for the fix), when none of the chosen can.
    pub suggestions: Vec<String>,
}

impl Findings {
    /// Whether the global quota leaves room for the run.
    pub fn global_ok(&self) -> bool {
        self.global
            .as_ref()
            .is_none_or(|q| q.available() >= f64::from(self.count))
    }

    /// The one message that stops a launch, with its fix; `None` when it may go on.
    pub fn blocker(&self, project: &str) -> Option<String> {
        if !self.global_ok() {
            let q = self.global.as_ref()?;
            return Some(format!(
                "the project's {GLOBAL_GPU_METRIC} quota has {} of {} GPUs left and the run needs {}: request more at {} (quota {GLOBAL_GPU_METRIC}), or end other GPU VMs (`cloudrun-launch ls`)",
                q.available(),
                q.limit,
                self.count,
                quota_console(project)
            ));
        }
        if !self.usable.is_empty() {
            return None;
        }
        let mut why = Vec::new();
        for z in &self.zones {
            match &z.verdict {
                ZoneVerdict::NoSuchZone => why.push(format!("{} does not exist", z.zone)),
                ZoneVerdict::LacksGpu => {
                    why.push(format!("{} does not offer {}", z.zone, self.accelerator))
                }
                ZoneVerdict::Offers | ZoneVerdict::Unknown(_) => {
                    let region = zone_region(&z.zone);
                    if let Some(QuotaVerdict::TooLow {
                        metric,
                        available,
                        limit,
                    }) = self.regions.get(region)
                    {
                        why.push(format!(
                            "{} has {available} of {limit} {metric} left in {region}",
                            z.zone
                        ));
                    }
                }
            }
        }
        let low_quota = self.regions.values().find_map(|v| match v {
            QuotaVerdict::TooLow { metric, .. } => Some(metric.clone()),
            _ => None,
        });
        let mut fix = match low_quota {
            Some(metric) => format!(
                "request {metric} quota of at least {} in the region at {}",
                self.count,
                quota_console(project)
            ),
            None => String::new(),
        };
        if !self.suggestions.is_empty() {
            if !fix.is_empty() {
                fix.push_str(", or ");
            }
            fix.push_str(&format!(
                "pick zones that offer it: --zone {} (or zones = [...] in cloudrun.toml)",
                self.suggestions.join(",")
            ));
        } else if fix.is_empty() {
            fix = format!(
                "list the zones that offer it with `gcloud compute accelerator-types list --project {project} --filter=\"name={}\"` and pass --zone",
                self.accelerator
            );
        }
        Some(format!(
            "no chosen zone can start {} × {}{}: {}. Fix: {fix}",
            self.count,
            self.accelerator,
            if self.spot { " (Spot)" } else { "" },
            why.join("; ")
        ))
    }
}

/// The Cloud console's quota page for the project.
pub fn quota_console(project: &str) -> String {
    format!("https://console.cloud.google.com/iam-admin/quotas?project={project}")
}

/// The regional quota that applies: for Spot the preemptible one when the project has
/// any (Spot VMs use the standard quota otherwise), else the standard one.
pub fn applicable_quota<'a>(quotas: &'a [Quota], metric: &str, spot: bool) -> Option<&'a Quota> {
    if spot {
        let pre = format!("PREEMPTIBLE_{metric}");
        if let Some(q) = quota(quotas, &pre).filter(|q| q.limit > 0.0) {
            return Some(q);
        }
    }
    quota(quotas, metric)
}

fn offers(types: &[AcceleratorType], accelerator: &str) -> bool {
    types.iter().any(|t| t.name == accelerator)
}

/// Run the checks for `hardware` in `zones`.
pub async fn check(
    compute: &dyn Compute,
    project: &str,
    hardware: &Hardware,
    spot: bool,
    zones: &[String],
) -> Findings {
    let accelerator = hardware.gpu.accelerator().to_string();
    let metric = hardware.gpu.quota_metric();
    let need = f64::from(hardware.count);
    let mut found = Vec::new();
    for z in zones {
        let verdict = match compute.list_accelerator_types(project, z).await {
            Ok(None) => ZoneVerdict::NoSuchZone,
            Ok(Some(types)) if offers(&types, &accelerator) => ZoneVerdict::Offers,
            Ok(Some(_)) => ZoneVerdict::LacksGpu,
            Err(e) => ZoneVerdict::Unknown(crate::error_chain(&e)),
        };
        found.push(ZoneFinding {
            zone: z.clone(),
            verdict,
        });
    }
    let mut regions = BTreeMap::new();
    for f in &found {
        if !matches!(f.verdict, ZoneVerdict::Offers | ZoneVerdict::Unknown(_)) {
            continue;
        }
        let region = zone_region(&f.zone).to_string();
        if regions.contains_key(&region) {
            continue;
        }
        let verdict = match compute.get_region(project, &region).await {
            Ok(Some(r)) => match applicable_quota(&r.quotas, metric, spot) {
                Some(q) if q.available() >= need => QuotaVerdict::Enough {
                    metric: q.metric.clone(),
                    available: q.available(),
                },
                Some(q) => QuotaVerdict::TooLow {
                    metric: q.metric.clone(),
                    available: q.available(),
                    limit: q.limit,
                },
                None => QuotaVerdict::Unknown(format!("{region} lists no {metric} quota")),
            },
            Ok(None) => QuotaVerdict::Unknown(format!("region {region} not found")),
            Err(e) => QuotaVerdict::Unknown(crate::error_chain(&e)),
        };
        regions.insert(region, verdict);
    }
    let global = match compute.get_project(project).await {
        Ok(Some(p)) => quota(&p.quotas, GLOBAL_GPU_METRIC).cloned(),
        Ok(None) | Err(_) => None,
    };
    let usable: Vec<String> = found
        .iter()
        .filter(|f| matches!(f.verdict, ZoneVerdict::Offers | ZoneVerdict::Unknown(_)))
        .filter(|f| {
            !matches!(
                regions.get(zone_region(&f.zone)),
                Some(QuotaVerdict::TooLow { .. })
            )
        })
        .map(|f| f.zone.clone())
        .collect();
    let mut findings = Findings {
        accelerator,
        count: hardware.count,
        spot,
        zones: found,
        regions,
        global,
        usable,
        suggestions: Vec::new(),
    };
    if findings.usable.is_empty() {
        findings.suggestions = suggest_zones(compute, project, &findings).await;
    }
    findings
}

/// Zones outside the blocked regions that offer the GPU (`aggregatedList`).
async fn suggest_zones(compute: &dyn Compute, project: &str, f: &Findings) -> Vec<String> {
    let all = match compute.aggregated_accelerator_types(project).await {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!("no zone suggestions: {}", crate::error_chain(&e));
            return Vec::new();
        }
    };
    let mut zones: Vec<String> = all
        .into_iter()
        .filter(|(_, types)| offers(types, &f.accelerator))
        .map(|(z, _)| z)
        .filter(|z| !f.zones.iter().any(|c| &c.zone == z))
        .filter(|z| {
            !matches!(
                f.regions.get(zone_region(z)),
                Some(QuotaVerdict::TooLow { .. })
            )
        })
        .collect();
    // Nearest first: the first chosen zone's region, then its continent, then the rest.
    let first = f.zones.first().map(|z| z.zone.as_str()).unwrap_or_default();
    let continent = |z: &str| z.split('-').next().unwrap_or_default().to_string();
    zones.sort_by_key(|z| {
        (
            zone_region(z) != zone_region(first),
            continent(z) != continent(first),
            z.clone(),
        )
    });
    zones.truncate(MAX_SUGGESTED_ZONES);
    zones
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(metric: &str, limit: f64, usage: f64) -> Quota {
        Quota {
            metric: metric.into(),
            limit,
            usage,
        }
    }

    #[test]
    fn spot_uses_preemptible_quota_only_when_the_project_has_some() {
        let qs = vec![
            q("NVIDIA_L4_GPUS", 4.0, 1.0),
            q("PREEMPTIBLE_NVIDIA_L4_GPUS", 0.0, 0.0),
        ];
        assert_eq!(
            applicable_quota(&qs, "NVIDIA_L4_GPUS", true)
                .unwrap()
                .metric,
            "NVIDIA_L4_GPUS"
        );
        let qs = vec![
            q("NVIDIA_L4_GPUS", 4.0, 1.0),
            q("PREEMPTIBLE_NVIDIA_L4_GPUS", 16.0, 0.0),
        ];
        assert_eq!(
            applicable_quota(&qs, "NVIDIA_L4_GPUS", true)
                .unwrap()
                .metric,
            "PREEMPTIBLE_NVIDIA_L4_GPUS"
        );
        assert_eq!(
            applicable_quota(&qs, "NVIDIA_L4_GPUS", false)
                .unwrap()
                .available(),
            3.0
        );
    }

    fn findings() -> Findings {
        Findings {
            accelerator: "nvidia-l4".into(),
            count: 2,
            spot: false,
            zones: vec![ZoneFinding {
                zone: "us-central1-a".into(),
                verdict: ZoneVerdict::Offers,
            }],
            regions: BTreeMap::from([(
                "us-central1".to_string(),
                QuotaVerdict::TooLow {
                    metric: "NVIDIA_L4_GPUS".into(),
                    available: 1.0,
                    limit: 1.0,
                },
            )]),
            global: None,
            usable: vec![],
            suggestions: vec!["europe-west4-a".into()],
        }
    }

    #[test]
    fn a_blocked_launch_names_the_quota_and_the_zones_that_would_work() {
        let b = findings().blocker("p-123456").unwrap();
        assert!(
            b.contains("1 of 1 NVIDIA_L4_GPUS left in us-central1"),
            "{b}"
        );
        assert!(b.contains("quotas?project=p-123456"), "{b}");
        assert!(b.contains("--zone europe-west4-a"), "{b}");
        let mut ok = findings();
        ok.usable = vec!["us-central1-a".into()];
        assert_eq!(ok.blocker("p-123456"), None);
        ok.global = Some(q(GLOBAL_GPU_METRIC, 1.0, 0.0));
        let b = ok.blocker("p-123456").unwrap();
        assert!(b.contains("GPUS_ALL_REGIONS quota has 1 of 1"), "{b}");
    }
}
