//! The federation port: accepts peers' connections, proves who they are, and carries out
//! their requests within the boundary rules.
//!
//! A connection's life: TLS with a client certificate (refused without one, or with one
//! no configured peer's CA signed and with no pinned key) → the peer's first frame
//! `PEER 1 <name>` → this server checks that `name` is a configured peer and that the
//! certificate chains to *that peer's* CA and is valid for `name`, or holds *that peer's*
//! pinned key (`not-authorized` otherwise) → `OK PEER` → requests, each answered in order.
//!
//! The rules every request passes before it does anything ([`Session::check`]):
//! - each user it speaks *for* (a sender, a requester, the recipient who produced a
//!   receipt) is of the authenticated peer's domain: otherwise the link ends with
//!   `ERR invalid-from` (a peer that lies about one sender is not trusted with the rest);
//! - each user it speaks *to* is of this server: a `RELAY` for a third server is refused
//!   for good (`RACK … refused no-such-server`), so servers never relay and loops cannot
//!   form;
//! - at most [`PEER_RATE`] frames a second (bursts of [`PEER_BURST`]): beyond it the
//!   thread waits before reading on, so the peer's TCP window closes — nothing is dropped;
//! - frames of at most [`PEER_FRAME_FACTOR`] times the clients' limit (a longer one ends the
//!   link, `too-long`), and relayed payloads of at most the clients' limit (a larger one is
//!   refused for good, so it never blocks the peer's queue).

use std::collections::HashMap;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use rustls::ServerConnection;

use super::peers::PeerConfig;
use super::wire::{LinkDown, PeerStream};
use super::{remote_room_line, Federation, Sockets};
use crate::error::Result;
use crate::protocol::frame::FrameError;
use crate::protocol::name::{Address, ServerName, UserName};
use crate::protocol::peer::{
    LinkError, PeerReply, PeerRequest, ReceiptState, RelayOutcome, PEER_PROTOCOL_VERSION,
};
use crate::protocol::{ErrorCode, OneTimePrekey, Refusal};
use crate::rate::TokenBucket;
use crate::server::history::unix_now;
use crate::server::mailbox::{BundleBudgets, Notice};
use crate::server::router::{Event, RouterHandle, LIST_MAX_NAMES};
use crate::server::store::{
    BundleLookup, Enqueued, KeyLookup, NewMail, Outcome, Quota, Storage, StoredMail,
};
use crate::sync;

/// Frames a second one peer link may send, on average.
pub(super) const PEER_RATE: u32 = 2_000;

/// The same, at once.
pub(super) const PEER_BURST: u32 = 4_000;

/// `BUNDLE` fetches a minute one peer may make for all its users together: each hands out
/// one of our users' one-time prekeys.
pub(super) const PEER_BUNDLES_PER_MINUTE: u32 = 300;

/// Connections accepted at once (handshaking or up), across all peers: a bound on this
/// port's threads.
const MAX_LINKS: usize = 64;

/// Connections from one address that have not yet proved a peer's name: strangers share
/// these places, and each holds one for [`HANDSHAKE_DEADLINE`] at most, so one address
/// cannot fill the port (a place for a peer's own connection stays free elsewhere).
pub(super) const MAX_PENDING_PER_ADDRESS: usize = 4;

/// Authenticated links one peer may hold at once (it needs one; a few cover a reconnect
/// racing the old link's end).
pub(super) const MAX_LINKS_PER_PEER: usize = 4;

/// Deadline for the handshake and the `PEER` frame together, whatever trickles in.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// A peer's frames may be this many times the clients' frame limit: a `RELAY` carries a
/// client's `SEND` payload plus two full addresses and an id, so an exactly full `SEND`
/// still fits; its payload must still fit this server's own limit (or it is refused for
/// good with `quota`, never left to block the peer's queue).
const PEER_FRAME_FACTOR: usize = 2;

/// Room lines a second one peer's users may put in front of this server's users, on
/// average ([`PEER_ROOM_BURST`] at once); more are dropped, as a local sender's lines over
/// its fan-out budget are.
const PEER_ROOM_LINES_PER_SECOND: u32 = 20;

/// The same, at once.
const PEER_ROOM_BURST: u32 = 40;

/// A link with no frame for this long is closed (the connector pings every 30 s).
const IDLE_DEADLINE: Duration = Duration::from_secs(120);

/// How long a `LIST` waits for the router.
const LIST_DEADLINE: Duration = Duration::from_secs(5);

/// What every accepted link shares.
pub(super) struct Shared {
    /// This server's name.
    pub(super) home: ServerName,
    /// The configured peers, by name.
    pub(super) peers: HashMap<ServerName, PeerConfig>,
    /// TLS for the port (client certificates required).
    pub(super) tls: Arc<rustls::ServerConfig>,
    /// Where relayed messages and receipts are stored.
    pub(super) store: Arc<dyn Storage>,
    /// Where their lines for online users go.
    pub(super) router: RouterHandle,
    /// To reset a connector's backoff when its peer connects (weak: the federation owns
    /// this accept loop).
    pub(super) federation: Weak<Federation>,
    /// Live sockets, cut at shutdown.
    pub(super) sockets: Arc<Sockets>,
    /// Set when the server stops.
    pub(super) stopping: Arc<AtomicBool>,
    /// Whether peers' room lines are shown here.
    pub(super) share_room: bool,
    /// Whether peers may ask who is online.
    pub(super) share_presence: bool,
    /// Largest frame.
    pub(super) max_frame: usize,
    /// The bounds of a recipient's queue (the same for relayed messages as for local ones).
    pub(super) quota: Quota,
    /// Connections not yet authenticated, per source address.
    pub(super) pending: Slots<IpAddr>,
    /// Authenticated links, per peer.
    pub(super) links: Slots<ServerName>,
    /// Each peer's `BUNDLE` budget, across its links (a reconnect does not refill it).
    pub(super) bundle_budgets: BundleBudgets<ServerName>,
}

/// Places counted per key, each given back when its [`Slot`] is dropped.
pub(super) struct Slots<K> {
    /// Places taken, per key (keys with none are removed).
    taken: Arc<Mutex<HashMap<K, usize>>>,
    /// Places per key.
    limit: usize,
}

impl<K: Eq + std::hash::Hash + Clone> Slots<K> {
    /// `limit` places per key.
    pub(super) fn new(limit: usize) -> Slots<K> {
        Slots {
            taken: Arc::default(),
            limit,
        }
    }

    /// Takes a place for `key`, or `None` if all of its places are taken.
    fn take(&self, key: &K) -> Option<Slot<K>> {
        let mut taken = sync::lock(&self.taken);
        let count = taken.entry(key.clone()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            taken: self.taken.clone(),
            key: key.clone(),
        })
    }
}

/// A place taken in [`Slots`]; dropping it gives it back.
struct Slot<K: Eq + std::hash::Hash> {
    /// The counts it was taken from.
    taken: Arc<Mutex<HashMap<K, usize>>>,
    /// Whose place it is.
    key: K,
}

impl<K: Eq + std::hash::Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut taken = sync::lock(&self.taken);
        if let Some(count) = taken.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                taken.remove(&self.key);
            }
        }
    }
}

/// Starts the accept loop.
pub(super) fn start(listener: TcpListener, shared: Shared) -> Result<JoinHandle<()>> {
    let shared = Arc::new(shared);
    Ok(thread::Builder::new()
        .name("peer-accept".into())
        .spawn(move || accept_loop(listener, shared))?)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // One place per connection, given back when its thread ends — or when the thread
    // cannot start and the closure holding it is dropped.
    let open = Slots::new(MAX_LINKS);
    let mut next = 0u64;
    for socket in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(socket) = socket else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        let Some(place) = open.take(&()) else {
            log::warn!("federation: link refused: {MAX_LINKS} already open");
            continue;
        };
        next += 1;
        let shared = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("peer-in-{next}"))
            .spawn(move || {
                serve(&shared, socket);
                drop(place);
            });
        if let Err(e) = spawned {
            log::error!("federation: cannot start a link thread: {e}");
        }
    }
}

/// Serves one accepted connection until it ends.
fn serve(shared: &Shared, socket: TcpStream) {
    let Ok(from) = socket.peer_addr() else {
        return; // already gone
    };
    let Some(pending) = shared.pending.take(&from.ip()) else {
        log::warn!(
            "federation: connection from {from} refused: {MAX_PENDING_PER_ADDRESS} from its \
             address are still proving who they are"
        );
        return;
    };
    let socket_id = shared.sockets.add(&socket);
    let ended = (|| {
        let deadline = Instant::now() + HANDSHAKE_DEADLINE;
        socket.set_write_timeout(Some(HANDSHAKE_DEADLINE))?;
        // Each answer is one small write the connector waits for: Nagle's algorithm with
        // the peer's delayed ACK would hold it for 40 ms.
        socket.set_nodelay(true)?;
        let conn =
            ServerConnection::new(shared.tls.clone()).map_err(|e| LinkDown::Io(e.to_string()))?;
        let mut stream = PeerStream::handshake(
            conn,
            socket,
            PEER_FRAME_FACTOR * shared.max_frame,
            Some(deadline),
        )?;
        let authenticated =
            authenticate(shared, &mut stream, deadline).and_then(|peer| {
                match shared.links.take(&peer) {
                    Some(slot) => Ok((peer, slot)),
                    None => Err((
                        LinkError::NotAuthorized,
                        format!("{peer} already holds {MAX_LINKS_PER_PEER} links"),
                    )),
                }
            });
        drop(pending);
        let (peer, _link) = match authenticated {
            Ok(authenticated) => authenticated,
            Err((code, text)) => return Err(refuse(&mut stream, code, text)),
        };
        let welcome = PeerReply::Welcome {
            name: shared.home.clone(),
            room: shared.share_room,
            list: shared.share_presence,
        };
        stream.write_line(&welcome.to_string())?;
        log::info!("federation: {peer} connected from {from}");
        if let Some(federation) = shared.federation.upgrade() {
            federation.heard_from(&peer);
        }
        stream.set_read_timeout(IDLE_DEADLINE)?;
        let mut session = Session {
            shared,
            peer,
            room: TokenBucket::new(PEER_ROOM_LINES_PER_SECOND, PEER_ROOM_BURST),
        };
        session.run(&mut stream)
    })();
    shared.sockets.remove(socket_id);
    match ended {
        Ok(()) => {}
        Err(why) => log::warn!("federation: link from {from} ended: {why}"),
    }
}

/// Reads the `PEER` frame and checks the certificate against the name it claims; the
/// caller answers `OK PEER` once the peer also has a place.
fn authenticate(
    shared: &Shared,
    stream: &mut PeerStream<ServerConnection>,
    deadline: Instant,
) -> std::result::Result<ServerName, (LinkError, String)> {
    let line = stream
        .read_line_by(deadline)
        .map_err(|e| (LinkError::BadFrame, format!("no PEER frame: {e}")))?;
    let Ok(PeerRequest::Hello { version, name }) = PeerRequest::parse(&line) else {
        return Err((
            LinkError::BadFrame,
            "the first frame must be PEER <version> <name>".into(),
        ));
    };
    if version != PEER_PROTOCOL_VERSION {
        return Err((
            LinkError::Version,
            format!("this server speaks version {PEER_PROTOCOL_VERSION}"),
        ));
    }
    let Some(peer) = shared.peers.get(&name) else {
        return Err((
            LinkError::NotAuthorized,
            format!("{name} is not a peer of {}", shared.home),
        ));
    };
    peer.trust
        .check(stream.peer_certificates(), &name)
        .map_err(|why| {
            log::warn!("federation: a link claiming {name} refused: {why}");
            (
                LinkError::NotAuthorized,
                format!("the certificate does not prove {name}"),
            )
        })?;
    Ok(name)
}

/// One authenticated link.
struct Session<'a> {
    /// What every link shares.
    shared: &'a Shared,
    /// Who the certificate proved.
    peer: ServerName,
    /// The room lines this link may still show.
    room: TokenBucket,
}

/// Frames answered together at most (one batch of a connector, and a few more).
const MAX_FRAMES_AT_ONCE: usize = 256;

/// A relayed message that passed the checks, waiting to be stored with the rest of its
/// batch.
struct Relayed {
    /// The connector's id for it, echoed in the `RACK`.
    id: u64,
    /// The sender's full address.
    sender: String,
    /// The recipient, a user of this server.
    recipient: UserName,
    /// The sender's reference.
    reference: String,
    /// The payload.
    payload: String,
}

/// What a request's check decided.
enum Verdict {
    /// Carry it out.
    Accept,
    /// Answer this without doing anything.
    Answer(PeerReply),
    /// End the link with this error.
    End(LinkError, String),
}

impl Session<'_> {
    fn run(
        &mut self,
        stream: &mut PeerStream<ServerConnection>,
    ) -> std::result::Result<(), LinkDown> {
        let mut pace = TokenBucket::new(PEER_RATE, PEER_BURST);
        loop {
            if self.shared.stopping.load(Ordering::SeqCst) {
                stream.close();
                return Ok(());
            }
            // One frame, and every frame that came with it (a connector sends its batch in
            // one write): they are answered together, so a batch's messages are stored in
            // one transaction and its answers go back in one write.
            let mut next = stream.read_line().map(Some);
            let mut requests = Vec::new();
            let mut ended = None;
            let mut failed = None;
            loop {
                let line = match next {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                pace.refill(Instant::now());
                while !pace.take() {
                    thread::sleep(Duration::from_millis(5));
                    pace.refill(Instant::now());
                }
                let request = match PeerRequest::parse(&line) {
                    Ok(request) => request,
                    Err(e) => {
                        ended = Some((LinkError::BadFrame, e.to_string()));
                        break;
                    }
                };
                match self.check(&request) {
                    Verdict::Accept => requests.push(Ok(request)),
                    Verdict::Answer(reply) => requests.push(Err(reply)),
                    Verdict::End(code, text) => {
                        ended = Some((code, text));
                        break;
                    }
                }
                next = match requests.len() < MAX_FRAMES_AT_ONCE {
                    true => stream.buffered_line(),
                    false => Ok(None),
                };
            }
            let replies = self.answer_all(requests)?;
            if !replies.is_empty() {
                let mut frames = String::new();
                for reply in replies {
                    frames.push_str(&reply.to_string());
                    frames.push('\n');
                }
                stream.write_frames(frames.as_bytes())?;
            }
            if let Some((code, text)) = ended {
                return self.end(stream, code, text);
            }
            match failed {
                None => {}
                Some(LinkDown::Frame(e)) => {
                    let code = match e {
                        FrameError::TooLong { .. } => LinkError::TooLong,
                        _ => LinkError::BadFrame,
                    };
                    return self.end(stream, code, e.to_string());
                }
                Some(LinkDown::TimedOut) => {
                    return self.end(stream, LinkError::Timeout, "idle too long".into());
                }
                Some(e) => return Err(e),
            }
        }
    }

    /// Carries out requests that passed the boundary checks (`Ok`), or passes on their
    /// ready answers (`Err`), in order. Consecutive `RELAY`s are stored in one
    /// transaction; the answers keep the requests' order.
    fn answer_all(
        &mut self,
        requests: Vec<std::result::Result<PeerRequest, PeerReply>>,
    ) -> std::result::Result<Vec<PeerReply>, LinkDown> {
        let mut replies = Vec::with_capacity(requests.len());
        let mut relays = Vec::new();
        for request in requests {
            match request {
                Ok(PeerRequest::Relay {
                    id,
                    sender,
                    recipient,
                    reference,
                    payload,
                }) if payload.len() <= self.shared.max_frame => relays.push(Relayed {
                    id,
                    sender: sender.to_string(),
                    recipient: recipient.user,
                    reference,
                    payload,
                }),
                other => {
                    replies.extend(self.store_relays(std::mem::take(&mut relays))?);
                    match other {
                        Ok(request) => replies.extend(self.handle(request)?),
                        Err(reply) => replies.push(reply),
                    }
                }
            }
        }
        replies.extend(self.store_relays(relays)?);
        Ok(replies)
    }

    /// Stores relayed messages in one transaction and hands the router a `MAIL` for each
    /// one stored; their `RACK`s, in order. `Err` (nothing answered: the peer sends them
    /// again) when the store fails.
    fn store_relays(&self, relays: Vec<Relayed>) -> std::result::Result<Vec<PeerReply>, LinkDown> {
        if relays.is_empty() {
            return Ok(Vec::new());
        }
        let batch: Vec<NewMail<'_>> = relays
            .iter()
            .map(|r| NewMail {
                sender: &r.sender,
                recipient: r.recipient.as_str(),
                reference: &r.reference,
                payload: &r.payload,
            })
            .collect();
        let now = unix_now();
        let stored = self
            .shared
            .store
            .enqueue_all(&batch, now, self.shared.quota)?;
        drop(batch);
        let mut notices = Vec::new();
        let mut replies = Vec::with_capacity(relays.len());
        for (relay, stored) in relays.into_iter().zip(stored) {
            let outcome = match stored {
                Enqueued::Queued(mail_id) => {
                    let mail = StoredMail {
                        id: mail_id,
                        sender: relay.sender,
                        time: now,
                        payload: relay.payload,
                    };
                    notices.push(Notice::mail(relay.recipient, &mail));
                    RelayOutcome::Stored
                }
                Enqueued::AlreadyQueued(_) | Enqueued::Resolved(_) => RelayOutcome::Stored,
                Enqueued::NoSuchUser => RelayOutcome::Refused(Refusal::NoSuchUser),
                Enqueued::Quota => RelayOutcome::Refused(Refusal::Quota),
            };
            replies.push(PeerReply::Rack {
                id: relay.id,
                outcome,
            });
        }
        if !notices.is_empty() {
            let _ = self.shared.router.send(Event::Notices(notices));
        }
        Ok(replies)
    }

    /// Sends `ERR` and ends the link.
    fn end(
        &self,
        stream: &mut PeerStream<ServerConnection>,
        code: LinkError,
        text: String,
    ) -> std::result::Result<(), LinkDown> {
        log::warn!(
            "federation: ending the link from {}: {} {text}",
            self.peer,
            code.as_str()
        );
        Err(refuse(stream, code, text))
    }

    /// The boundary rules (see the module documentation).
    fn check(&self, request: &PeerRequest) -> Verdict {
        if let Some(speaker) = request.speaks_for() {
            if speaker.server.as_ref() != Some(&self.peer) {
                return Verdict::End(
                    LinkError::InvalidFrom,
                    format!("{speaker} is not a user of {}", self.peer),
                );
            }
        }
        if let Some(target) = request.speaks_to() {
            if target.server.as_ref() != Some(&self.shared.home) {
                let text = format!("{target} is not a user of {}", self.shared.home);
                return Verdict::Answer(match request {
                    PeerRequest::Relay { id, .. } | PeerRequest::Receipt { id, .. } => {
                        PeerReply::Rack {
                            id: *id,
                            outcome: RelayOutcome::Refused(Refusal::NoSuchServer),
                        }
                    }
                    PeerRequest::GetKey { qid, .. } | PeerRequest::Bundle { qid, .. } => {
                        fail(*qid, ErrorCode::NoSuchUser, text)
                    }
                    _ => return Verdict::End(LinkError::BadFrame, text),
                });
            }
        }
        match request {
            PeerRequest::Hello { .. } => {
                Verdict::End(LinkError::BadFrame, "PEER was already said".into())
            }
            _ => Verdict::Accept,
        }
    }

    /// Carries out an accepted request; `Err` (the link ends, nothing answered, the peer
    /// sends it again later) when the store fails.
    fn handle(&mut self, request: PeerRequest) -> std::result::Result<Option<PeerReply>, LinkDown> {
        let store = &*self.shared.store;
        let reply = match request {
            // `answer_all` stores every `RELAY` whose payload fits; one that reaches here
            // is larger than this server's users may receive: refused for good, so that it
            // never blocks the peer's queue.
            PeerRequest::Relay { id, .. } => PeerReply::Rack {
                id,
                outcome: RelayOutcome::Refused(Refusal::Quota),
            },
            PeerRequest::Receipt {
                id,
                sender,
                reference,
                recipient,
                state,
            } => {
                let outcome = match state {
                    ReceiptState::Delivered => Outcome::Delivered,
                    ReceiptState::Expired => Outcome::Expired,
                    ReceiptState::Unreadable => Outcome::Unreadable,
                };
                let stored = store.add_receipt(
                    &sender.user,
                    &reference,
                    &recipient.to_string(),
                    outcome,
                    unix_now(),
                )?;
                if let Some(notice) = stored.as_ref().and_then(Notice::receipt) {
                    let _ = self.shared.router.send(Event::Notices(vec![notice]));
                }
                PeerReply::Rack {
                    id,
                    outcome: RelayOutcome::Stored,
                }
            }
            PeerRequest::Room { sender, text } => {
                self.room.refill(Instant::now());
                if !self.room.take() {
                    log::debug!(
                        "federation: a room line from {sender} dropped: over {}'s budget",
                        self.peer
                    );
                } else if self.shared.share_room {
                    let line = remote_room_line(&sender, &text);
                    let _ = self.shared.router.send(Event::PeerRoom { sender, line });
                }
                return Ok(None);
            }
            PeerRequest::GetKey { qid, user } => match store.identity_key(&user.user)? {
                KeyLookup::Key(key) => PeerReply::Key { qid, key },
                KeyLookup::NoKey => fail(
                    qid,
                    ErrorCode::NoKey,
                    format!("{user} has not published an identity key yet"),
                ),
                KeyLookup::NoSuchUser => {
                    fail(qid, ErrorCode::NoSuchUser, format!("{user} has no account"))
                }
            },
            PeerRequest::Bundle { qid, user, .. } => self.bundle(qid, &user.user, &user)?,
            PeerRequest::List { qid } => self.list(qid),
            PeerRequest::Ping { token } => PeerReply::Pong { token },
            PeerRequest::Hello { .. } => return Ok(None),
        };
        Ok(Some(reply))
    }

    fn bundle(
        &mut self,
        qid: u64,
        owner: &UserName,
        shown: &Address,
    ) -> std::result::Result<PeerReply, LinkDown> {
        if !self.shared.bundle_budgets.take(&self.peer) {
            return Ok(fail(
                qid,
                ErrorCode::RateLimited,
                format!(
                    "{} more than {PEER_BUNDLES_PER_MINUTE} prekey fetches a minute",
                    self.peer
                ),
            ));
        }
        let found = self.shared.store.take_bundle(owner)?;
        Ok(match found {
            BundleLookup::Found {
                record,
                one_time,
                left,
            } => {
                if let Some(notice) = Notice::refill(owner, left) {
                    let _ = self.shared.router.send(Event::Notices(vec![notice]));
                }
                PeerReply::Bundle {
                    qid,
                    record,
                    one_time: one_time.map(|(id, key)| OneTimePrekey { id, key }),
                }
            }
            BundleLookup::NoRecord => fail(
                qid,
                ErrorCode::NoPrekeys,
                format!("{shown} has not set up offline messages"),
            ),
            BundleLookup::NoSuchUser => fail(
                qid,
                ErrorCode::NoSuchUser,
                format!("{shown} has no account"),
            ),
        })
    }

    fn list(&self, qid: u64) -> PeerReply {
        if !self.shared.share_presence {
            return fail(
                qid,
                ErrorCode::Unreachable,
                format!("{} does not share who is online", self.shared.home),
            );
        }
        let (answer, reply) = bounded(1);
        if self.shared.router.send(Event::PeerList(answer)).is_err() {
            return fail(qid, ErrorCode::Storage, "the server is stopping".into());
        }
        match reply.recv_timeout(LIST_DEADLINE) {
            Ok((total, mut names)) => {
                names.truncate(LIST_MAX_NAMES);
                PeerReply::List {
                    qid,
                    total: total as u64,
                    names,
                }
            }
            Err(_) => fail(qid, ErrorCode::Storage, "the server is busy".into()),
        }
    }
}

/// Sends `ERR <code> <text>` and closes the link; what ended it, for the log.
fn refuse(stream: &mut PeerStream<ServerConnection>, code: LinkError, text: String) -> LinkDown {
    let _ = stream.write_line(
        &PeerReply::Error {
            code,
            text: text.clone(),
        }
        .to_string(),
    );
    stream.close();
    LinkDown::Protocol(format!("{} {text}", code.as_str()))
}

/// `FAIL <qid> <code> <text>`.
fn fail(qid: u64, code: ErrorCode, text: String) -> PeerReply {
    PeerReply::Fail { qid, code, text }
}
