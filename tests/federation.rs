//! Federation: three real server binaries on one machine (`a.test`, `b.test`, `c.test`),
//! linked over mutually authenticated TLS with a development federation CA, and a rogue
//! peer that speaks the server-to-server protocol by hand.
//!
//! What is checked: messages and receipts cross every pair both ways, room lines and
//! presence span the federation with full addresses, queued messages survive `kill -9` of
//! either server and arrive once the peer returns (none lost, none duplicated), and every
//! spoofing path a peer or a stranger could try is refused.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, server_args, ServerProcess, TestClient};
use securechat::protocol::name::ServerName;
use securechat::protocol::{DeliveryState, Refusal, ServerLine};
use securechat::tls;

/// One server of the test federation.
struct Node {
    name: String,
    port: u16,
    federation_port: u16,
    dir: PathBuf,
    process: Option<ServerProcess>,
}

/// Three (or more) linked servers sharing one certificates directory.
struct Federation {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

fn certs(dir: &Path) -> PathBuf {
    dir.join("certs")
}

/// Where the development federation CA and its certificates are.
fn federation_dir(dir: &Path) -> PathBuf {
    certs(dir).join("federation")
}

impl Federation {
    /// Issues a federation certificate for each name with the server binary itself, then
    /// starts one server per name, each listing the others in its peers file.
    fn start(names: &[&str]) -> Federation {
        Federation::start_with(names, &[])
    }

    fn start_with(names: &[&str], extra: &[&str]) -> Federation {
        let dir = tempfile::tempdir().expect("temp dir");
        // One command for the whole test federation, as the README shows.
        let status = Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["--certs-dir", &certs(dir.path()).display().to_string()])
            .arg("--issue-federation-cert")
            .args(names)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run the server");
        assert!(
            status.success(),
            "issuing federation certificates for {names:?}"
        );
        let nodes: Vec<Node> = names
            .iter()
            .map(|name| Node {
                name: name.to_string(),
                port: free_port(),
                federation_port: free_port(),
                dir: dir.path().join(name),
                process: None,
            })
            .collect();
        let ca = federation_dir(dir.path()).join(tls::federation::FEDERATION_CA_CERT);
        for i in 0..nodes.len() {
            std::fs::create_dir_all(&nodes[i].dir).unwrap();
            let peers: String = nodes
                .iter()
                .filter(|other| other.name != nodes[i].name)
                .map(|other| {
                    format!(
                        "{} 127.0.0.1:{} {}\n",
                        other.name,
                        other.federation_port,
                        ca.display()
                    )
                })
                .collect();
            std::fs::write(nodes[i].dir.join("peers.conf"), peers).unwrap();
        }
        let mut federation = Federation { dir, nodes };
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for i in 0..federation.nodes.len() {
            federation.launch(i, &extra);
        }
        for i in 0..federation.nodes.len() {
            federation.wait_linked(i);
        }
        federation
    }

    /// Waits until node `i` has linked to every other node that runs: a test then starts
    /// from a federation that is up, not from one still dialling.
    fn wait_linked(&self, i: usize) {
        let node = &self.nodes[i];
        let log = || {
            node.process
                .as_ref()
                .map(ServerProcess::log)
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for other in &self.nodes {
            if other.name == node.name || other.process.is_none() {
                continue;
            }
            let linked = format!("federation: linked to {}", other.name);
            while !log().contains(&linked) {
                assert!(
                    Instant::now() < deadline,
                    "{} did not link to {}:\n{}",
                    node.name,
                    other.name,
                    log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts (or restarts) node `i` on its ports and data.
    fn launch(&mut self, i: usize, extra: &[String]) {
        let certs = certs(self.dir.path());
        let node = &mut self.nodes[i];
        let mut command = Command::new(env!("CARGO_BIN_EXE_server"));
        command
            .args(server_args(node.port, &node.dir.join("data"), &certs))
            .args(["--name", &node.name])
            .args([
                "--federation-listen",
                &format!("127.0.0.1:{}", node.federation_port),
            ])
            .args([
                "--peers",
                &node.dir.join("peers.conf").display().to_string(),
            ])
            .args(extra)
            .env("RUST_LOG", "info");
        node.process = Some(ServerProcess::start(
            &mut command,
            node.port,
            certs.join(tls::DEV_CA_CERT),
            &node.dir,
        ));
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).expect("a node")
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("a node")
    }

    /// A client of `server` that opted in to the mailbox, registered and logged in.
    fn user(&self, server: &str, user: &str) -> TestClient {
        let mut client = self.client(server);
        client.register_ok(user);
        client.login_ok(user);
        client
    }

    /// A mailbox client of `server`, anonymous.
    fn client(&self, server: &str) -> TestClient {
        let process = self.node(server).process.as_ref().expect("running");
        let mut client = process.connect();
        let reply = client.request("MAILBOX");
        assert!(
            matches!(&reply, ServerLine::Ok { .. }),
            "MAILBOX: {reply:?}"
        );
        client
    }

    /// A known user logging in again.
    fn login(&self, server: &str, user: &str) -> TestClient {
        let mut client = self.client(server);
        client.login_ok(user);
        client
    }

    fn kill9(&mut self, name: &str) {
        let i = self.index(name);
        if let Some(mut process) = self.nodes[i].process.take() {
            process.kill9();
        }
    }

    fn restart(&mut self, name: &str) {
        self.restart_with(name, &[]);
    }

    fn restart_with(&mut self, name: &str, extra: &[&str]) {
        let i = self.index(name);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        self.launch(i, &extra);
        self.wait_linked(i);
    }

    fn log(&self, name: &str) -> String {
        self.node(name)
            .process
            .as_ref()
            .map(ServerProcess::log)
            .unwrap_or_default()
    }
}

/// `STATUS <ref> <state> <user>` for `reference`, waiting past other frames.
fn status(client: &mut TestClient, reference: &str) -> (DeliveryState, String) {
    match client
        .recv_until(|l| matches!(l, ServerLine::Status { reference: r, .. } if r == reference))
    {
        ServerLine::Status { state, user, .. } => (state, user),
        _ => unreachable!(),
    }
}

/// The next `MAIL`: its id, sender and payload.
fn mail(client: &mut TestClient) -> (u64, String, String) {
    match client.recv_until(|l| matches!(l, ServerLine::Mail { .. })) {
        ServerLine::Mail {
            id,
            sender,
            payload,
            ..
        } => (id, sender, payload),
        _ => unreachable!(),
    }
}

#[test]
fn messages_and_receipts_cross_every_pair_of_three_servers_both_ways() {
    let federation = Federation::start(&["a.test", "b.test", "c.test"]);
    let names = ["a.test", "b.test", "c.test"];
    let mut users: Vec<TestClient> = names
        .iter()
        .map(|server| federation.user(server, "user"))
        .collect();
    // Each pair, each direction: user@X sends to user@Y.
    for from in 0..3 {
        for to in 0..3 {
            if from == to {
                continue;
            }
            let reference = format!("r{from}{to}");
            let payload = format!("sealed-{from}-to-{to}");
            users[from].send(&format!("SEND user@{} {reference} {payload}", names[to]));
            let (state, user) = status(&mut users[from], &reference);
            assert!(matches!(state, DeliveryState::Queued { .. }), "{state:?}");
            assert_eq!(user, format!("user@{}", names[to]));
            let (id, sender, got) = mail(&mut users[to]);
            assert_eq!(
                sender,
                format!("user@{}", names[from]),
                "the sender's full address"
            );
            assert_eq!(got, payload);
            users[to].send(&format!("ACK {id}"));
            let (state, user) = status(&mut users[from], &reference);
            assert_eq!(state, DeliveryState::Delivered, "{reference}");
            assert_eq!(user, format!("user@{}", names[to]));
        }
    }
}

/// Each server of a federation announces its name in its greeting, which its clients bind
/// into their end-to-end cryptography (`report/protocol.md` §7.1, §11.5).
#[test]
fn a_federating_server_announces_its_name_in_the_greeting() {
    let federation = Federation::start(&["a.test", "b.test"]);
    for name in ["a.test", "b.test"] {
        let process = federation.node(name).process.as_ref().expect("running");
        let config = tls::client_config(Some(&process.ca)).expect("client config");
        let (link, _, info) =
            securechat::client::link::connect(&process.address(), config).expect("connect");
        assert_eq!(info.home, Some(ServerName::parse(name).expect("name")));
        link.close();
    }
}

#[test]
fn keys_and_prekey_bundles_of_remote_users_are_fetched_through_the_federation() {
    let federation = Federation::start(&["a.test", "b.test"]);
    let mut alice = federation.user("a.test", "alice");
    let mut bob = federation.user("b.test", "bob");
    let key = "A".repeat(43) + "=";
    assert_eq!(
        bob.request(&format!("SETKEY {key}")),
        common::ok("SETKEY", "")
    );
    assert_eq!(
        alice.request("GETKEY bob@b.test"),
        common::ok("GETKEY", &format!("bob@b.test {key}"))
    );
    // An unknown user there, and a server this one is not linked with.
    let reply = alice.request("GETKEY nobody@b.test");
    assert_eq!(common::err_code(&reply).1, "no-such-user", "{reply:?}");
    let reply = alice.request("GETKEY bob@elsewhere.test");
    assert_eq!(common::err_code(&reply).1, "unreachable", "{reply:?}");
    let reply = alice.request("LIST elsewhere.test");
    let (_, code, text) = common::err_code(&reply);
    assert_eq!(code, "unreachable", "{reply:?}");
    assert!(
        text.contains("is not a server this server is linked with"),
        "{text}"
    );
    // Its own name is this server: the local list.
    assert_eq!(alice.request("LIST a.test"), common::ok("LIST", "1 alice"));
    // Bob@a.test is alice's own server's bob: no such user here.
    let reply = alice.request("GETKEY bob@a.test");
    assert_eq!(common::err_code(&reply).1, "no-such-user", "{reply:?}");
    // A live MSG to another server sends the client to the mailbox.
    let reply = alice.request("MSG bob@b.test DH-INIT x");
    assert_eq!(common::err_code(&reply).1, "offline", "{reply:?}");
    let reply = alice.request("BUNDLE bob@b.test");
    assert_eq!(common::err_code(&reply).1, "no-prekeys", "{reply:?}");
    let reply = alice.request("SEND bob@elsewhere.test r1 x");
    assert!(
        matches!(
            &reply,
            ServerLine::Status {
                state: DeliveryState::Refused(Refusal::NoSuchServer),
                ..
            }
        ),
        "{reply:?}"
    );
    let reply = alice.request("SEND nobody@b.test r2 x");
    assert!(
        matches!(
            &reply,
            ServerLine::Status {
                state: DeliveryState::Queued { .. },
                ..
            }
        ),
        "{reply:?}"
    );
    // b.test refuses it for good, and alice hears so.
    let (state, user) = status(&mut alice, "r2");
    assert_eq!(state, DeliveryState::Refused(Refusal::NoSuchUser));
    assert_eq!(user, "nobody@b.test");
}

#[test]
fn messages_for_a_peer_that_is_down_wait_through_kill_9_of_both_and_arrive_once() {
    let mut federation = Federation::start(&["a.test", "b.test"]);
    let mut alice = federation.user("a.test", "alice");
    drop(federation.user("b.test", "bob"));
    federation.kill9("b.test");
    let count = 20;
    for i in 0..count {
        alice.send(&format!("SEND bob@b.test m{i} payload-{i}"));
    }
    for i in 0..count {
        let (state, _) = status(&mut alice, &format!("m{i}"));
        assert!(
            matches!(state, DeliveryState::Queued { .. }),
            "m{i}: {state:?}"
        );
    }
    // A re-sent reference is stored once, also while the peer is down.
    alice.send("SEND bob@b.test m0 payload-0");
    assert!(matches!(
        status(&mut alice, "m0").0,
        DeliveryState::Queued { .. }
    ));
    drop(alice);
    // The sender's server dies too, with everything still queued on its disk.
    federation.kill9("a.test");
    federation.restart("a.test");
    federation.restart("b.test");
    let mut bob = federation.login("b.test", "bob");
    let mut seen = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < count && Instant::now() < deadline {
        let (id, sender, payload) = mail(&mut bob);
        assert_eq!(sender, "alice@a.test");
        assert!(
            seen.insert(payload, id).is_none(),
            "a message arrived twice"
        );
        bob.send(&format!("ACK {id}"));
    }
    assert_eq!(seen.len(), count, "every queued message arrived");
    bob.assert_silent(Duration::from_millis(500));
    let mut alice = federation.login("a.test", "alice");
    let mut delivered = std::collections::BTreeSet::new();
    while delivered.len() < count {
        match alice.recv_until(|l| matches!(l, ServerLine::Status { .. })) {
            ServerLine::Status {
                reference,
                state: DeliveryState::Delivered,
                ..
            } => {
                delivered.insert(reference);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn the_room_spans_the_federation_with_full_addresses_and_list_shows_a_peer() {
    let federation = Federation::start(&["a.test", "b.test", "c.test"]);
    let alice = federation.user("a.test", "alice");
    let mut bob = federation.user("b.test", "bob");
    let mut carol = federation.user("c.test", "carol");
    // The links carry room lines once both directions are up; say until they arrive.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut heard = false;
    while !heard && Instant::now() < deadline {
        alice.send("SAY hello federation");
        heard = bob
            .reader
            .recv_timeout(Duration::from_millis(500))
            .ok()
            .flatten()
            .is_some_and(|l| matches!(&l, ServerLine::Room { user, text } if user == "alice@a.test" && text == "hello federation"));
    }
    assert!(
        heard,
        "bob@b.test saw alice's room line with her full address"
    );
    // Kept in b.test's room history too: a later login there that asks gets it, with the
    // full address.
    let process = federation.node("b.test").process.as_ref().expect("running");
    let mut dave = process.connect();
    assert!(matches!(dave.request("HISTORY"), ServerLine::Ok { .. }));
    dave.register_ok("dave");
    dave.login_ok("dave");
    let replayed = dave.recv_until(|l| matches!(l, ServerLine::History { .. }));
    assert!(
        matches!(&replayed, ServerLine::History { user, text, .. } if user == "alice@a.test" && text == "hello federation"),
        "{replayed:?}"
    );
    let line = carol.recv_until(|l| matches!(l, ServerLine::Room { .. }));
    assert!(
        matches!(&line, ServerLine::Room { user, .. } if user == "alice@a.test"),
        "{line:?}"
    );
    // b.test does not pass a.test's line on to c.test (no relaying): carol sees each
    // line once, from a.test directly.
    carol.send("LIST b.test");
    let list = carol.recv_until(|l| matches!(l, ServerLine::Ok { .. }));
    assert_eq!(list, common::ok("LIST", "2 bob@b.test dave@b.test"));
}

// ---- The rogue peer: the server-to-server protocol spoken by hand. ----

/// A TLS connection to a node's federation port as `as_name`, with that name's
/// certificate (or none / another CA's).
struct Rogue {
    reader: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

/// Loads the federation certificate issued for `name` in `dir`.
fn identity(
    dir: &Path,
    name: &str,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    tls::load_identity(
        &dir.join(format!("{name}.pem")),
        &dir.join(format!("{name}.key")),
    )
    .expect("identity")
}

impl Rogue {
    /// Connects with the certificate of `cert_name` from `cert_dir`, trusting `ca`.
    fn connect(port: u16, cert_dir: &Path, cert_name: &str, ca: &Path) -> std::io::Result<Rogue> {
        let (chain, key) = identity(cert_dir, cert_name);
        let roots = tls::load_certificates(ca).expect("ca");
        let config = tls::federation::federation_client_config(chain, key, &roots).expect("config");
        Rogue::with_config(port, config, "a.test")
    }

    fn with_config(
        port: u16,
        config: Arc<rustls::ClientConfig>,
        server: &str,
    ) -> std::io::Result<Rogue> {
        let socket = TcpStream::connect(("127.0.0.1", port))?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        socket.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(server.to_owned()).expect("name");
        let conn = rustls::ClientConnection::new(config, name).expect("client");
        let mut stream = rustls::StreamOwned::new(conn, socket);
        // Drive the handshake (and learn of a refused certificate) before any frame.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        stream.flush()?;
        Ok(Rogue {
            reader: BufReader::new(stream),
        })
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(format!("{line}\n").as_bytes())?;
        stream.flush()
    }

    /// The next line, or what ended the connection.
    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("closed".into()),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn request(&mut self, line: &str) -> Result<String, String> {
        self.send(line).map_err(|e| e.to_string())?;
        self.line()
    }

    /// Asserts the acceptor closed the link.
    fn assert_closed(&mut self) {
        match self.line() {
            Err(_) => {}
            Ok(line) => panic!("the link stayed open: {line}"),
        }
    }
}

/// A federation of a.test and b.test, and the paths a rogue needs.
fn two() -> (Federation, PathBuf, PathBuf) {
    let federation = Federation::start(&["a.test", "b.test"]);
    let fed_dir = federation_dir(federation.dir.path());
    let ca = fed_dir.join(tls::federation::FEDERATION_CA_CERT);
    (federation, fed_dir, ca)
}

#[test]
fn a_peer_that_speaks_for_another_servers_user_is_cut_off() {
    let (federation, fed_dir, ca) = two();
    let mut alice = federation.user("a.test", "alice");
    let port = federation.node("a.test").federation_port;
    // b.test's own certificate, but a frame claiming a sender of c.test.
    let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
    assert_eq!(
        rogue.request("PEER 1 b.test").unwrap(),
        "OK PEER a.test room=on list=on"
    );
    let reply = rogue
        .request("RELAY 1 mallory@c.test alice@a.test r1 forged")
        .unwrap();
    assert!(reply.starts_with("ERR invalid-from"), "{reply}");
    rogue.assert_closed();
    // Nor may it speak for a user of the receiving server (alice writing to alice).
    let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
    rogue.request("PEER 1 b.test").unwrap();
    let reply = rogue.request("ROOM alice@a.test i-am-alice").unwrap();
    assert!(reply.starts_with("ERR invalid-from"), "{reply}");
    rogue.assert_closed();
    alice.assert_silent(Duration::from_millis(500));
}

#[test]
fn a_certificate_for_another_name_or_an_unknown_name_is_not_authorized() {
    let (federation, fed_dir, ca) = two();
    let port = federation.node("a.test").federation_port;
    // A valid certificate of this federation CA, for c.test, claiming to be b.test.
    let files = tls::federation::issue_federation_certificate(
        &fed_dir,
        &ServerName::parse("c.test").unwrap(),
    )
    .unwrap();
    assert!(files.cert.exists());
    let mut rogue = Rogue::connect(port, &fed_dir, "c.test", &ca).expect("the chain is valid");
    let reply = rogue.request("PEER 1 b.test").unwrap();
    assert!(reply.starts_with("ERR not-authorized"), "{reply}");
    rogue.assert_closed();
    // Its own name, which is no configured peer of a.test.
    let mut rogue = Rogue::connect(port, &fed_dir, "c.test", &ca).expect("the chain is valid");
    let reply = rogue.request("PEER 1 c.test").unwrap();
    assert!(reply.starts_with("ERR not-authorized"), "{reply}");
    assert!(federation.log("a.test").contains("refused") || reply.contains("not a peer"));
}

#[test]
fn strangers_without_this_federations_certificate_never_get_a_link() {
    let (federation, _fed_dir, ca) = two();
    let port = federation.node("a.test").federation_port;
    // Another CA altogether (say, an attacker's), for the right name.
    let other = tempfile::tempdir().unwrap();
    tls::federation::issue_federation_certificate(
        other.path(),
        &ServerName::parse("b.test").unwrap(),
    )
    .unwrap();
    let refused = Rogue::connect(port, other.path(), "b.test", &ca)
        .and_then(|mut r| r.request("PEER 1 b.test").map_err(std::io::Error::other));
    assert!(
        refused.is_err(),
        "a certificate from an unknown CA got a link: {refused:?}"
    );
    // No client certificate at all, from b.test's own address (trust is never by address).
    let roots = tls::load_certificates(&ca).unwrap();
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root).unwrap();
    }
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    );
    let refused = Rogue::with_config(port, config, "a.test")
        .and_then(|mut r| r.request("PEER 1 b.test").map_err(std::io::Error::other));
    assert!(
        refused.is_err(),
        "a link without a client certificate: {refused:?}"
    );
    // Plaintext: no answer in the clear, the connection ends.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"PEER 1 b.test\nRELAY 1 bob@b.test alice@a.test r x\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("OK PEER"),
        "plaintext was answered"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("RACK"),
        "plaintext was answered"
    );
}

#[test]
fn a_replayed_message_is_stored_once_and_a_relay_for_a_third_server_is_refused() {
    let (federation, fed_dir, ca) = two();
    let mut alice = federation.user("a.test", "alice");
    let port = federation.node("a.test").federation_port;
    let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
    rogue.request("PEER 1 b.test").unwrap();
    let relay = "RELAY 41 bob@b.test alice@a.test ref41 sealed";
    assert_eq!(rogue.request(relay).unwrap(), "RACK 41 queued");
    assert_eq!(
        rogue.request(relay).unwrap(),
        "RACK 41 queued",
        "a replay is answered"
    );
    let (_, sender, payload) = mail(&mut alice);
    assert_eq!(
        (sender.as_str(), payload.as_str()),
        ("bob@b.test", "sealed")
    );
    alice.assert_silent(Duration::from_millis(500));
    // Servers never relay for a third server.
    let reply = rogue
        .request("RELAY 42 bob@b.test carol@c.test ref42 x")
        .unwrap();
    assert_eq!(reply, "RACK 42 refused no-such-server");
    let reply = rogue
        .request("RELAY 43 bob@b.test nobody@a.test ref43 x")
        .unwrap();
    assert_eq!(reply, "RACK 43 refused no-such-user");
}

#[test]
fn an_oversized_or_garbled_peer_frame_ends_the_link_and_local_users_carry_on() {
    let (federation, fed_dir, ca) = two();
    let alice = federation.user("a.test", "alice");
    let mut alice2 = federation.user("a.test", "alice2");
    let port = federation.node("a.test").federation_port;
    let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
    rogue.request("PEER 1 b.test").unwrap();
    let huge = format!("RELAY 1 bob@b.test alice@a.test r {}", "x".repeat(200_000));
    // The acceptor may close before it read everything (then the error is lost in the
    // reset); either way the link ends and the log says why.
    let _ = rogue.send(&huge);
    if let Ok(reply) = rogue.line() {
        assert!(reply.starts_with("ERR too-long"), "{reply}");
    }
    rogue.assert_closed();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !federation.log("a.test").contains("too-long") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        federation.log("a.test").contains("too-long"),
        "{}",
        federation.log("a.test")
    );
    let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
    rogue.request("PEER 1 b.test").unwrap();
    let reply = rogue.request("HELLO there").unwrap();
    assert!(reply.starts_with("ERR bad-frame"), "{reply}");
    rogue.assert_closed();
    // A peer that connects and then says nothing holds nobody up.
    let _silent = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
    alice.send("MSG alice2 still-here");
    let line = alice2.recv_until(|l| matches!(l, ServerLine::From { .. }));
    assert!(
        matches!(&line, ServerLine::From { user, payload } if user == "alice" && payload == "still-here")
    );
}

#[test]
fn a_server_that_opts_out_of_sharing_neither_sends_nor_shows_room_lines_nor_its_list() {
    let mut federation = Federation::start(&["a.test", "b.test"]);
    federation.kill9("a.test");
    federation.restart_with("a.test", &["--no-shared-room", "--no-shared-presence"]);
    let mut alice = federation.user("a.test", "alice");
    let mut bob = federation.user("b.test", "bob");
    // The link itself works both ways: a message crosses it.
    bob.send("SEND alice@a.test probe payload");
    let (id, sender, _) = mail(&mut alice);
    assert_eq!(sender, "bob@b.test");
    alice.send(&format!("ACK {id}"));
    // Nor does a.test say who is online there; b.test still does.
    bob.send("LIST a.test");
    let reply = bob.recv_until(|l| matches!(l, ServerLine::Err { .. } | ServerLine::Ok { .. }));
    let (_, code, text) = common::err_code(&reply);
    assert_eq!(code, "unreachable", "{reply:?}");
    assert!(text.contains("does not share who is online"), "{text}");
    alice.send("LIST b.test");
    let reply = alice.recv_until(|l| matches!(l, ServerLine::Err { .. } | ServerLine::Ok { .. }));
    assert_eq!(reply, common::ok("LIST", "1 bob@b.test"));
    for i in 0..10 {
        alice.send(&format!("SAY from-a-{i}"));
        bob.send(&format!("SAY from-b-{i}"));
        std::thread::sleep(Duration::from_millis(100));
    }
    for client in [&mut alice, &mut bob] {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(line)) = client.reader.recv_timeout(Duration::from_millis(100)) {
                assert!(
                    !matches!(line, ServerLine::Room { .. }),
                    "a room line crossed: {line:?}"
                );
            }
        }
    }
}

/// A peer that completes TLS as `b.test` and then never answers: it holds every
/// connection it accepts until dropped.
struct SilentPeer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentPeer {
    fn listen(port: u16, fed_dir: &Path, ca: &Path) -> SilentPeer {
        let (chain, key) = identity(fed_dir, "b.test");
        let roots = tls::load_certificates(ca).unwrap();
        let config = tls::federation::federation_server_config(chain, key, &roots, &[]).unwrap();
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("b.test's port");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut socket, _)) => {
                        socket.set_nonblocking(false).unwrap();
                        socket
                            .set_read_timeout(Some(Duration::from_secs(5)))
                            .unwrap();
                        let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
                        while conn.is_handshaking() {
                            if conn.complete_io(&mut socket).is_err() {
                                break;
                            }
                        }
                        held.push((conn, socket));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        SilentPeer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentPeer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_peer_that_never_answers_slows_nobody_and_its_messages_wait_for_the_real_one() {
    let (mut federation, fed_dir, ca) = two();
    let mut alice = federation.user("a.test", "alice");
    let mut alice2 = federation.user("a.test", "alice2");
    drop(federation.user("b.test", "bob"));
    federation.kill9("b.test");
    let silent = SilentPeer::listen(federation.node("b.test").federation_port, &fed_dir, &ca);
    // Let a.test's connector find the silent peer and hang on its PEER frame.
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    alice.send("SEND bob@b.test waiting sealed-for-bob");
    assert!(matches!(
        status(&mut alice, "waiting").0,
        DeliveryState::Queued { .. }
    ));
    let reply = alice.request("GETKEY bob@b.test");
    assert_eq!(common::err_code(&reply).1, "unreachable", "{reply:?}");
    alice.send("MSG alice2 local-still-flows");
    alice2.recv_until(|l| matches!(l, ServerLine::From { .. }));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "local traffic waited {:?} on a silent peer",
        started.elapsed()
    );
    // The real b.test comes back: the queued message reaches bob once.
    drop(silent);
    federation.restart("b.test");
    let mut bob = federation.login("b.test", "bob");
    let (id, sender, payload) = mail(&mut bob);
    assert_eq!(
        (sender.as_str(), payload.as_str()),
        ("alice@a.test", "sealed-for-bob")
    );
    bob.send(&format!("ACK {id}"));
    assert_eq!(status(&mut alice, "waiting").0, DeliveryState::Delivered);
    bob.assert_silent(Duration::from_millis(500));
}

#[test]
fn a_relay_too_large_for_this_server_is_refused_for_good_and_the_link_stays_up() {
    let (federation, fed_dir, ca) = two();
    let alice = federation.user("a.test", "alice");
    let port = federation.node("a.test").federation_port;
    let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
    rogue.request("PEER 1 b.test").unwrap();
    // A full SEND on b.test becomes a longer RELAY: the link takes it, and a payload this
    // server could not hand to its user is refused for good (never left at the head of
    // b.test's queue, blocking everything behind it until it expires).
    let max = securechat::protocol::AnnouncedLimits::DEFAULT.max_frame;
    let relay = format!(
        "RELAY 7 bob@b.test alice@a.test big {}",
        "x".repeat(max + 100)
    );
    assert_eq!(rogue.request(&relay).unwrap(), "RACK 7 refused quota");
    let fits = format!(
        "RELAY 8 bob@b.test alice@a.test fits {}",
        "y".repeat(max - 100)
    );
    assert_eq!(rogue.request(&fits).unwrap(), "RACK 8 queued");
    assert_eq!(rogue.request("PING still-up").unwrap(), "PONG still-up");
    drop(alice);
}

#[test]
fn strangers_hold_places_on_the_federation_port_for_the_handshake_deadline_at_most() {
    let (federation, _fed_dir, _ca) = two();
    let port = federation.node("a.test").federation_port;
    let started = Instant::now();
    // Four connections that trickle a byte now and then and never finish a handshake.
    let mut tricklers: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A fifth from the same address is turned away at once.
    let mut fifth = TcpStream::connect(("127.0.0.1", port)).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(fifth.read(&mut byte), Ok(0) | Err(_)),
        "a fifth pending connection from one address was kept"
    );
    // The four are cut at the handshake deadline however they trickle.
    for socket in &mut tricklers {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    let mut open = tricklers.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while open > 0 && Instant::now() < deadline {
        open = 0;
        for socket in &mut tricklers {
            let _ = socket.write_all(&[0x16]);
            match socket.read(&mut byte) {
                Ok(0) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    open += 1
                }
                Err(_) => {}
                Ok(_) => open += 1,
            }
        }
    }
    assert_eq!(
        open, 0,
        "trickling strangers outlived the handshake deadline"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // The real peer still links: a message crosses.
    let mut alice = federation.user("a.test", "alice");
    let bob = federation.user("b.test", "bob");
    bob.send("SEND alice@a.test after probe");
    let (_, sender, _) = mail(&mut alice);
    assert_eq!(sender, "bob@b.test");
}

#[test]
fn a_peers_room_lines_beyond_its_budget_are_dropped() {
    let (federation, fed_dir, ca) = two();
    let mut alice = federation.user("a.test", "alice");
    let port = federation.node("a.test").federation_port;
    let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
    rogue.request("PEER 1 b.test").unwrap();
    let started = Instant::now();
    for i in 0..300 {
        rogue.send(&format!("ROOM bob@b.test flood-{i}")).unwrap();
    }
    assert_eq!(rogue.request("PING done").unwrap(), "PONG done");
    let elapsed = started.elapsed().as_secs_f64();
    let mut shown = 0;
    while let Ok(Some(line)) = alice.reader.recv_timeout(Duration::from_millis(500)) {
        if matches!(line, ServerLine::Room { .. }) {
            shown += 1;
        }
    }
    let allowed = 40 + (20.0 * (elapsed + 0.5)).ceil() as usize;
    assert!(shown >= 40, "the burst was not shown: {shown}");
    assert!(
        shown <= allowed,
        "{shown} room lines shown, at most {allowed} allowed"
    );
}

#[test]
fn a_peers_prekey_fetch_budget_is_not_refilled_by_reconnecting() {
    let (federation, fed_dir, ca) = two();
    drop(federation.user("a.test", "alice"));
    let port = federation.node("a.test").federation_port;
    let fetch = |rogue: &mut Rogue, qid: usize| {
        rogue
            .request(&format!("BUNDLE {qid} bob@b.test alice@a.test"))
            .unwrap()
    };
    // Spend the budget (it refills at 5 a second, so a few more than 300 get through).
    let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
    rogue.request("PEER 1 b.test").unwrap();
    let mut spent_after = None;
    for qid in 0..600 {
        let answer = fetch(&mut rogue, qid);
        if answer.contains("rate-limited") {
            spent_after = Some(qid);
            break;
        }
        assert!(answer.contains("no-prekeys"), "{answer}");
    }
    let spent_after = spent_after.expect("the budget ran out");
    assert!(
        spent_after >= 300,
        "limited after only {spent_after} fetches"
    );
    drop(rogue);
    // A new link does not bring a new budget.
    let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
    rogue.request("PEER 1 b.test").unwrap();
    let limited = (0..10)
        .filter(|qid| fetch(&mut rogue, 1000 + qid).contains("rate-limited"))
        .count();
    assert!(
        limited >= 5,
        "a reconnect refilled the budget: {limited} of 10 limited"
    );
}

// ---- The real client binaries on two servers. ----

/// The `client` binary in scripted mode (`--user NAME --password-stdin`), its output
/// matched as it comes.
struct Scripted {
    session: rexpect::session::StreamSession<std::process::ChildStdin>,
    child: std::process::Child,
    transcript: String,
}

impl Scripted {
    fn spawn(node: &Node, home: &Path, user: &str) -> Scripted {
        let process = node.process.as_ref().expect("running");
        let mut child = Command::new(env!("CARGO_BIN_EXE_client"))
            .args(["--server", &process.address()])
            .arg("--ca")
            .arg(&process.ca)
            .arg("--home")
            .arg(home)
            .args(["--user", user, "--password-stdin", "--register"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(home.join(format!("{user}.stderr"))).unwrap())
            .spawn()
            .expect("start the client binary");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take().expect("stdin");
        let session = rexpect::spawn_stream(stdout, stdin, Some(20_000));
        let mut client = Scripted {
            session,
            child,
            transcript: String::new(),
        };
        client.send_line(common::PASSWORD);
        client
    }

    fn send_line(&mut self, line: &str) {
        self.session.send_line(line).expect("type into the client");
    }

    fn expect(&mut self, needle: &str) {
        match self.session.exp_string(needle) {
            Ok(before) => {
                self.transcript.push_str(&before);
                self.transcript.push_str(needle);
            }
            Err(e) => panic!(
                "waiting for {needle:?}: {e}\n--- transcript ---\n{}",
                self.transcript
            ),
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_real_clients_on_two_servers_talk_end_to_end_and_neither_server_can_read_it() {
    const TO_BOB: &str = "meet at the north gate at nine";
    const TO_ALICE: &str = "agreed, north gate at nine";
    let federation = Federation::start(&["a.test", "b.test"]);
    let homes = tempfile::tempdir().unwrap();
    let (alice_home, bob_home) = (homes.path().join("alice"), homes.path().join("bob"));
    std::fs::create_dir_all(&alice_home).unwrap();
    std::fs::create_dir_all(&bob_home).unwrap();
    let mut bob = Scripted::spawn(federation.node("b.test"), &bob_home, "bob");
    bob.expect("logged in as bob.");
    // Bob's client publishes its prekeys right after logging in.
    std::thread::sleep(Duration::from_secs(1));
    let mut alice = Scripted::spawn(federation.node("a.test"), &alice_home, "alice");
    alice.expect("logged in as alice.");
    alice.send_line(&format!("/msg bob@b.test {TO_BOB}"));
    alice.expect(
        "bob@b.test is on another server, and messages between servers travel as offline messages",
    );
    // A first message from someone new is a message request: nothing is read until bob
    // accepts (typed after the request could be read).
    bob.expect("message request: alice@a.test wrote to you from another server");
    bob.expect("/accept alice@a.test to read what they sent");
    std::thread::sleep(Duration::from_millis(1_200));
    bob.send_line("/accept alice@a.test");
    bob.expect(TO_BOB);
    alice.expect("to bob@b.test: delivered");
    bob.send_line(&format!("/msg alice@a.test {TO_ALICE}"));
    alice.expect("bob@b.test");
    alice.expect(TO_ALICE);
    // Both servers relayed and stored it; neither holds a readable word of it, on disk or
    // in its log.
    for node in ["a.test", "b.test"] {
        let data = federation.node(node).dir.join("data");
        let stored = common::files_under(&data);
        assert!(!stored.is_empty(), "{node} stored nothing");
        for (path, bytes) in &stored {
            for secret in [TO_BOB, TO_ALICE] {
                assert!(
                    !common::contains(bytes, secret),
                    "{secret:?} in {}",
                    path.display()
                );
            }
        }
        let log = federation.log(node);
        for secret in [TO_BOB, TO_ALICE] {
            assert!(!log.contains(secret), "{secret:?} in {node}'s log");
        }
    }
}

#[test]
fn a_peer_trusted_by_its_key_links_and_the_shared_ca_cannot_stand_in_for_it() {
    let mut federation = Federation::start(&["a.test", "b.test", "c.test"]);
    let fed_dir = federation_dir(federation.dir.path());
    let ca = fed_dir.join(tls::federation::FEDERATION_CA_CERT);
    // a.test trusts b.test by its key alone; c.test still by the CA.
    let b_pin = tls::federation::KeyPin::of_certificate(&identity(&fed_dir, "b.test").0[0])
        .expect("b.test's pin");
    let b_port = federation.node("b.test").federation_port;
    let c_port = federation.node("c.test").federation_port;
    std::fs::write(
        federation.node("a.test").dir.join("peers.conf"),
        format!(
            "b.test 127.0.0.1:{b_port} {b_pin}\nc.test 127.0.0.1:{c_port} {}\n",
            ca.display()
        ),
    )
    .unwrap();
    federation.kill9("a.test");
    federation.restart("a.test");
    let mut alice = federation.user("a.test", "alice");
    let mut bob = federation.user("b.test", "bob");
    alice.send("SEND bob@b.test k1 to-bob");
    assert!(matches!(
        status(&mut alice, "k1").0,
        DeliveryState::Queued { .. }
    ));
    let (id, sender, _) = mail(&mut bob);
    assert_eq!(sender, "alice@a.test");
    bob.send(&format!("ACK {id}"));
    assert_eq!(status(&mut alice, "k1").0, DeliveryState::Delivered);
    bob.send("SEND alice@a.test k2 to-alice");
    let (_, sender, _) = mail(&mut alice);
    assert_eq!(sender, "bob@b.test");

    // The federation CA issues another certificate for b.test (another key). a.test still
    // trusts that CA (for c.test), so the handshake passes — and the pin refuses it.
    let other = tempfile::tempdir().unwrap();
    for file in [
        tls::federation::FEDERATION_CA_CERT,
        tls::federation::FEDERATION_CA_KEY,
    ] {
        std::fs::copy(fed_dir.join(file), other.path().join(file)).unwrap();
    }
    tls::federation::issue_federation_certificate(
        other.path(),
        &ServerName::parse("b.test").unwrap(),
    )
    .unwrap();
    let port = federation.node("a.test").federation_port;
    let mut rogue = Rogue::connect(port, other.path(), "b.test", &ca).expect("the CA's chain");
    let reply = rogue.request("PEER 1 b.test").unwrap();
    assert!(reply.starts_with("ERR not-authorized"), "{reply}");
    rogue.assert_closed();
    // Nor can it pass for c.test, which a.test does trust by the CA: it holds only b.test.
    let mut rogue = Rogue::connect(port, other.path(), "b.test", &ca).expect("the CA's chain");
    let reply = rogue.request("PEER 1 c.test").unwrap();
    assert!(reply.starts_with("ERR not-authorized"), "{reply}");
}

#[test]
fn a_servers_name_defaults_to_its_federation_certificates_and_a_mismatch_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let fed_dir = federation_dir(dir.path());
    let files = tls::federation::issue_federation_certificate(
        &fed_dir,
        &ServerName::parse("d.test").unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("peers.conf"),
        format!("a.test 127.0.0.1:{} {}\n", free_port(), files.ca.display()),
    )
    .unwrap();
    let start = |extra: &[&str], log_dir: &Path| {
        std::fs::create_dir_all(log_dir).unwrap();
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_server"));
        command
            .args(server_args(port, &log_dir.join("data"), &certs))
            .args(["--federation-listen", &format!("127.0.0.1:{}", free_port())])
            .args([
                "--peers",
                &dir.path().join("peers.conf").display().to_string(),
            ])
            .arg("--federation-cert")
            .arg(&files.cert)
            .arg("--federation-key")
            .arg(&files.key)
            .args(extra)
            .env("RUST_LOG", "info");
        ServerProcess::start(&mut command, port, certs.join(tls::DEV_CA_CERT), log_dir)
    };
    // The port accepts connections before the start-up log is complete: wait for it.
    let log_with = |process: &ServerProcess, needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = process.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut named_by_certificate = start(&[], &dir.path().join("one"));
    let log = log_with(&named_by_certificate, "listening for peers");
    assert!(
        log.contains("federation: d.test listening for peers"),
        "{log}"
    );
    assert!(
        !log.contains("peers that trust it by a CA will refuse it"),
        "{log}"
    );
    named_by_certificate.stop();
    let mut misnamed = start(&["--name", "e.test"], &dir.path().join("two"));
    let log = log_with(&misnamed, "listening for peers");
    assert!(
        log.contains("federation: e.test listening for peers"),
        "{log}"
    );
    assert!(log.contains("holds d.test, not e.test"), "{log}");
    misnamed.stop();
}

#[test]
fn a_peers_frames_are_paced_not_dropped() {
    let (federation, fed_dir, ca) = two();
    let port = federation.node("a.test").federation_port;
    let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
    rogue.request("PEER 1 b.test").unwrap();
    // 10,000 frames at once: a burst of 4,000 goes at once, the rest at 2,000 a second, so
    // the last answer cannot come before 3 s; every one of them is answered, in order.
    let count = 10_000;
    let started = Instant::now();
    let frames: String = (0..count).map(|i| format!("PING {i}\n")).collect();
    let stream = rogue.reader.get_mut();
    stream.write_all(frames.as_bytes()).unwrap();
    stream.flush().unwrap();
    for i in 0..count {
        assert_eq!(rogue.line().unwrap(), format!("PONG {i}"));
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2_500),
        "not paced: {elapsed:?}"
    );
}

#[test]
fn a_peer_holds_a_few_links_at_most_and_speaks_this_version_only() {
    let (federation, fed_dir, ca) = two();
    let port = federation.node("a.test").federation_port;
    // Another version of the protocol is refused by name.
    let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
    let reply = rogue.request("PEER 2 b.test").unwrap();
    assert!(reply.starts_with("ERR version"), "{reply}");
    rogue.assert_closed();
    // b.test's own connector holds one link (or will); its certificate gets at most four.
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..5 {
        let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
        let reply = rogue.request("PEER 1 b.test").unwrap();
        if reply.starts_with("OK PEER") {
            held.push(rogue);
        } else {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("a fifth link for b.test was refused");
    assert!(
        refused.starts_with("ERR not-authorized b.test already holds 4 links"),
        "{refused}"
    );
    assert!((3..=4).contains(&held.len()), "{} links held", held.len());
    // A link given up frees its place.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut rogue = Rogue::connect(port, &fed_dir, "b.test", &ca).expect("link");
        if rogue
            .request("PEER 1 b.test")
            .unwrap()
            .starts_with("OK PEER")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a closed link's place was not given back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_client_stops_when_its_server_comes_back_under_another_federation_name() {
    let mut federation = Federation::start(&["a.test", "b.test"]);
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Scripted::spawn(federation.node("a.test"), homes.path(), "alice");
    alice.expect("logged in as alice.");
    // a.test comes back on the same port and data, but no longer federating: it announces
    // no name, so every name alice's client signs would change under her.
    federation.kill9("a.test");
    let node = federation.node("a.test");
    let certs = certs(federation.dir.path());
    let mut command = Command::new(env!("CARGO_BIN_EXE_server"));
    command.args(server_args(node.port, &node.dir.join("data"), &certs));
    let _plain = ServerProcess::start(
        &mut command,
        node.port,
        certs.join(tls::DEV_CA_CERT),
        &node.dir,
    );
    // The client reconnects, sees the new greeting, says why on its error stream and stops
    // (with a failure status) rather than carry on under changed names.
    let _ = alice.session.exp_eof();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match alice.child.try_wait().expect("the client's status") {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("the client carried on under another server name"),
        }
    };
    assert!(!status.success(), "{status}");
    let stderr = std::fs::read_to_string(homes.path().join("alice.stderr")).unwrap();
    assert!(
        stderr.contains(
            "the server now announces no federation name (it announced the name a.test \
             when this client started)"
        ),
        "{stderr}"
    );
}

#[test]
fn a_message_that_waits_too_long_on_either_server_comes_back_expired() {
    let mut federation = Federation::start_with(&["a.test", "b.test"], &["--queue-ttl", "1"]);
    let mut alice = federation.user("a.test", "alice");
    drop(federation.user("b.test", "bob"));
    // Stored on b.test for bob, who never comes: b.test's expiry makes the receipt, and
    // b.test's connector (at its next look at the store) forwards it to a.test.
    alice.send("SEND bob@b.test on-b payload");
    assert!(matches!(
        status(&mut alice, "on-b").0,
        DeliveryState::Queued { .. }
    ));
    let (state, user) = status(&mut alice, "on-b");
    assert_eq!(
        (state, user.as_str()),
        (DeliveryState::Expired, "bob@b.test")
    );
    // b.test is down: the message expires in a.test's own queue for it.
    federation.kill9("b.test");
    alice.send("SEND bob@b.test on-a payload");
    assert!(matches!(
        status(&mut alice, "on-a").0,
        DeliveryState::Queued { .. }
    ));
    let (state, user) = status(&mut alice, "on-a");
    assert_eq!(
        (state, user.as_str()),
        (DeliveryState::Expired, "bob@b.test")
    );
}

#[test]
fn a_returning_peer_is_reached_at_once_not_after_the_backoff() {
    let mut federation = Federation::start(&["a.test", "b.test"]);
    let mut alice = federation.user("a.test", "alice");
    drop(federation.user("b.test", "bob"));
    federation.kill9("b.test");
    alice.send("SEND bob@b.test back payload");
    assert!(matches!(
        status(&mut alice, "back").0,
        DeliveryState::Queued { .. }
    ));
    // a.test's connector retries after 1, 2, 4, 8 s: after 16 s down its next try is
    // about 16 s away. b.test's return must cut that short: its own connector dials
    // a.test, and being heard from resets a.test's backoff.
    std::thread::sleep(Duration::from_secs(16));
    federation.restart("b.test");
    let returned = Instant::now();
    let mut bob = federation.login("b.test", "bob");
    let (_, sender, _) = mail(&mut bob);
    assert_eq!(sender, "alice@a.test");
    assert!(
        returned.elapsed() < Duration::from_secs(6),
        "the queued message took {:?} after b.test returned",
        returned.elapsed()
    );
}
