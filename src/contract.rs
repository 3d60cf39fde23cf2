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
