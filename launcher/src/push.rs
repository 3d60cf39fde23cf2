//! The code push through the sync engine: scan the project folder (with a hash index in
//! the user's cache dir, so unchanged files are not hashed again), upload the blobs the
//! store lacks and write the run's manifest. A thin adapter: the engine is
//! `cloudrun::sync`.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use cloudrun::run_store::RunStore;
use cloudrun::storage::Storage;
use cloudrun::sync::{push_blobs, scan_tree, PushOptions, ScanOptions};
use sha2::Digest;

use crate::launch::{CodePusher, LaunchError, PushSummary};
use crate::plan::LaunchPlan;

/// Blob uploads in flight at once.
pub const PUSH_CONCURRENCY: usize = 16;

/// Pushes with `cloudrun::sync`.
#[derive(Debug, Clone, Default)]
pub struct SyncPusher {
    /// Where the hash index lives (`None`: hash everything every time).
    pub cache_dir: Option<PathBuf>,
    /// Draw a progress bar (only on a terminal).
    pub progress: bool,
}

impl SyncPusher {
    fn index_path(&self, root: &std::path::Path) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let key = hex::encode(sha2::Sha256::digest(root.to_string_lossy().as_bytes()));
        Some(dir.join(format!("index-{}.json", &key[..16])))
    }
}

impl SyncPusher {
    /// Push the tree under `root` and write the manifest of `run` (cloud and local runs).
    pub async fn push_code(
        &self,
        storage: Arc<dyn Storage>,
        root: &std::path::Path,
        layout: &cloudrun::Layout,
        run: &cloudrun::RunId,
    ) -> Result<PushSummary, LaunchError> {
        let root = root.to_path_buf();
        let opts = ScanOptions {
            index_path: self.index_path(&root),
            threads: 0,
        };
        let tree = tokio::task::spawn_blocking(move || scan_tree(&root, &opts))
            .await
            .map_err(|e| LaunchError::Push(format!("scan task failed: {e}")))?
            .map_err(|e| LaunchError::Push(format!("{e:#}")))?;
        if let Some(note) = &tree.ignored_note {
            tracing::info!("{note}");
        }
        let report = push_blobs(
            storage.clone(),
            layout,
            &tree,
            &PushOptions {
                concurrency: PUSH_CONCURRENCY,
                progress: self.progress,
            },
        )
        .await
        .map_err(|e| LaunchError::Push(format!("{e:#}")))?;
        RunStore::new(storage, layout.clone())
            .put_manifest(run, &report.manifest)
            .await?;
        Ok(PushSummary {
            files: report.files as u64,
            total_bytes: report.total_bytes,
            bytes_uploaded: report.bytes_uploaded,
        })
    }
}

#[async_trait(?Send)]
impl CodePusher for SyncPusher {
    async fn push(
        &self,
        storage: Arc<dyn Storage>,
        plan: &LaunchPlan,
    ) -> Result<PushSummary, LaunchError> {
        self.push_code(storage, &plan.project_dir, &plan.layout, &plan.run_id)
            .await
    }
}
