//! An in-memory [`ClientSocket`] for unit tests of the outbox and the router: it keeps
//! what was written, in order, and counts the writes that went through a claim (the
//! router's short cut), so tests can check both what arrived and which path it took.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::outbox::{ClientSocket, SocketClaim};
use crate::error::Result;
use crate::tls::stream::WriteNow;

/// A socket that always takes everything.
#[derive(Default)]
pub(super) struct MemorySocket {
    /// Every byte written, in the order the socket took them.
    written: Mutex<Vec<u8>>,
    /// Held by a claim, as the real stream's unsent-records lock is.
    claim: Mutex<()>,
    /// Writes made through a claim.
    claimed_writes: AtomicUsize,
    /// `close` was called (the writer ended politely).
    closed: AtomicBool,
    /// `shutdown_socket` was called (the client was cut off).
    shut_down: AtomicBool,
}

impl MemorySocket {
    /// The frames written so far, as text.
    pub(super) fn frames(&self) -> Vec<String> {
        String::from_utf8_lossy(&crate::sync::lock(&self.written))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How many frames went through a claim.
    pub(super) fn claimed_writes(&self) -> usize {
        self.claimed_writes.load(Ordering::SeqCst)
    }

    /// Whether the writer ended the connection politely.
    pub(super) fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Whether the client was cut off.
    pub(super) fn shut_down(&self) -> bool {
        self.shut_down.load(Ordering::SeqCst)
    }
}

/// A claim on a [`MemorySocket`].
pub(super) struct MemoryClaim<'a> {
    /// The socket claimed.
    socket: &'a MemorySocket,
    /// Held until the write is done.
    _held: MutexGuard<'a, ()>,
}

impl ClientSocket for MemorySocket {
    type Claim<'a> = MemoryClaim<'a>;

    fn try_claim(&self) -> Option<MemoryClaim<'_>> {
        let held = self.claim.try_lock().ok()?;
        Some(MemoryClaim {
            socket: self,
            _held: held,
        })
    }

    fn send(&self, plaintext: &[u8], _scratch: &mut Vec<u8>) -> Result<()> {
        let _held = crate::sync::lock(&self.claim);
        // A real write takes a while; frames that arrive meanwhile must queue behind it.
        std::thread::sleep(std::time::Duration::from_micros(200));
        crate::sync::lock(&self.written).extend_from_slice(plaintext);
        Ok(())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn shutdown_socket(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
    }
}

impl SocketClaim for MemoryClaim<'_> {
    fn write_now(self, plaintext: &[u8]) -> Result<WriteNow> {
        crate::sync::lock(&self.socket.written).extend_from_slice(plaintext);
        self.socket.claimed_writes.fetch_add(1, Ordering::SeqCst);
        Ok(WriteNow::Sent)
    }
}
