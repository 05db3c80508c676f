//! The client side: the connection to a server, and (in the terminal client) the menu,
//! the commands and the end-to-end layer.

pub mod link;
