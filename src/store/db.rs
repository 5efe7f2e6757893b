//! Read-only access to Nix's SQLite DB (`ValidPaths`, `Refs`).
//!
//! Opened with `SQLITE_OPEN_READ_ONLY`. Every multi-statement read runs in
//! one transaction for a consistent view.
//!
//! Reading a DB whose directory we may not write while a Nix daemon writes
//! it (a read-only bind mount of the host's `/nix`, or a non-root user of
//! a daemon install). Nix keeps its DB in WAL mode, and the daemon opens it
//! per client connection: `-wal` and `-shm` exist only while some client
//! is connected, and the last one out checkpoints and deletes them. Found
//! with the bundled SQLite (3.46) and a real daemon building through a
//! read-only bind mount (tests/integration/passthrough.rs):
//! * while `-wal` and `-shm` exist, `mode=ro` works: SQLite (>= 3.22)
//!   opens the read-only `-shm` and builds its wal-index in heap memory,
//!   checked against the WAL on every transaction, under its usual read
//!   locks (a read lock needs only read access). Consistent while the
//!   daemon writes;
//! * while they don't, `mode=ro` fails ("unable to open database file"):
//!   a WAL reader must create `-shm`. Then the main file holds every
//!   committed page, and is read with `immutable=1`, which is only right
//!   while nobody writes it. So that read is taken as valid only if, after
//!   it, there is still no `-wal` and the main file's inode, size and mtime
//!   are unchanged (a daemon that wrote meanwhile left a WAL or checkpointed
//!   into the main file); else it is read again;
//! * a connection is never kept across reads there: the daemon deletes
//!   and re-creates `-wal`/`-shm`, and a connection holding the old ones
//!   (or an immutable one, which caches pages) would read stale data. One
//!   open per read costs well under a millisecond.
//!
//! Where the directory is writable (root, a chroot store) SQLite creates
//! `-shm` itself, and one connection serves every read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{PathInfo, Snapshot};
use crate::error::{Error, Result};
use crate::nix::{Sha256Hash, StorePath};

pub struct Db {
    path: PathBuf,
    /// One connection for every read, when the DB's directory is writable.
    conn: Option<Connection>,
}

fn db_err(e: rusqlite::Error) -> Error {
    Error::Store(format!("Nix DB query failed: {e}"))
}

/// One `ValidPaths` row before its references are attached.
struct Row {
    id: i64,
    path: String,
    hash: String,
    deriver: Option<String>,
    nar_size: Option<i64>,
    sigs: Option<String>,
    ca: Option<String>,
}

const COLUMNS: &str = "id, path, hash, deriver, narSize, sigs, ca";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        path: r.get(1)?,
        hash: r.get(2)?,
        deriver: r.get(3)?,
        nar_size: r.get(4)?,
        sigs: r.get(5)?,
        ca: r.get(6)?,
    })
}

impl Db {
    /// Opens read-only. See the module comment for why a DB whose
    /// directory is not writable is read through a connection per query.
    pub fn open(path: &Path) -> Result<Db> {
        let dir_writable = path.parent().is_some_and(writable);
        if dir_writable || wal_of(path).exists() {
            if let Ok(conn) = open_with(path, false) {
                if dir_writable {
                    return Ok(Db {
                        path: path.to_path_buf(),
                        conn: Some(conn),
                    });
                }
            }
        }
        let db = Db {
            path: path.to_path_buf(),
            conn: None,
        };
        // Fail now (and fall back to the CLI) rather than on the first query.
        db.read(|_| Ok(()))?;
        Ok(db)
    }

    /// Runs one read (one transaction) on a consistent view of the DB.
    fn read<T>(&self, f: impl Fn(&Connection) -> Result<T>) -> Result<T> {
        if let Some(c) = &self.conn {
            return f(c);
        }
        let mut last = None;
        for attempt in 0..50 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(20 * attempt.min(10)));
            }
            let before = Fingerprint::of(&self.path);
            let conn = match open_with(&self.path, !before.wal) {
                Ok(c) => c,
                // The WAL went away (or came) between the look and the open.
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let r = f(&conn)?;
            drop(conn);
            // With a WAL, SQLite's own locks (on the read-only -shm) make
            // the read consistent; without, nobody may have written the
            // main file (a checkpoint) or started a WAL meanwhile.
            if before.wal || Fingerprint::of(&self.path) == before {
                return Ok(r);
            }
            tracing::debug!("{}: changed while read; reading again", self.path.display());
        }
        Err(last.unwrap_or_else(|| {
            Error::Store(format!("{}: kept changing while read", self.path.display()))
        }))
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        self.read(snapshot)
    }

    pub fn path_infos(
        &self,
        paths: &[StorePath],
        store_dir: &str,
    ) -> Result<Vec<Option<PathInfo>>> {
        self.read(|c| path_infos(c, paths, store_dir))
    }

    pub fn paths_since(&self, max_id: i64, store_dir: &str) -> Result<Vec<PathInfo>> {
        self.read(|c| paths_since(c, max_id, store_dir))
    }

    pub fn derivation_outputs(
        &self,
        drvs: &[StorePath],
        store_dir: &str,
    ) -> Result<Vec<Vec<StorePath>>> {
        self.read(|c| derivation_outputs(c, drvs, store_dir))
    }

    pub fn all_paths(&self, store_dir: &str) -> Result<Vec<StorePath>> {
        self.read(|c| all_paths(c, store_dir))
    }
}

/// What tells that someone wrote the DB: its main file's identity, size
/// and mtime, and whether a WAL exists.
#[derive(PartialEq, Eq, Debug)]
struct Fingerprint {
    wal: bool,
    main: Option<(u64, u64, i64, i64)>,
}

impl Fingerprint {
    fn of(path: &Path) -> Fingerprint {
        use std::os::unix::fs::MetadataExt as _;
        Fingerprint {
            wal: wal_of(path).exists(),
            main: std::fs::metadata(path)
                .ok()
                .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec())),
        }
    }
}

fn writable(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access() with a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn open_with(path: &Path, immutable: bool) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let uri = format!(
        "file:{}?mode=ro{}",
        path.display()
            .to_string()
            .replace('?', "%3f")
            .replace('#', "%23"),
        if immutable { "&immutable=1" } else { "" }
    );
    let conn = Connection::open_with_flags(uri, flags).map_err(db_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(60))
        .map_err(db_err)?;
    // Fail now rather than on the first real query.
    conn.query_row("SELECT count(*) FROM ValidPaths WHERE id < 0", [], |_| {
        Ok(())
    })
    .map_err(db_err)?;
    Ok(conn)
}

fn snapshot(c: &Connection) -> Result<Snapshot> {
    c.query_row(
        "SELECT coalesce(max(id), 0), count(*) FROM ValidPaths",
        [],
        |r| {
            Ok(Snapshot {
                max_id: r.get(0)?,
                count: r.get::<_, i64>(1)? as u64,
            })
        },
    )
    .map_err(db_err)
}

fn path_infos(
    c: &Connection,
    paths: &[StorePath],
    store_dir: &str,
) -> Result<Vec<Option<PathInfo>>> {
    let tx = c.unchecked_transaction().map_err(db_err)?;
    let mut by_path = tx
        .prepare_cached(&format!("SELECT {COLUMNS} FROM ValidPaths WHERE path = ?1"))
        .map_err(db_err)?;
    let mut refs = tx
        .prepare_cached(
            "SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference WHERE r.referrer = ?1",
        )
        .map_err(db_err)?;
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let row = by_path
            .query_row(params![p.to_absolute(store_dir)], read_row)
            .optional()
            .map_err(db_err)?;
        let Some(row) = row else {
            out.push(None);
            continue;
        };
        let references = refs
            .query_map(params![row.id], |r| r.get::<_, String>(0))
            .map_err(db_err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err)?;
        out.push(Some(to_info(row, references, store_dir)?));
    }
    drop((by_path, refs));
    tx.finish().map_err(db_err)?;
    Ok(out)
}

/// One indexed range scan over the primary key plus one over
/// `IndexReferrer`: O(new paths), whatever the store's size.
fn paths_since(c: &Connection, max_id: i64, store_dir: &str) -> Result<Vec<PathInfo>> {
    let tx = c.unchecked_transaction().map_err(db_err)?;
    let rows = {
        let mut st = tx
            .prepare(&format!(
                "SELECT {COLUMNS} FROM ValidPaths WHERE id > ?1 ORDER BY id"
            ))
            .map_err(db_err)?;
        let rows = st.query_map(params![max_id], read_row).map_err(db_err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?
    };
    let mut refs: HashMap<i64, Vec<String>> = HashMap::new();
    {
        let mut st = tx
            .prepare(
                "SELECT r.referrer, v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference \
                 WHERE r.referrer > ?1",
            )
            .map_err(db_err)?;
        let mut q = st.query(params![max_id]).map_err(db_err)?;
        while let Some(r) = q.next().map_err(db_err)? {
            refs.entry(r.get(0).map_err(db_err)?)
                .or_default()
                .push(r.get(1).map_err(db_err)?);
        }
    }
    tx.finish().map_err(db_err)?;
    rows.into_iter()
        .map(|row| {
            let r = refs.remove(&row.id).unwrap_or_default();
            to_info(row, r, store_dir)
        })
        .collect()
}

/// The valid outputs of each derivation (`DerivationOutputs`, which
/// Nix fills when it registers a `.drv`), in the order given.
fn derivation_outputs(
    c: &Connection,
    drvs: &[StorePath],
    store_dir: &str,
) -> Result<Vec<Vec<StorePath>>> {
    let tx = c.unchecked_transaction().map_err(db_err)?;
    let mut st = tx
        .prepare_cached(
            "SELECT o.path FROM ValidPaths d JOIN DerivationOutputs o ON o.drv = d.id \
             JOIN ValidPaths v ON v.path = o.path WHERE d.path = ?1",
        )
        .map_err(db_err)?;
    let mut out = Vec::with_capacity(drvs.len());
    for drv in drvs {
        let paths = st
            .query_map(params![drv.to_absolute(store_dir)], |r| {
                r.get::<_, String>(0)
            })
            .map_err(db_err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err)?;
        out.push(
            paths
                .iter()
                .map(|p| parse_path(p, store_dir))
                .collect::<Result<_>>()?,
        );
    }
    drop(st);
    tx.finish().map_err(db_err)?;
    Ok(out)
}

fn all_paths(c: &Connection, store_dir: &str) -> Result<Vec<StorePath>> {
    let mut st = c.prepare("SELECT path FROM ValidPaths").map_err(db_err)?;
    let rows = st
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(db_err)?;
    let mut out = Vec::new();
    for p in rows {
        out.push(parse_path(&p.map_err(db_err)?, store_dir)?);
    }
    Ok(out)
}

fn wal_of(db: &Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

fn parse_path(s: &str, store_dir: &str) -> Result<StorePath> {
    StorePath::from_absolute(s, store_dir)
        .map_err(|e| Error::Store(format!("Nix DB holds a bad path: {e}")))
}

fn to_info(row: Row, references: Vec<String>, store_dir: &str) -> Result<PathInfo> {
    let path = parse_path(&row.path, store_dir)?;
    let nar_hash = Sha256Hash::parse(&row.hash)
        .map_err(|e| Error::Store(format!("Nix DB: {}: {e}", row.path)))?;
    let mut references = references
        .iter()
        .map(|r| parse_path(r, store_dir))
        .collect::<Result<Vec<_>>>()?;
    references.sort();
    let deriver = match row.deriver.as_deref() {
        Some(d) if !d.is_empty() => Some(parse_path(d, store_dir)?),
        _ => None,
    };
    let sigs = row
        .sigs
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Ok(PathInfo {
        path,
        id: row.id,
        nar_hash,
        nar_size: row.nar_size.unwrap_or(0) as u64,
        references,
        deriver,
        sigs,
        ca: row.ca.filter(|c| !c.is_empty()),
    })
}
