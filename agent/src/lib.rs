//! `cloudrun-agent`: the on-VM cost guard. It pulls the code, runs the training as
//! `VM_USER`, ships logs and checkpoints, samples `nvidia-smi`, applies the stop policies
//! and deletes its own VM as its last, single step.
//!
//! | module | owns |
//! | --- | --- |
//! | [`agent`] | the run in order, the supervisor loop, the teardown's plan and its steps |
//! | [`watch`] | the watchers: GPU samples, stop request, preemption, SIGTERM, output passes |
//! | [`vm`] | the VM's own Compute calls: keep its boot disk, delete it, power it off |
//! | [`policy`] | GPU idle, stall, budget and max-time decisions over injected time |
//! | [`process`] | the job's process: group, signals, exit, adoption |
//! | [`shim`] | `job-shim`: the parent that holds the job, switches its user, records its exit |
//! | [`logs`] | line capture and log shipping (file, journal, console, GCS chunks) |
//! | [`report`] | heartbeat `status.json` writer and GPU metrics batches |
//! | [`gpu`] | `nvidia-smi` probe and parser |
//! | [`gpu_wait`] | waiting for the plan's GPUs before the job; GPUs lost mid-run |
//! | [`metadata`], [`token`] | metadata server client; tokens for GCS and Compute |
//! | [`transfer`] | code pull and output mirroring over `cloudrun::sync` |
//! | [`state`] | the restart-state file and what a restarted agent does |
//! | [`user`] | `VM_USER` lookup and creation |
//! | [`webhook`] | best-effort event POSTs |
//! | [`clock`] | the injectable clock |
//!
//! [`run`] wires the real implementations; [`agent::run_agent`] takes them handed in.

pub mod agent;
pub mod clock;
pub mod gpu;
pub mod gpu_wait;
pub mod logs;
pub mod metadata;
pub mod policy;
pub mod process;
pub mod report;
pub mod shim;
pub mod state;
pub mod token;
pub mod transfer;
pub mod user;
pub mod vm;
pub mod watch;
pub mod webhook;

use std::path::PathBuf;
use std::sync::Arc;

use cloudrun::spec::{RunSpec, SpecError};
use cloudrun::store_url::StoreUrlError;
use cloudrun::{Layout, StoreUrl};

pub use agent::{run_agent, Deps, Outcome, Settings, VmHandle};

/// Where the agent keeps its work by default on a VM.
pub const DEFAULT_WORK_DIR: &str = "/var/lib/cloudrun/work";
/// Where the restart state, mirror states and the local job log live by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cloudrun/state";

/// What `main` gathered from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// A spec file (local runs); `None` reads `cloudrun-spec` from the metadata server
    /// and deletes this VM at the end.
    pub spec_file: Option<PathBuf>,
    pub work_dir: PathBuf,
    pub state_dir: PathBuf,
    pub useradd: PathBuf,
    pub console: Option<PathBuf>,
}

/// Why the agent could not start supervising at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("reading the run spec {path}: {source}")]
    SpecFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("run spec: {0}")]
    Store(#[from] StoreUrlError),
    #[error(transparent)]
    Metadata(#[from] metadata::MetadataError),
    #[error("opening the store: {0}")]
    Storage(#[from] cloudrun::StorageError),
    #[error("Compute client: {0}")]
    Compute(#[from] cloudrun::compute::ComputeError),
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    #[error("finding the agent's own executable (it holds the job as `job-shim`): {0}")]
    OwnExecutable(#[source] std::io::Error),
}

impl RunError {
    /// Exit code: 2 for a spec the agent cannot use, 8 otherwise (the contract's
    /// agent-error code).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::SpecFile { .. } | RunError::Spec(_) | RunError::Store(_) => 2,
            _ => cloudrun::status::EndReason::AgentError.exit_code(),
        }
    }
}

/// Parse the spec text (separate so a bad spec is a clear error before anything runs).
pub fn parse_spec(text: &str) -> Result<(RunSpec, StoreUrl), RunError> {
    let spec = RunSpec::from_json(text)?;
    let url = StoreUrl::parse(&spec.store)?;
    Ok((spec, url))
}

/// Run the agent with the real metadata server, store, Compute client and `nvidia-smi`.
pub async fn run(cfg: Config) -> Result<Outcome, RunError> {
    let md = match &cfg.spec_file {
        Some(_) => None,
        None => Some(Arc::new(metadata::MetadataClient::from_env()?)),
    };
    let text = match (&cfg.spec_file, &md) {
        (Some(p), _) => std::fs::read_to_string(p).map_err(|source| RunError::SpecFile {
            path: p.clone(),
            source,
        })?,
        (None, Some(md)) => md.spec_json().await?,
        (None, None) => unreachable_metadata()?,
    };
    let tokens: Option<Arc<dyn gcp_auth::TokenProvider>> = md.as_ref().map(|m| {
        Arc::new(token::MetadataTokens::new(m.clone())) as Arc<dyn gcp_auth::TokenProvider>
    });
    let vm = match (&md, &tokens) {
        (Some(m), Some(t)) => {
            let instance = m.instance().await?;
            let compute = Arc::new(cloudrun::compute_rest::RestCompute::from_env(t.clone())?);
            Some(VmHandle { compute, instance })
        }
        _ => None,
    };
    let (spec, url) = match parse_spec(&text) {
        Ok(v) => v,
        Err(e) => {
            // On a VM nothing will ever use it: do not leave it running until
            // maxRunDuration. There is no store to write a status to.
            if let Some(vm) = &vm {
                tracing::error!("{e}; deleting this VM");
                let id = uuid::Uuid::new_v4().to_string();
                let i = &vm.instance;
                if let Err(de) = vm
                    .compute
                    .delete_instance(&i.project, &i.zone, &i.name, &id)
                    .await
                {
                    tracing::error!("deleting the VM: {de}");
                }
            }
            return Err(e);
        }
    };
    let storage = cloudrun::storage::open(&url, tokens)?;
    let layout = Layout::for_store(&url);
    let deps = Deps {
        storage: storage.clone(),
        layout: layout.clone(),
        code: Arc::new(transfer::ManifestCode {
            storage,
            layout,
            run: spec.run_id.clone(),
        }),
        outputs: None,
        gpu: Arc::new(gpu::NvidiaSmi::from_env()),
        clock: Arc::new(clock::TokioClock::new()),
        vm,
        metadata: md,
    };
    let settings = Settings {
        work_dir: cfg.work_dir,
        state_dir: cfg.state_dir,
        useradd: cfg.useradd,
        sinks: logs::LogSinks {
            local_file: None,
            console: cfg.console,
            echo: true,
        },
        handle_sigterm: true,
        job_shim: std::env::current_exe().map_err(RunError::OwnExecutable)?,
    };
    Ok(run_agent(spec, settings, deps).await?)
}

fn unreachable_metadata() -> Result<String, RunError> {
    Err(RunError::Metadata(metadata::MetadataError::Missing {
        path: cloudrun::contract::META_SPEC.into(),
    }))
}

#[cfg(test)]
mod tests;

/// The `cloudrun-agent` executable for unit tests that start jobs through the shim.
#[cfg(test)]
pub(crate) mod test_shim {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    /// `CLOUDRUN_AGENT_BINARY` when set (scripts/test.sh builds the agent first), else
    /// `cargo build -p cloudrun-agent --bin cloudrun-agent` into this target dir (a no-op
    /// once built). Cargo's per-test variables are removed first, as in the launcher's
    /// tests, so the build does not rebuild the TLS stack.
    pub fn path() -> PathBuf {
        static SHIM: OnceLock<PathBuf> = OnceLock::new();
        SHIM.get_or_init(|| {
            if let Some(p) = std::env::var_os("CLOUDRUN_AGENT_BINARY") {
                return PathBuf::from(p);
            }
            let exe = std::env::current_exe().expect("test executable");
            // target/<profile>/deps/<test> → target/<profile>
            let dir = exe
                .parent()
                .and_then(|d| d.parent())
                .expect("target dir")
                .to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.args([
                "build",
                "-q",
                "-p",
                "cloudrun-agent",
                "--bin",
                "cloudrun-agent",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy();
                if (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR")
                    || k == "OUT_DIR"
                {
                    cmd.env_remove(&*k);
                }
            }
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("run cargo build -p cloudrun-agent");
            assert!(st.success(), "cargo build -p cloudrun-agent failed");
            let agent = dir.join("cloudrun-agent");
            assert!(
                agent.exists(),
                "{} is missing after the build",
                agent.display()
            );
            agent
        })
        .clone()
    }
}
