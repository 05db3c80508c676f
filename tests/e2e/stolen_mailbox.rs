//! Forward secrecy and healing of offline delivery, claimed against the thing a thief
//! actually takes: the client's mailbox file (`src/client/mailbox.rs`, the exact bytes the
//! client writes) together with its identity key, copied from Bob's machine after he read
//! message `n`. The payloads are what the server stored and relayed (a malicious server, or
//! anyone who later reads its database or a backup, keeps them all).
//!
//! The claims, each an assertion below:
//! - the copy opens **no message Bob had already read** — the first one (X3DH with a
//!   one-time prekey, whose secret Bob deleted on use) and every ratchet message before the
//!   theft (their message keys were deleted as they were used);
//! - the copy opens Alice's messages sent after the theft **until Bob has answered under a
//!   ratchet value made after it**: the value in the file (made when Bob last read a new
//!   value of Alice's) still carries his next answer, and Alice's reply to that answer is
//!   exposed too; Bob's answer to *that* carries a fresh value, and from Alice's next message
//!   on the copy opens nothing, kept as stolen or moved along with everything it could
//!   read. That is the bound of post-compromise healing: one round trip after the theft.
//!
//! The library's own tests (`e2e::ratchet`) make the same claims on a `Ratchet` in memory;
//! these make them on the file, so a key the mailbox kept on disk by mistake (a chain key,
//! a used one-time prekey, a skipped key) would fail them.

use std::path::{Path, PathBuf};

use securechat::client::mailbox::{Mailbox, MAILBOX_FILE};
use securechat::e2e::{Group, IdentityKey, IdentityPublicKey};

/// Unix seconds of the test's "now" (no signed-prekey rotation happens within it).
const NOW: u64 = 1_800_000_000;

/// One user's identity key and mailbox file.
struct Device {
    /// Their name.
    name: &'static str,
    /// The seed of the identity key the client keeps beside the mailbox (a thief copies
    /// both).
    seed: u8,
    /// Where the mailbox file is.
    path: PathBuf,
    /// Keeps the directory alive.
    _dir: tempfile::TempDir,
}

impl Device {
    fn new(name: &'static str, seed: u8) -> Device {
        let dir = tempfile::tempdir().expect("temp dir");
        Device {
            name,
            seed,
            path: dir.path().join(MAILBOX_FILE),
            _dir: dir,
        }
    }

    /// The mailbox as the client loads it at start.
    fn mailbox(&self) -> Mailbox {
        load(&self.path, &self.identity(), self.name)
    }

    /// The identity key.
    fn identity(&self) -> IdentityKey {
        IdentityKey::from_fixed_seed(&[self.seed; 32]).expect("key")
    }

    fn key(&self) -> IdentityPublicKey {
        self.identity().public_key()
    }

    /// A copy of the device as it is now: the files a thief takes.
    fn steal(&self) -> Device {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(MAILBOX_FILE);
        std::fs::copy(&self.path, &path).expect("copy the mailbox file");
        Device {
            name: self.name,
            seed: self.seed,
            path,
            _dir: dir,
        }
    }
}

fn load(path: &Path, identity: &IdentityKey, name: &str) -> Mailbox {
    let (mailbox, problem) =
        Mailbox::load_or_create(path, identity, name, None, Group::Ffdhe2048, NOW)
            .expect("mailbox");
    assert_eq!(problem, None, "the file loads as the client wrote it");
    mailbox
}

/// Server-assigned ids for the test's `MAIL` lines (any unused id).
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// What a fresh copy of `thief`'s files makes of `payload` (each try on its own copy, so one
/// failed try cannot spoil the next).
fn thief_reads(thief: &Device, from: &Device, payload: &str) -> Option<String> {
    let copy = thief.steal();
    copy.mailbox()
        .open(1_000_000, from.name, from.key(), payload)
        .expect("saved")
        .ok()
}

/// Bob reads `payload` from Alice; it must open to `text`.
fn reads(to: &Device, from: &Device, ids: &mut Ids, payload: &str, text: &str) {
    let opened = to
        .mailbox()
        .open(ids.next(), from.name, from.key(), payload)
        .expect("saved");
    assert_eq!(opened.as_deref(), Ok(text));
}

/// Alice's first message to offline Bob, from the bundle the server hands out (his record
/// and one one-time prekey).
fn first_contact(alice: &Device, bob: &Device) -> String {
    let mut mailbox = bob.mailbox();
    let published = mailbox.refill(0, 5).expect("prekeys");
    let mut bundle = mailbox.bundle_record();
    bundle.one_time_prekey = published.into_iter().next();
    assert!(bundle.one_time_prekey.is_some());
    alice
        .mailbox()
        .seal_first(bob.name, bob.key(), &bundle, "first contact")
        .expect("first message")
}

#[test]
fn a_stolen_mailbox_file_opens_no_message_bob_had_read() {
    let (alice, bob) = (Device::new("alice", 1), Device::new("bob", 2));
    let mut ids = Ids(0);
    let mut read = Vec::new();
    let first = first_contact(&alice, &bob);
    reads(&bob, &alice, &mut ids, &first, "first contact");
    read.push(first);
    for turn in 0..3 {
        for k in 0..3 {
            let text = format!("turn {turn} message {k}");
            let payload = alice.mailbox().seal("bob", &text).expect("seal");
            reads(&bob, &alice, &mut ids, &payload, &text);
            read.push(payload);
        }
        let answer = bob.mailbox().seal("alice", "ok").expect("answer");
        reads(&alice, &bob, &mut ids, &answer, "ok");
    }
    // Messages sent but not yet fetched are in the thief's reach: the method works.
    let unread = alice.mailbox().seal("bob", "not yet read").expect("seal");
    let stolen = bob.steal();
    assert_eq!(
        thief_reads(&stolen, &alice, &unread).as_deref(),
        Some("not yet read")
    );
    for payload in &read {
        assert_eq!(
            thief_reads(&stolen, &alice, payload),
            None,
            "read before the theft: {payload:.40}"
        );
    }
    reads(&bob, &alice, &mut ids, &unread, "not yet read");
}

#[test]
fn a_stolen_mailbox_file_opens_nothing_once_bob_has_answered_with_a_value_made_after_the_theft() {
    let (alice, bob) = (Device::new("alice", 1), Device::new("bob", 2));
    let mut ids = Ids(0);
    let first = first_contact(&alice, &bob);
    reads(&bob, &alice, &mut ids, &first, "first contact");
    let stolen = bob.steal();
    // The ratchet value Bob made on reading the first message is in the file: Alice's
    // messages stay readable to the copy until Bob answers with a newer one. Each exposed
    // message is read by Bob, and the thief sees the payloads as they pass.
    let mut exposed = Vec::new();
    let expose = |text: &str, ids: &mut Ids, exposed: &mut Vec<String>| {
        let payload = alice.mailbox().seal("bob", text).expect("seal");
        assert_eq!(
            thief_reads(&stolen, &alice, &payload).as_deref(),
            Some(text)
        );
        reads(&bob, &alice, ids, &payload, text);
        exposed.push(payload);
    };
    expose("before any answer", &mut ids, &mut exposed);
    // Bob's first answer still goes out under the stolen value; Alice steps to it.
    let answer = bob.mailbox().seal("alice", "answer").expect("answer");
    reads(&alice, &bob, &mut ids, &answer, "answer");
    expose("after the first answer", &mut ids, &mut exposed);
    // Having read that, Bob answers under a value made after the theft; Alice steps.
    let second = bob
        .mailbox()
        .seal("alice", "second answer")
        .expect("answer");
    reads(&alice, &bob, &mut ids, &second, "second answer");
    let healed: Vec<String> = (0..3)
        .map(|n| {
            let text = format!("healed {n}");
            let payload = alice.mailbox().seal("bob", &text).expect("seal");
            reads(&bob, &alice, &mut ids, &payload, &text);
            payload
        })
        .collect();
    // The copy as stolen, and the copy moved along with every message it could read.
    let followed = stolen.steal();
    {
        let mut mailbox = followed.mailbox();
        for (n, payload) in exposed.iter().enumerate() {
            let opened = mailbox
                .open(900_000 + n as u64, "alice", alice.key(), payload)
                .expect("saved");
            assert!(opened.is_ok(), "{opened:?}");
        }
    }
    for payload in &healed {
        assert_eq!(thief_reads(&stolen, &alice, payload), None, "as stolen");
        assert_eq!(thief_reads(&followed, &alice, payload), None, "moved along");
    }
}
