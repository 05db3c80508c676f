//! Long-term Ed25519 identity keys: the key file, signatures, fingerprints and safety numbers.
//!
//! Each user has one identity key per server account. It signs the key-exchange transcript, so
//! the peer knows the Diffie–Hellman values really came from us. Its public half is what peers pin
//! and what people compare:
//! - a **fingerprint** names one key: SHA-256 over the length-prefixed fields
//!   `"securechat/key-fingerprint/v1"` and the key; its first 16 bytes in groups of four hex
//!   digits, `3F2A 9C01 …` (8 groups).
//! - a **safety number** names a *pair* of users and their keys: 12 groups of 5 decimal digits,
//!   the same on both screens. Each user contributes 6 groups: SHA-256 over the length-prefixed
//!   fields `"securechat/safety-number/v1"`, username and key, cut into six 5-byte numbers taken
//!   mod 100000. The two halves are ordered by username. Reading it aloud over a trusted channel
//!   detects a server that handed out a false key on first contact.
//!
//! The key file holds the key as PKCS#8 v2 DER (RFC 5958), the standard container, so tools can
//! inspect it: `openssl pkey -inform DER -in identity.key -noout -text`.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::{hex_groups, put_field, E2eError};
use crate::files::{is_owner_only, write_atomically};

/// Bytes in an Ed25519 public key.
pub(super) const PUBLIC_KEY_LEN: usize = 32;
/// Bytes in an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Domain label for per-key fingerprints, so they never equal any other hash of the key.
const FINGERPRINT_LABEL: &[u8] = b"securechat/key-fingerprint/v1";
/// Fingerprint bytes shown: 128 bits, far beyond what anyone could match by trial.
const FINGERPRINT_LEN: usize = 16;
/// Domain label for safety numbers.
const SAFETY_NUMBER_LABEL: &[u8] = b"securechat/safety-number/v1";
/// Each user's half of a safety number: 6 groups of 5 digits, about 100 bits.
const SAFETY_GROUPS_PER_USER: usize = 6;
/// Digest bytes behind each 5-digit group: 40 bits, so taking them mod 100000 is unbiased in
/// practice (the bias is below 1 in 10^7).
const BYTES_PER_SAFETY_GROUP: usize = 5;

/// My long-term identity key pair.
pub struct IdentityKey {
    /// The Ed25519 key pair; aws-lc holds the private half and never shows it.
    key_pair: Ed25519KeyPair,
    /// The public half, copied out once so that reading it cannot fail later.
    public: IdentityPublicKey,
}

impl IdentityKey {
    /// A new random identity key (not saved anywhere).
    pub fn generate() -> Result<IdentityKey, E2eError> {
        let key_pair = Ed25519KeyPair::generate()
            .map_err(|_| E2eError::Crypto("could not generate an Ed25519 key"))?;
        IdentityKey::from_key_pair(key_pair)
    }

    /// The identity key whose Ed25519 private seed (RFC 8032 §5.1.5) is `seed`: for golden test
    /// vectors only, where keys must be fixed. Real keys come from [`IdentityKey::generate`].
    #[doc(hidden)]
    pub fn from_fixed_seed(seed: &[u8; 32]) -> Result<IdentityKey, E2eError> {
        let key_pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| E2eError::Crypto("could not build an Ed25519 key from a seed"))?;
        IdentityKey::from_key_pair(key_pair)
    }

    /// Loads the identity key stored at `path`, or creates and stores a new one if there is no
    /// file. Returns the key and whether it was just created (so the UI can say so).
    ///
    /// Refuses a file that other users can read or write: the key may already have leaked, and the
    /// user should decide (`chmod 600`, or start over with a new key).
    pub fn load_or_create(path: &Path) -> Result<(IdentityKey, bool), E2eError> {
        let shown = path.display();
        match fs::metadata(path) {
            Ok(metadata) => {
                if !is_owner_only(&metadata) {
                    return Err(E2eError::KeyFile(format!(
                        "{shown} can be read or changed by other users; if that was not \
                         intended, run `chmod 600 {shown}` (or delete it to make a new key)"
                    )));
                }
                let der = fs::read(path)
                    .map_err(|error| E2eError::KeyFile(format!("cannot read {shown}: {error}")))?;
                let key_pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| {
                    E2eError::KeyFile(format!(
                        "{shown} is not an Ed25519 private key in PKCS#8 form; it was left as \
                         it is (move it away to make a new key)"
                    ))
                })?;
                Ok((IdentityKey::from_key_pair(key_pair)?, false))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let key = IdentityKey::generate()?;
                let der = key
                    .key_pair
                    .to_pkcs8()
                    .map_err(|_| E2eError::Crypto("could not encode the identity key"))?;
                write_atomically(path, der.as_ref())
                    .map_err(|error| E2eError::KeyFile(format!("cannot write {shown}: {error}")))?;
                Ok((key, true))
            }
            Err(error) => Err(E2eError::KeyFile(format!("cannot open {shown}: {error}"))),
        }
    }

    /// My public identity key, to publish and to be pinned by others.
    pub fn public_key(&self) -> IdentityPublicKey {
        self.public
    }

    /// Signs `message` with my identity key.
    pub fn sign(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], E2eError> {
        let signature = self
            .key_pair
            .try_sign(message)
            .map_err(|_| E2eError::Crypto("Ed25519 signing failed"))?;
        signature
            .as_ref()
            .try_into()
            .map_err(|_| E2eError::Crypto("Ed25519 signature had an unexpected length"))
    }

    fn from_key_pair(key_pair: Ed25519KeyPair) -> Result<IdentityKey, E2eError> {
        let public = IdentityPublicKey::from_bytes(key_pair.public_key().as_ref())
            .map_err(|_| E2eError::Crypto("Ed25519 public key had an unexpected length"))?;
        Ok(IdentityKey { key_pair, public })
    }
}

/// Shows only the public key's fingerprint.
impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey {{ public: {} }}", self.public.fingerprint())
    }
}

/// A user's public identity key: 32 bytes of Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityPublicKey(
    /// The raw key bytes, as Ed25519 defines them (RFC 8032).
    [u8; PUBLIC_KEY_LEN],
);

impl IdentityPublicKey {
    /// Takes exactly 32 bytes; anything else is refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<IdentityPublicKey, E2eError> {
        bytes.try_into().map(IdentityPublicKey).map_err(|_| {
            E2eError::Malformed(format!(
                "an identity key is {PUBLIC_KEY_LEN} bytes, not {}",
                bytes.len()
            ))
        })
    }

    /// Parses standard padded base64 of exactly 32 bytes (44 characters).
    pub fn from_base64(text: &str) -> Result<IdentityPublicKey, E2eError> {
        // Checking the length first keeps a huge input from being decoded at all.
        if text.len() != PUBLIC_KEY_LEN.div_ceil(3) * 4 {
            return Err(E2eError::Malformed(
                "an identity key is 44 characters of base64".to_owned(),
            ));
        }
        let bytes = BASE64
            .decode(text)
            .map_err(|_| E2eError::Malformed("identity key is not valid base64".to_owned()))?;
        IdentityPublicKey::from_bytes(&bytes)
    }

    /// Standard padded base64, as stored by the server and in the pin file.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Checks that `signature` is this key's signature on `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), E2eError> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .map_err(|_| E2eError::BadSignature)
    }

    /// This key's fingerprint, e.g. `3F2A 9C01 5B7E 0D44 A1C2 8E90 77F3 1B06` (format in the
    /// module docs).
    pub fn fingerprint(&self) -> String {
        let mut input = Vec::new();
        put_field(&mut input, FINGERPRINT_LABEL);
        put_field(&mut input, &self.0);
        let hash = digest(&SHA256, &input);
        hex_groups(&hash.as_ref()[..FINGERPRINT_LEN])
    }
}

/// Shows the fingerprint, which is what people compare.
impl fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublicKey({})", self.fingerprint())
    }
}

/// The safety number of two users and their identity keys: 12 groups of 5 digits, identical
/// whichever user computes it (format in the module docs). If either key changes, it changes.
pub fn safety_number(
    user_a: &str,
    key_a: &IdentityPublicKey,
    user_b: &str,
    key_b: &IdentityPublicKey,
) -> String {
    let mut halves = [
        (user_a, safety_digits(user_a, key_a)),
        (user_b, safety_digits(user_b, key_b)),
    ];
    halves.sort();
    halves
        .iter()
        .flat_map(|(_, groups)| groups.iter())
        .map(|group| format!("{group:05}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One user's half of a safety number: six numbers below 100000.
fn safety_digits(user: &str, key: &IdentityPublicKey) -> [u64; SAFETY_GROUPS_PER_USER] {
    let mut input = Vec::new();
    put_field(&mut input, SAFETY_NUMBER_LABEL);
    put_field(&mut input, user.as_bytes());
    put_field(&mut input, &key.0);
    let hash = digest(&SHA256, &input);
    let mut groups = [0u64; SAFETY_GROUPS_PER_USER];
    for (group, chunk) in groups
        .iter_mut()
        .zip(hash.as_ref().chunks_exact(BYTES_PER_SAFETY_GROUP))
    {
        let value = chunk
            .iter()
            .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
        *group = value % 100_000;
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_file_is_created_owner_only_and_reloads_to_the_same_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("alice").join("identity.key");
        let (created, was_created) = IdentityKey::load_or_create(&path).expect("create");
        assert!(was_created);
        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (loaded, was_created) = IdentityKey::load_or_create(&path).expect("load");
        assert!(!was_created);
        assert_eq!(created.public_key(), loaded.public_key());
        // The reloaded key signs for the same public key.
        let signature = loaded.sign(b"hello").expect("sign");
        created
            .public_key()
            .verify(b"hello", &signature)
            .expect("verify");
    }

    #[test]
    fn corrupt_key_file_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("identity.key");
        fs::write(&path, b"not a key").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let error = IdentityKey::load_or_create(&path).expect_err("corrupt file refused");
        assert!(matches!(&error, E2eError::KeyFile(text) if text.contains("PKCS#8")));
        assert_eq!(fs::read(&path).expect("read"), b"not a key");
    }

    #[test]
    fn readable_key_file_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("identity.key");
        IdentityKey::load_or_create(&path).expect("create");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = IdentityKey::load_or_create(&path).expect_err("refused");
        assert!(matches!(&error, E2eError::KeyFile(text) if text.contains("chmod 600")));
    }

    #[test]
    fn signatures_verify_only_for_the_right_key_and_message() {
        let alice = IdentityKey::generate().expect("key");
        let mallory = IdentityKey::generate().expect("key");
        let signature = alice.sign(b"transcript").expect("sign");
        assert_eq!(alice.public_key().verify(b"transcript", &signature), Ok(()));
        assert_eq!(
            alice.public_key().verify(b"transcripT", &signature),
            Err(E2eError::BadSignature)
        );
        assert_eq!(
            mallory.public_key().verify(b"transcript", &signature),
            Err(E2eError::BadSignature)
        );
        assert_eq!(
            alice.public_key().verify(b"transcript", &signature[..63]),
            Err(E2eError::BadSignature)
        );
    }

    #[test]
    fn public_keys_round_trip_through_base64_with_strict_length() {
        let key = IdentityKey::generate().expect("key").public_key();
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(IdentityPublicKey::from_base64(&text), Ok(key));
        assert!(IdentityPublicKey::from_base64(&text[..40]).is_err());
        assert!(IdentityPublicKey::from_base64(&BASE64.encode([7u8; 31])).is_err());
        assert!(IdentityPublicKey::from_base64(&BASE64.encode([7u8; 33])).is_err());
        assert!(IdentityPublicKey::from_base64(&"!".repeat(44)).is_err());
        assert!(IdentityPublicKey::from_bytes(&[0u8; 31]).is_err());
    }

    #[test]
    fn fingerprints_are_eight_hex_groups_and_differ_between_keys() {
        let a = IdentityKey::generate().expect("key").public_key();
        let b = IdentityKey::generate().expect("key").public_key();
        let fingerprint = a.fingerprint();
        let groups: Vec<&str> = fingerprint.split(' ').collect();
        assert_eq!(groups.len(), 8);
        assert!(groups
            .iter()
            .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit())));
        assert_ne!(fingerprint, b.fingerprint());
        assert_eq!(fingerprint, a.fingerprint());
    }

    #[test]
    fn safety_number_is_symmetric_and_tracks_both_keys() {
        let alice = IdentityKey::generate().expect("key").public_key();
        let bob = IdentityKey::generate().expect("key").public_key();
        let new_bob = IdentityKey::generate().expect("key").public_key();
        let number = safety_number("alice", &alice, "bob", &bob);
        assert_eq!(number, safety_number("bob", &bob, "alice", &alice));
        assert_ne!(number, safety_number("alice", &alice, "bob", &new_bob));
        assert_ne!(number, safety_number("alice", &alice, "carol", &bob));
        let groups: Vec<&str> = number.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(groups
            .iter()
            .all(|g| g.len() == 5 && g.chars().all(|c| c.is_ascii_digit())));
    }

    #[test]
    fn debug_shows_the_fingerprint_only() {
        let key = IdentityKey::generate().expect("key");
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.public_key().fingerprint()));
        assert!(!shown.contains(&key.public_key().to_base64()));
    }
}
