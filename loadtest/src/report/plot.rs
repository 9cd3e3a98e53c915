//! `--plot DIR`: three SVG plots of a report, drawn with plotters' SVG backend (text is written as SVG `<text>`
//! and laid out by the viewer, so no fonts are needed to draw):
//!
//! - `latency.svg`: corrected latency over time, per second: p50, p90, p99, max;
//! - `spectrum.svg`: the percentile spectrum, corrected and uncorrected, on a "nines" axis (50%, 90%, 99%, ...);
//! - `throughput.svg`: calls sent, OK answers and errors per second.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::Report;

/// The files written, in `DIR`.
pub const FILES: [&str; 3] = ["latency.svg", "spectrum.svg", "throughput.svg"];

const SIZE: (u32, u32) = (960, 540);

/// One line of a chart.
struct Line {
    label: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Writes the three plots into `dir` (created if missing).
pub fn write(r: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--plot {}: cannot create the folder", dir.display()))?;
    let seconds = |f: fn(&super::SecondRow) -> f64| -> Vec<(f64, f64)> {
        r.timeseries.iter().map(|s| (s.second as f64 + 0.5, f(s))).collect()
    };
    let title = format!("{} against {}", r.run.mode, r.run.target);
    chart(
        &dir.join(FILES[0]),
        &format!("Latency over time (corrected), {title}"),
        ("seconds", "latency (ms)"),
        None,
        &[
            Line {
                label: "p50",
                color: BLUE,
                points: seconds(|s| s.p50_ms),
            },
            Line {
                label: "p90",
                color: GREEN,
                points: seconds(|s| s.p90_ms),
            },
            Line {
                label: "p99",
                color: RED,
                points: seconds(|s| s.p99_ms),
            },
            Line {
                label: "max",
                color: BLACK,
                points: seconds(|s| s.max_ms),
            },
        ],
    )?;
    // 100% sits with the last finite percentile (99.999%), at the right edge.
    let nines = |p: f64| -(1.0 - p / 100.0).max(1e-5).log10();
    chart(
        &dir.join(FILES[1]),
        &format!("Latency by percentile, {title}"),
        ("percentile", "latency (ms)"),
        Some(&|x: &f64| format!("{}%", trim(100.0 * (1.0 - 10f64.powf(-x))))),
        &[
            Line {
                label: "corrected (from intended send)",
                color: RED,
                points: r
                    .spectrum
                    .iter()
                    .map(|p| (nines(p.percentile), p.corrected_ms))
                    .collect(),
            },
            Line {
                label: "uncorrected (from actual send)",
                color: BLUE,
                points: r
                    .spectrum
                    .iter()
                    .map(|p| (nines(p.percentile), p.uncorrected_ms))
                    .collect(),
            },
        ],
    )?;
    chart(
        &dir.join(FILES[2]),
        &format!("Throughput, {title}"),
        ("seconds", "calls per second"),
        None,
        &[
            Line {
                label: "sent",
                color: BLUE,
                points: seconds(|s| s.sent as f64),
            },
            Line {
                label: "ok",
                color: GREEN,
                points: seconds(|s| s.ok as f64),
            },
            Line {
                label: "errors",
                color: RED,
                points: seconds(|s| s.errors as f64),
            },
        ],
    )
}

/// `99.9000001` -> `99.9`.
fn trim(x: f64) -> String {
    let s = format!("{x:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn chart(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    x_labels: Option<&dyn Fn(&f64) -> String>,
    lines: &[Line],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    draw(&root, title, (x_desc, y_desc), x_labels, lines)
        .map_err(|e| anyhow!("{}: cannot draw: {e}", path.display()))?;
    root.present()
        .map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    x_labels: Option<&dyn Fn(&f64) -> String>,
    lines: &[Line],
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    root.fill(&WHITE)?;
    let points = || lines.iter().flat_map(|l| l.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .margin_right(48)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_desc).y_desc(y_desc);
    if let Some(f) = x_labels {
        // A custom axis (the nines) is labelled at its whole steps only: 0%, 90%, 99%, ...
        mesh.x_labels(x_max.round() as usize + 1).x_label_formatter(f);
    }
    mesh.draw()?;
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2)))?
            .label(line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
