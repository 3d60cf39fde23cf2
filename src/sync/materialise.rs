//! Materialising a manifest: the code tree rebuilt in a directory from `blobs/<sha256>`.
//!
//! Everything that can be checked before writing is checked first, so a bad manifest
//! leaves the destination untouched: the manifest itself ([`Manifest::validate`]: no `..`,
//! no absolute paths, symlink targets inside the tree), and the destination (no directory
//! on the way that is a symlink out of it, no file where a directory must go). Then each
//! file is downloaded to a temporary file beside its final name, checked against the
//! manifest's size and SHA-256 (the store checks CRC32C on the way), given its mode and
//! renamed into place, so no one ever sees half a file. Files already there with the
//! right contents are left alone. Files in the destination that the manifest does not
//! list are left alone too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use super::{blocking, check_destination, digest_file, SyncError, TMP_PREFIX};
use crate::layout::Layout;
use crate::manifest::{Manifest, ManifestEntry};
use crate::storage::Storage;

/// What a materialise did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaterialiseReport {
    /// Entries of the manifest now in place (files and symlinks).
    pub files: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Files downloaded.
    pub downloaded: usize,
    /// Entries that were already right and were not touched (apart from their mode).
    pub unchanged: usize,
}

/// Read and check the manifest at `key`.
pub async fn fetch_manifest(storage: &dyn Storage, key: &str) -> Result<Manifest, SyncError> {
    let bytes = storage
        .get_bytes(key)
        .await
        .map_err(|e| SyncError::storage(format!("reading the manifest {key}"), e))?;
    Ok(Manifest::from_json(&String::from_utf8_lossy(&bytes))?)
}

/// Rebuild `manifest` under `dest` with blobs from `storage`, `concurrency` downloads at a
/// time.
pub async fn materialise(
    storage: Arc<dyn Storage>,
    layout: &Layout,
    manifest: &Manifest,
    dest: &Path,
    concurrency: usize,
) -> Result<MaterialiseReport, SyncError> {
    manifest.validate()?;
    {
        let manifest = manifest.clone();
        let dest = dest.to_path_buf();
        blocking(move || {
            check_destination(&dest, manifest.entries.iter().map(|e| e.path.as_str()))
        })
        .await?;
    }
    tokio::fs::create_dir_all(dest)
        .await
        .map_err(|e| SyncError::io(dest, e))?;

    let (links, files): (Vec<&ManifestEntry>, Vec<&ManifestEntry>) =
        manifest.entries.iter().partition(|e| e.link.is_some());

    let done: Vec<Option<u64>> = futures::stream::iter(files)
        .map(|e| {
            let storage = storage.clone();
            async move { place_file(storage.as_ref(), layout, e, dest).await }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;

    let mut report = MaterialiseReport {
        files: manifest.entries.len(),
        bytes: done.iter().flatten().sum(),
        downloaded: done.iter().flatten().count(),
        unchanged: done.iter().filter(|d| d.is_none()).count(),
    };
    for e in links {
        if !place_link(e, dest).await? {
            report.unchanged += 1;
        }
    }
    Ok(report)
}

/// The mode a file gets: only the exec bits of the manifest count.
fn file_mode(e: &ManifestEntry) -> u32 {
    if e.mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Put one file in place. `Some(bytes)` if downloaded, `None` if it was already right.
async fn place_file(
    storage: &dyn Storage,
    layout: &Layout,
    e: &ManifestEntry,
    dest: &Path,
) -> Result<Option<u64>, SyncError> {
    use std::os::unix::fs::PermissionsExt;
    let path = dest.join(&e.path);
    let mode = file_mode(e);
    if already_right(&path, e).await? {
        let perms = std::fs::Permissions::from_mode(mode);
        tokio::fs::set_permissions(&path, perms)
            .await
            .map_err(|err| SyncError::io(&path, err))?;
        return Ok(None);
    }
    let dir = path.parent().unwrap_or(dest).to_path_buf();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|err| SyncError::io(&dir, err))?;
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(&dir)
        .map_err(|err| SyncError::io(&dir, err))?;
    // From here on, dropping `tmp_path` (an error, or the whole materialise being
    // abandoned) removes the partial file.
    let (std_file, tmp_path) = tmp.into_parts();
    let mut file = tokio::fs::File::from_std(std_file);
    let key = layout.blob(&e.sha256);
    let what = || format!("downloading {} from {key}", e.path);
    let mut stream = storage
        .get_stream(&key, None)
        .await
        .map_err(|err| SyncError::storage(what(), err))?;
    let mut sha = sha2::Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| SyncError::storage(what(), err))?;
        sha.update(&chunk);
        n += chunk.len() as u64;
        file.write_all(&chunk)
            .await
            .map_err(|err| SyncError::io(&path, err))?;
    }
    let got = hex::encode(sha.finalize());
    if n != e.size || got != e.sha256 {
        return Err(SyncError::Integrity {
            what: what(),
            detail: format!(
                "got {n} bytes with SHA-256 {got}, the manifest says {} bytes with {}; \
                 the blob is damaged: delete it and push the tree again",
                e.size, e.sha256
            ),
        });
    }
    file.flush()
        .await
        .map_err(|err| SyncError::io(&path, err))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .await
        .map_err(|err| SyncError::io(&path, err))?;
    file.sync_all()
        .await
        .map_err(|err| SyncError::io(&path, err))?;
    drop(file);
    tmp_path
        .persist(&path)
        .map_err(|err| SyncError::io(&path, err.error))?;
    Ok(Some(n))
}

/// Whether `path` is a regular file with the entry's size and SHA-256.
async fn already_right(path: &Path, e: &ManifestEntry) -> Result<bool, SyncError> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(st) if st.is_file() && st.len() == e.size => {}
        Ok(_) => return Ok(false),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(SyncError::io(path, err)),
    }
    let p: PathBuf = path.to_path_buf();
    let d = blocking(move || digest_file(&p)).await?;
    Ok(d.sha256 == e.sha256 && d.size == e.size)
}

/// Put one symlink in place (atomically replacing whatever file or link is there).
/// `true` if it was created, `false` if it was already right.
async fn place_link(e: &ManifestEntry, dest: &Path) -> Result<bool, SyncError> {
    let Some(target) = e.link.clone() else {
        return Ok(false);
    };
    let path = dest.join(&e.path);
    blocking(move || {
        if let Ok(current) = std::fs::read_link(&path) {
            if current.as_os_str() == target.as_str() {
                return Ok(false);
            }
        }
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|err| SyncError::io(&dir, err))?;
        let tmp = dir.join(format!(
            "{TMP_PREFIX}link-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::os::unix::fs::symlink(&target, &tmp).map_err(|err| SyncError::io(&tmp, err))?;
        if let Err(err) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(SyncError::io(&path, err));
        }
        Ok(true)
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::manifest::MANIFEST_SCHEMA;
    use crate::storage::local::LocalStorage;
    use crate::storage::PutOptions;
    use crate::sync::test_util::{leftovers, read_tree, write};
    use crate::sync::{push_tree, scan_tree, sha256_hex, PushOptions, ScanOptions};

    struct Fixture {
        d: tempfile::TempDir,
        store: Arc<LocalStorage>,
        layout: Layout,
        manifest: Manifest,
    }

    /// A project pushed to a local store.
    async fn pushed() -> Fixture {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("proj");
        write(&root, "main.py", b"import model\n");
        write(&root, "src/model.py", b"class M: pass\n");
        write(&root, "src/deep/er/x.txt", b"deep");
        write(&root, "empty", b"");
        write(&root, "run.sh", b"#!/bin/sh\necho hi\n");
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("src/model.py", root.join("model_link.py")).unwrap();
        std::os::unix::fs::symlink("deep", root.join("src/d")).unwrap();
        let store = Arc::new(LocalStorage::new(d.path().join("bucket")));
        let layout = Layout::new("p");
        let tree = scan_tree(&root, &ScanOptions::default()).unwrap();
        let r = push_tree(
            store.clone(),
            &layout,
            &tree,
            "p/runs/r/manifest.json",
            &PushOptions::default(),
        )
        .await
        .unwrap();
        Fixture {
            d,
            store,
            layout,
            manifest: r.manifest,
        }
    }

    fn entry(path: &str, data: &[u8]) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            size: data.len() as u64,
            mode: 0o644,
            sha256: sha256_hex(data),
            link: None,
        }
    }

    fn manifest(entries: Vec<ManifestEntry>) -> Manifest {
        Manifest {
            schema: MANIFEST_SCHEMA,
            created_at: chrono::Utc::now(),
            entries,
        }
    }

    #[tokio::test]
    async fn push_then_materialise_round_trips_contents_modes_and_symlinks() {
        let f = pushed().await;
        let out = f.d.path().join("out");
        let r = materialise(f.store.clone(), &f.layout, &f.manifest, &out, 4)
            .await
            .unwrap();
        assert_eq!(r.files, 7);
        assert_eq!(r.downloaded, 5);
        assert_eq!(read_tree(&out), read_tree(&f.d.path().join("proj")));
        let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("run.sh"), 0o755);
        assert_eq!(mode("main.py"), 0o644);
        assert_eq!(
            std::fs::read_link(out.join("model_link.py")).unwrap(),
            std::path::Path::new("src/model.py")
        );
        assert_eq!(std::fs::read(out.join("src/d/er/x.txt")).unwrap(), b"deep");
        assert!(leftovers(&out).is_empty());
    }

    #[tokio::test]
    async fn materialising_again_downloads_only_what_differs() {
        let f = pushed().await;
        let out = f.d.path().join("out");
        materialise(f.store.clone(), &f.layout, &f.manifest, &out, 4)
            .await
            .unwrap();
        let again = materialise(f.store.clone(), &f.layout, &f.manifest, &out, 4)
            .await
            .unwrap();
        assert_eq!((again.downloaded, again.unchanged, again.bytes), (0, 7, 0));

        std::fs::write(out.join("main.py"), b"import modeL\n").unwrap();
        std::fs::set_permissions(out.join("run.sh"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let third = materialise(f.store.clone(), &f.layout, &f.manifest, &out, 4)
            .await
            .unwrap();
        assert_eq!(third.downloaded, 1);
        assert_eq!(
            std::fs::read(out.join("main.py")).unwrap(),
            b"import model\n"
        );
        let mode = std::fs::metadata(out.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "modes are set even on unchanged files");
    }

    #[tokio::test]
    async fn traversal_absolute_and_escaping_link_manifests_write_nothing() {
        let f = pushed().await;
        let good = f.manifest.entries[0].clone();
        let mut escaping_link = entry("lib", b"../../etc");
        escaping_link.link = Some("../../etc".into());
        for bad in [
            entry("../evil.py", b"x"),
            entry("src/../../evil.py", b"x"),
            entry("/etc/cron.d/evil", b"x"),
            escaping_link,
        ] {
            let out = f.d.path().join("out");
            let m = manifest(vec![good.clone(), bad.clone()]);
            let err = materialise(f.store.clone(), &f.layout, &m, &out, 4)
                .await
                .unwrap_err();
            assert!(matches!(err, SyncError::Manifest(_)), "{}: {err}", bad.path);
            assert!(err.to_string().contains("nothing was written"));
            assert!(!out.exists(), "{}: the destination was created", bad.path);
            assert!(!f.d.path().join("evil.py").exists());
        }
    }

    #[tokio::test]
    async fn a_symlinked_directory_in_the_destination_pointing_outside_is_refused() {
        let f = pushed().await;
        let out = f.d.path().join("out");
        let outside = f.d.path().join("outside");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("src")).unwrap();
        let err = materialise(f.store.clone(), &f.layout, &f.manifest, &out, 4)
            .await
            .unwrap_err();
        assert!(matches!(err, SyncError::UnsafeDestination { .. }), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            1,
            "only the trap itself"
        );
    }

    #[tokio::test]
    async fn a_corrupted_blob_fails_its_checksum_and_leaves_no_partial_file() {
        let f = pushed().await;
        let key = f.layout.blob(&sha256_hex(b"class M: pass\n"));
        let path = f.store.root().join(&key);
        let st = std::fs::metadata(&path).unwrap();
        // Flip bytes, keep size and mtime: silent disk corruption.
        std::fs::write(&path, b"class X: pass\n").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(st.modified().unwrap()).unwrap();

        let out = f.d.path().join("out");
        let err = materialise(f.store.clone(), &f.layout, &f.manifest, &out, 1)
            .await
            .unwrap_err();
        assert!(err.is_integrity(), "{err}");
        assert!(!out.join("src/model.py").exists());
        assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    }

    #[tokio::test]
    async fn a_blob_changed_behind_the_stores_back_fails_the_stores_own_check() {
        let f = pushed().await;
        let key = f.layout.blob(&sha256_hex(b"class M: pass\n"));
        // Rewritten with a new mtime: the store's record still holds the pushed checksum.
        std::fs::write(f.store.root().join(&key), b"class X: pass\n").unwrap();
        let out = f.d.path().join("out");
        let err = materialise(f.store.clone(), &f.layout, &f.manifest, &out, 1)
            .await
            .unwrap_err();
        assert!(err.is_integrity(), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&key) && msg.contains("its record is"), "{msg}");
        assert!(!out.join("src/model.py").exists());
        assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    }

    #[tokio::test]
    async fn a_blob_with_other_contents_is_caught_by_its_sha256() {
        let f = pushed().await;
        // Consistent with its own CRC32C, but not what the manifest names.
        let key = f.layout.blob(&sha256_hex(b"import model\n"));
        f.store
            .put_bytes(
                &key,
                bytes::Bytes::from_static(b"import evil!\n"),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        let out = f.d.path().join("out");
        let err = materialise(f.store.clone(), &f.layout, &f.manifest, &out, 4)
            .await
            .unwrap_err();
        assert!(matches!(err, SyncError::Integrity { .. }), "{err}");
        assert!(!out.join("main.py").exists());
        assert!(leftovers(&out).is_empty());
    }

    #[tokio::test]
    async fn a_missing_blob_names_the_file() {
        let f = pushed().await;
        let m = manifest(vec![entry("never_pushed.py", b"nope")]);
        let err = materialise(f.store.clone(), &f.layout, &m, &f.d.path().join("out"), 4)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("never_pushed.py"), "{err}");
    }
}
