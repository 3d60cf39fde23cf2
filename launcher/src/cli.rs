//! The command line as clap parses it: raw values only. `settings` and `plan` give them
//! meaning; nothing here validates beyond syntax.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::settings::Layer;

/// The examples under `--help`; the first one is what a new user tries first, and a test
/// runs it (as a dry run) to keep it working.
pub const EXAMPLES: &str = "\
Examples:
  cloudrun-launch --gpu l4 main.py --epochs 50     launch `python3 main.py --epochs 50` on one L4 GPU
  cloudrun-launch --local --follow main.py         rehearse on this machine: same pipeline, no cloud account
  cloudrun-launch --gpu a100:2 --spot --budget 20 train.py
  cloudrun-launch --dry-run --gpu l4 main.py       print the instances.insert body, create nothing
  cloudrun-launch run status                       launch a script named like a subcommand
  cloudrun-launch status                           all runs: phase, zone, GPU, elapsed, $ so far
  cloudrun-launch status 20261126-071500-ab12      one run in detail (--json for scripts)
  cloudrun-launch logs -f latest                   follow the newest run's output until it ends
  cloudrun-launch pull 20261126-071500-ab12 --into results/
  cloudrun-launch stop 20261126-071500-ab12        graceful: the agent syncs, then deletes the VM (--now: delete at once)
  cloudrun-launch ls                               runs and live cloudrun VMs side by side
  cloudrun-launch sweep --yes                      delete cloudrun VMs whose run ended or went silent
  cloudrun-launch report 20261126-071500-ab12      SVG plot of GPU utilisation and cumulative cost
  cloudrun-launch config                           resolved settings and where each came from
  cloudrun-launch prices --gpu l4                  what an L4 costs per hour in each region, on demand and Spot
  cloudrun-launch doctor                           check credentials, APIs, bucket, IAM, GPU quota, image and zones
  cloudrun-launch --version                        this version and the static agent a cloud run uploads
  cloudrun-launch completions bash > ~/.local/share/bash-completion/completions/cloudrun-launch

RUN is a run id, or `latest`: the newest run launched from this project folder (the current
directory, or -C DIR), never another project's, so `stop --now latest` cannot end someone
else's run. `status` without RUN lists every run in the store.

Settings come from flags, then GCP_ACCOUNT, GCLOUD_PROJECT, GCS_DIR, VM_INSTANCE, VM_USER,
then cloudrun.toml in the project folder, then ~/.config/cloudrun/config.toml.
--local (or provider = \"local\") needs none of the variables: the store is GCS_DIR when it is
a file:// URL, else ~/.local/share/cloudrun/store; subcommands take --local too.";

/// Launch a training script on a rented Compute Engine GPU that deletes itself when the
/// work is done, and follow it from anywhere.
#[derive(Debug, Parser)]
#[command(
    name = "cloudrun-launch",
    about,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    disable_version_flag = true
)]
pub struct Cli {
    /// Print the version and the static agent a cloud run would upload (version,
    /// target, sha256)
    #[arg(short = 'V', long)]
    pub version: bool,
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub launch: LaunchArgs,
}

/// Settings every subcommand reads.
#[derive(Debug, Args, Default, Clone)]
pub struct GlobalArgs {
    /// Google account whose gcloud credentials to use [env: GCP_ACCOUNT]
    #[arg(long, global = true, value_name = "EMAIL")]
    pub account: Option<String>,
    /// GCP project id [env: GCLOUD_PROJECT]
    #[arg(long, global = true, value_name = "ID")]
    pub project: Option<String>,
    /// Where code, logs and outputs live, gs://bucket/prefix [env: GCS_DIR]
    #[arg(long, global = true, value_name = "URL")]
    pub gcs_dir: Option<String>,
    /// VM name prefix [env: VM_INSTANCE]
    #[arg(long, global = true, value_name = "NAME")]
    pub vm_instance: Option<String>,
    /// Unprivileged user on the VM that runs the job [env: VM_USER]
    #[arg(long, global = true, value_name = "USER")]
    pub vm_user: Option<String>,
    /// Project folder (default: the current directory)
    #[arg(short = 'C', long = "dir", global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Run on this machine: a detached agent, a store in a local directory, no cloud
    /// account needed (same as provider = "local") [env: CLOUDRUN_PROVIDER=local]
    #[arg(long, global = true)]
    pub local: bool,
    /// More log output on stderr (-v, -vv)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// What to launch and how.
#[derive(Debug, Args, Default, Clone)]
pub struct LaunchArgs {
    // The help lists the kinds of the GPU table.
    #[arg(long, value_name = "KIND[:N]", help = crate::gpu::gpu_help())]
    pub gpu: Option<String>,
    /// Machine type (overrides the one --gpu picks), e.g. g2-standard-16
    #[arg(long, value_name = "TYPE")]
    pub machine_type: Option<String>,
    /// Zones to try in order (repeatable or comma-separated)
    #[arg(long = "zone", value_name = "ZONE", value_delimiter = ',')]
    pub zones: Vec<String>,
    /// Use a Spot VM (much cheaper, may be preempted)
    #[arg(long, conflicts_with = "on_demand")]
    pub spot: bool,
    /// Use an on-demand VM even if a settings file says spot = true
    #[arg(long)]
    pub on_demand: bool,
    /// Longest the run may take (e.g. 90m, 12h; default 24h)
    #[arg(long, value_name = "DURATION")]
    pub max_time: Option<String>,
    /// Stop the run when it has cost this many US dollars
    #[arg(long, value_name = "USD")]
    pub budget: Option<f64>,
    /// Deep Learning VM image family
    #[arg(long, value_name = "FAMILY")]
    pub image_family: Option<String>,
    /// Project that owns the image family
    #[arg(long, value_name = "PROJECT")]
    pub image_project: Option<String>,
    /// Boot disk size in GB
    #[arg(long, value_name = "GB")]
    pub disk_gb: Option<u32>,
    /// Service account e-mail for the VM ("default": the project's compute SA)
    #[arg(long, value_name = "EMAIL")]
    pub service_account: Option<String>,
    /// Command run with sh -c before the job, e.g. "pip install -r requirements.txt"
    #[arg(long, value_name = "CMD")]
    pub setup: Option<String>,
    /// Output directory mirrored to GCS (repeatable; default checkpoint and model)
    #[arg(long = "output-dir", value_name = "DIR")]
    pub output_dirs: Vec<String>,
    /// Stop when every GPU was idle this many minutes (0: never)
    #[arg(long, value_name = "MIN")]
    pub idle_minutes: Option<u64>,
    /// The static cloudrun-agent to upload [env: CLOUDRUN_AGENT_BINARY]
    #[arg(long, value_name = "PATH")]
    pub agent_binary: Option<PathBuf>,
    /// A prices.toml that overrides Google's catalog and the built-in price table
    #[arg(long, value_name = "PATH")]
    pub prices: Option<PathBuf>,
    /// Allow default zones on another continent than the bucket (egress is quoted)
    #[arg(long)]
    pub any_region: bool,
    /// Environment for the job (repeatable), e.g. --env BATCHSIZE=256
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Validate and print the instances.insert body on stdout; create nothing
    #[arg(long)]
    pub dry_run: bool,
    /// After launching, stream the logs until the run ends and print the receipt
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// The script and its arguments: `main.py --epochs 50`
    #[arg(
        value_name = "SCRIPT [ARGS]",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Launch a script (for scripts named like a subcommand: `cloudrun-launch run status`)
    #[command(after_help = "Example:\n  cloudrun-launch run --gpu l4 status --epochs 3")]
    Run(Box<LaunchArgs>),
    /// Runs in a table, or one run in detail
    #[command(
        after_help = "Examples:\n  cloudrun-launch status\n  cloudrun-launch status latest --json"
    )]
    Status {
        /// A run id, or `latest` (the newest run of this project folder); all runs when absent
        run: Option<String>,
        /// JSON on stdout, for scripts
        #[arg(long)]
        json: bool,
    },
    /// A run's output, from GCS (works after the VM is gone)
    #[command(after_help = "Example:\n  cloudrun-launch logs -f 20261126-071500-ab12")]
    Logs {
        /// A run id, or `latest` (the newest run of this project folder)
        run: String,
        /// Keep printing new output until the run ends
        #[arg(short, long)]
        follow: bool,
    },
    /// Download a run's outputs (only changed files)
    #[command(after_help = "Example:\n  cloudrun-launch pull latest --into results/")]
    Pull {
        /// A run id, or `latest` (the newest run of this project folder)
        run: String,
        /// Where to put them (default: the project folder)
        #[arg(long, value_name = "DIR")]
        into: Option<PathBuf>,
    },
    /// Stop a run: gracefully (final sync, then the agent deletes the VM) or --now
    #[command(
        after_help = "Examples:\n  cloudrun-launch stop latest\n  cloudrun-launch stop 20261126-071500-ab12 --now"
    )]
    Stop {
        /// A run id, or `latest` (the newest run of this project folder); the run about to
        /// end is named before anything is done
        run: String,
        /// Delete the VM right away (outputs not yet synced are lost)
        #[arg(long)]
        now: bool,
    },
    /// Runs and live cloudrun VMs side by side
    #[command(after_help = "Example:\n  cloudrun-launch ls")]
    Ls,
    /// cloudrun VMs whose run ended or went silent; deleted with --yes
    #[command(after_help = "Examples:\n  cloudrun-launch sweep\n  cloudrun-launch sweep --yes")]
    Sweep {
        /// Delete the VMs (for --local: kill the agents and close lost runs); without it,
        /// only list what would go
        #[arg(long)]
        yes: bool,
    },
    /// SVG or PNG plot of a run: GPU utilisation, cost billed and the run's phases
    #[command(
        after_help = "Examples:\n  cloudrun-launch report latest --out run.svg\n  cloudrun-launch report latest --format png"
    )]
    Report {
        /// A run id, or `latest` (the newest run of this project folder)
        run: String,
        /// Output file; a .png name writes a PNG (default: cloudrun-report-RUN.svg, or
        /// .png with --format png, in the current directory)
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// svg or png (default: from the --out file's extension, else svg)
        #[arg(long, value_enum)]
        format: Option<crate::report::Format>,
    },
    /// Check every prerequisite of a cloud run (credentials, APIs, bucket, service
    /// account, GPU quota, image, zones), each with the command that fixes it
    #[command(
        after_help = "Examples:\n  cloudrun-launch doctor\n  cloudrun-launch doctor --json\n\nExit code: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 when settings are missing."
    )]
    Doctor {
        /// JSON on stdout, for scripts
        #[arg(long)]
        json: bool,
    },
    /// Prices per hour by GPU shape and region, from Google's catalog (cached a week)
    #[command(
        after_help = "Examples:\n  cloudrun-launch prices --gpu l4\n  cloudrun-launch prices --refresh --gpu h100:8 --region us-east4"
    )]
    Prices {
        /// Read Google's catalog now, even if the cached copy is fresh
        #[arg(long)]
        refresh: bool,
        /// Only this GPU (t4, l4, a100:2, …; without a count: every count)
        #[arg(long, value_name = "KIND[:N]")]
        gpu: Option<String>,
        /// Only this region (us-central1) or zone (us-central1-a)
        #[arg(long, value_name = "REGION")]
        region: Option<String>,
    },
    /// Print the resolved settings and where each came from
    #[command(after_help = "Example:\n  cloudrun-launch config")]
    Config,
    /// Shell completions on stdout
    #[command(
        after_help = "Example:\n  cloudrun-launch completions zsh > ~/.zfunc/_cloudrun-launch"
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

impl Cli {
    /// Parse like clap, except that global flags may also come before a subcommand:
    /// `cloudrun-launch --local status` is `status --local`, not a launch of a script
    /// named `status`. A launch flag before the word (`--gpu l4 status`) still launches
    /// the script, and `run status` always does.
    pub fn try_parse_normalized_from<I, T>(argv: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
        let cli = Cli::try_parse_from(&argv)?;
        let Some(word) = cli.launch.command.first() else {
            return Ok(cli);
        };
        let only_globals = format!(
            "{:?}",
            LaunchArgs {
                command: cli.launch.command.clone(),
                ..LaunchArgs::default()
            }
        ) == format!("{:?}", cli.launch);
        let is_sub = <Cli as clap::CommandFactory>::command()
            .get_subcommands()
            .any(|c| c.get_name() == word && c.get_name() != "run");
        if cli.command.is_some() || !only_globals || !is_sub {
            return Ok(cli);
        }
        let Some(pos) = argv.iter().skip(1).position(|a| a == word.as_str()) else {
            return Ok(cli);
        };
        let mut moved = argv.clone();
        let w = moved.remove(pos + 1);
        moved.insert(1, w);
        Cli::try_parse_from(moved)
    }

    /// [`Cli::try_parse_normalized_from`] on the process's arguments, exiting on errors
    /// and `--help` as clap does.
    pub fn parse_normalized() -> Cli {
        Cli::try_parse_normalized_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// The settings layer the flags make.
    pub fn flag_layer(&self) -> Layer {
        let g = &self.global;
        let l = match &self.command {
            Some(Command::Run(l)) => l,
            _ => &self.launch,
        };
        let env = l
            .env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                // Kept whole so that `plan` can name the malformed flag.
                None => (kv.clone(), String::from('\0')),
            })
            .collect::<std::collections::BTreeMap<_, _>>();
        Layer {
            provider: g.local.then(|| "local".to_string()),
            account: g.account.clone(),
            project: g.project.clone(),
            gcs_dir: g.gcs_dir.clone(),
            vm_instance: g.vm_instance.clone(),
            vm_user: g.vm_user.clone(),
            gpu: l.gpu.clone(),
            machine_type: l.machine_type.clone(),
            zones: (!l.zones.is_empty()).then(|| l.zones.clone()),
            spot: if l.spot {
                Some(true)
            } else if l.on_demand {
                Some(false)
            } else {
                None
            },
            max_time: l.max_time.clone(),
            budget: l.budget,
            image_family: l.image_family.clone(),
            image_project: l.image_project.clone(),
            disk_gb: l.disk_gb,
            service_account: l.service_account.clone(),
            setup: l.setup.clone(),
            output_dirs: (!l.output_dirs.is_empty()).then(|| l.output_dirs.clone()),
            idle_minutes: l.idle_minutes,
            agent_binary: l.agent_binary.clone(),
            prices: l.prices.clone(),
            env: (!env.is_empty()).then_some(env),
            policies: None,
        }
    }

    /// The launch arguments in effect (top level or `run`).
    pub fn launch_args(&self) -> &LaunchArgs {
        match &self.command {
            Some(Command::Run(l)) => l,
            _ => &self.launch,
        }
    }
}

/// The flag that sets a settings key, for "where did this come from".
pub fn flag_name(key: &str) -> String {
    match key {
        "zones" => "--zone".into(),
        "output_dirs" => "--output-dir".into(),
        "spot" => "--spot/--on-demand".into(),
        "provider" => "--local".into(),
        other => format!("--{}", other.replace('_', "-")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_argument_of_every_subcommand_is_described() {
        let root = Cli::command();
        let mut missing = Vec::new();
        let mut check = |cmd: &clap::Command, path: &str| {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
        };
        check(&root, "cloudrun-launch");
        for sub in root.get_subcommands() {
            check(sub, sub.get_name());
        }
        assert!(missing.is_empty(), "undescribed arguments: {missing:?}");
    }

    #[test]
    fn every_run_argument_says_what_latest_means() {
        for sub in Cli::command().get_subcommands() {
            if let Some(a) = sub.get_arguments().find(|a| a.get_id() == "run") {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    help.contains("newest run of this project folder"),
                    "{}: {help:?}",
                    sub.get_name()
                );
            }
        }
    }

    #[test]
    fn script_arguments_go_to_the_script() {
        let c = Cli::try_parse_from([
            "cloudrun-launch",
            "--gpu",
            "l4",
            "main.py",
            "--epochs",
            "50",
            "--gpu",
            "x",
        ])
        .unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.launch.gpu.as_deref(), Some("l4"));
        assert_eq!(
            c.launch.command,
            ["main.py", "--epochs", "50", "--gpu", "x"]
        );
    }

    #[test]
    fn subcommands_and_a_script_named_like_one() {
        let c = Cli::try_parse_from(["cloudrun-launch", "status", "--json"]).unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Status { json: true, .. })
        ));
        let c = Cli::try_parse_from(["cloudrun-launch", "run", "--spot", "status", "-x"]).unwrap();
        match &c.command {
            Some(Command::Run(l)) => {
                assert!(l.spot);
                assert_eq!(l.command, ["status", "-x"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.flag_layer().spot, Some(true));
        let c = Cli::try_parse_from([
            "cloudrun-launch",
            "logs",
            "-f",
            "latest",
            "--gcs-dir",
            "gs://b",
        ])
        .unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Logs { follow: true, .. })
        ));
        assert_eq!(c.flag_layer().gcs_dir.as_deref(), Some("gs://b"));
    }

    #[test]
    fn global_flags_may_come_before_a_subcommand() {
        let c = Cli::try_parse_normalized_from(["cloudrun-launch", "--local", "status", "latest"])
            .unwrap();
        assert!(matches!(c.command, Some(Command::Status { .. })));
        assert!(c.global.local);
        let c = Cli::try_parse_normalized_from(["cloudrun-launch", "--local", "logs", "-f", "x"])
            .unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Logs { follow: true, .. })
        ));
        // A launch flag first: the word is the script.
        let c =
            Cli::try_parse_normalized_from(["cloudrun-launch", "--gpu", "l4", "status"]).unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.launch.command, ["status"]);
    }

    #[test]
    fn env_flags_become_the_env_layer() {
        let c = Cli::try_parse_from([
            "cloudrun-launch",
            "--env",
            "BATCHSIZE=256",
            "--env",
            "A=b=c",
            "main.py",
        ])
        .unwrap();
        let env = c.flag_layer().env.unwrap();
        assert_eq!(env["BATCHSIZE"], "256");
        assert_eq!(env["A"], "b=c");
    }
}
