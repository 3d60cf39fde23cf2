//! The measuring side of `scripts/bench-agent.sh`: runs the real `cloudrun-agent` binary
//! (normally the static one) on a local `file://` store, as a local run, and measures it
//! from outside through `/proc`. One JSON object on stdout.
//!
//! ```text
//! bench_agent AGENT_BINARY supervise [JOB_SECS]    # a job printing 5 lines/s and writing a
//!                                                  # 1 MiB checkpoint every 2 s
//! bench_agent AGENT_BINARY idle [BUSY_SECS] [WINDOW_SECS]
//!                                                  # PyTorch matmuls on the GPU, then idle:
//!                                                  # the idle policy must stop it
//! ```
//!
//! Measured: process start-up (`--version`, mean of 20), spawn → job running, peak RSS,
//! CPU of the agent process itself (not the job) while the job runs, job exit → agent
//! exit (final sync, status and receipt included), and for `idle` the seconds from the
//! last busy moment to the stop (SIGTERM reaching the job). The GPU is whatever
//! `nvidia-smi` finds, or `CLOUDRUN_NVIDIA_SMI` when set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudrun::spec::{JobSpec, Placement, Policies, PriceQuote, Provider, RunSpec, SPEC_SCHEMA};
use cloudrun::storage::local::LocalStorage;
use cloudrun::sync::{push_tree, scan_tree, PushOptions, ScanOptions};
use cloudrun::{Layout, RunId, RunStatus};

const SUPERVISE_JOB: &str = r#"
import os, sys, time
mark = os.environ["BENCH_MARK"]
open(mark, "a").write(f"start {time.time()}\n")
secs = float(sys.argv[1])
os.makedirs("checkpoint", exist_ok=True)
end = time.time() + secs
i = 0
while time.time() < end:
    print(f"step {i} loss {1.0 / (i + 1):.5f}", flush=True)
    if i % 10 == 0:
        tmp = f"checkpoint/.ckpt-{i}.tmp"
        with open(tmp, "wb") as f:
            f.write(os.urandom(1 << 20))
        os.replace(tmp, f"checkpoint/ckpt-{i:05d}.bin")
    i += 1
    time.sleep(0.2)
open(mark, "a").write(f"exit {time.time()}\n")
"#;

const IDLE_JOB: &str = r#"
import os, signal, sys, time
mark = os.environ["BENCH_MARK"]
def on_term(*_):
    open(mark, "a").write(f"sigterm {time.time()}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open(mark, "a").write(f"start {time.time()}\n")
import torch
busy = float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + busy
n = 0
while time.time() < end:
    for _ in range(20):
        c = a @ b
    torch.cuda.synchronize()
    n += 20
print(f"busy phase done: {n} matmuls; now idle", flush=True)
open(mark, "a").write(f"busy_end {time.time()}\n")
while True:
    time.sleep(1)
"#;

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn mark_time(mark: &Path, what: &str) -> Option<f64> {
    std::fs::read_to_string(mark).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == what).then(|| v.parse().ok()).flatten()
    })
}

/// (rss KiB, utime+stime ticks) of a live process.
fn proc_sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let agent = PathBuf::from(
        args.get(1)
            .expect("usage: bench_agent AGENT_BINARY supervise|idle ..."),
    );
    let scenario = args.get(2).map(String::as_str).unwrap_or("supervise");
    let n1: f64 = args
        .get(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(if scenario == "idle" { 20.0 } else { 60.0 });
    let window: u64 = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(15);
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;

    // Start-up: a bare process start and exit.
    let t = Instant::now();
    for _ in 0..20 {
        let ok = Command::new(&agent)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let version_ms = t.elapsed().as_secs_f64() * 1000.0 / 20.0;

    let tmp = tempfile::tempdir().unwrap();
    let (code, store, work, state) = (
        tmp.path().join("code"),
        tmp.path().join("store"),
        tmp.path().join("work"),
        tmp.path().join("state"),
    );
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(
        code.join("main.py"),
        if scenario == "idle" {
            IDLE_JOB
        } else {
            SUPERVISE_JOB
        },
    )
    .unwrap();
    let mark = tmp.path().join("mark.txt");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage = Arc::new(LocalStorage::new(&store));
    let layout = Layout::new("");
    let run = RunId::new(chrono::Utc::now());
    let tree = scan_tree(&code, &ScanOptions::default()).unwrap();
    rt.block_on(push_tree(
        storage.clone(),
        &layout,
        &tree,
        &layout.manifest(&run),
        &PushOptions {
            concurrency: 4,
            progress: false,
        },
    ))
    .unwrap();
    let mut policies = Policies::default();
    policies.gpu_idle.window_secs = if scenario == "idle" { window } else { 600 };
    let spec = RunSpec {
        schema: SPEC_SCHEMA,
        run_id: run.clone(),
        created_at: chrono::Utc::now(),
        store: format!("file://{}", store.display()),
        job: JobSpec {
            command: vec!["python3".into(), "main.py".into(), format!("{n1}")],
            setup: None,
            workdir: ".".into(),
            env: [("BENCH_MARK".to_string(), mark.display().to_string())].into(),
            user: None,
            output_dirs: vec!["checkpoint".into()],
            nodes: Default::default(),
        },
        policies,
        price: PriceQuote {
            usd_per_hour: 3.6,
            source: "benchmark".into(),
            ..PriceQuote::default()
        },
        placement: Placement {
            provider: Provider::Local,
            ..Placement::default()
        },
        webhook: None,
        origin: None,
        resume_from: None,
    };
    let spec_path = tmp.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_json()).unwrap();

    let spawned_at = now_secs();
    let mut child = Command::new(&agent)
        .arg("--spec")
        .arg(&spec_path)
        .arg("--work-dir")
        .arg(&work)
        .arg("--state-dir")
        .arg(&state)
        .arg("--no-console")
        .stdout(Stdio::from(
            std::fs::File::create(tmp.path().join("agent.out")).unwrap(),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(tmp.path().join("agent.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak_rss_kib = 0u64;
    let mut cpu_at_job_start: Option<(f64, u64)> = None;
    let mut cpu_at_job_end: Option<(f64, u64)> = None;
    let mut last: Option<(f64, u64)> = None;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if let Some((rss, ticks)) = proc_sample(pid) {
            peak_rss_kib = peak_rss_kib.max(rss);
            last = Some((now_secs(), ticks));
            if cpu_at_job_start.is_none() && mark_time(&mark, "start").is_some() {
                cpu_at_job_start = Some((now_secs(), ticks));
            }
            let ended = mark_time(&mark, "exit").or_else(|| mark_time(&mark, "sigterm"));
            if cpu_at_job_end.is_none() && ended.is_some() {
                cpu_at_job_end = Some((now_secs(), ticks));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited_at = now_secs();
    // The agent may exit within one sampling period of the job: then its last sample
    // closes the window.
    if cpu_at_job_end.is_none() {
        cpu_at_job_end = last;
    }

    let st = rt
        .block_on(cloudrun::Storage::get_bytes(
            storage.as_ref(),
            &layout.status(&run),
        ))
        .unwrap();
    let st = RunStatus::from_json(std::str::from_utf8(&st).unwrap()).unwrap();
    let job_start = mark_time(&mark, "start");
    let job_end = mark_time(&mark, "exit").or_else(|| mark_time(&mark, "sigterm"));
    let cpu_pct = match (cpu_at_job_start, cpu_at_job_end) {
        (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
            Some((c1 - c0) as f64 / ticks_per_sec / (t1 - t0) * 100.0)
        }
        _ => None,
    };
    let outputs = rt
        .block_on(cloudrun::Storage::list(
            storage.as_ref(),
            &layout.outputs_prefix(&run),
        ))
        .unwrap()
        .len();
    let logs = rt
        .block_on(cloudrun::Storage::list(
            storage.as_ref(),
            &layout.logs_prefix(&run),
        ))
        .unwrap()
        .len();
    let report = serde_json::json!({
        "scenario": scenario,
        "agent_binary_bytes": std::fs::metadata(&agent).unwrap().len(),
        "version_start_exit_ms": (version_ms * 10.0).round() / 10.0,
        "spawn_to_job_start_ms": job_start.map(|s| ((s - spawned_at) * 1000.0).round()),
        "peak_rss_mib": (peak_rss_kib as f64 / 1024.0 * 10.0).round() / 10.0,
        "agent_cpu_pct_of_one_core_while_job_runs": cpu_pct.map(|c| (c * 100.0).round() / 100.0),
        "job_end_to_agent_exit_s": job_end.map(|e| ((exited_at - e) * 100.0).round() / 100.0),
        "busy_end_to_stop_s": match (mark_time(&mark, "busy_end"), mark_time(&mark, "sigterm")) {
            (Some(b), Some(s)) => Some(((s - b) * 100.0).round() / 100.0),
            _ => None,
        },
        "idle_window_s": if scenario == "idle" { Some(window) } else { None },
        "agent_exit_code": status.code(),
        "end_reason": st.end.as_ref().map(|e| e.reason),
        "gpu_note": st.gpu_note,
        "last_gpu": st.last_gpu,
        "receipt": st.receipt,
        "vm": st.vm,
        "output_objects": outputs,
        "log_chunks": logs,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if std::env::var_os("BENCH_KEEP").is_some() {
        let keep = tmp.keep();
        eprintln!("kept {}", keep.display());
    }
}
