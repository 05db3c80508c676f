//! Faults, with the real server binary: `kill -9` in the middle of a registration storm
//! loses no acknowledged account and leaves a sound database; a corrupt database stops
//! the server with a clear error and is left untouched; a full disk fails the request that
//! needed it while logged-in users go on chatting; a read-only data directory is a clear
//! error at start.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{err_code, free_port, server_args, ServerProcess, PASSWORD};
use securechat::client::link;
use securechat::protocol::ServerLine;

const SERVER: &str = env!("CARGO_BIN_EXE_server");

#[test]
fn kill_9_during_a_registration_storm_loses_no_acknowledged_account() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProcess::spawn(dir.path(), &[]);
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let config = securechat::tls::client_config(Some(&server.ca)).unwrap();
    let address = format!("localhost:{}", server.port);
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (acknowledged, config, address) =
                (acknowledged.clone(), config.clone(), address.clone());
            thread::spawn(move || {
                let Ok((link, mut reader, _)) = link::connect(&address, config) else {
                    return;
                };
                for i in 0.. {
                    let user = format!("storm{w}_{i}");
                    if link
                        .send_line(&format!("REGISTER {user} {PASSWORD}"))
                        .is_err()
                    {
                        return;
                    }
                    match reader.recv() {
                        Ok(Some(ServerLine::Ok { .. })) => acknowledged.lock().unwrap().push(user),
                        Ok(Some(other)) => panic!("unexpected {other:?}"),
                        _ => return, // the server died mid-request: not acknowledged
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    server.kill9();
    for w in workers {
        w.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 20, "the storm barely started");

    // The database is sound and holds every acknowledged account.
    let db = rusqlite::Connection::open(data.join("securechat.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut stmt = db.prepare("SELECT username FROM accounts").unwrap();
    let stored: std::collections::HashSet<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|u| !stored.contains(*u))
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    drop(stmt);
    drop(db);

    // And a restarted server lets them in.
    let server = ServerProcess::spawn(dir.path(), &[]);
    for user in [&acknowledged[0], &acknowledged[acknowledged.len() - 1]] {
        server.connect().login_ok(user);
    }
}

#[test]
fn a_corrupt_database_stops_the_server_with_a_clear_error_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("securechat.db");
    let garbage = b"definitely not sqlite".repeat(500);
    std::fs::write(&db, &garbage).unwrap();
    // Private, as the server requires: the test is about the contents.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = Command::new(SERVER)
        .args(server_args(free_port(), &data, &dir.path().join("certs")))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("never replaced"), "{stderr}");
    assert!(stderr.contains("securechat.db"), "{stderr}");
    assert_eq!(std::fs::read(&db).unwrap(), garbage);
}

/// Whether this machine lets us mount a small filesystem in a private namespace (root, or
/// unprivileged user namespaces).
fn can_mount_privately() -> bool {
    Command::new("unshare")
        .args(["-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the server with its data directory on a `size` tmpfs of its own.
fn server_on_small_disk(dir: &Path, size: &str) -> ServerProcess {
    let data = dir.join("data");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&data).unwrap();
    // The dev certificates are made outside, so they are not on the tiny disk.
    securechat::tls::ensure_dev_certificates(&certs).unwrap();
    let port = free_port();
    let args = server_args(port, &data, &certs).join(" ");
    let script = format!(
        "mount -t tmpfs -o size={size},mode=700 none {data} && exec {SERVER} {args}",
        data = data.display(),
    );
    ServerProcess::start(
        Command::new("unshare").args(["-rm", "sh", "-c", &script]),
        port,
        certs.join("ca.pem"),
        dir,
    )
}

#[test]
fn a_full_disk_fails_the_registration_and_chat_goes_on() {
    if !can_mount_privately() {
        eprintln!("SKIPPED: cannot mount a private tmpfs here (needs root or user namespaces)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = server_on_small_disk(dir.path(), "200k");
    let mut alice = server.connect();
    alice.register_ok("alice");
    alice.login_ok("alice");
    let mut bob = server.connect();
    bob.register_ok("bob");
    bob.login_ok("bob");
    let mut filler = server.connect();
    let mut refused = None;
    for i in 0..5000 {
        match filler.request(&format!("REGISTER filler{i} {PASSWORD}")) {
            ServerLine::Ok { .. } => {}
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    let refused = refused.expect("the disk never filled up");
    let (command, code, text) = err_code(&refused);
    assert_eq!((command, code), ("REGISTER", "storage"));
    assert!(text.contains("try again later"), "{text}");
    // Logged-in users keep chatting; existing accounts can still log in.
    alice.send("MSG bob the disk is full but we are fine");
    assert_eq!(
        bob.recv(),
        ServerLine::From {
            user: "alice".into(),
            payload: "the disk is full but we are fine".into()
        }
    );
    server.connect().login_ok("alice");
}

#[test]
fn a_read_only_data_directory_is_a_clear_error_at_start() {
    if !can_mount_privately() {
        eprintln!("SKIPPED: cannot mount a private tmpfs here (needs root or user namespaces)");
        return;
    }
    // A real database made by a real server, then served from a read-only filesystem.
    // (A filesystem cannot be made read-only under a running server that has files open
    // for writing - the kernel refuses with EBUSY - so the running case is the full-disk
    // test above; this covers a data directory that is read-only when the server starts.)
    let dir = tempfile::tempdir().unwrap();
    let (prepared, certs) = (dir.path().join("data"), dir.path().join("certs"));
    {
        let server = ServerProcess::spawn(dir.path(), &[]);
        server.connect().register_ok("alice");
    }
    let data = dir.path().join("readonly");
    std::fs::create_dir_all(&data).unwrap();
    let args = server_args(free_port(), &data, &certs).join(" ");
    let script = format!(
        "mount -t tmpfs -o mode=700 none {data} && cp {prepared}/securechat.db {data}/ && \
         mount -o remount,ro {data} && exec {SERVER} {args}",
        data = data.display(),
        prepared = prepared.display(),
    );
    let output = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "the server must not run without writable storage"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not writable"), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
}

#[test]
fn the_server_log_has_utc_timestamps_and_rust_log_filters_by_module() {
    let dir = tempfile::tempdir().unwrap();
    // Debug for the server's modules only: the connection's TLS details show, and
    // nothing from other modules is raised above info.
    let mut server =
        ServerProcess::spawn(dir.path(), &[("RUST_LOG", "warn,securechat::server=debug")]);
    let mut client = server.connect();
    client.register_ok("alice");
    server.stop();
    let log = server.log();
    let debug = log
        .lines()
        .find(|l| l.contains("TLS established"))
        .unwrap_or_else(|| panic!("no debug line from securechat::server:\n{log}"));
    // `2026-12-03T13:57:44.826Z DEBUG conn#1 …`
    let (stamp, rest) = debug.split_once(' ').unwrap();
    assert_eq!(stamp.len(), "2026-12-03T13:57:44.826Z".len(), "{debug}");
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "{debug}"
    );
    assert!(rest.starts_with("DEBUG "), "{debug}");
    // Other modules stay at warn: the binary's info line about its certificate is not shown.
    assert!(
        !log.contains("development certificate"),
        "an info line outside securechat::server:\n{log}"
    );
}
