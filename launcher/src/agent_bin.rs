//! The static agent a cloud run uploads: where it is found without any setting, whether
//! it can run on the VM (an ELF for the VM's architecture with no dynamic loader), and
//! what it is (version, target, SHA-256) for `cloudrun-launch --version`.
//!
//! `scripts/install.sh` puts the launcher at `PREFIX/bin/cloudrun-launch` and each static
//! agent at `PREFIX/lib/cloudrun/cloudrun-agent-<target>`; [`candidates`] looks there
//! first, then beside the launcher, then in the XDG data dir, then where
//! `scripts/build-agent.sh` leaves it in a workspace. `--agent-binary` and
//! `CLOUDRUN_AGENT_BINARY` stay overrides. Nothing here touches the network, and nothing
//! here runs the agent (it may be built for another architecture).

use std::path::{Path, PathBuf};

use sha2::Digest;

/// Target of the agent for x86_64 VMs (every GPU machine family cloudrun knows).
pub const TARGET_X86_64: &str = "x86_64-unknown-linux-musl";
/// Target of the agent for Arm VMs (T2A, C4A, A4X).
pub const TARGET_AARCH64: &str = "aarch64-unknown-linux-musl";
/// Installed agents are named this plus the target.
pub const INSTALLED_PREFIX: &str = "cloudrun-agent-";
/// Folder under the install prefix that holds the agents (`PREFIX/lib/cloudrun`).
pub const INSTALL_LIB_DIR: &str = "lib/cloudrun";
/// The marker the agent carries (`agent/src/main.rs`), followed by its version and `;`.
pub const VERSION_MARKER: &[u8] = b"CLOUDRUN_AGENT_VERSION=";
/// Longest version string read after the marker, in bytes.
const VERSION_MAX_BYTES: usize = 64;
/// ELF program header type of the dynamic loader path: present in every dynamically
/// linked executable, absent in static (and static-pie) ones.
const PT_INTERP: u32 = 3;

/// The agent target for a machine type: Arm families get the aarch64 agent.
pub fn target_for_machine(machine_type: &str) -> &'static str {
    let family = machine_type.split('-').next().unwrap_or_default();
    match family {
        "t2a" | "c4a" | "a4x" => TARGET_AARCH64,
        _ => TARGET_X86_64,
    }
}

/// The installed file name of the agent for `target`.
pub fn installed_name(target: &str) -> String {
    format!("{INSTALLED_PREFIX}{target}")
}

/// Where a static agent for `target` is looked for, in order: `<launcher dir>/../lib/
/// cloudrun/` (the install layout), beside the launcher, `<data dir>/` (the XDG data dir,
/// `~/.local/share/cloudrun`), and `<launcher dir>/../<target>/agent/cloudrun-agent` (a
/// workspace where `cargo build --release` and `scripts/build-agent.sh` ran).
pub fn candidates(
    launcher_dir: Option<&Path>,
    data_dir: Option<&Path>,
    target: &str,
) -> Vec<PathBuf> {
    let name = installed_name(target);
    let mut out = Vec::new();
    if let Some(d) = launcher_dir {
        if let Some(prefix) = d.parent() {
            out.push(prefix.join(INSTALL_LIB_DIR).join(&name));
        }
        out.push(d.join(&name));
    }
    if let Some(d) = data_dir {
        out.push(d.join(&name));
    }
    if let Some(target_dir) = launcher_dir.and_then(Path::parent) {
        out.push(
            target_dir
                .join(target)
                .join("agent")
                .join(cloudrun::layout::AGENT_BINARY_NAME),
        );
    }
    out
}

/// The first candidate that is a file.
pub fn find(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.is_file()).cloned()
}

/// What an ELF header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// `x86_64`, `aarch64` or `machine N`.
    pub arch: String,
    /// Has a `PT_INTERP` program header (needs a dynamic loader and shared libraries).
    pub dynamic: bool,
}

/// Why an agent cannot go to a VM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgentCheckError {
    #[error("the agent {path} is not a Linux executable (ELF): {why}. {HOW_TO_BUILD}")]
    NotElf { path: String, why: String },
    #[error("the agent {path} is built for {arch}, but the VM needs {target}. {HOW_TO_BUILD}")]
    WrongArch {
        path: String,
        arch: String,
        target: String,
    },
    #[error("the agent {path} is dynamically linked: it needs this machine's C library, which the VM's image may not have. A cloud run uploads the static agent. {HOW_TO_BUILD}")]
    Dynamic { path: String },
    #[error("reading the agent {path}: {why}")]
    Read { path: String, why: String },
}

/// The fix every [`AgentCheckError`] names.
pub const HOW_TO_BUILD: &str = "Install the static agent with `scripts/install.sh` (it puts it beside cloudrun-launch, where it is found with no setting), or build it with `scripts/build-agent.sh` and pass --agent-binary target/x86_64-unknown-linux-musl/agent/cloudrun-agent (or set CLOUDRUN_AGENT_BINARY)";

fn arch_name(machine: u16) -> String {
    match machine {
        62 => "x86_64".into(),
        183 => "aarch64".into(),
        m => format!("machine {m}"),
    }
}

/// The ELF architecture a target needs.
fn target_arch(target: &str) -> &str {
    target.split('-').next().unwrap_or(target)
}

/// Read the ELF header and program headers of `data`.
pub fn parse_elf(data: &[u8]) -> Result<ElfInfo, String> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err("no ELF header".into());
    }
    let class64 = match data[4] {
        1 => false,
        2 => true,
        c => return Err(format!("ELF class {c}")),
    };
    let le = match data[5] {
        1 => true,
        2 => false,
        d => return Err(format!("ELF data encoding {d}")),
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b: [u8; 2] = data.get(o..o + 2)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b: [u8; 4] = data.get(o..o + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let u64_at = |o: usize| -> Option<u64> {
        let b: [u8; 8] = data.get(o..o + 8)?.try_into().ok()?;
        Some(if le {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    };
    let truncated = || "truncated ELF header".to_string();
    let machine = u16_at(18).ok_or_else(truncated)?;
    let (phoff, phentsize, phnum) = if class64 {
        (
            u64_at(32).ok_or_else(truncated)? as usize,
            u16_at(54).ok_or_else(truncated)? as usize,
            u16_at(56).ok_or_else(truncated)? as usize,
        )
    } else {
        (
            u32_at(28).ok_or_else(truncated)? as usize,
            u16_at(42).ok_or_else(truncated)? as usize,
            u16_at(44).ok_or_else(truncated)? as usize,
        )
    };
    let mut dynamic = false;
    for i in 0..phnum {
        let at = phoff
            .checked_add(i.checked_mul(phentsize).ok_or_else(truncated)?)
            .ok_or_else(truncated)?;
        let p_type = u32_at(at).ok_or_else(|| "truncated program headers".to_string())?;
        if p_type == PT_INTERP {
            dynamic = true;
        }
    }
    Ok(ElfInfo {
        arch: arch_name(machine),
        dynamic,
    })
}

/// Check that the agent at `path` can run on a VM that needs `target`.
pub fn check_for_vm(path: &Path, target: &str) -> Result<ElfInfo, AgentCheckError> {
    let p = path.display().to_string();
    let data = std::fs::read(path).map_err(|e| AgentCheckError::Read {
        path: p.clone(),
        why: e.to_string(),
    })?;
    let info = parse_elf(&data).map_err(|why| AgentCheckError::NotElf {
        path: p.clone(),
        why,
    })?;
    if info.arch != target_arch(target) {
        return Err(AgentCheckError::WrongArch {
            path: p,
            arch: info.arch,
            target: target.to_string(),
        });
    }
    if info.dynamic {
        return Err(AgentCheckError::Dynamic { path: p });
    }
    Ok(info)
}

/// The version the agent carries after [`VERSION_MARKER`], if any.
pub fn embedded_version(data: &[u8]) -> Option<String> {
    let at = data
        .windows(VERSION_MARKER.len())
        .position(|w| w == VERSION_MARKER)?
        + VERSION_MARKER.len();
    let rest = &data[at..data.len().min(at + VERSION_MAX_BYTES)];
    let end = rest.iter().position(|&b| b == b';')?;
    let v = std::str::from_utf8(&rest[..end]).ok()?;
    (!v.is_empty()).then(|| v.to_string())
}

/// The `agent` line of `cloudrun-launch --version`.
pub fn describe(path: &Path, target: &str) -> String {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => return format!("{} (cannot be read: {e})", path.display()),
    };
    let sha = hex::encode(sha2::Sha256::digest(&data));
    let version = embedded_version(&data).unwrap_or_else(|| "version unknown".into());
    let linking = match parse_elf(&data) {
        Ok(i) if i.arch != target_arch(target) => {
            format!("built for {}, not {target}: refused for cloud runs", i.arch)
        }
        Ok(i) if i.dynamic => "dynamically linked: refused for cloud runs".to_string(),
        Ok(_) => "static".to_string(),
        Err(e) => format!("not an executable ({e}): refused for cloud runs"),
    };
    format!(
        "cloudrun-agent {version} for {target}, sha256 {sha}, {} bytes, {linking} ({})",
        data.len(),
        path.display()
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal 64-bit little-endian ELF executable header for `machine` with one
    /// program header of type `PT_LOAD`, plus `PT_INTERP` when `dynamic`.
    pub fn elf(machine: u16, dynamic: bool) -> Vec<u8> {
        let mut d = vec![0u8; 64];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[6] = 1;
        d[16..18].copy_from_slice(&2u16.to_le_bytes());
        d[18..20].copy_from_slice(&machine.to_le_bytes());
        d[32..40].copy_from_slice(&64u64.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        let types: Vec<u32> = if dynamic { vec![6, 3, 1] } else { vec![6, 1] };
        d[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            d.extend(ph);
        }
        d.extend_from_slice(b"....CLOUDRUN_AGENT_VERSION=1.2.3;....");
        d
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        assert_eq!(
            parse_elf(&elf(62, false)).unwrap(),
            ElfInfo {
                arch: "x86_64".into(),
                dynamic: false
            }
        );
        assert!(parse_elf(&elf(62, true)).unwrap().dynamic);
        assert_eq!(parse_elf(&elf(183, false)).unwrap().arch, "aarch64");
        assert!(parse_elf(b"#!/bin/sh\necho hi\n").is_err());
        let mut short = elf(62, false);
        short.truncate(80);
        assert!(parse_elf(&short).is_err(), "program headers cut off");
    }

    #[test]
    fn a_dynamic_or_foreign_agent_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, elf(62, true)).unwrap();
        let e = check_for_vm(&p, TARGET_X86_64).unwrap_err();
        assert!(matches!(e, AgentCheckError::Dynamic { .. }));
        assert!(e.to_string().contains("scripts/install.sh"), "{e}");
        std::fs::write(&p, elf(183, false)).unwrap();
        assert!(matches!(
            check_for_vm(&p, TARGET_X86_64),
            Err(AgentCheckError::WrongArch { .. })
        ));
        std::fs::write(&p, elf(62, false)).unwrap();
        assert!(check_for_vm(&p, TARGET_X86_64).is_ok());
        assert!(check_for_vm(&p, TARGET_AARCH64).is_err());
    }

    #[test]
    fn the_install_layout_is_searched_first_then_beside_then_the_data_dir() {
        let c = candidates(
            Some(Path::new("/opt/x/bin")),
            Some(Path::new("/home/u/.local/share/cloudrun")),
            TARGET_X86_64,
        );
        let c: Vec<String> = c.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            c,
            [
                "/opt/x/lib/cloudrun/cloudrun-agent-x86_64-unknown-linux-musl",
                "/opt/x/bin/cloudrun-agent-x86_64-unknown-linux-musl",
                "/home/u/.local/share/cloudrun/cloudrun-agent-x86_64-unknown-linux-musl",
                "/opt/x/x86_64-unknown-linux-musl/agent/cloudrun-agent",
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let lib = dir.path().join("lib/cloudrun");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        let beside = bin.join(installed_name(TARGET_X86_64));
        std::fs::write(&beside, b"x").unwrap();
        let c = candidates(Some(&bin), None, TARGET_X86_64);
        assert_eq!(find(&c), Some(beside));
        let installed = lib.join(installed_name(TARGET_X86_64));
        std::fs::write(&installed, b"x").unwrap();
        assert_eq!(find(&c), Some(installed));
    }

    #[test]
    fn version_line_names_version_target_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let data = elf(62, false);
        std::fs::write(&p, &data).unwrap();
        let line = describe(&p, TARGET_X86_64);
        let sha = hex::encode(sha2::Sha256::digest(&data));
        assert!(
            line.starts_with("cloudrun-agent 1.2.3 for x86_64-unknown-linux-musl"),
            "{line}"
        );
        assert!(line.contains(&sha) && line.contains("static"), "{line}");
        std::fs::write(&p, elf(62, true)).unwrap();
        assert!(describe(&p, TARGET_X86_64).contains("refused"));
        assert_eq!(embedded_version(b"no marker"), None);
    }

    #[test]
    fn arm_machine_types_get_the_arm_agent() {
        assert_eq!(target_for_machine("g2-standard-8"), TARGET_X86_64);
        assert_eq!(target_for_machine("a3-highgpu-8g"), TARGET_X86_64);
        assert_eq!(target_for_machine("a4x-highgpu-4g"), TARGET_AARCH64);
    }
}
