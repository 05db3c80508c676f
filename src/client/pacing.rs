//! The client paces itself to the server's limits, so that a paste of 200 lines is sent,
//! not refused: every frame waits in one queue, in order, and leaves when a token bucket
//! like the server's has a token for it. Pure: the caller gives the time and writes what
//! [`Pacer::due`] hands out.
//!
//! The bucket is the server's ([`TokenBucket`], same arithmetic) with the announced rate
//! and half the announced burst: frames leave here at the allowed rate, and the margin
//! absorbs frames that the network delivers closer together than they were sent.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::rate::TokenBucket;

/// A message the user typed, as it is shown once sent and sent again after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A line for the public room.
    Room(String),
    /// A private message for `to`.
    Private {
        /// The recipient.
        to: String,
        /// The text, as typed.
        text: String,
    },
}

/// One frame waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The request line, without its line end.
    pub line: String,
    /// The user's message this frame carries, if any: shown as sent only once the frame
    /// is written, never while it still waits here.
    pub message: Option<Message>,
}

/// The queue of frames and the bucket they leave through.
pub struct Pacer {
    /// Tokens for frames, refilled at the server's rate.
    bucket: TokenBucket,
    /// Frames not yet sent, oldest first. Invariant: they are handed out in this order.
    queue: VecDeque<Outgoing>,
    /// The server's rate, frames per second, for telling the user (0: unlimited).
    rate: u32,
}

impl Pacer {
    /// A pacer for a server that allows `rate` frames per second and bursts of `burst`
    /// (`rate == 0`: no limit).
    pub fn new(rate: u32, burst: u32) -> Pacer {
        Pacer {
            bucket: TokenBucket::new(rate, (burst / 2).max(1)),
            queue: VecDeque::new(),
            rate,
        }
    }

    /// Queues a frame behind everything queued before.
    pub fn push(&mut self, line: String) {
        self.queue.push_back(Outgoing {
            line,
            message: None,
        });
    }

    /// Marks the frame queued last as carrying `message` (a private message is sealed
    /// into a frame before the end-to-end layer says which message it was).
    pub fn mark_last(&mut self, message: Message) {
        if let Some(last) = self.queue.back_mut() {
            last.message = Some(message);
        }
    }

    /// The user's messages waiting here.
    pub fn messages(&self) -> usize {
        self.queue.iter().filter(|o| o.message.is_some()).count()
    }

    /// The frames that may leave at `now`, in order.
    pub fn due(&mut self, now: Instant) -> Vec<Outgoing> {
        self.bucket.refill(now);
        let mut due = Vec::new();
        while !self.queue.is_empty() && self.bucket.take() {
            due.extend(self.queue.pop_front());
        }
        due
    }

    /// Puts a frame that could not be written back at the head of the queue.
    pub fn put_back(&mut self, outgoing: Outgoing) {
        self.queue.push_front(outgoing);
    }

    /// How long until the next queued frame may leave; `None` when nothing waits.
    pub fn next_due(&self) -> Option<Duration> {
        (!self.queue.is_empty()).then(|| self.bucket.time_to_token())
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The server's rate in frames per second (0: unlimited).
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Empties the queue (the connection was lost), returning what waited.
    pub fn take_all(&mut self) -> Vec<Outgoing> {
        self.queue.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_leaves_at_once_and_the_rest_at_the_rate_in_order() {
        let mut pacer = Pacer::new(10, 20);
        for i in 0..30 {
            pacer.push(format!("SAY {i}"));
        }
        let start = Instant::now();
        let first = pacer.due(start);
        assert_eq!(first.len(), 10, "half the burst at once");
        assert_eq!(first[0].line, "SAY 0");
        assert!(pacer.due(start).is_empty());
        assert_eq!(pacer.next_due(), Some(Duration::from_millis(100)));
        let later = pacer.due(start + Duration::from_millis(500));
        let lines: Vec<&str> = later.iter().map(|o| o.line.as_str()).collect();
        assert_eq!(lines, ["SAY 10", "SAY 11", "SAY 12", "SAY 13", "SAY 14"]);
        assert_eq!(pacer.len(), 15);
    }

    #[test]
    fn frames_put_back_leave_first_and_in_their_order() {
        let mut pacer = Pacer::new(0, 0);
        for line in ["a", "b", "c"] {
            pacer.push(line.into());
        }
        let due = pacer.due(Instant::now());
        pacer.push("d".into());
        for outgoing in due.into_iter().skip(1).rev() {
            pacer.put_back(outgoing);
        }
        let lines: Vec<String> = pacer
            .due(Instant::now())
            .into_iter()
            .map(|o| o.line)
            .collect();
        assert_eq!(lines, ["b", "c", "d"]);
    }

    #[test]
    fn the_message_belongs_to_the_frame_queued_last() {
        let mut pacer = Pacer::new(0, 0);
        pacer.push("GETKEY bob".into());
        pacer.push("MSG bob x".into());
        let hi = Message::Private {
            to: "bob".into(),
            text: "hi".into(),
        };
        pacer.mark_last(hi.clone());
        assert_eq!(pacer.messages(), 1);
        let due = pacer.due(Instant::now());
        assert_eq!(due[0].message, None);
        assert_eq!(due[1].message, Some(hi));
        assert_eq!(pacer.next_due(), None);
    }
}
