//! What the network targets (s3://, http(s)://) share: one blocking HTTP
//! client (rustls), the retrier, bounded parallelism for many small
//! requests, and the URL shown to the user (never with credentials).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};

use super::retry::{status_error, transport, Attempt, Retrier, RetryPolicy};
use crate::error::{Error, Result};

/// Existence checks (and other small requests) in flight at once.
pub const MAX_IN_FLIGHT: usize = 32;

#[derive(Debug)]
pub struct Net {
    /// The target's URL as shown in messages.
    pub url: String,
    pub client: Client,
    pub retrier: Retrier,
}

/// CA certificates to trust besides the built-in roots, from the PEM
/// bundle Nix itself reads: `$NIX_SSL_CERT_FILE`, else `$SSL_CERT_FILE`
/// (a self-hosted cache behind a private CA).
pub fn extra_roots() -> std::result::Result<Vec<reqwest::Certificate>, String> {
    let Some(file) =
        std::env::var_os("NIX_SSL_CERT_FILE").or_else(|| std::env::var_os("SSL_CERT_FILE"))
    else {
        return Ok(Vec::new());
    };
    let shown = std::path::Path::new(&file).display().to_string();
    let pem = std::fs::read(&file).map_err(|e| format!("CA bundle {shown}: {e}"))?;
    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("CA bundle {shown}: {e}"))
}

impl Net {
    pub fn new(url: String, policy: RetryPolicy) -> Result<Net> {
        let mut builder = Client::builder();
        for cert in extra_roots().map_err(|e| Error::cache(&url, e))? {
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .user_agent(concat!("nixdelta/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10).min(policy.timeout))
            .timeout(None)
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .build()
            .map_err(|e| Error::cache(&url, format!("HTTP client: {}", e.without_url())))?;
        Ok(Net {
            url,
            client,
            retrier: Retrier::new(policy),
        })
    }

    pub fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::cache(&self.url, msg)
    }

    /// Sends the request `make` builds (again on each attempt), retrying
    /// transient failures; `handle` turns a response into the result or an
    /// attempt error (it may read the body: a reset mid-body is retried).
    pub fn call<T>(
        &self,
        method: &'static str,
        what: &str,
        body_len: u64,
        make: impl Fn(&Client) -> RequestBuilder,
        mut handle: impl FnMut(Response) -> Result<T, Attempt>,
    ) -> Result<T> {
        self.retrier
            .run(method, what, body_len, |timeout| {
                let resp = make(&self.client)
                    .timeout(timeout)
                    .send()
                    .map_err(transport)?;
                handle(resp)
            })
            .map_err(|msg| self.err(msg))
    }

    /// HEAD: `Some(size)` when present, `None` on 404.
    pub fn head(
        &self,
        what: &str,
        make: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Option<u64>> {
        self.call("HEAD", what, 0, make, |resp| {
            let status = resp.status();
            if status.is_success() {
                Ok(Some(content_length(&resp).unwrap_or(0)))
            } else if is_absent(status) {
                Ok(None)
            } else {
                Err(status_error(resp))
            }
        })
    }

    /// GET into memory: `None` on 404.
    pub fn get(
        &self,
        what: &str,
        make: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Option<Vec<u8>>> {
        self.call("GET", what, 0, make, |resp| {
            let status = resp.status();
            if status.is_success() {
                resp.bytes().map(|b| Some(b.to_vec())).map_err(transport)
            } else if is_absent(status) {
                Ok(None)
            } else {
                Err(status_error(resp))
            }
        })
    }

    /// A request that must answer 2xx; returns the response body.
    pub fn send_ok(
        &self,
        method: &'static str,
        what: &str,
        body_len: u64,
        make: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<String> {
        self.call(method, what, body_len, make, |resp| {
            if resp.status().is_success() {
                resp.text().map_err(transport)
            } else {
                Err(status_error(resp))
            }
        })
    }

    /// Logs how many requests this target made (and retried).
    pub fn log_summary(&self) {
        let stats = &self.retrier.stats;
        if stats.total() == 0 {
            return;
        }
        if stats.retries.load(Ordering::Relaxed) > 0 {
            tracing::info!("binary cache {}: {}", self.url, stats.summary());
        } else {
            tracing::debug!("binary cache {}: {}", self.url, stats.summary());
        }
    }
}

pub fn content_length(resp: &Response) -> Option<u64> {
    resp.headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn is_absent(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE
}

/// `f` over every item, at most `limit` at once, results in order; the
/// first error wins.
pub fn parallel_map<I: Sync, T: Send>(
    items: &[I],
    limit: usize,
    f: impl Fn(&I) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    if items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let threads = limit.clamp(1, items.len());
    let mut results: Vec<Option<Result<T>>> = (0..items.len()).map(|_| None).collect();
    let chunks: Vec<Vec<(usize, Result<T>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            break;
                        }
                        let r = f(&items[i]);
                        let failed = r.is_err();
                        out.push((i, r));
                        if failed {
                            // Others stop taking work too.
                            next.store(items.len(), Ordering::Relaxed);
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    for (i, r) in chunks.into_iter().flatten() {
        results[i] = Some(r);
    }
    if let Some(e) = results.iter_mut().find_map(|r| match r {
        Some(Err(_)) => r.take(),
        _ => None,
    }) {
        return Err(e.err().expect("an error"));
    }
    Ok(results
        .into_iter()
        .map(|r| match r {
            Some(Ok(v)) => v,
            _ => unreachable!("every item done when none failed"),
        })
        .collect())
}

/// `scheme://host[:port]/path` without user info, query or fragment.
pub fn display_url(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string().trim_end_matches('/').to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_map_keeps_order_and_fails() {
        let v: Vec<u32> = (0..100).collect();
        let r = parallel_map(&v, 8, |x| Ok(x * 2)).unwrap();
        assert_eq!(r, v.iter().map(|x| x * 2).collect::<Vec<_>>());
        let e = parallel_map(&v, 8, |x| {
            if *x == 50 {
                Err(Error::cache("u", "boom"))
            } else {
                Ok(*x)
            }
        });
        assert!(e.is_err());
    }

    #[test]
    fn background_uploads_gate_narinfos() {
        let bg = Arc::new(Background::default());
        let runs = Arc::new(AtomicUsize::new(0));
        for (rel, ok) in [("nar/a", true), ("nar/b", false), ("nar/a", true)] {
            let runs = runs.clone();
            bg.start(rel, 10, move || {
                runs.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
                if ok {
                    Ok(())
                } else {
                    Err(Error::cache("u", "HTTP 500"))
                }
            });
        }
        assert_eq!(bg.wait("nar/a"), Ok(()));
        assert_eq!(bg.wait("nar/b"), Err("HTTP 500".to_string()));
        assert_eq!(bg.wait("nar/never-started"), Ok(()));
        bg.wait_all();
        // The same NAR twice is uploaded once.
        assert_eq!(runs.load(Ordering::Relaxed), 2);
        assert_eq!(
            narinfo_nar_url(b"StorePath: /nix/store/x\nURL: nar/abc.nar.zst\n").as_deref(),
            Some("nar/abc.nar.zst")
        );
    }

    #[test]
    fn display_url_drops_secrets() {
        let u = url::Url::parse("https://me:secret@host:8080/cache/?token=x").unwrap();
        assert_eq!(display_url(&u), "https://host:8080/cache");
    }
}

/// NAR uploads running in the background, so the threads that compress
/// NARs never wait on the network ("write-behind"), with the closure
/// invariant kept by [`Background::wait`]: a narinfo is only written once
/// the upload of the NAR it names has succeeded.
#[derive(Debug, Default)]
pub struct Background {
    state: Mutex<BackgroundState>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct BackgroundState {
    in_flight: usize,
    bytes_in_flight: u64,
    /// NAR → `None` while uploading, then its outcome.
    nars: HashMap<String, Option<Result<(), String>>>,
}

/// Uploads in flight at once (each holds one spooled NAR: ≤ 1 MiB of memory
/// or an unlinked temp file); more wait, which holds back compression.
pub const MAX_BACKGROUND: usize = 8;
/// Spooled bytes waiting for upload, at most (one larger NAR goes alone).
pub const MAX_BACKGROUND_BYTES: u64 = 1 << 30;

impl Background {
    /// Runs `upload` of `rel` in the background once a slot is free. A NAR
    /// of the same name already uploaded or uploading is the same bytes
    /// (content-addressed): not sent twice.
    pub fn start(
        self: &Arc<Self>,
        rel: &str,
        bytes: u64,
        upload: impl FnOnce() -> Result<()> + Send + 'static,
    ) {
        let mut st = self.state.lock().expect("background state");
        while st.in_flight >= MAX_BACKGROUND
            || (st.in_flight > 0 && st.bytes_in_flight + bytes > MAX_BACKGROUND_BYTES)
        {
            st = self.cond.wait(st).expect("background state");
        }
        if matches!(st.nars.get(rel), Some(None) | Some(Some(Ok(())))) {
            return;
        }
        st.nars.insert(rel.to_string(), None);
        st.in_flight += 1;
        st.bytes_in_flight += bytes;
        drop(st);
        let me = self.clone();
        let rel = rel.to_string();
        std::thread::spawn(move || {
            let outcome = upload().map_err(|e| match e {
                Error::Cache { msg, .. } => msg,
                e => e.to_string(),
            });
            let mut st = me.state.lock().expect("background state");
            st.nars.insert(rel, Some(outcome));
            st.in_flight -= 1;
            st.bytes_in_flight -= bytes;
            me.cond.notify_all();
        });
    }

    /// Waits for the upload of `rel`, if one was started here; its error.
    pub fn wait(&self, rel: &str) -> Result<(), String> {
        let mut st = self.state.lock().expect("background state");
        loop {
            match st.nars.get(rel) {
                None => return Ok(()),
                Some(Some(outcome)) => return outcome.clone(),
                Some(None) => st = self.cond.wait(st).expect("background state"),
            }
        }
    }

    /// Waits for every upload started.
    pub fn wait_all(&self) {
        let mut st = self.state.lock().expect("background state");
        while st.in_flight > 0 {
            st = self.cond.wait(st).expect("background state");
        }
    }
}

/// The `URL:` of a narinfo being written (the NAR it needs first).
pub fn narinfo_nar_url(data: &[u8]) -> Option<String> {
    std::str::from_utf8(data)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .map(|u| u.trim().to_string())
}
