//! The job's process: spawned in its own process group, as `VM_USER` (supplementary
//! groups, gid, then uid, set in the child), with stdout and stderr piped; signalled as a
//! group (SIGTERM, a grace period, SIGKILL); its exit recorded.
//!
//! A job is either [`Job::Owned`] (this agent spawned it and can `wait` for its status) or
//! [`Job::Adopted`] (a previous agent process spawned it and this one found it still
//! running after a restart: it can be watched and signalled, but its exit code is lost).
//! Only the supervisor task holds a `Job`; nothing else signals the job.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout};

use crate::user::RunAs;

/// How often an adopted job (not our child, so no `wait`) is checked for life.
pub const ADOPTED_POLL_MILLIS: u64 = 500;

/// What to run, where, as whom.
#[derive(Debug, Clone)]
pub struct JobCommand {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    /// Set on top of the agent's own environment.
    pub env: Vec<(String, String)>,
    pub run_as: Option<RunAs>,
}

/// How a job ended. Both `None` for an adopted job, whose status only its parent saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl JobExit {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// "exit code 3", "killed by signal 15", "exit status unknown".
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => {
                let name = Signal::try_from(s).map(|s| s.as_str()).unwrap_or("?");
                format!("killed by signal {s} ({name})")
            }
            (None, None) => "exit status unknown".into(),
        }
    }
}

/// Why a job could not be started.
#[derive(Debug, thiserror::Error)]
#[error("could not start {program:?} in {cwd}: {source}")]
pub struct SpawnError {
    pub program: String,
    pub cwd: String,
    #[source]
    pub source: std::io::Error,
}

/// The job's process.
#[derive(Debug)]
pub enum Job {
    Owned {
        child: Child,
        pid: i32,
        exit: Option<JobExit>,
    },
    Adopted {
        pid: i32,
        start_ticks: u64,
        exited: bool,
    },
}

/// A freshly spawned job and its output pipes.
#[derive(Debug)]
pub struct Spawned {
    pub job: Job,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

/// Start `cmd` in a new process group.
pub fn spawn(cmd: &JobCommand) -> Result<Spawned, SpawnError> {
    let program = cmd.argv.first().cloned().unwrap_or_default();
    let err = |source| SpawnError {
        program: program.clone(),
        cwd: cmd.cwd.display().to_string(),
        source,
    };
    let mut c = tokio::process::Command::new(&program);
    c.args(&cmd.argv[1.min(cmd.argv.len())..])
        .current_dir(&cmd.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        // A safety net only: the supervisor signals the whole group itself.
        .kill_on_drop(true);
    if let Some(u) = &cmd.run_as {
        c.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
        switch_user_in_child(&mut c, u);
    }
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    let mut child = c.spawn().map_err(err)?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(err(std::io::Error::other("no stdout/stderr pipe")));
    };
    Ok(Spawned {
        job: Job::Owned {
            child,
            pid,
            exit: None,
        },
        stdout,
        stderr,
    })
}

/// Drop to `u` in the child between fork and exec: supplementary groups, then gid, then
/// uid (the order that leaves no way back to root). std's own `uid()` would clear the
/// supplementary groups after our `setgroups`, so all three happen here.
#[allow(unsafe_code)]
fn switch_user_in_child(c: &mut tokio::process::Command, u: &RunAs) {
    let groups = u.groups.clone();
    let (uid, gid) = (u.uid, u.gid);
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed. It makes three system calls (setgroups, setgid,
    // setuid) on values computed in the parent and moved in; it allocates nothing, takes
    // no lock and does no NSS lookup (the group list came from getgrouplist in the parent).
    unsafe {
        c.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
            Ok(())
        });
    }
}

impl Job {
    /// A job found running after an agent restart.
    pub fn adopt(pid: i32, start_ticks: u64) -> Self {
        Job::Adopted {
            pid,
            start_ticks,
            exited: false,
        }
    }

    /// The process id (also the process group id: the job leads its group).
    pub fn pid(&self) -> i32 {
        match self {
            Job::Owned { pid, .. } | Job::Adopted { pid, .. } => *pid,
        }
    }

    /// Wait for the job to end. Cancel-safe: dropping the future loses nothing.
    pub async fn wait(&mut self) -> JobExit {
        match self {
            Job::Owned { child, exit, .. } => {
                if let Some(e) = exit {
                    return *e;
                }
                let e = match child.wait().await {
                    Ok(st) => {
                        use std::os::unix::process::ExitStatusExt;
                        JobExit {
                            code: st.code(),
                            signal: st.signal(),
                        }
                    }
                    Err(e) => {
                        tracing::warn!("waiting for the job: {e}");
                        JobExit::default()
                    }
                };
                *exit = Some(e);
                e
            }
            Job::Adopted {
                pid,
                start_ticks,
                exited,
            } => {
                while !*exited {
                    if !is_same_process_alive(*pid, *start_ticks) {
                        *exited = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(ADOPTED_POLL_MILLIS)).await;
                }
                JobExit::default()
            }
        }
    }

    /// Send `sig` to the job's whole process group; a group that is gone is not an error.
    pub fn signal_group(&self, sig: Signal) {
        let pgid = self.pid();
        if pgid <= 1 {
            return;
        }
        match killpg(Pid::from_raw(pgid), sig) {
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(e) => tracing::warn!("sending {sig} to process group {pgid}: {e}"),
        }
    }

    /// SIGTERM to the group, up to `grace` for the job to exit, then SIGKILL to the
    /// group (also after a timely exit, for stragglers the job left in its group).
    pub async fn terminate(&mut self, grace: Duration) -> JobExit {
        let done = match self {
            Job::Owned { exit, .. } => exit.is_some(),
            Job::Adopted { exited, .. } => *exited,
        };
        if !done {
            tracing::info!("sending SIGTERM to the job (process group {})", self.pid());
            self.signal_group(Signal::SIGTERM);
        }
        let exit = match tokio::time::timeout(grace, self.wait()).await {
            Ok(e) => e,
            Err(_) => {
                tracing::warn!("the job did not exit within {grace:?} of SIGTERM: sending SIGKILL");
                self.signal_group(Signal::SIGKILL);
                self.wait().await
            }
        };
        self.signal_group(Signal::SIGKILL);
        exit
    }
}

pub use cloudrun::procfs::{boot_id, is_same_process_alive, proc_start_ticks};

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> JobCommand {
        JobCommand {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            env: vec![("CLOUDRUN_TEST".into(), "yes".into())],
            run_as: None,
        }
    }

    #[tokio::test]
    async fn a_job_runs_in_its_own_process_group_and_reports_its_exit_code() {
        let mut s = spawn(&sh("test \"$CLOUDRUN_TEST\" = yes && exit 3")).unwrap();
        let pid = s.job.pid();
        assert_eq!(
            nix::unistd::getpgid(Some(Pid::from_raw(pid)))
                .unwrap()
                .as_raw(),
            pid
        );
        let e = s.job.wait().await;
        assert_eq!(
            e,
            JobExit {
                code: Some(3),
                signal: None
            }
        );
        assert_eq!(e.describe(), "exit code 3");
    }

    #[tokio::test]
    async fn terminate_kills_the_whole_group_after_the_grace_period() {
        // The shell ignores SIGTERM and so does its background child: only SIGKILL ends them.
        let mut s = spawn(&sh("trap '' TERM; sleep 60 & trap '' TERM; wait")).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = std::time::Instant::now();
        let e = s.job.terminate(Duration::from_millis(500)).await;
        assert!(t0.elapsed() >= Duration::from_millis(500));
        assert_eq!(e.signal, Some(9), "{e:?}");
        // Killed members may linger as zombies until init reaps them; none may still run.
        let mut live = vec![];
        for _ in 0..20 {
            live = running_in_group(s.job.pid());
            if live.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(live.is_empty(), "still running in the group: {live:?}");
    }

    fn running_in_group(pgid: i32) -> Vec<i32> {
        let mut out = vec![];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(i) = stat.rfind(')') else { continue };
            let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
            if f.get(2) == Some(&pgid.to_string().as_str()) && f.first() != Some(&"Z") {
                out.push(pid);
            }
        }
        out
    }

    #[tokio::test]
    async fn sigterm_within_the_grace_period_is_enough() {
        let mut s = spawn(&sh("sleep 60")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let e = s.job.terminate(Duration::from_secs(10)).await;
        assert_eq!(e.signal, Some(15), "{e:?}");
        assert!(e.describe().contains("SIGTERM"), "{}", e.describe());
    }

    #[tokio::test]
    async fn an_adopted_job_is_watched_by_pid_and_start_time() {
        let mut s = spawn(&sh("sleep 0.5")).unwrap();
        let pid = s.job.pid();
        let ticks = proc_start_ticks(pid).unwrap();
        assert!(is_same_process_alive(pid, ticks));
        assert!(
            !is_same_process_alive(pid, ticks + 1),
            "a reused pid is not our job"
        );
        let mut adopted = Job::adopt(pid, ticks);
        let (_, e) = tokio::join!(s.job.wait(), adopted.wait());
        assert_eq!(e, JobExit::default());
        assert!(!is_same_process_alive(pid, ticks));
        assert!(!boot_id().is_empty());
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error_naming_it() {
        let err = spawn(&JobCommand {
            argv: vec!["/nonexistent/python3".into()],
            ..sh("")
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/python3"), "{err}");
    }

    #[tokio::test]
    async fn the_job_runs_as_vm_user_when_the_agent_is_root() {
        if !nix::unistd::geteuid().is_root() {
            return; // switching needs root; user::tests covers the refusal
        }
        let Some(u) = crate::user::resolve(Some("nobody"), std::path::Path::new("/bin/false"))
            .await
            .ok()
            .flatten()
        else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("id");
        std::fs::set_permissions(
            d.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let mut s = spawn(&JobCommand {
            run_as: Some(u.clone()),
            ..sh(&format!(
                "id -u > {0}; id -g >> {0}; echo $HOME >> {0}",
                out.display()
            ))
        })
        .unwrap();
        assert!(s.job.wait().await.success());
        let text = std::fs::read_to_string(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], u.uid.to_string());
        assert_eq!(lines[1], u.gid.to_string());
        assert_eq!(lines[2], u.home.display().to_string());
    }
}
