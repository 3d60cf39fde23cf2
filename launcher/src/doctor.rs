//! `cloudrun-launch doctor`: every prerequisite of a cloud run, checked against the real
//! APIs (or their emulators, through the same endpoint variables), one line each with
//! `ok`, `warn` or `fail` and, for every failure, the command that fixes it.
//!
//! In order: the settings; credentials and whose they are; the Compute Engine API (and
//! the Cloud Billing API, for live prices) through Service Usage; the project; the
//! bucket of `GCS_DIR`, its location and a create-only write, read and delete of a probe
//! object under the prefix; the VM's service account, a role that lets the VM delete
//! itself, and the caller's right to attach it; GPU quota in each zone's region and
//! `GPUS_ALL_REGIONS`; the image family; the zones (exist, offer the GPU); the bucket's
//! location against the zones. A check whose input failed earlier is `skip`.
//!
//! It only reads, except for the probe object, which it deletes again.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use cloudrun::compute::{zone_region, Compute, ComputeError, ComputeProject};
use cloudrun::google_rest::{GoogleApi, RestApi};
use cloudrun::storage::gcs::GcsStorage;
use cloudrun::storage::{PutOptions, Storage};
use cloudrun::{Layout, StoreUrl};
use serde::Serialize;
use serde_json::{json, Value};

use crate::credentials::Identity;
use crate::gpu::Hardware;
use crate::plan;
use crate::preflight::{self, QuotaVerdict, ZoneVerdict, GLOBAL_GPU_METRIC};
use crate::settings::Settings;

/// Roles that grant `compute.instances.delete` on the project (the VM deletes itself).
pub const SELF_DELETE_ROLES: &[&str] = &[
    "roles/compute.instanceAdmin.v1",
    "roles/compute.instanceAdmin",
    "roles/compute.admin",
    "roles/editor",
    "roles/owner",
];
/// The permission a VM needs to delete itself.
pub const SELF_DELETE_PERMISSION: &str = "compute.instances.delete";
/// The permission the caller needs to attach the service account to a VM.
pub const ACT_AS_PERMISSION: &str = "iam.serviceAccounts.actAs";

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// Not checked: something it depends on failed.
    Skip,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// The command (or step) that fixes a failure or a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, c: Check) {
        self.checks.push(c);
    }

    fn skip(&mut self, name: &str, why: &str) {
        self.push(check(name, Status::Skip, format!("not checked: {why}")));
    }

    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        !self.checks.iter().any(|c| c.status == Status::Fail)
    }

    fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    /// The report for people: one line per check, its fix indented below it.
    pub fn text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut s = String::new();
        for c in &self.checks {
            let _ = writeln!(
                s,
                "{:<4}  {:<width$}  {}",
                c.status.word(),
                c.name,
                c.detail
            );
            if let Some(f) = &c.fix {
                let _ = writeln!(s, "{:<4}  {:<width$}  fix: {f}", "", "");
            }
        }
        let _ = writeln!(
            s,
            "doctor: {} ok, {} warn, {} fail, {} skipped",
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.count(Status::Fail),
            self.count(Status::Skip)
        );
        s
    }

    /// The report for scripts.
    pub fn json(&self) -> String {
        let v = json!({"ok": self.passed(), "checks": self.checks});
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

/// What the doctor talks to.
pub struct Clients {
    pub compute: Arc<dyn Compute>,
    pub service_usage: RestApi,
    pub resource_manager: RestApi,
    pub iam: RestApi,
    pub storage: GcsStorage,
}

/// Build the clients for the endpoints the environment names.
pub fn clients(
    env: &dyn Fn(&str) -> Option<String>,
    tokens: Arc<dyn gcp_auth::TokenProvider>,
    compute: Arc<dyn Compute>,
    bucket: &str,
) -> Result<Clients, crate::Error> {
    let api = |a| RestApi::for_api(a, env, tokens.clone()).map_err(crate::Error::from);
    let endpoint = cloudrun::storage::gcs::Endpoint::from_lookup(env);
    let storage_tokens = (!endpoint.anonymous).then(|| tokens.clone());
    Ok(Clients {
        compute,
        service_usage: api(GoogleApi::ServiceUsage)?,
        resource_manager: api(GoogleApi::ResourceManager)?,
        iam: api(GoogleApi::Iam)?,
        storage: GcsStorage::new(bucket, endpoint, storage_tokens)?,
    })
}

/// The settings a cloud run needs for the checks, or the problems.
pub struct Inputs {
    pub project: String,
    pub store: StoreUrl,
    pub bucket: String,
    pub hardware: Hardware,
    pub zones: Vec<String>,
    pub spot: bool,
    pub image_project: String,
    pub image_family: String,
    pub service_account: String,
}

/// The settings line, and the inputs when they are complete.
pub fn settings_check(settings: &Settings) -> (Check, Option<Inputs>) {
    let mut problems = Vec::new();
    let project = plan::project(settings)
        .map_err(|p| problems.extend(p.0))
        .ok();
    let store = match plan::store(settings) {
        Ok(u @ StoreUrl::Gcs { .. }) => Some(u),
        Ok(StoreUrl::Local { .. }) => {
            problems.push(format!(
                "GCS_DIR is a local directory; a cloud run needs a bucket: {}",
                crate::settings::how_to_set("gcs_dir", "gs://my-bucket/cloudrun")
            ));
            None
        }
        Err(p) => {
            problems.extend(p.0);
            None
        }
    };
    let hardware = crate::gpu::resolve(
        settings.gpu.as_ref().map(|s| s.value.as_str()),
        settings.machine_type.as_ref().map(|s| s.value.as_str()),
    )
    .map_err(|e| problems.push(e.0))
    .ok();
    let (Some(project), Some(store), Some(hardware), true) =
        (project, store, hardware, problems.is_empty())
    else {
        let c = check(
            "settings",
            Status::Fail,
            problems.first().cloned().unwrap_or_default(),
        )
        .fix(if problems.len() > 1 {
            format!(
                "and {} more: run `cloudrun-launch config`",
                problems.len() - 1
            )
        } else {
            "see `cloudrun-launch config` for where each setting comes from".into()
        });
        return (c, None);
    };
    let zones = match &settings.zones {
        Some(z) if !z.value.is_empty() => z.value.clone(),
        _ => hardware
            .gpu
            .default_zones()
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let bucket = match &store {
        StoreUrl::Gcs { bucket, .. } => bucket.clone(),
        StoreUrl::Local { .. } => String::new(),
    };
    let spot = settings.spot.as_ref().is_some_and(|s| s.value);
    let inputs = Inputs {
        project: project.clone(),
        bucket,
        hardware: hardware.clone(),
        zones: zones.clone(),
        spot,
        image_project: settings
            .image_project
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_else(|| plan::DEFAULT_IMAGE_PROJECT.into()),
        image_family: settings
            .image_family
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_else(|| plan::DEFAULT_IMAGE_FAMILY.into()),
        service_account: settings
            .service_account
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_else(|| plan::DEFAULT_SERVICE_ACCOUNT.into()),
        store,
    };
    let c = check(
        "settings",
        Status::Ok,
        format!(
            "project {project}, {}, {} × {} ({}){}, zones {}",
            inputs.store,
            hardware.count,
            hardware.gpu.accelerator(),
            hardware.machine_type,
            if spot { ", Spot" } else { "" },
            zones.join(",")
        ),
    );
    (c, Some(inputs))
}

fn api_error_text(e: &ComputeError) -> String {
    crate::error_chain(e)
}

/// Service Usage `services.get`: `Some(true)` when ENABLED.
async fn service_enabled(c: &Clients, project: &str, api: GoogleApi) -> Result<bool, String> {
    let path = format!("v1/projects/{project}/services/{}", api.service_name());
    match c.service_usage.get_json::<Value>(&path, &[]).await {
        Ok(Some(v)) => Ok(v["state"].as_str() == Some("ENABLED")),
        Ok(None) => Err(format!(
            "Service Usage does not know {}",
            api.service_name()
        )),
        Err(e) => Err(api_error_text(&e)),
    }
}

async fn api_check(c: &Clients, project: &str, api: GoogleApi, why_needed: &str) -> Check {
    let name = format!("api {}", api.service_name());
    let fix = format!(
        "gcloud services enable {} --project {project}",
        api.service_name()
    );
    match service_enabled(c, project, api).await {
        Ok(true) => check(name, Status::Ok, "enabled"),
        Ok(false) if api == GoogleApi::Billing => {
            check(name, Status::Warn, format!("disabled: {why_needed}")).fix(fix)
        }
        Ok(false) => check(name, Status::Fail, format!("disabled: {why_needed}")).fix(fix),
        Err(e) => check(
            name,
            Status::Warn,
            format!("could not ask Service Usage: {e}"),
        )
        .fix(format!(
            "gcloud services enable serviceusage.googleapis.com --project {project}"
        )),
    }
}

/// The member to grant roles to, for fixes.
fn member_or_placeholder(who: &Identity) -> String {
    who.member()
        .unwrap_or_else(|| "user:YOU@example.com".into())
}

async fn bucket_checks(
    c: &Clients,
    inputs: &Inputs,
    who: &Identity,
    report: &mut Report,
) -> Option<String> {
    let b = &inputs.bucket;
    let region = inputs
        .zones
        .first()
        .map(|z| zone_region(z).to_string())
        .unwrap_or_else(|| "us-central1".into());
    let location = match c.storage.get_bucket().await {
        Ok(Some(info)) => {
            report.push(check(
                "bucket",
                Status::Ok,
                format!(
                    "gs://{b} exists in {} ({})",
                    info.location,
                    if info.location_type.is_empty() {
                        "location type unknown"
                    } else {
                        info.location_type.as_str()
                    }
                ),
            ));
            Some(info.location)
        }
        Ok(None) => {
            report.push(
                check("bucket", Status::Fail, format!("gs://{b} does not exist"))
                    .fix(format!(
                        "gcloud storage buckets create gs://{b} --project {} --location {region} --uniform-bucket-level-access",
                        inputs.project
                    )),
            );
            report.skip("bucket write", "the bucket is missing");
            return None;
        }
        Err(e) => {
            report.push(
                check("bucket", Status::Fail, format!("gs://{b}: {}", crate::error_chain(&e)))
                    .fix(format!(
                        "gcloud storage buckets add-iam-policy-binding gs://{b} --member={} --role=roles/storage.objectUser",
                        member_or_placeholder(who)
                    )),
            );
            None
        }
    };
    // A create-only write, a read back and a delete of a probe under the prefix.
    let key = Layout::for_store(&inputs.store).doctor_probe(&uuid::Uuid::new_v4().to_string());
    let body = Bytes::from(format!("cloudrun doctor probe {key}\n"));
    let probe = async {
        c.storage
            .put_bytes(&key, body.clone(), &PutOptions::create_only())
            .await
            .map_err(|e| format!("write: {}", crate::error_chain(&e)))?;
        let back = c.storage.get_bytes(&key).await;
        let deleted = c.storage.delete(&key).await;
        let back = back.map_err(|e| format!("read back: {}", crate::error_chain(&e)))?;
        if back != body {
            return Err("read back different bytes than were written".to_string());
        }
        deleted.map_err(|e| format!("delete: {}", crate::error_chain(&e)))?;
        Ok::<(), String>(())
    };
    match probe.await {
        Ok(()) => report.push(check(
            "bucket write",
            Status::Ok,
            format!("wrote, read back and deleted gs://{b}/{key}"),
        )),
        Err(e) => report.push(
            check("bucket write", Status::Fail, format!("gs://{b}/{key}: {e}")).fix(format!(
                "gcloud storage buckets add-iam-policy-binding gs://{b} --member={} --role=roles/storage.objectUser",
                member_or_placeholder(who)
            )),
        ),
    }
    location
}

/// How close a bucket is to a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nearness {
    /// The zone's region, or a multi/dual-region on its continent.
    Local,
    /// Another region on the same continent (cross-region transfer, slower).
    SameContinent,
    /// Another continent (intercontinental egress on every pull and push).
    Elsewhere,
}

/// The continent of a region name (`europe-west4` → `europe`; `us-` and `northamerica-`
/// are both North America).
fn continent_of_region(region: &str) -> &str {
    match region.split('-').next().unwrap_or_default() {
        "us" | "northamerica" => "north-america",
        "southamerica" => "south-america",
        "australia" => "oceania",
        "me" => "middle-east",
        other => other,
    }
}

/// The continent of a multi-region or predefined dual-region, if it is one.
fn continent_of_multi(location: &str) -> Option<&'static str> {
    Some(match location {
        "US" | "NAM4" => "north-america",
        "EU" | "EUR4" | "EUR5" | "EUR7" | "EUR8" => "europe",
        "ASIA" | "ASIA1" => "asia",
        _ => return None,
    })
}

/// How close a bucket in `location` (as `buckets.get` spells it) is to `zone`.
pub fn nearness(location: &str, zone: &str) -> Nearness {
    let loc = location.trim().to_ascii_uppercase();
    let region = zone_region(zone);
    let zone_continent = continent_of_region(region);
    if let Some(c) = continent_of_multi(&loc) {
        return if c == zone_continent {
            Nearness::Local
        } else {
            Nearness::Elsewhere
        };
    }
    let bucket_region = loc.to_ascii_lowercase();
    if bucket_region == region {
        Nearness::Local
    } else if continent_of_region(&bucket_region) == zone_continent {
        Nearness::SameContinent
    } else {
        Nearness::Elsewhere
    }
}

fn location_check(location: &str, inputs: &Inputs) -> Check {
    let near: Vec<(&String, Nearness)> = inputs
        .zones
        .iter()
        .map(|z| (z, nearness(location, z)))
        .collect();
    let local: Vec<&str> = near
        .iter()
        .filter(|(_, n)| *n == Nearness::Local)
        .map(|(z, _)| z.as_str())
        .collect();
    let far: Vec<&str> = near
        .iter()
        .filter(|(_, n)| *n == Nearness::Elsewhere)
        .map(|(z, _)| z.as_str())
        .collect();
    let first = inputs.zones.first().map(String::as_str).unwrap_or_default();
    let fix = format!(
        "keep the data beside the GPUs: create a bucket in {region} (`gcloud storage buckets create gs://{b}-{region} --project {p} --location {region}`) and set GCS_DIR to it, or pass --zone with zones in {location}",
        region = zone_region(first),
        b = inputs.bucket,
        p = inputs.project,
    );
    if local.len() == inputs.zones.len() {
        check(
            "bucket location",
            Status::Ok,
            format!("{location} is local to every chosen zone"),
        )
    } else if far.len() == inputs.zones.len() {
        check(
            "bucket location",
            Status::Fail,
            format!(
                "{location} is on another continent than every chosen zone ({}): every pull and push pays intercontinental egress and latency",
                far.join(",")
            ),
        )
        .fix(fix)
    } else {
        let others: Vec<&str> = inputs
            .zones
            .iter()
            .map(String::as_str)
            .filter(|z| !local.contains(z))
            .collect();
        check(
            "bucket location",
            Status::Warn,
            format!(
                "{location} is not in the region of {} (cross-region transfer: slower, and billed)",
                others.join(",")
            ),
        )
        .fix(fix)
    }
}

/// The VM's service account e-mail: `default` is the project's compute SA.
fn service_account_email(inputs: &Inputs, project: Option<&ComputeProject>) -> Option<String> {
    if inputs.service_account != plan::DEFAULT_SERVICE_ACCOUNT {
        return Some(inputs.service_account.clone());
    }
    project
        .map(|p| p.default_service_account.clone())
        .filter(|e| !e.is_empty())
}

/// Whether a role (predefined or custom) grants `compute.instances.delete`.
async fn role_grants_delete(c: &Clients, role: &str) -> bool {
    if SELF_DELETE_ROLES.contains(&role) {
        return true;
    }
    if !(role.starts_with("projects/") || role.starts_with("organizations/")) {
        return false;
    }
    match c.iam.get_json::<Value>(&format!("v1/{role}"), &[]).await {
        Ok(Some(v)) => v["includedPermissions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p.as_str() == Some(SELF_DELETE_PERMISSION))),
        _ => false,
    }
}

async fn service_account_checks(
    c: &Clients,
    inputs: &Inputs,
    project: Option<&ComputeProject>,
    who: &Identity,
    report: &mut Report,
) {
    let p = &inputs.project;
    let Some(email) = service_account_email(inputs, project) else {
        report.skip(
            "service account",
            "the project's default compute service account is unknown (projects.get failed)",
        );
        report.skip("vm self-delete", "no service account");
        report.skip("attach service account", "no service account");
        return;
    };
    match c
        .iam
        .get_json::<Value>(&format!("v1/projects/{p}/serviceAccounts/{email}"), &[])
        .await
    {
        Ok(Some(_)) => report.push(check(
            "service account",
            Status::Ok,
            format!("{email} exists"),
        )),
        Ok(None) => {
            report.push(
                check("service account", Status::Fail, format!("{email} does not exist"))
                    .fix(format!(
                        "gcloud iam service-accounts create cloudrun-vm --project {p}, then set service_account = \"cloudrun-vm@{p}.iam.gserviceaccount.com\" in cloudrun.toml (or pass --service-account)"
                    )),
            );
            report.skip("vm self-delete", "the service account is missing");
            report.skip("attach service account", "the service account is missing");
            return;
        }
        Err(e) => report.push(check(
            "service account",
            Status::Warn,
            format!("{email}: could not ask IAM: {}", api_error_text(&e)),
        )),
    }
    let grant = format!(
        "gcloud projects add-iam-policy-binding {p} --member=serviceAccount:{email} --role=roles/compute.instanceAdmin.v1"
    );
    let body = json!({"options": {"requestedPolicyVersion": 3}});
    match c
        .resource_manager
        .post_json::<Value>(&format!("v3/projects/{p}:getIamPolicy"), &body)
        .await
    {
        Ok(Some(policy)) => {
            let member = format!("serviceAccount:{email}");
            let roles: Vec<String> = policy["bindings"]
                .as_array()
                .map(|bs| {
                    bs.iter()
                        .filter(|b| {
                            b["members"]
                                .as_array()
                                .is_some_and(|m| m.iter().any(|x| x.as_str() == Some(&member)))
                        })
                        .filter_map(|b| b["role"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let mut granting = None;
            for r in &roles {
                if role_grants_delete(c, r).await {
                    granting = Some(r.clone());
                    break;
                }
            }
            match granting {
                Some(r) => report.push(check(
                    "vm self-delete",
                    Status::Ok,
                    format!("{email} holds {r} ({SELF_DELETE_PERMISSION})"),
                )),
                None => report.push(
                    check(
                        "vm self-delete",
                        Status::Fail,
                        format!(
                            "{email} holds no role with {SELF_DELETE_PERMISSION} on {p} (it has: {}): its VMs could not delete themselves and would bill until their deadline",
                            if roles.is_empty() { "none".to_string() } else { roles.join(", ") }
                        ),
                    )
                    .fix(grant),
                ),
            }
        }
        Ok(None) => report.push(check(
            "vm self-delete",
            Status::Warn,
            format!("Resource Manager has no IAM policy for {p}"),
        )),
        Err(e) => report.push(
            check(
                "vm self-delete",
                Status::Warn,
                format!(
                    "could not read the IAM policy of {p}: {}",
                    api_error_text(&e)
                ),
            )
            .fix(format!(
                "gcloud services enable cloudresourcemanager.googleapis.com --project {p}"
            )),
        ),
    }
    let body = json!({"permissions": [ACT_AS_PERMISSION]});
    match c
        .iam
        .post_json::<Value>(
            &format!("v1/projects/{p}/serviceAccounts/{email}:testIamPermissions"),
            &body,
        )
        .await
    {
        Ok(Some(v))
            if v["permissions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(ACT_AS_PERMISSION))) =>
        {
            report.push(check(
                "attach service account",
                Status::Ok,
                format!("you may attach {email} to VMs ({ACT_AS_PERMISSION})"),
            ))
        }
        Ok(_) => report.push(
            check(
                "attach service account",
                Status::Fail,
                format!("you may not attach {email} to VMs (no {ACT_AS_PERMISSION})"),
            )
            .fix(format!(
                "gcloud iam service-accounts add-iam-policy-binding {email} --project {p} --member={} --role=roles/iam.serviceAccountUser",
                member_or_placeholder(who)
            )),
        ),
        Err(e) => report.push(check(
            "attach service account",
            Status::Warn,
            format!("could not ask IAM: {}", api_error_text(&e)),
        )),
    }
}

fn quota_checks(f: &preflight::Findings, project: &str, report: &mut Report) {
    let console = preflight::quota_console(project);
    for (region, v) in &f.regions {
        let name = format!("gpu quota {region}");
        match v {
            QuotaVerdict::Enough { metric, available } => report.push(check(
                name,
                Status::Ok,
                format!("{available} {metric} left, the run needs {}", f.count),
            )),
            QuotaVerdict::TooLow {
                metric,
                available,
                limit,
            } => report.push(
                check(
                    name,
                    Status::Fail,
                    format!(
                        "{available} of {limit} {metric} left, the run needs {}",
                        f.count
                    ),
                )
                .fix(format!(
                    "request {metric} ≥ {} in {region} at {console}, or choose zones in another region (--zone)",
                    f.count
                )),
            ),
            QuotaVerdict::Unknown(why) => {
                report.push(check(name, Status::Warn, format!("unknown: {why}")))
            }
        }
    }
    match &f.global {
        Some(q) if q.available() >= f64::from(f.count) => report.push(check(
            "gpu quota global",
            Status::Ok,
            format!("{} of {} {GLOBAL_GPU_METRIC} left", q.available(), q.limit),
        )),
        Some(q) => report.push(
            check(
                "gpu quota global",
                Status::Fail,
                format!(
                    "{} of {} {GLOBAL_GPU_METRIC} left, the run needs {}",
                    q.available(),
                    q.limit,
                    f.count
                ),
            )
            .fix(format!(
                "request {GLOBAL_GPU_METRIC} ≥ {} at {console}",
                f.count
            )),
        ),
        None => report.push(check(
            "gpu quota global",
            Status::Warn,
            format!("projects.get listed no {GLOBAL_GPU_METRIC}"),
        )),
    }
}

async fn image_check(c: &Clients, inputs: &Inputs) -> Check {
    let (ip, fam) = (&inputs.image_project, &inputs.image_family);
    let list = format!(
        "gcloud compute images list --project {ip} --no-standard-images --filter=\"family~common-cu\", then set image_family in cloudrun.toml (or pass --image-family)"
    );
    match c.compute.image_from_family(ip, fam).await {
        Ok(img) => match img.deprecated.as_ref().map(|d| d.state.as_str()) {
            None | Some("") | Some("ACTIVE") => check(
                "image",
                Status::Ok,
                format!("family {fam} in {ip} is {}", img.name),
            ),
            Some("DEPRECATED") => check(
                "image",
                Status::Warn,
                format!(
                    "family {fam} in {ip} is {}, deprecated{}",
                    img.name,
                    img.deprecated
                        .as_ref()
                        .map(|d| d.replacement.rsplit('/').next().unwrap_or_default())
                        .filter(|r| !r.is_empty())
                        .map(|r| format!(" (replacement: {r})"))
                        .unwrap_or_default()
                ),
            )
            .fix(list),
            Some(state) => check(
                "image",
                Status::Fail,
                format!(
                    "family {fam} in {ip} resolves to {}, which is {state}",
                    img.name
                ),
            )
            .fix(list),
        },
        Err(e) if e.status() == Some(404) => check(
            "image",
            Status::Fail,
            format!("family {fam} was not found in {ip} (it was probably retired)"),
        )
        .fix(list),
        Err(e) => check("image", Status::Fail, api_error_text(&e)).fix(list),
    }
}

fn zone_checks(f: &preflight::Findings, project: &str, report: &mut Report) {
    let elsewhere = if f.suggestions.is_empty() {
        format!(
            "gcloud compute accelerator-types list --project {project} --filter=\"name={}\" shows the zones that offer it; pass them with --zone",
            f.accelerator
        )
    } else {
        format!(
            "choose zones that offer it: --zone {} (or zones = [...] in cloudrun.toml)",
            f.suggestions.join(",")
        )
    };
    for z in &f.zones {
        let name = format!("zone {}", z.zone);
        report.push(match &z.verdict {
            ZoneVerdict::Offers => check(name, Status::Ok, format!("offers {}", f.accelerator)),
            ZoneVerdict::LacksGpu => check(
                name,
                Status::Fail,
                format!("does not offer {}", f.accelerator),
            )
            .fix(elsewhere.clone()),
            ZoneVerdict::NoSuchZone => {
                check(name, Status::Fail, "no such zone").fix(elsewhere.clone())
            }
            ZoneVerdict::Unknown(why) => check(name, Status::Warn, format!("unknown: {why}")),
        });
    }
}

/// Run every check after the settings and credentials lines.
pub async fn run_checks(c: &Clients, inputs: &Inputs, who: &Identity, report: &mut Report) {
    let p = &inputs.project;
    let compute_on = api_check(
        c,
        p,
        GoogleApi::Compute,
        "cloudrun creates and deletes its VMs through it",
    )
    .await;
    let compute_disabled = compute_on.status == Status::Fail;
    report.push(compute_on);
    report.push(
        api_check(
            c,
            p,
            GoogleApi::Billing,
            "prices come from the built-in table instead of the Cloud Billing Catalog",
        )
        .await,
    );

    let project = if compute_disabled {
        report.skip("project", "the Compute Engine API is disabled");
        None
    } else {
        match c.compute.get_project(p).await {
            Ok(Some(proj)) => {
                report.push(check(
                    "project",
                    Status::Ok,
                    format!("{p} (number {}) is reachable", proj.id),
                ));
                Some(proj)
            }
            Ok(None) => {
                report.push(
                    check(
                        "project",
                        Status::Fail,
                        format!("{p} does not exist or {} cannot see it", who.email.as_deref().unwrap_or("this account")),
                    )
                    .fix("check GCLOUD_PROJECT against `gcloud projects list` (the project id, not its name)"),
                );
                None
            }
            Err(e) => {
                report.push(check("project", Status::Fail, api_error_text(&e)).fix(
                    format!("gcloud projects add-iam-policy-binding {p} --member={} --role=roles/compute.instanceAdmin.v1", member_or_placeholder(who)),
                ));
                None
            }
        }
    };

    let location = bucket_checks(c, inputs, who, report).await;
    service_account_checks(c, inputs, project.as_ref(), who, report).await;

    if compute_disabled || project.is_none() {
        for n in ["gpu quota", "image", "zones"] {
            report.skip(n, "the project is not reachable through Compute");
        }
    } else {
        let f = preflight::check(
            c.compute.as_ref(),
            p,
            &inputs.hardware,
            inputs.spot,
            &inputs.zones,
        )
        .await;
        quota_checks(&f, p, report);
        report.push(image_check(c, inputs).await);
        zone_checks(&f, p, report);
    }
    match location {
        Some(l) => report.push(location_check(&l, inputs)),
        None => report.skip("bucket location", "the bucket's location is unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_nearness_by_region_multi_region_and_continent() {
        assert_eq!(nearness("US-CENTRAL1", "us-central1-a"), Nearness::Local);
        assert_eq!(nearness("US", "us-east4-c"), Nearness::Local);
        assert_eq!(nearness("NAM4", "us-central1-a"), Nearness::Local);
        assert_eq!(
            nearness("us-east1", "us-central1-a"),
            Nearness::SameContinent
        );
        assert_eq!(
            nearness("NORTHAMERICA-NORTHEAST1", "us-central1-a"),
            Nearness::SameContinent
        );
        assert_eq!(
            nearness("EUROPE-WEST4", "us-central1-a"),
            Nearness::Elsewhere
        );
        assert_eq!(nearness("EU", "us-central1-a"), Nearness::Elsewhere);
        assert_eq!(nearness("EU", "europe-west4-a"), Nearness::Local);
        assert_eq!(
            nearness("ASIA-EAST1", "europe-west4-b"),
            Nearness::Elsewhere
        );
    }

    #[test]
    fn the_text_report_puts_each_fix_under_its_line_and_counts() {
        let r = Report {
            checks: vec![
                check("credentials", Status::Ok, "me@x.org"),
                check("api compute.googleapis.com", Status::Fail, "disabled")
                    .fix("gcloud services enable compute.googleapis.com --project p"),
            ],
        };
        let t = r.text();
        assert!(!r.passed());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ok    credentials"), "{t}");
        assert!(
            lines[1].starts_with("fail  api compute.googleapis.com  disabled"),
            "{t}"
        );
        assert!(
            lines[2]
                .trim_start()
                .starts_with("fix: gcloud services enable"),
            "{t}"
        );
        assert_eq!(lines[3], "doctor: 1 ok, 0 warn, 1 fail, 0 skipped");
        let j: Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(j["ok"], false);
        assert_eq!(j["checks"][1]["status"], "fail");
        assert!(j["checks"][0].get("fix").is_none());
    }
}
