//! securechat's load generator and benchmark: real TLS clients that register, log in and
//! exchange private messages, measured end to end.
//!
//! Usage: `cargo run --release -p bench -- [PHASES] [OPTIONS]`
//!
//! Phases (several may be given; with none, `--flood` runs):
//! * `--flood`: `--pairs N` senders each send `--messages M` private messages to their own
//!   receiver as fast as they can (at most `--window` in flight per pair): delivered msgs/s,
//!   loss and reordering (both must be 0), latency percentiles, server CPU per message.
//! * `--rate R[,R...]`: the same pairs at a fixed R msgs/s per sender, for latency.
//! * `--sweep P[,P...]`: a flood per number of pairs (about `--sweep-total` messages each).
//! * `--idle N`: server memory per idle logged-in connection (and threads). The generator
//!   holds idle connections without a thread each (no generator limit below the open-file
//!   limit). The server runs two threads per connection, and each thread costs it four
//!   memory mappings (stack, signal stack, a guard page each): with Linux's default
//!   `vm.max_map_count` of 65,530 a server admits only about 8,000 logged-in connections
//!   and refuses the rest; the bench warns before trying. `--idle 10000` needs
//!   `vm.max_map_count` ≥ about 82,000.
//!   With `--rate R` too (and no `--figures`), the rate runs share the idle phase's server:
//!   each runs once before the idle connections open and once more while all N are held,
//!   so latency with and without 10,000 idle clients can be compared.
//! * `--storm N`: `--pairs` pairs chat at `--storm-rate` msgs/s per sender; after a quiet
//!   window, N clients log in at once. Latency p50/p99 quiet vs storm, their ratio, and
//!   the storm's login times. Its server uses the production bcrypt cost (12) and bcrypt
//!   pool; all accounts are registered before anything is measured (see `bench/src/storm.rs`).
//! * `--offline`: `--offline-senders` accounts queue `--offline-messages M` messages
//!   (`SEND`, `--offline-size` bytes each) for each of `--offline-users N` users who are
//!   offline, then all N log in at once (`MAILBOX`, `LOGIN`) and `ACK` their mail: enqueue
//!   rate (each message a durable commit), drain time, delivery rate, per-user drain time;
//!   lost, duplicated or reordered mail must be 0; the senders' `delivered` statuses are
//!   counted, not required (see `bench/src/offline.rs`).
//! * `--dh`: the cost of one end-to-end key agreement per group, beside `openssl speed`
//!   (no server; see `bench/src/dh.rs`).
//! * `--federated`: `--pairs` closed loops of offline messages between users of two linked
//!   servers, beside the same between users of one server, alternating rounds: msgs/s and
//!   latency p50/p99 (its own two servers in this process; see `bench/src/federated.rs`).
//! * `--soak SECONDS`: `--clients` clients doing random actions; errors and lost private
//!   messages must be 0, server RSS is sampled once a second.
//! * `--figures`: a sweep, a rate series and an idle ramp, then `figures/*.svg`.
//! * `--prepare-accounts N --tag T`: register the accounts `chatbench --tag T` logs in as.
//!
//! The server: by default every run gets a fresh server in a child process (this executable
//! again, in its hidden `--serve-child` role, built from the same library code), on
//! 127.0.0.1 with an empty database, **bcrypt cost 4** (production uses 12; `--bcrypt-cost`
//! changes it, and `--storm` uses 12 unless told otherwise), the production bcrypt pool
//! (one worker per core), room for 20,000 connections, and the per-address connection and
//! registration limits and the per-client frame rate limit off (all load comes from one
//! address, and senders flood). Its CPU, memory and threads are read from `/proc/<pid>`.
//! Both processes raise their open-file limit to the hard limit (`ulimit -Hn`).
//! `--server-bin target/release/server` runs the real server binary instead;
//! `--server HOST:PORT --ca FILE [--server-pid PID]` targets a running server (CPU and
//! memory need the pid; start it with `--max-connections-per-ip 0 --rate-limit 0
//! --registrations-per-ip 0`).
//!
//! Same load, other servers: the peer lab's generator `chatbench`
//! (`bench/peers/tools/chatbench/`) drives securechat and the IRC servers alike;
//! `bench/peers/tools/peers/compare.sh` starts a securechat server, registers chatbench's user
//! names with `bench --server HOST:PORT --ca FILE --prepare-accounts 50 --tag cb`, and runs
//! both interleaved. `bench/peers/README.md` has the commands.
//!
//! Output: a table on stdout and a JSON file (`--json PATH`, default
//! `bench-results/<mode>-<timestamp>.json`). Exits non-zero if any message was lost or
//! reordered or any error occurred (never because a number looks bad: benchmarks measure,
//! they do not judge). Caveat: the generator and the server share the machine's cores;
//! the table shows how much CPU each used.
// The bench's modules are private to this binary; `pub` in them marks what the others use.
#![allow(unreachable_pub)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Parser;
use securechat::{Error, Result};

use bench::clients::{open_many, Setup, PASSWORD};
use bench::federated::FederatedConfig;
use bench::offline::OfflineConfig;
use bench::pairs::PairsConfig;
use bench::results::{self, Machine, PairsResult, Report, ServerInfo};
use bench::soak::SoakConfig;
use bench::storm::StormConfig;
use bench::target::{
    ChildSettings, External, Target, BENCH_BCRYPT_COST, BENCH_MAX_CONNECTIONS,
    PRODUCTION_BCRYPT_COST,
};
use bench::{dh, federated, idle, offline, pairs, render, soak, storm, table, target};

/// Pairs counts of the `--figures` throughput sweep (unless `--sweep` is given).
const FIGURE_SWEEP: &[usize] = &[1, 10, 50, 100, 500];

/// Per-sender rates of the `--figures` latency series (unless `--rate` is given), msgs/s.
const FIGURE_RATES: &[f64] = &[20.0, 100.0, 200.0, 400.0, 600.0, 800.0, 1200.0];

/// Idle connections of the `--figures` memory ramp (unless `--idle` is given).
const FIGURE_IDLE: usize = 2000;

/// How long each `--figures` rate run lasts, seconds (messages = rate x this).
const FIGURE_RATE_SECONDS: f64 = 8.0;

/// Open files beyond the connections themselves (the server's database, listening socket,
/// log; the generator's pipes): headroom when checking `--idle N` against the fd limit.
const FD_HEADROOM: u64 = 100;

/// Longest a `--storm` run's pairs may send, seconds: caps their message count (they stop
/// as soon as the storm has logged in).
const STORM_MAX_SECONDS: f64 = 600.0;

/// Benchmark a securechat server with real TLS clients.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Flood: every sender sends as fast as it can (the default when no phase is given).
    #[arg(long)]
    flood: bool,
    /// Fixed offered rates, msgs/s per sender, one run each (comma-separated).
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Pairs counts for a throughput sweep, one flood each (comma-separated).
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<usize>,
    /// Messages per sweep point in all (each sender sends this / pairs, at least 100).
    #[arg(long, default_value_t = 500_000)]
    sweep_total: u64,
    /// Open this many idle logged-in connections and report server RSS per connection.
    #[arg(long)]
    idle: Option<usize>,
    /// Keep the --idle connections open this many seconds after measuring (to inspect the
    /// server meanwhile, e.g. /proc/PID/smaps).
    #[arg(long, default_value_t = 0.0)]
    idle_hold: f64,
    /// Run the mixed-traffic soak for this many seconds.
    #[arg(long)]
    soak: Option<f64>,
    /// Login storm: this many clients log in at once while the pairs chat.
    #[arg(long)]
    storm: Option<usize>,
    /// Per-sender rate of the chatting pairs during --storm, msgs/s.
    #[arg(long, default_value_t = 100.0)]
    storm_rate: f64,
    /// Length of --storm's quiet window (before the storm), seconds.
    #[arg(long, default_value_t = 10.0)]
    storm_quiet: f64,
    /// Offline mail: users with queued messages log in at once and drain their mailboxes.
    #[arg(long)]
    offline: bool,
    /// Users (recipients) for --offline.
    #[arg(long, default_value_t = 50)]
    offline_users: usize,
    /// Messages queued per user for --offline (the server's default quota is 1000 per user).
    #[arg(long, default_value_t = 100)]
    offline_messages: u64,
    /// Sender accounts for --offline, sharing the users between them.
    #[arg(long, default_value_t = 4)]
    offline_senders: usize,
    /// Payload bytes per --offline message (at least 32; the default is about a short
    /// sealed text).
    #[arg(long, default_value_t = 200)]
    offline_size: usize,
    /// Time one end-to-end key agreement per DH group (and compare with openssl speed).
    #[arg(long)]
    dh: bool,
    /// Private messages between two linked servers beside the same on one server
    /// (--pairs closed loops; its own two servers in this process).
    #[arg(long)]
    federated: bool,
    /// Messages each --federated sender sends per round.
    #[arg(long, default_value_t = 200)]
    federated_messages: usize,
    /// Rounds of each --federated layout, alternating.
    #[arg(long, default_value_t = 3)]
    federated_rounds: usize,
    /// Agreements timed per group for --dh.
    #[arg(long, default_value_t = 50)]
    dh_runs: usize,
    /// How long `openssl speed` measures each group for --dh, seconds (0: skip openssl).
    #[arg(long, default_value_t = 3)]
    openssl_seconds: u32,
    /// Run a sweep, a rate series and an idle ramp, and draw figures/*.svg.
    #[arg(long)]
    figures: bool,
    /// Register the user names chatbench uses (`s<tag>x<i>`, `r<tag>x<i>` for i < N) and exit.
    #[arg(long, requires = "tag")]
    prepare_accounts: Option<usize>,

    /// Sender/receiver pairs for --flood and --rate.
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Messages per sender for --flood and --rate.
    #[arg(long, default_value_t = 2000)]
    messages: u64,
    /// Payload bytes per message (`<seq>:<send ns>:` padded with `x`).
    #[arg(long, default_value_t = 50)]
    size: usize,
    /// Most messages a sender packs into one TLS write (for --offline: `SEND`s per write).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Most messages in flight per pair (0 = open loop). 1000 lines (~75 KiB) can never fill
    /// the server's 256 KiB per-client queue, so a long flood measures sustained throughput
    /// instead of the server evicting receivers that fall behind (its slow-consumer policy).
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// Seconds a receiver waits for its next message before giving up.
    #[arg(long, default_value_t = 10.0)]
    stall: f64,
    /// Soak clients (half stay connected, half reconnect now and then).
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Mean pause between a soak client's actions, milliseconds.
    #[arg(long, default_value_t = 100.0)]
    think_ms: f64,
    /// Connections being opened (TLS handshake, register, login) at once.
    #[arg(long, default_value_t = 20)]
    connect_concurrency: usize,
    /// Prefix for user names (a letter first; default: random for --server, `b` otherwise).
    #[arg(long)]
    tag: Option<String>,

    /// Benchmark a running server at HOST:PORT instead of starting one.
    #[arg(long, requires = "ca")]
    server: Option<String>,
    /// CA certificate of the --server (for a dev server: its certs/ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Process id of the --server, to read its CPU time and memory.
    #[arg(long, requires = "server")]
    server_pid: Option<u32>,
    /// Run this server binary (e.g. target/release/server) instead of this executable's
    /// built-in server role.
    #[arg(long, conflicts_with = "server")]
    server_bin: Option<PathBuf>,
    /// bcrypt cost of a spawned server (default: 4; 12, the production cost, for --storm).
    #[arg(long, value_parser = clap::value_parser!(u32).range(4..=31))]
    bcrypt_cost: Option<u32>,

    /// Where to write the JSON results (default: `bench-results/<mode>-<timestamp>.json`).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where --figures draws its SVG files.
    #[arg(long, default_value = "figures")]
    figures_dir: PathBuf,

    /// Internal: run as the benchmark's server child with data in DIR (with --bcrypt-cost).
    #[arg(long, hide = true)]
    serve_child: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.serve_child {
        let cost = args.bcrypt_cost.unwrap_or(BENCH_BCRYPT_COST);
        return match target::serve_child(dir, cost) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench server child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the phases asked for. Returns whether every check passed.
fn run(args: Args) -> Result<bool> {
    let fd_limit = match securechat::server::raise_open_file_limit() {
        Ok(limit) => Some(limit),
        Err(e) => {
            eprintln!("bench: cannot raise the open-file limit: {e}");
            None
        }
    };
    let mut bench = Bench::new(&args)?;
    if let Some(n) = args.prepare_accounts {
        return bench.prepare_accounts(n).map(|()| true);
    }
    let figures = args.figures;
    let mut sweep = args.sweep.clone();
    let mut rates = args.rate.clone();
    let mut idle = args.idle;
    if figures {
        if sweep.is_empty() {
            sweep = FIGURE_SWEEP.to_vec();
        }
        if rates.is_empty() {
            rates = FIGURE_RATES.to_vec();
        }
        idle = idle.or(Some(FIGURE_IDLE));
    }
    let flood = args.flood
        || (sweep.is_empty()
            && rates.is_empty()
            && idle.is_none()
            && args.soak.is_none()
            && args.storm.is_none()
            && !args.offline
            && !args.dh
            && !args.federated);
    // `--idle N --rate R`: the rate runs happen in the idle phase, with and without the
    // idle connections (with --figures they stay separate: the figure wants plain runs).
    let rates_with_idle = idle.is_some() && !rates.is_empty() && !figures;
    if let Some(warning) = idle.and_then(|n| target::kernel_limit_warning(n + 2 * args.pairs)) {
        eprintln!("bench: warning: {warning}");
    }
    if let (Some(n), Some(limit)) = (idle, fd_limit) {
        let needed = n as u64 + 2 * args.pairs as u64 + FD_HEADROOM;
        if limit < needed {
            return Err(Error::Config(format!(
                "--idle {n} needs about {needed} open files but the limit is {limit}: raise \
                 it (ulimit -n, or LimitNOFILE for a service) and run again"
            )));
        }
    }

    let mut phases = Vec::new();
    if figures {
        phases.push("figures");
    } else {
        for (on, name) in [
            (flood, "flood"),
            (!rates.is_empty(), "rate"),
            (!sweep.is_empty(), "sweep"),
            (idle.is_some(), "idle"),
            (args.storm.is_some(), "storm"),
            (args.offline, "offline"),
            (args.dh, "dh"),
            (args.federated, "federated"),
            (args.soak.is_some(), "soak"),
        ] {
            if on {
                phases.push(name);
            }
        }
    }
    bench.report.mode = phases.join("+");
    if phases != ["dh"] && phases != ["federated"] {
        println!("{}", bench.report.server.note);
    }

    if flood {
        let cfg = bench.pairs_config("flood", args.pairs, args.messages, None);
        let result = bench.pairs(&cfg)?;
        bench.report.flood = Some(result);
    }
    for &rate in rates.iter().filter(|_| !rates_with_idle) {
        let messages = if figures {
            ((rate * FIGURE_RATE_SECONDS) as u64).max(100)
        } else {
            args.messages
        };
        let cfg = bench.pairs_config("rate", args.pairs, messages, Some(rate));
        let result = bench.pairs(&cfg)?;
        bench.report.rates.push(result);
    }
    for &pairs in &sweep {
        let messages = (args.sweep_total / pairs.max(1) as u64).max(100);
        let cfg = bench.pairs_config("sweep", pairs, messages, None);
        let result = bench.pairs(&cfg)?;
        bench.report.sweep.push(result);
    }
    if let Some(n) = idle {
        let tag = bench.next_tag();
        let concurrency = args.connect_concurrency;
        let hold = Duration::from_secs_f64(args.idle_hold.max(0.0));
        if rates_with_idle {
            let (without, with): (Vec<_>, Vec<_>) = rates
                .iter()
                .map(|&rate| {
                    let without = bench.pairs_config("rate", args.pairs, args.messages, Some(rate));
                    let with =
                        bench.pairs_config("idle+rate", args.pairs, args.messages, Some(rate));
                    (without, with)
                })
                .unzip();
            let (baseline, result) = bench.with_target(|t| {
                let baseline = without
                    .iter()
                    .map(|cfg| bench.pairs_on(t, cfg, "without idle connections"))
                    .collect::<Result<Vec<_>>>()?;
                eprintln!("idle: opening {n} connections");
                let (mut result, held) = idle::open(t, n, concurrency, &tag)?;
                for cfg in &with {
                    let label = format!("with {} idle connections held", held.count());
                    result.with_traffic.push(bench.pairs_on(t, cfg, &label)?);
                }
                result.server_threads = t.threads().or(result.server_threads);
                if !hold.is_zero() {
                    eprintln!("idle: holding {n} connections for {hold:?}");
                    std::thread::sleep(hold);
                }
                held.close();
                Ok((baseline, result))
            })?;
            bench.report.rates.extend(baseline);
            bench.report.idle = Some(result);
        } else {
            eprintln!("idle: opening {n} connections");
            let result = bench.with_target(|t| idle::run(t, n, concurrency, &tag, hold))?;
            bench.report.idle = Some(result);
        }
    }
    if let Some(clients) = args.storm {
        let cost = args.bcrypt_cost.unwrap_or(PRODUCTION_BCRYPT_COST);
        let rate = args.storm_rate.max(0.1);
        let mut pairs = bench.pairs_config(
            "storm",
            args.pairs,
            (rate * STORM_MAX_SECONDS) as u64,
            Some(rate),
        );
        pairs.until_stopped = true;
        // An external server's settings are its own: not known here.
        let spawned = bench.external.is_none();
        let cfg = StormConfig {
            clients: clients.max(1),
            pairs,
            quiet: Duration::from_secs_f64(args.storm_quiet.max(1.0)),
            bcrypt_cost: spawned.then_some(cost),
            bcrypt_workers: spawned
                .then(|| securechat::server::Limits::default().bcrypt_concurrency),
        };
        let result = bench.with_target_cost(cost, |t| storm::run(t, &cfg))?;
        eprintln!(
            "  quiet p99 {:.3} ms, storm p99 {:.3} ms (x{}), logins p50 {:.0} ms, max {:.0} ms",
            result.quiet.latency_ms.p99,
            result.storm.latency_ms.p99,
            table::opt(result.p99_ratio, 2),
            result.login_ms.p50,
            result.login_ms.max
        );
        bench.report.storm = Some(result);
    }
    if args.offline {
        let cfg = OfflineConfig {
            users: args.offline_users.max(1),
            messages: args.offline_messages.max(1),
            senders: args.offline_senders.clamp(1, args.offline_users.max(1)),
            size: args.offline_size,
            batch: args.batch.max(1),
            concurrency: args.connect_concurrency,
            stall: Duration::from_secs_f64(args.stall.max(0.1)),
            tag: bench.next_tag(),
        };
        let result = bench.with_target(|t| offline::run(t, &cfg))?;
        eprintln!(
            "  drained {} msgs in {:.2} s ({:.0} msgs/s), per user p50 {:.0} ms p99 {:.0} ms",
            result.delivered,
            result.drain_seconds,
            result.delivery_msgs_per_s,
            result.drain_ms.p50,
            result.drain_ms.p99
        );
        bench.report.offline = Some(result);
    }
    if args.dh {
        bench.report.dh = Some(dh::run(args.dh_runs, args.openssl_seconds)?);
    }
    if args.federated {
        federated::run(&FederatedConfig {
            pairs: args.pairs.max(1),
            messages: args.federated_messages.max(1),
            rounds: args.federated_rounds.max(1),
        })?;
    }
    if let Some(seconds) = args.soak {
        let cfg = SoakConfig {
            clients: args.clients,
            duration: Duration::from_secs_f64(seconds.max(0.1)),
            think: Duration::from_secs_f64(args.think_ms.max(0.1) / 1e3),
            concurrency: args.connect_concurrency,
            tag: bench.next_tag(),
        };
        eprintln!(
            "soak: {} clients for {seconds} s (think {} ms)",
            cfg.clients, args.think_ms
        );
        let result = bench.with_target(|t| soak::run(t, &cfg))?;
        bench.report.soak = Some(result);
    }

    let report = &bench.report;
    table::print(report);
    let path = args.json.clone().unwrap_or_else(|| {
        PathBuf::from("bench-results").join(format!(
            "{}-{}.json",
            report.mode,
            file_stamp(&report.started)
        ))
    });
    write_json(report, &path)?;
    println!("\nresults: {}", path.display());
    if figures {
        for file in render::render_all(std::slice::from_ref(report), &args.figures_dir)? {
            println!("figure: {}", file.display());
        }
    }
    let failures = failures(report);
    for f in &failures {
        println!("FAILED: {f}");
    }
    Ok(failures.is_empty())
}

/// The run's state: options, the external server (if any), and the report so far.
struct Bench<'a> {
    /// Command-line options.
    args: &'a Args,
    /// The server for every run when `--server` is given; `None`: spawn one per run.
    external: Option<Target>,
    /// Prefix of user names; each run appends its number.
    tag: String,
    /// Runs so far (makes user names unique on a shared server).
    runs: usize,
    /// What has been measured.
    report: Report,
}

impl<'a> Bench<'a> {
    fn new(args: &'a Args) -> Result<Bench<'a>> {
        let external = match &args.server {
            Some(addr) => Some(Target::external(&External {
                addr: addr.clone(),
                ca: args.ca.clone().ok_or_else(|| {
                    Error::Config("--server needs --ca FILE (the server's CA)".into())
                })?,
                pid: args.server_pid,
            })?),
            None => None,
        };
        let tag = match &args.tag {
            Some(tag) => tag.to_lowercase(),
            None if external.is_some() => random_tag(),
            None => "b".into(),
        };
        if !tag.starts_with(|c: char| c.is_ascii_lowercase())
            || !tag
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || tag.len() > 12
        {
            return Err(Error::Config(format!(
                "--tag {tag:?}: use up to 12 letters, digits or _, starting with a letter"
            )));
        }
        let cost = args.bcrypt_cost.unwrap_or(BENCH_BCRYPT_COST);
        let note = match (&args.server, &args.server_bin) {
            (Some(addr), _) => format!(
                "server: external {addr}{}; bcrypt cost as configured there",
                match args.server_pid {
                    Some(pid) => format!(" (pid {pid}: CPU and memory measured)"),
                    None => " (no --server-pid: server CPU and memory not measured)".into(),
                }
            ),
            (None, bin) => format!(
                "server: a fresh child process per run ({}), 127.0.0.1, empty database, \
                 bcrypt cost {cost} ({}; production default {PRODUCTION_BCRYPT_COST}), \
                 max {BENCH_MAX_CONNECTIONS} connections; off: per-IP connection cap, \
                 per-IP registration limit, per-client frame rate limit; other limits default{}",
                match bin {
                    Some(bin) => format!("{} --bcrypt-cost {cost} ...", bin.display()),
                    None => "this executable's built-in server role".into(),
                },
                if args.bcrypt_cost.is_some() {
                    "--bcrypt-cost"
                } else {
                    "benchmark setting"
                },
                match (args.storm, args.bcrypt_cost) {
                    (Some(_), None) =>
                        format!("; --storm's server: bcrypt cost {PRODUCTION_BCRYPT_COST}"),
                    _ => String::new(),
                }
            ),
        };
        let started = securechat::logging::utc_timestamp(SystemTime::now());
        let report = Report {
            tool: "securechat-bench".into(),
            schema: results::SCHEMA,
            started,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            commit: commit(),
            server: ServerInfo {
                kind: if external.is_some() {
                    "external"
                } else {
                    "spawned"
                }
                .into(),
                program: match (&args.server, &args.server_bin) {
                    (Some(_), _) => None,
                    (None, Some(bin)) => Some(bin.display().to_string()),
                    (None, None) => Some("bench --serve-child".into()),
                },
                bcrypt_cost: external.is_none().then_some(cost),
                note,
            },
            machine: machine(),
            ..Report::default()
        };
        Ok(Bench {
            args,
            external,
            tag,
            runs: 0,
            report,
        })
    }

    /// A fresh user-name prefix for the next run.
    fn next_tag(&mut self) -> String {
        self.runs += 1;
        format!("{}_{}", self.tag, self.runs)
    }

    fn pairs_config(
        &mut self,
        kind: &'static str,
        pairs: usize,
        messages: u64,
        rate: Option<f64>,
    ) -> PairsConfig {
        PairsConfig {
            kind,
            pairs: pairs.max(1),
            messages: messages.max(1),
            size: self.args.size,
            batch: self.args.batch.max(1),
            rate,
            window: (self.args.window > 0).then_some(self.args.window),
            stall: Duration::from_secs_f64(self.args.stall.max(0.1)),
            concurrency: self.args.connect_concurrency,
            tag: self.next_tag(),
            until_stopped: false,
        }
    }

    /// The bcrypt cost of spawned servers, except `--storm`'s.
    fn bcrypt_cost(&self) -> u32 {
        self.args.bcrypt_cost.unwrap_or(BENCH_BCRYPT_COST)
    }

    /// Runs `f` against the external server, or a fresh spawned one.
    fn with_target<T>(&self, f: impl FnOnce(&Target) -> Result<T>) -> Result<T> {
        self.with_target_cost(self.bcrypt_cost(), f)
    }

    /// [`Bench::with_target`] with a spawned server's bcrypt cost given.
    fn with_target_cost<T>(&self, cost: u32, f: impl FnOnce(&Target) -> Result<T>) -> Result<T> {
        if let Some(target) = &self.external {
            return f(target);
        }
        let settings = ChildSettings { bcrypt_cost: cost };
        let target = Target::spawn(self.args.server_bin.as_deref(), settings)?;
        f(&target).map_err(|e| match target.log_tail() {
            Some(tail) if !tail.is_empty() => {
                Error::Protocol(format!("{e}\nlast lines of the server's log:\n{tail}"))
            }
            _ => e,
        })
    }

    /// One pairs run on a fresh server, with a progress line on stderr.
    fn pairs(&self, cfg: &PairsConfig) -> Result<PairsResult> {
        self.with_target(|t| self.pairs_on(t, cfg, ""))
    }

    /// One pairs run on `target`, with a progress line on stderr (`note` is added to it).
    fn pairs_on(&self, target: &Target, cfg: &PairsConfig, note: &str) -> Result<PairsResult> {
        eprintln!(
            "{}: {} pairs x {} messages{}{}{note}",
            cfg.kind,
            cfg.pairs,
            cfg.messages,
            cfg.rate
                .map(|r| format!(" at {r} msgs/s per sender"))
                .unwrap_or_default(),
            if note.is_empty() { "" } else { ", " }
        );
        let result = pairs::run(target, cfg)?;
        eprintln!(
            "  {:.0} msgs/s, lost {}, reordered {}, errors {}, p50 {:.3} ms, p99 {:.3} ms",
            result.msgs_per_s,
            result.lost,
            result.reordered,
            result.errors,
            result.latency_ms.p50,
            result.latency_ms.p99
        );
        Ok(result)
    }

    /// `--prepare-accounts N`: registers chatbench's user names on the --server.
    fn prepare_accounts(&mut self, n: usize) -> Result<()> {
        let target = self.external.as_ref().ok_or_else(|| {
            Error::Config(
                "--prepare-accounts needs --server HOST:PORT --ca FILE (a server that outlives \
                 this command)"
                    .into(),
            )
        })?;
        let tag = &self.tag;
        let names: Vec<String> = (0..n)
            .flat_map(|i| [format!("s{tag}x{i}"), format!("r{tag}x{i}")])
            .collect();
        let opened = open_many(
            target,
            &names,
            Setup::RegisterOnly,
            self.args.connect_concurrency,
        )?;
        println!(
            "registered {} accounts (s{tag}x0..s{tag}x{last}, r{tag}x0..r{tag}x{last}; existing ones kept) \
             with password {PASSWORD:?}, in {:.1} s",
            opened.conns.len(),
            opened.seconds,
            last = n.saturating_sub(1)
        );
        let (_, port) = target.addr.rsplit_once(':').unwrap_or(("", "PORT"));
        println!(
            "now run: $PEERS/target/release/chatbench --port {port} --cafile CA --tag {tag} \
             --pairs {n} --password '{PASSWORD}' --proto template --login 'LOGIN {{user}} {{password}}' \
             --login-ok 'OK LOGIN' --login-fail 'ERR' --send 'MSG {{to}} {{body}}' \
             --recv 'FROM {{from}} {{body}}' [--server-pid PID]"
        );
        Ok(())
    }
}

/// A random 4-letter tag, so runs against a shared server do not collide.
fn random_tag() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..4)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// The commit being measured: `git describe --always --dirty` in the current directory
/// (`None` when that is not a git checkout or git is missing).
fn commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// What the machine is.
fn machine() -> Machine {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        release_build: !cfg!(debug_assertions),
    }
}

/// `2026-11-22T02:39:02.123Z` → `20261122T023902`.
fn file_stamp(iso: &str) -> String {
    iso.chars()
        .take(19)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect()
}

fn write_json(report: &Report, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    }
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| Error::Config(format!("cannot encode the results: {e}")))?;
    fs::write(path, json + "\n")
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))
}

/// Every correctness check that failed, in words.
fn failures(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for r in report.pairs_runs() {
        if r.lost > 0 || r.reordered > 0 || r.errors > 0 {
            out.push(format!(
                "{} {} pairs: lost {}, reordered {}, errors {} {:?}",
                r.kind, r.pairs, r.lost, r.reordered, r.errors, r.error_samples
            ));
        }
    }
    if let Some(s) = report.storm.as_ref().filter(|s| s.login_errors > 0) {
        out.push(format!(
            "storm: {} of {} clients failed to log in {:?}",
            s.login_errors, s.clients, s.login_error_samples
        ));
    }
    if let Some(o) = &report.offline {
        let total = o.users as u64 * o.messages_per_user;
        if o.lost > 0 || o.duplicated > 0 || o.reordered > 0 || o.errors > 0 || o.queued != total {
            out.push(format!(
                "offline: queued {} of {total}, lost {}, duplicated {}, reordered {}, errors \
                 {} {:?}",
                o.queued, o.lost, o.duplicated, o.reordered, o.errors, o.error_samples
            ));
        }
    }
    if let Some(s) = &report.soak {
        if s.lost > 0 || s.reordered > 0 || s.errors > 0 {
            out.push(format!(
                "soak: lost {}, reordered {}, errors {} {:?}",
                s.lost, s.reordered, s.errors, s.error_samples
            ));
        }
    }
    out
}
