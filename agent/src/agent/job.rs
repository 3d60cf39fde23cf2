//! The run's steps before its end: pull the code, wait for the plan's GPUs, setup, then
//! the job through the shim; after a restart, adopt a job still running, or say how one
//! that ended while the agent was down ended. Each step runs under the supervisor loop and
//! returns the run's end (and the job to stop, when a stop was decided while it ran).

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudrun::spec::RunSpec;
use cloudrun::status::{EndInfo, EndReason, Phase};
use tokio::sync::oneshot;

use super::wiring::Agent;
use super::{
    end_info, Settings, JOB_EXIT_FILE_NAME, READER_DRAIN_SECS, SETUP_EXIT_FILE_NAME,
    SETUP_PROCESS_FILE_NAME,
};
use crate::clock::secs_between;
use crate::gpu_wait::{self, LossWatch};
use crate::logs;
use crate::process::{self, Job, JobCommand, JobExit, JobIo};
use crate::state::Stage;
use crate::user::{self, RunAs};
use crate::watch;

impl Agent {
    /// Pull, setup, job. Returns the end and, when a stop was decided while the job ran,
    /// the job to terminate.
    pub(super) async fn prepare_and_run(&mut self) -> (EndInfo, Option<Job>) {
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

    /// Supervise again a job an earlier agent started and that still runs.
    pub(super) async fn adopt(
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

    /// The end of a job that was no longer running when the agent restarted: its recorded
    /// exit, or `lost`.
    pub(super) fn lost(&mut self, job_started_at: DateTime<Utc>) -> EndInfo {
        self.status.job_started_at = Some(job_started_at);
        match process::recorded_exit(&self.exit_file(JOB_EXIT_FILE_NAME)) {
            Some(exit) => {
                self.note(&format!(
                    "the job ended while the agent was down, with {}",
                    exit.describe()
                ));
                job_exit_end(exit)
            }
            None => end_info(
                EndReason::Lost,
                "the agent restarted and the job was no longer running",
            ),
        }
    }

    /// The job a restart during teardown found recorded, to be signalled again.
    pub(super) fn leftover_job(&self, job: Option<(i32, u64)>) -> Option<Job> {
        let exit_file = self.exit_file(JOB_EXIT_FILE_NAME);
        job.map(|(pid, ticks)| Job::adopt(pid, ticks, exit_file))
    }

    fn start_output_sync(&mut self) {
        self.outputs_task = Some(watch::outputs::spawn(
            self.outputs_stop.clone(),
            self.events_tx.clone(),
            self.outputs.clone(),
            Duration::from_secs(self.spec.policies.intervals.output_sync_secs),
        ));
    }

    /// An agent restarted during setup: the old setup may still run (its output goes to
    /// files, so it did not die with the agent). End its group before setup runs again.
    pub(super) fn end_leftover_setup(&self) {
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
    pub(super) async fn drain_readers(&mut self) {
        if let Some(t) = &self.shipping.tails {
            t.catch_up(Duration::from_secs(READER_DRAIN_SECS)).await;
        }
    }
}

/// The job's directory: the code root joined with `job.workdir`.
pub(super) fn job_dir(settings: &Settings, spec: &RunSpec) -> PathBuf {
    if spec.job.workdir == "." {
        settings.work_dir.clone()
    } else {
        settings.work_dir.join(&spec.job.workdir)
    }
}

/// The end a job's own exit makes.
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
