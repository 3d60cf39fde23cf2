//! The run, in order: restart state, pull, the wait for the plan's GPUs
//! ([`crate::gpu_wait`]), setup, job, and the single teardown. This
//! module owns the supervisor loop: one task that holds the job's process, receives the
//! watchers' events (GPU samples, preemption, stop request, output passes, SIGTERM) and
//! asks the policies on every tick. Everything it talks to is handed in ([`Deps`]), so
//! tests run it against a local store, a fake Compute and a scripted GPU.
//!
//! Teardown is the last step and runs once per process, idempotent across restarts:
//! SIGTERM to the job's group, grace, SIGKILL; final sync of outputs, logs and metrics,
//! verified, all three within the spec's `policies.final_sync_secs` (less after a
//! preemption); final `status.json` with end, receipt and any kept disk; the webhook; then
//! the delete (or, if it keeps failing, a power-off).
//!
//! When the final sync could not be verified (the store down or wrong), the boot disk is
//! kept first (`setDiskAutoDelete false`), so nothing is lost with the VM; waiting longer
//! for the store would only bill GPU time. The final status is then the only place that
//! names the kept disk, so it is retried for [`KEPT_DISK_STATUS_SECS`] before the VM is
//! deleted regardless. The delete happens once, after the keep-disk call.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudrun::billing::{Marks, Receipt, Split};
use cloudrun::compute::{wait_until_done, Compute};
use cloudrun::retry::{Retry, RetryPolicy, Retryable};
use cloudrun::spec::RunSpec;
use cloudrun::status::{
    DeleteRecord, EndInfo, EndReason, InstanceRef, Phase, RunStatus, StopRequest, VmFate,
};
use cloudrun::{Layout, Storage};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{secs_between, Clock};
use crate::gpu::{GpuProbe, GpuState};
use crate::gpu_wait::{self, LossWatch};
use crate::logs::{self, Activity, LogLine, LogMsg, LogShipper, LogSinks, Tails};
use crate::metadata::MetadataClient;
use crate::policy::{Notice, Policies};
use crate::process::{self, Job, JobCommand, JobExit, JobIo};
use crate::report::{self, MetricsMsg};
use crate::state::{self, AgentState, Resume, Stage};
use crate::transfer::{CodeSource, MirroredOutputs, Outputs};
use crate::user::{self, RunAs};
use crate::webhook::{Webhook, WebhookBody, WebhookEvent};

/// How often the policies are checked between events.
pub const POLICY_TICK_MILLIS: u64 = 1000;
/// The grace period after a preemption notice: GCE gives a Spot VM ~30 s in all, and the
/// final sync needs most of what is left.
pub const PREEMPTED_GRACE_SECS: u64 = 10;
/// Most time for the final sync after a preemption (what fits in the ~30 s notice);
/// otherwise the spec's `policies.final_sync_secs` applies.
pub const PREEMPTED_FINAL_SYNC_SECS: u64 = 15;
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
/// How long a heartbeat write under way at the end may take before it is dropped: the
/// final status must not be overtaken by it.
pub const HEARTBEAT_DRAIN_SECS: u64 = 5;
/// Delete attempts (same `requestId`, each retried inside the client) before powering off.
pub const DELETE_ATTEMPTS: u32 = 3;
/// How long to follow the delete (or disk) operation for an error before moving on.
pub const OPERATION_WAIT_SECS: u64 = 90;
/// How long the final status that names a kept disk is retried before the VM is deleted
/// regardless. The store has been unreachable for the whole final sync by then, so this
/// rides out a blip; waiting longer would bill GPU time on a long shot (the disk is kept
/// either way).
pub const KEPT_DISK_STATUS_SECS: u64 = report::FINAL_STATUS_DEADLINE_SECS;
/// Time for recording the VM's fate after the delete: the VM may be going down already.
pub const VM_FATE_STATUS_SECS: u64 = 10;
/// Events queued from the watchers before they wait for the supervisor.
const EVENT_QUEUE: usize = 256;

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

/// The Compute client and the instance to delete. Absent for local runs.
#[derive(Debug, Clone)]
pub struct VmHandle {
    pub compute: Arc<dyn Compute>,
    pub instance: InstanceRef,
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

#[derive(Debug)]
enum Event {
    Gpu(GpuState, cloudrun::status::GpuSample),
    Preempted,
    StopRequested(String),
    Outputs(crate::transfer::OutputPass),
    Sigterm,
}

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
    std::fs::create_dir_all(&settings.state_dir).map_err(|source| AgentError::StateDir {
        path: settings.state_dir.clone(),
        source,
    })?;
    let state_path = state::path_in(&settings.state_dir);
    let prev = state::load(&state_path);
    let boot_id = process::boot_id();
    let resume = state::decide(
        prev.as_ref(),
        &spec.run_id,
        &boot_id,
        process::is_same_process_alive,
    );
    let now = deps.clock.now();
    let prev = prev.filter(|p| p.run_id == spec.run_id);
    let st = AgentState {
        run_id: spec.run_id.clone(),
        boot_id,
        agent_started_at: prev.as_ref().map_or(now, |p| p.agent_started_at),
        starts: prev.as_ref().map_or(0, |p| p.starts) + 1,
        budget_warned: prev.as_ref().is_some_and(|p| p.budget_warned),
        gpu_wait_started_at: prev.as_ref().and_then(|p| p.gpu_wait_started_at),
        stage: prev.as_ref().map_or(Stage::Preparing, |p| p.stage.clone()),
    };
    tracing::info!(
        "run {}: start {} of the agent, {:?}",
        spec.run_id,
        st.starts,
        resume
    );

    if let Resume::Done { end, vm, kept_disk } = &resume {
        if deps.vm.is_none() {
            return Ok(Outcome {
                end: end.clone(),
                vm: Some(*vm),
                kept_disk: kept_disk.clone(),
                final_sync_verified: true,
            });
        }
    }

    if resume == Resume::Fresh {
        // Another run's output, or none: this run's output files start empty.
        forget_output(&settings.state_dir);
    }
    let mut agent = Agent::start(spec, settings, deps, st, state_path).await;
    let outcome = match resume {
        Resume::Fresh => {
            agent.webhook(WebhookEvent::Started, None, "agent started");
            let (end, job) = agent.prepare_and_run().await;
            agent.teardown(end, job).await
        }
        Resume::Prepare => {
            agent.note("restarted while preparing: pulling and running setup again");
            agent.end_leftover_setup();
            let (end, job) = agent.prepare_and_run().await;
            agent.teardown(end, job).await
        }
        Resume::Adopt {
            pid,
            start_ticks,
            job_started_at,
        } => {
            let (end, job) = agent.adopt(pid, start_ticks, job_started_at).await;
            agent.teardown(end, job).await
        }
        Resume::Lost { job_started_at } => {
            agent.status.job_started_at = Some(job_started_at);
            let end = match process::recorded_exit(&agent.exit_file(JOB_EXIT_FILE_NAME)) {
                Some(exit) => {
                    agent.note(&format!(
                        "the job ended while the agent was down, with {}",
                        exit.describe()
                    ));
                    job_exit_end(exit)
                }
                None => end_info(
                    EndReason::Lost,
                    "the agent restarted and the job was no longer running",
                ),
            };
            agent.teardown(end, None).await
        }
        Resume::Teardown { end, job } => {
            let exit_file = agent.exit_file(JOB_EXIT_FILE_NAME);
            let job = job.map(|(pid, ticks)| Job::adopt(pid, ticks, exit_file));
            agent.teardown(end, job).await
        }
        Resume::Delete {
            end,
            request_id,
            kept_disk,
        } => {
            agent
                .finish_vm(end, request_id, kept_disk, false, true)
                .await
        }
        Resume::Done { end, kept_disk, .. } => {
            let id = uuid::Uuid::new_v4().to_string();
            agent.finish_vm(end, id, kept_disk, false, true).await
        }
    };
    Ok(outcome)
}

struct Agent {
    spec: RunSpec,
    settings: Settings,
    deps: Deps,
    state: AgentState,
    state_path: PathBuf,
    status: RunStatus,
    policies: Policies,
    events_rx: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    log_tx: mpsc::Sender<LogMsg>,
    log_task: Option<JoinHandle<()>>,
    metrics_tx: mpsc::Sender<MetricsMsg>,
    metrics_task: Option<JoinHandle<()>>,
    status_tx: Option<watch::Sender<Option<RunStatus>>>,
    status_task: Option<JoinHandle<()>>,
    watchers: CancellationToken,
    outputs_stop: CancellationToken,
    outputs_task: Option<JoinHandle<()>>,
    outputs: Arc<dyn Outputs>,
    activity: Arc<Activity>,
    tails: Option<Tails>,
    webhook: Option<Webhook>,
    setup_secs: u64,
    final_sync_verified: bool,
    /// The latest GPU probe, so a wait that begins after the pull can use one taken
    /// during it.
    last_gpu_state: Option<GpuState>,
    /// The wait for the plan's GPUs while it runs, and where its "ready" goes.
    /// The answer is the GPUs' summary and whether an earlier probe of this wait missed
    /// them.
    gpu_wait: Option<(gpu_wait::Wait, oneshot::Sender<(String, bool)>)>,
    /// Once the GPUs have answered: warns when some go missing mid-run.
    gpu_loss: Option<LossWatch>,
    /// When the code was pulled (the receipt's split starts setup there).
    pulled_at: Option<DateTime<Utc>>,
    /// The last output sync that left every output file verified in the store.
    last_verified_outputs_at: Option<DateTime<Utc>>,
}

impl Agent {
    async fn start(
        spec: RunSpec,
        settings: Settings,
        deps: Deps,
        state: AgentState,
        state_path: PathBuf,
    ) -> Agent {
        let run = spec.run_id.clone();
        let now = deps.clock.now();
        let storage = deps.storage.clone();
        let layout = deps.layout.clone();
        let mut status = match storage.get_bytes(&layout.status(&run)).await {
            Ok(b) => RunStatus::from_json(&String::from_utf8_lossy(&b)).ok(),
            Err(_) => None,
        }
        .unwrap_or_else(|| {
            let mut s = RunStatus::launching(run.clone(), now, spec.price.usd_per_hour);
            s.launched_at = None;
            s
        });
        status.agent_started_at = Some(state.agent_started_at);
        status.usd_per_hour = spec.price.usd_per_hour;
        status.budget_usd = spec.policies.budget_usd;
        status.instance = deps.vm.as_ref().map(|v| v.instance.clone());
        let mut policies = Policies::new(&spec, state.agent_started_at);
        if state.budget_warned {
            policies.set_budget_warned();
        }

        let log_seq = logs::next_seq(storage.as_ref(), &layout.logs_prefix(&run), now).await;
        let cursor_path = settings.state_dir.join(logs::CURSOR_FILE_NAME);
        let from = logs::resume_cursor(storage.as_ref(), &layout, &run, &cursor_path).await;
        let metrics_seq = logs::next_seq(storage.as_ref(), &layout.metrics_prefix(&run), now).await;
        let mut sinks = settings.sinks.clone();
        sinks.local_file = Some(settings.state_dir.join("job.log"));
        let (log_tx, log_rx) = mpsc::channel(1024);
        let shipper = LogShipper::new(
            storage.clone(),
            layout.clone(),
            run.clone(),
            log_seq,
            &sinks,
        )
        .with_cursor(cursor_path, from);
        let output = logs::output_paths(&settings.state_dir);
        if let Some(d) = output.0.parent() {
            if let Err(e) = std::fs::create_dir_all(d) {
                tracing::warn!("creating {}: {e}", d.display());
            }
        }
        let activity = Arc::new(Activity::default());
        let tails = Tails::start(
            output,
            from,
            log_tx.clone(),
            activity.clone(),
            deps.clock.clone(),
        );
        let flush = Duration::from_secs(spec.policies.intervals.log_flush_secs);
        let log_task = tokio::spawn(shipper.run(log_rx, flush));
        let beat = Duration::from_secs(spec.policies.intervals.heartbeat_secs);
        let (metrics_tx, metrics_task) = report::spawn_metrics(
            storage.clone(),
            layout.clone(),
            run.clone(),
            metrics_seq,
            beat,
        );
        let (status_tx, status_task) =
            report::spawn_status_writer(storage.clone(), layout.status(&run));

        let outputs: Arc<dyn Outputs> = match &deps.outputs {
            Some(o) => o.clone(),
            None => Arc::new(MirroredOutputs::new(
                storage.clone(),
                &layout,
                &run,
                &job_dir(&settings, &spec),
                &spec.job.output_dirs,
                &settings.state_dir,
            )),
        };
        let webhook = spec.webhook.as_deref().and_then(Webhook::new);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let mut agent = Agent {
            spec,
            settings,
            deps,
            state,
            state_path,
            status,
            policies,
            events_rx,
            events_tx,
            log_tx,
            log_task: Some(log_task),
            metrics_tx,
            metrics_task: Some(metrics_task),
            status_tx: Some(status_tx),
            status_task: Some(status_task),
            watchers: CancellationToken::new(),
            outputs_stop: CancellationToken::new(),
            outputs_task: None,
            outputs,
            activity,
            tails: Some(tails),
            webhook,
            setup_secs: 0,
            final_sync_verified: false,
            last_gpu_state: None,
            gpu_wait: None,
            gpu_loss: None,
            pulled_at: None,
            last_verified_outputs_at: None,
        };
        agent.save_state();
        agent.start_watchers();
        agent
    }

    fn save_state(&self) {
        state::save(&self.state_path, &self.state);
    }

    fn set_stage(&mut self, stage: Stage) {
        self.state.stage = stage;
        self.state.boot_id = process::boot_id();
        self.save_state();
    }

    /// A line in the job log (and the agent's own log) from the agent.
    fn note(&self, msg: &str) {
        tracing::info!("{msg}");
        let _ = self.log_tx.try_send(LogMsg::Line(LogLine::agent(msg)));
    }

    /// A warning in the job log and the agent's own log.
    fn note_warning(&self, msg: &str) {
        tracing::warn!("{msg}");
        let _ = self.log_tx.try_send(LogMsg::Line(LogLine::agent(msg)));
    }

    /// Where the shim records the exit of the process `name` names.
    fn exit_file(&self, name: &str) -> PathBuf {
        self.settings.state_dir.join(name)
    }

    /// An agent restarted during setup: the old setup may still run (its output goes to
    /// files, so it did not die with the agent). End its group before setup runs again.
    fn end_leftover_setup(&self) {
        let path = self.settings.state_dir.join(SETUP_PROCESS_FILE_NAME);
        let Some((pid, ticks)) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<(i32, u64)>(&b).ok())
        else {
            return;
        };
        if process::is_same_process_alive(pid, ticks) {
            self.note(&format!(
                "the setup started by the previous agent (process group {pid}) still runs: ending it"
            ));
            Job::adopt(pid, ticks, self.exit_file(SETUP_EXIT_FILE_NAME))
                .signal_group(nix::sys::signal::Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(&path);
    }

    fn webhook(&self, event: WebhookEvent, reason: Option<EndReason>, message: &str) {
        let Some(w) = self.webhook.clone() else {
            return;
        };
        let body = self.webhook_body(event, reason, message);
        tokio::spawn(async move { w.post(&body).await });
    }

    fn webhook_body(
        &self,
        event: WebhookEvent,
        reason: Option<EndReason>,
        message: &str,
    ) -> WebhookBody {
        let (_, cost) = self.policies.cost_at(self.deps.clock.now());
        WebhookBody {
            event,
            run_id: self.spec.run_id.to_string(),
            at: self.deps.clock.now(),
            reason,
            message: message.to_string(),
            cost_usd: cost,
            outputs: outputs_url(&self.spec, &self.deps.layout),
        }
    }

    fn start_watchers(&mut self) {
        let cancel = self.watchers.clone();
        let tx = self.events_tx.clone();
        let gpu = self.deps.gpu.clone();
        let clock = self.deps.clock.clone();
        let every = Duration::from_secs(self.spec.policies.intervals.gpu_sample_secs);
        tokio::spawn(async move {
            let work = async {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let state = gpu.probe().await;
                    let sample = state.to_sample(clock.now());
                    if tx.send(Event::Gpu(state, sample)).await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! { _ = cancel.cancelled() => {}, _ = work => {} }
        });

        let cancel = self.watchers.clone();
        let tx = self.events_tx.clone();
        let storage = self.deps.storage.clone();
        let key = self.deps.layout.stop_request(&self.spec.run_id);
        let every = Duration::from_secs(self.spec.policies.intervals.stop_poll_secs);
        tokio::spawn(async move {
            let work = async {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Ok(Some(_)) = storage.head(&key).await {
                        let msg = match storage.get_bytes(&key).await {
                            Ok(b) => match serde_json::from_slice::<StopRequest>(&b) {
                                Ok(r) => format!(
                                    "stop requested by {} at {}{}",
                                    if r.by.is_empty() {
                                        "the launcher"
                                    } else {
                                        &r.by
                                    },
                                    r.requested_at.to_rfc3339(),
                                    r.message.map(|m| format!(": {m}")).unwrap_or_default()
                                ),
                                Err(_) => "stop requested (unreadable request)".to_string(),
                            },
                            Err(_) => "stop requested".to_string(),
                        };
                        let _ = tx.send(Event::StopRequested(msg)).await;
                        return;
                    }
                }
            };
            tokio::select! { _ = cancel.cancelled() => {}, _ = work => {} }
        });

        if let Some(md) = self.deps.metadata.clone() {
            let cancel = self.watchers.clone();
            let tx = self.events_tx.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = md.wait_for_preemption() => { let _ = tx.send(Event::Preempted).await; }
                }
            });
        }

        if self.settings.handle_sigterm {
            let cancel = self.watchers.clone();
            let tx = self.events_tx.clone();
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut sig) => {
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = sig.recv() => { let _ = tx.send(Event::Sigterm).await; }
                        }
                    });
                }
                Err(e) => tracing::warn!("cannot watch SIGTERM: {e}"),
            }
        }
    }

    fn start_output_sync(&mut self) {
        let stop = self.outputs_stop.clone();
        let tx = self.events_tx.clone();
        let outputs = self.outputs.clone();
        let every = Duration::from_secs(self.spec.policies.intervals.output_sync_secs);
        self.outputs_task = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let pass = outputs.sync().await;
                if tx.send(Event::Outputs(pass)).await.is_err() {
                    return;
                }
            }
        }));
    }

    fn publish_status(&mut self) {
        let now = self.deps.clock.now();
        let (billed, cost) = self.policies.cost_at(now);
        self.status.updated_at = now;
        self.status.billed_secs = billed;
        self.status.cost_usd = cost;
        self.status.gpu_note = self.policies.gpu_note();
        self.status.last_output_at = self.activity.last().or(self.status.last_output_at);
        if let Some(tx) = &self.status_tx {
            tx.send_replace(Some(self.status.clone()));
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        self.status.enter_phase(phase, self.deps.clock.now());
        self.publish_status();
    }

    /// Handle one watcher event; `Some` if it ends the run.
    fn handle_event(&mut self, ev: Event) -> Option<EndInfo> {
        match ev {
            Event::Gpu(state, sample) => {
                self.policies.observe_gpu(&state, &sample);
                let _ = self.metrics_tx.try_send(MetricsMsg::Sample(sample.clone()));
                self.status.last_gpu = Some(sample);
                self.observe_gpu_wait(&state);
                self.last_gpu_state = Some(state);
                None
            }
            Event::Outputs(pass) => {
                for m in &pass.skipped {
                    self.note_warning(m);
                }
                if pass.complete {
                    self.last_verified_outputs_at = Some(self.deps.clock.now());
                }
                if pass.changed {
                    self.policies.observe_activity(self.deps.clock.now());
                }
                if pass.uploaded > 0 {
                    tracing::info!(
                        "outputs: {} file(s), {} bytes mirrored",
                        pass.uploaded,
                        pass.bytes
                    );
                }
                None
            }
            Event::Preempted => {
                self.webhook(
                    WebhookEvent::Preempted,
                    Some(EndReason::Preempted),
                    "preemption notice",
                );
                Some(end_info(
                    EndReason::Preempted,
                    "the Spot VM is being preempted",
                ))
            }
            Event::StopRequested(msg) => Some(end_info(EndReason::Stopped, msg)),
            Event::Sigterm => Some(end_info(
                EndReason::Stopped,
                "the agent received SIGTERM (the VM is shutting down)",
            )),
        }
    }

    fn check_policies(&mut self) -> Option<EndInfo> {
        if let Some(at) = self.activity.last() {
            self.policies.observe_activity(at);
        }
        let (decision, notices) = self.policies.check(self.deps.clock.now());
        for n in notices {
            let Notice::BudgetWarning {
                cost_usd,
                budget_usd,
            } = n;
            let msg = format!(
                "budget warning: ${cost_usd:.2} of ${budget_usd:.2} spent ({:.0} %)",
                cloudrun::spec::BUDGET_WARN_FRACTION * 100.0
            );
            self.note(&msg);
            self.status.warnings.push(msg.clone());
            self.state.budget_warned = true;
            self.save_state();
            self.webhook(WebhookEvent::BudgetWarning, None, &msg);
            self.publish_status();
        }
        if let Some(d) = decision {
            return Some(end_info(d.reason, d.message));
        }
        let now = self.deps.clock.now();
        let timed_out = self.gpu_wait.as_ref().and_then(|(w, _)| w.timed_out(now));
        timed_out.map(|msg| end_info(EndReason::GpuUnavailable, msg))
    }

    /// Feed a probe to the GPU wait (ready ends it) or, after it, to the loss watch.
    fn observe_gpu_wait(&mut self, state: &GpuState) {
        if let Some((wait, _)) = self.gpu_wait.as_mut() {
            if let Some(ready) = wait.observe(state) {
                let missed = wait.missed();
                if let Some((_, tx)) = self.gpu_wait.take() {
                    let _ = tx.send((ready, missed));
                }
            }
            return;
        }
        let warning = self.gpu_loss.as_mut().and_then(|l| l.observe(state));
        if let Some(w) = warning {
            self.note(&w);
            self.status.warnings.push(w);
            self.publish_status();
        }
    }

    /// Wait, before setup and job, until `nvidia-smi` answers with the plan's GPUs (see
    /// [`crate::gpu_wait`]); `Err` ends the run (`gpu_unavailable`, or any other stop
    /// decided meanwhile). Runs that do not wait return at once.
    async fn wait_for_gpus(&mut self) -> Result<(), EndInfo> {
        let Some((expected, window_secs)) = gpu_wait::Expected::from_spec(&self.spec) else {
            return Ok(());
        };
        let now = self.deps.clock.now();
        let continued = self.state.gpu_wait_started_at.is_some();
        let started = *self.state.gpu_wait_started_at.get_or_insert(now);
        self.save_state();
        self.status.gpu_wait_started_at = Some(started);
        // Set again by an earlier agent process (a restart during setup): kept when the
        // GPUs are still there at once, so the receipt does not bill setup as the wait.
        let earlier_ready = self.status.gpu_ready_at.take();
        let mut wait = gpu_wait::Wait::new(expected.clone(), started, window_secs);
        // A probe taken during the pull may already show them.
        let ready = match self.last_gpu_state.clone() {
            Some(state) => wait.observe(&state),
            None => None,
        };
        let (ready, ready_at) = match ready {
            Some(r) => (r, earlier_ready.unwrap_or(now)),
            None => {
                let left = window_secs as f64 - secs_between(started, now);
                self.note(&if continued {
                    format!(
                        "still waiting for {} to answer nvidia-smi: the window began at {}, {} left",
                        expected.describe(),
                        started.format("%H:%M:%S UTC"),
                        cloudrun::billing::format_secs(left.max(0.0) as u64)
                    )
                } else {
                    format!(
                        "waiting up to {} for {} to answer nvidia-smi",
                        cloudrun::billing::format_secs(window_secs),
                        expected.describe()
                    )
                });
                let (tx, rx) = oneshot::channel();
                self.gpu_wait = Some((wait, tx));
                self.set_phase(Phase::WaitingForGpu);
                let got = self.watch_until(rx).await;
                self.gpu_wait = None;
                match got {
                    Err(end) => return Err(end),
                    Ok(Ok((r, false))) => (r, earlier_ready.unwrap_or(self.deps.clock.now())),
                    Ok(Ok((r, true))) => (r, self.deps.clock.now()),
                    // The sender lives in `self.gpu_wait` until it sends.
                    Ok(Err(_)) => {
                        return Err(end_info(
                            EndReason::AgentError,
                            "the GPU wait ended without an answer",
                        ))
                    }
                }
            }
        };
        self.status.gpu_ready_at = Some(ready_at);
        self.gpu_loss = Some(LossWatch::new(expected));
        self.note(&format!(
            "GPUs ready after {}: {ready}",
            cloudrun::billing::format_secs(secs_between(started, ready_at).max(0.0) as u64)
        ));
        self.publish_status();
        Ok(())
    }

    /// Drive `fut` while watching events, policies and the heartbeat; `Err` when the run
    /// must stop first.
    async fn watch_until<F: std::future::Future>(&mut self, fut: F) -> Result<F::Output, EndInfo> {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(Duration::from_millis(POLICY_TICK_MILLIS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let beat = Duration::from_secs(self.spec.policies.intervals.heartbeat_secs);
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                v = &mut fut => return Ok(v),
                Some(ev) = self.events_rx.recv() => {
                    if let Some(end) = self.handle_event(ev) {
                        return Err(end);
                    }
                }
                _ = tick.tick() => {
                    if let Some(end) = self.check_policies() {
                        return Err(end);
                    }
                }
                _ = heartbeat.tick() => self.publish_status(),
            }
        }
    }

    fn job_env(&self) -> Vec<(String, String)> {
        use cloudrun::contract::{ENV_OUTPUT_DIR, ENV_OUTPUT_DIRS, ENV_RUN_ID};
        let dir = job_dir(&self.settings, &self.spec);
        let outs: Vec<String> = self
            .spec
            .job
            .output_dirs
            .iter()
            .map(|d| dir.join(d).display().to_string())
            .collect();
        let mut env = vec![
            ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
            (ENV_RUN_ID.to_string(), self.spec.run_id.to_string()),
            (ENV_OUTPUT_DIRS.to_string(), outs.join(":")),
        ];
        if let Some(first) = outs.first() {
            env.push((ENV_OUTPUT_DIR.to_string(), first.clone()));
        }
        env.extend(
            self.spec
                .job
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        env
    }

    /// Start `argv` through the shim, its output appended to the run's output files and
    /// its exit recorded in the state dir's `exit_name`.
    fn spawn_job(
        &mut self,
        argv: Vec<String>,
        run_as: &Option<RunAs>,
        exit_name: &str,
    ) -> Result<Job, String> {
        let cmd = JobCommand {
            argv,
            cwd: job_dir(&self.settings, &self.spec),
            env: self.job_env(),
            run_as: run_as.clone(),
        };
        let (out, err) = logs::output_paths(&self.settings.state_dir);
        let open = |p: &std::path::Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("opening the job's output file {}: {e}", p.display()))
        };
        let io = JobIo {
            shim: self.settings.job_shim.clone(),
            exit_file: self.exit_file(exit_name),
            stdout: open(&out)?,
            stderr: open(&err)?,
        };
        process::spawn(&cmd, io).map_err(|e| e.to_string())
    }

    /// Let the tails read what the process that just ended wrote.
    async fn drain_readers(&mut self) {
        if let Some(t) = &self.tails {
            t.catch_up(Duration::from_secs(READER_DRAIN_SECS)).await;
        }
    }

    /// Pull, setup, job. Returns the end and, when a stop was decided while the job ran,
    /// the job to terminate.
    async fn prepare_and_run(&mut self) -> (EndInfo, Option<Job>) {
        self.set_stage(Stage::Preparing);
        self.set_phase(Phase::Pulling);
        let run_as =
            match user::resolve(self.spec.job.user.as_deref(), &self.settings.useradd).await {
                Ok(u) => u,
                Err(e) => return (end_info(EndReason::SetupFailed, e.to_string()), None),
            };
        let code = self.deps.code.clone();
        let dest = self.settings.work_dir.clone();
        let pulled = match self
            .watch_until(async move { code.pull(&dest).await })
            .await
        {
            Err(end) => return (end, None),
            Ok(p) => p,
        };
        match pulled {
            Ok(summary) => {
                self.pulled_at = Some(self.deps.clock.now());
                self.note(&format!("code pulled: {summary}"))
            }
            Err(e) => return (end_info(EndReason::PullFailed, e), None),
        }
        let dir = job_dir(&self.settings, &self.spec);
        for d in &self.spec.job.output_dirs {
            if let Err(e) = std::fs::create_dir_all(dir.join(d)) {
                tracing::warn!("creating output dir {d}: {e}");
            }
        }
        if let Some(u) = &run_as {
            if let Err(e) = user::chown_tree(&self.settings.work_dir, u).await {
                return (end_info(EndReason::SetupFailed, e.to_string()), None);
            }
        }
        if let Err(end) = self.wait_for_gpus().await {
            return (end, None);
        }

        if let Some(setup) = self.spec.job.setup.clone() {
            self.set_phase(Phase::Setup);
            self.note(&format!("setup: {setup}"));
            let mut job = match self.spawn_job(
                vec!["sh".into(), "-c".into(), setup],
                &run_as,
                SETUP_EXIT_FILE_NAME,
            ) {
                Ok(j) => j,
                Err(e) => return (end_info(EndReason::SetupFailed, e), None),
            };
            let setup_file = self.settings.state_dir.join(SETUP_PROCESS_FILE_NAME);
            let setup_pid = job.pid();
            let setup_ticks = process::proc_start_ticks(setup_pid).unwrap_or(0);
            if let Err(e) = crate::transfer::save_json(&setup_file, &(setup_pid, setup_ticks)) {
                tracing::warn!("could not save {}: {e}", setup_file.display());
            }
            match self.watch_until(job.wait()).await {
                Err(end) => return (end, Some(job)),
                Ok(exit) if exit.success() => {}
                Ok(exit) => {
                    self.drain_readers().await;
                    return (
                        EndInfo {
                            reason: EndReason::SetupFailed,
                            exit_code: exit.code,
                            signal: exit.signal,
                            message: format!("the setup command ended with {}", exit.describe()),
                        },
                        None,
                    );
                }
            }
            self.drain_readers().await;
        }

        let now = self.deps.clock.now();
        self.setup_secs = secs_between(self.state.agent_started_at, now).max(0.0) as u64;
        let mut job =
            match self.spawn_job(self.spec.job.command.clone(), &run_as, JOB_EXIT_FILE_NAME) {
                Ok(j) => j,
                Err(e) => return (end_info(EndReason::Failed, e), None),
            };
        let pid = job.pid();
        self.set_stage(Stage::Running {
            pid,
            start_ticks: process::proc_start_ticks(pid).unwrap_or(0),
            job_started_at: now,
        });
        self.policies.job_started(now);
        self.status.job_started_at = Some(now);
        self.set_phase(Phase::Running);
        self.note(&format!(
            "job started (pid {pid}): {}",
            self.spec.job.command.join(" ")
        ));
        self.start_output_sync();
        match self.watch_until(job.wait()).await {
            Err(end) => (end, Some(job)),
            Ok(exit) => (job_exit_end(exit), None),
        }
    }

    async fn adopt(
        &mut self,
        pid: i32,
        start_ticks: u64,
        started: DateTime<Utc>,
    ) -> (EndInfo, Option<Job>) {
        let msg = format!(
            "agent restarted; the job (process group {pid}) is still running and is supervised again; its output is shipped from where the last agent left off"
        );
        self.note(&msg);
        self.status.warnings.push(msg);
        self.policies.job_started(started);
        self.status.job_started_at = Some(started);
        self.setup_secs = secs_between(self.state.agent_started_at, started).max(0.0) as u64;
        if self.status.gpu_ready_at.is_some() {
            self.gpu_loss =
                gpu_wait::Expected::from_spec(&self.spec).map(|(e, _)| LossWatch::new(e));
        }
        self.set_phase(Phase::Running);
        self.start_output_sync();
        let mut job = Job::adopt(pid, start_ticks, self.exit_file(JOB_EXIT_FILE_NAME));
        match self.watch_until(job.wait()).await {
            Err(end) => (end, Some(job)),
            Ok(exit) if exit.code.is_some() || exit.signal.is_some() => (job_exit_end(exit), None),
            Ok(_) => (
                end_info(
                    EndReason::Lost,
                    "the job exited after an agent restart and its exit was not recorded",
                ),
                None,
            ),
        }
    }

    /// The single last step. See the module docs.
    async fn teardown(&mut self, mut end: EndInfo, job: Option<Job>) -> Outcome {
        self.set_stage(Stage::TearingDown { end: end.clone() });
        self.set_phase(Phase::Stopping);
        self.note(&format!(
            "stopping: {} ({})",
            end.reason.describe(),
            end.message
        ));
        let preempted = end.reason == EndReason::Preempted;
        if let Some(mut job) = job {
            let grace = if preempted {
                self.spec.policies.grace_secs.min(PREEMPTED_GRACE_SECS)
            } else {
                self.spec.policies.grace_secs
            };
            let exit = job.terminate(Duration::from_secs(grace)).await;
            self.note(&format!("job ended: {}", exit.describe()));
            if end.exit_code.is_none() && end.signal.is_none() {
                end.exit_code = exit.code;
                end.signal = exit.signal;
            }
        }
        let job_ended_at = self.deps.clock.now();
        self.watchers.cancel();
        self.outputs_stop.cancel();
        if let Some(t) = self.tails.take() {
            t.finish(Duration::from_secs(READER_DRAIN_SECS)).await;
        }

        // Final sync: the periodic pass under way, outputs, then logs and metrics (the log
        // gets the sync's result), all within one deadline.
        self.status.final_sync_started_at = Some(self.deps.clock.now());
        let budget = final_sync_budget(&self.spec, preempted);
        let deadline = tokio::time::Instant::now() + budget;
        if let Some(t) = self.outputs_task.take() {
            join_until(t, deadline).await;
        }
        let pass = match tokio::time::timeout_at(deadline, self.outputs.sync()).await {
            Ok(p) => p,
            Err(_) => crate::transfer::OutputPass {
                problems: vec![format!(
                    "the final sync did not finish within {} s (policies.final_sync_secs)",
                    budget.as_secs()
                )],
                ..Default::default()
            },
        };
        for m in &pass.skipped {
            self.note_warning(m);
        }
        if pass.complete {
            self.note(&format!(
                "final sync: outputs verified ({} file(s) sent now)",
                pass.uploaded
            ));
        } else {
            self.note(&format!(
                "final sync incomplete: {}",
                pass.problems.join("; ")
            ));
            self.status.warnings.extend(pass.problems.iter().cloned());
        }
        let logs_ok = self.finish_logs(deadline).await;
        let (mtx, mrx) = oneshot::channel();
        let metrics_ok = tokio::time::timeout_at(deadline, async {
            self.metrics_tx.send(MetricsMsg::Finish(mtx)).await.is_ok() && mrx.await == Ok(true)
        })
        .await;
        if metrics_ok != Ok(true) {
            self.status
                .warnings
                .push("the last GPU samples could not be stored".into());
        }
        if let Some(t) = self.metrics_task.take() {
            join_until(t, deadline).await;
        }
        if !logs_ok {
            self.status
                .warnings
                .push("the end of the job's log could not be stored".into());
        }
        // No heartbeat may land after the final status: let one under way finish.
        self.status_tx = None;
        if let Some(t) = self.status_task.take() {
            let drain = tokio::time::Instant::now() + Duration::from_secs(HEARTBEAT_DRAIN_SECS);
            join_until(t, deadline.max(drain)).await;
        }
        self.final_sync_verified = pass.complete && logs_ok;

        // Keep the boot disk when the store does not have everything.
        let mut kept_disk = None;
        let mut power_off_only = false;
        if !self.final_sync_verified {
            if let Some(vm) = self.deps.vm.clone() {
                match keep_boot_disk(&vm).await {
                    Ok(disk) => {
                        let msg = format!("the final sync could not be verified: boot disk {disk} is kept (not deleted with the VM)");
                        tracing::warn!("{msg}");
                        self.status.warnings.push(msg);
                        kept_disk = Some(disk);
                    }
                    Err(e) => {
                        let msg = format!("the final sync could not be verified and the boot disk could not be kept ({e}); powering off instead of deleting");
                        tracing::error!("{msg}");
                        self.status.warnings.push(msg);
                        power_off_only = true;
                    }
                }
            }
        }

        // Final status, with the receipt.
        let now = self.deps.clock.now();
        let job_secs = self
            .status
            .job_started_at
            .map_or(0, |s| secs_between(s, now).max(0.0) as u64);
        let mut receipt = Receipt::new(
            self.state.agent_started_at,
            now,
            self.spec.price.usd_per_hour,
            self.setup_secs,
            job_secs,
        );
        // The wait for the GPUs (after the pull) is billed as boot: boot ends when they
        // answered, or at the end of the job's time when they never did.
        let boot_done = match (self.status.gpu_wait_started_at, self.status.gpu_ready_at) {
            (_, Some(ready)) => Some(self.pulled_at.map_or(ready, |p| p.max(ready))),
            (Some(_), None) => Some(job_ended_at),
            (None, None) => self.pulled_at,
        };
        receipt.split = Some(Split::compute(
            &Marks {
                started_at: self.state.agent_started_at,
                pulled_at: boot_done,
                job_started_at: self.status.job_started_at,
                job_ended_at: Some(job_ended_at),
                ended_at: now,
                last_verified_outputs_at: self.last_verified_outputs_at,
                idle_window_secs: (end.reason == EndReason::GpuIdle)
                    .then_some(self.spec.policies.gpu_idle.window_secs),
                lost_work: matches!(end.reason, EndReason::Preempted | EndReason::Failed),
            },
            receipt.billed_secs,
            self.spec.price.usd_per_hour,
        ));
        tracing::info!("receipt: {}", receipt.summary());
        self.status.enter_phase(Phase::Ended, now);
        self.status.updated_at = now;
        self.status.ended_at = Some(now);
        self.status.billed_secs = receipt.billed_secs;
        self.status.cost_usd = receipt.total_usd;
        self.status.gpu_note = self.policies.gpu_note();
        self.status.last_output_at = self.activity.last().or(self.status.last_output_at);
        self.status.end = Some(end.clone());
        self.status.receipt = Some(receipt);
        self.status.kept_disk = kept_disk.clone();
        let retry = if kept_disk.is_some() {
            // The only record of the kept disk: retry until the store is back or the
            // window ends, however many attempts that takes.
            RetryPolicy {
                max_attempts: u32::MAX,
                ..RetryPolicy::default()
            }
            .with_deadline(Duration::from_secs(KEPT_DISK_STATUS_SECS))
        } else {
            RetryPolicy::default()
                .with_deadline(Duration::from_secs(report::FINAL_STATUS_DEADLINE_SECS))
        };
        let key = self.deps.layout.status(&self.spec.run_id);
        if let Err(e) =
            report::write_status(self.deps.storage.as_ref(), &key, &self.status, &retry).await
        {
            tracing::error!("the final status could not be written: {e}");
        }
        if let Some(w) = self.webhook.clone() {
            let body = self.webhook_body(WebhookEvent::Ended, Some(end.reason), &end.message);
            w.post(&body).await;
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        self.finish_vm(end, request_id, kept_disk, power_off_only, false)
            .await
    }

    /// Flush the job's log, by `deadline`; whether everything reached the store.
    async fn finish_logs(&mut self, deadline: tokio::time::Instant) -> bool {
        let (tx, rx) = oneshot::channel();
        let log_tx = self.log_tx.clone();
        let ok = tokio::time::timeout_at(deadline, async {
            log_tx.send(LogMsg::Finish(tx)).await.is_ok() && rx.await == Ok(true)
        })
        .await;
        if let Some(t) = self.log_task.take() {
            join_until(t, deadline).await;
        }
        ok == Ok(true)
    }

    /// Delete the VM (or power it off), record the fate. `resumed`: the final status was
    /// written by an earlier agent process (read it back before amending it).
    async fn finish_vm(
        &mut self,
        end: EndInfo,
        request_id: String,
        kept_disk: Option<String>,
        power_off_only: bool,
        resumed: bool,
    ) -> Outcome {
        if resumed {
            self.watchers.cancel();
            self.final_sync_verified = kept_disk.is_none();
        }
        self.set_stage(Stage::Deleting {
            end: end.clone(),
            request_id: request_id.clone(),
            kept_disk: kept_disk.clone(),
        });
        let key = self.deps.layout.status(&self.spec.run_id);
        let quick = RetryPolicy::default().with_deadline(Duration::from_secs(VM_FATE_STATUS_SECS));
        let vm = match self.deps.vm.clone() {
            None => Some(VmFate::LocalExit),
            Some(vm) => {
                if !power_off_only {
                    // Recorded before the call: a delete that works ends this agent
                    // before anything after it can be written.
                    let now = self.deps.clock.now();
                    if self
                        .status
                        .delete
                        .as_ref()
                        .is_none_or(|d| d.request_id != request_id)
                    {
                        self.status.delete = Some(DeleteRecord {
                            request_id: request_id.clone(),
                            requested_at: now,
                            operation: None,
                        });
                    }
                    self.status.updated_at = now;
                    if let Err(e) =
                        report::write_status(self.deps.storage.as_ref(), &key, &self.status, &quick)
                            .await
                    {
                        tracing::warn!("recording the delete request in the status: {e}");
                    }
                }
                let storage = self.deps.storage.clone();
                let (key2, quick2) = (key.clone(), quick.clone());
                let mut noted = self.status.clone();
                let mut on_operation = move |op: &str| -> futures::future::BoxFuture<'static, ()> {
                    if let Some(d) = noted.delete.as_mut() {
                        d.operation = Some(op.to_string());
                    }
                    let (st, storage, key, quick) =
                        (noted.clone(), storage.clone(), key2.clone(), quick2.clone());
                    Box::pin(async move {
                        if let Err(e) =
                            report::write_status(storage.as_ref(), &key, &st, &quick).await
                        {
                            tracing::warn!("recording the delete operation in the status: {e}");
                        }
                    })
                };
                let (fate, op) =
                    delete_or_power_off(&vm, &request_id, power_off_only, &mut on_operation).await;
                if let (Some(op), Some(d)) = (op, self.status.delete.as_mut()) {
                    d.operation = Some(op);
                }
                fate
            }
        };
        self.status.vm = vm;
        if vm.is_none() {
            self.status.warnings.push(
                "the VM could be neither deleted nor powered off; the cloud's maxRunDuration will delete it"
                    .into(),
            );
        }
        self.status.updated_at = self.deps.clock.now();
        if let Err(e) =
            report::write_status(self.deps.storage.as_ref(), &key, &self.status, &quick).await
        {
            tracing::warn!("recording the VM's fate in the status: {e}");
        }
        if let Some(fate) = vm {
            self.set_stage(Stage::Done {
                end: end.clone(),
                vm: fate,
                kept_disk: kept_disk.clone(),
            });
        }
        Outcome {
            end,
            vm,
            kept_disk,
            final_sync_verified: self.final_sync_verified,
        }
    }
}

/// Remove the output files, their cursor and the exit records of an earlier run from the
/// state dir (a fresh start).
fn forget_output(state_dir: &std::path::Path) {
    let (out, err) = logs::output_paths(state_dir);
    for p in [
        out,
        err,
        state_dir.join(logs::CURSOR_FILE_NAME),
        state_dir.join(JOB_EXIT_FILE_NAME),
        state_dir.join(SETUP_EXIT_FILE_NAME),
        state_dir.join(SETUP_PROCESS_FILE_NAME),
    ] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("removing {}: {e}", p.display()),
        }
    }
}

/// The whole final sync's time: the spec's policy, capped after a preemption.
fn final_sync_budget(spec: &RunSpec, preempted: bool) -> Duration {
    let secs = spec.policies.final_sync_secs;
    Duration::from_secs(if preempted {
        secs.min(PREEMPTED_FINAL_SYNC_SECS)
    } else {
        secs
    })
}

/// Wait for a background task (output pass, shipper, heartbeat) until `deadline`, then
/// stop it: past the final-sync deadline nothing it could still send is worth holding the
/// VM up for.
async fn join_until(mut task: JoinHandle<()>, deadline: tokio::time::Instant) {
    if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
        task.abort();
        let _ = task.await;
    }
}

/// Where the outputs are, as a URL people can paste (`gs://bucket/prefix/runs/<id>/outputs/`).
fn outputs_url(spec: &RunSpec, layout: &Layout) -> String {
    let key = layout.outputs_prefix(&spec.run_id);
    match cloudrun::StoreUrl::parse(&spec.store) {
        Ok(cloudrun::StoreUrl::Gcs { bucket, .. }) => format!("gs://{bucket}/{key}"),
        Ok(cloudrun::StoreUrl::Local { root }) => format!("file://{}/{key}", root.display()),
        Err(_) => key,
    }
}

/// The job's directory: the code root joined with `job.workdir`.
fn job_dir(settings: &Settings, spec: &RunSpec) -> PathBuf {
    if spec.job.workdir == "." {
        settings.work_dir.clone()
    } else {
        settings.work_dir.join(&spec.job.workdir)
    }
}

fn job_exit_end(exit: JobExit) -> EndInfo {
    EndInfo {
        reason: if exit.success() {
            EndReason::Succeeded
        } else {
            EndReason::Failed
        },
        exit_code: exit.code,
        signal: exit.signal,
        message: format!("the job ended with {}", exit.describe()),
    }
}

/// `setDiskAutoDelete false` on the boot disk; the disk's name.
async fn keep_boot_disk(vm: &VmHandle) -> Result<String, String> {
    let i = &vm.instance;
    let inst = vm
        .compute
        .get_instance(&i.project, &i.zone, &i.name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("instance {} not found", i.name))?;
    let disk = inst
        .boot_disk()
        .ok_or_else(|| format!("instance {} lists no boot disk", i.name))?
        .clone();
    let op = vm
        .compute
        .set_disk_auto_delete(
            &i.project,
            &i.zone,
            &i.name,
            &disk.device_name,
            false,
            &uuid::Uuid::new_v4().to_string(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let op = if op.is_done() {
        op
    } else {
        wait_until_done(
            vm.compute.as_ref(),
            &i.project,
            &i.zone,
            op,
            Duration::from_secs(OPERATION_WAIT_SECS),
        )
        .await
        .map_err(|e| e.to_string())?
    };
    op.into_result().map_err(|e| e.to_string())?;
    let name = disk
        .source
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(&disk.device_name)
        .to_string();
    Ok(name)
}

/// Delete the instance, at most [`DELETE_ATTEMPTS`] calls with one `requestId`; power it
/// off when that fails. `None` when both fail. `on_operation` hears the delete operation's
/// name as soon as Compute answers (before it is followed), and the name is returned too.
async fn delete_or_power_off(
    vm: &VmHandle,
    request_id: &str,
    power_off_only: bool,
    on_operation: &mut (dyn FnMut(&str) -> futures::future::BoxFuture<'static, ()> + Send),
) -> (Option<VmFate>, Option<String>) {
    let i = &vm.instance;
    let mut op_name = None;
    if !power_off_only {
        let policy = RetryPolicy::default();
        for attempt in 1..=DELETE_ATTEMPTS {
            tracing::info!(
                "deleting instance {} (attempt {attempt}, requestId {request_id})",
                i.name
            );
            match vm
                .compute
                .delete_instance(&i.project, &i.zone, &i.name, request_id)
                .await
            {
                Ok(None) => return (Some(VmFate::Deleted), op_name),
                Ok(Some(op)) => {
                    if !op.name.is_empty() {
                        op_name = Some(op.name.clone());
                        on_operation(&op.name).await;
                    }
                    let done = if op.is_done() {
                        Ok(op)
                    } else {
                        wait_until_done(
                            vm.compute.as_ref(),
                            &i.project,
                            &i.zone,
                            op,
                            Duration::from_secs(OPERATION_WAIT_SECS),
                        )
                        .await
                    };
                    match done.map(|op| op.into_result()) {
                        Ok(Ok(_)) => return (Some(VmFate::Deleted), op_name),
                        Ok(Err(e)) => {
                            tracing::error!("the delete operation failed: {e}");
                            break;
                        }
                        // Accepted but not confirmed (the VM may be going down under us).
                        Err(e) => {
                            tracing::warn!("delete accepted, not confirmed: {e}");
                            return (Some(VmFate::Deleted), op_name);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("deleting the instance: {e}");
                    if e.retry() == Retry::No {
                        break;
                    }
                    if attempt < DELETE_ATTEMPTS {
                        tokio::time::sleep(policy.backoff(attempt)).await;
                    }
                }
            }
        }
    }
    tracing::warn!("powering off instance {} instead", i.name);
    match vm
        .compute
        .stop_instance(
            &i.project,
            &i.zone,
            &i.name,
            &uuid::Uuid::new_v4().to_string(),
        )
        .await
    {
        Ok(_) => (Some(VmFate::PoweredOff), op_name),
        Err(e) => {
            tracing::error!("powering off the instance failed too: {e}");
            (None, op_name)
        }
    }
}
