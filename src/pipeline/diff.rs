//! The store diff: paths valid now that were not at the snapshot.

use std::collections::HashSet;

use crate::error::Result;
use crate::nix::StorePath;
use crate::pipeline::snapshot::State;
use crate::store::{PathInfo, Store};

/// New paths in registration order. By id (one indexed range query) when
/// both the snapshot and now read the DB; else a whole-store set difference.
pub fn diff(store: &Store, state: &State) -> Result<Vec<PathInfo>> {
    if let (Some(snapshot), true) = (&state.snapshot, store.reads_db()) {
        return store.paths_since(snapshot);
    }
    tracing::warn!("diffing by listing the whole store (slower): the Nix DB is not readable");
    let before: HashSet<&str> = match &state.all_paths {
        Some(all) => all.iter().map(String::as_str).collect(),
        None => {
            // Snapshot by id but no DB now: ids are unknown, so list.
            return Err(crate::error::Error::Store(
                "start read the Nix DB by id but finish cannot; run both the same way".into(),
            ));
        }
    };
    let new: Vec<StorePath> = store
        .all_paths()?
        .into_iter()
        .filter(|p| !before.contains(p.to_string().as_str()))
        .collect();
    Ok(store.path_infos(&new)?.into_iter().flatten().collect())
}
