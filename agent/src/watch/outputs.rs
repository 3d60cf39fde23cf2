//! The output-sync loop: one mirroring pass every `intervals.output_sync_secs` while the
//! job runs, each pass's result sent to the supervisor.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Event;
use crate::transfer::Outputs;

/// Start the loop; the first pass runs `every` from now. The handle lets the final sync
/// wait for a pass under way.
pub fn spawn(
    stop: CancellationToken,
    tx: mpsc::Sender<Event>,
    outputs: Arc<dyn Outputs>,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let pass = outputs.sync().await;
            if tx.send(Event::Outputs(pass)).await.is_err() {
                return;
            }
        }
    })
}
