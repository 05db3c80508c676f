//! What the screen says is the security (issue 12): the real `client` binary in a
//! pseudo-terminal 80 columns wide, its output read byte for byte and through a terminal
//! emulator (the `vt100` crate), against a real server or a fake one — a small TLS server in
//! the test that speaks the protocol the way a malicious server would.
//!
//! Each test names the defence it checks; each fails with that defence taken out.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rexpect::session::PtySession;

use common::{test_limits, TestClient, TestServer, PASSWORD};
use securechat::client::screen::CONTINUATION;
use securechat::e2e::{
    Group, IdentityKey, IdentityPublicKey, Initiator, Payload, PinStore, Session,
};
use securechat::protocol::{ServerLine, PROTOCOL_VERSION};
use securechat::server::Limits;
use securechat::tls;

/// Longest wait for anything the client should print.
const TIMEOUT: Duration = Duration::from_secs(20);

/// How often the terminal is polled.
const POLL: Duration = Duration::from_millis(20);

/// The emulated terminal: as wide as the usual default, tall enough that nothing scrolls
/// away before it is read.
const COLUMNS: u16 = 80;
const ROWS: u16 = 500;

/// Printed by the shell once the terminal is set up, just before the client starts.
const READY: &str = "terminal ready";

/// The client in a pseudo-terminal, with everything it wrote.
struct Client {
    /// The client process and its terminal.
    session: PtySession,
    /// Every byte the client wrote to the terminal.
    raw: Vec<u8>,
    /// The screen those bytes draw.
    screen: vt100::Parser,
    /// How far into `raw` [`Client::expect`] has matched.
    matched: usize,
}

impl Client {
    /// Starts the client with `args`, in `cwd` if given, in a terminal [`COLUMNS`] wide
    /// that does not echo (so only what the client prints is on it). `TERM=dumb` keeps any
    /// line editor in plain-line mode.
    fn spawn(args: &[String], cwd: Option<&Path>) -> Client {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                r#"stty -echo cols {COLUMNS} rows 50 && echo "{READY}" && exec "$0" "$@""#
            ))
            .arg(env!("CARGO_BIN_EXE_client"))
            .args(args)
            .env("TERM", "dumb")
            .env_remove("NO_COLOR");
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let session = rexpect::session::spawn_command(command, Some(TIMEOUT.as_millis() as u64))
            .expect("start the client in a pseudo-terminal");
        let mut client = Client {
            session,
            raw: Vec::new(),
            screen: vt100::Parser::new(ROWS, COLUMNS, 0),
            matched: 0,
        };
        // Nothing is typed before the terminal stopped echoing.
        client.expect(READY);
        client
    }

    /// The client logged in as `user` through `--user --password-stdin`.
    fn login(address: &str, ca: &Path, home: &Path, user: &str, register: bool) -> Client {
        let mut args = strings(&["--server", address, "--ca"]);
        args.push(ca.display().to_string());
        args.push("--home".into());
        args.push(home.display().to_string());
        args.extend(strings(&["--user", user, "--password-stdin"]));
        if register {
            args.push("--register".into());
        }
        let mut client = Client::spawn(&args, None);
        client.type_line(PASSWORD);
        client.expect(&format!("logged in as {user}."));
        client
    }

    /// Moves what the client wrote into `raw` and the emulated screen. rexpect hands out
    /// each byte as the `char` of the same value, so the bytes are exact.
    fn pull(&mut self) {
        let start = self.raw.len();
        while let Some(c) = self.session.try_read() {
            self.raw.push(u32::from(c) as u8);
        }
        self.screen.process(&self.raw[start..]);
    }

    /// Everything written so far as text, each wrapped line joined again (the continuation
    /// marks taken out), for matching whole messages.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw)
            .replace('\r', "")
            .replace(&format!("\n{CONTINUATION}"), "")
    }

    /// Waits until `needle` appears after what was matched before.
    fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.pull();
            let text = self.text();
            if let Some(at) = text.get(self.matched..).and_then(|rest| rest.find(needle)) {
                self.matched += at + needle.len();
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nothing like {needle:?} within {TIMEOUT:?}; the screen:\n{}",
                self.screen.screen().contents()
            );
            thread::sleep(POLL);
        }
    }

    fn type_line(&mut self, line: &str) {
        self.session.send_line(line).expect("type into the client");
    }

    /// The rows of the emulated screen that hold something.
    fn rows(&mut self) -> Vec<String> {
        self.pull();
        self.screen
            .screen()
            .rows(0, COLUMNS)
            .filter(|row| !row.trim().is_empty())
            .collect()
    }

    /// Waits for the client to exit; its exit status.
    fn exit_status(&mut self) -> Option<i32> {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            self.pull();
            if let Some(rexpect::process::WaitStatus::Exited(_, code)) =
                self.session.process_mut().status()
            {
                // What it wrote last may still be on its way through the terminal.
                thread::sleep(Duration::from_millis(300));
                self.pull();
                return Some(code);
            }
            thread::sleep(POLL);
        }
        None
    }

    /// Asserts that no byte the client wrote could control the terminal or hide or reorder
    /// text: no ESC, no BEL, no C1 control (as UTF-8, and the output must be UTF-8, so no
    /// raw C1 byte either), no bidirectional override or isolate, no zero-width character.
    fn assert_no_terminal_controls(&mut self) {
        self.pull();
        let text = std::str::from_utf8(&self.raw).expect("the client writes UTF-8 only");
        let controls: Vec<(usize, char)> = text
            .char_indices()
            .filter(|(_, c)| {
                matches!(
                    c,
                    '\u{1b}'
                        | '\u{7}'
                        | '\u{80}'..='\u{9f}'
                        | '\u{200b}'..='\u{200f}'
                        | '\u{202a}'..='\u{202e}'
                        | '\u{2066}'..='\u{2069}'
                )
            })
            .collect();
        assert!(
            controls.is_empty(),
            "control characters reached the terminal at {controls:?}:\n{text}"
        );
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.session.process_mut().exit();
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Whether a screen row begins like a line of the client's own making: a time stamp
/// followed by `*` (status), `!!!` (warning) or `(you)`, or a private message.
fn starts_like_a_genuine_event(row: &str) -> bool {
    let Some(rest) = row
        .strip_prefix('[')
        .and_then(|r| r.get(5..))
        .and_then(|r| r.strip_prefix("] "))
    else {
        return false;
    };
    rest.starts_with('*')
        || rest.starts_with("!!!")
        || rest.starts_with("(you)")
        || rest
            .split_once(' ')
            .is_some_and(|(_, after_name)| after_name.starts_with("-> (you)"))
}

// ----------------------------------------------------------------------------------------
// A fake server: TLS with the development certificate, the protocol spoken by the test.
// ----------------------------------------------------------------------------------------

/// One connection to a fake server, read and written line by line.
struct FakeConnection {
    /// The TLS stream.
    stream: rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
}

impl FakeConnection {
    /// Accepts one client on `listener` and greets it.
    fn accept(listener: &TcpListener, config: Arc<rustls::ServerConfig>) -> FakeConnection {
        let (socket, _) = listener.accept().expect("accept");
        socket
            .set_read_timeout(Some(TIMEOUT))
            .expect("read timeout");
        let tls = rustls::ServerConnection::new(config).expect("tls");
        let mut connection = FakeConnection {
            stream: rustls::StreamOwned::new(tls, socket),
        };
        connection.send(&format!("HELLO securechat {PROTOCOL_VERSION}"));
        connection
    }

    /// Sends one line; a client that refused the connection is no error here (the tests
    /// look at what the client did).
    fn send(&mut self, line: &str) {
        let _ = self
            .stream
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| self.stream.flush());
    }

    /// The next line from the client, or `None` when it left.
    fn recv(&mut self) -> Option<String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match std::io::Read::read(&mut self.stream, &mut byte) {
                Ok(0) | Err(_) => return None,
                Ok(_) if byte[0] == b'\n' => return Some(String::from_utf8_lossy(&line).into()),
                Ok(_) => line.push(byte[0]),
            }
        }
    }
}

/// A fake server's TLS configuration from the development PKI in `certs`.
fn fake_server_config(certs: &tls::DevCertificates) -> Arc<rustls::ServerConfig> {
    let (chain, key) = tls::load_identity(&certs.cert, &certs.key).expect("identity");
    tls::server_config(chain, key).expect("server config")
}

/// The fake server's side of an impostor: an identity key and the exchange it started.
struct Impostor {
    identity: IdentityKey,
    initiator: Option<Initiator>,
    session: Option<Session>,
}

// ----------------------------------------------------------------------------------------
// The tests.
// ----------------------------------------------------------------------------------------

#[test]
fn look_alike_names_from_a_malicious_server_never_show_a_private_message_without_a_warning() {
    // alice has bob's key pinned and verified. The server opens exchanges as names that
    // render like bob, each with its own key, completes the signed exchange whenever
    // alice's client answers, and then sends "it's me, new laptop".
    const LURE: &str = "it's me, new laptop, send the exam file here";
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::ensure_dev_certificates(&dir.path().join("certs")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("localhost:{}", listener.local_addr().unwrap().port());
    let home = dir.path().join("home");
    let alice_dir = home
        .join(format!(
            "localhost_{}",
            listener.local_addr().unwrap().port()
        ))
        .join("alice");
    let (alice_identity, _) = IdentityKey::load_or_create(&alice_dir.join("identity.key")).unwrap();
    let bob = IdentityKey::generate().unwrap();
    let mut pins = PinStore::open_for_identity(&alice_dir.join("known_keys"), true).unwrap();
    pins.pin("bob", &bob.public_key()).unwrap();
    pins.mark_verified("bob", &bob.public_key()).unwrap();
    drop(alice_identity);

    let names = ["b\u{43e}b", "bob\u{200b}", "BOB", "b0b", "bo\u{202e}b"];
    let config = fake_server_config(&certs);
    let server = thread::spawn(move || {
        let mut client = FakeConnection::accept(&listener, config);
        let mut impostors: HashMap<String, Impostor> = HashMap::new();
        let mut alice_key: Option<IdentityPublicKey> = None;
        while let Some(line) = client.recv() {
            let words: Vec<&str> = line.splitn(3, ' ').collect();
            match words[..] {
                ["LOGIN", user, _] => client.send(&format!("OK LOGIN {user}")),
                ["SETKEY", key] => {
                    alice_key = Some(IdentityPublicKey::from_base64(key).unwrap());
                    client.send("OK SETKEY");
                    for name in names {
                        let (initiator, init) =
                            Initiator::start(name, "alice", Group::Ffdhe2048).unwrap();
                        client.send(&format!("FROM {name} {}", Payload::Init(init)));
                        impostors.insert(
                            name.to_owned(),
                            Impostor {
                                identity: IdentityKey::generate().unwrap(),
                                initiator: Some(initiator),
                                session: None,
                            },
                        );
                    }
                    client.send("ROOM carol marker after the look-alikes");
                }
                ["GETKEY", name] => match impostors.get(name) {
                    Some(impostor) => client.send(&format!(
                        "OK GETKEY {name} {}",
                        impostor.identity.public_key().to_base64()
                    )),
                    None => client.send(&format!(
                        "OK GETKEY {name} {}",
                        bob.public_key().to_base64()
                    )),
                },
                ["MSG", name, payload] => {
                    let Some(impostor) = impostors.get_mut(name) else {
                        continue;
                    };
                    let Ok(Payload::Reply(reply)) = Payload::parse(payload) else {
                        continue;
                    };
                    let Some(initiator) = impostor.initiator.take() else {
                        continue;
                    };
                    let Ok((mut session, confirm)) =
                        initiator.finish(&reply, &impostor.identity, alice_key.as_ref().unwrap())
                    else {
                        continue;
                    };
                    client.send(&format!("FROM {name} {}", Payload::Confirm(confirm)));
                    let sealed = session.seal(LURE).unwrap();
                    client.send(&format!("FROM {name} {}", Payload::Message(sealed)));
                    impostor.session = Some(session);
                }
                ["PING", ..] => client.send("PONG"),
                ["QUIT"] => break,
                _ => {}
            }
        }
    });

    let mut alice = Client::login(&address, &certs.ca, &home, "alice", false);
    alice.expect("carol [room]: marker after the look-alikes");
    // The user says yes to everything the client lets them: the attack must still fail.
    for name in names {
        alice.type_line(&format!("/accept {name}"));
    }
    // Typed ahead: processed before or just after the warning below appears, it is no
    // answer to it (`CONSENT_DELAY`).
    alice.type_line("/accept b0b");
    alice.expect("b0b is NOT bob");
    alice.type_line("//done");
    thread::sleep(Duration::from_millis(500));
    alice.type_line("/quit");
    let _ = alice.exit_status();
    let _ = server.join();

    let text = alice.text();
    assert!(
        !text.contains(LURE),
        "a look-alike's message was shown:\n{text}"
    );
    for row in alice.rows() {
        assert!(!row.contains("-> (you)"), "a private-message row: {row:?}");
    }
    assert_eq!(
        text.matches("breaks the user-name rule").count(),
        4,
        "each non-canonical name is refused as a protocol error:\n{text}"
    );
    let pins = PinStore::open(&alice_dir.join("known_keys")).unwrap();
    assert!(
        pins.pinned_key("b0b").is_none(),
        "nothing pinned without consent"
    );
    alice.assert_no_terminal_controls();
}

#[test]
fn users_of_other_servers_show_in_full_and_non_canonical_addresses_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::ensure_dev_certificates(&dir.path().join("certs")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("localhost:{}", listener.local_addr().unwrap().port());
    let home = dir.path().join("home");
    let config = fake_server_config(&certs);
    let server = thread::spawn(move || {
        let mut client = FakeConnection::accept(&listener, config);
        while let Some(line) = client.recv() {
            let words: Vec<&str> = line.splitn(3, ' ').collect();
            match words[..] {
                ["LOGIN", user, _] => client.send(&format!("OK LOGIN {user}")),
                ["SETKEY", _] => {
                    client.send("OK SETKEY");
                    client.send("ROOM alice@a.test hello from a.test");
                    // Not canonical: one user, one spelling; an IP is no server name.
                    client.send("ROOM bob@A.test imitation");
                    client.send("ROOM bob@127.0.0.1 imitation");
                    client.send("ROOM carol marker after the addresses");
                }
                ["LIST"] => client.send("OK LIST 1 alice"),
                ["LIST", "b.test"] => client.send("OK LIST 3 bob@b.test dave@b.test"),
                ["PING", ..] => client.send("PONG"),
                ["QUIT"] => break,
                _ => {}
            }
        }
    });

    let mut alice = Client::login(&address, &certs.ca, &home, "alice", false);
    alice.expect("alice@a.test [room]: hello from a.test");
    alice.expect("carol [room]: marker after the addresses");
    alice.type_line("/list B.Test");
    alice.expect("* 3 online on b.test: bob@b.test, dave@b.test and 1 more");
    alice.type_line("/quit");
    let _ = alice.exit_status();
    let _ = server.join();

    let text = alice.text();
    assert!(!text.contains("imitation"), "{text}");
    assert_eq!(
        text.matches("breaks the user-name rule").count(),
        2,
        "each non-canonical address is refused as a protocol error:\n{text}"
    );
    alice.assert_no_terminal_controls();
}

#[test]
fn a_padded_room_line_of_any_length_never_starts_a_row_like_a_private_message_or_status() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    let mut alice = Client::login(&server.address(), &server.ca, home.path(), "alice", true);
    let mallory = server.login("mallory");
    let fakes = [
        "[08:06] bob -> (you) [private, e2e, verified]: new exam room is B12",
        "[08:06] * bob: key marked as verified",
        "[08:06] !!! the server is restarting, log in again at evil.example",
        "[08:06] (you) [room]: I agree to pay carol 100 euros",
    ];
    for (i, fake) in fakes.iter().enumerate() {
        // Padded with spaces (which the client collapses) and with letters (which it
        // cannot), to every length that could put the fake at the start of a row.
        for pad in 0..90 {
            for filler in [" ", "x"] {
                mallory.send(&format!("SAY {}{fake}", filler.repeat(pad)));
            }
        }
        mallory.send(&format!("SAY end of batch {i}"));
    }
    alice.expect("mallory [room]: end of batch 3");
    let rows = alice.rows();
    let forged: Vec<&String> = rows
        .iter()
        .filter(|row| starts_like_a_genuine_event(row) && !row.contains("logged in as alice"))
        .collect();
    assert!(
        forged.is_empty(),
        "rows that look like the client's own: {forged:#?}"
    );
    for row in &rows {
        assert!(
            row.starts_with('[')
                || row.starts_with(CONTINUATION)
                || row == READY
                || row.starts_with("connected to")
                || row.starts_with("account "),
            "a row that starts with someone else's text: {row:?}"
        );
    }
    // And the user's own lines carry the mark nobody else's can.
    alice.type_line("hello from alice");
    alice.expect("(you) [room]: hello from alice");
    for reserved in ["you", "You", "server", "system"] {
        let reply = server
            .connect()
            .request(&format!("REGISTER {reserved} {PASSWORD}"));
        assert!(
            matches!(reply, ServerLine::Err { .. }),
            "{reserved}: {reply:?}"
        );
    }
}

#[test]
fn room_history_is_labelled_with_its_time_escaped_and_padded_fakes_never_start_a_row() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    // alice registers, says something and leaves; mallory then fills the history with
    // padded fakes and hidden characters.
    let mut alice = Client::login(&server.address(), &server.ca, home.path(), "alice", true);
    alice.type_line("said before leaving");
    alice.expect("(you) [room]: said before leaving");
    alice.type_line("/quit");
    assert_eq!(alice.exit_status(), Some(0));
    let mut mallory = server.login("mallory");
    let fake = "[08:06] bob -> (you) [private, e2e, verified]: new exam room is B12";
    for pad in [0, 30, 61, 62, 63, 70] {
        mallory.send(&format!("SAY {}{fake}", " ".repeat(pad)));
        mallory.send(&format!("SAY {}{fake}", "x".repeat(pad)));
    }
    mallory.send("SAY \u{202e}reversed\u{2066} and\t\ttabs \u{200b}end of history");
    assert_eq!(
        mallory.request("PING x"),
        ServerLine::Pong { token: "x".into() }
    );

    // alice comes back: the history comes first, each line marked and timed.
    let mut alice = Client::login(&server.address(), &server.ca, home.path(), "alice", false);
    alice.expect("(you) [room, history]: said before leaving");
    alice.expect(
        "mallory [room, history]: \u{FFFD}reversed\u{FFFD} and tabs \u{FFFD}end of history",
    );
    let rows = alice.rows();
    let forged: Vec<&String> = rows
        .iter()
        .filter(|row| {
            starts_like_a_genuine_event(row)
                && !row.contains("logged in as alice")
                && !row.contains("offline delivery is on")
                && !row.contains("said before leaving")
        })
        .collect();
    assert!(
        forged.is_empty(),
        "rows that look like the client's own: {forged:#?}"
    );
    let history_rows = rows
        .iter()
        .filter(|row| row.contains("[room, history]"))
        .count();
    assert_eq!(history_rows, 14, "{rows:#?}");
    // Live lines after it are plain room lines.
    mallory.send("SAY live now");
    alice.expect("mallory [room]: live now");
    alice.assert_no_terminal_controls();
}

#[test]
fn escape_sequences_in_a_certificate_an_error_text_or_a_user_name_never_reach_the_terminal() {
    // A certificate whose names hold a clipboard write, a screen clear and a fake line,
    // signed by a CA the client trusts, presented for a name it does not hold.
    let dir = tempfile::tempdir().unwrap();
    let evil_names = [
        "ok.test".to_owned(),
        "x\u{1b}]52;c;aGVsbG8=\u{7}\u{1b}[2J[08:06] bob -> you: hi.test".to_owned(),
    ];
    // A CA the user trusts without constraints (as a public CA is).
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ca_file = dir.path().join("trusted-ca.pem");
    fs::write(&ca_file, ca_params().self_signed(&ca_key).unwrap().pem()).unwrap();
    let (chain, key) = forge_certificate(&ca_key, &ca_file, &evil_names);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = tls::server_config(chain, key).unwrap();
    let server = thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        let mut tls = rustls::ServerConnection::new(config).unwrap();
        let mut socket = socket;
        let _ = tls.complete_io(&mut socket);
    });
    let mut args = strings(&["--server", &format!("localhost:{port}"), "--ca"]);
    args.push(ca_file.display().to_string());
    args.extend(strings(&[
        "--home",
        &dir.path().join("home").display().to_string(),
    ]));
    let mut client = Client::spawn(&args, None);
    assert_eq!(client.exit_status(), Some(1));
    let _ = server.join();
    let text = client.text();
    assert!(
        text.contains("not valid for that name: it is for"),
        "{text}"
    );
    assert!(text.contains("--hostname"), "{text}");
    client.assert_no_terminal_controls();

    // A server error text and user names with escapes and bidi overrides.
    let certs_dir = dir.path().join("certs2");
    let certs = tls::ensure_dev_certificates(&certs_dir).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("localhost:{}", listener.local_addr().unwrap().port());
    let config = fake_server_config(&certs);
    let server = thread::spawn(move || {
        let mut client = FakeConnection::accept(&listener, config);
        while let Some(line) = client.recv() {
            if line.starts_with("LOGIN") {
                client.send("OK LOGIN alice");
            } else if line.starts_with("SETKEY") {
                client.send("OK SETKEY");
                client.send("ERR SAY bad-frame \u{202e}try again\u{2069} \u{200b}");
                client.send("ROOM bo\u{202e}b hello");
                client.send("ROOM carol \u{202e}reversed\u{2066} and\t\ttabs");
                client.send("ROOM carol marker");
            } else if line.starts_with("SAY") {
                // Frames with controls: the client refuses them as frames (and leaves).
                client.send("ERR SAY bad-frame \u{9b}2J\u{9d}52;c;aGk=\u{9c} try again");
                client.send("ROOM bob\u{1b}[2J hello");
                client.send("ROOM carol \u{9b}31m red\u{7}");
            } else if line.starts_with("QUIT") {
                break;
            }
        }
    });
    let mut alice = Client::login(
        &address,
        &certs.ca,
        &dir.path().join("home"),
        "alice",
        false,
    );
    alice.expect("carol [room]: marker");
    alice.type_line("next");
    alice.expect("disconnected: protocol error");
    let _ = alice.exit_status();
    let _ = server.join();
    alice.assert_no_terminal_controls();
}

/// A CA named like the development CA, without name constraints: with the development
/// CA's key it signs certificates that chain to the saved `ca.pem`.
fn ca_params() -> rcgen::CertificateParams {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "securechat development CA");
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "securechat");
    ca
}

/// The development CA's key in `certs` — what whoever holds `ca.key` has.
fn dev_ca_key(certs: &Path) -> rcgen::KeyPair {
    rcgen::KeyPair::from_pem(&fs::read_to_string(certs.join("ca.key")).unwrap()).unwrap()
}

/// A certificate for `names` signed with `ca_key`, chained to the CA certificate in
/// `ca_file`.
fn forge_certificate(
    ca_key: &rcgen::KeyPair,
    ca_file: &Path,
    names: &[String],
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let issuer = rcgen::Issuer::new(ca_params(), ca_key);
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = names
        .iter()
        .map(|name| rcgen::SanType::DnsName(name.clone().try_into().unwrap()))
        .collect();
    leaf.use_authority_key_identifier_extension = true;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let ca_der = tls::load_certificates(ca_file).unwrap();
    (
        vec![cert.der().clone(), ca_der[0].clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
}

#[test]
fn a_dev_ca_in_the_working_directory_does_not_authenticate_a_name_it_did_not_issue() {
    // The client is started where `certs/ca.pem` lies (no --ca): whoever holds `ca.key`
    // makes a certificate for another host. The client must refuse it before sending
    // anything, while the same CA still works for the names it was made for.
    let dir = tempfile::tempdir().unwrap();
    tls::ensure_dev_certificates(&dir.path().join("certs")).unwrap();
    let certs = dir.path().join("certs");
    for (name, accepted) in [("localhost", true), ("bank.example", false)] {
        let (chain, key) = forge_certificate(
            &dev_ca_key(&certs),
            &certs.join("ca.pem"),
            &[name.to_owned()],
        );
        let config = tls::server_config(chain, key).unwrap();
        let home = dir.path().join("home");
        let attempt = connect_by_name(name, config, None, &home, Some(dir.path()));
        if accepted {
            assert_eq!(attempt.status, Some(0), "{}", attempt.text);
        } else {
            assert_eq!(attempt.status, Some(1), "{}", attempt.text);
            assert!(
                attempt
                    .text
                    .contains("may certify only the names it was made for"),
                "{}",
                attempt.text
            );
            assert_eq!(
                attempt.first_line, None,
                "nothing may be sent to an impostor"
            );
        }
    }
}

/// How one connection attempt by name went.
struct Attempt {
    /// The client's exit status.
    status: Option<i32>,
    /// What it printed.
    text: String,
    /// The first line the server received, if any.
    first_line: Option<String>,
}

/// Starts a fake server with `config` on 127.0.0.1 and the client for `name` there
/// (`--resolve`), trusting `ca` if given, started in `cwd` if given; closes the client at
/// its menu if it gets that far.
fn connect_by_name(
    name: &str,
    config: Arc<rustls::ServerConfig>,
    ca: Option<&Path>,
    home: &Path,
    cwd: Option<&Path>,
) -> Attempt {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || FakeConnection::accept(&listener, config).recv());
    let mut args = strings(&["--server", &format!("{name}:{port}")]);
    args.extend(strings(&["--resolve", &format!("{name}:{port}:127.0.0.1")]));
    args.extend(strings(&["--home", &home.display().to_string()]));
    if let Some(ca) = ca {
        args.extend(strings(&["--ca", &ca.display().to_string()]));
    }
    let mut client = Client::spawn(&args, cwd);
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        client.pull();
        if client
            .text()
            .contains(&format!("connected to {name}:{port}"))
            && client.text().contains("> ")
        {
            client.type_line("c");
            break;
        }
        if client.text().contains("error: ") {
            break;
        }
        thread::sleep(POLL);
    }
    let status = client.exit_status();
    Attempt {
        status,
        text: client.text(),
        first_line: server.join().ok().flatten(),
    }
}

#[test]
fn a_server_started_with_hostname_is_reached_by_that_name_and_a_wrong_name_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let certs =
        tls::ensure_dev_certificates_for(&dir.path().join("certs"), &["other.test".to_owned()])
            .unwrap();
    let home = dir.path().join("home");
    let reached = connect_by_name(
        "other.test",
        fake_server_config(&certs),
        Some(&certs.ca),
        &home,
        None,
    );
    assert_eq!(reached.status, Some(0), "{}", reached.text);
    let wrong = connect_by_name(
        "wrong.test",
        fake_server_config(&certs),
        Some(&certs.ca),
        &home,
        None,
    );
    assert_eq!(wrong.status, Some(1), "{}", wrong.text);
    assert!(
        wrong.text.contains("it is for localhost, 127.0.0.1, ")
            && wrong
                .text
                .contains(", other.test. Reach the server by one of those names")
            && wrong.text.contains("restart the server with --hostname"),
        "{}",
        wrong.text
    );
}

#[test]
fn a_command_after_leading_whitespace_or_a_mistyped_one_never_reaches_the_room() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    let mut bob = server.login("bob");
    let mut alice = Client::login(&server.address(), &server.ca, home.path(), "alice", true);
    for line in [
        " /msg bob the exam password is 1234",
        "\t/msg bob the exam password is 1234",
        "/mgs bob the exam password is 1234",
        "/ msg bob the exam password is 1234",
    ] {
        alice.type_line(line);
    }
    alice.expect("not sent: /mgs is not a command");
    alice.expect("looks like a command with a space after the slash");
    alice.type_line("//shrug");
    let marker =
        bob.recv_until(|line| matches!(line, ServerLine::Room { text, .. } if text == "/shrug"));
    assert!(matches!(marker, ServerLine::Room { user, .. } if user == "alice"));
    // Everything before the marker was seen by recv_until; check the room never had it by
    // asking again for any room line that holds the secret: none may follow either.
    bob.send("LIST");
    let mut rest = Vec::new();
    loop {
        let line = bob.recv();
        if matches!(
            &line,
            ServerLine::Ok {
                command: securechat::protocol::Command::List,
                ..
            }
        ) {
            break;
        }
        rest.push(line);
    }
    let text = alice.text();
    assert!(!text.contains("(you) [room]: /msg"), "{text}");
    assert!(!text.contains("(you) [room]: /mgs"), "{text}");
    assert!(
        !rest
            .iter()
            .any(|line| matches!(line, ServerLine::Room { text, .. } if text.contains("password"))),
        "{rest:?}"
    );
}

#[test]
fn keys_below_a_directory_others_can_write_or_another_user_owns_are_refused() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let foreign = dir.path().join("foreign");
    fs::create_dir(&foreign).unwrap();
    fs::set_permissions(&foreign, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&foreign, Some(4242), Some(4242)).unwrap();
    for (user, home, problem) in [
        (
            "alice",
            shared.join("keys"),
            "can be written by other users (mode 777)",
        ),
        (
            "bob",
            foreign.join("keys"),
            "is owned by another user (uid 4242)",
        ),
    ] {
        let mut args = strings(&["--server", &server.address(), "--ca"]);
        args.push(server.ca.display().to_string());
        args.extend(strings(&[
            "--home",
            &home.display().to_string(),
            "--user",
            user,
            "--password-stdin",
            "--register",
        ]));
        let mut client = Client::spawn(&args, None);
        client.type_line(PASSWORD);
        assert_eq!(client.exit_status(), Some(1));
        let text = client.text();
        assert!(
            text.contains("refusing to use keys below") && text.contains(problem),
            "{text}"
        );
        assert!(!user_dir(&home, &server, user).join("identity.key").exists());
    }
}

/// Where the user's own directory for `user` on `server` lies under `home`.
fn user_dir(home: &Path, server: &TestServer, user: &str) -> PathBuf {
    home.join(format!("localhost_{}", server.addr.port()))
        .join(user)
}

#[test]
fn four_accounts_flooding_key_exchanges_neither_mute_the_user_nor_get_pinned() {
    // The server's default frame rate limit is on: answering strangers' exchanges would
    // come out of the user's own allowance.
    let server = TestServer::with_limits(Limits {
        message_rate: Limits::default().message_rate,
        message_burst: Limits::default().message_burst,
        ..test_limits()
    });
    let home = tempfile::tempdir().unwrap();
    let mut alice = Client::login(&server.address(), &server.ca, home.path(), "alice", true);
    let mut observer = server.login("observer");
    // Ordinary accounts with published keys, each with a DH-INIT of its own (a client
    // that answered strangers would pin their keys and reply).
    let flooders: Vec<(TestClient, String)> = (0..4)
        .map(|i| {
            let name = format!("flooder{i}");
            let mut flooder = server.login(&name);
            let key = IdentityKey::generate().unwrap().public_key().to_base64();
            assert!(matches!(
                flooder.request(&format!("SETKEY {key}")),
                ServerLine::Ok { .. }
            ));
            let (_, init) = Initiator::start(&name, "alice", Group::Ffdhe3072).unwrap();
            (flooder, Payload::Init(init).to_string())
        })
        .collect();
    let flood = thread::spawn(move || {
        // 19 DH-INITs per second from each of four accounts, for as long as alice types.
        let start = Instant::now();
        let mut sent = 0u32;
        while start.elapsed() < Duration::from_secs(6) {
            for (flooder, init) in &flooders {
                flooder.send(&format!("MSG alice {init}"));
            }
            sent += 1;
            thread::sleep(Duration::from_millis(1000 / 19));
        }
        (flooders, sent)
    });
    thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        alice.type_line(&format!("own line {i}"));
        thread::sleep(Duration::from_millis(200));
    }
    alice.expect("(you) [room]: own line 19");
    let (_flooders, sent) = flood.join().unwrap();
    assert!(sent > 50, "the flood ran");
    let mut delivered = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && delivered < 20 {
        if let Ok(Some(ServerLine::Room { user, .. })) =
            observer.reader.recv_timeout(Duration::from_millis(200))
        {
            if user == "alice" {
                delivered += 1;
            }
        }
    }
    assert!(
        delivered >= 18,
        "alice's own lines delivered: {delivered}/20"
    );
    let pins = PinStore::open(&user_dir(home.path(), &server, "alice").join("known_keys")).unwrap();
    for i in 0..4 {
        assert!(
            pins.pinned_key(&format!("flooder{i}")).is_none(),
            "flooder{i} pinned without consent"
        );
    }
    let text = alice.text();
    assert_eq!(
        text.matches("message request: flooder0").count(),
        1,
        "shown once:\n{text}"
    );
}
