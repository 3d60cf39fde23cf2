//! `cloudrun-launch doctor` against the emulators (Compute, Service Usage, Resource
//! Manager and IAM on the emulated Compute's port; fake-gcs-server for the bucket): a
//! healthy project passes every check; then each prerequisite broken alone makes its own
//! line fail with its fix, and the exit code says so. And a launch whose quota check
//! fails uploads nothing and creates nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::process::{Command, Output};

use cloudrun_testkit::FakeGcs;
use e2e::{text, World, WorldOpts, BUCKET, PREFIX};
use serde_json::Value;

/// The launcher's default image family (what `doctor` resolves with no setting).
const FAMILY: &str = cloudrun_launch::plan::DEFAULT_IMAGE_FAMILY;

/// `cloudrun-launch ARGS` with every API of the doctor pointed at the emulators.
fn doctor_cmd(w: &World, args: &[&str]) -> Command {
    let mut c = w.cmd(args);
    for api in ["SERVICEUSAGE", "CLOUDRESOURCEMANAGER", "IAM"] {
        c.env(
            format!("CLOUDSDK_API_ENDPOINT_OVERRIDES_{api}"),
            w.emu.api_root(),
        );
    }
    c
}

fn doctor(w: &World) -> Output {
    doctor_cmd(w, &["doctor"]).output().unwrap()
}

/// The status word of the line for check `name`, and its fix (the next line's `fix:`).
fn line(out: &Output, name: &str) -> (String, Option<String>) {
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = s.lines().collect();
    let i = lines
        .iter()
        .position(|l| {
            l.split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
                .starts_with(name)
        })
        .unwrap_or_else(|| panic!("no line for {name:?} in:\n{s}\n{}", text(out)));
    let status = lines[i]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let fix = lines
        .get(i + 1)
        .and_then(|l| l.trim_start().strip_prefix("fix: "))
        .map(str::to_string);
    (status, fix)
}

/// Exactly `name` fails (with a fix containing `fix_has`) and the exit code is 1.
fn fails_alone(out: &Output, name: &str, fix_has: &str) {
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{s}\n{}", text(out));
    let (status, fix) = line(out, name);
    assert_eq!(status, "fail", "{name}:\n{s}");
    let fix = fix.unwrap_or_else(|| panic!("{name} failed without a fix:\n{s}"));
    assert!(
        fix.contains(fix_has),
        "{name}: fix {fix:?} lacks {fix_has:?}\n{s}"
    );
    let failing: Vec<&str> = s.lines().filter(|l| l.starts_with("fail")).collect();
    assert_eq!(failing.len(), 1, "only {name} should fail:\n{s}");
}

#[test]
fn a_healthy_project_passes_every_check_in_text_and_json() {
    let w = World::new(WorldOpts::default());
    let out = doctor(&w);
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{s}\n{}", text(&out));
    for name in [
        "settings",
        "credentials",
        "api compute.googleapis.com",
        "api cloudbilling.googleapis.com",
        "project",
        "bucket",
        "bucket write",
        "service account",
        "vm self-delete",
        "attach service account",
        "gpu quota us-central1",
        "gpu quota global",
        "image",
        "zone us-central1-a",
        "bucket location",
    ] {
        assert_eq!(line(&out, name).0, "ok", "{name}:\n{s}");
    }
    assert!(
        s.contains(&w.emu.launcher_account()),
        "whose credentials:\n{s}"
    );
    assert!(s.contains("US-CENTRAL1"), "the bucket's location:\n{s}");
    // The probe object was deleted again.
    assert!(w.list(&format!("{PREFIX}/doctor/")).is_empty());

    let out = doctor_cmd(&w, &["doctor", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "ok"),
        "{v}"
    );
}

#[test]
fn each_prerequisite_broken_alone_fails_its_line_with_its_fix() {
    // API disabled.
    let w = World::new(WorldOpts::default());
    w.emu.disable_service("compute.googleapis.com");
    fails_alone(
        &doctor(&w),
        "api compute.googleapis.com",
        "gcloud services enable compute.googleapis.com --project test-proj",
    );

    // No permission to delete itself; then a custom role that grants it.
    let w = World::new(WorldOpts::default());
    let sa = format!("serviceAccount:{}", w.emu.default_service_account());
    w.emu.revoke_all_roles(&sa);
    fails_alone(
        &doctor(&w),
        "vm self-delete",
        &format!("--member={sa} --role=roles/compute.instanceAdmin.v1"),
    );
    let role = "projects/test-proj/roles/selfDelete";
    w.emu
        .define_custom_role(role, &["compute.instances.get", "compute.instances.delete"]);
    w.emu.grant_role(role, &sa);
    let out = doctor(&w);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(line(&out, "vm self-delete").0, "ok");

    // The caller may not attach the service account.
    let w = World::new(WorldOpts::default());
    w.emu.set_act_as(false);
    fails_alone(
        &doctor(&w),
        "attach service account",
        "--role=roles/iam.serviceAccountUser",
    );

    // Zero quota in the zone's region.
    let w = World::new(WorldOpts::default());
    w.emu
        .set_region_quota("us-central1", "NVIDIA_L4_GPUS", 0.0, 0.0);
    fails_alone(&doctor(&w), "gpu quota us-central1", "NVIDIA_L4_GPUS");

    // Quota below the GPU count: two L4s, one left.
    let w = World::new(WorldOpts::default());
    let toml = w.project.path().join("cloudrun.toml");
    let t = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, t.replacen("gpu = \"l4\"", "gpu = \"l4:2\"", 1)).unwrap();
    w.emu
        .set_region_quota("us-central1", "NVIDIA_L4_GPUS", 4.0, 3.0);
    let out = doctor(&w);
    fails_alone(&out, "gpu quota us-central1", "≥ 2");
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("1 of 4 NVIDIA_L4_GPUS left, the run needs 2"));

    // The bucket is missing.
    let w = World::new(WorldOpts::default());
    let out = doctor_cmd(&w, &["doctor"])
        .env("GCS_DIR", "gs://no-such-bucket/cr")
        .output()
        .unwrap();
    fails_alone(
        &out,
        "bucket",
        "gcloud storage buckets create gs://no-such-bucket --project test-proj --location us-central1",
    );

    // The bucket is on another continent.
    let mut w = World::new(WorldOpts::default());
    w.gcs = FakeGcs::start_in("EUROPE-WEST4");
    w.gcs.create_bucket(BUCKET);
    let out = doctor(&w);
    fails_alone(&out, "bucket location", "--location us-central1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("EUROPE-WEST4"));

    // The image family was retired; a deprecated one only warns.
    let w = World::new(WorldOpts::default());
    w.emu.retire_family(FAMILY);
    fails_alone(&doctor(&w), "image", "gcloud compute images list");
    let w = World::new(WorldOpts::default());
    w.emu.deprecate_family(FAMILY);
    let out = doctor(&w);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(line(&out, "image").0, "warn");

    // The zone does not offer the GPU: the fix names zones that do.
    let w = World::new(WorldOpts::default());
    w.emu.set_zone_gpus("us-central1-a", &["nvidia-tesla-t4"]);
    fails_alone(&doctor(&w), "zone us-central1-a", "--zone us-central1-b");

    // The VM's service account was deleted.
    let w = World::new(WorldOpts::default());
    w.emu
        .delete_service_account(&w.emu.default_service_account());
    fails_alone(
        &doctor(&w),
        "service account",
        "gcloud iam service-accounts create",
    );
}

#[test]
fn a_launch_whose_quota_check_fails_uploads_nothing_and_creates_nothing() {
    let w = World::new(WorldOpts::default());
    w.emu
        .set_region_quota("us-central1", "NVIDIA_L4_GPUS", 1.0, 1.0);
    let out = w.run(&["train.py", "ok", "1", "1"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        err.contains("0 of 1 NVIDIA_L4_GPUS left in us-central1")
            && err.contains("nothing was uploaded")
            && err.contains("quotas?project=test-proj"),
        "{err}"
    );
    assert!(
        w.emu.calls_to("POST", "/instances").is_empty(),
        "an insert was sent"
    );
    assert!(w.emu.instances().is_empty());
    let objects = w.list(&format!("{PREFIX}/"));
    assert!(objects.is_empty(), "uploaded: {objects:?}");
}

#[test]
fn a_launch_skips_a_zone_without_the_gpu_and_lands_in_the_next() {
    let w = World::new(WorldOpts {
        toml: "zones = [\"us-central1-a\", \"us-central1-b\"]\n".into(),
        ..WorldOpts::default()
    });
    w.emu.set_zone_gpus("us-central1-a", &["nvidia-tesla-t4"]);
    let (run, vm, out) = w.launch_with_output(&["ok", "1", "1"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("zone us-central1-a: skipped (does not offer nvidia-l4)"),
        "{err}"
    );
    let inserts = w.emu.calls_to("POST", "/instances");
    assert_eq!(inserts.len(), 1, "{inserts:?}");
    assert!(
        inserts[0].path.contains("/zones/us-central1-b/"),
        "{inserts:?}"
    );
    let st = w.wait_ended(&run, &vm);
    assert_eq!(e2e::reason(&st), "succeeded", "{st}");
    w.wait_gone(&vm);
}

#[test]
fn with_gclouds_active_account_the_credentials_line_names_its_email() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new(WorldOpts::default());
    let bin = w.home.path().join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let gcloud = bin.join("gcloud");
    std::fs::write(
        &gcloud,
        "#!/bin/sh\ncase \"$1 $2\" in\n  'config get-value') echo me@example.com ;;\n  *) echo ya29.from-gcloud ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&gcloud, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = doctor_cmd(&w, &["doctor"])
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env("PATH", path)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(line(&out, "credentials").0, "ok", "{s}\n{}", text(&out));
    assert!(
        s.lines()
            .any(|l| l.contains("credentials")
                && l.contains("me@example.com (gcloud's active account")),
        "{s}"
    );
}
