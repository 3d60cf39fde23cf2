//! The prerequisites a first launch depends on, as Google's APIs answer them, served on the
//! emulator's port beside Compute: `projects.get` (project-wide quotas, the default
//! service account, `commonInstanceMetadata`), `regions.get` (regional quotas),
//! `acceleratorTypes.list` / `aggregatedList` (which zones offer which GPU), Service
//! Usage `services.get` (is an API enabled), Resource Manager v3 `projects.getIamPolicy`,
//! and IAM `serviceAccounts.get`, `serviceAccounts.testIamPermissions` (`actAs`) and
//! `roles.get` (custom roles). Every one starts out as a healthy project and has a switch
//! on [`super::GceEmulator`] that breaks it alone.
//!
//! Shapes follow Google's own types (checked with google-cloud-compute,
//! -service-usage and grpc-google-iam-v1 in `testkit/tests/gce_emulator.rs`): int64 and
//! uint64 fields are strings, quota `limit` / `usage` are doubles, a missing resource is a
//! 404 in Google's error envelope.
//!
//! Paths, per API root (each API's `CLOUDSDK_API_ENDPOINT_OVERRIDES_<API>` may point at
//! this one server, since their paths do not overlap):
//! Compute `/compute/v1/…`; Service Usage `/v1/projects/P/services/S`; Resource Manager
//! `/v3/projects/P:getIamPolicy`; IAM `/v1/projects/P/serviceAccounts/E[:testIamPermissions]`
//! and `/v1/projects/P/roles/R`.

#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::compute::gerror;
use super::Shared;

type S = Arc<Shared>;

/// Zones the emulated project sees (each offers every GPU in [`GPU_TYPES`] unless a test
/// says otherwise). Other zone names answer 404 on `acceleratorTypes.list`.
pub const ZONES: &[&str] = &[
    "us-central1-a",
    "us-central1-b",
    "us-central1-c",
    "us-central1-f",
    "us-east1-b",
    "us-east1-c",
    "us-east1-d",
    "us-east4-a",
    "us-east4-c",
    "us-east5-a",
    "us-east5-b",
    "us-west1-a",
    "us-west1-b",
    "europe-west4-a",
    "europe-west4-b",
    "asia-east1-a",
];

/// Accelerator types and their quota metric stem (`NVIDIA_<stem>_GPUS`).
pub const GPU_TYPES: &[(&str, &str, i32)] = &[
    ("nvidia-tesla-t4", "T4", 4),
    ("nvidia-tesla-v100", "V100", 8),
    ("nvidia-tesla-p100", "P100", 4),
    ("nvidia-l4", "L4", 8),
    ("nvidia-tesla-a100", "A100", 16),
    ("nvidia-a100-80gb", "A100_80GB", 8),
    ("nvidia-h100-80gb", "H100", 8),
];

/// Each GPU quota's limit per region in a fresh emulated project (and the project's
/// `GPUS_ALL_REGIONS`).
pub const DEFAULT_GPU_QUOTA: f64 = 8.0;

/// The roles a healthy project grants: the launcher's key (see
/// `write_service_account_key`) owns it, the default compute SA is an editor (Google's
/// default grant).
fn default_bindings(project: &str, number: u64) -> BTreeMap<String, BTreeSet<String>> {
    let mut b = BTreeMap::new();
    b.insert(
        "roles/owner".to_string(),
        BTreeSet::from([format!(
            "serviceAccount:launcher@{project}.iam.gserviceaccount.com"
        )]),
    );
    b.insert(
        "roles/editor".to_string(),
        BTreeSet::from([format!(
            "serviceAccount:{number}-compute@developer.gserviceaccount.com"
        )]),
    );
    b
}

/// The switchable state.
pub(crate) struct Prereqs {
    /// Service names that are DISABLED (all others ENABLED).
    pub disabled_services: BTreeSet<String>,
    /// (region, metric) → (limit, usage), over the defaults.
    pub region_quotas: BTreeMap<(String, String), (f64, f64)>,
    /// metric → (limit, usage), over the defaults.
    pub project_quotas: BTreeMap<String, (f64, f64)>,
    /// zone → accelerator type names, replacing "every GPU" for that zone.
    pub zone_gpus: BTreeMap<String, Vec<String>>,
    /// role → members.
    pub bindings: BTreeMap<String, BTreeSet<String>>,
    /// Custom role name (`projects/P/roles/R`) → permissions.
    pub custom_roles: BTreeMap<String, Vec<String>>,
    /// Service accounts that exist.
    pub service_accounts: BTreeSet<String>,
    /// Whether the caller may attach (`iam.serviceAccounts.actAs`) service accounts.
    pub act_as: bool,
    /// Families whose image is deprecated (`deprecated.state = DEPRECATED`).
    pub deprecated_families: BTreeSet<String>,
    /// Families retired at run time (404), besides `GceConfig::retired_families`.
    pub retired_families: BTreeSet<String>,
}

impl Prereqs {
    pub fn new(project: &str, number: u64) -> Prereqs {
        Prereqs {
            disabled_services: BTreeSet::new(),
            region_quotas: BTreeMap::new(),
            project_quotas: BTreeMap::new(),
            zone_gpus: BTreeMap::new(),
            bindings: default_bindings(project, number),
            custom_roles: BTreeMap::new(),
            service_accounts: BTreeSet::from([
                default_service_account(number),
                format!("launcher@{project}.iam.gserviceaccount.com"),
            ]),
            act_as: true,
            deprecated_families: BTreeSet::new(),
            retired_families: BTreeSet::new(),
        }
    }

    fn zone_exists(&self, zone: &str) -> bool {
        ZONES.contains(&zone) || self.zone_gpus.contains_key(zone)
    }

    fn gpus_in(&self, zone: &str) -> Vec<String> {
        match self.zone_gpus.get(zone) {
            Some(g) => g.clone(),
            None => GPU_TYPES.iter().map(|(n, _, _)| n.to_string()).collect(),
        }
    }
}

/// The project's default compute service account.
pub fn default_service_account(number: u64) -> String {
    format!("{number}-compute@developer.gserviceaccount.com")
}

fn not_found(what: &str) -> Response {
    gerror(
        404,
        "notFound",
        &format!("The resource '{what}' was not found"),
    )
}

fn quota_json(metric: &str, (limit, usage): (f64, f64)) -> Value {
    json!({"metric": metric, "limit": limit, "usage": usage})
}

fn regions() -> BTreeSet<String> {
    ZONES
        .iter()
        .map(|z| z.rsplit_once('-').map(|(r, _)| r).unwrap_or(z).to_string())
        .collect()
}

fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map(|(r, _)| r).unwrap_or(zone)
}

/// `GET /compute/v1/projects/{p}`.
pub(crate) async fn project_get(State(s): State<S>, Path(p): Path<String>) -> Response {
    if p != s.cfg.project {
        return not_found(&format!("projects/{p}"));
    }
    let st = s.lock();
    let mut quotas: BTreeMap<String, (f64, f64)> = BTreeMap::from([
        ("GPUS_ALL_REGIONS".to_string(), (DEFAULT_GPU_QUOTA, 0.0)),
        ("CPUS_ALL_REGIONS".to_string(), (96.0, 0.0)),
        ("GLOBAL_INTERNAL_ADDRESSES".to_string(), (5000.0, 0.0)),
    ]);
    for (m, v) in &st.prereqs.project_quotas {
        quotas.insert(m.clone(), *v);
    }
    let quotas: Vec<Value> = quotas.iter().map(|(m, v)| quota_json(m, *v)).collect();
    Json(json!({
        "kind": "compute#project",
        "id": s.cfg.project_number.to_string(),
        "name": p,
        "creationTimestamp": "2026-01-05T09:00:00.000-08:00",
        "selfLink": format!("{}projects/{p}", s.base()),
        "defaultServiceAccount": default_service_account(s.cfg.project_number),
        "commonInstanceMetadata": {
            "kind": "compute#metadata",
            "fingerprint": "xnQUEc2o3Ls=",
            "items": [{"key": "enable-oslogin", "value": "TRUE"}],
        },
        "quotas": quotas,
        "xpnProjectStatus": "UNSPECIFIED_XPN_PROJECT_STATUS",
        "defaultNetworkTier": "PREMIUM",
        "vmDnsSetting": "ZONAL_ONLY",
    }))
    .into_response()
}

/// `GET /compute/v1/projects/{p}/regions/{r}`.
pub(crate) async fn region_get(
    State(s): State<S>,
    Path((p, r)): Path<(String, String)>,
) -> Response {
    if p != s.cfg.project {
        return not_found(&format!("projects/{p}"));
    }
    if !regions().contains(&r) {
        return not_found(&format!("projects/{p}/regions/{r}"));
    }
    let st = s.lock();
    let mut quotas: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    quotas.insert("CPUS".into(), (24.0, 0.0));
    quotas.insert("INSTANCES".into(), (24.0, 0.0));
    for (_, stem, _) in GPU_TYPES {
        quotas.insert(format!("NVIDIA_{stem}_GPUS"), (DEFAULT_GPU_QUOTA, 0.0));
        quotas.insert(
            format!("PREEMPTIBLE_NVIDIA_{stem}_GPUS"),
            (DEFAULT_GPU_QUOTA, 0.0),
        );
    }
    for ((region, m), v) in &st.prereqs.region_quotas {
        if region == &r {
            quotas.insert(m.clone(), *v);
        }
    }
    let zones: Vec<String> = ZONES
        .iter()
        .filter(|z| region_of(z) == r)
        .map(|z| format!("{}projects/{p}/zones/{z}", s.base()))
        .collect();
    Json(json!({
        "kind": "compute#region",
        "id": "1000",
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "name": r,
        "description": r,
        "status": "UP",
        "selfLink": format!("{}projects/{p}/regions/{r}", s.base()),
        "zones": zones,
        "quotas": quotas.iter().map(|(m, v)| quota_json(m, *v)).collect::<Vec<_>>(),
        "supportsPzs": false,
    }))
    .into_response()
}

fn accelerator_json(s: &Shared, p: &str, zone: &str, name: &str) -> Value {
    let max = GPU_TYPES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, m)| *m)
        .unwrap_or(8);
    json!({
        "kind": "compute#acceleratorType",
        "id": format!("{}", 10_000 + name.len()),
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "name": name,
        "description": format!("NVIDIA {name}"),
        "zone": format!("{}projects/{p}/zones/{zone}", s.base()),
        "selfLink": format!("{}projects/{p}/zones/{zone}/acceleratorTypes/{name}", s.base()),
        "maximumCardsPerInstance": max,
    })
}

/// `GET /compute/v1/projects/{p}/zones/{z}/acceleratorTypes`.
pub(crate) async fn accelerator_list(
    State(s): State<S>,
    Path((p, z)): Path<(String, String)>,
) -> Response {
    if p != s.cfg.project {
        return not_found(&format!("projects/{p}"));
    }
    let st = s.lock();
    if !st.prereqs.zone_exists(&z) {
        return not_found(&format!("projects/{p}/zones/{z}"));
    }
    let items: Vec<Value> = st
        .prereqs
        .gpus_in(&z)
        .iter()
        .map(|g| accelerator_json(&s, &p, &z, g))
        .collect();
    Json(json!({
        "kind": "compute#acceleratorTypeList",
        "id": format!("projects/{p}/zones/{z}/acceleratorTypes"),
        "items": items,
        "selfLink": format!("{}projects/{p}/zones/{z}/acceleratorTypes", s.base()),
    }))
    .into_response()
}

/// `GET /compute/v1/projects/{p}/aggregated/acceleratorTypes`.
pub(crate) async fn accelerator_aggregated(State(s): State<S>, Path(p): Path<String>) -> Response {
    if p != s.cfg.project {
        return not_found(&format!("projects/{p}"));
    }
    let st = s.lock();
    let mut zones: BTreeSet<String> = ZONES.iter().map(|z| z.to_string()).collect();
    zones.extend(st.prereqs.zone_gpus.keys().cloned());
    let mut items = serde_json::Map::new();
    for z in zones {
        let gpus = st.prereqs.gpus_in(&z);
        let v = if gpus.is_empty() {
            json!({"warning": {
                "code": "NO_RESULTS_ON_PAGE",
                "message": format!("There are no results for scope 'zones/{z}' on this page."),
                "data": [{"key": "scope", "value": format!("zones/{z}")}],
            }})
        } else {
            json!({"acceleratorTypes": gpus.iter().map(|g| accelerator_json(&s, &p, &z, g)).collect::<Vec<_>>()})
        };
        items.insert(format!("zones/{z}"), v);
    }
    Json(json!({
        "kind": "compute#acceleratorTypeAggregatedList",
        "id": format!("projects/{p}/aggregated/acceleratorTypes"),
        "items": items,
        "selfLink": format!("{}projects/{p}/aggregated/acceleratorTypes", s.base()),
    }))
    .into_response()
}

/// `GET /v1/projects/{p}/services/{service}` (Service Usage).
pub(crate) async fn service_get(
    State(s): State<S>,
    Path((p, svc)): Path<(String, String)>,
) -> Response {
    if p != s.cfg.project && p != s.cfg.project_number.to_string() {
        return gerror(
            403,
            "forbidden",
            &format!("Permission denied to get service [{svc}]"),
        );
    }
    let enabled = !s.lock().prereqs.disabled_services.contains(&svc);
    Json(json!({
        "name": format!("projects/{}/services/{svc}", s.cfg.project_number),
        "parent": format!("projects/{}", s.cfg.project_number),
        "config": {"name": svc, "title": svc},
        "state": if enabled { "ENABLED" } else { "DISABLED" },
    }))
    .into_response()
}

/// `POST /v3/projects/{p}:getIamPolicy` (Resource Manager v3).
pub(crate) async fn resource_manager_post(
    State(s): State<S>,
    Path(rest): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    let Some((p, "getIamPolicy")) = rest.split_once(':') else {
        return not_found(&format!("projects/{rest}"));
    };
    if p != s.cfg.project {
        return gerror(
            403,
            "forbidden",
            &format!("The caller does not have permission (projects/{p})"),
        );
    }
    // The request is a GetIamPolicyRequest without `resource` (it is in the path).
    if let Some(Json(b)) = &body {
        let ok = b
            .as_object()
            .is_some_and(|o| o.keys().all(|k| k == "options"));
        if !ok {
            return gerror(
                400,
                "badRequest",
                &format!("Invalid JSON payload received. Unknown name in {b}"),
            );
        }
    }
    let st = s.lock();
    let bindings: Vec<Value> = st
        .prereqs
        .bindings
        .iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(role, members)| json!({"role": role, "members": members}))
        .collect();
    Json(json!({"version": 1, "etag": "BwYJ2uC0zX4=", "bindings": bindings})).into_response()
}

/// `GET /v1/projects/{p}/serviceAccounts/{email}` (IAM).
pub(crate) async fn service_account_get(
    State(s): State<S>,
    Path((p, email)): Path<(String, String)>,
) -> Response {
    let st = s.lock();
    if !st.prereqs.service_accounts.contains(&email) {
        return not_found(&format!("projects/{p}/serviceAccounts/{email}"));
    }
    Json(json!({
        "name": format!("projects/{}/serviceAccounts/{email}", s.cfg.project),
        "projectId": s.cfg.project,
        "uniqueId": format!("1{:020}", email.len()),
        "email": email,
        "displayName": email.split('@').next().unwrap_or_default(),
        "etag": "MDEwMjE5MjA=",
        "oauth2ClientId": "1",
    }))
    .into_response()
}

/// `POST /v1/projects/{p}/serviceAccounts/{email}:testIamPermissions` (IAM).
pub(crate) async fn service_account_post(
    State(s): State<S>,
    Path((p, rest)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let Some((email, "testIamPermissions")) = rest.split_once(':') else {
        return not_found(&format!("projects/{p}/serviceAccounts/{rest}"));
    };
    let st = s.lock();
    if !st.prereqs.service_accounts.contains(email) {
        return not_found(&format!("projects/{p}/serviceAccounts/{email}"));
    }
    let asked: Vec<String> = body["permissions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let granted: Vec<&String> = asked
        .iter()
        .filter(|p| st.prereqs.act_as || !p.starts_with("iam.serviceAccounts.actAs"))
        .collect();
    if granted.is_empty() {
        return Json(json!({})).into_response();
    }
    Json(json!({"permissions": granted})).into_response()
}

/// `GET /v1/projects/{p}/roles/{role}` (IAM custom roles).
pub(crate) async fn role_get(
    State(s): State<S>,
    Path((p, role)): Path<(String, String)>,
) -> Response {
    let name = format!("projects/{p}/roles/{role}");
    let st = s.lock();
    let Some(perms) = st.prereqs.custom_roles.get(&name) else {
        return not_found(&name);
    };
    Json(json!({
        "name": name,
        "title": role,
        "includedPermissions": perms,
        "stage": "GA",
        "etag": "BwYJ2uC0zX4=",
    }))
    .into_response()
}
