//! The client binary's own connection upkeep, against a real server: a user who only
//! reads (a busy room, say) must not be cut off by the server's idle timeout.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{ok, test_limits, TestServer, PASSWORD};
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
