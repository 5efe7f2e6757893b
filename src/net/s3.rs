//! S3 as Nix writes its URLs (`s3://BUCKET[/PREFIX]?endpoint=…&region=…
//! &scheme=http|https&profile=…&addressing-style=…`): AWS S3, Cloudflare
//! R2, Garage, SeaweedFS, MinIO. One [`S3Bucket`] serves both the binary
//! cache and the archive backend.
//!
//! Requests are signed with SigV4 by `rusty-s3` (sans-IO: it presigns URLs,
//! which [`Net`] sends; each attempt signs anew).
//!
//! Addressing: virtual-host style for AWS (no `endpoint`), path style when
//! an `endpoint` is given; `addressing-style=path|virtual` overrides.
//!
//! Credentials, first found: `profile=` (shared credentials file, then the
//! config file), `$AWS_ACCESS_KEY_ID`/`$AWS_SECRET_ACCESS_KEY`/
//! `$AWS_SESSION_TOKEN`, `$AWS_PROFILE` or the `default` profile; else
//! requests are unsigned. The secret never appears in messages or `Debug`
//! (rusty-s3 redacts it and zeroizes it on drop).

use std::time::Duration;

use reqwest::blocking::{Body, Response};
use rusty_s3::actions::{CreateMultipartUpload, ListObjectsV2, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use url::Url;

use super::aws_credentials::credentials;
use super::client::STREAM_TIMEOUT;
use super::retry::{s3_code, status_error, transport, Attempt, RetryPolicy};
use super::Net;
use crate::error::{Error, Result};

/// How long a presigned URL is valid; each attempt signs anew.
const SIGNATURE_TTL: Duration = Duration::from_secs(3600);

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

/// An object found by [`S3Bucket::list`].
#[derive(Clone, Debug)]
pub struct Object {
    /// Its key, relative to the URL's prefix.
    pub key: String,
    pub size: u64,
    /// RFC 3339; timestamps of one bucket sort as strings.
    pub last_modified: String,
}

/// A bucket and key prefix with its credentials. Every method takes keys
/// relative to the URL's prefix, and names them so in errors.
#[derive(Debug)]
pub struct S3Bucket {
    pub net: std::sync::Arc<Net>,
    bucket: Bucket,
    credentials: Option<Credentials>,
    /// Key prefix, empty or ending with `/`.
    prefix: String,
}

impl S3Bucket {
    /// Opens `url`; messages name it `shown`.
    pub fn open(url: &str, shown: &str, policy: RetryPolicy) -> Result<S3Bucket> {
        let parsed = S3Url::parse(url).map_err(|e| Error::cache(shown, e))?;
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
        .map_err(|e| Error::cache(shown, format!("endpoint {}: {e:?}", parsed.endpoint)))?;
        let credentials =
            credentials(parsed.profile.as_deref()).map_err(|e| Error::cache(shown, e))?;
        if credentials.is_none() {
            tracing::warn!("{shown}: no AWS credentials found; requests are not signed");
        }
        Ok(S3Bucket {
            net: std::sync::Arc::new(Net::new(shown.to_string(), policy)?),
            bucket,
            credentials,
            prefix: parsed.prefix,
        })
    }

    fn full(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn creds(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// HEAD: the object's size, `None` when absent.
    pub fn head(&self, rel: &str) -> Result<Option<u64>> {
        let key = self.full(rel);
        self.net.head(rel, |c| {
            c.head(
                self.bucket
                    .head_object(self.creds(), &key)
                    .sign(SIGNATURE_TTL),
            )
        })
    }

    /// GET into memory: `None` when absent.
    pub fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let key = self.full(rel);
        self.net.get(rel, |c| {
            c.get(
                self.bucket
                    .get_object(self.creds(), &key)
                    .sign(SIGNATURE_TTL),
            )
        })
    }

    /// A presigned GET of `rel` (for ranged downloads; valid an hour).
    pub fn get_url(&self, rel: &str) -> Url {
        self.bucket
            .get_object(self.creds(), &self.full(rel))
            .sign(SIGNATURE_TTL)
    }

    /// GET as a stream: `None` when absent.
    pub fn reader(&self, rel: &str) -> Result<Option<Response>> {
        let key = self.full(rel);
        self.net.call_with_timeout(
            "GET",
            rel,
            STREAM_TIMEOUT,
            |c| {
                c.get(
                    self.bucket
                        .get_object(self.creds(), &key)
                        .sign(SIGNATURE_TTL),
                )
            },
            |resp| {
                if resp.status().is_success() {
                    Ok(Some(resp))
                } else if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    Ok(None)
                } else {
                    Err(status_error(resp))
                }
            },
        )
    }

    /// One PUT of `len` bytes; `body` makes the body anew for each attempt.
    pub fn put(
        &self,
        rel: &str,
        content_type: &str,
        len: u64,
        body: impl Fn() -> Body,
    ) -> Result<()> {
        let key = self.full(rel);
        self.net.send_ok("PUT", rel, len, |c| {
            c.put(
                self.bucket
                    .put_object(self.creds(), &key)
                    .sign(SIGNATURE_TTL),
            )
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body())
        })?;
        Ok(())
    }

    /// The objects whose keys start with `under`; with `delimiter`, only
    /// those directly under it. `None` when that takes more than
    /// `max_pages` requests (1 000 objects each).
    pub fn list(
        &self,
        under: &str,
        delimiter: Option<&str>,
        max_pages: Option<usize>,
    ) -> Result<Option<Vec<Object>>> {
        let full = self.full(under);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for page_no in 1.. {
            if max_pages.is_some_and(|m| page_no > m) {
                return Ok(None);
            }
            let body = self
                .net
                .send_ok("GET", &format!("/{under} (list)"), 0, |c| {
                    let mut a: ListObjectsV2 = self.bucket.list_objects_v2(self.creds());
                    a.with_prefix(full.as_str());
                    if let Some(d) = delimiter {
                        a.with_delimiter(d);
                    }
                    if let Some(t) = &token {
                        a.with_continuation_token(t.as_str());
                    }
                    c.get(a.sign(SIGNATURE_TTL))
                })?;
            let page = ListObjectsV2::parse_response(&body)
                .map_err(|e| self.net.err(format!("listing /{under}: {e}")))?;
            out.extend(page.contents.into_iter().filter_map(|o| {
                Some(Object {
                    key: o.key.strip_prefix(&self.prefix)?.to_string(),
                    size: o.size,
                    last_modified: o.last_modified,
                })
            }));
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        Ok(Some(out))
    }

    /// Starts a multipart upload of `rel`: its upload id.
    pub fn multipart_start(&self, rel: &str, content_type: &str) -> Result<Multipart> {
        let key = self.full(rel);
        let body = self
            .net
            .send_ok("POST", &format!("{rel} (start multipart)"), 0, |c| {
                let a = self.bucket.create_multipart_upload(self.creds(), &key);
                c.post(a.sign(SIGNATURE_TTL))
                    .header(reqwest::header::CONTENT_TYPE, content_type)
            })?;
        let id = CreateMultipartUpload::parse_response(&body)
            .map_err(|e| self.net.err(format!("POST {rel} (start multipart): {e}")))?
            .upload_id()
            .to_string();
        Ok(Multipart {
            rel: rel.to_string(),
            key,
            id,
        })
    }

    /// Uploads part `n` (from 1) of `len` bytes: its ETag.
    pub fn multipart_part(
        &self,
        up: &Multipart,
        n: u16,
        of: usize,
        len: u64,
        body: impl Fn() -> Body,
    ) -> Result<String> {
        let what = if of > 0 {
            format!("{} (part {n}/{of})", up.rel)
        } else {
            format!("{} (part {n})", up.rel)
        };
        self.net.call(
            "PUT",
            &what,
            len,
            |c| {
                c.put(
                    self.bucket
                        .upload_part(self.creds(), &up.key, n, &up.id)
                        .sign(SIGNATURE_TTL),
                )
                .body(body())
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
        )
    }

    /// Completes the upload with the parts' ETags in part order: only now
    /// is the object visible.
    pub fn multipart_complete(&self, up: &Multipart, etags: &[String]) -> Result<()> {
        self.net.call(
            "POST",
            &format!("{} (complete multipart)", up.rel),
            0,
            |c| {
                let a = self.bucket.complete_multipart_upload(
                    self.creds(),
                    &up.key,
                    &up.id,
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
                match s3_code(&text) {
                    Some(code) if text.contains("<Error>") => {
                        Err(Attempt::transient(format!("complete failed: {code}")))
                    }
                    _ => Ok(()),
                }
            },
        )
    }

    /// Aborts the upload (best effort: a bucket lifecycle rule cleans up
    /// what this cannot).
    pub fn multipart_abort(&self, up: &Multipart) {
        let _ = self
            .net
            .send_ok("DELETE", &format!("{} (abort multipart)", up.rel), 0, |c| {
                c.delete(
                    self.bucket
                        .abort_multipart_upload(self.creds(), &up.key, &up.id)
                        .sign(SIGNATURE_TTL),
                )
            });
    }
}

/// A multipart upload under way.
#[derive(Clone, Debug)]
pub struct Multipart {
    rel: String,
    key: String,
    id: String,
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
}
