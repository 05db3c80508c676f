//! The client side: the connection to a server, and (in the terminal client) the menu,
//! the commands, the end-to-end layer, and offline delivery (`offline.rs`, over the keys and
//! sessions `mailbox.rs` keeps on disk).

pub mod app;
pub mod commands;
pub mod editor;
pub mod end_to_end;
pub mod link;
pub mod mailbox;
pub mod offline;
pub mod pacing;
pub mod paths;
pub mod screen;
pub mod terminal;
