//! `dir:PATH[?max-size=SIZE]`: archives as `PATH/<key>.nda` files, for a
//! persistent runner or a GitLab `cache:` folder.
//!
//! Safe when several jobs on one machine restore and save at once: an
//! archive is written to a temporary file in the same directory and
//! published with `link(2)`, which fails when the key exists, so a reader
//! opens a whole archive or none, and the first of two concurrent savers of
//! one key wins while the other reports `Exists`. A restore marks its
//! archive used (mtime); after a save, the least recently used archives are
//! deleted until the directory fits `max-size` (deleting an open file does
//! not disturb its reader).

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{check_key, Backend, Found, Produce, SaveOutcome};
use crate::error::{Error, Result};

pub const SUFFIX: &str = ".nda";

pub struct DirBackend {
    dir: PathBuf,
    max_size: Option<u64>,
    read_only: bool,
}

impl DirBackend {
    pub fn new(spec: &Path, read_only: bool) -> Result<DirBackend> {
        let s = spec.to_string_lossy();
        let (path, max_size) = match s.split_once("?max-size=") {
            Some((p, size)) => {
                let n = crate::size::Size::parse(size).map(|s| s.0).ok_or_else(|| {
                    Error::Usage(format!("dir:{s}: bad max-size {size:?} (e.g. 10G)"))
                })?;
                (PathBuf::from(p), Some(n))
            }
            None => (spec.to_path_buf(), None),
        };
        Ok(DirBackend {
            dir: path,
            max_size,
            read_only,
        })
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::cache(&self.describe(), msg)
    }

    fn file(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}{SUFFIX}"))
    }

    /// (key, size, mtime) of every archive, unordered.
    fn list(&self) -> Result<Vec<(String, u64, SystemTime)>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(self.err(format!("cannot list: {e}"))),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            if key.starts_with('.') {
                continue;
            }
            if let Ok(m) = e.metadata() {
                out.push((
                    key.to_string(),
                    m.len(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ));
            }
        }
        Ok(out)
    }

    /// Deletes least recently used archives (never `keep`) until the
    /// directory fits the cap; removes temporary files older than a day.
    pub fn prune(&self, keep: &str) -> Result<Vec<String>> {
        let Some(cap) = self.max_size else {
            return Ok(vec![]);
        };
        let mut all = self.list()?;
        all.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
        let mut total: u64 = all.iter().map(|a| a.1).sum();
        let mut deleted = Vec::new();
        for (key, size, _) in all {
            if total <= cap {
                break;
            }
            if key == keep {
                continue;
            }
            match fs::remove_file(self.file(&key)) {
                Ok(()) => {
                    total -= size;
                    deleted.push(key);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= size,
                Err(e) => tracing::warn!("{}: cannot prune {key}: {e}", self.describe()),
            }
        }
        if let Ok(rd) = fs::read_dir(&self.dir) {
            let day = Duration::from_secs(86_400);
            for e in rd.flatten() {
                let stale = e.file_name().to_string_lossy().starts_with(".tmp-")
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
                if stale {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(deleted)
    }
}

impl Backend for DirBackend {
    fn describe(&self) -> String {
        format!("dir:{}", self.dir.display())
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn lookup(&self, key: &str, prefixes: &[String]) -> Result<Option<Found>> {
        check_key(key)?;
        let exact = self.file(key);
        if let Ok(m) = fs::metadata(&exact) {
            return Ok(Some(Found {
                key: key.to_string(),
                size: Some(m.len()),
                locator: exact.to_string_lossy().into_owned(),
            }));
        }
        let all = self.list()?;
        for prefix in prefixes {
            let best = all
                .iter()
                .filter(|(k, _, _)| k.starts_with(prefix.as_str()))
                .max_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
            if let Some((k, size, _)) = best {
                return Ok(Some(Found {
                    key: k.clone(),
                    size: Some(*size),
                    locator: self.file(k).to_string_lossy().into_owned(),
                }));
            }
        }
        Ok(None)
    }

    fn open(&self, found: &Found) -> Result<Box<dyn Read + Send>> {
        let f = File::open(&found.locator)
            .map_err(|e| self.err(format!("cannot open {}: {e}", found.locator)))?;
        if !self.read_only {
            // Mark it used, for pruning (least recently used go first).
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    }

    fn save(&self, key: &str, produce: Produce<'_>) -> Result<SaveOutcome> {
        check_key(key)?;
        if self.read_only {
            return Ok(SaveOutcome::ReadOnly);
        }
        let dest = self.file(key);
        if dest.exists() {
            return Ok(SaveOutcome::Exists);
        }
        fs::create_dir_all(&self.dir).map_err(|e| self.err(format!("cannot create: {e}")))?;
        // 0666 less the umask (0644 by default), as any file: a runner
        // group sharing the directory must read it. tempfile's default
        // is 0600.
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o666);
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".tmp-{key}-"))
            .permissions(mode)
            .tempfile_in(&self.dir)
            .map_err(|e| self.err(format!("cannot create a temporary file: {e}")))?;
        let bytes = {
            let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
            produce(&mut w)?;
            w.flush().map_err(|e| self.err(format!("writing: {e}")))?;
            drop(w);
            tmp.as_file()
                .sync_all()
                .map_err(|e| self.err(format!("syncing: {e}")))?;
            tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0)
        };
        // link(2) publishes atomically and fails if another job won.
        let published = fs::hard_link(tmp.path(), &dest);
        drop(tmp); // removes the temporary name
        match published {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Ok(SaveOutcome::Exists)
            }
            Err(e) => return Err(self.err(format!("cannot publish {}: {e}", dest.display()))),
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        let deleted = self.prune(key)?;
        if !deleted.is_empty() {
            tracing::info!(
                "{}: pruned {} least recently used archives to fit max-size",
                self.describe(),
                deleted.len()
            );
        }
        Ok(SaveOutcome::Saved { bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save_bytes(b: &DirBackend, key: &str, data: &[u8]) -> SaveOutcome {
        b.save(key, &mut |w: &mut dyn Write| {
            w.write_all(data).unwrap();
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn exact_then_prefix_newest_and_prune() {
        let d = tempfile::tempdir().unwrap();
        let spec = format!("{}?max-size=25", d.path().display());
        let b = DirBackend::new(spec.as_ref(), false).unwrap();
        assert_eq!(b.lookup("p-1", &["p-".into()]).unwrap(), None);
        assert_eq!(
            save_bytes(&b, "p-1", b"0123456789"),
            SaveOutcome::Saved { bytes: 10 }
        );
        assert_eq!(save_bytes(&b, "p-1", b"other"), SaveOutcome::Exists);
        let old = SystemTime::now() - Duration::from_secs(100);
        File::options()
            .write(true)
            .open(b.file("p-1"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(
            save_bytes(&b, "p-2", b"0123456789"),
            SaveOutcome::Saved { bytes: 10 }
        );
        let f = b
            .lookup("p-3", &["q-".into(), "p-".into()])
            .unwrap()
            .unwrap();
        assert_eq!(f.key, "p-2", "newest under the first prefix that matches");
        let f = b.lookup("p-1", &["p-".into()]).unwrap().unwrap();
        assert_eq!(f.key, "p-1");
        let mut s = String::new();
        b.open(&f).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "0123456789");
        // p-1 was just used: p-2 is now the least recently used.
        assert_eq!(
            save_bytes(&b, "p-3", b"0123456789"),
            SaveOutcome::Saved { bytes: 10 }
        );
        let mut keys: Vec<String> = b.list().unwrap().into_iter().map(|x| x.0).collect();
        keys.sort();
        assert_eq!(keys, vec!["p-1", "p-3"]);
        let ro = DirBackend::new(d.path(), true).unwrap();
        assert_eq!(save_bytes(&ro, "p-9", b"x"), SaveOutcome::ReadOnly);
        assert!(b.lookup("../x", &[]).is_err());
    }

    #[test]
    fn failed_producer_publishes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let b = DirBackend::new(d.path(), false).unwrap();
        let r = b.save("k", &mut |w: &mut dyn Write| {
            w.write_all(b"partial").unwrap();
            Err(Error::Integrity("boom".into()))
        });
        assert!(r.is_err());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
