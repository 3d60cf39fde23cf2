//! An emulated Compute Engine (v1 REST) with a metadata server per instance, for whole-flow
//! tests and benchmarks. Nothing on any registry emulates either faithfully
//! (reference/emulators.md §3), so this one reproduces the real service's quirks
//! (reference/gcp-api.md §1–2):
//!
//! - Operations move PENDING → RUNNING → DONE over time; `zoneOperations.wait` hangs at
//!   most [`GceConfig::wait_hang`] and may return before DONE; capacity and quota
//!   failures arrive late, as a DONE Operation with `error.errors`; a `requestId` seen
//!   before returns the first Operation; int64 fields are JSON strings; 401/404/409/412
//!   bodies use Google's error envelope; `setMetadata` checks the fingerprint.
//! - Each instance gets its own metadata server on its own loopback port (a real VM sees
//!   exactly one server at one address, so `GCE_METADATA_HOST=127.0.0.1:PORT` is all the
//!   guest needs; no routing header that the real server does not have).
//! - **Booting**: a RUNNING instance runs its `startup-script` as a child process in a
//!   private root directory, the way the guest agent does, with the environment the
//!   cloudrun startup script honours pointed at this emulator, the test's GCS emulator and
//!   an `nvidia-smi` stand-in ([`GpuMode`]) that shows the GPUs the insert body gave the
//!   VM (`guestAccelerators`, or those built into a G2/A2/A3 machine type) with the values
//!   of the recorded H200 captures, or fewer ([`GceEmulator::set_gpus_visible`]). Every process of the VM carries a marker
//!   variable; deleting, stopping, preempting or the `maxRunDuration` deadline signals all
//!   of them (SIGTERM, grace, SIGKILL), as the cloud's power-off would. Without systemd the
//!   emulator plays its `Restart=always` part by re-running the startup script when the
//!   agent died while the VM runs.
//!
//! Every Compute call is recorded ([`Call`]) so tests can assert counts and orders. Test
//! knobs: zone stock-outs and quotas ([`ZoneState`]), failing any call N times
//! ([`GceEmulator::fail_next`]), preemption ([`GceEmulator::preempt`]), GPU replies.
//!
//! It must not depend on the `cloudrun` crate (a dev-dependency cycle): it speaks JSON.

mod compute;
mod metadata;
pub mod prereqs;
mod vm;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::Value;

pub use vm::GpuMode;

/// Longest `zoneOperations.wait` hangs by default, in milliseconds (the real one: up to
/// 2 minutes, or less, "best effort"; short here so callers' loops are exercised).
pub const DEFAULT_WAIT_HANG_MILLIS: u64 = 1000;
/// Default time an Operation stays PENDING, in milliseconds.
pub const DEFAULT_OP_PENDING_MILLIS: u64 = 300;
/// Default time an Operation stays RUNNING, in milliseconds.
pub const DEFAULT_OP_RUNNING_MILLIS: u64 = 700;
/// Default time between SIGTERM (ACPI soft-off) and SIGKILL when a VM goes down, in
/// milliseconds (GCE: up to 90 s for standard VMs; short in tests).
pub const DEFAULT_SHUTDOWN_GRACE_MILLIS: u64 = 3000;
/// Default time between a preemption notice and the hard stop, in seconds (GCE: ~30 s).
pub const DEFAULT_PREEMPT_NOTICE_SECS: u64 = 30;
/// Default delay between `instance/preempted` turning TRUE and the ACPI soft-off
/// (SIGTERM) reaching the guest, in milliseconds.
pub const DEFAULT_PREEMPT_ACPI_DELAY_MILLIS: u64 = 1000;
/// Default pause before the emulated `Restart=always` re-runs a dead agent, in
/// milliseconds (the cloudrun unit says `RestartSec=5`).
pub const DEFAULT_RESTART_MILLIS: u64 = 2000;
/// Project number used in `instance/zone` and service-account e-mails.
pub const DEFAULT_PROJECT_NUMBER: u64 = 123_456_789_012;

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct GceConfig {
    /// The only project the API knows (`test-proj`).
    pub project: String,
    pub project_number: u64,
    /// `STORAGE_EMULATOR_HOST` for the VMs (`http://127.0.0.1:PORT`).
    pub storage_host: Option<String>,
    /// Run the startup script of RUNNING instances.
    pub boot: bool,
    pub op_pending: Duration,
    pub op_running: Duration,
    pub wait_hang: Duration,
    pub shutdown_grace: Duration,
    pub preempt_notice: Duration,
    pub preempt_acpi_delay: Duration,
    /// `None`: no emulated `Restart=always`.
    pub restart_after: Option<Duration>,
    /// Tests compress the cloud's deadline: `maxRunDuration` is enforced after
    /// `min(maxRunDuration, cap)`.
    pub max_run_duration_cap: Option<Duration>,
    /// What the `nvidia-smi` stand-in answers on new VMs.
    pub gpu: GpuMode,
    /// How many of its GPUs a new VM's `nvidia-smi` shows (`None`: all it carries; fewer
    /// is a GPU the driver lost).
    pub gpus_visible: Option<u32>,
    /// Extra environment for the VMs' processes (e.g. `RUST_LOG`).
    pub vm_env: Vec<(String, String)>,
    /// Image families that `images.getFromFamily` answers 404 for (retired).
    pub retired_families: Vec<String>,
}

impl Default for GceConfig {
    fn default() -> Self {
        GceConfig {
            project: "test-proj".into(),
            project_number: DEFAULT_PROJECT_NUMBER,
            storage_host: None,
            boot: true,
            op_pending: Duration::from_millis(DEFAULT_OP_PENDING_MILLIS),
            op_running: Duration::from_millis(DEFAULT_OP_RUNNING_MILLIS),
            wait_hang: Duration::from_millis(DEFAULT_WAIT_HANG_MILLIS),
            shutdown_grace: Duration::from_millis(DEFAULT_SHUTDOWN_GRACE_MILLIS),
            preempt_notice: Duration::from_secs(DEFAULT_PREEMPT_NOTICE_SECS),
            preempt_acpi_delay: Duration::from_millis(DEFAULT_PREEMPT_ACPI_DELAY_MILLIS),
            restart_after: Some(Duration::from_millis(DEFAULT_RESTART_MILLIS)),
            max_run_duration_cap: None,
            gpu: GpuMode::Busy,
            gpus_visible: None,
            vm_env: Vec::new(),
            retired_families: Vec::new(),
        }
    }
}

/// What a zone does with inserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneState {
    Available,
    /// `ZONE_RESOURCE_POOL_EXHAUSTED`, late, in the Operation.
    OutOfCapacity,
    /// `QUOTA_EXCEEDED` for this quota (e.g. `NVIDIA_L4_GPUS` or `GPUS_ALL_REGIONS`),
    /// late, in the Operation.
    QuotaExceeded(String),
    /// As [`ZoneState::OutOfCapacity`], but the half-created instance stays behind,
    /// TERMINATED, until someone deletes it: why a launcher GETs the instance after a
    /// failed insert and deletes what it finds (gcp-api.md §1.7, step 4).
    OutOfCapacityLeavingInstance,
}

/// One recorded Compute API call.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// Path without the query, percent-decoded, e.g.
    /// `/compute/v1/projects/p/zones/z/instances/n` (however the client encoded it).
    pub path: String,
    /// The path exactly as it came over the wire (`us-central1-a` or `us%2Dcentral1%2Da`):
    /// the emulator accepts both, as Google does, and tests check what clients send.
    pub wire_path: String,
    pub query: String,
    pub request_id: Option<String>,
    /// The `Authorization` header as sent (`""` when absent).
    pub authorization: String,
    pub at: SystemTime,
    pub status: u16,
}

impl Call {
    /// A query parameter, percent-decoded (`+` is a space), e.g. `filter`.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| compute::percent_decode(&v.replace('+', " ")))
        })
    }

    /// `zone/name` for a call on one instance (`.../zones/Z/instances/N[/action]`).
    pub fn instance_key(&self) -> Option<String> {
        let (_, rest) = self.path.split_once("/zones/")?;
        let (zone, rest) = rest.split_once("/instances/")?;
        let name = rest.split('/').next()?;
        Some(format!("{zone}/{name}"))
    }

    /// The zone of a zonal call (`.../zones/Z/...`).
    pub fn zone(&self) -> Option<String> {
        let (_, rest) = self.path.split_once("/zones/")?;
        rest.split('/').next().map(str::to_string)
    }
}

/// Something that happened to a VM (boot, signals, deletion, deadline, preemption).
#[derive(Debug, Clone)]
pub struct VmEvent {
    pub at: SystemTime,
    pub instance: String,
    pub what: String,
}

/// A snapshot of one instance for assertions.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub name: String,
    pub zone: String,
    pub status: String,
    /// `127.0.0.1:PORT` of its metadata server.
    pub metadata_host: String,
    /// Its private root directory (kept after deletion, until the emulator is dropped,
    /// so tests can compare what the job wrote with what reached the store).
    pub root: Option<PathBuf>,
    pub preempted: bool,
    pub labels: BTreeMap<String, String>,
    /// The body the instance was inserted with (or [`GceEmulator::add_instance`] made).
    pub insert_body: Value,
}

struct Fault {
    method: String,
    path_contains: String,
    status: u16,
    left: u32,
    /// The call is carried out and only its reply is replaced (a reply lost on the way).
    after: bool,
}

pub(crate) struct Inst {
    pub id: u64,
    pub name: String,
    pub zone: String,
    /// The insert body (what the caller sent), the base of every GET.
    pub body: Value,
    pub status: String,
    pub created: String,
    pub items: Vec<(String, String)>,
    pub fingerprint: String,
    pub preempted: bool,
    /// Bumped on every metadata or preemption change; wakes `wait_for_change`.
    pub version: tokio::sync::watch::Sender<u64>,
    pub md_port: u16,
    pub md_task: Option<tokio::task::AbortHandle>,
    pub vm: Option<vm::Vm>,
    pub deadline_task: Option<tokio::task::AbortHandle>,
    /// Set once the VM is going down: no more restarts of the agent.
    pub going_down: bool,
}

pub(crate) struct State {
    pub instances: BTreeMap<String, Inst>,
    pub ops: HashMap<String, compute::Op>,
    pub by_request: HashMap<String, String>,
    pub zones: HashMap<String, ZoneState>,
    faults: Vec<Fault>,
    pub calls: Vec<Call>,
    pub events: Vec<VmEvent>,
    pub kept_disks: Vec<String>,
    pub gpu: GpuMode,
    pub gpus_visible: Option<u32>,
    /// Roots of deleted VMs, kept for assertions.
    pub old_roots: BTreeMap<String, PathBuf>,
    /// APIs, quotas, zones' GPUs, IAM: what a first launch needs.
    pub prereqs: prereqs::Prereqs,
}

pub(crate) struct Shared {
    pub cfg: GceConfig,
    pub port: u16,
    pub dir: PathBuf,
    pub st: Mutex<State>,
    next_id: AtomicU64,
    pub rt: tokio::runtime::Handle,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT/compute/v1/`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/compute/v1/", self.port)
    }

    pub fn event(&self, instance: &str, what: impl Into<String>) {
        let what = what.into();
        if std::env::var_os("CLOUDRUN_GCE_EMULATOR_TRACE").is_some() {
            eprintln!("gce-emulator: {instance}: {what}");
        }
        self.lock().events.push(VmEvent {
            at: SystemTime::now(),
            instance: instance.to_string(),
            what,
        });
    }

    /// Consume one armed fault matching this call, if any: those that answer instead of
    /// the handler (`after == false`) or those that replace its reply (`after == true`).
    fn take_fault(&self, method: &str, path: &str, after: bool) -> Option<u16> {
        let mut st = self.lock();
        let f = st.faults.iter_mut().find(|f| {
            f.left > 0
                && f.after == after
                && f.method.eq_ignore_ascii_case(method)
                && path.contains(&f.path_contains)
        })?;
        f.left -= 1;
        Some(f.status)
    }
}

/// The running emulator. Dropping it kills every VM's processes and stops the servers.
pub struct GceEmulator {
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
    _dir: crate::TempDir,
}

impl GceEmulator {
    /// Start on a free loopback port (from a plain or an async test: it runs on its own
    /// runtime).
    pub fn start(cfg: GceConfig) -> GceEmulator {
        let dir = crate::TempDir::new("gce");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("gce-emulator")
            .build()
            .expect("start the emulator's runtime");
        // Bound without `block_on`, so that a test already inside a runtime (an async
        // test) can start the emulator too.
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the Compute port");
        std_listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let listener = {
            let _in_rt = rt.enter();
            tokio::net::TcpListener::from_std(std_listener).expect("register the Compute port")
        };
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            port,
            dir: dir.path().to_path_buf(),
            st: Mutex::new(State {
                instances: BTreeMap::new(),
                ops: HashMap::new(),
                by_request: HashMap::new(),
                zones: HashMap::new(),
                faults: Vec::new(),
                calls: Vec::new(),
                events: Vec::new(),
                kept_disks: Vec::new(),
                gpu: cfg.gpu,
                gpus_visible: cfg.gpus_visible,
                old_roots: BTreeMap::new(),
                prereqs: prereqs::Prereqs::new(&cfg.project, cfg.project_number),
            }),
            next_id: AtomicU64::new(1_000_000_000_000 + u64::from(port)),
            rt: rt.handle().clone(),
        });
        let app = compute::router(shared.clone());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GceEmulator {
            shared,
            rt: Some(rt),
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT/compute/v1/`, for `CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE`.
    pub fn compute_url(&self) -> String {
        self.shared.base()
    }

    /// The Compute port (also serves the OAuth token endpoint at `/token`).
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// The project the API knows.
    pub fn project(&self) -> &str {
        &self.shared.cfg.project
    }

    /// Write a service-account key file whose `token_uri` is this emulator's `/token`
    /// (a fresh RSA key from `openssl`, so JWT signing clients work unchanged).
    pub fn write_service_account_key(&self, path: &Path) {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("run openssl to make a test key");
        assert!(out.status.success(), "openssl genpkey failed");
        let pem = String::from_utf8(out.stdout).expect("PEM is text");
        let key = serde_json::json!({
            "type": "service_account",
            "project_id": self.shared.cfg.project,
            "private_key_id": "emulated",
            "private_key": pem,
            "client_email": format!("launcher@{}.iam.gserviceaccount.com", self.shared.cfg.project),
            "client_id": "1",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": format!("http://127.0.0.1:{}/token", self.shared.port),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&key).expect("json")).expect("write key");
    }

    /// Make inserts into `zone` succeed, run out of capacity, or hit a quota.
    pub fn set_zone(&self, zone: &str, state: ZoneState) {
        self.shared.lock().zones.insert(zone.to_string(), state);
    }

    /// The next `times` calls with `method` whose path contains `path_contains` fail with
    /// `status` in Google's error envelope: 500, 503 and 429 are transient; 403 is a
    /// permission the caller lacks (not retried by any client).
    pub fn fail_next(&self, method: &str, path_contains: &str, status: u16, times: u32) {
        self.shared.lock().faults.push(Fault {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            status,
            left: times,
            after: false,
        });
    }

    /// The next `times` calls with `method` whose path contains `path_contains` are
    /// carried out, but their reply is lost: the caller gets `status` (e.g. 503) instead,
    /// as when a reply is dropped on the way back. A client that retries an insert with
    /// the same `requestId` then gets the first Operation, and one VM.
    pub fn lose_next_reply(&self, method: &str, path_contains: &str, status: u16, times: u32) {
        self.shared.lock().faults.push(Fault {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            status,
            left: times,
            after: true,
        });
    }

    /// Put an instance there directly, as the API would return it, without an insert, a
    /// metadata server or a boot: a VM some earlier launch (or someone else) made.
    /// `created` is its `creationTimestamp` (RFC 3339).
    pub fn add_instance(
        &self,
        zone: &str,
        name: &str,
        status: &str,
        labels: &[(&str, &str)],
        created: &str,
    ) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        let body = serde_json::json!({
            "name": name,
            "machineType": format!("zones/{zone}/machineTypes/g2-standard-8"),
            "disks": [{"boot": true, "autoDelete": true, "initializeParams": {"diskSizeGb": "50"}}],
            "networkInterfaces": [{"network": "global/networks/default",
                "accessConfigs": [{"name": "external-nat", "type": "ONE_TO_ONE_NAT"}]}],
            "scheduling": {"provisioningModel": "SPOT", "onHostMaintenance": "TERMINATE",
                "automaticRestart": false, "instanceTerminationAction": "DELETE"},
            "labels": labels,
        });
        let id = self.shared.next_id();
        let (version, _) = tokio::sync::watch::channel(0u64);
        self.shared.lock().instances.insert(
            compute::key(zone, name),
            Inst {
                id,
                name: name.to_string(),
                zone: zone.to_string(),
                body,
                status: status.to_string(),
                created: created.to_string(),
                items: Vec::new(),
                fingerprint: compute::fingerprint(&[]),
                preempted: false,
                version,
                md_port: 0,
                md_task: None,
                vm: None,
                deadline_task: None,
                going_down: false,
            },
        );
    }

    /// Disarm every fault armed with [`GceEmulator::fail_next`].
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Turn an API off for the project (Service Usage answers `DISABLED`), e.g.
    /// `compute.googleapis.com`.
    pub fn disable_service(&self, service: &str) {
        self.shared
            .lock()
            .prereqs
            .disabled_services
            .insert(service.to_string());
    }

    /// Set one regional quota (`regions.get`), e.g. `("us-central1", "NVIDIA_L4_GPUS", 0, 0)`.
    pub fn set_region_quota(&self, region: &str, metric: &str, limit: f64, usage: f64) {
        self.shared
            .lock()
            .prereqs
            .region_quotas
            .insert((region.to_string(), metric.to_string()), (limit, usage));
    }

    /// Set one project-wide quota (`projects.get`), e.g. `GPUS_ALL_REGIONS`.
    pub fn set_project_quota(&self, metric: &str, limit: f64, usage: f64) {
        self.shared
            .lock()
            .prereqs
            .project_quotas
            .insert(metric.to_string(), (limit, usage));
    }

    /// The accelerator types `zone` offers (replacing "every GPU"); an unknown zone name
    /// becomes a zone that exists.
    pub fn set_zone_gpus(&self, zone: &str, gpus: &[&str]) {
        self.shared.lock().prereqs.zone_gpus.insert(
            zone.to_string(),
            gpus.iter().map(|g| g.to_string()).collect(),
        );
    }

    /// Remove `member` (`serviceAccount:E`, `user:E`) from every role of the project's
    /// IAM policy.
    pub fn revoke_all_roles(&self, member: &str) {
        for members in self.shared.lock().prereqs.bindings.values_mut() {
            members.remove(member);
        }
    }

    /// Grant `role` (`roles/…` or `projects/P/roles/…`) to `member` on the project.
    pub fn grant_role(&self, role: &str, member: &str) {
        self.shared
            .lock()
            .prereqs
            .bindings
            .entry(role.to_string())
            .or_default()
            .insert(member.to_string());
    }

    /// Define a custom role (`projects/P/roles/R`) with these permissions.
    pub fn define_custom_role(&self, name: &str, permissions: &[&str]) {
        self.shared.lock().prereqs.custom_roles.insert(
            name.to_string(),
            permissions.iter().map(|p| p.to_string()).collect(),
        );
    }

    /// Delete a service account (IAM then answers 404 for it).
    pub fn delete_service_account(&self, email: &str) {
        self.shared.lock().prereqs.service_accounts.remove(email);
    }

    /// Whether the caller may attach service accounts to VMs (`iam.serviceAccounts.actAs`).
    pub fn set_act_as(&self, allowed: bool) {
        self.shared.lock().prereqs.act_as = allowed;
    }

    /// Retire an image family now (`images.getFromFamily` answers 404).
    pub fn retire_family(&self, family: &str) {
        self.shared
            .lock()
            .prereqs
            .retired_families
            .insert(family.to_string());
    }

    /// Deprecate an image family's image (still served, with `deprecated.state`).
    pub fn deprecate_family(&self, family: &str) {
        self.shared
            .lock()
            .prereqs
            .deprecated_families
            .insert(family.to_string());
    }

    /// The project's default compute service account.
    pub fn default_service_account(&self) -> String {
        prereqs::default_service_account(self.shared.cfg.project_number)
    }

    /// The e-mail of the key [`GceEmulator::write_service_account_key`] writes.
    pub fn launcher_account(&self) -> String {
        format!(
            "launcher@{}.iam.gserviceaccount.com",
            self.shared.cfg.project
        )
    }

    /// The root URL for the other APIs this server emulates (Service Usage, Resource
    /// Manager, IAM): `http://127.0.0.1:PORT/`.
    pub fn api_root(&self) -> String {
        format!("http://127.0.0.1:{}/", self.shared.port)
    }

    /// Every Compute call so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// Calls with `method` whose path ends with `suffix`.
    pub fn calls_to(&self, method: &str, suffix: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.path.ends_with(suffix))
            .collect()
    }

    /// What happened to the VMs, in order.
    pub fn events(&self) -> Vec<VmEvent> {
        self.shared.lock().events.clone()
    }

    /// Every instance that exists now (any status).
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let st = self.shared.lock();
        st.instances.values().map(info).collect()
    }

    /// One instance by name, if it exists.
    pub fn instance(&self, name: &str) -> Option<InstanceInfo> {
        self.instances().into_iter().find(|i| i.name == name)
    }

    /// The private root of a VM, also after it was deleted.
    pub fn vm_root(&self, name: &str) -> Option<PathBuf> {
        let st = self.shared.lock();
        st.instances
            .values()
            .find(|i| i.name == name)
            .and_then(|i| i.vm.as_ref().map(|v| v.root.clone()))
            .or_else(|| st.old_roots.get(name).cloned())
    }

    /// Boot disks that outlived their instance (`setDiskAutoDelete false`).
    pub fn kept_disks(&self) -> Vec<String> {
        self.shared.lock().kept_disks.clone()
    }

    /// What the `nvidia-smi` stand-in answers: on every VM now and on new ones.
    pub fn set_gpu(&self, mode: GpuMode) {
        let roots: Vec<PathBuf> = {
            let mut st = self.shared.lock();
            st.gpu = mode;
            st.instances
                .values()
                .filter_map(|i| i.vm.as_ref().map(|v| v.root.clone()))
                .collect()
        };
        for r in roots {
            vm::write_gpu_mode(&r, mode);
        }
    }

    /// How many of its GPUs each VM's `nvidia-smi` shows, now and on new VMs (`None`: all
    /// it carries; `Some(0)`: "No devices were found").
    pub fn set_gpus_visible(&self, visible: Option<u32>) {
        let vms: Vec<(PathBuf, Option<Vec<vm::Gpu>>)> = {
            let mut st = self.shared.lock();
            st.gpus_visible = visible;
            st.instances
                .values()
                .filter_map(|i| i.vm.as_ref().map(|v| (v.root.clone(), v.gpus.clone())))
                .collect()
        };
        for (root, gpus) in vms {
            vm::write_gpu_replies(&root, gpus.as_deref(), visible);
        }
    }

    /// Preempt a Spot VM: `instance/preempted` turns TRUE at once, the guest gets SIGTERM
    /// after the ACPI delay, and after the notice the VM is stopped hard and its
    /// termination action (DELETE) applied.
    pub fn preempt(&self, name: &str) {
        vm::preempt(&self.shared, name);
    }

    /// The serial console (startup script output, agent console lines) of a VM.
    pub fn serial_output(&self, name: &str) -> String {
        self.vm_root(name)
            .map(|r| {
                let mut s = std::fs::read_to_string(r.join("serial.log")).unwrap_or_default();
                s.push_str(&std::fs::read_to_string(r.join("serial-console")).unwrap_or_default());
                s
            })
            .unwrap_or_default()
    }

    /// Pids of a VM's live processes.
    pub fn vm_pids(&self, name: &str) -> Vec<i32> {
        let tag = {
            let st = self.shared.lock();
            st.instances
                .values()
                .find(|i| i.name == name)
                .and_then(|i| i.vm.as_ref().map(|v| v.tag.clone()))
        };
        tag.map(|t| vm::tree_pids(&t)).unwrap_or_default()
    }
}

fn info(i: &Inst) -> InstanceInfo {
    InstanceInfo {
        name: i.name.clone(),
        zone: i.zone.clone(),
        status: i.status.clone(),
        metadata_host: format!("127.0.0.1:{}", i.md_port),
        root: i.vm.as_ref().map(|v| v.root.clone()),
        preempted: i.preempted,
        labels: i.body["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        insert_body: i.body.clone(),
    }
}

impl Drop for GceEmulator {
    fn drop(&mut self) {
        let tags: Vec<String> = {
            let mut st = self.shared.lock();
            st.instances
                .values_mut()
                .filter_map(|i| {
                    i.going_down = true;
                    i.vm.as_ref().map(|v| v.tag.clone())
                })
                .collect()
        };
        for t in tags {
            vm::kill_tree(&t, nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
