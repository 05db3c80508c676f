//! Abuse by ordinary and anonymous users, over real TLS: lockouts turned on others,
//! login floods that starve everyone's logins, and database files other local users can
//! read. Each test fails without the defence it names.

mod common;

use std::time::Duration;

use common::{err_code, test_limits, TestServer, PASSWORD};
use securechat::server::Limits;
use securechat::throttle::ThrottlePolicy;

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
