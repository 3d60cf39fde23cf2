//! Zone facts: the Compute Engine regions and their zone letters, and the checks of a
//! zone and of a GPU/zone pair against them and the GPU table's charted zones
//! ([`cloudrun::gpu_table::Launch::zones`]). `plan` uses them to refuse a zone that does
//! not exist (`us-central1-z`) and a GPU/zone pair known not to exist (an H100 in
//! `us-central1-f`), naming the zones that have it.
//!
//! Pure data, no network. The region list follows Google's "Regions and zones" page as
//! recalled when the table was made; Compute's own `zones.list` is the truth. Only a
//! region a GPU's row lists is *charted* for it: a zone of an uncharted region is let
//! through (with no claim either way), so a gap in the table never blocks a real zone;
//! only a wrong entry could.

use crate::gpu::GpuKind;

/// Every Compute Engine region cloudrun knows, with its zone letters.
pub const REGIONS: &[(&str, &str)] = &[
    ("africa-south1", "abc"),
    ("asia-east1", "abc"),
    ("asia-east2", "abc"),
    ("asia-northeast1", "abc"),
    ("asia-northeast2", "abc"),
    ("asia-northeast3", "abc"),
    ("asia-south1", "abc"),
    ("asia-south2", "abc"),
    ("asia-southeast1", "abc"),
    ("asia-southeast2", "abc"),
    ("asia-southeast3", "abc"),
    ("australia-southeast1", "abc"),
    ("australia-southeast2", "abc"),
    ("europe-central2", "abc"),
    ("europe-north1", "abc"),
    ("europe-north2", "abc"),
    ("europe-southwest1", "abc"),
    ("europe-west1", "bcd"),
    ("europe-west2", "abc"),
    ("europe-west3", "abc"),
    ("europe-west4", "abc"),
    ("europe-west6", "abc"),
    ("europe-west8", "abc"),
    ("europe-west9", "abc"),
    ("europe-west10", "abc"),
    ("europe-west12", "abc"),
    ("me-central1", "abc"),
    ("me-central2", "abc"),
    ("me-west1", "abc"),
    ("northamerica-northeast1", "abc"),
    ("northamerica-northeast2", "abc"),
    ("northamerica-south1", "abc"),
    ("southamerica-east1", "abc"),
    ("southamerica-west1", "abc"),
    ("us-central1", "abcf"),
    ("us-east1", "bcd"),
    ("us-east4", "abc"),
    ("us-east5", "abc"),
    ("us-south1", "abc"),
    ("us-west1", "abc"),
    ("us-west2", "abc"),
    ("us-west3", "abc"),
    ("us-west4", "abc"),
];

/// A zone name split into its region and letter (`us-central1-a` → `us-central1`, `a`).
fn split(zone: &str) -> Option<(&str, char)> {
    let (region, letter) = zone.rsplit_once('-')?;
    let mut chars = letter.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Some((region, c)),
        _ => None,
    }
}

/// Check that `zone` is a Compute Engine zone; the error says what is wrong and what
/// would be right.
pub fn check_zone(zone: &str) -> Result<(), String> {
    let Some((region, letter)) = split(zone) else {
        return Err(format!(
            "zone {zone:?} is not a zone name like us-central1-a (region, '-', one letter)"
        ));
    };
    match REGIONS.iter().find(|(r, _)| *r == region) {
        Some((_, letters)) if letters.contains(letter) => Ok(()),
        Some((_, letters)) => Err(format!(
            "zone {zone:?} does not exist: region {region} has zones {}",
            zones_of(region, letters).join(", ")
        )),
        None => Err(format!(
            "zone {zone:?} is in no Compute Engine region cloudrun knows ({region:?}); regions are named like us-central1 or europe-west4 (`gcloud compute zones list` lists them)"
        )),
    }
}

fn zones_of(region: &str, letters: &str) -> Vec<String> {
    letters.chars().map(|c| format!("{region}-{c}")).collect()
}

/// Whether `gpu` is offered in `zone`: `Some(false)` only when the table charts the
/// zone's region for that GPU and the zone is not among its zones; `None` when unknown.
pub fn offers(gpu: GpuKind, zone: &str) -> Option<bool> {
    let (region, letter) = split(zone)?;
    let (_, letters) = gpu.zones().iter().find(|(r, _)| *r == region)?;
    Some(letters.contains(letter))
}

/// Every zone the table knows to offer `gpu`.
pub fn zones_with(gpu: GpuKind) -> Vec<String> {
    gpu.zones()
        .iter()
        .flat_map(|(r, l)| zones_of(r, l))
        .collect()
}

/// Check a GPU/zone pair: an error, naming the zones that have the GPU, when the pair is
/// known not to exist.
pub fn check_gpu_in_zone(gpu: GpuKind, zone: &str) -> Result<(), String> {
    if offers(gpu, zone) == Some(false) {
        let region = split(zone).map(|(r, _)| r).unwrap_or(zone);
        let here: Vec<String> = zones_with(gpu)
            .into_iter()
            .filter(|z| z.starts_with(&format!("{region}-")))
            .collect();
        return Err(format!(
            "zone {zone} has no {gpu} GPUs ({}); zones that have them: {} (or leave --zone out: cloudrun then tries {})",
            if here.is_empty() {
                format!("none in {region}")
            } else {
                format!("in {region}: {}", here.join(", "))
            },
            zones_with(gpu).join(", "),
            gpu.default_zones().join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> GpuKind {
        crate::gpu::parse_gpu("h100").unwrap().0
    }

    #[test]
    fn zone_names_are_checked_against_the_regions() {
        assert_eq!(check_zone("us-central1-f"), Ok(()));
        assert_eq!(check_zone("europe-west1-b"), Ok(()));
        let e = check_zone("us-central1-z").unwrap_err();
        assert!(
            e.contains("us-central1-a, us-central1-b, us-central1-c, us-central1-f"),
            "{e}"
        );
        let e = check_zone("europe-west1-a").unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        assert!(check_zone("us-centrl1-a")
            .unwrap_err()
            .contains("no Compute Engine region"));
        assert!(check_zone("uscentral1")
            .unwrap_err()
            .contains("not a zone name"));
        assert!(check_zone("us-central1-ab").is_err());
    }

    #[test]
    fn a_gpu_in_a_charted_zone_without_it_is_refused_with_the_zones_that_have_it() {
        let e = check_gpu_in_zone(h100(), "us-central1-f").unwrap_err();
        assert!(e.contains("zone us-central1-f has no h100 GPUs"), "{e}");
        assert!(
            e.contains("in us-central1: us-central1-a, us-central1-b, us-central1-c"),
            "{e}"
        );
        assert!(e.contains("europe-west4-b"), "{e}");
        assert_eq!(check_gpu_in_zone(h100(), "us-central1-a"), Ok(()));
        // Uncharted: no claim, no refusal.
        assert_eq!(offers(h100(), "asia-south2-a"), None);
        assert_eq!(check_gpu_in_zone(h100(), "asia-south2-a"), Ok(()));
    }

    #[test]
    fn every_gpu_rows_zones_are_real_zones_and_its_default_zones_are_charted() {
        for gpu in GpuKind::all() {
            for (region, letters) in gpu.zones() {
                for z in zones_of(region, letters) {
                    assert_eq!(check_zone(&z), Ok(()), "{gpu}: {z}");
                }
            }
            for z in gpu.default_zones() {
                assert_eq!(check_zone(z), Ok(()), "{gpu} default {z}");
                assert_ne!(offers(gpu, z), Some(false), "{gpu} default zone {z}");
            }
        }
    }
}
