//! Locks that survive a panic elsewhere: the one place the crate decides what a poisoned
//! mutex means.
//!
//! A mutex is poisoned when a thread panicked while holding it. Every lock in this crate
//! guards state that stays consistent between statements (a queue and its byte count are
//! updated together before any call that can panic), and a panic ends only the connection
//! it happened on; so the state is taken as it is, and the other threads carry on.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Locks `mutex`, ignoring poisoning (see the module comment).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cond` with `guard`'s lock, ignoring poisoning.
pub(crate) fn wait<'a, T>(cond: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cond.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cond` while `condition` holds, for at most `timeout`, ignoring poisoning.
pub(crate) fn wait_timeout_while<'a, T>(
    cond: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
    condition: impl FnMut(&mut T) -> bool,
) -> MutexGuard<'a, T> {
    cond.wait_timeout_while(guard, timeout, condition)
        .unwrap_or_else(PoisonError::into_inner)
        .0
}
