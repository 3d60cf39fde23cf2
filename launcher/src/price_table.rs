//! `cloudrun-launch prices`: the table a user checks before spending. One row per GPU
//! shape and region, on demand and Spot, each marked when it is an estimate, with the
//! sources under it. Pure: the book comes in, text goes out.

use cloudrun::prices::{Estimate, PriceBook, QuoteRequest};

use crate::gpu::{self, GpuKind, Hardware, HardwareError};

fn shapes(gpu: Option<&str>) -> Result<Vec<Hardware>, HardwareError> {
    match gpu {
        Some(g) if g.contains(':') => Ok(vec![gpu::resolve(Some(g), None)?]),
        Some(g) => {
            let (kind, _) = gpu::parse_gpu(g)?;
            Ok(all_counts(kind))
        }
        None => Ok(GpuKind::all().flat_map(all_counts).collect()),
    }
}

/// One shape per GPU count the kind's row offers, fewest GPUs first.
fn all_counts(kind: GpuKind) -> Vec<Hardware> {
    kind.counts()
        .filter_map(|n| gpu::resolve(Some(&format!("{}:{n}", kind.short())), None).ok())
        .collect()
}

fn cell(e: &Estimate) -> String {
    if e.is_complete() {
        format!("{:.4}{}", e.usd_per_hour, if e.estimate { "*" } else { "" })
    } else {
        "-".into()
    }
}

/// The table for `gpu` (all when `None`) in `region` (a zone is taken as its region; all
/// regions with a price when `None`).
pub fn render(
    book: &PriceBook,
    gpu: Option<&str>,
    region: Option<&str>,
    catalog_fetched_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<String, HardwareError> {
    let shapes = shapes(gpu)?;
    let regions: Vec<String> = match region {
        Some(r) => {
            let r = r.trim();
            // A zone (us-central1-a) names its region.
            let is_zone = r.rsplit_once('-').is_some_and(|(_, z)| z.len() == 1);
            vec![if is_zone {
                cloudrun::prices::region_of(r).to_string()
            } else {
                r.to_string()
            }]
        }
        None => book.regions(),
    };
    let mut out = format!(
        "{:<12} {:<16} {:<24} {:>11} {:>11}\n",
        "gpu", "machine type", "region", "on-demand", "spot"
    );
    let mut rows = 0;
    let mut any_estimate = false;
    for h in &shapes {
        for r in &regions {
            let q = |spot| {
                book.quote(&QuoteRequest {
                    region: r,
                    machine_type: &h.machine_type,
                    gpu: Some((h.gpu.accelerator(), h.count)),
                    spot,
                })
            };
            let (od, spot) = (q(false), q(true));
            if !od.is_complete() && !spot.is_complete() {
                continue;
            }
            any_estimate |= od.estimate || spot.estimate;
            rows += 1;
            out.push_str(&format!(
                "{:<12} {:<16} {:<24} {:>11} {:>11}\n",
                format!("{}:{}", h.gpu.short(), h.count),
                h.machine_type,
                r,
                cell(&od),
                cell(&spot)
            ));
        }
    }
    if rows == 0 {
        out.push_str("(no source has a price for that; add one with --prices FILE)\n");
    }
    out.push_str(
        "\nUS dollars per hour for the whole VM (GPUs, vCPUs, memory; disk not included).\n",
    );
    match catalog_fetched_at {
        Some(t) => out.push_str(&format!(
            "Google's Cloud Billing Catalog, fetched {} (refreshed after a week; `--refresh` now). Spot prices can change daily.\n",
            t.format("%Y-%m-%d %H:%M UTC")
        )),
        None => out.push_str("Google's catalog was not read: every figure is a built-in estimate (`cloudrun-launch prices --refresh` reads it).\n"),
    }
    if any_estimate {
        out.push_str(&format!(
            "* estimate: {}\n",
            cloudrun::prices::builtin::SOURCE
        ));
    }
    for l in &book.layers {
        if !l.estimate && !l.source.starts_with("Cloud Billing Catalog") {
            out.push_str(&format!("overridden by {}\n", l.source));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_table_lists_every_l4_shape_with_estimates_marked() {
        let t = render(
            &PriceBook::builtin(),
            Some("l4"),
            Some("us-central1-b"),
            None,
        )
        .unwrap();
        for mt in [
            "g2-standard-8",
            "g2-standard-24",
            "g2-standard-48",
            "g2-standard-96",
        ] {
            assert!(t.contains(mt), "{t}");
        }
        // g2-standard-8 + 1 L4 in us-central1: 0.29358 + 0.56004.
        assert!(t.contains("0.8536*"), "{t}");
        assert!(t.contains("* estimate: built-in table"), "{t}");
        assert!(!t.contains("europe-west4"), "{t}");
        let err = render(&PriceBook::builtin(), Some("rtx9090"), None, None).unwrap_err();
        assert!(err.to_string().contains("unknown GPU"), "{err}");
    }
}
