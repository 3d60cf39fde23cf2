//! Which default zones a launch tries, in which order: zones inside the bucket's location
//! first, then the rest of the bucket's continent, each group by price; zones on another
//! continent only with `--any-region`, and then with what reading the project's code and
//! data from there costs in egress. A zone list the user gave (`--zone`, `zones =`) is
//! tried as given.
//!
//! Pure: the bucket's location (`buckets.get`) and the pushed bytes are handed in.

use cloudrun::prices::BucketPlace;

use crate::plan::LaunchPlan;

/// Bytes in a GiB, for egress prices quoted per GiB.
const BYTES_PER_GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The zones to try and what to tell the user about them.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneOrder {
    pub zones: Vec<String>,
    /// Zones left out because they are on another continent than the data.
    pub far: Vec<String>,
    /// One line per zone tried: price, and egress when it is not free.
    pub lines: Vec<String>,
}

/// Why no zone is left.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no zone to try is on the same continent as the bucket ({location}): {far} would read the code and data across continents; pass --any-region to allow that, or choose zones with --zone")]
pub struct NoNearZone {
    pub location: String,
    pub far: String,
}

/// The egress cost of reading `bytes` from `bucket` into `zone`.
pub fn egress_usd(plan: &LaunchPlan, bucket: &BucketPlace, zone: &str, bytes: u64) -> f64 {
    plan.egress
        .per_gib(bucket, cloudrun::prices::region_of(zone))
        * bytes as f64
        / BYTES_PER_GIB
}

/// Order the plan's zones near `bucket`. `bytes` is the size of the project's code and
/// data (the manifest), for the egress estimate.
pub fn order(plan: &LaunchPlan, bucket: &BucketPlace, bytes: u64) -> Result<ZoneOrder, NoNearZone> {
    let continent = bucket.continent();
    let mut keyed: Vec<(u8, f64, usize, String)> = plan
        .zones
        .iter()
        .enumerate()
        .map(|(i, z)| {
            let region = cloudrun::prices::region_of(z);
            let group = if bucket.contains(region) {
                0
            } else if cloudrun::prices::continent_of(region) == continent {
                1
            } else {
                2
            };
            let price = plan.quote_for_zone(z).usd_per_hour;
            (group, price, i, z.clone())
        })
        .collect();
    if plan.zones_default {
        keyed.sort_by(|a, b| {
            (a.0, a.1, a.2)
                .partial_cmp(&(b.0, b.1, b.2))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    let mut far = Vec::new();
    let mut zones = Vec::new();
    for (group, _, _, z) in &keyed {
        if *group == 2 && plan.zones_default && !plan.any_region {
            far.push(z.clone());
        } else {
            zones.push(z.clone());
        }
    }
    if zones.is_empty() {
        return Err(NoNearZone {
            location: bucket.location.clone(),
            far: far.join(", "),
        });
    }
    let lines = zones
        .iter()
        .map(|z| {
            let e = plan.quote_for_zone(z);
            let egress = egress_usd(plan, bucket, z, bytes);
            let mut line = format!("{z}: ${:.2}/h ({})", e.usd_per_hour, e.describe());
            if egress > 0.0 {
                line.push_str(&format!(
                    "; reading {:.2} GiB of code and data from {} costs about ${egress:.2} in egress ({})",
                    bytes as f64 / BYTES_PER_GIB,
                    bucket.location,
                    plan.egress_source
                ));
            }
            line
        })
        .collect();
    Ok(ZoneOrder { zones, far, lines })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{self, tests as pt};
    use cloudrun::prices::PriceBook;

    fn l4_plan() -> (tempfile::TempDir, LaunchPlan) {
        let dir = tempfile::tempdir().unwrap();
        let st = pt::good(dir.path());
        let prices = PriceBook::builtin();
        let cmd = vec!["main.py".to_string()];
        let plan = plan::build(&st, &pt::inputs(&cmd, &prices)).unwrap();
        (dir, plan)
    }

    fn place(location: &str, kind: &str) -> BucketPlace {
        BucketPlace {
            location: location.into(),
            location_type: kind.into(),
            data_locations: vec![],
        }
    }

    #[test]
    fn zones_inside_the_bucket_come_first_then_the_continent_by_price() {
        let (_d, plan) = l4_plan();
        assert!(plan.zones_default);
        let o = order(&plan, &place("US-CENTRAL1", "region"), 1 << 30).unwrap();
        assert_eq!(
            o.zones[..4],
            [
                "us-central1-a",
                "us-central1-b",
                "us-central1-c",
                "us-east4-a"
            ]
        );
        // us-east4's L4 and G2 figures are below us-east1's and us-west1's.
        assert!(
            o.zones.iter().position(|z| z == "us-east4-a")
                < o.zones.iter().position(|z| z == "us-east1-b")
        );
        assert_eq!(o.far, ["europe-west4-a"]);
        assert!(!o.lines[0].contains("egress"), "{}", o.lines[0]);
        // 1 GiB from us-central1 into us-east4: the same-continent rate.
        assert!(
            o.lines[3].contains("about $0.02 in egress"),
            "{}",
            o.lines[3]
        );
    }

    #[test]
    fn a_european_bucket_keeps_the_run_in_europe_unless_any_region() {
        let (_d, mut plan) = l4_plan();
        let eu = place("EU", "multi-region");
        let o = order(&plan, &eu, 10 << 30).unwrap();
        assert_eq!(o.zones, ["europe-west4-a"]);
        assert_eq!(o.far.len(), 8);
        plan.any_region = true;
        let o = order(&plan, &eu, 10 << 30).unwrap();
        assert_eq!(o.zones.first().map(String::as_str), Some("europe-west4-a"));
        assert_eq!(o.zones.len(), 9);
        // 10 GiB across the Atlantic at $0.08/GiB.
        assert!(
            o.lines[1].contains("about $0.80 in egress"),
            "{}",
            o.lines[1]
        );
    }

    #[test]
    fn no_zone_near_the_data_says_how_to_allow_far_ones() {
        let (_d, plan) = l4_plan();
        let err = order(&plan, &place("ASIA", "multi-region"), 0).unwrap_err();
        assert!(err.to_string().contains("--any-region"), "{err}");
        // A zone list the user gave is tried as given, far or not.
        let (_d, mut plan) = l4_plan();
        plan.zones_default = false;
        let o = order(&plan, &place("ASIA", "multi-region"), 0).unwrap();
        assert_eq!(o.zones, plan.zones);
    }
}
