//! The archive save of a job: the restored plus the newly realised paths
//! under the cache key, on a miss or a partial hit. Keys are immutable: an
//! exact hit that grew by more than the resave threshold is saved as
//! `<key>-g<time>`, which the next restore of the key prefers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::archive::{self, SaveOptions, SaveOutcome, SaveReport};
use crate::cache::frames::Frames;
use crate::error::Result;
use crate::nix::StorePath;
use crate::pipeline::filter::Filters;
use crate::pipeline::summary::mb;
use crate::store::{PathInfo, Store};

use super::config::JobConfig;
use super::observer::Observer;
use super::state::{ArchiveFacts, Restored};

/// Where a job's push keeps its compressed NARs for the job's archive
/// save, under the state dir `dir`.
pub fn frames_dir(dir: &Path) -> PathBuf {
    dir.join("frames")
}

/// Deletes the frames kept under the state dir `dir`, if any.
pub fn drop_frames(dir: &Path) {
    match std::fs::remove_dir_all(frames_dir(dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("could not remove {}: {e}", frames_dir(dir).display())
        }
        _ => {}
    }
}

/// `cfg` with its push keeping compressed NARs for the archive save, when
/// the job will write an archive (one is configured, writable, not a dry
/// run) and pushes; else `cfg` as it is. Saves compressing twice.
pub fn keeping_frames(cfg: &JobConfig, dir: &Path, facts: Option<&ArchiveFacts>) -> JobConfig {
    let mut cfg = cfg.clone();
    let saves = facts.is_some_and(|f| !f.read_only) && !cfg.push.dry_run;
    let pushes = cfg.push.to.is_some() && !cfg.push.skip;
    if saves && pushes {
        match Frames::open(&frames_dir(dir)) {
            Ok(f) => cfg.push.upload.frames = Some(f),
            Err(e) => tracing::debug!("no kept frames: {e}"),
        }
    }
    cfg
}

/// Keys of the archives saved when an exact hit grew.
pub fn grown_prefix(key: &str) -> String {
    format!("{key}-g")
}

/// What the save step is given: the facts and key, the paths the job
/// realised (`new`), and those plus the restored ones (`candidates`), with
/// the filters computed once for both.
pub struct SaveInput<'a> {
    pub facts: ArchiveFacts,
    pub key: String,
    pub new: &'a [PathInfo],
    pub candidates: &'a [PathInfo],
    pub filters: &'a Filters,
}

/// Saves, or says why not; the facts and the save's report.
pub fn save(
    cfg: &JobConfig,
    store: &Store,
    input: SaveInput<'_>,
    obs: &dyn Observer,
) -> Result<(ArchiveFacts, SaveReport)> {
    let SaveInput {
        facts,
        key,
        new,
        candidates,
        filters,
    } = input;
    let t = Instant::now();
    let dir = store.store_dir();
    let mut report = SaveReport {
        key: key.clone(),
        backend: facts.backend.clone(),
        outcome: SaveOutcome::Exists,
        paths: 0,
        nar_bytes: 0,
        archive_bytes: 0,
        dropped: 0,
        dropped_nar_bytes: 0,
        derivations_left_out: 0,
        spliced: 0,
        seconds: 0.0,
    };
    let mut save_key = key.clone();
    if facts.outcome == Restored::Hit {
        let grew: Vec<&PathInfo> = new
            .iter()
            .filter(|i| !i.path.is_derivation() && filters.keeps(&i.path, dir))
            .collect();
        let bytes: u64 = grew.iter().map(|i| i.nar_size).sum();
        let threshold = cfg.archive.resave_threshold.0;
        // Without the pre-restore snapshot (the restore added nothing: all
        // was there) the diff cannot tell what the archive held: keep it.
        if grew.is_empty() || bytes <= threshold || facts.base.is_none() {
            obs.note(&format!(
                "archive: exact key hit, nothing saved ({} new paths, {} of NAR, within --resave-threshold {})",
                grew.len(),
                mb(bytes),
                mb(threshold)
            ));
            return Ok((facts, report));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        save_key = format!("{}{now}", grown_prefix(&key));
        obs.note(&format!(
            "archive: exact key hit, but the job realised {} new paths ({} of NAR): saving {save_key}",
            grew.len(),
            mb(bytes)
        ));
        report.key = save_key.clone();
    }
    let backend = archive::open(&facts.backend, facts.read_only)?;
    let roots: Vec<StorePath> = candidates
        .iter()
        .map(|i| i.path.clone())
        .filter(|p| filters.keeps(p, dir))
        .collect();
    if roots.is_empty() {
        obs.note("archive: nothing new to save");
        return Ok((facts, report));
    }
    let opts = SaveOptions {
        max_nar_size: cfg.archive.max_size.map(|s| s.0),
        include_drv: filters.include_drv,
        frames: cfg.push.upload.frames.clone(),
        ..SaveOptions::default()
    };
    let sel = archive::select(store, &roots, &opts)?;
    let r = archive::save_selection(store, backend.as_ref(), &save_key, &sel, &opts, t)?;
    let what = match r.outcome {
        SaveOutcome::Saved { .. } => "saved",
        SaveOutcome::Exists => "exists already (not saved again)",
        SaveOutcome::ReadOnly => "read-only (not saved)",
    };
    let reused = match r.spliced {
        0 => String::new(),
        n => format!(" ({n} NARs as the push compressed them)"),
    };
    obs.note(&format!(
        "archive {save_key}: {what}: {} paths, {} of NAR, {} of archive{reused} in {:.2} s",
        r.paths,
        mb(r.nar_bytes),
        mb(r.archive_bytes),
        r.seconds
    ));
    Ok((facts, r))
}
