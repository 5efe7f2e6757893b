//! NAR (Nix ARchive) serialisation, streaming, byte-identical to
//! `nix-store --dump`: strings are u64-LE length + bytes padded to 8;
//! directory entries sorted by name bytes; only the executable bit of a
//! regular file's mode is kept.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Size of the output buffer and of the file read buffer.
pub const BUFFER_SIZE: usize = 256 * 1024;

/// The magic string every NAR starts with.
pub const NAR_MAGIC: &str = "nix-archive-1";

/// Writes the NAR of `path` (file, executable, symlink or directory tree) to
/// `out`, streaming file contents in bounded chunks (never a whole file in
/// memory). Returns the number of NAR bytes written. Errors name the file.
///
/// `out` may be unbuffered: writes go through an internal 256 KiB buffer,
/// flushed before returning. A regular file is executable in the NAR when
/// its owner-execute bit is set (Nix checks `S_IXUSR` only). A file whose
/// size changes while it is read is an error.
pub fn dump_path<W: Write>(path: &Path, out: &mut W) -> io::Result<u64> {
    let mut nar = NarWriter {
        out: BufWriter::with_capacity(BUFFER_SIZE, out),
        written: 0,
        buf: Vec::new(),
    };
    let mut cur = path.to_path_buf();
    let result = nar.str(NAR_MAGIC.as_bytes()).and_then(|()| nar.node(&mut cur));
    match result {
        Ok(()) => {
            nar.out.flush()?;
            Ok(nar.written)
        }
        Err(e) => {
            // Drop what is buffered rather than flushing a truncated NAR.
            let _ = nar.out.into_parts();
            Err(e)
        }
    }
}

struct NarWriter<'a, W: Write> {
    out: BufWriter<&'a mut W>,
    written: u64,
    /// File read buffer, allocated on the first non-empty file.
    buf: Vec<u8>,
}

const ZEROS: [u8; 8] = [0; 8];

fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Adds the file name to an I/O error, keeping its kind.
fn at(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} '{}': {e}", path.display()))
}

impl<W: Write> NarWriter<'_, W> {
    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn int(&mut self, n: u64) -> io::Result<()> {
        self.raw(&n.to_le_bytes())
    }

    fn str(&mut self, s: &[u8]) -> io::Result<()> {
        self.int(s.len() as u64)?;
        self.raw(s)?;
        self.raw(&ZEROS[..padding(s.len() as u64)])
    }

    fn strs(&mut self, ss: &[&str]) -> io::Result<()> {
        ss.iter().try_for_each(|s| self.str(s.as_bytes()))
    }

    /// `( type ... )` for the file at `path`; `path` is restored on return.
    fn node(&mut self, path: &mut PathBuf) -> io::Result<()> {
        let meta = fs::symlink_metadata(&*path).map_err(|e| at(path, "getting status of", e))?;
        let ft = meta.file_type();
        self.strs(&["(", "type"])?;
        if ft.is_file() {
            self.str(b"regular")?;
            if meta.permissions().mode() & 0o100 != 0 {
                self.strs(&["executable", ""])?;
            }
            self.str(b"contents")?;
            self.contents(path, meta.len())?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&*path).map_err(|e| at(path, "reading symlink", e))?;
            self.strs(&["symlink", "target"])?;
            self.str(target.as_os_str().as_bytes())?;
        } else if ft.is_dir() {
            self.str(b"directory")?;
            let mut names = fs::read_dir(&*path)
                .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
                .map_err(|e| at(path, "reading directory", e))
                .map(|v: Vec<OsString>| v)?;
            names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                self.strs(&["entry", "(", "name"])?;
                self.str(name.as_bytes())?;
                self.str(b"node")?;
                path.push(&name);
                let r = self.node(path);
                path.pop();
                r?;
                self.str(b")")?;
            }
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file '{}' has an unsupported type", path.display()),
            ));
        }
        self.str(b")")
    }

    /// Length, exactly `len` bytes of the file, padding.
    fn contents(&mut self, path: &Path, len: u64) -> io::Result<()> {
        self.int(len)?;
        // O_NOFOLLOW: never archive what a symlink swapped in since lstat points to.
        let mut file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| at(path, "opening", e))?;
        if self.buf.len() < BUFFER_SIZE {
            self.buf.resize(BUFFER_SIZE, 0);
        }
        let mut left = len;
        loop {
            // Ask for one byte more than expected so a grown file is noticed
            // without an extra read in the common case of a short final read.
            let want = (left + 1).min(BUFFER_SIZE as u64) as usize;
            let n = match file.read(&mut self.buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(at(path, "reading", e)),
            };
            if n == 0 {
                break;
            }
            if n as u64 > left {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("file '{}' grew while it was archived", path.display()),
                ));
            }
            left -= n as u64;
            // `write_all` on the BufWriter: a full chunk bypasses its buffer.
            self.out.write_all(&self.buf[..n])?;
            self.written += n as u64;
        }
        if left != 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file '{}' shrank while it was archived", path.display()),
            ));
        }
        self.raw(&ZEROS[..padding(len)])
    }
}
