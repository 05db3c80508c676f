//! The SQLite backend of [`Storage`]: an embedded database file in the server's data
//! directory, holding the accounts, the room's history and (`sqlite/mailbox.rs`) offline
//! delivery's tables.
//!
//! Durability: the database runs in WAL mode with `synchronous=FULL`, so each commit is on
//! disk before the call returns. A database that fails its integrity check at start is
//! reported and left alone, never replaced.
//!
//! The files are private, as keys are: the data directory is created 0700 and the database
//! 0600 before SQLite opens it (SQLite gives its `-wal` and `-shm` files the database's
//! mode), and a data directory or database file that other users can read is refused at
//! start, so that nobody else on the machine can copy the password hashes.
//!
//! The schema is versioned (`PRAGMA user_version`) and upgraded in place at start, one
//! step per version, each in its own transaction: version 1 holds the accounts, version 2
//! adds the room history, version 3 offline delivery's tables (prekeys, the message queue,
//! receipts), version 4 federation's per-peer outbound queue (`sqlite/peers.rs`). A database from a newer server is refused, never downgraded.
//!
//! Connections are pooled: SQLite connections are not `Sync`, and the threads that need one
//! (bcrypt workers and client readers) are many. The pool keeps a few open connections and
//! opens more on demand.

mod mailbox;
mod peers;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    Backlog, BundleLookup, Created, Enqueued, KeyLookup, NewMail, Outcome, PeerMail, Quota,
    Receipt, Storage,
};
use crate::error::{Error, Result};
use crate::files;
use crate::protocol::name::{Address, ServerName, UserName};
use crate::server::history::HistoryLine;
use crate::sync;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "securechat.db";

/// The schema of version 1 (accounts), run by `migrate` for a new database. Frozen: a
/// change is a new version with its own step.
const SCHEMA_V1: &str = "
    CREATE TABLE IF NOT EXISTS accounts (
        id             INTEGER PRIMARY KEY,
        username       TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash  TEXT NOT NULL,
        identity_key   TEXT,
        created_at     INTEGER NOT NULL,
        last_login_at  INTEGER,
        key_updated_at INTEGER
    );
";

/// Schema version stored in `PRAGMA user_version`; bump with a migration step.
const SCHEMA_VERSION: i64 = 4;

/// Idle connections kept for reuse. Most account operations run on the bounded bcrypt
/// pool, so a handful covers the concurrency that actually occurs.
const MAX_IDLE_CONNECTIONS: usize = 8;

/// How long a writer waits for another writer's lock before failing the request.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite database: where to open connections, and the idle ones.
pub(in crate::server) struct SqliteStore {
    /// Path of the database file, for opening pooled connections.
    path: PathBuf,
    /// Idle connections ready for reuse.
    idle: Mutex<Vec<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir`, checks its integrity and
    /// brings the schema up to date. A corrupt or foreign file is an error, never replaced.
    pub(in crate::server) fn open(data_dir: &Path) -> Result<SqliteStore> {
        files::create_private_dir(data_dir).map_err(|e| {
            Error::Config(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        refuse_unless_private(data_dir)?;
        check_writable(data_dir)?;
        let path = data_dir.join(DB_FILE);
        match files::write_new_file(&path, b"") {
            // SQLite takes an empty file for a new database.
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::Config(format!(
                    "cannot create database {}: {e}",
                    path.display()
                )))
            }
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            let file = PathBuf::from(file);
            if file.exists() {
                refuse_unless_private(&file)?;
            }
        }
        let store = SqliteStore {
            idle: Mutex::new(Vec::new()),
            path,
        };
        let conn = store.connect().map_err(|e| store.unusable(e))?;
        let verdict: String = conn
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(|e| store.unusable(e))?;
        if verdict != "ok" {
            return Err(Error::Config(format!(
                "database {} failed its integrity check ({verdict}); restore it from a backup \
                 or move it away. It is never replaced automatically.",
                store.path.display()
            )));
        }
        migrate(&conn).map_err(|e| store.unusable(e))?;
        store.put_back(conn);
        Ok(store)
    }

    /// Runs `f` on a pooled connection.
    fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let pooled = sync::lock(&self.idle).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let result = f(&conn);
        self.put_back(conn);
        Ok(result?)
    }

    fn put_back(&self, conn: Connection) {
        let mut idle = sync::lock(&self.idle);
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(conn);
        }
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL: readers never block the writer. FULL: a commit is on disk before it returns.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(conn)
    }

    fn unusable(&self, e: rusqlite::Error) -> Error {
        Error::Config(format!(
            "cannot use database {}: {e}. If the file is damaged, restore it from a backup or \
             move it away; it is never replaced automatically.",
            self.path.display()
        ))
    }
}

/// Each method runs on a pooled connection; those that write more than one row run in
/// one transaction.
impl Storage for SqliteStore {
    fn create_account(&self, user: &UserName, password_hash: &str) -> Result<Created> {
        self.with_connection(|conn| {
            let inserted = conn.execute(
                "INSERT INTO accounts (username, password_hash, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (username) DO NOTHING",
                params![user.as_str(), password_hash, unix_now()],
            )?;
            Ok(if inserted == 1 {
                Created::Yes
            } else {
                Created::AlreadyExists
            })
        })
    }

    fn password_hash(&self, user: &UserName) -> Result<Option<String>> {
        self.with_connection(|conn| {
            conn.query_row(
                "SELECT password_hash FROM accounts WHERE username = ?1",
                [user.as_str()],
                |row| row.get(0),
            )
            .optional()
        })
    }

    fn record_login(&self, user: &UserName) -> Result<()> {
        self.with_connection(|conn| {
            conn.execute(
                "UPDATE accounts SET last_login_at = ?2 WHERE username = ?1",
                params![user.as_str(), unix_now()],
            )
            .map(drop)
        })
    }

    fn set_identity_key(&self, user: &UserName, key: &str) -> Result<bool> {
        self.with_connection(|conn| {
            let changed = conn.execute(
                "UPDATE accounts SET identity_key = ?2, key_updated_at = ?3 WHERE username = ?1",
                params![user.as_str(), key, unix_now()],
            )?;
            Ok(changed == 1)
        })
    }

    fn identity_key(&self, user: &UserName) -> Result<KeyLookup> {
        let found: Option<Option<String>> = self.with_connection(|conn| {
            conn.query_row(
                "SELECT identity_key FROM accounts WHERE username = ?1",
                [user.as_str()],
                |row| row.get(0),
            )
            .optional()
        })?;
        Ok(match found {
            None => KeyLookup::NoSuchUser,
            Some(None) => KeyLookup::NoKey,
            Some(Some(key)) => KeyLookup::Key(key),
        })
    }

    fn account_count(&self) -> Result<i64> {
        self.with_connection(|conn| {
            conn.query_row("SELECT COUNT(*) FROM accounts", [], |row| row.get(0))
        })
    }

    fn append_room_history(&self, lines: &[HistoryLine], keep: usize) -> Result<()> {
        self.with_connection(|conn| {
            let tx = conn.unchecked_transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO room_history (sent_at, sender, text) VALUES (?1, ?2, ?3)",
                )?;
                for line in lines {
                    insert.execute(params![
                        unix_seconds(line.time()),
                        line.sender().to_string(),
                        line.text()
                    ])?;
                }
            }
            trim_room_history(&tx, keep)?;
            tx.commit()
        })
    }

    fn trim_room_history(&self, keep: usize) -> Result<()> {
        self.with_connection(|conn| trim_room_history(conn, keep))
    }

    /// A row whose sender breaks the user-name rule (the file was edited by hand) is left
    /// out with a warning.
    fn room_history(&self, last: usize) -> Result<Vec<HistoryLine>> {
        let rows: Vec<(i64, String, String)> = self.with_connection(|conn| {
            let mut select = conn.prepare(
                "SELECT sent_at, sender, text FROM
                     (SELECT id, sent_at, sender, text FROM room_history ORDER BY id DESC LIMIT ?1)
                 ORDER BY id",
            )?;
            let rows = select.query_map([sql_count(last)], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
            rows.collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(time, sender, text)| match Address::parse(&sender) {
                Ok(sender) => Some(HistoryLine::new(
                    u64::try_from(time).unwrap_or(0),
                    sender,
                    &text,
                )),
                Err(_) => {
                    log::warn!("room history: a stored line with a malformed sender was skipped");
                    None
                }
            })
            .collect())
    }

    fn set_signed_prekey(
        &self,
        user: &UserName,
        record: &str,
        same_mailbox: &dyn Fn(&str) -> bool,
    ) -> Result<u64> {
        self.with_connection(|conn| mailbox::set_signed_prekey(conn, user, record, same_mailbox))
    }

    fn add_one_time_prekeys(&self, user: &UserName, prekeys: &[(u32, &str)]) -> Result<u64> {
        self.with_connection(|conn| mailbox::add_one_time_prekeys(conn, user, prekeys))
    }

    fn take_bundle(&self, owner: &UserName) -> Result<BundleLookup> {
        self.with_connection(|conn| mailbox::take_bundle(conn, owner))
    }

    fn enqueue(
        &self,
        sender: &str,
        recipient: &str,
        reference: &str,
        payload: &str,
        now: u64,
        quota: Quota,
    ) -> Result<Enqueued> {
        self.with_connection(|conn| {
            mailbox::enqueue(conn, sender, recipient, reference, payload, now, quota)
        })
    }

    fn enqueue_all(
        &self,
        messages: &[NewMail<'_>],
        now: u64,
        quota: Quota,
    ) -> Result<Vec<Enqueued>> {
        self.with_connection(|conn| mailbox::enqueue_all(conn, messages, now, quota))
    }

    fn ack(
        &self,
        recipient: &UserName,
        id: u64,
        outcome: Outcome,
        now: u64,
    ) -> Result<Option<Receipt>> {
        self.with_connection(|conn| mailbox::ack(conn, recipient, id, outcome, now))
    }

    fn expire(&self, now: u64, ttl_seconds: u64) -> Result<Vec<Receipt>> {
        self.with_connection(|conn| mailbox::expire(conn, now, ttl_seconds))
    }

    fn backlog(&self, user: &UserName) -> Result<Backlog> {
        self.with_connection(|conn| mailbox::backlog(conn, user))
    }

    fn delete_receipts(&self, sender: &UserName, reference: &str) -> Result<()> {
        self.with_connection(|conn| mailbox::delete_receipts(conn, sender, reference))
    }

    fn enqueue_for_peer(
        &self,
        sender: &UserName,
        peer: &ServerName,
        recipient: &UserName,
        reference: &str,
        payload: &str,
        now: u64,
        max_bytes: u64,
    ) -> Result<Enqueued> {
        self.with_connection(|conn| {
            peers::enqueue_for_peer(
                conn, sender, peer, recipient, reference, payload, now, max_bytes,
            )
        })
    }

    fn peer_queue(&self, peer: &ServerName, after: u64, limit: usize) -> Result<Vec<PeerMail>> {
        self.with_connection(|conn| peers::peer_queue(conn, peer, after, limit))
    }

    fn peer_acked_all(
        &self,
        peer: &ServerName,
        acks: &[(u64, Option<Outcome>)],
        now: u64,
    ) -> Result<Vec<Receipt>> {
        self.with_connection(|conn| peers::peer_acked_all(conn, peer, acks, now))
    }

    fn add_receipt(
        &self,
        sender: &UserName,
        reference: &str,
        recipient: &str,
        outcome: Outcome,
        now: u64,
    ) -> Result<Option<Receipt>> {
        self.with_connection(|conn| {
            peers::add_receipt(conn, sender, reference, recipient, outcome, now)
        })
    }

    fn peer_receipts(&self, peer: &ServerName, after: u64, limit: usize) -> Result<Vec<Receipt>> {
        self.with_connection(|conn| peers::peer_receipts(conn, peer, after, limit))
    }

    fn forget_receipts(&self, ids: &[u64]) -> Result<()> {
        self.with_connection(|conn| peers::forget_receipts(conn, ids))
    }
}

/// Refuses a data directory or database file that other users can access (it holds the
/// password hashes), naming the file and the `chmod` that fixes it.
fn refuse_unless_private(path: &Path) -> Result<()> {
    files::check_private(path).map_err(|e| {
        Error::Config(format!(
            "{e}: it holds the account database (password hashes), so the server will not \
             use it while others can read it"
        ))
    })
}

/// Fails with a clear error if the server cannot create files in `dir`: SQLite itself
/// would only say "unable to open database file".
fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(".securechat-write-test");
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(Error::Config(format!(
            "data directory {} is not writable ({e}): the server must store accounts there; \
             fix its permissions or choose another with --data-dir",
            dir.display()
        ))),
    }
}

/// Deletes all but the last `keep` rows of the room history. A new row's id is one above
/// the largest (SQLite's rule for an `INTEGER PRIMARY KEY`), so ids grow in the order
/// lines were stored and the last `keep` rows are those above `MAX(id) - keep`: one range
/// delete on the primary key.
fn trim_room_history(conn: &Connection, keep: usize) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM room_history WHERE id <= (SELECT MAX(id) FROM room_history) - ?1",
        [sql_count(keep)],
    )
    .map(drop)
}

/// A count as SQLite's integer (counts here are small; the largest is kept whole).
fn sql_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Unix seconds as SQLite's integer.
fn unix_seconds(time: u64) -> i64 {
    i64::try_from(time).unwrap_or(i64::MAX)
}

/// Creates or upgrades the schema, one step per version. Each step runs in its own
/// transaction and sets the version it reaches, so an interrupted upgrade resumes
/// where it stopped.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "schema version {version} is newer than this server understands ({SCHEMA_VERSION})"
        )));
    }
    if version < 1 {
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
        ))?;
    }
    if version < 2 {
        // The last room lines (the server keeps `--room-history` of them).
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS room_history (
                 id      INTEGER PRIMARY KEY,
                 sent_at INTEGER NOT NULL,
                 sender  TEXT NOT NULL,
                 text    TEXT NOT NULL
             );
             PRAGMA user_version = 2;
             COMMIT;",
        )?;
    }
    if version < 3 {
        // Offline delivery: prekeys, the message queue, receipts.
        conn.execute_batch(&format!(
            "BEGIN; {} PRAGMA user_version = 3; COMMIT;",
            mailbox::SCHEMA_V3
        ))?;
    }
    if version < 4 {
        // Federation: each linked server's outbound queue, and finding receipts owed to one.
        conn.execute_batch(&format!(
            "BEGIN; {} PRAGMA user_version = 4; COMMIT;",
            peers::SCHEMA_V4
        ))?;
    }
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::conformance::lines;

    fn name(user: &str) -> UserName {
        UserName::parse(user).unwrap()
    }

    /// A temporary directory and, inside it, a data directory for the store to create.
    fn data_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        (dir, data)
    }

    #[test]
    fn accounts_and_room_history_persist_across_reopen() {
        let (_dir, data) = data_dir();
        {
            let store = SqliteStore::open(&data).unwrap();
            assert_eq!(
                store.create_account(&name("alice"), "h1").unwrap(),
                Created::Yes
            );
            assert!(store.set_identity_key(&name("alice"), "k").unwrap());
            let batch: Vec<HistoryLine> = (1..=5)
                .map(|i| HistoryLine::new(1000 + i, name("alice"), &format!("line {i}")))
                .collect();
            store.append_room_history(&batch[..2], 3).unwrap();
            store.append_room_history(&batch[2..], 3).unwrap();
        }
        let store = SqliteStore::open(&data).unwrap();
        assert_eq!(
            store.password_hash(&name("alice")).unwrap().as_deref(),
            Some("h1")
        );
        assert_eq!(
            store.identity_key(&name("alice")).unwrap(),
            KeyLookup::Key("k".to_owned())
        );
        assert_eq!(store.account_count().unwrap(), 1);
        let expected: Vec<(u64, String, String)> = (3..=5)
            .map(|i| (1000 + i, "alice".to_owned(), format!("line {i}")))
            .collect();
        assert_eq!(lines(&store, usize::MAX), expected);
    }

    #[test]
    fn the_pool_opens_connections_on_demand_and_keeps_a_few_idle() {
        const AT_ONCE: usize = MAX_IDLE_CONNECTIONS + 4;
        let (_dir, data) = data_dir();
        let store = SqliteStore::open(&data).unwrap();
        let barrier = std::sync::Barrier::new(AT_ONCE);
        let counts: Vec<i64> = std::thread::scope(|scope| {
            let users: Vec<_> = (0..AT_ONCE)
                .map(|_| {
                    scope.spawn(|| {
                        store
                            .with_connection(|conn| {
                                // Every thread holds its connection until all have one.
                                barrier.wait();
                                conn.query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))
                            })
                            .unwrap()
                    })
                })
                .collect();
            users.into_iter().map(|u| u.join().unwrap()).collect()
        });
        assert_eq!(counts, [0; AT_ONCE]);
        assert_eq!(sync::lock(&store.idle).len(), MAX_IDLE_CONNECTIONS);
    }

    #[test]
    fn a_version_1_database_is_upgraded_in_place_with_its_accounts() {
        let (_dir, data) = data_dir();
        files::create_private_dir(&data).unwrap();
        let path = data.join(DB_FILE);
        files::write_new_file(&path, b"").unwrap();
        {
            // The schema as version 1 of the server created it, with one account.
            let old = Connection::open(&path).unwrap();
            old.execute_batch(&format!(
                "{SCHEMA_V1}
                 INSERT INTO accounts (username, password_hash, identity_key, created_at)
                     VALUES ('alice', 'old-hash', 'old-key', 1);
                 PRAGMA user_version = 1;"
            ))
            .unwrap();
        }
        let store = SqliteStore::open(&data).unwrap();
        let version: i64 = store
            .with_connection(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(
            store.password_hash(&name("alice")).unwrap().as_deref(),
            Some("old-hash")
        );
        assert_eq!(
            store.identity_key(&name("alice")).unwrap(),
            KeyLookup::Key("old-key".to_owned())
        );
        assert_eq!(store.account_count().unwrap(), 1);
        assert!(lines(&store, usize::MAX).is_empty());
        let line = HistoryLine::new(7, name("alice"), "after the upgrade");
        store.append_room_history(&[line], 10).unwrap();
        drop(store);
        let store = SqliteStore::open(&data).unwrap();
        assert_eq!(
            lines(&store, usize::MAX),
            [(7, "alice".to_owned(), "after the upgrade".to_owned())]
        );
    }

    #[test]
    fn a_version_2_database_is_upgraded_in_place_to_hold_the_mailbox() {
        let (_dir, data) = data_dir();
        {
            // A version-2 file as the previous server left it, with an account and a line.
            let store = SqliteStore::open(&data).unwrap();
            store.create_account(&name("alice"), "hash").unwrap();
            store.create_account(&name("bob"), "hash").unwrap();
            let line = HistoryLine::new(7, name("alice"), "before");
            store.append_room_history(&[line], 10).unwrap();
            store
                .with_connection(|c| {
                    c.execute_batch(
                        "DROP TABLE signed_prekeys; DROP TABLE one_time_prekeys;
                         DROP TABLE mail_queue; DROP TABLE receipts;
                         PRAGMA user_version = 2;",
                    )
                })
                .unwrap();
        }
        let store = SqliteStore::open(&data).unwrap();
        let version: i64 = store
            .with_connection(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(lines(&store, usize::MAX).len(), 1);
        assert_eq!(store.account_count().unwrap(), 2);
        let quota = Quota {
            messages: 10,
            bytes: 100,
        };
        let queued = store
            .enqueue("alice", "bob", "r", "hello", 9, quota)
            .unwrap();
        assert!(matches!(queued, Enqueued::Queued(_)));
        drop(store);
        let store = SqliteStore::open(&data).unwrap();
        assert_eq!(store.backlog(&name("bob")).unwrap().mail.len(), 1);
    }

    #[test]
    fn a_version_3_database_is_upgraded_in_place_to_hold_the_peer_queues() {
        let (_dir, data) = data_dir();
        let (alice, bob) = (name("alice"), name("bob"));
        let quota = Quota {
            messages: 10,
            bytes: 100,
        };
        let (waiting, receipt) = {
            // A version-3 file as the previous server left it: an account, a queued
            // message, a receipt.
            let store = SqliteStore::open(&data).unwrap();
            store.create_account(&alice, "hash").unwrap();
            store.create_account(&bob, "hash").unwrap();
            let Enqueued::Queued(sent) = store
                .enqueue("alice", "bob", "r1", "one", 1, quota)
                .unwrap()
            else {
                panic!("not queued")
            };
            let receipt = store.ack(&bob, sent, Outcome::Delivered, 2).unwrap();
            let waiting = store
                .enqueue("alice", "bob", "r2", "two", 3, quota)
                .unwrap();
            store
                .with_connection(|c| {
                    c.execute_batch(
                        "DROP INDEX receipts_by_peer; DROP TABLE peer_queue;
                         PRAGMA user_version = 3;",
                    )
                })
                .unwrap();
            (waiting, receipt)
        };
        let store = SqliteStore::open(&data).unwrap();
        let version: i64 = store
            .with_connection(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(store.account_count().unwrap(), 2);
        let Enqueued::Queued(waiting) = waiting else {
            panic!("not queued")
        };
        let mail: Vec<u64> = store
            .backlog(&bob)
            .unwrap()
            .mail
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(mail, [waiting]);
        assert_eq!(
            store.backlog(&alice).unwrap().receipts,
            receipt.into_iter().collect::<Vec<_>>()
        );
        let b = ServerName::parse("b.test").unwrap();
        let queued = store
            .enqueue_for_peer(&alice, &b, &bob, "r3", "three", 4, 100)
            .unwrap();
        assert!(matches!(queued, Enqueued::Queued(_)));
        drop(store);
        let store = SqliteStore::open(&data).unwrap();
        assert_eq!(store.peer_queue(&b, 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn receipts_owed_to_a_peer_are_found_by_their_index() {
        let (_dir, data) = data_dir();
        let store = SqliteStore::open(&data).unwrap();
        let plan: Vec<String> = store
            .with_connection(|c| {
                let mut explain =
                    c.prepare(&format!("EXPLAIN QUERY PLAN {}", peers::OWED_RECEIPTS))?;
                let rows = explain.query_map(params!["a.test", 0, 10], |r| r.get(3))?;
                rows.collect()
            })
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("receipts_by_peer")),
            "{plan:?}"
        );
    }

    #[test]
    fn a_database_from_a_newer_server_is_refused() {
        let (_dir, data) = data_dir();
        drop(SqliteStore::open(&data).unwrap());
        let conn = Connection::open(data.join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = SqliteStore::open(&data)
            .err()
            .expect("must fail")
            .to_string();
        assert!(err.contains("newer than this server"), "{err}");
    }

    #[test]
    fn a_corrupt_database_is_refused_and_left_in_place() {
        let (_dir, data) = data_dir();
        files::create_private_dir(&data).unwrap();
        let path = data.join(DB_FILE);
        let garbage = b"this is not an SQLite database, and must not be overwritten".repeat(100);
        files::write_new_file(&path, &garbage).unwrap();
        let err = SqliteStore::open(&data)
            .err()
            .expect("must fail")
            .to_string();
        assert!(err.contains("never replaced"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), garbage);
    }
}
