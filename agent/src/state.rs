//! The restart-state file (`<state-dir>/agent-state.json`): what a restarted agent
//! (systemd `Restart=always`, a crash, an OOM kill) needs to continue rather than start
//! over or hang. It is rewritten atomically at every stage change.
//!
//! What a new agent process does, by what it finds ([`decide`]):
//!
//! | found | meaning | what happens |
//! | --- | --- | --- |
//! | no file, unreadable file, or another run's file | first start for this run | [`Resume::Fresh`]: pull, setup, job |
//! | `preparing` (pull or setup was under way) | the agent died before the job started | [`Resume::Prepare`]: pull again (it only fetches what is missing and re-verifies) and run setup again |
//! | `running`, same boot, the pid alive with the recorded start time | job still running | [`Resume::Adopt`]: supervise it again (policies, outputs, heartbeat, preemption, stop), signal its group at the end; its output after the restart and its exit code are lost (its stdout pipe died with the old agent), and that is written to the status |
//! | `running`, but another boot or the process is gone | job lost | [`Resume::Lost`]: teardown with end reason `lost` (the outputs on disk are still synced) |
//! | `tearing_down` | a stop was decided | [`Resume::Teardown`]: the same end reason; a job still alive is signalled; final sync, status, delete |
//! | `deleting` | the final status is written, the delete may have been sent | [`Resume::Delete`]: delete again **with the same `requestId`**, which the Compute API treats as the same request |
//! | `done` | the run is over | [`Resume::Done`]: a local run exits at once with the recorded outcome; on a VM that is somehow still up, the delete is sent again |
//! | `done` with the VM powered off and no kept disk | the boot disk may hold outputs the store lacks (keeping it failed) | [`Resume::Teardown`]: the final sync again, then the delete (or another power-off) by its verdict |
//!
//! The file also keeps when the wait for the GPUs began, so a restart during the wait
//! (a driver install that reboots) continues the same `gpu_ready_secs` window.
//!
//! A run that keeps restarting the agent while preparing or running (more than
//! [`MAX_AGENT_STARTS`] starts) is torn down with end reason `agent_error` instead of
//! looping. Billing and `max_run_secs` count from the first start, which the file keeps.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use cloudrun::status::{EndInfo, EndReason, VmFate};
use cloudrun::RunId;
use serde::{Deserialize, Serialize};

/// File name of the restart state inside the state dir.
pub const STATE_FILE_NAME: &str = "agent-state.json";
/// Starts of the agent for one run before it gives up preparing or supervising: enough
/// for a few crashes, few enough that a crash loop cannot keep a VM up for long.
pub const MAX_AGENT_STARTS: u32 = 5;

/// Where the run stood when the state was last written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    Preparing,
    Running {
        pid: i32,
        start_ticks: u64,
        job_started_at: DateTime<Utc>,
    },
    TearingDown {
        end: EndInfo,
    },
    Deleting {
        end: EndInfo,
        request_id: String,
        #[serde(default)]
        kept_disk: Option<String>,
    },
    Done {
        end: EndInfo,
        vm: VmFate,
        #[serde(default)]
        kept_disk: Option<String>,
    },
}

/// The restart state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub run_id: RunId,
    /// `/proc/sys/kernel/random/boot_id` when the stage was written.
    pub boot_id: String,
    /// The first start of the agent for this run: billing counts from here.
    pub agent_started_at: DateTime<Utc>,
    /// How many times an agent process started for this run.
    pub starts: u32,
    #[serde(default)]
    pub budget_warned: bool,
    /// When the wait for the plan's GPUs first began: a restart (a driver install that
    /// reboots the VM) continues the same window instead of starting a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_wait_started_at: Option<DateTime<Utc>>,
    pub stage: Stage,
}

/// What a starting agent should do.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    Fresh,
    Prepare,
    Adopt {
        pid: i32,
        start_ticks: u64,
        job_started_at: DateTime<Utc>,
    },
    Lost {
        job_started_at: DateTime<Utc>,
    },
    Teardown {
        end: EndInfo,
        /// The job's process, if it may still be alive.
        job: Option<(i32, u64)>,
    },
    Delete {
        end: EndInfo,
        request_id: String,
        kept_disk: Option<String>,
    },
    Done {
        end: EndInfo,
        vm: VmFate,
        kept_disk: Option<String>,
    },
}

/// The state file in `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE_NAME)
}

/// Read the state file; `None` if absent or unreadable (which is logged).
pub fn load(path: &Path) -> Option<AgentState> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("restart state {}: {e}; starting afresh", path.display());
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                "restart state {} is damaged ({e}); starting afresh",
                path.display()
            );
            None
        }
    }
}

/// Write the state file atomically.
pub fn save(path: &Path, state: &AgentState) {
    if let Err(e) = crate::transfer::save_json(path, state) {
        tracing::warn!("could not save the restart state {}: {e}", path.display());
    }
}

/// Decide what to do from the previous state (see the module docs). `alive(pid, ticks)`
/// says whether that process still runs; it is only asked when the boot is the same.
pub fn decide(
    prev: Option<&AgentState>,
    run_id: &RunId,
    boot_id: &str,
    alive: impl Fn(i32, u64) -> bool,
) -> Resume {
    let Some(prev) = prev.filter(|p| &p.run_id == run_id) else {
        return Resume::Fresh;
    };
    let same_boot = !boot_id.is_empty() && prev.boot_id == boot_id;
    let too_many = prev.starts >= MAX_AGENT_STARTS;
    let give_up = |job| Resume::Teardown {
        end: EndInfo {
            reason: EndReason::AgentError,
            exit_code: None,
            signal: None,
            message: format!(
                "the agent was started {} times for this run; giving up",
                prev.starts + 1
            ),
        },
        job,
    };
    match &prev.stage {
        Stage::Preparing if too_many => give_up(None),
        Stage::Preparing => Resume::Prepare,
        Stage::Running {
            pid,
            start_ticks,
            job_started_at,
        } => {
            let live = same_boot && alive(*pid, *start_ticks);
            if too_many {
                give_up(live.then_some((*pid, *start_ticks)))
            } else if live {
                Resume::Adopt {
                    pid: *pid,
                    start_ticks: *start_ticks,
                    job_started_at: *job_started_at,
                }
            } else {
                Resume::Lost {
                    job_started_at: *job_started_at,
                }
            }
        }
        Stage::TearingDown { end } => Resume::Teardown {
            end: end.clone(),
            job: None,
        },
        Stage::Deleting {
            end,
            request_id,
            kept_disk,
        } => Resume::Delete {
            end: end.clone(),
            request_id: request_id.clone(),
            kept_disk: kept_disk.clone(),
        },
        // Powered off with no kept disk: the disk may hold outputs the store lacks (the
        // keep failed), so a VM started again syncs again rather than deleting them.
        Stage::Done {
            end,
            vm: VmFate::PoweredOff,
            kept_disk: None,
        } => Resume::Teardown {
            end: end.clone(),
            job: None,
        },
        Stage::Done { end, vm, kept_disk } => Resume::Done {
            end: end.clone(),
            vm: *vm,
            kept_disk: kept_disk.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunId {
        RunId::parse("20261126-071500-ab12").unwrap()
    }

    fn state(stage: Stage, starts: u32) -> AgentState {
        AgentState {
            run_id: run(),
            boot_id: "boot-1".into(),
            agent_started_at: "2026-11-26T07:16:00Z".parse().unwrap(),
            starts,
            budget_warned: false,
            gpu_wait_started_at: None,
            stage,
        }
    }

    fn end(reason: EndReason) -> EndInfo {
        EndInfo {
            reason,
            exit_code: None,
            signal: None,
            message: String::new(),
        }
    }

    fn running() -> Stage {
        Stage::Running {
            pid: 4242,
            start_ticks: 99,
            job_started_at: "2026-11-26T07:17:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn no_state_or_another_runs_state_is_a_fresh_start() {
        assert_eq!(decide(None, &run(), "boot-1", |_, _| true), Resume::Fresh);
        let mut other = state(Stage::Preparing, 1);
        other.run_id = RunId::parse("20261126-071500-ffff").unwrap();
        assert_eq!(
            decide(Some(&other), &run(), "boot-1", |_, _| true),
            Resume::Fresh
        );
    }

    #[test]
    fn a_restart_while_preparing_prepares_again() {
        assert_eq!(
            decide(
                Some(&state(Stage::Preparing, 1)),
                &run(),
                "boot-1",
                |_, _| true
            ),
            Resume::Prepare
        );
    }

    #[test]
    fn a_job_still_running_is_adopted_only_on_the_same_boot_with_the_same_process() {
        let s = state(running(), 1);
        assert!(matches!(
            decide(Some(&s), &run(), "boot-1", |p, t| p == 4242 && t == 99),
            Resume::Adopt { pid: 4242, .. }
        ));
        assert!(
            matches!(
                decide(Some(&s), &run(), "boot-1", |_, _| false),
                Resume::Lost { .. }
            ),
            "process gone"
        );
        assert!(
            matches!(
                decide(Some(&s), &run(), "boot-2", |_, _| true),
                Resume::Lost { .. }
            ),
            "rebooted"
        );
    }

    #[test]
    fn teardown_and_delete_continue_where_they_stopped() {
        let s = state(
            Stage::TearingDown {
                end: end(EndReason::GpuIdle),
            },
            1,
        );
        assert!(matches!(
            decide(Some(&s), &run(), "boot-1", |_, _| true),
            Resume::Teardown {
                end: EndInfo {
                    reason: EndReason::GpuIdle,
                    ..
                },
                ..
            }
        ));
        let s = state(
            Stage::Deleting {
                end: end(EndReason::Succeeded),
                request_id: "req-1".into(),
                kept_disk: None,
            },
            1,
        );
        assert!(
            matches!(decide(Some(&s), &run(), "boot-2", |_, _| true), Resume::Delete { request_id, .. } if request_id == "req-1")
        );
        let s = state(
            Stage::Done {
                end: end(EndReason::Failed),
                vm: VmFate::LocalExit,
                kept_disk: None,
            },
            9,
        );
        assert!(matches!(
            decide(Some(&s), &run(), "boot-1", |_, _| true),
            Resume::Done {
                vm: VmFate::LocalExit,
                ..
            }
        ));
    }

    #[test]
    fn a_vm_powered_off_with_outputs_missing_syncs_again_when_started_not_deleted() {
        let off = |kept_disk: Option<&str>| {
            state(
                Stage::Done {
                    end: end(EndReason::Succeeded),
                    vm: VmFate::PoweredOff,
                    kept_disk: kept_disk.map(str::to_string),
                },
                1,
            )
        };
        // The disk could not be kept: its outputs go nowhere until they are synced.
        assert!(matches!(
            decide(Some(&off(None)), &run(), "boot-2", |_, _| true),
            Resume::Teardown {
                end: EndInfo {
                    reason: EndReason::Succeeded,
                    ..
                },
                job: None
            }
        ));
        // A kept disk survives the delete: the usual resume.
        assert!(matches!(
            decide(Some(&off(Some("cr-1"))), &run(), "boot-2", |_, _| true),
            Resume::Done {
                vm: VmFate::PoweredOff,
                ..
            }
        ));
    }

    #[test]
    fn a_crash_loop_ends_in_teardown_not_another_try() {
        let s = state(Stage::Preparing, MAX_AGENT_STARTS);
        assert!(matches!(
            decide(Some(&s), &run(), "boot-1", |_, _| true),
            Resume::Teardown {
                end: EndInfo {
                    reason: EndReason::AgentError,
                    ..
                },
                job: None
            }
        ));
        let s = state(running(), MAX_AGENT_STARTS);
        assert!(matches!(
            decide(Some(&s), &run(), "boot-1", |_, _| true),
            Resume::Teardown {
                job: Some((4242, 99)),
                ..
            }
        ));
    }

    #[test]
    fn the_file_round_trips_and_a_damaged_one_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let p = path_in(d.path());
        assert_eq!(load(&p), None);
        let mut s = state(running(), 2);
        s.gpu_wait_started_at = Some("2026-11-26T07:16:30Z".parse().unwrap());
        save(&p, &s);
        assert_eq!(load(&p), Some(s));
        std::fs::write(&p, "{not json").unwrap();
        assert_eq!(load(&p), None);
    }
}
