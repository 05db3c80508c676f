//! Federation's table in the SQLite backend (schema version 4): each linked server's
//! outbound queue, and the receipts this server owes its peers. Each function runs on a
//! connection [`SqliteStore`](super::SqliteStore) lends it and implements the
//! [`Storage`](crate::server::store::Storage) method of the same name.
//!
//! All peers share one table, `peer_queue`, keyed by an `AUTOINCREMENT` id (never reused,
//! so a peer's acknowledgement of an id names one message for the life of the store) and
//! indexed by peer. Receipts, whoever they are about, live in the `receipts` table of
//! `mailbox.rs`: one id sequence, one `ACKSTATUS`. Writes begin `IMMEDIATE`, as there, so a
//! quota check and its insert, or a delete and its receipt, are never raced.

use rusqlite::{params, Connection, OptionalExtension};

use super::mailbox::{insert_receipt, receipt_state, sql_u64, stored_outcome, write_transaction};
use super::sql_count;
use crate::protocol::name::{ServerName, UserName};
use crate::server::store::{Enqueued, Outcome, PeerMail, Receipt};

/// The schema step from version 3 to 4, run by `migrate` in its own transaction.
///
/// `peer_queue` holds the messages local users sent to users of other servers until that
/// server has them: `peer` is the server's canonical name, `recipient` the user's bare
/// name there, `bytes` the payload's size (the per-peer quota sums it).
///
/// `receipts_by_peer` finds the receipts owed to a peer: those whose sender is a full
/// address, by the server part of it (the text after its one `@`), then id. It is an index
/// on that expression, only over senders with an `@`; [`peer_receipts`] spells the same
/// expression and condition so that SQLite uses it.
pub(super) const SCHEMA_V4: &str = "
    CREATE TABLE IF NOT EXISTS peer_queue (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        peer      TEXT NOT NULL,
        sender    TEXT NOT NULL,
        recipient TEXT NOT NULL,
        ref       TEXT NOT NULL,
        payload   TEXT NOT NULL,
        queued_at INTEGER NOT NULL,
        bytes     INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS peer_queue_by_peer ON peer_queue (peer, id);
    CREATE INDEX IF NOT EXISTS peer_queue_by_age ON peer_queue (queued_at);
    CREATE INDEX IF NOT EXISTS peer_queue_by_ref ON peer_queue (sender, ref);
    CREATE INDEX IF NOT EXISTS receipts_by_peer
        ON receipts (substr(sender, instr(sender, '@') + 1), id)
        WHERE instr(sender, '@') > 0;
";

/// See [`Storage::enqueue_for_peer`](crate::server::store::Storage::enqueue_for_peer): the
/// checks and the insert are one write transaction.
#[allow(clippy::too_many_arguments)] // each is a column of the stored row
pub(super) fn enqueue_for_peer(
    conn: &Connection,
    sender: &UserName,
    peer: &ServerName,
    recipient: &UserName,
    reference: &str,
    payload: &str,
    now: u64,
    max_bytes: u64,
) -> rusqlite::Result<Enqueued> {
    let tx = write_transaction(conn)?;
    // A re-sent message (same sender and reference) is stored once, wherever it waits.
    if let Some(id) = queued_id(&tx, sender.as_str(), reference)? {
        return Ok(Enqueued::AlreadyQueued(id));
    }
    let local: Option<i64> = tx
        .query_row(
            "SELECT id FROM mail_queue WHERE sender = ?1 AND ref = ?2",
            params![sender.as_str(), reference],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(id) = local {
        return Ok(Enqueued::AlreadyQueued(id as u64));
    }
    if let Some(outcome) = receipt_state(&tx, sender.as_str(), reference)? {
        return Ok(Enqueued::Resolved(outcome));
    }
    let bytes: i64 = tx.query_row(
        "SELECT COALESCE(SUM(bytes), 0) FROM peer_queue WHERE peer = ?1",
        [peer.as_str()],
        |row| row.get(0),
    )?;
    let len = sql_count(payload.len());
    if bytes.saturating_add(len) > sql_u64(max_bytes) {
        return Ok(Enqueued::Quota);
    }
    tx.execute(
        "INSERT INTO peer_queue (peer, sender, recipient, ref, payload, queued_at, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            peer.as_str(),
            sender.as_str(),
            recipient.as_str(),
            reference,
            payload,
            sql_u64(now),
            len
        ],
    )?;
    let id = tx.last_insert_rowid();
    tx.commit()?;
    Ok(Enqueued::Queued(id as u64))
}

/// See [`Storage::peer_queue`](crate::server::store::Storage::peer_queue).
pub(super) fn peer_queue(
    conn: &Connection,
    peer: &ServerName,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<PeerMail>> {
    let mut select = conn.prepare_cached(
        "SELECT id, sender, recipient, ref, queued_at, payload FROM peer_queue
         WHERE peer = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = select.query_map(
        params![peer.as_str(), sql_u64(after), sql_count(limit)],
        |row| {
            Ok(PeerMail {
                id: row.get::<_, i64>(0)? as u64,
                sender: row.get(1)?,
                recipient: row.get(2)?,
                reference: row.get(3)?,
                time: row.get::<_, i64>(4)?.max(0) as u64,
                payload: row.get(5)?,
            })
        },
    )?;
    rows.collect()
}

/// See [`Storage::peer_acked_all`](crate::server::store::Storage::peer_acked_all): every
/// delete and receipt of the batch are one write transaction.
pub(super) fn peer_acked_all(
    conn: &Connection,
    peer: &ServerName,
    acks: &[(u64, Option<Outcome>)],
    now: u64,
) -> rusqlite::Result<Vec<Receipt>> {
    let tx = write_transaction(conn)?;
    let mut receipts = Vec::new();
    for &(id, outcome) in acks {
        let taken: Option<(String, String, String)> = tx
            .query_row(
                "DELETE FROM peer_queue WHERE id = ?1 AND peer = ?2 RETURNING sender, ref, recipient",
                params![sql_u64(id), peer.as_str()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        if let (Some((sender, reference, recipient)), Some(outcome)) = (taken, outcome) {
            receipts.push(insert_receipt(
                &tx,
                sender,
                reference,
                format!("{recipient}@{peer}"),
                outcome,
                now,
            )?);
        }
    }
    tx.commit()?;
    Ok(receipts)
}

/// See [`Storage::add_receipt`](crate::server::store::Storage::add_receipt): the delete
/// and the receipt are one write transaction.
pub(super) fn add_receipt(
    conn: &Connection,
    sender: &UserName,
    reference: &str,
    recipient: &str,
    outcome: Outcome,
    now: u64,
) -> rusqlite::Result<Option<Receipt>> {
    let tx = write_transaction(conn)?;
    // Only the message queued for that very address: the server that forwarded the
    // receipt is the recipient's.
    tx.execute(
        "DELETE FROM peer_queue WHERE sender = ?1 AND ref = ?2 AND recipient || '@' || peer = ?3",
        params![sender.as_str(), reference, recipient],
    )?;
    let for_another = queued_id(&tx, sender.as_str(), reference)?.is_some();
    let resolved = receipt_state(&tx, sender.as_str(), reference)?.is_some();
    if for_another || resolved {
        tx.commit()?;
        return Ok(None);
    }
    let receipt = insert_receipt(
        &tx,
        sender.to_string(),
        reference.to_owned(),
        recipient.to_owned(),
        outcome,
        now,
    )?;
    tx.commit()?;
    Ok(Some(receipt))
}

/// The receipts owed to server `?1`, ids above `?2`, oldest first, at most `?3`. The
/// expression and condition are those of the `receipts_by_peer` index (see
/// [`SCHEMA_V4`]), so that SQLite reads that index rather than every receipt.
pub(super) const OWED_RECEIPTS: &str = "
    SELECT id, sender, ref, recipient, state FROM receipts
    WHERE instr(sender, '@') > 0 AND substr(sender, instr(sender, '@') + 1) = ?1 AND id > ?2
    ORDER BY id LIMIT ?3";

/// See [`Storage::peer_receipts`](crate::server::store::Storage::peer_receipts). The
/// server part is compared whole (`x@b.test` is not a user of `a.b.test`); a canonical
/// address has one `@`, so the text after the first is the server.
pub(super) fn peer_receipts(
    conn: &Connection,
    peer: &ServerName,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<Receipt>> {
    let mut select = conn.prepare_cached(OWED_RECEIPTS)?;
    let rows = select.query_map(
        params![peer.as_str(), sql_u64(after), sql_count(limit)],
        |row| {
            let state: String = row.get(4)?;
            Ok(Receipt {
                id: row.get::<_, i64>(0)? as u64,
                sender: row.get(1)?,
                reference: row.get(2)?,
                recipient: row.get(3)?,
                outcome: stored_outcome(&state),
            })
        },
    )?;
    rows.collect()
}

/// See [`Storage::forget_receipts`](crate::server::store::Storage::forget_receipts): one
/// write transaction.
pub(super) fn forget_receipts(conn: &Connection, ids: &[u64]) -> rusqlite::Result<()> {
    let tx = write_transaction(conn)?;
    for &id in ids {
        tx.execute("DELETE FROM receipts WHERE id = ?1", [sql_u64(id)])?;
    }
    tx.commit()
}

/// The id of the message `sender` queued as `reference` for any peer, if one is queued.
pub(super) fn queued_id(
    conn: &Connection,
    sender: &str,
    reference: &str,
) -> rusqlite::Result<Option<u64>> {
    conn.query_row(
        "SELECT id FROM peer_queue WHERE sender = ?1 AND ref = ?2",
        params![sender, reference],
        |row| row.get::<_, i64>(0),
    )
    .optional()
    .map(|id| id.map(|id| id as u64))
}

/// Deletes, inside `tx`, every peer message queued at `cutoff` or before and records an
/// `Expired` receipt for each (recipient `user@peer`), in the order of the messages' ids;
/// part of [`Storage::expire`](crate::server::store::Storage::expire).
pub(super) fn expire(conn: &Connection, cutoff: i64, now: u64) -> rusqlite::Result<Vec<Receipt>> {
    let mut rows: Vec<(i64, String, String, String, String)> = conn
        .prepare(
            "DELETE FROM peer_queue WHERE queued_at <= ?1
             RETURNING id, sender, ref, recipient, peer",
        )?
        .query_map([cutoff], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    // RETURNING gives no order: receipts follow the messages' order.
    rows.sort_unstable_by_key(|row| row.0);
    rows.into_iter()
        .map(|(_, sender, reference, recipient, peer)| {
            let to = format!("{recipient}@{peer}");
            insert_receipt(conn, sender, reference, to, Outcome::Expired, now)
        })
        .collect()
}
