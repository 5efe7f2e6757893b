//! Compressed NARs kept on local disk while a job pushes, so that the
//! archive save that follows in the same job splices them in instead of
//! compressing the same bytes a second time (a cold job used to compress
//! its whole workload twice: once for the binary cache, once for the
//! archive).
//!
//! A frame is the zstd frame the push wrote for one path, byte for byte as
//! the cache got it. It is kept only after the push checked its NAR
//! against the store DB (hash and size), under a name made of that NAR
//! hash and size, so the archive takes it only for the same contents. The
//! archive reader checks every NAR again on restore. Keeping frames is best
//! effort: a write error or a nearly full disk only means the archive
//! compresses that path itself.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::nix::Sha256Hash;

/// No new frame is kept when the directory's file system has less free.
const MIN_FREE: u64 = 2 << 30;

/// A directory of kept frames, private to the job (mode 0700).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frames {
    dir: PathBuf,
}

impl Frames {
    /// Opens (creating) `dir`.
    pub fn open(dir: &Path) -> io::Result<Frames> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(Frames {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn name(&self, nar_hash: &Sha256Hash, nar_size: u64) -> PathBuf {
        self.dir
            .join(format!("{}-{nar_size}.zst", nar_hash.to_nix32()))
    }

    /// A writer for the frame of a NAR with this hash and size, or `None`
    /// when it is kept already or the disk is nearly full.
    pub fn writer(&self, nar_hash: &Sha256Hash, nar_size: u64) -> Option<FrameWriter> {
        let path = self.name(nar_hash, nar_size);
        if path.exists() || free_bytes(&self.dir).is_some_and(|f| f < MIN_FREE + nar_size) {
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix(".frame-")
            .tempfile_in(&self.dir)
            .ok()?;
        Some(FrameWriter {
            tmp: Some(tmp),
            path,
        })
    }

    /// The kept frame of this NAR, if any.
    pub fn get(&self, nar_hash: &Sha256Hash, nar_size: u64) -> Option<File> {
        File::open(self.name(nar_hash, nar_size)).ok()
    }

    /// Deletes the directory and every frame in it.
    pub fn remove(&self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("could not remove {}: {e}", self.dir.display());
            }
        }
    }
}

/// Free bytes for an unprivileged user on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is written by the call
    // before it is read.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The bytes of one frame as they are written; kept by [`FrameWriter::keep`]
/// only, so a push that fails half-way leaves nothing behind. Write errors
/// are swallowed (and drop the frame): keeping frames never fails a push.
pub struct FrameWriter {
    tmp: Option<tempfile::NamedTempFile>,
    path: PathBuf,
}

impl FrameWriter {
    /// Keeps the frame (after its NAR was checked).
    pub fn keep(mut self) {
        if let Some(tmp) = self.tmp.take() {
            if let Err(e) = tmp.persist(&self.path) {
                tracing::debug!("frame {} not kept: {e}", self.path.display());
            }
        }
    }
}

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(tmp) = self.tmp.as_mut() {
            if tmp.write_all(buf).is_err() {
                self.tmp = None;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(b: u8) -> Sha256Hash {
        Sha256Hash([b; 32])
    }

    #[test]
    fn a_frame_is_found_only_once_kept_and_only_for_its_nar() {
        let d = tempfile::tempdir().unwrap();
        let frames = Frames::open(&d.path().join("frames")).unwrap();
        let mut w = frames.writer(&hash(1), 10).unwrap();
        w.write_all(b"frame bytes").unwrap();
        assert!(frames.get(&hash(1), 10).is_none(), "not kept yet");
        w.keep();
        let got = fs::read(frames.name(&hash(1), 10)).unwrap();
        assert_eq!(got, b"frame bytes");
        assert!(frames.get(&hash(1), 11).is_none(), "another size");
        assert!(frames.get(&hash(2), 10).is_none(), "another hash");
        assert!(frames.writer(&hash(1), 10).is_none(), "kept already");
    }

    #[test]
    fn a_dropped_writer_leaves_nothing_and_remove_deletes_the_dir() {
        let d = tempfile::tempdir().unwrap();
        let frames = Frames::open(&d.path().join("frames")).unwrap();
        let mut w = frames.writer(&hash(3), 5).unwrap();
        w.write_all(b"half").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(frames.dir()).unwrap().count(), 0);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(frames.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        frames.remove();
        assert!(!frames.dir().exists());
    }
}
