//! Names shared by the launcher, the startup script and the agent: metadata attributes,
//! instance labels and environment variables. Each is spelled here once.
//!
//! `scripts/startup.sh` cannot import this module; a test checks that it uses the same
//! names.

/// Instance metadata attribute holding the run spec JSON.
pub const META_SPEC: &str = "cloudrun-spec";
/// Instance metadata attribute: `gs://bucket/object` of the agent binary.
pub const META_AGENT_URL: &str = "cloudrun-agent-url";
/// Instance metadata attribute: SHA-256 hex of the agent binary.
pub const META_AGENT_SHA256: &str = "cloudrun-agent-sha256";
/// Instance metadata attribute: a GCS emulator host the VM should use instead of
/// storage.googleapis.com (tests and emulated VMs only; absent in production).
pub const META_STORAGE_HOST: &str = "cloudrun-storage-host";
/// Instance metadata attribute holding the startup script (read by the guest agent).
pub const META_STARTUP_SCRIPT: &str = "startup-script";
/// Instance metadata attribute that asks Deep Learning VM images to install the driver.
pub const META_INSTALL_DRIVER: &str = "install-nvidia-driver";

/// Label naming the run an instance belongs to.
pub const LABEL_RUN: &str = "cloudrun-run";
/// Label present (value `true`) on every instance cloudrun creates; `sweep` filters on it.
pub const LABEL_MANAGED: &str = "cloudrun-managed";

/// Environment variable given to the job: the run id.
pub const ENV_RUN_ID: &str = "CLOUDRUN_RUN_ID";
/// Environment variable given to the job: absolute path of its first output dir.
pub const ENV_OUTPUT_DIR: &str = "CLOUDRUN_OUTPUT_DIR";
/// Environment variable given to the job: all output dirs, `:`-separated absolute paths.
pub const ENV_OUTPUT_DIRS: &str = "CLOUDRUN_OUTPUT_DIRS";

/// Overrides the `nvidia-smi` the agent runs (tests, odd images).
pub const ENV_NVIDIA_SMI: &str = "CLOUDRUN_NVIDIA_SMI";
/// GCS emulator host (`host:port` or URL); also turns off auth, as Google's clients do.
pub const ENV_STORAGE_EMULATOR_HOST: &str = "STORAGE_EMULATOR_HOST";
/// Metadata server host (`host:port`), as Google's clients read it.
pub const ENV_GCE_METADATA_HOST: &str = "GCE_METADATA_HOST";
/// Compute API endpoint override, gcloud's convention (`http://host:port/compute/v1/`).
pub const ENV_COMPUTE_ENDPOINT: &str = "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE";

/// OAuth scope the VM's service account is given and the launcher asks for.
pub const SCOPE_CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Cloud Batch API endpoint override, gcloud's convention
/// (`http://host:port/`, the root that `v1/projects/…` follows).
pub const ENV_BATCH_ENDPOINT: &str = "CLOUDSDK_API_ENDPOINT_OVERRIDES_BATCH";

/// Task environment (Batch): `gs://bucket/prefix/runs/<id>/spec.json` (or `file://…`),
/// where the agent reads its spec (a Batch VM has no `cloudrun-spec` attribute).
pub const ENV_SPEC_URL: &str = "CLOUDRUN_SPEC_URL";
/// Task environment (Batch): `gs://bucket/object` of the static agent (as
/// [`META_AGENT_URL`] on a VM).
pub const ENV_AGENT_URL: &str = "CLOUDRUN_AGENT_URL";
/// Task environment (Batch): SHA-256 hex of the agent binary (as [`META_AGENT_SHA256`]).
pub const ENV_AGENT_SHA256: &str = "CLOUDRUN_AGENT_SHA256";
/// Task environment (Batch): a GCS emulator host (as [`META_STORAGE_HOST`]; tests only).
pub const ENV_STORAGE_HOST: &str = "CLOUDRUN_STORAGE_HOST";

/// Set by Batch in every task: the task's index, 0-based (one task per node here, so
/// also the node's rank).
pub const ENV_BATCH_TASK_INDEX: &str = "BATCH_TASK_INDEX";
/// Set by Batch in every task: how many tasks the group has (the nodes).
pub const ENV_BATCH_TASK_COUNT: &str = "BATCH_TASK_COUNT";
/// Set by Batch in every task: 0 on the first attempt, counting up on each retry.
pub const ENV_BATCH_TASK_RETRY_ATTEMPT: &str = "BATCH_TASK_RETRY_ATTEMPT";
/// Set by Batch with `requireHostsFile`: a file listing the group's VMs, one per line.
pub const ENV_BATCH_HOSTS_FILE: &str = "BATCH_HOSTS_FILE";

/// Batch's exit code for a task whose Spot VM was preempted (reference/batch.md §3).
pub const BATCH_EXIT_PREEMPTED: i32 = 50001;
/// The agent's exit code for "run this attempt again": its VM is being preempted or a
/// peer node was lost. The job's `RETRY_TASK` policy names it next to
/// [`BATCH_EXIT_PREEMPTED`]; every other code fails the task at once, so a guard's
/// decision (failed, idle, stalled, budget, time, stopped) is never retried.
/// 75 is `EX_TEMPFAIL` from sysexits.h, clear of the end reasons' codes (0–9).
pub const EXIT_RETRY: i32 = 75;

/// The one task group a Batch job has (reference/batch.md §2). A job and, through
/// `allocationPolicy.labels`, its VMs carry the same labels as a plain VM: [`LABEL_RUN`],
/// [`LABEL_MANAGED`].
pub const BATCH_TASK_GROUP: &str = "group0";
