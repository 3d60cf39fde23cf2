//! Billing arithmetic: Compute Engine bills GPUs, vCPUs and memory per second with a
//! 1-minute minimum. The receipt the agent writes at the end is computed here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Compute Engine's minimum billed time for a VM, in seconds.
pub const MIN_BILLED_SECS: u64 = 60;

/// Seconds billed for a VM that has been up `elapsed_secs` (rounded up to whole seconds,
/// at least [`MIN_BILLED_SECS`]).
pub fn billed_secs(elapsed_secs: f64) -> u64 {
    let whole = if elapsed_secs.is_finite() && elapsed_secs > 0.0 {
        elapsed_secs.ceil() as u64
    } else {
        0
    };
    whole.max(MIN_BILLED_SECS)
}

/// Cost in US dollars of `billed` seconds at `usd_per_hour`.
pub fn cost_usd(billed: u64, usd_per_hour: f64) -> f64 {
    billed as f64 / 3600.0 * usd_per_hour
}

/// Seconds of run time a budget buys at a price (`None` when the price is 0).
pub fn secs_for_budget(budget_usd: f64, usd_per_hour: f64) -> Option<u64> {
    if usd_per_hour > 0.0 && budget_usd.is_finite() && budget_usd > 0.0 {
        Some((budget_usd / usd_per_hour * 3600.0).floor() as u64)
    } else {
        None
    }
}

/// The cost receipt in the final status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// When billing started (the agent's first start on the VM).
    pub started_at: DateTime<Utc>,
    /// When the delete was requested (or the local agent exited).
    pub ended_at: DateTime<Utc>,
    /// Seconds billed, including the 1-minute minimum.
    pub billed_secs: u64,
    pub usd_per_hour: f64,
    pub total_usd: f64,
    /// Seconds spent pulling code and in the setup command, within `billed_secs`.
    #[serde(default)]
    pub setup_secs: u64,
    /// Seconds the job itself ran.
    #[serde(default)]
    pub job_secs: u64,
}

impl Receipt {
    /// A receipt for a VM up from `started_at` to `ended_at`.
    pub fn new(
        started_at: DateTime<Utc>,
        ended_at: DateTime<Utc>,
        usd_per_hour: f64,
        setup_secs: u64,
        job_secs: u64,
    ) -> Self {
        let elapsed = (ended_at - started_at).num_milliseconds() as f64 / 1000.0;
        let billed = billed_secs(elapsed);
        Receipt {
            started_at,
            ended_at,
            billed_secs: billed,
            usd_per_hour,
            total_usd: cost_usd(billed, usd_per_hour),
            setup_secs,
            job_secs,
        }
    }

    /// One line for people: "billed 12m 03s at $0.71/h = $0.14".
    pub fn summary(&self) -> String {
        format!(
            "billed {} at ${:.2}/h = ${:.2}",
            format_secs(self.billed_secs),
            self.usd_per_hour,
            self.total_usd
        )
    }
}

/// `3725` → `1h 02m 05s`; `65` → `1m 05s`; `9` → `9s`.
pub fn format_secs(s: u64) -> String {
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h {m:02}m {sec:02}s")
    } else if m > 0 {
        format!("{m}m {sec:02}s")
    } else {
        format!("{sec}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_minute_minimum_then_per_second() {
        assert_eq!(billed_secs(0.0), 60);
        assert_eq!(billed_secs(12.2), 60);
        assert_eq!(billed_secs(60.0), 60);
        assert_eq!(billed_secs(60.1), 61);
        assert_eq!(billed_secs(3600.0), 3600);
        assert_eq!(billed_secs(f64::NAN), 60);
    }

    #[test]
    fn cost_and_budget() {
        assert!((cost_usd(3600, 2.5) - 2.5).abs() < 1e-12);
        assert!((cost_usd(60, 3.6) - 0.06).abs() < 1e-12);
        assert_eq!(secs_for_budget(1.0, 3.6), Some(1000));
        assert_eq!(secs_for_budget(1.0, 0.0), None);
    }

    #[test]
    fn receipt_bills_the_minimum_for_a_short_run() {
        let r = Receipt::new(
            "2026-11-26T07:00:00Z".parse().unwrap(),
            "2026-11-26T07:00:30Z".parse().unwrap(),
            3.6,
            5,
            20,
        );
        assert_eq!(r.billed_secs, 60);
        assert!((r.total_usd - 0.06).abs() < 1e-12);
        assert_eq!(r.summary(), "billed 1m 00s at $3.60/h = $0.06");
        assert_eq!(format_secs(3725), "1h 02m 05s");
    }
}
