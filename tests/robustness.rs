//! Robustness over real sockets: port scans, garbage, plaintext on the TLS port, silent
//! and vanishing peers, a client that stops reading, and many clients at once. After each
//! misbehaviour the server must still serve a full session.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    connect_and_stop_reading, err_code, fill_the_servers_send_path, ok, test_limits, TestServer,
    WAIT,
};
use securechat::protocol::ServerLine;
use securechat::server::Limits;

/// A complete session still works: register, log in, message, list.
fn assert_serves(server: &TestServer, tag: &str) {
    let a = format!("{tag}_a");
    let b = format!("{tag}_b");
    let alice = server.login(&a);
    let mut bob = server.login(&b);
    alice.send(&format!("MSG {b} still here"));
    assert_eq!(
        bob.recv(),
        ServerLine::From {
            user: a.clone(),
            payload: "still here".into()
        }
    );
}

/// Reads from a raw socket until EOF or error; returns what arrived.
fn read_until_closed(mut socket: TcpStream) -> Vec<u8> {
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("server did not close the socket within {WAIT:?}")
            }
            Err(_) => return got,
        }
    }
}

#[test]
fn a_port_scan_connect_and_close_does_not_hurt() {
    let server = TestServer::start();
    for _ in 0..50 {
        drop(TcpStream::connect(server.addr).unwrap());
    }
    assert_serves(&server, "scan");
}

#[test]
fn garbage_bytes_on_the_tls_port_get_an_alert_and_a_close() {
    let server = TestServer::start();
    let mut socket = TcpStream::connect(server.addr).unwrap();
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = socket.write_all(&garbage);
    let reply = read_until_closed(socket);
    // At most a TLS alert record (content type 21) comes back; never any plaintext.
    assert!(
        reply.is_empty() || reply[0] == 21,
        "unexpected reply {reply:?}"
    );
    assert_serves(&server, "garbage");
}

#[test]
fn a_plaintext_http_request_on_the_tls_port_is_refused() {
    let server = TestServer::start();
    let mut socket = TcpStream::connect(server.addr).unwrap();
    socket
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let reply = read_until_closed(socket);
    assert!(
        !String::from_utf8_lossy(&reply).contains("HELLO"),
        "no protocol data may be sent without TLS"
    );
    assert_serves(&server, "http");
}

#[test]
fn a_silent_peer_is_cut_off_and_does_not_delay_other_handshakes() {
    let server = TestServer::with_limits(Limits {
        handshake_timeout: Duration::from_secs(3),
        ..test_limits()
    });
    let silent = TcpStream::connect(server.addr).unwrap();
    let half_handshake = {
        // A ClientHello's first bytes, then nothing.
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(&[22, 3, 1, 0, 200, 1, 0]).unwrap();
        s
    };
    // While both are stuck, others connect, handshake and chat normally: the session
    // completes before the stuck peers' handshake deadline, so it did not wait for them.
    assert_serves(&server, "meanwhile");
    assert!(
        still_open(&silent) && still_open(&half_handshake),
        "the other session should finish while the stuck peers are still waiting"
    );
    read_until_closed(silent);
    read_until_closed(half_handshake);
}

/// Whether the server has not closed `socket` yet (nothing to read, no end of stream).
fn still_open(socket: &TcpStream) -> bool {
    socket.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let open =
        matches!(socket.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    socket.set_nonblocking(false).unwrap();
    open
}

#[test]
fn a_trickle_of_bytes_does_not_hold_a_connection_past_the_login_timeout() {
    let server = TestServer::with_limits(Limits {
        login_timeout: Duration::from_secs(1),
        ..test_limits()
    });
    let mut slow = server.connect();
    // One byte at a time, never a full line: each read succeeds, but no login happens, and
    // the connection must end at the login timeout while the bytes keep coming.
    let seen = slow.trickle_until_cut(b"L", Duration::from_secs(3));
    // The BYE may be lost if the close races a byte in flight (the peer then resets).
    assert!(
        seen.iter()
            .all(|l| matches!(l, ServerLine::Bye { reason } if reason.contains("no login"))),
        "expected a login timeout, saw {seen:?}"
    );
}

#[test]
fn a_client_that_vanishes_mid_login_or_without_quit_is_cleaned_up() {
    let server = TestServer::start();
    let mut setup = server.connect();
    setup.register_ok("ghost");
    setup.register_ok("quitter");
    // Mid-login: the request is sent and the socket dropped before the reply.
    {
        let c = server.connect();
        c.send(&format!("LOGIN ghost {}", common::PASSWORD));
        drop(c);
    }
    // Logged in, then gone without QUIT (no TLS close either).
    {
        let mut c = server.connect();
        c.login_ok("quitter");
        c.link.close();
    }
    let mut watcher = server.login("watcher");
    let deadline = Instant::now() + WAIT;
    loop {
        let list = watcher.request("LIST");
        if list == ok("LIST", "1 watcher") {
            break;
        }
        assert!(Instant::now() < deadline, "stale sessions remain: {list:?}");
        thread::sleep(Duration::from_millis(50));
    }
    assert_serves(&server, "after");
}

#[test]
fn oversized_frames_get_an_error_then_a_close() {
    let server = TestServer::with_limits(Limits {
        max_frame: 1024,
        ..test_limits()
    });
    let mut alice = server.login("alice");
    alice.send(&format!("SAY {}", "x".repeat(2000)));
    let seen = alice.drain_until_closed();
    let first = seen.first().expect("an error before the close");
    assert_eq!(err_code(first).1, "too-long");
    assert_serves(&server, "big");
}

#[test]
fn an_endless_line_without_newline_is_cut_off() {
    let server = TestServer::with_limits(Limits {
        max_frame: 1024,
        ..test_limits()
    });
    let mut c = server.connect();
    let _ = c.link.send_raw(&[b'A'; 4096]);
    let seen = c.drain_until_closed();
    assert_eq!(err_code(&seen[0]).1, "too-long");
}

#[test]
fn invalid_utf8_and_control_characters_are_errors_but_the_session_survives() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    alice.link.send_raw(b"SAY \xff\xfe bad\n").unwrap();
    assert_eq!(err_code(&alice.recv()).1, "bad-frame");
    alice.link.send_raw(b"SAY \x1b[31mred\n").unwrap();
    assert_eq!(err_code(&alice.recv()).1, "bad-frame");
    assert_eq!(alice.request("LIST"), ok("LIST", "1 alice"));
}

#[test]
fn a_client_that_stops_reading_is_disconnected_and_delays_no_one() {
    let server = TestServer::with_limits(Limits {
        outbound_queue_bytes: 64 * 1024,
        ..test_limits()
    });
    let _stalled = server.login("stalled"); // never reads again
    let mut flooder = server.login("flooder");
    let alice = server.login("alice");
    let mut bob = server.login("bob");
    let payload = "p".repeat(8000);

    let mut evicted = false;
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !evicted && Instant::now() < deadline {
        for _ in 0..50 {
            flooder.send(&format!("MSG stalled {payload}"));
            sent += 1;
        }
        // Meanwhile alice and bob talk, unaffected.
        alice.send(&format!("MSG bob ping {sent}"));
        assert_eq!(
            bob.recv(),
            ServerLine::From {
                user: "alice".into(),
                payload: format!("ping {sent}")
            }
        );
        while let Ok(Some(line)) = flooder.reader.recv_timeout(Duration::from_millis(1)) {
            if matches!(&line, ServerLine::Err { code, .. } if *code == securechat::protocol::ErrorCode::Offline)
            {
                evicted = true;
            }
        }
    }
    assert!(
        evicted,
        "the stalled client was never disconnected ({sent} messages sent)"
    );
    flooder.send("LIST");
    // Messages already in flight to the stalled client are refused too; skip those errors.
    let list = flooder.recv_until(|line| matches!(line, ServerLine::Ok { .. }));
    assert_eq!(list, ok("LIST", "3 alice bob flooder"));
}

#[test]
fn twenty_clients_exchange_messages_without_loss_corruption_or_reordering() {
    const CLIENTS: usize = 20;
    const MESSAGES: usize = 200;
    let server = TestServer::start();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| server.login(&format!("user{i:02}")))
        .collect();
    // Everyone stays connected until everyone has received everything, so no one sees a
    // neighbour leave mid-test.
    let all_done = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let all_done = all_done.clone();
            thread::spawn(move || {
                let to = format!("user{:02}", (i + 1) % CLIENTS);
                let from = format!("user{:02}", (i + CLIENTS - 1) % CLIENTS);
                let sender = {
                    let link = client.link.clone();
                    thread::spawn(move || {
                        for seq in 0..MESSAGES {
                            let body = format!("{seq}:{}", checksum_body(i, seq));
                            link.send_line(&format!("MSG {to} {body}")).unwrap();
                        }
                    })
                };
                for seq in 0..MESSAGES {
                    match client.recv() {
                        ServerLine::From { user, payload } => {
                            assert_eq!(user, from);
                            let expected_from = (i + CLIENTS - 1) % CLIENTS;
                            assert_eq!(
                                payload,
                                format!("{seq}:{}", checksum_body(expected_from, seq)),
                                "lost, reordered or corrupted"
                            );
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                sender.join().unwrap();
                all_done.wait();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// A body that depends on sender and sequence, so corruption or mix-ups are visible.
fn checksum_body(sender: usize, seq: usize) -> String {
    let mut x = (sender as u64 + 1) * 1_000_003 + seq as u64;
    (0..8)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            format!("{:x}", x >> 40)
        })
        .collect::<Vec<_>>()
        .join("x")
}

/// Waits until `server` (limited to one connection) admits a new client again.
/// Tries at least once, then until `limit` has passed.
fn admits_a_new_client_within(server: &TestServer, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if securechat::client::link::connect(&server.address(), server.client_config()).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_client_that_stops_reading_then_breaks_tls_cannot_hold_its_slot() {
    // The writer blocks on the full socket holding the write lock; then a corrupt TLS
    // record makes the reader want to send an alert. It must not wait for that lock:
    // it ends the connection, and the slot comes back.
    let server = TestServer::with_limits(Limits {
        max_connections: 1,
        outbound_queue_bytes: 1 << 30,
        ..test_limits()
    });
    let mut tls = connect_and_stop_reading(&server);
    fill_the_servers_send_path(&mut tls);
    assert!(
        !admits_a_new_client_within(&server, Duration::ZERO),
        "the stuck client should hold the only slot before the corrupt record"
    );
    let corrupt_record = [&[0x17u8, 0x03, 0x03, 0x00, 0x20][..], &[0u8; 32]].concat();
    tls.sock.write_all(&corrupt_record).unwrap();
    assert!(
        admits_a_new_client_within(&server, Duration::from_secs(10)),
        "the broken connection still holds the only slot"
    );
}

#[test]
fn a_client_that_stops_reading_is_cut_off_by_the_send_timeout() {
    // Its queue never fills (the limit is huge), so only the send timeout can end it.
    let server = TestServer::with_limits(Limits {
        max_connections: 1,
        outbound_queue_bytes: 1 << 30,
        send_timeout: Duration::from_secs(1),
        ..test_limits()
    });
    let mut tls = connect_and_stop_reading(&server);
    assert!(
        !admits_a_new_client_within(&server, Duration::ZERO),
        "the client should hold the only slot"
    );
    fill_the_servers_send_path(&mut tls);
    assert!(
        admits_a_new_client_within(&server, Duration::from_secs(10)),
        "a client that accepts nothing still holds the only slot"
    );
}
