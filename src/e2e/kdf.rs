//! From the Diffie–Hellman secret to session keys, with HKDF-SHA256 (RFC 5869).
//!
//! ```text
//! PRK   = HKDF-Extract(salt = SHA-256(transcript), input = Z)
//! key   = HKDF-Expand(PRK, "securechat/v1 key initiator->responder", 32)   ChaCha20-Poly1305
//! key   = HKDF-Expand(PRK, "securechat/v1 key responder->initiator", 32)   ChaCha20-Poly1305
//! shown = HKDF-Expand(PRK, "securechat/v1 secret fingerprint", 8)          both users compare it
//! ```
//!
//! Extract turns `Z`, a number mod p that is not uniformly random as bytes, into a uniform key;
//! salting it with the transcript hash ties every output to this exact exchange (group, names,
//! session id, both public values), so a different transcript gives unrelated keys even for the
//! same `Z`. Expand with distinct labels gives independent outputs: each direction has its own
//! key, so the two counters can never produce the same (key, nonce) pair, and the fingerprint
//! reveals nothing about the keys. Key bytes stay inside aws-lc: they never appear as a Rust
//! value we could print.
//!
//! The prekey agreement and the Double Ratchet (`prekeys.rs`, `ratchet.rs`) must save their
//! chain keys, so they keep them as [`SecretKey`] bytes (wiped on drop, never printed) and use
//! the two byte-level helpers at the end of this file: [`hkdf`] and [`hmac_sha256`].

use aws_lc_rs::aead::{LessSafeKey, UnboundKey, CHACHA20_POLY1305};
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::hkdf::{KeyType, Prk, Salt, HKDF_SHA256};
use aws_lc_rs::hmac;

use super::dh::wipe;
use super::{hex_groups, E2eError, SharedSecret};

/// HKDF label of the key that protects messages from the initiator to the responder.
pub(super) const INITIATOR_TO_RESPONDER_LABEL: &str = "securechat/v1 key initiator->responder";
/// HKDF label of the key that protects messages from the responder to the initiator.
pub(super) const RESPONDER_TO_INITIATOR_LABEL: &str = "securechat/v1 key responder->initiator";
/// HKDF label of the secret fingerprint.
const SECRET_FINGERPRINT_LABEL: &str = "securechat/v1 secret fingerprint";
/// Bytes of secret fingerprint shown: 64 bits, enough that a man-in-the-middle cannot make his
/// two separate secrets show the same value, short enough to read aloud.
const SECRET_FINGERPRINT_LEN: usize = 8;

/// Everything derived from one exchange.
pub(super) struct SessionKeys {
    /// Seals the initiator's messages and opens them at the responder.
    pub(super) initiator_to_responder: LessSafeKey,
    /// Seals the responder's messages and opens them at the initiator.
    pub(super) responder_to_initiator: LessSafeKey,
    /// Public digest of the secret in hex groups: equal on both screens only if both sides hold
    /// the same `Z` and transcript, i.e. nobody sat in the middle.
    pub(super) secret_fingerprint: String,
}

/// Derives the session keys from the shared secret and the transcript of the exchange.
pub(super) fn derive_session_keys(
    shared: &SharedSecret,
    transcript: &[u8],
) -> Result<SessionKeys, E2eError> {
    let transcript_hash = digest(&SHA256, transcript);
    let prk = Salt::new(HKDF_SHA256, transcript_hash.as_ref()).extract(shared.as_bytes());
    let mut fingerprint = [0u8; SECRET_FINGERPRINT_LEN];
    prk.expand(
        &[SECRET_FINGERPRINT_LABEL.as_bytes()],
        OutputLen(SECRET_FINGERPRINT_LEN),
    )
    .and_then(|okm| okm.fill(&mut fingerprint))
    .map_err(|_| E2eError::Crypto("HKDF could not derive the secret fingerprint"))?;
    Ok(SessionKeys {
        initiator_to_responder: message_key(&prk, INITIATOR_TO_RESPONDER_LABEL)?,
        responder_to_initiator: message_key(&prk, RESPONDER_TO_INITIATOR_LABEL)?,
        secret_fingerprint: hex_groups(&fingerprint),
    })
}

/// A ChaCha20-Poly1305 key expanded under `label`, built inside aws-lc.
fn message_key(prk: &Prk, label: &str) -> Result<LessSafeKey, E2eError> {
    let info = [label.as_bytes()];
    let okm = prk
        .expand(&info, &CHACHA20_POLY1305)
        .map_err(|_| E2eError::Crypto("HKDF could not derive a message key"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// An HKDF output length for outputs that are plain bytes rather than keys.
struct OutputLen(
    /// Bytes to produce.
    usize,
);

impl KeyType for OutputLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// Bytes in a [`SecretKey`]: a SHA-256 output, and a ChaCha20-Poly1305 key.
pub(super) const SECRET_KEY_LEN: usize = 32;

/// 32 secret bytes: a root key, chain key or message key. Wiped when dropped; `Debug` shows no
/// bytes. Invariant: only the KDF helpers below and a saved state ever produce one.
#[derive(PartialEq, Eq)]
pub(super) struct SecretKey(
    /// The key bytes.
    pub(super) [u8; SECRET_KEY_LEN],
);

impl Drop for SecretKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Says what it is, never the value.
impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<32 secret bytes>)")
    }
}

/// HKDF-SHA256 (RFC 5869): extract with `salt` from `input`, expand under `info` to fill `out`.
pub(super) fn hkdf(salt: &[u8], input: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), E2eError> {
    Salt::new(HKDF_SHA256, salt)
        .extract(input)
        .expand(&[info], OutputLen(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| E2eError::Crypto("HKDF could not derive a key"))
}

/// HMAC-SHA256 of `data` under `key`: one step of a symmetric-key ratchet chain.
pub(super) fn hmac_sha256(key: &SecretKey, data: &[u8]) -> SecretKey {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key.0), data);
    let mut out = [0u8; SECRET_KEY_LEN];
    out.copy_from_slice(tag.as_ref());
    SecretKey(out)
}

#[cfg(test)]
mod tests {
    use super::super::{EphemeralSecret, Group};
    use super::*;
    use aws_lc_rs::aead::{Aad, Nonce};

    /// The same shared secret, as computed by each side of a real exchange.
    fn shared_secret_pair() -> (SharedSecret, SharedSecret) {
        let (alice, alice_public) = EphemeralSecret::generate(Group::Ffdhe2048).expect("dh");
        let (bob, bob_public) = EphemeralSecret::generate(Group::Ffdhe2048).expect("dh");
        (
            alice.agree(&bob_public).expect("agree"),
            bob.agree(&alice_public).expect("agree"),
        )
    }

    fn seal_probe(key: &LessSafeKey) -> Vec<u8> {
        let mut data = b"probe".to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::empty(),
            &mut data,
        )
        .expect("seal");
        data
    }

    fn opens(key: &LessSafeKey, sealed: &[u8]) -> bool {
        let mut data = sealed.to_vec();
        key.open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::empty(),
            &mut data,
        )
        .is_ok()
    }

    #[test]
    fn both_sides_derive_the_same_directional_keys() {
        let (at_alice, at_bob) = shared_secret_pair();
        let alice = derive_session_keys(&at_alice, b"transcript").expect("derive");
        let bob = derive_session_keys(&at_bob, b"transcript").expect("derive");
        let i_to_r = seal_probe(&alice.initiator_to_responder);
        assert!(opens(&bob.initiator_to_responder, &i_to_r));
        let r_to_i = seal_probe(&bob.responder_to_initiator);
        assert!(opens(&alice.responder_to_initiator, &r_to_i));
        assert_eq!(alice.secret_fingerprint, bob.secret_fingerprint);
        assert_eq!(alice.secret_fingerprint.len(), 19); // "ABCD EF01 2345 6789"
    }

    #[test]
    fn the_two_directions_have_different_keys() {
        let (secret, _) = shared_secret_pair();
        let keys = derive_session_keys(&secret, b"transcript").expect("derive");
        let sealed = seal_probe(&keys.initiator_to_responder);
        assert!(!opens(&keys.responder_to_initiator, &sealed));
    }

    #[test]
    fn a_different_transcript_gives_unrelated_keys() {
        let (at_alice, at_bob) = shared_secret_pair();
        let alice = derive_session_keys(&at_alice, b"transcript").expect("derive");
        let bob = derive_session_keys(&at_bob, b"transcripT").expect("derive");
        let sealed = seal_probe(&alice.initiator_to_responder);
        assert!(!opens(&bob.initiator_to_responder, &sealed));
        assert_ne!(alice.secret_fingerprint, bob.secret_fingerprint);
    }
}
