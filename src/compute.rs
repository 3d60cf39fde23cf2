//! Compute Engine v1: the narrow [`Compute`] trait both binaries use, the resource types
//! they read (a subset of Google's schema, unknown fields kept), and the errors.
//!
//! Quirks this module's users must respect (reference: shared gcp-api notes):
//! an Operation can be DONE and still have failed (`error.errors`); `operations.wait`
//! may return before DONE; int64 fields are JSON strings; inserts and deletes carry a
//! `requestId` so a retried call never acts twice.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::retry::{Retry, Retryable};

/// Default Compute v1 endpoint; `CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE` replaces it.
pub const DEFAULT_COMPUTE_ENDPOINT: &str = "https://compute.googleapis.com/compute/v1/";

/// Why a Compute call failed.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// Google's error envelope: `{"error":{"code","message","errors":[{"reason"}]}}`.
    #[error("{method} {url}: HTTP {status} {reason}: {message}")]
    Api {
        method: String,
        url: String,
        status: u16,
        /// `errors[0].reason`, e.g. `notFound`, `alreadyExists`, `quotaExceeded`.
        reason: String,
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    #[error("{method} {url}: {source}")]
    Transport {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The Operation finished with errors.
    #[error("operation {operation} failed: {}", .errors.iter().map(|e| format!("{}: {}", e.code, e.message)).collect::<Vec<_>>().join("; "))]
    Operation {
        operation: String,
        errors: Vec<OperationErrorItem>,
    },
    #[error("operation {operation} did not finish within {secs} s")]
    OperationTimeout { operation: String, secs: u64 },
    #[error("could not get a Google access token: {0}")]
    Auth(String),
    #[error("unexpected reply from {url}: {detail}")]
    Protocol { url: String, detail: String },
}

impl ComputeError {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            ComputeError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl Retryable for ComputeError {
    fn retry(&self) -> Retry {
        match self {
            ComputeError::Api {
                status,
                reason,
                retry_after,
                ..
            } => {
                if crate::retry::status_is_transient(*status)
                    || reason == "rateLimitExceeded"
                    || reason == "resourceNotReady"
                {
                    retry_after.map(Retry::After).unwrap_or(Retry::Yes)
                } else {
                    Retry::No
                }
            }
            ComputeError::Transport { source, .. } => {
                if crate::retry::transport_is_transient(source) {
                    Retry::Yes
                } else {
                    Retry::No
                }
            }
            ComputeError::Auth(_) => Retry::Yes,
            _ => Retry::No,
        }
    }
}

/// One entry of an Operation's `error.errors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct OperationErrorItem {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_details: Vec<serde_json::Value>,
}

/// `Operation.error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct OperationErrors {
    #[serde(default)]
    pub errors: Vec<OperationErrorItem>,
}

/// A zonal Operation (the fields cloudrun reads; others are kept in `extra`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub name: String,
    /// PENDING, RUNNING or DONE.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub operation_type: String,
    #[serde(default)]
    pub target_link: String,
    /// Full URL of the zone.
    #[serde(default)]
    pub zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationErrors>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_error_status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_error_message: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Operation {
    /// DONE (successfully or not).
    pub fn is_done(&self) -> bool {
        self.status == "DONE"
    }

    /// The errors of a finished operation (empty when it succeeded).
    pub fn errors(&self) -> &[OperationErrorItem] {
        self.error
            .as_ref()
            .map(|e| e.errors.as_slice())
            .unwrap_or(&[])
    }

    /// `Ok` if DONE without errors, the errors if DONE with some.
    pub fn into_result(self) -> Result<Operation, ComputeError> {
        if self.errors().is_empty() {
            Ok(self)
        } else {
            Err(ComputeError::Operation {
                operation: self.name.clone(),
                errors: self.errors().to_vec(),
            })
        }
    }
}

/// An attached disk of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AttachedDisk {
    #[serde(default)]
    pub device_name: String,
    #[serde(default)]
    pub boot: bool,
    #[serde(default)]
    pub auto_delete: bool,
    /// URL of the disk resource.
    #[serde(default)]
    pub source: String,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// One metadata item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MetadataItem {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// Instance metadata with its fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct InstanceMetadata {
    #[serde(default)]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub items: Vec<MetadataItem>,
}

/// An instance (the fields cloudrun reads; others kept in `extra`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    #[serde(default)]
    pub name: String,
    /// Full URL of the zone.
    #[serde(default)]
    pub zone: String,
    /// PROVISIONING, STAGING, RUNNING, STOPPING, STOPPED, SUSPENDING, SUSPENDED,
    /// REPAIRING or TERMINATED.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub machine_type: String,
    #[serde(default)]
    pub creation_timestamp: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub disks: Vec<AttachedDisk>,
    #[serde(default)]
    pub metadata: InstanceMetadata,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Instance {
    /// The bare zone name (last segment of the zone URL).
    pub fn zone_name(&self) -> &str {
        self.zone.rsplit('/').next().unwrap_or(&self.zone)
    }

    /// A metadata value by key.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata
            .items
            .iter()
            .find(|i| i.key == key)
            .map(|i| i.value.as_str())
    }

    /// The boot disk, if listed.
    pub fn boot_disk(&self) -> Option<&AttachedDisk> {
        self.disks.iter().find(|d| d.boot)
    }
}

/// An image (from `images.getFromFamily`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub self_link: String,
    #[serde(default)]
    pub family: String,
    /// int64 as a string, per the API.
    #[serde(default)]
    pub disk_size_gb: String,
    #[serde(default)]
    pub status: String,
    /// Set when the image is deprecated (still usable), obsolete or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<DeprecationStatus>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `DeprecationStatus` of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeprecationStatus {
    /// ACTIVE, DEPRECATED, OBSOLETE or DELETED.
    #[serde(default)]
    pub state: String,
    /// URL of the suggested replacement.
    #[serde(default)]
    pub replacement: String,
}

/// One quota of a region or a project (`limit` and `usage` are doubles in the API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Quota {
    /// e.g. `NVIDIA_L4_GPUS`, `PREEMPTIBLE_NVIDIA_L4_GPUS`, `GPUS_ALL_REGIONS`.
    #[serde(default)]
    pub metric: String,
    #[serde(default)]
    pub limit: f64,
    #[serde(default)]
    pub usage: f64,
}

impl Quota {
    /// What is left of it.
    pub fn available(&self) -> f64 {
        (self.limit - self.usage).max(0.0)
    }
}

/// A region (`regions.get`): its zones and quotas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Region {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: String,
    /// Zone URLs.
    #[serde(default)]
    pub zones: Vec<String>,
    #[serde(default)]
    pub quotas: Vec<Quota>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A project as Compute sees it (`projects.get`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComputeProject {
    #[serde(default)]
    pub name: String,
    /// The project number (uint64 as a string).
    #[serde(default)]
    pub id: String,
    /// `PROJECT_NUMBER-compute@developer.gserviceaccount.com`.
    #[serde(default)]
    pub default_service_account: String,
    #[serde(default)]
    pub common_instance_metadata: InstanceMetadata,
    /// Project-wide quotas such as `GPUS_ALL_REGIONS`.
    #[serde(default)]
    pub quotas: Vec<Quota>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// An accelerator type a zone offers (`acceleratorTypes.list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AcceleratorType {
    /// e.g. `nvidia-l4`.
    #[serde(default)]
    pub name: String,
    /// Zone URL.
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub maximum_cards_per_instance: i32,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Find a quota by metric.
pub fn quota<'a>(quotas: &'a [Quota], metric: &str) -> Option<&'a Quota> {
    quotas.iter().find(|q| q.metric == metric)
}

/// The region of a zone (`us-central1-a` → `us-central1`).
pub fn zone_region(zone: &str) -> &str {
    zone.rsplit_once('-').map(|(r, _)| r).unwrap_or(zone)
}

/// The Compute Engine calls cloudrun makes. Each implementation takes its base URL (and
/// token source) when built; tests hand in an emulator's address.
#[async_trait]
pub trait Compute: Send + Sync + std::fmt::Debug {
    /// `instances.insert` with a `requestId`; returns the (possibly unfinished) Operation.
    async fn insert_instance(
        &self,
        project: &str,
        zone: &str,
        body: &serde_json::Value,
        request_id: &str,
    ) -> Result<Operation, ComputeError>;

    /// `instances.get`; `None` on 404.
    async fn get_instance(
        &self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<Option<Instance>, ComputeError>;

    /// `instances.list` in one zone, or `aggregatedList` over all zones when `zone` is
    /// `None`, with a filter such as `labels.cloudrun-managed = true`; all pages.
    async fn list_instances(
        &self,
        project: &str,
        zone: Option<&str>,
        filter: &str,
    ) -> Result<Vec<Instance>, ComputeError>;

    /// `instances.delete` with a `requestId`; `None` if the instance was already gone.
    async fn delete_instance(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        request_id: &str,
    ) -> Result<Option<Operation>, ComputeError>;

    /// `instances.stop` with a `requestId` (the agent's power-off fallback); `None` if gone.
    async fn stop_instance(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        request_id: &str,
    ) -> Result<Option<Operation>, ComputeError>;

    /// `instances.setDiskAutoDelete`.
    async fn set_disk_auto_delete(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        device_name: &str,
        auto_delete: bool,
        request_id: &str,
    ) -> Result<Operation, ComputeError>;

    /// `images.getFromFamily`; a retired family is an `Api` error with status 404.
    async fn image_from_family(
        &self,
        image_project: &str,
        family: &str,
    ) -> Result<Image, ComputeError>;

    /// `regions.get` (its quotas); `None` when the region does not exist.
    async fn get_region(&self, project: &str, region: &str)
        -> Result<Option<Region>, ComputeError>;

    /// `projects.get` (project-wide quotas, default service account); `None` when the
    /// project does not exist or the caller may not see it.
    async fn get_project(&self, project: &str) -> Result<Option<ComputeProject>, ComputeError>;

    /// `acceleratorTypes.list` in one zone (all pages); `None` when the zone does not exist.
    async fn list_accelerator_types(
        &self,
        project: &str,
        zone: &str,
    ) -> Result<Option<Vec<AcceleratorType>>, ComputeError>;

    /// `acceleratorTypes.aggregatedList`: every zone's accelerator types, keyed by the bare
    /// zone name (zones that offer none are left out).
    async fn aggregated_accelerator_types(
        &self,
        project: &str,
    ) -> Result<BTreeMap<String, Vec<AcceleratorType>>, ComputeError>;

    /// `zoneOperations.get`.
    async fn get_operation(
        &self,
        project: &str,
        zone: &str,
        operation: &str,
    ) -> Result<Operation, ComputeError>;

    /// `zoneOperations.wait`: returns when DONE or after up to ~2 minutes, possibly
    /// earlier and not DONE; callers loop.
    async fn wait_operation(
        &self,
        project: &str,
        zone: &str,
        operation: &str,
    ) -> Result<Operation, ComputeError>;

    /// Follow `op` with `zoneOperations.wait` until it is DONE or `deadline` has passed.
    /// One operation: a client that retries runs all its requests under one budget that
    /// ends at the deadline (the REST client overrides this to do so). This default,
    /// for implementations without retries, just loops.
    async fn wait_done(
        &self,
        project: &str,
        zone: &str,
        op: Operation,
        deadline: std::time::Duration,
    ) -> Result<Operation, ComputeError> {
        let start = tokio::time::Instant::now();
        let mut op = op;
        while !op.is_done() {
            op.check_wait_deadline(start, deadline)?;
            op = self.wait_operation(project, zone, &op.name).await?;
            op.pause_if_not_done().await;
        }
        Ok(op)
    }
}

/// Pause between `zoneOperations.wait` calls that return before DONE, in ms: `wait` may
/// return at once, and a poll must not spin.
pub const OPERATION_REPOLL_MILLIS: u64 = 500;

impl Operation {
    /// [`ComputeError::OperationTimeout`] once `deadline` since `start` has passed.
    pub fn check_wait_deadline(
        &self,
        start: tokio::time::Instant,
        deadline: std::time::Duration,
    ) -> Result<(), ComputeError> {
        if start.elapsed() > deadline {
            return Err(ComputeError::OperationTimeout {
                operation: self.name.clone(),
                secs: deadline.as_secs(),
            });
        }
        Ok(())
    }

    /// Wait [`OPERATION_REPOLL_MILLIS`] unless the operation is DONE.
    pub async fn pause_if_not_done(&self) {
        if !self.is_done() {
            tokio::time::sleep(std::time::Duration::from_millis(OPERATION_REPOLL_MILLIS)).await;
        }
    }
}

/// Follow `op` until it is DONE or `deadline` passes ([`Compute::wait_done`]: one retry
/// budget for the whole wait, nothing retried above the client).
pub async fn wait_until_done(
    compute: &dyn Compute,
    project: &str,
    zone: &str,
    op: Operation,
    deadline: std::time::Duration,
) -> Result<Operation, ComputeError> {
    compute.wait_done(project, zone, op, deadline).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_done_operation_with_errors_is_a_failure() {
        let op: Operation = serde_json::from_str(
            r#"{"kind":"compute#operation","id":"123","name":"operation-1","status":"DONE",
                "error":{"errors":[{"code":"ZONE_RESOURCE_POOL_EXHAUSTED","message":"no L4 left"}]},
                "httpErrorStatusCode":503,"progress":100}"#,
        )
        .unwrap();
        assert!(op.is_done());
        let err = op.clone().into_result().unwrap_err().to_string();
        assert!(err.contains("ZONE_RESOURCE_POOL_EXHAUSTED"), "{err}");
        assert_eq!(op.extra["id"], "123");
    }

    #[test]
    fn instances_parse_with_unknown_fields() {
        let i: Instance = serde_json::from_str(
            r#"{"name":"trainer-1","zone":"https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a",
                "status":"RUNNING","labels":{"cloudrun-run":"x"},"id":"99",
                "disks":[{"deviceName":"persistent-disk-0","boot":true,"autoDelete":true,"source":"s"}],
                "metadata":{"fingerprint":"abc=","items":[{"key":"cloudrun-spec","value":"{}"}]}}"#,
        )
        .unwrap();
        assert_eq!(i.zone_name(), "us-central1-a");
        assert_eq!(i.boot_disk().unwrap().device_name, "persistent-disk-0");
        assert_eq!(i.metadata_value("cloudrun-spec"), Some("{}"));
    }
}
