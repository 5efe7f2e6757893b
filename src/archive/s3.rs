//! `s3://bucket/prefix?endpoint=…&region=…`: archives as objects
//! `<prefix>/<key>.nda` in any S3-compatible store (AWS, R2, MinIO,
//! SeaweedFS, Garage).
//!
//! Shares the binary-cache target's URL parsing ([`crate::cache::s3::S3Url`])
//! and its SigV4 signer (`rusty-s3`, presigned requests sent with reqwest).
//! Saves stream into a multipart upload, parts uploaded in parallel as the
//! archive is produced (never a temporary copy); nothing is visible under
//! the key until the upload completes, and a failed one is aborted.
//! Lookup: HEAD of the exact key, else the newest object (LastModified)
//! under each restore prefix (ListObjectsV2). Downloads use parallel ranges.
//! Credentials: `$AWS_ACCESS_KEY_ID` / `$AWS_SECRET_ACCESS_KEY` /
//! `$AWS_SESSION_TOKEN` (unsigned requests without them).

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::blocking::Client;
use rusty_s3::actions::{CreateMultipartUpload, ListObjectsV2, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};

use super::dir::{check_key, SUFFIX};
use super::http::{self, ChunkedUpload};
use super::{Backend, Found, Produce, SaveOutcome};
use crate::cache::s3::S3Url;
use crate::error::{Error, Result};

const TTL: Duration = Duration::from_secs(3600);
const PARALLEL: usize = 4;
/// S3 parts are at least 5 MiB (but the last).
const MIN_PART: usize = 5 << 20;

pub struct S3Backend {
    url: String,
    bucket: Bucket,
    credentials: Option<Credentials>,
    prefix: String,
    client: Client,
    read_only: bool,
}

impl S3Backend {
    pub fn from_url(url: &str, read_only: bool) -> Result<S3Backend> {
        let p = S3Url::parse(url).map_err(|e| Error::cache(url, e))?;
        let style = if p.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            p.endpoint.clone(),
            style,
            p.bucket.clone(),
            p.region.clone(),
        )
        .map_err(|e| Error::cache(url, format!("endpoint {}: {e:?}", p.endpoint)))?;
        let credentials = Credentials::from_env();
        if credentials.is_none() {
            tracing::warn!("{url}: no AWS credentials in the environment; requests are not signed");
        }
        Ok(S3Backend {
            url: url.split('?').next().unwrap_or(url).to_string(),
            bucket,
            credentials,
            prefix: p.prefix,
            client: http::client(),
            read_only,
        })
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::cache(&self.url, msg)
    }

    fn object(&self, key: &str) -> String {
        format!("{}{key}{SUFFIX}", self.prefix)
    }

    fn head(&self, object: &str) -> Result<Option<u64>> {
        let url = self
            .bucket
            .head_object(self.credentials.as_ref(), object)
            .sign(TTL);
        let r = http::send("HEAD", &|| self.client.head(url.clone())).map_err(|e| self.err(e))?;
        if r.status().as_u16() == 404 {
            return Ok(None);
        }
        let r = http::check(&format!("HEAD {object}"), r).map_err(|e| self.err(e))?;
        Ok(r.content_length())
    }

    /// (key, size, last modified) of the archives under `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64, String)>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut a = self.bucket.list_objects_v2(self.credentials.as_ref());
            let full = format!("{}{prefix}", self.prefix);
            a.with_prefix(full.as_str());
            if let Some(t) = &token {
                a.with_continuation_token(t.as_str());
            }
            let url = a.sign(TTL);
            let r =
                http::send("list", &|| self.client.get(url.clone())).map_err(|e| self.err(e))?;
            let text = http::check("list", r)
                .and_then(|r| r.text().map_err(|e| e.to_string()))
                .map_err(|e| self.err(e))?;
            let resp = ListObjectsV2::parse_response(&text)
                .map_err(|e| self.err(format!("list: bad answer: {e}")))?;
            for c in resp.contents {
                if let Some(k) = c
                    .key
                    .strip_prefix(&self.prefix)
                    .and_then(|k| k.strip_suffix(SUFFIX))
                {
                    out.push((k.to_string(), c.size, c.last_modified));
                }
            }
            match resp.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
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
        let exact = self.object(key);
        if let Some(size) = self.head(&exact)? {
            return Ok(Some(Found {
                key: key.to_string(),
                size: Some(size),
                locator: exact,
            }));
        }
        for p in prefixes {
            // RFC 3339 timestamps of one format sort as strings.
            let best = self
                .list(p)?
                .into_iter()
                .max_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
            if let Some((k, size, _)) = best {
                return Ok(Some(Found {
                    locator: self.object(&k),
                    key: k,
                    size: Some(size),
                }));
            }
        }
        Ok(None)
    }

    fn open(&self, found: &Found) -> Result<Box<dyn Read + Send>> {
        let url = self
            .bucket
            .get_object(self.credentials.as_ref(), &found.locator)
            .sign(TTL);
        http::download(
            &self.client,
            url.as_str(),
            &format!("GET {}", found.locator),
            http::chunk_size() as u64,
            PARALLEL,
            Arc::new(|rb| rb),
        )
        .map_err(|e| self.err(e))
    }

    fn save(&self, key: &str, produce: Produce<'_>) -> Result<SaveOutcome> {
        check_key(key)?;
        if self.read_only {
            return Ok(SaveOutcome::ReadOnly);
        }
        let object = self.object(key);
        if self.head(&object)?.is_some() {
            return Ok(SaveOutcome::Exists);
        }
        let creds = self.credentials.as_ref();
        let url = self
            .bucket
            .create_multipart_upload(creds, &object)
            .sign(TTL);
        let r = http::send("start multipart", &|| self.client.post(url.clone()))
            .map_err(|e| self.err(e))?;
        let text = http::check("start multipart", r)
            .and_then(|r| r.text().map_err(|e| e.to_string()))
            .map_err(|e| self.err(e))?;
        let upload_id = CreateMultipartUpload::parse_response(&text)
            .map_err(|e| self.err(format!("start multipart: bad answer: {e}")))?
            .upload_id()
            .to_string();
        let etags: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let put = {
            let (bucket, creds, client) = (
                self.bucket.clone(),
                self.credentials.clone(),
                self.client.clone(),
            );
            let (object, upload_id, etags) = (object.clone(), upload_id.clone(), etags.clone());
            Arc::new(move |i: usize, _off: u64, data: Vec<u8>| {
                let n = u16::try_from(i + 1)
                    .map_err(|_| "archive needs more than 65535 parts".to_string())?;
                let url = bucket
                    .upload_part(creds.as_ref(), &object, n, &upload_id)
                    .sign(TTL);
                let r = http::send(&format!("upload part {n}"), &|| {
                    client.put(url.clone()).body(data.clone())
                })?;
                let r = http::check(&format!("upload part {n}"), r)?;
                let etag = r
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| format!("part {n} uploaded without an ETag"))?
                    .to_string();
                etags.lock().unwrap().push((i, etag));
                Ok(())
            })
        };
        let mut up = ChunkedUpload::new(http::chunk_size().max(MIN_PART), PARALLEL, put);
        let produced = produce(&mut up);
        let finished = match produced {
            Ok(()) => up.finish().map_err(|e| self.err(e)),
            Err(e) => {
                drop(up);
                Err(e)
            }
        };
        let result = finished.and_then(|(size, _)| {
            let mut tags = std::mem::take(&mut *etags.lock().unwrap());
            tags.sort();
            let a = self.bucket.complete_multipart_upload(
                creds,
                &object,
                &upload_id,
                tags.iter().map(|(_, t)| t.as_str()),
            );
            let url = a.sign(TTL);
            let body = a.body();
            let r = http::send("complete multipart", &|| {
                self.client.post(url.clone()).body(body.clone())
            })
            .map_err(|e| self.err(e))?;
            let text = http::check("complete multipart", r)
                .and_then(|r| r.text().map_err(|e| e.to_string()))
                .map_err(|e| self.err(e))?;
            if text.contains("<Error>") {
                return Err(self.err(format!("complete multipart: {}", http::snippet(&text))));
            }
            Ok(SaveOutcome::Saved { bytes: size })
        });
        if result.is_err() {
            let url = self
                .bucket
                .abort_multipart_upload(creds, &object, &upload_id)
                .sign(TTL);
            let _ = http::send("abort multipart", &|| self.client.delete(url.clone()));
        }
        result
    }
}
