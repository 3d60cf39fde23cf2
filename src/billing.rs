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
    /// Where the billed seconds and dollars went (absent in receipts from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// Seconds and the dollars they cost.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SplitItem {
    pub secs: u64,
    pub usd: f64,
}

/// The receipt's billed time, by what it paid for. `boot_and_pull`, `setup`, `training`
/// and `final_sync` add up to the billed seconds (Compute's 1-minute minimum, when it
/// applies, is counted in `boot_and_pull`); `idle_tail` and `after_last_checkpoint` are
/// parts of `training` that bought nothing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Split {
    /// From the agent's start to the code pulled and the GPUs found (the GPU wait).
    pub boot_and_pull: SplitItem,
    /// The setup command.
    pub setup: SplitItem,
    /// The job, from its start to its exit (the grace period included).
    pub training: SplitItem,
    /// After the job: the final sync, the final status and the delete request.
    pub final_sync: SplitItem,
    /// For a `gpu_idle` end: the idle window that was paid for before the stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_tail: Option<SplitItem>,
    /// For a preempted or failed run: training after the last verified checkpoint, work
    /// that would have to be redone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_last_checkpoint: Option<SplitItem>,
}

/// The moments a split is cut at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Marks {
    /// Billing start (the agent's first start).
    pub started_at: DateTime<Utc>,
    /// The code was pulled and the GPUs answered (setup or the job starts next).
    pub pulled_at: Option<DateTime<Utc>>,
    pub job_started_at: Option<DateTime<Utc>>,
    /// The job's exit (or the end of its grace period).
    pub job_ended_at: Option<DateTime<Utc>>,
    pub ended_at: DateTime<Utc>,
    /// The last output sync that left the store holding every output file, verified.
    pub last_verified_outputs_at: Option<DateTime<Utc>>,
    /// The idle window, when the run ended for an idle GPU.
    pub idle_window_secs: Option<u64>,
    /// Whether the run was preempted or failed (its unsaved work is lost).
    pub lost_work: bool,
}

fn whole_secs(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    ((to - from).num_milliseconds().max(0) as f64 / 1000.0).round() as u64
}

impl Split {
    /// Cut `billed` seconds at `m`'s moments, at `usd_per_hour`.
    pub fn compute(m: &Marks, billed: u64, usd_per_hour: f64) -> Split {
        let end = m.ended_at;
        let clamp =
            |t: Option<DateTime<Utc>>, lo: DateTime<Utc>| t.map_or(lo, |t| t.clamp(lo, end));
        let pulled = clamp(m.pulled_at.or(m.job_started_at), m.started_at);
        let job_start = clamp(m.job_started_at, pulled);
        let job_end = match m.job_started_at {
            Some(_) => clamp(m.job_ended_at, job_start),
            None => job_start,
        };
        let item = |secs: u64| SplitItem {
            secs,
            usd: cost_usd(secs, usd_per_hour),
        };
        let setup = whole_secs(pulled, job_start);
        let training = whole_secs(job_start, job_end);
        let final_sync = whole_secs(job_end, end);
        let boot = billed.saturating_sub(setup + training + final_sync);
        let idle_tail = m
            .idle_window_secs
            .filter(|_| training > 0)
            .map(|w| item(w.min(training)));
        let after_last_checkpoint = (m.lost_work && training > 0).then(|| {
            let saved = clamp(m.last_verified_outputs_at, job_start).min(job_end);
            item(whole_secs(saved, job_end))
        });
        Split {
            boot_and_pull: item(boot),
            setup: item(setup),
            training: item(training),
            final_sync: item(final_sync),
            idle_tail,
            after_last_checkpoint,
        }
    }

    /// One line per part, for `status` and `--follow`.
    pub fn lines(&self) -> Vec<String> {
        let l = |name: &str, i: &SplitItem| {
            format!("{name:<22} {:>12}  ${:.2}", format_secs(i.secs), i.usd)
        };
        let mut out = vec![
            l("boot and pull", &self.boot_and_pull),
            l("setup", &self.setup),
            l("training", &self.training),
            l("final sync", &self.final_sync),
        ];
        if let Some(i) = &self.idle_tail {
            out.push(l("  of it idle (wasted)", i));
        }
        if let Some(i) = &self.after_last_checkpoint {
            out.push(l("  since last checkpoint", i));
        }
        out
    }

    /// The same split on one line, for a plot's caption.
    pub fn one_line(&self) -> String {
        let l =
            |name: &str, i: &SplitItem| format!("{name} ${:.2} ({})", i.usd, format_secs(i.secs));
        let mut parts = vec![
            l("boot and pull", &self.boot_and_pull),
            l("setup", &self.setup),
            l("training", &self.training),
            l("final sync", &self.final_sync),
        ];
        if let Some(i) = &self.idle_tail {
            parts.push(l("of it idle (wasted)", i));
        }
        if let Some(i) = &self.after_last_checkpoint {
            parts.push(l("since last checkpoint", i));
        }
        parts.join(" · ")
    }
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
            split: None,
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

    fn t(s: &str) -> DateTime<Utc> {
        format!("2026-11-26T07:{s}Z").parse().unwrap()
    }

    #[test]
    fn the_split_adds_up_to_the_billed_time_and_names_the_waste() {
        let m = Marks {
            started_at: t("00:00"),
            pulled_at: Some(t("00:40")),
            job_started_at: Some(t("01:10")),
            job_ended_at: Some(t("21:10")),
            ended_at: t("21:40"),
            last_verified_outputs_at: Some(t("18:10")),
            idle_window_secs: None,
            lost_work: true,
        };
        let r = Receipt::new(m.started_at, m.ended_at, 3.6, 70, 1230);
        let s = Split::compute(&m, r.billed_secs, 3.6);
        assert_eq!(
            (
                s.boot_and_pull.secs,
                s.setup.secs,
                s.training.secs,
                s.final_sync.secs
            ),
            (40, 30, 1200, 30)
        );
        assert_eq!(
            s.boot_and_pull.secs + s.setup.secs + s.training.secs + s.final_sync.secs,
            r.billed_secs
        );
        assert!((s.training.usd - 1.2).abs() < 1e-12);
        // Preempted 3 minutes after the last verified checkpoint.
        assert_eq!(s.after_last_checkpoint.map(|i| i.secs), Some(180));
        assert_eq!(s.idle_tail, None);
        let idle = Split::compute(
            &Marks {
                idle_window_secs: Some(600),
                lost_work: false,
                ..m
            },
            r.billed_secs,
            3.6,
        );
        assert_eq!(idle.idle_tail.map(|i| i.secs), Some(600));
        assert_eq!(idle.after_last_checkpoint, None);
        assert!(idle.lines().iter().any(|l| l.contains("idle (wasted)")));
        // A 20-second run that never started its job: the minimum is boot.
        let short = Marks {
            ended_at: t("00:20"),
            pulled_at: None,
            job_started_at: None,
            job_ended_at: None,
            ..m
        };
        let s = Split::compute(&short, 60, 3.6);
        assert_eq!(
            (s.boot_and_pull.secs, s.training.secs, s.final_sync.secs),
            (40, 0, 20)
        );
        assert_eq!(s.after_last_checkpoint, None);
    }
}
