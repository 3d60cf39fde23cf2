//! The agent's notion of "now": one injectable [`Clock`] that every policy, heartbeat and
//! receipt reads, so tests can move time by hand ([`FakeClock`]) or run under tokio's
//! paused clock ([`TokioClock`]). It owns no timers; periodic work uses tokio intervals.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// A source of wall-clock timestamps.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// Wall-clock time anchored once and advanced by tokio's monotonic clock: immune to NTP
/// steps while a run is supervised, and virtual under `#[tokio::test(start_paused)]`.
#[derive(Debug)]
pub struct TokioClock {
    base_utc: DateTime<Utc>,
    base: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads the system time now and counts from there.
    pub fn new() -> Self {
        TokioClock {
            base_utc: Utc::now(),
            base: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = self.base.elapsed();
        self.base_utc + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::zero())
    }
}

/// A clock that only moves when told to (policy tests).
#[derive(Debug)]
pub struct FakeClock(Mutex<DateTime<Utc>>);

impl FakeClock {
    /// A fake clock showing `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        FakeClock(Mutex::new(at))
    }

    /// Move the clock forward.
    pub fn advance_secs(&self, secs: f64) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *g += chrono::Duration::milliseconds((secs * 1000.0) as i64);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Seconds from `a` to `b` (negative if `b` is earlier), with millisecond precision.
pub fn secs_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_the_paused_runtime_clock() {
        let c = TokioClock::new();
        let t0 = c.now();
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
        let d = secs_between(t0, c.now());
        assert!((600.0..601.0).contains(&d), "{d}");
    }

    #[test]
    fn fake_clock_moves_only_when_told() {
        let c = FakeClock::new("2026-11-26T07:00:00Z".parse().unwrap());
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.advance_secs(1.5);
        assert_eq!(secs_between(t0, c.now()), 1.5);
    }
}
