//! The run status (`runs/<id>/status.json`), the end reasons, GPU samples, the cost
//! receipt, and the launcher's stop request.
//!
//! Compatibility: unlike the spec, unknown fields in a status are **kept** (in `extra`)
//! and written back: a status is read by launchers of any version, and an older one must
//! still show a newer agent's status without losing what it does not understand.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::billing::Receipt;
use crate::run_id::RunId;

/// The status schema this build writes.
pub const STATUS_SCHEMA: u32 = 1;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The launcher wrote the spec and asked for a VM; no agent has reported yet.
    Launching,
    /// The agent is pulling the code.
    Pulling,
    /// The code is pulled; the agent waits for `nvidia-smi` to answer with the GPUs the
    /// plan carries before it starts setup and job.
    WaitingForGpu,
    /// The setup command runs.
    Setup,
    /// The job runs.
    Running,
    /// A stop was decided: the job is being signalled and outputs synced.
    Stopping,
    /// Batch: this attempt ended (its VM was preempted, or a peer node was lost) and
    /// Batch runs the task again on a new VM, which resumes from the synced outputs.
    Retrying,
    /// The run is over; `end` says why.
    Ended,
}

impl Phase {
    /// The name `phase` has in a status (`"running"`), from the serde names above.
    pub fn name(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(s)) => s,
            _ => format!("{self:?}").to_lowercase(),
        }
    }

    /// Whether the run is over.
    pub fn is_terminal(self) -> bool {
        self == Phase::Ended
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The job exited with status 0.
    Succeeded,
    /// The job exited non-zero or was killed by a signal.
    Failed,
    /// Every GPU was idle for the idle window.
    GpuIdle,
    /// No output line and no changed output file for the stall window.
    Stalled,
    /// The billed cost reached the budget.
    Budget,
    /// The run reached its time limit.
    MaxTime,
    /// The Spot VM was preempted.
    Preempted,
    /// The launcher asked the run to stop.
    Stopped,
    /// The setup command failed; the job never started.
    SetupFailed,
    /// The code could not be pulled or verified.
    PullFailed,
    /// `nvidia-smi` did not answer with the plan's GPUs within `policies.gpu_ready_secs`;
    /// neither setup nor job was started.
    GpuUnavailable,
    /// The agent was restarted and the job was no longer running.
    Lost,
    /// The agent hit an error it could not recover from.
    AgentError,
    /// Batch, several nodes: another node of the run was lost (preempted), so this node
    /// stopped its part too, for all of them to be retried together. Ends an attempt,
    /// not a run.
    PeerLost,
}

/// What is derived from an end reason: one row each, in [`EndReason::row`].
struct EndRow {
    /// Exit code of `cloudrun-launch --follow` / `logs -f` (and of the agent), so scripts
    /// can branch on it: 0 only for success.
    exit_code: i32,
    /// A short phrase for tables and receipts.
    describe: &'static str,
}

impl EndReason {
    /// The row of this reason: adding a reason is adding its variant and its row.
    fn row(self) -> EndRow {
        let row = |exit_code, describe| EndRow {
            exit_code,
            describe,
        };
        match self {
            EndReason::Succeeded => row(0, "job succeeded"),
            EndReason::Failed => row(1, "job failed"),
            EndReason::SetupFailed => row(3, "setup failed"),
            EndReason::PullFailed => row(3, "code pull failed"),
            EndReason::GpuIdle => row(4, "GPU idle"),
            EndReason::Stalled => row(4, "stalled (no output)"),
            EndReason::Budget => row(5, "budget spent"),
            EndReason::MaxTime => row(5, "time limit reached"),
            EndReason::Preempted => row(6, "preempted"),
            EndReason::Stopped => row(7, "stopped on request"),
            EndReason::Lost => row(8, "job lost (agent restarted)"),
            EndReason::AgentError => row(8, "agent error"),
            EndReason::GpuUnavailable => row(9, "GPUs unavailable"),
            EndReason::PeerLost => row(crate::contract::EXIT_RETRY, "a peer node was lost"),
        }
    }

    /// Exit code of `cloudrun-launch --follow` / `status --wait` for a run that ended this
    /// way, so scripts can branch on it: 0 only for success.
    pub fn exit_code(self) -> i32 {
        self.row().exit_code
    }

    /// A short phrase for tables and receipts.
    pub fn describe(self) -> &'static str {
        self.row().describe
    }
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndInfo {
    pub reason: EndReason,
    /// The job's exit code, when it exited on its own.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended the job, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// One line for people.
    #[serde(default)]
    pub message: String,
}

/// One reading of one GPU. `None` is "unknown" (`[N/A]`, `[Not Supported]`, garbage),
/// never 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GpuReading {
    pub index: u32,
    #[serde(default)]
    pub uuid: String,
    #[serde(default)]
    pub name: String,
    pub util_gpu_pct: Option<f64>,
    #[serde(default)]
    pub util_mem_pct: Option<f64>,
    #[serde(default)]
    pub mem_used_mib: Option<f64>,
    #[serde(default)]
    pub mem_total_mib: Option<f64>,
    #[serde(default)]
    pub power_w: Option<f64>,
    #[serde(default)]
    pub temp_c: Option<f64>,
}

/// One `nvidia-smi` sample of every GPU, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub gpus: Vec<GpuReading>,
    /// Set when the sample is unknown: nvidia-smi failed, timed out or printed garbage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The instance a run lives on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRef {
    pub project: String,
    pub zone: String,
    pub name: String,
}

/// What became of the VM at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmFate {
    /// The delete call was accepted.
    Deleted,
    /// Every delete failed; the VM was powered off. GPUs and vCPUs stop billing, the boot
    /// disk does not, and stopping clears the `maxRunDuration` deadline, so `sweep` is
    /// what deletes it.
    PoweredOff,
    /// A local run: the agent process exited.
    LocalExit,
    /// A Batch run: the agent exited with its end reason's code and Batch deletes the
    /// job's VMs.
    LeftToBatch,
}

/// The agent's delete of its own VM, recorded before the call (the delete may end the
/// agent before it can write anything after it). `status` confirms it with the Compute
/// API: a VM that is gone was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRecord {
    /// The `requestId` of the delete (repeated with the same id on a retry).
    pub request_id: String,
    pub requested_at: DateTime<Utc>,
    /// The operation Compute answered with, once it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// One Batch attempt of one node: a VM that ran the task until it ended or was lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The node (`BATCH_TASK_INDEX`; 0 on one VM).
    pub node: u32,
    /// `BATCH_TASK_RETRY_ATTEMPT`: 0 for the first.
    pub attempt: u32,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub vm: String,
    pub started_at: DateTime<Utc>,
    /// `None` while it runs (or when its VM vanished before the agent could say).
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
    /// `preempted`, `peer_lost`, or the run's end reason for the last attempt.
    #[serde(default)]
    pub reason: Option<EndReason>,
    /// Seconds billed for this attempt's VM (1-minute minimum).
    #[serde(default)]
    pub billed_secs: u64,
}

/// `runs/<id>/status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub schema: u32,
    pub run_id: RunId,
    pub phase: Phase,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub launched_at: Option<DateTime<Utc>>,
    /// When the agent first started on the VM (billing starts about here).
    #[serde(default)]
    pub agent_started_at: Option<DateTime<Utc>>,
    /// When the agent began waiting for the plan's GPUs (after the pull; kept across agent
    /// restarts, the wait's window counts from here). Billed as boot, not as training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_wait_started_at: Option<DateTime<Utc>>,
    /// When `nvidia-smi` answered with the plan's GPUs; `None` while waiting and when they
    /// never did (end reason `gpu_unavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_ready_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub job_started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub instance: Option<InstanceRef>,
    #[serde(default)]
    pub last_gpu: Option<GpuSample>,
    /// Set when the GPU idle policy is off and why ("no GPU found: idle policy off").
    #[serde(default)]
    pub gpu_note: Option<String>,
    /// Billed seconds so far (1-minute minimum).
    #[serde(default)]
    pub billed_secs: u64,
    #[serde(default)]
    pub usd_per_hour: f64,
    /// Cost so far in US dollars.
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// When the job last printed a line.
    #[serde(default)]
    pub last_output_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub end: Option<EndInfo>,
    #[serde(default)]
    pub receipt: Option<Receipt>,
    /// A boot disk kept because the final sync could not be verified.
    #[serde(default)]
    pub kept_disk: Option<String>,
    #[serde(default)]
    pub vm: Option<VmFate>,
    /// The delete the agent asked for (also while `vm` is not set yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<DeleteRecord>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// When the agent first entered each phase, by the phase's name as `phase` spells it
    /// (`pulling`, `setup`, `running`, `stopping`, `ended`, …): the run's timeline, which
    /// `report` draws. Keyed by name rather than by [`Phase`] so that a launcher can read
    /// the timeline of an agent that knows more phases than it does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub phase_started_at: BTreeMap<String, DateTime<Utc>>,
    /// When the final sync (outputs, then logs and metrics) began, after the job stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_sync_started_at: Option<DateTime<Utc>>,
    /// Batch: every attempt of every node so far, in the order they started; budget
    /// and time limit count them all, and the receipt sums their billed seconds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Fields written by a newer agent, kept as they are.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl RunStatus {
    /// The status a launcher writes right after asking for the VM.
    pub fn launching(run_id: RunId, now: DateTime<Utc>, usd_per_hour: f64) -> Self {
        RunStatus {
            schema: STATUS_SCHEMA,
            run_id,
            phase: Phase::Launching,
            updated_at: now,
            launched_at: Some(now),
            agent_started_at: None,
            gpu_wait_started_at: None,
            gpu_ready_at: None,
            job_started_at: None,
            ended_at: None,
            instance: None,
            last_gpu: None,
            gpu_note: None,
            billed_secs: 0,
            usd_per_hour,
            cost_usd: 0.0,
            budget_usd: None,
            last_output_at: None,
            end: None,
            receipt: None,
            kept_disk: None,
            vm: None,
            delete: None,
            warnings: Vec::new(),
            phase_started_at: BTreeMap::new(),
            final_sync_started_at: None,
            attempts: Vec::new(),
            extra: BTreeMap::new(),
        }
    }

    /// Move to `phase` at `now`, and record when it was first entered (a phase entered
    /// again, after an agent restart, keeps its first time).
    pub fn enter_phase(&mut self, phase: Phase, now: DateTime<Utc>) {
        self.phase = phase;
        self.phase_started_at.entry(phase.name()).or_insert(now);
    }

    /// Parse a status of any schema; unknown fields land in `extra`.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The status as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// `runs/<id>/control/stop.json`: written by `cloudrun-launch stop RUN`; the agent polls
/// for it every `intervals.stop_poll_secs` and stops gracefully (final sync, then delete).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    pub requested_at: DateTime<Utc>,
    /// Who asked (user@host), for the status.
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunStatus {
        let mut s = RunStatus::launching(
            RunId::parse("20261126-071500-ab12").unwrap(),
            "2026-11-26T07:15:00Z".parse().unwrap(),
            0.71,
        );
        s.phase = Phase::Ended;
        s.last_gpu = Some(GpuSample {
            at: "2026-11-26T07:20:00Z".parse().unwrap(),
            gpus: vec![GpuReading {
                index: 0,
                name: "NVIDIA L4".into(),
                util_gpu_pct: Some(97.0),
                power_w: None,
                ..GpuReading::default()
            }],
            error: None,
        });
        s.end = Some(EndInfo {
            reason: EndReason::Succeeded,
            exit_code: Some(0),
            signal: None,
            message: "job exited 0".into(),
        });
        s.vm = Some(VmFate::Deleted);
        s
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(RunStatus::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn unknown_fields_from_a_newer_agent_are_kept_and_written_back() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["progress"] = serde_json::json!({"step": 10, "of": 100});
        let s = RunStatus::from_json(&v.to_string()).unwrap();
        assert_eq!(s.extra["progress"]["step"], 10);
        let again: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(again["progress"]["of"], 100);
    }

    #[test]
    fn the_gpu_wait_has_its_own_names_and_exit_code() {
        assert_eq!(
            serde_json::to_value(Phase::WaitingForGpu).unwrap(),
            "waiting_for_gpu"
        );
        assert_eq!(
            serde_json::to_value(EndReason::GpuUnavailable).unwrap(),
            "gpu_unavailable"
        );
        // Its own code: a script can tell "no GPU" from a failed job or a lost agent.
        use EndReason::*;
        for r in [
            Succeeded,
            Failed,
            GpuIdle,
            Budget,
            Preempted,
            Stopped,
            SetupFailed,
            AgentError,
        ] {
            assert_ne!(r.exit_code(), GpuUnavailable.exit_code(), "{r:?}");
        }
        let mut s = sample();
        s.gpu_wait_started_at = Some("2026-11-26T07:16:00Z".parse().unwrap());
        s.gpu_ready_at = Some("2026-11-26T07:16:20Z".parse().unwrap());
        assert_eq!(RunStatus::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn entering_a_phase_records_its_first_time_under_its_status_name() {
        let mut s = sample();
        let t = |m: u32| -> DateTime<Utc> { format!("2026-11-26T07:{m:02}:00Z").parse().unwrap() };
        s.enter_phase(Phase::Pulling, t(16));
        s.enter_phase(Phase::Running, t(18));
        s.enter_phase(Phase::Running, t(30)); // again, after a restart
        assert_eq!(s.phase, Phase::Running);
        assert_eq!(s.phase_started_at["pulling"], t(16));
        assert_eq!(s.phase_started_at["running"], t(18));
        let back = RunStatus::from_json(&s.to_json()).unwrap();
        assert_eq!(back.phase_started_at, s.phase_started_at);
        assert!(back.extra.is_empty(), "{:?}", back.extra);
    }

    #[test]
    fn an_older_minimal_status_parses() {
        let s = RunStatus::from_json(
            r#"{"schema":1,"run_id":"20261126-071500-ab12","phase":"running","updated_at":"2026-11-26T07:15:00Z"}"#,
        )
        .unwrap();
        assert_eq!(s.phase, Phase::Running);
        assert!(s.end.is_none());
    }

    #[test]
    fn only_success_exits_zero() {
        use EndReason::*;
        for r in [
            Failed,
            GpuIdle,
            Stalled,
            Budget,
            MaxTime,
            Preempted,
            Stopped,
            SetupFailed,
            PullFailed,
            Lost,
            AgentError,
            GpuUnavailable,
        ] {
            assert_ne!(r.exit_code(), 0, "{r:?}");
        }
        assert_eq!(Succeeded.exit_code(), 0);
    }
}
