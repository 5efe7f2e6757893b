//! Pure Nix formats: no I/O beyond what a format needs to read its input
//! (the NAR writer walks a directory tree it is given).
//!
//! Everything here is tested against fixtures produced by real `nix`
//! (see `tests/fixtures/make-fixtures.sh`).

pub mod archive;
pub mod conf;
pub mod hash;
pub mod nar;
pub mod nar_unpack;
pub mod narinfo;
pub mod nix32;
pub mod path_info;
pub mod signing;
pub mod store_path;
pub mod store_url;

pub use hash::Sha256Hash;
pub use narinfo::NarInfo;
pub use path_info::PathInfo;
pub use signing::{PublicKey, SecretKey, Signature};
pub use store_path::StorePath;
pub use store_url::StoreSpec;

/// The logical store directory Nix uses unless configured otherwise.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";

/// Errors of the pure formats: always name what was being parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("invalid nix32 string {0:?}")]
    Nix32(String),
    #[error("invalid store path {0:?}: {1}")]
    StorePath(String, &'static str),
    #[error("invalid hash {0:?}: {1}")]
    Hash(String, &'static str),
    #[error("invalid narinfo: {0}")]
    NarInfo(String),
    #[error("invalid key: {0}")]
    Key(String),
    #[error("invalid signature {0:?}")]
    Signature(String),
}
