//! The Double Ratchet (Signal's specification, revision 1, 2016), with its Diffie–Hellman steps
//! in the course's RFC 7919 groups: a key per message, and a new Diffie–Hellman value each time
//! the speaker changes.
//!
//! ```text
//! KDF_RK(rk, dh_out) = HKDF-SHA256(salt = rk, input = dh_out, info = ROOT_INFO, 64 bytes)
//!                      → (new root key: bytes 0..32, new chain key: bytes 32..64)
//! KDF_CK(ck)         = (message key = HMAC-SHA256(ck, 0x01), next chain key = HMAC-SHA256(ck, 0x02))
//! seal(mk, text)     : HKDF-SHA256(salt = 32 zero bytes, input = mk, info = MESSAGE_INFO, 44 bytes)
//!                      → ChaCha20-Poly1305 key (0..32) and nonce (32..44);
//!                      AAD = F(AD) ‖ F(header), header = Y ‖ u32be(PN) ‖ u32be(N)
//! ```
//!
//! - **Symmetric ratchet (forward secrecy).** Each direction has a chain key; every message
//!   moves it one HMAC step and takes a fresh message key, then the old chain key is dropped. A
//!   state copied at message n holds no key for messages before n.
//! - **Diffie–Hellman ratchet (healing).** Every header carries the sender's current ratchet
//!   value `Y = g^x mod p`. When a message shows a new `Y` (the peer has started speaking), the
//!   receiver mixes `DH(my x, new Y)` into the root key for its receiving chain, makes a fresh
//!   `x`, and mixes `DH(new x, Y)` for its sending chain. Once both sides have made fresh
//!   values the attacker did not see, a copied state decrypts nothing new.
//! - **Received values** are checked like every other (`PublicValue::from_bytes`: range and a
//!   Jacobi symbol for the prime-order subgroup), on each ratchet step.
//! - **Out of order.** Keys of messages skipped over are kept so the messages still open when
//!   they arrive — at most [`MAX_SKIP`] per chain step and [`MAX_SKIPPED_KEYS`] in all, oldest
//!   evicted first. A key is deleted once used, so a replay finds nothing.
//! - **All or nothing.** A message that fails any check (a bad value, a forged header, a wrong
//!   tag) changes nothing: every new chain value is computed first and stored only after the
//!   message authenticated.
//! - **Saved state** ([`Ratchet::to_bytes`]) is versioned; the caller stores it 0600, written
//!   atomically, after every message.

use std::collections::VecDeque;
use std::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use aws_lc_rs::digest::{digest, SHA256};

use super::aead::{MAX_PLAINTEXT_LEN, TAG_LEN};
use super::kdf::{hkdf, hmac_sha256, SecretKey, SECRET_KEY_LEN};
use super::{put_field, E2eError, EphemeralSecret, Fields, Group, PublicValue};

/// The most message keys one message may make us skip in one chain. Signal's reference
/// implementation allows 2,000 and libsignal 25,000; a person typing does not lose a thousand
/// messages in a row, and each kept key costs 72 bytes.
pub const MAX_SKIP: u32 = 1_000;

/// The most skipped message keys kept in all, across chains; the oldest is evicted first.
/// 2,000 × 72 bytes ≈ 144 KiB per conversation at worst (libsignal keeps 2,000 too).
pub const MAX_SKIPPED_KEYS: usize = 2_000;

/// `info` of KDF_RK: names the protocol, its version and the step.
const ROOT_INFO: &[u8] = b"securechat/ratchet/v1 root";
/// `info` of the HKDF that turns a message key into a cipher key and nonce.
const MESSAGE_INFO: &[u8] = b"securechat/ratchet/v1 message";
/// KDF_CK's input for the message key (Signal's recommended constant).
const MESSAGE_KEY_STEP: &[u8] = &[0x01];
/// KDF_CK's input for the next chain key.
const CHAIN_KEY_STEP: &[u8] = &[0x02];
/// First field of a saved state: names the format and its version.
const STATE_LABEL: &[u8] = b"securechat/ratchet-state/v1";

/// What travels in front of each ciphertext, authenticated but not encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatchetHeader {
    /// The sender's current ratchet value `Y`, the group's byte length.
    pub ratchet_key: Vec<u8>,
    /// PN: how many messages the sender sent in its previous sending chain, so the receiver
    /// can keep the keys of any it has not received.
    pub previous_chain_len: u32,
    /// N: this message's number in the current sending chain, from 0.
    pub counter: u32,
}

impl RatchetHeader {
    /// `Y ‖ u32be(PN) ‖ u32be(N)`: fixed-width fields, so one parse only.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.ratchet_key.clone();
        bytes.extend_from_slice(&self.previous_chain_len.to_be_bytes());
        bytes.extend_from_slice(&self.counter.to_be_bytes());
        bytes
    }

    /// Parses a header for `group`; the ratchet value is checked only when it is used.
    pub fn from_bytes(group: Group, bytes: &[u8]) -> Result<RatchetHeader, E2eError> {
        let key_len = group.byte_len();
        if bytes.len() != key_len + 8 {
            return Err(E2eError::Malformed(format!(
                "a ratchet header for {} is {} bytes",
                group.name(),
                key_len + 8
            )));
        }
        let (ratchet_key, numbers) = bytes.split_at(key_len);
        let (pn, n) = numbers.split_at(4);
        Ok(RatchetHeader {
            ratchet_key: ratchet_key.to_vec(),
            previous_chain_len: u32_from(pn)?,
            counter: u32_from(n)?,
        })
    }
}

/// One ratchet message: its header and the sealed text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatchetMessage {
    /// Sender's ratchet value and counters.
    pub header: RatchetHeader,
    /// The text sealed with ChaCha20-Poly1305, followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// A kept key of a message skipped over.
struct SkippedKey {
    /// SHA-256 of the ratchet value of the chain the message belongs to.
    chain: [u8; 32],
    /// The message's number in that chain.
    counter: u32,
    /// Its message key.
    key: SecretKey,
}

/// My sending ratchet key pair.
struct RatchetKeyPair {
    /// `x`; wiped when dropped or replaced.
    secret: EphemeralSecret,
    /// `Y = g^x`, as sent in every header.
    public: Vec<u8>,
}

/// The state of one conversation (Signal's `state`). Invariant: every field changes only when a
/// message is sealed, or opened in full (see the module docs).
pub struct Ratchet {
    /// The group of every ratchet value; fixed by the prekey bundle.
    group: Group,
    /// AD of the session (from the prekey agreement): bound into every message's AAD.
    associated_data: Vec<u8>,
    /// RK.
    root_key: SecretKey,
    /// DHs: my current ratchet key pair.
    sending_key: RatchetKeyPair,
    /// DHr: the peer's current ratchet value (validated); `None` until the first message
    /// arrives at the responder.
    receiving_key: Option<PublicValue>,
    /// CKs; `None` at the responder until its first ratchet step.
    sending_chain: Option<SecretKey>,
    /// CKr; `None` until a message from the peer's current ratchet value arrives.
    receiving_chain: Option<SecretKey>,
    /// Ns: messages sent in the current sending chain.
    sent: u32,
    /// Nr: messages received in the current receiving chain (the next counter expected).
    received: u32,
    /// PN: messages sent in the previous sending chain.
    previous_sent: u32,
    /// MKSKIPPED, oldest first. Invariant: at most [`MAX_SKIPPED_KEYS`] entries.
    skipped: VecDeque<SkippedKey>,
}

/// A source of fresh ratchet key pairs: the system's generator normally, fixed exponents for
/// golden vectors.
#[doc(hidden)]
pub type KeySource<'a> =
    &'a mut dyn FnMut(Group) -> Result<(EphemeralSecret, PublicValue), E2eError>;

impl Ratchet {
    /// The initiator's state after the prekey agreement (Signal's RatchetInitAlice): `shared` is
    /// SK, `peer_key` the responder's signed prekey, `mine` a fresh ratchet key pair.
    pub(super) fn initiator(
        shared: SecretKey,
        associated_data: Vec<u8>,
        peer_key: PublicValue,
        mine: (EphemeralSecret, PublicValue),
    ) -> Result<Ratchet, E2eError> {
        let (secret, public) = mine;
        let (root_key, sending_chain) = kdf_rk(&shared, &secret.agree(&peer_key)?)?;
        Ok(Ratchet {
            group: peer_key.group(),
            associated_data,
            root_key,
            sending_key: RatchetKeyPair {
                secret,
                public: public.to_bytes(),
            },
            receiving_key: Some(peer_key),
            sending_chain: Some(sending_chain),
            receiving_chain: None,
            sent: 0,
            received: 0,
            previous_sent: 0,
            skipped: VecDeque::new(),
        })
    }

    /// The responder's state (Signal's RatchetInitBob): its first ratchet key pair is the signed
    /// prekey the initiator used. It can send only after the first message has arrived.
    pub(super) fn responder(
        shared: SecretKey,
        associated_data: Vec<u8>,
        signed_prekey: (EphemeralSecret, PublicValue),
    ) -> Ratchet {
        let (secret, public) = signed_prekey;
        Ratchet {
            group: public.group(),
            associated_data,
            root_key: shared,
            sending_key: RatchetKeyPair {
                secret,
                public: public.to_bytes(),
            },
            receiving_key: None,
            sending_chain: None,
            receiving_chain: None,
            sent: 0,
            received: 0,
            previous_sent: 0,
            skipped: VecDeque::new(),
        }
    }

    /// Seals `text` as my next message (Signal's RatchetEncrypt).
    pub fn encrypt(&mut self, text: &str) -> Result<RatchetMessage, E2eError> {
        if text.len() > MAX_PLAINTEXT_LEN {
            return Err(E2eError::TooLong {
                len: text.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let chain = self.sending_chain.as_ref().ok_or_else(|| {
            E2eError::State("this side cannot send before the peer's first message".to_owned())
        })?;
        let next_sent = self.sent.checked_add(1).ok_or(E2eError::CounterExhausted)?;
        let (next_chain, message_key) = kdf_ck(chain);
        let header = RatchetHeader {
            ratchet_key: self.sending_key.public.clone(),
            previous_chain_len: self.previous_sent,
            counter: self.sent,
        };
        let ciphertext = seal(&message_key, &self.associated_data, &header, text)?;
        self.sending_chain = Some(next_chain);
        self.sent = next_sent;
        Ok(RatchetMessage { header, ciphertext })
    }

    /// Opens the peer's message (Signal's RatchetDecrypt), with fresh ratchet keys from the
    /// system's generator.
    pub fn decrypt(&mut self, message: &RatchetMessage) -> Result<String, E2eError> {
        self.decrypt_using(message, &mut EphemeralSecret::generate)
    }

    /// [`Ratchet::decrypt`] taking fresh ratchet keys from `fresh`: for golden vectors only.
    #[doc(hidden)]
    pub fn decrypt_using(
        &mut self,
        message: &RatchetMessage,
        fresh: KeySource<'_>,
    ) -> Result<String, E2eError> {
        let header = &message.header;
        let chain = chain_id(&header.ratchet_key);
        if let Some(index) = self
            .skipped
            .iter()
            .position(|kept| kept.chain == chain && kept.counter == header.counter)
        {
            let text = open(&self.skipped[index].key, &self.associated_data, message)?;
            self.skipped.remove(index);
            return Ok(text);
        }
        let current = self.receiving_key.as_ref().map(PublicValue::to_bytes);
        if current.as_deref() == Some(&header.ratchet_key[..]) {
            self.open_in_current_chain(message, chain)
        } else {
            self.open_after_ratchet_step(message, chain, fresh)
        }
    }

    /// A message in the chain we are receiving on: skip ahead to its counter, open, commit.
    fn open_in_current_chain(
        &mut self,
        message: &RatchetMessage,
        chain: [u8; 32],
    ) -> Result<String, E2eError> {
        let counter = message.header.counter;
        if counter < self.received {
            return Err(E2eError::AlreadyReceived { counter });
        }
        let receiving = self
            .receiving_chain
            .as_ref()
            .ok_or_else(|| E2eError::State("no receiving chain for this value".to_owned()))?;
        let next_received = counter.checked_add(1).ok_or(E2eError::CounterExhausted)?;
        let (at_counter, kept) = skip(receiving, self.received, counter, chain)?;
        let (next_chain, message_key) = kdf_ck(&at_counter);
        let text = open(&message_key, &self.associated_data, message)?;
        self.receiving_chain = Some(next_chain);
        self.received = next_received;
        self.keep(kept);
        Ok(text)
    }

    /// A message under a new ratchet value from the peer: a Diffie–Hellman ratchet step
    /// (Signal's DHRatchet), computed aside and stored only if the message opens.
    fn open_after_ratchet_step(
        &mut self,
        message: &RatchetMessage,
        chain: [u8; 32],
        fresh: KeySource<'_>,
    ) -> Result<String, E2eError> {
        let header = &message.header;
        let next_received = header
            .counter
            .checked_add(1)
            .ok_or(E2eError::CounterExhausted)?;
        let peer_key = PublicValue::from_bytes(self.group, &header.ratchet_key)?;
        // Keys of the messages still missing from the chain that ends here.
        let mut kept = match (&self.receiving_chain, &self.receiving_key) {
            (Some(old_chain), Some(old_key)) => {
                let old_id = chain_id(&old_key.to_bytes());
                skip(old_chain, self.received, header.previous_chain_len, old_id)?.1
            }
            _ => Vec::new(),
        };
        let dh_in = self.sending_key.secret.agree(&peer_key)?;
        let (root_after_receive, receiving) = kdf_rk(&self.root_key, &dh_in)?;
        let (at_counter, kept_new) = skip(&receiving, 0, header.counter, chain)?;
        kept.extend(kept_new);
        let (next_receiving, message_key) = kdf_ck(&at_counter);
        let (new_secret, new_public) = fresh(self.group)?;
        let dh_out = new_secret.agree(&peer_key)?;
        let (root_after_send, sending) = kdf_rk(&root_after_receive, &dh_out)?;
        let text = open(&message_key, &self.associated_data, message)?;

        self.previous_sent = self.sent;
        self.sent = 0;
        self.received = next_received;
        self.receiving_key = Some(peer_key);
        self.receiving_chain = Some(next_receiving);
        self.sending_key = RatchetKeyPair {
            secret: new_secret,
            public: new_public.to_bytes(),
        };
        self.sending_chain = Some(sending);
        self.root_key = root_after_send;
        self.keep(kept);
        Ok(text)
    }

    /// Stores skipped keys, evicting the oldest beyond [`MAX_SKIPPED_KEYS`].
    fn keep(&mut self, kept: Vec<SkippedKey>) {
        self.skipped.extend(kept);
        while self.skipped.len() > MAX_SKIPPED_KEYS {
            self.skipped.pop_front();
        }
    }

    /// How many skipped-message keys are kept now (at most [`MAX_SKIPPED_KEYS`]).
    pub fn skipped_keys(&self) -> usize {
        self.skipped.len()
    }

    /// The group of this conversation's ratchet values.
    pub fn group(&self) -> Group {
        self.group
    }

    /// The whole state as bytes, to save between runs: every field length-prefixed (`F()` of
    /// `report/protocol.md` §11.1), starting with a version label. Holds secrets: store it like
    /// a private key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let receiving_key = self
            .receiving_key
            .as_ref()
            .map(PublicValue::to_bytes)
            .unwrap_or_default();
        for field in [
            STATE_LABEL,
            self.group.name().as_bytes(),
            &self.associated_data,
            &self.root_key.0,
            self.sending_key.secret.exponent_bytes(),
            &receiving_key,
            key_or_empty(&self.sending_chain),
            key_or_empty(&self.receiving_chain),
            &self.sent.to_be_bytes(),
            &self.received.to_be_bytes(),
            &self.previous_sent.to_be_bytes(),
            &(self.skipped.len() as u32).to_be_bytes(),
        ] {
            put_field(&mut out, field);
        }
        for kept in &self.skipped {
            put_field(&mut out, &kept.chain);
            put_field(&mut out, &kept.counter.to_be_bytes());
            put_field(&mut out, &kept.key.0);
        }
        out
    }

    /// Restores a state saved by [`Ratchet::to_bytes`]. Every value is checked again (public
    /// values included), and anything unexpected is an [`E2eError::State`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Ratchet, E2eError> {
        let mut fields = Fields::new(bytes, "ratchet state", E2eError::State);
        if fields.next()? != STATE_LABEL {
            return Err(state_error(
                "not a ratchet state, or saved by another version",
            ));
        }
        let group_name = std::str::from_utf8(fields.next()?).unwrap_or_default();
        let group = Group::from_name(group_name).ok_or_else(|| state_error("unknown group"))?;
        let associated_data = fields.next()?.to_vec();
        let root_key = SecretKey(fields.array()?);
        let (secret, public) = EphemeralSecret::from_exponent(group, fields.next()?)
            .map_err(|_| state_error("the ratchet secret is not a valid exponent"))?;
        let receiving_key = match fields.next()? {
            [] => None,
            bytes => Some(PublicValue::from_bytes(group, bytes)?),
        };
        let sending_chain = optional_key(&mut fields)?;
        let receiving_chain = optional_key(&mut fields)?;
        let sent = fields.number()?;
        let received = fields.number()?;
        let previous_sent = fields.number()?;
        let count = fields.number()? as usize;
        if count > MAX_SKIPPED_KEYS {
            return Err(state_error("more skipped keys than allowed"));
        }
        let mut skipped = VecDeque::with_capacity(count);
        for _ in 0..count {
            let chain = fields.array()?;
            let counter = fields.number()?;
            let key = SecretKey(fields.array()?);
            skipped.push_back(SkippedKey {
                chain,
                counter,
                key,
            });
        }
        fields.finish()?;
        Ok(Ratchet {
            group,
            associated_data,
            root_key,
            sending_key: RatchetKeyPair {
                secret,
                public: public.to_bytes(),
            },
            receiving_key,
            sending_chain,
            receiving_chain,
            sent,
            received,
            previous_sent,
            skipped,
        })
    }
}

/// Shows the counters, never keys.
impl fmt::Debug for Ratchet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ratchet")
            .field("group", &self.group.name())
            .field("sent", &self.sent)
            .field("received", &self.received)
            .field("previous_sent", &self.previous_sent)
            .field("skipped_keys", &self.skipped.len())
            .finish()
    }
}

/// KDF_RK: a new root key and a new chain key from the root key and a Diffie–Hellman output.
fn kdf_rk(
    root_key: &SecretKey,
    dh_out: &super::SharedSecret,
) -> Result<(SecretKey, SecretKey), E2eError> {
    let mut out = [0u8; 2 * SECRET_KEY_LEN];
    hkdf(&root_key.0, dh_out.as_bytes(), ROOT_INFO, &mut out)?;
    let (root, chain) = split_keys(&out);
    super::dh::wipe(&mut out);
    Ok((root, chain))
}

/// KDF_CK: (next chain key, message key).
fn kdf_ck(chain_key: &SecretKey) -> (SecretKey, SecretKey) {
    (
        hmac_sha256(chain_key, CHAIN_KEY_STEP),
        hmac_sha256(chain_key, MESSAGE_KEY_STEP),
    )
}

/// Walks a receiving chain from message `from` to message `until`, keeping each message key on
/// the way; returns the chain key for `until`. Refuses a walk longer than [`MAX_SKIP`].
fn skip(
    chain_key: &SecretKey,
    from: u32,
    until: u32,
    chain: [u8; 32],
) -> Result<(SecretKey, Vec<SkippedKey>), E2eError> {
    let steps = u64::from(until.saturating_sub(from));
    if steps > u64::from(MAX_SKIP) {
        return Err(E2eError::TooManySkipped {
            skipped: steps,
            max: MAX_SKIP,
        });
    }
    let mut current = SecretKey(chain_key.0);
    let mut kept = Vec::new();
    for counter in from..until.max(from) {
        let (next, key) = kdf_ck(&current);
        kept.push(SkippedKey {
            chain,
            counter,
            key,
        });
        current = next;
    }
    Ok((current, kept))
}

/// Names a chain by its ratchet value, compactly (32 bytes instead of 384).
fn chain_id(ratchet_key: &[u8]) -> [u8; 32] {
    let mut id = [0u8; 32];
    id.copy_from_slice(digest(&SHA256, ratchet_key).as_ref());
    id
}

/// The ChaCha20-Poly1305 key and nonce of one message key (see the module docs).
fn cipher(message_key: &SecretKey) -> Result<(LessSafeKey, Nonce), E2eError> {
    let mut out = [0u8; SECRET_KEY_LEN + NONCE_LEN];
    hkdf(
        &[0u8; SECRET_KEY_LEN],
        &message_key.0,
        MESSAGE_INFO,
        &mut out,
    )?;
    let (key_bytes, nonce_bytes) = out.split_at(SECRET_KEY_LEN);
    let key = UnboundKey::new(&CHACHA20_POLY1305, key_bytes)
        .map_err(|_| E2eError::Crypto("ChaCha20-Poly1305 refused a 32-byte key"))?;
    let nonce = Nonce::try_assume_unique_for_key(nonce_bytes)
        .map_err(|_| E2eError::Crypto("ChaCha20-Poly1305 refused a 12-byte nonce"))?;
    super::dh::wipe(&mut out);
    Ok((LessSafeKey::new(key), nonce))
}

/// `F(AD) ‖ F(header)`: the authenticated context of one message.
fn message_aad(associated_data: &[u8], header: &RatchetHeader) -> Vec<u8> {
    let mut aad = Vec::new();
    put_field(&mut aad, associated_data);
    put_field(&mut aad, &header.to_bytes());
    aad
}

fn seal(
    message_key: &SecretKey,
    associated_data: &[u8],
    header: &RatchetHeader,
    text: &str,
) -> Result<Vec<u8>, E2eError> {
    let (key, nonce) = cipher(message_key)?;
    let mut data = text.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        nonce,
        Aad::from(message_aad(associated_data, header)),
        &mut data,
    )
    .map_err(|_| E2eError::Crypto("ChaCha20-Poly1305 encryption failed"))?;
    Ok(data)
}

fn open(
    message_key: &SecretKey,
    associated_data: &[u8],
    message: &RatchetMessage,
) -> Result<String, E2eError> {
    if message.ciphertext.len() < TAG_LEN {
        return Err(E2eError::Malformed(
            "ciphertext is shorter than its tag".to_owned(),
        ));
    }
    let (key, nonce) = cipher(message_key)?;
    let mut data = message.ciphertext.clone();
    let aad = Aad::from(message_aad(associated_data, &message.header));
    let text = key
        .open_in_place(nonce, aad, &mut data)
        .map_err(|_| E2eError::Tampered)?;
    String::from_utf8(text.to_vec())
        .map_err(|_| E2eError::Malformed("the decrypted message is not UTF-8 text".to_owned()))
}

fn split_keys(bytes: &[u8; 2 * SECRET_KEY_LEN]) -> (SecretKey, SecretKey) {
    let mut first = [0u8; SECRET_KEY_LEN];
    let mut second = [0u8; SECRET_KEY_LEN];
    first.copy_from_slice(&bytes[..SECRET_KEY_LEN]);
    second.copy_from_slice(&bytes[SECRET_KEY_LEN..]);
    (SecretKey(first), SecretKey(second))
}

fn u32_from(bytes: &[u8]) -> Result<u32, E2eError> {
    bytes
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| E2eError::Malformed("a 4-byte number is cut short".to_owned()))
}

/// A chain key's bytes, or nothing when there is no chain yet.
fn key_or_empty(key: &Option<SecretKey>) -> &[u8] {
    key.as_ref().map_or(&[], |key| &key.0)
}

fn state_error(detail: &str) -> E2eError {
    E2eError::State(detail.to_owned())
}

/// The next field of a saved state as a key, or `None` when empty.
fn optional_key(fields: &mut Fields<'_>) -> Result<Option<SecretKey>, E2eError> {
    match fields.next()? {
        [] => Ok(None),
        bytes => bytes
            .try_into()
            .map(|key| Some(SecretKey(key)))
            .map_err(|_| state_error("a chain key is not 32 bytes")),
    }
}
