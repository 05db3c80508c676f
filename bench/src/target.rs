//! The server under load: a child process started for one run, or a running server
//! (`--server`), plus readings of its CPU time and memory from `/proc`.
//!
//! Why a child process rather than a server thread in the bench process: the server's CPU
//! time and resident memory are then simply that process's, with none of the generator's
//! threads, buffers or connections mixed in. By default the child is this same executable
//! run with `--serve-child` (see [`serve_child`]): it is built from the same library code as
//! the bench, so a stale `target/release/server` from before an edit is never measured by
//! mistake. `--server-bin PATH` runs the real `server` binary instead, with the flags below.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use securechat::server::ThrottlePolicy;
use securechat::server::{self, Config, Limits, Server};
use securechat::{tls, Error, Result};

/// bcrypt cost of the accounts a spawned server creates, unless `--bcrypt-cost` says
/// otherwise. The minimum bcrypt allows: benchmarks measure messaging, and cost 12 (the
/// production default, about 0.25 s per login) would make opening thousands of connections
/// take minutes. Printed with results.
pub const BENCH_BCRYPT_COST: u32 = 4;

/// The production bcrypt cost (the server binary's default): `--storm` measures logins at
/// the cost real users pay, unless `--bcrypt-cost` is given.
pub const PRODUCTION_BCRYPT_COST: u32 = 12;

/// Connections a spawned server admits (the per-address cap is off: every benchmark
/// client comes from 127.0.0.1).
pub const BENCH_MAX_CONNECTIONS: usize = 20_000;

/// The limits of a spawned server: the defaults, except those that would refuse the load
/// itself. Every client comes from 127.0.0.1, so the per-address connection cap, the
/// per-address registration limit, the per-prefix cap on queued logins and the caps on
/// connections not logged in yet are off; senders flood the room, so its fan-out budget
/// is off; senders flood, so the per-client frame rate
/// limit is off.
pub fn bench_limits() -> Limits {
    Limits {
        max_connections: BENCH_MAX_CONNECTIONS,
        max_connections_per_ip: 0,
        max_anonymous: 0,
        max_anonymous_per_network: 0,
        room_fanout_rate: 0,
        message_rate: 0,
        throttle: ThrottlePolicy {
            registrations_burst: 0,
            logins_per_prefix: 0,
            ..ThrottlePolicy::default()
        },
        ..Limits::default()
    }
}

/// How long [`Target::log_tail`] waits before reading the log of a failing server.
const LOG_SETTLE: Duration = Duration::from_secs(1);

/// How long a spawned server gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a spawned server gets to shut down before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the load goes.
pub struct Target {
    /// `host:port`, for messages.
    pub addr: String,
    /// The addresses `addr` resolved to, tried in order (resolved once, not per connection).
    pub sockets: Vec<SocketAddr>,
    /// The name the server certificate is checked against.
    pub host: String,
    /// Client TLS configuration trusting the server's CA.
    pub tls: Arc<rustls::ClientConfig>,
    /// The server's process id, for CPU and memory readings (`None`: not measured).
    pub pid: Option<u32>,
    /// The child process, when this run started one; stopped on drop.
    child: Option<Spawned>,
}

/// How to reach a server someone else started.
pub struct External {
    /// `host:port`.
    pub addr: String,
    /// CA certificate that signed the server's certificate.
    pub ca: PathBuf,
    /// Its process id, if CPU and memory should be measured.
    pub pid: Option<u32>,
}

/// A server process this tool started, with its scratch directory.
struct Spawned {
    /// The process.
    child: Child,
    /// The port the real server binary was told to listen on; `None` for a `--serve-child`
    /// child, which picks its own port and prints it (and stops when its stdin closes,
    /// where the real binary is sent SIGTERM).
    port: Option<u16>,
    /// Scratch directory (database, certificates, log); removed after the child exits.
    dir: PathBuf,
}

/// What may differ between spawned servers (everything else is [`bench_limits`]).
#[derive(Debug, Clone, Copy)]
pub struct ChildSettings {
    /// bcrypt cost of new accounts ([`BENCH_BCRYPT_COST`] unless a phase needs another).
    pub bcrypt_cost: u32,
}

impl Target {
    /// A fresh server in a child process with an empty data directory. `server_bin` picks
    /// the real server binary; `None` runs this executable's `--serve-child` role.
    pub fn spawn(server_bin: Option<&Path>, settings: ChildSettings) -> Result<Target> {
        let cost = settings.bcrypt_cost.to_string();
        let dir = scratch_dir()?;
        let log = fs::File::create(dir.join("server.log"))?;
        let (mut command, port) = match server_bin {
            None => {
                let mut command = Command::new(std::env::current_exe()?);
                command
                    .arg("--serve-child")
                    .arg(&dir)
                    .args(["--bcrypt-cost", &cost])
                    .stdout(Stdio::piped());
                (command, None)
            }
            Some(bin) => {
                let port = free_port()?;
                let mut command = Command::new(bin);
                command
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .arg("--data-dir")
                    .arg(dir.join("data"))
                    .arg("--certs-dir")
                    .arg(dir.join("certs"))
                    .args(["--bcrypt-cost", &cost])
                    .args(["--max-connections-per-ip", "0"])
                    .args(["--max-connections", &BENCH_MAX_CONNECTIONS.to_string()])
                    .args(["--rate-limit", "0", "--registrations-per-ip", "0"])
                    .args(["--logins-per-prefix", "0"])
                    .args(["--max-anonymous", "0", "--max-anonymous-per-network", "0"])
                    .args(["--room-fanout-rate", "0"])
                    .stdout(Stdio::null());
                (command, Some(port))
            }
        };
        let child = command
            .stdin(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                Error::Config(format!(
                    "cannot start the server process ({}): {e}",
                    server_bin
                        .map_or_else(|| "this executable".into(), |p| p.display().to_string())
                ))
            })?;
        let mut spawned = Spawned { child, port, dir };
        let port = spawned.wait_listening()?;
        let ca = spawned.dir.join("certs").join(tls::DEV_CA_CERT);
        Ok(Target {
            addr: format!("127.0.0.1:{port}"),
            sockets: vec![SocketAddr::from(([127, 0, 0, 1], port))],
            // The development certificate names localhost and 127.0.0.1.
            host: "localhost".into(),
            tls: tls::client_config(Some(&ca))?,
            pid: Some(spawned.child.id()),
            child: Some(spawned),
        })
    }

    /// A server that is already running.
    pub fn external(server: &External) -> Result<Target> {
        let (host, _) = server.addr.rsplit_once(':').ok_or_else(|| {
            Error::Config(format!(
                "--server {:?} should be HOST:PORT, like localhost:7878",
                server.addr
            ))
        })?;
        let sockets: Vec<SocketAddr> = server
            .addr
            .to_socket_addrs()
            .map_err(|e| Error::Config(format!("cannot resolve {}: {e}", server.addr)))?
            .collect();
        if sockets.is_empty() {
            return Err(Error::Config(format!(
                "{} resolves to no address",
                server.addr
            )));
        }
        Ok(Target {
            addr: server.addr.clone(),
            sockets,
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            tls: tls::client_config(Some(&server.ca))?,
            pid: server.pid,
            child: None,
        })
    }

    /// Server CPU seconds so far (`None` when not measured).
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.pid.and_then(|pid| process_cpu_seconds(Some(pid)).ok())
    }

    /// Server resident memory in KiB (`None` when not measured).
    pub fn rss_kib(&self) -> Option<u64> {
        self.pid.and_then(|pid| process_rss_kib(pid).ok())
    }

    /// Server threads right now (`None` when not measured).
    pub fn threads(&self) -> Option<u64> {
        self.pid
            .and_then(|pid| process_status_field(pid, "Threads:").ok())
    }

    /// The tail of a spawned server's log, to explain a failure: its last warnings and
    /// errors (a crash leaves hundreds of routine "closed" lines after the cause), and
    /// whether the process is gone.
    pub fn log_tail(&self) -> Option<String> {
        let spawned = self.child.as_ref()?;
        // A server that is failing may still be writing why (or dying): give it a moment.
        thread::sleep(LOG_SETTLE);
        let text = fs::read_to_string(spawned.dir.join("server.log")).ok()?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains(" INFO ")).collect();
        let mut tail = lines[lines.len().saturating_sub(15)..].join("\n");
        if !self.pid.is_some_and(process_running) {
            tail.push_str("\n(the server process has exited)");
        }
        Some(tail)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(spawned) = self.child.take() {
            spawned.stop();
        }
    }
}

impl Spawned {
    /// Waits until the server accepts connections; returns its port.
    fn wait_listening(&mut self) -> Result<u16> {
        let deadline = Instant::now() + START_TIMEOUT;
        let port = if let Some(port) = self.port {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if Instant::now() >= deadline {
                    return Err(self.failed("did not start listening in time"));
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(self.failed(&format!("exited ({status})")));
                }
                thread::sleep(Duration::from_millis(50));
            }
            port
        } else {
            // The child prints `LISTENING <addr>` once bound.
            let stdout = self.child.stdout.take().ok_or_else(|| {
                Error::Config("the server child has no stdout to report its port on".into())
            })?;
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            let addr: SocketAddr = line
                .trim()
                .strip_prefix("LISTENING ")
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| self.failed(&format!("said {:?} instead of LISTENING", line)))?;
            addr.port()
        };
        Ok(port)
    }

    fn failed(&self, what: &str) -> Error {
        let log = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        Error::Config(format!(
            "the benchmark server {what}; its log:\n{}",
            log.trim_end()
        ))
    }

    /// Stops the server (gracefully, then by force) and removes its directory.
    fn stop(mut self) {
        // Closing stdin is a `--serve-child` child's signal to shut down.
        drop(self.child.stdin.take());
        if self.port.is_some() {
            // SAFETY: kill(2) on the pid of a child we have not yet waited for.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    eprintln!("bench: the server did not stop in time; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether a process exists and is not a zombie.
fn process_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// A warning if a server on this machine cannot hold `connections` logged-in connections:
/// the kernel's thread and memory-mapping limits cap what a server admits (see
/// `securechat::server::kernel_connection_ceiling`), and it refuses connections beyond.
pub fn kernel_limit_warning(connections: usize) -> Option<String> {
    let ceiling = securechat::server::kernel_connection_ceiling()?;
    (ceiling < connections).then(|| {
        format!(
            "this kernel lets a server hold about {ceiling} connections, fewer than the \
             {connections} this run needs: the server will refuse the rest (each connection \
             costs it 2 threads and 8 memory mappings; `sysctl -w vm.max_map_count=262144` \
             makes room)"
        )
    })
}

/// A new empty directory under the system temp dir.
fn scratch_dir() -> Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "securechat-bench-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A port that was free a moment ago (for `--server-bin`, which takes `--listen`).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The `--serve-child DIR` role: a server on `127.0.0.1:0` with the benchmark limits,
/// bcrypt cost `bcrypt_cost`, data and certificates in `DIR`. Prints `LISTENING <addr>` on
/// stdout once bound and shuts down cleanly when stdin closes (the parent finished, or
/// died).
pub fn serve_child(dir: &Path, bcrypt_cost: u32) -> Result<()> {
    securechat::logging::init();
    let certs = tls::ensure_dev_certificates(&dir.join("certs"))?;
    let (chain, key) = tls::load_identity(&certs.cert, &certs.key)?;
    if let Err(e) = server::raise_open_file_limit() {
        log::warn!("cannot raise the open-file limit: {e}");
    }
    let server = Server::start(Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.join("data"),
        tls: tls::server_config(chain, key)?,
        bcrypt_cost,
        limits: bench_limits(),
        federation: None,
    })?;
    println!("LISTENING {}", server.local_addr());
    // Blocks until the parent closes our stdin (or exits).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    server.shutdown();
    Ok(())
}

/// CPU seconds (user + system, all threads, including threads that have ended) of a
/// process: `None` is this process. Read from the kernel's per-process CPU clock, which
/// counts nanoseconds; `/proc/<pid>/stat` counts 10 ms ticks, too coarse for a run of a
/// fraction of a second. Falls back to `/proc` if the clock cannot be read.
pub fn process_cpu_seconds(pid: Option<u32>) -> Result<f64> {
    let mut clock: libc::clockid_t = libc::CLOCK_PROCESS_CPUTIME_ID;
    if let Some(pid) = pid {
        // SAFETY: clock_getcpuclockid writes one clockid_t to the pointer given.
        let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
        if rc != 0 {
            return proc_stat_cpu_seconds(pid);
        }
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer given.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return match pid {
            Some(pid) => proc_stat_cpu_seconds(pid),
            None => Err(std::io::Error::last_os_error().into()),
        };
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// User + system CPU seconds of a process from `/proc/<pid>/stat` (10 ms resolution).
fn proc_stat_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| Error::Protocol(format!("unreadable /proc/{pid}/stat")))
    };
    // utime and stime are fields 14 and 15; index 0 here is field 3.
    Ok((ticks(11)? + ticks(12)?) / clock_ticks_per_second())
}

/// Resident memory of a process in KiB, from `VmRSS` in `/proc/<pid>/status`.
pub fn process_rss_kib(pid: u32) -> Result<u64> {
    process_status_field(pid, "VmRSS:")
}

/// The first number after `field` (e.g. `VmRSS:`, `Threads:`) in `/proc/<pid>/status`.
fn process_status_field(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| Error::Protocol(format!("no {field} in /proc/{pid}/status")))
}

/// Whole-machine CPU time from `/proc/stat`: (total, idle) in seconds.
pub fn machine_cpu_seconds() -> Result<(f64, f64)> {
    let stat = fs::read_to_string("/proc/stat")?;
    let values: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    if values.len() < 5 {
        return Err(Error::Protocol("unreadable /proc/stat".into()));
    }
    let hz = clock_ticks_per_second();
    // idle + iowait count as idle.
    Ok((
        values.iter().sum::<f64>() / hz,
        (values[3] + values[4]) / hz,
    ))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// CPU readings at one moment, to subtract from a later one.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    /// When it was taken.
    at: Instant,
    /// Server CPU seconds.
    server: Option<f64>,
    /// This process's CPU seconds.
    generator: f64,
    /// Machine (total, idle) seconds.
    machine: (f64, f64),
}

impl CpuSnapshot {
    pub fn take(target: &Target) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            server: target.cpu_seconds(),
            generator: process_cpu_seconds(None).unwrap_or(0.0),
            machine: machine_cpu_seconds().unwrap_or((0.0, 0.0)),
        }
    }

    /// CPU used between `self` and `later`, per message for `messages` delivered.
    pub fn usage(&self, later: &CpuSnapshot, messages: u64) -> crate::results::CpuUse {
        let window = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let server = match (self.server, later.server) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let generator = later.generator - self.generator;
        let total = later.machine.0 - self.machine.0;
        let idle = later.machine.1 - self.machine.1;
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        let per_msg = |s: f64| s * 1e6 / messages.max(1) as f64;
        crate::results::CpuUse {
            window_s: window,
            server_cores: server.map(|s| s / window),
            server_us_per_msg: server.map(per_msg),
            generator_cores: generator / window,
            generator_us_per_msg: per_msg(generator),
            // /proc/stat sums all CPUs, so busy/total is a fraction of the machine. Under
            // 0.2 s of CPU time in all, its 10 ms ticks say little.
            machine_busy_cores: (total >= 0.2).then(|| (total - idle) / total * cores as f64),
            machine_cores: cores,
        }
    }
}
