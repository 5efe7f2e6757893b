//! Failed build trees kept (`run --keep-failed`, `start --keep-failed` +
//! `finish`): the job's Nix runs with `keep-failed = true`; the build
//! directories Nix kept during the job (`nix-build-*` made since the job
//! started, in the client's temp dir and the daemon's build dir) are
//! packed, size-capped, and stored: in the archive backend under a
//! `failed-…` key, or as a file a CI uploads; `nixdelta failed-tree fetch`
//! brings them back. Nothing outside those directories is read.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::archive::{self, failed, SaveOutcome};
use crate::error::{Error, Result};
use crate::nix::StoreSpec;
use crate::store::daemon;

/// What `start --keep-failed` leaves in the state for `finish`.
pub const STATE_KEY: &str = "keep_failed";

/// Where Nix leaves kept build directories for this job: the client's
/// `$TMPDIR` (a local or chroot store builds in the client), and, when the
/// job's Nix goes through a daemon, the daemon's: its `build-dir`, else
/// `/nix/var/nix/builds` (Nix 2.30+) and `/tmp` (older Nix, a daemon
/// without TMPDIR). Not a scan of every temp dir: on a shared machine
/// another job's kept tree is not this job's to upload; only trees made
/// since the job started count.
pub fn build_dirs(store: &StoreSpec) -> Vec<PathBuf> {
    let mut dirs = vec![std::env::temp_dir()];
    if daemon::in_use(store) {
        match daemon::read_conf().get("build-dir").and_then(|v| v.first()) {
            Some(d) if !d.is_empty() => dirs.push(PathBuf::from(d)),
            _ => dirs.extend([PathBuf::from("/nix/var/nix/builds"), PathBuf::from("/tmp")]),
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// When `p` came to be (its birth time where the file system keeps one,
/// else its last change), in Unix seconds.
fn made_at(m: &std::fs::Metadata) -> Option<u64> {
    m.created()
        .or_else(|_| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

/// Build directories Nix kept in `dirs` since `since` (Unix seconds).
pub fn collect_in(dirs: &[PathBuf], since: u64) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for t in dirs {
        let Ok(rd) = std::fs::read_dir(t) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("nix-build-") {
                continue;
            }
            // symlink_metadata: a link named nix-build-* is not followed.
            let recent = std::fs::symlink_metadata(e.path())
                .ok()
                .filter(|m| m.is_dir())
                .and_then(|m| made_at(&m))
                .is_some_and(|t| t >= since);
            if recent {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Trees this process cannot read whole (a daemon's, owned by its build
/// users) are streamed by `sudo -n tar` as root; when `sudo -n` is refused
/// they are left out, with the reason. Nothing is copied to disk first.
pub fn readable(trees: Vec<PathBuf>) -> (Vec<(PathBuf, failed::Tree)>, Vec<String>) {
    let mut ok = Vec::new();
    let mut notes = Vec::new();
    let mut sudo: Option<std::result::Result<(), String>> = None;
    for t in trees {
        if all_readable(&t) {
            ok.push((t.clone(), failed::Tree::Dir(t)));
            continue;
        }
        let allowed = sudo.get_or_insert_with(sudo_allowed).clone();
        match allowed.and_then(|()| sudo_tar(&t)) {
            Ok(stream) => ok.push((t, failed::Tree::Tar(stream))),
            Err(e) => notes.push(format!("{}: not readable, and {e}", t.display())),
        }
    }
    (ok, notes)
}

fn all_readable(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().all(|e| {
        let p = e.path();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => all_readable(&p),
            Ok(m) if m.is_file() => std::fs::File::open(&p).is_ok(),
            Ok(_) => true,
            Err(_) => false,
        }
    })
}

/// Whether `sudo -n` runs without a password here.
fn sudo_allowed() -> std::result::Result<(), String> {
    let out = std::process::Command::new("sudo")
        .args(["-n", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("sudo cannot run ({e})"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`sudo -n` refused ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `sudo -n tar -C PARENT -cf - NAME`: the tree as a tar stream (tar
/// stores links as links and stays in the tree). The child is reaped when
/// the stream ends; a tar that failed is reported then.
fn sudo_tar(tree: &Path) -> std::result::Result<Box<dyn std::io::Read>, String> {
    let (Some(parent), Some(name)) = (tree.parent(), tree.file_name()) else {
        return Err("no parent directory".into());
    };
    let mut child = std::process::Command::new("sudo")
        .args(["-n", "tar", "--one-file-system", "-C"])
        .arg(parent)
        .args(["-cf", "-", "--"])
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("sudo cannot run ({e})"))?;
    let out = child.stdout.take().ok_or("no pipe")?;
    Ok(Box::new(Reaped { out, child }))
}

/// A child's stdout that waits for the child at its end.
struct Reaped {
    out: std::process::ChildStdout,
    child: std::process::Child,
}

impl std::io::Read for Reaped {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.out.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let status = self.child.wait()?;
            if !status.success() {
                return Err(std::io::Error::other(format!("sudo -n tar: {status}")));
            }
        }
        Ok(n)
    }
}

/// Packs `trees` (at most `cap` bytes of files) into the file `out`.
pub fn pack_file(trees: Vec<failed::Tree>, cap: u64, out: &Path) -> Result<failed::Packed> {
    let f = std::fs::File::create(out).map_err(|e| Error::Input {
        path: out.to_path_buf(),
        msg: format!("cannot write the packed build trees: {e}"),
    })?;
    let mut w = std::io::BufWriter::new(f);
    let p = failed::pack_trees(trees, cap, &mut w)?;
    std::io::Write::flush(&mut w).map_err(|e| Error::Other(e.into()))?;
    Ok(p)
}

/// The name a pack is stored under: `failed-<label>-<time>-<random>` (an
/// artifact name is unique in a run: matrix jobs share a label, and may
/// fail in the same second).
pub fn key_for(label: &str) -> String {
    use rand_core::RngCore as _;
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let tag = rand_core::OsRng.next_u32() & 0xff_ffff;
    format!("failed-{clean}-{}-{tag:06x}", crate::store::jobs::now())
}

/// Saves a pack already made (`pack_file`) into `backend` under `key`.
pub fn save_file(backend: &str, key: &str, mut packed: impl std::io::Read) -> Result<()> {
    let b = archive::open(backend, false)?;
    archive::check_key(key)?;
    let outcome = b.save(key, &mut |w| {
        std::io::copy(&mut packed, w).map_err(|e| Error::Other(e.into()))?;
        Ok(())
    })?;
    if outcome == SaveOutcome::ReadOnly {
        return Err(Error::Usage(format!(
            "{backend} is read-only: build trees not kept"
        )));
    }
    Ok(())
}

/// `nixdelta failed-tree fetch`: the trees saved under `key` into `dest`.
pub fn fetch(backend: &str, key: &str, dest: &Path) -> Result<()> {
    let b = archive::open(backend, true)?;
    let found = b
        .lookup(key, &[])?
        .ok_or_else(|| Error::Usage(format!("no build trees under {key} in {backend}")))?;
    failed::unpack(b.open(&found)?, dest)
}

/// `nixdelta failed-tree fetch --file`: a packed tree already here (a
/// downloaded CI artifact: the `.tar.zst`, or the zip GitHub serves it in)
/// unpacked into `dest`.
pub fn fetch_file(file: &Path, dest: &Path) -> Result<()> {
    if let Some((_, entry)) = archive::artifact::open_zip_entry(file)? {
        return failed::unpack(entry, dest);
    }
    let f = std::fs::File::open(file)
        .map_err(|e| Error::Usage(format!("cannot read {}: {e}", file.display())))?;
    failed::unpack(f, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_build_dirs_made_since_the_start_are_collected() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("nix-build-a.drv-0");
        let b = d.path().join("nix-build-b.drv-0");
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::create_dir(d.path().join("other-dir")).unwrap();
        std::fs::write(d.path().join("nix-build-a-file"), "x").unwrap();
        // Not a directory, or a link named like one: never followed.
        std::os::unix::fs::symlink("/etc", d.path().join("nix-build-link")).unwrap();
        let dirs = vec![d.path().to_path_buf()];
        let now = crate::store::jobs::now();
        assert_eq!(collect_in(&dirs, now - 5), vec![a, b]);
        assert!(collect_in(&dirs, now + 5).is_empty());
    }

    #[test]
    fn keys_are_archive_keys() {
        let k = key_for("gh/build job");
        assert!(k.starts_with("failed-gh-build-job-"), "{k}");
        crate::archive::check_key(&k).unwrap();
        assert_ne!(key_for("a"), key_for("a"));
    }
}
