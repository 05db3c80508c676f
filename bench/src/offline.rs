//! `--offline`: N users come back to M queued messages each and log in at once.
//!
//! 1. Set-up, not measured: N recipient accounts register, opt in (`MAILBOX`), log in once
//!    and leave, so the server knows them; a few sender accounts (`--offline-senders`) do
//!    the same and stay. One `MAILBOX` reply says the server's quota per recipient, and a
//!    run that would exceed it (M messages, M x `--offline-size` payload bytes) is refused
//!    before anything is sent.
//! 2. *Enqueue*: the senders `SEND` M messages to every recipient (each sender its share of
//!    the recipients, up to `--batch` requests per write, then waiting for their `STATUS`
//!    replies) and every one must come back `STATUS <ref> queued <user> <id>`. Each is a
//!    durable SQLite commit (`synchronous=FULL`) before its reply, so messages/s here is
//!    commits/s.
//! 3. *Drain*: N connections are opened (TLS handshake, `HELLO`; set-up), one thread each,
//!    then one signal releases them all: each sends `MAILBOX` and `LOGIN` in one write, reads the replayed `MAIL` lines,
//!    and `ACK`s each read's ids in one write. A recipient is drained when it holds M mail;
//!    a `PING` after that sees whether anything more (a duplicate) was still coming. The
//!    senders meanwhile count their `STATUS … delivered` lines.
//!
//! Reported: enqueue rate, drain time (release → last recipient drained), delivery rate,
//! per-recipient drain time percentiles, login times, and CPU in both phases. Checked
//! (failing the run, never on speed): every recipient got exactly the ids queued for it, in
//! increasing order, each payload its own. The senders' `delivered` statuses are counted
//! but not required: the server drops an `ACK` whose commit cannot get SQLite's write lock
//! within its busy timeout (logged; the message stays queued and comes again at the next
//! login, so nothing is lost), and a big drain can make that happen.

use std::sync::RwLock;
use std::thread;
use std::time::{Duration, Instant};

use securechat::protocol::{DeliveryState, Request, ServerLine};
use securechat::{Error, Result};

use crate::clients::{open_many, Conn, ReadError, Setup, PASSWORD, SETUP_STACK_BYTES};
use crate::pairs::ERROR_SAMPLES;
use crate::results::{OfflineResult, Percentiles};
use crate::target::{CpuSnapshot, Target};

/// The payload's opening word: what the real client's payloads look like (section 11.3 of
/// the protocol); the server never reads it.
const PAYLOAD_WORD: &str = "RATCHET";

/// Smallest `--offline-size`: room for the word and the reference that identifies a
/// payload (`RATCHET r<user>n<seq>.`).
pub const MIN_PAYLOAD_BYTES: usize = 32;

/// One offline run.
#[derive(Debug, Clone)]
pub struct OfflineConfig {
    /// Recipients, each sent `messages` while offline.
    pub users: usize,
    /// Messages queued per recipient.
    pub messages: u64,
    /// Sender accounts sharing the recipients between them.
    pub senders: usize,
    /// Payload bytes per message (after `SEND <user> <ref> `).
    pub size: usize,
    /// Most `SEND` requests per TLS write (a sender waits for their replies before the next).
    pub batch: usize,
    /// Connections being registered at once during set-up.
    pub concurrency: usize,
    /// How long a client waits for its next line before giving up.
    pub stall: Duration,
    /// Prefix of this run's user names.
    pub tag: String,
}

/// What went wrong, counted, with the first few in words.
#[derive(Debug, Default)]
struct Errors {
    /// How many.
    count: u64,
    /// The first [`ERROR_SAMPLES`], verbatim.
    samples: Vec<String>,
}

impl Errors {
    fn add(&mut self, what: String) {
        self.count += 1;
        if self.samples.len() < ERROR_SAMPLES {
            self.samples.push(what);
        }
    }

    fn merge(&mut self, other: Errors) {
        self.count += other.count;
        for s in other.samples {
            if self.samples.len() < ERROR_SAMPLES {
                self.samples.push(s);
            }
        }
    }
}

/// One recipient's drain, as its thread saw it.
#[derive(Debug, Default)]
struct Drained {
    /// `OK LOGIN` arrived, ns after the release.
    login_ns: u64,
    /// The M-th `MAIL` arrived, ns after the release (`None`: never).
    done_ns: Option<u64>,
    /// Every `MAIL` id in arrival order (duplicates included).
    ids: Vec<u64>,
    /// Mail whose payload was not one of this recipient's.
    foreign: u64,
    /// Failures.
    errors: Errors,
}

/// Runs the offline benchmark on `target`.
pub fn run(target: &Target, cfg: &OfflineConfig) -> Result<OfflineResult> {
    let users: Vec<String> = (0..cfg.users).map(|i| format!("{}m{i}", cfg.tag)).collect();
    let senders: Vec<String> = (0..cfg.senders)
        .map(|i| format!("{}o{i}", cfg.tag))
        .collect();
    let size = cfg.size.max(MIN_PAYLOAD_BYTES);
    check_quota(target, cfg.messages, size)?;

    eprintln!(
        "offline: registering {} recipients and {} senders (set-up, not measured)",
        users.len(),
        senders.len()
    );
    let registered = open_many(
        target,
        &users,
        Setup::RegisterMailboxAndLogin,
        cfg.concurrency,
    )?;
    for conn in &registered.conns {
        conn.close();
    }
    let register_seconds = registered.seconds;
    drop(registered);
    let opened = open_many(
        target,
        &senders,
        Setup::RegisterMailboxAndLogin,
        cfg.concurrency,
    )?;

    let total = cfg.users as u64 * cfg.messages;
    eprintln!(
        "offline: {} senders queue {} x {} messages of {size} bytes",
        senders.len(),
        users.len(),
        cfg.messages
    );
    let before = CpuSnapshot::take(target);
    let started = Instant::now();
    let enqueued: Vec<(Conn, Result<Queued>)> = thread::scope(|scope| {
        let workers: Vec<_> = opened
            .conns
            .into_iter()
            .enumerate()
            .map(|(s, mut conn)| {
                let users = &users;
                scope.spawn(move || {
                    let queued = enqueue(&mut conn, users, s, cfg, size);
                    (conn, queued)
                })
            })
            .collect();
        workers.into_iter().map(join).collect()
    });
    let enqueue_seconds = started.elapsed().as_secs_f64();
    let enqueue_cpu = before.usage(&CpuSnapshot::take(target), total);

    // Per recipient, the ids the server gave its messages, and how many each sender waits
    // to hear were delivered.
    let mut expected: Vec<Vec<u64>> = vec![Vec::new(); cfg.users];
    let mut errors = Errors::default();
    let mut listeners = Vec::new();
    for (conn, queued) in enqueued {
        match queued {
            Ok(q) => {
                for (user, id) in q.ids {
                    expected[user].push(id);
                }
                errors.merge(q.errors);
                listeners.push((conn, q.count));
            }
            Err(e) => errors.add(format!("sender: {e}")),
        }
    }
    let queued: u64 = expected.iter().map(|ids| ids.len() as u64).sum();
    eprintln!(
        "  queued {queued} in {enqueue_seconds:.2} s ({:.0} msgs/s); {} recipients log in at once",
        queued as f64 / enqueue_seconds.max(1e-9),
        users.len()
    );

    let connected = open_many(target, &users, Setup::ConnectOnly, cfg.concurrency)?;
    // The gate: held for writing until every recipient thread is waiting to read it.
    let gate = RwLock::new(());
    let (drained, delivered_statuses, release_at, drain_cpu) = thread::scope(|scope| {
        let closed = gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let statuses: Vec<_> = listeners
            .into_iter()
            .map(|(mut conn, count)| scope.spawn(move || count_delivered(&mut conn, count)))
            .collect();
        let recipients: Vec<_> = connected
            .conns
            .into_iter()
            .zip(users.iter().enumerate())
            .map(|(conn, recipient)| {
                let gate = &gate;
                thread::Builder::new()
                    .name("bench-offline".into())
                    .stack_size(SETUP_STACK_BYTES)
                    .spawn_scoped(scope, move || drain(conn, recipient, gate, cfg))
            })
            .collect();
        let before = CpuSnapshot::take(target);
        let release_at = Instant::now();
        drop(closed);
        let drained: Vec<Result<(Drained, Instant)>> = recipients
            .into_iter()
            .map(|r| r.map_err(Error::from).and_then(join))
            .collect();
        let cpu = before.usage(&CpuSnapshot::take(target), queued);
        let delivered: u64 = statuses.into_iter().map(join).sum();
        (drained, delivered, release_at, cpu)
    });

    let mut login_nanos = Vec::new();
    let mut drain_nanos = Vec::new();
    let (mut delivered, mut lost, mut duplicated, mut reordered) = (0, 0, 0, 0);
    let mut last_done = release_at;
    for (user, outcome) in drained.into_iter().enumerate() {
        let (d, done_at) = match outcome {
            Ok(d) => d,
            Err(e) => {
                errors.add(format!("{}: {e}", users[user]));
                lost += expected[user].len() as u64;
                continue;
            }
        };
        last_done = last_done.max(done_at);
        login_nanos.push(d.login_ns);
        drain_nanos.extend(d.done_ns);
        let mut unique = d.ids.clone();
        unique.sort_unstable();
        unique.dedup();
        duplicated += (d.ids.len() - unique.len()) as u64;
        reordered += d.ids.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        let mut want = expected[user].clone();
        want.sort_unstable();
        let got = unique
            .iter()
            .filter(|id| want.binary_search(id).is_ok())
            .count() as u64;
        delivered += got;
        lost += want.len() as u64 - got;
        if d.foreign > 0 || unique.len() as u64 > got {
            errors.add(format!(
                "{}: {} mail not queued for it ({} with a foreign payload)",
                users[user],
                unique.len() as u64 - got + d.foreign,
                d.foreign
            ));
        }
        errors.merge(d.errors);
    }
    let drain_seconds = last_done.duration_since(release_at).as_secs_f64();
    Ok(OfflineResult {
        users: cfg.users,
        messages_per_user: cfg.messages,
        senders: cfg.senders,
        payload_bytes: size,
        register_seconds,
        queued,
        enqueue_seconds,
        enqueue_msgs_per_s: queued as f64 / enqueue_seconds.max(1e-9),
        enqueue_cpu,
        drained_users: drain_nanos.len(),
        delivered,
        drain_seconds,
        delivery_msgs_per_s: delivered as f64 / drain_seconds.max(1e-9),
        login_ms: Percentiles::of_nanos(&mut login_nanos),
        drain_ms: Percentiles::of_nanos(&mut drain_nanos),
        drain_cpu,
        delivered_statuses,
        lost,
        duplicated,
        reordered,
        errors: errors.count,
        error_samples: errors.samples,
    })
}

/// Refuses a run the server's quota per recipient would cut short (`OK MAILBOX` says it).
fn check_quota(target: &Target, messages: u64, size: usize) -> Result<()> {
    let mut conn = Conn::connect(target)?;
    let limits = conn.mailbox()?;
    conn.close();
    let bytes = messages * size as u64;
    if messages > limits.max_messages || bytes > limits.max_bytes {
        return Err(Error::Config(format!(
            "--offline-messages {messages} of --offline-size {size} bytes ({bytes} bytes) \
             exceed the server's quota per recipient ({} messages, {} bytes): send fewer or \
             smaller messages, or raise the server's --queue-max and --queue-max-bytes",
            limits.max_messages, limits.max_bytes
        )));
    }
    Ok(())
}

/// The payload of message `seq` to recipient `user`, exactly `size` bytes: it names both,
/// so a recipient can tell its own mail, and is padded with base64-like filler.
fn payload(user: usize, seq: u64, size: usize) -> String {
    let mut text = format!("{PAYLOAD_WORD} r{user}n{seq}.");
    let filler = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    text.extend((text.len()..size).map(|i| char::from(filler[i % filler.len()])));
    text
}

/// What one sender queued.
struct Queued {
    /// (recipient index, message id) per `STATUS … queued`.
    ids: Vec<(usize, u64)>,
    /// How many were queued (the `delivered` lines this sender is owed).
    count: u64,
    /// Refusals and other unexpected replies.
    errors: Errors,
}

/// Sender `s` queues `cfg.messages` for each recipient `i` with `i % senders == s`, one
/// message to each in turn, `cfg.batch` requests per write.
fn enqueue(
    conn: &mut Conn,
    users: &[String],
    s: usize,
    cfg: &OfflineConfig,
    size: usize,
) -> Result<Queued> {
    let mine: Vec<usize> = (s..users.len()).step_by(cfg.senders).collect();
    let sends: Vec<(usize, u64)> = (0..cfg.messages)
        .flat_map(|seq| mine.iter().map(move |&user| (user, seq)))
        .collect();
    let mut queued = Queued {
        ids: Vec::with_capacity(sends.len()),
        count: 0,
        errors: Errors::default(),
    };
    conn.set_read_timeout(Some(cfg.stall))?;
    let mut frame = Vec::new();
    for batch in sends.chunks(cfg.batch.max(1)) {
        frame.clear();
        for &(user, seq) in batch {
            let reference = format!("r{user}n{seq}");
            let request = Request::Send {
                to: &users[user],
                reference: &reference,
                payload: &payload(user, seq, size),
            };
            frame.extend_from_slice(format!("{request}\n").as_bytes());
        }
        conn.send(&frame)?;
        let mut replies = 0;
        while replies < batch.len() {
            conn.read_lines(|line| {
                replies += 1;
                match ServerLine::parse(line) {
                    Ok(ServerLine::Status {
                        reference,
                        state: DeliveryState::Queued { id },
                        ..
                    }) => match reference_user(&reference) {
                        Some(user) => {
                            queued.ids.push((user, id));
                            queued.count += 1;
                        }
                        None => queued.errors.add(format!("unknown reference: {line}")),
                    },
                    _ => queued.errors.add(format!("SEND: {line}")),
                }
            })?;
        }
    }
    Ok(queued)
}

/// The recipient index in a reference `r<user>n<seq>`.
fn reference_user(reference: &str) -> Option<usize> {
    let (user, _) = reference.strip_prefix('r')?.split_once('n')?;
    user.parse().ok()
}

/// Reads a sender's lines until `count` `STATUS … delivered` arrived or nothing came within
/// its read timeout (`--stall`, set by [`enqueue`]); returns how many did.
fn count_delivered(conn: &mut Conn, count: u64) -> u64 {
    let mut delivered = 0;
    while delivered < count {
        let read = conn.read_lines(|line| {
            if let Ok(ServerLine::Status {
                state: DeliveryState::Delivered,
                ..
            }) = ServerLine::parse(line)
            {
                delivered += 1;
            }
        });
        if read.is_err() {
            break;
        }
    }
    conn.close();
    delivered
}

/// One recipient (its index and name) on its open connection: waits at the gate, then
/// `MAILBOX` + `LOGIN`, reads and acknowledges its mail until it holds `cfg.messages`, and a
/// `PING` round trip after. Returns what it saw and when it was drained.
fn drain(
    mut conn: Conn,
    (index, user): (usize, &String),
    gate: &RwLock<()>,
    cfg: &OfflineConfig,
) -> Result<(Drained, Instant)> {
    drop(
        gate.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let start = Instant::now();
    let since = |at: Instant| at.duration_since(start).as_nanos() as u64;
    conn.set_read_timeout(Some(cfg.stall))?;
    let login = Request::Login {
        user,
        password: PASSWORD,
    };
    conn.send(format!("{}\n{login}\n", Request::Mailbox).as_bytes())?;
    let mut d = Drained::default();
    let mut done_at = None;
    let mut logged_in = false;
    let mut pong = false;
    let own = format!("{PAYLOAD_WORD} r{index}n");
    let mut acks = Vec::new();
    while !pong {
        acks.clear();
        let read = conn.read_lines(|line| match ServerLine::parse(line) {
            Ok(ServerLine::Mail { id, payload, .. }) => {
                d.ids.push(id);
                if !payload.starts_with(&own) {
                    d.foreign += 1;
                }
                acks.extend_from_slice(
                    format!(
                        "{}\n",
                        Request::Ack {
                            id,
                            unreadable: false,
                        }
                    )
                    .as_bytes(),
                );
            }
            Ok(ServerLine::Ok { .. }) if line.starts_with("OK LOGIN") => {
                logged_in = true;
                d.login_ns = since(Instant::now());
            }
            Ok(ServerLine::Ok { .. }) => {}
            Ok(ServerLine::Pong { .. }) => pong = true,
            _ => d.errors.add(format!("{user}: unexpected {line}")),
        });
        match read {
            Ok(_) => {}
            Err(ReadError::Timeout) => {
                return Err(Error::Protocol(format!(
                    "stalled with {} of {} mail (logged in: {logged_in})",
                    d.ids.len(),
                    cfg.messages
                )))
            }
            Err(e) => return Err(e.into()),
        }
        if !acks.is_empty() {
            conn.send(&acks)?;
        }
        if done_at.is_none() && d.ids.len() as u64 >= cfg.messages {
            let now = Instant::now();
            done_at = Some(now);
            d.done_ns = Some(since(now));
            conn.send(format!("{}\n", Request::Ping { token: "drained" }).as_bytes())?;
        }
    }
    conn.close();
    Ok((d, done_at.unwrap_or(start)))
}

/// Joins a scoped thread; a panic in it (a bug) carries on in the caller.
fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_has_the_asked_size_and_names_its_recipient() {
        let p = payload(12, 345, 64);
        assert_eq!(p.len(), 64);
        assert!(p.starts_with("RATCHET r12n345."), "{p}");
        assert_eq!(reference_user("r12n345"), Some(12));
        assert_eq!(reference_user("x12"), None);
    }
}
