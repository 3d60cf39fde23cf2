//! A directory that plays a bucket, for `--local` runs and tests without a server.
//!
//! Object `a/b` is the file `<root>/a/b`, so a person can browse the "bucket" with `ls`.
//! Checksums, generation and custom metadata live in a sidecar
//! `<root>/.cloudrun-meta/<key>.json`. The sidecar is the store's record of the object,
//! as GCS's object resource is: a file whose size or mtime no longer match its sidecar was
//! changed behind the store's back, and a whole-object read checks its bytes against the
//! *recorded* CRC32C and size, so a damaged file is an [`StorageError::Integrity`] error
//! naming the object, never a download that silently replaces a good copy. (A file with
//! no sidecar at all was put there by hand; its checksums are computed when it is read.)
//! Writes go to a temporary file in `<root>/.cloudrun-tmp/` and are renamed into place,
//! so a reader never sees half an object; create-only writes use `link(2)`, which fails if
//! the name exists, so two writers cannot both win. The rename and the sidecar write are
//! one step under an exclusive `flock(2)` on `<root>/.cloudrun-lock`; a reader that finds
//! a file and its sidecar out of step takes the lock shared and looks again, so a write in
//! progress is never mistaken for damage.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{
    md5_to_base64, verify_stream, ByteStream, ObjectMeta, PutOptions, Storage, StorageError,
};

/// Directory (under the root) holding the metadata sidecars.
const META_DIR: &str = ".cloudrun-meta";
/// Directory (under the root) holding writes in progress.
const TMP_DIR: &str = ".cloudrun-tmp";
/// File (under the root) locked while an object and its sidecar change together.
const COMMIT_LOCK: &str = ".cloudrun-lock";
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
    /// The data file's inode: every write makes a new file, so this tells two writes of
    /// the same size apart even when the clock did not move between them.
    #[serde(default)]
    ino: Option<u64>,
    crc32c: u32,
    md5: String,
    generation: i64,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

impl Sidecar {
    /// Whether this record was written for the file as it is now (same size and mtime).
    fn describes(&self, st: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.size == st.len()
            && self.mtime_ns == mtime_ns(st)
            && self.ino.is_none_or(|ino| ino == st.ino())
    }
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

    /// The object's metadata, from its sidecar record; a file and record seen out of step
    /// (a write committing right now) are looked at again under the commit lock.
    fn meta_blocking(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path_of(key)?;
        let Some((st, side)) = self.snapshot(key, &path)? else {
            return Ok(None);
        };
        if side.as_ref().is_some_and(|s| !s.describes(&st)) {
            // Looked at again under the lock; any hashing happens after it is released,
            // so a damaged large file does not hold up every writer of the store.
            let again = {
                let _shared = self.lock(FlockArg::LockShared)?;
                self.snapshot(key, &path)?
            };
            return match again {
                Some((st, side)) => self.meta_of(key, &path, &st, side).map(Some),
                None => Ok(None),
            };
        }
        self.meta_of(key, &path, &st, side).map(Some)
    }

    /// [`Self::meta_blocking`] for a caller that already holds the commit lock.
    fn meta_unlocked(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path_of(key)?;
        match self.snapshot(key, &path)? {
            Some((st, side)) => self.meta_of(key, &path, &st, side).map(Some),
            None => Ok(None),
        }
    }

    /// The data file's metadata and its sidecar (if one can be read); `None` if there is
    /// no such object.
    fn snapshot(
        &self,
        key: &str,
        path: &Path,
    ) -> Result<Option<(std::fs::Metadata, Option<Sidecar>)>, StorageError> {
        let st = match std::fs::metadata(path) {
            Ok(st) if st.is_file() => st,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(path, e)),
        };
        Ok(Some((st, self.read_sidecar(key))))
    }

    fn read_sidecar(&self, key: &str) -> Option<Sidecar> {
        std::fs::read(self.sidecar_path(key))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// What the store says about an object: its sidecar record while the file still
    /// matches it (same size and mtime, or the same contents after a `touch`); otherwise,
    /// for a file put there by hand or changed behind the store's back, the file as it is
    /// now, so that writers (push, mirror) see the damage and replace it. Reads check
    /// against the record itself ([`Self::open_consistent`]), not against this.
    fn meta_of(
        &self,
        key: &str,
        path: &Path,
        st: &std::fs::Metadata,
        side: Option<Sidecar>,
    ) -> Result<ObjectMeta, StorageError> {
        let side = match side {
            Some(s) if s.describes(st) => s,
            side => {
                let (crc, md5, size) = hash_file(path)?;
                match side {
                    Some(s) if s.size == size && s.crc32c == crc => s,
                    _ => {
                        let mtime_ns = mtime_ns(st);
                        Sidecar {
                            size,
                            mtime_ns,
                            ino: None,
                            crc32c: crc,
                            md5,
                            generation: mtime_ns as i64,
                            content_type: None,
                            metadata: BTreeMap::new(),
                        }
                    }
                }
            }
        };
        Ok(ObjectMeta {
            key: key.to_string(),
            size: side.size,
            crc32c: Some(side.crc32c),
            md5_base64: Some(side.md5),
            generation: side.generation,
            updated: Some(DateTime::<Utc>::from(st.modified().unwrap_or(UNIX_EPOCH))),
            metadata: side.metadata,
        })
    }

    /// The commit lock, exclusive for a writer (created if needed), shared for a reader.
    /// A reader that cannot open the lock (a store no writer has used yet, a read-only
    /// directory) goes on without it: nothing can be committing there.
    fn lock(&self, arg: FlockArg) -> Result<Option<Flock<std::fs::File>>, StorageError> {
        let path = self.root.join(COMMIT_LOCK);
        let exclusive = matches!(arg, FlockArg::LockExclusive);
        let file = if exclusive {
            std::fs::create_dir_all(&self.root).map_err(|e| StorageError::io(&self.root, e))?;
            std::fs::File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        } else {
            std::fs::File::open(&path)
        };
        let file = match file {
            Ok(f) => f,
            Err(_) if !exclusive => return Ok(None),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        Flock::lock(file, arg)
            .map(Some)
            .map_err(|(_, errno)| StorageError::io(&path, std::io::Error::from(errno)))
    }

    /// The data file opened for reading, its metadata and its sidecar, consistent with each
    /// other (looked at again under the commit lock if they were seen out of step).
    fn open_consistent(
        &self,
        key: &str,
    ) -> Result<(std::fs::File, std::fs::Metadata, Option<Sidecar>), StorageError> {
        let path = self.path_of(key)?;
        let open =
            || -> Result<(std::fs::File, std::fs::Metadata, Option<Sidecar>), StorageError> {
                let file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StorageError::NotFound { key: key.into() })
                    }
                    Err(e) => return Err(StorageError::io(&path, e)),
                };
                let st = file.metadata().map_err(|e| StorageError::io(&path, e))?;
                if !st.is_file() {
                    return Err(StorageError::NotFound { key: key.into() });
                }
                Ok((file, st, self.read_sidecar(key)))
            };
        let first = open()?;
        if first.2.as_ref().is_none_or(|s| s.describes(&first.1)) {
            return Ok(first);
        }
        drop(first);
        let _shared = self.lock(FlockArg::LockShared)?;
        open()
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

        let _commit = self.lock(FlockArg::LockExclusive)?;
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
                let current = self.meta_unlocked(key)?.map(|m| m.generation);
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
            ino: Some(std::os::unix::fs::MetadataExt::ino(&st)),
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
            .meta_unlocked(key)?
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
        let this = self.clone();
        let k = key.to_string();
        let (file, st, side) = blocking(move || this.open_consistent(&k)).await?;
        let path = self.path_of(key)?;
        let mut file = tokio::fs::File::from_std(file);
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let reader: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match range {
            Some((s, e)) => {
                let size = st.len();
                let (start, end) = (s.min(size), e.unwrap_or(size).min(size));
                if start > 0 {
                    file.seek(std::io::SeekFrom::Start(start))
                        .await
                        .map_err(|e| StorageError::io(&path, e))?;
                }
                Box::new(file.take(end.saturating_sub(start)))
            }
            // The whole file, however long it has become: the check below compares it
            // with the recorded size.
            None => Box::new(file),
        };
        let p2 = path.clone();
        let s = tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK_BYTES);
        let s: ByteStream = Box::pin(futures::StreamExt::map(s, move |r| {
            r.map_err(|e| StorageError::io(&p2, e))
        }));
        if range.is_some() {
            return Ok(s);
        }
        // Checked against the record written with the object; a file put there by hand
        // has none, and only its length is checked.
        let (crc, len) = match &side {
            Some(rec) => (Some(rec.crc32c), rec.size),
            None => (None, st.len()),
        };
        let hint = format!(
            "{} no longer holds the bytes stored under this name (changed or damaged after \
             it was written; its record is {}): put the object again, or delete the record \
             to accept the file as it is",
            path.display(),
            self.sidecar_path(key).display()
        );
        let checked = verify_stream(key.to_string(), s, crc, Some(len));
        Ok(Box::pin(futures::StreamExt::map(checked, move |r| {
            r.map_err(|e| match e {
                StorageError::Integrity { key, detail } => StorageError::Integrity {
                    key,
                    detail: format!("{detail}; {hint}"),
                },
                other => other,
            })
        })))
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
        let this = self.clone();
        let key = key.to_string();
        blocking(move || {
            let path = this.path_of(&key)?;
            let _commit = this.lock(FlockArg::LockExclusive)?;
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    let _ = std::fs::remove_file(this.sidecar_path(&key));
                    Ok(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(StorageError::io(&path, e)),
            }
        })
        .await
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

    /// Rewrite an object's file behind the store's back (a new mtime, as an editor, a
    /// stray script or a damaged disk leaves it); its sidecar still holds the record.
    fn change_behind_the_stores_back(s: &LocalStorage, key: &str, data: &[u8]) {
        std::fs::write(s.root().join(key), data).unwrap();
    }

    #[tokio::test]
    async fn a_file_changed_behind_the_stores_back_fails_against_its_recorded_checksum() {
        let (d, s) = store();
        let key = "runs/r/outputs/model/weights.pt";
        let mut opts = PutOptions::default();
        opts.metadata
            .insert(super::super::META_SHA256.into(), "sha-of-good".into());
        let put = s
            .put_bytes(key, Bytes::from_static(b"good weights"), &opts)
            .await
            .unwrap();
        change_behind_the_stores_back(&s, key, b"evil weights");

        // Writers see the file as it is (so that a push or a mirror replaces it) ...
        let head = s.head(key).await.unwrap().unwrap();
        assert_eq!(head.size, put.size);
        assert_ne!(head.crc32c, put.crc32c);
        assert!(!head.metadata.contains_key(super::super::META_SHA256));
        // ... and a read is checked against the record, naming the object and the fix.
        let err = s.get_bytes(key).await.unwrap_err();
        match &err {
            StorageError::Integrity { key: k, detail } => {
                assert_eq!(k, key);
                assert!(detail.contains(".cloudrun-meta/"), "{detail}");
                assert!(detail.contains("put the object again"), "{detail}");
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains(key), "{err}");

        // A download over a good local copy leaves it as it was, and no temporary file.
        let dest = d.path().join("project/model/weights.pt");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, b"older weights").unwrap();
        let err = s.get_to_file(key, &dest).await.unwrap_err();
        assert!(matches!(err, StorageError::Integrity { .. }), "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"older weights");
        assert_eq!(
            std::fs::read_dir(dest.parent().unwrap()).unwrap().count(),
            1
        );

        // Grown (the recorded prefix intact) is damage too, not a truncated success.
        change_behind_the_stores_back(&s, key, b"good weights and more");
        let err = s.get_bytes(key).await.unwrap_err();
        assert!(matches!(err, StorageError::Integrity { .. }), "{err}");

        // Putting the object again is the fix.
        s.put_bytes(key, Bytes::from_static(b"new weights"), &opts)
            .await
            .unwrap();
        assert_eq!(&s.get_bytes(key).await.unwrap()[..], b"new weights");
    }

    fn opts_metadata() -> BTreeMap<String, String> {
        BTreeMap::from([("step".to_string(), "7".to_string())])
    }

    #[tokio::test]
    async fn a_touched_file_and_a_file_put_there_by_hand_read_back() {
        let (_d, s) = store();
        let opts = PutOptions {
            metadata: opts_metadata(),
            ..PutOptions::default()
        };
        s.put_bytes("a", Bytes::from_static(b"same"), &opts)
            .await
            .unwrap();
        // Same bytes, another mtime (`touch`, a copy that kept nothing): still the object.
        let f = std::fs::File::options()
            .write(true)
            .open(s.root().join("a"))
            .unwrap();
        f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .unwrap();
        assert_eq!(&s.get_bytes("a").await.unwrap()[..], b"same");
        let m = s.head("a").await.unwrap().unwrap();
        assert_eq!(m.metadata, opts_metadata(), "the record still counts");

        // No sidecar at all: checksums are computed from the file.
        std::fs::write(s.root().join("by-hand.txt"), b"hand made").unwrap();
        let m = s.head("by-hand.txt").await.unwrap().unwrap();
        assert_eq!(m.crc32c, Some(crc32c::crc32c(b"hand made")));
        assert_eq!(&s.get_bytes("by-hand.txt").await.unwrap()[..], b"hand made");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_never_mistake_a_rewrite_in_progress_for_damage() {
        /// Rewrites raced against whole-object reads.
        const REWRITES: usize = 300;
        let (_d, s) = store();
        let versions: [&[u8]; 3] = [b"v1", b"version two", b"v3 is the longest of them all"];
        s.put_bytes(
            "status.json",
            Bytes::from_static(versions[0]),
            &PutOptions::default(),
        )
        .await
        .unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (s, done) = (s.clone(), done.clone());
            tokio::spawn(async move {
                let mut reads = 0usize;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let got = s.get_bytes("status.json").await.unwrap();
                    assert!(versions.contains(&&got[..]), "{got:?}");
                    s.head("status.json").await.unwrap().unwrap();
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..REWRITES {
            let v = versions[i % versions.len()];
            s.put_bytes("status.json", Bytes::from_static(v), &PutOptions::default())
                .await
                .unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(reader.await.unwrap() > 0);
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
}
