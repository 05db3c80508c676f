//! The contract of [`Storage`] as tests, written once against the trait: each takes a
//! fresh, empty store as `&dyn Storage`. A backend runs them all with one line,
//! `suite!(open)`, in a module at the end of this file, where `open()` returns what must
//! outlive the store (a temporary directory, say) and the store.

use std::sync::Barrier;
use std::thread;

use super::{
    BundleLookup, Created, Enqueued, KeyLookup, NewMail, Outcome, PeerMail, Quota, Receipt,
    Storage, StoredMail, MAX_ONE_TIME_PREKEYS,
};
use crate::protocol::name::{ServerName, UserName};
use crate::protocol::Refusal;
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
            peer_queue_ids_grow_are_never_reused_and_each_peer_reads_only_its_own,
            a_message_for_a_peer_resent_is_stored_once_and_answered_with_its_state,
            a_message_for_a_peer_resent_concurrently_is_stored_once,
            a_peers_byte_quota_is_never_overshot_and_each_peer_is_counted_apart,
            a_peer_acknowledges_only_its_own_messages_and_each_once,
            a_forwarded_receipt_resolves_the_pending_message_and_is_recorded_once,
            a_relayed_message_is_stored_once_and_its_receipt_owed_to_its_server_alone,
            expiry_of_a_peer_queue_gives_expired_receipts_in_the_senders_backlog,
            a_batch_of_acknowledgements_applies_each_in_order_and_only_the_peers_own,
            forwarded_receipts_are_forgotten_together,
            a_relayed_batch_is_checked_message_by_message_in_order,
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

fn server(name: &str) -> ServerName {
    ServerName::parse(name).expect("a valid server name")
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

/// A peer byte quota no test reaches.
const ROOMY_PEER: u64 = 1 << 20;

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
            .enqueue(alice.as_str(), "bob", "r1", "p1", 100, ROOMY)
            .unwrap(),
    );
    let second = queued(
        store
            .enqueue(alice.as_str(), "bob", "r2", "p2", 200, ROOMY)
            .unwrap(),
    );
    assert!(second > first);
    assert_eq!(
        store
            .enqueue(alice.as_str(), "nobody", "r3", "p", 200, ROOMY)
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
    let id = queued(
        store
            .enqueue(alice.as_str(), "bob", "r1", "one", 1, quota)
            .unwrap(),
    );
    assert_eq!(
        store
            .enqueue(alice.as_str(), "bob", "r1", "one", 2, quota)
            .unwrap(),
        Enqueued::AlreadyQueued(id)
    );
    assert_eq!(store.backlog(&bob).unwrap().mail.len(), 1, "stored once");
    assert!(store
        .ack(&bob, id, Outcome::Delivered, 3)
        .unwrap()
        .is_some());
    assert_eq!(
        store
            .enqueue(alice.as_str(), "bob", "r1", "one", 4, quota)
            .unwrap(),
        Enqueued::Resolved(Outcome::Delivered)
    );
    assert!(
        store.backlog(&bob).unwrap().mail.is_empty(),
        "not queued again"
    );
    // Once alice acknowledged the receipt, the reference is free again.
    store.delete_receipts(&alice, "r1").unwrap();
    let again = queued(
        store
            .enqueue(alice.as_str(), "bob", "r1", "two", 5, quota)
            .unwrap(),
    );
    assert_ne!(again, id);
    // Another sender's reference is another message.
    queued(
        store
            .enqueue(bob.as_str(), "alice", "r1", "three", 6, quota)
            .unwrap(),
    );
}

fn a_reference_resent_concurrently_is_stored_once(store: &dyn Storage) {
    with_accounts(store, &["alice", "bob"]);
    let alice = name("alice");
    let results = race(|_| {
        store
            .enqueue(alice.as_str(), "bob", "r", "once", 1, ROOMY)
            .unwrap()
    });
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
            .enqueue(alice.as_str(), "bob", "a", "12345", 1, quota)
            .unwrap(),
    );
    assert_eq!(
        store
            .enqueue(alice.as_str(), "bob", "b", "123456", 1, quota)
            .unwrap(),
        Enqueued::Quota
    );
    queued(
        store
            .enqueue(alice.as_str(), "bob", "c", "12345", 1, quota)
            .unwrap(),
    );
    assert_eq!(
        store
            .enqueue(alice.as_str(), "bob", "d", "", 1, quota)
            .unwrap(),
        Enqueued::Quota
    );
    assert_eq!(store.backlog(&name("bob")).unwrap().mail.len(), 2);
    // Another recipient's queue is counted apart.
    with_accounts(store, &["carol"]);
    queued(
        store
            .enqueue(alice.as_str(), "carol", "e", "12345", 1, quota)
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
                        .enqueue(
                            alice.as_str(),
                            recipient,
                            &reference,
                            "0123456789",
                            1,
                            quota,
                        )
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
    let id = queued(
        store
            .enqueue(alice.as_str(), "bob", "r", "p", 1, ROOMY)
            .unwrap(),
    );
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
        store
            .enqueue(alice.as_str(), "bob", "r", "p", 3, ROOMY)
            .unwrap(),
        Enqueued::Resolved(Outcome::Unreadable)
    );
}

fn ids_increase_and_are_never_reused_after_the_newest_is_deleted(store: &dyn Storage) {
    with_accounts(store, &["alice", "bob"]);
    let (alice, bob) = (name("alice"), name("bob"));
    let first = queued(
        store
            .enqueue(alice.as_str(), "bob", "a", "p", 1, ROOMY)
            .unwrap(),
    );
    let second = queued(
        store
            .enqueue(alice.as_str(), "bob", "b", "p", 1, ROOMY)
            .unwrap(),
    );
    assert!(second > first);
    // Delete the newest message, and then its receipt, the newest receipt.
    let receipt = store
        .ack(&bob, second, Outcome::Delivered, 2)
        .unwrap()
        .unwrap();
    store.delete_receipts(&alice, "b").unwrap();
    let third = queued(
        store
            .enqueue(alice.as_str(), "bob", "c", "p", 3, ROOMY)
            .unwrap(),
    );
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
            .enqueue(alice.as_str(), "bob", "r1", "p1", 100, ROOMY)
            .unwrap(),
    );
    let m2 = queued(
        store
            .enqueue(carol.as_str(), "bob", "r2", "p2", 150, ROOMY)
            .unwrap(),
    );
    let m3 = queued(
        store
            .enqueue(alice.as_str(), "bob", "r3", "p3", 151, ROOMY)
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
            .enqueue(alice.as_str(), "bob", "r1", "p1", 260, ROOMY)
            .unwrap(),
        Enqueued::Resolved(Outcome::Expired)
    );
}

/// A receipt as `(sender, reference, recipient, outcome)`, to compare without its id.
fn described(receipt: &Receipt) -> (&str, &str, &str, Outcome) {
    (
        receipt.sender.as_str(),
        receipt.reference.as_str(),
        receipt.recipient.as_str(),
        receipt.outcome,
    )
}

/// The ids of the messages queued for `peer`, by id.
fn peer_ids(store: &dyn Storage, peer: &ServerName) -> Vec<u64> {
    let queued = store.peer_queue(peer, 0, usize::MAX).unwrap();
    queued.iter().map(|m| m.id).collect()
}

fn peer_queue_ids_grow_are_never_reused_and_each_peer_reads_only_its_own(store: &dyn Storage) {
    let (alice, carol) = (name("alice"), name("carol"));
    let (b, c) = (server("b.test"), server("c.test"));
    let first = queued(
        store
            .enqueue_for_peer(&alice, &b, &name("bob"), "r1", "p1", 10, ROOMY_PEER)
            .unwrap(),
    );
    let for_c = queued(
        store
            .enqueue_for_peer(&carol, &c, &name("dave"), "r2", "p2", 11, ROOMY_PEER)
            .unwrap(),
    );
    let second = queued(
        store
            .enqueue_for_peer(&alice, &b, &name("erin"), "r3", "p3", 12, ROOMY_PEER)
            .unwrap(),
    );
    assert!(first < for_c && for_c < second);
    assert_eq!(
        store.peer_queue(&b, 0, 10).unwrap(),
        [
            PeerMail {
                id: first,
                sender: "alice".to_owned(),
                recipient: "bob".to_owned(),
                reference: "r1".to_owned(),
                time: 10,
                payload: "p1".to_owned(),
            },
            PeerMail {
                id: second,
                sender: "alice".to_owned(),
                recipient: "erin".to_owned(),
                reference: "r3".to_owned(),
                time: 12,
                payload: "p3".to_owned(),
            }
        ]
    );
    assert_eq!(peer_ids(store, &c), [for_c]);
    assert!(peer_ids(store, &server("a.test")).is_empty());
    // `after` and `limit`: the link's window over the queue.
    let after_first: Vec<u64> = store
        .peer_queue(&b, first, 10)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(after_first, [second]);
    let oldest: Vec<u64> = store
        .peer_queue(&b, 0, 1)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(oldest, [first]);
    assert!(store.peer_queue(&b, second, 10).unwrap().is_empty());
    assert!(store.peer_queue(&b, 0, 0).unwrap().is_empty());
    // The newest is taken (deleted); the next id is still above it.
    assert_eq!(store.peer_acked(&b, second, None, 13).unwrap(), None);
    assert_eq!(peer_ids(store, &b), [first]);
    let third = queued(
        store
            .enqueue_for_peer(&alice, &b, &name("bob"), "r4", "p4", 14, ROOMY_PEER)
            .unwrap(),
    );
    assert!(third > second, "peer message id {third} after {second}");
    assert_eq!(peer_ids(store, &b), [first, third]);
    assert!(
        store.backlog(&alice).unwrap().receipts.is_empty(),
        "taking a message without an outcome records no receipt"
    );
}

fn a_message_for_a_peer_resent_is_stored_once_and_answered_with_its_state(store: &dyn Storage) {
    with_accounts(store, &["alice", "bob"]);
    let (alice, bob) = (name("alice"), name("bob"));
    let (b, c) = (server("b.test"), server("c.test"));
    let id = queued(
        store
            .enqueue_for_peer(&alice, &b, &bob, "r1", "one", 1, ROOMY_PEER)
            .unwrap(),
    );
    // Again, to the same peer or another, or to a local user: the same message.
    assert_eq!(
        store
            .enqueue_for_peer(&alice, &b, &bob, "r1", "one", 2, ROOMY_PEER)
            .unwrap(),
        Enqueued::AlreadyQueued(id)
    );
    assert_eq!(
        store
            .enqueue_for_peer(&alice, &c, &bob, "r1", "one", 2, ROOMY_PEER)
            .unwrap(),
        Enqueued::AlreadyQueued(id)
    );
    assert_eq!(
        store
            .enqueue("alice", "bob", "r1", "one", 2, ROOMY)
            .unwrap(),
        Enqueued::AlreadyQueued(id)
    );
    assert_eq!(peer_ids(store, &b), [id], "stored once");
    assert!(peer_ids(store, &c).is_empty());
    assert!(store.backlog(&bob).unwrap().mail.is_empty());
    // A reference still queued for a local user is that message too.
    let local = queued(
        store
            .enqueue("alice", "bob", "r2", "two", 3, ROOMY)
            .unwrap(),
    );
    assert_eq!(
        store
            .enqueue_for_peer(&alice, &b, &bob, "r2", "two", 3, ROOMY_PEER)
            .unwrap(),
        Enqueued::AlreadyQueued(local)
    );
    // The peer refuses it: one receipt, stored with its reason, answers a re-send.
    let refused = Outcome::Refused(Refusal::NoSuchUser);
    let receipt = store
        .peer_acked(&b, id, Some(refused), 4)
        .unwrap()
        .expect("a receipt");
    assert_eq!(described(&receipt), ("alice", "r1", "bob@b.test", refused));
    assert_eq!(store.backlog(&alice).unwrap().receipts, [receipt]);
    assert_eq!(
        store
            .enqueue_for_peer(&alice, &b, &bob, "r1", "one", 5, ROOMY_PEER)
            .unwrap(),
        Enqueued::Resolved(refused)
    );
    assert_eq!(
        store
            .enqueue("alice", "bob", "r1", "one", 5, ROOMY)
            .unwrap(),
        Enqueued::Resolved(refused)
    );
    assert!(peer_ids(store, &b).is_empty(), "not queued again");
    // Every refusal reason survives the store.
    for (i, reason) in Refusal::ALL.into_iter().enumerate() {
        let reference = format!("reason{i}");
        let id = queued(
            store
                .enqueue_for_peer(&alice, &b, &bob, &reference, "p", 6, ROOMY_PEER)
                .unwrap(),
        );
        let outcome = Outcome::Refused(reason);
        assert!(store
            .peer_acked(&b, id, Some(outcome), 6)
            .unwrap()
            .is_some());
        assert_eq!(
            store
                .enqueue_for_peer(&alice, &b, &bob, &reference, "p", 6, ROOMY_PEER)
                .unwrap(),
            Enqueued::Resolved(outcome)
        );
    }
    // Once alice acknowledged the receipt (ACKSTATUS), the reference is free again.
    store.delete_receipts(&alice, "r1").unwrap();
    assert!(store
        .backlog(&alice)
        .unwrap()
        .receipts
        .iter()
        .all(|r| r.reference != "r1"));
    let again = queued(
        store
            .enqueue_for_peer(&alice, &b, &bob, "r1", "three", 7, ROOMY_PEER)
            .unwrap(),
    );
    assert!(again > id);
}

fn a_message_for_a_peer_resent_concurrently_is_stored_once(store: &dyn Storage) {
    let (alice, bob, b) = (name("alice"), name("bob"), server("b.test"));
    let results = race(|_| {
        store
            .enqueue_for_peer(&alice, &b, &bob, "r", "once", 1, ROOMY_PEER)
            .unwrap()
    });
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
    assert_eq!(peer_ids(store, &b), ids);
}

fn a_peers_byte_quota_is_never_overshot_and_each_peer_is_counted_apart(store: &dyn Storage) {
    const EACH: usize = 4;
    let (alice, bob) = (name("alice"), name("bob"));
    let (b, c, d) = (server("b.test"), server("c.test"), server("d.test"));
    queued(
        store
            .enqueue_for_peer(&alice, &b, &bob, "a", "12345", 1, 10)
            .unwrap(),
    );
    assert_eq!(
        store
            .enqueue_for_peer(&alice, &b, &bob, "b", "123456", 1, 10)
            .unwrap(),
        Enqueued::Quota
    );
    queued(
        store
            .enqueue_for_peer(&alice, &b, &bob, "c", "12345", 1, 10)
            .unwrap(),
    );
    assert_eq!(
        store
            .enqueue_for_peer(&alice, &b, &bob, "d", "1", 1, 10)
            .unwrap(),
        Enqueued::Quota
    );
    assert_eq!(peer_ids(store, &b).len(), 2);
    // b.test's full queue does not refuse messages for c.test.
    queued(
        store
            .enqueue_for_peer(&alice, &c, &bob, "e", "12345", 1, 10)
            .unwrap(),
    );
    // Concurrent senders: five 10-byte payloads fit in 50.
    let results = race(|i| {
        (0..EACH)
            .map(|j| {
                let reference = format!("r-{i}-{j}");
                store
                    .enqueue_for_peer(&alice, &d, &bob, &reference, "0123456789", 1, 50)
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
    assert_eq!((stored, refused), (5, THREADS * EACH - 5));
    let bytes: usize = store
        .peer_queue(&d, 0, usize::MAX)
        .unwrap()
        .iter()
        .map(|m| m.payload.len())
        .sum();
    assert_eq!(bytes, 50);
    // Taking a message frees its bytes.
    let first = peer_ids(store, &b)[0];
    store.peer_acked(&b, first, None, 2).unwrap();
    queued(
        store
            .enqueue_for_peer(&alice, &b, &bob, "f", "12345", 2, 10)
            .unwrap(),
    );
}

fn a_batch_of_acknowledgements_applies_each_in_order_and_only_the_peers_own(store: &dyn Storage) {
    let (alice, bob) = (name("alice"), name("bob"));
    let (b, c) = (server("b.test"), server("c.test"));
    let send = |peer: &ServerName, reference: &str| {
        queued(
            store
                .enqueue_for_peer(&alice, peer, &bob, reference, "p", 1, ROOMY_PEER)
                .unwrap(),
        )
    };
    let (stored, refused, also_refused) = (send(&b, "r1"), send(&b, "r2"), send(&b, "r3"));
    let for_c = send(&c, "r4");
    let (no_user, quota) = (
        Outcome::Refused(Refusal::NoSuchUser),
        Outcome::Refused(Refusal::Quota),
    );
    let receipts = store
        .peer_acked_all(
            &b,
            &[
                (also_refused, Some(quota)),
                (stored, None),
                (for_c, Some(no_user)),
                (refused, Some(no_user)),
                (also_refused, Some(quota)),
            ],
            2,
        )
        .unwrap();
    // The two refusals, in the batch's order; c.test's message and the repeat untouched.
    let described: Vec<_> = receipts.iter().map(described).collect();
    assert_eq!(
        described,
        [
            ("alice", "r3", "bob@b.test", quota),
            ("alice", "r2", "bob@b.test", no_user),
        ]
    );
    assert!(receipts[0].id < receipts[1].id, "receipt ids grow in order");
    assert!(peer_ids(store, &b).is_empty());
    assert_eq!(peer_ids(store, &c), [for_c]);
    assert!(store.peer_acked_all(&b, &[], 3).unwrap().is_empty());
}

fn a_relayed_batch_is_checked_message_by_message_in_order(store: &dyn Storage) {
    let bob = name("bob");
    store.create_account(&bob, "hash").unwrap();
    let quota = Quota {
        messages: 3,
        bytes: 1 << 20,
    };
    let mail = |reference, recipient| NewMail {
        sender: "alice@a.test",
        recipient,
        reference,
        payload: "p",
    };
    let results = store
        .enqueue_all(
            &[
                mail("r1", "bob"),
                mail("r1", "bob"),
                mail("r2", "nobody"),
                mail("r3", "bob"),
                mail("r4", "bob"),
                mail("r5", "bob"),
            ],
            1,
            quota,
        )
        .unwrap();
    let Enqueued::Queued(first) = results[0] else {
        panic!("{results:?}")
    };
    // A repeat within the batch is the message before it; the quota counts what the batch
    // itself queued.
    assert_eq!(results[1], Enqueued::AlreadyQueued(first));
    assert_eq!(results[2], Enqueued::NoSuchUser);
    assert!(matches!(results[3], Enqueued::Queued(id) if id > first));
    assert!(matches!(results[4], Enqueued::Queued(_)));
    assert_eq!(results[5], Enqueued::Quota);
    let backlog = store.backlog(&bob).unwrap();
    let stored: Vec<(&str, &str)> = backlog
        .mail
        .iter()
        .map(|m| (m.sender.as_str(), m.payload.as_str()))
        .collect();
    assert_eq!(stored, [("alice@a.test", "p"); 3]);
    assert!(store.enqueue_all(&[], 2, quota).unwrap().is_empty());
}

fn forwarded_receipts_are_forgotten_together(store: &dyn Storage) {
    let quota = Quota {
        messages: 10,
        bytes: 1 << 20,
    };
    let (bob, carol) = (name("bob"), name("carol"));
    for user in [&bob, &carol] {
        store.create_account(user, "hash").unwrap();
    }
    let mut ids = Vec::new();
    for (reference, recipient) in [("r1", &bob), ("r2", &carol), ("r3", &bob)] {
        let Enqueued::Queued(id) = store
            .enqueue("alice@a.test", recipient.as_str(), reference, "p", 1, quota)
            .unwrap()
        else {
            panic!("not queued");
        };
        ids.push((id, recipient));
    }
    for (id, recipient) in &ids {
        store.ack(recipient, *id, Outcome::Delivered, 2).unwrap();
    }
    let owed = store.peer_receipts(&server("a.test"), 0, 10).unwrap();
    assert_eq!(owed.len(), 3);
    // Two of them taken (and one id twice, and one that never existed): one left.
    store
        .forget_receipts(&[owed[0].id, owed[2].id, owed[0].id, u64::MAX >> 2])
        .unwrap();
    let left = store.peer_receipts(&server("a.test"), 0, 10).unwrap();
    assert_eq!(left, [owed[1].clone()]);
}

fn a_peer_acknowledges_only_its_own_messages_and_each_once(store: &dyn Storage) {
    let (alice, bob) = (name("alice"), name("bob"));
    let (b, c) = (server("b.test"), server("c.test"));
    let refused = Outcome::Refused(Refusal::NoSuchUser);
    let for_b = queued(
        store
            .enqueue_for_peer(&alice, &b, &bob, "r1", "p", 1, ROOMY_PEER)
            .unwrap(),
    );
    // c.test names b.test's message: nothing happens.
    assert_eq!(store.peer_acked(&c, for_b, Some(refused), 2).unwrap(), None);
    assert_eq!(store.peer_acked(&c, for_b, None, 2).unwrap(), None);
    assert_eq!(peer_ids(store, &b), [for_b]);
    assert!(store.backlog(&alice).unwrap().receipts.is_empty());
    // b.test refuses it: exactly one receipt, and a repeat records nothing.
    let quota = Outcome::Refused(Refusal::Quota);
    let receipt = store
        .peer_acked(&b, for_b, Some(quota), 3)
        .unwrap()
        .expect("a receipt");
    assert_eq!(described(&receipt), ("alice", "r1", "bob@b.test", quota));
    assert_eq!(store.peer_acked(&b, for_b, Some(quota), 4).unwrap(), None);
    assert_eq!(store.peer_acked(&b, for_b, None, 4).unwrap(), None);
    assert!(peer_ids(store, &b).is_empty());
    assert_eq!(
        store.backlog(&alice).unwrap().receipts,
        std::slice::from_ref(&receipt)
    );
    // Stored without an outcome: gone, and no receipt yet.
    let stored = queued(
        store
            .enqueue_for_peer(&alice, &b, &bob, "r2", "p", 5, ROOMY_PEER)
            .unwrap(),
    );
    assert_eq!(store.peer_acked(&b, stored, None, 6).unwrap(), None);
    assert!(peer_ids(store, &b).is_empty());
    assert_eq!(
        store.backlog(&alice).unwrap().receipts,
        std::slice::from_ref(&receipt)
    );
    // Racing acknowledgements of one message record one receipt.
    let raced = queued(
        store
            .enqueue_for_peer(&alice, &b, &bob, "r3", "p", 7, ROOMY_PEER)
            .unwrap(),
    );
    let results = race(|_| store.peer_acked(&b, raced, Some(refused), 8).unwrap());
    let receipts: Vec<Receipt> = results.into_iter().flatten().collect();
    assert_eq!(receipts.len(), 1, "one acknowledgement recorded a receipt");
    assert!(receipts[0].id > receipt.id);
    assert_eq!(
        store.backlog(&alice).unwrap().receipts,
        [receipt, receipts[0].clone()]
    );
    assert!(
        store.expire(u64::MAX, 0).unwrap().is_empty(),
        "nothing left to expire"
    );
}

fn a_forwarded_receipt_resolves_the_pending_message_and_is_recorded_once(store: &dyn Storage) {
    with_accounts(store, &["alice", "carol"]);
    let (alice, bob) = (name("alice"), name("bob"));
    let (b, c) = (server("b.test"), server("c.test"));
    // A local receipt first: the forwarded one's id comes after it.
    let local = queued(
        store
            .enqueue("alice", "carol", "r0", "p", 1, ROOMY)
            .unwrap(),
    );
    let earlier = store
        .ack(&name("carol"), local, Outcome::Delivered, 2)
        .unwrap()
        .expect("a receipt");
    // Forwarded while the message is still queued here (its acknowledgement was lost):
    // the message is deleted, never to be sent again.
    let pending = queued(
        store
            .enqueue_for_peer(&alice, &b, &bob, "r1", "p", 3, ROOMY_PEER)
            .unwrap(),
    );
    let receipt = store
        .add_receipt(&alice, "r1", "bob@b.test", Outcome::Delivered, 4)
        .unwrap()
        .expect("a receipt");
    assert_eq!(
        described(&receipt),
        ("alice", "r1", "bob@b.test", Outcome::Delivered)
    );
    assert!(receipt.id > earlier.id);
    assert!(peer_ids(store, &b).is_empty(), "{pending} still queued");
    // Forwarded again: recorded once.
    assert_eq!(
        store
            .add_receipt(&alice, "r1", "bob@b.test", Outcome::Delivered, 5)
            .unwrap(),
        None
    );
    assert_eq!(
        store.backlog(&alice).unwrap().receipts,
        [earlier, receipt.clone()]
    );
    assert_eq!(
        store
            .enqueue_for_peer(&alice, &b, &bob, "r1", "p", 6, ROOMY_PEER)
            .unwrap(),
        Enqueued::Resolved(Outcome::Delivered)
    );
    // The usual order: taken by the peer, then its receipt, forwarded by racing links.
    let taken = queued(
        store
            .enqueue_for_peer(&alice, &b, &bob, "r2", "p", 7, ROOMY_PEER)
            .unwrap(),
    );
    assert_eq!(store.peer_acked(&b, taken, None, 8).unwrap(), None);
    let results = race(|_| {
        store
            .add_receipt(&alice, "r2", "bob@b.test", Outcome::Unreadable, 9)
            .unwrap()
    });
    let recorded: Vec<Receipt> = results.into_iter().flatten().collect();
    assert_eq!(recorded.len(), 1, "recorded once");
    assert_eq!(
        described(&recorded[0]),
        ("alice", "r2", "bob@b.test", Outcome::Unreadable)
    );
    assert!(recorded[0].id > receipt.id);
    // A receipt from another server cannot resolve a message queued for b.test.
    let for_b = queued(
        store
            .enqueue_for_peer(&alice, &b, &bob, "r3", "p", 10, ROOMY_PEER)
            .unwrap(),
    );
    assert_eq!(
        store
            .add_receipt(&alice, "r3", "bob@c.test", Outcome::Delivered, 11)
            .unwrap(),
        None
    );
    assert_eq!(peer_ids(store, &b), [for_b]);
    assert!(peer_ids(store, &c).is_empty());
    // ACKSTATUS forgets forwarded receipts like local ones.
    store.delete_receipts(&alice, "r1").unwrap();
    store.delete_receipts(&alice, "r2").unwrap();
    let left: Vec<String> = store
        .backlog(&alice)
        .unwrap()
        .receipts
        .into_iter()
        .map(|r| r.reference)
        .collect();
    assert_eq!(left, ["r0"]);
}

fn a_relayed_message_is_stored_once_and_its_receipt_owed_to_its_server_alone(store: &dyn Storage) {
    with_accounts(store, &["alice", "bob"]);
    let bob = name("bob");
    // Senders whose server names end alike: only the whole server part counts.
    let senders = ["x@a.test", "y@b.a.test", "z@xa.test", "w@a.test", "alice"];
    let mut receipts = Vec::new();
    for (i, sender) in senders.into_iter().enumerate() {
        let reference = format!("r{i}");
        let id = queued(
            store
                .enqueue(sender, "bob", &reference, "p", 1, ROOMY)
                .unwrap(),
        );
        assert_eq!(
            store
                .enqueue(sender, "bob", &reference, "p", 2, ROOMY)
                .unwrap(),
            Enqueued::AlreadyQueued(id),
            "a relayed message re-sent is stored once"
        );
        let receipt = store
            .ack(&bob, id, Outcome::Delivered, 3)
            .unwrap()
            .expect("a receipt");
        assert_eq!(
            store
                .enqueue(sender, "bob", &reference, "p", 4, ROOMY)
                .unwrap(),
            Enqueued::Resolved(Outcome::Delivered)
        );
        receipts.push(receipt);
    }
    let owed = |peer: &str, after: u64, limit: usize| -> Vec<String> {
        store
            .peer_receipts(&server(peer), after, limit)
            .unwrap()
            .into_iter()
            .map(|r| {
                assert_eq!(r.recipient, "bob");
                assert_eq!(r.outcome, Outcome::Delivered);
                format!("{}/{}", r.sender, r.reference)
            })
            .collect()
    };
    assert_eq!(owed("a.test", 0, 10), ["x@a.test/r0", "w@a.test/r3"]);
    assert_eq!(owed("b.a.test", 0, 10), ["y@b.a.test/r1"]);
    assert_eq!(owed("xa.test", 0, 10), ["z@xa.test/r2"]);
    assert!(owed("test", 0, 10).is_empty());
    assert!(owed("a.a.test", 0, 10).is_empty());
    assert_eq!(owed("a.test", receipts[0].id, 10), ["w@a.test/r3"]);
    assert_eq!(owed("a.test", 0, 1), ["x@a.test/r0"]);
    assert_eq!(
        store.peer_receipts(&server("a.test"), 0, 10).unwrap(),
        [receipts[0].clone(), receipts[3].clone()]
    );
    // The peer took one: forgotten, once; the local sender's is not owed to anyone.
    store.forget_receipts(&[receipts[0].id]).unwrap();
    store.forget_receipts(&[receipts[0].id]).unwrap();
    assert_eq!(owed("a.test", 0, 10), ["w@a.test/r3"]);
    assert_eq!(owed("b.a.test", 0, 10), ["y@b.a.test/r1"]);
    assert_eq!(
        store.backlog(&name("alice")).unwrap().receipts,
        [receipts[4].clone()]
    );
    // Forgotten, the reference is free again.
    queued(
        store
            .enqueue("x@a.test", "bob", "r0", "again", 5, ROOMY)
            .unwrap(),
    );
}

fn expiry_of_a_peer_queue_gives_expired_receipts_in_the_senders_backlog(store: &dyn Storage) {
    with_accounts(store, &["alice", "bob", "carol"]);
    let (alice, carol) = (name("alice"), name("carol"));
    let (b, c) = (server("b.test"), server("c.test"));
    let local = queued(
        store
            .enqueue("alice", "bob", "r1", "p1", 100, ROOMY)
            .unwrap(),
    );
    let p1 = queued(
        store
            .enqueue_for_peer(&alice, &b, &name("bob"), "r2", "p2", 100, ROOMY_PEER)
            .unwrap(),
    );
    let p2 = queued(
        store
            .enqueue_for_peer(&carol, &c, &name("dave"), "r3", "p3", 150, ROOMY_PEER)
            .unwrap(),
    );
    let p3 = queued(
        store
            .enqueue_for_peer(&alice, &b, &name("bob"), "r4", "p4", 151, ROOMY_PEER)
            .unwrap(),
    );
    assert!(p1 < p2 && p2 < p3);
    assert!(store.expire(199, 100).unwrap().is_empty());
    // At 250 with a 100-second TTL, what was queued at 150 or before is due.
    let expired = store.expire(250, 100).unwrap();
    let seen: Vec<_> = expired.iter().map(described).collect();
    assert_eq!(
        seen,
        [
            ("alice", "r1", "bob", Outcome::Expired),
            ("alice", "r2", "bob@b.test", Outcome::Expired),
            ("carol", "r3", "dave@c.test", Outcome::Expired),
        ]
    );
    assert!(expired.windows(2).all(|w| w[0].id < w[1].id), "in id order");
    assert!(
        store.backlog(&name("bob")).unwrap().mail.is_empty(),
        "{local}"
    );
    assert_eq!(peer_ids(store, &b), [p3]);
    assert!(peer_ids(store, &c).is_empty());
    assert_eq!(store.backlog(&alice).unwrap().receipts, expired[..2]);
    assert_eq!(store.backlog(&carol).unwrap().receipts, expired[2..]);
    assert!(store.expire(250, 100).unwrap().is_empty(), "expired once");
    assert_eq!(
        store
            .enqueue_for_peer(&alice, &b, &name("bob"), "r2", "p2", 260, ROOMY_PEER)
            .unwrap(),
        Enqueued::Resolved(Outcome::Expired)
    );
    // A late acknowledgement of an expired message records nothing more.
    assert_eq!(
        store
            .peer_acked(&b, p1, Some(Outcome::Refused(Refusal::Quota)), 261)
            .unwrap(),
        None
    );
    store.delete_receipts(&alice, "r2").unwrap();
    let left: Vec<String> = store
        .backlog(&alice)
        .unwrap()
        .receipts
        .into_iter()
        .map(|r| r.reference)
        .collect();
    assert_eq!(left, ["r1"]);
}
