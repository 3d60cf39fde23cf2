//! Where a project's objects live: `GCS_DIR` parsed into a bucket and prefix
//! (`gs://bucket/prefix`), or a local directory (`file:///path`) for `--local`.
//!
//! Parsing only; nothing here touches the network or the disk.

use std::fmt;
use std::path::PathBuf;

/// Why a `GCS_DIR` value was refused. Each message says what a good value looks like.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreUrlError {
    #[error("GCS_DIR is empty: export GCS_DIR=gs://bucket/prefix or set gcs_dir in cloudrun.toml")]
    Empty,
    #[error("GCS_DIR {value:?} must start with gs:// (a bucket) or file:// (a local directory), e.g. gs://my-bucket/runs")]
    Scheme { value: String },
    #[error("GCS_DIR {value:?} has no bucket name: write gs://bucket or gs://bucket/prefix")]
    NoBucket { value: String },
    #[error("GCS_DIR {value:?}: bucket name {bucket:?} is invalid: {why} (bucket names are 3-63 characters of a-z, 0-9, '-', '_' and '.', starting and ending with a letter or digit)")]
    Bucket {
        value: String,
        bucket: String,
        why: &'static str,
    },
    #[error("GCS_DIR {value:?}: the prefix {prefix:?} is invalid: {why}")]
    Prefix {
        value: String,
        prefix: String,
        why: &'static str,
    },
    #[error("GCS_DIR {value:?}: a file:// URL needs an absolute path, e.g. file:///home/me/cloudrun-store")]
    RelativePath { value: String },
}

/// A parsed `GCS_DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A Cloud Storage bucket and an object-name prefix without leading or trailing `/`
    /// (empty for the bucket's root).
    Gcs { bucket: String, prefix: String },
    /// A directory that plays the bucket, for `--local` runs and tests.
    Local { root: PathBuf },
}

impl StoreUrl {
    /// Parse `gs://bucket[/prefix]` or `file:///absolute/path`.
    pub fn parse(value: &str) -> Result<Self, StoreUrlError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(StoreUrlError::Empty);
        }
        if let Some(rest) = value.strip_prefix("gs://") {
            let (bucket, prefix) = match rest.split_once('/') {
                Some((b, p)) => (b, p),
                None => (rest, ""),
            };
            if bucket.is_empty() {
                return Err(StoreUrlError::NoBucket {
                    value: value.into(),
                });
            }
            validate_bucket(bucket).map_err(|why| StoreUrlError::Bucket {
                value: value.into(),
                bucket: bucket.into(),
                why,
            })?;
            let prefix = prefix.trim_end_matches('/');
            validate_prefix(prefix).map_err(|why| StoreUrlError::Prefix {
                value: value.into(),
                prefix: prefix.into(),
                why,
            })?;
            return Ok(StoreUrl::Gcs {
                bucket: bucket.into(),
                prefix: prefix.into(),
            });
        }
        if let Some(path) = value.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(StoreUrlError::RelativePath {
                    value: value.into(),
                });
            }
            return Ok(StoreUrl::Local {
                root: PathBuf::from(path),
            });
        }
        Err(StoreUrlError::Scheme {
            value: value.into(),
        })
    }

    /// The object-name prefix that the [`crate::layout::Layout`] puts in front of every key.
    pub fn prefix(&self) -> &str {
        match self {
            StoreUrl::Gcs { prefix, .. } => prefix,
            StoreUrl::Local { .. } => "",
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Gcs { bucket, prefix } if prefix.is_empty() => write!(f, "gs://{bucket}"),
            StoreUrl::Gcs { bucket, prefix } => write!(f, "gs://{bucket}/{prefix}"),
            StoreUrl::Local { root } => write!(f, "file://{}", root.display()),
        }
    }
}

fn validate_bucket(b: &str) -> Result<(), &'static str> {
    if b.len() < 3 || b.len() > 222 {
        return Err("it must be 3 to 63 characters long");
    }
    if !b.contains('.') && b.len() > 63 {
        return Err("it must be 3 to 63 characters long");
    }
    if !b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err("it may only hold lowercase letters, digits, '-', '_' and '.'");
    }
    let first = b.as_bytes()[0];
    let last = b.as_bytes()[b.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err("it must start and end with a letter or digit");
    }
    if b.starts_with("goog") {
        return Err("names starting with \"goog\" are reserved by Google");
    }
    Ok(())
}

fn validate_prefix(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Ok(());
    }
    if p.starts_with('/') || p.contains("//") {
        return Err("it must not contain empty path segments (\"//\")");
    }
    if p.split('/').any(|s| s == "." || s == "..") {
        return Err("it must not contain \".\" or \"..\" segments");
    }
    if p.chars().any(|c| c.is_control()) {
        return Err("it must not contain control characters");
    }
    if p.len() > 512 {
        return Err("it is longer than 512 bytes, leaving no room for object names");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        assert_eq!(
            StoreUrl::parse("gs://my-bucket/team/runs/").unwrap(),
            StoreUrl::Gcs {
                bucket: "my-bucket".into(),
                prefix: "team/runs".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("gs://b_1.x").unwrap(),
            StoreUrl::Gcs {
                bucket: "b_1.x".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            StoreUrl::parse("gs://bkt/p").unwrap().to_string(),
            "gs://bkt/p"
        );
    }

    #[test]
    fn parses_local_directories() {
        assert_eq!(
            StoreUrl::parse("file:///tmp/store").unwrap(),
            StoreUrl::Local {
                root: "/tmp/store".into()
            }
        );
        assert!(matches!(
            StoreUrl::parse("file://relative/x"),
            Err(StoreUrlError::RelativePath { .. })
        ));
    }

    #[test]
    fn malformed_values_get_errors_that_name_the_fix() {
        for (bad, needle) in [
            ("", "export GCS_DIR=gs://bucket/prefix"),
            ("s3://bucket/x", "must start with gs://"),
            ("bucket/x", "must start with gs://"),
            ("gs://", "no bucket name"),
            ("gs:///prefix", "no bucket name"),
            ("gs://My_Bucket", "lowercase"),
            ("gs://ab", "3 to 63"),
            ("gs://-abc", "start and end"),
            ("gs://bkt/a//b", "empty path segments"),
            ("gs://bkt/a/../b", "\"..\""),
            ("gs://google-things", "reserved"),
        ] {
            let err = StoreUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }
}
