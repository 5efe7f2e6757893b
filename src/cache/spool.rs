//! Where a NAR upload is written before its name (its file hash) is known:
//! in memory up to a small limit, then in an unlinked temp file (nothing is
//! left behind even on `kill -9`). Bodies are then read back from any range,
//! by several threads at once, without holding the NAR in memory.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// NARs up to this size stay in memory.
const MEMORY_LIMIT: usize = 1 << 20;

pub struct Spool {
    mem: Vec<u8>,
    file: Option<File>,
    len: u64,
}

impl Spool {
    pub fn new() -> Spool {
        Spool {
            mem: Vec::new(),
            file: None,
            len: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ends writing; the data can then be read by ranges.
    pub fn finish(mut self) -> io::Result<SpoolData> {
        Ok(match self.file.take() {
            Some(mut f) => {
                f.flush()?;
                SpoolData::File(Arc::new(f), self.len)
            }
            None => SpoolData::Memory(bytes_of(std::mem::take(&mut self.mem))),
        })
    }
}

fn bytes_of(v: Vec<u8>) -> Arc<[u8]> {
    v.into()
}

impl Default for Spool {
    fn default() -> Self {
        Spool::new()
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.mem.len() + buf.len() > MEMORY_LIMIT {
            let mut f = tempfile::tempfile()?;
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        match &mut self.file {
            Some(f) => f.write_all(buf)?,
            None => self.mem.extend_from_slice(buf),
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The finished bytes of a spool, cheap to clone.
#[derive(Clone)]
pub enum SpoolData {
    Memory(Arc<[u8]>),
    File(Arc<File>, u64),
}

impl SpoolData {
    pub fn len(&self) -> u64 {
        match self {
            SpoolData::Memory(m) => m.len() as u64,
            SpoolData::File(_, n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A request body of `len` bytes from `offset`, with a known length.
    pub fn body(&self, offset: u64, len: u64) -> reqwest::blocking::Body {
        match self {
            SpoolData::Memory(m) if offset == 0 && len == m.len() as u64 => {
                reqwest::blocking::Body::from(m.to_vec())
            }
            _ => reqwest::blocking::Body::sized(self.reader(offset, len), len),
        }
    }

    /// Reads `len` bytes from `offset` (positioned reads: several readers
    /// of one file do not disturb each other).
    pub fn reader(&self, offset: u64, len: u64) -> RangeReader {
        RangeReader {
            data: self.clone(),
            pos: offset,
            end: offset + len,
        }
    }
}

pub struct RangeReader {
    data: SpoolData,
    pos: u64,
    end: u64,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = match &self.data {
            SpoolData::Memory(m) => {
                let start = self.pos as usize;
                let src = &m[start..start + want];
                buf[..want].copy_from_slice(src);
                want
            }
            SpoolData::File(f, _) => f.read_at(&mut buf[..want], self.pos)?,
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spool file shorter than written",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A network target's side of a spooled NAR upload.
pub trait SpoolTarget: Send + Sync + 'static {
    fn net(&self) -> &crate::net::Net;
    fn background(&self) -> &Arc<super::background::Background>;
    /// Uploads a finished NAR as `rel` (runs in the background).
    fn upload_nar(&self, rel: &str, data: &SpoolData) -> crate::error::Result<()>;
    /// Uploads a file as `rel`, now.
    fn put_data(&self, rel: &str, data: &SpoolData) -> crate::error::Result<()>;

    /// [`super::BinaryCache::put`] for a target whose NARs upload in the
    /// background: a narinfo waits for its NAR, and is not written if that
    /// upload failed.
    fn put_after_nar(&self, rel: &str, data: &[u8]) -> crate::error::Result<()> {
        if rel.ends_with(".narinfo") {
            if let Some(nar) = super::background::narinfo_nar_url(data) {
                self.background().wait(&nar).map_err(|e| {
                    self.net()
                        .err(format!("{rel} not written, its NAR failed: {e}"))
                })?;
            }
        }
        self.put_data(rel, &SpoolData::Memory(Arc::from(data)))
    }
}

/// A NAR written to a [`Spool`] and, on commit, uploaded in the background
/// (see [`super::background::Background`]): the narinfo naming it waits for it.
pub struct SpooledNar<T: SpoolTarget> {
    spool: Spool,
    target: Arc<T>,
}

impl<T: SpoolTarget> SpooledNar<T> {
    pub fn new(target: Arc<T>) -> Self {
        SpooledNar {
            spool: Spool::new(),
            target,
        }
    }
}

impl<T: SpoolTarget> Write for SpooledNar<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.spool.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: SpoolTarget> super::NarUpload for SpooledNar<T> {
    fn commit(self: Box<Self>, rel: &str) -> crate::error::Result<()> {
        let SpooledNar { spool, target } = *self;
        let data = spool
            .finish()
            .map_err(|e| target.net().err(format!("spooling {rel}: {e}")))?;
        let (job, name, len) = (target.clone(), rel.to_string(), data.len());
        target
            .background()
            .start(rel, len, move || job.upload_nar(&name, &data));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_then_file_ranges() {
        for size in [10usize, MEMORY_LIMIT + 12345] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let mut s = Spool::new();
            for chunk in data.chunks(4000) {
                s.write_all(chunk).unwrap();
            }
            assert_eq!(s.len(), size as u64);
            let d = s.finish().unwrap();
            assert_eq!(matches!(d, SpoolData::File(..)), size > MEMORY_LIMIT);
            let mut all = Vec::new();
            d.reader(0, d.len()).read_to_end(&mut all).unwrap();
            assert_eq!(all, data);
            let mut part = Vec::new();
            d.reader(3, 5).read_to_end(&mut part).unwrap();
            assert_eq!(part, &data[3..8]);
        }
    }
}
