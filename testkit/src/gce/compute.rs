//! The Compute v1 REST surface of the emulator: instances (insert, get, list,
//! aggregatedList, delete, stop, setMetadata, setDiskAutoDelete), images.getFromFamily,
//! zoneOperations (get, wait), the OAuth token endpoint, and the middleware that records
//! every call and injects armed faults. Operations run their effects from a task over
//! time (PENDING → RUNNING → DONE); the instance lifecycle itself lives in [`super::vm`].

// Handlers return ready-made error responses (Google's envelope) through `?`.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{prereqs, vm, Call, Inst, Shared, ZoneState};

type S = Arc<Shared>;
type Q = Query<BTreeMap<String, String>>;

pub(crate) fn router(shared: S) -> Router {
    Router::new()
        .route("/token", post(token))
        .route(
            "/compute/v1/projects/{p}/zones/{z}/instances",
            post(insert).get(list),
        )
        .route(
            "/compute/v1/projects/{p}/zones/{z}/instances/{n}",
            get(get_instance).delete(delete),
        )
        .route(
            "/compute/v1/projects/{p}/zones/{z}/instances/{n}/{action}",
            post(action),
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
            "/compute/v1/projects/{p}/zones/{z}/operations/{o}",
            get(get_op),
        )
        .route(
            "/compute/v1/projects/{p}/zones/{z}/operations/{o}/wait",
            post(wait_op),
        )
        .route("/compute/v1/projects/{p}", get(prereqs::project_get))
        .route(
            "/compute/v1/projects/{p}/regions/{r}",
            get(prereqs::region_get),
        )
        .route(
            "/compute/v1/projects/{p}/zones/{z}/acceleratorTypes",
            get(prereqs::accelerator_list),
        )
        .route(
            "/compute/v1/projects/{p}/aggregated/acceleratorTypes",
            get(prereqs::accelerator_aggregated),
        )
        .route("/v1/projects/{p}/services/{s}", get(prereqs::service_get))
        .route("/v3/projects/{rest}", post(prereqs::resource_manager_post))
        .route(
            "/v1/projects/{p}/serviceAccounts/{e}",
            get(prereqs::service_account_get).post(prereqs::service_account_post),
        )
        .route("/v1/projects/{p}/roles/{r}", get(prereqs::role_get))
        .fallback(not_found_route)
        .layer(middleware::from_fn_with_state(shared.clone(), record))
        .with_state(shared)
}

/// Google's error envelope.
pub(crate) fn gerror(status: u16, reason: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let status_name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        412 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    (
        code,
        Json(json!({"error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": status_name,
        }})),
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    gerror(
        404,
        "notFound",
        &format!("The resource '{what}' was not found"),
    )
}

async fn not_found_route(req: Request) -> Response {
    not_found(req.uri().path())
}

/// Record the call; answer an armed fault instead of the handler; require a bearer token.
async fn record(State(s): State<S>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let wire_path = req.uri().path().to_string();
    let path = percent_decode(&wire_path);
    let query = req.uri().query().unwrap_or_default().to_string();
    let request_id = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("requestId="))
        .map(str::to_string);
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let authed = authorization.starts_with("Bearer ") && authorization.len() > 7;
    let resp = if path == "/token" {
        next.run(req).await
    } else if let Some(status) = s.take_fault(&method, &path, false) {
        fault_reply(status)
    } else if !authed {
        gerror(
            401,
            "required",
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        )
    } else {
        let resp = next.run(req).await;
        match s.take_fault(&method, &path, true) {
            Some(status) => fault_reply(status),
            None => resp,
        }
    };
    s.lock().calls.push(Call {
        method,
        path,
        wire_path,
        query,
        request_id,
        authorization,
        at: SystemTime::now(),
        status: resp.status().as_u16(),
    });
    resp
}

/// The reply of an armed fault: Google's envelope with the reason a real one carries.
fn fault_reply(status: u16) -> Response {
    let (reason, msg) = match status {
        429 => ("rateLimitExceeded", "Rate Limit Exceeded"),
        403 => (
            "forbidden",
            "Required permission for this call is missing on the caller's service account.",
        ),
        503 => ("backendError", "The service is currently unavailable."),
        _ => (
            "backendError",
            "Internal error. Please try again or contact Google Support.",
        ),
    };
    gerror(status, reason, msg)
}

/// `%2D` → `-`: recorded paths read as the API sees them (clients encode differently).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The OAuth token endpoint a key file's `token_uri` points at (any assertion accepted).
async fn token() -> Json<Value> {
    Json(
        json!({"access_token": "ya29.emulated-launcher", "expires_in": 3599, "token_type": "Bearer"}),
    )
}

fn check_project(s: &Shared, p: &str) -> Result<(), Response> {
    if p == s.cfg.project {
        Ok(())
    } else {
        Err(not_found(&format!("projects/{p}")))
    }
}

fn check_zone(p: &str, z: &str) -> Result<(), Response> {
    let parts: Vec<&str> = z.split('-').collect();
    let ok = parts.len() == 3
        && parts[2].len() == 1
        && parts[1].chars().last().is_some_and(|c| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(not_found(&format!("projects/{p}/zones/{z}")))
    }
}

pub(crate) fn key(zone: &str, name: &str) -> String {
    format!("{zone}/{name}")
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

// ---------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpStatus {
    Pending,
    Running,
    Done,
}

pub(crate) struct Op {
    pub name: String,
    pub id: u64,
    pub zone: String,
    pub op_type: String,
    pub target: String,
    pub target_id: u64,
    pub client_op_id: Option<String>,
    pub insert_time: String,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub status: OpStatus,
    pub error: Option<Value>,
    pub http_error: Option<(u16, &'static str)>,
    pub done: tokio::sync::watch::Sender<bool>,
}

/// What an operation does when it runs and when it finishes.
pub(crate) enum Effect {
    Insert,
    Delete,
    Stop,
    SetMetadata(Vec<(String, String)>),
    DiskAutoDelete(String, bool),
}

pub(crate) fn op_json(s: &Shared, op: &Op) -> Value {
    let p = &s.cfg.project;
    let base = s.base();
    let mut v = json!({
        "kind": "compute#operation",
        "id": op.id.to_string(),
        "name": op.name,
        "zone": format!("{base}projects/{p}/zones/{}", op.zone),
        "operationType": op.op_type,
        "targetLink": format!("{base}projects/{p}/zones/{}/instances/{}", op.zone, op.target),
        "targetId": op.target_id.to_string(),
        "status": match op.status { OpStatus::Pending => "PENDING", OpStatus::Running => "RUNNING", OpStatus::Done => "DONE" },
        "user": format!("launcher@{p}.iam.gserviceaccount.com"),
        "progress": match op.status { OpStatus::Pending => 0, OpStatus::Running => 50, OpStatus::Done => 100 },
        "insertTime": op.insert_time,
        "selfLink": format!("{base}projects/{p}/zones/{}/operations/{}", op.zone, op.name),
    });
    if let Some(c) = &op.client_op_id {
        v["clientOperationId"] = json!(c);
    }
    if let Some(t) = &op.start_time {
        v["startTime"] = json!(t);
    }
    if let Some(t) = &op.end_time {
        v["endTime"] = json!(t);
    }
    if let Some(e) = &op.error {
        v["error"] = e.clone();
    }
    if let Some((code, msg)) = op.http_error {
        v["httpErrorStatusCode"] = json!(code);
        v["httpErrorMessage"] = json!(msg);
    }
    v
}

/// Create an operation (or return the one this `requestId` made) and run its effect.
fn start_op(
    s: &S,
    zone: &str,
    target: &str,
    target_id: u64,
    op_type: &str,
    request_id: Option<&String>,
    effect: Effect,
) -> Value {
    let id = s.next_id();
    let name = format!("operation-{id}-{}", op_type.replace('.', "-"));
    let (tx, _) = tokio::sync::watch::channel(false);
    let op = Op {
        name: name.clone(),
        id,
        zone: zone.to_string(),
        op_type: op_type.to_string(),
        target: target.to_string(),
        target_id,
        client_op_id: request_id.cloned(),
        insert_time: now_rfc3339(),
        start_time: None,
        end_time: None,
        status: OpStatus::Pending,
        error: None,
        http_error: None,
        done: tx,
    };
    let v = op_json(s, &op);
    {
        let mut st = s.lock();
        st.ops.insert(name.clone(), op);
        if let Some(r) = request_id {
            st.by_request.insert(r.clone(), name.clone());
        }
    }
    let s2 = s.clone();
    let key = key(zone, target);
    s.rt.spawn(async move { run_op(s2, name, key, effect).await });
    v
}

fn set_op(s: &Shared, name: &str, f: impl FnOnce(&mut Op)) {
    if let Some(op) = s.lock().ops.get_mut(name) {
        f(op);
    }
}

async fn run_op(s: S, name: String, key: String, effect: Effect) {
    tokio::time::sleep(s.cfg.op_pending).await;
    set_op(&s, &name, |op| {
        op.status = OpStatus::Running;
        op.start_time = Some(now_rfc3339());
    });
    let mut error = None;
    match &effect {
        Effect::Insert => vm::set_status(&s, &key, "STAGING"),
        Effect::Delete | Effect::Stop => vm::begin_shutdown(&s, &key),
        _ => {}
    }
    let mut wait = s.cfg.op_running;
    if matches!(effect, Effect::Delete | Effect::Stop) {
        wait = wait.max(s.cfg.shutdown_grace);
    }
    tokio::time::sleep(wait).await;
    match effect {
        Effect::Insert => {
            let zone = key.split('/').next().unwrap_or_default().to_string();
            let zs = s
                .lock()
                .zones
                .get(&zone)
                .cloned()
                .unwrap_or(ZoneState::Available);
            match zs {
                ZoneState::Available => vm::started(&s, &key),
                ZoneState::OutOfCapacity | ZoneState::OutOfCapacityLeavingInstance => {
                    if zs == ZoneState::OutOfCapacity {
                        vm::remove(&s, &key, "insert failed: zone out of capacity");
                    } else {
                        vm::set_status(&s, &key, "TERMINATED");
                        s.event(
                            key.rsplit('/').next().unwrap_or_default(),
                            "insert failed: zone out of capacity; the instance stays behind",
                        );
                    }
                    error = Some((
                        json!({"errors": [{
                            "code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                            "message": format!("The zone 'projects/{}/zones/{zone}' does not have enough resources available to fulfill the request.  Try a different zone, or try again later.", s.cfg.project),
                        }]}),
                        (503, "SERVICE UNAVAILABLE"),
                    ));
                }
                ZoneState::QuotaExceeded(quota) => {
                    vm::remove(&s, &key, "insert failed: quota exceeded");
                    let region = zone
                        .rsplit_once('-')
                        .map(|(r, _)| r)
                        .unwrap_or(&zone)
                        .to_string();
                    let (msg, dims) = if quota == "GPUS_ALL_REGIONS" {
                        (
                            format!("Quota '{quota}' exceeded.  Limit: 0.0 globally."),
                            json!({"global": "global"}),
                        )
                    } else {
                        (
                            format!("Quota '{quota}' exceeded.  Limit: 0.0 in region {region}."),
                            json!({"region": region}),
                        )
                    };
                    error = Some((
                        json!({"errors": [{
                            "code": "QUOTA_EXCEEDED",
                            "message": msg,
                            "errorDetails": [{"quotaInfo": {
                                "metricName": format!("compute.googleapis.com/{}", quota.to_lowercase()),
                                "limitName": format!("{}-per-project{}", quota.replace('_', "-"), if quota == "GPUS_ALL_REGIONS" { "" } else { "-region" }),
                                "dimensions": dims,
                                "limit": 0.0,
                            }}],
                        }]}),
                        (403, "FORBIDDEN"),
                    ));
                }
            }
        }
        Effect::Delete => vm::finish_shutdown(&s, &key, true, "deleted through the API"),
        Effect::Stop => vm::finish_shutdown(&s, &key, false, "stopped through the API"),
        Effect::SetMetadata(items) => {
            let mut st = s.lock();
            if let Some(i) = st.instances.get_mut(&key) {
                i.items = items;
                i.fingerprint = fingerprint(&i.items);
                i.version.send_modify(|v| *v += 1);
            }
        }
        Effect::DiskAutoDelete(device, auto) => {
            let mut st = s.lock();
            if let Some(i) = st.instances.get_mut(&key) {
                if let Some(disks) = i.body["disks"].as_array_mut() {
                    for (n, d) in disks.iter_mut().enumerate() {
                        if device_name(d, n) == device {
                            d["autoDelete"] = json!(auto);
                        }
                    }
                }
            }
        }
    }
    set_op(&s, &name, |op| {
        op.status = OpStatus::Done;
        op.end_time = Some(now_rfc3339());
        if let Some((e, http)) = error {
            op.error = Some(e);
            op.http_error = Some(http);
        }
        op.done.send_replace(true);
    });
}

async fn get_op(State(s): State<S>, Path((p, z, o)): Path<(String, String, String)>) -> Response {
    if let Err(r) = check_project(&s, &p) {
        return r;
    }
    let st = s.lock();
    match st.ops.get(&o).filter(|op| op.zone == z) {
        Some(op) => Json(op_json(&s, op)).into_response(),
        None => not_found(&format!("projects/{p}/zones/{z}/operations/{o}")),
    }
}

/// Best effort, as documented: returns when DONE or after the hang, whichever is first.
async fn wait_op(State(s): State<S>, Path((p, z, o)): Path<(String, String, String)>) -> Response {
    if let Err(r) = check_project(&s, &p) {
        return r;
    }
    let rx = {
        let st = s.lock();
        match st.ops.get(&o).filter(|op| op.zone == z) {
            Some(op) => op.done.subscribe(),
            None => return not_found(&format!("projects/{p}/zones/{z}/operations/{o}")),
        }
    };
    let mut rx = rx;
    let _ = tokio::time::timeout(s.cfg.wait_hang, rx.wait_for(|d| *d)).await;
    let st = s.lock();
    match st.ops.get(&o) {
        Some(op) => Json(op_json(&s, op)).into_response(),
        None => not_found(&format!("projects/{p}/zones/{z}/operations/{o}")),
    }
}

// ---------------------------------------------------------------------------------------
// Instances

fn device_name(d: &Value, index: usize) -> String {
    d["deviceName"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("persistent-disk-{index}"))
}

/// A metadata fingerprint: a hash of the items, base64-like text as the API shows.
pub(crate) fn fingerprint(items: &[(String, String)]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    items.hash(&mut h);
    format!("{:016x}=", h.finish())
}

fn invalid(msg: &str) -> Response {
    gerror(400, "invalid", msg)
}

/// The insert rules a real API enforces at the HTTP level (shared gcp-api notes §1.2–1.3).
fn validate(body: &Value) -> Result<(), Response> {
    let name = body["name"].as_str().unwrap_or_default();
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err(invalid(&format!(
            "Invalid value for field 'resource.name': '{name}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'"
        )));
    }
    if body["machineType"].as_str().unwrap_or_default().is_empty() {
        return Err(invalid(
            "Invalid value for field 'resource.machineType': ''. Machine type must be specified.",
        ));
    }
    let boots = body["disks"]
        .as_array()
        .map(|d| d.iter().filter(|d| d["boot"] == true).count());
    if boots != Some(1) {
        return Err(invalid(
            "Invalid value for field 'resource.disks': exactly one boot disk is required.",
        ));
    }
    let sched = &body["scheduling"];
    let mt = body["machineType"].as_str().unwrap_or_default();
    let family = mt.rsplit('/').next().unwrap_or_default();
    let has_gpu = body["guestAccelerators"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
        || ["a2-", "a3-", "a4-", "g2-"]
            .iter()
            .any(|f| family.starts_with(f));
    if has_gpu && sched["onHostMaintenance"] != "TERMINATE" {
        return Err(invalid(
            "Instances with guest accelerators do not support live migration.",
        ));
    }
    if let Some(secs) = sched["maxRunDuration"]["seconds"].as_str() {
        match secs.parse::<u64>() {
            Ok(n) if (30..=120 * 24 * 3600).contains(&n) => {}
            _ => {
                return Err(invalid(&format!(
                "Invalid value for field 'resource.scheduling.maxRunDuration.seconds': '{secs}'."
            )))
            }
        }
    } else if sched["maxRunDuration"]["seconds"].is_number() {
        // Accepted by the API (proto3 JSON), but cloudrun always sends strings.
    }
    if sched.get("instanceTerminationAction").is_some()
        && sched["provisioningModel"] != "SPOT"
        && sched.get("maxRunDuration").is_none()
    {
        return Err(invalid(
            "instanceTerminationAction needs SPOT provisioning or maxRunDuration.",
        ));
    }
    Ok(())
}

async fn insert(
    State(s): State<S>,
    Path((p, z)): Path<(String, String)>,
    Query(q): Q,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = check_project(&s, &p).and_then(|_| check_zone(&p, &z)) {
        return r;
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return gerror(
                400,
                "parseError",
                &format!("Invalid JSON payload received. {e}"),
            )
        }
    };
    let rid = q.get("requestId");
    if let Some(r) = rid {
        let st = s.lock();
        if let Some(op) = st.by_request.get(r).and_then(|n| st.ops.get(n)) {
            return Json(op_json(&s, op)).into_response();
        }
    }
    if let Err(r) = validate(&body) {
        return r;
    }
    let name = body["name"].as_str().unwrap_or_default().to_string();
    let k = key(&z, &name);
    let id = s.next_id();
    {
        let mut st = s.lock();
        if st.instances.contains_key(&k) {
            return gerror(
                409,
                "alreadyExists",
                &format!("The resource 'projects/{p}/zones/{z}/instances/{name}' already exists"),
            );
        }
        let items: Vec<(String, String)> = body["metadata"]["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        (
                            i["key"].as_str().unwrap_or_default().to_string(),
                            i["value"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (version, _) = tokio::sync::watch::channel(0u64);
        st.instances.insert(
            k.clone(),
            Inst {
                id,
                name: name.clone(),
                zone: z.clone(),
                fingerprint: fingerprint(&items),
                items,
                body,
                status: "PROVISIONING".into(),
                created: now_rfc3339(),
                preempted: false,
                version,
                md_port: 0,
                md_task: None,
                vm: None,
                deadline_task: None,
                going_down: false,
            },
        );
    }
    s.event(&name, format!("inserted in {z}"));
    Json(start_op(&s, &z, &name, id, "insert", rid, Effect::Insert)).into_response()
}

pub(crate) fn instance_json(s: &Shared, i: &Inst) -> Value {
    let p = &s.cfg.project;
    let base = s.base();
    let zone_url = format!("{base}projects/{p}/zones/{}", i.zone);
    let mut v = i.body.clone();
    let full = |partial: &str| -> String {
        if partial.starts_with("http") {
            partial.to_string()
        } else if partial.starts_with("projects/") {
            format!("{base}{partial}")
        } else {
            format!("{base}projects/{p}/{partial}")
        }
    };
    // Fields the body lacks stay absent (the API never answers `null` for a list), so
    // every list below is touched only where it exists.
    v["kind"] = json!("compute#instance");
    v["id"] = json!(i.id.to_string());
    v["creationTimestamp"] = json!(i.created);
    v["zone"] = json!(zone_url);
    v["status"] = json!(i.status);
    v["selfLink"] = json!(format!("{zone_url}/instances/{}", i.name));
    v["cpuPlatform"] = json!("Intel Cascade Lake");
    v["startRestricted"] = json!(false);
    v["deletionProtection"] = json!(false);
    v["labelFingerprint"] = json!("42WmSpB8rSM=");
    v["fingerprint"] = json!(format!("{:016x}=", i.id));
    if let Some(mt) = v["machineType"].as_str().map(full) {
        v["machineType"] = json!(mt);
    }
    if let Some(disks) = v.get_mut("disks").and_then(Value::as_array_mut) {
        for (n, d) in disks.iter_mut().enumerate() {
            let size = d["initializeParams"]["diskSizeGb"]
                .as_str()
                .unwrap_or("10")
                .to_string();
            let disk_name = if d["boot"] == true {
                i.name.clone()
            } else {
                format!("{}-{n}", i.name)
            };
            let dev = device_name(d, n);
            if let Some(o) = d.as_object_mut() {
                o.remove("initializeParams");
            }
            d["kind"] = json!("compute#attachedDisk");
            d["index"] = json!(n);
            d["deviceName"] = json!(dev);
            d["source"] = json!(format!("{zone_url}/disks/{disk_name}"));
            d["interface"] = json!("SCSI");
            d["diskSizeGb"] = json!(size);
            if d.get("type").is_none() {
                d["type"] = json!("PERSISTENT");
            }
            if d.get("mode").is_none() {
                d["mode"] = json!("READ_WRITE");
            }
        }
    }
    if let Some(nics) = v.get_mut("networkInterfaces").and_then(Value::as_array_mut) {
        for (n, nic) in nics.iter_mut().enumerate() {
            nic["kind"] = json!("compute#networkInterface");
            nic["name"] = json!(format!("nic{n}"));
            if let Some(net) = nic["network"].as_str().map(full) {
                nic["network"] = json!(net);
            }
            nic["networkIP"] = json!(format!("10.128.0.{}", 2 + (i.id % 250)));
            nic["fingerprint"] = json!("dBsFcdC1Zfw=");
            if let Some(acs) = nic["accessConfigs"].as_array_mut() {
                for ac in acs {
                    ac["kind"] = json!("compute#accessConfig");
                    ac["natIP"] = json!(format!("34.67.1.{}", 2 + (i.id % 250)));
                    ac["networkTier"] = json!("PREMIUM");
                }
            }
        }
    }
    if let Some(accs) = v.get_mut("guestAccelerators").and_then(Value::as_array_mut) {
        for a in accs {
            if let Some(t) = a["acceleratorType"].as_str().map(full) {
                a["acceleratorType"] = json!(t);
            }
        }
    }
    if let Some(sas) = v.get_mut("serviceAccounts").and_then(Value::as_array_mut) {
        for sa in sas {
            if sa["email"] == "default" {
                sa["email"] = json!(format!(
                    "{}-compute@developer.gserviceaccount.com",
                    s.cfg.project_number
                ));
            }
        }
    }
    v["metadata"] = json!({
        "kind": "compute#metadata",
        "fingerprint": i.fingerprint,
        "items": i.items.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
    });
    if i.status == "RUNNING" {
        v["lastStartTimestamp"] = json!(i.created);
    }
    v
}

fn with_instance<T>(
    s: &Shared,
    p: &str,
    z: &str,
    n: &str,
    f: impl FnOnce(&mut Inst) -> T,
) -> Result<T, Response> {
    check_project(s, p)?;
    let mut st = s.lock();
    match st.instances.get_mut(&key(z, n)) {
        Some(i) => Ok(f(i)),
        None => Err(not_found(&format!("projects/{p}/zones/{z}/instances/{n}"))),
    }
}

async fn get_instance(
    State(s): State<S>,
    Path((p, z, n)): Path<(String, String, String)>,
) -> Response {
    match with_instance(&s, &p, &z, &n, |i| instance_json(&s, i)) {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// A replayed `requestId` returns the first operation, whatever the instance is now.
fn replay(s: &Shared, q: &BTreeMap<String, String>) -> Option<Response> {
    let r = q.get("requestId")?;
    let st = s.lock();
    st.by_request
        .get(r)
        .and_then(|n| st.ops.get(n))
        .map(|op| Json(op_json(s, op)).into_response())
}

async fn delete(
    State(s): State<S>,
    Path((p, z, n)): Path<(String, String, String)>,
    Query(q): Q,
) -> Response {
    if let Some(r) = replay(&s, &q) {
        return r;
    }
    let id = match with_instance(&s, &p, &z, &n, |i| i.id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    Json(start_op(
        &s,
        &z,
        &n,
        id,
        "delete",
        q.get("requestId"),
        Effect::Delete,
    ))
    .into_response()
}

async fn action(
    State(s): State<S>,
    Path((p, z, n, action)): Path<(String, String, String, String)>,
    Query(q): Q,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = replay(&s, &q) {
        return r;
    }
    let rid = q.get("requestId");
    match action.as_str() {
        "stop" => {
            let id = match with_instance(&s, &p, &z, &n, |i| i.id) {
                Ok(id) => id,
                Err(r) => return r,
            };
            Json(start_op(&s, &z, &n, id, "stop", rid, Effect::Stop)).into_response()
        }
        "setMetadata" => {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let checked = with_instance(&s, &p, &z, &n, |i| (i.id, i.fingerprint.clone()));
            let (id, fp) = match checked {
                Ok(v) => v,
                Err(r) => return r,
            };
            if body["fingerprint"].as_str() != Some(fp.as_str()) {
                return gerror(
                    412,
                    "conditionNotMet",
                    "Supplied fingerprint does not match current metadata fingerprint.",
                );
            }
            let items = body["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|i| {
                            (
                                i["key"].as_str().unwrap_or_default().to_string(),
                                i["value"].as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Json(start_op(
                &s,
                &z,
                &n,
                id,
                "setMetadata",
                rid,
                Effect::SetMetadata(items),
            ))
            .into_response()
        }
        "setDiskAutoDelete" => {
            let (Some(dev), Some(auto)) = (q.get("deviceName"), q.get("autoDelete")) else {
                return invalid("Required parameters 'deviceName' and 'autoDelete' are missing.");
            };
            let auto = auto == "true";
            let found = with_instance(&s, &p, &z, &n, |i| {
                let has = i.body["disks"]
                    .as_array()
                    .is_some_and(|d| d.iter().enumerate().any(|(k, d)| device_name(d, k) == *dev));
                (i.id, has)
            });
            match found {
                Err(r) => r,
                Ok((_, false)) => invalid(&format!("Invalid value for field 'deviceName': '{dev}'. No disk with that device name is attached.")),
                Ok((id, true)) => Json(start_op(&s, &z, &n, id, "setDiskAutoDelete", rid, Effect::DiskAutoDelete(dev.clone(), auto))).into_response(),
            }
        }
        other => gerror(
            400,
            "invalid",
            &format!("Unknown instance method '{other}'."),
        ),
    }
}

/// `field = value` / `field != value` clauses, ANDed, optionally in parentheses.
fn matches_filter(v: &Value, filter: &str) -> Result<bool, Response> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Ok(true);
    }
    for clause in filter.split(" AND ").flat_map(|c| c.split(" and ")) {
        let c = clause
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .trim();
        let (field, neg, want) = if let Some((f, w)) = c.split_once("!=") {
            (f.trim(), true, w.trim())
        } else if let Some((f, w)) = c.split_once('=') {
            (f.trim(), false, w.trim())
        } else {
            return Err(invalid(&format!(
                "Invalid value for field 'filter': '{filter}'. Invalid list filter expression."
            )));
        };
        let want = want.trim_matches('"');
        let got = if let Some(l) = field.strip_prefix("labels.") {
            v["labels"][l].as_str().map(str::to_string)
        } else if matches!(field, "name" | "status") {
            v[field].as_str().map(str::to_string)
        } else {
            return Err(invalid(&format!(
                "Invalid value for field 'filter': '{filter}'. Invalid field name '{field}'."
            )));
        };
        let eq = got.as_deref() == Some(want);
        if eq == neg {
            return Ok(false);
        }
    }
    Ok(true)
}

fn page(items: Vec<Value>, q: &BTreeMap<String, String>) -> (Vec<Value>, Option<String>) {
    let max = q
        .get("maxResults")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(500)
        .clamp(1, 500);
    let start = q
        .get("pageToken")
        .and_then(|t| t.strip_prefix("page-"))
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let next = (start + max < items.len()).then(|| format!("page-{}", start + max));
    (items.into_iter().skip(start).take(max).collect(), next)
}

async fn list(State(s): State<S>, Path((p, z)): Path<(String, String)>, Query(q): Q) -> Response {
    if let Err(r) = check_project(&s, &p).and_then(|_| check_zone(&p, &z)) {
        return r;
    }
    let all: Vec<Value> = {
        let st = s.lock();
        st.instances
            .values()
            .filter(|i| i.zone == z)
            .map(|i| instance_json(&s, i))
            .collect()
    };
    let mut items = Vec::new();
    for v in all {
        match matches_filter(&v, q.get("filter").map(String::as_str).unwrap_or_default()) {
            Ok(true) => items.push(v),
            Ok(false) => {}
            Err(r) => return r,
        }
    }
    let (items, next) = page(items, &q);
    let mut v = json!({
        "kind": "compute#instanceList",
        "id": format!("projects/{p}/zones/{z}/instances"),
        "items": items,
        "selfLink": format!("{}projects/{p}/zones/{z}/instances", s.base()),
    });
    if let Some(n) = next {
        v["nextPageToken"] = json!(n);
    }
    Json(v).into_response()
}

async fn aggregated(State(s): State<S>, Path(p): Path<String>, Query(q): Q) -> Response {
    if let Err(r) = check_project(&s, &p) {
        return r;
    }
    let (all, mut zones): (Vec<(String, Value)>, Vec<String>) = {
        let st = s.lock();
        (
            st.instances
                .values()
                .map(|i| (i.zone.clone(), instance_json(&s, i)))
                .collect(),
            st.zones.keys().cloned().collect(),
        )
    };
    zones.extend(["us-central1-a".to_string(), "us-east1-b".to_string()]);
    let mut matched = Vec::new();
    for (z, v) in all {
        match matches_filter(&v, q.get("filter").map(String::as_str).unwrap_or_default()) {
            Ok(true) => matched.push((z, v)),
            Ok(false) => {}
            Err(r) => return r,
        }
    }
    let flat: Vec<Value> = matched
        .iter()
        .map(|(z, v)| json!({"z": z, "v": v}))
        .collect();
    let (page_items, next) = page(flat, &q);
    let mut items = serde_json::Map::new();
    for z in zones.iter().chain(matched.iter().map(|(z, _)| z)) {
        items.insert(
            format!("zones/{z}"),
            json!({"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope 'zones/".to_string() + z + "' on this page.", "data": [{"key": "scope", "value": format!("zones/{z}")}]}}),
        );
    }
    for it in page_items {
        let z = it["z"].as_str().unwrap_or_default().to_string();
        let entry = items
            .entry(format!("zones/{z}"))
            .or_insert_with(|| json!({}));
        if entry.get("warning").is_some() {
            *entry = json!({"instances": []});
        }
        if let Some(a) = entry["instances"].as_array_mut() {
            a.push(it["v"].clone());
        }
    }
    let mut v = json!({
        "kind": "compute#instanceAggregatedList",
        "id": format!("projects/{p}/aggregated/instances"),
        "items": items,
        "selfLink": format!("{}projects/{p}/aggregated/instances", s.base()),
    });
    if let Some(n) = next {
        v["nextPageToken"] = json!(n);
    }
    Json(v).into_response()
}

async fn family(
    State(s): State<S>,
    Path((p, f)): Path<(String, String)>,
    _h: HeaderMap,
) -> Response {
    let (retired, deprecated) = {
        let st = s.lock();
        (
            st.prereqs.retired_families.contains(&f),
            st.prereqs.deprecated_families.contains(&f),
        )
    };
    if retired || s.cfg.retired_families.iter().any(|r| r == &f) {
        return not_found(&format!("projects/{p}/global/images/family/{f}"));
    }
    let name = format!("{f}-v20261101");
    let mut v = json!({
        "kind": "compute#image",
        "id": "4823417284618223851",
        "creationTimestamp": "2026-11-01T10:00:00.000-07:00",
        "name": name,
        "family": f,
        "status": "READY",
        "diskSizeGb": "50",
        "archiveSizeBytes": "21474836480",
        "sourceType": "RAW",
        "selfLink": format!("{}projects/{p}/global/images/{name}", s.base()),
        "licenses": [format!("{}projects/{p}/global/licenses/dlvm", s.base())],
        "guestOsFeatures": [{"type": "UEFI_COMPATIBLE"}, {"type": "GVNIC"}],
        "architecture": "X86_64",
    });
    if deprecated {
        v["deprecated"] = json!({
            "state": "DEPRECATED",
            "replacement": format!("{}projects/{p}/global/images/{f}-next-v20261201", s.base()),
            "deprecated": "2026-11-15T00:00:00.000-08:00",
        });
    }
    Json(v).into_response()
}
