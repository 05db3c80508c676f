//! Offline delivery's storage: signed-prekey records, one-time prekeys, the message queue
//! and delivery receipts (schema version 3), behind the same [`Store`] as the accounts.
//!
//! Every operation is one transaction, so each rule below holds whatever crashes:
//! - a message is stored (committed, `synchronous=FULL`) before its `STATUS … queued` is
//!   sent, and only if the recipient's queue stays within its quota (checked in the same
//!   write transaction, so concurrent senders cannot overshoot it);
//! - a one-time prekey is read and deleted in one write transaction: it is handed out at
//!   most once, however many fetches run at once;
//! - an `ACK` deletes the message and records its `delivered` receipt together, and expiry
//!   deletes messages and records their `expired` receipts together: a message is either
//!   still queued or has exactly one receipt, never both, never neither.
//!
//! Writes begin `IMMEDIATE` (they take the write lock before reading), so two writers never
//! both read and then fail to upgrade: the second waits for the first (busy timeout).
//!
//! Message and receipt ids are `AUTOINCREMENT`: never reused, even after the newest row is
//! deleted, so an id names one message for the life of the database and ids only grow
//! (the router relies on that to recognise a live `MAIL` already replayed at login).
//!
//! A later PostgreSQL backend implements these same methods; nothing outside `store/`
//! sees SQL.

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{sql_count, Store};
use crate::error::Result;
use crate::protocol::name::UserName;

/// The most one-time prekeys stored for one user; `ADDPREKEYS` beyond it are ignored.
const MAX_ONE_TIME_PREKEYS: u64 = 200;

/// The schema step from version 2 to 3, run by `migrate` in its own transaction.
pub(super) const SCHEMA_V3: &str = "
    CREATE TABLE IF NOT EXISTS signed_prekeys (
        username   TEXT PRIMARY KEY,
        record     TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS one_time_prekeys (
        seq      INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        key_id   INTEGER NOT NULL,
        value    TEXT NOT NULL,
        UNIQUE (username, key_id)
    );
    CREATE TABLE IF NOT EXISTS mail_queue (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        sender    TEXT NOT NULL,
        recipient TEXT NOT NULL,
        ref       TEXT NOT NULL,
        payload   TEXT NOT NULL,
        queued_at INTEGER NOT NULL,
        bytes     INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS mail_queue_by_recipient ON mail_queue (recipient, id);
    CREATE INDEX IF NOT EXISTS mail_queue_by_age ON mail_queue (queued_at);
    CREATE INDEX IF NOT EXISTS mail_queue_by_ref ON mail_queue (sender, ref);
    CREATE TABLE IF NOT EXISTS receipts (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        sender    TEXT NOT NULL,
        ref       TEXT NOT NULL,
        recipient TEXT NOT NULL,
        state     TEXT NOT NULL,
        detail    TEXT,
        time      INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS receipts_by_sender ON receipts (sender, id);
    CREATE INDEX IF NOT EXISTS receipts_by_ref ON receipts (sender, ref);
";

/// A recipient's queue bounds (`--queue-max`, `--queue-max-bytes`).
#[derive(Debug, Clone, Copy)]
pub(in crate::server) struct Quota {
    /// Most messages queued for one recipient.
    pub(in crate::server) messages: u64,
    /// Most payload bytes queued for one recipient.
    pub(in crate::server) bytes: u64,
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::server) enum Enqueued {
    /// Stored (committed) with this id.
    Queued(u64),
    /// An earlier `SEND` of the same sender and reference is still queued with this id (a
    /// re-send after a broken connection): nothing stored, so it is delivered once.
    AlreadyQueued(u64),
    /// An earlier `SEND` of the same sender and reference was already resolved and its
    /// receipt is not yet acknowledged: nothing stored; the answer is that outcome.
    Resolved(Outcome),
    /// No account has that name; nothing stored.
    NoSuchUser,
    /// The recipient's queue is full; nothing stored.
    Quota,
}

/// One queued message, as replayed to its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::server) struct StoredMail {
    /// Its id (the `MAIL` id).
    pub(in crate::server) id: u64,
    /// Who sent it (a canonical name).
    pub(in crate::server) sender: String,
    /// When it was queued, Unix seconds.
    pub(in crate::server) time: u64,
    /// The payload, as sent.
    pub(in crate::server) payload: String,
}

/// A final state of a message, stored for its sender until `ACKSTATUS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::server) enum Outcome {
    /// The recipient acknowledged it.
    Delivered,
    /// Its time to live passed first.
    Expired,
    /// The recipient's client acknowledged it as one it could not open.
    Unreadable,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Expired => "expired",
            Outcome::Unreadable => "unreadable",
        }
    }

    /// The outcome stored as `state` (only [`Outcome::as_str`] writes it).
    fn from_stored(state: &str) -> Outcome {
        match state {
            "delivered" => Outcome::Delivered,
            "unreadable" => Outcome::Unreadable,
            _ => Outcome::Expired,
        }
    }
}

/// A stored receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::server) struct Receipt {
    /// Its id (increasing; the router skips live receipts already replayed at login).
    pub(in crate::server) id: u64,
    /// Who sent the message, and is told.
    pub(in crate::server) sender: String,
    /// The sender's reference.
    pub(in crate::server) reference: String,
    /// Who the message was for.
    pub(in crate::server) recipient: String,
    /// What happened.
    pub(in crate::server) outcome: Outcome,
}

/// What a `BUNDLE` fetch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::server) enum BundleLookup {
    /// No account has that name.
    NoSuchUser,
    /// The account has stored no signed-prekey record.
    NoRecord,
    /// The record, one one-time prekey (now deleted) if any was left, and how many are left.
    Found {
        /// The signed-prekey record, base64.
        record: String,
        /// The one-time prekey handed out: `(id, base64 value)`.
        one_time: Option<(u32, String)>,
        /// One-time prekeys left after this fetch.
        left: u64,
    },
}

/// What an opted-in connection is sent at login, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(in crate::server) struct Backlog {
    /// One-time prekeys left, if the user has a signed-prekey record.
    pub(in crate::server) prekeys: Option<u64>,
    /// Receipts for messages the user sent, oldest first.
    pub(in crate::server) receipts: Vec<Receipt>,
    /// Messages queued for the user, by id.
    pub(in crate::server) mail: Vec<StoredMail>,
    /// The largest message id ever assigned when this was read: a live `MAIL` with an id
    /// up to it was either replayed here or is no longer queued.
    pub(in crate::server) mail_through: u64,
    /// The same for receipt ids.
    pub(in crate::server) receipts_through: u64,
}

impl Store {
    /// Stores `user`'s signed-prekey record (base64), replacing the previous one, and
    /// returns how many one-time prekeys the user has now. When a previous record exists and
    /// `same_mailbox(previous)` is false, the record starts a new mailbox (the client lost
    /// or replaced its keys): the one-time prekeys stored before are void — no client holds
    /// their secrets — and are deleted in the same transaction, so none is handed out again.
    pub(in crate::server) fn set_signed_prekey(
        &self,
        user: &UserName,
        record: &str,
        same_mailbox: &dyn Fn(&str) -> bool,
    ) -> Result<u64> {
        self.with_connection(|conn| {
            let tx = write_transaction(conn)?;
            let previous: Option<String> = tx
                .query_row(
                    "SELECT record FROM signed_prekeys WHERE username = ?1",
                    [user.as_str()],
                    |row| row.get(0),
                )
                .optional()?;
            if previous.is_some_and(|previous| !same_mailbox(&previous)) {
                tx.execute(
                    "DELETE FROM one_time_prekeys WHERE username = ?1",
                    [user.as_str()],
                )?;
            }
            tx.execute(
                "INSERT INTO signed_prekeys (username, record, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (username) DO UPDATE SET record = ?2, updated_at = ?3",
                params![user.as_str(), record, super::unix_now()],
            )?;
            let count = one_time_count(&tx, user)?;
            tx.commit()?;
            Ok(count)
        })
    }

    /// Adds one-time prekeys in order, ignoring ids already stored and any beyond
    /// [`MAX_ONE_TIME_PREKEYS`]; returns how many the user has now.
    pub(in crate::server) fn add_one_time_prekeys(
        &self,
        user: &UserName,
        prekeys: impl IntoIterator<Item = (u32, String)>,
    ) -> Result<u64> {
        self.with_connection(|conn| {
            let tx = write_transaction(conn)?;
            let mut count = one_time_count(&tx, user)?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO one_time_prekeys (username, key_id, value)
                     VALUES (?1, ?2, ?3)",
                )?;
                for (id, value) in prekeys {
                    if count >= MAX_ONE_TIME_PREKEYS {
                        break;
                    }
                    count += insert.execute(params![user.as_str(), id, value])? as u64;
                }
            }
            tx.commit()?;
            Ok(count)
        })
    }

    /// `owner`'s record and its oldest one-time prekey, which is deleted in the same
    /// transaction: each is handed out at most once.
    pub(in crate::server) fn take_bundle(&self, owner: &UserName) -> Result<BundleLookup> {
        self.with_connection(|conn| {
            let tx = write_transaction(conn)?;
            let record: Option<String> = tx
                .query_row(
                    "SELECT record FROM signed_prekeys WHERE username = ?1",
                    [owner.as_str()],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(record) = record else {
                let exists = account_exists(&tx, owner.as_str())?;
                return Ok(if exists {
                    BundleLookup::NoRecord
                } else {
                    BundleLookup::NoSuchUser
                });
            };
            let one_time: Option<(i64, u32, String)> = tx
                .query_row(
                    "SELECT seq, key_id, value FROM one_time_prekeys WHERE username = ?1
                     ORDER BY seq LIMIT 1",
                    [owner.as_str()],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            if let Some((seq, ..)) = &one_time {
                tx.execute("DELETE FROM one_time_prekeys WHERE seq = ?1", [seq])?;
            }
            let left = one_time_count(&tx, owner)?;
            tx.commit()?;
            Ok(BundleLookup::Found {
                record,
                one_time: one_time.map(|(_, id, value)| (id, value)),
                left,
            })
        })
    }

    /// Stores a message from `sender` for `recipient` (canonical names) unless the
    /// recipient has no account or its queue would exceed `quota`; committed on return.
    pub(in crate::server) fn enqueue(
        &self,
        sender: &UserName,
        recipient: &str,
        reference: &str,
        payload: &str,
        now: u64,
        quota: Quota,
    ) -> Result<Enqueued> {
        self.with_connection(|conn| {
            let tx = write_transaction(conn)?;
            if !account_exists(&tx, recipient)? {
                return Ok(Enqueued::NoSuchUser);
            }
            // A re-sent message (same sender and reference) is stored once.
            let queued: Option<i64> = tx
                .query_row(
                    "SELECT id FROM mail_queue WHERE sender = ?1 AND ref = ?2",
                    params![sender.as_str(), reference],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(id) = queued {
                return Ok(Enqueued::AlreadyQueued(id as u64));
            }
            let resolved: Option<String> = tx
                .query_row(
                    "SELECT state FROM receipts WHERE sender = ?1 AND ref = ?2",
                    params![sender.as_str(), reference],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(state) = resolved {
                return Ok(Enqueued::Resolved(Outcome::from_stored(&state)));
            }
            let (count, bytes): (i64, i64) = tx.query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM mail_queue WHERE recipient = ?1",
                [recipient],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            let len = sql_count(payload.len());
            if count >= sql_u64(quota.messages) || bytes.saturating_add(len) > sql_u64(quota.bytes)
            {
                return Ok(Enqueued::Quota);
            }
            tx.execute(
                "INSERT INTO mail_queue (sender, recipient, ref, payload, queued_at, bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    sender.as_str(),
                    recipient,
                    reference,
                    payload,
                    sql_u64(now),
                    len
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Enqueued::Queued(id as u64))
        })
    }

    /// `recipient` acknowledges message `id`: deletes it and records its `delivered`
    /// receipt in one transaction. `None` (nothing done) if no such message is queued for
    /// `recipient`.
    pub(in crate::server) fn ack(
        &self,
        recipient: &UserName,
        id: u64,
        outcome: Outcome,
        now: u64,
    ) -> Result<Option<Receipt>> {
        self.with_connection(|conn| {
            let tx = write_transaction(conn)?;
            let acked: Option<(String, String)> = tx
                .query_row(
                    "DELETE FROM mail_queue WHERE id = ?1 AND recipient = ?2 RETURNING sender, ref",
                    params![sql_u64(id), recipient.as_str()],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let receipt = match acked {
                Some((sender, reference)) => Some(insert_receipt(
                    &tx,
                    sender,
                    reference,
                    recipient.to_string(),
                    outcome,
                    now,
                )?),
                None => None,
            };
            tx.commit()?;
            Ok(receipt)
        })
    }

    /// Deletes every message queued `ttl_seconds` or more before `now` and records an
    /// `expired` receipt for each, in one transaction; returns the receipts.
    pub(in crate::server) fn expire(&self, now: u64, ttl_seconds: u64) -> Result<Vec<Receipt>> {
        let cutoff = sql_u64(now.saturating_sub(ttl_seconds));
        self.with_connection(|conn| {
            let tx = write_transaction(conn)?;
            let expired: Vec<(String, String, String)> = {
                let mut delete = tx.prepare(
                    "DELETE FROM mail_queue WHERE queued_at <= ?1
                     RETURNING id, sender, ref, recipient",
                )?;
                let mut rows: Vec<(i64, String, String, String)> = delete
                    .query_map([cutoff], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                // RETURNING gives no order: receipts follow the messages' order.
                rows.sort_unstable_by_key(|row| row.0);
                rows.into_iter().map(|(_, s, r, to)| (s, r, to)).collect()
            };
            let receipts = expired
                .into_iter()
                .map(|(sender, reference, recipient)| {
                    insert_receipt(&tx, sender, reference, recipient, Outcome::Expired, now)
                })
                .collect::<rusqlite::Result<Vec<_>>>()?;
            tx.commit()?;
            Ok(receipts)
        })
    }

    /// What `user` is sent at login, read in one (read) transaction: a consistent view.
    pub(in crate::server) fn backlog(&self, user: &UserName) -> Result<Backlog> {
        self.with_connection(|conn| {
            let tx = conn.unchecked_transaction()?;
            let has_record = tx
                .query_row(
                    "SELECT 1 FROM signed_prekeys WHERE username = ?1",
                    [user.as_str()],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            let prekeys = match has_record {
                true => Some(one_time_count(&tx, user)?),
                false => None,
            };
            let backlog = Backlog {
                prekeys,
                receipts: receipts_for(&tx, user)?,
                mail: mail_for(&tx, user)?,
                mail_through: last_id(&tx, "mail_queue")?,
                receipts_through: last_id(&tx, "receipts")?,
            };
            tx.commit()?;
            Ok(backlog)
        })
    }

    /// `sender` has seen the receipts for `reference`: forgets them.
    pub(in crate::server) fn delete_receipts(
        &self,
        sender: &UserName,
        reference: &str,
    ) -> Result<()> {
        self.with_connection(|conn| {
            conn.execute(
                "DELETE FROM receipts WHERE sender = ?1 AND ref = ?2",
                params![sender.as_str(), reference],
            )
            .map(drop)
        })
    }
}

/// A `u64` as SQLite's integer (the largest values are kept whole).
fn sql_u64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A transaction that takes the write lock at once (see the module comment).
fn write_transaction(conn: &Connection) -> rusqlite::Result<Transaction<'_>> {
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}

fn account_exists(conn: &Connection, user: &str) -> rusqlite::Result<bool> {
    conn.query_row("SELECT 1 FROM accounts WHERE username = ?1", [user], |_| {
        Ok(())
    })
    .optional()
    .map(|found| found.is_some())
}

fn one_time_count(conn: &Connection, user: &UserName) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT COUNT(*) FROM one_time_prekeys WHERE username = ?1",
        [user.as_str()],
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

fn insert_receipt(
    conn: &Connection,
    sender: String,
    reference: String,
    recipient: String,
    outcome: Outcome,
    now: u64,
) -> rusqlite::Result<Receipt> {
    conn.prepare_cached(
        "INSERT INTO receipts (sender, ref, recipient, state, time) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        sender,
        reference,
        recipient,
        outcome.as_str(),
        sql_u64(now)
    ])?;
    Ok(Receipt {
        id: conn.last_insert_rowid() as u64,
        sender,
        reference,
        recipient,
        outcome,
    })
}

/// The receipts stored for `sender`, oldest first.
fn receipts_for(conn: &Connection, sender: &UserName) -> rusqlite::Result<Vec<Receipt>> {
    let mut select = conn.prepare_cached(
        "SELECT id, ref, recipient, state FROM receipts WHERE sender = ?1 ORDER BY id",
    )?;
    let rows = select.query_map([sender.as_str()], |row| {
        let state: String = row.get(3)?;
        Ok(Receipt {
            id: row.get::<_, i64>(0)? as u64,
            sender: sender.to_string(),
            reference: row.get(1)?,
            recipient: row.get(2)?,
            outcome: Outcome::from_stored(&state),
        })
    })?;
    rows.collect()
}

/// The messages queued for `recipient`, by id.
fn mail_for(conn: &Connection, recipient: &UserName) -> rusqlite::Result<Vec<StoredMail>> {
    let mut select = conn.prepare_cached(
        "SELECT id, sender, queued_at, payload FROM mail_queue WHERE recipient = ?1 ORDER BY id",
    )?;
    let rows = select.query_map([recipient.as_str()], |row| {
        Ok(StoredMail {
            id: row.get::<_, i64>(0)? as u64,
            sender: row.get(1)?,
            time: row.get::<_, i64>(2)?.max(0) as u64,
            payload: row.get(3)?,
        })
    })?;
    rows.collect()
}

/// The largest id `table` (an `AUTOINCREMENT` table) ever assigned, 0 if none.
fn last_id(conn: &Connection, table: &str) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = ?1",
        [table],
        |row| row.get::<_, i64>(0),
    )
    .optional()
    .map(|seq| seq.unwrap_or(0).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::thread;

    use super::*;
    use crate::server::store::Created;

    fn name(user: &str) -> UserName {
        UserName::parse(user).unwrap()
    }

    /// A store in a fresh directory with these accounts.
    fn store_with(users: &[&str]) -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        for user in users {
            assert_eq!(
                store.create_account(&name(user), "h").unwrap(),
                Created::Yes
            );
        }
        (dir, Arc::new(store))
    }

    const ROOMY: Quota = Quota {
        messages: 100,
        bytes: 1 << 20,
    };

    #[test]
    fn a_record_from_another_mailbox_voids_the_one_time_prekeys_stored_before_it() {
        let (_dir, store) = store_with(&["bob"]);
        let bob = name("bob");
        let same_as_first = |previous: &str| previous == "first";
        assert_eq!(
            store
                .set_signed_prekey(&bob, "first", &same_as_first)
                .unwrap(),
            0
        );
        let added = store.add_one_time_prekeys(&bob, (1..=5).map(|i| (i, format!("old{i}"))));
        assert_eq!(added.unwrap(), 5);
        // The same mailbox (a rotated signed prekey): its one-time prekeys stay.
        assert_eq!(
            store
                .set_signed_prekey(&bob, "rotated", &same_as_first)
                .unwrap(),
            5
        );
        // Another mailbox: they are deleted with the record's replacement.
        assert_eq!(store.set_signed_prekey(&bob, "new", &|_| false).unwrap(), 0);
        let BundleLookup::Found {
            record,
            one_time,
            left,
        } = store.take_bundle(&bob).unwrap()
        else {
            panic!("record gone");
        };
        assert_eq!((record.as_str(), one_time, left), ("new", None, 0));
        // The new mailbox's keys, with the same ids as the void ones, are stored and served.
        let added = store.add_one_time_prekeys(&bob, (1..=2).map(|i| (i, format!("new{i}"))));
        assert_eq!(added.unwrap(), 2);
        let BundleLookup::Found { one_time, .. } = store.take_bundle(&bob).unwrap() else {
            panic!("record gone");
        };
        assert_eq!(one_time, Some((1, "new1".to_owned())));
    }

    #[test]
    fn one_time_prekeys_are_taken_once_by_concurrent_fetchers_on_the_database_file() {
        const THREADS: usize = 12;
        const EACH: usize = 10;
        let (_dir, store) = store_with(&["bob"]);
        let bob = name("bob");
        assert_eq!(store.set_signed_prekey(&bob, "rec", &|_| true).unwrap(), 0);
        let added = store
            .add_one_time_prekeys(&bob, (1..=250).map(|i| (i, format!("k{i}"))))
            .unwrap();
        assert_eq!(added, MAX_ONE_TIME_PREKEYS, "at most 200 are stored");
        let barrier = Arc::new(Barrier::new(THREADS));
        let fetchers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (store, barrier, bob) = (store.clone(), barrier.clone(), bob.clone());
                thread::spawn(move || {
                    barrier.wait();
                    (0..EACH)
                        .filter_map(|_| match store.take_bundle(&bob).unwrap() {
                            BundleLookup::Found { one_time, .. } => one_time,
                            other => panic!("{other:?}"),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<u32> = fetchers
            .into_iter()
            .flat_map(|f| f.join().unwrap())
            .map(|(id, value)| {
                assert_eq!(value, format!("k{id}"));
                id
            })
            .collect();
        assert_eq!(ids.len(), THREADS * EACH);
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), THREADS * EACH, "a prekey was handed out twice");
        let BundleLookup::Found { left, .. } = store.take_bundle(&bob).unwrap() else {
            panic!("record gone");
        };
        assert_eq!(left as usize, 200 - THREADS * EACH - 1);
        assert_eq!(
            store.take_bundle(&name("nobody")).unwrap(),
            BundleLookup::NoSuchUser
        );
        let (_dir2, other) = store_with(&["carol"]);
        assert_eq!(
            other.take_bundle(&name("carol")).unwrap(),
            BundleLookup::NoRecord
        );
    }

    #[test]
    fn ack_and_expiry_each_turn_a_message_into_exactly_one_receipt() {
        let (_dir, store) = store_with(&["alice", "bob"]);
        let (alice, bob) = (name("alice"), name("bob"));
        let Enqueued::Queued(first) = store
            .enqueue(&alice, "bob", "r1", "p1", 100, ROOMY)
            .unwrap()
        else {
            panic!("not queued");
        };
        let Enqueued::Queued(second) = store
            .enqueue(&alice, "bob", "r2", "p2", 200, ROOMY)
            .unwrap()
        else {
            panic!("not queued");
        };
        assert!(second > first);
        assert_eq!(
            store
                .enqueue(&alice, "nobody", "r3", "p", 200, ROOMY)
                .unwrap(),
            Enqueued::NoSuchUser
        );
        // Someone else's ACK does nothing.
        assert_eq!(
            store.ack(&alice, first, Outcome::Delivered, 300).unwrap(),
            None
        );
        let receipt = store
            .ack(&bob, first, Outcome::Delivered, 300)
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                receipt.sender.as_str(),
                receipt.reference.as_str(),
                receipt.outcome
            ),
            ("alice", "r1", Outcome::Delivered)
        );
        assert_eq!(
            store.ack(&bob, first, Outcome::Delivered, 300).unwrap(),
            None,
            "idempotent"
        );
        // Expiry: only what is at least ttl old.
        assert!(store.expire(250, 100).unwrap().is_empty());
        let expired = store.expire(300, 100).unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].outcome, Outcome::Expired);
        let backlog = store.backlog(&alice).unwrap();
        let refs: Vec<&str> = backlog
            .receipts
            .iter()
            .map(|r| r.reference.as_str())
            .collect();
        assert_eq!(refs, ["r1", "r2"]);
        assert!(store.backlog(&bob).unwrap().mail.is_empty());
        assert!(backlog.mail_through >= second);
        store.delete_receipts(&alice, "r1").unwrap();
        assert_eq!(store.backlog(&alice).unwrap().receipts.len(), 1);
        // Ids are never reused, even after the newest message is gone.
        let Enqueued::Queued(third) = store.enqueue(&alice, "bob", "r4", "p", 400, ROOMY).unwrap()
        else {
            panic!("not queued");
        };
        assert!(third > second);
    }

    #[test]
    fn a_resent_reference_is_stored_once_and_answered_with_its_state() {
        let (_dir, store) = store_with(&["alice", "bob"]);
        let (alice, bob) = (name("alice"), name("bob"));
        let quota = Quota {
            messages: 10,
            bytes: 1_000,
        };
        let Enqueued::Queued(id) = store.enqueue(&alice, "bob", "r1", "one", 1, quota).unwrap()
        else {
            panic!("not queued");
        };
        assert_eq!(
            store.enqueue(&alice, "bob", "r1", "one", 2, quota).unwrap(),
            Enqueued::AlreadyQueued(id)
        );
        assert_eq!(store.backlog(&bob).unwrap().mail.len(), 1, "stored once");
        assert!(store
            .ack(&bob, id, Outcome::Delivered, 3)
            .unwrap()
            .is_some());
        assert_eq!(
            store.enqueue(&alice, "bob", "r1", "one", 4, quota).unwrap(),
            Enqueued::Resolved(Outcome::Delivered)
        );
        assert!(
            store.backlog(&bob).unwrap().mail.is_empty(),
            "not queued again"
        );
        // Once alice acknowledged the receipt, the reference is free again.
        store.delete_receipts(&alice, "r1").unwrap();
        assert!(matches!(
            store.enqueue(&alice, "bob", "r1", "two", 5, quota).unwrap(),
            Enqueued::Queued(new) if new != id
        ));
        // Another sender's reference is another message.
        assert!(matches!(
            store
                .enqueue(&bob, "alice", "r1", "three", 6, quota)
                .unwrap(),
            Enqueued::Queued(_)
        ));
    }

    #[test]
    fn the_quota_counts_messages_and_bytes() {
        let (_dir, store) = store_with(&["alice", "bob"]);
        let alice = name("alice");
        let quota = Quota {
            messages: 2,
            bytes: 10,
        };
        assert!(matches!(
            store
                .enqueue(&alice, "bob", "a", "12345", 1, quota)
                .unwrap(),
            Enqueued::Queued(_)
        ));
        assert_eq!(
            store
                .enqueue(&alice, "bob", "b", "123456", 1, quota)
                .unwrap(),
            Enqueued::Quota
        );
        assert!(matches!(
            store
                .enqueue(&alice, "bob", "c", "12345", 1, quota)
                .unwrap(),
            Enqueued::Queued(_)
        ));
        assert_eq!(
            store.enqueue(&alice, "bob", "d", "", 1, quota).unwrap(),
            Enqueued::Quota
        );
        assert_eq!(store.backlog(&name("bob")).unwrap().mail.len(), 2);
    }
}
