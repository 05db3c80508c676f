//! The room's history: the last N room lines, kept by the router in memory and by a
//! writer thread in the database, and replayed at login to clients that ask for it.
//!
//! **Where it lives, and why.** The router owns the lines in memory ([`RoomHistory`]),
//! because the router is the one thread that orders room lines and logins: a room line it
//! fans out before it handles a login is in the history that login replays, and one it
//! fans out after reaches the new client live. So a line sent just as someone logs in
//! reaches them exactly once, as `HISTORY` or as `ROOM`, and in order — the guarantee
//! `report/protocol.md` §9 states. Reading the database at login instead could not give
//! it: the write of a line and the login would race.
//!
//! **Keeping the router fast.** The router never touches the database. Each line it
//! records is handed to a writer thread through a bounded channel with a non-blocking
//! send ([`HistoryWriter`]); the writer takes everything waiting and stores it in one
//! transaction, which also trims the table to the last N rows, so a burst of room lines
//! costs one commit, not one each. If the writer ever falls [`WRITER_QUEUE_LINES`] lines
//! behind, further lines are still replayed from memory but not stored (a warning says
//! so): the router never waits for the database. The database copy is what a
//! restart starts from; lines still in the channel when the server is killed are lost,
//! and a clean shutdown waits for the writer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::outbox::{Line, TextFrame};
use super::store::Storage;
use crate::error::Result;
use crate::protocol;
use crate::protocol::name::Address;

/// Lines that may wait for the writer. Ample: one commit stores everything waiting, and
/// room lines are rate-limited per user; a writer this far behind has a stuck disk.
const WRITER_QUEUE_LINES: usize = 4096;

/// One room line as history: who sent it, when, and its `HISTORY` frame, built once.
#[derive(Debug, Clone)]
pub(super) struct HistoryLine {
    /// When the router relayed it, in seconds since the Unix epoch.
    time: u64,
    /// Its sender: the authenticated user of the connection that sent it, or a user of a
    /// linked server (full address) whose line that server shared.
    sender: Address,
    /// The complete `HISTORY <time> <sender> <text>` frame.
    frame: TextFrame,
}

impl HistoryLine {
    /// The history line for `text`, sent by `sender` at `time` (Unix seconds).
    pub(super) fn new(time: u64, sender: impl Into<Address>, text: &str) -> HistoryLine {
        let sender = sender.into();
        // A local sender (every line the router records for its own users: the hot path)
        // is written as it is; only a peer's needs its address assembled.
        let frame = TextFrame::new(text, |out| match &sender.server {
            None => protocol::write_history(out, time, sender.user.as_str(), text),
            Some(_) => protocol::write_history(out, time, &sender.to_string(), text),
        });
        HistoryLine {
            time,
            sender,
            frame,
        }
    }

    /// When the router relayed it (Unix seconds).
    pub(super) fn time(&self) -> u64 {
        self.time
    }

    /// Who sent it.
    pub(super) fn sender(&self) -> &Address {
        &self.sender
    }

    /// What was said.
    pub(super) fn text(&self) -> &str {
        self.frame.text()
    }

    /// The `HISTORY` frame, shared by every client it is replayed to.
    fn line(&self) -> Line {
        self.frame.line()
    }
}

/// The last room lines, oldest first, owned by the router.
pub(super) struct RoomHistory {
    /// At most `keep` lines, oldest first.
    lines: VecDeque<HistoryLine>,
    /// How many lines are kept (0 = history is off: nothing is recorded).
    keep: usize,
    /// Where recorded lines go to be stored; `None` when nothing is stored (off, or in
    /// the router's unit tests).
    writer: Option<Sender<HistoryLine>>,
    /// Lines not stored because the writer was behind, since the last warning.
    unsaved: u64,
}

impl RoomHistory {
    /// A history keeping the last `keep` lines, starting from `lines` (the stored ones,
    /// oldest first), handing new ones to `writer`.
    pub(super) fn new(
        keep: usize,
        lines: Vec<HistoryLine>,
        writer: Option<Sender<HistoryLine>>,
    ) -> RoomHistory {
        let mut lines = VecDeque::from(lines);
        while lines.len() > keep {
            lines.pop_front();
        }
        RoomHistory {
            lines,
            keep,
            writer,
            unsaved: 0,
        }
    }

    /// Records a room line the router has just fanned out, stamped with the time now.
    pub(super) fn record(&mut self, sender: impl Into<Address>, text: &str) {
        if self.keep == 0 {
            return;
        }
        let line = HistoryLine::new(unix_now(), sender, text);
        if self.lines.len() == self.keep {
            self.lines.pop_front();
        }
        self.lines.push_back(line.clone());
        let Some(writer) = &self.writer else {
            return;
        };
        match writer.try_send(line) {
            Ok(()) if self.unsaved > 0 => {
                log::warn!(
                    "room history: the database writer caught up; {} lines were not stored",
                    std::mem::take(&mut self.unsaved)
                );
            }
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self.unsaved == 0 {
                    log::warn!(
                        "room history: the database writer is {WRITER_QUEUE_LINES} lines \
                         behind; room lines are replayed but not stored until it catches up"
                    );
                }
                self.unsaved += 1;
            }
            Err(TrySendError::Disconnected(_)) => {
                log::error!("room history: the database writer has stopped; not storing");
                self.writer = None;
            }
        }
    }

    /// The `HISTORY` frames to replay at login, oldest first: the newest lines whose
    /// frames fit in `budget` bytes together (the client's room queue, so that the replay
    /// itself is never skipped).
    pub(super) fn replay(&self, budget: usize) -> impl Iterator<Item = Line> + '_ {
        let mut used = 0;
        let fitting = self
            .lines
            .iter()
            .rev()
            .take_while(|line| {
                used += line.frame.size();
                used <= budget
            })
            .count();
        self.lines
            .iter()
            .skip(self.lines.len() - fitting)
            .map(HistoryLine::line)
    }
}

/// The thread that stores recorded room lines, and the channel the router feeds it by.
pub(super) struct HistoryWriter {
    /// The thread; it ends once every sender is gone and what they sent is stored.
    pub(super) thread: JoinHandle<()>,
    /// The router's end of the channel.
    pub(super) sender: Sender<HistoryLine>,
}

/// Starts the writer that stores room lines in `store`, keeping the last `keep`.
pub(super) fn start_writer(store: Arc<dyn Storage>, keep: usize) -> Result<HistoryWriter> {
    let (sender, receiver) = crossbeam_channel::bounded(WRITER_QUEUE_LINES);
    let thread = thread::Builder::new()
        .name("history".into())
        .spawn(move || write_loop(&*store, keep, &receiver))?;
    Ok(HistoryWriter { thread, sender })
}

/// Stores every line waiting, in one transaction per wake-up, until the router is gone.
fn write_loop(store: &dyn Storage, keep: usize, receiver: &Receiver<HistoryLine>) {
    let mut batch = Vec::new();
    while let Ok(first) = receiver.recv() {
        batch.push(first);
        batch.extend(receiver.try_iter());
        if let Err(e) = store.append_room_history(&batch, keep) {
            log::error!("room history: {} lines not stored: {e}", batch.len());
        }
        batch.clear();
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::name::UserName;

    fn name(user: &str) -> UserName {
        UserName::parse(user).unwrap()
    }

    fn frames(history: &RoomHistory, budget: usize) -> Vec<String> {
        history
            .replay(budget)
            .map(|line| String::from_utf8(line.as_bytes().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_history_line_knows_its_parts_and_its_frame() {
        let line = HistoryLine::new(1_700_000_000, name("alice"), "hi  there");
        assert_eq!(
            line.line().as_bytes(),
            b"HISTORY 1700000000 alice hi  there\n"
        );
        assert_eq!(line.text(), "hi  there");
        assert_eq!(line.sender().to_string(), "alice");
        assert_eq!(line.time(), 1_700_000_000);
        assert_eq!(HistoryLine::new(5, name("bob"), "").text(), "");
    }

    #[test]
    fn only_the_last_lines_are_kept_and_replayed_oldest_first_within_the_budget() {
        let mut history = RoomHistory::new(3, Vec::new(), None);
        for text in ["one", "two", "three", "four"] {
            history.record(name("alice"), text);
        }
        let texts: Vec<&str> = history.lines.iter().map(HistoryLine::text).collect();
        assert_eq!(texts, ["two", "three", "four"]);
        let all = frames(&history, usize::MAX);
        assert_eq!(all.len(), 3);
        assert!(all[0].ends_with(" alice two\n") && all[2].ends_with(" alice four\n"));
        // A budget for two frames replays the newest two.
        let two = all[1].len() + all[2].len();
        assert_eq!(frames(&history, two), all[1..]);
        assert!(frames(&history, 3).is_empty());
    }

    #[test]
    fn with_history_off_nothing_is_recorded() {
        let mut history = RoomHistory::new(0, Vec::new(), None);
        history.record(name("alice"), "hello");
        assert_eq!(frames(&history, usize::MAX).len(), 0);
    }
}
