//! A client's outbound queue: bounded in bytes, allocated only while in use.
//!
//! IRC servers bound each client's "SendQ" in bytes, and so does securechat: a client that
//! stops reading fills its queue and is disconnected, and nobody else waits for it. The
//! queue is a crossbeam *unbounded* channel (a linked list of small blocks that exist only
//! while messages are queued) plus a shared byte counter; `bounded(n)` would allocate its
//! whole ring up front, costing every idle connection tens of kilobytes.
//!
//! Producers (the router, and the client's own reader before login) call [`Outbox::push`];
//! the client's writer thread is the only consumer ([`OutboxReceiver`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::connection::TlsStream;

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

/// What the writer thread is asked to do.
#[derive(Debug)]
pub enum Outgoing {
    /// Send this frame.
    Line(Line),
    /// Send what is queued before this, say goodbye (TLS `close_notify`) and close.
    Close,
}

/// The queue was over its byte limit; the line was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    /// Bytes waiting in the queue when the push was refused.
    pub queued: usize,
}

/// The producing side of a client's queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    /// Where frames go.
    tx: Sender<Outgoing>,
    /// Bytes queued and not yet taken by the writer. Shared with the receiver.
    queued: Arc<AtomicUsize>,
    /// The byte bound: a push that would exceed it is refused.
    limit: usize,
    /// The connection, so that a client can be evicted even when its writer is blocked on
    /// a socket that is not being read.
    stream: Arc<TlsStream>,
}

/// The consuming side, owned by the writer thread.
pub struct OutboxReceiver {
    /// Where frames come from.
    rx: Receiver<Outgoing>,
    /// Shared with the producers; decremented as frames are taken.
    queued: Arc<AtomicUsize>,
}

/// A queue for one client holding at most `limit` bytes.
pub fn outbox(limit: usize, stream: Arc<TlsStream>) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            tx,
            queued: queued.clone(),
            limit,
            stream,
        },
        OutboxReceiver { rx, queued },
    )
}

impl Outbox {
    /// Queues a frame unless the queue is over its byte limit. Never blocks.
    pub fn push(&self, line: Line) -> Result<(), QueueFull> {
        let len = line.as_bytes().len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before + len > self.limit {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return Err(QueueFull { queued: before });
        }
        if self.tx.send(Outgoing::Line(line)).is_err() {
            // The writer has gone; the connection is closing anyway.
            self.queued.fetch_sub(len, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Asks the writer to send what is queued and close the connection. The close request
    /// itself ignores the byte limit.
    pub fn close(&self) {
        let _ = self.tx.send(Outgoing::Close);
    }

    /// Closes at once, dropping whatever is queued: the socket is shut down, which also
    /// unblocks a writer stuck on a peer that stopped reading. Never blocks.
    pub fn evict(&self) {
        self.close();
        self.stream.shutdown_socket();
    }

    /// Bytes currently queued.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

impl OutboxReceiver {
    /// Waits for the next item; `None` when every producer is gone.
    pub fn recv(&self) -> Option<Outgoing> {
        let item = self.rx.recv().ok()?;
        self.taken(&item);
        Some(item)
    }

    /// The next item if one is waiting.
    pub fn try_recv(&self) -> Option<Outgoing> {
        match self.rx.try_recv() {
            Ok(item) => {
                self.taken(&item);
                Some(item)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    fn taken(&self, item: &Outgoing) {
        if let Outgoing::Line(line) = item {
            self.queued
                .fetch_sub(line.as_bytes().len(), Ordering::Relaxed);
        }
    }
}
