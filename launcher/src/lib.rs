//! `cloudrun-launch`: the laptop side. It validates settings into a launch plan, pushes
//! the code, creates the GPU VM, and reads runs back from GCS and Compute from anywhere.
//!
//! Modules, in the order a launch uses them: [`cli`] (raw arguments), [`settings`]
//! (values and their sources), [`plan`] (validation, no network), [`gpu`] (shorthands and
//! machine families; [`zones`] the zones that exist and which offer each GPU), [`body`] (the `instances.insert` JSON), [`credentials`],
//! [`launch`] with [`push`] (the sync engine) and [`failover`], then [`runs`] and
//! [`report`] for the subcommands, and [`doctor`] (with [`preflight`], which a launch runs
//! too) for the prerequisites. [`agent_bin`] finds and checks the static agent. [`local`] is the `--local` "VM": the same pipeline into
//! a directory store, with a detached agent on this machine in place of the GPU VM.
//! [`run`] dispatches; `main.rs` only parses, sets up logging and maps the result to an
//! exit code.

pub mod agent_bin;
pub mod body;
pub mod cli;
pub mod credentials;
pub mod doctor;
pub mod failover;
pub mod gpu;
pub mod launch;
pub mod local;
pub mod logview;
pub mod near_data;
pub mod plan;
pub mod preflight;
pub mod price_table;
pub mod provider;
pub mod push;
pub mod report;
pub mod runs;
pub mod settings;
pub mod zones;

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use clap::CommandFactory;
use cloudrun::compute::Compute;
use cloudrun::compute_rest::{endpoint_from, RestCompute};
use cloudrun::prices::PriceSources;
use cloudrun::storage::gcs;
use cloudrun::{Layout, StoreUrl};

use crate::cli::{Cli, Command};
use crate::provider::Provider;
use crate::settings::{Inputs, Settings};

/// Exit code for settings that need fixing (nothing was created).
pub const EXIT_SETTINGS: i32 = 2;
/// Exit code for any other failure.
pub const EXIT_FAILURE: i32 = 1;
/// Concurrent downloads for `pull`.
pub const PULL_CONCURRENCY: usize = 8;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Settings(#[from] plan::Problems),
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error(transparent)]
    Launch(Box<launch::LaunchError>),
    #[error(transparent)]
    Runs(Box<runs::RunsError>),
    #[error(transparent)]
    Compute(Box<cloudrun::compute::ComputeError>),
    #[error(transparent)]
    Storage(#[from] cloudrun::StorageError),
    #[error(transparent)]
    Prices(#[from] cloudrun::prices::PricesError),
    #[error(transparent)]
    Body(#[from] body::MetadataTooBig),
    #[error("pull: {0}")]
    Pull(String),
    #[error(transparent)]
    Local(#[from] local::LocalError),
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error(transparent)]
    Docs(Box<cloudrun::run_store::RunStoreError>),
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether this is stdout closed by the reader (`status | head`, `logs -f | grep -q`):
    /// `main` then ends quietly, as `head` users expect.
    pub fn is_broken_pipe(&self) -> bool {
        is_broken_pipe(self)
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Settings(_) | Error::Prices(_) => EXIT_SETTINGS,
            _ => EXIT_FAILURE,
        }
    }
}

macro_rules! boxed_from {
    ($($variant:ident: $ty:ty),*) => {$(
        impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Error::$variant(Box::new(e))
            }
        }
    )*};
}
boxed_from!(Launch: launch::LaunchError, Runs: runs::RunsError, Compute: cloudrun::compute::ComputeError, Docs: cloudrun::run_store::RunStoreError);

/// Whether `e` or one of its sources is an I/O error of kind `BrokenPipe`.
pub fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// An error and its sources on one line, `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// The process environment as a lookup function (tests pass their own).
pub type Env = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Where the outside world is, for one invocation.
pub struct Context<'a> {
    pub env: &'a Env,
    /// The launcher's current directory (the project folder unless `-C` says otherwise).
    pub cwd: PathBuf,
    /// The default agent binary for local runs (`cloudrun-agent` beside the launcher
    /// executable). Its folder is also where cloud runs look for the static agents
    /// ([`agent_bin::candidates`]).
    pub default_agent: Option<PathBuf>,
    /// Token source to use instead of resolving credentials (tests).
    pub tokens: Option<Arc<dyn gcp_auth::TokenProvider>>,
    /// Whether stderr is a terminal (progress bars).
    pub progress: bool,
    /// Whether stdout is a terminal: `logs` filters the job's control sequences.
    pub terminal: bool,
}

impl Context<'_> {
    pub(crate) async fn tokens(
        &self,
        settings: &Settings,
    ) -> Result<Arc<dyn gcp_auth::TokenProvider>, Error> {
        if let Some(t) = &self.tokens {
            return Ok(t.clone());
        }
        let account = settings.account.as_ref().map(|s| s.value.as_str());
        Ok(credentials::resolve(account, &|k| (self.env)(k)).await?)
    }

    pub(crate) fn compute(
        &self,
        tokens: Arc<dyn gcp_auth::TokenProvider>,
    ) -> Result<Arc<dyn Compute>, Error> {
        Ok(Arc::new(RestCompute::new(
            &endpoint_from(|k| (self.env)(k)),
            tokens,
        )?))
    }

    pub(crate) async fn storage(
        &self,
        settings: &Settings,
        url: &StoreUrl,
    ) -> Result<Arc<dyn cloudrun::Storage>, Error> {
        // The emulator host comes from this invocation's environment, like everything
        // else here, not from the process's own.
        let endpoint = gcs::Endpoint::from_lookup(|k| (self.env)(k));
        let tokens = match url {
            StoreUrl::Gcs { .. } if !endpoint.anonymous => Some(self.tokens(settings).await?),
            _ => None,
        };
        Ok(cloudrun::storage::open_at(url, endpoint, tokens)?)
    }

    /// Compute and the project for read-only checks, or `None` (with a log line) when
    /// either is unavailable: `status` and `ls` still work from the store alone.
    async fn optional_compute(&self, settings: &Settings) -> Option<(Arc<dyn Compute>, String)> {
        let project = plan::project(settings).ok()?;
        match self.tokens(settings).await.and_then(|t| self.compute(t)) {
            Ok(c) => Some((c, project)),
            Err(e) => {
                tracing::warn!("not checking VMs: {}", error_chain(&e));
                None
            }
        }
    }
}

/// Lexically resolve `.` and `..` (the script may not exist yet, so no canonicalize).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The project folder and the script's path inside it.
///
/// `-C DIR` names the folder. Otherwise it is the nearest folder from the script's own
/// folder up to the current directory that holds a `cloudrun.toml`, else the current
/// directory (so `cloudrun-launch src/train.py` from a project root keeps working). A
/// script outside the current directory never makes its own folder the project (that
/// silently packed whatever sat beside it): the path stays as given, and `plan` refuses
/// it with the `-C` that would pack it. `plan` also refuses `/` and the home directory.
pub(crate) fn locate_project(cli: &Cli, ctx: &Context<'_>) -> (PathBuf, Vec<String>) {
    let command = cli.launch_args().command.clone();
    let launching = matches!(cli.command, None | Some(Command::Run(_)));
    if let Some(d) = &cli.global.dir {
        let dir = normalize(&if d.is_absolute() {
            d.clone()
        } else {
            ctx.cwd.join(d)
        });
        // A script is relative to -C DIR; an absolute one inside DIR is made relative.
        let mut command = command;
        if let Some(first) = command.first_mut().filter(|_| launching) {
            let p = normalize(Path::new(first.as_str()));
            if let Some(rel) = p.strip_prefix(&dir).ok().filter(|_| p.is_absolute()) {
                *first = rel.to_string_lossy().into_owned();
            }
        }
        return (dir, command);
    }
    let cwd = normalize(&ctx.cwd);
    let Some((script, args)) = command.split_first().filter(|_| launching) else {
        return (ctx.cwd.clone(), command);
    };
    let path = normalize(&cwd.join(script));
    if !path.starts_with(&cwd) {
        return (cwd, command);
    }
    let home = (ctx.env)("HOME").map(PathBuf::from);
    let mut project = None;
    for dir in path.ancestors().skip(1) {
        if dir.join(settings::PROJECT_FILE).is_file() {
            project = Some(dir.to_path_buf());
            break;
        }
        if dir == cwd || home.as_deref() == Some(dir) {
            break;
        }
    }
    let project = project.unwrap_or_else(|| cwd.clone());
    let script = match path.strip_prefix(&project) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => script.clone(),
    };
    let mut command = vec![script];
    command.extend(args.iter().cloned());
    (project, command)
}

/// The agent target a cloud run with these settings needs.
pub(crate) fn agent_target(settings: &Settings) -> &'static str {
    gpu::resolve(
        settings.gpu.as_ref().map(|s| s.value.as_str()),
        settings.machine_type.as_ref().map(|s| s.value.as_str()),
    )
    .map(|h| agent_bin::target_for_machine(&h.machine_type))
    .unwrap_or(agent_bin::TARGET_X86_64)
}

/// Where the static agent for `target` is looked for when no setting names one.
pub(crate) fn static_agent_candidates(
    settings: &Settings,
    ctx: &Context<'_>,
    target: &str,
) -> Vec<PathBuf> {
    let launcher_dir = ctx.default_agent.as_deref().and_then(Path::parent);
    agent_bin::candidates(launcher_dir, settings.data_dir.as_deref(), target)
}

/// The agent a local run starts when no setting names one: `cloudrun-agent` beside the
/// launcher, else the installed static agent for this machine (`scripts/install.sh`
/// installs only the static ones, and they run here as well as on a VM).
pub(crate) fn local_agent(settings: &Settings, ctx: &Context<'_>) -> Option<PathBuf> {
    if let Some(p) = ctx.default_agent.as_ref().filter(|p| p.is_file()) {
        return Some(p.clone());
    }
    let host = match std::env::consts::ARCH {
        "x86_64" if cfg!(target_os = "linux") => agent_bin::TARGET_X86_64,
        "aarch64" if cfg!(target_os = "linux") => agent_bin::TARGET_AARCH64,
        _ => return ctx.default_agent.clone(),
    };
    agent_bin::find(&static_agent_candidates(settings, ctx, host))
        .or_else(|| ctx.default_agent.clone())
}

/// `cloudrun-launch --version`: this version and the agent a cloud run would upload.
fn version_text(settings: &Settings, ctx: &Context<'_>) -> String {
    let target = agent_target(settings);
    let agent = match &settings.agent_binary {
        Some(s) => format!(
            "{} [from {}]",
            agent_bin::describe(&s.value, target),
            s.source
        ),
        None => {
            let c = static_agent_candidates(settings, ctx, target);
            match agent_bin::find(&c) {
                Some(p) => agent_bin::describe(&p, target),
                None => format!(
                    "none found for {target} (looked in {}): install it with scripts/install.sh",
                    c.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    format!(
        "cloudrun-launch {}
agent {agent}
",
        env!("CARGO_PKG_VERSION")
    )
}

/// `cloudrun-launch doctor`.
async fn doctor_cmd(
    settings: &Settings,
    ctx: &Context<'_>,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<i32, Error> {
    let mut report = doctor::Report::default();
    let (line, inputs) = doctor::settings_check(settings);
    report.checks.push(line);
    let account = settings.account.as_ref().map(|s| s.value.as_str());
    let who = credentials::identity_with_gcloud(account, &|k| (ctx.env)(k)).await;
    let code = match inputs {
        None => EXIT_SETTINGS,
        Some(inputs) => match ctx.tokens(settings).await {
            Err(e) => {
                report.checks.push(doctor::Check {
                    name: "credentials".into(),
                    status: doctor::Status::Fail,
                    detail: error_chain(&e).lines().next().unwrap_or_default().into(),
                    fix: match &e {
                        Error::Credentials(c) => Some(c.fix.clone()),
                        _ => None,
                    },
                });
                EXIT_FAILURE
            }
            Ok(tokens) => {
                report.checks.push(doctor::Check {
                    name: "credentials".into(),
                    status: doctor::Status::Ok,
                    detail: format!(
                        "{} ({})",
                        who.email.as_deref().unwrap_or("account e-mail unknown"),
                        who.how
                    ),
                    fix: None,
                });
                let compute = ctx.compute(tokens.clone())?;
                let clients = doctor::clients(&|k| (ctx.env)(k), tokens, compute, &inputs.bucket)?;
                doctor::run_checks(&clients, &inputs, &who, &mut report).await;
                if report.passed() {
                    0
                } else {
                    EXIT_FAILURE
                }
            }
        },
    };
    if json {
        writeln!(out, "{}", report.json())?;
    } else {
        write!(out, "{}", report.text())?;
    }
    Ok(code)
}

fn settings_for(cli: &Cli, ctx: &Context<'_>) -> Settings {
    let (project_dir, _) = locate_project(cli, ctx);
    let env = |k: &str| (ctx.env)(k);
    Settings::resolve(&Inputs {
        flags: cli.flag_layer(),
        flag_names: &cli::flag_name,
        env: &env,
        project_dir,
        user_file: settings::default_user_file(&env),
    })
}

/// The user's cache folder for cloudrun (`$XDG_CACHE_HOME/cloudrun`, else
/// `~/.cache/cloudrun`), from this invocation's environment.
fn cache_dir(env: &Env) -> Option<PathBuf> {
    env("XDG_CACHE_HOME")
        .filter(|d| !d.trim().is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("cloudrun"))
}

/// The Billing Catalog client for this invocation: the endpoint override when set; else
/// none when Compute is emulated (an emulated run must not ask Google); else Google's.
pub(crate) fn catalog_client(
    env: &Env,
    tokens: Option<Arc<dyn gcp_auth::TokenProvider>>,
) -> Option<cloudrun::prices::fetch::CatalogClient> {
    use cloudrun::prices::fetch::{self, CatalogClient};
    let base = match fetch::endpoint_from(|k| env(k)) {
        Some(b) => b,
        None if env(cloudrun::contract::ENV_COMPUTE_ENDPOINT)
            .is_some_and(|v| !v.trim().is_empty()) =>
        {
            tracing::info!(
                "Compute is emulated and {} is not set: not reading Google's prices",
                fetch::ENV_BILLING_ENDPOINT
            );
            return None;
        }
        None => fetch::DEFAULT_BILLING_ENDPOINT.to_string(),
    };
    match CatalogClient::new(&base, tokens) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("not reading Google's prices: {e}");
            None
        }
    }
}

/// The price book: `--prices FILE` over Google's catalog (cached for a week; fetched when
/// `catalog` is given and the cache is stale or `refresh`) over the built-in estimates.
/// Every problem on the way but a bad prices file is printed as a warning.
pub(crate) async fn load_prices(
    settings: &Settings,
    ctx: &Context<'_>,
    catalog: Option<&cloudrun::prices::fetch::CatalogClient>,
    refresh: bool,
    now: chrono::DateTime<Utc>,
) -> Result<cloudrun::prices::Loaded, Error> {
    let loaded = load_prices_quietly(settings, ctx, catalog, refresh, now).await?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
}

/// [`load_prices`] without printing its warnings.
pub(crate) async fn load_prices_quietly(
    settings: &Settings,
    ctx: &Context<'_>,
    catalog: Option<&cloudrun::prices::fetch::CatalogClient>,
    refresh: bool,
    now: chrono::DateTime<Utc>,
) -> Result<cloudrun::prices::Loaded, Error> {
    let loaded = cloudrun::prices::load(&PriceSources {
        override_file: settings
            .prices
            .as_ref()
            .map(|p| p.value.as_path())
            .filter(|p| p.is_file()),
        cache_file: cache_dir(ctx.env).map(|d| cloudrun::prices::cache::path_in(&d)),
        catalog,
        refresh,
        now,
    })
    .await?;
    Ok(loaded)
}

pub(crate) fn who(env: &Env) -> String {
    let user = env("USER").unwrap_or_else(|| "someone".into());
    let host = env("HOSTNAME")
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "somewhere".into());
    format!("{user}@{host}")
}

/// Run one invocation. Results go to `out` (stdout), progress and logs to stderr.
/// Returns the exit code for success paths (`--follow` and `logs -f` return the run's).
pub async fn run(cli: Cli, ctx: &Context<'_>, out: &mut (dyn Write + Send)) -> Result<i32, Error> {
    let settings = settings_for(&cli, ctx);
    let now = Utc::now();
    if cli.version {
        write!(out, "{}", version_text(&settings, ctx))?;
        return Ok(0);
    }
    match &cli.command {
        Some(Command::Prices {
            refresh,
            gpu,
            region,
        }) => {
            let tokens = match ctx.tokens(&settings).await {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!(
                        "warning: no credentials for Google's prices ({}); showing the cached or built-in figures",
                        error_chain(&e)
                    );
                    None
                }
            };
            let catalog = tokens.and_then(|t| catalog_client(ctx.env, Some(t)));
            let loaded = load_prices(&settings, ctx, catalog.as_ref(), *refresh, now).await?;
            let table = price_table::render(
                &loaded.book,
                gpu.as_deref(),
                region.as_deref(),
                loaded.catalog_fetched_at,
            )
            .map_err(|e| Error::Settings(plan::Problems(vec![e.0])))?;
            write!(out, "{table}")?;
            Ok(0)
        }
        Some(Command::Doctor { json }) => doctor_cmd(&settings, ctx, *json, out).await,
        Some(Command::Config) => {
            let agent = ctx.default_agent.as_deref();
            let defaults = |k: &str| plan::default_setting(&settings, k, agent);
            write!(out, "{}", settings.describe_with(&defaults))?;
            Ok(0)
        }
        Some(Command::Completions { shell }) => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "cloudrun-launch", out);
            Ok(0)
        }
        None | Some(Command::Run(_)) => {
            if cli.command.is_none() && cli.launch.command.is_empty() {
                let mut cmd = Cli::command();
                let help = cmd.render_help();
                eprintln!("{help}");
                return Ok(EXIT_SETTINGS);
            }
            let p = open_provider(&settings, ctx, NeedCompute::No).await?;
            let req = provider::LaunchRequest {
                cli: &cli,
                settings: &settings,
                ctx,
                now,
            };
            p.launch(&req, out).await
        }
        Some(Command::Status { run, json }) => {
            let store = open_store(&settings, ctx).await?;
            let p = open_provider(&settings, ctx, NeedCompute::IfAvailable).await?;
            match run {
                None => runs::status_table(&store, p.as_ref(), *json, now, out).await?,
                Some(r) => {
                    let id = store.resolve(r, &settings.project_dir).await?;
                    runs::status_one(&store, p.as_ref(), &id, *json, now, out).await?
                }
            }
            Ok(0)
        }
        Some(Command::Logs { run, follow }) => {
            let store = open_store(&settings, ctx).await?;
            let view = logview::LogView {
                terminal: ctx.terminal,
            };
            let id = store.resolve(run, &settings.project_dir).await?;
            let poll = Duration::from_secs(runs::LOG_POLL_SECS);
            let p = open_provider(&settings, ctx, NeedCompute::No).await?;
            let end = match (p.liveness(&id), *follow) {
                (Some(alive), true) => {
                    runs::follow_logs(&store, &id, poll, Some(alive.as_ref()), view, out).await?
                }
                _ => runs::logs(&store, &id, *follow, poll, view, out).await?,
            };
            Ok(end
                .and_then(|s| s.end)
                .map(|e| e.reason.exit_code())
                .unwrap_or(0))
        }
        Some(Command::Pull { run, into }) => {
            let store = open_store(&settings, ctx).await?;
            let id = store.resolve(run, &settings.project_dir).await?;
            // A mistyped id must not look like a run with no outputs.
            store.load(&id).await?;
            let dest = into.clone().unwrap_or_else(|| settings.project_dir.clone());
            pull_outputs(&store, &id, &dest, out).await?;
            Ok(0)
        }
        Some(Command::Stop { run, now: at_once }) => {
            let store = open_store(&settings, ctx).await?;
            let id = store.resolve(run, &settings.project_dir).await?;
            let need = if *at_once {
                NeedCompute::ForRun
            } else {
                NeedCompute::No
            };
            let p = open_provider(&settings, ctx, need).await?;
            runs::stop(&store, p.as_ref(), &id, *at_once, &who(ctx.env), now, out).await?;
            Ok(0)
        }
        Some(Command::Ls) => {
            let store = open_store(&settings, ctx).await?;
            let p = open_provider(&settings, ctx, NeedCompute::IfAvailable).await?;
            runs::ls(&store, p.as_ref(), now, out).await?;
            Ok(0)
        }
        Some(Command::Sweep { yes }) => {
            let store = open_store(&settings, ctx).await?;
            let p = open_provider(&settings, ctx, NeedCompute::ForProject).await?;
            runs::sweep(&store, p.as_ref(), *yes, now, out).await?;
            Ok(0)
        }
        Some(Command::Report {
            run,
            out: file,
            format,
        }) => {
            let format = report::Format::choose(*format, file.as_deref())?;
            let store = open_store(&settings, ctx).await?;
            let id = store.resolve(run, &settings.project_dir).await?;
            let view = store.load(&id).await?;
            let samples = store.metrics(&id).await?;
            let status = view.status.as_ref();
            let price = status
                .map(|s| s.usd_per_hour)
                .or(view.spec.as_ref().map(|s| s.price.usd_per_hour))
                .unwrap_or(0.0);
            let gpu = view.gpu();
            let bytes = report::render(
                &report::Report {
                    run_id: id.to_string(),
                    gpu: (gpu != "-").then_some(gpu),
                    status,
                    samples: &samples,
                    usd_per_hour: price,
                },
                format,
            )?;
            let path = file.clone().unwrap_or_else(|| {
                ctx.cwd
                    .join(format!("cloudrun-report-{id}.{}", format.extension()))
            });
            std::fs::write(&path, bytes)?;
            writeln!(out, "{}", path.display())?;
            Ok(0)
        }
    }
}

async fn open_store(settings: &Settings, ctx: &Context<'_>) -> Result<runs::Store, Error> {
    let url = plan::store(settings)?;
    Ok(runs::Store {
        storage: ctx.storage(settings, &url).await?,
        layout: Layout::for_store(&url),
    })
}

/// Download a run's outputs into `dest` (only changed files) and list them on `out`.
pub(crate) async fn pull_outputs(
    store: &runs::Store,
    id: &cloudrun::RunId,
    dest: &Path,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let prefix = store.layout.outputs_prefix(id);
    let r = cloudrun::sync::pull_prefix(store.storage.clone(), &prefix, dest, PULL_CONCURRENCY)
        .await
        .map_err(|e| Error::Pull(error_chain(&e)))?;
    for f in &r.downloaded {
        writeln!(out, "{}", dest.join(f).display())?;
    }
    writeln!(
        out,
        "pulled {} file(s), {} bytes; {} unchanged",
        r.downloaded.len(),
        r.bytes,
        r.unchanged
    )?;
    Ok(())
}

/// `--follow`: stream the logs until the run ends, print the receipt, and return the
/// run's exit code (and the final status).
pub(crate) async fn follow_run(
    store: &runs::Store,
    id: &cloudrun::RunId,
    alive: Option<runs::AliveCheck<'_>>,
    local: bool,
    view: logview::LogView,
    out: &mut (dyn Write + Send),
) -> Result<(i32, Option<cloudrun::status::RunStatus>), Error> {
    let end = runs::follow_logs(
        store,
        id,
        Duration::from_secs(runs::LOG_POLL_SECS),
        alive,
        view,
        out,
    )
    .await?;
    let code = match end.as_ref().and_then(|s| s.end.as_ref()) {
        Some(e) => e.reason.exit_code(),
        None => 0,
    };
    if let Some(r) = end.as_ref().and_then(|s| s.receipt.as_ref()) {
        writeln!(out, "receipt: {}", runs::receipt_line(local, r))?;
        for line in r.split.iter().flat_map(|sp| sp.lines()) {
            writeln!(out, "  {line}")?;
        }
    }
    Ok((code, end))
}

/// Where this invocation's runs live, chosen once from the settings. `compute` says how
/// much the command needs the Compute API.
async fn open_provider(
    settings: &Settings,
    ctx: &Context<'_>,
    compute: NeedCompute,
) -> Result<Box<dyn Provider>, Error> {
    if plan::provider(settings) == Ok(cloudrun::spec::Provider::Local) {
        return Ok(Box::new(provider::local::Local {
            data_dir: settings.data_dir.clone(),
        }));
    }
    let project = plan::project(settings).ok();
    let compute = match compute {
        NeedCompute::No => None,
        NeedCompute::IfAvailable => ctx.optional_compute(settings).await.map(|(c, _)| c),
        NeedCompute::ForRun => Some(ctx.compute(ctx.tokens(settings).await?)?),
        NeedCompute::ForProject => {
            plan::project(settings)?;
            Some(ctx.compute(ctx.tokens(settings).await?)?)
        }
    };
    Ok(Box::new(provider::gce::Gce { compute, project }))
}

/// How much a command needs the Compute API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NeedCompute {
    /// Not at all (a launch makes its own client once the plan is valid).
    No,
    /// For read-only checks, which are skipped (with a note) without it.
    IfAvailable,
    /// It cannot work without it, for a run whose status names its VM's project.
    ForRun,
    /// It cannot work without it, for the whole project (`GCLOUD_PROJECT`).
    ForProject,
}
