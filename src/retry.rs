//! The one retry policy every network call uses: classify first (connect errors,
//! timeouts, 408, 429 and 5xx retry; other 4xx do not), cap attempts and total time,
//! back off exponentially with jitter, honour `Retry-After`, and log the first failure
//! of a streak rather than every one.
//!
//! Retries live in the HTTP clients, once: a client runs each operation (one request, or
//! the several requests of a resumable upload, a resumed download, an operation wait)
//! under one [`RetryContext`], so the operation has one budget, not one per request.
//! Nothing above a client retries it again; a caller that needs a limit hands the client
//! a [`Budget`] (one attempt, or a deadline) instead.
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
    /// the attempt number (from 1). `what` names the call in logs. One operation of one
    /// request; [`RetryContext`] is the same loop for an operation of several.
    pub async fn run<T, E, F, Fut>(&self, what: &str, mut op: F) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Retryable + Display,
    {
        RetryContext::new(self, Budget::default(), what)
            .run(|a| op(a.number))
            .await
    }
}

/// What a caller lets one client call spend, retries included. The client's
/// [`RetryPolicy`] still classifies failures and backs off; a budget only narrows it.
/// `Budget::default()` is the policy as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// At most this many attempts in the whole operation (`None`: the policy's).
    pub max_attempts: Option<u32>,
    /// Nothing of the operation runs past this instant: no attempt starts after it, and
    /// the request in flight is cut off at it (`None`: only the policy's total time).
    pub deadline: Option<Instant>,
}

impl Budget {
    /// One attempt and no retry: for writes that the next tick repeats anyway (a
    /// heartbeat, a periodic log flush). Its worst case is one request's timeout.
    pub fn once() -> Self {
        Budget {
            max_attempts: Some(1),
            deadline: None,
        }
    }

    /// Retry as the policy says, but end by `deadline`.
    pub fn until(deadline: Instant) -> Self {
        Budget {
            max_attempts: None,
            deadline: Some(deadline),
        }
    }

    /// Retry as the policy says, but end within `d` from now.
    pub fn within(d: Duration) -> Self {
        Budget::until(Instant::now() + d)
    }

    /// The same budget with another cap on attempts (`u32::MAX`: as many as fit before
    /// the deadline).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }
}

impl From<&RetryPolicy> for Budget {
    /// A caller that states its limit as a policy: its attempts, and its total time
    /// counted from now.
    fn from(p: &RetryPolicy) -> Self {
        Budget {
            max_attempts: Some(p.max_attempts.max(1)),
            deadline: Some(Instant::now() + p.total_deadline),
        }
    }
}

/// One attempt inside a [`RetryContext`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Counts from 1 over the whole operation.
    pub number: u32,
    /// Time left before the budget's deadline, when it has one.
    pub time_left: Option<Duration>,
}

impl Attempt {
    /// The timeout for this attempt's request: `usual`, or less when the deadline is
    /// nearer.
    pub fn timeout(&self, usual: Duration) -> Duration {
        self.time_left.map_or(usual, |left| left.min(usual))
    }
}

/// The retry state of one operation, carried across all its requests (the chunks and
/// status queries of a resumable upload, the resumes of a download, the polls of an
/// operation wait): one count of attempts and one clock for the whole operation.
///
/// The policy's total time counts from the operation's first failure, so a long healthy
/// transfer is never cut short by it; a [`Budget`] deadline bounds the whole operation.
#[derive(Debug, Clone)]
pub struct RetryContext {
    policy: RetryPolicy,
    max_attempts: u32,
    deadline: Option<Instant>,
    first_failure: Option<Instant>,
    failures: u32,
    out_of_time: bool,
    what: String,
}

impl RetryContext {
    /// The context of one operation named `what` (for logs), under `policy` narrowed by
    /// `budget`.
    pub fn new(policy: &RetryPolicy, budget: Budget, what: impl Into<String>) -> Self {
        let max_attempts = budget.max_attempts.unwrap_or(policy.max_attempts).max(1);
        RetryContext {
            policy: policy.clone(),
            max_attempts,
            deadline: budget.deadline,
            first_failure: None,
            failures: 0,
            out_of_time: false,
            what: what.into(),
        }
    }

    /// The next attempt: its number and the time left before the deadline.
    pub fn attempt(&self) -> Attempt {
        Attempt {
            number: self.failures + 1,
            time_left: self
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now())),
        }
    }

    /// Failed attempts so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the context gave up on a retryable failure because the budget's deadline
    /// left no time for another attempt (a caller may report that as its own timeout).
    pub fn out_of_time(&self) -> bool {
        self.out_of_time
    }

    /// A request of the operation failed with `err`. When the policy and the budget allow
    /// another attempt, wait the backoff (or the server's `Retry-After`) and return
    /// `Ok(())`; otherwise hand `err` back, to be returned.
    pub async fn backoff<E: Retryable + Display>(&mut self, err: E) -> Result<(), E> {
        let now = Instant::now();
        let first = *self.first_failure.get_or_insert(now);
        self.failures += 1;
        let n = self.failures;
        let what = &self.what;
        let wait = match err.retry() {
            Retry::No => {
                self.out_of_time = false;
                return Err(err);
            }
            Retry::Yes => self.policy.backoff(n),
            Retry::After(d) => d.max(self.policy.backoff(n)),
        };
        let resume_at = now + wait;
        let past_policy = resume_at > first + self.policy.total_deadline;
        let past_deadline = self.deadline.is_some_and(|d| resume_at >= d);
        self.out_of_time = past_deadline;
        if n >= self.max_attempts || past_policy || past_deadline {
            if self.max_attempts > 1 {
                let spent = now - first;
                tracing::warn!(
                    "{what}: giving up after {n} attempts ({spent:.1?} retrying): {err}"
                );
            }
            return Err(err);
        }
        if n == 1 {
            tracing::warn!("{what}: {err}; retrying");
        } else {
            tracing::debug!("{what}: attempt {n} failed: {err}; retrying in {wait:?}");
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Run `op` (one request of the operation) until it succeeds, fails permanently, or
    /// the context is spent.
    pub async fn run<T, E, F, Fut>(&mut self, mut op: F) -> Result<T, E>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Retryable + Display,
    {
        loop {
            let a = self.attempt();
            match op(a).await {
                Ok(v) => {
                    if a.number > 1 {
                        tracing::info!("{}: succeeded on attempt {}", self.what, a.number);
                    }
                    return Ok(v);
                }
                Err(e) => self.backoff(e).await?,
            }
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

    #[tokio::test]
    async fn a_budget_of_once_makes_one_attempt() {
        let calls = AtomicU32::new(0);
        let r: Result<(), E> = RetryContext::new(&fast(), Budget::once(), "t")
            .run(|_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(E(Retry::Yes)) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_context_spends_one_deadline_across_its_requests() {
        // Three requests in a row, each failing once and asking for 3 s: with one clock
        // for the operation the third retry would end past the 8 s deadline, so it is
        // not made (a clock per request would have let all three through).
        let p = RetryPolicy {
            max_attempts: 100,
            total_deadline: Duration::from_secs(3600),
            ..fast()
        };
        let t0 = Instant::now();
        let mut ctx = RetryContext::new(&p, Budget::within(Duration::from_secs(8)), "t");
        let mut ok = 0;
        for _ in 0..3 {
            let mut first = true;
            let r: Result<(), E> = ctx
                .run(|_| {
                    let fail = std::mem::replace(&mut first, false);
                    async move {
                        if fail {
                            Err(E(Retry::After(Duration::from_secs(3))))
                        } else {
                            Ok(())
                        }
                    }
                })
                .await;
            ok += u32::from(r.is_ok());
        }
        assert_eq!(ok, 2);
        assert_eq!(ctx.failures(), 3);
        assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_policy_given_as_a_limit_becomes_its_budget() {
        let p = RetryPolicy::default().with_deadline(Duration::from_secs(60));
        let b = Budget::from(&p);
        assert_eq!(b.max_attempts, Some(DEFAULT_MAX_ATTEMPTS));
        assert!(b.deadline.is_some());
        assert_eq!(Budget::from(&RetryPolicy::none()).max_attempts, Some(1));
        let a = Attempt {
            number: 1,
            time_left: Some(Duration::from_secs(2)),
        };
        assert_eq!(a.timeout(Duration::from_secs(300)), Duration::from_secs(2));
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
