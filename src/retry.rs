//! The one retry policy every network call uses: classify first (connect errors,
//! timeouts, 408, 429 and 5xx retry; other 4xx do not), cap attempts and total time,
//! back off exponentially with jitter, honour `Retry-After`, and log the first failure
//! of a streak rather than every one.
//!
//! Non-idempotent calls may only go through here once made idempotent (a `requestId`
//! on Compute inserts, `ifGenerationMatch` on GCS writes, a resumable session).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after the policy's backoff.
    Yes,
    /// Try again, but not before this long (the server's `Retry-After`).
    After(Duration),
    /// Give up at once: trying again cannot help.
    No,
}

/// Errors that know whether they are worth retrying.
pub trait Retryable {
    fn retry(&self) -> Retry;
}

/// Whether an HTTP status is transient: 408, 429 and every 5xx.
pub fn status_is_transient(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// Whether a reqwest error happened before or while talking to the server in a way
/// that a new attempt may cure (connect, timeout, a dropped connection mid-body).
pub fn transport_is_transient(err: &reqwest::Error) -> bool {
    err.is_connect() || err.is_timeout() || err.is_request() || err.is_body()
}

/// Parse a `Retry-After` header given in seconds (the HTTP-date form is not used by
/// Google APIs).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// First backoff of the default policy.
pub const DEFAULT_INITIAL_BACKOFF_MS: u64 = 200;
/// Longest single backoff of the default policy: long enough to ride out a GCS or
/// Compute hiccup, short enough that a recovered service is used again promptly.
pub const DEFAULT_MAX_BACKOFF_SECS: u64 = 10;
/// Default cap on attempts.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// Default cap on the total time spent on one call, retries included.
pub const DEFAULT_TOTAL_DEADLINE_SECS: u64 = 120;

/// Attempts, backoff and deadline for one kind of call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No new attempt starts after this much time since the first.
    pub total_deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff: Duration::from_millis(DEFAULT_INITIAL_BACKOFF_MS),
            max_backoff: Duration::from_secs(DEFAULT_MAX_BACKOFF_SECS),
            total_deadline: Duration::from_secs(DEFAULT_TOTAL_DEADLINE_SECS),
        }
    }
}

impl RetryPolicy {
    /// A policy with no retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The same policy with another total deadline.
    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.total_deadline = d;
        self
    }

    /// The backoff before attempt `attempt + 1` (`attempt` counts from 1): exponential,
    /// capped, with "equal jitter" (half fixed, half random) so that many agents hitting
    /// the same outage do not retry in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_backoff);
        let half = capped / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Run `op` until it succeeds, fails permanently, or the policy is spent. `op` gets
    /// the attempt number (from 1). `what` names the call in logs.
    pub async fn run<T, E, F, Fut>(&self, what: &str, mut op: F) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Retryable + Display,
    {
        let start = Instant::now();
        let mut attempt = 1;
        loop {
            let err = match op(attempt).await {
                Ok(v) => {
                    if attempt > 1 {
                        tracing::info!("{what}: succeeded on attempt {attempt}");
                    }
                    return Ok(v);
                }
                Err(e) => e,
            };
            let wait = match err.retry() {
                Retry::No => return Err(err),
                Retry::Yes => self.backoff(attempt),
                Retry::After(d) => d.max(self.backoff(attempt)),
            };
            let spent = start.elapsed();
            if attempt >= self.max_attempts || spent + wait > self.total_deadline {
                tracing::warn!("{what}: giving up after {attempt} attempts in {spent:.1?}: {err}");
                return Err(err);
            }
            if attempt == 1 {
                tracing::warn!("{what}: {err}; retrying");
            } else {
                tracing::debug!("{what}: attempt {attempt} failed: {err}; retrying in {wait:?}");
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct E(Retry);
    impl Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
    impl Retryable for E {
        fn retry(&self) -> Retry {
            self.0
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            total_deadline: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, E> = fast()
            .run("t", |n| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        Err(E(Retry::Yes))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(r.unwrap(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), E> = fast()
            .run("t", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(E(Retry::No)) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn attempts_are_capped() {
        let calls = AtomicU32::new(0);
        let r: Result<(), E> = fast()
            .run("t", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(E(Retry::Yes)) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_deadline_stops_retries_that_wait_long() {
        let calls = AtomicU32::new(0);
        let p = RetryPolicy {
            max_attempts: 100,
            total_deadline: Duration::from_secs(10),
            ..fast()
        };
        let r: Result<(), E> = p
            .run("t", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(E(Retry::After(Duration::from_secs(4)))) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for attempt in 1..30 {
            let b = p.backoff(attempt);
            assert!(b <= p.max_backoff, "{attempt}: {b:?}");
        }
        assert!(p.backoff(1) <= Duration::from_millis(200));
        assert!(p.backoff(20) >= Duration::from_secs(5));
    }

    #[test]
    fn statuses_are_classified() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(status_is_transient(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 412] {
            assert!(!status_is_transient(s), "{s}");
        }
    }
}
