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
}

fn fixtures() -> PathBuf {
    crate::workspace_root().join("agent/tests/fixtures/nvidia-smi")
}

pub(crate) fn write_gpu_mode(root: &Path, mode: GpuMode) {
    let _ = std::fs::write(root.join("gpu-mode"), mode.word());
}

/// The stand-in: answers from the fixture the mode file names and logs each call
/// (`<unix time> <mode>`) so benchmarks can see the last busy sample.
fn write_nvidia_smi(root: &Path) -> PathBuf {
    let f = fixtures();
    let script = format!(
        r#"#!/bin/bash
# nvidia-smi stand-in of the emulated VM: replays recorded replies.
mode="$(cat '{root}/gpu-mode' 2>/dev/null || echo busy)"
echo "$(date +%s.%N) $mode" >> '{root}/nvidia-smi.log'
case "$mode" in
  busy) cat '{f}/h200-busy-real.txt' ;;
  idle) cat '{f}/h200-idle-real.txt' ;;
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
            if let Some(i) = st.instances.get_mut(key) {
                i.vm = Some(Vm {
                    tag: tag.clone(),
                    root: root.clone(),
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
