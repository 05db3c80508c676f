//! The end-to-end layer's security claims, each tested against the attack it is meant to
//! stop: the server (or anyone between the clients) must never read a private message, and
//! must not get one read or accepted under a key, a value or a counter of its choosing.
//!
//! Three kinds of harness, from the outside in:
//! - the real `server` and `client` binaries, to look at everything the server keeps (its
//!   database and its log) after a conversation;
//! - [`Party`]: the client library (`Secure`, the client's end-to-end state machine) over
//!   real TLS to an in-process server, where the test sees every payload as routed and can
//!   rewrite the server's database underneath;
//! - [`Relay`]: two `Secure` state machines joined by the test itself playing a malicious
//!   server, which alters, replays, reorders and reflects payloads.

mod common;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use num_bigint::BigUint;
use regex::Regex;
use rexpect::session::StreamSession;

use common::{contains, files_under, ok, ServerProcess, TestClient, TestServer, PASSWORD, WAIT};
use securechat::client::secure::{Action, Notice, Secure, EXCHANGE_TIMEOUT};
use securechat::e2e::{
    safety_number, EphemeralSecret, Group, IdentityKey, IdentityPublicKey, Payload, PinStatus,
    PinStore,
};
use securechat::protocol::ServerLine;

/// How long one poll of a connection waits before trying the other one.
const POLL: Duration = Duration::from_millis(20);

/// The group the library-driven clients start exchanges in: the smaller one, for speed.
const GROUP: Group = Group::Ffdhe2048;

/// Label of end-to-end encrypted private messages, as the terminal client prints it.
const E2E_LABEL: &str = "[private, end-to-end encrypted]";

/// Label of public room messages, as the terminal client prints it.
const ROOM_LABEL: &str = "[room, TLS only - the server can read this]";

// ----------------------------------------------------------------------------------------
// Party: the client library over real TLS.
// ----------------------------------------------------------------------------------------

/// A logged-in client driven through the library: frames from the server go into
/// [`Secure`], and its actions go back out, as the terminal client does it.
struct Party {
    /// The user name.
    name: String,
    /// The connection.
    client: TestClient,
    /// The end-to-end state machine.
    secure: Secure,
    /// Everything it would have shown the user.
    notices: Vec<Notice>,
    /// Payloads it handed the server to route, with their recipient, in order.
    sent: Vec<(String, String)>,
    /// Payloads the server delivered to it, with their sender, exactly as routed.
    delivered: Vec<(String, String)>,
    /// Every other frame, for diagnostics and room messages.
    other: Vec<ServerLine>,
}

impl Party {
    /// Logs in (registering first if asked), loads or creates the identity key and pins in
    /// `home/<name>/`, and publishes the key.
    fn join(mut client: TestClient, home: &Path, name: &str, register: bool) -> Party {
        if register {
            client.register_ok(name);
        }
        client.login_ok(name);
        let dir = home.join(name);
        let (identity, _) =
            IdentityKey::load_or_create(&dir.join("identity.key")).expect("identity key");
        let pins = PinStore::open(&dir.join("known_keys")).expect("pin store");
        let secure = Secure::new(name, identity, pins, GROUP, false);
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
    fn type_text(&mut self, to: &str, text: &str) {
        let actions = self.secure.send_text(to, text);
        self.apply(actions);
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, payload } => {
                    self.client.send(&format!("MSG {to} {payload}"));
                    self.sent.push((to, payload));
                }
                Action::FetchKey(user) => self.client.send(&format!("GETKEY {user}")),
                Action::Show(notice) => self.notices.push(notice),
            }
        }
    }

    /// Handles the next frame if one comes within `wait`.
    fn poll(&mut self, wait: Duration) {
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
    fn poll_until(&mut self, what: &str, done: impl Fn(&Party) -> bool) {
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
    fn received(&self) -> Vec<&str> {
        self.notices
            .iter()
            .filter_map(|notice| match notice {
                Notice::Received { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn warned(&self, about: &str) -> bool {
        warns(&self.notices, &[about])
    }

    fn informed(&self, about: &str) -> bool {
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
fn run_until(a: &mut Party, b: &mut Party, what: &str, done: impl Fn(&Party, &Party) -> bool) {
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

/// The 12 groups of 5 digits in a safety-number notice for `user`.
fn shown_safety_number(party: &Party, user: &str) -> Option<String> {
    let pattern = Regex::new(&format!(
        r"safety number with {user}: ((?:\d{{5}} ){{11}}\d{{5}})"
    ))
    .expect("test regex");
    party.notices.iter().find_map(|notice| match notice {
        Notice::Info(text) => pattern.captures(text).map(|c| c[1].to_owned()),
        _ => None,
    })
}

/// Plays a server that hands out `key` as `user`'s identity key: rewrites its database.
fn substitute_identity_key(server: &TestServer, user: &str, key: &IdentityPublicKey) {
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
fn first_contact_with_a_substituted_key(
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
fn show_both_safety_numbers(alice: &mut Party, bob: &mut Party) {
    let actions = alice.secure.fingerprint(Some("bob"));
    alice.apply(actions);
    let actions = bob.secure.fingerprint(Some("alice"));
    bob.apply(actions);
    run_until(alice, bob, "both safety numbers", |a, b| {
        shown_safety_number(a, "bob").is_some() && shown_safety_number(b, "alice").is_some()
    });
}

/// Whether one of `notices` is a warning that contains every one of `parts`.
fn warns(notices: &[Notice], parts: &[&str]) -> bool {
    notices.iter().any(|notice| {
        matches!(notice, Notice::Warning(text) if parts.iter().all(|part| text.contains(part)))
    })
}

fn is_e2e_message(payload: &str) -> bool {
    payload.starts_with("E2E ")
}

// ----------------------------------------------------------------------------------------
// The real binaries.
// ----------------------------------------------------------------------------------------

/// The `client` binary in scripted mode (`--user NAME --password-stdin`), with its
/// standard input and output on pipes.
struct Scripted {
    /// Its standard output to match against, its standard input to type into.
    session: StreamSession<ChildStdin>,
    /// The process.
    child: Child,
    /// Everything it printed that was matched (and, after [`Scripted::quit`], all of it).
    transcript: String,
    /// Its standard error (logs, fatal errors), for failure messages.
    stderr: PathBuf,
}

impl Scripted {
    /// Starts the client as `user` (registering first if asked) and gives it the password.
    fn spawn(address: &str, ca: &Path, home: &Path, user: &str, register: bool) -> Scripted {
        let stderr = home.join(format!("{user}.stderr"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_client"));
        command
            .arg("--server")
            .arg(address)
            .arg("--ca")
            .arg(ca)
            .arg("--home")
            .arg(home)
            .args(["--user", user, "--password-stdin"]);
        if register {
            command.arg("--register");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start the client binary");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take().expect("stdin");
        let session = rexpect::spawn_stream(stdout, stdin, Some(WAIT.as_millis() as u64));
        let mut client = Scripted {
            session,
            child,
            transcript: String::new(),
            stderr,
        };
        client.send_line(PASSWORD);
        client
    }

    fn send_line(&mut self, line: &str) {
        self.session.send_line(line).expect("write to the client");
    }

    /// Waits until `needle` is printed.
    fn expect(&mut self, needle: &str) {
        match self.session.exp_string(needle) {
            Ok(before) => {
                self.transcript.push_str(&before);
                self.transcript.push_str(needle);
            }
            Err(e) => panic!(
                "waiting for {needle:?}: {e}\n--- transcript ---\n{}\n--- stderr ---\n{}",
                self.transcript,
                fs::read_to_string(&self.stderr).unwrap_or_default()
            ),
        }
    }

    /// `/quit`; waits for the exit and returns the whole transcript.
    fn quit(mut self) -> String {
        self.send_line("/quit");
        match self.session.exp_eof() {
            Ok(rest) => self.transcript.push_str(&rest),
            Err(e) => panic!("the client did not exit: {e}\n{}", self.transcript),
        }
        let status = self.child.wait().expect("wait for the client");
        assert!(
            status.success(),
            "client exit: {status}\n{}",
            self.transcript
        );
        std::mem::take(&mut self.transcript)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `payload`, or any base64 token in it once decoded, contains `text`: catches a
/// "cipher" that is only an encoding.
fn reveals(payload: &str, text: &str) -> bool {
    payload.contains(text)
        || payload
            .split(' ')
            .filter_map(|token| BASE64.decode(token).ok())
            .any(|bytes| contains(&bytes, text))
}

// ----------------------------------------------------------------------------------------
// Relay: the test plays a malicious server between two state machines.
// ----------------------------------------------------------------------------------------

/// One payload on its way through the relay.
#[derive(Debug, Clone)]
struct Packet {
    /// The sender, as the relay would stamp it.
    from: String,
    /// The recipient.
    to: String,
    /// The payload as sent (the attacker may deliver something else).
    payload: String,
}

/// One user's state machine and what it did.
struct Endpoint {
    /// The state machine under attack.
    secure: Secure,
    /// Everything it would have shown the user.
    notices: Vec<Notice>,
    /// Payloads it asked to have routed, in order.
    sent: Vec<String>,
}

impl Endpoint {
    fn received(&self) -> Vec<&str> {
        self.notices
            .iter()
            .filter_map(|notice| match notice {
                Notice::Received { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn warnings(&self) -> Vec<&str> {
        self.notices
            .iter()
            .filter_map(|notice| match notice {
                Notice::Warning(text) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Whether one warning contains every one of `parts`.
    fn warned(&self, parts: &[&str]) -> bool {
        warns(&self.notices, parts)
    }

    fn sent_e2e_message(&self) -> bool {
        self.sent.iter().any(|payload| is_e2e_message(payload))
    }
}

/// alice and bob, with the test in the middle. The key directory is honest (each key is
/// the real one): these tests are about what happens to payloads in transit.
struct Relay {
    alice: Endpoint,
    bob: Endpoint,
    /// The real identity keys, handed out on every fetch.
    keys: Vec<(String, IdentityPublicKey)>,
    /// Payloads sent and not yet delivered, oldest first.
    in_flight: VecDeque<Packet>,
    /// Holds the pin files.
    _dir: tempfile::TempDir,
}

impl Relay {
    fn new() -> Relay {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut keys = Vec::new();
        let mut endpoint = |name: &str| {
            let identity = IdentityKey::generate().expect("identity key");
            keys.push((name.to_owned(), identity.public_key()));
            let pins = PinStore::open(&dir.path().join(format!("{name}.pins"))).expect("pins");
            Endpoint {
                secure: Secure::new(name, identity, pins, GROUP, false),
                notices: Vec::new(),
                sent: Vec::new(),
            }
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

    fn endpoint(&mut self, name: &str) -> &mut Endpoint {
        match name {
            "alice" => &mut self.alice,
            "bob" => &mut self.bob,
            other => panic!("no endpoint {other}"),
        }
    }

    /// Carries out `who`'s actions: payloads go in flight, key fetches are answered at once.
    fn act(&mut self, who: &str, actions: Vec<Action>) {
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
                Action::Show(notice) => self.endpoint(who).notices.push(notice),
            }
        }
    }

    /// `who` typed a private message for `to`.
    fn type_text(&mut self, who: &str, to: &str, text: &str) {
        let actions = self.endpoint(who).secure.send_text(to, text);
        self.act(who, actions);
    }

    /// `who` typed a command: `command` calls the matching `Secure` method.
    fn command(&mut self, who: &str, command: impl FnOnce(&mut Secure) -> Vec<Action>) {
        let actions = command(&mut self.endpoint(who).secure);
        self.act(who, actions);
    }

    /// From now on the key directory hands out `key` as `user`'s.
    fn serve_key(&mut self, user: &str, key: IdentityPublicKey) {
        for (name, served) in &mut self.keys {
            if name == user {
                *served = key;
            }
        }
    }

    /// Where `who` keeps its pinned keys.
    fn pin_file(&self, who: &str) -> PathBuf {
        self._dir.path().join(format!("{who}.pins"))
    }

    /// `who`'s pinned keys, as saved on disk.
    fn saved_pins(&self, who: &str) -> PinStore {
        PinStore::open(&self.pin_file(who)).expect("saved pins")
    }

    /// Makes every later save of `who`'s pin file fail: a directory sits where the
    /// temporary file must go (this works even for root, unlike file permissions).
    fn break_pin_saving(&self, who: &str) {
        let mut temporary = self.pin_file(who).into_os_string();
        temporary.push(".tmp");
        fs::create_dir(temporary).expect("block the temporary file");
    }

    /// `who` typed a message in an established session: returns its payload, held back.
    fn capture(&mut self, who: &str, to: &str, text: &str) -> String {
        assert!(self.in_flight.is_empty());
        self.type_text(who, to, text);
        let packet = self.in_flight.pop_front().expect("a payload was sent");
        assert!(self.in_flight.is_empty());
        assert!(is_e2e_message(&packet.payload), "{packet:?}");
        packet.payload
    }

    /// Delivers `payload` to `to` as coming from `from`; returns what `to` showed for it.
    fn deliver(&mut self, from: &str, to: &str, payload: &str) -> Vec<Notice> {
        let before = self.endpoint(to).notices.len();
        let actions = self.endpoint(to).secure.payload_arrived(from, payload);
        self.act(to, actions);
        self.endpoint(to).notices[before..].to_vec()
    }

    /// Delivers the oldest payload in flight unchanged.
    fn step(&mut self) {
        let packet = self.in_flight.pop_front().expect("a payload in flight");
        self.deliver(&packet.from, &packet.to, &packet.payload);
    }

    /// Delivers everything in flight until nothing more is sent. `attacker` sees each
    /// payload and returns what to deliver instead (`None` drops it).
    fn run(&mut self, mut attacker: impl FnMut(&Packet) -> Option<String>) {
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
fn honest(packet: &Packet) -> Option<String> {
    Some(packet.payload.clone())
}

/// `payload` with one edit applied to its parsed form.
fn rewrite(payload: &str, edit: impl FnOnce(&mut Payload)) -> String {
    let mut parsed = Payload::parse(payload).expect("a valid payload");
    edit(&mut parsed);
    parsed.to_string()
}

/// A public value the attacker knows the exponent of: valid in every check but the
/// signature.
fn attacker_public_value() -> Vec<u8> {
    EphemeralSecret::generate(GROUP)
        .expect("attacker's exponent")
        .1
        .to_bytes()
}

/// Replaces the `index`th space-separated field of a payload (0 is the tag).
fn replace_field(payload: &str, index: usize, value: &str) -> String {
    let mut fields: Vec<&str> = payload.split(' ').collect();
    fields[index] = value;
    fields.join(" ")
}

/// Changes the first character of the last field (the ciphertext or signature): still
/// valid base64, different bytes.
fn flip_first_char_of_last_field(payload: &str) -> String {
    let (head, last) = payload.rsplit_once(' ').expect("fields");
    let mut chars: Vec<char> = last.chars().collect();
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    format!("{head} {}", chars.into_iter().collect::<String>())
}

/// Asserts that no private message got through, in either direction, and no session exists.
fn assert_no_conversation(relay: &Relay) {
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

// ----------------------------------------------------------------------------------------
// The tests.
// ----------------------------------------------------------------------------------------

#[test]
fn the_server_never_sees_private_plaintext_in_transit_on_disk_or_in_its_logs() {
    const TO_BOB: &str = "the vault code is 7351-alpha";
    const TO_ALICE: &str = "understood, burning this note";
    const IN_THE_ROOM: &str = "good morning everyone";
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(dir.path(), &[("RUST_LOG", "debug")]);
    let homes = tempfile::tempdir().unwrap();

    // bob runs on the library, so the test sees every payload exactly as the server
    // routed it; alice is the real client binary.
    let mut bob = Party::join(server.connect(), homes.path(), "bob", true);
    let mut alice = Scripted::spawn(&server.address(), &server.ca, homes.path(), "alice", true);
    alice.expect("logged in as alice.");
    alice.send_line("/list");
    alice.expect("* 2 online: alice, bob");

    alice.send_line(&format!("/msg bob {TO_BOB}"));
    bob.poll_until("alice's message", |b| b.received() == [TO_BOB]);
    alice.expect(&format!("you -> bob {E2E_LABEL}: {TO_BOB}"));

    bob.type_text("alice", TO_ALICE);
    alice.expect(&format!("bob -> you {E2E_LABEL}: {TO_ALICE}"));

    // The room, by contrast, is readable by the server: this is what the check below
    // would catch if private messages travelled like room messages.
    alice.send_line(IN_THE_ROOM);
    bob.poll_until("the room line", |b| {
        b.other.contains(&ServerLine::Room {
            user: "alice".into(),
            text: IN_THE_ROOM.into(),
        })
    });

    let transcript = alice.quit();
    bob.client.send("QUIT");
    server.stop();
    assert!(!transcript.contains("!!!"), "{transcript}");

    // In transit: everything the server routed between them.
    assert!(
        bob.delivered.iter().any(|(_, p)| is_e2e_message(p)),
        "{bob}"
    );
    let routed = bob
        .delivered
        .iter()
        .map(|(_, payload)| payload)
        .chain(bob.sent.iter().map(|(_, payload)| payload));
    for payload in routed {
        let tag = payload.split(' ').next().unwrap_or_default();
        assert!(
            ["DH-INIT", "DH-REPLY", "DH-CONFIRM", "E2E"].contains(&tag),
            "unexpected payload {payload:?}"
        );
        for secret in [TO_BOB, TO_ALICE] {
            assert!(
                !reveals(payload, secret),
                "{secret:?} readable in {payload:?}"
            );
        }
    }

    // At rest: the database and its write-ahead log (the accounts are there, so this is
    // the right place to look).
    let stored = files_under(&dir.path().join("data"));
    assert!(stored.iter().any(|(_, bytes)| contains(bytes, "alice")));
    for (path, bytes) in &stored {
        for secret in [TO_BOB, TO_ALICE, PASSWORD] {
            assert!(!contains(bytes, secret), "{secret:?} in {}", path.display());
        }
    }

    // In the debug log, which does record the two sessions.
    let log = server.log();
    assert!(log.contains("logged in as alice"), "{log}");
    assert!(log.contains("logged in as bob"), "{log}");
    for secret in [TO_BOB, TO_ALICE, PASSWORD] {
        assert!(
            !log.contains(secret),
            "{secret:?} in the server log:\n{log}"
        );
    }
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
    let at_alice = shown_safety_number(&alice, "bob").unwrap();
    let at_bob = shown_safety_number(&bob, "alice").unwrap();
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
            text: "one".into()
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
fn payloads_that_are_not_end_to_end_are_dropped_with_a_warning_never_shown() {
    const CLEAR: &str = "meet me at the station";
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    // bob speaks the raw protocol: his payloads are whatever he writes.
    let bob = server.login("bob");
    let mut alice = Scripted::spawn(&server.address(), &server.ca, home.path(), "alice", true);
    alice.expect("logged in as alice.");
    alice.send_line("/list");
    alice.expect("* 2 online: alice, bob");

    let sid = BASE64.encode([0x11; 16]);
    let ciphertext = BASE64.encode([0x22; 40]);
    let signature = BASE64.encode([0x33; 64]);
    bob.send(&format!("MSG alice {CLEAR}"));
    bob.send(&format!("MSG alice E2E {sid} 1 {ciphertext}"));
    bob.send(&format!("MSG alice E2E {CLEAR}"));
    bob.send(&format!(
        "MSG alice DH-REPLY {sid} {ciphertext} {signature}"
    ));
    bob.send("SAY that was all");

    alice.expect(
        "!!! bob sent a private message that is not end-to-end encrypted; it was dropped unread",
    );
    alice.expect("!!! bob sent an encrypted message outside any session");
    alice.expect("!!! bob: malformed end-to-end payload");
    alice.expect("!!! bob: unexpected key-exchange reply");
    // The room line comes after all of them, so every payload above has been handled.
    alice.expect(&format!("bob {ROOM_LABEL}: that was all"));
    let transcript = alice.quit();
    assert!(!transcript.contains(CLEAR), "{transcript}");
    assert!(!transcript.contains("bob -> you"), "{transcript}");
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
    assert_eq!(shown_safety_number(&bob, "alice").unwrap(), real);
    // alice is shown the number of the key she pinned, which does not match bob's...
    assert_eq!(
        shown_safety_number(&alice, "bob").unwrap(),
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
    let actions = alice.secure.accept("bob");
    alice.apply(actions);
    run_until(&mut alice, &mut bob, "the held message", |_, b| {
        b.received() == ["are you there?"]
    });
    alice.notices.clear();
    let actions = alice.secure.fingerprint(Some("bob"));
    alice.apply(actions);
    alice.poll_until("the new number", |a| {
        shown_safety_number(a, "bob").is_some()
    });
    assert_eq!(shown_safety_number(&alice, "bob").unwrap(), real);
    let actions = alice.secure.verify("bob");
    alice.apply(actions);
    let pins = PinStore::open(&pins_file).expect("alice's pins");
    assert_eq!(
        pins.check("bob", &bob_real_key),
        PinStatus::Matches { verified: true }
    );
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

#[test]
fn a_stalled_key_exchange_times_out_and_a_fresh_one_can_start() {
    let mut relay = Relay::new();
    relay.type_text("alice", "bob", "from alice");
    // The server swallows bob's answer: alice waits for it, bob for her confirmation.
    relay.run(|packet| (!packet.payload.starts_with("DH-REPLY ")).then(|| packet.payload.clone()));
    relay.type_text("bob", "alice", "from bob");
    relay.command("alice", |s| s.explain("bob"));
    assert!(
        relay
            .alice
            .notices
            .iter()
            .any(|n| matches!(n, Notice::Info(t) if t.contains("already under way"))),
        "{:?}",
        relay.alice.notices
    );

    // The clock is passed in: no need to wait for the timeout.
    let later = Instant::now() + EXCHANGE_TIMEOUT + Duration::from_secs(1);
    for who in ["alice", "bob"] {
        relay.command(who, |s| s.expire_stalled(later));
        let endpoint = relay.endpoint(who);
        assert!(
            endpoint.warned(&["no answer within", "1 waiting message(s) were NOT sent"]),
            "{who}: {:?}",
            endpoint.warnings()
        );
    }
    assert!(relay.alice.secure.next_deadline().is_none());
    assert!(relay.bob.secure.next_deadline().is_none());

    // Nothing is stuck: `/dh` starts a fresh exchange, and messages flow.
    relay.command("alice", |s| s.explain("bob"));
    relay.run(honest);
    relay.type_text("alice", "bob", "again");
    relay.type_text("bob", "alice", "me too");
    relay.run(honest);
    assert_eq!(relay.bob.received(), ["again"]);
    assert_eq!(relay.alice.received(), ["me too"]);
}
