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
//! F("securechat/mailbox/v1") ‖ F(identity DH key) ‖ F(signed prekey) ‖ F(u64be created, unix s)
//! ‖ F(previous signed prekey, or empty) ‖ F(u32be next one-time id)
//! ‖ F(u32be n) ‖ n × F(one-time prekey)
//! ‖ F(u32be n) ‖ n × (F(peer) ‖ F(ratchet state))
//! ‖ F(u32be n) ‖ n × F(u64be MAIL id processed)
//! ‖ F(u32be n) ‖ n × (F(ref) ‖ F(peer))                       ; sent, not yet resolved
//! ```
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
    SignedPrekey,
};
use crate::files::write_atomically;

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

/// Sent messages remembered until the server reports them delivered, expired or refused; the
/// server's own queue limit per recipient is 1,000 by default.
const MAX_UNRESOLVED: usize = 1_000;

/// First field of the file: names the format and its version.
const FILE_LABEL: &[u8] = b"securechat/mailbox/v1";

/// My offline-delivery state for one account on one server.
pub struct Mailbox {
    /// Where it is saved.
    path: PathBuf,
    /// My user name (signed into my prekeys, bound into every session's AD).
    me: String,
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

/// One of my offline messages on its way.
struct Sent {
    /// Its `SEND` reference.
    reference: String,
    /// The recipient.
    peer: String,
    /// The sealed payload, kept until the server confirms it stored the message (`STATUS …
    /// queued`): a `SEND` cut off by a broken connection or a server crash is sent again,
    /// byte for byte, and the server stores a re-sent reference once. `None` once confirmed.
    payload: Option<String>,
}

impl Mailbox {
    /// Loads the mailbox at `path`, or makes a fresh one (in `group`) when there is none or it
    /// cannot be used; `now` is unix seconds, to rotate an old signed prekey. The second value
    /// is a problem to show the user: the old file could not be read and was replaced.
    pub fn load_or_create(
        path: &Path,
        identity: &IdentityKey,
        me: &str,
        group: Group,
        now: u64,
    ) -> Result<(Mailbox, Option<String>), E2eError> {
        let (mut mailbox, problem) = match std::fs::read(path) {
            Ok(bytes) => match Mailbox::decode(path, identity, me, &bytes) {
                Ok(mailbox) => (mailbox, None),
                Err(e) => (
                    Mailbox::fresh(path, identity, me, group, now)?,
                    Some(replaced(path, &e.to_string())),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (Mailbox::fresh(path, identity, me, group, now)?, None)
            }
            Err(e) => (
                Mailbox::fresh(path, identity, me, group, now)?,
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

    /// A new mailbox: a new identity DH key and signed prekey, nothing else.
    fn fresh(
        path: &Path,
        identity: &IdentityKey,
        me: &str,
        group: Group,
        now: u64,
    ) -> Result<Mailbox, E2eError> {
        Ok(Mailbox {
            path: path.to_owned(),
            me: me.to_owned(),
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
        let them = Party {
            name: peer,
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
                let them = Party {
                    name: peer,
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

    /// A fresh reference for `SEND` (16 random hex digits), remembered with its recipient
    /// and `payload` (saved before the frame goes out) until resolved.
    pub fn remember_sent(&mut self, peer: &str, payload: &str) -> Result<String, E2eError> {
        let random = SessionId::random()?.0;
        let reference: String = random[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.unresolved.push_back(Sent {
            reference: reference.clone(),
            peer: peer.to_owned(),
            payload: Some(payload.to_owned()),
        });
        while self.unresolved.len() > MAX_UNRESOLVED {
            self.unresolved.pop_front();
        }
        self.save()?;
        Ok(reference)
    }

    /// The server stored my message `reference` (`STATUS … queued`): its payload is no
    /// longer needed.
    pub fn confirmed(&mut self, reference: &str) -> Result<(), E2eError> {
        let sent = self
            .unresolved
            .iter_mut()
            .find(|sent| sent.reference == reference);
        if let Some(sent) = sent.filter(|sent| sent.payload.is_some()) {
            sent.payload = None;
            self.save()?;
        }
        Ok(())
    }

    /// My messages the server has not confirmed storing, oldest first, as
    /// `(reference, recipient, payload)`: to be sent again on the next connection.
    pub fn unconfirmed(&self) -> Vec<(String, String, String)> {
        self.unresolved
            .iter()
            .filter_map(|sent| {
                let payload = sent.payload.clone()?;
                Some((sent.reference.clone(), sent.peer.clone(), payload))
            })
            .collect()
    }

    /// My message `reference` reached a final state: forget it.
    pub fn resolved(&mut self, reference: &str) -> Result<(), E2eError> {
        let before = self.unresolved.len();
        self.unresolved.retain(|sent| sent.reference != reference);
        if self.unresolved.len() != before {
            self.save()?;
        }
        Ok(())
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
            fields.push(sent.reference.as_bytes().to_vec());
            fields.push(sent.peer.as_bytes().to_vec());
            fields.push(sent.payload.as_deref().unwrap_or("").as_bytes().to_vec());
        }
        let slices: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        encode_fields(&slices)
    }

    /// Reads [`Mailbox::encode`]'s form; the keys are signed again for `me` with `identity`.
    fn decode(
        path: &Path,
        identity: &IdentityKey,
        me: &str,
        bytes: &[u8],
    ) -> Result<Mailbox, E2eError> {
        let mut fields = Fields::new(bytes, "offline mailbox", E2eError::State);
        if fields.next()? != FILE_LABEL {
            return Err(fields.fail("not a mailbox, or saved by another version"));
        }
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
            let reference = utf8(&mut fields)?;
            let peer = utf8(&mut fields)?;
            let payload = Some(utf8(&mut fields)?).filter(|payload| !payload.is_empty());
            unresolved.push_back(Sent {
                reference,
                peer,
                payload,
            });
        }
        fields.finish()?;
        Ok(Mailbox {
            path: path.to_owned(),
            me: me.to_owned(),
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
            Mailbox::load_or_create(&bob.path, &bob.identity, "bob", Group::Ffdhe2048, NOW)
                .expect("fresh");
        let problem = problem.expect("a problem is reported");
        assert!(problem.contains("cannot be read"), "{problem}");
        assert_ne!(mailbox.bundle_record().identity_dh, old.identity_dh);
        // The fresh state was saved: the next start reads it without complaint.
        assert_eq!(bob.mailbox().bundle_record(), mailbox.bundle_record());
    }

    #[test]
    fn sent_messages_are_kept_until_confirmed_and_remembered_until_resolved() {
        let alice = User::new("alice", 1);
        let first = alice
            .mailbox()
            .remember_sent("bob", "RATCHET one")
            .expect("ref");
        let second = alice
            .mailbox()
            .remember_sent("carol", "RATCHET two")
            .expect("ref");
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
        alice.mailbox().resolved(&second).expect("resolved");
        assert!(alice.mailbox().unconfirmed().is_empty());
        let shown = format!("{:?}", alice.mailbox());
        assert!(shown.contains("unresolved: 1"), "{shown}");
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
