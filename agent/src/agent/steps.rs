//! The teardown's steps ([`super::teardown::Step`]), one method each: keep the boot disk,
//! the final status with its receipt, the `ended` webhook, the delete request recorded
//! before the call, the delete or power-off through [`crate::vm`], and the machine's fate.
//! Which of them run, and in what order, is decided in [`super::teardown`], not here.

use std::time::Duration;

use cloudrun::billing::{Marks, Receipt, Split};
use cloudrun::retry::Budget;
use cloudrun::status::{DeleteRecord, EndInfo, EndReason, Phase, VmFate};

use super::teardown::{Ending, StatusWindow};
use super::wiring::Agent;
use crate::clock::secs_between;
use crate::report;
use crate::state::Stage;
use crate::webhook::WebhookEvent;

/// How long the final status that names a kept disk is retried before the VM is deleted
/// regardless. The store has been unreachable for the whole final sync by then, so this
/// rides out a blip; waiting longer would bill GPU time on a long shot (the disk is kept
/// either way).
pub const KEPT_DISK_STATUS_SECS: u64 = report::FINAL_STATUS_DEADLINE_SECS;
/// Time for recording the VM's fate after the delete: the VM may be going down already.
pub const VM_FATE_STATUS_SECS: u64 = 10;

impl Agent {
    /// Keep the boot disk out of the delete; its name, or `None` (with the reason in the
    /// status's warnings) when it cannot be kept.
    pub(super) async fn keep_boot_disk(&mut self) -> Option<String> {
        let vm = self.deps.vm.clone()?;
        match vm.keep_boot_disk().await {
            Ok(disk) => {
                let msg = format!("the final sync could not be verified: boot disk {disk} is kept (not deleted with the VM)");
                tracing::warn!("{msg}");
                self.status.warnings.push(msg);
                Some(disk)
            }
            Err(e) => {
                let msg = format!("the final sync could not be verified and the boot disk could not be kept ({e}); powering off instead of deleting");
                tracing::error!("{msg}");
                self.status.warnings.push(msg);
                None
            }
        }
    }

    /// The final status, with the receipt, retried for `window`.
    pub(super) async fn write_final_status(&mut self, e: &Ending, window: StatusWindow) {
        let (end, kept_disk, job_ended_at) = (&e.end, &e.kept_disk, e.job_ended_at);
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
        self.status.last_output_at = self.shipping.activity.last().or(self.status.last_output_at);
        self.status.end = Some(end.clone());
        self.status.receipt = Some(receipt);
        self.status.kept_disk = kept_disk.clone();
        let budget = match window {
            // The only record of the kept disk: the client retries until the store is
            // back or the window ends, however many attempts that takes.
            StatusWindow::KeptDisk => Budget::within(Duration::from_secs(KEPT_DISK_STATUS_SECS))
                .with_max_attempts(u32::MAX),
            StatusWindow::Usual => {
                Budget::within(Duration::from_secs(report::FINAL_STATUS_DEADLINE_SECS))
            }
        };
        if let Err(e) = report::write_status(&self.docs(), &self.status, budget).await {
            tracing::error!("the final status could not be written: {e}");
        }
    }

    /// The `ended` webhook, waited for.
    pub(super) async fn post_ended_webhook(&self, end: &EndInfo) {
        if let Some(w) = self.webhook.clone() {
            let body = self.webhook_body(WebhookEvent::Ended, Some(end.reason), &end.message);
            w.post(&body).await;
        }
    }

    /// Record the delete request in the status before the call: a delete that works ends
    /// this agent before anything after it can be written. A record with the same
    /// `requestId` (an earlier agent's) is kept as it is.
    pub(super) async fn record_delete_request(&mut self, request_id: &str) {
        let now = self.deps.clock.now();
        if self
            .status
            .delete
            .as_ref()
            .is_none_or(|d| d.request_id != request_id)
        {
            self.status.delete = Some(DeleteRecord {
                request_id: request_id.to_string(),
                requested_at: now,
                operation: None,
            });
        }
        self.status.updated_at = now;
        if let Err(e) = report::write_status(&self.docs(), &self.status, fate_budget()).await {
            tracing::warn!("recording the delete request in the status: {e}");
        }
    }

    /// Delete the VM, or power it off when every delete fails; the delete's operation is
    /// written to the status as soon as Compute names it.
    pub(super) async fn delete_vm(&mut self, request_id: &str) -> Option<VmFate> {
        let vm = self.deps.vm.clone()?;
        let docs = self.docs();
        let mut noted = self.status.clone();
        let mut on_operation = move |op: &str| -> futures::future::BoxFuture<'static, ()> {
            if let Some(d) = noted.delete.as_mut() {
                d.operation = Some(op.to_string());
            }
            let (st, docs) = (noted.clone(), docs.clone());
            Box::pin(async move {
                if let Err(e) = report::write_status(&docs, &st, fate_budget()).await {
                    tracing::warn!("recording the delete operation in the status: {e}");
                }
            })
        };
        let (fate, op) = vm.delete_or_power_off(request_id, &mut on_operation).await;
        if let (Some(op), Some(d)) = (op, self.status.delete.as_mut()) {
            d.operation = Some(op);
        }
        fate
    }

    /// Power the VM off, no delete.
    pub(super) async fn power_off(&self) -> Option<VmFate> {
        self.deps.vm.as_ref()?.power_off().await
    }

    /// The machine's fate in the status and, when it has one, the restart stage `done`.
    pub(super) async fn record_vm_fate(&mut self, e: &Ending) {
        self.status.vm = e.vm;
        if e.vm.is_none() {
            self.status.warnings.push(
                "the VM could be neither deleted nor powered off; the cloud's maxRunDuration will delete it"
                    .into(),
            );
        }
        self.status.updated_at = self.deps.clock.now();
        if let Err(err) = report::write_status(&self.docs(), &self.status, fate_budget()).await {
            tracing::warn!("recording the VM's fate in the status: {err}");
        }
        if let Some(fate) = e.vm {
            self.set_stage(Stage::Done {
                end: e.end.clone(),
                vm: fate,
                kept_disk: e.kept_disk.clone(),
            });
        }
    }
}

/// The budget of each status write around the delete, from when it starts: short, the
/// VM may be going down.
fn fate_budget() -> Budget {
    Budget::within(Duration::from_secs(VM_FATE_STATUS_SECS))
}
