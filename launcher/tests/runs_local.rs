//! `status`, `logs`, `pull`, `stop` and `report` through the real dispatcher against runs
//! in every phase, in a local-directory store (`GCS_DIR=file:///…`). The scenarios live in
//! `common::runs`; `runs_fake_gcs.rs` runs the same ones against fake-gcs-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use cloudrun::storage::local::LocalStorage;
use cloudrun::Layout;
use common::runs::{self as scenario, Backend};

/// A local store in a temporary directory, and a scratch directory beside it.
fn local() -> (Backend, tempfile::TempDir) {
    let store = tempfile::tempdir().unwrap();
    let b = Backend {
        storage: Arc::new(LocalStorage::new(store.path())),
        layout: Layout::new(""),
        gcs_dir: format!("file://{}", store.path().display()),
        env: Vec::new(),
        _keep: Box::new(store),
    };
    (b, tempfile::tempdir().unwrap())
}

#[tokio::test]
async fn status_shows_every_phase_and_one_run_in_detail() {
    let (b, dir) = local();
    scenario::status_shows_every_phase_and_one_run_in_detail(&b, dir.path()).await;
}

#[tokio::test]
async fn logs_print_the_chunks_in_order() {
    let (b, dir) = local();
    scenario::logs_print_the_chunks_in_order(&b, dir.path()).await;
}

#[tokio::test]
async fn logs_follow_picks_up_new_chunks_until_the_run_ends() {
    let (b, _dir) = local();
    scenario::logs_follow_picks_up_new_chunks_until_the_run_ends(&b).await;
}

#[tokio::test]
async fn pull_brings_outputs_into_the_project_and_only_changed_files_again() {
    let (b, dir) = local();
    scenario::pull_brings_outputs_into_the_project_and_only_changed_files_again(
        &b,
        &dir.path().join("proj"),
        &dir.path().join("elsewhere"),
    )
    .await;
}

#[tokio::test]
async fn pull_of_a_damaged_output_fails_naming_it_and_keeps_the_local_file() {
    let (b, dir) = local();
    let root = b
        ._keep
        .downcast_ref::<tempfile::TempDir>()
        .unwrap()
        .path()
        .to_path_buf();
    scenario::pull_of_a_damaged_output_fails_naming_it_and_keeps_the_local_file(
        &b,
        &dir.path().join("proj"),
        |key, bytes| std::fs::write(root.join(key), bytes).unwrap(),
    )
    .await;
}

#[tokio::test]
async fn pulled_outputs_get_the_users_umask() {
    let (b, dir) = local();
    scenario::pulled_outputs_get_the_users_umask(&b, &dir.path().join("proj")).await;
}

#[tokio::test]
async fn stop_writes_the_request_the_agent_polls_for() {
    let (b, dir) = local();
    scenario::stop_writes_the_request_the_agent_polls_for(&b, dir.path()).await;
}

#[tokio::test]
async fn report_writes_an_svg() {
    let (b, dir) = local();
    scenario::report_writes_an_svg(&b, dir.path()).await;
}

#[tokio::test]
async fn an_unknown_run_says_how_to_list_runs() {
    let (b, dir) = local();
    scenario::an_unknown_run_says_how_to_list_runs(&b, dir.path()).await;
}

#[tokio::test]
async fn latest_is_the_newest_run_of_this_project_folder() {
    let (b, dir) = local();
    scenario::latest_is_the_newest_run_of_this_project_folder(&b, dir.path()).await;
}

#[tokio::test]
async fn a_corrupt_status_breaks_only_its_own_row() {
    let (b, dir) = local();
    scenario::a_corrupt_status_breaks_only_its_own_row(&b, dir.path()).await;
}

#[tokio::test]
async fn a_local_runs_status_says_no_charge_and_checks_no_vm() {
    let (b, dir) = local();
    scenario::a_local_runs_status_says_no_charge_and_checks_no_vm(&b, dir.path()).await;
}
