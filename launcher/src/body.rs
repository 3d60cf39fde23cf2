//! The `instances.insert` body (Compute v1 `Instance`) for one zone of a launch plan.
//!
//! Rules it keeps (shared gcp-api notes §1.2–1.4): int64 fields as JSON strings; N1 gets
//! `guestAccelerators`, G2/A2/A3 never do; `onHostMaintenance: TERMINATE` (GPUs cannot
//! live-migrate); Spot with `automaticRestart: false`; `maxRunDuration` with
//! `instanceTerminationAction: DELETE` on every VM; a service account is attached
//! explicitly (the raw API attaches none); the boot disk is deleted with the VM.
//! Compared with gcloud's body field by field in `tests/body_schema.rs`.

use cloudrun::contract::{
    LABEL_MANAGED, LABEL_RUN, META_AGENT_SHA256, META_AGENT_URL, META_INSTALL_DRIVER, META_SPEC,
    META_STARTUP_SCRIPT, META_STORAGE_HOST, SCOPE_CLOUD_PLATFORM,
};
use serde_json::{json, Value};

use crate::plan::LaunchPlan;

/// The script every VM runs at each boot.
pub const STARTUP_SCRIPT: &str = include_str!("../../scripts/startup.sh");

/// Boot disk type: pd-balanced works on every GPU family (A3 and G2 refuse pd-standard).
pub const BOOT_DISK_TYPE: &str = "pd-balanced";

/// Compute's limit on all metadata keys and values together, in bytes.
pub const METADATA_MAX_BYTES: usize = 512 * 1024;
/// Compute's limit on one metadata value (the startup script), in bytes.
pub const METADATA_VALUE_MAX_BYTES: usize = 256 * 1024;

/// The body is too big for Compute's metadata limits.
#[derive(Debug, thiserror::Error)]
#[error("instance metadata is {size} bytes, over Compute's limit of {limit}: {hint}")]
pub struct MetadataTooBig {
    pub size: usize,
    pub limit: usize,
    pub hint: &'static str,
}

/// The body for `zone`, booting `source_image` (an image or family URL).
pub fn instance_body(
    plan: &LaunchPlan,
    zone: &str,
    source_image: &str,
) -> Result<Value, MetadataTooBig> {
    let h = &plan.hardware;
    let spec = plan.spec_for_zone(zone);
    let spec_json = serde_json::to_string(&spec).unwrap_or_default();

    let mut items = vec![
        (META_STARTUP_SCRIPT, STARTUP_SCRIPT.to_string()),
        (META_SPEC, spec_json),
        (META_AGENT_URL, plan.agent_url()),
        (META_AGENT_SHA256, plan.agent.sha256.clone()),
        (META_INSTALL_DRIVER, "True".to_string()),
    ];
    if let Some(host) = &plan.storage_host {
        items.push((META_STORAGE_HOST, host.clone()));
    }
    let size: usize = items.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > METADATA_MAX_BYTES {
        return Err(MetadataTooBig {
            size,
            limit: METADATA_MAX_BYTES,
            hint: "the run spec is too large; move big --env values into a file in the project",
        });
    }
    if let Some((_, v)) = items
        .iter()
        .find(|(_, v)| v.len() > METADATA_VALUE_MAX_BYTES)
    {
        return Err(MetadataTooBig {
            size: v.len(),
            limit: METADATA_VALUE_MAX_BYTES,
            hint: "one metadata value is too large; shorten --env values or the setup command",
        });
    }

    let mut scheduling = json!({
        "onHostMaintenance": "TERMINATE",
        // Spot VMs must not restart. On-demand VMs do restart after a host event, so that
        // the agent comes back, finds the job gone, syncs and deletes the VM; a stopped
        // VM would keep billing for its disk until `sweep`.
        "automaticRestart": !plan.spot,
        "provisioningModel": if plan.spot { "SPOT" } else { "STANDARD" },
        "instanceTerminationAction": "DELETE",
        "maxRunDuration": {"seconds": plan.cloud_max_run_secs_for(zone).to_string()},
    });
    if let Some(obj) = scheduling.as_object_mut() {
        obj.retain(|_, v| !v.is_null());
    }

    let mut body = json!({
        "name": plan.instance_name,
        "machineType": format!("zones/{zone}/machineTypes/{}", h.machine_type),
        "disks": [{
            "boot": true,
            "autoDelete": true,
            "type": "PERSISTENT",
            "mode": "READ_WRITE",
            "initializeParams": {
                "sourceImage": source_image,
                "diskSizeGb": plan.disk_gb.to_string(),
                "diskType": format!("zones/{zone}/diskTypes/{BOOT_DISK_TYPE}"),
            },
        }],
        "networkInterfaces": [{
            "network": "global/networks/default",
            "accessConfigs": [{"name": "external-nat", "type": "ONE_TO_ONE_NAT"}],
        }],
        "scheduling": scheduling,
        "metadata": {
            "items": items.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
        },
        "serviceAccounts": [{
            "email": plan.service_account,
            "scopes": [SCOPE_CLOUD_PLATFORM],
        }],
        "labels": {
            LABEL_MANAGED: "true",
            LABEL_RUN: plan.run_id.as_str(),
        },
    });
    if h.needs_guest_accelerators() {
        body["guestAccelerators"] = json!([{
            "acceleratorType": format!(
                "projects/{}/zones/{zone}/acceleratorTypes/{}",
                plan.project,
                h.gpu.accelerator()
            ),
            "acceleratorCount": h.count,
        }]);
    }
    Ok(body)
}

/// The image family URL, for `--dry-run` (a real launch resolves it to one image first).
pub fn family_url(plan: &LaunchPlan) -> String {
    format!(
        "projects/{}/global/images/family/{}",
        plan.image_project, plan.image_family
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{build, tests::good, tests::inputs};
    use cloudrun::prices::PriceBook;

    fn plan(gpu: &str, spot: bool) -> LaunchPlan {
        let dir = tempfile::tempdir().unwrap();
        let mut st = good(dir.path());
        st.gpu = Some(crate::settings::Sourced {
            value: gpu.into(),
            source: crate::settings::Source::Default,
        });
        st.spot = Some(crate::settings::Sourced {
            value: spot,
            source: crate::settings::Source::Default,
        });
        let prices = PriceBook::builtin();
        let cmd = vec!["main.py".to_string()];
        let p = build(&st, &inputs(&cmd, &prices)).unwrap();
        std::mem::forget(dir);
        p
    }

    #[test]
    fn n1_gets_guest_accelerators_and_g2_does_not() {
        let b = instance_body(&plan("t4", false), "us-central1-a", "img").unwrap();
        assert_eq!(b["guestAccelerators"][0]["acceleratorCount"], 1);
        assert_eq!(
            b["guestAccelerators"][0]["acceleratorType"],
            "projects/my-project/zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4"
        );
        assert_eq!(
            b["machineType"],
            "zones/us-central1-a/machineTypes/n1-standard-8"
        );
        let b = instance_body(&plan("l4", true), "us-east1-b", "img").unwrap();
        assert!(b.get("guestAccelerators").is_none());
        assert_eq!(b["scheduling"]["provisioningModel"], "SPOT");
        assert_eq!(b["scheduling"]["automaticRestart"], false);
    }

    #[test]
    fn every_vm_deletes_itself_and_int64s_are_strings() {
        for spot in [false, true] {
            let p = plan("a100:2", spot);
            let b = instance_body(&p, "us-central1-a", "img").unwrap();
            let s = &b["scheduling"];
            assert_eq!(s["instanceTerminationAction"], "DELETE");
            assert_eq!(s["onHostMaintenance"], "TERMINATE");
            assert_eq!(
                s["maxRunDuration"]["seconds"],
                p.cloud_max_run_secs.to_string()
            );
            assert_eq!(b["disks"][0]["initializeParams"]["diskSizeGb"], "100");
            assert_eq!(b["disks"][0]["autoDelete"], true);
            assert_eq!(b["labels"][LABEL_RUN], p.run_id.as_str());
            assert_eq!(b["labels"][LABEL_MANAGED], "true");
        }
    }

    #[test]
    fn metadata_carries_the_spec_agent_and_startup_script() {
        let p = plan("l4", false);
        let b = instance_body(&p, "us-central1-b", "img").unwrap();
        let items = b["metadata"]["items"].as_array().unwrap();
        let get = |k: &str| {
            items
                .iter()
                .find(|i| i["key"] == k)
                .map(|i| i["value"].as_str().unwrap().to_string())
        };
        assert!(get(META_STARTUP_SCRIPT).unwrap().starts_with("#!"));
        let spec = cloudrun::RunSpec::from_json(&get(META_SPEC).unwrap()).unwrap();
        assert_eq!(spec.placement.zone.as_deref(), Some("us-central1-b"));
        assert_eq!(get(META_AGENT_SHA256).unwrap(), p.agent.sha256);
        assert_eq!(get(META_INSTALL_DRIVER).as_deref(), Some("True"));
        assert!(get(META_STORAGE_HOST).is_none());
    }
}
