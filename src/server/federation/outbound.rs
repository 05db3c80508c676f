//! The connector: one thread per peer that dials it and sends it everything this server
//! has for it, in order.
//!
//! What it sends, most important first:
//! 1. the durable queue: `RELAY` for each message the store holds for the peer, `RECEIPT`
//!    for each receipt it holds for the peer's users; each row is deleted only when the
//!    peer's `RACK` for it arrives (sent in batches, answered in order);
//! 2. client queries (`GETKEY`, `BUNDLE`, `LIST`), answered to the waiting reader thread;
//! 3. room lines, from a small bounded queue that drops when full (like a slow client's
//!    room part), and `PING`s when idle.
//!
//! It looks at the store when woken (a `SEND` or receipt for this peer was committed) and
//! every [`POLL`] anyway (expiry receipts, and anything a wake missed). When the peer is
//! down it retries with a backoff that doubles from [`MIN_BACKOFF`] to at most
//! [`MAX_BACKOFF`] — minutes, not days — and is reset by any connection from the peer, so
//! a returning server gets its queue within moments (issue reports on other servers:
//! backoffs growing to days kept returning servers cut off).

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};
use rustls::pki_types::ServerName as TlsServerName;
use rustls::ClientConnection;

use super::peers::PeerConfig;
use super::wire::{LinkDown, PeerStream};
use super::Sockets;
use crate::error::Result;
use crate::protocol::name::{Address, ServerName, UserName};
use crate::protocol::peer::{
    PeerReply, PeerRequest, ReceiptState, RelayOutcome, PEER_PROTOCOL_VERSION,
};
use crate::server::history::unix_now;
use crate::server::mailbox::Notice;
use crate::server::router::{Event, RouterHandle};
use crate::server::store::{Outcome, Receipt, Storage};

/// First retry after a failed connection.
const MIN_BACKOFF: Duration = Duration::from_secs(1);

/// Longest wait between retries: a peer that comes back is reached within this even if
/// it never connects to us.
const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// A link that stayed up this long failed for a new reason: retry from [`MIN_BACKOFF`].
const STABLE_LINK: Duration = Duration::from_secs(10);

/// How often the store is looked at without a wake-up.
const POLL: Duration = Duration::from_secs(2);

/// Idle time after which a `PING` checks the link.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Deadline for connecting, the handshake and each answer.
const DEADLINE: Duration = Duration::from_secs(15);

/// Messages or receipts sent before their `RACK`s are read.
const BATCH: usize = 64;

/// Room lines waiting for a peer before more are dropped.
const ROOM_QUEUE: usize = 256;

/// Client queries waiting for the link.
const QUERY_QUEUE: usize = 256;

/// A client query with the channel its answer goes to.
struct Query {
    /// The request (its query id is set when it is sent).
    request: PeerRequest,
    /// Where the answer goes.
    answer: Sender<PeerReply>,
}

/// The handle the server keeps on one connector.
pub(super) struct Link {
    /// The peer's name.
    name: ServerName,
    /// Whether the link is up now (queries to a down peer fail at once).
    up: Arc<AtomicBool>,
    /// Wakes the connector to look at the store (capacity 1: one pending wake is enough).
    wake: Sender<()>,
    /// Cuts a backoff short (capacity 1).
    reset: Sender<()>,
    /// Client queries.
    queries: Sender<Query>,
    /// Room lines, complete frames without the line ending.
    room: Sender<Arc<str>>,
    /// A message on it stops the connector.
    stop: Sender<()>,
    /// Whether the peer shows shared room lines (from its `OK PEER`).
    peer_takes_room: Arc<AtomicBool>,
    /// Whether the peer answers `LIST` (from its `OK PEER`).
    peer_lists: Arc<AtomicBool>,
}

impl Link {
    /// Whether the peer said (in its last `OK PEER`) that it answers `LIST`.
    pub(super) fn shares_presence(&self) -> bool {
        self.peer_lists.load(Ordering::SeqCst)
    }

    /// Sends `request` and waits for the answer; `None` if the link is down, busy, or the
    /// answer does not come in time.
    pub(super) fn query(&self, request: PeerRequest, timeout: Duration) -> Option<PeerReply> {
        if !self.up.load(Ordering::SeqCst) {
            return None;
        }
        let (answer, reply) = bounded(1);
        self.queries.try_send(Query { request, answer }).ok()?;
        let got = reply.recv_timeout(timeout).ok();
        if got.is_none() {
            log::warn!("federation: {} did not answer a query in time", self.name);
        }
        got
    }

    /// The store has something new for this peer.
    pub(super) fn wake(&self) {
        let _ = self.wake.try_send(());
    }

    /// The peer was heard from: retry now if waiting.
    pub(super) fn reset_backoff(&self) {
        let _ = self.reset.try_send(());
    }

    /// Queues a room line; dropped if the peer does not take them, is down, or its queue
    /// is full.
    pub(super) fn room(&self, line: Arc<str>) {
        if !self.up.load(Ordering::SeqCst) || !self.peer_takes_room.load(Ordering::SeqCst) {
            return;
        }
        if let Err(TrySendError::Full(_)) = self.room.try_send(line) {
            log::warn!(
                "federation: room line for {} dropped: its queue is full",
                self.name
            );
        }
    }

    /// Asks the connector to stop (it ends its session and returns).
    pub(super) fn stop(&self) {
        let _ = self.stop.try_send(());
    }
}

/// What a connector needs.
pub(super) struct Setup {
    /// This server's name.
    pub(super) home: ServerName,
    /// The peer.
    pub(super) peer: PeerConfig,
    /// TLS for dialling it (its CA only, our certificate shown).
    pub(super) tls: Arc<rustls::ClientConfig>,
    /// The durable queues.
    pub(super) store: Arc<dyn Storage>,
    /// Where receipts for local senders go.
    pub(super) router: RouterHandle,
    /// Live sockets, cut at shutdown.
    pub(super) sockets: Arc<Sockets>,
    /// Set when the server stops.
    pub(super) stopping: Arc<AtomicBool>,
    /// Largest frame.
    pub(super) max_frame: usize,
}

/// The connector's receiving ends.
struct Inbox {
    /// Something new is in the store for this peer.
    wake: Receiver<()>,
    /// The peer connected to us: cut the backoff short.
    reset: Receiver<()>,
    /// Client queries to forward.
    queries: Receiver<Query>,
    /// Room lines to forward.
    room: Receiver<Arc<str>>,
    /// The server is stopping.
    stop: Receiver<()>,
}

/// Starts the connector thread for `setup.peer`.
pub(super) fn start(setup: Setup) -> Result<(Link, JoinHandle<()>)> {
    let (wake, wake_rx) = bounded(1);
    let (reset, reset_rx) = bounded(1);
    let (queries, queries_rx) = bounded(QUERY_QUEUE);
    let (room, room_rx) = bounded(ROOM_QUEUE);
    let (stop, stop_rx) = bounded(1);
    let up = Arc::new(AtomicBool::new(false));
    let peer_takes_room = Arc::new(AtomicBool::new(false));
    let peer_lists = Arc::new(AtomicBool::new(false));
    let link = Link {
        name: setup.peer.name.clone(),
        up: up.clone(),
        wake,
        reset,
        queries,
        room,
        stop,
        peer_takes_room: peer_takes_room.clone(),
        peer_lists: peer_lists.clone(),
    };
    let inbox = Inbox {
        wake: wake_rx,
        reset: reset_rx,
        queries: queries_rx,
        room: room_rx,
        stop: stop_rx,
    };
    let thread = thread::Builder::new()
        .name(format!("peer-out-{}", setup.peer.name))
        .spawn(move || {
            Connector {
                setup,
                inbox,
                up,
                peer_takes_room,
                peer_lists,
                next_qid: 1,
            }
            .run()
        })?;
    Ok((link, thread))
}

/// The connector thread's state.
struct Connector {
    /// What it was started with.
    setup: Setup,
    /// What the rest of the server hands it.
    inbox: Inbox,
    /// Shared with the [`Link`]: whether queries can be sent now.
    up: Arc<AtomicBool>,
    /// Shared with the [`Link`]: whether the peer shows room lines (its `OK PEER`).
    peer_takes_room: Arc<AtomicBool>,
    /// Shared with the [`Link`]: whether the peer answers `LIST` (its `OK PEER`).
    peer_lists: Arc<AtomicBool>,
    /// The next query id.
    next_qid: u64,
}

/// How a session ended.
enum Ended {
    /// The server is stopping.
    Stopped,
    /// The link failed; retry.
    Down(LinkDown),
}

impl Connector {
    fn run(mut self) {
        let peer = self.setup.peer.name.clone();
        let mut backoff = MIN_BACKOFF;
        loop {
            if self.setup.stopping.load(Ordering::SeqCst) {
                return;
            }
            let started = Instant::now();
            match self.session() {
                Ended::Stopped => return,
                Ended::Down(why) => {
                    self.up.store(false, Ordering::SeqCst);
                    if started.elapsed() >= STABLE_LINK {
                        backoff = MIN_BACKOFF;
                    }
                    log::warn!("federation: link to {peer} down: {why}; retrying in {backoff:?}");
                }
            }
            // Queries and room lines for a down peer are not kept: their senders learn
            // it at once (the query's channel closes), the room is not stored anyway.
            self.inbox.queries.try_iter().for_each(drop);
            self.inbox.room.try_iter().for_each(drop);
            select! {
                recv(self.inbox.stop) -> _ => return,
                recv(self.inbox.reset) -> _ => backoff = MIN_BACKOFF,
                default(backoff) => backoff = (backoff * 2).min(MAX_BACKOFF),
            }
        }
    }

    /// Connects, says who we are, checks who answered, then serves until the link fails.
    fn session(&mut self) -> Ended {
        let stream = match self.connect() {
            Ok(stream) => stream,
            Err(why) => return Ended::Down(why),
        };
        let (mut stream, socket_id) = stream;
        let ended = self.serve(&mut stream);
        if matches!(ended, Ended::Stopped) {
            stream.close();
        }
        self.setup.sockets.remove(socket_id);
        ended
    }

    /// Dials the peer; the socket is registered (so shutdown can cut a blocked handshake)
    /// from connect to the end of the session, and unregistered here if the link does not
    /// come up.
    fn connect(
        &mut self,
    ) -> std::result::Result<(PeerStream<ClientConnection>, Option<u64>), LinkDown> {
        let peer = &self.setup.peer;
        let address = peer
            .address
            .to_socket_addrs()
            .map_err(|e| LinkDown::Io(format!("cannot resolve {}: {e}", peer.address)))?
            .next()
            .ok_or_else(|| LinkDown::Io(format!("{} resolves to nothing", peer.address)))?;
        let tls_name = TlsServerName::try_from(peer.name.as_str().to_owned())
            .map_err(|e| LinkDown::Io(format!("{}: {e}", peer.name)))?;
        let conn = ClientConnection::new(self.setup.tls.clone(), tls_name)
            .map_err(|e| LinkDown::Io(e.to_string()))?;
        let socket = TcpStream::connect_timeout(&address, DEADLINE)?;
        socket.set_read_timeout(Some(DEADLINE))?;
        socket.set_write_timeout(Some(DEADLINE))?;
        socket.set_nodelay(true)?;
        let socket_id = self.setup.sockets.add(&socket);
        let name = peer.name.clone();
        match self.introduce(conn, socket) {
            Ok(stream) => {
                log::info!("federation: linked to {name} at {address}");
                Ok((stream, socket_id))
            }
            Err(why) => {
                self.setup.sockets.remove(socket_id);
                Err(why)
            }
        }
    }

    /// The TLS handshake, the explicit certificate check, and `PEER` / `OK PEER`.
    fn introduce(
        &self,
        conn: ClientConnection,
        socket: TcpStream,
    ) -> std::result::Result<PeerStream<ClientConnection>, LinkDown> {
        let peer = &self.setup.peer;
        let mut stream = PeerStream::handshake(conn, socket, self.setup.max_frame, None)?;
        // rustls checked the chain and the name; the check is made again here, explicitly,
        // so that which peer this is never rests on configuration alone.
        peer.trust
            .check(stream.peer_certificates(), &peer.name)
            .map_err(LinkDown::Protocol)?;
        let hello = PeerRequest::Hello {
            version: PEER_PROTOCOL_VERSION,
            name: self.setup.home.clone(),
        };
        stream.write_line(&hello.to_string())?;
        let (room, list) = match PeerReply::parse(&stream.read_line()?) {
            Ok(PeerReply::Welcome { name, room, list }) if name == peer.name => (room, list),
            Ok(PeerReply::Error { code, text }) => {
                return Err(LinkDown::Protocol(format!(
                    "refused: {} {text}",
                    code.as_str()
                )))
            }
            _ => return Err(LinkDown::Protocol("no OK PEER with its name".into())),
        };
        self.peer_takes_room.store(room, Ordering::SeqCst);
        self.peer_lists.store(list, Ordering::SeqCst);
        self.up.store(true, Ordering::SeqCst);
        Ok(stream)
    }

    /// The session's loop: the durable queue first, then whatever the inbox brings.
    fn serve(&mut self, stream: &mut PeerStream<ClientConnection>) -> Ended {
        let mut last_sent = Instant::now();
        loop {
            if self.setup.stopping.load(Ordering::SeqCst) {
                return Ended::Stopped;
            }
            match self.send_queued(stream) {
                Ok(true) => {
                    last_sent = Instant::now();
                    continue;
                }
                Ok(false) => {}
                Err(why) => return Ended::Down(why),
            }
            let idle = KEEPALIVE.saturating_sub(last_sent.elapsed());
            let wrote = select! {
                recv(self.inbox.stop) -> _ => return Ended::Stopped,
                recv(self.inbox.wake) -> _ => Ok(false),
                recv(self.inbox.queries) -> query => match query {
                    Ok(query) => self.ask(stream, query).map(|()| true),
                    Err(_) => return Ended::Stopped,
                },
                recv(self.inbox.room) -> line => match line {
                    Ok(line) => self.send_room(stream, line).map(|()| true),
                    Err(_) => return Ended::Stopped,
                },
                default(POLL.min(idle)) => {
                    if last_sent.elapsed() >= KEEPALIVE {
                        self.ping(stream).map(|()| true)
                    } else {
                        Ok(false)
                    }
                }
            };
            match wrote {
                Ok(true) => last_sent = Instant::now(),
                Ok(false) => {}
                Err(why) => return Ended::Down(why),
            }
        }
    }

    /// Sends a batch of queued messages and receipts and applies their `RACK`s. Returns
    /// whether there was anything (so the caller looks again at once).
    fn send_queued(
        &mut self,
        stream: &mut PeerStream<ClientConnection>,
    ) -> std::result::Result<bool, LinkDown> {
        let peer = &self.setup.peer.name;
        let store = &*self.setup.store;
        let messages = store.peer_queue(peer, 0, BATCH)?;
        let receipts = store.peer_receipts(peer, 0, BATCH)?;
        if messages.is_empty() && receipts.is_empty() {
            return Ok(false);
        }
        let home = &self.setup.home;
        let mut frames = Vec::new();
        let mut expected = Vec::with_capacity(messages.len() + receipts.len());
        for mail in &messages {
            let (Ok(sender), Ok(recipient)) = (
                UserName::parse(&mail.sender),
                UserName::parse(&mail.recipient),
            ) else {
                log::error!(
                    "federation: queued message {} has a bad name; dropped",
                    mail.id
                );
                let _ = store.peer_acked(peer, mail.id, None, unix_now());
                continue;
            };
            let relay = PeerRequest::Relay {
                id: mail.id,
                sender: Address {
                    user: sender,
                    server: Some(home.clone()),
                },
                recipient: Address {
                    user: recipient,
                    server: Some(peer.clone()),
                },
                reference: mail.reference.clone(),
                payload: mail.payload.clone(),
            };
            frames.extend_from_slice(relay.to_string().as_bytes());
            frames.push(b'\n');
            expected.push(Sent::Message(mail.id));
        }
        for receipt in &receipts {
            match receipt_frame(receipt, home) {
                Some(frame) => {
                    frames.extend_from_slice(frame.to_string().as_bytes());
                    frames.push(b'\n');
                    expected.push(Sent::Receipt(receipt.id));
                }
                None => {
                    log::error!(
                        "federation: receipt {} cannot be forwarded; dropped",
                        receipt.id
                    );
                    let _ = store.forget_receipts(&[receipt.id]);
                }
            }
        }
        stream.write_frames(&frames)?;
        // The answers, in order. What was answered is applied even if the link fails
        // before the rest: one transaction for the batch's messages, one for its receipts.
        let mut taken = Vec::with_capacity(expected.len());
        let mut forwarded = Vec::new();
        let read = (|| {
            for sent in expected {
                let reply = PeerReply::parse(&stream.read_line()?)
                    .map_err(|e| LinkDown::Protocol(e.to_string()))?;
                let PeerReply::Rack { id, outcome } = reply else {
                    return Err(LinkDown::Protocol(format!("expected RACK, got {reply}")));
                };
                match sent {
                    Sent::Message(sent_id) if id == sent_id => taken.push((id, refusal(outcome))),
                    Sent::Receipt(sent_id) if id == sent_id => forwarded.push(id),
                    _ => return Err(LinkDown::Protocol(format!("RACK {id} out of order"))),
                }
            }
            Ok(())
        })();
        self.messages_taken(&taken)?;
        store.forget_receipts(&forwarded)?;
        read?;
        Ok(true)
    }

    /// The peer took (or refused for good) these queued messages: forget them in one
    /// transaction, and tell the senders of those it refused.
    fn messages_taken(
        &self,
        taken: &[(u64, Option<Outcome>)],
    ) -> std::result::Result<(), LinkDown> {
        if taken.is_empty() {
            return Ok(());
        }
        let receipts = self
            .setup
            .store
            .peer_acked_all(&self.setup.peer.name, taken, unix_now())?;
        let notices: Vec<Notice> = receipts.iter().filter_map(Notice::receipt).collect();
        if !notices.is_empty() {
            let _ = self.setup.router.send(Event::Notices(notices));
        }
        Ok(())
    }

    /// Sends a client's query and hands it the answer.
    fn ask(
        &mut self,
        stream: &mut PeerStream<ClientConnection>,
        query: Query,
    ) -> std::result::Result<(), LinkDown> {
        let qid = self.next_qid;
        self.next_qid += 1;
        let mut request = query.request;
        if let Some(id) = request.query_id_mut() {
            *id = qid;
        }
        stream.write_line(&request.to_string())?;
        let reply = PeerReply::parse(&stream.read_line()?)
            .map_err(|e| LinkDown::Protocol(e.to_string()))?;
        if reply.query_id() != Some(qid) {
            return Err(LinkDown::Protocol(format!(
                "expected the answer to query {qid}, got {reply}"
            )));
        }
        let _ = query.answer.send(reply);
        Ok(())
    }

    /// Sends room lines (this one and any others waiting) as one write.
    fn send_room(
        &mut self,
        stream: &mut PeerStream<ClientConnection>,
        first: Arc<str>,
    ) -> std::result::Result<(), LinkDown> {
        let mut frames = Vec::new();
        for line in std::iter::once(first).chain(self.inbox.room.try_iter()) {
            frames.extend_from_slice(line.as_bytes());
            frames.push(b'\n');
        }
        stream.write_frames(&frames)
    }

    /// Checks an idle link.
    fn ping(
        &mut self,
        stream: &mut PeerStream<ClientConnection>,
    ) -> std::result::Result<(), LinkDown> {
        let token = unix_now().to_string();
        stream.write_line(
            &PeerRequest::Ping {
                token: token.clone(),
            }
            .to_string(),
        )?;
        match PeerReply::parse(&stream.read_line()?) {
            Ok(PeerReply::Pong { token: echoed }) if echoed == token => Ok(()),
            _ => Err(LinkDown::Protocol("no PONG".into())),
        }
    }
}

/// The receipt outcome a `RACK` records: none when the peer stored the message (its
/// receipt comes later), a refusal otherwise.
fn refusal(outcome: RelayOutcome) -> Option<Outcome> {
    match outcome {
        RelayOutcome::Stored => None,
        RelayOutcome::Refused(reason) => Some(Outcome::Refused(reason)),
    }
}

/// What a batch sent, for matching its `RACK`s in order.
enum Sent {
    /// `RELAY` of the queued message with this id.
    Message(u64),
    /// `RECEIPT` of the stored receipt with this id.
    Receipt(u64),
}

/// The `RECEIPT` frame for a stored receipt whose sender is a user of the peer.
fn receipt_frame(receipt: &Receipt, home: &ServerName) -> Option<PeerRequest> {
    let state = match receipt.outcome {
        Outcome::Delivered => ReceiptState::Delivered,
        Outcome::Expired => ReceiptState::Expired,
        Outcome::Unreadable => ReceiptState::Unreadable,
        Outcome::Refused(_) => return None,
    };
    Some(PeerRequest::Receipt {
        id: receipt.id,
        sender: Address::parse(&receipt.sender).ok()?,
        reference: receipt.reference.clone(),
        recipient: Address {
            user: UserName::parse(&receipt.recipient).ok()?,
            server: Some(home.clone()),
        },
        state,
    })
}
