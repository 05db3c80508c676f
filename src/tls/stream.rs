//! A TLS connection over a blocking `TcpStream` that one thread reads while another writes.
//!
//! rustls has no split into read and write halves, and a `Mutex<StreamOwned>` deadlocks (a
//! blocked `read` would hold the lock). [`TlsStream`] keeps the rustls state behind a short
//! lock instead:
//!
//! * the reader does a plain socket `read` with no lock held, then locks to feed the bytes
//!   to rustls (`read_tls` → `process_new_packets` → drain plaintext);
//! * a writer locks to encrypt plaintext and take the TLS records out (`write_tls` into a
//!   buffer), releases it, and only then writes the socket.
//!
//! Invariant: **the TLS lock is never held across a socket call.** Socket writes are
//! serialised by a second lock, `unsent`, taken before the TLS lock, so records leave
//! in the order rustls produced them. Invariant: **the reader never waits for
//! `unsent`.** When it has something to send (an alert, a key update) while a writer
//! holds the lock — possibly blocked on a peer that does not read — the records stay in
//! rustls and leave with the writer's next batch, and the reader goes on reading and
//! keeping its deadlines.
//!
//! The server's router may also write, without ever waiting: [`TlsStream::try_claim`]
//! takes the socket only if nobody holds it, and [`WriteClaim::write_now`] sends with a
//! non-blocking `send`. Records that do not fit in the socket stay in `unsent`, and the
//! next blocking write (the writer's) sends them first.
//! Both the server and the client use this type.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::protocol::frame::LineBuffer;

/// What one read from the socket amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The connection is still open (there may be no complete plaintext yet); keep reading.
    Open,
    /// The peer closed the connection: a TLS `close_notify` or end of the TCP stream.
    Closed,
}

/// A TLS session over a socket, shared between a reading and a writing thread.
pub struct TlsStream {
    /// The rustls state machine. Never held across a socket call.
    tls: Mutex<rustls::Connection>,
    /// The socket. Reads take no lock; writes happen only under `unsent`.
    socket: TcpStream,
    /// TLS records taken out of rustls that a non-blocking write could not finish: they
    /// leave before anything else. Empty (and unallocated) almost always. Its lock
    /// serialises socket writes so records are sent in the order they were produced.
    /// Lock order: `unsent` before `tls`.
    unsent: Mutex<Vec<u8>>,
}

/// The right to write a [`TlsStream`]'s socket, taken without waiting by
/// [`TlsStream::try_claim`]. Whoever writes after it (the writer) waits until it is used.
pub struct WriteClaim<'a> {
    /// The stream to write.
    stream: &'a TlsStream,
    /// Held until the write is done; records the write leaves behind stay in it.
    unsent: MutexGuard<'a, Vec<u8>>,
}

/// What [`WriteClaim::write_now`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteNow {
    /// Everything is on the socket.
    Sent,
    /// The frame is encrypted, but the socket did not take all of it (it is full, or
    /// failed): the rest waits in the stream for the next blocking write, which also
    /// meets any error.
    LeftUnsent,
}

impl TlsStream {
    /// Runs the TLS handshake on `socket`, giving up at `deadline`, and returns the
    /// connection ready for use. A peer that is silent, slow, or not speaking TLS at all
    /// fails here; on a protocol error rustls's alert is sent before returning.
    pub fn handshake(
        conn: impl Into<rustls::Connection>,
        socket: TcpStream,
        deadline: Instant,
    ) -> Result<TlsStream> {
        let mut conn = conn.into();
        let mut socket = socket;
        while conn.is_handshaking() {
            while conn.wants_write() {
                set_timeouts(&socket, deadline)?;
                conn.write_tls(&mut socket)?;
            }
            if !conn.is_handshaking() {
                break;
            }
            set_timeouts(&socket, deadline)?;
            let n = conn.read_tls(&mut socket).map_err(timeout_as_error)?;
            if n == 0 {
                return Err(Error::Protocol(
                    "connection closed during the TLS handshake".into(),
                ));
            }
            if let Err(e) = conn.process_new_packets() {
                // Best effort: tell the peer why (rustls queued an alert).
                let _ = conn.write_tls(&mut socket);
                return Err(e.into());
            }
        }
        while conn.wants_write() {
            set_timeouts(&socket, deadline)?;
            conn.write_tls(&mut socket)?;
        }
        // Writes are bounded by what the writer batches, not by rustls's buffer limit:
        // a batch is encrypted and taken out at once, so the buffer never builds up.
        conn.set_buffer_limit(None);
        socket.set_write_timeout(None)?;
        socket.set_read_timeout(None)?;
        Ok(TlsStream {
            tls: Mutex::new(conn),
            socket,
            unsent: Mutex::new(Vec::new()),
        })
    }

    /// The underlying socket, for setting timeouts and addresses. Do not read or write it.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Moves plaintext that rustls already holds into `lines` without touching the socket.
    /// Call once after the handshake: a peer may send its first frames together with its
    /// last handshake message.
    pub fn take_buffered(&self, lines: &mut LineBuffer) -> Result<ReadOutcome> {
        let mut tls = self.lock_tls();
        let ended = lines.fill_from(&mut tls.reader())?;
        Ok(if ended {
            ReadOutcome::Closed
        } else {
            ReadOutcome::Open
        })
    }

    /// Blocks for one socket read, decrypts what arrived and appends the plaintext to
    /// `lines`. `scratch` receives the raw bytes; its size bounds one read.
    pub fn read_some(&self, scratch: &mut [u8], lines: &mut LineBuffer) -> Result<ReadOutcome> {
        let n = match (&self.socket).read(scratch) {
            Ok(0) => return Ok(ReadOutcome::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(ReadOutcome::Open),
            Err(e) => return Err(e.into()),
        };
        let mut received = &scratch[..n];
        let mut outcome = ReadOutcome::Open;
        let wants_write;
        {
            let mut tls = self.lock_tls();
            while !received.is_empty() {
                tls.read_tls(&mut received)?;
                if let Err(e) = tls.process_new_packets() {
                    drop(tls);
                    // Send rustls's alert so the peer learns why; the error is what matters.
                    let _ = self.flush_unless_writing();
                    return Err(e.into());
                }
                // Drain after every `process_new_packets` so plaintext never piles up
                // inside rustls (its buffer is bounded and would refuse more records).
                let ended = lines.fill_from(&mut tls.reader())?;
                if ended {
                    outcome = ReadOutcome::Closed;
                    break;
                }
            }
            wants_write = tls.wants_write();
        }
        if wants_write {
            self.flush_unless_writing()?;
        }
        Ok(outcome)
    }

    /// Waits until the socket has something to read (or was closed), for at most
    /// `timeout`. Returns `false` on timeout. Lets a reader wait without holding a read
    /// buffer.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut fd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: poll reads and writes only the one pollfd passed to it.
        let ready = unsafe { libc::poll(&mut fd, 1, millis) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(ready > 0)
    }

    /// Encrypts `plaintext` and writes it to the socket. `scratch` holds the TLS records
    /// between the two steps; pass the same buffer each time to reuse its allocation.
    /// Records an earlier non-blocking write left behind go first.
    pub fn send(&self, plaintext: &[u8], scratch: &mut Vec<u8>) -> Result<()> {
        let mut unsent = self.lock_unsent();
        write_unsent(&self.socket, &mut unsent)?;
        {
            let mut tls = self.lock_tls();
            tls.writer().write_all(plaintext)?;
            drain_tls(&mut tls, scratch)?;
        }
        self.write_socket(scratch)
    }

    /// Writes out whatever TLS data rustls has queued (alerts, key updates), unless a
    /// writer holds the socket: then it stays queued in rustls and leaves with that
    /// writer's next batch. This is how the reader writes, so it never waits behind a
    /// writer blocked on a peer that does not read.
    fn flush_unless_writing(&self) -> Result<()> {
        let Some(mut unsent) = self.try_lock_unsent() else {
            return Ok(());
        };
        drain_tls(&mut self.lock_tls(), &mut unsent)?;
        write_unsent(&self.socket, &mut unsent)
    }

    /// Takes the right to write the socket if nobody holds it and no records wait from an
    /// earlier non-blocking write (those are the writer's to send, in order). Never waits.
    pub fn try_claim(&self) -> Option<WriteClaim<'_>> {
        let unsent = self.try_lock_unsent()?;
        unsent.is_empty().then_some(WriteClaim {
            stream: self,
            unsent,
        })
    }

    /// Sends `bytes` without blocking; returns how many the socket took: 0 when it is full
    /// or failed (the blocking write that must follow meets the error and reports it).
    fn send_without_blocking(&self, bytes: &[u8]) -> usize {
        loop {
            // SAFETY: send reads `bytes.len()` bytes from `bytes`, a live slice, and the
            // fd is this stream's open socket.
            let sent = unsafe {
                libc::send(
                    self.socket.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if let Ok(sent) = usize::try_from(sent) {
                return sent;
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return 0;
            }
        }
    }

    /// Sends a TLS `close_notify` (best effort) and shuts the socket down both ways, which
    /// also wakes a thread blocked reading it.
    pub fn close(&self) {
        {
            let mut unsent = self.lock_unsent();
            let drained = {
                let mut tls = self.lock_tls();
                tls.send_close_notify();
                drain_tls(&mut tls, &mut unsent)
            };
            if drained.is_ok() {
                // Best effort: the peer may already be gone.
                let _ = write_unsent(&self.socket, &mut unsent);
            }
        }
        self.shutdown_socket();
    }

    /// Shuts the socket down both ways without a TLS goodbye. Never blocks: this is what
    /// the router uses to evict a client whose writer may be stuck on a full socket.
    pub fn shutdown_socket(&self) {
        // Fails only if the socket is already shut down, which is the goal.
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    /// The negotiated protocol version and key-exchange group, for logs.
    pub fn describe(&self) -> String {
        let tls = self.lock_tls();
        let version = tls
            .protocol_version()
            .map_or_else(|| "?".to_owned(), |v| format!("{v:?}"));
        let group = tls
            .negotiated_key_exchange_group()
            .map_or_else(|| "?".to_owned(), |g| format!("{:?}", g.name()));
        let suite = tls
            .negotiated_cipher_suite()
            .map_or_else(|| "?".to_owned(), |s| format!("{:?}", s.suite()));
        format!("{version}, {suite}, {group}")
    }

    fn write_socket(&self, records: &mut Vec<u8>) -> Result<()> {
        if !records.is_empty() {
            (&self.socket).write_all(records)?;
            records.clear();
        }
        Ok(())
    }

    fn lock_tls(&self) -> MutexGuard<'_, rustls::Connection> {
        // A panic elsewhere cannot leave rustls half-updated in a way that matters here:
        // the next TLS call reports any inconsistency as an error.
        crate::sync::lock(&self.tls)
    }

    fn lock_unsent(&self) -> MutexGuard<'_, Vec<u8>> {
        crate::sync::lock(&self.unsent)
    }

    fn try_lock_unsent(&self) -> Option<MutexGuard<'_, Vec<u8>>> {
        match self.unsent.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

impl WriteClaim<'_> {
    /// Encrypts `plaintext` and sends it without blocking. What the socket does not take
    /// waits in the stream (see [`WriteNow::LeftUnsent`]); the caller must then make sure
    /// a blocking write follows.
    pub fn write_now(mut self, plaintext: &[u8]) -> Result<WriteNow> {
        {
            let mut tls = self.stream.lock_tls();
            tls.writer().write_all(plaintext)?;
            drain_tls(&mut tls, &mut self.unsent)?;
        }
        let sent = self.stream.send_without_blocking(&self.unsent);
        if sent == self.unsent.len() {
            // Freed, not kept: idle connections hold no buffer.
            *self.unsent = Vec::new();
            return Ok(WriteNow::Sent);
        }
        self.unsent.drain(..sent);
        Ok(WriteNow::LeftUnsent)
    }
}

/// Writes (blocking) and frees records left by an earlier non-blocking write.
fn write_unsent(mut socket: &TcpStream, unsent: &mut Vec<u8>) -> Result<()> {
    if !unsent.is_empty() {
        socket.write_all(unsent)?;
        *unsent = Vec::new();
    }
    Ok(())
}

/// Moves every queued TLS record from rustls into `out`.
fn drain_tls(tls: &mut rustls::Connection, out: &mut Vec<u8>) -> Result<()> {
    while tls.wants_write() {
        tls.write_tls(out)?;
    }
    Ok(())
}

/// Sets the socket's read and write timeouts to the time left until `deadline`.
fn set_timeouts(socket: &TcpStream, deadline: Instant) -> Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(handshake_timed_out());
    }
    socket.set_read_timeout(Some(left))?;
    socket.set_write_timeout(Some(left))?;
    Ok(())
}

/// Turns a socket timeout into a readable error.
fn timeout_as_error(e: io::Error) -> Error {
    if is_timeout(&e) {
        handshake_timed_out()
    } else {
        Error::Io(e)
    }
}

fn handshake_timed_out() -> Error {
    Error::Protocol("timed out during the TLS handshake".into())
}

/// Whether a socket error means only that a timeout ran out (`WouldBlock` on Linux
/// for a read timeout, `TimedOut` elsewhere), not that the connection failed.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
