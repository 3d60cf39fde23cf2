//! A closed stdout ends the command promptly and quietly, as `head` users expect:
//! `cloudrun-launch status | head` and `cloudrun-launch logs -f RUN | grep -q -m1 x` must
//! neither print an error nor keep running ("retrying until the store answers again")
//! after the reader has gone. Real binary, a local-directory store, stdout a pipe whose
//! read end is closed before the launcher writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use cloudrun::status::{Phase, RunStatus};
use cloudrun::storage::local::LocalStorage;
use cloudrun::{Layout, PutOptions, RunId, Storage};
use common::bin::LAUNCHER_TIMEOUT_SECS;

const RUN: &str = "20261126-070000-0004";

/// A store with one running run (never ending) that has printed a few log chunks.
async fn seed(store: &std::path::Path) {
    let st = LocalStorage::new(store);
    let l = Layout::new("");
    let id = RunId::parse(RUN).unwrap();
    let mut s = RunStatus::launching(id.clone(), Utc::now(), 1.0);
    s.phase = Phase::Running;
    s.agent_started_at = Some(Utc::now());
    let put = PutOptions::default();
    st.put_bytes(&l.status(&id), Bytes::from(s.to_json()), &put)
        .await
        .unwrap();
    for i in 1..=3 {
        st.put_bytes(
            &l.log_chunk(&id, i),
            Bytes::from(format!("epoch {i}\n").repeat(200)),
            &put,
        )
        .await
        .unwrap();
    }
}

/// Run the launcher with its stdout's read end closed at once; wait (bounded) for it to
/// end. Returns the exit code (None: still running at the bound, then killed), stderr.
fn run_with_closed_stdout(store: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudrun-launch"))
        .args(args)
        .env_clear()
        .env("HOME", home.path())
        .env("GCS_DIR", format!("file://{}", store.display()))
        .current_dir(home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let deadline = Instant::now() + Duration::from_secs(LAUNCHER_TIMEOUT_SECS);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (code, err)
}

#[tokio::test]
async fn status_into_a_closed_pipe_ends_quietly() {
    let store = tempfile::tempdir().unwrap();
    seed(store.path()).await;
    for args in [&["status"][..], &["status", RUN], &["logs", RUN], &["ls"]] {
        let (code, stderr) = run_with_closed_stdout(store.path(), args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("error") && !stderr.contains("Broken pipe"),
            "{args:?} complained about the closed pipe: {stderr}"
        );
    }
}

#[tokio::test]
async fn following_logs_into_a_closed_pipe_ends_instead_of_retrying() {
    let store = tempfile::tempdir().unwrap();
    seed(store.path()).await;
    let (code, stderr) = run_with_closed_stdout(store.path(), &["logs", "-f", RUN]);
    assert!(
        code.is_some(),
        "logs -f kept running for {LAUNCHER_TIMEOUT_SECS} s after its reader left: {stderr}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
}
