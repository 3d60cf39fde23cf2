//! The sync engine against fake-gcs-server through the real GCS JSON backend: push,
//! re-push, materialise, mirror and pull, plus Google's own Python client reading what
//! the mirror wrote and the pull reading what that client wrote.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloudrun::retry::RetryPolicy;
use cloudrun::storage::gcs::{Endpoint, GcsStorage};
use cloudrun::storage::{Storage, META_FILE_MTIME, META_SHA256};
use cloudrun::sync::{
    materialise, mirror_dir, pull_prefix, push_tree, scan_tree, MirrorState, PushOptions,
    ScanOptions,
};
use cloudrun::Layout;
use cloudrun_testkit::{FakeGcs, TempDir};

fn store(gcs: &FakeGcs) -> Arc<dyn Storage> {
    gcs.create_bucket("bkt");
    let policy = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        total_deadline: Duration::from_secs(20),
    };
    Arc::new(
        GcsStorage::new("bkt", Endpoint::emulator(&gcs.host()), None)
            .unwrap()
            .with_retry(policy),
    )
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn pattern(seed: usize, size: usize) -> Vec<u8> {
    (0..size).map(|i| ((i * 31 + seed) % 253) as u8).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[tokio::test]
async fn push_dedups_and_materialise_rebuilds_the_tree_from_gcs() {
    let gcs = FakeGcs::start();
    let s = store(&gcs);
    let tmp = TempDir::new("sync-push");
    let root = tmp.path().join("proj");
    for i in 0..30 {
        write(
            &root,
            &format!("src/m{i}.py"),
            format!("x = {i}\n").as_bytes(),
        );
    }
    write(&root, "weights/init.bin", &pattern(1, 9 << 20)); // resumable upload
    write(&root, ".gitignore", b"*.log\n");
    write(&root, "debug.log", b"not sent");
    std::os::unix::fs::symlink("src/m0.py", root.join("entry.py")).unwrap();
    let layout = Layout::new("team/p");
    let opts = ScanOptions {
        index_path: Some(tmp.path().join("index.json")),
        threads: 0,
    };

    let tree = scan_tree(&root, &opts).unwrap();
    let key = "team/p/runs/r1/manifest.json";
    let first = push_tree(s.clone(), &layout, &tree, key, &PushOptions::default())
        .await
        .unwrap();
    assert_eq!(first.files, 33);
    assert_eq!(first.blobs_uploaded, 32);

    let tree = scan_tree(&root, &opts).unwrap();
    let second = push_tree(s.clone(), &layout, &tree, key, &PushOptions::default())
        .await
        .unwrap();
    assert_eq!((second.blobs_uploaded, second.bytes_uploaded), (0, 0));

    write(&root, "src/m3.py", b"x = 'three'\n");
    let tree = scan_tree(&root, &opts).unwrap();
    let third = push_tree(s.clone(), &layout, &tree, key, &PushOptions::default())
        .await
        .unwrap();
    assert_eq!((third.blobs_uploaded, third.bytes_uploaded), (1, 12));

    let manifest = cloudrun::sync::fetch_manifest(s.as_ref(), key)
        .await
        .unwrap();
    let out = tmp.path().join("out");
    let r = materialise(s.clone(), &layout, &manifest, &out, 8)
        .await
        .unwrap();
    assert_eq!(r.files, 33);
    for f in &tree.files {
        let got = out.join(&f.entry.path);
        match &f.entry.link {
            Some(t) => assert_eq!(std::fs::read_link(&got).unwrap(), Path::new(t)),
            None => assert_eq!(
                std::fs::read(&got).unwrap(),
                std::fs::read(&f.abs_path).unwrap(),
                "{}",
                f.entry.path
            ),
        }
    }
    assert!(!out.join("debug.log").exists());
}

#[tokio::test]
async fn mirror_and_pull_round_trip_through_gcs_and_googles_client_agrees() {
    let gcs = FakeGcs::start();
    let s = store(&gcs);
    let tmp = TempDir::new("sync-mirror");
    let ckpt = tmp.path().join("checkpoint");
    let big = pattern(7, 10 << 20);
    write(&ckpt, "model.pt", &big);
    write(&ckpt, "opt/state.pt", b"optimizer");
    let prefix = "p/runs/r1/outputs/checkpoint/";

    let mut state = MirrorState::default();
    let r = mirror_dir(s.clone(), &ckpt, prefix, &mut state, 4)
        .await
        .unwrap();
    assert_eq!(r.uploaded, ["model.pt", "opt/state.pt"]);
    assert!(r.is_complete());
    let again = mirror_dir(s.clone(), &ckpt, prefix, &mut state, 4)
        .await
        .unwrap();
    assert!(again.uploaded.is_empty());
    assert_eq!(again.unchanged, 2);
    let meta = s.head(&format!("{prefix}model.pt")).await.unwrap().unwrap();
    assert_eq!(meta.metadata[META_SHA256], sha256_hex(&big));
    assert!(meta.metadata[META_FILE_MTIME].parse::<u64>().is_ok());

    // Google's client reads the mirrored objects with its own checksum checks.
    let py = cloudrun_testkit::venv_python();
    let script = cloudrun_testkit::workspace_root().join("tests/py/wire_check.py");
    let out = std::process::Command::new(&py)
        .arg(&script)
        .args(["read", "bkt", &format!("{prefix}model.pt")])
        .env("STORAGE_EMULATOR_HOST", gcs.host())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen[format!("{prefix}model.pt")]["sha256"],
        sha256_hex(&big)
    );

    // And we pull what it writes (no cloudrun metadata, only the store's CRC32C).
    let out = std::process::Command::new(&py)
        .arg(&script)
        .args(["write", "bkt", &format!("{prefix}from_python.bin=300000")])
        .env("STORAGE_EMULATOR_HOST", gcs.host())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let dest = tmp.path().join("pulled");
    let p = pull_prefix(s.clone(), prefix, &dest, 4).await.unwrap();
    assert_eq!(
        p.downloaded,
        ["from_python.bin", "model.pt", "opt/state.pt"]
    );
    assert_eq!(std::fs::read(dest.join("model.pt")).unwrap(), big);
    assert_eq!(
        std::fs::read(dest.join("opt/state.pt")).unwrap(),
        b"optimizer"
    );
    assert_eq!(
        sha256_hex(&std::fs::read(dest.join("from_python.bin")).unwrap()),
        written[format!("{prefix}from_python.bin")]["sha256"]
    );
    let p = pull_prefix(s.clone(), prefix, &dest, 4).await.unwrap();
    assert!(p.downloaded.is_empty());
    assert_eq!(p.unchanged, 3);
}
