//! The job shim: the small parent that holds the job for the agent, so that the job's
//! life and its exit code do not depend on the agent's.
//!
//! `cloudrun-agent job-shim --exit-file FILE [--uid U --gid G --groups G,…] -- ARGV…` is
//! started by the agent as the leader of a new process group, with the job's working
//! directory, environment and output files (stdout and stderr are files the agent tails,
//! never pipes, so a dead agent cannot make the job's next print fail). The shim starts
//! ARGV in the same group (as the given user: supplementary groups, gid, then uid),
//! waits for it, writes its exit code or signal to FILE atomically, and exits with the
//! same code (128 + the signal for a signalled job).
//!
//! The shim survives the agent: a restarted agent adopts the running group by the shim's
//! pid and start time, and learns the job's real exit from FILE when the shim is gone.
//! Signals to the group reach the job; the shim itself shrugs off SIGTERM, SIGINT,
//! SIGHUP and SIGQUIT (through a handler, which `exec` resets, so the job keeps the
//! default actions) to stay and record the exit; SIGKILL ends it with the rest of the
//! group, and then FILE is missing and the agent reports what it sent.
//!
//! It runs before any async runtime exists and opens nothing of the agent's (no console,
//! no store): a few system calls and one small file. Descriptors it inherited beyond
//! stdin, stdout and stderr are closed first, so neither it nor the job holds anything
//! of the agent's (or of the script that started the agent) while the job runs.

use std::path::{Path, PathBuf};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

/// The agent's subcommand that runs the shim.
pub const SHIM_SUBCOMMAND: &str = "job-shim";
/// The shim's exit code when the job could not be started (as a shell's "not found").
pub const SPAWN_FAILED_EXIT_CODE: i32 = 127;

/// What the shim writes to its exit file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The job's pid (not the shim's).
    pub pid: i32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the job could not be started, when it could not (`code` is then
    /// [`SPAWN_FAILED_EXIT_CODE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_error: Option<String>,
}

/// The user the job runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// The shim's command line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    pub exit_file: PathBuf,
    pub user: Option<ShimUser>,
    pub argv: Vec<String>,
}

/// Why the shim's command line is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShimArgsError {
    #[error("job-shim: {0} (usage: job-shim --exit-file FILE [--uid U --gid G --groups G,...] -- ARGV...)")]
    Usage(String),
}

impl ShimArgs {
    /// The arguments after the subcommand, as [`ShimArgs::to_args`] wrote them.
    pub fn parse(args: &[String]) -> Result<ShimArgs, ShimArgsError> {
        let bad = |m: &str| ShimArgsError::Usage(m.to_string());
        let mut exit_file = None;
        let (mut uid, mut gid, mut groups) = (None, None, Vec::new());
        let mut it = args.iter();
        let num = |v: Option<&String>, what: &str| -> Result<u32, ShimArgsError> {
            v.and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(&format!("{what} needs a number")))
        };
        loop {
            match it.next().map(String::as_str) {
                Some("--exit-file") => {
                    exit_file = Some(PathBuf::from(
                        it.next().ok_or_else(|| bad("--exit-file needs a path"))?,
                    ))
                }
                Some("--uid") => uid = Some(num(it.next(), "--uid")?),
                Some("--gid") => gid = Some(num(it.next(), "--gid")?),
                Some("--groups") => {
                    let list = it.next().ok_or_else(|| bad("--groups needs a list"))?;
                    groups = list
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.parse().map_err(|_| bad("--groups needs numbers")))
                        .collect::<Result<_, _>>()?;
                }
                Some("--") => break,
                Some(other) => return Err(bad(&format!("unexpected argument {other:?}"))),
                None => return Err(bad("no -- before the job's command")),
            }
        }
        let argv: Vec<String> = it.cloned().collect();
        if argv.is_empty() {
            return Err(bad("no command after --"));
        }
        let user = match (uid, gid) {
            (Some(uid), Some(gid)) => Some(ShimUser { uid, gid, groups }),
            (None, None) => None,
            _ => return Err(bad("--uid and --gid go together")),
        };
        Ok(ShimArgs {
            exit_file: exit_file.ok_or_else(|| bad("--exit-file is required"))?,
            user,
            argv,
        })
    }

    /// The arguments that [`ShimArgs::parse`] reads back (after the subcommand).
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--exit-file".to_string(),
            self.exit_file.display().to_string(),
        ];
        if let Some(u) = &self.user {
            a.extend([
                "--uid".into(),
                u.uid.to_string(),
                "--gid".into(),
                u.gid.to_string(),
                "--groups".into(),
                u.groups
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ]);
        }
        a.push("--".into());
        a.extend(self.argv.iter().cloned());
        a
    }
}

/// Read the exit file a shim wrote; `None` when it is missing or damaged.
pub fn read_exit(path: &Path) -> Option<ExitRecord> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

extern "C" fn ignore_signal(_: nix::libc::c_int) {}

/// Keep the shim alive through the group signals meant for the job.
fn shrug_off_signals() {
    let act = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: the handler does nothing (async-signal-safe by construction), and the
        // shim is single-threaded here; `exec` in the child resets it to the default.
        #[allow(unsafe_code)]
        unsafe {
            let _ = sigaction(sig, &act);
        }
    }
}

/// Start the job, wait for it, and return what happened (without writing anything).
pub fn supervise(args: &ShimArgs) -> ExitRecord {
    let mut cmd = std::process::Command::new(&args.argv[0]);
    cmd.args(&args.argv[1..]);
    if let Some(u) = &args.user {
        let groups: Vec<Gid> = u.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        let (uid, gid) = (Uid::from_raw(u.uid), Gid::from_raw(u.gid));
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe work is allowed: three system calls (setgroups, setgid,
        // setuid) on values computed in the parent and moved in; it allocates nothing.
        #[allow(unsafe_code)]
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                Ok(())
            });
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ExitRecord {
                pid: 0,
                code: Some(SPAWN_FAILED_EXIT_CODE),
                signal: None,
                spawn_error: Some(format!(
                    "could not start {:?}: {e}",
                    args.argv.first().cloned().unwrap_or_default()
                )),
            }
        }
    };
    let pid = child.id() as i32;
    match child.wait() {
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            ExitRecord {
                pid,
                code: st.code(),
                signal: st.signal(),
                spawn_error: None,
            }
        }
        Err(e) => ExitRecord {
            pid,
            code: None,
            signal: None,
            spawn_error: Some(format!("waiting for the job: {e}")),
        },
    }
}

/// Write `rec` to `path` atomically.
pub fn write_exit(path: &Path, rec: &ExitRecord) -> std::io::Result<()> {
    crate::transfer::save_json(path, rec)
}

/// Close every descriptor above stderr that the shim inherited (a lock the startup script
/// holds, say): the shim and the job outlive the agent, and a descriptor they kept open
/// would hold whatever it holds for as long as the job runs.
fn close_inherited_fds() {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    // The listing's own descriptor is closed by now; closing it again is harmless.
    for fd in fds {
        let _ = nix::unistd::close(fd);
    }
}

/// The shim's whole life; returns its exit code.
pub fn run(args: &ShimArgs) -> i32 {
    close_inherited_fds();
    shrug_off_signals();
    let rec = supervise(args);
    if let Err(e) = write_exit(&args.exit_file, &rec) {
        eprintln!(
            "cloudrun job-shim: could not record the job's exit in {}: {e}",
            args.exit_file.display()
        );
    }
    if let Some(e) = &rec.spawn_error {
        eprintln!("cloudrun job-shim: {e}");
    }
    match (rec.code, rec.signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => SPAWN_FAILED_EXIT_CODE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> ShimArgs {
        ShimArgs {
            exit_file: PathBuf::from("/tmp/x/exit.json"),
            user: None,
            argv: argv.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_command_line_round_trips_and_bad_ones_say_why() {
        let mut a = args(&["python3", "main.py", "--", "-x"]);
        assert_eq!(ShimArgs::parse(&a.to_args()).unwrap(), a);
        a.user = Some(ShimUser {
            uid: 1001,
            gid: 1002,
            groups: vec![1002, 27],
        });
        assert_eq!(ShimArgs::parse(&a.to_args()).unwrap(), a);
        a.user = Some(ShimUser {
            uid: 1,
            gid: 1,
            groups: vec![],
        });
        assert_eq!(ShimArgs::parse(&a.to_args()).unwrap(), a);
        let e = ShimArgs::parse(&["--exit-file".into(), "f".into()]).unwrap_err();
        assert!(e.to_string().contains("no -- before"), "{e}");
        let e =
            ShimArgs::parse(&["--uid".into(), "1".into(), "--".into(), "x".into()]).unwrap_err();
        assert!(e.to_string().contains("go together"), "{e}");
    }

    #[test]
    fn the_exit_code_and_the_signal_are_recorded_exactly() {
        let r = supervise(&args(&["sh", "-c", "exit 143"]));
        assert_eq!((r.code, r.signal), (Some(143), None));
        assert!(r.pid > 0);
        let r = supervise(&args(&["sh", "-c", "kill -TERM $$"]));
        assert_eq!((r.code, r.signal), (None, Some(15)));
        let r = supervise(&args(&["/nonexistent/python3"]));
        assert!(r.spawn_error.unwrap().contains("/nonexistent/python3"));
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("exit.json");
        let rec = ExitRecord {
            pid: 7,
            code: Some(3),
            signal: None,
            spawn_error: None,
        };
        write_exit(&f, &rec).unwrap();
        assert_eq!(read_exit(&f), Some(rec));
        std::fs::write(&f, "{half").unwrap();
        assert_eq!(read_exit(&f), None);
    }
}
