//! Failed build trees kept (`run --keep-failed`): the job's Nix runs with
//! `keep-failed = true`; when the command fails, the build directories Nix
//! kept (`nix-build-*` in `$TMPDIR`, made since the job started) are
//! packed, size-capped, and saved in the archive backend under a
//! `failed-…` key; `nixdelta failed-tree fetch` brings them back.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::archive::{self, failed, SaveOutcome};
use crate::error::{Error, Result};

/// What was kept and where it went.
#[derive(Clone, Debug)]
pub struct Kept {
    pub trees: Vec<PathBuf>,
    pub key: String,
    pub backend: String,
    pub packed: failed::Packed,
}

/// The temp dir Nix builds in for this job: `$TMPDIR` (single-user Nix
/// uses it). Not a shared `/tmp` scan: on a shared machine another job's
/// kept tree is not this job's to upload. (A daemon's builds keep their
/// trees in the daemon's temp dir, owned by its build users: not
/// collected yet.)
fn temp_dirs() -> Vec<PathBuf> {
    vec![std::env::temp_dir()]
}

/// Build directories Nix kept since `since` (Unix seconds).
pub fn collect(since: u64) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for t in temp_dirs() {
        let Ok(rd) = std::fs::read_dir(&t) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("nix-build-") {
                continue;
            }
            let recent = e
                .metadata()
                .ok()
                .filter(|m| m.is_dir())
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .is_some_and(|d| d.as_secs() >= since);
            if recent {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Packs `trees` (at most `cap` bytes of files) into `backend` under
/// `failed-<label>-<time>`.
pub fn save(backend: &str, label: &str, trees: Vec<PathBuf>, cap: u64) -> Result<Kept> {
    let b = archive::open(backend, false)?;
    let now = crate::store::jobs::now();
    let key = format!("failed-{label}-{now}");
    archive::check_key(&key)?;
    let mut packed = failed::Packed::default();
    let outcome = b.save(&key, &mut |w| {
        packed = failed::pack(&trees, cap, w)?;
        Ok(())
    })?;
    if outcome == SaveOutcome::ReadOnly {
        return Err(Error::Usage(format!(
            "{backend} is read-only: build trees not kept"
        )));
    }
    Ok(Kept {
        trees,
        key,
        backend: backend.to_string(),
        packed,
    })
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
/// downloaded CI artifact) unpacked into `dest`.
pub fn fetch_file(file: &Path, dest: &Path) -> Result<()> {
    let f = std::fs::File::open(file)
        .map_err(|e| Error::Usage(format!("cannot read {}: {e}", file.display())))?;
    failed::unpack(f, dest)
}
