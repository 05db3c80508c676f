//! The authenticated key exchange — signed ephemeral Diffie–Hellman in three messages — and the
//! [`Session`] it produces. Read this file top to bottom to follow one exchange: each step below
//! is one arrow of the diagram, and ends by handing its public facts to `explain.rs`, which
//! tells the story for `/dh`.
//!
//! ```text
//! Alice (initiator)                                        Bob (responder)
//! x random, Y_i = g^x mod p
//!       ── DH-INIT     sid, group, Y_i ───────────────────▶
//!                                        check Y_i; y random, Y_r = g^y mod p
//!                                        Z = Y_i^y mod p, keys = HKDF(Z, T)
//!                                        sig_r = Sign_Bob(T("responder"))
//!       ◀── DH-REPLY   sid, Y_r, sig_r ───────────────────
//! Verify_Bob(T("responder"), sig_r); check Y_r
//! Z = Y_r^x mod p, keys = HKDF(Z, T)
//! sig_i = Sign_Alice(T("initiator"))
//!       ── DH-CONFIRM  sid, sig_i ────────────────────────▶
//! Alice may send now                     Verify_Alice(T("initiator"), sig_i)
//!                                        only now Bob sends and reads
//! ```
//!
//! `T(role)` = `"securechat/dh/v1"`, role, group name, initiator name, responder name, session
//! id, `Y_i`, `Y_r`, each length-prefixed. Why each part is there:
//! - **Both public values.** Plain DH falls to a man in the middle who swaps `Y_i` and `Y_r` for his
//!   own. Here each side signs the values it saw; a swap changes the transcript, and the attacker
//!   cannot sign for the real owner. This is what makes the exchange authenticated.
//! - **Both names and the group.** The signature says whom it was meant for and in which group, so
//!   it cannot be passed on to a third user or moved to another group.
//! - **Session id** (and fresh `Y` values): signatures from an old exchange are useless in a new one.
//! - **Role label.** Bob signs as "responder", Alice as "initiator", so a signature cannot be
//!   reflected back as the other one — even when both ends hold the same identity key.
//! - **Confirm.** Until Alice's signature arrives, Bob cannot tell her Init from a replay, so he
//!   neither sends nor reads messages. The types enforce it: a [`Responder`] has no `seal` or
//!   `open`; only [`Responder::confirm`] yields a [`Session`]. The server delivers one sender's
//!   payloads in order, so an honest initiator's first message always arrives after its
//!   Confirm; one that arrives earlier is refused (the client warns). A failed check abandons the exchange (consuming
//!   the state), as TLS does; the server could stall an exchange anyway by dropping messages.

use std::fmt;

use super::aead::{Opener, Sealer};
use super::explain::{Explanation, Step};
use super::kdf::{derive_session_keys, SessionKeys};
use super::{
    encode_fields, put_field, E2eError, EncryptedMessage, EphemeralSecret, Group, IdentityKey,
    IdentityPublicKey, Opened, PublicValue, SessionId, SIGNATURE_LEN,
};

/// Starts every transcript: names the protocol and its version, so our signatures can never be
/// mistaken for signatures on anything else.
const PROTOCOL_LABEL: &[u8] = b"securechat/dh/v1";
/// Role label of the transcript the responder signs.
const RESPONDER_ROLE: &[u8] = b"responder";
/// Role label of the transcript the initiator signs.
const INITIATOR_ROLE: &[u8] = b"initiator";
/// Role label of the transcript whose hash salts the key derivation: nobody signs this one.
const KEY_SCHEDULE_ROLE: &[u8] = b"key-schedule";

/// Message 1, initiator → responder: `DH-INIT <sid> <group> <y_i>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    /// Fresh random id the initiator chose for this exchange.
    pub session_id: SessionId,
    /// The group the initiator chose; the responder must use the same one.
    pub group: Group,
    /// `Y_i = g^x mod p`, big-endian, `group.byte_len()` bytes. Not yet validated.
    pub y_i: Vec<u8>,
}

/// Message 2, responder → initiator: `DH-REPLY <sid> <y_r> <sig_r>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Echoes the Init's session id.
    pub session_id: SessionId,
    /// `Y_r = g^y mod p`, big-endian, same length as `Y_i`. Not yet validated.
    pub y_r: Vec<u8>,
    /// The responder's Ed25519 signature on `T("responder")`.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Message 3, initiator → responder: `DH-CONFIRM <sid> <sig_i>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    /// Echoes the session id.
    pub session_id: SessionId,
    /// The initiator's Ed25519 signature on `T("initiator")`.
    pub signature: [u8; SIGNATURE_LEN],
}

/// The initiator between sending DH-INIT and receiving DH-REPLY.
#[derive(Debug)]
pub struct Initiator {
    /// My username: the initiator name in the transcript.
    me: String,
    /// The peer's username: the responder name in the transcript.
    peer: String,
    /// The id I chose; the Reply must echo it.
    session_id: SessionId,
    /// My exponent `x`; wiped as soon as `finish` has computed `Z`.
    secret: EphemeralSecret,
    /// `Y_i` as I sent it, to rebuild the transcript Bob signed.
    y_i: PublicValue,
    /// The story so far, for the classroom display.
    explanation: Explanation,
}

impl Initiator {
    /// Step 1 (Alice): pick `x`, compute `Y_i`, and build the DH-INIT to send to `peer`.
    pub fn start(me: &str, peer: &str, group: Group) -> Result<(Initiator, Init), E2eError> {
        let session_id = SessionId::random()?;
        let exponent = EphemeralSecret::generate(group)?;
        Ok(Initiator::start_fixed(me, peer, session_id, exponent))
    }

    /// [`Initiator::start`] with a given session id and exponent: for golden test vectors
    /// only, where the "random" inputs must be fixed. Never use it for a real exchange.
    #[doc(hidden)]
    pub fn start_fixed(
        me: &str,
        peer: &str,
        session_id: SessionId,
        (secret, y_i): (EphemeralSecret, PublicValue),
    ) -> (Initiator, Init) {
        let init = Init {
            session_id,
            group: y_i.group(),
            y_i: y_i.to_bytes(),
        };
        let mut explanation = Explanation::new(&y_i);
        explanation.record(Step::Started {
            peer,
            session_id,
            y_i: &y_i,
        });
        let initiator = Initiator {
            me: me.to_owned(),
            peer: peer.to_owned(),
            session_id,
            secret,
            y_i,
            explanation,
        };
        (initiator, init)
    }

    /// Step 3 (Alice): check Bob's DH-REPLY against his pinned identity key, derive the keys, and
    /// build the DH-CONFIRM. The returned session can send at once.
    pub fn finish(
        self,
        reply: &Reply,
        my_identity: &IdentityKey,
        peer_identity: &IdentityPublicKey,
    ) -> Result<(Session, Confirm), E2eError> {
        let Initiator {
            me,
            peer,
            session_id,
            secret,
            y_i,
            mut explanation,
        } = self;
        if reply.session_id != session_id {
            return Err(E2eError::UnknownSession);
        }
        let group = y_i.group();
        let transcript =
            Transcript::new(group, &me, &peer, session_id, &y_i.to_bytes(), &reply.y_r);
        // The signature first: it is cheap, and it tells us Y_r really is Bob's.
        peer_identity.verify(&transcript.with_role(RESPONDER_ROLE), &reply.signature)?;
        let y_r = PublicValue::from_bytes(group, &reply.y_r)?;
        let shared = secret.agree(&y_r)?;
        drop(secret); // x is wiped: from now on nobody can recompute Z (forward secrecy).
        let keys = derive_session_keys(&shared, &transcript.with_role(KEY_SCHEDULE_ROLE))?;
        let signature = my_identity.sign(&transcript.with_role(INITIATOR_ROLE))?;

        explanation.record(Step::Finished {
            peer: &peer,
            y_r: &y_r,
            peer_key: *peer_identity,
            secret_fingerprint: &keys.secret_fingerprint,
        });
        let session = Session::new(true, &me, &peer, session_id, keys, explanation);
        Ok((
            session,
            Confirm {
                session_id,
                signature,
            },
        ))
    }

    /// The session id this exchange uses, to match the Reply to it.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// What has happened so far.
    pub fn explanation(&self) -> &Explanation {
        &self.explanation
    }
}

/// The responder between sending DH-REPLY and receiving a valid DH-CONFIRM. It holds the keys
/// but deliberately offers no way to use them: see the module docs.
pub struct Responder {
    /// The peer's username, for the session.
    peer: String,
    /// My username, for the session.
    me: String,
    /// The id from the Init; the Confirm must echo it.
    session_id: SessionId,
    /// The pinned key the Confirm's signature must verify with.
    peer_identity: IdentityPublicKey,
    /// The transcript, to check the Confirm's signature on `T("initiator")`.
    transcript: Transcript,
    /// Keys derived from `Z`, unused until the Confirm checks out.
    keys: SessionKeys,
    /// The story so far.
    explanation: Explanation,
}

impl Responder {
    /// Step 2 (Bob): check Alice's DH-INIT, pick `y`, compute `Y_r` and `Z`, derive the keys and
    /// build the signed DH-REPLY. `peer_identity` is Alice's pinned key, used on her Confirm.
    pub fn accept(
        me: &str,
        peer: &str,
        init: &Init,
        my_identity: &IdentityKey,
        peer_identity: &IdentityPublicKey,
    ) -> Result<(Responder, Reply), E2eError> {
        let exponent = EphemeralSecret::generate(init.group)?;
        Responder::accept_fixed(me, peer, init, my_identity, peer_identity, exponent)
    }

    /// [`Responder::accept`] with a given exponent: for golden test vectors only. Never use it
    /// for a real exchange.
    #[doc(hidden)]
    pub fn accept_fixed(
        me: &str,
        peer: &str,
        init: &Init,
        my_identity: &IdentityKey,
        peer_identity: &IdentityPublicKey,
        (secret, y_r): (EphemeralSecret, PublicValue),
    ) -> Result<(Responder, Reply), E2eError> {
        let group = init.group;
        let y_i = PublicValue::from_bytes(group, &init.y_i)?;
        let shared = secret.agree(&y_i)?;
        drop(secret); // y is wiped: from now on nobody can recompute Z (forward secrecy).
        let y_r_bytes = y_r.to_bytes();
        let transcript = Transcript::new(group, peer, me, init.session_id, &init.y_i, &y_r_bytes);
        let signature = my_identity.sign(&transcript.with_role(RESPONDER_ROLE))?;
        let keys = derive_session_keys(&shared, &transcript.with_role(KEY_SCHEDULE_ROLE))?;

        let mut explanation = Explanation::new(&y_r);
        explanation.record(Step::Answered {
            peer,
            y_i: &y_i,
            y_r: &y_r,
            secret_fingerprint: &keys.secret_fingerprint,
            my_key: my_identity.public_key(),
            peer_key: *peer_identity,
        });
        let responder = Responder {
            peer: peer.to_owned(),
            me: me.to_owned(),
            session_id: init.session_id,
            peer_identity: *peer_identity,
            transcript,
            keys,
            explanation,
        };
        let reply = Reply {
            session_id: init.session_id,
            y_r: y_r_bytes,
            signature,
        };
        Ok((responder, reply))
    }

    /// Step 4 (Bob): check Alice's DH-CONFIRM. Only a valid one yields a usable session.
    pub fn confirm(self, confirm: &Confirm) -> Result<Session, E2eError> {
        let Responder {
            peer,
            me,
            session_id,
            peer_identity,
            transcript,
            keys,
            mut explanation,
        } = self;
        if confirm.session_id != session_id {
            return Err(E2eError::UnknownSession);
        }
        peer_identity.verify(&transcript.with_role(INITIATOR_ROLE), &confirm.signature)?;
        explanation.record(Step::Confirmed {
            peer: &peer,
            peer_key: peer_identity,
        });
        Ok(Session::new(
            false,
            &me,
            &peer,
            session_id,
            keys,
            explanation,
        ))
    }

    /// The session id this exchange uses, to match the Confirm to it.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// What has happened so far.
    pub fn explanation(&self) -> &Explanation {
        &self.explanation
    }
}

/// Shows who and which session; never keys.
impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("peer", &self.peer)
            .field("session_id", &self.session_id)
            .field("awaiting", &"DH-CONFIRM")
            .finish()
    }
}

/// What both sides sign and hash, minus the role: every field after the role label.
struct Transcript {
    /// Length-prefixed group name, initiator name, responder name, session id, `Y_i`, `Y_r`.
    fields: Vec<u8>,
}

impl Transcript {
    fn new(
        group: Group,
        initiator: &str,
        responder: &str,
        session_id: SessionId,
        y_i: &[u8],
        y_r: &[u8],
    ) -> Transcript {
        let fields = encode_fields(&[
            group.name().as_bytes(),
            initiator.as_bytes(),
            responder.as_bytes(),
            &session_id.0,
            y_i,
            y_r,
        ]);
        Transcript { fields }
    }

    /// `T(role)`: the bytes signed (or hashed) for one role.
    fn with_role(&self, role: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.fields.len() + 64);
        put_field(&mut bytes, PROTOCOL_LABEL);
        put_field(&mut bytes, role);
        bytes.extend_from_slice(&self.fields);
        bytes
    }
}

/// An established conversation with one peer: seals my messages and opens theirs.
pub struct Session {
    /// Names this session on the wire; messages with another id are refused.
    session_id: SessionId,
    /// The peer's username.
    peer: String,
    /// Whether I started the exchange; decides which direction key seals and which opens.
    is_initiator: bool,
    /// Seals my messages with my direction's key.
    sealer: Sealer,
    /// Opens the peer's messages with theirs.
    opener: Opener,
    /// How this session came about, for the `/dh` display.
    explanation: Explanation,
}

impl Session {
    fn new(
        is_initiator: bool,
        me: &str,
        peer: &str,
        session_id: SessionId,
        keys: SessionKeys,
        explanation: Explanation,
    ) -> Session {
        let SessionKeys {
            initiator_to_responder,
            responder_to_initiator,
            ..
        } = keys;
        let (sending, receiving) = if is_initiator {
            (initiator_to_responder, responder_to_initiator)
        } else {
            (responder_to_initiator, initiator_to_responder)
        };
        Session {
            session_id,
            peer: peer.to_owned(),
            is_initiator,
            sealer: Sealer::new(sending, session_id, me, peer),
            opener: Opener::new(receiving, session_id, peer, me),
            explanation,
        }
    }

    /// Encrypts `text` for the peer as the next message.
    pub fn seal(&mut self, text: &str) -> Result<EncryptedMessage, E2eError> {
        self.sealer.seal(text)
    }

    /// Authenticates and decrypts a message from the peer (see `aead.rs` for every check).
    pub fn open(&mut self, message: &EncryptedMessage) -> Result<Opened, E2eError> {
        self.opener.open(message)
    }

    /// This session's id.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The peer's username.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Whether I started the exchange.
    pub fn is_initiator(&self) -> bool {
        self.is_initiator
    }

    /// How this session came about, for `/dh`.
    pub fn explanation(&self) -> &Explanation {
        &self.explanation
    }
}

/// Shows who, which session and the counters; never keys.
impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("session_id", &self.session_id)
            .field("is_initiator", &self.is_initiator)
            .field("next_send_counter", &self.sealer.next_counter())
            .field("last_received_counter", &self.opener.last_counter())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One user: a name and an identity key.
    struct User {
        /// The username, as the server shows it.
        name: &'static str,
        /// The user's long-term key.
        identity: IdentityKey,
    }

    impl User {
        fn new(name: &'static str) -> User {
            User {
                name,
                identity: IdentityKey::generate().expect("identity"),
            }
        }

        fn public(&self) -> IdentityPublicKey {
            self.identity.public_key()
        }
    }

    /// A complete, honest exchange: Alice's session and Bob's.
    fn exchange(alice: &User, bob: &User, group: Group) -> (Session, Session) {
        let (initiator, init) = Initiator::start(alice.name, bob.name, group).expect("start");
        let (responder, reply) =
            Responder::accept(bob.name, alice.name, &init, &bob.identity, &alice.public())
                .expect("accept");
        let (alice_session, confirm) = initiator
            .finish(&reply, &alice.identity, &bob.public())
            .expect("finish");
        let bob_session = responder.confirm(&confirm).expect("confirm");
        (alice_session, bob_session)
    }

    fn talk(from: &mut Session, to: &mut Session, text: &str) {
        let message = from.seal(text).expect("seal");
        assert_eq!(
            to.open(&message).map(|opened| opened.text),
            Ok(text.to_owned())
        );
    }

    #[test]
    fn full_exchange_works_in_both_directions_and_both_groups() {
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        for group in Group::ALL {
            let (mut at_alice, mut at_bob) = exchange(&alice, &bob, group);
            assert_eq!(at_alice.session_id(), at_bob.session_id());
            assert!(at_alice.is_initiator() && !at_bob.is_initiator());
            assert_eq!((at_alice.peer(), at_bob.peer()), ("bob", "alice"));
            talk(&mut at_alice, &mut at_bob, "hi bob");
            talk(&mut at_bob, &mut at_alice, "hi alice");
            talk(&mut at_alice, &mut at_bob, "how are you?");
            let (a, b) = (at_alice.explanation(), at_bob.explanation());
            assert_eq!(a.secret_fingerprint, b.secret_fingerprint);
            assert!(a.secret_fingerprint.is_some());
            assert_eq!(a.group, group.name());
            assert_eq!(a.peer_public_value.as_ref(), Some(&b.my_public_value));
            assert_eq!(b.peer_public_value.as_ref(), Some(&a.my_public_value));
        }
    }

    #[test]
    fn a_session_cannot_read_its_own_messages() {
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        let (mut at_alice, _) = exchange(&alice, &bob, Group::Ffdhe2048);
        let message = at_alice.seal("echo?").expect("seal");
        assert_eq!(at_alice.open(&message), Err(E2eError::Tampered));
    }

    #[test]
    fn a_reflected_message_is_refused_by_the_direction_keys_even_when_the_addresses_match() {
        // One user on two devices: sender and recipient are both "alice", so the AAD reads the
        // same in both directions and cannot tell them apart. What refuses a message handed
        // back to its sender is that each direction has its own key.
        let me = User::new("alice");
        let (mut first_device, mut second_device) = exchange(&me, &me, Group::Ffdhe2048);
        let message = first_device.seal("to my other device").expect("seal");
        assert_eq!(first_device.open(&message), Err(E2eError::Tampered));
        let answer = second_device.seal("and back").expect("seal");
        assert_eq!(second_device.open(&answer), Err(E2eError::Tampered));
        // Sent the right way, both open.
        talk(&mut first_device, &mut second_device, "hello");
        assert_eq!(
            first_device.open(&answer).map(|opened| opened.text),
            Ok("and back".to_owned())
        );
    }

    #[test]
    fn the_two_directions_never_share_a_keystream() {
        // Both directions number their messages from 1, so both first messages use the same
        // nonce. ChaCha20 encrypts by XOR with a keystream that depends on the key and the nonce
        // only (not the AAD): under one shared key, the same text would give the same bytes, and
        // any two texts would leak their XOR. Separate direction keys rule that out.
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        let (mut at_alice, mut at_bob) = exchange(&alice, &bob, Group::Ffdhe2048);
        let text = "the same words, both ways";
        let (from_alice, from_bob) = (
            at_alice.seal(text).expect("seal"),
            at_bob.seal(text).expect("seal"),
        );
        assert_eq!((from_alice.counter, from_bob.counter), (1, 1));
        let body = |message: &EncryptedMessage| message.ciphertext[..text.len()].to_vec();
        assert_ne!(body(&from_alice), body(&from_bob));
    }

    #[test]
    fn reply_signed_by_another_key_is_rejected() {
        let (alice, bob, mallory) = (User::new("alice"), User::new("bob"), User::new("mallory"));
        let (initiator, init) = Initiator::start("alice", "bob", Group::Ffdhe2048).expect("start");
        // Mallory answers in Bob's name with her own identity key.
        let (_, forged) =
            Responder::accept("bob", "alice", &init, &mallory.identity, &alice.public())
                .expect("accept");
        let result = initiator.finish(&forged, &alice.identity, &bob.public());
        assert_eq!(result.err(), Some(E2eError::BadSignature));
    }

    #[test]
    fn swapped_initiator_value_is_caught_by_the_signature() {
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        let (initiator, init) = Initiator::start("alice", "bob", Group::Ffdhe2048).expect("start");
        // The server replaces Y_i with a value of its own before Bob sees it.
        let (_, mitm_value) = EphemeralSecret::generate(Group::Ffdhe2048).expect("dh");
        let tampered = Init {
            y_i: mitm_value.to_bytes(),
            ..init
        };
        let (_, reply) =
            Responder::accept("bob", "alice", &tampered, &bob.identity, &alice.public())
                .expect("Bob cannot tell yet");
        let result = initiator.finish(&reply, &alice.identity, &bob.public());
        assert_eq!(result.err(), Some(E2eError::BadSignature));
    }

    #[test]
    fn swapped_responder_value_is_caught_by_the_signature() {
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        let (initiator, init) = Initiator::start("alice", "bob", Group::Ffdhe2048).expect("start");
        let (_, reply) = Responder::accept("bob", "alice", &init, &bob.identity, &alice.public())
            .expect("accept");
        let (_, mitm_value) = EphemeralSecret::generate(Group::Ffdhe2048).expect("dh");
        let tampered = Reply {
            y_r: mitm_value.to_bytes(),
            ..reply
        };
        let result = initiator.finish(&tampered, &alice.identity, &bob.public());
        assert_eq!(result.err(), Some(E2eError::BadSignature));
    }

    #[test]
    fn confirm_signed_by_another_key_is_rejected() {
        let (alice, bob, mallory) = (User::new("alice"), User::new("bob"), User::new("mallory"));
        let (initiator, init) = Initiator::start("alice", "bob", Group::Ffdhe2048).expect("start");
        let (responder, reply) =
            Responder::accept("bob", "alice", &init, &bob.identity, &alice.public())
                .expect("accept");
        let (_, forged) = initiator
            .finish(&reply, &mallory.identity, &bob.public())
            .expect("Mallory completes Alice's side");
        assert_eq!(
            responder.confirm(&forged).err(),
            Some(E2eError::BadSignature)
        );
    }

    #[test]
    fn reflected_responder_signature_is_not_a_confirm() {
        // Same identity key on both ends (one user, two devices): only the role label keeps
        // Bob's own signature from passing as the initiator's.
        let me = User::new("alice");
        let (initiator, init) =
            Initiator::start("alice", "alice", Group::Ffdhe2048).expect("start");
        let (responder, reply) =
            Responder::accept("alice", "alice", &init, &me.identity, &me.public()).expect("accept");
        let reflected = Confirm {
            session_id: reply.session_id,
            signature: reply.signature,
        };
        assert_eq!(
            responder.confirm(&reflected).err(),
            Some(E2eError::BadSignature)
        );
        // The genuine Confirm would have worked.
        let (responder, reply) =
            Responder::accept("alice", "alice", &init, &me.identity, &me.public()).expect("accept");
        let (_, confirm) = initiator
            .finish(&reply, &me.identity, &me.public())
            .expect("finish");
        assert!(responder.confirm(&confirm).is_ok());
    }

    #[test]
    fn responder_reads_nothing_until_a_valid_confirm() {
        let (alice, bob, mallory) = (User::new("alice"), User::new("bob"), User::new("mallory"));
        let (initiator, init) = Initiator::start("alice", "bob", Group::Ffdhe2048).expect("start");
        let (responder, reply) =
            Responder::accept("bob", "alice", &init, &bob.identity, &alice.public())
                .expect("accept");
        let (mut at_alice, confirm) = initiator
            .finish(&reply, &alice.identity, &bob.public())
            .expect("finish");
        // Alice may send before her Confirm is delivered; Bob's `Responder` has no `open`, so the
        // message waits. A forged Confirm does not unlock it: the exchange is abandoned instead.
        let early = at_alice.seal("sent right after the reply").expect("seal");
        let forged = Confirm {
            session_id: confirm.session_id,
            signature: mallory.identity.sign(b"anything").expect("sign"),
        };
        let (held, _) = Responder::accept("bob", "alice", &init, &bob.identity, &alice.public())
            .expect("accept");
        assert_eq!(held.confirm(&forged).err(), Some(E2eError::BadSignature));
        // With the genuine Confirm the held message opens.
        let mut at_bob = responder.confirm(&confirm).expect("confirm");
        assert_eq!(
            at_bob.open(&early).map(|opened| opened.text),
            Ok("sent right after the reply".to_owned())
        );
    }

    #[test]
    fn messages_for_other_sessions_and_mismatched_ids_are_refused() {
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        let (mut first_alice, _) = exchange(&alice, &bob, Group::Ffdhe2048);
        let (_, mut second_bob) = exchange(&alice, &bob, Group::Ffdhe2048);
        let old = first_alice.seal("from the first session").expect("seal");
        assert_eq!(second_bob.open(&old), Err(E2eError::UnknownSession));

        let (initiator, init) = Initiator::start("alice", "bob", Group::Ffdhe2048).expect("start");
        let (_, reply) = Responder::accept("bob", "alice", &init, &bob.identity, &alice.public())
            .expect("accept");
        let wrong_id = Reply {
            session_id: SessionId([0; 16]),
            ..reply
        };
        let result = initiator.finish(&wrong_id, &alice.identity, &bob.public());
        assert_eq!(result.err(), Some(E2eError::UnknownSession));
    }

    #[test]
    fn invalid_public_values_stop_the_exchange() {
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        let (_, init) = Initiator::start("alice", "bob", Group::Ffdhe2048).expect("start");
        let mut one = vec![0u8; Group::Ffdhe2048.byte_len()];
        if let Some(last) = one.last_mut() {
            *last = 1;
        }
        let hostile = Init { y_i: one, ..init };
        let result = Responder::accept("bob", "alice", &hostile, &bob.identity, &alice.public());
        assert!(matches!(
            result.err(),
            Some(E2eError::InvalidPublicValue(_))
        ));
    }

    #[test]
    fn explanation_tells_each_step_without_secrets() {
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        let (initiator, init) = Initiator::start("alice", "bob", Group::Ffdhe2048).expect("start");
        assert_eq!(initiator.explanation().steps.len(), 1);
        assert!(initiator.explanation().latest_step()[0].contains("ffdhe2048"));
        let (responder, reply) =
            Responder::accept("bob", "alice", &init, &bob.identity, &alice.public())
                .expect("accept");
        assert!(responder
            .explanation()
            .latest_step()
            .iter()
            .any(|line| line.contains(&alice.public().fingerprint())));
        let (at_alice, confirm) = initiator
            .finish(&reply, &alice.identity, &bob.public())
            .expect("finish");
        let at_bob = responder.confirm(&confirm).expect("confirm");

        let shown = at_alice.explanation();
        assert_eq!(shown.steps.len(), 2);
        assert_eq!(shown.derived_keys.len(), 2);
        assert!(shown.signatures_checked[0].contains(&bob.public().fingerprint()));
        assert!(at_bob.explanation().signatures_checked[0].contains(&alice.public().fingerprint()));
        let summary = shown.to_string();
        assert!(summary.contains("ffdhe2048") && summary.contains("Secret fingerprint"));
        // Public values appear only abbreviated; Debug shows counters, not keys.
        let full_y_i = init
            .y_i
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>();
        let everything = format!("{shown:?}{summary}{at_alice:?}{at_bob:?}");
        assert!(!everything.contains(&full_y_i[..32]));
        assert!(format!("{at_alice:?}").contains("next_send_counter: 1"));
    }
}
