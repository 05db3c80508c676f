//! Shutdown ends every connection, even one whose client stopped reading and so keeps its
//! writer thread blocked on a full socket.
//!
//! One test in its own binary, because it counts this process's writer threads and other
//! tests' servers would add theirs.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{connect_and_stop_reading, fill_the_servers_send_path, test_limits, TestServer};
use securechat::server::Limits;

/// Writer threads (one per open connection) of every server in this process.
fn writer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with("writer-"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn shutdown_cuts_off_a_client_that_stopped_reading() {
    let mut server = TestServer::with_limits(Limits {
        outbound_queue_bytes: 1 << 30,
        ..test_limits()
    });
    // A client that reads none of the replies to its PINGs: its writer blocks.
    let mut tls = connect_and_stop_reading(&server);
    fill_the_servers_send_path(&mut tls);
    assert_eq!(writer_threads(), 1, "the stuck client's writer is running");

    let started = Instant::now();
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while writer_threads() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        writer_threads(),
        0,
        "a writer outlived the shutdown ({:?})",
        started.elapsed()
    );
    drop(tls);
}
