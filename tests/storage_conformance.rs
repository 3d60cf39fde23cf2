//! The [`Storage`] conformance suite (`tests/common/storage_suite.rs`) run against every
//! backend: the local directory store, and the GCS JSON backend against fake-gcs-server
//! and against gcp-storage-emulator, each with its known departures from GCS marked.
//! Tests of one backend's own machinery (resumable resume, faults, the Python client,
//! the local store's records) stay in `tests/storage_gcs.rs` and `src/storage/local.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use cloudrun::retry::RetryPolicy;
use cloudrun::storage::gcs::{Endpoint, GcsStorage};
use cloudrun::storage::local::LocalStorage;
use cloudrun_testkit::{FakeGcs, StrictGcs, TempDir};
use common::storage_suite::{conformance, Backend, Quirks, Wire};

/// The bucket every GCS backend is tested in.
const BUCKET: &str = "bkt";

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        total_deadline: Duration::from_secs(5),
    }
}

fn gcs_store(host: &str, chunk_bytes: usize) -> Arc<GcsStorage> {
    Arc::new(
        GcsStorage::new(BUCKET, Endpoint::emulator(host), None)
            .unwrap()
            .with_retry(fast_retry())
            .with_chunk_bytes(chunk_bytes),
    )
}

fn local_backend() -> Backend {
    let dir = TempDir::new("conformance-local");
    let root = dir.path().join("bucket");
    let file_root = root.clone();
    Backend {
        store: Arc::new(LocalStorage::new(root.clone())),
        quirks: Quirks::default(),
        wire: Wire::Local { root },
        location: None,
        object_file: Box::new(move |key| file_root.join(key)),
        scratch: TempDir::new("conformance-local-scratch"),
        _keep: Box::new(dir),
    }
}

fn fake_gcs_backend() -> Backend {
    let gcs = Arc::new(FakeGcs::start());
    gcs.create_bucket(BUCKET);
    let files = gcs.clone();
    Backend {
        // fake-gcs-server recomputes both hashes over the whole buffer on every chunk:
        // chunks of a few MiB keep that cheap.
        store: gcs_store(&gcs.host(), 4 << 20),
        quirks: Quirks {
            ignores_preconditions_on_resumable: true,
            ..Quirks::default()
        },
        wire: Wire::Gcs {
            port: gcs.port(),
            bucket: BUCKET.into(),
        },
        location: Some("US-CENTRAL1"),
        object_file: Box::new(move |key| files.object_file(BUCKET, key)),
        scratch: TempDir::new("conformance-fake-gcs"),
        _keep: Box::new(gcs),
    }
}

fn strict_gcs_backend() -> Backend {
    let gcs = Arc::new(StrictGcs::start_on_disk());
    gcs.create_bucket(BUCKET);
    let files = gcs.clone();
    Backend {
        // gcp-storage-emulator's resumable path is quadratic in the chunk count.
        store: gcs_store(&gcs.host(), 8 << 20),
        quirks: Quirks {
            ignores_preconditions_on_multipart: true,
            ignores_preconditions_on_resumable: true,
            lists_in_one_page: true,
            refuses_mismatched_crc32c_on_resumable: true,
        },
        wire: Wire::Gcs {
            port: gcs.port(),
            bucket: BUCKET.into(),
        },
        location: Some("US"),
        object_file: Box::new(move |key| files.object_file(BUCKET, key)),
        scratch: TempDir::new("conformance-strict-gcs"),
        _keep: Box::new(gcs),
    }
}

conformance!(local, crate::local_backend);
conformance!(fake_gcs_server, crate::fake_gcs_backend);
conformance!(gcp_storage_emulator, crate::strict_gcs_backend);
