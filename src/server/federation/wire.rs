//! One federation connection: a blocking TLS stream carrying peer frames, one line at a
//! time, with the same framing rules as clients (size limit, UTF-8, no control
//! characters) and a deadline on every read and write.
//!
//! Each side of a link uses its connection from one thread only (the connector writes
//! then reads the answers; the acceptor reads then answers), so a plain
//! `rustls::StreamOwned` is enough here.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::{ConnectionCommon, SideData, StreamOwned};

use crate::protocol::frame::{FrameError, LineBuffer};

/// Why a link ended.
#[derive(Debug)]
pub(super) enum LinkDown {
    /// A frame broke the framing rules (too long, not UTF-8, a control character).
    Frame(FrameError),
    /// The peer closed the connection.
    Closed,
    /// A read or write missed its deadline.
    TimedOut,
    /// The socket or TLS failed.
    Io(String),
    /// The peer broke the protocol (said why).
    Protocol(String),
    /// The store failed: the link ends unanswered, and what was not acknowledged is sent
    /// again on the next one.
    Store(String),
}

impl fmt::Display for LinkDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkDown::Frame(e) => write!(f, "unreadable frame: {e}"),
            LinkDown::Closed => f.write_str("the peer closed the connection"),
            LinkDown::TimedOut => f.write_str("timed out"),
            LinkDown::Io(e) => f.write_str(e),
            LinkDown::Protocol(e) => write!(f, "protocol error: {e}"),
            LinkDown::Store(e) => write!(f, "store: {e}"),
        }
    }
}

impl From<crate::error::Error> for LinkDown {
    fn from(e: crate::error::Error) -> LinkDown {
        LinkDown::Store(e.to_string())
    }
}

impl From<io::Error> for LinkDown {
    fn from(e: io::Error) -> LinkDown {
        if crate::tls::stream::is_timeout(&e) {
            LinkDown::TimedOut
        } else {
            LinkDown::Io(e.to_string())
        }
    }
}

/// A link's TLS connection with its line buffer.
pub(super) struct PeerStream<C> {
    /// The TLS session over the socket.
    tls: StreamOwned<C, TcpStream>,
    /// Received bytes not yet taken as lines.
    lines: LineBuffer,
}

/// What is left until `deadline`; `TimedOut` once it passed (a zero timeout would mean
/// "no timeout" to the socket).
fn remaining(deadline: Instant) -> Result<Duration, LinkDown> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(LinkDown::TimedOut)
    } else {
        Ok(left)
    }
}

/// Bytes read from the socket at a time.
const READ_BYTES: usize = 16 * 1024;

impl<C, S> PeerStream<C>
where
    C: Deref<Target = ConnectionCommon<S>> + DerefMut,
    S: SideData + 'static,
{
    /// Completes the TLS handshake on `socket`, by `deadline` in all (each read gets what
    /// is left of it, so a peer that trickles bytes cannot stretch it), or within the
    /// socket's own per-read timeout without one.
    pub(super) fn handshake(
        mut conn: C,
        mut socket: TcpStream,
        max_frame: usize,
        deadline: Option<Instant>,
    ) -> Result<PeerStream<C>, LinkDown> {
        while conn.is_handshaking() {
            if let Some(deadline) = deadline {
                socket.set_read_timeout(Some(remaining(deadline)?))?;
            }
            conn.complete_io(&mut socket)
                .map_err(|e| LinkDown::Io(format!("TLS handshake failed: {e}")))?;
        }
        Ok(PeerStream {
            tls: StreamOwned::new(conn, socket),
            lines: LineBuffer::new(max_frame),
        })
    }

    /// The peer's certificate chain, end entity first (empty if it showed none).
    pub(super) fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        self.tls.conn.peer_certificates().unwrap_or(&[])
    }

    /// Sets how long a read may wait (the next frame's deadline).
    pub(super) fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.tls.sock.set_read_timeout(Some(timeout))
    }

    /// Writes frames (each already ending in `\n`) as one TLS write.
    pub(super) fn write_frames(&mut self, frames: &[u8]) -> Result<(), LinkDown> {
        self.tls.write_all(frames)?;
        self.tls.flush()?;
        Ok(())
    }

    /// Writes one frame.
    pub(super) fn write_line(&mut self, line: &str) -> Result<(), LinkDown> {
        let mut frame = Vec::with_capacity(line.len() + 1);
        frame.extend_from_slice(line.as_bytes());
        frame.push(b'\n');
        self.write_frames(&frame)
    }

    /// The next frame, by `deadline` in all.
    pub(super) fn read_line_by(&mut self, deadline: Instant) -> Result<String, LinkDown> {
        self.read_frame(Some(deadline))
    }

    /// The next frame if one is already buffered, without reading the socket.
    pub(super) fn buffered_line(&mut self) -> Result<Option<String>, LinkDown> {
        let mut taken: Option<Result<String, LinkDown>> = None;
        self.lines
            .drain_lines(|line| {
                taken = Some(line.map(str::to_owned).map_err(LinkDown::Frame));
                false
            })
            .map_err(LinkDown::Frame)?;
        taken.transpose()
    }

    /// The next frame, waiting at most the read timeout for each read.
    pub(super) fn read_line(&mut self) -> Result<String, LinkDown> {
        self.read_frame(None)
    }

    fn read_frame(&mut self, deadline: Option<Instant>) -> Result<String, LinkDown> {
        let mut scratch = [0u8; READ_BYTES];
        loop {
            if let Some(line) = self.buffered_line()? {
                return Ok(line);
            }
            if let Some(deadline) = deadline {
                self.tls.sock.set_read_timeout(Some(remaining(deadline)?))?;
            }
            let n = self.tls.read(&mut scratch)?;
            if n == 0 {
                return Err(LinkDown::Closed);
            }
            self.lines.extend(&scratch[..n]);
        }
    }

    /// Sends a TLS close_notify (best effort) before the socket is dropped.
    pub(super) fn close(&mut self) {
        self.tls.conn.send_close_notify();
        let _ = self.tls.flush();
    }
}
