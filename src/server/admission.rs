//! Admission: the state every connection thread shares ([`Context`]), which connections
//! the server takes, and the record of those it serves so that shutdown can reach them.
//!
//! The accept loop calls [`Context::admit`] before starting a connection's thread; the
//! [`Admitted`] it then hands over releases the place when the connection ends, on
//! whichever thread that happens (including a panic). The connection record's lock is
//! the innermost lock of the server: nothing else is locked while it is held except an
//! outbox's queue (to say goodbye at shutdown), and never a socket call.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::accounts::Accounts;
use super::federation::Federation;
use super::limits::Limits;
use super::mailbox::BundleBudgets;
use super::outbox::{Line, Outbox};
use super::router::{ConnId, RouterHandle};
use super::throttle::{AddressPrefix, Throttle};
use crate::protocol::ServerLine;
use crate::sync;

/// State shared by every connection thread, and the admission record.
pub(super) struct Context {
    /// The limits in force.
    pub(super) limits: Limits,
    /// Registration and login.
    pub(super) accounts: Accounts,
    /// Where logged-in connections send their events.
    pub(super) router: RouterHandle,
    /// TLS configuration for new connections.
    pub(super) tls: Arc<rustls::ServerConfig>,
    /// Failed-login and registration memory across connections.
    pub(super) throttle: Throttle,
    /// Each account's `BUNDLE` budget, across its connections.
    pub(super) bundle_budgets: BundleBudgets,
    /// Links to other servers, if this one federates.
    pub(super) federation: Option<Arc<Federation>>,
    /// Who is connected: admission counts and a handle on each queue for shutdown.
    connections: Mutex<Connections>,
    /// Signalled when a connection ends (shutdown waits on it).
    connection_ended: Condvar,
    /// Set once shutdown begins. Set again under the `connections` lock, so that every
    /// connection is either in the record when goodbyes are sent or told as it registers.
    stopping: AtomicBool,
}

/// Live connections, for admission control and shutdown.
#[derive(Default)]
struct Connections {
    /// Connections admitted and not yet finished (including those still handshaking).
    total: usize,
    /// Connections per source address.
    per_ip: HashMap<IpAddr, usize>,
    /// Connections admitted that have not logged in (counted in `total` too).
    anonymous: usize,
    /// Of those, how many per network; networks with none are removed.
    anonymous_per_network: HashMap<AddressPrefix, usize>,
    /// The outbox of each connection past its handshake, to say goodbye at shutdown.
    outboxes: HashMap<ConnId, Outbox>,
}

impl Connections {
    /// A connection from `ip` counted as anonymous has logged in or ended.
    fn no_longer_anonymous(&mut self, ip: IpAddr) {
        self.anonymous -= 1;
        let network = AddressPrefix::of(ip);
        if let Some(n) = self.anonymous_per_network.get_mut(&network) {
            *n -= 1;
            if *n == 0 {
                self.anonymous_per_network.remove(&network);
            }
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// The server holds `max_connections` already.
    Full {
        /// The limit reached.
        limit: usize,
    },
    /// `max_anonymous` connections have not logged in yet.
    TooManyAnonymous {
        /// The limit reached.
        limit: usize,
    },
    /// `max_anonymous_per_network` connections from this network have not logged in yet.
    TooManyAnonymousFromNetwork {
        /// The network.
        network: AddressPrefix,
        /// The limit reached.
        limit: usize,
    },
    /// This address holds `max_connections_per_ip` already.
    TooManyFromAddress {
        /// The address.
        ip: IpAddr,
        /// The limit reached.
        limit: usize,
    },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Full { limit } => write!(f, "server full ({limit} connections)"),
            Refused::TooManyAnonymous { limit } => {
                write!(
                    f,
                    "{limit} connections are waiting to log in already (the limit)"
                )
            }
            Refused::TooManyAnonymousFromNetwork { network, limit } => write!(
                f,
                "{limit} connections from {network} are waiting to log in already (the limit)"
            ),
            Refused::TooManyFromAddress { ip, limit } => {
                write!(f, "{limit} connections already open from {ip} (the limit)")
            }
        }
    }
}

impl Context {
    /// The shared state of a server that admits nobody yet.
    pub(super) fn new(
        limits: Limits,
        accounts: Accounts,
        router: RouterHandle,
        tls: Arc<rustls::ServerConfig>,
        federation: Option<Arc<Federation>>,
    ) -> Context {
        Context {
            federation,
            throttle: Throttle::new(limits.throttle.clone()),
            bundle_budgets: BundleBudgets::default(),
            limits,
            accounts,
            router,
            tls,
            connections: Mutex::new(Connections::default()),
            connection_ended: Condvar::new(),
            stopping: AtomicBool::new(false),
        }
    }

    fn lock_connections(&self) -> MutexGuard<'_, Connections> {
        sync::lock(&self.connections)
    }

    /// Whether shutdown has begun.
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Admits a connection from `peer`, or says which limit refuses it.
    pub(super) fn admit(
        self: &Arc<Context>,
        id: ConnId,
        peer: SocketAddr,
    ) -> Result<Admitted, Refused> {
        let ip = peer.ip();
        let mut conns = self.lock_connections();
        if conns.total >= self.limits.max_connections {
            return Err(Refused::Full {
                limit: self.limits.max_connections,
            });
        }
        let limit = self.limits.max_anonymous;
        if limit > 0 && conns.anonymous >= limit {
            return Err(Refused::TooManyAnonymous { limit });
        }
        let network = AddressPrefix::of(ip);
        let limit = self.limits.max_anonymous_per_network;
        let waiting = conns.anonymous_per_network.get(&network).copied();
        if limit > 0 && waiting.is_some_and(|n| n >= limit) {
            return Err(Refused::TooManyAnonymousFromNetwork { network, limit });
        }
        let limit = self.limits.max_connections_per_ip;
        if limit > 0 && conns.per_ip.get(&ip).is_some_and(|&n| n >= limit) {
            return Err(Refused::TooManyFromAddress { ip, limit });
        }
        conns.total += 1;
        conns.anonymous += 1;
        *conns.anonymous_per_network.entry(network).or_insert(0) += 1;
        *conns.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Admitted {
            context: self.clone(),
            id,
            peer,
            anonymous: true,
        })
    }

    /// Releases what `admit` counted (`anonymous`: the connection never logged in).
    fn release(&self, id: ConnId, ip: IpAddr, anonymous: bool) {
        let mut conns = self.lock_connections();
        conns.outboxes.remove(&id);
        conns.total -= 1;
        if anonymous {
            conns.no_longer_anonymous(ip);
        }
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
    pub(super) fn register(&self, id: ConnId, outbox: Outbox) {
        // Checked under the lock that `begin_shutdown` holds while setting the flag.
        let mut conns = self.lock_connections();
        if self.stopping() {
            say_shutdown(&outbox);
        }
        conns.outboxes.insert(id, outbox);
    }

    /// Marks shutdown begun (the accept loop checks it) without telling anyone yet.
    pub(super) fn refuse_newcomers(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Tells every registered connection `BYE server shutting down` and closes its queue.
    pub(super) fn say_goodbye(&self) {
        let conns = self.lock_connections();
        self.stopping.store(true, Ordering::SeqCst);
        for outbox in conns.outboxes.values() {
            say_shutdown(outbox);
        }
    }

    /// Waits until every connection has ended, for at most `limit`; returns how many are
    /// still open.
    pub(super) fn wait_for_connections(&self, limit: Duration) -> usize {
        let conns = self.lock_connections();
        sync::wait_timeout_while(&self.connection_ended, conns, limit, |c| c.total > 0).total
    }

    /// Cuts off every registered connection at once (those that do not read keep their
    /// writers blocked).
    pub(super) fn evict_all(&self) {
        for outbox in self.lock_connections().outboxes.values() {
            outbox.evict();
        }
    }
}

fn say_shutdown(outbox: &Outbox) {
    let _ = outbox.push(Line::from(&ServerLine::Bye {
        reason: "server shutting down".into(),
    }));
    outbox.close();
}

/// What a connection holds on to for its whole life, on whichever thread is serving it:
/// its admission place and its registration for shutdown. Dropping it releases both.
pub(super) struct Admitted {
    /// Server-wide state.
    pub(super) context: Arc<Context>,
    /// The connection's id.
    pub(super) id: ConnId,
    /// The client's address, as counted by admission control.
    pub(super) peer: SocketAddr,
    /// Counted among the connections that have not logged in; cleared by `logged_in`.
    anonymous: bool,
}

impl Admitted {
    /// The connection has logged in: it no longer counts against `max_anonymous`.
    pub(super) fn logged_in(&mut self) {
        if std::mem::take(&mut self.anonymous) {
            self.context
                .lock_connections()
                .no_longer_anonymous(self.peer.ip());
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.context
            .release(self.id, self.peer.ip(), self.anonymous);
    }
}
