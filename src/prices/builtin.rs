//! The built-in price table: the fallback for offline use and for tests, and the filler
//! for any part Google's catalog did not answer. Every figure here is an **estimate**
//! and every quote that uses one says so.
//!
//! Source: the SkyPilot GCP catalog, `skypilot-org/skypilot-catalog`
//! `catalogs/v8/gcp/vms.csv` at commit `8427bbff988abdd050a9f51addd314ef31cb4e85`
//! (scraped by SkyPilot from the Cloud Billing Catalog; read for this table on
//! 2026-12-02). These are third-party catalog values, not Google's list, so:
//!
//! - **Family rates.** The catalog gives whole-VM prices without GPUs per machine type.
//!   Each region's row below is one such price for a reference shape; the split between
//!   vCPU-hours and GiB-hours is Google's us-central1 on-demand split for that family
//!   (N1 and A2: $0.031611 per vCPU-hour and $0.004237 per GiB-hour, which reproduce the
//!   catalog's n1-standard-4 and a2-highgpu-1g rows exactly; G2: $0.024988 and
//!   $0.0029274, which reproduce g2-standard-8). A3 has no published split here; every
//!   A3 shape has 9 GiB per vCPU, so the split is A2's proportion and does not change any
//!   A3 price. Rates elsewhere and for Spot are the reference price scaled by that split.
//! - **Rows the catalog gets wrong are replaced, upward,** so that a budget enforced with
//!   them stops the VM early rather than late (a budget spent at half the real price
//!   costs twice the budget): [`SUSPECT`] lists each one and why.
//! - Only the regions the launcher's default zones name are here; a zone elsewhere is
//!   priced from the catalog or a prices.toml, or has no price. A new row of the GPU
//!   table ([`crate::gpu_table`]) needs its GPU rows here (and, for a new machine family,
//!   its `SPLIT` and `FAMILY_ROWS`); the table's test says which are missing.

use std::collections::BTreeMap;

use super::{EgressRates, FamilyRate, PriceLayer, Rate, RegionPrices};

/// Where the built-in figures come from, shown with every quote that uses them.
pub const SOURCE: &str = "built-in table (SkyPilot GCP catalog v8 @8427bbf, read 2026-12-02)";

/// Egress of reading the bucket from another region, per GiB.
pub const EGRESS: EgressRates = EgressRates {
    same_continent_per_gib: 0.02,
    inter_continent_per_gib: 0.08,
    oceania_per_gib: 0.15,
};

/// Where [`EGRESS`] comes from.
pub const EGRESS_SOURCE: &str = "built-in estimate of Cloud Storage data transfer within Google Cloud (same continent $0.02/GiB, between continents $0.08/GiB, Oceania $0.15/GiB; not read from the catalog)";

/// Catalog rows replaced, and why.
pub const SUSPECT: &[&str] = &[
    "nvidia-h100-80gb on demand in us-central1 and us-west1: the catalog says 4.20076, under half its own us-east4 figure (9.79655) and its a3-highgpu-8g rows; 9.79655 is used",
    "nvidia-a100-80gb on demand in us-central1, us-east4 and europe-west4: the catalog's figures (1.8462, 2.07937, 2.03285) sit at or below its own Spot figures; its us-east5 figure 4.4242 is used in every region",
    "nvidia-tesla-a100 on demand in europe-west4: the catalog says 1.61365, half its US figure; the US figure 2.93391 is used",
];

/// Google's us-central1 on-demand split per family: (vCPU-hour, GiB-hour).
const SPLIT: &[(&str, f64, f64)] = &[
    ("n1", 0.031611, 0.004237),
    ("a2", 0.031611, 0.004237),
    ("g2", 0.024988, 0.0029274),
    // A2's proportion scaled to a3-highgpu-1g's us-central1 price (1.18251 for 26 vCPU,
    // 234 GiB): 1.18251 / (26 × 0.031611 + 234 × 0.004237) = 0.652117.
    ("a3", 0.031611 * 0.652117, 0.004237 * 0.652117),
];

/// (family, region, reference vCPUs, reference GiB, on-demand, Spot): the catalog's
/// whole-VM price without GPUs of the reference shape.
const FAMILY_ROWS: &[(&str, &str, u32, f64, f64, f64)] = &[
    // n1-standard-4
    ("n1", "us-central1", 4, 15.0, 0.19, 0.05802),
    ("n1", "us-east1", 4, 15.0, 0.19, 0.05802),
    ("n1", "us-west1", 4, 15.0, 0.19, 0.05802),
    ("n1", "us-east4", 4, 15.0, 0.21398, 0.0452),
    ("n1", "europe-west4", 4, 15.0, 0.20917, 0.08367),
    // g2-standard-8
    ("g2", "us-central1", 8, 32.0, 0.29358, 0.11747),
    ("g2", "us-east1", 8, 32.0, 0.29358, 0.11747),
    ("g2", "us-west1", 8, 32.0, 0.29358, 0.11747),
    ("g2", "us-east4", 8, 32.0, 0.29262, 0.11702),
    ("g2", "europe-west4", 8, 32.0, 0.30857, 0.13618),
    // a2-highgpu-1g; a2-ultragpu-1g (12 vCPU, 170 GiB) where the catalog has only that
    ("a2", "us-central1", 12, 85.0, 0.73948, 0.36975),
    ("a2", "us-east1", 12, 85.0, 0.73948, 0.36975),
    ("a2", "us-west1", 12, 85.0, 0.73948, 0.36975),
    ("a2", "europe-west4", 12, 85.0, 0.81406, 0.31824),
    ("a2", "us-east4", 12, 170.0, 1.23833, 0.47993),
    ("a2", "us-east5", 12, 170.0, 1.09962, 0.31193),
    // a3-highgpu-1g
    ("a3", "us-central1", 26, 234.0, 1.18251, 0.34406),
    ("a3", "us-west1", 26, 234.0, 1.18251, 0.34406),
    ("a3", "us-east4", 26, 234.0, 1.18251, 0.25706),
    ("a3", "us-east5", 26, 234.0, 1.33186, 0.2769),
    ("a3", "europe-west4", 26, 234.0, 1.24163, 0.25831),
];

/// (accelerator, region, on-demand, Spot) per GPU-hour.
const GPU_ROWS: &[(&str, &str, f64, f64)] = &[
    ("nvidia-tesla-t4", "us-central1", 0.35, 0.175),
    ("nvidia-tesla-t4", "us-east1", 0.35, 0.175),
    ("nvidia-tesla-t4", "us-west1", 0.35, 0.175),
    ("nvidia-tesla-t4", "us-east4", 0.37, 0.1566),
    ("nvidia-tesla-t4", "europe-west4", 0.3675, 0.175),
    ("nvidia-tesla-v100", "us-central1", 2.48, 1.1458),
    ("nvidia-tesla-v100", "us-east1", 2.48, 1.1458),
    ("nvidia-tesla-v100", "us-west1", 2.48, 1.1458),
    ("nvidia-tesla-v100", "europe-west4", 2.604, 0.9494),
    ("nvidia-tesla-p100", "us-central1", 1.46, 0.6699),
    ("nvidia-tesla-p100", "us-east1", 1.46, 0.6699),
    ("nvidia-tesla-p100", "us-west1", 1.46, 0.6699),
    ("nvidia-tesla-p100", "europe-west4", 1.533, 0.2601),
    ("nvidia-l4", "us-central1", 0.56004, 0.2231),
    ("nvidia-l4", "us-east1", 0.56004, 0.2231),
    ("nvidia-l4", "us-west1", 0.56004, 0.2231),
    ("nvidia-l4", "us-east4", 0.55821, 0.2233),
    ("nvidia-l4", "europe-west4", 0.58804, 0.2322),
    ("nvidia-tesla-a100", "us-central1", 2.93391, 1.4341),
    ("nvidia-tesla-a100", "us-east1", 2.93391, 1.4341),
    ("nvidia-tesla-a100", "us-west1", 2.93391, 1.4341),
    ("nvidia-tesla-a100", "europe-west4", 2.93391, 1.1691), // on-demand: SUSPECT
    ("nvidia-a100-80gb", "us-central1", 4.4242, 1.964),     // on-demand: SUSPECT
    ("nvidia-a100-80gb", "us-east4", 4.4242, 1.7697),       // on-demand: SUSPECT
    ("nvidia-a100-80gb", "us-east5", 4.4242, 1.272),
    ("nvidia-a100-80gb", "europe-west4", 4.4242, 2.1626), // on-demand: SUSPECT
    ("nvidia-h100-80gb", "us-central1", 9.79655, 2.8501), // on-demand: SUSPECT
    ("nvidia-h100-80gb", "us-west1", 9.79655, 2.8501),    // on-demand: SUSPECT
    ("nvidia-h100-80gb", "us-east4", 9.79655, 2.1291),
    ("nvidia-h100-80gb", "us-east5", 11.03385, 2.2934),
    ("nvidia-h100-80gb", "europe-west4", 12.73552, 2.6465),
];

/// The family's us-central1 on-demand split, `None` for a family not in [`SPLIT`].
fn split(family: &str) -> Option<(f64, f64)> {
    SPLIT
        .iter()
        .find(|(f, _, _)| *f == family)
        .map(|(_, v, r)| (*v, *r))
}

/// The built-in table as a price layer.
pub fn layer() -> PriceLayer {
    let mut regions: BTreeMap<String, RegionPrices> = BTreeMap::new();
    for (family, region, vcpus, gib, od, spot) in FAMILY_ROWS {
        let Some((v0, r0)) = split(family) else {
            continue;
        };
        let base = v0 * f64::from(*vcpus) + r0 * gib;
        let rate = FamilyRate {
            vcpu: Rate {
                on_demand: Some(v0 * od / base),
                spot: Some(v0 * spot / base),
            },
            ram_gib: Rate {
                on_demand: Some(r0 * od / base),
                spot: Some(r0 * spot / base),
            },
        };
        regions
            .entry(region.to_string())
            .or_default()
            .family
            .insert(family.to_string(), rate);
    }
    for (accel, region, od, spot) in GPU_ROWS {
        regions.entry(region.to_string()).or_default().gpu.insert(
            accel.to_string(),
            Rate {
                on_demand: Some(*od),
                spot: Some(*spot),
            },
        );
    }
    PriceLayer {
        source: SOURCE.into(),
        estimate: true,
        regions,
        gpu_everywhere: BTreeMap::new(),
        machine_everywhere: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prices::{PriceBook, QuoteRequest};

    fn vm(region: &str, mt: &str, spot: bool) -> f64 {
        let e = PriceBook::builtin().quote(&QuoteRequest {
            region,
            machine_type: mt,
            gpu: None,
            spot,
        });
        assert!(e.is_complete(), "{e:?}");
        e.usd_per_hour
    }

    /// The family rates reproduce the catalog's own whole-VM rows, including shapes that
    /// were not the reference.
    #[test]
    fn family_rates_reproduce_the_catalog_rows() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-4;
        assert!(close(vm("us-central1", "n1-standard-4", false), 0.19));
        assert!(close(vm("us-central1", "n1-standard-32", false), 1.51999));
        assert!(close(vm("us-east4", "n1-standard-32", true), 0.36156));
        assert!(close(vm("us-central1", "g2-standard-4", false), 0.14679));
        assert!(close(vm("us-central1", "g2-standard-48", false), 1.7615));
        assert!(close(vm("europe-west4", "g2-standard-96", true), 1.63411));
        assert!(close(vm("us-central1", "a2-ultragpu-1g", false), 1.09962));
        assert!(close(vm("us-central1", "a2-megagpu-16g", false), 8.79698));
        assert!(close(vm("europe-west4", "a2-ultragpu-1g", false), 1.2105));
        assert!(close(vm("us-central1", "a3-highgpu-8g", false), 9.46006));
        assert!(close(vm("us-central1", "a3-highgpu-4g", false), 4.73003));
    }

    // That every shape the launcher can create is priced here, on demand and Spot, in
    // every region its default zones name, is checked row by row in
    // `gpu_table::tests::every_row_is_whole_and_consistent`.

    #[test]
    fn spot_is_cheaper_than_on_demand_everywhere() {
        let l = layer();
        for (region, r) in &l.regions {
            for (g, rate) in &r.gpu {
                assert!(rate.spot < rate.on_demand, "{g} in {region}: {rate:?}");
            }
        }
    }
}
