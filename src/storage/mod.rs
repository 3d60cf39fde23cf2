//! Object storage: one narrow [`Storage`] trait with two backends, the GCS JSON API
//! ([`gcs::GcsStorage`]) and a local directory ([`local::LocalStorage`], for `--local`
//! and tests without a server).
//!
//! Keys are full object names inside one bucket (the [`crate::layout::Layout`] adds the
//! `GCS_DIR` prefix). Integrity is part of the contract, not an option: every write is
//! checked against the CRC32C the store reports, every whole-object read against the
//! object's CRC32C; a mismatch is [`StorageError::Integrity`], never silence.

pub mod gcs;
pub mod local;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};

use crate::retry::{Budget, Retry, Retryable};
use crate::store_url::StoreUrl;

/// A stream of object bytes. A whole-object stream ends with an
/// [`StorageError::Integrity`] item if the bytes do not match the object's CRC32C.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// Custom-metadata key under which gsutil, gcloud and rclone keep a file's mtime (Unix
/// seconds as decimal text); the mirror uses it too, so those tools agree with us.
pub const META_FILE_MTIME: &str = "goog-reserved-file-mtime";
/// Custom-metadata key holding the SHA-256 hex of an object's contents (set by the sync
/// engine on mirrored files).
pub const META_SHA256: &str = "cloudrun-sha256";

/// Mode a downloaded file is created with, before the umask (what `open(2)` with
/// `O_CREAT` and `cp` use for a plain file).
pub const DOWNLOAD_MODE: u32 = 0o666;

/// What the store says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// CRC32C (Castagnoli) of the contents. Always present on GCS.
    pub crc32c: Option<u32>,
    /// Base64 MD5 as GCS reports it (absent for composite objects).
    pub md5_base64: Option<String>,
    /// Changes on every content write.
    pub generation: i64,
    pub updated: Option<DateTime<Utc>>,
    pub metadata: BTreeMap<String, String>,
}

/// Options for a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub content_type: Option<String>,
    /// Custom metadata (`x-goog-meta-*` on GCS).
    pub metadata: BTreeMap<String, String>,
    /// Write only if the live object has this generation; `Some(0)` means "only if no
    /// object exists" (create-only).
    pub if_generation_match: Option<i64>,
    /// CRC32C of the whole content, when the caller already knows it (the sync engine
    /// hashes every file before sending it). GCS is told up front and refuses an upload
    /// that does not match, so a file that changes mid-upload never lands.
    pub crc32c: Option<u32>,
    /// What the write may spend, retries included, across all its requests (a
    /// resumable upload's session, chunks and status queries share it). The default is
    /// the client's retry policy; [`Budget::once`] is one attempt, [`Budget::until`] a
    /// deadline. A backend with nothing to retry (a local directory) ignores it.
    pub budget: Budget,
}

impl PutOptions {
    /// Create-only: fails with [`StorageError::PreconditionFailed`] if the key exists.
    pub fn create_only() -> Self {
        PutOptions {
            if_generation_match: Some(0),
            ..PutOptions::default()
        }
    }

    /// With a content type.
    pub fn with_content_type(mut self, ct: &str) -> Self {
        self.content_type = Some(ct.to_string());
        self
    }

    /// With a retry budget (one attempt, or a deadline).
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{key}: no such object")]
    NotFound { key: String },
    #[error("{key}: precondition failed (the object exists or changed)")]
    PreconditionFailed { key: String },
    #[error("{key}: integrity check failed: {detail}")]
    Integrity { key: String, detail: String },
    #[error("{method} {url}: HTTP {status}: {body}")]
    Http {
        method: String,
        url: String,
        status: u16,
        body: String,
        retry_after: Option<std::time::Duration>,
    },
    #[error("{method} {url}: {source}")]
    Transport {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not get a Google access token: {0}")]
    Auth(String),
    #[error("object name {key:?} is not allowed: {why}")]
    InvalidKey { key: String, why: String },
    #[error("unexpected reply from {url}: {detail}")]
    Protocol { url: String, detail: String },
    #[error("{0}")]
    Other(String),
}

impl StorageError {
    /// An I/O error on a path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether this is [`StorageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}

impl Retryable for StorageError {
    fn retry(&self) -> Retry {
        match self {
            StorageError::Http {
                status,
                retry_after,
                ..
            } if crate::retry::status_is_transient(*status) => match retry_after {
                Some(d) => Retry::After(*d),
                None => Retry::Yes,
            },
            StorageError::Transport { source, .. }
                if crate::retry::transport_is_transient(source) =>
            {
                Retry::Yes
            }
            StorageError::Auth(_) => Retry::Yes,
            _ => Retry::No,
        }
    }
}

/// A bucket (or a directory standing in for one).
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// `gs://bucket` or `file:///dir`, for messages.
    fn describe(&self) -> String;

    /// Write `data` to `key` and check the stored CRC32C.
    async fn put_bytes(
        &self,
        key: &str,
        data: Bytes,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, StorageError>;

    /// Write the file at `path` to `key`, streaming (resumable in chunks for large files on
    /// GCS, resuming from the committed offset after a dropped connection), and check the
    /// stored CRC32C against the bytes read.
    async fn put_file(
        &self,
        key: &str,
        path: &Path,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, StorageError>;

    /// Stream an object. With `range = None` the whole object is read and checked against
    /// its CRC32C (the last item is an error on mismatch); with `Some((start, end))` only
    /// bytes `start..end` (`end` exclusive, `None` = to the end) and no check.
    async fn get_stream(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<ByteStream, StorageError>;

    /// Size, checksums, generation and custom metadata; `None` if absent.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;

    /// Every object whose name starts with `prefix`, sorted by name (all pages).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;

    /// Delete `key`; `Ok(false)` if it was already absent.
    async fn delete(&self, key: &str) -> Result<bool, StorageError>;

    /// Where the bucket keeps its data (`buckets.get`), or `None` for a store that has no
    /// location (a local directory).
    async fn bucket_location(&self) -> Result<Option<crate::prices::BucketPlace>, StorageError> {
        Ok(None)
    }

    /// A whole object in memory, checked against its CRC32C.
    async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        let mut s = self.get_stream(key, None).await?;
        let mut buf = Vec::new();
        while let Some(chunk) = s.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(buf))
    }

    /// Download `key` into `dest` atomically: written to a temporary file beside it,
    /// checked against the store's recorded checksum, flushed, then renamed over `dest`;
    /// on any failure `dest` is as it was. The new file gets the mode a file created by
    /// the user gets (0666 less the umask), not the temporary file's 0600. Returns the
    /// number of bytes.
    async fn get_to_file(&self, key: &str, dest: &Path) -> Result<u64, StorageError> {
        use std::os::unix::fs::PermissionsExt;
        use tokio::io::AsyncWriteExt;
        let dir = dest.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| StorageError::io(dir, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".cloudrun-dl-")
            .permissions(std::fs::Permissions::from_mode(DOWNLOAD_MODE))
            .tempfile_in(dir)
            .map_err(|e| StorageError::io(dir, e))?;
        let (std_file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(std_file);
        let mut s = self.get_stream(key, None).await?;
        let mut n = 0u64;
        while let Some(chunk) = s.next().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| StorageError::io(dest, e))?;
        }
        file.flush().await.map_err(|e| StorageError::io(dest, e))?;
        file.sync_all()
            .await
            .map_err(|e| StorageError::io(dest, e))?;
        drop(file);
        tmp_path
            .persist(dest)
            .map_err(|e| StorageError::io(dest, e.error))?;
        Ok(n)
    }
}

/// The backend for a parsed `GCS_DIR`: a local directory, or GCS through `STORAGE_EMULATOR_HOST`
/// when set in the process environment (no auth) or the real endpoint with tokens from
/// `tokens`.
pub fn open(
    url: &StoreUrl,
    tokens: Option<Arc<dyn gcp_auth::TokenProvider>>,
) -> Result<Arc<dyn Storage>, StorageError> {
    open_at(url, gcs::Endpoint::from_env(), tokens)
}

/// [`open`] with the GCS endpoint chosen by the caller (ignored for a local directory).
pub fn open_at(
    url: &StoreUrl,
    endpoint: gcs::Endpoint,
    tokens: Option<Arc<dyn gcp_auth::TokenProvider>>,
) -> Result<Arc<dyn Storage>, StorageError> {
    match url {
        StoreUrl::Local { root } => Ok(Arc::new(local::LocalStorage::new(root.clone()))),
        StoreUrl::Gcs { bucket, .. } => {
            Ok(Arc::new(gcs::GcsStorage::new(bucket, endpoint, tokens)?))
        }
    }
}

/// CRC32C as GCS encodes it: base64 of the big-endian 4 bytes.
pub fn crc32c_to_base64(crc: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// Parse GCS's base64 CRC32C.
pub fn crc32c_from_base64(s: &str) -> Option<u32> {
    let b = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

/// MD5 as GCS encodes it: base64 of the 16 bytes.
pub fn md5_to_base64(digest: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Wrap a stream so that, when it ends, the CRC32C of everything it yielded is compared
/// with `expected`; a mismatch (or a short read against `expected_len`) becomes a final
/// error item.
pub fn verify_stream(
    key: String,
    inner: ByteStream,
    expected_crc: Option<u32>,
    expected_len: Option<u64>,
) -> ByteStream {
    struct St {
        inner: ByteStream,
        crc: u32,
        len: u64,
        done: bool,
    }
    let st = St {
        inner,
        crc: 0,
        len: 0,
        done: false,
    };
    Box::pin(futures::stream::unfold(st, move |mut st| {
        let key = key.clone();
        async move {
            if st.done {
                return None;
            }
            match st.inner.next().await {
                Some(Ok(b)) => {
                    st.crc = crc32c::crc32c_append(st.crc, &b);
                    st.len += b.len() as u64;
                    Some((Ok(b), st))
                }
                Some(Err(e)) => {
                    st.done = true;
                    Some((Err(e), st))
                }
                None => {
                    st.done = true;
                    if let Some(want) = expected_len {
                        if want != st.len {
                            return Some((
                                Err(StorageError::Integrity {
                                    key,
                                    detail: format!("read {} bytes, object has {want}", st.len),
                                }),
                                st,
                            ));
                        }
                    }
                    match expected_crc {
                        Some(want) if want != st.crc => {
                            let got = st.crc;
                            Some((
                                Err(StorageError::Integrity {
                                    key,
                                    detail: format!(
                                        "crc32c of the bytes read is {}, the store says {}",
                                        crc32c_to_base64(got),
                                        crc32c_to_base64(want)
                                    ),
                                }),
                                st,
                            ))
                        }
                        _ => None,
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_google_test_vector() {
        let crc = crc32c::crc32c(b"The quick brown fox jumps over the lazy dog\n");
        assert_eq!(crc32c_to_base64(crc), "/ieOcg==");
        assert_eq!(crc32c_from_base64("/ieOcg=="), Some(crc));
        assert_eq!(crc32c_from_base64("nope"), None);
        use md5::Digest;
        let md5 = md5::Md5::digest(b"The quick brown fox jumps over the lazy dog\n");
        assert_eq!(md5_to_base64(&md5), "N8S4ft/8XRmP9aGFzufuCQ==");
    }

    #[tokio::test]
    async fn verify_stream_flags_a_mismatch_at_the_end() {
        let data = Bytes::from_static(b"hello world");
        let good = crc32c::crc32c(&data);
        let mk = || -> ByteStream {
            Box::pin(futures::stream::iter(vec![
                Ok(data.slice(..5)),
                Ok(data.slice(5..)),
            ]))
        };
        let items: Vec<_> = verify_stream("k".into(), mk(), Some(good), Some(11))
            .collect()
            .await;
        assert!(items.iter().all(|r| r.is_ok()));
        let items: Vec<_> = verify_stream("k".into(), mk(), Some(good ^ 1), None)
            .collect()
            .await;
        assert!(matches!(
            items.last(),
            Some(Err(StorageError::Integrity { .. }))
        ));
        let items: Vec<_> = verify_stream("k".into(), mk(), None, Some(12))
            .collect()
            .await;
        assert!(matches!(
            items.last(),
            Some(Err(StorageError::Integrity { .. }))
        ));
    }
}
