//! The client side: the connection to a server, and (in the terminal client) the menu,
//! the commands and the end-to-end layer.

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
