//! What the agent reports besides logs: `status.json` (heartbeat writes, coalesced, in a
//! task of their own so a slow store never holds up the supervisor) and GPU samples in
//! JSONL batches under `runs/<id>/metrics/<seq>`.
//!
//! The final status is not written here: teardown writes it itself, with a deadline,
//! after stopping the heartbeat writer, so no stale heartbeat can land after it.
//!
//! Nothing here retries: the storage client does, within the [`Budget`] each write hands
//! it (one attempt for a heartbeat or a periodic batch, which the next tick repeats; a
//! deadline for the last ones).

use std::time::Duration;

use cloudrun::retry::Budget;
use cloudrun::run_store::{RunStore, RunStoreError};
use cloudrun::status::{GpuSample, RunStatus};
use cloudrun::RunId;
use tokio::sync::{mpsc, oneshot, watch};

/// Most samples in one metrics batch (an hour of 5 s samples would be 720): a batch is
/// also shipped at every heartbeat.
pub const METRICS_BATCH_MAX_SAMPLES: usize = 120;
/// Total time for writing the final status, retries included.
pub const FINAL_STATUS_DEADLINE_SECS: u64 = 60;
/// Total time for shipping the last metrics batch, retries included.
pub const FINAL_METRICS_DEADLINE_SECS: u64 = 20;

/// Write `status` through the run store, one write that the storage client retries
/// within `budget` ([`Budget::once`], [`Budget::within`]).
pub async fn write_status(
    docs: &RunStore,
    status: &RunStatus,
    budget: Budget,
) -> Result<(), RunStoreError> {
    docs.put_status_within(status, budget).await
}

/// Start the heartbeat writer: it writes the latest value sent on the returned channel
/// (older unsent values are skipped) until the sender is dropped.
pub fn spawn_status_writer(
    docs: RunStore,
) -> (
    watch::Sender<Option<RunStatus>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = watch::channel::<Option<RunStatus>>(None);
    let task = tokio::spawn(async move {
        let mut failing = false;
        while rx.changed().await.is_ok() {
            let Some(s) = rx.borrow_and_update().clone() else {
                continue;
            };
            match write_status(&docs, &s, Budget::once()).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    tracing::warn!("heartbeat: {e}");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    });
    (tx, task)
}

/// A message to the metrics shipper.
#[derive(Debug)]
pub enum MetricsMsg {
    Sample(GpuSample),
    /// Ship what is buffered; the answer says whether it reached the store.
    Finish(oneshot::Sender<bool>),
}

/// Start the metrics shipper, writing batch `seq` next and shipping every `every`.
pub fn spawn_metrics(
    docs: RunStore,
    run: RunId,
    mut seq: u64,
    every: Duration,
) -> (mpsc::Sender<MetricsMsg>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<MetricsMsg>(256);
    let task = tokio::spawn(async move {
        let mut buf: Vec<GpuSample> = Vec::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ship = |buf: &Vec<GpuSample>, seq: u64, budget: Budget| {
            let docs = docs.clone();
            let run = run.clone();
            let batch = buf.clone();
            async move {
                if batch.is_empty() {
                    return Some(0);
                }
                match docs.put_metrics(&run, seq, &batch, budget).await {
                    Ok(()) => Some(batch.len()),
                    Err(e) => {
                        tracing::debug!("metrics batch {seq}: {e}");
                        None
                    }
                }
            }
        };
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(MetricsMsg::Sample(s)) => {
                        buf.push(s);
                        if buf.len() >= METRICS_BATCH_MAX_SAMPLES {
                            if let Some(n) = ship(&buf, seq, Budget::once()).await {
                                buf.drain(..n);
                                seq += 1;
                            }
                        }
                    }
                    Some(MetricsMsg::Finish(tx)) => {
                        let last = Budget::within(Duration::from_secs(FINAL_METRICS_DEADLINE_SECS));
                        let r = ship(&buf, seq, last).await;
                        let _ = tx.send(r.is_some());
                        return;
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    if let Some(n) = ship(&buf, seq, Budget::once()).await {
                        if n > 0 {
                            buf.drain(..n);
                            seq += 1;
                        }
                    }
                    // A long outage must not grow the buffer without end: keep the newest.
                    if buf.len() > 10 * METRICS_BATCH_MAX_SAMPLES {
                        let extra = buf.len() - 10 * METRICS_BATCH_MAX_SAMPLES;
                        buf.drain(..extra);
                    }
                }
            }
        }
    });
    (tx, task)
}
