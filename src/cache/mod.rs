//! Binary-cache targets (Nix substituters we write to). The push pipeline
//! only sees [`BinaryCache`]; it does not know which target it talks to.

mod background;
mod file;
pub mod frames;
pub mod http;
pub mod s3;
pub mod spool;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::nix::StorePath;

pub use file::FileCache;
pub use http::HttpCache;
pub use s3::S3Cache;

/// `nix-cache-info` as Nix writes it for a binary cache.
pub fn cache_info(store_dir: &str) -> String {
    format!("StoreDir: {store_dir}\nWantMassQuery: 1\nPriority: 40\n")
}

/// The name a narinfo has in a cache: `<hash part>.narinfo`.
/// The `StoreDir:` a `nix-cache-info` names, if any.
pub fn info_store_dir(info: &[u8]) -> Option<String> {
    String::from_utf8_lossy(info)
        .lines()
        .find_map(|l| l.strip_prefix("StoreDir:").map(|v| v.trim().to_string()))
}

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

    /// Size of a file, `None` when it doesn't exist (network targets: HEAD).
    fn size(&self, rel: &str) -> Result<Option<u64>> {
        Ok(self.get(rel)?.map(|d| d.len() as u64))
    }

    /// Streams a file (a NAR to check); `None` when it doesn't exist.
    fn reader(&self, rel: &str) -> Result<Option<Box<dyn Read + Send>>> {
        Ok(self
            .get(rel)?
            .map(|d| Box::new(std::io::Cursor::new(d)) as Box<dyn Read + Send>))
    }

    /// Names of the files directly in directory `dir` of the cache (`""`:
    /// the root), for `verify`. Not every target can list.
    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let _ = dir;
        Err(Error::cache(
            self.url(),
            "this target cannot list its files",
        ))
    }

    /// Requests made so far, for logs and the benchmark (network targets).
    fn request_summary(&self) -> Option<String> {
        None
    }

    /// Writes `nix-cache-info` unless present; refuses a cache for another
    /// store directory (its paths would be unusable here, and ours there).
    fn ensure_cache_info(&self, store_dir: &str) -> Result<()> {
        let Some(text) = self.get("nix-cache-info")? else {
            return self.put("nix-cache-info", cache_info(store_dir).as_bytes());
        };
        match info_store_dir(&text) {
            Some(d) if d != store_dir => Err(Error::cache(
                self.url(),
                format!("nix-cache-info says StoreDir: {d}, this store is {store_dir}"),
            )),
            _ => Ok(()),
        }
    }
}

/// A NAR being written. Dropping it without `commit` discards it.
pub trait NarUpload: Write + Send {
    /// Makes the written bytes visible as `rel` (e.g. `nar/<hash>.nar.zst`).
    /// A network target may finish the upload in the background; it then
    /// guarantees that [`BinaryCache::put`] of a narinfo whose `URL:` is
    /// `rel` waits for it, and fails (writing nothing) if it failed.
    fn commit(self: Box<Self>, rel: &str) -> Result<()>;
}

/// How network targets authenticate and retry. Set once per process by the
/// command line ([`set_defaults`]); [`open`] uses it.
#[derive(Clone, Debug, Default)]
pub struct CacheOptions {
    /// netrc file with credentials for http(s):// targets (as Nix's
    /// `netrc-file`); default `$NIXDELTA_NETRC_FILE`, else `/etc/nix/netrc`
    /// when present.
    pub netrc_file: Option<PathBuf>,
    pub retry: crate::net::RetryPolicy,
}

static DEFAULTS: OnceLock<CacheOptions> = OnceLock::new();

/// Sets the options [`open`] uses (first call wins).
pub fn set_defaults(opts: CacheOptions) {
    let _ = DEFAULTS.set(opts);
}

fn defaults() -> CacheOptions {
    DEFAULTS.get().cloned().unwrap_or_else(|| CacheOptions {
        netrc_file: None,
        retry: crate::net::RetryPolicy::from_env(),
    })
}

/// Opens a cache only to read from it (a dry run, an upstream): a file://
/// directory is neither created nor written.
pub fn open_read_only(url: &str) -> Result<Box<dyn BinaryCache>> {
    match url.strip_prefix("file://") {
        Some(path) if path.starts_with('/') => {
            let path = path.split('?').next().unwrap_or(path);
            Ok(Box::new(FileCache::open_read_only(url, path.as_ref())))
        }
        _ => open(url),
    }
}

/// Opens a target from a Nix-style store URL, with the process's
/// [`CacheOptions`].
pub fn open(url: &str) -> Result<Box<dyn BinaryCache>> {
    open_with(url, &defaults())
}

/// Opens a target from a Nix-style store URL: `file:///DIR`,
/// `s3://BUCKET[/PREFIX]?endpoint=…&region=…`, `http(s)://HOST/PATH`.
pub fn open_with(url: &str, opts: &CacheOptions) -> Result<Box<dyn BinaryCache>> {
    if url.starts_with("s3://") {
        return Ok(Box::new(S3Cache::open(url, opts)?));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Box::new(HttpCache::open(url, opts)?));
    }
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
        &crate::net::redact::without_userinfo(url),
        format!("unsupported URL scheme {scheme:?} (supported: file://, s3://, http://, https://)"),
    ))
}

/// Content types Nix's own binary caches use.
pub fn content_type(rel: &str) -> &'static str {
    if rel.ends_with(".narinfo") {
        "text/x-nix-narinfo"
    } else if rel == "nix-cache-info" {
        "text/x-nix-cache-info"
    } else if rel.starts_with("nar/") {
        "application/x-nix-nar"
    } else {
        "application/octet-stream"
    }
}
