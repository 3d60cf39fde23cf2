//! `scripts/startup.sh`: it uses the metadata keys and variables `src/contract.rs` names,
//! it passes `bash -n` and shellcheck, and run against a small in-process metadata + GCS +
//! Compute stand-in it fetches the agent, checks its sha256 and starts it detached — or,
//! when the agent cannot be fetched, deletes its own VM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as P, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use axum::Router;
use cloudrun::contract::{
    ENV_COMPUTE_ENDPOINT, ENV_GCE_METADATA_HOST, META_AGENT_SHA256, META_AGENT_URL,
    META_STORAGE_HOST,
};
use sha2::Digest;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/startup.sh")
}

#[test]
fn the_script_uses_the_contract_names() {
    let text = std::fs::read_to_string(script()).unwrap();
    for key in [META_AGENT_URL, META_AGENT_SHA256, META_STORAGE_HOST] {
        assert!(
            text.contains(&format!("instance/attributes/{key}")),
            "startup.sh does not read metadata key {key}"
        );
    }
    for var in [ENV_GCE_METADATA_HOST, ENV_COMPUTE_ENDPOINT] {
        assert!(
            text.contains(&format!("${{{var}")),
            "startup.sh does not honour {var}"
        );
    }
    assert!(text.contains(cloudrun::layout::AGENT_BINARY_NAME));
    // The launcher embeds this very file.
    assert_eq!(cloudrun_launch::body::STARTUP_SCRIPT, text);
}

#[test]
fn the_script_parses_and_passes_shellcheck() {
    let st = Command::new("bash")
        .arg("-n")
        .arg(script())
        .status()
        .unwrap();
    assert!(st.success(), "bash -n failed");
    match Command::new("shellcheck").arg(script()).output() {
        Ok(out) => assert!(
            out.status.success(),
            "shellcheck:\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "shellcheck is not installed (apt-get install shellcheck)"
            );
            eprintln!("SKIPPED shellcheck: not installed (apt-get install shellcheck)");
        }
    }
}

#[derive(Default)]
struct Vm {
    attrs: BTreeMap<String, String>,
    objects: BTreeMap<String, Vec<u8>>,
    deletes: Mutex<Vec<String>>,
    tokens_seen: Mutex<Vec<String>>,
}

type S = Arc<Vm>;

async fn metadata(State(s): State<S>, P(path): P<String>, h: HeaderMap) -> (StatusCode, String) {
    if h.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (StatusCode::FORBIDDEN, "missing Metadata-Flavor".into());
    }
    let v = match path.as_str() {
        "project/project-id" => Some("test-proj".to_string()),
        "instance/zone" => Some("projects/123/zones/us-central1-a".into()),
        "instance/name" => Some("trainer-x".into()),
        "instance/service-accounts/default/token" => {
            Some(r#"{"access_token":"vm-token","expires_in":3599,"token_type":"Bearer"}"#.into())
        }
        p => p
            .strip_prefix("instance/attributes/")
            .and_then(|k| s.attrs.get(k).cloned()),
    };
    match v {
        Some(v) => (StatusCode::OK, v),
        None => (StatusCode::NOT_FOUND, "not found".into()),
    }
}

async fn object(
    State(s): State<S>,
    P((_b, o)): P<(String, String)>,
    h: HeaderMap,
) -> (StatusCode, Vec<u8>) {
    s.tokens_seen.lock().unwrap().push(
        h.get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    );
    match s.objects.get(&o) {
        Some(b) => (StatusCode::OK, b.clone()),
        None => (StatusCode::NOT_FOUND, b"{}".to_vec()),
    }
}

async fn del(
    State(s): State<S>,
    P((p, z, n)): P<(String, String, String)>,
) -> (StatusCode, String) {
    s.deletes.lock().unwrap().push(format!("{p}/{z}/{n}"));
    (
        StatusCode::OK,
        r#"{"name":"operation-1","status":"RUNNING"}"#.into(),
    )
}

async fn bind() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = l.local_addr().unwrap().to_string();
    (l, host)
}

fn serve(vm: S, l: tokio::net::TcpListener) {
    let app = Router::new()
        .route("/computeMetadata/v1/{*path}", get(metadata))
        .route("/storage/v1/b/{b}/o/{o}", get(object))
        .route(
            "/compute/v1/projects/{p}/zones/{z}/instances/{n}",
            delete(del),
        )
        .with_state(vm);
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
}

async fn boot(host: &str, install: &Path) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(script())
        .env(ENV_GCE_METADATA_HOST, host)
        .env(ENV_COMPUTE_ENDPOINT, format!("http://{host}/compute/v1/"))
        .env("CLOUDRUN_INSTALL_DIR", install)
        .env("CLOUDRUN_INIT", "detached")
        .env("CLOUDRUN_FETCH_ATTEMPTS", "2")
        .env("CLOUDRUN_FETCH_PAUSE_SECS", "0");
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn boot_fetches_checks_and_starts_the_agent_and_a_second_boot_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("agent-ran");
    let agent = format!("#!/bin/sh\necho started >> {}\n", marker.display()).into_bytes();
    let sha = hex::encode(sha2::Sha256::digest(&agent));
    let key = format!("cr/agent/{sha}/cloudrun-agent");
    let (l, host) = bind().await;
    let mut vm = Vm::default();
    vm.attrs
        .insert(META_AGENT_URL.into(), format!("gs://bkt/{key}"));
    vm.attrs.insert(META_AGENT_SHA256.into(), sha.clone());
    vm.attrs.insert(META_STORAGE_HOST.into(), host.clone());
    vm.objects.insert(key, agent);
    let vm = Arc::new(vm);
    serve(vm.clone(), l);
    let install = dir.path().join("install");
    let out = boot(&host, &install).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(&marker).await;
    assert_eq!(*vm.tokens_seen.lock().unwrap(), ["Bearer vm-token"]);
    assert!(vm.deletes.lock().unwrap().is_empty());

    // Every boot runs the script again: the verified agent is not fetched twice.
    std::fs::remove_file(install.join("agent.pid")).unwrap();
    let out = boot(&host, &install).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("already installed"));
    assert_eq!(vm.tokens_seen.lock().unwrap().len(), 1);
}

async fn wait_for(p: &Path) {
    for _ in 0..100 {
        if p.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared: the agent did not start", p.display());
}

#[tokio::test]
async fn an_agent_that_cannot_be_fetched_makes_the_vm_delete_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (l, host) = bind().await;
    let mut vm = Vm::default();
    vm.attrs.insert(
        META_AGENT_URL.into(),
        "gs://bkt/cr/agent/abc/cloudrun-agent".into(),
    );
    vm.attrs.insert(META_AGENT_SHA256.into(), "abc".into());
    vm.attrs.insert(META_STORAGE_HOST.into(), host.clone());
    let vm = Arc::new(vm);
    serve(vm.clone(), l);
    let out = boot(&host, &dir.path().join("install")).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("deleting this VM"));
    assert_eq!(
        *vm.deletes.lock().unwrap(),
        ["test-proj/us-central1-a/trainer-x"]
    );
}
