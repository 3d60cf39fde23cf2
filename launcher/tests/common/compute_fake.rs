//! A small in-process Compute Engine v1 fake (axum) that reproduces the real service's
//! quirks the launcher depends on: inserts return a PENDING Operation and capacity or
//! quota failures arrive late, as DONE with `error.errors`; a `requestId` seen before
//! returns the first Operation instead of creating a second VM; an instance record exists
//! as soon as the insert is accepted (even in an exhausted zone, until it is cleaned up);
//! `aggregatedList` groups instances under `zones/<zone>` and honours a
//! `labels.KEY = VALUE` filter. Every request's `Authorization` header and every delete
//! are recorded so tests can count them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as P, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// How a zone answers an insert.
#[derive(Clone, Copy, Debug)]
pub enum Zone {
    Ok,
    Exhausted,
    Quota(&'static str),
    /// The insert lands, but the reply is lost (503) the first time.
    LostReply,
}

/// The fake's state; tests read the recorded calls.
#[derive(Default)]
pub struct Fake {
    pub zones: BTreeMap<String, Zone>,
    /// (zone, requestId) per insert call.
    pub inserts: Mutex<Vec<(String, String)>>,
    /// The body of every insert call, in order.
    pub insert_bodies: Mutex<Vec<Value>>,
    /// requestId → operation name.
    ops_by_request: Mutex<HashMap<String, String>>,
    /// operation name → (zone, instance, outcome).
    ops: Mutex<HashMap<String, (String, String, Zone)>>,
    /// (zone, name) → instance resource.
    pub instances: Mutex<BTreeMap<(String, String), Value>>,
    /// `zone/name` per delete call.
    pub deletes: Mutex<Vec<String>>,
    /// The `filter` of every list call.
    pub list_filters: Mutex<Vec<String>>,
    /// The `Authorization` header of every request (`""` when absent).
    pub auth_headers: Mutex<Vec<String>>,
    lost_once: Mutex<bool>,
}

impl Fake {
    /// Put a VM there directly, as a resource the API would return.
    pub fn add_instance(
        &self,
        zone: &str,
        name: &str,
        status: &str,
        labels: &[(&str, &str)],
        created: &str,
    ) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let v = json!({"name": name, "labels": labels});
        self.instances.lock().unwrap().insert(
            (zone.into(), name.into()),
            resource(v, zone, status, created),
        );
    }

    pub fn delete_count(&self) -> usize {
        self.deletes.lock().unwrap().len()
    }
}

pub type S = Arc<Fake>;

const PROJECT_URL: &str = "https://www.googleapis.com/compute/v1/projects/test-proj";

/// What real Compute adds to an inserted body: zone URL, status, creation time.
fn resource(mut body: Value, zone: &str, status: &str, created: &str) -> Value {
    body["kind"] = json!("compute#instance");
    body["zone"] = json!(format!("{PROJECT_URL}/zones/{zone}"));
    body["status"] = json!(status);
    body["creationTimestamp"] = json!(created);
    body
}

fn op(name: &str, zone: &str, status: &str, error: Option<Value>) -> Value {
    let mut v = json!({"kind":"compute#operation","id":"42","name":name,"status":status,
        "operationType":"insert","zone":format!("{PROJECT_URL}/zones/{zone}")});
    if let Some(e) = error {
        v["error"] = e;
        v["httpErrorStatusCode"] = json!(503);
    }
    v
}

fn not_found() -> (StatusCode, Json<Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error":{"code":404,"message":"not found","errors":[{"reason":"notFound"}]}})),
    )
}

async fn insert(
    State(s): State<S>,
    P((_p, zone)): P<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let rid = q.get("requestId").cloned().unwrap_or_default();
    let name = body["name"].as_str().unwrap_or_default().to_string();
    s.inserts.lock().unwrap().push((zone.clone(), rid.clone()));
    s.insert_bodies.lock().unwrap().push(body.clone());
    if let Some(existing) = s.ops_by_request.lock().unwrap().get(&rid).cloned() {
        return (StatusCode::OK, Json(op(&existing, &zone, "PENDING", None)));
    }
    let outcome = s.zones.get(&zone).copied().unwrap_or(Zone::Exhausted);
    let op_name = format!("operation-{}", s.ops.lock().unwrap().len() + 1);
    s.ops_by_request
        .lock()
        .unwrap()
        .insert(rid, op_name.clone());
    s.ops
        .lock()
        .unwrap()
        .insert(op_name.clone(), (zone.clone(), name.clone(), outcome));
    if matches!(outcome, Zone::Ok | Zone::LostReply | Zone::Exhausted) {
        // Real Compute creates the instance record first; an exhausted zone leaves it
        // behind until it is cleaned up.
        let now = chrono::Utc::now().to_rfc3339();
        s.instances.lock().unwrap().insert(
            (zone.clone(), name.clone()),
            resource(body, &zone, "PROVISIONING", &now),
        );
    }
    if matches!(outcome, Zone::LostReply) {
        let mut lost = s.lost_once.lock().unwrap();
        if !*lost {
            *lost = true;
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({"error":{"code":503,"message":"backend error","errors":[{"reason":"backendError"}]}}),
                ),
            );
        }
    }
    (StatusCode::OK, Json(op(&op_name, &zone, "PENDING", None)))
}

async fn wait(State(s): State<S>, P((_p, zone, name)): P<(String, String, String)>) -> Json<Value> {
    let (_, inst, outcome) = s.ops.lock().unwrap().get(&name).cloned().unwrap();
    let err = match outcome {
        Zone::Ok | Zone::LostReply => {
            if let Some(i) = s.instances.lock().unwrap().get_mut(&(zone.clone(), inst)) {
                i["status"] = json!("RUNNING");
            }
            None
        }
        Zone::Exhausted => Some(json!({"errors":[{"code":"ZONE_RESOURCE_POOL_EXHAUSTED",
            "message":format!("The zone 'projects/test-proj/zones/{zone}' does not have enough resources available to fulfill the request.  Try a different zone, or try again later.")}]})),
        Zone::Quota(msg) => Some(json!({"errors":[{"code":"QUOTA_EXCEEDED","message":msg}]})),
    };
    Json(op(&name, &zone, "DONE", err))
}

async fn get_inst(
    State(s): State<S>,
    P((_p, zone, name)): P<(String, String, String)>,
) -> (StatusCode, Json<Value>) {
    match s.instances.lock().unwrap().get(&(zone, name)) {
        Some(b) => (StatusCode::OK, Json(b.clone())),
        None => not_found(),
    }
}

async fn del_inst(
    State(s): State<S>,
    P((_p, zone, name)): P<(String, String, String)>,
) -> (StatusCode, Json<Value>) {
    s.deletes.lock().unwrap().push(format!("{zone}/{name}"));
    match s.instances.lock().unwrap().remove(&(zone.clone(), name)) {
        Some(_) => (
            StatusCode::OK,
            Json(op("operation-del", &zone, "PENDING", None)),
        ),
        None => not_found(),
    }
}

/// `labels.KEY = VALUE` (the only filter cloudrun sends); anything else matches all.
fn matches_filter(inst: &Value, filter: &str) -> bool {
    let Some((lhs, rhs)) = filter.split_once('=') else {
        return true;
    };
    match lhs.trim().strip_prefix("labels.") {
        Some(key) => inst["labels"][key].as_str() == Some(rhs.trim()),
        None => true,
    }
}

async fn aggregated(State(s): State<S>, Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    let filter = q.get("filter").cloned().unwrap_or_default();
    s.list_filters.lock().unwrap().push(filter.clone());
    let mut items: BTreeMap<String, Value> = s
        .zones
        .keys()
        .map(|z| {
            (
                format!("zones/{z}"),
                json!({"warning":{"code":"NO_RESULTS_ON_PAGE","message":"There are no results for scope 'zones/{z}' on this page."}}),
            )
        })
        .collect();
    for ((zone, _), inst) in s.instances.lock().unwrap().iter() {
        if !matches_filter(inst, &filter) {
            continue;
        }
        let e = items
            .entry(format!("zones/{zone}"))
            .or_insert_with(|| json!({}));
        if e.get("instances").is_none() {
            *e = json!({"instances": []});
        }
        e["instances"].as_array_mut().unwrap().push(inst.clone());
    }
    Json(json!({"kind":"compute#instanceAggregatedList","items":items}))
}

async fn family(P((p, f)): P<(String, String)>) -> (StatusCode, Json<Value>) {
    if f == "retired-family" {
        return (
            StatusCode::NOT_FOUND,
            Json(
                json!({"error":{"code":404,"message":format!("The resource 'projects/{p}/global/images/family/{f}' was not found"),"errors":[{"reason":"notFound"}]}}),
            ),
        );
    }
    (
        StatusCode::OK,
        Json(
            json!({"name":"common-cu128-v20261101","family":f,"diskSizeGb":"50","status":"READY",
        "selfLink":format!("https://compute.googleapis.com/compute/v1/projects/{p}/global/images/common-cu128-v20261101")}),
        ),
    )
}

async fn record_auth(State(s): State<S>, req: Request, next: Next) -> Response {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    s.auth_headers.lock().unwrap().push(auth);
    next.run(req).await
}

/// GPU types every zone of the fake offers (its zones differ only in how inserts end).
const GPUS: [&str; 7] = [
    "nvidia-tesla-t4",
    "nvidia-tesla-v100",
    "nvidia-tesla-p100",
    "nvidia-l4",
    "nvidia-tesla-a100",
    "nvidia-a100-80gb",
    "nvidia-h100-80gb",
];

async fn accelerator_types(P((_p, zone)): P<(String, String)>) -> Json<Value> {
    let items: Vec<Value> = GPUS
        .iter()
        .map(|g| json!({"kind": "compute#acceleratorType", "name": g, "zone": format!("{PROJECT_URL}/zones/{zone}"), "maximumCardsPerInstance": 8}))
        .collect();
    Json(json!({"kind": "compute#acceleratorTypeList", "items": items}))
}

/// Room for 8 of every GPU in every region: quota failures in this fake arrive late, in
/// the insert's Operation ([`Zone::Quota`]), as they do when a quota is used up meanwhile.
async fn region(P((_p, r)): P<(String, String)>) -> Json<Value> {
    let quotas: Vec<Value> = [
        "NVIDIA_T4_GPUS",
        "NVIDIA_V100_GPUS",
        "NVIDIA_P100_GPUS",
        "NVIDIA_L4_GPUS",
        "NVIDIA_A100_GPUS",
        "NVIDIA_A100_80GB_GPUS",
        "NVIDIA_H100_GPUS",
    ]
    .iter()
    .map(|m| json!({"metric": m, "limit": 8.0, "usage": 0.0}))
    .collect();
    Json(json!({"kind": "compute#region", "name": r, "status": "UP", "quotas": quotas}))
}

async fn project(P(p): P<String>) -> Json<Value> {
    Json(json!({"kind": "compute#project", "name": p, "id": "123",
        "quotas": [{"metric": "GPUS_ALL_REGIONS", "limit": 16.0, "usage": 0.0}]}))
}

/// Start the fake on a loopback port; returns it and its base URL
/// (`http://127.0.0.1:PORT/compute/v1/`, for `CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE`).
pub async fn start(zones: &[(&str, Zone)]) -> (S, String) {
    let fake = Arc::new(Fake {
        zones: zones.iter().map(|(z, b)| (z.to_string(), *b)).collect(),
        ..Fake::default()
    });
    let app = Router::new()
        .route("/compute/v1/projects/{p}/zones/{z}/instances", post(insert))
        .route(
            "/compute/v1/projects/{p}/zones/{z}/instances/{n}",
            get(get_inst).delete(del_inst),
        )
        .route(
            "/compute/v1/projects/{p}/zones/{z}/operations/{o}/wait",
            post(wait),
        )
        .route(
            "/compute/v1/projects/{p}/aggregated/instances",
            get(aggregated),
        )
        .route(
            "/compute/v1/projects/{p}/global/images/family/{f}",
            get(family),
        )
        .route(
            "/compute/v1/projects/{p}/zones/{z}/acceleratorTypes",
            get(accelerator_types),
        )
        .route("/compute/v1/projects/{p}/regions/{r}", get(region))
        .route("/compute/v1/projects/{p}", get(project))
        .layer(middleware::from_fn_with_state(fake.clone(), record_auth))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, format!("http://{addr}/compute/v1/"))
}
