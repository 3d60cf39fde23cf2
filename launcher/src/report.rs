//! `report RUN`: a plot of one run, as SVG or PNG, drawn with `plotters`: the mean GPU
//! utilisation over the run's time (left axis, %), the cumulative billed cost (right axis,
//! US dollars, with Compute's 1-minute minimum), and the run's phases (pull, setup,
//! training, final sync) as bands on the time axis, from the status's timestamps.
//!
//! The title and a legend row sit above the plot, never on it. Unknown GPU samples break
//! the utilisation line rather than draw 0; a run without samples says why in the plot; a
//! run at $0/h has no cost axis, only a note. Text is laid out with a bundled font
//! (`assets/fonts`, through `ab_glyph`), so no system font library is needed and the PNG
//! looks the same on every machine. This module only draws: it reads nothing and writes
//! nothing.

use std::path::Path;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use cloudrun::billing::{format_secs, MIN_BILLED_SECS};
use cloudrun::status::{GpuSample, RunStatus};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::runs::mean_util;

/// Plot size in pixels (SVG user units; the PNG has exactly these pixels).
const WIDTH_PX: u32 = 1000;
const HEIGHT_PX: u32 = 500;
/// Height of the title block (title and one line of summary) above the legend.
const TITLE_PX: u32 = 52;
/// Height added to the title block by the line that says where the money went.
const SPEND_LINE_PX: u32 = 20;
/// Height of the legend row between the title and the plot.
const LEGEND_PX: u32 = 26;
/// Shortest time axis drawn, in seconds (so that a run of a few seconds still has ticks).
const MIN_SPAN_SECS: f64 = 10.0;
/// Points along the cumulative cost line.
const COST_POINTS: usize = 200;
/// Most labels on the cost axis.
const COST_LABELS: usize = 6;
/// Font sizes, in pixels.
const TITLE_FONT_PX: f64 = 18.0;
const TEXT_FONT_PX: f64 = 13.0;
/// The family name the bundled font is registered under.
const FONT_FAMILY: &str = "sans-serif";
/// DejaVu Sans, subset to what a report prints (see `assets/fonts/README.md`).
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-subset.ttf");

const UTIL_COLOUR: RGBColor = RGBColor(31, 119, 180);
const COST_COLOUR: RGBColor = RGBColor(214, 39, 40);
const GREY: RGBColor = RGBColor(90, 90, 90);
/// Opacity of the phase bands behind the lines.
const BAND_ALPHA: f64 = 0.14;
/// Opacity of the least-to-most-busy GPU range behind the mean.
const RANGE_ALPHA: f64 = 0.18;

/// Why a report could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the bundled report font could not be loaded")]
    Font,
    #[error("drawing the report: {0}")]
    Draw(String),
    #[error("encoding the PNG: {0}")]
    Png(String),
    #[error("{0}")]
    Format(String),
}

/// The file format of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Png => "png",
        }
    }

    /// The format to write: `--format` if given, else the `--out` file's extension, else
    /// SVG. A `--out` name that says another format is an error that names the fix.
    pub fn choose(asked: Option<Format>, out: Option<&Path>) -> Result<Format, ReportError> {
        let ext = out
            .and_then(|p| p.extension())
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let from_name = match ext.as_deref() {
            None => None,
            Some("svg") => Some(Format::Svg),
            Some("png") => Some(Format::Png),
            Some(other) => {
                return Err(ReportError::Format(format!(
                    "report writes SVG or PNG, not .{other}: name the file .svg or .png"
                )))
            }
        };
        match (asked, from_name) {
            (Some(a), Some(n)) if a != n => Err(ReportError::Format(format!(
                "--out names a .{} file but --format is {}: make them agree",
                n.extension(),
                a.extension()
            ))),
            (Some(a), _) => Ok(a),
            (None, Some(n)) => Ok(n),
            (None, None) => Ok(Format::Svg),
        }
    }
}

/// What a report shows.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    pub run_id: String,
    /// "1×l4 spot"; `None` when the spec does not say.
    pub gpu: Option<String>,
    pub status: Option<&'a RunStatus>,
    pub samples: &'a [GpuSample],
    pub usd_per_hour: f64,
}

/// One phase of the run on the time axis, in seconds from the start of the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    /// "pull", "setup", "training", "final sync", …
    pub label: String,
    pub from_s: f64,
    pub to_s: f64,
}

/// The run's time axis: where it starts (billing start when known), how long it is, and
/// the phases on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub start: DateTime<Utc>,
    pub span_s: f64,
    pub bands: Vec<Band>,
}

/// How a status's phase name is labelled on the plot, and its colour.
fn phase_style(name: &str) -> (String, RGBColor) {
    match name {
        "pulling" => ("pull".into(), RGBColor(148, 103, 189)),
        "setup" => ("setup".into(), RGBColor(255, 127, 14)),
        "running" => ("training".into(), RGBColor(44, 160, 44)),
        "stopping" => ("stopping the job".into(), RGBColor(127, 127, 127)),
        "final_sync" => ("final sync".into(), RGBColor(140, 86, 75)),
        "waiting_for_gpu" => ("waiting for GPU".into(), RGBColor(23, 190, 207)),
        other => (other.replace('_', " "), RGBColor(188, 189, 34)),
    }
}

fn secs_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

/// The time axis and phases of a run, from its status (and its samples when the status
/// says little).
pub fn timeline(status: Option<&RunStatus>, samples: &[GpuSample]) -> Timeline {
    let first_sample = samples.first().map(|s| s.at);
    let last_sample = samples.last().map(|s| s.at);
    let start = status
        .and_then(|s| {
            s.agent_started_at
                .or_else(|| s.phase_started_at.get("pulling").copied())
                .or(s.launched_at)
        })
        .or(first_sample)
        .unwrap_or_else(Utc::now);
    let end = status
        .and_then(|s| s.ended_at)
        .or_else(|| {
            let heartbeat = status.map(|s| s.updated_at);
            heartbeat.max(last_sample)
        })
        .unwrap_or(start);
    let span_s = secs_between(start, end).max(MIN_SPAN_SECS);

    // When each phase began: the agent's timeline, completed from the older fields.
    let mut marks: Vec<(DateTime<Utc>, String)> = Vec::new();
    if let Some(s) = status {
        for (name, at) in &s.phase_started_at {
            if name != "launching" && name != "ended" && name != "running" {
                marks.push((*at, name.clone()));
            }
        }
        if let Some(at) = s
            .job_started_at
            .or_else(|| s.phase_started_at.get("running").copied())
        {
            marks.push((at, "running".into()));
        }
        if !s.phase_started_at.contains_key("pulling") {
            if let Some(at) = s.agent_started_at {
                // A status from before the timeline: pull and setup are not told apart.
                let name = if s.phase_started_at.is_empty() {
                    "pull + setup"
                } else {
                    "pulling"
                };
                marks.push((at, name.into()));
            }
        }
        if let Some(at) = s.final_sync_started_at {
            marks.push((at, "final_sync".into()));
        } else if let Some(at) = s.phase_started_at.get("stopping") {
            // Without the final sync's own time, stopping and syncing are one band.
            marks.retain(|(_, n)| n != "stopping");
            marks.push((*at, "stop + final sync".into()));
        }
    }
    marks.sort_by_key(|(at, _)| *at);
    let mut bands = Vec::new();
    for (i, (at, name)) in marks.iter().enumerate() {
        let to = marks.get(i + 1).map_or(end, |(next, _)| *next);
        let from_s = secs_between(start, *at).clamp(0.0, span_s);
        let to_s = secs_between(start, to).clamp(from_s, span_s);
        bands.push(Band {
            label: phase_style(name).0,
            from_s,
            to_s,
        });
    }
    Timeline {
        start,
        span_s,
        bands,
    }
}

/// "0", "45s", "5m", "1h 05m": a tick label on the time axis.
fn short_elapsed(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m, sec) {
        (0, 0, 0) => "0".into(),
        (0, 0, sec) => format!("{sec}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, sec) => format!("{m}m {sec:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

/// A phase's or run's length for people: tenths under 10 s ("0.4s"), else as receipts
/// write it ("9m 00s").
fn duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else {
        format_secs(secs.round() as u64)
    }
}

/// Decimals for the cost axis, so that no two labels read the same (a cent is too coarse
/// for a cheap minute): enough for a tenth of the axis.
fn cost_decimals(max_usd: f64) -> usize {
    if !(max_usd.is_finite() && max_usd > 0.0) {
        return 2;
    }
    let d = (-(max_usd / 10.0).log10()).ceil();
    d.clamp(2.0, 6.0) as usize
}

/// The billed cost after `s` seconds at `usd_per_hour`: per second, at least Compute's
/// minimum (drawn continuously; the whole-second rounding would only add a staircase).
fn cost_at(s: f64, usd_per_hour: f64) -> f64 {
    s.max(MIN_BILLED_SECS as f64) / 3600.0 * usd_per_hour
}

/// One line under the title: where the run is, and what it cost.
fn summary(r: &Report) -> String {
    let Some(s) = r.status else {
        return "no status yet".into();
    };
    let mut parts = vec![match &s.end {
        Some(e) => format!("ended: {}", e.reason.describe()),
        None => s.phase.name(),
    }];
    match &s.receipt {
        Some(rc) if rc.usd_per_hour > 0.0 => parts.push(rc.summary()),
        Some(rc) => parts.push(format!(
            "ran {}, no charge",
            duration(secs_between(rc.started_at, rc.ended_at))
        )),
        None if r.usd_per_hour > 0.0 => parts.push(format!("${:.2} so far", s.cost_usd)),
        None => {}
    }
    parts.join(" · ")
}

/// Where the money went (the receipt's split), when the run was billed and has one.
fn spend_line(r: &Report) -> Option<String> {
    let rc = r.status?.receipt.as_ref()?;
    if rc.usd_per_hour <= 0.0 {
        return None;
    }
    Some(format!("spent on: {}", rc.split.as_ref()?.one_line()))
}

/// Why there is no utilisation line.
fn no_samples_note(status: Option<&RunStatus>) -> String {
    match status {
        Some(s) if s.gpu_note.is_some() => {
            format!("no GPU samples: {}", s.gpu_note.clone().unwrap_or_default())
        }
        Some(s) if s.phase.is_terminal() => "no GPU samples were stored for this run".into(),
        _ => "no GPU samples yet".into(),
    }
}

fn font(px: f64) -> TextStyle<'static> {
    (FONT_FAMILY, px).into_font().color(&BLACK)
}

fn register_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Font)
    }
}

fn draw_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Draw(e.to_string())
}

/// The report as a file's bytes.
pub fn render(r: &Report, format: Format) -> Result<Vec<u8>, ReportError> {
    register_font()?;
    match format {
        Format::Svg => {
            let mut text = String::new();
            {
                let root =
                    SVGBackend::with_string(&mut text, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
                draw(&root, r)?;
                root.present().map_err(draw_err)?;
            }
            Ok(text.into_bytes())
        }
        Format::Png => {
            let mut rgb = vec![0u8; (WIDTH_PX * HEIGHT_PX * 3) as usize];
            {
                let root =
                    BitMapBackend::with_buffer(&mut rgb, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
                draw(&root, r)?;
                root.present().map_err(draw_err)?;
            }
            let mut out = Vec::new();
            let mut enc = png::Encoder::new(&mut out, WIDTH_PX, HEIGHT_PX);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc
                .write_header()
                .map_err(|e| ReportError::Png(e.to_string()))?;
            w.write_image_data(&rgb)
                .map_err(|e| ReportError::Png(e.to_string()))?;
            w.finish().map_err(|e| ReportError::Png(e.to_string()))?;
            Ok(out)
        }
    }
}

/// One known sample on the utilisation line: when, and the mean, least and most busy
/// GPU, in %.
struct Point {
    at_s: f64,
    mean: f64,
    min: f64,
    max: f64,
}

fn util_point(s: &GpuSample, start: DateTime<Utc>) -> Option<Point> {
    let mean = mean_util(s)?;
    let known = s.gpus.iter().filter_map(|g| g.util_gpu_pct);
    let (min, max) = known.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), u| {
        (lo.min(u), hi.max(u))
    });
    let pct = |u: f64| u.clamp(0.0, 100.0);
    Some(Point {
        at_s: secs_between(start, s.at),
        mean: pct(mean),
        min: pct(min),
        max: pct(max),
    })
}

/// A legend entry: a line (a series) or a block (a phase), and its text.
enum Swatch {
    Line(RGBColor),
    Block(RGBColor),
    Nothing,
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &Report) -> Result<(), ReportError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(draw_err)?;
    let tl = timeline(r.status, r.samples);
    let charged = r.usd_per_hour > 0.0;
    let max_cost = cost_at(tl.span_s, r.usd_per_hour);
    let decimals = cost_decimals(max_cost);

    // Legend row: the two series, then each phase with its length.
    let gpus = r.samples.iter().map(|s| s.gpus.len()).max().unwrap_or(0);
    let mut entries = vec![(
        Swatch::Line(UTIL_COLOUR),
        if gpus > 1 {
            format!("GPU utilisation, mean of {gpus} (shaded: least to most busy)")
        } else {
            "GPU utilisation".to_string()
        },
    )];
    entries.push(if charged {
        (
            Swatch::Line(COST_COLOUR),
            format!("cost billed at ${:.2}/h", r.usd_per_hour),
        )
    } else {
        (Swatch::Nothing, "no charge ($0/h): no cost axis".into())
    });
    for b in &tl.bands {
        let colour = band_colour(&b.label);
        entries.push((
            Swatch::Block(colour),
            format!("{} {}", b.label, duration(b.to_s - b.from_s)),
        ));
    }
    // Laid out in as many rows as the entries need, so none runs off the edge.
    let mut placed = Vec::with_capacity(entries.len());
    let (mut x, mut row) = (16i32, 0i32);
    for (swatch, text) in entries {
        let (w, _) = root
            .estimate_text_size(&text, &font(TEXT_FONT_PX))
            .map_err(draw_err)?;
        let width = 24 + w as i32;
        if x > 16 && x + width > WIDTH_PX as i32 - 16 {
            (x, row) = (16, row + 1);
        }
        placed.push((swatch, text, x, row));
        x += width + 18;
    }
    let legend_px = LEGEND_PX * (row as u32 + 1);
    let spend = spend_line(r);
    let title_px = TITLE_PX + if spend.is_some() { SPEND_LINE_PX } else { 0 };
    let (head, rest) = root.split_vertically(title_px);
    let (legend, body) = rest.split_vertically(legend_px);

    // Title block.
    let title = match &r.gpu {
        Some(g) => format!("cloudrun run {} · {g}", r.run_id),
        None => format!("cloudrun run {}", r.run_id),
    };
    head.draw(&Text::new(title, (16, 8), font(TITLE_FONT_PX)))
        .map_err(draw_err)?;
    head.draw(&Text::new(
        summary(r),
        (16, 32),
        font(TEXT_FONT_PX).color(&GREY),
    ))
    .map_err(draw_err)?;
    if let Some(spend) = spend {
        head.draw(&Text::new(
            spend,
            (16, TITLE_PX as i32 - 2),
            font(TEXT_FONT_PX).color(&GREY),
        ))
        .map_err(draw_err)?;
    }

    for (swatch, text, x, row) in placed {
        let y = row * LEGEND_PX as i32 + (LEGEND_PX / 2) as i32;
        match swatch {
            Swatch::Line(c) => legend
                .draw(&PathElement::new(
                    vec![(x, y), (x + 18, y)],
                    c.stroke_width(2),
                ))
                .map_err(draw_err)?,
            Swatch::Nothing => {}
            Swatch::Block(c) => legend
                .draw(&Rectangle::new(
                    [(x, y - 6), (x + 18, y + 6)],
                    c.mix(BAND_ALPHA * 3.0).filled(),
                ))
                .map_err(draw_err)?,
        }
        let style = font(TEXT_FONT_PX).pos(Pos::new(HPos::Left, VPos::Center));
        legend
            .draw(&Text::new(text, (x + 24, y), style))
            .map_err(draw_err)?;
    }

    // The plot.
    let cost_top = if charged { max_cost * 1.05 } else { 1.0 };
    let mut chart = ChartBuilder::on(&body)
        .margin_left(12)
        .margin_right(12)
        .margin_top(6)
        .margin_bottom(8)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .right_y_label_area_size(if charged { 76 } else { 0 })
        .build_cartesian_2d(0f64..tl.span_s, 0f64..100f64)
        .map_err(draw_err)?
        .set_secondary_coord(0f64..tl.span_s, 0f64..cost_top);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&|s: &f64| short_elapsed(*s))
        .y_label_formatter(&|u: &f64| format!("{u:.0}%"))
        .x_desc("time since the agent started (billing start)")
        .y_desc("GPU utilisation")
        .label_style(font(TEXT_FONT_PX))
        .axis_desc_style(font(TEXT_FONT_PX))
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(draw_err)?;
    if charged {
        chart
            .configure_secondary_axes()
            .y_labels(COST_LABELS)
            .y_label_formatter(&|c: &f64| format!("${c:.decimals$}"))
            .y_desc("cost billed (US$)")
            .label_style(font(TEXT_FONT_PX))
            .axis_desc_style(font(TEXT_FONT_PX))
            .draw()
            .map_err(draw_err)?;
    }

    // Phases behind everything, each labelled at the top where its label fits.
    let plot_w = chart.plotting_area().dim_in_pixel().0 as f64;
    chart
        .draw_series(tl.bands.iter().map(|b| {
            Rectangle::new(
                [(b.from_s, 0.0), (b.to_s, 100.0)],
                band_colour(&b.label).mix(BAND_ALPHA).filled(),
            )
        }))
        .map_err(draw_err)?;
    for b in &tl.bands {
        let (w, _) = body
            .estimate_text_size(&b.label, &font(TEXT_FONT_PX))
            .map_err(draw_err)?;
        let band_px = (b.to_s - b.from_s) / tl.span_s * plot_w;
        if band_px < w as f64 + 8.0 {
            continue;
        }
        let style = font(TEXT_FONT_PX)
            .color(&GREY)
            .pos(Pos::new(HPos::Center, VPos::Top));
        chart
            .draw_series(std::iter::once(Text::new(
                b.label.clone(),
                ((b.from_s + b.to_s) / 2.0, 99.0),
                style,
            )))
            .map_err(draw_err)?;
    }

    // Utilisation: one line per run of known samples, and with several GPUs the range
    // from the least to the most busy GPU behind it (a mean hides one idle GPU in eight).
    let mut segments: Vec<Vec<Point>> = vec![Vec::new()];
    for s in r.samples {
        match util_point(s, tl.start) {
            Some(p) => {
                if let Some(seg) = segments.last_mut() {
                    seg.push(p);
                }
            }
            None => segments.push(Vec::new()),
        }
    }
    segments.retain(|s| !s.is_empty());
    for seg in &segments {
        if gpus > 1 && seg.len() > 1 {
            let outline: Vec<(f64, f64)> = seg
                .iter()
                .map(|p| (p.at_s, p.max))
                .chain(seg.iter().rev().map(|p| (p.at_s, p.min)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    outline,
                    UTIL_COLOUR.mix(RANGE_ALPHA).filled(),
                )))
                .map_err(draw_err)?;
        }
        if seg.len() == 1 {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (seg[0].at_s, seg[0].mean),
                    3,
                    UTIL_COLOUR.filled(),
                )))
                .map_err(draw_err)?;
        } else {
            chart
                .draw_series(LineSeries::new(
                    seg.iter().map(|p| (p.at_s, p.mean)),
                    UTIL_COLOUR.stroke_width(2),
                ))
                .map_err(draw_err)?;
        }
    }
    if segments.is_empty() {
        let style = font(TEXT_FONT_PX + 2.0)
            .color(&GREY)
            .pos(Pos::new(HPos::Center, VPos::Center));
        chart
            .draw_series(std::iter::once(Text::new(
                no_samples_note(r.status),
                (tl.span_s / 2.0, 70.0),
                style,
            )))
            .map_err(draw_err)?;
    }

    // Cumulative cost.
    if charged {
        let points = (0..=COST_POINTS).map(|i| {
            let s = tl.span_s * i as f64 / COST_POINTS as f64;
            (s, cost_at(s, r.usd_per_hour))
        });
        chart
            .draw_secondary_series(LineSeries::new(points, COST_COLOUR.stroke_width(2)))
            .map_err(draw_err)?;
    }
    Ok(())
}

/// A band's colour, from its label.
fn band_colour(label: &str) -> RGBColor {
    for name in [
        "pulling",
        "setup",
        "running",
        "stopping",
        "final_sync",
        "waiting_for_gpu",
    ] {
        let (l, c) = phase_style(name);
        if l == label {
            return c;
        }
    }
    match label {
        "pull + setup" => phase_style("pulling").1,
        "stop + final sync" => phase_style("final_sync").1,
        _ => phase_style("").1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudrun::status::{EndInfo, EndReason, GpuReading, Phase};
    use cloudrun::RunId;

    fn t(sec: i64) -> DateTime<Utc> {
        "2026-11-26T07:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::seconds(sec)
    }

    fn sample(sec: i64, util: Option<f64>) -> GpuSample {
        GpuSample {
            at: t(sec),
            gpus: vec![GpuReading {
                index: 0,
                util_gpu_pct: util,
                ..GpuReading::default()
            }],
            error: None,
        }
    }

    /// An ended run with the full timeline: pull 0–20 s, setup 20–60 s, training
    /// 60–600 s, stopping 600–605 s, final sync 605–615 s.
    fn ended(usd_per_hour: f64) -> RunStatus {
        let mut s = RunStatus::launching(
            RunId::parse("20261126-070000-0006").unwrap(),
            t(-30),
            usd_per_hour,
        );
        s.agent_started_at = Some(t(0));
        s.enter_phase(Phase::Pulling, t(0));
        s.enter_phase(Phase::Setup, t(20));
        s.job_started_at = Some(t(60));
        s.enter_phase(Phase::Running, t(60));
        s.enter_phase(Phase::Stopping, t(600));
        s.final_sync_started_at = Some(t(605));
        s.enter_phase(Phase::Ended, t(615));
        s.ended_at = Some(t(615));
        s.updated_at = t(615);
        s.end = Some(EndInfo {
            reason: EndReason::Succeeded,
            exit_code: Some(0),
            signal: None,
            message: String::new(),
        });
        s.receipt = Some(cloudrun::billing::Receipt::new(
            t(0),
            t(615),
            usd_per_hour,
            60,
            540,
        ));
        s
    }

    fn report<'a>(
        status: Option<&'a RunStatus>,
        samples: &'a [GpuSample],
        price: f64,
    ) -> Report<'a> {
        Report {
            run_id: "20261126-070000-0006".into(),
            gpu: Some("1×l4 spot".into()),
            status,
            samples,
            usd_per_hour: price,
        }
    }

    fn svg(r: &Report) -> String {
        String::from_utf8(render(r, Format::Svg).unwrap()).unwrap()
    }

    /// The text of every `<text>` element, in order.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = t.split_once('>')?.1;
                Some(body.split_once("</text>")?.0.trim().to_string())
            })
            .collect()
    }

    /// The y coordinate of the `<text>` element holding exactly `needle`.
    fn text_y(svg: &str, needle: &str) -> f64 {
        for t in svg.split("<text").skip(1) {
            let Some((attrs, rest)) = t.split_once('>') else {
                continue;
            };
            if rest.split_once("</text>").map(|x| x.0.trim()) == Some(needle) {
                let y = attrs
                    .split("y=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                return y.parse().unwrap();
            }
        }
        panic!("no text {needle:?} in {svg}");
    }

    #[test]
    fn the_timeline_has_each_phase_from_the_status_timestamps() {
        let s = ended(3.6);
        let tl = timeline(Some(&s), &[]);
        assert_eq!(tl.start, t(0));
        assert_eq!(tl.span_s, 615.0);
        let got: Vec<(&str, f64, f64)> = tl
            .bands
            .iter()
            .map(|b| (b.label.as_str(), b.from_s, b.to_s))
            .collect();
        assert_eq!(
            got,
            [
                ("pull", 0.0, 20.0),
                ("setup", 20.0, 60.0),
                ("training", 60.0, 600.0),
                ("stopping the job", 600.0, 605.0),
                ("final sync", 605.0, 615.0),
            ]
        );
    }

    #[test]
    fn a_run_in_progress_ends_at_its_last_heartbeat_and_new_phases_get_a_band() {
        let mut s =
            RunStatus::launching(RunId::parse("20261126-070000-0004").unwrap(), t(-30), 3.6);
        s.agent_started_at = Some(t(0));
        s.enter_phase(Phase::Pulling, t(0));
        // A phase this launcher has no variant for, from a newer agent.
        s.phase_started_at.insert("waiting_for_gpu".into(), t(10));
        s.phase_started_at.insert("warming_caches".into(), t(40));
        s.job_started_at = Some(t(50));
        s.enter_phase(Phase::Running, t(50));
        s.updated_at = t(200);
        let tl = timeline(Some(&s), &[sample(190, Some(80.0))]);
        let got: Vec<(&str, f64, f64)> = tl
            .bands
            .iter()
            .map(|b| (b.label.as_str(), b.from_s, b.to_s))
            .collect();
        assert_eq!(
            got,
            [
                ("pull", 0.0, 10.0),
                ("waiting for GPU", 10.0, 40.0),
                ("warming caches", 40.0, 50.0),
                ("training", 50.0, 200.0),
            ]
        );
    }

    #[test]
    fn a_status_from_before_the_timeline_still_shows_its_phases() {
        let mut s = ended(3.6);
        s.phase_started_at.clear();
        s.final_sync_started_at = None;
        let tl = timeline(Some(&s), &[]);
        let got: Vec<&str> = tl.bands.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(got, ["pull + setup", "training"]);
        assert_eq!((tl.bands[1].from_s, tl.bands[1].to_s), (60.0, 615.0));
    }

    #[test]
    fn the_plot_has_title_legend_lines_and_phases_apart() {
        let s = ended(3.6);
        let samples = vec![
            sample(60, Some(10.0)),
            sample(120, Some(90.0)),
            sample(180, None),
            sample(240, Some(95.0)),
            sample(300, Some(97.0)),
        ];
        let out = svg(&report(Some(&s), &samples, 3.6));
        assert!(out.starts_with("<svg") && out.trim_end().ends_with("</svg>"));
        let all = texts(&out);
        let title = "cloudrun run 20261126-070000-0006 · 1×l4 spot";
        assert!(all.iter().any(|t| t == title), "{all:?}");
        assert!(!all.iter().any(|t| t.contains("(-)")), "{all:?}");
        // The legend is its own row, below the title block, above the plot.
        let legend_y = text_y(&out, "GPU utilisation");
        assert!(legend_y > text_y(&out, title) + TITLE_FONT_PX, "{out}");
        assert!(legend_y < TITLE_PX as f64 + LEGEND_PX as f64);
        for phase in ["pull 20s", "setup 40s", "training 9m 00s", "final sync 10s"] {
            assert!(all.iter().any(|t| t == phase), "{phase}: {all:?}");
        }
        assert!(all.iter().any(|t| t == "training"), "band label: {all:?}");
        assert!(
            all.iter()
                .any(|t| t.contains("billed 10m 15s at $3.60/h = $0.61")),
            "{all:?}"
        );
        // The utilisation line breaks at the unknown sample: two polylines in its colour.
        let util =
            out.matches("stroke=\"#1F77B4\"").count() + out.matches("stroke=\"#1f77b4\"").count();
        assert!(util >= 2, "{out}");
    }

    #[test]
    fn several_gpus_get_their_range_shaded_behind_the_mean() {
        let s = ended(3.6);
        let two = |sec: i64, a: f64, b: f64| GpuSample {
            at: t(sec),
            gpus: vec![
                GpuReading {
                    index: 0,
                    util_gpu_pct: Some(a),
                    ..GpuReading::default()
                },
                GpuReading {
                    index: 1,
                    util_gpu_pct: Some(b),
                    ..GpuReading::default()
                },
            ],
            error: None,
        };
        let samples = vec![
            two(60, 100.0, 0.0),
            two(120, 90.0, 10.0),
            two(180, 95.0, 5.0),
        ];
        let out = svg(&report(Some(&s), &samples, 3.6));
        assert!(out.contains("<polygon"), "{out}");
        assert!(
            texts(&out)
                .iter()
                .any(|t| t.starts_with("GPU utilisation, mean of 2")),
            "{out}"
        );
        // The longer legend wraps onto a second row instead of running off the edge.
        assert!(
            text_y(&out, "final sync 10s") > text_y(&out, "pull 20s") + 10.0,
            "{out}"
        );
        let one = svg(&report(
            Some(&s),
            &[sample(60, Some(1.0)), sample(90, Some(2.0))],
            3.6,
        ));
        assert!(!one.contains("<polygon"), "one GPU has no range");
    }

    #[test]
    fn cost_labels_are_distinct_for_a_cheap_short_run() {
        // 2 minutes at $0.30/h: one cent in all.
        let mut s = ended(0.30);
        s.ended_at = Some(t(120));
        s.updated_at = t(120);
        let out = svg(&report(Some(&s), &[sample(30, Some(50.0))], 0.30));
        let labels: Vec<String> = texts(&out)
            .into_iter()
            .filter(|t| t.starts_with('$'))
            .collect();
        assert!(labels.len() >= 3, "{labels:?}");
        let mut unique = labels.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), labels.len(), "{labels:?}");
    }

    #[test]
    fn the_plot_says_where_the_money_went_with_the_idle_window_paid_for() {
        let mut s = ended(3.6);
        s.end.as_mut().unwrap().reason = EndReason::GpuIdle;
        let rc = s.receipt.as_mut().unwrap();
        rc.split = Some(cloudrun::billing::Split::compute(
            &cloudrun::billing::Marks {
                started_at: t(0),
                pulled_at: Some(t(20)),
                job_started_at: Some(t(60)),
                job_ended_at: Some(t(600)),
                ended_at: t(615),
                last_verified_outputs_at: Some(t(600)),
                idle_window_secs: Some(300),
                lost_work: false,
            },
            rc.billed_secs,
            3.6,
        ));
        let all = texts(&svg(&report(Some(&s), &[sample(60, Some(50.0))], 3.6)));
        let spend = all
            .iter()
            .find(|t| t.starts_with("spent on: "))
            .unwrap_or_else(|| panic!("no spend line: {all:?}"));
        for part in [
            "boot and pull $",
            "setup $",
            "training $",
            "final sync $",
            "of it idle (wasted) $0.30 (5m 00s)",
        ] {
            assert!(spend.contains(part), "{part} missing: {spend}");
        }
        // A receipt without a split (an older agent's) draws no such line.
        let plain = texts(&svg(&report(
            Some(&ended(3.6)),
            &[sample(60, Some(50.0))],
            3.6,
        )));
        assert!(
            !plain.iter().any(|t| t.starts_with("spent on: ")),
            "{plain:?}"
        );
    }

    #[test]
    fn a_free_run_has_no_cost_axis_and_says_so() {
        let s = ended(0.0);
        let out = svg(&report(Some(&s), &[sample(60, Some(50.0))], 0.0));
        let all = texts(&out);
        assert!(!all.iter().any(|t| t.starts_with('$')), "{all:?}");
        assert!(
            all.iter().any(|t| t.contains("no charge ($0/h)")),
            "{all:?}"
        );
        assert!(
            all.iter().any(|t| t.ends_with("ran 10m 15s, no charge")),
            "the run's length, not a billed minute: {all:?}"
        );
    }

    #[test]
    fn a_run_without_samples_says_why_instead_of_an_empty_chart() {
        let mut s = ended(3.6);
        s.gpu_note = Some("no GPU found: idle policy off".into());
        let all = texts(&svg(&report(Some(&s), &[], 3.6)));
        assert!(
            all.iter()
                .any(|t| t == "no GPU samples: no GPU found: idle policy off"),
            "{all:?}"
        );
        // The phases are still drawn.
        assert!(all.iter().any(|t| t == "training"), "{all:?}");
        let none = texts(&svg(&report(None, &[], 3.6)));
        assert!(none.iter().any(|t| t == "no GPU samples yet"), "{none:?}");
    }

    #[test]
    fn text_in_the_svg_is_escaped() {
        let mut r = report(None, &[], 1.0);
        r.gpu = Some("<x> & y".into());
        let out = svg(&r);
        assert!(out.contains("&lt;x&gt; &amp; y"), "{out}");
    }

    #[test]
    fn png_is_a_png_of_the_same_size() {
        let s = ended(3.6);
        let png = render(
            &report(Some(&s), &[sample(60, Some(50.0))], 3.6),
            Format::Png,
        )
        .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let dec = png::Decoder::new(std::io::Cursor::new(&png));
        let reader = dec.read_info().unwrap();
        assert_eq!(
            (reader.info().width, reader.info().height),
            (WIDTH_PX, HEIGHT_PX)
        );
    }

    #[test]
    fn the_format_comes_from_the_flag_or_the_file_name() {
        use std::path::Path;
        assert_eq!(Format::choose(None, None).unwrap(), Format::Svg);
        assert_eq!(
            Format::choose(None, Some(Path::new("r.PNG"))).unwrap(),
            Format::Png
        );
        assert_eq!(
            Format::choose(Some(Format::Png), None).unwrap(),
            Format::Png
        );
        assert_eq!(
            Format::choose(Some(Format::Svg), Some(Path::new("plot"))).unwrap(),
            Format::Svg
        );
        let e = Format::choose(None, Some(Path::new("r.jpg"))).unwrap_err();
        assert!(e.to_string().contains(".svg or .png"), "{e}");
        let e = Format::choose(Some(Format::Png), Some(Path::new("r.svg"))).unwrap_err();
        assert!(e.to_string().contains("make them agree"), "{e}");
    }

    #[test]
    fn elapsed_labels_and_cost_decimals() {
        assert_eq!(duration(0.04), "0.0s");
        assert_eq!(duration(3.46), "3.5s");
        assert_eq!(duration(540.0), "9m 00s");
        assert_eq!(short_elapsed(0.0), "0");
        assert_eq!(short_elapsed(45.0), "45s");
        assert_eq!(short_elapsed(300.0), "5m");
        assert_eq!(short_elapsed(330.0), "5m 30s");
        assert_eq!(short_elapsed(3900.0), "1h 05m");
        assert_eq!(cost_decimals(0.0), 2);
        assert_eq!(cost_decimals(12.0), 2);
        assert_eq!(cost_decimals(0.18), 2);
        assert_eq!(cost_decimals(0.01), 3);
        assert_eq!(cost_decimals(0.0005), 5);
    }
}
