//! The path filters a job applies to what it pushes and to what it saves
//! in an archive: derivations (unless asked), `--exclude` patterns and the
//! repository's own source. One type, so the push plan and the archive
//! can never disagree.

use std::collections::HashSet;

use regex::Regex;

use super::plan::Skip;
use crate::error::{Error, Result};
use crate::nix::StorePath;

#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// Keep `.drv` files.
    pub include_drv: bool,
    pub excludes: Vec<Regex>,
    /// Store paths holding the repository's own source.
    pub self_sources: HashSet<StorePath>,
}

impl Filters {
    /// The first filter that drops `path` (`store_dir` makes the full path
    /// the patterns match).
    pub fn skip(&self, path: &StorePath, store_dir: &str) -> Option<Skip> {
        if path.is_derivation() && !self.include_drv {
            Some(Skip::Derivation)
        } else if self
            .excludes
            .iter()
            .any(|re| re.is_match(&path.to_absolute(store_dir)))
        {
            Some(Skip::Excluded)
        } else if self.self_sources.contains(path) {
            Some(Skip::SelfSource)
        } else {
            None
        }
    }

    pub fn keeps(&self, path: &StorePath, store_dir: &str) -> bool {
        self.skip(path, store_dir).is_none()
    }
}

/// Compiles `--exclude` patterns; a bad one is a usage error on one line
/// (regex errors draw a caret diagram over several).
pub fn compile_excludes(patterns: &[String]) -> Result<Vec<Regex>> {
    patterns
        .iter()
        .map(|r| {
            Regex::new(r).map_err(|e| {
                let why = e.to_string();
                let why = why.lines().last().unwrap_or("").trim().to_string();
                Error::Usage(format!("--exclude {r:?}: not a regular expression: {why}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_in_order() {
        let p = |n: &str| StorePath::from_base_name(n).unwrap();
        let drv = p("7rjj86a15146cq1d3qy068lml7n8ykzm-hello.drv");
        let src = p("0ndn4a4c5yhbk0kdkmfy6z6dszq0pkpv-source");
        let out = p("7rjj86a15146cq1d3qy068lml7n8ykzm-hello-debug");
        let f = Filters {
            include_drv: false,
            excludes: compile_excludes(&["-debug$".into()]).unwrap(),
            self_sources: [src.clone()].into(),
        };
        assert_eq!(f.skip(&drv, "/nix/store"), Some(Skip::Derivation));
        assert_eq!(f.skip(&src, "/nix/store"), Some(Skip::SelfSource));
        assert_eq!(f.skip(&out, "/nix/store"), Some(Skip::Excluded));
        assert!(Filters::default().keeps(&out, "/nix/store"));
        let e = compile_excludes(&["(".into()]).unwrap_err().to_string();
        assert!(e.starts_with("--exclude \"(\": not a regular expression") && !e.contains('\n'));
    }
}
