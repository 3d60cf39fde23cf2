//! The stop policies, as pure logic over timestamps: GPU idle, stall, budget and max
//! time. The supervisor feeds observations in (GPU samples, output activity, the job's
//! start) and asks [`Policies::check`] with the injected clock's "now"; the engine never
//! reads a clock itself, so every policy is tested with hand-moved time.
//!
//! Preemption, a stop request and the job's own exit are events, not policies over time;
//! the supervisor handles them directly. Nothing here signals a process or writes a file.

use chrono::{DateTime, Utc};
use cloudrun::billing::{billed_secs, cost_usd};
use cloudrun::spec::{IdlePolicy, RunSpec, BUDGET_WARN_FRACTION};
use cloudrun::status::{EndReason, GpuSample};

use crate::clock::secs_between;
use crate::gpu::GpuState;

/// A decision to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct StopDecision {
    pub reason: EndReason,
    /// One line for people, e.g. "every GPU at or under 5 % for 10m 00s".
    pub message: String,
}

/// Something worth telling people that does not stop the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The budget's warning fraction was crossed (once per run).
    BudgetWarning { cost_usd: f64, budget_usd: f64 },
}

/// The state of every time-based policy for one run.
#[derive(Debug, Clone)]
pub struct Policies {
    idle: IdlePolicy,
    stall_window_secs: Option<u64>,
    budget_usd: Option<f64>,
    usd_per_hour: f64,
    max_run_secs: u64,
    /// When billing started (the agent's first start on this VM).
    billing_start: DateTime<Utc>,
    /// Set when the job phase starts; idle and stall count only from here.
    job_start: Option<DateTime<Utc>>,
    /// First and latest sample of the current all-idle streak.
    idle_streak: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// `Some(true)` once a sample showed GPUs, `Some(false)` while probes say there are
    /// none; `None` before the first conclusive probe.
    gpus_present: Option<bool>,
    no_gpu_reason: Option<String>,
    last_activity: Option<DateTime<Utc>>,
    budget_warned: bool,
}

impl Policies {
    /// The policies of `spec`, billing from `billing_start`.
    pub fn new(spec: &RunSpec, billing_start: DateTime<Utc>) -> Self {
        let p = &spec.policies;
        Policies {
            idle: p.gpu_idle.clone(),
            stall_window_secs: p.stall_window_secs,
            budget_usd: p.budget_usd,
            usd_per_hour: spec.price.usd_per_hour,
            max_run_secs: p.max_run_secs,
            billing_start,
            job_start: None,
            idle_streak: None,
            gpus_present: None,
            no_gpu_reason: None,
            last_activity: None,
            budget_warned: false,
        }
    }

    /// The job phase began at `at`: idle and stall windows count from here.
    pub fn job_started(&mut self, at: DateTime<Utc>) {
        self.job_start = Some(at);
        self.last_activity = Some(at);
        self.idle_streak = None;
    }

    /// Remember that the budget warning was already given (after an agent restart).
    pub fn set_budget_warned(&mut self) {
        self.budget_warned = true;
    }

    /// A new line of output or a changed output file at `at`.
    pub fn observe_activity(&mut self, at: DateTime<Utc>) {
        if self.job_start.is_some() && self.last_activity.is_none_or(|t| at > t) {
            self.last_activity = Some(at);
        }
    }

    /// A GPU sample. Only a sample in which there is at least one GPU and **every** GPU
    /// reports a known utilisation at or under the threshold extends the idle streak;
    /// anything else (a busy GPU, an unknown field, a failed probe) ends it.
    pub fn observe_gpu(&mut self, state: &GpuState, sample: &GpuSample) {
        let at = sample.at;
        match state {
            GpuState::NoGpu(why) => {
                if self.gpus_present != Some(true) {
                    self.gpus_present = Some(false);
                    self.no_gpu_reason = Some(why.clone());
                }
                self.idle_streak = None;
                return;
            }
            GpuState::Readings(gpus) if !gpus.is_empty() => {
                self.gpus_present = Some(true);
                self.no_gpu_reason = None;
            }
            _ => {}
        }
        let all_idle = match state {
            GpuState::Readings(gpus) if !gpus.is_empty() => gpus
                .iter()
                .all(|g| g.util_gpu_pct.is_some_and(|u| u <= self.idle.threshold_pct)),
            _ => false,
        };
        if !all_idle || self.job_start.is_none_or(|s| at < s) {
            self.idle_streak = None;
            return;
        }
        self.idle_streak = Some(match self.idle_streak {
            Some((first, _)) => (first, at),
            None => (at, at),
        });
    }

    /// Why the idle policy is not watching, for the status (`None` while it is on).
    pub fn gpu_note(&self) -> Option<String> {
        if !self.idle.enabled {
            return Some("GPU idle policy turned off in the spec".into());
        }
        match (self.gpus_present, &self.no_gpu_reason) {
            (Some(false), Some(why)) => Some(format!("{why}: GPU idle policy off")),
            _ => None,
        }
    }

    /// Billed seconds and dollars at `now`.
    pub fn cost_at(&self, now: DateTime<Utc>) -> (u64, f64) {
        let billed = billed_secs(secs_between(self.billing_start, now));
        (billed, cost_usd(billed, self.usd_per_hour))
    }

    /// Whether a policy says stop at `now`, and any notices to give. Checked in the order
    /// budget, max time, stall, idle: the money-related reasons win when several fire.
    pub fn check(&mut self, now: DateTime<Utc>) -> (Option<StopDecision>, Vec<Notice>) {
        let mut notices = Vec::new();
        let (_, cost) = self.cost_at(now);
        if let Some(budget) = self.budget_usd {
            if !self.budget_warned
                && cost >= budget * BUDGET_WARN_FRACTION
                && self.usd_per_hour > 0.0
            {
                self.budget_warned = true;
                notices.push(Notice::BudgetWarning {
                    cost_usd: cost,
                    budget_usd: budget,
                });
            }
            if cost >= budget && self.usd_per_hour > 0.0 {
                return (
                    Some(StopDecision {
                        reason: EndReason::Budget,
                        message: format!("cost ${cost:.2} reached the budget of ${budget:.2}"),
                    }),
                    notices,
                );
            }
        }
        let up = secs_between(self.billing_start, now);
        if up >= self.max_run_secs as f64 {
            return (
                Some(StopDecision {
                    reason: EndReason::MaxTime,
                    message: format!(
                        "up for {}, the limit is {}",
                        cloudrun::billing::format_secs(up.max(0.0) as u64),
                        cloudrun::billing::format_secs(self.max_run_secs)
                    ),
                }),
                notices,
            );
        }
        if let (Some(window), Some(last)) = (self.stall_window_secs, self.last_activity) {
            if secs_between(last, now) >= window as f64 {
                return (
                    Some(StopDecision {
                        reason: EndReason::Stalled,
                        message: format!(
                            "no new output line and no changed output file for {}",
                            cloudrun::billing::format_secs(window)
                        ),
                    }),
                    notices,
                );
            }
        }
        if self.idle.enabled {
            if let Some((first, last)) = self.idle_streak {
                if secs_between(first, last) >= self.idle.window_secs as f64 {
                    return (
                        Some(StopDecision {
                            reason: EndReason::GpuIdle,
                            message: format!(
                                "every GPU at or under {}% for {}",
                                self.idle.threshold_pct,
                                cloudrun::billing::format_secs(self.idle.window_secs)
                            ),
                        }),
                        notices,
                    );
                }
            }
        }
        (None, notices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};
    use cloudrun::status::GpuReading;

    pub(crate) fn spec() -> RunSpec {
        RunSpec::from_json(
            r#"{"schema":1,"run_id":"20261126-071500-ab12","created_at":"2026-11-26T07:15:00Z",
            "store":"file:///tmp/x","job":{"command":["python3","main.py"]},"price":{"usd_per_hour":3.6}}"#,
        )
        .unwrap()
    }

    fn gpus(utils: &[Option<f64>]) -> GpuState {
        GpuState::Readings(
            utils
                .iter()
                .enumerate()
                .map(|(i, u)| GpuReading {
                    index: i as u32,
                    util_gpu_pct: *u,
                    ..GpuReading::default()
                })
                .collect(),
        )
    }

    struct Rig {
        clock: FakeClock,
        p: Policies,
    }

    impl Rig {
        fn new(mutate: impl FnOnce(&mut RunSpec)) -> Rig {
            let mut s = spec();
            mutate(&mut s);
            let clock = FakeClock::new("2026-11-26T08:00:00Z".parse().unwrap());
            let p = Policies::new(&s, clock.now());
            Rig { clock, p }
        }
        fn sample(&mut self, state: GpuState) {
            let sample = state.to_sample(self.clock.now());
            self.p.observe_gpu(&state, &sample);
        }
        fn tick(&mut self, secs: f64) {
            self.clock.advance_secs(secs);
        }
        fn verdict(&mut self) -> Option<EndReason> {
            self.p.check(self.clock.now()).0.map(|d| d.reason)
        }
        /// Sample every 5 s for `secs`, returning the first verdict.
        fn run_samples(&mut self, secs: u64, state: &GpuState) -> Option<(u64, EndReason)> {
            for t in (0..=secs).step_by(5) {
                self.sample(state.clone());
                if let Some(r) = self.verdict() {
                    return Some((t, r));
                }
                self.tick(5.0);
            }
            None
        }
    }

    #[test]
    fn idle_gpus_for_the_window_stop_the_job() {
        let mut r = Rig::new(|_| {});
        r.p.job_started(r.clock.now());
        let idle = gpus(&[Some(0.0), Some(3.0), Some(5.0)]);
        let (t, reason) = r.run_samples(700, &idle).unwrap();
        assert_eq!(reason, EndReason::GpuIdle);
        assert_eq!(t, 600, "stops exactly when the 10-minute window is full");
    }

    #[test]
    fn one_busy_gpu_or_one_unknown_reading_resets_the_idle_window() {
        let mut r = Rig::new(|s| s.policies.gpu_idle.window_secs = 60);
        r.p.job_started(r.clock.now());
        let idle = gpus(&[Some(0.0), Some(0.0)]);
        assert_eq!(r.run_samples(50, &idle), None);
        r.sample(gpus(&[Some(0.0), Some(40.0)]));
        assert_eq!(
            r.run_samples(50, &idle),
            None,
            "busy GPU restarted the window"
        );
        r.sample(gpus(&[Some(0.0), None]));
        assert_eq!(r.run_samples(50, &idle), None, "[N/A] restarted the window");
        r.sample(GpuState::Unknown("nvidia-smi failed".into()));
        assert_eq!(
            r.run_samples(50, &idle),
            None,
            "a failed probe restarted it"
        );
        assert!(r.run_samples(70, &idle).is_some());
    }

    #[test]
    fn unknown_samples_never_count_as_idle() {
        let mut r = Rig::new(|s| s.policies.gpu_idle.window_secs = 60);
        r.p.job_started(r.clock.now());
        for state in [
            GpuState::Unknown("NVIDIA-SMI has failed".into()),
            gpus(&[None, None]),
            GpuState::Readings(vec![]),
        ] {
            assert_eq!(r.run_samples(600, &state), None, "{state:?}");
        }
    }

    #[test]
    fn idle_is_not_counted_before_the_job_phase() {
        let mut r = Rig::new(|s| s.policies.gpu_idle.window_secs = 60);
        let idle = gpus(&[Some(0.0)]);
        assert_eq!(r.run_samples(300, &idle), None, "setup phase");
        r.p.job_started(r.clock.now());
        let (t, reason) = r.run_samples(300, &idle).unwrap();
        assert_eq!((t, reason), (60, EndReason::GpuIdle));
    }

    #[test]
    fn no_gpu_turns_the_idle_policy_off_and_says_so() {
        let mut r = Rig::new(|s| s.policies.gpu_idle.window_secs = 60);
        r.p.job_started(r.clock.now());
        let none = GpuState::NoGpu("nvidia-smi not found".into());
        assert_eq!(r.run_samples(600, &none), None);
        let note = r.p.gpu_note().unwrap();
        assert!(
            note.contains("nvidia-smi not found") && note.contains("off"),
            "{note}"
        );
        // A GPU showing up later (driver installed late) turns it back on.
        r.sample(gpus(&[Some(90.0)]));
        assert_eq!(r.p.gpu_note(), None);
    }

    #[test]
    fn idle_policy_can_be_turned_off() {
        let mut r = Rig::new(|s| s.policies.gpu_idle.enabled = false);
        r.p.job_started(r.clock.now());
        assert_eq!(r.run_samples(3600, &gpus(&[Some(0.0)])), None);
        assert!(r.p.gpu_note().unwrap().contains("turned off"));
    }

    #[test]
    fn stall_without_output_or_checkpoint_stops_even_at_full_utilisation() {
        let mut r = Rig::new(|s| s.policies.stall_window_secs = Some(300));
        r.p.job_started(r.clock.now());
        let busy = gpus(&[Some(100.0); 8]);
        r.tick(200.0);
        r.p.observe_activity(r.clock.now()); // a log line
        r.sample(busy.clone());
        r.tick(299.0);
        assert_eq!(r.verdict(), None);
        r.tick(1.0);
        assert_eq!(r.verdict(), Some(EndReason::Stalled));
    }

    #[test]
    fn stall_is_off_by_default() {
        let mut r = Rig::new(|_| {});
        r.p.job_started(r.clock.now());
        r.tick(20_000.0);
        assert_eq!(r.verdict(), None);
    }

    #[test]
    fn budget_warns_at_80_percent_and_stops_at_100() {
        // $3.60/h = $0.001/s; budget $0.10 → warn from $0.08 (80 s), stop from 100 s.
        let mut r = Rig::new(|s| s.policies.budget_usd = Some(0.10));
        r.tick(79.0);
        let (d, n) = r.p.check(r.clock.now());
        assert!(d.is_none() && n.is_empty());
        r.tick(2.0);
        let (d, n) = r.p.check(r.clock.now());
        assert!(d.is_none());
        assert!(matches!(n.as_slice(), [Notice::BudgetWarning { .. }]));
        r.tick(1.0);
        assert!(r.p.check(r.clock.now()).1.is_empty(), "warned once");
        r.tick(17.0);
        assert_eq!(r.verdict(), None);
        r.tick(2.0);
        assert_eq!(r.verdict(), Some(EndReason::Budget));
    }

    #[test]
    fn budget_counts_the_one_minute_minimum() {
        // $0.05 is less than one billed minute at $3.60/h: stop at once.
        let mut r = Rig::new(|s| s.policies.budget_usd = Some(0.05));
        assert_eq!(r.verdict(), Some(EndReason::Budget));
    }

    #[test]
    fn max_time_stops_the_run() {
        let mut r = Rig::new(|s| s.policies.max_run_secs = 3600);
        r.tick(3599.0);
        assert_eq!(r.verdict(), None);
        r.tick(1.0);
        assert_eq!(r.verdict(), Some(EndReason::MaxTime));
    }

    #[test]
    fn budget_wins_over_max_time_when_both_fire() {
        let mut r = Rig::new(|s| {
            s.policies.max_run_secs = 60;
            s.policies.budget_usd = Some(0.055);
        });
        r.tick(60.0);
        assert_eq!(r.verdict(), Some(EndReason::Budget));
    }
}
