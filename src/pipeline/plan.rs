//! The push plan: from candidate paths (a closure, or a store diff) to the
//! set to upload, with a count and a reason for everything left out — in
//! the spirit of attic's `PushPlan`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::filter::Filters;
use crate::cache::BinaryCache;
use crate::error::Result;
use crate::nix::{Signature, StorePath};
use crate::store::{PathInfo, Store};

/// Why a candidate is not uploaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Skip {
    /// A `.drv` file (kept only with `--include-drv`).
    Derivation,
    /// Matched an `--exclude` pattern.
    Excluded,
    /// The repository's own source copied into the store.
    SelfSource,
    /// Refers (maybe through other paths) to the repository's source, which
    /// is never pulled in unasked: held back so the cache stays consistent.
    NeedsSelfSource,
    /// Signed by an upstream key: the upstream cache has it.
    UpstreamSigned,
    /// The upstream cache serves its narinfo.
    Upstream,
    /// Its narinfo is already on the target.
    OnTarget,
}

impl Skip {
    pub fn describe(self) -> &'static str {
        match self {
            Skip::Derivation => "derivations (.drv)",
            Skip::Excluded => "excluded by pattern",
            Skip::SelfSource => "repository source",
            Skip::NeedsSelfSource => "refers to the repository source",
            Skip::UpstreamSigned => "signed by an upstream key",
            Skip::Upstream => "available upstream",
            Skip::OnTarget => "already on the target",
        }
    }
}

#[derive(Default)]
pub struct PlanOptions {
    pub filters: Filters,
    /// Key names whose signature means "upstream has it" (`cache.nixos.org-1`).
    pub upstream_keys: Vec<String>,
    /// Paths known to be on the target without asking it (the warm
    /// manifest a job signed), so a big closure costs few requests.
    pub known_on_target: HashSet<StorePath>,
}

/// What the plan needs of a store: its directory, and the info of a path
/// it pulls in. [`Store`] in a job; a map in the unit tests.
pub trait PathInfos {
    fn store_dir(&self) -> &str;
    fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>>;
}

impl PathInfos for Store {
    fn store_dir(&self) -> &str {
        Store::store_dir(self)
    }
    fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>> {
        Store::path_info(self, path)
    }
}

#[derive(Debug, Default)]
pub struct PushPlan {
    /// Candidates before filtering.
    pub considered: usize,
    pub skipped: BTreeMap<Skip, Vec<StorePath>>,
    /// Left out by a filter but referenced by an uploaded path that needs
    /// it: uploaded anyway so the cache stays consistent.
    pub pulled_in: Vec<StorePath>,
    /// What to upload, with the infos the narinfos need.
    pub upload: Vec<PathInfo>,
    /// Paths the uploads may reference without uploading them (on the
    /// target or upstream).
    pub present: HashSet<StorePath>,
    /// Existence checks asked of the caches, and how long they took.
    pub asked: usize,
    pub asked_secs: f64,
    /// Candidates found on the target through `known_on_target`.
    pub known: usize,
}

impl PushPlan {
    pub fn skipped_count(&self, why: Skip) -> usize {
        self.skipped.get(&why).map_or(0, Vec::len)
    }
    pub fn upload_nar_bytes(&self) -> u64 {
        self.upload.iter().map(|i| i.nar_size).sum()
    }
}

/// The first filter that drops `info`, before asking any cache.
fn local_filter(info: &PathInfo, opts: &PlanOptions, store_dir: &str) -> Option<Skip> {
    if let Some(why) = opts.filters.skip(&info.path, store_dir) {
        Some(why)
    } else if info
        .sigs
        .iter()
        .any(|s| opts.upstream_keys.iter().any(|k| Signature::is_by(s, k)))
    {
        Some(Skip::UpstreamSigned)
    } else {
        None
    }
}

/// Builds the plan: filters, then asks the target (and optionally an
/// upstream) which narinfos exist, then pulls in missing references.
pub fn plan(
    store: &dyn PathInfos,
    candidates: Vec<PathInfo>,
    opts: &PlanOptions,
    target: &dyn BinaryCache,
    upstream: Option<&dyn BinaryCache>,
) -> Result<PushPlan> {
    let mut plan = PushPlan {
        considered: candidates.len(),
        ..Default::default()
    };
    let mut kept = Vec::new();
    let mut dropped: HashMap<StorePath, PathInfo> = HashMap::new();
    for info in candidates {
        match local_filter(&info, opts, store.store_dir()) {
            Some(why) => {
                if why == Skip::UpstreamSigned {
                    plan.present.insert(info.path.clone());
                }
                plan.skipped.entry(why).or_default().push(info.path.clone());
                dropped.insert(info.path.clone(), info);
            }
            None if opts.known_on_target.contains(&info.path) => {
                plan.known += 1;
                plan.present.insert(info.path.clone());
                plan.skipped
                    .entry(Skip::OnTarget)
                    .or_default()
                    .push(info.path);
            }
            None => kept.push(info),
        }
    }
    let mut kept = remove_present(&mut plan, kept, target, Skip::OnTarget)?;
    if let Some(up) = upstream {
        kept = remove_present(&mut plan, kept, up, Skip::Upstream)?;
    }
    let self_sources = &opts.filters.self_sources;
    let kept = hold_back_self_source_users(&mut plan, kept, self_sources);
    dropped.retain(|p, _| !self_sources.contains(p));
    pull_in_references(&mut plan, kept, dropped, store, target, upstream)?;
    Ok(plan)
}

/// Drops the paths whose narinfo `cache` has, recording them as present.
fn remove_present(
    plan: &mut PushPlan,
    infos: Vec<PathInfo>,
    cache: &dyn BinaryCache,
    why: Skip,
) -> Result<Vec<PathInfo>> {
    let paths: Vec<StorePath> = infos.iter().map(|i| i.path.clone()).collect();
    let has = asked(plan, cache, &paths)?;
    let mut keep = Vec::new();
    for (info, has) in infos.into_iter().zip(has) {
        if has {
            plan.present.insert(info.path.clone());
            plan.skipped.entry(why).or_default().push(info.path);
        } else {
            keep.push(info);
        }
    }
    Ok(keep)
}

/// `cache.has_narinfos`, counted and timed for the summary.
fn asked(plan: &mut PushPlan, cache: &dyn BinaryCache, paths: &[StorePath]) -> Result<Vec<bool>> {
    let t = std::time::Instant::now();
    let has = cache.has_narinfos(paths)?;
    plan.asked += paths.len();
    plan.asked_secs += t.elapsed().as_secs_f64();
    Ok(has)
}

/// Drops the kept paths that refer, directly or through other kept paths,
/// to the repository's own source: pulling it in would upload the source,
/// which happens only when asked (`--include-self-source`).
fn hold_back_self_source_users(
    plan: &mut PushPlan,
    mut kept: Vec<PathInfo>,
    self_sources: &HashSet<StorePath>,
) -> Vec<PathInfo> {
    let mut withheld: HashSet<StorePath> = self_sources.clone();
    withheld.retain(|p| !plan.present.contains(p));
    loop {
        let (users, rest): (Vec<PathInfo>, Vec<PathInfo>) = kept.into_iter().partition(|i| {
            i.references
                .iter()
                .any(|r| *r != i.path && withheld.contains(r))
        });
        kept = rest;
        if users.is_empty() {
            return kept;
        }
        for info in users {
            withheld.insert(info.path.clone());
            plan.skipped
                .entry(Skip::NeedsSelfSource)
                .or_default()
                .push(info.path);
        }
    }
}

/// Adds every reference of an uploaded path that is neither uploaded nor
/// present, transitively, so no narinfo points at a missing path.
fn pull_in_references(
    plan: &mut PushPlan,
    kept: Vec<PathInfo>,
    mut dropped: HashMap<StorePath, PathInfo>,
    store: &dyn PathInfos,
    target: &dyn BinaryCache,
    upstream: Option<&dyn BinaryCache>,
) -> Result<()> {
    let mut upload: HashSet<StorePath> = kept.iter().map(|i| i.path.clone()).collect();
    let mut queue = kept;
    while let Some(info) = queue.pop() {
        let missing: Vec<StorePath> = info
            .references
            .iter()
            .filter(|r| **r != info.path && !upload.contains(*r) && !plan.present.contains(*r))
            .cloned()
            .collect();
        plan.upload.push(info);
        if missing.is_empty() {
            continue;
        }
        let on_target = asked(plan, target, &missing)?;
        let mut need = Vec::new();
        for (path, has) in missing.into_iter().zip(on_target) {
            if has {
                plan.present.insert(path);
            } else {
                need.push(path);
            }
        }
        if let (Some(up), false) = (upstream, need.is_empty()) {
            let has = asked(plan, up, &need)?;
            let mut still = Vec::new();
            for (path, has) in need.into_iter().zip(has) {
                if has {
                    plan.present.insert(path);
                } else {
                    still.push(path);
                }
            }
            need = still;
        }
        for path in need {
            // The repository's source is never pulled in: the path that
            // needs it is held back at upload (no narinfo), not the source pushed.
            if plan
                .skipped
                .get(&Skip::SelfSource)
                .is_some_and(|v| v.contains(&path))
            {
                continue;
            }
            let info = match dropped.remove(&path) {
                Some(info) => info,
                None => store.path_info(&path)?.ok_or_else(|| {
                    crate::error::Error::Path(format!(
                        "{}: referenced but not valid in the store",
                        path.to_absolute(store.store_dir())
                    ))
                })?,
            };
            upload.insert(path.clone());
            plan.pulled_in.push(path);
            queue.push(info);
        }
    }
    // A pulled-in path is uploaded, so it no longer counts as skipped.
    let pulled: HashSet<&StorePath> = plan.pulled_in.iter().collect();
    for paths in plan.skipped.values_mut() {
        paths.retain(|p| !pulled.contains(p));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{narinfo_name, FileCache};
    use crate::nix::{SecretKey, Sha256Hash};
    use crate::pipeline::filter::compile_excludes;

    /// A store in memory: the plan asks it only for path infos.
    struct Memory(HashMap<StorePath, PathInfo>);

    impl PathInfos for Memory {
        fn store_dir(&self) -> &str {
            "/nix/store"
        }
        fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>> {
            Ok(self.0.get(path).cloned())
        }
    }

    fn path(n: usize, name: &str) -> StorePath {
        StorePath::from_base_name(&format!("{n:0>32}-{name}")).unwrap()
    }

    fn info(p: &StorePath, refs: &[&StorePath]) -> PathInfo {
        PathInfo {
            path: p.clone(),
            id: 0,
            nar_hash: Sha256Hash::digest(p.to_string().as_bytes()),
            nar_size: 100,
            references: refs.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
            sigs: Vec::new(),
            ca: None,
        }
    }

    fn names(paths: &[StorePath]) -> Vec<String> {
        let mut v: Vec<String> = paths.iter().map(|p| p.name().to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn filters_target_upstream_and_pulled_in_references() {
        let dir = tempfile::tempdir().unwrap();
        let (app, lib, cached, drv, up, old) = (
            path(1, "app"),
            path(2, "lib-debug"),
            path(3, "cached"),
            path(4, "app.drv"),
            path(5, "glibc"),
            path(6, "old-dep"),
        );
        // The target has `cached`; `old-dep` predates the job (not a
        // candidate) and is only in the store.
        std::fs::write(dir.path().join(narinfo_name(&cached)), "x").unwrap();
        let target = FileCache::open_read_only("file:///t", dir.path());
        let mut upstream = info(&up, &[]);
        let sk = SecretKey::generate("cache.nixos.org-1").unwrap();
        upstream.sigs.push(sk.sign("fp").to_string());
        let candidates = vec![
            info(&app, &[&lib, &cached, &up, &old, &app]),
            info(&lib, &[]),
            info(&cached, &[]),
            info(&drv, &[]),
            upstream,
        ];
        let store = Memory([(old.clone(), info(&old, &[]))].into());
        let opts = PlanOptions {
            filters: Filters {
                excludes: compile_excludes(&["-debug$".into()]).unwrap(),
                ..Filters::default()
            },
            upstream_keys: vec!["cache.nixos.org-1".into()],
            ..PlanOptions::default()
        };
        let plan = plan(&store, candidates, &opts, &target, None).unwrap();
        assert_eq!(plan.considered, 5);
        let uploaded: Vec<StorePath> = plan.upload.iter().map(|i| i.path.clone()).collect();
        assert_eq!(names(&uploaded), ["app", "lib-debug", "old-dep"]);
        assert_eq!(names(&plan.pulled_in), ["lib-debug", "old-dep"]);
        assert_eq!(plan.skipped_count(Skip::Derivation), 1);
        assert_eq!(plan.skipped_count(Skip::OnTarget), 1);
        assert_eq!(plan.skipped_count(Skip::UpstreamSigned), 1);
        // Pulled in, so no longer counted as excluded.
        assert_eq!(plan.skipped_count(Skip::Excluded), 0);
        assert!(plan.present.contains(&cached) && plan.present.contains(&up));
    }

    #[test]
    fn the_repository_source_holds_back_its_users() {
        let dir = tempfile::tempdir().unwrap();
        let target = FileCache::open_read_only("file:///t", dir.path());
        let (src, user, indirect, other) = (
            path(1, "source"),
            path(2, "built-from-source"),
            path(3, "wraps-it"),
            path(4, "independent"),
        );
        let candidates = vec![
            info(&src, &[]),
            info(&user, &[&src]),
            info(&indirect, &[&user]),
            info(&other, &[]),
        ];
        let opts = PlanOptions {
            filters: Filters {
                self_sources: [src.clone()].into(),
                ..Filters::default()
            },
            ..PlanOptions::default()
        };
        let plan = plan(&Memory(HashMap::new()), candidates, &opts, &target, None).unwrap();
        let uploaded: Vec<StorePath> = plan.upload.iter().map(|i| i.path.clone()).collect();
        assert_eq!(names(&uploaded), ["independent"]);
        assert_eq!(plan.skipped_count(Skip::SelfSource), 1);
        assert_eq!(plan.skipped_count(Skip::NeedsSelfSource), 2);
    }

    #[test]
    fn paths_known_on_the_target_are_not_asked() {
        let dir = tempfile::tempdir().unwrap();
        let target = FileCache::open_read_only("file:///t", dir.path());
        let (a, b) = (path(1, "a"), path(2, "b"));
        let opts = PlanOptions {
            known_on_target: [a.clone()].into(),
            ..PlanOptions::default()
        };
        let candidates = vec![info(&a, &[]), info(&b, &[&a])];
        let plan = plan(&Memory(HashMap::new()), candidates, &opts, &target, None).unwrap();
        assert_eq!((plan.known, plan.asked), (1, 1));
        assert_eq!(plan.skipped_count(Skip::OnTarget), 1);
        let uploaded: Vec<StorePath> = plan.upload.iter().map(|i| i.path.clone()).collect();
        assert_eq!(names(&uploaded), ["b"]);
    }

    #[test]
    fn a_reference_the_store_lacks_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let target = FileCache::open_read_only("file:///t", dir.path());
        let (a, gone) = (path(1, "a"), path(2, "gone"));
        let e = plan(
            &Memory(HashMap::new()),
            vec![info(&a, &[&gone])],
            &PlanOptions::default(),
            &target,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("referenced but not valid"), "{e}");
    }
}
