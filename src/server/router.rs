//! The router: one thread that owns who is online and moves frames between them.
//!
//! Per-client reader threads send it [`Event`]s through a bounded crossbeam channel
//! ([`RouterHandle`]); it answers by
//! pushing frames into clients' [`Outbox`]es. It never reads a socket and never blocks on
//! a client: a push into a full outbox evicts that client (its queue is over its byte
//! bound because it stopped reading) and everyone else carries on. Room lines go into the
//! outboxes' small room parts, which skip what does not fit instead: nobody is evicted
//! for room traffic. Because every frame for
//! a logged-in client goes through here, replies reach a client in the order it sent its
//! requests.
//!
//! When few requests wait (at most [`WRITE_NOW_MAX_REQUESTS`] in a wake-up), the router
//! writes a private frame or a reply to an idle client's socket itself, with a
//! non-blocking write ([`Outbox::push_or_write`]), instead of waking that client's writer:
//! one thread hand-off fewer per message. Measured at 5,000 msgs/s: about a sixth less
//! server CPU per message and a lower p99 (`report/performance.md` §4.1). Under load it
//! only queues, so writers batch and encrypt in parallel; room messages (many recipients)
//! are always queued.
//!
//! The router also keeps the room's history ([`RoomHistory`]): every room line it fans
//! out is recorded, and a login that asked for history gets it replayed right after
//! `OK LOGIN`. Both happen on this one thread, so each room line reaches a client that
//! logs in exactly once, as history or live (see `history.rs`); the database write is
//! another thread's.
//!
//! With federation, a local user's room line is also handed to each peer's connector (a
//! bounded queue that drops when full: the router never waits for a peer), and a peer's
//! room line arrives as [`Event::PeerRoom`] for everyone here; `LIST <server>` from a peer
//! is [`Event::PeerList`].
//!
//! Presence (`OFFLINE`) is told to a user's *contacts* — the users it exchanged
//! private messages with since logging in — rather than to everyone: broadcasting every
//! login to every user costs O(n²) with 10,000 users online, and contacts are who needs to
//! know (their end-to-end session with that user must be renewed).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::federation::Federation;
use super::history::RoomHistory;
use super::mailbox::{Notice, NoticeKind};
use super::outbox::{ClientSocket, Line, Outbox, QueueFull, TextFrame};
use crate::protocol::name::{Address, UserName};
use crate::protocol::{self, Command, ErrorCode, ProtocolError, ServerLine};
use crate::rate::TokenBucket;
use crate::tls::stream::TlsStream;

/// Identifies one connection for the lifetime of the server.
pub(super) type ConnId = u64;

/// At most this many names in one `OK LIST` reply, so the reply stays a reasonable frame
/// with thousands online; the reply also carries the total.
pub(super) const LIST_MAX_NAMES: usize = 500;

/// The router's hash: FxHash (rustc's), several times faster than the default SipHash on
/// short names, and the router hashes one to three names per routed message. SipHash's
/// protection against chosen collisions is not needed here: keys are registered user names
/// (registration is rate-limited and names are short), and lookups with arbitrary strings
/// never insert.
type FastHash = rustc_hash::FxBuildHasher;

/// What a client thread tells the router.
pub(super) enum Event<S = TlsStream> {
    /// A connection authenticated as `user`. If `user` was already online, that older
    /// session is told and closed: the newest login wins.
    /// `history`: the client asked (`HISTORY`) for the room's recent lines.
    /// `mailbox`: the client opted in (`MAILBOX`); its mailbox notices are held back until
    /// its [`Event::Backlog`] arrives (see `mailbox.rs`).
    LoggedIn {
        id: ConnId,
        user: UserName,
        outbox: Outbox<S>,
        history: bool,
        mailbox: bool,
    },
    /// What an opted-in login replays (`PREKEYS`, `STATUS`, `MAIL` lines, in order), read
    /// from the database after `LoggedIn` was sent, with the largest message and receipt
    /// ids the read covered.
    Backlog {
        id: ConnId,
        user: UserName,
        lines: Vec<Line>,
        mail_through: u64,
        receipts_through: u64,
    },
    /// Mailbox lines for users other than a requester (expiry receipts).
    Notices(Vec<Notice>),
    /// Requests from one read of a logged-in connection, in order.
    Requests {
        id: ConnId,
        user: UserName,
        requests: Vec<Routed>,
    },
    /// A logged-in connection ended. The router sends `farewell` (if any) after whatever
    /// it still had for the client, then closes the outbox, so nothing queued is lost.
    LoggedOut {
        id: ConnId,
        user: UserName,
        outbox: Outbox<S>,
        farewell: Option<Line>,
    },
    /// A room line a peer server's user said (`ROOM user@server text`): to everyone here,
    /// and into the room's history like a local one.
    PeerRoom {
        /// Who said it (a full address).
        sender: Address,
        /// The `ROOM` frame.
        line: TextFrame,
    },
    /// A peer asks who is online: the total and the names, sorted.
    PeerList(Sender<(usize, Vec<String>)>),
    /// The server is stopping: exit (the server has already said goodbye to everyone).
    Shutdown,
}

impl<S> Event<S> {
    /// How many requests the event carries (connection changes count as one).
    fn requests(&self) -> usize {
        match self {
            Event::Requests { requests, .. } => requests.len(),
            _ => 1,
        }
    }
}

/// A request the router carries out for a logged-in user.
pub(super) enum Routed {
    /// Deliver a private frame to its recipient.
    Direct(Direct),
    /// Deliver a room line (a complete `ROOM <sender> <text>` frame) to everyone else,
    /// and record it in the history.
    Room(TextFrame),
    /// Reply with who is online.
    List,
    /// Send this reply to the requester, in order with the router's own replies.
    Reply(Line),
    /// Deliver a mailbox line to another user, if online and opted in.
    Notice(Notice),
}

/// Capacity of the router's inbox, in events. When the router falls behind, readers block
/// on it, which stops them reading their sockets: TCP pushes back on the senders instead of
/// the server's memory growing. (One channel for the whole server, so its ring, allocated
/// up front, costs once: about 4096 x 64 bytes.)
const INBOX_EVENTS: usize = 4096;

/// Where connection threads send the router their events. Cheap to clone.
pub(super) type RouterHandle = Sender<Event>;

/// A router's inbox: the handle connection threads send on, and the receiving end
/// [`Router::run`] drains.
pub(super) fn inbox<S>() -> (Sender<Event<S>>, Receiver<Event<S>>) {
    crossbeam_channel::bounded(INBOX_EVENTS)
}

/// `ERR MSG offline`: the first word of the text is the user, as the spec promises.
fn offline_reply(user: &str) -> Line {
    let error = ProtocolError::new(
        Command::Msg,
        ErrorCode::Offline,
        format!("{user} {user} is not online"),
    );
    Line::from(&ServerLine::from(error))
}

/// Disconnects `client`, whose queue is full (it stopped reading), with a log line.
fn cut_off<S: ClientSocket>(user: &str, client: &Online<S>) {
    log::warn!(
        "{user}: disconnected, outbound queue full ({} bytes queued): the client stopped reading",
        client.outbox.queued()
    );
    client.outbox.evict();
}

/// The first word of an end-to-end payload that opens a key exchange (`report/protocol.md`
/// §11.3). The server cannot read the exchange, but it sees this word, and a `DH-INIT`
/// costs its recipient a modular exponentiation and a prompt.
const EXCHANGE_START: &str = "DH-INIT";

/// A private frame on its way: the complete `FROM <sender> <payload>` line, with the
/// recipient's name stored after it in the same buffer, so that routing a message costs
/// one allocation.
pub(super) struct Direct {
    /// The line (with its `\n`), then the recipient's canonical name.
    bytes: Vec<u8>,
    /// Where the line ends and the name begins.
    line_len: usize,
    /// The payload opens a key exchange: it counts against the pair's exchange limit.
    starts_exchange: bool,
}

impl Direct {
    /// The frame `FROM <from> <payload>` for `to` (a canonical user name).
    /// `from` is typed: the sender is the user its connection logged in as, never a name
    /// taken from the frame. `to` is a canonical name checked by the caller.
    pub(super) fn new(from: &UserName, to: &str, payload: &str) -> Direct {
        let from = from.as_str();
        let mut bytes =
            Vec::with_capacity("FROM ".len() + from.len() + payload.len() + 2 + to.len());
        protocol::write_from(&mut bytes, from, payload);
        let line_len = bytes.len();
        bytes.extend_from_slice(to.as_bytes());
        Direct {
            bytes,
            line_len,
            starts_exchange: protocol::split_word(payload).0 == EXCHANGE_START,
        }
    }

    /// Who the frame is for.
    pub(super) fn recipient(&self) -> &str {
        // Built from a `&str` in `new`, so this never fails.
        std::str::from_utf8(&self.bytes[self.line_len..]).unwrap_or_default()
    }

    /// The frame to send (the name is cut off; the buffer is reused as it is).
    pub(super) fn into_line(mut self) -> Line {
        self.bytes.truncate(self.line_len);
        Line::Owned(self.bytes)
    }
}

/// The room line `ROOM <from> <text>`. `from` is typed: the sender is the user its
/// connection logged in as, never a name taken from the frame.
pub(super) fn room_line(from: &UserName, text: &str) -> TextFrame {
    TextFrame::new(text, |out| protocol::write_room(out, from.as_str(), text))
}

/// The most requests one wake-up may bring for the router to still write frames itself
/// (see the module comment): a handful means it is keeping up with time to spare. (Not
/// events: under a flood one event carries every line of a socket read, dozens of them.)
pub(super) const WRITE_NOW_MAX_REQUESTS: usize = 4;

/// A logged-in user as the router sees it.
struct Online<S> {
    /// The connection currently logged in as this user.
    id: ConnId,
    /// Where its frames go.
    outbox: Outbox<S>,
    /// Users it exchanged private messages with; told when it leaves.
    contacts: HashSet<UserName, FastHash>,
    /// The last user it sent a private message to, to skip the contact-set update on the
    /// hot path of a conversation.
    last_to: Option<UserName>,
    /// What its room lines may still cost: bytes times recipients.
    room_budget: TokenBucket,
    /// Whether it gets mailbox lines, and which it already has.
    mailbox: Mailbox,
}

/// A logged-in client's mailbox state.
enum Mailbox {
    /// It did not send `MAILBOX`: it is sent no mailbox line.
    Off,
    /// Its login's backlog is being read: notices for it wait here, in order (a few at
    /// most: the read takes one transaction).
    CatchingUp(Vec<Notice>),
    /// Backlog sent. Invariant: every stored `MAIL` with an id up to `mail_through`, and
    /// every receipt up to `receipts_through`, was in it or is no longer stored; so a
    /// notice for one of those is not sent again.
    Live {
        /// The largest message id the backlog covered.
        mail_through: u64,
        /// The largest receipt id the backlog covered.
        receipts_through: u64,
    },
}

impl Mailbox {
    /// Whether a notice of `kind` is new to the client (not covered by its backlog).
    fn is_new(mail_through: u64, receipts_through: u64, kind: NoticeKind) -> bool {
        match kind {
            NoticeKind::Mail(id) => id > mail_through,
            NoticeKind::Receipt(id) => id > receipts_through,
            NoticeKind::Prekeys => true,
        }
    }
}

/// The limits the router enforces per user (see [`super::Limits`] for the reasons).
#[derive(Debug, Clone, Copy)]
pub(super) struct RouterLimits {
    /// Key exchanges (`DH-INIT` payloads) one user may start with another per
    /// `exchange_window`: beyond it they are refused with `ERR MSG rate-limited`, and
    /// nothing reaches the recipient (0 = no limit).
    pub(super) exchange_starts: u32,
    /// The window `exchange_starts` counts in.
    pub(super) exchange_window: Duration,
    /// Room bytes times recipients one user may cause per second (0 = no limit).
    pub(super) room_fanout_rate: u32,
    /// The same, at once above the average.
    pub(super) room_fanout_burst: u32,
}

/// Exchange starts of one sender-recipient pair in the current window.
struct ExchangeWindow {
    /// When the window opened (its first start).
    opened: Instant,
    /// Starts forwarded since then.
    starts: u32,
}

/// Pair records kept before expired ones are pruned (then again at twice what is left),
/// so that a sender cycling through recipients cannot grow the map without bound.
const EXCHANGE_PRUNE_AT: usize = 1024;

/// The router's state. Owned by the router thread alone.
pub(super) struct Router<S = TlsStream> {
    /// Everyone logged in, by canonical user name.
    online: HashMap<UserName, Online<S>, FastHash>,
    /// Set per wake-up: few requests waited, so single-recipient frames are written to idle
    /// sockets at once rather than handed to their writers.
    write_now: bool,
    /// The per-user limits.
    limits: RouterLimits,
    /// Exchange starts per (sender, recipient), kept across logins so that logging in
    /// again does not reset them; expired windows are pruned.
    exchanges: HashMap<(UserName, UserName), ExchangeWindow, FastHash>,
    /// The size of `exchanges` at which expired windows are next pruned.
    exchanges_prune_at: usize,
    /// The room's last lines, replayed at login to clients that ask.
    history: RoomHistory,
    /// Where this server's room lines go to other servers, if it federates.
    federation: Option<Arc<Federation>>,
}

impl<S> Router<S> {
    /// A router with nobody online, enforcing `limits` and keeping `history`.
    pub(super) fn new(limits: RouterLimits, history: RoomHistory) -> Router<S> {
        Router {
            online: HashMap::default(),
            write_now: false,
            limits,
            exchanges: HashMap::default(),
            exchanges_prune_at: EXCHANGE_PRUNE_AT,
            history,
            federation: None,
        }
    }

    /// Shares this server's room lines through `federation`.
    pub(super) fn with_federation(mut self, federation: Option<Arc<Federation>>) -> Router<S> {
        self.federation = federation;
        self
    }

    /// Counts an exchange start from `from` to `to`; `Err(wait)` when the pair is over
    /// its limit for `wait` more.
    fn exchange_started(&mut self, from: &UserName, to: &UserName) -> Result<(), Duration> {
        let (starts, window) = (self.limits.exchange_starts, self.limits.exchange_window);
        if starts == 0 {
            return Ok(());
        }
        let now = Instant::now();
        if self.exchanges.len() >= self.exchanges_prune_at {
            self.exchanges
                .retain(|_, w| now.duration_since(w.opened) < window);
            self.exchanges_prune_at = (2 * self.exchanges.len()).max(EXCHANGE_PRUNE_AT);
        }
        let record = self
            .exchanges
            .entry((from.clone(), to.clone()))
            .or_insert(ExchangeWindow {
                opened: now,
                starts: 0,
            });
        let age = now.duration_since(record.opened);
        if age >= window {
            *record = ExchangeWindow {
                opened: now,
                starts: 0,
            };
        } else if record.starts >= starts {
            return Err(window - age);
        }
        record.starts += 1;
        Ok(())
    }
}

impl<S: ClientSocket> Router<S> {
    /// Runs until `Event::Shutdown` arrives (or every sender is gone). Takes every
    /// waiting event at each wake-up: `recv` blocks for the first, `try_iter` takes the
    /// rest without waiting, so under load a hand-off costs a push, not a wake-up.
    pub(super) fn run(mut self, inbox: Receiver<Event<S>>) {
        let mut events = Vec::new();
        while let Ok(first) = inbox.recv() {
            events.push(first);
            events.extend(inbox.try_iter());
            let requests: usize = events.iter().map(Event::requests).sum();
            self.write_now = requests <= WRITE_NOW_MAX_REQUESTS;
            for event in events.drain(..) {
                if !self.handle(event) {
                    return;
                }
            }
        }
    }

    /// Applies one event. Returns `false` when the router should stop.
    fn handle(&mut self, event: Event<S>) -> bool {
        match event {
            Event::LoggedIn {
                id,
                user,
                outbox,
                history,
                mailbox,
            } => self.logged_in(id, user, outbox, history, mailbox),
            Event::Backlog {
                id,
                user,
                lines,
                mail_through,
                receipts_through,
            } => self.backlog(id, &user, lines, mail_through, receipts_through),
            Event::Notices(notices) => {
                for notice in notices {
                    self.notice(notice);
                }
            }
            Event::Requests { id, user, requests } => {
                // A batch from a session that was replaced (or evicted) is dropped.
                if self.online.get(&user).is_some_and(|o| o.id == id) {
                    for request in requests {
                        self.request(&user, request);
                    }
                }
            }
            Event::LoggedOut {
                id,
                user,
                outbox,
                farewell,
            } => {
                if self.online.get(&user).is_some_and(|o| o.id == id) {
                    self.remove(&user);
                    if let Some(line) = farewell {
                        let _ = outbox.push(line);
                    }
                }
                outbox.close();
            }
            Event::PeerRoom { sender, line } => {
                for client in self.online.values() {
                    client.outbox.push_room(line.line());
                }
                self.history.record(sender, line.text());
            }
            Event::PeerList(answer) => {
                let _ = answer.send(self.online_names());
            }
            Event::Shutdown => return false,
        }
        true
    }

    fn logged_in(
        &mut self,
        id: ConnId,
        user: UserName,
        outbox: Outbox<S>,
        history: bool,
        mailbox: bool,
    ) {
        // Take-over: the old session is told why, then closed after the message.
        if let Some(old) = self.remove(&user) {
            log::info!("{user}: logged in again from another connection; closing the old one");
            let _ = old.outbox.push(Line::from(&ServerLine::Bye {
                reason: "replaced: you logged in from another connection".into(),
            }));
            old.outbox.close();
        }
        let ok = Line::from(&ServerLine::Ok {
            command: Command::Login,
            detail: user.to_string(),
        });
        if outbox.push(ok).is_err() {
            outbox.evict();
            return;
        }
        if history {
            // Into the room part, like the live room lines that will follow it: the same
            // queue, so they cannot overtake it. At most what that part holds, so none of
            // it is skipped.
            for line in self.history.replay(outbox.room_limit()) {
                outbox.push_room(line);
            }
        }
        self.online.insert(
            user,
            Online {
                id,
                outbox,
                contacts: HashSet::default(),
                last_to: None,
                room_budget: TokenBucket::new(
                    self.limits.room_fanout_rate,
                    self.limits.room_fanout_burst,
                ),
                mailbox: match mailbox {
                    true => Mailbox::CatchingUp(Vec::new()),
                    false => Mailbox::Off,
                },
            },
        );
    }

    /// Sends an opted-in login's backlog, then the notices held back while it was read
    /// that it does not cover; from now on notices go out as they come.
    fn backlog(
        &mut self,
        id: ConnId,
        user: &UserName,
        lines: Vec<Line>,
        mail_through: u64,
        receipts_through: u64,
    ) {
        let Some(client) = self.online.get_mut(user).filter(|o| o.id == id) else {
            return;
        };
        let live = Mailbox::Live {
            mail_through,
            receipts_through,
        };
        let Mailbox::CatchingUp(held) = std::mem::replace(&mut client.mailbox, live) else {
            return;
        };
        let new = held
            .into_iter()
            .filter(|n| Mailbox::is_new(mail_through, receipts_through, n.kind))
            .map(|n| n.line);
        // Queued, never written at once: a backlog is many lines.
        let outbox = &client.outbox;
        if lines
            .into_iter()
            .chain(new)
            .any(|line| outbox.push(line).is_err())
        {
            self.evict(user);
        }
    }

    /// Delivers a mailbox line if its user is online and opted in (see [`Mailbox`]).
    fn notice(&mut self, notice: Notice) {
        let Some(client) = self.online.get_mut(&notice.to) else {
            return;
        };
        match &mut client.mailbox {
            Mailbox::Off => {}
            Mailbox::CatchingUp(held) => held.push(notice),
            Mailbox::Live {
                mail_through,
                receipts_through,
            } => {
                if Mailbox::is_new(*mail_through, *receipts_through, notice.kind) {
                    self.send(&notice.to, notice.line);
                }
            }
        }
    }

    fn request(&mut self, user: &UserName, request: Routed) {
        match request {
            Routed::Direct(frame) => self.direct(user, frame),
            Routed::Room(line) => {
                if let Err(refused) = self.charge_room(user, line.size()) {
                    return self.send(user, refused);
                }
                // Into each room part: a recipient too slow for the room skips lines
                // (and is told so), it is never cut off for them.
                for (name, client) in &self.online {
                    if name != user {
                        client.outbox.push_room(line.line());
                    }
                }
                // After the fan-out, before the next event: a login handled next gets
                // this line as history, one handled before got it live.
                self.history.record(user.clone(), line.text());
                if let Some(federation) = &self.federation {
                    federation.share_room(user, line.text());
                }
            }
            Routed::List => {
                let (total, mut names) = self.online_names();
                names.truncate(LIST_MAX_NAMES);
                let reply = ServerLine::Ok {
                    command: Command::List,
                    detail: format!("{total} {}", names.join(" ")),
                };
                self.send(user, Line::from(&reply));
            }
            Routed::Reply(line) => self.send(user, line),
            Routed::Notice(notice) => self.notice(notice),
        }
    }

    /// How many are online, and their names, sorted.
    fn online_names(&self) -> (usize, Vec<String>) {
        let mut names: Vec<String> = self.online.keys().map(ToString::to_string).collect();
        names.sort_unstable();
        (names.len(), names)
    }

    /// Delivers a private frame, or tells the sender the recipient is not online.
    fn direct(&mut self, from: &UserName, frame: Direct) {
        if frame.starts_exchange {
            if let Err(refused) = self.check_exchange(from, frame.recipient()) {
                return self.send(from, refused);
            }
        }
        let Some((name, recipient)) = self.online.get_key_value(frame.recipient()) else {
            let reply = offline_reply(frame.recipient());
            return self.send(from, reply);
        };
        let name = name.clone();
        if self.deliver(&recipient.outbox, frame.into_line()).is_err() {
            self.evict(&name);
            return self.send(from, offline_reply(name.as_str()));
        }
        self.note_contact(from, &name);
    }

    /// Charges `user`'s room budget for a line of `len` bytes to everyone else online, or
    /// the `ERR SAY rate-limited` reply when the budget does not cover it.
    fn charge_room(&mut self, user: &UserName, len: usize) -> Result<(), Line> {
        let recipients = self.online.len().saturating_sub(1);
        let Some(sender) = self.online.get_mut(user) else {
            return Ok(());
        };
        sender.room_budget.refill(Instant::now());
        if sender.room_budget.take_many((len * recipients) as f64) {
            return Ok(());
        }
        let error = ProtocolError::new(
            Command::Say,
            ErrorCode::RateLimited,
            format!(
                "the room is sending too much for you: at most {} KiB a second across its \
                 {recipients} other members; this line was dropped, slow down",
                self.limits.room_fanout_rate / 1024
            ),
        );
        Err(Line::from(&ServerLine::from(error)))
    }

    /// Counts a key exchange `from` starts with `to`, or the `ERR MSG rate-limited` reply
    /// when the pair is over its limit.
    fn check_exchange(&mut self, from: &UserName, to: &str) -> Result<(), Line> {
        let Ok(to) = UserName::parse(to) else {
            return Ok(());
        };
        self.exchange_started(from, &to).map_err(|wait| {
            let error = ProtocolError::new(
                Command::Msg,
                ErrorCode::RateLimited,
                format!(
                    "{to} too many key exchanges started with {to}; try again in {} s",
                    wait.as_secs().max(1)
                ),
            );
            Line::from(&ServerLine::from(error))
        })
    }

    /// Records that `from` and `to` are in a conversation, so each hears when the other
    /// leaves.
    fn note_contact(&mut self, from: &UserName, to: &UserName) {
        let Some(sender) = self.online.get_mut(from) else {
            return;
        };
        if sender.last_to.as_ref() == Some(to) {
            return;
        }
        sender.last_to = Some(to.clone());
        if sender.contacts.insert(to.clone()) {
            if let Some(recipient) = self.online.get_mut(to) {
                recipient.contacts.insert(from.clone());
            }
        }
    }

    /// Sends a reply to `user`, evicting it if its queue is full.
    fn send(&mut self, user: &UserName, line: Line) {
        if let Some(client) = self.online.get(user) {
            if self.deliver(&client.outbox, line).is_err() {
                self.evict(user);
            }
        }
    }

    /// Hands a single-recipient frame to `outbox`: written at once when the router has
    /// time to spare, queued otherwise.
    fn deliver(&self, outbox: &Outbox<S>, line: Line) -> Result<(), QueueFull> {
        if self.write_now {
            outbox.push_or_write(line).map(|_| ())
        } else {
            outbox.push(line)
        }
    }

    /// Disconnects a client whose queue is full: it stopped reading.
    fn evict(&mut self, user: &UserName) {
        if let Some(client) = self.remove(user) {
            cut_off(user.as_str(), &client);
        }
    }

    /// Takes `user` off the online map and tells its contacts. Contacts whose queues are
    /// full are evicted in turn, from a work list rather than by recursion, so a chain of
    /// them cannot run the router's stack out.
    fn remove(&mut self, user: &UserName) -> Option<Online<S>> {
        let mut full = Vec::new();
        let client = self.take_offline(user, &mut full)?;
        while let Some(name) = full.pop() {
            if let Some(evicted) = self.take_offline(&name, &mut full) {
                cut_off(name.as_str(), &evicted);
            }
        }
        Some(client)
    }

    /// Takes `user` off the online map and sends `OFFLINE` to its contacts; adds those
    /// whose queues are full to `full`.
    fn take_offline(&mut self, user: &UserName, full: &mut Vec<UserName>) -> Option<Online<S>> {
        let client = self.online.remove(user)?;
        let notice = ServerLine::Offline {
            user: user.to_string(),
        };
        let notice: Arc<[u8]> = Arc::from(notice.encode());
        for contact in &client.contacts {
            if let Some(other) = self.online.get_mut(contact) {
                other.contacts.remove(user);
                if other.last_to.as_ref() == Some(user) {
                    other.last_to = None;
                }
                if other.outbox.push(Line::Shared(notice.clone())).is_err() {
                    full.push(contact.clone());
                }
            }
        }
        Some(client)
    }
}

#[cfg(test)]
mod tests {
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::server::memory_socket::MemorySocket;
    use crate::server::outbox::{outbox, write_loop, OutboxReceiver};

    /// One logged-in client as the router sees it, with the far end of its queue.
    struct Client {
        id: ConnId,
        user: UserName,
        outbox: Outbox<MemorySocket>,
        receiver: OutboxReceiver<MemorySocket>,
        socket: Arc<MemorySocket>,
    }

    impl Client {
        fn new(id: ConnId, user: &str, queue_bytes: usize) -> Client {
            let socket = Arc::new(MemorySocket::default());
            let (outbox, receiver) = outbox(queue_bytes, queue_bytes, socket.clone());
            Client {
                id,
                user: UserName::parse(user).unwrap(),
                outbox,
                receiver,
                socket,
            }
        }

        fn log_in(&self, router: &mut Router<MemorySocket>) {
            self.log_in_asking(router, false);
        }

        /// Logs in, asking for the room's history or not.
        fn log_in_asking(&self, router: &mut Router<MemorySocket>, history: bool) {
            router.handle(Event::LoggedIn {
                id: self.id,
                user: self.user.clone(),
                outbox: self.outbox.clone(),
                history,
                mailbox: false,
            });
        }

        fn log_out(&self, router: &mut Router<MemorySocket>) {
            router.handle(Event::LoggedOut {
                id: self.id,
                user: self.user.clone(),
                outbox: self.outbox.clone(),
                farewell: None,
            });
        }

        fn request(&self, router: &mut Router<MemorySocket>, request: Routed) {
            router.handle(Event::Requests {
                id: self.id,
                user: self.user.clone(),
                requests: vec![request],
            });
        }

        fn say(&self, router: &mut Router<MemorySocket>, text: &str) {
            self.request(router, Routed::Room(room_line(&self.user, text)));
        }

        fn send(&self, router: &mut Router<MemorySocket>, to: &str, payload: &str) {
            self.request(router, Routed::Direct(Direct::new(&self.user, to, payload)));
        }

        /// Frames queued for this client since the last call.
        fn frames(&self) -> Vec<String> {
            self.receiver.take_now().0
        }

        /// Whether its queue is still open.
        fn open(&self) -> bool {
            self.receiver.take_now().1
        }
    }

    const ROOMY: usize = 1 << 20;

    fn no_history() -> RoomHistory {
        RoomHistory::new(0, Vec::new(), None)
    }

    const NO_LIMITS: RouterLimits = RouterLimits {
        exchange_starts: 0,
        exchange_window: Duration::ZERO,
        room_fanout_rate: 0,
        room_fanout_burst: 0,
    };

    /// A `MAIL <id>` notice for `to`.
    fn mail_notice(to: &str, id: u64) -> Notice {
        let mail = crate::server::store::StoredMail {
            id,
            sender: "alice".into(),
            time: 1,
            payload: format!("m{id}"),
        };
        Notice::mail(UserName::parse(to).unwrap(), &mail)
    }

    #[test]
    fn a_mailbox_login_gets_each_stored_line_once_whether_replayed_or_live() {
        let mut router = Router::new(NO_LIMITS, no_history());
        let alice = Client::new(1, "alice", ROOMY);
        alice.log_in(&mut router);
        let bob = Client::new(2, "bob", ROOMY);
        router.handle(Event::LoggedIn {
            id: bob.id,
            user: bob.user.clone(),
            outbox: bob.outbox.clone(),
            history: false,
            mailbox: true,
        });
        // While bob's backlog is read: MAIL 5 (committed before the read, so also in the
        // backlog) and MAIL 7 (committed after) are held back.
        alice.request(&mut router, Routed::Notice(mail_notice("bob", 5)));
        alice.request(&mut router, Routed::Notice(mail_notice("bob", 7)));
        assert_eq!(bob.frames(), ["OK LOGIN bob"]);
        let backlog = mail_notice("bob", 5).line;
        router.handle(Event::Backlog {
            id: bob.id,
            user: bob.user.clone(),
            lines: vec![backlog],
            mail_through: 6,
            receipts_through: 0,
        });
        assert_eq!(bob.frames(), ["MAIL 5 alice 1 m5", "MAIL 7 alice 1 m7"]);
        // A late notice the backlog covered is skipped; a new one goes out.
        alice.request(&mut router, Routed::Notice(mail_notice("bob", 6)));
        alice.request(&mut router, Routed::Notice(mail_notice("bob", 8)));
        assert_eq!(bob.frames(), ["MAIL 8 alice 1 m8"]);
        // A client that did not opt in gets none.
        let carol = Client::new(3, "carol", ROOMY);
        carol.log_in(&mut router);
        alice.request(&mut router, Routed::Notice(mail_notice("carol", 9)));
        assert_eq!(carol.frames(), ["OK LOGIN carol"]);
        assert!(alice.frames().iter().all(|f| f == "OK LOGIN alice"));
    }

    #[test]
    fn a_second_login_replaces_the_first_which_is_told_and_closed() {
        let mut router = Router::new(NO_LIMITS, no_history());
        let first = Client::new(1, "alice", ROOMY);
        first.log_in(&mut router);
        assert_eq!(first.frames(), ["OK LOGIN alice"]);
        let second = Client::new(2, "alice", ROOMY);
        second.log_in(&mut router);
        assert_eq!(
            first.frames(),
            ["BYE replaced: you logged in from another connection"]
        );
        assert!(!first.open(), "the replaced connection's queue is closed");
        assert_eq!(second.frames(), ["OK LOGIN alice"]);
        // Requests still on their way from the replaced connection are dropped.
        first.request(&mut router, Routed::List);
        assert!(second.frames().is_empty() && first.frames().is_empty());
        second.request(&mut router, Routed::List);
        assert_eq!(second.frames(), ["OK LIST 1 alice"]);
        // The old connection's logout does not log the new one out.
        first.log_out(&mut router);
        second.request(&mut router, Routed::List);
        assert_eq!(second.frames(), ["OK LIST 1 alice"]);
    }

    #[test]
    fn offline_goes_to_contacts_only_and_messages_to_absent_users_are_refused() {
        let mut router = Router::new(NO_LIMITS, no_history());
        let [alice, bob, carol] =
            [(1, "alice"), (2, "bob"), (3, "carol")].map(|(id, n)| Client::new(id, n, ROOMY));
        for c in [&alice, &bob, &carol] {
            c.log_in(&mut router);
            c.frames();
        }
        alice.send(&mut router, "bob", "E2E hello");
        assert_eq!(bob.frames(), ["FROM alice E2E hello"]);
        alice.send(&mut router, "dave", "E2E hello");
        assert_eq!(alice.frames(), ["ERR MSG offline dave dave is not online"]);
        alice.log_out(&mut router);
        assert!(!alice.open());
        assert_eq!(bob.frames(), ["OFFLINE alice"]);
        assert!(carol.frames().is_empty(), "carol never talked to alice");
        // Contacts are forgotten with the session: alice back, then gone again, tells no one.
        let alice = Client::new(4, "alice", ROOMY);
        alice.log_in(&mut router);
        alice.log_out(&mut router);
        assert!(bob.frames().is_empty());
    }

    #[test]
    fn a_full_room_part_skips_lines_and_says_so_but_a_full_priority_part_evicts() {
        let mut router = Router::new(NO_LIMITS, no_history());
        let alice = Client::new(1, "alice", ROOMY);
        // Priority part 64 bytes, room part 40: two 17-byte room lines fit, not three.
        let socket = Arc::new(MemorySocket::default());
        let (outbox, receiver) = outbox(64, 40, socket.clone());
        let bob = Client {
            id: 2,
            user: UserName::parse("bob").unwrap(),
            outbox,
            receiver,
            socket,
        };
        alice.log_in(&mut router);
        bob.log_in(&mut router);
        bob.frames();
        for i in 0..5 {
            alice.say(&mut router, &format!("{i:05}"));
        }
        assert_eq!(
            bob.frames(),
            ["ROOM alice 00000", "ROOM alice 00001", "SKIPPED 3"]
        );
        assert!(
            bob.open() && !bob.socket.shut_down(),
            "a room burst cut bob off"
        );
        // Room lines flow again once the writer has taken the queue, with no notice.
        alice.say(&mut router, "again");
        assert_eq!(bob.frames(), ["ROOM alice again"]);
        // Private frames are never skipped: over the priority bound, bob is cut off.
        alice.send(&mut router, "bob", &"x".repeat(40));
        assert!(!bob.socket.shut_down());
        alice.send(&mut router, "bob", &"x".repeat(40));
        assert!(
            bob.socket.shut_down(),
            "a client not taking private frames stays"
        );
    }

    /// The history's frames as the client reads them, with their time replaced by `T`.
    fn without_times(frames: Vec<String>) -> Vec<String> {
        frames
            .into_iter()
            .map(|f| match f.strip_prefix("HISTORY ") {
                Some(rest) => format!("HISTORY T {}", rest.split_once(' ').unwrap().1),
                None => f,
            })
            .collect()
    }

    #[test]
    fn a_login_gets_each_room_line_once_as_history_or_live_and_in_order() {
        let mut router = Router::new(NO_LIMITS, RoomHistory::new(3, Vec::new(), None));
        let [alice, bob, carol, dave] = [(1, "alice"), (2, "bob"), (3, "carol"), (4, "dave")]
            .map(|(id, n)| Client::new(id, n, ROOMY));
        alice.log_in(&mut router);
        for i in 0..4 {
            alice.say(&mut router, &format!("before {i}"));
        }
        // bob's login, then alice's next line, as the router takes them.
        bob.log_in_asking(&mut router, true);
        alice.say(&mut router, "after");
        assert_eq!(
            without_times(bob.frames()),
            [
                "OK LOGIN bob",
                "HISTORY T alice before 1",
                "HISTORY T alice before 2",
                "HISTORY T alice before 3",
                "ROOM alice after",
            ]
        );
        // A client that did not ask gets no history, only live lines.
        carol.log_in(&mut router);
        alice.say(&mut router, "later");
        assert_eq!(carol.frames(), ["OK LOGIN carol", "ROOM alice later"]);
        // The history moves on: the last three lines, whoever heard them live.
        dave.log_in_asking(&mut router, true);
        assert_eq!(
            without_times(dave.frames())[1..],
            [
                "HISTORY T alice before 3",
                "HISTORY T alice after",
                "HISTORY T alice later"
            ]
        );
    }

    #[test]
    fn a_chain_of_full_queues_is_evicted_one_after_another() {
        // 40 bytes: room for the login reply and one message, not for a notice as well.
        let mut router = Router::new(NO_LIMITS, no_history());
        let [alice, bob, carol] =
            [(1, "alice"), (2, "bob"), (3, "carol")].map(|(id, n)| Client::new(id, n, 40));
        for c in [&alice, &bob, &carol] {
            c.log_in(&mut router);
        }
        bob.send(&mut router, "carol", "hello"); // carol: 15 + 15 bytes queued
        alice.send(&mut router, "bob", "hi"); // bob: 13 + 14 bytes queued
                                              // alice leaves: `OFFLINE alice` does not fit in bob's queue, so bob is cut off;
                                              // then `OFFLINE bob` does not fit in carol's, so carol is cut off too.
        alice.log_out(&mut router);
        assert!(bob.socket.shut_down() && carol.socket.shut_down());
        assert!(!alice.socket.shut_down(), "alice left cleanly");
        let dave = Client::new(4, "dave", ROOMY);
        dave.log_in(&mut router);
        dave.request(&mut router, Routed::List);
        assert_eq!(dave.frames(), ["OK LOGIN dave", "OK LIST 1 dave"]);
    }

    #[test]
    fn list_names_at_most_500_users_in_order_with_the_total() {
        let mut router = Router::new(NO_LIMITS, no_history());
        let clients: Vec<Client> = (0..LIST_MAX_NAMES + 100)
            .rev()
            .map(|i| Client::new(i as ConnId, &format!("user{i:04}"), ROOMY))
            .collect();
        for c in &clients {
            c.log_in(&mut router);
        }
        let asker = &clients[0];
        asker.frames();
        asker.request(&mut router, Routed::List);
        let reply = asker.frames().remove(0);
        let mut words = reply.split(' ');
        assert_eq!(words.next(), Some("OK"));
        assert_eq!(words.next(), Some("LIST"));
        assert_eq!(words.next(), Some("600"));
        let names: Vec<String> = words.map(str::to_owned).collect();
        let expected: Vec<String> = (0..LIST_MAX_NAMES).map(|i| format!("user{i:04}")).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn frames_keep_their_order_whether_the_router_writes_them_or_queues_them() {
        let mut router = Router::new(NO_LIMITS, no_history());
        let alice = Client::new(1, "alice", ROOMY);
        let Client {
            id,
            user,
            outbox,
            receiver,
            socket,
        } = Client::new(2, "bob", ROOMY);
        let writer = {
            let socket = socket.clone();
            thread::spawn(move || write_loop(&*socket, receiver))
        };
        alice.log_in(&mut router);
        router.handle(Event::LoggedIn {
            id,
            user: user.clone(),
            outbox: outbox.clone(),
            history: false,
            mailbox: false,
        });
        // As when the router is lightly loaded: it writes to an idle socket itself.
        router.write_now = true;
        let mut expected = vec!["OK LOGIN bob".to_owned()];
        for i in 0..300 {
            if i % 3 == 0 {
                // Let the writer go idle, so that the next frame takes the short cut.
                thread::sleep(Duration::from_millis(1));
            }
            let payload = format!("E2E {i}");
            alice.send(&mut router, "bob", &payload);
            expected.push(format!("FROM alice {payload}"));
        }
        router.handle(Event::LoggedOut {
            id,
            user,
            outbox: outbox.clone(),
            farewell: Some(Line::from(&ServerLine::Bye {
                reason: "goodbye".into(),
            })),
        });
        drop(outbox);
        writer.join().unwrap().unwrap();
        expected.push("BYE goodbye".into());
        let frames = socket.frames();
        let first_difference = frames.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(first_difference, None, "frames out of order: {frames:?}");
        assert_eq!(frames.len(), expected.len(), "frames lost or repeated");
        assert!(socket.closed());
        assert!(
            socket.claimed_writes() > 0,
            "the short cut was never taken; the test proves nothing"
        );
    }
}
