//! Running the real `cloudrun-launch` binary with a fully controlled environment: the
//! environment is cleared and only what the test names is set, so no test can pick up the
//! developer's credentials, reach Google or the metadata server, or mutate the test
//! process's own environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest one launcher invocation may take in a test (a loaded 2-core machine, a debug
/// build, `--follow` polling every 2 s): generous, since it only bounds a hang.
pub const LAUNCHER_TIMEOUT_SECS: u64 = 180;

/// What an invocation produced.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A sandbox for invocations: `home/` (empty unless a test writes into it) and `bin/`
/// (the whole `PATH`: only what a test puts there, e.g. a fake gcloud).
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn home(&self) -> PathBuf {
        self.path().join("home")
    }

    pub fn bin(&self) -> PathBuf {
        self.path().join("bin")
    }

    /// Run `cloudrun-launch ARGS` in `cwd` with `HOME`, `PATH` and
    /// `GOOGLE_APPLICATION_CREDENTIALS` (empty) set explicitly, plus `env`.
    pub async fn run(&self, cwd: &Path, env: &[(&str, String)], args: &[&str]) -> Ran {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloudrun-launch"));
        cmd.args(args)
            .current_dir(cwd)
            .env_clear()
            .env("HOME", self.home())
            .env("PATH", self.bin())
            .env("GOOGLE_APPLICATION_CREDENTIALS", "")
            .env("USER", "tester")
            .env("HOSTNAME", "testbox")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(Duration::from_secs(LAUNCHER_TIMEOUT_SECS), cmd.output())
            .await
            .unwrap_or_else(|_| {
                panic!("cloudrun-launch {args:?} ran over {LAUNCHER_TIMEOUT_SECS} s")
            })
            .unwrap();
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
