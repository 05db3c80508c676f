//! Protocol tests against a real server over real TLS on loopback: accounts, login rules,
//! presence, delivery, and persistence across a restart.

mod common;

use std::time::Duration;

use common::{err_code, ok, TestServer, PASSWORD};
use securechat::protocol::ServerLine;

/// A server that does not federate announces no name: its clients bind names as before
/// federation (`report/protocol.md` §7.1).
#[test]
fn a_server_that_does_not_federate_announces_no_name() {
    let server = TestServer::start();
    let (link, _, info) =
        securechat::client::link::connect(&server.address(), server.client_config())
            .expect("connect");
    assert_eq!(info.home, None);
    link.close();
}

#[test]
fn register_then_login_and_the_password_is_stored_only_as_bcrypt() {
    let server = TestServer::start();
    let mut alice = server.connect();
    alice.register_ok("alice");
    alice.login_ok("alice");
    let db = std::fs::read(server.data_dir().join("securechat.db")).unwrap();
    let wal = std::fs::read(server.data_dir().join("securechat.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        let haystack = String::from_utf8_lossy(bytes);
        assert!(!haystack.contains(PASSWORD), "plaintext password on disk");
    }
    assert!(
        String::from_utf8_lossy(&wal).contains("$2b$04$")
            || String::from_utf8_lossy(&db).contains("$2b$04$")
    );
}

#[test]
fn weak_passwords_are_rejected_with_every_failed_rule() {
    let server = TestServer::start();
    let mut c = server.connect();
    let reply = c.request("REGISTER alice abc");
    let (command, code, text) = err_code(&reply);
    assert_eq!((command, code), ("REGISTER", "weak-password"));
    for rule in ["at least 8 characters", "an upper-case letter", "a digit"] {
        assert!(text.contains(rule), "{text:?} lacks {rule:?}");
    }
    let reply = c.request("REGISTER alice Alice12345");
    assert!(err_code(&reply)
        .2
        .contains("must not contain the user name"));
    let long = format!("Aa1{}", "x".repeat(80));
    let reply = c.request(&format!("REGISTER alice {long}"));
    assert!(err_code(&reply).2.contains("72 bytes"));
    // Nothing was created: the name is still free.
    c.register_ok("alice");
}

#[test]
fn bad_user_names_are_rejected() {
    let server = TestServer::start();
    let mut c = server.connect();
    for name in ["ab", "9lives", "bad-name", "x".repeat(40).as_str()] {
        let reply = c.request(&format!("REGISTER {name} {PASSWORD}"));
        assert_eq!(err_code(&reply).1, "bad-username", "{name}");
    }
}

#[test]
fn duplicate_registration_is_refused_whatever_the_case() {
    let server = TestServer::start();
    let mut c = server.connect();
    c.register_ok("alice");
    let reply = c.request(&format!("REGISTER ALICE {PASSWORD}"));
    assert_eq!(err_code(&reply).1, "user-exists");
}

#[test]
fn wrong_password_and_unknown_user_get_the_same_answer() {
    let server = TestServer::start();
    let mut c = server.connect();
    c.register_ok("alice");
    let wrong = c.request("LOGIN alice Sturdy pass 2");
    let unknown = c.request(&format!("LOGIN mallory {PASSWORD}"));
    assert_eq!(err_code(&wrong).1, "auth-failed");
    assert_eq!(wrong, unknown, "the two failures must be indistinguishable");
    // Still anonymous: chat commands are refused.
    assert_eq!(err_code(&c.request("LIST")).1, "not-logged-in");
}

#[test]
fn empty_or_missing_password_is_an_error_never_a_login() {
    let server = TestServer::start();
    let mut c = server.connect();
    c.register_ok("alice");
    for line in ["LOGIN alice", "LOGIN alice ", "LOGIN", "LOGIN  "] {
        let reply = c.request(line);
        assert_eq!(err_code(&reply).1, "bad-frame", "{line:?}");
    }
    assert_eq!(err_code(&c.request("LIST")).1, "not-logged-in");
}

#[test]
fn nothing_but_register_login_ping_and_quit_before_login() {
    let server = TestServer::start();
    let _bob = server.login("bob");
    let mut anon = server.connect();
    for (line, command) in [
        ("LIST", "LIST"),
        ("SAY hello", "SAY"),
        ("MSG bob hi", "MSG"),
        ("GETKEY bob", "GETKEY"),
        ("SETKEY AAAA", "SETKEY"),
    ] {
        let reply = anon.request(line);
        assert_eq!(err_code(&reply).0, command);
        assert_eq!(err_code(&reply).1, "not-logged-in", "{line}");
    }
    assert_eq!(
        anon.request("PING x"),
        ServerLine::Pong { token: "x".into() }
    );
    // Public traffic does not reach an anonymous connection.
    let carol = server.login("carol");
    carol.send("SAY anyone there?");
    anon.assert_silent(Duration::from_millis(300));
    assert_eq!(
        anon.request("QUIT"),
        ServerLine::Bye {
            reason: "goodbye".into()
        }
    );
}

#[test]
fn list_shows_who_is_online() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    let _bob = server.login("bob");
    assert_eq!(alice.request("LIST"), ok("LIST", "2 alice bob"));
    // federation: no server is linked yet, so another server's list is unreachable, said
    // in an ERR naming that server first, and the connection goes on.
    let reply = alice.request("LIST b.test");
    assert_eq!(
        err_code(&reply),
        (
            "LIST",
            "unreachable",
            "b.test is not a server this server is linked with"
        )
    );
    assert_eq!(alice.request("LIST"), ok("LIST", "2 alice bob"));
}

#[test]
fn private_messages_reach_only_their_recipient_with_the_true_sender() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    let mut bob = server.login("bob");
    let mut carol = server.login("carol");
    alice.send("MSG Bob hello bob, it's alice");
    assert_eq!(
        bob.recv(),
        ServerLine::From {
            user: "alice".into(),
            payload: "hello bob, it's alice".into()
        }
    );
    // A payload that claims another sender is carried as opaque text, never as the sender.
    carol.send("MSG bob FROM alice forged");
    assert_eq!(
        bob.recv(),
        ServerLine::From {
            user: "carol".into(),
            payload: "FROM alice forged".into()
        }
    );
    alice.assert_silent(Duration::from_millis(200));
    carol.assert_silent(Duration::from_millis(200));
}

#[test]
fn messages_to_offline_or_unknown_users_and_to_oneself_are_errors() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    let reply = alice.request("MSG nobody hi");
    let (command, code, text) = err_code(&reply);
    assert_eq!((command, code), ("MSG", "offline"));
    assert!(text.starts_with("nobody "), "{text}");
    assert_eq!(err_code(&alice.request("MSG alice hi")).1, "self-message");
    assert_eq!(err_code(&alice.request("MSG !!! hi")).1, "no-such-user");
}

#[test]
fn room_messages_reach_everyone_else_and_are_not_echoed() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    let mut bob = server.login("bob");
    let mut carol = server.login("carol");
    alice.send("SAY hello room");
    let expected = ServerLine::Room {
        user: "alice".into(),
        text: "hello room".into(),
    };
    assert_eq!(bob.recv(), expected);
    assert_eq!(carol.recv(), expected);
    alice.assert_silent(Duration::from_millis(200));
}

#[test]
fn a_second_login_takes_over_and_the_old_session_is_told() {
    let server = TestServer::start();
    let mut first = server.login("alice");
    let mut bob = server.login("bob");
    // bob and alice are in a conversation, so bob hears about alice's sessions.
    bob.send("MSG alice hi");
    first.recv();
    let mut second = server.connect();
    second.login_ok("alice");
    let seen = first.drain_until_closed();
    assert_eq!(
        seen,
        vec![ServerLine::Bye {
            reason: "replaced: you logged in from another connection".into()
        }]
    );
    assert_eq!(
        bob.recv(),
        ServerLine::Offline {
            user: "alice".into()
        }
    );
    // Messages now reach the new session.
    bob.send("MSG alice again");
    assert_eq!(
        second.recv(),
        ServerLine::From {
            user: "bob".into(),
            payload: "again".into()
        }
    );
    assert_eq!(second.request("LIST"), ok("LIST", "2 alice bob"));
}

#[test]
fn register_and_login_are_refused_once_logged_in() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    assert_eq!(
        err_code(&alice.request(&format!("LOGIN alice {PASSWORD}"))).1,
        "already-logged-in"
    );
    assert_eq!(
        err_code(&alice.request(&format!("REGISTER zed {PASSWORD}"))).1,
        "already-logged-in"
    );
}

#[test]
fn replies_come_in_request_order() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    alice.send("MSG nobody x");
    alice.send("PING 1");
    alice.send("LIST");
    alice.send("PING 2");
    assert_eq!(err_code(&alice.recv()).1, "offline");
    assert_eq!(alice.recv(), ServerLine::Pong { token: "1".into() });
    assert_eq!(alice.recv(), ok("LIST", "1 alice"));
    assert_eq!(alice.recv(), ServerLine::Pong { token: "2".into() });
}

#[test]
fn identity_keys_are_stored_per_user_and_served() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    let mut bob = server.login("bob");
    let key = "A".repeat(43) + "=";
    assert_eq!(alice.request(&format!("SETKEY {key}")), ok("SETKEY", ""));
    assert_eq!(
        bob.request("GETKEY alice"),
        ok("GETKEY", &format!("alice {key}"))
    );
    assert_eq!(err_code(&bob.request("GETKEY bob")).1, "no-key");
    assert_eq!(err_code(&bob.request("GETKEY nobody")).1, "no-such-user");
    assert_eq!(err_code(&bob.request("SETKEY not-base64!")).1, "bad-key");
}

#[test]
fn accounts_survive_a_restart() {
    let mut server = TestServer::start();
    let mut alice = server.login("alice");
    alice.send("QUIT");
    alice.drain_until_closed();
    server.restart();
    let mut again = server.connect();
    again.login_ok("alice");
    assert_eq!(
        err_code(&again.request(&format!("REGISTER alice {PASSWORD}"))).1,
        "already-logged-in"
    );
    let mut other = server.connect();
    assert_eq!(
        err_code(&other.request(&format!("REGISTER alice {PASSWORD}"))).1,
        "user-exists"
    );
}

#[test]
fn shutdown_tells_every_client() {
    let mut server = TestServer::start();
    let mut alice = server.login("alice");
    let mut anon = server.connect();
    server.stop();
    let bye = ServerLine::Bye {
        reason: "server shutting down".into(),
    };
    assert_eq!(alice.drain_until_closed(), vec![bye.clone()]);
    assert_eq!(anon.drain_until_closed(), vec![bye]);
}

#[test]
fn verbs_are_case_insensitive_and_unknown_ones_are_named() {
    let server = TestServer::start();
    let mut c = server.connect();
    assert_eq!(c.request("ping"), ServerLine::Pong { token: "".into() });
    let reply = c.request("HELP");
    let (command, code, text) = err_code(&reply);
    assert_eq!((command, code), ("-", "unknown-command"));
    assert!(text.contains("\"HELP\""));
}

#[test]
fn the_greeting_announces_the_servers_own_limits() {
    let server = TestServer::with_limits(securechat::server::Limits {
        max_frame: 12_000,
        message_rate: 7,
        message_burst: 9,
        ..common::test_limits()
    });
    let mut tls = common::connect_and_stop_reading(&server);
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut tls), &mut greeting).unwrap();
    assert_eq!(
        greeting,
        "HELLO securechat 1 max-frame=12000 rate=7 burst=9\n"
    );
}
