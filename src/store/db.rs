//! Read-only access to Nix's SQLite DB (`ValidPaths`, `Refs`).
//!
//! Opened with `SQLITE_OPEN_READ_ONLY`, so it works for a user who can read
//! but not write `/nix/var/nix/db` while the Nix daemon holds it in WAL mode.
//! Every multi-statement read runs in one transaction for a consistent view.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{PathInfo, Snapshot};
use crate::error::{Error, Result};
use crate::nix::{Sha256Hash, StorePath};

pub struct Db {
    conn: Connection,
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
    /// Opens read-only. A reader of a WAL database needs its `-shm` file;
    /// when Nix has none open (no `-wal` either) and we may not create it,
    /// the main file holds every committed page, so it is read as immutable.
    pub fn open(path: &Path) -> Result<Db> {
        match Self::open_with(path, false) {
            Ok(db) => Ok(db),
            Err(e) if !wal_of(path).exists() => {
                tracing::debug!("{}: {e}; reading it as immutable", path.display());
                Self::open_with(path, true)
            }
            Err(e) => Err(e),
        }
    }

    fn open_with(path: &Path, immutable: bool) -> Result<Db> {
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
        // Fail now (and fall back) rather than on the first real query.
        conn.query_row("SELECT count(*) FROM ValidPaths WHERE id < 0", [], |_| {
            Ok(())
        })
        .map_err(db_err)?;
        Ok(Db { conn })
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        self.conn
            .query_row(
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

    pub fn path_infos(
        &self,
        paths: &[StorePath],
        store_dir: &str,
    ) -> Result<Vec<Option<PathInfo>>> {
        let tx = self.conn.unchecked_transaction().map_err(db_err)?;
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
    pub fn paths_since(&self, max_id: i64, store_dir: &str) -> Result<Vec<PathInfo>> {
        let tx = self.conn.unchecked_transaction().map_err(db_err)?;
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
    pub fn derivation_outputs(
        &self,
        drvs: &[StorePath],
        store_dir: &str,
    ) -> Result<Vec<Vec<StorePath>>> {
        let tx = self.conn.unchecked_transaction().map_err(db_err)?;
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

    pub fn all_paths(&self, store_dir: &str) -> Result<Vec<StorePath>> {
        let mut st = self
            .conn
            .prepare("SELECT path FROM ValidPaths")
            .map_err(db_err)?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(db_err)?;
        let mut out = Vec::new();
        for p in rows {
            out.push(parse_path(&p.map_err(db_err)?, store_dir)?);
        }
        Ok(out)
    }
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
