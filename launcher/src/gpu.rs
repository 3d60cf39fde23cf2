//! GPU choice: the `--gpu` shorthands (`t4`, `l4`, `a100:2`, `h100:8`, …), the machine
//! family each GPU needs (N1 plus `guestAccelerators`, or G2/A2/A3 with the GPUs built in),
//! `--machine-type` checked against the GPU, and the default zones to try per GPU.
//!
//! Pure data and parsing: no network. Machine-type shapes follow Google's GPU pages as
//! summarised in the shared gcp-api notes (§1.4).

use std::fmt;

/// A GPU model cloudrun knows how to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuKind {
    T4,
    V100,
    P100,
    L4,
    A100,
    A100_80,
    H100,
}

/// How a machine family gets its GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// N1: the GPUs are listed in `guestAccelerators`.
    GuestAccelerators,
    /// G2/A2/A3: implied by the machine type; sending `guestAccelerators` is an error.
    BuiltIn,
}

impl GpuKind {
    /// Every kind, for help texts and errors.
    pub const ALL: [GpuKind; 7] = [
        GpuKind::T4,
        GpuKind::V100,
        GpuKind::P100,
        GpuKind::L4,
        GpuKind::A100,
        GpuKind::A100_80,
        GpuKind::H100,
    ];

    /// The `--gpu` shorthand.
    pub fn short(self) -> &'static str {
        match self {
            GpuKind::T4 => "t4",
            GpuKind::V100 => "v100",
            GpuKind::P100 => "p100",
            GpuKind::L4 => "l4",
            GpuKind::A100 => "a100",
            GpuKind::A100_80 => "a100-80gb",
            GpuKind::H100 => "h100",
        }
    }

    /// Compute's accelerator type name.
    pub fn accelerator(self) -> &'static str {
        match self {
            GpuKind::T4 => "nvidia-tesla-t4",
            GpuKind::V100 => "nvidia-tesla-v100",
            GpuKind::P100 => "nvidia-tesla-p100",
            GpuKind::L4 => "nvidia-l4",
            GpuKind::A100 => "nvidia-tesla-a100",
            GpuKind::A100_80 => "nvidia-a100-80gb",
            GpuKind::H100 => "nvidia-h100-80gb",
        }
    }

    /// The regional quota metric for this GPU (`NVIDIA_L4_GPUS`); Spot VMs draw on the
    /// same name with `PREEMPTIBLE_` in front when the project has that quota.
    pub fn quota_metric(self) -> &'static str {
        match self {
            GpuKind::T4 => "NVIDIA_T4_GPUS",
            GpuKind::V100 => "NVIDIA_V100_GPUS",
            GpuKind::P100 => "NVIDIA_P100_GPUS",
            GpuKind::L4 => "NVIDIA_L4_GPUS",
            GpuKind::A100 => "NVIDIA_A100_GPUS",
            GpuKind::A100_80 => "NVIDIA_A100_80GB_GPUS",
            GpuKind::H100 => "NVIDIA_H100_GPUS",
        }
    }

    pub fn attach(self) -> Attach {
        match self {
            GpuKind::T4 | GpuKind::V100 | GpuKind::P100 => Attach::GuestAccelerators,
            _ => Attach::BuiltIn,
        }
    }

    /// GPU counts a VM may have, and the machine type the shorthand picks for each.
    fn shapes(self) -> &'static [(u32, &'static str)] {
        match self {
            // N1 vCPU limits per GPU count: T4 24/48/96, V100 12/24/48/96, P100 16/32/64.
            GpuKind::T4 => &[
                (1, "n1-standard-8"),
                (2, "n1-standard-16"),
                (4, "n1-standard-32"),
            ],
            GpuKind::V100 => &[
                (1, "n1-standard-8"),
                (2, "n1-standard-16"),
                (4, "n1-standard-32"),
                (8, "n1-standard-64"),
            ],
            GpuKind::P100 => &[
                (1, "n1-standard-8"),
                (2, "n1-standard-16"),
                (4, "n1-standard-32"),
            ],
            GpuKind::L4 => &[
                (1, "g2-standard-8"),
                (2, "g2-standard-24"),
                (4, "g2-standard-48"),
                (8, "g2-standard-96"),
            ],
            GpuKind::A100 => &[
                (1, "a2-highgpu-1g"),
                (2, "a2-highgpu-2g"),
                (4, "a2-highgpu-4g"),
                (8, "a2-highgpu-8g"),
                (16, "a2-megagpu-16g"),
            ],
            GpuKind::A100_80 => &[
                (1, "a2-ultragpu-1g"),
                (2, "a2-ultragpu-2g"),
                (4, "a2-ultragpu-4g"),
                (8, "a2-ultragpu-8g"),
            ],
            GpuKind::H100 => &[
                (1, "a3-highgpu-1g"),
                (2, "a3-highgpu-2g"),
                (4, "a3-highgpu-4g"),
                (8, "a3-highgpu-8g"),
            ],
        }
    }

    /// Zones tried in order when none are configured: zones that offered this GPU when
    /// the table was written (from Google's GPU regions page as remembered; a zone that
    /// lacks it answers with an error and the next is tried). Override with `--zone`.
    pub fn default_zones(self) -> &'static [&'static str] {
        match self {
            GpuKind::T4 => &[
                "us-central1-a",
                "us-central1-b",
                "us-central1-f",
                "us-east1-c",
                "us-east1-d",
                "us-west1-a",
                "us-west1-b",
                "europe-west4-a",
            ],
            GpuKind::V100 => &[
                "us-central1-a",
                "us-central1-b",
                "us-central1-c",
                "us-central1-f",
                "us-west1-a",
                "us-west1-b",
                "europe-west4-a",
            ],
            GpuKind::P100 => &[
                "us-central1-c",
                "us-central1-f",
                "us-east1-b",
                "us-west1-b",
                "europe-west4-a",
            ],
            GpuKind::L4 => &[
                "us-central1-a",
                "us-central1-b",
                "us-central1-c",
                "us-east1-b",
                "us-east1-c",
                "us-east4-a",
                "us-west1-a",
                "us-west1-b",
                "europe-west4-a",
            ],
            GpuKind::A100 => &[
                "us-central1-a",
                "us-central1-b",
                "us-central1-c",
                "us-central1-f",
                "us-east1-b",
                "us-west1-b",
                "europe-west4-a",
            ],
            GpuKind::A100_80 => &[
                "us-central1-a",
                "us-central1-c",
                "us-east4-c",
                "us-east5-b",
                "europe-west4-a",
            ],
            GpuKind::H100 => &[
                "us-central1-a",
                "us-central1-c",
                "us-east4-a",
                "us-east5-a",
                "us-west1-a",
                "europe-west4-b",
            ],
        }
    }

    fn from_short(s: &str) -> Option<GpuKind> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_prefix("nvidia-").unwrap_or(&s);
        let s = s.strip_prefix("tesla-").unwrap_or(s);
        Some(match s {
            "t4" => GpuKind::T4,
            "v100" => GpuKind::V100,
            "p100" => GpuKind::P100,
            "l4" => GpuKind::L4,
            "a100" | "a100-40gb" | "a100-40" => GpuKind::A100,
            "a100-80gb" | "a100-80" | "a100_80" => GpuKind::A100_80,
            "h100" | "h100-80gb" => GpuKind::H100,
            _ => return None,
        })
    }
}

impl fmt::Display for GpuKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// A validated GPU + machine-type choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardware {
    pub gpu: GpuKind,
    pub count: u32,
    pub machine_type: String,
}

impl Hardware {
    /// Whether `guestAccelerators` must be sent.
    pub fn needs_guest_accelerators(&self) -> bool {
        self.gpu.attach() == Attach::GuestAccelerators
    }
}

/// A `--gpu` or `--machine-type` that does not make a valid VM. The text says what would.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct HardwareError(pub String);

fn kinds_list() -> String {
    GpuKind::ALL
        .iter()
        .map(|k| k.short())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parse `KIND[:COUNT]`.
pub fn parse_gpu(spec: &str) -> Result<(GpuKind, u32), HardwareError> {
    let (kind, count) = match spec.split_once(':') {
        Some((k, c)) => (k, Some(c)),
        None => (spec, None),
    };
    let kind = GpuKind::from_short(kind).ok_or_else(|| {
        HardwareError(format!(
            "--gpu {spec:?}: unknown GPU {kind:?}; use one of {} (optionally :COUNT, e.g. a100:2)",
            kinds_list()
        ))
    })?;
    let count = match count {
        None => 1,
        Some(c) => c.trim().parse::<u32>().map_err(|_| {
            HardwareError(format!(
                "--gpu {spec:?}: the count {c:?} is not a whole number (write e.g. {kind}:2)"
            ))
        })?,
    };
    Ok((kind, count))
}

/// GPU kind and count built into an accelerator-optimised machine type.
fn builtin_of(machine_type: &str) -> Option<(GpuKind, u32)> {
    for kind in [GpuKind::L4, GpuKind::A100, GpuKind::A100_80, GpuKind::H100] {
        if let Some((n, _)) = kind.shapes().iter().find(|(_, m)| *m == machine_type) {
            return Some((kind, *n));
        }
    }
    // G2 shapes with one L4 that the shorthand does not pick.
    if matches!(
        machine_type,
        "g2-standard-4" | "g2-standard-12" | "g2-standard-16" | "g2-standard-32"
    ) {
        return Some((GpuKind::L4, 1));
    }
    None
}

/// Resolve `--gpu` and `--machine-type` into hardware.
pub fn resolve(gpu: Option<&str>, machine_type: Option<&str>) -> Result<Hardware, HardwareError> {
    let parsed = gpu.map(parse_gpu).transpose()?;
    match (parsed, machine_type) {
        (None, None) => Err(HardwareError(format!(
            "no GPU chosen: pass --gpu (one of {}; e.g. --gpu l4 or --gpu a100:2) or set gpu = \"l4\" in cloudrun.toml",
            kinds_list()
        ))),
        (Some((kind, count)), None) => {
            let mt = kind
                .shapes()
                .iter()
                .find(|(n, _)| *n == count)
                .map(|(_, m)| m.to_string())
                .ok_or_else(|| {
                    HardwareError(format!(
                        "--gpu {kind}:{count}: a VM can have {} {kind} GPUs, not {count}",
                        counts(kind)
                    ))
                })?;
            Ok(Hardware {
                gpu: kind,
                count,
                machine_type: mt,
            })
        }
        (parsed, Some(mt)) => {
            let mt = mt.trim().to_string();
            if let Some((kind, count)) = builtin_of(&mt) {
                if let Some((want, n)) = parsed {
                    if want != kind || (gpu.is_some_and(|g| g.contains(':')) && n != count) {
                        return Err(HardwareError(format!(
                            "--machine-type {mt} has {count} {kind} GPU(s) built in, which does not match --gpu {}; drop one of the two",
                            gpu.unwrap_or_default()
                        )));
                    }
                }
                return Ok(Hardware {
                    gpu: kind,
                    count,
                    machine_type: mt,
                });
            }
            let family = mt.split('-').next().unwrap_or_default();
            if family != "n1" {
                return Err(HardwareError(format!(
                    "--machine-type {mt}: cloudrun knows GPUs on N1 (with t4, v100, p100), G2 (l4), A2 (a100, a100-80gb) and A3 (h100) machine types; {mt} is none of those"
                )));
            }
            let (kind, count) = parsed.ok_or_else(|| {
                HardwareError(format!(
                    "--machine-type {mt} has no GPU of its own: add --gpu t4, v100 or p100 (N1 takes them as guest accelerators)"
                ))
            })?;
            if kind.attach() != Attach::GuestAccelerators {
                let suggestion = kind.shapes().first().map(|(_, m)| *m).unwrap_or_default();
                return Err(HardwareError(format!(
                    "{kind} GPUs come built into their own machine family, not N1: drop --machine-type (the shorthand picks {suggestion}) or pick one of {}",
                    kind.shapes().iter().map(|(_, m)| *m).collect::<Vec<_>>().join(", ")
                )));
            }
            if !kind.shapes().iter().any(|(n, _)| *n == count) {
                return Err(HardwareError(format!(
                    "--gpu {kind}:{count}: a VM can have {} {kind} GPUs, not {count}",
                    counts(kind)
                )));
            }
            Ok(Hardware {
                gpu: kind,
                count,
                machine_type: mt,
            })
        }
    }
}

fn counts(kind: GpuKind) -> String {
    kind.shapes()
        .iter()
        .map(|(n, _)| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthands_pick_the_machine_type() {
        let h = resolve(Some("l4"), None).unwrap();
        assert_eq!((h.machine_type.as_str(), h.count), ("g2-standard-8", 1));
        assert!(!h.needs_guest_accelerators());
        assert_eq!(
            resolve(Some("a100:2"), None).unwrap().machine_type,
            "a2-highgpu-2g"
        );
        assert_eq!(
            resolve(Some("h100:8"), None).unwrap().machine_type,
            "a3-highgpu-8g"
        );
        assert_eq!(
            resolve(Some("a100-80gb"), None).unwrap().machine_type,
            "a2-ultragpu-1g"
        );
        let t4 = resolve(Some("T4:2"), None).unwrap();
        assert_eq!(t4.machine_type, "n1-standard-16");
        assert!(t4.needs_guest_accelerators());
    }

    #[test]
    fn machine_type_overrides_and_is_checked() {
        let h = resolve(None, Some("a3-highgpu-4g")).unwrap();
        assert_eq!((h.gpu, h.count), (GpuKind::H100, 4));
        let h = resolve(Some("t4"), Some("n1-highmem-8")).unwrap();
        assert_eq!(h.machine_type, "n1-highmem-8");
        assert_eq!(
            resolve(Some("l4"), Some("g2-standard-16")).unwrap().count,
            1
        );
        for (g, m, needle) in [
            (
                Some("l4"),
                Some("n1-standard-8"),
                "built into their own machine family",
            ),
            (None, Some("n1-standard-8"), "add --gpu t4"),
            (Some("h100"), Some("a2-highgpu-1g"), "does not match"),
            (None, Some("e2-standard-4"), "is none of those"),
            (Some("t4:3"), None, "1, 2, 4"),
            (Some("rtx4090"), None, "unknown GPU"),
            (Some("l4:two"), None, "not a whole number"),
            (None, None, "no GPU chosen"),
        ] {
            let err = resolve(g, m).unwrap_err().to_string();
            assert!(err.contains(needle), "{g:?} {m:?}: {err}");
        }
    }

    #[test]
    fn the_agent_can_tell_every_gpu_kind_by_its_nvidia_smi_name() {
        // The agent waits for the plan's GPUs by kind: a kind without a row would be
        // checked by count only.
        for k in GpuKind::ALL {
            assert!(
                cloudrun::gpu_names::words(k.accelerator()).is_some(),
                "{} has no row in cloudrun::gpu_names",
                k.accelerator()
            );
        }
    }
}
