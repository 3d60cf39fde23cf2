//! `report RUN`: an SVG of GPU utilisation (mean over GPUs, left axis, %) and cumulative
//! cost (right axis, US dollars) over the run's time, written by hand (no plotting crate
//! for two polylines). Unknown samples break the utilisation line rather than draw 0.

use chrono::{DateTime, Utc};
use cloudrun::status::GpuSample;

use crate::runs::mean_util;

/// Plot size in pixels.
const WIDTH_PX: f64 = 900.0;
const HEIGHT_PX: f64 = 360.0;
const MARGIN_PX: f64 = 56.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG text. `start` is when billing started; cost is billed at `usd_per_hour` with
/// Compute's 1-minute minimum.
pub fn svg(
    title: &str,
    samples: &[GpuSample],
    start: Option<DateTime<Utc>>,
    usd_per_hour: f64,
) -> String {
    let t0 = start.or_else(|| samples.first().map(|s| s.at));
    let (w, h, m) = (WIDTH_PX, HEIGHT_PX, MARGIN_PX);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{m}\" y=\"20\" font-size=\"14\">{}</text>\n",
        esc(title)
    );
    let Some(t0) = t0 else {
        out.push_str(&format!(
            "<text x=\"{m}\" y=\"{}\">no GPU samples yet</text>\n</svg>\n",
            h / 2.0
        ));
        return out;
    };
    let secs = |t: DateTime<Utc>| (t - t0).num_milliseconds() as f64 / 1000.0;
    let span = samples.last().map(|s| secs(s.at)).unwrap_or(0.0).max(60.0);
    let cost_at =
        |s: f64| cloudrun::billing::cost_usd(cloudrun::billing::billed_secs(s), usd_per_hour);
    let max_cost = cost_at(span).max(0.01);
    let (pw, ph) = (w - 2.0 * m, h - 2.0 * m);
    let x = |s: f64| m + (s / span).clamp(0.0, 1.0) * pw;
    let y_util = |u: f64| m + ph - (u.clamp(0.0, 100.0) / 100.0) * ph;
    let y_cost = |c: f64| m + ph - (c / max_cost).clamp(0.0, 1.0) * ph;

    // Axes and labels.
    out.push_str(&format!(
        "<path d=\"M{m} {m} V{} H{}\" stroke=\"#444\" fill=\"none\"/>\n<path d=\"M{} {m} V{}\" stroke=\"#444\" fill=\"none\"/>\n",
        m + ph,
        m + pw,
        m + pw,
        m + ph
    ));
    for pct in [0.0, 50.0, 100.0] {
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{pct:.0}%</text>\n",
            m - 6.0,
            y_util(pct) + 4.0
        ));
    }
    for frac in [0.0, 0.5, 1.0] {
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\">${:.2}</text>\n",
            m + pw + 6.0,
            y_cost(max_cost * frac) + 4.0,
            max_cost * frac
        ));
    }
    out.push_str(&format!(
        "<text x=\"{m}\" y=\"{}\">0</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
        m + ph + 18.0,
        m + pw,
        m + ph + 18.0,
        cloudrun::billing::format_secs(span as u64)
    ));

    // Utilisation: one path, broken at unknown samples.
    let mut d = String::new();
    let mut pen_down = false;
    for s in samples {
        match mean_util(s) {
            Some(u) => {
                d.push_str(&format!(
                    "{}{:.1} {:.1} ",
                    if pen_down { "L" } else { "M" },
                    x(secs(s.at)),
                    y_util(u)
                ));
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    out.push_str(&format!(
        "<path d=\"{}\" stroke=\"#1f77b4\" stroke-width=\"1.5\" fill=\"none\"/>\n",
        d.trim_end()
    ));

    // Cumulative cost, sampled along the time axis.
    const COST_POINTS: usize = 100;
    let mut c = String::new();
    for i in 0..=COST_POINTS {
        let s = span * i as f64 / COST_POINTS as f64;
        c.push_str(&format!(
            "{}{:.1} {:.1} ",
            if i == 0 { "M" } else { "L" },
            x(s),
            y_cost(cost_at(s))
        ));
    }
    out.push_str(&format!("<path d=\"{}\" stroke=\"#d62728\" stroke-width=\"1.5\" fill=\"none\" stroke-dasharray=\"5 3\"/>\n", c.trim_end()));
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" fill=\"#1f77b4\">GPU utilisation (mean)</text>\n<text x=\"{}\" y=\"{}\" fill=\"#d62728\">cumulative cost at ${usd_per_hour:.2}/h</text>\n</svg>\n",
        m + 200.0,
        20.0,
        m + 400.0,
        20.0
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudrun::status::GpuReading;

    fn sample(sec: i64, util: Option<f64>) -> GpuSample {
        GpuSample {
            at: "2026-11-26T07:00:00Z".parse::<DateTime<Utc>>().unwrap()
                + chrono::Duration::seconds(sec),
            gpus: vec![GpuReading {
                index: 0,
                util_gpu_pct: util,
                ..GpuReading::default()
            }],
            error: None,
        }
    }

    #[test]
    fn the_plot_has_both_lines_and_breaks_at_unknown_samples() {
        let s = vec![
            sample(0, Some(10.0)),
            sample(60, Some(90.0)),
            sample(120, None),
            sample(180, Some(95.0)),
        ];
        let out = svg("run <x>", &s, None, 3.6);
        assert!(out.starts_with("<svg") && out.trim_end().ends_with("</svg>"));
        assert!(out.contains("run &lt;x&gt;"));
        let util_path = out
            .lines()
            .find(|l| l.contains("#1f77b4\" stroke-width"))
            .unwrap();
        assert_eq!(util_path.matches('M').count(), 2, "{util_path}");
        assert!(out.contains("$0.18"), "3 minutes at $3.60/h");
        assert!(svg("t", &[], None, 1.0).contains("no GPU samples yet"));
    }
}
