//! The launch against the testkit's Compute Engine emulator (`common::compute`), which
//! reproduces the real service's quirks: inserts return a PENDING Operation, and capacity
//! or quota failures arrive late, as DONE with `error.errors`; a `requestId` seen before
//! returns the first Operation instead of creating a second VM; a half-created instance
//! can stay behind in an exhausted zone. Storage is a local directory; the code push is
//! the real sync engine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloudrun::compute_rest::{RestCompute, StaticToken};
use cloudrun::prices::PriceBook;
use cloudrun::retry::RetryPolicy;
use cloudrun::storage::local::LocalStorage;
use cloudrun::Storage;
use cloudrun_launch::launch::{launch, Deps, LaunchError};
use cloudrun_launch::plan::{build, LaunchPlan, PlanInputs};
use cloudrun_launch::push::SyncPusher;
use cloudrun_launch::settings::{Settings, Source, Sourced};

use cloudrun_testkit::gce::{GceEmulator, ZoneState};
use common::compute::{deletes, emulator, inserts, wait_until_at_most};

fn s<T>(v: T) -> Option<Sourced<T>> {
    Some(Sourced {
        value: v,
        source: Source::Default,
    })
}

fn plan(dir: &Path, zones: &[(&str, ZoneState)], family: &str) -> LaunchPlan {
    let proj = dir.join("project");
    std::fs::create_dir_all(proj.join("src")).unwrap();
    std::fs::write(proj.join("main.py"), "print('train')\n").unwrap();
    std::fs::write(proj.join("src/model.py"), "x = 1\n").unwrap();
    std::fs::write(dir.join("agent"), b"\x7fELF agent").unwrap();
    let settings = Settings {
        project_dir: proj,
        project: s("test-proj".into()),
        gcs_dir: s("gs://bkt/cr".into()),
        vm_instance: s("trainer".into()),
        vm_user: s("alice".into()),
        gpu: s("l4".into()),
        zones: s(zones.iter().map(|(z, _)| z.to_string()).collect()),
        image_family: s(family.into()),
        agent_binary: s(dir.join("agent")),
        ..Settings::default()
    };
    let prices = PriceBook::builtin();
    build(
        &settings,
        &PlanInputs {
            command: &["main.py".to_string()],
            now: "2026-11-26T07:15:00Z".parse().unwrap(),
            prices: &prices,
            default_agent: None,
            storage_host: None,
            launched_by: "tester@testbox".into(),
        },
    )
    .unwrap()
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        total_deadline: Duration::from_secs(10),
    }
}

struct Run {
    emu: GceEmulator,
    store: Arc<LocalStorage>,
    lines: Vec<String>,
    result: Result<cloudrun_launch::launch::Launched, LaunchError>,
    plan: LaunchPlan,
    _dir: tempfile::TempDir,
}

async fn run(zones: &[(&str, ZoneState)], family: &str) -> Run {
    run_on(emulator(zones), zones, family).await
}

async fn run_on(emu: GceEmulator, zones: &[(&str, ZoneState)], family: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let base = emu.compute_url();
    let plan = plan(dir.path(), zones, family);
    let store = Arc::new(LocalStorage::new(dir.path().join("bucket")));
    let compute = RestCompute::new(&base, Arc::new(StaticToken::new("t").unwrap()))
        .unwrap()
        .with_retry(fast());
    let deps = Deps {
        storage: store.clone(),
        compute: Arc::new(compute),
        pusher: Box::new(SyncPusher::default()),
    };
    let mut lines = Vec::new();
    let mut report = |l: String| lines.push(l);
    let result = launch(
        &plan,
        &deps,
        "2026-11-26T07:15:00Z".parse().unwrap(),
        &mut report,
    )
    .await;
    Run {
        emu,
        store,
        lines,
        result,
        plan,
        _dir: dir,
    }
}

#[tokio::test]
async fn an_exhausted_zone_fails_over_to_the_next_and_its_leftover_is_deleted() {
    let r = run(
        &[
            ("us-central1-a", ZoneState::OutOfCapacityLeavingInstance),
            ("us-central1-b", ZoneState::Available),
        ],
        "common-cu128",
    )
    .await;
    let launched = r.result.unwrap();
    assert_eq!(launched.instance.zone, "us-central1-b");
    let attempt_lines: Vec<_> = r
        .lines
        .iter()
        .filter(|l| l.starts_with("us-central1-"))
        .collect();
    assert_eq!(attempt_lines.len(), 2, "{:?}", r.lines);
    assert!(
        attempt_lines[0].contains("ZONE_RESOURCE_POOL_EXHAUSTED")
            && attempt_lines[0].contains("next zone")
    );
    assert_eq!(inserts(&r.emu).len(), 2);
    assert_eq!(
        deletes(&r.emu),
        [format!("us-central1-a/{}", r.plan.instance_name)]
    );
    wait_until_at_most(&r.emu, 1).await;
    assert_eq!(r.emu.instances()[0].zone, "us-central1-b");

    // The store has the code, the agent, the spec (with the zone) and a launching status.
    let layout = &r.plan.layout;
    let spec = cloudrun::RunSpec::from_json(&String::from_utf8_lossy(
        &r.store
            .get_bytes(&layout.spec(&r.plan.run_id))
            .await
            .unwrap(),
    ))
    .unwrap();
    assert_eq!(spec.placement.zone.as_deref(), Some("us-central1-b"));
    let status = cloudrun::RunStatus::from_json(&String::from_utf8_lossy(
        &r.store
            .get_bytes(&layout.status(&r.plan.run_id))
            .await
            .unwrap(),
    ))
    .unwrap();
    assert_eq!(status.instance.unwrap().zone, "us-central1-b");
    assert!(r
        .store
        .head(&layout.manifest(&r.plan.run_id))
        .await
        .unwrap()
        .is_some());
    assert!(r
        .store
        .head(&layout.agent_binary(&r.plan.agent.sha256))
        .await
        .unwrap()
        .is_some());
    // The VM boots the image the family resolved to.
    let body = r.emu.instances()[0].insert_body.clone();
    assert!(body["disks"][0]["initializeParams"]["sourceImage"]
        .as_str()
        .unwrap()
        .ends_with("/images/common-cu128-v20261101"));
}

#[tokio::test]
async fn a_regional_quota_skips_that_region_and_names_the_quota() {
    let r = run(
        &[
            (
                "us-central1-a",
                ZoneState::QuotaExceeded("NVIDIA_L4_GPUS".into()),
            ),
            ("us-central1-b", ZoneState::Available),
            ("us-east1-b", ZoneState::Available),
        ],
        "common-cu128",
    )
    .await;
    assert_eq!(r.result.unwrap().instance.zone, "us-east1-b");
    let zones: Vec<String> = inserts(&r.emu).into_iter().map(|(z, _)| z).collect();
    assert_eq!(zones, ["us-central1-a", "us-east1-b"]);
    assert!(
        r.lines
            .iter()
            .any(|l| l.starts_with("us-central1-b: skipped")),
        "{:?}",
        r.lines
    );
}

#[tokio::test]
async fn quota_in_every_zone_says_how_to_ask_for_more() {
    let q = ZoneState::QuotaExceeded("NVIDIA_L4_GPUS".into());
    let r = run(&[("us-central1-a", q)], "common-cu128").await;
    let err = r.result.unwrap_err().to_string();
    assert!(
        err.contains("NVIDIA_L4_GPUS") && err.contains("iam-admin/quotas?project=test-proj"),
        "{err}"
    );
}

#[tokio::test]
async fn gpus_all_regions_stops_the_search() {
    let r = run(
        &[
            (
                "us-central1-a",
                ZoneState::QuotaExceeded("GPUS_ALL_REGIONS".into()),
            ),
            ("us-east1-b", ZoneState::Available),
        ],
        "common-cu128",
    )
    .await;
    let err = r.result.unwrap_err().to_string();
    assert!(
        err.contains("GPUS_ALL_REGIONS") && err.contains("Every region would fail"),
        "{err}"
    );
    assert_eq!(inserts(&r.emu).len(), 1);
}

#[tokio::test]
async fn a_retried_insert_reuses_its_request_id_and_makes_one_vm() {
    let zones = [("us-central1-a", ZoneState::Available)];
    let emu = emulator(&zones);
    // The insert lands, but its reply is lost the first time.
    emu.lose_next_reply("POST", "/zones/us-central1-a/instances", 503, 1);
    let r = run_on(emu, &zones, "common-cu128").await;
    r.result.unwrap();
    let inserts = inserts(&r.emu);
    assert_eq!(inserts.len(), 2, "one lost reply, one retry");
    assert_eq!(inserts[0].1, inserts[1].1, "same requestId");
    assert_eq!(r.emu.instances().len(), 1);
}

#[tokio::test]
async fn a_retired_image_family_fails_before_anything_is_uploaded() {
    let zones = [("us-central1-a", ZoneState::Available)];
    let emu = emulator(&zones);
    emu.retire_family("retired-family");
    let r = run_on(emu, &zones, "retired-family").await;
    let err = r.result.unwrap_err();
    assert!(
        matches!(err, LaunchError::ImageFamilyRetired { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("gcloud compute images list --project deeplearning-platform-release"),
        "{err}"
    );
    assert!(inserts(&r.emu).is_empty());
    assert!(
        r.store.list("").await.unwrap().is_empty(),
        "nothing uploaded"
    );
}

#[tokio::test]
async fn no_zone_with_room_lists_every_attempt() {
    let r = run(
        &[
            ("us-central1-a", ZoneState::OutOfCapacityLeavingInstance),
            ("us-west1-b", ZoneState::OutOfCapacityLeavingInstance),
        ],
        "common-cu128",
    )
    .await;
    let err = r.result.unwrap_err().to_string();
    assert!(
        err.contains("no zone had room")
            && err.contains("us-central1-a")
            && err.contains("us-west1-b"),
        "{err}"
    );
    assert_eq!(deletes(&r.emu).len(), 2, "each leftover deleted");
    wait_until_at_most(&r.emu, 0).await;
}
