//! Finds the repository's own source among new store paths: a flake's
//! `self`, or a `./.` / `builtins.path` of the working directory. It is not
//! uploaded unless asked: it may be private and every commit makes a new one.
//!
//! A candidate is a source-like path (no deriver, content-addressed) whose
//! files all exist with the same bytes under the source directory, at the
//! same relative place. Flakes copy only git-tracked files, filters drop
//! some more: a subset of the tree is still a match. A single file matches
//! a file of the same name and bytes at the top of the source directory.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::Path;

use crate::nix::StorePath;
use crate::store::{PathInfo, Store};

/// Files compared per candidate at most; a source with more is judged on them.
const MAX_FILES: usize = 20_000;

pub fn find(store: &Store, candidates: &[PathInfo], source_dir: &Path) -> HashSet<StorePath> {
    candidates
        .iter()
        .filter(|i| i.deriver.is_none() && i.ca.is_some() && !i.path.is_derivation())
        .filter(|i| mirrors(&store.real_path(&i.path), source_dir, i.path.name()))
        .map(|i| i.path.clone())
        .collect()
}

fn mirrors(stored: &Path, source_dir: &Path, name: &str) -> bool {
    let Ok(meta) = fs::symlink_metadata(stored) else {
        return false;
    };
    if meta.is_file() {
        return same_file(stored, &source_dir.join(name));
    }
    let mut budget = MAX_FILES;
    let mut files = 0;
    meta.is_dir() && tree_within(stored, source_dir, &mut budget, &mut files) && files > 0
}

/// Every file under `stored` exists, equal, at the same place under `source`.
fn tree_within(stored: &Path, source: &Path, budget: &mut usize, files: &mut usize) -> bool {
    let Ok(entries) = fs::read_dir(stored) else {
        return false;
    };
    for entry in entries.flatten() {
        if *budget == 0 {
            return true;
        }
        let (s, o) = (entry.path(), source.join(entry.file_name()));
        let Ok(ft) = entry.file_type() else {
            return false;
        };
        let ok = if ft.is_dir() {
            tree_within(&s, &o, budget, files)
        } else if ft.is_symlink() {
            fs::read_link(&s).ok() == fs::read_link(&o).ok()
        } else {
            *budget -= 1;
            *files += 1;
            same_file(&s, &o)
        };
        if !ok {
            return false;
        }
    }
    true
}

fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (fs::metadata(a), fs::metadata(b)) else {
        return false;
    };
    if !ma.is_file() || !mb.is_file() || ma.len() != mb.len() {
        return false;
    }
    let (Ok(mut fa), Ok(mut fb)) = (fs::File::open(a), fs::File::open(b)) else {
        return false;
    };
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = match fa.read(&mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return true;
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}
