//! `s3://BUCKET[/PREFIX]?endpoint=…&region=…&scheme=http|https&profile=…`
//! binary cache, as Nix writes the URL: AWS S3, Cloudflare R2, Garage,
//! SeaweedFS, MinIO.
//!
//! Requests are signed with SigV4 by `rusty-s3` (sans-IO: it presigns URLs,
//! we send them with reqwest). Small objects are one PUT; NARs from
//! [`MULTIPART_FROM`] up are multipart uploads, parts sent in parallel from
//! the spool file (bounded: no part is held in memory). Existence is HEAD.
//!
//! Addressing: virtual-host style for AWS (no `endpoint`), path style when
//! an `endpoint` is given; `addressing-style=path|virtual` overrides.
//!
//! Credentials, first found: `profile=` (shared credentials file),
//! `$AWS_ACCESS_KEY_ID`/`$AWS_SECRET_ACCESS_KEY`/`$AWS_SESSION_TOKEN`,
//! `$AWS_PROFILE` or the `default` profile; else requests are unsigned.
//! The secret never appears in messages or `Debug` (rusty-s3 redacts it and
//! zeroizes it on drop).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusty_s3::actions::{CreateMultipartUpload, ListObjectsV2, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use url::Url;

use super::net::{content_type, parallel_map, Background, Net, MAX_IN_FLIGHT};
use super::retry::{status_error, transport, Attempt};
use super::spool::{SpoolData, SpoolTarget, SpooledNar};
use super::{narinfo_name, BinaryCache, CacheOptions, NarUpload};
use crate::error::{Error, Result};
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
/// How long a presigned URL is valid; each attempt signs anew.
const SIGNATURE_TTL: Duration = Duration::from_secs(3600);
/// Streaming reads (a NAR being verified) may take this long.
const READ_TIMEOUT: Duration = Duration::from_secs(3600);

/// Query parameters of Nix's S3 store URLs that only concern Nix's own
/// writer; accepted and ignored.
const NIX_ONLY_PARAMS: &[&str] = &[
    "compression",
    "parallel-compression",
    "compression-level",
    "secret-key",
    "multipart-upload",
    "buffer-size",
    "narinfo-compression",
    "ls-compression",
    "log-compression",
    "write-nar-listing",
    "want-mass-query",
    "priority",
    "trusted",
    "index-debug-info",
];

#[derive(Debug)]
struct Inner {
    net: Net,
    bucket: Bucket,
    credentials: Option<Credentials>,
    /// Key prefix, empty or ending with `/`.
    prefix: String,
    /// NAR uploads under way.
    background: Arc<Background>,
}

#[derive(Debug)]
pub struct S3Cache {
    inner: Arc<Inner>,
}

/// The parsed parts of an `s3://` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Url,
    pub region: String,
    pub path_style: bool,
    pub profile: Option<String>,
}

impl S3Url {
    pub fn parse(url: &str) -> std::result::Result<S3Url, String> {
        let rest = url.strip_prefix("s3://").ok_or("not an s3:// URL")?;
        let (loc, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = loc.split_once('/').unwrap_or((loc, ""));
        if bucket.is_empty() {
            return Err("no bucket name (s3://BUCKET[/PREFIX])".into());
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let mut endpoint = None;
        let mut region = None;
        let mut scheme = "https".to_string();
        let mut profile = None;
        let mut style = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "endpoint" => endpoint = Some(v.into_owned()),
                "region" => region = Some(v.into_owned()),
                "scheme" => match &*v {
                    "http" | "https" => scheme = v.into_owned(),
                    _ => return Err(format!("scheme={v}: expected http or https")),
                },
                "profile" => profile = Some(v.into_owned()).filter(|p| !p.is_empty()),
                "addressing-style" => match &*v {
                    "path" => style = Some(true),
                    "virtual" => style = Some(false),
                    "auto" => style = None,
                    _ => {
                        return Err(format!(
                            "addressing-style={v}: expected path, virtual or auto"
                        ))
                    }
                },
                k if NIX_ONLY_PARAMS.contains(&k) => {}
                k => tracing::warn!("s3:// URL: ignoring unknown parameter {k:?}"),
            }
        }
        let region = region
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".into());
        let path_style = style.unwrap_or(endpoint.is_some());
        let endpoint = match endpoint {
            Some(e) if e.contains("://") => e,
            Some(e) => format!("{scheme}://{e}"),
            None => format!("{scheme}://s3.{region}.amazonaws.com"),
        };
        let endpoint = Url::parse(&endpoint).map_err(|e| format!("endpoint {endpoint}: {e}"))?;
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            return Err("put credentials in the environment or a profile, not in endpoint".into());
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix,
            endpoint,
            region,
            path_style,
            profile,
        })
    }
}

impl S3Cache {
    pub fn open(url: &str, opts: &CacheOptions) -> Result<S3Cache> {
        let parsed = S3Url::parse(url).map_err(|e| Error::cache(url, e))?;
        let style = if parsed.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            parsed.endpoint.clone(),
            style,
            parsed.bucket.clone(),
            parsed.region.clone(),
        )
        .map_err(|e| Error::cache(url, format!("endpoint {}: {e:?}", parsed.endpoint)))?;
        let credentials =
            credentials(parsed.profile.as_deref()).map_err(|e| Error::cache(url, e))?;
        if credentials.is_none() {
            tracing::warn!("{url}: no AWS credentials found; requests are not signed");
        }
        Ok(S3Cache {
            inner: Arc::new(Inner {
                net: Net::new(url.to_string(), opts.retry)?,
                bucket,
                credentials,
                prefix: parsed.prefix,
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
        let prefix = if dir.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{dir}/", self.prefix)
        };
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        for page_no in 1.. {
            if max_pages.is_some_and(|m| page_no > m) {
                return Ok(None);
            }
            let body = self.net.send_ok("GET", &format!("/{dir} (list)"), 0, |c| {
                let mut a: ListObjectsV2 = self.bucket.list_objects_v2(self.creds());
                a.with_prefix(prefix.as_str());
                a.with_delimiter("/");
                if let Some(t) = &token {
                    a.with_continuation_token(t.as_str());
                }
                c.get(a.sign(SIGNATURE_TTL))
            })?;
            let page = ListObjectsV2::parse_response(&body)
                .map_err(|e| self.net.err(format!("listing /{dir}: {e}")))?;
            names.extend(
                page.contents
                    .iter()
                    .filter_map(|o| o.key.strip_prefix(&prefix))
                    .filter(|n| !n.is_empty() && !n.contains('/'))
                    .map(str::to_string),
            );
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        Ok(Some(names))
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn creds(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    fn head(&self, rel: &str) -> Result<Option<u64>> {
        let key = self.key(rel);
        self.net.head(rel, |c| {
            c.head(
                self.bucket
                    .head_object(self.creds(), &key)
                    .sign(SIGNATURE_TTL),
            )
        })
    }

    /// Uploads a finished NAR: one PUT, or a multipart upload unless the
    /// bucket has it already.
    fn upload_nar(&self, rel: &str, data: &SpoolData) -> Result<()> {
        if data.len() < MULTIPART_FROM {
            return self.put_data(rel, data);
        }
        // Content-addressed: a NAR of this name and size is this NAR (left
        // by an interrupted push, or another job's).
        if self.head(rel)? == Some(data.len()) {
            tracing::debug!("{rel}: already in the bucket");
            return Ok(());
        }
        self.put_multipart(rel, data)
    }

    fn put_data(&self, rel: &str, data: &SpoolData) -> Result<()> {
        let key = self.key(rel);
        self.net.send_ok("PUT", rel, data.len(), |c| {
            c.put(
                self.bucket
                    .put_object(self.creds(), &key)
                    .sign(SIGNATURE_TTL),
            )
            .header(reqwest::header::CONTENT_TYPE, content_type(rel))
            .body(data.body(0, data.len()))
        })?;
        Ok(())
    }

    /// Multipart upload: create, parts in parallel, complete. Nothing is
    /// visible under `rel` until the complete succeeds; on failure the
    /// upload is aborted (best effort).
    fn put_multipart(&self, rel: &str, data: &SpoolData) -> Result<()> {
        let key = self.key(rel);
        let len = data.len();
        let part_size = PART_SIZE.max(len.div_ceil(MAX_PARTS));
        let parts: Vec<(u16, u64, u64)> = (0..len.div_ceil(part_size))
            .map(|i| {
                let off = i * part_size;
                ((i + 1) as u16, off, part_size.min(len - off))
            })
            .collect();
        let body = self
            .net
            .send_ok("POST", &format!("{rel} (start multipart)"), 0, |c| {
                let a = self.bucket.create_multipart_upload(self.creds(), &key);
                c.post(a.sign(SIGNATURE_TTL))
                    .header(reqwest::header::CONTENT_TYPE, content_type(rel))
            })?;
        let upload_id = CreateMultipartUpload::parse_response(&body)
            .map_err(|e| self.net.err(format!("POST {rel} (start multipart): {e}")))?
            .upload_id()
            .to_string();
        tracing::debug!(
            "{rel}: multipart upload of {len} bytes in {} parts",
            parts.len()
        );
        let result = parallel_map(&parts, PARALLEL_PARTS, |&(n, off, plen)| {
            let etag = self.net.call(
                "PUT",
                &format!("{rel} (part {n}/{})", parts.len()),
                plen,
                |c| {
                    c.put(
                        self.bucket
                            .upload_part(self.creds(), &key, n, &upload_id)
                            .sign(SIGNATURE_TTL),
                    )
                    .body(data.body(off, plen))
                },
                |resp| {
                    if !resp.status().is_success() {
                        return Err(status_error(resp));
                    }
                    resp.headers()
                        .get(reqwest::header::ETAG)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                        .ok_or_else(|| Attempt::Permanent("part uploaded without an ETag".into()))
                },
            )?;
            tracing::debug!("{rel}: part {n}/{} uploaded", parts.len());
            Ok(etag)
        })
        .and_then(|etags| {
            self.net.call(
                "POST",
                &format!("{rel} (complete multipart)"),
                0,
                |c| {
                    let a = self.bucket.complete_multipart_upload(
                        self.creds(),
                        &key,
                        &upload_id,
                        etags.iter().map(String::as_str),
                    );
                    let url = a.sign(SIGNATURE_TTL);
                    c.post(url).body(a.body())
                },
                |resp| {
                    if !resp.status().is_success() {
                        return Err(status_error(resp));
                    }
                    // S3 may answer 200 with an error in the body.
                    let text = resp.text().map_err(transport)?;
                    match super::retry::s3_code(&text) {
                        Some(code) if text.contains("<Error>") => {
                            Err(Attempt::transient(format!("complete failed: {code}")))
                        }
                        _ => Ok(()),
                    }
                },
            )
        });
        if result.is_err() {
            let _ = self
                .net
                .send_ok("DELETE", &format!("{rel} (abort multipart)"), 0, |c| {
                    c.delete(
                        self.bucket
                            .abort_multipart_upload(self.creds(), &key, &upload_id)
                            .sign(SIGNATURE_TTL),
                    )
                });
        }
        result
    }
}

impl BinaryCache for S3Cache {
    fn url(&self) -> &str {
        &self.inner.net.url
    }

    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let i = &self.inner;
        let key = i.key(rel);
        i.net.get(rel, |c| {
            c.get(i.bucket.get_object(i.creds(), &key).sign(SIGNATURE_TTL))
        })
    }

    fn exists(&self, rel: &str) -> Result<bool> {
        Ok(self.inner.head(rel)?.is_some())
    }

    fn size(&self, rel: &str) -> Result<Option<u64>> {
        self.inner.head(rel)
    }

    fn reader(&self, rel: &str) -> Result<Option<Box<dyn Read + Send>>> {
        let i = &self.inner;
        let key = i.key(rel);
        i.net.call(
            "GET",
            rel,
            0,
            |c| {
                c.get(i.bucket.get_object(i.creds(), &key).sign(SIGNATURE_TTL))
                    .timeout(READ_TIMEOUT)
            },
            |resp| {
                if resp.status().is_success() {
                    Ok(Some(Box::new(resp) as Box<dyn Read + Send>))
                } else if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    Ok(None)
                } else {
                    Err(status_error(resp))
                }
            },
        )
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
        Some(self.inner.net.retrier.stats.summary())
    }
}

impl Drop for S3Cache {
    fn drop(&mut self) {
        self.inner.background.wait_all();
        self.inner.net.log_summary();
    }
}

impl SpoolTarget for Inner {
    fn net(&self) -> &Net {
        &self.net
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

/// Credentials by the documented order; `None`: unsigned requests.
fn credentials(profile: Option<&str>) -> std::result::Result<Option<Credentials>, String> {
    if let Some(p) = profile {
        return profile_credentials(p)?
            .map(Some)
            .ok_or_else(|| format!("profile {p:?}: no aws_access_key_id/aws_secret_access_key"));
    }
    if let Some(c) = Credentials::from_env() {
        return Ok(Some(c));
    }
    let p = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    profile_credentials(&p)
}

fn aws_file(var: &str, name: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws").join(name)))
}

/// Keys of `profile` from the shared credentials file, then the config file.
fn profile_credentials(profile: &str) -> std::result::Result<Option<Credentials>, String> {
    let files = [
        (
            aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            profile.to_string(),
        ),
        (
            aws_file("AWS_CONFIG_FILE", "config"),
            if profile == "default" {
                "default".to_string()
            } else {
                format!("profile {profile}")
            },
        ),
    ];
    for (file, section) in files {
        let Some(file) = file else { continue };
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => zeroize::Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        if let Some(c) = ini_credentials(&text, &section) {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn ini_credentials(text: &str, section: &str) -> Option<Credentials> {
    let (mut key, mut secret, mut token) = (None, None, None);
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    match (key, secret, token) {
        (Some(k), Some(s), Some(t)) => Some(Credentials::new_with_token(k, s, t)),
        (Some(k), Some(s), None) => Some(Credentials::new(k, s)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_urls() {
        let u = S3Url::parse("s3://cache/ci/x?endpoint=127.0.0.1:9000&scheme=http&region=garage")
            .unwrap();
        assert_eq!(u.bucket, "cache");
        assert_eq!(u.prefix, "ci/x/");
        assert_eq!(u.endpoint.as_str(), "http://127.0.0.1:9000/");
        assert_eq!(u.region, "garage");
        assert!(u.path_style);
        let u = S3Url::parse("s3://b?region=eu-west-1").unwrap();
        assert_eq!(u.endpoint.as_str(), "https://s3.eu-west-1.amazonaws.com/");
        assert!(!u.path_style);
        assert_eq!(u.prefix, "");
        let u = S3Url::parse(
            "s3://b?endpoint=https://r2.example&addressing-style=virtual&compression=zstd",
        )
        .unwrap();
        assert!(!u.path_style);
        assert!(S3Url::parse("s3://?region=x").is_err());
        assert!(S3Url::parse("s3://b?scheme=ftp").is_err());
        assert!(S3Url::parse("s3://b?endpoint=http://k:s@h").is_err());
    }

    #[test]
    fn ini_profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = sekrit-value\n\
                    [ci]\naws_access_key_id=B\naws_secret_access_key=T\naws_session_token=X\n";
        let c = ini_credentials(text, "ci").unwrap();
        assert_eq!((c.key(), c.secret(), c.token()), ("B", "T", Some("X")));
        let c = ini_credentials(text, "default").unwrap();
        assert_eq!((c.key(), c.token()), ("A", None));
        assert!(ini_credentials(text, "none").is_none());
        assert_eq!(c.secret(), "sekrit-value");
        assert!(!format!("{c:?}").contains("sekrit"), "{c:?}");
    }
}
