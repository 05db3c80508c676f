//! Offline delivery's tables in the SQLite backend: signed-prekey records, one-time
//! prekeys, the message queue and delivery receipts (schema version 3). Each function runs
//! on a connection [`SqliteStore`](super::SqliteStore) lends it and implements the
//! [`Storage`](crate::server::store::Storage) method of the same name.
//!
//! How SQLite meets the trait's guarantees:
//! - every write is one transaction, committed with `synchronous=FULL` before it returns;
//! - writes begin `IMMEDIATE` (they take the write lock before reading), so a quota check
//!   or a one-time prekey read cannot be raced by another writer, and two writers never
//!   both read and then fail to upgrade: the second waits for the first (busy timeout);
//! - message and receipt ids are `AUTOINCREMENT`: never reused, even after the newest row
//!   is deleted, and the largest ever assigned is in `sqlite_sequence`.
//!
//! The receipts table also holds the receipts of messages to and from linked servers
//! (`peers.rs`): a message's sender or recipient is then a full address `user@server`.

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{peers, sql_count, unix_now};
use crate::protocol::name::UserName;
use crate::protocol::Refusal;
use crate::server::store::{
    Backlog, BundleLookup, Enqueued, NewMail, Outcome, Quota, Receipt, StoredMail,
    MAX_ONE_TIME_PREKEYS,
};

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

/// See [`Storage::set_signed_prekey`](crate::server::store::Storage::set_signed_prekey).
pub(super) fn set_signed_prekey(
    conn: &Connection,
    user: &UserName,
    record: &str,
    same_mailbox: &dyn Fn(&str) -> bool,
) -> rusqlite::Result<u64> {
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
        params![user.as_str(), record, unix_now()],
    )?;
    let count = one_time_count(&tx, user)?;
    tx.commit()?;
    Ok(count)
}

/// See [`Storage::add_one_time_prekeys`](crate::server::store::Storage::add_one_time_prekeys).
pub(super) fn add_one_time_prekeys(
    conn: &Connection,
    user: &UserName,
    prekeys: &[(u32, &str)],
) -> rusqlite::Result<u64> {
    let tx = write_transaction(conn)?;
    let mut count = one_time_count(&tx, user)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO one_time_prekeys (username, key_id, value) VALUES (?1, ?2, ?3)",
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
}

/// See [`Storage::take_bundle`](crate::server::store::Storage::take_bundle): the read and
/// the delete are one write transaction.
pub(super) fn take_bundle(conn: &Connection, owner: &UserName) -> rusqlite::Result<BundleLookup> {
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
}

/// See [`Storage::enqueue`](crate::server::store::Storage::enqueue): the checks and the
/// insert are one write transaction.
pub(super) fn enqueue(
    conn: &Connection,
    sender: &str,
    recipient: &str,
    reference: &str,
    payload: &str,
    now: u64,
    quota: Quota,
) -> rusqlite::Result<Enqueued> {
    let tx = write_transaction(conn)?;
    let enqueued = enqueue_in(
        &tx,
        NewMail {
            sender,
            recipient,
            reference,
            payload,
        },
        now,
        quota,
    )?;
    tx.commit()?;
    Ok(enqueued)
}

/// See [`Storage::enqueue_all`](crate::server::store::Storage::enqueue_all): every
/// message's checks and insert are one write transaction.
pub(super) fn enqueue_all(
    conn: &Connection,
    messages: &[NewMail<'_>],
    now: u64,
    quota: Quota,
) -> rusqlite::Result<Vec<Enqueued>> {
    let tx = write_transaction(conn)?;
    let enqueued = messages
        .iter()
        .map(|mail| enqueue_in(&tx, *mail, now, quota))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.commit()?;
    Ok(enqueued)
}

/// One message's checks and insert, inside the caller's write transaction.
fn enqueue_in(
    tx: &Transaction<'_>,
    mail: NewMail<'_>,
    now: u64,
    quota: Quota,
) -> rusqlite::Result<Enqueued> {
    let NewMail {
        sender,
        recipient,
        reference,
        payload,
    } = mail;
    if !account_exists(tx, recipient)? {
        return Ok(Enqueued::NoSuchUser);
    }
    // A re-sent message (same sender and reference) is stored once.
    let queued: Option<i64> = tx
        .query_row(
            "SELECT id FROM mail_queue WHERE sender = ?1 AND ref = ?2",
            params![sender, reference],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(id) = queued {
        return Ok(Enqueued::AlreadyQueued(id as u64));
    }
    if let Some(id) = peers::queued_id(tx, sender, reference)? {
        return Ok(Enqueued::AlreadyQueued(id));
    }
    if let Some(outcome) = receipt_state(tx, sender, reference)? {
        return Ok(Enqueued::Resolved(outcome));
    }
    let (count, bytes): (i64, i64) = tx.query_row(
        "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM mail_queue WHERE recipient = ?1",
        [recipient],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let len = sql_count(payload.len());
    if count >= sql_u64(quota.messages) || bytes.saturating_add(len) > sql_u64(quota.bytes) {
        return Ok(Enqueued::Quota);
    }
    tx.execute(
        "INSERT INTO mail_queue (sender, recipient, ref, payload, queued_at, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![sender, recipient, reference, payload, sql_u64(now), len],
    )?;
    Ok(Enqueued::Queued(tx.last_insert_rowid() as u64))
}

/// See [`Storage::ack`](crate::server::store::Storage::ack): the delete and the receipt
/// are one write transaction.
pub(super) fn ack(
    conn: &Connection,
    recipient: &UserName,
    id: u64,
    outcome: Outcome,
    now: u64,
) -> rusqlite::Result<Option<Receipt>> {
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
}

/// See [`Storage::expire`](crate::server::store::Storage::expire): the deletes and the
/// receipts, local messages' then peer messages', are one write transaction.
pub(super) fn expire(
    conn: &Connection,
    now: u64,
    ttl_seconds: u64,
) -> rusqlite::Result<Vec<Receipt>> {
    let cutoff = sql_u64(now.saturating_sub(ttl_seconds));
    let tx = write_transaction(conn)?;
    let expired: Vec<(String, String, String)> = {
        let mut delete = tx.prepare(
            "DELETE FROM mail_queue WHERE queued_at <= ?1 RETURNING id, sender, ref, recipient",
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
    let mut receipts = expired
        .into_iter()
        .map(|(sender, reference, recipient)| {
            insert_receipt(&tx, sender, reference, recipient, Outcome::Expired, now)
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    receipts.extend(peers::expire(&tx, cutoff, now)?);
    tx.commit()?;
    Ok(receipts)
}

/// See [`Storage::backlog`](crate::server::store::Storage::backlog): one read
/// transaction, so a consistent view.
pub(super) fn backlog(conn: &Connection, user: &UserName) -> rusqlite::Result<Backlog> {
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
}

/// See [`Storage::delete_receipts`](crate::server::store::Storage::delete_receipts).
pub(super) fn delete_receipts(
    conn: &Connection,
    sender: &UserName,
    reference: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM receipts WHERE sender = ?1 AND ref = ?2",
        params![sender.as_str(), reference],
    )
    .map(drop)
}

/// The prefix of a stored refusal's `state`, followed by the reason's wire name.
const REFUSED_PREFIX: &str = "refused:";

/// How `outcome` is stored as a receipt's `state` (only this writes it): the `STATUS`
/// word, and for a refusal `refused:` and the reason as on the wire (`refused:quota`).
fn outcome_name(outcome: Outcome) -> String {
    match outcome {
        Outcome::Delivered => "delivered".to_owned(),
        Outcome::Expired => "expired".to_owned(),
        Outcome::Unreadable => "unreadable".to_owned(),
        Outcome::Refused(reason) => format!("{REFUSED_PREFIX}{}", reason.as_str()),
    }
}

/// The outcome a receipt's stored `state` names (see [`outcome_name`]). A state no server
/// writes (a file edited by hand) reads as `Expired`: the message is not delivered, and
/// the sender is told so rather than nothing.
pub(super) fn stored_outcome(state: &str) -> Outcome {
    match state {
        "delivered" => Outcome::Delivered,
        "unreadable" => Outcome::Unreadable,
        _ => state
            .strip_prefix(REFUSED_PREFIX)
            .and_then(Refusal::from_wire)
            .map_or(Outcome::Expired, Outcome::Refused),
    }
}

/// The outcome of the receipt stored for `sender`'s `reference`, if one is (not yet
/// acknowledged): such a reference still names that message.
pub(super) fn receipt_state(
    conn: &Connection,
    sender: &str,
    reference: &str,
) -> rusqlite::Result<Option<Outcome>> {
    conn.query_row(
        "SELECT state FROM receipts WHERE sender = ?1 AND ref = ?2",
        params![sender, reference],
        |row| row.get::<_, String>(0),
    )
    .optional()
    .map(|state| state.as_deref().map(stored_outcome))
}

/// A `u64` as SQLite's integer (the largest values are kept whole).
pub(super) fn sql_u64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A transaction that takes the write lock at once (see the module documentation).
pub(super) fn write_transaction(conn: &Connection) -> rusqlite::Result<Transaction<'_>> {
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

/// Stores a receipt and returns it with its new id (larger than every receipt id before).
pub(super) fn insert_receipt(
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
        outcome_name(outcome),
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
            outcome: stored_outcome(&state),
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
