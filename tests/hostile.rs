//! Hostile clients: each test attacks one defence over real TLS and fails if the defence
//! is missing. Authentication, brute force, registration floods, frame floods, connection
//! caps, slow peers, identity binding, and certificate checks on the client side.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::{err_code, ok, test_limits, TestServer, PASSWORD};
use securechat::client::link;
use securechat::protocol::ServerLine;
use securechat::server::Limits;
use securechat::server::ThrottlePolicy;

#[test]
fn odd_passwords_never_log_in() {
    let server = TestServer::with_limits(throttling(ThrottlePolicy {
        account_free_failures: 100,
        ..ThrottlePolicy::default()
    }));
    let mut c = server.connect();
    c.register_ok("alice");
    for password in [
        "null",
        "undefined",
        "\"\"",
        "{\"password\": null}",
        "' OR '1'='1",
        "%00",
        "*",
        &"A".repeat(10_000),
    ] {
        let reply = c.request(&format!("LOGIN alice {password}"));
        assert_eq!(err_code(&reply).1, "auth-failed", "{password:?}");
    }
    // A password that equals the right one up to bcrypt's 72-byte cut is still wrong.
    let long = format!("{PASSWORD}{}", "x".repeat(80));
    assert_eq!(
        err_code(&c.request(&format!("LOGIN alice {long}"))).1,
        "auth-failed"
    );
    assert_eq!(err_code(&c.request("LIST")).1, "not-logged-in");
}

#[test]
fn over_long_user_names_are_refused_cleanly() {
    let server = TestServer::start();
    let mut c = server.connect();
    let name = "a".repeat(5000);
    assert_eq!(
        err_code(&c.request(&format!("REGISTER {name} {PASSWORD}"))).1,
        "bad-username"
    );
    assert_eq!(
        err_code(&c.request(&format!("LOGIN {name} {PASSWORD}"))).1,
        "auth-failed"
    );
}

/// Median time of `n` runs of `f`.
/// The median time of `a` and of `b`, over `n` runs of each taken in turn (a, b, a, b, …),
/// so that both see the same moments of a machine busy with other tests.
fn medians_interleaved(n: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed()
    };
    let (mut times_a, mut times_b): (Vec<Duration>, Vec<Duration>) =
        (0..n).map(|_| (time(&mut a), time(&mut b))).unzip();
    times_a.sort();
    times_b.sort();
    (times_a[n / 2], times_b[n / 2])
}

#[test]
fn unknown_user_and_wrong_password_cost_the_same() {
    // Cost 8 makes one bcrypt take milliseconds, so skipping it for unknown users would
    // show as a many-fold difference; network noise is far smaller.
    let server = TestServer::with(test_limits(), 8);
    let mut c = server.connect();
    c.register_ok("alice");
    let mut d = server.connect();
    let (wrong, unknown) = medians_interleaved(
        9,
        || {
            c.request("LOGIN alice Sturdy pass 2");
        },
        || {
            d.request(&format!("LOGIN nobody_here {PASSWORD}"));
        },
    );
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "unknown user took {unknown:?}, wrong password {wrong:?}: an attacker can tell them apart"
    );
}

fn throttling(policy: ThrottlePolicy) -> Limits {
    Limits {
        throttle: policy,
        ..test_limits()
    }
}

#[test]
fn repeated_failed_logins_are_throttled_then_allowed_again() {
    let server = TestServer::with_limits(throttling(ThrottlePolicy {
        account_free_failures: 3,
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(2),
        ..ThrottlePolicy::default()
    }));
    let mut setup = server.connect();
    setup.register_ok("victim");
    let mut attacker = server.connect();
    for _ in 0..4 {
        let reply = attacker.request("LOGIN victim Wrong pass 1");
        assert_eq!(err_code(&reply).1, "auth-failed");
    }
    // Now even the right password is refused, without a bcrypt check, for a while.
    let reply = attacker.request(&format!("LOGIN victim {PASSWORD}"));
    let (_, code, text) = err_code(&reply);
    assert_eq!(code, "throttled");
    assert!(text.contains("try again in"), "{text}");
    // The lock is bounded: once it expires the owner gets in.
    thread::sleep(Duration::from_millis(1100));
    let mut owner = server.connect();
    owner.login_ok("victim");
}

#[test]
fn logins_fired_in_parallel_cannot_outrun_the_throttle() {
    // bcrypt at cost 10 (tens of ms) so that all the attempts below are in flight at once.
    let server = TestServer::with(
        throttling(ThrottlePolicy {
            account_free_failures: 3,
            first_delay: Duration::from_secs(30),
            ..ThrottlePolicy::default()
        }),
        10,
    );
    let mut setup = server.connect();
    setup.register_ok("victim");
    for _ in 0..3 {
        assert_eq!(
            err_code(&setup.request("LOGIN victim Wrong pass 1")).1,
            "auth-failed"
        );
    }
    // The free failures are used up. Ten guesses sent at once: one may be checked, the
    // others must be refused without bcrypt, not all checked before any failure counts.
    let mut guessers: Vec<_> = (0..10).map(|_| server.connect()).collect();
    for guesser in &guessers {
        guesser.send("LOGIN victim Wrong pass 1");
    }
    let codes: Vec<String> = guessers
        .iter_mut()
        .map(|g| err_code(&g.recv()).1.to_owned())
        .collect();
    let checked = codes.iter().filter(|c| *c == "auth-failed").count();
    assert_eq!(checked, 1, "{codes:?}");
    assert!(
        codes.iter().all(|c| c == "auth-failed" || c == "throttled"),
        "{codes:?}"
    );
}

#[test]
fn throttling_is_the_same_for_unknown_accounts() {
    let server = TestServer::with_limits(throttling(ThrottlePolicy {
        account_free_failures: 2,
        first_delay: Duration::from_secs(30),
        ..ThrottlePolicy::default()
    }));
    let mut c = server.connect();
    c.register_ok("real");
    let answers = |c: &mut common::TestClient, user: &str| -> Vec<String> {
        (0..4)
            .map(|_| {
                err_code(&c.request(&format!("LOGIN {user} Wrong pass 1")))
                    .1
                    .to_owned()
            })
            .collect()
    };
    let real = answers(&mut c, "real");
    let ghost = answers(&mut c, "ghost");
    assert_eq!(
        real,
        ["auth-failed", "auth-failed", "auth-failed", "throttled"]
    );
    assert_eq!(
        real, ghost,
        "throttling must not reveal which accounts exist"
    );
}

#[test]
fn registration_floods_from_one_address_are_limited() {
    let server = TestServer::with_limits(throttling(ThrottlePolicy {
        registrations_burst: 3,
        registration_interval: Duration::from_secs(3600),
        ..ThrottlePolicy::default()
    }));
    let mut c = server.connect();
    for i in 0..3 {
        c.register_ok(&format!("bulk{i}"));
    }
    let reply = c.request(&format!("REGISTER bulk9 {PASSWORD}"));
    assert_eq!(err_code(&reply).1, "throttled");
    // Invalid requests do not use up the allowance (they cost the server nothing).
    let reply = c.request("REGISTER bulk8 weak");
    assert_eq!(err_code(&reply).1, "weak-password");
}

#[test]
fn a_frame_flood_is_rate_limited_per_client_and_others_are_unaffected() {
    let server = TestServer::with_limits(Limits {
        message_rate: 1,
        message_burst: 5,
        ..test_limits()
    });
    let opened = Instant::now();
    let mut flooder = server.login("flooder");
    let mut bob = server.login("bob");
    // Tokens the flooder may have earned since its bucket was filled (1 a second).
    let earned = || opened.elapsed().as_secs() as usize + 1;
    for i in 0..30 {
        flooder.send(&format!("PING {i}"));
    }
    let replies: Vec<ServerLine> = (0..30).map(|_| flooder.recv()).collect();
    let pongs = replies
        .iter()
        .filter(|l| matches!(l, ServerLine::Pong { .. }))
        .count();
    let limited = replies
        .iter()
        .filter(|l| matches!(l, ServerLine::Err { code, .. } if *code == securechat::protocol::ErrorCode::RateLimited))
        .count();
    // The burst of 5 less the two frames that registered and logged in (plus the tokens
    // earned meanwhile: one, unless the machine stalled), then refusals.
    assert!((3..=3 + earned()).contains(&pongs), "{pongs} pongs");
    assert_eq!(pongs + limited, 30);
    // bob has his own bucket.
    assert_eq!(
        bob.request("PING mine"),
        ServerLine::Pong {
            token: "mine".into()
        }
    );
    // Unreadable lines cost tokens too: garbage is no way around the limit.
    for _ in 0..10 {
        flooder.link.send_raw(b"\xff\xfe garbage\n").unwrap();
    }
    let garbage: Vec<ServerLine> = (0..10).map(|_| flooder.recv()).collect();
    let codes: Vec<&str> = garbage.iter().map(|l| err_code(l).1).collect();
    let limited = codes.iter().filter(|c| **c == "rate-limited").count();
    // Each line was refused for the rate, or (with a token earned meanwhile) answered
    // as the bad frame it is; never more of the latter than tokens could have been earned.
    assert!(
        codes
            .iter()
            .all(|c| *c == "rate-limited" || *c == "bad-frame"),
        "{garbage:?}"
    );
    assert!(limited + earned() >= 10, "{garbage:?}");
    // QUIT is never refused.
    flooder.send("QUIT");
    assert!(flooder.drain_until_closed().contains(&ServerLine::Bye {
        reason: "goodbye".into()
    }));
}

#[test]
fn connections_per_address_are_capped() {
    let server = TestServer::with_limits(Limits {
        max_connections_per_ip: 3,
        ..test_limits()
    });
    let first: Vec<_> = (0..3).map(|_| server.connect()).collect();
    let refused = link::connect(&server.address(), server.client_config());
    assert!(
        refused.is_err(),
        "a fourth connection from one address must be refused"
    );
    drop(first);
    // Slots come back once connections close.
    let deadline = Instant::now() + common::WAIT;
    loop {
        if link::connect(&server.address(), server.client_config()).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "slots were never released");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_total_connection_limit_holds() {
    let server = TestServer::with_limits(Limits {
        max_connections: 2,
        ..test_limits()
    });
    let _a = server.connect();
    let _b = server.connect();
    assert!(link::connect(&server.address(), server.client_config()).is_err());
}

#[test]
fn a_logged_in_trickle_without_newlines_hits_the_idle_timeout() {
    let server = TestServer::with_limits(Limits {
        idle_timeout: Duration::from_secs(1),
        ..test_limits()
    });
    let mut slow = server.login("slow");
    // Bytes keep coming, but never a complete frame: the idle timeout must still end it.
    let seen = slow.trickle_until_cut(b"x", Duration::from_secs(4));
    // The BYE may be lost if the close races a byte in flight (the peer then resets).
    assert!(
        seen.iter().all(
            |l| matches!(l, ServerLine::Bye { reason } if reason.contains("nothing received"))
        ),
        "{seen:?}"
    );
}

#[test]
fn a_half_open_tls_handshake_is_cut_off() {
    let server = TestServer::with_limits(Limits {
        handshake_timeout: Duration::from_millis(500),
        ..test_limits()
    });
    let mut socket = TcpStream::connect(server.addr).unwrap();
    // A TLS record header promising 512 bytes, then silence.
    socket.write_all(&[22, 3, 1, 2, 0]).unwrap();
    socket.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut buf = [0u8; 64];
    match socket.read(&mut buf) {
        Ok(0) => {}
        Ok(_) => assert_eq!(buf[0], 21, "expected a close or a TLS alert"),
        // A reset is a close too; a timeout means the server never cut it off.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the half-open handshake was not cut off: {e}"),
    }
}

#[test]
fn the_sender_is_always_the_session_user() {
    let server = TestServer::start();
    let alice = server.login("alice");
    let mut bob = server.login("bob");
    // Attempts to claim another identity inside the frame are just payload text.
    alice.send("MSG bob FROM mallory forged");
    alice.send("SAY ROOM mallory forged");
    assert_eq!(
        bob.recv(),
        ServerLine::From {
            user: "alice".into(),
            payload: "FROM mallory forged".into()
        }
    );
    assert_eq!(
        bob.recv(),
        ServerLine::Room {
            user: "alice".into(),
            text: "ROOM mallory forged".into()
        }
    );
}

#[test]
fn only_the_owner_can_change_an_identity_key() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    let mut bob = server.login("bob");
    use base64::Engine as _;
    let alice_key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
    let bob_key = base64::engine::general_purpose::STANDARD.encode([2u8; 32]);
    assert_eq!(
        alice.request(&format!("SETKEY {alice_key}")),
        ok("SETKEY", "")
    );
    // SETKEY has no user argument: bob can only ever set his own key.
    assert_eq!(
        err_code(&bob.request(&format!("SETKEY alice {bob_key}"))).1,
        "bad-frame"
    );
    assert_eq!(bob.request(&format!("SETKEY {bob_key}")), ok("SETKEY", ""));
    assert_eq!(
        bob.request("GETKEY alice"),
        ok("GETKEY", &format!("alice {alice_key}"))
    );
    // And not before logging in.
    let mut anon = server.connect();
    assert_eq!(
        err_code(&anon.request(&format!("SETKEY {bob_key}"))).1,
        "not-logged-in"
    );
}

#[test]
fn a_user_cannot_end_or_read_another_session_without_the_password() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    let mut mallory = server.login("mallory");
    // Logging in as alice needs alice's password; a failed attempt leaves her session alone.
    let mut other = server.connect();
    assert_eq!(
        err_code(&other.request("LOGIN alice Guess pass 1")).1,
        "auth-failed"
    );
    mallory.send("MSG alice still connected?");
    assert_eq!(
        alice.recv(),
        ServerLine::From {
            user: "mallory".into(),
            payload: "still connected?".into()
        }
    );
    // mallory receives nothing meant for alice.
    let bob = server.login("bob");
    bob.send("MSG alice private");
    alice.recv();
    mallory.assert_silent(Duration::from_millis(300));
}

/// A client configuration that trusts only `ca`.
fn client_trusting(ca: &std::path::Path) -> std::sync::Arc<rustls::ClientConfig> {
    securechat::tls::client_config(Some(ca)).unwrap()
}

#[test]
fn the_client_refuses_an_unknown_ca() {
    let server = TestServer::start();
    let other = tempfile::tempdir().unwrap();
    let other_ca = securechat::tls::ensure_dev_certificates(other.path()).unwrap();
    let err = link::connect(&server.address(), client_trusting(&other_ca.ca))
        .err()
        .expect("an unknown CA must be refused")
        .to_string();
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "{err}"
    );
}

/// A real server whose certificate is made from `leaf` and signed by a fresh CA; returns
/// the server and the CA file a client should trust.
fn server_with_certificate(
    dir: &std::path::Path,
    leaf: rcgen::CertificateParams,
) -> (securechat::server::Server, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let tls = securechat::tls::server_config(
        vec![leaf_cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let server = securechat::server::Server::start(securechat::server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("data"),
        tls,
        bcrypt_cost: 4,
        limits: test_limits(),
        federation: None,
    })
    .unwrap();
    (server, ca_path)
}

#[test]
fn the_client_refuses_a_wrong_host_name() {
    // A valid certificate from a trusted CA, but for another name.
    let dir = tempfile::tempdir().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["chat.example.org".to_owned()]).unwrap();
    let (server, ca) = server_with_certificate(dir.path(), leaf);
    let addr = format!("localhost:{}", server.local_addr().port());
    let err = link::connect(&addr, client_trusting(&ca))
        .err()
        .expect("a certificate for another name must be refused")
        .to_string();
    assert!(
        err.contains("not valid for that name: it is for chat.example.org"),
        "{err}"
    );
    server.shutdown();
}

#[test]
fn the_client_refuses_an_expired_certificate() {
    // A certificate that expired yesterday, from a trusted CA.
    let dir = tempfile::tempdir().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let now = std::time::SystemTime::now();
    leaf.not_before = (now - Duration::from_secs(10 * 86_400)).into();
    leaf.not_after = (now - Duration::from_secs(86_400)).into();
    let (server, ca) = server_with_certificate(dir.path(), leaf);
    let addr = format!("localhost:{}", server.local_addr().port());
    let err = link::connect(&addr, client_trusting(&ca))
        .err()
        .expect("an expired certificate must be refused")
        .to_string();
    assert!(err.contains("certificate expired"), "{err}");
    server.shutdown();
}
