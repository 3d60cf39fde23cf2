//! Which default zones a launch tries, in which order: zones inside the bucket's location
//! first, then the rest of the bucket's continent, each group by price; zones on another
//! continent only with `--any-region`, and then with what reading the project's code and
//! data from there costs in egress. A zone list the user gave (`--zone`, `zones =`) is
//! tried as given.
//!
//! Pure: the bucket's location (`buckets.get`) and the pushed bytes are handed in.

use cloudrun::prices::{BucketPlace, PriceBook};

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
pub fn egress_usd(book: &PriceBook, bucket: &BucketPlace, zone: &str, bytes: u64) -> f64 {
    book.egress_per_gib(bucket, cloudrun::prices::region_of(zone)) * bytes as f64 / BYTES_PER_GIB
}

/// Order the plan's zones near `bucket`. `bytes` is the size of the project's code and
/// data (the manifest), for the egress estimate.
pub fn order(
    plan: &LaunchPlan,
    book: &PriceBook,
    bucket: &BucketPlace,
    bytes: u64,
) -> Result<ZoneOrder, NoNearZone> {
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
            let egress = egress_usd(book, bucket, z, bytes);
            let mut line = format!("{z}: ${:.2}/h ({})", e.usd_per_hour, e.describe());
            if egress > 0.0 {
                line.push_str(&format!(
                    "; reading {:.2} GiB of code and data from {} costs about ${egress:.2} in egress ({})",
                    bytes as f64 / BYTES_PER_GIB,
                    bucket.location,
                    book.egress_source
                ));
            }
            line
        })
        .collect();
    Ok(ZoneOrder { zones, far, lines })
}
