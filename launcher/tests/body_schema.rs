//! The `instances.insert` body for each GPU family, Spot and on-demand, checked two ways:
//! Google's own schema (`google-cloud-compute`'s `compute_v1.Instance.from_json` must
//! accept it) and field by field against what `gcloud compute instances create` sends for
//! the same options (recorded by `scripts/record-gcloud-bodies.sh` into `tests/fixtures/`).
//!
//! Known differences from gcloud, each deliberate:
//! - gcloud sends full URLs on the endpoint it talks to; we send partial URLs
//!   (`zones/Z/machineTypes/T`, `global/networks/default`, `projects/P/global/images/…`),
//!   which the API documents as accepted and which stay right under an endpoint override.
//!   Compared after normalising both to the part after `projects/<project>/`.
//! - gcloud adds `canIpForward: false` and `deletionProtection: false`; both are the API's
//!   defaults, so we leave them out.
//! - With Spot, gcloud also sets the legacy `scheduling.preemptible: true`. We send only
//!   `provisioningModel: SPOT`: the limit-vm-runtime docs say `maxRunDuration` is not
//!   supported with legacy preemptible VMs, and SPOT alone is the documented form.
//! - Our labels and metadata carry more keys (run id, spec, agent URL and hash, driver
//!   flag); gcloud's are checked to be a subset.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cloudrun::prices::PriceBook;
use cloudrun_launch::body::{family_url, instance_body};
use cloudrun_launch::plan::{build, PlanInputs};
use cloudrun_launch::settings::{Settings, Source, Sourced};
use serde_json::Value;

const CASES: [(&str, &str, bool); 5] = [
    ("n1-t4-standard", "t4", false),
    ("n1-t4-spot", "t4", true),
    ("g2-l4-spot", "l4", true),
    ("a2-a100x2-standard", "a100:2", false),
    ("a3-h100x8-spot", "h100:8", true),
];

fn s<T>(v: T) -> Option<Sourced<T>> {
    Some(Sourced {
        value: v,
        source: Source::Default,
    })
}

fn body(dir: &Path, gpu: &str, spot: bool) -> Value {
    std::fs::write(dir.join("main.py"), "print(1)\n").unwrap();
    std::fs::write(dir.join("agent"), b"agent").unwrap();
    let settings = Settings {
        project_dir: dir.into(),
        project: s("test-proj".into()),
        gcs_dir: s("gs://bkt/cr".into()),
        vm_instance: s("trainer".into()),
        vm_user: s("alice".into()),
        gpu: s(gpu.into()),
        spot: s(spot),
        // 2700 s + the 900 s margin = the 3600 s the gcloud fixtures use.
        max_time: s("45m".into()),
        agent_binary: s(dir.join("agent")),
        ..Settings::default()
    };
    let prices = PriceBook::builtin();
    let plan = build(
        &settings,
        &PlanInputs {
            command: &["main.py".to_string()],
            now: "2026-11-26T07:15:00Z".parse().unwrap(),
            prices: &prices,
            default_agent: None,
            storage_host: None,
            launched_by: "tester@testbox".into(),
        },
    )
    .unwrap();
    instance_body(&plan, "us-central1-a", &family_url(&plan)).unwrap()
}

/// The venv python with google-cloud-compute: `$CLOUDRUN_TEST_PYTHON`, else
/// `<workspace>/.venv-emu/bin/python`.
fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CLOUDRUN_TEST_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-emu/bin/python");
    p.exists().then_some(p)
}

#[test]
fn insert_bodies_are_valid_compute_v1_instances() {
    let Some(py) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no python with google-cloud-compute: run scripts/setup-test-env.sh or set CLOUDRUN_TEST_PYTHON"
        );
        eprintln!(
            "SKIPPED: no .venv-emu and CLOUDRUN_TEST_PYTHON unset (run scripts/setup-test-env.sh)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, gpu, spot) in CASES {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let f = dir.path().join(format!("{name}.json"));
        std::fs::write(&f, serde_json::to_string(&body(&d, gpu, spot)).unwrap()).unwrap();
        files.push(f);
    }
    let script = "import sys\nfrom google.cloud import compute_v1\nfor f in sys.argv[1:]:\n    compute_v1.Instance.from_json(open(f).read())\n    print('ok', f)\n";
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compute_v1.Instance.from_json rejected a body:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        CASES.len()
    );
}

/// Resource URLs reduced to the part after `projects/<our project>/` (or after the API
/// root for other projects), so partial and full URLs compare equal.
fn normalise(v: &mut Value) {
    match v {
        Value::String(s) => {
            let mut t = s.rsplit("/compute/v1/").next().unwrap_or(s).to_string();
            if let Some(rest) = t.strip_prefix("projects/test-proj/") {
                t = rest.to_string();
            }
            *s = t;
        }
        Value::Array(a) => a.iter_mut().for_each(normalise),
        Value::Object(o) => o.values_mut().for_each(normalise),
        _ => {}
    }
}

#[test]
fn insert_bodies_match_gcloud_field_by_field() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (name, gpu, spot) in CASES {
        let dir = tempfile::tempdir().unwrap();
        let mut ours = body(dir.path(), gpu, spot);
        let mut theirs: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join(format!("gcloud-{name}.json"))).unwrap(),
        )
        .unwrap();
        normalise(&mut ours);
        normalise(&mut theirs);

        // Explained differences (see the module docs).
        let t = theirs.as_object_mut().unwrap();
        assert_eq!(t.remove("canIpForward"), Some(Value::Bool(false)), "{name}");
        assert_eq!(
            t.remove("deletionProtection"),
            Some(Value::Bool(false)),
            "{name}"
        );
        let preemptible = t["scheduling"]
            .as_object_mut()
            .unwrap()
            .remove("preemptible");
        assert_eq!(
            preemptible.is_some(),
            spot,
            "{name}: gcloud adds preemptible with SPOT"
        );

        for key in [
            "disks",
            "guestAccelerators",
            "machineType",
            "networkInterfaces",
            "scheduling",
            "serviceAccounts",
        ] {
            assert_eq!(
                ours.get(key),
                theirs.get(key),
                "{name}: field {key} differs from gcloud's"
            );
        }
        for (k, v) in theirs["labels"].as_object().unwrap() {
            assert_eq!(&ours["labels"][k], v, "{name}: label {k}");
        }
        let keys = |b: &Value| {
            b["metadata"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["key"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        for k in keys(&theirs) {
            assert!(keys(&ours).contains(&k), "{name}: metadata {k}");
        }
        let mut ours_keys: Vec<_> = ours.as_object().unwrap().keys().cloned().collect();
        let mut their_keys: Vec<_> = theirs.as_object().unwrap().keys().cloned().collect();
        ours_keys.sort();
        their_keys.sort();
        assert_eq!(ours_keys, their_keys, "{name}: top-level fields");
    }
}
