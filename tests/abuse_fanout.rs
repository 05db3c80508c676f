//! Abuse tier, fan-out and anonymous budgets (issue 13): a room burst does not cut off a
//! slow reader, an anonymous client cannot make the server hold more than a few KiB of
//! replies or echo long tokens, connections that never log in are capped, and one user
//! cannot flood another with key-exchange starts. Real TLS on loopback throughout.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{err_code, ok, test_limits, ServerProcess, TestServer, PASSWORD, WAIT};
use securechat::protocol::ServerLine;
use securechat::server::Limits;

/// A socket that delivers at most `rate` bytes per second, in reads of at most one
/// Internet-sized segment, like a client on a slow link. Its small receive buffer makes
/// the server's send path fill as it would over the Internet, instead of loopback's
/// megabytes.
struct SlowSocket {
    /// The connection.
    tcp: TcpStream,
    /// Bytes per second read at most.
    rate: f64,
    /// When reading started, and bytes read since.
    started: Instant,
    /// Bytes read so far.
    read: usize,
}

/// One TCP segment's payload on a typical Internet path.
const MSS: usize = 1_400;

impl SlowSocket {
    fn connect(server: &TestServer, rate: f64) -> SlowSocket {
        let tcp = TcpStream::connect(server.addr).unwrap();
        set_receive_buffer(&tcp, 16 * 1024);
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        SlowSocket {
            tcp,
            rate,
            started: Instant::now(),
            read: 0,
        }
    }
}

impl Read for SlowSocket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let due = Duration::from_secs_f64(self.read as f64 / self.rate);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
        let len = buf.len().min(MSS);
        let n = self.tcp.read(&mut buf[..len])?;
        self.read += n;
        Ok(n)
    }
}

impl Write for SlowSocket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

fn set_receive_buffer(tcp: &TcpStream, size: usize) {
    socket2::SockRef::from(tcp)
        .set_recv_buffer_size(size)
        .expect("setsockopt(SO_RCVBUF)");
}

/// A TLS client over a [`SlowSocket`], reading whole frames.
type SlowTls = BufReader<rustls::StreamOwned<rustls::ClientConnection, SlowSocket>>;

/// Logs `user` (already registered) in over a socket that reads at `rate` bytes/s.
fn slow_login(server: &TestServer, user: &str, rate: f64) -> SlowTls {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(server.client_config(), name).unwrap();
    let mut tls = BufReader::new(rustls::StreamOwned::new(
        conn,
        SlowSocket::connect(server, rate),
    ));
    assert!(next_line(&mut tls).unwrap().starts_with("HELLO "));
    writeln!(tls.get_mut(), "LOGIN {user} {PASSWORD}").unwrap();
    assert_eq!(next_line(&mut tls).unwrap(), format!("OK LOGIN {user}"));
    tls
}

/// The next frame, without its line ending; `None` once the server closed the connection.
fn next_line(tls: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    match tls.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_owned()),
    }
}

#[test]
fn a_slow_reader_stays_connected_through_a_room_burst_skips_lines_and_gets_its_private_messages() {
    const BURST: usize = 100;
    // The send path of an Internet client holds about a bandwidth-delay product; here
    // 64 KiB, not the megabytes loopback grows to, so the server's queues are what decide.
    let server = TestServer::with_limits(Limits {
        socket_send_buffer: 64 * 1024,
        ..test_limits()
    });
    server.connect().register_ok("slow");
    let mut alice = server.login("alice");
    // 128 KB/s: an ordinary Internet link, far slower than the burst.
    let mut slow = slow_login(&server, "slow", 128_000.0);

    let text = "r".repeat(16_000);
    for i in 0..BURST {
        alice.send(&format!("SAY {i:03} {text}"));
    }
    alice.send("MSG slow after the burst");
    // The burst and the message are all routed once the next reply comes back.
    assert_eq!(alice.request("LIST"), ok("LIST", "2 alice slow"));

    let (mut room, mut skipped, mut private) = (0u64, 0u64, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(private && room + skipped == BURST as u64) {
        assert!(
            Instant::now() < deadline,
            "the burst never finished arriving"
        );
        let Some(line) = next_line(&mut slow) else {
            panic!("the slow reader was disconnected ({room} room lines, {skipped} skipped)");
        };
        match ServerLine::parse(&line).unwrap() {
            ServerLine::Room { .. } => room += 1,
            ServerLine::Skipped { count } => skipped += count,
            ServerLine::From { user, payload } => {
                assert_eq!(
                    (user.as_str(), payload.as_str()),
                    ("alice", "after the burst")
                );
                private = true;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!(
        skipped > 0,
        "nothing was skipped: the test did not slow the reader"
    );
    assert!(room > 0, "the room lines that fit were delivered");
    // Still connected and in order: a reply comes back.
    writeln!(slow.get_mut(), "PING still-here").unwrap();
    assert_eq!(next_line(&mut slow).unwrap(), "PONG still-here");
}

#[test]
fn a_long_ping_token_before_login_is_refused_not_echoed() {
    let server = TestServer::with_limits(Limits {
        anonymous_ping_token: Limits::default().anonymous_ping_token,
        ..test_limits()
    });
    let mut anon = server.connect();
    let short = "t".repeat(64);
    assert_eq!(
        anon.request(&format!("PING {short}")),
        ServerLine::Pong { token: short }
    );
    let long = "t".repeat(65);
    let reply = anon.request(&format!("PING {long}"));
    assert_eq!(err_code(&reply).0, "PING");
    assert_eq!(err_code(&reply).1, "bad-frame");
    // Logged in, the frame limit is the only bound.
    anon.register_ok("alice");
    anon.login_ok("alice");
    let long = "t".repeat(8_000);
    assert_eq!(
        anon.request(&format!("PING {long}")),
        ServerLine::Pong { token: long }
    );
}

#[test]
fn an_anonymous_client_that_never_reads_is_cut_off_at_a_few_kib_of_replies() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_server"));
    command
        .args(common::server_args(
            port,
            &dir.path().join("data"),
            &dir.path().join("certs"),
        ))
        // A path that holds little, as over the Internet: the queue fills, not the kernel.
        .args(["--socket-send-buffer", "65536"]);
    let certs = dir.path().join("certs");
    let server = ServerProcess::start(
        &mut command,
        port,
        certs.join(securechat::tls::DEV_CA_CERT),
        dir.path(),
    );
    let config = securechat::tls::client_config(Some(&server.ca)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    set_receive_buffer(&tcp, 16 * 1024);
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.conn.complete_io(&mut tls.sock).unwrap();

    // The longest token allowed; never a byte read.
    let ping = format!("PING {}\n", "p".repeat(64));
    let mut sent = 0;
    while sent < 200_000 && tls.write_all(ping.as_bytes()).is_ok() {
        sent += 1;
    }
    let deadline = Instant::now() + WAIT;
    let queued = loop {
        let log = server.log();
        let cut = log.lines().find_map(|l| {
            l.split_once("outbound queue full (")?
                .1
                .split_once(" bytes)")
        });
        if let Some((bytes, _)) = cut {
            break bytes.parse::<usize>().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "never cut off after {sent} PINGs:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        queued <= Limits::default().anonymous_queue_bytes,
        "{queued} bytes of replies were queued for a client that had not logged in"
    );
}

#[test]
fn connections_that_have_not_logged_in_are_capped_and_a_login_frees_a_place() {
    let server = TestServer::with_limits(Limits {
        max_anonymous: 2,
        ..test_limits()
    });
    let connect =
        || securechat::client::link::connect(&server.address(), server.client_config()).is_ok();
    let mut first = server.connect();
    let _second = server.connect();
    assert!(
        !connect(),
        "a third connection waiting to log in was admitted"
    );
    first.register_ok("alice");
    first.login_ok("alice");
    // The login thread hands over to the reader just after the reply.
    let deadline = Instant::now() + WAIT;
    while !connect() {
        assert!(Instant::now() < deadline, "a login did not free its place");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn key_exchange_starts_are_limited_per_pair_and_the_excess_is_refused_not_forwarded() {
    let server = TestServer::with_limits(Limits {
        exchange_starts: 3,
        exchange_window: Duration::from_secs(600),
        ..test_limits()
    });
    let mut alice = server.login("alice");
    let mut bob = server.login("bob");
    let mut carol = server.login("carol");
    let init = |n: usize| format!("DH-INIT {n:022}== ffdhe3072 AAAA");
    for n in 0..3 {
        alice.send(&format!("MSG bob {}", init(n)));
        assert_eq!(
            bob.recv(),
            ServerLine::From {
                user: "alice".into(),
                payload: init(n)
            }
        );
    }
    let refused = alice.request(&format!("MSG bob {}", init(3)));
    assert_eq!(err_code(&refused).0, "MSG");
    assert_eq!(err_code(&refused).1, "rate-limited");
    assert!(err_code(&refused).2.starts_with("bob "), "{refused:?}");
    // Nothing reached bob; other payloads to him, and starts with someone else, still pass.
    alice.send("MSG bob E2E after");
    assert_eq!(
        bob.recv(),
        ServerLine::From {
            user: "alice".into(),
            payload: "E2E after".into()
        }
    );
    alice.send(&format!("MSG carol {}", init(4)));
    assert_eq!(
        carol.recv(),
        ServerLine::From {
            user: "alice".into(),
            payload: init(4)
        }
    );
    // Logging in again does not reset the count.
    drop(alice);
    assert_eq!(
        bob.recv(),
        ServerLine::Offline {
            user: "alice".into()
        }
    );
    let mut alice = server.connect();
    alice.login_ok("alice");
    let refused = alice.request(&format!("MSG bob {}", init(5)));
    assert_eq!(err_code(&refused).1, "rate-limited");
    bob.assert_silent(Duration::from_millis(200));
}

#[test]
fn connections_not_logged_in_are_capped_per_network_and_other_networks_still_get_in() {
    let server = TestServer::with_limits(Limits {
        max_anonymous_per_network: 2,
        ..test_limits()
    });
    let connect_from = |source: [u8; 4]| {
        let tcp = connect_from_source(source, server.addr);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(server.client_config(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut greeting = String::new();
        BufReader::new(&mut tls).read_line(&mut greeting).ok()?;
        greeting.starts_with("HELLO ").then_some(tls)
    };
    // 127.0.0.2 and 127.0.0.3 are one /24: two places between them.
    let _a = connect_from([127, 0, 0, 2]).expect("first from the network");
    let _b = connect_from([127, 0, 0, 3]).expect("second from the network");
    assert!(
        connect_from([127, 0, 0, 4]).is_none(),
        "a third from the network got in"
    );
    // 127.0.1.2 is another network.
    assert!(
        connect_from([127, 0, 1, 2]).is_some(),
        "another network was refused"
    );
}

/// A TCP connection to `to` from the loopback address `source`.
fn connect_from_source(source: [u8; 4], to: std::net::SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from = std::net::SocketAddr::from((source, 0));
    socket
        .bind(&from.into())
        .expect("bind to a loopback source address");
    socket.connect(&to.into()).expect("connect");
    let tcp = TcpStream::from(socket);
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp
}

#[test]
fn room_lines_are_charged_by_bytes_times_recipients_and_refused_over_the_budget() {
    let server = TestServer::with_limits(Limits {
        room_fanout_rate: 1_000,
        room_fanout_burst: 45_000,
        ..test_limits()
    });
    let mut alice = server.login("alice");
    let mut bob = server.login("bob");
    let _carol = server.login("carol");
    let text = "s".repeat(10_000);
    // Two recipients: each line costs 20,000 of the 45,000.
    for _ in 0..2 {
        alice.send(&format!("SAY {text}"));
        assert!(matches!(bob.recv(), ServerLine::Room { .. }));
    }
    let refused = alice.request(&format!("SAY {text}"));
    assert_eq!(err_code(&refused).0, "SAY");
    assert_eq!(err_code(&refused).1, "rate-limited");
    bob.assert_silent(Duration::from_millis(200));
    // A short line still fits what is left.
    alice.send("SAY hi");
    assert_eq!(
        bob.recv(),
        ServerLine::Room {
            user: "alice".into(),
            text: "hi".into()
        }
    );
}
