//! Several runs of the same measurement, summarised: the median and the range of each point,
//! grouped across result files. The figures ([`crate::render`]) and the tables
//! (`figures/tables.md`, written by [`markdown_tables`]) are both drawn from these, so a
//! figure and the table beside it always agree.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::results::{PairsResult, Report};

/// One point measured in several runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median (of an even count: the mean of the middle two).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// How many runs measured it.
    pub runs: usize,
}

impl Spread {
    /// The spread of `values`; `None` if there are none (NaNs are left out).
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            runs: n,
        })
    }

    /// `median (min–max)` with `decimals`, or just the value for a single run.
    pub fn text(&self, decimals: usize) -> String {
        if self.runs == 1 {
            format!("{:.decimals$}", self.median)
        } else {
            format!(
                "{:.decimals$} ({:.decimals$}–{:.decimals$})",
                self.median, self.min, self.max
            )
        }
    }
}

/// Reads one number out of a pairs run (`None`: not measured in that run).
pub type Metric = fn(&PairsResult) -> Option<f64>;

/// Delivered msgs/s.
pub fn msgs_per_s(r: &PairsResult) -> Option<f64> {
    Some(r.msgs_per_s)
}

/// Server CPU per delivered message, µs.
pub fn server_us_per_msg(r: &PairsResult) -> Option<f64> {
    r.cpu.server_us_per_msg
}

/// The sweep points of every report, by number of pairs: the spread of `metric`.
pub fn by_pairs(reports: &[Report], metric: Metric) -> Vec<(usize, Spread)> {
    let mut groups: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for r in reports.iter().flat_map(|r| &r.sweep) {
        if let Some(v) = metric(r) {
            groups.entry(r.pairs).or_default().push(v);
        }
    }
    collect(groups)
}

/// The rate runs of every report, by offered rate in all (msgs/s, rounded): the spread of
/// `metric`.
pub fn by_offered_rate(reports: &[Report], metric: Metric) -> Vec<(u64, Spread)> {
    let mut groups: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for r in reports.iter().flat_map(|r| &r.rates) {
        let offered = r.offered_msgs_per_s.unwrap_or(r.msgs_per_s).round() as u64;
        if let Some(v) = metric(r) {
            groups.entry(offered).or_default().push(v);
        }
    }
    collect(groups)
}

fn collect<K: Copy + Ord>(groups: BTreeMap<K, Vec<f64>>) -> Vec<(K, Spread)> {
    groups
        .into_iter()
        .filter_map(|(k, v)| Spread::of(&v).map(|s| (k, s)))
        .collect()
}

/// The latency percentiles drawn and tabulated, with their names.
pub const PERCENTILES: [(&str, Metric); 4] = [
    ("p50", |r| Some(r.latency_ms.p50)),
    ("p90", |r| Some(r.latency_ms.p90)),
    ("p99", |r| Some(r.latency_ms.p99)),
    ("p99.9", |r| Some(r.latency_ms.p999)),
];

/// Memory per idle connection of every report with an idle run: (slope, (after − before) / N).
pub fn idle_per_connection(reports: &[Report]) -> Option<(Spread, Spread, usize)> {
    let idle: Vec<_> = reports.iter().filter_map(|r| r.idle.as_ref()).collect();
    let slope = Spread::of(
        &idle
            .iter()
            .map(|i| i.slope_kib_per_conn)
            .collect::<Vec<_>>(),
    )?;
    let mean = Spread::of(&idle.iter().map(|i| i.rss_per_conn_kib).collect::<Vec<_>>())?;
    let connections = idle.iter().map(|i| i.connections).max().unwrap_or(0);
    Some((slope, mean, connections))
}

/// Where the runs come from: the commits, machines and dates of `reports`, for captions.
pub fn provenance(reports: &[Report]) -> String {
    let mut commits: Vec<&str> = reports
        .iter()
        .map(|r| r.commit.as_deref().unwrap_or("unknown"))
        .collect();
    commits.dedup();
    let first = reports.first();
    format!(
        "{} run{}, commit {}, {} cores ({}), {}",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" },
        commits.join("+"),
        first.map_or(0, |r| r.machine.cores),
        first.map_or("", |r| r.machine.cpu.as_str()),
        first.map_or("", |r| r.started.get(..10).unwrap_or(&r.started)),
    )
}

/// The tables beside the figures, in Markdown: every point as median (min–max) over the runs.
pub fn markdown_tables(reports: &[Report]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- Written by `figures` (bench/src/spread.rs) from the same result files as the \
         SVGs; do not edit. -->\n\nData: {}. Each cell: median (min–max) over the runs.\n",
        provenance(reports)
    );
    let throughput = by_pairs(reports, msgs_per_s);
    if !throughput.is_empty() {
        let cpu = by_pairs(reports, server_us_per_msg);
        let _ = writeln!(
            out,
            "**Flood throughput and server CPU per message** (`throughput.svg`, `cpu.svg`)\n\n\
             | pairs | delivered msgs/s | server CPU µs/msg |\n|---|---|---|"
        );
        for (pairs, s) in &throughput {
            let c = cpu
                .iter()
                .find(|(p, _)| p == pairs)
                .map_or("-".into(), |(_, c)| c.text(2));
            let _ = writeln!(out, "| {pairs} | {} | {c} |", s.text(0));
        }
        out.push('\n');
    }
    let rates: Vec<_> = PERCENTILES
        .iter()
        .map(|(name, m)| (*name, by_offered_rate(reports, *m)))
        .collect();
    if rates.iter().any(|(_, points)| !points.is_empty()) {
        let _ = writeln!(
            out,
            "**Latency against offered load, ms** (`latency.svg`)\n\n\
             | offered msgs/s | p50 | p90 | p99 | p99.9 |\n|---|---|---|---|---|"
        );
        for (i, (offered, _)) in rates[0].1.iter().enumerate() {
            let cells: Vec<String> = rates
                .iter()
                .map(|(_, points)| points.get(i).map_or("-".into(), |(_, s)| s.text(2)))
                .collect();
            let _ = writeln!(out, "| {offered} | {} |", cells.join(" | "));
        }
        out.push('\n');
    }
    if let Some((slope, mean, connections)) = idle_per_connection(reports) {
        let _ = writeln!(
            out,
            "**Server memory per idle logged-in connection, KiB** (`memory.svg`, up to \
             {connections} connections): slope {}; (after − before) / N {}\n",
            slope.text(1),
            mean.text(1)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_and_range_of_odd_and_even_counts() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(
            Spread::of(&[1.0, 2.0, 30.0]).unwrap().text(1),
            "2.0 (1.0–30.0)"
        );
        assert_eq!(Spread::of(&[5.0]).unwrap().text(0), "5");
    }

    #[test]
    fn runs_are_grouped_by_point_across_reports() {
        let run = |pairs, msgs_per_s| PairsResult {
            pairs,
            msgs_per_s,
            ..PairsResult::default()
        };
        let report = |sweep| Report {
            sweep,
            ..Report::default()
        };
        let reports = [
            report(vec![run(1, 10.0), run(10, 100.0)]),
            report(vec![run(1, 30.0), run(10, 300.0)]),
            report(vec![run(1, 20.0)]),
        ];
        let points = by_pairs(&reports, msgs_per_s);
        assert_eq!(points.len(), 2);
        assert_eq!(points[0], (1, Spread::of(&[10.0, 20.0, 30.0]).unwrap()));
        assert_eq!(points[1].1.runs, 2);
        assert_eq!(points[1].1.median, 200.0);
    }
}
