//! `scripts/install.sh` into a temporary `PREFIX`, then the installed launcher used the way
//! a new user would: `--version` names the static agent it found beside itself, a
//! `--dry-run` launch with no agent setting at all picks it (and a dynamically linked
//! agent is refused), and an emulated whole-flow launch with no agent setting uploads and
//! runs it.
//!
//! The install reuses the workspace's target dir (`CARGO_TARGET_DIR`), and the `dev`
//! profile for both builds (`CLOUDRUN_INSTALL_PROFILE`, `CLOUDRUN_AGENT_PROFILE`): the
//! launcher is then the one `cargo test` already built, and the one new build is the
//! musl agent, which keeps the test affordable on a 2-core CI machine. The release and
//! `agent` profiles are what a user gets; they differ only in optimisation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cloudrun_testkit::TempDir;
use e2e::{field, reason, text, World, WorldOpts, PREFIX};
use serde_json::Value;
use sha2::Digest;

const TARGET: &str = "x86_64-unknown-linux-musl";

fn sha256_file(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// The installed launcher with `w`'s environment minus any agent setting (and, for
/// `cloud`, minus the Compute emulator: the production endpoint, which `--dry-run` never
/// calls, so the static-agent rule applies).
fn installed(bin: &Path, w: &World, args: &[&str], emulated: bool) -> Output {
    let template = w.cmd(args);
    let mut c = Command::new(bin);
    c.args(args).current_dir(w.project.path()).env_clear();
    for (k, v) in template.get_envs() {
        let k = k.to_string_lossy();
        if k == "CLOUDRUN_AGENT_BINARY" {
            continue;
        }
        if !emulated && k == "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE" {
            continue;
        }
        if let Some(v) = v {
            c.env(&*k, v);
        }
    }
    c.output().unwrap()
}

#[test]
fn install_sh_puts_the_static_agent_beside_the_launcher_and_a_launch_finds_it_with_no_setting() {
    let root = cloudrun_testkit::workspace_root();
    let prefix = TempDir::new("install-prefix");
    let launcher = PathBuf::from(env!("CARGO_BIN_EXE_cloudrun-launch"));
    let target_dir = launcher.parent().unwrap().parent().unwrap().to_path_buf();
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/install.sh"))
        .current_dir(&root)
        .env("PREFIX", prefix.path())
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CLOUDRUN_INSTALL_PROFILE", "dev")
        .env("CLOUDRUN_AGENT_PROFILE", "dev")
        .env_remove("CLOUDRUN_AGENT_BINARY");
    // As in support/agent.rs: a build that inherits cargo's test variables rebuilds the
    // TLS stack (ring tracks CARGO_MANIFEST_DIR).
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR")
            || k == "OUT_DIR"
        {
            cmd.env_remove(&*k);
        }
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "install.sh failed:\n{}", text(&out));

    let bin = prefix.path().join("bin/cloudrun-launch");
    let agent = prefix
        .path()
        .join(format!("lib/cloudrun/cloudrun-agent-{TARGET}"));
    assert!(bin.is_file() && agent.is_file(), "{}", text(&out));
    let sha = sha256_file(&agent);

    // --version names the agent it would upload: version, target, sha256, static.
    let w = World::new(WorldOpts::default());
    let v = installed(&bin, &w, &["--version"], true);
    let v_out = String::from_utf8_lossy(&v.stdout).to_string();
    assert!(v.status.success(), "{}", text(&v));
    assert!(
        v_out.contains(&format!(
            "agent cloudrun-agent {} for {TARGET}, sha256 {sha}",
            env!("CARGO_PKG_VERSION")
        )) && v_out.contains(", static (")
            && v_out.contains(&agent.display().to_string()),
        "{v_out}"
    );

    // A dry run with no agent setting uses the installed static agent.
    let dry = installed(&bin, &w, &["--dry-run", "train.py"], false);
    assert!(dry.status.success(), "{}", text(&dry));
    let body: Value = serde_json::from_slice(&dry.stdout).unwrap();
    let meta = body["metadata"]["items"].as_array().unwrap();
    let agent_sha = meta
        .iter()
        .find(|i| i["key"] == "cloudrun-agent-sha256")
        .map(|i| i["value"].as_str().unwrap().to_string());
    assert_eq!(agent_sha.as_deref(), Some(sha.as_str()), "{body}");

    // A local run with no agent setting starts the installed static agent (nothing else
    // was installed beside the launcher).
    let local = installed(&bin, &w, &["--local", "--dry-run", "train.py"], true);
    assert!(local.status.success(), "{}", text(&local));
    assert!(
        String::from_utf8_lossy(&local.stderr)
            .contains(&format!("with the agent {}", agent.display())),
        "{}",
        text(&local)
    );

    // A dynamically linked agent is refused for a cloud run, with the fix.
    let mut c = w.cmd(&["--dry-run", "train.py"]);
    c.env_remove("CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE")
        .env("CLOUDRUN_AGENT_BINARY", e2e::agent_binary());
    let refused = c.output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        err.contains("dynamically linked") && err.contains("scripts/install.sh"),
        "{err}"
    );

    // An emulated whole-flow launch with no agent setting at all.
    let run = installed(&bin, &w, &["train.py", "ok", "2", "1"], true);
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(run.status.success(), "{}", text(&run));
    let id = field(&stdout, "run").unwrap();
    let vm = field(&stdout, "vm")
        .and_then(|v| v.split_whitespace().next().map(str::to_string))
        .unwrap();
    let st = w.wait_ended(&id, &vm);
    assert_eq!(reason(&st), "succeeded", "{st}");
    assert!(
        w.get(&format!("{PREFIX}/agent/{sha}/cloudrun-agent"))
            .is_some(),
        "the installed agent was not the one uploaded"
    );
    w.wait_gone(&vm);
}
