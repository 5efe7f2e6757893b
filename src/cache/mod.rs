//! Binary-cache targets (Nix substituters we write to). The push pipeline
//! only sees [`BinaryCache`]; it does not know which target it talks to.

mod file;

use std::io::Write;

use crate::error::{Error, Result};
use crate::nix::StorePath;

pub use file::FileCache;

/// `nix-cache-info` as Nix writes it for a binary cache.
pub fn cache_info(store_dir: &str) -> String {
    format!("StoreDir: {store_dir}\nWantMassQuery: 1\nPriority: 40\n")
}

/// The name a narinfo has in a cache: `<hash part>.narinfo`.
pub fn narinfo_name(path: &StorePath) -> String {
    format!("{}.narinfo", path.hash_part())
}

pub trait BinaryCache: Send + Sync {
    /// The URL as the user gave it (never with credentials).
    fn url(&self) -> &str;
    /// Reads a file of the cache; `None` when it doesn't exist.
    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>>;
    /// Whether a file exists.
    fn exists(&self, rel: &str) -> Result<bool>;
    /// Atomically writes a small file (narinfo, nix-cache-info): readers see
    /// the old state or the whole new file, never a part.
    fn put(&self, rel: &str, data: &[u8]) -> Result<()>;
    /// Starts writing a compressed NAR whose name (its file hash) is known
    /// only at the end. Nothing is visible until [`NarUpload::commit`].
    fn begin_nar(&self) -> Result<Box<dyn NarUpload>>;

    /// Whether each path's narinfo is present.
    fn has_narinfos(&self, paths: &[StorePath]) -> Result<Vec<bool>> {
        paths
            .iter()
            .map(|p| self.exists(&narinfo_name(p)))
            .collect()
    }

    /// Writes `nix-cache-info` unless present.
    fn ensure_cache_info(&self, store_dir: &str) -> Result<()> {
        if !self.exists("nix-cache-info")? {
            self.put("nix-cache-info", cache_info(store_dir).as_bytes())?;
        }
        Ok(())
    }
}

/// A NAR being written. Dropping it without `commit` discards it.
pub trait NarUpload: Write + Send {
    /// Makes the written bytes visible as `rel` (e.g. `nar/<hash>.nar.zst`).
    fn commit(self: Box<Self>, rel: &str) -> Result<()>;
}

/// Opens a target from a Nix-style store URL.
pub fn open(url: &str) -> Result<Box<dyn BinaryCache>> {
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() || !path.starts_with('/') {
            return Err(Error::cache(
                url,
                "a file:// URL needs an absolute path (file:///DIR)",
            ));
        }
        let path = path.split('?').next().unwrap_or(path);
        return Ok(Box::new(FileCache::open(url, path.as_ref())?));
    }
    let scheme = url.split("://").next().unwrap_or(url);
    Err(Error::cache(
        url,
        format!("unsupported URL scheme {scheme:?} (supported: file://)"),
    ))
}
