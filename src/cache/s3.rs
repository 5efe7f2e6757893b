//! `s3://BUCKET[/PREFIX]?endpoint=…&region=…&scheme=http|https&profile=…`
//! binary cache, as Nix writes the URL: AWS S3, Cloudflare R2, Garage,
//! SeaweedFS, MinIO. URL, credentials and signing are
//! [`crate::net::s3`]'s.
//!
//! Small objects are one PUT; NARs from [`MULTIPART_FROM`] up are
//! multipart uploads, parts sent in parallel from the spool file (bounded:
//! no part is held in memory). Existence is HEAD, or one listing for many
//! paths.

use std::io::Read;
use std::sync::Arc;

use super::background::Background;
use super::spool::{SpoolData, SpoolTarget, SpooledNar};
use super::{content_type, narinfo_name, BinaryCache, CacheOptions, NarUpload};
use crate::error::Result;
use crate::net::s3::S3Bucket;
use crate::net::{parallel_map, Net, MAX_IN_FLIGHT};
use crate::nix::StorePath;

/// NARs at least this large are sent as multipart uploads.
pub const MULTIPART_FROM: u64 = 32 << 20;
/// Smallest part size (S3 needs ≥ 5 MiB except the last part).
const PART_SIZE: u64 = 16 << 20;
/// S3 allows 10 000 parts per upload.
const MAX_PARTS: u64 = 10_000;
/// Existence checks of at least this many narinfos list the bucket instead
/// (one request per 1 000 objects), if that takes at most one request per
/// this many paths.
const LIST_FROM: usize = 50;
/// Parts of one upload in flight at once.
const PARALLEL_PARTS: usize = 4;

#[derive(Debug)]
struct Inner {
    s3: S3Bucket,
    /// NAR uploads under way.
    background: Arc<Background>,
}

#[derive(Debug)]
pub struct S3Cache {
    inner: Arc<Inner>,
}

impl S3Cache {
    pub fn open(url: &str, opts: &CacheOptions) -> Result<S3Cache> {
        Ok(S3Cache {
            inner: Arc::new(Inner {
                s3: S3Bucket::open(url, url, opts.retry)?,
                background: Arc::default(),
            }),
        })
    }
}

impl Inner {
    /// Names of the objects directly under `dir`; `None` when that takes
    /// more than `max_pages` requests.
    fn list(&self, dir: &str, max_pages: Option<usize>) -> Result<Option<Vec<String>>> {
        let dir = dir.trim_matches('/');
        let under = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let Some(objects) = self.s3.list(&under, Some("/"), max_pages)? else {
            return Ok(None);
        };
        Ok(Some(
            objects
                .into_iter()
                .filter_map(|o| o.key.strip_prefix(&under).map(str::to_string))
                .filter(|n| !n.is_empty() && !n.contains('/'))
                .collect(),
        ))
    }

    /// Uploads a finished NAR: one PUT, or a multipart upload unless the
    /// bucket has it already.
    fn upload_nar(&self, rel: &str, data: &SpoolData) -> Result<()> {
        if data.len() < MULTIPART_FROM {
            return self.put_data(rel, data);
        }
        // Content-addressed: a NAR of this name and size is this NAR (left
        // by an interrupted push, or another job's).
        if self.s3.head(rel)? == Some(data.len()) {
            tracing::debug!("{rel}: already in the bucket");
            return Ok(());
        }
        self.put_multipart(rel, data)
    }

    fn put_data(&self, rel: &str, data: &SpoolData) -> Result<()> {
        self.s3.put(rel, content_type(rel), data.len(), || {
            data.body(0, data.len())
        })
    }

    /// Multipart upload: create, parts in parallel, complete. Nothing is
    /// visible under `rel` until the complete succeeds; on failure the
    /// upload is aborted (best effort).
    fn put_multipart(&self, rel: &str, data: &SpoolData) -> Result<()> {
        let len = data.len();
        let part_size = PART_SIZE.max(len.div_ceil(MAX_PARTS));
        let parts: Vec<(u16, u64, u64)> = (0..len.div_ceil(part_size))
            .map(|i| {
                let off = i * part_size;
                ((i + 1) as u16, off, part_size.min(len - off))
            })
            .collect();
        let up = self.s3.multipart_start(rel, content_type(rel))?;
        tracing::debug!(
            "{rel}: multipart upload of {len} bytes in {} parts",
            parts.len()
        );
        let result = parallel_map(&parts, PARALLEL_PARTS, |&(n, off, plen)| {
            let etag = self
                .s3
                .multipart_part(&up, n, parts.len(), plen, || data.body(off, plen))?;
            tracing::debug!("{rel}: part {n}/{} uploaded", parts.len());
            Ok(etag)
        })
        .and_then(|etags| self.s3.multipart_complete(&up, &etags));
        if result.is_err() {
            self.s3.multipart_abort(&up);
        }
        result
    }
}

impl BinaryCache for S3Cache {
    fn url(&self) -> &str {
        &self.inner.s3.net.url
    }

    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        self.inner.s3.get(rel)
    }

    fn exists(&self, rel: &str) -> Result<bool> {
        Ok(self.inner.s3.head(rel)?.is_some())
    }

    fn size(&self, rel: &str) -> Result<Option<u64>> {
        self.inner.s3.head(rel)
    }

    fn reader(&self, rel: &str) -> Result<Option<Box<dyn Read + Send>>> {
        Ok(self
            .inner
            .s3
            .reader(rel)?
            .map(|r| Box::new(r) as Box<dyn Read + Send>))
    }

    fn put(&self, rel: &str, data: &[u8]) -> Result<()> {
        self.inner.put_after_nar(rel, data)
    }

    fn begin_nar(&self) -> Result<Box<dyn NarUpload>> {
        Ok(Box::new(SpooledNar::new(self.inner.clone())))
    }

    /// Many paths: one listing of the cache's narinfos (1 000 per request)
    /// when that is cheaper than a HEAD each; else HEADs, 32 at a time.
    fn has_narinfos(&self, paths: &[StorePath]) -> Result<Vec<bool>> {
        if paths.len() >= LIST_FROM {
            let max_pages = paths.len() / LIST_FROM;
            match self.inner.list("", Some(max_pages)) {
                Ok(Some(names)) => {
                    let names: std::collections::HashSet<String> = names.into_iter().collect();
                    return Ok(paths
                        .iter()
                        .map(|p| names.contains(&narinfo_name(p)))
                        .collect());
                }
                Ok(None) => tracing::debug!("more narinfos than worth listing: HEAD each"),
                Err(e) => tracing::debug!("cannot list the bucket ({e}): HEAD each"),
            }
        }
        parallel_map(paths, MAX_IN_FLIGHT, |p| self.exists(&narinfo_name(p)))
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        Ok(self.inner.list(dir, None)?.unwrap_or_default())
    }

    fn request_summary(&self) -> Option<String> {
        Some(self.inner.s3.net.retrier.stats.summary())
    }
}

impl Drop for S3Cache {
    fn drop(&mut self) {
        self.inner.background.wait_all();
        self.inner.s3.net.log_summary();
    }
}

impl SpoolTarget for Inner {
    fn net(&self) -> &Net {
        &self.s3.net
    }
    fn background(&self) -> &Arc<Background> {
        &self.background
    }
    fn upload_nar(&self, rel: &str, data: &SpoolData) -> Result<()> {
        Inner::upload_nar(self, rel, data)
    }
    fn put_data(&self, rel: &str, data: &SpoolData) -> Result<()> {
        Inner::put_data(self, rel, data)
    }
}
