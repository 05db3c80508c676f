//! Accounts: who may register, how passwords are checked, and what a login costs.
//!
//! * User names follow one regex and are compared without case (they are lower-cased
//!   before anything else, so `Alice` and `alice` are the same account).
//! * Password rules are a table of simple regexes (the `regex` crate has no look-ahead),
//!   and a rejection lists every rule that failed.
//! * Passwords are stored only as bcrypt hashes. bcrypt reads at most 72 bytes and would
//!   silently ignore the rest, so longer passwords are refused rather than truncated.
//! * A login for an unknown user verifies against a dummy hash of the same cost, so the
//!   answer takes as long as for a wrong password and says the same thing.
//! * bcrypt runs on a few dedicated worker threads at the lowest scheduling priority
//!   (`SCHED_IDLE`), first come first served: a storm of logins queues for them and uses
//!   the CPU the people already chatting leave idle.

use regex::Regex;
use std::sync::LazyLock;

use crate::error::Result;
use crate::store::{Created, Store};
use crate::throttle::Throttled;

/// bcrypt's input limit in bytes; anything after it would be ignored.
pub const BCRYPT_MAX_PASSWORD_BYTES: usize = 72;

/// Human description of the user-name rule, shown on rejection.
pub const USERNAME_RULE: &str = "3-32 characters: a letter first, then letters, digits or \
     underscores; not one of the names the client uses for itself (you, server, system, …)";

/// Names nobody may have: the client's own words for itself and for the server, so that no
/// user's line can read as the local user's or as a notice (issue 12).
pub const RESERVED_USERNAMES: &[&str] = &[
    "you",
    "yourself",
    "server",
    "system",
    "admin",
    "root",
    "securechat",
    "room",
    "everyone",
    "notice",
];

/// A password rule: a pattern that must (or must not) match, and what it means.
struct PasswordRule {
    pattern: Regex,
    must_match: bool,
    description: &'static str,
}

/// The password rules, each a simple regex, checked in order.
static PASSWORD_RULES: LazyLock<Vec<PasswordRule>> = LazyLock::new(|| {
    let rule = |pattern: &str, must_match, description| PasswordRule {
        pattern: Regex::new(pattern).unwrap_or_else(|e| panic!("bad built-in regex: {e}")),
        must_match,
        description,
    };
    vec![
        rule(r"^.{8,}$", true, "at least 8 characters"),
        rule(r"\p{Lu}", true, "an upper-case letter"),
        rule(r"\p{Ll}", true, "a lower-case letter"),
        rule(r"\p{Nd}", true, "a digit"),
        rule(r"^\s|\s$", false, "no space at the start or end"),
    ]
});

/// Passwords that pass every rule above and are still among the first an attacker tries.
const COMMON_PASSWORDS: &[&str] = &[
    "password1",
    "password123",
    "passw0rd",
    "p@ssw0rd",
    "qwerty123",
    "welcome1",
    "welcome123",
    "admin123",
    "letmein1",
    "iloveyou1",
    "abc12345",
    "abcd1234",
    "changeme1",
    "securechat1",
];

/// Lower-cases and checks a user name against the rule `^[a-z][a-z0-9_]{2,31}$` (after
/// lower-casing): short enough to show in a chat line, ASCII so that look-alike names
/// cannot be registered. Returns the canonical name, or the rule it broke.
///
/// Written out rather than as a regex because it runs for every routed message.
pub fn normalize_username(user: &str) -> Result<String, String> {
    if is_canonical_username(user) {
        return Ok(user.to_owned());
    }
    let lower = user.to_ascii_lowercase();
    if is_canonical_username(&lower) {
        Ok(lower)
    } else {
        Err(format!("user name must be {USERNAME_RULE}"))
    }
}

/// Whether `name` already is a canonical user name (lower case, follows the rule, not
/// reserved). The client checks every name the server sends with it.
pub fn is_canonical_username(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=32).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !RESERVED_USERNAMES.contains(&name)
}

/// Every password rule that `password` breaks for the (canonical) user name `user`; empty
/// when the password is acceptable.
pub fn password_problems(user: &str, password: &str) -> Vec<&'static str> {
    let mut problems: Vec<&'static str> = PASSWORD_RULES
        .iter()
        .filter(|rule| rule.pattern.is_match(password) != rule.must_match)
        .map(|rule| rule.description)
        .collect();
    let lower = password.to_lowercase();
    if !user.is_empty() && lower.contains(&user.to_lowercase()) {
        problems.push("must not contain the user name");
    }
    if password.len() > BCRYPT_MAX_PASSWORD_BYTES {
        problems.push("at most 72 bytes (bcrypt ignores anything longer)");
    }
    if COMMON_PASSWORDS.contains(&lower.as_str()) {
        problems.push("not a commonly used password");
    }
    problems
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    /// The name breaks the naming rule.
    BadUsername(String),
    /// The password breaks these rules.
    WeakPassword(Vec<&'static str>),
    /// The name is taken.
    Exists,
    /// Too many registrations from this address; retry after this long.
    Throttled(std::time::Duration),
    /// The database refused the write; the account was not created.
    Storage(String),
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Unknown user or wrong password: deliberately indistinguishable.
    Invalid,
    /// The database could not be read.
    Storage(String),
}

/// Registration and login, with bounded bcrypt concurrency.
pub struct Accounts {
    /// Where accounts live.
    store: Store,
    /// bcrypt work factor for new hashes (each step doubles the cost).
    cost: u32,
    /// A hash of a random password at `cost`, verified for unknown users so that a login
    /// attempt costs the same whether or not the account exists.
    dummy_hash: String,
    /// Where bcrypt runs: a bounded, low-priority pool.
    hashers: HashPool,
}

impl Accounts {
    /// Wraps a store. `cost` is the bcrypt cost; `max_concurrent` bounds simultaneous
    /// bcrypt computations (the number of CPU cores is a good value: the pool runs at low
    /// priority, so chat traffic still gets the CPU it needs).
    pub fn new(store: Store, cost: u32, max_concurrent: usize) -> Result<Accounts> {
        let mut random = [0u8; 18];
        aws_lc_rs::rand::fill(&mut random[..])
            .map_err(|_| crate::Error::Config("the system random generator failed".into()))?;
        let dummy_hash = bcrypt::hash(random, cost)
            .map_err(|e| crate::Error::Config(format!("bcrypt cost {cost} is not usable: {e}")))?;
        Ok(Accounts {
            store,
            cost,
            dummy_hash,
            hashers: HashPool::new(max_concurrent.max(1))?,
        })
    }

    /// The underlying store (identity keys, counters).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates an account after checking the rules. Returns the canonical user name.
    /// `admit` is asked once the request is valid and before any bcrypt work, so that a
    /// rate limit counts real registrations and not typing mistakes.
    pub fn register(
        &self,
        user: &str,
        password: &str,
        admit: impl FnOnce() -> Result<(), Throttled>,
    ) -> Result<String, RegisterError> {
        let user = normalize_username(user).map_err(RegisterError::BadUsername)?;
        let problems = password_problems(&user, password);
        if !problems.is_empty() {
            return Err(RegisterError::WeakPassword(problems));
        }
        // Cheap early answer; the insert below is the authority (two racing registrations).
        if matches!(self.store.password_hash(&user), Ok(Some(_))) {
            return Err(RegisterError::Exists);
        }
        admit().map_err(|t| RegisterError::Throttled(t.retry_after))?;
        let (password, cost) = (password.to_owned(), self.cost);
        let hash = self
            .hashers
            .run(move || bcrypt::hash(password, cost))
            .and_then(|hashed| hashed.map_err(|e| e.to_string()))
            .map_err(RegisterError::Storage)?;
        match self.store.create_account(&user, &hash) {
            Ok(Created::Yes) => Ok(user),
            Ok(Created::AlreadyExists) => Err(RegisterError::Exists),
            Err(e) => Err(RegisterError::Storage(e.to_string())),
        }
    }

    /// Checks a user name and password. Returns the canonical user name.
    pub fn login(&self, user: &str, password: &str) -> Result<String, LoginError> {
        let user = normalize_username(user).ok();
        let stored = match &user {
            Some(name) => self
                .store
                .password_hash(name)
                .map_err(|e| LoginError::Storage(e.to_string()))?,
            None => None,
        };
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.clone());
        let attempt = password.to_owned();
        let matched = self
            .hashers
            .run(move || bcrypt::verify(attempt, &hash).unwrap_or(false))
            .map_err(LoginError::Storage)?;
        // bcrypt would ignore bytes past 72; such a password was never accepted at
        // registration, so it cannot be right. It was verified anyway to keep the cost equal.
        let verified = matched && known && password.len() <= BCRYPT_MAX_PASSWORD_BYTES;
        match (verified, user) {
            (true, Some(user)) => {
                if let Err(e) = self.store.record_login(&user) {
                    log::warn!("could not record login time for {user}: {e}");
                }
                Ok(user)
            }
            _ => Err(LoginError::Invalid),
        }
    }
}

/// A job for the hashing pool.
type HashJob = Box<dyn FnOnce() + Send>;

/// Worker threads that run bcrypt, first come first served, at low priority.
///
/// Bounding the workers bounds the CPU a storm of logins can take; `SCHED_IDLE` makes the
/// scheduler run them only when chat threads leave a core idle (measured: a storm of 100
/// logins at cost 12 raised the p99 latency of 5,000 msgs/s of chat 1.6x with SCHED_IDLE,
/// 2.8x at nice 10). Under a full flood they still get a sliver of CPU, so logins slow
/// down rather than stop.
struct HashPool {
    /// Where jobs wait for a worker, in arrival order.
    jobs: crossbeam_channel::Sender<HashJob>,
}

/// Scheduling priority of bcrypt workers where `SCHED_IDLE` is not available.
const HASH_WORKER_NICE: libc::c_int = 19;

impl HashPool {
    fn new(workers: usize) -> Result<HashPool> {
        let (jobs, queue) = crossbeam_channel::unbounded::<HashJob>();
        for i in 0..workers {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    for job in queue {
                        job();
                    }
                })?;
        }
        Ok(HashPool { jobs })
    }

    /// Runs `work` on a worker and waits for its result.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (reply, result) = crossbeam_channel::bounded(1);
        self.jobs
            .send(Box::new(move || {
                let _ = reply.send(work());
            }))
            .map_err(|_| "the password workers have stopped".to_owned())?;
        result
            .recv()
            .map_err(|_| "a password worker failed".to_owned())
    }
}

/// Gives the calling thread (only) the lowest scheduling priority: `SCHED_IDLE`, or
/// `nice 19` where that is refused. Best effort: failing leaves the default priority.
fn lower_this_threads_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(0, ...) and setpriority with this thread's id change only
    // the calling thread's scheduling; `param` is a valid struct for the call.
    unsafe {
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, HASH_WORKER_NICE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_lower_cased_and_checked() {
        assert_eq!(normalize_username("Alice_1").unwrap(), "alice_1");
        for bad in [
            "al",
            "1alice",
            "alice!",
            "",
            "a".repeat(33).as_str(),
            "élise",
            "you",
            "Server",
            "SYSTEM",
        ] {
            assert!(normalize_username(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_good_password_passes() {
        assert!(password_problems("alice", "Correct horse 9").is_empty());
    }

    #[test]
    fn every_broken_rule_is_listed() {
        let problems = password_problems("alice", "abc");
        assert_eq!(
            problems,
            vec!["at least 8 characters", "an upper-case letter", "a digit"]
        );
        assert_eq!(
            password_problems("alice", "ABCDEFGH1"),
            vec!["a lower-case letter"]
        );
        assert_eq!(
            password_problems("alice", "xAlice123"),
            vec!["must not contain the user name"]
        );
        assert_eq!(
            password_problems("bob", " Padded123"),
            vec!["no space at the start or end"]
        );
        assert_eq!(
            password_problems("bob", "Password1"),
            vec!["not a commonly used password"]
        );
        let long = format!("Aa1{}", "x".repeat(70));
        assert_eq!(
            password_problems("bob", &long),
            vec!["at most 72 bytes (bcrypt ignores anything longer)"]
        );
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        // Seven characters, more than eight bytes.
        assert!(password_problems("bob", "Ééééé1x").contains(&"at least 8 characters"));
    }

    fn accounts() -> (tempfile::TempDir, Accounts) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, Accounts::new(store, 4, 2).unwrap())
    }

    #[test]
    fn register_then_login() {
        let (_dir, accounts) = accounts();
        assert_eq!(
            accounts
                .register("Alice", "Sturdy pass 1", || Ok(()))
                .unwrap(),
            "alice"
        );
        assert_eq!(accounts.login("ALICE", "Sturdy pass 1").unwrap(), "alice");
        assert_eq!(
            accounts.login("alice", "Sturdy pass 2"),
            Err(LoginError::Invalid)
        );
        assert_eq!(
            accounts.login("nobody", "Sturdy pass 1"),
            Err(LoginError::Invalid)
        );
        assert_eq!(
            accounts.login("x!", "Sturdy pass 1"),
            Err(LoginError::Invalid)
        );
        assert_eq!(accounts.login("alice", ""), Err(LoginError::Invalid));
        assert_eq!(
            accounts.register("alice", "Sturdy pass 1", || Ok(())),
            Err(RegisterError::Exists)
        );
    }

    #[test]
    fn only_a_bcrypt_hash_is_stored() {
        let (_dir, accounts) = accounts();
        accounts
            .register("carol", "Sturdy pass 1", || Ok(()))
            .unwrap();
        let hash = accounts.store().password_hash("carol").unwrap().unwrap();
        assert!(hash.starts_with("$2b$04$"), "{hash}");
        assert!(!hash.contains("Sturdy"));
    }

    #[test]
    fn the_pool_bounds_concurrency_and_runs_at_low_priority() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        use std::sync::Arc;
        let pool = Arc::new(HashPool::new(2).unwrap());
        let inside = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        // Until two jobs have overlapped, each waits (up to 10 s) for a second one, so the
        // two workers are certainly busy at once however the scheduler treats
        // idle-priority threads on a loaded machine; a third at once would show in the peak.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (pool, inside, peak) = (pool.clone(), inside.clone(), peak.clone());
                std::thread::spawn(move || {
                    pool.run(move || {
                        let now = inside.fetch_add(1, SeqCst) + 1;
                        peak.fetch_max(now, SeqCst);
                        while peak.load(SeqCst) < 2 && std::time::Instant::now() < deadline {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        inside.fetch_sub(1, SeqCst);
                        // SAFETY: sched_getscheduler(0) reads the calling thread's policy.
                        unsafe { libc::sched_getscheduler(0) }
                    })
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), libc::SCHED_IDLE);
        }
        assert_eq!(peak.load(SeqCst), 2);
    }
}
