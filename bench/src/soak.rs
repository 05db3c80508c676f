//! `--soak SECONDS`: many clients doing random things for a bounded time, checked end to end.
//!
//! Each client is one thread with one connection. Between actions it pauses a random time
//! (uniform in 0..2x `--think-ms`) while reading whatever arrives. Actions:
//!
//! | action | share | checked |
//! |---|---|---|
//! | `MSG` to a random steady client | 60% | every one arrives, in order (per sender) |
//! | `PING <token>` | 20% | `PONG <token>` comes back, in order with other replies |
//! | `LIST` | 10% | an `OK LIST` reply comes back, in order |
//! | `SAY` | 5% | counted on arrival |
//! | reconnect (`QUIT`, wait for `BYE`, connect, `LOGIN`) | 5%, churning clients only | `BYE` arrives after all earlier replies |
//!
//! Half the clients churn (reconnect now and then); the other half stay connected and are
//! the only recipients of private messages, so every private message must arrive: a
//! churning sender quits only after its `BYE`, which the server sends after routing
//! everything it sent before. At the end each client pings and waits for its `PONG` (all
//! its messages routed), all clients meet at a barrier, then each pings again (everything
//! routed to it has arrived). Then sent and received counts must match exactly. Any `ERR`,
//! unexpected `BYE`, closed connection or missing reply is an error. The server's RSS is
//! read once a second.

use std::collections::VecDeque;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;
use securechat::{Error, Result};

use crate::clients::{open_many, Conn, ReadError, Setup, SETUP_STACK_BYTES};
use crate::pairs::ERROR_SAMPLES;
use crate::results::{SoakActions, SoakResult, TimedRss};
use crate::target::{CpuSnapshot, Target};

/// How long a reply may take before it counts as missing.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One soak run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Clients at once.
    pub clients: usize,
    /// Length of the traffic phase.
    pub duration: Duration,
    /// Mean pause between one client's actions.
    pub think: Duration,
    /// Connections opened at once during setup.
    pub concurrency: usize,
    /// Prefix of user names.
    pub tag: String,
}

/// A reply a client is owed, in the order the server must send them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// `PONG <token>`.
    Pong(String),
    /// `OK LIST ...`.
    List,
    /// `BYE goodbye` after `QUIT`.
    Bye,
}

/// One client's view of the soak.
struct ClientState {
    /// This client's index.
    me: usize,
    /// `<tag>c`, the prefix of every soak user name (followed by the index).
    prefix: String,
    /// Replies owed, oldest first, with when they were asked for.
    expect: VecDeque<(Expect, Instant)>,
    /// Next sequence number of private messages to each client.
    sent_to: Vec<u64>,
    /// Private messages received from each client.
    received_from: Vec<u64>,
    /// Next sequence number expected from each client.
    next_from: Vec<u64>,
    /// Messages that arrived out of sequence.
    reordered: u64,
    /// Room messages received.
    room_received: u64,
    /// Actions performed.
    actions: SoakActions,
    /// The first few errors, verbatim.
    errors: Vec<String>,
    /// How many errors in all.
    error_count: u64,
    /// Tokens for `PING`.
    next_token: u64,
}

impl ClientState {
    fn error(&mut self, what: String) {
        self.error_count += 1;
        if self.errors.len() < ERROR_SAMPLES {
            self.errors.push(format!("client {}: {what}", self.me));
        }
    }

    /// Handles one line from the server.
    fn on_line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("FROM ") {
            let parsed = rest.split_once(' ').and_then(|(user, payload)| {
                let from: usize = user.strip_prefix(&self.prefix)?.parse().ok()?;
                let seq: u64 = payload.split(':').next()?.parse().ok()?;
                (from < self.sent_to.len()).then_some((from, seq))
            });
            match parsed {
                Some((from, seq)) => {
                    if seq != self.next_from[from] {
                        self.reordered += 1;
                    }
                    self.next_from[from] = seq + 1;
                    self.received_from[from] += 1;
                }
                None => self.error(format!("unexpected private message {line:?}")),
            }
        } else if line.starts_with("ROOM ") {
            self.room_received += 1;
        } else if line.starts_with("OFFLINE ") {
            // A churning correspondent left; nothing to check.
        } else {
            let got = if let Some(token) = line.strip_prefix("PONG ") {
                Expect::Pong(token.to_owned())
            } else if line.starts_with("OK LIST ") {
                Expect::List
            } else if line == "BYE goodbye" {
                Expect::Bye
            } else {
                self.error(format!("unexpected line {line:?}"));
                return;
            };
            match self.expect.pop_front() {
                Some((wanted, _)) if wanted == got => {}
                Some((wanted, _)) => self.error(format!("expected {wanted:?}, got {line:?}")),
                None => self.error(format!("unrequested reply {line:?}")),
            }
        }
    }

    /// Whether a reply is overdue.
    fn overdue(&self) -> Option<Expect> {
        self.expect
            .front()
            .filter(|(_, asked)| asked.elapsed() > REPLY_TIMEOUT)
            .map(|(e, _)| e.clone())
    }
}

/// Sends one line and records the reply it is owed.
fn ask(conn: &mut Conn, state: &mut ClientState, line: &str, expect: Expect) -> Result<()> {
    conn.send(format!("{line}\n").as_bytes())?;
    state.expect.push_back((expect, Instant::now()));
    Ok(())
}

/// Reads until every owed reply has arrived.
fn settle(conn: &mut Conn, state: &mut ClientState) -> Result<()> {
    conn.set_read_timeout(Some(REPLY_TIMEOUT))?;
    while !state.expect.is_empty() {
        match conn.read_lines(|line| state.on_line(line)) {
            Ok(_) => {}
            Err(ReadError::Closed) if state.expect.is_empty() => break,
            Err(e) => {
                return Err(Error::Protocol(format!(
                    "waiting for {:?}: {e}",
                    state.expect.front()
                )))
            }
        }
    }
    Ok(())
}

/// Pings and waits for the `PONG` (and everything owed before it).
fn sync(conn: &mut Conn, state: &mut ClientState) -> Result<()> {
    let token = format!("sync{}", state.next_token);
    state.next_token += 1;
    ask(conn, state, &format!("PING {token}"), Expect::Pong(token))?;
    settle(conn, state)
}

/// Runs the soak.
pub fn run(target: &Target, cfg: &SoakConfig) -> Result<SoakResult> {
    if cfg.clients < 4 {
        return Err(Error::Config("--soak needs --clients 4 or more".into()));
    }
    let names: Vec<String> = (0..cfg.clients)
        .map(|i| format!("{}c{i}", cfg.tag))
        .collect();
    let opened = open_many(target, &names, Setup::RegisterAndLogin, cfg.concurrency)?;
    let setup = opened.stats();
    // Even indices stay connected and receive private messages; odd ones churn.
    let steady: Vec<usize> = (0..cfg.clients).step_by(2).collect();
    let churning = cfg.clients - steady.len();
    let start = Barrier::new(cfg.clients + 1);
    let end = Barrier::new(cfg.clients);
    let mut rss_samples = Vec::new();
    let mut cpu = None;
    let states = thread::scope(|scope| -> Result<Vec<ClientState>> {
        let mut handles = Vec::with_capacity(cfg.clients);
        for (me, conn) in opened.conns.into_iter().enumerate() {
            let (start, end, steady, name) = (&start, &end, &steady, &names[me]);
            let handle = thread::Builder::new()
                .name(format!("bench-soak-{me}"))
                .stack_size(SETUP_STACK_BYTES)
                .spawn_scoped(scope, move || {
                    start.wait();
                    client(me, name, conn, target, cfg, steady, end)
                })?;
            handles.push(handle);
        }
        let before = CpuSnapshot::take(target);
        start.wait();
        let began = Instant::now();
        let mut after = None;
        // One RSS sample a second until every client is done.
        while !handles.iter().all(|h| h.is_finished()) {
            let due = Duration::from_secs(rss_samples.len() as u64);
            if began.elapsed() >= due {
                if let Some(rss) = target.rss_kib() {
                    rss_samples.push(TimedRss {
                        t_s: began.elapsed().as_secs_f64(),
                        rss_kib: rss,
                    });
                }
            }
            if after.is_none() && began.elapsed() >= cfg.duration {
                after = Some(CpuSnapshot::take(target));
            }
            thread::sleep(Duration::from_millis(50));
        }
        let after = after.unwrap_or_else(|| CpuSnapshot::take(target));
        cpu = Some(before.usage(&after, 1));
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Error::Protocol("a soak client thread panicked (a bug)".into()))
            })
            .collect()
    })?;

    let mut result = SoakResult {
        clients: cfg.clients,
        churning_clients: churning,
        seconds: cfg.duration.as_secs_f64(),
        think_ms: cfg.think.as_secs_f64() * 1e3,
        setup,
        ..SoakResult::default()
    };
    for s in &states {
        result.actions.private += s.actions.private;
        result.actions.room += s.actions.room;
        result.actions.list += s.actions.list;
        result.actions.ping += s.actions.ping;
        result.actions.reconnect += s.actions.reconnect;
        result.private_delivered += s.received_from.iter().sum::<u64>();
        result.reordered += s.reordered;
        result.room_delivered += s.room_received;
        result.errors += s.error_count;
        for e in &s.errors {
            if result.error_samples.len() < ERROR_SAMPLES {
                result.error_samples.push(e.clone());
            }
        }
    }
    for (a, sender) in states.iter().enumerate() {
        for (b, &sent) in sender.sent_to.iter().enumerate() {
            result.private_sent += sent;
            let got = states[b].received_from[a];
            result.lost += sent.saturating_sub(got);
            if got > sent {
                result.errors += 1;
                if result.error_samples.len() < ERROR_SAMPLES {
                    result.error_samples.push(format!(
                        "client {b} got {got} messages from {a}, which sent {sent}"
                    ));
                }
            }
        }
    }
    let warm = rss_samples
        .iter()
        .find(|s| s.t_s >= result.seconds / 4.0)
        .map(|s| s.rss_kib as i64);
    let last = rss_samples.last().map(|s| s.rss_kib as i64);
    result.rss_growth_kib = warm.zip(last).map(|(w, l)| l - w);
    result.server_cores = cpu.and_then(|c| c.server_cores);
    result.rss_samples = rss_samples;
    Ok(result)
}

/// One client's whole run. Always reaches the end barrier, even after an error.
fn client(
    me: usize,
    name: &str,
    conn: Conn,
    target: &Target,
    cfg: &SoakConfig,
    steady: &[usize],
    end: &Barrier,
) -> ClientState {
    let mut state = ClientState {
        me,
        prefix: format!("{}c", cfg.tag),
        expect: VecDeque::new(),
        sent_to: vec![0; cfg.clients],
        received_from: vec![0; cfg.clients],
        next_from: vec![0; cfg.clients],
        reordered: 0,
        room_received: 0,
        actions: SoakActions::default(),
        errors: Vec::new(),
        error_count: 0,
        next_token: 0,
    };
    let churns = me % 2 == 1;
    let mut conn = Some(conn);
    let traffic = act(&mut conn, &mut state, cfg, steady, churns, (target, name));
    let synced = traffic.and_then(|()| match conn.as_mut() {
        Some(c) => sync(c, &mut state),
        None => Ok(()),
    });
    if let Err(e) = synced {
        state.error(e.to_string());
        conn = None;
    }
    // Everyone's messages are routed once all are here; one more ping then proves that
    // everything routed to this client has arrived.
    end.wait();
    if let Some(mut c) = conn {
        if let Err(e) = sync(&mut c, &mut state) {
            state.error(format!("final sync: {e}"));
        }
        c.close();
    }
    state
}

/// The random actions, until the soak's time is up.
fn act(
    conn: &mut Option<Conn>,
    state: &mut ClientState,
    cfg: &SoakConfig,
    steady: &[usize],
    churns: bool,
    (target, name): (&Target, &str),
) -> Result<()> {
    let mut rng = rand::rng();
    let began = Instant::now();
    let deadline = began + cfg.duration;
    let think_ms = cfg.think.as_secs_f64() * 1e3;
    let mut next_action =
        began + Duration::from_secs_f64(rng.random_range(0.0..=2.0 * think_ms) / 1e3);
    let mut room_seq = 0u64;
    while Instant::now() < deadline {
        let c = conn
            .as_mut()
            .ok_or_else(|| Error::Protocol("no connection".into()))?;
        let now = Instant::now();
        if now < next_action {
            c.set_read_timeout(Some(next_action - now))?;
            match c.read_lines(|line| state.on_line(line)) {
                Ok(_) | Err(ReadError::Timeout) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(wanted) = state.overdue() {
                return Err(Error::Protocol(format!(
                    "no {wanted:?} within {REPLY_TIMEOUT:?}"
                )));
            }
            continue;
        }
        next_action = now + Duration::from_secs_f64(rng.random_range(0.0..=2.0 * think_ms) / 1e3);
        let roll: f64 = rng.random();
        if roll < 0.60 || (roll >= 0.95 && !churns) {
            let mut to = steady[rng.random_range(0..steady.len())];
            if to == state.me {
                to = steady[(steady.iter().position(|&s| s == to).unwrap_or(0) + 1) % steady.len()];
            }
            let seq = state.sent_to[to];
            c.send(format!("MSG {}{to} {seq}:soak\n", state.prefix).as_bytes())?;
            state.sent_to[to] += 1;
            state.actions.private += 1;
        } else if roll < 0.80 {
            let token = format!("t{}", state.next_token);
            state.next_token += 1;
            ask(c, state, &format!("PING {token}"), Expect::Pong(token))?;
            state.actions.ping += 1;
        } else if roll < 0.90 {
            ask(c, state, "LIST", Expect::List)?;
            state.actions.list += 1;
        } else if roll < 0.95 {
            c.send(format!("SAY soak {} {room_seq}\n", state.me).as_bytes())?;
            room_seq += 1;
            state.actions.room += 1;
        } else {
            // Churning clients only (steady ones sent a private message above).
            ask(c, state, "QUIT", Expect::Bye)?;
            settle(c, state)?;
            c.close();
            *conn = None;
            let mut fresh = Conn::connect(target)?;
            fresh.login(name)?;
            *conn = Some(fresh);
            state.actions.reconnect += 1;
        }
    }
    Ok(())
}
