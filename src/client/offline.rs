//! Offline delivery on the client: private messages to users who are not online, and the
//! ones that waited for us (`report/protocol.md` §11.10). The keys and sessions live in the
//! [`Mailbox`]; this is the protocol around it: which frames to send when, what to show.
//!
//! Like the end-to-end layer it does no I/O: each call returns [`Step`]s for the chat to carry
//! out (frames to send in order, lines to show). Pinned keys stay the end-to-end layer's
//! ([`EndToEnd::offline_key`]), so the pin rules are the same as for a live exchange.
//!
//! Rules it keeps:
//! * Nothing is sent or opened under a key that is not pinned: a first message waits for both
//!   the peer's identity key (`GETKEY`, checked against the pin) and their prekey bundle
//!   (`BUNDLE`, whose signatures the library checks against that key); mail from someone with
//!   no pinned key waits for `GETKEY` the same way.
//! * Mail from a stranger (nobody this user has talked to: [`EndToEnd::is_stranger`]) is a
//!   *message request*, as a stranger's live key exchange is: the user is told once who
//!   wrote and how many messages wait, and nothing is fetched, computed, pinned, shown or
//!   acknowledged until `/accept` — so strangers' mail costs this client nothing, and what
//!   is never accepted stays on the server until it expires (its sender then sees `expired`).
//! * A `MAIL` is acknowledged only once the mailbox saved what opening it changed; one that
//!   cannot be opened is acknowledged too (after saying why), so it does not come back at
//!   every login; one already processed is only acknowledged again.
//! * Each final `STATUS` (delivered, expired, refused, unreadable) is shown, then
//!   acknowledged. The text of each message on its way is the [`Mailbox`]'s (on disk, until
//!   its final state), so a restarted client still says which message a `STATUS` is about,
//!   and still sends a message again, once, in a new session when the recipient's client
//!   could not read it.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::client::end_to_end::{self, Action, EndToEnd, Notice};
use crate::client::mailbox::{Mailbox, Sent, MAX_UNRESOLVED, REFILL_BELOW};
use crate::e2e::{E2eError, IdentityPublicKey, PrekeyBundle, Trust};
use crate::protocol::name::server_of;
use crate::protocol::{DeliveryState, MailboxLimits, OneTimePrekey, PrekeyList, Refusal, Request};

/// One-time prekeys made per refill step (one `ADDPREKEYS` frame).
const REFILL_STEP: usize = 20;

/// Characters of a sent text shown to tell the user which message a `STATUS` is about.
const PREVIEW_CHARS: usize = 24;

/// Something the chat must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this frame (already encoded by `protocol`).
    Frame(String),
    /// Send this `SEND` frame: a private message of ours, shown as sent once written.
    Sent {
        /// The frame.
        frame: String,
        /// The recipient.
        to: String,
        /// The text.
        text: String,
    },
    /// Show a line the end-to-end layer produced (pins, warnings).
    Show(Notice),
    /// A private message that waited on the server for us.
    Received {
        /// The sender.
        from: String,
        /// The text.
        text: String,
        /// How far the sender's key is trusted.
        trust: Trust,
        /// When the server queued it, unix seconds.
        time: u64,
    },
    /// What happened to a message of ours: `to <to>: <state>`.
    Delivery {
        /// The recipient.
        to: String,
        /// The state, in words.
        state: String,
    },
}

/// What a first message to one peer waits for.
#[derive(Default)]
struct Starting {
    /// The texts typed, oldest first.
    texts: Vec<String>,
    /// Their identity key, once the server gave it and the pin rules passed.
    key: Option<IdentityPublicKey>,
    /// Their bundle, once the server gave it.
    bundle: Option<PrekeyBundle>,
}

/// A `MAIL` waiting for its sender's identity key.
struct Held {
    /// The server's id.
    id: u64,
    /// When it was queued.
    time: u64,
    /// The payload.
    payload: String,
}

/// Offline delivery for one logged-in user.
pub struct Offline {
    /// Keys, sessions, processed ids, and my unresolved messages with their texts (on disk).
    mailbox: Mailbox,
    /// The server's queue limits when this connection opted in; `None` while the server
    /// does not offer offline delivery (then nothing here sends a frame).
    limits: Option<MailboxLimits>,
    /// Whether offline delivery was on when the user was last told (they are told when it
    /// changes, not at every reconnect).
    told: Option<bool>,
    /// Whether `PREKEYS` arrived on this connection (else the server holds none of ours).
    prekeys_reported: bool,
    /// First messages waiting for a key and a bundle, per peer.
    starting: HashMap<String, Starting>,
    /// Mail waiting for its sender's key, per sender, in the order received.
    held: HashMap<String, Vec<Held>>,
    /// Mail from strangers waiting for `/accept`, per sender, in the order received (this
    /// connection only: it was not acknowledged, so the server sends it again).
    requests: HashMap<String, Vec<Held>>,
}

impl Offline {
    /// Offline delivery over `mailbox`, off until [`Offline::connected`] says otherwise.
    pub fn new(mailbox: Mailbox) -> Offline {
        Offline {
            mailbox,
            limits: None,
            told: None,
            prekeys_reported: false,
            starting: HashMap::new(),
            held: HashMap::new(),
            requests: HashMap::new(),
        }
    }

    /// A new connection is logged in; `limits` is `Some` when it opted in (`OK MAILBOX`).
    /// Publishes the signed-prekey record (the server then says how many one-time prekeys
    /// it holds, or nothing when none).
    pub fn connected(&mut self, limits: Option<MailboxLimits>) -> Vec<Step> {
        self.limits = limits;
        self.prekeys_reported = false;
        let tell = self.told.replace(limits.is_some()) != Some(limits.is_some());
        let Some(limits) = limits else {
            if !tell {
                return Vec::new();
            }
            return vec![info(
                "this server does not offer offline delivery: private messages reach only \
                 users who are online",
            )];
        };
        let record = BASE64.encode(self.mailbox.bundle_record().to_bytes());
        let mut steps = vec![Step::Frame(
            Request::SetPrekey { record: &record }.to_string(),
        )];
        if tell {
            steps.push(info(&format!(
                "offline delivery is on: private messages to users who are offline wait on the \
                 server (end-to-end encrypted) for up to {}",
                time_to_live(limits.ttl_seconds)
            )));
        }
        let unconfirmed = self.mailbox.unconfirmed();
        if !unconfirmed.is_empty() {
            steps.push(info(&format!(
                "sending again {} offline message(s) the server had not confirmed storing (it \
                 stores each once)",
                unconfirmed.len()
            )));
        }
        for (reference, to, payload) in &unconfirmed {
            steps.push(Step::Frame(
                Request::Send {
                    to,
                    reference,
                    payload,
                }
                .to_string(),
            ));
        }
        let resending = self.mailbox.resending();
        if !resending.is_empty() {
            steps.push(info(&format!(
                "sending again, in a new end-to-end session, {} offline message(s) their \
                 recipient's client could not read",
                resending.len()
            )));
        }
        let mut by_peer: Vec<(String, Vec<String>)> = Vec::new();
        for (peer, text) in resending {
            match by_peer.iter_mut().find(|(known, _)| *known == peer) {
                Some((_, texts)) => texts.push(text),
                None => by_peer.push((peer, vec![text])),
            }
        }
        for (peer, texts) in by_peer {
            steps.extend(self.send(&peer, texts));
        }
        steps
    }

    /// The connection is gone: returns the texts that waited for a first message, as
    /// `(peer, text)` in the order typed, for the caller to send again once reconnected.
    /// Texts being sent again after an `unreadable` are left out: they wait in the mailbox,
    /// and [`Offline::connected`] sends them. Held mail is dropped: it was not acknowledged,
    /// so the server sends it again.
    pub fn connection_lost(&mut self) -> Vec<(String, String)> {
        self.held.clear();
        self.requests.clear();
        let mut resending = self.mailbox.resending();
        let mut peers: Vec<String> = self.starting.keys().cloned().collect();
        peers.sort();
        let mut waiting = Vec::new();
        for peer in peers {
            for text in self.starting.remove(&peer).unwrap_or_default().texts {
                let again = resending
                    .iter()
                    .position(|(to, resent)| *to == peer && *resent == text);
                match again {
                    Some(at) => {
                        resending.swap_remove(at);
                    }
                    None => waiting.push((peer.clone(), text)),
                }
            }
        }
        waiting
    }

    /// Whether offline delivery is on for this connection.
    pub fn is_on(&self) -> bool {
        self.limits.is_some()
    }

    /// Whether a message to `to` should go by offline delivery now: there is an offline
    /// session with them (and the caller has no live one).
    pub fn has_session(&self, to: &str) -> bool {
        self.is_on() && self.mailbox.has_session(to)
    }

    /// The user's texts for `to`, who is offline (or reached by an offline session).
    pub fn send(&mut self, to: &str, texts: Vec<String>) -> Vec<Step> {
        if texts.is_empty() {
            return Vec::new();
        }
        if !self.is_on() {
            return vec![warn(&format!(
                "{to} is offline and this server has no offline delivery; {} message(s) not sent",
                texts.len()
            ))];
        }
        if self.mailbox.has_session(to) {
            return texts
                .into_iter()
                .flat_map(|text| self.seal(to, &text))
                .collect();
        }
        let waiting = self.starting.entry(to.to_owned()).or_default();
        let first = waiting.texts.is_empty();
        waiting.texts.extend(texts);
        if !first {
            return Vec::new();
        }
        let why = match is_elsewhere(to) {
            true => {
                "is on another server, and messages between servers travel as offline \
                     messages"
            }
            false => "is offline",
        };
        vec![
            info(&format!(
                "{to} {why}: fetching their prekeys for offline delivery (end-to-end \
                 encrypted; the servers keep it until {to}'s client fetches it)"
            )),
            Step::Frame(Request::GetKey { user: to }.to_string()),
            Step::Frame(Request::Bundle { user: to }.to_string()),
        ]
    }

    /// Whether a `GETKEY` answer for `user` is ours.
    pub fn wants_key(&self, user: &str) -> bool {
        self.starting.get(user).is_some_and(|s| s.key.is_none()) || self.held.contains_key(user)
    }

    /// The server gave `key` (base64) for `user`, who is the peer of a first message or the
    /// sender of held mail.
    pub fn key_arrived(&mut self, user: &str, key: &str, secure: &mut EndToEnd) -> Vec<Step> {
        let mut no_texts = Vec::new();
        let waiting = self
            .starting
            .get_mut(user)
            .map_or(&mut no_texts, |starting| &mut starting.texts);
        let checked = IdentityPublicKey::from_base64(key)
            .map_err(|e| {
                vec![end_to_end::warn(&format!(
                    "{user}: unusable key from the server: {e}"
                ))]
            })
            .and_then(|key| {
                secure
                    .offline_key(user, &key, waiting)
                    .map(|shown| (key, shown))
            });
        let (key, shown) = match checked {
            Ok(found) => found,
            Err(shown) => {
                let mut steps = shown_steps(shown);
                steps.extend(self.give_up(user, "their identity key cannot be used"));
                return steps;
            }
        };
        let mut steps = shown_steps(shown);
        for held in self.held.remove(user).unwrap_or_default() {
            steps.extend(self.open(held, user, key, secure.trust(user)));
        }
        if let Some(waiting) = self.starting.get_mut(user) {
            waiting.key = Some(key);
            steps.extend(self.start(user));
        }
        steps
    }

    /// The server has no key for `user` (or no such user).
    pub fn key_unavailable(&mut self, user: &str, reason: &str) -> Vec<Step> {
        self.give_up(user, reason)
    }

    /// `BUNDLE <user> <record> <opk>`.
    pub fn bundle_arrived(
        &mut self,
        user: &str,
        record: &str,
        one_time: Option<&OneTimePrekey>,
    ) -> Vec<Step> {
        if !self.starting.contains_key(user) {
            return Vec::new(); // nobody asked
        }
        let parsed = BASE64
            .decode(record)
            .map_err(|_| E2eError::Malformed("the record is not base64".to_owned()))
            .and_then(|bytes| PrekeyBundle::from_bytes(&bytes))
            .and_then(|mut bundle| {
                bundle.one_time_prekey = match one_time {
                    Some(key) => Some((
                        key.id,
                        BASE64.decode(&key.key).map_err(|_| {
                            E2eError::Malformed("the one-time prekey is not base64".to_owned())
                        })?,
                    )),
                    None => None,
                };
                Ok(bundle)
            });
        let mut bundle = match parsed {
            Ok(bundle) => bundle,
            Err(e) => return self.give_up(user, &format!("unusable prekeys: {e}")),
        };
        let mut steps = Vec::new();
        let lost_state = self
            .mailbox
            .resending()
            .iter()
            .any(|(peer, _)| peer == user);
        if lost_state && bundle.one_time_prekey.take().is_some() {
            // A client that lost its state may not hold the one-time prekey handed out: the
            // server voids the old ones when a new mailbox publishes its record (protocol.md
            // §6.13), but not when the same mailbox was rolled back (a restored backup), and
            // the second try is the last one.
            steps.push(info(&format!(
                "{user}'s client lost its offline state, so the one-time prekey the server \
                 handed out may be one it no longer has: the new session starts from their \
                 current signed prekey only (weaker if that key is stolen later)"
            )));
        } else if bundle.one_time_prekey.is_none() {
            steps.push(info(&format!(
                "{user} has no one-time prekeys left on the server: the first message is \
                 protected by their signed prekey only (weaker if that key is stolen later)"
            )));
        }
        if let Some(waiting) = self.starting.get_mut(user) {
            waiting.bundle = Some(bundle);
        }
        steps.extend(self.start(user));
        steps
    }

    /// The server refused `BUNDLE user` (no such user, no prekeys, rate limited).
    pub fn bundle_unavailable(&mut self, user: &str, reason: &str) -> Vec<Step> {
        self.give_up(user, reason)
    }

    /// Seals the first message once both the key and the bundle are there, then the rest.
    fn start(&mut self, to: &str) -> Vec<Step> {
        let ready = self
            .starting
            .get(to)
            .is_some_and(|s| s.key.is_some() && s.bundle.is_some());
        if !ready {
            return Vec::new();
        }
        let Some(Starting {
            texts,
            key: Some(key),
            bundle: Some(bundle),
        }) = self.starting.remove(to)
        else {
            return Vec::new();
        };
        let mut texts = texts.into_iter();
        let Some(first) = texts.next() else {
            return Vec::new();
        };
        let mut steps = match self.mailbox.seal_first(to, key, &bundle, &first) {
            Ok(payload) => self.queue(to, first, &payload),
            Err(e) => {
                let mut steps = vec![warn(&format!(
                    "{to}: offline delivery could not start ({e}); {} message(s) not sent",
                    texts.len() + 1
                ))];
                steps.extend(self.stop_resending(to));
                return steps;
            }
        };
        for text in texts {
            steps.extend(self.seal(to, &text));
        }
        steps
    }

    /// Seals `text` in the session with `to` and queues it.
    fn seal(&mut self, to: &str, text: &str) -> Vec<Step> {
        match self.mailbox.seal(to, text) {
            Ok(payload) => self.queue(to, text.to_owned(), &payload),
            Err(e) => vec![warn(&format!("{to}: message not sent: {e}"))],
        }
    }

    /// A `SEND` of `payload` under a fresh ref.
    fn queue(&mut self, to: &str, text: String, payload: &str) -> Vec<Step> {
        let (reference, forgotten) = match self.mailbox.remember_sent(to, &text, payload) {
            Ok(remembered) => remembered,
            Err(e) => return vec![warn(&format!("{to}: message not sent: {e}"))],
        };
        let frame = Request::Send {
            to,
            reference: &reference,
            payload,
        }
        .to_string();
        let mut steps = vec![Step::Sent {
            frame,
            to: to.to_owned(),
            text,
        }];
        if let Some(sent) = forgotten {
            steps.push(warn(&forgotten_words(&sent)));
        }
        steps
    }

    /// Forgets the texts to `user` waiting to be sent again after an `unreadable`: the
    /// caller has just said that what waited for `user` is not sent.
    fn stop_resending(&mut self, user: &str) -> Option<Step> {
        self.mailbox
            .stop_resending(user)
            .err()
            .map(|e| warn(&e.to_string()))
    }

    /// Drops what waited for `user` (a first message, held mail) and says so.
    fn give_up(&mut self, user: &str, reason: &str) -> Vec<Step> {
        let mut steps = Vec::new();
        if let Some(waiting) = self.starting.remove(user).filter(|w| !w.texts.is_empty()) {
            steps.push(warn(&format!(
                "{user}: offline delivery not possible ({reason}); {} message(s) not sent",
                waiting.texts.len()
            )));
            steps.extend(self.stop_resending(user));
        }
        for held in self.held.remove(user).unwrap_or_default() {
            steps.push(warn(&format!(
                "{user}: a message they sent while you were offline cannot be read: their \
                 identity key is not usable ({reason}); it was discarded"
            )));
            steps.push(Step::Frame(
                Request::Ack {
                    id: held.id,
                    unreadable: true,
                }
                .to_string(),
            ));
        }
        steps
    }

    /// `MAIL <id> <sender> <time> <payload>`.
    pub fn mail(
        &mut self,
        id: u64,
        sender: &str,
        time: u64,
        payload: String,
        secure: &EndToEnd,
    ) -> Vec<Step> {
        if self.mailbox.is_processed(id) {
            return vec![Step::Frame(
                Request::Ack {
                    id,
                    unreadable: false,
                }
                .to_string(),
            )];
        }
        let held = Held { id, time, payload };
        if secure.is_stranger(sender) && !self.starting.contains_key(sender) {
            let waiting = self.requests.entry(sender.to_owned()).or_default();
            if waiting.iter().any(|request| request.id == id) {
                return Vec::new();
            }
            waiting.push(held);
            if waiting.len() > 1 {
                return Vec::new(); // told at the first one
            }
            return vec![info(&format!(
                "message request: {sender} wrote to you {}; nothing was read. /accept \
                 {sender} to read what they sent, or ignore it (it expires on the server)",
                when_sent(sender)
            ))];
        }
        if let Some(key) = secure.pinned_key(sender) {
            if !self.held.contains_key(sender) {
                return self.open(held, sender, key, secure.trust(sender));
            }
        }
        let queue = self.held.entry(sender.to_owned()).or_default();
        queue.push(held);
        if queue.len() > 1 {
            return Vec::new();
        }
        vec![Step::Frame(Request::GetKey { user: sender }.to_string())]
    }

    /// `/accept USER`: reads the mail `user` sent as a message request, once their key is
    /// fetched and pinned by the usual rules. `None` when no mail from them waits.
    pub fn accept(&mut self, user: &str) -> Option<Vec<Step>> {
        let requests = self.requests.remove(user)?;
        let count = requests.len();
        self.held
            .entry(user.to_owned())
            .or_default()
            .extend(requests);
        Some(vec![
            info(&format!(
                "{user}: request accepted; reading {count} message(s) they sent {}",
                when_sent(user)
            )),
            Step::Frame(Request::GetKey { user }.to_string()),
        ])
    }

    /// Opens held mail from `sender` under their pinned `key`, and acknowledges it.
    fn open(
        &mut self,
        held: Held,
        sender: &str,
        key: IdentityPublicKey,
        trust: Trust,
    ) -> Vec<Step> {
        let ack = |unreadable| {
            Step::Frame(
                Request::Ack {
                    id: held.id,
                    unreadable,
                }
                .to_string(),
            )
        };
        match self.mailbox.open(held.id, sender, key, &held.payload) {
            Ok(Ok(text)) => vec![
                Step::Received {
                    from: sender.to_owned(),
                    text,
                    trust,
                    time: held.time,
                },
                ack(false),
            ],
            Ok(Err(e)) => vec![
                warn(&format!(
                    "{sender}: a message they sent while you were offline could not be read: \
                     {e}. {sender}'s client is told, and sends it again in a new session if it \
                     still has the text"
                )),
                ack(true),
            ],
            Err(e) => vec![warn(&format!(
                "{sender}: a message they sent while you were offline was not acknowledged, \
                 so it comes again at your next login: {e}"
            ))],
        }
    }

    /// `STATUS <ref> <state> <user>`: shows it, and acknowledges a final one.
    pub fn status(&mut self, reference: &str, state: DeliveryState, user: &str) -> Vec<Step> {
        if !self.is_on() {
            return Vec::new();
        }
        let words = match state {
            DeliveryState::Queued { .. } => "queued (offline delivery)".to_owned(),
            DeliveryState::Delivered => "delivered".to_owned(),
            DeliveryState::Expired => {
                "expired: not fetched before the server's time limit, NOT delivered".to_owned()
            }
            DeliveryState::Refused(Refusal::Quota) => {
                format!("refused: quota ({user}'s offline queue is full), NOT delivered")
            }
            DeliveryState::Refused(Refusal::NoSuchServer) => format!(
                "not sent: {} is not a server this server is linked with",
                server_of(user).unwrap_or("their server")
            ),
            DeliveryState::Refused(reason) => format!("refused: {}", reason.as_str()),
            DeliveryState::Unreadable => {
                format!("NOT readable by {user}'s client (it lost or damaged its offline session)")
            }
        };
        let shown = match self
            .mailbox
            .sent(reference)
            .and_then(|sent| sent.text.as_deref())
        {
            Some(text) => format!("{words} (\"{}\")", preview(text)),
            None => words,
        };
        let mut steps = vec![Step::Delivery {
            to: user.to_owned(),
            state: shown,
        }];
        match state {
            DeliveryState::Queued { .. } => {
                if let Err(e) = self.mailbox.confirmed(reference) {
                    steps.push(warn(&e.to_string()));
                }
            }
            DeliveryState::Unreadable => steps.extend(self.send_again(reference, user)),
            _ => {
                if let Err(e) = self.mailbox.resolved(reference) {
                    steps.push(warn(&e.to_string()));
                }
                steps.push(Step::Frame(Request::AckStatus { reference }.to_string()));
            }
        }
        steps
    }

    /// `user`'s client could not read my message `reference`: my session with them is
    /// forgotten, and the text goes again, once, in a new session from their prekeys. The
    /// receipt is acknowledged once the mailbox saved that the text waits to be sent again,
    /// so it is not lost by a restart in between.
    fn send_again(&mut self, reference: &str, user: &str) -> Vec<Step> {
        let ack = Step::Frame(Request::AckStatus { reference }.to_string());
        if self.mailbox.sent(reference).is_none() && self.mailbox.is_retrying(user) {
            // Said again by the server after its second try was sealed (our receipt was
            // lost): the session of that try is new and readable; keep it.
            return vec![ack];
        }
        let mut steps = Vec::new();
        if let Err(e) = self.mailbox.forget_session(user) {
            steps.push(warn(&e.to_string()));
        }
        if self.mailbox.sent(reference).is_some_and(Sent::is_resending) {
            // Said again by the server (our receipt was lost): already on its way.
            steps.push(ack);
            return steps;
        }
        match self.mailbox.resend(reference) {
            Ok(Some(text)) => {
                steps.push(ack);
                steps.push(info(&format!(
                    "{user}: sending it again in a new end-to-end session"
                )));
                steps.extend(self.send(user, vec![text]));
                return steps;
            }
            Ok(None) => {}
            Err(e) => {
                steps.push(warn(&format!(
                    "{user}: {e}; the server says it again at the next login, and it is sent \
                     again then"
                )));
                return steps;
            }
        }
        steps.push(ack);
        let resolved = self.mailbox.resolved(reference);
        steps.push(warn(&match resolved {
            Ok(Some(Sent { retry: true, .. })) => format!(
                "{user}: their client could not read it a second time, in a new session; it \
                 is not sent again. Ask {user} whether their client lost its keys"
            ),
            Ok(_) => format!(
                "{user}: this client no longer has the text (its offline mailbox was replaced, \
                 saved by an older version, or held more than {MAX_UNRESOLVED} messages); send \
                 it again if it matters. The next message starts a new session"
            ),
            Err(e) => e.to_string(),
        }));
        steps
    }

    /// `PREKEYS n`: tops the server's one-time prekeys up when they run low.
    pub fn prekeys(&mut self, on_server: usize, max_frame: usize) -> Vec<Step> {
        self.prekeys_reported = true;
        if on_server >= REFILL_BELOW || !self.is_on() {
            return Vec::new();
        }
        self.refill(on_server, max_frame)
    }

    /// `OK SETPREKEY <n>`: the server holds `n` one-time prekeys of ours (none after a new
    /// mailbox's record replaced an old one's: those were void); tops them up when low. A
    /// server that gives no count holds none unless it reported some (`PREKEYS`).
    pub fn record_stored(&mut self, on_server: Option<usize>, max_frame: usize) -> Vec<Step> {
        let on_server = match on_server {
            Some(n) => n,
            None if self.prekeys_reported => return Vec::new(),
            None => 0,
        };
        self.prekeys(on_server, max_frame)
    }

    /// New one-time prekeys, in `ADDPREKEYS` frames of at most `max_frame` bytes.
    /// `OK ADDPREKEYS n`: the server holds `n` one-time prekeys; goes on refilling, one
    /// frame at a time, until it holds the target.
    pub fn prekeys_added(&mut self, on_server: usize, max_frame: usize) -> Vec<Step> {
        if !self.is_on() {
            return Vec::new();
        }
        self.refill(on_server, max_frame)
    }

    /// One `ADDPREKEYS` frame of new one-time prekeys (as many as fit in `max_frame`, at most
    /// [`REFILL_STEP`]), while the server holds fewer than the target; its `OK ADDPREKEYS`
    /// brings the next. A refill in steps keeps the client answering its user: making 100
    /// keys at once froze it for about a second in a debug build.
    fn refill(&mut self, on_server: usize, max_frame: usize) -> Vec<Step> {
        let key_len = BASE64
            .encode(vec![0; self.mailbox.group().byte_len()])
            .len();
        let item_len = u32::MAX.to_string().len() + 1 + key_len + 1;
        let fits = max_frame.saturating_sub("ADDPREKEYS".len()) / item_len;
        let fresh = match self.mailbox.refill(on_server, fits.clamp(1, REFILL_STEP)) {
            Ok(fresh) => fresh,
            Err(e) => return vec![warn(&format!("could not make new prekeys: {e}"))],
        };
        let items: Vec<(u32, String)> = fresh
            .into_iter()
            .map(|(id, key)| (id, BASE64.encode(key)))
            .collect();
        let batch: Vec<(u32, &str)> = items.iter().map(|(id, key)| (*id, key.as_str())).collect();
        add_prekeys(&batch).into_iter().collect()
    }
}

/// The server's time to live in the largest whole unit that fits: "14 days", "1 hour",
/// "30 seconds" (a test server's TTL is seconds; a day count would read "0 days").
fn time_to_live(seconds: u64) -> String {
    let (count, unit) = [(86_400, "day"), (3_600, "hour"), (60, "minute")]
        .into_iter()
        .find(|&(size, _)| seconds >= size)
        .map_or((seconds, "second"), |(size, unit)| (seconds / size, unit));
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural}")
}

/// One `ADDPREKEYS` frame for `batch`, if it holds any.
fn add_prekeys(batch: &[(u32, &str)]) -> Option<Step> {
    let items = PrekeyList::join(batch.iter().copied());
    let prekeys = PrekeyList::parse(&items).ok()?;
    Some(Step::Frame(Request::AddPrekeys { prekeys }.to_string()))
}

/// The end-to-end layer's actions as steps (it only shows lines here).
fn shown_steps(actions: Vec<Action>) -> Vec<Step> {
    actions
        .into_iter()
        .filter_map(|action| match action {
            Action::Show(notice) => Some(Step::Show(notice)),
            _ => None,
        })
        .collect()
}

/// The start of a sent text, to say which message a line is about.
fn preview(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS).collect()
}

/// What the user is told when the mailbox forgot `sent` to stay within its bound.
fn forgotten_words(sent: &Sent) -> String {
    let which = match &sent.text {
        Some(text) => format!("\"{}\"", preview(text)),
        None => "an older message".to_owned(),
    };
    format!(
        "{}: more than {MAX_UNRESOLVED} offline messages are on their way, so this client \
         stopped following the oldest, {which}: {}",
        sent.peer,
        sent.loss_if_forgotten()
    )
}

fn info(text: &str) -> Step {
    Step::Show(Notice::Info(text.to_owned()))
}

fn warn(text: &str) -> Step {
    Step::Show(Notice::Warning(text.to_owned()))
}

/// Whether `user` is a user of another server (a full address): messages to and from them
/// always travel as offline messages, whether or not they are online.
fn is_elsewhere(user: &str) -> bool {
    server_of(user).is_some()
}

/// How a message from `sender` came to be stored rather than live, for the screen.
fn when_sent(sender: &str) -> &'static str {
    if is_elsewhere(sender) {
        "from another server (such messages always travel as offline messages)"
    } else {
        "while you were offline"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::mailbox::{MAILBOX_FILE, ONE_TIME_PREKEY_TARGET};
    use crate::e2e::{Group, IdentityKey, PinStore};
    use crate::protocol::name::ServerName;

    const LIMITS: MailboxLimits = MailboxLimits {
        ttl_seconds: 14 * 86_400,
        max_messages: 1_000,
        max_bytes: 4 << 20,
    };

    /// One user's client state in a temporary directory, restartable.
    struct Client {
        name: &'static str,
        seed: u8,
        dir: tempfile::TempDir,
        /// The federation name its server announces (`None`: a server that does not
        /// federate).
        home: Option<ServerName>,
    }

    impl Client {
        fn new(name: &'static str, seed: u8) -> Client {
            Client {
                name,
                seed,
                dir: tempfile::tempdir().expect("dir"),
                home: None,
            }
        }

        /// The same user, on a server that announces `home` as its federation name.
        fn at(mut self, home: &str) -> Client {
            self.home = Some(ServerName::parse(home).expect("server name"));
            self
        }

        fn identity(&self) -> IdentityKey {
            IdentityKey::from_fixed_seed(&[self.seed; 32]).expect("key")
        }

        /// The client as it starts: state read back from disk, logged in and opted in.
        fn start(&self) -> (Offline, EndToEnd) {
            let (offline, secure, steps) = self.start_with_steps();
            assert!(matches!(&steps[0], Step::Frame(f) if f.starts_with("SETPREKEY ")));
            (offline, secure)
        }

        /// [`Client::start`], with what connecting asked to send and show.
        fn start_with_steps(&self) -> (Offline, EndToEnd, Vec<Step>) {
            let identity = self.identity();
            let (mailbox, problem) = Mailbox::load_or_create(
                &self.dir.path().join(MAILBOX_FILE),
                &identity,
                self.name,
                self.home.as_ref(),
                Group::Ffdhe2048,
                1_800_000_000,
            )
            .expect("mailbox");
            assert_eq!(problem, None);
            let pins = PinStore::open(&self.dir.path().join("pins")).expect("pins");
            let secure = EndToEnd::new(self.name, identity, pins, Group::Ffdhe2048, false)
                .with_home(self.home.clone());
            let mut offline = Offline::new(mailbox);
            let steps = offline.connected(Some(LIMITS));
            (offline, secure, steps)
        }
    }

    /// The frames among `steps`, sent or not.
    fn frames(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|step| match step {
                Step::Frame(frame) | Step::Sent { frame, .. } => Some(frame.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn three_messages_to_an_offline_user_are_read_in_order_after_a_restart() {
        let (alice, bob) = (Client::new("alice", 1), Client::new("bob", 2));
        // Bob's first login publishes his record and, with none on the server, 100 keys.
        let (mut bob_offline, _) = bob.start();
        let record = BASE64.encode(bob_offline.mailbox.bundle_record().to_bytes());
        // One frame at a time, each under the frame limit; the server's count brings the next.
        let mut added = Vec::new();
        let mut step = frames(&bob_offline.record_stored(Some(0), 4096));
        while !step.is_empty() {
            assert!(step.len() == 1 && step[0].len() <= 4096, "{step:?}");
            added.extend(step);
            let on_server: usize = added.iter().map(|f| f.split(' ').count() - 1).sum();
            step = frames(&bob_offline.prekeys_added(on_server, 4096));
        }
        assert!(added.len() > 1, "{added:?}");
        let first_key = match Request::parse(&added[0]) {
            Ok(Request::AddPrekeys { prekeys }) => {
                prekeys.iter().next().map(|(id, key)| OneTimePrekey {
                    id,
                    key: key.to_owned(),
                })
            }
            other => panic!("{other:?}"),
        };
        let count: usize = added.iter().map(|f| f.split(' ').count() - 1).sum();
        assert_eq!(count, ONE_TIME_PREKEY_TARGET);
        assert!(bob_offline.prekeys(60, 4096).is_empty());
        // However large the frame limit, one step makes at most REFILL_STEP keys.
        let step = frames(&bob_offline.prekeys_added(0, 1 << 20));
        assert_eq!(step.len(), 1);
        assert_eq!(step[0].split(' ').count() - 1, REFILL_STEP);

        // Alice writes three messages while Bob is offline.
        let (mut offline, mut secure) = alice.start();
        let texts = ["one", "two", "three"].map(str::to_owned).to_vec();
        assert_eq!(
            frames(&offline.send("bob", texts)),
            ["GETKEY bob", "BUNDLE bob"]
        );
        let key = bob.identity().public_key().to_base64();
        let mut steps = offline.key_arrived("bob", &key, &mut secure);
        assert!(frames(&steps).is_empty());
        steps.extend(offline.bundle_arrived("bob", &record, first_key.as_ref()));
        let sent = frames(&steps);
        assert_eq!(sent.len(), 3, "{steps:?}");
        let mut refs = Vec::new();
        let mut payloads = Vec::new();
        for frame in &sent {
            let Ok(Request::Send {
                to,
                reference,
                payload,
            }) = Request::parse(frame)
            else {
                panic!("{frame}");
            };
            assert_eq!(to, "bob");
            refs.push(reference.to_owned());
            payloads.push(payload.to_owned());
        }
        assert!(payloads[0].starts_with("X3DH ") && payloads[2].starts_with("RATCHET "));

        // The connection broke before the server confirmed any: the client, started again,
        // sends the same three frames, byte for byte, in order (the server stores a re-sent
        // reference once). Once confirmed, nothing is sent again.
        let (_, _, steps) = alice.start_with_steps();
        assert_eq!(frames(&steps)[1..], sent[..], "{steps:?}");
        for (reference, frame) in refs.iter().zip(&sent) {
            let steps = offline.status(reference, DeliveryState::Queued { id: 1 }, "bob");
            assert!(frames(&steps).is_empty(), "{frame}: {steps:?}");
        }
        let (_, _, steps) = alice.start_with_steps();
        assert_eq!(frames(&steps).len(), 1, "only SETPREKEY: {steps:?}");

        // Bob's client starts again (state from disk) and gets the mail.
        let (mut bob_offline, mut bob_secure) = bob.start();
        let mut steps = Vec::new();
        for (id, payload) in payloads.iter().enumerate() {
            steps.extend(bob_offline.mail(
                id as u64 + 1,
                "alice",
                1_800_000_000,
                payload.clone(),
                &bob_secure,
            ));
        }
        // Alice is a stranger to Bob: a message request, told once, nothing fetched,
        // opened or acknowledged until he accepts.
        assert!(frames(&steps).is_empty(), "{steps:?}");
        assert!(
            matches!(&steps[..], [Step::Show(Notice::Info(text))]
                if text.starts_with("message request: alice wrote to you")),
            "{steps:?}"
        );
        assert!(bob_offline
            .mail(1, "alice", 1_800_000_000, payloads[0].clone(), &bob_secure)
            .is_empty());
        assert_eq!(bob_offline.accept("mallory"), None);
        let accepted = bob_offline.accept("alice").expect("waiting");
        assert_eq!(
            frames(&accepted),
            ["GETKEY alice"],
            "held until the key is pinned"
        );
        let key = alice.identity().public_key().to_base64();
        let steps = bob_offline.key_arrived("alice", &key, &mut bob_secure);
        let read: Vec<&str> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Received {
                    from, text, trust, ..
                } => {
                    assert_eq!((from.as_str(), *trust), ("alice", Trust::FirstUse));
                    Some(text.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(read, ["one", "two", "three"]);
        assert_eq!(frames(&steps), ["ACK 1", "ACK 2", "ACK 3"]);
        // A mail sent again after the restart is only acknowledged again.
        let (mut bob_offline, bob_secure) = bob.start();
        let again = bob_offline.mail(2, "alice", 1_800_000_000, payloads[1].clone(), &bob_secure);
        assert_eq!(again, [Step::Frame("ACK 2".to_owned())]);

        // Alice sees each delivered, by its text, and acknowledges the receipts.
        for (reference, text) in refs.iter().zip(["one", "two", "three"]) {
            let steps = offline.status(reference, DeliveryState::Delivered, "bob");
            assert_eq!(
                steps,
                [
                    Step::Delivery {
                        to: "bob".to_owned(),
                        state: format!("delivered (\"{text}\")"),
                    },
                    Step::Frame(format!("ACKSTATUS {reference}")),
                ]
            );
        }
        // Her next message goes in the same session: no key or bundle fetched.
        let next = frames(&offline.send("bob", vec!["four".to_owned()]));
        assert!(next.len() == 1 && next[0].contains(" RATCHET "), "{next:?}");
    }

    /// The private messages among `steps`, as `(from, text)`.
    fn received(steps: &[Step]) -> Vec<(&str, &str)> {
        steps
            .iter()
            .filter_map(|step| match step {
                Step::Received { from, text, .. } => Some((from.as_str(), text.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The safety number `secure` shows with `user` (`/fingerprint user`, the server
    /// answering with `key`).
    fn safety_number_shown(secure: &mut EndToEnd, user: &str, key: &IdentityPublicKey) -> String {
        assert_eq!(
            secure.fingerprint(Some(user)),
            [Action::FetchKey(user.to_owned())]
        );
        let prefix = format!("safety number with {user}: ");
        secure
            .key_arrived(user, &key.to_base64())
            .iter()
            .find_map(|action| match action {
                Action::Show(Notice::Info(text)) => text
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.lines().next())
                    .map(str::to_owned),
                _ => None,
            })
            .expect("a safety number shown")
    }

    /// Across servers each client spells the two users differently (alice on a.test calls
    /// herself `alice` and him `bob@b.test`; bob on b.test calls himself `bob` and her
    /// `alice@a.test`). With the names its server announced, each binds the same full
    /// addresses: bob's prekey signatures verify at alice's, her first message and his
    /// reply open, and both show one safety number.
    #[test]
    fn users_of_two_servers_write_offline_reply_and_see_one_safety_number() {
        let alice = Client::new("alice", 1).at("a.test");
        let bob = Client::new("bob", 2).at("b.test");
        let (alice_key, bob_key) = (alice.identity().public_key(), bob.identity().public_key());
        let (bob_offline, _) = bob.start();
        let record = BASE64.encode(bob_offline.mailbox.bundle_record().to_bytes());

        // Alice writes to bob, who is offline (across servers, always offline delivery).
        let (mut offline, mut secure) = alice.start();
        let asked = frames(&offline.send("bob@b.test", vec!["hello bob".to_owned()]));
        assert_eq!(asked, ["GETKEY bob@b.test", "BUNDLE bob@b.test"]);
        let mut steps = offline.key_arrived("bob@b.test", &bob_key.to_base64(), &mut secure);
        steps.extend(offline.bundle_arrived("bob@b.test", &record, None));
        let (_, first) = one_send(&steps);
        assert!(first.starts_with("X3DH "), "{steps:?}");

        // Bob's client reads it (alice's key pinned, so no message request) and replies.
        let (mut bob_offline, mut bob_secure) = bob.start();
        bob_secure
            .offline_key("alice@a.test", &alice_key, &mut Vec::new())
            .expect("pin alice");
        let steps = bob_offline.mail(1, "alice@a.test", 1_800_000_000, first, &bob_secure);
        assert_eq!(
            received(&steps),
            [("alice@a.test", "hello bob")],
            "{steps:?}"
        );
        assert_eq!(frames(&steps), ["ACK 1"]);
        let (_, reply) = one_send(&bob_offline.send("alice@a.test", vec!["hi alice".to_owned()]));
        assert!(reply.starts_with("RATCHET "));

        // Alice reads the reply in the session her first message made.
        let steps = offline.mail(1, "bob@b.test", 1_800_000_100, reply, &secure);
        assert_eq!(received(&steps), [("bob@b.test", "hi alice")], "{steps:?}");

        // One safety number at both ends, that of the full addresses.
        let at_alice = safety_number_shown(&mut secure, "bob@b.test", &bob_key);
        let at_bob = safety_number_shown(&mut bob_secure, "alice@a.test", &alice_key);
        assert_eq!(at_alice, at_bob);
        assert_eq!(
            at_alice,
            crate::e2e::safety_number("alice@a.test", &alice_key, "bob@b.test", &bob_key)
        );
    }

    /// Without an announced name (a server that does not federate) nothing is qualified:
    /// safety numbers stay those of the bare names, as they were before federation.
    #[test]
    fn without_a_server_name_safety_numbers_bind_the_bare_names() {
        let alice = Client::new("alice", 1);
        let bob_key = IdentityKey::from_fixed_seed(&[2; 32])
            .expect("key")
            .public_key();
        let (_, mut secure) = alice.start();
        assert_eq!(
            safety_number_shown(&mut secure, "bob", &bob_key),
            crate::e2e::safety_number("alice", &alice.identity().public_key(), "bob", &bob_key)
        );
    }

    #[test]
    fn a_changed_key_holds_the_texts_until_accept() {
        let (alice, bob, mallory) = (
            Client::new("alice", 1),
            Client::new("bob", 2),
            Client::new("mallory", 3),
        );
        let (mut offline, mut secure) = alice.start();
        let mut none = Vec::new();
        let bob_key = bob.identity().public_key();
        assert!(secure.offline_key("bob", &bob_key, &mut none).is_ok());
        offline.send("bob", vec!["one".to_owned(), "two".to_owned()]);
        let other = mallory.identity().public_key().to_base64();
        let steps = offline.key_arrived("bob", &other, &mut secure);
        assert!(frames(&steps).is_empty(), "{steps:?}");
        assert!(matches!(
            &steps[..],
            [Step::Show(Notice::Warning(text))] if text.contains("IDENTITY KEY HAS CHANGED")
        ));
        assert_eq!(secure.waiting(), 2, "held, not dropped");
        assert_eq!(secure.trust_words("bob"), "KEY CHANGED");
    }

    /// The single `SEND` among `steps`: (ref, payload).
    fn one_send(steps: &[Step]) -> (String, String) {
        let sent: Vec<(String, String)> = frames(steps)
            .iter()
            .filter_map(|frame| match Request::parse(frame) {
                Ok(Request::Send {
                    reference, payload, ..
                }) => Some((reference.to_owned(), payload.to_owned())),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 1, "{steps:?}");
        sent[0].clone()
    }

    #[test]
    fn a_message_the_recipient_cannot_read_is_sent_again_once_in_a_new_session() {
        let (alice, bob) = (Client::new("alice", 1), Client::new("bob", 2));
        let (bob_offline, _) = bob.start();
        let record = BASE64.encode(bob_offline.mailbox.bundle_record().to_bytes());
        let bob_key = bob.identity().public_key().to_base64();
        let (mut offline, mut secure) = alice.start();
        let mut start = |offline: &mut Offline, text: &str| {
            let asked = frames(&offline.send("bob", vec![text.to_owned()]));
            assert_eq!(asked, ["GETKEY bob", "BUNDLE bob"]);
            let mut steps = offline.key_arrived("bob", &bob_key, &mut secure);
            steps.extend(offline.bundle_arrived("bob", &record, None));
            one_send(&steps)
        };
        let (first_ref, first) = start(&mut offline, "please read me");
        assert!(first.starts_with("X3DH "));

        // Bob's client lost its state: a fresh mailbox cannot open the message. It says so
        // and acknowledges it as unreadable, so it does not come back.
        std::fs::remove_file(bob.dir.path().join(MAILBOX_FILE)).expect("lose bob's state");
        let (mut bob_offline, mut bob_secure) = bob.start();
        bob_secure
            .offline_key("alice", &alice.identity().public_key(), &mut Vec::new())
            .expect("pin alice");
        let steps = bob_offline.mail(7, "alice", 1_800_000_000, first, &bob_secure);
        assert_eq!(frames(&steps), ["ACK 7 unreadable"], "{steps:?}");

        // Alice is told, forgets her session, and sends the text again from bob's prekeys.
        let steps = offline.status(&first_ref, DeliveryState::Unreadable, "bob");
        assert_sent_again(&offline, &steps, &first_ref);
        let mut steps = offline.key_arrived("bob", &bob_key, &mut secure);
        let record = BASE64.encode(bob_offline.mailbox.bundle_record().to_bytes());
        steps.extend(offline.bundle_arrived("bob", &record, None));
        let (second_ref, second) = one_send(&steps);
        assert_ne!(second_ref, first_ref);
        let opened = bob_offline.mail(8, "alice", 1_800_000_001, second, &bob_secure);
        assert!(
            opened.iter().any(|step| matches!(
                step,
                Step::Received { text, .. } if text == "please read me"
            )),
            "{opened:?}"
        );
        assert_eq!(frames(&opened), ["ACK 8"]);

        // Had the second try failed too, nothing would be sent a third time.
        let steps = offline.status(&second_ref, DeliveryState::Unreadable, "bob");
        assert_eq!(frames(&steps), [format!("ACKSTATUS {second_ref}")]);
    }

    /// Whether `steps` show `words` (a line, or a delivery state).
    fn shows(steps: &[Step], words: &str) -> bool {
        steps.iter().any(|step| match step {
            Step::Show(Notice::Info(text) | Notice::Warning(text)) => text.contains(words),
            Step::Delivery { state, .. } => state.contains(words),
            _ => false,
        })
    }

    /// Alice's client, with no session with bob yet, sends `text` to offline bob as a first
    /// message from his published `record`: (ref, payload).
    fn first_message(
        offline: &mut Offline,
        secure: &mut EndToEnd,
        bob: &Client,
        record: &str,
        text: &str,
    ) -> (String, String) {
        let asked = frames(&offline.send("bob", vec![text.to_owned()]));
        assert_eq!(asked, ["GETKEY bob", "BUNDLE bob"]);
        let key = bob.identity().public_key().to_base64();
        let mut steps = offline.key_arrived("bob", &key, secure);
        steps.extend(offline.bundle_arrived("bob", record, None));
        // The server had no one-time prekey of bob's to hand out: said, and sent anyway.
        assert!(
            shows(&steps, "bob has no one-time prekeys left on the server"),
            "{steps:?}"
        );
        let (reference, payload) = one_send(&steps);
        assert!(payload.starts_with("X3DH "), "{payload}");
        (reference, payload)
    }

    /// `unreadable` for `reference`, to bob: acknowledged, the session with bob forgotten,
    /// and bob's key and prekeys asked for again to send the text in a new session.
    fn assert_sent_again(offline: &Offline, steps: &[Step], reference: &str) {
        assert_eq!(
            frames(steps),
            [
                format!("ACKSTATUS {reference}"),
                "GETKEY bob".to_owned(),
                "BUNDLE bob".to_owned()
            ]
        );
        assert!(
            !offline.mailbox.has_session("bob"),
            "the session is forgotten"
        );
    }

    /// Bob's record as his client publishes it.
    fn record_of(offline: &Offline) -> String {
        BASE64.encode(offline.mailbox.bundle_record().to_bytes())
    }

    #[test]
    fn previews_survive_a_restart_of_the_sender() {
        let (alice, bob) = (Client::new("alice", 1), Client::new("bob", 2));
        let record = record_of(&bob.start().0);
        let (mut offline, mut secure) = alice.start();
        let (reference, _) = first_message(
            &mut offline,
            &mut secure,
            &bob,
            &record,
            "the meeting is at 10",
        );
        let (mut offline, _) = alice.start();
        let queued = offline.status(&reference, DeliveryState::Queued { id: 3 }, "bob");
        assert!(
            shows(
                &queued,
                "queued (offline delivery) (\"the meeting is at 10\")"
            ),
            "{queued:?}"
        );
        let (mut offline, _) = alice.start();
        let expired = offline.status(&reference, DeliveryState::Expired, "bob");
        assert!(
            shows(&expired, "NOT delivered (\"the meeting is at 10\")"),
            "{expired:?}"
        );
        assert_eq!(frames(&expired), [format!("ACKSTATUS {reference}")]);
        // Final: the text is gone from the file.
        let (offline, _) = alice.start();
        assert!(offline.mailbox.sent(&reference).is_none());
    }

    #[test]
    fn after_restarts_of_the_sender_an_unreadable_message_is_sent_again_once_and_opens() {
        let (alice, bob) = (Client::new("alice", 1), Client::new("bob", 2));
        let (mut bob_old, _) = bob.start();
        let record = record_of(&bob_old);
        // One-time prekeys bob published before he lost his state: the server keeps them.
        let stale = match frames(&bob_old.record_stored(Some(0), 4096))
            .first()
            .map(|f| Request::parse(f))
        {
            Some(Ok(Request::AddPrekeys { prekeys })) => {
                prekeys.iter().next().map(|(id, key)| OneTimePrekey {
                    id,
                    key: key.to_owned(),
                })
            }
            other => panic!("{other:?}"),
        };
        let (mut offline, mut secure) = alice.start();
        let (first_ref, first) =
            first_message(&mut offline, &mut secure, &bob, &record, "please read me");
        offline.status(&first_ref, DeliveryState::Queued { id: 7 }, "bob");

        // Bob loses his mailbox file; his fresh client cannot open it and says so.
        std::fs::remove_file(bob.dir.path().join(MAILBOX_FILE)).expect("lose bob's state");
        let (mut bob_offline, mut bob_secure) = bob.start();
        bob_secure
            .offline_key("alice", &alice.identity().public_key(), &mut Vec::new())
            .expect("pin alice");
        let steps = bob_offline.mail(7, "alice", 1_800_000_000, first, &bob_secure);
        assert_eq!(frames(&steps), ["ACK 7 unreadable"], "{steps:?}");

        // Alice's client was restarted since it sent the message: it still has the text.
        let (mut offline, _) = alice.start();
        let steps = offline.status(&first_ref, DeliveryState::Unreadable, "bob");
        assert!(
            shows(&steps, "NOT readable by bob's client") && shows(&steps, "(\"please read me\")"),
            "{steps:?}"
        );
        assert!(shows(
            &steps,
            "sending it again in a new end-to-end session"
        ));
        assert_sent_again(&offline, &steps, &first_ref);

        // It is restarted again before bob's prekeys arrived: the text waited in the file,
        // and goes now, once.
        let (mut offline, mut secure, steps) = alice.start_with_steps();
        assert!(shows(
            &steps,
            "sending again, in a new end-to-end session, 1 offline"
        ));
        assert_eq!(
            frames(&steps)[1..],
            ["GETKEY bob", "BUNDLE bob"],
            "{steps:?}"
        );
        // The server says `unreadable` again (alice's receipt was lost): nothing more goes.
        let again = offline.status(&first_ref, DeliveryState::Unreadable, "bob");
        assert_eq!(
            frames(&again),
            [format!("ACKSTATUS {first_ref}")],
            "{again:?}"
        );
        // The server hands out bob's new record with one of his old one-time prekeys, which
        // his fresh mailbox does not hold: the new session starts without it.
        let key = bob.identity().public_key().to_base64();
        let mut steps = offline.key_arrived("bob", &key, &mut secure);
        steps.extend(offline.bundle_arrived("bob", &record_of(&bob_offline), stale.as_ref()));
        assert!(
            shows(&steps, "bob's client lost its offline state"),
            "{steps:?}"
        );
        let (second_ref, second) = one_send(&steps);
        assert_ne!(second_ref, first_ref);
        assert!(second.starts_with("X3DH "), "a new session: {second}");
        // The server says `unreadable` for the first once more (alice's ACKSTATUS was lost):
        // acknowledged, and the second try's session is kept.
        let again = offline.status(&first_ref, DeliveryState::Unreadable, "bob");
        assert_eq!(frames(&again), [format!("ACKSTATUS {first_ref}")]);
        assert!(!shows(&again, "no longer has the text"), "{again:?}");
        assert!(
            offline.mailbox.has_session("bob"),
            "the new session is kept"
        );

        // Bob, with his fresh mailbox, opens it.
        let opened = bob_offline.mail(8, "alice", 1_800_000_001, second, &bob_secure);
        assert!(
            opened.iter().any(|step| matches!(
                step,
                Step::Received { text, .. } if text == "please read me"
            )),
            "{opened:?}"
        );
        assert_eq!(frames(&opened), ["ACK 8"]);

        // Had the second try come back unreadable too, after yet another restart, it is not
        // sent a third time, and that is said.
        let (mut offline, _, steps) = alice.start_with_steps();
        assert_eq!(
            frames(&steps).len(),
            2,
            "SETPREKEY and the unconfirmed SEND: {steps:?}"
        );
        offline.status(&second_ref, DeliveryState::Queued { id: 8 }, "bob");
        let (mut offline, _) = alice.start();
        let steps = offline.status(&second_ref, DeliveryState::Unreadable, "bob");
        assert_eq!(
            frames(&steps),
            [format!("ACKSTATUS {second_ref}")],
            "{steps:?}"
        );
        assert!(
            shows(&steps, "could not read it a second time"),
            "{steps:?}"
        );
        let (offline, _) = alice.start();
        assert!(offline.mailbox.resending().is_empty());
        assert!(offline.mailbox.sent(&second_ref).is_none());
    }

    #[test]
    fn a_text_waiting_to_be_sent_again_goes_once_after_a_reconnect() {
        let (alice, bob) = (Client::new("alice", 1), Client::new("bob", 2));
        let record = record_of(&bob.start().0);
        let (mut offline, mut secure) = alice.start();
        let (reference, _) = first_message(&mut offline, &mut secure, &bob, &record, "again");
        offline.status(&reference, DeliveryState::Queued { id: 1 }, "bob");
        offline.status(&reference, DeliveryState::Unreadable, "bob");
        offline.send("bob", vec!["typed meanwhile".to_owned()]);
        // The connection breaks while bob's prekeys are fetched: the caller gets back only
        // what was typed; the mailbox's text is sent by the next connection.
        assert_eq!(
            offline.connection_lost(),
            [("bob".to_owned(), "typed meanwhile".to_owned())]
        );
        let steps = offline.connected(Some(LIMITS));
        assert_eq!(
            frames(&steps)[1..],
            ["GETKEY bob", "BUNDLE bob"],
            "{steps:?}"
        );
        // bob's prekeys cannot be had: it is not sent, said, and not tried again.
        let steps = offline.bundle_unavailable("bob", "no prekeys");
        assert!(shows(&steps, "1 message(s) not sent"), "{steps:?}");
        assert!(offline.mailbox.resending().is_empty());
        let steps = offline.connected(Some(LIMITS));
        assert_eq!(frames(&steps).len(), 1, "only SETPREKEY: {steps:?}");
    }

    #[test]
    fn the_time_to_live_is_said_in_its_largest_whole_unit() {
        assert_eq!(time_to_live(14 * 86_400), "14 days");
        assert_eq!(time_to_live(86_400 + 5), "1 day");
        assert_eq!(time_to_live(7_200), "2 hours");
        assert_eq!(time_to_live(90), "1 minute");
        assert_eq!(time_to_live(1), "1 second");
    }

    #[test]
    fn a_bundle_signed_by_another_key_sends_nothing() {
        let (alice, bob, mallory) = (
            Client::new("alice", 1),
            Client::new("bob", 2),
            Client::new("mallory", 3),
        );
        let (mallory_offline, _) = mallory.start();
        let forged = BASE64.encode(mallory_offline.mailbox.bundle_record().to_bytes());
        let (mut offline, mut secure) = alice.start();
        offline.send("bob", vec!["secret".to_owned()]);
        let key = bob.identity().public_key().to_base64();
        let mut steps = offline.key_arrived("bob", &key, &mut secure);
        steps.extend(offline.bundle_arrived("bob", &forged, None));
        assert!(frames(&steps).is_empty(), "{steps:?}");
        assert!(steps.iter().any(|step| matches!(
            step,
            Step::Show(Notice::Warning(text)) if text.contains("1 message(s) not sent")
        )));
    }

    /// How many one-time prekeys the `ADDPREKEYS` frames among `steps` publish.
    fn published(steps: &[Step]) -> usize {
        frames(steps)
            .iter()
            .filter_map(|f| f.strip_prefix("ADDPREKEYS "))
            .map(|items| items.split(' ').count())
            .sum()
    }

    #[test]
    fn the_servers_prekey_count_decides_the_refill_and_without_one_prekeys_does() {
        const FRAME: usize = 1 << 16;
        let alice = Client::new("alice", 1);
        let (mut offline, _) = alice.start();
        offline.connected(Some(LIMITS));
        // `OK SETPREKEY n`: refilled below the mark, not above it.
        assert_eq!(
            published(&offline.record_stored(Some(0), FRAME)),
            REFILL_STEP
        );
        assert!(offline.record_stored(Some(REFILL_BELOW), FRAME).is_empty());
        // A server that gives no count: none held unless `PREKEYS` said otherwise.
        offline.connected(Some(LIMITS));
        assert_eq!(published(&offline.record_stored(None, FRAME)), REFILL_STEP);
        offline.connected(Some(LIMITS));
        assert!(offline.prekeys(REFILL_BELOW, FRAME).is_empty());
        assert!(offline.record_stored(None, FRAME).is_empty());
    }

    #[test]
    fn final_states_are_shown_then_acknowledged_and_a_server_without_mailbox_is_said_once() {
        let alice = Client::new("alice", 1);
        let (mut offline, _) = alice.start();
        let steps = offline.status("r1", DeliveryState::Refused(Refusal::Quota), "bob");
        assert!(
            matches!(&steps[0], Step::Delivery { state, .. } if state.starts_with("refused: quota"))
        );
        assert_eq!(steps[1], Step::Frame("ACKSTATUS r1".to_owned()));
        let steps = offline.status(
            "r3",
            DeliveryState::Refused(Refusal::NoSuchServer),
            "bob@b.test",
        );
        assert_eq!(
            steps[0],
            Step::Delivery {
                to: "bob@b.test".to_owned(),
                state: "not sent: b.test is not a server this server is linked with".to_owned()
            }
        );
        assert_eq!(steps[1], Step::Frame("ACKSTATUS r3".to_owned()));
        let queued = offline.status("r2", DeliveryState::Queued { id: 7 }, "bob");
        assert_eq!(
            queued,
            [Step::Delivery {
                to: "bob".to_owned(),
                state: "queued (offline delivery)".to_owned()
            }]
        );
        offline.send("bob", vec!["a".to_owned(), "b".to_owned()]);
        assert!(!offline.has_session("bob"));
        let waiting = offline.connection_lost();
        assert_eq!(
            waiting,
            [
                ("bob".to_owned(), "a".to_owned()),
                ("bob".to_owned(), "b".to_owned())
            ]
        );
        assert!(!offline.wants_key("bob"));
        assert_eq!(offline.connected(None).len(), 1);
        assert!(offline.connected(None).is_empty());
        assert!(frames(&offline.send("bob", vec!["hi".to_owned()])).is_empty());
    }
}
