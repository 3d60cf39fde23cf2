//! Mirroring a local directory (checkpoints, models) to plain objects `<prefix><relative
//! path>`, and pulling such a prefix back.
//!
//! The objects are ordinary files to every GCS tool: each carries
//! [`META_FILE_MTIME`] (Unix seconds, as gsutil, gcloud and rclone write it) and
//! [`META_SHA256`]. A prefix that does not end in `/` gets one.
//!
//! **Mirror** remembers what it sent in a [`MirrorState`] (size, mtime, SHA-256, CRC32C per
//! file; serde, so the agent can keep it across restarts) and sends only files whose size
//! or mtime moved. A file still being written is not recorded as sent: it is stat'ed
//! before hashing, after hashing and after the upload, and if anything moved it is
//! reported in [`MirrorReport::deferred_unstable`] and tried again on the next pass. When
//! the state does not know a file (a fresh state, e.g. after a restart, or after a pull),
//! the remote listing is consulted once per pass, and an object with the same size and
//! SHA-256 is adopted instead of sent again. Files deleted locally are **not** deleted
//! remotely: checkpoints are precious, and a training script that rotates its checkpoints
//! should not be able to erase the only copy. Symlinks and special files are not mirrored
//! (listed in [`MirrorReport::skipped`]), and no symlink is followed: not the directory
//! itself (a `model` that links to `/etc/ssh` mirrors nothing), not a link to a folder
//! inside it, and not a folder swapped for a link between the walk and the upload (each
//! file's path is checked for links again just before it is read and before it is sent).
//!
//! **Pull** downloads the objects under a prefix whose local copy is missing or differs
//! (size, then SHA-256 metadata or CRC32C), each atomically through
//! [`Storage::get_to_file`] (which checks the CRC32C), and refuses, before writing
//! anything, object names that would land outside the directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::{
    blocking, check_destination, digest_file, dir_prefix, mtime_ns, SyncError, TMP_PREFIX,
};
use crate::manifest::validate_relative_path;
use crate::retry::Budget;
use crate::storage::{ObjectMeta, PutOptions, Storage, StorageError, META_FILE_MTIME, META_SHA256};

/// Version of the [`MirrorState`] layout.
pub const MIRROR_STATE_SCHEMA: u32 = 1;

/// What a mirror has uploaded, by relative path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorState {
    #[serde(default)]
    pub schema: u32,
    /// The prefix these records belong to; a pass for another prefix starts afresh.
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub files: BTreeMap<String, MirroredFile>,
}

/// One file as it was when its upload was verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirroredFile {
    pub size: u64,
    /// ns since the epoch.
    pub mtime_ns: i64,
    pub sha256: String,
    pub crc32c: u32,
}

/// What one mirror pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorReport {
    /// Relative paths uploaded and verified, sorted.
    pub uploaded: Vec<String>,
    pub bytes_uploaded: u64,
    /// Files already in the store as they are now.
    pub unchanged: usize,
    /// Files that changed while being read or sent: not recorded, the next pass tries again.
    pub deferred_unstable: Vec<String>,
    /// Every object uploaded in this pass has the CRC32C of the bytes hashed locally.
    pub verified: bool,
    /// Files whose stored CRC32C did not match (they make `verified` false; not recorded,
    /// so the next pass sends them again).
    pub unverified: Vec<String>,
    /// Symlinks, special files and names that are not UTF-8: not mirrored, sorted. `.`
    /// when the directory itself is a symlink (nothing under it is mirrored).
    pub skipped: Vec<String>,
}

impl MirrorReport {
    /// Whether the store now holds every file of the directory as it is: nothing
    /// deferred, everything verified. The agent's final sync wants this.
    pub fn is_complete(&self) -> bool {
        self.verified && self.deferred_unstable.is_empty() && self.unverified.is_empty()
    }
}

/// What one pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Relative paths downloaded, sorted.
    pub downloaded: Vec<String>,
    pub bytes: u64,
    /// Objects whose local copy was already the same.
    pub unchanged: usize,
}

/// A regular file found under the mirrored directory.
struct Local {
    rel: String,
    abs: PathBuf,
    size: u64,
    mtime_ns: i64,
}

enum Outcome {
    Uploaded(String, MirroredFile),
    Adopted(String, MirroredFile),
    Deferred(String),
    Unverified(String),
    /// A folder on the file's path became a symlink after the walk: not read, not sent.
    Skipped(String),
    Vanished,
}

/// Upload the files of `local_dir` that changed since `state` was last updated to
/// `<prefix><relative path>`, `concurrency` at a time, and update `state`. A missing
/// `local_dir` is an empty one.
pub async fn mirror_dir(
    storage: Arc<dyn Storage>,
    local_dir: &Path,
    prefix: &str,
    state: &mut MirrorState,
    concurrency: usize,
) -> Result<MirrorReport, SyncError> {
    mirror_dir_within(
        storage,
        local_dir,
        prefix,
        state,
        concurrency,
        Budget::default(),
    )
    .await
}

/// [`mirror_dir`] with every upload handed `budget` (a pass that must end by a deadline
/// gives each upload that deadline, so the client's retries stop there too).
pub async fn mirror_dir_within(
    storage: Arc<dyn Storage>,
    local_dir: &Path,
    prefix: &str,
    state: &mut MirrorState,
    concurrency: usize,
    budget: Budget,
) -> Result<MirrorReport, SyncError> {
    let prefix = dir_prefix(prefix);
    if state.prefix != prefix || state.schema != MIRROR_STATE_SCHEMA {
        *state = MirrorState {
            schema: MIRROR_STATE_SCHEMA,
            prefix: prefix.clone(),
            files: BTreeMap::new(),
        };
    }
    let dir = local_dir.to_path_buf();
    let (found, skipped) = blocking(move || walk_plain(&dir)).await?;

    let present: BTreeSet<&str> = found.iter().map(|f| f.rel.as_str()).collect();
    state.files.retain(|rel, _| present.contains(rel.as_str()));

    let mut report = MirrorReport {
        verified: true,
        skipped,
        ..MirrorReport::default()
    };
    let mut candidates = Vec::new();
    for f in found {
        match state.files.get(&f.rel) {
            Some(r) if r.size == f.size && r.mtime_ns == f.mtime_ns => report.unchanged += 1,
            _ => candidates.push(f),
        }
    }

    // Files the state has never seen may already be in the store (a restarted agent, a
    // directory filled by a pull): one listing tells, instead of uploading them again.
    let remote: BTreeMap<String, ObjectMeta> =
        if candidates.iter().any(|f| !state.files.contains_key(&f.rel)) {
            storage
                .list(&prefix)
                .await
                .map_err(|e| SyncError::storage(format!("listing {prefix}"), e))?
                .into_iter()
                .filter_map(|m| Some((m.key.strip_prefix(&prefix)?.to_string(), m)))
                .collect()
        } else {
            BTreeMap::new()
        };

    let outcomes: Vec<Outcome> = futures::stream::iter(candidates)
        .map(|f| {
            let storage = storage.clone();
            let key = format!("{prefix}{}", f.rel);
            let remote = remote.get(&f.rel);
            let known = state.files.get(&f.rel);
            async move { mirror_one(storage.as_ref(), f, key, remote, known, budget).await }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;

    for o in outcomes {
        match o {
            Outcome::Uploaded(rel, rec) => {
                report.bytes_uploaded += rec.size;
                report.uploaded.push(rel.clone());
                state.files.insert(rel, rec);
            }
            Outcome::Adopted(rel, rec) => {
                report.unchanged += 1;
                state.files.insert(rel, rec);
            }
            Outcome::Deferred(rel) => {
                state.files.remove(&rel);
                report.deferred_unstable.push(rel);
            }
            Outcome::Unverified(rel) => {
                state.files.remove(&rel);
                report.verified = false;
                report.unverified.push(rel);
            }
            Outcome::Skipped(rel) => {
                state.files.remove(&rel);
                report.skipped.push(rel);
            }
            Outcome::Vanished => {}
        }
    }
    report.uploaded.sort();
    report.skipped.sort();
    report.deferred_unstable.sort();
    report.unverified.sort();
    Ok(report)
}

/// Size and mtime of `path` now; `None` if it is gone or no longer a regular file.
fn stat_now(path: &Path) -> Result<Option<(u64, i64)>, SyncError> {
    match std::fs::symlink_metadata(path) {
        Ok(st) if st.is_file() => Ok(Some((st.len(), mtime_ns(&st)))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SyncError::io(path, e)),
    }
}

async fn mirror_one(
    storage: &dyn Storage,
    f: Local,
    key: String,
    remote: Option<&ObjectMeta>,
    known: Option<&MirroredFile>,
    budget: Budget,
) -> Result<Outcome, SyncError> {
    let (abs, rel) = (f.abs.clone(), f.rel.clone());
    let hashed = blocking(move || {
        if !no_symlink_on_the_way(&abs, &rel) {
            return Ok(Some(None));
        }
        let Some(before) = stat_now(&abs)? else {
            return Ok(None);
        };
        let d = digest_file(&abs)?;
        let after = stat_now(&abs)?;
        Ok(Some(Some((before, d, after))))
    })
    .await;
    let (before, d, after) = match hashed {
        Ok(Some(Some(x))) => x,
        Ok(Some(None)) => return Ok(Outcome::Skipped(f.rel)),
        Ok(None) => return Ok(Outcome::Vanished),
        Err(SyncError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Outcome::Vanished)
        }
        Err(e) => return Err(e),
    };
    if after != Some(before) || d.size != before.0 {
        return Ok(Outcome::Deferred(f.rel));
    }
    let rec = MirroredFile {
        size: d.size,
        mtime_ns: before.1,
        sha256: d.sha256.clone(),
        crc32c: d.crc32c,
    };
    // Touched but not changed (same contents as last sent), or already in the store.
    if known.is_some_and(|k| k.size == d.size && k.sha256 == d.sha256 && k.crc32c == d.crc32c) {
        return Ok(Outcome::Adopted(f.rel, rec));
    }
    if let Some(m) = remote {
        if m.size == d.size && m.metadata.get(META_SHA256) == Some(&d.sha256) {
            return Ok(Outcome::Adopted(f.rel, rec));
        }
    }

    let mut opts = PutOptions::default()
        .with_content_type("application/octet-stream")
        .with_budget(budget);
    opts.metadata.insert(
        META_FILE_MTIME.to_string(),
        before.1.div_euclid(1_000_000_000).to_string(),
    );
    opts.metadata
        .insert(META_SHA256.to_string(), d.sha256.clone());
    // GCS is told the CRC32C just computed, so a file rewritten mid-upload is refused.
    opts.crc32c = Some(d.crc32c);
    let (abs, rel) = (f.abs.clone(), f.rel.clone());
    if !blocking(move || Ok(no_symlink_on_the_way(&abs, &rel))).await? {
        return Ok(Outcome::Skipped(f.rel));
    }
    let meta = match storage.put_file(&key, &f.abs, &opts).await {
        Ok(m) => m,
        Err(StorageError::Integrity { .. }) => {
            // Refused because the file moved under the upload: the next pass sends it.
            // A stable file that still does not verify is a real failure.
            let abs = f.abs.clone();
            let now = blocking(move || stat_now(&abs)).await?;
            return Ok(if now != Some(before) {
                Outcome::Deferred(f.rel)
            } else {
                Outcome::Unverified(f.rel)
            });
        }
        Err(StorageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Outcome::Vanished)
        }
        Err(e) => {
            return Err(SyncError::storage(
                format!("uploading {} to {key}", f.abs.display()),
                e,
            ))
        }
    };
    let abs = f.abs.clone();
    let after_upload = blocking(move || stat_now(&abs)).await?;
    if after_upload != Some(before) {
        return Ok(Outcome::Deferred(f.rel));
    }
    if meta.size != d.size || meta.crc32c != Some(d.crc32c) {
        return Ok(Outcome::Unverified(f.rel));
    }
    Ok(Outcome::Uploaded(f.rel, rec))
}

/// Whether `abs` (which ends in the relative path `rel`) reaches its file through real
/// folders only: none of the folders `rel` names on the way is a symlink (or gone), and
/// the file itself is not one.
fn no_symlink_on_the_way(abs: &Path, rel: &str) -> bool {
    let mut p = abs.to_path_buf();
    // The file, each folder of `rel`, and the mirrored directory itself.
    for _ in 0..=rel.split('/').count() {
        match std::fs::symlink_metadata(&p) {
            Ok(st) if !st.file_type().is_symlink() => {}
            _ => return false,
        }
        if !p.pop() {
            return false;
        }
    }
    true
}

/// Every regular file under `dir` (no ignore rules: checkpoints are not code), and what
/// was skipped. A missing `dir` has no files; a `dir` that is itself a symlink is not
/// followed (its one skipped entry is `.`).
fn walk_plain(dir: &Path) -> Result<(Vec<Local>, Vec<String>), SyncError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((files, skipped)),
        Err(e) => return Err(SyncError::io(dir, e)),
        Ok(st) if st.file_type().is_symlink() => {
            skipped.push(".".to_string());
            return Ok((files, skipped));
        }
        Ok(_) => {}
    }
    let walker = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .follow_links(false)
        .build();
    for item in walker {
        let ent = item.map_err(|source| SyncError::Walk {
            root: dir.to_path_buf(),
            source,
        })?;
        if ent.depth() == 0 {
            continue;
        }
        let path = ent.path();
        let rel = path
            .strip_prefix(dir)
            .ok()
            .and_then(|r| r.to_str())
            .map(str::to_string);
        let st = match std::fs::symlink_metadata(path) {
            Ok(st) => st,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SyncError::io(path, e)),
        };
        if st.is_dir() {
            continue;
        }
        let Some(rel) = rel else {
            skipped.push(path.display().to_string());
            continue;
        };
        if ent.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            continue; // a download in progress, ours
        }
        if !st.is_file() || validate_relative_path(&rel).is_err() {
            skipped.push(rel);
            continue;
        }
        files.push(Local {
            size: st.len(),
            mtime_ns: mtime_ns(&st),
            abs: path.to_path_buf(),
            rel,
        });
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok((files, skipped))
}

/// Download the objects under `prefix` into `local_dir` (`<local_dir>/<name after the
/// prefix>`), only those whose local copy is missing or differs, `concurrency` at a time.
pub async fn pull_prefix(
    storage: Arc<dyn Storage>,
    prefix: &str,
    local_dir: &Path,
    concurrency: usize,
) -> Result<PullReport, SyncError> {
    let prefix = dir_prefix(prefix);
    let listed = storage
        .list(&prefix)
        .await
        .map_err(|e| SyncError::storage(format!("listing {prefix}"), e))?;

    // Check every name before writing anything.
    let mut objects: Vec<(String, ObjectMeta)> = Vec::new();
    for m in listed {
        let Some(rel) = m.key.strip_prefix(&prefix) else {
            continue;
        };
        if rel.is_empty() || rel.ends_with('/') {
            continue; // a "folder" placeholder made by the console or gsutil
        }
        validate_relative_path(rel).map_err(|e| SyncError::UnsafeObjectName {
            key: m.key.clone(),
            dest: local_dir.to_path_buf(),
            why: e.to_string(),
        })?;
        objects.push((rel.to_string(), m));
    }
    let names: BTreeSet<&str> = objects.iter().map(|(r, _)| r.as_str()).collect();
    for (rel, m) in &objects {
        let mut p = rel.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if names.contains(parent) {
                return Err(SyncError::UnsafeObjectName {
                    key: m.key.clone(),
                    dest: local_dir.to_path_buf(),
                    why: format!("{parent:?} is also an object, so it cannot be a directory"),
                });
            }
            p = parent;
        }
    }
    {
        let dest = local_dir.to_path_buf();
        let rels: Vec<String> = objects.iter().map(|(r, _)| r.clone()).collect();
        blocking(move || check_destination(&dest, rels.iter().map(String::as_str))).await?;
    }

    let done: Vec<Option<(String, u64)>> = futures::stream::iter(objects)
        .map(|(rel, m)| {
            let storage = storage.clone();
            let path = local_dir.join(&rel);
            async move { pull_one(storage.as_ref(), rel, m, path).await }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;

    let mut report = PullReport::default();
    for d in done {
        match d {
            Some((rel, n)) => {
                report.bytes += n;
                report.downloaded.push(rel);
            }
            None => report.unchanged += 1,
        }
    }
    report.downloaded.sort();
    Ok(report)
}

async fn pull_one(
    storage: &dyn Storage,
    rel: String,
    m: ObjectMeta,
    path: PathBuf,
) -> Result<Option<(String, u64)>, SyncError> {
    if local_matches(&path, &m).await? {
        return Ok(None);
    }
    let n = storage.get_to_file(&m.key, &path).await.map_err(|e| {
        SyncError::storage(format!("downloading {} to {}", m.key, path.display()), e)
    })?;
    if let Some(secs) = m
        .metadata
        .get(META_FILE_MTIME)
        .and_then(|s| s.parse::<u64>().ok())
    {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let p = path.clone();
        // The mtime is a courtesy to rsync-like tools; failing to set it loses nothing.
        let _ = blocking(move || {
            let f = std::fs::File::options()
                .write(true)
                .open(&p)
                .map_err(|e| SyncError::io(&p, e))?;
            f.set_modified(when).map_err(|e| SyncError::io(&p, e))
        })
        .await;
    }
    Ok(Some((rel, n)))
}

/// Whether the local file at `path` already has the object's contents: same size, and the
/// same SHA-256 (when the object carries one) or CRC32C.
async fn local_matches(path: &Path, m: &ObjectMeta) -> Result<bool, SyncError> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(st) if st.is_file() && st.len() == m.size => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(SyncError::io(path, e)),
    }
    let want_sha = m.metadata.get(META_SHA256).cloned();
    let want_crc = m.crc32c;
    if want_sha.is_none() && want_crc.is_none() {
        return Ok(false);
    }
    let p = path.to_path_buf();
    let d = blocking(move || digest_file(&p)).await?;
    Ok(match (want_sha, want_crc) {
        (Some(sha), _) => d.sha256 == sha && want_crc.is_none_or(|c| c == d.crc32c),
        (None, Some(crc)) => d.crc32c == crc,
        (None, None) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::test_util::{read_tree, write, Recorder};

    const PREFIX: &str = "p/runs/r/outputs/checkpoint/";

    fn setup() -> (tempfile::TempDir, Arc<Recorder>, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let store = Recorder::new(d.path().join("bucket"));
        let ckpt = d.path().join("checkpoint");
        (d, store, ckpt)
    }

    #[tokio::test]
    async fn mirror_uploads_only_changed_files_with_mtime_and_sha256_metadata() {
        let (_d, store, ckpt) = setup();
        write(&ckpt, "epoch1.pt", b"weights-1");
        write(&ckpt, "logs/events.txt", b"step 1");
        write(&ckpt, "config.json", b"{}");
        let mut state = MirrorState::default();

        let first = mirror_dir(store.clone(), &ckpt, PREFIX, &mut state, 4)
            .await
            .unwrap();
        assert_eq!(
            first.uploaded,
            ["config.json", "epoch1.pt", "logs/events.txt"]
        );
        assert_eq!(first.bytes_uploaded, 17);
        assert!(first.verified && first.is_complete());
        let meta = store
            .head(&format!("{PREFIX}epoch1.pt"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            meta.metadata[META_SHA256],
            crate::sync::sha256_hex(b"weights-1")
        );
        let mtime = std::fs::metadata(ckpt.join("epoch1.pt"))
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(meta.metadata[META_FILE_MTIME], mtime.to_string());
        store.take_puts();

        let second = mirror_dir(store.clone(), &ckpt, PREFIX, &mut state, 4)
            .await
            .unwrap();
        assert!(second.uploaded.is_empty());
        assert_eq!(second.unchanged, 3);
        assert_eq!(store.take_puts().0.len(), 0);
        assert_eq!(store.lists.load(std::sync::atomic::Ordering::SeqCst), 0);

        // Touched, same contents: hashed again, not sent again.
        crate::sync::test_util::age(&ckpt, "config.json", 60);
        write(&ckpt, "logs/events.txt", b"step 1\nstep 2");
        write(&ckpt, "epoch2.pt", b"weights-2");
        std::fs::remove_file(ckpt.join("epoch1.pt")).unwrap();
        let third = mirror_dir(store.clone(), &ckpt, PREFIX, &mut state, 4)
            .await
            .unwrap();
        assert_eq!(third.uploaded, ["epoch2.pt", "logs/events.txt"]);
        assert_eq!(third.unchanged, 1, "config.json");
        let st = std::fs::metadata(ckpt.join("config.json")).unwrap();
        assert_eq!(
            state.files["config.json"].mtime_ns,
            crate::sync::mtime_ns(&st),
            "the new mtime is recorded"
        );
        let (keys, _) = store.take_puts();
        assert_eq!(keys.len(), 2);
        // Deleted locally, kept remotely.
        assert!(store
            .head(&format!("{PREFIX}epoch1.pt"))
            .await
            .unwrap()
            .is_some());
        assert!(!state.files.contains_key("epoch1.pt"));
    }

    #[tokio::test]
    async fn a_file_growing_during_the_upload_is_deferred_to_the_next_pass() {
        let (_d, store, ckpt) = setup();
        write(&ckpt, "done.pt", b"complete");
        write(&ckpt, "growing.pt", b"first half");
        *store.put_file_hook.lock().unwrap() = Some(Box::new(|p: &Path| {
            if p.ends_with("growing.pt") {
                use std::io::Write;
                let mut f = std::fs::File::options().append(true).open(p).unwrap();
                f.write_all(b" and the second half").unwrap();
            }
        }));
        let mut state = MirrorState::default();
        let r = mirror_dir(store.clone(), &ckpt, PREFIX, &mut state, 2)
            .await
            .unwrap();
        assert_eq!(r.uploaded, ["done.pt"]);
        assert_eq!(r.deferred_unstable, ["growing.pt"]);
        assert!(!r.is_complete());
        assert!(!state.files.contains_key("growing.pt"));

        *store.put_file_hook.lock().unwrap() = None;
        let r = mirror_dir(store.clone(), &ckpt, PREFIX, &mut state, 2)
            .await
            .unwrap();
        assert_eq!(r.uploaded, ["growing.pt"]);
        assert!(r.is_complete());
        assert_eq!(
            &store
                .get_bytes(&format!("{PREFIX}growing.pt"))
                .await
                .unwrap()[..],
            b"first half and the second half"
        );
    }

    #[tokio::test]
    async fn a_fresh_state_adopts_what_the_store_already_has() {
        let (_d, store, ckpt) = setup();
        write(&ckpt, "a.pt", b"aaaa");
        write(&ckpt, "b.pt", b"bbbb");
        mirror_dir(store.clone(), &ckpt, PREFIX, &mut MirrorState::default(), 2)
            .await
            .unwrap();
        store.take_puts();
        write(&ckpt, "b.pt", b"BBBB"); // same size, other contents
        let mut fresh = MirrorState::default();
        let r = mirror_dir(store.clone(), &ckpt, PREFIX, &mut fresh, 2)
            .await
            .unwrap();
        assert_eq!(r.uploaded, ["b.pt"]);
        assert_eq!(r.unchanged, 1);
        assert_eq!(store.take_puts().0.len(), 1);
        assert_eq!(fresh.files.len(), 2);
    }

    #[tokio::test]
    async fn mirror_state_round_trips_through_json_and_resets_for_another_prefix() {
        let (_d, store, ckpt) = setup();
        write(&ckpt, "a.pt", b"a");
        let mut state = MirrorState::default();
        mirror_dir(store.clone(), &ckpt, "p/x", &mut state, 1)
            .await
            .unwrap();
        assert_eq!(state.prefix, "p/x/");
        let json = serde_json::to_string(&state).unwrap();
        let mut back: MirrorState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        let r = mirror_dir(store.clone(), &ckpt, "p/x/", &mut back, 1)
            .await
            .unwrap();
        assert_eq!(r.unchanged, 1);
        let r = mirror_dir(store.clone(), &ckpt, "p/y/", &mut back, 1)
            .await
            .unwrap();
        assert_eq!(r.uploaded, ["a.pt"]);
        assert_eq!(back.prefix, "p/y/");
    }

    #[tokio::test]
    async fn a_missing_directory_mirrors_nothing_and_symlinks_are_skipped() {
        let (d, store, ckpt) = setup();
        let r = mirror_dir(store.clone(), &ckpt, PREFIX, &mut MirrorState::default(), 1)
            .await
            .unwrap();
        assert_eq!(
            r,
            MirrorReport {
                verified: true,
                ..MirrorReport::default()
            }
        );
        write(&ckpt, "real.pt", b"r");
        std::os::unix::fs::symlink("real.pt", ckpt.join("latest.pt")).unwrap();
        std::os::unix::fs::symlink(d.path(), ckpt.join("loop")).unwrap();
        let r = mirror_dir(store.clone(), &ckpt, PREFIX, &mut MirrorState::default(), 1)
            .await
            .unwrap();
        assert_eq!(r.uploaded, ["real.pt"]);
        assert_eq!(r.skipped, ["latest.pt", "loop"]);
    }

    #[tokio::test]
    async fn a_symlinked_directory_is_not_followed_at_the_root_or_inside() {
        let (d, store, ckpt) = setup();
        let secrets = d.path().join("etc-ssh");
        write(&secrets, "ssh_config", b"Host *");
        write(&ckpt, "real/step.pt", b"s");
        std::os::unix::fs::symlink(ckpt.join("real"), ckpt.join("alias")).unwrap();
        let r = mirror_dir(store.clone(), &ckpt, PREFIX, &mut MirrorState::default(), 1)
            .await
            .unwrap();
        assert_eq!(r.uploaded, ["real/step.pt"]);
        assert_eq!(r.skipped, ["alias"]);

        let model = d.path().join("model");
        std::os::unix::fs::symlink(&secrets, &model).unwrap();
        let r = mirror_dir(
            store.clone(),
            &model,
            "p/model/",
            &mut MirrorState::default(),
            1,
        )
        .await
        .unwrap();
        assert!(r.uploaded.is_empty(), "{r:?}");
        assert_eq!(r.skipped, ["."]);
        assert!(store.list("p/model/").await.unwrap().is_empty());
    }

    #[test]
    fn a_folder_swapped_for_a_symlink_after_the_walk_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ckpt");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.pt"), b"a").unwrap();
        assert!(no_symlink_on_the_way(&root.join("sub/a.pt"), "sub/a.pt"));
        std::fs::create_dir_all(d.path().join("elsewhere")).unwrap();
        std::fs::write(d.path().join("elsewhere/a.pt"), b"secret").unwrap();
        std::fs::rename(root.join("sub"), d.path().join("old-sub")).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), root.join("sub")).unwrap();
        assert!(!no_symlink_on_the_way(&root.join("sub/a.pt"), "sub/a.pt"));
        let linked_root = d.path().join("linked");
        std::os::unix::fs::symlink(&root, &linked_root).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/b.pt"), b"b").unwrap();
        assert!(!no_symlink_on_the_way(
            &linked_root.join("real/b.pt"),
            "real/b.pt"
        ));
    }

    #[tokio::test]
    async fn pull_downloads_only_changed_files_byte_for_byte() {
        let (d, store, ckpt) = setup();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        write(&ckpt, "model.bin", &big);
        write(&ckpt, "sub/step.txt", b"100");
        write(&ckpt, "sub/notes.md", b"# notes");
        mirror_dir(store.clone(), &ckpt, PREFIX, &mut MirrorState::default(), 2)
            .await
            .unwrap();
        // An object written by another tool: no cloudrun metadata, only CRC32C.
        store
            .put_bytes(
                &format!("{PREFIX}other/tool.txt"),
                bytes::Bytes::from_static(b"from gsutil"),
                &PutOptions::default(),
            )
            .await
            .unwrap();

        let out = d.path().join("pulled");
        let r = pull_prefix(store.clone(), PREFIX, &out, 3).await.unwrap();
        assert_eq!(
            r.downloaded,
            [
                "model.bin",
                "other/tool.txt",
                "sub/notes.md",
                "sub/step.txt"
            ]
        );
        assert_eq!(r.bytes, big.len() as u64 + 3 + 7 + 11);
        let mut want = read_tree(&ckpt);
        want.insert("other/tool.txt".into(), b"from gsutil".to_vec());
        assert_eq!(read_tree(&out), want);
        assert_eq!(
            std::fs::metadata(out.join("model.bin"))
                .unwrap()
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            std::fs::metadata(ckpt.join("model.bin"))
                .unwrap()
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            "the mtime comes from the object's metadata"
        );

        let again = pull_prefix(store.clone(), PREFIX, &out, 3).await.unwrap();
        assert!(again.downloaded.is_empty());
        assert_eq!(again.unchanged, 4);

        std::fs::write(out.join("sub/step.txt"), b"999").unwrap(); // same size
        std::fs::write(out.join("other/tool.txt"), b"edited").unwrap();
        let third = pull_prefix(store.clone(), PREFIX, &out, 3).await.unwrap();
        assert_eq!(third.downloaded, ["other/tool.txt", "sub/step.txt"]);
        assert_eq!(read_tree(&out), want);
    }

    #[tokio::test]
    async fn pull_of_a_damaged_object_is_an_error_naming_it_and_keeps_the_local_file() {
        let (d, store, ckpt) = setup();
        write(&ckpt, "model.pt", b"weights v2");
        write(&ckpt, "step.txt", b"200");
        mirror_dir(store.clone(), &ckpt, PREFIX, &mut MirrorState::default(), 2)
            .await
            .unwrap();
        let out = d.path().join("pulled");
        write(&out, "model.pt", b"weights v1"); // an older local copy
                                                // The stored output changes after it was mirrored; its record still says v2.
        let stored = store.inner.root().join(format!("{PREFIX}model.pt"));
        std::fs::write(&stored, b"weights XX").unwrap();

        let err = pull_prefix(store.clone(), PREFIX, &out, 2)
            .await
            .unwrap_err();
        assert!(err.is_integrity(), "{err}");
        assert!(
            err.to_string().contains(&format!("{PREFIX}model.pt")),
            "{err}"
        );
        assert_eq!(std::fs::read(out.join("model.pt")).unwrap(), b"weights v1");
        assert!(crate::sync::test_util::leftovers(&out).is_empty());

        // Missing locally: nothing is created for the damaged object.
        std::fs::remove_file(out.join("model.pt")).unwrap();
        assert!(pull_prefix(store.clone(), PREFIX, &out, 1).await.is_err());
        assert!(!out.join("model.pt").exists());
    }

    fn fake_object(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 1,
            crc32c: None,
            md5_base64: None,
            generation: 1,
            updated: None,
            metadata: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn pull_refuses_object_names_that_escape_and_writes_nothing() {
        let (d, store, ckpt) = setup();
        write(&ckpt, "ok.txt", b"ok");
        mirror_dir(store.clone(), &ckpt, PREFIX, &mut MirrorState::default(), 1)
            .await
            .unwrap();
        for bad in ["../../evil", "a/../../evil", "/etc/passwd", "a//b"] {
            *store.extra_listing.lock().unwrap() = vec![fake_object(&format!("{PREFIX}{bad}"))];
            let out = d.path().join("out");
            let err = pull_prefix(store.clone(), PREFIX, &out, 2)
                .await
                .unwrap_err();
            assert!(
                matches!(err, SyncError::UnsafeObjectName { .. }),
                "{bad}: {err}"
            );
            assert!(!out.exists(), "{bad}");
        }
        // A "folder" placeholder is not a file and not an error.
        *store.extra_listing.lock().unwrap() = vec![fake_object(&format!("{PREFIX}sub/"))];
        let r = pull_prefix(store.clone(), PREFIX, &d.path().join("out"), 2)
            .await
            .unwrap();
        assert_eq!(r.downloaded, ["ok.txt"]);
    }

    #[tokio::test]
    async fn pull_refuses_a_symlinked_directory_that_leads_outside() {
        let (d, store, ckpt) = setup();
        write(&ckpt, "sub/x.txt", b"x");
        mirror_dir(store.clone(), &ckpt, PREFIX, &mut MirrorState::default(), 1)
            .await
            .unwrap();
        let out = d.path().join("out");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("sub")).unwrap();
        let err = pull_prefix(store.clone(), PREFIX, &out, 1)
            .await
            .unwrap_err();
        assert!(matches!(err, SyncError::UnsafeDestination { .. }), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
