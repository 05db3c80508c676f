//! securechat's benchmark, as a library the two binaries share: `bench` (`src/main.rs`, the
//! load generator's command line) and `figures` (`src/bin/figures.rs`, which redraws the SVG
//! figures from result files).
//!
//! Every client here is a real TLS connection to real server code: a server child process
//! built from the `securechat` library (or a running server), never a mock. The modules, in
//! the order a run uses them:
//!
//! * [`target`]: the server under load (a child process or `--server HOST:PORT`) and its
//!   CPU, memory and threads read from `/proc`.
//! * [`clients`]: one benchmark connection (TLS handshake, register, log in) and opening
//!   many at once.
//! * [`pairs`]: sender/receiver pairs, flood or fixed rate (`--flood`, `--rate`, `--sweep`).
//! * [`idle`]: memory per idle logged-in connection (`--idle`).
//! * [`storm`]: a login storm during steady chat (`--storm`).
//! * [`offline`]: queued mail drained by many users logging in at once (`--offline`).
//! * [`soak`]: many clients doing random things, checked end to end (`--soak`).
//! * [`dh`]: the cost of one end-to-end key agreement, beside `openssl speed` (`--dh`).
//! * [`results`]: what a run measured, as written to its JSON file.
//! * [`table`]: the human-readable summary on stdout.
//! * [`spread`]: several runs of one measurement as median and range, and the tables.
//! * [`peers`]: the IRC comparison's result files (the peer lab's `chatbench`), read back.
//! * [`render`]: the SVG figures drawn from [`results::Report`]s and the peer results.
//!
//! The measurements and how to reproduce them are in `report/performance.md`.

pub mod clients;
pub mod dh;
pub mod federated;
pub mod idle;
pub mod offline;
pub mod pairs;
pub mod peers;
pub mod render;
pub mod results;
pub mod soak;
pub mod spread;
pub mod storm;
pub mod table;
pub mod target;
