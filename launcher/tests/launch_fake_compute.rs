//! The launch against the in-process Compute fake (`common::compute_fake`), which
//! reproduces the real service's quirks: inserts return a PENDING Operation, and capacity
//! or quota failures arrive late, as DONE with `error.errors`; a `requestId` seen before
//! returns the first Operation instead of creating a second VM. Storage is a local
//! directory; the code push is the real sync engine.

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

use common::compute_fake::{start, Zone, S};

fn s<T>(v: T) -> Option<Sourced<T>> {
    Some(Sourced {
        value: v,
        source: Source::Default,
    })
}

fn plan(dir: &Path, zones: &[(&str, Zone)], family: &str) -> LaunchPlan {
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
    fake: S,
    store: Arc<LocalStorage>,
    lines: Vec<String>,
    result: Result<cloudrun_launch::launch::Launched, LaunchError>,
    plan: LaunchPlan,
    _dir: tempfile::TempDir,
}

async fn run(zones: &[(&str, Zone)], family: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (fake, base) = start(zones).await;
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
        fake,
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
            ("us-central1-a", Zone::Exhausted),
            ("us-central1-b", Zone::Ok),
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
    assert_eq!(r.fake.inserts.lock().unwrap().len(), 2);
    assert_eq!(
        *r.fake.deletes.lock().unwrap(),
        [format!("us-central1-a/{}", r.plan.instance_name)]
    );
    assert_eq!(r.fake.instances.lock().unwrap().len(), 1);

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
    let body = r
        .fake
        .instances
        .lock()
        .unwrap()
        .values()
        .next()
        .cloned()
        .unwrap();
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
                Zone::Quota("Quota 'NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region us-central1."),
            ),
            ("us-central1-b", Zone::Ok),
            ("us-east1-b", Zone::Ok),
        ],
        "common-cu128",
    )
    .await;
    assert_eq!(r.result.unwrap().instance.zone, "us-east1-b");
    let zones: Vec<String> = r
        .fake
        .inserts
        .lock()
        .unwrap()
        .iter()
        .map(|(z, _)| z.clone())
        .collect();
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
    let q = Zone::Quota("Quota 'NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region us-central1.");
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
                Zone::Quota("Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally."),
            ),
            ("us-east1-b", Zone::Ok),
        ],
        "common-cu128",
    )
    .await;
    let err = r.result.unwrap_err().to_string();
    assert!(
        err.contains("GPUS_ALL_REGIONS") && err.contains("Every region would fail"),
        "{err}"
    );
    assert_eq!(r.fake.inserts.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_retried_insert_reuses_its_request_id_and_makes_one_vm() {
    let r = run(&[("us-central1-a", Zone::LostReply)], "common-cu128").await;
    r.result.unwrap();
    let inserts = r.fake.inserts.lock().unwrap().clone();
    assert_eq!(inserts.len(), 2, "one lost reply, one retry");
    assert_eq!(inserts[0].1, inserts[1].1, "same requestId");
    assert_eq!(r.fake.instances.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_retired_image_family_fails_before_anything_is_uploaded() {
    let r = run(&[("us-central1-a", Zone::Ok)], "retired-family").await;
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
    assert!(r.fake.inserts.lock().unwrap().is_empty());
    assert!(
        r.store.list("").await.unwrap().is_empty(),
        "nothing uploaded"
    );
}

#[tokio::test]
async fn no_zone_with_room_lists_every_attempt() {
    let r = run(
        &[
            ("us-central1-a", Zone::Exhausted),
            ("us-west1-b", Zone::Exhausted),
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
    assert!(
        r.fake.instances.lock().unwrap().is_empty(),
        "leftovers deleted"
    );
}
