//! Whole flow with the real binaries on an emulated VM: `cloudrun-launch` creates the VM
//! in the Compute emulator, the VM boots the startup script, which fetches and starts the
//! real `cloudrun-agent`, which pulls the code from fake-gcs-server, runs `train.py`,
//! ships logs and checkpoints, applies its stop policies and deletes its own VM. Then
//! `status`, `logs` and `pull` read it all back. Fault-matrix items 1–8 (issue 4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use cloudrun_testkit::gce::{GceConfig, GpuMode};
use e2e::{reason, text, World, WorldOpts};

#[test]
fn happy_path_job_exits_outputs_verified_vm_deleted_once_after_final_sync() {
    let w = World::new(WorldOpts::default());
    let (run, vm) = w.launch(&["ok", "4", "1"]);
    let st = w.wait_ended(&run, &vm);
    w.wait_gone(&vm);
    assert_eq!(reason(&st), "succeeded", "{st}");
    assert!(st["receipt"].is_object(), "{st}");
    // The stand-in shows the VM's one L4 from the start: the wait finds it at once.
    let at = |k: &str| -> chrono::DateTime<chrono::Utc> {
        st[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k}: {st}"))
            .parse()
            .unwrap()
    };
    assert!(at("gpu_ready_at") <= at("job_started_at"), "{st}");
    eprintln!(
        "gpu wait with the GPU there: {} ms",
        (at("gpu_ready_at") - at("gpu_wait_started_at")).num_milliseconds()
    );
    let n = w.assert_outputs_in_store(&run, &vm);
    assert_eq!(n, 5, "4 checkpoints and the model");

    // Deleted exactly once, and only after the final status was written.
    let deletes = w.deletes(&vm);
    if deletes.len() != 1 {
        w.dump(&vm);
    }
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(w
        .emu
        .events()
        .iter()
        .any(|e| e.instance == vm && e.what.starts_with("deleted: deleted through the API")));

    let status = w.run(&["status", &run]);
    let s = text(&status);
    assert!(status.status.success(), "{s}");
    // The agent records its delete before the call; the delete may end it before it can
    // record the outcome, and then `status` confirms it with the Compute API.
    assert!(
        s.contains("job succeeded")
            && s.contains("receipt")
            && (s.contains(": gone") || s.contains(": deleted (the agent asked for its delete at")),
        "{s}"
    );
    let last = w.status(&run).unwrap();
    assert!(last["delete"]["request_id"].is_string(), "{last}");

    let logs = w.run(&["logs", &run]);
    let l = String::from_utf8_lossy(&logs.stdout).to_string();
    for i in 1..=4 {
        assert!(
            l.contains(&format!("step {i}\n")),
            "step {i} missing from the log:\n{l}"
        );
    }
    assert!(l.contains("done"), "{l}");

    let into = w.home.path().join("pulled");
    let pull = w.run(&["pull", &run, "--into", into.to_str().unwrap()]);
    assert!(pull.status.success(), "{}", text(&pull));
    for (rel, bytes) in w.vm_outputs(&vm) {
        let got = std::fs::read_to_string(into.join(&rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}\n{}", text(&pull)));
        assert!(got == bytes, "{rel} pulled differs");
    }
}

/// Every fault test: the VM is gone, deleted through the API exactly once, and every
/// checkpoint written on it is in the store.
fn assert_cleaned_up(w: &World, run: &str, vm: &str) {
    w.wait_gone(vm);
    let deletes = w.deletes(vm);
    if deletes.len() != 1 {
        w.dump(vm);
    }
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    w.assert_outputs_in_store(run, vm);
}

#[test]
fn m01_training_exits_non_zero_status_failed_outputs_kept_vm_deleted() {
    let w = World::new(WorldOpts::default());
    let (run, vm) = w.launch(&["fail", "3", "1"]);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "failed", "{st}");
    assert_eq!(st["end"]["exit_code"], 3, "{st}");
    assert_cleaned_up(&w, &run, &vm);
    let logs = String::from_utf8_lossy(&w.run(&["logs", &run]).stdout).to_string();
    assert!(logs.contains("boom"), "{logs}");
}

#[test]
fn m02_training_hangs_stall_window_stops_it() {
    let w = World::new(WorldOpts {
        policies: "stall_window_secs = 6".into(),
        ..WorldOpts::default()
    });
    let (run, vm) = w.launch(&["hang", "2", "1"]);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "stalled", "{st}");
    assert_cleaned_up(&w, &run, &vm);
}

#[test]
fn m03_gpu_idle_after_busy_stops_the_run() {
    let w = World::new(WorldOpts::default());
    let (run, vm) = w.launch(&["forever", "0", "1"]);
    w.wait_for("the job to run with a busy GPU", &vm, || {
        w.status(&run)
            .is_some_and(|s| s["phase"] == "running" && s["last_gpu"].is_object())
    });
    w.emu.set_gpu(GpuMode::Idle);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "gpu_idle", "{st}");
    assert_cleaned_up(&w, &run, &vm);
}

#[test]
fn m04_nvidia_smi_failing_for_the_first_20s_then_answering_starts_the_job_after_the_wait() {
    // This test used to run the job with nvidia-smi failing throughout and expect
    // `succeeded`. A GPU VM whose nvidia-smi fails before the job is now a GPU that is not
    // there yet (a driver still installing): the agent waits for it instead of training on
    // the CPU at GPU prices, and bills the wait as boot. "Failing never counts as idle"
    // moved to m04b, where nvidia-smi fails after the GPUs answered.
    let w = World::new(WorldOpts {
        cfg: GceConfig {
            gpu: GpuMode::Failing,
            ..GceConfig::default()
        },
        ..WorldOpts::default()
    });
    let (run, vm) = w.launch(&["ok", "3", "1"]);
    let mut started = None;
    w.wait_for("the agent to wait for the GPU", &vm, || {
        started = w.status(&run).and_then(|s| {
            (s["phase"] == "waiting_for_gpu")
                .then(|| s["gpu_wait_started_at"].as_str().map(str::to_string))
                .flatten()
        });
        started.is_some()
    });
    let started: chrono::DateTime<chrono::Utc> = started.unwrap().parse().unwrap();
    let answer_at = started + chrono::Duration::seconds(20);
    if let Ok(d) = (answer_at - chrono::Utc::now()).to_std() {
        std::thread::sleep(d);
    }
    let st = w.status(&run).unwrap();
    assert_eq!(
        st["phase"], "waiting_for_gpu",
        "still waiting after 20 s: {st}"
    );
    assert!(st["job_started_at"].is_null(), "{st}");
    w.emu.set_gpu(GpuMode::Busy);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "succeeded", "{st}");
    let at = |k: &str| -> chrono::DateTime<chrono::Utc> {
        st[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k}: {st}"))
            .parse()
            .unwrap()
    };
    assert!(
        at("gpu_ready_at") - at("gpu_wait_started_at") >= chrono::Duration::seconds(20),
        "{st}"
    );
    assert!(at("job_started_at") >= at("gpu_ready_at"), "{st}");
    // The receipt bills the wait before the job (its boot part), not as training.
    let r = &st["receipt"];
    assert!(r["setup_secs"].as_u64().unwrap() >= 20, "{st}");
    assert_cleaned_up(&w, &run, &vm);
    let status = text(&w.run(&["status", &run]));
    assert!(status.contains("until the GPUs answered"), "{status}");
}

#[test]
fn m04b_nvidia_smi_failing_mid_run_never_counts_as_idle_and_the_run_succeeds() {
    let w = World::new(WorldOpts::default());
    // Runs well past the 8 s idle window with every sample after the start failing.
    let (run, vm) = w.launch(&["ok", "14", "1"]);
    w.wait_for("the job to run with a busy GPU", &vm, || {
        w.status(&run)
            .is_some_and(|s| s["phase"] == "running" && s["gpu_ready_at"].is_string())
    });
    w.emu.set_gpu(GpuMode::Failing);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "succeeded", "{st}");
    assert!(
        !st["warnings"].to_string().contains("went missing"),
        "a failing nvidia-smi is unknown, not lost GPUs: {st}"
    );
    assert_cleaned_up(&w, &run, &vm);
}

/// A run that ended `gpu_unavailable`: no job process ever started (no line of its
/// output, no checkpoint, no start in the status or the agent's log), and the VM was
/// deleted exactly once.
fn assert_no_job_and_deleted_once(w: &World, run: &str, vm: &str, st: &serde_json::Value) {
    assert!(st["job_started_at"].is_null(), "{st}");
    assert!(st["gpu_ready_at"].is_null(), "{st}");
    w.wait_gone(vm);
    let deletes = w.deletes(vm);
    if deletes.len() != 1 {
        w.dump(vm);
    }
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(w.vm_outputs(vm).is_empty(), "the job wrote checkpoints");
    let logs = String::from_utf8_lossy(&w.run(&["logs", run]).stdout).to_string();
    assert!(!logs.contains("step 1"), "{logs}");
    let root = w.emu.vm_root(vm).unwrap();
    let agent_log =
        std::fs::read_to_string(root.join("var/lib/cloudrun/agent.log")).unwrap_or_default();
    assert!(!agent_log.contains("job started"), "{agent_log}");
}

#[test]
fn m18_nvidia_smi_failing_throughout_a_30s_window_ends_gpu_unavailable_vm_deleted_once() {
    let w = World::new(WorldOpts {
        cfg: GceConfig {
            gpu: GpuMode::Failing,
            ..GceConfig::default()
        },
        policies: "gpu_ready_secs = 30".into(),
        ..WorldOpts::default()
    });
    let (run, vm) = w.launch(&["ok", "3", "1"]);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "gpu_unavailable", "{st}");
    let msg = st["end"]["message"].as_str().unwrap();
    assert!(
        msg.contains("1 × nvidia-l4")
            && msg.contains("couldn't communicate with the NVIDIA driver"),
        "the final status says what nvidia-smi answered last: {msg}"
    );
    assert_no_job_and_deleted_once(&w, &run, &vm, &st);
    let status = w.run(&["status", &run]);
    let s = text(&status);
    assert!(
        s.contains("GPUs unavailable") && s.contains("never answered"),
        "{s}"
    );
}

#[test]
fn m19_one_gpu_answering_for_a_two_gpu_plan_ends_gpu_unavailable_1_of_2() {
    let w = World::new(WorldOpts {
        cfg: GceConfig {
            gpus_visible: Some(1),
            ..GceConfig::default()
        },
        policies: "gpu_ready_secs = 10".into(),
        ..WorldOpts::default()
    });
    let (run, vm, _) = w.launch_with_flags(&["--gpu", "l4:2"], &["ok", "3", "1"]);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "gpu_unavailable", "{st}");
    let msg = st["end"]["message"].as_str().unwrap();
    assert!(msg.contains("1 of 2"), "{msg}");
    assert_no_job_and_deleted_once(&w, &run, &vm, &st);
}

/// The quoted price, from the spec inside a `--dry-run` body.
fn quoted_usd_per_hour(w: &World) -> f64 {
    let out = w.run(&["--dry-run", "train.py"]);
    let body: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let items = body["metadata"]["items"].as_array().unwrap();
    let spec = items.iter().find(|i| i["key"] == "cloudrun-spec").unwrap()["value"]
        .as_str()
        .unwrap();
    let spec: serde_json::Value = serde_json::from_str(spec).unwrap();
    spec["price"]["usd_per_hour"].as_f64().unwrap()
}

#[test]
fn m05_budget_reached_stops_the_run() {
    let w = World::new(WorldOpts::default());
    // The smallest budget the launcher takes: just over Compute's one-minute minimum.
    // A budget needs a complete price: the VM part of g2 is not in the built-in table.
    std::fs::write(
        w.project.path().join("prices.toml"),
        "taken = \"2026-11-01\"\n[machine.g2-standard-8]\non_demand = 0.30\n",
    )
    .unwrap();
    let toml = std::fs::read_to_string(w.project.path().join("cloudrun.toml")).unwrap();
    std::fs::write(
        w.project.path().join("cloudrun.toml"),
        format!("prices = \"prices.toml\"\n{toml}"),
    )
    .unwrap();
    let budget = quoted_usd_per_hour(&w) * 62.0 / 3600.0;
    let toml = std::fs::read_to_string(w.project.path().join("cloudrun.toml")).unwrap();
    std::fs::write(
        w.project.path().join("cloudrun.toml"),
        format!("budget = {budget}\n{toml}"),
    )
    .unwrap();
    let (run, vm) = w.launch(&["forever", "0", "1"]);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "budget", "{st}");
    assert!(
        st["receipt"]["total_usd"].as_f64().unwrap() <= budget * 1.2,
        "{st}"
    );
    assert_cleaned_up(&w, &run, &vm);
}

#[test]
fn m06_max_time_reached_stops_the_run() {
    let w = World::new(WorldOpts {
        toml: "zones = [\"us-central1-a\"]\nmax_time = \"30s\"\n".into(),
        ..WorldOpts::default()
    });
    let (run, vm) = w.launch(&["forever", "0", "1"]);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "max_time", "{st}");
    assert_cleaned_up(&w, &run, &vm);
}

#[test]
fn m07_preemption_notice_syncs_changed_files_and_ends_preempted() {
    let w = World::new(WorldOpts {
        toml: "zones = [\"us-central1-a\"]\nspot = true\n".into(),
        // A long output interval: only the final sync can have the last checkpoints.
        policies: String::new(),
        ..WorldOpts::default()
    });
    let (run, vm) = w.launch(&["forever", "0", "1"]);
    w.wait_for("a few checkpoints", &vm, || {
        w.status(&run).is_some_and(|s| s["phase"] == "running") && w.vm_outputs(&vm).len() >= 3
    });
    let t = std::time::Instant::now();
    w.emu.preempt(&vm);
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "preempted", "{st}");
    // Everything on the disk when the VM went down is in the store (the notice is 30 s).
    w.wait_gone(&vm);
    assert!(
        t.elapsed().as_secs() <= 60,
        "the VM outlived the 30 s notice by far"
    );
    w.assert_outputs_in_store(&run, &vm);
}

#[test]
fn m20_agent_restarted_during_the_gpu_wait_keeps_counting_the_first_window() {
    // A driver install that reboots the VM: the agent dies mid-wait and the emulated
    // `Restart=always` starts it again; the window began before, and still ends on time.
    let w = World::new(WorldOpts {
        cfg: GceConfig {
            gpu: GpuMode::Failing,
            ..GceConfig::default()
        },
        policies: "gpu_ready_secs = 30".into(),
        ..WorldOpts::default()
    });
    let (run, vm) = w.launch(&["ok", "3", "1"]);
    let mut first = None;
    w.wait_for("the agent to wait for the GPU", &vm, || {
        first = w.status(&run).and_then(|s| {
            (s["phase"] == "waiting_for_gpu")
                .then(|| s["gpu_wait_started_at"].as_str().map(str::to_string))
                .flatten()
        });
        first.is_some()
    });
    let root = w.emu.vm_root(&vm).unwrap();
    let pid = std::fs::read_to_string(root.join("var/lib/cloudrun/agent.pid")).unwrap();
    let st = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(st.success());
    let st = w.wait_ended(&run, &vm);
    assert_eq!(reason(&st), "gpu_unavailable", "{st}");
    assert!(
        w.emu
            .events()
            .iter()
            .any(|e| e.instance.contains(&vm) && e.what.contains("Restart=always")),
        "the agent was not restarted"
    );
    assert_eq!(
        st["gpu_wait_started_at"].as_str(),
        first.as_deref(),
        "the restarted agent kept the first window: {st}"
    );
    let agent_log =
        std::fs::read_to_string(root.join("var/lib/cloudrun/agent.log")).unwrap_or_default();
    assert!(
        agent_log.contains("still waiting for 1 × nvidia-l4"),
        "{agent_log}"
    );
    assert_no_job_and_deleted_once(&w, &run, &vm, &st);
}
