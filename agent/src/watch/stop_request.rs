//! The stop-request watcher: polls the run's stop-request object in the store every
//! `intervals.stop_poll_secs` and sends one stop, with who asked and why, when it appears.

use std::time::Duration;

use cloudrun::run_store::{RunStore, RunStoreError};
use cloudrun::status::StopRequest;
use cloudrun::RunId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Event;

/// Start the watcher on `run`'s stop request; it polls at once, then every `every`, and
/// ends after the first request it finds. A request that does not parse still stops the
/// run (someone asked); a store that does not answer is asked again at the next tick.
pub fn spawn(
    cancel: CancellationToken,
    tx: mpsc::Sender<Event>,
    docs: RunStore,
    run: RunId,
    every: Duration,
) {
    tokio::spawn(async move {
        let work = async {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let msg = match docs.stop_request(&run).await {
                    Ok(Some(r)) => describe(&r),
                    Err(RunStoreError::Unreadable { .. }) => {
                        "stop requested (unreadable request)".to_string()
                    }
                    Ok(None) | Err(RunStoreError::Storage { .. }) => continue,
                };
                let _ = tx.send(Event::StopRequested(msg)).await;
                return;
            }
        };
        tokio::select! { _ = cancel.cancelled() => {}, _ = work => {} }
    });
}

/// The end message for a request.
fn describe(r: &StopRequest) -> String {
    format!(
        "stop requested by {} at {}{}",
        if r.by.is_empty() {
            "the launcher"
        } else {
            &r.by
        },
        r.requested_at.to_rfc3339(),
        r.message
            .as_ref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn a_request_is_described_by_who_when_and_why() {
        let parse = |b: &str| serde_json::from_str::<cloudrun::status::StopRequest>(b).unwrap();
        let by = parse(
            r#"{"requested_at":"2026-01-02T03:04:05Z","by":"ana@laptop","message":"wrong lr"}"#,
        );
        assert_eq!(
            describe(&by),
            "stop requested by ana@laptop at 2026-01-02T03:04:05+00:00: wrong lr"
        );
        let anonymous = parse(r#"{"requested_at":"2026-01-02T03:04:05Z","by":""}"#);
        assert_eq!(
            describe(&anonymous),
            "stop requested by the launcher at 2026-01-02T03:04:05+00:00"
        );
    }
}
