//! One client connection on the server: its reading threads and its writer thread.
//!
//! A *login thread* runs the TLS handshake and the anonymous phase: it answers by itself
//! (register, log in, ping, quit) and refuses everything else, so the connection receives
//! no chat traffic and learns nothing about who is online. Once the client has logged in,
//! a fresh *reader thread* takes over (see [`serve`] for why) and sends every request to
//! the router, so replies and deliveries reach the client in one order. The *writer
//! thread* writes the socket: it drains the client's [`Outbox`] and sends each batch as
//! one TLS write. (While it sleeps with nothing queued, the router may write a single frame
//! itself without blocking, and the reader the odd TLS alert; see [`crate::tls::stream`].)
//! What each request does is [`super::requests`]'s business; this module runs the threads.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::admission::{Admitted, Context};
use super::limits::set_send_buffer;
use super::outbox::{outbox, write_loop, Line};
use super::requests::{RequestHandler, Step};
use super::router::ConnId;
use crate::error::{Error, Result};
use crate::protocol::frame::LineBuffer;
use crate::protocol::{AnnouncedLimits, ServerLine, PROTOCOL_VERSION};
use crate::rate::TokenBucket;
use crate::tls::stream::{is_timeout, ReadOutcome, TlsStream};

/// Stack for writer threads. A writer only encrypts and writes; what it touches of its
/// stack stays resident for the connection's lifetime, so it is kept small.
const WRITER_STACK_BYTES: usize = 64 * 1024;

/// Stack for login threads, which run the TLS handshake (with its post-quantum key
/// exchange) and wait for bcrypt on the worker pool.
pub(super) const LOGIN_STACK_BYTES: usize = 256 * 1024;

/// Stack for the reader threads of logged-in clients. Their deepest path is an SQLite
/// query (`GETKEY`/`SETKEY`); only the pages actually touched cost memory.
const READER_STACK_BYTES: usize = 128 * 1024;

/// Bytes taken from the socket per read.
const READ_SCRATCH_BYTES: usize = 4096;

/// How long a closing reader waits for its writer to send what is queued before cutting
/// the socket (a peer that stopped reading would otherwise hold the writer forever).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves one accepted connection: the TLS handshake and everything up to login run on
/// this thread (the *login thread*), which then hands the session to a fresh reader
/// thread and exits.
///
/// Why two threads: the handshake (post-quantum key exchange) runs deep in the stack and
/// churns the allocator. On a thread that lives as long as the connection, those
/// stack pages and the allocator's per-thread cache of freed blocks would stay resident
/// for hours; a new thread starts with neither, which keeps an idle logged-in connection
/// small. A connection that never logs in never gets a second thread.
///
/// A panic (a bug) ends this connection only: the request handler's `Drop` tells the router and
/// closes the queue, and [`Admitted`]'s `Drop` releases admission, so nothing is left behind.
pub(super) fn serve(mut admitted: Admitted, socket: TcpStream) {
    let (id, peer) = (admitted.id, admitted.peer);
    let opened = panic::catch_unwind(AssertUnwindSafe(|| {
        open_connection(&admitted.context, socket, peer, id)
    }));
    let mut conn = match opened {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return log::info!("conn#{id} {peer}: closed: {e}"),
        Err(_) => return log::error!("conn#{id} {peer}: closed after an internal error (a bug)"),
    };
    let login = panic::catch_unwind(AssertUnwindSafe(|| {
        let buffered = conn.stream.take_buffered(&mut conn.lines);
        conn.read_loop(buffered, true)
    }));
    match login {
        Ok(Ended::Closed(reason, farewell)) => {
            conn.close(farewell);
            log::info!("conn#{id} {peer}: closed: {reason}");
        }
        Ok(Ended::LoggedIn) => {
            admitted.logged_in();
            let spawned = thread::Builder::new()
                .name(format!("reader-{id}"))
                .stack_size(READER_STACK_BYTES)
                .spawn(move || chat(admitted, conn));
            if let Err(e) = spawned {
                // The closure (and with it the session) was dropped: the router is told.
                log::error!("conn#{id} {peer}: cannot start a reader thread: {e}");
            }
        }
        Err(_) => log::error!("conn#{id} {peer}: closed after an internal error (a bug)"),
    }
}

/// The rest of a logged-in connection, on its long-lived reader thread.
fn chat(admitted: Admitted, mut conn: LiveConnection) {
    release_inherited_stack();
    let (id, peer) = (admitted.id, admitted.peer);
    let served = panic::catch_unwind(AssertUnwindSafe(|| {
        let ended = conn.read_loop(Ok(ReadOutcome::Open), false);
        let Ended::Closed(reason, farewell) = ended else {
            unreachable!("read_loop(_, false) only ends with Closed")
        };
        conn.close(farewell);
        reason
    }));
    match served {
        Ok(reason) => log::info!("conn#{id} {peer}: closed: {reason}"),
        Err(_) => log::error!("conn#{id} {peer}: closed after an internal error (a bug)"),
    }
}

/// Runs the TLS handshake and starts the writer thread.
fn open_connection(
    context: &Arc<Context>,
    socket: TcpStream,
    peer: SocketAddr,
    id: ConnId,
) -> Result<LiveConnection> {
    let accepted = Instant::now();
    socket.set_nodelay(true)?;
    let limits = &context.limits;
    set_send_buffer(&socket, limits.socket_send_buffer)?;
    let tls = rustls::ServerConnection::new(context.tls.clone())?;
    let stream = Arc::new(
        TlsStream::handshake(tls, socket, accepted + limits.handshake_timeout).map_err(
            |e| match e {
                Error::Tls(e) => Error::Protocol(format!("TLS handshake failed: {e}")),
                other => other,
            },
        )?,
    );
    log::debug!("conn#{id} {peer}: TLS established ({})", stream.describe());
    // Bounds every socket write: the writer's, and the reader's rare alert or key update.
    let send_timeout = Some(limits.send_timeout).filter(|t| !t.is_zero());
    stream.socket().set_write_timeout(send_timeout)?;

    // Until login the queue is tiny; `RequestHandler::login` raises it.
    let (outbox, receiver) = outbox(
        limits.anonymous_queue_bytes,
        limits.room_queue_bytes,
        stream.clone(),
    );
    let writer_stream = stream.clone();
    let writer = thread::Builder::new()
        .name(format!("writer-{id}"))
        .stack_size(WRITER_STACK_BYTES)
        .spawn(move || {
            release_inherited_stack();
            if let Err(e) = write_loop(&*writer_stream, receiver) {
                match e {
                    Error::Io(e) if is_timeout(&e) => log::info!(
                        "conn#{id} {peer}: disconnecting: the client accepted no data for the \
                         send timeout (it stopped reading)"
                    ),
                    // Usually the client is simply gone; its reader logs why.
                    other => log::debug!("conn#{id} {peer}: cannot send: {other}"),
                }
                writer_stream.shutdown_socket();
            }
        })?;
    context.register(id, outbox.clone());
    let handler = RequestHandler {
        id,
        peer,
        bucket: TokenBucket::new(limits.message_rate, limits.message_burst),
        context: context.clone(),
        outbox,
        user: None,
        wants_history: false,
        wants_mailbox: false,
        login_deadline: accepted + limits.login_timeout,
        last_frame: Instant::now(),
        batch: Vec::new(),
        batch_hint: 0,
        finished: false,
    };
    let hello = ServerLine::Hello {
        version: PROTOCOL_VERSION,
        limits: Some(AnnouncedLimits {
            max_frame: limits.max_frame,
            rate: limits.message_rate,
            burst: limits.message_burst,
        }),
        // Only a server that federates has a name to announce; its clients bind it into
        // the names of their end-to-end cryptography (`report/protocol.md`, the greeting).
        name: context
            .federation
            .as_ref()
            .map(|federation| federation.name().clone()),
    };
    if handler.outbox.push(Line::from(&hello)).is_err() {
        return Err(Error::Protocol("could not queue the greeting".into()));
    }
    handler.set_tick(&stream)?;
    Ok(LiveConnection {
        lines: LineBuffer::new(limits.max_frame),
        handler,
        stream,
        writer,
    })
}

/// A connection past its handshake: the reader's state, and the writer thread.
struct LiveConnection {
    /// Requests, login state, limits.
    handler: RequestHandler,
    /// The TLS stream, shared with the writer.
    stream: Arc<TlsStream>,
    /// Bytes received and not yet handled (a partial frame may carry over the hand-off
    /// from the login thread to the reader thread).
    lines: LineBuffer,
    /// The writer thread, joined when the connection closes.
    writer: JoinHandle<()>,
}

/// Why a read loop returned.
enum Ended {
    /// The connection is over: the reason for the log, and the `BYE` text if any.
    Closed(String, Option<String>),
    /// The client logged in (only when the loop was asked to stop there).
    LoggedIn,
}

impl LiveConnection {
    /// Handles what `first` brought, then reads and handles frames until the connection
    /// should close — or, with `until_login`, until the client has logged in.
    fn read_loop(&mut self, first: Result<ReadOutcome>, until_login: bool) -> Ended {
        // The read buffer exists only while data is flowing: after BUFFER_RELEASE_AFTER of
        // silence it is dropped (with the line buffer's memory) and the next wait happens
        // without one, so thousands of idle connections hold no read buffers. A busy
        // connection keeps its buffers and pays no extra system call per read.
        let mut scratch: Option<Vec<u8>> = None;
        let mut outcome = first;
        loop {
            let closed = match outcome {
                Ok(ReadOutcome::Open) => false,
                Ok(ReadOutcome::Closed) => true,
                Err(Error::Io(e)) if is_timeout(&e) => {
                    scratch = None;
                    self.lines.release_if_empty();
                    false
                }
                Err(e) => return Ended::Closed(e.to_string(), None),
            };
            // Frames that arrived together with the close are still carried out.
            if let Step::Stop(reason, bye) =
                self.handler.handle_lines(&mut self.lines, &self.stream)
            {
                return Ended::Closed(reason, bye);
            }
            if closed {
                return Ended::Closed("client closed the connection".into(), None);
            }
            if let Step::Stop(reason, bye) = self.handler.check_deadlines() {
                return Ended::Closed(reason, bye);
            }
            if until_login && self.handler.user.is_some() {
                return Ended::LoggedIn;
            }
            if scratch.is_none() {
                match self.stream.wait_readable(self.handler.tick()) {
                    Ok(true) => {}
                    Ok(false) => {
                        outcome = Err(Error::Io(io::ErrorKind::TimedOut.into()));
                        continue;
                    }
                    Err(e) => {
                        outcome = Err(e.into());
                        continue;
                    }
                }
            }
            let buffer = scratch.get_or_insert_with(|| vec![0u8; READ_SCRATCH_BYTES]);
            // Blocks at most the socket's read timeout (see `set_tick`).
            outcome = self.stream.read_some(buffer, &mut self.lines);
        }
    }

    /// Says goodbye, lets the writer send what is queued (cutting the socket if the peer
    /// is not taking it), and waits for the writer thread.
    fn close(mut self, farewell: Option<String>) {
        self.handler.finish(farewell);
        if !self.handler.outbox.wait_writer_gone(CLOSE_GRACE) {
            self.stream.shutdown_socket();
        }
        let _ = self.writer.join();
    }
}

/// Returns to the OS whatever is resident in this thread's stack below the current frame.
///
/// Called first thing by the threads that live as long as a connection. glibc reuses the
/// stacks of exited threads, and a reused stack arrives with the pages its last owner
/// left resident (glibc keeps 16 KiB below the exit frame, on top of the frames
/// themselves): a new reader would inherit a login thread's handshake pages, for hours.
/// Releasing them makes every long-lived thread cost only what it touches itself.
fn release_inherited_stack() {
    /// Kept below the current frame: enough for the calls made here (only `madvise`'s
    /// own frame is live while the range is released).
    const MARGIN: usize = 4096;
    const PAGE: usize = 4096;
    // SAFETY: the attribute calls only fill in the locals passed to them. The range given
    // to madvise lies inside this thread's own stack mapping and wholly below the current
    // frame minus MARGIN. The stack grows down, so nothing live is stored there: no frame
    // of ours, and the only callee running meanwhile (the madvise wrapper) sits within
    // MARGIN. MADV_DONTNEED on private anonymous memory makes those pages read as zero
    // when next touched, which is how fresh stack pages look.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return;
        }
        let mut low: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut low, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if got != 0 {
            return;
        }
        let marker = 0u8;
        let here = std::hint::black_box(std::ptr::addr_of!(marker)) as usize;
        let (low, high) = (low as usize, low as usize + size);
        if here <= low || here >= high {
            return;
        }
        let start = (low + PAGE - 1) & !(PAGE - 1);
        let end = here.saturating_sub(MARGIN) & !(PAGE - 1);
        if end > start {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}
