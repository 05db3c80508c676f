//! Sealing and opening chat messages with ChaCha20-Poly1305: counter nonces, addressed AAD,
//! replay and gap detection.
//!
//! Messages in each direction are numbered 1, 2, 3, …
//! - **Nonce** = 4 zero bytes ‖ counter (8 bytes, big-endian). ChaCha20-Poly1305 breaks if a nonce
//!   repeats under one key. Here each direction has its own key (`kdf.rs`) and the sender's counter
//!   only goes up and never wraps, so no (key, nonce) pair is ever used twice.
//! - **AAD** (authenticated but not encrypted) = `"securechat/msg/v1"`, session id, sender,
//!   recipient, counter, each length-prefixed. A message moved to another session, re-addressed or
//!   renumbered fails authentication.
//! - **Order**: the receiver accepts only a counter above the last one it accepted, so a replayed or
//!   stale message is refused; a jump (say 3 → 7) is accepted and reported as 3 missing messages.
//!   The receiver's state changes only when a message is accepted in full.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};

use super::{put_field, E2eError, SessionId};

/// The longest text one encrypted message may carry, in bytes. With the 16-byte tag, base64 (4/3)
/// and the `E2E <sid> <counter> ` header, 8 KiB of text makes about 11 KiB of payload, inside the
/// 12 KiB a payload may take ([`super::MAX_PAYLOAD_LEN`]).
pub const MAX_PLAINTEXT_LEN: usize = 8 * 1024;

/// Bytes the Poly1305 authentication tag adds to every message.
pub(super) const TAG_LEN: usize = 16;

/// Domain label at the start of every message's AAD, so it cannot be confused with anything else
/// we authenticate; bump the version if the message format ever changes.
const MESSAGE_AAD_LABEL: &[u8] = b"securechat/msg/v1";

/// One encrypted chat message as it travels: `E2E <sid> <counter> <ciphertext>` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedMessage {
    /// The session whose keys sealed it; a receiver with another session refuses it unopened.
    pub session_id: SessionId,
    /// Its number in this direction: makes the nonce and lets the receiver spot replays and gaps.
    pub counter: u64,
    /// The encrypted text followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// A message that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// What the peer wrote.
    pub text: String,
    /// How many messages were skipped since the previous one (dropped or still delayed in
    /// transit), so the UI can say "3 messages missing". Zero when none.
    pub missing: u64,
}

/// Seals my messages in one direction.
pub(super) struct Sealer {
    /// This direction's key.
    key: LessSafeKey,
    /// Bound into the AAD so the message only opens in this session.
    session_id: SessionId,
    /// My username, bound into the AAD.
    sender: String,
    /// The peer's username, bound into the AAD.
    recipient: String,
    /// The counter for the next message. Invariant: only increases, starts at 1, and
    /// `u64::MAX` is never used as a counter (sealing refuses the message that would get
    /// it), so each nonce is used once.
    next_counter: u64,
}

impl Sealer {
    pub(super) fn new(
        key: LessSafeKey,
        session_id: SessionId,
        sender: &str,
        recipient: &str,
    ) -> Self {
        Sealer {
            key,
            session_id,
            sender: sender.to_owned(),
            recipient: recipient.to_owned(),
            next_counter: 1,
        }
    }

    /// Encrypts `text` as the next message in this direction.
    pub(super) fn seal(&mut self, text: &str) -> Result<EncryptedMessage, E2eError> {
        if text.len() > MAX_PLAINTEXT_LEN {
            return Err(E2eError::TooLong {
                len: text.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let counter = self.next_counter;
        let following = counter.checked_add(1).ok_or(E2eError::CounterExhausted)?;
        let aad = message_aad(&self.session_id, &self.sender, &self.recipient, counter);
        let mut ciphertext = text.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(nonce_for(counter), Aad::from(aad), &mut ciphertext)
            .map_err(|_| E2eError::Crypto("ChaCha20-Poly1305 encryption failed"))?;
        self.next_counter = following;
        Ok(EncryptedMessage {
            session_id: self.session_id,
            counter,
            ciphertext,
        })
    }

    /// The counter the next message will carry.
    pub(super) fn next_counter(&self) -> u64 {
        self.next_counter
    }
}

/// Opens the peer's messages in the other direction.
pub(super) struct Opener {
    /// The peer's direction key.
    key: LessSafeKey,
    /// Messages from any other session are refused before decryption.
    session_id: SessionId,
    /// The peer's username, as the sender in the AAD.
    sender: String,
    /// My username, as the recipient in the AAD.
    recipient: String,
    /// The highest counter accepted so far (0 before the first message). Invariant: changes only
    /// after a message is authenticated and decoded, and only upwards.
    last_counter: u64,
}

impl Opener {
    pub(super) fn new(
        key: LessSafeKey,
        session_id: SessionId,
        sender: &str,
        recipient: &str,
    ) -> Self {
        Opener {
            key,
            session_id,
            sender: sender.to_owned(),
            recipient: recipient.to_owned(),
            last_counter: 0,
        }
    }

    /// Authenticates and decrypts the peer's next message.
    pub(super) fn open(&mut self, message: &EncryptedMessage) -> Result<Opened, E2eError> {
        if message.session_id != self.session_id {
            return Err(E2eError::UnknownSession);
        }
        if message.counter <= self.last_counter {
            return Err(E2eError::Replay {
                counter: message.counter,
                last: self.last_counter,
            });
        }
        let aad = message_aad(
            &self.session_id,
            &self.sender,
            &self.recipient,
            message.counter,
        );
        let mut buffer = message.ciphertext.clone();
        let plaintext = self
            .key
            .open_in_place(nonce_for(message.counter), Aad::from(aad), &mut buffer)
            .map_err(|_| E2eError::Tampered)?;
        let text = String::from_utf8(plaintext.to_vec()).map_err(|_| {
            E2eError::Malformed("the decrypted message is not UTF-8 text".to_owned())
        })?;
        let missing = message.counter - self.last_counter - 1;
        self.last_counter = message.counter;
        Ok(Opened { text, missing })
    }

    /// The highest counter accepted so far.
    pub(super) fn last_counter(&self) -> u64 {
        self.last_counter
    }
}

/// 4 zero bytes, then the counter as 8 big-endian bytes.
fn nonce_for(counter: u64) -> Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

/// The authenticated context of one message (see the module docs).
fn message_aad(session_id: &SessionId, sender: &str, recipient: &str, counter: u64) -> Vec<u8> {
    let mut aad = Vec::new();
    put_field(&mut aad, MESSAGE_AAD_LABEL);
    put_field(&mut aad, &session_id.0);
    put_field(&mut aad, sender.as_bytes());
    put_field(&mut aad, recipient.as_bytes());
    put_field(&mut aad, &counter.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::aead::{UnboundKey, CHACHA20_POLY1305};

    const SESSION: SessionId = SessionId([9; 16]);

    fn key() -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).expect("key"))
    }

    /// Alice's sealer and Bob's matching opener, sharing one test key.
    fn alice_to_bob() -> (Sealer, Opener) {
        (
            Sealer::new(key(), SESSION, "alice", "bob"),
            Opener::new(key(), SESSION, "alice", "bob"),
        )
    }

    #[test]
    fn round_trip_with_counters_from_one() {
        let (mut alice, mut bob) = alice_to_bob();
        let first = alice.seal("hello bob").expect("seal");
        let second = alice.seal("still there?").expect("seal");
        assert_eq!((first.counter, second.counter), (1, 2));
        assert_eq!(first.ciphertext.len(), "hello bob".len() + TAG_LEN);
        assert_ne!(&first.ciphertext[..9], b"hello bob");
        assert_eq!(
            bob.open(&first),
            Ok(Opened {
                text: "hello bob".to_owned(),
                missing: 0
            })
        );
        assert_eq!(
            bob.open(&second).map(|opened| opened.text),
            Ok("still there?".to_owned())
        );
        assert_eq!(bob.last_counter(), 2);
    }

    #[test]
    fn flipped_bits_are_rejected_and_do_not_advance_the_counter() {
        let (mut alice, mut bob) = alice_to_bob();
        let message = alice.seal("pay 10 euros").expect("seal");
        let mut body_flipped = message.clone();
        body_flipped.ciphertext[4] ^= 0x01;
        let mut tag_flipped = message.clone();
        let last = tag_flipped.ciphertext.len() - 1;
        tag_flipped.ciphertext[last] ^= 0x80;
        assert_eq!(bob.open(&body_flipped), Err(E2eError::Tampered));
        assert_eq!(bob.open(&tag_flipped), Err(E2eError::Tampered));
        assert_eq!(bob.last_counter(), 0);
        assert_eq!(bob.open(&message).map(|opened| opened.missing), Ok(0));
    }

    #[test]
    fn renumbered_messages_are_rejected() {
        let (mut alice, mut bob) = alice_to_bob();
        let mut message = alice.seal("hi").expect("seal");
        message.counter = 5;
        assert_eq!(bob.open(&message), Err(E2eError::Tampered));
    }

    #[test]
    fn replays_and_stale_messages_are_rejected() {
        let (mut alice, mut bob) = alice_to_bob();
        let first = alice.seal("one").expect("seal");
        let second = alice.seal("two").expect("seal");
        bob.open(&first).expect("first");
        assert_eq!(
            bob.open(&first),
            Err(E2eError::Replay {
                counter: 1,
                last: 1
            })
        );
        bob.open(&second).expect("second");
        assert_eq!(
            bob.open(&first),
            Err(E2eError::Replay {
                counter: 1,
                last: 2
            })
        );
        let zero = EncryptedMessage {
            counter: 0,
            ..first
        };
        assert_eq!(
            bob.open(&zero),
            Err(E2eError::Replay {
                counter: 0,
                last: 2
            })
        );
    }

    #[test]
    fn an_older_message_after_a_newer_one_is_rejected() {
        let (mut alice, mut bob) = alice_to_bob();
        let first = alice.seal("one").expect("seal");
        let second = alice.seal("two").expect("seal");
        assert_eq!(bob.open(&second).map(|opened| opened.missing), Ok(1));
        assert_eq!(
            bob.open(&first),
            Err(E2eError::Replay {
                counter: 1,
                last: 2
            })
        );
    }

    #[test]
    fn gaps_are_accepted_and_counted() {
        let (mut alice, mut bob) = alice_to_bob();
        let sent: Vec<_> = (0..5)
            .map(|n| alice.seal(&format!("#{n}")).expect("seal"))
            .collect();
        assert_eq!(bob.open(&sent[0]).map(|opened| opened.missing), Ok(0));
        assert_eq!(
            bob.open(&sent[4]),
            Ok(Opened {
                text: "#4".to_owned(),
                missing: 3
            })
        );
    }

    #[test]
    fn wrongly_addressed_messages_are_rejected() {
        let (mut alice, _) = alice_to_bob();
        let message = alice.seal("for bob only").expect("seal");
        let mut swapped = Opener::new(key(), SESSION, "bob", "alice");
        assert_eq!(swapped.open(&message), Err(E2eError::Tampered));
        let mut carol = Opener::new(key(), SESSION, "alice", "carol");
        assert_eq!(carol.open(&message), Err(E2eError::Tampered));
        // Relabelled to another session whose opener shares the key: the AAD still differs.
        let other_session = SessionId([1; 16]);
        let mut other = Opener::new(key(), other_session, "alice", "bob");
        let moved = EncryptedMessage {
            session_id: other_session,
            ..message.clone()
        };
        assert_eq!(other.open(&moved), Err(E2eError::Tampered));
        assert_eq!(other.open(&message), Err(E2eError::UnknownSession));
    }

    #[test]
    fn sealing_stops_before_the_counter_wraps() {
        let (mut alice, _) = alice_to_bob();
        alice.next_counter = u64::MAX - 1;
        assert_eq!(alice.seal("last").map(|m| m.counter), Ok(u64::MAX - 1));
        assert_eq!(alice.seal("one more"), Err(E2eError::CounterExhausted));
        assert_eq!(alice.next_counter(), u64::MAX);
    }

    #[test]
    fn overlong_text_is_refused_at_the_limit() {
        let (mut alice, mut bob) = alice_to_bob();
        let longest = "x".repeat(MAX_PLAINTEXT_LEN);
        let message = alice.seal(&longest).expect("at the limit");
        assert_eq!(
            bob.open(&message).map(|opened| opened.text.len()),
            Ok(MAX_PLAINTEXT_LEN)
        );
        assert_eq!(
            alice.seal(&format!("{longest}x")),
            Err(E2eError::TooLong {
                len: MAX_PLAINTEXT_LEN + 1,
                max: MAX_PLAINTEXT_LEN
            })
        );
    }

    #[test]
    fn authentic_bytes_that_are_not_utf8_are_refused_without_advancing() {
        let (alice, mut bob) = alice_to_bob();
        let mut ciphertext = vec![0xff, 0xfe];
        let aad = message_aad(&SESSION, "alice", "bob", 1);
        alice
            .key
            .seal_in_place_append_tag(nonce_for(1), Aad::from(aad), &mut ciphertext)
            .expect("seal");
        let message = EncryptedMessage {
            session_id: SESSION,
            counter: 1,
            ciphertext,
        };
        assert!(matches!(bob.open(&message), Err(E2eError::Malformed(_))));
        assert_eq!(bob.last_counter(), 0);
    }

    #[test]
    fn nonce_is_zero_padding_then_big_endian_counter() {
        let nonce = nonce_for(0x0102_0304_0506_0708);
        assert_eq!(nonce.as_ref(), &[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
