//! The run spec: what to run, as whom, under which stop policies and at what price.
//! Written once by the launcher (to `runs/<id>/spec.json` and the `cloudrun-spec`
//! metadata attribute), read by the agent.
//!
//! Compatibility: a spec carries `schema`; the agent refuses a newer schema than it knows.
//! Unknown fields are **rejected**, on purpose: a field the agent does not understand may
//! be a policy (a budget, a time limit) that it would silently fail to enforce, and a run
//! that cannot be stopped is the failure this tool exists to prevent. Fields added later
//! get `#[serde(default)]`, so an older spec still parses.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::run_id::RunId;

/// The spec schema this build writes and the newest it reads.
pub const SPEC_SCHEMA: u32 = 1;

/// Output directories mirrored to GCS when a spec names none.
pub const DEFAULT_OUTPUT_DIRS: [&str; 2] = ["checkpoint", "model"];
/// GPU utilisation at or under which a GPU counts as idle, in percent.
pub const DEFAULT_IDLE_THRESHOLD_PCT: f64 = 5.0;
/// How long every GPU must be idle before the run is stopped: long enough to ride out
/// evaluation passes and data reloads between epochs.
pub const DEFAULT_IDLE_WINDOW_SECS: u64 = 600;
/// The longest a run may take when the user gives no `--max-time`.
pub const DEFAULT_MAX_RUN_SECS: u64 = 24 * 3600;
/// Time between SIGTERM and SIGKILL; Spot VMs get ~30 s of notice, so no more than that.
pub const DEFAULT_GRACE_SECS: u64 = 30;
/// How often `nvidia-smi` is sampled.
pub const DEFAULT_GPU_SAMPLE_SECS: u64 = 5;
/// How often changed files in the output dirs are mirrored while the job runs.
pub const DEFAULT_OUTPUT_SYNC_SECS: u64 = 60;
/// How often `status.json` is rewritten.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 30;
/// How often buffered log lines are shipped; logs are at most this far behind (+ upload).
pub const DEFAULT_LOG_FLUSH_SECS: u64 = 2;
/// How often the agent looks for a stop request from the launcher.
pub const DEFAULT_STOP_POLL_SECS: u64 = 10;
/// Time for the whole final sync at the end (outputs, log and metrics flush together): a
/// few GB of last checkpoint on a healthy link fits in 5 minutes, and when the store is
/// down longer the boot disk is kept anyway, so waiting more only bills GPU time.
pub const DEFAULT_FINAL_SYNC_SECS: u64 = 300;
/// How long the agent waits, after the pull, for `nvidia-smi` to answer with the GPUs the
/// plan carries before it ends the run as `gpu_unavailable`: a first-boot driver install
/// and the reboot it may need fit in 10 minutes.
pub const DEFAULT_GPU_READY_SECS: u64 = 600;
/// The most retries Cloud Batch allows a task (`maxRetryCount`, reference/batch.md §2).
pub const MAX_BATCH_RETRIES: u32 = 10;
/// Restarts of a preempted Batch run when the user gives no `--max-restarts`.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
/// Fraction of the budget at which a warning is written to the status and the logs.
pub const BUDGET_WARN_FRACTION: f64 = 0.8;

/// Why a spec could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("run spec is not valid JSON for this agent version: {0}")]
    Json(#[from] serde_json::Error),
    #[error("run spec has schema {found}, newer than the {supported} this agent reads: launch with a matching cloudrun-launch, or upgrade the agent")]
    Schema { found: u32, supported: u32 },
    #[error("run spec is invalid: {0}")]
    Invalid(String),
}

/// Everything the agent needs to run the job and decide when to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub schema: u32,
    pub run_id: RunId,
    pub created_at: DateTime<Utc>,
    /// `GCS_DIR` as the launcher resolved it (`gs://bucket/prefix` or `file:///dir`).
    pub store: String,
    pub job: JobSpec,
    #[serde(default)]
    pub policies: Policies,
    pub price: PriceQuote,
    /// Where the run executes, used by `status`, `ls` and `sweep`. The agent asks the
    /// metadata server where it is, but waits for `gpu_count` GPUs of kind `gpu` from
    /// here before setup and job ([`RunSpec::gpu_wait`]).
    #[serde(default)]
    pub placement: Placement,
    /// Optional URL that gets a JSON POST on start, preemption, 80 % budget and end.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Where the run was launched from: what `latest` is matched against, so that
    /// `stop --now latest` in one project folder never picks another project's run.
    /// Informational for the agent. Absent in specs written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// `--resume-from RUN`: before setup and job, the agent restores that run's outputs
    /// into the output folders (a Batch retry restores this run's own outputs as well).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<RunId>,
}

/// The machine and project folder a run was launched from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// `user@host` of the launch, for people reading `status`.
    pub by: String,
    /// The project folder, absolute and with symlinks resolved where it could be.
    pub project_dir: String,
}

/// The command, its user and its environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// argv of the job, run from `workdir` (default `["python3", "main.py", ...args]`).
    pub command: Vec<String>,
    /// Optional setup command run with `sh -c` before the job (its own phase: not idle,
    /// billed separately in the receipt).
    #[serde(default)]
    pub setup: Option<String>,
    /// Working directory, relative to the code root (`.` for the root).
    #[serde(default = "default_workdir")]
    pub workdir: String,
    /// Extra environment for setup and job (`--env`, `[env]` in cloudrun.toml).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The unprivileged user that runs setup and job (`VM_USER`); `None` runs as the
    /// agent's own user (local runs).
    #[serde(default)]
    pub user: Option<String>,
    /// Directories (relative to `workdir`) mirrored to `runs/<id>/outputs/<dir>/`.
    #[serde(default = "default_output_dirs")]
    pub output_dirs: Vec<String>,
    /// How the command starts on each node of a run on several VMs
    /// (`placement.nodes > 1`); ignored on one VM.
    #[serde(default, skip_serializing_if = "Nodes::is_single")]
    pub nodes: Nodes,
}

/// A run on several VMs: `count` Batch tasks, one per VM, started together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nodes {
    /// VMs in the run (1: a plain run).
    pub count: u32,
    /// Start the command through `torchrun` with `--nnodes`, `--nproc-per-node` (the
    /// GPUs per VM), `--node-rank`, `--master-addr` and `--master-port`; `false` runs it
    /// as given with `NODE_RANK`, `NNODES`, `MASTER_ADDR` and `MASTER_PORT` set.
    pub torchrun: bool,
    /// The rendezvous port on node 0.
    pub master_port: u16,
}

/// The rendezvous port `torchrun` and PyTorch use by default.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

impl Default for Nodes {
    fn default() -> Self {
        Nodes {
            count: 1,
            torchrun: true,
            master_port: DEFAULT_MASTER_PORT,
        }
    }
}

impl Nodes {
    /// One VM: nothing to say in a spec.
    pub fn is_single(&self) -> bool {
        self.count <= 1
    }
}

fn default_workdir() -> String {
    ".".into()
}

fn default_output_dirs() -> Vec<String> {
    DEFAULT_OUTPUT_DIRS.iter().map(|s| s.to_string()).collect()
}

/// When the agent stops the run. All windows are in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policies {
    pub gpu_idle: IdlePolicy,
    /// No new output line and no changed output file for this long stops the run
    /// (`None`: off, the default). Catches a hung NCCL job that shows 100 % utilisation.
    pub stall_window_secs: Option<u64>,
    /// Stop when billed cost reaches this many US dollars.
    pub budget_usd: Option<f64>,
    /// Stop when the run has been up this long (also enforced by the cloud through
    /// `scheduling.maxRunDuration`).
    pub max_run_secs: u64,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace_secs: u64,
    /// Seconds the final sync (outputs, logs, metrics together) may take before the agent
    /// gives up on it, keeps the boot disk and deletes the VM.
    pub final_sync_secs: u64,
    /// Seconds the agent waits for `nvidia-smi` to answer with `placement.gpu_count`
    /// GPUs of kind `placement.gpu` before setup and job; none answering in time ends the
    /// run as `gpu_unavailable`. `0` turns the wait off (the job starts at once, as for
    /// local runs and runs without GPUs, which never wait).
    pub gpu_ready_secs: u64,
    pub intervals: Intervals,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            gpu_idle: IdlePolicy::default(),
            stall_window_secs: None,
            budget_usd: None,
            max_run_secs: DEFAULT_MAX_RUN_SECS,
            grace_secs: DEFAULT_GRACE_SECS,
            final_sync_secs: DEFAULT_FINAL_SYNC_SECS,
            gpu_ready_secs: DEFAULT_GPU_READY_SECS,
            intervals: Intervals::default(),
        }
    }
}

/// Stop when every GPU is at or under `threshold_pct` for `window_secs`, counted only
/// while the job runs. Unknown samples never count as idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdlePolicy {
    pub enabled: bool,
    pub threshold_pct: f64,
    pub window_secs: u64,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy {
            enabled: true,
            threshold_pct: DEFAULT_IDLE_THRESHOLD_PCT,
            window_secs: DEFAULT_IDLE_WINDOW_SECS,
        }
    }
}

/// How often the agent does its periodic work, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Intervals {
    pub gpu_sample_secs: u64,
    pub output_sync_secs: u64,
    pub heartbeat_secs: u64,
    pub log_flush_secs: u64,
    pub stop_poll_secs: u64,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            gpu_sample_secs: DEFAULT_GPU_SAMPLE_SECS,
            output_sync_secs: DEFAULT_OUTPUT_SYNC_SECS,
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            log_flush_secs: DEFAULT_LOG_FLUSH_SECS,
            stop_poll_secs: DEFAULT_STOP_POLL_SECS,
        }
    }
}

/// The price the launcher quoted; the agent bills with it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceQuote {
    /// Whole-VM price (GPUs, vCPUs, memory, disk) in US dollars per hour.
    pub usd_per_hour: f64,
    /// Where the figure came from, e.g. "built-in table 2026-11-01" or a prices.toml path.
    #[serde(default)]
    pub source: String,
    /// Whether the figure is an estimate (a built-in figure) rather than Google's list
    /// price; the agent enforces a budget with it all the same, with no margin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimate: bool,
    /// The region the figure is for (the zone the VM landed in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// Where and on what the run executes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Placement {
    pub provider: Provider,
    pub project: Option<String>,
    pub zone: Option<String>,
    pub instance: Option<String>,
    pub machine_type: Option<String>,
    /// e.g. "nvidia-l4"
    pub gpu: Option<String>,
    pub gpu_count: u32,
    pub spot: bool,
    /// Batch: the job's resource name (`projects/P/locations/R/jobs/ID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Batch: the region the job runs in (any of its zones that has the GPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Batch: how many times a preempted attempt is run again (`--max-restarts`,
    /// `maxRetryCount`, 0–10).
    #[serde(skip_serializing_if = "is_zero")]
    pub max_restarts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where the "VM" is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// A Compute Engine VM.
    #[default]
    Gce,
    /// A detached agent on the user's machine (`--local`).
    Local,
    /// A Cloud Batch job: its tasks run the agent in the foreground on VMs Batch owns;
    /// a preempted attempt is retried, and the agent never deletes its VM.
    Batch,
}

impl Provider {
    /// Whether the run executes on a cloud VM (GPU wait, metadata server, billing from
    /// the VM's start).
    pub fn is_cloud(self) -> bool {
        self != Provider::Local
    }
}

/// The GPUs the agent waits for before setup and job ([`RunSpec::gpu_wait`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuWait<'a> {
    /// How many GPUs `nvidia-smi` must list.
    pub count: u32,
    /// Their accelerator type (`nvidia-l4`), when the plan names one.
    pub accelerator: Option<&'a str>,
    /// How long the agent waits for them, in seconds.
    pub window_secs: u64,
}

impl RunSpec {
    /// What the agent waits for before setup and job: the plan's GPUs on a Compute Engine
    /// VM. `None` for local runs, runs without GPUs and `policies.gpu_ready_secs = 0`.
    pub fn gpu_wait(&self) -> Option<GpuWait<'_>> {
        let p = &self.placement;
        let window_secs = self.policies.gpu_ready_secs;
        (p.provider.is_cloud() && p.gpu_count > 0 && window_secs > 0).then_some(GpuWait {
            count: p.gpu_count,
            accelerator: p.gpu.as_deref().filter(|g| !g.is_empty()),
            window_secs,
        })
    }

    /// Parse and check a spec, e.g. from the `cloudrun-spec` metadata attribute.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        // Look at the schema first so that a newer spec gets the "upgrade" message rather
        // than an unknown-field error.
        #[derive(Deserialize)]
        struct Probe {
            schema: Option<u32>,
        }
        let probe: Probe = serde_json::from_str(text)?;
        if let Some(found) = probe.schema {
            if found > SPEC_SCHEMA {
                return Err(SpecError::Schema {
                    found,
                    supported: SPEC_SCHEMA,
                });
            }
        }
        let spec: RunSpec = serde_json::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// The spec as pretty JSON.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and maps with string keys always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Check what types alone cannot.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::Invalid(m));
        if self.job.command.is_empty() || self.job.command[0].is_empty() {
            return bad("job.command is empty".into());
        }
        crate::manifest::validate_relative_path(&self.job.workdir)
            .or_else(|e| {
                if self.job.workdir == "." {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| SpecError::Invalid(format!("job.workdir: {e}")))?;
        for d in &self.job.output_dirs {
            crate::manifest::validate_relative_path(d)
                .map_err(|e| SpecError::Invalid(format!("job.output_dirs: {e}")))?;
        }
        if let Some(u) = &self.job.user {
            if u.is_empty() || u.contains(['/', ':', '\0']) || u.starts_with('-') {
                return bad(format!("job.user {u:?} is not a valid user name"));
            }
        }
        let p = &self.policies;
        if !(0.0..=100.0).contains(&p.gpu_idle.threshold_pct) {
            return bad(format!(
                "policies.gpu_idle.threshold_pct {} is not a percentage",
                p.gpu_idle.threshold_pct
            ));
        }
        if p.gpu_idle.enabled && p.gpu_idle.window_secs == 0 {
            return bad("policies.gpu_idle.window_secs must be > 0".into());
        }
        if p.stall_window_secs == Some(0) {
            return bad("policies.stall_window_secs must be > 0 (or absent to turn it off)".into());
        }
        if let Some(b) = p.budget_usd {
            if !(b.is_finite() && b > 0.0) {
                return bad(format!("policies.budget_usd {b} must be a positive amount"));
            }
        }
        if p.max_run_secs == 0 {
            return bad("policies.max_run_secs must be > 0".into());
        }
        if p.final_sync_secs == 0 {
            return bad("policies.final_sync_secs must be > 0".into());
        }
        let i = &p.intervals;
        if [
            i.gpu_sample_secs,
            i.output_sync_secs,
            i.heartbeat_secs,
            i.log_flush_secs,
            i.stop_poll_secs,
        ]
        .contains(&0)
        {
            return bad("policies.intervals: every interval must be at least 1 second".into());
        }
        if self.job.nodes.count == 0 {
            return bad("job.nodes.count must be at least 1".into());
        }
        if self.job.nodes.count > 1 && self.placement.provider != Provider::Batch {
            return bad("job.nodes.count > 1 needs placement.provider = batch".into());
        }
        if self.placement.max_restarts > MAX_BATCH_RETRIES {
            return bad(format!(
                "placement.max_restarts {} is more than Batch allows ({MAX_BATCH_RETRIES})",
                self.placement.max_restarts
            ));
        }
        if !(self.price.usd_per_hour.is_finite() && self.price.usd_per_hour >= 0.0) {
            return bad(format!(
                "price.usd_per_hour {} must be a non-negative amount",
                self.price.usd_per_hour
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> RunSpec {
        RunSpec {
            schema: SPEC_SCHEMA,
            run_id: RunId::parse("20261126-071500-ab12").unwrap(),
            created_at: "2026-11-26T07:15:00Z".parse().unwrap(),
            store: "gs://bkt/p".into(),
            job: JobSpec {
                command: vec![
                    "python3".into(),
                    "main.py".into(),
                    "--epochs".into(),
                    "5".into(),
                ],
                setup: Some("pip install -r requirements.txt".into()),
                workdir: ".".into(),
                env: [("BATCHSIZE".to_string(), "256".to_string())].into(),
                user: Some("trainer".into()),
                output_dirs: default_output_dirs(),
                nodes: Nodes::default(),
            },
            policies: Policies::default(),
            price: PriceQuote {
                usd_per_hour: 0.71,
                source: "built-in table".into(),
                ..PriceQuote::default()
            },
            placement: Placement {
                provider: Provider::Gce,
                zone: Some("us-central1-a".into()),
                gpu: Some("nvidia-l4".into()),
                gpu_count: 1,
                ..Placement::default()
            },
            webhook: None,
            origin: None,
            resume_from: None,
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(RunSpec::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn a_minimal_older_spec_still_parses_with_defaults() {
        let text = r#"{"schema":1,"run_id":"20261126-071500-ab12","created_at":"2026-11-26T07:15:00Z",
            "store":"gs://bkt","job":{"command":["python3","main.py"]},"price":{"usd_per_hour":1.0}}"#;
        let s = RunSpec::from_json(text).unwrap();
        assert_eq!(s.policies, Policies::default());
        assert_eq!(s.job.output_dirs, ["checkpoint", "model"]);
        assert_eq!(s.job.workdir, ".");
        assert_eq!(s.placement.provider, Provider::Gce);
        assert_eq!(s.policies.final_sync_secs, DEFAULT_FINAL_SYNC_SECS);
        assert_eq!(s.policies.gpu_ready_secs, DEFAULT_GPU_READY_SECS);
    }

    #[test]
    fn final_sync_secs_is_read_and_others_keep_their_defaults() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["policies"] = serde_json::json!({"final_sync_secs": 20});
        let s = RunSpec::from_json(&v.to_string()).unwrap();
        assert_eq!(s.policies.final_sync_secs, 20);
        assert_eq!(s.policies.grace_secs, DEFAULT_GRACE_SECS);
    }

    #[test]
    fn only_gpu_vms_with_the_wait_on_wait_for_their_gpus() {
        let s = sample();
        assert_eq!(
            s.gpu_wait(),
            Some(GpuWait {
                count: 1,
                accelerator: Some("nvidia-l4"),
                window_secs: DEFAULT_GPU_READY_SECS
            })
        );
        let mut local = sample();
        local.placement.provider = Provider::Local;
        assert_eq!(local.gpu_wait(), None, "local runs do not wait");
        let mut cpu = sample();
        cpu.placement.gpu = None;
        cpu.placement.gpu_count = 0;
        assert_eq!(cpu.gpu_wait(), None, "runs without GPUs do not wait");
        let mut off = sample();
        off.policies.gpu_ready_secs = 0;
        assert_eq!(off.gpu_wait(), None, "gpu_ready_secs = 0 turns it off");
    }

    #[test]
    fn a_batch_run_on_two_nodes_round_trips_and_a_plain_spec_does_not_mention_nodes() {
        let plain = sample().to_json();
        for absent in ["nodes", "resume_from", "max_restarts", "region"] {
            assert!(!plain.contains(absent), "{absent} in {plain}");
        }
        let mut s = sample();
        s.placement.provider = Provider::Batch;
        s.placement.region = Some("us-central1".into());
        s.placement.job = Some("projects/p/locations/us-central1/jobs/cloudrun-x".into());
        s.placement.max_restarts = DEFAULT_MAX_RESTARTS;
        s.job.nodes = Nodes {
            count: 2,
            torchrun: false,
            master_port: 29400,
        };
        s.resume_from = Some(RunId::parse("20261125-010203-cd34").unwrap());
        let back = RunSpec::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        assert!(
            back.gpu_wait().is_some(),
            "Batch VMs wait for their GPUs too"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_so_no_policy_is_silently_ignored() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["policies"]["gpu_budget_hours"] = 3.into();
        let err = RunSpec::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(err.contains("gpu_budget_hours"), "{err}");
    }

    #[test]
    fn newer_schema_says_upgrade() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["schema"] = 2.into();
        v["new_thing"] = true.into();
        let err = RunSpec::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(err.contains("upgrade"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        type Mutation = fn(&mut RunSpec);
        let cases: Vec<(Mutation, &str)> = vec![
            (|s| s.job.command.clear(), "job.command"),
            (|s| s.job.output_dirs.push("../etc".into()), "output_dirs"),
            (|s| s.job.user = Some("a/b".into()), "job.user"),
            (
                |s| s.policies.gpu_idle.threshold_pct = 120.0,
                "threshold_pct",
            ),
            (|s| s.policies.budget_usd = Some(-1.0), "budget_usd"),
            (|s| s.policies.intervals.heartbeat_secs = 0, "intervals"),
            (
                |s| s.policies.stall_window_secs = Some(0),
                "stall_window_secs",
            ),
            (|s| s.policies.final_sync_secs = 0, "final_sync_secs"),
            (|s| s.job.nodes.count = 0, "job.nodes.count"),
            (|s| s.job.nodes.count = 2, "placement.provider = batch"),
            (
                |s| {
                    s.placement.provider = Provider::Batch;
                    s.placement.max_restarts = MAX_BATCH_RETRIES + 1;
                },
                "max_restarts",
            ),
        ];
        for (mutate, needle) in cases {
            let mut s = sample();
            mutate(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
