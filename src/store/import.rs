//! Restoring an archive stream into a Nix store.
//!
//! Paths already valid are skipped; every other NAR is checked against the
//! manifest's narHash and narSize *before* Nix registers it. Two ways in:
//!
//! * **direct** (the store dir and DB are writable: root, a single-user
//!   install, a chroot store): NARs are unpacked by several threads into
//!   temporary names in the store dir with Nix's canonical metadata,
//!   verified, renamed into place under Nix's own path locks (held for
//!   the rename), and registered in batches with `nix-store --load-db` (the `--register-validity
//!   --hash-given` format; `--register-validity` itself re-canonicalises
//!   through the logical path, which breaks chroot stores in Nix 2.8).
//!   Registration carries narHash, narSize, references and deriver; Nix's
//!   formats for it have no signatures or CA field, so those are not kept.
//! * **import** (anything else, e.g. a non-root user of a daemon install):
//!   Nix's export format streamed into `nix-store --import`, each NAR
//!   verified while it streams, its metadata sent only once it verified.
//!
//! Either way a failure leaves the store with only fully verified paths
//! added, and every error names the path and the archive.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver};
use sha2::{Digest as _, Sha256};

use super::Store;
use crate::error::{Error, Result};
use crate::nix::archive::{self as format, input_err, read_err, ParsedEntry};
use crate::nix::nar_unpack::{self, UnpackOptions};
use crate::nix::{Sha256Hash, StorePath};

/// How paths are registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImportMethod {
    /// Direct when the store is writable, else import.
    #[default]
    Auto,
    Direct,
    Import,
}

impl std::str::FromStr for ImportMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "direct" => Ok(Self::Direct),
            "import" => Ok(Self::Import),
            _ => Err(format!(
                "unknown import method {s:?} (auto, direct, import)"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub method: ImportMethod,
    /// Unpacking threads (direct method).
    pub jobs: usize,
    /// The key the archive was found under: an archive whose manifest
    /// names another key (renamed or copied by hand) is not imported.
    pub expect_key: Option<String>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        ImportOptions {
            method: ImportMethod::Auto,
            jobs: (cores * 2).clamp(2, 8),
            expect_key: None,
        }
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ImportStats {
    pub method: Option<ImportMethod>,
    /// Paths in the archive.
    pub in_archive: usize,
    /// Paths registered by this import.
    pub added: usize,
    /// Paths that were valid already.
    pub present: usize,
    /// Paths left out because a reference is neither in the archive nor valid.
    pub skipped: usize,
    /// Set (to the key its manifest names) when the archive was saved
    /// under another key than it was found under: nothing was imported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_mismatch: Option<String>,
    pub nar_bytes_added: u64,
    pub nar_bytes_in_archive: u64,
}

/// NARs up to this size travel to the unpacking threads whole; larger ones
/// stream in chunks of this size.
const SMALL_NAR: u64 = 1 << 20;
const CHUNK: usize = 1 << 20;
/// Paths registered per `nix-store --load-db` (each holds a lock file open).
const BATCH: usize = 256;

/// Where the store's files and `nix-store --store` argument are.
struct Layout {
    real_store_dir: PathBuf,
    /// `--store` argument for nix commands; `None` for the system store.
    root: Option<PathBuf>,
}

fn layout(store: &Store) -> Layout {
    // The store keeps its chroot root private; derive it from a real path.
    let probe = StorePath::from_base_name("00000000000000000000000000000000-probe").unwrap();
    let real = store.real_path(&probe);
    let real_store_dir = real.parent().unwrap().to_path_buf();
    let logical = Path::new(store.store_dir());
    let root = if real_store_dir == logical {
        None
    } else {
        let depth = logical.components().count() - 1;
        let mut r = real_store_dir.clone();
        for _ in 0..depth {
            r.pop();
        }
        Some(r)
    };
    Layout {
        real_store_dir,
        root,
    }
}

fn nix_command(layout: &Layout, program: &str) -> Command {
    let mut cmd = Command::new(program);
    if let Some(root) = &layout.root {
        cmd.arg("--store").arg(root);
    }
    cmd
}

fn writable(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// The method `Auto` resolves to for `store`.
pub fn resolve_method(store: &Store, method: ImportMethod) -> ImportMethod {
    if method != ImportMethod::Auto {
        return method;
    }
    let l = layout(store);
    let db_dir = l.real_store_dir.join("../var/nix/db");
    // NIX_REMOTE=daemon means Nix itself would not open the DB directly.
    let daemon = std::env::var("NIX_REMOTE").is_ok_and(|v| !v.is_empty() && v != "local");
    if !daemon && writable(&l.real_store_dir) && writable(&db_dir) {
        ImportMethod::Direct
    } else {
        ImportMethod::Import
    }
}

/// What to do with each manifest entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Import,
    Present,
    Skip,
}

/// Imports the archive read from `src` (still compressed) into `store`.
/// `what` names the archive in messages. `progress` is called with
/// (paths added so far) after each registered batch.
pub fn import<R: Read>(
    store: &Store,
    src: R,
    what: &str,
    opts: &ImportOptions,
) -> Result<ImportStats> {
    let mut dec = zstd::stream::read::Decoder::new(src)
        .map_err(|e| input_err(what, format!("cannot start zstd: {e}")))?;
    let manifest = format::read_header(&mut dec, what)?;
    // Archives written before the key was recorded have none.
    if let Some(k) = &opts.expect_key {
        if !manifest.key.is_empty() && manifest.key != *k {
            return Ok(ImportStats {
                key_mismatch: Some(manifest.key),
                ..Default::default()
            });
        }
    }
    if manifest.store_dir != store.store_dir() {
        return Err(input_err(
            what,
            format!(
                "archive is for store dir {}, this store uses {}",
                manifest.store_dir,
                store.store_dir()
            ),
        ));
    }
    let entries: Vec<ParsedEntry> = manifest
        .paths
        .iter()
        .map(|e| {
            e.parse()
                .map_err(|m| input_err(what, format!("bad manifest entry {}: {m}", e.path)))
        })
        .collect::<Result<_>>()?;
    let actions = plan(store, &entries, what)?;
    let method = resolve_method(store, opts.method);
    let mut stats = ImportStats {
        method: Some(method),
        in_archive: entries.len(),
        present: actions.iter().filter(|a| **a == Action::Present).count(),
        skipped: actions.iter().filter(|a| **a == Action::Skip).count(),
        nar_bytes_in_archive: entries.iter().map(|e| e.nar_size).sum(),
        ..Default::default()
    };
    if stats.skipped > 0 {
        tracing::warn!(
            "{what}: {} paths left out: a reference is neither in the archive nor valid in the store",
            stats.skipped
        );
    }
    let l = layout(store);
    let t = Instant::now();
    let (added, bytes, raced) = match method {
        ImportMethod::Direct => direct(store, &l, &mut dec, &entries, &actions, what, opts)?,
        _ => via_import(&l, &mut dec, &entries, &actions, what)?,
    };
    stats.added = added;
    stats.present += raced;
    stats.nar_bytes_added = bytes;
    tracing::debug!(
        "{what}: imported {added} paths in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    Ok(stats)
}

/// Decides per entry; checks the manifest is in reference order.
fn plan(store: &Store, entries: &[ParsedEntry], what: &str) -> Result<Vec<Action>> {
    let in_archive: HashMap<&StorePath, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (&e.path, i))
        .collect();
    if in_archive.len() != entries.len() {
        return Err(input_err(what, "manifest lists a path twice"));
    }
    let mut outside: Vec<StorePath> = entries
        .iter()
        .flat_map(|e| e.references.iter())
        .filter(|r| !in_archive.contains_key(r))
        .cloned()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    outside.sort();
    let mut query: Vec<StorePath> = entries.iter().map(|e| e.path.clone()).collect();
    query.extend(outside.iter().cloned());
    let infos = store.path_infos(&query)?;
    let valid: HashSet<&StorePath> = query
        .iter()
        .zip(&infos)
        .filter(|(_, i)| i.is_some())
        .map(|(p, _)| p)
        .collect();
    let mut actions = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if valid.contains(&e.path) {
            actions.push(Action::Present);
            continue;
        }
        let mut ok = true;
        for r in &e.references {
            if *r == e.path {
                continue;
            }
            match in_archive.get(r) {
                Some(&j) if j < i => {
                    if actions[j] == Action::Skip {
                        ok = false;
                    }
                }
                Some(_) => {
                    return Err(input_err(
                        what,
                        format!(
                            "manifest is not in reference order: {} before its reference {r}",
                            e.path
                        ),
                    ))
                }
                None => ok &= valid.contains(r),
            }
        }
        actions.push(if ok { Action::Import } else { Action::Skip });
    }
    Ok(actions)
}

/// Reads and discards `n` bytes of the stream.
fn discard<R: Read>(src: &mut R, n: u64, what: &str) -> Result<()> {
    let got = io::copy(&mut src.take(n), &mut io::sink()).map_err(|e| read_err(what, e))?;
    if got != n {
        return Err(read_err(what, io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

/// Counts and hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    n: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

fn mismatch(e: &ParsedEntry, got: Sha256Hash, store_dir: &str) -> String {
    format!(
        "archive is corrupt: NAR of {} does not match the manifest: hash {got}, expected {}",
        e.path.to_absolute(store_dir),
        e.nar_hash
    )
}

// ---------------------------------------------------------------- direct

enum Body {
    Whole(Vec<u8>),
    Stream(Receiver<Vec<u8>>),
}

/// Reads a chunk stream as one byte stream.
struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct Job {
    idx: usize,
    body: Body,
}

/// What `unpack_one` did with a path.
struct Placed {
    /// Someone else (a concurrent build or restore) made the path valid
    /// before we got its lock: our copy was thrown away, nothing to register.
    already_valid: bool,
}

type Done = (usize, std::result::Result<Placed, String>);

fn direct<R: Read>(
    store: &Store,
    l: &Layout,
    src: &mut R,
    entries: &[ParsedEntry],
    actions: &[Action],
    what: &str,
    opts: &ImportOptions,
) -> Result<(usize, u64, usize)> {
    // Trees a killed restore left (`.nixdelta-<pid>-…`). The age spares a
    // restore in another pid namespace (a container sharing this store).
    super::leftovers::remove(
        &l.real_store_dir,
        ".nixdelta-",
        std::time::Duration::from_secs(600),
    );
    let jobs = opts.jobs.max(1);
    let (job_tx, job_rx) = bounded::<Job>(jobs * 2);
    let (done_tx, done_rx) = bounded::<Done>(entries.len().max(1));
    let store_dir = store.store_dir().to_string();
    let mut registrar = Registrar {
        l,
        store,
        entries,
        results: HashMap::new(),
        order: (0..entries.len())
            .filter(|&i| actions[i] == Action::Import)
            .collect(),
        next: 0,
        added: 0,
        already_valid: 0,
        bytes: 0,
    };
    let mut failure: Option<Error> = None;
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let real = &l.real_store_dir;
            let store_dir = &store_dir;
            let root = l.root.as_deref();
            s.spawn(move || {
                // Each thread reads the DB through its own connection (a
                // connection is not shared between threads), opened on
                // first need: only paths found on disk are re-checked.
                let mut own: Option<Store> = None;
                let mut is_valid = |p: &StorePath| -> std::result::Result<bool, String> {
                    if own.is_none() {
                        own = Some(Store::open(root).map_err(|e| e.to_string())?);
                    }
                    let s = own.as_ref().unwrap();
                    s.path_info(p)
                        .map(|i| i.is_some())
                        .map_err(|e| e.to_string())
                };
                for job in job_rx.iter() {
                    let e = &entries[job.idx];
                    let r = unpack_one(real, store_dir, e, job.idx, job.body, &mut is_valid);
                    if done_tx.send((job.idx, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(job_rx);
        drop(done_tx);
        let feed = (|| -> Result<()> {
            for (i, e) in entries.iter().enumerate() {
                if actions[i] != Action::Import {
                    discard(src, e.nar_size, what)?;
                    continue;
                }
                if e.nar_size <= SMALL_NAR {
                    let mut buf = vec![0u8; e.nar_size as usize];
                    src.read_exact(&mut buf).map_err(|e| read_err(what, e))?;
                    if job_tx
                        .send(Job {
                            idx: i,
                            body: Body::Whole(buf),
                        })
                        .is_err()
                    {
                        return Ok(());
                    }
                } else {
                    let (tx, rx) = bounded::<Vec<u8>>(4);
                    if job_tx
                        .send(Job {
                            idx: i,
                            body: Body::Stream(rx),
                        })
                        .is_err()
                    {
                        return Ok(());
                    }
                    let mut left = e.nar_size;
                    while left > 0 {
                        let n = left.min(CHUNK as u64) as usize;
                        let mut buf = vec![0u8; n];
                        src.read_exact(&mut buf).map_err(|e| read_err(what, e))?;
                        left -= n as u64;
                        if tx.send(buf).is_err() {
                            break; // the unpacker failed; it reports why
                        }
                    }
                }
                // Register what is ready; stop early on a failed path.
                while let Ok((idx, r)) = done_rx.try_recv() {
                    registrar.results.insert(idx, r);
                }
                registrar.flush(false, what)?;
            }
            format::read_trailer(src, what)
        })();
        drop(job_tx);
        if let Err(e) = feed {
            failure = Some(e);
        }
        for (idx, r) in done_rx.iter() {
            registrar.results.insert(idx, r);
        }
    });
    // Everything is unpacked or failed: register the verified prefix.
    let flushed = registrar.flush(true, what);
    let first_path_error = registrar.first_error();
    registrar.discard_unregistered();
    if let Some(e) = failure {
        return Err(e);
    }
    flushed?;
    if let Some(msg) = first_path_error {
        return Err(path_error(what, &msg));
    }
    if registrar.added + registrar.already_valid != registrar.order.len() {
        return Err(Error::Other(anyhow::anyhow!(
            "store archive {what}: unpacking stopped after {} of {} paths",
            registrar.added,
            registrar.order.len()
        )));
    }
    Ok((registrar.added, registrar.bytes, registrar.already_valid))
}

struct Registrar<'a> {
    l: &'a Layout,
    store: &'a Store,
    entries: &'a [ParsedEntry],
    results: HashMap<usize, std::result::Result<Placed, String>>,
    /// Entry indexes to import, in archive order.
    order: Vec<usize>,
    /// Position in `order` of the first unregistered path.
    next: usize,
    added: usize,
    /// Paths made valid by someone else while this import ran.
    already_valid: usize,
    bytes: u64,
}

impl Registrar<'_> {
    /// Registers the contiguous run of verified paths from `next`, in
    /// batches of `BATCH` (or all of it when `all`). Errors of a path stop
    /// the run there; `Err` is returned only when Nix fails to register.
    fn flush(&mut self, all: bool, what: &str) -> Result<()> {
        if !all {
            // Fail fast: the caller stops feeding; the final flush registers
            // the verified run before the failed path.
            if let Some(m) = self.first_error() {
                return Err(path_error(what, &m));
            }
        }
        loop {
            let mut end = self.next;
            while end < self.order.len()
                && end - self.next < BATCH
                && matches!(self.results.get(&self.order[end]), Some(Ok(_)))
            {
                end += 1;
            }
            let n = end - self.next;
            if n == 0 || (n < BATCH && !all) {
                return Ok(());
            }
            let batch: Vec<usize> = self.order[self.next..end]
                .iter()
                .copied()
                .filter(|i| !matches!(self.results.get(i), Some(Ok(p)) if p.already_valid))
                .collect();
            self.already_valid += n - batch.len();
            let registered = self.register(&batch, what)?;
            self.already_valid += batch.len() - registered.len();
            for i in registered {
                self.bytes += self.entries[i].nar_size;
                self.added += 1;
            }
            for i in &self.order[self.next..end] {
                self.results.remove(i);
            }
            self.next = end;
        }
    }

    /// Registers the batch's paths that are still invalid; returns those.
    fn register(&self, batch: &[usize], what: &str) -> Result<Vec<usize>> {
        let paths: Vec<StorePath> = batch
            .iter()
            .map(|&i| self.entries[i].path.clone())
            .collect();
        // A concurrent job may have registered some meanwhile: skip those
        // (`--load-db` would overwrite their signatures).
        let valid = self.store.path_infos(&paths)?;
        let store_dir = self.store.store_dir();
        let mut text = String::new();
        let mut registered = Vec::new();
        for (&i, v) in batch.iter().zip(valid) {
            if v.is_some() {
                continue;
            }
            registered.push(i);
            let e = &self.entries[i];
            text.push_str(&e.path.to_absolute(store_dir));
            text.push('\n');
            text.push_str(&e.nar_hash.to_hex());
            text.push('\n');
            text.push_str(&e.nar_size.to_string());
            text.push('\n');
            if let Some(d) = &e.deriver {
                text.push_str(&d.to_absolute(store_dir));
            }
            text.push('\n');
            text.push_str(&e.references.len().to_string());
            text.push('\n');
            for r in &e.references {
                text.push_str(&r.to_absolute(store_dir));
                text.push('\n');
            }
        }
        if text.is_empty() {
            return Ok(registered);
        }
        let mut cmd = nix_command(self.l, "nix-store");
        cmd.arg("--load-db");
        run_with_stdin(cmd, text.as_bytes())
            .map_err(|e| Error::Store(format!("store archive {what}: registering paths: {e}")))?;
        Ok(registered)
    }

    fn first_error(&self) -> Option<String> {
        self.order[self.next..]
            .iter()
            .find_map(|i| match self.results.get(i) {
                Some(Err(m)) => Some(m.clone()),
                _ => None,
            })
    }

    /// Removes paths renamed into place but not registered.
    fn discard_unregistered(&mut self) {
        for &i in &self.order[self.next..] {
            if let Some(Ok(placed)) = self.results.get(&i) {
                if placed.already_valid {
                    continue; // someone else's valid path: not ours to remove
                }
                let real = self.l.real_store_dir.join(self.entries[i].path.to_string());
                if let Err(e) = nar_unpack::remove_tree(&real) {
                    tracing::warn!("cannot remove unregistered {}: {e}", real.display());
                }
            }
        }
        self.results.clear();
    }
}

fn run_with_stdin(mut cmd: Command, input: &[u8]) -> std::result::Result<(), String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let mut stdin = child.stdin.take().unwrap();
    let w = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{:?} failed: {}", cmd.get_program(), err.trim()));
    }
    w.map_err(|e| e.to_string())
}

/// How a path error starts when the disk is full: the machine's fault
/// (exit 1), not the archive's (exit 7).
const NO_SPACE: &str = "no space left on ";

/// The error for a path that failed: integrity, unless the disk is full.
fn path_error(what: &str, msg: &str) -> Error {
    if msg.starts_with(NO_SPACE) {
        Error::Other(anyhow::anyhow!("store archive {what}: {msg}"))
    } else {
        Error::Integrity(format!("store archive {what}: {msg}"))
    }
}

/// Unpacks, verifies and renames one path into place.
fn unpack_one(
    real_store: &Path,
    store_dir: &str,
    e: &ParsedEntry,
    idx: usize,
    body: Body,
    is_valid: &mut dyn FnMut(&StorePath) -> std::result::Result<bool, String>,
) -> std::result::Result<Placed, String> {
    let tmp = real_store.join(format!(
        ".nixdelta-{}-{idx}-{}",
        std::process::id(),
        e.path.hash_part()
    ));
    let r = (|| -> std::result::Result<Placed, String> {
        let reader: Box<dyn Read> = match body {
            Body::Whole(v) => Box::new(io::Cursor::new(v)),
            Body::Stream(rx) => Box::new(ChunkReader {
                rx,
                cur: Vec::new(),
                pos: 0,
            }),
        };
        let mut hr = HashingReader {
            inner: reader,
            hash: Sha256::new(),
            n: 0,
        };
        let abs = e.path.to_absolute(store_dir);
        nar_unpack::unpack(&mut hr, &tmp, UnpackOptions { canonicalise: true }).map_err(|err| {
            // nar_unpack passes a full disk through unwrapped.
            if err.raw_os_error() == Some(libc::ENOSPC) {
                format!("{NO_SPACE}{}", real_store.display())
            } else if err.kind() == io::ErrorKind::InvalidData {
                format!("archive is corrupt: NAR of {abs}: {err}")
            } else {
                format!("unpacking {abs}: {err}")
            }
        })?;
        // Whatever the NAR did not use still counts (and must not exist).
        io::copy(&mut hr, &mut io::sink()).map_err(|err| err.to_string())?;
        if hr.n != e.nar_size {
            return Err(format!(
                "archive is corrupt: NAR of {abs} has {} bytes, the manifest says {}",
                hr.n, e.nar_size
            ));
        }
        let got = Sha256Hash(hr.hash.finalize().into());
        if got != e.nar_hash {
            return Err(mismatch(e, got, store_dir));
        }
        let dest = real_store.join(e.path.to_string());
        // Nix's lock, held for the swap only: holding it until the batch is
        // registered could deadlock two restores that wait for each other's
        // paths. Registration skips paths someone else registered meanwhile.
        let lock = PathLock::acquire(&dest).map_err(|err| format!("locking {abs}: {err}"))?;
        if std::fs::symlink_metadata(&dest).is_ok() {
            // Nix's rule: after taking a path's lock, re-check validity. A
            // build (or another restore) may have produced and registered
            // it while we waited; its content, not ours, is what the DB
            // describes (a nondeterministic build differs from our copy).
            if is_valid(&e.path).map_err(|err| format!("checking {abs}: {err}"))? {
                drop(lock);
                return Ok(Placed {
                    already_valid: true,
                });
            }
            // An invalid leftover (or a concurrent copy of the same
            // content): swap atomically, then delete the old tree.
            exchange(&tmp, &dest).map_err(|err| format!("replacing {abs}: {err}"))?;
        } else {
            std::fs::rename(&tmp, &dest).map_err(|err| format!("renaming into {abs}: {err}"))?;
        }
        drop(lock);
        Ok(Placed {
            already_valid: false,
        })
    })();
    if let Err(err) = nar_unpack::remove_tree(&tmp) {
        tracing::warn!("cannot remove {}: {err}", tmp.display());
    }
    r
}

fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let ca = std::ffi::CString::new(a.as_os_str().as_encoded_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_encoded_bytes())?;
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Nix's path lock: `flock` on `<path>.lock`, retried when the file went
/// stale (unlinked by its previous holder, who then wrote a byte to it).
pub struct PathLock {
    path: PathBuf,
    file: File,
}

impl PathLock {
    pub fn acquire(path: &Path) -> io::Result<PathLock> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        loop {
            use std::os::unix::fs::OpenOptionsExt as _;
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&lock_path)?;
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if file.metadata()?.len() == 0 {
                return Ok(PathLock {
                    path: lock_path,
                    file,
                });
            }
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.write_all(b"d");
    }
}

// ---------------------------------------------------------------- import

const EXPORT_MAGIC: u64 = 0x4558_494e;

fn nix_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
}

struct ImportChild {
    child: Child,
}

impl ImportChild {
    /// Ends the import after the entries fully sent: what is buffered goes
    /// to Nix, which registers every complete entry and fails on the
    /// unfinished one (no metadata: nothing of it is registered).
    fn fail(mut self, stdin: io::BufWriter<std::process::ChildStdin>, why: Error) -> Error {
        let mut stdin = stdin;
        let _ = stdin.flush();
        drop(stdin);
        let _ = self.child.wait();
        why
    }
}

/// Why `nix-store --import` failed, and what to do when the reason is a
/// daemon that does not trust this user (archives carry no signatures, so
/// only a trusted user may import them).
fn import_failed(stderr: &str) -> Error {
    let err = stderr.trim();
    let untrusted = [
        "lacks a signature",
        "lacks a valid signature",
        "not a trusted user",
    ]
    .iter()
    .any(|m| err.contains(m));
    if untrusted {
        return Error::Store(format!(
            "the Nix daemon refused the import: this user is not trusted by it. Add it to \
             `trusted-users` in the daemon's nix.conf, or restore as root with --method direct \
             (Nix said: {err})"
        ));
    }
    Error::Store(format!("nix-store --import failed: {err}"))
}

fn via_import<R: Read>(
    l: &Layout,
    src: &mut R,
    entries: &[ParsedEntry],
    actions: &[Action],
    what: &str,
) -> Result<(usize, u64, usize)> {
    if !actions.contains(&Action::Import) {
        for e in entries {
            discard(src, e.nar_size, what)?;
        }
        format::read_trailer(src, what)?;
        return Ok((0, 0, 0));
    }
    let store_dir = crate::nix::DEFAULT_STORE_DIR;
    let mut cmd = nix_command(l, "nix-store");
    cmd.arg("--import")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| Error::Store(format!("cannot run nix-store --import: {e}")))?;
    let mut ic = ImportChild { child };
    let mut stdin = io::BufWriter::with_capacity(1 << 20, ic.child.stdin.take().unwrap());
    let mut added = 0;
    let mut bytes = 0;
    let pipe_err = |e: io::Error| Error::Store(format!("nix-store --import: {e}"));
    let mut buf = vec![0u8; CHUNK];
    for (i, e) in entries.iter().enumerate() {
        if actions[i] != Action::Import {
            if let Err(err) = discard(src, e.nar_size, what) {
                return Err(ic.fail(stdin, err));
            }
            continue;
        }
        let step = (|| -> Result<()> {
            stdin.write_all(&1u64.to_le_bytes()).map_err(pipe_err)?;
            let mut h = Sha256::new();
            let mut left = e.nar_size;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                src.read_exact(&mut buf[..n])
                    .map_err(|e| read_err(what, e))?;
                h.update(&buf[..n]);
                stdin.write_all(&buf[..n]).map_err(pipe_err)?;
                left -= n as u64;
            }
            let got = Sha256Hash(h.finalize().into());
            if got != e.nar_hash {
                return Err(Error::Integrity(format!(
                    "store archive {what}: {}",
                    mismatch(e, got, store_dir)
                )));
            }
            let mut meta = Vec::new();
            meta.extend_from_slice(&EXPORT_MAGIC.to_le_bytes());
            nix_str(&mut meta, &e.path.to_absolute(store_dir));
            meta.extend_from_slice(&(e.references.len() as u64).to_le_bytes());
            for r in &e.references {
                nix_str(&mut meta, &r.to_absolute(store_dir));
            }
            nix_str(
                &mut meta,
                &e.deriver
                    .as_ref()
                    .map(|d| d.to_absolute(store_dir))
                    .unwrap_or_default(),
            );
            meta.extend_from_slice(&0u64.to_le_bytes());
            stdin.write_all(&meta).map_err(pipe_err)
        })();
        if let Err(err) = step {
            return Err(ic.fail(stdin, err));
        }
        added += 1;
        bytes += e.nar_size;
    }
    let end = stdin
        .write_all(&0u64.to_le_bytes())
        .and_then(|()| stdin.flush())
        .map_err(pipe_err);
    drop(stdin);
    let out = ic.child.wait_with_output().map_err(pipe_err)?;
    if !out.status.success() {
        return Err(import_failed(&String::from_utf8_lossy(&out.stderr)));
    }
    end?;
    format::read_trailer(src, what)?;
    Ok((added, bytes, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_daemon_refusals_say_what_to_do() {
        let e = import_failed(
            "error: cannot add path '/nix/store/abc-x' because it lacks a signature by a trusted key\n",
        )
        .to_string();
        assert!(
            e.contains("trusted-users") && e.contains("--method direct"),
            "{e}"
        );
        assert!(!e.starts_with("cannot read"), "{e}");
        let other = import_failed("error: disk on fire").to_string();
        assert!(
            other.contains("nix-store --import failed: error: disk on fire"),
            "{other}"
        );
    }
}
