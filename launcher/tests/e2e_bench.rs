//! The whole-flow benchmark (`scripts/bench-e2e.sh` runs it; ignored by plain
//! `cargo test`): on the emulated VM with the real binaries it measures
//! - seconds from the job's exit to the delete call reaching the emulator,
//! - seconds from the last busy GPU sample to the agent's stop decision (idle window 8 s),
//! - the agent's peak RSS and CPU share during the happy path.
//!
//! Figures are printed as `BENCH name value unit` lines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloudrun_testkit::gce::GpuMode;
use e2e::{World, WorldOpts};

/// How often the agent's /proc entries are sampled, in milliseconds.
const SAMPLE_MILLIS: u64 = 200;

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn clock_ticks() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// (RSS kB, utime+stime ticks) of a pid.
fn proc_sample(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

/// The RFC 3339 timestamp that starts the first agent.log line containing `needle`.
fn agent_log_time(w: &World, vm: &str, needle: &str) -> Option<f64> {
    let log =
        std::fs::read_to_string(w.emu.vm_root(vm)?.join("var/lib/cloudrun/agent.log")).ok()?;
    let line = log.lines().find(|l| l.contains(needle))?;
    let ts = line.split_whitespace().next()?;
    chrono::DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.timestamp_micros() as f64 / 1e6)
}

#[test]
#[ignore = "benchmark: scripts/bench-e2e.sh"]
fn bench_exit_to_delete_idle_to_stop_and_agent_footprint() {
    // 1. Happy path: exit → delete, and the agent's footprint.
    let w = World::new(WorldOpts::default());
    let (run, vm) = w.launch(&["ok", "20", "1"]);
    let pidfile = loop {
        if let Some(r) = w.emu.vm_root(&vm) {
            let p = r.join("var/lib/cloudrun/agent.pid");
            if p.exists() {
                break p;
            }
        }
        std::thread::sleep(Duration::from_millis(SAMPLE_MILLIS));
    };
    let pid = std::fs::read_to_string(pidfile).unwrap().trim().to_string();
    let (mut peak_rss, mut first, mut last) = (0u64, None, None);
    let t0 = std::time::Instant::now();
    let mut wall = 0.0;
    while let Some((rss, ticks)) = proc_sample(&pid) {
        peak_rss = peak_rss.max(rss);
        first.get_or_insert(ticks);
        last = Some(ticks);
        wall = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(SAMPLE_MILLIS));
    }
    w.wait_ended(&run, &vm);
    w.wait_gone(&vm);
    let final_txt = w.vm_work(&vm).join("model/final.txt");
    let exit_at = secs(std::fs::metadata(&final_txt).unwrap().modified().unwrap());
    let delete_at = secs(w.deletes(&vm)[0].at);
    let cpu = (last.unwrap_or(0) - first.unwrap_or(0)) as f64 / clock_ticks();
    println!("BENCH job_exit_to_delete_call {:.2} s", delete_at - exit_at);
    println!("BENCH agent_peak_rss {:.1} MiB", peak_rss as f64 / 1024.0);
    println!(
        "BENCH agent_cpu {:.2} s over {:.1} s ({:.1} % of one core)",
        cpu,
        wall,
        100.0 * cpu / wall.max(0.001)
    );

    // 2. Idle: last busy sample → stop decision.
    let w = World::new(WorldOpts::default());
    let (run, vm) = w.launch(&["forever", "0", "1"]);
    w.wait_for("a busy GPU sample", &vm, || {
        w.status(&run)
            .is_some_and(|s| s["phase"] == "running" && s["last_gpu"].is_object())
    });
    std::thread::sleep(Duration::from_secs(3));
    w.emu.set_gpu(GpuMode::Idle);
    w.wait_ended(&run, &vm);
    w.wait_gone(&vm);
    let root = w.emu.vm_root(&vm).unwrap();
    let smi = std::fs::read_to_string(root.join("nvidia-smi.log")).unwrap();
    let last_busy: f64 = smi
        .lines()
        .filter(|l| l.ends_with(" busy"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .fold(0.0, f64::max);
    let stop = agent_log_time(&w, &vm, "stopping: GPU idle").expect("the agent logged its stop");
    println!(
        "BENCH last_busy_sample_to_stop {:.2} s (idle window 8 s)",
        stop - last_busy
    );
}
