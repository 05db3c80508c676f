//! Draws the benchmark figures as SVG with plotters: throughput vs pairs, latency
//! percentiles vs offered rate, server memory vs idle connections.
//!
//! Shared by `bench --figures` and the `figures` binary, so
//! both draw the same pictures from the same [`Report`] data.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use securechat::{Error, Result};

use crate::results::{IdleResult, PairsResult, Report};

/// Size of every figure, pixels.
const SIZE: (u32, u32) = (860, 520);

/// Colours of the series, in order.
const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

fn drawing_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("cannot draw {}: {e}", path.display()))
}

/// A blank figure at `path`, the size of every figure.
fn canvas(path: &Path) -> Result<DrawingArea<SVGBackend<'_>, plotters::coord::Shift>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| drawing_error(path, e))?;
    Ok(root)
}

/// A chart builder on `root` with every figure's layout and `title` (plus the subtitle).
fn layout<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    subtitle: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(
            format!("securechat {title} — {subtitle}"),
            ("sans-serif", 16),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(80);
    builder
}

/// A chart with two `f64` axes (linear or logarithmic) on an SVG file.
type Chart<'a, 'b, X, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>;

/// Draws `points` as a line in `colour`, named `label` in the legend; with `dots`, a dot on
/// each point as well.
fn labelled_line<X, Y>(
    chart: &mut Chart<'_, '_, X, Y>,
    points: &[(f64, f64)],
    colour: RGBColor,
    label: &str,
    dots: bool,
    path: &Path,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let err = |e| drawing_error(path, e);
    chart
        .draw_series(LineSeries::new(points.to_vec(), colour.stroke_width(2)))
        .map_err(err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    if dots {
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(err)?;
    }
    Ok(())
}

/// Draws the legend at `position` and writes the file.
fn finish<'b, X, Y>(
    mut chart: Chart<'b, 'b, X, Y>,
    root: &DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    position: SeriesLabelPosition,
    path: &Path,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let err = |e| drawing_error(path, e);
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Draws every figure `report` has data for into `dir`; returns the files written.
pub fn render_all(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    let subtitle = format!(
        "{} cores ({}), {}",
        report.machine.cores, report.machine.cpu, report.started
    );
    let mut written = Vec::new();
    if report.sweep.len() >= 2 {
        let path = dir.join("throughput.svg");
        throughput(&report.sweep, &subtitle, &path)?;
        written.push(path);
    }
    if report.rates.len() >= 2 {
        let path = dir.join("latency.svg");
        latency(&report.rates, &subtitle, &path)?;
        written.push(path);
    }
    if let Some(idle) = report.idle.as_ref().filter(|i| i.samples.len() >= 2) {
        let path = dir.join("memory.svg");
        memory(idle, &subtitle, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// `throughput.svg`: delivered msgs/s (flood) against the number of pairs, log x axis.
pub fn throughput(sweep: &[PairsResult], subtitle: &str, path: &Path) -> Result<()> {
    let err = |e| drawing_error(path, e);
    let points: Vec<(f64, f64)> = sweep
        .iter()
        .map(|r| (r.pairs as f64, r.msgs_per_s))
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 2.0;
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2;
    let root = canvas(path)?;
    let mut chart = layout(&root, "flood throughput vs pairs", subtitle)
        .build_cartesian_2d((0.8f64..x_max).log_scale(), 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        // A log axis draws a light line per unit step, a grey smear: keep the bold ones.
        .light_line_style(TRANSPARENT)
        .x_desc("sender/receiver pairs (2 TLS connections each)")
        .y_desc("delivered private messages / s")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    let colour = COLOURS[0];
    labelled_line(
        &mut chart,
        &points,
        colour,
        "msgs/s (all pairs flooding)",
        false,
        path,
    )?;
    chart
        .draw_series(points.iter().map(|&(x, y)| {
            EmptyElement::at((x, y))
                + Circle::new((0, 0), 4, colour.filled())
                + Text::new(format!("{y:.0}"), (6, -16), ("sans-serif", 12))
        }))
        .map_err(err)?;
    finish(chart, &root, SeriesLabelPosition::LowerRight, path)
}

/// Reads one number out of a run.
type Metric = fn(&PairsResult) -> f64;

/// `latency.svg`: latency percentiles against the offered rate, log y axis.
pub fn latency(rates: &[PairsResult], subtitle: &str, path: &Path) -> Result<()> {
    let err = |e| drawing_error(path, e);
    let offered = |r: &PairsResult| r.offered_msgs_per_s.unwrap_or(r.msgs_per_s);
    let series: [(&str, Metric); 4] = [
        ("p50", |r| r.latency_ms.p50),
        ("p90", |r| r.latency_ms.p90),
        ("p99", |r| r.latency_ms.p99),
        ("p99.9", |r| r.latency_ms.p999),
    ];
    let x_max = rates.iter().map(offered).fold(1.0, f64::max) * 1.08;
    let all = rates
        .iter()
        .flat_map(|r| series.iter().map(move |(_, f)| f(r)))
        .filter(|v| *v > 0.0);
    let (lo, hi) = all.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (y_min, y_max) = if hi > 0.0 {
        (lo / 2.0, hi * 2.0)
    } else {
        (0.01, 1.0)
    };
    let pairs = rates.first().map_or(0, |r| r.pairs);
    let root = canvas(path)?;
    let mut chart = layout(
        &root,
        &format!("latency vs offered load ({pairs} pairs)"),
        subtitle,
    )
    .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
    .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered private messages / s (all senders)")
        .y_desc("send-to-receive latency, ms")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(err)?;
    for (i, (name, value)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<(f64, f64)> = rates
            .iter()
            .map(|r| (offered(r), value(r).max(y_min)))
            .collect();
        labelled_line(&mut chart, &points, colour, name, true, path)?;
    }
    finish(chart, &root, SeriesLabelPosition::UpperLeft, path)
}

/// `memory.svg`: server RSS against idle logged-in connections.
pub fn memory(idle: &IdleResult, subtitle: &str, path: &Path) -> Result<()> {
    let err = |e| drawing_error(path, e);
    let points: Vec<(f64, f64)> = idle
        .samples
        .iter()
        .map(|s| (s.connections as f64, s.rss_kib as f64 / 1024.0))
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let root = canvas(path)?;
    let mut chart = layout(&root, "server memory vs idle connections", subtitle)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("idle logged-in TLS connections")
        .y_desc("server resident memory (VmRSS), MiB")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    let label = format!(
        "RSS: {:.1} KiB per connection (slope), {:.1} KiB ((after - before) / N)",
        idle.slope_kib_per_conn, idle.rss_per_conn_kib
    );
    labelled_line(&mut chart, &points, COLOURS[0], &label, true, path)?;
    finish(chart, &root, SeriesLabelPosition::UpperLeft, path)
}
