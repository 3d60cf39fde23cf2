//! `status`, `logs`, `pull`, `stop` and `report` through the real dispatcher against runs
//! in every phase, written into a store. Each scenario takes a [`Backend`], so the same
//! assertions run against a local directory (`runs_local.rs`) and fake-gcs-server
//! (`runs_fake_gcs.rs`). No project is set, so no Compute calls are made.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudrun::status::{EndInfo, EndReason, GpuReading, GpuSample, Phase, RunStatus, StopRequest};
use cloudrun::{Layout, PutOptions, RunId, Storage};
use cloudrun_launch::runs::{self, Store};

use super::inproc::Invoker;

pub const PHASES: [(&str, Phase); 6] = [
    ("20261126-070000-0001", Phase::Launching),
    ("20261126-070000-0002", Phase::Pulling),
    ("20261126-070000-0003", Phase::Setup),
    ("20261126-070000-0004", Phase::Running),
    ("20261126-070000-0005", Phase::Stopping),
    ("20261126-070000-0006", Phase::Ended),
];

/// A store the scenarios write into directly and the launcher reads through `GCS_DIR`.
pub struct Backend {
    pub storage: Arc<dyn Storage>,
    pub layout: Layout,
    /// `GCS_DIR` for the launcher.
    pub gcs_dir: String,
    /// More environment for the launcher (`STORAGE_EMULATOR_HOST`).
    pub env: Vec<(String, String)>,
    /// What must live as long as the store (an emulator, a temporary directory).
    pub _keep: Box<dyn std::any::Any>,
}

impl Backend {
    pub fn invoker(&self, cwd: &Path) -> Invoker {
        let mut inv = Invoker::new(&self.gcs_dir, cwd);
        for (k, v) in &self.env {
            inv = inv.set(k, v.clone());
        }
        inv
    }

    fn store(&self) -> Store {
        Store {
            storage: self.storage.clone(),
            layout: self.layout.clone(),
        }
    }
}

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

pub async fn put(st: &dyn Storage, key: &str, data: impl Into<Vec<u8>>) {
    st.put_bytes(key, Bytes::from(data.into()), &PutOptions::default())
        .await
        .unwrap();
}

/// The spec of a run launched from the project folder `from`.
pub fn spec_from(b: &Backend, id: &RunId, from: &Path) -> String {
    serde_json::json!({
        "schema": cloudrun::spec::SPEC_SCHEMA,
        "run_id": id.as_str(),
        "created_at": created_at_of(id),
        "store": b.gcs_dir,
        "job": {"command": ["python3", "main.py"]},
        "price": {"usd_per_hour": 3.6, "source": "test"},
        "origin": {
            "by": "tester@testbox",
            "project_dir": cloudrun_launch::plan::project_key(from),
        },
    })
    .to_string()
}

/// When a test run was created: its id's second, or for the ids of
/// [`same_second_runs`] the moments within that second that make the smaller suffix the
/// newer run.
fn created_at_of(id: &RunId) -> String {
    let s = id.as_str();
    let frac = match s {
        SAME_SECOND_OLDER => ".100",
        SAME_SECOND_NEWER => ".900",
        _ => "",
    };
    format!(
        "{}-{}-{}T{}:{}:{}{frac}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
}

/// Two runs started in the same second, the later one with the smaller random suffix.
const SAME_SECOND_OLDER: &str = "20261126-090000-ffff";
const SAME_SECOND_NEWER: &str = "20261126-090000-0001";

/// One run per phase, launched from the project folder `from`; each has logs, metrics
/// and an output file.
pub async fn seed(b: &Backend, from: &Path) {
    let st = b.storage.as_ref();
    let l = &b.layout;
    for (id, phase) in PHASES {
        let id = RunId::parse(id).unwrap();
        put(st, &l.spec(&id), spec_from(b, &id, from)).await;
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
        put(st, &l.status(&id), s.to_json()).await;
        put(st, &l.log_chunk(&id, 1), "epoch 1\n").await;
        put(st, &l.log_chunk(&id, 2), "epoch 2\n").await;
        put(st, &l.log_chunk(&id, 10), "done\n").await;
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
        put(st, &l.metrics_chunk(&id, 0), samples.join("\n") + "\n").await;
        put(
            st,
            &format!("{}checkpoint/epoch2.pt", l.outputs_prefix(&id)),
            "weights",
        )
        .await;
    }
}

pub async fn status_shows_every_phase_and_one_run_in_detail(b: &Backend, cwd: &Path) {
    seed(b, cwd).await;
    let inv = b.invoker(cwd);
    let (code, out) = inv.cmd(&["status"]).await;
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

    let (_, json) = inv.cmd(&["status", "--json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 6);
    assert_eq!(rows[5]["end_reason"], "gpu_idle");

    let (_, one) = inv.cmd(&["status", "latest"]).await;
    assert!(
        one.contains("20261126-070000-0006") && one.contains("end      GPU idle: idle 10 min"),
        "{one}"
    );
    assert!(one.contains("gpu util ▁▂▄▅▇"), "{one}");
}

pub async fn logs_print_the_chunks_in_order(b: &Backend, cwd: &Path) {
    seed(b, cwd).await;
    let inv = b.invoker(cwd);
    for (id, _) in PHASES {
        let (code, out) = inv.cmd(&["logs", id]).await;
        assert_eq!((code, out.as_str()), (0, "epoch 1\nepoch 2\ndone\n"));
    }
    let (code, out) = inv.cmd(&["logs", "-f", "20261126-070000-0006"]).await;
    assert_eq!(code, EndReason::GpuIdle.exit_code());
    assert_eq!(out, "epoch 1\nepoch 2\ndone\n");
}

pub async fn logs_follow_picks_up_new_chunks_until_the_run_ends(b: &Backend) {
    seed(b, Path::new("/nonexistent-project")).await;
    let store = b.store();
    let id = RunId::parse("20261126-070000-0004").unwrap();
    let writer = {
        let st = b.storage.clone();
        let l = b.layout.clone();
        let id = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
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
    let end = runs::logs(
        &store,
        &id,
        true,
        Duration::from_millis(20),
        cloudrun_launch::logview::LogView::default(),
        &mut out,
    )
    .await
    .unwrap();
    writer.await.unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "epoch 1\nepoch 2\ndone\nlate line\nlast line\n"
    );
    assert_eq!(end.unwrap().end.unwrap().reason, EndReason::Succeeded);
}

/// `proj` is the project folder (the launcher's cwd); `elsewhere` must not exist yet.
pub async fn pull_brings_outputs_into_the_project_and_only_changed_files_again(
    b: &Backend,
    proj: &Path,
    elsewhere: &Path,
) {
    seed(b, proj).await;
    std::fs::create_dir_all(proj).unwrap();
    let inv = b.invoker(proj);
    let (code, out) = inv.cmd(&["pull", "20261126-070000-0006"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(proj.join("checkpoint/epoch2.pt")).unwrap(),
        "weights"
    );
    assert!(out.contains("pulled 1 file(s)"), "{out}");
    let (_, again) = inv.cmd(&["pull", "20261126-070000-0006"]).await;
    assert!(
        again.contains("pulled 0 file(s), 0 bytes; 1 unchanged"),
        "{again}"
    );
    inv.cmd(&["pull", "latest", "--into", elsewhere.to_str().unwrap()])
        .await;
    assert!(elsewhere.join("checkpoint/epoch2.pt").is_file());
}

/// `damage(key, bytes)` rewrites a stored object behind the store's back, keeping its
/// recorded checksum. `proj` is the project folder (the launcher's cwd).
pub async fn pull_of_a_damaged_output_fails_naming_it_and_keeps_the_local_file(
    b: &Backend,
    proj: &Path,
    damage: impl FnOnce(&str, &[u8]),
) {
    seed(b, proj).await;
    let id = "20261126-070000-0006";
    let key = format!(
        "{}checkpoint/epoch2.pt",
        b.layout.outputs_prefix(&RunId::parse(id).unwrap())
    );
    std::fs::create_dir_all(proj.join("checkpoint")).unwrap();
    std::fs::write(proj.join("checkpoint/epoch2.pt"), "older").unwrap();
    damage(&key, b"WEIGHTS"); // the same length as the stored "weights"
    let err = b.invoker(proj).try_cmd(&["pull", id]).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&key) && msg.contains("integrity"), "{msg}");
    assert_eq!(
        std::fs::read_to_string(proj.join("checkpoint/epoch2.pt")).unwrap(),
        "older"
    );
    assert_eq!(
        std::fs::read_dir(proj.join("checkpoint")).unwrap().count(),
        1
    );
}

/// Pulled files get the mode the user's umask gives a new file, not 0600.
pub async fn pulled_outputs_get_the_users_umask(b: &Backend, proj: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // A umask that keeps group read, so that "applied" and "0600" differ.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let umask = 0o022;
    seed(b, proj).await;
    std::fs::create_dir_all(proj).unwrap();
    let (code, _) = b.invoker(proj).cmd(&["pull", "20261126-070000-0006"]).await;
    assert_eq!(code, 0);
    let mode = std::fs::metadata(proj.join("checkpoint/epoch2.pt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666 & !umask, "{mode:o}");
}

pub async fn stop_writes_the_request_the_agent_polls_for(b: &Backend, cwd: &Path) {
    seed(b, cwd).await;
    let inv = b.invoker(cwd);
    let (code, out) = inv.cmd(&["stop", "20261126-070000-0004"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("asked run 20261126-070000-0004 to stop"),
        "{out}"
    );
    let id = RunId::parse("20261126-070000-0004").unwrap();
    let req: StopRequest = serde_json::from_slice(
        &b.storage
            .get_bytes(&b.layout.stop_request(&id))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(req.message.as_deref(), Some("stop"));

    let (_, out) = inv.cmd(&["stop", "20261126-070000-0006"]).await;
    assert!(out.contains("already ended"), "{out}");
    let ended = RunId::parse("20261126-070000-0006").unwrap();
    assert!(b
        .storage
        .head(&b.layout.stop_request(&ended))
        .await
        .unwrap()
        .is_none());
}

pub async fn report_writes_an_svg(b: &Backend, dir: &Path) {
    seed(b, dir).await;
    let svg = dir.join("r.svg");
    let (_, out) = b
        .invoker(dir)
        .cmd(&["report", "latest", "--out", svg.to_str().unwrap()])
        .await;
    assert!(out.contains("r.svg"));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.contains("cost billed at $3.60/h"),
        "{text}"
    );
    // PNG: by the file name, or by --format with the default name.
    let png = dir.join("r.png");
    b.invoker(dir)
        .cmd(&["report", "latest", "--out", png.to_str().unwrap()])
        .await;
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    let (_, out) = b
        .invoker(dir)
        .cmd(&["report", "20261126-070000-0006", "--format", "png"])
        .await;
    assert!(
        out.contains("cloudrun-report-20261126-070000-0006.png"),
        "{out}"
    );
    assert!(dir
        .join("cloudrun-report-20261126-070000-0006.png")
        .is_file());
    let err = b
        .invoker(dir)
        .try_cmd(&["report", "latest", "--out", "r.jpg"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains(".svg or .png"), "{err}");
}

pub async fn an_unknown_run_says_how_to_list_runs(b: &Backend, cwd: &Path) {
    seed(b, cwd).await;
    let inv = b.invoker(cwd);
    let err = inv
        .try_cmd(&["logs", "20991231-000000-ffff"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cloudrun-launch status"), "{err}");
    let err = inv
        .try_cmd(&["pull", "20991231-000000-ffff"])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no run 20991231-000000-ffff"),
        "{err}"
    );
    let err = inv.try_cmd(&["status", "nope"]).await.unwrap_err();
    assert!(err.to_string().contains("is not a run id"), "{err}");
}

/// `latest` is the newest run of this project folder: from project A it never names
/// project B's newer run (once `stop --now latest` in A ended B's run), and from a folder
/// with no runs it is an error naming the store's newest run instead of a guess.
pub async fn latest_is_the_newest_run_of_this_project_folder(b: &Backend, dir: &Path) {
    let (a, other, empty) = (dir.join("a"), dir.join("b"), dir.join("c"));
    for d in [&a, &other, &empty] {
        std::fs::create_dir_all(d).unwrap();
    }
    let st = b.storage.as_ref();
    let l = &b.layout;
    let older = RunId::parse("20261126-070000-000a").unwrap();
    let newer = RunId::parse("20261126-080000-000b").unwrap();
    for (id, from) in [(&older, &a), (&newer, &other)] {
        let mut s = RunStatus::launching(id.clone(), Utc::now(), 1.0);
        s.phase = Phase::Running;
        put(st, &l.status(id), s.to_json()).await;
        put(st, &l.spec(id), spec_from(b, id, from)).await;
    }
    let (_, out) = b.invoker(&a).cmd(&["status", "latest"]).await;
    assert!(
        out.contains(older.as_str()) && !out.contains(newer.as_str()),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "from     {}",
            cloudrun_launch::plan::project_key(&a)
        )),
        "{out}"
    );
    let (_, out) = b.invoker(&a).cmd(&["stop", "latest"]).await;
    assert!(out.contains(&format!("asked run {older} to stop")), "{out}");
    assert!(st.head(&l.stop_request(&older)).await.unwrap().is_some());
    assert!(
        st.head(&l.stop_request(&newer)).await.unwrap().is_none(),
        "stop latest in project A reached project B's run"
    );
    let (_, out) = b.invoker(&other).cmd(&["logs", "latest"]).await;
    assert_eq!(out, "", "no logs yet, but the right run");
    let err = b
        .invoker(&empty)
        .try_cmd(&["stop", "latest"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no run was launched from")
            && err.contains("the newest run under")
            && err.contains(newer.as_str())
            && err.contains("-C DIR"),
        "{err}"
    );
    // Two launches of project A in one second: the random suffix does not decide which
    // is `latest`, the spec's `created_at` does.
    let (first, second) = (
        RunId::parse(SAME_SECOND_OLDER).unwrap(),
        RunId::parse(SAME_SECOND_NEWER).unwrap(),
    );
    for id in [&first, &second] {
        let mut s = RunStatus::launching(id.clone(), Utc::now(), 1.0);
        s.phase = Phase::Running;
        put(st, &l.status(id), s.to_json()).await;
        put(st, &l.spec(id), spec_from(b, id, &a)).await;
    }
    let (_, out) = b.invoker(&a).cmd(&["stop", "latest"]).await;
    assert!(
        out.contains(&format!("asked run {second} to stop")),
        "{out}"
    );
    assert!(
        st.head(&l.stop_request(&first)).await.unwrap().is_none(),
        "stop latest chose the older of two runs started in one second"
    );
}

/// One run's `status.json` is garbage: `status` and `ls` still list every run (the
/// broken one as one row saying what is wrong), and `logs`, `pull` and `report` of the
/// broken run use what is readable.
pub async fn a_corrupt_status_breaks_only_its_own_row(b: &Backend, dir: &Path) {
    seed(b, dir).await;
    let st = b.storage.as_ref();
    let l = &b.layout;
    let broken = RunId::parse(PHASES[3].0).unwrap();
    put(st, &l.status(&broken), "{\"phase\": \"runn").await;
    let inv = b.invoker(dir);
    let (code, out) = inv.cmd(&["status"]).await;
    assert_eq!(code, 0);
    for (id, _) in PHASES {
        assert!(out.contains(id), "{id} missing: {out}");
    }
    let row = out
        .lines()
        .find(|l| l.starts_with(broken.as_str()))
        .unwrap();
    assert!(
        row.contains("broken") && row.contains("status.json is unreadable"),
        "{row}"
    );
    let (_, json) = inv.cmd(&["status", "--json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), PHASES.len());
    assert_eq!(rows[3]["phase"], "broken", "{rows:#}");
    let (code, out) = inv.cmd(&["ls"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(PHASES[5].0) && out.contains("broken"), "{out}");
    let (_, one) = inv.cmd(&["status", broken.as_str()]).await;
    assert!(one.contains("problem  status.json is unreadable"), "{one}");
    let (_, logs) = inv.cmd(&["logs", broken.as_str()]).await;
    assert_eq!(logs, "epoch 1\nepoch 2\ndone\n");
    let into = dir.join("pulled");
    let (_, out) = inv
        .cmd(&["pull", broken.as_str(), "--into", into.to_str().unwrap()])
        .await;
    assert!(out.contains("pulled 1 file(s)"), "{out}");
    let svg = dir.join("broken.svg");
    inv.cmd(&["report", broken.as_str(), "--out", svg.to_str().unwrap()])
        .await;
    assert!(svg.is_file());
}

/// A finished local run on a machine without GPUs: `status` says it cost nothing ("local
/// run, no charge", not "billed 1m 00s at $0.00/h"), prints no empty `gpu now` line for
/// a sample without readings, and the table has no "VM check skipped" note (a local
/// store has no VMs to check).
pub async fn a_local_runs_status_says_no_charge_and_checks_no_vm(b: &Backend, dir: &Path) {
    let st = b.storage.as_ref();
    let l = &b.layout;
    let id = RunId::parse("20261126-070000-00cc").unwrap();
    let mut spec: serde_json::Value = serde_json::from_str(&spec_from(b, &id, dir)).unwrap();
    spec["placement"] = serde_json::json!({"provider": "local"});
    spec["price"] = serde_json::json!({"usd_per_hour": 0.0, "source": "local run: no charge"});
    put(st, &l.spec(&id), spec.to_string()).await;
    let started = t("2026-11-26T07:00:00Z");
    let ended = t("2026-11-26T07:00:12Z");
    let mut s = RunStatus::launching(id.clone(), started, 0.0);
    s.phase = Phase::Ended;
    s.agent_started_at = Some(started);
    s.ended_at = Some(ended);
    s.end = Some(EndInfo {
        reason: EndReason::Succeeded,
        exit_code: Some(0),
        signal: None,
        message: String::new(),
    });
    s.last_gpu = Some(GpuSample {
        at: ended,
        gpus: Vec::new(),
        error: Some("nvidia-smi: not found".into()),
    });
    s.receipt = Some(cloudrun::billing::Receipt::new(started, ended, 0.0, 0, 12));
    put(st, &l.status(&id), s.to_json()).await;

    let inv = b.invoker(dir);
    let (_, one) = inv.cmd(&["status", "--local", id.as_str()]).await;
    assert!(
        one.contains("receipt  local run, no charge (ran 12s)"),
        "{one}"
    );
    assert!(!one.contains("billed") && !one.contains("$0.00/h"), "{one}");
    assert!(one.contains("cost     none (local run)"), "{one}");
    assert!(!one.contains("gpu now"), "{one}");
    let (_, table) = inv.cmd(&["status", "--local"]).await;
    assert!(table.contains(id.as_str()), "{table}");
    assert!(!table.contains("VM check skipped"), "{table}");
}
