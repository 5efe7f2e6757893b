//! One module per subcommand; `main.rs` only parses and dispatches.

pub mod archive;
pub mod common;
pub mod configure;
pub mod keygen;
pub mod push;
pub mod report;
pub mod track;
pub mod verify;
