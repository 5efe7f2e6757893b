//! Writing an archive: the header, every path's NAR in reference order, the
//! trailer, as zstd frames one after the other (a decoder reads them as one
//! stream). A path whose compressed NAR the job's push kept
//! ([`Frames`]) is copied in as that frame; the others are compressed here.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use super::{format, SaveOptions};
use crate::cache::frames::Frames;
use crate::error::{Error, Result};
use crate::nix::{nar, Sha256Hash};
use crate::store::{PathInfo, Store};

/// Counts bytes written through.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes and counts the NAR bytes written through.
struct Hashing<'a, W: Write> {
    inner: &'a mut W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Encoder<W> = zstd::stream::write::Encoder<'static, W>;

/// The output, either inside a zstd frame being compressed here or between
/// frames, where a kept frame is copied in as it is.
enum Sink<W: Write> {
    Frame(Encoder<W>),
    Between(W),
    Poisoned,
}

impl<W: Write> Sink<W> {
    /// The open frame, starting one if needed.
    fn frame(&mut self, opts: &SaveOptions) -> io::Result<&mut Encoder<W>> {
        if let Sink::Between(_) = self {
            let Sink::Between(w) = std::mem::replace(self, Sink::Poisoned) else {
                unreachable!()
            };
            let mut enc = Encoder::new(w, opts.level)?;
            enc.include_checksum(true)?;
            if opts.threads > 1 {
                enc.multithread(opts.threads)?;
            }
            *self = Sink::Frame(enc);
        }
        match self {
            Sink::Frame(enc) => Ok(enc),
            _ => Err(io::Error::other(
                "archive writer poisoned by an earlier error",
            )),
        }
    }

    /// The output between frames, ending the open frame if any.
    fn between(&mut self) -> io::Result<&mut W> {
        if let Sink::Frame(_) = self {
            let Sink::Frame(enc) = std::mem::replace(self, Sink::Poisoned) else {
                unreachable!()
            };
            *self = Sink::Between(enc.finish()?);
        }
        match self {
            Sink::Between(w) => Ok(w),
            _ => Err(io::Error::other(
                "archive writer poisoned by an earlier error",
            )),
        }
    }
}

/// Writes the archive of `paths` (in reference order) to `out`; returns
/// the compressed size and how many paths came from kept frames. Every NAR
/// compressed here is checked against the DB's narHash and narSize as it
/// streams ([`Error::Integrity`] otherwise); a kept frame was checked so
/// when the push wrote it, and is found by that hash and size.
pub fn write_archive(
    store: &Store,
    paths: &[PathInfo],
    key: &str,
    out: &mut dyn Write,
    opts: &SaveOptions,
) -> Result<Written> {
    let manifest = format::Manifest {
        store_dir: store.store_dir().to_string(),
        key: key.to_string(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        paths: paths.iter().map(format::Entry::from_info).collect(),
    };
    let io_err = |e: io::Error| Error::Other(anyhow::anyhow!("writing the store archive: {e}"));
    let mut sink = Sink::Between(Counting { inner: out, n: 0 });
    format::write_header(sink.frame(opts).map_err(io_err)?, &manifest).map_err(io_err)?;
    let total = paths.iter().map(|i| i.nar_size).sum();
    let _progress = crate::progress::begin("save", paths.len() as u64, total);
    let mut spliced = 0;
    for info in paths {
        let kept = opts.frames.as_ref().and_then(|f| kept_frame(f, info));
        match kept {
            Some(mut file) => {
                io::copy(&mut file, sink.between().map_err(io_err)?).map_err(io_err)?;
                spliced += 1;
            }
            None => compress(store, info, sink.frame(opts).map_err(io_err)?)?,
        }
        crate::progress::add(1, info.nar_size);
    }
    format::write_trailer(sink.frame(opts).map_err(io_err)?).map_err(io_err)?;
    let counting = sink.between().map_err(io_err)?;
    counting.flush().map_err(io_err)?;
    Ok(Written {
        bytes: counting.n,
        spliced,
    })
}

/// What [`write_archive`] wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct Written {
    /// Compressed bytes.
    pub bytes: u64,
    /// Paths copied in from kept frames (not compressed again).
    pub spliced: usize,
}

fn kept_frame(frames: &Frames, info: &PathInfo) -> Option<std::fs::File> {
    frames.get(&info.nar_hash, info.nar_size)
}

/// Dumps one path's NAR into the open frame, checking it against the DB.
fn compress<W: Write>(store: &Store, info: &PathInfo, enc: &mut W) -> Result<()> {
    let real = store.real_path(&info.path);
    let abs = info.path.to_absolute(store.store_dir());
    let mut h = Hashing {
        inner: enc,
        hash: Sha256::new(),
        n: 0,
    };
    nar::dump_path(&real, &mut h)
        .map_err(|e| Error::Other(anyhow::anyhow!("writing the store archive: {abs}: {e}")))?;
    let got = Sha256Hash(h.hash.finalize().into());
    if got != info.nar_hash || h.n != info.nar_size {
        return Err(Error::Integrity(format!(
            "{abs}: contents do not match the Nix DB (NAR hash {got}, {} bytes; DB says {}, {} bytes): the store is corrupt, run nix-store --verify --check-contents",
            h.n, info.nar_hash, info.nar_size
        )));
    }
    Ok(())
}
