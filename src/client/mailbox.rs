//! The client's offline mailbox: everything it must remember between runs to write to, and
//! read from, users who are offline (X3DH-style prekeys and one Double Ratchet per peer, see
//! `src/e2e/prekeys.rs` and `src/e2e/ratchet.rs`; the wire contract is `report/protocol.md`
//! §11.10).
//!
//! One file, [`MAILBOX_FILE`] in the per-server user directory, mode 0600, replaced atomically
//! after every change ([`crate::files::write_atomically`]). It holds secrets (the identity DH
//! key, the signed prekeys, the one-time prekeys not yet used, the ratchet states) and is never
//! logged: `Debug` shows counts only. Layout, every field `F()`-framed (§11.1):
//!
//! ```text
//! F("securechat/mailbox/v2") ‖ F(identity DH key) ‖ F(signed prekey) ‖ F(u64be created, unix s)
//! ‖ F(previous signed prekey, or empty) ‖ F(u32be next one-time id)
//! ‖ F(u32be n) ‖ n × F(one-time prekey)
//! ‖ F(u32be n) ‖ n × (F(peer) ‖ F(ratchet state))
//! ‖ F(u32be n) ‖ n × F(u64be MAIL id processed)
//! ‖ F(u32be n) ‖ n × (F(ref) ‖ F(peer) ‖ F(u8 stage) ‖ F(u8 flags) ‖ F(text) ‖ F(payload))
//! ```
//!
//! The last list is my sent messages not yet resolved, oldest first. `stage` is 0 while the
//! server has not confirmed storing it (`payload` is then the sealed `SEND` payload, else
//! empty), 1 once it is queued, 2 once it came back unreadable and waits to be sent again in
//! a new session. `flags`: 1, it is already such a second try (never sent a third time); 2,
//! `text` is the text typed (else empty: the record came from a v1 file).
//!
//! The first format, `securechat/mailbox/v1`, is still read (and written back as v2): the same
//! up to the last list, whose entries were `F(ref) ‖ F(peer) ‖ F(payload, empty once
//! queued)`, without the text. Its messages keep their state; only their texts are unknown.
//!
//! **Plaintext at rest, a stated trade-off.** Each message I sent by offline delivery is kept
//! here *as typed*, with its recipient, until its final state (delivered, expired, refused, or
//! unreadable and sent again), then deleted. That is what lets a restarted client still say
//! which message a `STATUS` is about, and send it again in a new session when the recipient's
//! client could not read it. The file is 0600 and already holds the secrets that open these
//! conversations, so anyone who can read it gains little more; a user who wants no unsent
//! text on disk waits until their messages are delivered. Bounded: [`MAX_UNRESOLVED`]
//! messages of at most [`MAX_PLAINTEXT_LEN`] bytes each (sealing refuses longer texts), 8 MiB
//! of text at the very worst. Past the bound the oldest message the server already stores
//! is forgotten first (its final state is then shown without its text, and it cannot be sent
//! again); the caller tells the user which ([`Mailbox::remember_sent`]).
//!
//! Names: sessions and sent messages are keyed by the server's spelling of the peer (bare
//! for users of my server), and nothing in the file names me. What the cryptography binds
//! (my prekey signatures, each session's AD) are the names qualified with my server's
//! federation name when it announced one (`src/client/end_to_end.rs`, names in the
//! cryptography); my keys are signed again for that name at every load.
//!
//! Rules it keeps:
//! * Every change is saved before the call returns, so the caller acknowledges a `MAIL` (or
//!   sends a `SEND`) only once the state it produced is on disk. If saving fails the call
//!   fails: the mail is not acknowledged and comes again at the next login, when the state is
//!   read back from the file as it was before.
//! * A ratchet is stored as bytes and decoded for each use, so a message that fails to open
//!   leaves the stored state exactly as it was.
//! * A one-time prekey's secret is deleted once a first message has used it: a replayed first
//!   message finds nothing ([`E2eError::UnknownPrekey`]).
//! * A file that cannot be read or parsed is replaced by a fresh mailbox, and the caller is told
//!   in words (messages sent to the old prekeys cannot be read any more); never a panic.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::e2e::{
    encode_fields, initiate, respond, E2eError, Fields, Group, IdentityDhKey, IdentityKey,
    IdentityPublicKey, OneTimePrekey, Party, Payload, PrekeyBundle, Ratchet, SessionId,
    SignedPrekey, MAX_PAYLOAD_LEN, MAX_PLAINTEXT_LEN,
};
use crate::files::write_atomically;
use crate::protocol::name::{Address, ServerName};

/// The mailbox file inside a user directory.
pub const MAILBOX_FILE: &str = "mailbox";

/// How many one-time prekeys the server should hold after a refill. Each first message from
/// a new contact uses one; 100 covers a long absence without making `ADDPREKEYS` costly.
pub const ONE_TIME_PREKEY_TARGET: usize = 100;

/// Below this many one-time prekeys on the server (`PREKEYS n`), refill to
/// [`ONE_TIME_PREKEY_TARGET`] (the server warns the owner at the same threshold).
pub const REFILL_BELOW: usize = 35;

/// A signed prekey older than this (7 days) is replaced at the next start; the previous one
/// is kept until the following rotation, so first messages made from it still open.
pub const SIGNED_PREKEY_LIFETIME_SECS: u64 = 7 * 24 * 60 * 60;

/// One-time prekey secrets kept at most: the server keeps 200, and keys handed out but never
/// used pile up; beyond this the oldest (lowest id) are dropped.
const MAX_ONE_TIME_PREKEYS: usize = 300;

/// `MAIL` ids remembered as processed, newest kept: the server re-sends only what was not
/// acknowledged, so this needs to cover one login's worth of mail at most.
const MAX_PROCESSED: usize = 1_000;

/// Sent messages remembered until the server reports them delivered, expired, refused or
/// unreadable; the server's own queue limit per recipient is 1,000 by default.
pub const MAX_UNRESOLVED: usize = 1_000;

/// First field of the file: names the format and its version.
const FILE_LABEL: &[u8] = b"securechat/mailbox/v2";

/// First field of a file in the first format, still read (see the module docs).
const FILE_LABEL_V1: &[u8] = b"securechat/mailbox/v1";

/// `flags` bit of a sent message: already a second try.
const FLAG_RETRY: u8 = 1;

/// `flags` bit of a sent message: its text is known.
const FLAG_TEXT: u8 = 2;

/// My offline-delivery state for one account on one server.
pub struct Mailbox {
    /// Where it is saved.
    path: PathBuf,
    /// My user name as the cryptography binds it (signed into my prekeys, bound into every
    /// session's AD): qualified with [`Mailbox::home`] when there is one.
    me: String,
    /// My server's federation name, if it announced one: peers' names are qualified with it
    /// before they are bound (`src/client/end_to_end.rs`, names in the cryptography), while
    /// sessions stay keyed by the server's spelling.
    home: Option<ServerName>,
    /// My Ed25519 identity public key (for the session's AD).
    my_identity: IdentityPublicKey,
    /// `IK`: my long-term identity DH key.
    identity_dh: IdentityDhKey,
    /// `SPK`: the signed prekey published now.
    signed_prekey: SignedPrekey,
    /// When `signed_prekey` was made, unix seconds.
    signed_prekey_created: u64,
    /// The signed prekey before the last rotation, for first messages still in flight.
    previous_prekey: Option<SignedPrekey>,
    /// The id the next one-time prekey gets.
    next_one_time_id: u32,
    /// One-time prekeys not yet used, by id. Invariant: at most [`MAX_ONE_TIME_PREKEYS`].
    one_time_prekeys: BTreeMap<u32, OneTimePrekey>,
    /// One ratchet per peer, saved form ([`Ratchet::to_bytes`]).
    sessions: HashMap<String, Vec<u8>>,
    /// `MAIL` ids already processed, oldest first. Invariant: at most [`MAX_PROCESSED`].
    processed: VecDeque<u64>,
    /// My sent messages not yet resolved, oldest first. Invariant: at most
    /// [`MAX_UNRESOLVED`], each reference once.
    unresolved: VecDeque<Sent>,
}

/// One of my offline messages on its way. No `Debug`: it holds what the user typed.
pub struct Sent {
    /// Its `SEND` reference.
    reference: String,
    /// The recipient.
    pub peer: String,
    /// What the user typed: to show which message a `STATUS` is about, and to send it again
    /// if the recipient's client cannot read it, after a restart too. `None` only for a
    /// message remembered by a v1 file, which did not keep texts.
    pub text: Option<String>,
    /// Already a second try after an `unreadable`: not sent a third time.
    pub retry: bool,
    /// Where it is on its way.
    stage: Stage,
}

/// Where one of my offline messages is on its way.
enum Stage {
    /// Sent, not yet confirmed stored (`STATUS … queued`), with its sealed payload: a `SEND`
    /// cut off by a broken connection or a server crash is sent again, byte for byte, and the
    /// server stores a re-sent reference once.
    Unconfirmed(String),
    /// The server stores it, until it is delivered or expires.
    Queued,
    /// The recipient's client could not read it: it waits to be sent again, once, in a new
    /// session (its `unreadable` is already acknowledged, so only this record remembers it).
    Resending,
}

impl Sent {
    /// Whether it came back unreadable and waits to be sent again.
    pub fn is_resending(&self) -> bool {
        matches!(self.stage, Stage::Resending)
    }

    /// What is lost, in words, when the mailbox stops following it (to stay within
    /// [`MAX_UNRESOLVED`]).
    pub fn loss_if_forgotten(&self) -> &'static str {
        match self.stage {
            Stage::Queued => {
                "its final state will be shown without its text, and it is not sent again if \
                 their client cannot read it"
            }
            Stage::Unconfirmed(_) => {
                "if the server did not get it, it is NOT sent again after a reconnect"
            }
            Stage::Resending => "it was waiting to be sent again, and is NOT sent",
        }
    }
}

impl Stage {
    /// Its byte and its payload field in the file.
    fn to_fields(&self) -> (u8, &str) {
        match self {
            Stage::Unconfirmed(payload) => (0, payload),
            Stage::Queued => (1, ""),
            Stage::Resending => (2, ""),
        }
    }

    /// Reads [`Stage::to_fields`]'s form.
    fn from_fields(byte: u8, payload: String) -> Option<Stage> {
        match (byte, payload.is_empty()) {
            (0, false) => Some(Stage::Unconfirmed(payload)),
            (1, true) => Some(Stage::Queued),
            (2, true) => Some(Stage::Resending),
            _ => None,
        }
    }
}

impl Mailbox {
    /// Loads the mailbox at `path`, or makes a fresh one (in `group`) when there is none or it
    /// cannot be used; `now` is unix seconds, to rotate an old signed prekey. The second value
    /// is a problem to show the user: the old file could not be read and was replaced.
    /// `me` is my name as the server spells it; `home` my server's federation name, if it
    /// announced one (then my keys are signed for, and sessions bind, full addresses).
    /// Nothing in the file depends on `home`: the signatures are made again at each load.
    pub fn load_or_create(
        path: &Path,
        identity: &IdentityKey,
        me: &str,
        home: Option<&ServerName>,
        group: Group,
        now: u64,
    ) -> Result<(Mailbox, Option<String>), E2eError> {
        let bound = Address::qualified(me, home);
        let me = bound.as_str();
        let (mut mailbox, problem) = match std::fs::read(path) {
            Ok(bytes) => match Mailbox::decode(path, identity, me, home, &bytes) {
                Ok(mailbox) => (mailbox, None),
                Err(e) => (
                    Mailbox::fresh(path, identity, me, home, group, now)?,
                    Some(replaced(path, &e.to_string())),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (Mailbox::fresh(path, identity, me, home, group, now)?, None)
            }
            Err(e) => (
                Mailbox::fresh(path, identity, me, home, group, now)?,
                Some(replaced(path, &e.to_string())),
            ),
        };
        if now.saturating_sub(mailbox.signed_prekey_created) >= SIGNED_PREKEY_LIFETIME_SECS {
            let id = mailbox.signed_prekey.id().wrapping_add(1);
            let fresh = SignedPrekey::generate(identity, me, id, mailbox.group())?;
            mailbox.previous_prekey = Some(std::mem::replace(&mut mailbox.signed_prekey, fresh));
            mailbox.signed_prekey_created = now;
        }
        mailbox.save()?;
        Ok((mailbox, problem))
    }

    /// A new mailbox: a new identity DH key and signed prekey, nothing else. `me` is my
    /// name as bound (already qualified).
    fn fresh(
        path: &Path,
        identity: &IdentityKey,
        me: &str,
        home: Option<&ServerName>,
        group: Group,
        now: u64,
    ) -> Result<Mailbox, E2eError> {
        Ok(Mailbox {
            path: path.to_owned(),
            me: me.to_owned(),
            home: home.cloned(),
            my_identity: identity.public_key(),
            identity_dh: IdentityDhKey::generate(identity, me, group)?,
            signed_prekey: SignedPrekey::generate(identity, me, 1, group)?,
            signed_prekey_created: now,
            previous_prekey: None,
            next_one_time_id: 1,
            one_time_prekeys: BTreeMap::new(),
            sessions: HashMap::new(),
            processed: VecDeque::new(),
            unresolved: VecDeque::new(),
        })
    }

    /// The group of my keys (and of every conversation I answer).
    pub fn group(&self) -> Group {
        self.bundle_record().group
    }

    /// My bundle without a one-time prekey: the record `SETPREKEY` publishes.
    pub fn bundle_record(&self) -> PrekeyBundle {
        PrekeyBundle::new(&self.identity_dh, &self.signed_prekey, None)
    }

    /// New one-time prekeys towards [`ONE_TIME_PREKEY_TARGET`] on the server, which holds
    /// `on_server`, and at most `at_most` of them: `(id, public value)` for `ADDPREKEYS`,
    /// secrets saved first.
    pub fn refill(
        &mut self,
        on_server: usize,
        at_most: usize,
    ) -> Result<Vec<(u32, Vec<u8>)>, E2eError> {
        let group = self.group();
        let mut published = Vec::new();
        let wanted = ONE_TIME_PREKEY_TARGET
            .saturating_sub(on_server)
            .min(at_most);
        for _ in 0..wanted {
            let id = self.next_one_time_id;
            self.next_one_time_id = id.wrapping_add(1);
            let key = OneTimePrekey::generate(id, group)?;
            published.push((id, key.public()));
            self.one_time_prekeys.insert(id, key);
        }
        while self.one_time_prekeys.len() > MAX_ONE_TIME_PREKEYS {
            self.one_time_prekeys.pop_first();
        }
        self.save()?;
        Ok(published)
    }

    /// Whether I have an offline session with `peer`.
    pub fn has_session(&self, peer: &str) -> bool {
        self.sessions.contains_key(peer)
    }

    /// Forgets my session with `peer` (their client could not read what it sealed): the next
    /// message to them starts a new one from their prekeys.
    pub fn forget_session(&mut self, peer: &str) -> Result<(), E2eError> {
        if self.sessions.remove(peer).is_some() {
            self.save()?;
        }
        Ok(())
    }

    /// Starts a session with `peer` from their `bundle` (checked against `pinned`, their pinned
    /// identity key) and seals `text` as its first message: an `X3DH` payload.
    pub fn seal_first(
        &mut self,
        peer: &str,
        pinned: IdentityPublicKey,
        bundle: &PrekeyBundle,
        text: &str,
    ) -> Result<String, E2eError> {
        let me = Party {
            name: &self.me,
            identity: self.my_identity,
        };
        let bound = Address::qualified(peer, self.home.as_ref());
        let them = Party {
            name: &bound,
            identity: pinned,
        };
        let (ratchet, first) = initiate(&me, &self.identity_dh, &them, bundle, text)?;
        self.sessions.insert(peer.to_owned(), ratchet.to_bytes());
        self.save()?;
        Ok(Payload::Prekey(first).to_string())
    }

    /// Seals `text` as the next message of my session with `peer`: a `RATCHET` payload.
    pub fn seal(&mut self, peer: &str, text: &str) -> Result<String, E2eError> {
        let mut ratchet = self.session(peer)?;
        let message = ratchet.encrypt(text)?;
        self.sessions.insert(peer.to_owned(), ratchet.to_bytes());
        self.save()?;
        Ok(Payload::Ratchet(message).to_string())
    }

    /// Whether `MAIL <id>` was already processed (then it only needs another `ACK`).
    pub fn is_processed(&self, id: u64) -> bool {
        self.processed.contains(&id)
    }

    /// Opens `MAIL <id>` from `peer` (`pinned`: their pinned identity key): an `X3DH` payload
    /// starts (or restarts) the session, a `RATCHET` one continues it. The id is recorded as
    /// processed whether or not the payload opens (the inner result), and everything is
    /// saved before this returns; the outer error (saving failed) means the mail must not be
    /// acknowledged.
    pub fn open(
        &mut self,
        id: u64,
        peer: &str,
        pinned: IdentityPublicKey,
        payload: &str,
    ) -> Result<Result<String, E2eError>, E2eError> {
        let opened = self.open_payload(peer, pinned, payload);
        self.processed.push_back(id);
        while self.processed.len() > MAX_PROCESSED {
            self.processed.pop_front();
        }
        self.save()?;
        Ok(opened)
    }

    fn open_payload(
        &mut self,
        peer: &str,
        pinned: IdentityPublicKey,
        payload: &str,
    ) -> Result<String, E2eError> {
        match Payload::parse(payload)? {
            Payload::Prekey(first) => {
                let signed_prekey = [Some(&self.signed_prekey), self.previous_prekey.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|key| key.id() == first.signed_prekey_id)
                    .ok_or(E2eError::UnknownPrekey)?;
                let one_time_prekey = match first.one_time_prekey_id {
                    Some(id) => Some(
                        self.one_time_prekeys
                            .get(&id)
                            .ok_or(E2eError::UnknownPrekey)?,
                    ),
                    None => None,
                };
                let me = Party {
                    name: &self.me,
                    identity: self.my_identity,
                };
                let bound = Address::qualified(peer, self.home.as_ref());
                let them = Party {
                    name: &bound,
                    identity: pinned,
                };
                let (ratchet, text) = respond(
                    &me,
                    &self.identity_dh,
                    signed_prekey,
                    one_time_prekey,
                    &them,
                    &first,
                )?;
                if let Some(id) = first.one_time_prekey_id {
                    self.one_time_prekeys.remove(&id);
                }
                self.sessions.insert(peer.to_owned(), ratchet.to_bytes());
                Ok(text)
            }
            Payload::Ratchet(message) => {
                let mut ratchet = self.session(peer)?;
                let text = ratchet.decrypt(&message)?;
                self.sessions.insert(peer.to_owned(), ratchet.to_bytes());
                Ok(text)
            }
            _ => Err(E2eError::Malformed(
                "a live key-exchange payload arrived as offline mail".to_owned(),
            )),
        }
    }

    /// A fresh reference for `SEND` (16 random hex digits), remembered with its recipient,
    /// the `text` typed and the sealed `payload` (saved before the frame goes out) until
    /// resolved. When `text` is one that waits to be sent again to `peer` after an
    /// `unreadable` ([`Mailbox::resend`]), this is that second try: it replaces the waiting
    /// record, in the same save. The second value is the message forgotten to stay within
    /// [`MAX_UNRESOLVED`], if one was, for the caller to tell the user: the oldest one the
    /// server already stores, else the oldest of all.
    pub fn remember_sent(
        &mut self,
        peer: &str,
        text: &str,
        payload: &str,
    ) -> Result<(String, Option<Sent>), E2eError> {
        let random = SessionId::random()?.0;
        let reference: String = random[..8].iter().map(|b| format!("{b:02x}")).collect();
        let second_try = self.unresolved.iter().position(|sent| {
            matches!(sent.stage, Stage::Resending)
                && sent.peer == peer
                && sent.text.as_deref() == Some(text)
        });
        if let Some(at) = second_try {
            self.unresolved.remove(at);
        }
        self.unresolved.push_back(Sent {
            reference: reference.clone(),
            peer: peer.to_owned(),
            text: Some(text.to_owned()),
            retry: second_try.is_some(),
            stage: Stage::Unconfirmed(payload.to_owned()),
        });
        let mut forgotten = None;
        if self.unresolved.len() > MAX_UNRESOLVED {
            let oldest_queued = self
                .unresolved
                .iter()
                .position(|sent| matches!(sent.stage, Stage::Queued));
            forgotten = self.unresolved.remove(oldest_queued.unwrap_or(0));
        }
        self.save()?;
        Ok((reference, forgotten))
    }

    /// The server stored my message `reference` (`STATUS … queued`): its payload is no
    /// longer needed.
    pub fn confirmed(&mut self, reference: &str) -> Result<(), E2eError> {
        let sent = self.unresolved.iter_mut().find(|sent| {
            sent.reference == reference && matches!(sent.stage, Stage::Unconfirmed(_))
        });
        if let Some(sent) = sent {
            sent.stage = Stage::Queued;
            self.save()?;
        }
        Ok(())
    }

    /// My messages the server has not confirmed storing, oldest first, as
    /// `(reference, recipient, payload)`: to be sent again on the next connection.
    pub fn unconfirmed(&self) -> Vec<(String, String, String)> {
        self.unresolved
            .iter()
            .filter_map(|sent| match &sent.stage {
                Stage::Unconfirmed(payload) => {
                    Some((sent.reference.clone(), sent.peer.clone(), payload.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Whether a second try (after an `unreadable`) to `peer` is on its way: sealed in a
    /// session started after their client lost its state.
    pub fn is_retrying(&self, peer: &str) -> bool {
        self.unresolved
            .iter()
            .any(|sent| sent.peer == peer && sent.retry && !matches!(sent.stage, Stage::Resending))
    }

    /// My unresolved message `reference`, if I still remember it.
    pub fn sent(&self, reference: &str) -> Option<&Sent> {
        self.unresolved
            .iter()
            .find(|sent| sent.reference == reference)
    }

    /// My message `reference` came back unreadable: unless it is already a second try, its
    /// text is unknown or it already waits, it now waits to be sent again, once, in a new
    /// session, and its text is returned for the caller to send. It waits in the file, so a
    /// restart before it is sent again does not lose it ([`Mailbox::resending`]).
    pub fn resend(&mut self, reference: &str) -> Result<Option<String>, E2eError> {
        let sent = self.unresolved.iter_mut().find(|sent| {
            sent.reference == reference
                && !sent.retry
                && sent.text.is_some()
                && !matches!(sent.stage, Stage::Resending)
        });
        let Some(sent) = sent else {
            return Ok(None);
        };
        sent.stage = Stage::Resending;
        let text = sent.text.clone();
        self.save()?;
        Ok(text)
    }

    /// My messages waiting to be sent again after an `unreadable`, oldest first, as
    /// `(recipient, text)`.
    pub fn resending(&self) -> Vec<(String, String)> {
        self.unresolved
            .iter()
            .filter(|sent| matches!(sent.stage, Stage::Resending))
            .filter_map(|sent| Some((sent.peer.clone(), sent.text.clone()?)))
            .collect()
    }

    /// Forgets my messages to `peer` waiting to be sent again: sending to `peer` failed
    /// (the caller says so, counting them among the messages not sent).
    pub fn stop_resending(&mut self, peer: &str) -> Result<(), E2eError> {
        let before = self.unresolved.len();
        self.unresolved
            .retain(|sent| !(matches!(sent.stage, Stage::Resending) && sent.peer == peer));
        if self.unresolved.len() != before {
            self.save()?;
        }
        Ok(())
    }

    /// My message `reference` reached a final state: forgets it, and returns it.
    pub fn resolved(&mut self, reference: &str) -> Result<Option<Sent>, E2eError> {
        let Some(at) = self
            .unresolved
            .iter()
            .position(|sent| sent.reference == reference)
        else {
            return Ok(None);
        };
        let sent = self.unresolved.remove(at);
        self.save()?;
        Ok(sent)
    }

    /// My session with `peer`, decoded from its saved form.
    fn session(&self, peer: &str) -> Result<Ratchet, E2eError> {
        let bytes = self.sessions.get(peer).ok_or_else(|| {
            E2eError::State(format!(
                "no offline session with {peer} (it was lost or never made); a new one starts \
                 when you next write to {peer}"
            ))
        })?;
        Ratchet::from_bytes(bytes)
    }

    /// Writes the whole state to [`Mailbox::path`] (0600, atomically).
    fn save(&self) -> Result<(), E2eError> {
        write_atomically(&self.path, &self.encode()).map_err(|e| {
            E2eError::State(format!(
                "could not save the offline mailbox {}: {e}",
                self.path.display()
            ))
        })
    }

    /// The file's bytes (see the module docs).
    fn encode(&self) -> Vec<u8> {
        let previous = self
            .previous_prekey
            .as_ref()
            .map(SignedPrekey::to_bytes)
            .unwrap_or_default();
        let mut fields: Vec<Vec<u8>> = vec![
            FILE_LABEL.to_vec(),
            self.identity_dh.to_bytes(),
            self.signed_prekey.to_bytes(),
            self.signed_prekey_created.to_be_bytes().to_vec(),
            previous,
            self.next_one_time_id.to_be_bytes().to_vec(),
        ];
        fields.push(count(self.one_time_prekeys.len()));
        fields.extend(self.one_time_prekeys.values().map(OneTimePrekey::to_bytes));
        fields.push(count(self.sessions.len()));
        let mut peers: Vec<&String> = self.sessions.keys().collect();
        peers.sort();
        for peer in peers {
            fields.push(peer.as_bytes().to_vec());
            fields.push(self.sessions[peer].clone());
        }
        fields.push(count(self.processed.len()));
        fields.extend(self.processed.iter().map(|id| id.to_be_bytes().to_vec()));
        fields.push(count(self.unresolved.len()));
        for sent in &self.unresolved {
            let (stage, payload) = sent.stage.to_fields();
            let mut flags = 0;
            if sent.retry {
                flags |= FLAG_RETRY;
            }
            if sent.text.is_some() {
                flags |= FLAG_TEXT;
            }
            fields.push(sent.reference.as_bytes().to_vec());
            fields.push(sent.peer.as_bytes().to_vec());
            fields.push(vec![stage]);
            fields.push(vec![flags]);
            fields.push(sent.text.as_deref().unwrap_or("").as_bytes().to_vec());
            fields.push(payload.as_bytes().to_vec());
        }
        let slices: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        encode_fields(&slices)
    }

    /// Reads [`Mailbox::encode`]'s form; the keys are signed again for `me` (my name as
    /// bound, already qualified) with `identity`.
    fn decode(
        path: &Path,
        identity: &IdentityKey,
        me: &str,
        home: Option<&ServerName>,
        bytes: &[u8],
    ) -> Result<Mailbox, E2eError> {
        let mut fields = Fields::new(bytes, "offline mailbox", E2eError::State);
        let first_format = match fields.next()? {
            FILE_LABEL => false,
            FILE_LABEL_V1 => true,
            _ => return Err(fields.fail("not a mailbox, or saved by another version")),
        };
        let identity_dh = IdentityDhKey::from_bytes(fields.next()?, identity, me)?;
        let signed_prekey = SignedPrekey::from_bytes(fields.next()?, identity, me)?;
        let signed_prekey_created = u64::from_be_bytes(fields.array()?);
        let previous_prekey = match fields.next()? {
            [] => None,
            saved => Some(SignedPrekey::from_bytes(saved, identity, me)?),
        };
        let next_one_time_id = fields.number()?;
        let mut one_time_prekeys = BTreeMap::new();
        for _ in 0..bounded(&mut fields, MAX_ONE_TIME_PREKEYS)? {
            let key = OneTimePrekey::from_bytes(fields.next()?)?;
            one_time_prekeys.insert(key.id(), key);
        }
        let mut sessions = HashMap::new();
        for _ in 0..fields.number()? {
            let peer = utf8(&mut fields)?;
            sessions.insert(peer, fields.next()?.to_vec());
        }
        let mut processed = VecDeque::new();
        for _ in 0..bounded(&mut fields, MAX_PROCESSED)? {
            processed.push_back(u64::from_be_bytes(fields.array()?));
        }
        let mut unresolved = VecDeque::new();
        for _ in 0..bounded(&mut fields, MAX_UNRESOLVED)? {
            let sent = if first_format {
                sent_v1(&mut fields)?
            } else {
                sent_v2(&mut fields)?
            };
            unresolved.push_back(sent);
        }
        fields.finish()?;
        Ok(Mailbox {
            path: path.to_owned(),
            me: me.to_owned(),
            home: home.cloned(),
            my_identity: identity.public_key(),
            identity_dh,
            signed_prekey,
            signed_prekey_created,
            previous_prekey,
            next_one_time_id,
            one_time_prekeys,
            sessions,
            processed,
            unresolved,
        })
    }
}

/// Counts and ids, never keys.
impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("path", &self.path)
            .field("signed_prekey_id", &self.signed_prekey.id())
            .field("one_time_prekeys", &self.one_time_prekeys.len())
            .field("sessions", &self.sessions.len())
            .field("processed", &self.processed.len())
            .field("unresolved", &self.unresolved.len())
            .finish()
    }
}

/// What the user is told when the file could not be used.
fn replaced(path: &Path, why: &str) -> String {
    format!(
        "the offline mailbox {} could not be read ({why}); it was replaced by a fresh one. \
         Offline messages sent to your old keys cannot be read, and your offline \
         conversations start again",
        path.display()
    )
}

/// A count field.
fn count(n: usize) -> Vec<u8> {
    (n as u32).to_be_bytes().to_vec()
}

/// A text field.
fn utf8(fields: &mut Fields<'_>) -> Result<String, E2eError> {
    let raw = fields.next()?;
    String::from_utf8(raw.to_vec()).map_err(|_| fields.fail("a name is not UTF-8"))
}

/// One sent message in the current format (see the module docs).
fn sent_v2(fields: &mut Fields<'_>) -> Result<Sent, E2eError> {
    let reference = utf8(fields)?;
    let peer = utf8(fields)?;
    let [stage] = fields.array()?;
    let [flags] = fields.array()?;
    let text = utf8(fields)?;
    let payload = utf8(fields)?;
    if flags & !(FLAG_RETRY | FLAG_TEXT) != 0
        || (flags & FLAG_TEXT == 0 && !text.is_empty())
        || text.len() > MAX_PLAINTEXT_LEN
        || payload.len() > MAX_PAYLOAD_LEN
    {
        return Err(fields.fail("a sent message's record is not valid"));
    }
    let stage = Stage::from_fields(stage, payload)
        .ok_or_else(|| fields.fail("a sent message's stage is not valid"))?;
    Ok(Sent {
        reference,
        peer,
        text: Some(text).filter(|_| flags & FLAG_TEXT != 0),
        retry: flags & FLAG_RETRY != 0,
        stage,
    })
}

/// One sent message in the first format: no text, and an empty payload once queued.
fn sent_v1(fields: &mut Fields<'_>) -> Result<Sent, E2eError> {
    let reference = utf8(fields)?;
    let peer = utf8(fields)?;
    let payload = utf8(fields)?;
    Ok(Sent {
        reference,
        peer,
        text: None,
        retry: false,
        stage: if payload.is_empty() {
            Stage::Queued
        } else {
            Stage::Unconfirmed(payload)
        },
    })
}

/// A count field, refused above `max`.
fn bounded(fields: &mut Fields<'_>, max: usize) -> Result<u32, E2eError> {
    let n = fields.number()?;
    if n as usize > max {
        return Err(fields.fail("more entries than a mailbox keeps"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Unix seconds of the tests' "now".
    const NOW: u64 = 1_800_000_000;

    /// A user with a fixed identity key and a mailbox file in a temporary directory.
    struct User {
        name: &'static str,
        identity: IdentityKey,
        path: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl User {
        fn new(name: &'static str, seed: u8) -> User {
            let dir = tempfile::tempdir().expect("temp dir");
            User {
                name,
                identity: IdentityKey::from_fixed_seed(&[seed; 32]).expect("key"),
                path: dir.path().join(MAILBOX_FILE),
                _dir: dir,
            }
        }

        /// The mailbox as read back from disk (a restart), at `now`.
        fn mailbox_at(&self, now: u64) -> Mailbox {
            let (mailbox, problem) = Mailbox::load_or_create(
                &self.path,
                &self.identity,
                self.name,
                None,
                Group::Ffdhe2048,
                now,
            )
            .expect("mailbox");
            assert_eq!(problem, None);
            mailbox
        }

        fn mailbox(&self) -> Mailbox {
            self.mailbox_at(NOW)
        }

        fn key(&self) -> IdentityPublicKey {
            self.identity.public_key()
        }
    }

    /// Bob's bundle as the server would hand it out: the record and his first one-time prekey.
    fn bundle_of(bob: &User) -> PrekeyBundle {
        let mut mailbox = bob.mailbox();
        let published = mailbox.refill(0, 7).expect("refill");
        assert_eq!(published.len(), 7, "at most as many as asked");
        assert_eq!(
            mailbox.refill(90, usize::MAX).expect("refill").len(),
            ONE_TIME_PREKEY_TARGET - 90,
            "never past the target"
        );
        let mut bundle = bob.mailbox().bundle_record();
        assert_eq!(bundle.one_time_prekey, None);
        bundle.one_time_prekey = published.into_iter().next();
        bundle
    }

    impl Mailbox {
        /// [`Mailbox::open`] where saving must work.
        fn open_ok(
            &mut self,
            id: u64,
            peer: &str,
            pinned: IdentityPublicKey,
            payload: &str,
        ) -> Result<String, E2eError> {
            self.open(id, peer, pinned, payload).expect("saved")
        }
    }

    #[test]
    fn alice_writes_to_offline_bob_with_a_restart_between_every_step() {
        let (alice, bob) = (User::new("alice", 1), User::new("bob", 2));
        let bundle = bundle_of(&bob);
        let first = alice
            .mailbox()
            .seal_first("bob", bob.key(), &bundle, "one")
            .expect("first");
        assert!(first.starts_with("X3DH "));
        let second = alice.mailbox().seal("bob", "two").expect("second");
        let third = alice.mailbox().seal("bob", "three").expect("third");
        assert!(second.starts_with("RATCHET ") && third.starts_with("RATCHET "));

        assert_eq!(
            bob.mailbox().open_ok(10, "alice", alice.key(), &first),
            Ok("one".into())
        );
        assert!(bob.mailbox().is_processed(10));
        // Out of order: the third before the second.
        assert_eq!(
            bob.mailbox().open_ok(12, "alice", alice.key(), &third),
            Ok("three".into())
        );
        assert_eq!(
            bob.mailbox().open_ok(11, "alice", alice.key(), &second),
            Ok("two".into())
        );

        // Bob answers; Alice reads it after a restart.
        let answer = bob.mailbox().seal("alice", "hello alice").expect("answer");
        assert_eq!(
            alice.mailbox().open_ok(1, "bob", bob.key(), &answer),
            Ok("hello alice".into())
        );
        let mode = std::fs::metadata(&bob.path)
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn sessions_and_messages_keyed_by_full_addresses_survive_a_restart() {
        let (alice, bob) = (User::new("alice@a.test", 1), User::new("bob@b.test", 2));
        let bundle = bundle_of(&bob);
        let first = alice
            .mailbox()
            .seal_first("bob@b.test", bob.key(), &bundle, "one")
            .expect("first");
        let (reference, _) = alice
            .mailbox()
            .remember_sent("bob@b.test", "one", &first)
            .expect("remembered");
        let reread = alice.mailbox();
        assert!(reread.has_session("bob@b.test"));
        assert!(!reread.has_session("bob"), "another user, another session");
        let sent = reread.sent(&reference).expect("kept");
        assert_eq!(sent.peer, "bob@b.test");
        assert_eq!(sent.text.as_deref(), Some("one"));
        let second = alice.mailbox().seal("bob@b.test", "two").expect("second");
        assert_eq!(
            bob.mailbox()
                .open_ok(10, "alice@a.test", alice.key(), &first),
            Ok("one".into())
        );
        assert_eq!(
            bob.mailbox()
                .open_ok(11, "alice@a.test", alice.key(), &second),
            Ok("two".into())
        );
        assert!(bob.mailbox().has_session("alice@a.test"));
    }

    #[test]
    fn replays_are_refused_and_a_one_time_prekey_opens_once() {
        let (alice, bob) = (User::new("alice", 1), User::new("bob", 2));
        let bundle = bundle_of(&bob);
        let first = alice
            .mailbox()
            .seal_first("bob", bob.key(), &bundle, "one")
            .expect("first");
        let second = alice.mailbox().seal("bob", "two").expect("second");
        assert!(bob
            .mailbox()
            .open_ok(1, "alice", alice.key(), &first)
            .is_ok());
        assert!(bob
            .mailbox()
            .open_ok(2, "alice", alice.key(), &second)
            .is_ok());
        // The same payloads again under new ids (a server replaying them).
        assert_eq!(
            bob.mailbox().open_ok(3, "alice", alice.key(), &first),
            Err(E2eError::UnknownPrekey)
        );
        assert_eq!(
            bob.mailbox().open_ok(4, "alice", alice.key(), &second),
            Err(E2eError::AlreadyReceived { counter: 1 })
        );
        // A failed open is still recorded, so the mail is only acknowledged again.
        assert!(bob.mailbox().is_processed(3) && bob.mailbox().is_processed(4));
    }

    #[test]
    fn a_message_under_another_pinned_key_or_without_a_session_does_not_open() {
        let (alice, bob, mallory) = (
            User::new("alice", 1),
            User::new("bob", 2),
            User::new("m", 3),
        );
        let bundle = bundle_of(&bob);
        assert_eq!(
            alice
                .mailbox()
                .seal_first("bob", mallory.key(), &bundle, "one"),
            Err(E2eError::BadSignature)
        );
        let first = alice
            .mailbox()
            .seal_first("bob", bob.key(), &bundle, "one")
            .expect("first");
        assert_eq!(
            bob.mailbox().open_ok(1, "alice", mallory.key(), &first),
            Err(E2eError::BadSignature)
        );
        let second = alice.mailbox().seal("bob", "two").expect("second");
        let no_session = bob.mailbox().open_ok(2, "alice", alice.key(), &second);
        assert!(
            matches!(no_session, Err(E2eError::State(_))),
            "{no_session:?}"
        );
        assert!(!bob.mailbox().has_session("alice"));
        // The one-time prekey was not used up by the forged attempt: the real one opens.
        assert_eq!(
            bob.mailbox().open_ok(3, "alice", alice.key(), &first),
            Ok("one".into())
        );
    }

    #[test]
    fn a_rotated_signed_prekey_still_opens_first_messages_made_from_the_old_one() {
        let (alice, bob) = (User::new("alice", 1), User::new("bob", 2));
        let bundle = bundle_of(&bob);
        let first = alice
            .mailbox()
            .seal_first("bob", bob.key(), &bundle, "one")
            .expect("first");
        let later = bob.mailbox_at(NOW + SIGNED_PREKEY_LIFETIME_SECS);
        assert_ne!(
            later.bundle_record().signed_prekey_id,
            bundle.signed_prekey_id
        );
        assert_eq!(later.bundle_record().identity_dh, bundle.identity_dh);
        let mut later = bob.mailbox_at(NOW + SIGNED_PREKEY_LIFETIME_SECS + 1);
        assert_eq!(
            later.open_ok(1, "alice", alice.key(), &first),
            Ok("one".into())
        );
    }

    #[test]
    fn a_corrupt_file_is_replaced_and_reported_in_words() {
        let bob = User::new("bob", 2);
        let old = bob.mailbox().bundle_record();
        std::fs::write(&bob.path, b"not a mailbox").expect("write");
        let (mailbox, problem) =
            Mailbox::load_or_create(&bob.path, &bob.identity, "bob", None, Group::Ffdhe2048, NOW)
                .expect("fresh");
        let problem = problem.expect("a problem is reported");
        assert!(problem.contains("cannot be read"), "{problem}");
        assert_ne!(mailbox.bundle_record().identity_dh, old.identity_dh);
        // The fresh state was saved: the next start reads it without complaint.
        assert_eq!(bob.mailbox().bundle_record(), mailbox.bundle_record());
    }

    impl Mailbox {
        /// [`Mailbox::remember_sent`] where nothing is forgotten: the reference.
        fn remember(&mut self, peer: &str, text: &str, payload: &str) -> String {
            let (reference, forgotten) = self.remember_sent(peer, text, payload).expect("ref");
            assert!(forgotten.is_none());
            reference
        }

        /// The text kept for `reference`.
        fn text_of(&self, reference: &str) -> Option<&str> {
            self.sent(reference)?.text.as_deref()
        }
    }

    #[test]
    fn sent_messages_are_kept_until_confirmed_and_remembered_until_resolved() {
        let alice = User::new("alice", 1);
        let first = alice.mailbox().remember("bob", "a secret", "RATCHET one");
        let second = alice.mailbox().remember("carol", "two", "RATCHET two");
        assert_eq!(first.len(), 16);
        // After a restart, both wait to be sent again, oldest first.
        assert_eq!(
            alice.mailbox().unconfirmed(),
            [
                (first.clone(), "bob".to_owned(), "RATCHET one".to_owned()),
                (second.clone(), "carol".to_owned(), "RATCHET two".to_owned()),
            ]
        );
        alice.mailbox().confirmed(&first).expect("confirmed");
        assert_eq!(
            alice.mailbox().unconfirmed(),
            [(second.clone(), "carol".to_owned(), "RATCHET two".to_owned())]
        );
        // The text stays, across restarts, until the final state; then it is gone.
        assert_eq!(alice.mailbox().text_of(&first), Some("a secret"));
        let resolved = alice.mailbox().resolved(&second).expect("resolved");
        assert_eq!(resolved.and_then(|sent| sent.text).as_deref(), Some("two"));
        assert!(alice.mailbox().sent(&second).is_none());
        assert!(alice.mailbox().unconfirmed().is_empty());
        let shown = format!("{:?}", alice.mailbox());
        assert!(shown.contains("unresolved: 1"), "{shown}");
        assert!(!shown.contains("secret"), "no text in Debug: {shown}");
    }

    #[test]
    fn an_unreadable_message_waits_on_disk_to_be_sent_again_once() {
        let alice = User::new("alice", 1);
        let first = alice.mailbox().remember("bob", "read me", "X3DH one");
        alice.mailbox().confirmed(&first).expect("confirmed");
        // Unreadable: it waits to be sent again, and still does after a restart.
        assert_eq!(
            alice.mailbox().resend(&first).expect("saved").as_deref(),
            Some("read me")
        );
        assert!(alice.mailbox().sent(&first).is_some_and(Sent::is_resending));
        assert_eq!(alice.mailbox().resend(&first).expect("saved"), None, "once");
        assert_eq!(
            alice.mailbox().resending(),
            [("bob".to_owned(), "read me".to_owned())]
        );
        // Sent again: that record is replaced by the second try, in the same save.
        let second = alice.mailbox().remember("bob", "read me", "X3DH two");
        assert!(alice.mailbox().resending().is_empty());
        assert!(alice.mailbox().sent(&first).is_none());
        assert!(alice.mailbox().sent(&second).is_some_and(|sent| sent.retry));
        // The second try is never sent a third time, after a restart too.
        alice.mailbox().confirmed(&second).expect("confirmed");
        assert_eq!(alice.mailbox().resend(&second).expect("saved"), None);
        let resolved = alice.mailbox().resolved(&second).expect("saved");
        assert!(resolved.is_some_and(|sent| sent.retry));
        // Giving up on a peer forgets what waited to be sent again to them, and only that.
        let to_bob = alice.mailbox().remember("bob", "b", "X3DH b");
        let to_carol = alice.mailbox().remember("carol", "c", "X3DH c");
        for reference in [&to_bob, &to_carol] {
            alice.mailbox().resend(reference).expect("saved");
        }
        alice.mailbox().stop_resending("bob").expect("saved");
        assert_eq!(
            alice.mailbox().resending(),
            [("carol".to_owned(), "c".to_owned())]
        );
    }

    #[test]
    fn past_the_bound_the_oldest_queued_message_is_forgotten_and_returned() {
        let alice = User::new("alice", 1);
        let mut mailbox = alice.mailbox();
        let unconfirmed = mailbox.remember("bob", "not yet stored", "RATCHET a");
        let queued = mailbox.remember("bob", "stored", "RATCHET b");
        mailbox.confirmed(&queued).expect("confirmed");
        while mailbox.unresolved.len() < MAX_UNRESOLVED {
            mailbox.unresolved.push_back(Sent {
                reference: format!("{:016x}", mailbox.unresolved.len()),
                peer: "carol".to_owned(),
                text: Some("filler".to_owned()),
                retry: false,
                stage: Stage::Unconfirmed("RATCHET filler".to_owned()),
            });
        }
        let (_, forgotten) = mailbox
            .remember_sent("bob", "one too many", "RATCHET c")
            .expect("saved");
        let forgotten = forgotten.expect("one is forgotten");
        assert_eq!(forgotten.text.as_deref(), Some("stored"), "the queued one");
        assert!(forgotten.loss_if_forgotten().contains("without its text"));
        assert_eq!(mailbox.unresolved.len(), MAX_UNRESOLVED);
        // The file holds the bound, and reads back.
        let again = alice.mailbox();
        assert_eq!(again.unresolved.len(), MAX_UNRESOLVED);
        assert_eq!(again.text_of(&unconfirmed), Some("not yet stored"));
        // With none queued, the oldest of all goes, and that is said too.
        let mut mailbox = again;
        let (_, forgotten) = mailbox
            .remember_sent("bob", "and another", "RATCHET d")
            .expect("saved");
        let forgotten = forgotten.expect("one is forgotten");
        assert_eq!(forgotten.text.as_deref(), Some("not yet stored"));
        assert!(forgotten.loss_if_forgotten().contains("NOT sent again"));
    }

    #[test]
    fn a_record_with_a_text_longer_than_a_message_is_refused() {
        let alice = User::new("alice", 1);
        let mut mailbox = alice.mailbox();
        let long = "x".repeat(MAX_PLAINTEXT_LEN + 1);
        mailbox.remember("bob", &long, "RATCHET long");
        let (_, problem) = Mailbox::load_or_create(
            &alice.path,
            &alice.identity,
            "alice",
            None,
            Group::Ffdhe2048,
            NOW,
        )
        .expect("fresh");
        let problem = problem.expect("a problem is reported");
        assert!(problem.contains("not valid"), "{problem}");
    }

    /// The values of `tests/vectors/mailbox-v1.txt`, by name.
    fn v1_vector() -> HashMap<String, String> {
        include_str!("../../tests/vectors/mailbox-v1.txt")
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once(' '))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    #[test]
    fn a_mailbox_file_in_the_first_format_loads_with_its_keys_sessions_and_messages() {
        use base64::Engine as _;
        let vector = v1_vector();
        let file = |name: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(&vector[name])
                .expect("base64")
        };
        let (alice, bob) = (User::new("alice", 1), User::new("bob", 2));
        std::fs::write(&alice.path, file("alice")).expect("write");
        std::fs::write(&bob.path, file("bob")).expect("write");

        // Loading it (no problem reported) keeps the keys: the same record is published.
        let mut mailbox = alice.mailbox();
        let record = base64::engine::general_purpose::STANDARD
            .decode(&vector["record"])
            .expect("base64");
        assert_eq!(mailbox.bundle_record().to_bytes(), record);
        assert_eq!(mailbox.one_time_prekeys.len(), 3);
        assert!(mailbox.is_processed(5));
        // The messages keep their state; their texts were never saved.
        let (confirmed, unconfirmed) = (&vector["confirmed"], &vector["unconfirmed"]);
        assert_eq!(
            mailbox.unconfirmed(),
            [(
                unconfirmed.clone(),
                "bob".to_owned(),
                vector["second"].clone()
            )]
        );
        assert!(mailbox
            .sent(confirmed)
            .is_some_and(|sent| sent.text.is_none()));
        assert_eq!(mailbox.resend(confirmed).expect("saved"), None, "no text");
        // The session goes on: bob (his file in the first format too) reads it all.
        let third = mailbox.seal("bob", "three").expect("sealed");
        let mut bob_mailbox = bob.mailbox();
        for (id, payload, text) in [
            (1, vector["first"].as_str(), "one"),
            (2, vector["second"].as_str(), "two"),
            (3, third.as_str(), "three"),
        ] {
            assert_eq!(
                bob_mailbox.open_ok(id, "alice", alice.key(), payload),
                Ok(text.to_owned())
            );
        }
        // It was written back in the current format, and reads back the same.
        let saved = std::fs::read(&alice.path).expect("read");
        assert!(contains(&saved, FILE_LABEL));
        let again = alice.mailbox();
        assert_eq!(again.bundle_record().to_bytes(), record);
        assert_eq!(again.unresolved.len(), 2);
    }

    /// Whether `needle` occurs in `haystack`.
    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    #[test]
    fn debug_output_holds_no_key_material() {
        let bob = User::new("bob", 2);
        let mut mailbox = bob.mailbox();
        mailbox.refill(95, usize::MAX).expect("refill");
        let shown = format!("{mailbox:?}");
        assert!(shown.contains("one_time_prekeys: 5"), "{shown}");
        assert!(shown.len() < 300, "{shown}");
    }
}
