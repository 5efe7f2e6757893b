//! One module per subcommand; `main.rs` only parses and dispatches.

pub mod common;
pub mod keygen;
pub mod push;
