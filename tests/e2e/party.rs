//! The [`Party`] harness (the client library over real TLS to an in-process server, which
//! the test can rewrite underneath) and the tests that use it.

use super::*;

// ----------------------------------------------------------------------------------------
// Party: the client library over real TLS.
// ----------------------------------------------------------------------------------------

/// A logged-in client driven through the library: frames from the server go into
/// [`EndToEnd`], and its actions go back out, as the terminal client does it.
pub(crate) struct Party {
    /// The user name.
    pub(crate) name: String,
    /// The connection.
    pub(crate) client: TestClient,
    /// The end-to-end state machine.
    pub(crate) secure: EndToEnd,
    /// Everything it would have shown the user.
    pub(crate) notices: Vec<Notice>,
    /// Payloads it handed the server to route, with their recipient, in order.
    pub(crate) sent: Vec<(String, String)>,
    /// Payloads the server delivered to it, with their sender, exactly as routed.
    pub(crate) delivered: Vec<(String, String)>,
    /// Every other frame, for diagnostics and room messages.
    pub(crate) other: Vec<ServerLine>,
}

impl Party {
    /// Logs in (registering first if asked), loads or creates the identity key and pins in
    /// `home/<name>/`, and publishes the key.
    pub(crate) fn join(mut client: TestClient, home: &Path, name: &str, register: bool) -> Party {
        if register {
            client.register_ok(name);
        }
        client.login_ok(name);
        let dir = home.join(name);
        let (identity, _) =
            IdentityKey::load_or_create(&dir.join("identity.key")).expect("identity key");
        let pins = PinStore::open(&dir.join("known_keys")).expect("pin store");
        let secure = EndToEnd::new(name, identity, pins, GROUP, false);
        let key = secure.identity_public().to_base64();
        assert_eq!(client.request(&format!("SETKEY {key}")), ok("SETKEY", ""));
        Party {
            name: name.to_owned(),
            client,
            secure,
            notices: Vec::new(),
            sent: Vec::new(),
            delivered: Vec::new(),
            other: Vec::new(),
        }
    }

    /// The user typed a private message.
    pub(crate) fn type_text(&mut self, to: &str, text: &str) {
        let actions = self.secure.send_text(to, text);
        self.apply(actions);
    }

    pub(crate) fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, payload } => {
                    self.client.send(&format!("MSG {to} {payload}"));
                    self.sent.push((to, payload));
                }
                Action::FetchKey(user) => self.client.send(&format!("GETKEY {user}")),
                Action::Show(Notice::Request { from }) => {
                    // The user reading this agrees to talk to whoever asks.
                    self.notices.push(Notice::Request { from: from.clone() });
                    let actions = self.secure.accept(&from);
                    self.apply(actions);
                }
                Action::Show(notice) => self.notices.push(notice),
            }
        }
    }

    /// Handles the next frame if one comes within `wait`.
    pub(crate) fn poll(&mut self, wait: Duration) {
        let line = match self.client.reader.recv_timeout(wait) {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(e) => panic!("{}: connection failed: {e}", self.name),
        };
        let actions = match line {
            ServerLine::From { user, payload } => {
                self.delivered.push((user.clone(), payload.clone()));
                self.secure.payload_arrived(&user, &payload)
            }
            ServerLine::Ok {
                command: securechat::protocol::Command::GetKey,
                detail,
            } => {
                let (user, key) = detail.split_once(' ').unwrap_or((&detail, ""));
                self.secure.key_arrived(user, key)
            }
            ServerLine::Err {
                command: Some(securechat::protocol::Command::GetKey),
                text,
                ..
            } => {
                let user = text.split(' ').next().unwrap_or("");
                self.secure.key_unavailable(user, &text)
            }
            ServerLine::Offline { user } => self.secure.peer_gone(&user),
            other => {
                self.other.push(other);
                Vec::new()
            }
        };
        self.apply(actions);
    }

    /// Handles frames until `done` holds.
    pub(crate) fn poll_until(&mut self, what: &str, done: impl Fn(&Party) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}\n{self}"
            );
            self.poll(POLL);
        }
    }

    /// Texts of the private messages it would have shown as received.
    pub(crate) fn received(&self) -> Vec<&str> {
        received_texts(&self.notices)
    }

    pub(crate) fn warned(&self, about: &str) -> bool {
        warns(&self.notices, &[about])
    }

    pub(crate) fn informed(&self, about: &str) -> bool {
        self.notices
            .iter()
            .any(|notice| matches!(notice, Notice::Info(text) if text.contains(about)))
    }
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "--- {} ---", self.name)?;
        writeln!(f, "notices: {:#?}", self.notices)?;
        writeln!(f, "sent: {:#?}", self.sent)?;
        writeln!(f, "delivered: {:#?}", self.delivered)?;
        write!(f, "other frames: {:?}", self.other)
    }
}

/// Lets frames flow between two parties until `done` holds.
pub(crate) fn run_until(
    a: &mut Party,
    b: &mut Party,
    what: &str,
    done: impl Fn(&Party, &Party) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(a, b) {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}\n{a}\n{b}"
        );
        a.poll(POLL);
        b.poll(POLL);
    }
}

/// Plays a server that hands out `key` as `user`'s identity key: rewrites its database.
pub(crate) fn substitute_identity_key(server: &TestServer, user: &str, key: &IdentityPublicKey) {
    let db = rusqlite::Connection::open(server.data_dir().join(securechat::server::DB_FILE))
        .expect("open the server's database");
    db.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    let changed = db
        .execute(
            "UPDATE accounts SET identity_key = ?1 WHERE username = ?2",
            rusqlite::params![key.to_base64(), user],
        )
        .expect("rewrite the key");
    assert_eq!(changed, 1, "no account {user}");
}

/// alice and bob online, the server handing out a fresh key (mallory's) as bob's, and
/// alice's first message to bob sent: she takes and pins the false key, and the exchange
/// fails on bob's real signature. Returns both parties, bob's real key and mallory's.
pub(crate) fn first_contact_with_a_substituted_key(
    server: &TestServer,
    homes: &Path,
) -> (Party, Party, IdentityPublicKey, IdentityPublicKey) {
    let mut alice = Party::join(server.connect(), homes, "alice", true);
    let mut bob = Party::join(server.connect(), homes, "bob", true);
    let bob_real_key = bob.secure.identity_public();
    let mallory = IdentityKey::generate().unwrap().public_key();
    substitute_identity_key(server, "bob", &mallory);
    alice.type_text("bob", "first words");
    run_until(&mut alice, &mut bob, "the signature failure", |a, _| {
        a.warned("signature check failed")
    });
    (alice, bob, bob_real_key, mallory)
}

/// alice and bob each ask for their safety number with the other; returns when both
/// screens show one.
pub(crate) fn show_both_safety_numbers(alice: &mut Party, bob: &mut Party) {
    let actions = alice.secure.fingerprint(Some("bob"));
    alice.apply(actions);
    let actions = bob.secure.fingerprint(Some("alice"));
    bob.apply(actions);
    run_until(alice, bob, "both safety numbers", |a, b| {
        shown_safety_number(&a.notices, "bob").is_some()
            && shown_safety_number(&b.notices, "alice").is_some()
    });
}

#[test]
fn a_substituted_key_for_a_pinned_contact_is_refused_and_nothing_is_sent() {
    let server = TestServer::start();
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Party::join(server.connect(), homes.path(), "alice", true);
    let mut bob = Party::join(server.connect(), homes.path(), "bob", true);

    // A first conversation pins bob's real key at alice's.
    alice.type_text("bob", "hello bob");
    run_until(&mut alice, &mut bob, "first message", |_, b| {
        b.received() == ["hello bob"]
    });

    // alice restarts her client (same key files); meanwhile the server starts handing
    // out mallory's key as bob's.
    alice.client.send("QUIT");
    drop(alice);
    bob.poll_until("alice leaving", |b| b.informed("alice is offline"));
    let mallory = IdentityKey::generate().unwrap().public_key();
    substitute_identity_key(&server, "bob", &mallory);
    let mut alice = Party::join(server.connect(), homes.path(), "alice", false);

    alice.type_text("bob", "the new plan");
    alice.poll_until("the key-change warning", |a| {
        a.warned("IDENTITY KEY HAS CHANGED")
    });
    alice.type_text("bob", "are you there?");
    assert!(alice.warned("message held"), "{alice}");
    assert!(alice.sent.is_empty(), "sent under a changed key:\n{alice}");
    bob.client.assert_silent(Duration::from_millis(300));

    // Even if alice wrongly accepts the substituted key, the real bob's signature does
    // not verify with it: the exchange fails and the held messages are not sent.
    // The user reads the warning before answering it (an earlier /accept is ignored).
    std::thread::sleep(CONSENT_DELAY);
    let actions = alice.secure.accept("bob");
    alice.apply(actions);
    run_until(&mut alice, &mut bob, "the signature failure", |a, _| {
        a.warned("signature check failed")
    });
    assert!(
        alice.warned("2 waiting message(s) were NOT sent"),
        "{alice}"
    );
    assert!(
        alice.sent.iter().all(|(_, p)| p.starts_with("DH-INIT ")),
        "{alice}"
    );
    assert_eq!(bob.received(), ["hello bob"], "{bob}");
    assert!(!alice.secure.is_established("bob"));
}

#[test]
fn a_key_substituted_before_first_contact_fails_the_signature_and_the_safety_number() {
    let server = TestServer::start();
    let homes = tempfile::tempdir().unwrap();
    // alice has never talked to bob: she takes (and pins) the key she is given. bob's
    // reply is signed with his real key, which does not match it.
    let (mut alice, mut bob, bob_real_key, _) =
        first_contact_with_a_substituted_key(&server, homes.path());
    assert!(
        alice.warned("1 waiting message(s) were NOT sent"),
        "{alice}"
    );
    assert!(
        alice.sent.iter().all(|(_, p)| p.starts_with("DH-INIT ")),
        "{alice}"
    );
    assert!(
        bob.delivered.iter().all(|(_, p)| p.starts_with("DH-INIT ")),
        "{bob}"
    );
    assert!(bob.received().is_empty() && alice.received().is_empty());
    assert!(!alice.secure.is_established("bob") && !bob.secure.is_established("alice"));

    // Comparing safety numbers exposes the substitution: the two screens differ, and
    // bob's is the number of the real keys.
    show_both_safety_numbers(&mut alice, &mut bob);
    let at_alice = shown_safety_number(&alice.notices, "bob").unwrap();
    let at_bob = shown_safety_number(&bob.notices, "alice").unwrap();
    assert_ne!(at_alice, at_bob, "the substitution would go unnoticed");
    let real = safety_number(
        "alice",
        &alice.secure.identity_public(),
        "bob",
        &bob_real_key,
    );
    assert_eq!(at_bob, real);
}

#[test]
fn a_false_first_contact_key_is_not_verified_when_the_real_one_is_served_for_comparison() {
    // The attack: the server gives alice mallory's key as bob's at first contact (she pins
    // it), then hands out bob's real key when she asks for the safety number, so that the
    // numbers read aloud match; `/verify` would then bless the false key.
    let server = TestServer::start();
    let homes = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, bob_real_key, mallory) =
        first_contact_with_a_substituted_key(&server, homes.path());
    let pins_file = homes.path().join("alice").join("known_keys");
    let pins = PinStore::open(&pins_file).expect("alice's pins");
    assert_eq!(
        pins.check("bob", &mallory),
        PinStatus::Matches { verified: false }
    );

    substitute_identity_key(&server, "bob", &bob_real_key);
    show_both_safety_numbers(&mut alice, &mut bob);
    let alice_key = alice.secure.identity_public();
    let real = safety_number("alice", &alice_key, "bob", &bob_real_key);
    assert_eq!(shown_safety_number(&bob.notices, "alice").unwrap(), real);
    // alice is shown the number of the key she pinned, which does not match bob's...
    assert_eq!(
        shown_safety_number(&alice.notices, "bob").unwrap(),
        safety_number("alice", &alice_key, "bob", &mallory),
        "{alice}"
    );
    // ...and the server's different key is the loud key-change warning, not a side note.
    assert!(alice.warned("IDENTITY KEY HAS CHANGED"), "{alice}");

    let actions = alice.secure.verify("bob");
    alice.apply(actions);
    assert!(alice.warned("bob: not verified"), "{alice}");
    assert!(!alice.informed("marked as verified"), "{alice}");
    let pins = PinStore::open(&pins_file).expect("alice's pins");
    assert_eq!(
        pins.check("bob", &mallory),
        PinStatus::Matches { verified: false },
        "the false key must not end up verified"
    );
    alice.type_text("bob", "are you there?");
    assert!(alice.warned("message held"), "{alice}");
    assert!(
        !alice.sent.iter().any(|(_, p)| is_e2e_message(p)),
        "{alice}"
    );

    // The way out: alice accepts the key the server now gives (bob's real one), the
    // held message goes to bob, and the numbers, compared again, now verify that key.
    // The user reads the warning before answering it (an earlier /accept is ignored).
    std::thread::sleep(CONSENT_DELAY);
    let actions = alice.secure.accept("bob");
    alice.apply(actions);
    run_until(&mut alice, &mut bob, "the held message", |_, b| {
        b.received() == ["are you there?"]
    });
    alice.notices.clear();
    let actions = alice.secure.fingerprint(Some("bob"));
    alice.apply(actions);
    alice.poll_until("the new number", |a| {
        shown_safety_number(&a.notices, "bob").is_some()
    });
    assert_eq!(shown_safety_number(&alice.notices, "bob").unwrap(), real);
    let actions = alice.secure.verify("bob");
    alice.apply(actions);
    let pins = PinStore::open(&pins_file).expect("alice's pins");
    assert_eq!(
        pins.check("bob", &bob_real_key),
        PinStatus::Matches { verified: true }
    );
}
