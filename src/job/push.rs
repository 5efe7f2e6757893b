//! The push of a job: the store diff through the push plan (filters,
//! upstream, already on the target, references pulled in) to the binary
//! cache.

use crate::cache::{self, BinaryCache};
use crate::error::{Error, Result};
use crate::nix::SecretKey;
use crate::pipeline::filter::Filters;
use crate::pipeline::plan::{plan, PlanOptions, PushPlan};
use crate::pipeline::push;
use crate::pipeline::upload::UploadReport;
use crate::store::{PathInfo, Store};

use super::config::JobConfig;
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
}

/// The opened target and the key that signed, for the warm manifest.
pub struct Target {
    pub cache: Box<dyn BinaryCache>,
    pub key: SecretKey,
}

/// Plans and (unless a dry run) uploads `new`.
pub fn push(
    cfg: &JobConfig,
    store: &Store,
    new: Vec<PathInfo>,
    filters: &Filters,
    obs: &dyn Observer,
) -> Result<(Pushed, Option<Target>)> {
    let p = &cfg.push;
    let mut pushed = Pushed {
        new_paths: new.len(),
        target: p.to.clone(),
        dry_run: p.dry_run,
        skipped: p.skip && p.to.is_some(),
        plan: None,
        report: None,
        error: None,
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
    let key = if p.dry_run {
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
    let opts = PlanOptions {
        filters: filters.clone(),
        upstream_keys: p.upstream_keys.clone(),
    };
    let plan = plan(store, new, &opts, target.as_ref(), upstream.as_deref())?;
    let Some(key) = key else {
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
