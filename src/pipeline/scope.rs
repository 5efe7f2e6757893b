//! Job scoping on a shared store: which of the diff's paths are this
//! job's when other jobs realised paths in the same store meanwhile.
//!
//! Every job has a window of `ValidPaths` ids: from the highest id at its
//! start to the highest at its finish (open while it runs). Ids never
//! repeat, so a path whose id lies in no other job's window was realised
//! while only this job ran: it is this job's. A path in another job's
//! window is this job's only when the build closure of this job's roots
//! reaches it (its `--closure-of`, else the GC roots Nix registered in its
//! workspace since it started).
//!
//! The rule for what no root reaches (an IFD output, a file fetched during
//! evaluation only, a build run with `--no-out-link`): while another job's
//! window is open, nobody can tell whose it is, and pushing it might copy
//! another project's private source into this job's cache. It is held
//! back and counted as "realised by another job". Leaking is the worse
//! fault; the cost is that such a path waits for a job that does not
//! overlap (or names it with `--closure-of`).

use std::collections::HashSet;

use crate::nix::StorePath;
use crate::store::PathInfo;

/// A job's id window: ids in `(start, end]`; `end` is `None` while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: Option<i64>,
}

impl Window {
    pub fn contains(&self, id: i64) -> bool {
        id > self.start && self.end.is_none_or(|e| id <= e)
    }

    /// Whether two windows share an id.
    pub fn overlaps(&self, other: &Window) -> bool {
        let ends_after = |w: &Window, start: i64| w.end.is_none_or(|e| e > start);
        ends_after(self, other.start) && ends_after(other, self.start)
    }
}

/// The diff split into this job's paths and the held-back ones.
#[derive(Debug, Default)]
pub struct Split {
    pub mine: Vec<PathInfo>,
    /// In another job's window and in no closure of this job's roots.
    pub others: Vec<PathInfo>,
    /// How many of `mine` only the roots' closure claimed.
    pub by_roots: usize,
}

/// Splits `diff` by the rule above. `others` are the other jobs' windows
/// that overlap this one; `reach` is the build closure of this job's roots.
/// A path with no id (a diff taken without the DB) counts as being in
/// every window.
pub fn split(diff: &[PathInfo], others: &[Window], reach: &HashSet<StorePath>) -> Split {
    let mut out = Split::default();
    for info in diff {
        let foreign = others.iter().any(|w| info.id <= 0 || w.contains(info.id));
        if !foreign {
            out.mine.push(info.clone());
        } else if reach.contains(&info.path) {
            out.by_roots += 1;
            out.mine.push(info.clone());
        } else {
            out.others.push(info.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::Sha256Hash;

    fn info(n: &str, id: i64) -> PathInfo {
        PathInfo {
            path: StorePath::from_base_name(&format!("{}-{n}", "a".repeat(32))).unwrap(),
            id,
            nar_hash: Sha256Hash([0; 32]),
            nar_size: 1,
            references: vec![],
            deriver: None,
            sigs: vec![],
            ca: None,
        }
    }

    #[test]
    fn windows_overlap_when_they_share_an_id() {
        let w = |start, end| Window { start, end };
        assert!(w(10, Some(20)).overlaps(&w(15, None)));
        assert!(w(15, None).overlaps(&w(10, Some(20))));
        assert!(w(10, None).overlaps(&w(12, None)));
        // (10, 20] and (20, 30] share nothing.
        assert!(!w(10, Some(20)).overlaps(&w(20, Some(30))));
        assert!(!w(20, None).overlaps(&w(5, Some(20))));
        assert!(w(10, Some(20)).contains(20) && !w(10, Some(20)).contains(10));
    }

    #[test]
    fn foreign_window_paths_need_a_root() {
        let diff = vec![info("before", 11), info("built", 16), info("ifd", 17)];
        let others = vec![Window {
            start: 15,
            end: None,
        }];
        let reach: HashSet<StorePath> = [diff[1].path.clone()].into();
        let s = split(&diff, &others, &reach);
        let names = |v: &[PathInfo]| {
            v.iter()
                .map(|i| i.path.name().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&s.mine), ["before", "built"]);
        assert_eq!(names(&s.others), ["ifd"]);
        assert_eq!(s.by_roots, 1);
        // No other job: everything stays.
        assert_eq!(split(&diff, &[], &HashSet::new()).mine.len(), 3);
        // Without ids nothing is attributable but what the roots reach.
        let no_ids = vec![info("x", 0)];
        assert_eq!(split(&no_ids, &others, &HashSet::new()).others.len(), 1);
    }
}
