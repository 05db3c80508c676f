//! The client's end-to-end layer: one state machine per peer, from "we have never spoken"
//! through key fetching, trust checks and the signed Diffie–Hellman exchange to an
//! established [`Session`] that seals and opens messages.
//!
//! It does no I/O. Each call returns [`Action`]s for the caller to carry out: payloads to
//! route to a peer (`MSG`), identity keys to fetch (`GETKEY`), and lines to show. That keeps
//! the whole protocol testable without a network, and the terminal code thin.
//!
//! Rules it keeps:
//! * A message is sent only under an established session with a key the user trusts
//!   (first use, verified, or explicitly accepted after a change); until then it waits in a
//!   small queue, and is sent once the exchange completes.
//! * Each new exchange fetches the peer's identity key from the server again and checks it
//!   against the pin, so a changed key is noticed at once and holds messages until
//!   `/accept`.
//! * Anything that fails a check is shown as a warning and never as message text.

use std::collections::{HashMap, VecDeque};

use crate::e2e::{
    safety_number, E2eError, Group, IdentityKey, IdentityPublicKey, Init, Initiator, Payload,
    PinStatus, PinStore, Responder, Session,
};

/// Messages that may wait for one peer's exchange to finish. Enough for someone typing
/// quickly; a peer that never answers cannot make the queue grow without bound.
pub const MAX_QUEUED_PER_PEER: usize = 100;

/// Something the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Route `payload` to `to`: `MSG <to> <payload>`.
    Send { to: String, payload: String },
    /// Fetch `user`'s identity key: `GETKEY <user>`.
    FetchKey(String),
    /// Show a line to the user.
    Show(Notice),
}

/// A line for the user, by kind (the terminal decides how each looks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A private message that passed every check.
    Received { from: String, text: String },
    /// A private message of ours, now encrypted and on its way.
    Sent { to: String, text: String },
    /// Something worth knowing.
    Info(String),
    /// Something the user must not miss: a failed check, a changed key.
    Warning(String),
    /// One line of a `/dh` step-by-step explanation.
    Explain { peer: String, line: String },
}

/// Where the conversation with one peer stands.
enum State {
    /// No exchange in progress and no session.
    Idle,
    /// Waiting for the peer's identity key from the server; `init` is their DH-INIT when
    /// we are answering one, `None` when we will start the exchange.
    FetchingKey { init: Option<Init> },
    /// The server gave a key that differs from the pin: nothing happens until `/accept`.
    KeyChanged {
        key: IdentityPublicKey,
        init: Option<Init>,
    },
    /// We sent DH-INIT and wait for DH-REPLY.
    Initiating {
        initiator: Initiator,
        peer_key: IdentityPublicKey,
    },
    /// We sent DH-REPLY and wait for DH-CONFIRM.
    Responding { responder: Responder },
    /// Keys agreed both ways.
    Established { session: Session },
}

/// One peer's state.
struct Peer {
    /// The exchange or session.
    state: State,
    /// Messages typed before the session was ready, oldest first.
    queued: VecDeque<String>,
    /// Show this peer's exchanges step by step (`/dh`).
    explain: bool,
    /// Show the safety number once the key arrives (`/fingerprint USER` before we had it).
    show_fingerprint: bool,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            state: State::Idle,
            queued: VecDeque::new(),
            explain: false,
            show_fingerprint: false,
        }
    }
}

/// The end-to-end layer for one logged-in user.
pub struct Secure {
    /// Our user name.
    me: String,
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
}

impl Secure {
    pub fn new(
        me: &str,
        identity: IdentityKey,
        pins: PinStore,
        group: Group,
        explain_all: bool,
    ) -> Secure {
        Secure {
            me: me.to_owned(),
            identity,
            pins,
            group,
            explain_all,
            peers: HashMap::new(),
        }
    }

    /// Our identity public key (published with `SETKEY`).
    pub fn identity_public(&self) -> IdentityPublicKey {
        self.identity.public_key()
    }

    /// Whether a session with `peer` is established.
    pub fn is_established(&self, peer: &str) -> bool {
        matches!(
            self.peers.get(peer).map(|p| &p.state),
            Some(State::Established { .. })
        )
    }

    /// The user typed a private message for `to`.
    pub fn send_text(&mut self, to: &str, text: &str) -> Vec<Action> {
        if to == self.me {
            return vec![warn("you cannot send a private message to yourself")];
        }
        let peer = self.peer(to);
        if let State::Established { session } = &mut peer.state {
            let mut actions = Vec::new();
            seal(session, to, text, &mut actions);
            return actions;
        }
        if peer.queued.len() >= MAX_QUEUED_PER_PEER {
            return vec![warn(&format!(
                "{to}: {MAX_QUEUED_PER_PEER} messages already wait for the key exchange; not queued"
            ))];
        }
        peer.queued.push_back(text.to_owned());
        let mut actions = Vec::new();
        match &peer.state {
            State::Idle => {
                peer.state = State::FetchingKey { init: None };
                actions.push(info(&format!(
                    "{to}: setting up end-to-end encryption; your message is sent once it is ready"
                )));
                actions.push(Action::FetchKey(to.to_owned()));
            }
            State::KeyChanged { .. } => actions.push(warn(&format!(
                "{to}: message held: {to}'s identity key changed. Check it with /fingerprint {to}, then /accept {to}"
            ))),
            _ => {}
        }
        actions
    }

    /// `/dh USER`: explain this peer's exchanges and run a fresh one now.
    pub fn explain(&mut self, user: &str) -> Vec<Action> {
        if user == self.me {
            return vec![warn("a key exchange needs another user")];
        }
        let peer = self.peer(user);
        peer.explain = true;
        if matches!(peer.state, State::Idle | State::Established { .. }) {
            peer.state = State::FetchingKey { init: None };
            return vec![
                info(&format!(
                    "{user}: starting a fresh Diffie-Hellman exchange, step by step"
                )),
                Action::FetchKey(user.to_owned()),
            ];
        }
        vec![info(&format!(
            "{user}: an exchange is already under way; its next steps will be explained"
        ))]
    }

    /// The server answered `GETKEY user` with `key` (base64).
    pub fn key_arrived(&mut self, user: &str, key: &str) -> Vec<Action> {
        let key = match IdentityPublicKey::from_base64(key) {
            Ok(key) => key,
            Err(e) => {
                self.reset(user);
                return vec![warn(&format!(
                    "{user}: the server sent an unusable key: {e}"
                ))];
            }
        };
        let mut actions = Vec::new();
        if self.peer(user).show_fingerprint {
            self.peer(user).show_fingerprint = false;
            actions.push(self.safety_notice(user, &key));
        }
        let init = match &mut self.peer(user).state {
            State::FetchingKey { init } => init.take(),
            _ => return actions, // only a fingerprint request
        };
        match self.pins.check(user, &key) {
            PinStatus::FirstUse => {
                if let Err(e) = self.pins.pin(user, &key) {
                    actions.push(warn(&format!("{user}: could not save the pinned key: {e}")));
                }
                actions.push(info(&format!(
                    "{user}: first contact; their key {} is now pinned. Compare safety numbers \
                     (/fingerprint {user}) in person, then /verify {user}",
                    key.fingerprint()
                )));
            }
            PinStatus::Matches { .. } => {}
            PinStatus::Changed { old } => {
                actions.push(warn(&format!(
                    "{user}'s IDENTITY KEY HAS CHANGED (was {}, now {}). This happens when {user} \
                     uses a new device, or when someone is intercepting. Messages to {user} are \
                     held. Compare safety numbers with /fingerprint {user} and only then /accept {user}",
                    old.fingerprint(),
                    key.fingerprint()
                )));
                self.peer(user).state = State::KeyChanged { key, init };
                return actions;
            }
        }
        actions.extend(self.proceed(user, key, init));
        actions
    }

    /// The server could not give `user`'s key (no such user, or none published).
    pub fn key_unavailable(&mut self, user: &str, reason: &str) -> Vec<Action> {
        let peer = self.peer(user);
        let wanted = peer.show_fingerprint || matches!(peer.state, State::FetchingKey { .. });
        peer.show_fingerprint = false;
        if !wanted {
            return Vec::new();
        }
        let dropped = self.reset(user);
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
                let (initiator, peer_key) = match std::mem::replace(&mut peer.state, State::Idle) {
                    State::Initiating {
                        initiator,
                        peer_key,
                    } if initiator.session_id() == reply.session_id => (initiator, peer_key),
                    other => {
                        peer.state = other;
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
                let responder = match std::mem::replace(&mut peer.state, State::Idle) {
                    State::Responding { responder }
                        if responder.session_id() == confirm.session_id =>
                    {
                        responder
                    }
                    other => {
                        peer.state = other;
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
            Payload::Message(message) => {
                let peer = self.peer(from);
                let State::Established { session } = &mut peer.state else {
                    return vec![warn(&format!(
                        "{from} sent an encrypted message outside any session we share (their \
                         client may have restarted); it cannot be read. It will work again \
                         after the next key exchange"
                    ))];
                };
                if session.session_id() != message.session_id {
                    return vec![warn(&format!("{from}: {}", E2eError::UnknownSession))];
                }
                match session.open(&message) {
                    Ok(opened) => {
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
                        }));
                        actions
                    }
                    Err(e) => vec![warn(&format!("{from}: {e}"))],
                }
            }
        }
    }

    /// The server says `user` is not online (`ERR MSG offline`) or left (`OFFLINE`).
    pub fn peer_gone(&mut self, user: &str) -> Vec<Action> {
        let had_state = self
            .peers
            .get(user)
            .is_some_and(|p| !matches!(p.state, State::Idle) || !p.queued.is_empty());
        let dropped = self.reset(user);
        if !had_state {
            return Vec::new();
        }
        let mut text = format!("{user} is offline; the end-to-end session with them is closed");
        if dropped > 0 {
            text.push_str(&format!("; {dropped} message(s) not sent"));
        }
        vec![info(&text)]
    }

    /// `/accept USER`: trust the new key after a key-change warning.
    pub fn accept(&mut self, user: &str) -> Vec<Action> {
        let peer = self.peer(user);
        let (key, init) = match std::mem::replace(&mut peer.state, State::Idle) {
            State::KeyChanged { key, init } => (key, init),
            other => {
                peer.state = other;
                return vec![info(&format!(
                    "{user}: no changed key is waiting for /accept"
                ))];
            }
        };
        let mut actions = Vec::new();
        match self.pins.accept_new_key(user, &key) {
            Ok(()) => actions.push(info(&format!(
                "{user}: new key {} accepted (unverified until you /verify {user})",
                key.fingerprint()
            ))),
            Err(e) => actions.push(warn(&format!("{user}: could not save the new key: {e}"))),
        }
        actions.extend(self.proceed(user, key, init));
        actions
    }

    /// `/verify USER`: the users compared safety numbers and they matched.
    pub fn verify(&mut self, user: &str) -> Vec<Action> {
        match self.pins.mark_verified(user) {
            Ok(()) => vec![info(&format!(
                "{user}: key marked as verified; you will be warned if it ever changes"
            ))],
            Err(e) => vec![warn(&format!(
                "{user}: {e} (talk to them or use /fingerprint {user} first)"
            ))],
        }
    }

    /// `/fingerprint`: ours; `/fingerprint USER`: the safety number with USER (the key is
    /// fetched first).
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

    fn safety_notice(&self, user: &str, key: &IdentityPublicKey) -> Action {
        let status = match self.pins.check(user, key) {
            PinStatus::FirstUse => "not pinned yet".to_owned(),
            PinStatus::Matches { verified: true } => "pinned, verified".to_owned(),
            PinStatus::Matches { verified: false } => {
                format!("pinned, NOT verified: compare, then /verify {user}")
            }
            PinStatus::Changed { .. } => "DIFFERENT from the pinned key".to_owned(),
        };
        let number = safety_number(&self.me, &self.identity.public_key(), user, key);
        info(&format!(
            "safety number with {user}: {number}\n  {user}'s key {} ({status}). Read the number \
             to each other in person or on a call: if it matches, nobody is in the middle",
            key.fingerprint()
        ))
    }

    /// Someone opened an exchange with us.
    fn init_arrived(&mut self, from: &str, init: Init) -> Vec<Action> {
        let me_first = self.me.as_str() < from;
        let peer = self.peer(from);
        if matches!(peer.state, State::Initiating { .. }) && me_first {
            // Both sides started at once: the smaller name's exchange wins. Ours does; the
            // peer abandons theirs when our DH-INIT reaches it.
            return Vec::new();
        }
        if let State::KeyChanged { key, .. } = std::mem::replace(&mut peer.state, State::Idle) {
            peer.state = State::KeyChanged {
                key,
                init: Some(init),
            };
            return vec![warn(&format!(
                "{from} wants to talk, but their key changed: /fingerprint {from}, then /accept {from}"
            ))];
        }
        peer.state = State::FetchingKey { init: Some(init) };
        vec![Action::FetchKey(from.to_owned())]
    }

    /// We have a trusted key for `user`: start or answer the exchange.
    fn proceed(&mut self, user: &str, key: IdentityPublicKey, init: Option<Init>) -> Vec<Action> {
        let explain = self.explain_all || self.peer(user).explain;
        let mut actions = Vec::new();
        match init {
            Some(init) => match Responder::accept(&self.me, user, &init, &self.identity, &key) {
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
                    self.peer(user).state = State::Responding { responder };
                }
                Err(e) => return self.failed(user, &e),
            },
            None => match Initiator::start(&self.me, user, self.group) {
                Ok((initiator, init)) => {
                    if explain {
                        explain_lines(&mut actions, user, initiator.explanation().latest_step());
                    }
                    actions.push(Action::Send {
                        to: user.to_owned(),
                        payload: Payload::Init(init).to_string(),
                    });
                    self.peer(user).state = State::Initiating {
                        initiator,
                        peer_key: key,
                    };
                }
                Err(e) => return self.failed(user, &e),
            },
        }
        actions
    }

    /// The exchange with `user` completed: announce it and send what was waiting.
    fn established(&mut self, user: &str, session: Session) -> Vec<Action> {
        let explain = self.explain_all || self.peer(user).explain;
        let mut actions = Vec::new();
        if explain {
            let explanation = session.explanation();
            explain_lines(&mut actions, user, explanation.latest_step());
            let summary = explanation.to_string();
            explain_lines(&mut actions, user, summary.lines());
        }
        actions.push(info(&format!(
            "{user}: end-to-end encrypted session established (key fingerprint {})",
            session
                .explanation()
                .secret_fingerprint
                .as_deref()
                .unwrap_or("?")
        )));
        let peer = self.peer(user);
        peer.state = State::Established { session };
        let queued: Vec<String> = peer.queued.drain(..).collect();
        if let State::Established { session } = &mut peer.state {
            for text in queued {
                seal(session, user, &text, &mut actions);
            }
        }
        actions
    }

    /// An exchange failed a check: warn, forget it, keep nothing that depended on it.
    fn failed(&mut self, user: &str, error: &E2eError) -> Vec<Action> {
        let dropped = self.reset(user);
        let mut text = format!("{user}: {error}");
        if dropped > 0 {
            text.push_str(&format!("; {dropped} waiting message(s) were NOT sent"));
        }
        vec![warn(&text)]
    }

    /// Forgets the exchange or session with `user`; returns how many queued messages were
    /// dropped.
    fn reset(&mut self, user: &str) -> usize {
        match self.peers.get_mut(user) {
            Some(peer) => {
                peer.state = State::Idle;
                let dropped = peer.queued.len();
                peer.queued.clear();
                dropped
            }
            None => 0,
        }
    }

    fn peer(&mut self, user: &str) -> &mut Peer {
        self.peers.entry(user.to_owned()).or_insert_with(Peer::new)
    }
}

/// Seals `text` for `to`: the send and its echo, or a warning.
fn seal(session: &mut Session, to: &str, text: &str, actions: &mut Vec<Action>) {
    match session.seal(text) {
        Ok(message) => {
            actions.push(Action::Send {
                to: to.to_owned(),
                payload: Payload::Message(message).to_string(),
            });
            actions.push(Action::Show(Notice::Sent {
                to: to.to_owned(),
                text: text.to_owned(),
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

fn info(text: &str) -> Action {
    Action::Show(Notice::Info(text.to_owned()))
}

fn warn(text: &str) -> Action {
    Action::Show(Notice::Warning(text.to_owned()))
}
