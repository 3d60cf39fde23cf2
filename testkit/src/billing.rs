//! An emulated Cloud Billing Catalog API on loopback (reference/billing-catalog.md §8):
//! `GET /v1/services` and `GET /v1/services/{id}/skus`, paged with an opaque
//! `pageToken` (the last page says `"nextPageToken": ""`), `pageSize` capped at 5000 and
//! at the emulator's own page size (so tests see several pages), `key=` or a bearer
//! token accepted. The SKUs come from a fixture shaped exactly as the real API answers
//! ([`compute_skus_fixture`]); faults make a page not JSON or answer 403 as an API that
//! is not enabled does.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

/// Compute Engine's service id.
pub const COMPUTE_SERVICE_ID: &str = "6F81-5844-456A";
/// The API's largest page.
pub const MAX_PAGE_SIZE: usize = 5000;

/// The fixture: every Compute SKU cloudrun prices from, plus lookalikes, as one
/// `skus.list` answer (written by `fixtures/billing/make_compute_skus.py`).
pub fn compute_skus_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/billing/compute-skus.json")
}

/// The fixture's SKUs.
pub fn compute_skus() -> Vec<Value> {
    let text = std::fs::read_to_string(compute_skus_fixture()).expect("read the SKU fixture");
    let v: Value = serde_json::from_str(&text).expect("the SKU fixture is JSON");
    v["skus"]
        .as_array()
        .cloned()
        .expect("skus[] in the fixture")
}

/// What the emulator does wrong, on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer correctly.
    None,
    /// The second page (or the only one) is HTML, as a proxy's error page is.
    NotJson,
    /// 403 `SERVICE_DISABLED`, as Google answers when the Billing API is not enabled.
    NotEnabled,
}

struct St {
    skus: Vec<Value>,
    page_size: usize,
    fault: Fault,
    /// Every request: path and query.
    calls: Vec<String>,
}

type S = Arc<Mutex<St>>;

/// The running emulator; dropping it stops the server. It runs on a thread of its own,
/// so tests may start it from inside an async runtime or outside one.
pub struct BillingEmulator {
    st: S,
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for BillingEmulator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl BillingEmulator {
    /// Serve `skus` (use [`compute_skus`] for the fixture) in pages of `page_size`.
    pub fn start(skus: Vec<Value>, page_size: usize) -> BillingEmulator {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the billing port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("local addr").port();
        let st = Arc::new(Mutex::new(St {
            skus,
            page_size: page_size.clamp(1, MAX_PAGE_SIZE),
            fault: Fault::None,
            calls: Vec::new(),
        }));
        let app = Router::new()
            .route("/v1/services", get(services))
            .route("/v1/services/{id}/skus", get(skus_page))
            .with_state(st.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("billing-emulator".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("start the billing emulator's runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .expect("spawn the billing emulator");
        BillingEmulator {
            st,
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `http://127.0.0.1:PORT/`, for `CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDBILLING`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn set_fault(&self, f: Fault) {
        self.lock().fault = f;
    }

    /// Every request so far (path and query).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }
}

fn envelope(status: StatusCode, reason: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {
            "code": status.as_u16(),
            "message": message,
            "status": reason,
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                         "domain": "googleapis.com",
                         "metadata": {"service": "cloudbilling.googleapis.com"}}],
        }})),
    )
        .into_response()
}

async fn services(
    State(st): State<S>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    st.lock()
        .unwrap_or_else(|e| e.into_inner())
        .calls
        .push(format!("/v1/services {q:?}"));
    axum::Json(json!({"services": [{
        "name": format!("services/{COMPUTE_SERVICE_ID}"),
        "serviceId": COMPUTE_SERVICE_ID,
        "displayName": "Compute Engine",
        "businessEntityName": "businessEntities/GCP",
    }], "nextPageToken": ""}))
    .into_response()
}

/// Page tokens are opaque to clients: `pg-<offset>` here.
fn token_for(offset: usize) -> String {
    format!("pg-{offset:08x}")
}

fn offset_of(token: &str) -> Option<usize> {
    usize::from_str_radix(token.strip_prefix("pg-")?, 16).ok()
}

async fn skus_page(
    State(st): State<S>,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let mut st = st.lock().unwrap_or_else(|e| e.into_inner());
    st.calls.push(format!("/v1/services/{id}/skus {q:?}"));
    if st.fault == Fault::NotEnabled {
        return envelope(
            StatusCode::FORBIDDEN,
            "SERVICE_DISABLED",
            "Cloud Billing API has not been used in project 123456789012 before or it is disabled. Enable it by visiting https://console.developers.google.com/apis/api/cloudbilling.googleapis.com/overview?project=123456789012 then retry.",
        );
    }
    if id != COMPUTE_SERVICE_ID {
        return envelope(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Service services/{id} not found."),
        );
    }
    let size = match q.get("pageSize").map(|s| s.parse::<usize>()) {
        None => MAX_PAGE_SIZE,
        Some(Ok(n)) if n > 0 => n.min(MAX_PAGE_SIZE),
        Some(_) => {
            return envelope(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "Invalid page size.",
            )
        }
    }
    .min(st.page_size);
    let offset = match q.get("pageToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => match offset_of(t) {
            Some(o) if o <= st.skus.len() => o,
            _ => {
                return envelope(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "Invalid page token.",
                )
            }
        },
    };
    if st.fault == Fault::NotJson && (offset > 0 || st.skus.len() <= size) {
        return (
            StatusCode::OK,
            [("content-type", "text/html")],
            "<html><body>502 Bad Gateway</body></html>",
        )
            .into_response();
    }
    let end = (offset + size).min(st.skus.len());
    let page: Vec<Value> = st.skus[offset..end].to_vec();
    let next = if end < st.skus.len() {
        token_for(end)
    } else {
        String::new()
    };
    axum::Json(json!({"skus": page, "nextPageToken": next})).into_response()
}
