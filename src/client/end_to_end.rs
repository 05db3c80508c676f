//! The client's end-to-end layer: one state machine per peer, from "we have never spoken"
//! through key fetching, trust checks and the signed Diffie–Hellman exchange to an
//! established [`Session`] that seals and opens messages.
//!
//! It does no I/O. Each call returns [`Action`]s for the caller to carry out: payloads to
//! route to a peer (`MSG`), identity keys to fetch (`GETKEY`), and lines to show. That keeps
//! the whole protocol testable without a network, and the terminal code thin. Time enters
//! only through [`EndToEnd::expire_stalled`], which the caller gives the current instant.
//!
//! Rules it keeps:
//! * A message is sent only under an established session with a key the user trusts
//!   (first use, verified, or explicitly accepted after a change); until then it waits in a
//!   small queue, and is sent once the exchange completes.
//! * Each new exchange, and each `/fingerprint USER`, fetches the peer's identity key from
//!   the server again and checks it against the pin. A key that differs from the pin always
//!   takes the loud path: a warning, the session closed, messages held until `/accept`.
//! * The safety number shown is that of the *pinned* key (the server's key only while none
//!   is pinned), and `/verify USER` marks exactly the key whose number was shown. It is
//!   refused when nothing is pinned, while the server offers a different key, and when the
//!   number shown was not the pinned key's.
//! * A key that cannot be saved as a pin stops the exchange: nothing is sent under it.
//! * An established session stays in use until a new exchange with the peer is confirmed,
//!   so a replayed or forged `DH-INIT` cannot take it away.
//! * An exchange step that gets no answer within [`EXCHANGE_TIMEOUT`] is abandoned: the
//!   user is told which messages were not sent, and a later `/msg` or `/dh` starts afresh.
//! * Anything that fails a check is shown as a warning and never as message text.
//! * Key exchanges are the user's choice. A `DH-INIT` from someone with no pinned key
//!   whom the user has not written to is a *message request*: shown once, held, and
//!   answered only after `/accept USER` (or a `/msg USER`); it costs the user no frame and
//!   pins nothing. A pinned contact's `DH-INIT` is answered (a newer one replaces the one
//!   under way), but at most [`INIT_ANSWERS_PER_PEER`] per peer and
//!   [`INIT_ANSWERS_PER_WINDOW`] in all per [`INIT_ANSWER_WINDOW`], with a key fetched less than [`KEY_REUSE`] ago reused instead of
//!   a `GETKEY`: nobody can spend the user's own frame budget.
//! * A first contact whose name looks like a pinned contact's (`b0b` for `bob`; see
//!   [`crate::e2e::look_alike_skeleton`]) is held with a warning until `/accept USER`:
//!   nothing is pinned, answered or sent before.
//! * Every private message shown carries its sender's trust state ([`Trust`]).
//!
//! **Names in the cryptography.** Users are named here as this client's server spells them:
//! bare for its own users, `user@server` for users of another server. Those spellings differ
//! between the two ends of a conversation across servers (alice on `a.test` writes to
//! `bob@b.test` as `alice`; bob on `b.test` reads `alice@a.test` as `bob`), so they are not
//! what the cryptography binds. When the server announced its federation name in its
//! greeting (its *home*, [`EndToEnd::with_home`]), every name that enters a handshake
//! transcript, a prekey signature or associated data (`src/client/mailbox.rs`), a safety
//! number, or the choice of who wins a simultaneous exchange, is first qualified with
//! [`Address::qualified`]: `me` becomes `me@home`, a bare peer `bob` becomes `bob@home`, a
//! full `bob@b.test` stays. Both ends then bind the same full addresses. Without a home (a
//! server that does not federate) names are bound exactly as typed, so sessions and safety
//! numbers on such servers are unchanged. Pins, the screen and the mailbox file keep the
//! server's spelling; only the binding is qualified.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::protocol::name::{Address, ServerName};

use crate::e2e::{
    safety_number, E2eError, EncryptedMessage, Group, IdentityKey, IdentityPublicKey, Init,
    Initiator, Payload, PinStatus, PinStore, Responder, Session, Trust,
};

/// Messages that may wait for one peer's exchange to finish. Enough for someone typing
/// quickly; a peer that never answers cannot make the queue grow without bound.
pub const MAX_QUEUED_PER_PEER: usize = 100;

/// How long one step of an exchange (the server's `GETKEY` answer, the peer's `DH-REPLY`
/// or `DH-CONFIRM`) may take before the exchange is abandoned. Each step is one trip
/// through the server between two online clients, well under a second when all is well;
/// 30 s allows for a slow link, yet tells the user about messages that were not sent
/// while they are still at the keyboard, rather than leaving them queued forever.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The window over which [`INIT_ANSWERS_PER_PEER`] and [`INIT_ANSWERS_PER_WINDOW`] count
/// answered `DH-INIT`s.
pub const INIT_ANSWER_WINDOW: Duration = Duration::from_secs(10);

/// How long after a security warning (a changed key, a look-alike name) an `/accept` of it
/// is ignored: a line processed that soon was typed before the user could read the warning
/// (type-ahead, or a paste), so it is no answer to it. Browsers do the same with the buttons
/// of their security prompts (Firefox's `security.dialog_enable_delay`, 1,000 ms).
pub const CONSENT_DELAY: Duration = Duration::from_secs(1);

/// `DH-INIT`s answered per contact per [`INIT_ANSWER_WINDOW`]. A genuine peer starts one
/// exchange at a time and restarts it rarely (a new `DH-INIT` replaces the one under way,
/// so there is never more than one per peer); three leaves room for a restart and a retry.
pub const INIT_ANSWERS_PER_PEER: usize = 3;

/// `DH-INIT`s answered in all per [`INIT_ANSWER_WINDOW`]: each answer costs the user a frame
/// of the server's 20 frames/s allowance, so all contacts together may take at most about
/// 5% of it and the user's own lines keep the rest.
pub const INIT_ANSWERS_PER_WINDOW: usize = 10;

/// An identity key fetched this recently is used again to answer a `DH-INIT` instead of a
/// new `GETKEY` (a `/msg` or `/fingerprint` of the user's own always fetches afresh).
pub const KEY_REUSE: Duration = Duration::from_secs(60);

/// Something the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Route `payload` to `to`: `MSG <to> <payload>`.
    Send {
        /// The recipient.
        to: String,
        /// The end-to-end frame.
        payload: String,
    },
    /// Fetch `user`'s identity key: `GETKEY <user>`.
    FetchKey(String),
    /// Show a line to the user.
    Show(Notice),
}

/// A line for the user, by kind (the terminal decides how each looks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A private message that passed every check, and how far the sender's key is trusted.
    Received {
        /// The sender.
        from: String,
        /// The decrypted text.
        text: String,
        /// How far the sender's key is trusted.
        trust: Trust,
    },
    /// A private message of ours, now encrypted and on its way, and how far the
    /// recipient's key is trusted.
    Sent {
        /// The recipient.
        to: String,
        /// The text sent.
        text: String,
        /// How far the recipient's key is trusted.
        trust: Trust,
    },
    /// Something worth knowing.
    Info(String),
    /// Something the user must not miss: a failed check, a changed key.
    Warning(String),
    /// One line of a `/dh` step-by-step explanation.
    Explain {
        /// The peer of the exchange explained.
        peer: String,
        /// The line.
        line: String,
    },
    /// `from`, whom the user never talked to, asks to start an end-to-end conversation (a
    /// message request): nothing happens unless the user answers with `/accept from`.
    Request {
        /// Who asks.
        from: String,
    },
}

/// The key exchange under way with one peer, if any.
enum Exchange {
    /// No exchange in progress (a session may still be in use).
    Idle,
    /// Waiting for the peer's identity key from the server; `init` is their DH-INIT when
    /// we are answering one, `None` when we will start the exchange.
    FetchingKey { init: Option<Init> },
    /// A `DH-INIT` from someone the user never talked to: held, unanswered, until the
    /// user accepts (`/accept` or `/msg`).
    Requested {
        /// Their DH-INIT (the latest one), answered if the user accepts.
        init: Init,
    },
    /// A first contact under a name that looks like the pinned contact `like`: nothing is
    /// pinned, answered or sent until `/accept`.
    LooksLike {
        /// The key the server gives for this name.
        key: IdentityPublicKey,
        /// The pinned contact the name imitates.
        like: String,
        /// Their DH-INIT, to answer once accepted.
        init: Option<Init>,
        /// When the user was warned: an `/accept` within [`CONSENT_DELAY`] does not count.
        warned: Instant,
    },
    /// The server gave a key that differs from the pin: nothing happens until `/accept`.
    KeyChanged {
        /// The key the server offers now.
        key: IdentityPublicKey,
        /// The peer's DH-INIT, to answer once the key is accepted.
        init: Option<Init>,
        /// When the user was warned: an `/accept` within [`CONSENT_DELAY`] does not count.
        warned: Instant,
    },
    /// We sent DH-INIT and wait for DH-REPLY.
    Initiating {
        /// Our half of the exchange.
        initiator: Initiator,
        /// The pinned key the reply's signature must verify with.
        peer_key: IdentityPublicKey,
    },
    /// We sent DH-REPLY and wait for DH-CONFIRM.
    Responding {
        /// Our half of the exchange; it yields a session only once DH-CONFIRM proves the
        /// DH-INIT came from the peer and is not a replay.
        responder: Responder,
    },
}

impl Exchange {
    /// Whether this step waits for an answer, and so can time out. A changed key waits
    /// for the user instead, however long they take.
    fn awaits_answer(&self) -> bool {
        matches!(
            self,
            Exchange::FetchingKey { .. }
                | Exchange::Initiating { .. }
                | Exchange::Responding { .. }
        )
    }
}

/// One peer's state.
struct Peer {
    /// The session messages are sealed and opened under. It stays while a new exchange
    /// runs and is replaced only when that exchange is confirmed. Invariant: `None` while
    /// the exchange is `KeyChanged`, so nothing is sent while a changed key is undecided.
    session: Option<Session>,
    /// The session the current one replaced, kept only when we started the new exchange:
    /// the peer may still seal under the old keys until our DH-CONFIRM reaches them.
    /// Opens messages only; dropped at the peer's first message under the new session
    /// (the server keeps each sender's order, so no older one can follow).
    previous_session: Option<Session>,
    /// The exchange under way.
    exchange: Exchange,
    /// When the exchange entered its current step, for [`EXCHANGE_TIMEOUT`].
    step_started: Instant,
    /// Messages typed while no session was ready, oldest first.
    queued: VecDeque<String>,
    /// Show this peer's exchanges step by step (`/dh`).
    explain: bool,
    /// Show the safety number once the key arrives (`/fingerprint USER`).
    show_fingerprint: bool,
    /// The key whose safety number was last shown: `/verify` marks this key and no other,
    /// and only while it is the pinned one.
    number_shown_for: Option<IdentityPublicKey>,
    /// The last key the server gave for this peer and when, reused to answer a `DH-INIT`
    /// within [`KEY_REUSE`].
    fetched: Option<(IdentityPublicKey, Instant)>,
    /// Whether the message request notice was shown (it is shown once).
    request_shown: bool,
    /// When this peer's recent `DH-INIT`s were answered, oldest first.
    answered: VecDeque<Instant>,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            session: None,
            previous_session: None,
            exchange: Exchange::Idle,
            step_started: Instant::now(),
            queued: VecDeque::new(),
            explain: false,
            show_fingerprint: false,
            number_shown_for: None,
            fetched: None,
            request_shown: false,
            answered: VecDeque::new(),
        }
    }

    /// Moves the exchange to its next step and starts that step's clock.
    fn begin(&mut self, exchange: Exchange) {
        self.exchange = exchange;
        self.step_started = Instant::now();
    }

    /// Closes the session and the exchange; returns the messages that waited for it.
    fn close(&mut self) -> Vec<String> {
        self.session = None;
        self.previous_session = None;
        self.exchange = Exchange::Idle;
        self.queued.drain(..).collect()
    }

    /// Abandons the exchange (not the session); returns how many queued messages were
    /// dropped.
    fn abandon_exchange(&mut self) -> usize {
        self.exchange = Exchange::Idle;
        let dropped = self.queued.len();
        self.queued.clear();
        dropped
    }
}

/// The end-to-end layer for one logged-in user.
pub struct EndToEnd {
    /// Our user name, as the server spells it (bare).
    me: String,
    /// The federation name our server announced, if any: names bound into the cryptography
    /// are qualified with it (see the module docs).
    home: Option<ServerName>,
    /// Our long-term identity key (signs our half of each exchange).
    identity: IdentityKey,
    /// Peers' pinned identity keys (trust on first use).
    pins: PinStore,
    /// The group for exchanges we start.
    group: Group,
    /// Explain every exchange, not only those asked for with `/dh`.
    explain_all: bool,
    /// Per-peer state, created on first contact.
    peers: HashMap<String, Peer>,
    /// When recent `DH-INIT`s were answered, oldest first, for [`INIT_ANSWERS_PER_WINDOW`].
    answered: VecDeque<Instant>,
}

impl EndToEnd {
    /// The end-to-end layer for `me`.
    pub fn new(
        me: &str,
        identity: IdentityKey,
        pins: PinStore,
        group: Group,
        explain_all: bool,
    ) -> EndToEnd {
        EndToEnd {
            me: me.to_owned(),
            home: None,
            identity,
            pins,
            group,
            explain_all,
            peers: HashMap::new(),
            answered: VecDeque::new(),
        }
    }

    /// This layer for a user of a server that announced `home` as its federation name:
    /// from now on the names bound into the cryptography are full addresses (see the
    /// module docs). `None`, the default, binds names as the server spells them.
    pub fn with_home(mut self, home: Option<ServerName>) -> EndToEnd {
        self.home = home;
        self
    }

    /// `user` as the cryptography binds it: [`Address::qualified`] with our home.
    fn bound(&self, user: &str) -> String {
        Address::qualified(user, self.home.as_ref())
    }

    /// Our identity public key (published with `SETKEY`).
    pub fn identity_public(&self) -> IdentityPublicKey {
        self.identity.public_key()
    }

    /// Whether a session with `peer` is established.
    pub fn is_established(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| p.session.is_some())
    }

    /// The user typed a private message for `to`.
    pub fn send_text(&mut self, to: &str, text: &str) -> Vec<Action> {
        if to == self.me {
            return vec![warn("you cannot send a private message to yourself")];
        }
        let trust = self.trust(to);
        let peer = self.peer(to);
        if let Some(session) = &mut peer.session {
            let mut actions = Vec::new();
            seal(session, to, text, trust, &mut actions);
            return actions;
        }
        if peer.queued.len() >= MAX_QUEUED_PER_PEER {
            return vec![warn(&format!(
                "{to}: {MAX_QUEUED_PER_PEER} messages already wait for the key exchange; not queued"
            ))];
        }
        peer.queued.push_back(text.to_owned());
        let mut actions = Vec::new();
        match &peer.exchange {
            Exchange::Idle => {
                peer.begin(Exchange::FetchingKey { init: None });
                actions.push(info(&format!(
                    "{to}: setting up end-to-end encryption; your message is sent once it is ready"
                )));
                actions.push(Action::FetchKey(to.to_owned()));
            }
            Exchange::KeyChanged { .. } => actions.push(warn(&format!(
                "{to}: message held: {to}'s identity key changed. Check it with /fingerprint {to}, then /accept {to}"
            ))),
            Exchange::LooksLike { like, .. } => actions.push(warn(&format!(
                "{to}: message held: {to} is not {like}, only a name that looks like it. /accept {to} if you mean {to}"
            ))),
            Exchange::Requested { .. } => {
                // Writing to someone who asked is consent: answer their request.
                actions.extend(self.accept(to));
            }
            _ => {}
        }
        actions
    }

    /// `/dh USER`: explain this peer's exchanges and run a fresh one now. A session we
    /// already have stays in use until the fresh one is confirmed.
    pub fn explain(&mut self, user: &str) -> Vec<Action> {
        if user == self.me {
            return vec![warn("a key exchange needs another user")];
        }
        let peer = self.peer(user);
        peer.explain = true;
        match peer.exchange {
            Exchange::Idle => {
                peer.begin(Exchange::FetchingKey { init: None });
                vec![
                    info(&format!(
                        "{user}: starting a fresh Diffie-Hellman exchange, step by step"
                    )),
                    Action::FetchKey(user.to_owned()),
                ]
            }
            Exchange::KeyChanged { .. } => vec![warn(&format!(
                "{user}'s identity key changed: /fingerprint {user}, then /accept {user} before a new exchange"
            ))],
            _ => vec![info(&format!(
                "{user}: an exchange is already under way; its next steps will be explained"
            ))],
        }
    }

    /// The group this client starts exchanges in (`--group`).
    pub fn group(&self) -> Group {
        self.group
    }

    /// `/dh` alone: explain every exchange from now on, including those another user
    /// starts with `/dh` (they cannot make this screen show anything on their own).
    pub fn explain_every_exchange(&mut self) -> Vec<Action> {
        self.explain_all = true;
        vec![info(
            "every key exchange is explained step by step from now on, also those other users start",
        )]
    }

    /// The server answered `GETKEY user` with `key` (base64).
    pub fn key_arrived(&mut self, user: &str, key: &str) -> Vec<Action> {
        let peer = self.peer(user);
        let for_fingerprint = std::mem::take(&mut peer.show_fingerprint);
        let for_exchange = matches!(peer.exchange, Exchange::FetchingKey { .. });
        if !for_fingerprint && !for_exchange {
            return Vec::new(); // nobody asked (a late or repeated answer)
        }
        let key = match IdentityPublicKey::from_base64(key) {
            Ok(key) => key,
            Err(e) => {
                let dropped = if for_exchange {
                    peer.abandon_exchange()
                } else {
                    0
                };
                return vec![warn(&not_sent(
                    format!("{user}: the server sent an unusable key: {e}"),
                    dropped,
                ))];
            }
        };
        if for_exchange {
            self.peer(user).fetched = Some((key, Instant::now()));
        }
        self.key_known(user, key, for_fingerprint)
    }

    /// `user`'s identity key is `key` (from the server, or fetched recently): check it
    /// against the pin, show the safety number if asked, and go on with the exchange.
    fn key_known(
        &mut self,
        user: &str,
        key: IdentityPublicKey,
        for_fingerprint: bool,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let status = self.pins.check(user, &key);
        if let PinStatus::Changed { old } = status {
            actions.push(self.key_changed(user, old, key));
        }
        if for_fingerprint {
            actions.extend(self.safety_notice(user, &key));
        }
        let init = match &mut self.peer(user).exchange {
            Exchange::FetchingKey { init } => init.take(),
            _ => return actions, // only a fingerprint request, or a changed key
        };
        if status == PinStatus::FirstUse {
            if let Some(like) = self.pins.look_alike(user).map(str::to_owned) {
                actions.push(warn(&format!(
                    "{user} is NOT {like}: this is a first contact under a name that looks \
                     like your contact {like}{}. Nothing was answered or sent, and no key was \
                     pinned. Only if you know {user} is someone else you want to talk to, \
                     /accept {user}",
                    other_server(user, &like)
                )));
                self.peer(user).exchange = Exchange::LooksLike {
                    key,
                    like,
                    init,
                    warned: Instant::now(),
                };
                return actions;
            }
            actions.extend(self.pin_first_contact(user, &key));
            if !matches!(self.peer(user).exchange, Exchange::FetchingKey { .. }) {
                return actions;
            }
        }
        actions.extend(self.proceed(user, key, init));
        actions
    }

    /// Pins `key` as `user`'s on first contact and says so; abandons the exchange (with a
    /// warning) when the pin cannot be saved.
    fn pin_first_contact(&mut self, user: &str, key: &IdentityPublicKey) -> Vec<Action> {
        if let Err(e) = self.pins.pin(user, key) {
            let dropped = self.peer(user).abandon_exchange();
            return vec![warn(&not_sent(
                format!(
                    "{user}: could not save their key as pinned, so no key exchange was made: {e}"
                ),
                dropped,
            ))];
        }
        vec![info(&format!(
            "{user}: first contact; their key {} is now pinned. Compare safety numbers \
             (/fingerprint {user}) in person, then /verify {user}",
            key.fingerprint()
        ))]
    }

    /// The server could not give `user`'s key (no such user, or none published).
    pub fn key_unavailable(&mut self, user: &str, reason: &str) -> Vec<Action> {
        let peer = self.peer(user);
        let for_fingerprint = std::mem::take(&mut peer.show_fingerprint);
        let for_exchange = matches!(peer.exchange, Exchange::FetchingKey { .. });
        if !for_fingerprint && !for_exchange {
            return Vec::new();
        }
        let dropped = if for_exchange {
            peer.abandon_exchange()
        } else {
            0
        };
        vec![warn(&format!(
            "{user}: no identity key available ({reason}); {dropped} message(s) not sent"
        ))]
    }

    /// A payload arrived from `from` (`FROM <from> <payload>`).
    pub fn payload_arrived(&mut self, from: &str, payload: &str) -> Vec<Action> {
        let payload = match Payload::parse(payload) {
            Ok(payload) => payload,
            Err(E2eError::NotE2e) => {
                return vec![warn(&format!(
                    "{from} sent a private message that is not end-to-end encrypted; it was dropped unread"
                ))]
            }
            Err(e) => return vec![warn(&format!("{from}: {e}"))],
        };
        match payload {
            Payload::Init(init) => self.init_arrived(from, init),
            Payload::Reply(reply) => {
                let peer = self.peer(from);
                let (initiator, peer_key) = match std::mem::replace(
                    &mut peer.exchange,
                    Exchange::Idle,
                ) {
                    Exchange::Initiating {
                        initiator,
                        peer_key,
                    } if initiator.session_id() == reply.session_id => (initiator, peer_key),
                    other => {
                        peer.exchange = other;
                        return vec![warn(&format!(
                                "{from}: unexpected key-exchange reply (no exchange of ours is waiting for it); ignored"
                            ))];
                    }
                };
                match initiator.finish(&reply, &self.identity, &peer_key) {
                    Ok((session, confirm)) => {
                        let mut actions = vec![Action::Send {
                            to: from.to_owned(),
                            payload: Payload::Confirm(confirm).to_string(),
                        }];
                        actions.extend(self.established(from, session));
                        actions
                    }
                    Err(e) => self.failed(from, &e),
                }
            }
            Payload::Confirm(confirm) => {
                let peer = self.peer(from);
                let responder = match std::mem::replace(&mut peer.exchange, Exchange::Idle) {
                    Exchange::Responding { responder }
                        if responder.session_id() == confirm.session_id =>
                    {
                        responder
                    }
                    other => {
                        peer.exchange = other;
                        return vec![warn(&format!(
                            "{from}: unexpected key-exchange confirmation; ignored"
                        ))];
                    }
                };
                match responder.confirm(&confirm) {
                    Ok(session) => self.established(from, session),
                    Err(e) => self.failed(from, &e),
                }
            }
            Payload::Message(message) => self.message_arrived(from, &message),
            Payload::Prekey(_) | Payload::Ratchet(_) => vec![warn(&format!(
                "{from}: an offline-delivery message arrived as a live private message (the server \
                 delivers those only as MAIL); dropped unread"
            ))],
        }
    }

    /// The server says `user` is not online (`ERR MSG offline`) or left (`OFFLINE`).
    pub fn peer_gone(&mut self, user: &str) -> Vec<Action> {
        let Some(peer) = self.peers.get_mut(user) else {
            return Vec::new();
        };
        let had_state = peer.session.is_some()
            || !matches!(peer.exchange, Exchange::Idle)
            || !peer.queued.is_empty();
        let dropped = peer.close().len();
        if !had_state {
            return Vec::new();
        }
        let mut text = format!("{user} is offline; the end-to-end session with them is closed");
        if dropped > 0 {
            text.push_str(&format!("; {dropped} message(s) not sent"));
        }
        vec![info(&text)]
    }

    /// `user` is offline and the caller will write to them by offline delivery instead:
    /// closes the session and the exchange as [`EndToEnd::peer_gone`] does, and hands over
    /// the messages that waited for it, in the order typed.
    pub fn take_for_offline(&mut self, user: &str) -> Vec<String> {
        self.peers
            .get_mut(user)
            .map(Peer::close)
            .unwrap_or_default()
    }

    /// Whether `user` is someone this user has never talked to: no pinned key, no session,
    /// nothing typed for them, no exchange under way. What a stranger starts — a key
    /// exchange or mail that waited on the server — is a message request.
    pub fn is_stranger(&self, user: &str) -> bool {
        self.pins.pinned_key(user).is_none()
            && self.peers.get(user).is_none_or(|peer| {
                peer.session.is_none()
                    && peer.queued.is_empty()
                    && matches!(peer.exchange, Exchange::Idle)
            })
    }

    /// Whether something from `user` waits for `/accept` here (a message request, a
    /// look-alike first contact, a changed key).
    pub fn awaits_accept(&self, user: &str) -> bool {
        self.peers.get(user).is_some_and(|peer| {
            matches!(
                peer.exchange,
                Exchange::Requested { .. }
                    | Exchange::LooksLike { .. }
                    | Exchange::KeyChanged { .. }
            )
        })
    }

    /// `user`'s pinned identity key, if any.
    pub fn pinned_key(&self, user: &str) -> Option<IdentityPublicKey> {
        self.pins.pinned_key(user)
    }

    /// The server gave `key` for `user`, for an offline message to or from them: the pin
    /// rules of an exchange apply (first use pins, a look-alike name or a changed key is
    /// refused with a warning). `Ok` with what to show when the key is the pinned one now.
    /// On a changed key, the texts in `waiting` are held here, as for a live exchange,
    /// until `/accept` (which starts an exchange, and offline delivery again if the peer is
    /// still offline).
    pub fn offline_key(
        &mut self,
        user: &str,
        key: &IdentityPublicKey,
        waiting: &mut Vec<String>,
    ) -> Result<Vec<Action>, Vec<Action>> {
        match self.pins.check(user, key) {
            PinStatus::Matches { .. } => Ok(Vec::new()),
            PinStatus::Changed { old } => {
                let warning = self.key_changed(user, old, *key);
                self.peer(user).queued.extend(waiting.drain(..));
                Err(vec![warning])
            }
            PinStatus::FirstUse => {
                if let Some(like) = self.pins.look_alike(user).map(str::to_owned) {
                    return Err(vec![warn(&format!(
                        "{user} is NOT {like}: this is a first contact under a name that looks \
                         like your contact {like}{}. Nothing was sent or read, and no key was \
                         pinned. Only if you know {user} is someone else, /accept {user} \
                         while they are online",
                        other_server(user, &like)
                    ))]);
                }
                let actions = self.pin_first_contact(user, key);
                if self.pins.pinned_key(user) == Some(*key) {
                    Ok(actions)
                } else {
                    Err(actions)
                }
            }
        }
    }

    /// Messages waiting for a key exchange, all peers together.
    pub fn waiting(&self) -> usize {
        self.peers.values().map(|peer| peer.queued.len()).sum()
    }

    /// How far `user`'s key is trusted, in words for the prompt.
    pub fn trust_words(&self, user: &str) -> &'static str {
        if self
            .peers
            .get(user)
            .is_some_and(|peer| matches!(peer.exchange, Exchange::KeyChanged { .. }))
        {
            return "KEY CHANGED";
        }
        match self.pins.trust(user) {
            None => "not pinned yet",
            Some(Trust::Verified) => "verified",
            Some(Trust::FirstUse) => "pinned on first use, not verified",
            Some(Trust::Accepted) => "key changed, accepted, not verified",
        }
    }

    /// The connection to the server was lost: each peer closed its session with us when
    /// we went offline, so ours close too, and exchanges under way are abandoned (a changed
    /// key still waits for `/accept`). Returns the messages that waited for an exchange,
    /// as `(peer, text)` in the order typed per peer, for the caller to send again once
    /// reconnected.
    pub fn connection_lost(&mut self) -> Vec<(String, String)> {
        let mut names: Vec<String> = self.peers.keys().cloned().collect();
        names.sort();
        let mut waiting = Vec::new();
        for user in names {
            let peer = self.peer(&user);
            peer.session = None;
            peer.previous_session = None;
            if let Exchange::KeyChanged { init, .. } = &mut peer.exchange {
                *init = None; // a DH-INIT from the old connection
            } else {
                peer.exchange = Exchange::Idle;
            }
            waiting.extend(peer.queued.drain(..).map(|text| (user.clone(), text)));
        }
        waiting
    }

    /// `/accept USER`: the user's consent to what is waiting for it — a message request
    /// (answer it), a first contact under a look-alike name (pin and talk), or a changed key
    /// (trust the new one).
    pub fn accept(&mut self, user: &str) -> Vec<Action> {
        let peer = self.peer(user);
        if let Exchange::LooksLike { warned, .. } | Exchange::KeyChanged { warned, .. } =
            peer.exchange
        {
            if warned.elapsed() < CONSENT_DELAY {
                return vec![warn(&format!(
                    "/accept {user} ignored: it came less than a second after the warning \
                     above, so it was typed before you could read it. Read the warning; if you \
                     still mean it, /accept {user} again"
                ))];
            }
        }
        match std::mem::replace(&mut peer.exchange, Exchange::Idle) {
            Exchange::Requested { init } => {
                peer.begin(Exchange::FetchingKey { init: Some(init) });
                vec![
                    info(&format!(
                        "{user}: request accepted; setting up end-to-end encryption"
                    )),
                    Action::FetchKey(user.to_owned()),
                ]
            }
            Exchange::LooksLike { key, init, .. } => {
                peer.begin(Exchange::FetchingKey { init: None });
                let mut actions = self.pin_first_contact(user, &key);
                if matches!(self.peer(user).exchange, Exchange::FetchingKey { .. }) {
                    actions.extend(self.proceed(user, key, init));
                }
                actions
            }
            Exchange::KeyChanged { key, init, .. } => {
                if let Err(e) = self.pins.accept_new_key(user, &key) {
                    let dropped = self.peer(user).abandon_exchange();
                    return vec![warn(&not_sent(
                        format!(
                            "{user}: could not save the new key, so it was not accepted and no key exchange was made: {e}"
                        ),
                        dropped,
                    ))];
                }
                let mut actions = vec![info(&format!(
                    "{user}: new key {} accepted (unverified until you compare safety numbers with \
                     /fingerprint {user} and /verify {user})",
                    key.fingerprint()
                ))];
                actions.extend(self.proceed(user, key, init));
                actions
            }
            other => {
                peer.exchange = other;
                vec![info(&format!(
                    "{user}: nothing from {user} is waiting for /accept"
                ))]
            }
        }
    }

    /// `/verify USER`: the users compared the safety number last shown and it matched.
    pub fn verify(&mut self, user: &str) -> Vec<Action> {
        let Some(pinned) = self.pins.pinned_key(user) else {
            return vec![warn(&format!(
                "{user}: no key is pinned for {user}, so there is nothing to verify. Talk to \
                 them first, then compare safety numbers with /fingerprint {user}"
            ))];
        };
        let peer = self.peer(user);
        if matches!(peer.exchange, Exchange::KeyChanged { .. }) {
            return vec![warn(&format!(
                "{user}: not verified: the server offers a key different from the pinned one. \
                 Compare safety numbers with /fingerprint {user}, and decide with /accept {user} first"
            ))];
        }
        if peer.number_shown_for != Some(pinned) {
            return vec![warn(&format!(
                "{user}: not verified: the safety number of {user}'s pinned key has not been \
                 shown yet. Show it with /fingerprint {user}, compare it with them, then /verify {user}"
            ))];
        }
        match self.pins.mark_verified(user, &pinned) {
            Ok(()) => vec![info(&format!(
                "{user}: key marked as verified ({}); you will be warned if it ever changes",
                pinned.fingerprint()
            ))],
            Err(e) => vec![warn(&format!("{user}: not verified: {e}"))],
        }
    }

    /// `/fingerprint`: ours; `/fingerprint USER`: the safety number with USER (the key is
    /// fetched first, so that a key the server changed is noticed).
    pub fn fingerprint(&mut self, user: Option<&str>) -> Vec<Action> {
        match user {
            None => vec![info(&format!(
                "your identity key fingerprint: {}",
                self.identity.public_key().fingerprint()
            ))],
            Some(user) if user == self.me => self.fingerprint(None),
            Some(user) => {
                self.peer(user).show_fingerprint = true;
                vec![Action::FetchKey(user.to_owned())]
            }
        }
    }

    /// Abandons every exchange whose current step has waited [`EXCHANGE_TIMEOUT`] or more
    /// at `now`, telling the user which messages were not sent. Sessions stay as they are.
    pub fn expire_stalled(&mut self, now: Instant) -> Vec<Action> {
        let mut stalled: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, peer)| {
                peer.exchange.awaits_answer()
                    && now.saturating_duration_since(peer.step_started) >= EXCHANGE_TIMEOUT
            })
            .map(|(user, _)| user.clone())
            .collect();
        stalled.sort();
        let mut actions = Vec::new();
        for user in stalled {
            let peer = self.peer(&user);
            let dropped = peer.abandon_exchange();
            let mut text = format!(
                "{user}: the key exchange got no answer within {} s and was abandoned",
                EXCHANGE_TIMEOUT.as_secs()
            );
            if peer.session.is_some() {
                text.push_str("; the session you already had stays in use");
            } else {
                text.push_str(&format!(". /msg {user} or /dh {user} starts a new one"));
            }
            actions.push(warn(&not_sent(text, dropped)));
        }
        actions
    }

    /// When the next exchange step times out, if any is waiting for an answer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter(|peer| peer.exchange.awaits_answer())
            .map(|peer| peer.step_started + EXCHANGE_TIMEOUT)
            .min()
    }

    /// The safety number with `user` for their pinned key, or for `offered` (the key the
    /// server just gave) while none is pinned; plus, while a changed key waits for
    /// `/accept`, what the number would be with that key.
    fn safety_notice(&mut self, user: &str, offered: &IdentityPublicKey) -> Vec<Action> {
        let mine = self.identity.public_key();
        let (key, status) = match self.pins.pinned_key(user) {
            Some(pinned) => {
                let status =
                    if self.pins.check(user, &pinned) == (PinStatus::Matches { verified: true }) {
                        "pinned, verified".to_owned()
                    } else {
                        format!("pinned, NOT verified: compare, then /verify {user}")
                    };
                (pinned, status)
            }
            None => (*offered, "not pinned yet".to_owned()),
        };
        let (me_bound, user_bound) = (self.bound(&self.me), self.bound(user));
        let number = safety_number(&me_bound, &mine, &user_bound, &key);
        let mut actions = vec![info(&format!(
            "safety number with {user}: {number}\n  {user}'s key {} ({status}). Read the number \
             to each other in person or on a call: if it matches, nobody is in the middle",
            key.fingerprint()
        ))];
        let peer = self.peer(user);
        peer.number_shown_for = Some(key);
        if let Exchange::KeyChanged { key: new_key, .. } = &peer.exchange {
            let new_key = *new_key;
            actions.push(warn(&format!(
                "{user}: the server now offers a key DIFFERENT from the pinned key: {}. The \
                 number above is the pinned key's. With the new key it would be {}: only if \
                 that is the number {user} reads to you, /accept {user}",
                new_key.fingerprint(),
                safety_number(&me_bound, &mine, &user_bound, &new_key)
            )));
        }
        actions
    }

    /// The server gave `key` for `user`, who has `old` pinned: close the session, hold
    /// messages, keep any DH-INIT of theirs for `/accept`, and warn.
    fn key_changed(
        &mut self,
        user: &str,
        old: IdentityPublicKey,
        key: IdentityPublicKey,
    ) -> Action {
        let peer = self.peer(user);
        let init = match std::mem::replace(&mut peer.exchange, Exchange::Idle) {
            Exchange::FetchingKey { init } | Exchange::KeyChanged { init, .. } => init,
            _ => None, // an exchange in progress with the old key is abandoned
        };
        peer.session = None;
        peer.previous_session = None;
        peer.exchange = Exchange::KeyChanged {
            key,
            init,
            warned: Instant::now(),
        };
        warn(&format!(
            "{user}'s IDENTITY KEY HAS CHANGED (was {}, now {}). This happens when {user} \
             uses a new device, or when someone is intercepting. Messages to {user} are \
             held. Compare safety numbers with /fingerprint {user} and only then /accept {user}",
            old.fingerprint(),
            key.fingerprint()
        ))
    }

    /// Someone opened an exchange with us. Nothing is authenticated yet (a DH-INIT carries
    /// no signature), so a session we have stays until the new exchange is confirmed. A
    /// stranger's is held as a message request; a contact's is answered within the budgets.
    fn init_arrived(&mut self, from: &str, init: Init) -> Vec<Action> {
        // Compared as bound: the spellings of two users on different servers need not sort
        // the same way at both ends, full addresses do.
        let me_first = self.bound(&self.me) < self.bound(from);
        // Taken before the match below, which changes nothing on the paths that reach the
        // check.
        let stranger = self.is_stranger(from);
        let now = Instant::now();
        let peer = self.peer(from);
        match &mut peer.exchange {
            Exchange::Initiating { .. } if me_first => {
                // Both sides started at once: the smaller name's exchange wins. Ours does; the
                // peer abandons theirs when our DH-INIT reaches it.
                return Vec::new();
            }
            Exchange::KeyChanged { init: held, .. } => {
                *held = Some(init);
                return vec![warn(&format!(
                    "{from} wants to talk, but their key changed: /fingerprint {from}, then /accept {from}"
                ))];
            }
            Exchange::LooksLike { init: held, .. } => {
                *held = Some(init);
                return Vec::new(); // warned when the key arrived
            }
            Exchange::Requested { init: held } => {
                *held = init; // shown once already
                return Vec::new();
            }
            _ => {}
        }
        if stranger {
            peer.exchange = Exchange::Requested { init };
            if std::mem::replace(&mut peer.request_shown, true) {
                return Vec::new();
            }
            return vec![Action::Show(Notice::Request {
                from: from.to_owned(),
            })];
        }
        if !within_budget(&mut peer.answered, INIT_ANSWERS_PER_PEER, now) {
            return vec![warn(&format!(
                "{from} opens key exchanges with you faster than your client answers them; some were ignored"
            ))];
        }
        if !within_budget(&mut self.answered, INIT_ANSWERS_PER_WINDOW, now) {
            return vec![warn(
                "key exchanges are being opened with you faster than your client answers them; some were ignored",
            )];
        }
        let peer = self.peer(from);
        peer.begin(Exchange::FetchingKey { init: Some(init) });
        match peer.fetched {
            Some((key, at)) if now.saturating_duration_since(at) < KEY_REUSE => {
                self.key_known(from, key, false)
            }
            _ => vec![Action::FetchKey(from.to_owned())],
        }
    }

    /// We have a trusted key for `user`: start or answer the exchange.
    fn proceed(&mut self, user: &str, key: IdentityPublicKey, init: Option<Init>) -> Vec<Action> {
        let explain = self.explain_all || self.peer(user).explain;
        let mut actions = Vec::new();
        // The names the transcript binds (see the module docs); the screen keeps `user`.
        let (me, them) = (self.bound(&self.me), self.bound(user));
        match init {
            Some(init) => match Responder::accept(&me, &them, &init, &self.identity, &key) {
                Ok((responder, reply)) => {
                    if explain {
                        explain_lines(
                            &mut actions,
                            user,
                            responder.explanation().steps.iter().flatten(),
                        );
                    }
                    actions.push(Action::Send {
                        to: user.to_owned(),
                        payload: Payload::Reply(reply).to_string(),
                    });
                    self.peer(user).begin(Exchange::Responding { responder });
                }
                Err(e) => return self.failed(user, &e),
            },
            None => match Initiator::start(&me, &them, self.group) {
                Ok((initiator, init)) => {
                    if explain {
                        explain_lines(&mut actions, user, initiator.explanation().latest_step());
                    }
                    actions.push(Action::Send {
                        to: user.to_owned(),
                        payload: Payload::Init(init).to_string(),
                    });
                    self.peer(user).begin(Exchange::Initiating {
                        initiator,
                        peer_key: key,
                    });
                }
                Err(e) => return self.failed(user, &e),
            },
        }
        actions
    }

    /// The exchange with `user` completed: announce it, switch to the new session and send
    /// what was waiting.
    fn established(&mut self, user: &str, session: Session) -> Vec<Action> {
        let explain = self.explain_all || self.peer(user).explain;
        let mut actions = Vec::new();
        let trust = self.trust_words(user);
        if explain {
            let explanation = session.explanation();
            explain_lines(&mut actions, user, explanation.latest_step());
            let summary = explanation.to_string();
            explain_lines(&mut actions, user, summary.lines());
            let notes = [
                "q = (p-1)/2 is prime too (p is a safe prime): every honest g^x mod p lies in \
                 the subgroup of order q, so a public value Y is accepted only if it is in it \
                 (Y^q mod p = 1, checked as the cheaper, equivalent Jacobi symbol (Y/p) = 1)"
                    .to_owned(),
                "The secret fingerprint is a short hash of the shared secret: both screens show \
                 the same one exactly when both sides computed the same secret, and it reveals \
                 nothing of the secret itself"
                    .to_owned(),
                format!(
                    "A signature shows a value was signed with the key you hold for {user}, which \
                     is {trust}. Only a verified key (/fingerprint {user}, compared in person, \
                     then /verify {user}) rules out someone in the middle"
                ),
                format!("The walk-through ends with this exchange; /dh {user} runs another"),
            ];
            explain_lines(&mut actions, user, notes);
        }
        // The step-by-step mode asked for with `/dh USER` ends with the exchange.
        self.peer(user).explain = false;
        actions.push(info(&format!(
            "{user}: end-to-end encrypted session established (secret fingerprint {}; \
             {user}'s identity key: {trust})",
            session
                .explanation()
                .secret_fingerprint
                .as_deref()
                .unwrap_or("?")
        )));
        // Only the initiator can still receive messages under the old keys: the responder
        // switches on our DH-CONFIRM, which reaches it after everything we sealed before.
        let keep_previous = session.is_initiator();
        let trust = self.trust(user);
        let peer = self.peer(user);
        peer.exchange = Exchange::Idle;
        let replaced = peer.session.replace(session);
        peer.previous_session = replaced.filter(|_| keep_previous);
        let queued: Vec<String> = peer.queued.drain(..).collect();
        if let Some(session) = &mut peer.session {
            for text in queued {
                seal(session, user, &text, trust, &mut actions);
            }
        }
        actions
    }

    /// An encrypted message from `from`: opened under the session it names, if we hold it.
    fn message_arrived(&mut self, from: &str, message: &EncryptedMessage) -> Vec<Action> {
        let trust = self.trust(from);
        let peer = self.peer(from);
        let under_current = peer
            .session
            .as_ref()
            .is_some_and(|s| s.session_id() == message.session_id);
        let session = if under_current {
            peer.session.as_mut()
        } else {
            peer.previous_session
                .as_mut()
                .filter(|s| s.session_id() == message.session_id)
        };
        let Some(session) = session else {
            return vec![warn(&if peer.session.is_some() {
                format!("{from}: {}", E2eError::UnknownSession)
            } else {
                format!(
                    "{from} sent an encrypted message outside any session we share (their \
                     client may have restarted); it cannot be read. It will work again \
                     after the next key exchange"
                )
            })];
        };
        match session.open(message) {
            Ok(opened) => {
                if under_current {
                    peer.previous_session = None; // the peer has moved to the new keys
                }
                let mut actions = Vec::new();
                if opened.missing > 0 {
                    actions.push(warn(&format!(
                        "{from}: {} message(s) missing before this one (dropped in transit)",
                        opened.missing
                    )));
                }
                actions.push(Action::Show(Notice::Received {
                    from: from.to_owned(),
                    text: opened.text,
                    trust,
                }));
                actions
            }
            Err(e) => vec![warn(&format!("{from}: {e}"))],
        }
    }

    /// An exchange failed a check: warn, abandon it and the messages waiting for it. A
    /// session we already had stays: it was authenticated, and the failed exchange may be
    /// an attacker's.
    fn failed(&mut self, user: &str, error: &E2eError) -> Vec<Action> {
        let peer = self.peer(user);
        let dropped = peer.abandon_exchange();
        let mut text = format!("{user}: {error}");
        if peer.session.is_some() {
            text.push_str("; the session you already had stays in use");
        }
        vec![warn(&not_sent(text, dropped))]
    }

    /// How far `user`'s pinned key is trusted. A session exists only under a pinned key;
    /// without one (never the case when a message is shown) it counts as first use.
    pub fn trust(&self, user: &str) -> Trust {
        self.pins.trust(user).unwrap_or(Trust::FirstUse)
    }

    fn peer(&mut self, user: &str) -> &mut Peer {
        self.peers.entry(user.to_owned()).or_insert_with(Peer::new)
    }
}

/// Whether one more answer fits in `budget` answers per [`INIT_ANSWER_WINDOW`] at `now`,
/// given when the recent ones were (`times`, oldest first); records it if so.
fn within_budget(times: &mut VecDeque<Instant>, budget: usize, now: Instant) -> bool {
    while times
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= INIT_ANSWER_WINDOW)
    {
        times.pop_front();
    }
    if times.len() >= budget {
        return false;
    }
    times.push_back(now);
    true
}

/// `text`, followed by how many waiting messages were dropped, if any.
fn not_sent(mut text: String, dropped: usize) -> String {
    if dropped > 0 {
        text.push_str(&format!("; {dropped} waiting message(s) were NOT sent"));
    }
    text
}

/// Seals `text` for `to`: the send and its echo, or a warning.
fn seal(session: &mut Session, to: &str, text: &str, trust: Trust, actions: &mut Vec<Action>) {
    match session.seal(text) {
        Ok(message) => {
            actions.push(Action::Send {
                to: to.to_owned(),
                payload: Payload::Message(message).to_string(),
            });
            actions.push(Action::Show(Notice::Sent {
                to: to.to_owned(),
                text: text.to_owned(),
                trust,
            }));
        }
        Err(e) => actions.push(warn(&format!("message to {to} not sent: {e}"))),
    }
}

fn explain_lines<'a>(
    actions: &mut Vec<Action>,
    peer: &str,
    lines: impl IntoIterator<Item = impl AsRef<str> + 'a>,
) {
    for line in lines {
        actions.push(Action::Show(Notice::Explain {
            peer: peer.to_owned(),
            line: line.as_ref().to_owned(),
        }));
    }
}

/// Said after a look-alike warning when the two share their user name and differ in their
/// server: the same name on another server is another person.
fn other_server(user: &str, like: &str) -> &'static str {
    let name = |address: &str| address.split('@').next().unwrap_or("").to_owned();
    if name(user) == name(like) {
        " (the same name, on another server: another person)"
    } else {
        ""
    }
}

fn info(text: &str) -> Action {
    Action::Show(Notice::Info(text.to_owned()))
}

/// A warning to show (offline delivery's key checks use it too).
pub(super) fn warn(text: &str) -> Action {
    Action::Show(Notice::Warning(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::name::ServerName;

    /// alice's `EndToEnd`, with bob's key pinned, and bob's DH-INIT to her.
    fn alice_with_bob_pinned(dir: &std::path::Path) -> (EndToEnd, IdentityKey, String) {
        let bob = IdentityKey::generate().expect("key");
        let mut pins = PinStore::open(&dir.join("pins")).expect("pins");
        pins.pin("bob", &bob.public_key()).expect("pin");
        let alice = IdentityKey::generate().expect("key");
        let secure = EndToEnd::new("alice", alice, pins, Group::Ffdhe2048, false);
        let (_, init) = Initiator::start("bob", "alice", Group::Ffdhe2048).expect("init");
        (secure, bob, Payload::Init(init).to_string())
    }

    /// One user of a federation for the live tests: its layer, as its server spells the
    /// other user, and its key.
    struct Federated {
        secure: EndToEnd,
        /// How this user's server spells the peer.
        peer: &'static str,
        /// How the peer's server spells this user (the sender name of what it routes).
        as_seen: &'static str,
        key: IdentityPublicKey,
        /// Lines shown to this user.
        shown: Vec<Notice>,
    }

    /// `me` on the server `home`, with its peer (`peer`, `peer_key`) pinned.
    fn federated(
        dir: &std::path::Path,
        me: &str,
        home: &str,
        (peer, peer_key): (&'static str, IdentityPublicKey),
        as_seen: &'static str,
        seed: u8,
    ) -> Federated {
        let mut pins = PinStore::open(&dir.join(format!("{me}-{home}-pins"))).expect("pins");
        pins.pin(peer, &peer_key).expect("pin");
        let identity = IdentityKey::from_fixed_seed(&[seed; 32]).expect("key");
        let key = identity.public_key();
        let home = ServerName::parse(home).expect("server name");
        Federated {
            secure: EndToEnd::new(me, identity, pins, Group::Ffdhe2048, false)
                .with_home(Some(home)),
            peer,
            as_seen,
            key,
            shown: Vec::new(),
        }
    }

    /// Carries out both sides' actions until none is left: sends are routed to the other
    /// side under the sender's name as the other side's server spells it; key fetches are
    /// answered with the right key.
    fn run(sides: &mut [Federated; 2], mut pending: Vec<(usize, Action)>) {
        let keys = [sides[0].key, sides[1].key];
        while !pending.is_empty() {
            for (side, action) in std::mem::take(&mut pending) {
                let other = 1 - side;
                let actions = match action {
                    Action::Send { to, payload } => {
                        assert_eq!(to, sides[side].peer);
                        let from = sides[side].as_seen;
                        pending.extend(
                            sides[other]
                                .secure
                                .payload_arrived(from, &payload)
                                .into_iter()
                                .map(|action| (other, action)),
                        );
                        continue;
                    }
                    Action::FetchKey(user) => {
                        assert_eq!(user, sides[side].peer);
                        sides[side]
                            .secure
                            .key_arrived(&user, &keys[other].to_base64())
                    }
                    Action::Show(notice) => {
                        sides[side].shown.push(notice);
                        continue;
                    }
                };
                pending.extend(actions.into_iter().map(|action| (side, action)));
            }
        }
    }

    fn received_by(side: &Federated) -> Vec<(&str, &str)> {
        side.shown
            .iter()
            .filter_map(|notice| match notice {
                Notice::Received { from, text, .. } => Some((from.as_str(), text.as_str())),
                _ => None,
            })
            .collect()
    }

    /// alice on a.test and bob on b.test, each naming the other in full and itself bare:
    /// the live exchange's signatures verify at both ends, and messages open both ways.
    #[test]
    fn a_live_exchange_between_users_of_two_servers_binds_their_full_addresses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alice_key = IdentityKey::from_fixed_seed(&[1; 32])
            .expect("key")
            .public_key();
        let bob_key = IdentityKey::from_fixed_seed(&[2; 32])
            .expect("key")
            .public_key();
        let mut sides = [
            federated(
                dir.path(),
                "alice",
                "a.test",
                ("bob@b.test", bob_key),
                "alice@a.test",
                1,
            ),
            federated(
                dir.path(),
                "bob",
                "b.test",
                ("alice@a.test", alice_key),
                "bob@b.test",
                2,
            ),
        ];
        let first = sides[0].secure.send_text("bob@b.test", "hello bob");
        run(&mut sides, first.into_iter().map(|a| (0, a)).collect());
        assert_eq!(
            received_by(&sides[1]),
            [("alice@a.test", "hello bob")],
            "{:?}",
            sides[1].shown
        );
        let reply = sides[1].secure.send_text("alice@a.test", "hi alice");
        run(&mut sides, reply.into_iter().map(|a| (1, a)).collect());
        assert_eq!(
            received_by(&sides[0]),
            [("bob@b.test", "hi alice")],
            "{:?}",
            sides[0].shown
        );
    }

    /// Two users both named `alice`, on a.test and b.test, start exchanges with each other
    /// at once: exactly one exchange wins (compared as bound, `alice@a.test` sorts first at
    /// both ends; compared as spelled, each end would think its own bare name wins and
    /// neither would answer) and both messages arrive.
    #[test]
    fn simultaneous_exchanges_across_servers_settle_on_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at_a = IdentityKey::from_fixed_seed(&[1; 32])
            .expect("key")
            .public_key();
        let at_b = IdentityKey::from_fixed_seed(&[2; 32])
            .expect("key")
            .public_key();
        let mut sides = [
            federated(
                dir.path(),
                "alice",
                "a.test",
                ("alice@b.test", at_b),
                "alice@a.test",
                1,
            ),
            federated(
                dir.path(),
                "alice",
                "b.test",
                ("alice@a.test", at_a),
                "alice@b.test",
                2,
            ),
        ];
        let mut pending: Vec<(usize, Action)> = Vec::new();
        pending.extend(
            sides[0]
                .secure
                .send_text("alice@b.test", "from a")
                .into_iter()
                .map(|a| (0, a)),
        );
        pending.extend(
            sides[1]
                .secure
                .send_text("alice@a.test", "from b")
                .into_iter()
                .map(|a| (1, a)),
        );
        run(&mut sides, pending);
        assert_eq!(
            received_by(&sides[1]),
            [("alice@a.test", "from a")],
            "{:?}",
            sides[1].shown
        );
        assert_eq!(
            received_by(&sides[0]),
            [("alice@b.test", "from b")],
            "{:?}",
            sides[0].shown
        );
    }

    #[test]
    fn a_contact_flooding_key_exchanges_is_answered_within_the_budget_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut alice, _, init) = alice_with_bob_pinned(dir.path());
        let answered = (0..20)
            .map(|_| alice.payload_arrived("bob", &init))
            .filter(|actions| actions.iter().any(|a| matches!(a, Action::FetchKey(_))))
            .count();
        assert_eq!(answered, INIT_ANSWERS_PER_PEER);
    }

    #[test]
    fn a_recently_fetched_key_answers_the_next_exchange_without_a_getkey() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut alice, bob, init) = alice_with_bob_pinned(dir.path());
        assert!(alice
            .payload_arrived("bob", &init)
            .contains(&Action::FetchKey("bob".into())));
        let reply = alice.key_arrived("bob", &bob.public_key().to_base64());
        assert!(
            reply.iter().any(|a| matches!(a, Action::Send { .. })),
            "{reply:?}"
        );
        let (_, again) = Initiator::start("bob", "alice", Group::Ffdhe2048).expect("init");
        let actions = alice.payload_arrived("bob", &Payload::Init(again).to_string());
        assert!(
            !actions.iter().any(|a| matches!(a, Action::FetchKey(_)))
                && actions.iter().any(|a| matches!(a, Action::Send { .. })),
            "{actions:?}"
        );
    }

    #[test]
    fn a_strangers_exchange_is_a_request_shown_once_and_answered_only_on_accept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut alice, _, _) = alice_with_bob_pinned(dir.path());
        let (_, init) = Initiator::start("carol", "alice", Group::Ffdhe2048).expect("init");
        let init = Payload::Init(init).to_string();
        let first = alice.payload_arrived("carol", &init);
        assert_eq!(
            first,
            [Action::Show(Notice::Request {
                from: "carol".into()
            })]
        );
        for _ in 0..5 {
            assert!(alice.payload_arrived("carol", &init).is_empty());
        }
        let accepted = alice.accept("carol");
        assert!(
            accepted.contains(&Action::FetchKey("carol".into())),
            "{accepted:?}"
        );
    }

    #[test]
    fn the_same_name_on_another_server_is_held_as_a_look_alike_until_accept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut alice, _, _) = alice_with_bob_pinned(dir.path());
        let other = IdentityKey::generate().expect("key").public_key();
        let asked = alice.send_text("bob@b.test", "hi");
        assert!(
            asked.contains(&Action::FetchKey("bob@b.test".into())),
            "{asked:?}"
        );
        let shown = alice.key_arrived("bob@b.test", &other.to_base64());
        let [Action::Show(Notice::Warning(warning))] = &shown[..] else {
            panic!("{shown:?}");
        };
        assert!(
            warning.starts_with("bob@b.test is NOT bob:")
                && warning.contains("the same name, on another server")
                && warning.contains("/accept bob@b.test"),
            "{warning}"
        );
        assert_eq!(alice.pinned_key("bob@b.test"), None, "nothing pinned");
        assert!(alice.awaits_accept("bob@b.test"), "held for /accept");
        assert_ne!(
            alice.pinned_key("bob"),
            Some(other),
            "bob's pin is untouched"
        );
    }

    #[test]
    fn an_accept_typed_before_a_key_change_warning_could_be_read_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut alice, _, init) = alice_with_bob_pinned(dir.path());
        assert!(alice
            .payload_arrived("bob", &init)
            .contains(&Action::FetchKey("bob".into())));
        // The server gives another key for bob: the warning, and the exchange held.
        let other = IdentityKey::generate().expect("key").public_key();
        let warned = alice.key_arrived("bob", &other.to_base64());
        assert!(
            warned
                .iter()
                .any(|a| matches!(a, Action::Show(Notice::Warning(text))
                if text.contains("IDENTITY KEY HAS CHANGED"))),
            "{warned:?}"
        );
        // An /accept at once (typed ahead, or pasted) is no answer: nothing changes.
        let early = alice.accept("bob");
        assert!(
            matches!(&early[..], [Action::Show(Notice::Warning(text))]
                if text.contains("/accept bob ignored")),
            "{early:?}"
        );
        assert!(alice.awaits_accept("bob"));
        assert_eq!(
            alice.pins.pinned_key("bob").map(|k| k == other),
            Some(false)
        );
        // The same /accept once the warning could have been read takes the new key.
        if let Exchange::KeyChanged { warned, .. } = &mut alice.peer("bob").exchange {
            *warned -= CONSENT_DELAY;
        }
        let later = alice.accept("bob");
        assert!(
            later
                .iter()
                .any(|a| matches!(a, Action::Show(Notice::Info(text))
                if text.contains("new key"))),
            "{later:?}"
        );
        assert_eq!(alice.pins.pinned_key("bob"), Some(other));
    }
}
