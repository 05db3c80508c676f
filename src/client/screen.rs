//! What the terminal client prints, and the rules that make what it prints trustworthy.
//!
//! For a secure chat, what the screen says *is* the security, so every byte the client
//! prints goes through [`Screen`], which keeps these invariants:
//!
//! * **One escaping routine.** Every line passes one routine (`escape`) on its way out: controls
//!   (C0, DEL, C1 — so ESC, BEL and CSI can never reach the terminal), bidirectional
//!   overrides and invisible format characters become U+FFFD, and in event lines (anything
//!   another user or the server wrote) runs of whitespace — tabs, non-breaking and wide
//!   spaces included — collapse to one space ([`sanitize`]). Messages, names, server error
//!   texts and TLS errors all take this path; nothing prints around it.
//! * **Only genuine events start a row.** An event row begins with `[HH:MM] ` at column 0
//!   (the time it is shown; for a line of room history, the time it was first sent).
//!   The client wraps every line itself, at the terminal's width, before the terminal
//!   would: every further row of the same line begins with [`CONTINUATION`], which no event
//!   row begins with. So no text, however it is padded, can make a row that starts like a
//!   message, a status line or a warning. Widths are over-estimated (two columns for any
//!   non-ASCII character), so the terminal never wraps before the client does.
//! * **Marks nobody can imitate.** After the time, a row names its origin with something
//!   a user name cannot be: `*` (status), `!!!` (warning), [`OWN_MARK`] (the local user),
//!   or a user's address, which the client has checked against the rules (lower-case
//!   ASCII letters, digits, `_`; never `you`, `me`, `server`, …; for a user of another
//!   server, `@` and a lower-case DNS name). Meaning never depends on colour: the client
//!   uses none.
//! * **Addresses in full.** A user of another server is always shown as `user@server`,
//!   exactly as the server sent it, so `bob@a.test` cannot pass for `bob@b.test` or for
//!   the local `bob`.
//! * **Repeated warnings are one line.** A warning identical to the one just shown is
//!   counted instead of printed, and the count is shown once something else is printed.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use crate::e2e::Trust;

/// Prints one row somewhere other than standard output (the line editor's printer,
/// which keeps the half-typed input line below what it prints).
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// Marks the local user's own lines (`(you)`): parentheses cannot occur in a user name, so
/// no other user's line can carry it.
pub const OWN_MARK: &str = "(you)";

/// Labels public room lines: short, so that a line stays on one row at 80 columns; what it
/// means (TLS to the server only, the server can read it) is said at login and in `/help`.
pub const ROOM_LABEL: &str = "[room]";

/// Labels room lines replayed from the room's history at login, shown with the time they
/// were sent (and their date, when not today): the same origin as [`ROOM_LABEL`], said
/// before now.
pub const HISTORY_LABEL: &str = "[room, history]";

/// Begins every row after the first of a wrapped line. Event rows begin with `[`, so a
/// continuation row can never be taken for a new line.
pub const CONTINUATION: &str = "        | ";

/// The narrowest width the client wraps at: below it a row could not hold the
/// continuation mark and some text.
const MIN_WIDTH: usize = 20;

/// The label of a private message: end-to-end encrypted, and how far the partner's key is
/// trusted (the trust state is part of every private line, not only of a warning).
pub fn private_label(trust: Trust) -> String {
    format!("[private, e2e, {}]", trust_words(trust))
}

/// The label of a private message that waited on the server while we were offline (offline
/// delivery): end-to-end encrypted like any private message, and said apart from a live one.
pub fn offline_label(trust: Trust) -> String {
    format!("[private, e2e offline, {}]", trust_words(trust))
}

/// How far a partner's key is trusted, as every private label says it.
fn trust_words(trust: Trust) -> &'static str {
    match trust {
        Trust::Verified => "verified",
        Trust::FirstUse => "first use, not verified",
        Trust::Accepted => "key changed, accepted, not verified",
    }
}

/// Where the client's output goes: the terminal, or a buffer in tests.
#[derive(Clone)]
pub struct Screen {
    /// Collected lines when capturing (tests); `None` prints to stdout.
    captured: Option<Arc<Mutex<Vec<String>>>>,
    /// Where lines go instead of standard output, when set.
    sink: Option<Sink>,
    /// The last warning shown and how many times it came again since, so a flood of one
    /// warning is one line with a count.
    repeated: Arc<Mutex<Repeated>>,
}

/// The last warning and its unshown repetitions.
#[derive(Default)]
struct Repeated {
    /// The text of the last warning printed.
    last: Option<String>,
    /// How many identical warnings followed it without being printed.
    count: usize,
}

impl Screen {
    /// Prints to standard output.
    pub fn stdout() -> Screen {
        Screen {
            captured: None,
            sink: None,
            repeated: Arc::default(),
        }
    }

    /// Hands every row to `sink` (which adds the line end): the line editor's printer,
    /// which keeps the half-typed input line below what it prints.
    pub fn to_sink(sink: Sink) -> Screen {
        Screen {
            captured: None,
            sink: Some(sink),
            repeated: Arc::default(),
        }
    }

    /// Collects lines in memory; read them with [`Screen::lines`].
    pub fn capture() -> Screen {
        Screen {
            captured: Some(Arc::new(Mutex::new(Vec::new()))),
            sink: None,
            repeated: Arc::default(),
        }
    }

    /// Lines captured so far (empty when printing to stdout).
    pub fn lines(&self) -> Vec<String> {
        self.captured.as_ref().map_or_else(Vec::new, |c| {
            c.lock().unwrap_or_else(PoisonError::into_inner).clone()
        })
    }

    /// Prints one event line prefixed with the local time.
    pub fn event(&self, text: &str) {
        self.event_at(&local_time_hhmm(), text);
    }

    /// Prints one event line prefixed with `hhmm`, a time the client formatted.
    fn event_at(&self, hhmm: &str, text: &str) {
        self.flush_repeated();
        self.emit(&format!("[{hhmm}] {}", sanitize(text)));
    }

    /// Prints text without the time (menus, help, results), keeping its alignment: each
    /// line is escaped (controls replaced, tabs made spaces, but runs of spaces kept) and
    /// wrapped like any other, so it cannot start a row either.
    pub fn print(&self, text: &str) {
        self.flush_repeated();
        for line in text.split('\n') {
            self.emit(&escape(line, false));
        }
    }

    /// A status line: `* text`, one row per line of `text`.
    pub fn info(&self, text: &str) {
        for line in text.lines() {
            self.event(&format!("* {line}"));
        }
    }

    /// A warning the user must not miss: `!!! text`, one row per line of `text`. The same
    /// warning again right after is counted, not printed.
    pub fn warn(&self, text: &str) {
        {
            let mut repeated = self.repeated.lock().unwrap_or_else(PoisonError::into_inner);
            if repeated.last.as_deref() == Some(text) {
                repeated.count += 1;
                return;
            }
        }
        self.flush_repeated();
        for line in text.lines() {
            self.event(&format!("!!! {line}"));
        }
        self.repeated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last = Some(text.to_owned());
    }

    /// A public room line from `user`.
    pub fn room(&self, user: &str, text: &str) {
        self.event(&format!("{user} {ROOM_LABEL}: {text}"));
    }

    /// A public room line the local user sent.
    pub fn own_room(&self, text: &str) {
        self.event(&format!("{OWN_MARK} {ROOM_LABEL}: {text}"));
    }

    /// A room line from `user` replayed from the history, sent at `time` (Unix seconds).
    pub fn history(&self, time: u64, user: &str, text: &str) {
        let (hhmm, label) = history_time(time);
        self.event_at(&hhmm, &format!("{user} {label}: {text}"));
    }

    /// A room line the local user sent in an earlier session, replayed from the history.
    pub fn own_history(&self, time: u64, text: &str) {
        self.history(time, OWN_MARK, text);
    }

    /// A private message from `from`, whose key has trust state `trust`.
    pub fn private_from(&self, from: &str, trust: Trust, text: &str) {
        let label = private_label(trust);
        self.event(&format!("{from} -> {OWN_MARK} {label}: {text}"));
    }

    /// A private message the local user sent to `to`.
    pub fn private_to(&self, to: &str, trust: Trust, text: &str) {
        let label = private_label(trust);
        self.event(&format!("{OWN_MARK} -> {to} {label}: {text}"));
    }

    /// A private message from `from` delivered offline: it was queued at `time` (Unix
    /// seconds), shown after the label as `sent HH:MM`.
    pub fn offline_from(&self, from: &str, trust: Trust, time: u64, text: &str) {
        let (hhmm, _) = history_time(time);
        let label = offline_label(trust);
        self.event(&format!("{from} -> {OWN_MARK} {label} sent {hhmm}: {text}"));
    }

    /// What happened to a private message of ours sent by offline delivery.
    pub fn delivery(&self, to: &str, state: &str) {
        self.event(&format!("to {to}: {state}"));
    }

    /// Shows how many times the last warning came again, if it did, and forgets it.
    fn flush_repeated(&self) {
        let count = {
            let mut repeated = self.repeated.lock().unwrap_or_else(PoisonError::into_inner);
            repeated.last = None;
            std::mem::take(&mut repeated.count)
        };
        if count > 0 {
            self.emit(&format!(
                "[{}] !!! (the warning above came {count} more time(s))",
                local_time_hhmm()
            ));
        }
    }

    /// Writes one escaped line: wrapped into rows at the terminal's width on a terminal,
    /// kept whole when capturing or writing to a pipe or file (where nothing wraps).
    fn emit(&self, line: &str) {
        if let Some(sink) = &self.sink {
            let rows = match terminal_width() {
                Some(width) => wrap(line, width),
                None => vec![line.to_owned()],
            };
            for row in rows {
                sink(&row);
            }
            return;
        }
        match &self.captured {
            Some(lines) => lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line.to_owned()),
            None => {
                let mut out = std::io::stdout().lock();
                let rows = match terminal_width() {
                    Some(width) => wrap(line, width),
                    None => vec![line.to_owned()],
                };
                for row in rows {
                    let _ = writeln!(out, "{row}");
                }
                let _ = out.flush();
            }
        }
    }
}

/// Makes text from other users or the server safe to print as an event line: terminal
/// controls, bidirectional overrides and invisible characters replaced by U+FFFD, runs of
/// whitespace collapsed to one space. [`Screen`] applies it to everything it prints.
pub fn sanitize(text: &str) -> String {
    escape(text, true)
}

/// Replaces characters that could control the terminal (C0/C1 controls, escape, delete),
/// reorder what is shown (bidirectional overrides, isolates and marks) or hide themselves
/// (zero-width and other format characters) with U+FFFD; with `collapse`, also turns every
/// run of whitespace into one space, so nobody can pad a line into a fake row or hide text
/// behind a tab.
fn escape(text: &str, collapse: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() && (collapse || c == '\t') {
            if !in_space || !collapse {
                out.push(' ');
            }
            in_space = true;
            continue;
        }
        in_space = false;
        let hidden = matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{00AD}'
                | '\u{061C}'
                | '\u{FFF9}'..='\u{FFFB}'
        );
        if c.is_control() || hidden {
            out.push('\u{FFFD}');
        } else {
            out.push(c);
        }
    }
    out
}

/// Columns a character may take on screen, over-estimated: terminals disagree about the
/// width of emoji and East Asian "ambiguous" characters, and a character wider than counted
/// would make the terminal wrap before the client and start a row with another user's
/// text. So anything that is not printable ASCII counts as two.
fn columns(c: char) -> usize {
    if c.is_ascii() {
        1
    } else {
        2
    }
}

/// Splits one escaped line into rows of at most `width - 1` columns (the last column is
/// left free so that no terminal wraps on its own); every row after the first begins with
/// [`CONTINUATION`].
fn wrap(line: &str, width: usize) -> Vec<String> {
    let limit = width.max(MIN_WIDTH) - 1;
    let mut rows = Vec::new();
    let mut row = String::new();
    let mut used = 0;
    for c in line.chars() {
        let w = columns(c);
        if used + w > limit {
            rows.push(std::mem::take(&mut row));
            row.push_str(CONTINUATION);
            used = CONTINUATION.len();
        }
        row.push(c);
        used += w;
    }
    rows.push(row);
    rows
}

/// The width in columns of the terminal standard output is, or `None` when it is not a
/// terminal. Asked on every line, so a resized terminal is followed.
fn terminal_width() -> Option<usize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes only into the `winsize` it is given.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// The local wall-clock time as `HH:MM`.
pub fn local_time_hhmm() -> String {
    // SAFETY: `time(NULL)` has no preconditions.
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    local_time(now).map_or_else(|| "--:--".to_owned(), |tm| hhmm(&tm))
}

/// A history line's row time (`HH:MM`, local) and label: [`HISTORY_LABEL`], with the
/// date added when the line was sent on another day than today. A time the server could
/// not have meant (beyond what the platform represents) shows as `--:--`.
fn history_time(time: u64) -> (String, String) {
    // SAFETY: `time(NULL)` has no preconditions.
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    let sent = libc::time_t::try_from(time).ok().and_then(local_time);
    let Some(sent) = sent else {
        return ("--:--".to_owned(), HISTORY_LABEL.to_owned());
    };
    let today = local_time(now).map(|tm| (tm.tm_year, tm.tm_yday));
    let label = if today == Some((sent.tm_year, sent.tm_yday)) {
        HISTORY_LABEL.to_owned()
    } else {
        format!(
            "[room, history, {}-{:02}-{:02}]",
            i64::from(sent.tm_year) + 1900,
            sent.tm_mon + 1,
            sent.tm_mday
        )
    };
    (hhmm(&sent), label)
}

/// `time` broken down in the local time zone, or `None` if it cannot be.
fn local_time(time: libc::time_t) -> Option<libc::tm> {
    // SAFETY: `localtime_r` reads `time` and writes only into `tm`; a zeroed `tm` is valid.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        (!libc::localtime_r(&time, &mut tm).is_null()).then_some(tm)
    }
}

/// `HH:MM` of a broken-down time.
fn hhmm(tm: &libc::tm) -> String {
    format!("{:02}:{:02}", tm.tm_hour, tm.tm_min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_bidi_overrides_and_invisible_characters_are_neutralised() {
        assert_eq!(sanitize("hi\x1b[2Jthere"), "hi\u{FFFD}[2Jthere");
        assert_eq!(sanitize("abc\u{202E}cba"), "abc\u{FFFD}cba");
        assert_eq!(sanitize("ok é"), "ok é");
        assert_eq!(sanitize("bell\x07\u{9b}"), "bell\u{FFFD}\u{FFFD}");
        assert_eq!(sanitize("bob\u{200B}"), "bob\u{FFFD}");
        assert_eq!(sanitize("new\nline\r"), "new line ");
    }

    #[test]
    fn runs_of_whitespace_collapse_to_one_space() {
        assert_eq!(sanitize("a \t  b\u{00A0}\u{3000} c"), "a b c");
        assert_eq!(
            escape("  /msg USER   text", false),
            "  /msg USER   text",
            "fixed text keeps its alignment"
        );
        assert_eq!(escape("a\tb", false), "a b", "a tab is never printed");
    }

    #[test]
    fn wrapped_rows_after_the_first_carry_the_continuation_mark() {
        let line = format!("[08:06] bob {ROOM_LABEL}: {}", "x".repeat(200));
        let rows = wrap(&line, 80);
        assert!(rows.len() >= 3, "{rows:?}");
        assert!(rows[0].starts_with("[08:06] bob"));
        for row in &rows {
            assert!(row.chars().map(columns).sum::<usize>() < 80, "{row:?}");
        }
        for row in &rows[1..] {
            assert!(row.starts_with(CONTINUATION), "{row:?}");
        }
        let wide = "界".repeat(100);
        for row in wrap(&wide, 40) {
            assert!(row.chars().map(columns).sum::<usize>() < 40, "{row:?}");
        }
    }

    #[test]
    fn the_time_has_the_right_shape() {
        let t = local_time_hhmm();
        assert_eq!(t.len(), 5);
        assert_eq!(&t[2..3], ":");
    }

    #[test]
    fn history_lines_carry_their_own_time_and_a_date_when_not_from_today() {
        // SAFETY: `time(NULL)` has no preconditions.
        let now = unsafe { libc::time(std::ptr::null_mut()) } as u64;
        let (row, label) = history_time(now);
        assert_eq!(row, local_time_hhmm());
        assert_eq!(label, HISTORY_LABEL);
        // Two days ago, whatever the time zone.
        let (_, label) = history_time(now - 2 * 86_400);
        assert!(label.starts_with("[room, history, 20"), "{label}");
        assert_eq!(label.len(), "[room, history, 2026-12-01]".len(), "{label}");
        assert_eq!(history_time(u64::MAX).0, "--:--");
        let screen = Screen::capture();
        screen.history(now, "bob", "hi\tthere\x1b[2J");
        screen.own_history(now, "mine");
        let lines = screen.lines();
        assert!(
            lines[0].ends_with("] bob [room, history]: hi there\u{FFFD}[2J"),
            "{lines:?}"
        );
        assert!(
            lines[1].ends_with("] (you) [room, history]: mine"),
            "{lines:?}"
        );
    }

    #[test]
    fn users_of_other_servers_are_shown_with_their_full_address() {
        let screen = Screen::capture();
        screen.room("alice@a.test", "hi");
        screen.private_from("alice@a.test", Trust::FirstUse, "psst");
        screen.private_to("alice@a.test", Trust::Verified, "back");
        screen.offline_from("alice@a.test", Trust::FirstUse, 0, "later");
        screen.delivery("alice@a.test", "delivered");
        let lines = screen.lines();
        assert!(lines[0].ends_with("] alice@a.test [room]: hi"), "{lines:?}");
        assert!(
            lines[1]
                .ends_with("] alice@a.test -> (you) [private, e2e, first use, not verified]: psst"),
            "{lines:?}"
        );
        assert!(
            lines[2].ends_with("] (you) -> alice@a.test [private, e2e, verified]: back"),
            "{lines:?}"
        );
        assert!(
            lines[3].contains("] alice@a.test -> (you) [private, e2e offline, first use"),
            "{lines:?}"
        );
        assert!(
            lines[4].ends_with("] to alice@a.test: delivered"),
            "{lines:?}"
        );
    }

    #[test]
    fn own_lines_and_trust_states_are_marked_and_repeated_warnings_counted() {
        let screen = Screen::capture();
        screen.print("one");
        screen.own_room("hi");
        screen.private_from("bob", Trust::FirstUse, "psst");
        for _ in 0..5 {
            screen.warn("rate-limited");
        }
        screen.info("done");
        let lines = screen.lines();
        assert_eq!(lines[0], "one");
        assert!(lines[1].ends_with("(you) [room]: hi"), "{lines:?}");
        assert!(
            lines[2].ends_with("bob -> (you) [private, e2e, first use, not verified]: psst"),
            "{lines:?}"
        );
        assert!(lines[3].ends_with("!!! rate-limited"), "{lines:?}");
        assert!(lines[4].ends_with("came 4 more time(s))"), "{lines:?}");
        assert!(lines[5].ends_with("* done"), "{lines:?}");
        assert_eq!(lines.len(), 6);
    }
}
