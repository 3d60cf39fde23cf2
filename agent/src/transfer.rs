//! The agent's two uses of the sync engine, behind narrow traits so the supervisor can be
//! tested with fakes that fail on demand: [`CodeSource`] (pull the run's code tree) and
//! [`Outputs`] (mirror the output dirs to `runs/<id>/outputs/<dir>/`).
//!
//! The real implementations call `cloudrun::sync` and own nothing else: the per-directory
//! [`MirrorState`] is persisted in the state dir after every pass, so an agent restart does
//! not upload every checkpoint again. Outputs are never deleted remotely.
//!
//! Outputs are the regular files inside the work tree. An output folder that is a symlink,
//! or that is reached through one (`out/model` with `out` a link), is not mirrored at all,
//! and symlinks inside an output folder are not followed: the agent runs as root, and a
//! job that links `model` to `/etc/ssh` must not get it to publish the VM's files. Each
//! skip is reported once, with its reason, in the agent's log and the job's log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cloudrun::retry::Budget;
use cloudrun::run_store::RunStore;
use cloudrun::sync::{self, MirrorState};
use cloudrun::{Layout, RunId, Storage};
use tokio::sync::Mutex;

/// Parallel transfers for code pulls and output mirroring.
pub const TRANSFER_CONCURRENCY: usize = sync::DEFAULT_CONCURRENCY;

/// What one pass over the output dirs did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputPass {
    pub uploaded: usize,
    pub bytes: u64,
    /// Some file was new, changed, or still being written (activity for the stall policy).
    pub changed: bool,
    /// The store holds every output file as it is now, each upload checked against the
    /// store's CRC32C. The final pass must be complete for the boot disk to be let go.
    pub complete: bool,
    /// What kept the pass from being complete, for the status.
    pub problems: Vec<String>,
    /// Entries not mirrored and why (symlinks, special files), each said once per run.
    pub skipped: Vec<String>,
}

/// Mirrors the output dirs.
#[async_trait]
pub trait Outputs: Send + Sync + std::fmt::Debug {
    async fn sync(&self) -> OutputPass;

    /// A pass that must end by `deadline` (the final sync): the storage client gets the
    /// deadline, so its retries end there too. Without a client to tell, a plain pass.
    async fn sync_by(&self, deadline: tokio::time::Instant) -> OutputPass {
        let _ = deadline;
        self.sync().await
    }
}

/// Brings the run's code into a directory.
#[async_trait]
pub trait CodeSource: Send + Sync + std::fmt::Debug {
    /// Materialise the code under `dest`, verified; a summary for the log.
    async fn pull(&self, dest: &Path) -> Result<String, String>;
}

/// The run's manifest and blobs, through `cloudrun::sync::materialise`.
#[derive(Debug)]
pub struct ManifestCode {
    pub storage: Arc<dyn Storage>,
    pub layout: Layout,
    pub run: RunId,
}

#[async_trait]
impl CodeSource for ManifestCode {
    async fn pull(&self, dest: &Path) -> Result<String, String> {
        let docs = RunStore::new(self.storage.clone(), self.layout.clone());
        let manifest = docs
            .manifest(&self.run)
            .await
            .map_err(|e| format!("reading the code manifest: {e}"))?
            .ok_or_else(|| {
                format!(
                    "the run has no code manifest ({} is missing)",
                    self.layout.manifest(&self.run)
                )
            })?;
        // materialise's future is not provably `Send` (a higher-ranked closure inside it),
        // so it runs to completion on a blocking thread of this runtime instead of being
        // polled across the async_trait boundary.
        let storage = self.storage.clone();
        let layout = self.layout.clone();
        let dest = dest.to_path_buf();
        let handle = tokio::runtime::Handle::current();
        let r = tokio::task::spawn_blocking(move || {
            handle.block_on(sync::materialise(
                storage,
                &layout,
                &manifest,
                &dest,
                TRANSFER_CONCURRENCY,
            ))
        })
        .await
        .map_err(|e| format!("the code pull task failed: {e}"))?
        .map_err(|e| format!("{e:#}"))?;
        Ok(format!(
            "{} files in place ({} downloaded, {} bytes; {} already there)",
            r.files, r.downloaded, r.bytes, r.unchanged
        ))
    }
}

/// One output dir: where it is locally and where it goes.
#[derive(Debug, Clone)]
struct OutputDir {
    /// The output folder's name under the job's directory (`checkpoint`, `out/model`).
    name: String,
    /// The job's directory; nothing between it and `local` may be a symlink.
    root: PathBuf,
    local: PathBuf,
    prefix: String,
    state_file: PathBuf,
}

/// The output dirs, mirrored through `cloudrun::sync::mirror_dir`.
#[derive(Debug)]
pub struct MirroredOutputs {
    storage: Arc<dyn Storage>,
    dirs: Vec<OutputDir>,
    /// One state per dir; the lock also keeps two passes from running at once.
    states: Mutex<Vec<MirrorState>>,
    /// Skips already reported (said once, not on every pass).
    reported: Mutex<std::collections::BTreeSet<String>>,
}

impl MirroredOutputs {
    /// Output dirs `names` under `workdir`, mirrored to `<outputs_prefix><name>/`, with
    /// their states kept in `state_dir`.
    pub fn new(
        storage: Arc<dyn Storage>,
        layout: &Layout,
        run: &RunId,
        workdir: &Path,
        names: &[String],
        state_dir: &Path,
    ) -> Self {
        let dirs: Vec<OutputDir> = names
            .iter()
            .map(|n| OutputDir {
                name: n.clone(),
                root: workdir.to_path_buf(),
                local: workdir.join(n),
                prefix: format!("{}{}/", layout.outputs_prefix(run), n),
                state_file: state_dir.join(format!("mirror-{}.json", n.replace('/', "_"))),
            })
            .collect();
        let states = dirs
            .iter()
            .map(|d| {
                std::fs::read(&d.state_file)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default()
            })
            .collect();
        MirroredOutputs {
            storage,
            dirs,
            states: Mutex::new(states),
            reported: Mutex::new(Default::default()),
        }
    }
}

#[async_trait]
impl Outputs for MirroredOutputs {
    async fn sync(&self) -> OutputPass {
        self.pass(Budget::default()).await
    }

    async fn sync_by(&self, deadline: tokio::time::Instant) -> OutputPass {
        self.pass(Budget::until(deadline)).await
    }
}

impl MirroredOutputs {
    /// One mirror pass over every output dir, each upload within `budget`.
    async fn pass(&self, budget: Budget) -> OutputPass {
        let mut states = self.states.lock().await;
        let mut pass = OutputPass {
            complete: true,
            ..OutputPass::default()
        };
        let mut skipped = Vec::new();
        for (d, state) in self.dirs.iter().zip(states.iter_mut()) {
            if let Some(why) = linked_on_the_way(&d.root, &d.name) {
                skipped.push(format!(
                    "output folder {}: {why}; it is not mirrored (outputs are the regular files inside the work tree)",
                    d.name
                ));
                continue;
            }
            match sync::mirror_dir_within(
                self.storage.clone(),
                &d.local,
                &d.prefix,
                state,
                TRANSFER_CONCURRENCY,
                budget,
            )
            .await
            {
                Ok(r) => {
                    for rel in &r.skipped {
                        skipped.push(skip_reason(&d.name, &d.local, rel));
                    }
                    pass.uploaded += r.uploaded.len();
                    pass.bytes += r.bytes_uploaded;
                    pass.changed |= !r.uploaded.is_empty() || !r.deferred_unstable.is_empty();
                    if !r.is_complete() {
                        pass.complete = false;
                        pass.problems.push(format!(
                            "{}: {} file(s) still changing, {} not verified",
                            d.local.display(),
                            r.deferred_unstable.len(),
                            r.unverified.len()
                        ));
                    }
                }
                Err(e) => {
                    pass.complete = false;
                    pass.problems.push(format!("{}: {e:#}", d.local.display()));
                }
            }
            if let Err(e) = save_json(&d.state_file, state) {
                tracing::warn!("could not save {}: {e}", d.state_file.display());
            }
        }
        let mut reported = self.reported.lock().await;
        pass.skipped = skipped
            .into_iter()
            .filter(|m| reported.insert(m.clone()))
            .collect();
        pass
    }
}

/// Why `root/name` is not a real folder inside `root`: a symlink on the way (or the
/// folder itself), or something that is not a folder. `None` when it is one or is
/// missing (a folder the job has not made yet has nothing to mirror).
fn linked_on_the_way(root: &Path, name: &str) -> Option<String> {
    let mut p = root.to_path_buf();
    for part in name.split('/') {
        p.push(part);
        match std::fs::symlink_metadata(&p) {
            Err(_) => return None,
            Ok(st) if st.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                let what = if p.ends_with(name) {
                    "is a symlink".to_string()
                } else {
                    format!("is reached through {}, a symlink", p.display())
                };
                return Some(format!("{what} to {target}, which is not followed"));
            }
            Ok(st) if !st.is_dir() => {
                return Some(format!("{} is not a folder", p.display()));
            }
            Ok(_) => {}
        }
    }
    None
}

/// The reason an entry `rel` of output folder `name` (at `local`) was not mirrored.
fn skip_reason(name: &str, local: &Path, rel: &str) -> String {
    let path = local.join(rel);
    let why = match std::fs::symlink_metadata(&path) {
        Ok(st) if st.file_type().is_symlink() => {
            let target = std::fs::read_link(&path)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            format!("a symlink to {target}, not followed (only regular files are outputs)")
        }
        Ok(st) if !st.is_file() && !st.is_dir() => {
            "not a regular file (a fifo, socket or device)".to_string()
        }
        Ok(_) => "a folder on its path turned into a symlink while it was being sent, or its name is not a plain UTF-8 path".to_string(),
        Err(_) => "gone, or reached through a symlink".to_string(),
    };
    format!("not mirrored: {name}/{rel}: {why}")
}

/// Write `value` as JSON to `path` atomically (temporary file, fsync, rename).
pub fn save_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudrun::storage::local::LocalStorage;

    #[tokio::test]
    async fn the_code_is_pulled_from_the_manifest_and_blobs() {
        let store = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(project.path().join("src")).unwrap();
        std::fs::write(project.path().join("main.py"), "print('hi')\n").unwrap();
        std::fs::write(project.path().join("src/model.py"), "x = 1\n").unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(store.path()));
        let layout = Layout::new("p");
        let run = RunId::parse("20261126-071500-ab12").unwrap();
        let tree = sync::scan_tree(project.path(), &sync::ScanOptions::default()).unwrap();
        sync::push_tree(
            storage.clone(),
            &layout,
            &tree,
            &layout.manifest(&run),
            &sync::PushOptions::default(),
        )
        .await
        .unwrap();
        let code = ManifestCode {
            storage,
            layout,
            run,
        };
        let summary = code.pull(dest.path()).await.unwrap();
        assert!(summary.starts_with("2 files"), "{summary}");
        assert_eq!(
            std::fs::read_to_string(dest.path().join("src/model.py")).unwrap(),
            "x = 1\n"
        );
        let missing = ManifestCode {
            run: RunId::parse("20261126-071500-ffff").unwrap(),
            ..code
        };
        assert!(missing.pull(dest.path()).await.is_err());
    }

    #[tokio::test]
    async fn outputs_are_mirrored_incrementally_and_a_missing_dir_is_empty() {
        let store = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(store.path()));
        let layout = Layout::new("p");
        let run = RunId::parse("20261126-071500-ab12").unwrap();
        let names = vec!["checkpoint".to_string(), "model".to_string()];
        let o = MirroredOutputs::new(
            storage.clone(),
            &layout,
            &run,
            work.path(),
            &names,
            state.path(),
        );
        let p = o.sync().await;
        assert!(p.complete && !p.changed, "{p:?}");
        std::fs::create_dir_all(work.path().join("checkpoint")).unwrap();
        std::fs::write(work.path().join("checkpoint/step-1.pt"), b"weights").unwrap();
        let p = o.sync().await;
        assert_eq!(
            (p.uploaded, p.changed, p.complete),
            (1, true, true),
            "{p:?}"
        );
        let key = format!("{}checkpoint/step-1.pt", layout.outputs_prefix(&run));
        assert_eq!(&storage.get_bytes(&key).await.unwrap()[..], b"weights");
        let p = o.sync().await;
        assert_eq!((p.uploaded, p.changed), (0, false));
        // A new agent process reads the saved state and does not upload again.
        let o2 = MirroredOutputs::new(storage, &layout, &run, work.path(), &names, state.path());
        assert_eq!(o2.sync().await.uploaded, 0);
    }

    #[tokio::test]
    async fn symlinked_output_folders_are_not_followed_and_each_skip_is_said_once() {
        let store = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("ssh_config"), b"Host *").unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(store.path()));
        let layout = Layout::new("p");
        let run = RunId::parse("20261126-071500-ab12").unwrap();
        let w = work.path();
        std::os::unix::fs::symlink(outside.path(), w.join("model")).unwrap();
        std::os::unix::fs::symlink(outside.path(), w.join("out")).unwrap();
        std::fs::create_dir_all(w.join("checkpoint")).unwrap();
        std::fs::write(w.join("checkpoint/step-1.pt"), b"weights").unwrap();
        std::os::unix::fs::symlink(outside.path(), w.join("checkpoint/etc")).unwrap();
        let names = vec![
            "checkpoint".to_string(),
            "model".to_string(),
            "out/sub".to_string(),
        ];
        std::fs::create_dir_all(outside.path().join("sub")).unwrap();
        std::fs::write(outside.path().join("sub/key"), b"secret").unwrap();
        let o = MirroredOutputs::new(storage.clone(), &layout, &run, w, &names, state.path());
        let p = o.sync().await;
        assert_eq!(p.uploaded, 1, "{p:?}");
        let keys: Vec<String> = storage
            .list(&layout.outputs_prefix(&run))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(
            keys,
            [format!(
                "{}checkpoint/step-1.pt",
                layout.outputs_prefix(&run)
            )]
        );
        let said = p.skipped.join("\n");
        assert_eq!(p.skipped.len(), 3, "{said}");
        assert!(
            said.contains("output folder model: is a symlink to")
                && said.contains(&outside.path().display().to_string()),
            "{said}"
        );
        assert!(
            said.contains("output folder out/sub: is reached through"),
            "{said}"
        );
        assert!(
            said.contains("checkpoint/etc: a symlink to") && said.contains("not followed"),
            "{said}"
        );
        assert!(
            o.sync().await.skipped.is_empty(),
            "said once, not every pass"
        );
    }

    /// A local store that notes the budget every upload was handed.
    #[derive(Debug)]
    struct BudgetSpy {
        inner: LocalStorage,
        budgets: std::sync::Mutex<Vec<Budget>>,
    }

    #[async_trait]
    impl Storage for BudgetSpy {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        async fn put_bytes(
            &self,
            key: &str,
            data: bytes::Bytes,
            opts: &cloudrun::storage::PutOptions,
        ) -> Result<cloudrun::ObjectMeta, cloudrun::StorageError> {
            self.budgets.lock().unwrap().push(opts.budget);
            self.inner.put_bytes(key, data, opts).await
        }
        async fn put_file(
            &self,
            key: &str,
            path: &Path,
            opts: &cloudrun::storage::PutOptions,
        ) -> Result<cloudrun::ObjectMeta, cloudrun::StorageError> {
            self.budgets.lock().unwrap().push(opts.budget);
            self.inner.put_file(key, path, opts).await
        }
        async fn get_stream(
            &self,
            key: &str,
            range: Option<(u64, Option<u64>)>,
        ) -> Result<cloudrun::storage::ByteStream, cloudrun::StorageError> {
            self.inner.get_stream(key, range).await
        }
        async fn head(
            &self,
            key: &str,
        ) -> Result<Option<cloudrun::ObjectMeta>, cloudrun::StorageError> {
            self.inner.head(key).await
        }
        async fn list(
            &self,
            prefix: &str,
        ) -> Result<Vec<cloudrun::ObjectMeta>, cloudrun::StorageError> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<bool, cloudrun::StorageError> {
            self.inner.delete(key).await
        }
    }

    #[tokio::test]
    async fn the_final_pass_hands_its_deadline_to_every_upload() {
        let store = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let spy = Arc::new(BudgetSpy {
            inner: LocalStorage::new(store.path()),
            budgets: Default::default(),
        });
        let names = vec!["checkpoint".to_string()];
        let o = MirroredOutputs::new(
            spy.clone(),
            &Layout::new("p"),
            &RunId::parse("20261126-071500-ab12").unwrap(),
            work.path(),
            &names,
            state.path(),
        );
        std::fs::create_dir_all(work.path().join("checkpoint")).unwrap();
        std::fs::write(work.path().join("checkpoint/a.pt"), "a").unwrap();
        assert!(o.sync().await.complete);
        std::fs::write(work.path().join("checkpoint/b.pt"), "b").unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        assert!(o.sync_by(deadline).await.complete);
        assert_eq!(
            *spy.budgets.lock().unwrap(),
            vec![Budget::default(), Budget::until(deadline)]
        );
    }
}
