//! Draws the benchmark figures and their tables from `bench` result files:
//! `throughput.svg` and `cpu.svg` (flood msgs/s and server CPU per message vs pairs, from
//! `--sweep`), `latency.svg` (latency percentiles vs offered rate, from `--rate`),
//! `memory.svg` (server RSS vs idle connections, from `--idle`), with `--peers DIR`
//! `irc.svg` (securechat beside the IRC servers, from the peer lab's `compare.sh` results),
//! and `tables.md` (the same numbers as tables).
//!
//! Usage: `cargo run --release -p bench --bin figures -- figures/data/*.json [--out figures]`
//!
//! Several files may be given, typically repeated runs of `bench --figures`: each point is
//! then the median over the runs that measured it, drawn with a bar from the smallest to the
//! largest value, and the tables say the same. A figure whose data is missing is skipped.
//! `cargo run --release -p bench -- --figures` measures everything and draws one run's
//! figures in one go.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use securechat::{Error, Result};

use bench::results::{self, Report};
use bench::{peers, render, spread};

/// Draw SVG figures from securechat bench results.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Result files written by `bench` (JSON).
    #[arg(required_unless_present = "peers")]
    results: Vec<PathBuf>,
    /// The results directory of a peer-lab comparison (`compare.sh` prints it; under
    /// `$PEERS/results/`): draws `irc.svg`, securechat beside the IRC servers.
    #[arg(long)]
    peers: Option<PathBuf>,
    /// Directory for the SVG files and `tables.md`.
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
    let reports = args
        .results
        .iter()
        .map(|path| read(path))
        .collect::<Result<Vec<Report>>>()?;
    let mut written = render::render_all(&reports, &args.out)?;
    let mut tables = if reports.is_empty() {
        String::new()
    } else {
        spread::markdown_tables(&reports)
    };
    if let Some(dir) = &args.peers {
        let servers = peers::read_compare_dir(dir)?;
        let source = format!("{} servers from {}", servers.len(), dir.display());
        let path = args.out.join("irc.svg");
        render::irc(&servers, &source, &path)?;
        written.push(path);
        tables += &peers::markdown_table(&servers, &source);
    }
    if written.is_empty() {
        return Err(Error::Config(
            "nothing to draw: the files have no sweep, rate or idle results".into(),
        ));
    }
    for file in written {
        println!("{}", file.display());
    }
    let path = args.out.join("tables.md");
    std::fs::write(&path, tables)
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
    println!("{}", path.display());
    Ok(())
}

/// One result file, checked to be a bench report this program can read.
fn read(path: &Path) -> Result<Report> {
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
    Ok(report)
}
