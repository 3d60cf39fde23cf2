//! `gce-emulator`: the emulated Compute Engine + metadata servers as a process, for
//! scripts and benchmarks. Prints one JSON line (`compute_url`, `port`, `project`) on
//! stdout once it listens, then serves until it is killed (SIGTERM/SIGINT), taking every
//! emulated VM's processes down with it.
//!
//!     gce-emulator [--storage-host http://127.0.0.1:PORT] [--gpu busy|idle|failing]
//!                  [--key-file PATH] [--trace]

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cloudrun_testkit::gce::{GceConfig, GceEmulator, GpuMode};

fn main() {
    let mut cfg = GceConfig::default();
    let mut key_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--storage-host" => cfg.storage_host = args.next(),
            "--gpu" => {
                cfg.gpu = match args.next().as_deref() {
                    Some("idle") => GpuMode::Idle,
                    Some("failing") => GpuMode::Failing,
                    _ => GpuMode::Busy,
                }
            }
            "--key-file" => key_file = args.next(),
            "--vm-env" => {
                if let Some((k, v)) = args.next().as_deref().and_then(|kv| kv.split_once('=')) {
                    cfg.vm_env.push((k.to_string(), v.to_string()));
                }
            }
            "--trace" => std::env::set_var("CLOUDRUN_GCE_EMULATOR_TRACE", "1"),
            "-h" | "--help" => {
                println!("gce-emulator [--storage-host URL] [--gpu busy|idle|failing] [--key-file PATH] [--vm-env K=V] [--trace]");
                return;
            }
            other => {
                eprintln!("gce-emulator: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let emu = GceEmulator::start(cfg);
    if let Some(k) = key_file {
        emu.write_service_account_key(std::path::Path::new(&k));
    }
    println!(
        "{}",
        serde_json::json!({"compute_url": emu.compute_url(), "port": emu.port(), "project": emu.project()})
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
    for c in emu.calls() {
        eprintln!("call {} {} {}", c.method, c.path, c.status);
    }
    drop(emu);
}
