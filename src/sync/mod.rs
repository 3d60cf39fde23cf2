//! The sync engine: moves file trees between a local disk and a
//! [`Storage`](crate::storage::Storage), verified and incrementally, on top of nothing but
//! that trait (so the local-directory and GCS backends behave the same).
//!
//! Two shapes of transfer, for two kinds of data:
//!
//! - **Code trees** are content-addressed. [`scan_tree`] walks a project folder (honouring
//!   `.gitignore`, `.ignore` and `.cloudrunignore`) and hashes it, with a local index so
//!   unchanged files are not hashed again; [`push_tree`] uploads only the blobs the store
//!   lacks to `blobs/<sha256>` and writes the [`Manifest`](crate::manifest::Manifest);
//!   [`materialise`] turns a manifest back into a directory, checking every byte against
//!   the manifest.
//! - **Outputs** (checkpoints, models) are plain objects `<prefix><relative path>` that any
//!   GCS tool can read. [`mirror_dir`] uploads the files that changed since the last pass,
//!   never half a file that is still being written; [`pull_prefix`] brings them back.
//!
//! It owns no object names: the caller passes keys and prefixes built by
//! [`crate::layout::Layout`]. It never deletes anything remotely.

mod materialise;
mod mirror;
mod push;
mod scan;

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::manifest::{ManifestError, PathError};
use crate::storage::StorageError;

pub use materialise::{fetch_manifest, materialise, MaterialiseReport};
pub use mirror::{
    mirror_dir, mirror_dir_within, pull_prefix, MirrorReport, MirrorState, MirroredFile,
    PullReport, MIRROR_STATE_SCHEMA,
};
pub use push::{push_blobs, push_tree, PushOptions, PushReport, HEAD_PROBE_MAX_BLOBS};
pub use scan::{scan_tree, ScanOptions, ScannedFile, ScannedTree, CLOUDRUN_IGNORE_FILE};

/// Parallel transfers when the caller has no better idea: enough to hide per-request
/// latency to GCS without opening more connections than one host sensibly keeps.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Read buffer for hashing and comparing local files.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// Prefix of temporary files the engine creates beside their final names (and skips when
/// it walks a directory it is mirroring).
const TMP_PREFIX: &str = ".cloudrun-";

/// Why a sync operation failed. Each message names the file or object and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A storage call failed; `what` says which step.
    #[error("{what}: {source}")]
    Storage {
        what: String,
        #[source]
        source: StorageError,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not walk {}: {source}", root.display())]
    Walk {
        root: PathBuf,
        #[source]
        source: ignore::Error,
    },
    #[error(
        "{link} is a symlink to {target:?}, outside the project tree; cloudrun does not follow \
         it. Add {link} to .cloudrunignore, or replace the link with the files it points to"
    )]
    SymlinkOutsideTree { link: String, target: String },
    #[error(
        "{} has a name that is not valid UTF-8; rename it or add it to .cloudrunignore",
        path.display()
    )]
    NonUtf8Path { path: PathBuf },
    #[error("{path:?} cannot be stored in a manifest ({source}); rename it or add it to .cloudrunignore")]
    UnsupportedPath {
        path: String,
        #[source]
        source: PathError,
    },
    #[error(
        "{} changed while cloudrun was reading it; stop whatever is writing it (or add it to \
         .cloudrunignore) and try again",
        path.display()
    )]
    FileChanged { path: PathBuf },
    #[error("manifest refused, nothing was written: {0}")]
    Manifest(#[from] ManifestError),
    #[error("refusing to write {path:?} under {}: {why}; nothing was written", dest.display())]
    UnsafeDestination {
        dest: PathBuf,
        path: String,
        why: String,
    },
    #[error("object {key:?} would be written outside {}: {why}; nothing was written", dest.display())]
    UnsafeObjectName {
        key: String,
        dest: PathBuf,
        why: String,
    },
    #[error("{what}: {detail}")]
    Integrity { what: String, detail: String },
    #[error("a background task failed: {0}")]
    Task(String),
}

impl SyncError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SyncError::Io {
            path: path.into(),
            source,
        }
    }

    fn storage(what: impl Into<String>, source: StorageError) -> Self {
        SyncError::Storage {
            what: what.into(),
            source,
        }
    }

    /// Whether the failure is a checksum or size mismatch (the data is wrong, not absent).
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            SyncError::Integrity { .. }
                | SyncError::Storage {
                    source: StorageError::Integrity { .. },
                    ..
                }
        )
    }
}

/// What hashing a local file found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileDigest {
    sha256: String,
    crc32c: u32,
    size: u64,
}

/// SHA-256 (lowercase hex), CRC32C and length of everything `r` yields.
fn digest_reader(r: &mut dyn Read, path: &Path) -> Result<FileDigest, SyncError> {
    let mut sha = sha2::Sha256::new();
    let mut crc = 0u32;
    let mut size = 0u64;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SyncError::io(path, e)),
        };
        sha.update(&buf[..n]);
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        size += n as u64;
    }
    Ok(FileDigest {
        sha256: hex::encode(sha.finalize()),
        crc32c: crc,
        size,
    })
}

/// Hash the file at `path` (blocking).
fn digest_file(path: &Path) -> Result<FileDigest, SyncError> {
    let mut f = std::fs::File::open(path).map_err(|e| SyncError::io(path, e))?;
    digest_reader(&mut f, path)
}

/// SHA-256 hex of a byte string.
fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// Modification time in nanoseconds since the epoch (saturating; i64 reaches 2262).
fn mtime_ns(st: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    st.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(st.mtime_nsec())
}

/// Now, in nanoseconds since the epoch.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Run blocking work (hashing, walking) off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SyncError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?
}

/// Check that writing the relative path `rel` under `dest` cannot land outside `dest`:
/// every directory on the way that already exists must be a real directory, or a symlink
/// that resolves inside `dest` (`dest_canon` is `dest` canonicalised). Something that is
/// not a directory where one is needed is refused too, so a bad tree fails before any
/// file is written rather than halfway.
fn check_parents_stay_inside(dest: &Path, dest_canon: &Path, rel: &str) -> Result<(), SyncError> {
    let refuse = |why: String| SyncError::UnsafeDestination {
        dest: dest.to_path_buf(),
        path: rel.to_string(),
        why,
    };
    let mut cur = dest.to_path_buf();
    let segs: Vec<&str> = rel.split('/').collect();
    let Some((_, dirs)) = segs.split_last() else {
        return Ok(());
    };
    for seg in dirs {
        cur.push(seg);
        let st = match std::fs::symlink_metadata(&cur) {
            Ok(st) => st,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SyncError::io(&cur, e)),
        };
        if st.file_type().is_symlink() {
            let resolved = std::fs::canonicalize(&cur).map_err(|_| {
                refuse(format!(
                    "{} is a symlink that does not resolve; remove it",
                    cur.display()
                ))
            })?;
            if !resolved.starts_with(dest_canon) {
                return Err(refuse(format!(
                    "{} is a symlink to {}, outside the destination; remove it",
                    cur.display(),
                    resolved.display()
                )));
            }
            if !resolved.is_dir() {
                return Err(refuse(format!(
                    "{} is a symlink to a file where a directory is needed; remove it",
                    cur.display()
                )));
            }
        } else if !st.is_dir() {
            return Err(refuse(format!(
                "{} is a file where a directory is needed; remove it",
                cur.display()
            )));
        }
    }
    Ok(())
}

/// Refuse a destination that the relative paths `rels` (already validated as relative,
/// without `..`) cannot all be written into safely, before anything is written: `dest`
/// must be a directory (or absent: a new directory holds no traps), no directory on the
/// way may be a symlink out of it or a file, and no final name may be a directory.
fn check_destination<'a>(
    dest: &Path,
    rels: impl Iterator<Item = &'a str>,
) -> Result<(), SyncError> {
    let st = match std::fs::metadata(dest) {
        Ok(st) => st,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SyncError::io(dest, e)),
    };
    if !st.is_dir() {
        return Err(SyncError::UnsafeDestination {
            dest: dest.to_path_buf(),
            path: String::new(),
            why: "the destination is not a directory".into(),
        });
    }
    let dest_canon = std::fs::canonicalize(dest).map_err(|e| SyncError::io(dest, e))?;
    for rel in rels {
        check_parents_stay_inside(dest, &dest_canon, rel)?;
        let path = dest.join(rel);
        if let Ok(st) = std::fs::symlink_metadata(&path) {
            if st.is_dir() {
                return Err(SyncError::UnsafeDestination {
                    dest: dest.to_path_buf(),
                    path: rel.to_string(),
                    why: format!(
                        "{} is a directory where a file must go; remove it",
                        path.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// `prefix` as a directory-like object prefix: empty, or ending in `/`.
fn dir_prefix(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// A progress bar on stderr for `total` bytes, or a hidden one unless `wanted` and stderr
/// is a terminal (results go to stdout, progress never into a pipe or a log file).
fn progress_bar(wanted: bool, total: u64, msg: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !wanted || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg.to_string());
    bar
}

#[cfg(test)]
pub(crate) mod test_util;
