//! The attack that works (report/teaching.md §4): at first contact a malicious server,
//! [`Mallory`], gives each client one of its own identity keys as the other's and runs a
//! separate, complete signed exchange with each, so that it reads and forwards every private
//! message while neither client shows anything wrong. Pinning cannot notice it, since there
//! is nothing pinned yet; comparing safety numbers does, and these tests show both.
//!
//! `cargo test --test e2e first_contact -- --nocapture` narrates the attack.

use super::relay::{honest, Endpoint, Relay};
use super::*;

/// A private message mallory read in transit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Intercepted {
    /// Who sent it.
    pub(crate) from: String,
    /// Whom it was for.
    pub(crate) to: String,
    /// Its text, as mallory decrypted it.
    pub(crate) text: String,
}

/// The server in a [`Relay`], turned attacker. It holds a real `EndToEnd` state machine (the
/// client's own) under each false identity: one named "bob", signing with the key alice is
/// given as bob's, and one named "alice" towards bob. Every payload alice and bob send goes
/// to the impostor of its recipient; what an impostor opens, the other one seals again.
pub(crate) struct Mallory {
    /// Plays alice towards bob.
    as_alice: Endpoint,
    /// Plays bob towards alice.
    as_bob: Endpoint,
    /// alice's and bob's real keys: mallory runs the key directory, so its impostors are
    /// given the genuine keys and their exchanges with the real clients verify.
    real_keys: Vec<(String, IdentityPublicKey)>,
    /// Every private message read, in order.
    pub(crate) read: Vec<Intercepted>,
    /// Holds the impostors' pin files.
    _dir: tempfile::TempDir,
}

impl Mallory {
    /// Takes over `relay`'s key directory before alice and bob have talked: from now on
    /// each is given a key of mallory's as the other's.
    pub(crate) fn take_over(relay: &mut Relay) -> Mallory {
        let dir = tempfile::tempdir().expect("temp dir");
        let real_keys = relay.keys.clone();
        let mut impostor = |name: &str| {
            let identity = IdentityKey::generate().expect("mallory's identity key");
            relay.serve_key(name, identity.public_key());
            Endpoint::new(name, identity, &dir.path().join(format!("as-{name}.pins")))
        };
        let (as_alice, as_bob) = (impostor("alice"), impostor("bob"));
        Mallory {
            as_alice,
            as_bob,
            real_keys,
            read: Vec::new(),
            _dir: dir,
        }
    }

    /// The key mallory hands out as `user`'s.
    pub(crate) fn key_as(&mut self, user: &str) -> IdentityPublicKey {
        self.impostor(user).secure.identity_public()
    }

    fn impostor(&mut self, user: &str) -> &mut Endpoint {
        match user {
            "alice" => &mut self.as_alice,
            "bob" => &mut self.as_bob,
            other => panic!("mallory does not play {other}"),
        }
    }

    /// Hands everything alice and bob send to the impostor of its recipient, until nobody
    /// sends anything more.
    pub(crate) fn run(&mut self, relay: &mut Relay) {
        let mut deliveries = 0;
        while let Some(packet) = relay.in_flight.pop_front() {
            deliveries += 1;
            assert!(deliveries < 100, "the clients never went quiet");
            let actions = self
                .impostor(&packet.to)
                .secure
                .payload_arrived(&packet.from, &packet.payload);
            self.act(relay, &packet.to, actions);
        }
    }

    /// Carries out the actions of the impostor playing `playing`: its payloads go straight
    /// to the real client, its key look-ups get the real keys, it accepts every request,
    /// and each message it opens is recorded and sealed again by the other impostor.
    fn act(&mut self, relay: &mut Relay, playing: &str, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, payload } => {
                    self.impostor(playing).sent.push(payload.clone());
                    relay.deliver(playing, &to, &payload);
                }
                Action::FetchKey(user) => {
                    let key = self
                        .real_keys
                        .iter()
                        .find(|(name, _)| *name == user)
                        .map(|(_, key)| key.to_base64())
                        .expect("a known user");
                    let more = self.impostor(playing).secure.key_arrived(&user, &key);
                    self.act(relay, playing, more);
                }
                Action::Show(Notice::Request { from }) => {
                    let more = self.impostor(playing).secure.accept(&from);
                    self.act(relay, playing, more);
                }
                Action::Show(Notice::Received { from, text, trust }) => {
                    self.read.push(Intercepted {
                        from: from.clone(),
                        to: playing.to_owned(),
                        text: text.clone(),
                    });
                    let forward = self.impostor(&from).secure.send_text(playing, &text);
                    let shown = Notice::Received {
                        from: from.clone(),
                        text,
                        trust,
                    };
                    self.impostor(playing).notices.push(shown);
                    self.act(relay, &from, forward);
                }
                Action::Show(notice) => self.impostor(playing).notices.push(notice),
            }
        }
    }
}

/// What alice and bob say to each other: (from, to, text).
const CONVERSATION: [(&str, &str, &str); 3] = [
    ("alice", "bob", "hi bob, the door code is 4711"),
    ("bob", "alice", "got it, see you at eight"),
    ("alice", "bob", "bring the signed contract"),
];

/// Types each line of [`CONVERSATION`] and has `server` carry it, one at a time.
fn converse(relay: &mut Relay, mut server: impl FnMut(&mut Relay)) {
    for (from, to, text) in CONVERSATION {
        relay.type_text(from, to, text);
        server(relay);
    }
}

/// The lines of [`CONVERSATION`] that `from` typed.
fn typed_by(from: &str) -> Vec<&'static str> {
    CONVERSATION
        .iter()
        .filter(|(sender, _, _)| *sender == from)
        .map(|(_, _, text)| *text)
        .collect()
}

/// alice and bob, who have never talked, with mallory running the server.
fn attacked() -> (Relay, Mallory) {
    let mut relay = Relay::new();
    let mallory = Mallory::take_over(&mut relay);
    (relay, mallory)
}

#[test]
fn first_contact_relay_attack_reads_and_forwards_every_message_until_safety_numbers_are_compared() {
    let (mut relay, mut mallory) = attacked();
    let alice_key = relay.alice.secure.identity_public();
    let bob_key = relay.bob.secure.identity_public();
    let (mallory_as_alice, mallory_as_bob) = (mallory.key_as("alice"), mallory.key_as("bob"));
    println!(
        "mallory gives alice key {} as bob's (bob's is {}), and bob key {} as alice's \
         (alice's is {})",
        mallory_as_bob.fingerprint(),
        bob_key.fingerprint(),
        mallory_as_alice.fingerprint(),
        alice_key.fingerprint()
    );
    converse(&mut relay, |relay| mallory.run(relay));
    for Intercepted { from, to, text } in &mallory.read {
        println!("mallory reads {from} -> {to}: {text:?}, seals it again and delivers it");
    }

    // The attack works: each screen shows exactly what the other side typed, without a
    // single warning, under a session the client considers established...
    assert_eq!(
        relay.bob.received(),
        typed_by("alice"),
        "{:#?}",
        relay.bob.notices
    );
    assert_eq!(
        relay.alice.received(),
        typed_by("bob"),
        "{:#?}",
        relay.alice.notices
    );
    assert_eq!(relay.alice.warnings(), Vec::<&str>::new());
    assert_eq!(relay.bob.warnings(), Vec::<&str>::new());
    assert!(relay.alice.secure.is_established("bob") && relay.bob.secure.is_established("alice"));
    // ...though only sealed payloads left either client...
    for (end, name) in [(&relay.alice, "alice"), (&relay.bob, "bob")] {
        for (_, _, text) in CONVERSATION {
            assert!(
                !end.sent.iter().any(|payload| payload.contains(text)),
                "{name} sent {text:?} in the clear"
            );
        }
    }
    // ...because each client pinned one of mallory's keys at first contact, and mallory
    // opened every message.
    let first_use = PinStatus::Matches { verified: false };
    assert_eq!(
        relay.saved_pins("alice").check("bob", &mallory_as_bob),
        first_use
    );
    assert_eq!(
        relay.saved_pins("bob").check("alice", &mallory_as_alice),
        first_use
    );
    let everything: Vec<Intercepted> = CONVERSATION
        .iter()
        .map(|(from, to, text)| Intercepted {
            from: (*from).to_owned(),
            to: (*to).to_owned(),
            text: (*text).to_owned(),
        })
        .collect();
    assert_eq!(mallory.read, everything);

    // The defence: the safety numbers differ. Each client shows the number of the key it
    // pinned, so alice's is made of her key and mallory's "bob", bob's of mallory's "alice"
    // and his key, and neither is the number of the real keys.
    let (at_alice, at_bob) = relay.safety_numbers();
    let real = safety_number("alice", &alice_key, "bob", &bob_key);
    println!("alice's screen: safety number with bob: {at_alice}");
    println!("bob's screen:   safety number with alice: {at_bob}");
    println!("with the real keys it would be:           {real}");
    assert_eq!(
        at_alice,
        safety_number("alice", &alice_key, "bob", &mallory_as_bob)
    );
    assert_eq!(
        at_bob,
        safety_number("alice", &mallory_as_alice, "bob", &bob_key)
    );
    assert_ne!(at_alice, at_bob, "the relay would go unnoticed");
    assert_ne!(at_alice, real);
    assert_ne!(at_bob, real);
    // Each half of a number belongs to one user (alice's first): each screen has its own
    // user's half right and the other's wrong, so the whole number must be compared.
    let halves = |number: &str| {
        let (first, second) = number.split_at(35);
        (first.to_owned(), second.to_owned())
    };
    let (real_alice, real_bob) = halves(&real);
    assert_eq!(halves(&at_alice).0, real_alice);
    assert_ne!(halves(&at_alice).1, real_bob);
    assert_eq!(halves(&at_bob).1, real_bob);
    assert_ne!(halves(&at_bob).0, real_alice);

    // What no client can check is the comparison itself: a user who runs /verify after
    // that number (which did not match bob's) gets mallory's key marked as verified.
    relay.command("alice", |s| s.verify("bob"));
    assert_eq!(
        relay.saved_pins("alice").check("bob", &mallory_as_bob),
        PinStatus::Matches { verified: true }
    );

    // The control: the same conversation through an honest server, and both screens show
    // one number, the real keys'.
    let mut control = Relay::new();
    converse(&mut control, |relay| relay.run(honest));
    assert_eq!(control.bob.received(), typed_by("alice"));
    assert_eq!(control.alice.received(), typed_by("bob"));
    let (at_alice, at_bob) = control.safety_numbers();
    println!("without mallory both screens show: {at_alice}");
    assert_eq!(at_alice, at_bob);
    assert_eq!(
        at_alice,
        safety_number(
            "alice",
            &control.alice.secure.identity_public(),
            "bob",
            &control.bob.secure.identity_public()
        )
    );
}

#[test]
fn first_contact_relay_attack_is_not_verified_when_mallory_serves_the_real_keys_for_comparison() {
    // mallory's way around the comparison: hand out the real keys once alice and bob ask
    // for their numbers, so that both would show the real keys' number. They show the
    // number of the key each *pinned*, and a served key that differs from the pin takes the
    // loud key-change path, which closes the relayed session.
    let (mut relay, mut mallory) = attacked();
    converse(&mut relay, |relay| mallory.run(relay));
    let read_before = mallory.read.len();
    let mallory_as_bob = mallory.key_as("bob");
    for user in ["alice", "bob"] {
        let real = relay.endpoint(user).secure.identity_public();
        relay.serve_key(user, real);
    }
    let (at_alice, at_bob) = relay.safety_numbers();
    assert_ne!(at_alice, at_bob);
    for (end, name) in [(&relay.alice, "alice"), (&relay.bob, "bob")] {
        assert!(
            end.warned(&["IDENTITY KEY HAS CHANGED"]),
            "{name}: {:#?}",
            end.notices
        );
    }

    relay.command("alice", |s| s.verify("bob"));
    assert!(
        relay.alice.warned(&["bob: not verified"]),
        "{:#?}",
        relay.alice.notices
    );
    assert_eq!(
        relay.saved_pins("alice").check("bob", &mallory_as_bob),
        PinStatus::Matches { verified: false }
    );

    relay.type_text("alice", "bob", "are you really bob?");
    mallory.run(&mut relay);
    assert!(
        relay.alice.warned(&["message held"]),
        "{:#?}",
        relay.alice.notices
    );
    assert!(!relay.alice.secure.is_established("bob"));
    assert_eq!(mallory.read.len(), read_before, "{:#?}", mallory.read);
}
