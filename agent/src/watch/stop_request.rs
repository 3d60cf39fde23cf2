//! The stop-request watcher: polls the run's stop-request object in the store every
//! `intervals.stop_poll_secs` and sends one stop, with who asked and why, when it appears.

use std::sync::Arc;
use std::time::Duration;

use cloudrun::status::StopRequest;
use cloudrun::Storage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Event;

/// Start the watcher on `key`; it polls at once, then every `every`, and ends after the
/// first request it finds.
pub fn spawn(
    cancel: CancellationToken,
    tx: mpsc::Sender<Event>,
    storage: Arc<dyn Storage>,
    key: String,
    every: Duration,
) {
    tokio::spawn(async move {
        let work = async {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Ok(Some(_)) = storage.head(&key).await {
                    let msg = match storage.get_bytes(&key).await {
                        Ok(b) => describe(&b),
                        Err(_) => "stop requested".to_string(),
                    };
                    let _ = tx.send(Event::StopRequested(msg)).await;
                    return;
                }
            }
        };
        tokio::select! { _ = cancel.cancelled() => {}, _ = work => {} }
    });
}

/// The end message for the request's bytes.
fn describe(bytes: &[u8]) -> String {
    match serde_json::from_slice::<StopRequest>(bytes) {
        Ok(r) => format!(
            "stop requested by {} at {}{}",
            if r.by.is_empty() {
                "the launcher"
            } else {
                &r.by
            },
            r.requested_at.to_rfc3339(),
            r.message.map(|m| format!(": {m}")).unwrap_or_default()
        ),
        Err(_) => "stop requested (unreadable request)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn a_request_is_described_by_who_when_and_why() {
        let by =
            br#"{"requested_at":"2026-01-02T03:04:05Z","by":"ana@laptop","message":"wrong lr"}"#;
        assert_eq!(
            describe(by),
            "stop requested by ana@laptop at 2026-01-02T03:04:05+00:00: wrong lr"
        );
        let anonymous = br#"{"requested_at":"2026-01-02T03:04:05Z","by":""}"#;
        assert_eq!(
            describe(anonymous),
            "stop requested by the launcher at 2026-01-02T03:04:05+00:00"
        );
        assert_eq!(describe(b"{"), "stop requested (unreadable request)");
    }
}
