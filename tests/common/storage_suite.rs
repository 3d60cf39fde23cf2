//! The one conformance suite for the [`Storage`] trait: what every backend (a local
//! directory, GCS through fake-gcs-server, GCS through gcp-storage-emulator) promises,
//! written once as async checks over a [`Backend`] and run per backend by
//! [`conformance!`].
//!
//! Where an emulator departs from GCS, its [`Quirks`] say so and the check asserts the
//! emulator's behaviour as it is, with the reason, instead of skipping: an emulator
//! upgrade that fixes the quirk fails the check and points here. What the suite cannot
//! see through a quirk is covered elsewhere, named at the quirk.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cloudrun::storage::gcs::SIMPLE_UPLOAD_MAX_BYTES;
use cloudrun::storage::{crc32c_to_base64, PutOptions, Storage, StorageError, DOWNLOAD_MODE};
use cloudrun_testkit::TempDir;
use futures::StreamExt;

/// Objects the paging check writes: more than one page of a GCS listing (1000 a page).
pub const PAGING_OBJECTS: usize = 1_030;

/// Objects per page the raw paging probe asks an emulator for.
const PROBE_PAGE_SIZE: usize = 10;

/// Size of the file the file round trip sends: past the one-request upload limit, so a
/// GCS backend goes resumable, in more than one chunk.
pub const LARGE_FILE_BYTES: usize = SIMPLE_UPLOAD_MAX_BYTES as usize + 3_000_001;

/// Size of a file that is just past the one-request upload limit (resumable on GCS).
pub const RESUMABLE_FILE_BYTES: usize = SIMPLE_UPLOAD_MAX_BYTES as usize + 5;

/// A name with a space, `#`, `?`, `+` and a non-ASCII letter, each of which must be
/// percent-encoded on the wire.
pub const SPECIAL_KEY: &str = "runs/a b/#x?+é.txt";

/// Where a backend is known to depart from GCS. Each check that meets a quirk asserts
/// the quirky behaviour (and says to drop the quirk when it no longer holds).
#[derive(Debug, Default, Clone, Copy)]
pub struct Quirks {
    /// One-request (multipart) uploads ignore `ifGenerationMatch`: a create-only or
    /// stale-generation write over an existing object lands where GCS answers 412
    /// (gcp-storage-emulator 2026.7.19). That the client sends the precondition and maps
    /// 412 is checked against an in-process server in `tests/storage_gcs.rs`
    /// (`create_only_puts_send_if_generation_match_zero_and_map_412`).
    pub ignores_preconditions_on_multipart: bool,
    /// Resumable uploads (files past the one-request limit) ignore the `ifGenerationMatch`
    /// of the session they were opened with (fake-gcs-server 1.54, which does enforce it
    /// on multipart uploads; gcp-storage-emulator).
    pub ignores_preconditions_on_resumable: bool,
    /// `maxResults` is ignored and no `nextPageToken` is sent (gcp-storage-emulator): a
    /// listing is one page, so following page tokens is exercised on the other backends.
    pub lists_in_one_page: bool,
    /// The server checks a resumable upload against the CRC32C declared for it and
    /// refuses a mismatch itself with HTTP 400 "Provided CRC32C ... doesn't match", as GCS
    /// does (gcp-storage-emulator); the client passes that refusal on as
    /// [`StorageError::Http`], not [`StorageError::Integrity`]. fake-gcs-server 1.54 does
    /// not check, so there the client's own check answers.
    pub refuses_mismatched_crc32c_on_resumable: bool,
}

/// How a check reaches what a backend stores, to look at it or damage it.
pub enum Wire {
    /// A local directory: object bytes at `root/<key>`, records under `.cloudrun-meta/`.
    Local { root: PathBuf },
    /// A GCS JSON emulator on `127.0.0.1:port`.
    Gcs { port: u16, bucket: String },
}

/// One backend under test, with what keeps it alive (emulator process, temp dirs).
pub struct Backend {
    pub store: Arc<dyn Storage>,
    pub quirks: Quirks,
    pub wire: Wire,
    /// What [`Storage::bucket_location`] must answer (`None`: a store without one).
    pub location: Option<&'static str>,
    /// The file holding an object's bytes, its recorded checksum kept elsewhere.
    pub object_file: Box<dyn Fn(&str) -> PathBuf>,
    /// Scratch space for files the checks upload and download.
    pub scratch: TempDir,
    /// What must live as long as the backend (an emulator process, a directory).
    pub _keep: Box<dyn Any>,
}

impl Backend {
    /// Rewrite an object's bytes behind the store's back, same length and mtime, as
    /// silent disk corruption would: its recorded CRC32C no longer matches.
    fn corrupt(&self, key: &str, data: &[u8]) {
        let path = (self.object_file)(key);
        let st = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (where the backend keeps {key})", path.display()));
        assert_eq!(st.len(), data.len() as u64, "corrupt keeps the size");
        std::fs::write(&path, data).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(st.modified().unwrap()).unwrap();
    }

    /// The content type the backend recorded for `key`.
    async fn stored_content_type(&self, key: &str) -> Option<String> {
        match &self.wire {
            Wire::Local { root } => {
                let rec =
                    std::fs::read(root.join(".cloudrun-meta").join(format!("{key}.json"))).unwrap();
                let rec: serde_json::Value = serde_json::from_slice(&rec).unwrap();
                rec["content_type"].as_str().map(str::to_string)
            }
            Wire::Gcs { .. } => {
                let obj = self.raw_json(&format!("o/{}", encode(key))).await;
                obj["contentType"].as_str().map(str::to_string)
            }
        }
    }

    /// A JSON API resource under the bucket, read straight from the emulator (not through
    /// the backend under test).
    async fn raw_json(&self, path: &str) -> serde_json::Value {
        let Wire::Gcs { port, bucket } = &self.wire else {
            panic!("raw_json is for GCS emulators");
        };
        let url = format!("http://127.0.0.1:{port}/storage/v1/b/{bucket}/{path}");
        let resp = reqwest::get(&url).await.unwrap();
        assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
        resp.json().await.unwrap()
    }
}

/// Whether a write guarded by a precondition that no longer holds was refused as
/// PreconditionFailed (`true`) or, on a backend with the named quirk, landed (`false`).
fn refused(
    result: Result<cloudrun::storage::ObjectMeta, StorageError>,
    quirk: bool,
    name: &str,
) -> bool {
    if quirk {
        assert!(
            result.is_ok(),
            "quirk {name} no longer holds: drop it from this backend ({:?})",
            result.err()
        );
        return false;
    }
    let err = result.unwrap_err();
    assert!(
        matches!(err, StorageError::PreconditionFailed { .. }),
        "{err}"
    );
    true
}

/// Percent-encode an object name for a URL path segment.
fn encode(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn pattern(seed: usize, size: usize) -> Vec<u8> {
    (0..size).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

async fn put(s: &dyn Storage, key: &str, data: &'static [u8]) -> cloudrun::storage::ObjectMeta {
    s.put_bytes(key, Bytes::from_static(data), &PutOptions::default())
        .await
        .unwrap()
}

async fn read_range(s: &dyn Storage, key: &str, range: (u64, Option<u64>)) -> Vec<u8> {
    let mut st = s.get_stream(key, Some(range)).await.unwrap();
    let mut got = Vec::new();
    while let Some(c) = st.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    got
}

async fn keys(s: &dyn Storage, prefix: &str) -> Vec<String> {
    s.list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

/// The process's umask (from `/proc/self/status`). If it would make new files owner-only
/// (so a check could not tell "the umask was applied" from "0600"), it is set to 022
/// first. Returns the umask in force.
fn ensure_umask_allows_group_read() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let current = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    if DOWNLOAD_MODE & !current == 0o600 {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        return 0o022;
    }
    current
}

// ---- the checks ----------------------------------------------------------------------

/// put_bytes answers the stored size, MD5, CRC32C, generation and metadata; head answers
/// the same; get_bytes gives the bytes back.
pub async fn bytes_round_trip_with_checksums_and_metadata(b: &Backend) {
    let s = &*b.store;
    let mut opts = PutOptions::default().with_content_type("text/plain");
    opts.metadata = BTreeMap::from([("step".to_string(), "100".to_string())]);
    let m = s
        .put_bytes("runs/a/x.txt", Bytes::from_static(b"hello world"), &opts)
        .await
        .unwrap();
    assert_eq!(m.key, "runs/a/x.txt");
    assert_eq!(m.size, 11);
    assert_eq!(m.md5_base64.as_deref(), Some("XrY7u+Ae7tCTyyK7j1rNww=="));
    assert_eq!(m.crc32c.map(crc32c_to_base64).as_deref(), Some("yZRlqg=="));
    assert_eq!(m.metadata["step"], "100");
    let h = s.head("runs/a/x.txt").await.unwrap().unwrap();
    assert_eq!(
        (h.size, h.crc32c, &h.md5_base64, h.generation, &h.metadata),
        (m.size, m.crc32c, &m.md5_base64, m.generation, &m.metadata)
    );
    assert_eq!(
        &s.get_bytes("runs/a/x.txt").await.unwrap()[..],
        b"hello world"
    );
}

/// An absent object: head is `None`, reads are NotFound, a download writes nothing.
pub async fn an_absent_object_is_none_to_head_and_not_found_to_reads(b: &Backend) {
    let s = &*b.store;
    assert!(s.head("nope").await.unwrap().is_none());
    assert!(s.get_bytes("nope").await.unwrap_err().is_not_found());
    let dest = b.scratch.path().join("absent/nope");
    let err = s.get_to_file("nope", &dest).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!dest.exists());
}

/// Every write makes a new generation; head reports the live one.
pub async fn every_write_gets_a_new_generation(b: &Backend) {
    let s = &*b.store;
    let g1 = put(s, "gen", b"one").await.generation;
    let g2 = put(s, "gen", b"two").await.generation;
    assert_ne!(g1, g2);
    assert_eq!(s.head("gen").await.unwrap().unwrap().generation, g2);
}

/// list: every object whose name starts with the prefix (a plain string prefix, not a
/// directory), sorted by name.
pub async fn listing_respects_the_prefix_and_sorts_by_name(b: &Backend) {
    let s = &*b.store;
    for k in ["runs/b/y", "runs/a/x.txt", "runsX", "other/z"] {
        put(s, k, b"x").await;
    }
    assert_eq!(keys(s, "runs/").await, ["runs/a/x.txt", "runs/b/y"]);
    assert_eq!(keys(s, "run").await, ["runs/a/x.txt", "runs/b/y", "runsX"]);
    assert_eq!(keys(s, "runs/a/").await, ["runs/a/x.txt"]);
    assert!(keys(s, "nothing/").await.is_empty());
    assert_eq!(keys(s, "").await.len(), 4);
}

/// A listing longer than a page comes back whole and sorted (the client follows pages).
pub async fn listing_follows_every_page(b: &Backend) {
    let s = b.store.clone();
    // A server that lists in one page gets fewer: more would test nothing more.
    let n = if b.quirks.lists_in_one_page {
        3 * PROBE_PAGE_SIZE
    } else {
        PAGING_OBJECTS
    };
    futures::stream::iter(0..n)
        .map(|i| {
            let s = s.clone();
            async move {
                s.put_bytes(
                    &format!("blobs/{i:05}"),
                    Bytes::from(format!("{i}")),
                    &PutOptions::default(),
                )
                .await
                .unwrap()
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    put(&*s, "blobsX", b"x").await;
    let all = s.list("blobs/").await.unwrap();
    assert_eq!(all.len(), n);
    assert_eq!(all[0].key, "blobs/00000");
    assert_eq!(all[n - 1].key, format!("blobs/{:05}", n - 1));
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    if let Wire::Gcs { .. } = &b.wire {
        // The server itself pages (or, quirk, does not): a raw listing of a small page.
        let page = b
            .raw_json(&format!("o?prefix=blobs%2F&maxResults={PROBE_PAGE_SIZE}"))
            .await;
        let items = page["items"].as_array().map_or(0, Vec::len);
        let token = page.get("nextPageToken").is_some_and(|t| !t.is_null());
        if b.quirks.lists_in_one_page {
            assert_eq!(
                (items, token),
                (n, false),
                "quirk lists_in_one_page no longer holds: drop it from this backend"
            );
        } else {
            assert_eq!((items, token), (PROBE_PAGE_SIZE, true));
        }
    }
}

/// delete: `true` for an object that was there, `false` once it is gone; then it is gone
/// to head, reads and listings.
pub async fn delete_reports_whether_the_object_was_there(b: &Backend) {
    let s = &*b.store;
    put(s, "runs/d/x", b"x").await;
    assert!(s.delete("runs/d/x").await.unwrap());
    assert!(!s.delete("runs/d/x").await.unwrap());
    assert!(!s.delete("never/was").await.unwrap());
    assert!(s.head("runs/d/x").await.unwrap().is_none());
    assert!(s.get_bytes("runs/d/x").await.unwrap_err().is_not_found());
    assert!(keys(s, "runs/d/").await.is_empty());
}

/// Create-only (`ifGenerationMatch=0`): the first put lands, the second is
/// PreconditionFailed and leaves the first in place; for bytes (one request) and for a
/// file past the one-request limit (resumable on GCS).
pub async fn create_only_refuses_an_existing_object(b: &Backend) {
    let s = &*b.store;
    s.put_bytes("lock", Bytes::from_static(b"a"), &PutOptions::create_only())
        .await
        .unwrap();
    let second = s
        .put_bytes("lock", Bytes::from_static(b"b"), &PutOptions::create_only())
        .await;
    let q = b.quirks.ignores_preconditions_on_multipart;
    let want: &[u8] = if refused(second, q, "ignores_preconditions_on_multipart") {
        b"a"
    } else {
        b"b"
    };
    assert_eq!(&s.get_bytes("lock").await.unwrap()[..], want);

    let (first, other) = (
        b.scratch.path().join("first"),
        b.scratch.path().join("other"),
    );
    std::fs::write(&first, pattern(1, RESUMABLE_FILE_BYTES)).unwrap();
    std::fs::write(&other, pattern(2, RESUMABLE_FILE_BYTES)).unwrap();
    let m = s
        .put_file("big-lock", &first, &PutOptions::create_only())
        .await
        .unwrap();
    let second = s
        .put_file("big-lock", &other, &PutOptions::create_only())
        .await;
    let q = b.quirks.ignores_preconditions_on_resumable;
    let live = s.head("big-lock").await.unwrap().unwrap();
    if refused(second, q, "ignores_preconditions_on_resumable") {
        assert_eq!(live.generation, m.generation);
    } else {
        assert_ne!(live.crc32c, m.crc32c);
    }
}

/// `ifGenerationMatch=G`: a write naming the live generation lands; one naming a
/// generation that has since been replaced is PreconditionFailed and changes nothing.
pub async fn if_generation_match_updates_only_the_named_generation(b: &Backend) {
    let s = &*b.store;
    let g1 = put(s, "doc", b"v1").await.generation;
    let at = |g| PutOptions {
        if_generation_match: Some(g),
        ..PutOptions::default()
    };
    let g2 = s
        .put_bytes("doc", Bytes::from_static(b"v2"), &at(g1))
        .await
        .unwrap()
        .generation;
    assert_ne!(g1, g2);
    let stale = s.put_bytes("doc", Bytes::from_static(b"v3"), &at(g1)).await;
    let q = b.quirks.ignores_preconditions_on_multipart;
    if refused(stale, q, "ignores_preconditions_on_multipart") {
        assert_eq!(&s.get_bytes("doc").await.unwrap()[..], b"v2");
        assert_eq!(s.head("doc").await.unwrap().unwrap().generation, g2);
    } else {
        assert_eq!(&s.get_bytes("doc").await.unwrap()[..], b"v3");
    }
}

/// The content type given to a put (bytes or file) is what the store records.
pub async fn the_content_type_given_is_recorded(b: &Backend) {
    let s = &*b.store;
    s.put_bytes(
        "typed/rows.ndjson",
        Bytes::from_static(b"{}\n"),
        &PutOptions::default().with_content_type("application/x-ndjson"),
    )
    .await
    .unwrap();
    assert_eq!(
        b.stored_content_type("typed/rows.ndjson").await.as_deref(),
        Some("application/x-ndjson")
    );
    let src = b.scratch.path().join("table.csv");
    std::fs::write(&src, b"a,b\n1,2\n").unwrap();
    s.put_file(
        "typed/table.csv",
        &src,
        &PutOptions::default().with_content_type("text/csv"),
    )
    .await
    .unwrap();
    assert_eq!(
        b.stored_content_type("typed/table.csv").await.as_deref(),
        Some("text/csv")
    );
}

/// A name with characters that need encoding round-trips through put, head, get, list
/// and delete.
pub async fn names_with_special_characters_round_trip(b: &Backend) {
    let s = &*b.store;
    let m = put(s, SPECIAL_KEY, b"special").await;
    assert_eq!(m.key, SPECIAL_KEY);
    assert_eq!(s.head(SPECIAL_KEY).await.unwrap().unwrap().key, SPECIAL_KEY);
    assert_eq!(&s.get_bytes(SPECIAL_KEY).await.unwrap()[..], b"special");
    assert_eq!(keys(s, "runs/a b/").await, [SPECIAL_KEY]);
    assert!(s.delete(SPECIAL_KEY).await.unwrap());
    assert!(s.head(SPECIAL_KEY).await.unwrap().is_none());
}

/// A ranged read gives exactly `start..end` (or `start..` to the end).
pub async fn ranged_reads_return_exactly_the_range(b: &Backend) {
    let s = &*b.store;
    put(s, "k", b"0123456789").await;
    assert_eq!(read_range(s, "k", (3, Some(7))).await, b"3456");
    assert_eq!(read_range(s, "k", (8, None)).await, b"89");
}

/// A file past the one-request upload limit goes up and comes back byte for byte into a
/// new directory, with the mode the umask gives a new file (not a temporary file's 0600).
pub async fn files_go_up_and_come_back_whole(b: &Backend) {
    let s = &*b.store;
    let src = b.scratch.path().join("ckpt.bin");
    let data = pattern(1, LARGE_FILE_BYTES);
    std::fs::write(&src, &data).unwrap();
    let m = s
        .put_file("outputs/checkpoint/ckpt.bin", &src, &PutOptions::default())
        .await
        .unwrap();
    assert_eq!(m.size, data.len() as u64);
    assert_eq!(m.crc32c, Some(crc32c::crc32c(&data)));
    let umask = ensure_umask_allows_group_read();
    let dest = b.scratch.path().join("back/dir/ckpt.bin");
    let n = s
        .get_to_file("outputs/checkpoint/ckpt.bin", &dest)
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert!(
        std::fs::read(&dest).unwrap() == data,
        "downloaded bytes differ"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, DOWNLOAD_MODE & !umask);
    assert_ne!(mode, 0o600);
}

/// A put whose declared CRC32C does not match the bytes (a file that changed after it was
/// hashed) is an Integrity error and leaves no object: bytes, a small file, a large file.
pub async fn a_declared_crc32c_that_does_not_match_stores_nothing(b: &Backend) {
    let s = &*b.store;
    let bad = |data: &[u8]| PutOptions {
        crc32c: Some(crc32c::crc32c(data) ^ 1),
        ..PutOptions::default()
    };
    let err = s
        .put_bytes("bytes.bin", Bytes::from_static(b"data"), &bad(b"data"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Integrity { .. }), "{err}");
    assert!(s.head("bytes.bin").await.unwrap().is_none());
    for (name, size) in [
        ("small.bin", 1_000usize),
        ("large.bin", RESUMABLE_FILE_BYTES),
    ] {
        let src = b.scratch.path().join(name);
        let data = pattern(size, size);
        std::fs::write(&src, &data).unwrap();
        let err = s.put_file(name, &src, &bad(&data)).await.unwrap_err();
        let server_refused = b.quirks.refuses_mismatched_crc32c_on_resumable
            && size == RESUMABLE_FILE_BYTES
            && matches!(&err, StorageError::Http { status: 400, body, .. } if body.contains("CRC32C"));
        assert!(
            server_refused || matches!(err, StorageError::Integrity { .. }),
            "{name}: {err}"
        );
        assert!(
            s.head(name).await.unwrap().is_none(),
            "{name} must not be left behind"
        );
    }
}

/// An object whose bytes no longer match its recorded CRC32C is an Integrity error to a
/// read; a download of it leaves no file (and no temporary file), and one over an existing
/// file leaves that file as it was.
pub async fn a_corrupted_object_is_an_integrity_error_and_leaves_no_file(b: &Backend) {
    let s = &*b.store;
    put(s, "blobs/x", b"good bytes").await;
    b.corrupt("blobs/x", b"evil bytes");
    let err = s.get_bytes("blobs/x").await.unwrap_err();
    assert!(matches!(err, StorageError::Integrity { .. }), "{err}");

    let dir = b.scratch.path().join("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("x");
    let err = s.get_to_file("blobs/x", &target).await.unwrap_err();
    assert!(matches!(err, StorageError::Integrity { .. }), "{err}");
    assert!(!target.exists(), "a failed download must not leave a file");
    assert_eq!(count_entries(&dir), 0, "no temporary file left behind");

    std::fs::write(&target, b"mine").unwrap();
    let err = s.get_to_file("blobs/x", &target).await.unwrap_err();
    assert!(matches!(err, StorageError::Integrity { .. }), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"mine");
    assert_eq!(count_entries(&dir), 1);
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// bucket_location: the location `buckets.get` reports, upper case; `None` for a store
/// that has none.
pub async fn bucket_location_is_what_the_store_reports(b: &Backend) {
    let got = b.store.bucket_location().await.unwrap();
    assert_eq!(
        got.as_ref().map(|p| p.location.as_str()),
        b.location,
        "{got:?}"
    );
}

/// One `#[tokio::test]` per check for a backend: `conformance!(module, make_backend)`
/// where `make_backend()` returns a fresh [`Backend`]. Every check is listed here once.
macro_rules! conformance {
    ($module:ident, $make:path) => {
        mod $module {
            $crate::common::storage_suite::conformance!(@each $make;
                bytes_round_trip_with_checksums_and_metadata,
                an_absent_object_is_none_to_head_and_not_found_to_reads,
                every_write_gets_a_new_generation,
                listing_respects_the_prefix_and_sorts_by_name,
                listing_follows_every_page,
                delete_reports_whether_the_object_was_there,
                create_only_refuses_an_existing_object,
                if_generation_match_updates_only_the_named_generation,
                the_content_type_given_is_recorded,
                names_with_special_characters_round_trip,
                ranged_reads_return_exactly_the_range,
                files_go_up_and_come_back_whole,
                a_declared_crc32c_that_does_not_match_stores_nothing,
                a_corrupted_object_is_an_integrity_error_and_leaves_no_file,
                bucket_location_is_what_the_store_reports,
            );
        }
    };
    (@each $make:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::common::storage_suite::$check(&$make()).await;
            }
        )*
    };
}
pub(crate) use conformance;
