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
    let result = nar
        .str(NAR_MAGIC.as_bytes())
        .and_then(|()| nar.node(&mut cur));
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
            let mut names: Vec<OsString> = fs::read_dir(&*path)
                .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
                .map_err(|e| at(path, "reading directory", e))?;
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
            // Ask for one byte more than expected: a grown file is noticed, and
            // a short read that completes the file ends the loop without the
            // extra read that would return 0 (as Nix, we then trust `len`).
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
            if left == 0 && n < want {
                break;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::{NarInfo, Sha256Hash, DEFAULT_STORE_DIR};
    use std::os::unix::fs::symlink;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/",
                $name
            ))
        };
    }

    fn write(path: &Path, data: &[u8], mode: u32) {
        fs::write(path, data).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Recreates the tree `make-fixtures.sh` dumps into `tree.nar`.
    fn make_tree(t: &Path) {
        fs::create_dir_all(t.join("dir/nested/deeper")).unwrap();
        fs::create_dir_all(t.join("empty-dir")).unwrap();
        write(&t.join("file"), b"hello\n", 0o644);
        write(&t.join("exe"), b"#!/bin/sh\necho hi\n", 0o755);
        write(&t.join("grp-exec"), b"group-x only\n", 0o654);
        write(&t.join("empty"), b"", 0o644);
        write(&t.join("eight"), b"12345678", 0o644);
        // created in non-sorted order on purpose
        for n in ["a.b", "B", "a-b", "a"] {
            write(&t.join("dir").join(n), format!("{n}\n").as_bytes(), 0o644);
        }
        write(&t.join("dir/nested/deeper/leaf"), b"deep", 0o644);
        write(&t.join("dir/caf\u{e9}"), "caf\u{e9}".as_bytes(), 0o644);
        write(&t.join("dir/z"), b"z", 0o644);
        symlink("file", t.join("link")).unwrap();
        symlink("../../file", t.join("dir/nested/up")).unwrap();
        symlink("/nonexistent/target", t.join("dangling")).unwrap();
    }

    fn dump(path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        let n = dump_path(path, &mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    #[test]
    fn tree_matches_nix_store_dump() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().join("tree");
        make_tree(&t);
        assert_eq!(dump(&t), fixture!("tree.nar"));
        assert_eq!(dump(&t.join("exe")), fixture!("exe.nar"));
        assert_eq!(dump(&t.join("link")), fixture!("link.nar"));
        assert_eq!(dump(&t.join("empty")), fixture!("empty.nar"));
    }

    #[test]
    fn store_path_nar_matches_narinfo() {
        // The `fx` output: a directory with one file naming the `lib` output.
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("4a8i4a6xwn7lpbdkdf483zgppnis8p9c-fx");
        fs::create_dir(&out).unwrap();
        let lib = "/nix/store/0cwcpb6n2i1738w00ns28xh88mzj0kqb-fx-lib\n";
        write(&out.join("ref"), lib.as_bytes(), 0o444);
        let nar = dump(&out);
        assert_eq!(nar, fixture!("fx-out.nar"));
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fx.narinfo"
        ));
        let info = NarInfo::parse(text, DEFAULT_STORE_DIR).unwrap();
        assert_eq!(Sha256Hash::digest(&nar), info.nar_hash);
        assert_eq!(nar.len() as u64, info.nar_size);
    }

    #[test]
    fn big_file_spanning_buffers() {
        let expected = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/big-seq.nar.sha256"
        ));
        let (hash, size) = expected.trim().split_once(' ').unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let big = tmp.path().join("big");
        let content: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
        assert!(content.len() > 2 * BUFFER_SIZE && content.len() % 8 != 0);
        write(&big, content.as_bytes(), 0o644);
        let nar = dump(&big);
        assert_eq!(nar.len().to_string(), size);
        assert_eq!(Sha256Hash::digest(&nar).to_hex(), hash);
    }

    /// Counts the write calls reaching an unbuffered writer.
    struct CountingWriter {
        calls: usize,
        bytes: u64,
    }
    impl Write for CountingWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            self.bytes += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn buffers_writes_to_unbuffered_sinks() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..500 {
            write(&tmp.path().join(format!("f{i}")), b"small", 0o644);
        }
        write(
            &tmp.path().join("big"),
            &vec![7u8; 3 * BUFFER_SIZE + 5],
            0o644,
        );
        let mut w = CountingWriter { calls: 0, bytes: 0 };
        let n = dump_path(tmp.path(), &mut w).unwrap();
        assert_eq!(n, w.bytes);
        assert!(w.calls <= 10, "{} write calls", w.calls);
    }

    #[test]
    fn sorts_raw_name_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let names: [&[u8]; 5] = [b"\xff", b"a", b"\xc3\xa9", b"Z", b"a\x01"];
        for n in names {
            let p = tmp.path().join(std::ffi::OsStr::from_bytes(n));
            write(&p, b"", 0o644);
        }
        let nar = dump(tmp.path());
        let pos = |n: &[u8]| {
            let mut s = (n.len() as u64).to_le_bytes().to_vec();
            s.extend_from_slice(n);
            s.extend_from_slice(&ZEROS[..padding(n.len() as u64)]);
            nar.windows(s.len()).position(|w| w == s).unwrap()
        };
        let order: Vec<usize> = [&b"Z"[..], b"a", b"a\x01", b"\xc3\xa9", b"\xff"]
            .iter()
            .map(|n| pos(n))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }

    #[test]
    fn errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("no-such-file");
        let e = dump_path(&missing, &mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");

        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let mut out = Vec::new();
        let e = dump_path(&dir, &mut out).unwrap_err();
        assert!(e.to_string().contains(&*fifo.to_string_lossy()), "{e}");
        assert!(out.is_empty(), "nothing flushed on error");
    }

    #[test]
    fn write_errors_pass_through() {
        struct Failing;
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "sink closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        write(&tmp.path().join("f"), &vec![1u8; 2 * BUFFER_SIZE], 0o644);
        let e = dump_path(tmp.path(), &mut Failing).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    /// `cargo test --release --lib nix::nar::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn throughput() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i * 31) as u8).collect();
        write(&tmp.path().join("big"), &data, 0o644);
        let small = tmp.path().join("small");
        fs::create_dir(&small).unwrap();
        for i in 0..20_000 {
            write(
                &small.join(format!("f{i}")),
                &data[..(i * 97) % 8192],
                0o644,
            );
        }
        for (what, p) in [
            ("one 64 MiB file", tmp.path().join("big")),
            ("20k small files", small),
        ] {
            let start = std::time::Instant::now();
            let mut sink = io::sink();
            let n = dump_path(&p, &mut sink).unwrap();
            let s = start.elapsed().as_secs_f64();
            println!(
                "{what}: {n} bytes in {s:.3}s = {:.0} MB/s",
                n as f64 / s / 1e6
            );
        }
    }
}
