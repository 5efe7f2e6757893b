//! One store path → NAR → sha256 → zstd → sha256 → cache, in one streaming
//! pass with bounded memory.

use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::cache::{BinaryCache, NarUpload};
use crate::error::{Error, Result};
use crate::nix::{nar, Sha256Hash};
use crate::store::PathInfo;

/// Paths at least this large are compressed by several zstd threads, so one
/// big path at the end of a push does not leave the other cores idle.
const MULTITHREAD_FROM: u64 = 32 << 20;

#[derive(Clone, Copy, Debug)]
pub struct PackOptions {
    pub level: i32,
    pub threads: u32,
}

/// A NAR that is in the cache, compressed, with the hashes its narinfo needs.
#[derive(Clone, Debug)]
pub struct Packed {
    pub url: String,
    pub file_hash: Sha256Hash,
    pub file_size: u64,
}

/// A writer that hashes and counts what passes through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    pub fn finish(self) -> (W, Sha256Hash, u64) {
        (
            self.inner,
            Sha256Hash(self.hasher.finalize().into()),
            self.count,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs `info` (whose files are at `real_path`) into `cache`. The NAR's
/// hash and size must equal the store DB's, else nothing is committed.
pub fn pack(
    info: &PathInfo,
    real_path: &Path,
    cache: &dyn BinaryCache,
    store_dir: &str,
    opts: PackOptions,
) -> Result<Packed> {
    let name = info.path.to_absolute(store_dir);
    let io_err = |e: io::Error| Error::Other(anyhow::anyhow!("{name}: {e}"));
    let cache_failed = std::rc::Rc::new(std::cell::Cell::new(false));
    let upload = Tracked {
        inner: cache.begin_nar()?,
        failed: cache_failed.clone(),
    };
    let file_hasher = HashWriter::new(upload);
    let mut zstd = zstd::stream::write::Encoder::new(file_hasher, opts.level).map_err(io_err)?;
    if opts.threads > 1 && info.nar_size >= MULTITHREAD_FROM {
        zstd.multithread(opts.threads).map_err(io_err)?;
    }
    let mut nar_hasher = HashWriter::new(zstd);
    let blame = |e: io::Error| match cache_failed.get() {
        true => Error::cache(cache.url(), format!("writing the NAR of {name}: {e}")),
        false => io_err(e),
    };
    nar::dump_path(real_path, &mut nar_hasher).map_err(&blame)?;
    let (zstd, nar_hash, nar_size) = nar_hasher.finish();
    let file_hasher = zstd.finish().map_err(&blame)?;
    let (upload, file_hash, file_size) = file_hasher.finish();
    if nar_hash != info.nar_hash || nar_size != info.nar_size {
        return Err(Error::Integrity(format!(
            "{name}: NAR hash {nar_hash} ({nar_size} bytes) differs from the store DB's {} ({} bytes); \
             the path was modified after it was registered",
            info.nar_hash, info.nar_size
        )));
    }
    let url = format!("nar/{}.nar.zst", file_hash.to_nix32());
    upload.inner.commit(&url)?;
    Ok(Packed {
        url,
        file_hash,
        file_size,
    })
}

/// Remembers whether an error came from the cache side of the stream, so it
/// is reported as a cache fault rather than as a store read error.
struct Tracked {
    inner: Box<dyn NarUpload>,
    failed: std::rc::Rc<std::cell::Cell<bool>>,
}

impl Write for Tracked {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|_| self.failed.set(true))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed.set(true))
    }
}
