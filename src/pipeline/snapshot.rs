//! `start`: record where the store stands in a small versioned state file,
//! so `finish` (another process, maybe much later) can compute the diff.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nix::{StorePath, StoreSpec};
use crate::store::{Snapshot, Store};

pub const STATE_VERSION: u32 = 1;
const STATE_FILE: &str = "state.json";

/// What `start` leaves for `finish`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// The root of the store `start` saw (`None`: `/`). Two specs with
    /// one root (`DIR`, `local?root=DIR`, `unix://…?root=DIR`) are one DB.
    pub store_root: Option<PathBuf>,
    /// Set when the DB could be read: the diff is by id.
    pub snapshot: Option<Snapshot>,
    /// Set when it couldn't: every valid path, for a whole-store diff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_paths: Option<Vec<String>>,
    /// Unix seconds.
    pub started_at: u64,
    /// Extra facts other steps record (cache key, restored paths, ...).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The state directory: `--state-dir`, else `$RUNNER_TEMP/nixdelta` on
/// GitHub, else `$TMPDIR/nixdelta-<uid>`. Never the working directory:
/// a file there could end up in a `./.` source and change its hash.
pub fn default_state_dir() -> PathBuf {
    if let Some(t) = std::env::var_os("RUNNER_TEMP") {
        return PathBuf::from(t).join("nixdelta");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("nixdelta-{uid}"))
}

/// Takes the snapshot of the store (by id when the DB is readable). A
/// store with no DB yet is empty: everything later is new.
pub fn take(store: &StoreSpec) -> Result<State> {
    let store = &store.absolute();
    let store_root = store.root();
    if !Store::exists(store) {
        let where_ = store_root.map_or("/".into(), |p| p.display().to_string());
        tracing::warn!(
            "no Nix database yet in {where_}: every path added from now on counts as new"
        );
        return Ok(new_state(
            store_root,
            Some(Snapshot {
                max_id: 0,
                count: 0,
            }),
            None,
        ));
    }
    let store = Store::open(store)?;
    let (snapshot, all_paths) = if store.reads_db() {
        (Some(store.snapshot()?), None)
    } else {
        tracing::warn!("no readable Nix DB: recording every valid path for a whole-store diff");
        let all = store
            .all_paths()?
            .iter()
            .map(StorePath::to_string)
            .collect();
        (None, Some(all))
    };
    Ok(new_state(store_root, snapshot, all_paths))
}

fn new_state(
    store_root: Option<&Path>,
    snapshot: Option<Snapshot>,
    all_paths: Option<Vec<String>>,
) -> State {
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    State {
        version: STATE_VERSION,
        store_root: store_root.map(Path::to_path_buf),
        snapshot,
        all_paths,
        started_at,
        extra: Default::default(),
    }
}

impl State {
    /// Writes `state.json` into `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        // The state dir failing (full, a regular file, read-only) is this
        // machine's fault, not bad input: exit 1, saying where.
        let io = |e: std::io::Error| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                Error::Other(anyhow::anyhow!("no space left on {}", dir.display()))
            } else {
                Error::Other(anyhow::anyhow!("state dir {}: {e}", dir.display()))
            }
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        serde_json::to_writer_pretty(&mut tmp, self).map_err(|e| io(e.into()))?;
        tmp.persist(dir.join(STATE_FILE)).map_err(|e| io(e.error))?;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<State> {
        let path = dir.join(STATE_FILE);
        // A state is small, except when the DB was unreadable and it lists
        // every valid path (~100 bytes each): 64 MiB covers 600k paths.
        const STATE_MAX: u64 = 64 << 20;
        if let Ok(m) = std::fs::metadata(&path) {
            if m.len() > STATE_MAX {
                return Err(Error::Input {
                    path,
                    msg: format!("{} bytes: not a state `nixdelta start` wrote", m.len()),
                });
            }
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Input {
            path: path.clone(),
            msg: format!("cannot read the state `nixdelta start` writes ({e}); did start run?"),
        })?;
        let state: State = serde_json::from_str(&text).map_err(|e| Error::Input {
            path: path.clone(),
            msg: format!("malformed state: {e}"),
        })?;
        if state.version != STATE_VERSION {
            return Err(Error::Input {
                path,
                msg: format!(
                    "state version {} (this nixdelta reads {STATE_VERSION})",
                    state.version
                ),
            });
        }
        Ok(state)
    }
}
