//! Federation: links to servers of other names, so that `alice@a.test` reaches
//! `bob@b.test` end to end, with nothing acknowledged lost.
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | [`FederationConfig`], `Federation` (what the rest of the server calls: where an address lives, queries, waking a link, sharing a room line) |
//! | `peers.rs` | the peers file: name, address and trust anchor of each linked server |
//! | `wire.rs` | one TLS connection carrying peer frames, with its deadlines |
//! | `outbound.rs` | the connector thread per peer: relays the durable queue, forwards receipts, room lines and queries; reconnects with capped backoff |
//! | `inbound.rs` | the federation port: mutual TLS, the explicit name check, the boundary rules, and what each peer request does here |
//!
//! **Trust.** A peer is a configured name with its own trust anchor — a CA certificate, or
//! a pinned key — never an address: the federation port requires a client certificate
//! (rustls checks its chain against the configured CAs, or its key against the pins), and
//! then this server checks, itself, that the certificate chains to *that peer's* CA and is
//! valid for the name the peer claims in its first frame, or holds *that peer's* pinned key
//! (`tls::federation::PeerTrust::check`). The connector checks the peer it dialled the same
//! way. There is no fallback: no certificate, no link.
//!
//! **The boundary.** Every user a peer frame speaks for must be of the peer's domain (or the
//! link ends with `invalid-from`), every user it speaks to must be ours (servers never relay
//! for a third server, so there are no loops), and peers get a frame-size limit and a
//! frame rate (paced, not dropped: the peer's TCP window closes instead).
//!
//! **Delivery.** A `SEND` to `bob@b.test` is committed to the store's queue for `b.test`
//! before the sender hears `queued`; the link deletes it only when `b.test` answers
//! `RACK` (stored there, or refused for good); `b.test` de-duplicates repeats by sender and
//! reference. Receipts travel back the same way. Private messages to other servers always
//! take this path (a live `MSG` is answered `offline`, and the client turns to the mailbox),
//! so a conversation across servers never depends on both servers and both users being up
//! at once — and `OFFLINE` notices have no cross-server session to end.
//!
//! Threads: one connector per peer (`peer-out-NAME`), the federation accept loop
//! (`peer-accept`), and a thread per accepted link (`peer-in-N`). None is the router's:
//! the router only hands room lines to the connectors' bounded queues (dropping when full).

mod inbound;
mod outbound;
pub mod peers;
mod wire;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::mailbox::BundleBudgets;
use super::router::RouterHandle;
use super::store::{Quota, Storage};
use crate::error::{Error, Result};
use crate::protocol::name::{server_of, Address, ServerName, UserName};
use crate::protocol::peer::{PeerReply, PeerRequest};
use crate::sync;
use crate::tls::federation::{KeyPin, PeerTrust};

pub use peers::PeerConfig;

/// What a server needs to federate.
pub struct FederationConfig {
    /// This server's name: the domain of its users' full addresses, and the name its
    /// federation certificate is valid for.
    pub name: ServerName,
    /// Where the server-to-server port listens.
    pub listen: SocketAddr,
    /// This server's federation certificate chain (end entity first), shown on both
    /// directions of every link.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// The linked servers.
    pub peers: Vec<PeerConfig>,
    /// Whether this server's room is shared with peers (its users' lines sent to them,
    /// theirs shown here).
    pub share_room: bool,
    /// Whether peers may ask who is online here (`LIST`).
    pub share_presence: bool,
    /// Most payload bytes queued for one peer while it is unreachable; beyond it a `SEND`
    /// to its users is refused with `quota`.
    pub queue_max_bytes: u64,
}

/// How long a client's request waits for a peer's answer (`GETKEY`, `BUNDLE`, `LIST`).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The federation as the rest of the server sees it. Shared as `Arc<Federation>`.
pub(super) struct Federation {
    /// This server's name.
    name: ServerName,
    /// One connector per peer, by name.
    links: HashMap<ServerName, outbound::Link>,
    /// Whether this server shares its room.
    share_room: bool,
    /// Sockets of every live link, to cut them at shutdown (a thread may be blocked
    /// reading one).
    sockets: Arc<Sockets>,
    /// Set when the server stops.
    stopping: Arc<AtomicBool>,
    /// Most payload bytes queued for one peer.
    queue_max_bytes: u64,
    /// The threads, joined at shutdown.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Where the accept loop listens (connected to once at shutdown to wake it).
    listen: SocketAddr,
}

/// Live link sockets by an id, so shutdown can cut them.
#[derive(Default)]
pub(super) struct Sockets {
    /// The next id.
    next: AtomicU64,
    /// Clones of the live sockets.
    live: Mutex<HashMap<u64, TcpStream>>,
}

impl Sockets {
    /// Records a live socket; the returned id removes it.
    fn add(&self, socket: &TcpStream) -> Option<u64> {
        let clone = socket.try_clone().ok()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        sync::lock(&self.live).insert(id, clone);
        Some(id)
    }

    /// Forgets a socket that closed.
    fn remove(&self, id: Option<u64>) {
        if let Some(id) = id {
            sync::lock(&self.live).remove(&id);
        }
    }

    /// Cuts every live socket (shutdown): blocked reads and writes return at once.
    fn cut_all(&self) {
        for socket in sync::lock(&self.live).values() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Federation {
    /// Binds the federation port and starts the connectors and the accept loop.
    pub(super) fn start(
        config: FederationConfig,
        store: Arc<dyn Storage>,
        router: RouterHandle,
        max_frame: usize,
        quota: Quota,
    ) -> Result<Arc<Federation>> {
        let mut trusted: Vec<CertificateDer<'static>> = Vec::new();
        let mut pinned = Vec::new();
        for peer in &config.peers {
            match &peer.trust {
                PeerTrust::Ca(roots) => trusted.extend(roots.iter().cloned()),
                PeerTrust::Pin(pin) => pinned.push(pin.clone()),
            }
        }
        let server_tls = crate::tls::federation::federation_server_config(
            config.chain.clone(),
            config.key.clone_key(),
            &trusted,
            &pinned,
        )?;
        let listener = TcpListener::bind(config.listen).map_err(|e| {
            Error::Config(format!("cannot listen for peers on {}: {e}", config.listen))
        })?;
        let listen = listener.local_addr()?;
        let config_pin = config.chain.first().map(KeyPin::of_certificate);
        let sockets = Arc::new(Sockets::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let mut links = HashMap::new();
        let mut threads = Vec::new();
        for peer in &config.peers {
            let client_tls = peer
                .trust
                .client_config(config.chain.clone(), config.key.clone_key())?;
            let (link, thread) = outbound::start(outbound::Setup {
                home: config.name.clone(),
                peer: peer.clone(),
                tls: client_tls,
                store: store.clone(),
                router: router.clone(),
                sockets: sockets.clone(),
                stopping: stopping.clone(),
                max_frame,
            })?;
            links.insert(peer.name.clone(), link);
            threads.push(thread);
        }
        let federation = Arc::new(Federation {
            name: config.name.clone(),
            links,
            share_room: config.share_room,
            sockets: sockets.clone(),
            stopping: stopping.clone(),
            queue_max_bytes: config.queue_max_bytes,
            threads: Mutex::new(threads),
            listen,
        });
        let acceptor = inbound::start(
            listener,
            inbound::Shared {
                home: config.name,
                peers: config
                    .peers
                    .into_iter()
                    .map(|p| (p.name.clone(), p))
                    .collect(),
                tls: server_tls,
                store,
                router,
                federation: Arc::downgrade(&federation),
                sockets,
                stopping,
                share_room: config.share_room,
                share_presence: config.share_presence,
                max_frame,
                quota,
                pending: inbound::Slots::new(inbound::MAX_PENDING_PER_ADDRESS),
                links: inbound::Slots::new(inbound::MAX_LINKS_PER_PEER),
                bundle_budgets: BundleBudgets::per_minute(inbound::PEER_BUNDLES_PER_MINUTE),
            },
        )?;
        sync::lock(&federation.threads).push(acceptor);
        log::info!(
            "federation: {} listening for peers on {listen}; linked with {}",
            federation.name,
            federation.peer_names().join(", ")
        );
        if let Some(Ok(pin)) = config_pin {
            log::info!("federation: this server's key pin, for peers that trust it by key: {pin}");
        }
        Ok(federation)
    }

    /// This server's name.
    pub(super) fn name(&self) -> &ServerName {
        &self.name
    }

    /// The federation port's address.
    pub(super) fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    fn peer_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.links.keys().map(ToString::to_string).collect();
        names.sort();
        names
    }

    /// Whether `peer` said it answers `LIST` (false while its link is down and before it
    /// first came up).
    pub(super) fn shares_presence(&self, peer: &ServerName) -> bool {
        self.links
            .get(peer)
            .is_some_and(outbound::Link::shares_presence)
    }

    /// Whether `server` is one of this server's peers.
    pub(super) fn is_linked(&self, server: &ServerName) -> bool {
        self.links.contains_key(server)
    }

    /// Most payload bytes queued for one peer.
    pub(super) fn queue_max_bytes(&self) -> u64 {
        self.queue_max_bytes
    }

    /// Asks `peer` a question (`GETKEY`, `BUNDLE`, `LIST`; its query id is set by the
    /// link) and waits for the answer; `None` if the peer is down or does not answer in
    /// time. Called from a client's reader thread: only that client waits.
    pub(super) fn query(&self, peer: &ServerName, request: PeerRequest) -> Option<PeerReply> {
        self.links.get(peer)?.query(request, QUERY_TIMEOUT)
    }

    /// Something was queued for `peer` (a message or a receipt): its connector looks at
    /// the store now rather than at its next poll.
    pub(super) fn wake(&self, peer: &ServerName) {
        if let Some(link) = self.links.get(peer) {
            link.wake();
        }
    }

    /// A receipt was stored for `sender`, a full address: if it is a user of a peer, that
    /// peer's connector forwards it.
    pub(super) fn receipt_for(&self, sender: &str) {
        if let Some(server) = server_of(sender) {
            if let Some((name, link)) = self.links.get_key_value(server) {
                log::debug!("federation: a receipt waits for {name}");
                link.wake();
            }
        }
    }

    /// `peer` was heard from (it connected to us): its connector retries now if it was
    /// waiting out a backoff — a returning server is not left cut off.
    pub(super) fn heard_from(&self, peer: &ServerName) {
        if let Some(link) = self.links.get(peer) {
            link.reset_backoff();
        }
    }

    /// One of this server's users said `text` in the room: each peer that shows shared
    /// rooms gets it directly (never relayed further). Dropped for a peer whose queue is
    /// full or that is down, like a room line for a slow client.
    pub(super) fn share_room(&self, from: &UserName, text: &str) {
        if !self.share_room || self.links.is_empty() {
            return;
        }
        let line: Arc<str> = Arc::from(
            PeerRequest::Room {
                sender: Address {
                    user: from.clone(),
                    server: Some(self.name.clone()),
                },
                text: text.to_owned(),
            }
            .to_string(),
        );
        for link in self.links.values() {
            link.room(line.clone());
        }
    }

    /// Stops every link thread and waits for them.
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for link in self.links.values() {
            link.stop();
        }
        let _ =
            TcpStream::connect_timeout(&super::wake_address(self.listen), Duration::from_secs(1));
        self.sockets.cut_all();
        let threads = std::mem::take(&mut *sync::lock(&self.threads));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// A `Line` for a local user from a peer's room line.
pub(super) fn remote_room_line(sender: &Address, text: &str) -> super::outbox::TextFrame {
    let sender = sender.to_string();
    super::outbox::TextFrame::new(text, |out| crate::protocol::write_room(out, &sender, text))
}
