//! Scanning a project tree: which files go to the VM, and their hashes.
//!
//! The walk honours `.gitignore` (and `.git/info/exclude`), `.ignore` and
//! [`CLOUDRUN_IGNORE_FILE`] the way ripgrep does, whether or not the folder is a git
//! repository, and never enters `.git`. Ignore files in directories above the root are
//! read only when the root lies inside a git repository (a project launched from a
//! subfolder of a repository keeps the repository's rules). The user's global git excludes are *not* read: what
//! is sent should not depend on per-machine settings nobody else can see. Dotfiles are
//! included, as git includes them. Empty directories are not recorded.
//!
//! Hashing is the expensive part, so a local index (JSON at [`ScanOptions::index_path`],
//! written atomically) remembers the hash of every file by (path, size, mtime, inode). A
//! file whose mtime lies within [`RACY_MTIME_SLACK_NS`] of the scan that indexed it is
//! hashed again next time, as git does for "racily clean" entries: it could have changed
//! again without its mtime moving.
//!
//! Symlinks are recorded, never followed; one that points outside the tree is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{digest_file, mtime_ns, now_ns, sha256_hex, FileDigest, SyncError};
use crate::manifest::{
    symlink_stays_inside, validate_relative_path, Manifest, ManifestEntry, MANIFEST_SCHEMA,
};

/// The project's own ignore file, read like `.gitignore` (and winning over it).
pub const CLOUDRUN_IGNORE_FILE: &str = ".cloudrunignore";

/// How close (ns) to the indexing scan a file's mtime may be before its cached hash is
/// distrusted: 2 s, the coarsest mtime granularity of common filesystems (FAT).
pub const RACY_MTIME_SLACK_NS: i64 = 2_000_000_000;

/// How often a file that changes while being hashed is tried again before the scan gives
/// up on it.
const HASH_ATTEMPTS_MAX: usize = 3;

/// Most hashing threads used when [`ScanOptions::threads`] is 0 (beyond this the disk,
/// not the CPU, is the limit).
const HASH_THREADS_MAX: usize = 8;

/// Version of the index file format; another version is ignored (and rewritten).
const INDEX_SCHEMA: u32 = 1;

/// How to scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// The local hash index (e.g. `~/.cache/cloudrun/index-<hash of root>.json`). `None`:
    /// hash every file.
    pub index_path: Option<PathBuf>,
    /// Hashing threads; 0 picks the number of CPUs (at most 8).
    pub threads: usize,
}

/// One file or symlink of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFile {
    /// What goes into the manifest.
    pub entry: ManifestEntry,
    /// Where it is on this machine.
    pub abs_path: PathBuf,
    /// CRC32C of the contents as scanned (of the target string for a symlink); the push
    /// compares it with what the store received, to catch a file edited since the scan.
    pub crc32c: u32,
    /// Modification time as scanned, ns since the epoch.
    pub mtime_ns: i64,
}

/// A scanned project tree.
#[derive(Debug, Clone)]
pub struct ScannedTree {
    pub root: PathBuf,
    /// Sorted by path.
    pub files: Vec<ScannedFile>,
    /// For people: which ignore files were honoured and what was skipped, if anything.
    pub ignored_note: Option<String>,
    /// Entries that are neither files nor symlinks (sockets, FIFOs, devices): left out.
    pub skipped: Vec<String>,
    /// Files whose contents were hashed by this scan (the rest came from the index).
    pub hashed_files: usize,
    /// Bytes read to hash them.
    pub hashed_bytes: u64,
}

impl ScannedTree {
    /// Total size of the files (symlinks count their target string).
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.entry.size).sum()
    }

    /// The manifest of this tree, stamped now.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            schema: MANIFEST_SCHEMA,
            created_at: chrono::Utc::now(),
            entries: self.files.iter().map(|f| f.entry.clone()).collect(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    schema: u32,
    root: PathBuf,
    /// When the scan that wrote this index started (ns since the epoch).
    scan_started_ns: i64,
    files: BTreeMap<String, IndexEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IndexEntry {
    size: u64,
    mtime_ns: i64,
    inode: u64,
    sha256: String,
    crc32c: u32,
}

/// A regular file found by the walk, before hashing.
struct Found {
    rel: String,
    abs: PathBuf,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    inode: u64,
}

/// Walk `root`, hash what changed since the index was written, and return the sorted tree.
/// Blocking; hashes on several threads.
pub fn scan_tree(root: &Path, opts: &ScanOptions) -> Result<ScannedTree, SyncError> {
    use std::os::unix::fs::MetadataExt;

    let started = now_ns();
    let root_canon = std::fs::canonicalize(root).map_err(|e| SyncError::io(root, e))?;
    let index = opts
        .index_path
        .as_deref()
        .map(|p| load_index(p, &root_canon))
        .unwrap_or_default();
    let index_abs = opts
        .index_path
        .as_deref()
        .and_then(|p| std::fs::canonicalize(p).ok());

    // Ignore files above the root count only inside a git repository (as git reads them,
    // up to the repository's top); otherwise a stray ~/.gitignore would decide what a
    // plain folder sends.
    let in_git_repo = root_canon.ancestors().any(|a| a.join(".git").exists());
    let mut walker = ignore::WalkBuilder::new(&root_canon);
    walker
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .ignore(true)
        .parents(in_git_repo)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(CLOUDRUN_IGNORE_FILE)
        .filter_entry(|e| e.file_name() != ".git");

    let mut out: Vec<ScannedFile> = Vec::new();
    let mut to_hash: Vec<Found> = Vec::new();
    let mut skipped = Vec::new();
    let mut ignore_files = Vec::new();
    for item in walker.build() {
        let ent = item.map_err(|source| SyncError::Walk {
            root: root.to_path_buf(),
            source,
        })?;
        if ent.depth() == 0 {
            continue;
        }
        let abs = ent.path().to_path_buf();
        if index_abs.as_deref() == Some(abs.as_path()) {
            continue;
        }
        let rel = relative_name(&root_canon, &abs)?;
        let st = std::fs::symlink_metadata(&abs).map_err(|e| SyncError::io(&abs, e))?;
        let ft = st.file_type();
        if ft.is_dir() {
            continue;
        }
        validate_relative_path(&rel).map_err(|source| SyncError::UnsupportedPath {
            path: rel.clone(),
            source,
        })?;
        if ft.is_symlink() {
            out.push(scan_symlink(&root_canon, rel, abs, &st)?);
        } else if ft.is_file() {
            let name = rel.rsplit('/').next().unwrap_or(&rel);
            if [".gitignore", ".ignore", CLOUDRUN_IGNORE_FILE].contains(&name) {
                ignore_files.push(rel.clone());
            }
            let found = Found {
                size: st.len(),
                mode: st.mode() & 0o777,
                mtime_ns: mtime_ns(&st),
                inode: st.ino(),
                rel,
                abs,
            };
            match index.files.get(&found.rel) {
                Some(ix)
                    if ix.size == found.size
                        && ix.mtime_ns == found.mtime_ns
                        && ix.inode == found.inode
                        && found.mtime_ns < index.scan_started_ns - RACY_MTIME_SLACK_NS =>
                {
                    out.push(scanned_file(found, ix.sha256.clone(), ix.crc32c));
                }
                _ => to_hash.push(found),
            }
        } else {
            skipped.push(rel);
        }
    }

    let hashed_files = to_hash.len();
    let hashed_bytes: u64 = to_hash.iter().map(|f| f.size).sum();
    out.extend(hash_all(to_hash, opts.threads)?);
    out.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));

    if let Some(path) = &opts.index_path {
        let new_index = Index {
            schema: INDEX_SCHEMA,
            root: root_canon.clone(),
            scan_started_ns: started,
            files: out
                .iter()
                .filter(|f| f.entry.link.is_none())
                .filter_map(|f| {
                    let st = std::fs::symlink_metadata(&f.abs_path).ok()?;
                    Some((
                        f.entry.path.clone(),
                        IndexEntry {
                            size: f.entry.size,
                            mtime_ns: f.mtime_ns,
                            inode: st.ino(),
                            sha256: f.entry.sha256.clone(),
                            crc32c: f.crc32c,
                        },
                    ))
                })
                .collect(),
        };
        if let Err(e) = save_index(path, &new_index) {
            // The scan is still right; only the next one is slower.
            tracing::warn!("could not write the hash index {}: {e:#}", path.display());
        }
    }

    let mut note = Vec::new();
    if !ignore_files.is_empty() {
        note.push(format!("ignore rules from {}", ignore_files.join(", ")));
    }
    if !skipped.is_empty() {
        note.push(format!(
            "skipped {} entries that are neither files nor symlinks: {}",
            skipped.len(),
            skipped.join(", ")
        ));
    }
    Ok(ScannedTree {
        root: root_canon,
        files: out,
        ignored_note: (!note.is_empty()).then(|| note.join("; ")),
        skipped,
        hashed_files,
        hashed_bytes,
    })
}

/// `abs` relative to `root`, `/`-separated.
fn relative_name(root: &Path, abs: &Path) -> Result<String, SyncError> {
    let rel = abs.strip_prefix(root).map_err(|_| SyncError::NonUtf8Path {
        path: abs.to_path_buf(),
    })?;
    let mut parts = Vec::new();
    for c in rel.components() {
        parts.push(
            c.as_os_str()
                .to_str()
                .ok_or_else(|| SyncError::NonUtf8Path {
                    path: abs.to_path_buf(),
                })?,
        );
    }
    Ok(parts.join("/"))
}

fn scan_symlink(
    root_canon: &Path,
    rel: String,
    abs: PathBuf,
    st: &std::fs::Metadata,
) -> Result<ScannedFile, SyncError> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::read_link(&abs).map_err(|e| SyncError::io(&abs, e))?;
    let target = target
        .to_str()
        .ok_or_else(|| SyncError::NonUtf8Path { path: abs.clone() })?
        .to_string();
    let escapes = || SyncError::SymlinkOutsideTree {
        link: rel.clone(),
        target: target.clone(),
    };
    if !symlink_stays_inside(&rel, &target) {
        return Err(escapes());
    }
    // Lexically inside, but it may pass through another link that leaves the tree.
    if let Ok(resolved) = std::fs::canonicalize(&abs) {
        if !resolved.starts_with(root_canon) {
            return Err(escapes());
        }
    }
    let crc = crc32c::crc32c(target.as_bytes());
    Ok(ScannedFile {
        entry: ManifestEntry {
            path: rel.clone(),
            size: target.len() as u64,
            mode: st.mode() & 0o777,
            sha256: sha256_hex(target.as_bytes()),
            link: Some(target),
        },
        abs_path: abs,
        crc32c: crc,
        mtime_ns: mtime_ns(st),
    })
}

fn scanned_file(f: Found, sha256: String, crc32c: u32) -> ScannedFile {
    ScannedFile {
        entry: ManifestEntry {
            path: f.rel,
            size: f.size,
            mode: f.mode,
            sha256,
            link: None,
        },
        abs_path: f.abs,
        crc32c,
        mtime_ns: f.mtime_ns,
    }
}

/// Hash `files` on up to `threads` threads.
fn hash_all(files: Vec<Found>, threads: usize) -> Result<Vec<ScannedFile>, SyncError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(HASH_THREADS_MAX)
    } else {
        threads
    }
    .min(files.len());
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Found>>> = files.into_iter().map(|f| Mutex::new(Some(f))).collect();
    let results: Mutex<Vec<Result<ScannedFile, SyncError>>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = slots.get(i) else { break };
                let Some(found) = slot.lock().ok().and_then(|mut g| g.take()) else {
                    continue;
                };
                let r = hash_one(found);
                let failed = r.is_err();
                if let Ok(mut g) = results.lock() {
                    g.push(r);
                }
                if failed {
                    // Let the other threads drain quickly: the scan fails anyway.
                    next.store(slots.len(), Ordering::Relaxed);
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| SyncError::Task("a hashing thread panicked".into()))?;
    results.into_iter().collect()
}

/// Hash one file, making sure it did not change while it was read.
fn hash_one(mut f: Found) -> Result<ScannedFile, SyncError> {
    use std::os::unix::fs::MetadataExt;
    for _ in 0..HASH_ATTEMPTS_MAX {
        let d: FileDigest = digest_file(&f.abs)?;
        let st = std::fs::symlink_metadata(&f.abs).map_err(|e| SyncError::io(&f.abs, e))?;
        let (size, mtime, inode) = (st.len(), mtime_ns(&st), st.ino());
        if d.size == f.size && size == f.size && mtime == f.mtime_ns && inode == f.inode {
            return Ok(scanned_file(f, d.sha256, d.crc32c));
        }
        // It changed under us: take the new stat and read it again.
        f.size = size;
        f.mtime_ns = mtime;
        f.inode = inode;
        f.mode = st.mode() & 0o777;
    }
    Err(SyncError::FileChanged { path: f.abs })
}

fn load_index(path: &Path, root: &Path) -> Index {
    let parsed: Option<Index> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match parsed {
        Some(ix) if ix.schema == INDEX_SCHEMA && ix.root == root => ix,
        Some(_) => Index::default(),
        None => {
            if path.exists() {
                tracing::warn!(
                    "ignoring the unreadable hash index {}; it will be rebuilt",
                    path.display()
                );
            }
            Index::default()
        }
    }
}

fn save_index(path: &Path, index: &Index) -> Result<(), SyncError> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| SyncError::io(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".cloudrun-index-")
        .tempfile_in(dir)
        .map_err(|e| SyncError::io(dir, e))?;
    let json = serde_json::to_vec(index).map_err(|e| SyncError::Task(e.to_string()))?;
    tmp.write_all(&json).map_err(|e| SyncError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| SyncError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| SyncError::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::test_util::{age, write};

    fn paths(t: &ScannedTree) -> Vec<&str> {
        t.files.iter().map(|f| f.entry.path.as_str()).collect()
    }

    #[test]
    fn records_path_size_mode_and_sha256_sorted() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "src/model.py", b"x = 1\n");
        write(root, "main.py", b"test");
        write(root, "run.sh", b"#!/bin/sh\n");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let t = scan_tree(root, &ScanOptions::default()).unwrap();
        assert_eq!(paths(&t), ["main.py", "run.sh", "src/model.py"]);
        let main = &t.files[0].entry;
        assert_eq!(main.size, 4);
        assert_eq!(
            main.sha256,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(t.files[1].entry.mode & 0o111, 0o111);
        assert_eq!(t.files[0].entry.mode & 0o111, 0);
        assert_eq!(t.hashed_files, 3);
        t.manifest().validate().unwrap();
    }

    #[test]
    fn honours_gitignore_ignore_and_cloudrunignore_without_a_git_repo() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, ".gitignore", b"*.log\n");
        write(root, ".ignore", b"data/\n");
        write(root, CLOUDRUN_IGNORE_FILE, b"secret.txt\nsub/*.tmp\n");
        write(root, "main.py", b"m");
        write(root, "train.log", b"l");
        write(root, "data/big.bin", b"d");
        write(root, "secret.txt", b"s");
        write(root, "sub/keep.py", b"k");
        write(root, "sub/scratch.tmp", b"t");
        write(root, ".env", b"A=1");
        let t = scan_tree(root, &ScanOptions::default()).unwrap();
        assert_eq!(
            paths(&t),
            [
                ".cloudrunignore",
                ".env",
                ".gitignore",
                ".ignore",
                "main.py",
                "sub/keep.py"
            ]
        );
        let note = t.ignored_note.unwrap();
        assert!(
            note.contains(".gitignore") && note.contains(".cloudrunignore"),
            "{note}"
        );
    }

    #[test]
    fn the_git_directory_is_never_sent_and_repository_rules_apply() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, ".git/config", b"[core]");
        write(root, ".git/info/exclude", b"local.txt\n");
        write(root, ".gitignore", b"*.log\n");
        write(root, "main.py", b"m");
        write(root, "local.txt", b"l");
        write(root, "train.log", b"t");
        let t = scan_tree(root, &ScanOptions::default()).unwrap();
        assert_eq!(paths(&t), [".gitignore", "main.py"]);
    }

    #[test]
    fn ignore_files_above_the_root_count_only_inside_a_git_repository() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), ".gitignore", b"secret.txt\n");
        let root = d.path().join("proj");
        write(&root, "main.py", b"m");
        write(&root, "secret.txt", b"s");
        let t = scan_tree(&root, &ScanOptions::default()).unwrap();
        assert_eq!(paths(&t), ["main.py", "secret.txt"], "a plain folder");
        std::fs::create_dir(d.path().join(".git")).unwrap();
        let t = scan_tree(&root, &ScanOptions::default()).unwrap();
        assert_eq!(paths(&t), ["main.py"], "a subfolder of a repository");
    }

    #[test]
    fn cloudrunignore_can_re_include_what_gitignore_drops() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, ".gitignore", b"*.ckpt\n");
        write(root, CLOUDRUN_IGNORE_FILE, b"!init.ckpt\n");
        write(root, "init.ckpt", b"c");
        write(root, "other.ckpt", b"c");
        let t = scan_tree(root, &ScanOptions::default()).unwrap();
        assert!(paths(&t).contains(&"init.ckpt"));
        assert!(!paths(&t).contains(&"other.ckpt"));
    }

    #[test]
    fn the_index_avoids_rehashing_unchanged_files() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("proj");
        for i in 0..20 {
            write(&root, &format!("f{i}.py"), format!("print({i})").as_bytes());
        }
        for i in 0..20 {
            age(&root, &format!("f{i}.py"), 3600);
        }
        let opts = ScanOptions {
            index_path: Some(d.path().join("cache/index.json")),
            threads: 2,
        };
        let first = scan_tree(&root, &opts).unwrap();
        assert_eq!(first.hashed_files, 20);
        let second = scan_tree(&root, &opts).unwrap();
        assert_eq!(second.hashed_files, 0, "nothing changed, nothing hashed");
        assert_eq!(second.hashed_bytes, 0);
        assert_eq!(first.files, second.files);

        // Same size, new content, new mtime: only that file is hashed again.
        write(&root, "f3.py", b"print(9)");
        age(&root, "f3.py", 1800);
        let third = scan_tree(&root, &opts).unwrap();
        assert_eq!(third.hashed_files, 1);
        let f3 = third
            .files
            .iter()
            .find(|f| f.entry.path == "f3.py")
            .unwrap();
        assert_eq!(f3.entry.sha256, sha256_hex(b"print(9)"));
    }

    #[test]
    fn a_file_modified_just_before_the_scan_is_hashed_again() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("proj");
        write(&root, "fresh.py", b"a");
        let opts = ScanOptions {
            index_path: Some(d.path().join("index.json")),
            threads: 1,
        };
        scan_tree(&root, &opts).unwrap();
        // Its mtime is within the racy window of the indexing scan: not trusted.
        assert_eq!(scan_tree(&root, &opts).unwrap().hashed_files, 1);
    }

    #[test]
    fn a_corrupt_index_is_ignored_and_rebuilt() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("proj");
        write(&root, "a.py", b"a");
        age(&root, "a.py", 3600);
        let ix = d.path().join("index.json");
        std::fs::write(&ix, b"{not json").unwrap();
        let opts = ScanOptions {
            index_path: Some(ix),
            threads: 1,
        };
        assert_eq!(scan_tree(&root, &opts).unwrap().hashed_files, 1);
        assert_eq!(scan_tree(&root, &opts).unwrap().hashed_files, 0);
    }

    #[test]
    fn a_symlink_outside_the_tree_is_refused_naming_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("proj");
        write(&root, "main.py", b"m");
        write(d.path(), "outside/secret", b"s");
        std::os::unix::fs::symlink("../outside/secret", root.join("leak")).unwrap();
        let err = scan_tree(&root, &ScanOptions::default()).unwrap_err();
        assert!(matches!(err, SyncError::SymlinkOutsideTree { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("leak") && msg.contains(".cloudrunignore"),
            "{msg}"
        );

        // Absolute targets too, even when they point back inside.
        std::fs::remove_file(root.join("leak")).unwrap();
        std::os::unix::fs::symlink(root.join("main.py"), root.join("abs")).unwrap();
        assert!(matches!(
            scan_tree(&root, &ScanOptions::default()),
            Err(SyncError::SymlinkOutsideTree { .. })
        ));

        // Ignored links are not looked at.
        write(&root, CLOUDRUN_IGNORE_FILE, b"abs\n");
        scan_tree(&root, &ScanOptions::default()).unwrap();
    }

    #[test]
    fn a_symlink_through_an_ignored_escaping_link_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("proj");
        write(&root, CLOUDRUN_IGNORE_FILE, b"out\n");
        std::fs::create_dir_all(d.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("out", root.join("sneaky")).unwrap();
        assert!(matches!(
            scan_tree(&root, &ScanOptions::default()),
            Err(SyncError::SymlinkOutsideTree { .. })
        ));
    }

    #[test]
    fn an_in_tree_symlink_is_recorded_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "data/real.csv", b"1,2");
        std::os::unix::fs::symlink("real.csv", root.join("data/latest.csv")).unwrap();
        std::os::unix::fs::symlink("data", root.join("d")).unwrap();
        let t = scan_tree(root, &ScanOptions::default()).unwrap();
        assert_eq!(paths(&t), ["d", "data/latest.csv", "data/real.csv"]);
        assert_eq!(t.files[0].entry.link.as_deref(), Some("data"));
        assert_eq!(t.files[1].entry.link.as_deref(), Some("real.csv"));
        assert_eq!(t.files[1].entry.sha256, sha256_hex(b"real.csv"));
        t.manifest().validate().unwrap();
    }

    #[test]
    fn special_files_are_skipped_and_noted() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "a.py", b"a");
        let _sock = std::os::unix::net::UnixListener::bind(root.join("s.sock")).unwrap();
        let t = scan_tree(root, &ScanOptions::default()).unwrap();
        assert_eq!(paths(&t), ["a.py"]);
        assert_eq!(t.skipped, ["s.sock"]);
        assert!(t.ignored_note.unwrap().contains("s.sock"));
    }
}
