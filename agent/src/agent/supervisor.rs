//! The supervisor loop ([`Agent::watch_until`]): one task drives the step under way (the
//! pull, the GPU wait, setup, the job's process) while it receives the watchers' events
//! ([`crate::watch`]), asks the policies on every tick and publishes the heartbeat. An
//! event or a policy that ends the run ends the loop with the run's [`EndInfo`]; the step
//! it interrupted is the caller's to clean up.

use std::time::Duration;

use cloudrun::status::{EndInfo, EndReason, Phase};

use super::{end_info, wiring::Agent};
use crate::gpu::GpuState;
use crate::policy::Notice;
use crate::report::MetricsMsg;
use crate::watch::Event;
use crate::webhook::WebhookEvent;

/// How often the policies are checked between events.
pub const POLICY_TICK_MILLIS: u64 = 1000;

impl Agent {
    /// Drive `fut` while watching events, policies and the heartbeat; `Err` when the run
    /// must stop first.
    pub(super) async fn watch_until<F: std::future::Future>(
        &mut self,
        fut: F,
    ) -> Result<F::Output, EndInfo> {
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

    /// The heartbeat: the status with the cost so far, to the status writer.
    pub(super) fn publish_status(&mut self) {
        let now = self.deps.clock.now();
        let (billed, cost) = self.policies.cost_at(now);
        self.status.updated_at = now;
        self.status.billed_secs = billed;
        self.status.cost_usd = cost;
        self.status.gpu_note = self.policies.gpu_note();
        self.status.last_output_at = self.shipping.activity.last().or(self.status.last_output_at);
        if let Some(tx) = &self.shipping.status_tx {
            tx.send_replace(Some(self.status.clone()));
        }
    }

    pub(super) fn set_phase(&mut self, phase: Phase) {
        self.status.enter_phase(phase, self.deps.clock.now());
        self.publish_status();
    }

    /// Handle one watcher event; `Some` if it ends the run.
    fn handle_event(&mut self, ev: Event) -> Option<EndInfo> {
        match ev {
            Event::Gpu(state, sample) => {
                self.policies.observe_gpu(&state, &sample);
                let _ = self
                    .shipping
                    .metrics_tx
                    .try_send(MetricsMsg::Sample(sample.clone()));
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
        if let Some(at) = self.shipping.activity.last() {
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
}
