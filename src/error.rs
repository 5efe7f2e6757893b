//! Errors the user sees: one line saying what and where, and a documented
//! exit code (README, "Exit codes").

use std::path::PathBuf;

/// Exit codes, documented in the README. Stable: scripts depend on them.
pub mod exit {
    pub const OK: i32 = 0;
    /// Anything not covered below (I/O on local files, internal errors).
    pub const FAILURE: i32 = 1;
    /// Command-line usage errors (clap uses 2 too).
    pub const USAGE: i32 = 2;
    /// The Nix store cannot be read: no DB, no `nix` on PATH.
    pub const STORE: i32 = 3;
    /// A path given is not a store path, or not valid in the store.
    pub const PATH: i32 = 4;
    /// A signing or public key file is missing or malformed.
    pub const KEY: i32 = 5;
    /// The binary cache target is unusable (unwritable, unreachable, bad URL).
    pub const CACHE: i32 = 6;
    /// Store contents do not match the DB (NAR hash mismatch).
    pub const INTEGRITY: i32 = 7;
    /// Bad input file (flake.lock, state file, archive).
    pub const INPUT: i32 = 8;
    /// `verify` found faults in a cache.
    pub const VERIFY: i32 = 9;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Nix store: {0}")]
    Store(String),
    #[error("{0}")]
    Path(String),
    /// A key given by file or option (`path` names which), never its value.
    #[error("{path}: {msg}")]
    Key { path: PathBuf, msg: String },
    #[error("binary cache {url}: {msg}")]
    Cache { url: String, msg: String },
    #[error("{0}")]
    Integrity(String),
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Verify(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Error {
    /// The same error once more, for a failure two steps report (one
    /// failed preparation, one unreadable key). `Other` keeps its message
    /// and its exit code.
    pub fn again(&self) -> Error {
        match self {
            Error::Store(m) => Error::Store(m.clone()),
            Error::Path(m) => Error::Path(m.clone()),
            Error::Key { path, msg } => Error::Key {
                path: path.clone(),
                msg: msg.clone(),
            },
            Error::Cache { url, msg } => Error::Cache {
                url: url.clone(),
                msg: msg.clone(),
            },
            Error::Integrity(m) => Error::Integrity(m.clone()),
            Error::Input { path, msg } => Error::Input {
                path: path.clone(),
                msg: msg.clone(),
            },
            Error::Usage(m) => Error::Usage(m.clone()),
            Error::Verify(m) => Error::Verify(m.clone()),
            Error::Other(e) => Error::Other(anyhow::anyhow!("{e:#}")),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Store(_) => exit::STORE,
            Error::Path(_) => exit::PATH,
            Error::Key { .. } => exit::KEY,
            Error::Cache { .. } => exit::CACHE,
            Error::Integrity(_) => exit::INTEGRITY,
            Error::Input { .. } => exit::INPUT,
            Error::Usage(_) => exit::USAGE,
            Error::Verify(_) => exit::VERIFY,
            Error::Other(_) => exit::FAILURE,
        }
    }

    pub fn cache(url: &str, msg: impl std::fmt::Display) -> Self {
        Error::Cache {
            url: url.to_string(),
            msg: msg.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
