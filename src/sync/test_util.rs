//! Helpers shared by the sync engine's tests.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// Write `data` to `root/rel`, creating directories.
pub fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
}

/// Set the mtime of `root/rel` to `secs_ago` seconds before now (outside the index's
/// racy window).
pub fn age(root: &Path, rel: &str, secs_ago: u64) {
    let f = std::fs::File::options()
        .write(true)
        .open(root.join(rel))
        .unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
        .unwrap();
}

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::storage::local::LocalStorage;
use crate::storage::{ByteStream, ObjectMeta, PutOptions, Storage, StorageError};

/// Runs inside `put_file`, before the upload, with the file's path.
pub type PutFileHook = Box<dyn Fn(&Path) + Send + Sync>;

/// A [`LocalStorage`] that counts calls, records what was written, can run a hook inside
/// `put_file` (to change a file mid-upload) and can add made-up objects to listings.
pub struct Recorder {
    pub inner: LocalStorage,
    pub puts: Mutex<Vec<String>>,
    pub put_bytes_total: Mutex<u64>,
    pub heads: AtomicUsize,
    pub lists: AtomicUsize,
    pub put_file_hook: Mutex<Option<PutFileHook>>,
    pub extra_listing: Mutex<Vec<ObjectMeta>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Recorder {
    pub fn new(root: PathBuf) -> Arc<Self> {
        Arc::new(Recorder {
            inner: LocalStorage::new(root),
            puts: Mutex::default(),
            put_bytes_total: Mutex::default(),
            heads: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
            put_file_hook: Mutex::default(),
            extra_listing: Mutex::default(),
        })
    }

    /// Keys written since the last call, sorted; resets the counters.
    pub fn take_puts(&self) -> (Vec<String>, u64) {
        let mut keys = std::mem::take(&mut *self.puts.lock().unwrap());
        keys.sort();
        let bytes = std::mem::take(&mut *self.put_bytes_total.lock().unwrap());
        self.heads.store(0, Ordering::SeqCst);
        self.lists.store(0, Ordering::SeqCst);
        (keys, bytes)
    }

    fn record(&self, key: &str, m: &Result<ObjectMeta, StorageError>) {
        if let Ok(m) = m {
            self.puts.lock().unwrap().push(key.to_string());
            *self.put_bytes_total.lock().unwrap() += m.size;
        }
    }
}

#[async_trait]
impl Storage for Recorder {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put_bytes(
        &self,
        key: &str,
        data: Bytes,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        let r = self.inner.put_bytes(key, data, opts).await;
        self.record(key, &r);
        r
    }

    async fn put_file(
        &self,
        key: &str,
        path: &Path,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        if let Some(hook) = &*self.put_file_hook.lock().unwrap() {
            hook(path);
        }
        let r = self.inner.put_file(key, path, opts).await;
        self.record(key, &r);
        r
    }

    async fn get_stream(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<ByteStream, StorageError> {
        self.inner.get_stream(key, range).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        let mut v = self.inner.list(prefix).await?;
        v.extend(self.extra_listing.lock().unwrap().iter().cloned());
        Ok(v)
    }

    async fn delete(&self, key: &str) -> Result<bool, StorageError> {
        self.inner.delete(key).await
    }
}

/// Every file under `dir` (relative path -> contents), for comparing trees.
pub fn read_tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for ent in std::fs::read_dir(&d).unwrap() {
            let ent = ent.unwrap();
            let ft = ent.file_type().unwrap();
            let p = ent.path();
            let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Paths (relative) of anything under `dir` whose name starts with `.cloudrun-`.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for ent in rd {
            let ent = ent.unwrap();
            if ent.file_name().to_string_lossy().starts_with(".cloudrun-") {
                out.push(ent.path().display().to_string());
            }
            if ent.file_type().unwrap().is_dir() {
                stack.push(ent.path());
            }
        }
    }
    out
}
