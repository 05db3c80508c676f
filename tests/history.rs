//! The room's history against a real server over real TLS on loopback, with its real
//! database file: what is replayed at login, to whom, in what order, within what bound,
//! and what a restart keeps.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{err_code, ok, test_limits, TestClient, TestServer, PASSWORD};
use securechat::protocol::ServerLine;
use securechat::server::{Limits, DB_FILE};

/// A server that keeps `keep` room lines.
fn server_keeping(keep: usize) -> TestServer {
    TestServer::with_limits(Limits {
        room_history: keep,
        ..test_limits()
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `user` says each of `texts` in the room, then waits for a `PONG`: the router answers
/// it after the lines, so when this returns they are in the history.
fn say_all(client: &mut TestClient, texts: &[&str]) {
    for text in texts {
        client.send(&format!("SAY {text}"));
    }
    assert_eq!(
        client.request("PING said"),
        ServerLine::Pong {
            token: "said".into()
        }
    );
}

/// Registers `user` on a connection of its own, then connects again, asks for the history
/// and logs in: returns the connection, with `OK HISTORY` and `OK LOGIN` read.
fn login_asking_for_history(server: &TestServer, user: &str) -> TestClient {
    server.connect().register_ok(user);
    let mut client = server.connect();
    let keep = server.limits.room_history.to_string();
    assert_eq!(client.request("HISTORY"), ok("HISTORY", &keep));
    client.login_ok(user);
    client
}

/// The next `n` frames, each of which must be a `HISTORY` line: (time, user, text).
fn history_lines(client: &mut TestClient, n: usize) -> Vec<(u64, String, String)> {
    (0..n)
        .map(|_| match client.recv() {
            ServerLine::History { time, user, text } => (time, user, text),
            other => panic!("expected HISTORY, got {other:?}"),
        })
        .collect()
}

fn texts(lines: &[(u64, String, String)]) -> Vec<&str> {
    lines.iter().map(|(_, _, text)| text.as_str()).collect()
}

/// The rows of the history table in the server's database file, oldest first.
fn stored(server: &TestServer) -> Vec<String> {
    let db = rusqlite::Connection::open(server.data_dir().join(DB_FILE)).unwrap();
    let mut select = db
        .prepare("SELECT sender || ': ' || text FROM room_history ORDER BY id")
        .unwrap();
    let rows = select.query_map([], |row| row.get(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

#[test]
fn the_last_lines_are_replayed_in_order_with_their_times_before_live_lines() {
    let server = server_keeping(3);
    let mut alice = server.login("alice");
    let before = unix_now();
    say_all(&mut alice, &["one", "two", "three  spaced", "four"]);
    let after = unix_now();

    let mut bob = login_asking_for_history(&server, "bob");
    let history = history_lines(&mut bob, 3);
    assert_eq!(texts(&history), ["two", "three  spaced", "four"]);
    for (time, user, _) in &history {
        assert_eq!(user, "alice");
        assert!(
            (before..=after).contains(time),
            "{time} not in {before}..={after}"
        );
    }
    // Then live lines, and no more history.
    say_all(&mut alice, &["live"]);
    assert_eq!(
        bob.recv(),
        ServerLine::Room {
            user: "alice".into(),
            text: "live".into()
        }
    );
    bob.assert_silent(Duration::from_millis(200));
    // The database holds the same last three lines (once the writer is done: a clean
    // shutdown waits for it).
    drop((alice, bob));
    let mut server = server;
    server.stop();
    assert_eq!(
        stored(&server),
        ["alice: three  spaced", "alice: four", "alice: live"]
    );
}

#[test]
fn a_client_that_does_not_ask_gets_no_history_and_history_is_asked_before_login_only() {
    let server = server_keeping(10);
    let mut alice = server.login("alice");
    say_all(&mut alice, &["before carol"]);
    // As an older client does: no HISTORY request, so no HISTORY frame it could not read.
    let mut carol = server.login("carol");
    carol.assert_silent(Duration::from_millis(300));
    let reply = carol.request("HISTORY");
    let (command, code, _) = err_code(&reply);
    assert_eq!((command, code), ("HISTORY", "already-logged-in"));
    say_all(&mut alice, &["after carol"]);
    assert_eq!(
        carol.recv(),
        ServerLine::Room {
            user: "alice".into(),
            text: "after carol".into()
        }
    );
}

#[test]
fn with_history_off_nothing_is_stored_or_replayed_and_what_was_kept_is_deleted() {
    let mut server = server_keeping(5);
    let mut alice = server.login("alice");
    say_all(&mut alice, &["kept for now"]);
    drop(alice);
    server.stop();
    assert_eq!(stored(&server), ["alice: kept for now"]);

    server.limits.room_history = 0;
    server.restart();
    assert!(stored(&server).is_empty(), "a restart with 0 keeps nothing");
    let mut alice = server.connect();
    alice.login_ok("alice");
    say_all(&mut alice, &["not kept"]);
    let mut bob = login_asking_for_history(&server, "bob");
    bob.assert_silent(Duration::from_millis(300));
    server.stop();
    assert!(stored(&server).is_empty(), "{:?}", stored(&server));
}

#[test]
fn history_survives_a_restart_with_its_original_times() {
    let mut server = server_keeping(5);
    let mut alice = server.login("alice");
    say_all(&mut alice, &["before the restart", "second"]);
    let mut bob = login_asking_for_history(&server, "bob");
    let first = history_lines(&mut bob, 2);
    drop((alice, bob));

    server.restart();
    let mut carol = login_asking_for_history(&server, "carol");
    assert_eq!(
        history_lines(&mut carol, 2),
        first,
        "same lines, same times"
    );
    carol.assert_silent(Duration::from_millis(200));
}

#[test]
fn a_line_sent_while_someone_logs_in_reaches_them_once_as_history_or_live_in_order() {
    // alice talks without pause while bob logs in; each of her lines must reach bob
    // exactly once, the history ones first, with no gap between history and live.
    let server = server_keeping(1000);
    let mut alice = server.login("alice");
    server.connect().register_ok("bob");
    say_all(&mut alice, &["000000"]);
    let bob_in = Arc::new(AtomicBool::new(false));
    let talker = {
        let bob_in = bob_in.clone();
        thread::spawn(move || {
            let mut sent = 1;
            let mut after_bob = 0;
            // Until 20 lines after bob is in: those 20 cannot be history.
            while after_bob < 20 {
                alice.send(&format!("SAY {sent:06}"));
                sent += 1;
                if bob_in.load(Ordering::SeqCst) {
                    after_bob += 1;
                }
                thread::sleep(Duration::from_micros(500));
            }
            (alice, sent)
        })
    };
    thread::sleep(Duration::from_millis(20));
    let mut bob = server.connect();
    bob.send("HISTORY");
    bob.send(&format!("LOGIN bob {PASSWORD}"));
    assert_eq!(bob.recv(), ok("HISTORY", "1000"));
    assert_eq!(bob.recv(), ok("LOGIN", "bob"));
    bob_in.store(true, Ordering::SeqCst);
    let (_alice, sent) = talker.join().unwrap();
    let last = sent - 1;

    let (mut history, mut live) = (Vec::new(), Vec::new());
    loop {
        match bob.recv() {
            ServerLine::History { text, .. } => {
                assert!(live.is_empty(), "history after a live line: {text}");
                history.push(text.parse::<u32>().unwrap());
            }
            ServerLine::Room { text, .. } => {
                let n = text.parse::<u32>().unwrap();
                live.push(n);
                if n == last {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let all: Vec<u32> = history.iter().chain(&live).copied().collect();
    let expected: Vec<u32> = (0..=last).collect();
    assert_eq!(all, expected, "lost, repeated or reordered lines");
    assert!(!history.is_empty() && live.len() >= 20);
    eprintln!(
        "{} lines: {} as history, {} live",
        all.len(),
        history.len(),
        live.len()
    );
}

#[test]
fn a_version_1_database_is_upgraded_at_start_and_its_accounts_still_log_in() {
    let mut server = server_keeping(5);
    server.stop();
    // Replace the database with one as version 1 of the server left it: accounts only.
    let path = server.data_dir().join(DB_FILE);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    securechat::files::write_new_file(&path, b"").unwrap();
    {
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE accounts (
                 id             INTEGER PRIMARY KEY,
                 username       TEXT NOT NULL UNIQUE COLLATE NOCASE,
                 password_hash  TEXT NOT NULL,
                 identity_key   TEXT,
                 created_at     INTEGER NOT NULL,
                 last_login_at  INTEGER,
                 key_updated_at INTEGER
             );
             PRAGMA user_version = 1;",
        )
        .unwrap();
        let hash = bcrypt::hash(PASSWORD, 4).unwrap();
        old.execute(
            "INSERT INTO accounts (username, password_hash, created_at) VALUES ('alice', ?1, 1)",
            [hash],
        )
        .unwrap();
    }
    server.restart();
    let mut alice = server.connect();
    alice.login_ok("alice");
    say_all(&mut alice, &["after the upgrade"]);
    let mut bob = login_asking_for_history(&server, "bob");
    assert_eq!(texts(&history_lines(&mut bob, 1)), ["after the upgrade"]);
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(
        version, 4,
        "upgraded through every step, to the federation queues' schema"
    );
}

/// `--room-history` is capped at `MAX_ROOM_HISTORY` (the router keeps that many lines in
/// memory): a larger value is refused at start with a message naming the flag.
#[test]
fn a_room_history_over_the_cap_is_refused_at_start() {
    let too_many = (securechat::server::MAX_ROOM_HISTORY + 1).to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--room-history", &too_many])
        .output()
        .expect("run the server");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--room-history") && said.contains(&too_many),
        "{said}"
    );
}
