//! [`RestCompute`]: the one real [`Compute`] implementation, Compute Engine v1 REST over
//! reqwest. Both binaries use it: the launcher to create, list and delete VMs, the agent to
//! delete (or stop) its own VM and keep its boot disk.
//!
//! It owns the wire details and nothing else: the base URL (gcloud's
//! `CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE` or the default), a bearer token per request from
//! an injected [`gcp_auth::TokenProvider`], Google's error envelope parsed into
//! [`ComputeError::Api`], retries through the one [`RetryPolicy`], 404 on get/delete/stop as
//! "absent", and paging. Deciding what an Operation's errors mean (failover, quota) is the
//! caller's job. Tokens never reach a log or an error message.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::compute::{
    AcceleratorType, Compute, ComputeError, ComputeProject, Image, Instance, Operation, Region,
    DEFAULT_COMPUTE_ENDPOINT,
};
use crate::contract::ENV_COMPUTE_ENDPOINT;
use crate::google_rest::RestApi;
use crate::retry::{Budget, RetryPolicy};

/// Page size for `instances.list` and `aggregatedList` (the API's maximum).
pub const LIST_PAGE_SIZE: u32 = 500;
/// Most pages one listing follows, so that a server that keeps sending a `nextPageToken`
/// cannot loop us forever (500 × 200 = 100 000 instances).
pub const LIST_MAX_PAGES: usize = 200;

/// Compute Engine v1 over REST (a [`RestApi`] rooted at Compute's base URL).
#[derive(Clone, Debug)]
pub struct RestCompute {
    api: RestApi,
}

/// The Compute endpoint: `CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE` when set and non-empty,
/// else the production endpoint. `lookup` is the environment (injected for tests).
pub fn endpoint_from(lookup: impl Fn(&str) -> Option<String>) -> String {
    lookup(ENV_COMPUTE_ENDPOINT)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_COMPUTE_ENDPOINT.to_string())
}

impl RestCompute {
    /// A client for the v1 API rooted at `base` (e.g. `http://127.0.0.1:PORT/compute/v1/`).
    pub fn new(base: &str, tokens: Arc<dyn gcp_auth::TokenProvider>) -> Result<Self, ComputeError> {
        Ok(RestCompute {
            api: RestApi::new(base, tokens)?,
        })
    }

    /// A client for the endpoint named by the process environment.
    pub fn from_env(tokens: Arc<dyn gcp_auth::TokenProvider>) -> Result<Self, ComputeError> {
        Self::new(&endpoint_from(|k| std::env::var(k).ok()), tokens)
    }

    /// The same client with another retry policy (tests use a fast one).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.api = self.api.with_retry(retry);
        self
    }

    /// The base URL, with its trailing `/`.
    pub fn base_url(&self) -> &str {
        self.api.base_url()
    }

    fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    /// One call with retries. `Ok(None)` is a 404 when `absent_ok`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        absent_ok: bool,
    ) -> Result<Option<T>, ComputeError> {
        self.api.call(method, path, query, body, absent_ok).await
    }
}

/// Google's error envelope.
#[derive(Deserialize)]
struct Envelope {
    error: EnvelopeError,
}

#[derive(Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    errors: Vec<EnvelopeItem>,
}

#[derive(Deserialize)]
struct EnvelopeItem {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

/// Turn an error reply into [`ComputeError::Api`]: `reason` from `errors[0].reason` (or the
/// envelope's `status`), `message` from the envelope, or the shortened body when the reply
/// is not Google's envelope (a proxy, a load balancer).
pub fn api_error(
    method: &str,
    url: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<std::time::Duration>,
) -> ComputeError {
    let (reason, message) = match serde_json::from_slice::<Envelope>(body) {
        Ok(env) => {
            let first = env.error.errors.into_iter().next();
            let reason = first
                .as_ref()
                .map(|i| i.reason.clone())
                .filter(|r| !r.is_empty())
                .unwrap_or(env.error.status);
            let message = if env.error.message.is_empty() {
                first.map(|i| i.message).unwrap_or_default()
            } else {
                env.error.message
            };
            (reason, message)
        }
        Err(_) => (String::new(), crate::http::short_body(body)),
    };
    ComputeError::Api {
        method: method.to_string(),
        url: crate::http::redact_url(url),
        status,
        reason,
        message,
        retry_after,
    }
}

/// One page of `instances.list`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct InstanceList {
    #[serde(default)]
    items: Vec<Instance>,
    #[serde(default)]
    next_page_token: Option<String>,
}

/// One page of `instances.aggregatedList`: `items` keyed by `zones/<zone>`, each holding
/// `instances` or only a `warning` (no instances in that zone).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AggregatedList {
    #[serde(default)]
    items: std::collections::BTreeMap<String, ScopedList>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize, Default)]
struct ScopedList {
    #[serde(default)]
    instances: Vec<Instance>,
}

/// One page of `acceleratorTypes.list`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AcceleratorTypeList {
    #[serde(default)]
    items: Vec<AcceleratorType>,
    #[serde(default)]
    next_page_token: Option<String>,
}

/// One page of `acceleratorTypes.aggregatedList`: `items` keyed by `zones/<zone>`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AcceleratorTypeAggregatedList {
    #[serde(default)]
    items: std::collections::BTreeMap<String, AcceleratorTypesScoped>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AcceleratorTypesScoped {
    #[serde(default)]
    accelerator_types: Vec<AcceleratorType>,
}

/// What a path segment must encode: everything but RFC 3986's unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`), as Google's own clients do, so `us-central1-a` goes out as it is.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One path segment (a project, zone, instance or operation name), percent-encoded.
fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

fn zonal(project: &str, zone: &str, rest: &str) -> String {
    format!("projects/{}/zones/{}/{rest}", seg(project), seg(zone))
}

#[async_trait]
impl Compute for RestCompute {
    async fn insert_instance(
        &self,
        project: &str,
        zone: &str,
        body: &serde_json::Value,
        request_id: &str,
    ) -> Result<Operation, ComputeError> {
        let path = zonal(project, zone, "instances");
        let q = [("requestId", request_id.to_string())];
        self.call(Method::POST, &path, &q, Some(body), false)
            .await?
            .ok_or_else(|| unreachable_absent(&path))
    }

    async fn get_instance(
        &self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<Option<Instance>, ComputeError> {
        let path = zonal(project, zone, &format!("instances/{}", seg(name)));
        self.call(Method::GET, &path, &[], None, true).await
    }

    async fn list_instances(
        &self,
        project: &str,
        zone: Option<&str>,
        filter: &str,
    ) -> Result<Vec<Instance>, ComputeError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..LIST_MAX_PAGES {
            let mut q = vec![("maxResults", LIST_PAGE_SIZE.to_string())];
            if !filter.is_empty() {
                q.push(("filter", filter.to_string()));
            }
            if let Some(t) = &token {
                q.push(("pageToken", t.clone()));
            }
            let next = match zone {
                Some(z) => {
                    let path = zonal(project, z, "instances");
                    let page: InstanceList = self
                        .call(Method::GET, &path, &q, None, false)
                        .await?
                        .unwrap_or_default();
                    out.extend(page.items);
                    page.next_page_token
                }
                None => {
                    let path = format!("projects/{}/aggregated/instances", seg(project));
                    let page: AggregatedList = self
                        .call(Method::GET, &path, &q, None, false)
                        .await?
                        .unwrap_or_default();
                    out.extend(page.items.into_values().flat_map(|s| s.instances));
                    page.next_page_token
                }
            };
            match next.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
        Err(ComputeError::Protocol {
            url: self.url(&format!("projects/{project}/…/instances")),
            detail: format!("still a nextPageToken after {LIST_MAX_PAGES} pages"),
        })
    }

    async fn delete_instance(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        request_id: &str,
    ) -> Result<Option<Operation>, ComputeError> {
        let path = zonal(project, zone, &format!("instances/{}", seg(name)));
        let q = [("requestId", request_id.to_string())];
        self.call(Method::DELETE, &path, &q, None, true).await
    }

    async fn stop_instance(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        request_id: &str,
    ) -> Result<Option<Operation>, ComputeError> {
        let path = zonal(project, zone, &format!("instances/{}/stop", seg(name)));
        let q = [("requestId", request_id.to_string())];
        self.call(Method::POST, &path, &q, None, true).await
    }

    async fn set_disk_auto_delete(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        device_name: &str,
        auto_delete: bool,
        request_id: &str,
    ) -> Result<Operation, ComputeError> {
        let path = zonal(
            project,
            zone,
            &format!("instances/{}/setDiskAutoDelete", seg(name)),
        );
        let q = [
            ("autoDelete", auto_delete.to_string()),
            ("deviceName", device_name.to_string()),
            ("requestId", request_id.to_string()),
        ];
        self.call(Method::POST, &path, &q, None, false)
            .await?
            .ok_or_else(|| unreachable_absent(&path))
    }

    async fn image_from_family(
        &self,
        image_project: &str,
        family: &str,
    ) -> Result<Image, ComputeError> {
        let path = format!(
            "projects/{}/global/images/family/{}",
            seg(image_project),
            seg(family)
        );
        self.call(Method::GET, &path, &[], None, false)
            .await?
            .ok_or_else(|| unreachable_absent(&path))
    }

    async fn get_region(
        &self,
        project: &str,
        region: &str,
    ) -> Result<Option<Region>, ComputeError> {
        let path = format!("projects/{}/regions/{}", seg(project), seg(region));
        self.call(Method::GET, &path, &[], None, true).await
    }

    async fn get_project(&self, project: &str) -> Result<Option<ComputeProject>, ComputeError> {
        let path = format!("projects/{}", seg(project));
        self.call(Method::GET, &path, &[], None, true).await
    }

    async fn list_accelerator_types(
        &self,
        project: &str,
        zone: &str,
    ) -> Result<Option<Vec<AcceleratorType>>, ComputeError> {
        let path = zonal(project, zone, "acceleratorTypes");
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..LIST_MAX_PAGES {
            let mut q = vec![("maxResults", LIST_PAGE_SIZE.to_string())];
            if let Some(t) = &token {
                q.push(("pageToken", t.clone()));
            }
            let Some(page) = self
                .call::<AcceleratorTypeList>(Method::GET, &path, &q, None, true)
                .await?
            else {
                return Ok(None);
            };
            out.extend(page.items);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(Some(out)),
            }
        }
        Err(ComputeError::Protocol {
            url: self.url(&path),
            detail: format!("still a nextPageToken after {LIST_MAX_PAGES} pages"),
        })
    }

    async fn aggregated_accelerator_types(
        &self,
        project: &str,
    ) -> Result<std::collections::BTreeMap<String, Vec<AcceleratorType>>, ComputeError> {
        let path = format!("projects/{}/aggregated/acceleratorTypes", seg(project));
        let mut out = std::collections::BTreeMap::new();
        let mut token: Option<String> = None;
        for _ in 0..LIST_MAX_PAGES {
            let mut q = vec![("maxResults", LIST_PAGE_SIZE.to_string())];
            if let Some(t) = &token {
                q.push(("pageToken", t.clone()));
            }
            let page: AcceleratorTypeAggregatedList = self
                .call(Method::GET, &path, &q, None, false)
                .await?
                .unwrap_or_default();
            for (key, scoped) in page.items {
                if scoped.accelerator_types.is_empty() {
                    continue;
                }
                let zone = key.strip_prefix("zones/").unwrap_or(&key).to_string();
                out.entry(zone)
                    .or_insert_with(Vec::new)
                    .extend(scoped.accelerator_types);
            }
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
        Err(ComputeError::Protocol {
            url: self.url(&path),
            detail: format!("still a nextPageToken after {LIST_MAX_PAGES} pages"),
        })
    }

    async fn get_operation(
        &self,
        project: &str,
        zone: &str,
        operation: &str,
    ) -> Result<Operation, ComputeError> {
        let path = zonal(project, zone, &format!("operations/{}", seg(operation)));
        self.call(Method::GET, &path, &[], None, false)
            .await?
            .ok_or_else(|| unreachable_absent(&path))
    }

    async fn wait_operation(
        &self,
        project: &str,
        zone: &str,
        operation: &str,
    ) -> Result<Operation, ComputeError> {
        let path = zonal(
            project,
            zone,
            &format!("operations/{}/wait", seg(operation)),
        );
        self.call(Method::POST, &path, &[], None, false)
            .await?
            .ok_or_else(|| unreachable_absent(&path))
    }

    async fn wait_done(
        &self,
        project: &str,
        zone: &str,
        op: Operation,
        deadline: std::time::Duration,
    ) -> Result<Operation, ComputeError> {
        let start = tokio::time::Instant::now();
        let what = format!("wait for operation {}", op.name);
        let mut ctx = self.api.context(Budget::until(start + deadline), what);
        let mut op = op;
        while !op.is_done() {
            op.check_wait_deadline(start, deadline)?;
            let path = zonal(project, zone, &format!("operations/{}/wait", seg(&op.name)));
            op = match self
                .api
                .call_in(&mut ctx, Method::POST, &path, &[], None, false)
                .await
            {
                Ok(next) => next.ok_or_else(|| unreachable_absent(&path))?,
                // The budget ended with the deadline: that is the wait timing out.
                Err(e) if ctx.out_of_time() || start.elapsed() >= deadline => {
                    tracing::debug!("{e}");
                    return Err(ComputeError::OperationTimeout {
                        operation: op.name,
                        secs: deadline.as_secs(),
                    });
                }
                Err(e) => return Err(e),
            };
            op.pause_if_not_done().await;
        }
        Ok(op)
    }
}

/// `call(.., absent_ok = false)` never yields `None`; this keeps the types honest without
/// a panic.
fn unreachable_absent(path: &str) -> ComputeError {
    ComputeError::Protocol {
        url: path.to_string(),
        detail: "no body where one was expected".into(),
    }
}

/// A token provider that hands out one fixed token: for emulators and tests.
#[derive(Debug, Clone)]
pub struct StaticToken {
    token: Arc<gcp_auth::Token>,
}

/// How long a [`StaticToken`] claims to stay valid, in seconds (it never refreshes).
pub const STATIC_TOKEN_LIFETIME_SECS: u64 = 3600;

impl StaticToken {
    /// A provider that always returns `token`.
    pub fn new(token: &str) -> Result<Self, ComputeError> {
        let token: gcp_auth::Token = serde_json::from_value(serde_json::json!({
            "access_token": token,
            "expires_in": STATIC_TOKEN_LIFETIME_SECS,
        }))
        .map_err(|e| ComputeError::Auth(format!("could not build a static token: {e}")))?;
        Ok(StaticToken {
            token: Arc::new(token),
        })
    }
}

#[async_trait]
impl gcp_auth::TokenProvider for StaticToken {
    async fn token(&self, _scopes: &[&str]) -> Result<Arc<gcp_auth::Token>, gcp_auth::Error> {
        Ok(self.token.clone())
    }

    async fn project_id(&self) -> Result<Arc<str>, gcp_auth::Error> {
        Err(gcp_auth::Error::Str("a static token carries no project id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Path, Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::{json, Value};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    #[derive(Default)]
    struct Fake {
        inserts: AtomicU32,
        /// requestIds seen on insert, in order.
        request_ids: Mutex<Vec<String>>,
        /// How many inserts fail with 503 before one succeeds.
        insert_503s: AtomicU32,
        auth_headers: Mutex<Vec<String>>,
        deletes: AtomicU32,
        list_pages: AtomicU32,
    }

    type S = Arc<Fake>;

    async fn insert(
        State(s): State<S>,
        Path((p, z)): Path<(String, String)>,
        Query(q): Query<HashMap<String, String>>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        s.inserts.fetch_add(1, Ordering::SeqCst);
        s.request_ids
            .lock()
            .unwrap()
            .push(q.get("requestId").cloned().unwrap_or_default());
        s.auth_headers.lock().unwrap().push(
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        );
        if s.insert_503s.load(Ordering::SeqCst) > 0 {
            s.insert_503s.fetch_sub(1, Ordering::SeqCst);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error":{"code":503,"message":"backend error",
                    "errors":[{"reason":"backendError","message":"backend error"}]}})),
            );
        }
        if body["name"] == "taken" {
            return (
                StatusCode::CONFLICT,
                Json(json!({"error":{"code":409,
                    "message":format!("The resource 'projects/{p}/zones/{z}/instances/taken' already exists"),
                    "errors":[{"reason":"alreadyExists","domain":"global","message":"exists"}]}})),
            );
        }
        (
            StatusCode::OK,
            Json(
                json!({"kind":"compute#operation","id":"1","name":"operation-1",
                "status":"PENDING","zone":format!("https://x/compute/v1/projects/{p}/zones/{z}"),
                "operationType":"insert","clientOperationId":q.get("requestId")}),
            ),
        )
    }

    async fn get_inst(
        Path((_p, _z, n)): Path<(String, String, String)>,
    ) -> (StatusCode, Json<Value>) {
        if n == "gone" {
            (
                StatusCode::NOT_FOUND,
                Json(
                    json!({"error":{"code":404,"message":"The resource 'x' was not found",
                    "errors":[{"reason":"notFound","message":"nf"}]}}),
                ),
            )
        } else {
            (
                StatusCode::OK,
                Json(
                    json!({"name":n,"status":"RUNNING","zone":"https://x/zones/us-central1-a","id":"7"}),
                ),
            )
        }
    }

    async fn del_inst(
        State(s): State<S>,
        Path((_p, _z, n)): Path<(String, String, String)>,
    ) -> (StatusCode, Json<Value>) {
        s.deletes.fetch_add(1, Ordering::SeqCst);
        if n == "gone" {
            (
                StatusCode::NOT_FOUND,
                Json(
                    json!({"error":{"code":404,"message":"not found","errors":[{"reason":"notFound"}]}}),
                ),
            )
        } else {
            (
                StatusCode::OK,
                Json(json!({"name":"operation-d","status":"RUNNING"})),
            )
        }
    }

    async fn aggregated(
        State(s): State<S>,
        Query(q): Query<HashMap<String, String>>,
    ) -> Json<Value> {
        s.list_pages.fetch_add(1, Ordering::SeqCst);
        assert_eq!(
            q.get("filter").map(String::as_str),
            Some("labels.cloudrun-managed = true")
        );
        match q.get("pageToken").map(String::as_str) {
            None => Json(json!({"items":{
                "zones/us-central1-a":{"instances":[{"name":"a1"}]},
                "zones/us-east1-b":{"warning":{"code":"NO_RESULTS_ON_PAGE","message":"none"}}},
                "nextPageToken":"p2"})),
            Some("p2") => Json(
                json!({"items":{"zones/europe-west4-a":{"instances":[{"name":"b1"},{"name":"b2"}]}}}),
            ),
            Some(other) => panic!("unexpected page token {other}"),
        }
    }

    async fn family(Path((_p, f)): Path<(String, String)>) -> (StatusCode, Json<Value>) {
        if f == "retired" {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error":{"code":404,
                    "message":"The resource 'projects/deeplearning-platform-release/global/images/family/retired' was not found",
                    "errors":[{"reason":"notFound","message":"nf"}]}})),
            )
        } else {
            (
                StatusCode::OK,
                Json(json!({"name":"img-v1","family":f,"diskSizeGb":"50",
                "selfLink":"https://x/compute/v1/projects/p/global/images/img-v1","status":"READY"})),
            )
        }
    }

    async fn start(fake: S) -> String {
        let app = Router::new()
            .route("/compute/v1/projects/{p}/zones/{z}/instances", post(insert))
            .route(
                "/compute/v1/projects/{p}/zones/{z}/instances/{n}",
                get(get_inst).delete(del_inst),
            )
            .route(
                "/compute/v1/projects/{p}/aggregated/instances",
                get(aggregated),
            )
            .route(
                "/compute/v1/projects/{p}/global/images/family/{f}",
                get(family),
            )
            .with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/compute/v1")
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            total_deadline: Duration::from_secs(10),
        }
    }

    async fn client(fake: &S) -> RestCompute {
        let base = start(fake.clone()).await;
        RestCompute::new(&base, Arc::new(StaticToken::new("tok-123").unwrap()))
            .unwrap()
            .with_retry(fast())
    }

    #[tokio::test]
    async fn insert_retried_after_503_reuses_the_request_id_and_sends_the_token() {
        let fake = S::default();
        fake.insert_503s.store(2, Ordering::SeqCst);
        let c = client(&fake).await;
        let op = c
            .insert_instance("p", "us-central1-a", &json!({"name":"vm"}), "rid-1")
            .await
            .unwrap();
        assert_eq!(op.status, "PENDING");
        assert_eq!(fake.inserts.load(Ordering::SeqCst), 3);
        assert_eq!(
            *fake.request_ids.lock().unwrap(),
            ["rid-1", "rid-1", "rid-1"]
        );
        assert!(fake
            .auth_headers
            .lock()
            .unwrap()
            .iter()
            .all(|h| h == "Bearer tok-123"));
    }

    #[tokio::test]
    async fn a_409_is_parsed_from_the_envelope_and_not_retried() {
        let fake = S::default();
        let c = client(&fake).await;
        let err = c
            .insert_instance("p", "z", &json!({"name":"taken"}), "rid")
            .await
            .unwrap_err();
        match &err {
            ComputeError::Api {
                status,
                reason,
                message,
                ..
            } => {
                assert_eq!(*status, 409);
                assert_eq!(reason, "alreadyExists");
                assert!(message.contains("already exists"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.inserts.load(Ordering::SeqCst), 1);
        assert!(!err.to_string().contains("tok-123"));
    }

    #[tokio::test]
    async fn get_and_delete_of_a_missing_instance_are_none() {
        let fake = S::default();
        let c = client(&fake).await;
        assert!(c.get_instance("p", "z", "gone").await.unwrap().is_none());
        assert_eq!(
            c.get_instance("p", "z", "vm")
                .await
                .unwrap()
                .unwrap()
                .zone_name(),
            "us-central1-a"
        );
        assert!(c
            .delete_instance("p", "z", "gone", "r")
            .await
            .unwrap()
            .is_none());
        assert!(c
            .delete_instance("p", "z", "vm", "r")
            .await
            .unwrap()
            .is_some());
        assert_eq!(fake.deletes.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn aggregated_list_follows_pages_and_skips_warning_zones() {
        let fake = S::default();
        let c = client(&fake).await;
        let mut names: Vec<String> = c
            .list_instances("p", None, "labels.cloudrun-managed = true")
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        names.sort();
        assert_eq!(names, ["a1", "b1", "b2"]);
        assert_eq!(fake.list_pages.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_retired_image_family_is_a_404_api_error() {
        let fake = S::default();
        let c = client(&fake).await;
        let img = c
            .image_from_family("deeplearning-platform-release", "common-cu124")
            .await
            .unwrap();
        assert_eq!(img.disk_size_gb, "50");
        let err = c
            .image_from_family("deeplearning-platform-release", "retired")
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(404));
    }

    #[test]
    fn a_non_google_error_body_is_kept_short() {
        let e = api_error(
            "GET",
            "http://h/x?token=1",
            502,
            b"<html>bad gateway</html>",
            None,
        );
        let s = e.to_string();
        assert!(
            s.contains("bad gateway") && s.contains("http://h/x?…"),
            "{s}"
        );
    }

    #[test]
    fn the_endpoint_override_is_gclouds_variable() {
        assert_eq!(endpoint_from(|_| None), DEFAULT_COMPUTE_ENDPOINT);
        assert_eq!(
            endpoint_from(
                |k| (k == ENV_COMPUTE_ENDPOINT).then(|| "http://127.0.0.1:9/compute/v1/".into())
            ),
            "http://127.0.0.1:9/compute/v1/"
        );
    }
}
