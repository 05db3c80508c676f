//! `--idle N`: the server's resident memory per idle, logged-in connection.
//!
//! Opens N connections in steps of about N/10, each registered and logged in and then left
//! alone, and reads the server's VmRSS before the first step and after each one (after a
//! short pause, so the server's threads have settled). The generator holds the idle
//! connections without a thread each; they cost it file descriptors only. The server must
//! be a separate process (spawned or `--server-pid`), or there is nothing to read.

use std::thread;
use std::time::{Duration, Instant};

use securechat::{Error, Result};

use super::clients::{open_many, Conn, Setup};
use super::results::{IdleResult, Percentiles, RssSample, SetupStats};
use super::target::Target;

/// Steps the connections are opened in (one RSS sample after each).
const STEPS: usize = 10;

/// Pause before each RSS reading, so freshly started threads have touched their stacks
/// and the server has finished logging them in.
const SETTLE: Duration = Duration::from_millis(300);

/// Opens `n` idle logged-in connections and reports the server's memory per connection.
/// The connections stay open for `hold` after the last reading.
pub fn run(
    target: &Target,
    n: usize,
    concurrency: usize,
    tag: &str,
    hold: Duration,
) -> Result<IdleResult> {
    if target.pid.is_none() {
        return Err(Error::Config(
            "--idle measures the server's memory: give --server-pid PID with --server".into(),
        ));
    }
    let rss = || {
        thread::sleep(SETTLE);
        target
            .rss_kib()
            .ok_or_else(|| Error::Protocol("cannot read the server's VmRSS".into()))
    };
    let started = Instant::now();
    let before = rss()?;
    let mut samples = vec![RssSample {
        connections: 0,
        rss_kib: before,
    }];
    let mut held: Vec<Conn> = Vec::with_capacity(n);
    let mut times = Vec::new();
    let mut register_times = Vec::new();
    let step = n.div_ceil(STEPS).max(1);
    let mut workers = 1;
    while held.len() < n {
        let names: Vec<String> = (held.len()..(held.len() + step).min(n))
            .map(|i| format!("{tag}i{i}"))
            .collect();
        let opened = open_many(target, &names, Setup::RegisterAndLogin, concurrency)?;
        workers = opened.concurrency;
        times.extend(opened.nanos);
        register_times.extend(opened.register_nanos);
        held.extend(opened.conns);
        samples.push(RssSample {
            connections: held.len(),
            rss_kib: rss()?,
        });
        eprint!("\ridle: {}/{n} connections open", held.len());
    }
    eprintln!();
    let after = samples.last().map_or(before, |s| s.rss_kib);
    let result = IdleResult {
        connections: n,
        rss_before_kib: before,
        rss_after_kib: after,
        rss_per_conn_kib: (after as f64 - before as f64) / n.max(1) as f64,
        slope_kib_per_conn: slope(&samples),
        samples,
        setup: SetupStats {
            connections: n,
            concurrency: workers,
            seconds: started.elapsed().as_secs_f64(),
            connect_login_ms: Percentiles::of_nanos(&mut times),
            register_ms: Percentiles::of_nanos(&mut register_times),
        },
    };
    if !hold.is_zero() {
        eprintln!("idle: holding {n} connections for {hold:?}");
        thread::sleep(hold);
    }
    for conn in &held {
        conn.close();
    }
    Ok(result)
}

/// Least-squares slope of RSS over connections, KiB per connection.
pub fn slope(samples: &[RssSample]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_x = samples.iter().map(|s| s.connections as f64).sum::<f64>() / n;
    let mean_y = samples.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in samples {
        let dx = s.connections as f64 - mean_x;
        num += dx * (s.rss_kib as f64 - mean_y);
        den += dx * dx;
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_is_its_gradient() {
        let samples: Vec<RssSample> = (0..5)
            .map(|i| RssSample {
                connections: i * 100,
                rss_kib: 1000 + i as u64 * 100 * 30,
            })
            .collect();
        assert!((slope(&samples) - 30.0).abs() < 1e-9);
    }
}
