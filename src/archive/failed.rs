//! Failed build trees: the build directories Nix kept (`keep-failed`)
//! packed as one tar + zstd stream, size-capped, for the archive backend
//! (key `failed-…`), and unpacked again by `nixdelta failed-tree fetch`.
//! Only the given directories go in; symlinks are stored as links, never
//! followed, so nothing outside the build directories is captured.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What a pack took and what it left out to stay under the cap.
#[derive(Clone, Debug, Default)]
pub struct Packed {
    pub files: usize,
    pub bytes: u64,
    /// Files left out (too big for what was left of the cap), with sizes.
    pub cut: Vec<(PathBuf, u64)>,
}

/// One tree to pack: a directory read here, or a tar stream of one (a
/// daemon's tree this process may not read, streamed by `sudo -n tar`).
pub enum Tree {
    Dir(PathBuf),
    Tar(Box<dyn Read>),
}

/// Packs `dirs` (each under its own name) into `out`, at most `cap` bytes
/// of file content; a `CUT.txt` at the top lists what was left out.
pub fn pack(dirs: &[PathBuf], cap: u64, out: &mut dyn Write) -> Result<Packed> {
    pack_trees(dirs.iter().cloned().map(Tree::Dir).collect(), cap, out)
}

/// [`pack`] of directories and tar streams.
pub fn pack_trees(trees: Vec<Tree>, cap: u64, out: &mut dyn Write) -> Result<Packed> {
    let io = |e: std::io::Error| Error::Other(anyhow::anyhow!("packing build trees: {e}"));
    let z = zstd::stream::write::Encoder::new(out, 3).map_err(io)?;
    let mut tar = tar::Builder::new(z);
    tar.follow_symlinks(false);
    let mut packed = Packed::default();
    for tree in trees {
        match tree {
            Tree::Dir(dir) => {
                let name = dir
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("tree"));
                add_tree(&mut tar, &dir, &name, cap, &mut packed).map_err(io)?;
            }
            Tree::Tar(stream) => add_stream(&mut tar, stream, cap, &mut packed).map_err(io)?,
        }
    }
    let cut: String = packed
        .cut
        .iter()
        .map(|(p, n)| format!("{n}\t{}\n", p.display()))
        .collect();
    let mut h = tar::Header::new_gnu();
    h.set_size(cut.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "CUT.txt", cut.as_bytes())
        .map_err(io)?;
    let z = tar.into_inner().map_err(io)?;
    z.finish().map_err(io)?;
    Ok(packed)
}

/// Adds `dir` as `name`, depth first, without following links.
fn add_tree(
    tar: &mut tar::Builder<impl Write>,
    dir: &Path,
    name: &Path,
    cap: u64,
    packed: &mut Packed,
) -> std::io::Result<()> {
    tar.append_dir(name, dir)?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let inner = name.join(e.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            add_tree(tar, &path, &inner, cap, packed)?;
        } else if meta.file_type().is_symlink() || !meta.is_file() {
            // A link is stored as a link: its target is not read.
            if meta.file_type().is_symlink() {
                tar.append_path_with_name(&path, &inner)?;
            }
        } else if packed.bytes + meta.len() > cap {
            packed.cut.push((inner, meta.len()));
        } else {
            tar.append_path_with_name(&path, &inner)?;
            packed.files += 1;
            packed.bytes += meta.len();
        }
    }
    Ok(())
}

/// Adds the entries of a tar stream under the same cap: directories,
/// files and symlinks (stored as links) with relative paths only; other
/// kinds (devices, hard links) are dropped.
fn add_stream(
    tar: &mut tar::Builder<impl Write>,
    stream: Box<dyn Read>,
    cap: u64,
    packed: &mut Packed,
) -> std::io::Result<()> {
    let mut src = tar::Archive::new(stream);
    for e in src.entries()? {
        let mut e = e?;
        let path = e.path()?.into_owned();
        let safe = path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !safe {
            continue;
        }
        let mut h = e.header().clone();
        match h.entry_type() {
            tar::EntryType::Directory => tar.append_data(&mut h, &path, std::io::empty())?,
            tar::EntryType::Symlink => {
                if let Some(target) = e.link_name()?.map(|t| t.into_owned()) {
                    tar.append_link(&mut h, &path, target)?;
                }
            }
            tar::EntryType::Regular => {
                let size = h.size()?;
                if packed.bytes + size > cap {
                    packed.cut.push((path, size));
                } else {
                    tar.append_data(&mut h, &path, &mut e)?;
                    packed.files += 1;
                    packed.bytes += size;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Unpacks a pack into `dest` (created); entries cannot escape it.
pub fn unpack(src: impl Read, dest: &Path) -> Result<()> {
    let io = |e: std::io::Error| {
        Error::Other(anyhow::anyhow!(
            "unpacking build trees into {}: {e}",
            dest.display()
        ))
    };
    std::fs::create_dir_all(dest).map_err(io)?;
    let z = zstd::stream::read::Decoder::new(src).map_err(io)?;
    let mut tar = tar::Archive::new(z);
    tar.set_preserve_permissions(true);
    // tar::Archive::unpack refuses `..` and absolute entry paths.
    tar.unpack(dest).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_under_the_cap_and_keeps_links_as_links() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("nix-build-x.drv-0");
        std::fs::create_dir_all(tree.join("src")).unwrap();
        std::fs::write(tree.join("src/a.c"), "int main;").unwrap();
        std::fs::write(tree.join("big.log"), vec![b'x'; 4096]).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", tree.join("host")).unwrap();
        let mut buf = Vec::new();
        let p = pack(std::slice::from_ref(&tree), 1000, &mut buf).unwrap();
        assert_eq!(p.files, 1);
        assert_eq!(p.cut.len(), 1);
        let out = d.path().join("out");
        unpack(&buf[..], &out).unwrap();
        let t = out.join("nix-build-x.drv-0");
        assert_eq!(
            std::fs::read_to_string(t.join("src/a.c")).unwrap(),
            "int main;"
        );
        assert!(!t.join("big.log").exists());
        assert_eq!(
            std::fs::read_link(t.join("host")).unwrap(),
            Path::new("/etc/hostname")
        );
        let cut = std::fs::read_to_string(out.join("CUT.txt")).unwrap();
        assert!(cut.contains("4096\tnix-build-x.drv-0/big.log"), "{cut}");

        // The same tree as a tar stream (what `sudo -n tar` gives): the same
        // pack, cap and links; an entry escaping its tree is dropped.
        let mut stream = tar::Builder::new(Vec::new());
        stream.follow_symlinks(false);
        stream.append_dir_all("nix-build-x.drv-0", &tree).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_cksum();
        stream.append_data(&mut h, "ok.txt", &b"abc"[..]).unwrap();
        let mut raw = stream.into_inner().unwrap();
        // Not writable through the builder, which refuses `..`.
        let mut evil = tar::Header::new_gnu();
        evil.as_old_mut().name[..9].copy_from_slice(b"../escape");
        evil.set_size(0);
        evil.set_cksum();
        let end = raw.len() - 1024;
        raw.splice(end..end, evil.as_bytes().iter().copied());
        let mut buf = Vec::new();
        let p = pack_trees(
            vec![Tree::Tar(Box::new(std::io::Cursor::new(raw)))],
            1000,
            &mut buf,
        )
        .unwrap();
        assert_eq!((p.files, p.cut.len()), (2, 1), "{p:?}");
        let out = d.path().join("out2");
        unpack(&buf[..], &out).unwrap();
        let t = out.join("nix-build-x.drv-0");
        assert_eq!(
            std::fs::read_to_string(t.join("src/a.c")).unwrap(),
            "int main;"
        );
        assert!(!t.join("big.log").exists());
        assert_eq!(
            std::fs::read_link(t.join("host")).unwrap(),
            Path::new("/etc/hostname")
        );
        assert!(out.join("ok.txt").exists() && !d.path().join("escape").exists());
    }
}
