//! The input line: what the user types, on its own thread.
//!
//! On a terminal the line editor (rustyline) owns it: arrows, Home/End and the usual
//! Emacs keys edit the line; Up recalls earlier lines (history, kept per user with mode
//! 0600, or not at all with `--no-history`; lines that start with a space are not kept);
//! Tab completes commands and the names of users seen online. Lines from other threads
//! are printed *above* the input line through the editor's external printer, so a
//! half-typed line is never split or lost, and what is on screen is exactly what is sent.
//!
//! When the editor cannot drive the terminal (`TERM=dumb`, or standard input or output
//! not a terminal: scripts, tests, pipes), input is read as plain lines and output printed
//! as plain lines; everything else works the same.
//!
//! Passwords never pass through here: they are read before the editor starts, by a hidden
//! prompt, so the history cannot hold one.

use std::fs::OpenOptions;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rustyline::completion::Completer;
use rustyline::config::{CompletionType, Config};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, ExternalPrinter, Helper};

use crate::client::app::OnlineNames;
use crate::client::commands::HELP;
use crate::client::screen::Screen;
use crate::error::{Error, Result};

/// Lines of history kept.
const HISTORY_LINES: usize = 1000;

/// What the input thread reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Typed {
    /// A line (a paste of several lines arrives as one, joined by `\n`).
    Line(String),
    /// End of input: Ctrl-D on an empty line, or the end of a script.
    End,
    /// Ctrl-C at the input line.
    Interrupted,
}

/// Whether the line editor can drive this terminal.
pub fn editor_usable() -> bool {
    // SAFETY: isatty only inspects the descriptors.
    let terminals =
        unsafe { libc::isatty(libc::STDIN_FILENO) == 1 && libc::isatty(libc::STDOUT_FILENO) == 1 };
    let term = std::env::var("TERM").unwrap_or_default();
    terminals && !matches!(term.as_str(), "dumb" | "cons25" | "emacs")
}

/// The running input thread, seen from the chat loop.
pub struct Input {
    /// The next prompt, sent after each line is handled (the editor waits for it, so
    /// that the prompt always shows where the *next* line goes). `None` for plain lines.
    prompts: Option<Sender<String>>,
    /// Where the chat's lines go.
    screen: Screen,
    /// True while the editor owns the terminal; cleared at exit, after which lines are
    /// printed directly.
    editing: Arc<AtomicBool>,
    /// Rows for the printer thread, while the editor owns the terminal (`None` for plain
    /// lines).
    rows: Option<Sender<Row>>,
}

/// What the printer thread is handed.
enum Row {
    /// A row to print above the input line.
    Text(String),
    /// Everything handed before has been printed: say so.
    Flushed(Sender<()>),
}

/// How long [`Input::finish`] waits for rows still on their way to the screen.
const FLUSH_WAIT: Duration = Duration::from_millis(500);

/// The printer thread: hands each row to the editor's external printer, in order.
///
/// It has its own thread because that printer can block: rustyline passes each row to the
/// running `readline` through a channel of *one* slot, and a row sent in the instant after
/// `readline` took the user's Enter (still in raw mode, no longer reading) waits in that
/// slot until the next `readline`. A second row then blocks its sender until that next
/// `readline` starts — which it does only once the chat has handled the line and sent the
/// next prompt. Printing on the chat's own thread, that was a deadlock: the chat stopped,
/// mid-way through a burst of lines, exactly when the user pressed Enter.
fn print_rows(mut printer: impl ExternalPrinter, rows: &Receiver<Row>) {
    for row in rows {
        match row {
            Row::Text(text) => {
                if printer.print(format!("{text}\n")).is_err() {
                    let mut out = io::stdout().lock();
                    let _ = writeln!(out, "{text}");
                    let _ = out.flush();
                }
            }
            Row::Flushed(done) => {
                let _ = done.send(());
            }
        }
    }
}

impl Input {
    /// Starts reading input: with the line editor if `editor` and the terminal allows it,
    /// else plain lines. Each input goes to `deliver`; the thread ends when it returns
    /// `false`.
    pub fn start(
        editor: bool,
        history: Option<PathBuf>,
        online: OnlineNames,
        first_prompt: String,
        deliver: impl Fn(Typed) -> bool + Send + 'static,
    ) -> Result<Input> {
        if editor && editor_usable() {
            return Input::start_editor(history, online, first_prompt, deliver);
        }
        thread::Builder::new().name("input".into()).spawn(move || {
            for line in io::stdin().lock().lines() {
                match line {
                    Ok(line) => {
                        if !deliver(Typed::Line(line)) {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            deliver(Typed::End);
        })?;
        Ok(Input {
            prompts: None,
            screen: Screen::stdout(),
            editing: Arc::new(AtomicBool::new(false)),
            rows: None,
        })
    }

    fn start_editor(
        history: Option<PathBuf>,
        online: OnlineNames,
        first_prompt: String,
        deliver: impl Fn(Typed) -> bool + Send + 'static,
    ) -> Result<Input> {
        let config = Config::builder()
            .auto_add_history(false)
            .history_ignore_space(true)
            .max_history_size(HISTORY_LINES)
            .map_err(editor_error)?
            .completion_type(CompletionType::List)
            .build();
        let mut editor: Editor<Completion, FileHistory> =
            Editor::with_config(config).map_err(editor_error)?;
        editor.set_helper(Some(Completion { online }));
        if let Some(path) = &history {
            prepare_history_file(path)?;
            editor.load_history(path).map_err(editor_error)?;
        }
        let editing = Arc::new(AtomicBool::new(true));
        let printer = editor.create_external_printer().map_err(editor_error)?;
        let (rows, to_print) = crossbeam_channel::unbounded();
        thread::Builder::new()
            .name("printer".into())
            .spawn(move || print_rows(printer, &to_print))?;
        let screen = {
            let (editing, rows) = (editing.clone(), rows.clone());
            Screen::to_sink(Arc::new(move |text: &str| {
                if editing.load(Ordering::SeqCst) && rows.send(Row::Text(text.to_owned())).is_ok() {
                    return;
                }
                let mut out = io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }))
        };
        let (prompts, next_prompt) = crossbeam_channel::unbounded();
        thread::Builder::new()
            .name("input".into())
            .spawn(move || edit_lines(editor, history, first_prompt, &next_prompt, deliver))?;
        Ok(Input {
            prompts: Some(prompts),
            screen,
            editing,
            rows: Some(rows),
        })
    }

    /// Where the chat prints.
    pub fn screen(&self) -> Screen {
        self.screen.clone()
    }

    /// Whether the line editor is in use (not plain lines).
    pub fn is_editor(&self) -> bool {
        self.prompts.is_some()
    }

    /// Lets the editor read the next line, under `prompt`.
    pub fn next_line(&self, prompt: String) {
        if let Some(prompts) = &self.prompts {
            let _ = prompts.send(prompt);
        }
    }

    /// Stops printing through the editor (the caller restores the terminal): what is
    /// printed from now on goes straight to standard output, after the prompt line is
    /// cleared.
    pub fn finish(&self) {
        if let Some(rows) = &self.rows {
            // Rows handed to the printer go out before anything printed directly. (A row
            // caught in the editor's slot, see `print_rows`, waits for a `readline` that
            // will not come: hence the bound on the wait.)
            let (done, flushed) = crossbeam_channel::bounded(1);
            if rows.send(Row::Flushed(done)).is_ok() {
                let _ = flushed.recv_timeout(FLUSH_WAIT);
            }
        }
        if self.editing.swap(false, Ordering::SeqCst) {
            let mut out = io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
        }
    }
}

/// The editor thread: one line at a time, each delivered and then waiting for the prompt
/// of the next.
fn edit_lines(
    mut editor: Editor<Completion, FileHistory>,
    history: Option<PathBuf>,
    mut prompt: String,
    next_prompt: &Receiver<String>,
    deliver: impl Fn(Typed) -> bool,
) {
    loop {
        let typed = match editor.readline(&prompt) {
            Ok(line) => {
                if let Some(path) = &history {
                    if editor.add_history_entry(line.as_str()).unwrap_or(false) {
                        if let Err(e) = editor.save_history(path) {
                            log::warn!("cannot save the input history: {e}");
                        }
                    }
                }
                Typed::Line(line)
            }
            Err(ReadlineError::Interrupted) => Typed::Interrupted,
            Err(ReadlineError::Eof) => Typed::End,
            Err(e) => {
                log::warn!("the input line failed: {e}");
                deliver(Typed::End);
                return;
            }
        };
        if !deliver(typed) {
            return;
        }
        match next_prompt.recv() {
            Ok(next) => prompt = next,
            Err(_) => return,
        }
    }
}

/// Creates the history file owner-only, or makes an existing one so: it holds what the
/// user typed, which may be private.
fn prepare_history_file(path: &Path) -> Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn editor_error(e: ReadlineError) -> Error {
    Error::Config(format!("cannot start the input line: {e}"))
}

/// Tab completion: a command at the start of the line, else a user name seen online.
struct Completion {
    /// Who was seen online.
    online: OnlineNames,
}

impl Completer for Completion {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let before = line.get(..pos).unwrap_or(line);
        let start = before.rfind(char::is_whitespace).map_or(0, |at| {
            at + before[at..].chars().next().map_or(1, char::len_utf8)
        });
        let word = &before[start..];
        let candidates = if start == 0 && word.starts_with('/') {
            command_names()
                .filter(|name| name.starts_with(word))
                .map(|name| format!("{name} "))
                .collect()
        } else {
            self.online
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|name| !word.is_empty() && name.starts_with(word))
                .map(|name| format!("{name} "))
                .collect()
        };
        Ok((start, candidates))
    }
}

/// The commands, as the help text lists them (`/msg`, `/chat`, ...).
fn command_names() -> impl Iterator<Item = &'static str> {
    HELP.lines().filter_map(|line| {
        let word = line.split_whitespace().next()?;
        word.starts_with('/').then_some(word)
    })
}

impl Hinter for Completion {
    type Hint = String;
}

impl Highlighter for Completion {}

impl Validator for Completion {}

impl Helper for Completion {}

#[cfg(test)]
mod tests {
    use super::*;
    use rustyline::history::DefaultHistory;
    use std::sync::Mutex;

    fn complete(online: &[&str], line: &str) -> (usize, Vec<String>) {
        let helper = Completion {
            online: Arc::new(Mutex::new(online.iter().map(|s| (*s).to_owned()).collect())),
        };
        let history = DefaultHistory::new();
        let context = Context::new(&history);
        helper.complete(line, line.len(), &context).unwrap()
    }

    #[test]
    fn tab_completes_commands_then_names() {
        assert_eq!(complete(&[], "/ms"), (0, vec!["/msg ".to_owned()]));
        let (_, all) = complete(&[], "/");
        for command in ["/msg ", "/chat ", "/list ", "/dh ", "/quit "] {
            assert!(all.contains(&command.to_owned()), "{all:?}");
        }
        assert_eq!(
            complete(&["alice", "bob", "bert"], "/msg b"),
            (5, vec!["bert ".to_owned(), "bob ".to_owned()])
        );
        assert_eq!(complete(&["bob"], "hi "), (3, vec![]));
        assert_eq!(
            complete(&["bob", "bob@b.test", "carol@b.test"], "/msg bob@"),
            (5, vec!["bob@b.test ".to_owned()]),
            "addresses of users of other servers complete too"
        );
    }
}
