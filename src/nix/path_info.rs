//! What a store knows about one valid path (as `nix path-info --json`
//! shows it): the record the push plan, narinfos and archives are made from.

use super::{Sha256Hash, StorePath};

/// What the store knows about one valid path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    /// `ValidPaths.id`; 0 when read through the CLI.
    pub id: i64,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    /// Sorted; may include the path itself.
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}
