//! The teardown after the final sync, decided once and then done. [`plan`] is a pure
//! function from what is known at that point (where the run's machine lives, the final
//! sync's [`Verdict`], or that an earlier agent process already wrote the final status) to
//! the ordered [`Step`]s; [`Agent::execute`] is the one executor that acts on them, each
//! step's work being one method in [`super::steps`].
//!
//! | machine | found | steps | if the disk cannot be kept |
//! | --- | --- | --- | --- |
//! | Compute Engine VM | outputs and logs verified | final status, webhook, stage `deleting`, delete record, delete (power off if every delete fails), fate, exit | |
//! | Compute Engine VM | outputs or logs not verified | keep boot disk, final status retried for [`super::KEPT_DISK_STATUS_SECS`], webhook, stage `deleting`, delete record, delete, fate, exit | final status, webhook, power off, fate, exit (no `deleting` stage: a restart syncs again) |
//! | Compute Engine VM | final status written (restart in `deleting` or `done`) | stage `deleting`, delete record (the same `requestId`), delete, fate, exit | |
//! | this machine | any verdict | final status, webhook, stage `deleting`, local exit, fate, exit | |
//! | this machine | final status written (restart in `deleting`) | stage `deleting`, local exit, fate, exit | |
//!
//! The end reason changes no step: it decides the grace and the time for the final sync
//! before it ([`super::final_sync`]), what the final status says, and the exit code, which
//! is the reason's for every machine ([`super::Outcome::exit_code`]). A third kind of
//! machine is one more [`Provider`] and one more arm of [`plan`]: a Cloud Batch task, whose
//! VM Batch deletes itself, would write the final status, post the webhook and exit with
//! the reason's code, with no delete and no power-off.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use cloudrun::status::{EndInfo, VmFate};

use super::wiring::Agent;
use super::Outcome;
use crate::state::Stage;

/// Where the run's machine lives, as far as its end is concerned (from [`super::Deps::vm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Provider {
    /// A Compute Engine VM, which the agent deletes as its last step.
    ComputeVm,
    /// This machine (`--local`): the agent exits and the machine stays.
    Local,
}

/// The final sync's verdict: what reached the store, verified. (The last GPU samples are
/// only a warning when they do not.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Every output file is in the store with its checksum.
    pub outputs_verified: bool,
    /// The end of the job's log reached the store.
    pub logs_stored: bool,
}

impl Verdict {
    /// Nothing on the machine's disk is missing from the store.
    pub fn verified(self) -> bool {
        self.outputs_verified && self.logs_stored
    }
}

/// How far the teardown had got when [`plan`] is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reached {
    /// The final sync just ran, with this verdict.
    FinalSync(Verdict),
    /// An earlier agent process wrote the final status and saved stage `deleting` or
    /// `done`: only the machine's part is left.
    FinalStatusWritten,
}

/// How long the final status is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StatusWindow {
    /// The usual deadline for a status write.
    Usual,
    /// The status is the only record of the kept disk: retried, however many attempts,
    /// until [`super::KEPT_DISK_STATUS_SECS`] have passed.
    KeptDisk,
}

/// One thing the teardown does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// `setDiskAutoDelete false` on the boot disk. When that fails, the plan's
    /// [`Plan::if_disk_not_kept`] steps replace the ones after it.
    KeepBootDisk,
    /// The final `status.json`: end, receipt and any kept disk.
    WriteFinalStatus(StatusWindow),
    /// The `ended` webhook, waited for (within its own timeout).
    PostEndedWebhook,
    /// Restart stage `deleting` with the delete's `requestId`: an agent restarted from
    /// here only deletes, with the same id.
    SaveDeletingStage,
    /// The delete request in the status, before the call: a delete that works ends this
    /// agent before anything after it can be written.
    RecordDeleteRequest,
    /// Delete the VM (one call, which the client retries with one `requestId`), noting
    /// its operation in the status; power it off when every delete fails.
    DeleteVm,
    /// Power the VM off without deleting it (its boot disk would go with it).
    PowerOff,
    /// A local run: nothing to delete, the fate is the agent's own exit.
    ExitLocally,
    /// The machine's fate in the status and, when it has one, restart stage `done`.
    RecordVmFate,
    /// The end: the agent returns its [`Outcome`] and exits with the end reason's code.
    Exit,
}

/// The ordered steps, and the ones that replace the rest when the boot disk cannot be
/// kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub steps: Vec<Step>,
    pub if_disk_not_kept: Vec<Step>,
}

/// What the teardown does from `reached` on a machine of kind `provider`. Pure; see the
/// module docs for the table.
pub(super) fn plan(provider: Provider, reached: Reached) -> Plan {
    use StatusWindow::{KeptDisk, Usual};
    use Step::*;
    let only = |steps: Vec<Step>| Plan {
        steps,
        if_disk_not_kept: Vec::new(),
    };
    match (provider, reached) {
        (Provider::ComputeVm, Reached::FinalSync(v)) if v.verified() => only(vec![
            WriteFinalStatus(Usual),
            PostEndedWebhook,
            SaveDeletingStage,
            RecordDeleteRequest,
            DeleteVm,
            RecordVmFate,
            Exit,
        ]),
        // Keep the boot disk when the store does not have everything.
        (Provider::ComputeVm, Reached::FinalSync(_)) => Plan {
            steps: vec![
                KeepBootDisk,
                WriteFinalStatus(KeptDisk),
                PostEndedWebhook,
                SaveDeletingStage,
                RecordDeleteRequest,
                DeleteVm,
                RecordVmFate,
                Exit,
            ],
            // No `deleting` stage: the boot disk holds what the store lacks, so an agent
            // restarted on this VM (someone starts it to recover the outputs) syncs
            // again from `tearing_down` instead of deleting the VM and the disk.
            if_disk_not_kept: vec![
                WriteFinalStatus(Usual),
                PostEndedWebhook,
                PowerOff,
                RecordVmFate,
                Exit,
            ],
        },
        (Provider::ComputeVm, Reached::FinalStatusWritten) => only(vec![
            SaveDeletingStage,
            RecordDeleteRequest,
            DeleteVm,
            RecordVmFate,
            Exit,
        ]),
        (Provider::Local, Reached::FinalSync(_)) => only(vec![
            WriteFinalStatus(Usual),
            PostEndedWebhook,
            SaveDeletingStage,
            ExitLocally,
            RecordVmFate,
            Exit,
        ]),
        (Provider::Local, Reached::FinalStatusWritten) => {
            only(vec![SaveDeletingStage, ExitLocally, RecordVmFate, Exit])
        }
    }
}

/// What the executor carries from step to step.
#[derive(Debug)]
pub(super) struct Ending {
    pub end: EndInfo,
    /// The delete's `requestId`: new for a first teardown, the recorded one on a restart.
    pub request_id: String,
    pub kept_disk: Option<String>,
    /// When the job ended, for the receipt (plans that write no final status ignore it).
    pub job_ended_at: DateTime<Utc>,
    /// What became of the machine; `None` until a step settles it, or when the delete
    /// and the power-off both failed.
    pub vm: Option<VmFate>,
}

impl Agent {
    /// The single last step: stop the job, the final sync, then the plan. See the module
    /// docs.
    pub(super) async fn teardown(
        &mut self,
        end: EndInfo,
        job: Option<crate::process::Job>,
    ) -> Outcome {
        let (end, verdict, job_ended_at) = self.stop_and_sync(end, job).await;
        let plan = plan(self.provider(), Reached::FinalSync(verdict));
        let ending = Ending {
            end,
            request_id: uuid::Uuid::new_v4().to_string(),
            kept_disk: None,
            job_ended_at,
            vm: None,
        };
        self.execute(plan, ending).await
    }

    /// A restart after the final status was written: the machine's part again, with the
    /// recorded `requestId` (the Compute API treats it as the same delete).
    pub(super) async fn resume_delete(
        &mut self,
        end: EndInfo,
        request_id: String,
        kept_disk: Option<String>,
    ) -> Outcome {
        self.watchers.cancel();
        self.final_sync_verified = kept_disk.is_none();
        let plan = plan(self.provider(), Reached::FinalStatusWritten);
        let ending = Ending {
            end,
            request_id,
            kept_disk,
            job_ended_at: self.deps.clock.now(),
            vm: None,
        };
        self.execute(plan, ending).await
    }

    fn provider(&self) -> Provider {
        match self.deps.vm {
            Some(_) => Provider::ComputeVm,
            None => Provider::Local,
        }
    }

    /// Act on `plan`, in order.
    async fn execute(&mut self, plan: Plan, mut e: Ending) -> Outcome {
        let mut steps = VecDeque::from(plan.steps);
        while let Some(step) = steps.pop_front() {
            match step {
                Step::KeepBootDisk => {
                    e.kept_disk = self.keep_boot_disk().await;
                    if e.kept_disk.is_none() {
                        steps = VecDeque::from(plan.if_disk_not_kept.clone());
                    }
                }
                Step::WriteFinalStatus(window) => self.write_final_status(&e, window).await,
                Step::PostEndedWebhook => self.post_ended_webhook(&e.end).await,
                Step::SaveDeletingStage => self.set_stage(Stage::Deleting {
                    end: e.end.clone(),
                    request_id: e.request_id.clone(),
                    kept_disk: e.kept_disk.clone(),
                }),
                Step::RecordDeleteRequest => self.record_delete_request(&e.request_id).await,
                Step::DeleteVm => e.vm = self.delete_vm(&e.request_id).await,
                Step::PowerOff => e.vm = self.power_off().await,
                Step::ExitLocally => e.vm = Some(VmFate::LocalExit),
                Step::RecordVmFate => self.record_vm_fate(&e).await,
                Step::Exit => break,
            }
        }
        Outcome {
            end: e.end,
            vm: e.vm,
            kept_disk: e.kept_disk,
            final_sync_verified: self.final_sync_verified,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatusWindow::{KeptDisk, Usual};
    use Step::*;

    fn verdict(outputs_verified: bool, logs_stored: bool) -> Verdict {
        Verdict {
            outputs_verified,
            logs_stored,
        }
    }

    /// The VM's steps after an unverified sync whose disk was kept.
    const VM_KEPT: &[Step] = &[
        KeepBootDisk,
        WriteFinalStatus(KeptDisk),
        PostEndedWebhook,
        SaveDeletingStage,
        RecordDeleteRequest,
        DeleteVm,
        RecordVmFate,
        Exit,
    ];
    /// What replaces them when the disk cannot be kept.
    const VM_NOT_KEPT: &[Step] = &[
        WriteFinalStatus(Usual),
        PostEndedWebhook,
        PowerOff,
        RecordVmFate,
        Exit,
    ];
    const VM_VERIFIED: &[Step] = &[
        WriteFinalStatus(Usual),
        PostEndedWebhook,
        SaveDeletingStage,
        RecordDeleteRequest,
        DeleteVm,
        RecordVmFate,
        Exit,
    ];
    const VM_RESUMED: &[Step] = &[
        SaveDeletingStage,
        RecordDeleteRequest,
        DeleteVm,
        RecordVmFate,
        Exit,
    ];
    const LOCAL: &[Step] = &[
        WriteFinalStatus(Usual),
        PostEndedWebhook,
        SaveDeletingStage,
        ExitLocally,
        RecordVmFate,
        Exit,
    ];
    const LOCAL_RESUMED: &[Step] = &[SaveDeletingStage, ExitLocally, RecordVmFate, Exit];

    #[test]
    fn every_machine_and_verdict_has_its_plan() {
        use Provider::{ComputeVm, Local};
        let sync = |o, l| Reached::FinalSync(verdict(o, l));
        let table: &[(Provider, Reached, &[Step], &[Step])] = &[
            (ComputeVm, sync(true, true), VM_VERIFIED, &[]),
            (ComputeVm, sync(false, true), VM_KEPT, VM_NOT_KEPT),
            (ComputeVm, sync(true, false), VM_KEPT, VM_NOT_KEPT),
            (ComputeVm, sync(false, false), VM_KEPT, VM_NOT_KEPT),
            (ComputeVm, Reached::FinalStatusWritten, VM_RESUMED, &[]),
            (Local, sync(true, true), LOCAL, &[]),
            (Local, sync(false, true), LOCAL, &[]),
            (Local, sync(true, false), LOCAL, &[]),
            (Local, sync(false, false), LOCAL, &[]),
            (Local, Reached::FinalStatusWritten, LOCAL_RESUMED, &[]),
        ];
        for &(provider, reached, steps, if_not_kept) in table {
            let got = plan(provider, reached);
            assert_eq!(got.steps, steps, "{provider:?}, {reached:?}");
            assert_eq!(
                got.if_disk_not_kept, if_not_kept,
                "{provider:?}, {reached:?}"
            );
        }
    }

    #[test]
    fn every_plan_records_the_deleting_stage_before_any_delete_and_ends_with_the_fate_and_a_power_off_never_resumes_as_a_delete(
    ) {
        for provider in [Provider::ComputeVm, Provider::Local] {
            for reached in [
                Reached::FinalSync(verdict(true, true)),
                Reached::FinalSync(verdict(false, true)),
                Reached::FinalStatusWritten,
            ] {
                let p = plan(provider, reached);
                for steps in [&p.steps, &p.if_disk_not_kept] {
                    if steps.is_empty() {
                        continue;
                    }
                    let at = |s: Step| steps.iter().position(|&x| x == s);
                    let stage = at(SaveDeletingStage);
                    if at(PowerOff).is_some() {
                        // Powered off with outputs missing from the store: a restart
                        // must sync again, never resume a delete.
                        assert!(stage.is_none(), "{steps:?}");
                        assert_eq!(at(DeleteVm), None, "{steps:?}");
                        continue;
                    }
                    assert!(stage.is_some(), "{steps:?}");
                    for vm_step in [RecordDeleteRequest, DeleteVm, PowerOff, ExitLocally] {
                        assert!(at(vm_step).is_none_or(|i| Some(i) > stage), "{steps:?}");
                    }
                    // The delete is recorded right before the call, and once.
                    if let Some(d) = at(DeleteVm) {
                        assert_eq!(at(RecordDeleteRequest), Some(d - 1), "{steps:?}");
                    }
                    assert_eq!(&steps[steps.len() - 2..], &[RecordVmFate, Exit]);
                    // The final status, when written, comes before the webhook and the VM.
                    if let Some(f) = at(WriteFinalStatus(Usual)).or(at(WriteFinalStatus(KeptDisk)))
                    {
                        assert!(Some(f) < at(PostEndedWebhook) && Some(f) < stage);
                    }
                }
            }
        }
    }
}
