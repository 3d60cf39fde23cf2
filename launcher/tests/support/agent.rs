//! The `cloudrun-agent` executable for tests that run the real binaries.
//!
//! `cargo test` builds the launcher's executable for its integration tests but never the
//! agent's, so: `CLOUDRUN_AGENT_BINARY` when set (scripts/test.sh builds it first and sets
//! it), else `cargo build -p cloudrun-agent --bin cloudrun-agent` into the same target dir
//! (a no-op once built; it never touches the launcher binary under test). The variables
//! cargo sets for a test process are removed first: `ring`'s build script tracks
//! `CARGO_MANIFEST_DIR`, so a build that inherits them rebuilds the TLS stack, and the next
//! build from a shell rebuilds it back.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Path of an up-to-date agent executable.
pub fn agent_binary() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("CLOUDRUN_AGENT_BINARY") {
                return PathBuf::from(p);
            }
            let launcher = PathBuf::from(env!("CARGO_BIN_EXE_cloudrun-launch"));
            let dir = launcher.parent().expect("target dir").to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-q", "-p", "cloudrun-agent", "--bin", "cloudrun-agent"])
                .current_dir(cloudrun_testkit::workspace_root());
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
            assert!(
                st.success(),
                "cargo build -p cloudrun-agent failed; build it yourself or set CLOUDRUN_AGENT_BINARY"
            );
            let agent = dir.join("cloudrun-agent");
            assert!(agent.exists(), "{} is missing after the build", agent.display());
            agent
        })
        .clone()
}
