//! The GPU watcher: probes `nvidia-smi` every `intervals.gpu_sample_secs` and sends each
//! state with its sample.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Event;
use crate::clock::Clock;
use crate::gpu::GpuProbe;

/// Start the watcher; it probes at once, then every `every`.
pub fn spawn(
    cancel: CancellationToken,
    tx: mpsc::Sender<Event>,
    gpu: Arc<dyn GpuProbe>,
    clock: Arc<dyn Clock>,
    every: Duration,
) {
    tokio::spawn(async move {
        let work = async {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let state = gpu.probe().await;
                let sample = state.to_sample(clock.now());
                if tx.send(Event::Gpu(state, sample)).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! { _ = cancel.cancelled() => {}, _ = work => {} }
    });
}
