//! What [`RestCompute`] puts on the wire for path segments, read back from the Compute
//! emulator's record of the raw request path: project, zone and instance names go out
//! with RFC 3986's unreserved characters (`-`, `.`, `_`, `~`) as they are, the way
//! Google's own clients send them, and the emulator (like the real API) answers both that
//! and an over-encoded path alike.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cloudrun::compute::Compute;
use cloudrun::compute_rest::{RestCompute, StaticToken};
use cloudrun_testkit::gce::{GceConfig, GceEmulator};
use cloudrun_testkit::http_with;

fn emulator() -> GceEmulator {
    GceEmulator::start(GceConfig {
        boot: false,
        ..GceConfig::default()
    })
}

/// The emulator runs its own runtime, so the test itself is synchronous and drives the
/// client on a runtime of its own.
#[test]
fn zone_project_and_instance_names_go_out_unencoded() {
    let e = emulator();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c =
            RestCompute::new(&e.compute_url(), Arc::new(StaticToken::new("t").unwrap())).unwrap();
        let got = c
            .get_instance("test-proj", "us-central1-a", "trainer-20261126-071500-ab12")
            .await
            .unwrap();
        assert!(got.is_none(), "no such VM yet");
        c.list_instances(
            "test-proj",
            Some("europe-west4-b"),
            "labels.cloudrun-managed = true",
        )
        .await
        .unwrap();
        // Characters outside the unreserved set are still encoded.
        let _ = c.get_instance("test-proj", "us-central1-a", "a b/c").await;
    });

    let wire: Vec<String> = e.calls().into_iter().map(|c| c.wire_path).collect();
    assert_eq!(
        wire,
        [
            "/compute/v1/projects/test-proj/zones/us-central1-a/instances/trainer-20261126-071500-ab12",
            "/compute/v1/projects/test-proj/zones/europe-west4-b/instances",
            "/compute/v1/projects/test-proj/zones/us-central1-a/instances/a%20b%2Fc",
        ]
    );
    assert!(wire.iter().all(|p| !p.contains("%2D")), "{wire:?}");
}

#[test]
fn the_emulator_answers_plain_and_over_encoded_paths_alike() {
    let e = emulator();
    let auth = [("Authorization", "Bearer t")];
    let plain = "/compute/v1/projects/test-proj/zones/us-central1-a/instances";
    let over = "/compute/v1/projects/test%2Dproj/zones/us%2Dcentral1%2Da/instances";
    let (a, _, body_a) = http_with("GET", e.port(), plain, &auth, "").unwrap();
    let (b, _, body_b) = http_with("GET", e.port(), over, &auth, "").unwrap();
    assert_eq!((a, b), (200, 200), "{body_a} / {body_b}");
    assert_eq!(body_a, body_b);
    let calls = e.calls();
    assert_eq!(calls[0].path, calls[1].path, "both decode to the same path");
    assert_eq!(calls[1].wire_path, over);
}
