//! The life of an emulated VM: boot (metadata server, private root, startup script),
//! the `nvidia-smi` stand-in, the emulated `Restart=always`, the `maxRunDuration`
//! deadline, preemption, and going down (SIGTERM to every process of the VM, grace,
//! SIGKILL, then the instance is removed or TERMINATED).
//!
//! A VM's processes are found by a marker variable in their environment (inherited by
//! everything the startup script starts, including the agent's `setsid` and the job's own
//! process group) plus their descendants, the way a cgroup holds them on a real guest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use super::{metadata, Shared};

/// The variable that marks every process of an emulated VM.
pub const VM_MARKER_VAR: &str = "CLOUDRUN_GCE_EMULATOR_VM";
/// How often the emulated `Restart=always` looks at the agent, in milliseconds.
const RESTART_POLL_MILLIS: u64 = 500;
/// Rounds of SIGKILL while processes keep appearing (a fork racing the kill).
const KILL_ROUNDS: u32 = 50;
/// Pause between SIGKILL rounds, in milliseconds.
const KILL_ROUND_PAUSE_MILLIS: u64 = 20;

/// What the `nvidia-smi` stand-in replays (recorded outputs under
/// `agent/tests/fixtures/nvidia-smi/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuMode {
    /// One H200 at 100 % (real capture).
    Busy,
    /// One H200 at 0 % (real capture).
    Idle,
    /// The driver-failure message, exit code 9.
    Failing,
}

impl GpuMode {
    fn word(self) -> &'static str {
        match self {
            GpuMode::Busy => "busy",
            GpuMode::Idle => "idle",
            GpuMode::Failing => "failing",
        }
    }
}

pub(crate) struct Vm {
    pub tag: String,
    pub root: PathBuf,
    /// What the instance carries (`None`: the emulator cannot tell from the body).
    pub gpus: Option<Vec<Gpu>>,
}

/// One GPU of an emulated VM, as `nvidia-smi` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    pub name: &'static str,
    pub mem_total_mib: u32,
}

/// Accelerator type → the GPU `nvidia-smi` shows (names from real replies and Google's
/// GPU pages; memory as the driver reports it).
const ACCELERATORS: &[(&str, Gpu)] = &[
    (
        "nvidia-tesla-t4",
        Gpu {
            name: "Tesla T4",
            mem_total_mib: 15360,
        },
    ),
    (
        "nvidia-tesla-p4",
        Gpu {
            name: "Tesla P4",
            mem_total_mib: 7680,
        },
    ),
    (
        "nvidia-tesla-v100",
        Gpu {
            name: "Tesla V100-SXM2-16GB",
            mem_total_mib: 16384,
        },
    ),
    (
        "nvidia-tesla-p100",
        Gpu {
            name: "Tesla P100-PCIE-16GB",
            mem_total_mib: 16384,
        },
    ),
    (
        "nvidia-l4",
        Gpu {
            name: "NVIDIA L4",
            mem_total_mib: 23034,
        },
    ),
    (
        "nvidia-tesla-a100",
        Gpu {
            name: "NVIDIA A100-SXM4-40GB",
            mem_total_mib: 40960,
        },
    ),
    (
        "nvidia-a100-80gb",
        Gpu {
            name: "NVIDIA A100-SXM4-80GB",
            mem_total_mib: 81920,
        },
    ),
    (
        "nvidia-h100-80gb",
        Gpu {
            name: "NVIDIA H100 80GB HBM3",
            mem_total_mib: 81559,
        },
    ),
    (
        "nvidia-h100-mega-80gb",
        Gpu {
            name: "NVIDIA H100 80GB HBM3",
            mem_total_mib: 81559,
        },
    ),
    (
        "nvidia-h200-141gb",
        Gpu {
            name: "NVIDIA H200",
            mem_total_mib: 143771,
        },
    ),
];

/// Machine-type prefix → the accelerator type built into it (G2, A2, A3).
const BUILT_IN: &[(&str, &str)] = &[
    ("g2-standard-", "nvidia-l4"),
    ("a2-highgpu-", "nvidia-tesla-a100"),
    ("a2-megagpu-", "nvidia-tesla-a100"),
    ("a2-ultragpu-", "nvidia-a100-80gb"),
    ("a3-highgpu-", "nvidia-h100-80gb"),
    ("a3-edgegpu-", "nvidia-h100-80gb"),
    ("a3-megagpu-", "nvidia-h100-mega-80gb"),
    ("a3-ultragpu-", "nvidia-h200-141gb"),
];

fn accelerator(t: &str) -> Option<Gpu> {
    let short = t.rsplit('/').next().unwrap_or(t);
    ACCELERATORS
        .iter()
        .find(|(a, _)| *a == short)
        .map(|(_, g)| *g)
}

/// The GPUs an insert body gives its VM: `guestAccelerators` (N1), else the ones built
/// into a G2/A2/A3 machine type (`-Ng` is N GPUs; G2 by its vCPUs). `None` when there are
/// none or the type is not in the tables.
pub(crate) fn gpus_of(body: &Value) -> Option<Vec<Gpu>> {
    let mut out = Vec::new();
    for a in body["guestAccelerators"].as_array().into_iter().flatten() {
        let gpu = accelerator(a["acceleratorType"].as_str()?)?;
        let n = a["acceleratorCount"]
            .as_u64()
            .or_else(|| a["acceleratorCount"].as_str()?.parse().ok())
            .unwrap_or(1);
        out.extend(std::iter::repeat_n(gpu, n as usize));
    }
    if !out.is_empty() {
        return Some(out);
    }
    let mt = body["machineType"].as_str()?;
    let mt = mt.rsplit('/').next().unwrap_or(mt);
    let (prefix, acc) = BUILT_IN.iter().find(|(p, _)| mt.starts_with(p))?;
    let size = &mt[prefix.len()..];
    let n: usize = if *prefix == "g2-standard-" {
        match size.parse::<u32>().ok()? {
            24 => 2,
            48 => 4,
            96 => 8,
            _ => 1,
        }
    } else {
        size.strip_suffix('g')?.parse().ok()?
    };
    Some(vec![accelerator(acc)?; n])
}

/// The stand-in's reply for `gpus` (the first `visible` of them): the recorded H200
/// `capture` line once per GPU, with that GPU's index, uuid, name and memory. Without
/// known GPUs the capture as it is.
pub(crate) fn render_reply(gpus: Option<&[Gpu]>, visible: Option<u32>, capture: &str) -> String {
    let Some(gpus) = gpus else {
        return capture.to_string();
    };
    let line = capture.lines().next().unwrap_or_default();
    let f: Vec<&str> = line.split(", ").collect();
    if f.len() != 9 {
        return capture.to_string();
    }
    let uuid_base = &f[1][..f[1].len().saturating_sub(4)];
    let n = visible.map_or(gpus.len(), |v| gpus.len().min(v as usize));
    gpus[..n]
        .iter()
        .enumerate()
        .map(|(i, g)| {
            format!(
                "{i}, {uuid_base}{i:04x}, {}, {}, {}, {}, {}, {}, {}\n",
                g.name, f[3], f[4], f[5], g.mem_total_mib, f[7], f[8]
            )
        })
        .collect()
}

/// Write the busy and idle replies of a VM (atomically: the stand-in may be reading).
pub(crate) fn write_gpu_replies(root: &Path, gpus: Option<&[Gpu]>, visible: Option<u32>) {
    let f = fixtures();
    for (mode, file) in [
        ("busy", "h200-busy-real.txt"),
        ("idle", "h200-idle-real.txt"),
    ] {
        let capture = std::fs::read_to_string(f.join(file)).unwrap_or_default();
        let tmp = root.join(format!(".gpu-reply-{mode}"));
        if std::fs::write(&tmp, render_reply(gpus, visible, &capture)).is_ok() {
            let _ = std::fs::rename(&tmp, root.join(format!("gpu-reply-{mode}")));
        }
    }
}

fn fixtures() -> PathBuf {
    crate::workspace_root().join("agent/tests/fixtures/nvidia-smi")
}

pub(crate) fn write_gpu_mode(root: &Path, mode: GpuMode) {
    let _ = std::fs::write(root.join("gpu-mode"), mode.word());
}

/// The stand-in: answers with the reply the mode file names (the VM's GPUs, from the
/// recorded captures, see [`render_reply`]; "No devices were found" when none is
/// visible) and logs each call (`<unix time> <mode>`) so benchmarks can see the last busy
/// sample.
fn write_nvidia_smi(root: &Path) -> PathBuf {
    let f = fixtures();
    let script = format!(
        r#"#!/bin/bash
# nvidia-smi stand-in of the emulated VM: replays recorded replies.
mode="$(cat '{root}/gpu-mode' 2>/dev/null || echo busy)"
echo "$(date +%s.%N) $mode" >> '{root}/nvidia-smi.log'
case "$mode" in
  busy|idle)
    if [ -s "{root}/gpu-reply-$mode" ]; then cat "{root}/gpu-reply-$mode"
    else cat '{f}/no-devices.txt'; exit 6; fi ;;
  *) cat '{f}/driver-failed.txt'; exit 9 ;;
esac
"#,
        root = root.display(),
        f = f.display()
    );
    let path = root.join("nvidia-smi");
    let _ = std::fs::write(&path, script);
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
    path
}

pub(crate) fn set_status(s: &Shared, key: &str, status: &str) {
    if let Some(i) = s.lock().instances.get_mut(key) {
        i.status = status.to_string();
    }
}

/// The insert is DONE: RUNNING, metadata server up, boot, deadline armed.
pub(crate) fn started(s: &Arc<Shared>, key: &str) {
    let (name, id, deadline) = {
        let mut st = s.lock();
        let Some(i) = st.instances.get_mut(key) else {
            return;
        };
        i.status = "RUNNING".into();
        let secs = i.body["scheduling"]["maxRunDuration"]["seconds"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| i.body["scheduling"]["maxRunDuration"]["seconds"].as_u64());
        (i.name.clone(), i.id, secs.map(Duration::from_secs))
    };
    metadata::serve(s, key);
    let deadline = match (deadline, s.cfg.max_run_duration_cap) {
        (Some(d), Some(cap)) => Some(d.min(cap)),
        (d, _) => d,
    };
    if let Some(d) = deadline {
        let s2 = s.clone();
        let k = key.to_string();
        let task = s.rt.spawn(async move {
            tokio::time::sleep(d).await;
            // Forget our own handle first: going down aborts the deadline task.
            if let Some(i) = s2.lock().instances.get_mut(&k) {
                i.deadline_task = None;
            }
            s2.event(&k, "maxRunDuration reached: termination action");
            terminate(&s2, &k, "maxRunDuration reached").await;
        });
        if let Some(i) = s.lock().instances.get_mut(key) {
            i.deadline_task = Some(task.abort_handle());
        }
    }
    if s.cfg.boot {
        let root = s.dir.join(format!("vm-{name}-{id}"));
        let _ = std::fs::create_dir_all(root.join("var/lib/cloudrun"));
        let _ = std::fs::write(root.join("serial-console"), b"");
        let tag = format!("{name}-{id}");
        {
            let mut st = s.lock();
            write_gpu_mode(&root, st.gpu);
            let visible = st.gpus_visible;
            if let Some(i) = st.instances.get_mut(key) {
                let gpus = gpus_of(&i.body);
                write_gpu_replies(&root, gpus.as_deref(), visible);
                i.vm = Some(Vm {
                    tag: tag.clone(),
                    root: root.clone(),
                    gpus,
                });
            }
        }
        write_nvidia_smi(&root);
        boot(s, key);
        if let Some(every) = s.cfg.restart_after {
            let s2 = s.clone();
            let k = key.to_string();
            s.rt.spawn(async move { restart_watch(s2, k, every).await });
        }
    }
    s.event(&name, "RUNNING");
}

/// Run the `startup-script` attribute as the guest agent would (at every boot).
fn boot(s: &Arc<Shared>, key: &str) {
    let (name, md_port, script, vm) = {
        let st = s.lock();
        let Some(i) = st.instances.get(key) else {
            return;
        };
        let script = i
            .items
            .iter()
            .find(|(k, _)| k == "startup-script")
            .map(|(_, v)| v.clone());
        let vm = i.vm.as_ref().map(|v| (v.tag.clone(), v.root.clone()));
        (i.name.clone(), i.md_port, script, vm)
    };
    let (Some(script), Some((tag, root))) = (script, vm) else {
        s.event(&name, "no startup-script: nothing runs");
        return;
    };
    let path = root.join("startup-script");
    let _ = std::fs::write(&path, script);
    let serial = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("serial.log"));
    let Ok(serial) = serial else {
        return;
    };
    let serial2 = serial.try_clone();
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&path)
        .current_dir(&root)
        .env(VM_MARKER_VAR, &tag)
        .env("GCE_METADATA_HOST", format!("127.0.0.1:{md_port}"))
        .env("CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE", s.base())
        .env("CLOUDRUN_NVIDIA_SMI", root.join("nvidia-smi"))
        .env("CLOUDRUN_INSTALL_DIR", root.join("var/lib/cloudrun"))
        .env("CLOUDRUN_CONSOLE", root.join("serial-console"))
        .env("CLOUDRUN_INIT", "detached")
        .env("CLOUDRUN_FETCH_ATTEMPTS", "3")
        .env("CLOUDRUN_FETCH_PAUSE_SECS", "1")
        .stdin(std::process::Stdio::null())
        .stdout(serial)
        .process_group(0)
        .kill_on_drop(false);
    if let Ok(e) = serial2 {
        cmd.stderr(e);
    }
    if let Some(h) = &s.cfg.storage_host {
        cmd.env("STORAGE_EMULATOR_HOST", h);
    }
    for (k, v) in &s.cfg.vm_env {
        cmd.env(k, v);
    }
    match cmd.spawn() {
        Ok(mut child) => {
            s.event(&name, "startup-script started");
            let s2 = s.clone();
            s.rt.spawn(async move {
                let st = child.wait().await;
                s2.event(&name, format!("startup-script exited: {st:?}"));
            });
        }
        Err(e) => s.event(&name, format!("startup-script could not start: {e}")),
    }
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// systemd's `Restart=always` for a guest without systemd: when the agent the startup
/// script started has died while the VM runs, run the script again (it starts the
/// verified agent without fetching it twice).
async fn restart_watch(s: Arc<Shared>, key: String, after: Duration) {
    let mut dead_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(RESTART_POLL_MILLIS)).await;
        let root = {
            let st = s.lock();
            match st.instances.get(&key) {
                Some(i) if i.status == "RUNNING" && !i.going_down => {
                    i.vm.as_ref().map(|v| v.root.clone())
                }
                _ => return,
            }
        };
        let Some(root) = root else { return };
        let pidfile = root.join("var/lib/cloudrun/agent.pid");
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        match pid {
            Some(pid) if !alive(pid) => {
                let since = *dead_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= after {
                    dead_since = None;
                    s.event(
                        &key,
                        format!("agent (pid {pid}) is dead: Restart=always runs it again"),
                    );
                    boot(&s, &key);
                    // Give the script time to write the new pid.
                    tokio::time::sleep(after).await;
                }
            }
            _ => dead_since = None,
        }
    }
}

/// Pids of processes carrying `tag`, and their descendants.
pub(crate) fn tree_pids(tag: &str) -> Vec<i32> {
    let needle = format!("{VM_MARKER_VAR}={tag}");
    let mut procs: Vec<(i32, i32)> = Vec::new();
    let mut marked: Vec<i32> = Vec::new();
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || !alive(pid) {
            continue;
        }
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
            })
            .unwrap_or(0);
        procs.push((pid, ppid));
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
                marked.push(pid);
            }
        }
    }
    let mut out = marked.clone();
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid) in &procs {
            if out.contains(ppid) && !out.contains(pid) {
                out.push(*pid);
                grew = true;
            }
        }
    }
    out
}

/// Signal every process of the VM; SIGKILL repeats until none is left. Returns how many
/// were signalled the first round.
pub(crate) fn kill_tree(tag: &str, sig: Signal) -> usize {
    let first = tree_pids(tag);
    for p in &first {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig);
    }
    if sig == Signal::SIGKILL {
        for _ in 0..KILL_ROUNDS {
            let left = tree_pids(tag);
            if left.is_empty() {
                break;
            }
            for p in &left {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig);
            }
            std::thread::sleep(Duration::from_millis(KILL_ROUND_PAUSE_MILLIS));
        }
    }
    first.len()
}

fn tag_of(s: &Shared, key: &str) -> Option<String> {
    s.lock()
        .instances
        .get(key)
        .and_then(|i| i.vm.as_ref().map(|v| v.tag.clone()))
}

/// ACPI soft-off: STOPPING, SIGTERM to every process, no more restarts, no deadline.
pub(crate) fn begin_shutdown(s: &Shared, key: &str) {
    let name = {
        let mut st = s.lock();
        let Some(i) = st.instances.get_mut(key) else {
            return;
        };
        i.status = "STOPPING".into();
        i.going_down = true;
        if let Some(t) = i.deadline_task.take() {
            t.abort();
        }
        i.name.clone()
    };
    if let Some(tag) = tag_of(s, key) {
        let n = kill_tree(&tag, Signal::SIGTERM);
        s.event(&name, format!("ACPI soft-off: SIGTERM to {n} process(es)"));
    }
}

/// Hard stop: SIGKILL everything, then remove the instance (`delete`) or leave it
/// TERMINATED (`stop`; a stopped VM is not deleted by `maxRunDuration`).
pub(crate) fn finish_shutdown(s: &Shared, key: &str, delete: bool, why: &str) {
    if let Some(tag) = tag_of(s, key) {
        kill_tree(&tag, Signal::SIGKILL);
    }
    if delete {
        remove(s, key, why);
    } else {
        let name = {
            let mut st = s.lock();
            let Some(i) = st.instances.get_mut(key) else {
                return;
            };
            i.status = "TERMINATED".into();
            if let Some(t) = i.md_task.take() {
                t.abort();
            }
            i.name.clone()
        };
        s.event(&name, format!("TERMINATED: {why}"));
    }
}

/// The instance is gone; boot disks without autoDelete stay behind.
pub(crate) fn remove(s: &Shared, key: &str, why: &str) {
    let tag = tag_of(s, key);
    if let Some(tag) = tag {
        kill_tree(&tag, Signal::SIGKILL);
    }
    let name = {
        let mut st = s.lock();
        let Some(mut i) = st.instances.remove(key) else {
            return;
        };
        if let Some(t) = i.md_task.take() {
            t.abort();
        }
        if let Some(t) = i.deadline_task.take() {
            t.abort();
        }
        if let Some(vm) = &i.vm {
            st.old_roots.insert(i.name.clone(), vm.root.clone());
        }
        if i.status != "PROVISIONING" && i.status != "STAGING" {
            for d in i.body["disks"].as_array().into_iter().flatten() {
                if d["autoDelete"] == false {
                    let disk = if d["boot"] == true {
                        i.name.clone()
                    } else {
                        format!("{}-disk", i.name)
                    };
                    st.kept_disks.push(disk);
                }
            }
        }
        i.name.clone()
    };
    s.event(&name, format!("deleted: {why}"));
}

/// The termination action (`instanceTerminationAction`, DELETE unless STOP).
async fn terminate(s: &Arc<Shared>, key: &str, why: &str) {
    let action_delete = s
        .lock()
        .instances
        .get(key)
        .map(|i| i.body["scheduling"]["instanceTerminationAction"] != "STOP")
        .unwrap_or(true);
    begin_shutdown(s, key);
    tokio::time::sleep(s.cfg.shutdown_grace).await;
    finish_shutdown(s, key, action_delete, why);
}

pub(crate) fn preempt(s: &Arc<Shared>, name: &str) {
    let key = {
        let mut st = s.lock();
        let Some(i) = st.instances.values_mut().find(|i| i.name == name) else {
            return;
        };
        i.preempted = true;
        i.version.send_modify(|v| *v += 1);
        format!("{}/{}", i.zone, i.name)
    };
    s.event(name, "preempted: instance/preempted is TRUE");
    let s2 = s.clone();
    s.rt.spawn(async move {
        tokio::time::sleep(s2.cfg.preempt_acpi_delay).await;
        begin_shutdown(&s2, &key);
        let left = s2
            .cfg
            .preempt_notice
            .saturating_sub(s2.cfg.preempt_acpi_delay);
        tokio::time::sleep(left).await;
        let delete = s2
            .lock()
            .instances
            .get(&key)
            .map(|i| i.body["scheduling"]["instanceTerminationAction"] != "STOP")
            .unwrap_or(true);
        finish_shutdown(&s2, &key, delete, "preempted");
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn gpus_come_from_guest_accelerators_or_the_machine_type() {
        let n1 = json!({"machineType": "zones/z/machineTypes/n1-standard-16",
            "guestAccelerators": [{"acceleratorType": "zones/z/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 2}]});
        let g = gpus_of(&n1).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].name, "Tesla T4");
        for (mt, n, name) in [
            ("g2-standard-8", 1, "NVIDIA L4"),
            ("g2-standard-24", 2, "NVIDIA L4"),
            ("a2-highgpu-4g", 4, "NVIDIA A100-SXM4-40GB"),
            ("a2-megagpu-16g", 16, "NVIDIA A100-SXM4-40GB"),
            ("a3-highgpu-8g", 8, "NVIDIA H100 80GB HBM3"),
            ("a3-ultragpu-8g", 8, "NVIDIA H200"),
        ] {
            let g =
                gpus_of(&json!({ "machineType": format!("zones/z/machineTypes/{mt}") })).unwrap();
            assert_eq!((g.len(), g[0].name), (n, name), "{mt}");
        }
        assert_eq!(gpus_of(&json!({"machineType": "e2-standard-4"})), None);
    }

    #[test]
    fn the_reply_is_the_real_capture_once_per_visible_gpu() {
        let capture = std::fs::read_to_string(fixtures().join("h200-busy-real.txt")).unwrap();
        let l4 = [accelerator("nvidia-l4").unwrap(); 2];
        let two = render_reply(Some(&l4), None, &capture);
        let lines: Vec<&str> = two.lines().collect();
        assert_eq!(lines.len(), 2, "{two}");
        assert!(lines[0].starts_with("0, GPU-3847c39f-9bcc-47b4-c9df-ce1af3490000, NVIDIA L4, 100, 25, 1139, 23034, 690.73, 63"), "{two}");
        assert!(lines[1].starts_with("1, "), "{two}");
        assert_eq!(
            render_reply(Some(&l4), Some(1), &capture).lines().count(),
            1
        );
        assert_eq!(render_reply(Some(&l4), Some(0), &capture), "");
        assert_eq!(render_reply(None, None, &capture), capture);
    }
}
