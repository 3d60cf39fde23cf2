//! The Compute Engine emulator against the real service's documented behaviour: its
//! responses parse as `google-cloud-compute`'s types (strictly: an unknown or mistyped
//! field fails), operations progress over time and carry late errors, `requestId`s
//! de-duplicate, fingerprints are checked, the metadata server insists on its header and
//! long-polls with ETags, and a booted VM's processes die with the instance.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cloudrun_testkit::gce::{GceConfig, GceEmulator, ZoneState};
use cloudrun_testkit::http_with;
use serde_json::{json, Value};

/// Generous limit for anything the emulator does over time on a loaded machine.
const SETTLE_SECS: u64 = 30;

const AUTH: (&str, &str) = ("Authorization", "Bearer test");

fn call(e: &GceEmulator, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, _, text) = http_with(method, e.port(), path, &[AUTH], body).unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn body(name: &str, zone: &str, script: Option<&str>, max_run: u64) -> String {
    let mut items = vec![json!({"key": "cloudrun-spec", "value": "{}"})];
    if let Some(s) = script {
        items.push(json!({"key": "startup-script", "value": s}));
    }
    json!({
        "name": name,
        "machineType": format!("zones/{zone}/machineTypes/g2-standard-4"),
        "disks": [{"boot": true, "autoDelete": true, "type": "PERSISTENT", "mode": "READ_WRITE",
            "initializeParams": {"sourceImage": "projects/deeplearning-platform-release/global/images/family/common-cu128",
                "diskSizeGb": "100", "diskType": format!("zones/{zone}/diskTypes/pd-balanced")}}],
        "networkInterfaces": [{"network": "global/networks/default",
            "accessConfigs": [{"name": "external-nat", "type": "ONE_TO_ONE_NAT"}]}],
        "scheduling": {"onHostMaintenance": "TERMINATE", "automaticRestart": false, "provisioningModel": "SPOT",
            "instanceTerminationAction": "DELETE", "maxRunDuration": {"seconds": max_run.to_string()}},
        "metadata": {"items": items},
        "serviceAccounts": [{"email": "default", "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}],
        "labels": {"cloudrun-managed": "true", "cloudrun-run": "r1"},
    })
    .to_string()
}

fn zpath(zone: &str, rest: &str) -> String {
    format!("/compute/v1/projects/test-proj/zones/{zone}/{rest}")
}

fn wait_done(e: &GceEmulator, zone: &str, op: &Value) -> Value {
    let name = op["name"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(SETTLE_SECS);
    loop {
        let (st, v) = call(
            e,
            "POST",
            &zpath(zone, &format!("operations/{name}/wait")),
            "",
        );
        assert_eq!(st, 200, "{v}");
        if v["status"] == "DONE" {
            return v;
        }
        assert!(Instant::now() < deadline, "operation {name} never finished");
    }
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(SETTLE_SECS);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CLOUDRUN_TEST_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = cloudrun_testkit::venv_dir().join("bin/python");
    p.exists().then_some(p)
}

const VALIDATE: &str = r#"
import json, sys
from google.cloud import compute_v1
bad = 0
for arg in sys.argv[1:]:
    typ, path = arg.split("=", 1)
    text = open(path).read()
    try:
        getattr(compute_v1, typ).from_json(text)  # strict: unknown fields are errors
    except Exception as e:
        bad += 1
        print(f"{typ} {path}: {e}")
sys.exit(1 if bad else 0)
"#;

#[test]
fn responses_parse_as_google_cloud_compute_types() {
    let Some(py) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no python with google-cloud-compute: run scripts/setup-test-env.sh or set CLOUDRUN_TEST_PYTHON"
        );
        eprintln!("SKIPPED: no .venv-emu python (scripts/setup-test-env.sh)");
        return;
    };
    let e = GceEmulator::start(GceConfig {
        boot: false,
        ..GceConfig::default()
    });
    e.set_zone(
        "us-east1-b",
        ZoneState::QuotaExceeded("NVIDIA_L4_GPUS".into()),
    );
    let dir = cloudrun_testkit::TempDir::new("schema");
    let mut docs: Vec<(&str, Value)> = Vec::new();
    let (_, op) = call(
        &e,
        "POST",
        &zpath(
            "us-central1-a",
            "instances?requestId=0d9f1c2e-1111-4222-8333-444455556666",
        ),
        &body("vm-a", "us-central1-a", None, 3600),
    );
    docs.push(("Operation", op.clone()));
    docs.push(("Operation", wait_done(&e, "us-central1-a", &op)));
    let (_, inst) = call(&e, "GET", &zpath("us-central1-a", "instances/vm-a"), "");
    docs.push(("Instance", inst));
    let (_, list) = call(
        &e,
        "GET",
        &zpath(
            "us-central1-a",
            "instances?filter=labels.cloudrun-managed%20%3D%20true",
        ),
        "",
    );
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    docs.push(("InstanceList", list));
    let (_, agg) = call(
        &e,
        "GET",
        "/compute/v1/projects/test-proj/aggregated/instances",
        "",
    );
    docs.push(("InstanceAggregatedList", agg));
    let (_, img) = call(
        &e,
        "GET",
        "/compute/v1/projects/deeplearning-platform-release/global/images/family/common-cu128",
        "",
    );
    docs.push(("Image", img));
    let (_, qop) = call(
        &e,
        "POST",
        &zpath("us-east1-b", "instances"),
        &body("vm-b", "us-east1-b", None, 3600),
    );
    let qdone = wait_done(&e, "us-east1-b", &qop);
    assert_eq!(
        qdone["error"]["errors"][0]["code"], "QUOTA_EXCEEDED",
        "{qdone}"
    );
    docs.push(("Operation", qdone));
    let (_, del) = call(
        &e,
        "DELETE",
        &zpath(
            "us-central1-a",
            "instances/vm-a?requestId=0d9f1c2e-2222-4222-8333-444455556666",
        ),
        "",
    );
    docs.push(("Operation", del));
    // An instance put there directly, and one a stockout left behind, read as the API's.
    e.add_instance(
        "us-central1-b",
        "vm-added",
        "RUNNING",
        &[("cloudrun-managed", "true")],
        "2026-11-26T04:00:00.000-08:00",
    );
    let (_, added) = call(&e, "GET", &zpath("us-central1-b", "instances/vm-added"), "");
    assert_eq!(added["status"], "RUNNING", "{added}");
    docs.push(("Instance", added));
    e.set_zone("us-west1-a", ZoneState::OutOfCapacityLeavingInstance);
    let (_, sop) = call(
        &e,
        "POST",
        &zpath("us-west1-a", "instances"),
        &body("vm-c", "us-west1-a", None, 3600),
    );
    wait_done(&e, "us-west1-a", &sop);
    let (_, left) = call(&e, "GET", &zpath("us-west1-a", "instances/vm-c"), "");
    docs.push(("Instance", left));

    let mut args = Vec::new();
    for (n, (typ, v)) in docs.iter().enumerate() {
        let p = dir.path().join(format!("{n}-{typ}.json"));
        std::fs::write(&p, v.to_string()).unwrap();
        args.push(format!("{typ}={}", p.display()));
    }
    let out = Command::new(py)
        .arg("-c")
        .arg(VALIDATE)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the emulator drifted from Google's schema:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn operations_progress_late_errors_request_ids_and_envelopes() {
    let e = GceEmulator::start(GceConfig {
        boot: false,
        ..GceConfig::default()
    });
    e.set_zone("us-west1-a", ZoneState::OutOfCapacity);
    let (st, v) = http_with(
        "GET",
        e.port(),
        &zpath("us-central1-a", "instances/x"),
        &[],
        "",
    )
    .map(|(s, _, b)| (s, b))
    .unwrap();
    assert_eq!(st, 401, "{v}");

    let path = zpath(
        "us-central1-a",
        "instances?requestId=aaaaaaaa-1111-4222-8333-444455556666",
    );
    let (st, op) = call(
        &e,
        "POST",
        &path,
        &body("vm-a", "us-central1-a", None, 3600),
    );
    assert_eq!(st, 200);
    assert_eq!(op["status"], "PENDING");
    assert!(op["id"].is_string(), "int64 as a string: {op}");
    // A retry with the same requestId is the same operation, not a second VM or a 409.
    let (st, again) = call(
        &e,
        "POST",
        &path,
        &body("vm-a", "us-central1-a", None, 3600),
    );
    assert_eq!((st, &again["name"]), (200, &op["name"]));
    // Another requestId for the same name is a conflict.
    let (st, conflict) = call(
        &e,
        "POST",
        &zpath("us-central1-a", "instances"),
        &body("vm-a", "us-central1-a", None, 3600),
    );
    assert_eq!(st, 409);
    assert_eq!(conflict["error"]["errors"][0]["reason"], "alreadyExists");
    let done = wait_done(&e, "us-central1-a", &op);
    assert!(done.get("error").is_none(), "{done}");
    let (_, inst) = call(&e, "GET", &zpath("us-central1-a", "instances/vm-a"), "");
    assert_eq!(inst["status"], "RUNNING");
    assert_eq!(inst["disks"][0]["diskSizeGb"], "100");

    // Stock-outs arrive late, inside a DONE operation, and leave no instance.
    let (st, op) = call(
        &e,
        "POST",
        &zpath("us-west1-a", "instances"),
        &body("vm-w", "us-west1-a", None, 3600),
    );
    assert_eq!(st, 200);
    let done = wait_done(&e, "us-west1-a", &op);
    assert_eq!(
        done["error"]["errors"][0]["code"],
        "ZONE_RESOURCE_POOL_EXHAUSTED"
    );
    assert_eq!(done["httpErrorStatusCode"], 503);
    assert_eq!(
        call(&e, "GET", &zpath("us-west1-a", "instances/vm-w"), "").0,
        404
    );

    // setMetadata: a stale fingerprint is 412; the current one works.
    let (st, stale) = call(
        &e,
        "POST",
        &zpath("us-central1-a", "instances/vm-a/setMetadata"),
        r#"{"fingerprint":"old=","items":[]}"#,
    );
    assert_eq!(st, 412);
    assert_eq!(stale["error"]["errors"][0]["reason"], "conditionNotMet");
    let fp = inst["metadata"]["fingerprint"].as_str().unwrap();
    let (st, op) = call(
        &e,
        "POST",
        &zpath("us-central1-a", "instances/vm-a/setMetadata"),
        &json!({"fingerprint": fp, "items": [{"key":"a","value":"b"}]}).to_string(),
    );
    assert_eq!(st, 200);
    wait_done(&e, "us-central1-a", &op);
    let (_, inst2) = call(&e, "GET", &zpath("us-central1-a", "instances/vm-a"), "");
    assert_ne!(
        inst2["metadata"]["fingerprint"],
        inst["metadata"]["fingerprint"]
    );

    // Injected faults, then the call works; everything is recorded.
    e.fail_next("GET", "/instances/vm-a", 503, 2);
    assert_eq!(
        call(&e, "GET", &zpath("us-central1-a", "instances/vm-a"), "").0,
        503
    );
    assert_eq!(
        call(&e, "GET", &zpath("us-central1-a", "instances/vm-a"), "").0,
        503
    );
    assert_eq!(
        call(&e, "GET", &zpath("us-central1-a", "instances/vm-a"), "").0,
        200
    );

    // Delete: 404 afterwards, and the same requestId replays the first operation.
    let dpath = zpath(
        "us-central1-a",
        "instances/vm-a?requestId=bbbbbbbb-1111-4222-8333-444455556666",
    );
    let (_, d1) = call(&e, "DELETE", &dpath, "");
    wait_done(&e, "us-central1-a", &d1);
    let (st, d2) = call(&e, "DELETE", &dpath, "");
    assert_eq!((st, &d2["name"]), (200, &d1["name"]));
    let (st, nf) = call(&e, "DELETE", &zpath("us-central1-a", "instances/vm-a"), "");
    assert_eq!(st, 404);
    assert_eq!(nf["error"]["errors"][0]["reason"], "notFound");
    assert_eq!(e.calls_to("DELETE", "/instances/vm-a").len(), 3);
}

#[test]
fn the_metadata_server_wants_its_header_and_long_polls_with_etags() {
    let e = GceEmulator::start(GceConfig {
        boot: false,
        ..GceConfig::default()
    });
    let (_, op) = call(
        &e,
        "POST",
        &zpath("us-central1-a", "instances"),
        &body("vm-m", "us-central1-a", None, 3600),
    );
    wait_done(&e, "us-central1-a", &op);
    let host = e.instance("vm-m").unwrap().metadata_host;
    let port: u16 = host.rsplit(':').next().unwrap().parse().unwrap();
    let md = |path: &str| {
        http_with(
            "GET",
            port,
            &format!("/computeMetadata/v1/{path}"),
            &[("Metadata-Flavor", "Google")],
            "",
        )
        .unwrap()
    };
    let (st, h, _) = http_with("GET", port, "/computeMetadata/v1/instance/name", &[], "").unwrap();
    assert_eq!(st, 403);
    assert!(h
        .iter()
        .any(|(k, v)| k == "metadata-flavor" && v == "Google"));
    let (st, h, name) = md("instance/name");
    assert_eq!((st, name.as_str()), (200, "vm-m"));
    assert!(h
        .iter()
        .any(|(k, v)| k == "metadata-flavor" && v == "Google"));
    assert_eq!(
        md("instance/zone").2,
        "projects/123456789012/zones/us-central1-a"
    );
    assert_eq!(md("project/project-id").2, "test-proj");
    assert_eq!(md("instance/attributes/cloudrun-spec").2, "{}");
    assert_eq!(md("instance/attributes/missing").0, 404);
    let all: Value = serde_json::from_str(&md("instance/attributes/?recursive=true").2).unwrap();
    assert_eq!(all["cloudrun-spec"], "{}");
    let tok: Value =
        serde_json::from_str(&md("instance/service-accounts/default/token").2).unwrap();
    assert!(
        tok["access_token"].is_string()
            && tok["expires_in"].is_number()
            && tok["token_type"] == "Bearer"
    );

    let (_, h, v) = md("instance/preempted");
    assert_eq!(v, "FALSE");
    let etag = h.iter().find(|(k, _)| k == "etag").unwrap().1.clone();
    // Unchanged: the long poll hangs for timeout_sec and returns the same value.
    let t = Instant::now();
    let (_, _, v) = md(&format!(
        "instance/preempted?wait_for_change=true&last_etag={etag}&timeout_sec=1"
    ));
    assert_eq!(v, "FALSE");
    assert!(t.elapsed() >= Duration::from_millis(900));
    // A flip wakes a hanging poll.
    let e2 = std::sync::Arc::new(e);
    let flipper = {
        let e2 = e2.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            e2.preempt("vm-m");
        })
    };
    let (_, _, v) = md(&format!(
        "instance/preempted?wait_for_change=true&last_etag={etag}&timeout_sec=30"
    ));
    assert_eq!(v, "TRUE");
    flipper.join().unwrap();
    // A stale ETag answers at once.
    let (_, _, v) = md(&format!(
        "instance/preempted?wait_for_change=true&last_etag={etag}&timeout_sec=30"
    ));
    assert_eq!(v, "TRUE");
}

#[test]
fn a_booted_vm_runs_its_startup_script_and_dies_with_the_instance() {
    let e = GceEmulator::start(GceConfig {
        restart_after: None,
        max_run_duration_cap: Some(Duration::from_secs(4)),
        ..GceConfig::default()
    });
    // Two detached descendants, one in its own session, like the agent and its job.
    let script =
        "#!/bin/bash\nsleep 600 &\nsetsid sleep 600 &\necho \"md=$GCE_METADATA_HOST\"\nwait\n";
    let (_, op) = call(
        &e,
        "POST",
        &zpath("us-central1-a", "instances"),
        &body("vm-boot", "us-central1-a", Some(script), 3600),
    );
    wait_done(&e, "us-central1-a", &op);
    until("the startup script's processes", || {
        e.vm_pids("vm-boot").len() >= 3
    });
    let host = e.instance("vm-boot").unwrap().metadata_host;
    until("the serial output", || {
        e.serial_output("vm-boot").contains(&format!("md={host}"))
    });
    let pids = e.vm_pids("vm-boot");
    let (_, d) = call(
        &e,
        "DELETE",
        &zpath("us-central1-a", "instances/vm-boot"),
        "",
    );
    wait_done(&e, "us-central1-a", &d);
    assert!(e.instance("vm-boot").is_none());
    for p in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}/environ")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|s| s.contains(") Z"))
                    .unwrap_or(true),
            "pid {p} survived the delete"
        );
    }

    // The (compressed) maxRunDuration deadline deletes a VM nobody deletes.
    let (_, op) = call(
        &e,
        "POST",
        &zpath("us-central1-a", "instances"),
        &body("vm-deadline", "us-central1-a", Some(script), 3600),
    );
    wait_done(&e, "us-central1-a", &op);
    until("the deadline to delete the VM", || {
        e.instance("vm-deadline").is_none()
    });
    assert!(e
        .events()
        .iter()
        .any(|ev| ev.instance.ends_with("vm-deadline") && ev.what.contains("maxRunDuration")));
    assert!(e.calls_to("DELETE", "/instances/vm-deadline").is_empty());
}

const VALIDATE_ANY: &str = r#"
import sys
from google.cloud import compute_v1, service_usage_v1
from google.iam.v1 import policy_pb2, iam_policy_pb2
from google.protobuf import json_format
bad = 0
for arg in sys.argv[1:]:
    typ, path = arg.split("=", 1)
    mod, name = typ.split(".", 1)
    text = open(path).read()
    try:
        if mod == "iam":
            cls = getattr(policy_pb2, name, None) or getattr(iam_policy_pb2, name)
            json_format.Parse(text, cls())  # strict: unknown fields are errors
        else:
            getattr({"compute": compute_v1, "serviceusage": service_usage_v1}[mod], name).from_json(text)
    except Exception as e:
        bad += 1
        print(f"{typ} {path}: {e}")
sys.exit(1 if bad else 0)
"#;

/// The prerequisite endpoints (`projects.get`, `regions.get`, `acceleratorTypes`, Service
/// Usage, Resource Manager, IAM) answer in Google's shapes, and each switch breaks
/// exactly the answer it names.
#[test]
fn prerequisite_endpoints_answer_in_googles_shapes_and_each_switch_breaks_one() {
    let e = GceEmulator::start(GceConfig {
        boot: false,
        ..GceConfig::default()
    });
    let sa = e.default_service_account();
    let p = "/compute/v1/projects/test-proj";
    let mut docs: Vec<(&str, Value)> = Vec::new();
    let (st, proj) = call(&e, "GET", p, "");
    assert_eq!(st, 200, "{proj}");
    assert_eq!(proj["defaultServiceAccount"], sa.as_str());
    assert_eq!(proj["id"], "123456789012", "uint64 as a string");
    docs.push(("compute.Project", proj.clone()));
    let (_, region) = call(&e, "GET", &format!("{p}/regions/us-central1"), "");
    let quota = |v: &Value, m: &str| {
        v["quotas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["metric"] == m)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(quota(&region, "NVIDIA_L4_GPUS")["limit"], 8.0, "{region}");
    docs.push(("compute.Region", region));
    let (_, list) = call(&e, "GET", &zpath("us-central1-a", "acceleratorTypes"), "");
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "nvidia-l4"));
    docs.push(("compute.AcceleratorTypeList", list));
    e.set_zone_gpus("us-east1-c", &[]);
    let (_, agg) = call(&e, "GET", &format!("{p}/aggregated/acceleratorTypes"), "");
    assert!(
        agg["items"]["zones/us-east1-c"]["warning"].is_object(),
        "{agg}"
    );
    docs.push(("compute.AcceleratorTypeAggregatedList", agg));
    e.deprecate_family("common-cu121");
    let (_, img) = call(
        &e,
        "GET",
        "/compute/v1/projects/deeplearning-platform-release/global/images/family/common-cu121",
        "",
    );
    assert_eq!(img["deprecated"]["state"], "DEPRECATED", "{img}");
    docs.push(("compute.Image", img));
    let (_, svc) = call(
        &e,
        "GET",
        "/v1/projects/test-proj/services/compute.googleapis.com",
        "",
    );
    assert_eq!(svc["state"], "ENABLED");
    docs.push(("serviceusage.Service", svc));
    let (st, policy) = call(
        &e,
        "POST",
        "/v3/projects/test-proj:getIamPolicy",
        r#"{"options":{"requestedPolicyVersion":3}}"#,
    );
    assert_eq!(st, 200, "{policy}");
    let member = format!("serviceAccount:{sa}");
    let holds = |pol: &Value| {
        pol["bindings"].as_array().unwrap().iter().any(|b| {
            b["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == &member)
        })
    };
    assert!(holds(&policy), "{policy}");
    docs.push(("iam.Policy", policy));
    let test_path = format!("/v1/projects/test-proj/serviceAccounts/{sa}:testIamPermissions");
    let perms = r#"{"permissions":["iam.serviceAccounts.actAs"]}"#;
    let (_, granted) = call(&e, "POST", &test_path, perms);
    assert_eq!(granted["permissions"][0], "iam.serviceAccounts.actAs");
    docs.push(("iam.TestIamPermissionsResponse", granted));
    // The request bodies the launcher sends, as Google's request types.
    docs.push((
        "iam.GetIamPolicyRequest",
        json!({"resource": "projects/test-proj", "options": {"requestedPolicyVersion": 3}}),
    ));
    docs.push((
        "iam.TestIamPermissionsRequest",
        json!({"resource": format!("projects/test-proj/serviceAccounts/{sa}"), "permissions": ["iam.serviceAccounts.actAs"]}),
    ));

    // Each switch breaks its one answer.
    e.disable_service("compute.googleapis.com");
    let (_, svc) = call(
        &e,
        "GET",
        "/v1/projects/test-proj/services/compute.googleapis.com",
        "",
    );
    assert_eq!(svc["state"], "DISABLED");
    let (_, other) = call(
        &e,
        "GET",
        "/v1/projects/test-proj/services/cloudbilling.googleapis.com",
        "",
    );
    assert_eq!(other["state"], "ENABLED");
    e.set_region_quota("us-central1", "NVIDIA_L4_GPUS", 0.0, 0.0);
    let (_, region) = call(&e, "GET", &format!("{p}/regions/us-central1"), "");
    assert_eq!(quota(&region, "NVIDIA_L4_GPUS")["limit"], 0.0);
    let (_, east) = call(&e, "GET", &format!("{p}/regions/us-east1"), "");
    assert_eq!(quota(&east, "NVIDIA_L4_GPUS")["limit"], 8.0);
    e.set_project_quota("GPUS_ALL_REGIONS", 1.0, 1.0);
    let (_, proj) = call(&e, "GET", p, "");
    assert_eq!(quota(&proj, "GPUS_ALL_REGIONS")["usage"], 1.0);
    e.set_zone_gpus("us-central1-b", &["nvidia-tesla-t4"]);
    let (_, list) = call(&e, "GET", &zpath("us-central1-b", "acceleratorTypes"), "");
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let (st, _) = call(&e, "GET", &zpath("us-central1-z", "acceleratorTypes"), "");
    assert_eq!(st, 404, "a zone that does not exist");
    e.revoke_all_roles(&member);
    let (_, policy) = call(&e, "POST", "/v3/projects/test-proj:getIamPolicy", "{}");
    assert!(!holds(&policy), "{policy}");
    e.set_act_as(false);
    let (_, denied) = call(&e, "POST", &test_path, perms);
    assert_eq!(denied, json!({}), "no permission granted");
    docs.push(("iam.TestIamPermissionsResponse", denied));
    e.delete_service_account(&sa);
    let (st, _) = call(
        &e,
        "GET",
        &format!("/v1/projects/test-proj/serviceAccounts/{sa}"),
        "",
    );
    assert_eq!(st, 404);
    e.retire_family("common-cu121");
    let (st, gone) = call(
        &e,
        "GET",
        "/compute/v1/projects/deeplearning-platform-release/global/images/family/common-cu121",
        "",
    );
    assert_eq!((st, gone["error"]["code"].clone()), (404, json!(404)));

    let Some(py) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no python with Google's types: run scripts/setup-test-env.sh or set CLOUDRUN_TEST_PYTHON"
        );
        eprintln!("SKIPPED the schema half: no .venv-emu python (scripts/setup-test-env.sh)");
        return;
    };
    let dir = cloudrun_testkit::TempDir::new("prereq-schema");
    let mut args = Vec::new();
    for (n, (typ, v)) in docs.iter().enumerate() {
        let path = dir.path().join(format!("{n}.json"));
        std::fs::write(&path, v.to_string()).unwrap();
        args.push(format!("{typ}={}", path.display()));
    }
    let out = Command::new(py)
        .arg("-c")
        .arg(VALIDATE_ANY)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the prerequisite endpoints drifted from Google's types:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn lost_replies_leftovers_and_added_instances_behave_as_the_api_does() {
    let e = GceEmulator::start(GceConfig {
        boot: false,
        op_pending: Duration::from_millis(20),
        op_running: Duration::from_millis(20),
        shutdown_grace: Duration::from_millis(20),
        ..GceConfig::default()
    });
    // A lost reply: the insert lands, the caller sees a 503, and its retry with the same
    // requestId gets the first Operation, not a second VM.
    e.lose_next_reply("POST", "/zones/us-central1-a/instances", 503, 1);
    let insert = zpath("us-central1-a", "instances?requestId=rid-lost");
    let (st, v) = call(
        &e,
        "POST",
        &insert,
        &body("vm-l", "us-central1-a", None, 3600),
    );
    assert_eq!(
        (st, v["error"]["errors"][0]["reason"].clone()),
        (503, json!("backendError"))
    );
    let (st, op) = call(
        &e,
        "POST",
        &insert,
        &body("vm-l", "us-central1-a", None, 3600),
    );
    assert_eq!(st, 200, "{op}");
    assert_eq!(op["clientOperationId"], "rid-lost");
    assert_eq!(e.instances().len(), 1);
    let inserts = e.calls_to("POST", "/instances");
    assert_eq!(inserts.len(), 2);
    assert!(inserts.iter().all(|c| c.authorization == AUTH.1));
    assert_eq!(inserts[0].zone().as_deref(), Some("us-central1-a"));
    assert_eq!(
        e.instance("vm-l").unwrap().insert_body["machineType"],
        "zones/us-central1-a/machineTypes/g2-standard-4"
    );

    // A stockout that leaves its instance: DONE with the error, the instance TERMINATED
    // until deleted.
    e.set_zone("us-west1-a", ZoneState::OutOfCapacityLeavingInstance);
    let (_, sop) = call(
        &e,
        "POST",
        &zpath("us-west1-a", "instances"),
        &body("vm-s", "us-west1-a", None, 3600),
    );
    let done = wait_done(&e, "us-west1-a", &sop);
    assert_eq!(
        done["error"]["errors"][0]["code"],
        "ZONE_RESOURCE_POOL_EXHAUSTED"
    );
    assert_eq!(e.instance("vm-s").unwrap().status, "TERMINATED");
    call(&e, "DELETE", &zpath("us-west1-a", "instances/vm-s"), "");
    until("the leftover is deleted", || e.instance("vm-s").is_none());
    let del = e.calls_to("DELETE", "/instances/vm-s");
    assert_eq!(del[0].instance_key().as_deref(), Some("us-west1-a/vm-s"));

    // An added instance is listed with its labels and filtered like any other.
    e.add_instance(
        "us-east1-b",
        "vm-a",
        "STAGING",
        &[("cloudrun-managed", "true")],
        "2026-11-26T04:00:00.000-08:00",
    );
    e.add_instance(
        "us-east1-b",
        "theirs",
        "RUNNING",
        &[],
        "2026-11-26T04:00:00.000-08:00",
    );
    let (_, agg) = call(
        &e,
        "GET",
        "/compute/v1/projects/test-proj/aggregated/instances?filter=labels.cloudrun-managed%20%3D%20true",
        "",
    );
    let names: Vec<&str> = agg["items"]["zones/us-east1-b"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vm-a"]);
    assert_eq!(
        e.calls_to("GET", "/aggregated/instances")[0]
            .param("filter")
            .as_deref(),
        Some("labels.cloudrun-managed = true")
    );
}
