//! The GPU table: every GPU kind cloudrun knows, one row each, and the lookups that
//! read it. The launcher's `--gpu` parsing and zone checks, the price book's machine
//! shapes and Billing Catalog matching, and the agent's check of what `nvidia-smi` sees
//! are all derived from these rows; nothing else spells a GPU fact. Adding a GPU kind is
//! adding a row here (plus its dated figures in [`crate::prices::builtin`]).
//!
//! Pure data, no network, and no parsing of user input (that is the launcher's).
//! Machine shapes follow Google's GPU pages as summarised in the shared gcp-api notes
//! (§1.4) and `machineTypes.list` (reference/billing-catalog.md §6). The charted zones
//! of the L4, A100, A100 80GB and H100 rows follow the `g2-standard-*`,
//! `a2-highgpu-1g`, `a2-ultragpu-1g` and `a3-highgpu-1g` rows of SkyPilot's GCP catalog
//! v8 (the source of the built-in price table); those of the T4, V100 and P100 follow
//! Google's "GPU regions and zones" page as recalled when the table was made. Compute's
//! own `acceleratorTypes.list` is the truth, and a zone the table gets wrong fails at
//! insert with Google's error.

/// How a machine family gets its GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// N1: the GPUs are listed in `guestAccelerators`.
    GuestAccelerators,
    /// G2/A2/A3: implied by the machine type; sending `guestAccelerators` is an error.
    BuiltIn,
}

/// A machine type that carries this GPU, and its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    pub machine_type: &'static str,
    /// GPUs on the VM (attached or built in).
    pub gpus: u32,
    /// `guestCpus`.
    pub vcpus: u32,
    /// `memoryMb / 1024`.
    pub memory_gib: f64,
}

impl Machine {
    /// The machine family: the type's prefix (`g2-standard-8` → `g2`), which is also the
    /// key of the family's vCPU and GiB rates.
    pub fn family(&self) -> &'static str {
        let t: &'static str = self.machine_type;
        t.split('-').next().unwrap_or(t)
    }
}

/// What the launcher needs to create a VM with this GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Launch {
    /// The `--gpu` names, compared without case after an optional `nvidia-` and
    /// `tesla-`: the first is the shorthand shown in help texts, errors and tables.
    pub names: &'static [&'static str],
    /// The regional quota metric (`NVIDIA_L4_GPUS`); Spot VMs draw on the same name with
    /// `PREEMPTIBLE_` in front when the project has that quota.
    pub quota_metric: &'static str,
    pub attach: Attach,
    /// The machine type `--gpu KIND:COUNT` picks, one per count a VM may have, fewest
    /// GPUs first. For [`Attach::GuestAccelerators`] any type of the same family is also
    /// accepted with `--machine-type`.
    pub shapes: &'static [Machine],
    /// Other machine types with this GPU built in, accepted with `--machine-type` but
    /// never picked by the shorthand.
    pub also: &'static [Machine],
    /// Zones tried in order when none are configured: zones that offered this GPU when
    /// the table was written (a zone that lacks it answers with an error and the next is
    /// tried). Overridden with `--zone`.
    pub default_zones: &'static [&'static str],
    /// The charted regions and the zone letters in each that offer it. A region missing
    /// here is uncharted for this GPU (no claim either way), not "none".
    pub zones: &'static [(&'static str, &'static str)],
}

impl Launch {
    /// The `--gpu` shorthand (`l4`).
    pub fn short(&self) -> &'static str {
        self.names.first().copied().unwrap_or_default()
    }

    /// The machine type the shorthand picks for `count` GPUs.
    pub fn shape_for(&self, count: u32) -> Option<&'static Machine> {
        self.shapes.iter().find(|m| m.gpus == count)
    }

    /// Every machine type that carries this GPU: the shapes, then the others.
    pub fn machines(&self) -> impl Iterator<Item = &'static Machine> {
        self.shapes.iter().chain(self.also)
    }
}

/// One GPU kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuRow {
    /// Compute Engine's accelerator type (`nvidia-l4`): the key the run spec, the price
    /// book and the quota checks use.
    pub accelerator: &'static str,
    /// The words its `nvidia-smi` product name carries (see [`crate::gpu_names`]): the
    /// model's own words, not the board's, so a new board revision still matches.
    pub smi_words: &'static [&'static str],
    /// Product names `nvidia-smi` has been seen or documented to print for it (each
    /// must match this row by [`Self::smi_words`]).
    pub smi_names: &'static [&'static str],
    /// Billing Catalog GPU SKU descriptions that price it, lower case, without the Spot
    /// wording and the `running in <place>` tail (reference/billing-catalog.md §5).
    pub sku_names: &'static [&'static str],
    /// How the launcher creates a VM with it; `None` for a kind the agent recognises
    /// by name but cloudrun does not launch.
    pub launch: Option<Launch>,
}

/// The rows, in the order help texts, errors and price tables list them.
pub const GPUS: &[GpuRow] = &[
    GpuRow {
        accelerator: "nvidia-tesla-t4",
        smi_words: &["T4"],
        smi_names: &["Tesla T4"],
        sku_names: &["nvidia tesla t4 gpu"],
        launch: Some(Launch {
            names: &["t4"],
            quota_metric: "NVIDIA_T4_GPUS",
            attach: Attach::GuestAccelerators,
            // N1 vCPU limits per GPU count: 24/48/96.
            shapes: &[
                vm("n1-standard-8", 1, 8, 30.0),
                vm("n1-standard-16", 2, 16, 60.0),
                vm("n1-standard-32", 4, 32, 120.0),
            ],
            also: &[],
            default_zones: &[
                "us-central1-a",
                "us-central1-b",
                "us-central1-f",
                "us-east1-c",
                "us-east1-d",
                "us-west1-a",
                "us-west1-b",
                "europe-west4-a",
            ],
            zones: &[
                ("us-central1", "abcf"),
                ("us-east1", "cd"),
                ("us-west1", "ab"),
                ("europe-west4", "abc"),
            ],
        }),
    },
    GpuRow {
        accelerator: "nvidia-tesla-v100",
        smi_words: &["V100"],
        smi_names: &["Tesla V100-SXM2-16GB"],
        sku_names: &["nvidia tesla v100 gpu"],
        launch: Some(Launch {
            names: &["v100"],
            quota_metric: "NVIDIA_V100_GPUS",
            attach: Attach::GuestAccelerators,
            // N1 vCPU limits per GPU count: 12/24/48/96.
            shapes: &[
                vm("n1-standard-8", 1, 8, 30.0),
                vm("n1-standard-16", 2, 16, 60.0),
                vm("n1-standard-32", 4, 32, 120.0),
                vm("n1-standard-64", 8, 64, 240.0),
            ],
            also: &[],
            default_zones: &[
                "us-central1-a",
                "us-central1-b",
                "us-central1-c",
                "us-central1-f",
                "us-west1-a",
                "us-west1-b",
                "europe-west4-a",
            ],
            zones: &[
                ("us-central1", "abcf"),
                ("us-west1", "ab"),
                ("europe-west4", "abc"),
            ],
        }),
    },
    GpuRow {
        accelerator: "nvidia-tesla-p100",
        smi_words: &["P100"],
        smi_names: &["Tesla P100-PCIE-16GB"],
        sku_names: &["nvidia tesla p100 gpu"],
        launch: Some(Launch {
            names: &["p100"],
            quota_metric: "NVIDIA_P100_GPUS",
            attach: Attach::GuestAccelerators,
            // N1 vCPU limits per GPU count: 16/32/64.
            shapes: &[
                vm("n1-standard-8", 1, 8, 30.0),
                vm("n1-standard-16", 2, 16, 60.0),
                vm("n1-standard-32", 4, 32, 120.0),
            ],
            also: &[],
            default_zones: &[
                "us-central1-c",
                "us-central1-f",
                "us-east1-b",
                "us-west1-b",
                "europe-west4-a",
            ],
            zones: &[
                ("us-central1", "cf"),
                ("us-east1", "bc"),
                ("us-west1", "ab"),
                ("europe-west4", "a"),
            ],
        }),
    },
    GpuRow {
        accelerator: "nvidia-l4",
        smi_words: &["L4"],
        smi_names: &["NVIDIA L4"],
        sku_names: &["nvidia l4 gpu"],
        launch: Some(Launch {
            names: &["l4"],
            quota_metric: "NVIDIA_L4_GPUS",
            attach: Attach::BuiltIn,
            shapes: &[
                vm("g2-standard-8", 1, 8, 32.0),
                vm("g2-standard-24", 2, 24, 96.0),
                vm("g2-standard-48", 4, 48, 192.0),
                vm("g2-standard-96", 8, 96, 384.0),
            ],
            also: &[
                vm("g2-standard-4", 1, 4, 16.0),
                vm("g2-standard-12", 1, 12, 48.0),
                vm("g2-standard-16", 1, 16, 64.0),
                vm("g2-standard-32", 1, 32, 128.0),
            ],
            default_zones: &[
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
            zones: &[
                ("us-central1", "abc"),
                ("us-east1", "bcd"),
                ("us-east4", "ac"),
                ("us-west1", "abc"),
                ("us-west4", "ac"),
                ("northamerica-northeast1", "bc"),
                ("northamerica-northeast2", "ab"),
                ("europe-west1", "bc"),
                ("europe-west2", "ab"),
                ("europe-west3", "ab"),
                ("europe-west4", "abc"),
                ("europe-west6", "bc"),
                ("me-central2", "ac"),
                ("asia-east1", "abc"),
                ("asia-northeast1", "abc"),
                ("asia-northeast3", "ab"),
                ("asia-south1", "abc"),
                ("asia-southeast1", "abc"),
            ],
        }),
    },
    GpuRow {
        accelerator: "nvidia-tesla-a100",
        smi_words: &["A100", "40GB"],
        smi_names: &["NVIDIA A100-SXM4-40GB"],
        sku_names: &["nvidia tesla a100 gpu"],
        launch: Some(Launch {
            names: &["a100", "a100-40gb", "a100-40"],
            quota_metric: "NVIDIA_A100_GPUS",
            attach: Attach::BuiltIn,
            shapes: &[
                vm("a2-highgpu-1g", 1, 12, 85.0),
                vm("a2-highgpu-2g", 2, 24, 170.0),
                vm("a2-highgpu-4g", 4, 48, 340.0),
                vm("a2-highgpu-8g", 8, 96, 680.0),
                vm("a2-megagpu-16g", 16, 96, 1360.0),
            ],
            also: &[],
            default_zones: &[
                "us-central1-a",
                "us-central1-b",
                "us-central1-c",
                "us-central1-f",
                "us-east1-b",
                "us-west1-b",
                "europe-west4-a",
            ],
            zones: &[
                ("us-central1", "abcf"),
                ("us-east1", "b"),
                ("us-west1", "b"),
                ("us-west3", "b"),
                ("us-west4", "b"),
                ("europe-west4", "ab"),
                ("me-west1", "ac"),
                ("asia-northeast1", "ac"),
                ("asia-northeast3", "ab"),
                ("asia-southeast1", "abc"),
            ],
        }),
    },
    GpuRow {
        accelerator: "nvidia-a100-80gb",
        smi_words: &["A100", "80GB"],
        smi_names: &["NVIDIA A100-SXM4-80GB"],
        sku_names: &["nvidia tesla a100 80gb gpu", "nvidia a100 80gb gpu"],
        launch: Some(Launch {
            names: &["a100-80gb", "a100-80", "a100_80"],
            quota_metric: "NVIDIA_A100_80GB_GPUS",
            attach: Attach::BuiltIn,
            shapes: &[
                vm("a2-ultragpu-1g", 1, 12, 170.0),
                vm("a2-ultragpu-2g", 2, 24, 340.0),
                vm("a2-ultragpu-4g", 4, 48, 680.0),
                vm("a2-ultragpu-8g", 8, 96, 1360.0),
            ],
            also: &[],
            default_zones: &[
                "us-central1-a",
                "us-central1-c",
                "us-east4-c",
                "us-east5-b",
                "europe-west4-a",
            ],
            zones: &[
                ("us-central1", "ac"),
                ("us-east4", "c"),
                ("us-east5", "ab"),
                ("europe-west4", "a"),
                ("asia-southeast1", "c"),
            ],
        }),
    },
    GpuRow {
        accelerator: "nvidia-h100-80gb",
        smi_words: &["H100"],
        smi_names: &["NVIDIA H100 80GB HBM3"],
        sku_names: &["nvidia h100 80gb gpu"],
        launch: Some(Launch {
            names: &["h100", "h100-80gb"],
            quota_metric: "NVIDIA_H100_GPUS",
            attach: Attach::BuiltIn,
            shapes: &[
                vm("a3-highgpu-1g", 1, 26, 234.0),
                vm("a3-highgpu-2g", 2, 52, 468.0),
                vm("a3-highgpu-4g", 4, 104, 936.0),
                vm("a3-highgpu-8g", 8, 208, 1872.0),
            ],
            also: &[],
            default_zones: &[
                "us-central1-a",
                "us-central1-c",
                "us-east4-a",
                "us-east5-a",
                "us-west1-a",
                "europe-west4-b",
            ],
            zones: &[
                ("us-central1", "abc"),
                ("us-east4", "abc"),
                ("us-east5", "a"),
                ("us-west1", "ab"),
                ("us-west4", "a"),
                ("europe-west1", "bc"),
                ("europe-west4", "bc"),
            ],
        }),
    },
    // Recognised by the agent (a run spec may name them), not launched by cloudrun.
    recognised("nvidia-tesla-t4-vws", &["T4"], &[]),
    recognised("nvidia-tesla-p4", &["P4"], &["Tesla P4"]),
    recognised("nvidia-tesla-p4-vws", &["P4"], &[]),
    recognised("nvidia-tesla-p100-vws", &["P100"], &[]),
    recognised("nvidia-l4-vws", &["L4"], &[]),
    recognised(
        "nvidia-h100-mega-80gb",
        &["H100"],
        &["NVIDIA H100 80GB HBM3"],
    ),
    recognised("nvidia-h200-141gb", &["H200"], &["NVIDIA H200"]),
    recognised("nvidia-b200", &["B200"], &[]),
    recognised("nvidia-gb200", &["GB200"], &[]),
    recognised("nvidia-rtx-pro-6000", &["RTX", "PRO", "6000"], &[]),
];

/// A [`Machine`], written short for the rows.
const fn vm(machine_type: &'static str, gpus: u32, vcpus: u32, memory_gib: f64) -> Machine {
    Machine {
        machine_type,
        gpus,
        vcpus,
        memory_gib,
    }
}

/// A row the agent can check by name but the launcher does not create.
const fn recognised(
    accelerator: &'static str,
    smi_words: &'static [&'static str],
    smi_names: &'static [&'static str],
) -> GpuRow {
    GpuRow {
        accelerator,
        smi_words,
        smi_names,
        sku_names: &[],
        launch: None,
    }
}

/// The row of accelerator type `accelerator` (compared without case).
pub fn row_in<'t>(table: &'t [GpuRow], accelerator: &str) -> Option<&'t GpuRow> {
    table
        .iter()
        .find(|r| r.accelerator.eq_ignore_ascii_case(accelerator))
}

/// [`row_in`] the built-in table.
pub fn row(accelerator: &str) -> Option<&'static GpuRow> {
    row_in(GPUS, accelerator)
}

/// The launchable rows, in table order.
pub fn launchable(table: &[GpuRow]) -> impl Iterator<Item = (&GpuRow, &Launch)> {
    table
        .iter()
        .filter_map(|r| r.launch.as_ref().map(|l| (r, l)))
}

/// The accelerator a Billing Catalog GPU SKU name (normalised as [`GpuRow::sku_names`]
/// says) prices.
pub fn sku_accelerator_in<'t>(table: &'t [GpuRow], name: &str) -> Option<&'t str> {
    table
        .iter()
        .find(|r| r.sku_names.contains(&name))
        .map(|r| r.accelerator)
}

/// [`sku_accelerator_in`] the built-in table.
pub fn sku_accelerator(name: &str) -> Option<&'static str> {
    sku_accelerator_in(GPUS, name)
}

/// The size of `machine_type`, when a launchable row names it (an N1 type may be named
/// by several rows, all with the same size).
pub fn machine(machine_type: &str) -> Option<&'static Machine> {
    launchable(GPUS).find_map(|(_, l)| l.machines().find(|m| m.machine_type == machine_type))
}

/// The row whose GPUs are built into `machine_type` (G2, A2, A3), with the machine.
pub fn built_in<'t>(table: &'t [GpuRow], machine_type: &str) -> Option<(&'t GpuRow, &'t Machine)> {
    launchable(table)
        .filter(|(_, l)| l.attach == Attach::BuiltIn)
        .find_map(|(r, l)| {
            l.machines()
                .find(|m| m.machine_type == machine_type)
                .map(|m| (r, m))
        })
}

/// Every machine family a launchable row uses, once each, in table order.
pub fn machine_families() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (_, l) in launchable(GPUS) {
        for m in l.machines() {
            if !out.contains(&m.family()) {
                out.push(m.family());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu_names;
    use crate::prices::{region_of, shape, PriceBook, QuoteRequest};

    /// A zone name is a region, `-`, one lower-case letter; a region is lower-case
    /// words and digits joined by `-` (the full list of real regions is the launcher's).
    fn zone_syntax_ok(zone: &str) -> bool {
        let Some((region, letter)) = zone.rsplit_once('-') else {
            return false;
        };
        letter.len() == 1
            && letter.chars().all(|c| c.is_ascii_lowercase())
            && region.contains('-')
            && region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    /// Every row is whole and agrees with itself and the rest of the library: names are
    /// unique, every count offered has exactly one machine type of one family, the
    /// zones are zone names and the default ones are charted, each documented
    /// `nvidia-smi` name maps back to its own row (and to no other launchable one), and
    /// the built-in price table prices every shape, on demand and Spot, in every region
    /// the default zones name.
    #[test]
    fn every_row_is_whole_and_consistent() {
        let book = PriceBook::builtin();
        let mut accelerators = Vec::new();
        let mut names = Vec::new();
        let mut built_in_types = Vec::new();
        for r in GPUS {
            let acc = r.accelerator;
            assert!(
                !accelerators.contains(&acc.to_ascii_lowercase()),
                "{acc}: two rows"
            );
            accelerators.push(acc.to_ascii_lowercase());
            assert!(!r.smi_words.is_empty(), "{acc}: no nvidia-smi words");
            assert_eq!(gpu_names::words(acc), Some(r.smi_words), "{acc}");
            for name in r.smi_names {
                assert_eq!(gpu_names::matches(acc, name), Some(true), "{acc} / {name}");
                // The launcher's kinds are told apart; a recognised-only row may share its
                // words with one (`nvidia-h100-mega-80gb` is an H100 too).
                let others =
                    launchable(GPUS).filter(|(o, _)| r.launch.is_some() && o.accelerator != acc);
                for (other, _) in others {
                    assert_eq!(
                        gpu_names::matches(other.accelerator, name),
                        Some(false),
                        "{name} is {acc} but also matches {}",
                        other.accelerator
                    );
                }
            }
            for sku in r.sku_names {
                assert_eq!(sku, &sku.to_ascii_lowercase(), "{acc}: {sku}");
                assert_eq!(sku_accelerator(sku), Some(acc), "{acc}: {sku}");
            }
            let Some(l) = &r.launch else {
                continue;
            };
            assert!(!r.smi_names.is_empty(), "{acc}: no nvidia-smi name");
            assert!(
                !r.sku_names.is_empty(),
                "{acc}: no Billing Catalog SKU name"
            );
            assert!(!l.names.is_empty(), "{acc}: no --gpu name");
            for n in l.names {
                assert_eq!(n, &n.to_ascii_lowercase(), "{acc}: {n}");
                assert!(!names.contains(n), "{acc}: --gpu {n} names two rows");
                names.push(*n);
            }
            assert!(
                l.quota_metric.starts_with("NVIDIA_") && l.quota_metric.ends_with("_GPUS"),
                "{acc}: {}",
                l.quota_metric
            );
            assert!(!l.shapes.is_empty(), "{acc}: no machine types");
            let family = l.shapes[0].family();
            for w in l.shapes.windows(2) {
                assert!(w[0].gpus < w[1].gpus, "{acc}: counts not ascending");
            }
            for m in l.machines() {
                assert!(m.gpus > 0 && m.vcpus > 0 && m.memory_gib > 0.0, "{m:?}");
                assert_eq!(
                    m.family(),
                    family,
                    "{acc}: {} is another family",
                    m.machine_type
                );
                assert_eq!(
                    machine(m.machine_type).map(|o| (o.vcpus, o.memory_gib)),
                    Some((m.vcpus, m.memory_gib)),
                    "{acc}: {} has two sizes",
                    m.machine_type
                );
                if l.attach == Attach::BuiltIn {
                    assert!(
                        !built_in_types.contains(&m.machine_type),
                        "{}: in two rows",
                        m.machine_type
                    );
                    built_in_types.push(m.machine_type);
                    assert_eq!(built_in(GPUS, m.machine_type), Some((r, m)));
                }
                let s = shape(m.machine_type).expect("priced shape");
                assert_eq!(
                    (s.family, s.vcpus, s.memory_gib),
                    (family, m.vcpus, m.memory_gib),
                    "{}",
                    m.machine_type
                );
            }
            for c in l.shapes.iter().map(|m| m.gpus) {
                assert_eq!(l.shape_for(c).map(|m| m.gpus), Some(c), "{acc}:{c}");
            }
            if l.attach == Attach::BuiltIn {
                assert!(family != "n1", "{acc}: N1 takes GPUs as guest accelerators");
            } else {
                assert!(l.also.is_empty(), "{acc}: any {family} type is accepted");
            }
            assert!(!l.default_zones.is_empty(), "{acc}: no default zones");
            for (region, letters) in l.zones {
                for c in letters.chars() {
                    assert!(
                        zone_syntax_ok(&format!("{region}-{c}")),
                        "{acc}: {region}-{c}"
                    );
                }
            }
            let mut regions: Vec<&str> = Vec::new();
            for z in l.default_zones {
                assert!(zone_syntax_ok(z), "{acc}: default zone {z:?}");
                let (region, letter) = z.rsplit_once('-').unwrap_or_default();
                if let Some((_, letters)) = l.zones.iter().find(|(r, _)| *r == region) {
                    assert!(
                        letters.contains(letter),
                        "{acc}: default zone {z} not charted"
                    );
                }
                if !regions.contains(&region_of(z)) {
                    regions.push(region_of(z));
                }
            }
            for m in l.shapes {
                for region in &regions {
                    for spot in [false, true] {
                        let e = book.quote(&QuoteRequest {
                            region,
                            machine_type: m.machine_type,
                            gpu: Some((acc, m.gpus)),
                            spot,
                        });
                        assert!(
                            e.is_complete() && e.usd_per_hour > 0.0 && e.estimate,
                            "{acc} {} {region} spot={spot}: {e:?}",
                            m.machine_type
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn families_and_shapes_come_from_the_rows() {
        assert_eq!(machine_families(), ["n1", "g2", "a2", "a3"]);
        let (r, m) = built_in(GPUS, "g2-standard-16").unwrap();
        assert_eq!((r.accelerator, m.gpus, m.vcpus), ("nvidia-l4", 1, 16));
        assert_eq!(built_in(GPUS, "n1-standard-8"), None);
        assert_eq!(machine("n1-standard-8").map(|m| m.memory_gib), Some(30.0));
        assert_eq!(machine("e2-standard-4"), None);
        assert_eq!(row("NVIDIA-L4").map(|r| r.accelerator), Some("nvidia-l4"));
        assert_eq!(
            sku_accelerator("nvidia a100 80gb gpu"),
            Some("nvidia-a100-80gb")
        );
    }
}
