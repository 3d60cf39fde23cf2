//! `--dry-run` through the real binary: stdout is exactly the `instances.insert` body and
//! nothing else, the human line goes to stderr, and nothing touches the network — every
//! endpoint points at a closed loopback port and there are no credentials at all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cloudrun_testkit::free_port;
use common::bin::Sandbox;

#[tokio::test]
async fn dry_run_prints_exactly_the_insert_body_and_sends_nothing() {
    let sb = Sandbox::new();
    let project = sb.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("main.py"), "print('train')\n").unwrap();
    std::fs::write(sb.path().join("cloudrun-agent"), b"\x7fELF agent").unwrap();
    // Nothing listens here: any request would fail the run.
    let closed = format!("127.0.0.1:{}", free_port());
    let env = [
        ("GCLOUD_PROJECT", "test-proj".to_string()),
        ("GCS_DIR", "gs://cloudrun-test/runs".to_string()),
        ("STORAGE_EMULATOR_HOST", format!("http://{closed}")),
        (
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE",
            format!("http://{closed}/compute/v1/"),
        ),
        (
            "CLOUDRUN_AGENT_BINARY",
            sb.path().join("cloudrun-agent").display().to_string(),
        ),
        ("VM_INSTANCE", "trainer".to_string()),
        ("VM_USER", "alice".to_string()),
    ];
    let ran = sb
        .run(
            &project,
            &env,
            &[
                "--gpu",
                "l4",
                "--zone",
                "us-central1-a,us-central1-b",
                "--dry-run",
                "main.py",
                "--epochs",
                "50",
            ],
        )
        .await;
    assert_eq!(ran.code, 0, "{ran:?}");

    // The whole of stdout is one JSON document, printed pretty, with one newline.
    let body: serde_json::Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("stdout is not just the JSON body ({e}):\n{}", ran.stdout));
    assert_eq!(
        ran.stdout,
        format!("{}\n", serde_json::to_string_pretty(&body).unwrap())
    );
    let name = body["name"].as_str().unwrap();
    assert!(name.starts_with("trainer-"), "{name}");
    assert_eq!(
        body["labels"]["cloudrun-run"],
        name.trim_start_matches("trainer-")
    );
    assert!(body["machineType"]
        .as_str()
        .unwrap()
        .starts_with("zones/us-central1-a/machineTypes/g2-standard-"));
    // No images.getFromFamily call: the body names the family itself.
    assert!(
        body["disks"][0]["initializeParams"]["sourceImage"]
            .as_str()
            .unwrap()
            .contains("/global/images/family/"),
        "{body}"
    );

    assert!(
        ran.stderr.contains(&format!(
            "dry run: would create {name} in us-central1-a (then us-central1-b)"
        )) && ran.stderr.contains(&format!(
            "pack the project folder {}; nothing was sent",
            project.display()
        )),
        "{}",
        ran.stderr
    );
}

/// The first example under `--help` is what a new user types first: as a dry run, with
/// the five settings exported, it must plan a VM (it once failed with "no GPU chosen").
#[tokio::test]
async fn the_first_help_example_plans_a_vm() {
    let first = cloudrun_launch::cli::EXAMPLES
        .lines()
        .find(|l| l.trim_start().starts_with("cloudrun-launch "))
        .unwrap();
    // The command ends where the two-space gap before its explanation begins.
    let command = first.trim().split("  ").next().unwrap();
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let sb = Sandbox::new();
    let project = sb.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let script = args
        .iter()
        .find(|a| a.ends_with(".py"))
        .unwrap_or_else(|| panic!("no script in the first example {command:?}"));
    std::fs::write(project.join(script), "print('train')\n").unwrap();
    std::fs::write(sb.path().join("cloudrun-agent"), b"\x7fELF agent").unwrap();
    let closed = format!("127.0.0.1:{}", free_port());
    let env = [
        ("GCP_ACCOUNT", "me@example.com".to_string()),
        ("GCLOUD_PROJECT", "test-proj".to_string()),
        ("GCS_DIR", "gs://cloudrun-test/runs".to_string()),
        ("STORAGE_EMULATOR_HOST", format!("http://{closed}")),
        (
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE",
            format!("http://{closed}/compute/v1/"),
        ),
        (
            "CLOUDRUN_AGENT_BINARY",
            sb.path().join("cloudrun-agent").display().to_string(),
        ),
        ("VM_INSTANCE", "trainer".to_string()),
        ("VM_USER", "alice".to_string()),
    ];
    let mut argv = vec!["--dry-run"];
    argv.extend(args.iter().copied());
    let ran = sb.run(&project, &env, &argv).await;
    assert_eq!(ran.code, 0, "`{command}` as a dry run: {ran:?}");
    let body: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert!(body["name"].as_str().unwrap().starts_with("trainer-"));
}

/// A script outside the current directory must not silently make its own folder the
/// project (that packed `/etc` for `/etc/hostname`): without `-C` it is refused with the
/// `-C` that would pack it, and with that `-C` it plans and names the folder it packs.
#[tokio::test]
async fn a_script_outside_the_current_directory_needs_dash_c() {
    let sb = Sandbox::new();
    let unrelated = sb.path().join("unrelated");
    let sub = sb.path().join("elsewhere/sub");
    std::fs::create_dir_all(&unrelated).unwrap();
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("x.py"), "print('x')\n").unwrap();
    std::fs::write(sub.join("secret.txt"), "not for upload\n").unwrap();
    std::fs::write(sb.path().join("cloudrun-agent"), b"\x7fELF agent").unwrap();
    let env = [(
        "CLOUDRUN_AGENT_BINARY",
        sb.path().join("cloudrun-agent").display().to_string(),
    )];
    let script = sub.join("x.py").display().to_string();
    let ran = sb
        .run(&unrelated, &env, &["--local", "--dry-run", &script])
        .await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("is outside the project folder")
            && ran.stderr.contains(&format!("pass -C {}", sub.display())),
        "{}",
        ran.stderr
    );
    let ran = sb
        .run(
            &unrelated,
            &[],
            &["--dry-run", "--gpu", "l4", "/etc/hostname"],
        )
        .await;
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(ran.stderr.contains("pass -C /etc"), "{}", ran.stderr);

    // With the -C it names, the same script plans, from that folder.
    let dir = sub.display().to_string();
    let ran = sb
        .run(
            &unrelated,
            &env,
            &["--local", "--dry-run", "-C", &dir, &script],
        )
        .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stderr.contains(&format!("from {dir}")),
        "{}",
        ran.stderr
    );
    let spec: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(
        spec["job"]["command"],
        serde_json::json!(["python3", "x.py"])
    );
}
