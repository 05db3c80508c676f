//! The server: configuration, the accept loop, and an explicit shutdown; the other roles
//! each have a file here.
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | [`Server`], [`Config`], the accept loop, shutdown |
//! | `limits.rs` | [`Limits`] and fitting them to the kernel |
//! | `admission.rs` | the state connection threads share; admitting and releasing connections (caps in all, per address, and on those not logged in, in all and per network) |
//! | `connection.rs` | one connection's life: TLS handshake, login thread, reader thread |
//! | `requests.rs` | what each request does, before and after login |
//! | `router.rs` | the thread that owns who is online and routes frames |
//! | `outbox.rs` | a client's outbound queue (a priority part bounded in bytes, a small room part that skips), and the writer loop that drains it |
//! | `history.rs` | the room's last lines: kept by the router, stored by a writer thread, replayed at login |
//! | `mailbox.rs` | offline delivery: what readers hand the router after their database writes, the login backlog, expiry |
//! | `accounts.rs`, `throttle.rs` | accounts (bcrypt), brute-force defences |
//! | `remote.rs` | what a request naming a user of another server (`bob@b.test`) does |
//! | `federation/` | links to servers of other names: the peers file, the connector per peer (relays the durable queue), the federation port (mutual TLS, the boundary rules) |
//! | `store/` | the storage interface (`mod.rs`: the trait and what a backend guarantees; `conformance.rs`: its tests) and its SQLite backend (`sqlite.rs`, `sqlite/mailbox.rs`) |
//!
//! # Threads, sockets and locks
//!
//! | thread | how many | reads | writes |
//! |---|---|---|---|
//! | `accept` | 1 | the listening socket | nothing; starts a login thread per admitted connection |
//! | `login-N` | per connection, until login | its client's socket (handshake, anonymous phase) | its client's outbox (replies before login) |
//! | `reader-N` | per logged-in connection | its client's socket | the router's inbox (every request, one event per socket read) |
//! | `router` | 1 | its inbox (a bounded crossbeam channel) | every logged-in client's outbox; an idle client's socket (the short cut) |
//! | `writer-N` | per connection | its outbox | its client's socket: the only thread that blocks writing it |
//! | bcrypt pool | `bcrypt_concurrency` | password jobs | results to the waiting login thread |
//! | `history` | 1 (0 with `room_history` 0) | the room lines the router recorded (a bounded channel) | the database, one transaction per wake-up |
//! | `mailbox-expiry` | 1 | a clock (every minute, or every `queue_ttl` if shorter) | the database (one transaction per run); expiry receipts to the router's inbox |
//! | `peer-out-NAME` | per configured peer (0 without federation) | the database (that peer's queue and receipts), its bounded query and room queues, the peer's answers | the link to that peer; the database (deletes on `RACK`); receipts to the router's inbox |
//! | `peer-accept`, `peer-in-N` | 1, and per accepted link | the federation port; a peer's requests | the database (relayed messages, receipts), answers to the peer; lines for local users to the router's inbox |
//!
//! Mailbox requests (`SEND`, `ACK`, `ACKSTATUS`, `BUNDLE`, `SETPREKEY`, `ADDPREKEYS`) and an
//! opted-in login's backlog read are database work done by that connection's `reader-N` (or
//! `login-N`) thread before it answers; the router only delivers the resulting lines (see
//! `mailbox.rs`). The router never waits for the disk.
//!
//! Locks, outermost first; a thread holding one takes only those below it, and none is
//! held across a blocking socket call:
//!
//! 1. the admission record (`admission.rs`): admitting, registering, shutdown's goodbyes,
//!    which push into outboxes (lock 2) while holding it;
//! 2. an outbox's queue (`outbox.rs`): moving frames in or out; the router's short cut
//!    claims the socket (lock 3) while holding it, so that nothing queued after the claimed
//!    frame can overtake it;
//! 3. a stream's unsent-records lock (`tls/stream.rs`): held by whoever writes the socket
//!    (the writer's blocking write, the router's claim, a reader's rare alert);
//! 4. a stream's TLS state lock: encrypting or decrypting only, never across a socket
//!    read or write.
//!
//! The router's short cut: when a wake-up brings few requests, the router writes a
//! single-recipient frame to an idle client's socket itself with a non-blocking `send`
//! (one thread hand-off fewer; see `outbox.rs`). It never waits: if the writer is busy,
//! something is queued, or the socket is claimed, the frame is queued instead, and bytes
//! the socket did not take are left for the writer, which sends them first.
//!
//! Why replies after login go through the router: a logged-in client's requests and the
//! deliveries addressed to it must reach it in one order (an `ERR MSG offline` after the
//! `FROM` it concerns would be wrong). The router is the one thread that orders them, so a
//! reader never writes to its own outbox after login; before login nothing is routed to
//! the client, and the login thread answers by itself.
//!
//! [`Server::start`] binds and returns at once, so tests run a real server in-process on
//! `127.0.0.1:0`; `src/bin/server.rs` is a thin wrapper around it.
//!
//! Shutdown: [`ShutdownHandle::trigger`] (from Ctrl-C/SIGTERM, or a test) stops the accept
//! loop, tells every connection `BYE server shutting down`, waits up to 10 s for their
//! threads, cuts off those still open (a client that does not read keeps its writer
//! blocked), stops expiry and the federation's threads (their sockets are cut; queued
//! messages stay in the database), stops the router, waits for the history writer to store
//! what it was given, and closes the database.

mod accounts;
mod admission;
mod connection;
pub mod federation;
mod history;
mod limits;
mod mailbox;
#[cfg(test)]
mod memory_socket;
mod outbox;
mod remote;
mod requests;
mod router;
mod store;
mod throttle;

pub use federation::{FederationConfig, PeerConfig};
pub use limits::{kernel_connection_ceiling, raise_open_file_limit, Limits, MAX_ROOM_HISTORY};
pub use store::DB_FILE;
pub use throttle::ThrottlePolicy;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use self::accounts::Accounts;
use self::admission::Context;
use self::history::RoomHistory;
use self::router::{Event, Router, RouterLimits};
use self::store::{Quota, SqliteStore, Storage};
use crate::error::{Error, Result};
use crate::sync;

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
    /// Links to servers of other names, if this server federates.
    pub federation: Option<FederationConfig>,
}

/// A running server.
pub struct Server {
    /// The address actually bound (the port is chosen by the OS for `:0`).
    local_addr: SocketAddr,
    /// Shared with every connection thread.
    context: Arc<Context>,
    /// Stops the server.
    shutdown: ShutdownHandle,
    /// The accept loop thread.
    acceptor: Option<JoinHandle<()>>,
    /// The router thread.
    router: Option<JoinHandle<()>>,
    /// The thread storing room history (none when history is off); it ends after the
    /// router, once it has stored what the router gave it.
    history_writer: Option<JoinHandle<()>>,
    /// The thread expiring old mailbox messages; stopped before the router.
    expiry: Option<mailbox::Expiry>,
    /// The federation's threads, if it federates; stopped before the router.
    federation: Option<Arc<federation::Federation>>,
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
        *sync::lock(flag) = true;
        cond.notify_all();
    }

    fn wait_requested(&self) {
        let (flag, cond) = &*self.requested;
        let mut requested = sync::lock(flag);
        while !*requested {
            requested = sync::wait(cond, requested);
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
        limits::fit_to_kernel(&mut config.limits);
        // The one place the storage backend is chosen.
        let store: Arc<dyn Storage> = Arc::new(SqliteStore::open(&config.data_dir)?);
        match store.account_count() {
            Ok(n) => log::info!("database: {n} accounts"),
            Err(e) => log::warn!("database: cannot count the accounts: {e}"),
        }
        let keep = config.limits.room_history;
        store.trim_room_history(keep)?;
        let kept = store.room_history(keep)?;
        match keep {
            0 => log::info!("room history: off"),
            _ => log::info!(
                "room history: keeping the last {keep} lines; {} in the database",
                kept.len()
            ),
        }
        let accounts = Accounts::new(
            store.clone(),
            config.bcrypt_cost,
            config.limits.bcrypt_concurrency,
            &config.limits.throttle,
        )?;
        let listener = TcpListener::bind(config.listen)
            .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", config.listen)))?;
        let local_addr = listener.local_addr()?;

        let (router_handle, inbox) = router::inbox();
        let router_limits = RouterLimits {
            exchange_starts: config.limits.exchange_starts,
            exchange_window: config.limits.exchange_window,
            room_fanout_rate: config.limits.room_fanout_rate,
            room_fanout_burst: config.limits.room_fanout_burst,
        };
        let writer = match keep {
            0 => None,
            _ => Some(history::start_writer(store.clone(), keep)?),
        };
        let (history_writer, history) = match writer {
            Some(writer) => (
                Some(writer.thread),
                RoomHistory::new(keep, kept, Some(writer.sender)),
            ),
            None => (None, RoomHistory::new(0, Vec::new(), None)),
        };
        let federation = match config.federation.take() {
            Some(federation) => Some(federation::Federation::start(
                federation,
                store.clone(),
                router_handle.clone(),
                config.limits.max_frame,
                Quota {
                    messages: config.limits.queue_max,
                    bytes: config.limits.queue_max_bytes,
                },
            )?),
            None => None,
        };
        // If the router does not start, the history's sender is dropped with the closure
        // and the writer ends by itself.
        let router_federation = federation.clone();
        let router = thread::Builder::new().name("router".into()).spawn(move || {
            Router::new(router_limits, history)
                .with_federation(router_federation)
                .run(inbox)
        });
        let router = match router {
            Ok(router) => router,
            Err(e) => {
                if let Some(federation) = &federation {
                    federation.stop();
                }
                return Err(e.into());
            }
        };
        // Expiry: once now (what fell due while the server was down), then periodically.
        let ttl = config.limits.queue_ttl;
        mailbox::expire(&*store, ttl, &router_handle);
        let expiry = match mailbox::start_expiry(store, ttl, router_handle.clone()) {
            Ok(expiry) => expiry,
            Err(e) => {
                if let Some(federation) = &federation {
                    federation.stop();
                }
                let _ = router_handle.send(Event::Shutdown);
                return Err(e);
            }
        };
        let context = Arc::new(Context::new(
            config.limits,
            accounts,
            router_handle,
            config.tls,
            federation.clone(),
        ));
        let shutdown = ShutdownHandle {
            requested: Arc::new((Mutex::new(false), Condvar::new())),
            wake_addr: wake_address(local_addr),
        };
        let acceptor = {
            let context = context.clone();
            thread::Builder::new()
                .name("accept".into())
                .spawn(move || accept_loop(listener, context))
        };
        let acceptor = match acceptor {
            Ok(acceptor) => acceptor,
            Err(e) => {
                if let Some(federation) = &federation {
                    federation.stop();
                }
                let _ = context.router.send(Event::Shutdown);
                return Err(e.into());
            }
        };
        Ok(Server {
            local_addr,
            context,
            shutdown,
            acceptor: Some(acceptor),
            router: Some(router),
            history_writer,
            expiry: Some(expiry),
            federation,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The federation port's address, if this server federates.
    pub fn federation_addr(&self) -> Option<SocketAddr> {
        self.federation.as_ref().map(|f| f.listen_addr())
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
        let context = &self.context;
        context.refuse_newcomers();
        // Wake the accept loop: it sees the flag and returns.
        let _ = TcpStream::connect_timeout(&self.shutdown.wake_addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Say goodbye to everyone connected, then wait for their threads.
        context.say_goodbye();
        let open = context.wait_for_connections(SHUTDOWN_GRACE);
        if open > 0 {
            // Clients that do not read keep their writers blocked: cut them off.
            log::warn!("shutdown: {open} connections did not close in time; cutting them off");
            context.evict_all();
            let open = context.wait_for_connections(CUT_OFF_GRACE);
            if open > 0 {
                log::warn!("shutdown: {open} connections still open");
            }
        }
        if let Some(expiry) = self.expiry.take() {
            drop(expiry.stop);
            let _ = expiry.thread.join();
        }
        if let Some(federation) = self.federation.take() {
            federation.stop();
        }
        let _ = context.router.send(Event::Shutdown);
        if let Some(router) = self.router.take() {
            let _ = router.join();
        }
        // The router is gone, and with it the writer's only sender: the writer stores
        // what is left in its queue and ends.
        if let Some(writer) = self.history_writer.take() {
            let _ = writer.join();
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

fn accept_loop(listener: TcpListener, context: Arc<Context>) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let mut backoff = Duration::from_millis(5);
    loop {
        let (socket, peer) = match listener.accept() {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) => {
                if context.stopping() {
                    return;
                }
                log::warn!("accept failed: {e}; retrying in {backoff:?}");
                thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        if context.stopping() {
            return;
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let admitted = match context.admit(id, peer) {
            Ok(admitted) => admitted,
            Err(refused) => {
                log::warn!("{peer}: connection refused: {refused}");
                continue;
            }
        };
        let spawned = thread::Builder::new()
            .name(format!("login-{id}"))
            .stack_size(connection::LOGIN_STACK_BYTES)
            .spawn(move || connection::serve(admitted, socket));
        if let Err(e) = spawned {
            // The closure, and with it the admission, was dropped: the place is released.
            log::error!("{peer}: cannot start a thread for the connection: {e}");
        }
    }
}
