//! The end of a job: push what it realised, write the warm-start manifest,
//! save the archive. The store is opened, the diff taken, the filters
//! (with the repository-source scan) and the cache key computed once, and
//! shared by the steps. Cache faults are collected, not raised, unless the
//! job is strict; usage errors always fail.

use std::path::Path;

use crate::archive::github_purge::PurgeReport;
use crate::archive::SaveReport;
use crate::error::{Error, Result};
use crate::pipeline::closure::{self, Mode};
use crate::pipeline::diff;
use crate::pipeline::filter::Filters;
use crate::pipeline::snapshot::State;
use crate::store::{PathInfo, Store};

use super::config::JobConfig;
use super::observer::{grouped, Observer};
use super::push::{push, Candidates, ClosureFacts, Pushed};
use super::save::{save, SaveInput};
use super::scope::{self, ScopeFacts};
use super::state::{ArchiveFacts, Restored};
use super::warm;
use super::watch;

/// How long `finish` waits for the background uploader to drain before it
/// kills it and pushes the rest itself.
const WATCH_DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Which step a fault came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Push,
    Save,
}

/// What `finish` did, for the summary.
pub struct Finished {
    /// The push (`None` when it failed before planning).
    pub pushed: Option<Pushed>,
    /// The archive save, when there is an archive.
    pub saved: Option<(ArchiveFacts, SaveReport)>,
    /// The save under the evaluated key (`--key-from-eval`).
    pub eval_saved: Option<(ArchiveFacts, SaveReport)>,
    /// Cache faults in the order they happened.
    pub faults: Vec<(Step, Error)>,
    /// Job scoping, when other jobs shared the store meanwhile.
    pub scope: Option<ScopeFacts>,
    /// GitHub cache housekeeping after the saves.
    pub purge: Option<PurgeReport>,
}

/// The job's store, its diff and its filters, computed once.
struct Prepared {
    store: Store,
    /// Paths realised since the snapshot.
    new: Vec<PathInfo>,
    /// Those plus the paths the archive restore added, when it added any.
    with_restored: Option<Vec<PathInfo>>,
    /// The filters of the candidates (repository source scanned once).
    filters: Filters,
    scope: Option<ScopeFacts>,
}

fn prepare(cfg: &JobConfig, st: &State, facts: Option<&ArchiveFacts>) -> Result<Prepared> {
    let store = Store::open(&cfg.store)?;
    let t = std::time::Instant::now();
    let new = diff::diff(&store, st)?;
    tracing::info!(
        "store diff: {} new paths in {:.1} ms",
        new.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let with_restored = match facts.and_then(|f| f.base.as_deref()) {
        Some(base) => Some(diff::diff(&store, base)?),
        None => None,
    };
    // On a shared store, only this job's paths go on.
    let scoped = scope::apply(cfg, &store, st, new, with_restored)?;
    let (new, with_restored) = (scoped.new, scoped.with_restored);
    let filters = cfg
        .filters
        .filters(&store, with_restored.as_deref().unwrap_or(&new))?;
    Ok(Prepared {
        store,
        new,
        with_restored,
        filters,
        scope: scoped.facts,
    })
}

impl Prepared {
    /// What an archive saved now holds: the restored and the new paths.
    fn candidates(&self) -> &[PathInfo] {
        self.with_restored.as_deref().unwrap_or(&self.new)
    }
}

/// The facts of the archive to save: `start`'s, or (when `start` had no
/// archive and `finish` has one) a miss. `None`: no archive.
pub(super) fn archive_facts(cfg: &JobConfig, st: &State) -> Option<ArchiveFacts> {
    let mut facts = match ArchiveFacts::of(st) {
        Some(f) => f,
        None => ArchiveFacts {
            backend: cfg.archive.backend.clone()?,
            outcome: Restored::Miss,
            ..Default::default()
        },
    };
    if let Some(b) = &cfg.archive.backend {
        facts.backend = b.clone();
    }
    facts.read_only |= cfg.archive.read_only;
    Some(facts)
}

/// What the push considers, and its filters: the diff (whose sources
/// only, not restored ones, count as the repository's), or closure mode's
/// paths (scanned for the repository's source in turn).
fn push_candidates<'a>(cfg: &JobConfig, p: &'a Prepared) -> Result<(Candidates<'a>, Filters)> {
    if cfg.push.closure == Mode::Diff {
        let mut filters = p.filters.clone();
        filters
            .self_sources
            .retain(|s| p.new.iter().any(|i| i.path == *s));
        let c = Candidates {
            new: &p.new,
            paths: p.new.clone(),
            closure: None,
            watched: Default::default(),
        };
        return Ok((c, filters));
    }
    let t = std::time::Instant::now();
    let c = closure::candidates(&p.store, &cfg.push.closure, &p.new)?;
    tracing::info!(
        "closure: {} paths from {} roots in {:.1} ms",
        c.paths.len(),
        c.roots,
        t.elapsed().as_secs_f64() * 1e3
    );
    let filters = cfg.filters.filters(&p.store, &c.paths)?;
    let facts = ClosureFacts {
        auto: cfg.push.closure == Mode::Auto,
        roots: c.roots,
        without_drv: c.without_drv,
        candidates: c.paths.len(),
        predating: c.predating,
    };
    let c = Candidates {
        new: &p.new,
        paths: c.paths,
        closure: Some(facts),
        watched: Default::default(),
    };
    Ok((c, filters))
}

/// Push, warm manifest, archive save, then the Actions cache's housekeeping.
pub fn finish(cfg: &JobConfig, st: &State, obs: &dyn Observer) -> Result<Finished> {
    let kept;
    let cfg = match cfg.state_dir.as_deref() {
        Some(dir) => {
            kept = super::save::keeping_frames(cfg, dir, archive_facts(cfg, st).as_ref());
            &kept
        }
        None => cfg,
    };
    let done = finish_steps(cfg, st, obs);
    // The uploader's frames too: it has stopped.
    if let Some(dir) = cfg.state_dir.as_deref() {
        super::save::drop_frames(dir);
    }
    let mut done = done?;
    let saves: Vec<_> = done.saved.iter().chain(&done.eval_saved).collect();
    done.purge = super::purge::after_saves(cfg, &saves, obs);
    Ok(done)
}

fn finish_steps(cfg: &JobConfig, st: &State, obs: &dyn Observer) -> Result<Finished> {
    same_store(st, cfg.store.absolute().root())?;
    // The background uploader drains first: what it pushed is not asked again.
    let watched = cfg
        .state_dir
        .as_deref()
        .and_then(|d| watch::stop(d, WATCH_DRAIN_LIMIT));
    if let Some(r) = watched.as_ref().and_then(|w| w.report.as_ref()) {
        obs.note(&format!(
            "background uploader: {} paths ({}) uploaded during the build, {:.1} s waited for it",
            r.paths,
            crate::pipeline::summary::mb(r.file_bytes),
            watched.as_ref().map_or(0.0, |w| w.wait_secs)
        ));
    }
    if let Some(w) = watched.as_ref().filter(|w| w.report.is_none()) {
        obs.warning(&format!(
            "the background uploader died before finish (killed? out of memory?); {} paths it \
             had uploaded are kept, the rest is pushed now",
            w.uploaded.len()
        ));
    }
    let facts = archive_facts(cfg, st);
    let mut done = Finished {
        pushed: None,
        saved: None,
        eval_saved: None,
        faults: Vec::new(),
        scope: None,
        purge: None,
    };
    let prepared = prepare(cfg, st, facts.as_ref());
    if let Ok(p) = &prepared {
        done.scope = p.scope.clone();
    }
    // Needed by the warm manifest and a save without start's key, if at all.
    let key = std::cell::OnceCell::new();
    let key = || key.get_or_init(|| cfg.key.compute());
    let pushed = grouped(obs, "nixdelta: push to the binary cache", || {
        let p = prepared.as_ref().map_err(Error::again)?;
        let (mut candidates, filters) = push_candidates(cfg, p)?;
        if let Some(w) = &watched {
            candidates.watched = w.uploaded.clone();
        }
        let k = key().as_ref().ok();
        let (mut pushed, target) = push(cfg, &p.store, candidates, &filters, k, obs)?;
        pushed.watched = watched.clone();
        let mut warm_error = None;
        if let (None, Some(t), Some(plan), Some(report), true) = (
            &pushed.error,
            &target,
            &pushed.plan,
            &pushed.report,
            cfg.warm.write_manifest,
        ) {
            if let Ok(k) = key() {
                let r = warm::write(&p.store, k, t.cache.as_ref(), &t.key, plan, report, obs);
                warm_error = r.err();
            }
        }
        Ok::<_, Error>((pushed, warm_error))
    });
    match pushed {
        Ok((mut p, warm_error)) => {
            let (mut paths, mut bytes) = p
                .report
                .as_ref()
                .map_or((0, 0), |r| (r.uploaded.len(), r.file_bytes));
            // What this job pushed: the uploader's share counts too.
            if let Some(r) = p.watched.as_ref().and_then(|w| w.report.as_ref()) {
                paths += r.paths;
                bytes += r.file_bytes;
            }
            obs.output("pushed-paths", &paths.to_string());
            obs.output("pushed-bytes", &bytes.to_string());
            if let Some(e) = p.error.take().or(warm_error) {
                done.faults.push((Step::Push, e));
            }
            done.pushed = Some(p);
        }
        Err(e) if matches!(e, Error::Usage(_)) => return Err(e),
        Err(e) => done.faults.push((Step::Push, e)),
    }
    let Some(facts) = facts.filter(|_| !cfg.push.dry_run) else {
        return Ok(done);
    };
    // Computed once for both keys.
    let env = prepared
        .as_ref()
        .map_err(Error::again)
        .and_then(|p| env_candidates(cfg, p));
    let saved = grouped(obs, "nixdelta: save the store archive", || {
        let p = prepared.as_ref().map_err(Error::again)?;
        let key = match &facts.key {
            Some(k) => k.clone(),
            None => key().as_ref().map_err(Error::again)?.key.clone(),
        };
        let env = env.as_ref().map_err(Error::again)?;
        save_under(cfg, p, &facts, key, env.as_deref(), obs)
    });
    match saved {
        Ok(s) => done.saved = Some(s),
        Err(e) if matches!(e, Error::Usage(_)) => return Err(e),
        Err(e) => done.faults.push((Step::Save, e)),
    }
    // `--key-from-eval`: the same archive under the evaluated key, unless
    // that archive exists already.
    let Some(eval_key) = evaluated_key(cfg, &facts, obs) else {
        return Ok(done);
    };
    let saved = grouped(
        obs,
        "nixdelta: save the store archive (evaluated key)",
        || {
            let p = prepared.as_ref().map_err(Error::again)?;
            let facts = ArchiveFacts {
                outcome: Restored::Miss,
                ..facts.clone()
            };
            let env = env.as_ref().map_err(Error::again)?;
            save_under(cfg, p, &facts, eval_key, env.as_deref(), obs)
        },
    );
    match saved {
        Ok(s) => done.eval_saved = Some(s),
        Err(e) if matches!(e, Error::Usage(_)) => return Err(e),
        Err(e) => done.faults.push((Step::Save, e)),
    }
    Ok(done)
}

/// Saves the job's archive under `key`.
fn save_under(
    cfg: &JobConfig,
    p: &Prepared,
    facts: &ArchiveFacts,
    key: String,
    env: Option<&[PathInfo]>,
    obs: &dyn Observer,
) -> Result<(ArchiveFacts, SaveReport)> {
    let mut facts = facts.clone();
    facts.key = Some(key.clone());
    let input = SaveInput {
        facts,
        key,
        new: env.unwrap_or(&p.new),
        candidates: env.unwrap_or(p.candidates()),
        filters: &p.filters,
    };
    save(cfg, &p.store, input, obs)
}

/// An environment archive's paths (`--env`): the closures of what entering
/// each shell needs, and the job's eval-time paths (sources it fetched or
/// added while evaluating, e.g. a pinned nixpkgs): evaluation needs them
/// offline. Not the job's build outputs.
fn env_candidates(cfg: &JobConfig, p: &Prepared) -> Result<Option<Vec<PathInfo>>> {
    if cfg.archive.env.is_empty() {
        return Ok(None);
    }
    let scratch = tempfile::tempdir().map_err(|e| Error::Other(e.into()))?;
    let mut roots = Vec::new();
    for what in &cfg.archive.env {
        let found = p
            .store
            .env_roots(what, scratch.path())
            .map_err(|e| Error::Input {
                path: what.into(),
                msg: format!(
                    "cannot find what entering this shell needs ({e}); enter it in the job first"
                ),
            })?;
        roots.extend(found);
    }
    let mut paths = p.store.closure(&roots)?;
    let have: std::collections::HashSet<_> = paths.iter().map(|i| i.path.clone()).collect();
    let eval_time = p
        .candidates()
        .iter()
        .filter(|i| i.deriver.is_none() && !i.path.is_derivation() && !have.contains(&i.path));
    paths.extend(eval_time.cloned().collect::<Vec<_>>());
    Ok(Some(paths))
}

/// The evaluated key start found, else (when finish is given
/// `--key-from-eval`) evaluated now; `None` when it is the key files' one.
fn evaluated_key(cfg: &JobConfig, facts: &ArchiveFacts, obs: &dyn Observer) -> Option<String> {
    let k = match &facts.eval_key {
        Some(k) => k.clone(),
        None if cfg.key.eval.is_empty() => return None,
        None => match cfg.key.evaluate(&cfg.store, &cfg.key.eval) {
            Ok((k, _)) => k.key,
            Err(e) => {
                obs.warning(&format!(
                    "no evaluated key, archive saved under one key: {e}"
                ));
                return None;
            }
        },
    };
    (Some(&k) != facts.key.as_ref()).then_some(k)
}

/// A diff against another store's snapshot would list nearly every path
/// of this one: refuse it.
fn same_store(st: &State, store_root: Option<&Path>) -> Result<()> {
    let canon = |p: Option<&Path>| p.map(|p| std::fs::canonicalize(p).unwrap_or(p.to_path_buf()));
    if canon(st.store_root.as_deref()) == canon(store_root) {
        return Ok(());
    }
    let name =
        |p: Option<&Path>| p.map_or("the system store".to_string(), |p| p.display().to_string());
    Err(Error::Input {
        path: "state of start".into(),
        msg: format!(
            "start ran on {}, finish on {}: run both on one store",
            name(st.store_root.as_deref()),
            name(store_root)
        ),
    })
}
