//! The [`Relay`] harness (the test plays a malicious server between two state machines) and
//! the tests that use it.

use super::*;

// ----------------------------------------------------------------------------------------
// Relay: the test plays a malicious server between two state machines.
// ----------------------------------------------------------------------------------------

/// One payload on its way through the relay.
#[derive(Debug, Clone)]
pub(crate) struct Packet {
    /// The sender, as the relay would stamp it.
    pub(crate) from: String,
    /// The recipient.
    pub(crate) to: String,
    /// The payload as sent (the attacker may deliver something else).
    pub(crate) payload: String,
}

/// One user's state machine and what it did.
pub(crate) struct Endpoint {
    /// The state machine under attack.
    pub(crate) secure: EndToEnd,
    /// Everything it would have shown the user.
    pub(crate) notices: Vec<Notice>,
    /// Payloads it asked to have routed, in order.
    pub(crate) sent: Vec<String>,
}

impl Endpoint {
    /// `name`'s state machine signing with `identity`, its pins kept in `pin_file`.
    pub(crate) fn new(name: &str, identity: IdentityKey, pin_file: &Path) -> Endpoint {
        let pins = PinStore::open(pin_file).expect("pins");
        Endpoint {
            secure: EndToEnd::new(name, identity, pins, GROUP, false),
            notices: Vec::new(),
            sent: Vec::new(),
        }
    }

    pub(crate) fn received(&self) -> Vec<&str> {
        received_texts(&self.notices)
    }

    pub(crate) fn warnings(&self) -> Vec<&str> {
        self.notices
            .iter()
            .filter_map(|notice| match notice {
                Notice::Warning(text) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Whether one warning contains every one of `parts`.
    pub(crate) fn warned(&self, parts: &[&str]) -> bool {
        warns(&self.notices, parts)
    }

    pub(crate) fn sent_e2e_message(&self) -> bool {
        self.sent.iter().any(|payload| is_e2e_message(payload))
    }
}

/// alice and bob, with the test in the middle. The key directory is honest (each key is
/// the real one): these tests are about what happens to payloads in transit.
pub(crate) struct Relay {
    pub(crate) alice: Endpoint,
    pub(crate) bob: Endpoint,
    /// The real identity keys, handed out on every fetch.
    pub(crate) keys: Vec<(String, IdentityPublicKey)>,
    /// Payloads sent and not yet delivered, oldest first.
    pub(crate) in_flight: VecDeque<Packet>,
    /// Holds the pin files.
    pub(crate) _dir: tempfile::TempDir,
}

impl Relay {
    pub(crate) fn new() -> Relay {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut keys = Vec::new();
        let mut endpoint = |name: &str| {
            let identity = IdentityKey::generate().expect("identity key");
            keys.push((name.to_owned(), identity.public_key()));
            Endpoint::new(name, identity, &dir.path().join(format!("{name}.pins")))
        };
        let (alice, bob) = (endpoint("alice"), endpoint("bob"));
        Relay {
            alice,
            bob,
            keys,
            in_flight: VecDeque::new(),
            _dir: dir,
        }
    }

    pub(crate) fn endpoint(&mut self, name: &str) -> &mut Endpoint {
        match name {
            "alice" => &mut self.alice,
            "bob" => &mut self.bob,
            other => panic!("no endpoint {other}"),
        }
    }

    /// Carries out `who`'s actions: payloads go in flight, key fetches are answered at once.
    pub(crate) fn act(&mut self, who: &str, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, payload } => {
                    self.endpoint(who).sent.push(payload.clone());
                    self.in_flight.push_back(Packet {
                        from: who.to_owned(),
                        to,
                        payload,
                    });
                }
                Action::FetchKey(user) => {
                    let key = self
                        .keys
                        .iter()
                        .find(|(name, _)| *name == user)
                        .map(|(_, key)| key.to_base64())
                        .expect("a known user");
                    let more = self.endpoint(who).secure.key_arrived(&user, &key);
                    self.act(who, more);
                }
                Action::Show(Notice::Request { from }) => {
                    // The user reading this agrees to talk to whoever asks.
                    self.endpoint(who)
                        .notices
                        .push(Notice::Request { from: from.clone() });
                    self.command(who, |secure| secure.accept(&from));
                }
                Action::Show(notice) => self.endpoint(who).notices.push(notice),
            }
        }
    }

    /// `who` typed a private message for `to`.
    pub(crate) fn type_text(&mut self, who: &str, to: &str, text: &str) {
        let actions = self.endpoint(who).secure.send_text(to, text);
        self.act(who, actions);
    }

    /// `who` typed a command: `command` calls the matching `EndToEnd` method.
    pub(crate) fn command(
        &mut self,
        who: &str,
        command: impl FnOnce(&mut EndToEnd) -> Vec<Action>,
    ) {
        let actions = command(&mut self.endpoint(who).secure);
        self.act(who, actions);
    }

    /// From now on the key directory hands out `key` as `user`'s.
    pub(crate) fn serve_key(&mut self, user: &str, key: IdentityPublicKey) {
        for (name, served) in &mut self.keys {
            if name == user {
                *served = key;
            }
        }
    }

    /// alice and bob each ask for their safety number with the other (`/fingerprint`);
    /// returns the first number each screen shows, alice's first.
    pub(crate) fn safety_numbers(&mut self) -> (String, String) {
        self.command("alice", |s| s.fingerprint(Some("bob")));
        self.command("bob", |s| s.fingerprint(Some("alice")));
        let shown = |end: &Endpoint, peer: &str| {
            shown_safety_number(&end.notices, peer).expect("a safety number shown")
        };
        (shown(&self.alice, "bob"), shown(&self.bob, "alice"))
    }

    /// Where `who` keeps its pinned keys.
    pub(crate) fn pin_file(&self, who: &str) -> PathBuf {
        self._dir.path().join(format!("{who}.pins"))
    }

    /// `who`'s pinned keys, as saved on disk.
    pub(crate) fn saved_pins(&self, who: &str) -> PinStore {
        PinStore::open(&self.pin_file(who)).expect("saved pins")
    }

    /// Makes every later save of `who`'s pin file fail: a directory sits where the
    /// temporary file must go (this works even for root, unlike file permissions).
    pub(crate) fn break_pin_saving(&self, who: &str) {
        let mut temporary = self.pin_file(who).into_os_string();
        temporary.push(".tmp");
        fs::create_dir(temporary).expect("block the temporary file");
    }

    /// `who` typed a message in an established session: returns its payload, held back.
    pub(crate) fn capture(&mut self, who: &str, to: &str, text: &str) -> String {
        assert!(self.in_flight.is_empty());
        self.type_text(who, to, text);
        let packet = self.in_flight.pop_front().expect("a payload was sent");
        assert!(self.in_flight.is_empty());
        assert!(is_e2e_message(&packet.payload), "{packet:?}");
        packet.payload
    }

    /// Delivers `payload` to `to` as coming from `from`; returns what `to` showed for it.
    pub(crate) fn deliver(&mut self, from: &str, to: &str, payload: &str) -> Vec<Notice> {
        let before = self.endpoint(to).notices.len();
        let actions = self.endpoint(to).secure.payload_arrived(from, payload);
        self.act(to, actions);
        self.endpoint(to).notices[before..].to_vec()
    }

    /// Delivers the oldest payload in flight unchanged.
    pub(crate) fn step(&mut self) {
        let packet = self.in_flight.pop_front().expect("a payload in flight");
        self.deliver(&packet.from, &packet.to, &packet.payload);
    }

    /// Delivers everything in flight until nothing more is sent. `attacker` sees each
    /// payload and returns what to deliver instead (`None` drops it).
    pub(crate) fn run(&mut self, mut attacker: impl FnMut(&Packet) -> Option<String>) {
        let mut deliveries = 0;
        while let Some(packet) = self.in_flight.pop_front() {
            deliveries += 1;
            assert!(deliveries < 100, "the clients never went quiet");
            if let Some(payload) = attacker(&packet) {
                self.deliver(&packet.from, &packet.to, &payload);
            }
        }
    }
}

/// Delivers everything as sent.
pub(crate) fn honest(packet: &Packet) -> Option<String> {
    Some(packet.payload.clone())
}

/// `payload` with one edit applied to its parsed form.
pub(crate) fn rewrite(payload: &str, edit: impl FnOnce(&mut Payload)) -> String {
    let mut parsed = Payload::parse(payload).expect("a valid payload");
    edit(&mut parsed);
    parsed.to_string()
}

/// A public value the attacker knows the exponent of: valid in every check but the
/// signature.
pub(crate) fn attacker_public_value() -> Vec<u8> {
    EphemeralSecret::generate(GROUP)
        .expect("attacker's exponent")
        .1
        .to_bytes()
}

/// Replaces the `index`th space-separated field of a payload (0 is the tag).
pub(crate) fn replace_field(payload: &str, index: usize, value: &str) -> String {
    let mut fields: Vec<&str> = payload.split(' ').collect();
    fields[index] = value;
    fields.join(" ")
}

/// Changes the first character of the last field (the ciphertext or signature): still
/// valid base64, different bytes.
pub(crate) fn flip_first_char_of_last_field(payload: &str) -> String {
    let (head, last) = payload.rsplit_once(' ').expect("fields");
    let mut chars: Vec<char> = last.chars().collect();
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    format!("{head} {}", chars.into_iter().collect::<String>())
}

/// Asserts that no private message got through, in either direction, and no session exists.
pub(crate) fn assert_no_conversation(relay: &Relay) {
    for (name, end, peer) in [("alice", &relay.alice, "bob"), ("bob", &relay.bob, "alice")] {
        assert!(
            !end.sent_e2e_message(),
            "{name} sent an encrypted message under a compromised exchange: {:#?}",
            end.sent
        );
        assert!(
            !end.notices
                .iter()
                .any(|n| matches!(n, Notice::Received { .. } | Notice::Sent { .. })),
            "{name} showed a message: {:#?}",
            end.notices
        );
        assert!(!end.secure.is_established(peer), "{name} has a session");
    }
}

#[test]
fn an_honest_relay_lets_the_conversation_through() {
    // The control for the attacks below: without interference, the same harness does
    // deliver, in both directions.
    let mut relay = Relay::new();
    relay.type_text("alice", "bob", "hi bob");
    relay.run(honest);
    relay.type_text("bob", "alice", "hi alice");
    relay.run(honest);
    assert_eq!(relay.bob.received(), ["hi bob"]);
    assert_eq!(relay.alice.received(), ["hi alice"]);
    assert!(relay.alice.warnings().is_empty() && relay.bob.warnings().is_empty());
}

#[test]
fn a_man_in_the_middle_on_the_diffie_hellman_values_is_detected() {
    type Attack = Box<dyn FnMut(&Packet) -> Option<String>>;
    let swap_y_r: Attack = Box::new(|packet| {
        Some(if packet.payload.starts_with("DH-REPLY ") {
            rewrite(&packet.payload, |p| {
                if let Payload::Reply(reply) = p {
                    reply.y_r = attacker_public_value();
                }
            })
        } else {
            packet.payload.clone()
        })
    });
    let swap_y_i: Attack = Box::new(|packet| {
        Some(if packet.payload.starts_with("DH-INIT ") {
            rewrite(&packet.payload, |p| {
                if let Payload::Init(init) = p {
                    init.y_i = attacker_public_value();
                }
            })
        } else {
            packet.payload.clone()
        })
    });
    // The classic attack: a separate exchange with each side.
    let swap_both: Attack = Box::new(|packet| {
        Some(rewrite(&packet.payload, |p| match p {
            Payload::Init(init) => init.y_i = attacker_public_value(),
            Payload::Reply(reply) => reply.y_r = attacker_public_value(),
            _ => {}
        }))
    });
    let alter_signature: Attack = Box::new(|packet| {
        Some(if packet.payload.starts_with("DH-REPLY ") {
            rewrite(&packet.payload, |p| {
                if let Payload::Reply(reply) = p {
                    reply.signature[10] ^= 0x01;
                }
            })
        } else {
            packet.payload.clone()
        })
    });

    for (name, attack) in [
        ("Y_r replaced", swap_y_r),
        ("Y_i replaced", swap_y_i),
        ("both replaced", swap_both),
        ("reply signature altered", alter_signature),
    ] {
        let mut relay = Relay::new();
        relay.type_text("alice", "bob", "attack at dawn");
        relay.run(attack);
        assert!(
            relay.alice.warned(&[
                "signature check failed",
                "1 waiting message(s) were NOT sent"
            ]),
            "{name}: alice was not warned: {:?}",
            relay.alice.warnings()
        );
        assert_no_conversation(&relay);
    }
}

#[test]
fn an_altered_confirmation_keeps_the_responder_from_reading_or_sending() {
    let mut relay = Relay::new();
    relay.type_text("alice", "bob", "from alice");
    relay.step(); // DH-INIT reaches bob, who answers.
    assert!(relay.in_flight[0].payload.starts_with("DH-REPLY "));
    // bob types while the exchange is unfinished: his message must wait for alice's proof.
    relay.type_text("bob", "alice", "from bob");
    relay.run(|packet| {
        Some(if packet.payload.starts_with("DH-CONFIRM ") {
            rewrite(&packet.payload, |p| {
                if let Payload::Confirm(confirm) = p {
                    confirm.signature[0] ^= 0x80;
                }
            })
        } else {
            packet.payload.clone()
        })
    });
    assert!(
        relay.bob.warned(&[
            "signature check failed",
            "1 waiting message(s) were NOT sent"
        ]),
        "{:?}",
        relay.bob.warnings()
    );
    assert!(!relay.bob.sent_e2e_message(), "{:?}", relay.bob.sent);
    assert!(relay.bob.received().is_empty(), "{:?}", relay.bob.notices);
    assert!(!relay.bob.secure.is_established("alice"));
    // alice could not know: her message went out, and bob refused it unread.
    assert!(relay.alice.sent_e2e_message());
    assert!(
        relay.bob.warned(&["outside any session"]),
        "{:?}",
        relay.bob.warnings()
    );
}

#[test]
fn invalid_diffie_hellman_values_are_refused_before_any_answer() {
    let group = GROUP;
    let p = group.prime();
    let width = group.byte_len();
    let padded = |value: &BigUint| {
        let bytes = value.to_bytes_be();
        let mut out = vec![0u8; width - bytes.len()];
        out.extend_from_slice(&bytes);
        out
    };
    let one = BigUint::from(1u32);
    // The smallest value outside the subgroup of prime order q (a quadratic non-residue).
    let outside = (2u32..)
        .map(BigUint::from)
        .find(|v| v.modpow(group.subgroup_order(), p) != one)
        .expect("a non-residue");
    let bad_values = [
        ("0", padded(&BigUint::from(0u32))),
        ("1", padded(&one)),
        ("p - 1", padded(&(p - &one))),
        ("p", padded(p)),
        ("outside the subgroup", padded(&outside)),
        ("too short", vec![7u8; width - 1]),
    ];
    for (name, bad) in bad_values {
        let mut relay = Relay::new();
        relay.type_text("alice", "bob", "hello");
        relay.run(|packet| {
            Some(rewrite(&packet.payload, |p| {
                if let Payload::Init(init) = p {
                    init.y_i = bad.clone();
                }
            }))
        });
        assert!(
            relay.bob.warned(&["rejected the key exchange"]),
            "Y_i = {name}: bob was not warned: {:?}",
            relay.bob.warnings()
        );
        assert!(
            relay.bob.sent.is_empty(),
            "Y_i = {name}: bob answered: {:?}",
            relay.bob.sent
        );
        assert_no_conversation(&relay);
    }
}

#[test]
fn altered_replayed_reordered_and_reflected_messages_are_dropped_with_warnings() {
    let mut relay = Relay::new();
    relay.type_text("alice", "bob", "hello");
    relay.run(honest);
    assert_eq!(relay.bob.received(), ["hello"]);
    let [one, two, three, four] =
        ["one", "two", "three", "four"].map(|text| relay.capture("alice", "bob", text));

    // Shows nothing but a warning containing `expected`, and never the text.
    let refused = |shown: Vec<Notice>, expected: &str, what: &str| {
        assert!(
            matches!(&shown[..], [Notice::Warning(w)] if w.contains(expected)),
            "{what}: {shown:?}"
        );
    };

    let altered = flip_first_char_of_last_field(&one);
    assert_ne!(altered, one);
    refused(
        relay.deliver("alice", "bob", &altered),
        "failed authentication",
        "altered ciphertext",
    );
    assert_eq!(
        relay.deliver("alice", "bob", &one),
        [Notice::Received {
            from: "alice".into(),
            text: "one".into(),
            trust: Trust::FirstUse,
        }],
        "the genuine message still opens after a forgery"
    );
    refused(
        relay.deliver("alice", "bob", &one),
        "not newer",
        "replayed message",
    );

    let shown = relay.deliver("alice", "bob", &three);
    assert!(
        matches!(&shown[..], [Notice::Warning(w), Notice::Received { text, .. }]
            if w.contains("1 message(s) missing") && text == "three"),
        "a gap is reported: {shown:?}"
    );
    refused(
        relay.deliver("alice", "bob", &two),
        "not newer",
        "older message after a newer one",
    );

    // A renumbered message fails authentication, and does not move the window: the
    // genuine one still opens afterwards.
    let counter: u64 = four.split(' ').nth(2).unwrap().parse().unwrap();
    let renumbered = replace_field(&four, 2, &(counter + 1).to_string());
    refused(
        relay.deliver("alice", "bob", &renumbered),
        "failed authentication",
        "renumbered message",
    );
    assert_eq!(relay.bob.received(), ["hello", "one", "three"]);
    relay.deliver("alice", "bob", &four);
    assert_eq!(relay.bob.received(), ["hello", "one", "three", "four"]);

    // Moved to another session.
    let five = relay.capture("alice", "bob", "five");
    let other_session = replace_field(&five, 1, &BASE64.encode([0x5a; 16]));
    refused(
        relay.deliver("alice", "bob", &other_session),
        "another or an expired session",
        "message moved to another session",
    );

    // Reflected: alice's own message handed back to her as if bob had sent it.
    refused(
        relay.deliver("bob", "alice", &five),
        "failed authentication",
        "reflected message",
    );
    assert!(relay.alice.received().is_empty());

    for secret in ["two", "five"] {
        assert!(
            !relay.bob.received().contains(&secret),
            "{secret:?} was shown"
        );
    }
}

#[test]
fn verify_marks_only_the_pinned_key_whose_safety_number_was_shown() {
    let mut relay = Relay::new();
    let bob_key = relay.bob.secure.identity_public();
    relay.command("alice", |s| s.verify("bob"));
    assert!(
        relay.alice.warned(&["no key is pinned for bob"]),
        "{:?}",
        relay.alice.notices
    );

    // Pinned by a conversation, but no safety number shown yet: nothing to confirm.
    relay.type_text("alice", "bob", "hello");
    relay.run(honest);
    relay.command("alice", |s| s.verify("bob"));
    assert!(
        relay.alice.warned(&["not verified", "/fingerprint bob"]),
        "{:?}",
        relay.alice.notices
    );
    assert_eq!(
        relay.saved_pins("alice").check("bob", &bob_key),
        PinStatus::Matches { verified: false }
    );

    relay.command("alice", |s| s.fingerprint(Some("bob")));
    relay.command("alice", |s| s.verify("bob"));
    assert_eq!(
        relay.saved_pins("alice").check("bob", &bob_key),
        PinStatus::Matches { verified: true }
    );
}

#[test]
fn a_number_shown_before_first_contact_does_not_verify_another_key_pinned_later() {
    // The server shows alice bob's real key when she asks for the number before they ever
    // talked, then gives her mallory's at first contact.
    let mut relay = Relay::new();
    relay.command("alice", |s| s.fingerprint(Some("bob")));
    let mallory = IdentityKey::generate().unwrap().public_key();
    relay.serve_key("bob", mallory);
    relay.type_text("alice", "bob", "hello");
    relay.run(honest);
    relay.command("alice", |s| s.verify("bob"));
    assert!(
        relay.alice.warned(&["not verified"]),
        "{:?}",
        relay.alice.notices
    );
    assert_eq!(
        relay.saved_pins("alice").check("bob", &mallory),
        PinStatus::Matches { verified: false }
    );
}

#[test]
fn a_replayed_key_exchange_does_not_break_an_established_session() {
    let mut relay = Relay::new();
    relay.type_text("alice", "bob", "hello");
    relay.run(honest);
    let old_init = relay
        .alice
        .sent
        .iter()
        .find(|payload| payload.starts_with("DH-INIT "))
        .cloned()
        .expect("alice's DH-INIT");

    // The server replays alice's old DH-INIT: bob answers it, alice ignores the answer.
    relay.deliver("alice", "bob", &old_init);
    relay.run(honest);
    assert!(
        relay.alice.warned(&["unexpected key-exchange reply"]),
        "{:?}",
        relay.alice.notices
    );

    relay.type_text("bob", "alice", "still there?");
    relay.type_text("alice", "bob", "yes");
    relay.run(honest);
    assert_eq!(relay.alice.received(), ["still there?"]);
    assert_eq!(relay.bob.received(), ["hello", "yes"]);
    assert!(relay.alice.secure.is_established("bob") && relay.bob.secure.is_established("alice"));
}

#[test]
fn a_fresh_exchange_keeps_messages_flowing_both_ways_until_it_completes() {
    let mut relay = Relay::new();
    relay.type_text("alice", "bob", "hello");
    relay.run(honest);
    let session_of = |payload: &str| payload.split(' ').nth(1).unwrap_or_default().to_owned();
    let first_session = session_of(relay.alice.sent.last().expect("hello"));

    // alice starts a new exchange; both type while it is under way, and bob's message
    // crosses alice's switch to the new keys.
    relay.command("alice", |s| s.explain("bob"));
    relay.type_text("alice", "bob", "during");
    relay.step(); // bob receives the DH-INIT and answers.
    relay.type_text("bob", "alice", "crossing");
    relay.run(honest);
    relay.type_text("alice", "bob", "after");
    relay.type_text("bob", "alice", "after too");
    relay.run(honest);

    assert_eq!(relay.bob.received(), ["hello", "during", "after"]);
    assert_eq!(relay.alice.received(), ["crossing", "after too"]);
    assert!(
        relay.alice.warnings().is_empty(),
        "{:?}",
        relay.alice.notices
    );
    assert!(relay.bob.warnings().is_empty(), "{:?}", relay.bob.notices);
    let last_session = session_of(relay.alice.sent.last().expect("after"));
    assert_ne!(first_session, last_session, "no new session was made");
}

#[test]
fn a_pin_that_cannot_be_saved_stops_the_exchange() {
    // First contact.
    let mut relay = Relay::new();
    relay.break_pin_saving("alice");
    relay.type_text("alice", "bob", "hello");
    relay.run(honest);
    assert!(relay.alice.sent.is_empty(), "{:?}", relay.alice.sent);
    assert!(
        relay
            .alice
            .warned(&["could not save", "1 waiting message(s) were NOT sent"]),
        "{:?}",
        relay.alice.notices
    );

    // An accepted key change.
    let mut relay = Relay::new();
    relay.type_text("alice", "bob", "hello");
    relay.run(honest);
    let bob_key = relay.bob.secure.identity_public();
    relay.serve_key("bob", IdentityKey::generate().unwrap().public_key());
    relay.command("alice", |s| s.fingerprint(Some("bob")));
    relay.type_text("alice", "bob", "held");
    relay.break_pin_saving("alice");
    let sent_before = relay.alice.sent.len();
    // The user reads the warning before answering it (an earlier /accept is ignored).
    std::thread::sleep(CONSENT_DELAY);
    relay.command("alice", |s| s.accept("bob"));
    relay.run(honest);
    assert_eq!(
        relay.alice.sent.len(),
        sent_before,
        "{:?}",
        relay.alice.sent
    );
    assert!(
        relay
            .alice
            .warned(&["could not save", "1 waiting message(s) were NOT sent"]),
        "{:?}",
        relay.alice.notices
    );
    assert_eq!(relay.bob.received(), ["hello"]);
    assert_eq!(
        relay.saved_pins("alice").check("bob", &bob_key),
        PinStatus::Matches { verified: false }
    );
}
