//! The first half of the teardown, the same for every kind of machine: stop the job
//! (SIGTERM to its group, grace, SIGKILL), stop the watchers, then the final sync of
//! outputs, logs and metrics within one deadline, to a [`Verdict`]. After a preemption
//! both the grace and the sync are cut to what fits in the notice. What happens next is
//! [`super::teardown`]'s decision.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudrun::spec::RunSpec;
use cloudrun::status::{EndInfo, EndReason, Phase};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::teardown::Verdict;
use super::wiring::Agent;
use super::READER_DRAIN_SECS;
use crate::logs::LogMsg;
use crate::process::Job;
use crate::report::MetricsMsg;
use crate::state::Stage;

/// The grace period after a preemption notice: GCE gives a Spot VM ~30 s in all, and the
/// final sync needs most of what is left.
pub const PREEMPTED_GRACE_SECS: u64 = 10;
/// Most time for the final sync after a preemption (what fits in the ~30 s notice);
/// otherwise the spec's `policies.final_sync_secs` applies.
pub const PREEMPTED_FINAL_SYNC_SECS: u64 = 15;
/// How long a heartbeat write under way at the end may take before it is dropped: the
/// final status must not be overtaken by it.
pub const HEARTBEAT_DRAIN_SECS: u64 = 5;

impl Agent {
    /// Stop the job, then the final sync. Returns the end (with the job's exit code or
    /// signal when the end had none), the sync's verdict and when the job ended.
    pub(super) async fn stop_and_sync(
        &mut self,
        mut end: EndInfo,
        job: Option<Job>,
    ) -> (EndInfo, Verdict, DateTime<Utc>) {
        self.set_stage(Stage::TearingDown { end: end.clone() });
        self.set_phase(Phase::Stopping);
        self.note(&format!(
            "stopping: {} ({})",
            end.reason.describe(),
            end.message
        ));
        let preempted = end.reason == EndReason::Preempted;
        if let Some(mut job) = job {
            let grace = grace_secs(&self.spec, preempted);
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
        if let Some(t) = self.shipping.tails.take() {
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
        let pass = match tokio::time::timeout_at(deadline, self.outputs.sync_by(deadline)).await {
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
            self.shipping
                .metrics_tx
                .send(MetricsMsg::Finish(mtx))
                .await
                .is_ok()
                && mrx.await == Ok(true)
        })
        .await;
        if metrics_ok != Ok(true) {
            self.status
                .warnings
                .push("the last GPU samples could not be stored".into());
        }
        if let Some(t) = self.shipping.metrics_task.take() {
            join_until(t, deadline).await;
        }
        if !logs_ok {
            self.status
                .warnings
                .push("the end of the job's log could not be stored".into());
        }
        // No heartbeat may land after the final status: let one under way finish.
        self.shipping.status_tx = None;
        if let Some(t) = self.shipping.status_task.take() {
            let drain = tokio::time::Instant::now() + Duration::from_secs(HEARTBEAT_DRAIN_SECS);
            join_until(t, deadline.max(drain)).await;
        }
        let verdict = Verdict {
            outputs_verified: pass.complete,
            logs_stored: logs_ok,
        };
        self.final_sync_verified = verdict.verified();
        (end, verdict, job_ended_at)
    }

    /// Flush the job's log, by `deadline`; whether everything reached the store.
    async fn finish_logs(&mut self, deadline: tokio::time::Instant) -> bool {
        let (tx, rx) = oneshot::channel();
        let log_tx = self.shipping.log_tx.clone();
        let ok = tokio::time::timeout_at(deadline, async {
            log_tx.send(LogMsg::Finish(tx)).await.is_ok() && rx.await == Ok(true)
        })
        .await;
        if let Some(t) = self.shipping.log_task.take() {
            join_until(t, deadline).await;
        }
        ok == Ok(true)
    }
}

/// The job's grace between SIGTERM and SIGKILL: the spec's policy, capped after a
/// preemption.
fn grace_secs(spec: &RunSpec, preempted: bool) -> u64 {
    if preempted {
        spec.policies.grace_secs.min(PREEMPTED_GRACE_SECS)
    } else {
        spec.policies.grace_secs
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preemption_cuts_the_grace_and_the_final_sync_to_what_fits_in_the_notice() {
        let mut spec = RunSpec::from_json(
            r#"{"schema":1,"run_id":"20261126-071500-ab12","created_at":"2026-11-26T07:15:00Z",
            "store":"file:///tmp/s","job":{"command":["true"]},"price":{"usd_per_hour":1.0}}"#,
        )
        .unwrap();
        spec.policies.grace_secs = 30;
        spec.policies.final_sync_secs = 120;
        assert_eq!(grace_secs(&spec, false), 30);
        assert_eq!(grace_secs(&spec, true), PREEMPTED_GRACE_SECS);
        assert_eq!(final_sync_budget(&spec, false), Duration::from_secs(120));
        assert_eq!(
            final_sync_budget(&spec, true),
            Duration::from_secs(PREEMPTED_FINAL_SYNC_SECS)
        );
        // Shorter policies stay as they are.
        spec.policies.grace_secs = 3;
        spec.policies.final_sync_secs = 5;
        assert_eq!(grace_secs(&spec, true), 3);
        assert_eq!(final_sync_budget(&spec, true), Duration::from_secs(5));
    }
}
