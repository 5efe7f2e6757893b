//! One module per subcommand; `main.rs` only parses and dispatches.

pub mod archive;
pub mod common;
pub mod config;
pub mod configure;
pub mod failed;
pub mod keep_failed;
pub mod key;
pub mod keygen;
pub mod progress;
pub mod push;
pub mod report;
pub mod track;
pub mod track_args;
pub mod verify;
pub mod watch;

use std::ffi::OsString;
use std::sync::OnceLock;

static ARGV: OnceLock<Vec<OsString>> = OnceLock::new();

/// The command line as parsed: with a CI's inputs added, when they were.
pub fn set_argv(argv: Vec<OsString>) {
    let _ = ARGV.set(argv);
}

pub fn argv() -> Vec<OsString> {
    ARGV.get()
        .cloned()
        .unwrap_or_else(|| std::env::args_os().collect())
}
