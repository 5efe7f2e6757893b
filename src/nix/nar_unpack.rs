//! NAR unpacking, streaming: the inverse of [`super::nar::dump_path`], as
//! `nix-store --restore`, with Nix's checks (strictly sorted entry names, no
//! `.`/`..`/`/` in names, zero padding) and optionally Nix's canonical
//! metadata (files 0444 or 0555, directories 0555, mtime 1), so a path
//! unpacked here is what Nix itself would have left in its store.

use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};

use super::nar::NAR_MAGIC;

/// Longest string token accepted outside file contents (names, symlink
/// targets): Nix's limits are the kernel's (255-byte names, 4 KiB paths).
const MAX_TOKEN: u64 = 4096;
/// Deepest directory nesting accepted.
const MAX_DEPTH: usize = 512;
/// Nix's canonical modification time for store files.
pub const CANONICAL_MTIME: i64 = 1;

#[derive(Clone, Copy, Debug, Default)]
pub struct UnpackOptions {
    /// Set Nix's canonical permissions and mtime (what Nix does before it
    /// registers a path). Otherwise files get 0644/0755 and the current time.
    pub canonicalise: bool,
}

/// What was unpacked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// NAR bytes consumed.
    pub nar_bytes: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad NAR: {}", msg.into()),
    )
}

fn at(path: &Path, what: &str, e: io::Error) -> io::Error {
    // A full disk stays recognisable (callers report where, not which file).
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return e;
    }
    io::Error::new(e.kind(), format!("{what} '{}': {e}", path.display()))
}

/// Unpacks one NAR read from `src` to `dest` (which must not exist; its
/// parent must), streaming file contents in bounded chunks. `src` should end
/// where the NAR ends (e.g. a `Take`): the internal read buffer may read
/// past the NAR otherwise; [`UnpackStats::nar_bytes`] counts the NAR alone. On error, what was
/// created under `dest` is left for the caller to remove.
pub fn unpack<R: Read>(src: R, dest: &Path, opts: UnpackOptions) -> io::Result<UnpackStats> {
    let mut p = Parser {
        src: BufReader::with_capacity(64 * 1024, src),
        opts,
        stats: UnpackStats::default(),
        consumed: 0,
        path: dest.to_path_buf(),
        depth: 0,
    };
    p.expect(NAR_MAGIC.as_bytes(), "magic")?;
    p.node()?;
    p.stats.nar_bytes = p.consumed;
    Ok(p.stats)
}

struct Parser<R: Read> {
    src: BufReader<R>,
    opts: UnpackOptions,
    stats: UnpackStats,
    consumed: u64,
    path: PathBuf,
    depth: usize,
}

fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

impl<R: Read> Parser<R> {
    fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.src.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                bad("truncated")
            } else {
                e
            }
        })?;
        self.consumed += buf.len() as u64;
        Ok(())
    }

    fn int(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let n = padding(len);
        let mut z = [0u8; 8];
        self.exact(&mut z[..n])?;
        if z[..n].iter().any(|&b| b != 0) {
            return Err(bad("non-zero padding"));
        }
        Ok(())
    }

    fn string(&mut self) -> io::Result<Vec<u8>> {
        let len = self.int()?;
        if len > MAX_TOKEN {
            return Err(bad(format!("string of {len} bytes")));
        }
        let mut s = vec![0u8; len as usize];
        self.exact(&mut s)?;
        self.pad(len)?;
        Ok(s)
    }

    fn expect(&mut self, want: &[u8], what: &str) -> io::Result<()> {
        let got = self.string()?;
        if got != want {
            return Err(bad(format!(
                "expected {what} {:?}, got {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&got)
            )));
        }
        Ok(())
    }

    fn node(&mut self) -> io::Result<()> {
        self.expect(b"(", "'('")?;
        self.expect(b"type", "'type'")?;
        let t = self.string()?;
        match &t[..] {
            b"regular" => self.regular()?,
            b"symlink" => {
                self.expect(b"target", "'target'")?;
                let target = self.string()?;
                if target.is_empty() || target.contains(&0) {
                    return Err(bad("invalid symlink target"));
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &self.path)
                    .map_err(|e| at(&self.path, "creating symlink", e))?;
                if self.opts.canonicalise {
                    set_mtime(&self.path, libc::AT_SYMLINK_NOFOLLOW)?;
                }
                self.stats.symlinks += 1;
            }
            // Entries up to and including the node's closing ')'.
            b"directory" => return self.directory(),
            other => {
                return Err(bad(format!(
                    "unknown file type {:?}",
                    String::from_utf8_lossy(other)
                )))
            }
        }
        self.expect(b")", "')'")
    }

    fn regular(&mut self) -> io::Result<()> {
        let mut tok = self.string()?;
        let mut executable = false;
        if tok == b"executable" {
            self.expect(b"", "''")?;
            executable = true;
            tok = self.string()?;
        }
        if tok != b"contents" {
            return Err(bad(format!(
                "expected 'contents', got {:?}",
                String::from_utf8_lossy(&tok)
            )));
        }
        let len = self.int()?;
        let mode = match (executable, self.opts.canonicalise) {
            (true, true) => 0o555,
            (false, true) => 0o444,
            (true, false) => 0o755,
            (false, false) => 0o644,
        };
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|e| at(&self.path, "creating", e))?;
        // Exactly `len` bytes, straight from the read buffer.
        let mut left = len;
        while left > 0 {
            let chunk = self.src.fill_buf()?;
            if chunk.is_empty() {
                return Err(bad("truncated file contents"));
            }
            let n = chunk.len().min(left.min(usize::MAX as u64) as usize);
            file.write_all(&chunk[..n])
                .map_err(|e| at(&self.path, "writing", e))?;
            self.src.consume(n);
            left -= n as u64;
        }
        self.consumed += len;
        self.pad(len)?;
        // The umask may have taken bits away: set the mode exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| at(&self.path, "setting permissions of", e))?;
        if self.opts.canonicalise {
            let times = [omit(), canonical_time()];
            if unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) } != 0 {
                return Err(at(
                    &self.path,
                    "setting mtime of",
                    io::Error::last_os_error(),
                ));
            }
        }
        self.stats.files += 1;
        Ok(())
    }

    fn directory(&mut self) -> io::Result<()> {
        if self.depth >= MAX_DEPTH {
            return Err(bad("directories nested too deep"));
        }
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&self.path)
            .map_err(|e| at(&self.path, "creating directory", e))?;
        self.stats.dirs += 1;
        let mut prev: Option<Vec<u8>> = None;
        loop {
            let tok = self.string()?;
            match &tok[..] {
                b")" => break,
                b"entry" => {}
                other => {
                    return Err(bad(format!(
                        "expected 'entry' or ')', got {:?}",
                        String::from_utf8_lossy(other)
                    )))
                }
            }
            self.expect(b"(", "'('")?;
            self.expect(b"name", "'name'")?;
            let name = self.string()?;
            if name.is_empty()
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || name.contains(&0)
            {
                return Err(bad(format!(
                    "invalid file name {:?}",
                    String::from_utf8_lossy(&name)
                )));
            }
            if prev.as_ref().is_some_and(|p| *p >= name) {
                return Err(bad(format!(
                    "directory entries not sorted at {:?}",
                    String::from_utf8_lossy(&name)
                )));
            }
            self.expect(b"node", "'node'")?;
            self.path.push(OsStr::from_bytes(&name));
            self.depth += 1;
            let r = self.node();
            self.depth -= 1;
            self.path.pop();
            r?;
            self.expect(b")", "')'")?;
            prev = Some(name);
        }
        // The loop consumed the node's closing ')'.
        // Fix the directory's own metadata after its children are written.
        let mode = if self.opts.canonicalise { 0o555 } else { 0o755 };
        fs::set_permissions(&self.path, fs::Permissions::from_mode(mode))
            .map_err(|e| at(&self.path, "setting permissions of", e))?;
        if self.opts.canonicalise {
            set_mtime(&self.path, 0)?;
        }
        Ok(())
    }
}

fn omit() -> libc::timespec {
    libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    }
}

fn canonical_time() -> libc::timespec {
    libc::timespec {
        tv_sec: CANONICAL_MTIME as libc::time_t,
        tv_nsec: 0,
    }
}

fn set_mtime(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let c =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| bad("file name with a NUL byte"))?;
    let times = [omit(), canonical_time()];
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) } != 0 {
        return Err(at(path, "setting mtime of", io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes a tree writable again and removes it (an unpacked path that failed
/// verification, or an invalid leftover in the store). Missing is fine.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        fn make_writable(p: &Path) -> io::Result<()> {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
            for e in fs::read_dir(p)? {
                let e = e?;
                if e.file_type()?.is_dir() {
                    make_writable(&e.path())?;
                }
            }
            Ok(())
        }
        make_writable(path)?;
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::nar::dump_path;
    use std::os::unix::fs::{symlink, MetadataExt as _};
    use std::process::Command;

    fn write(path: &Path, data: &[u8], mode: u32) {
        fs::write(path, data).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn make_tree(t: &Path) {
        fs::create_dir_all(t.join("dir/nested/deeper")).unwrap();
        fs::create_dir_all(t.join("empty-dir")).unwrap();
        write(&t.join("file"), b"hello\n", 0o644);
        write(&t.join("exe"), b"#!/bin/sh\necho hi\n", 0o755);
        write(&t.join("empty"), b"", 0o644);
        write(&t.join("eight"), b"12345678", 0o644);
        for n in ["a.b", "B", "a-b", "a"] {
            write(&t.join("dir").join(n), format!("{n}\n").as_bytes(), 0o644);
        }
        write(&t.join("dir/nested/deeper/leaf"), b"deep", 0o644);
        let big: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        write(&t.join("big"), &big, 0o644);
        symlink("file", t.join("link")).unwrap();
        symlink("/nonexistent/target", t.join("dir/dangling")).unwrap();
    }

    fn nix_store_dump(path: &Path) -> Option<Vec<u8>> {
        let out = Command::new("nix-store")
            .arg("--dump")
            .arg(path)
            .output()
            .ok()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(out.stdout)
    }

    fn dump(path: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        dump_path(path, &mut v).unwrap();
        v
    }

    /// Real `nix-store --dump` output unpacks to a tree that dumps back to
    /// the same bytes (with our writer and with Nix's).
    #[test]
    fn round_trip_with_nix_store_dump() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make_tree(&src);
        let nar = nix_store_dump(&src).unwrap_or_else(|| dump(&src));
        assert_eq!(nar, dump(&src), "our writer agrees with nix-store --dump");
        for canonicalise in [false, true] {
            let dest = tmp.path().join(format!("out-{canonicalise}"));
            let stats = unpack(&nar[..], &dest, UnpackOptions { canonicalise }).unwrap();
            assert_eq!(stats.nar_bytes, nar.len() as u64);
            assert_eq!(stats.symlinks, 2);
            assert_eq!(dump(&dest), nar);
            if let Some(n) = nix_store_dump(&dest) {
                assert_eq!(n, nar);
            }
            let exe = fs::metadata(dest.join("exe")).unwrap();
            let file = fs::metadata(dest.join("file")).unwrap();
            let dir = fs::metadata(dest.join("dir")).unwrap();
            let link = fs::symlink_metadata(dest.join("link")).unwrap();
            if canonicalise {
                assert_eq!(exe.mode() & 0o7777, 0o555);
                assert_eq!(file.mode() & 0o7777, 0o444);
                assert_eq!(dir.mode() & 0o7777, 0o555);
                for m in [&exe, &file, &dir, &link] {
                    assert_eq!(m.mtime(), 1);
                }
            } else {
                assert_eq!(exe.mode() & 0o7777, 0o755);
                assert_eq!(file.mode() & 0o7777, 0o644);
            }
            remove_tree(&dest).unwrap();
            assert!(!dest.exists());
        }
        // A single file and a single symlink as the top node.
        for top in ["exe", "link"] {
            let nar = nix_store_dump(&src.join(top)).unwrap_or_else(|| dump(&src.join(top)));
            let dest = tmp.path().join(format!("top-{top}"));
            unpack(&nar[..], &dest, UnpackOptions { canonicalise: true }).unwrap();
            assert_eq!(dump(&dest), nar);
        }
    }

    #[test]
    fn stops_at_the_nar_end() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make_tree(&src);
        let nar = dump(&src);
        let mut stream = nar.clone();
        stream.extend_from_slice(b"trailing bytes of the next NAR");
        let mut r = &stream[..];
        let stats = unpack(
            (&mut r).take(nar.len() as u64),
            &tmp.path().join("o"),
            Default::default(),
        )
        .unwrap();
        assert_eq!(stats.nar_bytes, nar.len() as u64);
        assert_eq!(r, b"trailing bytes of the next NAR");
    }

    fn str_tok(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s);
        v.resize(v.len() + padding(s.len() as u64), 0);
        v
    }

    fn nar_of(tokens: &[&[u8]]) -> Vec<u8> {
        tokens.iter().flat_map(|t| str_tok(t)).collect()
    }

    #[test]
    fn rejects_malformed_nars() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make_tree(&src);
        let good = dump(&src);
        let dir_with = |names: &[&[u8]]| {
            let mut t: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
            for n in names {
                t.extend_from_slice(&[
                    b"entry", b"(", b"name", n, b"node", b"(", b"type", b"symlink", b"target",
                    b"x", b")", b")",
                ]);
            }
            t.push(b")");
            nar_of(&t)
        };
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", good[..good.len() - 9].to_vec()),
            ("empty", vec![]),
            ("bad magic", nar_of(&[b"nix-archive-2"])),
            ("unsorted", dir_with(&[b"b", b"a"])),
            ("duplicate", dir_with(&[b"a", b"a"])),
            ("dot-dot", dir_with(&[b".."])),
            ("slash", dir_with(&[b"a/b"])),
            ("empty name", dir_with(&[b""])),
            (
                "bad type",
                nar_of(&[b"nix-archive-1", b"(", b"type", b"fifo", b")"]),
            ),
        ];
        let mut nonzero = nar_of(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"abc",
            b")",
        ]);
        // magic 24, '(' 16, type 16, symlink 16, target 16, len 8, "abc" 3: padding at 99
        nonzero[99] = 1;
        cases.push(("padding", nonzero));
        assert!(unpack(
            &dir_with(&[b"a", b"b"])[..],
            &tmp.path().join("ok"),
            Default::default()
        )
        .is_ok());
        for (i, (what, nar)) in cases.into_iter().enumerate() {
            let dest = tmp.path().join(format!("bad{i}"));
            let e = unpack(&nar[..], &dest, Default::default()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
            remove_tree(&dest).unwrap();
        }
    }

    #[test]
    fn refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        write(&f, b"x", 0o644);
        let nar = dump(&f);
        let e = unpack(&nar[..], &f, Default::default()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
    }
}
