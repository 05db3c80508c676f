//! `--storm N`: does a login storm slow down the people already chatting?
//!
//! On a server with the production bcrypt cost (12 unless `--bcrypt-cost` says otherwise)
//! and the production number of bcrypt workers:
//!
//! 1. Set-up, not measured: the N storm accounts are registered (`--connect-concurrency`
//!    at a time; the bcrypt pool decides how many hash at once), then the chatting pairs
//!    register and log in.
//! 2. The pairs send at a fixed rate (`--storm-rate` per sender) for the whole run. After
//!    a warm-up second, the *quiet window* lasts `--storm-quiet` seconds.
//! 3. Then all N storm clients start at once (one signal releases N threads): each
//!    connects, runs the TLS handshake, reads `HELLO` and sends `LOGIN`. The *storm
//!    window* runs from that release until the last `OK LOGIN`.
//! 4. The pairs stop. Every message is placed in a window by its send time.
//!
//! Reported: the pairs' latency p50/p99 in each window and the p99 ratio (storm / quiet),
//! the storm's connect + login times from the common start (p50/p99/max), and the CPU the
//! server and the machine used in each window. Only loss and errors fail the run: the
//! ratio is a measurement, not a threshold.

use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use securechat::{Error, Result};

use crate::clients::{lock, open_many, Conn, Setup, SETUP_STACK_BYTES};
use crate::pairs::{self, PairsConfig, ERROR_SAMPLES};
use crate::results::{Percentiles, StormResult, StormWindow};
use crate::target::{CpuSnapshot, Target};

/// Pairs traffic before the quiet window starts, excluded from both windows (connections
/// and allocator caches warm up).
const WARM_UP: Duration = Duration::from_secs(1);

/// One storm run.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// Clients that log in at once.
    pub clients: usize,
    /// The chatting pairs (an until-stopped rate run).
    pub pairs: PairsConfig,
    /// Length of the quiet window.
    pub quiet: Duration,
    /// bcrypt cost the server was started with (recorded; `None`: an external server's).
    pub bcrypt_cost: Option<u32>,
    /// bcrypt workers the server runs (recorded; `None`: an external server's).
    pub bcrypt_workers: Option<usize>,
}

/// One storm client's outcome: its times from the common start, in ns.
struct Login {
    /// TCP connect + TLS handshake + `HELLO`.
    connected_ns: u64,
    /// ... + the `LOGIN` round trip (`OK LOGIN` received).
    logged_in_ns: u64,
}

/// What happened on the calling thread while the pairs ran.
struct StormTimes {
    /// Quiet window, ns on the run's clock.
    quiet: (u64, u64),
    /// Storm window, ns on the run's clock.
    storm: (u64, u64),
    /// CPU readings at the quiet window's start, the storm's start and its end.
    cpu: [CpuSnapshot; 3],
    /// Each storm client's times, or why it failed.
    logins: Vec<std::result::Result<Login, String>>,
}

/// Runs the storm benchmark on `target` (a server with the cost in `cfg`).
pub fn run(target: &Target, cfg: &StormConfig) -> Result<StormResult> {
    let names: Vec<String> = (0..cfg.clients)
        .map(|i| format!("{}l{i}", cfg.pairs.tag))
        .collect();
    eprintln!(
        "storm: registering {} storm accounts (set-up, not measured)",
        names.len()
    );
    let registered = open_many(target, &names, Setup::RegisterOnly, cfg.pairs.concurrency)?;
    let register_seconds = registered.seconds;
    drop(registered);
    eprintln!(
        "storm: {register_seconds:.1} s; now {} pairs register and log in, then send {} msgs/s \
         each: {:.0} s quiet, then {} logins at once",
        cfg.pairs.pairs,
        cfg.pairs.rate.unwrap_or(0.0),
        cfg.quiet.as_secs_f64(),
        cfg.clients
    );
    let (run, timeline, times) = pairs::run_during(target, &cfg.pairs, |base| {
        storm_during(target, cfg, &names, base)
    })?;

    let window = |(from, to): (u64, u64), cpu: (&CpuSnapshot, &CpuSnapshot)| {
        let mut latencies = timeline.latencies_sent_between(from, to);
        let messages = latencies.len() as u64;
        StormWindow {
            from_s: from as f64 / 1e9,
            to_s: to as f64 / 1e9,
            messages,
            latency_ms: Percentiles::of_nanos(&mut latencies),
            cpu: cpu.0.usage(cpu.1, messages),
        }
    };
    let [quiet_start, storm_start, storm_end] = &times.cpu;
    let quiet = window(times.quiet, (quiet_start, storm_start));
    let storm = window(times.storm, (storm_start, storm_end));
    let mut login_ns = Vec::new();
    let mut connect_ns = Vec::new();
    let mut login_errors = Vec::new();
    let mut login_error_count = 0;
    for login in &times.logins {
        match login {
            Ok(l) => {
                login_ns.push(l.logged_in_ns);
                connect_ns.push(l.connected_ns);
            }
            Err(e) => {
                login_error_count += 1;
                if login_errors.len() < ERROR_SAMPLES {
                    login_errors.push(e.clone());
                }
            }
        }
    }
    // No ratio when a window has no messages (a storm shorter than the gap between them).
    let measured = quiet.messages > 0 && storm.messages > 0;
    let ratio = |a: f64, b: f64| (measured && b > 0.0).then(|| a / b);
    Ok(StormResult {
        clients: cfg.clients,
        bcrypt_cost: cfg.bcrypt_cost,
        bcrypt_workers: cfg.bcrypt_workers,
        pairs: cfg.pairs.pairs,
        rate_per_sender: cfg.pairs.rate.unwrap_or(0.0),
        offered_msgs_per_s: cfg.pairs.rate.unwrap_or(0.0) * cfg.pairs.pairs as f64,
        register_seconds,
        p99_ratio: ratio(storm.latency_ms.p99, quiet.latency_ms.p99),
        p50_ratio: ratio(storm.latency_ms.p50, quiet.latency_ms.p50),
        quiet,
        storm,
        logged_in: login_ns.len(),
        login_ms: Percentiles::of_nanos(&mut login_ns),
        connect_ms: Percentiles::of_nanos(&mut connect_ns),
        login_errors: login_error_count,
        login_error_samples: login_errors,
        run,
    })
}

/// The storm clients' starting signal.
#[derive(Debug, Clone, Copy)]
enum Gate {
    /// Wait.
    Closed,
    /// Go: the storm started at this instant.
    Open(Instant),
    /// Give up (the storm could not be set up).
    Abandoned,
}

/// On the calling thread while the pairs send: wait out the warm-up and the quiet window,
/// release the storm, wait for every login, and note the times.
fn storm_during(
    target: &Target,
    cfg: &StormConfig,
    names: &[String],
    base: Instant,
) -> Result<StormTimes> {
    let ns = |at: Instant| at.duration_since(base).as_nanos() as u64;
    thread::sleep(WARM_UP);
    let quiet_start = ns(Instant::now());
    let cpu_quiet = CpuSnapshot::take(target);
    thread::sleep(cfg.quiet);

    let gate = (Mutex::new(Gate::Closed), Condvar::new());
    let set_gate = |to: Gate| {
        *lock(&gate.0) = to;
        gate.1.notify_all();
    };
    let (cpu_storm, storm_start, outcomes) = thread::scope(|scope| -> Result<_> {
        let mut handles = Vec::with_capacity(names.len());
        for name in names {
            let gate = &gate;
            let spawned = thread::Builder::new()
                .name("bench-storm".into())
                .stack_size(SETUP_STACK_BYTES)
                .spawn_scoped(scope, move || storm_client(target, name, gate));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    set_gate(Gate::Abandoned);
                    return Err(Error::Config(format!(
                        "cannot start storm client thread {} of {}: {e}",
                        handles.len() + 1,
                        names.len()
                    )));
                }
            }
        }
        let cpu_storm = CpuSnapshot::take(target);
        let start = Instant::now();
        set_gate(Gate::Open(start));
        let outcomes: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a storm client thread panicked".into()))
            })
            .collect();
        Ok((cpu_storm, start, outcomes))
    })?;
    let mut logins = Vec::with_capacity(outcomes.len());
    let mut conns = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        match outcome {
            Ok((login, conn)) => {
                logins.push(Ok(login));
                conns.push(conn);
            }
            Err(e) => logins.push(Err(e)),
        }
    }
    // The last login ends the storm window.
    let storm_start_ns = ns(storm_start);
    let last = logins
        .iter()
        .filter_map(|l| l.as_ref().ok())
        .map(|l| l.logged_in_ns)
        .max()
        .unwrap_or(0);
    let cpu_end = CpuSnapshot::take(target);
    for conn in &conns {
        conn.close();
    }
    Ok(StormTimes {
        quiet: (quiet_start, storm_start_ns),
        storm: (storm_start_ns, storm_start_ns + last.max(1)),
        cpu: [cpu_quiet, cpu_storm, cpu_end],
        logins,
    })
}

/// One storm client: waits at the gate, then connects and logs in as `name`; times from
/// the gate's opening.
fn storm_client(
    target: &Target,
    name: &str,
    gate: &(Mutex<Gate>, Condvar),
) -> std::result::Result<(Login, Conn), String> {
    let mut state = lock(&gate.0);
    let start = loop {
        match *state {
            Gate::Closed => {
                state = gate
                    .1
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            }
            Gate::Open(start) => break start,
            Gate::Abandoned => return Err("storm abandoned".into()),
        }
    };
    drop(state);
    let failed = |e: Error| format!("{name}: {e}");
    let mut conn = Conn::connect(target).map_err(failed)?;
    let connected_ns = start.elapsed().as_nanos() as u64;
    conn.login(name).map_err(failed)?;
    let logged_in_ns = start.elapsed().as_nanos() as u64;
    conn.release_buffers();
    Ok((
        Login {
            connected_ns,
            logged_in_ns,
        },
        conn,
    ))
}
