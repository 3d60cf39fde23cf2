//! Prices in the whole flow, with the real binaries: the launcher reads Google's catalog
//! from the testkit's Billing emulator, an L4 Spot run with a budget fails over from a
//! full us-central1 zone to europe-west4, and the price in the VM's spec (which the agent
//! enforces the budget with) and in the receipt is europe-west4's. And the README's and
//! `--help`'s budget examples run under `--dry-run` with the built-in figures, quoting
//! every zone they would try.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::process::Output;

use cloudrun_testkit::billing::{compute_skus, BillingEmulator};
use cloudrun_testkit::gce::ZoneState;
use e2e::{field, reason, text, World, WorldOpts, PREFIX};

/// The fixture's europe-west4 Spot price of g2-standard-8 (8 vCPU, 32 GiB) with one L4:
/// 8 × 0.0116 + 32 × 0.00136 + 0.2322.
const L4_SPOT_EUROPE_WEST4: f64 = 0.36852;
/// The same in us-central1: 8 × 0.009996 + 32 × 0.001171 + 0.2231.
const L4_SPOT_US_CENTRAL1: f64 = 0.340540;

fn world() -> World {
    World::new(WorldOpts {
        toml: "zones = [\"us-central1-a\", \"europe-west4-a\"]\n".into(),
        ..WorldOpts::default()
    })
}

fn run_with_catalog(w: &World, billing: &BillingEmulator, args: &[&str]) -> Output {
    w.cmd(args)
        .env(
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDBILLING",
            billing.url(),
        )
        .env("XDG_CACHE_HOME", w.home.path().join("cache"))
        .output()
        .unwrap()
}

#[test]
fn l4_spot_budget_run_that_fails_over_is_priced_and_billed_at_the_second_regions_price() {
    let w = world();
    let billing = BillingEmulator::start(compute_skus(), 20);
    w.emu.set_zone("us-central1-a", ZoneState::OutOfCapacity);
    let out = run_with_catalog(
        &w,
        &billing,
        &["--spot", "--budget", "5", "train.py", "ok", "3", "1"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!billing.calls().is_empty(), "the catalog was not read");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("warning: could not read Google's prices"),
        "{err}"
    );
    // The bucket's location was read (fake-gcs-server answers buckets.get), and the
    // zone across the ocean is quoted with its egress.
    assert!(err.contains("data: bucket bkt in "), "{err}");
    assert!(
        err.contains("europe-west4-a: $0.37/h") && err.contains("in egress"),
        "{err}"
    );
    let run = field(&stdout, "run").unwrap();
    let vm = field(&stdout, "vm").unwrap();
    assert!(vm.contains("in europe-west4-a"), "{stdout}");
    let vm = vm.split_whitespace().next().unwrap().to_string();
    let price = field(&stdout, "price").unwrap();
    assert!(
        price.starts_with("$0.37/h (europe-west4, Cloud Billing Catalog"),
        "{stdout}"
    );
    assert!(!price.contains("estimate"), "{stdout}");

    // The spec the agent enforces the budget with: europe-west4's figure and the time $5
    // buys at it.
    let spec: serde_json::Value =
        serde_json::from_str(&w.object(&format!("{PREFIX}/runs/{run}/spec.json")).unwrap())
            .unwrap();
    let p = spec["price"]["usd_per_hour"].as_f64().unwrap();
    assert!((p - L4_SPOT_EUROPE_WEST4).abs() < 1e-6, "{spec}");
    assert_eq!(spec["price"]["region"], "europe-west4", "{spec}");
    assert!(spec["price"].get("estimate").is_none(), "{spec}");
    assert_eq!(
        spec["policies"]["max_run_secs"].as_u64().unwrap(),
        (5.0 / L4_SPOT_EUROPE_WEST4 * 3600.0) as u64
    );
    // us-central1 would have been cheaper: the price really is the landing zone's.
    const { assert!(L4_SPOT_US_CENTRAL1 < L4_SPOT_EUROPE_WEST4) };
    let st = w.wait_ended(&run, &vm);
    w.wait_gone(&vm);
    assert_eq!(reason(&st), "succeeded", "{st}");
    let r = &st["receipt"];
    assert!(
        (r["usd_per_hour"].as_f64().unwrap() - L4_SPOT_EUROPE_WEST4).abs() < 1e-6,
        "{st}"
    );
    let billed = r["billed_secs"].as_f64().unwrap();
    assert!(
        (r["total_usd"].as_f64().unwrap() - billed / 3600.0 * L4_SPOT_EUROPE_WEST4).abs() < 1e-9,
        "{st}"
    );

    // The split adds up to the billed time; a job that succeeded lost no work.
    let sp = &r["split"];
    let part = |k: &str| sp[k]["secs"].as_u64().unwrap();
    assert_eq!(
        part("boot_and_pull") + part("setup") + part("training") + part("final_sync"),
        r["billed_secs"].as_u64().unwrap(),
        "{st}"
    );
    assert!(part("training") >= 2, "{st}");
    assert!(
        sp.get("after_last_checkpoint").is_none() && sp.get("idle_tail").is_none(),
        "{st}"
    );

    let status = w.run(&["status", &run]);
    let s = text(&status);
    assert!(
        s.contains("price    $0.3685/h (europe-west4, Cloud Billing Catalog"),
        "{s}"
    );
    assert!(s.contains("training") && s.contains("final sync"), "{s}");
}

#[test]
fn readme_and_help_budget_examples_run_under_dry_run_with_estimates_per_zone() {
    let w = world();
    std::fs::write(w.project.path().join("main.py"), "print('hi')\n").unwrap();
    for args in [
        // README: cloud runs.
        &[
            "--dry-run",
            "--gpu",
            "l4",
            "--spot",
            "--budget",
            "5",
            "main.py",
            "--epochs",
            "50",
        ][..],
        // --help.
        &[
            "--dry-run",
            "--gpu",
            "a100:2",
            "--spot",
            "--budget",
            "20",
            "train.py",
        ][..],
    ] {
        let out = w.cmd(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["scheduling"]["provisioningModel"], "SPOT");
        for zone in ["us-central1-a", "europe-west4-a"] {
            let line = err
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{zone}: $")))
                .unwrap_or_else(|| panic!("no price for {zone} in:\n{err}"));
            assert!(
                line.contains("(estimate)") && line.contains(" buys "),
                "{line}"
            );
        }
    }
}
