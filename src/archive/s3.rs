//! `s3://bucket/prefix?endpoint=…&region=…&profile=…`: archives as objects
//! `<prefix>/<key>.nda` in any S3-compatible store (AWS, R2, MinIO,
//! SeaweedFS, Garage).
//!
//! The bucket (URL, credentials including `profile=`, signing, list,
//! multipart) is [`crate::net::s3::S3Bucket`], as for the binary cache, and
//! every request goes through its retry policy. Saves stream into a
//! multipart upload, parts uploaded in parallel as the archive is produced
//! (never a temporary copy); nothing is visible under the key until the
//! upload completes, and a failed one is aborted. Lookup: HEAD of the
//! exact key, else the newest object (LastModified) under each restore
//! prefix. Downloads use parallel ranges.

use std::io::Read;
use std::sync::{Arc, Mutex};

use super::dir::SUFFIX;
use super::{check_key, Backend, Found, Produce, SaveOutcome};
use crate::error::Result;
use crate::net::s3::S3Bucket;
use crate::net::transfer::{self, ChunkedUpload};
use crate::net::RetryPolicy;

const PARALLEL: usize = 4;
/// S3 parts are at least 5 MiB (but the last).
const MIN_PART: usize = 5 << 20;

pub struct S3Backend {
    /// The URL without its query, as shown.
    url: String,
    s3: Arc<S3Bucket>,
    read_only: bool,
}

impl S3Backend {
    pub fn from_url(url: &str, read_only: bool) -> Result<S3Backend> {
        let shown = url.split('?').next().unwrap_or(url).to_string();
        let s3 = S3Bucket::open(url, &shown, RetryPolicy::from_env())?;
        Ok(S3Backend {
            url: shown,
            s3: Arc::new(s3),
            read_only,
        })
    }

    fn object(key: &str) -> String {
        format!("{key}{SUFFIX}")
    }
}

impl Backend for S3Backend {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn lookup(&self, key: &str, prefixes: &[String]) -> Result<Option<Found>> {
        check_key(key)?;
        let exact = Self::object(key);
        if let Some(size) = self.s3.head(&exact)? {
            return Ok(Some(Found {
                key: key.to_string(),
                size: Some(size),
                locator: exact,
            }));
        }
        for p in prefixes {
            // RFC 3339 timestamps of one format sort as strings.
            let best = self
                .s3
                .list(p, None, None)?
                .unwrap_or_default()
                .into_iter()
                .filter_map(|o| Some((o.key.strip_suffix(SUFFIX)?.to_string(), o)))
                .max_by(|a, b| {
                    (a.1.last_modified.cmp(&b.1.last_modified)).then_with(|| a.0.cmp(&b.0))
                });
            if let Some((k, o)) = best {
                return Ok(Some(Found {
                    locator: o.key,
                    key: k,
                    size: Some(o.size),
                }));
            }
        }
        Ok(None)
    }

    fn open(&self, found: &Found) -> Result<Box<dyn Read + Send>> {
        let s3 = self.s3.clone();
        let rel = found.locator.clone();
        transfer::download(
            self.s3.net.clone(),
            &found.locator,
            transfer::chunk_size() as u64,
            PARALLEL,
            Arc::new(move |c| c.get(s3.get_url(&rel))),
        )
    }

    fn save(&self, key: &str, produce: Produce<'_>) -> Result<SaveOutcome> {
        check_key(key)?;
        if self.read_only {
            return Ok(SaveOutcome::ReadOnly);
        }
        let object = Self::object(key);
        if self.s3.head(&object)?.is_some() {
            return Ok(SaveOutcome::Exists);
        }
        let up = self
            .s3
            .multipart_start(&object, "application/octet-stream")?;
        let etags: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let put = {
            let (s3, up, etags) = (self.s3.clone(), up.clone(), etags.clone());
            Arc::new(move |i: usize, _off: u64, data: Vec<u8>| {
                let n = u16::try_from(i + 1)
                    .map_err(|_| s3.net.err("archive needs more than 65535 parts"))?;
                let etag = s3.multipart_part(&up, n, 0, data.len() as u64, || {
                    reqwest::blocking::Body::from(data.clone())
                })?;
                etags.lock().unwrap().push((i, etag));
                Ok(())
            })
        };
        let mut chunks = ChunkedUpload::new(transfer::chunk_size().max(MIN_PART), PARALLEL, put);
        let produced = produce(&mut chunks);
        let finished = match produced {
            Ok(()) => chunks.finish(),
            Err(e) => {
                drop(chunks);
                Err(e)
            }
        };
        let result = finished.and_then(|(size, _)| {
            let mut tags = std::mem::take(&mut *etags.lock().unwrap());
            tags.sort();
            let tags: Vec<String> = tags.into_iter().map(|(_, t)| t).collect();
            self.s3.multipart_complete(&up, &tags)?;
            Ok(SaveOutcome::Saved { bytes: size })
        });
        if result.is_err() {
            self.s3.multipart_abort(&up);
        }
        result
    }
}
