//! Runs on this machine (`--local`): the store is a directory, the "VM" a detached
//! `cloudrun-agent` whose record (pid, start time, boot id) under the data dir says
//! whether it still runs. Nothing here costs money; a run whose agent is gone without
//! an end is `lost`, and closing it is ours to record.

use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cloudrun::prices::PriceBook;
use cloudrun::run_store::RunStore;
use cloudrun::status::{EndInfo, EndReason, Phase, RunStatus, VmFate};
use cloudrun::RunId;

use super::{Inspection, LaunchRequest, Liveness, Machine, Provider, Words};
use crate::local::AgentRecord;
use crate::runs::{self, RunView, RunsError, Store};

/// Local runs, with their records under `data_dir` (none without a home directory).
pub struct Local {
    pub data_dir: Option<PathBuf>,
}

impl Local {
    fn record(&self, run: &RunId) -> Option<AgentRecord> {
        self.data_dir
            .as_deref()
            .and_then(|d| crate::local::record_for(d, run))
    }
}

/// Record in `s` the end its agent can no longer write: `end` at `ended_at`, the "VM" being
/// the agent's own exit.
fn end_for_the_agent(s: &mut RunStatus, end: EndInfo, ended_at: DateTime<Utc>, now: DateTime<Utc>) {
    s.phase = Phase::Ended;
    s.updated_at = now;
    s.ended_at = Some(ended_at);
    s.end = Some(end);
    s.vm = Some(VmFate::LocalExit);
}

fn machine(r: &AgentRecord) -> Machine {
    Machine {
        run: r.run_id.to_string(),
        label: format!("local agent pid {}", r.pid),
        describe: r.describe(),
        up: r.alive(),
        created_at: Some(r.started_at),
        handle: r.run_id.to_string(),
    }
}

#[async_trait(?Send)]
impl Provider for Local {
    fn kind(&self) -> cloudrun::spec::Provider {
        cloudrun::spec::Provider::Local
    }

    fn words(&self) -> Words {
        Words {
            noun: "agent",
            end: "end",
            ended: "ended",
            command: "cloudrun-launch --local",
        }
    }

    fn sees_all(&self) -> bool {
        false
    }

    /// The cloud pipeline (plan, push, spec, status, start the "VM") with a directory
    /// store and a detached agent on this machine.
    async fn launch(
        &self,
        req: &LaunchRequest<'_>,
        out: &mut (dyn Write + Send),
    ) -> Result<i32, crate::Error> {
        let args = req.cli.launch_args();
        let (_, command) = crate::locate_project(req.cli, req.ctx);
        let prices = PriceBook::builtin();
        let plan = crate::plan::build_local(
            req.settings,
            &crate::plan::PlanInputs {
                command: &command,
                now: req.now,
                prices: &prices,
                default_agent: crate::local_agent(req.settings, req.ctx),
                storage_host: None,
                launched_by: crate::who(req.ctx.env),
            },
        )?;
        if args.dry_run {
            writeln!(out, "{}", plan.spec.to_json())?;
            eprintln!(
                "dry run: would run {:?} from {} with the agent {} and the store {}; nothing was started",
                plan.spec.job.command,
                plan.project_dir.display(),
                plan.agent.display(),
                plan.store
            );
            return Ok(0);
        }
        // One live local run per project folder: checked against the agents' records (pid
        // and start time), so a crashed run never leaves a stale lock behind, under a lock
        // held until this launch's own record is written, so that two launches at the same
        // moment cannot both pass the check.
        let lock = crate::local::lock_project(&plan.data_dir, &plan.project_dir, || {
            eprintln!(
                "waiting for another launch of {} to start its run",
                plan.project_dir.display()
            )
        })?;
        if let Some(r) = crate::local::live_run_in(&plan.data_dir, &plan.project_dir) {
            return Err(crate::Error::Settings(crate::plan::Problems(vec![format!(
                "run {} of {} is still running locally (agent pid {}); nothing was started. Follow it with `cloudrun-launch --local logs -f {}`, or stop it with `cloudrun-launch --local stop {}`, then launch again",
                r.run_id,
                plan.project_dir.display(),
                r.pid,
                r.run_id,
                r.run_id
            )])));
        }
        let storage = cloudrun::storage::open(&plan.store, None)?;
        let pusher = crate::push::SyncPusher {
            cache_dir: Some(plan.data_dir.join("cache")),
            progress: req.ctx.progress,
        };
        let pushed = pusher
            .push_code(
                storage.clone(),
                &plan.project_dir,
                &plan.layout,
                &plan.run_id,
            )
            .await?;
        eprintln!(
            "code: {} files, {} bytes ({} uploaded) from {}",
            pushed.files,
            pushed.total_bytes,
            pushed.bytes_uploaded,
            plan.project_dir.display()
        );
        let docs = RunStore::new(storage.clone(), plan.layout.clone());
        docs.put_spec(&plan.spec).await?;
        docs.put_status(&RunStatus::launching(plan.run_id.clone(), req.now, 0.0))
            .await?;
        let dirs = crate::local::RunDirs::new(&plan.data_dir, &plan.run_id);
        std::fs::create_dir_all(&dirs.root)
            .and_then(|()| std::fs::write(&dirs.spec, plan.spec.to_json()))
            .map_err(|source| crate::local::LocalError::Write {
                path: dirs.spec.clone(),
                source,
            })?;
        let record = crate::local::spawn_agent(
            &plan.agent,
            &dirs,
            &plan.run_id,
            &plan.project_dir,
            &plan.store.to_string(),
            req.now,
        )?;
        drop(lock);
        let id = &plan.run_id;
        write!(
            out,
            "run      {id}\nvm       local agent pid {} (log {})\nstore    {}\nfollow   cloudrun-launch --local logs -f {id}\nstatus   cloudrun-launch --local status {id}\n",
            record.pid,
            record.agent_log.display(),
            plan.store,
        )?;
        if !args.follow {
            return Ok(0);
        }
        let store = Store {
            storage,
            layout: plan.layout.clone(),
        };
        let alive = || record.alive();
        let view = crate::logview::LogView {
            terminal: req.ctx.terminal,
        };
        let (code, _) = crate::follow_run(&store, id, Some(&alive), true, view, out).await?;
        crate::pull_outputs(&store, id, &plan.project_dir, out).await?;
        Ok(code)
    }

    /// The agent's record: a dead agent writes no end.
    fn liveness(&self, run: &RunId) -> Option<Liveness> {
        let rec = self.record(run)?;
        Some(Box::new(move || rec.alive()))
    }

    async fn machines(&self) -> Result<Vec<Machine>, RunsError> {
        Ok(self
            .data_dir
            .as_deref()
            .map(crate::local::records)
            .unwrap_or_default()
            .iter()
            .map(machine)
            .collect())
    }

    async fn inspect(&self, v: &RunView) -> Inspection {
        let rec = self.record(&v.run);
        let lost = super::lost(v, rec.as_ref().map(machine).as_ref());
        let json = match &rec {
            Some(r) => {
                serde_json::json!({"local_pid": r.pid, "alive": r.alive(), "agent_log": r.agent_log})
            }
            None => serde_json::json!({"error": "no local agent record on this machine"}),
        };
        let fate = v.status.as_ref().and_then(runs::fate_name);
        let vm = match (&rec, &fate) {
            (Some(r), Some(f)) => format!("{}; vm: {f}", r.describe()),
            (Some(r), None) => r.describe(),
            (None, Some(f)) => format!("local; vm: {f}"),
            (None, None) => "local (not started on this machine)".into(),
        };
        let mut lines = vec![("vm", vm)];
        if let Some(r) = rec.as_ref().filter(|_| lost) {
            lines.push((
                "warning",
                format!(
                    "the local agent is gone but the run never recorded an end (see {}): `cloudrun-launch --local sweep --yes` closes it",
                    r.agent_log.display()
                ),
            ));
        }
        Inspection { lines, json, lost }
    }

    /// Write the final status the agent never wrote (`lost`, `vm: local_exit`, ended at
    /// its last heartbeat) and kill what is left of its job.
    async fn close_lost(
        &self,
        store: &Store,
        v: &RunView,
        by: &str,
        now: DateTime<Utc>,
        out: &mut dyn Write,
    ) -> Result<bool, RunsError> {
        let Some(rec) = self.record(&v.run) else {
            return Ok(false);
        };
        if !super::lost(v, Some(&machine(&rec))) {
            return Ok(false);
        }
        let run = &v.run;
        let mut s = v
            .status
            .clone()
            .unwrap_or_else(|| RunStatus::launching(run.clone(), rec.started_at, 0.0));
        let last_seen = s.updated_at.min(now);
        end_for_the_agent(
            &mut s,
            EndInfo {
                reason: EndReason::Lost,
                exit_code: None,
                signal: None,
                message: format!(
                    "the local agent (pid {}) exited without recording an end (its log: {}); closed by {by}",
                    rec.pid,
                    rec.agent_log.display()
                ),
            },
            last_seen,
            now,
        );
        // The job may outlive its agent: nothing would ship its output or end it now.
        let killed =
            crate::local::kill_leftovers(&rec).map_err(|e| RunsError::Other(e.to_string()))?;
        store.docs().put_status(&s).await?;
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

    /// Write the stop request (as for a VM), kill the agent's session (the agent and the
    /// job), and record the end the agent can no longer write.
    async fn stop_now(
        &self,
        store: &Store,
        v: &RunView,
        by: &str,
        now: DateTime<Utc>,
        out: &mut dyn Write,
    ) -> Result<(), RunsError> {
        let run = &v.run;
        let rec = self.record(run).ok_or_else(|| {
            RunsError::Other(format!(
                "run {run} was not started on this machine (no record under {}): stop it gracefully with `cloudrun-launch --local stop {run}`",
                self.data_dir
                    .as_deref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|| "the data directory".into())
            ))
        })?;
        if !rec.alive() {
            writeln!(out, "the local agent of run {run} is already gone")?;
            return Ok(());
        }
        writeln!(out, "ending run {}", v.brief())?;
        runs::write_stop_request(store, run, by, now, "stop --now").await?;
        let n = crate::local::kill_session(&rec).map_err(|e| RunsError::Other(e.to_string()))?;
        if let Some(mut s) = v.status.clone().filter(|s| !s.phase.is_terminal()) {
            end_for_the_agent(
                &mut s,
                EndInfo {
                    reason: EndReason::Stopped,
                    exit_code: None,
                    signal: Some(9),
                    message: format!("stop --now by {by}: the local agent and its job were killed"),
                },
                now,
                now,
            );
            store.docs().put_status(&s).await?;
        }
        writeln!(
            out,
            "killed the local agent of run {run} (pid {}, {n} process group(s)); outputs not yet synced are lost",
            rec.pid
        )?;
        Ok(())
    }

    async fn end_machine(&self, m: &Machine, why: &str) -> Result<String, String> {
        let rec = RunId::parse(&m.handle)
            .ok()
            .and_then(|id| self.record(&id))
            .ok_or_else(|| format!("no record of {}", m.label))?;
        crate::local::kill_session(&rec).map_err(|e| e.to_string())?;
        Ok(format!("killed local agent pid {} ({why})", rec.pid))
    }
}
