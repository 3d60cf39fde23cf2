//! Run ids: `YYYYMMDD-HHMMSS-xxxx` in UTC, sortable by start time, and valid as a GCS
//! path segment, a Compute label value and the tail of an instance name.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A run id that has been checked to have the documented shape.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

/// A string that is not a run id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not a run id (expected YYYYMMDD-HHMMSS-xxxx, as printed by `cloudrun-launch ls`)"
)]
pub struct RunIdError(pub String);

impl RunId {
    /// A new id for a run that starts at `now`, with 4 random hex digits so that two
    /// launches in the same second differ.
    pub fn new(now: DateTime<Utc>) -> Self {
        RunId(format!(
            "{}-{:04x}",
            now.format("%Y%m%d-%H%M%S"),
            fastrand::u16(..)
        ))
    }

    /// Check the shape of `s`.
    pub fn parse(s: &str) -> Result<Self, RunIdError> {
        let b = s.as_bytes();
        let ok = b.len() == 20
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8] == b'-'
            && b[9..15].iter().all(u8::is_ascii_digit)
            && b[15] == b'-'
            && b[16..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        if ok {
            Ok(RunId(s.to_string()))
        } else {
            Err(RunIdError(s.to_string()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `YYYYMMDD-HHMMSS` part: the second the run started in. Ids of one second
    /// sort by their random suffix, which says nothing of which started first.
    pub fn start_second(&self) -> &str {
        &self.0[..15]
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RunId {
    type Error = RunIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RunId::parse(&s)
    }
}

impl From<RunId> for String {
    fn from(r: RunId) -> String {
        r.0
    }
}

impl std::str::FromStr for RunId {
    type Err = RunIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_parse_and_sort_by_time() {
        let a = RunId::new("2026-11-26T07:15:00Z".parse().unwrap());
        let b = RunId::new("2026-11-26T07:15:01Z".parse().unwrap());
        assert!(a < b);
        assert_eq!(RunId::parse(a.as_str()).unwrap(), a);
        assert!(a.as_str().starts_with("20261126-071500-"));
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "",
            "20261126-071500",
            "20261126-071500-ABCD",
            "../../etc/passwd",
            "20261126_071500-abcd",
        ] {
            assert!(RunId::parse(bad).is_err(), "{bad}");
        }
    }
}
