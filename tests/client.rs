//! The client binary driven as scripts drive it (standard input and output are pipes, so
//! it reads plain lines), against a real server: its connection upkeep (a user who only
//! reads a busy room is not cut off by the idle timeout), its pacing to the server's
//! limits, script mode finishing its work before it exits, and one identity per account
//! however the server is spelled.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{ok, test_limits, TestServer, PASSWORD};
use securechat::protocol::ServerLine;
use securechat::server::Limits;

#[test]
fn a_client_that_only_reads_a_busy_room_stays_connected() {
    let server = TestServer::with_limits(Limits {
        idle_timeout: Duration::from_secs(2),
        ..test_limits()
    });
    server.connect().register_ok("reader");
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_client"))
        .arg("--server")
        .arg(server.address())
        .arg("--ca")
        .arg(&server.ca)
        .arg("--home")
        .arg(home.path())
        .args(["--user", "reader", "--password-stdin", "--keepalive", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the client");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{PASSWORD}").unwrap();
    let printed = Arc::new(Mutex::new(String::new()));
    {
        let printed = printed.clone();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut all = printed.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
    }
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + common::WAIT;
        while !printed.lock().unwrap().contains(needle) {
            assert!(Instant::now() < deadline, "never printed {needle:?}");
            thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("logged in as reader");

    // Room lines every 300 ms for three idle timeouts: the client receives all the time but
    // sends nothing of its own, so only its keep-alive pings keep it connected.
    let mut talker = server.login("talker");
    for i in 0..20 {
        talker.send(&format!("SAY line {i}"));
        thread::sleep(Duration::from_millis(300));
    }
    wait_for("talker [room]: line 19");
    assert_eq!(talker.request("LIST"), ok("LIST", "2 reader talker"));
    assert!(
        !printed.lock().unwrap().contains("disconnected"),
        "{}",
        printed.lock().unwrap()
    );
    writeln!(stdin, "/quit").unwrap();
    assert!(child.wait().unwrap().success());
}

/// Label of a private message under a key pinned on first use, as the client prints it.
const E2E_LABEL: &str = "[private, e2e, first use, not verified]";

/// The client binary with piped standard input and output, logged in with
/// `--user NAME --password-stdin`; everything it prints is collected.
struct Piped {
    /// Which client this is, for failure messages.
    name: String,
    /// The process.
    child: Child,
    /// Its standard input; `None` once closed.
    stdin: Option<ChildStdin>,
    /// Everything printed so far, standard output and error together.
    printed: Arc<Mutex<String>>,
}

impl Piped {
    /// Starts the client for `user` at `server` (any spelling of the test server's
    /// address), keys in `home`; `register` first if asked.
    fn start(name: &str, server: &TestServer, address: &str, home: &Path, register: bool) -> Piped {
        Piped::start_with(name, server, address, home, register, &[])
    }

    /// [`Piped::start`] with more arguments.
    fn start_with(
        name: &str,
        server: &TestServer,
        address: &str,
        home: &Path,
        register: bool,
        more: &[&str],
    ) -> Piped {
        let mut command = Command::new(env!("CARGO_BIN_EXE_client"));
        command
            .arg("--server")
            .arg(address)
            .arg("--ca")
            .arg(&server.ca)
            .arg("--home")
            .arg(home)
            .args(["--user", name, "--password-stdin"]);
        if register {
            command.arg("--register");
        }
        let mut child = command
            .args(more)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the client");
        let printed = Arc::new(Mutex::new(String::new()));
        for output in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let printed = printed.clone();
            thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    let mut all = printed.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        let mut client = Piped {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            printed,
        };
        client.send(PASSWORD);
        client.wait_for(&format!("logged in as {name}"));
        client
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("standard input still open");
        writeln!(stdin, "{line}").expect("write to the client");
    }

    fn printed(&self) -> String {
        self.printed.lock().unwrap().clone()
    }

    /// Polls `done` until it gives a value, failing with `what` after `limit`.
    fn poll<T>(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&mut Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(value) = done(self) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{} {what}:\n{}",
                self.name,
                self.printed()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for(&mut self, needle: &str) {
        self.poll(
            common::WAIT,
            &format!("never printed {needle:?}"),
            |client| client.printed().contains(needle).then_some(()),
        );
    }

    /// Closes standard input (the end of the script) and waits for the exit (script mode
    /// may wait 30 s for a key exchange).
    fn finish(&mut self) -> ExitStatus {
        drop(self.stdin.take());
        let status = self.poll(Duration::from_secs(45), "did not exit", |client| {
            client.child.try_wait().expect("wait for the client")
        });
        // Let the output threads collect the last lines.
        thread::sleep(Duration::from_millis(100));
        status
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `user`'s first key exchange with `client` is a message request: answers it, as a person
/// would (nothing is answered without the user's consent).
fn accept_request(client: &mut Piped, user: &str) {
    client.wait_for(&format!("message request: {user} asks"));
    client.send(&format!("/accept {user}"));
}

#[test]
fn a_script_delivers_its_private_message_before_it_exits() {
    let server = TestServer::start();
    let (alice_home, bob_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut bob = Piped::start("bob", &server, &server.address(), bob_home.path(), true);
    let mut alice = Piped::start("alice", &server, &server.address(), alice_home.path(), true);
    // The last line of the script: the key exchange has not even started yet.
    alice.send("/msg bob sent before the exit");
    accept_request(&mut bob, "alice");
    assert!(alice.finish().success(), "{}", alice.printed());
    bob.wait_for(&format!("alice -> (you) {E2E_LABEL}: sent before the exit"));
    assert!(alice
        .printed()
        .contains(&format!("(you) -> bob {E2E_LABEL}: sent before the exit")));
    assert!(bob.finish().success(), "{}", bob.printed());
}

#[test]
fn a_script_whose_private_message_cannot_be_sent_fails() {
    let server = TestServer::start();
    server.connect().register_ok("bob"); // registered, never online, no key published
    let home = tempfile::tempdir().unwrap();
    let mut alice = Piped::start("alice", &server, &server.address(), home.path(), true);
    alice.send("/msg bob nobody will read this");
    let status = alice.finish();
    assert!(
        !status.success(),
        "exit status {status}:\n{}",
        alice.printed()
    );
    let printed = alice.printed();
    assert!(
        printed.contains("1 message(s) you typed were NOT sent"),
        "{printed}"
    );
}

#[test]
fn a_200_line_paste_is_paced_to_the_servers_limits_and_all_delivered_in_order() {
    // The server's default rate limits (20 frames a second, bursts of 100), announced in
    // its greeting: 200 lines at once would see half refused without pacing.
    let server = TestServer::with_limits(Limits {
        message_rate: 20,
        message_burst: 100,
        ..test_limits()
    });
    let mut watcher = server.login("watcher");
    let home = tempfile::tempdir().unwrap();
    let mut alice = Piped::start("alice", &server, &server.address(), home.path(), true);
    let mut script = String::new();
    for i in 0..200 {
        script.push_str(&format!("pasted line {i}\n"));
    }
    alice
        .stdin
        .as_mut()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    for i in 0..200 {
        let line = watcher.recv_until(|line| matches!(line, ServerLine::Room { .. }));
        assert_eq!(
            line,
            ServerLine::Room {
                user: "alice".into(),
                text: format!("pasted line {i}")
            }
        );
    }
    assert!(alice.finish().success(), "{}", alice.printed());
    let printed = alice.printed();
    assert!(!printed.contains("rate-limited"), "{printed}");
    assert!(
        printed.contains("sending at the server's limit of 20 per second"),
        "{printed}"
    );
    assert_eq!(printed.matches("(you) [room]: pasted line").count(), 200);
}

#[test]
fn a_line_longer_than_the_server_takes_is_refused_before_sending() {
    let server = TestServer::start();
    let mut watcher = server.login("watcher");
    let home = tempfile::tempdir().unwrap();
    let mut alice = Piped::start("alice", &server, &server.address(), home.path(), true);
    alice.send(&"x".repeat(20_000));
    alice.wait_for("the server takes lines of at most 16384 bytes");
    // Still connected: the next line goes through.
    alice.send("after the long one");
    assert_eq!(
        watcher.recv_until(|line| matches!(line, ServerLine::Room { .. })),
        ServerLine::Room {
            user: "alice".into(),
            text: "after the long one".into()
        }
    );
    let status = alice.finish();
    assert!(!status.success(), "the refused line was not sent: {status}");
}

#[test]
fn long_private_text_is_split_into_messages_that_fit() {
    let server = TestServer::start();
    let (alice_home, bob_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut bob = Piped::start("bob", &server, &server.address(), bob_home.path(), true);
    let mut alice = Piped::start("alice", &server, &server.address(), alice_home.path(), true);
    let text = "0123456789".repeat(2_000);
    alice.send(&format!("/msg bob {text}"));
    alice.wait_for("it goes as 3 private messages");
    accept_request(&mut bob, "alice");
    assert!(alice.finish().success(), "{}", alice.printed());
    bob.wait_for(&format!("alice -> (you) {E2E_LABEL}: {}", &text[16_000..]));
    let received: String = bob
        .printed()
        .lines()
        .filter_map(|line| line.split_once(&format!("alice -> (you) {E2E_LABEL}: ")))
        .map(|(_, part)| part.to_owned())
        .collect();
    assert_eq!(received, text);
    assert!(bob.finish().success());
}

#[test]
fn localhost_and_127_0_0_1_are_one_identity_and_the_peer_sees_no_key_change() {
    let server = TestServer::start();
    let port = server.address().rsplit_once(':').unwrap().1.to_owned();
    let (alice_home, bob_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut bob = Piped::start("bob", &server, &server.address(), bob_home.path(), true);

    let by_address = format!("127.0.0.1:{port}");
    let mut alice = Piped::start("alice", &server, &by_address, alice_home.path(), true);
    alice.send("/msg bob first, by address");
    accept_request(&mut bob, "alice");
    assert!(alice.finish().success(), "{}", alice.printed());
    assert!(alice.printed().contains("created your identity key"));
    bob.wait_for("first, by address");

    let by_name = format!("localhost:{port}");
    let mut alice = Piped::start("alice", &server, &by_name, alice_home.path(), false);
    alice.send("/msg bob second, by name");
    assert!(alice.finish().success(), "{}", alice.printed());
    bob.wait_for("second, by name");
    assert!(
        !alice.printed().contains("created your identity key"),
        "a second identity:\n{}",
        alice.printed()
    );
    assert!(
        !bob.printed().contains("IDENTITY KEY HAS CHANGED"),
        "{}",
        bob.printed()
    );
    // One key directory for both spellings.
    let servers: Vec<_> = std::fs::read_dir(alice_home.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(servers, [format!("localhost_{port}")]);
    assert!(bob.finish().success());
}

#[test]
fn a_session_replaced_by_another_login_is_not_reconnected() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    let mut alice = Piped::start("alice", &server, &server.address(), home.path(), true);
    // The same account logs in elsewhere: the server ends this session with BYE replaced.
    let mut elsewhere = server.connect();
    elsewhere.login_ok("alice");
    alice.wait_for("Not reconnecting");
    let status = alice.finish();
    assert!(status.success(), "{status}:\n{}", alice.printed());
    assert!(
        !alice.printed().contains("reconnected"),
        "{}",
        alice.printed()
    );
    // The other session was not pushed out in turn.
    assert_eq!(elsewhere.request("LIST"), ok("LIST", "1 alice"));
}

/// A TCP relay to a server whose existing connections can be made to go silent, as a
/// connection does when a laptop changes networks: the sockets stay open, nothing passes.
struct Relay {
    /// Where clients connect.
    port: u16,
    /// Connections numbered below this pass nothing any more.
    frozen_below: Arc<AtomicUsize>,
    /// The number the next connection gets.
    next: Arc<AtomicUsize>,
}

impl Relay {
    fn start(target_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen_below = Arc::new(AtomicUsize::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let (frozen, counter) = (frozen_below.clone(), next.clone());
        thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let server = TcpStream::connect(("127.0.0.1", target_port)).unwrap();
                let directions = [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ];
                for (mut from, mut to) in directions {
                    let frozen = frozen.clone();
                    thread::spawn(move || {
                        let mut buffer = [0; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buffer) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if id < frozen.load(Ordering::SeqCst) {
                                continue; // silent: what arrives is dropped
                            }
                            if to.write_all(&buffer[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Relay {
            port,
            frozen_below,
            next,
        }
    }

    /// Every connection made so far goes silent; new ones pass.
    fn silence_existing(&self) {
        self.frozen_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

#[test]
fn a_connection_that_goes_silent_is_noticed_and_replaced() {
    let server = TestServer::start();
    let port: u16 = server
        .address()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let relay = Relay::start(port);
    let mut watcher = server.login("watcher");
    let home = tempfile::tempdir().unwrap();
    let mut alice = Piped::start_with(
        "alice",
        &server,
        &format!("localhost:{}", relay.port),
        home.path(),
        true,
        &["--keepalive", "1"],
    );
    relay.silence_existing();
    // No socket error: only the unanswered keep-alive shows the connection is gone.
    alice.wait_for("disconnected: no answer from the server for 3 s");
    alice.wait_for("reconnected and logged in again as alice");
    alice.send("back after the silence");
    assert_eq!(
        watcher.recv_until(|line| matches!(line, ServerLine::Room { .. })),
        ServerLine::Room {
            user: "alice".into(),
            text: "back after the silence".into()
        }
    );
    assert!(alice.finish().success(), "{}", alice.printed());
}
