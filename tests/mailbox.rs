//! Offline delivery against a real server over real TLS on loopback, with its real
//! database file: messages to offline users queued, replayed at login until acknowledged,
//! receipts, quota, expiry, one-time prekeys handed out once under concurrent fetches, the
//! fetch budget, the opt-in, and — with the real server binary — `kill -9` while
//! acknowledgements are being stored.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use common::{err_code, ok, test_limits, ServerProcess, TestClient, TestServer};
use securechat::protocol::{DeliveryState, OneTimePrekey, Refusal, ServerLine};
use securechat::server::Limits;

/// A server with these mailbox limits.
fn server_with(ttl: Duration, max: u64, bytes: u64) -> TestServer {
    TestServer::with_limits(Limits {
        queue_ttl: ttl,
        queue_max: max,
        queue_max_bytes: bytes,
        ..test_limits()
    })
}

/// Opts in and logs in as `user` (already registered); `OK MAILBOX` and `OK LOGIN` read.
fn mailbox_login(connect: impl FnOnce() -> TestClient, user: &str) -> TestClient {
    let mut client = connect();
    match client.request("MAILBOX") {
        ServerLine::Ok { command, detail } if command.verb() == "MAILBOX" => {
            assert_eq!(detail.split(' ').count(), 3, "{detail}");
        }
        other => panic!("expected OK MAILBOX, got {other:?}"),
    }
    client.login_ok(user);
    client
}

/// Every line up to the `PONG` of a `PING` sent now: the router sends it after whatever
/// this connection was owed before it.
fn lines_until_pong(client: &mut TestClient, token: &str) -> Vec<ServerLine> {
    client.send(&format!("PING {token}"));
    let mut lines = Vec::new();
    loop {
        match client.recv() {
            ServerLine::Pong { token: t } if t == token => return lines,
            line => lines.push(line),
        }
    }
}

/// The ids and payloads of the `MAIL` lines among `lines`, in order.
fn mail(lines: &[ServerLine]) -> Vec<(u64, String)> {
    lines
        .iter()
        .filter_map(|l| match l {
            ServerLine::Mail { id, payload, .. } => Some((*id, payload.clone())),
            _ => None,
        })
        .collect()
}

/// Sends `SEND <to> <reference> <payload>` and returns the id from `STATUS … queued`.
fn send_queued(client: &mut TestClient, to: &str, reference: &str, payload: &str) -> u64 {
    match client.request(&format!("SEND {to} {reference} {payload}")) {
        ServerLine::Status {
            reference: r,
            state: DeliveryState::Queued { id },
            user,
        } if r == reference && user == to => id,
        other => panic!("expected STATUS {reference} queued {to}, got {other:?}"),
    }
}

fn status(reference: &str, state: DeliveryState, user: &str) -> ServerLine {
    ServerLine::Status {
        reference: reference.into(),
        state,
        user: user.into(),
    }
}

#[test]
fn messages_to_an_offline_user_are_queued_replayed_in_order_until_acknowledged() {
    let server = TestServer::start();
    server.connect().register_ok("alice");
    server.connect().register_ok("bob");
    let mut alice = mailbox_login(|| server.connect(), "alice");
    let ids: Vec<u64> = (0..5)
        .map(|i| {
            send_queued(
                &mut alice,
                "bob",
                &format!("r{i}"),
                &format!("RATCHET m{i}"),
            )
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    // At login, in id order, with the sender and the queueing time.
    let mut bob = mailbox_login(|| server.connect(), "bob");
    let lines = lines_until_pong(&mut bob, "1");
    let expected: Vec<(u64, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, format!("RATCHET m{i}")))
        .collect();
    assert_eq!(mail(&lines), expected);
    assert!(lines.iter().all(
        |l| matches!(l, ServerLine::Mail { sender, time, .. } if sender == "alice" && *time > 0)
    ));

    // Not acknowledged: all again at the next login. Two acknowledged: not after that.
    drop(bob);
    let mut bob = mailbox_login(|| server.connect(), "bob");
    assert_eq!(mail(&lines_until_pong(&mut bob, "2")), expected);
    bob.send(&format!("ACK {}", ids[0]));
    bob.send(&format!("ACK {}", ids[3]));
    // Acknowledging again, or someone else's id, is a silent no-op.
    bob.send(&format!("ACK {}", ids[0]));
    bob.send("ACK 999999");
    assert!(mail(&lines_until_pong(&mut bob, "3")).is_empty());
    drop(bob);
    let mut bob = mailbox_login(|| server.connect(), "bob");
    let left: Vec<u64> = mail(&lines_until_pong(&mut bob, "4"))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, [ids[1], ids[2], ids[4]]);

    // Alice was told of the two deliveries as they happened.
    assert_eq!(
        lines_until_pong(&mut alice, "a"),
        [
            status("r0", DeliveryState::Delivered, "bob"),
            status("r3", DeliveryState::Delivered, "bob")
        ]
    );
    // Online and opted in: delivered live, once.
    let id = send_queued(&mut alice, "bob", "live", "RATCHET now");
    let live = bob.recv();
    assert!(
        matches!(&live, ServerLine::Mail { id: i, sender, payload, .. } if *i == id && sender == "alice" && payload == "RATCHET now"),
        "{live:?}"
    );
    assert!(mail(&lines_until_pong(&mut bob, "5")).is_empty());
}

#[test]
fn the_sender_sees_delivered_live_or_at_its_next_login_until_it_acknowledges_the_status() {
    let server = TestServer::start();
    server.connect().register_ok("alice");
    server.connect().register_ok("bob");
    let mut alice = mailbox_login(|| server.connect(), "alice");
    let first = send_queued(&mut alice, "bob", "one", "RATCHET a");
    let second = send_queued(&mut alice, "bob", "two", "RATCHET b");

    // Alice online: `delivered` arrives live.
    let mut bob = mailbox_login(|| server.connect(), "bob");
    assert_eq!(mail(&lines_until_pong(&mut bob, "1")).len(), 2);
    bob.send(&format!("ACK {first}"));
    assert_eq!(alice.recv(), status("one", DeliveryState::Delivered, "bob"));

    // Alice offline: stored, sent at each login until ACKSTATUS.
    drop(alice);
    bob.send(&format!("ACK {second}"));
    let _ = lines_until_pong(&mut bob, "2");
    for round in 0..2 {
        let mut alice = mailbox_login(|| server.connect(), "alice");
        let lines = lines_until_pong(&mut alice, "x");
        assert_eq!(
            lines,
            [
                status("one", DeliveryState::Delivered, "bob"),
                status("two", DeliveryState::Delivered, "bob")
            ],
            "round {round}"
        );
    }
    let mut alice = mailbox_login(|| server.connect(), "alice");
    let _ = lines_until_pong(&mut alice, "y");
    alice.send("ACKSTATUS one");
    alice.send("ACKSTATUS one");
    assert!(lines_until_pong(&mut alice, "z").is_empty());
    drop(alice);
    let mut alice = mailbox_login(|| server.connect(), "alice");
    assert_eq!(
        lines_until_pong(&mut alice, "w"),
        [status("two", DeliveryState::Delivered, "bob")]
    );
}

#[test]
fn refusals_store_nothing_quota_counts_messages_and_bytes() {
    let server = server_with(Duration::from_secs(3600), 3, 40);
    for user in ["alice", "bob", "carol"] {
        server.connect().register_ok(user);
    }
    let mut alice = mailbox_login(|| server.connect(), "alice");
    let refused = |reason| DeliveryState::Refused(reason);
    assert_eq!(
        alice.request("SEND nobody_here r1 x"),
        status("r1", refused(Refusal::NoSuchUser), "nobody_here")
    );
    assert_eq!(
        alice.request("SEND alice r2 x"),
        status("r2", refused(Refusal::ToSelf), "alice")
    );
    // Three messages fit; the fourth is over the count.
    for i in 0..3 {
        send_queued(&mut alice, "bob", &format!("q{i}"), "RATCHET x");
    }
    assert_eq!(
        alice.request("SEND bob q3 RATCHET x"),
        status("q3", refused(Refusal::Quota), "bob")
    );
    // 40 bytes: a 30-byte message fits, a second does not.
    let payload = "p".repeat(30);
    send_queued(&mut alice, "carol", "b1", &payload);
    assert_eq!(
        alice.request(&format!("SEND carol b2 {payload}")),
        status("b2", refused(Refusal::Quota), "carol")
    );
    // Bad references are frame errors.
    let reply = alice.request("SEND bob a.b x");
    assert_eq!(err_code(&reply).0, "SEND");
    assert_eq!(err_code(&reply).1, "bad-frame");
    // Bob gets exactly what was queued.
    let mut bob = mailbox_login(|| server.connect(), "bob");
    assert_eq!(mail(&lines_until_pong(&mut bob, "1")).len(), 3);
}

#[test]
fn an_expired_message_becomes_an_expired_receipt_and_is_not_delivered() {
    let server = server_with(Duration::from_secs(1), 1000, 1 << 20);
    server.connect().register_ok("alice");
    server.connect().register_ok("bob");
    let mut alice = mailbox_login(|| server.connect(), "alice");
    send_queued(&mut alice, "bob", "old", "RATCHET x");
    // The expiry thread runs every second: alice, online, is told live.
    assert_eq!(
        alice.recv_until(|l| matches!(l, ServerLine::Status { .. })),
        status("old", DeliveryState::Expired, "bob")
    );
    let mut bob = mailbox_login(|| server.connect(), "bob");
    assert!(mail(&lines_until_pong(&mut bob, "1")).is_empty());
    // And it stays stored for alice until she acknowledges it.
    drop(alice);
    let mut alice = mailbox_login(|| server.connect(), "alice");
    assert_eq!(
        lines_until_pong(&mut alice, "2"),
        [status("old", DeliveryState::Expired, "bob")]
    );
}

/// `owner` stores a record and `n` one-time prekeys (ids 1..=n).
fn publish_prekeys(client: &mut TestClient, n: u32) {
    assert_eq!(client.request("SETPREKEY UkVDT1JE"), ok("SETPREKEY", "0"));
    let items: Vec<String> = (1..=n).map(|i| format!("{i}:T1BL{i:04}")).collect();
    assert_eq!(
        client.request(&format!("ADDPREKEYS {}", items.join(" "))),
        ok("ADDPREKEYS", &n.to_string())
    );
}

#[test]
fn each_one_time_prekey_is_handed_out_once_under_concurrent_fetches() {
    const FETCHERS: usize = 8;
    const EACH: usize = 6;
    const PREKEYS: u32 = 40;
    let server = TestServer::start();
    server.connect().register_ok("bob");
    let mut bob = mailbox_login(|| server.connect(), "bob");
    publish_prekeys(&mut bob, PREKEYS);
    // Duplicates of stored ids are ignored.
    assert_eq!(
        bob.request("ADDPREKEYS 1:QUFB 2:QUFB"),
        ok("ADDPREKEYS", &PREKEYS.to_string())
    );
    let mut fetchers: Vec<TestClient> = (0..FETCHERS)
        .map(|i| {
            let user = format!("fetcher{i}");
            server.connect().register_ok(&user);
            mailbox_login(|| server.connect(), &user)
        })
        .collect();
    let barrier = Arc::new(Barrier::new(FETCHERS));
    let got = Arc::new(Mutex::new(Vec::new()));
    thread::scope(|scope| {
        for client in &mut fetchers {
            let (barrier, got) = (barrier.clone(), got.clone());
            scope.spawn(move || {
                barrier.wait();
                for _ in 0..EACH {
                    match client.request("BUNDLE bob") {
                        ServerLine::Bundle {
                            user,
                            record,
                            one_time,
                        } => {
                            assert_eq!((user.as_str(), record.as_str()), ("bob", "UkVDT1JE"));
                            got.lock().unwrap().push(one_time);
                        }
                        other => panic!("expected BUNDLE, got {other:?}"),
                    }
                }
            });
        }
    });
    let got = got.lock().unwrap().clone();
    let handed: Vec<&OneTimePrekey> = got.iter().flatten().collect();
    let ids: HashSet<u32> = handed.iter().map(|k| k.id).collect();
    assert_eq!(handed.len(), PREKEYS as usize, "every prekey handed out");
    assert_eq!(ids.len(), handed.len(), "no prekey handed out twice");
    assert_eq!(got.len() - handed.len(), FETCHERS * EACH - PREKEYS as usize);
    assert!(handed.iter().all(|k| k.key == format!("T1BL{:04}", k.id)));
    // The owner was told to refill once below 35, down to 0.
    let prekeys: Vec<u32> = lines_until_pong(&mut bob, "1")
        .into_iter()
        .filter_map(|l| match l {
            ServerLine::Prekeys { count } => Some(count),
            _ => None,
        })
        .collect();
    assert!(prekeys.contains(&34) && prekeys.contains(&0), "{prekeys:?}");
    // At login, the owner is told how many are left.
    drop(bob);
    let mut bob = mailbox_login(|| server.connect(), "bob");
    assert_eq!(bob.recv(), ServerLine::Prekeys { count: 0 });
}

#[test]
fn bundle_fetches_are_limited_per_account_across_its_connections_and_errors_name_the_user() {
    let server = TestServer::start();
    for user in ["alice", "bob", "carol"] {
        server.connect().register_ok(user);
    }
    let mut bob = mailbox_login(|| server.connect(), "bob");
    publish_prekeys(&mut bob, 1);
    let mut alice = mailbox_login(|| server.connect(), "alice");
    let reply = alice.request("BUNDLE carol");
    assert_eq!(
        err_code(&reply),
        (
            "BUNDLE",
            "no-prekeys",
            "carol carol has not set up offline messages"
        )
    );
    let reply = alice.request("BUNDLE nobody_here");
    assert_eq!(err_code(&reply).1, "no-such-user");
    // Two used above; 28 more fit in the budget of 30, the next does not.
    for _ in 0..28 {
        assert!(matches!(
            alice.request("BUNDLE bob"),
            ServerLine::Bundle { .. }
        ));
    }
    let reply = alice.request("BUNDLE bob");
    assert_eq!(err_code(&reply).1, "rate-limited");
    assert!(err_code(&reply).2.starts_with("bob "));
    // A new connection does not bring a new budget: it is the account's.
    drop(alice);
    let mut alice = mailbox_login(|| server.connect(), "alice");
    let reply = alice.request("BUNDLE bob");
    assert_eq!(err_code(&reply).1, "rate-limited");
    // Another account's budget is its own.
    let mut carol = mailbox_login(|| server.connect(), "carol");
    assert!(matches!(
        carol.request("BUNDLE bob"),
        ServerLine::Bundle { .. }
    ));
}

#[test]
fn a_connection_without_mailbox_gets_no_mailbox_line_and_its_requests_are_refused() {
    let server = TestServer::start();
    server.connect().register_ok("alice");
    server.connect().register_ok("bob");
    // Bob, not opted in, has mail, a record and a receipt waiting.
    let mut alice = mailbox_login(|| server.connect(), "alice");
    send_queued(&mut alice, "bob", "r1", "RATCHET x");
    let mut bob = server.connect();
    bob.login_ok("bob");
    assert!(lines_until_pong(&mut bob, "1").is_empty());
    for request in [
        "SETPREKEY UkVD",
        "ADDPREKEYS 1:QUFB",
        "BUNDLE alice",
        "SEND alice r1 x",
        "ACK 1",
        "ACKSTATUS r1",
    ] {
        let reply = bob.request(request);
        let verb = request.split(' ').next().unwrap();
        assert_eq!(
            err_code(&reply),
            (
                verb,
                "bad-frame",
                "send MAILBOX before LOGIN to use the mailbox"
            ),
        );
    }
    // A live message for bob is not sent to this connection either.
    send_queued(&mut alice, "bob", "r2", "RATCHET y");
    assert!(lines_until_pong(&mut bob, "2").is_empty());
    // MAILBOX after login, or twice, is refused.
    let reply = bob.request("MAILBOX");
    assert_eq!(err_code(&reply).1, "already-logged-in");
    let mut again = server.connect();
    assert!(matches!(again.request("MAILBOX"), ServerLine::Ok { .. }));
    assert_eq!(err_code(&again.request("MAILBOX")).1, "already-logged-in");
}

#[test]
fn kill_9_while_acknowledgements_are_stored_loses_nothing_and_repeats_nothing_acknowledged() {
    const MESSAGES: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(dir.path(), &[]);
    server.connect().register_ok("alice");
    server.connect().register_ok("bob");
    let mut alice = mailbox_login(|| server.connect(), "alice");
    let ids: Vec<u64> = (0..MESSAGES)
        .map(|i| send_queued(&mut alice, "bob", &format!("m{i}"), &format!("RATCHET {i}")))
        .collect();
    drop(alice);

    // Bob acknowledges one at a time; a PONG after an ACK proves it committed (the reader
    // stores the ACK before it handles the PING). The server is killed part-way.
    let mut bob = mailbox_login(|| server.connect(), "bob");
    let replayed = mail(&lines_until_pong(&mut bob, "start"));
    assert_eq!(replayed.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let acker = {
        let (ids, confirmed, sent) = (ids.clone(), confirmed.clone(), sent.clone());
        thread::spawn(move || {
            for id in ids {
                sent.lock().unwrap().push(id);
                if bob.link.send_line(&format!("ACK {id}")).is_err()
                    || bob.link.send_line(&format!("PING {id}")).is_err()
                {
                    return;
                }
                match bob.reader.recv_timeout(Duration::from_secs(5)) {
                    Ok(Some(ServerLine::Pong { .. })) => confirmed.lock().unwrap().push(id),
                    _ => return,
                }
            }
        })
    };
    while confirmed.lock().unwrap().len() < MESSAGES / 3 {
        thread::sleep(Duration::from_millis(2));
    }
    server.kill9();
    acker.join().unwrap();
    let confirmed: HashSet<u64> = confirmed.lock().unwrap().iter().copied().collect();
    let sent: HashSet<u64> = sent.lock().unwrap().iter().copied().collect();
    assert!(
        confirmed.len() < MESSAGES,
        "the server was killed before all were acknowledged"
    );

    let server = ServerProcess::spawn(dir.path(), &[]);
    let mut bob = mailbox_login(|| server.connect(), "bob");
    let again: Vec<u64> = mail(&lines_until_pong(&mut bob, "after"))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let unique: HashSet<u64> = again.iter().copied().collect();
    assert_eq!(
        unique.len(),
        again.len(),
        "a message delivered twice: {again:?}"
    );
    for id in &ids {
        if confirmed.contains(id) {
            assert!(!unique.contains(id), "acknowledged {id} came back");
        } else if !sent.contains(id) {
            assert!(unique.contains(id), "unacknowledged {id} was lost");
        }
        // An ACK sent but unconfirmed when the server died may or may not have committed.
    }
    assert!(again.windows(2).all(|w| w[0] < w[1]), "in id order");
    // Alice is told `delivered` for exactly the acknowledged ones that committed.
    let mut alice = mailbox_login(|| server.connect(), "alice");
    let delivered: HashSet<String> = lines_until_pong(&mut alice, "r")
        .into_iter()
        .filter_map(|l| match l {
            ServerLine::Status {
                reference,
                state: DeliveryState::Delivered,
                ..
            } => Some(reference),
            _ => None,
        })
        .collect();
    assert_eq!(delivered.len() + unique.len(), MESSAGES);
}

/// The issue's end-to-end durability claim, at the wire: alice sends 1,000 messages to
/// offline bob and the server is killed with `kill -9` at a random point among them. Alice
/// then sends again, byte for byte with the same references, every message the server had
/// not confirmed (`STATUS … queued`) — what the reference client does from its mailbox file
/// at its next connection — and one it had confirmed, as a client that died before saving the
/// confirmation would. Bob logs in: all 1,000 arrive, each exactly once, in the order sent;
/// none is lost, whichever SEND the kill cut, and none is stored twice.
#[test]
fn kill_9_at_a_random_point_among_1000_sends_loses_none_and_a_resend_is_stored_once() {
    const MESSAGES: usize = 1_000;
    let kill_after = rand::random_range(1..MESSAGES - 1);
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(dir.path(), &[]);
    server.connect().register_ok("alice");
    server.connect().register_ok("bob");

    let frames: Vec<(String, String)> = (0..MESSAGES)
        .map(|i| (format!("r{i}"), format!("RATCHET message-{i}")))
        .collect();
    let confirmed = Arc::new(Mutex::new(HashSet::new()));
    let mut alice = mailbox_login(|| server.connect(), "alice");
    let sender = {
        let (frames, confirmed) = (frames.clone(), confirmed.clone());
        thread::spawn(move || {
            for (reference, payload) in frames {
                if alice
                    .link
                    .send_line(&format!("SEND bob {reference} {payload}"))
                    .is_err()
                {
                    return;
                }
                match alice.reader.recv_timeout(Duration::from_secs(5)) {
                    Ok(Some(ServerLine::Status {
                        reference: r,
                        state: DeliveryState::Queued { .. },
                        ..
                    })) if r == reference => {
                        confirmed.lock().unwrap().insert(reference);
                    }
                    _ => return,
                }
            }
        })
    };
    while confirmed.lock().unwrap().len() < kill_after {
        thread::sleep(Duration::from_millis(1));
    }
    server.kill9();
    sender.join().unwrap();
    let confirmed = confirmed.lock().unwrap().clone();
    assert!(
        confirmed.len() < MESSAGES,
        "killed before the last was confirmed"
    );

    let server = ServerProcess::spawn(dir.path(), &[]);
    let mut alice = mailbox_login(|| server.connect(), "alice");
    // Also the last confirmed one, as a client that died before saving its confirmation
    // would: the server must not store it twice.
    let last_confirmed = confirmed.len() - 1;
    let mut again = 0;
    for (i, (reference, payload)) in frames.iter().enumerate() {
        if i == last_confirmed || !confirmed.contains(reference) {
            send_queued(&mut alice, "bob", reference, payload);
            again += 1;
        }
    }
    assert_eq!(again, MESSAGES - confirmed.len() + 1);

    let mut bob = mailbox_login(|| server.connect(), "bob");
    let delivered = mail(&lines_until_pong(&mut bob, "after"));
    let payloads: Vec<&str> = delivered.iter().map(|(_, p)| p.as_str()).collect();
    let expected: Vec<&str> = frames.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        payloads.len(),
        MESSAGES,
        "killed after {kill_after} confirmations: {} of {MESSAGES} delivered",
        payloads.len()
    );
    assert_eq!(payloads, expected, "each once, in the order sent");
    assert!(
        delivered.windows(2).all(|w| w[0].0 < w[1].0),
        "ids increase"
    );
}

/// `ACK <id> unreadable`: the message is gone from the queue as with a plain `ACK`, and its
/// sender is told `unreadable` (live, and until `ACKSTATUS`), so its client can start a new
/// session and send the text again; a re-send of the same reference is answered the same.
#[test]
fn a_message_acknowledged_as_unreadable_tells_its_sender_so() {
    let server = TestServer::start();
    server.connect().register_ok("alice");
    server.connect().register_ok("bob");
    let mut alice = mailbox_login(|| server.connect(), "alice");
    let id = send_queued(&mut alice, "bob", "lost", "RATCHET garbled");
    let mut bob = mailbox_login(|| server.connect(), "bob");
    assert_eq!(mail(&lines_until_pong(&mut bob, "1")).len(), 1);
    bob.send(&format!("ACK {id} unreadable"));
    assert_eq!(
        alice.recv(),
        status("lost", DeliveryState::Unreadable, "bob")
    );
    assert!(mail(&lines_until_pong(&mut bob, "2")).is_empty());
    drop(bob);
    let mut bob = mailbox_login(|| server.connect(), "bob");
    assert!(
        mail(&lines_until_pong(&mut bob, "3")).is_empty(),
        "not replayed"
    );
    assert_eq!(
        alice.request("SEND bob lost RATCHET garbled"),
        status("lost", DeliveryState::Unreadable, "bob")
    );
    drop(alice);
    let mut alice = mailbox_login(|| server.connect(), "alice");
    assert_eq!(
        lines_until_pong(&mut alice, "4"),
        [status("lost", DeliveryState::Unreadable, "bob")]
    );
}

/// The size bounds on what a client may store: a prekey record of at most 4,096 bytes and
/// one-time prekeys of at most 512, each as base64; anything else is `bad-key` and nothing
/// of the frame is stored.
#[test]
fn prekey_records_and_one_time_prekeys_are_bounded_in_size() {
    use base64::Engine as _;
    let b64 = |len: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; len]);
    let server = TestServer::start();
    server.connect().register_ok("bob");
    let mut bob = mailbox_login(|| server.connect(), "bob");
    assert_eq!(
        bob.request(&format!("SETPREKEY {}", b64(4096))),
        ok("SETPREKEY", "0")
    );
    for bad in [b64(4097), "not*base64".to_owned()] {
        let reply = bob.request(&format!("SETPREKEY {bad}"));
        assert_eq!(err_code(&reply).0, "SETPREKEY");
        assert_eq!(err_code(&reply).1, "bad-key");
    }
    let reply = bob.request(&format!("ADDPREKEYS 1:{} 2:{}", b64(512), b64(513)));
    assert_eq!(err_code(&reply).1, "bad-key");
    assert_eq!(
        bob.request(&format!("ADDPREKEYS 1:{}", b64(512))),
        ok("ADDPREKEYS", "1"),
        "nothing of the refused frame was stored"
    );
}

/// A client that lost its mailbox file publishes a record with a new identity DH key: the
/// one-time prekeys its old mailbox left on the server are void (nobody holds their
/// secrets), so the server deletes them with the record's replacement and says `OK
/// SETPREKEY 0`; the new keys, with the same ids as the old ones, are stored and handed
/// out. A weekly rotation (same identity DH key, new signed prekey) keeps them.
#[test]
fn a_new_mailbox_voids_the_one_time_prekeys_its_lost_predecessor_left() {
    use base64::Engine as _;
    use securechat::e2e::{Group, IdentityDhKey, IdentityKey, PrekeyBundle, SignedPrekey};
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    let group = Group::Ffdhe2048;
    let identity = IdentityKey::generate().unwrap();
    let record = |dh: &IdentityDhKey, spk: u32| {
        let signed = SignedPrekey::generate(&identity, "bob", spk, group).unwrap();
        b64(PrekeyBundle::new(dh, &signed, None).to_bytes())
    };
    let first_dh = IdentityDhKey::generate(&identity, "bob", group).unwrap();
    let server = TestServer::start();
    server.connect().register_ok("bob");
    server.connect().register_ok("alice");
    let mut bob = mailbox_login(|| server.connect(), "bob");
    let mut alice = mailbox_login(|| server.connect(), "alice");
    let set = |bob: &mut TestClient, record: &str| bob.request(&format!("SETPREKEY {record}"));
    assert_eq!(set(&mut bob, &record(&first_dh, 1)), ok("SETPREKEY", "0"));
    assert_eq!(
        bob.request("ADDPREKEYS 1:T0xEMQ== 2:T0xEMg== 3:T0xEMw=="),
        ok("ADDPREKEYS", "3")
    );
    // Rotation: the same mailbox, its one-time prekeys kept.
    assert_eq!(set(&mut bob, &record(&first_dh, 2)), ok("SETPREKEY", "3"));
    // A new mailbox: the old one-time prekeys are void.
    let second_dh = IdentityDhKey::generate(&identity, "bob", group).unwrap();
    let second = record(&second_dh, 1);
    assert_eq!(set(&mut bob, &second), ok("SETPREKEY", "0"));
    let fetch = |alice: &mut TestClient| match alice.request("BUNDLE bob") {
        ServerLine::Bundle {
            record, one_time, ..
        } => (record, one_time.map(|k| (k.id, k.key))),
        other => panic!("expected BUNDLE, got {other:?}"),
    };
    assert_eq!(fetch(&mut alice), (second.clone(), None));
    // Bob is told he has none left, as after any fetch that leaves him short.
    assert_eq!(bob.recv(), ServerLine::Prekeys { count: 0 });
    assert_eq!(bob.request("ADDPREKEYS 1:TkVXMQ=="), ok("ADDPREKEYS", "1"));
    assert_eq!(
        fetch(&mut alice),
        (second, Some((1, "TkVXMQ==".to_owned())))
    );
}
