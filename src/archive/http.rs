//! HTTP plumbing shared by the network backends: one blocking client,
//! retries with backoff on 5xx/429/resets (saying what was given up on),
//! parallel chunked upload behind a `Write`, and parallel ranged download
//! behind a `Read`, both with bounded memory (chunk size × parallelism).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use reqwest::blocking::{Client, RequestBuilder, Response};

/// Attempts per request.
pub const ATTEMPTS: u32 = 5;

/// Transfer chunk (upload block, download range): 8 MiB, or
/// `$NIXDELTA_HTTP_CHUNK_SIZE` bytes (at least 1 KiB; tests use small ones).
pub fn chunk_size() -> usize {
    std::env::var("NIXDELTA_HTTP_CHUNK_SIZE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(8 << 20, |n| n.max(1024))
}

pub fn client() -> Client {
    let mut builder = Client::builder();
    match crate::cache::net::extra_roots() {
        Ok(certs) => {
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Err(e) => tracing::warn!("{e}; using the built-in roots only"),
    }
    builder
        .connect_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(600))
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("nixdelta/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("HTTP client")
}

fn backoff(attempt: u32) -> Duration {
    if std::env::var_os("NIXDELTA_TEST_FAST_RETRY").is_some() {
        return Duration::from_millis(10);
    }
    Duration::from_millis(500 * (1u64 << attempt.min(5)))
}

/// Sends the request `make` builds, retrying network errors, 5xx and 429.
/// Other statuses come back as `Ok` for the caller to judge. `what` names
/// the operation in the error, which says how many attempts were made.
pub fn send(what: &str, make: &dyn Fn() -> RequestBuilder) -> Result<Response, String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(backoff(attempt - 1));
        }
        match make().send() {
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                let status = r.status();
                let body = r.text().unwrap_or_default();
                last = format!("HTTP {status}: {}", snippet(&body));
                tracing::debug!("{what}: {last} (attempt {})", attempt + 1);
            }
            Ok(r) => return Ok(r),
            Err(e) => {
                last = describe(&e);
                tracing::debug!("{what}: {last} (attempt {})", attempt + 1);
            }
        }
    }
    Err(format!("{what}: gave up after {ATTEMPTS} attempts: {last}"))
}

/// Fails unless the status is a success; the error quotes the body.
pub fn check(what: &str, r: Response) -> Result<Response, String> {
    if r.status().is_success() {
        return Ok(r);
    }
    let status = r.status();
    let body = r.text().unwrap_or_default();
    Err(format!("{what}: HTTP {status}: {}", snippet(&body)))
}

pub fn snippet(body: &str) -> String {
    let b = body.trim();
    if b.len() > 300 {
        let mut end = 300;
        while !b.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &b[..end])
    } else {
        b.to_string()
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

// ----------------------------------------------------------------- upload

/// Uploads one chunk: (index from 0, offset, bytes).
pub type PutChunk = dyn Fn(usize, u64, Vec<u8>) -> Result<(), String> + Send + Sync;

/// A `Write` that cuts what it is given into chunks and uploads them with
/// `parallel` threads. Call [`ChunkedUpload::finish`] at the end.
pub struct ChunkedUpload {
    chunk_size: usize,
    buf: Vec<u8>,
    next_index: usize,
    offset: u64,
    tx: Option<Sender<(usize, u64, Vec<u8>)>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    error: Arc<Mutex<Option<String>>>,
}

impl ChunkedUpload {
    pub fn new(chunk_size: usize, parallel: usize, put: Arc<PutChunk>) -> ChunkedUpload {
        let (tx, rx) = bounded::<(usize, u64, Vec<u8>)>(parallel.max(1));
        let error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let threads = (0..parallel.max(1))
            .map(|_| {
                let rx = rx.clone();
                let put = put.clone();
                let error = error.clone();
                std::thread::spawn(move || {
                    for (i, off, data) in rx.iter() {
                        if error.lock().unwrap().is_some() {
                            continue;
                        }
                        if let Err(e) = put(i, off, data) {
                            error.lock().unwrap().get_or_insert(e);
                        }
                    }
                })
            })
            .collect();
        ChunkedUpload {
            chunk_size,
            buf: Vec::with_capacity(chunk_size),
            next_index: 0,
            offset: 0,
            tx: Some(tx),
            threads,
            error,
        }
    }

    fn failed(&self) -> Option<String> {
        self.error.lock().unwrap().clone()
    }

    fn ship(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk_size));
        let len = data.len() as u64;
        let tx = self.tx.as_ref().expect("not finished");
        if tx.send((self.next_index, self.offset, data)).is_err() {
            return Err(io::Error::other("upload threads stopped"));
        }
        self.next_index += 1;
        self.offset += len;
        Ok(())
    }

    /// Uploads the rest and waits: (total bytes, number of chunks).
    pub fn finish(mut self) -> Result<(u64, usize), String> {
        if !self.buf.is_empty() || self.next_index == 0 {
            self.ship().map_err(|e| e.to_string())?;
        }
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        match self.failed() {
            Some(e) => Err(e),
            None => Ok((self.offset, self.next_index)),
        }
    }
}

impl Write for ChunkedUpload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = self.failed() {
            return Err(io::Error::other(e));
        }
        let n = data.len().min(self.chunk_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.chunk_size {
            self.ship()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ChunkedUpload {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// --------------------------------------------------------------- download

/// Fetches bytes `start..=end` of the object.
pub type GetRange = dyn Fn(u64, u64) -> Result<Vec<u8>, String> + Send + Sync;

/// A range to fetch and where its bytes go.
type RangeJob = (u64, u64, Sender<Result<Vec<u8>, String>>);

/// Reads an object of `total` bytes in chunks fetched by `parallel`
/// threads, delivered in order; at most `2 × parallel` chunks in memory.
pub struct RangedReader {
    jobs: Option<Sender<RangeJob>>,
    pending: VecDeque<Receiver<Result<Vec<u8>, String>>>,
    next_start: u64,
    total: u64,
    chunk: u64,
    cur: Vec<u8>,
    pos: usize,
    window: usize,
}

impl RangedReader {
    /// `first` is chunk 0 when it was already fetched (to learn `total`).
    pub fn new(
        total: u64,
        chunk: u64,
        parallel: usize,
        first: Option<Vec<u8>>,
        get: Arc<GetRange>,
    ) -> RangedReader {
        let parallel = parallel.max(1);
        let (jobs_tx, jobs_rx) = bounded::<RangeJob>(parallel * 2);
        for _ in 0..parallel {
            let rx = jobs_rx.clone();
            let get = get.clone();
            std::thread::spawn(move || {
                for (start, end, reply) in rx.iter() {
                    let _ = reply.send(get(start, end));
                }
            });
        }
        let mut r = RangedReader {
            jobs: Some(jobs_tx),
            pending: VecDeque::new(),
            next_start: 0,
            total,
            chunk,
            cur: Vec::new(),
            pos: 0,
            window: parallel * 2,
        };
        if let Some(first) = first {
            r.next_start = first.len() as u64;
            r.cur = first;
        }
        r.fill();
        r
    }

    fn fill(&mut self) {
        while self.pending.len() < self.window && self.next_start < self.total {
            let end = (self.next_start + self.chunk).min(self.total) - 1;
            let (tx, rx) = bounded(1);
            if let Some(jobs) = &self.jobs {
                if jobs.send((self.next_start, end, tx)).is_err() {
                    return;
                }
            }
            self.pending.push_back(rx);
            self.next_start = end + 1;
        }
    }
}

impl Read for RangedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            let Some(rx) = self.pending.pop_front() else {
                return Ok(0);
            };
            match rx.recv() {
                Ok(Ok(data)) => {
                    self.cur = data;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
                Err(_) => return Err(io::Error::other("download threads stopped")),
            }
            self.fill();
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for RangedReader {
    fn drop(&mut self) {
        self.jobs = None;
    }
}

/// Downloads `url` with parallel ranges when the server honours `Range`
/// (learning the size from the first chunk's `Content-Range`), else as one
/// stream. `decorate` adds headers (auth) to every request.
pub fn download(
    client: &Client,
    url: &str,
    what: &str,
    chunk: u64,
    parallel: usize,
    decorate: Arc<dyn Fn(RequestBuilder) -> RequestBuilder + Send + Sync>,
) -> Result<Box<dyn Read + Send>, String> {
    let first = send(what, &|| {
        decorate(client.get(url)).header("Range", format!("bytes=0-{}", chunk - 1))
    })?;
    let status = first.status().as_u16();
    if status == 200 {
        return Ok(Box::new(first));
    }
    if status == 416 {
        // Empty object.
        return Ok(Box::new(io::empty()));
    }
    let first = check(what, first)?;
    let total = first
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit('/').next())
        .and_then(|t| t.parse::<u64>().ok());
    let Some(total) = total else {
        return Ok(Box::new(first));
    };
    let mut data = Vec::new();
    let mut first = first;
    first
        .read_to_end(&mut data)
        .map_err(|e| format!("{what}: {e}"))?;
    let client = client.clone();
    let url = url.to_string();
    let what_s = what.to_string();
    let get: Arc<GetRange> = Arc::new(move |start, end| {
        let r = send(&what_s, &|| {
            decorate(client.get(&url)).header("Range", format!("bytes={start}-{end}"))
        })?;
        let mut r = check(&what_s, r)?;
        let mut v = Vec::with_capacity((end - start + 1) as usize);
        r.read_to_end(&mut v)
            .map_err(|e| format!("{what_s}: {e}"))?;
        if v.len() as u64 != end - start + 1 {
            return Err(format!(
                "{what_s}: range {start}-{end} returned {} bytes",
                v.len()
            ));
        }
        Ok(v)
    });
    Ok(Box::new(RangedReader::new(
        total,
        chunk,
        parallel,
        Some(data),
        get,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_upload_reassembles() {
        type Chunks = Arc<Mutex<Vec<(usize, u64, Vec<u8>)>>>;
        let got: Chunks = Arc::default();
        let g = got.clone();
        let mut up = ChunkedUpload::new(
            7,
            3,
            Arc::new(move |i, off, d| {
                g.lock().unwrap().push((i, off, d));
                Ok(())
            }),
        );
        let data: Vec<u8> = (0..100u8).collect();
        up.write_all(&data).unwrap();
        assert_eq!(up.finish().unwrap(), (100, 15));
        let mut v = got.lock().unwrap().clone();
        v.sort();
        let joined: Vec<u8> = v.iter().flat_map(|c| c.2.clone()).collect();
        assert_eq!(joined, data);
        assert!(v.iter().all(|(i, off, _)| *off == *i as u64 * 7));
    }

    #[test]
    fn chunked_upload_reports_failures() {
        let mut up = ChunkedUpload::new(
            4,
            2,
            Arc::new(|i, _, _| if i == 2 { Err("nope".into()) } else { Ok(()) }),
        );
        let _ = up.write_all(&[0u8; 64]);
        assert_eq!(up.finish().unwrap_err(), "nope");
    }

    #[test]
    fn ranged_reader_in_order() {
        let data: Arc<Vec<u8>> = Arc::new((0..10_000u32).map(|i| (i % 253) as u8).collect());
        let d = data.clone();
        let get: Arc<GetRange> = Arc::new(move |s, e| {
            std::thread::sleep(Duration::from_millis((s / 1000 % 3) * 2));
            Ok(d[s as usize..=e as usize].to_vec())
        });
        let mut r = RangedReader::new(10_000, 999, 4, Some(data[..999].to_vec()), get);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, *data);
    }
}
