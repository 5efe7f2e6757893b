//! Retries for network targets: every request is retried with exponential
//! backoff and jitter on 5xx, 429/408 (honouring `Retry-After`), timeouts and
//! connection resets, until a total deadline per request. A target whose
//! requests keep exhausting their deadline is deemed down: later requests get
//! one attempt each, so a push against a dead target ends quickly with one
//! message instead of waiting out every deadline.
//!
//! Also counts requests per method (the benchmark reports them).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::blocking::Response;
use reqwest::StatusCode;

/// Default total time budget of one request, retries included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Default timeout of one attempt without a body (bodies get more, by size).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests in a row that exhausted their deadline before the target counts
/// as down.
const DOWN_AFTER: usize = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Minimum upload rate assumed when sizing an attempt's timeout.
const MIN_BYTES_PER_SEC: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub deadline: Duration,
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: DEFAULT_DEADLINE,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl RetryPolicy {
    /// Defaults, overridden by `NIXDELTA_RETRY_DEADLINE` and
    /// `NIXDELTA_REQUEST_TIMEOUT` (seconds, fractions allowed).
    pub fn from_env() -> Self {
        let secs = |var: &str| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
        };
        let d = RetryPolicy::default();
        RetryPolicy {
            deadline: secs("NIXDELTA_RETRY_DEADLINE").unwrap_or(d.deadline),
            timeout: secs("NIXDELTA_REQUEST_TIMEOUT").unwrap_or(d.timeout),
        }
    }
}

/// Why one attempt did not succeed.
#[derive(Debug)]
pub enum Attempt {
    /// Worth retrying (5xx, 429, timeout, reset), maybe not before a delay.
    Transient {
        msg: String,
        retry_after: Option<Duration>,
    },
    /// Retrying will not help (403, 400, bad response).
    Permanent(String),
}

impl Attempt {
    pub fn transient(msg: impl Into<String>) -> Self {
        Attempt::Transient {
            msg: msg.into(),
            retry_after: None,
        }
    }
}

/// A transport error (no HTTP status): reset, refused, timeout, TLS. The
/// message never holds the URL (a presigned URL carries a signature).
pub fn transport(e: reqwest::Error) -> Attempt {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "connection failed"
    };
    let builder = e.is_builder();
    let msg = format!("{kind}: {}", error_chain(&e.without_url()));
    if builder {
        Attempt::Permanent(msg)
    } else {
        Attempt::transient(msg)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = s.source();
    }
    msg
}

/// The attempt error for a response with an unexpected status; reads a bit
/// of the body for the server's reason (an S3 `<Code>`).
pub fn status_error(resp: Response) -> Attempt {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = resp.text().unwrap_or_default();
    let reason = s3_code(&body)
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    let msg = format!("HTTP {status}{reason}");
    let msg = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            format!("{msg}: access denied, check the credentials")
        }
        _ => msg,
    };
    if retryable(status) {
        Attempt::Transient { msg, retry_after }
    } else {
        Attempt::Permanent(msg)
    }
}

pub fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// `<Code>SlowDown</Code>` from an S3 error body.
pub fn s3_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let end = body[start..].find("</Code>")? + start;
    Some(&body[start..end]).filter(|c| c.len() < 64)
}

/// `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Request counters, by method.
#[derive(Default, Debug)]
pub struct Stats {
    pub head: AtomicU64,
    pub get: AtomicU64,
    pub put: AtomicU64,
    pub post: AtomicU64,
    pub delete: AtomicU64,
    pub retries: AtomicU64,
}

impl Stats {
    fn count(&self, method: &str) {
        let c = match method {
            "HEAD" => &self.head,
            "GET" => &self.get,
            "PUT" => &self.put,
            "POST" => &self.post,
            _ => &self.delete,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn total(&self) -> u64 {
        [&self.head, &self.get, &self.put, &self.post, &self.delete]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
    /// `12 requests (HEAD 4, PUT 8), 1 retry`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (name, c) in [
            ("HEAD", &self.head),
            ("GET", &self.get),
            ("PUT", &self.put),
            ("POST", &self.post),
            ("DELETE", &self.delete),
        ] {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                parts.push(format!("{name} {n}"));
            }
        }
        format!(
            "{} requests ({}), {} retried",
            self.total(),
            parts.join(", "),
            self.retries.load(Ordering::Relaxed)
        )
    }
}

/// Runs requests under a [`RetryPolicy`], shared by all threads of a target.
#[derive(Debug, Default)]
pub struct Retrier {
    pub policy: RetryPolicy,
    pub stats: Stats,
    /// Requests in a row that gave up after their whole deadline.
    exhausted_in_a_row: AtomicUsize,
}

impl Retrier {
    pub fn new(policy: RetryPolicy) -> Self {
        Retrier {
            policy,
            ..Default::default()
        }
    }

    /// The timeout of one attempt sending `body_len` bytes.
    pub fn attempt_timeout(&self, body_len: u64) -> Duration {
        self.policy.timeout + Duration::from_secs(body_len / MIN_BYTES_PER_SEC)
    }

    /// Runs `attempt` (given its timeout) until it succeeds, fails
    /// permanently, or the deadline passes. `what` names the request in the
    /// error (`PUT nar/…`), never with a query string.
    pub fn run<T>(
        &self,
        method: &str,
        what: &str,
        body_len: u64,
        attempt: impl FnMut(Duration) -> Result<T, Attempt>,
    ) -> Result<T, String> {
        self.run_with_timeout(method, what, self.attempt_timeout(body_len), attempt)
    }

    /// [`Retrier::run`] with each attempt given `timeout`.
    pub fn run_with_timeout<T>(
        &self,
        method: &str,
        what: &str,
        timeout: Duration,
        mut attempt: impl FnMut(Duration) -> Result<T, Attempt>,
    ) -> Result<T, String> {
        let start = Instant::now();
        let down = self.exhausted_in_a_row.load(Ordering::Relaxed) >= DOWN_AFTER;
        let mut tries: u32 = 0;
        loop {
            tries += 1;
            self.stats.count(method);
            let (msg, retry_after) = match attempt(timeout) {
                Ok(v) => {
                    self.exhausted_in_a_row.store(0, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(Attempt::Permanent(msg)) => return Err(format!("{method} {what}: {msg}")),
                Err(Attempt::Transient { msg, retry_after }) => (msg, retry_after),
            };
            let elapsed = start.elapsed();
            let give_up = |why: String| {
                self.exhausted_in_a_row.fetch_add(1, Ordering::Relaxed);
                Err(format!(
                    "{method} {what}: {msg} (gave up after {tries} attempt{} in {:.1} s{why})",
                    if tries == 1 { "" } else { "s" },
                    elapsed.as_secs_f64()
                ))
            };
            if down {
                return give_up(", the target keeps failing".into());
            }
            let backoff = backoff(tries);
            let wait = retry_after.map_or(backoff, |ra| ra.max(backoff));
            if elapsed + wait > self.policy.deadline {
                let why = match retry_after {
                    Some(ra) if elapsed + ra > self.policy.deadline => {
                        format!(", server asked to retry after {} s", ra.as_secs())
                    }
                    _ => String::new(),
                };
                return give_up(why);
            }
            tracing::debug!("{method} {what}: {msg}; retrying in {wait:.1?}");
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(wait);
        }
    }
}

/// Exponential backoff with equal jitter: half fixed, half random.
fn backoff(tries: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << tries.min(16).saturating_sub(1));
    let d = exp.min(BACKOFF_CAP);
    d / 2 + d.mul_f64(fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for t in 1..30 {
            let b = backoff(t);
            assert!(b <= BACKOFF_CAP, "{t}: {b:?}");
            let exp = BACKOFF_BASE * (1 << (t.min(16) - 1));
            assert!(b >= exp.min(BACKOFF_CAP) / 2, "{t}: {b:?}");
        }
    }

    #[test]
    fn transient_then_success() {
        let r = Retrier::new(RetryPolicy {
            deadline: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        });
        let mut n = 0;
        let v = r.run("PUT", "x", 0, |_| {
            n += 1;
            if n < 3 {
                Err(Attempt::transient("HTTP 500"))
            } else {
                Ok(n)
            }
        });
        assert_eq!(v, Ok(3));
        assert_eq!(r.stats.put.load(Ordering::Relaxed), 3);
        assert_eq!(r.stats.retries.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn permanent_is_not_retried_and_deadline_ends_retries() {
        let r = Retrier::new(RetryPolicy {
            deadline: Duration::from_millis(300),
            timeout: Duration::from_secs(1),
        });
        let e = r
            .run::<()>("HEAD", "a.narinfo", 0, |_| {
                Err(Attempt::Permanent("HTTP 403".into()))
            })
            .unwrap_err();
        assert_eq!(e, "HEAD a.narinfo: HTTP 403");
        assert_eq!(r.stats.head.load(Ordering::Relaxed), 1);
        let start = Instant::now();
        let e = r
            .run::<()>("GET", "b", 0, |_| Err(Attempt::transient("HTTP 503")))
            .unwrap_err();
        assert!(e.contains("gave up after"), "{e}");
        assert!(start.elapsed() < Duration::from_millis(400));
        // Retry-After beyond the deadline: give up at once, say why.
        let e = r
            .run::<()>("GET", "c", 0, |_| {
                Err(Attempt::Transient {
                    msg: "HTTP 429".into(),
                    retry_after: Some(Duration::from_secs(60)),
                })
            })
            .unwrap_err();
        assert!(e.contains("retry after 60 s"), "{e}");
        // Three exhausted requests in a row: the target is down, one attempt each.
        let _ = r.run::<()>("GET", "d", 0, |_| Err(Attempt::transient("HTTP 503")));
        let mut n = 0;
        let _ = r.run::<()>("GET", "d", 0, |_| {
            n += 1;
            Err(Attempt::transient("HTTP 503"))
        });
        assert_eq!(n, 1);
        // A success ends that.
        assert_eq!(r.run("GET", "f", 0, |_| Ok(1)), Ok(1));
        assert_eq!(r.exhausted_in_a_row.load(Ordering::Relaxed), 0);
    }
}
