//! The registry of jobs on one store: a directory next to the Nix state
//! (`<root>/nix/var/nixdelta/jobs`, mode 1777 so that every job's user can
//! add itself) holding one small JSON file per job, and the GC roots Nix
//! registered for a workspace (`gcroots/auto`). Together they let a job on
//! a shared store tell its own paths from another job's.
//!
//! A file, not a table in Nix's DB: we never write Nix's DB, and a file per
//! job needs no locking (each job writes only its own, atomically).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A job's entry: its window of `ValidPaths` ids and its workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEntry {
    pub id: String,
    /// The highest id when the job started: its paths have higher ones.
    pub start_id: i64,
    /// The highest id when it finished; `None` while it runs.
    #[serde(default)]
    pub end_id: Option<i64>,
    pub workspace: PathBuf,
    /// Unix seconds.
    pub started_at: u64,
    #[serde(default)]
    pub finished_at: Option<u64>,
    #[serde(default)]
    pub user: u32,
}

/// How long an entry counts: a finished job's window still matters to the
/// jobs that overlapped it, and an unfinished one older than this was
/// cancelled (CI jobs time out well before: GitHub's limit is 6 h).
pub const ENTRY_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The registry of the store at `root` (`None`: the system store).
pub fn default_dir(root: Option<&Path>) -> PathBuf {
    root.unwrap_or(Path::new("/")).join("nix/var/nixdelta/jobs")
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Creates the registry (world-writable and sticky, as `/tmp`: jobs of
/// different users share it, none can remove another's entry).
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777))
}

fn entry_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

/// Writes (or rewrites) `e` atomically.
pub fn write(dir: &Path, e: &JobEntry) -> Result<()> {
    let io = |err: std::io::Error| {
        Error::Other(anyhow::anyhow!("job registry {}: {err}", dir.display()))
    };
    ensure_dir(dir).map_err(io)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io)?;
    serde_json::to_writer(&mut tmp, e).map_err(|err| io(err.into()))?;
    // Other jobs' users read it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    tmp.persist(entry_path(dir, &e.id))
        .map_err(|err| io(err.error))?;
    Ok(())
}

/// The live entries (not past [`ENTRY_LIFETIME`]); unreadable files are
/// skipped, expired ones removed where we may.
pub fn list(dir: &Path) -> Vec<JobEntry> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let now = now();
    let mut out = Vec::new();
    for f in rd.flatten() {
        let p = f.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(e) = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice::<JobEntry>(&b).ok())
        else {
            continue;
        };
        let last = e.finished_at.unwrap_or(e.started_at);
        if now.saturating_sub(last) > ENTRY_LIFETIME.as_secs() {
            let _ = std::fs::remove_file(&p);
            continue;
        }
        out.push(e);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// A new job id: 16 random hex digits.
pub fn new_id() -> String {
    use rand_core::RngCore;
    format!("{:016x}", rand_core::OsRng.next_u64())
}

/// The store paths (as Nix wrote them, `/nix/store/…`) that the indirect
/// GC roots Nix registered at or after `since` (Unix seconds) and that live
/// under `workspace` point to: `gcroots/auto/<hash>` → `<workspace>/result`
/// → the store path. Roots of other workspaces, and links since removed or
/// replaced by something that is not a store path, are left out.
pub fn workspace_roots(root: Option<&Path>, workspace: &Path, since: u64) -> Vec<PathBuf> {
    let auto = root
        .unwrap_or(Path::new("/"))
        .join("nix/var/nix/gcroots/auto");
    let Ok(rd) = std::fs::read_dir(&auto) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for f in rd.flatten() {
        let Ok(meta) = std::fs::symlink_metadata(f.path()) else {
            continue;
        };
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        if mtime < since {
            continue;
        }
        let Ok(link) = std::fs::read_link(f.path()) else {
            continue;
        };
        if !link.starts_with(workspace) {
            continue;
        }
        // The workspace link itself points into the (logical) store.
        if let Ok(target) = std::fs::read_link(&link) {
            if target.is_absolute() {
                out.push(target);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, started_at: u64) -> JobEntry {
        JobEntry {
            id: id.into(),
            start_id: 5,
            end_id: None,
            workspace: "/w".into(),
            started_at,
            finished_at: None,
            user: 0,
        }
    }

    #[test]
    fn entries_round_trip_and_expire() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("jobs");
        write(&dir, &entry("a", now())).unwrap();
        let mut b = entry("b", now() - 2 * ENTRY_LIFETIME.as_secs());
        write(&dir, &b).unwrap();
        std::fs::write(dir.join("junk.json"), "{").unwrap();
        assert_eq!(list(&dir), vec![entry("a", list(&dir)[0].started_at)]);
        assert!(!entry_path(&dir, "b").exists(), "expired entry removed");
        // A finished entry lives from its finish.
        b.finished_at = Some(now());
        b.end_id = Some(9);
        write(&dir, &b).unwrap();
        assert_eq!(list(&dir).len(), 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777);
    }

    #[test]
    fn only_recent_roots_in_the_workspace() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let auto = root.join("nix/var/nix/gcroots/auto");
        std::fs::create_dir_all(&auto).unwrap();
        let ws = root.join("ws");
        let other = root.join("other");
        for w in [&ws, &other] {
            std::fs::create_dir_all(w).unwrap();
            std::os::unix::fs::symlink("/nix/store/aaa-x", w.join("result")).unwrap();
        }
        std::os::unix::fs::symlink(ws.join("result"), auto.join("1")).unwrap();
        std::os::unix::fs::symlink(other.join("result"), auto.join("2")).unwrap();
        std::os::unix::fs::symlink(ws.join("gone"), auto.join("3")).unwrap();
        assert_eq!(
            workspace_roots(Some(root), &ws, 0),
            vec![PathBuf::from("/nix/store/aaa-x")]
        );
        assert!(workspace_roots(Some(root), &ws, now() + 100).is_empty());
    }
}
