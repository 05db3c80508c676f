//! What the terminal client prints: one line per event, with the local time, and never a
//! byte a peer could use to rewrite the user's terminal.
//!
//! Text from other users (and from the server, which is not trusted with private
//! messages) may contain escape sequences or bidirectional overrides meant to fake what
//! is on screen; [`sanitize`] replaces them before anything is printed.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

/// Prints one line somewhere other than standard output (the line editor's printer,
/// which keeps the half-typed input line below what it prints).
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// Where the client's output goes: the terminal, or a buffer in tests.
#[derive(Clone)]
pub struct Screen {
    /// Collected lines when capturing (tests); `None` prints to stdout.
    captured: Option<Arc<Mutex<Vec<String>>>>,
    /// Where lines go instead of standard output, when set.
    sink: Option<Sink>,
}

impl Screen {
    /// Prints to standard output.
    pub fn stdout() -> Screen {
        Screen {
            captured: None,
            sink: None,
        }
    }

    /// Hands every line to `sink` (which adds the line end).
    pub fn to_sink(sink: Sink) -> Screen {
        Screen {
            captured: None,
            sink: Some(sink),
        }
    }

    /// Collects lines in memory; read them with [`Screen::lines`].
    pub fn capture() -> Screen {
        Screen {
            captured: Some(Arc::new(Mutex::new(Vec::new()))),
            sink: None,
        }
    }

    /// Lines captured so far (empty when printing to stdout).
    pub fn lines(&self) -> Vec<String> {
        self.captured.as_ref().map_or_else(Vec::new, |c| {
            c.lock().unwrap_or_else(PoisonError::into_inner).clone()
        })
    }

    /// Prints one line prefixed with the local time.
    pub fn event(&self, text: &str) {
        self.print(&format!("[{}] {text}", local_time_hhmm()));
    }

    /// Prints one line as it is (help, menus).
    pub fn print(&self, text: &str) {
        if let Some(sink) = &self.sink {
            return sink(text);
        }
        match &self.captured {
            Some(lines) => lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(text.to_owned()),
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
        }
    }

    /// A warning the user must not miss.
    pub fn warn(&self, text: &str) {
        self.event(&format!("!!! {text}"));
    }
}

/// Replaces characters that could control the terminal (C0/C1 controls, escape, delete)
/// or reorder what is shown (bidirectional overrides and isolates) with U+FFFD.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}');
            if (c.is_control() && c != '\t') || bidi {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// The local wall-clock time as `HH:MM`.
pub fn local_time_hhmm() -> String {
    // SAFETY: `time(NULL)` has no preconditions; `localtime_r` writes only into `tm`.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return "--:--".to_owned();
        }
        format!("{:02}:{:02}", tm.tm_hour, tm.tm_min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_bidi_overrides_are_neutralised() {
        assert_eq!(sanitize("hi\x1b[2Jthere"), "hi\u{FFFD}[2Jthere");
        assert_eq!(sanitize("abc\u{202E}cba"), "abc\u{FFFD}cba");
        assert_eq!(sanitize("tab\tok é"), "tab\tok é");
        assert_eq!(sanitize("bell\x07\u{9b}"), "bell\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn the_time_has_the_right_shape() {
        let t = local_time_hhmm();
        assert_eq!(t.len(), 5);
        assert_eq!(&t[2..3], ":");
    }

    #[test]
    fn capture_collects_lines() {
        let screen = Screen::capture();
        screen.print("one");
        screen.warn("two");
        let lines = screen.lines();
        assert_eq!(lines[0], "one");
        assert!(lines[1].ends_with("!!! two"));
    }
}
