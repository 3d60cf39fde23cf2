//! The optional webhook: a JSON POST on start, preemption, the 80 % budget warning and the
//! end. Best effort by design: one attempt, at most [`WEBHOOK_TIMEOUT_SECS`], failures
//! logged and otherwise ignored. It must never delay teardown by more than that.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Longest a webhook call may take, connection included.
pub const WEBHOOK_TIMEOUT_SECS: u64 = 5;

/// The events that are posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    Started,
    Preempted,
    BudgetWarning,
    Ended,
}

/// The JSON body.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookBody {
    pub event: WebhookEvent,
    pub run_id: String,
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<cloudrun::status::EndReason>,
    pub message: String,
    pub cost_usd: f64,
    pub outputs: String,
}

/// A configured webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    url: String,
    http: reqwest::Client,
}

impl Webhook {
    /// A webhook posting to `url`; `None` if no client can be built.
    pub fn new(url: &str) -> Option<Self> {
        let http = cloudrun::http::client_builder()
            .timeout(Duration::from_secs(WEBHOOK_TIMEOUT_SECS))
            .connect_timeout(Duration::from_secs(WEBHOOK_TIMEOUT_SECS))
            .build()
            .map_err(|e| tracing::warn!("webhook client: {e}"))
            .ok()?;
        Some(Webhook {
            url: url.to_string(),
            http,
        })
    }

    /// Post `body`, giving up after [`WEBHOOK_TIMEOUT_SECS`].
    pub async fn post(&self, body: &WebhookBody) {
        let fut = self.http.post(&self.url).json(body).send();
        let url = cloudrun::http::redact_url(&self.url);
        match tokio::time::timeout(Duration::from_secs(WEBHOOK_TIMEOUT_SECS), fut).await {
            Ok(Ok(r)) if r.status().is_success() => {}
            Ok(Ok(r)) => tracing::warn!("webhook {url}: HTTP {}", r.status()),
            Ok(Err(e)) => tracing::warn!("webhook {url}: {e}"),
            Err(_) => tracing::warn!("webhook {url}: no answer within {WEBHOOK_TIMEOUT_SECS} s"),
        }
    }
}
