//! Wire frames: splitting a byte stream into lines. Pure, no I/O.
//!
//! The protocol is one UTF-8 text frame per line (see `report/protocol.md`). [`LineBuffer`]
//! collects decrypted bytes as they arrive and hands out every complete line at once, so a
//! reader that received fifty lines in one TLS record handles all fifty before its next
//! socket read. It enforces the frame-size limit while a line is still incomplete, so a peer
//! that never sends a newline cannot make it grow without bound.

use std::fmt;
use std::io::{self, Read};

/// Why a line could not be turned into a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A line (or an unfinished line) is longer than the limit. Fatal: the rest of the
    /// stream can no longer be split reliably, so the connection is closed after an error.
    TooLong {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The line is not UTF-8. The line is skipped; the connection survives.
    InvalidUtf8,
    /// The line contains a control character (other than tab), which could rewrite a
    /// reader's terminal. The line is skipped; the connection survives.
    ControlCharacter,
}

impl FrameError {
    /// Whether the connection must be closed after reporting this error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, FrameError::TooLong { .. })
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { limit } => write!(f, "frame longer than {limit} bytes"),
            FrameError::InvalidUtf8 => f.write_str("frame is not valid UTF-8"),
            FrameError::ControlCharacter => {
                f.write_str("frame contains a control character (only tab is allowed)")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Accumulates bytes and yields complete lines.
///
/// Invariant: `buf[..scanned]` holds no `\n`, so each byte is searched for a newline once.
#[derive(Debug)]
pub struct LineBuffer {
    /// Bytes received and not yet consumed as complete lines.
    buf: Vec<u8>,
    /// How much of `buf` is known to contain no newline.
    scanned: usize,
    /// The largest frame accepted, excluding its line ending.
    max_frame: usize,
    /// Set once a frame was too long; the buffer refuses further input after that.
    poisoned: bool,
}

impl LineBuffer {
    /// A buffer that accepts frames of at most `max_frame` bytes (line ending excluded).
    /// Nothing is allocated until bytes arrive.
    pub fn new(max_frame: usize) -> LineBuffer {
        LineBuffer {
            buf: Vec::new(),
            scanned: 0,
            max_frame,
            poisoned: false,
        }
    }

    /// Appends bytes received from the peer.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Reads whatever `source` has ready (until it returns `WouldBlock` or end of stream)
    /// into the buffer. Returns whether the source ended.
    pub fn fill_from(&mut self, source: &mut impl Read) -> io::Result<bool> {
        // `read_to_end` keeps what it read when it stops at `WouldBlock`, and does not
        // zero the spare capacity on every call.
        match source.read_to_end(&mut self.buf) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Calls `handle` with every complete line in the buffer, in order, then drops them.
    ///
    /// A line is passed without its `\n` (and without a `\r` before it); empty lines are
    /// skipped. Returns `Err` with a fatal error, in which case `handle` has already seen
    /// every complete line before the offending one; the buffer is then unusable.
    /// `handle` returns `false` to stop early (for example on `QUIT`); the remaining lines
    /// stay buffered.
    pub fn drain_lines(
        &mut self,
        mut handle: impl FnMut(Result<&str, FrameError>) -> bool,
    ) -> Result<(), FrameError> {
        if self.poisoned {
            return Err(FrameError::TooLong {
                limit: self.max_frame,
            });
        }
        let mut start = 0;
        let mut stopped = false;
        while let Some(offset) = memchr_newline(&self.buf[start.max(self.scanned)..]) {
            let end = start.max(self.scanned) + offset;
            let mut line = &self.buf[start..end];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            self.scanned = end + 1;
            let next = end + 1;
            if line.len() > self.max_frame {
                self.poisoned = true;
                self.consume(start);
                return Err(FrameError::TooLong {
                    limit: self.max_frame,
                });
            }
            if !line.is_empty() {
                let keep_going = handle(decode_line(line));
                if !keep_going {
                    start = next;
                    stopped = true;
                    break;
                }
            }
            start = next;
        }
        self.consume(start);
        if !stopped {
            // What is left is an unfinished line: no newline in it, so the next call
            // searches only the bytes that arrive after it.
            self.scanned = self.buf.len();
        }
        if !stopped && self.buf.len() > self.max_frame + 1 {
            // No newline within the limit: the frame can only be too long.
            self.poisoned = true;
            return Err(FrameError::TooLong {
                limit: self.max_frame,
            });
        }
        Ok(())
    }

    /// Drops the first `n` bytes, keeping the allocation small when the buffer empties.
    fn consume(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.buf.drain(..n);
        self.scanned = self.scanned.saturating_sub(n);
    }

    /// Gives the memory back if nothing is pending, so that an idle connection (the
    /// common case, thousands at a time) holds no buffer. Call when the peer goes quiet,
    /// not after every read: a busy connection reuses its buffer.
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }
}

/// Validates one line's bytes as a frame.
pub fn decode_line(line: &[u8]) -> Result<&str, FrameError> {
    let text = std::str::from_utf8(line).map_err(|_| FrameError::InvalidUtf8)?;
    if has_control_character(line) {
        return Err(FrameError::ControlCharacter);
    }
    Ok(text)
}

/// Whether valid UTF-8 `bytes` contain a control character other than tab: C0 (below
/// 0x20), DEL (0x7F), or C1 (U+0080 to U+009F, encoded 0xC2 0x80..=0x9F) — exactly
/// `char::is_control`, checked on bytes because it runs for every frame.
fn has_control_character(bytes: &[u8]) -> bool {
    // The common case first, as a loop the compiler vectorises: printable ASCII and tabs.
    if bytes
        .iter()
        .all(|&b| (0x20..0x7F).contains(&b) || b == b'\t')
    {
        return false;
    }
    bytes.iter().enumerate().any(|(i, &b)| {
        (b < 0x20 && b != b'\t')
            || b == 0x7F
            || (b == 0xC2
                && bytes
                    .get(i + 1)
                    .is_some_and(|next| (0x80..=0x9F).contains(next)))
    })
}

/// Position of the first `\n` in `bytes`.
fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_line_is_searched_for_a_newline_only_once() {
        let mut buffer = LineBuffer::new(1024);
        let mut lines = Vec::new();
        for chunk in [&b"hel"[..], b"lo", b" there\nnext"] {
            buffer.extend(chunk);
            buffer
                .drain_lines(|line| {
                    lines.push(line.map(str::to_owned));
                    true
                })
                .unwrap();
            // Everything left is an unfinished line, already searched.
            assert_eq!(buffer.scanned, buffer.buf.len());
        }
        assert_eq!(lines, [Ok("hello there".to_owned())]);
        assert_eq!(buffer.buf, b"next");
    }

    fn lines(buf: &mut LineBuffer) -> Result<Vec<Result<String, FrameError>>, FrameError> {
        let mut out = Vec::new();
        buf.drain_lines(|l| {
            out.push(l.map(str::to_owned));
            true
        })?;
        Ok(out)
    }

    #[test]
    fn splits_complete_lines_and_keeps_the_rest() {
        let mut buf = LineBuffer::new(100);
        buf.extend(b"LOGIN a b\nPING\r\nSAY hel");
        let got = lines(&mut buf).unwrap();
        assert_eq!(got, vec![Ok("LOGIN a b".to_owned()), Ok("PING".to_owned())]);
        assert_eq!(buf.buf, b"SAY hel");
        buf.extend(b"lo\n");
        assert_eq!(lines(&mut buf).unwrap(), vec![Ok("SAY hello".to_owned())]);
        assert!(buf.buf.is_empty());
    }

    #[test]
    fn skips_empty_lines() {
        let mut buf = LineBuffer::new(100);
        buf.extend(b"\n\r\nPING\n\n");
        assert_eq!(lines(&mut buf).unwrap(), vec![Ok("PING".to_owned())]);
    }

    #[test]
    fn a_line_at_the_limit_is_accepted_and_one_byte_more_is_fatal() {
        let mut buf = LineBuffer::new(10);
        buf.extend(b"0123456789\n");
        assert_eq!(lines(&mut buf).unwrap(), vec![Ok("0123456789".to_owned())]);
        buf.extend(b"0123456789A\n");
        assert_eq!(lines(&mut buf), Err(FrameError::TooLong { limit: 10 }));
        // Poisoned: nothing more comes out.
        buf.extend(b"PING\n");
        assert!(lines(&mut buf).is_err());
    }

    #[test]
    fn an_unterminated_line_past_the_limit_is_fatal_before_its_newline() {
        let mut buf = LineBuffer::new(10);
        buf.extend(&[b'x'; 12]);
        assert_eq!(lines(&mut buf), Err(FrameError::TooLong { limit: 10 }));
    }

    #[test]
    fn lines_before_an_oversized_one_are_still_delivered() {
        let mut buf = LineBuffer::new(4);
        buf.extend(b"PING\nTOOLONG\n");
        let mut seen = Vec::new();
        let result = buf.drain_lines(|l| {
            seen.push(l.unwrap().to_owned());
            true
        });
        assert_eq!(seen, vec!["PING"]);
        assert!(result.unwrap_err().is_fatal());
    }

    #[test]
    fn invalid_utf8_and_control_characters_are_per_line_errors() {
        let mut buf = LineBuffer::new(100);
        buf.extend(b"\xff\xfe\nSAY \x1b[2J\nSAY ok\tfine\n");
        let got = lines(&mut buf).unwrap();
        assert_eq!(
            got,
            vec![
                Err(FrameError::InvalidUtf8),
                Err(FrameError::ControlCharacter),
                Ok("SAY ok\tfine".to_owned())
            ]
        );
        assert!(!FrameError::InvalidUtf8.is_fatal());
    }

    #[test]
    fn the_byte_level_control_check_matches_char_is_control() {
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let mut buf = [0u8; 4];
            let encoded = c.encode_utf8(&mut buf).as_bytes();
            assert_eq!(
                has_control_character(encoded),
                c.is_control() && c != '\t',
                "{c:?}"
            );
        }
    }

    #[test]
    fn stopping_early_keeps_the_remaining_lines() {
        let mut buf = LineBuffer::new(100);
        buf.extend(b"QUIT\nPING\n");
        let mut first = None;
        buf.drain_lines(|l| {
            first = Some(l.unwrap().to_owned());
            false
        })
        .unwrap();
        assert_eq!(first.as_deref(), Some("QUIT"));
        assert_eq!(lines(&mut buf).unwrap(), vec![Ok("PING".to_owned())]);
    }

    #[test]
    fn fill_from_reads_until_the_source_is_empty() {
        let mut buf = LineBuffer::new(100);
        let mut source: &[u8] = b"PING\nPI";
        assert!(buf.fill_from(&mut source).unwrap(), "the source ended");
        assert_eq!(buf.buf, b"PING\nPI");
        assert_eq!(lines(&mut buf).unwrap(), vec![Ok("PING".to_owned())]);
    }
}
