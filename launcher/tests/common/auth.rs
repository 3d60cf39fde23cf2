//! Credential fixtures that never reach Google: a service-account key whose `token_uri`
//! is a local token server (RSA key made with openssl), a token server that records the
//! grants it receives, and a fake `gcloud` script that records its argv.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::{json, Value};

/// The client email written into generated key files.
pub const SA_EMAIL: &str = "trainer@test-proj.iam.gserviceaccount.com";

/// A local OAuth token endpoint.
pub struct TokenServer {
    /// Every form body it received.
    pub grants: Arc<Mutex<Vec<HashMap<String, String>>>>,
    /// `http://127.0.0.1:PORT/token`.
    pub uri: String,
}

/// Start a token server that answers every grant with `token` (or, when `token` is
/// `None`, with 400 `invalid_grant`, as Google does for a revoked key).
pub async fn token_server(token: Option<&str>) -> TokenServer {
    type St = (Arc<Mutex<Vec<HashMap<String, String>>>>, Option<String>);
    async fn grant(
        State((grants, token)): State<St>,
        Form(form): Form<HashMap<String, String>>,
    ) -> (StatusCode, Json<Value>) {
        grants.lock().unwrap().push(form);
        match token {
            Some(t) => (
                StatusCode::OK,
                Json(json!({"access_token": t, "expires_in": 3599, "token_type": "Bearer"})),
            ),
            None => (
                StatusCode::BAD_REQUEST,
                Json(
                    json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
                ),
            ),
        }
    }
    let grants = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/token", post(grant))
        .with_state((grants.clone(), token.map(str::to_string)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TokenServer {
        grants,
        uri: format!("http://{addr}/token"),
    }
}

/// A service-account key file in `dir` with a fresh RSA key (PKCS#8 PEM from
/// `openssl genpkey`) and the given `token_uri`.
pub fn service_account_key(dir: &Path, token_uri: &str) -> PathBuf {
    let pem = dir.join("key.pem");
    let out = std::process::Command::new("/usr/bin/openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    let key = std::fs::read_to_string(&pem).unwrap();
    assert!(key.contains("BEGIN PRIVATE KEY"), "not PKCS#8: {key}");
    let path = dir.join("sa-key.json");
    let doc = json!({
        "type": "service_account",
        "project_id": "test-proj",
        "private_key_id": "0123456789abcdef",
        "private_key": key,
        "client_email": SA_EMAIL,
        "client_id": "1234567890",
        "token_uri": token_uri,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    path
}

/// The claims of a JWT (its middle segment), without checking the signature.
pub fn jwt_claims(jwt: &str) -> Value {
    use base64::Engine;
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three segments: {jwt}");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1].trim_end_matches('='))
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A fake `gcloud` in `bin_dir` that appends its arguments (one invocation per line) to
/// `argv_log` and prints `token`, or, when `token` is `None`, fails as gcloud does
/// without a login.
pub fn fake_gcloud(bin_dir: &Path, argv_log: &Path, token: Option<&str>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(bin_dir).unwrap();
    let tail = match token {
        Some(t) => format!("echo {t}\n"),
        None => "echo 'ERROR: (gcloud.auth.print-access-token) You do not currently have an active account selected.' >&2\nexit 1\n".to_string(),
    };
    let script = format!("#!/bin/sh\necho \"$*\" >> '{}'\n{tail}", argv_log.display());
    let path = bin_dir.join("gcloud");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The recorded gcloud invocations (empty when it never ran).
pub fn gcloud_calls(argv_log: &Path) -> Vec<String> {
    std::fs::read_to_string(argv_log)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}
