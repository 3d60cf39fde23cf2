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
