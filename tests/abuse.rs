//! Abuse by ordinary and anonymous users, over real TLS: lockouts turned on others,
//! login floods that starve everyone's logins, and database files other local users can
//! read. Each test fails without the defence it names.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{err_code, test_limits, TestServer, PASSWORD};
use securechat::protocol::ServerLine;
use securechat::server::ThrottlePolicy;
use securechat::server::DB_FILE;
use securechat::server::{Config, Limits, Server};
use securechat::tls;

fn throttling(policy: ThrottlePolicy) -> Limits {
    Limits {
        throttle: policy,
        ..test_limits()
    }
}

#[test]
fn failures_for_unknown_names_never_lock_an_owner_out_of_its_address() {
    let server = TestServer::with_limits(throttling(ThrottlePolicy {
        // A long first wait, so the lock certainly holds for the rest of the test.
        first_delay: Duration::from_secs(600),
        ..ThrottlePolicy::default()
    }));
    let mut setup = server.connect();
    setup.register_ok("alice");
    setup.register_ok("bob");
    // alice has logged in from 127.0.0.1 before; bob never has.
    server.connect().login_ok("alice");
    let free = ThrottlePolicy::default().address_free_failures;
    let mut attacker = server.connect();
    for i in 0..=free {
        let reply = attacker.request(&format!("LOGIN ghost{i} {PASSWORD}"));
        assert_eq!(err_code(&reply).1, "auth-failed", "failure {i}");
    }
    let reply = attacker.request(&format!("LOGIN ghost_next {PASSWORD}"));
    assert_eq!(err_code(&reply).1, "throttled", "the address is locked");
    // The owner logs in at once from the same address.
    server.connect().login_ok("alice");
    // A stranger's correct password from that address is still refused: the address lock
    // is what stops guessing across many names.
    let mut stranger = server.connect();
    let reply = stranger.request(&format!("LOGIN bob {PASSWORD}"));
    let (_, code, text) = err_code(&reply);
    assert_eq!(code, "throttled");
    assert!(text.contains("try again in"), "{text}");
}

/// A TLS connection to `server` from the source address `from` (any of 127.0.0.0/8 is this
/// machine on Linux), greeting read; requests are written and replies read one line at a
/// time.
struct FromAddress {
    /// The TLS stream, read through a line buffer.
    tls: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl FromAddress {
    fn connect(server: &TestServer, from: IpAddr) -> FromAddress {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::new(from, 0).into())
            .expect("bind the source address");
        socket.connect(&server.addr.into()).expect("connect");
        let tcp = TcpStream::from(socket);
        tcp.set_read_timeout(Some(FLOOD_WAIT)).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(server.client_config(), name).unwrap();
        let mut client = FromAddress {
            tls: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
        };
        let greeting = client.recv();
        assert!(matches!(greeting, ServerLine::Hello { .. }), "{greeting:?}");
        client
    }

    fn send(&mut self, line: &str) {
        let tls = self.tls.get_mut();
        tls.write_all(format!("{line}\n").as_bytes()).expect("send");
        tls.flush().expect("send");
    }

    fn recv(&mut self) -> ServerLine {
        let mut line = String::new();
        self.tls.read_line(&mut line).expect("a reply");
        ServerLine::parse(line.trim_end_matches('\n')).expect("a well-formed reply")
    }
}

/// How long a flood's reply may take: bcrypt at cost 12 runs at idle priority on a machine
/// that may be busy.
const FLOOD_WAIT: Duration = Duration::from_secs(120);

/// `127.0.<n>.1`: a different /24 network for each `n`.
fn network(n: u8) -> IpAddr {
    IpAddr::from([127, 0, n, 1])
}

/// What came back to a flood so far.
#[derive(Default)]
struct FloodCount {
    /// Attempts checked with bcrypt (`auth-failed`).
    checked: AtomicUsize,
    /// Attempts refused without bcrypt (`throttled`).
    refused: AtomicUsize,
}

#[test]
fn an_honest_login_is_served_while_a_flood_from_four_networks_is_queued() {
    const NETWORKS: u8 = 4;
    const PER_NETWORK: usize = 64;
    const WORKERS: usize = 1;
    let policy = ThrottlePolicy::default();
    let limits = Limits {
        bcrypt_concurrency: WORKERS,
        throttle: ThrottlePolicy {
            registrations_burst: 0,
            ..policy.clone()
        },
        // On a loaded machine the flood's few admitted attempts at cost 12 can outlast
        // the default 20 s login timeout; what is measured here is the queue's order.
        login_timeout: Duration::from_secs(120),
        ..test_limits()
    };
    let server = TestServer::with(limits, 12);
    server.connect().register_ok("honest");
    let mut honest = FromAddress::connect(&server, network(NETWORKS + 1));
    let flood: Vec<FromAddress> = (1..=NETWORKS)
        .flat_map(|n| (0..PER_NETWORK).map(move |_| n))
        .map(|n| FromAddress::connect(&server, network(n)))
        .collect();
    // Every flood connection asks at once, for a name that does not exist.
    let count = Arc::new(FloodCount::default());
    let readers: Vec<_> = flood
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            client.send(&format!("LOGIN ghost{i} {PASSWORD}"));
            let count = count.clone();
            thread::spawn(move || {
                let reply = client.recv();
                let counter = match err_code(&reply).1 {
                    "auth-failed" => &count.checked,
                    "throttled" => &count.refused,
                    other => panic!("unexpected reply to the flood: {other}"),
                };
                counter.fetch_add(1, SeqCst);
            })
        })
        .collect();
    // Each network may have only a few attempts queued or running: the rest are refused
    // at once (a few more may get in as the first ones finish).
    let admitted_at_most = usize::from(NETWORKS) * (policy.logins_per_prefix + 1);
    let flood_total = usize::from(NETWORKS) * PER_NETWORK;
    let deadline = Instant::now() + FLOOD_WAIT;
    while count.refused.load(SeqCst) < flood_total - admitted_at_most {
        assert!(
            Instant::now() < deadline,
            "the flood was not refused beyond the per-network cap: {} refused",
            count.refused.load(SeqCst)
        );
        thread::sleep(Duration::from_millis(10));
    }
    let checked_before = count.checked.load(SeqCst);
    honest.send(&format!("LOGIN honest {PASSWORD}"));
    assert_eq!(honest.recv(), common::ok("LOGIN", "honest"));
    let checked_after = count.checked.load(SeqCst);
    // Served in turn: behind at most one attempt per flooding network, plus those running.
    let ahead = checked_after - checked_before;
    assert!(
        ahead <= usize::from(NETWORKS) + WORKERS,
        "{ahead} flood attempts were checked before the honest login (of {checked_before} \
         before it was sent)"
    );
    let admitted = flood_total - count.refused.load(SeqCst);
    assert!(
        checked_after < admitted,
        "the flood was no longer queued: {checked_after} of {admitted} checked"
    );
    for reader in readers {
        reader.join().expect("every flood attempt gets an answer");
    }
    assert_eq!(
        count.checked.load(SeqCst) + count.refused.load(SeqCst),
        flood_total
    );
}

/// The permission bits of `path`, in octal.
fn mode(path: &Path) -> String {
    let metadata = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:o}", metadata.permissions().mode() & 0o777)
}

/// Sets the permission bits of `path`.
fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn the_database_files_are_private_from_the_first_start() {
    // The usual umask, under which SQLite made the files 0644 and the directory 0755.
    // SAFETY: umask(2) only sets this process's file-creation mask.
    unsafe { libc::umask(0o022) };
    let server = TestServer::start();
    server.connect().register_ok("alice");
    let data = server.data_dir();
    assert_eq!(mode(&data), "700", "{}", data.display());
    // While the server runs, SQLite keeps its write-ahead log and shared-memory index.
    for name in [DB_FILE, "securechat.db-wal", "securechat.db-shm"] {
        assert_eq!(mode(&data.join(name)), "600", "{name}");
    }
}

/// Starts a server on the data directory of `server` (stopped); returns why it refused.
fn refusal(server: &TestServer) -> String {
    let certs = tls::ensure_dev_certificates(&server.dir.path().join("certs")).unwrap();
    let (chain, key) = tls::load_identity(&certs.cert, &certs.key).unwrap();
    let started = Server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: server.data_dir(),
        tls: tls::server_config(chain, key).unwrap(),
        bcrypt_cost: 4,
        limits: test_limits(),
        federation: None,
    });
    match started {
        Ok(running) => {
            running.shutdown();
            panic!("the server started on files others can read")
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_database_or_data_directory_others_can_read_is_refused_at_start() {
    let mut server = TestServer::start();
    server.connect().register_ok("alice");
    server.stop();
    let data = server.data_dir();
    let db = data.join(DB_FILE);
    chmod(&db, 0o644);
    let message = refusal(&server);
    assert!(
        message.contains(&format!("run `chmod 600 {}`", db.display())),
        "{message}"
    );
    chmod(&db, 0o600);
    chmod(&data, 0o755);
    let message = refusal(&server);
    assert!(
        message.contains(&format!("run `chmod 700 {}`", data.display())),
        "{message}"
    );
    // Fixed as the message says, the server starts on the same accounts.
    chmod(&data, 0o700);
    server.restart();
    server.connect().login_ok("alice");
}
