//! The run documents in the store, typed: the spec, the code manifest, the status, the
//! stop request, the GPU metrics and the log chunks of a run, read and written over any [`Storage`] with one content type and one rule for
//! conditional writes. Every `status.json` the launcher or the agent writes goes through
//! here; nothing else spells those keys or their JSON options.
//!
//! It owns no retries (the storage client retries each request, within the [`Budget`] a
//! caller hands it) and no policy about what a status should say (the caller builds the
//! document).

use std::sync::Arc;

use bytes::Bytes;

use crate::layout::Layout;
use crate::manifest::Manifest;
use crate::retry::Budget;
use crate::run_id::RunId;
use crate::spec::RunSpec;
use crate::status::{GpuSample, RunStatus, StopRequest};
use crate::storage::{PutOptions, Storage, StorageError};

/// The content type of every run document.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// The content type of a log chunk.
pub const LOG_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
/// The content type of a metrics batch (JSON lines).
pub const METRICS_CONTENT_TYPE: &str = "application/x-ndjson";

/// Why a run document could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RunStoreError {
    #[error("{what} {key}: {source}")]
    Storage {
        what: &'static str,
        key: String,
        #[source]
        source: Box<StorageError>,
    },
    /// The document exists but does not parse: named, so that one broken document does
    /// not hide the rest of the run.
    #[error("{name} is unreadable ({detail})")]
    Unreadable { name: &'static str, detail: String },
}

/// A status as read, with the generation a conditional rewrite must match.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub doc: T,
    pub generation: i64,
}

/// The run documents under one store's layout.
#[derive(Clone, Debug)]
pub struct RunStore {
    pub storage: Arc<dyn Storage>,
    pub layout: Layout,
}

fn json_opts() -> PutOptions {
    PutOptions::default().with_content_type(JSON_CONTENT_TYPE)
}

impl RunStore {
    pub fn new(storage: Arc<dyn Storage>, layout: Layout) -> Self {
        RunStore { storage, layout }
    }

    async fn put(&self, key: String, body: String, opts: PutOptions) -> Result<(), RunStoreError> {
        self.storage
            .put_bytes(&key, Bytes::from(body), &opts)
            .await
            .map(|_| ())
            .map_err(|source| RunStoreError::Storage {
                what: "writing",
                key,
                source: Box::new(source),
            })
    }

    /// The bytes of `key`, `None` when absent.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, RunStoreError> {
        match self.storage.get_bytes(key).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(source) => Err(RunStoreError::Storage {
                what: "reading",
                key: key.to_string(),
                source: Box::new(source),
            }),
        }
    }

    /// The document at `key` parsed by `parse`, `None` when absent; one that does not
    /// parse is [`RunStoreError::Unreadable`] under `name`.
    async fn get_doc<T, E: std::fmt::Display>(
        &self,
        key: &str,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, RunStoreError> {
        let Some(b) = self.get(key).await? else {
            return Ok(None);
        };
        parse(&String::from_utf8_lossy(&b))
            .map(Some)
            .map_err(|e| RunStoreError::Unreadable {
                name,
                detail: e.to_string(),
            })
    }

    /// Write the run's spec (`runs/<id>/spec.json`), replacing any earlier one.
    pub async fn put_spec(&self, spec: &RunSpec) -> Result<(), RunStoreError> {
        self.put(self.layout.spec(&spec.run_id), spec.to_json(), json_opts())
            .await
    }

    /// The run's spec, `None` when absent.
    pub async fn spec(&self, run: &RunId) -> Result<Option<RunSpec>, RunStoreError> {
        self.get_doc(&self.layout.spec(run), "spec.json", RunSpec::from_json)
            .await
    }

    /// Write the run's status, replacing whatever is there.
    pub async fn put_status(&self, status: &RunStatus) -> Result<(), RunStoreError> {
        self.put_status_within(status, Budget::default()).await
    }

    /// [`RunStore::put_status`] with what the storage client may spend on it: one
    /// attempt for a heartbeat the next one repeats, a deadline for a final status.
    pub async fn put_status_within(
        &self,
        status: &RunStatus,
        budget: Budget,
    ) -> Result<(), RunStoreError> {
        self.put(
            self.layout.status(&status.run_id),
            status.to_json(),
            json_opts().with_budget(budget),
        )
        .await
    }

    /// Write the run's status only if the stored one still has `generation`. Returns
    /// `false` when another writer got there first (its status is newer).
    pub async fn put_status_if(
        &self,
        status: &RunStatus,
        generation: i64,
    ) -> Result<bool, RunStoreError> {
        let opts = PutOptions {
            if_generation_match: Some(generation),
            ..json_opts()
        };
        match self
            .put(self.layout.status(&status.run_id), status.to_json(), opts)
            .await
        {
            Ok(()) => Ok(true),
            Err(RunStoreError::Storage { source, .. })
                if matches!(*source, StorageError::PreconditionFailed { .. }) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The run's status with its generation, `None` when absent.
    pub async fn status(&self, run: &RunId) -> Result<Option<Versioned<RunStatus>>, RunStoreError> {
        let key = self.layout.status(run);
        let meta = match self.storage.head(&key).await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(source) => {
                return Err(RunStoreError::Storage {
                    what: "checking",
                    key,
                    source: Box::new(source),
                })
            }
        };
        let Some(doc) = self.status_doc(run).await? else {
            return Ok(None);
        };
        Ok(Some(Versioned {
            doc,
            generation: meta.generation,
        }))
    }

    /// The run's status alone (one read), `None` when absent.
    pub async fn status_doc(&self, run: &RunId) -> Result<Option<RunStatus>, RunStoreError> {
        self.get_doc(
            &self.layout.status(run),
            "status.json",
            RunStatus::from_json,
        )
        .await
    }

    /// Write the run's code manifest (after every blob it names is in the store).
    pub async fn put_manifest(
        &self,
        run: &RunId,
        manifest: &Manifest,
    ) -> Result<(), RunStoreError> {
        self.put(self.layout.manifest(run), manifest.to_json(), json_opts())
            .await
    }

    /// The run's code manifest, checked ([`Manifest::from_json`] validates every path).
    pub async fn manifest(&self, run: &RunId) -> Result<Option<Manifest>, RunStoreError> {
        self.get_doc(
            &self.layout.manifest(run),
            "manifest.json",
            Manifest::from_json,
        )
        .await
    }

    /// Ask the run's agent to stop (`runs/<id>/control/stop.json`).
    pub async fn put_stop_request(
        &self,
        run: &RunId,
        req: &StopRequest,
    ) -> Result<(), RunStoreError> {
        self.put(
            self.layout.stop_request(run),
            serde_json::to_string_pretty(req).unwrap_or_default(),
            json_opts(),
        )
        .await
    }

    /// The stop request of the run, `None` when nobody asked.
    pub async fn stop_request(&self, run: &RunId) -> Result<Option<StopRequest>, RunStoreError> {
        self.get_doc(&self.layout.stop_request(run), "control/stop.json", |t| {
            serde_json::from_str::<StopRequest>(t)
        })
        .await
    }
}

impl RunStore {
    /// Write metrics batch `seq` (one JSON sample per line).
    pub async fn put_metrics(
        &self,
        run: &RunId,
        seq: u64,
        samples: &[GpuSample],
        budget: Budget,
    ) -> Result<(), RunStoreError> {
        let mut body = String::new();
        for s in samples {
            if let Ok(line) = serde_json::to_string(s) {
                body.push_str(&line);
                body.push('\n');
            }
        }
        let opts = PutOptions::default()
            .with_content_type(METRICS_CONTENT_TYPE)
            .with_budget(budget);
        self.put(self.layout.metrics_chunk(run, seq), body, opts)
            .await
    }

    /// Every GPU sample of a run, in write order. Lines that do not parse are skipped
    /// (a batch cut short by a dying VM still gives its whole lines).
    pub async fn metrics(&self, run: &RunId) -> Result<Vec<GpuSample>, RunStoreError> {
        let mut out = Vec::new();
        for key in self.keys(&self.layout.metrics_prefix(run)).await? {
            let Some(b) = self.get(&key).await? else {
                continue;
            };
            for line in String::from_utf8_lossy(&b).lines() {
                if let Ok(s) = serde_json::from_str::<GpuSample>(line) {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// Write log chunk `seq` (the job's output, tagged by [`crate::joblog`]).
    pub async fn put_log_chunk(
        &self,
        run: &RunId,
        seq: u64,
        data: Bytes,
        budget: Budget,
    ) -> Result<(), RunStoreError> {
        let key = self.layout.log_chunk(run, seq);
        let opts = PutOptions::default()
            .with_content_type(LOG_CONTENT_TYPE)
            .with_budget(budget);
        self.storage
            .put_bytes(&key, data, &opts)
            .await
            .map(|_| ())
            .map_err(|source| RunStoreError::Storage {
                what: "writing",
                key,
                source: Box::new(source),
            })
    }

    /// Whether log chunk `seq` is in the store.
    pub async fn has_log_chunk(&self, run: &RunId, seq: u64) -> Result<bool, RunStoreError> {
        let key = self.layout.log_chunk(run, seq);
        match self.storage.head(&key).await {
            Ok(m) => Ok(m.is_some()),
            Err(source) => Err(RunStoreError::Storage {
                what: "checking",
                key,
                source: Box::new(source),
            }),
        }
    }

    /// The keys of the run's log chunks, in order.
    pub async fn log_chunks(&self, run: &RunId) -> Result<Vec<String>, RunStoreError> {
        self.keys(&self.layout.logs_prefix(run)).await
    }

    /// One log chunk by its key (from [`RunStore::log_chunks`]).
    pub async fn log_chunk(&self, key: &str) -> Result<Bytes, RunStoreError> {
        self.storage
            .get_bytes(key)
            .await
            .map_err(|source| RunStoreError::Storage {
                what: "reading",
                key: key.to_string(),
                source: Box::new(source),
            })
    }

    /// The keys under `prefix`, sorted (chunk keys sort in write order).
    async fn keys(&self, prefix: &str) -> Result<Vec<String>, RunStoreError> {
        let mut keys: Vec<String> = self
            .storage
            .list(prefix)
            .await
            .map_err(|source| RunStoreError::Storage {
                what: "listing",
                key: prefix.to_string(),
                source: Box::new(source),
            })?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStorage;
    use chrono::{DateTime, Utc};

    fn store(dir: &std::path::Path) -> RunStore {
        RunStore::new(
            Arc::new(LocalStorage::new(dir.to_path_buf())),
            Layout::new("p"),
        )
    }

    fn at() -> DateTime<Utc> {
        "2026-12-02T10:00:00Z".parse().unwrap()
    }

    #[tokio::test]
    async fn a_status_round_trips_and_a_stale_conditional_write_loses() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let run = RunId::parse("20261202-100000-ab12").unwrap();
        assert!(s.status(&run).await.unwrap().is_none());
        let first = RunStatus::launching(run.clone(), at(), 1.5);
        s.put_status(&first).await.unwrap();
        let read = s.status(&run).await.unwrap().unwrap();
        assert_eq!(read.doc, first);
        // The agent writes meanwhile: the launcher's rewrite of the older one loses.
        let mut agent = first.clone();
        agent.phase = crate::status::Phase::Running;
        s.put_status(&agent).await.unwrap();
        assert!(!s.put_status_if(&first, read.generation).await.unwrap());
        assert_eq!(s.status(&run).await.unwrap().unwrap().doc, agent);
        let now = s.status(&run).await.unwrap().unwrap();
        assert!(s.put_status_if(&first, now.generation).await.unwrap());
    }

    #[tokio::test]
    async fn a_broken_document_is_named_not_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let run = RunId::parse("20261202-100000-ab12").unwrap();
        s.storage
            .put_bytes(
                &s.layout.status(&run),
                Bytes::from_static(b"{not json"),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        let e = s.status(&run).await.unwrap_err();
        assert!(
            e.to_string().starts_with("status.json is unreadable"),
            "{e}"
        );
        assert!(s.stop_request(&run).await.unwrap().is_none());
        let req = StopRequest {
            requested_at: at(),
            by: "a@b".into(),
            message: Some("stop".into()),
        };
        s.put_stop_request(&run, &req).await.unwrap();
        assert_eq!(s.stop_request(&run).await.unwrap(), Some(req));
    }

    #[tokio::test]
    async fn metrics_and_log_chunks_come_back_in_write_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let run = RunId::parse("20261202-100000-ab12").unwrap();
        let sample = |pct: f64| GpuSample {
            at: at(),
            gpus: vec![crate::status::GpuReading {
                util_gpu_pct: Some(pct),
                ..Default::default()
            }],
            error: None,
        };
        for seq in [1, 0, 10] {
            s.put_metrics(&run, seq, &[sample(seq as f64)], Budget::once())
                .await
                .unwrap();
        }
        // A batch cut short by a dying VM still gives its whole lines.
        s.storage
            .put_bytes(
                &s.layout.metrics_chunk(&run, 11),
                Bytes::from_static(b"{\"at\":\"2026-12-02T10:00:00Z\",\"gpus\":[]}\n{\"at\":"),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        let got: Vec<Option<f64>> = s
            .metrics(&run)
            .await
            .unwrap()
            .iter()
            .map(|m| m.gpus.first().and_then(|g| g.util_gpu_pct))
            .collect();
        assert_eq!(got, vec![Some(0.0), Some(1.0), Some(10.0), None]);

        assert!(!s.has_log_chunk(&run, 0).await.unwrap());
        for seq in [1, 0] {
            s.put_log_chunk(
                &run,
                seq,
                Bytes::from(format!("chunk {seq}\n")),
                Budget::once(),
            )
            .await
            .unwrap();
        }
        assert!(s.has_log_chunk(&run, 1).await.unwrap());
        let keys = s.log_chunks(&run).await.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            s.log_chunk(&keys[0]).await.unwrap(),
            Bytes::from("chunk 0\n")
        );
    }

    #[tokio::test]
    async fn a_manifest_comes_back_checked_and_one_that_escapes_is_refused_by_name() {
        use crate::manifest::{ManifestEntry, MANIFEST_SCHEMA};
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let run = RunId::parse("20261202-100000-ab12").unwrap();
        assert!(s.manifest(&run).await.unwrap().is_none());
        let entry = |path: &str| ManifestEntry {
            path: path.into(),
            size: 0,
            mode: 0o644,
            sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            link: None,
        };
        let m = Manifest {
            schema: MANIFEST_SCHEMA,
            created_at: at(),
            entries: vec![entry("main.py")],
        };
        s.put_manifest(&run, &m).await.unwrap();
        assert_eq!(s.manifest(&run).await.unwrap(), Some(m.clone()));
        let bad = Manifest {
            entries: vec![entry("../escape.py")],
            ..m
        };
        s.put_manifest(&run, &bad).await.unwrap();
        let e = s.manifest(&run).await.unwrap_err();
        assert!(
            e.to_string().starts_with("manifest.json is unreadable"),
            "{e}"
        );
    }
}
