//! The launch itself, after the plan: resolve the image family, check that the zones offer
//! the GPU and have quota for it ([`preflight`]), push the code, upload the
//! agent if that object is missing, write the spec and a `launching` status, insert with
//! zone failover, record where the VM landed, and print how to follow it.
//!
//! Every outside service comes in through [`Deps`], so tests run this against a local
//! store and the testkit Compute Engine emulator.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cloudrun::compute::{Compute, ComputeError};
use cloudrun::run_store::{RunStore, RunStoreError};
use cloudrun::status::{InstanceRef, RunStatus};
use cloudrun::storage::{PutOptions, Storage, StorageError};

use crate::body;
use crate::failover::{self, FailoverError, Placed, OPERATION_DEADLINE_SECS};
use crate::near_data;
use crate::plan::LaunchPlan;
use crate::preflight;

/// What the code push produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSummary {
    pub files: u64,
    pub total_bytes: u64,
    pub bytes_uploaded: u64,
}

/// Pushes the project tree and writes the run's manifest (the sync engine behind it).
/// (`?Send`: the sync engine's push future is not provably `Send`; launches run on
/// `block_on`, so nothing needs it to be.)
#[async_trait(?Send)]
pub trait CodePusher: Send + Sync {
    async fn push(
        &self,
        storage: Arc<dyn Storage>,
        plan: &LaunchPlan,
    ) -> Result<PushSummary, LaunchError>;
}

/// The outside world a launch talks to.
pub struct Deps {
    pub storage: Arc<dyn Storage>,
    pub compute: Arc<dyn Compute>,
    pub pusher: Box<dyn CodePusher>,
}

/// Why a launch failed after the plan was valid.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("image family {family:?} was not found in project {project} (it was probably retired): list current ones with `gcloud compute images list --project {project} --no-standard-images --filter=\"family~common-cu\"` and set image_family in cloudrun.toml or pass --image-family")]
    ImageFamilyRetired { project: String, family: String },
    #[error("image family {family:?} in {project}: {source}")]
    Image {
        project: String,
        family: String,
        #[source]
        source: ComputeError,
    },
    /// The preflight found no zone that can start the VM (nothing was uploaded).
    #[error("{0}; nothing was uploaded or created")]
    Preflight(String),
    #[error("pushing the code failed: {0}")]
    Push(String),
    #[error("{what}: {source}")]
    Storage {
        what: String,
        #[source]
        source: StorageError,
    },
    #[error("reading the agent binary {path}: {source}")]
    Agent {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Body(#[from] body::MetadataTooBig),
    #[error(transparent)]
    Failover(#[from] FailoverError),
    #[error(transparent)]
    NoNearZone(#[from] near_data::NoNearZone),
    #[error(transparent)]
    Docs(#[from] RunStoreError),
}

/// A created run.
#[derive(Debug, Clone, PartialEq)]
pub struct Launched {
    pub run_id: cloudrun::RunId,
    pub instance: InstanceRef,
    pub usd_per_hour: f64,
    pub deadline: DateTime<Utc>,
}

fn storage_err(what: impl Into<String>) -> impl FnOnce(StorageError) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Storage { what, source }
}

/// Upload the agent to `agent/<sha256>/cloudrun-agent` unless that object exists.
/// Returns whether it was uploaded.
pub async fn upload_agent(storage: &dyn Storage, plan: &LaunchPlan) -> Result<bool, LaunchError> {
    let key = plan.layout.agent_binary(&plan.agent.sha256);
    if let Some(meta) = storage
        .head(&key)
        .await
        .map_err(storage_err(format!("checking {key}")))?
    {
        if meta.size == plan.agent.size {
            return Ok(false);
        }
    }
    match storage
        .put_file(&key, &plan.agent.path, &PutOptions::create_only())
        .await
    {
        Ok(_) => Ok(true),
        // Someone uploaded the same content-addressed binary meanwhile.
        Err(StorageError::PreconditionFailed { .. }) => Ok(false),
        Err(e) => Err(storage_err(format!("uploading the agent to {key}"))(e)),
    }
}

/// Run the launch. `report` gets progress lines (stderr); the return value is printed by
/// the caller (stdout).
pub async fn launch(
    plan: &LaunchPlan,
    deps: &Deps,
    now: DateTime<Utc>,
    report: &mut (dyn FnMut(String) + Send),
) -> Result<Launched, LaunchError> {
    // 1. The image first: a retired family should fail before anything is uploaded.
    let image = deps
        .compute
        .image_from_family(&plan.image_project, &plan.image_family)
        .await
        .map_err(|e| match e.status() {
            Some(404) => LaunchError::ImageFamilyRetired {
                project: plan.image_project.clone(),
                family: plan.image_family.clone(),
            },
            _ => LaunchError::Image {
                project: plan.image_project.clone(),
                family: plan.image_family.clone(),
                source: e,
            },
        })?;
    let source_image = if image.self_link.is_empty() {
        format!(
            "projects/{}/global/images/{}",
            plan.image_project, image.name
        )
    } else {
        image.self_link.clone()
    };
    report(format!(
        "image: {} (family {})",
        image.name, plan.image_family
    ));
    // Check the body (metadata limits) before uploading anything.
    body::instance_body(
        plan,
        plan.zones.first().map(String::as_str).unwrap_or("-"),
        &source_image,
    )?;

    // The cheap, decisive checks: zones that offer the GPU, quota for it. A run that
    // cannot start fails here, in seconds, before anything is uploaded.
    let findings = preflight::check(
        deps.compute.as_ref(),
        &plan.project,
        &plan.hardware,
        plan.spot,
        &plan.zones,
    )
    .await;
    if let Some(why) = findings.blocker(&plan.project) {
        return Err(LaunchError::Preflight(why));
    }
    for z in &findings.zones {
        if !findings.usable.contains(&z.zone) {
            report(format!(
                "zone {}: skipped ({})",
                z.zone,
                match &z.verdict {
                    preflight::ZoneVerdict::NoSuchZone => "no such zone".to_string(),
                    preflight::ZoneVerdict::LacksGpu =>
                        format!("does not offer {}", findings.accelerator),
                    _ => "no GPU quota left in its region".to_string(),
                }
            ));
        }
    }
    let usable = findings.usable.clone();

    // 2. Code, agent, spec, status.
    let pushed = deps.pusher.push(deps.storage.clone(), plan).await?;
    report(format!(
        "code: {} files, {} bytes ({} uploaded) from {}",
        pushed.files,
        pushed.total_bytes,
        pushed.bytes_uploaded,
        plan.project_dir.display()
    ));
    if upload_agent(deps.storage.as_ref(), plan).await? {
        report(format!(
            "agent: uploaded {}",
            &plan.agent.sha256[..12.min(plan.agent.sha256.len())]
        ));
    }
    let docs = RunStore::new(deps.storage.clone(), plan.layout.clone());
    docs.put_spec(&plan.spec).await?;
    let mut status = RunStatus::launching(plan.run_id.clone(), now, plan.estimate.usd_per_hour);
    status.budget_usd = plan.spec.policies.budget_usd;
    docs.put_status(&status).await?;

    // 3. The zones: near the data first (the bucket's location, read once).
    let zones = match deps.storage.bucket_location().await {
        Ok(Some(bucket)) => {
            let order = near_data::order(plan, &bucket, pushed.total_bytes)?;
            report(format!(
                "data: bucket {} in {} ({})",
                plan.bucket, bucket.location, bucket.location_type
            ));
            if !order.far.is_empty() {
                report(format!(
                    "zones on another continent than the data, not tried without --any-region: {}",
                    order.far.join(", ")
                ));
            }
            for line in &order.lines {
                report(format!("  {line}"));
            }
            // The preflight's verdicts still hold: a zone it skipped stays skipped.
            order
                .zones
                .into_iter()
                .filter(|z| usable.contains(z))
                .collect()
        }
        Ok(None) => usable.clone(),
        Err(e) => {
            report(format!(
                "warning: could not read the bucket's location ({e}); trying the zones in their default order"
            ));
            usable.clone()
        }
    };

    // 4. The VM.
    let body_for = |zone: &str| {
        body::instance_body(plan, zone, &source_image).unwrap_or(serde_json::Value::Null)
    };
    let placed: Placed = failover::insert_with_failover(
        deps.compute.as_ref(),
        &plan.project,
        &plan.instance_name,
        &zones,
        &body_for,
        report,
        Duration::from_secs(OPERATION_DEADLINE_SECS),
    )
    .await?;

    // 5. Record where it landed (the agent overwrites the status once it runs).
    let instance = InstanceRef {
        project: plan.project.clone(),
        zone: placed.zone.clone(),
        name: plan.instance_name.clone(),
    };
    docs.put_spec(&plan.spec_for_zone(&placed.zone)).await?;
    // Only if the agent has not written its own status yet: losing this race to the
    // agent is fine, its status is newer.
    if let Ok(Some(current)) = docs.status(&plan.run_id).await {
        let mut s = current.doc;
        if s.phase == cloudrun::status::Phase::Launching && s.instance.is_none() {
            s.instance = Some(instance.clone());
            let _ = docs.put_status_if(&s, current.generation).await;
        }
    }
    Ok(Launched {
        run_id: plan.run_id.clone(),
        usd_per_hour: plan.quote_for_zone(&placed.zone).usd_per_hour,
        deadline: plan.hard_deadline(&placed.zone, now),
        instance,
    })
}

/// The lines printed (stdout) after a launch: the price is the landing zone's.
pub fn summary(plan: &LaunchPlan, l: &Launched) -> String {
    let e = plan.quote_for_zone(&l.instance.zone);
    let price = if e.is_complete() {
        format!("${:.2}/h ({})", l.usd_per_hour, e.describe())
    } else {
        format!("at least ${:.2}/h ({})", l.usd_per_hour, e.describe())
    };
    let mut s = format!(
        "run      {}\nvm       {} in {} ({}, {} × {}{})\nprice    {price}\n",
        l.run_id,
        l.instance.name,
        l.instance.zone,
        plan.hardware.machine_type,
        plan.hardware.count,
        plan.hardware.gpu.accelerator(),
        if plan.spot { ", Spot" } else { "" },
    );
    if let Some(b) = plan.spec.policies.budget_usd {
        s.push_str(&format!(
            "budget   ${b:.2} buys {}{}\n",
            cloudrun::billing::format_secs(plan.agent_max_secs_for(&l.instance.zone)),
            if e.estimate {
                " at the estimated price (enforced with that figure, no margin)"
            } else {
                ""
            }
        ));
    }
    s.push_str(&format!(
        "deadline {} (the cloud deletes the VM by then at the latest)\nfollow   cloudrun-launch logs -f {}\nstatus   cloudrun-launch status {}\n",
        l.deadline.format("%Y-%m-%d %H:%M UTC"),
        l.run_id,
        l.run_id
    ));
    s
}

/// One line per zone to try: its price and where the figure comes from.
pub fn zone_price_lines(plan: &LaunchPlan) -> Vec<String> {
    plan.zone_quotes
        .iter()
        .map(|(z, e)| {
            let budget = plan
                .spec
                .policies
                .budget_usd
                .map(|b| {
                    format!(
                        "; ${b:.2} buys {}",
                        cloudrun::billing::format_secs(plan.agent_max_secs_for(z))
                    )
                })
                .unwrap_or_default();
            format!(
                "{z}: {}${:.2}/h ({}){budget}",
                if e.is_complete() { "" } else { "at least " },
                e.usd_per_hour,
                e.describe()
            )
        })
        .collect()
}
