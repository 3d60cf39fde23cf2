//! The GCS JSON backend's own machinery, beyond the `Storage` contract that
//! tests/storage_conformance.rs checks on every backend: gcp-storage-emulator for
//! resumable-upload resume (fake-gcs-server ignores `Content-Range` starts), a
//! connection-cutting proxy for faults, in-process servers for answers no emulator gives,
//! and Google's own Python client for wire compatibility in both directions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use cloudrun::retry::RetryPolicy;
use cloudrun::storage::gcs::{Endpoint, GcsStorage, SIMPLE_UPLOAD_MAX_BYTES};
use cloudrun::storage::{crc32c_to_base64, PutOptions, Storage, StorageError};
use cloudrun_testkit::{FakeGcs, FlakyProxy, StrictGcs, TempDir};

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        total_deadline: Duration::from_secs(5),
    }
}

fn store(host: &str, bucket: &str) -> GcsStorage {
    GcsStorage::new(bucket, Endpoint::emulator(host), None)
        .unwrap()
        .with_retry(fast_retry())
}

fn pattern(name: &str, size: usize) -> Vec<u8> {
    // Same bytes as tests/py/wire_check.py makes.
    let base: Vec<u8> = (0..251 * 7)
        .map(|i| ((i * 7 + name.len()) % 251) as u8)
        .collect();
    base.iter().copied().cycle().take(size).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[tokio::test]
async fn a_dropped_connection_mid_upload_resumes_from_the_committed_offset() {
    let gcs = StrictGcs::start();
    gcs.create_bucket("bkt");
    let proxy = FlakyProxy::start(gcs.port());
    let s = store(&proxy.host(), "bkt").with_chunk_bytes(256 << 10);
    let data = pattern("resume", SIMPLE_UPLOAD_MAX_BYTES as usize + 700_000);
    // Let the session start and the first chunks through, then cut in the middle of one.
    proxy.cut_after(3 * (256 << 10) + 100_000);
    let m = s
        .put_bytes(
            "ckpt/resume.bin",
            Bytes::from(data.clone()),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(proxy.cuts(), 1, "the proxy should have cut one connection");
    assert_eq!(m.size, data.len() as u64);
    assert_eq!(m.crc32c, Some(crc32c::crc32c(&data)));
    let back = s.get_bytes("ckpt/resume.bin").await.unwrap();
    assert_eq!(sha256_hex(&back), sha256_hex(&data));
}

#[tokio::test]
async fn a_dropped_connection_mid_download_resumes_from_the_byte_reached() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("bkt");
    let proxy = FlakyProxy::start(gcs.port());
    let s = store(&proxy.host(), "bkt");
    let data = pattern("dl", 5_000_000);
    s.put_bytes("big", Bytes::from(data.clone()), &PutOptions::default())
        .await
        .unwrap();
    proxy.cut_download_after(2_000_000);
    let back = s.get_bytes("big").await.unwrap();
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(sha256_hex(&back), sha256_hex(&data));
}

#[tokio::test]
async fn an_emulator_that_disappears_mid_upload_gives_an_error_and_no_half_object() {
    let mut gcs = FakeGcs::start();
    gcs.create_bucket("bkt");
    let proxy = FlakyProxy::start(gcs.port());
    // The first retry waits at least 250 ms: long enough for the test to take the server
    // away first, even on a loaded machine.
    let patient = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_millis(500),
        total_deadline: Duration::from_secs(5),
    };
    let s = store(&proxy.host(), "bkt")
        .with_chunk_bytes(1 << 20)
        .with_retry(patient);
    let data = Bytes::from(pattern("gone", 12 << 20));
    // The first chunk goes through; the connection carrying the second is cut.
    proxy.cut_after((1 << 20) + 200_000);
    let upload = {
        let data = data.clone();
        let s = s.clone();
        tokio::spawn(async move {
            s.put_bytes("ckpt/gone.bin", data, &PutOptions::default())
                .await
        })
    };
    while proxy.cuts() == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    gcs.stop();
    let err = upload.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Transport { .. }
                | StorageError::Http { .. }
                | StorageError::Integrity { .. }
        ),
        "{err}"
    );
    gcs.restart();
    assert!(
        s.head("ckpt/gone.bin").await.unwrap().is_none(),
        "no half object may be visible"
    );
    // Once the emulator is back, the same upload succeeds from scratch.
    let m = s
        .put_bytes("ckpt/gone.bin", data.clone(), &PutOptions::default())
        .await
        .unwrap();
    assert_eq!(m.size, data.len() as u64);
}

#[tokio::test]
async fn an_upload_the_server_finalises_short_is_removed_not_left_half() {
    // fake-gcs-server 1.54 finalises a resumable upload on a status query with whatever it
    // has; real GCS answers 308. Either way a short object must not survive.
    let gcs = FakeGcs::start();
    gcs.create_bucket("bkt");
    let proxy = FlakyProxy::start(gcs.port());
    let s = store(&proxy.host(), "bkt").with_chunk_bytes(1 << 20);
    let data = Bytes::from(pattern("short", 12 << 20));
    proxy.cut_after((1 << 20) + 200_000);
    let err = s
        .put_bytes("ckpt/short.bin", data, &PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Integrity { .. }), "{err}");
    assert!(s.head("ckpt/short.bin").await.unwrap().is_none());
}

#[tokio::test]
async fn google_python_client_reads_what_we_write_and_we_read_what_it_writes() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("bkt");
    let s = store(&gcs.host(), "bkt");
    let py = cloudrun_testkit::venv_python();
    let script = cloudrun_testkit::workspace_root().join("tests/py/wire_check.py");

    // Ours → theirs: a small object (multipart) and a large one (resumable).
    let ours = [
        ("ours/small.txt", 1_234usize),
        (
            "ours/large.bin",
            SIMPLE_UPLOAD_MAX_BYTES as usize + 1_048_577,
        ),
    ];
    let mut expect = BTreeMap::new();
    for (name, size) in ours {
        let data = pattern(name, size);
        let m = s
            .put_bytes(name, Bytes::from(data.clone()), &PutOptions::default())
            .await
            .unwrap();
        expect.insert(
            name.to_string(),
            (
                sha256_hex(&data),
                m.md5_base64.clone().unwrap(),
                crc32c_to_base64(m.crc32c.unwrap()),
            ),
        );
    }
    let out = std::process::Command::new(&py)
        .arg(&script)
        .args(["read", "bkt"])
        .args(ours.iter().map(|(n, _)| *n))
        .env("STORAGE_EMULATOR_HOST", gcs.host())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, (sha, md5, crc)) in &expect {
        assert_eq!(got[name]["sha256"], sha.as_str(), "{name}");
        assert_eq!(got[name]["md5"], md5.as_str(), "{name}");
        assert_eq!(got[name]["crc32c"], crc.as_str(), "{name}");
    }

    // Theirs → ours.
    let theirs = [
        ("theirs/small.bin", 999usize),
        ("theirs/large.bin", 20 << 20),
    ];
    let out = std::process::Command::new(&py)
        .arg(&script)
        .args(["write", "bkt"])
        .args(theirs.iter().map(|(n, sz)| format!("{n}={sz}")))
        .env("STORAGE_EMULATOR_HOST", gcs.host())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrote: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, size) in theirs {
        let data = s.get_bytes(name).await.unwrap();
        assert_eq!(data.len(), size);
        assert_eq!(wrote[name]["sha256"], sha256_hex(&data).as_str(), "{name}");
        let m = s.head(name).await.unwrap().unwrap();
        assert_eq!(
            wrote[name]["crc32c"],
            crc32c_to_base64(m.crc32c.unwrap()).as_str()
        );
        assert_eq!(wrote[name]["md5"], m.md5_base64.unwrap().as_str());
    }
}

#[tokio::test]
async fn create_only_puts_send_if_generation_match_zero_and_map_412() {
    // Neither emulator enforces upload preconditions everywhere (gcp-storage-emulator
    // ignores them; fake-gcs-server 1.54 ignores them on resumable uploads: the quirks of
    // tests/common/storage_suite.rs), so this is a contract test against an in-process
    // server that answers as GCS does, 412 when the object exists, and counts the calls.
    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<BTreeMap<String, String>>>>;
    async fn upload(
        State(seen): State<Seen>,
        Query(q): Query<BTreeMap<String, String>>,
    ) -> (StatusCode, String) {
        let mut seen = seen.lock().unwrap();
        let exists = seen.iter().any(|p| p.get("name") == q.get("name"));
        seen.push(q.clone());
        if exists && q.get("ifGenerationMatch").map(String::as_str) == Some("0") {
            return (
                StatusCode::PRECONDITION_FAILED,
                r#"{"error":{"code":412,"message":"At least one of the pre-conditions you specified did not hold.","errors":[{"reason":"conditionNotMet"}]}}"#.into(),
            );
        }
        // crc32c of "first" and "second" differ; answer with the crc of "first".
        let crc = crc32c_to_base64(crc32c::crc32c(b"first"));
        (
            StatusCode::OK,
            format!(
                r#"{{"name":"{}","size":"5","generation":"1","crc32c":"{crc}"}}"#,
                q["name"]
            ),
        )
    }
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/upload/storage/v1/b/bkt/o", axum::routing::post(upload))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let s = store(&host, "bkt");
    s.put_bytes(
        "lock",
        Bytes::from_static(b"first"),
        &PutOptions::create_only(),
    )
    .await
    .unwrap();
    let err = s
        .put_bytes(
            "lock",
            Bytes::from_static(b"other"),
            &PutOptions::create_only(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::PreconditionFailed { .. }),
        "{err}"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "a 412 is not retried");
    assert!(seen.iter().all(|q| q["ifGenerationMatch"] == "0"));
}

#[tokio::test]
async fn a_file_upload_streams_its_chunks_and_resumes_after_a_cut() {
    let gcs = StrictGcs::start();
    gcs.create_bucket("bkt");
    let proxy = FlakyProxy::start(gcs.port());
    let s = store(&proxy.host(), "bkt").with_chunk_bytes(1 << 20);
    let dir = TempDir::new("gcs-file-resume");
    let src = dir.path().join("ckpt.bin");
    let data = pattern("file-resume", SIMPLE_UPLOAD_MAX_BYTES as usize + 2_500_000);
    std::fs::write(&src, &data).unwrap();
    proxy.cut_after(3 * (1 << 20) + 300_000);
    let opts = PutOptions {
        crc32c: Some(crc32c::crc32c(&data)),
        ..PutOptions::default()
    };
    let m = s.put_file("ckpt/file.bin", &src, &opts).await.unwrap();
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(m.crc32c, Some(crc32c::crc32c(&data)));
    assert_eq!(
        sha256_hex(&s.get_bytes("ckpt/file.bin").await.unwrap()),
        sha256_hex(&data)
    );
}

#[tokio::test]
async fn bucket_location_of_a_missing_bucket_is_an_error_that_names_it() {
    // The location of a bucket that exists is a check of the conformance suite
    // (tests/storage_conformance.rs); a bucket that does not is GCS's own case.
    let fake = FakeGcs::start();
    let err = store(&fake.host(), "nosuchbkt")
        .bucket_location()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nosuchbkt"), "{err}");
}

#[tokio::test]
async fn a_download_with_no_checksum_to_check_is_refused_and_writes_nothing() {
    // Real GCS records a CRC32C for every object; a server that names none (neither in
    // `x-goog-hash` nor in the object resource) gets no trust: the download is an
    // integrity error and nothing is written. Neither emulator can be made to omit it, so
    // this is an in-process server.
    use axum::extract::Query;
    async fn object(Query(q): Query<BTreeMap<String, String>>) -> String {
        if q.get("alt").map(String::as_str) == Some("media") {
            "data".into()
        } else {
            r#"{"name":"k","bucket":"bkt","size":"4","generation":"1"}"#.into()
        }
    }
    let app = axum::Router::new().route("/storage/v1/b/bkt/o/{name}", axum::routing::get(object));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let s = store(&host, "bkt");
    let err = s.get_bytes("k").await.unwrap_err();
    assert!(
        matches!(&err, StorageError::Integrity { key, detail } if key == "k" && detail.contains("no CRC32C")),
        "{err}"
    );
    let dir = TempDir::new("gcs-no-crc");
    let dest = dir.path().join("k");
    std::fs::write(&dest, b"mine").unwrap();
    assert!(s.get_to_file("k", &dest).await.is_err());
    assert_eq!(std::fs::read(&dest).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
