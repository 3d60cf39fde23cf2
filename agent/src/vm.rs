//! The VM's own Compute calls at the end of a run: keep its boot disk, delete it, power it
//! off. An operation Compute hands back is followed one way, in [`VmHandle::settle`]: done
//! at once, or waited on for up to [`OPERATION_WAIT_SECS`]. What to call, and when, is the
//! teardown's decision ([`crate::agent`]); this module only makes the calls.

use std::sync::Arc;
use std::time::Duration;

use cloudrun::compute::{wait_until_done, Compute, ComputeError, Operation};
use cloudrun::status::{InstanceRef, VmFate};
/// How long to follow the delete (or disk) operation for an error before moving on.
pub const OPERATION_WAIT_SECS: u64 = 90;

/// The Compute client and the instance to delete. Absent for local runs.
#[derive(Debug, Clone)]
pub struct VmHandle {
    pub compute: Arc<dyn Compute>,
    pub instance: InstanceRef,
}

/// Hears the delete operation's name as soon as Compute answers, before it is followed.
pub type OnOperation<'a> =
    &'a mut (dyn FnMut(&str) -> futures::future::BoxFuture<'static, ()> + Send);

impl VmHandle {
    /// The operation once done: as it came when Compute answered done, else waited on.
    async fn settle(&self, op: Operation) -> Result<Operation, ComputeError> {
        if op.is_done() {
            return Ok(op);
        }
        let i = &self.instance;
        wait_until_done(
            self.compute.as_ref(),
            &i.project,
            &i.zone,
            op,
            Duration::from_secs(OPERATION_WAIT_SECS),
        )
        .await
    }

    /// `setDiskAutoDelete false` on the boot disk; the disk's name.
    pub async fn keep_boot_disk(&self) -> Result<String, String> {
        let i = &self.instance;
        let inst = self
            .compute
            .get_instance(&i.project, &i.zone, &i.name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("instance {} not found", i.name))?;
        let disk = inst
            .boot_disk()
            .ok_or_else(|| format!("instance {} lists no boot disk", i.name))?
            .clone();
        let op = self
            .compute
            .set_disk_auto_delete(
                &i.project,
                &i.zone,
                &i.name,
                &disk.device_name,
                false,
                &uuid::Uuid::new_v4().to_string(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let op = self.settle(op).await.map_err(|e| e.to_string())?;
        op.into_result().map_err(|e| e.to_string())?;
        let name = disk
            .source
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or(&disk.device_name)
            .to_string();
        Ok(name)
    }

    /// Delete the instance: one call, which the Compute client retries under its policy
    /// with this one `requestId`; power it off when that fails. `None` when both fail.
    /// `on_operation` hears the delete operation's name as soon as Compute answers (before
    /// it is followed), and the name is returned too.
    pub async fn delete_or_power_off(
        &self,
        request_id: &str,
        on_operation: OnOperation<'_>,
    ) -> (Option<VmFate>, Option<String>) {
        let i = &self.instance;
        let mut op_name = None;
        tracing::info!("deleting instance {} (requestId {request_id})", i.name);
        match self
            .compute
            .delete_instance(&i.project, &i.zone, &i.name, request_id)
            .await
        {
            Ok(None) => return (Some(VmFate::Deleted), op_name),
            Ok(Some(op)) => {
                if !op.name.is_empty() {
                    op_name = Some(op.name.clone());
                    on_operation(&op.name).await;
                }
                match self.settle(op).await.map(|op| op.into_result()) {
                    Ok(Ok(_)) => return (Some(VmFate::Deleted), op_name),
                    Ok(Err(e)) => tracing::error!("the delete operation failed: {e}"),
                    // Accepted but not confirmed (the VM may be going down under us).
                    Err(e) => {
                        tracing::warn!("delete accepted, not confirmed: {e}");
                        return (Some(VmFate::Deleted), op_name);
                    }
                }
            }
            Err(e) => tracing::error!("deleting the instance: {e}"),
        }
        (self.power_off().await, op_name)
    }

    /// Power the instance off (`instances.stop`); `None` when that fails too.
    pub async fn power_off(&self) -> Option<VmFate> {
        let i = &self.instance;
        tracing::warn!("powering off instance {} instead", i.name);
        match self
            .compute
            .stop_instance(
                &i.project,
                &i.zone,
                &i.name,
                &uuid::Uuid::new_v4().to_string(),
            )
            .await
        {
            Ok(_) => Some(VmFate::PoweredOff),
            Err(e) => {
                tracing::error!("powering off the instance failed too: {e}");
                None
            }
        }
    }
}
