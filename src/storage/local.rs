//! A directory that plays a bucket, for `--local` runs and tests without a server.
//!
//! Object `a/b` is the file `<root>/a/b`, so a person can browse the "bucket" with `ls`.
//! Checksums, generation and custom metadata live in a sidecar
//! `<root>/.cloudrun-meta/<key>.json`, written after the data and trusted only while it
//! matches the file's size and mtime (otherwise they are recomputed). Writes go to a
//! temporary file in `<root>/.cloudrun-tmp/` and are renamed into place, so a reader
//! never sees half an object; create-only writes use `link(2)`, which fails if the name
//! exists, so two writers cannot both win.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    md5_to_base64, verify_stream, ByteStream, ObjectMeta, PutOptions, Storage, StorageError,
};

/// Directory (under the root) holding the metadata sidecars.
const META_DIR: &str = ".cloudrun-meta";
/// Directory (under the root) holding writes in progress.
const TMP_DIR: &str = ".cloudrun-tmp";
/// Read buffer for hashing and streaming files.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// A bucket backed by a local directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    size: u64,
    mtime_ns: i128,
    crc32c: u32,
    md5: String,
    generation: i64,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

impl LocalStorage {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStorage { root: root.into() }
    }

    /// The directory standing in for the bucket.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        crate::manifest::validate_relative_path(key).map_err(|e| StorageError::InvalidKey {
            key: key.into(),
            why: e.to_string(),
        })?;
        if key.starts_with(".cloudrun-") {
            return Err(StorageError::InvalidKey {
                key: key.into(),
                why: "names starting with .cloudrun- are reserved by the local store".into(),
            });
        }
        Ok(self.root.join(key))
    }

    fn sidecar_path(&self, key: &str) -> PathBuf {
        self.root.join(META_DIR).join(format!("{key}.json"))
    }

    fn meta_blocking(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path_of(key)?;
        let st = match std::fs::metadata(&path) {
            Ok(st) if st.is_file() => st,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        let mtime_ns = mtime_ns(&st);
        let side: Option<Sidecar> = std::fs::read(self.sidecar_path(key))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|s: &Sidecar| s.size == st.len() && s.mtime_ns == mtime_ns);
        let side = match side {
            Some(s) => s,
            None => {
                // Written by hand, or the sidecar is stale: recompute.
                let (crc, md5, size) = hash_file(&path)?;
                Sidecar {
                    size,
                    mtime_ns,
                    crc32c: crc,
                    md5,
                    generation: mtime_ns as i64,
                    content_type: None,
                    metadata: BTreeMap::new(),
                }
            }
        };
        Ok(Some(ObjectMeta {
            key: key.to_string(),
            size: side.size,
            crc32c: Some(side.crc32c),
            md5_base64: Some(side.md5),
            generation: side.generation,
            updated: Some(DateTime::<Utc>::from(st.modified().unwrap_or(UNIX_EPOCH))),
            metadata: side.metadata,
        }))
    }

    /// Write from `src` (a reader) to `key`; the common path of both puts.
    fn put_blocking(
        &self,
        key: &str,
        src: &mut dyn Read,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        let dest = self.path_of(key)?;
        let tmp_dir = self.root.join(TMP_DIR);
        std::fs::create_dir_all(&tmp_dir).map_err(|e| StorageError::io(&tmp_dir, e))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(&tmp_dir).map_err(|e| StorageError::io(&tmp_dir, e))?;
        let mut crc = 0u32;
        let mut md5 = <md5::Md5 as md5::Digest>::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        loop {
            let n = src.read(&mut buf).map_err(|e| StorageError::io(&dest, e))?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            md5::Digest::update(&mut md5, &buf[..n]);
            size += n as u64;
            tmp.write_all(&buf[..n])
                .map_err(|e| StorageError::io(tmp.path(), e))?;
        }
        if opts.crc32c.is_some_and(|want| want != crc) {
            // As GCS does when told the checksum up front: refuse, store nothing.
            return Err(StorageError::Integrity {
                key: key.into(),
                detail: "the content does not match the CRC32C it was sent with".into(),
            });
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| StorageError::io(tmp.path(), e))?;
        let parent = dest.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(parent).map_err(|e| StorageError::io(parent, e))?;

        match opts.if_generation_match {
            Some(0) => {
                // link(2) fails if the name exists: an atomic create-only.
                if let Err(e) = std::fs::hard_link(tmp.path(), &dest) {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        return Err(StorageError::PreconditionFailed { key: key.into() });
                    }
                    return Err(StorageError::io(&dest, e));
                }
            }
            Some(want) => {
                let current = self.meta_blocking(key)?.map(|m| m.generation);
                if current != Some(want) {
                    return Err(StorageError::PreconditionFailed { key: key.into() });
                }
                tmp.persist(&dest)
                    .map_err(|e| StorageError::io(&dest, e.error))?;
            }
            None => {
                tmp.persist(&dest)
                    .map_err(|e| StorageError::io(&dest, e.error))?;
            }
        }
        let st = std::fs::metadata(&dest).map_err(|e| StorageError::io(&dest, e))?;
        let side = Sidecar {
            size,
            mtime_ns: mtime_ns(&st),
            crc32c: crc,
            md5: md5_to_base64(&md5::Digest::finalize(md5)),
            generation: next_generation(),
            content_type: opts.content_type.clone(),
            metadata: opts.metadata.clone(),
        };
        let side_path = self.sidecar_path(key);
        write_atomic(
            &side_path,
            &serde_json::to_vec(&side).unwrap_or_default(),
            &tmp_dir,
        )?;
        let meta = self
            .meta_blocking(key)?
            .ok_or_else(|| StorageError::NotFound { key: key.into() })?;
        if meta.crc32c != Some(crc) || meta.size != size {
            return Err(StorageError::Integrity {
                key: key.into(),
                detail: "the stored file does not match what was written".into(),
            });
        }
        Ok(meta)
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        // Walk only the directory that can hold matches.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        let mut keys = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
                Err(e) => return Err(StorageError::io(&dir, e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| StorageError::io(&dir, e))?;
                let path = ent.path();
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let Some(rel) = rel.to_str() else { continue };
                if rel.starts_with(".cloudrun-") {
                    continue;
                }
                let ft = ent.file_type().map_err(|e| StorageError::io(&path, e))?;
                if ft.is_dir() {
                    let as_dir = format!("{rel}/");
                    if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                        stack.push(path);
                    }
                } else if ft.is_file() && rel.starts_with(prefix) {
                    keys.push(rel.to_string());
                }
            }
        }
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(m) = self.meta_blocking(&k)? {
                out.push(m);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put_bytes(
        &self,
        key: &str,
        data: Bytes,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        let this = self.clone();
        let key = key.to_string();
        let opts = opts.clone();
        blocking(move || this.put_blocking(&key, &mut data.as_ref(), &opts)).await
    }

    async fn put_file(
        &self,
        key: &str,
        path: &Path,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        let this = self.clone();
        let key = key.to_string();
        let path = path.to_path_buf();
        let opts = opts.clone();
        blocking(move || {
            let mut f = std::fs::File::open(&path).map_err(|e| StorageError::io(&path, e))?;
            this.put_blocking(&key, &mut f, &opts)
        })
        .await
    }

    async fn get_stream(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<ByteStream, StorageError> {
        let meta = self
            .head(key)
            .await?
            .ok_or_else(|| StorageError::NotFound { key: key.into() })?;
        let path = self.path_of(key)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageError::io(&path, e))?;
        let (start, end) = match range {
            Some((s, e)) => (s.min(meta.size), e.unwrap_or(meta.size).min(meta.size)),
            None => (0, meta.size),
        };
        if start > 0 {
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| StorageError::io(&path, e))?;
        }
        use tokio::io::AsyncReadExt;
        let limited = file.take(end.saturating_sub(start));
        let p2 = path.clone();
        let s = tokio_util::io::ReaderStream::with_capacity(limited, READ_CHUNK_BYTES);
        let s: ByteStream = Box::pin(futures::StreamExt::map(s, move |r| {
            r.map_err(|e| StorageError::io(&p2, e))
        }));
        Ok(match range {
            None => verify_stream(key.to_string(), s, meta.crc32c, Some(meta.size)),
            Some(_) => s,
        })
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let this = self.clone();
        let key = key.to_string();
        blocking(move || this.meta_blocking(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let this = self.clone();
        let prefix = prefix.to_string();
        blocking(move || this.list_blocking(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StorageError> {
        let path = self.path_of(key)?;
        let side = self.sidecar_path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                let _ = tokio::fs::remove_file(&side).await;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io(&path, e)),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Other(format!("local storage task failed: {e}")))?
}

fn mtime_ns(st: &std::fs::Metadata) -> i128 {
    st.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// A generation number that increases across writes in this process and across
/// processes (nanoseconds since the epoch, bumped past the last one handed out).
fn next_generation() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

fn hash_file(path: &Path) -> Result<(u32, String, u64), StorageError> {
    let mut f = std::fs::File::open(path).map_err(|e| StorageError::io(path, e))?;
    let mut crc = 0u32;
    let mut md5 = <md5::Md5 as md5::Digest>::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n = f.read(&mut buf).map_err(|e| StorageError::io(path, e))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        md5::Digest::update(&mut md5, &buf[..n]);
        size += n as u64;
    }
    Ok((crc, md5_to_base64(&md5::Digest::finalize(md5)), size))
}

fn write_atomic(path: &Path, data: &[u8], tmp_dir: &Path) -> Result<(), StorageError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StorageError::io(parent, e))?;
    }
    let mut tmp =
        tempfile::NamedTempFile::new_in(tmp_dir).map_err(|e| StorageError::io(tmp_dir, e))?;
    tmp.write_all(data)
        .map_err(|e| StorageError::io(tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| StorageError::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, LocalStorage) {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("bucket"));
        (d, s)
    }

    #[tokio::test]
    async fn put_get_head_list_delete() {
        let (_d, s) = store();
        let mut opts = PutOptions::default().with_content_type("text/plain");
        opts.metadata.insert("step".into(), "100".into());
        let m = s
            .put_bytes("runs/a/x.txt", Bytes::from_static(b"hello world"), &opts)
            .await
            .unwrap();
        assert_eq!(m.size, 11);
        assert_eq!(m.md5_base64.as_deref(), Some("XrY7u+Ae7tCTyyK7j1rNww=="));
        assert_eq!(
            m.crc32c.map(super::super::crc32c_to_base64).as_deref(),
            Some("yZRlqg==")
        );
        assert_eq!(m.metadata["step"], "100");
        assert_eq!(
            &s.get_bytes("runs/a/x.txt").await.unwrap()[..],
            b"hello world"
        );
        s.put_bytes("runs/b/y", Bytes::from_static(b"y"), &PutOptions::default())
            .await
            .unwrap();
        s.put_bytes("runsX", Bytes::from_static(b"z"), &PutOptions::default())
            .await
            .unwrap();
        let keys: Vec<_> = s
            .list("runs/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["runs/a/x.txt", "runs/b/y"]);
        let keys: Vec<_> = s
            .list("run")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["runs/a/x.txt", "runs/b/y", "runsX"]);
        assert!(s.delete("runs/a/x.txt").await.unwrap());
        assert!(!s.delete("runs/a/x.txt").await.unwrap());
        assert!(s.head("runs/a/x.txt").await.unwrap().is_none());
        assert!(s
            .get_bytes("runs/a/x.txt")
            .await
            .unwrap_err()
            .is_not_found());
    }

    #[tokio::test]
    async fn ranged_reads() {
        let (_d, s) = store();
        s.put_bytes(
            "k",
            Bytes::from_static(b"0123456789"),
            &PutOptions::default(),
        )
        .await
        .unwrap();
        use futures::StreamExt;
        let mut st = s.get_stream("k", Some((3, Some(7)))).await.unwrap();
        let mut got = Vec::new();
        while let Some(c) = st.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, b"3456");
    }

    #[tokio::test]
    async fn create_only_refuses_an_existing_object() {
        let (_d, s) = store();
        s.put_bytes("lock", Bytes::from_static(b"a"), &PutOptions::create_only())
            .await
            .unwrap();
        let err = s
            .put_bytes("lock", Bytes::from_static(b"b"), &PutOptions::create_only())
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::PreconditionFailed { .. }));
        assert_eq!(&s.get_bytes("lock").await.unwrap()[..], b"a");
    }

    #[tokio::test]
    async fn a_corrupted_object_fails_its_checksum() {
        let (_d, s) = store();
        s.put_bytes(
            "blob",
            Bytes::from_static(b"good data"),
            &PutOptions::default(),
        )
        .await
        .unwrap();
        let path = s.root().join("blob");
        let st = std::fs::metadata(&path).unwrap();
        // Flip bytes but keep size and mtime, as silent disk corruption would.
        std::fs::write(&path, b"evil data").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(st.modified().unwrap()).unwrap();
        let err = s.get_bytes("blob").await.unwrap_err();
        assert!(matches!(err, StorageError::Integrity { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_declared_crc32c_that_does_not_match_stores_nothing() {
        let (_d, s) = store();
        let opts = PutOptions {
            crc32c: Some(crc32c::crc32c(b"other")),
            ..PutOptions::default()
        };
        let err = s
            .put_bytes("k", Bytes::from_static(b"data"), &opts)
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Integrity { .. }), "{err}");
        assert!(s.head("k").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn keys_that_escape_the_root_are_refused() {
        let (_d, s) = store();
        for bad in ["../x", "/etc/passwd", "a/../../x", ".cloudrun-meta/x"] {
            let err = s
                .put_bytes(bad, Bytes::from_static(b"x"), &PutOptions::default())
                .await
                .unwrap_err();
            assert!(
                matches!(err, StorageError::InvalidKey { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn files_are_streamed_and_downloaded_atomically() {
        let (d, s) = store();
        let src = d.path().join("src.bin");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let m = s
            .put_file("big", &src, &PutOptions::default())
            .await
            .unwrap();
        assert_eq!(m.size, data.len() as u64);
        let dest = d.path().join("out/dir/big.bin");
        assert_eq!(
            s.get_to_file("big", &dest).await.unwrap(),
            data.len() as u64
        );
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }
}
