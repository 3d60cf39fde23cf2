//! Retries live at the request, once: contract tests of the GCS and Compute clients
//! against an in-process server that counts every request. A write given one attempt
//! makes exactly one request; a deadline bounds a whole resumable upload, across its
//! chunks; a 4xx other than 408 and 429 is never retried; 404 means absent; the server's
//! `Retry-After` is waited for; an operation wait has one budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes as Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use bytes::Bytes;
use cloudrun::compute::{Compute, ComputeError, Operation};
use cloudrun::compute_rest::{RestCompute, StaticToken};
use cloudrun::retry::{Budget, RetryPolicy};
use cloudrun::storage::gcs::{Endpoint, GcsStorage, SIMPLE_UPLOAD_MAX_BYTES};
use cloudrun::storage::{PutOptions, Storage, StorageError};

/// A policy that would retry many times, quickly: whatever stops a test's retries is
/// what the test is about, not the policy's own limits.
fn eager() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 50,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        total_deadline: Duration::from_secs(60),
    }
}

/// What the server answers, and what it saw.
#[derive(Default)]
struct Script {
    /// Requests of every kind, in order: `METHOD path`.
    seen: Mutex<Vec<String>>,
    /// Statuses to answer the next requests with (then 200 with an object).
    statuses: Mutex<Vec<u16>>,
    /// `Retry-After` seconds sent with a scripted error status.
    retry_after_secs: Option<u64>,
    /// Resumable session: bytes committed so far.
    committed: AtomicU64,
    /// Resumable chunk PUTs received.
    chunk_puts: AtomicU32,
}

type S = Arc<Script>;

impl Script {
    fn with(statuses: &[u16]) -> S {
        Arc::new(Script {
            statuses: Mutex::new(statuses.to_vec()),
            ..Script::default()
        })
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The next scripted status, if any is left (0 in a script: answer normally).
    fn next_status(&self) -> Option<u16> {
        let mut v = self.statuses.lock().unwrap();
        (!v.is_empty()).then(|| v.remove(0)).filter(|st| *st != 0)
    }

    fn error(&self, status: u16) -> Response {
        let mut r = (
            StatusCode::from_u16(status).unwrap(),
            format!("{{\"error\":{{\"code\":{status},\"message\":\"scripted\"}}}}"),
        )
            .into_response();
        if let Some(s) = self.retry_after_secs {
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(s as u32));
        }
        r
    }
}

fn object_json(name: &str, data: &[u8]) -> String {
    serde_json::json!({
        "name": name,
        "size": data.len().to_string(),
        "generation": "1",
        "crc32c": cloudrun::storage::crc32c_to_base64(crc32c::crc32c(data)),
    })
    .to_string()
}

/// The JSON API's object routes (`GET`, `DELETE`): the scripted status, else the object.
async fn object(State(s): State<S>, method: axum::http::Method, uri: axum::http::Uri) -> Response {
    s.seen
        .lock()
        .unwrap()
        .push(format!("{method} {}", uri.path()));
    match s.next_status() {
        Some(st) => s.error(st),
        None if method == axum::http::Method::DELETE => StatusCode::NO_CONTENT.into_response(),
        None => object_json("k", b"hello").into_response(),
    }
}

/// Uploads: multipart, resumable session starts and chunks.
async fn upload(
    State(s): State<S>,
    method: axum::http::Method,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let kind = q.get("uploadType").cloned().unwrap_or_default();
    s.seen
        .lock()
        .unwrap()
        .push(format!("{method} upload {kind}"));
    if method == axum::http::Method::POST && kind == "resumable" {
        let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap();
        let loc =
            format!("http://{host}/upload/storage/v1/b/bkt/o?uploadType=resumable&upload_id=u1");
        return (StatusCode::OK, [("location", loc)]).into_response();
    }
    if method == axum::http::Method::PUT {
        // A chunk (`bytes a-b/total`) or a status query (`bytes */total`).
        let range = headers
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !range.starts_with("bytes */") {
            s.chunk_puts.fetch_add(1, Ordering::SeqCst);
            if let Some(st) = s.next_status() {
                return s.error(st);
            }
            s.committed.fetch_add(body.len() as u64, Ordering::SeqCst);
        }
        let done = s.committed.load(Ordering::SeqCst);
        let mut r = StatusCode::PERMANENT_REDIRECT.into_response();
        if done > 0 {
            r.headers_mut().insert(
                "range",
                HeaderValue::from_str(&format!("bytes=0-{}", done - 1)).unwrap(),
            );
        }
        return r;
    }
    match s.next_status() {
        Some(st) => s.error(st),
        None => object_json("k", b"hello").into_response(),
    }
}

async fn serve(s: S) -> String {
    let app = Router::new()
        .route("/storage/v1/b/{b}/o/{k}", any(object))
        .route("/upload/storage/v1/b/{b}/o", any(upload))
        .with_state(s);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("127.0.0.1:{}", addr.port())
}

async fn gcs(s: &S) -> GcsStorage {
    GcsStorage::new("bkt", Endpoint::emulator(&serve(s.clone()).await), None)
        .unwrap()
        .with_retry(eager())
}

#[tokio::test]
async fn a_write_given_one_attempt_makes_exactly_one_request() {
    let s = Script::with(&[503, 503, 503]);
    let store = gcs(&s).await;
    let opts = PutOptions::default().with_budget(Budget::once());
    let r = store
        .put_bytes("k", Bytes::from_static(b"hello"), &opts)
        .await;
    assert!(
        matches!(r, Err(StorageError::Http { status: 503, .. })),
        "{r:?}"
    );
    assert_eq!(s.requests(), 1, "{:?}", s.seen.lock().unwrap());
}

#[tokio::test]
async fn the_same_write_with_the_default_budget_is_retried_by_the_client() {
    let s = Script::with(&[503, 503]);
    let store = gcs(&s).await;
    let m = store
        .put_bytes("k", Bytes::from_static(b"hello"), &PutOptions::default())
        .await
        .unwrap();
    assert_eq!(m.size, 5);
    assert_eq!(s.requests(), 3);
}

#[tokio::test]
async fn a_deadline_bounds_a_resumable_upload_across_its_chunks() {
    // Every chunk's first PUT fails with a 503 asking for 1 s. With a budget per chunk
    // the upload would crawl on for a minute (36 chunks); with one budget for the whole
    // upload it gives up once the next retry would end past the 3 s deadline.
    let chunk = 256 << 10;
    let data = Bytes::from(vec![7u8; SIMPLE_UPLOAD_MAX_BYTES as usize + chunk]);
    let chunks = data.len().div_ceil(chunk);
    // Chunk PUTs alternate: fail, succeed, fail, succeed...
    let s = Arc::new(Script {
        statuses: Mutex::new((0..2 * chunks).map(|i| [503, 0][i % 2]).collect()),
        retry_after_secs: Some(1),
        ..Script::default()
    });
    let store = gcs(&s).await.with_chunk_bytes(chunk);
    let deadline = Duration::from_secs(3);
    let opts = PutOptions::default().with_budget(Budget::within(deadline));
    let t0 = Instant::now();
    let r = store.put_bytes("big", data, &opts).await;
    let spent = t0.elapsed();
    assert!(
        matches!(r, Err(StorageError::Http { status: 503, .. })),
        "{r:?}"
    );
    assert!(spent < deadline + Duration::from_secs(2), "{spent:?}");
    // Three failures fit (at about 0, 1 and 2 s); each was followed by one good chunk.
    let puts = s.chunk_puts.load(Ordering::SeqCst);
    assert!(puts <= 6, "{puts} chunk PUTs of {chunks} chunks");
}

#[tokio::test]
async fn client_errors_other_than_408_and_429_are_not_retried() {
    for status in [400u16, 401, 403, 409, 412] {
        let s = Script::with(&[status, status, status]);
        let store = gcs(&s).await;
        let r = store.head("k").await;
        assert!(r.is_err(), "{status}: {r:?}");
        let r = store
            .put_bytes("k", Bytes::from_static(b"hello"), &PutOptions::default())
            .await;
        assert!(r.is_err(), "{status}: {r:?}");
        assert_eq!(s.requests(), 2, "{status}: {:?}", s.seen.lock().unwrap());
    }
    for status in [408u16, 429, 500, 503] {
        let s = Script::with(&[status]);
        let store = gcs(&s).await;
        assert!(store.head("k").await.unwrap().is_some(), "{status}");
        assert_eq!(s.requests(), 2, "{status}");
    }
}

#[tokio::test]
async fn not_found_means_absent_after_one_request() {
    let s = Script::with(&[404, 404, 404]);
    let store = gcs(&s).await;
    assert_eq!(store.head("k").await.unwrap(), None);
    assert!(!store.delete("k").await.unwrap());
    let r = store.get_bytes("k").await;
    assert!(matches!(r, Err(StorageError::NotFound { .. })), "{r:?}");
    assert_eq!(s.requests(), 3, "{:?}", s.seen.lock().unwrap());
}

#[tokio::test]
async fn retry_after_is_waited_for() {
    let s = Arc::new(Script {
        statuses: Mutex::new(vec![503]),
        retry_after_secs: Some(1),
        ..Script::default()
    });
    let store = gcs(&s).await;
    let t0 = Instant::now();
    assert!(store.head("k").await.unwrap().is_some());
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(s.requests(), 2);
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_ends_the_write_at_once() {
    let s = Arc::new(Script {
        statuses: Mutex::new(vec![503]),
        retry_after_secs: Some(30),
        ..Script::default()
    });
    let store = gcs(&s).await;
    let opts = PutOptions::default().with_budget(Budget::within(Duration::from_secs(5)));
    let t0 = Instant::now();
    let r = store
        .put_bytes("k", Bytes::from_static(b"hello"), &opts)
        .await;
    assert!(r.is_err());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(s.requests(), 1);
}

/// Compute: `operations/{op}/wait` always failing with a 503, counting calls.
async fn serve_compute(calls: Arc<AtomicU32>, status: u16) -> String {
    let app = Router::new()
        .route(
            "/compute/v1/projects/{p}/zones/{z}/operations/{o}/wait",
            post(move |State(c): State<Arc<AtomicU32>>| async move {
                c.fetch_add(1, Ordering::SeqCst);
                (
                    StatusCode::from_u16(status).unwrap(),
                    format!("{{\"error\":{{\"code\":{status},\"message\":\"scripted\"}}}}"),
                )
            }),
        )
        .route(
            "/compute/v1/projects/{p}/zones/{z}/instances/{n}",
            any(|State(c): State<Arc<AtomicU32>>| async move {
                c.fetch_add(1, Ordering::SeqCst);
                (StatusCode::SERVICE_UNAVAILABLE, "{}")
            }),
        )
        .with_state(calls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/compute/v1/")
}

fn compute(base: &str, policy: RetryPolicy) -> RestCompute {
    RestCompute::new(base, Arc::new(StaticToken::new("t").unwrap()))
        .unwrap()
        .with_retry(policy)
}

#[tokio::test]
async fn a_compute_call_under_a_no_retry_policy_makes_exactly_one_request() {
    let calls = Arc::new(AtomicU32::new(0));
    let base = serve_compute(calls.clone(), 503).await;
    let c = compute(&base, RetryPolicy::none());
    let r = c.get_instance("p", "us-central1-a", "vm").await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_operation_wait_has_one_budget_that_ends_at_its_deadline() {
    // The wait call keeps failing with a retryable 503. Retried per call by a fresh
    // policy (as it was), this took minutes; under one budget it ends at the deadline.
    let calls = Arc::new(AtomicU32::new(0));
    let base = serve_compute(calls.clone(), 503).await;
    let policy = RetryPolicy {
        max_attempts: 1000,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        total_deadline: Duration::from_secs(600),
    };
    let c = compute(&base, policy);
    let op = Operation {
        name: "operation-1".into(),
        status: "RUNNING".into(),
        ..Operation::default()
    };
    let deadline = Duration::from_secs(2);
    let t0 = Instant::now();
    let r = cloudrun::compute::wait_until_done(&c, "p", "us-central1-a", op, deadline).await;
    let spent = t0.elapsed();
    assert!(
        matches!(r, Err(ComputeError::OperationTimeout { .. })),
        "{r:?}"
    );
    assert!(spent < deadline + Duration::from_secs(2), "{spent:?}");
    assert!(calls.load(Ordering::SeqCst) > 1);
}

#[tokio::test]
async fn a_permanent_error_ends_an_operation_wait_after_one_request() {
    let calls = Arc::new(AtomicU32::new(0));
    let base = serve_compute(calls.clone(), 403).await;
    let c = compute(&base, eager());
    let op = Operation {
        name: "operation-1".into(),
        status: "RUNNING".into(),
        ..Operation::default()
    };
    let r = c
        .wait_done("p", "us-central1-a", op, Duration::from_secs(30))
        .await;
    assert!(
        matches!(r, Err(ComputeError::Api { status: 403, .. })),
        "{r:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_retried_delete_repeats_its_request_id_inside_the_client() {
    // The one retry of a delete is the client's: every attempt carries the same
    // requestId, so Compute acts once however many attempts reach it.
    let ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let app = Router::new()
        .route(
            "/compute/v1/projects/{p}/zones/{z}/instances/{n}",
            any(
                |State(ids): State<Arc<Mutex<Vec<String>>>>,
                 Query(q): Query<HashMap<String, String>>| async move {
                    let mut v = ids.lock().unwrap();
                    v.push(q.get("requestId").cloned().unwrap_or_default());
                    if v.len() < 3 {
                        (StatusCode::SERVICE_UNAVAILABLE, "{}".to_string())
                    } else {
                        (
                            StatusCode::OK,
                            r#"{"name":"operation-d","status":"DONE"}"#.to_string(),
                        )
                    }
                },
            ),
        )
        .with_state(ids.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let c = compute(&format!("http://{addr}/compute/v1/"), eager());
    let op = c
        .delete_instance("p", "us-central1-a", "vm", "req-1")
        .await
        .unwrap()
        .unwrap();
    assert!(op.is_done());
    assert_eq!(*ids.lock().unwrap(), vec!["req-1"; 3]);
}
