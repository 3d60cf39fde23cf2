//! The GPU monitor: runs `nvidia-smi --query-gpu=… --format=csv,noheader,nounits` (path
//! overridable with `CLOUDRUN_NVIDIA_SMI`) under a timeout and parses its reply into
//! [`GpuReading`]s.
//!
//! The rule this module exists to keep: anything that is not a number is **unknown**,
//! never 0 %. `[N/A]`, `[Not Supported]`, a failed or hung `nvidia-smi`, an empty reply or
//! a line of garbage make the reading (or the whole sample) unknown, and unknown never
//! counts as idle. It decides nothing about stopping; [`crate::policy`] does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cloudrun::status::{GpuReading, GpuSample};

/// The fields asked of `nvidia-smi`, in the order the parser reads them.
pub const NVIDIA_SMI_QUERY: &str = "index,uuid,name,utilization.gpu,utilization.memory,memory.used,memory.total,power.draw,temperature.gpu";
/// Number of fields in [`NVIDIA_SMI_QUERY`].
const QUERY_FIELDS: usize = 9;
/// The program run when `CLOUDRUN_NVIDIA_SMI` is not set (found on `PATH`).
pub const DEFAULT_NVIDIA_SMI: &str = "nvidia-smi";
/// Longest one `nvidia-smi` call may take: it can hang for many seconds on a wedged GPU,
/// and a sample that late is worth less than an "unknown" on time.
pub const NVIDIA_SMI_TIMEOUT_SECS: u64 = 10;
/// How much of a failing `nvidia-smi`'s output is kept in the sample's error text.
const ERROR_TEXT_MAX_CHARS: usize = 200;

/// What one probe found.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuState {
    /// One reading per GPU (individual fields may still be unknown).
    Readings(Vec<GpuReading>),
    /// There is no GPU to watch: no `nvidia-smi`, or it reports no devices.
    NoGpu(String),
    /// The GPUs' state is unknown this time: `nvidia-smi` failed, hung or printed garbage.
    Unknown(String),
}

impl GpuState {
    /// The sample as stored in the status and `metrics/`.
    pub fn to_sample(&self, at: DateTime<Utc>) -> GpuSample {
        match self {
            GpuState::Readings(gpus) => GpuSample {
                at,
                gpus: gpus.clone(),
                error: None,
            },
            GpuState::NoGpu(why) => GpuSample {
                at,
                gpus: Vec::new(),
                error: Some(format!("no GPU: {why}")),
            },
            GpuState::Unknown(why) => GpuSample {
                at,
                gpus: Vec::new(),
                error: Some(why.clone()),
            },
        }
    }
}

/// Something that can look at the GPUs.
#[async_trait]
pub trait GpuProbe: Send + Sync + std::fmt::Debug {
    async fn probe(&self) -> GpuState;
}

/// The real probe: runs `nvidia-smi`.
#[derive(Debug, Clone)]
pub struct NvidiaSmi {
    program: PathBuf,
    timeout: Duration,
}

impl NvidiaSmi {
    /// A probe running `program` with the default timeout.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        NvidiaSmi {
            program: program.into(),
            timeout: Duration::from_secs(NVIDIA_SMI_TIMEOUT_SECS),
        }
    }

    /// The probe named by `CLOUDRUN_NVIDIA_SMI`, else `nvidia-smi` on `PATH`.
    pub fn from_env() -> Self {
        let program = std::env::var_os(cloudrun::contract::ENV_NVIDIA_SMI)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NVIDIA_SMI));
        NvidiaSmi::new(program)
    }

    /// The same probe with another timeout (tests).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The program this probe runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Run `nvidia-smi` once; the raw stdout, stderr and whether it exited 0.
    pub async fn run_raw(&self) -> Result<(String, String, bool), GpuState> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.arg(format!("--query-gpu={NVIDIA_SMI_QUERY}"))
            .arg("--format=csv,noheader,nounits")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(self.timeout, cmd.output()).await {
            Err(_) => {
                return Err(GpuState::Unknown(format!(
                    "{} did not answer within {:?}",
                    self.program.display(),
                    self.timeout
                )))
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(GpuState::NoGpu(format!(
                    "{} not found",
                    self.program.display()
                )))
            }
            Ok(Err(e)) => {
                return Err(GpuState::Unknown(format!(
                    "could not run {}: {e}",
                    self.program.display()
                )))
            }
            Ok(Ok(out)) => out,
        };
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.success(),
        ))
    }
}

#[async_trait]
impl GpuProbe for NvidiaSmi {
    async fn probe(&self) -> GpuState {
        match self.run_raw().await {
            Ok((stdout, stderr, ok)) => classify(ok, &stdout, &stderr),
            Err(state) => state,
        }
    }
}

/// Turn one `nvidia-smi` run into a state.
pub fn classify(exit_ok: bool, stdout: &str, stderr: &str) -> GpuState {
    let all = format!("{stdout}\n{stderr}");
    if all.contains("No devices were found") {
        return GpuState::NoGpu("nvidia-smi found no devices".into());
    }
    if !exit_ok {
        return GpuState::Unknown(format!("nvidia-smi failed: {}", first_text(&all)));
    }
    match parse_query_output(stdout) {
        Ok(gpus) if gpus.is_empty() => GpuState::Unknown("nvidia-smi printed nothing".into()),
        Ok(gpus) => GpuState::Readings(gpus),
        Err(e) => GpuState::Unknown(e),
    }
}

fn first_text(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = line.chars().take(ERROR_TEXT_MAX_CHARS).collect();
    if line.chars().count() > ERROR_TEXT_MAX_CHARS {
        out.push('…');
    }
    if out.is_empty() {
        out = "(no output)".into();
    }
    out
}

/// Parse the CSV reply, one line per GPU. Blank lines are skipped; a line without the
/// expected fields or with a non-numeric index makes the whole reply garbage (`Err`),
/// because a reply we only half understand cannot be trusted to say "idle".
pub fn parse_query_output(stdout: &str) -> Result<Vec<GpuReading>, String> {
    let mut gpus = Vec::new();
    for line in stdout.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != QUERY_FIELDS {
            return Err(format!(
                "nvidia-smi printed an unexpected line ({} fields, expected {QUERY_FIELDS}): {}",
                fields.len(),
                first_text(line)
            ));
        }
        let index = fields[0].parse::<u32>().map_err(|_| {
            format!(
                "nvidia-smi printed an unexpected line (index {:?}): {}",
                fields[0],
                first_text(line)
            )
        })?;
        gpus.push(GpuReading {
            index,
            uuid: fields[1].to_string(),
            name: fields[2].to_string(),
            util_gpu_pct: percent(fields[3]),
            util_mem_pct: percent(fields[4]),
            mem_used_mib: number(fields[5]),
            mem_total_mib: number(fields[6]),
            power_w: number(fields[7]),
            temp_c: number(fields[8]),
        });
    }
    Ok(gpus)
}

/// A non-negative finite number, tolerating a trailing unit (`71 %`, `72.35 W`,
/// `2048 MiB`, `63 C`); placeholders such as `[N/A]` and anything else are `None`.
fn number(field: &str) -> Option<f64> {
    let is_unit = |u: &str| matches!(u, "" | "%" | "W" | "MiB" | "C");
    let tokens: Vec<&str> = field.split_whitespace().collect();
    let (first, separate_unit) = match tokens.as_slice() {
        [first] => (*first, ""),
        [first, unit] => (*first, *unit),
        _ => return None,
    };
    let split = first
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(first.len());
    let (num, attached_unit) = first.split_at(split);
    let unit_ok = match (attached_unit, separate_unit) {
        (a, "") => is_unit(a),
        ("", u) => is_unit(u),
        _ => false,
    };
    if num.is_empty() || !unit_ok {
        return None;
    }
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// A [`number`] that is also at most 100.
fn percent(field: &str) -> Option<f64> {
    number(field).filter(|v| *v <= 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/nvidia-smi")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn readings(state: GpuState) -> Vec<GpuReading> {
        match state {
            GpuState::Readings(r) => r,
            other => panic!("expected readings, got {other:?}"),
        }
    }

    #[test]
    fn one_t4_under_load() {
        let g = readings(classify(true, &fixture("t4-busy.txt"), ""));
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].name, "Tesla T4");
        assert_eq!(g[0].util_gpu_pct, Some(87.0));
        assert_eq!(g[0].mem_total_mib, Some(15360.0));
        assert_eq!(g[0].power_w, Some(68.42));
        assert_eq!(g[0].temp_c, Some(71.0));
    }

    #[test]
    fn eight_gpus_busy_and_idle() {
        for (file, name, busy) in [
            ("a100x8-busy.txt", "NVIDIA A100-SXM4-40GB", true),
            ("a100x8-idle.txt", "NVIDIA A100-SXM4-40GB", false),
            ("h100x8-busy.txt", "NVIDIA H100 80GB HBM3", true),
            ("h100x8-idle.txt", "NVIDIA H100 80GB HBM3", false),
        ] {
            let g = readings(classify(true, &fixture(file), ""));
            assert_eq!(g.len(), 8, "{file}");
            assert_eq!(
                g.iter().map(|r| r.index).collect::<Vec<_>>(),
                (0..8).collect::<Vec<_>>()
            );
            assert!(g.iter().all(|r| r.name == name), "{file}");
            let max = g
                .iter()
                .map(|r| r.util_gpu_pct.unwrap_or(f64::NAN))
                .fold(0.0, f64::max);
            if busy {
                assert!(max >= 90.0, "{file}: {max}");
            } else {
                assert!(max <= 5.0, "{file}: {max}");
            }
        }
    }

    #[test]
    fn placeholders_are_unknown_never_zero() {
        let g = readings(classify(true, &fixture("na-fields.txt"), ""));
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].util_gpu_pct, None);
        assert_eq!(g[0].power_w, None);
        assert_eq!(g[0].mem_used_mib, Some(4821.0));
        assert_eq!(g[1].util_gpu_pct, None, "[Not Supported]");
        assert_eq!(g[1].util_mem_pct, Some(12.0));
        assert_eq!(g[1].power_w, None, "[Unknown Error]");
        assert_eq!(g[1].temp_c, None);
    }

    #[test]
    fn driver_failure_empty_reply_and_garbage_are_unknown() {
        // The driver message comes with exit code 9 in practice; even with exit 0 it must
        // not parse as a reading.
        for ok in [false, true] {
            let s = classify(ok, &fixture("driver-failed.txt"), "");
            match s {
                GpuState::Unknown(why) => assert!(
                    why.contains("NVIDIA-SMI has failed") || why.contains("unexpected line"),
                    "{why}"
                ),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            matches!(classify(true, &fixture("empty.txt"), ""), GpuState::Unknown(w) if w.contains("nothing"))
        );
        assert!(matches!(
            classify(true, &fixture("garbage.txt"), ""),
            GpuState::Unknown(_)
        ));
        assert!(matches!(classify(false, "", ""), GpuState::Unknown(w) if w.contains("no output")));
    }

    #[test]
    fn real_h200_captures_parse() {
        let idle = readings(classify(true, &fixture("h200-idle-real.txt"), ""));
        assert_eq!(idle.len(), 1);
        assert_eq!(idle[0].name, "NVIDIA H200");
        assert_eq!(idle[0].util_gpu_pct, Some(0.0));
        assert_eq!(idle[0].mem_total_mib, Some(143771.0));
        let busy = readings(classify(true, &fixture("h200-busy-real.txt"), ""));
        assert_eq!(busy[0].util_gpu_pct, Some(100.0));
        assert_eq!(busy[0].power_w, Some(690.73));
        let after = readings(classify(true, &fixture("h200-after-load-real.txt"), ""));
        assert_eq!(after[0].util_gpu_pct, Some(0.0));
        // An invalid query field: exit code 2 and a message, never a reading.
        assert!(matches!(
            classify(false, &fixture("h200-bad-field-exit2-real.txt"), ""),
            GpuState::Unknown(w) if w.contains("not a valid field")
        ));
    }

    #[test]
    fn no_devices_means_no_gpu() {
        assert!(matches!(
            classify(false, &fixture("no-devices.txt"), ""),
            GpuState::NoGpu(_)
        ));
    }

    #[test]
    fn extra_spaces_units_and_crlf_are_tolerated() {
        let g = readings(classify(true, &fixture("extra-spaces-units.txt"), ""));
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].name, "NVIDIA L4");
        assert_eq!(g[0].util_gpu_pct, Some(71.0));
        assert_eq!(g[0].mem_used_mib, Some(2048.0));
        assert_eq!(g[0].power_w, Some(72.35));
        assert_eq!(g[0].temp_c, Some(63.0));
        assert_eq!(g[1].util_gpu_pct, Some(0.0), "a real 0 % stays 0 %");
        assert_eq!(g[1].power_w, Some(16.1));
    }

    #[test]
    fn odd_numbers_are_unknown() {
        for s in [
            "",
            "-3",
            "abc",
            "1e999",
            "12 parsecs",
            "[N/A]",
            "N/A",
            "7 % extra",
        ] {
            assert_eq!(number(s), None, "{s:?}");
        }
        assert_eq!(percent("101"), None);
        assert_eq!(number("0"), Some(0.0));
        assert_eq!(number("12.5W"), Some(12.5));
    }

    #[test]
    fn every_fixture_parses_without_inventing_zeros() {
        // Real captures added later land here too: a reading of 0 % must come from a "0"
        // in the file, never from a placeholder or a parse failure.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nvidia-smi");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().and_then(|x| x.to_str()) != Some("txt") {
                continue;
            }
            n += 1;
            let text = std::fs::read_to_string(&p).unwrap();
            if let GpuState::Readings(gs) = classify(true, &text, "") {
                for (g, line) in gs.iter().zip(text.lines().filter(|l| !l.trim().is_empty())) {
                    if g.util_gpu_pct == Some(0.0) {
                        let f = line.split(',').nth(3).unwrap().trim();
                        assert!(f.starts_with('0'), "{}: {line}", p.display());
                    }
                }
            }
        }
        assert!(n >= 10, "{n} fixtures");
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("fake-nvidia-smi");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn the_probe_runs_the_program_with_the_query() {
        let d = tempfile::tempdir().unwrap();
        let args = d.path().join("args");
        let p = script(
            d.path(),
            &format!(
                "echo \"$@\" > {}\ncat {}",
                args.display(),
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/nvidia-smi/h100x8-busy.txt")
                    .display()
            ),
        );
        let s = NvidiaSmi::new(&p).probe().await;
        assert_eq!(readings(s).len(), 8);
        let a = std::fs::read_to_string(args).unwrap();
        assert!(
            a.contains(&format!("--query-gpu={NVIDIA_SMI_QUERY}")),
            "{a}"
        );
        assert!(a.contains("--format=csv,noheader,nounits"), "{a}");
    }

    #[tokio::test]
    async fn a_hung_or_failing_or_missing_nvidia_smi_is_unknown_or_absent() {
        let d = tempfile::tempdir().unwrap();
        let hung = script(d.path(), "sleep 30");
        let s = NvidiaSmi::new(&hung)
            .with_timeout(Duration::from_millis(300))
            .probe()
            .await;
        assert!(matches!(s, GpuState::Unknown(w) if w.contains("did not answer")));
        let failing = script(
            d.path(),
            "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"; exit 9",
        );
        let s = NvidiaSmi::new(&failing).probe().await;
        assert!(matches!(s, GpuState::Unknown(w) if w.contains("NVIDIA-SMI has failed")));
        let s = NvidiaSmi::new(d.path().join("does-not-exist"))
            .probe()
            .await;
        assert!(matches!(s, GpuState::NoGpu(_)));
    }
}
