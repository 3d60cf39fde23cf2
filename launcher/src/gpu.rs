//! GPU choice: the `--gpu` shorthands (`t4`, `l4`, `a100:2`, `h100:8`, …), the machine
//! family each GPU needs (N1 plus `guestAccelerators`, or G2/A2/A3 with the GPUs built in),
//! `--machine-type` checked against the GPU, and the default zones to try per GPU.
//!
//! Parsing and resolution only: every GPU fact (names, machine types per count, zones,
//! quota metric) is a row of the library's GPU table ([`cloudrun::gpu_table`]), and every
//! list in a message here is derived from the rows. No network.

use std::fmt;

pub use cloudrun::gpu_table::Attach;
use cloudrun::gpu_table::{self, GpuRow, Launch, Machine, GPUS};

/// A GPU model cloudrun knows how to ask for: a launchable row of the GPU table.
#[derive(Clone, Copy)]
pub struct GpuKind {
    row: &'static GpuRow,
    launch: &'static Launch,
}

impl PartialEq for GpuKind {
    fn eq(&self, other: &Self) -> bool {
        self.row.accelerator == other.row.accelerator
    }
}

impl Eq for GpuKind {}

impl fmt::Debug for GpuKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GpuKind").field(&self.short()).finish()
    }
}

/// The launchable kinds of `table`, in its order.
fn kinds(table: &'static [GpuRow]) -> impl Iterator<Item = GpuKind> {
    table.iter().filter_map(GpuKind::of)
}

impl GpuKind {
    /// The kind of `row`; `None` for a row the launcher does not create.
    pub fn of(row: &'static GpuRow) -> Option<GpuKind> {
        row.launch.as_ref().map(|launch| GpuKind { row, launch })
    }

    /// Every kind, in the table's order, for help texts and errors.
    pub fn all() -> impl Iterator<Item = GpuKind> {
        kinds(GPUS)
    }

    /// The `--gpu` shorthand.
    pub fn short(self) -> &'static str {
        self.launch.short()
    }

    /// Compute's accelerator type name.
    pub fn accelerator(self) -> &'static str {
        self.row.accelerator
    }

    /// The regional quota metric for this GPU (`NVIDIA_L4_GPUS`); Spot VMs draw on the
    /// same name with `PREEMPTIBLE_` in front when the project has that quota.
    pub fn quota_metric(self) -> &'static str {
        self.launch.quota_metric
    }

    pub fn attach(self) -> Attach {
        self.launch.attach
    }

    /// GPU counts a VM may have, and the machine type the shorthand picks for each.
    fn shapes(self) -> &'static [Machine] {
        self.launch.shapes
    }

    /// The GPU counts a VM may have, fewest first.
    pub fn counts(self) -> impl Iterator<Item = u32> {
        self.shapes().iter().map(|m| m.gpus)
    }

    /// Zones tried in order when none are configured (see
    /// [`cloudrun::gpu_table::Launch::default_zones`]). Override with `--zone`.
    pub fn default_zones(self) -> &'static [&'static str] {
        self.launch.default_zones
    }

    /// The charted regions and the zone letters in each that offer this GPU.
    pub fn zones(self) -> &'static [(&'static str, &'static str)] {
        self.launch.zones
    }

    /// The kind one of the row's `--gpu` names (or its accelerator type) names.
    fn from_short_in(table: &'static [GpuRow], s: &str) -> Option<GpuKind> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_prefix("nvidia-").unwrap_or(&s);
        let s = s.strip_prefix("tesla-").unwrap_or(s);
        kinds(table).find(|k| k.launch.names.contains(&s))
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

fn kinds_list(table: &'static [GpuRow]) -> String {
    kinds(table)
        .map(|k| k.short())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `a, b and c` (with `last` for "and").
fn spoken_list(items: &[String], last: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., tail] => format!("{} {last} {tail}", init.join(", ")),
    }
}

/// The machine families of `table` with the kinds each carries, in table order:
/// `N1 (with t4, v100, p100), G2 (l4), A2 (a100, a100-80gb) and A3 (h100)`.
fn families_text(table: &'static [GpuRow]) -> String {
    let mut families: Vec<(&str, Attach, Vec<&str>)> = Vec::new();
    for k in kinds(table) {
        let fam = k.shapes().first().map(|m| m.family()).unwrap_or_default();
        match families.iter_mut().find(|(f, _, _)| *f == fam) {
            Some((_, _, names)) => names.push(k.short()),
            None => families.push((fam, k.attach(), vec![k.short()])),
        }
    }
    let parts: Vec<String> = families
        .iter()
        .map(|(fam, attach, names)| {
            let with = if *attach == Attach::GuestAccelerators {
                "with "
            } else {
                ""
            };
            format!("{} ({with}{})", fam.to_ascii_uppercase(), names.join(", "))
        })
        .collect();
    spoken_list(&parts, "and")
}

/// The kinds N1-like families take as guest accelerators, and those families.
fn guest_kinds(table: &'static [GpuRow]) -> (Vec<String>, Vec<&'static str>) {
    let mut names = Vec::new();
    let mut families = Vec::new();
    for k in kinds(table).filter(|k| k.attach() == Attach::GuestAccelerators) {
        names.push(k.short().to_string());
        for m in k.shapes() {
            if !families.contains(&m.family()) {
                families.push(m.family());
            }
        }
    }
    (names, families)
}

/// The `--gpu` help line: the kinds come from the GPU table.
pub fn gpu_help() -> String {
    format!(
        "GPU: {}, with an optional :COUNT (a100:2)",
        kinds_list(GPUS)
    )
}

/// Parse `KIND[:COUNT]`.
pub fn parse_gpu(spec: &str) -> Result<(GpuKind, u32), HardwareError> {
    parse_gpu_in(GPUS, spec)
}

/// [`parse_gpu`] against the rows of `table`.
pub fn parse_gpu_in(table: &'static [GpuRow], spec: &str) -> Result<(GpuKind, u32), HardwareError> {
    let (kind, count) = match spec.split_once(':') {
        Some((k, c)) => (k, Some(c)),
        None => (spec, None),
    };
    let kind = GpuKind::from_short_in(table, kind).ok_or_else(|| {
        HardwareError(format!(
            "--gpu {spec:?}: unknown GPU {kind:?}; use one of {} (optionally :COUNT, e.g. a100:2)",
            kinds_list(table)
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
fn builtin_of(table: &'static [GpuRow], machine_type: &str) -> Option<(GpuKind, u32)> {
    let (row, m) = gpu_table::built_in(table, machine_type)?;
    Some((GpuKind::of(row)?, m.gpus))
}

/// Resolve `--gpu` and `--machine-type` into hardware.
pub fn resolve(gpu: Option<&str>, machine_type: Option<&str>) -> Result<Hardware, HardwareError> {
    resolve_in(GPUS, gpu, machine_type)
}

/// [`resolve`] against the rows of `table`.
pub fn resolve_in(
    table: &'static [GpuRow],
    gpu: Option<&str>,
    machine_type: Option<&str>,
) -> Result<Hardware, HardwareError> {
    let parsed = gpu.map(|g| parse_gpu_in(table, g)).transpose()?;
    match (parsed, machine_type) {
        (None, None) => Err(HardwareError(format!(
            "no GPU chosen: pass --gpu (one of {}; e.g. --gpu l4 or --gpu a100:2) or set gpu = \"l4\" in cloudrun.toml",
            kinds_list(table)
        ))),
        (Some((kind, count)), None) => {
            let mt = kind
                .launch
                .shape_for(count)
                .map(|m| m.machine_type.to_string())
                .ok_or_else(|| {
                    HardwareError(format!(
                        "--gpu {kind}:{count}: a VM can have {} {kind} GPUs, not {count}",
                        counts_text(kind)
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
            if let Some((kind, count)) = builtin_of(table, &mt) {
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
            let (guest_names, guest_families) = guest_kinds(table);
            if !guest_families.contains(&family) {
                return Err(HardwareError(format!(
                    "--machine-type {mt}: cloudrun knows GPUs on {} machine types; {mt} is none of those",
                    families_text(table)
                )));
            }
            let (kind, count) = parsed.ok_or_else(|| {
                HardwareError(format!(
                    "--machine-type {mt} has no GPU of its own: add --gpu {} ({} takes them as guest accelerators)",
                    spoken_list(&guest_names, "or"),
                    family.to_ascii_uppercase()
                ))
            })?;
            if kind.attach() != Attach::GuestAccelerators {
                let suggestion = kind
                    .shapes()
                    .first()
                    .map(|m| m.machine_type)
                    .unwrap_or_default();
                return Err(HardwareError(format!(
                    "{kind} GPUs come built into their own machine family, not {}: drop --machine-type (the shorthand picks {suggestion}) or pick one of {}",
                    family.to_ascii_uppercase(),
                    kind.shapes().iter().map(|m| m.machine_type).collect::<Vec<_>>().join(", ")
                )));
            }
            if kind.launch.shape_for(count).is_none() {
                return Err(HardwareError(format!(
                    "--gpu {kind}:{count}: a VM can have {} {kind} GPUs, not {count}",
                    counts_text(kind)
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

fn counts_text(kind: GpuKind) -> String {
    kind.counts()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudrun::prices::{layer_from_toml, PriceBook, QuoteRequest};

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
        assert_eq!((h.gpu.short(), h.count), ("h100", 4));
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
        for k in GpuKind::all() {
            assert!(
                cloudrun::gpu_names::words(k.accelerator()).is_some(),
                "{} has no row in cloudrun::gpu_names",
                k.accelerator()
            );
        }
    }

    /// A GPU kind the built-in table does not have, on a machine family it does not
    /// know either: a row and nothing else.
    static FUTURE: GpuRow = GpuRow {
        accelerator: "nvidia-future-9000",
        smi_words: &["F9000"],
        smi_names: &["NVIDIA F9000-SXM6-96GB"],
        sku_names: &["nvidia f9000 gpu"],
        launch: Some(Launch {
            names: &["f9000", "f9000-96gb"],
            quota_metric: "NVIDIA_F9000_GPUS",
            attach: Attach::BuiltIn,
            shapes: &[
                Machine {
                    machine_type: "a9-futuregpu-1g",
                    gpus: 1,
                    vcpus: 16,
                    memory_gib: 128.0,
                },
                Machine {
                    machine_type: "a9-futuregpu-8g",
                    gpus: 8,
                    vcpus: 128,
                    memory_gib: 1024.0,
                },
            ],
            also: &[],
            default_zones: &["us-central1-b", "europe-west4-a"],
            zones: &[("us-central1", "b"), ("europe-west4", "a")],
        }),
    };

    /// The built-in rows and [`FUTURE`], as a table that lives as long as the test run.
    fn with_future() -> &'static [GpuRow] {
        Box::leak(
            [GPUS, std::slice::from_ref(&FUTURE)]
                .concat()
                .into_boxed_slice(),
        )
    }

    #[test]
    fn a_new_gpu_kind_is_one_row_from_flag_to_quote() {
        let table = with_future();
        let h = resolve_in(table, Some("F9000:8"), None).unwrap();
        assert_eq!((h.machine_type.as_str(), h.count), ("a9-futuregpu-8g", 8));
        assert!(!h.needs_guest_accelerators());
        assert_eq!(h.gpu.accelerator(), "nvidia-future-9000");
        assert_eq!(h.gpu.quota_metric(), "NVIDIA_F9000_GPUS");
        assert_eq!(
            resolve_in(table, None, Some("a9-futuregpu-1g")).unwrap(),
            Hardware {
                machine_type: "a9-futuregpu-1g".into(),
                ..resolve_in(table, Some("nvidia-f9000-96gb"), None).unwrap()
            }
        );
        // Every list a person reads names it.
        for (g, m, needle) in [
            (Some("rtx4090"), None, "a100-80gb, h100, f9000"),
            (
                Some("f9000:2"),
                None,
                "a VM can have 1, 8 f9000 GPUs, not 2",
            ),
            (
                None,
                Some("e2-standard-4"),
                "A3 (h100) and A9 (f9000) machine types",
            ),
            (
                Some("f9000"),
                Some("n1-standard-8"),
                "a9-futuregpu-1g, a9-futuregpu-8g",
            ),
        ] {
            let err = resolve_in(table, g, m).unwrap_err().to_string();
            assert!(err.contains(needle), "{g:?} {m:?}: {err}");
        }
        // The built-in table is untouched.
        assert!(resolve(Some("f9000"), None).is_err());
        // Zones.
        assert_eq!(h.gpu.default_zones(), ["us-central1-b", "europe-west4-a"]);
        let e = crate::zones::check_gpu_in_zone(h.gpu, "us-central1-a").unwrap_err();
        assert!(e.contains("in us-central1: us-central1-b"), "{e}");
        // The agent's readiness wait tells it from its neighbours by name.
        assert_eq!(
            cloudrun::gpu_names::matches_in(table, "nvidia-future-9000", "NVIDIA F9000-SXM6-96GB"),
            Some(true)
        );
        assert_eq!(
            cloudrun::gpu_names::matches_in(table, "nvidia-future-9000", "NVIDIA H100 80GB HBM3"),
            Some(false)
        );
        // The Billing Catalog's SKU for it is recognised.
        assert_eq!(
            gpu_table::sku_accelerator_in(table, "nvidia f9000 gpu"),
            Some("nvidia-future-9000")
        );
        // The quote, as the plan asks for it. The built-in price table is a dated
        // snapshot kept apart from the rows: without figures for the new GPU it names
        // both missing parts; a prices.toml (or the catalog) completes it.
        let req = QuoteRequest {
            region: "us-central1",
            machine_type: &h.machine_type,
            gpu: Some((h.gpu.accelerator(), h.count)),
            spot: true,
        };
        let bare = PriceBook::builtin().quote(&req);
        assert_eq!(bare.missing.len(), 2, "{bare:?}");
        assert!(
            bare.missing[0].contains("[gpu.nvidia-future-9000]"),
            "{bare:?}"
        );
        let toml = "taken = \"2026-12-01\"\n[gpu.nvidia-future-9000]\non_demand = 9.0\nspot = 3.0\n[machine.a9-futuregpu-8g]\non_demand = 8.0\nspot = 2.0\n";
        let book = PriceBook::builtin().with_front(layer_from_toml(toml, "prices.toml").unwrap());
        let e = book.quote(&req);
        assert!(e.is_complete(), "{e:?}");
        assert!((e.usd_per_hour - (8.0 * 3.0 + 2.0)).abs() < 1e-9, "{e:?}");
    }
}
