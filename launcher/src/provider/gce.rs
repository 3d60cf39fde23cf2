//! Runs on Compute Engine VMs: one VM per run, labelled `cloudrun=true` and
//! `cloudrun-run=<id>`, found by those labels; the agent on it deletes it, and `sweep`
//! deletes the ones whose run ended or went silent.

use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cloudrun::compute::{Compute, Instance};
use cloudrun::compute_rest::endpoint_from;
use cloudrun::contract::{ENV_STORAGE_EMULATOR_HOST, LABEL_MANAGED, LABEL_RUN};
use cloudrun::prices::PriceBook;
use cloudrun::status::RunStatus;

use super::{Inspection, LaunchRequest, Machine, Provider, Words};
use crate::runs::{self, RunView, RunsError, Store};

/// VMs in one project. `compute` is `None` when this command has no credentials, and
/// `project` when no project is set: listing then says so (a run's own VM is still found
/// by the project its status names), and the store still answers.
pub struct Gce {
    pub compute: Option<Arc<dyn Compute>>,
    pub project: Option<String>,
}

/// Message when the Compute API cannot be reached for lack of settings.
const NO_COMPUTE: &str = "VM check skipped: no project or credentials";

impl Gce {
    fn compute(&self) -> Option<&dyn Compute> {
        self.compute.as_deref()
    }
}

fn machine(project: &str, i: &Instance) -> Machine {
    Machine {
        run: i
            .labels
            .get(LABEL_RUN)
            .cloned()
            .unwrap_or_else(|| format!("?{}", i.name)),
        label: format!("{} in {}", i.name, i.zone_name()),
        describe: format!("{} {} ({})", i.name, i.status, i.zone_name()),
        up: true,
        created_at: DateTime::parse_from_rfc3339(&i.creation_timestamp)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        handle: format!("{project}/{}/{}", i.zone_name(), i.name),
    }
}

/// The VM's state for `status RUN`: what the Compute API says, reconciled with the
/// delete the agent recorded before it asked.
pub fn vm_state(vm: &Result<Option<Instance>, String>, s: Option<&RunStatus>) -> String {
    let asked = s
        .filter(|s| runs::delete_pending(s))
        .and_then(|s| s.delete.as_ref())
        .map(|d| {
            format!(
                "the agent asked for its delete at {}{}",
                d.requested_at.format("%H:%M:%S UTC"),
                d.operation
                    .as_ref()
                    .map(|o| format!(", operation {o}"))
                    .unwrap_or_default()
            )
        });
    match (vm, asked) {
        (Ok(None), Some(a)) => format!("deleted ({a}; the Compute API no longer has it)"),
        (Ok(None), None) => "gone".into(),
        (Ok(Some(i)), Some(a)) => format!("{}, being deleted ({a})", i.status),
        (Ok(Some(i)), None) => i.status.clone(),
        (Err(e), Some(a)) => format!("{e}; {a}"),
        (Err(e), None) => e.clone(),
    }
}

#[async_trait(?Send)]
impl Provider for Gce {
    fn kind(&self) -> cloudrun::spec::Provider {
        cloudrun::spec::Provider::Gce
    }

    fn words(&self) -> Words {
        Words {
            noun: "VM",
            end: "delete",
            ended: "deleted",
            command: "cloudrun-launch",
        }
    }

    fn sees_all(&self) -> bool {
        true
    }

    /// Validate offline, price with the best source there is, then [`crate::launch`]
    /// (preflight, push, spec, insert with zone failover).
    async fn launch(
        &self,
        req: &LaunchRequest<'_>,
        out: &mut (dyn Write + Send),
    ) -> Result<i32, crate::Error> {
        let settings = req.settings;
        let now = req.now;
        let args = req.cli.launch_args();
        let (_, command) = crate::locate_project(req.cli, req.ctx);
        let storage_host =
            (req.ctx.env)(ENV_STORAGE_EMULATOR_HOST).filter(|h| !h.trim().is_empty());
        let target = crate::agent_target(settings);
        let default_agent =
            crate::agent_bin::find(&crate::static_agent_candidates(settings, req.ctx, target));
        let plan_with = |prices: &PriceBook| {
            crate::plan::build(
                settings,
                &crate::plan::PlanInputs {
                    command: &command,
                    now: req.now,
                    prices,
                    default_agent: default_agent.clone(),
                    storage_host: storage_host.clone(),
                    launched_by: crate::who(req.ctx.env),
                },
            )
        };
        // Validate everything first, offline; then price with the best source there is.
        let offline = if args.dry_run {
            crate::load_prices(settings, req.ctx, None, false, now).await?
        } else {
            crate::load_prices_quietly(settings, req.ctx, None, false, now).await?
        };
        let checked = plan_with(&offline.book)?;
        // The VM runs the agent with its image's libraries, so only a static one will do.
        // An emulated Compute on this machine boots its "VMs" here, where any agent runs.
        let compute_base = endpoint_from(|k| (req.ctx.env)(k));
        if !cloudrun::google_rest::is_loopback(&compute_base) {
            crate::agent_bin::check_for_vm(&checked.agent.path, target)
                .map_err(|e| crate::plan::Problems(vec![e.to_string()]))?;
        }
        if args.dry_run {
            let mut plan = plan_with(&offline.book)?;
            plan.any_region = args.any_region;
            let zone = plan.zones.first().cloned().unwrap_or_default();
            let body = crate::body::instance_body(&plan, &zone, &crate::body::family_url(&plan))?;
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            )?;
            let then = match &plan.zones[1.min(plan.zones.len())..] {
                [] => String::new(),
                rest => format!(" (then {})", rest.join(", ")),
            };
            eprintln!(
                "dry run: would create {} in {zone}{then} at ${:.2}/h ({}) and pack the project folder {}; nothing was sent",
                plan.instance_name,
                plan.estimate.usd_per_hour,
                plan.estimate.describe(),
                plan.project_dir.display(),
            );
            for line in crate::launch::zone_price_lines(&plan) {
                eprintln!("  {line}");
            }
            if plan.zones_default {
                eprintln!("  (a launch reads the bucket's location first and tries the zones near the data first)");
            }
            return Ok(0);
        }
        let tokens = req.ctx.tokens(settings).await?;
        let catalog = crate::catalog_client(req.ctx.env, Some(tokens.clone()));
        let prices = crate::load_prices(settings, req.ctx, catalog.as_ref(), false, now).await?;
        let mut plan = plan_with(&prices.book)?;
        plan.any_region = args.any_region;
        let deps = crate::launch::Deps {
            storage: req.ctx.storage(settings, &plan.store).await?,
            compute: req.ctx.compute(tokens)?,
            pusher: Box::new(crate::push::SyncPusher {
                cache_dir: directories::BaseDirs::new().map(|d| d.cache_dir().join("cloudrun")),
                progress: req.ctx.progress,
            }),
        };
        let mut report = |line: String| eprintln!("{line}");
        let launched = crate::launch::launch(&plan, &deps, now, &mut report).await?;
        write!(out, "{}", crate::launch::summary(&plan, &launched))?;
        if !args.follow {
            return Ok(0);
        }
        let store = Store {
            storage: deps.storage.clone(),
            layout: plan.layout.clone(),
        };
        let view = crate::logview::LogView {
            terminal: req.ctx.terminal,
        };
        let (code, _) = crate::follow_run(&store, &plan.run_id, None, false, view, out).await?;
        Ok(code)
    }

    /// A VM's agent writes its heartbeat; the status tells.
    fn liveness(&self, _run: &cloudrun::RunId) -> Option<super::Liveness> {
        None
    }

    async fn machines(&self) -> Result<Vec<Machine>, RunsError> {
        let (Some(c), Some(project)) = (&self.compute, &self.project) else {
            return Err(RunsError::Other(NO_COMPUTE.into()));
        };
        let filter = format!("labels.{LABEL_MANAGED} = true");
        let vms = c
            .list_instances(project, None, &filter)
            .await
            .map_err(|source| RunsError::Compute {
                what: "VM check failed".into(),
                source,
            })?;
        Ok(vms.iter().map(|i| machine(project, i)).collect())
    }

    async fn inspect(&self, v: &RunView) -> Inspection {
        let vm: Result<Option<Instance>, String> = match (&self.compute, v.instance()) {
            (Some(c), Some((p, z, n))) => c
                .get_instance(&p, &z, &n)
                .await
                .map_err(|e| format!("VM check failed: {e}")),
            (None, _) => Err(NO_COMPUTE.into()),
            (_, None) => Ok(None),
        };
        let json = match &vm {
            Ok(Some(i)) => {
                serde_json::json!({"name": i.name, "status": i.status, "zone": i.zone_name()})
            }
            Ok(None) => serde_json::Value::Null,
            Err(e) => serde_json::json!({"error": e}),
        };
        let mut lines = vec![("gpu", v.gpu())];
        if let Some((p, z, n)) = v.instance() {
            let state = vm_state(&vm, v.status.as_ref());
            lines.push(("vm", format!("{n} in {z} (project {p}): {state}")));
            let deleting = v.status.as_ref().is_some_and(runs::delete_pending);
            if v.phase().is_terminal() && matches!(vm, Ok(Some(_))) && !deleting {
                lines.push(("warning", format!("the run ended but its VM is still up: `cloudrun-launch stop {} --now` or `cloudrun-launch sweep --yes`", v.run)));
            }
        }
        Inspection {
            lines,
            json,
            lost: false,
        }
    }

    /// A VM that is gone took its agent with it; the cloud's deadline and `sweep` see
    /// to the rest, so nothing is closed here.
    async fn close_lost(
        &self,
        _store: &Store,
        _run: &RunView,
        _by: &str,
        _now: DateTime<Utc>,
        _out: &mut dyn Write,
    ) -> Result<bool, RunsError> {
        Ok(false)
    }

    /// Write the stop request, then delete the VM.
    async fn stop_now(
        &self,
        store: &Store,
        v: &RunView,
        by: &str,
        now: DateTime<Utc>,
        out: &mut dyn Write,
    ) -> Result<(), RunsError> {
        let run = &v.run;
        runs::write_stop_request(store, run, by, now, "stop --now").await?;
        let (p, z, n) = v
            .instance()
            .ok_or_else(|| RunsError::NoInstance(run.clone()))?;
        let compute = self.compute().ok_or_else(|| {
            RunsError::Other(
                "stop --now needs the Compute API: set GCLOUD_PROJECT and credentials".into(),
            )
        })?;
        writeln!(out, "ending run {}", v.brief())?;
        let rid = uuid::Uuid::new_v4().to_string();
        match compute
            .delete_instance(&p, &z, &n, &rid)
            .await
            .map_err(|source| RunsError::Compute {
                what: format!("deleting {n}"),
                source,
            })? {
            Some(_) => writeln!(
                out,
                "deleting VM {n} in {z}; outputs not yet synced are lost"
            )?,
            None => writeln!(out, "VM {n} is already gone")?,
        }
        Ok(())
    }

    async fn end_machine(&self, m: &Machine, why: &str) -> Result<String, String> {
        let compute = self
            .compute()
            .ok_or_else(|| "this needs the Compute API: set credentials".to_string())?;
        let mut parts = m.handle.splitn(3, '/');
        let (Some(project), Some(zone), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("no project and zone in {}", m.handle));
        };
        let rid = uuid::Uuid::new_v4().to_string();
        match compute.delete_instance(project, zone, name, &rid).await {
            Ok(_) => Ok(format!("deleting {name} in {zone} ({why})")),
            Err(e) => Err(format!("could not delete {name} in {zone}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use cloudrun::status::{DeleteRecord, Phase, VmFate};
    use cloudrun::RunId;

    fn ended(delete: Option<&str>, vm: Option<VmFate>) -> RunStatus {
        let run = RunId::parse("20261126-071500-ab12").unwrap();
        let at: DateTime<Utc> = "2026-11-26T08:00:00Z".parse().unwrap();
        let mut s = RunStatus::launching(run, at, 1.0);
        s.phase = Phase::Ended;
        s.vm = vm;
        s.delete = delete.map(|op| DeleteRecord {
            request_id: "req-1".into(),
            requested_at: at,
            operation: Some(op.into()),
        });
        s
    }

    #[test]
    fn a_delete_the_agent_did_not_live_to_confirm_is_confirmed_by_the_compute_api() {
        let s = ended(Some("operation-9"), None);
        let gone = vm_state(&Ok(None), Some(&s));
        assert_eq!(
            gone,
            "deleted (the agent asked for its delete at 08:00:00 UTC, operation operation-9; the Compute API no longer has it)"
        );
        let up = Instance {
            status: "STOPPING".into(),
            ..Instance::default()
        };
        let going = vm_state(&Ok(Some(up.clone())), Some(&s));
        assert!(
            going.starts_with("STOPPING, being deleted (the agent asked"),
            "{going}"
        );
        let unknown = vm_state(&Err("VM check failed: 503".into()), Some(&s));
        assert!(unknown.contains("503; the agent asked"), "{unknown}");
        // Without a recorded delete, or once the agent recorded the fate: as before.
        assert_eq!(vm_state(&Ok(None), Some(&ended(None, None))), "gone");
        let fated = ended(Some("operation-9"), Some(VmFate::PoweredOff));
        assert_eq!(vm_state(&Ok(Some(up)), Some(&fated)), "STOPPING");
    }

    #[test]
    fn a_vm_is_named_by_its_run_label_zone_and_name() {
        let mut i = Instance {
            name: "cr-1".into(),
            status: "RUNNING".into(),
            zone: "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a".into(),
            creation_timestamp: "2026-11-26T08:00:00.000-07:00".into(),
            ..Instance::default()
        };
        let m = machine("p", &i);
        assert_eq!(m.run, "?cr-1");
        assert_eq!(m.describe, "cr-1 RUNNING (us-central1-a)");
        assert_eq!(m.label, "cr-1 in us-central1-a");
        assert_eq!(m.handle, "p/us-central1-a/cr-1");
        assert!(m.up);
        assert_eq!(
            m.created_at,
            Some("2026-11-26T15:00:00Z".parse::<DateTime<Utc>>().unwrap())
        );
        i.labels
            .insert(LABEL_RUN.into(), "20261126-071500-ab12".into());
        assert_eq!(machine("p", &i).run, "20261126-071500-ab12");
    }
}
