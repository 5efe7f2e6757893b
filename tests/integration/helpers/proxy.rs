//! A fault-injecting HTTP/1.1 proxy in front of a real server (SeaweedFS or
//! nginx), on 127.0.0.1. Each request is read whole, then, by the rule in
//! force, either forwarded (one upstream connection per request, answered
//! with `Connection: close`) or failed: HTTP 500, 429 with `Retry-After`, a
//! connection reset before or after the upstream saw it, a delay, or a stall
//! longer than the client's timeout. Requests are forwarded byte for byte
//! (the Host header too), so SigV4 signatures still verify upstream.
//!
//! Bounded: it serves only 127.0.0.1 and stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Answer 500 without forwarding.
    Error500,
    /// Answer 429 with `Retry-After: 1`.
    TooMany,
    /// Reset the connection without forwarding.
    ResetBefore,
    /// Forward, then reset instead of answering (the server did the work).
    ResetAfter,
    /// Forward after a delay.
    Slow,
    /// Hold the request longer than the client's timeout, then close.
    Stall,
}

pub const ALL_FAULTS: [Fault; 6] = [
    Fault::Error500,
    Fault::TooMany,
    Fault::ResetBefore,
    Fault::ResetAfter,
    Fault::Slow,
    Fault::Stall,
];

/// Which requests fail, and how.
pub enum Rule {
    /// Forward everything.
    Pass,
    /// A seeded share of requests fail, cycling through `faults`.
    Flaky {
        share: f64,
        faults: Vec<Fault>,
        seed: u64,
    },
    /// Every request matching (method, path substring) fails with `fault`;
    /// the rest pass.
    Always {
        method: &'static str,
        path_contains: String,
        fault: Fault,
    },
}

pub struct Seen {
    pub method: String,
    pub path: String,
    pub fault: Option<Fault>,
}

struct Shared {
    rule: Mutex<(Rule, fastrand::Rng, usize)>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    upstream: u16,
    stall: Duration,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// `stall`: how long a [`Fault::Stall`] holds a request.
    pub fn start(upstream: u16, rule: Rule, stall: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seed = match &rule {
            Rule::Flaky { seed, .. } => *seed,
            _ => 0,
        };
        let shared = Arc::new(Shared {
            rule: Mutex::new((rule, fastrand::Rng::with_seed(seed), 0)),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            upstream,
            stall,
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        Proxy { port, shared }
    }

    pub fn set_rule(&self, rule: Rule) {
        let seed = match &rule {
            Rule::Flaky { seed, .. } => *seed,
            _ => 0,
        };
        *self.shared.rule.lock().unwrap() = (rule, fastrand::Rng::with_seed(seed), 0);
    }

    /// Requests seen so far.
    pub fn seen(&self) -> std::sync::MutexGuard<'_, Vec<Seen>> {
        self.shared.seen.lock().unwrap()
    }

    pub fn count(&self, f: Fault) -> usize {
        self.seen().iter().filter(|s| s.fault == Some(f)).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn decide(s: &Shared, method: &str, path: &str) -> Option<Fault> {
    let mut g = s.rule.lock().unwrap();
    let (rule, rng, n) = &mut *g;
    match rule {
        Rule::Pass => None,
        Rule::Flaky { share, faults, .. } => {
            if rng.f64() < *share && !faults.is_empty() {
                let f = faults[*n % faults.len()];
                *n += 1;
                Some(f)
            } else {
                None
            }
        }
        Rule::Always {
            method: m,
            path_contains,
            fault,
        } => (method == *m && path.contains(path_contains.as_str())).then_some(*fault),
    }
}

fn reset(conn: &TcpStream) {
    // SO_LINGER 0: close sends RST.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Reads one request head and body; `None` at EOF.
fn read_request(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<(Vec<String>, Vec<u8>)>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let len = lines
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Some((lines, body)))
}

fn serve(conn: TcpStream, s: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    // One request per connection: every answer says Connection: close.
    let Some((head, body)) = read_request(&mut reader)? else {
        return Ok(());
    };
    let mut conn = conn;
    let mut parts = head[0].split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let fault = decide(s, &method, &path);
    s.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        fault,
    });
    match fault {
        Some(Fault::Error500) => {
            return respond(
                &mut conn,
                "500 Internal Server Error",
                &[],
                "injected fault\n",
            )
        }
        Some(Fault::TooMany) => {
            return respond(
                &mut conn,
                "429 Too Many Requests",
                &["Retry-After: 1"],
                "slow down\n",
            )
        }
        Some(Fault::ResetBefore) => {
            reset(&conn);
            return Ok(());
        }
        Some(Fault::Stall) => {
            std::thread::sleep(s.stall);
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        Some(Fault::Slow) => std::thread::sleep(Duration::from_millis(300)),
        _ => {}
    }
    let mut up = TcpStream::connect(("127.0.0.1", s.upstream))?;
    let mut out = Vec::new();
    for (i, line) in head.iter().enumerate() {
        let lower = line.to_ascii_lowercase();
        if i > 0 && (lower.starts_with("connection:") || lower.starts_with("keep-alive:")) {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    up.write_all(&out)?;
    if fault == Some(Fault::ResetAfter) {
        // Let the server finish the request, then fail the client.
        let mut sink = Vec::new();
        let _ = up.read_to_end(&mut sink);
        reset(&conn);
        return Ok(());
    }
    // Relay the response head with Connection: close, then the rest as is.
    let mut upr = BufReader::new(up);
    let mut head_out = Vec::new();
    loop {
        let mut line = String::new();
        if upr.read_line(&mut line)? == 0 {
            break;
        }
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare.is_empty() {
            break;
        }
        let lower = bare.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("keep-alive:") {
            continue;
        }
        head_out.extend_from_slice(bare.as_bytes());
        head_out.extend_from_slice(b"\r\n");
    }
    head_out.extend_from_slice(b"Connection: close\r\n\r\n");
    conn.write_all(&head_out)?;
    std::io::copy(&mut upr, &mut conn)?;
    conn.flush()?;
    let _ = conn.shutdown(Shutdown::Write);
    Ok(())
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    headers: &[&str],
    body: &str,
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.push_str(body);
    conn.write_all(out.as_bytes())?;
    let _ = conn.shutdown(Shutdown::Write);
    Ok(())
}
