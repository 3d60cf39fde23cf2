//! The catalog cache: the rates read from the Billing Catalog, with their fetch time, in
//! one JSON file under the user's cache directory
//! (`$XDG_CACHE_HOME/cloudrun/prices/compute-catalog.json`). Written to a temporary file
//! and renamed, so a reader never sees half a file; a file that does not parse is
//! reported and ignored, never trusted.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::PriceLayer;

/// The cache format this build writes and reads.
pub const CACHE_SCHEMA: u32 = 1;
/// The cache file's name under the cache directory.
pub const CACHE_FILE: &str = "prices/compute-catalog.json";

/// What the cache holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedCatalog {
    pub schema: u32,
    pub fetched_at: DateTime<Utc>,
    /// The endpoint the rates came from (an emulator's figures are not production's).
    pub endpoint: String,
    pub sku_count: usize,
    pub layer: PriceLayer,
}

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("price cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("price cache {path} is corrupt ({detail})")]
    Corrupt { path: PathBuf, detail: String },
}

/// The cache file under `cache_dir` (the `cloudrun` folder of the user's cache).
pub fn path_in(cache_dir: &Path) -> PathBuf {
    cache_dir.join(CACHE_FILE)
}

/// Read the cache: `Ok(None)` when there is none.
pub fn read(path: &Path) -> Result<Option<CachedCatalog>, CacheError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Io {
                path: path.into(),
                source,
            })
        }
    };
    let c: CachedCatalog = serde_json::from_str(&text).map_err(|e| CacheError::Corrupt {
        path: path.into(),
        detail: e.to_string(),
    })?;
    if c.schema != CACHE_SCHEMA {
        return Err(CacheError::Corrupt {
            path: path.into(),
            detail: format!("schema {} where {CACHE_SCHEMA} was expected", c.schema),
        });
    }
    Ok(Some(c))
}

/// Write the cache atomically.
pub fn write(path: &Path, c: &CachedCatalog) -> Result<(), CacheError> {
    let io = |source| CacheError::Io {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let json = serde_json::to_vec(c).map_err(|e| CacheError::Corrupt {
        path: path.into(),
        detail: e.to_string(),
    })?;
    std::fs::write(&tmp, json).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = path_in(dir.path());
        assert!(read(&p).unwrap().is_none());
        let c = CachedCatalog {
            schema: CACHE_SCHEMA,
            fetched_at: "2026-12-01T00:00:00Z".parse().unwrap(),
            endpoint: "http://127.0.0.1:1/".into(),
            sku_count: 3,
            layer: crate::prices::builtin::layer(),
        };
        write(&p, &c).unwrap();
        let back = read(&p).unwrap().unwrap();
        assert_eq!((back.fetched_at, back.sku_count), (c.fetched_at, 3));
        let rate = |l: &PriceLayer| l.regions["us-east4"].family["g2"].vcpu.spot.unwrap();
        assert!((rate(&back.layer) - rate(&c.layer)).abs() < 1e-15);
        std::fs::write(&p, "{\"schema\": 1, \"fetched_at\": ").unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(err.contains("is corrupt"), "{err}");
    }
}
