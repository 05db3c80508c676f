//! Draws the benchmark figures as SVG with plotters: throughput and server CPU per message vs
//! pairs, latency percentiles vs offered rate, server memory vs idle connections.
//!
//! Shared by `bench --figures` (one run) and the `figures` binary (any number of runs), so
//! both draw the same pictures from the same [`Report`] data. With several runs each point is
//! the median, with a bar from the smallest to the largest value ([`crate::spread`], which
//! also writes the tables); the caption names the runs, the commit and the machine.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use securechat::{Error, Result};

use crate::peers::PeerSummary;
use crate::results::Report;
use crate::spread::{self, Spread};

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

/// A chart builder on `root` with every figure's layout and `title`; `subtitle` (where the
/// data comes from) is written along the bottom edge.
fn layout<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    subtitle: &str,
    path: &Path,
) -> Result<ChartBuilder<'a, 'b, SVGBackend<'b>>> {
    caption_source(root, subtitle, path)?;
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(format!("securechat {title}"), ("sans-serif", 17))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(80);
    Ok(builder)
}

/// Writes `source` (which runs, commit, machine) along the bottom edge of `root`.
fn caption_source(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    source: &str,
    path: &Path,
) -> Result<()> {
    root.draw_text(
        source,
        &("sans-serif", 11)
            .into_text_style(root)
            .color(&RGBColor(90, 90, 90)),
        (10, SIZE.1 as i32 - 16),
    )
    .map_err(|e| drawing_error(path, e))
}

/// A chart with two `f64` axes (linear or logarithmic) on an SVG file.
type Chart<'a, 'b, X, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>;

/// Draws `points` as a line in `colour`, named `label` in the legend (none if empty); with
/// `dots`, a dot on each point as well.
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
    let series = chart
        .draw_series(LineSeries::new(points.to_vec(), colour.stroke_width(2)))
        .map_err(err)?;
    if !label.is_empty() {
        series
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    if dots {
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(err)?;
    }
    Ok(())
}

/// Draws `points` (x, spread) as a median line with a min–max bar at each point.
fn spread_line<X, Y>(
    chart: &mut Chart<'_, '_, X, Y>,
    points: &[(f64, Spread)],
    colour: RGBColor,
    label: &str,
    path: &Path,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let medians: Vec<(f64, f64)> = points.iter().map(|(x, s)| (*x, s.median)).collect();
    labelled_line(chart, &medians, colour, label, true, path)?;
    chart
        .draw_series(
            points.iter().filter(|(_, s)| s.runs > 1).map(|&(x, s)| {
                PathElement::new(vec![(x, s.min), (x, s.max)], colour.stroke_width(2))
            }),
        )
        .map_err(|e| drawing_error(path, e))?;
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

/// Draws every figure `reports` have data for into `dir`; returns the files written. Runs of
/// the same point in different reports are summarised as median and range.
pub fn render_all(reports: &[Report], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    let subtitle = spread::provenance(reports);
    let mut written = Vec::new();
    let sweep = spread::by_pairs(reports, spread::msgs_per_s);
    if sweep.len() >= 2 {
        let path = dir.join("throughput.svg");
        throughput(&sweep, &subtitle, &path)?;
        written.push(path);
    }
    let cpu = spread::by_pairs(reports, spread::server_us_per_msg);
    if cpu.len() >= 2 {
        let path = dir.join("cpu.svg");
        cpu_per_message(&cpu, &subtitle, &path)?;
        written.push(path);
    }
    let rates = spread::by_offered_rate(reports, spread::PERCENTILES[0].1);
    if rates.len() >= 2 {
        let path = dir.join("latency.svg");
        latency(reports, &subtitle, &path)?;
        written.push(path);
    }
    if reports
        .iter()
        .any(|r| r.idle.as_ref().is_some_and(|i| i.samples.len() >= 2))
    {
        let path = dir.join("memory.svg");
        memory(reports, &subtitle, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// The x range of a log axis over `xs` (pairs counts), with a margin either side.
fn log_x_range(xs: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let max = xs.fold(1.0, f64::max);
    0.7..max * 1.6
}

/// One figure of a flood sweep: a number per pairs count (log x axis), median and range.
struct PairsFigure<'a> {
    /// Title, after "securechat".
    title: &'a str,
    /// Y axis description.
    y_desc: &'a str,
    /// Y axis labels, and the value written beside each point.
    y_text: fn(f64) -> String,
    /// Legend text of the line.
    label: &'a str,
    /// Line colour.
    colour: RGBColor,
    /// Where the legend goes (away from the line).
    legend: SeriesLabelPosition,
}

/// Draws `figure` for `points` (pairs, spread) to `path`.
fn pairs_figure(
    figure: PairsFigure<'_>,
    points: &[(usize, Spread)],
    subtitle: &str,
    path: &Path,
) -> Result<()> {
    let err = |e| drawing_error(path, e);
    let points: Vec<(f64, Spread)> = points.iter().map(|&(p, s)| (p as f64, s)).collect();
    let y_max = points
        .iter()
        .map(|p| p.1.max)
        .fold(f64::MIN_POSITIVE, f64::max)
        * 1.25;
    let root = canvas(path)?;
    let x_range = log_x_range(points.iter().map(|p| p.0));
    let mut chart = layout(&root, figure.title, subtitle, path)?
        .build_cartesian_2d(x_range.log_scale(), 0f64..y_max)
        .map_err(err)?;
    let y_text = figure.y_text;
    chart
        .configure_mesh()
        // A log axis draws a light line per unit step, a grey smear: keep the bold ones.
        .light_line_style(TRANSPARENT)
        .x_desc("sender/receiver pairs (2 TLS connections each)")
        .y_desc(figure.y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| y_text(*y))
        .draw()
        .map_err(err)?;
    spread_line(&mut chart, &points, figure.colour, figure.label, path)?;
    chart
        .draw_series(points.iter().map(|&(x, s)| {
            EmptyElement::at((x, s.median))
                + Text::new(y_text(s.median), (6, -18), ("sans-serif", 12))
        }))
        .map_err(err)?;
    finish(chart, &root, figure.legend, path)
}

/// `throughput.svg`: delivered msgs/s (flood) against the number of pairs, in millions.
pub fn throughput(points: &[(usize, Spread)], subtitle: &str, path: &Path) -> Result<()> {
    let figure = PairsFigure {
        title: "flood throughput vs pairs",
        y_desc: "delivered private messages / s (millions)",
        y_text: |y| format!("{:.2} M", y / 1e6),
        label: "msgs/s, all pairs flooding (median; bar: min–max)",
        colour: COLOURS[0],
        legend: SeriesLabelPosition::LowerRight,
    };
    pairs_figure(figure, points, subtitle, path)
}

/// `cpu.svg`: the server's CPU time per delivered message in a flood, against pairs.
pub fn cpu_per_message(points: &[(usize, Spread)], subtitle: &str, path: &Path) -> Result<()> {
    let figure = PairsFigure {
        title: "server CPU per message vs pairs (flood)",
        y_desc: "server CPU time per delivered message, µs",
        y_text: |y| format!("{y:.2}"),
        label: "server CPU µs per message (median; bar: min–max)",
        colour: COLOURS[1],
        legend: SeriesLabelPosition::UpperLeft,
    };
    pairs_figure(figure, points, subtitle, path)
}

/// `latency.svg`: latency percentiles against the offered rate, log y axis.
pub fn latency(reports: &[Report], subtitle: &str, path: &Path) -> Result<()> {
    let err = |e| drawing_error(path, e);
    let series: Vec<(&str, Vec<(f64, Spread)>)> = spread::PERCENTILES
        .iter()
        .map(|(name, metric)| {
            let points = spread::by_offered_rate(reports, *metric)
                .into_iter()
                .map(|(x, s)| (x as f64, s))
                .collect();
            (*name, points)
        })
        .collect();
    let all = || series.iter().flat_map(|(_, points)| points.iter());
    let x_max = all().map(|p| p.0).fold(1.0, f64::max) * 1.08;
    let positive = all().flat_map(|(_, s)| [s.min, s.max]).filter(|v| *v > 0.0);
    let (lo, hi) = positive.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (y_min, y_max) = if hi > 0.0 {
        (lo / 2.0, hi * 2.0)
    } else {
        (0.01, 1.0)
    };
    let pairs = reports
        .iter()
        .flat_map(|r| r.rates.first())
        .map(|r| r.pairs)
        .next()
        .unwrap_or(0);
    let root = canvas(path)?;
    let mut chart = layout(
        &root,
        &format!("latency vs offered load ({pairs} pairs; median, bar: min–max)"),
        subtitle,
        path,
    )?
    .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
    .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered private messages / s (all senders)")
        .y_desc("send-to-receive latency, ms (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let clamped: Vec<(f64, Spread)> = points
            .iter()
            .map(|&(x, s)| {
                let floor = |v: f64| v.max(y_min);
                (
                    x,
                    Spread {
                        median: floor(s.median),
                        min: floor(s.min),
                        max: floor(s.max),
                        runs: s.runs,
                    },
                )
            })
            .collect();
        spread_line(&mut chart, &clamped, COLOURS[i % COLOURS.len()], name, path)?;
    }
    finish(chart, &root, SeriesLabelPosition::UpperLeft, path)
}

/// `memory.svg`: server RSS against idle logged-in connections, one line per run.
pub fn memory(reports: &[Report], subtitle: &str, path: &Path) -> Result<()> {
    let err = |e| drawing_error(path, e);
    let runs: Vec<Vec<(f64, f64)>> = reports
        .iter()
        .filter_map(|r| r.idle.as_ref())
        .map(|idle| {
            idle.samples
                .iter()
                .map(|s| (s.connections as f64, s.rss_kib as f64 / 1024.0))
                .collect()
        })
        .collect();
    let all = || runs.iter().flatten();
    let x_max = all().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = all().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let root = canvas(path)?;
    let mut chart = layout(&root, "server memory vs idle connections", subtitle, path)?
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
    let label = match spread::idle_per_connection(reports) {
        Some((slope, mean, _)) => format!(
            "KiB per connection: slope {}, (after - before) / N {}",
            slope.text(1),
            mean.text(1)
        ),
        None => "RSS".into(),
    };
    for (i, points) in runs.iter().enumerate() {
        let name = if i == 0 { label.as_str() } else { "" };
        labelled_line(&mut chart, points, COLOURS[0], name, true, path)?;
    }
    finish(chart, &root, SeriesLabelPosition::UpperLeft, path)
}

/// `irc.svg`: securechat beside the IRC servers under one generator (chatbench), from the
/// peer lab's interleaved rounds: flood msgs/s on the left, p99 at 5,000 msgs/s on the right,
/// each server's median with a min–max bar.
pub fn irc(servers: &[PeerSummary], subtitle: &str, path: &Path) -> Result<()> {
    let err = |e| drawing_error(path, e);
    let root = canvas(path)?;
    caption_source(&root, subtitle, path)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let panels: [(&DrawingArea<_, _>, &str, &str, Panel); 2] = [
        (
            &left,
            "flood, 50 pairs",
            "delivered msgs/s (thousands)",
            |s| s.flood_msgs_per_s.map(|v| scaled(v, 1e-3)),
        ),
        (&right, "5,000 msgs/s, 50 pairs", "p99 latency, ms", |s| {
            s.rate100_p99_ms
        }),
    ];
    for (area, title, y_desc, value) in panels {
        let bars: Vec<(usize, Spread)> = servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| value(s).map(|v| (i, v)))
            .collect();
        let y_max = bars
            .iter()
            .map(|b| b.1.max)
            .fold(f64::MIN_POSITIVE, f64::max)
            * 1.2;
        let names: Vec<String> = servers.iter().map(|s| s.server.clone()).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("securechat vs IRC servers: {title}"),
                ("sans-serif", 14),
            )
            .margin(18)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..servers.len() as f64 - 0.5, 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(servers.len().max(1))
            .x_label_formatter(&|x| {
                let i = x.round();
                names
                    .get(i as usize)
                    .filter(|_| (x - i).abs() < 0.01 && i >= 0.0)
                    .cloned()
                    .unwrap_or_default()
            })
            .y_desc(y_desc)
            .draw()
            .map_err(err)?;
        for &(i, s) in &bars {
            let x = i as f64;
            let colour = if servers[i].server == "securechat" {
                COLOURS[0]
            } else {
                COLOURS[1]
            };
            chart
                .draw_series([Rectangle::new(
                    [(x - 0.3, 0.0), (x + 0.3, s.median)],
                    colour.mix(0.8).filled(),
                )])
                .map_err(err)?;
            chart
                .draw_series([PathElement::new(
                    vec![(x, s.min), (x, s.max)],
                    BLACK.stroke_width(2),
                )])
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// Reads one panel's value out of a server's summary.
type Panel = fn(&PeerSummary) -> Option<Spread>;

/// `spread` with every value multiplied by `factor`.
fn scaled(spread: Spread, factor: f64) -> Spread {
    Spread {
        median: spread.median * factor,
        min: spread.min * factor,
        max: spread.max * factor,
        runs: spread.runs,
    }
}
