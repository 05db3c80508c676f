//! Accounts: who may register, how passwords are checked, and what a login costs.
//!
//! * User names follow one rule (`crate::protocol::name`) and are compared without case.
//! * Password rules are [`crate::password`]'s, the one definition the client shares.
//! * Passwords are stored only as bcrypt hashes. bcrypt reads at most 72 bytes and would
//!   silently ignore the rest, so longer passwords are refused rather than truncated.
//! * A login for an unknown user verifies against a dummy hash of the same cost, so the
//!   answer takes as long as for a wrong password and says the same thing.
//! * bcrypt runs on a few dedicated worker threads at the lowest scheduling priority
//!   (`SCHED_IDLE`), so a storm of logins uses the CPU the people already chatting leave
//!   idle. The queue for them is bounded and fair (`HashPool` below): each client's network
//!   ([`AddressPrefix`]) may have only a few jobs queued or running, networks take turns,
//!   and a full queue refuses at once with a time to retry. So a flood from a few
//!   addresses delays an honest login by about one job per flooding network, not by the
//!   whole flood.

use std::collections::{HashMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::protocol::name::{BadUserName, UserName};
use crate::server::store::{Created, Storage};
use crate::server::throttle::{AddressPrefix, ThrottlePolicy, Throttled};

use crate::password::{password_problems, BCRYPT_MAX_PASSWORD_BYTES};

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RegisterError {
    /// The name breaks the naming rule.
    BadUsername(BadUserName),
    /// The password breaks these rules.
    WeakPassword(Vec<&'static str>),
    /// The name is taken.
    Exists,
    /// Too many registrations from this address; retry after this long.
    Throttled(Duration),
    /// The password workers have no room for this request now.
    Busy(Busy),
    /// The database refused the write; the account was not created.
    Storage(String),
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LoginError {
    /// Unknown user or wrong password: deliberately indistinguishable.
    Invalid,
    /// The password workers have no room for this attempt now; it was not checked.
    Busy(Busy),
    /// The database could not be read.
    Storage(String),
}

/// Why the password workers refused a job: it was not run, and may be retried later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Busy {
    /// The client's network already has its share of jobs queued or running.
    Network {
        /// About how long the queue takes to drain (their turns come within it).
        retry_after: Duration,
    },
    /// The queue for the workers is full.
    Server {
        /// About when the queue will have drained.
        retry_after: Duration,
    },
}

impl Busy {
    /// How long the client should wait before trying again.
    pub(super) fn retry_after(self) -> Duration {
        match self {
            Busy::Network { retry_after } | Busy::Server { retry_after } => retry_after,
        }
    }
}

/// Why a job given to the password workers produced no result.
#[derive(Debug)]
enum HashError {
    /// Refused for now; it was not run.
    Busy(Busy),
    /// The workers have stopped, or the job failed (a bug).
    Failed(String),
}

/// Registration and login, with bounded bcrypt concurrency.
pub(super) struct Accounts {
    /// Where accounts live (shared with the room history's writer).
    store: Arc<dyn Storage>,
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
    /// priority, so chat traffic still gets the CPU it needs); `policy` bounds the queue.
    pub(super) fn new(
        store: Arc<dyn Storage>,
        cost: u32,
        max_concurrent: usize,
        policy: &ThrottlePolicy,
    ) -> Result<Accounts> {
        let mut random = [0u8; 18];
        aws_lc_rs::rand::fill(&mut random[..])
            .map_err(|_| crate::Error::Config("the system random generator failed".into()))?;
        let started = Instant::now();
        let dummy_hash = bcrypt::hash(random, cost)
            .map_err(|e| crate::Error::Config(format!("bcrypt cost {cost} is not usable: {e}")))?;
        let bounds = QueueBounds {
            workers: max_concurrent.max(1),
            per_prefix: policy.logins_per_prefix,
            queued: policy.queued_logins,
        };
        Ok(Accounts {
            store,
            cost,
            dummy_hash,
            hashers: HashPool::new(bounds, started.elapsed())?,
        })
    }

    /// The underlying store (identity keys, counters).
    pub(super) fn store(&self) -> &dyn Storage {
        &*self.store
    }

    /// Creates an account after checking the rules. Returns the canonical user name.
    /// `admit` is asked once the request is valid and before any bcrypt work, so that a
    /// rate limit counts real registrations and not typing mistakes; the bcrypt work is
    /// queued as `from`'s.
    pub(super) fn register(
        &self,
        user: &str,
        password: &str,
        from: AddressPrefix,
        admit: impl FnOnce() -> Result<(), Throttled>,
    ) -> Result<UserName, RegisterError> {
        let user = UserName::parse(user).map_err(RegisterError::BadUsername)?;
        let problems = password_problems(user.as_str(), password);
        if !problems.is_empty() {
            return Err(RegisterError::WeakPassword(problems));
        }
        // Cheap early answer; the insert below is the authority (two racing registrations).
        if matches!(self.store.password_hash(&user), Ok(Some(_))) {
            return Err(RegisterError::Exists);
        }
        admit().map_err(|t| RegisterError::Throttled(t.retry_after))?;
        let (password, cost) = (password.to_owned(), self.cost);
        let hash = match self.hashers.run(from, move || bcrypt::hash(password, cost)) {
            Ok(Ok(hash)) => hash,
            Ok(Err(e)) => return Err(RegisterError::Storage(e.to_string())),
            Err(HashError::Busy(busy)) => return Err(RegisterError::Busy(busy)),
            Err(HashError::Failed(e)) => return Err(RegisterError::Storage(e)),
        };
        match self.store.create_account(&user, &hash) {
            Ok(Created::Yes) => Ok(user),
            Ok(Created::AlreadyExists) => Err(RegisterError::Exists),
            Err(e) => Err(RegisterError::Storage(e.to_string())),
        }
    }

    /// Checks a user name and password, the bcrypt work queued as `from`'s. Returns the
    /// canonical user name.
    pub(super) fn login(
        &self,
        user: &str,
        password: &str,
        from: AddressPrefix,
    ) -> Result<UserName, LoginError> {
        let user = UserName::parse(user).ok();
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
            .run(from, move || {
                bcrypt::verify(attempt, &hash).unwrap_or(false)
            })
            .map_err(|e| match e {
                HashError::Busy(busy) => LoginError::Busy(busy),
                HashError::Failed(e) => LoginError::Storage(e),
            })?;
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

/// A job for the hashing pool: runs the work and returns what hands its result to the
/// caller. The two are apart so that the worker can give the job's slot back in between:
/// a caller that has its result can queue its next job at once.
type HashJob = Box<dyn FnOnce() -> Delivery + Send>;

/// Hands a finished job's result to its caller.
type Delivery = Box<dyn FnOnce() + Send>;

/// How much work the hashing pool takes on.
#[derive(Debug, Clone, Copy)]
struct QueueBounds {
    /// Worker threads: bcrypt computations at once.
    workers: usize,
    /// Jobs one prefix may have queued or running (0 = no limit).
    per_prefix: usize,
    /// Jobs that may wait for a worker in all (0 = no limit).
    queued: usize,
}

/// Worker threads that run bcrypt at low priority, fed by a bounded queue that serves
/// address prefixes in turn.
///
/// Bounding the workers bounds the CPU a storm of logins can take; `SCHED_IDLE` makes the
/// scheduler run them only when chat threads leave a core idle (measured: a storm of 100
/// logins at cost 12 raised the p99 latency of 5,000 msgs/s of chat 1.6x with SCHED_IDLE,
/// 2.8x at nice 10). Under a full flood they still get a sliver of CPU, so logins slow
/// down rather than stop.
///
/// Fairness: jobs wait in one queue per [`AddressPrefix`], and the workers take the
/// oldest job of each prefix in turn (round robin), so a job waits behind at most one
/// job per other prefix, however many those prefixes sent. With a few jobs per prefix
/// and a bound on the whole queue, memory and waiting stay bounded, and what does not fit
/// is refused at once ([`Busy`]), never left to wait without end.
struct HashPool {
    /// The queue, shared with the workers.
    queue: Arc<FairQueue>,
}

/// The pool's queue: the state behind its lock and the workers' wake-up call.
struct FairQueue {
    /// What is queued and running; held only to add or take a job, never while one runs.
    state: Mutex<QueueState>,
    /// Signalled when a job is queued or the pool stops.
    ready: Condvar,
    /// How much the pool takes on.
    bounds: QueueBounds,
}

/// The queue's contents.
///
/// Invariants (kept by [`HashPool::submit`] and [`FairQueue::next_job`]): a prefix is in
/// `turns` exactly once when it has jobs in `waiting`, and not at all otherwise; `waiting`
/// has no empty queues; `queued` is the number of jobs in `waiting`; `in_flight` counts
/// each prefix's jobs waiting or running and has no zero entries.
struct QueueState {
    /// Jobs waiting for a worker, per prefix, each in arrival order.
    waiting: HashMap<AddressPrefix, VecDeque<HashJob>>,
    /// Prefixes with waiting jobs, in the order the workers will serve them.
    turns: VecDeque<AddressPrefix>,
    /// Jobs waiting or running per prefix.
    in_flight: HashMap<AddressPrefix, usize>,
    /// Jobs waiting in all.
    queued: usize,
    /// Recent time one job takes (a moving average), to tell refused clients when to
    /// retry.
    job_time: Duration,
    /// Set when the pool is dropped: the workers finish what is queued and exit.
    stopped: bool,
}

/// Scheduling priority of bcrypt workers where `SCHED_IDLE` is not available.
const HASH_WORKER_NICE: libc::c_int = 19;

/// The shortest retry time given to a refused client: sooner would only be refused again.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

impl HashPool {
    /// Starts `bounds.workers` workers. `job_time` is a first estimate of one job's time.
    fn new(bounds: QueueBounds, job_time: Duration) -> Result<HashPool> {
        let queue = Arc::new(FairQueue {
            state: Mutex::new(QueueState {
                waiting: HashMap::new(),
                turns: VecDeque::new(),
                in_flight: HashMap::new(),
                queued: 0,
                job_time,
                stopped: false,
            }),
            ready: Condvar::new(),
            bounds,
        });
        for i in 0..bounds.workers.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    queue.work();
                })?;
        }
        Ok(HashPool { queue })
    }

    /// Runs `work` on a worker as `from`'s job and waits for its result.
    fn run<T: Send + 'static>(
        &self,
        from: AddressPrefix,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        self.submit(from, work)?
            .recv()
            .map_err(|_| HashError::Failed("a password worker failed".to_owned()))
    }

    /// Queues `work` as `from`'s job, or refuses it at once; the result arrives on the
    /// returned channel.
    fn submit<T: Send + 'static>(
        &self,
        from: AddressPrefix,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<crossbeam_channel::Receiver<T>, HashError> {
        let bounds = self.queue.bounds;
        let mut state = self.queue.lock();
        if state.stopped {
            return Err(HashError::Failed(
                "the password workers have stopped".to_owned(),
            ));
        }
        let retry_after = state.drain_time(bounds.workers);
        let mine = state.in_flight.get(&from).copied().unwrap_or(0);
        if bounds.per_prefix > 0 && mine >= bounds.per_prefix {
            return Err(HashError::Busy(Busy::Network { retry_after }));
        }
        if bounds.queued > 0 && state.queued >= bounds.queued {
            return Err(HashError::Busy(Busy::Server { retry_after }));
        }
        let (reply, result) = crossbeam_channel::bounded(1);
        let job: HashJob = Box::new(move || {
            // A panicking job (a bug) loses its result, not the worker or the count.
            let result = panic::catch_unwind(AssertUnwindSafe(work));
            Box::new(move || {
                if let Ok(result) = result {
                    // The caller may have gone; then nobody needs the result.
                    let _ = reply.send(result);
                }
            })
        });
        let waiting = state.waiting.entry(from).or_default();
        waiting.push_back(job);
        if waiting.len() == 1 {
            state.turns.push_back(from);
        }
        state.queued += 1;
        *state.in_flight.entry(from).or_default() += 1;
        drop(state);
        self.queue.ready.notify_one();
        Ok(result)
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        self.queue.lock().stopped = true;
        self.queue.ready.notify_all();
    }
}

impl FairQueue {
    /// A worker's life: take the next job in turn, run it, count it done; until the pool
    /// stops and nothing is left.
    fn work(&self) {
        while let Some((from, job)) = self.next_job() {
            let started = Instant::now();
            let deliver = job();
            let took = started.elapsed();
            let mut state = self.lock();
            state.job_time = (state.job_time * 7 + took) / 8;
            if let Some(n) = state.in_flight.get_mut(&from) {
                *n -= 1;
                if *n == 0 {
                    state.in_flight.remove(&from);
                }
            }
            drop(state);
            deliver();
        }
    }

    /// Waits for a job and takes the oldest one of the prefix whose turn it is; that
    /// prefix goes to the back of the line if it has more. `None` once the pool has
    /// stopped and nothing is queued.
    fn next_job(&self) -> Option<(AddressPrefix, HashJob)> {
        let mut state = self.lock();
        loop {
            if let Some(from) = state.turns.pop_front() {
                // A prefix in `turns` has a job waiting (the invariant); if not, skip it.
                let Some(waiting) = state.waiting.get_mut(&from) else {
                    continue;
                };
                let Some(job) = waiting.pop_front() else {
                    state.waiting.remove(&from);
                    continue;
                };
                if waiting.is_empty() {
                    state.waiting.remove(&from);
                } else {
                    state.turns.push_back(from);
                }
                state.queued -= 1;
                return Some((from, job));
            }
            if state.stopped {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl QueueState {
    /// About how long until the queue has drained (at least [`MIN_RETRY_AFTER`]).
    fn drain_time(&self, workers: usize) -> Duration {
        let rounds = u32::try_from(self.queued / workers.max(1) + 1).unwrap_or(u32::MAX);
        self.job_time.saturating_mul(rounds).max(MIN_RETRY_AFTER)
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

    /// The prefix of `127.0.<n>.1`: a different prefix for each `n`.
    fn net(n: u8) -> AddressPrefix {
        AddressPrefix::of(std::net::IpAddr::from([127, 0, n, 1]))
    }

    fn accounts() -> (tempfile::TempDir, Accounts) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::server::store::SqliteStore::open(&dir.path().join("data")).unwrap();
        (
            dir,
            Accounts::new(Arc::new(store), 4, 2, &ThrottlePolicy::default()).unwrap(),
        )
    }

    #[test]
    fn register_then_login() {
        let (_dir, accounts) = accounts();
        assert_eq!(
            accounts
                .register("Alice", "Sturdy pass 1", net(0), || Ok(()))
                .unwrap()
                .as_str(),
            "alice"
        );
        assert_eq!(
            accounts
                .login("ALICE", "Sturdy pass 1", net(0))
                .unwrap()
                .as_str(),
            "alice"
        );
        assert_eq!(
            accounts.login("alice", "Sturdy pass 2", net(0)),
            Err(LoginError::Invalid)
        );
        assert_eq!(
            accounts.login("nobody", "Sturdy pass 1", net(0)),
            Err(LoginError::Invalid)
        );
        assert_eq!(
            accounts.login("x!", "Sturdy pass 1", net(0)),
            Err(LoginError::Invalid)
        );
        assert_eq!(
            accounts.login("alice", "", net(0)),
            Err(LoginError::Invalid)
        );
        assert_eq!(
            accounts.register("alice", "Sturdy pass 1", net(0), || Ok(())),
            Err(RegisterError::Exists)
        );
    }

    #[test]
    fn only_a_bcrypt_hash_is_stored() {
        let (_dir, accounts) = accounts();
        accounts
            .register("carol", "Sturdy pass 1", net(0), || Ok(()))
            .unwrap();
        let hash = accounts
            .store()
            .password_hash(&UserName::parse("carol").unwrap())
            .unwrap()
            .unwrap();
        assert!(hash.starts_with("$2b$04$"), "{hash}");
        assert!(!hash.contains("Sturdy"));
    }

    #[test]
    fn the_pool_bounds_concurrency_and_runs_at_low_priority() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        use std::sync::Arc;
        let unbounded = QueueBounds {
            workers: 2,
            per_prefix: 0,
            queued: 0,
        };
        let pool = Arc::new(HashPool::new(unbounded, Duration::ZERO).unwrap());
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
                    pool.run(net(0), move || {
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

    /// A pool with one worker, kept busy by a job of `net(0)` until the returned sender
    /// is dropped.
    fn one_busy_worker(
        per_prefix: usize,
        queued: usize,
    ) -> (HashPool, crossbeam_channel::Sender<()>) {
        let bounds = QueueBounds {
            workers: 1,
            per_prefix,
            queued,
        };
        let pool = HashPool::new(bounds, Duration::ZERO).unwrap();
        let (release, gate) = crossbeam_channel::bounded::<()>(0);
        let (started, running) = crossbeam_channel::bounded(1);
        let _ = pool
            .submit(net(0), move || {
                let _ = started.send(());
                let _ = gate.recv();
            })
            .unwrap();
        running.recv().unwrap();
        (pool, release)
    }

    #[test]
    fn prefixes_take_turns_so_a_late_one_waits_behind_one_job_of_each_other() {
        let (pool, release) = one_busy_worker(0, 0);
        let order = Arc::new(Mutex::new(Vec::new()));
        let job = |n: u8, i: u8| {
            let order = order.clone();
            pool.submit(net(n), move || order.lock().unwrap().push((n, i)))
                .unwrap()
        };
        let mut done = Vec::new();
        // A flood from two networks is queued first...
        for i in 0..4 {
            done.push(job(1, i));
            done.push(job(2, i));
        }
        // ...then one honest job from a third.
        done.push(job(3, 0));
        drop(release);
        for result in done {
            result.recv().unwrap();
        }
        let order = order.lock().unwrap();
        let honest = order.iter().position(|&job| job == (3, 0)).unwrap();
        assert_eq!(
            honest, 2,
            "served after one job per other prefix: {order:?}"
        );
        // Each prefix's own jobs stay in arrival order.
        let ones: Vec<u8> = order.iter().filter(|j| j.0 == 1).map(|j| j.1).collect();
        assert_eq!(ones, [0, 1, 2, 3]);
    }

    #[test]
    fn a_prefix_may_have_only_a_few_jobs_queued_or_running() {
        let (pool, release) = one_busy_worker(2, 0);
        // net(0) has one running: one more may wait, not two.
        let second = pool.submit(net(0), || ()).unwrap();
        match pool.submit(net(0), || ()) {
            Err(HashError::Busy(Busy::Network { retry_after })) => {
                assert!(retry_after >= MIN_RETRY_AFTER)
            }
            other => panic!("expected busy, got {other:?}"),
        }
        // Other prefixes are not affected.
        let other = pool.submit(net(1), || ()).unwrap();
        drop(release);
        second.recv().unwrap();
        other.recv().unwrap();
        // Finished jobs give their slots back.
        assert!(pool.run(net(0), || ()).is_ok());
        assert!(pool.queue.lock().in_flight.is_empty());
    }

    #[test]
    fn a_full_queue_refuses_at_once_with_a_time_to_retry() {
        let (pool, release) = one_busy_worker(0, 3);
        let waiting: Vec<_> = (1..=3)
            .map(|n| pool.submit(net(n), || ()).unwrap())
            .collect();
        match pool.submit(net(4), || ()) {
            Err(HashError::Busy(Busy::Server { retry_after })) => {
                assert!(retry_after >= MIN_RETRY_AFTER)
            }
            other => panic!("expected busy, got {other:?}"),
        }
        drop(release);
        for result in waiting {
            result.recv().unwrap();
        }
        assert!(pool.run(net(4), || ()).is_ok());
    }

    #[test]
    fn a_job_that_panics_loses_its_result_but_not_its_worker_or_slot() {
        let bounds = QueueBounds {
            workers: 1,
            per_prefix: 1,
            queued: 0,
        };
        let pool = HashPool::new(bounds, Duration::ZERO).unwrap();
        let failed = pool.run(net(0), || -> u8 { panic!("a bug") });
        assert!(matches!(failed, Err(HashError::Failed(_))), "{failed:?}");
        assert_eq!(pool.run(net(0), || 7).unwrap(), 7);
    }
}
