//! The contract of [`Storage`] as tests, written once against the trait: each takes a
//! fresh, empty store as `&dyn Storage`. A backend runs them all with one line,
//! `suite!(open)`, in a module at the end of this file, where `open()` returns what must
//! outlive the store (a temporary directory, say) and the store.

use std::sync::Barrier;
use std::thread;

use super::{
    BundleLookup, Created, Enqueued, KeyLookup, Outcome, Quota, Receipt, Storage, StoredMail,
    MAX_ONE_TIME_PREKEYS,
};
use crate::protocol::name::UserName;
use crate::server::history::HistoryLine;

/// One `#[test]` per conformance test, each on a store `$open()` made for it.
macro_rules! suite {
    ($open:path) => {
        suite!(@tests $open;
            accounts_are_unique_ignoring_case_and_keep_their_hash_and_key,
            room_history_keeps_the_last_lines_in_order,
            the_signed_prekey_is_replaced_and_one_time_prekeys_are_capped_and_taken_oldest_first,
            one_time_prekeys_are_handed_out_at_most_once_under_concurrent_fetchers,
            a_record_from_another_mailbox_voids_the_one_time_prekeys_stored_before_it,
            ack_and_expiry_each_turn_a_message_into_exactly_one_receipt,
            a_resent_reference_is_stored_once_and_answered_with_its_state,
            a_reference_resent_concurrently_is_stored_once,
            the_quota_counts_messages_and_bytes,
            concurrent_senders_never_overshoot_the_quota,
            an_ack_deletes_the_message_and_records_one_receipt_however_many_race,
            ids_increase_and_are_never_reused_after_the_newest_is_deleted,
            expiry_turns_each_old_message_into_an_expired_receipt_in_order,
        );
    };
    (@tests $open:path; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let (_keep, storage) = $open();
                super::$test(&*storage);
            }
        )*
    };
}

/// SQLite, on a database file in a fresh temporary directory.
mod sqlite {
    use super::super::{SqliteStore, Storage};

    fn open() -> (tempfile::TempDir, Box<dyn Storage>) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open(&dir.path().join("data")).expect("open");
        (dir, Box::new(store))
    }

    suite!(open);
}

fn name(user: &str) -> UserName {
    UserName::parse(user).expect("a valid name")
}

/// Creates these accounts.
fn with_accounts(store: &dyn Storage, users: &[&str]) {
    for user in users {
        assert_eq!(
            store.create_account(&name(user), "hash").unwrap(),
            Created::Yes
        );
    }
}

/// The id of a message `enqueue` stored; fails the test otherwise.
fn queued(result: Enqueued) -> u64 {
    match result {
        Enqueued::Queued(id) => id,
        other => panic!("not queued: {other:?}"),
    }
}

/// A quota no test reaches.
const ROOMY: Quota = Quota {
    messages: 100,
    bytes: 1 << 20,
};

/// Threads that race in the concurrency tests.
const THREADS: usize = 8;

/// Runs `each(thread index)` on [`THREADS`] threads released together; their results.
fn race<T: Send>(each: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(THREADS);
    thread::scope(|scope| {
        let racers: Vec<_> = (0..THREADS)
            .map(|i| {
                let (barrier, each) = (&barrier, &each);
                scope.spawn(move || {
                    barrier.wait();
                    each(i)
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

fn accounts_are_unique_ignoring_case_and_keep_their_hash_and_key(store: &dyn Storage) {
    let (alice, nobody) = (name("alice"), name("nobody"));
    assert_eq!(store.account_count().unwrap(), 0);
    assert_eq!(store.create_account(&alice, "h1").unwrap(), Created::Yes);
    assert_eq!(
        store.create_account(&name("ALICE"), "h2").unwrap(),
        Created::AlreadyExists
    );
    assert_eq!(store.password_hash(&alice).unwrap().as_deref(), Some("h1"));
    assert_eq!(store.password_hash(&nobody).unwrap(), None);
    assert_eq!(store.identity_key(&alice).unwrap(), KeyLookup::NoKey);
    assert!(store.set_identity_key(&alice, "k1").unwrap());
    assert!(store.set_identity_key(&alice, "k2").unwrap());
    assert_eq!(
        store.identity_key(&alice).unwrap(),
        KeyLookup::Key("k2".to_owned())
    );
    assert!(!store.set_identity_key(&nobody, "k").unwrap());
    assert_eq!(store.identity_key(&nobody).unwrap(), KeyLookup::NoSuchUser);
    store.record_login(&alice).unwrap();
    store.record_login(&nobody).unwrap();
    assert_eq!(store.account_count().unwrap(), 1, "a login creates nothing");
    assert_eq!(store.password_hash(&alice).unwrap().as_deref(), Some("h1"));
}

/// The last `last` stored room lines as `(time, sender, text)`, oldest first.
pub(super) fn lines(store: &dyn Storage, last: usize) -> Vec<(u64, String, String)> {
    store
        .room_history(last)
        .unwrap()
        .iter()
        .map(|l| (l.time(), l.sender().to_string(), l.text().to_owned()))
        .collect()
}

fn room_history_keeps_the_last_lines_in_order(store: &dyn Storage) {
    let senders = ["alice", "bob"];
    let batch: Vec<HistoryLine> = (1..=5)
        .map(|i| {
            HistoryLine::new(
                1000 + i,
                name(senders[i as usize % 2]),
                &format!("line {i}"),
            )
        })
        .collect();
    let line = |i: u64| {
        (
            1000 + i,
            senders[i as usize % 2].to_owned(),
            format!("line {i}"),
        )
    };
    store.append_room_history(&batch[..2], 3).unwrap();
    assert_eq!(lines(store, usize::MAX), [line(1), line(2)]);
    store.append_room_history(&batch[2..], 3).unwrap();
    assert_eq!(lines(store, usize::MAX), [line(3), line(4), line(5)]);
    assert_eq!(lines(store, 2), [line(4), line(5)]);
    assert!(lines(store, 0).is_empty());
    // A batch longer than `keep` keeps its own last lines.
    store.append_room_history(&batch, 2).unwrap();
    assert_eq!(lines(store, usize::MAX), [line(4), line(5)]);
    store.trim_room_history(1).unwrap();
    assert_eq!(lines(store, usize::MAX), [line(5)]);
    store.trim_room_history(0).unwrap();
    assert!(lines(store, usize::MAX).is_empty());
}

/// The one-time prekey a fetch of `owner`'s bundle handed out, and how many are left.
fn take_one(store: &dyn Storage, owner: &UserName) -> (Option<(u32, String)>, u64) {
    match store.take_bundle(owner).unwrap() {
        BundleLookup::Found { one_time, left, .. } => (one_time, left),
        other => panic!("no bundle: {other:?}"),
    }
}

fn the_signed_prekey_is_replaced_and_one_time_prekeys_are_capped_and_taken_oldest_first(
    store: &dyn Storage,
) {
    with_accounts(store, &["bob", "carol"]);
    let bob = name("bob");
    assert_eq!(
        store.take_bundle(&name("nobody")).unwrap(),
        BundleLookup::NoSuchUser
    );
    assert_eq!(store.take_bundle(&bob).unwrap(), BundleLookup::NoRecord);
    assert_eq!(store.backlog(&bob).unwrap().prekeys, None);
    assert_eq!(store.set_signed_prekey(&bob, "rec1", &|_| true).unwrap(), 0);
    assert_eq!(store.set_signed_prekey(&bob, "rec2", &|_| true).unwrap(), 0);
    assert_eq!(
        store.take_bundle(&bob).unwrap(),
        BundleLookup::Found {
            record: "rec2".to_owned(),
            one_time: None,
            left: 0
        }
    );
    assert_eq!(store.backlog(&bob).unwrap().prekeys, Some(0));
    assert_eq!(
        store
            .add_one_time_prekeys(&bob, &[(5, "k5"), (3, "k3")])
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .add_one_time_prekeys(&bob, &[(3, "again"), (7, "k7")])
            .unwrap(),
        3,
        "an id already stored is ignored"
    );
    assert_eq!(store.backlog(&bob).unwrap().prekeys, Some(3));
    // Carol's prekeys are hers alone.
    store
        .set_signed_prekey(&name("carol"), "rec", &|_| true)
        .unwrap();
    assert_eq!(take_one(store, &name("carol")), (None, 0));
    assert_eq!(take_one(store, &bob), (Some((5, "k5".to_owned())), 2));
    assert_eq!(take_one(store, &bob), (Some((3, "k3".to_owned())), 1));
    assert_eq!(take_one(store, &bob), (Some((7, "k7".to_owned())), 0));
    assert_eq!(take_one(store, &bob), (None, 0));
    let many: Vec<(u32, String)> = (1..=250).map(|i| (i, format!("k{i}"))).collect();
    let many: Vec<(u32, &str)> = many.iter().map(|(i, k)| (*i, k.as_str())).collect();
    assert_eq!(
        store.add_one_time_prekeys(&bob, &many).unwrap(),
        MAX_ONE_TIME_PREKEYS
    );
    assert_eq!(take_one(store, &bob), (Some((1, "k1".to_owned())), 199));
}

fn a_record_from_another_mailbox_voids_the_one_time_prekeys_stored_before_it(store: &dyn Storage) {
    with_accounts(store, &["bob"]);
    let bob = name("bob");
    let same_as_first = |previous: &str| previous == "first";
    assert_eq!(
        store
            .set_signed_prekey(&bob, "first", &same_as_first)
            .unwrap(),
        0
    );
    let old = [(1, "old1"), (2, "old2"), (3, "old3")];
    assert_eq!(store.add_one_time_prekeys(&bob, &old).unwrap(), 3);
    // The same mailbox (a rotated signed prekey): its one-time prekeys stay.
    assert_eq!(
        store
            .set_signed_prekey(&bob, "rotated", &same_as_first)
            .unwrap(),
        3
    );
    // Another mailbox: they are deleted with the record's replacement.
    assert_eq!(store.set_signed_prekey(&bob, "new", &|_| false).unwrap(), 0);
    assert_eq!(take_one(store, &bob), (None, 0));
    // The new mailbox's keys, with the same ids as the void ones, are stored and served.
    assert_eq!(store.add_one_time_prekeys(&bob, &[(1, "new1")]).unwrap(), 1);
    assert_eq!(take_one(store, &bob), (Some((1, "new1".to_owned())), 0));
}

fn one_time_prekeys_are_handed_out_at_most_once_under_concurrent_fetchers(store: &dyn Storage) {
    const EACH: usize = 15;
    with_accounts(store, &["bob"]);
    let bob = name("bob");
    store.set_signed_prekey(&bob, "rec", &|_| true).unwrap();
    let keys: Vec<(u32, String)> = (1..=200).map(|i| (i, format!("k{i}"))).collect();
    let keys: Vec<(u32, &str)> = keys.iter().map(|(i, k)| (*i, k.as_str())).collect();
    assert_eq!(store.add_one_time_prekeys(&bob, &keys).unwrap(), 200);
    let taken = race(|_| {
        (0..EACH)
            .filter_map(|_| take_one(store, &bob).0)
            .collect::<Vec<_>>()
    });
    let mut ids: Vec<u32> = taken
        .into_iter()
        .flatten()
        .map(|(id, value)| {
            assert_eq!(value, format!("k{id}"));
            id
        })
        .collect();
    assert_eq!(ids.len(), THREADS * EACH, "every fetch got a prekey");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), THREADS * EACH, "a prekey was handed out twice");
    let (_, left) = take_one(store, &bob);
    assert_eq!(left as usize, 200 - THREADS * EACH - 1);
}

fn ack_and_expiry_each_turn_a_message_into_exactly_one_receipt(store: &dyn Storage) {
    with_accounts(store, &["alice", "bob"]);
    let (alice, bob) = (name("alice"), name("bob"));
    let first = queued(
        store
            .enqueue(&alice, "bob", "r1", "p1", 100, ROOMY)
            .unwrap(),
    );
    let second = queued(
        store
            .enqueue(&alice, "bob", "r2", "p2", 200, ROOMY)
            .unwrap(),
    );
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
            receipt.recipient.as_str(),
            receipt.outcome
        ),
        ("alice", "r1", "bob", Outcome::Delivered)
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
    assert_eq!(
        (expired[0].reference.as_str(), expired[0].outcome),
        ("r2", Outcome::Expired)
    );
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
}

fn a_resent_reference_is_stored_once_and_answered_with_its_state(store: &dyn Storage) {
    with_accounts(store, &["alice", "bob"]);
    let (alice, bob) = (name("alice"), name("bob"));
    let quota = Quota {
        messages: 10,
        bytes: 1_000,
    };
    let id = queued(store.enqueue(&alice, "bob", "r1", "one", 1, quota).unwrap());
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
    let again = queued(store.enqueue(&alice, "bob", "r1", "two", 5, quota).unwrap());
    assert_ne!(again, id);
    // Another sender's reference is another message.
    queued(
        store
            .enqueue(&bob, "alice", "r1", "three", 6, quota)
            .unwrap(),
    );
}

fn a_reference_resent_concurrently_is_stored_once(store: &dyn Storage) {
    with_accounts(store, &["alice", "bob"]);
    let alice = name("alice");
    let results = race(|_| store.enqueue(&alice, "bob", "r", "once", 1, ROOMY).unwrap());
    let ids: Vec<u64> = results
        .iter()
        .filter_map(|r| match r {
            Enqueued::Queued(id) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 1, "stored by exactly one sender: {results:?}");
    let again = results
        .iter()
        .filter(|r| **r == Enqueued::AlreadyQueued(ids[0]))
        .count();
    assert_eq!(again, THREADS - 1, "{results:?}");
    let mail = store.backlog(&name("bob")).unwrap().mail;
    assert_eq!(mail.len(), 1);
    assert_eq!((mail[0].id, mail[0].payload.as_str()), (ids[0], "once"));
}

fn the_quota_counts_messages_and_bytes(store: &dyn Storage) {
    with_accounts(store, &["alice", "bob"]);
    let alice = name("alice");
    let quota = Quota {
        messages: 2,
        bytes: 10,
    };
    queued(
        store
            .enqueue(&alice, "bob", "a", "12345", 1, quota)
            .unwrap(),
    );
    assert_eq!(
        store
            .enqueue(&alice, "bob", "b", "123456", 1, quota)
            .unwrap(),
        Enqueued::Quota
    );
    queued(
        store
            .enqueue(&alice, "bob", "c", "12345", 1, quota)
            .unwrap(),
    );
    assert_eq!(
        store.enqueue(&alice, "bob", "d", "", 1, quota).unwrap(),
        Enqueued::Quota
    );
    assert_eq!(store.backlog(&name("bob")).unwrap().mail.len(), 2);
    // Another recipient's queue is counted apart.
    with_accounts(store, &["carol"]);
    queued(
        store
            .enqueue(&alice, "carol", "e", "12345", 1, quota)
            .unwrap(),
    );
}

fn concurrent_senders_never_overshoot_the_quota(store: &dyn Storage) {
    const EACH: usize = 4;
    with_accounts(store, &["alice", "bob", "carol"]);
    let alice = name("alice");
    // By messages (bob), then by bytes (carol: five 10-byte payloads fit in 50).
    let quotas = [
        (
            "bob",
            Quota {
                messages: 5,
                bytes: 1 << 20,
            },
        ),
        (
            "carol",
            Quota {
                messages: 100,
                bytes: 50,
            },
        ),
    ];
    for (recipient, quota) in quotas {
        let results = race(|i| {
            (0..EACH)
                .map(|j| {
                    let reference = format!("{recipient}-{i}-{j}");
                    store
                        .enqueue(&alice, recipient, &reference, "0123456789", 1, quota)
                        .unwrap()
                })
                .collect::<Vec<_>>()
        });
        let results: Vec<Enqueued> = results.into_iter().flatten().collect();
        let stored = results
            .iter()
            .filter(|r| matches!(r, Enqueued::Queued(_)))
            .count();
        let refused = results.iter().filter(|r| **r == Enqueued::Quota).count();
        assert_eq!((stored, refused), (5, THREADS * EACH - 5), "{recipient}");
        assert_eq!(store.backlog(&name(recipient)).unwrap().mail.len(), 5);
    }
}

fn an_ack_deletes_the_message_and_records_one_receipt_however_many_race(store: &dyn Storage) {
    with_accounts(store, &["alice", "bob"]);
    let (alice, bob) = (name("alice"), name("bob"));
    let id = queued(store.enqueue(&alice, "bob", "r", "p", 1, ROOMY).unwrap());
    let results = race(|_| store.ack(&bob, id, Outcome::Unreadable, 2).unwrap());
    let receipts: Vec<Receipt> = results.into_iter().flatten().collect();
    assert_eq!(receipts.len(), 1, "one ACK recorded a receipt");
    let receipt = &receipts[0];
    assert_eq!(
        (
            receipt.sender.as_str(),
            receipt.reference.as_str(),
            receipt.recipient.as_str(),
            receipt.outcome
        ),
        ("alice", "r", "bob", Outcome::Unreadable)
    );
    // The message is gone and its one receipt is stored: both, in the same state.
    assert!(store.backlog(&bob).unwrap().mail.is_empty());
    assert_eq!(store.backlog(&alice).unwrap().receipts, receipts);
    assert!(
        store.expire(u64::MAX, 0).unwrap().is_empty(),
        "nothing left to expire"
    );
    assert_eq!(
        store.enqueue(&alice, "bob", "r", "p", 3, ROOMY).unwrap(),
        Enqueued::Resolved(Outcome::Unreadable)
    );
}

fn ids_increase_and_are_never_reused_after_the_newest_is_deleted(store: &dyn Storage) {
    with_accounts(store, &["alice", "bob"]);
    let (alice, bob) = (name("alice"), name("bob"));
    let first = queued(store.enqueue(&alice, "bob", "a", "p", 1, ROOMY).unwrap());
    let second = queued(store.enqueue(&alice, "bob", "b", "p", 1, ROOMY).unwrap());
    assert!(second > first);
    // Delete the newest message, and then its receipt, the newest receipt.
    let receipt = store
        .ack(&bob, second, Outcome::Delivered, 2)
        .unwrap()
        .unwrap();
    store.delete_receipts(&alice, "b").unwrap();
    let third = queued(store.enqueue(&alice, "bob", "c", "p", 3, ROOMY).unwrap());
    assert!(third > second, "message id {third} after {second}");
    let next = store
        .ack(&bob, third, Outcome::Delivered, 4)
        .unwrap()
        .unwrap();
    assert!(
        next.id > receipt.id,
        "receipt id {} after {}",
        next.id,
        receipt.id
    );
    let backlog = store.backlog(&bob).unwrap();
    let ids: Vec<u64> = backlog.mail.iter().map(|m| m.id).collect();
    assert_eq!(ids, [first]);
    assert!(backlog.mail_through >= third);
    assert!(backlog.receipts_through >= next.id);
}

fn expiry_turns_each_old_message_into_an_expired_receipt_in_order(store: &dyn Storage) {
    with_accounts(store, &["alice", "bob", "carol"]);
    let (alice, bob, carol) = (name("alice"), name("bob"), name("carol"));
    let m1 = queued(
        store
            .enqueue(&alice, "bob", "r1", "p1", 100, ROOMY)
            .unwrap(),
    );
    let m2 = queued(
        store
            .enqueue(&carol, "bob", "r2", "p2", 150, ROOMY)
            .unwrap(),
    );
    let m3 = queued(
        store
            .enqueue(&alice, "bob", "r3", "p3", 151, ROOMY)
            .unwrap(),
    );
    assert!(m1 < m2 && m2 < m3);
    // At 250 with a 100-second TTL, what was queued at 150 or before is due.
    let expired = store.expire(250, 100).unwrap();
    let seen: Vec<(&str, &str, &str, Outcome)> = expired
        .iter()
        .map(|r| {
            (
                r.sender.as_str(),
                r.reference.as_str(),
                r.recipient.as_str(),
                r.outcome,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("alice", "r1", "bob", Outcome::Expired),
            ("carol", "r2", "bob", Outcome::Expired)
        ]
    );
    assert!(expired[0].id < expired[1].id);
    assert_eq!(
        store.backlog(&bob).unwrap().mail,
        [StoredMail {
            id: m3,
            sender: "alice".to_owned(),
            time: 151,
            payload: "p3".to_owned()
        }]
    );
    assert_eq!(store.backlog(&alice).unwrap().receipts, expired[..1]);
    assert_eq!(store.backlog(&carol).unwrap().receipts, expired[1..]);
    assert!(store.expire(250, 100).unwrap().is_empty(), "expired once");
    assert_eq!(
        store
            .enqueue(&alice, "bob", "r1", "p1", 260, ROOMY)
            .unwrap(),
        Enqueued::Resolved(Outcome::Expired)
    );
}
