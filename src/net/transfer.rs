//! Large transfers over [`Net`] (so under its retry policy): parallel
//! chunked upload behind a `Write`, and parallel ranged download behind a
//! `Read`, both with bounded memory (chunk size × parallelism).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, Receiver, Sender};
use reqwest::blocking::{Client, RequestBuilder};

use super::retry::{status_error, transport, Attempt};
use super::{Net, STREAM_TIMEOUT};
use crate::error::Result;

/// Transfer chunk (upload block, download range): 8 MiB, or
/// `$NIXDELTA_HTTP_CHUNK_SIZE` bytes (at least 1 KiB; tests use small ones).
pub fn chunk_size() -> usize {
    std::env::var("NIXDELTA_HTTP_CHUNK_SIZE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(8 << 20, |n| n.max(1024))
}

/// At most 300 characters of a response body, for an error message.
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

// ----------------------------------------------------------------- upload

/// Uploads one chunk: (index from 0, offset, bytes).
pub type PutChunk = dyn Fn(usize, u64, Vec<u8>) -> Result<()> + Send + Sync;

/// A `Write` that cuts what it is given into chunks and uploads them with
/// `parallel` threads. Call [`ChunkedUpload::finish`] at the end.
pub struct ChunkedUpload {
    chunk_size: usize,
    buf: Vec<u8>,
    next_index: usize,
    offset: u64,
    tx: Option<Sender<(usize, u64, Vec<u8>)>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    error: Arc<Mutex<Option<crate::error::Error>>>,
}

impl ChunkedUpload {
    pub fn new(chunk_size: usize, parallel: usize, put: Arc<PutChunk>) -> ChunkedUpload {
        let (tx, rx) = bounded::<(usize, u64, Vec<u8>)>(parallel.max(1));
        let error: Arc<Mutex<Option<crate::error::Error>>> = Arc::new(Mutex::new(None));
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
        self.error.lock().unwrap().as_ref().map(ToString::to_string)
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
    pub fn finish(mut self) -> Result<(u64, usize)> {
        if !self.buf.is_empty() || self.next_index == 0 {
            if let Err(e) = self.ship() {
                self.stop();
                return Err(self
                    .error
                    .lock()
                    .unwrap()
                    .take()
                    .unwrap_or_else(|| crate::error::Error::Other(e.into())));
            }
        }
        self.stop();
        match self.error.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok((self.offset, self.next_index)),
        }
    }

    fn stop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
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
        self.stop();
    }
}

// --------------------------------------------------------------- download

/// Fetches bytes `start..=end` of the object.
pub type GetRange = dyn Fn(u64, u64) -> std::result::Result<Vec<u8>, String> + Send + Sync;

/// A range to fetch and where its bytes go.
type RangeJob = (u64, u64, Sender<std::result::Result<Vec<u8>, String>>);

/// Reads an object of `total` bytes in chunks fetched by `parallel`
/// threads, delivered in order; at most `2 × parallel` chunks in memory.
pub struct RangedReader {
    jobs: Option<Sender<RangeJob>>,
    pending: VecDeque<Receiver<std::result::Result<Vec<u8>, String>>>,
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

/// The answer to the first ranged GET.
enum First {
    /// 200: the server ignores `Range`; this is the whole object.
    Whole(reqwest::blocking::Response),
    /// 206: chunk 0 and the object's size (`None` without one).
    Part(Vec<u8>, Option<u64>),
    /// 416: an empty object.
    Empty,
}

/// Downloads with parallel ranges when the server honours `Range`
/// (learning the size from the first chunk's `Content-Range`), else as one
/// stream. `request` makes the GET (URL, auth) anew for every attempt;
/// every request goes through `net`'s retries.
pub fn download(
    net: Arc<Net>,
    what: &str,
    chunk: u64,
    parallel: usize,
    request: Arc<dyn Fn(&Client) -> RequestBuilder + Send + Sync>,
) -> Result<Box<dyn Read + Send>> {
    let first = net.call_with_timeout(
        "GET",
        what,
        STREAM_TIMEOUT,
        |c| request(c).header("Range", format!("bytes=0-{}", chunk - 1)),
        |resp| match resp.status().as_u16() {
            200 => Ok(First::Whole(resp)),
            416 => Ok(First::Empty),
            206 => {
                let total = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit('/').next())
                    .and_then(|t| t.parse::<u64>().ok());
                let data = resp.bytes().map_err(transport)?.to_vec();
                Ok(First::Part(data, total))
            }
            _ => Err(status_error(resp)),
        },
    )?;
    let (data, total) = match first {
        First::Whole(resp) => return Ok(Box::new(resp)),
        First::Empty => return Ok(Box::new(io::empty())),
        First::Part(data, None) => return Ok(Box::new(io::Cursor::new(data))),
        First::Part(data, Some(total)) => (data, total),
    };
    let what_s = what.to_string();
    let get: Arc<GetRange> = Arc::new(move |start, end| {
        let want = end - start + 1;
        net.call(
            "GET",
            &what_s,
            want,
            |c| request(c).header("Range", format!("bytes={start}-{end}")),
            |resp| {
                if !resp.status().is_success() {
                    return Err(status_error(resp));
                }
                let v = resp.bytes().map_err(transport)?;
                if v.len() as u64 != want {
                    return Err(Attempt::Permanent(format!(
                        "range {start}-{end} returned {} bytes",
                        v.len()
                    )));
                }
                Ok(v.to_vec())
            },
        )
        .map_err(|e| e.to_string())
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
    use std::time::Duration;

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
            Arc::new(|i, _, _| {
                if i == 2 {
                    Err(crate::error::Error::cache("u", "nope"))
                } else {
                    Ok(())
                }
            }),
        );
        let _ = up.write_all(&[0u8; 64]);
        assert_eq!(up.finish().unwrap_err().to_string(), "binary cache u: nope");
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
