//! `cloudrun-agent` entry point: parse, set up logging, run, map the outcome to an exit code.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};
use cloudrun_agent::gpu::{classify, GpuState, NvidiaSmi};
use cloudrun_agent::gpu_wait::{Expected, Verdict};

/// The agent's version where `cloudrun-launch --version` reads it from the file's bytes
/// (the launcher never runs the agent: it may be built for another architecture). The
/// launcher's `agent_bin::VERSION_MARKER` spells the same prefix.
#[used]
static VERSION_MARKER: &str = concat!("CLOUDRUN_AGENT_VERSION=", env!("CARGO_PKG_VERSION"), ";");

/// The cloudrun agent: supervises one training run on a VM and deletes the VM when the
/// run ends, stalls, idles, spends its budget or hits its time limit.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run the spec in FILE on this machine (a local run: nothing is deleted at the end).
    /// Without it the spec comes from the `cloudrun-spec` metadata attribute.
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    /// Where the code is pulled and the job runs.
    #[arg(long, value_name = "DIR", default_value = cloudrun_agent::DEFAULT_WORK_DIR)]
    work_dir: PathBuf,
    /// Restart state, output-mirror state and the local copy of the job's log.
    #[arg(long, value_name = "DIR", default_value = cloudrun_agent::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Serial console to copy the agent's and the job's lines to (best effort).
    #[arg(long, value_name = "PATH", default_value = "/dev/console")]
    console: PathBuf,
    /// Do not write to a console.
    #[arg(long)]
    no_console: bool,
    /// Program that creates VM_USER when it is missing.
    #[arg(long, value_name = "PATH", default_value = cloudrun_agent::user::DEFAULT_USERADD)]
    useradd: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sample the GPUs the way the monitor does and print each sample as one JSON line
    /// (the program is `nvidia-smi`, or CLOUDRUN_NVIDIA_SMI).
    GpuProbe {
        /// Print nvidia-smi's raw reply instead (for recording fixtures).
        #[arg(long)]
        raw: bool,
        /// Number of samples.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Seconds between samples.
        #[arg(long, default_value_t = 5)]
        interval_secs: u64,
        /// Also judge each sample the way the agent's wait before the job does, e.g.
        /// `nvidia-l4:2`; exits 9 (gpu_unavailable's code) when the last one is not ready.
        #[arg(long, value_name = "ACCELERATOR:COUNT")]
        expect: Option<String>,
    },
}

/// stderr, plus the console when it can be opened (non-blocking, errors ignored).
#[derive(Clone)]
struct Tee(Option<Arc<Mutex<std::fs::File>>>);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(c) = &self.0 {
            if let Ok(mut f) = c.lock() {
                let _ = f.write_all(buf);
            }
        }
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn open_console(path: &PathBuf) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits() | nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(path)
        .ok()
}

fn init_logging(console: Option<std::fs::File>) {
    let tee = Tee(console.map(|f| Arc::new(Mutex::new(f))));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || tee.clone())
        .with_ansi(false)
        .init();
}

/// Sample the GPUs; `Ok(false)` when `--expect` was given and the last sample did not
/// satisfy it.
async fn gpu_probe(
    raw: bool,
    count: u32,
    interval_secs: u64,
    expect: Option<&str>,
) -> anyhow::Result<bool> {
    let expect = expect.map(Expected::parse).transpose()?;
    let probe = NvidiaSmi::from_env();
    let mut ready = true;
    for i in 0..count.max(1) {
        if i > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(interval_secs)).await;
        }
        let now = chrono::Utc::now();
        let (state, raw_text) = match probe.run_raw().await {
            Ok((out, err, ok)) => (classify(ok, &out, &err), Some(format!("{out}{err}"))),
            Err(s) => (s, None),
        };
        if raw {
            print!("{}", raw_text.unwrap_or_default());
            continue;
        }
        let kind = match &state {
            GpuState::Readings(_) => "readings",
            GpuState::NoGpu(_) => "no_gpu",
            GpuState::Unknown(_) => "unknown",
        };
        let mut line = serde_json::json!({
            "program": probe.program().display().to_string(),
            "state": kind,
            "sample": state.to_sample(now),
        });
        if let Some(e) = &expect {
            let (ok, answer) = match e.judge(&state) {
                Verdict::Ready(s) => (true, s),
                Verdict::Missing(s) => (false, s),
            };
            ready = ok;
            line["wait"] =
                serde_json::json!({"expect": e.describe(), "ready": ok, "answer": answer});
        }
        println!("{}", serde_json::to_string(&line)?);
    }
    Ok(ready)
}

/// Async worker threads. The agent's work is I/O (the job's pipes, a few HTTP calls), so a
/// fixed small pool serves; tokio's default of one per core made the agent's memory grow
/// with the VM's size (17.5 MiB peak on 16 cores against 13.4 MiB on 2).
const AGENT_WORKER_THREADS: usize = 2;
/// Threads for blocking work (hashing checkpoints, local file I/O): bounds memory while
/// a large output directory is mirrored, still enough to keep a disk busy.
const AGENT_MAX_BLOCKING_THREADS: usize = 8;

fn main() {
    // The job shim runs before anything else exists: no logging, no runtime, no console.
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some(cloudrun_agent::shim::SHIM_SUBCOMMAND) {
        let code = match cloudrun_agent::shim::ShimArgs::parse(&raw[2..]) {
            Ok(a) => cloudrun_agent::shim::run(&a),
            Err(e) => {
                eprintln!("cloudrun-agent {e}");
                2
            }
        };
        std::process::exit(code);
    }
    let args = Args::parse();
    let console = if args.no_console || args.command.is_some() {
        None
    } else {
        open_console(&args.console)
    };
    let console_path = console.as_ref().map(|_| args.console.clone());
    init_logging(console);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(AGENT_WORKER_THREADS)
        .max_blocking_threads(AGENT_MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cloudrun-agent: cannot start the async runtime: {e}");
            std::process::exit(8);
        }
    };
    let code = rt.block_on(async {
        if let Some(Command::GpuProbe {
            raw,
            count,
            interval_secs,
            expect,
        }) = args.command
        {
            return match gpu_probe(raw, count, interval_secs, expect.as_deref()).await {
                Ok(true) => 0,
                Ok(false) => cloudrun::status::EndReason::GpuUnavailable.exit_code(),
                Err(e) => {
                    eprintln!("cloudrun-agent gpu-probe: {e:#}");
                    1
                }
            };
        }
        let cfg = cloudrun_agent::Config {
            spec_file: args.spec,
            work_dir: args.work_dir,
            state_dir: args.state_dir,
            useradd: args.useradd,
            console: console_path,
        };
        match cloudrun_agent::run(cfg).await {
            Ok(outcome) => {
                tracing::info!(
                    "run ended: {} ({}); vm: {:?}",
                    outcome.end.reason.describe(),
                    outcome.end.message,
                    outcome.vm
                );
                outcome.exit_code()
            }
            Err(e) => {
                let code = e.exit_code();
                tracing::error!("{:#}", anyhow::Error::new(e));
                code
            }
        }
    });
    std::process::exit(code);
}
