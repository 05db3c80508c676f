//! N sender/receiver pairs exchanging private messages: flood (as fast as possible) or a
//! fixed offered rate. Measures delivered msgs/s, loss, reordering, latency, and CPU.
//!
//! Each sender and each receiver is its own logged-in TLS connection driven by its own
//! blocking thread. A sender formats up to `batch` lines `MSG <receiver> <payload>` into
//! one buffer and sends it in one TLS write; the payload is `<seq>:<send ns>:` padded with
//! `x` to `size` bytes, where `<send ns>` is nanoseconds since an `Instant` taken before any
//! thread started: both ends are threads of this process, so they share that clock. A
//! receiver checks that the sender is its partner and that sequence numbers arrive
//! 0, 1, 2, ... and records each message's latency. When it has everything (or nothing
//! came for `stall`), it stops. A sender ends with `PING` and waits for the `PONG`, which the
//! server queues after any `ERR` it had for the sender's messages, so errors are never
//! missed.
//!
//! [`run_during`] runs something else on the calling thread while the messages flow (the
//! login storm, say) and returns every message's send time with its latency, so the caller
//! can split the run into windows. With [`PairsConfig::until_stopped`], senders keep going
//! (up to `messages`) until that something returns; each then tells its receiver how many
//! it sent, and the receiver stops once it has them all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use securechat::{Error, Result};

use crate::clients::{open_many, Conn, ReadError, Setup};
use crate::results::{PairsResult, Percentiles};
use crate::target::{CpuSnapshot, Target};

/// Stack for sender and receiver threads: they only format, encrypt and parse.
const STACK_BYTES: usize = 128 * 1024;

/// How many error messages a result keeps verbatim.
pub const ERROR_SAMPLES: usize = 5;

/// How long a sender waits for the `PONG` that ends its run.
const FINAL_PONG_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a receiver of an until-stopped run wakes to see whether its sender is done.
const DONE_POLL: Duration = Duration::from_millis(50);

/// Most latency slots a receiver reserves up front (an until-stopped run's `messages` is
/// only a cap).
const RESERVE_LIMIT: u64 = 1 << 16;

/// One pairs run.
#[derive(Debug, Clone)]
pub struct PairsConfig {
    /// `flood`, `rate` or `sweep` (recorded in the result).
    pub kind: &'static str,
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Messages per sender.
    pub messages: u64,
    /// Payload bytes per message.
    pub size: usize,
    /// Most lines per TLS write.
    pub batch: usize,
    /// Messages per second per sender (`None`: flood).
    pub rate: Option<f64>,
    /// Most messages in flight per pair (`None`: unlimited).
    pub window: Option<u64>,
    /// A receiver that gets nothing for this long gives up (counted as loss and an error).
    pub stall: Duration,
    /// Connections opened at once during setup.
    pub concurrency: usize,
    /// Prefix of this run's user names (unique per run on a shared server).
    pub tag: String,
    /// Senders stop when [`run_during`]'s closure returns (`messages` is then a cap), not
    /// after `messages`.
    pub until_stopped: bool,
}

/// Every delivered message of a run: when it was sent and how long it took, both in
/// nanoseconds on the run's clock (see [`run_during`]).
#[derive(Debug, Default)]
pub struct Timeline {
    /// Send time of each message, ns since the run's base instant.
    pub sent_ns: Vec<u64>,
    /// Send-to-receive latency of the same message, ns.
    pub latency_ns: Vec<u64>,
}

impl Timeline {
    /// Latencies of the messages sent in `[from_ns, to_ns)`.
    pub fn latencies_sent_between(&self, from_ns: u64, to_ns: u64) -> Vec<u64> {
        self.sent_ns
            .iter()
            .zip(&self.latency_ns)
            .filter(|(&sent, _)| sent >= from_ns && sent < to_ns)
            .map(|(_, &latency)| latency)
            .collect()
    }
}

/// What a sender thread reports.
struct SenderResult {
    /// Messages written.
    sent: u64,
    /// When the first message was stamped (ns since the base).
    first_ns: u64,
    /// The first few errors seen, verbatim.
    errors: Vec<String>,
    /// How many errors in all.
    error_count: u64,
}

/// What a receiver thread reports.
struct ReceiverResult {
    /// Latency of each delivered message, ns.
    latencies: Vec<u64>,
    /// Send time of each delivered message (ns since the base), in step with `latencies`.
    sent_at: Vec<u64>,
    /// Messages with an unexpected sequence number.
    reordered: u64,
    /// When the last message arrived (ns since the base).
    last_ns: u64,
    /// The first few errors seen, verbatim.
    errors: Vec<String>,
    /// How many errors in all.
    error_count: u64,
}

/// State one pair's sender and receiver share.
struct PairState {
    /// Messages the receiver has got so far (for the sender's window).
    received: AtomicU64,
    /// Messages the sender sent in all, valid once `sender_done` is set.
    sent: AtomicU64,
    /// The sender has stopped sending (an until-stopped run's receiver then knows its total).
    sender_done: AtomicBool,
}

/// Runs one pairs benchmark against `target`.
pub fn run(target: &Target, cfg: &PairsConfig) -> Result<PairsResult> {
    run_during(target, cfg, |_| Ok(())).map(|(result, _, ())| result)
}

/// Runs one pairs benchmark and, on the calling thread once messages start flowing,
/// `during(base)`, where `base` is the instant every timestamp of the run counts from.
/// With `cfg.until_stopped` the senders stop when `during` returns. Returns the result,
/// every message's timeline, and what `during` returned.
pub fn run_during<T>(
    target: &Target,
    cfg: &PairsConfig,
    during: impl FnOnce(Instant) -> Result<T>,
) -> Result<(PairsResult, Timeline, T)> {
    let senders: Vec<String> = (0..cfg.pairs).map(|i| format!("{}s{i}", cfg.tag)).collect();
    let receivers: Vec<String> = (0..cfg.pairs).map(|i| format!("{}r{i}", cfg.tag)).collect();
    let names: Vec<String> = receivers.iter().chain(&senders).cloned().collect();
    let opened = open_many(target, &names, Setup::RegisterAndLogin, cfg.concurrency)?;
    let setup = opened.stats();
    let mut conns = opened.conns;
    let sender_conns = conns.split_off(cfg.pairs);
    let receiver_conns = conns;

    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(2 * cfg.pairs + 1));
    let mut sender_handles = Vec::with_capacity(cfg.pairs);
    let mut receiver_handles = Vec::with_capacity(cfg.pairs);
    for (i, (sconn, rconn)) in sender_conns.into_iter().zip(receiver_conns).enumerate() {
        let state = Arc::new(PairState {
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            sender_done: AtomicBool::new(false),
        });
        let sender = {
            let (cfg, state, start, stop) =
                (cfg.clone(), state.clone(), start.clone(), stop.clone());
            let to = receivers[i].clone();
            thread::Builder::new()
                .name(format!("bench-send-{i}"))
                .stack_size(STACK_BYTES)
                .spawn(move || {
                    start.wait();
                    send_loop(sconn, &to, &cfg, &state, &stop, base)
                })?
        };
        let sender_thread = sender.thread().clone();
        let receiver = {
            let (cfg, start) = (cfg.clone(), start.clone());
            let from = senders[i].clone();
            thread::Builder::new()
                .name(format!("bench-recv-{i}"))
                .stack_size(STACK_BYTES)
                .spawn(move || {
                    start.wait();
                    receive_loop(rconn, &from, &cfg, &state, &sender_thread, base)
                })?
        };
        sender_handles.push(sender);
        receiver_handles.push(receiver);
    }

    let before = CpuSnapshot::take(target);
    start.wait();
    let during = during(base);
    // Senders of an until-stopped run stop now; the others stop by themselves (and the
    // flag is harmless to them). On an error in `during`, every sender stops too.
    stop.store(true, Ordering::Release);
    let senders: Vec<SenderResult> = sender_handles
        .into_iter()
        .map(|h| h.join().map_err(|_| panicked("sender")))
        .collect::<Result<_>>()?;
    let receivers: Vec<ReceiverResult> = receiver_handles
        .into_iter()
        .map(|h| h.join().map_err(|_| panicked("receiver")))
        .collect::<Result<_>>()?;
    let after = CpuSnapshot::take(target);
    let during = during?;

    let sent: u64 = senders.iter().map(|s| s.sent).sum();
    let delivered: u64 = receivers.iter().map(|r| r.latencies.len() as u64).sum();
    let reordered = receivers.iter().map(|r| r.reordered).sum();
    let mut error_samples: Vec<String> = Vec::new();
    let mut errors = 0;
    for (samples, count) in senders
        .iter()
        .map(|s| (&s.errors, s.error_count))
        .chain(receivers.iter().map(|r| (&r.errors, r.error_count)))
    {
        errors += count;
        for e in samples {
            if error_samples.len() < ERROR_SAMPLES {
                error_samples.push(e.clone());
            }
        }
    }
    let first_ns = senders.iter().map(|s| s.first_ns).min().unwrap_or(0);
    let last_ns = receivers.iter().map(|r| r.last_ns).max().unwrap_or(0);
    let duration_s = (last_ns.saturating_sub(first_ns) as f64 / 1e9).max(1e-9);
    let messages_per_sender = if cfg.until_stopped {
        senders.iter().map(|s| s.sent).max().unwrap_or(0)
    } else {
        cfg.messages
    };
    let mut timeline = Timeline::default();
    for r in receivers {
        timeline.sent_ns.extend(r.sent_at);
        timeline.latency_ns.extend(r.latencies);
    }
    let mut latencies = timeline.latency_ns.clone();
    let result = PairsResult {
        kind: cfg.kind.into(),
        pairs: cfg.pairs,
        messages_per_sender,
        payload_bytes: cfg.size,
        batch: cfg.batch,
        window: cfg.window,
        rate_per_sender: cfg.rate,
        offered_msgs_per_s: cfg.rate.map(|r| r * cfg.pairs as f64),
        sent,
        delivered,
        lost: sent.saturating_sub(delivered),
        reordered,
        errors,
        error_samples,
        duration_s,
        msgs_per_s: delivered as f64 / duration_s,
        latency_ms: Percentiles::of_nanos(&mut latencies),
        setup,
        cpu: before.usage(&after, delivered),
        server_rss_kib: target.rss_kib(),
    };
    Ok((result, timeline, during))
}

fn panicked(what: &str) -> Error {
    Error::Protocol(format!("a {what} thread panicked (a bug in the bench)"))
}

fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// Appends the decimal digits of `n`.
fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Appends `MSG <to> <seq>:<ns>:<padding>\n` with a payload of at least `size` bytes.
fn push_message(buf: &mut Vec<u8>, prefix: &[u8], seq: u64, ns: u64, size: usize) {
    buf.extend_from_slice(prefix);
    let payload_start = buf.len();
    push_u64(buf, seq);
    buf.push(b':');
    push_u64(buf, ns);
    buf.push(b':');
    let written = buf.len() - payload_start;
    // At least one padding byte, so the payload always has its three parts.
    let pad = size.saturating_sub(written).max(1);
    buf.resize(buf.len() + pad, b'x');
    buf.push(b'\n');
}

fn send_loop(
    mut conn: Conn,
    to: &str,
    cfg: &PairsConfig,
    state: &PairState,
    stop: &AtomicBool,
    base: Instant,
) -> SenderResult {
    let mut result = SenderResult {
        sent: 0,
        first_ns: now_ns(base),
        errors: Vec::new(),
        error_count: 0,
    };
    let prefix = format!("MSG {to} ").into_bytes();
    let mut buf = Vec::with_capacity(cfg.batch * (prefix.len() + cfg.size + 2));
    let started = Instant::now();
    let mut seq = 0;
    while seq < cfg.messages && !(cfg.until_stopped && stop.load(Ordering::Acquire)) {
        let mut take = cfg.batch.max(1) as u64;
        if let Some(rate) = cfg.rate {
            // Messages due by now; sleep until the next one is due if none are.
            let due_at = |n: u64| started + Duration::from_secs_f64(n as f64 / rate);
            let now = Instant::now();
            let due = ((now - started).as_secs_f64() * rate) as u64 + 1;
            if due <= seq {
                thread::sleep(due_at(seq).saturating_duration_since(now));
                continue;
            }
            take = take.min(due - seq);
        }
        if let Some(window) = cfg.window {
            let in_flight = seq - state.received.load(Ordering::Acquire);
            if in_flight >= window {
                // The receiver unparks us when it gets something.
                thread::park_timeout(Duration::from_millis(10));
                continue;
            }
            take = take.min(window - in_flight);
        }
        take = take.min(cfg.messages - seq);
        buf.clear();
        for _ in 0..take {
            push_message(&mut buf, &prefix, seq, now_ns(base), cfg.size);
            seq += 1;
        }
        if let Err(e) = conn.send(&buf) {
            note(
                &mut result.errors,
                &mut result.error_count,
                format!("send failed: {e}"),
            );
            break;
        }
        result.sent = seq;
    }
    state.sent.store(result.sent, Ordering::Release);
    state.sender_done.store(true, Ordering::Release);
    // Everything the server has to say about our messages comes before this PONG.
    if let Err(e) = final_ping(&mut conn, &mut result) {
        note(
            &mut result.errors,
            &mut result.error_count,
            format!("sender {to}: {e}"),
        );
    }
    conn.close();
    result
}

/// Sends `PING done` and reads until `PONG done`, counting anything else as an error.
fn final_ping(conn: &mut Conn, result: &mut SenderResult) -> Result<()> {
    conn.send(b"PING done\n")?;
    conn.set_read_timeout(Some(FINAL_PONG_TIMEOUT))?;
    let mut done = false;
    while !done {
        conn.read_lines(|line| {
            if line == "PONG done" || line.starts_with("ERR PING ") {
                // A refused PING gets no PONG: stop waiting (and count the refusal).
                done = true;
            }
            // OFFLINE: the receiver left once it had everything, before this PONG.
            if line != "PONG done" && !line.starts_with("OFFLINE ") {
                note(&mut result.errors, &mut result.error_count, line.to_owned());
            }
        })?;
    }
    Ok(())
}

fn receive_loop(
    mut conn: Conn,
    from: &str,
    cfg: &PairsConfig,
    state: &PairState,
    sender: &Thread,
    base: Instant,
) -> ReceiverResult {
    let reserve = cfg.messages.min(RESERVE_LIMIT) as usize;
    let mut result = ReceiverResult {
        latencies: Vec::with_capacity(reserve),
        sent_at: Vec::with_capacity(reserve),
        reordered: 0,
        last_ns: 0,
        errors: Vec::new(),
        error_count: 0,
    };
    let expected_prefix = format!("FROM {from} ");
    let mut next_seq = 0;
    // An until-stopped receiver wakes now and then to see whether its sender is done.
    let poll = if cfg.until_stopped {
        cfg.stall.min(DONE_POLL)
    } else {
        cfg.stall
    };
    if let Err(e) = conn.set_read_timeout(Some(poll)) {
        note(&mut result.errors, &mut result.error_count, e.to_string());
        return result;
    }
    let mut last_progress = Instant::now();
    loop {
        let got = result.latencies.len() as u64;
        let all_sent = cfg.until_stopped
            && state.sender_done.load(Ordering::Acquire)
            && got >= state.sent.load(Ordering::Acquire);
        if got >= cfg.messages || all_sent {
            break;
        }
        let read = conn.read_lines(|line| {
            let now = now_ns(base);
            let parsed = line.strip_prefix(&expected_prefix).and_then(parse_payload);
            match parsed {
                Some((seq, sent_ns)) => {
                    if seq != next_seq {
                        result.reordered += 1;
                    }
                    next_seq = seq + 1;
                    result.latencies.push(now.saturating_sub(sent_ns));
                    result.sent_at.push(sent_ns);
                    result.last_ns = now;
                }
                // The sender may leave (after its final PONG) before we are done reading.
                None if line.starts_with("OFFLINE ") => {}
                None => note(&mut result.errors, &mut result.error_count, line.to_owned()),
            }
        });
        state
            .received
            .store(result.latencies.len() as u64, Ordering::Release);
        if cfg.window.is_some() {
            sender.unpark();
        }
        if result.latencies.len() as u64 > got {
            last_progress = Instant::now();
        }
        if let Err(e) = read {
            if matches!(e, ReadError::Timeout) && last_progress.elapsed() < cfg.stall {
                continue;
            }
            let got = result.latencies.len();
            let why = match e {
                ReadError::Timeout => format!("nothing for {:?}", cfg.stall),
                other => other.to_string(),
            };
            note(
                &mut result.errors,
                &mut result.error_count,
                format!(
                    "receiver of {from}: {why} after {got}/{} messages",
                    if cfg.until_stopped {
                        state.sent.load(Ordering::Acquire)
                    } else {
                        cfg.messages
                    }
                ),
            );
            break;
        }
    }
    conn.close();
    result
}

/// `<seq>:<ns>:<padding>` → (seq, ns).
fn parse_payload(payload: &str) -> Option<(u64, u64)> {
    let mut parts = payload.splitn(3, ':');
    let seq = parts.next()?.parse().ok()?;
    let ns = parts.next()?.parse().ok()?;
    Some((seq, ns))
}

fn note(samples: &mut Vec<String>, count: &mut u64, what: String) {
    *count += 1;
    if samples.len() < ERROR_SAMPLES {
        samples.push(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_padded_to_the_payload_size_and_parse_back() {
        let mut buf = Vec::new();
        push_message(&mut buf, b"MSG bob ", 42, 1_234_567, 50);
        let line = std::str::from_utf8(&buf).unwrap();
        let payload = line.strip_prefix("MSG bob ").unwrap().trim_end();
        assert_eq!(payload.len(), 50);
        assert_eq!(parse_payload(payload), Some((42, 1_234_567)));
        buf.clear();
        push_message(&mut buf, b"MSG bob ", 0, 0, 1);
        assert_eq!(buf, b"MSG bob 0:0:x\n");
    }
}
