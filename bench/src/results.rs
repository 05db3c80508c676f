//! What a benchmark run measured, as written to (and read back from) its JSON file.
//!
//! Shared by the `bench` binary (`bench/src/main.rs`), which fills it in, and the `figures`
//! binary (`bench/src/bin/figures.rs`), which draws it. Every number carries its unit in its
//! name. Fields that a run could not measure (no server pid for an external server, say) are
//! `null`.

use serde::{Deserialize, Serialize};

/// Version of this file format; bumped when a field changes meaning.
pub const SCHEMA: u32 = 1;

/// One benchmark invocation: the setting, then one section per phase that ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Always `securechat-bench`, so a stray JSON file is recognised as ours or not.
    pub tool: String,
    /// [`SCHEMA`] of the writer.
    pub schema: u32,
    /// When the run started (UTC, ISO 8601).
    pub started: String,
    /// The phases that ran, joined with `+` (for example `flood+idle`); also names the file.
    pub mode: String,
    /// The command line, to rerun it.
    pub command: String,
    /// The commit of the code measured (`git describe --always --dirty` where the bench ran;
    /// `None` outside a git checkout, and in files written before this field existed).
    #[serde(default)]
    pub commit: Option<String>,
    /// Where the load went and how that server was configured.
    pub server: ServerInfo,
    /// The machine everything ran on (server and generator share it).
    pub machine: Machine,
    /// `--flood`: every sender sends as fast as it can.
    #[serde(default)]
    pub flood: Option<PairsResult>,
    /// `--rate`: one run per offered rate, for latency.
    #[serde(default)]
    pub rates: Vec<PairsResult>,
    /// `--sweep`: one flood per number of pairs, for throughput scaling.
    #[serde(default)]
    pub sweep: Vec<PairsResult>,
    /// `--idle`: memory per idle logged-in connection.
    #[serde(default)]
    pub idle: Option<IdleResult>,
    /// `--soak`: random mixed traffic for a bounded time.
    #[serde(default)]
    pub soak: Option<SoakResult>,
    /// `--storm`: chatting pairs' latency before and during a login storm.
    #[serde(default)]
    pub storm: Option<StormResult>,
    /// `--dh`: the cost of one end-to-end key agreement, per group.
    #[serde(default)]
    pub dh: Option<DhReport>,
    /// `--offline`: queued mail enqueued, then drained by its recipients logging in at once.
    #[serde(default)]
    pub offline: Option<OfflineResult>,
}

/// The server under load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerInfo {
    /// `spawned` (a child process this tool started and stopped, fresh for every run), or
    /// `external` (`--server`).
    pub kind: String,
    /// The program the spawned server ran: this bench binary in its `--serve-child` role,
    /// or the `--server-bin` path. `None` for an external server.
    pub program: Option<String>,
    /// bcrypt cost of the accounts the runs created (`None`: not known, external server).
    /// `--storm` runs its own server and records its cost in [`StormResult::bcrypt_cost`].
    pub bcrypt_cost: Option<u32>,
    /// Human-readable summary of the setting, printed at the top of the table too.
    pub note: String,
}

/// The machine, so numbers from different machines are not compared by mistake.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    /// Logical CPUs available.
    pub cores: usize,
    /// CPU model from `/proc/cpuinfo`.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// Whether this was an optimised build (debug builds are 10x+ slower; smoke tests only).
    pub release_build: bool,
}

/// Latency or duration percentiles, in milliseconds (nearest-rank).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// The largest value.
    pub max: f64,
}

impl Report {
    /// Every pairs run in the report: the flood, the rate runs, the sweep, the rate runs with
    /// idle connections held, the storm's pairs.
    pub fn pairs_runs(&self) -> impl Iterator<Item = &PairsResult> {
        self.flood
            .iter()
            .chain(&self.rates)
            .chain(&self.sweep)
            .chain(self.idle.iter().flat_map(|i| &i.with_traffic))
            .chain(self.storm.iter().map(|s| &s.run))
    }
}

impl Percentiles {
    /// Percentiles of `values` (nanoseconds, sorted in place) in milliseconds; zeros if empty.
    pub fn of_nanos(values: &mut [u64]) -> Percentiles {
        values.sort_unstable();
        let at = |p: f64| -> f64 {
            if values.is_empty() {
                return 0.0;
            }
            // Nearest rank: the smallest value with at least p% of the values at or below it.
            let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1] as f64 / 1e6
        };
        Percentiles {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            p999: at(99.9),
            max: at(100.0),
        }
    }
}

/// Opening connections before a phase: TCP + TLS + greeting + `LOGIN` (the `REGISTER`
/// before it is not counted), at most `concurrency` at a time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetupStats {
    /// Connections opened.
    pub connections: usize,
    /// Connections being opened at once.
    pub concurrency: usize,
    /// Wall time to open all of them, registration included.
    pub seconds: f64,
    /// Per connection: connect + TLS handshake + greeting + login round trip.
    pub connect_login_ms: Percentiles,
    /// Per connection: the `REGISTER` round trip (bcrypt plus a database insert).
    #[serde(default)]
    pub register_ms: Percentiles,
}

/// CPU used during a message phase (from `/proc`), as cores busy on average.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuUse {
    /// Length of the measured window (start of sending to last delivery), seconds.
    pub window_s: f64,
    /// Server process CPU seconds / window (`None` without a server pid).
    pub server_cores: Option<f64>,
    /// Server CPU per delivered message, microseconds.
    pub server_us_per_msg: Option<f64>,
    /// This generator's CPU seconds / window.
    pub generator_cores: f64,
    /// Generator CPU per delivered message, microseconds.
    pub generator_us_per_msg: f64,
    /// Whole-machine busy time / window (server + generator + everything else); `None`
    /// when the window is too short for `/proc/stat`'s 10 ms ticks.
    pub machine_busy_cores: Option<f64>,
    /// Cores the machine has.
    pub machine_cores: usize,
}

/// One run of N sender/receiver pairs (flood or fixed rate).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PairsResult {
    /// `flood`, `rate` or `sweep`.
    pub kind: String,
    /// Sender/receiver pairs (each a logged-in TLS connection, so 2N connections).
    pub pairs: usize,
    /// Messages each sender sends.
    pub messages_per_sender: u64,
    /// Payload size in bytes (`<seq>:<send ns>:` then padding).
    pub payload_bytes: usize,
    /// Most messages a sender packs into one TLS write.
    pub batch: usize,
    /// Messages in flight allowed per pair (`None`: unlimited).
    pub window: Option<u64>,
    /// Offered rate per sender, msgs/s (`None`: flood).
    pub rate_per_sender: Option<f64>,
    /// Offered rate in all, msgs/s (`None`: flood).
    pub offered_msgs_per_s: Option<f64>,
    /// Messages the senders wrote.
    pub sent: u64,
    /// Messages the receivers got.
    pub delivered: u64,
    /// `sent - delivered`. Must be 0.
    pub lost: u64,
    /// Messages that arrived with a sequence number other than the next expected. Must be 0.
    pub reordered: u64,
    /// Unexpected events: `ERR` replies, closed connections, stalls. Must be 0.
    pub errors: u64,
    /// The first few errors, verbatim.
    pub error_samples: Vec<String>,
    /// First send to last delivery, seconds.
    pub duration_s: f64,
    /// `delivered / duration_s`.
    pub msgs_per_s: f64,
    /// Send-to-receive latency of every delivered message (one clock: both ends are in
    /// this process).
    pub latency_ms: Percentiles,
    /// Opening and logging in the 2N connections.
    pub setup: SetupStats,
    /// CPU used while messages flowed.
    pub cpu: CpuUse,
    /// Server resident memory after the run, KiB.
    pub server_rss_kib: Option<u64>,
}

/// One point of the memory curve: server RSS with this many idle logged-in connections.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct RssSample {
    /// Logged-in idle connections open.
    pub connections: usize,
    /// Server VmRSS, KiB.
    pub rss_kib: u64,
}

/// `--idle N`: server memory per idle logged-in connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleResult {
    /// Connections opened (each registered, logged in, then left idle).
    pub connections: usize,
    /// Server VmRSS before the first connection, KiB.
    pub rss_before_kib: u64,
    /// Server VmRSS with all of them open, KiB.
    pub rss_after_kib: u64,
    /// `(after - before) / connections`, KiB: includes one-off costs (the first TLS
    /// handshake, the account database's cache), so it overstates the marginal cost at
    /// small N.
    pub rss_per_conn_kib: f64,
    /// Least-squares slope of RSS over the samples, KiB per connection: the marginal cost.
    pub slope_kib_per_conn: f64,
    /// RSS as connections were added (the first sample is 0 connections).
    pub samples: Vec<RssSample>,
    /// Opening the connections.
    pub setup: SetupStats,
    /// Server threads with all the connections open (`None`: not measured).
    #[serde(default)]
    pub server_threads: Option<u64>,
    /// `--idle N --rate R`: the `--rate` runs again, on the same server, while the N idle
    /// connections are held (the runs without them are in [`Report::rates`]). `kind` is
    /// `idle+rate`.
    #[serde(default)]
    pub with_traffic: Vec<PairsResult>,
}

/// One window of a [`StormResult`]: the chatting pairs' messages *sent* in it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormWindow {
    /// Start, seconds since the pairs started sending.
    pub from_s: f64,
    /// End, seconds since the pairs started sending.
    pub to_s: f64,
    /// Messages sent in the window (all were delivered, or the run reports loss).
    pub messages: u64,
    /// Their send-to-receive latency.
    pub latency_ms: Percentiles,
    /// CPU used in the window (`server_us_per_msg` includes the logins' work).
    pub cpu: CpuUse,
}

/// `--storm N`: the chatting pairs' latency in a quiet window and while N clients log in
/// at once, on a server with the production bcrypt cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormResult {
    /// Clients that logged in at once (their accounts were registered beforehand).
    pub clients: usize,
    /// bcrypt cost of every account on this run's server (`None`: an external server,
    /// whose setting the bench cannot see).
    pub bcrypt_cost: Option<u32>,
    /// bcrypt worker threads of the server (its production default: one per core; `None`:
    /// an external server).
    pub bcrypt_workers: Option<usize>,
    /// Chatting sender/receiver pairs.
    pub pairs: usize,
    /// Each sender's rate, msgs/s.
    pub rate_per_sender: f64,
    /// All senders' rate, msgs/s.
    pub offered_msgs_per_s: f64,
    /// Registering the storm accounts beforehand took this long (set-up), seconds.
    pub register_seconds: f64,
    /// Before the storm.
    pub quiet: StormWindow,
    /// From the storm's start to its last login.
    pub storm: StormWindow,
    /// `storm.latency_ms.p99 / quiet.latency_ms.p99` (`None` if a window has no messages).
    pub p99_ratio: Option<f64>,
    /// The same for the medians.
    pub p50_ratio: Option<f64>,
    /// Storm clients that logged in.
    pub logged_in: usize,
    /// Per storm client, from the common start: connect + TLS + `HELLO` + `LOGIN` reply.
    pub login_ms: Percentiles,
    /// Per storm client, from the common start: connect + TLS + `HELLO` only.
    pub connect_ms: Percentiles,
    /// Storm clients that failed to log in. Must be 0.
    pub login_errors: u64,
    /// The first few of those failures, verbatim.
    pub login_error_samples: Vec<String>,
    /// The pairs' whole run (loss, reordering and errors are checked on it).
    pub run: PairsResult,
}

/// `--offline`: senders queue M messages for each of N offline users (each a durable
/// commit), then all N log in at once and drain their mailboxes (see `bench/src/offline.rs`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OfflineResult {
    /// Recipients (N), registered and opted in beforehand.
    pub users: usize,
    /// Messages queued per recipient (M).
    pub messages_per_user: u64,
    /// Sender accounts sharing the recipients.
    pub senders: usize,
    /// Payload bytes per message.
    pub payload_bytes: usize,
    /// Registering and opting in the recipients beforehand took this long (set-up), seconds.
    pub register_seconds: f64,
    /// `STATUS … queued` replies received (N x M unless a `SEND` failed).
    pub queued: u64,
    /// From the first `SEND` to the last `STATUS … queued`, seconds.
    pub enqueue_seconds: f64,
    /// `queued / enqueue_seconds`: durable commits per second.
    pub enqueue_msgs_per_s: f64,
    /// CPU used while enqueueing (per message queued).
    pub enqueue_cpu: CpuUse,
    /// Recipients that received all their M messages.
    pub drained_users: usize,
    /// Distinct queued messages the recipients received (must be `queued`).
    pub delivered: u64,
    /// From the release of the N logins to the last recipient holding all M, seconds.
    pub drain_seconds: f64,
    /// `delivered / drain_seconds`.
    pub delivery_msgs_per_s: f64,
    /// Per recipient, from its `MAILBOX` + `LOGIN` write to `OK LOGIN`.
    pub login_ms: Percentiles,
    /// Per recipient, from its `MAILBOX` + `LOGIN` write to its M-th `MAIL`.
    pub drain_ms: Percentiles,
    /// CPU used while draining (per message delivered, `ACK` commits included).
    pub drain_cpu: CpuUse,
    /// `STATUS … delivered` lines the senders received within `--stall` of the last one
    /// (`queued` unless the server dropped an `ACK`; counted, not required).
    pub delivered_statuses: u64,
    /// Queued messages never received. Must be 0.
    pub lost: u64,
    /// `MAIL` lines repeating an id already received on the same connection. Must be 0.
    pub duplicated: u64,
    /// `MAIL` ids not above the one before on the same connection. Must be 0.
    pub reordered: u64,
    /// Failed `SEND`s, unexpected lines, stalled or failed recipients. Must be 0.
    pub errors: u64,
    /// The first few errors, verbatim.
    pub error_samples: Vec<String>,
}

/// `--dh`: end-to-end key agreement cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DhReport {
    /// Timed agreements per group.
    pub runs: usize,
    /// One entry per group, smaller first.
    pub groups: Vec<DhGroupResult>,
}

/// The cost of one key agreement in one group, and OpenSSL's figure beside it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DhGroupResult {
    /// RFC 7919 name, e.g. `ffdhe3072`.
    pub group: String,
    /// Bits of our secret exponents.
    pub exponent_bits: usize,
    /// One complete agreement (`Initiator::start`, `Responder::accept`,
    /// `Initiator::finish`, `Responder::confirm`): both sides' key generation, public-value
    /// validation with the subgroup check, shared secret, signatures and verifications,
    /// key derivation. Identity keys are made beforehand and not counted.
    pub agreement_ms: Percentiles,
    /// Mean time per agreement, milliseconds.
    pub agreement_mean_ms: f64,
    /// `1000 / agreement_mean_ms`: complete agreements per second on one core.
    pub agreements_per_s: f64,
    /// Modular exponentiations in one agreement: per side one short (key generation), one
    /// full-size (subgroup check of the peer's value) and one short (shared secret).
    pub modexps_per_agreement: u32,
    /// Median of the parts, milliseconds.
    pub parts_ms: DhParts,
    /// `openssl speed` for the same group (`None` if openssl is missing or failed).
    pub openssl: Option<OpensslDh>,
    /// Key generation's `g^x` by the generic `modpow` and by the g = 2 path the library uses
    /// (`Group::generator_power`, `montgomery/src/lib.rs`), timed side by side.
    #[serde(default)]
    pub keygen_paths: PowerPaths,
    /// The shared secret's `Y^x` by `modpow` and by the library's windowed Montgomery
    /// path (`Group::power`), timed side by side (absent from runs before it existed).
    #[serde(default)]
    pub secret_paths: PowerPaths,
}

/// One exponentiation two ways, in rounds: each round draws fresh random exponents of the
/// group's length (top bit set, as key generation makes them) — and for `Y^x` a fresh
/// random base — and times both paths on each in turn, so both see the same machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PowerPaths {
    /// Exponents per round.
    pub exponents_per_round: usize,
    /// One entry per round.
    pub rounds: Vec<PowerRound>,
}

/// One round of [`PowerPaths`]: medians over its exponents, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PowerRound {
    /// num-bigint's `modpow` (Montgomery, 4-bit window): the path taken before.
    pub modpow_ms: f64,
    /// The library's path: `Group::generator_power` (squarings and doublings) for `g^x`,
    /// `Group::power` (dedicated squarings, masked window) for `Y^x`.
    #[serde(alias = "pow2_ms")]
    pub library_ms: f64,
}

/// The parts of an agreement, timed alone (medians, milliseconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DhParts {
    /// `EphemeralSecret::generate`: one short exponentiation `g^x` (plus randomness).
    pub keygen_ms: f64,
    /// `PublicValue::from_bytes`: range checks and one full-size exponentiation `Y^q`.
    pub validate_ms: f64,
    /// `EphemeralSecret::agree`: one short exponentiation `Y^x`.
    pub shared_secret_ms: f64,
    /// One Ed25519 signature on a transcript.
    pub sign_ms: f64,
    /// One Ed25519 verification.
    pub verify_ms: f64,
}

/// `openssl speed -seconds S ffdhNNNN`, and how our numbers compare.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpensslDh {
    /// The command run.
    pub command: String,
    /// OpenSSL's version line.
    pub version: String,
    /// Its `op/s` column: one `op` is one party's derive (`EVP_PKEY_derive`: `Z = Y^x mod p`
    /// with OpenSSL's short exponent, and a check that Z is not 1 or p-1; no key generation,
    /// no subgroup check, no signatures).
    pub op_per_s: f64,
    /// `op_per_s / agreements_per_s`: how many OpenSSL derives fit in one of our agreements.
    pub ratio_per_agreement: f64,
    /// `op_per_s / (agreements_per_s * modexps_per_agreement)`: the same per exponentiation
    /// (counts our full-size exponentiation as one, so it flatters OpenSSL less than the
    /// line above but still compares unlike work).
    pub ratio_per_modexp: f64,
    /// `op_per_s * shared_secret_ms / 1000`: OpenSSL's derive against our own shared-secret
    /// step, the same operation (ours with a slightly longer exponent): the fairest ratio.
    pub ratio_same_operation: f64,
}

/// One RSS reading during a soak.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct TimedRss {
    /// Seconds since the soak's traffic started.
    pub t_s: f64,
    /// Server VmRSS, KiB.
    pub rss_kib: u64,
}

/// How many of each action the soak clients performed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakActions {
    /// `MSG` to another client (end-to-end checked: every one must arrive, in order).
    pub private: u64,
    /// `SAY` to the room.
    pub room: u64,
    /// `LIST`.
    pub list: u64,
    /// `PING` with a token (the `PONG` must echo it, in order with other replies).
    pub ping: u64,
    /// `QUIT`, wait for `BYE`, connect and log in again.
    pub reconnect: u64,
}

/// `--soak SECONDS`: random mixed traffic, checked end to end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakResult {
    /// Concurrent clients.
    pub clients: usize,
    /// Clients that reconnect now and then (the rest stay connected and receive the
    /// private messages, so every one of those can be checked).
    pub churning_clients: usize,
    /// Length of the traffic phase, seconds.
    pub seconds: f64,
    /// Mean pause between one client's actions, milliseconds.
    pub think_ms: f64,
    /// Actions performed.
    pub actions: SoakActions,
    /// Private messages sent.
    pub private_sent: u64,
    /// Private messages received.
    pub private_delivered: u64,
    /// Sent but never received. Must be 0.
    pub lost: u64,
    /// Received out of order. Must be 0.
    pub reordered: u64,
    /// Room messages received (all clients together).
    pub room_delivered: u64,
    /// Unexpected events: `ERR`, unexpected `BYE` or close, missing or wrong replies. Must be 0.
    pub errors: u64,
    /// The first few errors, verbatim.
    pub error_samples: Vec<String>,
    /// Server VmRSS once a second.
    pub rss_samples: Vec<TimedRss>,
    /// RSS at the end minus RSS a quarter of the way in, KiB (after warm-up): near 0 when flat.
    pub rss_growth_kib: Option<i64>,
    /// Server CPU over the traffic phase, cores.
    pub server_cores: Option<f64>,
    /// Opening the clients' first connections.
    pub setup: SetupStats,
}
