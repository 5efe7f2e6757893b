//! `github`: the GitHub Actions cache service, one entry per archive.
//!
//! * **v2** (github.com): twirp JSON at `$ACTIONS_RESULTS_URL/twirp/
//!   github.actions.results.api.v1.CacheService/<Method>` with
//!   `Authorization: Bearer $ACTIONS_RUNTIME_TOKEN`: `CreateCacheEntry`
//!   {key, version} → {ok, signedUploadUrl}; the archive goes to that Azure
//!   blob URL as blocks uploaded in parallel (`comp=block`, then
//!   `comp=blocklist`); `FinalizeCacheEntryUpload` {key, version,
//!   sizeBytes}. `GetCacheEntryDownloadURL` {key, restoreKeys, version} →
//!   {ok, signedDownloadUrl, matchedKey}, downloaded with parallel ranges.
//! * **v1** (GitHub Enterprise Server, Gitea/Forgejo runners, `act`):
//!   `$ACTIONS_CACHE_URL_apis/artifactcache/`: `GET cache?keys=&version=`
//!   (204: miss), `POST caches` {key, version} → {cacheId}, `PATCH
//!   caches/<id>` with `Content-Range: bytes a-b/*` chunks in parallel,
//!   `POST caches/<id>` {size}; the entry's `archiveLocation` is fetched
//!   with parallel ranges.
//!
//! `ACTIONS_CACHE_MODE` is honoured as `@actions/cache` does: `read` makes
//! it read-only, `write-only` skips restores, `none` disables both.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use reqwest::blocking::{RequestBuilder, Response};
use serde_json::{json, Value};

use super::{Backend, Found, Produce, SaveOutcome};
use crate::error::{Error, Result};
use crate::net::redact::display_url;
use crate::net::transfer::{self, snippet, ChunkedUpload};
use crate::net::{Net, RetryPolicy};
use crate::secret::Secret;

/// The `version` of every nixdelta entry: entries of other tools (whose
/// version hashes their paths) never match ours, and ours never theirs.
pub fn cache_version() -> String {
    crate::nix::Sha256Hash::digest(b"nixdelta-store-archive|zstd|v1").to_hex()
}

/// Upload block / PATCH chunk size and parallelism: memory stays under
/// (parallel × 2 + 1) × chunk.
const PARALLEL: usize = 4;
const TWIRP_SERVICE: &str = "github.actions.results.api.v1.CacheService";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    ReadWrite,
    ReadOnly,
    WriteOnly,
    None,
}

fn cache_mode() -> Mode {
    match std::env::var("ACTIONS_CACHE_MODE")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "read" => Mode::ReadOnly,
        "write-only" => Mode::WriteOnly,
        "none" => Mode::None,
        _ => Mode::ReadWrite,
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn is_ghes() -> bool {
    let url = env("GITHUB_SERVER_URL").unwrap_or_else(|| "https://github.com".into());
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(&url)
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    !(host == "github.com" || host.ends_with(".ghe.com") || host.ends_with(".localhost"))
}

/// `github` picks v2 when the runner offers it (`ACTIONS_RESULTS_URL`, and
/// `ACTIONS_CACHE_SERVICE_V2` or no `ACTIONS_CACHE_URL`), else v1;
/// `github-v2` / `github-v1` force one.
pub fn open(spec: &str, read_only: bool) -> Result<Box<dyn Backend>> {
    let results = env("ACTIONS_RESULTS_URL");
    let cache_url = env("ACTIONS_CACHE_URL");
    let token = env("ACTIONS_RUNTIME_TOKEN").map(Secret::new);
    let v2 = match spec {
        "github-v2" => true,
        "github-v1" => false,
        _ => {
            results.is_some()
                && !is_ghes()
                && (env("ACTIONS_CACHE_SERVICE_V2").is_some() || cache_url.is_none())
        }
    };
    let mode = cache_mode();
    let read_only = read_only || matches!(mode, Mode::ReadOnly | Mode::None);
    let no_reads = matches!(mode, Mode::WriteOnly | Mode::None);
    let missing = |var: &str| {
        Error::cache(
            spec,
            format!("${var} is not set: run inside a GitHub Actions JavaScript action (the nixdelta action passes it on), or use dir:/s3://"),
        )
    };
    let base = if v2 {
        results.ok_or_else(|| missing("ACTIONS_RESULTS_URL"))?
    } else {
        cache_url
            .or(results)
            .ok_or_else(|| missing("ACTIONS_CACHE_URL"))?
    };
    let base = if base.ends_with('/') {
        base
    } else {
        format!("{base}/")
    };
    // Messages name the service and where it is (no secret in either).
    let shown = match url::Url::parse(&base) {
        Ok(u) => format!("{} at {}", name(v2), display_url(&u)),
        Err(_) => name(v2).to_string(),
    };
    Ok(Box::new(GithubBackend {
        v2,
        base,
        token,
        net: Arc::new(Net::new(shown, RetryPolicy::from_env())?),
        read_only,
        no_reads,
        version: cache_version(),
    }))
}

pub struct GithubBackend {
    v2: bool,
    base: String,
    token: Option<Secret<String>>,
    net: Arc<Net>,
    read_only: bool,
    no_reads: bool,
    version: String,
}

fn name(v2: bool) -> &'static str {
    if v2 {
        "github (cache service v2)"
    } else {
        "github (cache service v1)"
    }
}

impl GithubBackend {
    fn name(&self) -> &'static str {
        name(self.v2)
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        self.net.err(msg)
    }

    fn auth(&self, rb: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t.expose()),
            None => rb,
        }
    }

    // ------------------------------------------------------------ v2

    fn twirp(&self, method: &str, body: Value) -> Result<Value> {
        let url = format!("{}twirp/{TWIRP_SERVICE}/{method}", self.base);
        let body = body.to_string();
        let r = self.net.send("POST", method, body.len() as u64, |c| {
            self.auth(c.post(&url))
                .header("Content-Type", "application/json")
                .body(body.clone())
        })?;
        let status = r.status();
        let text = r.text().map_err(|e| self.err(format!("{method}: {e}")))?;
        if !status.is_success() {
            // Twirp errors: {"code": "...", "msg": "..."}.
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let code = v["code"].as_str().unwrap_or("");
            if status.as_u16() == 409 || code == "already_exists" {
                return Ok(json!({"ok": false, "alreadyExists": true}));
            }
            let msg = v["msg"]
                .as_str()
                .map_or_else(|| snippet(&text), String::from);
            return Err(self.err(format!("{method}: HTTP {status}: {msg}")));
        }
        serde_json::from_str(&text).map_err(|e| self.err(format!("{method}: bad JSON answer: {e}")))
    }

    fn v2_lookup(&self, key: &str, prefixes: &[String]) -> Result<Option<Found>> {
        let v = self.twirp(
            "GetCacheEntryDownloadURL",
            json!({"key": key, "restoreKeys": prefixes, "version": self.version}),
        )?;
        if !v["ok"].as_bool().unwrap_or(false) {
            return Ok(None);
        }
        let url = field(&v, "signedDownloadUrl", "signed_download_url")
            .ok_or_else(|| self.err("GetCacheEntryDownloadURL: no signedDownloadUrl"))?;
        let matched = field(&v, "matchedKey", "matched_key").unwrap_or_else(|| key.to_string());
        Ok(Some(Found {
            key: matched,
            size: None,
            locator: url,
        }))
    }

    fn v2_save(&self, key: &str, produce: Produce<'_>) -> Result<SaveOutcome> {
        let v = self.twirp(
            "CreateCacheEntry",
            json!({"key": key, "version": self.version}),
        )?;
        if !v["ok"].as_bool().unwrap_or(false) {
            if let Some(m) = v["message"].as_str().filter(|m| !m.is_empty()) {
                tracing::info!("{}: not saved: {m}", self.name());
            }
            return Ok(SaveOutcome::Exists);
        }
        let url = field(&v, "signedUploadUrl", "signed_upload_url")
            .ok_or_else(|| self.err("CreateCacheEntry: no signedUploadUrl"))?;
        let ids: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let (net, url2, ids2) = (self.net.clone(), url.clone(), ids.clone());
        let upload_id = random_uuid();
        let put = Arc::new(move |i: usize, _off: u64, data: Vec<u8>| {
            let id = block_id(&upload_id, i);
            let u = format!("{}comp=block&blockid={}", with_query(&url2), urlencode(&id));
            let r = net.send("PUT", "blob block", data.len() as u64, |c| {
                c.put(&u)
                    .header("x-ms-version", AZURE_VERSION)
                    .header("Content-Type", "application/octet-stream")
                    .body(data.clone())
            })?;
            net.check("PUT", "blob block", r)?;
            ids2.lock().unwrap().push((i, id));
            Ok(())
        });
        let mut up = ChunkedUpload::new(transfer::chunk_size(), PARALLEL, put);
        produce(&mut up)?;
        up.flush().ok();
        let (size, _) = up.finish()?;
        let mut ids = std::mem::take(&mut *ids.lock().unwrap());
        ids.sort();
        let mut xml = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
        for (_, id) in &ids {
            xml.push_str(&format!("<Latest>{id}</Latest>"));
        }
        xml.push_str("</BlockList>");
        let u = format!("{}comp=blocklist", with_query(&url));
        let r = self
            .net
            .send("PUT", "blob block list", xml.len() as u64, |c| {
                c.put(&u)
                    .header("x-ms-version", AZURE_VERSION)
                    .header("Content-Type", "application/xml")
                    .body(xml.clone())
            })?;
        self.net.check("PUT", "blob block list", r)?;
        let v = self.twirp(
            "FinalizeCacheEntryUpload",
            json!({"key": key, "version": self.version, "sizeBytes": size.to_string()}),
        )?;
        if !v["ok"].as_bool().unwrap_or(false) {
            return Err(self.err(format!(
                "FinalizeCacheEntryUpload refused {key}: {}",
                v["message"]
                    .as_str()
                    .unwrap_or("another job may be finalizing it")
            )));
        }
        Ok(SaveOutcome::Saved { bytes: size })
    }

    // ------------------------------------------------------------ v1

    fn v1_url(&self, rest: &str) -> String {
        format!("{}_apis/artifactcache/{rest}", self.base)
    }

    fn v1(&self, rb: RequestBuilder) -> RequestBuilder {
        self.auth(rb)
            .header("Accept", "application/json;api-version=6.0-preview.1")
    }

    /// A JSON POST to the v1 API; any answer but a transient failure comes
    /// back for the caller to judge.
    fn v1_post(&self, what: &str, url: &str, body: &Value) -> Result<Response> {
        let body = body.to_string();
        self.net.send("POST", what, body.len() as u64, |c| {
            self.v1(c.post(url))
                .header("Content-Type", "application/json")
                .body(body.clone())
        })
    }

    fn v1_lookup(&self, key: &str, prefixes: &[String]) -> Result<Option<Found>> {
        let mut keys = vec![key.to_string()];
        keys.extend(prefixes.iter().cloned());
        let url = format!(
            "{}?keys={}&version={}",
            self.v1_url("cache"),
            urlencode(&keys.join(",")),
            self.version
        );
        let r = self
            .net
            .send("GET", "cache lookup", 0, |c| self.v1(c.get(&url)))?;
        if r.status().as_u16() == 204 || r.status().as_u16() == 404 {
            return Ok(None);
        }
        let r = self.net.check("GET", "cache lookup", r)?;
        let v: Value = r
            .json()
            .map_err(|e| self.err(format!("cache lookup: bad JSON: {e}")))?;
        let Some(loc) = v["archiveLocation"].as_str() else {
            return Ok(None);
        };
        let mut matched = v["cacheKey"].as_str().unwrap_or(key).to_string();
        // Some servers (act) store keys lower-cased.
        if matched.eq_ignore_ascii_case(key) {
            matched = key.to_string();
        }
        Ok(Some(Found {
            key: matched,
            size: v["cacheSize"].as_u64(),
            locator: loc.to_string(),
        }))
    }

    fn v1_save(&self, key: &str, produce: Produce<'_>) -> Result<SaveOutcome> {
        let body = json!({"key": key, "version": self.version});
        let r = self.v1_post("cache reserve", &self.v1_url("caches"), &body)?;
        if matches!(r.status().as_u16(), 409 | 400) {
            let t = r.text().unwrap_or_default();
            tracing::info!("{}: {key} not reserved: {}", self.name(), snippet(&t));
            return Ok(SaveOutcome::Exists);
        }
        let r = self.net.check("POST", "cache reserve", r)?;
        let v: Value = r
            .json()
            .map_err(|e| self.err(format!("cache reserve: bad JSON: {e}")))?;
        let id = v["cacheId"]
            .as_i64()
            .ok_or_else(|| self.err(format!("cache reserve: no cacheId in {v}")))?;
        let chunk_url = self.v1_url(&format!("caches/{id}"));
        let (net, token, u) = (self.net.clone(), self.token.clone(), chunk_url.clone());
        let put = Arc::new(move |_i: usize, off: u64, data: Vec<u8>| {
            if data.is_empty() {
                return Ok(());
            }
            let end = off + data.len() as u64 - 1;
            let r = net.send("PATCH", "cache chunk", data.len() as u64, |c| {
                let mut rb = c
                    .patch(&u)
                    .header("Accept", "application/json;api-version=6.0-preview.1")
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Range", format!("bytes {off}-{end}/*"))
                    .body(data.clone());
                if let Some(t) = &token {
                    rb = rb.bearer_auth(t.expose());
                }
                rb
            })?;
            net.check("PATCH", "cache chunk", r).map(|_| ())
        });
        let mut up = ChunkedUpload::new(transfer::chunk_size(), PARALLEL, put);
        produce(&mut up)?;
        let (size, _) = up.finish()?;
        let r = self.v1_post("cache commit", &chunk_url, &json!({"size": size}))?;
        self.net.check("POST", "cache commit", r)?;
        Ok(SaveOutcome::Saved { bytes: size })
    }
}

const AZURE_VERSION: &str = "2020-10-02";

/// The block id layout the Azure SDK (and so `@actions/cache`) sends:
/// base64 of a 36-character upload id followed by the block index,
/// zero-padded to 12 digits (48 bytes decoded). Azure only wants ids of
/// one length; self-hosted cache servers take the part index from the
/// last 12 characters and refuse other layouts.
fn block_id(upload_id: &str, i: usize) -> String {
    debug_assert_eq!(upload_id.len(), 36);
    crate::nix::hash::BASE64.encode(format!("{upload_id}{i:012}"))
}

/// A random (version 4) UUID in its 36-character form, as the SDK's
/// upload id. Hand-written: 16 random bytes and a format string do not
/// justify a dependency.
fn random_uuid() -> String {
    use rand_core::RngCore as _;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn with_query(url: &str) -> String {
    if url.contains('?') {
        format!("{url}&")
    } else {
        format!("{url}?")
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A response field by its JSON (camelCase) or proto (snake_case) name.
fn field(v: &Value, camel: &str, snake: &str) -> Option<String> {
    v.get(camel)
        .or_else(|| v.get(snake))
        .and_then(|x| x.as_str())
        .filter(|s| !s.is_empty())
        .map(String::from)
}

impl Backend for GithubBackend {
    fn describe(&self) -> String {
        self.name().to_string()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn lookup(&self, key: &str, prefixes: &[String]) -> Result<Option<Found>> {
        super::check_key(key)?;
        if self.no_reads {
            tracing::info!(
                "{}: ACTIONS_CACHE_MODE forbids reads: not restoring",
                self.name()
            );
            return Ok(None);
        }
        if self.v2 {
            self.v2_lookup(key, prefixes)
        } else {
            self.v1_lookup(key, prefixes)
        }
    }

    fn open(&self, found: &Found) -> Result<Box<dyn Read + Send>> {
        // Signed URLs carry their own authorisation; act's needs none.
        let url = found.locator.clone();
        transfer::download(
            self.net.clone(),
            "archive download",
            transfer::chunk_size() as u64,
            PARALLEL,
            Arc::new(move |c| c.get(&url)),
        )
    }

    fn save(&self, key: &str, produce: Produce<'_>) -> Result<SaveOutcome> {
        super::check_key(key)?;
        if self.read_only {
            return Ok(SaveOutcome::ReadOnly);
        }
        if self.v2 {
            self.v2_save(key, produce)
        } else {
            self.v1_save(key, produce)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ids_use_the_sdk_layout() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(u.matches('-').count(), 4);
        assert_ne!(u, random_uuid());
        let id = block_id(&u, 7);
        assert_eq!(id.len(), block_id(&u, 999_999).len());
        let raw = crate::nix::hash::BASE64.decode(&id).unwrap();
        assert_eq!(raw.len(), 48);
        assert_eq!(&raw[..36], u.as_bytes());
        assert_eq!(&raw[36..], b"000000000007");
        assert_eq!(urlencode("a,b c/é"), "a%2Cb%20c%2F%C3%A9");
        assert_eq!(with_query("http://x/b?sig=1"), "http://x/b?sig=1&");
        assert_eq!(cache_version().len(), 64);
    }
}
