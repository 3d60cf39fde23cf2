//! The SIGTERM watcher: the VM shutting down signals the agent; that is sent as one event.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Event;

/// Start the watcher; a SIGTERM handler that cannot be installed is logged, not fatal.
pub fn spawn(cancel: CancellationToken, tx: mpsc::Sender<Event>) {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut sig) => {
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = sig.recv() => { let _ = tx.send(Event::Sigterm).await; }
                }
            });
        }
        Err(e) => tracing::warn!("cannot watch SIGTERM: {e}"),
    }
}
