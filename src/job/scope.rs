//! Job scoping on a shared store (the rule is in
//! [`crate::pipeline::scope`]): `start` adds the job to the store's job
//! registry, `finish` closes its window, finds the jobs that overlapped it
//! and keeps only this job's paths for the push and the archive.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::nix::StorePath;
use crate::pipeline::closure::{self, Mode};
use crate::pipeline::scope::{self as rule, Window};
use crate::pipeline::snapshot::State;
use crate::store::{jobs, PathInfo, Store};

use super::config::JobConfig;
use super::observer::Observer;

/// Scoping's options.
#[derive(Clone, Debug)]
pub struct ScopeConfig {
    /// `--scope off` turns it off (a runner whose jobs may share paths).
    pub enabled: bool,
    /// The job's checkout: `--workspace`, else the CI's, else start's cwd.
    pub workspace: Option<PathBuf>,
    /// The registry (default: next to the store's Nix state).
    pub jobs_dir: Option<PathBuf>,
}

impl Default for ScopeConfig {
    fn default() -> Self {
        ScopeConfig {
            enabled: true,
            workspace: None,
            jobs_dir: None,
        }
    }
}

/// What `start` recorded of the job, in the state file's `extra.job`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobFacts {
    pub id: String,
    pub registry: PathBuf,
    /// Whether our own entry could be written (else others cannot see us).
    pub registered: bool,
    pub workspace: PathBuf,
    pub start_id: i64,
    pub started_at: u64,
}

const FACTS: &str = "job";

impl JobFacts {
    pub fn of(st: &State) -> Option<JobFacts> {
        serde_json::from_value(st.extra.get(FACTS)?.clone()).ok()
    }

    pub fn record(&self, st: &mut State) {
        if let Ok(v) = serde_json::to_value(self) {
            st.extra.insert(FACTS.into(), v);
        }
    }

    fn entry(&self, end: Option<i64>) -> jobs::JobEntry {
        jobs::JobEntry {
            id: self.id.clone(),
            start_id: self.start_id,
            end_id: end,
            workspace: self.workspace.clone(),
            started_at: self.started_at,
            finished_at: end.map(|_| jobs::now()),
            // SAFETY: getuid has no preconditions and cannot fail.
            user: unsafe { libc::getuid() },
        }
    }
}

/// The checkout the job's result links live in.
fn workspace(given: Option<&Path>) -> PathBuf {
    let ci = [
        "GITHUB_WORKSPACE",
        "BUILDKITE_BUILD_CHECKOUT_PATH",
        "CI_PROJECT_DIR",
    ]
    .iter()
    .find_map(|v| std::env::var_os(v).filter(|s| !s.is_empty()))
    .map(PathBuf::from);
    let ws = given
        .map(Path::to_path_buf)
        .or(ci)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    std::fs::canonicalize(&ws).unwrap_or(ws)
}

/// Adds the job to the registry, before anything is restored (a restore
/// adds paths other jobs must not take for theirs). `None` when scoping is
/// off. A registry we cannot write is a warning: other jobs then cannot
/// see this one.
pub fn register(cfg: &JobConfig, obs: &dyn Observer) -> Result<Option<JobFacts>> {
    let s = &cfg.scope;
    if !s.enabled {
        return Ok(None);
    }
    let root = &cfg.store;
    let start_id = match Store::exists(root) {
        true => Store::open(root)?.snapshot().map_or(0, |s| s.max_id),
        false => 0,
    };
    let registry = s
        .jobs_dir
        .clone()
        .unwrap_or_else(|| jobs::default_dir(root.root()));
    let mut facts = JobFacts {
        id: jobs::new_id(),
        registry,
        registered: false,
        workspace: workspace(s.workspace.as_deref()),
        start_id,
        started_at: jobs::now(),
    };
    let existed = facts.registry.is_dir();
    match jobs::write(&facts.registry, &facts.entry(None)) {
        Ok(()) => facts.registered = true,
        // Other jobs use this registry: that they cannot see this job matters.
        Err(e) if existed => obs.warning(&format!(
            "{e}: jobs sharing this store cannot see this one; give every job a shared \
             writable --jobs-dir"
        )),
        // No registry, and this user may not create one: most likely a store
        // no other job uses (a hosted runner). Said, not warned.
        Err(e) => obs.note(&format!(
            "{e}: jobs sharing this store cannot see this one (run one start as root, or \
             give every job a shared writable --jobs-dir, where jobs share the store)"
        )),
    }
    Ok(Some(facts))
}

/// What scoping did, for the summary.
#[derive(Clone, Debug, Default)]
pub struct ScopeFacts {
    /// Other jobs whose windows overlapped this one.
    pub overlapping: usize,
    /// Roots whose build closure claimed paths (`--closure-of` or the
    /// workspace's GC roots).
    pub roots: usize,
    /// Paths in another job's window that the roots' closure claimed.
    pub by_roots: usize,
    /// Paths held back: realised by another job (or by no one we can tell).
    pub held: usize,
    pub held_bytes: u64,
}

/// The diff (and the archive's candidates) split by the scoping rule.
pub struct Scoped {
    pub new: Vec<PathInfo>,
    pub with_restored: Option<Vec<PathInfo>>,
    pub facts: Option<ScopeFacts>,
}

/// Closes this job's window and keeps this job's paths of `new` (and of
/// `with_restored`). Without overlapping jobs nothing changes.
pub fn apply(
    cfg: &JobConfig,
    store: &Store,
    st: &State,
    new: Vec<PathInfo>,
    with_restored: Option<Vec<PathInfo>>,
) -> Result<Scoped> {
    let unchanged = |new, with_restored| Scoped {
        new,
        with_restored,
        facts: None,
    };
    let Some(job) = JobFacts::of(st).filter(|_| cfg.scope.enabled) else {
        return Ok(unchanged(new, with_restored));
    };
    let end = store.snapshot().map_or(i64::MAX, |s| s.max_id);
    if job.registered && !cfg.push.dry_run {
        if let Err(e) = jobs::write(&job.registry, &job.entry(Some(end))) {
            tracing::warn!("{e}: this job's window stays open for other jobs");
        }
    }
    let own = Window {
        start: job.start_id,
        end: Some(end),
    };
    let others: Vec<Window> = jobs::list(&job.registry)
        .into_iter()
        .filter(|e| e.id != job.id)
        .map(|e| Window {
            start: e.start_id,
            end: e.end_id,
        })
        .filter(|w| w.overlaps(&own))
        .collect();
    if others.is_empty() {
        return Ok(unchanged(new, with_restored));
    }
    let roots = roots(cfg, store, &job)?;
    let reach: HashSet<StorePath> = store
        .build_closure(&roots)?
        .into_iter()
        .map(|i| i.path)
        .collect();
    let split = rule::split(&new, &others, &reach);
    let facts = ScopeFacts {
        overlapping: others.len(),
        roots: roots.len(),
        by_roots: split.by_roots,
        held: split.others.len(),
        held_bytes: split.others.iter().map(|i| i.nar_size).sum(),
    };
    let with_restored = with_restored.map(|w| rule::split(&w, &others, &reach).mine);
    Ok(Scoped {
        new: split.mine,
        with_restored,
        facts: Some(facts),
    })
}

/// This job's roots: `--closure-of`, else the GC roots Nix registered in
/// its workspace since it started. A root whose path is gone is skipped.
fn roots(cfg: &JobConfig, store: &Store, job: &JobFacts) -> Result<Vec<StorePath>> {
    let args: Vec<String> = match &cfg.push.closure {
        Mode::Of(args) => args.clone(),
        _ => jobs::workspace_roots(cfg.store.root(), &job.workspace, job.started_at)
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    };
    let mut out = Vec::new();
    for a in &args {
        match closure::root_of(store, a) {
            Ok((root, _)) => out.push(root),
            Err(e) if matches!(cfg.push.closure, Mode::Of(_)) => return Err(e),
            Err(e) => tracing::debug!("GC root {a} skipped: {e}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ci_checkout_is_the_workspace_unless_given() {
        let d = tempfile::tempdir().unwrap();
        let given = d.path().join("given");
        std::fs::create_dir(&given).unwrap();
        let canon = std::fs::canonicalize(&given).unwrap();
        assert_eq!(workspace(Some(&given)), canon);
        // No CI variable in unit tests' environment is assumed: the cwd or
        // a CI checkout, always absolute.
        assert!(workspace(None).is_absolute());
    }
}
