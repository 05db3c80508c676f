//! Brute-force and flood defences that need memory across connections: failed logins per
//! account, per source address and per (address, account) owner pair; registrations per
//! source address; and [`AddressPrefix`], the unit in which login work is shared out.
//!
//! Failed logins: the first few failures are free; after that each failure doubles a
//! waiting time during which further attempts are refused *without running bcrypt*, up to
//! a cap. Attempts still being checked count too ([`LoginAttempt`]): no more may run at
//! once than the failures still free, and once those are used up only one at a time, so
//! logins fired in parallel cannot all pass the check before the first failure is counted.
//! (An address with no failures yet is not limited, as many people may log in at once
//! from one address; the first wave of parallel failures from it is bounded by the
//! per-address connection cap and the per-prefix cap on queued logins in
//! [`crate::accounts`].)
//!
//! Whose failures lock whom — the policy that keeps a lock from being turned on others:
//!
//! * An address that has logged in to an account successfully is that account's *owner
//!   address*; the (address, account) pair is an *owner pair*. A login on an owner pair is
//!   checked against that pair's own failures only: neither the account's lock nor the
//!   address's lock applies to it. So failures for unknown or other names from a shared
//!   address (a campus NAT), or failures for the account from elsewhere, never refuse the
//!   owner at an address it has used before.
//! * Failures of an owner pair are counted on the pair, with the account's free failures
//!   and waiting times: someone behind the owner's address who guesses the owner's password
//!   is limited exactly as a guesser at the account from anywhere else. They also count on
//!   the account (locking it for other addresses), but not on the address: an owner's
//!   typing mistakes do not lock strangers out of a shared address.
//! * Every other login (a stranger pair: an unknown name, or an account never logged in
//!   to from this address) is subject to both the account's lock and the address's lock,
//!   and its failures count on both. A correct password does not lift the address's lock
//!   for a stranger pair: the address lock exists to stop guessing across many names.
//!
//! The one lock an attacker can still cause for an owner is on their shared pair: someone
//! behind the same address guessing that very account's password. From one address the
//! server cannot tell them apart; every lock ends after at most the cap. Records fade once
//! the waiting time and a quiet period have passed. Unknown and existing accounts are
//! treated alike, so throttling reveals nothing about which names exist.
//!
//! Registrations: a token bucket per address. Frames: a token bucket per connection
//! ([`crate::rate::TokenBucket`]).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The throttling policy. Part of the server's limits.
#[derive(Debug, Clone)]
pub struct ThrottlePolicy {
    /// Failed logins per account allowed before waiting times start.
    pub account_free_failures: u32,
    /// Failed logins per address allowed before waiting times start. Higher than per
    /// account: several people may share an address.
    pub address_free_failures: u32,
    /// The first waiting time; it doubles with each further failure.
    pub first_delay: Duration,
    /// The longest waiting time. Bounds how long anyone can be kept out.
    pub max_delay: Duration,
    /// Registrations one address may make in a burst (0 = no limit).
    pub registrations_burst: u32,
    /// Time for one registration token to come back.
    pub registration_interval: Duration,
    /// Logins and registrations from one network (`AddressPrefix`: an IPv4 /24 or IPv6 /64) that may be queued for bcrypt
    /// or running at once (0 = no limit); more are refused as busy. Small, so that one
    /// network cannot fill the queue, and it holds before any failure.
    pub logins_per_prefix: usize,
    /// Logins and registrations that may wait for a bcrypt worker in all; more are
    /// refused as busy. Bounds the queue (and the wait) when many prefixes flood at once.
    pub queued_logins: usize,
}

impl Default for ThrottlePolicy {
    fn default() -> ThrottlePolicy {
        ThrottlePolicy {
            account_free_failures: 5,
            address_free_failures: 20,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15 * 60),
            registrations_burst: 10,
            registration_interval: Duration::from_secs(60),
            logins_per_prefix: 4,
            queued_logins: 256,
        }
    }
}

/// The part of a source address one party is assumed to hold: the /24 of an IPv4
/// address, the /64 of an IPv6 address (one customer's network; a single IPv6 host
/// commonly has a whole /64). An IPv4-mapped IPv6 address counts as its IPv4 address.
/// The unit in which login work is shared out fairly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct AddressPrefix(
    /// The address with the host bits cleared.
    IpAddr,
);

impl AddressPrefix {
    /// Bits of an IPv4 address that name the network.
    pub(super) const IPV4_BITS: u32 = 24;
    /// Bits of an IPv6 address that name the network.
    pub(super) const IPV6_BITS: u32 = 64;

    /// The prefix `address` belongs to.
    pub(super) fn of(address: IpAddr) -> AddressPrefix {
        AddressPrefix(match address.to_canonical() {
            IpAddr::V4(v4) => {
                let mask = u32::MAX << (32 - Self::IPV4_BITS);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX << (128 - Self::IPV6_BITS);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        })
    }
}

impl std::fmt::Display for AddressPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bits = match self.0 {
            IpAddr::V4(_) => Self::IPV4_BITS,
            IpAddr::V6(_) => Self::IPV6_BITS,
        };
        write!(f, "{}/{bits}", self.0)
    }
}

/// Beyond this many records, fully expired ones are pruned on the next failure, so an
/// attacker cycling through names cannot grow the maps without bound.
const PRUNE_ABOVE: usize = 10_000;

/// Accounts whose owners' addresses are remembered; beyond this the memory is reset.
const MAX_OWNED_ACCOUNTS: usize = 100_000;

/// Owner addresses remembered per account (home, work, phone...).
const MAX_OWNER_ADDRESSES_PER_ACCOUNT: usize = 16;

/// What a client is told to wait while an attempt for the same account or address is
/// being checked and could be the one that starts a waiting time.
const ATTEMPT_IN_PROGRESS_WAIT: Duration = Duration::from_secs(1);

/// A login may not be attempted yet; retry after the given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Throttled {
    /// How long until the next attempt is allowed.
    pub retry_after: Duration,
}

/// Failures of one account, one address or one owner pair.
#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Consecutive failures (reset by a success).
    count: u32,
    /// Attempts are refused until then.
    blocked_until: Instant,
    /// When the record may be forgotten.
    expires: Instant,
}

/// One owner pair: an address that logged in to an account successfully before. Its
/// logins are limited by its own record only (see the module doc).
#[derive(Debug, Clone, Copy)]
struct OwnerPair {
    /// Failed logins of this pair.
    failures: Failures,
    /// Logins of this pair being checked now.
    checking: u32,
}

/// What the throttle remembers.
#[derive(Default)]
struct State {
    /// Failed logins by canonical account name (known or not).
    accounts: HashMap<String, Failures>,
    /// Failed logins by source address, of stranger pairs only.
    addresses: HashMap<IpAddr, Failures>,
    /// Owner pairs: per account, the addresses that logged in to it successfully.
    owners: HashMap<String, HashMap<IpAddr, OwnerPair>>,
    /// Registration tokens per address and when they were last topped up.
    registrations: HashMap<IpAddr, (f64, Instant)>,
    /// Logins of stranger pairs being checked (bcrypt running or queued) per account; no
    /// zero entries.
    checking_accounts: HashMap<String, u32>,
    /// Logins of stranger pairs being checked per address; no zero entries.
    checking_addresses: HashMap<IpAddr, u32>,
}

impl State {
    /// The owner pair of `account` at `address`, if that address has logged in to it.
    fn owner_pair(&mut self, account: &str, address: IpAddr) -> Option<&mut OwnerPair> {
        self.owners.get_mut(account)?.get_mut(&address)
    }
}

/// A login that passed [`Throttle::check_login`] and is being checked. Report its outcome
/// with [`LoginAttempt::failed`] or [`LoginAttempt::succeeded`]; dropped without either
/// (the connection ended, storage failed), it just stops counting as in progress.
#[must_use = "report the outcome, or the failure goes uncounted"]
pub(super) struct LoginAttempt<'a> {
    /// Where the attempt is counted.
    throttle: &'a Throttle,
    /// The canonical account name tried (known or not).
    account: String,
    /// Where the attempt came from.
    address: IpAddr,
    /// Whether it was checked as an owner pair (and is counted as one).
    owner: bool,
}

impl std::fmt::Debug for LoginAttempt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginAttempt")
            .field("account", &self.account)
            .field("address", &self.address)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl LoginAttempt<'_> {
    /// The password was wrong (or the account unknown). Returns the waiting time this
    /// started, if any (for the log).
    pub(super) fn failed(self) -> Option<Duration> {
        self.throttle
            .login_failed(&self.account, self.address, self.owner)
    }

    /// The login succeeded as `account` (canonical).
    pub(super) fn succeeded(self, account: &str) {
        self.throttle.login_succeeded(account, self.address);
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        let mut state = self.throttle.lock();
        if self.owner {
            // The pair may have been forgotten meanwhile (bounded memory): nothing to release.
            if let Some(pair) = state.owner_pair(&self.account, self.address) {
                pair.checking = pair.checking.saturating_sub(1);
            }
        } else {
            release(&mut state.checking_accounts, &self.account);
            release(&mut state.checking_addresses, &self.address);
        }
    }
}

/// Takes one attempt off a count of attempts in progress, removing it at zero.
fn release<K, Q>(counts: &mut HashMap<K, u32>, key: &Q)
where
    K: Borrow<Q> + Hash + Eq,
    Q: Hash + Eq + ?Sized,
{
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Shared throttle state for the whole server.
pub(super) struct Throttle {
    /// The rules.
    policy: ThrottlePolicy,
    /// The records; held only for map operations, never across I/O or bcrypt.
    state: Mutex<State>,
}

impl Throttle {
    pub(super) fn new(policy: ThrottlePolicy) -> Throttle {
        Throttle {
            policy,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether a login for `account` from `address` may be attempted now; if so, it counts
    /// as in progress until the returned attempt reports its outcome or is dropped.
    pub(super) fn check_login(
        &self,
        account: &str,
        address: IpAddr,
    ) -> Result<LoginAttempt<'_>, Throttled> {
        let now = Instant::now();
        let policy = &self.policy;
        let mut state = self.lock();
        if let Some(pair) = state.owner_pair(account, address) {
            let wait = waiting_time(
                Some(&pair.failures),
                pair.checking,
                policy.account_free_failures,
                false,
                now,
            );
            if !wait.is_zero() {
                return Err(Throttled { retry_after: wait });
            }
            pair.checking += 1;
            return Ok(LoginAttempt {
                throttle: self,
                account: account.to_owned(),
                address,
                owner: true,
            });
        }
        let checking_here = state.checking_addresses.get(&address).copied().unwrap_or(0);
        let checking_account = state.checking_accounts.get(account).copied().unwrap_or(0);
        let wait = waiting_time(
            state.addresses.get(&address),
            checking_here,
            policy.address_free_failures,
            true,
            now,
        )
        .max(waiting_time(
            state.accounts.get(account),
            checking_account,
            policy.account_free_failures,
            false,
            now,
        ));
        if !wait.is_zero() {
            return Err(Throttled { retry_after: wait });
        }
        *state
            .checking_accounts
            .entry(account.to_owned())
            .or_default() += 1;
        *state.checking_addresses.entry(address).or_default() += 1;
        Ok(LoginAttempt {
            throttle: self,
            account: account.to_owned(),
            address,
            owner: false,
        })
    }

    /// Records a failed login, on the account and on the owner pair (`owner`) or the
    /// address. Returns the waiting time it started for this pair, if any (for the log).
    fn login_failed(&self, account: &str, address: IpAddr, owner: bool) -> Option<Duration> {
        let now = Instant::now();
        let policy = &self.policy;
        let mut state = self.lock();
        if state.accounts.len() + state.addresses.len() > PRUNE_ABOVE {
            state.accounts.retain(|_, f| f.expires > now);
            state.addresses.retain(|_, f| f.expires > now);
        }
        let account_wait = record_failure(
            state
                .accounts
                .entry(account.to_owned())
                .or_insert_with(|| fresh(now)),
            policy.account_free_failures,
            policy,
            now,
        );
        let pair = if owner {
            state.owner_pair(account, address)
        } else {
            None
        };
        match pair {
            Some(pair) => record_failure(
                &mut pair.failures,
                policy.account_free_failures,
                policy,
                now,
            ),
            // A stranger pair (or an owner pair forgotten meanwhile).
            None => account_wait.max(record_failure(
                state.addresses.entry(address).or_insert_with(|| fresh(now)),
                policy.address_free_failures,
                policy,
                now,
            )),
        }
    }

    /// Records a successful login: the account's failures are forgiven, and the pair
    /// becomes (or stays) an owner pair with its failures forgiven. The address's failures
    /// are not forgiven (they expire on their own): otherwise an attacker with one account
    /// of their own could log in to it between guesses at other accounts and never reach
    /// the address's limit.
    fn login_succeeded(&self, account: &str, address: IpAddr) {
        let now = Instant::now();
        let mut state = self.lock();
        state.accounts.remove(account);
        if state.owners.len() >= MAX_OWNED_ACCOUNTS && !state.owners.contains_key(account) {
            // Bounded memory: forgetting owner pairs only means the account's and the
            // address's locks may apply to their logins too, for at most `max_delay`.
            state.owners.clear();
        }
        let pairs = state.owners.entry(account.to_owned()).or_default();
        if let Some(pair) = pairs.get_mut(&address) {
            pair.failures = fresh(now);
        } else if pairs.len() < MAX_OWNER_ADDRESSES_PER_ACCOUNT {
            pairs.insert(
                address,
                OwnerPair {
                    failures: fresh(now),
                    checking: 0,
                },
            );
        }
    }

    /// Takes a registration token for `address`, or says how long until one is free.
    pub(super) fn allow_registration(&self, address: IpAddr) -> Result<(), Throttled> {
        let policy = &self.policy;
        if policy.registrations_burst == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let burst = f64::from(policy.registrations_burst);
        let interval = policy.registration_interval.as_secs_f64().max(1e-3);
        let mut state = self.lock();
        if state.registrations.len() > PRUNE_ABOVE {
            state.registrations.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() / interval < burst
            });
        }
        let (tokens, at) = state.registrations.entry(address).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() / interval).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Throttled {
                retry_after: Duration::from_secs_f64((1.0 - *tokens) * interval),
            })
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }
}

fn fresh(now: Instant) -> Failures {
    Failures {
        count: 0,
        blocked_until: now,
        expires: now,
    }
}

/// Counts one failure; past `free`, blocks for `first_delay * 2^(extra failures - 1)`,
/// at most `max_delay`. Returns the new waiting time, if one started.
fn record_failure(
    failures: &mut Failures,
    free: u32,
    policy: &ThrottlePolicy,
    now: Instant,
) -> Option<Duration> {
    if failures.expires <= now {
        *failures = fresh(now);
    }
    failures.count = failures.count.saturating_add(1);
    let wait = if failures.count > free {
        let doublings = (failures.count - free - 1).min(30);
        let wait = policy.first_delay.saturating_mul(1 << doublings);
        Some(wait.min(policy.max_delay))
    } else {
        None
    };
    if let Some(wait) = wait {
        failures.blocked_until = now + wait;
    }
    // Forget the record once a quiet period as long as the longest wait has passed.
    failures.expires = failures.blocked_until.max(now) + policy.max_delay;
    wait
}

/// How long before one more login may start for a record with `checking` attempts in
/// progress: the record's waiting time, or, when the attempts in progress could use up the
/// free failures, until one of them is decided (a moment). With `clean_is_free`, a record
/// without failures is not limited at all (many people log in at once from one address).
fn waiting_time(
    failures: Option<&Failures>,
    checking: u32,
    free: u32,
    clean_is_free: bool,
    now: Instant,
) -> Duration {
    let (count, blocked) = match failures.filter(|f| f.expires > now) {
        Some(f) => (f.count, f.blocked_until.saturating_duration_since(now)),
        None => (0, Duration::ZERO),
    };
    if !blocked.is_zero() {
        blocked
    } else if checking > 0
        && count.saturating_add(checking) >= free
        && !(clean_is_free && count == 0)
    {
        ATTEMPT_IN_PROGRESS_WAIT
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            account_free_failures: 3,
            address_free_failures: 100,
            first_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(60),
            registrations_burst: 2,
            registration_interval: Duration::from_secs(3600),
            ..ThrottlePolicy::default()
        }
    }

    /// Records a failure as the login path would: as an owner pair's if the pair is one.
    fn fail(t: &Throttle, account: &str, address: IpAddr) -> Option<Duration> {
        let owner = t.lock().owner_pair(account, address).is_some();
        t.login_failed(account, address, owner)
    }

    const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));
    const OWNER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    #[test]
    fn waits_start_after_the_free_failures_and_double_up_to_the_cap() {
        let t = Throttle::new(policy());
        for _ in 0..3 {
            assert_eq!(fail(&t, "alice", ATTACKER), None);
        }
        assert!(t.check_login("alice", ATTACKER).is_ok());
        let waits: Vec<_> = (0..5).map(|_| fail(&t, "alice", ATTACKER)).collect();
        let secs: Vec<u64> = waits.iter().map(|w| w.unwrap().as_secs()).collect();
        assert_eq!(secs, vec![10, 20, 40, 60, 60]);
        let refused = t.check_login("alice", ATTACKER).unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(50));
    }

    #[test]
    fn the_owners_address_is_not_locked_out_by_someone_elses_failures() {
        let t = Throttle::new(policy());
        t.login_succeeded("alice", OWNER);
        for _ in 0..10 {
            fail(&t, "alice", ATTACKER);
        }
        assert!(t.check_login("alice", ATTACKER).is_err());
        assert!(t.check_login("alice", OWNER).is_ok());
        // Other accounts are unaffected.
        assert!(t.check_login("bob", OWNER).is_ok());
    }

    #[test]
    fn failures_for_other_names_never_lock_an_owner_out_of_its_address() {
        let t = Throttle::new(ThrottlePolicy {
            address_free_failures: 4,
            ..policy()
        });
        t.login_succeeded("alice", ATTACKER); // alice logged in from the shared address
        for i in 0..21 {
            fail(&t, &format!("ghost{i}"), ATTACKER);
        }
        // The address is locked for everyone but the owners of accounts at it...
        assert!(t.check_login("bob", ATTACKER).is_err());
        assert!(t.check_login("ghost99", ATTACKER).is_err());
        // ...and alice logs in at once, also while many attempts from the address run.
        let others: Vec<_> = (0..3).map(|_| t.check_login("alice", ATTACKER)).collect();
        assert!(others.iter().all(Result::is_ok));
    }

    #[test]
    fn an_owner_pairs_failures_are_limited_on_the_pair_and_the_account_only() {
        let t = Throttle::new(ThrottlePolicy {
            address_free_failures: 4,
            ..policy()
        });
        t.login_succeeded("alice", ATTACKER);
        t.login_succeeded("alice", OWNER);
        // Someone behind alice's shared address guesses her password: the account's free
        // failures (3), then waiting times, as from anywhere else.
        for _ in 0..3 {
            assert_eq!(fail(&t, "alice", ATTACKER), None);
        }
        assert_eq!(fail(&t, "alice", ATTACKER), Some(Duration::from_secs(10)));
        assert!(t.check_login("alice", ATTACKER).is_err());
        // Her other owner address is not affected; a stranger address is (the account).
        assert!(t.check_login("alice", OWNER).is_ok());
        let elsewhere: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(t.check_login("alice", elsewhere).is_err());
        // Those failures did not count on the address: strangers there are not locked.
        assert!(t.check_login("bob", ATTACKER).is_ok());
        // A success on the pair forgives the pair.
        t.login_succeeded("alice", ATTACKER);
        assert!(t.check_login("alice", ATTACKER).is_ok());
    }

    #[test]
    fn an_owner_pairs_parallel_attempts_cannot_outrun_its_count() {
        let t = Throttle::new(policy());
        t.login_succeeded("alice", ATTACKER);
        let running: Vec<_> = (0..3)
            .map(|_| t.check_login("alice", ATTACKER).expect("free"))
            .collect();
        assert_eq!(
            t.check_login("alice", ATTACKER).unwrap_err().retry_after,
            ATTEMPT_IN_PROGRESS_WAIT
        );
        drop(running);
        assert!(t.check_login("alice", ATTACKER).is_ok());
    }

    #[test]
    fn prefixes_are_the_ipv4_slash_24_and_the_ipv6_slash_64() {
        let prefix = |a: &str| AddressPrefix::of(a.parse().unwrap());
        assert_eq!(prefix("203.0.113.9"), prefix("203.0.113.250"));
        assert_ne!(prefix("203.0.113.9"), prefix("203.0.114.9"));
        assert_eq!(prefix("203.0.113.9").to_string(), "203.0.113.0/24");
        assert_eq!(prefix("2001:db8:1:2:a::1"), prefix("2001:db8:1:2:ffff::9"));
        assert_ne!(prefix("2001:db8:1:2::1"), prefix("2001:db8:1:3::1"));
        assert_eq!(prefix("2001:db8:1:2:a::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(prefix("::ffff:203.0.113.9"), prefix("203.0.113.1"));
    }

    #[test]
    fn an_address_failing_across_many_accounts_is_throttled() {
        let t = Throttle::new(ThrottlePolicy {
            address_free_failures: 4,
            ..policy()
        });
        for i in 0..5 {
            fail(&t, &format!("user{i}"), ATTACKER);
        }
        assert!(t.check_login("someone_new", ATTACKER).is_err());
        assert!(t.check_login("someone_new", OWNER).is_ok());
    }

    #[test]
    fn logins_fired_at_once_cannot_outrun_the_count_of_failures() {
        // 3 failures free per account: 3 attempts may be checked at once, not a 4th.
        let t = Throttle::new(policy());
        t.login_succeeded("alice", OWNER);
        let running: Vec<_> = (0..3)
            .map(|_| t.check_login("alice", ATTACKER).expect("free"))
            .collect();
        let refused = t.check_login("alice", ATTACKER).unwrap_err();
        assert_eq!(refused.retry_after, ATTEMPT_IN_PROGRESS_WAIT);
        for attempt in running {
            assert_eq!(attempt.failed(), None);
        }
        // The free failures are used up: one attempt at a time, and its failure counts
        // before the next may start.
        let last = t.check_login("alice", ATTACKER).expect("one at a time");
        assert!(t.check_login("alice", ATTACKER).is_err());
        assert_eq!(last.failed(), Some(Duration::from_secs(10)));
        assert!(t.check_login("alice", ATTACKER).unwrap_err().retry_after > Duration::from_secs(5));
        // The owner's address is not held up by the attacker's attempts on the account.
        assert!(t.check_login("alice", OWNER).is_ok());
    }

    #[test]
    fn an_address_without_failures_may_log_in_many_at_once_then_one_at_a_time() {
        let t = Throttle::new(ThrottlePolicy {
            address_free_failures: 4,
            ..policy()
        });
        let clean: Vec<_> = (0..10)
            .map(|i| {
                t.check_login(&format!("user{i}"), ATTACKER)
                    .expect("clean address")
            })
            .collect();
        drop(clean);
        assert_eq!(t.check_login("user0", ATTACKER).unwrap().failed(), None);
        // One failure on record: 3 more are free, so 3 may run at once.
        let running: Vec<_> = (1..4)
            .map(|i| t.check_login(&format!("user{i}"), ATTACKER).expect("free"))
            .collect();
        assert!(t.check_login("user9", ATTACKER).is_err());
        drop(running);
    }

    #[test]
    fn an_attempt_dropped_without_an_outcome_stops_counting() {
        let t = Throttle::new(policy());
        let attempts: Vec<_> = (0..3)
            .map(|_| t.check_login("alice", ATTACKER).unwrap())
            .collect();
        assert!(t.check_login("alice", ATTACKER).is_err());
        drop(attempts);
        assert!(t.check_login("alice", ATTACKER).is_ok());
        assert!(t.lock().checking_accounts.is_empty() && t.lock().checking_addresses.is_empty());
    }

    #[test]
    fn success_forgives_the_accounts_failures() {
        let t = Throttle::new(policy());
        for _ in 0..5 {
            fail(&t, "alice", OWNER);
        }
        t.login_succeeded("alice", OWNER);
        assert!(t.check_login("alice", ATTACKER).is_ok());
    }

    #[test]
    fn logging_in_to_an_own_account_does_not_reset_the_addresss_failures() {
        let t = Throttle::new(ThrottlePolicy {
            address_free_failures: 4,
            ..policy()
        });
        for i in 0..5 {
            fail(&t, &format!("victim{i}"), ATTACKER);
            t.login_succeeded("mallory", ATTACKER);
        }
        assert!(t.check_login("victim9", ATTACKER).is_err());
    }

    #[test]
    fn registrations_are_limited_per_address() {
        let t = Throttle::new(policy());
        assert!(t.allow_registration(ATTACKER).is_ok());
        assert!(t.allow_registration(ATTACKER).is_ok());
        let refused = t.allow_registration(ATTACKER).unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(3000));
        assert!(t.allow_registration(OWNER).is_ok());
    }

    #[test]
    fn zero_burst_means_no_registration_limit() {
        let t = Throttle::new(ThrottlePolicy {
            registrations_burst: 0,
            ..policy()
        });
        for _ in 0..100 {
            assert!(t.allow_registration(ATTACKER).is_ok());
        }
    }
}
