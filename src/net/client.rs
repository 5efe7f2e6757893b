//! One blocking HTTP client (rustls, the CA bundle Nix reads) with the
//! retrier behind every request, and bounded parallelism for many small
//! requests. Binary caches and archive backends both send through [`Net`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};

use super::retry::{retryable, status_error, transport, Attempt, Retrier, RetryPolicy};
use crate::error::{Error, Result};

/// Existence checks (and other small requests) in flight at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// Timeout of one attempt that streams a response of unknown size (a NAR
/// being verified, an archive from a server that ignores `Range`).
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(3600);

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
        handle: impl FnMut(Response) -> Result<T, Attempt>,
    ) -> Result<T> {
        let timeout = self.retrier.attempt_timeout(body_len);
        self.call_with_timeout(method, what, timeout, make, handle)
    }

    /// [`Net::call`] with each attempt given `timeout` (a stream).
    pub fn call_with_timeout<T>(
        &self,
        method: &'static str,
        what: &str,
        timeout: Duration,
        make: impl Fn(&Client) -> RequestBuilder,
        mut handle: impl FnMut(Response) -> Result<T, Attempt>,
    ) -> Result<T> {
        self.retrier
            .run_with_timeout(method, what, timeout, |timeout| {
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

    /// Sends, retrying transient failures (transport, 5xx, 429, 408); any
    /// other answer comes back for the caller to judge.
    pub fn send(
        &self,
        method: &'static str,
        what: &str,
        body_len: u64,
        make: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response> {
        self.call(method, what, body_len, make, |resp| {
            if retryable(resp.status()) {
                Err(status_error(resp))
            } else {
                Ok(resp)
            }
        })
    }

    /// `resp` unless its status is not a success: then an error quoting
    /// the start of the body (where servers say why).
    pub fn check(&self, method: &str, what: &str, resp: Response) -> Result<Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        Err(self.err(format!(
            "{method} {what}: HTTP {status}: {}",
            super::transfer::snippet(&body)
        )))
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
}
