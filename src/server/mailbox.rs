//! Offline delivery (`SEND`, `MAIL`, `ACK`, `STATUS`, prekeys): what the reader threads
//! hand the router, what a login replays, and the expiry thread.
//!
//! **Where the database writes happen, and why.** Every mailbox write (`SEND`, `ACK`,
//! `ACKSTATUS`, `BUNDLE`, `SETPREKEY`, `ADDPREKEYS`) is made by the reader thread of the
//! connection that asked, before it answers: the write is committed before the reply
//! (`STATUS … queued` follows a committed row, so nothing acknowledged is lost whatever
//! crashes), and only that connection waits for the disk. The router never touches the
//! database: the reader hands it [`Notice`]s, complete frames for *other* users (a `MAIL`
//! for the recipient, a `STATUS` receipt for the sender, a `PREKEYS` for a key's owner),
//! which it delivers if that user is online and opted in, in order with its other lines.
//! Expiry runs on its own thread ([`start_expiry`]) and at login on the reader.
//!
//! **Each stored line reaches a client once per login.** A login replays what the database
//! holds ([`Backlog`]) while live notices race it. The reader first tells the router of the
//! login, *then* reads the backlog, then hands it over ([`super::router::Event::Backlog`]);
//! meanwhile the router holds that client's notices back. A notice committed before the
//! read is in the backlog; one committed after it was sent to the router after the login
//! event (the channel is FIFO), so the router held it. When the backlog arrives the router
//! sends it, then the held notices whose ids it did not cover (ids only grow: see
//! `store/mod.rs`), and from then on skips any `MAIL` or receipt with an id the
//! backlog covered. Clients still de-duplicate by id (a `MAIL` is sent again at every
//! login until acknowledged).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};

use super::history::unix_now;
use super::outbox::Line;
use super::router::{Event, RouterHandle};
use super::store::{Backlog, Outcome, Receipt, Storage, StoredMail};
use crate::error::Result;
use crate::protocol::name::UserName;
use crate::protocol::{self, DeliveryState, ServerLine};
use crate::rate::TokenBucket;
use crate::sync;

/// A client's one-time prekeys below this after a fetch: it is sent `PREKEYS <n>` to
/// refill (to about 100), so that fetches rarely find none.
const PREKEY_REFILL_MARK: u64 = 35;

/// `BUNDLE` fetches one account may make per minute, and at once, across all its
/// connections. Each hands out one of the owner's one-time prekeys: without a bound, one
/// user could drain anyone's (and a bound per connection is reset by reconnecting).
pub(super) const BUNDLE_FETCHES_PER_MINUTE: u32 = 30;

/// Accounts with a budget remembered before full ones are forgotten: a full budget is the
/// same as none, so forgetting it changes nothing, and memory stays bounded by the
/// accounts that fetched in the last two minutes.
const BUNDLE_BUDGETS_PRUNE_AT: usize = 1_024;

/// The `BUNDLE` budget of each requester that fetched recently (an account, across its
/// connections; or a linked server, across its links), all with one rate.
pub(super) struct BundleBudgets<K = UserName> {
    /// Fetches each requester may make a minute.
    per_minute: u32,
    /// The buckets, behind one lock (a fetch takes it briefly).
    inner: Mutex<Budgets<K>>,
}

/// [`BundleBudgets`]' state.
struct Budgets<K> {
    /// One bucket per requester; absent means full.
    buckets: HashMap<K, TokenBucket>,
    /// The size at which full buckets are next forgotten (at least
    /// [`BUNDLE_BUDGETS_PRUNE_AT`]): twice what a pruning kept, so that many requesters
    /// fetching at once make a scan only now and then, not at every fetch.
    prune_at: usize,
}

impl Default for BundleBudgets {
    /// Accounts' budgets: [`BUNDLE_FETCHES_PER_MINUTE`] each.
    fn default() -> BundleBudgets {
        BundleBudgets::per_minute(BUNDLE_FETCHES_PER_MINUTE)
    }
}

impl<K: Eq + std::hash::Hash + Clone> BundleBudgets<K> {
    /// Budgets of `per_minute` fetches a minute (and at once) for each requester.
    pub(super) fn per_minute(per_minute: u32) -> BundleBudgets<K> {
        BundleBudgets {
            per_minute,
            inner: Mutex::new(Budgets {
                buckets: HashMap::new(),
                prune_at: 0,
            }),
        }
    }

    /// Takes one fetch from `requester`'s budget; `false` if it is spent.
    pub(super) fn take(&self, requester: &K) -> bool {
        self.take_at(requester, Instant::now())
    }

    fn take_at(&self, requester: &K, now: Instant) -> bool {
        let mut guard = sync::lock(&self.inner);
        let budgets = &mut *guard;
        if budgets.buckets.len() >= budgets.prune_at.max(BUNDLE_BUDGETS_PRUNE_AT) {
            budgets.buckets.retain(|_, bucket| {
                bucket.refill(now);
                !bucket.is_full()
            });
            budgets.prune_at = 2 * budgets.buckets.len();
        }
        let per_minute = self.per_minute;
        let bucket = budgets
            .buckets
            .entry(requester.clone())
            .or_insert_with(|| TokenBucket::per_minute(per_minute, now));
        bucket.refill(now);
        bucket.take()
    }
}

/// Most often expiry runs (it also runs at every login); a shorter TTL runs it as often
/// as the TTL.
const EXPIRY_PERIOD: Duration = Duration::from_secs(60);

/// What a notice is, for the router's de-duplication against a login's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoticeKind {
    /// `MAIL <id> …`.
    Mail(u64),
    /// A stored receipt's `STATUS` (its receipt id).
    Receipt(u64),
    /// `PREKEYS <n>`: not stored, never de-duplicated.
    Prekeys,
}

/// A mailbox line for a user other than the requester: delivered by the router if `to` is
/// online and opted in, dropped otherwise (what is stored is replayed at its next login).
pub(super) struct Notice {
    /// Who it is for.
    pub(super) to: UserName,
    /// What it is.
    pub(super) kind: NoticeKind,
    /// The complete frame.
    pub(super) line: Line,
}

impl Notice {
    /// `MAIL` for `to`.
    pub(super) fn mail(to: UserName, mail: &StoredMail) -> Notice {
        Notice {
            to,
            kind: NoticeKind::Mail(mail.id),
            line: mail_line(mail),
        }
    }

    /// The `STATUS` of `receipt` for its sender; `None` if the sender is no local user
    /// name: a user of another server (its receipt is forwarded by that peer's link, see
    /// `federation/outbound.rs`), or a file edited by hand.
    pub(super) fn receipt(receipt: &Receipt) -> Option<Notice> {
        Some(Notice {
            to: UserName::parse(&receipt.sender).ok()?,
            kind: NoticeKind::Receipt(receipt.id),
            line: Line::from(&status_line(receipt)),
        })
    }

    /// `PREKEYS <left>` for `owner` after a fetch left it `left` one-time prekeys, if that
    /// is below [`PREKEY_REFILL_MARK`] (the owner tops them up); `None` above it.
    pub(super) fn refill(owner: &UserName, left: u64) -> Option<Notice> {
        (left < PREKEY_REFILL_MARK).then(|| Notice {
            to: owner.clone(),
            kind: NoticeKind::Prekeys,
            line: Line::from(&prekeys_line(left)),
        })
    }
}

/// `MAIL <id> <sender> <time> <payload>`.
fn mail_line(mail: &StoredMail) -> Line {
    let mut out = Vec::new();
    protocol::write_mail(&mut out, mail.id, &mail.sender, mail.time, &mail.payload);
    Line::Owned(out)
}

/// `STATUS <ref> delivered|expired|unreadable|refused <reason> <recipient>`.
fn status_line(receipt: &Receipt) -> ServerLine {
    ServerLine::Status {
        reference: receipt.reference.clone(),
        state: final_state(receipt.outcome),
        user: receipt.recipient.clone(),
    }
}

/// The final `STATUS` state of a stored outcome.
pub(super) fn final_state(outcome: Outcome) -> DeliveryState {
    match outcome {
        Outcome::Delivered => DeliveryState::Delivered,
        Outcome::Expired => DeliveryState::Expired,
        Outcome::Unreadable => DeliveryState::Unreadable,
        Outcome::Refused(reason) => DeliveryState::Refused(reason),
    }
}

/// `PREKEYS <n>`.
fn prekeys_line(left: u64) -> ServerLine {
    ServerLine::Prekeys {
        count: u32::try_from(left).unwrap_or(u32::MAX),
    }
}

/// The lines a login replays, in the spec's order (`PREKEYS`, receipts, mail), and their
/// size in bytes.
pub(super) fn backlog_lines(backlog: &Backlog) -> (Vec<Line>, usize) {
    let mut lines = Vec::with_capacity(1 + backlog.receipts.len() + backlog.mail.len());
    if let Some(left) = backlog.prekeys {
        lines.push(Line::from(&prekeys_line(left)));
    }
    lines.extend(backlog.receipts.iter().map(|r| Line::from(&status_line(r))));
    lines.extend(backlog.mail.iter().map(mail_line));
    let bytes = lines.iter().map(|l| l.as_bytes().len()).sum();
    (lines, bytes)
}

/// Expires what is older than `ttl` and hands the receipts to the router for senders who
/// are online. Errors are logged: expiry is retried at the next login or period.
pub(super) fn expire(store: &dyn Storage, ttl: Duration, router: &RouterHandle) {
    match store.expire(unix_now(), ttl.as_secs()) {
        Ok(receipts) if receipts.is_empty() => {}
        Ok(receipts) => {
            log::info!("mailbox: {} messages expired", receipts.len());
            let notices = receipts.iter().filter_map(Notice::receipt).collect();
            let _ = router.send(Event::Notices(notices));
        }
        Err(e) => log::error!("mailbox: expiry failed: {e}"),
    }
}

/// The expiry thread; dropping `stop` ends it.
pub(super) struct Expiry {
    /// The thread.
    pub(super) thread: JoinHandle<()>,
    /// Dropped to stop it.
    pub(super) stop: Sender<()>,
}

/// Starts the thread that expires old messages every [`EXPIRY_PERIOD`] (or every `ttl`,
/// if shorter), off the router's path.
pub(super) fn start_expiry(
    store: Arc<dyn Storage>,
    ttl: Duration,
    router: RouterHandle,
) -> Result<Expiry> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let period = EXPIRY_PERIOD.min(ttl).max(Duration::from_millis(100));
    let thread = thread::Builder::new()
        .name("mailbox-expiry".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                expire(&*store, ttl, &router);
            }
        })?;
    Ok(Expiry { thread, stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: usize) -> UserName {
        UserName::parse(&format!("user{i}")).expect("name")
    }

    #[test]
    fn a_bundle_budget_is_spent_per_account_and_full_budgets_are_forgotten() {
        let budgets = BundleBudgets::default();
        let start = Instant::now();
        let alice = name(0);
        let taken = (0..40).filter(|_| budgets.take_at(&alice, start)).count();
        assert_eq!(taken, BUNDLE_FETCHES_PER_MINUTE as usize);
        // As many accounts as it takes to reach the pruning size, each fetching once.
        for i in 1..BUNDLE_BUDGETS_PRUNE_AT {
            assert!(budgets.take_at(&name(i), start));
        }
        let size = || sync::lock(&budgets.inner).buckets.len();
        assert_eq!(size(), BUNDLE_BUDGETS_PRUNE_AT);
        // A minute on, their buckets are full again: the next fetch forgets them, and
        // alice, whose budget was refilled too, may fetch again.
        let later = start + Duration::from_secs(61);
        assert!(budgets.take_at(&name(BUNDLE_BUDGETS_PRUNE_AT), later));
        assert_eq!(
            size(),
            1,
            "only the account that just fetched is remembered"
        );
        assert!(budgets.take_at(&alice, later));
    }

    #[test]
    fn budgets_still_spent_are_kept_and_pruning_waits_for_twice_as_many() {
        let budgets = BundleBudgets::default();
        let start = Instant::now();
        for i in 0..BUNDLE_BUDGETS_PRUNE_AT {
            assert!(budgets.take_at(&name(i), start));
        }
        // Within the minute nothing is full: the scan keeps all, and the next one waits.
        let soon = start + Duration::from_secs(1);
        assert!(budgets.take_at(&name(BUNDLE_BUDGETS_PRUNE_AT), soon));
        let inner = sync::lock(&budgets.inner);
        assert_eq!(inner.buckets.len(), BUNDLE_BUDGETS_PRUNE_AT + 1);
        assert_eq!(inner.prune_at, 2 * BUNDLE_BUDGETS_PRUNE_AT);
    }
}
