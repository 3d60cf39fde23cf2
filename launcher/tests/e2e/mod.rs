//! Shared set-up of the whole-flow tests: one fake-gcs-server and one emulated Compute
//! Engine per test, a project folder with a small training script, the real
//! `cloudrun-launch` (this package's binary) and the real `cloudrun-agent` (built once per
//! test binary with `cargo build -p cloudrun-agent`, see [`agent_binary`]), and the
//! assertions every fault test makes: where the VM went, what the status says, and that
//! every checkpoint the job wrote on the VM is in the store, byte for byte.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cloudrun::storage::gcs::{Endpoint, GcsStorage};
use cloudrun::storage::{Storage, StorageError};
use cloudrun_testkit::gce::{GceConfig, GceEmulator};
use cloudrun_testkit::{FakeGcs, TempDir};
use serde_json::Value;

/// Longest a run may take from launch to its VM being gone, in seconds: boot, pull, a job
/// of a few seconds, the final sync and the delete, on a loaded 2-core machine.
pub const RUN_DEADLINE_SECS: u64 = 180;
/// Longest one `cargo build -p cloudrun-agent` may take, in seconds (a no-op when fresh).
pub const AGENT_BUILD_TIMEOUT_SECS: u64 = 900;
/// Longest one launcher invocation may take, in seconds.
pub const LAUNCHER_TIMEOUT_SECS: u64 = 120;
/// How often the tests poll the store and the emulator, in milliseconds.
pub const POLL_MILLIS: u64 = 250;

/// The bucket and prefix every test uses (`GCS_DIR`).
pub const BUCKET: &str = "bkt";
pub const PREFIX: &str = "cr";

/// The training script. `python3 train.py MODE STEPS PAUSE_SECS`:
/// `ok` writes STEPS checkpoints and exits 0, `fail` exits 3 after STEPS, `hang` stops
/// printing and writing after STEPS, `forever` never ends. Checkpoints are written to a
/// dot-file and renamed, as careful training code does.
pub const TRAIN_PY: &str = r#"import os, sys, time, pathlib
mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
pause = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
out = pathlib.Path(os.environ.get("CLOUDRUN_OUTPUT_DIR", "checkpoint"))
out.mkdir(parents=True, exist_ok=True)
model = pathlib.Path("model")
model.mkdir(exist_ok=True)
def ckpt(i):
    tmp = out / f".ckpt-{i}.tmp"
    tmp.write_text(f"checkpoint {i}\n" * (200 + i))
    tmp.rename(out / f"ckpt-{i:04d}.txt")
i = 0
while mode in ("forever", "hang") or i < steps:
    i += 1
    print(f"step {i}", flush=True)
    ckpt(i)
    if mode == "hang" and i >= steps:
        print("hanging now", flush=True)
        while True:
            time.sleep(3600)
    if mode == "fail" and i >= steps:
        print("boom", file=sys.stderr, flush=True)
        sys.exit(3)
    time.sleep(pause)
(model / "final.txt").write_text("weights\n" * 1000)
print("done", flush=True)
"#;

/// Short windows for tests (seconds), through the launcher's `[policies]` table.
pub const FAST_POLICIES: &str = r#"
[policies]
grace_secs = 3

[policies.gpu_idle]
window_secs = 8

[policies.intervals]
gpu_sample_secs = 1
output_sync_secs = 2
heartbeat_secs = 2
log_flush_secs = 1
stop_poll_secs = 1
"#;

#[path = "../support/agent.rs"]
mod agent;
pub use agent::agent_binary;

/// One test's world: store, cloud, project folder, credentials.
pub struct World {
    pub gcs: FakeGcs,
    pub emu: GceEmulator,
    pub project: TempDir,
    pub home: TempDir,
    key: PathBuf,
}

/// How a world is set up.
pub struct WorldOpts {
    pub cfg: GceConfig,
    /// Extra `cloudrun.toml` lines (top-level keys), before [`FAST_POLICIES`].
    pub toml: String,
    /// Extra `[policies]` keys (e.g. `stall_window_secs = 6`).
    pub policies: String,
}

impl Default for WorldOpts {
    fn default() -> Self {
        WorldOpts {
            cfg: GceConfig::default(),
            toml: "zones = [\"us-central1-a\"]\n".into(),
            policies: String::new(),
        }
    }
}

impl World {
    pub fn new(opts: WorldOpts) -> World {
        let agent = agent_binary();
        let gcs = FakeGcs::start();
        gcs.create_bucket(BUCKET);
        let mut cfg = opts.cfg;
        cfg.storage_host = Some(gcs.host());
        cfg.vm_env.push(("RUST_LOG".into(), "info".into()));
        let emu = GceEmulator::start(cfg);
        let project = TempDir::new("e2e-project");
        let home = TempDir::new("e2e-home");
        let key = home.path().join("key.json");
        emu.write_service_account_key(&key);
        std::fs::write(project.path().join("train.py"), TRAIN_PY).unwrap();
        std::fs::create_dir_all(project.path().join("data")).unwrap();
        std::fs::write(
            project.path().join("data/input.txt"),
            "some data\n".repeat(100),
        )
        .unwrap();
        let policies = FAST_POLICIES.replacen(
            "[policies]\n",
            &format!("[policies]\n{}\n", opts.policies),
            1,
        );
        std::fs::write(
            project.path().join("cloudrun.toml"),
            format!("gpu = \"l4\"\n{}\n{policies}", opts.toml),
        )
        .unwrap();
        let _ = agent;
        World {
            gcs,
            emu,
            project,
            home,
            key,
        }
    }

    /// A `cloudrun-launch` command with this world's environment, in the project folder.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cloudrun-launch"));
        c.args(args)
            .current_dir(self.project.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("USER", whoami())
            .env("GCLOUD_PROJECT", self.emu.project())
            .env("GCS_DIR", format!("gs://{BUCKET}/{PREFIX}"))
            .env("VM_INSTANCE", "trainer")
            .env("VM_USER", vm_user())
            .env("GOOGLE_APPLICATION_CREDENTIALS", &self.key)
            .env("STORAGE_EMULATOR_HOST", self.gcs.host())
            .env(
                "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE",
                self.emu.compute_url(),
            )
            .env("CLOUDRUN_AGENT_BINARY", agent_binary())
            .env("RUST_LOG", "info");
        c
    }

    /// Run the launcher to its end.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut child = self
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start cloudrun-launch");
        let deadline = Instant::now() + Duration::from_secs(LAUNCHER_TIMEOUT_SECS);
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "cloudrun-launch {args:?} did not finish within {LAUNCHER_TIMEOUT_SECS} s:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Launch `train.py ARGS`; the run id and the VM's name.
    pub fn launch(&self, train_args: &[&str]) -> (String, String) {
        let (run, vm, _) = self.launch_with_output(train_args);
        (run, vm)
    }

    /// [`World::launch`], also handing back the launcher's output.
    pub fn launch_with_output(&self, train_args: &[&str]) -> (String, String, Output) {
        self.launch_with_flags(&[], train_args)
    }

    /// Launch `cloudrun-launch FLAGS train.py ARGS`; the run id, the VM's name and the
    /// launcher's output.
    pub fn launch_with_flags(
        &self,
        flags: &[&str],
        train_args: &[&str],
    ) -> (String, String, Output) {
        let mut args = flags.to_vec();
        args.push("train.py");
        args.extend_from_slice(train_args);
        let out = self.run(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "launch failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let run = field(&stdout, "run").unwrap_or_else(|| panic!("no run id in:\n{stdout}"));
        let vm = field(&stdout, "vm")
            .and_then(|v| v.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| panic!("no vm in:\n{stdout}"));
        (run, vm, out)
    }

    /// An object's bytes, or `None`.
    pub fn object(&self, name: &str) -> Option<String> {
        let path = format!("/storage/v1/b/{BUCKET}/o/{}?alt=media", enc(name));
        match cloudrun_testkit::http("GET", self.gcs.port(), &path, "") {
            Ok((200, b)) => Some(b),
            _ => None,
        }
    }

    /// A client for the test bucket, straight to fake-gcs-server (the `cloudrun` library's
    /// own, which pages listings and decodes chunked replies).
    pub fn storage(&self) -> GcsStorage {
        GcsStorage::new(BUCKET, Endpoint::emulator(&self.gcs.host()), None).unwrap()
    }

    /// Object names under a prefix (all pages).
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let store = self.storage();
        block_on(store.list(prefix))
            .unwrap_or_else(|e| panic!("listing {prefix}: {e}"))
            .into_iter()
            .map(|m| m.key)
            .collect()
    }

    /// An object's exact bytes, or `None` when it does not exist.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        let store = self.storage();
        match block_on(store.get_bytes(name)) {
            Ok(b) => Some(b.to_vec()),
            Err(StorageError::NotFound { .. }) => None,
            Err(e) => panic!("reading {name}: {e}"),
        }
    }

    /// `status.json` of a run, if written and readable.
    pub fn status(&self, run: &str) -> Option<Value> {
        self.object(&format!("{PREFIX}/runs/{run}/status.json"))
            .and_then(|b| serde_json::from_str(&b).ok())
    }

    /// Wait until the run's status is `ended` (returns it).
    pub fn wait_ended(&self, run: &str, vm: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(RUN_DEADLINE_SECS);
        loop {
            if let Some(s) = self.status(run) {
                if s["phase"] == "ended" {
                    return s;
                }
            }
            if Instant::now() > deadline {
                self.dump(vm);
                panic!(
                    "run {run} did not end within {RUN_DEADLINE_SECS} s: {:?}",
                    self.status(run)
                );
            }
            std::thread::sleep(Duration::from_millis(POLL_MILLIS));
        }
    }

    /// Wait until the instance no longer exists.
    pub fn wait_gone(&self, vm: &str) {
        let deadline = Instant::now() + Duration::from_secs(RUN_DEADLINE_SECS);
        while self.emu.instance(vm).is_some() {
            if Instant::now() > deadline {
                self.dump(vm);
                panic!("VM {vm} still exists after {RUN_DEADLINE_SECS} s");
            }
            std::thread::sleep(Duration::from_millis(POLL_MILLIS));
        }
    }

    /// Wait until `f` holds.
    pub fn wait_for(&self, what: &str, vm: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(RUN_DEADLINE_SECS);
        while !f() {
            if Instant::now() > deadline {
                self.dump(vm);
                panic!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(POLL_MILLIS));
        }
    }

    /// The VM's work dir (its "disk"), kept by the emulator after deletion.
    pub fn vm_work(&self, vm: &str) -> PathBuf {
        self.emu
            .vm_root(vm)
            .expect("the VM booted")
            .join("var/lib/cloudrun/work")
    }

    /// Checkpoint files the job wrote on the VM (dot-files excluded): relative path → bytes.
    pub fn vm_outputs(&self, vm: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let work = self.vm_work(vm);
        for dir in ["checkpoint", "model"] {
            let Ok(rd) = std::fs::read_dir(work.join(dir)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with('.') {
                    continue;
                }
                out.insert(
                    format!("{dir}/{name}"),
                    std::fs::read_to_string(e.path()).unwrap_or_default(),
                );
            }
        }
        out
    }

    /// Every checkpoint on the VM's disk is in the store with the same bytes; returns how
    /// many there were.
    pub fn assert_outputs_in_store(&self, run: &str, vm: &str) -> usize {
        let local = self.vm_outputs(vm);
        assert!(!local.is_empty(), "the job wrote no checkpoints on {vm}");
        for (rel, bytes) in &local {
            let key = format!("{PREFIX}/runs/{run}/outputs/{rel}");
            match self.object(&key) {
                Some(b) => assert!(b == *bytes, "{key} differs from the VM's {rel}"),
                None => {
                    self.dump(vm);
                    panic!("{key} is missing from the store (written on the VM before the end)")
                }
            }
        }
        local.len()
    }

    /// DELETE calls for this VM.
    pub fn deletes(&self, vm: &str) -> Vec<cloudrun_testkit::gce::Call> {
        self.emu.calls_to("DELETE", &format!("/instances/{vm}"))
    }

    /// Print what the VM and the emulator saw (on failure).
    pub fn dump(&self, vm: &str) {
        eprintln!(
            "---- serial output of {vm} ----\n{}",
            self.emu.serial_output(vm)
        );
        if let Some(root) = self.emu.vm_root(vm) {
            eprintln!(
                "---- agent.log ----\n{}",
                std::fs::read_to_string(root.join("var/lib/cloudrun/agent.log"))
                    .unwrap_or_default()
            );
        }
        for e in self.emu.events() {
            eprintln!("event {:?} {} {}", e.at, e.instance, e.what);
        }
        for c in self.emu.calls() {
            eprintln!("call {} {}?{} -> {}", c.method, c.path, c.query, c.status);
        }
    }
}

/// Run a future to its end on a throw-away runtime (the tests themselves are sync).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `key  value` lines of the launcher's summary.
pub fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().to_string())
    })
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `VM_USER`: this user, or `nobody` when the tests run as root (the launcher refuses
/// root; the agent, running as root like on a VM, switches to it).
pub fn vm_user() -> String {
    match whoami().as_str() {
        "root" => "nobody".into(),
        me => me.to_string(),
    }
}

pub fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Text of a command's stdout and stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The end reason in a status.
pub fn reason(s: &Value) -> &str {
    s["end"]["reason"].as_str().unwrap_or_default()
}

/// Guard: the path exists.
pub fn exists(p: &Path) -> bool {
    p.exists()
}
