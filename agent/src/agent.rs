//! The run, in order: restart state, pull, the wait for the plan's GPUs
//! ([`crate::gpu_wait`]), setup, job, and the single teardown. [`run_agent`] is that order
//! and the restart dispatch; everything it talks to is handed in ([`Deps`]), so tests run
//! it against a local store, a fake Compute and a scripted GPU. Its parts:
//!
//! | module | owns |
//! | --- | --- |
//! | `wiring` | the agent's state and its background tasks (log shipper, metrics, heartbeat writer, watchers) |
//! | `job` | pull, GPU wait, setup and job; adopting a job after a restart |
//! | `supervisor` | the supervisor loop: one task that holds the job's process, receives the watchers' events ([`crate::watch`]) and asks the policies on every tick |
//! | `final_sync` | stopping the job and the final sync, to a verdict |
//! | `teardown` | what happens after the sync, decided as a pure plan of steps and acted on by one executor |
//! | `steps` | what each teardown step does: keep the disk, final status with receipt, webhook, delete record, delete or power-off, the fate |
//!
//! Teardown is the last step and runs once per process, idempotent across restarts:
//! SIGTERM to the job's group, grace, SIGKILL; final sync of outputs, logs and metrics,
//! verified, all three within the spec's `policies.final_sync_secs` (less after a
//! preemption); final `status.json` with end, receipt and any kept disk; the webhook; then
//! the delete (or, if it keeps failing, a power-off) through [`crate::vm`].
//!
//! When the final sync could not be verified (the store down or wrong), the boot disk is
//! kept first (`setDiskAutoDelete false`), so nothing is lost with the VM; waiting longer
//! for the store would only bill GPU time. The final status is then the only place that
//! names the kept disk, so it is retried for [`KEPT_DISK_STATUS_SECS`] before the VM is
//! deleted regardless. The delete happens once, after the keep-disk call.

mod final_sync;
mod job;
mod steps;
mod supervisor;
mod teardown;
mod wiring;

use std::path::PathBuf;
use std::sync::Arc;

use cloudrun::spec::RunSpec;
use cloudrun::status::{EndInfo, EndReason, VmFate};
use cloudrun::{Layout, Storage};

use crate::clock::Clock;
use crate::gpu::GpuProbe;
use crate::logs::LogSinks;
use crate::metadata::MetadataClient;
use crate::state::Resume;
use crate::transfer::{CodeSource, Outputs};
use crate::webhook::WebhookEvent;
use wiring::Agent;

pub use crate::vm::{VmHandle, OPERATION_WAIT_SECS};
pub use final_sync::{HEARTBEAT_DRAIN_SECS, PREEMPTED_FINAL_SYNC_SECS, PREEMPTED_GRACE_SECS};
pub use steps::{KEPT_DISK_STATUS_SECS, VM_FATE_STATUS_SECS};
pub use supervisor::POLICY_TICK_MILLIS;

/// How long the output tails may take to read the last of the job's output after a
/// process ended (or its group was killed).
pub const READER_DRAIN_SECS: u64 = 5;
/// File in the state dir where the shim records the job's exit.
pub const JOB_EXIT_FILE_NAME: &str = "exit-job.json";
/// File in the state dir where the shim records the setup command's exit.
pub const SETUP_EXIT_FILE_NAME: &str = "exit-setup.json";
/// File in the state dir naming the setup's shim (pid, start time) while it runs, so an
/// agent restarted during setup ends the old one before starting setup again.
pub const SETUP_PROCESS_FILE_NAME: &str = "setup-process.json";

/// Where the agent keeps things on this machine.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The code root: the manifest is materialised here.
    pub work_dir: PathBuf,
    /// Restart state, mirror states and the local job log.
    pub state_dir: PathBuf,
    /// The program that creates a missing `VM_USER`.
    pub useradd: PathBuf,
    /// Console and echo settings for the job's lines (the local file is set from
    /// `state_dir`).
    pub sinks: LogSinks,
    /// Treat SIGTERM to the agent (the VM shutting down) as a stop. Off in tests.
    pub handle_sigterm: bool,
    /// The `cloudrun-agent` executable, which holds each job as `job-shim` (so the job
    /// outlives a crashed agent and its exit code is kept).
    pub job_shim: PathBuf,
}

/// Everything the agent talks to.
#[derive(Debug, Clone)]
pub struct Deps {
    pub storage: Arc<dyn Storage>,
    pub layout: Layout,
    pub code: Arc<dyn CodeSource>,
    /// `None`: mirror the spec's output dirs with the sync engine.
    pub outputs: Option<Arc<dyn Outputs>>,
    pub gpu: Arc<dyn GpuProbe>,
    pub clock: Arc<dyn Clock>,
    pub vm: Option<VmHandle>,
    /// For the preemption watch; `None` for local runs.
    pub metadata: Option<Arc<MetadataClient>>,
}

/// How the run ended and what became of the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub end: EndInfo,
    /// `None` when the delete and the power-off both failed (the cloud's
    /// `maxRunDuration` deletes the VM later).
    pub vm: Option<VmFate>,
    pub kept_disk: Option<String>,
    /// Outputs and logs reached the store, verified.
    pub final_sync_verified: bool,
}

impl Outcome {
    /// The process exit code for this outcome (the contract's per-reason codes).
    pub fn exit_code(&self) -> i32 {
        self.end.reason.exit_code()
    }
}

/// Why the agent could not even start supervising.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An end with no exit code or signal.
fn end_info(reason: EndReason, message: impl Into<String>) -> EndInfo {
    EndInfo {
        reason,
        exit_code: None,
        signal: None,
        message: message.into(),
    }
}

/// Run `spec` to its end and tear down. Returns once the delete was sent (VM) or the run
/// is over (local).
pub async fn run_agent(
    spec: RunSpec,
    settings: Settings,
    deps: Deps,
) -> Result<Outcome, AgentError> {
    let (state, state_path, resume) = wiring::restart_state(&spec, &settings, deps.clock.as_ref())?;
    if let (Resume::Done { end, vm, kept_disk }, None) = (&resume, &deps.vm) {
        // A local run that is over: the recorded outcome, at once.
        return Ok(Outcome {
            end: end.clone(),
            vm: Some(*vm),
            kept_disk: kept_disk.clone(),
            final_sync_verified: true,
        });
    }
    if resume == Resume::Fresh {
        // Another run's output, or none: this run's output files start empty.
        wiring::forget_output(&settings.state_dir);
    }
    let mut agent = Agent::start(spec, settings, deps, state, state_path).await;
    let (end, job) = match resume {
        Resume::Fresh => {
            agent.webhook(WebhookEvent::Started, None, "agent started");
            agent.prepare_and_run().await
        }
        Resume::Prepare => {
            agent.note("restarted while preparing: pulling and running setup again");
            agent.end_leftover_setup();
            agent.prepare_and_run().await
        }
        Resume::Adopt {
            pid,
            start_ticks,
            job_started_at,
        } => agent.adopt(pid, start_ticks, job_started_at).await,
        Resume::Lost { job_started_at } => (agent.lost(job_started_at), None),
        Resume::Teardown { end, job } => (end, agent.leftover_job(job)),
        Resume::Delete {
            end,
            request_id,
            kept_disk,
        } => return Ok(agent.resume_delete(end, request_id, kept_disk).await),
        Resume::Done { end, kept_disk, .. } => {
            let request_id = uuid::Uuid::new_v4().to_string();
            return Ok(agent.resume_delete(end, request_id, kept_disk).await);
        }
    };
    Ok(agent.teardown(end, job).await)
}
