//! Reading runs back from any machine: `status`, `logs`, `stop`, `ls`, `sweep`, and the
//! metrics `report` uses. Everything comes from the store (`status.json`, `spec.json`,
//! log and metrics chunks) and, where a project is known, the Compute API (is the VM
//! still there?). Results go to the writer handed in (stdout); nothing here prints logs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudrun::run_store::{RunStore, RunStoreError};
use cloudrun::status::{GpuSample, Phase, RunStatus, StopRequest};
use cloudrun::storage::{Storage, StorageError};
use cloudrun::{Layout, RunId, RunSpec};
use serde::Serialize;

use crate::logview::LogView;
use crate::provider::{self, Machine, Provider};

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
    #[error(transparent)]
    Docs(Box<RunStoreError>),
    #[error("the local agent of run {0} exited without recording an end: its own log is agent.log in the run's folder under ~/.local/share/cloudrun/local/")]
    AgentGone(RunId),
}

impl From<RunStoreError> for RunsError {
    fn from(e: RunStoreError) -> Self {
        RunsError::Docs(Box::new(e))
    }
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
    /// The run documents of this store, typed.
    pub fn docs(&self) -> RunStore {
        RunStore::new(self.storage.clone(), self.layout.clone())
    }

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
            let spec = Self::tolerate(self.docs().spec(id).await, &mut ignored)?;
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

    /// A run document, `None` when absent. One that does not parse is `None` too, with
    /// what is wrong pushed onto `problems`: one broken document must not hide the rest
    /// of the run (its logs, outputs, metrics) or the other runs.
    fn tolerate<T>(
        read: Result<Option<T>, RunStoreError>,
        problems: &mut Vec<String>,
    ) -> Result<Option<T>, RunStoreError> {
        match read {
            Ok(v) => Ok(v),
            Err(e @ RunStoreError::Unreadable { .. }) => {
                problems.push(e.to_string());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The run's status and spec, each `None` when absent or unreadable (then named in
    /// [`RunView::problems`]); an error only when the run has neither object at all.
    pub async fn load(&self, run: &RunId) -> Result<RunView, RunsError> {
        let mut problems = Vec::new();
        let docs = self.docs();
        let status = Self::tolerate(docs.status_doc(run).await, &mut problems)?;
        let spec = Self::tolerate(docs.spec(run).await, &mut problems)?;
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
        Ok(self.docs().metrics(run).await?)
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
        let mut s = format!("{} ({}, {}", self.run, self.gpu(), self.shown_phase(false));
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

    /// The phase as `status` and `ls` show it: `broken` for an unreadable status, `lost`
    /// for a run whose machine is gone without an end ([`provider::lost`]), else the
    /// recorded phase.
    pub fn shown_phase(&self, lost: bool) -> &'static str {
        if self.broken() {
            "broken"
        } else if lost {
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
        Phase::Retrying => "retrying",
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

/// Append `what` to a row's END column, two spaces after what is there.
fn note(end: &mut String, what: &str) {
    if !end.is_empty() {
        end.push_str("  ");
    }
    end.push_str(what);
}

/// The machines `p` lists, by the run each serves, or why it cannot list them.
async fn machines_by_run(p: &dyn Provider) -> Result<BTreeMap<String, Machine>, String> {
    p.machines()
        .await
        .map(|ms| ms.into_iter().map(|m| (m.run.clone(), m)).collect())
        .map_err(|e| e.to_string())
}

/// The agent asked for its machine's delete and did not live to record the outcome (a
/// delete that works ends the agent): the provider has the last word.
pub fn delete_pending(s: &RunStatus) -> bool {
    s.delete.is_some() && s.vm.is_none()
}

/// The machine's fate as the status names it (`deleted`, `powered_off`, `local_exit`).
pub fn fate_name(s: &RunStatus) -> Option<String> {
    s.vm.and_then(|f| serde_json::to_value(f).ok())
        .and_then(|v| v.as_str().map(str::to_string))
}

/// `status` without a run: one line per run.
pub async fn status_table(
    store: &Store,
    p: &dyn Provider,
    json: bool,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    let ids = store.run_ids().await?;
    let machines = machines_by_run(p).await;
    let machine = |id: &RunId| machines.as_ref().ok().and_then(|m| m.get(id.as_str()));
    let mut views = Vec::new();
    for id in &ids {
        views.push(store.load(id).await?);
    }
    if json {
        let rows: Vec<RowJson> = views
            .iter()
            .map(|v| RowJson {
                run_id: v.run.as_str(),
                phase: v.shown_phase(provider::lost(v, machine(&v.run))),
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
                vm_up: match (&machines, machine(&v.run)) {
                    (Ok(_), Some(m)) => Some(m.up),
                    (Ok(_), None) => p.sees_all().then_some(false),
                    (Err(_), _) => None,
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
    let w = p.words();
    for v in &views {
        let m = machine(&v.run);
        let lost = provider::lost(v, m);
        let mut end = v.end();
        if v.phase().is_terminal() && m.is_some_and(|m| m.up) {
            if v.status.as_ref().is_some_and(delete_pending) {
                note(&mut end, &format!("[{} being deleted]", w.noun));
            } else {
                note(
                    &mut end,
                    &format!("[{} still up: {} sweep]", w.noun, w.command),
                );
            }
        }
        if lost {
            note(
                &mut end,
                &format!("{} gone: `{} sweep --yes` closes it", w.noun, w.command),
            );
        } else if v.silent(now) {
            note(&mut end, "[silent: no heartbeat]");
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
            v.shown_phase(lost),
            zone,
            gpu,
            v.elapsed_secs(now)
                .map(|s| cloudrun::billing::format_secs(s as u64))
                .unwrap_or_else(|| "-".into()),
            format!("${:.2}", v.cost()),
            end
        )?;
    }
    if let Err(note) = machines {
        writeln!(out, "({note})")?;
    }
    Ok(())
}

/// `status RUN`: one run in detail, with what its provider knows of its machine.
pub async fn status_one(
    store: &Store,
    p: &dyn Provider,
    run: &RunId,
    json: bool,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    let v = store.load(run).await?;
    let machine = p.inspect(&v).await;
    let phase = v.shown_phase(machine.lost);
    if json {
        return Ok(write_status_json(&v, phase, machine.json, out)?);
    }
    writeln!(out, "run      {}", v.run)?;
    if machine.lost {
        writeln!(
            out,
            "phase    {phase} ({} gone; was {})",
            p.words().noun,
            phase_name(v.phase())
        )?;
    } else {
        writeln!(out, "phase    {phase}")?;
    }
    for (label, line) in &machine.lines {
        writeln!(out, "{label:<8} {line}")?;
    }
    print_status_body(store, &v, now, out).await
}

/// `stop RUN`: write a stop request the agent polls for; with `now_flag`, also end the
/// machine at once. A run whose machine is gone without an end is closed as `lost`.
pub async fn stop(
    store: &Store,
    p: &dyn Provider,
    run: &RunId,
    now_flag: bool,
    by: &str,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    let v = store.load(run).await?;
    if p.close_lost(store, &v, by, now, out).await? {
        return Ok(());
    }
    if now_flag {
        return p.stop_now(store, &v, by, now, out).await;
    }
    if v.phase().is_terminal() {
        writeln!(out, "run {run} already ended ({})", v.end())?;
        return Ok(());
    }
    write_stop_request(store, run, by, now, "stop").await?;
    let every = v
        .spec
        .as_ref()
        .map(|s| s.policies.intervals.stop_poll_secs)
        .unwrap_or(cloudrun::spec::DEFAULT_STOP_POLL_SECS);
    writeln!(out, "asked run {run} to stop: within ~{every} s the agent stops the job, syncs outputs, then deletes the VM (follow with `{} logs -f {run}`)", p.words().command)?;
    Ok(())
}

/// `ls`: runs and their machines side by side (and machines of ours with no run here).
pub async fn ls(
    store: &Store,
    p: &dyn Provider,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), RunsError> {
    let ids = store.run_ids().await?;
    let machines = machines_by_run(p).await;
    writeln!(
        out,
        "{:<22} {:<15} {:<14} {:>8}  VM",
        "RUN", "PHASE", "GPU", "COST"
    )?;
    let mut shown = BTreeSet::new();
    for id in ids.iter().rev() {
        let v = store.load(id).await?;
        let m = machines.as_ref().ok().and_then(|ms| ms.get(id.as_str()));
        let vm = match (&machines, m) {
            (Ok(_), Some(m)) => m.describe.clone(),
            (Ok(_), None) => "-".into(),
            (Err(_), _) => "?".into(),
        };
        shown.insert(id.to_string());
        let lost = provider::lost(&v, m);
        let mut phase = v.shown_phase(lost).to_string();
        if v.silent(now) && !lost {
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
    match machines {
        Ok(ms) if p.sees_all() => {
            for (run, m) in ms.iter().filter(|(r, _)| !shown.contains(*r)) {
                writeln!(
                    out,
                    "{:<22} {:<15} {:<14} {:>8}  {} [no run in this GCS_DIR]",
                    run, "-", "-", "-", m.describe
                )?;
            }
        }
        Ok(_) => {}
        Err(note) => writeln!(out, "({note})")?,
    }
    Ok(())
}

/// Why `sweep` would end machine `m`, or `None` to leave it.
async fn sweep_reason(
    store: &Store,
    p: &dyn Provider,
    m: &Machine,
    now: DateTime<Utc>,
) -> Result<Option<String>, RunsError> {
    let old = m
        .created_at
        .map(|c| (now - c).num_seconds() > NO_STATUS_GRACE_SECS)
        .unwrap_or(true);
    let Ok(id) = RunId::parse(&m.run) else {
        return Ok(old.then(|| "no cloudrun-run label".to_string()));
    };
    Ok(match store.load(&id).await {
        // An unreadable status says nothing about the run: its agent may be healthy
        // (and rewrites the status soon). `status` shows the problem.
        Ok(v) if v.broken() => None,
        Ok(v) if v.phase().is_terminal() => Some(format!("run ended ({})", v.end())),
        Ok(v) if v.silent(now) => Some("no heartbeat".to_string()),
        Ok(v) if v.status.is_none() && old => Some("no status after boot".to_string()),
        Ok(_) => None,
        // A machine that may belong to another store is not ours to judge.
        Err(RunsError::NoSuchRun { .. }) => {
            (old && p.sees_all()).then(|| "its run is not in this GCS_DIR".to_string())
        }
        Err(e) => return Err(e),
    })
}

/// `sweep [--yes]`: end the machines whose run ended or went silent, and close the runs
/// whose machine is gone without an end. Returns how many it found.
pub async fn sweep(
    store: &Store,
    p: &dyn Provider,
    yes: bool,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<usize, RunsError> {
    let w = p.words();
    let mut n = 0;
    for m in p.machines().await? {
        if !m.up {
            // Nothing to end, but a run that never ended stays `running` forever
            // unless its end is recorded.
            let Ok(id) = RunId::parse(&m.run) else {
                continue;
            };
            let v = match store.load(&id).await {
                Ok(v) if provider::lost(&v, Some(&m)) => v,
                Ok(_) | Err(RunsError::NoSuchRun { .. }) => continue,
                Err(e) => return Err(e),
            };
            n += 1;
            if yes {
                p.close_lost(store, &v, "sweep", now, out).await?;
            } else {
                writeln!(
                    out,
                    "run {id}: its {} is gone and the run never recorded an end; it would be closed as lost",
                    m.label
                )?;
            }
            continue;
        }
        let Some(why) = sweep_reason(store, p, &m, now).await? else {
            continue;
        };
        n += 1;
        if yes {
            match p.end_machine(&m, &why).await {
                Ok(line) | Err(line) => writeln!(out, "{line}")?,
            }
        } else {
            writeln!(out, "{}: {why} (run {})", m.label, m.run)?;
        }
    }
    if n == 0 {
        writeln!(out, "nothing to sweep")?;
    } else if !yes {
        writeln!(
            out,
            "{n} {}(s) would be {}; run `{} sweep --yes` to {} them",
            w.noun, w.ended, w.command, w.end
        )?;
    }
    Ok(n)
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
    let docs = store.docs();
    let mut n = 0;
    for key in docs.log_chunks(run).await? {
        if seen.contains(&key) {
            continue;
        }
        let b = docs.log_chunk(&key).await?;
        crate::logview::render_chunk(&b, view, out)?;
        out.flush()?;
        seen.insert(key);
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
pub(crate) async fn write_stop_request(
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
    store.docs().put_stop_request(run, &req).await?;
    Ok(())
}
