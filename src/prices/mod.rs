//! Prices: what a Compute Engine VM costs per hour in a region, on demand or Spot, and
//! where that figure came from. One lookup, [`PriceBook::quote`], serves every kind of
//! run (a Compute VM today, a Batch job later); [`load`] assembles the book from the
//! sources a user has, in this order of trust:
//!
//! 1. a `prices.toml` given with `--prices` (the user's own figures, every region);
//! 2. Google's Cloud Billing Catalog ([`catalog`], [`fetch`]), cached for a week
//!    ([`cache`]);
//! 3. the built-in table ([`builtin`]): dated, sourced **estimates** for every shape the
//!    launcher creates, in every region its default zones name.
//!
//! A part a source lacks is taken from the next one, and a quote says which sources it
//! used and whether any figure in it is an estimate. A part no source has is named in
//! [`Estimate::missing`], never guessed as 0.
//!
//! A machine price is built the way Google bills it: vCPU-hours and GiB-hours at the
//! machine family's rates ([`shape`] gives the vCPUs and GiB of each machine type) plus
//! GPU-hours per attached or built-in GPU. Nothing here touches the network except
//! [`fetch`].

pub mod builtin;
pub mod cache;
pub mod catalog;
pub mod fetch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// On-demand and Spot price of one item, US dollars per unit-hour. Either may be unknown.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    #[serde(default)]
    pub on_demand: Option<f64>,
    #[serde(default)]
    pub spot: Option<f64>,
}

impl Rate {
    /// The figure for the provisioning model.
    pub fn get(&self, spot: bool) -> Option<f64> {
        if spot {
            self.spot
        } else {
            self.on_demand
        }
    }

    /// Set the figure for the provisioning model.
    pub fn set(&mut self, spot: bool, usd: f64) {
        if spot {
            self.spot = Some(usd);
        } else {
            self.on_demand = Some(usd);
        }
    }
}

/// A machine family's rates: per vCPU-hour and per GiB-hour of memory.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct FamilyRate {
    pub vcpu: Rate,
    pub ram_gib: Rate,
}

/// Rates in one region: GPUs by accelerator type (`nvidia-l4`), families by the machine
/// type's prefix (`g2`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RegionPrices {
    #[serde(default)]
    pub gpu: BTreeMap<String, Rate>,
    #[serde(default)]
    pub family: BTreeMap<String, FamilyRate>,
}

/// Price per GiB read from the bucket into a VM elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EgressRates {
    /// Between regions of one continent (or a multi-region and a region outside it on
    /// the same continent).
    pub same_continent_per_gib: f64,
    /// Between continents.
    pub inter_continent_per_gib: f64,
    /// To or from Oceania.
    pub oceania_per_gib: f64,
}

impl EgressRates {
    /// US dollars per GiB to read data stored in `bucket` from a VM in `region`: free
    /// inside the bucket's location (its region, or a multi/dual-region that holds it).
    pub fn per_gib(&self, bucket: &BucketPlace, region: &str) -> f64 {
        if bucket.contains(region) {
            return 0.0;
        }
        let (a, b) = (bucket.continent(), continent_of(region));
        if a == b {
            self.same_continent_per_gib
        } else if a == "oceania" || b == "oceania" {
            self.oceania_per_gib
        } else {
            self.inter_continent_per_gib
        }
    }
}

/// One source of figures.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PriceLayer {
    /// Where the figures come from, shown with every quote that uses them.
    pub source: String,
    /// Whether these figures are estimates rather than Google's current list prices.
    pub estimate: bool,
    /// Per region.
    #[serde(default)]
    pub regions: BTreeMap<String, RegionPrices>,
    /// Per GPU, the same in every region (a prices.toml).
    #[serde(default)]
    pub gpu_everywhere: BTreeMap<String, Rate>,
    /// Per whole machine type without GPUs, the same in every region (a prices.toml).
    #[serde(default)]
    pub machine_everywhere: BTreeMap<String, Rate>,
}

impl PriceLayer {
    fn gpu(&self, region: &str, accel: &str, spot: bool) -> Option<f64> {
        self.gpu_everywhere
            .get(accel)
            .and_then(|r| r.get(spot))
            .or_else(|| {
                self.regions
                    .get(region)
                    .and_then(|r| r.gpu.get(accel))
                    .and_then(|r| r.get(spot))
            })
    }

    fn machine(&self, region: &str, machine_type: &str, spot: bool) -> Option<f64> {
        if let Some(p) = self
            .machine_everywhere
            .get(machine_type)
            .and_then(|r| r.get(spot))
        {
            return Some(p);
        }
        let shape = shape(machine_type)?;
        let fam = self.regions.get(region)?.family.get(shape.family)?;
        Some(
            fam.vcpu.get(spot)? * f64::from(shape.vcpus)
                + fam.ram_gib.get(spot)? * shape.memory_gib,
        )
    }

    /// Every region this layer has figures for.
    pub fn region_names(&self) -> impl Iterator<Item = &str> {
        self.regions.keys().map(String::as_str)
    }
}

/// The figures a launch prices with: layers in order of trust, and egress rates.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceBook {
    pub layers: Vec<PriceLayer>,
    pub egress: EgressRates,
    /// Where the egress rates come from.
    pub egress_source: String,
}

/// What to price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuoteRequest<'a> {
    /// `us-central1` (a zone's region: [`region_of`]).
    pub region: &'a str,
    pub machine_type: &'a str,
    /// Accelerator type and count, attached or built in.
    pub gpu: Option<(&'a str, u32)>,
    pub spot: bool,
}

/// A whole-VM price per hour, how complete it is and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// The sum of the parts that are known.
    pub usd_per_hour: f64,
    /// The sources used, most trusted first, joined with " + ".
    pub source: String,
    /// Whether any part is an estimate (from the built-in table).
    pub estimate: bool,
    /// The region priced.
    pub region: String,
    /// Each known part: ("2 × nvidia-l4", 1.12), ("g2-standard-24 (24 vCPU, 96 GiB)", 0.88).
    pub parts: Vec<(String, f64)>,
    /// The parts no source has; empty when the figure is complete.
    pub missing: Vec<String>,
}

impl Estimate {
    /// Whether every part had a price.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// The source, marked as an estimate, and as a lower bound when parts are missing.
    pub fn describe(&self) -> String {
        let mut s = format!("{}, {}", self.region, self.source);
        if self.estimate {
            s.push_str(" (estimate)");
        }
        if !self.is_complete() {
            s.push_str(&format!(
                " (lower bound: no {})",
                self.missing.join(", no ")
            ));
        }
        s
    }
}

/// The vCPUs and memory of a machine type, and its family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub family: &'static str,
    pub vcpus: u32,
    pub memory_gib: f64,
}

/// GiB per vCPU of N1's predefined types, by the type's middle word.
const N1_GIB_PER_VCPU: &[(&str, f64)] = &[("standard", 3.75), ("highmem", 6.5), ("highcpu", 0.9)];

/// The shape of `machine_type`, when known: a machine type of the GPU table
/// ([`crate::gpu_table`]; reference/billing-catalog.md §6: `guestCpus` and
/// `memoryMb / 1024` from `machineTypes.list`), or any N1 predefined type
/// (`n1-standard-8`, `n1-highmem-16`, …).
pub fn shape(machine_type: &str) -> Option<Shape> {
    if let Some(m) = crate::gpu_table::machine(machine_type) {
        return Some(Shape {
            family: m.family(),
            vcpus: m.vcpus,
            memory_gib: m.memory_gib,
        });
    }
    let mut parts = machine_type.split('-');
    let (Some("n1"), Some(kind), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let per = N1_GIB_PER_VCPU.iter().find(|(k, _)| *k == kind)?.1;
    let vcpus: u32 = n.parse().ok().filter(|v| *v > 0)?;
    Some(Shape {
        family: "n1",
        vcpus,
        memory_gib: per * f64::from(vcpus),
    })
}

/// `us-central1-a` → `us-central1`.
pub fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map(|(r, _)| r).unwrap_or(zone)
}

/// The continent a region (or a bucket location) is on, for egress and "near the data".
pub fn continent_of(location: &str) -> &'static str {
    let l = location.to_ascii_lowercase();
    let table: &[(&str, &str)] = &[
        ("us", "north-america"),
        ("nam", "north-america"),
        ("northamerica", "north-america"),
        ("southamerica", "south-america"),
        ("europe", "europe"),
        ("eu", "europe"),
        ("eur", "europe"),
        ("asia", "asia"),
        ("me", "middle-east"),
        ("australia", "oceania"),
        ("africa", "africa"),
    ];
    let head: String = l.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    table
        .iter()
        .find(|(p, _)| *p == head)
        .map(|(_, c)| *c)
        .unwrap_or("unknown")
}

impl PriceBook {
    /// The built-in table alone (offline use, tests).
    pub fn builtin() -> Self {
        PriceBook {
            layers: vec![builtin::layer()],
            egress: builtin::EGRESS,
            egress_source: builtin::EGRESS_SOURCE.into(),
        }
    }

    /// `layer` in front of the layers here (it is trusted more).
    pub fn with_front(mut self, layer: PriceLayer) -> Self {
        self.layers.insert(0, layer);
        self
    }

    /// The one price lookup: a VM of `req.machine_type` with `req.gpu` in `req.region`.
    pub fn quote(&self, req: &QuoteRequest<'_>) -> Estimate {
        let model = if req.spot { "Spot" } else { "on-demand" };
        let mut used: Vec<usize> = Vec::new();
        let mut parts = Vec::new();
        let mut missing = Vec::new();
        if let Some((accel, count)) = req.gpu {
            let hit = self
                .layers
                .iter()
                .enumerate()
                .find_map(|(i, l)| l.gpu(req.region, accel, req.spot).map(|p| (i, p)));
            match hit {
                Some((i, p)) => {
                    used.push(i);
                    parts.push((format!("{count} × {accel}"), p * f64::from(count)));
                }
                None => missing.push(format!(
                    "{model} price of GPU {accel} in {} (prices.toml: [gpu.{accel}])",
                    req.region
                )),
            }
        }
        let hit = self.layers.iter().enumerate().find_map(|(i, l)| {
            l.machine(req.region, req.machine_type, req.spot)
                .map(|p| (i, p))
        });
        match hit {
            Some((i, p)) => {
                used.push(i);
                let label = match shape(req.machine_type) {
                    Some(s) => format!(
                        "{} ({} vCPU, {} GiB)",
                        req.machine_type, s.vcpus, s.memory_gib
                    ),
                    None => req.machine_type.to_string(),
                };
                parts.push((label, p));
            }
            None => missing.push(format!(
                "{model} price of the {} VM part in {} (prices.toml: [machine.{}])",
                req.machine_type, req.region, req.machine_type
            )),
        }
        used.sort_unstable();
        used.dedup();
        let source = if used.is_empty() {
            self.layers
                .first()
                .map(|l| l.source.clone())
                .unwrap_or_default()
        } else {
            used.iter()
                .map(|i| self.layers[*i].source.clone())
                .collect::<Vec<_>>()
                .join(" + ")
        };
        Estimate {
            usd_per_hour: parts.iter().map(|(_, p)| p).sum(),
            source,
            estimate: used.iter().any(|i| self.layers[*i].estimate),
            region: req.region.to_string(),
            parts,
            missing,
        }
    }

    /// US dollars per GiB to read data stored in `bucket` from a VM in `region`.
    pub fn egress_per_gib(&self, bucket: &BucketPlace, region: &str) -> f64 {
        self.egress.per_gib(bucket, region)
    }

    /// Every region any layer has figures for.
    pub fn regions(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .layers
            .iter()
            .flat_map(|l| l.region_names().map(String::from))
            .collect();
        r.sort();
        r.dedup();
        r
    }
}

/// Where a bucket keeps its data, as `buckets.get` says.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BucketPlace {
    /// `US`, `EU`, `ASIA`, `NAM4`, `US-CENTRAL1` (GCS writes it upper case).
    pub location: String,
    /// `region`, `dual-region` or `multi-region`.
    pub location_type: String,
    /// The regions of a configurable dual-region (`customPlacementConfig.dataLocations`).
    pub data_locations: Vec<String>,
}

/// Google's predefined dual-regions and the regions they hold.
const DUAL_REGIONS: &[(&str, &[&str])] = &[
    ("nam4", &["us-central1", "us-east1"]),
    ("eur4", &["europe-north1", "europe-west4"]),
    ("eur5", &["europe-west1", "europe-west2"]),
    ("eur7", &["europe-west3", "europe-west10"]),
    ("eur8", &["europe-west6", "europe-west8"]),
    ("asia1", &["asia-northeast1", "asia-northeast2"]),
];

impl BucketPlace {
    /// Whether a VM in `region` reads this bucket from inside its location.
    pub fn contains(&self, region: &str) -> bool {
        let loc = self.location.to_ascii_lowercase();
        if loc == region {
            return true;
        }
        if self
            .data_locations
            .iter()
            .any(|d| d.eq_ignore_ascii_case(region))
        {
            return true;
        }
        if let Some((_, regions)) = DUAL_REGIONS.iter().find(|(n, _)| *n == loc) {
            return regions.contains(&region);
        }
        // Multi-regions: US holds the us-* regions, EU the European ones, ASIA the Asian.
        match loc.as_str() {
            "us" => region.starts_with("us-"),
            "eu" => region.starts_with("europe-"),
            "asia" => region.starts_with("asia-"),
            _ => false,
        }
    }

    /// The continent the data lives on.
    pub fn continent(&self) -> &'static str {
        match self.data_locations.first() {
            Some(d) if self.location_type == "dual-region" => continent_of(d),
            _ => continent_of(&self.location),
        }
    }
}

/// Why a `prices.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PricesError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid prices.toml ({source}); expected e.g.\n  taken = \"2026-11-01\"\n  [gpu.nvidia-l4]\n  on_demand = 0.56\n  spot = 0.22\n  [machine.g2-standard-8]\n  on_demand = 0.30")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: price for {item} is {value}, which is not a non-negative amount")]
    Value {
        path: String,
        item: String,
        value: f64,
    },
}

/// The `prices.toml` format: per-GPU and per-machine-type (without GPUs) rates, the same
/// in every region.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PricesToml {
    #[serde(default)]
    taken: String,
    #[serde(default)]
    gpu: BTreeMap<String, Rate>,
    #[serde(default)]
    machine: BTreeMap<String, Rate>,
}

/// Parse a `prices.toml`; `path` names it in errors and in the quote's source.
pub fn layer_from_toml(text: &str, path: &str) -> Result<PriceLayer, PricesError> {
    let t: PricesToml = toml::from_str(text).map_err(|source| PricesError::Parse {
        path: path.into(),
        source,
    })?;
    for (kind, map) in [("gpu", &t.gpu), ("machine", &t.machine)] {
        for (name, r) in map {
            for v in [r.on_demand, r.spot].into_iter().flatten() {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(PricesError::Value {
                        path: path.into(),
                        item: format!("{kind}.{name}"),
                        value: v,
                    });
                }
            }
        }
    }
    Ok(PriceLayer {
        source: if t.taken.is_empty() {
            path.to_string()
        } else {
            format!("{path} (taken {})", t.taken)
        },
        estimate: false,
        regions: BTreeMap::new(),
        gpu_everywhere: t.gpu,
        machine_everywhere: t.machine,
    })
}

/// Read a `prices.toml` from disk.
pub fn load_toml(path: &Path) -> Result<PriceLayer, PricesError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PricesError::Read {
        path: shown.clone(),
        source,
    })?;
    layer_from_toml(&text, &shown)
}

/// How long a cached catalog is used before a launch refreshes it, in seconds (a week:
/// on-demand prices change rarely; Spot prices can change daily, which a week-old
/// figure does not follow, so a Spot quote from the cache says how old it is).
pub const CATALOG_MAX_AGE_SECS: i64 = 7 * 24 * 3600;

/// Where [`load`] may find prices.
pub struct PriceSources<'a> {
    /// `--prices FILE`.
    pub override_file: Option<&'a Path>,
    /// The catalog cache file (`$XDG_CACHE_HOME/cloudrun/prices/…`), if there is a cache
    /// directory.
    pub cache_file: Option<PathBuf>,
    /// The Billing Catalog client; `None` keeps [`load`] off the network.
    pub catalog: Option<&'a fetch::CatalogClient>,
    /// Fetch even when the cache is fresh (`prices --refresh`).
    pub refresh: bool,
    pub now: DateTime<Utc>,
}

/// A book and what went wrong on the way (each a warning for the user: a failed refresh
/// is not an error, the next source is used).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub book: PriceBook,
    pub warnings: Vec<String>,
    /// When the catalog figures in the book were fetched, if any are.
    pub catalog_fetched_at: Option<DateTime<Utc>>,
}

/// Assemble the price book: prices.toml over the (cached or fresh) catalog over the
/// built-in table. Only a bad prices.toml is an error (the user named that file); every
/// catalog or cache problem is a warning and a fall back.
pub async fn load(src: &PriceSources<'_>) -> Result<Loaded, PricesError> {
    let mut book = PriceBook::builtin();
    let mut warnings = Vec::new();
    let cached = match &src.cache_file {
        Some(path) => match cache::read(path) {
            Ok(c) => c,
            Err(e) => {
                warnings.push(format!("{e}; ignoring the cache"));
                None
            }
        },
        None => None,
    };
    // A cache from another endpoint (an emulator's, say) is not this endpoint's prices.
    let cached = match (cached, src.catalog) {
        (Some(c), Some(client)) if c.endpoint != client.base_url() => None,
        (c, _) => c,
    };
    let fresh = cached.as_ref().is_some_and(|c| {
        (src.now - c.fetched_at).num_seconds() < CATALOG_MAX_AGE_SECS && !src.refresh
    });
    let mut catalog: Option<cache::CachedCatalog> = if fresh { cached.clone() } else { None };
    if catalog.is_none() {
        if let Some(client) = src.catalog {
            match client.fetch_compute_skus().await {
                Ok(skus) => {
                    let (layer, notes) = catalog::layer_from_skus(&skus, src.now);
                    warnings.extend(notes);
                    let c = cache::CachedCatalog {
                        schema: cache::CACHE_SCHEMA,
                        fetched_at: src.now,
                        endpoint: client.base_url().to_string(),
                        sku_count: skus.len(),
                        layer,
                    };
                    if let Some(path) = &src.cache_file {
                        if let Err(e) = cache::write(path, &c) {
                            warnings.push(format!("{e}; the prices were used but not cached"));
                        }
                    }
                    catalog = Some(c);
                }
                Err(e) => {
                    let fallback = if cached.is_some() {
                        "using the cached catalog from before"
                    } else {
                        "using the built-in estimates"
                    };
                    warnings.push(format!("could not read Google's prices ({e}); {fallback}"));
                    catalog = cached;
                }
            }
        } else {
            catalog = cached;
        }
    }
    let catalog_fetched_at = catalog.as_ref().map(|c| c.fetched_at);
    if let Some(c) = catalog {
        book = book.with_front(c.layer);
    }
    if let Some(path) = src.override_file {
        book = book.with_front(load_toml(path)?);
    }
    Ok(Loaded {
        book,
        warnings,
        catalog_fetched_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q<'a>(
        region: &'a str,
        mt: &'a str,
        gpu: Option<(&'a str, u32)>,
        spot: bool,
    ) -> QuoteRequest<'a> {
        QuoteRequest {
            region,
            machine_type: mt,
            gpu,
            spot,
        }
    }

    #[test]
    fn builtin_a2_quote_adds_gpu_and_family_parts() {
        let b = PriceBook::builtin();
        let e = b.quote(&q(
            "us-central1",
            "a2-highgpu-1g",
            Some(("nvidia-tesla-a100", 1)),
            false,
        ));
        assert!(e.is_complete() && e.estimate, "{e:?}");
        // The catalog's a2-highgpu-1g VM part (0.73948) + one A100 (2.93391).
        assert!((e.usd_per_hour - (0.73948 + 2.93391)).abs() < 1e-9, "{e:?}");
        let spot = b.quote(&q(
            "us-central1",
            "a2-highgpu-1g",
            Some(("nvidia-tesla-a100", 1)),
            true,
        ));
        assert!(spot.usd_per_hour < e.usd_per_hour);
        assert!(e.describe().contains("estimate"), "{}", e.describe());
    }

    #[test]
    fn n1_shapes_come_from_the_type_name() {
        assert_eq!(
            shape("n1-standard-8"),
            Some(Shape {
                family: "n1",
                vcpus: 8,
                memory_gib: 30.0
            })
        );
        assert_eq!(shape("n1-highmem-8").map(|s| s.memory_gib), Some(52.0));
        assert_eq!(shape("n1-weird-8"), None);
        assert_eq!(shape("e2-standard-4"), None);
    }

    #[test]
    fn a_missing_part_is_named_not_guessed() {
        let e = PriceBook::builtin().quote(&q(
            "us-central1",
            "n1-ultramem-40",
            Some(("nvidia-tesla-t4", 2)),
            false,
        ));
        assert!(!e.is_complete());
        assert!((e.usd_per_hour - 0.70).abs() < 1e-9);
        assert!(
            e.describe().contains("[machine.n1-ultramem-40]"),
            "{}",
            e.describe()
        );
        let e = PriceBook::builtin().quote(&q(
            "mars-north1",
            "g2-standard-8",
            Some(("nvidia-l4", 1)),
            false,
        ));
        assert_eq!(e.missing.len(), 2, "{e:?}");
        assert_eq!(e.usd_per_hour, 0.0);
    }

    #[test]
    fn prices_toml_overrides_and_completes_the_table() {
        let over = layer_from_toml(
            "taken = \"2026-11-01\"\n[machine.n1-ultramem-40]\non_demand = 5.3\nspot = 1.6\n[gpu.nvidia-tesla-t4]\nspot = 0.11\n",
            "prices.toml",
        )
        .unwrap();
        let b = PriceBook::builtin().with_front(over);
        let e = b.quote(&q(
            "europe-west4",
            "n1-ultramem-40",
            Some(("nvidia-tesla-t4", 1)),
            true,
        ));
        assert!(e.is_complete());
        assert!((e.usd_per_hour - 1.71).abs() < 1e-9);
        // Only Spot was overridden for the T4: on-demand comes from the built-in table.
        let od = b.quote(&q(
            "europe-west4",
            "n1-ultramem-40",
            Some(("nvidia-tesla-t4", 1)),
            false,
        ));
        assert!((od.usd_per_hour - (5.3 + 0.3675)).abs() < 1e-9);
        assert!(od.estimate);
        assert!(
            od.source
                .starts_with("prices.toml (taken 2026-11-01) + built-in"),
            "{}",
            od.source
        );
        assert!(!e.estimate, "{e:?}");
    }

    #[test]
    fn a_bad_prices_toml_says_what_is_wrong() {
        let err = layer_from_toml("[gpu.x]\nondemand = 1", "p.toml").unwrap_err();
        assert!(
            err.to_string()
                .contains("p.toml is not a valid prices.toml"),
            "{err}"
        );
        let err = layer_from_toml("[gpu.x]\non_demand = -1.0", "p.toml").unwrap_err();
        assert!(err.to_string().contains("gpu.x"), "{err}");
    }

    #[test]
    fn buckets_hold_their_regions() {
        let us = BucketPlace {
            location: "US".into(),
            location_type: "multi-region".into(),
            data_locations: vec![],
        };
        assert!(us.contains("us-east4") && !us.contains("europe-west4"));
        let nam4 = BucketPlace {
            location: "NAM4".into(),
            location_type: "dual-region".into(),
            data_locations: vec![],
        };
        assert!(nam4.contains("us-east1") && !nam4.contains("us-west1"));
        let r = BucketPlace {
            location: "US-CENTRAL1".into(),
            location_type: "region".into(),
            data_locations: vec![],
        };
        assert!(r.contains("us-central1") && !r.contains("us-east1"));
        let b = PriceBook::builtin();
        assert_eq!(b.egress_per_gib(&r, "us-central1"), 0.0);
        assert_eq!(
            b.egress_per_gib(&r, "us-east1"),
            b.egress.same_continent_per_gib
        );
        assert_eq!(
            b.egress_per_gib(&r, "europe-west4"),
            b.egress.inter_continent_per_gib
        );
        assert_eq!(continent_of("EU"), "europe");
        assert_eq!(continent_of("northamerica-northeast1"), "north-america");
    }
}
