//! The GPU wait, as pure logic over probe results and timestamps: before setup and job,
//! the agent waits until `nvidia-smi` answers with the GPUs the plan paid for
//! (`placement.gpu_count` of kind `placement.gpu`), for at most `policies.gpu_ready_secs`
//! counted from the wait's first start (kept across agent restarts in the restart state,
//! so a driver install that reboots the VM does not restart the window).
//!
//! A GPU VM whose driver never loads, or that shows fewer GPUs than it bills for, would
//! otherwise run the job on the CPU (or crash it) at GPU prices, with the idle policy
//! blind because every failed sample is "unknown". After the wait, the same judgement
//! turns GPUs that disappear mid-run into a warning, never an end: a failing `nvidia-smi`
//! stays "unknown" there, as [`crate::policy`] has it.
//!
//! Nothing here probes, sleeps or reads a clock; the supervisor feeds the GPU watcher's
//! samples in and asks with its own "now".

use chrono::{DateTime, Utc};
use cloudrun::billing::format_secs;
use cloudrun::spec::RunSpec;

use crate::clock::secs_between;
use crate::gpu::GpuState;

/// The GPUs a run must see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub count: u32,
    /// The accelerator type (`nvidia-l4`); `None` checks the count only.
    pub accelerator: Option<String>,
}

/// One probe judged against the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The GPUs are there: one line for people, e.g. `2 × NVIDIA L4`.
    Ready(String),
    /// Not (yet): what `nvidia-smi` answered, e.g. `1 of 2 GPUs (NVIDIA L4)` or the
    /// driver's message.
    Missing(String),
}

/// A `--expect` value that is not `ACCELERATOR:COUNT`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not ACCELERATOR:COUNT: write e.g. nvidia-l4:2 (the accelerator type as the run spec's placement.gpu names it, and how many)")]
pub struct BadExpectation(pub String);

impl Expected {
    /// `nvidia-l4:2` (or `nvidia-l4`, one GPU), as `cloudrun-agent gpu-probe --expect`
    /// takes it.
    pub fn parse(text: &str) -> Result<Expected, BadExpectation> {
        let bad = || BadExpectation(text.to_string());
        let (acc, count) = match text.rsplit_once(':') {
            Some((a, c)) => (a, c.parse::<u32>().map_err(|_| bad())?),
            None => (text, 1),
        };
        if acc.is_empty() || count == 0 {
            return Err(bad());
        }
        Ok(Expected {
            count,
            accelerator: Some(acc.to_string()),
        })
    }

    /// What `spec` waits for, and the window in seconds; `None` when it does not wait
    /// (local runs, no GPUs, `policies.gpu_ready_secs = 0`).
    pub fn from_spec(spec: &RunSpec) -> Option<(Expected, u64)> {
        let w = spec.gpu_wait()?;
        Some((
            Expected {
                count: w.count,
                accelerator: w.accelerator.map(str::to_string),
            },
            w.window_secs,
        ))
    }

    /// `2 × nvidia-l4`, or `2 GPUs` without a kind.
    pub fn describe(&self) -> String {
        match &self.accelerator {
            Some(a) => format!("{} × {a}", self.count),
            None => format!("{} GPU(s)", self.count),
        }
    }

    /// Whether a GPU named `name` (as `nvidia-smi` prints it) is of the expected kind. A
    /// kind without a row in [`cloudrun::gpu_names`] is not checked.
    fn kind_ok(&self, name: &str) -> bool {
        match &self.accelerator {
            Some(a) => cloudrun::gpu_names::matches(a, name).unwrap_or(true),
            None => true,
        }
    }

    /// Judge one probe.
    pub fn judge(&self, state: &GpuState) -> Verdict {
        let gpus = match state {
            GpuState::Readings(gpus) => gpus,
            GpuState::NoGpu(why) | GpuState::Unknown(why) => return Verdict::Missing(why.clone()),
        };
        let names = names_of(gpus.iter().map(|g| g.name.as_str()));
        let right = gpus.iter().filter(|g| self.kind_ok(&g.name)).count();
        if right >= self.count as usize && right > 0 {
            return Verdict::Ready(format!("{right} × {names}"));
        }
        let wrong = gpus.len() - right;
        let kind = self.accelerator.as_deref().unwrap_or("GPU");
        Verdict::Missing(if wrong > 0 {
            format!(
                "nvidia-smi shows {} GPU(s) ({names}), {right} of {} {kind}",
                gpus.len(),
                self.count
            )
        } else {
            format!(
                "nvidia-smi shows {right} of {} GPUs ({})",
                self.count,
                if names.is_empty() { kind } else { &names }
            )
        })
    }
}

/// Distinct names in order, `, `-joined.
fn names_of<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for n in names {
        let n = if n.is_empty() { "unnamed" } else { n };
        if !seen.contains(&n) {
            seen.push(n);
        }
    }
    seen.join(", ")
}

/// One wait for the GPUs.
#[derive(Debug, Clone)]
pub struct Wait {
    expected: Expected,
    started_at: DateTime<Utc>,
    window_secs: u64,
    /// What `nvidia-smi` answered last; `None` before this process saw a probe.
    last: Option<String>,
}

impl Wait {
    /// A wait for `expected` whose window of `window_secs` began at `started_at` (possibly
    /// in an earlier agent process).
    pub fn new(expected: Expected, started_at: DateTime<Utc>, window_secs: u64) -> Self {
        Wait {
            expected,
            started_at,
            window_secs,
            last: None,
        }
    }

    pub fn expected(&self) -> &Expected {
        &self.expected
    }

    /// A probe's result; `Some(summary)` once the GPUs are there.
    pub fn observe(&mut self, state: &GpuState) -> Option<String> {
        match self.expected.judge(state) {
            Verdict::Ready(s) => Some(s),
            Verdict::Missing(why) => {
                self.last = Some(why);
                None
            }
        }
    }

    /// Whether a probe of this wait found the GPUs missing.
    pub fn missed(&self) -> bool {
        self.last.is_some()
    }

    /// The end message when the window is over at `now`. Never before this process saw
    /// one probe: an agent restarted by a driver install's reboot, past the window, gets
    /// to look at the GPUs the reboot brought before it gives up.
    pub fn timed_out(&self, now: DateTime<Utc>) -> Option<String> {
        let last = self.last.as_ref()?;
        (secs_between(self.started_at, now) >= self.window_secs as f64).then(|| {
            format!(
                "{} did not answer nvidia-smi within {} (policies.gpu_ready_secs); its last answer: {last}",
                self.expected.describe(),
                format_secs(self.window_secs)
            )
        })
    }
}

/// Warns, a bounded number of times, when GPUs that had answered are missing later.
#[derive(Debug, Clone)]
pub struct LossWatch {
    expected: Expected,
    short: bool,
    warned: u32,
}

/// Warnings about GPUs lost mid-run, per run (a flapping GPU must not fill the status).
pub const MAX_GPU_LOSS_WARNINGS: u32 = 3;

impl LossWatch {
    pub fn new(expected: Expected) -> Self {
        LossWatch {
            expected,
            short: false,
            warned: 0,
        }
    }

    /// A probe during the job; `Some(warning)` when it shows fewer GPUs than before.
    /// An unknown probe (a failing `nvidia-smi`) says nothing about the GPUs.
    pub fn observe(&mut self, state: &GpuState) -> Option<String> {
        if matches!(state, GpuState::Unknown(_)) {
            return None;
        }
        match self.expected.judge(state) {
            Verdict::Ready(_) => {
                self.short = false;
                None
            }
            Verdict::Missing(why) => {
                if self.short || self.warned >= MAX_GPU_LOSS_WARNINGS {
                    return None;
                }
                self.short = true;
                self.warned += 1;
                Some(format!(
                    "GPUs went missing while the job runs: {why} (the plan has {}); the run goes on",
                    self.expected.describe()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudrun::status::GpuReading;
    use std::path::Path;

    fn fixture(name: &str) -> GpuState {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/nvidia-smi")
            .join(name);
        let text = std::fs::read_to_string(&p).unwrap();
        let ok = !name.contains("failed") && !name.contains("exit2");
        crate::gpu::classify(ok, &text, "")
    }

    fn expect(count: u32, acc: &str) -> Expected {
        Expected {
            count,
            accelerator: Some(acc.into()),
        }
    }

    fn l4s(n: u32) -> GpuState {
        GpuState::Readings(
            (0..n)
                .map(|i| GpuReading {
                    index: i,
                    name: "NVIDIA L4".into(),
                    util_gpu_pct: Some(0.0),
                    ..GpuReading::default()
                })
                .collect(),
        )
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn recorded_replies_are_ready_for_their_own_plan_only() {
        for (file, count, acc) in [
            ("h200-idle-real.txt", 1, "nvidia-h200-141gb"),
            ("h200-busy-real.txt", 1, "nvidia-h200-141gb"),
            ("t4-busy.txt", 1, "nvidia-tesla-t4"),
            ("a100x8-idle.txt", 8, "nvidia-tesla-a100"),
            ("h100x8-busy.txt", 8, "nvidia-h100-80gb"),
        ] {
            assert!(
                matches!(expect(count, acc).judge(&fixture(file)), Verdict::Ready(_)),
                "{file}"
            );
        }
        // The real H200 is not what an L4 plan paid for.
        match expect(1, "nvidia-l4").judge(&fixture("h200-idle-real.txt")) {
            Verdict::Missing(w) => assert!(
                w.contains("NVIDIA H200") && w.contains("0 of 1 nvidia-l4"),
                "{w}"
            ),
            v => panic!("{v:?}"),
        }
        // Eight A100s are not sixteen.
        match expect(16, "nvidia-tesla-a100").judge(&fixture("a100x8-busy.txt")) {
            Verdict::Missing(w) => assert!(w.contains("8 of 16"), "{w}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn driver_failures_and_no_devices_are_missing_with_the_drivers_words() {
        let e = expect(1, "nvidia-h200-141gb");
        for (file, words) in [
            (
                "driver-failed.txt",
                "couldn't communicate with the NVIDIA driver",
            ),
            ("no-devices.txt", "no devices"),
            ("h200-bad-field-exit2-real.txt", "not a valid field"),
            ("empty.txt", "nothing"),
            ("garbage.txt", "unexpected line"),
        ] {
            match e.judge(&fixture(file)) {
                Verdict::Missing(w) => assert!(w.contains(words), "{file}: {w}"),
                v => panic!("{file}: {v:?}"),
            }
        }
    }

    #[test]
    fn one_of_two_is_missing_and_says_so() {
        let e = expect(2, "nvidia-l4");
        assert_eq!(
            e.judge(&l4s(1)),
            Verdict::Missing("nvidia-smi shows 1 of 2 GPUs (NVIDIA L4)".into())
        );
        assert_eq!(e.judge(&l4s(2)), Verdict::Ready("2 × NVIDIA L4".into()));
        // No GPU listed at all is never "ready", even for a plan of zero.
        assert!(matches!(
            expect(0, "nvidia-l4").judge(&GpuState::Readings(vec![])),
            Verdict::Missing(_)
        ));
    }

    #[test]
    fn expectations_parse_from_accelerator_and_count() {
        assert_eq!(
            Expected::parse("nvidia-l4:2").unwrap(),
            expect(2, "nvidia-l4")
        );
        assert_eq!(
            Expected::parse("nvidia-h200-141gb").unwrap(),
            expect(1, "nvidia-h200-141gb")
        );
        for bad in ["", ":2", "nvidia-l4:0", "nvidia-l4:two"] {
            let e = Expected::parse(bad).unwrap_err().to_string();
            assert!(e.contains("nvidia-l4:2"), "{bad}: {e}");
        }
    }

    /// The device check: on a machine with GPUs, `CLOUDRUN_GPU_EXPECT=nvidia-h200-141gb:1
    /// cargo test -p cloudrun-agent --lib -- --ignored the_real_nvidia_smi` runs the wait's
    /// judgement against the real `nvidia-smi` (or `CLOUDRUN_NVIDIA_SMI`): it must be
    /// ready at the first probe, with that count and kind.
    #[tokio::test]
    #[ignore = "needs a GPU machine and CLOUDRUN_GPU_EXPECT"]
    async fn the_real_nvidia_smi_satisfies_the_wait_at_the_first_probe() {
        use crate::gpu::GpuProbe;
        let want = std::env::var("CLOUDRUN_GPU_EXPECT")
            .expect("set CLOUDRUN_GPU_EXPECT=ACCELERATOR:COUNT for this machine");
        let e = Expected::parse(&want).unwrap();
        let t0 = std::time::Instant::now();
        let state = crate::gpu::NvidiaSmi::from_env().probe().await;
        let mut w = Wait::new(e.clone(), Utc::now(), 600);
        let ready = w.observe(&state);
        println!("{want}: {ready:?} in {:?} ({state:?})", t0.elapsed());
        let ready = ready.unwrap_or_else(|| panic!("not ready: {:?}", w.last));
        assert!(ready.starts_with(&format!("{} × ", e.count)), "{ready}");
        // One more GPU than the machine has is not ready, and says how many there are.
        let more = Expected {
            count: e.count + 1,
            ..e
        };
        match more.judge(&state) {
            Verdict::Missing(m) => assert!(
                m.contains(&format!("{} of {}", more.count - 1, more.count)),
                "{m}"
            ),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn an_unknown_kind_is_checked_by_count_only() {
        let e = Expected {
            count: 2,
            accelerator: Some("nvidia-future-9000".into()),
        };
        assert!(matches!(e.judge(&l4s(2)), Verdict::Ready(_)));
        assert!(matches!(e.judge(&l4s(1)), Verdict::Missing(_)));
    }

    #[test]
    fn the_window_ends_with_the_last_answer_not_before_one_probe() {
        let start = t("2026-11-26T08:00:00Z");
        let mut w = Wait::new(expect(2, "nvidia-l4"), start, 30);
        assert_eq!(w.timed_out(t("2026-11-26T08:05:00Z")), None, "no probe yet");
        assert_eq!(w.observe(&fixture("driver-failed.txt")), None);
        assert_eq!(w.timed_out(t("2026-11-26T08:00:29Z")), None);
        assert_eq!(w.observe(&l4s(1)), None);
        let msg = w.timed_out(t("2026-11-26T08:00:30Z")).unwrap();
        assert!(
            msg.contains("2 × nvidia-l4") && msg.contains("30s"),
            "{msg}"
        );
        assert!(msg.contains("1 of 2 GPUs"), "the last answer: {msg}");
        assert_eq!(w.observe(&l4s(2)), Some("2 × NVIDIA L4".into()));
    }

    #[test]
    fn a_restarted_wait_keeps_its_first_start() {
        // The window began 25 s ago in an earlier agent process: 5 s are left.
        let start = t("2026-11-26T08:00:00Z");
        let mut w = Wait::new(expect(1, "nvidia-l4"), start, 30);
        w.observe(&GpuState::NoGpu("nvidia-smi not found".into()));
        assert_eq!(w.timed_out(t("2026-11-26T08:00:25Z")), None);
        assert!(w.timed_out(t("2026-11-26T08:00:30Z")).is_some());
    }

    #[test]
    fn lost_gpus_warn_once_per_loss_and_a_failing_probe_says_nothing() {
        let mut l = LossWatch::new(expect(2, "nvidia-l4"));
        assert_eq!(l.observe(&l4s(2)), None);
        assert_eq!(
            l.observe(&fixture("driver-failed.txt")),
            None,
            "unknown, not lost"
        );
        let w = l.observe(&l4s(1)).unwrap();
        assert!(w.contains("1 of 2") && w.contains("goes on"), "{w}");
        assert_eq!(l.observe(&l4s(1)), None, "once per loss");
        assert_eq!(l.observe(&l4s(2)), None);
        for _ in 0..10 {
            l.observe(&l4s(1));
            l.observe(&l4s(2));
        }
        assert!(l.warned <= MAX_GPU_LOSS_WARNINGS);
    }
}
