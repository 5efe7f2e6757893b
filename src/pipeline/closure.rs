//! Closure mode: instead of (or on top of) the store diff, push the
//! build-time closure of the job's roots that is present in the store —
//! `nix-store -qR --include-outputs <derivations>`. On a warm runner the
//! diff misses a build-time dependency built by an earlier job; the
//! closure does not.

use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::nix::StorePath;
use crate::store::{PathInfo, Store};

/// Where the roots come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The store diff only (the default).
    #[default]
    Diff,
    /// The build closures of these (store paths, `.drv`s, `result` links,
    /// installables): what `--closure-of` / `paths-to-push` name.
    Of(Vec<String>),
    /// The diff, plus the build closures of its paths' derivers.
    Auto,
}

/// The candidates closure mode found, and how.
#[derive(Debug, Default)]
pub struct Closure {
    pub paths: Vec<PathInfo>,
    /// Derivations (or, for an output whose `.drv` is gone, the output).
    pub roots: usize,
    /// Roots that are outputs without a valid `.drv`: only their runtime
    /// closure is known.
    pub without_drv: usize,
    /// Candidates valid before the job started (not in the diff).
    pub predating: usize,
}

/// The root an argument stands for: the `.drv` of a store path or link
/// (when the store still has it), a `.drv` as itself, or the derivation
/// an installable evaluates to.
pub fn root_of(store: &Store, arg: &str) -> Result<(StorePath, bool)> {
    let looks_like_path = (arg.starts_with('/') || arg.starts_with('.')) && !arg.contains('#')
        || Path::new(arg).symlink_metadata().is_ok();
    let path = if looks_like_path {
        store.parse_path_arg(arg)?
    } else if arg.contains('#') || arg.contains(':') {
        store.derivation_of(arg)?
    } else {
        return Err(Error::Usage(format!(
            "--closure-of {arg}: not a store path, a `result` link or a flake installable \
             (`.#pkg`)"
        )));
    };
    if path.is_derivation() {
        return Ok((path, true));
    }
    let info = store.path_info(&path)?.ok_or_else(|| {
        Error::Path(format!(
            "--closure-of {arg}: {} is not valid in the store",
            path.to_absolute(store.store_dir())
        ))
    })?;
    Ok(match valid_deriver(store, &info)? {
        Some(drv) => (drv, true),
        None => (path, false),
    })
}

/// `info`'s deriver, when the store has it.
fn valid_deriver(store: &Store, info: &PathInfo) -> Result<Option<StorePath>> {
    let Some(drv) = &info.deriver else {
        return Ok(None);
    };
    Ok(store.path_info(drv)?.map(|_| drv.clone()))
}

/// The derivers (present in the store) of the diff's paths: `auto`'s roots.
pub fn derivers(store: &Store, new: &[PathInfo]) -> Result<Vec<StorePath>> {
    let mut seen = HashSet::new();
    let wanted: Vec<StorePath> = new
        .iter()
        .filter_map(|i| i.deriver.clone())
        .filter(|d| seen.insert(d.clone()))
        .collect();
    Ok(wanted
        .iter()
        .zip(store.path_infos(&wanted)?)
        .filter_map(|(d, info)| info.map(|_| d.clone()))
        .collect())
}

/// The candidates of `mode`: the diff `new` as it is, the closures of the
/// named roots, or both (auto).
pub fn candidates(store: &Store, mode: &Mode, new: &[PathInfo]) -> Result<Closure> {
    let (roots, without_drv) = match mode {
        Mode::Diff => {
            return Ok(Closure {
                paths: new.to_vec(),
                ..Closure::default()
            })
        }
        Mode::Of(args) => {
            let mut roots = Vec::new();
            let mut without = 0;
            for a in args {
                let (root, has_drv) = root_of(store, a)?;
                without += usize::from(!has_drv);
                roots.push(root);
            }
            (roots, without)
        }
        Mode::Auto => (derivers(store, new)?, 0),
    };
    let mut paths = store.build_closure(&roots)?;
    let in_diff: HashSet<&StorePath> = new.iter().map(|i| &i.path).collect();
    let predating = paths.iter().filter(|i| !in_diff.contains(&i.path)).count();
    if *mode == Mode::Auto {
        let have: HashSet<StorePath> = paths.iter().map(|i| i.path.clone()).collect();
        paths.extend(new.iter().filter(|i| !have.contains(&i.path)).cloned());
    }
    Ok(Closure {
        paths,
        roots: roots.len(),
        without_drv,
        predating,
    })
}

/// On a diff-mode push: the build-time dependencies of the new paths that
/// predate the job and are not `known` to be cached (a warm runner's
/// store). They are what `closure: auto` would add.
pub fn warm_store_misses(
    store: &Store,
    new: &[PathInfo],
    known: &dyn Fn(&PathInfo) -> bool,
) -> Result<usize> {
    let roots = derivers(store, new)?;
    if roots.is_empty() {
        return Ok(0);
    }
    let in_diff: HashSet<&StorePath> = new.iter().map(|i| &i.path).collect();
    Ok(store
        .build_closure(&roots)?
        .iter()
        .filter(|i| !i.path.is_derivation() && !in_diff.contains(&i.path) && !known(i))
        .count())
}
