//! The metadata server of one emulated instance, on its own loopback port:
//! `Metadata-Flavor: Google` required (403 without; requests with `X-Forwarded-For` are
//! refused too) and sent back on every reply; values with an `ETag`; `wait_for_change`
//! with `last_etag` and `timeout_sec`; `?recursive=true` as JSON; 404 for a missing
//! attribute; the service account's token; `instance/preempted` that tests flip.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::Shared;

/// Longest `wait_for_change` hangs when `timeout_sec` is not given, in seconds.
const DEFAULT_HANG_SECS: u64 = 60;

#[derive(Clone)]
struct Md {
    s: Arc<Shared>,
    key: String,
}

/// Bind a port for the instance's metadata server and serve it until the instance goes.
pub(crate) fn serve(s: &Arc<Shared>, key: &str) {
    let Ok(std_l) = std::net::TcpListener::bind("127.0.0.1:0") else {
        return;
    };
    let port = std_l.local_addr().map(|a| a.port()).unwrap_or(0);
    let _ = std_l.set_nonblocking(true);
    let md = Md {
        s: s.clone(),
        key: key.to_string(),
    };
    let app = Router::new()
        .route("/computeMetadata/v1/{*path}", get(handle))
        .route("/computeMetadata/v1/", get(root))
        .with_state(md);
    let task = s.rt.spawn(async move {
        if let Ok(l) = tokio::net::TcpListener::from_std(std_l) {
            let _ = axum::serve(l, app).await;
        }
    });
    if let Some(i) = s.lock().instances.get_mut(key) {
        i.md_port = port;
        i.md_task = Some(task.abort_handle());
    }
}

fn flavored(status: StatusCode, body: String, etag: Option<String>, json: bool) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert("Metadata-Flavor", HeaderValue::from_static("Google"));
    h.insert(
        "Content-Type",
        HeaderValue::from_static(if json {
            "application/json"
        } else {
            "application/text"
        }),
    );
    if let Some(e) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert("ETag", e);
    }
    r
}

fn etag_of(v: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    format!("{:016x}", h.finish())
}

async fn root(State(md): State<Md>, h: HeaderMap, q: Query<BTreeMap<String, String>>) -> Response {
    handle(State(md), Path(String::new()), h, q).await
}

/// The value at `path`: (body, is_json), or `None` (404).
fn lookup(md: &Md, path: &str, recursive: bool) -> Option<(String, bool)> {
    let s = &md.s;
    let st = s.lock();
    let i = st.instances.get(&md.key)?;
    let num = s.cfg.project_number;
    let path = path.trim_end_matches('/');
    let sa = format!("{num}-compute@developer.gserviceaccount.com");
    let text = |v: String| Some((v, false));
    match path {
        "instance/name" => text(i.name.clone()),
        "instance/id" => text(i.id.to_string()),
        "instance/zone" => text(format!("projects/{num}/zones/{}", i.zone)),
        "instance/hostname" => text(format!("{}.{}.c.{}.internal", i.name, i.zone, s.cfg.project)),
        "instance/machine-type" => text(format!(
            "projects/{num}/machineTypes/{}",
            i.body["machineType"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default()
        )),
        "instance/preempted" => text(if i.preempted { "TRUE" } else { "FALSE" }.into()),
        "instance/maintenance-event" => text("NONE".into()),
        "instance/scheduling/preemptible" => text(
            if i.body["scheduling"]["provisioningModel"] == "SPOT" { "TRUE" } else { "FALSE" }.into(),
        ),
        "project/project-id" => text(s.cfg.project.clone()),
        "project/numeric-project-id" => text(num.to_string()),
        "instance/service-accounts/default/email" => text(sa),
        "instance/service-accounts/default/scopes" => text("https://www.googleapis.com/auth/cloud-platform\n".into()),
        "instance/service-accounts/default/token" => Some((
            json!({"access_token": format!("ya29.emulated-vm-{}", i.id), "expires_in": 3599, "token_type": "Bearer"}).to_string(),
            true,
        )),
        "instance/attributes" => {
            if recursive {
                let m: serde_json::Map<String, serde_json::Value> =
                    i.items.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                Some((serde_json::Value::Object(m).to_string(), true))
            } else {
                text(i.items.iter().map(|(k, _)| format!("{k}\n")).collect())
            }
        }
        p => {
            let k = p.strip_prefix("instance/attributes/")?;
            i.items.iter().find(|(ik, _)| ik == k).map(|(_, v)| (v.clone(), false))
        }
    }
}

async fn handle(
    State(md): State<Md>,
    Path(path): Path<String>,
    h: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if h.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google")
        || h.contains_key("x-forwarded-for")
    {
        return flavored(
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header.\n".into(),
            None,
            false,
        );
    }
    let recursive = q.get("recursive").is_some_and(|v| v == "true");
    let wait = q.get("wait_for_change").is_some_and(|v| v == "true");
    let Some((value, json)) = lookup(&md, &path, recursive) else {
        return flavored(StatusCode::NOT_FOUND, "Not Found\n".into(), None, false);
    };
    let etag = etag_of(&value);
    if !wait {
        return flavored(StatusCode::OK, value, Some(etag), json);
    }
    if q.get("last_etag").is_some_and(|l| *l != etag) {
        return flavored(StatusCode::OK, value, Some(etag), json);
    }
    let hang = q
        .get("timeout_sec")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(DEFAULT_HANG_SECS);
    let rx =
        md.s.lock()
            .instances
            .get(&md.key)
            .map(|i| i.version.subscribe());
    let Some(mut rx) = rx else {
        return flavored(StatusCode::NOT_FOUND, "Not Found\n".into(), None, false);
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(hang);
    loop {
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {
                if let Some((v, j)) = lookup(&md, &path, recursive) {
                    let e = etag_of(&v);
                    if e != etag {
                        return flavored(StatusCode::OK, v, Some(e), j);
                    }
                }
            }
            Ok(Err(_)) => {
                // The instance is gone: the server goes with it.
                std::future::pending::<()>().await;
            }
            Err(_) => return flavored(StatusCode::OK, value, Some(etag), json),
        }
    }
}
