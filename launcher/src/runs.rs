//! Reading runs back from any machine: `status`, `logs`, `stop`, `ls`, `sweep`, and the
//! metrics `report` uses. Everything comes from the store (`status.json`, `spec.json`,
//! log and metrics chunks) and, where a project is known, the Compute API (is the VM
//! still there?). Results go to the writer handed in (stdout); nothing here prints logs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudrun::compute::{Compute, Instance};
use cloudrun::contract::{LABEL_MANAGED, LABEL_RUN};
use cloudrun::status::{GpuSample, Phase, RunStatus, StopRequest};
use cloudrun::storage::{PutOptions, Storage, StorageError};
use cloudrun::{Layout, RunId, RunSpec};
use serde::Serialize;

use crate::logview::LogView;

/// How often `logs -f` looks for new chunks, in seconds.
pub const LOG_POLL_SECS: u64 = 2;
/// Longest pause between `logs -f` polls while the store is unreachable (laptop asleep,
/// network down), in seconds.
pub const LOG_POLL_MAX_BACKOFF_SECS: u64 = 60;
/// A running run whose status was not rewritten for this long counts as silent, in
/// seconds (the agent's heartbeat is every 30 s; this allows for long outages).
pub const STALE_HEARTBEAT_SECS: i64 = 20 * 60;
/// How long a VM may exist without any status before `sweep` takes it, in seconds
/// (boot, driver install and code pull can take a while).
pub const NO_STATUS_GRACE_SECS: i64 = 45 * 60;
/// GPU samples shown in the sparkline.
pub const SPARKLINE_SAMPLES: usize = 60;

/// Why reading a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error("no run {run} under {store}: list runs with `cloudrun-launch status`")]
    NoSuchRun { run: String, store: String },
    #[error("no runs under {0} yet")]
    NoRuns(String),
    #[error("no run was launched from {project} (`latest` is the newest run of this project folder){}: name the run, or cd into its project folder or pass -C DIR", newest.as_ref().map(|n| format!("; the newest run under {store} is {n}")).unwrap_or_default())]
    NoRunsHere {
        project: String,
        store: String,
        /// The store's newest run and where it came from, for the message.
        newest: Option<String>,
    },
    #[error("{0}")]
    BadRunId(#[from] cloudrun::run_id::RunIdError),
    #[error("{what}: {source}")]
    Storage {
        what: String,
        #[source]
        source: StorageError,
    },
    #[error("{what}: {source}")]
    Compute {
        what: String,
        #[source]
        source: cloudrun::compute::ComputeError,
    },
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
    #[error("run {0} has no recorded VM (no spec placement, no status instance)")]
    NoInstance(RunId),
    #[error("{0}")]
    Other(String),
    #[error("the local agent of run {0} exited without recording an end: its own log is agent.log in the run's folder under ~/.local/share/cloudrun/local/")]
    AgentGone(RunId),
}

fn st(what: impl Into<String>) -> impl FnOnce(StorageError) -> RunsError {
    let what = what.into();
    move |source| RunsError::Storage { what, source }
}

/// The store and layout a subcommand reads.
#[derive(Clone)]
pub struct Store {
    pub storage: Arc<dyn Storage>,
    pub layout: Layout,
}

impl Store {
    /// Every run id with a spec or a status, oldest first.
    pub async fn run_ids(&self) -> Result<Vec<RunId>, RunsError> {
        let prefix = self.layout.runs_prefix();
        let objs = self
            .storage
            .list(&prefix)
            .await
            .map_err(st(format!("listing {prefix}")))?;
        let ids: BTreeSet<RunId> = objs
            .iter()
            .filter_map(|o| self.layout.run_of_key(&o.key))
            .collect();
        Ok(ids.into_iter().collect())
    }

    /// A run id from the command line: an id, or `latest` (also `last`): the newest run
    /// launched from `project_dir`, the project folder of this invocation, by the origin
    /// its spec records. Another folder's runs are never `latest` here, however new.
    pub async fn resolve(&self, arg: &str, project_dir: &Path) -> Result<RunId, RunsError> {
        if arg != "latest" && arg != "last" {
            return Ok(RunId::parse(arg)?);
        }
        let ids = self.run_ids().await?;
        if ids.is_empty() {
            return Err(RunsError::NoRuns(self.storage.describe()));
        }
        let here = crate::plan::project_key(project_dir);
        // Ids sort by their start second; within one second the random suffix says
        // nothing, so the runs of the newest matching second are ordered by the
        // `created_at` their specs record.
        let mut best: Option<(RunId, DateTime<Utc>)> = None;
        for id in ids.iter().rev() {
            if let Some((found, _)) = &best {
                if id.start_second() != found.start_second() {
                    break;
                }
            }
            let mut ignored = Vec::new();
            let spec: Option<RunSpec> = self
                .get_doc(&self.layout.spec(id), "spec.json", &mut ignored)
                .await?;
            let Some(spec) = spec else { continue };
            if spec.origin.is_none_or(|o| o.project_dir != here) {
                continue;
            }
            if best.as_ref().is_none_or(|(_, at)| spec.created_at > *at) {
                best = Some((id.clone(), spec.created_at));
            }
        }
        if let Some((id, _)) = best {
            return Ok(id);
        }
        let newest = ids.last().map(|id| id.to_string());
        Err(RunsError::NoRunsHere {
            project: here,
            store: self.storage.describe(),
            newest,
        })
    }

    /// A JSON document, `None` when absent. One that does not parse is `None` too, with
    /// what is wrong pushed onto `problems`: one broken document must not hide the rest
    /// of the run (its logs, outputs, metrics) or the other runs.
    async fn get_doc<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        name: &str,
        problems: &mut Vec<String>,
    ) -> Result<Option<T>, RunsError> {
        match self.storage.get_bytes(key).await {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(v) => Ok(Some(v)),
                Err(e) => {
                    problems.push(format!("{name} is unreadable ({e})"));
                    Ok(None)
                }
            },
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(st(format!("reading {key}"))(e)),
        }
    }

    /// The run's status and spec, each `None` when absent or unreadable (then named in
    /// [`RunView::problems`]); an error only when the run has neither object at all.
    pub async fn load(&self, run: &RunId) -> Result<RunView, RunsError> {
        let mut problems = Vec::new();
        let status: Option<RunStatus> = self
            .get_doc(&self.layout.status(run), "status.json", &mut problems)
            .await?;
        let spec: Option<RunSpec> = self
            .get_doc(&self.layout.spec(run), "spec.json", &mut problems)
            .await?;
        if status.is_none() && spec.is_none() && problems.is_empty() {
            return Err(RunsError::NoSuchRun {
                run: run.to_string(),
                store: self.storage.describe(),
            });
        }
        Ok(RunView {
            run: run.clone(),
            status,
            spec,
            problems,
        })
    }

    /// All GPU samples of a run, in write order. Lines that do not parse are skipped.
    pub async fn metrics(&self, run: &RunId) -> Result<Vec<GpuSample>, RunsError> {
        let prefix = self.layout.metrics_prefix(run);
        let mut objs = self
            .storage
            .list(&prefix)
            .await
            .map_err(st(format!("listing {prefix}")))?;
        objs.sort_by(|a, b| a.key.cmp(&b.key));
        let mut out = Vec::new();
        for o in objs {
            let b = self
                .storage
                .get_bytes(&o.key)
                .await
                .map_err(st(format!("reading {}", o.key)))?;
            for line in String::from_utf8_lossy(&b).lines() {
                if let Ok(s) = serde_json::from_str::<GpuSample>(line) {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }
}

/// What the store knows about one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    pub run: RunId,
    pub status: Option<RunStatus>,
    pub spec: Option<RunSpec>,
    /// Documents of the run that exist but could not be read (`status.json is
    /// unreadable (…)`); the run is still shown and its logs and outputs still served.
    pub problems: Vec<String>,
}

impl RunView {
    /// Whether the run's "VM" is a local agent (`--local`).
    pub fn is_local(&self) -> bool {
        self.spec
            .as_ref()
            .is_some_and(|s| s.placement.provider == cloudrun::spec::Provider::Local)
    }

    pub fn phase(&self) -> Phase {
        self.status
            .as_ref()
            .map(|s| s.phase)
            .unwrap_or(Phase::Launching)
    }

    /// One line naming the run for a person about to end it: id, GPU, phase, and the
    /// project folder and person it was launched from.
    pub fn brief(&self) -> String {
        let mut s = format!("{} ({}, {}", self.run, self.gpu(), self.shown_phase(None));
        if let Some(o) = self.spec.as_ref().and_then(|s| s.origin.as_ref()) {
            s.push_str(&format!(", launched from {} by {}", o.project_dir, o.by));
        }
        s.push(')');
        s
    }

    /// Whether the run's status is unreadable (it exists but does not parse).
    pub fn broken(&self) -> bool {
        self.status.is_none() && self.problems.iter().any(|p| p.starts_with("status.json"))
    }

    /// Whether this is a local run whose agent is gone without the run having recorded
    /// an end: it will never end by itself. `rec` is its record on this machine.
    pub fn lost(&self, rec: Option<&crate::local::AgentRecord>) -> bool {
        self.is_local() && !self.phase().is_terminal() && rec.is_some_and(|r| !r.alive())
    }

    /// The phase as `status` and `ls` show it: `broken` for an unreadable status, `lost`
    /// for a local run whose agent is gone, else the recorded phase.
    pub fn shown_phase(&self, rec: Option<&crate::local::AgentRecord>) -> &'static str {
        if self.broken() {
            "broken"
        } else if self.lost(rec) {
            "lost"
        } else {
            phase_name(self.phase())
        }
    }

    /// Project, zone and name of the VM, from the status or the spec.
    pub fn instance(&self) -> Option<(String, String, String)> {
        if let Some(i) = self.status.as_ref().and_then(|s| s.instance.as_ref()) {
            return Some((i.project.clone(), i.zone.clone(), i.name.clone()));
        }
        let p = &self.spec.as_ref()?.placement;
        Some((p.project.clone()?, p.zone.clone()?, p.instance.clone()?))
    }

    pub fn zone(&self) -> String {
        self.instance()
            .map(|(_, z, _)| z)
            .unwrap_or_else(|| "-".into())
    }

    pub fn gpu(&self) -> String {
        match self.spec.as_ref().map(|s| &s.placement) {
            Some(p) => match &p.gpu {
                Some(g) => format!(
                    "{}×{}{}",
                    p.gpu_count,
                    g.trim_start_matches("nvidia-").trim_start_matches("tesla-"),
                    if p.spot { " spot" } else { "" }
                ),
                None => "-".into(),
            },
            None => "-".into(),
        }
    }

    /// Seconds since the agent (or, before it, the launch) started, to the end or now.
    pub fn elapsed_secs(&self, now: DateTime<Utc>) -> Option<i64> {
        let s = self.status.as_ref()?;
        let start = s.agent_started_at.or(s.launched_at)?;
        let end = s.ended_at.unwrap_or(now);
        Some((end - start).num_seconds().max(0))
    }

    pub fn cost(&self) -> f64 {
        let s = match &self.status {
            Some(s) => s,
            None => return 0.0,
        };
        s.receipt
            .as_ref()
            .map(|r| r.total_usd)
            .unwrap_or(s.cost_usd)
    }

    pub fn end(&self) -> String {
        self.status
            .as_ref()
            .and_then(|s| s.end.as_ref())
            .map(|e| e.reason.describe().to_string())
            .unwrap_or_default()
    }

    /// Whether the heartbeat stopped: not ended and not rewritten for a long time.
    pub fn silent(&self, now: DateTime<Utc>) -> bool {
        match &self.status {
            Some(s) if !s.phase.is_terminal() => {
                let grace = if s.phase == Phase::Launching {
                    NO_STATUS_GRACE_SECS
                } else {
                    STALE_HEARTBEAT_SECS
                };
                (now - s.updated_at).num_seconds() > grace
            }
            _ => false,
        }
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Launching => "launching",
        Phase::Pulling => "pulling",
        Phase::WaitingForGpu => "waiting_for_gpu",
        Phase::Setup => "setup",
        Phase::Running => "running",
        Phase::Stopping => "stopping",
        Phase::Ended => "ended",
    }
}

/// A GPU-utilisation sparkline from samples (mean over GPUs; unknown samples as `·`).
pub fn sparkline(samples: &[GpuSample]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let start = samples.len().saturating_sub(SPARKLINE_SAMPLES);
    samples[start..]
        .iter()
        .map(|s| match mean_util(s) {
            Some(u) => BARS[((u.clamp(0.0, 100.0) / 100.0) * 7.0).round() as usize],
            None => '·',
        })
        .collect()
}

/// Mean GPU utilisation of one sample, `None` when unknown.
pub fn mean_util(s: &GpuSample) -> Option<f64> {
    if s.error.is_some() {
        return None;
    }
    let known: Vec<f64> = s.gpus.iter().filter_map(|g| g.util_gpu_pct).collect();
    if known.is_empty() {
        None
    } else {
        Some(known.iter().sum::<f64>() / known.len() as f64)
    }
}

/// Live cloudrun VMs by run id (label `cloudrun-run`), or why they could not be listed.
pub async fn live_vms(
    compute: Option<(&dyn Compute, &str)>,
) -> Result<BTreeMap<String, Instance>, String> {
    let Some((c, project)) = compute else {
        return Err("VM check skipped: no project or credentials".into());
    };
    let filter = format!("labels.{LABEL_MANAGED} = true");
    let vms = c
        .list_instances(project, None, &filter)
        .await
        .map_err(|e| format!("VM check failed: {e}"))?;
    Ok(vms
        .into_iter()
        .map(|i| {
            (
                i.labels
                    .get(LABEL_RUN)
                    .cloned()
                    .unwrap_or_else(|| format!("?{}", i.name)),
                i,
            )
        })
        .collect())
}

#[derive(Serialize)]
struct RowJson<'a> {
    run_id: &'a str,
    phase: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: &'a Vec<String>,
    zone: String,
    gpu: String,
    elapsed_secs: Option<i64>,
    cost_usd: f64,
    end_reason: Option<cloudrun::status::EndReason>,
    vm_up: Option<bool>,
}

/// Where `status` and `ls` learn whether a run's machine is still there.
#[derive(Clone, Copy)]
pub enum Machines<'a> {
    /// Cloud runs: the Compute API and the project, when both are available.
    Cloud(Option<(&'a dyn Compute, &'a str)>),
    /// Local runs: the data dir whose agent records say whether each agent still runs.
    Local(&'a Path),
}

/// Append `what` to a row's END column, two spaces after what is there.
fn note(end: &mut String, what: &str) {
    if !end.is_empty() {
        end.push_str("  ");
    }
    end.push_str(what);
}

/// `status` without a run: one line per run.
pub async fn status_table(
    store: &Store,
    compute: Option<(&dyn Compute, &str)>,
    json: bool,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    status_table_on(store, Machines::Cloud(compute), json, now, out).await
}

/// `status` without a run, for cloud or local runs.
pub async fn status_table_on(
    store: &Store,
    machines: Machines<'_>,
    json: bool,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    let ids = store.run_ids().await?;
    let vms = match machines {
        Machines::Cloud(c) => Some(live_vms(c).await),
        Machines::Local(_) => None,
    };
    let record = |id: &RunId| match machines {
        Machines::Local(d) => crate::local::record_for(d, id),
        Machines::Cloud(_) => None,
    };
    let mut views = Vec::new();
    for id in &ids {
        views.push(store.load(id).await?);
    }
    if json {
        let rows: Vec<RowJson> = views
            .iter()
            .map(|v| RowJson {
                run_id: v.run.as_str(),
                phase: v.shown_phase(record(&v.run).as_ref()),
                problems: &v.problems,
                zone: v.zone(),
                gpu: v.gpu(),
                elapsed_secs: v.elapsed_secs(now),
                cost_usd: v.cost(),
                end_reason: v
                    .status
                    .as_ref()
                    .and_then(|s| s.end.as_ref())
                    .map(|e| e.reason),
                vm_up: match &vms {
                    Some(vms) => vms.as_ref().ok().map(|m| m.contains_key(v.run.as_str())),
                    None => record(&v.run).map(|r| r.alive()),
                },
            })
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        )?;
        return Ok(());
    }
    if views.is_empty() {
        writeln!(out, "no runs under {} yet", store.storage.describe())?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<22} {:<15} {:<16} {:<14} {:>10} {:>8}  END",
        "RUN", "PHASE", "ZONE", "GPU", "ELAPSED", "COST"
    )?;
    for v in &views {
        let vm_up = match &vms {
            Some(Ok(m)) => m.contains_key(v.run.as_str()),
            _ => false,
        };
        let rec = record(&v.run);
        let mut end = v.end();
        if v.phase().is_terminal() && vm_up {
            if v.status.as_ref().is_some_and(delete_pending) {
                end.push_str("  [VM being deleted]");
            } else {
                end.push_str("  [VM still up: cloudrun-launch sweep]");
            }
        }
        if v.lost(rec.as_ref()) {
            note(
                &mut end,
                "agent gone: `cloudrun-launch --local sweep --yes` closes it",
            );
        } else if v.silent(now) {
            end.push_str("  [silent: no heartbeat]");
        }
        if !v.problems.is_empty() {
            note(&mut end, &v.problems.join("; "));
        }
        let (zone, gpu) = if v.is_local() {
            ("-".to_string(), "local".to_string())
        } else {
            (v.zone(), v.gpu())
        };
        writeln!(
            out,
            "{:<22} {:<15} {:<16} {:<14} {:>10} {:>8}  {}",
            v.run.as_str(),
            v.shown_phase(rec.as_ref()),
            zone,
            gpu,
            v.elapsed_secs(now)
                .map(|s| cloudrun::billing::format_secs(s as u64))
                .unwrap_or_else(|| "-".into()),
            format!("${:.2}", v.cost()),
            end
        )?;
    }
    if let Some(Err(note)) = vms {
        writeln!(out, "({note})")?;
    }
    Ok(())
}

/// `status RUN`: one run in detail.
pub async fn status_one(
    store: &Store,
    compute: Option<(&dyn Compute, &str)>,
    run: &RunId,
    json: bool,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    status_one_with(store, compute, None, run, json, now, out).await
}

/// The VM's fate as the status names it (`deleted`, `powered_off`, `local_exit`).
fn fate_name(s: &RunStatus) -> Option<String> {
    s.vm.and_then(|f| serde_json::to_value(f).ok())
        .and_then(|v| v.as_str().map(str::to_string))
}

/// `status RUN`, also for local runs: `local` is the data dir whose records say whether a
/// local run's agent still runs (as the Compute API says for a VM).
pub async fn status_one_with(
    store: &Store,
    compute: Option<(&dyn Compute, &str)>,
    local: Option<&Path>,
    run: &RunId,
    json: bool,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    let v = store.load(run).await?;
    if v.is_local() {
        let rec = local.and_then(|d| crate::local::record_for(d, run));
        if json {
            let vm = match &rec {
                Some(r) => {
                    serde_json::json!({"local_pid": r.pid, "alive": r.alive(), "agent_log": r.agent_log})
                }
                None => serde_json::json!({"error": "no local agent record on this machine"}),
            };
            let phase = v.shown_phase(rec.as_ref());
            return Ok(write_status_json(&v, phase, vm, out)?);
        }
        writeln!(out, "run      {}", v.run)?;
        let phase = v.shown_phase(rec.as_ref());
        if v.lost(rec.as_ref()) {
            writeln!(
                out,
                "phase    {phase} (agent gone; was {})",
                phase_name(v.phase())
            )?;
        } else {
            writeln!(out, "phase    {phase}")?;
        }
        let fate = v.status.as_ref().and_then(fate_name);
        let vm = match (&rec, &fate) {
            (Some(r), Some(f)) => format!("{}; vm: {f}", r.describe()),
            (Some(r), None) => r.describe(),
            (None, Some(f)) => format!("local; vm: {f}"),
            (None, None) => "local (not started on this machine)".into(),
        };
        writeln!(out, "vm       {vm}")?;
        if let Some(r) = rec.as_ref().filter(|_| v.lost(rec.as_ref())) {
            writeln!(
                out,
                "warning  the local agent is gone but the run never recorded an end (see {}): `cloudrun-launch --local sweep --yes` closes it",
                r.agent_log.display()
            )?;
        }
        return print_status_body(store, &v, now, out).await;
    }
    let vm: Result<Option<Instance>, String> = match (compute, v.instance()) {
        (Some((c, _)), Some((p, z, n))) => c
            .get_instance(&p, &z, &n)
            .await
            .map_err(|e| format!("VM check failed: {e}")),
        (None, _) => Err("VM check skipped: no project or credentials".into()),
        (_, None) => Ok(None),
    };
    if json {
        let vm = match &vm {
            Ok(Some(i)) => {
                serde_json::json!({"name": i.name, "status": i.status, "zone": i.zone_name()})
            }
            Ok(None) => serde_json::Value::Null,
            Err(e) => serde_json::json!({"error": e}),
        };
        return Ok(write_status_json(&v, v.shown_phase(None), vm, out)?);
    }
    writeln!(out, "run      {}", v.run)?;
    writeln!(out, "phase    {}", v.shown_phase(None))?;
    writeln!(out, "gpu      {}", v.gpu())?;
    if let Some((p, z, n)) = v.instance() {
        let state = vm_state(&vm, v.status.as_ref());
        writeln!(out, "vm       {n} in {z} (project {p}): {state}")?;
        let deleting = v.status.as_ref().is_some_and(delete_pending);
        if v.phase().is_terminal() && matches!(vm, Ok(Some(_))) && !deleting {
            writeln!(out, "warning  the run ended but its VM is still up: `cloudrun-launch stop {} --now` or `cloudrun-launch sweep --yes`", v.run)?;
        }
    }
    print_status_body(store, &v, now, out).await
}

/// The agent asked for its VM's delete and did not live to record the outcome (a delete
/// that works ends the agent): the Compute API has the last word.
fn delete_pending(s: &RunStatus) -> bool {
    s.delete.is_some() && s.vm.is_none()
}

/// The VM's state for `status RUN`: what the Compute API says, reconciled with the
/// delete the agent recorded before it asked.
fn vm_state(vm: &Result<Option<Instance>, String>, s: Option<&RunStatus>) -> String {
    let asked = s
        .filter(|s| delete_pending(s))
        .and_then(|s| s.delete.as_ref())
        .map(|d| {
            format!(
                "the agent asked for its delete at {}{}",
                d.requested_at.format("%H:%M:%S UTC"),
                d.operation
                    .as_ref()
                    .map(|o| format!(", operation {o}"))
                    .unwrap_or_default()
            )
        });
    match (vm, asked) {
        (Ok(None), Some(a)) => format!("deleted ({a}; the Compute API no longer has it)"),
        (Ok(None), None) => "gone".into(),
        (Ok(Some(i)), Some(a)) => format!("{}, being deleted ({a})", i.status),
        (Ok(Some(i)), None) => i.status.clone(),
        (Err(e), Some(a)) => format!("{e}; {a}"),
        (Err(e), None) => e.clone(),
    }
}

/// The part of `status RUN` that cloud and local runs share: times, cost, GPU, end.
async fn print_status_body(
    store: &Store,
    v: &RunView,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    let samples = store.metrics(&v.run).await?;
    if let Some(o) = v.spec.as_ref().and_then(|s| s.origin.as_ref()) {
        writeln!(out, "from     {} ({})", o.project_dir, o.by)?;
    }
    for p in &v.problems {
        writeln!(out, "problem  {p}")?;
    }
    if let Some(s) = &v.status {
        if let Some(e) = v.elapsed_secs(now) {
            writeln!(out, "elapsed  {}", cloudrun::billing::format_secs(e as u64))?;
        }
        if v.is_local() {
            writeln!(out, "cost     none (local run)")?;
        } else {
            writeln!(
                out,
                "cost     ${:.2} at ${:.2}/h{}",
                v.cost(),
                s.usd_per_hour,
                s.budget_usd
                    .map(|b| format!(" (budget ${b:.2})"))
                    .unwrap_or_default()
            )?;
        }
        if let Some(line) = gpu_wait_line(v, s, now) {
            writeln!(out, "gpu wait {line}")?;
        }
        if let Some(spec) = v.spec.as_ref().filter(|sp| sp.price.usd_per_hour > 0.0) {
            writeln!(
                out,
                "price    ${:.4}/h ({}){}",
                spec.price.usd_per_hour,
                spec.price.source,
                if spec.price.estimate && s.budget_usd.is_some() {
                    "; the budget is enforced with this estimate, no margin"
                } else {
                    ""
                }
            )?;
        }
        // A sample without readings (no GPU, or nvidia-smi failed) is no "gpu now";
        // the note or the error says why.
        if let Some(g) = s.last_gpu.as_ref().filter(|g| !g.gpus.is_empty()) {
            let util: Vec<String> = g
                .gpus
                .iter()
                .map(|r| {
                    r.util_gpu_pct
                        .map(|u| format!("{u:.0}%"))
                        .unwrap_or_else(|| "?".into())
                })
                .collect();
            writeln!(
                out,
                "gpu now  {} at {}",
                util.join(" "),
                g.at.format("%H:%M:%S UTC")
            )?;
        }
        if let Some(note) = &s.gpu_note {
            writeln!(out, "note     {note}")?;
        }
        if let Some(e) = &s.end {
            writeln!(
                out,
                "end      {}{}",
                e.reason.describe(),
                if e.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", e.message)
                }
            )?;
        }
        if let Some(r) = &s.receipt {
            writeln!(out, "receipt  {}", receipt_line(v.is_local(), r))?;
            for line in r.split.iter().flat_map(|sp| sp.lines()) {
                writeln!(out, "         {line}")?;
            }
        }
        for w in &s.warnings {
            writeln!(out, "warning  {w}")?;
        }
        if v.silent(now) {
            writeln!(
                out,
                "warning  no heartbeat since {}: the agent may be gone",
                s.updated_at.format("%Y-%m-%d %H:%M UTC")
            )?;
        }
    } else if v.broken() {
        writeln!(
            out,
            "status   unreadable: its logs and outputs are still there (`cloudrun-launch logs {}`, `cloudrun-launch pull {}`)",
            v.run, v.run
        )?;
    } else {
        writeln!(
            out,
            "status   none yet (the VM is booting or the launch did not finish)"
        )?;
    }
    if !samples.is_empty() {
        writeln!(out, "gpu util {}", sparkline(&samples))?;
    }
    Ok(())
}

/// How the wait for the plan's GPUs went (or goes): `None` for runs that did not wait.
fn gpu_wait_line(v: &RunView, s: &RunStatus, now: DateTime<Utc>) -> Option<String> {
    let started = s.gpu_wait_started_at?;
    let fmt = |secs: i64| cloudrun::billing::format_secs(secs.max(0) as u64);
    if let Some(ready) = s.gpu_ready_at {
        return Some(format!(
            "{} until the GPUs answered (billed as boot)",
            fmt((ready - started).num_seconds())
        ));
    }
    let until = s.ended_at.unwrap_or(now);
    let waited = fmt((until - started).num_seconds());
    if s.phase.is_terminal() {
        return Some(format!("{waited}: the GPUs never answered"));
    }
    let window = v
        .spec
        .as_ref()
        .map(|sp| format!(" of {}", fmt(sp.policies.gpu_ready_secs as i64)))
        .unwrap_or_default();
    let last = s
        .last_gpu
        .as_ref()
        .and_then(|g| g.error.clone())
        .map(|e| format!("; nvidia-smi: {e}"))
        .unwrap_or_default();
    Some(format!("{waited}{window} so far{last}"))
}

/// The receipt as `status` and `--follow` print it: a local run costs nothing, and says
/// so rather than "billed 1m 00s at $0.00/h".
pub fn receipt_line(local: bool, r: &cloudrun::billing::Receipt) -> String {
    if local {
        let ran = (r.ended_at - r.started_at).num_seconds().max(0) as u64;
        format!(
            "local run, no charge (ran {})",
            cloudrun::billing::format_secs(ran)
        )
    } else {
        r.summary()
    }
}

/// Print the log chunks not printed yet (in name order); returns how many were printed.
async fn print_new_chunks(
    store: &Store,
    run: &RunId,
    seen: &mut BTreeSet<String>,
    view: LogView,
    out: &mut dyn Write,
) -> Result<usize, RunsError> {
    let prefix = store.layout.logs_prefix(run);
    let mut objs = store
        .storage
        .list(&prefix)
        .await
        .map_err(st(format!("listing {prefix}")))?;
    objs.sort_by(|a, b| a.key.cmp(&b.key));
    let mut n = 0;
    for o in objs {
        if seen.contains(&o.key) {
            continue;
        }
        let b = store
            .storage
            .get_bytes(&o.key)
            .await
            .map_err(st(format!("reading {}", o.key)))?;
        crate::logview::render_chunk(&b, view, out)?;
        out.flush()?;
        seen.insert(o.key);
        n += 1;
    }
    Ok(n)
}

/// `logs RUN [-f]`. With `follow`, keeps polling until the run has ended (and its last
/// chunks are printed), riding out unreachable-store spells with backoff. Returns the
/// final status when following.
pub async fn logs(
    store: &Store,
    run: &RunId,
    follow: bool,
    poll: Duration,
    view: LogView,
    out: &mut dyn Write,
) -> Result<Option<RunStatus>, RunsError> {
    if !follow {
        let mut seen = BTreeSet::new();
        store.load(run).await?;
        print_new_chunks(store, run, &mut seen, view, out).await?;
        return Ok(None);
    }
    follow_logs(store, run, poll, None, view, out).await
}

/// Whether the run's "VM" still runs (for local runs: is the agent process alive).
pub type AliveCheck<'a> = &'a (dyn Fn() -> bool + Send + Sync);

/// `logs -f`: print chunks until the run ends. With `alive`, also stop (with an error)
/// when the "VM" is gone without the run having recorded an end, instead of waiting
/// forever for a status that no one will write.
pub async fn follow_logs(
    store: &Store,
    run: &RunId,
    poll: Duration,
    alive: Option<AliveCheck<'_>>,
    view: LogView,
    out: &mut dyn Write,
) -> Result<Option<RunStatus>, RunsError> {
    let mut seen = BTreeSet::new();
    let mut gone_once = false;
    let mut pause = poll;
    let mut failing = false;
    loop {
        let step = async {
            let status = store.load(run).await?;
            print_new_chunks(store, run, &mut seen, view, out).await?;
            Ok::<_, RunsError>(status)
        }
        .await;
        match step {
            Ok(loaded) => {
                if failing {
                    tracing::info!("store reachable again; resuming");
                    failing = false;
                }
                pause = poll;
                if loaded.phase().is_terminal() {
                    // The agent writes the last chunks before the final status.
                    print_new_chunks(store, run, &mut seen, view, out).await?;
                    return Ok(loaded.status);
                }
                if alive.is_some_and(|f| !f()) {
                    // One more look: the agent may have written its end just before exiting.
                    if gone_once {
                        return Err(RunsError::AgentGone(run.clone()));
                    }
                    gone_once = true;
                    continue;
                }
            }
            // A closed stdout (`| head`, `| grep -q`) ends the command, not the store.
            Err(e @ (RunsError::NoSuchRun { .. } | RunsError::Io(_))) => return Err(e),
            Err(e) => {
                if !failing {
                    tracing::warn!("{e}; retrying until the store answers again");
                    failing = true;
                }
                pause = (pause * 2).min(Duration::from_secs(LOG_POLL_MAX_BACKOFF_SECS));
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// `stop RUN`: write a stop request the agent polls for. With `now`, also delete the VM.
pub async fn stop(
    store: &Store,
    compute: Option<&dyn Compute>,
    run: &RunId,
    now_flag: bool,
    by: &str,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    let v = store.load(run).await?;
    if v.phase().is_terminal() && !now_flag {
        writeln!(out, "run {run} already ended ({})", v.end())?;
        return Ok(());
    }
    write_stop_request(
        store,
        run,
        by,
        now,
        if now_flag { "stop --now" } else { "stop" },
    )
    .await?;
    if !now_flag {
        let every = v
            .spec
            .as_ref()
            .map(|s| s.policies.intervals.stop_poll_secs)
            .unwrap_or(cloudrun::spec::DEFAULT_STOP_POLL_SECS);
        writeln!(out, "asked run {run} to stop: within ~{every} s the agent stops the job, syncs outputs, then deletes the VM (follow with `cloudrun-launch logs -f {run}`)")?;
        return Ok(());
    }
    let (p, z, n) = v
        .instance()
        .ok_or_else(|| RunsError::NoInstance(run.clone()))?;
    let compute = compute.ok_or_else(|| {
        RunsError::Other(
            "stop --now needs the Compute API: set GCLOUD_PROJECT and credentials".into(),
        )
    })?;
    writeln!(out, "ending run {}", v.brief())?;
    let rid = uuid::Uuid::new_v4().to_string();
    match compute
        .delete_instance(&p, &z, &n, &rid)
        .await
        .map_err(|source| RunsError::Compute {
            what: format!("deleting {n}"),
            source,
        })? {
        Some(_) => writeln!(
            out,
            "deleting VM {n} in {z}; outputs not yet synced are lost"
        )?,
        None => writeln!(out, "VM {n} is already gone")?,
    }
    Ok(())
}

/// `ls`: runs and live cloudrun VMs side by side.
pub async fn ls(
    store: &Store,
    compute: Option<(&dyn Compute, &str)>,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    let ids = store.run_ids().await?;
    let vms = live_vms(compute).await;
    writeln!(
        out,
        "{:<22} {:<15} {:<14} {:>8}  VM",
        "RUN", "PHASE", "GPU", "COST"
    )?;
    let mut shown = BTreeSet::new();
    for id in ids.iter().rev() {
        let v = store.load(id).await?;
        let vm = match &vms {
            Ok(m) => match m.get(id.as_str()) {
                Some(i) => format!("{} {} ({})", i.name, i.status, i.zone_name()),
                None => "-".into(),
            },
            Err(_) => "?".into(),
        };
        shown.insert(id.to_string());
        let mut phase = v.shown_phase(None).to_string();
        if v.silent(now) {
            phase.push('?');
        }
        writeln!(
            out,
            "{:<22} {:<15} {:<14} {:>8}  {}",
            id.as_str(),
            phase,
            v.gpu(),
            format!("${:.2}", v.cost()),
            vm
        )?;
    }
    match vms {
        Ok(m) => {
            for (run, i) in m.iter().filter(|(r, _)| !shown.contains(*r)) {
                writeln!(
                    out,
                    "{:<22} {:<15} {:<14} {:>8}  {} {} ({}) [no run in this GCS_DIR]",
                    run,
                    "-",
                    "-",
                    "-",
                    i.name,
                    i.status,
                    i.zone_name()
                )?;
            }
        }
        Err(note) => writeln!(out, "({note})")?,
    }
    Ok(())
}

/// A VM `sweep` would delete, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepCandidate {
    pub project: String,
    pub zone: String,
    pub name: String,
    pub run: String,
    pub why: String,
}

/// The cloudrun VMs whose run ended or went silent.
pub async fn sweep_candidates(
    store: &Store,
    compute: &dyn Compute,
    project: &str,
    now: DateTime<Utc>,
) -> Result<Vec<SweepCandidate>, RunsError> {
    let filter = format!("labels.{LABEL_MANAGED} = true");
    let vms = compute
        .list_instances(project, None, &filter)
        .await
        .map_err(|source| RunsError::Compute {
            what: "listing cloudrun VMs".into(),
            source,
        })?;
    let mut out = Vec::new();
    for vm in vms {
        let run = vm.labels.get(LABEL_RUN).cloned().unwrap_or_default();
        let created = DateTime::parse_from_rfc3339(&vm.creation_timestamp)
            .ok()
            .map(|t| t.with_timezone(&Utc));
        let old = created
            .map(|c| (now - c).num_seconds() > NO_STATUS_GRACE_SECS)
            .unwrap_or(true);
        let why = match RunId::parse(&run) {
            Err(_) => old.then(|| "no cloudrun-run label".to_string()),
            Ok(id) => match store.load(&id).await {
                // An unreadable status says nothing about the run: its agent may be
                // healthy (and rewrites the status soon). `status` shows the problem.
                Ok(v) if v.broken() => None,
                Ok(v) if v.phase().is_terminal() => Some(format!("run ended ({})", v.end())),
                Ok(v) if v.silent(now) => Some("no heartbeat".to_string()),
                Ok(v) if v.status.is_none() && old => Some("no status after boot".to_string()),
                Ok(_) => None,
                Err(RunsError::NoSuchRun { .. }) => {
                    old.then(|| "its run is not in this GCS_DIR".to_string())
                }
                Err(e) => return Err(e),
            },
        };
        if let Some(why) = why {
            out.push(SweepCandidate {
                project: project.to_string(),
                zone: vm.zone_name().to_string(),
                name: vm.name.clone(),
                run,
                why,
            });
        }
    }
    Ok(out)
}

/// `sweep [--yes]`.
pub async fn sweep(
    store: &Store,
    compute: &dyn Compute,
    project: &str,
    yes: bool,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<usize, RunsError> {
    let c = sweep_candidates(store, compute, project, now).await?;
    if c.is_empty() {
        writeln!(out, "nothing to sweep")?;
        return Ok(0);
    }
    for v in &c {
        if yes {
            let rid = uuid::Uuid::new_v4().to_string();
            let r = compute
                .delete_instance(&v.project, &v.zone, &v.name, &rid)
                .await;
            match r {
                Ok(_) => writeln!(out, "deleting {} in {} ({})", v.name, v.zone, v.why)?,
                Err(e) => writeln!(out, "could not delete {} in {}: {e}", v.name, v.zone)?,
            }
        } else {
            writeln!(out, "{} in {}: {} (run {})", v.name, v.zone, v.why, v.run)?;
        }
    }
    if !yes {
        writeln!(
            out,
            "{} VM(s) would be deleted; run `cloudrun-launch sweep --yes` to delete them",
            c.len()
        )?;
    }
    Ok(c.len())
}

/// `ls` for local runs: the VM column is the local agent (alive or exited).
pub async fn ls_local(
    store: &Store,
    data_dir: &Path,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    let ids = store.run_ids().await?;
    writeln!(
        out,
        "{:<22} {:<15} {:<14} {:>8}  VM",
        "RUN", "PHASE", "GPU", "COST"
    )?;
    for id in ids.iter().rev() {
        let v = store.load(id).await?;
        let rec = crate::local::record_for(data_dir, id);
        let vm = match &rec {
            Some(r) => r.describe(),
            None => "-".into(),
        };
        let mut phase = v.shown_phase(rec.as_ref()).to_string();
        if v.silent(now) && !v.lost(rec.as_ref()) {
            phase.push('?');
        }
        let gpu = if v.is_local() {
            "local".into()
        } else {
            v.gpu()
        };
        writeln!(
            out,
            "{:<22} {:<15} {:<14} {:>8}  {}",
            id.as_str(),
            phase,
            gpu,
            format!("${:.2}", v.cost()),
            vm
        )?;
    }
    Ok(())
}

/// `status RUN --json`: the run's status and spec with what is known of its VM, for scripts.
fn write_status_json(
    v: &RunView,
    phase: &str,
    vm: serde_json::Value,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let doc = serde_json::json!({
        "run_id": v.run.as_str(),
        "phase": phase,
        "problems": v.problems,
        "status": v.status,
        "spec": v.spec,
        "vm": vm,
    });
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    )?;
    Ok(())
}

/// Write the stop request the agent polls for (`runs/<id>/control/stop.json`).
async fn write_stop_request(
    store: &Store,
    run: &RunId,
    by: &str,
    now: DateTime<Utc>,
    message: &str,
) -> Result<(), RunsError> {
    let req = StopRequest {
        requested_at: now,
        by: by.to_string(),
        message: Some(message.to_string()),
    };
    let key = store.layout.stop_request(run);
    store
        .storage
        .put_bytes(
            &key,
            Bytes::from(serde_json::to_string_pretty(&req).unwrap_or_default()),
            &PutOptions::default().with_content_type("application/json"),
        )
        .await
        .map_err(st(format!("writing {key}")))?;
    Ok(())
}

/// `stop` (graceful) for a local run: as for a VM, unless its agent is gone, when no one
/// would ever read the request: then the run is closed as `lost`.
pub async fn stop_local(
    store: &Store,
    data_dir: &Path,
    run: &RunId,
    by: &str,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    let v = store.load(run).await?;
    if let Some(rec) = crate::local::record_for(data_dir, run) {
        if close_lost_local(store, &v, &rec, by, now, out).await? {
            return Ok(());
        }
    }
    stop(store, None, run, false, by, now, out).await
}

/// `stop --now` for a local run: write the stop request (as for a VM), kill the agent's
/// session (the agent and the job), and record the end the agent can no longer write.
pub async fn stop_local_now(
    store: &Store,
    data_dir: &Path,
    run: &RunId,
    by: &str,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    let v = store.load(run).await?;
    let rec = crate::local::record_for(data_dir, run).ok_or_else(|| {
        RunsError::Other(format!(
            "run {run} was not started on this machine (no record under {}): stop it gracefully with `cloudrun-launch --local stop {run}`",
            data_dir.display()
        ))
    })?;
    if close_lost_local(store, &v, &rec, by, now, out).await? {
        return Ok(());
    }
    if !rec.alive() {
        writeln!(out, "the local agent of run {run} is already gone")?;
        return Ok(());
    }
    writeln!(out, "ending run {}", v.brief())?;
    write_stop_request(store, run, by, now, "stop --now").await?;
    let n = crate::local::kill_session(&rec).map_err(|e| RunsError::Other(e.to_string()))?;
    if let Some(mut s) = v.status.filter(|s| !s.phase.is_terminal()) {
        s.phase = Phase::Ended;
        s.updated_at = now;
        s.ended_at = Some(now);
        s.end = Some(cloudrun::status::EndInfo {
            reason: cloudrun::status::EndReason::Stopped,
            exit_code: None,
            signal: Some(9),
            message: format!("stop --now by {by}: the local agent and its job were killed"),
        });
        s.vm = Some(cloudrun::status::VmFate::LocalExit);
        let skey = store.layout.status(run);
        store
            .storage
            .put_bytes(
                &skey,
                Bytes::from(s.to_json()),
                &PutOptions::default().with_content_type("application/json"),
            )
            .await
            .map_err(st(format!("writing {skey}")))?;
    }
    writeln!(
        out,
        "killed the local agent of run {run} (pid {}, {n} process group(s)); outputs not yet synced are lost",
        rec.pid
    )?;
    Ok(())
}

/// Close a local run whose agent is gone without recording an end: write the final
/// status the agent never wrote (`lost`, `vm: local_exit`, ended at its last heartbeat)
/// and say so. Returns whether it did (false when the run is not lost).
pub async fn close_lost_local(
    store: &Store,
    v: &RunView,
    rec: &crate::local::AgentRecord,
    by: &str,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<bool, RunsError> {
    if !v.lost(Some(rec)) {
        return Ok(false);
    }
    let run = &v.run;
    let mut s = v
        .status
        .clone()
        .unwrap_or_else(|| RunStatus::launching(run.clone(), rec.started_at, 0.0));
    let last_seen = s.updated_at.min(now);
    s.phase = Phase::Ended;
    s.updated_at = now;
    s.ended_at = Some(last_seen);
    s.end = Some(cloudrun::status::EndInfo {
        reason: cloudrun::status::EndReason::Lost,
        exit_code: None,
        signal: None,
        message: format!(
            "the local agent (pid {}) exited without recording an end (its log: {}); closed by {by}",
            rec.pid,
            rec.agent_log.display()
        ),
    });
    s.vm = Some(cloudrun::status::VmFate::LocalExit);
    // The job may outlive its agent: nothing would ship its output or end it now.
    let killed = crate::local::kill_leftovers(rec).map_err(|e| RunsError::Other(e.to_string()))?;
    let skey = store.layout.status(run);
    store
        .storage
        .put_bytes(
            &skey,
            Bytes::from(s.to_json()),
            &PutOptions::default().with_content_type("application/json"),
        )
        .await
        .map_err(st(format!("writing {skey}")))?;
    writeln!(
        out,
        "run {run}: its local agent (pid {}) is gone and the run never recorded an end; recorded it as lost{} (see {})",
        rec.pid,
        if killed > 0 {
            format!(", and killed what was left of its job ({killed} process group(s))")
        } else {
            String::new()
        },
        rec.agent_log.display()
    )?;
    Ok(true)
}

/// `sweep` for local runs: live local agents whose run ended or went silent, killed with
/// `--yes`, and runs whose agent is gone without an end, closed as `lost` with `--yes`.
pub async fn sweep_local(
    store: &Store,
    data_dir: &Path,
    yes: bool,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<usize, RunsError> {
    let mut n = 0;
    for r in crate::local::records(data_dir) {
        if !r.alive() {
            // A dead agent whose run never ended: nothing to kill, but the run stays
            // `running` forever unless its end is recorded.
            let v = match store.load(&r.run_id).await {
                Ok(v) if v.lost(Some(&r)) => v,
                Ok(_) | Err(RunsError::NoSuchRun { .. }) => continue,
                Err(e) => return Err(e),
            };
            n += 1;
            if yes {
                close_lost_local(store, &v, &r, "sweep", now, out).await?;
            } else {
                writeln!(
                    out,
                    "run {}: its local agent (pid {}) is gone and the run never recorded an end; it would be closed as lost",
                    r.run_id, r.pid
                )?;
            }
            continue;
        }
        let why = match store.load(&r.run_id).await {
            Ok(v) if v.phase().is_terminal() => format!("run ended ({})", v.end()),
            Ok(v) if v.silent(now) => "no heartbeat".into(),
            Ok(_) => continue,
            Err(RunsError::NoSuchRun { .. }) => continue,
            Err(e) => return Err(e),
        };
        n += 1;
        if yes {
            crate::local::kill_session(&r).map_err(|e| RunsError::Other(e.to_string()))?;
            writeln!(out, "killed local agent pid {} ({why})", r.pid)?;
        } else {
            writeln!(out, "local agent pid {}: {why} (run {})", r.pid, r.run_id)?;
        }
    }
    if n == 0 {
        writeln!(out, "nothing to sweep")?;
    } else if !yes {
        writeln!(
            out,
            "{n} local run(s) would be swept; run `cloudrun-launch --local sweep --yes` to do it"
        )?;
    }
    Ok(n)
}

#[cfg(test)]
mod delete_tests {
    use super::*;
    use cloudrun::status::{DeleteRecord, VmFate};

    fn ended(delete: Option<&str>, vm: Option<VmFate>) -> RunStatus {
        let run = RunId::parse("20261126-071500-ab12").unwrap();
        let at: DateTime<Utc> = "2026-11-26T08:00:00Z".parse().unwrap();
        let mut s = RunStatus::launching(run, at, 1.0);
        s.phase = Phase::Ended;
        s.vm = vm;
        s.delete = delete.map(|op| DeleteRecord {
            request_id: "req-1".into(),
            requested_at: at,
            operation: Some(op.into()),
        });
        s
    }

    #[test]
    fn a_delete_the_agent_did_not_live_to_confirm_is_confirmed_by_the_compute_api() {
        let s = ended(Some("operation-9"), None);
        let gone = vm_state(&Ok(None), Some(&s));
        assert_eq!(
            gone,
            "deleted (the agent asked for its delete at 08:00:00 UTC, operation operation-9; the Compute API no longer has it)"
        );
        let up = Instance {
            status: "STOPPING".into(),
            ..Instance::default()
        };
        let going = vm_state(&Ok(Some(up.clone())), Some(&s));
        assert!(
            going.starts_with("STOPPING, being deleted (the agent asked"),
            "{going}"
        );
        let unknown = vm_state(&Err("VM check failed: 503".into()), Some(&s));
        assert!(unknown.contains("503; the agent asked"), "{unknown}");
        // Without a recorded delete, or once the agent recorded the fate: as before.
        assert_eq!(vm_state(&Ok(None), Some(&ended(None, None))), "gone");
        let fated = ended(Some("operation-9"), Some(VmFate::PoweredOff));
        assert_eq!(vm_state(&Ok(Some(up)), Some(&fated)), "STOPPING");
    }
}
