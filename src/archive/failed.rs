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

/// Packs `dirs` (each under its own name) into `out`, at most `cap` bytes
/// of file content; a `CUT.txt` at the top lists what was left out.
pub fn pack(dirs: &[PathBuf], cap: u64, out: &mut dyn Write) -> Result<Packed> {
    let io = |e: std::io::Error| Error::Other(anyhow::anyhow!("packing build trees: {e}"));
    let z = zstd::stream::write::Encoder::new(out, 3).map_err(io)?;
    let mut tar = tar::Builder::new(z);
    tar.follow_symlinks(false);
    let mut packed = Packed::default();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("tree"));
        add_tree(&mut tar, dir, &name, cap, &mut packed).map_err(io)?;
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
    }
}
