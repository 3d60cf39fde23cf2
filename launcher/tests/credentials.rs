//! Credentials, through the real binary with a controlled environment: a
//! service-account key whose `token_uri` is a local token server, the gcloud CLI (a fake
//! script that is the whole `PATH`), Application Default Credentials in `$HOME`, and the
//! message when none works. `sweep` is the probe: it needs a token for Compute (the testkit's
//! emulator, which records the `Authorization` header) and reads the store from a local directory.
//! Nothing here can reach Google or the metadata server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cloudrun_testkit::gce::GceEmulator;
use common::auth::{
    fake_gcloud, gcloud_calls, jwt_claims, service_account_key, token_server, SA_EMAIL,
};
use common::bin::{Ran, Sandbox};
use common::compute::emulator;

const ACCOUNT: &str = "me@example.org";

/// `cloudrun-launch sweep` against the Compute emulator, with `env` on top of the base.
async fn sweep(sb: &Sandbox, env: &[(&str, String)]) -> (Ran, GceEmulator) {
    let fake = emulator(&[]);
    let base = fake.compute_url();
    let store = sb.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let mut all = vec![
        ("GCLOUD_PROJECT", "test-proj".to_string()),
        ("GCS_DIR", format!("file://{}", store.display())),
        ("CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE", base),
    ];
    all.extend(env.iter().cloned());
    let ran = sb.run(sb.path(), &all, &["sweep"]).await;
    (ran, fake)
}

fn auth_headers(fake: &GceEmulator) -> Vec<String> {
    common::compute::auth_headers(fake)
}

#[tokio::test]
async fn a_key_files_token_uri_gets_a_jwt_bearer_grant_and_its_token_reaches_compute() {
    let sb = Sandbox::new();
    let tokens = token_server(Some("sa-token-1")).await;
    let key = service_account_key(sb.path(), &tokens.uri);
    let log = sb.path().join("gcloud.log");
    fake_gcloud(&sb.bin(), &log, Some("gcloud-token"));
    let (ran, fake) = sweep(
        &sb,
        &[
            ("GOOGLE_APPLICATION_CREDENTIALS", key.display().to_string()),
            ("GCP_ACCOUNT", ACCOUNT.to_string()),
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout, "nothing to sweep\n");

    let grants = tokens.grants.lock().unwrap().clone();
    assert_eq!(
        grants.len(),
        1,
        "one grant, then the cached token: {grants:?}"
    );
    assert_eq!(
        grants[0]["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let claims = jwt_claims(&grants[0]["assertion"]);
    assert_eq!(claims["iss"], SA_EMAIL);
    assert_eq!(claims["aud"], tokens.uri.as_str());
    assert!(
        claims["scope"]
            .as_str()
            .unwrap()
            .contains("https://www.googleapis.com/auth/cloud-platform"),
        "{claims}"
    );

    let auth = auth_headers(&fake);
    assert!(!auth.is_empty());
    assert!(auth.iter().all(|a| a == "Bearer sa-token-1"), "{auth:?}");
    assert!(
        gcloud_calls(&log).is_empty(),
        "the key file wins over gcloud, even with GCP_ACCOUNT set"
    );
    assert!(
        !ran.stderr.contains("sa-token-1"),
        "tokens are never logged"
    );
}

#[tokio::test]
async fn a_key_file_the_token_server_rejects_is_the_answer_not_a_fallthrough_to_gcloud() {
    let sb = Sandbox::new();
    let tokens = token_server(None).await;
    let key = service_account_key(sb.path(), &tokens.uri);
    let log = sb.path().join("gcloud.log");
    fake_gcloud(&sb.bin(), &log, Some("gcloud-token"));
    let (ran, fake) = sweep(
        &sb,
        &[("GOOGLE_APPLICATION_CREDENTIALS", key.display().to_string())],
    )
    .await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "GOOGLE_APPLICATION_CREDENTIALS={}",
            key.display()
        )) && ran.stderr.contains("Fix: point GOOGLE_APPLICATION_CREDENTIALS at a valid service-account key, or unset it"),
        "{}",
        ran.stderr
    );
    assert!(!tokens.grants.lock().unwrap().is_empty());
    assert!(gcloud_calls(&log).is_empty());
    assert!(
        auth_headers(&fake).is_empty(),
        "no Compute call without a token"
    );
}

#[tokio::test]
async fn gcloud_is_asked_for_the_gcp_account_first_and_its_token_reaches_compute() {
    let sb = Sandbox::new();
    let log = sb.path().join("gcloud.log");
    fake_gcloud(&sb.bin(), &log, Some("gcloud-token-for-me"));
    let (ran, fake) = sweep(&sb, &[("GCP_ACCOUNT", ACCOUNT.to_string())]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(
        gcloud_calls(&log),
        [format!(
            "auth print-access-token --quiet --account={ACCOUNT}"
        )]
    );
    let auth = auth_headers(&fake);
    assert!(!auth.is_empty());
    assert!(
        auth.iter().all(|a| a == "Bearer gcloud-token-for-me"),
        "{auth:?}"
    );
}

#[tokio::test]
async fn without_an_account_and_without_adc_the_active_gcloud_account_is_used() {
    let sb = Sandbox::new();
    let log = sb.path().join("gcloud.log");
    fake_gcloud(&sb.bin(), &log, Some("gcloud-active"));
    let (ran, fake) = sweep(&sb, &[]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(gcloud_calls(&log), ["auth print-access-token --quiet"]);
    assert!(auth_headers(&fake)
        .iter()
        .all(|a| a == "Bearer gcloud-active"));
}

#[tokio::test]
async fn an_unusable_adc_file_is_named_and_gcloud_is_tried_after_it() {
    let sb = Sandbox::new();
    let adc_dir = sb.home().join(".config/gcloud");
    std::fs::create_dir_all(&adc_dir).unwrap();
    // Missing client_secret and refresh_token: unusable without any network call.
    std::fs::write(
        adc_dir.join("application_default_credentials.json"),
        r#"{"type":"authorized_user","client_id":"x"}"#,
    )
    .unwrap();
    let log = sb.path().join("gcloud.log");
    fake_gcloud(&sb.bin(), &log, None);
    let (ran, fake) = sweep(&sb, &[]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    let err = &ran.stderr;
    let adc = err
        .find("application default credentials")
        .unwrap_or_else(|| panic!("{err}"));
    let gcloud = err
        .find("gcloud auth print-access-token: ")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(adc < gcloud, "ADC is tried before gcloud: {err}");
    assert_eq!(
        err.matches("gcloud exited with status 1: ERROR: (gcloud.auth.print-access-token) You do not currently have an active account selected.").count(),
        1,
        "gcloud's own first line, once: {err}"
    );
    assert_eq!(
        err.matches("missing field `client_secret`").count(),
        1,
        "why the ADC file is unusable, once: {err}"
    );
    assert!(
        err.trim_end()
            .ends_with("Fix: gcloud auth application-default login"),
        "{err}"
    );
    assert_eq!(gcloud_calls(&log), ["auth print-access-token --quiet"]);
    assert!(auth_headers(&fake).is_empty());
}

#[tokio::test]
async fn with_no_credentials_the_error_lists_every_source_and_the_one_fix() {
    let sb = Sandbox::new();
    // No gcloud on PATH at all, no ADC file, no key.
    let (ran, fake) = sweep(&sb, &[("GCP_ACCOUNT", ACCOUNT.to_string())]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    let err = &ran.stderr;
    for tried in [
        "no usable Google credentials. Tried:",
        "  - GOOGLE_APPLICATION_CREDENTIALS: not set",
        "  - gcloud auth print-access-token --account=me@example.org: gcloud auth print-access-token failed: gcloud is not on PATH\n",
        "  - application default credentials",
    ] {
        assert!(err.contains(tried), "{tried:?} missing from: {err}");
    }
    assert!(
        err.trim_end()
            .ends_with(&format!("Fix: gcloud auth login {ACCOUNT}")),
        "{err}"
    );
    assert_eq!(err.matches("Fix:").count(), 1, "one fix: {err}");
    assert!(auth_headers(&fake).is_empty());
    assert!(ran.stdout.is_empty());
}
