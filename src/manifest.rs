//! The code manifest (`runs/<id>/manifest.json`): every file of the project tree with its
//! size, mode and SHA-256, whose contents live once in `blobs/<sha256>`.
//!
//! Paths are relative, `/`-separated, and checked by [`validate_relative_path`] both when
//! a manifest is made and before anything is written from one: an entry with `..`, an
//! absolute path or a NUL byte is refused. Unknown fields are **rejected**: an entry kind
//! this version does not understand cannot be materialised faithfully.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The manifest schema this build writes and the newest it reads.
pub const MANIFEST_SCHEMA: u32 = 1;

/// A path in a manifest (or a spec) that would not stay inside its directory.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("{0:?} is absolute; manifest paths are relative to the project root")]
    Absolute(String),
    #[error("{0:?} contains a \"..\" segment and would land outside the target directory")]
    ParentSegment(String),
    #[error("{0:?} contains an empty or \".\" segment")]
    OddSegment(String),
    #[error("{0:?} contains a NUL byte or a backslash")]
    BadCharacter(String),
}

/// Check that `p` is a plain relative path: non-empty, `/`-separated, no leading `/`, no
/// `..`, `.` or empty segments, no NUL or backslash.
pub fn validate_relative_path(p: &str) -> Result<(), PathError> {
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.starts_with('/') {
        return Err(PathError::Absolute(p.into()));
    }
    if p.contains('\0') || p.contains('\\') {
        return Err(PathError::BadCharacter(p.into()));
    }
    for seg in p.split('/') {
        if seg == ".." {
            return Err(PathError::ParentSegment(p.into()));
        }
        if seg.is_empty() || seg == "." {
            return Err(PathError::OddSegment(p.into()));
        }
    }
    Ok(())
}

/// One file (or symlink inside the tree) of the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Relative, `/`-separated path.
    pub path: String,
    pub size: u64,
    /// Unix permission bits (only the exec bits matter on materialise).
    pub mode: u32,
    /// Lowercase hex SHA-256 of the contents (the blob's name).
    pub sha256: String,
    /// For a symlink: its target, relative and inside the tree. `size` and `sha256` then
    /// describe the target string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// The project tree of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub created_at: DateTime<Utc>,
    /// Sorted by path.
    pub entries: Vec<ManifestEntry>,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest has schema {0}, newer than this version reads: upgrade cloudrun")]
    Schema(u32),
    #[error("manifest entry {path:?}: {source}")]
    Path {
        path: String,
        #[source]
        source: PathError,
    },
    #[error("manifest entry {path:?}: {why}")]
    Entry { path: String, why: String },
    #[error("manifest lists {0:?} twice")]
    Duplicate(String),
}

impl Manifest {
    /// Parse and check every entry; nothing is written by a caller until this passes.
    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_str(text)?;
        m.validate()?;
        Ok(m)
    }

    /// The manifest as compact JSON (it can hold many thousands of entries).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Check schema, paths, hashes, symlink targets and duplicates.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.schema > MANIFEST_SCHEMA {
            return Err(ManifestError::Schema(self.schema));
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in &self.entries {
            validate_relative_path(&e.path).map_err(|source| ManifestError::Path {
                path: e.path.clone(),
                source,
            })?;
            if !is_sha256_hex(&e.sha256) {
                return Err(ManifestError::Entry {
                    path: e.path.clone(),
                    why: format!("{:?} is not a lowercase hex SHA-256", e.sha256),
                });
            }
            if let Some(target) = &e.link {
                if !symlink_stays_inside(&e.path, target) {
                    return Err(ManifestError::Entry {
                        path: e.path.clone(),
                        why: format!("symlink target {target:?} points outside the tree"),
                    });
                }
            }
            if !seen.insert(e.path.as_str()) {
                return Err(ManifestError::Duplicate(e.path.clone()));
            }
        }
        // A file may not also be a directory of another entry ("a" and "a/b").
        for e in &self.entries {
            let mut p = e.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if seen.contains(parent) {
                    return Err(ManifestError::Entry {
                        path: e.path.clone(),
                        why: format!("{parent:?} is listed as a file and as a directory"),
                    });
                }
                p = parent;
            }
        }
        Ok(())
    }

    /// Total bytes of all entries.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Whether a symlink at `link_path` (relative to the root) with target `target` resolves,
/// lexically, to a path inside the root.
pub fn symlink_stays_inside(link_path: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return false;
    }
    let mut stack: Vec<&str> = link_path.split('/').collect();
    stack.pop(); // the link's own name
    for seg in target.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return false;
                }
            }
            s => stack.push(s),
        }
    }
    !stack.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn entry(path: &str) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            size: 4,
            mode: 0o644,
            sha256: H.into(),
            link: None,
        }
    }

    fn manifest(entries: Vec<ManifestEntry>) -> Manifest {
        Manifest {
            schema: MANIFEST_SCHEMA,
            created_at: "2026-11-26T07:15:00Z".parse().unwrap(),
            entries,
        }
    }

    #[test]
    fn round_trips() {
        let m = manifest(vec![entry("main.py"), entry("src/model.py")]);
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
        assert_eq!(m.total_bytes(), 8);
    }

    #[test]
    fn traversal_and_absolute_paths_are_refused() {
        for bad in [
            "../evil",
            "a/../../evil",
            "/etc/passwd",
            "a//b",
            "./a",
            "a\\..\\b",
            "",
        ] {
            let err = manifest(vec![entry(bad)]).validate().unwrap_err();
            assert!(matches!(err, ManifestError::Path { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn symlinks_must_stay_inside() {
        let mut ok = entry("data/latest");
        ok.link = Some("../checkpoint/x".into());
        assert!(manifest(vec![ok]).validate().is_ok());
        for target in ["../../etc", "/etc/passwd", "..", ""] {
            let mut bad = entry("data/latest");
            bad.link = Some(target.into());
            assert!(manifest(vec![bad]).validate().is_err(), "{target}");
        }
    }

    #[test]
    fn duplicates_bad_hashes_and_unknown_fields_are_refused() {
        assert!(manifest(vec![entry("a"), entry("a")]).validate().is_err());
        assert!(manifest(vec![entry("a"), entry("a/b")]).validate().is_err());
        let mut e = entry("a");
        e.sha256 = "XYZ".into();
        assert!(manifest(vec![e]).validate().is_err());
        let text = r#"{"schema":1,"created_at":"2026-11-26T07:15:00Z","entries":[{"path":"a","size":1,"mode":420,"sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","xattrs":{}}]}"#;
        assert!(Manifest::from_json(text)
            .unwrap_err()
            .to_string()
            .contains("xattrs"));
    }
}
