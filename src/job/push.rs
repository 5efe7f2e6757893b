//! The push of a job: the store diff through the push plan (filters,
//! upstream, already on the target, references pulled in) to the binary
//! cache.

use crate::cache::{self, BinaryCache};
use crate::error::{Error, Result};
use crate::nix::SecretKey;
use crate::pipeline::closure;
use crate::pipeline::filter::Filters;
use crate::pipeline::plan::{plan, PlanOptions, PushPlan};
use crate::pipeline::push;
use crate::pipeline::upload::UploadReport;
use crate::store::{PathInfo, Store};

use super::config::JobConfig;
use super::key::CacheKey;
use super::observer::Observer;

/// What the push did: the plan (absent without a target), the upload's
/// report, and its error (the report is still worth summarising).
pub struct Pushed {
    pub new_paths: usize,
    pub target: Option<String>,
    pub dry_run: bool,
    /// A pull-only job (`skip-push`): nothing was pushed on purpose.
    pub skipped: bool,
    pub plan: Option<PushPlan>,
    pub report: Option<UploadReport>,
    pub error: Option<Error>,
    /// Closure mode's roots and counts, when it ran.
    pub closure: Option<ClosureFacts>,
    /// Diff mode on a warm store: build-time dependencies that predate the
    /// job and are not known to be cached (what `closure: auto` adds).
    pub warm_misses: usize,
    /// The background uploader, when `start --watch` left one.
    pub watched: Option<super::watch::Watched>,
}

/// What closure mode added, for the summary.
#[derive(Clone, Debug, Default)]
pub struct ClosureFacts {
    pub auto: bool,
    pub roots: usize,
    pub without_drv: usize,
    pub candidates: usize,
    pub predating: usize,
}

/// The opened target and the key that signed, for the warm manifest.
pub struct Target {
    pub cache: Box<dyn BinaryCache>,
    pub key: SecretKey,
}

/// The candidates of a push: the diff's paths, or closure mode's.
pub struct Candidates<'a> {
    /// Paths realised since the snapshot.
    pub new: &'a [PathInfo],
    pub paths: Vec<PathInfo>,
    pub closure: Option<ClosureFacts>,
    /// Paths the background uploader pushed during the build: on the
    /// target, not asked again.
    pub watched: std::collections::HashSet<crate::nix::StorePath>,
}

/// Plans and (unless a dry run) uploads the candidates; `key` finds the
/// warm manifest that spares existence checks in closure mode.
pub fn push(
    cfg: &JobConfig,
    store: &Store,
    candidates: Candidates<'_>,
    filters: &Filters,
    key: Option<&CacheKey>,
    obs: &dyn Observer,
) -> Result<(Pushed, Option<Target>)> {
    let p = &cfg.push;
    let Candidates {
        new: diff,
        paths: new,
        closure,
        watched,
    } = candidates;
    let mut pushed = Pushed {
        new_paths: diff.len(),
        target: p.to.clone(),
        dry_run: p.dry_run,
        skipped: p.skip && p.to.is_some(),
        plan: None,
        report: None,
        error: None,
        closure,
        warm_misses: 0,
        watched: None,
    };
    let Some(to) = &p.to else {
        obs.plan_note(&format!(
            "{} new paths; no --to given, nothing pushed",
            new.len()
        ));
        return Ok((pushed, None));
    };
    if p.skip {
        obs.plan_note(&format!(
            "{} new paths; a pull-only job: nothing pushed",
            new.len()
        ));
        return Ok((pushed, None));
    }
    let key_pair = if p.dry_run {
        None
    } else {
        Some(super::keys::load_secret_key(p.secret_key_file.as_deref())?)
    };
    let target = if p.dry_run {
        cache::open_read_only(to)?
    } else {
        cache::open(to)?
    };
    let upstream = p
        .upstream
        .as_deref()
        .map(cache::open_read_only)
        .transpose()?;
    // Read once, and only when something needs it.
    let known = std::cell::OnceCell::new();
    let known = || {
        known.get_or_init(|| match (key, &key_pair) {
            (Some(k), Some(sk)) => known_on_target(target.as_ref(), k, sk, store),
            _ => Default::default(),
        })
    };
    let opts = PlanOptions {
        filters: filters.clone(),
        upstream_keys: p.upstream_keys.clone(),
        known_on_target: if pushed.closure.is_some() {
            known().union(&watched).cloned().collect()
        } else {
            watched
        },
    };
    let plan = plan(store, new, &opts, target.as_ref(), upstream.as_deref())?;
    if pushed.closure.is_none() && !diff.is_empty() {
        let is_known = |i: &PathInfo| {
            plan.present.contains(&i.path)
                || filters.skip(&i.path, store.store_dir()).is_some()
                || i.sigs.iter().any(|s| {
                    p.upstream_keys
                        .iter()
                        .any(|k| crate::nix::Signature::is_by(s, k))
                })
                || known().contains(&i.path)
        };
        match closure::warm_store_misses(store, diff, &is_known) {
            Ok(n) => pushed.warm_misses = n,
            Err(e) => tracing::debug!("warm-store check skipped: {e}"),
        }
    }
    let Some(key) = key_pair else {
        obs.plan(&plan, None, store.store_dir());
        pushed.plan = Some(plan);
        return Ok((pushed, None));
    };
    target.ensure_cache_info(store.store_dir())?;
    let report = push::run_plan(store, &plan, target.as_ref(), &key, &p.upload);
    obs.plan(&plan, Some(&report), store.store_dir());
    pushed.error = push::report_error(&report, target.url());
    pushed.plan = Some(plan);
    pushed.report = Some(report);
    Ok((pushed, Some(Target { cache: target, key })))
}

/// The paths this key's warm manifest (signed by the job's own key) says
/// the target has; empty when there is none or it cannot be read.
fn known_on_target(
    target: &dyn BinaryCache,
    k: &CacheKey,
    secret: &SecretKey,
    store: &Store,
) -> std::collections::HashSet<crate::nix::StorePath> {
    let mine = [secret.public_key()];
    match crate::pipeline::warm::read(target, &k.key, &k.restore_prefixes, &mine) {
        Ok(Some((_, m))) => m
            .paths
            .iter()
            .filter_map(|p| crate::nix::StorePath::from_absolute(&p.path, store.store_dir()).ok())
            .collect(),
        Ok(None) => Default::default(),
        Err(e) => {
            tracing::debug!("warm manifest not used for existence checks: {e}");
            Default::default()
        }
    }
}
