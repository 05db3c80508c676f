//! The server's storage interface: accounts, identity keys, the room's history, prekeys,
//! the offline message queue and its receipts, behind one trait, [`Storage`].
//!
//! The rest of the server holds an `Arc<dyn Storage>` and never sees SQL; the backend is
//! chosen once, where the server starts. Today's backend is [`SqliteStore`], an embedded
//! SQLite database in the data directory (`sqlite.rs`, with offline delivery's tables in
//! `sqlite/mailbox.rs` and federation's per-peer queues in `sqlite/peers.rs`). A shared
//! store for several machines serving one server name (PostgreSQL) is another
//! implementation of the same trait.
//!
//! **What every backend must guarantee** (each method's `///` gives its part):
//! - *Durable before return.* A write that returned `Ok` survives a restart, a `kill -9`
//!   and a power cut: the server answers `OK REGISTER` or `STATUS … queued` only after it.
//! - *Atomic.* Each method is one transaction: whatever crashes, all of it happened or
//!   none. A message is either still queued or has exactly one receipt, never both, never
//!   neither; a one-time prekey is handed out at most once.
//! - *Safe under concurrency.* Many threads (bcrypt workers, connection readers, the
//!   history writer, expiry) call at once, and later several machines: the rules above
//!   hold for concurrent callers (a queue's quota is checked in the write that fills it).
//! - *Ids only grow.* Message and receipt ids are never reused, even after the newest is
//!   deleted, so an id names one message for the life of the store; the router relies on
//!   it to recognise a live `MAIL` or receipt a login's backlog already covered.
//! - *Names are canonical.* Account names are unique ignoring case; every other name
//!   handed in is an account's canonical name, a linked server's canonical name, or the
//!   canonical full address `user@server` of a user of a linked server (one `@`).
//!
//! **Federation.** A message from a local user to `user@peer` waits in `peer`'s outbound
//! queue ([`Storage::enqueue_for_peer`]) until that server has taken it
//! ([`Storage::peer_acked`]); its receipt comes back later ([`Storage::add_receipt`]) and
//! is stored with the local ones. A message a peer relayed here is queued like a local one,
//! with the full address as its sender ([`Storage::enqueue`]), and its receipt waits until
//! the link hands it to that peer ([`Storage::peer_receipts`], [`Storage::forget_receipts`]).
//! Every row is deleted only when the next hop has it, in the transaction that records
//! what follows, so nothing acknowledged is lost.
//!
//! `conformance.rs` (tests only) checks these on a real backend; a new backend runs the
//! whole suite with one line.

#[cfg(test)]
mod conformance;
mod sqlite;

pub(super) use sqlite::SqliteStore;
pub use sqlite::DB_FILE;

use super::history::HistoryLine;
use crate::error::Result;
use crate::protocol::name::{ServerName, UserName};
use crate::protocol::Refusal;

/// The most one-time prekeys stored for one user; `ADDPREKEYS` beyond it are ignored.
const MAX_ONE_TIME_PREKEYS: u64 = 200;

/// Where the server keeps what must outlive a connection. Shared between threads as
/// `Arc<dyn Storage>`; see the module documentation for what every method guarantees.
pub(super) trait Storage: Send + Sync {
    /// Stores a new account with its bcrypt `password_hash`. `AlreadyExists` (nothing
    /// changed) if an account has that name ignoring case. Durable on `Ok(Created::Yes)`.
    fn create_account(&self, user: &UserName, password_hash: &str) -> Result<Created>;

    /// The bcrypt hash of `user`'s password, or `None` if there is no such account.
    fn password_hash(&self, user: &UserName) -> Result<Option<String>>;

    /// Notes a successful login (for the operator; nothing depends on it). Does nothing if
    /// there is no such account.
    fn record_login(&self, user: &UserName) -> Result<()>;

    /// Replaces `user`'s identity public key (base64). Returns `false`, changing nothing,
    /// if there is no such account.
    fn set_identity_key(&self, user: &UserName, key: &str) -> Result<bool>;

    /// `user`'s identity public key (base64), if the account exists and has published one.
    fn identity_key(&self, user: &UserName) -> Result<KeyLookup>;

    /// Number of accounts (for the start-up log line).
    fn account_count(&self) -> Result<i64>;

    /// Appends room lines (oldest first) and keeps only the last `keep` lines, in one
    /// transaction: once it commits the store never holds more than `keep` lines.
    fn append_room_history(&self, lines: &[HistoryLine], keep: usize) -> Result<()>;

    /// Deletes all but the last `keep` room lines (at start, so that a lowered limit, or
    /// 0, takes effect on what was stored before).
    fn trim_room_history(&self, keep: usize) -> Result<()>;

    /// The last `last` room lines, oldest first, with the times and senders they were
    /// stored with.
    fn room_history(&self, last: usize) -> Result<Vec<HistoryLine>>;

    /// Stores `user`'s signed-prekey record (base64), replacing the previous one, and
    /// returns how many one-time prekeys `user` has now. When a previous record exists and
    /// `same_mailbox(previous)` is false, the record starts a new mailbox (the client lost
    /// or replaced its keys): the one-time prekeys stored before are void — no client holds
    /// their secrets — and are deleted in the same transaction, so none is handed out again.
    fn set_signed_prekey(
        &self,
        user: &UserName,
        record: &str,
        same_mailbox: &dyn Fn(&str) -> bool,
    ) -> Result<u64>;

    /// Adds one-time prekeys `(id, base64 value)` in order, in one transaction, ignoring
    /// ids `user` already has stored and any beyond [`MAX_ONE_TIME_PREKEYS`]; returns how
    /// many `user` has now.
    fn add_one_time_prekeys(&self, user: &UserName, prekeys: &[(u32, &str)]) -> Result<u64>;

    /// `owner`'s signed-prekey record and the oldest of its one-time prekeys, which is
    /// deleted in the same transaction: a one-time prekey is handed out at most once,
    /// however many fetches run at once.
    fn take_bundle(&self, owner: &UserName) -> Result<BundleLookup>;

    /// Stores a message from `sender` for `recipient` (a canonical name), committed before
    /// it returns. `sender` is a local canonical user name, or the full address
    /// `user@server` of a user of a linked server (a message that server relayed; its
    /// receipt is then one of [`Storage::peer_receipts`]). Nothing is stored if:
    /// - the recipient has no account (`NoSuchUser`);
    /// - a message with the same `sender` and `reference` is still queued, here or in a
    ///   peer's queue (`AlreadyQueued`, its id in that queue), or has a receipt `sender` has
    ///   not yet acknowledged (`Resolved`, its outcome): a re-send is stored once, and a
    ///   relayed message re-sent by its server too;
    /// - the recipient's queue would then exceed `quota` in messages or payload bytes
    ///   (`Quota`), checked in the same transaction as the insert, so concurrent senders
    ///   cannot overshoot it.
    ///
    /// Only `Queued` stored anything. Its id is larger than every message id handed out
    /// before, and never reused.
    fn enqueue(
        &self,
        sender: &str,
        recipient: &str,
        reference: &str,
        payload: &str,
        now: u64,
        quota: Quota,
    ) -> Result<Enqueued>;

    /// [`Storage::enqueue`] for each message of a batch a peer relayed, in order, all in
    /// **one** transaction (one durable commit for the batch); returns what became of each,
    /// in that order. Each message is checked against the queue as the ones before it in
    /// the batch left it (a repeat within the batch is `AlreadyQueued`).
    fn enqueue_all(
        &self,
        messages: &[NewMail<'_>],
        now: u64,
        quota: Quota,
    ) -> Result<Vec<Enqueued>>;

    /// `recipient` is done with message `id`: deletes it and records its receipt with
    /// `outcome` at `now`, in one transaction. `None`, and nothing done, if no message
    /// with that id is queued for `recipient` (so a repeated `ACK` records nothing).
    fn ack(
        &self,
        recipient: &UserName,
        id: u64,
        outcome: Outcome,
        now: u64,
    ) -> Result<Option<Receipt>>;

    /// Deletes every message queued `ttl_seconds` or more before `now`, for local users and
    /// in every peer's queue (a peer that stays down does not keep a message forever), and
    /// records an `Expired` receipt for each, in one transaction. A peer message's receipt
    /// names its recipient by full address `user@peer`. Returns the receipts in the order
    /// of their ids (local messages by id, then peer messages by id).
    fn expire(&self, now: u64, ttl_seconds: u64) -> Result<Vec<Receipt>>;

    /// What `user` is sent at login, read as one consistent snapshot.
    fn backlog(&self, user: &UserName) -> Result<Backlog>;

    /// `sender` has seen the receipts for `reference`: forgets them (the reference may
    /// then name a new message). Receipts about messages to other servers are among them.
    fn delete_receipts(&self, sender: &UserName, reference: &str) -> Result<()>;

    /// Stores a message from local `sender` for `recipient@peer` in `peer`'s outbound
    /// queue, committed before it returns, unless (nothing stored):
    /// - a message with the same `sender` and `reference` is still queued, in any peer's
    ///   queue or for a local user (`AlreadyQueued`, its id in that queue);
    /// - it has a receipt `sender` has not yet acknowledged (`Resolved`, its outcome);
    /// - the payload bytes queued for `peer` and this one would exceed `max_bytes`
    ///   (`Quota`), checked in the same transaction as the insert, so concurrent senders
    ///   cannot overshoot it. Each peer's queue is counted apart: one peer that is down
    ///   does not stop messages to the others.
    ///
    /// Whether `peer` is linked, and `recipient` exists there, is not known here (the peer
    /// answers, [`Storage::peer_acked`]). Only `Queued` stored anything; its id is larger
    /// than every id this method handed out before, and never reused.
    #[allow(clippy::too_many_arguments)] // each is a column of the stored row
    fn enqueue_for_peer(
        &self,
        sender: &UserName,
        peer: &ServerName,
        recipient: &UserName,
        reference: &str,
        payload: &str,
        now: u64,
        max_bytes: u64,
    ) -> Result<Enqueued>;

    /// The oldest `limit` messages queued for `peer` with ids above `after`, by id: what
    /// the link sends next (`after` is the last id it sent on this connection).
    fn peer_queue(&self, peer: &ServerName, after: u64, limit: usize) -> Result<Vec<PeerMail>>;

    /// `peer` took its message `id` (stored it, or refused it for good): deletes it and,
    /// when `outcome` is `Some` (a refusal, say), records a receipt for its sender with that
    /// outcome, naming the recipient `user@peer`, in the same transaction, and returns it.
    /// `None`, and no receipt, when `outcome` is `None` (the receipt comes later, through
    /// [`Storage::add_receipt`]) or when `peer` has no message `id` queued: a repeated
    /// acknowledgement records nothing, and a peer cannot touch another peer's queue.
    /// [`Storage::peer_acked_all`] of one.
    fn peer_acked(
        &self,
        peer: &ServerName,
        id: u64,
        outcome: Option<Outcome>,
        now: u64,
    ) -> Result<Option<Receipt>> {
        Ok(self.peer_acked_all(peer, &[(id, outcome)], now)?.pop())
    }

    /// [`Storage::peer_acked`] for each `(id, outcome)` of a batch the peer answered, in
    /// order, all in **one** transaction (one durable commit for the batch: the link's
    /// cost per message); returns the receipts recorded, in that order.
    fn peer_acked_all(
        &self,
        peer: &ServerName,
        acks: &[(u64, Option<Outcome>)],
        now: u64,
    ) -> Result<Vec<Receipt>>;

    /// A receipt a peer forwarded about the message local `sender` sent as `reference` to
    /// `recipient` (a full address `user@server`, the server being the peer that
    /// forwarded it). In one transaction: deletes that message from the peer's queue if it
    /// is still there (the peer resolved it, so it is never sent again), and records the
    /// receipt, which is returned. `None`, nothing recorded, if an unacknowledged receipt
    /// for `sender` and `reference` is already stored (a re-forwarded receipt is recorded
    /// once), or if a message of `sender` with that `reference` is still queued for
    /// another recipient (a server cannot resolve a message that is not its own). Its id
    /// follows every receipt id handed out before.
    fn add_receipt(
        &self,
        sender: &UserName,
        reference: &str,
        recipient: &str,
        outcome: Outcome,
        now: u64,
    ) -> Result<Option<Receipt>>;

    /// The stored receipts whose sender is a user of `peer` (full address `user@peer`,
    /// the server part equal to `peer`, not merely ending with it), with ids above
    /// `after`, oldest first, at most `limit`: what this server owes that peer.
    fn peer_receipts(&self, peer: &ServerName, after: u64, limit: usize) -> Result<Vec<Receipt>>;

    /// Deletes the receipts `ids` (the peer they were for took them), in one transaction.
    /// Ids already gone are skipped.
    fn forget_receipts(&self, ids: &[u64]) -> Result<()>;
}

/// What a key look-up found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyLookup {
    /// No account has that name.
    NoSuchUser,
    /// The account exists and has published no identity key yet.
    NoKey,
    /// The account's identity public key, base64.
    Key(String),
}

/// What `create_account` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Created {
    /// The account is stored.
    Yes,
    /// An account with that name (ignoring case) already exists; nothing changed.
    AlreadyExists,
}

/// A recipient's queue bounds (`--queue-max`, `--queue-max-bytes`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Quota {
    /// Most messages queued for one recipient.
    pub(super) messages: u64,
    /// Most payload bytes queued for one recipient.
    pub(super) bytes: u64,
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Enqueued {
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
    /// The recipient's queue (or, for a message to another server, that server's queue)
    /// is full; nothing stored.
    Quota,
}

/// A message for [`Storage::enqueue_all`]: the arguments of one [`Storage::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NewMail<'a> {
    /// Who sent it: a local name or a full address.
    pub(super) sender: &'a str,
    /// Who it is for: a local canonical name.
    pub(super) recipient: &'a str,
    /// The sender's reference.
    pub(super) reference: &'a str,
    /// The payload.
    pub(super) payload: &'a str,
}

/// A message waiting in a peer's outbound queue, as the link relays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PeerMail {
    /// Its id in the peer queues (the peer acknowledges it by this id).
    pub(super) id: u64,
    /// Who sent it: a local canonical name (the peer sees `sender@` this server).
    pub(super) sender: String,
    /// Who it is for: the user's bare name on the peer.
    pub(super) recipient: String,
    /// The sender's reference, which the peer's receipt names.
    pub(super) reference: String,
    /// When it was queued here, Unix seconds (expiry counts from it).
    pub(super) time: u64,
    /// The payload, as sent.
    pub(super) payload: String,
}

/// One queued message, as replayed to its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StoredMail {
    /// Its id (the `MAIL` id).
    pub(super) id: u64,
    /// Who sent it (a canonical name, or `user@server` for a message a peer relayed).
    pub(super) sender: String,
    /// When it was queued, Unix seconds.
    pub(super) time: u64,
    /// The payload, as sent.
    pub(super) payload: String,
}

/// A final state of a message, stored for its sender until `ACKSTATUS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The recipient acknowledged it.
    Delivered,
    /// Its time to live passed first.
    Expired,
    /// The recipient's client acknowledged it as one it could not open.
    Unreadable,
    /// The recipient's server (a linked peer) refused it for good: no such user there,
    /// or that user's queue is full.
    Refused(Refusal),
}

/// A stored receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Receipt {
    /// Its id (increasing; the router skips live receipts already replayed at login).
    pub(super) id: u64,
    /// Who sent the message, and is told: a local name, or `user@server` for a message a
    /// peer relayed (the receipt is then forwarded to that peer).
    pub(super) sender: String,
    /// The sender's reference.
    pub(super) reference: String,
    /// Who the message was for: a local name, or `user@server` for a message to a peer.
    pub(super) recipient: String,
    /// What happened.
    pub(super) outcome: Outcome,
}

/// What a `BUNDLE` fetch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BundleLookup {
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

/// What an opted-in connection is sent at login, read as one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Backlog {
    /// One-time prekeys left, if the user has a signed-prekey record.
    pub(super) prekeys: Option<u64>,
    /// Receipts for messages the user sent, oldest first.
    pub(super) receipts: Vec<Receipt>,
    /// Messages queued for the user, by id.
    pub(super) mail: Vec<StoredMail>,
    /// The largest message id ever assigned when this was read: a live `MAIL` with an id
    /// up to it was either replayed here or is no longer queued.
    pub(super) mail_through: u64,
    /// The same for receipt ids.
    pub(super) receipts_through: u64,
}
