//! The server: configuration and limits, the accept loop, connection admission, and an
//! explicit shutdown.
//!
//! Threads: one accept loop, one router, a small bcrypt pool, and per connection a login
//! thread (until login), then a reader, plus a writer throughout (see [`crate::session`]).
//! [`Server::start`] binds and returns at once, so tests run a real server in-process on
//! `127.0.0.1:0`; `src/bin/server.rs` is a thin wrapper around it.
//!
//! Shutdown: [`ShutdownHandle::trigger`] (from Ctrl-C/SIGTERM, or a test) stops the accept
//! loop, tells every connection `BYE server shutting down`, waits up to 10 s for their
//! threads, cuts off those still open (a client that does not read keeps its writer
//! blocked), stops the router and closes the database.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::accounts::Accounts;
use crate::error::{Error, Result};
use crate::outbox::{Line, Outbox};
use crate::router::{ConnId, Event, Inbox, Router};
use crate::session;
use crate::store::Store;
use crate::throttle::{Throttle, ThrottlePolicy};

/// The server's limits. Every one is configurable; the defaults suit a small team on one
/// machine and are what the protocol spec documents.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame a client may send, in bytes. 16 KiB holds the longest end-to-end
    /// message (8 KiB of text, about 11 KiB once sealed and base64-encoded) with its `MSG`
    /// header, and the key-exchange frames. Below about 11,000 bytes, long private
    /// messages would be refused.
    pub max_frame: usize,
    /// Time allowed for the TLS handshake; a silent or trickling peer is cut off after it.
    pub handshake_timeout: Duration,
    /// Time allowed from accepting a connection to a successful login.
    pub login_timeout: Duration,
    /// A logged-in client that sends no complete frame for this long is disconnected.
    /// Clients send `PING` to stay connected while their user is idle.
    pub idle_timeout: Duration,
    /// A client whose socket accepts no data for this long (it stopped reading, or its
    /// host vanished) is disconnected, even when its queue never fills (0 = never).
    pub send_timeout: Duration,
    /// Connections served at once; more are refused at accept.
    pub max_connections: usize,
    /// Connections from one IP address at once (0 = no limit).
    pub max_connections_per_ip: usize,
    /// Bytes that may wait in one client's outbound queue. A client that stops reading
    /// reaches it and is disconnected. 256 KiB is several seconds of a busy chat.
    pub outbound_queue_bytes: usize,
    /// bcrypt computations at once (logins and registrations queue for a worker).
    pub bcrypt_concurrency: usize,
    /// Frames per second one client may send on average (0 = no limit). Frames over the
    /// limit are refused with `rate-limited`. 20/s is far above human typing.
    pub message_rate: u32,
    /// Frames one client may send at once above the average (a pasted block of lines).
    pub message_burst: u32,
    /// Failed-login back-off and registration limits.
    pub throttle: ThrottlePolicy,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame: 16 * 1024,
            handshake_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_ip: 64,
            outbound_queue_bytes: 256 * 1024,
            bcrypt_concurrency: thread::available_parallelism().map_or(2, |n| n.get()),
            message_rate: 20,
            message_burst: 100,
            throttle: ThrottlePolicy::default(),
        }
    }
}

/// Everything the server needs to start.
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the account database.
    pub data_dir: PathBuf,
    /// The TLS configuration (certificate, key, policy), see [`crate::tls`].
    pub tls: Arc<rustls::ServerConfig>,
    /// bcrypt cost for new password hashes.
    pub bcrypt_cost: u32,
    /// Connection and resource limits.
    pub limits: Limits,
}

/// State shared by every connection thread.
pub(crate) struct Shared {
    /// The limits in force.
    pub limits: Limits,
    /// Registration and login.
    pub accounts: Accounts,
    /// The router's inbox.
    pub router: Arc<Inbox>,
    /// TLS configuration for new connections.
    pub tls: Arc<rustls::ServerConfig>,
    /// Failed-login and registration memory across connections.
    pub throttle: Throttle,
    /// Who is connected: admission counts and a handle on each queue for shutdown.
    connections: Mutex<Connections>,
    /// Signalled when a connection ends (shutdown waits on it).
    connection_ended: Condvar,
    /// Set once shutdown begins.
    stopping: AtomicBool,
}

/// Live connections, for admission control and shutdown.
#[derive(Default)]
struct Connections {
    /// Connections admitted and not yet finished (including those still handshaking).
    total: usize,
    /// Connections per source address.
    per_ip: HashMap<IpAddr, usize>,
    /// The outbox of each connection past its handshake, to say goodbye at shutdown.
    outboxes: HashMap<ConnId, Outbox>,
}

impl Shared {
    fn lock_connections(&self) -> MutexGuard<'_, Connections> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until every connection has ended, for at most `limit`; returns the
    /// connections (locked) as they are then.
    fn wait_for_connections(&self, limit: Duration) -> MutexGuard<'_, Connections> {
        let deadline = Instant::now() + limit;
        let mut conns = self.lock_connections();
        while conns.total > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            conns = self
                .connection_ended
                .wait_timeout(conns, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        conns
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    fn admit(&self, ip: IpAddr) -> std::result::Result<(), String> {
        let mut conns = self.lock_connections();
        if conns.total >= self.limits.max_connections {
            return Err(format!(
                "server full ({} connections)",
                self.limits.max_connections
            ));
        }
        let from_ip = conns.per_ip.get(&ip).copied().unwrap_or(0);
        if self.limits.max_connections_per_ip > 0 && from_ip >= self.limits.max_connections_per_ip {
            return Err(format!(
                "{from_ip} connections already open from {ip} (limit {})",
                self.limits.max_connections_per_ip
            ));
        }
        conns.total += 1;
        *conns.per_ip.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    /// Releases what `admit` counted.
    pub(crate) fn release(&self, ip: IpAddr) {
        let mut conns = self.lock_connections();
        conns.total -= 1;
        if let Some(n) = conns.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                conns.per_ip.remove(&ip);
            }
        }
        self.connection_ended.notify_all();
    }

    /// Records a connection's queue so shutdown can reach it. A connection that registers
    /// after shutdown began is told at once.
    pub(crate) fn register(&self, id: ConnId, outbox: Outbox) {
        // Checked under the lock that `stop` holds while setting the flag, so every
        // connection is either in the map when goodbyes are sent or told here.
        let mut conns = self.lock_connections();
        if self.stopping.load(Ordering::SeqCst) {
            say_shutdown(&outbox);
        }
        conns.outboxes.insert(id, outbox);
    }

    pub(crate) fn unregister(&self, id: ConnId) {
        self.lock_connections().outboxes.remove(&id);
    }
}

fn say_shutdown(outbox: &Outbox) {
    let _ = outbox.push(Line::Owned(b"BYE server shutting down\n".to_vec()));
    outbox.close();
}

/// A running server.
pub struct Server {
    /// The address actually bound (the port is chosen by the OS for `:0`).
    local_addr: SocketAddr,
    /// Shared with every connection thread.
    shared: Arc<Shared>,
    /// Stops the server.
    shutdown: ShutdownHandle,
    /// The accept loop thread.
    acceptor: Option<JoinHandle<()>>,
    /// The router thread.
    router: Option<JoinHandle<()>>,
}

/// Asks a server to stop. Cheap to clone; safe to use from a signal handler thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    /// The flag every loop checks.
    requested: Arc<(Mutex<bool>, Condvar)>,
    /// Where to connect to wake the accept loop from its blocking `accept`.
    wake_addr: SocketAddr,
}

impl ShutdownHandle {
    /// Requests shutdown. Returns at once; [`Server::wait`] does the work.
    pub fn trigger(&self) {
        let (flag, cond) = &*self.requested;
        *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cond.notify_all();
    }

    fn wait_requested(&self) {
        let (flag, cond) = &*self.requested;
        let mut requested = flag.lock().unwrap_or_else(PoisonError::into_inner);
        while !*requested {
            requested = cond.wait(requested).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// How long shutdown waits for connections to say goodbye before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long shutdown waits for connections it cut off to end.
const CUT_OFF_GRACE: Duration = Duration::from_secs(2);

impl Server {
    /// Opens the database, binds the listener and starts the accept loop and the router.
    pub fn start(mut config: Config) -> Result<Server> {
        fit_to_kernel(&mut config.limits);
        let store = Store::open(&config.data_dir)?;
        match store.account_count() {
            Ok(n) => log::info!("database: {n} accounts"),
            Err(e) => log::warn!("database: cannot count the accounts: {e}"),
        }
        let accounts = Accounts::new(store, config.bcrypt_cost, config.limits.bcrypt_concurrency)?;
        let listener = TcpListener::bind(config.listen)
            .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", config.listen)))?;
        let local_addr = listener.local_addr()?;

        let inbox = Arc::new(Inbox::new(ROUTER_INBOX));
        let router = {
            let inbox = inbox.clone();
            thread::Builder::new()
                .name("router".into())
                .spawn(move || Router::default().run(inbox))?
        };
        let shared = Arc::new(Shared {
            throttle: Throttle::new(config.limits.throttle.clone()),
            limits: config.limits,
            accounts,
            router: inbox,
            tls: config.tls,
            connections: Mutex::new(Connections::default()),
            connection_ended: Condvar::new(),
            stopping: AtomicBool::new(false),
        });
        let shutdown = ShutdownHandle {
            requested: Arc::new((Mutex::new(false), Condvar::new())),
            wake_addr: wake_address(local_addr),
        };
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("accept".into())
                .spawn(move || accept_loop(listener, shared))
        };
        let acceptor = match acceptor {
            Ok(acceptor) => acceptor,
            Err(e) => {
                let _ = shared.router.send(Event::Shutdown);
                return Err(e.into());
            }
        };
        Ok(Server {
            local_addr,
            shared,
            shutdown,
            acceptor: Some(acceptor),
            router: Some(router),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops this server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Blocks until shutdown is requested, then shuts down cleanly.
    pub fn wait(mut self) {
        self.shutdown.wait_requested();
        self.stop();
    }

    /// Stops the server now and waits for it.
    pub fn shutdown(mut self) {
        self.shutdown.trigger();
        self.stop();
    }

    fn stop(&mut self) {
        let shared = &self.shared;
        // Set here for the accept loop, and again under the connection lock below.
        shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop: it sees `stopping` and returns.
        let _ = TcpStream::connect_timeout(&self.shutdown.wake_addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Say goodbye to everyone connected, then wait for their threads.
        {
            let conns = shared.lock_connections();
            shared.stopping.store(true, Ordering::SeqCst);
            for outbox in conns.outboxes.values() {
                say_shutdown(outbox);
            }
        }
        let conns = shared.wait_for_connections(SHUTDOWN_GRACE);
        if conns.total > 0 {
            // Clients that do not read keep their writers blocked: cut them off.
            log::warn!(
                "shutdown: {} connections did not close in time; cutting them off",
                conns.total
            );
            for outbox in conns.outboxes.values() {
                outbox.evict();
            }
            drop(conns);
            let conns = shared.wait_for_connections(CUT_OFF_GRACE);
            if conns.total > 0 {
                log::warn!("shutdown: {} connections still open", conns.total);
            }
        } else {
            drop(conns);
        }
        let _ = shared.router.send(Event::Shutdown);
        if let Some(router) = self.router.take() {
            let _ = router.join();
        }
        log::info!("server stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.shutdown.trigger();
            self.stop();
        }
    }
}

/// Capacity of the router's inbox. When the router falls behind, readers block on it,
/// which stops them reading their sockets: TCP pushes back on the senders instead of the
/// server's memory growing.
const ROUTER_INBOX: usize = 4096;

/// Where to connect to reach a listener bound to `addr` (a wildcard means loopback).
fn wake_address(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Longest pause after repeated `accept` failures (for example, out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let mut backoff = Duration::from_millis(5);
    loop {
        let (socket, peer) = match listener.accept() {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                log::warn!("accept failed: {e}; retrying in {backoff:?}");
                thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if let Err(reason) = shared.admit(peer.ip()) {
            log::warn!("{peer}: connection refused: {reason}");
            continue;
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let slot = session::ConnectionSlot {
            shared: shared.clone(),
            id,
            peer,
        };
        let spawned = thread::Builder::new()
            .name(format!("login-{id}"))
            .stack_size(session::LOGIN_STACK_BYTES)
            .spawn(move || session::serve(slot, socket));
        if let Err(e) = spawned {
            // The closure, and with it the slot, was dropped: admission is released.
            log::error!("{peer}: cannot start a thread for the connection: {e}");
        }
    }
}

/// Memory mappings one connection costs: two threads, each with a stack and its guard
/// page (glibc) and a signal stack and its guard page (Rust's standard library).
const MAPPINGS_PER_CONNECTION: usize = 8;

/// Mappings and thread ids left for everything else (libraries, allocator arenas, the
/// pool threads, other processes' threads).
const KERNEL_MARGIN: usize = 2048;

/// Fits the limits to what this kernel allows, and sizes its futex hash for the thread
/// count, before any thread is started.
///
/// Past `vm.max_map_count` a thread that was created can fail to map its signal stack,
/// and the standard library then aborts the whole process; so the connection limit is
/// lowered (with a warning that says how to raise the kernel's) and admission refuses
/// newcomers cleanly instead. Linux 6.16 and later give each process a private futex hash
/// of a few buckets; with thousands of sleeping threads every wake-up walks a long bucket
/// (measured: 8,000 idle clients more than doubled the CPU per message), so it is enlarged.
fn fit_to_kernel(limits: &mut Limits) {
    if let Some(ceiling) = kernel_connection_ceiling().filter(|&c| c < limits.max_connections) {
        // Only a maximum the operator chose is worth a warning; the default one meeting
        // the kernel's ceiling is how every default start goes.
        let chosen = limits.max_connections != Limits::default().max_connections;
        let level = if chosen {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        log::log!(
            level,
            "serving at most {ceiling} connections, not {}: the kernel allows this process \
             only so many threads and memory mappings (each connection needs 2 threads, \
             {MAPPINGS_PER_CONNECTION} mappings). To serve more, raise them, for example \
             `sysctl -w vm.max_map_count=262144`",
            limits.max_connections
        );
        limits.max_connections = ceiling;
    }
    let slots = (2 * limits.max_connections)
        .next_power_of_two()
        .clamp(16, 65_536);
    // PR_FUTEX_HASH (78), PR_FUTEX_HASH_SET_SLOTS (1): Linux 6.16 and later; older kernels
    // answer EINVAL and keep their global hash, which does not have the problem.
    // SAFETY: prctl with integer arguments only; it changes this process's futex table.
    let resized = unsafe { libc::prctl(78, 1, slots as libc::c_ulong, 0, 0) } == 0;
    if resized {
        log::debug!("futex hash: {slots} slots");
    }
}

/// How many connections this kernel lets a server process hold (`vm.max_map_count`,
/// `kernel.pid_max`, `kernel.threads-max`, less what the calling process already maps):
/// `None` when they cannot be read. A server lowers its `max_connections` to this at start.
pub fn kernel_connection_ceiling() -> Option<usize> {
    let read =
        |path: &str| -> Option<usize> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let mappings_now = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    let thread_ids = match (
        read("/proc/sys/kernel/pid_max"),
        read("/proc/sys/kernel/threads-max"),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    connection_ceiling(read("/proc/sys/vm/max_map_count"), mappings_now, thread_ids)
}

/// How many connections the kernel's limits leave room for: `None` when unknown.
fn connection_ceiling(
    max_map_count: Option<usize>,
    mappings_now: usize,
    thread_ids: Option<usize>,
) -> Option<usize> {
    let by_mappings = max_map_count
        .map(|max| max.saturating_sub(mappings_now + KERNEL_MARGIN) / MAPPINGS_PER_CONNECTION);
    let by_threads = thread_ids.map(|ids| ids.saturating_sub(KERNEL_MARGIN) / 2);
    match (by_mappings, by_threads) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Raises this process's soft open-file limit to its hard limit (each connection is a
/// file descriptor). Returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_ceiling_follows_the_tighter_kernel_limit() {
        // Linux defaults: 65,530 mappings, 32,768 thread ids.
        assert_eq!(
            connection_ceiling(Some(65_530), 400, Some(32_768)),
            Some(7_885)
        );
        assert_eq!(
            connection_ceiling(Some(1_000_000), 400, Some(32_768)),
            Some(15_360)
        );
        assert_eq!(connection_ceiling(None, 400, None), None);
        assert_eq!(connection_ceiling(Some(100), 400, None), Some(0));
    }

    /// One test for everything `fit_to_kernel` does: the futex hash is per process, so
    /// two tests sizing it at once would race.
    #[test]
    fn limits_are_lowered_to_what_the_kernel_allows_never_raised_and_the_futex_hash_fits() {
        // PR_FUTEX_HASH (78), PR_FUTEX_HASH_GET_SLOTS (2): this process's futex hash slots,
        // or an error before Linux 6.16 (no private hash to size).
        // SAFETY: prctl with integer arguments only; it reads a number.
        let slots = || unsafe { libc::prctl(78, 2, 0, 0, 0) };
        let sized = slots() >= 0;

        let mut limits = Limits {
            max_connections: usize::MAX / 16,
            ..Limits::default()
        };
        fit_to_kernel(&mut limits);
        assert!(limits.max_connections < usize::MAX / 16);
        if sized {
            let wanted = (2 * limits.max_connections).next_power_of_two().min(65_536);
            assert_eq!(slots() as usize, wanted);
        }

        let mut small = Limits {
            max_connections: 3_000,
            ..Limits::default()
        };
        fit_to_kernel(&mut small);
        assert_eq!(small.max_connections, 3_000);
        if sized {
            assert_eq!(slots(), 8_192, "the power of two above 2 x 3,000 threads");
        } else {
            eprintln!("this kernel has no private futex hash (before Linux 6.16)");
        }
    }
}
