//! `cloudrun-agent gpu-probe --expect ACCELERATOR:COUNT`: the agent's GPU-wait judgement on
//! this machine's `nvidia-smi`, here a stand-in replaying the recorded real H200 reply.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn stand_in(dir: &Path, fixture: &str, exit: i32) -> PathBuf {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nvidia-smi")
        .join(fixture);
    let p = dir.join("nvidia-smi");
    std::fs::write(
        &p,
        format!("#!/bin/sh\ncat '{}'\nexit {exit}\n", f.display()),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn probe(smi: &Path, expect: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudrun-agent"))
        .args(["gpu-probe", "--expect", expect])
        .env("CLOUDRUN_NVIDIA_SMI", smi)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn gpu_probe_expect_says_whether_the_wait_would_pass() {
    let d = tempfile::tempdir().unwrap();
    let h200 = stand_in(d.path(), "h200-idle-real.txt", 0);
    let (code, out) = probe(&h200, "nvidia-h200-141gb:1");
    assert_eq!(code, 0, "{out}");
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["wait"]["ready"], true, "{out}");
    assert_eq!(line["wait"]["answer"], "1 × NVIDIA H200", "{out}");

    let (code, out) = probe(&h200, "nvidia-h200-141gb:2");
    assert_eq!(code, 9, "gpu_unavailable's exit code: {out}");
    assert!(out.contains("1 of 2 GPUs"), "{out}");
    let (code, out) = probe(&h200, "nvidia-l4:1");
    assert_eq!(code, 9, "{out}");

    let failed = stand_in(d.path(), "driver-failed.txt", 9);
    let (code, out) = probe(&failed, "nvidia-h200-141gb:1");
    assert_eq!(code, 9, "{out}");
    assert!(out.contains("NVIDIA-SMI has failed"), "{out}");

    let (code, out) = probe(&h200, "nvidia-h200-141gb:none");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("write e.g. nvidia-l4:2"), "{out}");
}
