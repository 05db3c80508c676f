//! Fuzz target: what an established end-to-end session does with untrusted input. The
//! `protocol` target stops at the payload's syntax; this one goes on into the opener,
//! where a peer's (or a relaying server's) bytes meet the counters and the AEAD.
//!
//! One exchange is run at start (ffdhe2048, fresh identity keys: the handshake costs tens of
//! milliseconds, too slow per input); every input then
//!
//! 1. is parsed as a payload and, if it is an `E2E` message, opened with its session id
//!    set to the live session's, so the counter and tag checks are reached: it must be
//!    refused (nobody can forge a tag), and the session must still work afterwards;
//! 2. is sealed as text by one side and opened by the other, once exactly as printed and
//!    parsed back (it must come out unchanged) and once with one bit of the printed
//!    payload flipped where the input says (it must never open as different text).
//!
//! Any panic, or a broken round trip, is a bug.
//!
//! Run (from the repository root):
//! `ASAN_OPTIONS=detect_odr_violation=0 RUSTC_BOOTSTRAP=1 cargo fuzz run e2e_session`
//! (see `protocol.rs` for why the `ASAN_OPTIONS`, and for the `-s none` runs whose counts
//! the report records).

#![no_main]

use std::sync::{LazyLock, Mutex, PoisonError};

use libfuzzer_sys::fuzz_target;

use securechat::e2e::{
    Group, IdentityKey, Initiator, Payload, Responder, Session, MAX_PLAINTEXT_LEN,
};

/// Alice's and Bob's ends of one established session.
struct Pair {
    /// The initiator's session: seals the messages of step 2.
    alice: Session,
    /// The responder's session: opens everything.
    bob: Session,
}

static PAIR: LazyLock<Mutex<Pair>> = LazyLock::new(|| {
    let (alice_key, bob_key) = (
        IdentityKey::generate().expect("a key"),
        IdentityKey::generate().expect("a key"),
    );
    let (initiator, init) = Initiator::start("alice", "bob", Group::Ffdhe2048).expect("start");
    let (responder, reply) =
        Responder::accept("bob", "alice", &init, &bob_key, &alice_key.public_key())
            .expect("accept");
    let (alice, confirm) = initiator
        .finish(&reply, &alice_key, &bob_key.public_key())
        .expect("finish");
    let bob = responder.confirm(&confirm).expect("confirm");
    Mutex::new(Pair { alice, bob })
});

fuzz_target!(|data: &[u8]| {
    let mut pair = PAIR.lock().unwrap_or_else(PoisonError::into_inner);
    let text = String::from_utf8_lossy(data);

    // 1. An arbitrary message, addressed to the live session.
    if let Ok(Payload::Message(mut message)) = Payload::parse(&text) {
        message.session_id = pair.bob.session_id();
        assert!(pair.bob.open(&message).is_err(), "a forged message opened");
    }

    // 2. A real message, as sent and with one bit flipped.
    let plain: String = text
        .char_indices()
        .take_while(|(i, c)| i + c.len_utf8() <= MAX_PLAINTEXT_LEN)
        .map(|(_, c)| c)
        .collect();
    let Ok(sealed) = pair.alice.seal(&plain) else {
        return;
    };
    let printed = Payload::Message(sealed).to_string();
    let flip = data.first().copied().unwrap_or(0) as usize * 8
        + data.get(1).copied().unwrap_or(0) as usize;
    let mut tampered = printed.clone().into_bytes();
    let at = flip / 8 % tampered.len();
    tampered[at] ^= 1 << (flip % 8);
    if let Ok(tampered) = String::from_utf8(tampered) {
        if let Ok(Payload::Message(message)) = Payload::parse(&tampered) {
            if let Ok(opened) = pair.bob.open(&message) {
                // Only a change the parser undoes (none today) may still open, unchanged.
                assert_eq!(
                    opened.text, plain,
                    "a tampered message opened as other text"
                );
                return;
            }
        }
    }
    match Payload::parse(&printed) {
        Ok(Payload::Message(message)) => {
            let opened = pair.bob.open(&message).expect("a genuine message opens");
            assert_eq!(opened.text, plain);
        }
        other => panic!("a sealed message did not parse back: {other:?}"),
    }
});
