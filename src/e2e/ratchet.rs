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
//!   message authenticated. A forgery is refused before the fresh ratchet key is made, so it
//!   costs the receiver one check and one exponentiation.
//! - **Saved state** ([`Ratchet::to_bytes`]) is versioned; the caller stores it 0600, written
//!   atomically, after every message.

use std::collections::VecDeque;
use std::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use aws_lc_rs::digest::{digest, SHA256};

use super::aead::{MAX_PLAINTEXT_LEN, TAG_LEN};
use super::kdf::{hkdf, hmac_sha256, SecretKey, SECRET_KEY_LEN};
use super::{encode_fields, put_field, E2eError, EphemeralSecret, Fields, Group, PublicValue};

/// The most message keys one message may make us skip in one chain. Signal's reference
/// implementation allows 2,000 and libsignal 25,000; a person typing does not lose a thousand
/// messages in a row, and each kept key costs 72 bytes.
pub const MAX_SKIP: u32 = 1_000;

/// The most skipped message keys kept in all, across chains; the oldest is evicted first.
/// 2,000 × 72 bytes ≈ 144 KiB per conversation at worst (libsignal keeps 2,000 too).
pub const MAX_SKIPPED_KEYS: usize = 2_000;

/// `info` of KDF_RK: names the protocol, its version and the step.
pub(super) const ROOT_INFO: &[u8] = b"securechat/ratchet/v1 root";
/// `info` of the HKDF that turns a message key into a cipher key and nonce.
const MESSAGE_INFO: &[u8] = b"securechat/ratchet/v1 message";
/// KDF_CK's input for the message key (Signal's recommended constant).
pub(super) const MESSAGE_KEY_STEP: &[u8] = &[0x01];
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
        // No chain yet for the current value: only the initiator's view of the responder's
        // signed prekey, under which an honest responder never sends. A forgery.
        let receiving = self.receiving_chain.as_ref().ok_or(E2eError::Tampered)?;
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
        // Authenticate before the costly half of the step: a forged message costs one check
        // and one exponentiation, not three.
        let text = open(&message_key, &self.associated_data, message)?;
        let (new_secret, new_public) = fresh(self.group)?;
        let dh_out = new_secret.agree(&peer_key)?;
        let (root_after_send, sending) = kdf_rk(&root_after_receive, &dh_out)?;

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
        let receiving_key = self
            .receiving_key
            .as_ref()
            .map(PublicValue::to_bytes)
            .unwrap_or_default();
        let mut out = encode_fields(&[
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
        ]);
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
pub(super) fn kdf_rk(
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
pub(super) fn kdf_ck(chain_key: &SecretKey) -> (SecretKey, SecretKey) {
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
    encode_fields(&[associated_data, &header.to_bytes()])
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

/// Opens `message` with `message_key` under the session's `associated_data`: the text, or
/// [`E2eError::Tampered`] when it does not authenticate.
pub(super) fn open(
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

#[cfg(test)]
mod tests {
    use super::super::{
        initiate, respond, IdentityDhKey, IdentityKey, OneTimePrekey, Party, PrekeyBundle,
        SignedPrekey,
    };
    use super::*;

    const GROUP: Group = Group::Ffdhe2048;

    /// Alice's and Bob's sessions after Alice's first message ("hello") reached Bob.
    fn conversation() -> (Ratchet, Ratchet) {
        let alice = IdentityKey::generate().expect("identity");
        let bob = IdentityKey::generate().expect("identity");
        let alice_dh = IdentityDhKey::generate(&alice, "alice", GROUP).expect("ik");
        let bob_dh = IdentityDhKey::generate(&bob, "bob", GROUP).expect("ik");
        let spk = SignedPrekey::generate(&bob, "bob", 1, GROUP).expect("spk");
        let opk = OneTimePrekey::generate(7, GROUP).expect("opk");
        let bundle = PrekeyBundle::new(&bob_dh, &spk, Some(&opk));
        let at_alice = Party {
            name: "alice",
            identity: alice.public_key(),
        };
        let at_bob = Party {
            name: "bob",
            identity: bob.public_key(),
        };
        let (alice_session, first) =
            initiate(&at_alice, &alice_dh, &at_bob, &bundle, "hello").expect("initiate");
        let (bob_session, text) =
            respond(&at_bob, &bob_dh, &spk, Some(&opk), &at_alice, &first).expect("respond");
        assert_eq!(text, "hello");
        (alice_session, bob_session)
    }

    fn send(from: &mut Ratchet, text: &str) -> RatchetMessage {
        from.encrypt(text).expect("encrypt")
    }

    fn opens(to: &mut Ratchet, message: &RatchetMessage, text: &str) {
        assert_eq!(to.decrypt(message).as_deref(), Ok(text));
    }

    fn copy(state: &Ratchet) -> Ratchet {
        Ratchet::from_bytes(&state.to_bytes()).expect("restore")
    }

    /// What a thief holding `state` can do with its symmetric keys, ignoring every rule the
    /// library keeps: use each key (root, both chains, every kept key) as a message key, and as
    /// a chain key run forward up to 50 steps. Whether any of them opens `message`.
    fn thief_opens(state: &Ratchet, message: &RatchetMessage) -> bool {
        let keys = [&state.sending_chain, &state.receiving_chain]
            .into_iter()
            .flatten()
            .chain([&state.root_key])
            .chain(state.skipped.iter().map(|kept| &kept.key));
        keys.into_iter().any(|key| {
            let mut chain = SecretKey(key.0);
            let direct = open(key, &state.associated_data, message).is_ok();
            direct
                || (0..50).any(|_| {
                    let (next, message_key) = kdf_ck(&chain);
                    chain = next;
                    open(&message_key, &state.associated_data, message).is_ok()
                })
        })
    }

    #[test]
    fn turns_in_both_directions_open_and_each_turn_changes_the_ratchet_value() {
        let (mut alice, mut bob) = conversation();
        let mut values = Vec::new();
        for turn in 0..4 {
            let from_bob = send(&mut bob, &format!("bob {turn}"));
            opens(&mut alice, &from_bob, &format!("bob {turn}"));
            let from_alice = send(&mut alice, &format!("alice {turn}"));
            let again = send(&mut alice, "and more");
            opens(&mut bob, &from_alice, &format!("alice {turn}"));
            opens(&mut bob, &again, "and more");
            assert_eq!(from_alice.header.ratchet_key, again.header.ratchet_key);
            assert_eq!((from_alice.header.counter, again.header.counter), (0, 1));
            values.push(from_bob.header.ratchet_key);
            values.push(from_alice.header.ratchet_key);
        }
        let distinct: std::collections::HashSet<_> = values.iter().collect();
        assert_eq!(distinct.len(), values.len(), "a new value at every turn");
    }

    #[test]
    fn a_state_copied_at_message_n_opens_no_message_before_n() {
        let (mut alice, mut bob) = conversation();
        let mut earlier = Vec::new();
        for n in 0..3 {
            let reply = send(&mut bob, &format!("reply {n}"));
            opens(&mut alice, &reply, &format!("reply {n}"));
            for k in 0..3 {
                let message = send(&mut alice, &format!("turn {n} message {k}"));
                opens(&mut bob, &message, &format!("turn {n} message {k}"));
                earlier.push(message);
            }
        }
        // The thief copies Bob's state now, after message n.
        let mut stolen = copy(&bob);
        let kept_back = send(&mut alice, "the thief's own check");
        assert!(thief_opens(&stolen, &kept_back), "the thief's method works");
        for message in &earlier {
            assert!(!thief_opens(&stolen, message), "{:?}", message.header);
            assert!(stolen.decrypt(message).is_err(), "{:?}", message.header);
        }
        opens(&mut stolen, &kept_back, "the thief's own check");
    }

    #[test]
    fn a_copied_state_opens_nothing_once_both_sides_have_stepped_again() {
        let (mut alice, mut bob) = conversation();
        let stolen = copy(&bob);
        // Bob answers; Alice steps (new value) and writes back. That message is still under
        // Bob's ratchet value from before the copy, so the copy can read it: the bound of
        // healing is one round trip after the theft.
        let reply = send(&mut bob, "reply");
        opens(&mut alice, &reply, "reply");
        let still_exposed = send(&mut alice, "still exposed");
        opens(&mut copy(&stolen), &still_exposed, "still exposed");
        opens(&mut bob, &still_exposed, "still exposed");
        // Bob steps with a fresh value the thief never saw; from Alice's next answer on, the
        // copy — kept as it was, or moved along with everything it could read — opens nothing.
        let second_reply = send(&mut bob, "second reply");
        opens(&mut alice, &second_reply, "second reply");
        let healed = send(&mut alice, "healed");
        let mut followed = copy(&stolen);
        opens(&mut followed, &still_exposed, "still exposed");
        assert!(copy(&stolen).decrypt(&healed).is_err());
        assert!(followed.decrypt(&healed).is_err());
        assert!(!thief_opens(&stolen, &healed) && !thief_opens(&followed, &healed));
        opens(&mut bob, &healed, "healed");
    }

    #[test]
    fn messages_out_of_order_within_the_bound_open_once_each() {
        let (mut alice, mut bob) = conversation();
        let first_turn: Vec<_> = (0..4).map(|n| send(&mut alice, &format!("a{n}"))).collect();
        // Bob reads only the last of them, answers, and Alice starts a new chain.
        opens(&mut bob, &first_turn[3], "a3");
        let reply = send(&mut bob, "reply");
        opens(&mut alice, &reply, "reply");
        let second_turn: Vec<_> = (0..3).map(|n| send(&mut alice, &format!("b{n}"))).collect();
        // The new chain's last message arrives first: Bob keeps the keys of the two missing
        // from the old chain (PN) and of the two before it in the new one.
        opens(&mut bob, &second_turn[2], "b2");
        assert_eq!(bob.skipped_keys(), 3 + 2);
        for (message, text) in [
            (&first_turn[1], "a1"),
            (&second_turn[0], "b0"),
            (&first_turn[0], "a0"),
            (&first_turn[2], "a2"),
            (&second_turn[1], "b1"),
        ] {
            opens(&mut bob, message, text);
        }
        assert_eq!(bob.skipped_keys(), 0);
        for message in first_turn.iter().chain(&second_turn) {
            assert!(bob.decrypt(message).is_err(), "opened twice");
        }
    }

    #[test]
    fn a_skipped_key_flood_beyond_the_bound_is_refused_without_storing_anything() {
        let (mut alice, mut bob) = conversation();
        // Exactly MAX_SKIP missing messages are fine...
        let mut sent: Vec<_> = (0..=MAX_SKIP)
            .map(|n| send(&mut alice, &n.to_string()))
            .collect();
        opens(&mut bob, &sent[MAX_SKIP as usize], &MAX_SKIP.to_string());
        assert_eq!(bob.skipped_keys(), MAX_SKIP as usize);
        // ... one more is not, and is refused before any key is derived or kept.
        sent.extend((0..=MAX_SKIP + 1).map(|n| send(&mut alice, &n.to_string())));
        let too_far = sent.last().expect("sent");
        assert_eq!(
            bob.decrypt(too_far),
            Err(E2eError::TooManySkipped {
                skipped: u64::from(MAX_SKIP) + 1,
                max: MAX_SKIP
            })
        );
        assert_eq!(bob.skipped_keys(), MAX_SKIP as usize);
        // A forged header claiming a huge counter is refused the same way.
        let mut forged = sent[0].clone();
        forged.header.counter = u32::MAX - 1;
        assert!(matches!(
            bob.decrypt(&forged),
            Err(E2eError::TooManySkipped { .. })
        ));
    }

    #[test]
    fn the_total_of_kept_keys_is_capped_and_the_oldest_go_first() {
        let (mut alice, mut bob) = conversation();
        // Three chains, each delivering only its last message after skipping 900.
        let mut oldest_skipped = None;
        let mut newest_skipped = None;
        for turn in 0..3 {
            let messages: Vec<_> = (0..901).map(|n| send(&mut alice, &n.to_string())).collect();
            opens(&mut bob, &messages[900], "900");
            assert!(bob.skipped_keys() <= MAX_SKIPPED_KEYS);
            if turn == 0 {
                oldest_skipped = Some(messages[0].clone());
            }
            newest_skipped = Some(messages[899].clone());
            let reply = send(&mut bob, "reply");
            opens(&mut alice, &reply, "reply");
        }
        assert_eq!(bob.skipped_keys(), MAX_SKIPPED_KEYS);
        let (oldest, newest) = (oldest_skipped.expect("set"), newest_skipped.expect("set"));
        assert!(bob.decrypt(&oldest).is_err(), "evicted");
        opens(&mut bob, &newest, "899");
    }

    #[test]
    fn replayed_messages_are_refused() {
        let (mut alice, mut bob) = conversation();
        let reply = send(&mut bob, "reply");
        opens(&mut alice, &reply, "reply");
        let stepped = send(&mut alice, "opens a chain");
        let skipped = send(&mut alice, "skipped at first");
        let in_order = send(&mut alice, "in order");
        opens(&mut bob, &stepped, "opens a chain");
        opens(&mut bob, &in_order, "in order");
        opens(&mut bob, &skipped, "skipped at first");
        for (message, counter) in [(&stepped, 0), (&skipped, 1), (&in_order, 2)] {
            assert_eq!(
                bob.decrypt(message),
                Err(E2eError::AlreadyReceived { counter })
            );
        }
        // And a message of a chain that has ended (Bob has moved on) finds no key either.
        let answer = send(&mut bob, "answer");
        opens(&mut alice, &answer, "answer");
        opens(&mut bob, &send(&mut alice, "new chain"), "new chain");
        assert!(bob.decrypt(&stepped).is_err());
    }

    #[test]
    fn a_tampered_header_or_body_is_refused_and_changes_nothing() {
        let (mut alice, mut bob) = conversation();
        let reply = send(&mut bob, "reply");
        opens(&mut alice, &reply, "reply");
        let genuine = send(&mut alice, "genuine");
        let before = bob.to_bytes();
        // PN is not used to derive this message's key: only the AAD notices it changed.
        let mut other_pn = genuine.clone();
        other_pn.header.previous_chain_len += 1;
        // A valid ratchet value of someone else's: a ratchet step that cannot authenticate.
        let mut other_value = genuine.clone();
        let (_, stranger) = EphemeralSecret::generate(GROUP).expect("generate");
        other_value.header.ratchet_key = stranger.to_bytes();
        let mut other_body = genuine.clone();
        other_body.ciphertext[0] ^= 1;
        for forged in [&other_pn, &other_value, &other_body] {
            // Refused before a fresh ratchet key is made: a forgery never costs a key
            // generation and the second exponentiation.
            let mut fresh_keys = 0;
            let mut counting = |group| {
                fresh_keys += 1;
                EphemeralSecret::generate(group)
            };
            assert_eq!(
                bob.decrypt_using(forged, &mut counting),
                Err(E2eError::Tampered)
            );
            assert_eq!(fresh_keys, 0);
            assert_eq!(bob.to_bytes(), before, "state changed by a forgery");
        }
        // A value outside the subgroup is refused before any arithmetic with it.
        let mut hostile = genuine.clone();
        let p_minus_2 = GROUP.prime() - 2u32;
        hostile.header.ratchet_key = {
            let digits = p_minus_2.to_bytes_be();
            [vec![0; GROUP.byte_len() - digits.len()], digits].concat()
        };
        assert!(matches!(
            bob.decrypt(&hostile),
            Err(E2eError::InvalidPublicValue(_))
        ));
        opens(&mut bob, &genuine, "genuine");
    }

    #[test]
    fn a_saved_state_restores_to_the_same_conversation() {
        let (mut alice, mut bob) = conversation();
        let early = send(&mut alice, "early");
        let late = send(&mut alice, "late");
        opens(&mut bob, &late, "late");
        // Bob's client restarts: it has one skipped key and both chains.
        let saved = bob.to_bytes();
        let mut restored = Ratchet::from_bytes(&saved).expect("restore");
        assert_eq!(restored.to_bytes(), saved);
        assert_eq!(restored.skipped_keys(), 1);
        opens(&mut restored, &early, "early");
        let reply = send(&mut restored, "after restart");
        opens(&mut alice, &reply, "after restart");
        let answer = send(&mut alice, "answer");
        opens(&mut restored, &answer, "answer");
        assert!(format!("{restored:?}").contains("skipped_keys: 0"));
    }

    #[test]
    fn a_corrupt_or_foreign_saved_state_is_refused_in_words() {
        let (_, bob) = conversation();
        let saved = bob.to_bytes();
        let is_state_error =
            |bytes: &[u8]| matches!(Ratchet::from_bytes(bytes), Err(E2eError::State(_)));
        assert!(is_state_error(&[]));
        assert!(is_state_error(&saved[..saved.len() - 1]));
        assert!(is_state_error(&[&saved[..], &[0]].concat()));
        let mut other_version = saved.clone();
        let label_end = 8 + STATE_LABEL.len();
        other_version[label_end - 1] = b'2';
        assert!(is_state_error(&other_version));
        let mut huge_length = saved.clone();
        huge_length[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(is_state_error(&huge_length));
        assert!(Ratchet::from_bytes(&saved).is_ok());
    }

    #[test]
    fn debug_output_shows_counters_and_no_keys() {
        let (alice, _) = conversation();
        let shown = format!("{alice:?}");
        assert!(
            shown.contains("sent: 1") && shown.contains("ffdhe2048"),
            "{shown}"
        );
        let root_hex: String = alice
            .root_key
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!shown.contains(&root_hex[..16]) && !shown.contains('['));
    }
}
