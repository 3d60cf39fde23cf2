//! Google's Cloud Billing Catalog SKUs (`services/6F81-5844-456A/skus`, the wire shape
//! in reference/billing-catalog.md §2) and how they become per-region rates: GPU-hours
//! by accelerator type, vCPU-hours and GiB-hours by machine family, on demand and Spot.
//!
//! The matcher follows the lessons in reference/billing-catalog.md §5: a SKU counts only
//! when its `resourceFamily`, `resourceGroup` and `usageType` fit and its description,
//! with the Spot wording and the `running in <place>` tail removed, is **exactly** one of
//! the GPU table's SKU names ([`crate::gpu_table::GpuRow::sku_names`]) or
//! `<FAMILY> Instance Core|Ram` for a family the table's machine types use; regions come from
//! `serviceRegions`, never from the description; commitment, custom, sole-tenancy and
//! virtual-workstation SKUs are lookalikes and never match. A SKU that matches but
//! cannot be read (no `pricingInfo`, another currency, an unexpected unit) is skipped
//! with a note, and its part falls back to the next price source.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{PriceLayer, RegionPrices};

/// One page of `skus.list`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListSkusPage {
    #[serde(default)]
    pub skus: Vec<Sku>,
    /// Empty or absent on the last page (both are seen; accept both).
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// The fields of a SKU that pricing needs; the rest are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sku {
    #[serde(default)]
    pub sku_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub category: Category,
    #[serde(default)]
    pub service_regions: Vec<String>,
    #[serde(default)]
    pub pricing_info: Vec<PricingInfo>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Category {
    #[serde(default)]
    pub resource_family: String,
    #[serde(default)]
    pub resource_group: String,
    #[serde(default)]
    pub usage_type: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PricingInfo {
    #[serde(default)]
    pub effective_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub pricing_expression: PricingExpression,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PricingExpression {
    #[serde(default)]
    pub usage_unit: String,
    #[serde(default)]
    pub tiered_rates: Vec<TierRate>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierRate {
    #[serde(default)]
    pub start_usage_amount: f64,
    #[serde(default)]
    pub unit_price: Money,
}

/// `google.type.Money`: `units` is an int64, so a JSON **string**; `nanos` a number.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Money {
    #[serde(default)]
    pub currency_code: String,
    #[serde(default)]
    pub units: Option<String>,
    #[serde(default)]
    pub nanos: i64,
}

impl Money {
    /// `units + nanos / 1e9`, or `None` when `units` is not an integer.
    pub fn amount(&self) -> Option<f64> {
        let units: i64 = match self.units.as_deref() {
            None | Some("") => 0,
            Some(u) => u.trim().parse().ok()?,
        };
        Some(units as f64 + self.nanos as f64 / 1e9)
    }
}

/// Machine families are priced from `<FAMILY> Instance Core|Ram` SKUs; N1's say
/// `N1 Predefined Instance Core|Ram`. The families are the GPU table's
/// ([`crate::gpu_table::machine_families`]).
const N1_SKU_STEM: &str = "n1 predefined instance";

/// Words that mark a lookalike SKU (lower case).
const LOOKALIKE_WORDS: &[&str] = &[
    "commitment",
    "custom",
    "premium",
    "reserved",
    "sole tenancy",
    "virtual workstation",
    "dws",
    "calendar",
];

/// What a SKU prices.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Gpu(&'static str),
    Vcpu(&'static str),
    Ram(&'static str),
}

/// The description without Spot wording and `running in …`, lower case, and whether the
/// wording said Spot.
fn normalise(description: &str) -> (String, bool) {
    let mut d = description.trim().to_ascii_lowercase();
    if let Some(i) = d.find(" running in ") {
        d.truncate(i);
    }
    let mut spot = false;
    for prefix in ["spot preemptible ", "preemptible "] {
        if let Some(rest) = d.strip_prefix(prefix) {
            d = rest.to_string();
            spot = true;
        }
    }
    for suffix in [
        " attached to spot preemptible vms",
        " attached to preemptible vms",
    ] {
        if let Some(rest) = d.strip_suffix(suffix) {
            d = rest.to_string();
            spot = true;
        }
    }
    (d, spot)
}

fn classify(sku: &Sku) -> Option<(Item, bool)> {
    if sku.category.resource_family != "Compute" {
        return None;
    }
    let spot_usage = match sku.category.usage_type.as_str() {
        "OnDemand" => false,
        "Preemptible" => true,
        _ => return None,
    };
    let lower = sku.description.to_ascii_lowercase();
    if LOOKALIKE_WORDS.iter().any(|w| lower.contains(w)) {
        return None;
    }
    let (name, spot_words) = normalise(&sku.description);
    let spot = spot_usage || spot_words;
    let group = sku.category.resource_group.as_str();
    if group == "GPU" {
        let accel = crate::gpu_table::sku_accelerator(&name)?;
        return Some((Item::Gpu(accel), spot));
    }
    if !matches!(group, "CPU" | "RAM" | "N1Standard") {
        return None;
    }
    for fam in crate::gpu_table::machine_families() {
        let stem = if fam == "n1" {
            N1_SKU_STEM.to_string()
        } else {
            format!("{fam} instance")
        };
        if name == format!("{stem} core") {
            return Some((Item::Vcpu(fam), spot));
        }
        if name == format!("{stem} ram") {
            return Some((Item::Ram(fam), spot));
        }
    }
    None
}

/// The unit a SKU of this item must be billed in.
fn expected_unit(item: &Item) -> &'static str {
    match item {
        Item::Gpu(_) | Item::Vcpu(_) => "h",
        Item::Ram(_) => "GiBy.h",
    }
}

/// The unit price of a matched SKU, or why it cannot be read.
fn unit_price(sku: &Sku, item: &Item) -> Result<f64, String> {
    let who = format!("SKU {} ({:?})", sku.sku_id, sku.description);
    let info = sku
        .pricing_info
        .last()
        .ok_or_else(|| format!("{who} has no pricingInfo"))?;
    let expr = &info.pricing_expression;
    let want = expected_unit(item);
    if expr.usage_unit != want {
        return Err(format!(
            "{who} is priced per {:?}, not per {want:?}",
            expr.usage_unit
        ));
    }
    let tier = expr
        .tiered_rates
        .iter()
        .find(|t| t.start_usage_amount == 0.0)
        .ok_or_else(|| format!("{who} has no tier starting at 0"))?;
    if tier.unit_price.currency_code != "USD" {
        return Err(format!(
            "{who} is priced in {:?}, not USD",
            tier.unit_price.currency_code
        ));
    }
    let p = tier.unit_price.amount().ok_or_else(|| {
        format!(
            "{who} has units {:?}, not an integer",
            tier.unit_price.units
        )
    })?;
    if !(p.is_finite() && p >= 0.0) {
        return Err(format!("{who} has a price of {p}"));
    }
    Ok(p)
}

/// Turn the Compute SKUs into a price layer; the notes say which matching SKUs were
/// skipped and why.
pub fn layer_from_skus(skus: &[Sku], fetched_at: DateTime<Utc>) -> (PriceLayer, Vec<String>) {
    let mut regions: BTreeMap<String, RegionPrices> = BTreeMap::new();
    let mut notes = Vec::new();
    for sku in skus {
        let Some((item, spot)) = classify(sku) else {
            continue;
        };
        let price = match unit_price(sku, &item) {
            Ok(p) => p,
            Err(why) => {
                notes.push(format!("Billing Catalog: {why}; skipped"));
                continue;
            }
        };
        for region in &sku.service_regions {
            let r = regions.entry(region.clone()).or_default();
            let rate = match &item {
                Item::Gpu(a) => r.gpu.entry(a.to_string()).or_default(),
                Item::Vcpu(f) => &mut r.family.entry(f.to_string()).or_default().vcpu,
                Item::Ram(f) => &mut r.family.entry(f.to_string()).or_default().ram_gib,
            };
            // Two SKUs for one part: keep the higher, so a budget stops early, not late.
            let keep = rate.get(spot).map_or(price, |old| old.max(price));
            rate.set(spot, keep);
        }
    }
    let layer = PriceLayer {
        source: format!(
            "Cloud Billing Catalog (fetched {})",
            fetched_at.format("%Y-%m-%d %H:%M UTC")
        ),
        estimate: false,
        regions,
        gpu_everywhere: BTreeMap::new(),
        machine_everywhere: BTreeMap::new(),
    };
    (layer, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(desc: &str, group: &str, usage: &str, unit: &str, units: &str, nanos: i64) -> Sku {
        Sku {
            sku_id: "X".into(),
            description: desc.into(),
            category: Category {
                resource_family: "Compute".into(),
                resource_group: group.into(),
                usage_type: usage.into(),
            },
            service_regions: vec!["us-central1".into()],
            pricing_info: vec![PricingInfo {
                effective_time: None,
                pricing_expression: PricingExpression {
                    usage_unit: unit.into(),
                    tiered_rates: vec![TierRate {
                        start_usage_amount: 0.0,
                        unit_price: Money {
                            currency_code: "USD".into(),
                            units: Some(units.into()),
                            nanos,
                        },
                    }],
                },
            }],
        }
    }

    #[test]
    fn descriptions_match_exactly_not_by_substring() {
        let on = |d: &str, g: &str| classify(&sku(d, g, "OnDemand", "h", "0", 1));
        assert_eq!(
            on("Nvidia L4 GPU running in Virginia", "GPU"),
            Some((Item::Gpu("nvidia-l4"), false))
        );
        assert_eq!(
            on(
                "Nvidia L4 GPU attached to Spot Preemptible VMs running in Virginia",
                "GPU"
            ),
            Some((Item::Gpu("nvidia-l4"), true))
        );
        assert_eq!(
            on(
                "Nvidia L4 GPU Virtual Workstation running in Americas",
                "GPU"
            ),
            None
        );
        assert_eq!(
            on("Nvidia H100 80GB Mega GPU running in Americas", "GPU"),
            None
        );
        assert_eq!(
            on("Nvidia Tesla A100 80GB GPU running in Americas", "GPU"),
            Some((Item::Gpu("nvidia-a100-80gb"), false))
        );
        assert_eq!(
            on("Spot Preemptible G2 Instance Core running in Iowa", "CPU"),
            Some((Item::Vcpu("g2"), true))
        );
        assert_eq!(
            on(
                "N1 Predefined Instance Ram running in Americas",
                "N1Standard"
            ),
            Some((Item::Ram("n1"), false))
        );
        assert_eq!(
            on("Commitment v1: A2 Cpu in Americas for 1 Year", "CPU"),
            None
        );
        assert_eq!(on("Custom Instance Core running in Americas", "CPU"), None);
        assert_eq!(on("A2 Instance Core running in Americas", "GPU"), None);
        let c1 = classify(&sku(
            "A2 Instance Core running in Americas",
            "CPU",
            "Commit1Yr",
            "h",
            "0",
            1,
        ));
        assert_eq!(c1, None);
    }

    #[test]
    fn units_and_nanos_make_the_price_and_bad_skus_are_noted() {
        let good = sku(
            "Nvidia Tesla A100 GPU running in Americas",
            "GPU",
            "OnDemand",
            "h",
            "2",
            933_908_000,
        );
        let mut no_price = sku(
            "Nvidia L4 GPU running in Americas",
            "GPU",
            "OnDemand",
            "h",
            "0",
            1,
        );
        no_price.pricing_info.clear();
        let wrong_unit = sku(
            "G2 Instance Ram running in Iowa",
            "RAM",
            "OnDemand",
            "h",
            "0",
            1,
        );
        let (layer, notes) = layer_from_skus(&[good, no_price, wrong_unit], Utc::now());
        let r = &layer.regions["us-central1"];
        assert!((r.gpu["nvidia-tesla-a100"].on_demand.unwrap() - 2.933908).abs() < 1e-12);
        assert!(!r.gpu.contains_key("nvidia-l4"));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("no pricingInfo"), "{notes:?}");
        assert!(notes[1].contains("not per \"GiBy.h\""), "{notes:?}");
    }
}
