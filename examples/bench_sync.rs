//! The sync engine's side of `scripts/bench-sync.sh`: one operation per run, timed
//! inside the process, printed as one JSON line on stdout.
//!
//! ```text
//! bench_sync push   ROOT GCS_DIR INDEX_JSON   scan (with the index) + push, manifest under a new run
//! bench_sync mirror DIR  GCS_DIR              mirror DIR to GCS_DIR/ with a fresh state
//! bench_sync pull   GCS_DIR DIR               pull GCS_DIR/ into DIR
//! ```
//!
//! `GCS_DIR` is `gs://bucket/prefix`; set `STORAGE_EMULATOR_HOST` to aim at an emulator.
//! `BENCH_CONCURRENCY` overrides the number of transfers in flight, `BENCH_CHUNK_MIB` the
//! GCS backend's resumable chunk size.

use std::error::Error;
use std::path::Path;
use std::time::Instant;

use cloudrun::storage::gcs::{Endpoint, GcsStorage};
use cloudrun::sync::{
    mirror_dir, pull_prefix, push_tree, scan_tree, MirrorState, PushOptions, ScanOptions,
    DEFAULT_CONCURRENCY,
};
use cloudrun::{Layout, RunId, StoreUrl};

type Res<T> = Result<T, Box<dyn Error>>;

fn concurrency() -> usize {
    std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CONCURRENCY)
}

/// The store as the binaries open it; `BENCH_CHUNK_MIB` overrides the resumable chunk
/// size of the GCS backend, to see what it costs on a given server.
fn open(gcs_dir: &str) -> Res<(StoreUrl, std::sync::Arc<dyn cloudrun::Storage>)> {
    let url = StoreUrl::parse(gcs_dir)?;
    let chunk_mib: Option<usize> = std::env::var("BENCH_CHUNK_MIB")
        .ok()
        .and_then(|v| v.parse().ok());
    let storage: std::sync::Arc<dyn cloudrun::Storage> = match (&url, chunk_mib) {
        (StoreUrl::Gcs { bucket, .. }, Some(mib)) => std::sync::Arc::new(
            GcsStorage::new(bucket, Endpoint::from_env(), None)?.with_chunk_bytes(mib << 20),
        ),
        _ => cloudrun::storage::open(&url, None)?,
    };
    Ok((url, storage))
}

fn usage() -> Box<dyn Error> {
    "usage: bench_sync push ROOT GCS_DIR INDEX_JSON | mirror DIR GCS_DIR | pull GCS_DIR DIR".into()
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or_else(usage);
    let started = Instant::now();
    match arg(0)? {
        "push" => {
            let (url, storage) = open(arg(2)?)?;
            let layout = Layout::for_store(&url);
            let opts = ScanOptions {
                index_path: Some(arg(3)?.into()),
                threads: 0,
            };
            let root = arg(1)?.to_string();
            let tree =
                tokio::task::spawn_blocking(move || scan_tree(Path::new(&root), &opts)).await??;
            let scan_s = started.elapsed().as_secs_f64();
            let key = layout.manifest(&RunId::new(chrono::Utc::now()));
            let push_opts = PushOptions {
                concurrency: concurrency(),
                progress: false,
            };
            let r = push_tree(storage, &layout, &tree, &key, &push_opts).await?;
            println!(
                "{}",
                serde_json::json!({
                    "op": "push",
                    "wall_s": started.elapsed().as_secs_f64(),
                    "scan_s": scan_s,
                    "hashed_files": tree.hashed_files,
                    "hashed_bytes": tree.hashed_bytes,
                    "files": r.files,
                    "total_bytes": r.total_bytes,
                    "blobs_uploaded": r.blobs_uploaded,
                    "blob_bytes_uploaded": r.bytes_uploaded,
                    "manifest_bytes": r.manifest_bytes,
                    "bytes_sent": r.bytes_uploaded + r.manifest_bytes,
                })
            );
        }
        "mirror" => {
            let (url, storage) = open(arg(2)?)?;
            let mut state = MirrorState::default();
            let r = mirror_dir(
                storage,
                Path::new(arg(1)?),
                url.prefix(),
                &mut state,
                concurrency(),
            )
            .await?;
            println!(
                "{}",
                serde_json::json!({
                    "op": "mirror",
                    "wall_s": started.elapsed().as_secs_f64(),
                    "files": r.uploaded.len(),
                    "bytes": r.bytes_uploaded,
                    "complete": r.is_complete(),
                })
            );
        }
        "pull" => {
            let (url, storage) = open(arg(1)?)?;
            let r = pull_prefix(storage, url.prefix(), Path::new(arg(2)?), concurrency()).await?;
            println!(
                "{}",
                serde_json::json!({
                    "op": "pull",
                    "wall_s": started.elapsed().as_secs_f64(),
                    "files": r.downloaded.len(),
                    "bytes": r.bytes,
                    "unchanged": r.unchanged,
                })
            );
        }
        _ => return Err(usage()),
    }
    Ok(())
}
