//! Prices from Google's Cloud Billing Catalog, end to end on loopback: the testkit's
//! emulator serves a SKU fixture shaped exactly as the real API answers (checked here
//! with Google's own `google.cloud.billing_v1.ListSkusResponse`), in several pages; the
//! client reads every page, the matcher turns SKUs into family and GPU rates, and every
//! shape the launcher creates is priced from them as computed by hand from the fixture's
//! figures. Then the bad inputs: a page that is not JSON, a SKU without pricingInfo, a
//! 403 from an API that is not enabled, a corrupt cache: each a warning and a fall back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::Utc;
use cloudrun::prices::fetch::CatalogClient;
use cloudrun::prices::{self, PriceBook, PriceSources, QuoteRequest};
use cloudrun::retry::RetryPolicy;
use cloudrun_testkit::billing::{compute_skus, compute_skus_fixture, BillingEmulator, Fault};
use cloudrun_testkit::TempDir;

/// Fixture SKUs per emulated page: 66 SKUs make 10 pages.
const PAGE: usize = 7;

fn client(emu: &BillingEmulator) -> CatalogClient {
    CatalogClient::new(&emu.url(), None)
        .unwrap()
        .with_retry(RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            total_deadline: Duration::from_secs(5),
        })
}

/// (gpu, machine type, region, on-demand $/h, Spot $/h): vCPUs × core rate + GiB × RAM
/// rate + GPUs × GPU rate, from the figures in fixtures/billing/make_compute_skus.py.
const EXPECTED: &[(&str, &str, &str, f64, f64)] = &[
    ("t4:1", "n1-standard-8", "us-central1", 0.729998, 0.223920),
    ("t4:1", "n1-standard-8", "europe-west4", 0.785836, 0.342000),
    ("t4:2", "n1-standard-16", "us-central1", 1.459996, 0.447840),
    ("t4:2", "n1-standard-16", "europe-west4", 1.571672, 0.684000),
    ("t4:4", "n1-standard-32", "us-central1", 2.919992, 0.895680),
    ("t4:4", "n1-standard-32", "europe-west4", 3.143344, 1.368000),
    ("v100:1", "n1-standard-8", "us-central1", 2.859998, 1.075920),
    (
        "v100:1",
        "n1-standard-8",
        "europe-west4",
        3.022336,
        1.116400,
    ),
    (
        "v100:2",
        "n1-standard-16",
        "us-central1",
        5.719996,
        2.151840,
    ),
    (
        "v100:2",
        "n1-standard-16",
        "europe-west4",
        6.044672,
        2.232800,
    ),
    (
        "v100:4",
        "n1-standard-32",
        "us-central1",
        11.439992,
        4.303680,
    ),
    (
        "v100:4",
        "n1-standard-32",
        "europe-west4",
        12.089344,
        4.465600,
    ),
    (
        "v100:8",
        "n1-standard-64",
        "us-central1",
        22.879984,
        8.607360,
    ),
    (
        "v100:8",
        "n1-standard-64",
        "europe-west4",
        24.178688,
        8.931200,
    ),
    ("p100:1", "n1-standard-8", "us-central1", 1.839998, 0.667920),
    (
        "p100:1",
        "n1-standard-8",
        "europe-west4",
        1.951336,
        0.427100,
    ),
    (
        "p100:2",
        "n1-standard-16",
        "us-central1",
        3.679996,
        1.335840,
    ),
    (
        "p100:2",
        "n1-standard-16",
        "europe-west4",
        3.902672,
        0.854200,
    ),
    (
        "p100:4",
        "n1-standard-32",
        "us-central1",
        7.359992,
        2.671680,
    ),
    (
        "p100:4",
        "n1-standard-32",
        "europe-west4",
        7.805344,
        1.708400,
    ),
    ("l4:1", "g2-standard-8", "us-central1", 0.853621, 0.340540),
    ("l4:1", "g2-standard-8", "europe-west4", 0.940068, 0.368520),
    ("l4:2", "g2-standard-24", "us-central1", 2.000822, 0.798520),
    ("l4:2", "g2-standard-24", "europe-west4", 2.203360, 0.873360),
    ("l4:4", "g2-standard-48", "us-central1", 4.001645, 1.597040),
    ("l4:4", "g2-standard-48", "europe-west4", 4.406720, 1.746720),
    ("l4:8", "g2-standard-96", "us-central1", 8.003290, 3.194080),
    ("l4:8", "g2-standard-96", "europe-west4", 8.813440, 3.493440),
    ("a100:1", "a2-highgpu-1g", "us-central1", 3.673385, 1.803802),
    (
        "a100:1",
        "a2-highgpu-1g",
        "europe-west4",
        4.041363,
        1.487000,
    ),
    ("a100:2", "a2-highgpu-2g", "us-central1", 7.346770, 3.607604),
    (
        "a100:2",
        "a2-highgpu-2g",
        "europe-west4",
        8.082726,
        2.974000,
    ),
    (
        "a100:4",
        "a2-highgpu-4g",
        "us-central1",
        14.693540,
        7.215208,
    ),
    (
        "a100:4",
        "a2-highgpu-4g",
        "europe-west4",
        16.165452,
        5.948000,
    ),
    (
        "a100:8",
        "a2-highgpu-8g",
        "us-central1",
        29.387080,
        14.430416,
    ),
    (
        "a100:8",
        "a2-highgpu-8g",
        "europe-west4",
        32.330904,
        11.896000,
    ),
    (
        "a100:16",
        "a2-megagpu-16g",
        "us-central1",
        55.739504,
        27.343456,
    ),
    (
        "a100:16",
        "a2-megagpu-16g",
        "europe-west4",
        61.320816,
        22.486400,
    ),
    (
        "a100-80gb:1",
        "a2-ultragpu-1g",
        "us-central1",
        5.027702,
        2.120732,
    ),
    (
        "a100-80gb:1",
        "a2-ultragpu-1g",
        "europe-west4",
        5.531392,
        2.635200,
    ),
    (
        "a100-80gb:2",
        "a2-ultragpu-2g",
        "us-central1",
        10.055404,
        4.241464,
    ),
    (
        "a100-80gb:2",
        "a2-ultragpu-2g",
        "europe-west4",
        11.062784,
        5.270400,
    ),
    (
        "a100-80gb:4",
        "a2-ultragpu-4g",
        "us-central1",
        20.110808,
        8.482928,
    ),
    (
        "a100-80gb:4",
        "a2-ultragpu-4g",
        "europe-west4",
        22.125568,
        10.540800,
    ),
    (
        "a100-80gb:8",
        "a2-ultragpu-8g",
        "us-central1",
        40.221616,
        16.965856,
    ),
    (
        "a100-80gb:8",
        "a2-ultragpu-8g",
        "europe-west4",
        44.251136,
        21.081600,
    ),
    (
        "h100:1",
        "a3-highgpu-1g",
        "us-central1",
        11.492436,
        4.411833,
    ),
    (
        "h100:1",
        "a3-highgpu-1g",
        "europe-west4",
        12.643135,
        3.190680,
    ),
    (
        "h100:2",
        "a3-highgpu-2g",
        "us-central1",
        22.984873,
        8.823666,
    ),
    (
        "h100:2",
        "a3-highgpu-2g",
        "europe-west4",
        25.286270,
        6.381360,
    ),
    (
        "h100:4",
        "a3-highgpu-4g",
        "us-central1",
        45.969746,
        17.647332,
    ),
    (
        "h100:4",
        "a3-highgpu-4g",
        "europe-west4",
        50.572540,
        12.762720,
    ),
    (
        "h100:8",
        "a3-highgpu-8g",
        "us-central1",
        91.939491,
        35.294664,
    ),
    (
        "h100:8",
        "a3-highgpu-8g",
        "europe-west4",
        101.145080,
        25.525440,
    ),
];

fn quote(book: &PriceBook, gpu: &str, mt: &str, region: &str, spot: bool) -> prices::Estimate {
    let accel = match gpu.split(':').next().unwrap() {
        "t4" => "nvidia-tesla-t4",
        "v100" => "nvidia-tesla-v100",
        "p100" => "nvidia-tesla-p100",
        "l4" => "nvidia-l4",
        "a100" => "nvidia-tesla-a100",
        "a100-80gb" => "nvidia-a100-80gb",
        "h100" => "nvidia-h100-80gb",
        other => panic!("{other}"),
    };
    let n: u32 = gpu.split(':').nth(1).unwrap().parse().unwrap();
    book.quote(&QuoteRequest {
        region,
        machine_type: mt,
        gpu: Some((accel, n)),
        spot,
    })
}

#[test]
fn the_fixture_and_every_served_page_parse_with_googles_types() {
    let emu = BillingEmulator::start(compute_skus(), PAGE);
    let dir = TempDir::new("skus");
    let mut files = vec![compute_skus_fixture()];
    let mut token = String::new();
    for page in 0.. {
        let path = format!(
            "/v1/services/6F81-5844-456A/skus?currencyCode=USD&pageSize=5000&pageToken={token}"
        );
        let port: u16 = emu
            .url()
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let (status, body) = cloudrun_testkit::http("GET", port, &path, "").unwrap();
        assert_eq!(status, 200, "{body}");
        let f = dir.path().join(format!("page-{page}.json"));
        std::fs::write(&f, &body).unwrap();
        files.push(f);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        token = v["nextPageToken"].as_str().unwrap().to_string();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(files.len(), 1 + 66usize.div_ceil(PAGE), "{files:?}");
    let script = r#"
import sys
from google.cloud import billing_v1
n = 0
for p in sys.argv[1:]:
    page = billing_v1.ListSkusResponse.from_json(open(p).read())
    for s in page.skus:
        up = s.pricing_info[0].pricing_expression.tiered_rates[0].unit_price
        assert up.currency_code == "USD", s
    n += len(page.skus)
print(n)
"#;
    let out = std::process::Command::new(cloudrun_testkit::venv_python())
        .arg("-c")
        .arg(script)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The fixture once, and its SKUs again across the pages.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "132");
}

#[tokio::test]
async fn every_shape_is_priced_from_the_catalog_as_computed_by_hand() {
    let emu = BillingEmulator::start(compute_skus(), PAGE);
    let skus = client(&emu).fetch_compute_skus().await.unwrap();
    assert_eq!(skus.len(), 66);
    assert_eq!(
        emu.calls().len(),
        66usize.div_ceil(PAGE),
        "{:?}",
        emu.calls()
    );
    let (layer, notes) = prices::catalog::layer_from_skus(&skus, Utc::now());
    assert!(notes.is_empty(), "{notes:?}");
    let book = PriceBook::builtin().with_front(layer);
    assert_eq!(EXPECTED.len(), 54);
    for (gpu, mt, region, od, spot) in EXPECTED {
        for (is_spot, want) in [(false, od), (true, spot)] {
            let e = quote(&book, gpu, mt, region, is_spot);
            assert!(e.is_complete(), "{gpu} {mt} {region}: {e:?}");
            assert!(
                !e.estimate,
                "{gpu} {mt} {region} came from the built-in table: {e:?}"
            );
            assert!(
                (e.usd_per_hour - want).abs() < 5e-6,
                "{gpu} {mt} {region} spot={is_spot}: {} vs {want}",
                e.usd_per_hour
            );
            assert!(
                e.source.starts_with("Cloud Billing Catalog"),
                "{}",
                e.source
            );
        }
    }
    // The Americas SKUs cover us-east4 too; a region the catalog lacks falls back to the
    // built-in table and says so.
    assert!(!quote(&book, "l4:1", "g2-standard-8", "us-east4", true).estimate);
    let e = quote(&book, "h100:1", "a3-highgpu-1g", "us-east5", false);
    assert!(e.is_complete() && e.estimate, "{e:?}");
}

async fn load_from(
    emu: &BillingEmulator,
    cache: &std::path::Path,
    refresh: bool,
) -> prices::Loaded {
    let c = client(emu);
    prices::load(&PriceSources {
        override_file: None,
        cache_file: Some(cache.to_path_buf()),
        catalog: Some(&c),
        refresh,
        now: Utc::now(),
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_page_that_is_not_json_is_a_warning_and_the_builtin_table_is_used() {
    let emu = BillingEmulator::start(compute_skus(), PAGE);
    emu.set_fault(Fault::NotJson);
    let dir = TempDir::new("cache");
    let cache = prices::cache::path_in(dir.path());
    let l = load_from(&emu, &cache, false).await;
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(
        l.warnings[0].contains("page 2 is not a SKU list"),
        "{:?}",
        l.warnings
    );
    assert!(
        l.warnings[0].contains("using the built-in estimates"),
        "{:?}",
        l.warnings
    );
    assert!(quote(&l.book, "l4:1", "g2-standard-8", "us-central1", true).estimate);
    assert!(!cache.exists());
}

#[tokio::test]
async fn billing_api_not_enabled_names_the_command_that_enables_it() {
    let emu = BillingEmulator::start(compute_skus(), PAGE);
    emu.set_fault(Fault::NotEnabled);
    let dir = TempDir::new("cache");
    let l = load_from(&emu, &prices::cache::path_in(dir.path()), false).await;
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(
        l.warnings[0].contains("gcloud services enable cloudbilling.googleapis.com"),
        "{:?}",
        l.warnings
    );
    // Not retried: a 403 does not heal.
    assert_eq!(emu.calls().len(), 1);
    assert!(quote(&l.book, "t4:1", "n1-standard-8", "us-central1", false).estimate);
}

#[tokio::test]
async fn a_sku_without_pricing_info_is_noted_and_only_its_part_falls_back() {
    let mut skus = compute_skus();
    let l4 = skus
        .iter_mut()
        .find(|s| s["description"] == "Nvidia L4 GPU running in Americas")
        .unwrap();
    l4.as_object_mut().unwrap().remove("pricingInfo");
    let emu = BillingEmulator::start(skus, PAGE);
    let dir = TempDir::new("cache");
    let l = load_from(&emu, &prices::cache::path_in(dir.path()), false).await;
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(
        l.warnings[0].contains("has no pricingInfo"),
        "{:?}",
        l.warnings
    );
    let e = quote(&l.book, "l4:1", "g2-standard-8", "us-central1", false);
    // The G2 part is the catalog's, the L4 the built-in table's: an estimate, complete.
    assert!(e.is_complete() && e.estimate, "{e:?}");
    assert!((e.usd_per_hour - (8.0 * 0.024988 + 32.0 * 0.0029274 + 0.56004)).abs() < 5e-6);
    assert!(
        e.source.contains("Cloud Billing Catalog") && e.source.contains("built-in"),
        "{}",
        e.source
    );
    // Spot L4 still has its SKU.
    assert!(!quote(&l.book, "l4:1", "g2-standard-8", "us-central1", true).estimate);
}

#[tokio::test]
async fn the_cache_is_used_for_a_week_and_a_corrupt_one_is_refetched() {
    let emu = BillingEmulator::start(compute_skus(), PAGE);
    let dir = TempDir::new("cache");
    let cache = prices::cache::path_in(dir.path());
    let first = load_from(&emu, &cache, false).await;
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    let pages = emu.calls().len();
    assert!(cache.is_file());
    // Fresh: no request.
    let again = load_from(&emu, &cache, false).await;
    assert_eq!(emu.calls().len(), pages);
    assert!(
        !quote(
            &again.book,
            "a100:2",
            "a2-highgpu-2g",
            "europe-west4",
            false
        )
        .estimate
    );
    // --refresh: read again.
    load_from(&emu, &cache, true).await;
    assert_eq!(emu.calls().len(), 2 * pages);
    // Corrupt: a warning, then a fresh read that replaces it.
    std::fs::write(&cache, "{\"schema\":1,\"fetched_at\":").unwrap();
    let l = load_from(&emu, &cache, false).await;
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(l.warnings[0].contains("is corrupt"), "{:?}", l.warnings);
    assert_eq!(emu.calls().len(), 3 * pages);
    assert!(prices::cache::read(&cache).unwrap().is_some());
    // A week old: refreshed.
    let mut c = prices::cache::read(&cache).unwrap().unwrap();
    c.fetched_at -= chrono::Duration::seconds(prices::CATALOG_MAX_AGE_SECS + 60);
    prices::cache::write(&cache, &c).unwrap();
    load_from(&emu, &cache, false).await;
    assert_eq!(emu.calls().len(), 4 * pages);
}
