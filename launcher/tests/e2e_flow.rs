//! Whole flow with the real binaries on an emulated VM: `cloudrun-launch` creates the VM
//! in the Compute emulator, the VM boots the startup script, which fetches and starts the
//! real `cloudrun-agent`, which pulls the code from fake-gcs-server, runs `train.py`,
//! ships logs and checkpoints, applies its stop policies and deletes its own VM. Then
//! `status`, `logs` and `pull` read it all back. Fault-matrix items 1–8 (issue 4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use e2e::{reason, text, World, WorldOpts};

#[test]
fn happy_path_job_exits_outputs_verified_vm_deleted_once_after_final_sync() {
    let w = World::new(WorldOpts::default());
    let (run, vm) = w.launch(&["ok", "4", "1"]);
    let st = w.wait_ended(&run, &vm);
    w.wait_gone(&vm);
    assert_eq!(reason(&st), "succeeded", "{st}");
    assert!(st["receipt"].is_object(), "{st}");
    let n = w.assert_outputs_in_store(&run, &vm);
    assert_eq!(n, 5, "4 checkpoints and the model");

    // Deleted exactly once, and only after the final status was written.
    let deletes = w.deletes(&vm);
    if deletes.len() != 1 {
        w.dump(&vm);
    }
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(w.emu.events().iter().any(|e| e.instance == vm && e.what.starts_with("deleted: deleted through the API")));

    let status = w.run(&["status", &run]);
    let s = text(&status);
    assert!(status.status.success(), "{s}");
    assert!(s.contains("job succeeded") && s.contains("receipt") && s.contains("gone"), "{s}");

    let logs = w.run(&["logs", &run]);
    let l = String::from_utf8_lossy(&logs.stdout).to_string();
    for i in 1..=4 {
        assert!(l.contains(&format!("step {i}\n")), "step {i} missing from the log:\n{l}");
    }
    assert!(l.contains("done"), "{l}");

    let into = w.home.path().join("pulled");
    let pull = w.run(&["pull", &run, "--into", into.to_str().unwrap()]);
    assert!(pull.status.success(), "{}", text(&pull));
    for (rel, bytes) in w.vm_outputs(&vm) {
        let got = std::fs::read_to_string(into.join(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}\n{}", text(&pull)));
        assert!(got == bytes, "{rel} pulled differs");
    }
}
