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
pub async fn push_tree(
    storage: Arc<dyn Storage>,
    layout: &Layout,
    tree: &ScannedTree,
    manifest_key: &str,
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

    let json = manifest.to_json();
    let manifest_bytes = json.len() as u64;
    storage
        .put_bytes(
            manifest_key,
            Bytes::from(json),
            &PutOptions::default().with_content_type("application/json"),
        )
        .await
        .map_err(|e| SyncError::storage(format!("writing the manifest {manifest_key}"), e))?;

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
        storage.put_file(&key, &f.abs_path, &opts).await
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
