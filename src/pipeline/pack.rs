//! One store path → NAR → sha256 → zstd → sha256 → cache, in one streaming
//! pass with bounded memory.

use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::cache::frames::{FrameWriter, Frames};
use crate::cache::{BinaryCache, NarUpload};
use crate::error::{Error, Result};
use crate::nix::{nar, Sha256Hash};
use crate::store::PathInfo;

/// Paths at least this large are compressed by several zstd threads, so one
/// big path at the end of a push does not leave the other cores idle.
const MULTITHREAD_FROM: u64 = 32 << 20;

/// Input per zstd job when multithreaded. zstd's default (4 windows: 8 MiB
/// at level 3) makes a 2-thread encoder buffer ~50 MiB; 2 MiB jobs buffer
/// ~12 MiB and cost ~0.2 % of compressed size (measured on a 200 MB path).
const MULTITHREAD_JOB_SIZE: u32 = 2 << 20;

#[derive(Clone, Copy, Debug)]
pub struct PackOptions {
    pub level: i32,
    /// zstd threads for a path of at least [`MULTITHREAD_FROM`] bytes.
    pub threads: u32,
}

impl PackOptions {
    /// The options for one path of `size` NAR bytes, taken by one of `jobs`
    /// workers while `queued` bytes wait for the others. zstd gets several
    /// threads only when this path would outlast the others' work (a big
    /// path at the end, or a single worker): elsewhere every core already
    /// compresses its own path, and more threads only add buffers (RSS) and
    /// switching.
    pub fn for_path(self, size: u64, queued: u64, jobs: usize) -> PackOptions {
        let others = jobs.saturating_sub(1) as u64;
        let outlasts_others = others == 0 || size.saturating_mul(others) > queued;
        PackOptions {
            threads: if outlasts_others { self.threads } else { 1 },
            ..self
        }
    }
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
    /// Counts its bytes as the step's progress (the NAR side).
    progress: bool,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
            progress: false,
        }
    }

    /// The same, counting its bytes as the current step's progress.
    pub fn with_progress(inner: W) -> Self {
        HashWriter {
            progress: true,
            ..HashWriter::new(inner)
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
        if self.progress {
            crate::progress::add(0, n as u64);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs `info` (whose files are at `real_path`) into `cache`. The NAR's
/// hash and size must equal the store DB's, else nothing is committed.
/// With `frames`, the compressed bytes are also kept there once checked,
/// for the job's archive save.
pub fn pack(
    info: &PathInfo,
    real_path: &Path,
    cache: &dyn BinaryCache,
    store_dir: &str,
    opts: PackOptions,
    frames: Option<&Frames>,
) -> Result<Packed> {
    let name = info.path.to_absolute(store_dir);
    let io_err = |e: io::Error| Error::Other(anyhow::anyhow!("{name}: {e}"));
    let cache_failed = std::rc::Rc::new(std::cell::Cell::new(false));
    let upload = Tracked {
        inner: cache.begin_nar()?,
        failed: cache_failed.clone(),
        frame: frames.and_then(|f| f.writer(&info.nar_hash, info.nar_size)),
    };
    let file_hasher = HashWriter::new(upload);
    let mut zstd = zstd::stream::write::Encoder::new(file_hasher, opts.level).map_err(io_err)?;
    if opts.threads > 1 && info.nar_size >= MULTITHREAD_FROM {
        zstd.multithread(opts.threads).map_err(io_err)?;
        zstd.set_parameter(zstd::zstd_safe::CParameter::JobSize(MULTITHREAD_JOB_SIZE))
            .map_err(io_err)?;
    }
    let mut nar_hasher = HashWriter::with_progress(zstd);
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
    if let Some(frame) = upload.frame {
        frame.keep();
    }
    Ok(Packed {
        url,
        file_hash,
        file_size,
    })
}

/// Remembers whether an error came from the cache side of the stream, so it
/// is reported as a cache fault rather than as a store read error; copies
/// what the cache took into the kept frame, if any.
struct Tracked {
    inner: Box<dyn NarUpload>,
    failed: std::rc::Rc<std::cell::Cell<bool>>,
    frame: Option<FrameWriter>,
}

impl Write for Tracked {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self
            .inner
            .write(buf)
            .inspect_err(|_| self.failed.set(true))?;
        if let Some(frame) = self.frame.as_mut() {
            frame.write_all(&buf[..n])?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed.set(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_threads_only_for_a_path_that_outlasts_the_others() {
        let opts = PackOptions {
            level: 3,
            threads: 4,
        };
        let mib = 1 << 20;
        // Plenty of work left for the other workers: one thread each.
        assert_eq!(opts.for_path(200 * mib, 1000 * mib, 2).threads, 1);
        assert_eq!(opts.for_path(200 * mib, 500 * mib, 3).threads, 1);
        // The others run dry before this path is done: all threads.
        assert_eq!(opts.for_path(200 * mib, 100 * mib, 2).threads, 4);
        assert_eq!(opts.for_path(200 * mib, 0, 4).threads, 4);
        // A single worker always may use every thread.
        assert_eq!(opts.for_path(200 * mib, 1000 * mib, 1).threads, 4);
        assert_eq!(opts.for_path(u64::MAX, 1 << 40, 8).threads, 4);
    }
}
