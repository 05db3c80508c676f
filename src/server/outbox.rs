//! A client's outbound queue: bounded in bytes, allocated only while in use.
//!
//! IRC servers bound each client's "SendQ" in bytes, and so does securechat: a client that
//! stops reading fills its queue and is disconnected, and nobody else waits for it. The
//! queue is a `VecDeque` behind a mutex, with a byte count: it holds no memory while empty
//! (an idle connection, the common case), grows only while frames wait, and the writer
//! takes everything waiting in one lock to send it as one TLS write. (A crossbeam
//! `bounded(n)` channel would allocate its whole ring up front, costing every idle
//! connection tens of kilobytes.)
//!
//! Producers (the router; the client's own reader before login and when it ends; the
//! server's shutdown) call [`Outbox::push`]; the client's writer thread is the only consumer
//! ([`OutboxReceiver`]). The mutex is held only to move frames in or out, never across a
//! socket call. The byte bound counts what waits in the queue, not the batch the writer
//! has taken and is sending, so a client can have up to about twice the limit in flight
//! on the server: a bound still, and what keeps the writer's lock hold short.
//!
//! [`Outbox::push_or_write`] is the router's short cut when it is lightly loaded: if the
//! writer is asleep with nothing queued, the router claims the socket (never waiting) and
//! writes the frame itself without blocking, so the frame crosses one thread hand-off
//! fewer. Order holds because the claim is taken while the queue is locked and empty: a
//! frame queued after it is written by the writer, which must wait for the claim.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::tls::stream::{TlsStream, WriteNow};

/// Bytes of one outgoing frame (a complete line, with its `\n`).
#[derive(Debug, Clone)]
pub enum Line {
    /// A frame for one recipient.
    Owned(Vec<u8>),
    /// A frame sent to many recipients (a room message), built once.
    Shared(Arc<[u8]>),
}

impl Line {
    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Line::Owned(bytes) => bytes,
            Line::Shared(bytes) => bytes,
        }
    }
}

impl From<String> for Line {
    fn from(s: String) -> Line {
        Line::Owned(s.into_bytes())
    }
}

/// The queue was over its byte limit; the line was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    /// Bytes waiting in the queue when the push was refused.
    pub queued: usize,
}

/// The queue proper, behind the mutex.
#[derive(Default)]
struct Queue {
    /// Frames waiting for the writer, oldest first.
    lines: VecDeque<Line>,
    /// Bytes in `lines`.
    bytes: usize,
    /// Set by `close`: the writer sends what is queued, then closes the connection.
    closing: bool,
    /// Live `Outbox` handles; when none is left the writer ends too.
    producers: usize,
    /// The writer is asleep waiting for frames (so a push must wake it).
    writer_waiting: bool,
    /// A write by `push_or_write` left TLS records in the stream: the writer must wake
    /// and send them even though no frame is queued.
    unsent_records: bool,
    /// The writer has ended; pushes are dropped.
    writer_gone: bool,
}

/// State shared by the producers and the writer.
struct Shared {
    /// The frames and flags.
    queue: Mutex<Queue>,
    /// Wakes the writer when frames arrive or the queue closes.
    ready: Condvar,
    /// Wakes a closing reader when the writer has ended.
    writer_ended: Condvar,
    /// The byte bound: a push that would exceed it is refused.
    limit: usize,
    /// The connection, so that a client can be evicted even when its writer is blocked on
    /// a socket that is not being read.
    stream: Arc<TlsStream>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What [`Outbox::push_or_write`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the socket at once.
    Written,
    /// Written in part (the socket filled); the writer sends the rest.
    WrittenInPart,
    /// Queued for the writer, as [`Outbox::push`] does.
    Queued,
}

/// The producing side of a client's queue. Cheap to clone.
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The consuming side, owned by the writer thread.
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

/// A queue for one client holding at most `limit` bytes.
pub fn outbox(limit: usize, stream: Arc<TlsStream>) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            producers: 1,
            ..Queue::default()
        }),
        ready: Condvar::new(),
        writer_ended: Condvar::new(),
        limit,
        stream,
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        OutboxReceiver { shared },
    )
}

impl Outbox {
    /// Queues a frame unless the queue is over its byte limit. Never blocks on the
    /// network (only, briefly, on the queue's own lock).
    pub fn push(&self, line: Line) -> Result<(), QueueFull> {
        self.push_locked(self.shared.lock(), line)
    }

    /// Writes the frame to the socket at once if the writer is idle and nobody holds the
    /// socket, with a non-blocking write; otherwise queues it like [`Outbox::push`]. Never
    /// blocks on the network. Costs the caller the encryption and one `send` call, so it
    /// suits a caller with time to spare (the router when few requests wait).
    pub fn push_or_write(&self, line: Line) -> Result<Delivery, QueueFull> {
        let queue = self.shared.lock();
        let idle = queue.writer_waiting && queue.lines.is_empty() && !queue.closing;
        let Some(claim) = idle.then(|| self.shared.stream.try_claim()).flatten() else {
            return self.push_locked(queue, line).map(|()| Delivery::Queued);
        };
        // The claim is held: a frame pushed from here on is written after this one.
        drop(queue);
        match claim.write_now(line.as_bytes()) {
            Ok(WriteNow::Sent) => Ok(Delivery::Written),
            Ok(WriteNow::LeftUnsent) => {
                let mut queue = self.shared.lock();
                queue.unsent_records = true;
                let wake = std::mem::take(&mut queue.writer_waiting);
                drop(queue);
                if wake {
                    self.shared.ready.notify_one();
                }
                Ok(Delivery::WrittenInPart)
            }
            // rustls refused the plaintext: the writer meets the same error and ends the
            // connection.
            Err(_) => self.push(line).map(|()| Delivery::Queued),
        }
    }

    /// [`Outbox::push`] with the queue already locked.
    fn push_locked(&self, mut queue: MutexGuard<'_, Queue>, line: Line) -> Result<(), QueueFull> {
        let len = line.as_bytes().len();
        if queue.writer_gone {
            // The connection is closing; nobody will send this.
            return Ok(());
        }
        if queue.bytes + len > self.shared.limit {
            return Err(QueueFull {
                queued: queue.bytes,
            });
        }
        queue.lines.push_back(line);
        queue.bytes += len;
        // Whoever wakes the writer clears the flag, so the pushes that follow before the
        // writer runs do not make one futex call each.
        let wake = std::mem::take(&mut queue.writer_waiting);
        drop(queue);
        if wake {
            self.shared.ready.notify_one();
        }
        Ok(())
    }

    /// Asks the writer to send what is queued and close the connection. The close request
    /// itself ignores the byte limit.
    pub fn close(&self) {
        let mut queue = self.shared.lock();
        queue.closing = true;
        queue.writer_waiting = false;
        drop(queue);
        self.shared.ready.notify_one();
    }

    /// Closes at once, dropping whatever is queued: the socket is shut down, which also
    /// unblocks a writer stuck on a peer that stopped reading. Never blocks.
    pub fn evict(&self) {
        self.close();
        self.shared.stream.shutdown_socket();
    }

    /// Waits at most `timeout` for the writer thread to finish; `false` if it has not.
    pub fn wait_writer_gone(&self, timeout: std::time::Duration) -> bool {
        let queue = self.shared.lock();
        let (queue, _) = self
            .shared
            .writer_ended
            .wait_timeout_while(queue, timeout, |q| !q.writer_gone)
            .unwrap_or_else(PoisonError::into_inner);
        queue.writer_gone
    }

    /// Bytes currently queued.
    pub fn queued(&self) -> usize {
        self.shared.lock().bytes
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Outbox {
        self.shared.lock().producers += 1;
        Outbox {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.producers -= 1;
        if queue.producers == 0 {
            drop(queue);
            self.shared.ready.notify_one();
        }
    }
}

impl OutboxReceiver {
    /// Waits until frames are queued (or records left by `push_or_write` wait in the
    /// stream, or the queue is closing), then moves every queued frame into `batch`, which
    /// must be empty: an empty batch still calls for a write. Returns `false` once there
    /// will be nothing more after this batch: `close` was called, or every producer is gone.
    pub fn take(&self, batch: &mut VecDeque<Line>) -> bool {
        let mut queue = self.shared.lock();
        while queue.lines.is_empty()
            && !queue.unsent_records
            && !queue.closing
            && queue.producers > 0
        {
            queue.writer_waiting = true;
            queue = self
                .shared
                .ready
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
        queue.writer_waiting = false;
        queue.unsent_records = false;
        std::mem::swap(&mut queue.lines, batch);
        queue.bytes = 0;
        !queue.closing && queue.producers > 0
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.writer_gone = true;
        queue.lines = VecDeque::new();
        queue.bytes = 0;
        drop(queue);
        self.shared.writer_ended.notify_all();
    }
}
