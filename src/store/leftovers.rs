//! Temporary files of a process that was killed (`kill -9`, OOM) before it
//! could remove them: `<prefix><pid>-…` names, removed by the next run
//! once their process is gone.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// Whether no process `pid` exists on this machine. A process of another
/// user answers EPERM: it exists.
fn is_dead(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// The pid in `<prefix><pid>-…`.
fn pid_of(name: &str, prefix: &str) -> Option<i32> {
    let rest = name.strip_prefix(prefix)?;
    let digits = rest.split('-').next()?;
    digits.parse().ok().filter(|&p| p > 0)
}

/// Removes the entries of `dir` named `<prefix><pid>-…` whose process is
/// dead and that are older than `min_age`. A directory shared between
/// machines (NFS) sees other hosts' pids, which mean nothing here: the
/// age keeps their files in flight safe. Returns how many were removed.
pub fn remove(dir: &Path, prefix: &str, min_age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = pid_of(&name.to_string_lossy(), prefix) else {
            continue;
        };
        if pid as u32 == std::process::id() || !is_dead(pid) {
            continue;
        }
        let old_enough = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= min_age);
        if !old_enough {
            continue;
        }
        let path = entry.path();
        let r = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            crate::nix::nar_unpack::remove_tree(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match r {
            Ok(()) => removed += 1,
            Err(e) => tracing::debug!("cannot remove leftover {}: {e}", path.display()),
        }
    }
    if removed > 0 {
        tracing::info!(
            "removed {removed} leftovers of killed runs in {}",
            dir.display()
        );
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_parse_and_live_ones_stay() {
        assert_eq!(pid_of(".nixdelta-123-0-abc", ".nixdelta-"), Some(123));
        assert_eq!(pid_of(".nixdelta-tmp-77-Xy", ".nixdelta-tmp-"), Some(77));
        assert_eq!(pid_of(".nixdelta-tmp-Xy", ".nixdelta-tmp-"), None);
        assert_eq!(pid_of("abc", ".nixdelta-"), None);
        let d = tempfile::tempdir().unwrap();
        let mine = format!(".nixdelta-{}-0-x", std::process::id());
        std::fs::write(d.path().join(&mine), "").unwrap();
        // pid 1 lives (init); a huge pid is dead.
        std::fs::write(d.path().join(".nixdelta-1-0-x"), "").unwrap();
        std::fs::create_dir(d.path().join(".nixdelta-999999999-0-x")).unwrap();
        assert_eq!(remove(d.path(), ".nixdelta-", Duration::ZERO), 1);
        assert!(d.path().join(&mine).exists());
        assert!(d.path().join(".nixdelta-1-0-x").exists());
    }
}
