//! `nixdelta push`: the closure of given paths to a binary cache.

use crate::cache::BinaryCache;
use crate::error::{Error, Result};
use crate::nix::{SecretKey, StorePath};
use crate::pipeline::filter::Filters;
use crate::pipeline::plan::{plan, PlanOptions, PushPlan};
use crate::pipeline::upload::{upload, Item, UploadOptions, UploadReport};
use crate::store::{PathInfo, Store};

/// Uploads what `plan` selected; errors when anything failed.
pub fn run_plan(
    store: &Store,
    plan: &PushPlan,
    cache: &dyn BinaryCache,
    key: &SecretKey,
    opts: &UploadOptions,
) -> UploadReport {
    let items = plan
        .upload
        .iter()
        .map(|info| Item {
            info: info.clone(),
            real_path: store.real_path(&info.path),
        })
        .collect();
    upload(items, &plan.present, cache, key, store.store_dir(), opts)
}

/// The candidates of a push: the closure of the roots.
pub fn closure_of(store: &Store, roots: &[StorePath]) -> Result<Vec<PathInfo>> {
    store.closure(roots)
}

/// Plans and uploads the closure of `roots`.
pub fn push_closure(
    store: &Store,
    roots: &[StorePath],
    cache: &dyn BinaryCache,
    key: &SecretKey,
    opts: &UploadOptions,
) -> Result<(PushPlan, UploadReport)> {
    let candidates = closure_of(store, roots)?;
    let plan_opts = PlanOptions {
        filters: Filters {
            include_drv: true,
            ..Filters::default()
        },
        ..Default::default()
    };
    let plan = plan(store, candidates, &plan_opts, cache, None)?;
    cache.ensure_cache_info(store.store_dir())?;
    let report = run_plan(store, &plan, cache, key, opts);
    Ok((plan, report))
}

/// The error to exit with when an upload did not complete.
pub fn report_error(report: &UploadReport, cache_url: &str) -> Option<Error> {
    if let Some(msg) = &report.gave_up {
        return Some(Error::cache(cache_url, msg));
    }
    let (path, first) = report.failed.first()?;
    let n = report.failed.len();
    let msg = format!("{n} path(s) failed, first {path}: {first}");
    Some(match first {
        Error::Integrity(_) => Error::Integrity(msg),
        Error::Cache { .. } => Error::cache(cache_url, msg),
        _ => Error::Other(anyhow::anyhow!(msg)),
    })
}
