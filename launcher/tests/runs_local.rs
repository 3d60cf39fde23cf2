//! `status`, `logs`, `pull`, `stop` and `report` through the real dispatcher against
//! runs in every phase, written into a local-directory store (`GCS_DIR=file:///…`), with
//! no project set (so no Compute calls). The same paths run against fake-gcs-server in
//! the whole-flow tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use clap::Parser;
use cloudrun::status::{EndInfo, EndReason, GpuReading, GpuSample, Phase, RunStatus, StopRequest};
use cloudrun::storage::local::LocalStorage;
use cloudrun::{Layout, PutOptions, RunId, Storage};
use cloudrun_launch::cli::Cli;
use cloudrun_launch::runs::{self, Store};
use cloudrun_launch::{run, Context};

const PHASES: [(&str, Phase); 6] = [
    ("20261126-070000-0001", Phase::Launching),
    ("20261126-070000-0002", Phase::Pulling),
    ("20261126-070000-0003", Phase::Setup),
    ("20261126-070000-0004", Phase::Running),
    ("20261126-070000-0005", Phase::Stopping),
    ("20261126-070000-0006", Phase::Ended),
];

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

async fn put(st: &dyn Storage, key: &str, data: impl Into<Vec<u8>>) {
    st.put_bytes(key, Bytes::from(data.into()), &PutOptions::default())
        .await
        .unwrap();
}

/// A store with one run per phase; the ended one has logs, metrics and outputs.
async fn seed(root: &Path) -> Arc<LocalStorage> {
    let st = Arc::new(LocalStorage::new(root));
    let l = Layout::new("");
    for (id, phase) in PHASES {
        let id = RunId::parse(id).unwrap();
        let mut s = RunStatus::launching(id.clone(), t("2026-11-26T07:00:00Z"), 3.6);
        s.phase = phase;
        s.updated_at = Utc::now();
        if phase != Phase::Launching {
            s.agent_started_at = Some(t("2026-11-26T07:01:00Z"));
        }
        if phase == Phase::Ended {
            s.ended_at = Some(t("2026-11-26T07:11:00Z"));
            s.end = Some(EndInfo {
                reason: EndReason::GpuIdle,
                exit_code: None,
                signal: Some(15),
                message: "idle 10 min".into(),
            });
            s.cost_usd = 0.6;
        }
        put(st.as_ref(), &l.status(&id), s.to_json()).await;
        put(st.as_ref(), &l.log_chunk(&id, 1), "epoch 1\n").await;
        put(st.as_ref(), &l.log_chunk(&id, 2), "epoch 2\n").await;
        put(st.as_ref(), &l.log_chunk(&id, 10), "done\n").await;
        let samples: Vec<String> = (0..5)
            .map(|i| {
                serde_json::to_string(&GpuSample {
                    at: t("2026-11-26T07:02:00Z") + chrono::Duration::seconds(60 * i),
                    gpus: vec![GpuReading {
                        index: 0,
                        util_gpu_pct: Some(20.0 * i as f64),
                        ..GpuReading::default()
                    }],
                    error: None,
                })
                .unwrap()
            })
            .collect();
        put(
            st.as_ref(),
            &l.metrics_chunk(&id, 0),
            samples.join("\n") + "\n",
        )
        .await;
        put(
            st.as_ref(),
            &format!("{}checkpoint/epoch2.pt", l.outputs_prefix(&id)),
            "weights",
        )
        .await;
    }
    st
}

async fn cmd(root: &Path, cwd: &Path, args: &[&str]) -> (i32, String) {
    let store = format!("file://{}", root.display());
    let env = move |k: &str| match k {
        "GCS_DIR" => Some(store.clone()),
        "HOME" => Some("/nonexistent-home".into()),
        _ => None,
    };
    let ctx = Context {
        env: &env,
        cwd: cwd.to_path_buf(),
        default_agent: None,
        tokens: None,
        progress: false,
    };
    let mut argv = vec!["cloudrun-launch"];
    argv.extend_from_slice(args);
    let mut out = Vec::new();
    let code = run(Cli::try_parse_from(argv).unwrap(), &ctx, &mut out)
        .await
        .unwrap();
    (code, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn status_shows_every_phase_and_one_run_in_detail() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path()).await;
    let (code, out) = cmd(dir.path(), dir.path(), &["status"]).await;
    assert_eq!(code, 0);
    for (id, _) in PHASES {
        assert!(out.contains(id), "{out}");
    }
    for phase in [
        "launching",
        "pulling",
        "setup",
        "running",
        "stopping",
        "ended",
    ] {
        assert!(out.contains(phase), "{phase}: {out}");
    }
    assert!(out.contains("GPU idle") && out.contains("$0.60"), "{out}");

    let (_, json) = cmd(dir.path(), dir.path(), &["status", "--json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 6);
    assert_eq!(rows[5]["end_reason"], "gpu_idle");

    let (_, one) = cmd(dir.path(), dir.path(), &["status", "latest"]).await;
    assert!(
        one.contains("20261126-070000-0006") && one.contains("end      GPU idle: idle 10 min"),
        "{one}"
    );
    assert!(one.contains("gpu util ▁▂▄▅▇"), "{one}");
}

#[tokio::test]
async fn logs_print_the_chunks_in_order() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path()).await;
    for (id, _) in PHASES {
        let (code, out) = cmd(dir.path(), dir.path(), &["logs", id]).await;
        assert_eq!((code, out.as_str()), (0, "epoch 1\nepoch 2\ndone\n"));
    }
    let (code, out) = cmd(
        dir.path(),
        dir.path(),
        &["logs", "-f", "20261126-070000-0006"],
    )
    .await;
    assert_eq!(code, EndReason::GpuIdle.exit_code());
    assert_eq!(out, "epoch 1\nepoch 2\ndone\n");
}

#[tokio::test]
async fn logs_follow_picks_up_new_chunks_until_the_run_ends() {
    let dir = tempfile::tempdir().unwrap();
    let st = seed(dir.path()).await;
    let store = Store {
        storage: st.clone(),
        layout: Layout::new(""),
    };
    let id = RunId::parse("20261126-070000-0004").unwrap();
    let writer = {
        let st = st.clone();
        let id = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let l = Layout::new("");
            put(st.as_ref(), &l.log_chunk(&id, 11), "late line\n").await;
            let mut s = RunStatus::launching(id.clone(), Utc::now(), 1.0);
            s.phase = Phase::Ended;
            s.end = Some(EndInfo {
                reason: EndReason::Succeeded,
                exit_code: Some(0),
                signal: None,
                message: String::new(),
            });
            put(st.as_ref(), &l.log_chunk(&id, 12), "last line\n").await;
            put(st.as_ref(), &l.status(&id), s.to_json()).await;
        })
    };
    let mut out = Vec::new();
    let end = runs::logs(&store, &id, true, Duration::from_millis(20), &mut out)
        .await
        .unwrap();
    writer.await.unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "epoch 1\nepoch 2\ndone\nlate line\nlast line\n"
    );
    assert_eq!(end.unwrap().end.unwrap().reason, EndReason::Succeeded);
}

#[tokio::test]
async fn pull_brings_outputs_into_the_project_and_only_changed_files_again() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path().join("bucket").as_path()).await;
    let proj = dir.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let bucket = dir.path().join("bucket");
    let (code, out) = cmd(&bucket, &proj, &["pull", "20261126-070000-0006"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(proj.join("checkpoint/epoch2.pt")).unwrap(),
        "weights"
    );
    assert!(out.contains("pulled 1 file(s)"), "{out}");
    let (_, again) = cmd(&bucket, &proj, &["pull", "20261126-070000-0006"]).await;
    assert!(
        again.contains("pulled 0 file(s), 0 bytes; 1 unchanged"),
        "{again}"
    );
    let into = dir.path().join("elsewhere");
    cmd(
        &bucket,
        &proj,
        &["pull", "latest", "--into", into.to_str().unwrap()],
    )
    .await;
    assert!(into.join("checkpoint/epoch2.pt").is_file());
}

#[tokio::test]
async fn stop_writes_the_request_the_agent_polls_for() {
    let dir = tempfile::tempdir().unwrap();
    let st = seed(dir.path()).await;
    let (code, out) = cmd(dir.path(), dir.path(), &["stop", "20261126-070000-0004"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("asked run 20261126-070000-0004 to stop"),
        "{out}"
    );
    let id = RunId::parse("20261126-070000-0004").unwrap();
    let req: StopRequest = serde_json::from_slice(
        &st.get_bytes(&Layout::new("").stop_request(&id))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(req.message.as_deref(), Some("stop"));

    let (_, out) = cmd(dir.path(), dir.path(), &["stop", "20261126-070000-0006"]).await;
    assert!(out.contains("already ended"), "{out}");
    let ended = RunId::parse("20261126-070000-0006").unwrap();
    assert!(st
        .head(&Layout::new("").stop_request(&ended))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn report_writes_an_svg() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path()).await;
    let svg = dir.path().join("r.svg");
    let (_, out) = cmd(
        dir.path(),
        dir.path(),
        &["report", "latest", "--out", svg.to_str().unwrap()],
    )
    .await;
    assert!(out.contains("r.svg"));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.contains("cumulative cost"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unknown_run_says_how_to_list_runs() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path()).await;
    let store = format!("file://{}", dir.path().display());
    let env = move |k: &str| (k == "GCS_DIR").then(|| store.clone());
    let ctx = Context {
        env: &env,
        cwd: dir.path().into(),
        default_agent: None,
        tokens: None,
        progress: false,
    };
    let mut out = Vec::new();
    let err = run(
        Cli::try_parse_from(["cloudrun-launch", "logs", "20991231-000000-ffff"]).unwrap(),
        &ctx,
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cloudrun-launch status"), "{err}");
    let err = run(
        Cli::try_parse_from(["cloudrun-launch", "status", "nope"]).unwrap(),
        &ctx,
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("is not a run id"), "{err}");
}
