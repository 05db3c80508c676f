//! Fuzz target: every parser of untrusted input, fed the same arbitrary bytes — the
//! frame splitter, client requests (the server's input), server lines (the client's),
//! end-to-end payloads, user names, identity keys and the client's typed commands. Any panic
//! or hang is a bug. What an established session does with a payload past its syntax is
//! the `e2e_session` target's. (Public-value validation, `PublicValue::from_bytes`, is left
//! to its unit tests: it is one length check, three comparisons and a 7-21 ms
//! exponentiation, far too slow per input for millions of runs.)
//!
//! Run (from the repository root): `cargo install cargo-fuzz`, then
//! `ASAN_OPTIONS=detect_odr_violation=0 RUSTC_BOOTSTRAP=1 cargo fuzz run protocol -- -max_total_time=60`.
//! (Without the `ASAN_OPTIONS`, AddressSanitizer aborts at start-up on a one-definition
//! report inside the bundled SQLite, which these targets never call.)
//! The counts recorded in the report (§8, at least 10 million executions per target) were
//! run without a sanitizer, `cargo +nightly fuzz run -s none protocol -- -runs=11000000
//! -max_len=4096`: the decoders are safe Rust and the crate's only `unsafe` is system calls
//! in the server, so AddressSanitizer would add cost and no findings; a panic, a broken
//! assertion or a hang is still a crash.

#![no_main]

use libfuzzer_sys::fuzz_target;

use securechat::protocol::name::normalize_username;
use securechat::client::commands;
use securechat::e2e::{IdentityPublicKey, Payload};
use securechat::protocol::frame::LineBuffer;
use securechat::protocol::{Request, ServerLine};

fuzz_target!(|data: &[u8]| {
    let mut lines = LineBuffer::new(1024);
    // Two halves, so partial lines across reads are exercised too.
    let (first, second) = data.split_at(data.len() / 2);
    for part in [first, second] {
        lines.extend(part);
        let _ = lines.drain_lines(|line| {
            if let Ok(text) = line {
                let _ = Request::parse(text);
                let _ = ServerLine::parse(text);
                let _ = Payload::parse(text);
                let _ = commands::parse(text);
                let _ = normalize_username(text);
                let _ = IdentityPublicKey::from_base64(text);
            }
            true
        });
    }
});
