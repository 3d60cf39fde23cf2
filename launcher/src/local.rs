//! The local "VM" of `--local` runs: per-run folders under the user's data dir, the
//! detached `cloudrun-agent` (its own session, surviving the terminal and the launcher),
//! and the record that lets `status`, `ls`, `stop` and `sweep` tell whether it still runs,
//! as the Compute API tells them for a cloud VM.
//!
//! Layout under the data dir (`~/.local/share/cloudrun`):
//!
//! ```text
//! store/                      the default store (the same object layout as a bucket)
//! local/<run>/spec.json       the spec the agent reads (`--spec`)
//! local/<run>/work/           where the agent pulls the code and runs the job
//! local/<run>/state/          the agent's restart state and job log
//! local/<run>/agent.log       the agent's stdout and stderr
//! local/<run>/vm.json         pid, start time and boot of the agent ([`AgentRecord`])
//! local/locks/<project>.lock  held by a launch from its check to its record ([`LaunchLock`])
//! ```
//!
//! Linux only, like the agent: liveness reads `/proc`. Nothing here touches the store.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::{DateTime, Utc};
use cloudrun::RunId;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Folder of the data dir holding one folder per local run.
pub const RUNS_SUBDIR: &str = "local";
/// The program that starts the agent in a new session (util-linux). The launcher's child
/// is never a process-group leader, so `setsid` calls setsid(2) and execs the agent in
/// place: the pid the launcher sees is the agent's, which is also its session and group id.
pub const SETSID_PROGRAM: &str = "setsid";
/// How long to wait for a killed agent's session to disappear, in milliseconds.
pub const KILL_WAIT_MILLIS: u64 = 3_000;
/// Poll interval while waiting for a killed session, in milliseconds.
const KILL_POLL_MILLIS: u64 = 50;
/// Folder under `local/` holding one lock file per project folder.
pub const LOCKS_SUBDIR: &str = "locks";

/// Why a local "VM" could not be started, found or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("creating {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the agent {agent} through `{SETSID_PROGRAM}` (util-linux; install it, e.g. apt-get install util-linux): {source}")]
    Spawn {
        agent: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent exited at once (see {log}): {status}")]
    ExitedAtOnce {
        log: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("signalling the agent's session {sid}: {source}")]
    Kill {
        sid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("locking {path} (one launch of a project folder at a time): {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive `flock` on the project folder's lock file, held by a local launch from
/// its "is a run of this folder still live?" check until the new agent's record is
/// written, so that two launches started at the same moment cannot both pass the check.
/// The kernel drops it when the launcher exits, crashed or not: no stale lock remains.
#[derive(Debug)]
pub struct LaunchLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
    pub path: PathBuf,
}

/// Take the launch lock of `project_dir` (named by a hash of its canonical path).
/// When another launch holds it, `waiting` is called once, then this blocks until it is
/// released (that launch has then written its record, which the caller checks next).
pub fn lock_project(
    data_dir: &Path,
    project_dir: &Path,
    waiting: impl FnOnce(),
) -> Result<LaunchLock, LocalError> {
    use nix::fcntl::{Flock, FlockArg};
    use sha2::Digest;
    let key = crate::plan::project_key(project_dir);
    let name = hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16]);
    let dir = data_dir.join(RUNS_SUBDIR).join(LOCKS_SUBDIR);
    let path = dir.join(format!("{name}.lock"));
    let lock_err = |source: std::io::Error| LocalError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(lock_err)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            waiting();
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| lock_err(std::io::Error::from(e)))?
        }
        Err((_, e)) => return Err(lock_err(std::io::Error::from(e))),
    };
    Ok(LaunchLock { _lock: lock, path })
}

/// The folders and files of one local run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDirs {
    pub root: PathBuf,
    pub spec: PathBuf,
    pub work: PathBuf,
    pub state: PathBuf,
    pub agent_log: PathBuf,
    pub record: PathBuf,
}

impl RunDirs {
    pub fn new(data_dir: &Path, run: &RunId) -> Self {
        let root = data_dir.join(RUNS_SUBDIR).join(run.as_str());
        RunDirs {
            spec: root.join("spec.json"),
            work: root.join("work"),
            state: root.join("state"),
            agent_log: root.join("agent.log"),
            record: root.join("vm.json"),
            root,
        }
    }
}

/// What the launcher recorded about a local agent it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub run_id: RunId,
    /// The agent's pid, also its session and process-group id.
    pub pid: i32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22), so a
    /// reused pid is not mistaken for it.
    pub start_ticks: u64,
    /// `/proc/sys/kernel/random/boot_id` when it started: after a reboot it is gone.
    pub boot_id: String,
    pub started_at: DateTime<Utc>,
    /// The project folder it runs (for the one-live-run-per-project check).
    pub project_dir: PathBuf,
    pub store: String,
    pub agent_log: PathBuf,
}

impl AgentRecord {
    /// Whether this very agent process still runs.
    pub fn alive(&self) -> bool {
        boot_id() == self.boot_id && proc_start_ticks(self.pid) == Some(self.start_ticks)
    }

    /// `pid N, running` / `pid N, exited`, for `status` and `ls`.
    pub fn describe(&self) -> String {
        format!(
            "local agent pid {}: {}",
            self.pid,
            if self.alive() { "running" } else { "exited" }
        )
    }
}

/// The record of `run` under `data_dir`, if this machine started it.
pub fn record_for(data_dir: &Path, run: &RunId) -> Option<AgentRecord> {
    let text = std::fs::read_to_string(RunDirs::new(data_dir, run).record).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every record under `data_dir` (unreadable ones skipped), oldest first.
pub fn records(data_dir: &Path) -> Vec<AgentRecord> {
    let Ok(entries) = std::fs::read_dir(data_dir.join(RUNS_SUBDIR)) else {
        return Vec::new();
    };
    let mut out: Vec<AgentRecord> = entries
        .flatten()
        .filter_map(|e| RunId::parse(&e.file_name().to_string_lossy()).ok())
        .filter_map(|id| record_for(data_dir, &id))
        .collect();
    out.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    out
}

/// A local run of `project_dir` whose agent still runs: a second one is refused, since
/// both would mirror into the same project's outputs.
pub fn live_run_in(data_dir: &Path, project_dir: &Path) -> Option<AgentRecord> {
    let want = project_dir
        .canonicalize()
        .unwrap_or_else(|_| project_dir.to_path_buf());
    records(data_dir).into_iter().find(|r| {
        let dir = r
            .project_dir
            .canonicalize()
            .unwrap_or_else(|_| r.project_dir.clone());
        dir == want && r.alive()
    })
}

/// Start `agent --spec … --work-dir … --state-dir … --no-console` in a new session, with
/// no terminal, its output going to `agent.log`, and record it. The caller has written
/// the spec file.
pub fn spawn_agent(
    agent: &Path,
    dirs: &RunDirs,
    run: &RunId,
    project_dir: &Path,
    store: &str,
    now: DateTime<Utc>,
) -> Result<AgentRecord, LocalError> {
    for d in [&dirs.work, &dirs.state] {
        std::fs::create_dir_all(d).map_err(|source| LocalError::Dir {
            path: d.clone(),
            source,
        })?;
    }
    let log = std::fs::File::create(&dirs.agent_log).map_err(|source| LocalError::Write {
        path: dirs.agent_log.clone(),
        source,
    })?;
    let log2 = log.try_clone().map_err(|source| LocalError::Write {
        path: dirs.agent_log.clone(),
        source,
    })?;
    let mut child = Command::new(SETSID_PROGRAM)
        .arg(agent)
        .arg("--spec")
        .arg(&dirs.spec)
        .arg("--work-dir")
        .arg(&dirs.work)
        .arg("--state-dir")
        .arg(&dirs.state)
        .arg("--no-console")
        .current_dir(&dirs.root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|source| LocalError::Spawn {
            agent: agent.to_path_buf(),
            source,
        })?;
    let pid = child.id() as i32;
    // The child is reaped by a thread so that it does not linger as a zombie while the
    // launcher follows it; when the launcher exits first, init adopts it.
    let start_ticks = proc_start_ticks(pid);
    let early = child.try_wait().ok().flatten();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    let start_ticks = match (start_ticks, early) {
        (_, Some(status)) => {
            return Err(LocalError::ExitedAtOnce {
                log: dirs.agent_log.clone(),
                status,
            })
        }
        (Some(t), None) => t,
        // Exited and already reaped between spawn and the read: report what the log says.
        (None, None) => 0,
    };
    let record = AgentRecord {
        run_id: run.clone(),
        pid,
        start_ticks,
        boot_id: boot_id(),
        started_at: now,
        project_dir: project_dir.to_path_buf(),
        store: store.to_string(),
        agent_log: dirs.agent_log.clone(),
    };
    let tmp = dirs.record.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&record).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, &dirs.record))
        .map_err(|source| LocalError::Write {
            path: dirs.record.clone(),
            source,
        })?;
    Ok(record)
}

/// SIGKILL every process group in the agent's session (the agent's own and the job's,
/// which the agent put in a group of its own), then wait briefly for them to go.
/// Returns how many groups were signalled; 0 when the agent was already gone.
pub fn kill_session(record: &AgentRecord) -> Result<usize, LocalError> {
    if !record.alive() {
        return Ok(0);
    }
    let sid = record.pid;
    let groups = session_groups(sid);
    let mut n = 0;
    for g in &groups {
        match killpg(Pid::from_raw(*g), Signal::SIGKILL) {
            Ok(()) => n += 1,
            Err(nix::errno::Errno::ESRCH) => {}
            Err(source) => return Err(LocalError::Kill { sid, source }),
        }
    }
    let waited = std::time::Instant::now();
    while !session_groups(sid).is_empty()
        && waited.elapsed() < std::time::Duration::from_millis(KILL_WAIT_MILLIS)
    {
        std::thread::sleep(std::time::Duration::from_millis(KILL_POLL_MILLIS));
    }
    Ok(n)
}

/// SIGKILL what is left of a dead agent's session (its job, still training with no one
/// to ship its output or end it). Safe against pid reuse: Linux does not reuse a pid while
/// a session or group of that id exists, so if the pid now names another process, the
/// session is gone; after a reboot (another boot id) nothing of it can be left.
/// Returns how many groups were signalled.
pub fn kill_leftovers(record: &AgentRecord) -> Result<usize, LocalError> {
    if record.alive() {
        return kill_session(record);
    }
    let reused = proc_start_ticks(record.pid).is_some_and(|t| t != record.start_ticks);
    if boot_id() != record.boot_id || reused {
        return Ok(0);
    }
    let sid = record.pid;
    let mut n = 0;
    for g in session_groups(sid) {
        match killpg(Pid::from_raw(g), Signal::SIGKILL) {
            Ok(()) => n += 1,
            Err(nix::errno::Errno::ESRCH) => {}
            Err(source) => return Err(LocalError::Kill { sid, source }),
        }
    }
    Ok(n)
}

/// The distinct process groups of live (non-zombie) processes in session `sid`.
fn session_groups(sid: i32) -> Vec<i32> {
    let mut groups = std::collections::BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some(f) = cloudrun::procfs::stat_fields(pid) {
            // Fields after the command: state, ppid, pgrp, session.
            let (state, pgrp, session) = (f.first(), f.get(2), f.get(3));
            if state != Some(&"Z".to_string()) && session.and_then(|s| s.parse().ok()) == Some(sid)
            {
                if let Some(g) = pgrp.and_then(|g| g.parse::<i32>().ok()) {
                    groups.insert(g);
                }
            }
        }
    }
    groups.into_iter().collect()
}

use cloudrun::procfs::boot_id;
pub use cloudrun::procfs::proc_start_ticks;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let ticks = proc_start_ticks(me).unwrap();
        let mut r = AgentRecord {
            run_id: RunId::parse("20261126-071500-ab12").unwrap(),
            pid: me,
            start_ticks: ticks,
            boot_id: boot_id(),
            started_at: Utc::now(),
            project_dir: "/p".into(),
            store: "file:///s".into(),
            agent_log: "/l".into(),
        };
        assert!(r.alive());
        r.start_ticks += 1;
        assert!(!r.alive(), "a reused pid is not the agent");
    }

    #[test]
    fn run_dirs_sit_under_the_data_dir() {
        let id = RunId::parse("20261126-071500-ab12").unwrap();
        let d = RunDirs::new(Path::new("/d"), &id);
        assert_eq!(d.spec, Path::new("/d/local/20261126-071500-ab12/spec.json"));
        assert_eq!(d.work, Path::new("/d/local/20261126-071500-ab12/work"));
    }
}
