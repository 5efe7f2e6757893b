//! Store archives: many store paths packed into one zstd stream, keyed by
//! the cache key (computed by the job, `job::key`), saved to and restored from
//! a CI cache ([`Backend`]: `dir:PATH`, `github`, `s3://…`).
//!
//! * [`save`]: closure of the given paths (minus what `--max-archive-size`
//!   drops) → [`format`] stream → backend, committed atomically.
//! * [`restore`]: exact key, else the newest entry under each restore prefix
//!   → streamed into the store by [`import`], verified before registration.

pub mod artifact;
pub mod dir;
pub mod failed;
pub mod github;
pub mod github_purge;
pub mod s3;
mod write;

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::time::Instant;

use crate::cache::frames::Frames;
use crate::error::{Error, Result};
use crate::nix::StorePath;
use crate::store::{PathInfo, Store};

pub use crate::nix::archive::{self as format, FORMAT_VERSION};
pub use crate::store::import::{self, ImportMethod, ImportOptions, ImportStats};
pub use write::{write_archive, Written};

/// An archive found by [`Backend::lookup`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The key it was saved under (the exact key, or one under a prefix).
    pub key: String,
    /// Compressed size, when the backend knows it.
    pub size: Option<u64>,
    /// Backend-specific handle (file path, download URL, object key).
    pub locator: String,
}

/// What [`Backend::save`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SaveOutcome {
    /// Written; archive bytes.
    Saved { bytes: u64 },
    /// An archive with this key exists (keys are immutable), or another job
    /// is saving it right now.
    Exists,
    /// The backend is read-only here (e.g. a fork's pull request).
    ReadOnly,
}

/// Producer of the archive bytes, called at most once by [`Backend::save`].
pub type Produce<'a> = &'a mut dyn FnMut(&mut dyn Write) -> Result<()>;

/// A place store archives live. Errors are [`Error::Cache`] naming the backend.
pub trait Backend: Send + Sync {
    /// How the user named it (no secrets).
    fn describe(&self) -> String;
    /// Saving is disabled.
    fn read_only(&self) -> bool {
        false
    }
    /// The archive saved under exactly `key`, else the newest one whose key
    /// starts with the first prefix that has any, in order.
    fn lookup(&self, key: &str, prefixes: &[String]) -> Result<Option<Found>>;
    /// Streams a found archive.
    fn open(&self, found: &Found) -> Result<Box<dyn Read + Send>>;
    /// Saves under `key`: reserves the key, calls `produce` with a writer,
    /// and commits; nothing is visible under `key` unless all of it is.
    fn save(&self, key: &str, produce: Produce<'_>) -> Result<SaveOutcome>;
}

/// Opens a backend from `--archive`: `dir:PATH`, `github` (v2 when
/// `ACTIONS_RESULTS_URL` is set, v1 with `ACTIONS_CACHE_URL`; `github-v1`
/// and `github-v2` force one), `s3://bucket/prefix?endpoint=…&region=…`.
/// `read_only` refuses saves (also set by `ACTIONS_CACHE_MODE=read-only`
/// or `NIXDELTA_ARCHIVE_READ_ONLY=1` for github).
pub fn open(spec: &str, read_only: bool) -> Result<Box<dyn Backend>> {
    if let Some(path) = spec.strip_prefix("dir:") {
        if path.is_empty() {
            return Err(Error::Usage("--archive dir:PATH needs a path".into()));
        }
        return Ok(Box::new(dir::DirBackend::new(path.as_ref(), read_only)?));
    }
    if spec == "github" || spec == "github-v1" || spec == "github-v2" {
        return github::open(spec, read_only);
    }
    if spec.starts_with("s3://") {
        return Ok(Box::new(s3::S3Backend::from_url(spec, read_only)?));
    }
    Err(Error::Usage(format!(
        "unknown --archive {spec:?} (dir:PATH, github, s3://bucket/prefix?endpoint=…&region=…)"
    )))
}

// ------------------------------------------------------------------ save

#[derive(Clone, Debug)]
pub struct SaveOptions {
    /// zstd level (3 as Nix).
    pub level: i32,
    /// zstd worker threads (0: single-threaded).
    pub threads: u32,
    /// Cap on the total NAR size: the largest leaves are dropped first.
    pub max_nar_size: Option<u64>,
    /// Keep `.drv` files given as roots.
    pub include_drv: bool,
    /// The job's push kept its compressed NARs here: copied in, not
    /// compressed again.
    pub frames: Option<Frames>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        SaveOptions {
            level: 3,
            threads: cores as u32,
            max_nar_size: None,
            include_drv: false,
            frames: None,
        }
    }
}

/// The paths an archive will hold.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// In reference order (dependencies first).
    pub paths: Vec<PathInfo>,
    /// Dropped by the size cap.
    pub dropped: Vec<StorePath>,
    pub dropped_nar_bytes: u64,
    /// `.drv` roots left out.
    pub derivations_left_out: usize,
}

impl Selection {
    pub fn nar_bytes(&self) -> u64 {
        self.paths.iter().map(|p| p.nar_size).sum()
    }
}

/// The closure of `roots` (minus `.drv` roots unless asked), capped.
pub fn select(store: &Store, roots: &[StorePath], opts: &SaveOptions) -> Result<Selection> {
    let kept: Vec<StorePath> = roots
        .iter()
        .filter(|p| opts.include_drv || !p.is_derivation())
        .cloned()
        .collect();
    let derivations_left_out = roots.len() - kept.len();
    let closure = store.closure(&kept)?;
    let (paths, dropped, dropped_nar_bytes) = match opts.max_nar_size {
        Some(cap) => cap_size(closure, cap),
        None => (closure, vec![], 0),
    };
    Ok(Selection {
        paths: format::reference_order(paths),
        dropped,
        dropped_nar_bytes,
        derivations_left_out,
    })
}

/// Drops the largest leaves (paths nothing else in the set refers to)
/// until the NAR total fits `cap`; the set stays closed.
fn cap_size(infos: Vec<PathInfo>, cap: u64) -> (Vec<PathInfo>, Vec<StorePath>, u64) {
    let mut total: u64 = infos.iter().map(|i| i.nar_size).sum();
    if total <= cap {
        return (infos, vec![], 0);
    }
    let index: HashMap<StorePath, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, p)| (p.path.clone(), i))
        .collect();
    let mut referrers = vec![0usize; infos.len()];
    for i in &infos {
        for r in &i.references {
            if *r != i.path {
                if let Some(&j) = index.get(r) {
                    referrers[j] += 1;
                }
            }
        }
    }
    let mut heap: BinaryHeap<(u64, std::cmp::Reverse<StorePath>, usize)> = infos
        .iter()
        .enumerate()
        .filter(|(j, _)| referrers[*j] == 0)
        .map(|(j, i)| (i.nar_size, std::cmp::Reverse(i.path.clone()), j))
        .collect();
    let mut gone: HashSet<usize> = HashSet::new();
    let mut dropped_bytes = 0;
    while total > cap {
        let Some((size, _, j)) = heap.pop() else {
            break;
        };
        gone.insert(j);
        total -= size;
        dropped_bytes += size;
        for r in &infos[j].references {
            if *r == infos[j].path {
                continue;
            }
            if let Some(&k) = index.get(r) {
                referrers[k] -= 1;
                if referrers[k] == 0 {
                    heap.push((
                        infos[k].nar_size,
                        std::cmp::Reverse(infos[k].path.clone()),
                        k,
                    ));
                }
            }
        }
    }
    let mut dropped = Vec::new();
    let mut kept = Vec::new();
    for (j, i) in infos.into_iter().enumerate() {
        if gone.contains(&j) {
            dropped.push(i.path);
        } else {
            kept.push(i);
        }
    }
    (kept, dropped, dropped_bytes)
}

/// What [`save`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SaveReport {
    pub key: String,
    pub backend: String,
    pub outcome: SaveOutcome,
    pub paths: usize,
    pub nar_bytes: u64,
    /// Compressed bytes written (0 unless saved).
    pub archive_bytes: u64,
    pub dropped: usize,
    pub dropped_nar_bytes: u64,
    pub derivations_left_out: usize,
    /// Paths copied from the push's kept frames.
    pub spliced: usize,
    pub seconds: f64,
}

/// Saves the closure of `roots` under `key` (nothing happens when the key
/// exists or the backend is read-only: see [`SaveReport::outcome`]).
pub fn save(
    store: &Store,
    backend: &dyn Backend,
    key: &str,
    roots: &[StorePath],
    opts: &SaveOptions,
) -> Result<SaveReport> {
    let t = Instant::now();
    let sel = select(store, roots, opts)?;
    save_selection(store, backend, key, &sel, opts, t)
}

/// [`save`] of an already computed [`Selection`] (e.g. restored paths plus
/// the store diff, as `finish` computes it).
pub fn save_selection(
    store: &Store,
    backend: &dyn Backend,
    key: &str,
    sel: &Selection,
    opts: &SaveOptions,
    started: Instant,
) -> Result<SaveReport> {
    if !sel.dropped.is_empty() {
        tracing::warn!(
            "archive size cap: left out {} paths ({} bytes of NAR), largest leaves first",
            sel.dropped.len(),
            sel.dropped_nar_bytes
        );
    }
    let mut report = SaveReport {
        key: key.to_string(),
        backend: backend.describe(),
        outcome: SaveOutcome::ReadOnly,
        paths: sel.paths.len(),
        nar_bytes: sel.nar_bytes(),
        archive_bytes: 0,
        dropped: sel.dropped.len(),
        dropped_nar_bytes: sel.dropped_nar_bytes,
        derivations_left_out: sel.derivations_left_out,
        spliced: 0,
        seconds: 0.0,
    };
    if backend.read_only() {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let mut spliced = 0;
    let mut produce = |w: &mut dyn Write| -> Result<()> {
        spliced = write_archive(store, &sel.paths, key, w, opts)?.spliced;
        Ok(())
    };
    report.outcome = backend.save(key, &mut produce)?;
    report.spliced = spliced;
    if let SaveOutcome::Saved { bytes } = report.outcome {
        report.archive_bytes = bytes;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

// --------------------------------------------------------------- restore

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The exact key was found.
    Hit,
    /// An archive under a restore prefix was found.
    Partial,
    Miss,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Hit => "hit",
            Outcome::Partial => "partial",
            Outcome::Miss => "miss",
        })
    }
}

/// What [`restore`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreReport {
    pub key: String,
    pub backend: String,
    pub matched_key: Option<String>,
    pub outcome: Outcome,
    /// Compressed bytes read.
    pub archive_bytes: u64,
    pub import: ImportStats,
    pub seconds: f64,
}

/// Counts bytes read through.
pub struct CountingReader<R> {
    pub inner: R,
    pub n: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Restores the archive for `key` (else the newest under each of
/// `prefixes`, in order) into `store`. A miss is not an error.
pub fn restore(
    store: &Store,
    backend: &dyn Backend,
    key: &str,
    prefixes: &[String],
    opts: &ImportOptions,
) -> Result<RestoreReport> {
    let t = Instant::now();
    let mut report = RestoreReport {
        key: key.to_string(),
        backend: backend.describe(),
        matched_key: None,
        outcome: Outcome::Miss,
        archive_bytes: 0,
        import: ImportStats::default(),
        seconds: 0.0,
    };
    let Some(found) = backend.lookup(key, prefixes)? else {
        report.seconds = t.elapsed().as_secs_f64();
        return Ok(report);
    };
    report.outcome = if found.key == key {
        Outcome::Hit
    } else {
        Outcome::Partial
    };
    report.matched_key = Some(found.key.clone());
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = CountingReader {
        inner: backend.open(&found)?,
        n: counter.clone(),
    };
    let what = format!("{} ({})", found.key, backend.describe());
    let opts = ImportOptions {
        expect_key: Some(found.key.clone()),
        ..opts.clone()
    };
    report.import = import::import(store, reader, &what, &opts)?;
    if let Some(named) = &report.import.key_mismatch {
        tracing::warn!("{what}: the archive was saved under key {named} (renamed?): not restored");
        report.outcome = Outcome::Miss;
        report.matched_key = None;
    }
    report.archive_bytes = counter.load(std::sync::atomic::Ordering::Relaxed);
    report.seconds = t.elapsed().as_secs_f64();
    Ok(report)
}

/// Keys become file names and URL parts: a conservative alphabet.
pub fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+=".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid archive key {key:?}: use 1-512 of [A-Za-z0-9._+=-], not starting with '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::Sha256Hash;

    fn info(n: &str, size: u64, refs: &[&str]) -> PathInfo {
        let sp = |n: &str| {
            StorePath::from_base_name(&format!("{}{}-{n}", "0".repeat(31), &n[..1])).unwrap()
        };
        PathInfo {
            path: sp(n),
            id: 0,
            nar_hash: Sha256Hash([0; 32]),
            nar_size: size,
            references: refs.iter().map(|r| sp(r)).collect(),
            deriver: None,
            sigs: vec![],
            ca: None,
        }
    }

    #[test]
    fn cap_drops_largest_leaves_first() {
        // app -> lib -> libc ; big-tool (leaf) ; doc (leaf)
        let set = vec![
            info("app", 10, &["lib"]),
            info("lib", 20, &["libc", "lib"]),
            info("libc", 30, &[]),
            info("big", 100, &["libc"]),
            info("doc", 5, &[]),
        ];
        let (kept, dropped, bytes) = cap_size(set.clone(), 70);
        let names: Vec<&str> = dropped.iter().map(|p| p.name()).collect();
        assert_eq!(names, vec!["big"]);
        assert_eq!(bytes, 100);
        assert_eq!(kept.len(), 4);
        // Tighter: big, then app (10 > doc 5), then lib becomes a leaf (20).
        let (kept, dropped, _) = cap_size(set.clone(), 40);
        let mut names: Vec<&str> = dropped.iter().map(|p| p.name()).collect();
        names.sort();
        assert_eq!(names, vec!["app", "big", "lib"]);
        let kept: Vec<&str> = kept.iter().map(|p| p.path.name()).collect();
        assert_eq!(kept, vec!["libc", "doc"]);
        assert_eq!(cap_size(set, 1000).1.len(), 0);
    }
}
