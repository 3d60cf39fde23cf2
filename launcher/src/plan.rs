//! Parse → validate → plan: resolved settings and the command line become a
//! [`LaunchPlan`], or a list of [`Problems`], each naming the variable or key and how to
//! set it. No network call happens here (the agent binary is hashed from disk), so
//! `--dry-run`, the unit tests and a real launch share this one path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use cloudrun::layout::Layout;
use cloudrun::prices::{Estimate, PriceBook, QuoteRequest};
use cloudrun::spec::{
    IdlePolicy, JobSpec, Placement, Policies, PriceQuote, Provider, RunSpec, SPEC_SCHEMA,
};
use cloudrun::{RunId, StoreUrl};
use sha2::Digest;

use crate::gpu::{self, Hardware};
use crate::settings::{how_to_set, Settings, Source, Sourced, PROJECT_FILE};

/// Image project of Google's Deep Learning VM images.
pub const DEFAULT_IMAGE_PROJECT: &str = "deeplearning-platform-release";
/// DLVM family used when none is configured: CUDA 12.8, driver 570, Ubuntu 22.04.
/// Families retire; `images.getFromFamily` at launch says so clearly.
pub const DEFAULT_IMAGE_FAMILY: &str = "common-cu128-ubuntu-2204-nvidia-570";
/// Boot disk size when none is configured, in GB: DLVM images are ~50 GB, plus room for
/// data and checkpoints.
pub const DEFAULT_DISK_GB: u32 = 100;
/// Smallest boot disk accepted, in GB (below DLVM image sizes the insert fails late).
pub const MIN_DISK_GB: u32 = 50;
/// The VM's service account when none is configured: the project's default compute SA.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Extra time the cloud's own deadline (`maxRunDuration`) gives beyond the agent's
/// `max_run_secs`, in seconds: boot, driver set-up, the final sync and the delete happen
/// outside the agent's clock. Only an agent that died is cut off by the cloud.
pub const CLOUD_DEADLINE_MARGIN_SECS: u64 = 15 * 60;
/// `scheduling.maxRunDuration` limits, in seconds (30 s to 120 days).
pub const MAX_RUN_DURATION_MIN_SECS: u64 = 30;
pub const MAX_RUN_DURATION_MAX_SECS: u64 = 120 * 24 * 3600;
/// Longest VM name prefix: the name is `<prefix>-<run id>` (21 more characters) and
/// Compute allows 63.
pub const MAX_VM_PREFIX_LEN: usize = 63 - 21;
/// The shortest run a budget must buy, in seconds (Compute bills a minute at least).
pub const MIN_BUDGET_SECS: u64 = 60;

/// Everything wrong with the settings, each with how to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => f.write_str(one),
            many => {
                writeln!(
                    f,
                    "{} settings need fixing before anything is created:",
                    many.len()
                )?;
                for (i, p) in many.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// The agent binary to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBinary {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// A validated launch: everything needed to build the insert body and run the launch.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub run_id: RunId,
    pub project: String,
    pub account: Option<String>,
    pub store: StoreUrl,
    pub bucket: String,
    pub layout: Layout,
    pub instance_name: String,
    pub hardware: Hardware,
    pub zones: Vec<String>,
    pub spot: bool,
    pub image_project: String,
    pub image_family: String,
    pub disk_gb: u32,
    pub service_account: String,
    pub agent: AgentBinary,
    /// The spec without a zone; [`LaunchPlan::spec_for_zone`] fills it per attempt.
    pub spec: RunSpec,
    /// The price in the first zone to try.
    pub estimate: Estimate,
    /// The price in each zone to try, in order (each zone's region's figure).
    pub zone_quotes: Vec<(String, Estimate)>,
    /// The time limit before the budget is applied, in seconds.
    pub max_time_secs: u64,
    /// `--any-region`: zones on another continent than the bucket may be tried.
    pub any_region: bool,
    /// Egress rates for reading the bucket from another region, and their source.
    pub egress: cloudrun::prices::EgressRates,
    pub egress_source: String,
    /// Whether the zones are the GPU's defaults (which the launch may reorder to be near
    /// the data) rather than the user's own list.
    pub zones_default: bool,
    /// `scheduling.maxRunDuration` in seconds, in the first zone.
    pub cloud_max_run_secs: u64,
    /// `STORAGE_EMULATOR_HOST` of the launcher, passed to an emulated VM in metadata.
    pub storage_host: Option<String>,
    pub project_dir: PathBuf,
}

impl LaunchPlan {
    /// The spec as the VM in `zone` gets it: that zone's price, and the time the budget
    /// buys at it.
    pub fn spec_for_zone(&self, zone: &str) -> RunSpec {
        let mut s = self.spec.clone();
        s.placement.zone = Some(zone.to_string());
        s.price = price_quote(self.quote_for_zone(zone));
        s.policies.max_run_secs = self.agent_max_secs_for(zone);
        s
    }

    /// The price in `zone` (the first zone's when `zone` was not quoted).
    pub fn quote_for_zone(&self, zone: &str) -> &Estimate {
        self.zone_quotes
            .iter()
            .find(|(z, _)| z == zone)
            .map(|(_, e)| e)
            .unwrap_or(&self.estimate)
    }

    /// The agent's time limit in `zone`: the time limit, capped by what the budget buys
    /// at that zone's price.
    pub fn agent_max_secs_for(&self, zone: &str) -> u64 {
        let price = self.quote_for_zone(zone).usd_per_hour;
        match self
            .spec
            .policies
            .budget_usd
            .and_then(|b| cloudrun::billing::secs_for_budget(b, price))
        {
            Some(secs) => self.max_time_secs.min(secs),
            None => self.max_time_secs,
        }
    }

    /// `scheduling.maxRunDuration` for a VM in `zone`, in seconds.
    pub fn cloud_max_run_secs_for(&self, zone: &str) -> u64 {
        self.agent_max_secs_for(zone) + CLOUD_DEADLINE_MARGIN_SECS
    }

    /// `gs://bucket/<prefix>/agent/<sha>/cloudrun-agent`.
    pub fn agent_url(&self) -> String {
        format!(
            "gs://{}/{}",
            self.bucket,
            self.layout.agent_binary(&self.agent.sha256)
        )
    }

    /// When the cloud deletes a VM in `zone` at the latest, counted from `from`.
    pub fn hard_deadline(&self, zone: &str, from: DateTime<Utc>) -> DateTime<Utc> {
        from + chrono::Duration::seconds(self.cloud_max_run_secs_for(zone) as i64)
    }
}

/// The price of `h` in `zone`'s region.
pub fn quote_zone(book: &PriceBook, h: &Hardware, zone: &str, spot: bool) -> Estimate {
    book.quote(&QuoteRequest {
        region: cloudrun::prices::region_of(zone),
        machine_type: &h.machine_type,
        gpu: Some((h.gpu.accelerator(), h.count)),
        spot,
    })
}

/// The spec's price block for a quote.
pub fn price_quote(e: &Estimate) -> PriceQuote {
    PriceQuote {
        usd_per_hour: e.usd_per_hour,
        source: e.describe(),
        estimate: e.estimate,
        region: Some(e.region.clone()),
    }
}

/// What the launch needs besides settings.
#[derive(Debug, Clone)]
pub struct PlanInputs<'a> {
    /// Script and its arguments.
    pub command: &'a [String],
    pub now: DateTime<Utc>,
    pub prices: &'a PriceBook,
    /// Where the agent binary is when no setting names it (beside the launcher).
    pub default_agent: Option<PathBuf>,
    pub storage_host: Option<String>,
    /// `user@host` of this launch, recorded in the spec's origin.
    pub launched_by: String,
}

/// The project folder as `latest` matches it: absolute, symlinks resolved where it can be.
pub fn project_key(dir: &Path) -> String {
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .display()
        .to_string()
}

fn origin(settings: &Settings, inputs: &PlanInputs<'_>) -> cloudrun::spec::Origin {
    cloudrun::spec::Origin {
        by: inputs.launched_by.clone(),
        project_dir: project_key(&settings.project_dir),
    }
}

/// A required setting, or a problem saying how to set it.
fn required<'a>(
    v: &'a Option<Sourced<String>>,
    key: &str,
    what: &str,
    example: &str,
    problems: &mut Vec<String>,
) -> Option<&'a str> {
    match v {
        Some(s) => Some(s.value.as_str()),
        None => {
            problems.push(format!("{what} is not set: {}", how_to_set(key, example)));
            None
        }
    }
}

fn from(s: &Option<Sourced<String>>, name: &str) -> String {
    match s {
        Some(s) => format!("{name} {:?} (from {})", s.value, s.source),
        None => name.to_string(),
    }
}

/// Check a GCP project id: 6–30 characters, lowercase letters, digits and hyphens,
/// starting with a letter, not ending with a hyphen (optionally `domain:` in front).
pub fn validate_project(p: &str) -> Result<(), &'static str> {
    let id = p.rsplit(':').next().unwrap_or(p);
    if !(6..=30).contains(&id.len()) {
        return Err("a project id is 6 to 30 characters long");
    }
    if !id.starts_with(|c: char| c.is_ascii_lowercase()) || id.ends_with('-') {
        return Err("a project id starts with a lowercase letter and does not end with '-'");
    }
    if !id
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err("a project id holds only lowercase letters, digits and '-' (use the id, not the display name)");
    }
    Ok(())
}

fn validate_vm_prefix(p: &str) -> Result<(), String> {
    let ok_chars = p
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if p.is_empty() || !p.starts_with(|c: char| c.is_ascii_lowercase()) || !ok_chars {
        return Err("a VM name starts with a lowercase letter and holds only lowercase letters, digits and '-'".into());
    }
    if p.len() > MAX_VM_PREFIX_LEN {
        return Err(format!(
            "it is {} characters; the run id is appended, so at most {MAX_VM_PREFIX_LEN} fit in Compute's 63",
            p.len()
        ));
    }
    Ok(())
}

fn validate_user(u: &str) -> Result<(), &'static str> {
    let ok = !u.is_empty()
        && u.len() <= 32
        && u.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && u.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if !ok {
        return Err("a Linux user name is 1-32 characters of a-z, 0-9, '_' and '-', starting with a letter or '_'");
    }
    if u == "root" {
        return Err("the job runs unprivileged: pick a user other than root");
    }
    Ok(())
}

fn validate_env_key(k: &str) -> bool {
    !k.is_empty()
        && k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// SHA-256 and size of the agent binary.
fn hash_agent(path: &Path) -> std::io::Result<AgentBinary> {
    let data = std::fs::read(path)?;
    Ok(AgentBinary {
        path: path.to_path_buf(),
        sha256: hex::encode(sha2::Sha256::digest(&data)),
        size: data.len() as u64,
    })
}

/// The job's argv for a script: `python3 x.py`, `bash x.sh`, or the file itself.
pub fn job_command(script: &str, args: &[String]) -> Vec<String> {
    let mut argv = if script.ends_with(".py") {
        vec!["python3".to_string(), script.to_string()]
    } else if script.ends_with(".sh") {
        vec!["bash".to_string(), script.to_string()]
    } else {
        vec![format!("./{}", script.trim_start_matches("./"))]
    };
    argv.extend(args.iter().cloned());
    argv
}

/// The store, checked, for any subcommand.
pub fn store(settings: &Settings) -> Result<StoreUrl, Problems> {
    let mut problems: Vec<String> = settings
        .file_problems
        .iter()
        .map(|p| p.message.clone())
        .collect();
    let url = match (provider(settings), &settings.gcs_dir) {
        (Err(e), _) => {
            problems.push(e);
            None
        }
        (Ok(Provider::Local), _) => match local_store(settings) {
            Ok(u) => Some(u),
            Err(e) => {
                problems.push(e);
                None
            }
        },
        (Ok(Provider::Gce | Provider::Batch), None) => {
            problems.push(format!(
                "GCS_DIR is not set: {}",
                how_to_set("gcs_dir", "gs://my-bucket/cloudrun")
            ));
            None
        }
        (Ok(Provider::Gce | Provider::Batch), Some(s)) => match StoreUrl::parse(&s.value) {
            Ok(u) => Some(u),
            Err(e) => {
                problems.push(format!("{e} (from {})", s.source));
                None
            }
        },
    };
    match url {
        Some(u) if problems.is_empty() => Ok(u),
        _ => Err(Problems(problems)),
    }
}

/// The project id, checked, for subcommands that call Compute.
pub fn project(settings: &Settings) -> Result<String, Problems> {
    match &settings.project {
        None => Err(Problems(vec![format!(
            "GCLOUD_PROJECT is not set: {}",
            how_to_set("project", "my-project")
        )])),
        Some(s) => validate_project(&s.value)
            .map(|()| s.value.clone())
            .map_err(|why| {
                Problems(vec![format!(
                    "{}: {why}",
                    from(&settings.project, "GCLOUD_PROJECT")
                )])
            }),
    }
}

/// The project folder, refused when it is `/` or the home directory: the push would
/// upload everything under it.
fn check_project_dir(settings: &Settings, p: &mut Vec<String>) {
    let dir = &settings.project_dir;
    let is_home = settings.home_dir.as_ref().is_some_and(|h| same_dir(h, dir));
    if dir.parent().is_none() || is_home {
        p.push(format!(
            "{} is not a project folder (everything under it would be uploaded): cd into the folder that holds your script, put a {PROJECT_FILE} in it, or pass -C DIR",
            dir.display()
        ));
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn max_time(settings: &Settings, p: &mut Vec<String>) -> u64 {
    match &settings.max_time {
        None => cloudrun::spec::DEFAULT_MAX_RUN_SECS,
        Some(s) => match humantime::parse_duration(&s.value) {
            Ok(d) if d.as_secs() >= MAX_RUN_DURATION_MIN_SECS => d.as_secs(),
            Ok(_) => {
                p.push(format!("max_time {:?} (from {}) is under {MAX_RUN_DURATION_MIN_SECS} s, the shortest Compute allows", s.value, s.source));
                0
            }
            Err(e) => {
                p.push(format!(
                    "max_time {:?} (from {}) is not a duration ({e}): write e.g. --max-time 90m or max_time = \"12h\"",
                    s.value, s.source
                ));
                0
            }
        },
    }
}

fn job_env(settings: &Settings, p: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (k, v) in &settings.env {
        if !validate_env_key(k) || v.value == "\0" {
            p.push(format!(
                "environment entry {k:?} (from {}) is not KEY=VALUE with a KEY of letters, digits and '_': write e.g. --env BATCHSIZE=256",
                v.source
            ));
        } else {
            env.insert(k.clone(), v.value.clone());
        }
    }
    env
}

fn output_dirs(settings: &Settings) -> Vec<String> {
    settings
        .output_dirs
        .as_ref()
        .map(|s| s.value.clone())
        .unwrap_or_else(|| {
            cloudrun::spec::DEFAULT_OUTPUT_DIRS
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
}

/// The `[policies]` table of the settings files (the spec's own defaults without one);
/// flags such as `--idle-minutes`, `--budget` and `--max-time` are applied on top.
fn file_policies(settings: &Settings) -> Policies {
    settings
        .policies
        .as_ref()
        .map(|p| p.value.clone())
        .unwrap_or_default()
}

fn idle_policy(settings: &Settings, base: &IdlePolicy) -> IdlePolicy {
    match settings.idle_minutes.as_ref().map(|s| s.value) {
        Some(0) => IdlePolicy {
            enabled: false,
            ..base.clone()
        },
        Some(m) => IdlePolicy {
            window_secs: m * 60,
            ..base.clone()
        },
        None => base.clone(),
    }
}

/// The job's argv for the script, checked to be a file inside the project folder.
fn script_command(settings: &Settings, command: &[String], p: &mut Vec<String>) -> Vec<String> {
    match command.split_first() {
        None => {
            p.push("no script given: write e.g. `cloudrun-launch main.py --epochs 50`".into());
            Vec::new()
        }
        Some((script, args)) => {
            let path = settings.project_dir.join(script);
            if cloudrun::manifest::validate_relative_path(script.trim_start_matches("./")).is_err()
            {
                // Lexically, as the script may not exist: `..` and `.` resolved.
                let mut full = PathBuf::new();
                for c in path.components() {
                    match c {
                        std::path::Component::ParentDir => {
                            full.pop();
                        }
                        std::path::Component::CurDir => {}
                        other => full.push(other),
                    }
                }
                let folder = full.parent().unwrap_or(Path::new("/"));
                p.push(format!(
                    "script {script:?} is outside the project folder {}, which is what gets packed: pass -C {} to pack the script's folder (everything in it is uploaded), or cd into the project that holds it",
                    settings.project_dir.display(),
                    folder.display()
                ));
            } else if !path.is_file() {
                p.push(format!("script {script:?} not found in the project folder {} (check the name, run from the project folder or pass -C DIR)", settings.project_dir.display()));
            }
            job_command(script, args)
        }
    }
}

/// Where runs execute, from the `provider` setting (`gce` when unset).
pub fn provider(settings: &Settings) -> Result<Provider, String> {
    match &settings.provider {
        None => Ok(Provider::Gce),
        Some(s) => match s.value.trim() {
            "gce" | "" => Ok(Provider::Gce),
            "local" => Ok(Provider::Local),
            other => Err(format!(
                "provider {other:?} (from {}) is neither \"gce\" nor \"local\": pass --local or set provider = \"local\" in {PROJECT_FILE}",
                s.source
            )),
        },
    }
}

/// The value a launch would use for an unset `key`, formatted as `config` prints values
/// (`"24h"`, `100`, `["checkpoint", "model"]`), or `None` when the key has no default (it
/// is required, like `project`, or optional with nothing in its place, like `budget`).
/// `default_agent` is the agent beside the launcher.
pub fn default_setting(
    settings: &Settings,
    key: &str,
    default_agent: Option<&Path>,
) -> Option<String> {
    let local = provider(settings) == Ok(Provider::Local);
    let hardware = || {
        gpu::resolve(
            settings.gpu.as_ref().map(|s| s.value.as_str()),
            settings.machine_type.as_ref().map(|s| s.value.as_str()),
        )
        .ok()
    };
    Some(match key {
        "provider" => format!("{:?}", "gce"),
        "gcs_dir" if local => format!("{:?}", local_store(settings).ok()?.to_string()),
        "spot" => format!("{:?}", false),
        "max_time" => format!(
            "{:?}",
            duration_setting(cloudrun::spec::DEFAULT_MAX_RUN_SECS)
        ),
        "image_family" => format!("{DEFAULT_IMAGE_FAMILY:?}"),
        "image_project" => format!("{DEFAULT_IMAGE_PROJECT:?}"),
        "disk_gb" => format!("{DEFAULT_DISK_GB:?}"),
        "service_account" => format!("{DEFAULT_SERVICE_ACCOUNT:?}"),
        "output_dirs" => format!("{:?}", output_dirs(settings)),
        "idle_minutes" => format!("{:?}", file_policies(settings).gpu_idle.window_secs / 60),
        "machine_type" => format!("{:?}", hardware()?.machine_type),
        "zones" => format!("{:?}", hardware()?.gpu.default_zones()),
        "agent_binary" => format!("{:?}", default_agent?),
        _ => return None,
    })
}

/// Seconds as a `max_time` setting would be written: `24h`, `90m`, `45s`.
fn duration_setting(secs: u64) -> String {
    if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// Subfolder of the data dir that is the default store of local runs.
pub const LOCAL_STORE_SUBDIR: &str = "store";

/// The store of a local run: `GCS_DIR` when it is a `file://` URL, else
/// `<data dir>/store`. A `gs://` GCS_DIR given with `--gcs-dir` contradicts `--local` and
/// is a problem; one from the environment or a settings file (the usual cloud set-up) is
/// set aside with a note, so `--local` rehearses without touching the bucket.
pub fn local_store(settings: &Settings) -> Result<StoreUrl, String> {
    if let Some(s) = &settings.gcs_dir {
        match StoreUrl::parse(&s.value) {
            Ok(u @ StoreUrl::Local { .. }) => return Ok(u),
            Ok(StoreUrl::Gcs { .. }) if matches!(s.source, Source::Flag(_)) => {
                return Err(format!(
                    "--gcs-dir {} is a bucket, but a local run keeps its objects in a directory: pass --gcs-dir file:///path (or nothing, for the default store), or drop --local",
                    s.value
                ))
            }
            Ok(StoreUrl::Gcs { .. }) => tracing::info!(
                "local run: GCS_DIR {} (from {}) is a bucket; using the local store instead",
                s.value,
                s.source
            ),
            Err(e) => return Err(format!("{e} (from {})", s.source)),
        }
    }
    match &settings.data_dir {
        Some(d) => Ok(StoreUrl::Local {
            root: d.join(LOCAL_STORE_SUBDIR),
        }),
        None => Err(format!(
            "no data directory for the local store (HOME is not set): {}",
            how_to_set("gcs_dir", "file:///path/to/store")
        )),
    }
}

/// A validated local run: the same spec a VM would get, run by a detached agent here.
#[derive(Debug, Clone)]
pub struct LocalPlan {
    pub run_id: RunId,
    pub store: StoreUrl,
    pub layout: Layout,
    pub spec: RunSpec,
    /// The `cloudrun-agent` to start.
    pub agent: PathBuf,
    pub project_dir: PathBuf,
    /// Where the run's spec file, work and state folders and agent log go.
    pub data_dir: PathBuf,
}

/// Price quoted for a local run: the machine is already paid for.
pub const LOCAL_PRICE_SOURCE: &str = "local run: no charge";

/// Validate the settings of a `--local` run into a plan. None of the cloud settings
/// (project, VM name, user, GPU, zones, prices) is needed or read.
pub fn build_local(settings: &Settings, inputs: &PlanInputs<'_>) -> Result<LocalPlan, Problems> {
    let mut p: Vec<String> = settings
        .file_problems
        .iter()
        .map(|f| f.message.clone())
        .collect();
    if let Err(e) = provider(settings) {
        p.push(e);
    }
    check_project_dir(settings, &mut p);
    let store = match local_store(settings) {
        Ok(s) => Some(s),
        Err(e) => {
            p.push(e);
            None
        }
    };
    let agent_max = max_time(settings, &mut p);
    let env = job_env(settings, &mut p);
    let output_dirs = output_dirs(settings);
    let command = script_command(settings, inputs.command, &mut p);
    if settings.budget.is_some() {
        tracing::info!("local run: the budget is not enforced (a local run costs nothing)");
    }
    // The GPU and zones name a VM to rent; a local run uses this machine as it is. A GPU
    // that does not exist is still an error (it is a typo either way).
    if let Some(g) = &settings.gpu {
        match gpu::parse_gpu(&g.value) {
            Ok(_) => tracing::info!(
                "local run: gpu {:?} (from {}) is not used; the job sees this machine's GPUs",
                g.value,
                g.source
            ),
            Err(e) => p.push(format!("{} (from {})", e.0, g.source)),
        }
    }
    if let Some(z) = &settings.zones {
        tracing::info!(
            "local run: zones {:?} (from {}) are not used",
            z.value,
            z.source
        );
    }
    let agent = settings
        .agent_binary
        .as_ref()
        .map(|s| s.value.clone())
        .or_else(|| inputs.default_agent.clone());
    match &agent {
        Some(a) if a.is_file() => {}
        Some(a) => p.push(format!(
            "no cloudrun-agent at {}: build it with `cargo build -p cloudrun-agent` (it lands beside cloudrun-launch), or {}",
            a.display(),
            how_to_set("agent_binary", "/path/to/cloudrun-agent")
        )),
        None => p.push(format!(
            "no cloudrun-agent binary: {}",
            how_to_set("agent_binary", "/path/to/cloudrun-agent")
        )),
    }
    let data_dir = settings.data_dir.clone();
    let (Some(store), Some(agent), Some(data_dir), true) = (store, agent, data_dir, p.is_empty())
    else {
        return Err(Problems(p));
    };
    let run_id = RunId::new(inputs.now);
    let spec = RunSpec {
        schema: SPEC_SCHEMA,
        run_id: run_id.clone(),
        created_at: inputs.now,
        store: store.to_string(),
        job: JobSpec {
            command,
            setup: settings.setup.as_ref().map(|s| s.value.clone()),
            workdir: ".".into(),
            env,
            user: None,
            output_dirs,
            nodes: Default::default(),
        },
        policies: {
            let base = file_policies(settings);
            Policies {
                gpu_idle: idle_policy(settings, &base.gpu_idle),
                budget_usd: None,
                max_run_secs: agent_max,
                ..base
            }
        },
        price: PriceQuote {
            usd_per_hour: 0.0,
            source: LOCAL_PRICE_SOURCE.into(),
            ..PriceQuote::default()
        },
        placement: Placement {
            provider: Provider::Local,
            ..Placement::default()
        },
        webhook: None,
        origin: Some(origin(settings, inputs)),
        resume_from: None,
    };
    if let Err(e) = spec.validate() {
        return Err(Problems(vec![e.to_string()]));
    }
    Ok(LocalPlan {
        run_id,
        layout: Layout::for_store(&store),
        store,
        spec,
        agent,
        project_dir: settings.project_dir.clone(),
        data_dir,
    })
}

/// The project and account of a VM run, checked.
fn vm_identity(settings: &Settings, p: &mut Vec<String>) -> (Option<String>, Option<String>) {
    let project = required(
        &settings.project,
        "project",
        "GCLOUD_PROJECT",
        "my-project",
        p,
    )
    .map(str::to_string);
    if let Some(id) = &project {
        if let Err(why) = validate_project(id) {
            p.push(format!(
                "{}: {why}",
                from(&settings.project, "GCLOUD_PROJECT")
            ));
        }
    }
    let account = settings.account.as_ref().map(|s| s.value.clone());
    if let Some(a) = &account {
        if !a.contains('@') {
            p.push(format!(
                "{}: an account is an e-mail address, e.g. you@example.com",
                from(&settings.account, "GCP_ACCOUNT")
            ));
        }
    }

    (project, account)
}

/// The bucket a VM run's store is in (a VM cannot read a local directory).
fn vm_store(settings: &Settings, p: &mut Vec<String>) -> Option<StoreUrl> {
    let gcs = required(
        &settings.gcs_dir,
        "gcs_dir",
        "GCS_DIR",
        "gs://my-bucket/cloudrun",
        p,
    );
    let mut store = None;
    if let Some(v) = gcs {
        match StoreUrl::parse(v) {
            Ok(u @ StoreUrl::Gcs { .. }) => store = Some(u),
            Ok(StoreUrl::Local { .. }) => p.push(format!(
                "{}: a VM cannot read a local directory; use a bucket: {}",
                from(&settings.gcs_dir, "GCS_DIR"),
                how_to_set("gcs_dir", "gs://my-bucket/cloudrun")
            )),
            Err(e) => p.push(format!(
                "{e} (from {})",
                settings
                    .gcs_dir
                    .as_ref()
                    .map(|s| s.source.to_string())
                    .unwrap_or_default()
            )),
        }
    }

    store
}

/// The VM name prefix and the user the job runs as, checked.
fn vm_names<'a>(settings: &'a Settings, p: &mut Vec<String>) -> (Option<&'a str>, Option<&'a str>) {
    let prefix = required(
        &settings.vm_instance,
        "vm_instance",
        "VM_INSTANCE",
        "trainer",
        p,
    );
    if let Some(v) = prefix {
        if let Err(why) = validate_vm_prefix(v) {
            p.push(format!(
                "{}: {why}",
                from(&settings.vm_instance, "VM_INSTANCE")
            ));
        }
    }
    let user = required(&settings.vm_user, "vm_user", "VM_USER", "trainer", p);
    if let Some(u) = user {
        if let Err(why) = validate_user(u) {
            p.push(format!("{}: {why}", from(&settings.vm_user, "VM_USER")));
        }
    }

    (prefix, user)
}

/// The zones to try: the user's (each checked, also for the GPU) or the GPU's defaults.
fn vm_zones(settings: &Settings, hardware: &Option<Hardware>, p: &mut Vec<String>) -> Vec<String> {
    let zones: Vec<String> = match (&settings.zones, &hardware) {
        (Some(z), _) => {
            for zone in &z.value {
                let checked = crate::zones::check_zone(zone).and_then(|()| match &hardware {
                    Some(h) => crate::zones::check_gpu_in_zone(h.gpu, zone),
                    None => Ok(()),
                });
                if let Err(why) = checked {
                    p.push(format!("{why} (from {})", z.source));
                }
            }
            if z.value.is_empty() {
                p.push(format!(
                    "zones (from {}) is empty: list at least one zone, e.g. --zone us-central1-a",
                    z.source
                ));
            }
            z.value.clone()
        }
        (None, Some(h)) => h
            .gpu
            .default_zones()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        (None, None) => Vec::new(),
    };

    zones
}

/// The agent binary to upload, hashed.
fn vm_agent(
    settings: &Settings,
    inputs: &PlanInputs<'_>,
    p: &mut Vec<String>,
) -> Option<AgentBinary> {
    // The agent binary.
    let agent_path = settings
        .agent_binary
        .as_ref()
        .map(|s| s.value.clone())
        .or_else(|| inputs.default_agent.clone());
    let agent = match &agent_path {
        None => {
            p.push(format!(
                "no agent binary: install the static agent beside cloudrun-launch with scripts/install.sh (found there with no setting), or build it with scripts/build-agent.sh, then {}",
                how_to_set("agent_binary", "/path/to/cloudrun-agent")
            ));
            None
        }
        Some(path) => match hash_agent(path) {
            Ok(a) => Some(a),
            Err(e) => {
                p.push(format!(
                    "agent binary {} cannot be read ({e}): build it with scripts/build-agent.sh, then {}",
                    path.display(),
                    how_to_set("agent_binary", "/path/to/cloudrun-agent")
                ));
                None
            }
        },
    };

    agent
}

/// Validate everything into a plan.
pub fn build(settings: &Settings, inputs: &PlanInputs<'_>) -> Result<LaunchPlan, Problems> {
    let mut p: Vec<String> = settings
        .file_problems
        .iter()
        .map(|f| f.message.clone())
        .collect();
    check_project_dir(settings, &mut p);

    let (project, account) = vm_identity(settings, &mut p);
    let store = vm_store(settings, &mut p);
    let (prefix, user) = vm_names(settings, &mut p);
    let hardware = match gpu::resolve(
        settings.gpu.as_ref().map(|s| s.value.as_str()),
        settings.machine_type.as_ref().map(|s| s.value.as_str()),
    ) {
        Ok(h) => Some(h),
        Err(e) => {
            p.push(e.0);
            None
        }
    };

    let zones = vm_zones(settings, &hardware, &mut p);

    let spot = settings.spot.as_ref().map(|s| s.value).unwrap_or(false);

    let max_time_secs = max_time(settings, &mut p);
    if max_time_secs + CLOUD_DEADLINE_MARGIN_SECS > MAX_RUN_DURATION_MAX_SECS {
        p.push(format!("max_time is longer than the 120 days Compute allows (with a {CLOUD_DEADLINE_MARGIN_SECS} s margin)"));
    }

    let disk_gb = settings
        .disk_gb
        .as_ref()
        .map(|s| s.value)
        .unwrap_or(DEFAULT_DISK_GB);
    if disk_gb < MIN_DISK_GB {
        p.push(format!("disk_gb {disk_gb} is below {MIN_DISK_GB} GB, smaller than the Deep Learning VM images: {}", how_to_set("disk_gb", "100")));
    }

    let env = job_env(settings, &mut p);
    let output_dirs = output_dirs(settings);
    let command = script_command(settings, inputs.command, &mut p);

    let agent = vm_agent(settings, inputs, &mut p);

    // Price and budget: every zone is quoted at its own region's price; the spec a VM
    // gets carries its zone's figure (and the time the budget buys at it).
    let zone_quotes: Vec<(String, Estimate)> = match &hardware {
        Some(h) => zones
            .iter()
            .map(|z| (z.clone(), quote_zone(inputs.prices, h, z, spot)))
            .collect(),
        None => Vec::new(),
    };
    let estimate = hardware.as_ref().map(|h| match zone_quotes.first() {
        Some((_, e)) => e.clone(),
        None => quote_zone(inputs.prices, h, "us-central1-a", spot),
    });
    let budget = settings.budget.as_ref().map(|s| s.value);
    let mut agent_max = max_time_secs;
    if let (Some(b), Some(e)) = (budget, &estimate) {
        if !(b.is_finite() && b > 0.0) {
            p.push(format!(
                "budget {b} is not a positive amount of US dollars: {}",
                how_to_set("budget", "20")
            ));
        } else if let Some((zone, e)) = zone_quotes.iter().find(|(_, e)| !e.is_complete()) {
            p.push(format!(
                "a budget needs a complete price, and for {zone} there is no {}: add it to a prices.toml (--prices FILE), or leave that zone out with --zone",
                e.missing.join(", no ")
            ));
        } else {
            let cheapest_secs = zone_quotes
                .iter()
                .filter_map(|(_, e)| cloudrun::billing::secs_for_budget(b, e.usd_per_hour))
                .min();
            if let Some(secs) = cheapest_secs.filter(|s| *s < MIN_BUDGET_SECS) {
                p.push(format!(
                    "budget ${b} buys only {secs} s at up to ${:.2}/h; Compute bills at least a minute",
                    zone_quotes
                        .iter()
                        .map(|(_, e)| e.usd_per_hour)
                        .fold(0.0, f64::max)
                ));
            }
            if let Some(secs) = cloudrun::billing::secs_for_budget(b, e.usd_per_hour) {
                agent_max = agent_max.min(secs);
            }
        }
    }
    let cloud_max_run_secs = agent_max + CLOUD_DEADLINE_MARGIN_SECS;

    let base_policies = file_policies(settings);
    let idle = idle_policy(settings, &base_policies.gpu_idle);

    let prices_problem = settings
        .prices
        .as_ref()
        .and_then(|s| (!s.value.is_file()).then(|| s.value.clone()));
    if let Some(path) = prices_problem {
        p.push(format!(
            "prices file {} not found: {}",
            path.display(),
            how_to_set("prices", "prices.toml")
        ));
    }

    let (
        Some(project),
        Some(store),
        Some(prefix),
        Some(user),
        Some(hardware),
        Some(agent),
        Some(estimate),
    ) = (project, store, prefix, user, hardware, agent, estimate)
    else {
        return Err(Problems(p));
    };
    if !p.is_empty() {
        return Err(Problems(p));
    }

    let run_id = RunId::new(inputs.now);
    let instance_name = format!("{prefix}-{run_id}");
    let bucket = match &store {
        StoreUrl::Gcs { bucket, .. } => bucket.clone(),
        StoreUrl::Local { .. } => String::new(),
    };
    let spec = RunSpec {
        schema: SPEC_SCHEMA,
        run_id: run_id.clone(),
        created_at: inputs.now,
        store: store.to_string(),
        job: JobSpec {
            command,
            setup: settings.setup.as_ref().map(|s| s.value.clone()),
            workdir: ".".into(),
            env,
            user: Some(user.to_string()),
            output_dirs,
            nodes: Default::default(),
        },
        policies: Policies {
            gpu_idle: idle,
            budget_usd: budget,
            max_run_secs: agent_max,
            ..base_policies
        },
        price: price_quote(&estimate),
        placement: Placement {
            provider: Provider::Gce,
            project: Some(project.clone()),
            zone: None,
            instance: Some(instance_name.clone()),
            machine_type: Some(hardware.machine_type.clone()),
            gpu: Some(hardware.gpu.accelerator().to_string()),
            gpu_count: hardware.count,
            spot,
            ..Placement::default()
        },
        webhook: None,
        origin: Some(origin(settings, inputs)),
        resume_from: None,
    };
    if let Err(e) = spec.validate() {
        return Err(Problems(vec![e.to_string()]));
    }
    Ok(LaunchPlan {
        run_id,
        project,
        account,
        layout: Layout::for_store(&store),
        bucket,
        store,
        instance_name,
        hardware,
        zones,
        spot,
        image_project: settings
            .image_project
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_else(|| DEFAULT_IMAGE_PROJECT.into()),
        image_family: settings
            .image_family
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_else(|| DEFAULT_IMAGE_FAMILY.into()),
        disk_gb,
        service_account: settings
            .service_account
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.into()),
        agent,
        spec,
        estimate,
        zone_quotes,
        max_time_secs,
        any_region: false,
        zones_default: settings.zones.is_none(),
        egress: inputs.prices.egress,
        egress_source: inputs.prices.egress_source.clone(),
        cloud_max_run_secs,
        storage_host: inputs.storage_host.clone(),
        project_dir: settings.project_dir.clone(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::settings::Source;

    fn s<T>(v: T) -> Option<Sourced<T>> {
        Some(Sourced {
            value: v,
            source: Source::Env("TEST"),
        })
    }

    /// A project folder with main.py and an agent binary, and complete settings.
    pub(crate) fn good(dir: &Path) -> Settings {
        std::fs::write(dir.join("main.py"), "print('hi')\n").unwrap();
        std::fs::write(dir.join("cloudrun-agent"), b"\x7fELF fake agent").unwrap();
        Settings {
            project_dir: dir.into(),
            project: s("my-project".into()),
            gcs_dir: s("gs://my-bucket/cr".into()),
            vm_instance: s("trainer".into()),
            vm_user: s("alice".into()),
            gpu: s("l4".into()),
            agent_binary: s(dir.join("cloudrun-agent")),
            ..Settings::default()
        }
    }

    pub(crate) fn inputs<'a>(cmd: &'a [String], prices: &'a PriceBook) -> PlanInputs<'a> {
        PlanInputs {
            command: cmd,
            now: "2026-11-26T07:15:00Z".parse().unwrap(),
            prices,
            default_agent: None,
            storage_host: None,
            launched_by: "alice@laptop".into(),
        }
    }

    #[test]
    fn good_settings_make_a_plan() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = good(dir.path());
        st.budget = s(2.0);
        st.env.insert(
            "EPOCHS".into(),
            Sourced {
                value: "50".into(),
                source: Source::Default,
            },
        );
        // Every GPU has a complete built-in price, so a budget is accepted on an L4.
        let prices = PriceBook::builtin();
        let cmd = vec!["main.py".to_string(), "--epochs".into(), "5".into()];
        let plan = build(&st, &inputs(&cmd, &prices)).unwrap();
        assert!(plan.instance_name.starts_with("trainer-20261126-071500-"));
        assert_eq!(
            plan.spec.job.command,
            ["python3", "main.py", "--epochs", "5"]
        );
        assert_eq!(plan.spec.job.env["EPOCHS"], "50");
        assert_eq!(
            plan.zones.first().map(String::as_str),
            Some("us-central1-a")
        );
        // g2-standard-8 (8 vCPU, 32 GiB at G2's us-central1 rates) + one L4.
        let per_h = 8.0 * 0.024988 + 32.0 * 0.0029274 + 0.56004;
        assert_eq!(
            plan.spec.policies.max_run_secs,
            (2.0 / per_h * 3600.0) as u64
        );
        assert!(plan.spec.price.estimate);
        assert_eq!(plan.spec.price.region.as_deref(), Some("us-central1"));
        // The VM in europe-west4 gets europe-west4's price and the time $2 buys there.
        let eu = plan.spec_for_zone("europe-west4-a");
        let eu_per_h = plan.quote_for_zone("europe-west4-a").usd_per_hour;
        assert!(eu_per_h > per_h, "{eu_per_h} vs {per_h}");
        assert!((eu.price.usd_per_hour - eu_per_h).abs() < 1e-12);
        assert_eq!(eu.price.region.as_deref(), Some("europe-west4"));
        assert_eq!(eu.policies.max_run_secs, (2.0 / eu_per_h * 3600.0) as u64);
        assert_eq!(
            plan.cloud_max_run_secs_for("europe-west4-a"),
            eu.policies.max_run_secs + CLOUD_DEADLINE_MARGIN_SECS
        );
        assert_eq!(
            plan.cloud_max_run_secs,
            plan.spec.policies.max_run_secs + CLOUD_DEADLINE_MARGIN_SECS
        );
        assert!(plan.agent_url().starts_with("gs://my-bucket/cr/agent/"));
    }

    #[test]
    fn every_missing_setting_is_named_with_how_to_set_it() {
        let dir = tempfile::tempdir().unwrap();
        let st = Settings {
            project_dir: dir.path().into(),
            ..Settings::default()
        };
        let prices = PriceBook::builtin();
        let err = build(&st, &inputs(&[], &prices)).unwrap_err();
        let text = err.to_string();
        for needle in [
            "GCLOUD_PROJECT is not set: export GCLOUD_PROJECT=my-project, pass --project my-project, or set project = \"my-project\" in cloudrun.toml",
            "GCS_DIR is not set: export GCS_DIR=",
            "VM_INSTANCE is not set: export VM_INSTANCE=",
            "VM_USER is not set: export VM_USER=",
            "no GPU chosen",
            "no script given",
            "no agent binary",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn every_malformed_setting_is_named() {
        let prices = PriceBook::builtin();
        let cmd = vec!["main.py".to_string()];
        type Mutate = fn(&mut Settings);
        let cases: Vec<(Mutate, &str)> = vec![
            (
                |st| st.project = s_("My Project"),
                "GCLOUD_PROJECT \"My Project\" (from env TEST)",
            ),
            (|st| st.account = s_("alice"), "e-mail address"),
            (|st| st.gcs_dir = s_("s3://bkt"), "must start with gs://"),
            (
                |st| st.gcs_dir = s_("file:///tmp/x"),
                "a VM cannot read a local directory",
            ),
            (
                |st| st.vm_instance = s_("Trainer"),
                "VM_INSTANCE \"Trainer\"",
            ),
            (|st| st.vm_instance = s_(&"x".repeat(50)), "at most 42"),
            (|st| st.vm_user = s_("root"), "other than root"),
            (|st| st.vm_user = s_("a b"), "Linux user name"),
            (|st| st.gpu = s_("l4:3"), "1, 2, 4, 8"),
            (
                |st| st.zones = s(vec!["uscentral1".into()]),
                "not a zone name like us-central1-a",
            ),
            (
                |st| st.zones = s(vec!["us-central1-z".into()]),
                "zone \"us-central1-z\" does not exist: region us-central1 has zones us-central1-a, us-central1-b, us-central1-c, us-central1-f",
            ),
            (
                |st| {
                    st.gpu = s_("h100");
                    st.zones = s(vec!["us-central1-f".into()]);
                },
                "zone us-central1-f has no h100 GPUs (in us-central1: us-central1-a, us-central1-b, us-central1-c)",
            ),
            (|st| st.max_time = s_("forever"), "not a duration"),
            (|st| st.max_time = s_("10s"), "under 30 s"),
            (|st| st.max_time = s_("200days"), "120 days"),
            (|st| st.disk_gb = s(10), "below 50 GB"),
            (|st| st.budget = s(-1.0), "not a positive amount"),
            (
                |st| {
                    st.env.insert(
                        "BAD KEY".into(),
                        Sourced {
                            value: "1".into(),
                            source: Source::Flag("--env".into()),
                        },
                    );
                },
                "environment entry \"BAD KEY\"",
            ),
            (
                |st| st.agent_binary = s(PathBuf::from("/nonexistent/agent")),
                "scripts/build-agent.sh",
            ),
            (
                |st| st.prices = s(PathBuf::from("/nonexistent/prices.toml")),
                "prices file",
            ),
        ];
        fn s_(v: &str) -> Option<Sourced<String>> {
            s(v.to_string())
        }
        for (mutate, needle) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut st = good(dir.path());
            mutate(&mut st);
            let err = build(&st, &inputs(&cmd, &prices)).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let st = good(dir.path());
        let err = build(&st, &inputs(&["missing.py".to_string()], &prices))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"missing.py\" not found"), "{err}");
    }

    #[test]
    fn config_shows_the_defaults_a_launch_would_use() {
        let dir = tempfile::tempdir().unwrap();
        let st = Settings {
            project_dir: dir.path().into(),
            gpu: s("h100".into()),
            ..Settings::default()
        };
        let agent = Path::new("/opt/cloudrun/cloudrun-agent");
        let text = st.describe_with(&|k| default_setting(&st, k, Some(agent)));
        for want in [
            "max_time         = \"24h\"",
            "disk_gb          = 100",
            "image_family     = \"common-cu128-ubuntu-2204-nvidia-570\"",
            "image_project    = \"deeplearning-platform-release\"",
            "idle_minutes     = 10",
            "zones            = [\"us-central1-a\"",
            "machine_type     = \"a3-highgpu-1g\"",
            "service_account  = \"default\"",
            "spot             = false",
            "output_dirs      = [\"checkpoint\", \"model\"]",
            "agent_binary     = \"/opt/cloudrun/cloudrun-agent\"",
        ] {
            let line = text
                .lines()
                .find(|l| l.starts_with(want))
                .unwrap_or_else(|| panic!("no {want:?} in\n{text}"));
            assert!(line.ends_with("# default"), "{line}");
        }
        // Required settings and optional ones without a default stay "(not set)".
        for key in ["project", "vm_user", "budget", "setup"] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(key) && l.ends_with("(not set)")),
                "{key} in\n{text}"
            );
        }
        // A value that is set keeps its own source.
        assert!(text.contains("gpu              = \"h100\""), "{text}");
    }

    #[test]
    fn a_local_run_refuses_a_gpu_that_does_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = good(dir.path());
        st.provider = s("local".into());
        st.gcs_dir = None;
        st.data_dir = Some(dir.path().join("data"));
        let prices = PriceBook::builtin();
        let cmd = vec!["main.py".to_string()];
        assert!(build_local(&st, &inputs(&cmd, &prices)).is_ok());
        st.gpu = s("x100".into());
        let err = build_local(&st, &inputs(&cmd, &prices))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown GPU \"x100\""), "{err}");
    }

    #[test]
    fn a_script_outside_the_project_folder_names_the_c_that_would_pack_it() {
        let dir = tempfile::tempdir().unwrap();
        let st = good(dir.path());
        let prices = PriceBook::builtin();
        let cmd = vec!["/elsewhere/sub/x.py".to_string()];
        let err = build(&st, &inputs(&cmd, &prices)).unwrap_err().to_string();
        assert!(
            err.contains("is outside the project folder") && err.contains("pass -C /elsewhere/sub"),
            "{err}"
        );
    }

    #[test]
    fn scripts_map_to_their_interpreter() {
        assert_eq!(
            job_command("run.sh", &["-x".into()]),
            ["bash", "run.sh", "-x"]
        );
        assert_eq!(job_command("train", &[]), ["./train"]);
    }
}
