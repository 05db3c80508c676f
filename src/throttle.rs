//! Brute-force and flood defences that need memory across connections: failed logins per
//! account and per source address, and registrations per source address.
//!
//! Failed logins: the first few failures are free; after that each failure doubles a
//! waiting time during which further attempts are refused *without running bcrypt*, up to
//! a cap. Attempts still being checked count too ([`LoginAttempt`]): no more may run at
//! once than the failures still free, and once those are used up only one at a time, so
//! logins fired in parallel cannot all pass the check before the first failure is counted.
//! (An address with no failures yet is not limited, as many people may log in at once
//! from one address; the first wave of parallel failures from it is bounded by the
//! per-address connection cap.)
//!
//! An account's lock never applies to an address that has logged in to that account
//! successfully before (it is the owner's), so an attacker elsewhere cannot lock the owner
//! out; and every lock ends after at most the cap. Records fade once the waiting
//! time and a quiet period have passed. Unknown and existing accounts are treated alike,
//! so throttling reveals nothing about which names exist.
//!
//! Registrations: a token bucket per address. Frames: a token bucket per connection
//! ([`TokenBucket`]).

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
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
        }
    }
}

/// Beyond this many records, fully expired ones are pruned on the next failure, so an
/// attacker cycling through names cannot grow the maps without bound.
const PRUNE_ABOVE: usize = 10_000;

/// Accounts whose owners' addresses are remembered; beyond this the memory is reset.
const MAX_TRUSTED_ACCOUNTS: usize = 100_000;

/// Owner addresses remembered per account (home, work, phone...).
const MAX_TRUSTED_ADDRESSES_PER_ACCOUNT: usize = 16;

/// What a client is told to wait while an attempt for the same account or address is
/// being checked and could be the one that starts a waiting time.
const ATTEMPT_IN_PROGRESS_WAIT: Duration = Duration::from_secs(1);

/// A login may not be attempted yet; retry after the given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// How long until the next attempt is allowed.
    pub retry_after: Duration,
}

/// Failures of one account or one address.
#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Consecutive failures (reset by a success).
    count: u32,
    /// Attempts are refused until then.
    blocked_until: Instant,
    /// When the record may be forgotten.
    expires: Instant,
}

/// What the throttle remembers.
#[derive(Default)]
struct State {
    /// Failed logins by canonical account name (known or not).
    accounts: HashMap<String, Failures>,
    /// Failed logins by source address.
    addresses: HashMap<IpAddr, Failures>,
    /// Addresses that logged in successfully, per account: exempt from that account's lock.
    trusted: HashMap<String, HashSet<IpAddr>>,
    /// Registration tokens per address and when they were last topped up.
    registrations: HashMap<IpAddr, (f64, Instant)>,
    /// Logins being checked (bcrypt running or queued) per account; no zero entries.
    checking_accounts: HashMap<String, u32>,
    /// Logins being checked per address; no zero entries.
    checking_addresses: HashMap<IpAddr, u32>,
}

/// A login that passed [`Throttle::check_login`] and is being checked. Report its outcome
/// with [`LoginAttempt::failed`] or [`LoginAttempt::succeeded`]; dropped without either
/// (the connection ended, storage failed), it just stops counting as in progress.
#[must_use = "report the outcome, or the failure goes uncounted"]
pub struct LoginAttempt<'a> {
    /// Where the attempt is counted.
    throttle: &'a Throttle,
    /// The canonical account name tried (known or not).
    account: String,
    /// Where the attempt came from.
    address: IpAddr,
}

impl std::fmt::Debug for LoginAttempt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginAttempt")
            .field("account", &self.account)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl LoginAttempt<'_> {
    /// The password was wrong (or the account unknown). Returns the waiting time this
    /// started, if any (for the log).
    pub fn failed(self) -> Option<Duration> {
        self.throttle.login_failed(&self.account, self.address)
    }

    /// The login succeeded as `account` (canonical).
    pub fn succeeded(self, account: &str) {
        self.throttle.login_succeeded(account, self.address);
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        let mut state = self.throttle.lock();
        release(&mut state.checking_accounts, &self.account);
        release(&mut state.checking_addresses, &self.address);
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
pub struct Throttle {
    /// The rules.
    policy: ThrottlePolicy,
    /// The records; held only for map operations, never across I/O or bcrypt.
    state: Mutex<State>,
}

impl Throttle {
    pub fn new(policy: ThrottlePolicy) -> Throttle {
        Throttle {
            policy,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether a login for `account` from `address` may be attempted now; if so, it counts
    /// as in progress until the returned attempt reports its outcome or is dropped.
    pub fn check_login(
        &self,
        account: &str,
        address: IpAddr,
    ) -> Result<LoginAttempt<'_>, Throttled> {
        let now = Instant::now();
        let policy = &self.policy;
        let mut state = self.lock();
        let checking_here = state.checking_addresses.get(&address).copied().unwrap_or(0);
        let mut wait = waiting_time(
            state.addresses.get(&address),
            checking_here,
            policy.address_free_failures,
            true,
            now,
        );
        let owner = state
            .trusted
            .get(account)
            .is_some_and(|ips| ips.contains(&address));
        if !owner {
            let checking_account = state.checking_accounts.get(account).copied().unwrap_or(0);
            wait = wait.max(waiting_time(
                state.accounts.get(account),
                checking_account,
                policy.account_free_failures,
                false,
                now,
            ));
        }
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
        })
    }

    /// Records a failed login. Returns the waiting time it started, if any (for the log).
    fn login_failed(&self, account: &str, address: IpAddr) -> Option<Duration> {
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
        let address_wait = record_failure(
            state.addresses.entry(address).or_insert_with(|| fresh(now)),
            policy.address_free_failures,
            policy,
            now,
        );
        account_wait.max(address_wait)
    }

    /// Records a successful login: the account's failures are forgiven, and the address
    /// becomes trusted for this account. The address's failures are not forgiven (they
    /// expire on their own): otherwise an attacker with one account of their own could log
    /// in to it between guesses at other accounts and never reach the address's limit.
    fn login_succeeded(&self, account: &str, address: IpAddr) {
        let mut state = self.lock();
        state.accounts.remove(account);
        if state.trusted.len() >= MAX_TRUSTED_ACCOUNTS && !state.trusted.contains_key(account) {
            // Bounded memory: forgetting owners' addresses only means their account's lock
            // may apply to them too, for at most `max_delay`.
            state.trusted.clear();
        }
        let owners = state.trusted.entry(account.to_owned()).or_default();
        if owners.len() < MAX_TRUSTED_ADDRESSES_PER_ACCOUNT {
            owners.insert(address);
        }
    }

    /// Takes a registration token for `address`, or says how long until one is free.
    pub fn allow_registration(&self, address: IpAddr) -> Result<(), Throttled> {
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
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A per-connection token bucket: `rate` frames per second on average, `burst` at once.
/// Keeps one client from monopolising the router; refills lazily, so it costs nothing
/// while the client is quiet.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens available now (fractional while refilling).
    tokens: f64,
    /// The most tokens the bucket holds.
    burst: f64,
    /// Tokens added per second; 0 disables the limit.
    rate: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate == 0` means unlimited.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst.max(1)),
            burst: f64::from(burst.max(1)),
            rate: f64::from(rate),
            refilled: Instant::now(),
        }
    }

    /// Adds the tokens earned since the last refill. Call once per batch of frames.
    pub fn refill(&mut self, now: Instant) {
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
    }

    /// How long after the last refill one token will be there (zero if one is now). The
    /// client paces itself with this to the limits the server announced.
    pub fn time_to_token(&self) -> Duration {
        if self.rate == 0.0 || self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Takes one token; `false` if the bucket is empty (the frame is over the limit).
    pub fn take(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
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
        }
    }

    const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));
    const OWNER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    #[test]
    fn waits_start_after_the_free_failures_and_double_up_to_the_cap() {
        let t = Throttle::new(policy());
        for _ in 0..3 {
            assert_eq!(t.login_failed("alice", ATTACKER), None);
        }
        assert!(t.check_login("alice", ATTACKER).is_ok());
        let waits: Vec<_> = (0..5).map(|_| t.login_failed("alice", ATTACKER)).collect();
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
            t.login_failed("alice", ATTACKER);
        }
        assert!(t.check_login("alice", ATTACKER).is_err());
        assert!(t.check_login("alice", OWNER).is_ok());
        // Other accounts are unaffected.
        assert!(t.check_login("bob", OWNER).is_ok());
    }

    #[test]
    fn an_address_failing_across_many_accounts_is_throttled() {
        let t = Throttle::new(ThrottlePolicy {
            address_free_failures: 4,
            ..policy()
        });
        for i in 0..5 {
            t.login_failed(&format!("user{i}"), ATTACKER);
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
            t.login_failed("alice", OWNER);
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
            t.login_failed(&format!("victim{i}"), ATTACKER);
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
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3);
        bucket.refill(start);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take());
        bucket.refill(start + Duration::from_millis(250)); // 2.5 tokens earned
        assert!(bucket.take() && bucket.take());
        assert!(!bucket.take());
        let mut unlimited = TokenBucket::new(0, 1);
        assert!((0..1000).all(|_| unlimited.take()));
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
