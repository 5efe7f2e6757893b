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

mod direct;
mod export;
mod sudo;

use direct::direct;
pub use direct::PathLock;
use export::via_import;
pub use sudo::serve as serve_as_root;

use super::Store;
use crate::error::{Error, Result};
use crate::nix::archive::{self as format, input_err, read_err, ParsedEntry};
use crate::nix::nar_unpack::{self, UnpackOptions};
use crate::nix::{Sha256Hash, StorePath, StoreSpec};

/// How paths are registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImportMethod {
    /// Direct when the store is writable (or root is had by `sudo -n`),
    /// else import.
    #[default]
    Auto,
    Direct,
    Import,
    /// Direct, as root through `sudo -n` (what `Auto` and `Direct` become
    /// for a non-root job on a multi-user install that allows it).
    SudoDirect,
}

impl ImportMethod {
    /// As the restore report names it.
    pub fn describe(self) -> &'static str {
        match self {
            ImportMethod::Auto => "auto",
            ImportMethod::Direct => "direct",
            ImportMethod::Import => "nix-store --import",
            ImportMethod::SudoDirect => "direct, as root by sudo -n",
        }
    }
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
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
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

/// Where the store's files are, and the store as Nix commands get it.
struct Layout {
    real_store_dir: PathBuf,
    spec: StoreSpec,
}

fn layout(store: &Store) -> Layout {
    let probe = StorePath::from_base_name("00000000000000000000000000000000-probe").unwrap();
    let real = store.real_path(&probe);
    Layout {
        real_store_dir: real.parent().unwrap().to_path_buf(),
        spec: store.spec().clone(),
    }
}

fn nix_command(layout: &Layout, program: &str) -> Command {
    let mut cmd = Command::new(program);
    if let Some(store) = layout.spec.nix_arg() {
        cmd.arg("--store").arg(store);
    }
    cmd
}

fn writable(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Refuses `--method direct` where it cannot be: the store and its DB
/// are not writable, and root is not to be had by `sudo -n`.
pub fn check_method(store: &Store, method: ImportMethod) -> Result<()> {
    if method == ImportMethod::Direct && resolve_method(store, method) == ImportMethod::Import {
        return Err(Error::Usage(format!(
            "--method direct cannot write the store {} and its DB (not root, and `sudo -n` \
             is refused, or the store is not a root-owned multi-user one): use --method \
             import (or auto)",
            store.spec()
        )));
    }
    Ok(())
}

/// The method `method` resolves to for `store`. Auto: direct on a local
/// store this process can write (not one Nix reaches through a daemon);
/// else direct as root by `sudo -n` when allowed (GitHub's hosted
/// runners), except on an explicit daemon URL; else import. `Direct`
/// asked for: direct where writable, else by `sudo -n`, else import
/// (which [`check_method`] refuses).
pub fn resolve_method(store: &Store, method: ImportMethod) -> ImportMethod {
    if matches!(method, ImportMethod::Import | ImportMethod::SudoDirect) {
        return method;
    }
    let l = layout(store);
    let db_dir = l.real_store_dir.join("../var/nix/db");
    let local_writable = writable(&l.real_store_dir) && writable(&db_dir);
    // NIX_REMOTE=daemon means Nix itself would not open the DB directly.
    let remote = std::env::var("NIX_REMOTE").is_ok_and(|v| !v.is_empty() && v != "local");
    let daemon_url = store.spec().via_daemon();
    if method == ImportMethod::Direct {
        if local_writable {
            return ImportMethod::Direct;
        }
        return if sudo::allowed(&l) {
            ImportMethod::SudoDirect
        } else {
            ImportMethod::Import
        };
    }
    if local_writable && !remote && !daemon_url {
        ImportMethod::Direct
    } else if !daemon_url && sudo::allowed(&l) {
        ImportMethod::SudoDirect
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
    check_method(store, opts.method)?;
    let method = resolve_method(store, opts.method);
    if method == ImportMethod::SudoDirect {
        return sudo::import_as_root(&layout(store), src, what, opts);
    }
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
    let to_import = || {
        entries
            .iter()
            .zip(&actions)
            .filter(|(_, a)| **a == Action::Import)
    };
    let _progress = crate::progress::begin(
        "restore",
        to_import().count() as u64,
        to_import().map(|(e, _)| e.nar_size).sum(),
    );
    let (added, bytes, raced) = match method {
        ImportMethod::Direct | ImportMethod::SudoDirect => {
            direct(store, &l, &mut dec, &entries, &actions, what, opts)?
        }
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
