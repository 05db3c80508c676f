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
//! The queue has two parts. The *priority* part holds replies, private messages and
//! notices: nothing in it is ever dropped, and a client whose priority part is over its
//! byte bound has stopped reading and is disconnected. The *room* part holds room lines,
//! and is small: a room line that does not fit is skipped (counted, not queued), so a
//! client that reads more slowly than the room talks loses room lines, never its
//! connection. When the writer next takes the queue it sends the room lines that did fit,
//! then `SKIPPED <n>`, so the client knows where the gap is. The writer sends the priority
//! part of each take first: order holds within each part, not between them (a private
//! message may overtake a room line, which nothing relies on).
//!
//! [`Outbox::push_or_write`] is the router's short cut when it is lightly loaded: if the
//! writer is asleep with nothing queued, the router claims the socket (never waiting) and
//! writes the frame itself without blocking, so the frame crosses one thread hand-off
//! fewer. Order holds because the claim is taken while the queue is locked and empty: a
//! frame queued after it is written by the writer, which must wait for the claim.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::Result;
use crate::protocol::ServerLine;
use crate::sync;
use crate::tls::stream::{TlsStream, WriteClaim, WriteNow};

/// What an outbox and its writer need of the client's socket. [`TlsStream`] is the real
/// one; the router's and the outbox's unit tests use an in-memory socket, so the
/// concurrency core is tested without TLS.
pub(super) trait ClientSocket: Send + Sync + 'static {
    /// The right to write now, held by [`ClientSocket::try_claim`]'s caller; whoever writes
    /// after it waits until it is used.
    type Claim<'a>: SocketClaim
    where
        Self: 'a;

    /// Takes the socket if nobody holds it and no bytes of an earlier write wait; never
    /// waits.
    fn try_claim(&self) -> Option<Self::Claim<'_>>;

    /// Sends `plaintext` (the writer's blocking write), bytes left by a claim first.
    fn send(&self, plaintext: &[u8], scratch: &mut Vec<u8>) -> Result<()>;

    /// Ends the connection politely (a TLS goodbye) after what was sent.
    fn close(&self);

    /// Shuts the socket down at once, waking a writer blocked on it.
    fn shutdown_socket(&self);
}

/// A claimed socket: one non-blocking write.
pub(super) trait SocketClaim {
    /// Writes without blocking; what the socket does not take waits for the next `send`.
    fn write_now(self, plaintext: &[u8]) -> Result<WriteNow>;
}

impl ClientSocket for TlsStream {
    type Claim<'a> = WriteClaim<'a>;

    fn try_claim(&self) -> Option<WriteClaim<'_>> {
        TlsStream::try_claim(self)
    }

    fn send(&self, plaintext: &[u8], scratch: &mut Vec<u8>) -> Result<()> {
        TlsStream::send(self, plaintext, scratch)
    }

    fn close(&self) {
        TlsStream::close(self);
    }

    fn shutdown_socket(&self) {
        TlsStream::shutdown_socket(self);
    }
}

impl SocketClaim for WriteClaim<'_> {
    fn write_now(self, plaintext: &[u8]) -> Result<WriteNow> {
        WriteClaim::write_now(self, plaintext)
    }
}

/// Plaintext at which the writer stops packing and writes: a batch is at least this (or
/// everything queued) and at most this plus one frame. 16 KiB is one full TLS record.
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// Bytes of one outgoing frame (a complete line, with its `\n`).
#[derive(Debug, Clone)]
pub(super) enum Line {
    /// A frame for one recipient.
    Owned(Vec<u8>),
    /// A frame sent to many recipients (a room message), built once.
    Shared(Arc<[u8]>),
}

impl Line {
    /// The frame's bytes.
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Line::Owned(bytes) => bytes,
            Line::Shared(bytes) => bytes,
        }
    }
}

impl From<&ServerLine> for Line {
    fn from(line: &ServerLine) -> Line {
        Line::Owned(line.encode())
    }
}

/// A frame that ends with free text (a `ROOM` or `HISTORY` line), built once and shared
/// by its recipients, which knows where that text begins: the history stores the text of
/// room lines without parsing frames the server wrote itself.
#[derive(Debug, Clone)]
pub(super) struct TextFrame {
    /// The frame, with its `\n`.
    bytes: Arc<[u8]>,
    /// Where the text begins in `bytes`; it ends before the `\n`.
    text_at: usize,
}

impl TextFrame {
    /// The frame `write` appends, which ends with `text` and the line ending, as the
    /// `protocol::write_*` functions of frames that end in text do (an empty text is
    /// left out with the space before it, which leaves it empty here too).
    pub(super) fn new(text: &str, write: impl FnOnce(&mut Vec<u8>)) -> TextFrame {
        let mut bytes = Vec::new();
        write(&mut bytes);
        TextFrame {
            text_at: bytes.len().saturating_sub(text.len() + 1),
            bytes: Arc::from(bytes),
        }
    }

    /// The frame's length in bytes, line ending included.
    pub(super) fn size(&self) -> usize {
        self.bytes.len()
    }

    /// The frame, shared.
    pub(super) fn line(&self) -> Line {
        Line::Shared(self.bytes.clone())
    }

    /// The text the frame ends with.
    pub(super) fn text(&self) -> &str {
        let end = self.bytes.len().saturating_sub(1);
        // Cut at the boundaries of the `&str` it was built from.
        std::str::from_utf8(&self.bytes[self.text_at..end]).unwrap_or_default()
    }
}

/// The queue was over its byte limit; the line was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QueueFull {
    /// Bytes waiting in the queue when the push was refused.
    pub queued: usize,
}

/// The queue proper, behind the mutex.
#[derive(Default)]
struct Queue {
    /// Frames of the priority part waiting for the writer, oldest first.
    lines: VecDeque<Line>,
    /// Bytes in `lines`.
    bytes: usize,
    /// The priority part's byte bound: small before login, larger after (see
    /// [`Outbox::set_limit`]).
    limit: usize,
    /// Room lines waiting for the writer, oldest first.
    room: VecDeque<Line>,
    /// Bytes in `room`; never over the room part's bound.
    room_bytes: usize,
    /// Room lines skipped since the writer last took the queue; told to the client as
    /// `SKIPPED <n>` after the room lines that were kept.
    skipped: u64,
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
struct QueueState<S> {
    /// The frames and flags.
    queue: Mutex<Queue>,
    /// Wakes the writer when frames arrive or the queue closes.
    ready: Condvar,
    /// Wakes a closing reader when the writer has ended.
    writer_ended: Condvar,
    /// The room part's byte bound: a room line that would exceed it is skipped.
    room_limit: usize,
    /// The connection, so that a client can be evicted even when its writer is blocked on
    /// a socket that is not being read.
    stream: Arc<S>,
}

impl<S> QueueState<S> {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        sync::lock(&self.queue)
    }
}

/// What [`Outbox::push_or_write`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// Written to the socket at once.
    Written,
    /// Written in part (the socket filled); the writer sends the rest.
    WrittenInPart,
    /// Queued for the writer, as [`Outbox::push`] does.
    Queued,
}

/// The producing side of a client's queue. Cheap to clone.
pub(super) struct Outbox<S = TlsStream> {
    /// The queue, shared with the writer.
    state: Arc<QueueState<S>>,
}

/// The consuming side, owned by the writer thread.
pub(super) struct OutboxReceiver<S = TlsStream> {
    /// The queue, shared with the producers.
    state: Arc<QueueState<S>>,
}

/// A queue for one client whose priority part holds at most `limit` bytes and its room
/// part at most `room_limit`.
pub(super) fn outbox<S: ClientSocket>(
    limit: usize,
    room_limit: usize,
    stream: Arc<S>,
) -> (Outbox<S>, OutboxReceiver<S>) {
    let shared = Arc::new(QueueState {
        queue: Mutex::new(Queue {
            producers: 1,
            limit,
            ..Queue::default()
        }),
        ready: Condvar::new(),
        writer_ended: Condvar::new(),
        room_limit,
        stream,
    });
    (
        Outbox {
            state: shared.clone(),
        },
        OutboxReceiver { state: shared },
    )
}

impl<S: ClientSocket> Outbox<S> {
    /// Queues a frame unless the queue is over its byte limit. Never blocks on the
    /// network (only, briefly, on the queue's own lock).
    pub(super) fn push(&self, line: Line) -> Result<(), QueueFull> {
        self.push_locked(self.state.lock(), line)
    }

    /// Writes the frame to the socket at once if the writer is idle and nobody holds the
    /// socket, with a non-blocking write; otherwise queues it like [`Outbox::push`]. Never
    /// blocks on the network. Costs the caller the encryption and one `send` call, so it
    /// suits a caller with time to spare (the router when few requests wait).
    pub(super) fn push_or_write(&self, line: Line) -> Result<Delivery, QueueFull> {
        let queue = self.state.lock();
        let idle = queue.writer_waiting
            && queue.lines.is_empty()
            && queue.room.is_empty()
            && !queue.closing;
        let Some(claim) = idle.then(|| self.state.stream.try_claim()).flatten() else {
            return self.push_locked(queue, line).map(|()| Delivery::Queued);
        };
        // The claim is held: a frame pushed from here on is written after this one.
        drop(queue);
        match claim.write_now(line.as_bytes()) {
            Ok(WriteNow::Sent) => Ok(Delivery::Written),
            Ok(WriteNow::LeftUnsent) => {
                let mut queue = self.state.lock();
                queue.unsent_records = true;
                let wake = std::mem::take(&mut queue.writer_waiting);
                drop(queue);
                if wake {
                    self.state.ready.notify_one();
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
        if queue.bytes + len > queue.limit {
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
            self.state.ready.notify_one();
        }
        Ok(())
    }

    /// Queues a room line in the room part, or skips it (counted, for the `SKIPPED` notice)
    /// when that part is over its bound: a slow reader loses room lines, not its
    /// connection. Returns whether the line was queued.
    pub(super) fn push_room(&self, line: Line) -> bool {
        let mut queue = self.state.lock();
        if queue.writer_gone {
            return false;
        }
        let len = line.as_bytes().len();
        let fits = queue.room_bytes + len <= self.state.room_limit;
        if fits {
            queue.room.push_back(line);
            queue.room_bytes += len;
        } else {
            queue.skipped += 1;
        }
        // Either way the writer has something to send: the line, or the notice.
        let wake = std::mem::take(&mut queue.writer_waiting);
        drop(queue);
        if wake {
            self.state.ready.notify_one();
        }
        fits
    }

    /// The room part's byte bound.
    pub(super) fn room_limit(&self) -> usize {
        self.state.room_limit
    }

    /// Sets the priority part's byte bound (raised at login: before it, a client gets
    /// only a few KiB). Frames already queued stay.
    pub(super) fn set_limit(&self, limit: usize) {
        self.state.lock().limit = limit;
    }

    /// Asks the writer to send what is queued and close the connection. The close request
    /// itself ignores the byte limit.
    pub(super) fn close(&self) {
        let mut queue = self.state.lock();
        queue.closing = true;
        queue.writer_waiting = false;
        drop(queue);
        self.state.ready.notify_one();
    }

    /// Closes at once, dropping whatever is queued: the socket is shut down, which also
    /// unblocks a writer stuck on a peer that stopped reading. Never blocks.
    pub(super) fn evict(&self) {
        self.close();
        self.state.stream.shutdown_socket();
    }

    /// Waits at most `timeout` for the writer thread to finish; `false` if it has not.
    pub(super) fn wait_writer_gone(&self, timeout: std::time::Duration) -> bool {
        let queue = self.state.lock();
        sync::wait_timeout_while(&self.state.writer_ended, queue, timeout, |q| !q.writer_gone)
            .writer_gone
    }

    /// Bytes currently queued.
    pub(super) fn queued(&self) -> usize {
        self.state.lock().bytes
    }
}

impl<S> Clone for Outbox<S> {
    fn clone(&self) -> Outbox<S> {
        self.state.lock().producers += 1;
        Outbox {
            state: self.state.clone(),
        }
    }
}

impl<S> Drop for Outbox<S> {
    fn drop(&mut self) {
        let mut queue = self.state.lock();
        queue.producers -= 1;
        if queue.producers == 0 {
            drop(queue);
            self.state.ready.notify_one();
        }
    }
}

impl<S> OutboxReceiver<S> {
    /// Waits until frames are queued (or records left by `push_or_write` wait in the
    /// stream, or the queue is closing), then moves every queued frame into `batch`, which
    /// must be empty: the priority part, then the room part, then `SKIPPED <n>` if room
    /// lines were skipped. An empty batch still calls for a write. Returns `false` once
    /// there will be nothing more after this batch: `close` was called, or every producer
    /// is gone.
    pub(super) fn take(&self, batch: &mut VecDeque<Line>) -> bool {
        let mut queue = self.state.lock();
        while queue.lines.is_empty()
            && queue.room.is_empty()
            && queue.skipped == 0
            && !queue.unsent_records
            && !queue.closing
            && queue.producers > 0
        {
            queue.writer_waiting = true;
            queue = sync::wait(&self.state.ready, queue);
        }
        queue.writer_waiting = false;
        queue.unsent_records = false;
        std::mem::swap(&mut queue.lines, batch);
        queue.bytes = 0;
        take_room(&mut queue, batch);
        !queue.closing && queue.producers > 0
    }
}

/// Moves the room part into `batch` after the priority frames, then the `SKIPPED` notice
/// for the room lines left out since the last take.
fn take_room(queue: &mut Queue, batch: &mut VecDeque<Line>) {
    batch.append(&mut queue.room);
    queue.room_bytes = 0;
    if queue.skipped > 0 {
        let count = std::mem::take(&mut queue.skipped);
        batch.push_back(Line::from(&ServerLine::Skipped { count }));
    }
}

#[cfg(test)]
impl<S> OutboxReceiver<S> {
    /// For tests: the frames queued now, as text, without waiting, and whether the queue
    /// is still open (not closed, producers left).
    pub(super) fn take_now(&self) -> (Vec<String>, bool) {
        let mut queue = self.state.lock();
        let mut lines = std::mem::take(&mut queue.lines);
        queue.bytes = 0;
        take_room(&mut queue, &mut lines);
        let frames = lines
            .iter()
            .map(|l| String::from_utf8_lossy(l.as_bytes()).trim_end().to_owned())
            .collect();
        (frames, !queue.closing && queue.producers > 0)
    }
}

impl<S> Drop for OutboxReceiver<S> {
    fn drop(&mut self) {
        let mut queue = self.state.lock();
        queue.writer_gone = true;
        queue.lines = VecDeque::new();
        queue.bytes = 0;
        queue.room = VecDeque::new();
        queue.room_bytes = 0;
        drop(queue);
        self.state.writer_ended.notify_all();
    }
}

/// The writer thread: takes everything queued, encrypts it in batches of about 16 KiB,
/// writes each batch once. After [`Outbox::close`], or when every producer is gone, it
/// closes the connection with a TLS goodbye, which also wakes the reader. When the socket
/// fails (or accepts nothing for the send timeout) it returns the error, and the caller
/// shuts the socket down without a goodbye: nobody would read it.
pub(super) fn write_loop<S: ClientSocket>(stream: &S, queue: OutboxReceiver<S>) -> Result<()> {
    let mut batch = VecDeque::new();
    let mut plain = Vec::new();
    let mut records = Vec::new();
    loop {
        let more = queue.take(&mut batch);
        // Woken with nothing queued: records of the router's non-blocking write wait in
        // the stream (or the queue is closing), and `send` writes them first.
        let flush_only = batch.is_empty();
        for line in batch.drain(..) {
            plain.extend_from_slice(line.as_bytes());
            if plain.len() >= WRITE_BATCH_BYTES {
                send(stream, &mut plain, &mut records)?;
            }
        }
        if !plain.is_empty() || flush_only {
            send(stream, &mut plain, &mut records)?;
        }
        if !more {
            stream.close();
            return Ok(());
        }
        if batch.capacity() > 256 || plain.capacity() > 2 * WRITE_BATCH_BYTES {
            // A burst is over; idle connections should not keep burst-sized buffers.
            batch = VecDeque::new();
            plain = Vec::new();
            records = Vec::new();
        }
    }
}

/// Sends `plain` as TLS and clears it.
fn send<S: ClientSocket>(stream: &S, plain: &mut Vec<u8>, records: &mut Vec<u8>) -> Result<()> {
    let sent = stream.send(plain, records);
    plain.clear();
    sent
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::thread;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::protocol::frame::LineBuffer;
    use crate::tls::stream::ReadOutcome;

    /// Shrinks a socket's kernel buffer so that a peer that does not read fills it soon.
    fn small_buffer(socket: &TcpStream, option: libc::c_int) {
        let size: libc::c_int = 16 * 1024;
        // SAFETY: setsockopt reads `size`, an int as the option expects, for the call only.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(socket),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
    }

    /// A real TLS connection over loopback with small socket buffers: the server's end
    /// and the client's.
    fn tls_pair() -> (TlsStream, TlsStream) {
        let dir = tempfile::tempdir().unwrap();
        let dev = crate::tls::ensure_dev_certificates(dir.path()).unwrap();
        let (chain, key) = crate::tls::load_identity(&dev.cert, &dev.key).unwrap();
        let server_config = crate::tls::server_config(chain, key).unwrap();
        let client_config = crate::tls::client_config(Some(&dev.ca)).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client_socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        small_buffer(&client_socket, libc::SO_RCVBUF);
        let (server_socket, _) = listener.accept().unwrap();
        small_buffer(&server_socket, libc::SO_SNDBUF);
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = thread::spawn(move || {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let conn = rustls::ClientConnection::new(client_config, name).unwrap();
            TlsStream::handshake(conn, client_socket, deadline).unwrap()
        });
        let conn = rustls::ServerConnection::new(server_config).unwrap();
        let server = TlsStream::handshake(conn, server_socket, deadline).unwrap();
        (server, client.join().unwrap())
    }

    #[test]
    fn frames_written_at_once_and_queued_arrive_in_order_when_the_socket_fills() {
        let (server, client) = tls_pair();
        let server = Arc::new(server);
        let (producer, receiver) = outbox(64 * 1024 * 1024, 0, server.clone());
        let writer = {
            let server = server.clone();
            thread::spawn(move || write_loop(&*server, receiver))
        };
        let mut sent = Vec::new();
        let mut push = |seen: &mut Vec<Delivery>| {
            let line = format!("FROM alice {:05} {}\n", sent.len(), "x".repeat(1_000));
            sent.push(line.clone());
            seen.push(
                producer
                    .push_or_write(Line::Owned(line.into_bytes()))
                    .unwrap(),
            );
        };
        // While the client does not read, frames are written at once until the socket
        // fills mid-frame; `then_queue` frames follow while the writer sends the rest.
        let mut fill = |then_queue: usize| {
            let mut seen = Vec::new();
            while !seen.contains(&Delivery::WrittenInPart) {
                assert!(seen.len() < 5_000, "the socket never filled: {seen:?}");
                // Let the writer go back to sleep, so the next frame may be written at once.
                thread::sleep(Duration::from_millis(2));
                push(&mut seen);
            }
            for _ in 0..then_queue {
                push(&mut seen);
            }
            seen
        };
        let mut lines = LineBuffer::new(64 * 1024);
        let mut scratch = vec![0u8; 64 * 1024];
        let mut received = Vec::new();
        client
            .socket()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut read_until = |count: usize, received: &mut Vec<String>| {
            while received.len() < count {
                let outcome = client
                    .read_some(&mut scratch, &mut lines)
                    .expect("frames stopped arriving: one was left half-sent");
                lines
                    .drain_lines(|line| {
                        received.push(format!("{}\n", line.unwrap()));
                        true
                    })
                    .unwrap();
                assert_eq!(outcome, ReadOutcome::Open);
            }
        };

        // Nothing follows the partly written frame: the writer alone must finish it.
        let seen = fill(0);
        assert!(seen.contains(&Delivery::Written), "{seen:?}");
        let count = seen.len();
        read_until(count, &mut received);

        // Frames queued behind a partly written one leave after it.
        let seen = fill(20);
        let (direct, queued) = seen.split_at(seen.len() - 20);
        assert_eq!(direct.last(), Some(&Delivery::WrittenInPart), "{seen:?}");
        assert!(queued.iter().all(|d| *d == Delivery::Queued), "{seen:?}");
        read_until(count + seen.len(), &mut received);

        assert!(received == sent, "frames lost, repeated or out of order");
        drop(producer);
        writer.join().unwrap().unwrap();
    }
}
