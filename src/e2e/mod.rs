//! End-to-end encryption of private messages: the server routes them but cannot read or forge them.
//!
//! # The protocol in one screen
//!
//! Every user has a long-term Ed25519 identity key ([`IdentityKey`]). The first time Alice talks
//! to Bob she pins Bob's public key ([`PinStore`], trust on first use) and can later compare a
//! [`safety_number`] with him in person. For every conversation the two clients run a *signed
//! ephemeral Diffie–Hellman* exchange over an RFC 7919 group ([`Group`]). Every message below is one
//! line of text that travels inside the server's `MSG <to> <payload>` / `FROM <from> <payload>`
//! ([`Payload`]):
//!
//! ```text
//! Alice (initiator)                                          Bob (responder)
//!   DH-INIT    sid group Y_i       ───────────▶   checks Y_i, picks y, Y_r = g^y, Z = Y_i^y
//!   checks sig_r, Z = Y_r^x        ◀───────────   DH-REPLY   sid Y_r sig_r
//!   DH-CONFIRM sid sig_i           ───────────▶   checks sig_i: only now Bob sends and reads
//!   E2E sid counter ciphertext     ◀══════════▶   E2E sid counter ciphertext
//! ```
//!
//! Each signature covers the whole transcript (both public values, both names, the session id,
//! the group) and the signer's role; keys come from HKDF-SHA256 over `Z`, one per direction, and
//! every message is sealed with ChaCha20-Poly1305 under a counter nonce. `handshake.rs` tells the
//! exchange step by step; the files below it each do one job:
//!
//! | file | job |
//! | --- | --- |
//! | `group.rs` | the RFC 7919 primes, generator, exponent sizes; the exponentiations with a secret exponent (`2^x`, `Y^x`), computed by the workspace's `montgomery` crate |
//! | `dh.rs` | secret exponents, public values and their validation, the shared secret |
//! | `identity.rs` | Ed25519 identity keys, the key file, fingerprints and safety numbers |
//! | `kdf.rs` | HKDF: shared secret + transcript → two message keys and a secret fingerprint |
//! | `aead.rs` | sealing/opening messages: counters, nonces, addressing, replay checks |
//! | `handshake.rs` | the three-message exchange and the [`Session`] it produces |
//! | `explain.rs` | the classroom narration of an exchange (`/dh`), from each step's public facts |
//! | `wire.rs` | the one-line text encoding of the six payloads (four interactive, two offline) |
//! | `trust.rs` | the pinned-keys file (trust on first use) |
//! | `prekeys.rs` | X3DH-style prekeys: a conversation started while the peer is offline |
//! | `ratchet.rs` | the Double Ratchet: a key per message, a DH step per change of speaker |
//!
//! # Why these choices
//! - **Signed DH for the interactive exchange.** When both users are online, the exchange is
//!   ISO/IEC 9798-3-style signed Diffie–Hellman: each side signs the whole transcript, which a
//!   student can check line by line. It is not SIGMA or TLS 1.3: there is no MAC ("Finished")
//!   under the new keys, so key confirmation comes from the first message that authenticates,
//!   and from the secret fingerprint users can compare. The price is that signatures are not
//!   deniable.
//! - **X3DH-style prekeys and the Double Ratchet for the rest** (`prekeys.rs`, `ratchet.rs`,
//!   used by the client for offline delivery, `src/client/offline.rs`): a conversation can
//!   start while the peer is offline, every message
//!   has its own key, each change of speaker heals the session, and nothing about a
//!   conversation is signed (deniable). `prekeys.rs` explains why the identity needs a second,
//!   Diffie–Hellman key in the group.
//! - **Finite-field DH with short exponents.** The course shows DH as `g^x mod p`. RFC 7919's
//!   safe primes (`p = 2q + 1`, `q` prime) have no subgroups besides `{1}`, `{1, p-1}`, the one of
//!   order `q` and the whole group, so no small-subgroup trick helps to find a short exponent: the
//!   best attack is Pollard's lambda at about `2^(bits/2)` steps. An exponent of about twice the
//!   group's security strength is therefore enough (RFC 7919 §5.2), and makes each exponentiation
//!   about ten times faster than a full-size one.
//! - **ChaCha20-Poly1305.** Fast and constant-time in software on every CPU (no AES instructions
//!   needed); its one pitfall, nonce reuse, is ruled out by a key per direction and a counter.
//! - **Forward secrecy.** Exponents are dropped (and wiped, best effort) once the keys exist, so a
//!   later theft of an identity key does not reveal past conversations.
//!
//! # Threat model
//! The server is untrusted: it may swap public values or identity keys, alter, drop, replay or
//! reorder payloads. Swapped values fail a signature check against the pinned key; altered,
//! misaddressed or replayed messages fail [`Session::open`] with an error naming what happened;
//! dropped messages show up as a gap ([`Opened::missing`]). Not covered: a server that hands out a
//! false key on *first* contact (that is what comparing safety numbers is for), traffic analysis
//! (who talks to whom, when, how much), and local timing side channels (`num-bigint` is not
//! constant-time).

mod aead;
mod dh;
mod explain;
mod group;
mod handshake;
mod identity;
mod kdf;
mod offline_practice;
mod practice;
mod prekeys;
mod ratchet;
mod trust;
mod wire;

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

pub use aead::{EncryptedMessage, Opened, MAX_PLAINTEXT_LEN};
pub use dh::{EphemeralSecret, PublicValue, SharedSecret};
pub use explain::Explanation;
pub use group::{Group, GENERATOR};
pub use handshake::{Confirm, Init, Initiator, Reply, Responder, Session};
pub use identity::{safety_number, IdentityKey, IdentityPublicKey, SIGNATURE_LEN};
pub use offline_practice::{practice_offline_session, OfflinePractice};
pub use practice::practice_exchange;
pub use prekeys::{
    initiate, initiate_using, respond, respond_using, IdentityDhKey, OneTimePrekey, Party,
    PrekeyBundle, PrekeyMessage, SignedPrekey,
};
pub use ratchet::{KeySource, Ratchet, RatchetHeader, RatchetMessage, MAX_SKIP, MAX_SKIPPED_KEYS};
pub use trust::{look_alike_skeleton, PinStatus, PinStore, Trust};
pub use wire::{Payload, MAX_PAYLOAD_LEN};

/// Everything that can go wrong in the end-to-end layer, worded for the person at the keyboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum E2eError {
    /// The payload does not start with an end-to-end tag: it is an ordinary, unprotected message.
    NotE2e,
    /// The payload starts with an end-to-end tag but breaks the grammar in `wire.rs`.
    Malformed(String),
    /// A Diffie–Hellman public value (or the secret it produced) failed validation; says which check.
    InvalidPublicValue(&'static str),
    /// A signature did not verify with the identity key we expected.
    BadSignature,
    /// The payload belongs to a session other than the one in progress.
    UnknownSession,
    /// A message that is not newer than the last one accepted: replayed or reordered.
    Replay {
        /// The counter the message carried.
        counter: u64,
        /// The highest counter accepted so far in this direction.
        last: u64,
    },
    /// A message failed authentication: altered, addressed to someone else, or under another key.
    Tampered,
    /// The sending counter is used up; a new exchange is needed before sending more.
    CounterExhausted,
    /// A ratchet message whose number says that too many messages before it were lost: keeping
    /// a key for each would let a sender fill our memory.
    TooManySkipped {
        /// How many message keys it would take to reach it.
        skipped: u64,
        /// The most one chain may skip ([`MAX_SKIP`]).
        max: u32,
    },
    /// A ratchet message whose key was already used: a replay, or an old message whose kept key
    /// was evicted.
    AlreadyReceived {
        /// The message's number in its chain.
        counter: u32,
    },
    /// A first message names a prekey we no longer hold (already used, or rotated away).
    UnknownPrekey,
    /// Saved session state that cannot be used: another version, cut short, or inconsistent.
    State(String),
    /// A message too long to fit in one payload.
    TooLong {
        /// The length the user tried to send, in bytes.
        len: usize,
        /// The most one encrypted message may carry, in bytes.
        max: usize,
    },
    /// The identity key file cannot be read, written or trusted.
    KeyFile(String),
    /// The pinned-keys file cannot be read or written, or a pin request made no sense.
    TrustStore(String),
    /// The cryptographic library or the system's random generator failed (should never happen).
    Crypto(&'static str),
}

impl fmt::Display for E2eError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            E2eError::NotE2e => {
                write!(
                    f,
                    "not end-to-end encrypted: the server could have read or changed it"
                )
            }
            E2eError::Malformed(detail) => write!(f, "malformed end-to-end payload: {detail}"),
            E2eError::InvalidPublicValue(why) => write!(
                f,
                "rejected the key exchange: {why}; the exchange was abandoned, start it again"
            ),
            E2eError::BadSignature => write!(
                f,
                "signature check failed: this key-exchange message was not signed by the \
                 contact's pinned identity key (possible man-in-the-middle); exchange abandoned"
            ),
            E2eError::UnknownSession => write!(
                f,
                "this belongs to another or an expired session; restart the key exchange"
            ),
            E2eError::Replay { counter, last } => write!(
                f,
                "message #{counter} is not newer than #{last}, the last one received: \
                 replayed or reordered in transit, dropped"
            ),
            E2eError::Tampered => write!(
                f,
                "message failed authentication: altered in transit or not meant for this \
                 conversation, dropped"
            ),
            E2eError::CounterExhausted => write!(
                f,
                "this session cannot send more messages; restart the key exchange"
            ),
            E2eError::TooManySkipped { skipped, max } => write!(
                f,
                "a message arrived after {skipped} missing ones, more than the {max} kept \
                 track of; dropped (if it was genuine, start a new session)"
            ),
            E2eError::AlreadyReceived { counter } => write!(
                f,
                "message #{counter} was already received (replayed in transit), dropped"
            ),
            E2eError::UnknownPrekey => write!(
                f,
                "the first message uses a prekey this client no longer holds (used or \
                 expired); the sender's client must start a new session"
            ),
            E2eError::State(detail) => write!(f, "saved session state: {detail}"),
            E2eError::TooLong { len, max } => write!(
                f,
                "message is {len} bytes but one encrypted message holds at most {max}; split it"
            ),
            E2eError::KeyFile(detail) => write!(f, "identity key file: {detail}"),
            E2eError::TrustStore(detail) => write!(f, "pinned keys: {detail}"),
            E2eError::Crypto(what) => write!(f, "cryptographic failure: {what}"),
        }
    }
}

impl std::error::Error for E2eError {}

/// Length of a session id in bytes: 128 random bits never repeat in practice.
pub const SESSION_ID_LEN: usize = 16;

/// Names one run of the exchange and everything protected under it; the initiator picks it at
/// random, and it is bound into every signature and every message's AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(
    /// The random bytes, as sent (base64) and as bound into transcripts and AAD.
    pub [u8; SESSION_ID_LEN],
);

impl SessionId {
    /// A fresh random session id.
    pub fn random() -> Result<SessionId, E2eError> {
        let mut id = [0u8; SESSION_ID_LEN];
        fill_random(&mut id)?;
        Ok(SessionId(id))
    }
}

/// Standard padded base64, as it appears on the wire.
impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

/// Appends `field` with an 8-byte big-endian length prefix. Prefixing every field means a
/// concatenation can only be split one way ("ab" + "c" never encodes like "a" + "bc"), so two
/// different transcripts can never hash or sign alike.
fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
    out.extend_from_slice(field);
}

/// The fields, each length-prefixed by [`put_field`], one after the other.
pub(crate) fn encode_fields(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        put_field(&mut out, field);
    }
    out
}

/// Reads back what [`put_field`] wrote, one field at a time, for saved states and binary wire
/// formats (also the client's mailbox file). Every length is checked against what is left, so hostile input cannot make it read
/// past the end or allocate.
pub(crate) struct Fields<'a> {
    /// What is left to read.
    rest: &'a [u8],
    /// Builds the error for input that does not parse (`Malformed` on the wire, `State` on disk).
    error: fn(String) -> E2eError,
    /// What is being read, for the error text.
    what: &'static str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(
        bytes: &'a [u8],
        what: &'static str,
        error: fn(String) -> E2eError,
    ) -> Fields<'a> {
        Fields {
            rest: bytes,
            error,
            what,
        }
    }

    /// An error naming what was being read and what is wrong.
    pub(crate) fn fail(&self, detail: &str) -> E2eError {
        (self.error)(format!("{}: {detail}", self.what))
    }

    /// The next field's bytes.
    pub(crate) fn next(&mut self) -> Result<&'a [u8], E2eError> {
        let (length, rest) = self
            .rest
            .split_at_checked(8)
            .ok_or_else(|| self.fail("cut short"))?;
        let mut length_bytes = [0u8; 8];
        length_bytes.copy_from_slice(length);
        let field = usize::try_from(u64::from_be_bytes(length_bytes))
            .ok()
            .and_then(|length| rest.split_at_checked(length));
        let (field, rest) = field.ok_or_else(|| self.fail("cut short"))?;
        self.rest = rest;
        Ok(field)
    }

    /// The next field, which must be exactly `N` bytes.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], E2eError> {
        let field = self.next()?;
        field
            .try_into()
            .map_err(|_| self.fail(&format!("a {N}-byte field is {} bytes", field.len())))
    }

    /// The next field as a 4-byte big-endian number.
    pub(crate) fn number(&mut self) -> Result<u32, E2eError> {
        self.array::<4>().map(u32::from_be_bytes)
    }

    /// Checks that nothing follows the last field.
    pub(crate) fn finish(self) -> Result<(), E2eError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.fail("unexpected bytes after the last field"))
        }
    }
}

/// Fills `buf` from the operating system's CSPRNG, through aws-lc.
///
/// Why aws-lc's generator rather than the `rand` crate: it is the same audited source aws-lc uses
/// for the Ed25519 keys, its failure is a `Result` we can report (never a panic), and it keeps all
/// secret-generating code in one library.
fn fill_random(buf: &mut [u8]) -> Result<(), E2eError> {
    aws_lc_rs::rand::fill(buf)
        .map_err(|_| E2eError::Crypto("the system random number generator failed"))
}

/// Upper-case hex in groups of four digits ("3F2A 9C01 …"): easy to read aloud and compare.
fn hex_groups(bytes: &[u8]) -> String {
    bytes
        .chunks(2)
        .map(|pair| pair.iter().map(|b| format!("{b:02X}")).collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed_so_splits_cannot_collide() {
        let mut ab_c = Vec::new();
        put_field(&mut ab_c, b"ab");
        put_field(&mut ab_c, b"c");
        let mut a_bc = Vec::new();
        put_field(&mut a_bc, b"a");
        put_field(&mut a_bc, b"bc");
        assert_ne!(ab_c, a_bc);
        assert_eq!(&ab_c[..8], &2u64.to_be_bytes());
    }

    #[test]
    fn hex_groups_are_four_digits() {
        assert_eq!(hex_groups(&[0x3f, 0x2a, 0x9c, 0x01, 0x05]), "3F2A 9C01 05");
    }

    #[test]
    fn session_ids_are_random_and_display_as_base64() {
        let a = SessionId::random().expect("rng");
        let b = SessionId::random().expect("rng");
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 24);
        assert!(a.to_string().ends_with("=="));
    }
}
