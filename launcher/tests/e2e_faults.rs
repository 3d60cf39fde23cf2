//! Fault-matrix items 8–17 (issue 4) with the real binaries on the emulated VM: the agent
//! killed and restarted, the store unreachable mid-run and at the end, deletes that fail,
//! zone stock-outs, quotas, a manifest that points outside the work dir, `stop` and
//! `sweep`. Each test says where the VM went and checks that every checkpoint written on
//! it is in the store (or on a kept disk). Item 14 kills the launcher mid-upload (held
//! at a fixed byte count by a proxy in front of the store) and runs it again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::process::{Child, Stdio};
use std::time::Duration;

use cloudrun_testkit::gce::{GceConfig, ZoneState};
use cloudrun_testkit::FlakyProxy;
use e2e::{reason, text, World, WorldOpts};
use sha2::Digest;

/// How long the store stays unreachable in item 9, in seconds (the 30 s).
const GCS_OUTAGE_SECS: u64 = 30;

fn one_delete(w: &World, vm: &str) {
    let d = w.deletes(vm);
    if d.len() != 1 {
        w.dump(vm);
    }
    assert_eq!(d.len(), 1, "{d:?}");
}

fn kill9(pid: &str) {
    let st = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn m08_agent_killed_mid_run_is_restarted_and_still_cleans_up() {
    let w = World::new(WorldOpts::default());
    let (run, vm) = w.launch(&["ok", "12", "1"]);
    w.wait_for("the job to run", &vm, || {
        w.status(&run).is_some_and(|s| s["phase"] == "running") && w.vm_outputs(&vm).len() >= 2
    });
    let pidfile = w
        .emu
        .vm_root(&vm)
        .unwrap()
        .join("var/lib/cloudrun/agent.pid");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    kill9(&pid);
    let st = w.wait_ended(&run, &vm);
    w.wait_gone(&vm);
    assert!(
        w.emu
            .events()
            .iter()
            .any(|e| e.instance.contains(&vm) && e.what.contains("Restart=always")),
        "the agent was not restarted"
    );
    // The restarted agent adopted the job and learnt its exit from the job shim.
    assert_eq!(reason(&st), "succeeded", "{st}");
    assert_eq!(st["end"]["exit_code"], 0, "{st}");
    one_delete(&w, &vm);
    w.assert_outputs_in_store(&run, &vm);
}

/// The agent's pid once the emulated `Restart=always` has started a new one (not `old`).
fn next_agent_pid(w: &World, vm: &str, old: &str) -> String {
    let pidfile = w
        .emu
        .vm_root(vm)
        .unwrap()
        .join("var/lib/cloudrun/agent.pid");
    let mut pid = String::new();
    w.wait_for("the agent to be restarted", vm, || {
        pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
        let p = pid.trim();
        !p.is_empty() && p != old.trim() && std::path::Path::new(&format!("/proc/{p}")).exists()
    });
    pid
}

#[test]
fn agent_killed_twice_mid_run_the_job_lives_on_every_line_and_checkpoint_is_shipped_and_the_exit_code_is_real(
) {
    const STEPS: usize = 24;
    let w = World::new(WorldOpts::default());
    let steps = STEPS.to_string();
    let (run, vm) = w.launch(&["fail", &steps, "1"]);
    w.wait_for("the job to run", &vm, || {
        w.status(&run).is_some_and(|s| s["phase"] == "running") && w.vm_outputs(&vm).len() >= 2
    });
    let pidfile = w
        .emu
        .vm_root(&vm)
        .unwrap()
        .join("var/lib/cloudrun/agent.pid");
    let first = std::fs::read_to_string(&pidfile).unwrap();
    kill9(&first);
    let second = next_agent_pid(&w, &vm, &first);
    let seen = w.vm_outputs(&vm).len();
    w.wait_for("the adopted job to write more checkpoints", &vm, || {
        w.vm_outputs(&vm).len() >= seen + 2
    });
    assert!(
        w.vm_outputs(&vm).len() < STEPS,
        "the job ended before the second kill; make it longer"
    );
    kill9(&second);
    next_agent_pid(&w, &vm, &second);
    let st = w.wait_ended(&run, &vm);
    w.wait_gone(&vm);
    // `fail` exits 3 after its last step: the code the job really returned.
    assert_eq!(reason(&st), "failed", "{st}");
    assert_eq!(st["end"]["exit_code"], 3, "{st}");
    one_delete(&w, &vm);
    assert_eq!(w.assert_outputs_in_store(&run, &vm), STEPS);
    // Every line the job printed, once, in order, with its stream.
    let mut stdout = vec![];
    let mut stderr = vec![];
    for key in w.list(&format!("{}/runs/{run}/logs/", e2e::PREFIX)) {
        for l in cloudrun::joblog::decode_chunk(&w.get(&key).unwrap()) {
            match l.stream {
                Some(cloudrun::joblog::Stream::Stdout) => stdout.push(l.text),
                Some(cloudrun::joblog::Stream::Stderr) => stderr.push(l.text),
                _ => {}
            }
        }
    }
    let want: Vec<String> = (1..=STEPS).map(|i| format!("step {i}")).collect();
    if stdout != want {
        w.dump(&vm);
    }
    assert_eq!(stdout, want);
    assert_eq!(stderr, ["boom"]);
}

#[test]
fn m09_store_unreachable_for_30s_mid_run_job_continues_nothing_lost() {
    let mut w = World::new(WorldOpts::default());
    let (run, vm) = w.launch(&["ok", "45", "1"]);
    w.wait_for("the job to run", &vm, || {
        w.status(&run).is_some_and(|s| s["phase"] == "running") && w.vm_outputs(&vm).len() >= 3
    });
    let before = w.vm_outputs(&vm).len();
    w.gcs.stop();
    std::thread::sleep(Duration::from_secs(GCS_OUTAGE_SECS));
    let during = w.vm_outputs(&vm).len();
    assert!(
        during > before + 10,
        "the job did not go on while the store was down"
    );
    w.gcs.restart();
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "succeeded", "{st}");
    w.wait_gone(&vm);
    one_delete(&w, &vm);
    assert_eq!(w.assert_outputs_in_store(&run, &vm), 46);
}

/// The agent's final-sync deadline in item 10 (`[policies] final_sync_secs`), in seconds:
/// short so the test does not wait the production 5 minutes.
const M10_FINAL_SYNC_SECS: u64 = 4;

#[test]
fn m10_store_unreachable_at_the_end_keeps_the_boot_disk_and_names_it() {
    let mut w = World::new(WorldOpts {
        policies: format!("final_sync_secs = {M10_FINAL_SYNC_SECS}"),
        ..WorldOpts::default()
    });
    let (run, vm) = w.launch(&["ok", "20", "1"]);
    // Checkpoints mirrored before the outage, with their bytes.
    let keys: Vec<String> = (1..=3)
        .map(|i| {
            format!(
                "{}/runs/{run}/outputs/checkpoint/ckpt-{i:04}.txt",
                e2e::PREFIX
            )
        })
        .collect();
    w.wait_for("three checkpoints in the store", &vm, || {
        keys.iter().all(|k| w.object(k).is_some())
    });
    let before: Vec<(String, String)> = keys
        .iter()
        .map(|k| (k.clone(), w.object(k).unwrap()))
        .collect();
    w.gcs.stop();
    assert!(
        w.emu.instance(&vm).is_some() && w.vm_outputs(&vm).len() < 21,
        "the job ended before the store went down"
    );
    // The job ends, the final sync cannot be verified within its deadline: the agent
    // keeps the boot disk, then retries the final status while the store is down.
    w.wait_for("setDiskAutoDelete", &vm, || {
        !w.emu.calls_to("POST", "/setDiskAutoDelete").is_empty()
    });
    assert!(
        w.deletes(&vm).is_empty(),
        "deleted before the status was stored"
    );
    w.gcs.restart();
    let st = w.wait_ended(&run, &vm);
    w.wait_gone(&vm);
    assert_eq!(reason(&st), "succeeded", "{st}");
    assert_eq!(st["kept_disk"], vm.as_str(), "{st}");
    assert!(
        st["warnings"].to_string().contains("did not finish within"),
        "{st}"
    );
    assert_eq!(w.emu.kept_disks(), vec![vm.clone()]);
    one_delete(&w, &vm);
    let calls = w.emu.calls();
    let keep = calls
        .iter()
        .position(|c| c.method == "POST" && c.path.ends_with("/setDiskAutoDelete"))
        .unwrap();
    let del = calls
        .iter()
        .position(|c| c.method == "DELETE" && c.path.ends_with(&format!("/instances/{vm}")))
        .unwrap();
    assert!(keep < del, "setDiskAutoDelete after the delete");
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.path.ends_with("/setDiskAutoDelete"))
            .count(),
        1
    );
    // Nothing mirrored before the outage was lost; everything is on the kept disk.
    for (key, bytes) in &before {
        assert_eq!(w.object(key).as_ref(), Some(bytes), "{key}");
    }
    assert_eq!(w.vm_outputs(&vm).len(), 21);
}

#[test]
fn m11a_delete_refused_powers_off_and_records_it() {
    let w = World::new(WorldOpts::default());
    let (run, vm) = w.launch(&["ok", "2", "1"]);
    w.emu
        .fail_next("DELETE", &format!("/instances/{vm}"), 403, 1000);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "succeeded", "{st}");
    w.wait_for("the power-off", &vm, || {
        w.emu
            .instance(&vm)
            .is_some_and(|i| i.status == "TERMINATED")
    });
    w.wait_for("the fate in the status", &vm, || {
        w.status(&run).is_some_and(|s| s["vm"] == "powered_off")
    });
    assert_eq!(w.emu.calls_to("POST", "/stop").len(), 1);
    w.assert_outputs_in_store(&run, &vm);
    // A stopped VM is not deleted by maxRunDuration (the deadline is cleared on stop):
    // `sweep` takes it.
    w.emu.clear_faults();
    let out = w.run(&["sweep", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    w.wait_gone(&vm);
}

#[test]
fn m11b_delete_and_power_off_refused_the_deadline_deletes_it() {
    let w = World::new(WorldOpts {
        cfg: GceConfig {
            max_run_duration_cap: Some(Duration::from_secs(40)),
            ..GceConfig::default()
        },
        ..WorldOpts::default()
    });
    let (run, vm) = w.launch(&["ok", "2", "1"]);
    w.emu
        .fail_next("DELETE", &format!("/instances/{vm}"), 403, 1000);
    w.emu
        .fail_next("POST", &format!("/instances/{vm}/stop"), 403, 1000);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "succeeded", "{st}");
    w.wait_gone(&vm);
    assert!(w
        .emu
        .events()
        .iter()
        .any(|e| e.instance.contains(&vm) && e.what.contains("maxRunDuration")));
    let st = w.status(&run).unwrap();
    assert!(
        st["warnings"].to_string().contains("maxRunDuration"),
        "{st}"
    );
    w.assert_outputs_in_store(&run, &vm);
}

#[test]
fn m12_zone_stockout_then_success_in_the_next_zone() {
    let w = World::new(WorldOpts {
        toml: "zones = [\"us-west1-a\", \"us-central1-a\"]\n".into(),
        ..WorldOpts::default()
    });
    w.emu.set_zone("us-west1-a", ZoneState::OutOfCapacity);
    let (run, vm) = w.launch(&["ok", "2", "1"]);
    let inst = w.emu.instance(&vm).unwrap();
    assert_eq!(inst.zone, "us-central1-a");
    assert_eq!(w.emu.calls_to("POST", "/instances").len(), 2);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "succeeded", "{st}");
    w.wait_gone(&vm);
    one_delete(&w, &vm);
    w.assert_outputs_in_store(&run, &vm);
}

#[test]
fn m13_quota_exceeded_clear_message_no_vm() {
    let w = World::new(WorldOpts {
        toml: "zones = [\"us-central1-a\", \"us-east1-b\"]\n".into(),
        ..WorldOpts::default()
    });
    w.emu.set_zone(
        "us-central1-a",
        ZoneState::QuotaExceeded("GPUS_ALL_REGIONS".into()),
    );
    let out = w.run(&["train.py"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("GPUS_ALL_REGIONS") && t.contains("console.cloud.google.com/iam-admin/quotas"),
        "{t}"
    );
    assert!(w.emu.instances().is_empty());
    assert_eq!(
        w.emu.calls_to("POST", "/instances").len(),
        1,
        "GPUS_ALL_REGIONS stops the search"
    );
}

#[test]
fn m16_stop_from_the_launcher_is_graceful_and_syncs_outputs() {
    let w = World::new(WorldOpts::default());
    let (run, vm) = w.launch(&["forever", "0", "1"]);
    w.wait_for("the job to run", &vm, || {
        w.status(&run).is_some_and(|s| s["phase"] == "running") && w.vm_outputs(&vm).len() >= 3
    });
    let out = w.run(&["stop", &run]);
    assert!(out.status.success(), "{}", text(&out));
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "stopped", "{st}");
    w.wait_gone(&vm);
    one_delete(&w, &vm);
    w.assert_outputs_in_store(&run, &vm);
}

#[test]
fn m17_sweep_deletes_a_vm_whose_run_ended_but_is_still_up() {
    let w = World::new(WorldOpts::default());
    let (run, vm) = w.launch(&["ok", "2", "1"]);
    w.emu
        .fail_next("DELETE", &format!("/instances/{vm}"), 403, 1000);
    w.emu
        .fail_next("POST", &format!("/instances/{vm}/stop"), 403, 1000);
    w.wait_for("the run to end with its VM still up", &vm, || {
        w.status(&run).is_some_and(|s| {
            s["phase"] == "ended" && s["warnings"].to_string().contains("maxRunDuration")
        })
    });
    assert_eq!(w.emu.instance(&vm).unwrap().status, "RUNNING");
    w.emu.clear_faults();
    let dry = w.run(&["sweep"]);
    assert!(
        text(&dry).contains(&vm) && text(&dry).contains("run ended"),
        "{}",
        text(&dry)
    );
    assert!(w.emu.instance(&vm).is_some(), "sweep without --yes deleted");
    let out = w.run(&["sweep", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    w.wait_gone(&vm);
    w.assert_outputs_in_store(&run, &vm);
}

/// How long the emulated insert stays PENDING in item 15, in seconds: the window in which
/// the test swaps the manifest before the VM boots (generous for a loaded machine).
const M15_INSERT_PENDING_SECS: u64 = 20;

#[test]
fn m15_manifest_with_parent_and_absolute_paths_is_refused_nothing_written_outside() {
    let w = World::new(WorldOpts {
        cfg: GceConfig {
            op_pending: Duration::from_secs(M15_INSERT_PENDING_SECS),
            ..GceConfig::default()
        },
        ..WorldOpts::default()
    });
    let outside = cloudrun_testkit::TempDir::new("e2e-m15-outside");
    let abs_target = outside.path().join("abs-evil.txt");
    let launcher = w
        .cmd(&["train.py", "ok", "2", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The instance exists, so the manifest and spec are in the store; the VM boots only
    // when the insert is DONE.
    w.wait_for("the insert", "", || !w.emu.instances().is_empty());
    let run = w.emu.instances()[0].labels["cloudrun-run"].clone();
    let manifest_key = format!("{}/runs/{run}/manifest.json", e2e::PREFIX);
    let mut m: serde_json::Value = serde_json::from_str(&w.object(&manifest_key).unwrap()).unwrap();
    let good = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "train.py")
        .unwrap()
        .clone();
    let entries = m["entries"].as_array_mut().unwrap();
    for path in ["../evil.txt", abs_target.to_str().unwrap()] {
        let mut e = good.clone();
        e["path"] = path.into();
        entries.push(e);
    }
    let (st, body) = cloudrun_testkit::http(
        "POST",
        w.gcs.port(),
        &format!(
            "/upload/storage/v1/b/{}/o?uploadType=media&name={}",
            e2e::BUCKET,
            manifest_key.replace('/', "%2F")
        ),
        &m.to_string(),
    )
    .unwrap();
    assert_eq!(st, 200, "{body}");
    assert!(
        w.emu.instances().iter().all(|i| i.root.is_none()),
        "a VM booted before the manifest was swapped"
    );
    let out = launcher.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let vm = e2e::field(&String::from_utf8_lossy(&out.stdout), "vm")
        .and_then(|v| v.split_whitespace().next().map(str::to_string))
        .unwrap();
    let st = w.wait_ended(&run, &vm);
    w.wait_gone(&vm);
    assert_eq!(reason(&st), "pull_failed", "{st}");
    let why = st["end"]["message"].to_string();
    assert!(why.contains("evil.txt") && why.contains(".."), "{st}");
    one_delete(&w, &vm);
    // Nothing was written outside the work dir: not beside it, not at the absolute path.
    let root = w.emu.vm_root(&vm).unwrap();
    let work = w.vm_work(&vm);
    assert!(!work.join("../evil.txt").exists());
    assert!(!abs_target.exists());
    assert!(!root.join(abs_target.strip_prefix("/").unwrap()).exists());
    assert!(!work.join("train.py").exists(), "materialised in part");
}

/// Size of the big file in item 14: over the 8 MiB simple-upload limit, so it goes up as
/// a resumable upload, and big enough that the proxy holds it well inside its one chunk.
const M14_BIG_BYTES: usize = 48 << 20;
/// Client→server bytes the proxy forwards before it holds item 14's first launch: far
/// past the small files and the request headers, far short of the big blob's end (the
/// agent and the spec go up only after the whole push, so they are never reached).
const M14_HOLD_AFTER_BYTES: i64 = 16 << 20;

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves
/// no launcher behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `n` deterministic, incompressible-looking bytes (xorshift64).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// Every object under `blobs/` is whole: its SHA-256 is its name. Returns the names.
fn assert_blobs_whole(w: &World) -> Vec<String> {
    let prefix = format!("{}/blobs/", e2e::PREFIX);
    let keys = w.list(&prefix);
    for k in &keys {
        let bytes = w
            .get(k)
            .unwrap_or_else(|| panic!("{k} listed but not readable"));
        let sha = sha256_hex(&bytes);
        assert_eq!(
            k.strip_prefix(&prefix),
            Some(sha.as_str()),
            "{k} holds {} bytes that are not its name",
            bytes.len()
        );
    }
    keys
}

#[test]
fn m14_launcher_killed_mid_upload_then_run_again_makes_one_vm_and_no_half_objects() {
    let w = World::new(WorldOpts::default());
    let big = noise(M14_BIG_BYTES);
    let big_key = format!("{}/blobs/{}", e2e::PREFIX, sha256_hex(&big));
    std::fs::write(w.project.path().join("data/big.bin"), &big).unwrap();

    // First launch, through a proxy that freezes every upload once 16 MiB went up: the
    // launcher is then inside the big blob's resumable upload, wherever the machine's
    // load put it in time.
    let proxy = FlakyProxy::start(w.gcs.port());
    proxy.hold_after(M14_HOLD_AFTER_BYTES);
    let log = w.home.path().join("first-launch.log");
    let mut launcher = KillOnDrop(
        w.cmd(&["train.py", "ok", "3", "1"])
            .env("STORAGE_EMULATOR_HOST", proxy.host())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("start cloudrun-launch"),
    );
    w.wait_for("the push to reach the proxy's hold", "-", || {
        if let Some(st) = launcher.0.try_wait().unwrap() {
            panic!(
                "the launcher ended ({st}) before the hold:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        proxy.held()
    });
    launcher.0.kill().unwrap();
    let st = launcher.0.wait().unwrap();
    assert!(!st.success(), "the launcher was not killed: {st}");
    // Its held connections close, as the dead process's sockets would; wait until the
    // proxy has cut them, so the store has seen the upload end short.
    proxy.release();
    w.wait_for("the proxy to cut the held upload", "-", || {
        proxy.cuts() >= 1
    });

    assert!(
        w.emu.calls_to("POST", "/instances").is_empty(),
        "an insert reached the emulator before the kill"
    );
    assert!(w.emu.instances().is_empty());
    let blobs = assert_blobs_whole(&w);
    assert!(
        !blobs.contains(&big_key),
        "the cut-off upload left an object"
    );
    // No run got as far as a spec (it is written after the push), so none can point at
    // a VM.
    let runs = w.list(&format!("{}/runs/", e2e::PREFIX));
    assert!(
        runs.iter().all(|k| !k.ends_with("/spec.json")),
        "a spec was written before the push finished: {runs:?}"
    );

    // Run again, straight to the store: one insert, one VM, the run succeeds. Had the cut
    // upload left a half object after the look above, this push would report it damaged
    // (and replace it).
    let (run, vm, out) = w.launch_with_output(&["ok", "3", "1"]);
    assert!(
        !text(&out).contains("damaged"),
        "the second push found a half object:\n{}",
        text(&out)
    );
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "succeeded", "{st}");
    w.wait_gone(&vm);
    let inserts = w.emu.calls_to("POST", "/instances");
    assert_eq!(inserts.len(), 1, "{inserts:?}");
    one_delete(&w, &vm);
    w.assert_outputs_in_store(&run, &vm);
    let blobs = assert_blobs_whole(&w);
    assert!(
        blobs.contains(&big_key),
        "the big file was not pushed: {blobs:?}"
    );
    let pulled = std::fs::read(w.vm_work(&vm).join("data/big.bin")).unwrap();
    assert!(pulled == big, "the VM got a different big.bin");
}
