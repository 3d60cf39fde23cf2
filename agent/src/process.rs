//! The job's process: started through the job shim ([`crate::shim`]) as the leader of its
//! own process group, as `VM_USER` (supplementary groups, gid, then uid, set by the shim
//! in the job), with stdout and stderr going to files the agent tails (never pipes: the
//! job must outlive a crashed agent); signalled as a group (SIGTERM, a grace period,
//! SIGKILL); its exit read from the shim's exit file.
//!
//! A job is either [`Job::Owned`] (this agent spawned the shim and can `wait` for it) or
//! [`Job::Adopted`] (a previous agent process spawned it and this one found it still
//! running after a restart: it is watched by pid and start time, and its exit code is read
//! from the exit file once the shim is gone). Only the supervisor task holds a `Job`;
//! nothing else signals the job.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;

use crate::shim::{self, ShimArgs, ShimUser, SHIM_SUBCOMMAND};
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

/// Where the job's output and exit go, and the shim that holds it.
#[derive(Debug)]
pub struct JobIo {
    /// The `cloudrun-agent` executable (run as `cloudrun-agent job-shim …`).
    pub shim: PathBuf,
    /// Where the shim records the job's exit (removed before the start).
    pub exit_file: PathBuf,
    /// The job's stdout and stderr: files opened for appending.
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
}

/// How a job ended. Both `None` when nobody could see it (the shim was killed too).
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

/// The job's process (the shim that leads its group, and the job under it).
#[derive(Debug)]
pub enum Job {
    Owned {
        child: Child,
        pid: i32,
        exit_file: PathBuf,
        exit: Option<JobExit>,
        killed: bool,
    },
    Adopted {
        pid: i32,
        start_ticks: u64,
        exit_file: PathBuf,
        exit: Option<JobExit>,
        killed: bool,
    },
}

/// Start `cmd` through the shim, in a new process group, its output to `io`'s files.
pub fn spawn(cmd: &JobCommand, io: JobIo) -> Result<Job, SpawnError> {
    let program = cmd.argv.first().cloned().unwrap_or_default();
    let err = |source| SpawnError {
        program: program.clone(),
        cwd: cmd.cwd.display().to_string(),
        source,
    };
    if cmd.argv.is_empty() {
        return Err(err(std::io::Error::other("the command is empty")));
    }
    match std::fs::remove_file(&io.exit_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let args = ShimArgs {
        exit_file: io.exit_file.clone(),
        user: cmd.run_as.as_ref().map(|u| ShimUser {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            groups: u.groups.iter().map(|g| g.as_raw()).collect(),
        }),
        argv: cmd.argv.clone(),
    };
    let mut c = tokio::process::Command::new(&io.shim);
    c.arg(SHIM_SUBCOMMAND)
        .args(args.to_args())
        .current_dir(&cmd.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(io.stdout)
        .stderr(io.stderr)
        .process_group(0)
        // Never killed with this agent: a restarted agent adopts it.
        .kill_on_drop(false);
    if let Some(u) = &cmd.run_as {
        c.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
    }
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    let child = c.spawn().map_err(err)?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    Ok(Job::Owned {
        child,
        pid,
        exit_file: io.exit_file,
        exit: None,
        killed: false,
    })
}

/// The job's exit as the shim recorded it in `exit_file`, if it did.
pub fn recorded_exit(exit_file: &Path) -> Option<JobExit> {
    let rec = shim::read_exit(exit_file)?;
    if let Some(e) = &rec.spawn_error {
        tracing::warn!("{e}");
    }
    Some(JobExit {
        code: rec.code,
        signal: rec.signal,
    })
}

impl Job {
    /// A job found running after an agent restart: its shim's pid and start time, and
    /// where the shim will record the exit.
    pub fn adopt(pid: i32, start_ticks: u64, exit_file: PathBuf) -> Self {
        Job::Adopted {
            pid,
            start_ticks,
            exit_file,
            exit: None,
            killed: false,
        }
    }

    /// The process id (also the process group id: the job leads its group).
    pub fn pid(&self) -> i32 {
        match self {
            Job::Owned { pid, .. } | Job::Adopted { pid, .. } => *pid,
        }
    }

    /// Wait for the job to end: the exit the shim recorded, else what the agent knows
    /// (the shim's own status; "killed by SIGKILL" when this agent sent one). Cancel-safe:
    /// dropping the future loses nothing.
    pub async fn wait(&mut self) -> JobExit {
        match self {
            Job::Owned {
                child,
                exit,
                exit_file,
                killed,
                ..
            } => {
                if let Some(e) = exit {
                    return *e;
                }
                let shim_status = match child.wait().await {
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
                let e = recorded_exit(exit_file).unwrap_or(if *killed {
                    JobExit {
                        code: None,
                        signal: Some(Signal::SIGKILL as i32),
                    }
                } else {
                    shim_status
                });
                *exit = Some(e);
                e
            }
            Job::Adopted {
                pid,
                start_ticks,
                exit,
                exit_file,
                killed,
            } => {
                if let Some(e) = exit {
                    return *e;
                }
                while is_same_process_alive(*pid, *start_ticks) {
                    tokio::time::sleep(Duration::from_millis(ADOPTED_POLL_MILLIS)).await;
                }
                let e = recorded_exit(exit_file).unwrap_or(if *killed {
                    JobExit {
                        code: None,
                        signal: Some(Signal::SIGKILL as i32),
                    }
                } else {
                    JobExit::default()
                });
                *exit = Some(e);
                e
            }
        }
    }

    fn mark_killed(&mut self) {
        match self {
            Job::Owned { killed, .. } | Job::Adopted { killed, .. } => *killed = true,
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
            Job::Owned { exit, .. } | Job::Adopted { exit, .. } => exit.is_some(),
        };
        if !done {
            tracing::info!("sending SIGTERM to the job (process group {})", self.pid());
            self.signal_group(Signal::SIGTERM);
        }
        let exit = match tokio::time::timeout(grace, self.wait()).await {
            Ok(e) => e,
            Err(_) => {
                tracing::warn!("the job did not exit within {grace:?} of SIGTERM: sending SIGKILL");
                self.mark_killed();
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

    /// The shim's files for one test: exit record and output in a temp dir.
    fn io(d: &tempfile::TempDir) -> JobIo {
        let open = |n: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(d.path().join(n))
                .unwrap()
        };
        JobIo {
            shim: crate::test_shim::path(),
            exit_file: d.path().join("exit.json"),
            stdout: open("stdout"),
            stderr: open("stderr"),
        }
    }

    fn start(script: &str) -> (Job, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        let job = spawn(&sh(script), io(&d)).unwrap();
        (job, d)
    }

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
        let (mut job, d) =
            start("test \"$CLOUDRUN_TEST\" = yes && echo out && echo err >&2 && exit 3");
        let pid = job.pid();
        assert_eq!(
            nix::unistd::getpgid(Some(Pid::from_raw(pid)))
                .unwrap()
                .as_raw(),
            pid
        );
        let e = job.wait().await;
        assert_eq!(
            e,
            JobExit {
                code: Some(3),
                signal: None
            }
        );
        assert_eq!(e.describe(), "exit code 3");
        assert_eq!(
            std::fs::read_to_string(d.path().join("stdout")).unwrap(),
            "out\n"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("stderr")).unwrap(),
            "err\n"
        );
    }

    #[tokio::test]
    async fn the_job_outlives_its_agent_and_an_adopter_learns_its_real_exit() {
        // The agent's handle is dropped (as when the agent dies): the job keeps printing
        // to its file, and a new handle reads the exit the shim recorded.
        let (job, d) = start("for i in 1 2 3 4; do echo step $i; sleep 0.2; done; exit 5");
        let pid = job.pid();
        let ticks = proc_start_ticks(pid).unwrap();
        drop(job);
        let mut adopted = Job::adopt(pid, ticks, d.path().join("exit.json"));
        let e = adopted.wait().await;
        assert_eq!(
            e,
            JobExit {
                code: Some(5),
                signal: None
            }
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("stdout")).unwrap(),
            "step 1\nstep 2\nstep 3\nstep 4\n"
        );
    }

    #[tokio::test]
    async fn the_job_does_not_inherit_the_agents_other_descriptors() {
        // As the startup script's lock: open without close-on-exec in the agent.
        use std::os::fd::AsRawFd;
        let owned = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let fd = owned.as_raw_fd();
        let (mut job, _d) = start(&format!("test ! -e /proc/$$/fd/{fd}"));
        let e = job.wait().await;
        drop(owned);
        assert!(e.success(), "the job holds descriptor {fd}: {e:?}");
    }

    #[tokio::test]
    async fn a_job_killed_by_a_signal_is_told_from_one_that_exits_with_its_number() {
        let (mut job, _d) = start("kill -INT $$");
        assert_eq!(
            job.wait().await,
            JobExit {
                code: None,
                signal: Some(2)
            }
        );
        let (mut job, _d) = start("exit 130");
        assert_eq!(
            job.wait().await,
            JobExit {
                code: Some(130),
                signal: None
            }
        );
    }

    #[tokio::test]
    async fn terminate_kills_the_whole_group_after_the_grace_period() {
        // The shell ignores SIGTERM and so does its background child: only SIGKILL ends them.
        let (mut job, _d) = start("trap '' TERM; sleep 60 & trap '' TERM; wait");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = std::time::Instant::now();
        let e = job.terminate(Duration::from_millis(500)).await;
        assert!(t0.elapsed() >= Duration::from_millis(500));
        assert_eq!(e.signal, Some(9), "{e:?}");
        // Killed members may linger as zombies until init reaps them; none may still run.
        let mut live = vec![];
        for _ in 0..20 {
            live = running_in_group(job.pid());
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
        let (mut job, _d) = start("sleep 60");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let e = job.terminate(Duration::from_secs(10)).await;
        assert_eq!(e.signal, Some(15), "{e:?}");
        assert!(e.describe().contains("SIGTERM"), "{}", e.describe());
    }

    #[tokio::test]
    async fn an_adopted_job_is_watched_by_pid_and_start_time() {
        let (mut job, d) = start("sleep 0.5");
        let pid = job.pid();
        let ticks = proc_start_ticks(pid).unwrap();
        assert!(is_same_process_alive(pid, ticks));
        assert!(
            !is_same_process_alive(pid, ticks + 1),
            "a reused pid is not our job"
        );
        let mut adopted = Job::adopt(pid, ticks, d.path().join("exit.json"));
        let (_, e) = tokio::join!(job.wait(), adopted.wait());
        assert_eq!(
            e,
            JobExit {
                code: Some(0),
                signal: None
            }
        );
        assert!(!is_same_process_alive(pid, ticks));
        assert!(!boot_id().is_empty());
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let mut io = io(&d);
        io.shim = "/nonexistent/cloudrun-agent".into();
        let err = spawn(&sh(""), io).unwrap_err().to_string();
        assert!(err.contains("could not start"), "{err}");
        let mut job = spawn(
            &JobCommand {
                argv: vec!["/nonexistent/python3".into()],
                ..sh("")
            },
            self::io(&d),
        )
        .unwrap();
        assert_eq!(
            job.wait().await.code,
            Some(crate::shim::SPAWN_FAILED_EXIT_CODE)
        );
        let said = std::fs::read_to_string(d.path().join("stderr")).unwrap();
        assert!(said.contains("/nonexistent/python3"), "{said}");
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
        let mut job = spawn(
            &JobCommand {
                run_as: Some(u.clone()),
                ..sh(&format!(
                    "id -u > {0}; id -g >> {0}; echo $HOME >> {0}",
                    out.display()
                ))
            },
            io(&d),
        )
        .unwrap();
        assert!(job.wait().await.success());
        let text = std::fs::read_to_string(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], u.uid.to_string());
        assert_eq!(lines[1], u.gid.to_string());
        assert_eq!(lines[2], u.home.display().to_string());
    }
}
