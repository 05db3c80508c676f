//! The real `server` and `client` binaries, and what the server keeps after a conversation.

use super::party::Party;
use super::relay::{honest, Relay};
use super::*;

// ----------------------------------------------------------------------------------------
// The real binaries.
// ----------------------------------------------------------------------------------------

/// The `client` binary in scripted mode (`--user NAME --password-stdin`), with its
/// standard input and output on pipes.
pub(crate) struct Scripted {
    /// Its standard output to match against, its standard input to type into.
    pub(crate) session: StreamSession<ChildStdin>,
    /// The process.
    pub(crate) child: Child,
    /// Everything it printed that was matched (and, after [`Scripted::quit`], all of it).
    pub(crate) transcript: String,
    /// Its standard error (logs, fatal errors), for failure messages.
    pub(crate) stderr: PathBuf,
}

impl Scripted {
    /// Starts the client as `user` (registering first if asked) and gives it the password.
    pub(crate) fn spawn(
        address: &str,
        ca: &Path,
        home: &Path,
        user: &str,
        register: bool,
    ) -> Scripted {
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

    pub(crate) fn send_line(&mut self, line: &str) {
        self.session.send_line(line).expect("write to the client");
    }

    /// Waits until `needle` is printed.
    pub(crate) fn expect(&mut self, needle: &str) {
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
    pub(crate) fn quit(mut self) -> String {
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
pub(crate) fn reveals(payload: &str, text: &str) -> bool {
    payload.contains(text)
        || payload
            .split(' ')
            .filter_map(|token| BASE64.decode(token).ok())
            .any(|bytes| contains(&bytes, text))
}

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
    alice.expect(&format!("(you) -> bob {}: {TO_BOB}", first_use_label()));

    bob.type_text("alice", TO_ALICE);
    alice.expect(&format!("bob -> (you) {}: {TO_ALICE}", first_use_label()));

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
