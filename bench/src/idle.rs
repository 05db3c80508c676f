//! `--idle N`: the server's resident memory per idle, logged-in connection.
//!
//! Opens N connections in steps of about N/10, each registered and logged in and then left
//! alone, and reads the server's VmRSS before the first step and after each one (after a
//! short pause, so the server's threads have settled). The generator holds the idle
//! connections without a thread each: they cost it a file descriptor and a rustls
//! connection each (their read buffers are given back), so 10,000 of them fit easily. One
//! keep-alive thread sends each a `PING` about every [`KEEPALIVE`], as the real client
//! does, spread evenly (N connections: one ping every KEEPALIVE / N), so the server's idle
//! timeout never closes them however long the run; the `PONG`s are left unread in the
//! socket buffers. That is N / 60 pings a second of background load, as real clients
//! would make. The server must be a separate process (spawned or
//! `--server-pid`), or there is nothing to read.
//!
//! [`open`] returns the connections still open in a [`Held`], so that message traffic
//! can be measured while they are connected (`--idle N --rate R`).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use securechat::{Error, Result};

use crate::clients::{lock, open_many, Conn, Setup};
use crate::results::{IdleResult, Percentiles, RssSample, SetupStats};
use crate::target::Target;

/// Steps the connections are opened in (one RSS sample after each).
const STEPS: usize = 10;

/// Pause before each RSS reading, so freshly started threads have touched their stacks
/// and the server has finished logging them in.
const SETTLE: Duration = Duration::from_millis(300);

/// How often every held connection sends `PING` (the server closes a logged-in
/// connection after 300 s without a frame; the real client pings after 60 s of quiet).
pub const KEEPALIVE: Duration = Duration::from_secs(60);

/// Shortest pause between two keep-alive pings (with more than 60,000 connections held,
/// each is pinged less often than every [`KEEPALIVE`]).
const MIN_PING_GAP: Duration = Duration::from_millis(1);

/// Idle connections kept open, with the thread that keeps them alive.
pub struct Held {
    /// The connections; the keep-alive thread locks them for one round of pings.
    conns: Arc<Mutex<Vec<Conn>>>,
    /// Dropping (or sending on) it stops the keep-alive thread.
    stop: Option<mpsc::Sender<()>>,
    /// The keep-alive thread.
    keepalive: Option<JoinHandle<()>>,
}

impl Held {
    /// Starts holding connections (none yet) and keeping them alive.
    fn new() -> Result<Held> {
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = mpsc::channel::<()>();
        let pinged = conns.clone();
        let keepalive = thread::Builder::new()
            .name("bench-keepalive".into())
            .spawn(move || {
                // One connection at a time, spread evenly over KEEPALIVE (real clients'
                // pings are not synchronised, and a burst of thousands would show up in
                // the latency of whatever else is measured), until `stop` is dropped.
                let mut next = 0;
                loop {
                    let held = lock(&pinged).len().max(1) as u32;
                    let pause = (KEEPALIVE / held).max(MIN_PING_GAP);
                    match stopped.recv_timeout(pause) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                    let mut conns = lock(&pinged);
                    let count = conns.len();
                    if let Some(conn) = conns.get_mut(next % count.max(1)) {
                        // A failure shows up as a closed connection later; the server's
                        // log says why.
                        let _ = conn.send(b"PING keepalive\n");
                        conn.release_buffers();
                    }
                    next = next.wrapping_add(1);
                }
            })?;
        Ok(Held {
            conns,
            stop: Some(stop),
            keepalive: Some(keepalive),
        })
    }

    /// Connections held.
    pub fn count(&self) -> usize {
        lock(&self.conns).len()
    }

    /// Closes every connection (TLS close_notify, then the socket).
    pub fn close(mut self) {
        self.stop_keepalive();
        for conn in lock(&self.conns).iter() {
            conn.close();
        }
    }

    fn stop_keepalive(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.keepalive.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop_keepalive();
    }
}

/// Opens `n` idle logged-in connections and reports the server's memory per connection.
/// The connections stay open for `hold` after the last reading.
pub fn run(
    target: &Target,
    n: usize,
    concurrency: usize,
    tag: &str,
    hold: Duration,
) -> Result<IdleResult> {
    let (result, held) = open(target, n, concurrency, tag)?;
    if !hold.is_zero() {
        eprintln!("idle: holding {n} connections for {hold:?}");
        thread::sleep(hold);
    }
    held.close();
    Ok(result)
}

/// Opens `n` idle logged-in connections, reads the server's memory as they open, and
/// returns the readings with the connections, still open.
pub fn open(
    target: &Target,
    n: usize,
    concurrency: usize,
    tag: &str,
) -> Result<(IdleResult, Held)> {
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
    let held = Held::new()?;
    let mut times = Vec::new();
    let mut register_times = Vec::new();
    let step = n.div_ceil(STEPS).max(1);
    let mut workers = 1;
    let mut open = 0;
    while open < n {
        let names: Vec<String> = (open..(open + step).min(n))
            .map(|i| format!("{tag}i{i}"))
            .collect();
        let opened = open_many(target, &names, Setup::RegisterAndLogin, concurrency)?;
        workers = opened.concurrency;
        times.extend(opened.nanos);
        register_times.extend(opened.register_nanos);
        {
            let mut conns = lock(&held.conns);
            for mut conn in opened.conns {
                conn.release_buffers();
                conns.push(conn);
            }
            open = conns.len();
        }
        samples.push(RssSample {
            connections: open,
            rss_kib: rss()?,
        });
        eprint!("\ridle: {open}/{n} connections open");
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
        server_threads: target.threads(),
        with_traffic: Vec::new(),
    };
    Ok((result, held))
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
