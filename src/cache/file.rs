//! `file:///DIR` binary cache: every write goes to a temp file in the same
//! directory and is renamed into place, so a reader never sees a part.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{BinaryCache, NarUpload};
use crate::error::{Error, Result};

pub struct FileCache {
    url: String,
    root: PathBuf,
}

const TMP_PREFIX: &str = ".nixdelta-tmp-";

/// This process's temporary names: `.nixdelta-tmp-<pid>-…`, so that a run
/// after a `kill -9` can tell whose they were.
fn tmp_prefix() -> String {
    format!("{TMP_PREFIX}{}-", std::process::id())
}

/// Leftovers of a dead process are removed only when older than this: the
/// directory may be shared over NFS, where other hosts' pids mean nothing.
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

impl FileCache {
    /// Creates the directory (and `nar/`) if needed and checks it is writable.
    pub fn open(url: &str, root: &Path) -> Result<FileCache> {
        let cache = FileCache {
            url: url.to_string(),
            root: root.to_path_buf(),
        };
        fs::create_dir_all(root.join("nar"))
            .map_err(|e| cache.err("cannot create directory", e))?;
        // Probe: an unwritable target must fail before any work is done.
        tempfile::Builder::new()
            .prefix(&tmp_prefix())
            .tempfile_in(root)
            .map_err(|e| cache.err("not writable", e))?;
        for dir in [root.to_path_buf(), root.join("nar")] {
            crate::store::leftovers::remove(&dir, TMP_PREFIX, LEFTOVER_AGE);
        }
        Ok(cache)
    }

    /// Opens without creating or writing anything (a dry run, an upstream):
    /// a directory that doesn't exist is an empty cache.
    pub fn open_read_only(url: &str, root: &Path) -> FileCache {
        FileCache {
            url: url.to_string(),
            root: root.to_path_buf(),
        }
    }

    fn err(&self, what: &str, e: io::Error) -> Error {
        Error::cache(&self.url, format!("{what}: {e}"))
    }

    fn temp_in(&self, dir: &Path) -> Result<tempfile::NamedTempFile> {
        let tmp = tempfile::Builder::new()
            .prefix(&tmp_prefix())
            .tempfile_in(dir)
            .map_err(|e| self.err("cannot create temp file", e))?;
        // Readable by a web server or another user serving this directory.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .map_err(|e| self.err("chmod", e))?;
        Ok(tmp)
    }

    fn persist(&self, tmp: tempfile::NamedTempFile, rel: &str) -> Result<()> {
        let dest = self.root.join(rel);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(|e| self.err("cannot create directory", e))?;
        }
        tmp.persist(&dest)
            .map_err(|e| self.err(&format!("cannot write {rel}"), e.error))?;
        Ok(())
    }
}

impl BinaryCache for FileCache {
    fn url(&self) -> &str {
        &self.url
    }

    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match fs::read(self.root.join(rel)) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(&format!("cannot read {rel}"), e)),
        }
    }

    fn exists(&self, rel: &str) -> Result<bool> {
        Ok(self.root.join(rel).exists())
    }

    fn put(&self, rel: &str, data: &[u8]) -> Result<()> {
        let mut tmp = self.temp_in(&self.root)?;
        tmp.write_all(data)
            .map_err(|e| self.err(&format!("cannot write {rel}"), e))?;
        self.persist(tmp, rel)
    }

    fn begin_nar(&self) -> Result<Box<dyn NarUpload>> {
        let tmp = self.temp_in(&self.root.join("nar"))?;
        Ok(Box::new(FileNar {
            tmp,
            cache_root: self.root.clone(),
            url: self.url.clone(),
        }))
    }

    fn size(&self, rel: &str) -> Result<Option<u64>> {
        match fs::metadata(self.root.join(rel)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(&format!("cannot stat {rel}"), e)),
        }
    }

    fn reader(&self, rel: &str) -> Result<Option<Box<dyn io::Read + Send>>> {
        match fs::File::open(self.root.join(rel)) {
            Ok(f) => Ok(Some(Box::new(io::BufReader::new(f)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(&format!("cannot read {rel}"), e)),
        }
    }

    /// Files directly in `dir`, without our temp files.
    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let entries = match fs::read_dir(self.root.join(dir)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(&format!("cannot list /{dir}"), e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.err(&format!("cannot list /{dir}"), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(TMP_PREFIX) && entry.file_type().is_ok_and(|t| t.is_file()) {
                names.push(name);
            }
        }
        Ok(names)
    }
}

struct FileNar {
    tmp: tempfile::NamedTempFile,
    cache_root: PathBuf,
    url: String,
}

impl Write for FileNar {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tmp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
}

impl NarUpload for FileNar {
    fn commit(self: Box<Self>, rel: &str) -> Result<()> {
        let dest = self.cache_root.join(rel);
        // NAR names are content hashes: an existing file has the same bytes.
        if dest.exists() {
            return Ok(());
        }
        self.tmp
            .persist(&dest)
            .map_err(|e| Error::cache(&self.url, format!("cannot write {rel}: {}", e.error)))?;
        Ok(())
    }
}
