//! The agent's state and its wiring: what a starting agent reads back (restart state,
//! an earlier `status.json`, log and metrics sequence numbers) and the background tasks it
//! starts (log shipper and output tails, metrics batches, heartbeat writer, the watchers
//! of [`crate::watch`]). Also the small helpers every step uses: restart-state stages,
//! notes in the job's log, webhook posts. It decides nothing about the run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudrun::run_store::RunStore;
use cloudrun::spec::RunSpec;
use cloudrun::status::{EndReason, RunStatus};
use cloudrun::Layout;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    job::job_dir, AgentError, Deps, Settings, JOB_EXIT_FILE_NAME, SETUP_EXIT_FILE_NAME,
    SETUP_PROCESS_FILE_NAME,
};
use crate::clock::Clock;
use crate::gpu::GpuState;
use crate::gpu_wait::{self, LossWatch};
use crate::logs::{self, Activity, LogLine, LogMsg, LogShipper, Tails};
use crate::policy::Policies;
use crate::process;
use crate::report::{self, MetricsMsg};
use crate::state::{self, AgentState, Resume, Stage};
use crate::transfer::{MirroredOutputs, Outputs};
use crate::watch::{Event, EVENT_QUEUE};
use crate::webhook::{Webhook, WebhookBody, WebhookEvent};

/// The restart state for this start and what it calls for ([`state::decide`]): the
/// state file's path and the new state (this start counted), written by [`Agent::start`].
pub(super) fn restart_state(
    spec: &RunSpec,
    settings: &Settings,
    clock: &dyn Clock,
) -> Result<(AgentState, PathBuf, Resume), AgentError> {
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
    let now = clock.now();
    let prev = prev.filter(|p| p.run_id == spec.run_id);
    let state = AgentState {
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
        state.starts,
        resume
    );

    Ok((state, state_path, resume))
}

/// One run under supervision: what it knows and the tasks it started.
pub(super) struct Agent {
    pub(super) spec: RunSpec,
    pub(super) settings: Settings,
    pub(super) deps: Deps,
    pub(super) state: AgentState,
    pub(super) state_path: PathBuf,
    pub(super) status: RunStatus,
    pub(super) policies: Policies,
    pub(super) events_rx: mpsc::Receiver<Event>,
    pub(super) events_tx: mpsc::Sender<Event>,
    pub(super) shipping: Shipping,
    pub(super) watchers: CancellationToken,
    pub(super) outputs_stop: CancellationToken,
    pub(super) outputs_task: Option<JoinHandle<()>>,
    pub(super) outputs: Arc<dyn Outputs>,
    pub(super) webhook: Option<Webhook>,
    pub(super) setup_secs: u64,
    pub(super) final_sync_verified: bool,
    /// The latest GPU probe, so a wait that begins after the pull can use one taken
    /// during it.
    pub(super) last_gpu_state: Option<GpuState>,
    /// The wait for the plan's GPUs while it runs, and where its "ready" goes.
    /// The answer is the GPUs' summary and whether an earlier probe of this wait missed
    /// them.
    pub(super) gpu_wait: Option<(gpu_wait::Wait, oneshot::Sender<(String, bool)>)>,
    /// Once the GPUs have answered: warns when some go missing mid-run.
    pub(super) gpu_loss: Option<LossWatch>,
    /// When the code was pulled (the receipt's split starts setup there).
    pub(super) pulled_at: Option<DateTime<Utc>>,
    /// The last output sync that left every output file verified in the store.
    pub(super) last_verified_outputs_at: Option<DateTime<Utc>>,
}

impl Agent {
    /// The run's documents in the store (status, stop request), typed.
    pub(super) fn docs(&self) -> RunStore {
        RunStore::new(self.deps.storage.clone(), self.deps.layout.clone())
    }

    /// Read back what an earlier agent left in the store, start the background tasks
    /// and the watchers, and save the restart state.
    pub(super) async fn start(
        spec: RunSpec,
        settings: Settings,
        deps: Deps,
        state: AgentState,
        state_path: PathBuf,
    ) -> Agent {
        let now = deps.clock.now();
        let status = read_status(&spec, &deps, &state, now).await;
        let mut policies = Policies::new(&spec, state.agent_started_at);
        if state.budget_warned {
            policies.set_budget_warned();
        }

        let shipping = Shipping::start(&spec, &settings, &deps, now).await;
        let outputs: Arc<dyn Outputs> = match &deps.outputs {
            Some(o) => o.clone(),
            None => Arc::new(MirroredOutputs::new(
                deps.storage.clone(),
                &deps.layout,
                &spec.run_id,
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
            shipping,
            watchers: CancellationToken::new(),
            outputs_stop: CancellationToken::new(),
            outputs_task: None,
            outputs,
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

    pub(super) fn save_state(&self) {
        state::save(&self.state_path, &self.state);
    }

    pub(super) fn set_stage(&mut self, stage: Stage) {
        self.state.stage = stage;
        self.state.boot_id = process::boot_id();
        self.save_state();
    }

    /// A line in the job log (and the agent's own log) from the agent.
    pub(super) fn note(&self, msg: &str) {
        tracing::info!("{msg}");
        let _ = self
            .shipping
            .log_tx
            .try_send(LogMsg::Line(LogLine::agent(msg)));
    }

    /// A warning in the job log and the agent's own log.
    pub(super) fn note_warning(&self, msg: &str) {
        tracing::warn!("{msg}");
        let _ = self
            .shipping
            .log_tx
            .try_send(LogMsg::Line(LogLine::agent(msg)));
    }

    /// Where the shim records the exit of the process `name` names.
    pub(super) fn exit_file(&self, name: &str) -> PathBuf {
        self.settings.state_dir.join(name)
    }

    pub(super) fn webhook(&self, event: WebhookEvent, reason: Option<EndReason>, message: &str) {
        let Some(w) = self.webhook.clone() else {
            return;
        };
        let body = self.webhook_body(event, reason, message);
        tokio::spawn(async move { w.post(&body).await });
    }

    pub(super) fn webhook_body(
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
        let every = |secs| Duration::from_secs(secs);
        let intervals = &self.spec.policies.intervals;
        crate::watch::gpu::spawn(
            self.watchers.clone(),
            self.events_tx.clone(),
            self.deps.gpu.clone(),
            self.deps.clock.clone(),
            every(intervals.gpu_sample_secs),
        );
        crate::watch::stop_request::spawn(
            self.watchers.clone(),
            self.events_tx.clone(),
            self.docs(),
            self.spec.run_id.clone(),
            every(intervals.stop_poll_secs),
        );
        if let Some(md) = self.deps.metadata.clone() {
            crate::watch::preemption::spawn(self.watchers.clone(), self.events_tx.clone(), md);
        }
        if self.settings.handle_sigterm {
            crate::watch::sigterm::spawn(self.watchers.clone(), self.events_tx.clone());
        }
    }
}

/// The run's status as an earlier agent (or the launcher) left it, or a new one, with this
/// start's price, budget and instance.
async fn read_status(
    spec: &RunSpec,
    deps: &Deps,
    state: &AgentState,
    now: DateTime<Utc>,
) -> RunStatus {
    let run = &spec.run_id;
    let docs = RunStore::new(deps.storage.clone(), deps.layout.clone());
    let mut status = docs
        .status_doc(run)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            let mut s = RunStatus::launching(run.clone(), now, spec.price.usd_per_hour);
            s.launched_at = None;
            s
        });
    status.agent_started_at = Some(state.agent_started_at);
    status.usd_per_hour = spec.price.usd_per_hour;
    status.budget_usd = spec.policies.budget_usd;
    status.instance = deps.vm.as_ref().map(|v| v.instance.clone());
    status
}

/// The background tasks that carry the run to the store: the log shipper fed by the
/// output tails, the metrics batches and the heartbeat's status writer. The final sync
/// finishes each of them.
pub(super) struct Shipping {
    pub(super) log_tx: mpsc::Sender<LogMsg>,
    pub(super) log_task: Option<JoinHandle<()>>,
    pub(super) metrics_tx: mpsc::Sender<MetricsMsg>,
    pub(super) metrics_task: Option<JoinHandle<()>>,
    /// `None` once the final status is near: no heartbeat may land after it.
    pub(super) status_tx: Option<watch::Sender<Option<RunStatus>>>,
    pub(super) status_task: Option<JoinHandle<()>>,
    /// When the job last wrote a line.
    pub(super) activity: Arc<Activity>,
    pub(super) tails: Option<Tails>,
}

impl Shipping {
    /// Continue the log and metrics sequences and the log cursor an earlier agent left,
    /// and start the tasks.
    async fn start(
        spec: &RunSpec,
        settings: &Settings,
        deps: &Deps,
        now: DateTime<Utc>,
    ) -> Shipping {
        let log_seq = logs::next_seq(
            deps.storage.as_ref(),
            &deps.layout.logs_prefix(&spec.run_id),
            now,
        )
        .await;
        let cursor_path = settings.state_dir.join(logs::CURSOR_FILE_NAME);
        let from =
            logs::resume_cursor(&deps.storage, &deps.layout, &spec.run_id, &cursor_path).await;
        let metrics_seq = logs::next_seq(
            deps.storage.as_ref(),
            &deps.layout.metrics_prefix(&spec.run_id),
            now,
        )
        .await;
        let mut sinks = settings.sinks.clone();
        sinks.local_file = Some(settings.state_dir.join("job.log"));
        let (log_tx, log_rx) = mpsc::channel(1024);
        let shipper = LogShipper::new(
            deps.storage.clone(),
            deps.layout.clone(),
            spec.run_id.clone(),
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
        let docs = RunStore::new(deps.storage.clone(), deps.layout.clone());
        let (metrics_tx, metrics_task) =
            report::spawn_metrics(docs.clone(), spec.run_id.clone(), metrics_seq, beat);
        let (status_tx, status_task) = report::spawn_status_writer(docs);

        Shipping {
            log_tx,
            log_task: Some(log_task),
            metrics_tx,
            metrics_task: Some(metrics_task),
            status_tx: Some(status_tx),
            status_task: Some(status_task),
            activity,
            tails: Some(tails),
        }
    }
}

/// Remove the output files, their cursor and the exit records of an earlier run from the
/// state dir (a fresh start).
pub(super) fn forget_output(state_dir: &std::path::Path) {
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

/// Where the outputs are, as a URL people can paste (`gs://bucket/prefix/runs/<id>/outputs/`).
fn outputs_url(spec: &RunSpec, layout: &Layout) -> String {
    let key = layout.outputs_prefix(&spec.run_id);
    match cloudrun::StoreUrl::parse(&spec.store) {
        Ok(cloudrun::StoreUrl::Gcs { bucket, .. }) => format!("gs://{bucket}/{key}"),
        Ok(cloudrun::StoreUrl::Local { root }) => format!("file://{}/{key}", root.display()),
        Err(_) => key,
    }
}
