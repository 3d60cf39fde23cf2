//! `ls`, `sweep` and `status` with the Compute API: the real dispatcher against the
//! testkit's Compute Engine emulator (`common::compute`) and runs written into a
//! local-directory store.
//! The fixture has a finished run whose VM is still up, a running run whose heartbeat
//! went stale, a healthy running run, a finished run whose VM is gone, a freshly created
//! cloudrun VM with no run in this store yet, and a VM that is not cloudrun's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use chrono::{Duration, Utc};
use cloudrun::status::{EndInfo, EndReason, InstanceRef, Phase, RunStatus};
use cloudrun::storage::local::LocalStorage;
use cloudrun::{Layout, PutOptions, RunId, Storage};
use cloudrun_testkit::gce::GceEmulator;
use common::compute::{auth_headers, deletes, emulator, instance_names, list_filters};
use common::inproc::{Invoker, TEST_TOKEN};

const ENDED_UP: &str = "20261126-070000-0001";
const STALE: &str = "20261126-070000-0002";
const HEALTHY: &str = "20261126-070000-0003";
const ENDED_GONE: &str = "20261126-070000-0004";
/// A VM that was just created; its launcher has not written the run yet.
const NEWBORN: &str = "20261126-070000-0005";

struct World {
    emu: GceEmulator,
    inv: Invoker,
    _dir: tempfile::TempDir,
}

async fn put_status(st: &LocalStorage, s: &RunStatus) {
    st.put_bytes(
        &Layout::new("").status(&s.run_id),
        Bytes::from(s.to_json()),
        &PutOptions::default(),
    )
    .await
    .unwrap();
}

fn status(id: &str, phase: Phase, updated_ago: Duration, vm: Option<(&str, &str)>) -> RunStatus {
    let now = Utc::now();
    let mut s = RunStatus::launching(RunId::parse(id).unwrap(), now - Duration::hours(3), 0.71);
    s.phase = phase;
    s.updated_at = now - updated_ago;
    s.agent_started_at = Some(now - Duration::hours(3));
    s.instance = vm.map(|(zone, name)| InstanceRef {
        project: "test-proj".into(),
        zone: zone.into(),
        name: name.into(),
    });
    if phase == Phase::Ended {
        s.ended_at = Some(now - Duration::hours(1));
        s.end = Some(EndInfo {
            reason: EndReason::Succeeded,
            exit_code: Some(0),
            signal: None,
            message: String::new(),
        });
    }
    s
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let st = Arc::new(LocalStorage::new(dir.path()));
    let fresh = Duration::seconds(30);
    put_status(
        &st,
        &status(
            ENDED_UP,
            Phase::Ended,
            Duration::hours(1),
            Some(("us-central1-a", "cr-ended")),
        ),
    )
    .await;
    put_status(
        &st,
        &status(
            STALE,
            Phase::Running,
            Duration::hours(2),
            Some(("us-central1-b", "cr-stale")),
        ),
    )
    .await;
    put_status(
        &st,
        &status(
            HEALTHY,
            Phase::Running,
            fresh,
            Some(("us-central1-a", "cr-healthy")),
        ),
    )
    .await;
    put_status(
        &st,
        &status(
            ENDED_GONE,
            Phase::Ended,
            Duration::hours(1),
            Some(("us-central1-a", "cr-gone")),
        ),
    )
    .await;

    let fake = emulator(&[]);
    let base = fake.compute_url();
    let hours_ago = (Utc::now() - Duration::hours(3)).to_rfc3339();
    let just_now = (Utc::now() - fresh).to_rfc3339();
    let managed = |run: &'static str| [("cloudrun-managed", "true"), ("cloudrun-run", run)];
    fake.add_instance(
        "us-central1-a",
        "cr-ended",
        "RUNNING",
        &managed(ENDED_UP),
        &hours_ago,
    );
    fake.add_instance(
        "us-central1-b",
        "cr-stale",
        "RUNNING",
        &managed(STALE),
        &hours_ago,
    );
    fake.add_instance(
        "us-central1-a",
        "cr-healthy",
        "RUNNING",
        &managed(HEALTHY),
        &hours_ago,
    );
    fake.add_instance(
        "us-central1-b",
        "cr-newborn",
        "STAGING",
        &managed(NEWBORN),
        &just_now,
    );
    fake.add_instance("us-central1-a", "someone-elses", "RUNNING", &[], &hours_ago);

    let inv = Invoker::new(&format!("file://{}", dir.path().display()), dir.path())
        .set("GCLOUD_PROJECT", "test-proj")
        .set("CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE", base)
        .with_token();
    World {
        emu: fake,
        inv,
        _dir: dir,
    }
}

fn line_of<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}"))
}

#[tokio::test]
async fn ls_shows_runs_and_live_cloudrun_vms_side_by_side() {
    let w = world().await;
    let (code, out) = w.inv.cmd(&["ls"]).await;
    assert_eq!(code, 0);
    assert!(
        line_of(&out, ENDED_UP).ends_with("cr-ended RUNNING (us-central1-a)"),
        "{out}"
    );
    let stale = line_of(&out, STALE);
    assert!(
        stale.contains("running?") && stale.ends_with("cr-stale RUNNING (us-central1-b)"),
        "{out}"
    );
    assert!(
        line_of(&out, HEALTHY).ends_with("cr-healthy RUNNING (us-central1-a)"),
        "{out}"
    );
    assert!(line_of(&out, ENDED_GONE).ends_with("  -"), "{out}");
    assert!(
        line_of(&out, NEWBORN)
            .ends_with("cr-newborn STAGING (us-central1-b) [no run in this GCS_DIR]"),
        "{out}"
    );
    assert!(!out.contains("someone-elses"), "{out}");
    assert_eq!(list_filters(&w.emu), ["labels.cloudrun-managed = true"]);
    assert!(auth_headers(&w.emu)
        .iter()
        .all(|a| *a == format!("Bearer {TEST_TOKEN}")));
    assert_eq!(deletes(&w.emu).len(), 0);
}

#[tokio::test]
async fn sweep_without_yes_lists_ended_and_silent_runs_vms_and_deletes_nothing() {
    let w = world().await;
    let (code, out) = w.inv.cmd(&["sweep"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!(
            "cr-ended in us-central1-a: run ended (job succeeded) (run {ENDED_UP})\n\
             cr-stale in us-central1-b: no heartbeat (run {STALE})\n\
             2 VM(s) would be deleted; run `cloudrun-launch sweep --yes` to delete them\n"
        )
    );
    assert_eq!(deletes(&w.emu).len(), 0);
}

#[tokio::test]
async fn sweep_yes_deletes_exactly_the_stale_vms_once_each_and_never_a_healthy_run() {
    let w = world().await;
    let (code, out) = w.inv.cmd(&["sweep", "--yes"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("deleting cr-ended in us-central1-a (run ended (job succeeded))")
            && out.contains("deleting cr-stale in us-central1-b (no heartbeat)"),
        "{out}"
    );
    let mut deleted = deletes(&w.emu);
    deleted.sort();
    assert_eq!(
        deleted,
        ["us-central1-a/cr-ended", "us-central1-b/cr-stale"]
    );

    // Once the deletes have finished (an Operation each), a second sweep finds nothing.
    common::compute::wait_until_at_most(&w.emu, 3).await;
    let (_, again) = w.inv.cmd(&["sweep", "--yes"]).await;
    assert_eq!(again, "nothing to sweep\n");
    assert_eq!(deletes(&w.emu).len(), 2, "no second delete");
    assert_eq!(
        instance_names(&w.emu),
        ["cr-healthy", "someone-elses", "cr-newborn"]
    );
}

#[tokio::test]
async fn status_flags_a_finished_run_whose_vm_is_still_up() {
    let w = world().await;
    let (_, one) = w.inv.cmd(&["status", ENDED_UP]).await;
    assert!(
        one.contains("vm       cr-ended in us-central1-a (project test-proj): RUNNING"),
        "{one}"
    );
    assert!(
        one.contains(&format!("warning  the run ended but its VM is still up: `cloudrun-launch stop {ENDED_UP} --now` or `cloudrun-launch sweep --yes`")),
        "{one}"
    );

    let (_, healthy) = w.inv.cmd(&["status", HEALTHY]).await;
    assert!(
        healthy.contains(": RUNNING") && !healthy.contains("still up"),
        "{healthy}"
    );
    let (_, gone) = w.inv.cmd(&["status", ENDED_GONE]).await;
    assert!(
        gone.contains("(project test-proj): gone") && !gone.contains("still up"),
        "{gone}"
    );

    let (_, table) = w.inv.cmd(&["status"]).await;
    assert!(
        line_of(&table, ENDED_UP).ends_with("[VM still up: cloudrun-launch sweep]"),
        "{table}"
    );
    assert!(!line_of(&table, ENDED_GONE).contains("still up"), "{table}");
    assert!(
        line_of(&table, STALE).contains("[silent: no heartbeat]"),
        "{table}"
    );

    let (_, json) = w.inv.cmd(&["status", "--json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let vm_up: Vec<(String, bool)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["run_id"].as_str().unwrap().to_string(),
                r["vm_up"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        vm_up,
        [
            (ENDED_UP.to_string(), true),
            (STALE.to_string(), true),
            (HEALTHY.to_string(), true),
            (ENDED_GONE.to_string(), false),
        ]
    );
    assert_eq!(deletes(&w.emu).len(), 0, "status never deletes");
}

#[tokio::test]
async fn status_and_ls_show_the_gpu_wait_and_a_gpu_unavailable_end() {
    const WAITING: &str = "20261126-070000-0006";
    const UNAVAILABLE: &str = "20261126-070000-0007";
    let w = world().await;
    let st = LocalStorage::new(w._dir.path());
    let now = Utc::now();
    let driver = "nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.";
    let mut waiting = status(
        WAITING,
        Phase::WaitingForGpu,
        Duration::seconds(5),
        Some(("us-central1-a", "cr-waiting")),
    );
    waiting.gpu_wait_started_at = Some(now - Duration::seconds(125));
    waiting.last_gpu = Some(cloudrun::status::GpuSample {
        at: now - Duration::seconds(5),
        gpus: vec![],
        error: Some(driver.into()),
    });
    put_status(&st, &waiting).await;
    let mut unavailable = status(
        UNAVAILABLE,
        Phase::Ended,
        Duration::hours(1),
        Some(("us-central1-a", "cr-unavailable")),
    );
    let ended = unavailable.ended_at.unwrap();
    unavailable.gpu_wait_started_at = Some(ended - Duration::seconds(600));
    unavailable.end = Some(EndInfo {
        reason: EndReason::GpuUnavailable,
        exit_code: None,
        signal: None,
        message: "2 × nvidia-l4 did not answer nvidia-smi within 10m 00s (policies.gpu_ready_secs); its last answer: nvidia-smi shows 1 of 2 GPUs (NVIDIA L4)".into(),
    });
    put_status(&st, &unavailable).await;

    let (_, one) = w.inv.cmd(&["status", WAITING]).await;
    assert!(one.contains("phase    waiting_for_gpu"), "{one}");
    let line = line_of(&one, "gpu wait");
    assert!(
        line.contains("so far") && line.contains("couldn't communicate with the NVIDIA driver"),
        "{one}"
    );
    let (_, one) = w.inv.cmd(&["status", UNAVAILABLE]).await;
    assert!(
        line_of(&one, "end ").contains("GPUs unavailable: 2 × nvidia-l4 did not answer")
            && one.contains("1 of 2 GPUs"),
        "{one}"
    );
    assert!(
        line_of(&one, "gpu wait").contains("10m 00s: the GPUs never answered"),
        "{one}"
    );

    let (_, table) = w.inv.cmd(&["status"]).await;
    assert!(
        line_of(&table, WAITING).contains("waiting_for_gpu "),
        "{table}"
    );
    assert!(
        line_of(&table, UNAVAILABLE).contains("GPUs unavailable"),
        "{table}"
    );
    let (_, json) = w.inv.cmd(&["status", "--json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let row = |id: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["run_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(WAITING)["phase"], "waiting_for_gpu");
    assert_eq!(row(UNAVAILABLE)["end_reason"], "gpu_unavailable");
    let (_, ls) = w.inv.cmd(&["ls"]).await;
    assert!(line_of(&ls, WAITING).contains("waiting_for_gpu "), "{ls}");
}

/// `stop --now` names the run it is about to end (id, GPU, phase) before the delete, and
/// deletes exactly that run's VM.
#[tokio::test]
async fn stop_now_names_the_run_it_ends_and_deletes_only_its_vm() {
    let w = world().await;
    let (code, out) = w.inv.cmd(&["stop", HEALTHY, "--now"]).await;
    assert_eq!(code, 0, "{out}");
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("ending run {HEALTHY} (")) && first.contains("running"),
        "{out}"
    );
    assert!(
        out.contains("deleting VM cr-healthy in us-central1-a"),
        "{out}"
    );
    assert_eq!(deletes(&w.emu), ["us-central1-a/cr-healthy"]);
}

/// `stop --now` needs credentials but not `GCLOUD_PROJECT`: the run's status names the
/// project of its VM. `sweep`, which lists the whole project, does need it.
#[tokio::test]
async fn stop_now_finds_the_vm_by_the_project_its_run_names() {
    let mut w = world().await;
    w.inv.env.remove("GCLOUD_PROJECT");
    let (code, out) = w.inv.cmd(&["stop", HEALTHY, "--now"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(deletes(&w.emu), ["us-central1-a/cr-healthy"]);
    let err = w.inv.try_cmd(&["sweep"]).await.unwrap_err();
    assert!(err.to_string().contains("GCLOUD_PROJECT"), "{err}");
}

/// A run whose `status.json` is unreadable is not taken for a VM without a status: its
/// agent may be healthy. `sweep` leaves its VM alone and still sweeps the others, and
/// `ls` shows the run as broken beside its live VM.
#[tokio::test]
async fn sweep_leaves_the_vm_of_a_run_with_an_unreadable_status_alone() {
    let w = world().await;
    let st = LocalStorage::new(w._dir.path());
    let key = Layout::new("").status(&RunId::parse(HEALTHY).unwrap());
    st.put_bytes(
        &key,
        Bytes::from_static(b"{\"phase\": \"runn"),
        &PutOptions::default(),
    )
    .await
    .unwrap();
    let (code, out) = w.inv.cmd(&["sweep"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("cr-healthy"), "{out}");
    assert!(
        out.contains("cr-ended") && out.contains("cr-stale"),
        "{out}"
    );
    let (_, ls) = w.inv.cmd(&["ls"]).await;
    let row = line_of(&ls, HEALTHY);
    assert!(
        row.contains("broken") && row.contains("cr-healthy RUNNING"),
        "{ls}"
    );
    assert_eq!(deletes(&w.emu).len(), 0);
}
