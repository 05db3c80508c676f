//! Draws the benchmark figures from `bench` result files: `throughput.svg` (flood msgs/s
//! vs pairs, from a `--sweep`), `latency.svg` (latency percentiles vs offered rate, from
//! `--rate` runs) and `memory.svg` (server RSS vs idle connections, from `--idle`).
//!
//! Usage: `cargo run --release -p bench --bin figures -- bench-results/figures-*.json [--out figures]`
//!
//! Several files may be given: each section (sweep, rates, idle) comes from the last file
//! that has it, so separate runs can be combined. A figure whose data is missing is
//! skipped with a note. `cargo run --release -p bench -- --figures` measures everything
//! and draws the same figures in one go.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use securechat::{Error, Result};

use bench::render;
use bench::results::{self, Report};

/// Draw SVG figures from securechat bench results.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Result files written by `bench` (JSON).
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// Directory for the SVG files.
    #[arg(long, default_value = "figures")]
    out: PathBuf,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("figures: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let mut merged: Option<Report> = None;
    for path in &args.results {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let report: Report = serde_json::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "{} is not a bench result file: {e}",
                path.display()
            ))
        })?;
        if report.tool != "securechat-bench" {
            return Err(Error::Config(format!(
                "{} was not written by securechat's bench",
                path.display()
            )));
        }
        if report.schema > results::SCHEMA {
            return Err(Error::Config(format!(
                "{} is in a newer format ({}) than this program reads ({}): rebuild figures",
                path.display(),
                report.schema,
                results::SCHEMA
            )));
        }
        merged = Some(match merged {
            None => report,
            Some(mut m) => {
                if !report.sweep.is_empty() {
                    m.sweep = report.sweep;
                }
                if !report.rates.is_empty() {
                    m.rates = report.rates;
                }
                if report.idle.is_some() {
                    m.idle = report.idle;
                }
                m.machine = report.machine;
                m.started = report.started;
                m
            }
        });
    }
    let report = merged.ok_or_else(|| Error::Config("no result files given".into()))?;
    for (missing, what) in [
        (
            report.sweep.len() < 2,
            "throughput.svg: needs a --sweep with 2+ points",
        ),
        (
            report.rates.len() < 2,
            "latency.svg: needs --rate with 2+ rates",
        ),
        (
            report.idle.as_ref().map_or(true, |i| i.samples.len() < 2),
            "memory.svg: needs an --idle run",
        ),
    ] {
        if missing {
            eprintln!("figures: skipped {what}");
        }
    }
    let written = render::render_all(&report, &args.out)?;
    if written.is_empty() {
        return Err(Error::Config(
            "nothing to draw: the files have no sweep, rate or idle results".into(),
        ));
    }
    for file in written {
        println!("{}", file.display());
    }
    Ok(())
}
