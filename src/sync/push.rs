//! Pushing a scanned tree: content-addressed blobs the store lacks, then the manifest.
//!
//! Finding what the store already has costs either one `list` of `blobs/` (one request per
//! 1,000 blobs in the store) or one `head` per distinct blob of the tree. A project of a
//! few thousand files against a store of a few thousand blobs is a handful of list pages
//! versus thousands of heads, so the list wins, except for a tiny tree (at most
//! [`HEAD_PROBE_MAX_BLOBS`] blobs), whose heads all go out in one parallel wave and do not
//! grow with the store. Either way the answer is only an optimisation: blobs are written
//! create-only, and "it already exists" counts as done.
//!
//! A blob's name is the hash of the scanned contents, so the bytes actually sent are
//! checked against the scan (SHA-256 for small files read into memory, the store's
//! CRC32C for large streamed ones): a file edited since the scan is an error, never a
//! blob whose contents do not match its name.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{progress_bar, sha256_hex, ScannedFile, ScannedTree, SyncError, DEFAULT_CONCURRENCY};
use crate::layout::Layout;
use crate::manifest::Manifest;
use crate::storage::{ObjectMeta, PutOptions, Storage, StorageError};

/// Trees with at most this many distinct blobs ask the store about each (`head`, in
/// parallel) instead of listing all of `blobs/`: one wave of requests at the default
/// concurrency, whatever the store's size.
pub const HEAD_PROBE_MAX_BLOBS: usize = 16;

/// Files up to this size are read into memory and checked against their SHA-256 before
/// they are sent; larger ones are streamed and checked through the store's CRC32C.
const IN_MEMORY_UPLOAD_MAX_BYTES: u64 = 8 << 20;

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Blob uploads in flight at once (0 is taken as 1).
    pub concurrency: usize,
    /// Draw a progress bar on stderr (only if it is a terminal).
    pub progress: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            concurrency: DEFAULT_CONCURRENCY,
            progress: false,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// The manifest written to the manifest key.
    pub manifest: Manifest,
    /// Entries in the manifest (files and symlinks).
    pub files: usize,
    /// Their total size.
    pub total_bytes: u64,
    /// Blobs this push wrote.
    pub blobs_uploaded: usize,
    /// Bytes of those blobs.
    pub bytes_uploaded: u64,
    /// Distinct blobs the store already had.
    pub blobs_present: usize,
    /// Size of the manifest object.
    pub manifest_bytes: u64,
}

/// One blob to send: the file to read it from, and the generation to replace if the store
/// holds a damaged copy (`None`: create-only).
struct Upload<'a> {
    file: &'a ScannedFile,
    replace_generation: Option<i64>,
}

/// Upload the blobs of `tree` that the store lacks, then the manifest to `manifest_key`.
/// (A run's code manifest goes through [`crate::run_store::RunStore::put_manifest`]
/// instead, after [`push_blobs`].)
pub async fn push_tree(
    storage: Arc<dyn Storage>,
    layout: &Layout,
    tree: &ScannedTree,
    manifest_key: &str,
    opts: &PushOptions,
) -> Result<PushReport, SyncError> {
    let report = push_blobs(storage.clone(), layout, tree, opts).await?;
    storage
        .put_bytes(
            manifest_key,
            Bytes::from(report.manifest.to_json()),
            &PutOptions::default().with_content_type(crate::run_store::JSON_CONTENT_TYPE),
        )
        .await
        .map_err(|e| SyncError::storage(format!("writing the manifest {manifest_key}"), e))?;
    Ok(report)
}

/// Upload the blobs of `tree` that the store lacks; the manifest that names them is
/// returned, for the caller to write once every blob is in.
pub async fn push_blobs(
    storage: Arc<dyn Storage>,
    layout: &Layout,
    tree: &ScannedTree,
    opts: &PushOptions,
) -> Result<PushReport, SyncError> {
    let manifest = tree.manifest();
    manifest.validate()?;
    let concurrency = opts.concurrency.max(1);

    // Distinct blobs; symlinks are recorded in the manifest alone.
    let mut blobs: BTreeMap<&str, &ScannedFile> = BTreeMap::new();
    for f in tree.files.iter().filter(|f| f.entry.link.is_none()) {
        blobs.entry(f.entry.sha256.as_str()).or_insert(f);
    }

    let present = what_the_store_has(&storage, layout, &blobs, concurrency).await?;
    let mut uploads = Vec::new();
    let mut blobs_present = 0;
    for (sha, file) in &blobs {
        match present.get(*sha) {
            Some(m) if m.size == file.entry.size && m.crc32c.is_none_or(|c| c == file.crc32c) => {
                blobs_present += 1;
            }
            Some(m) => {
                tracing::warn!(
                    "blob {} in the store is damaged (size {}, want {}); replacing it",
                    m.key,
                    m.size,
                    file.entry.size
                );
                uploads.push(Upload {
                    file,
                    replace_generation: Some(m.generation),
                });
            }
            None => uploads.push(Upload {
                file,
                replace_generation: None,
            }),
        }
    }

    // Largest first: the big files set the finishing time, and the small ones fill the
    // gaps around them instead of leaving a few big uploads to run alone at the end.
    uploads.sort_by_key(|u| std::cmp::Reverse(u.file.entry.size));
    let to_send: u64 = uploads.iter().map(|u| u.file.entry.size).sum();
    let bar = progress_bar(opts.progress, to_send, "pushing");
    let sent: Vec<Option<u64>> = futures::stream::iter(uploads)
        .map(|u| {
            let storage = storage.clone();
            let bar = bar.clone();
            async move {
                let r = upload_blob(storage.as_ref(), layout, &u).await;
                bar.inc(u.file.entry.size);
                r
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    bar.finish_and_clear();
    let blobs_uploaded = sent.iter().flatten().count();
    let bytes_uploaded = sent.iter().flatten().sum();
    // Someone else wrote these between our look and our write: present after all.
    let blobs_present = blobs_present + sent.iter().filter(|s| s.is_none()).count();

    let manifest_bytes = manifest.to_json().len() as u64;

    Ok(PushReport {
        files: manifest.entries.len(),
        total_bytes: manifest.total_bytes(),
        manifest,
        blobs_uploaded,
        bytes_uploaded,
        blobs_present,
        manifest_bytes,
    })
}

/// The store's view of the blobs the tree needs, by SHA-256 (absent ones are missing).
async fn what_the_store_has(
    storage: &Arc<dyn Storage>,
    layout: &Layout,
    blobs: &BTreeMap<&str, &ScannedFile>,
    concurrency: usize,
) -> Result<BTreeMap<String, ObjectMeta>, SyncError> {
    let prefix = layout.blobs_prefix();
    if blobs.len() <= HEAD_PROBE_MAX_BLOBS {
        let heads: Vec<Option<ObjectMeta>> = futures::stream::iter(blobs.keys())
            .map(|sha| {
                let key = layout.blob(sha);
                async move {
                    storage
                        .head(&key)
                        .await
                        .map_err(|e| SyncError::storage(format!("looking for blob {key}"), e))
                }
            })
            .buffered(concurrency)
            .try_collect()
            .await?;
        return Ok(blobs
            .keys()
            .zip(heads)
            .filter_map(|(sha, m)| Some((sha.to_string(), m?)))
            .collect());
    }
    let listed = storage
        .list(&prefix)
        .await
        .map_err(|e| SyncError::storage(format!("listing {prefix}"), e))?;
    Ok(listed
        .into_iter()
        .filter_map(|m| {
            let sha = m.key.strip_prefix(&prefix)?.to_string();
            blobs.contains_key(sha.as_str()).then_some((sha, m))
        })
        .collect())
}

/// Send one blob. `Some(bytes)` if this call wrote it, `None` if it was already there.
async fn upload_blob(
    storage: &dyn Storage,
    layout: &Layout,
    u: &Upload<'_>,
) -> Result<Option<u64>, SyncError> {
    let f = u.file;
    let key = layout.blob(&f.entry.sha256);
    let opts = PutOptions {
        if_generation_match: Some(u.replace_generation.unwrap_or(0)),
        ..PutOptions::default().with_content_type("application/octet-stream")
    };
    let changed = || SyncError::FileChanged {
        path: f.abs_path.clone(),
    };
    let what = || format!("uploading {} as {key}", f.entry.path);
    let result = if f.entry.size <= IN_MEMORY_UPLOAD_MAX_BYTES {
        let data = tokio::fs::read(&f.abs_path)
            .await
            .map_err(|e| SyncError::io(&f.abs_path, e))?;
        if data.len() as u64 != f.entry.size || sha256_hex(&data) != f.entry.sha256 {
            return Err(changed());
        }
        storage.put_bytes(&key, Bytes::from(data), &opts).await
    } else {
        // GCS is told the CRC32C from the scan, so a file edited since is refused.
        let opts = PutOptions {
            crc32c: Some(f.crc32c),
            ..opts
        };
        match storage.put_file(&key, &f.abs_path, &opts).await {
            // The store refused bytes that no longer match the scan (nothing was kept).
            Err(StorageError::Integrity { .. }) => return Err(changed()),
            r => r,
        }
    };
    match result {
        Ok(meta) => {
            if meta.size != f.entry.size || meta.crc32c.is_some_and(|c| c != f.crc32c) {
                // The file changed between scan and upload: a blob whose contents do not
                // match its name must not stay.
                if let Err(e) = storage.delete(&key).await {
                    tracing::warn!("could not remove the mismatched blob {key}: {e}");
                }
                return Err(changed());
            }
            Ok(Some(f.entry.size))
        }
        Err(StorageError::PreconditionFailed { .. }) => Ok(None),
        Err(e) => Err(SyncError::storage(what(), e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::sync::test_util::{write, Recorder};
    use crate::sync::{scan_tree, ScanOptions};

    const MANIFEST_KEY: &str = "p/runs/r1/manifest.json";

    fn setup() -> (tempfile::TempDir, Arc<Recorder>, Layout) {
        let d = tempfile::tempdir().unwrap();
        let store = Recorder::new(d.path().join("bucket"));
        (d, store, Layout::new("p"))
    }

    async fn push(store: &Arc<Recorder>, layout: &Layout, root: &std::path::Path) -> PushReport {
        let tree = scan_tree(root, &ScanOptions::default()).unwrap();
        push_tree(
            store.clone(),
            layout,
            &tree,
            MANIFEST_KEY,
            &PushOptions::default(),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_second_push_uploads_no_blobs_and_one_changed_file_sends_one_blob() {
        let (d, store, layout) = setup();
        let root = d.path().join("proj");
        for i in 0..40 {
            write(
                &root,
                &format!("src/m{i}.py"),
                format!("x = {i}\n").as_bytes(),
            );
        }
        write(&root, "a/__init__.py", b"");
        write(&root, "b/__init__.py", b"");

        let first = push(&store, &layout, &root).await;
        assert_eq!(first.files, 42);
        assert_eq!(
            first.blobs_uploaded, 41,
            "the two empty files share one blob"
        );
        assert_eq!(first.bytes_uploaded, first.total_bytes);
        let (keys, _) = store.take_puts();
        assert_eq!(keys.len(), 42);
        assert!(keys.contains(&MANIFEST_KEY.to_string()));

        let second = push(&store, &layout, &root).await;
        assert_eq!(second.blobs_uploaded, 0);
        assert_eq!(second.bytes_uploaded, 0);
        assert_eq!(second.blobs_present, 41);
        let (keys, bytes) = store.take_puts();
        assert_eq!(keys, [MANIFEST_KEY]);
        assert_eq!(bytes, second.manifest_bytes);

        write(&root, "src/m7.py", b"x = 'seven'\n");
        let third = push(&store, &layout, &root).await;
        assert_eq!(third.blobs_uploaded, 1);
        assert_eq!(third.bytes_uploaded, 12);
        let (keys, bytes) = store.take_puts();
        let blob = layout.blob(&crate::sync::sha256_hex(b"x = 'seven'\n"));
        let mut want = vec![blob, MANIFEST_KEY.to_string()];
        want.sort();
        assert_eq!(keys, want);
        assert_eq!(bytes, 12 + third.manifest_bytes);

        let stored = crate::sync::fetch_manifest(store.as_ref(), MANIFEST_KEY)
            .await
            .unwrap();
        assert_eq!(stored.entries, third.manifest.entries);
    }

    #[tokio::test]
    async fn a_small_tree_probes_with_heads_and_a_large_one_lists_once() {
        let (d, store, layout) = setup();
        let small = d.path().join("small");
        for i in 0..3 {
            write(&small, &format!("f{i}"), format!("{i}").as_bytes());
        }
        push(&store, &layout, &small).await;
        assert_eq!(store.heads.load(Ordering::SeqCst), 3);
        assert_eq!(store.lists.load(Ordering::SeqCst), 0);
        store.take_puts();

        let large = d.path().join("large");
        for i in 0..(HEAD_PROBE_MAX_BLOBS + 1) {
            write(&large, &format!("f{i}"), format!("large {i}").as_bytes());
        }
        push(&store, &layout, &large).await;
        assert_eq!(store.heads.load(Ordering::SeqCst), 0);
        assert_eq!(store.lists.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn symlinks_travel_in_the_manifest_not_as_blobs() {
        let (d, store, layout) = setup();
        let root = d.path().join("proj");
        write(&root, "data.csv", b"1,2");
        std::os::unix::fs::symlink("data.csv", root.join("latest.csv")).unwrap();
        let r = push(&store, &layout, &root).await;
        assert_eq!(r.files, 2);
        assert_eq!(r.blobs_uploaded, 1);
    }

    #[tokio::test]
    async fn a_damaged_blob_in_the_store_is_replaced() {
        let (d, store, layout) = setup();
        let root = d.path().join("proj");
        write(&root, "main.py", b"print('hi')\n");
        push(&store, &layout, &root).await;
        let key = layout.blob(&crate::sync::sha256_hex(b"print('hi')\n"));
        // A truncated copy under the right name (e.g. written by a buggy tool).
        std::fs::write(store.inner.root().join(&key), b"print(").unwrap();
        let r = push(&store, &layout, &root).await;
        assert_eq!(r.blobs_uploaded, 1);
        assert_eq!(&store.get_bytes(&key).await.unwrap()[..], b"print('hi')\n");
    }

    #[tokio::test]
    async fn a_file_edited_after_the_scan_is_refused_and_leaves_no_blob() {
        let big: Vec<u8> = (0..(IN_MEMORY_UPLOAD_MAX_BYTES as usize + 1000))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut big_edited = big.clone();
        big_edited[10] ^= 0xff;
        // One small file (checked by SHA-256 before sending), one large (streamed,
        // checked by the store's CRC32C after).
        for (name, old, new) in [
            ("small.py", b"before".to_vec(), b"after!".to_vec()),
            ("big.bin", big, big_edited),
        ] {
            let (d, store, layout) = setup();
            let root = d.path().join("proj");
            write(&root, name, &old);
            let tree = scan_tree(&root, &ScanOptions::default()).unwrap();
            let sha = tree
                .files
                .iter()
                .find(|f| f.entry.path == name)
                .unwrap()
                .entry
                .sha256
                .clone();
            write(&root, name, &new);
            let err = push_tree(
                store.clone(),
                &layout,
                &tree,
                MANIFEST_KEY,
                &PushOptions::default(),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(err, SyncError::FileChanged { .. }),
                "{name}: {err}"
            );
            assert!(
                store.head(&layout.blob(&sha)).await.unwrap().is_none(),
                "{name}"
            );
            assert!(store.head(MANIFEST_KEY).await.unwrap().is_none());
        }
    }
}
