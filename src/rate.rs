//! A token bucket: `rate` events per second on average, `burst` at once. The server
//! limits each connection's frames with it, and the client paces itself with the same
//! arithmetic to the limits the server announces, so the two cannot disagree.

use std::time::{Duration, Instant};

/// A per-connection token bucket: `rate` frames per second on average, `burst` at once.
/// Keeps one client from monopolising the router; refills lazily, so it costs nothing
/// while the client is quiet.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens available now (fractional while refilling).
    tokens: f64,
    /// The most tokens the bucket holds.
    burst: f64,
    /// Tokens added per second; 0 disables the limit.
    rate: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate == 0` means unlimited.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst.max(1)),
            burst: f64::from(burst.max(1)),
            rate: f64::from(rate),
            refilled: Instant::now(),
        }
    }

    /// A bucket of `count`, full at `now`, that refills `count` a minute (rates below one a second,
    /// such as the server's `BUNDLE` budget).
    pub fn per_minute(count: u32, now: Instant) -> TokenBucket {
        let mut bucket = TokenBucket::new(1, count);
        bucket.rate = f64::from(count) / 60.0;
        bucket.refilled = now;
        bucket
    }

    /// Adds the tokens earned since the last refill. Call once per batch of frames.
    pub fn refill(&mut self, now: Instant) {
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
    }

    /// Whether the bucket is full (as of the last refill): nothing taken is still owed.
    pub fn is_full(&self) -> bool {
        self.tokens >= self.burst
    }

    /// How long after the last refill one token will be there (zero if one is now). The
    /// client paces itself with this to the limits the server announced.
    pub fn time_to_token(&self) -> Duration {
        if self.rate == 0.0 || self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Takes one token; `false` if the bucket is empty (the frame is over the limit).
    pub fn take(&mut self) -> bool {
        self.take_many(1.0)
    }

    /// Takes `n` tokens at once (a cost in bytes, say); `false`, taking none, if fewer
    /// are there.
    pub fn take_many(&mut self, n: f64) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3);
        bucket.refill(start);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take());
        bucket.refill(start + Duration::from_millis(250)); // 2.5 tokens earned
        assert!(bucket.take() && bucket.take());
        assert!(!bucket.take());
        let mut unlimited = TokenBucket::new(0, 1);
        assert!((0..1000).all(|_| unlimited.take()));
    }
}
