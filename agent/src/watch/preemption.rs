//! The preemption watcher: waits on the metadata server's `instance/preempted` and sends
//! one event when the Spot VM is being preempted.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Event;
use crate::metadata::MetadataClient;

/// Start the watcher.
pub fn spawn(cancel: CancellationToken, tx: mpsc::Sender<Event>, md: Arc<MetadataClient>) {
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = md.wait_for_preemption() => { let _ = tx.send(Event::Preempted).await; }
        }
    });
}
