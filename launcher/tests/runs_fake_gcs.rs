//! `status`, `logs`, `pull`, `stop` and `report` through the real dispatcher against runs
//! in every phase, written into fake-gcs-server (`GCS_DIR=gs://bucket/prefix` with
//! `STORAGE_EMULATOR_HOST` in the invocation's environment): the same scenarios
//! (`common::runs`) as `runs_local.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use cloudrun::storage::gcs::{Endpoint, GcsStorage};
use cloudrun::{Layout, StoreUrl};
use cloudrun_testkit::FakeGcs;
use common::runs::{self as scenario, Backend};

const GCS_DIR: &str = "gs://cloudrun-runs/team/exp";

/// A fresh fake-gcs-server with the bucket, and a scratch directory.
fn fake_gcs() -> (Backend, tempfile::TempDir) {
    let gcs = FakeGcs::start();
    gcs.create_bucket("cloudrun-runs");
    let b = Backend {
        storage: Arc::new(
            GcsStorage::new("cloudrun-runs", Endpoint::emulator(&gcs.host()), None).unwrap(),
        ),
        layout: Layout::for_store(&StoreUrl::parse(GCS_DIR).unwrap()),
        gcs_dir: GCS_DIR.to_string(),
        env: vec![("STORAGE_EMULATOR_HOST".to_string(), gcs.host())],
        _keep: Box::new(gcs),
    };
    (b, tempfile::tempdir().unwrap())
}

#[tokio::test]
async fn status_shows_every_phase_and_one_run_in_detail() {
    let (b, dir) = fake_gcs();
    scenario::status_shows_every_phase_and_one_run_in_detail(&b, dir.path()).await;
}

#[tokio::test]
async fn logs_print_the_chunks_in_order() {
    let (b, dir) = fake_gcs();
    scenario::logs_print_the_chunks_in_order(&b, dir.path()).await;
}

#[tokio::test]
async fn logs_follow_picks_up_new_chunks_until_the_run_ends() {
    let (b, _dir) = fake_gcs();
    scenario::logs_follow_picks_up_new_chunks_until_the_run_ends(&b).await;
}

#[tokio::test]
async fn pull_of_a_damaged_output_fails_naming_it_and_keeps_the_local_file() {
    let (b, dir) = fake_gcs();
    let gcs = b._keep.downcast_ref::<FakeGcs>().unwrap();
    scenario::pull_of_a_damaged_output_fails_naming_it_and_keeps_the_local_file(
        &b,
        &dir.path().join("proj"),
        |key, bytes| {
            let file = gcs.object_file("cloudrun-runs", key);
            assert!(
                file.is_file(),
                "{} is not where the object is",
                file.display()
            );
            std::fs::write(file, bytes).unwrap();
        },
    )
    .await;
}

#[tokio::test]
async fn pull_brings_outputs_into_the_project_and_only_changed_files_again() {
    let (b, dir) = fake_gcs();
    scenario::pull_brings_outputs_into_the_project_and_only_changed_files_again(
        &b,
        &dir.path().join("proj"),
        &dir.path().join("elsewhere"),
    )
    .await;
}

#[tokio::test]
async fn stop_writes_the_request_the_agent_polls_for() {
    let (b, dir) = fake_gcs();
    scenario::stop_writes_the_request_the_agent_polls_for(&b, dir.path()).await;
}

#[tokio::test]
async fn report_writes_an_svg() {
    let (b, dir) = fake_gcs();
    scenario::report_writes_an_svg(&b, dir.path()).await;
}

#[tokio::test]
async fn an_unknown_run_says_how_to_list_runs() {
    let (b, dir) = fake_gcs();
    scenario::an_unknown_run_says_how_to_list_runs(&b, dir.path()).await;
}

#[tokio::test]
async fn latest_is_the_newest_run_of_this_project_folder() {
    let (b, dir) = fake_gcs();
    scenario::latest_is_the_newest_run_of_this_project_folder(&b, dir.path()).await;
}

#[tokio::test]
async fn a_corrupt_status_breaks_only_its_own_row() {
    let (b, dir) = fake_gcs();
    scenario::a_corrupt_status_breaks_only_its_own_row(&b, dir.path()).await;
}
