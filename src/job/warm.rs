//! Warm start from the binary cache alone: `finish` writes a signed
//! manifest of what the job has in the cache under its cache key; `start`
//! with `restore_from` has Nix substitute those paths before anything is
//! evaluated (so pinned `fetchurl`/`fetchTarball` evaluate offline).

use std::time::Instant;

use crate::cache::{self, BinaryCache};
use crate::error::{Error, Result};
use crate::nix::{SecretKey, StorePath};
use crate::pipeline::plan::{PushPlan, Skip};
use crate::pipeline::upload::UploadReport;
use crate::pipeline::warm;
use crate::store::{substitute::substitute, Store};

use super::config::JobConfig;
use super::key::CacheKey;
use super::keys::load_trusted_keys;
use super::observer::Observer;

/// Reads the manifest for this job's key `k` and substitutes its paths.
pub fn restore(cfg: &JobConfig, k: &Result<CacheKey>, url: &str, obs: &dyn Observer) -> Result<()> {
    let t = Instant::now();
    let store = &cfg.store;
    let keys = load_trusted_keys(&cfg.warm.trusted_public_keys)?;
    if keys.is_empty() {
        return Err(Error::Usage(
            "--restore-from-cache needs --trusted-public-key".into(),
        ));
    }
    let k = k.as_ref().map_err(Error::again)?;
    let cache = cache::open_read_only(url)?;
    let Some((name, manifest)) = warm::read(cache.as_ref(), &k.key, &k.restore_prefixes, &keys)?
    else {
        obs.note(&format!("warm start: no manifest for {} in {url}", k.key));
        return Ok(());
    };
    Store::init(store)?;
    let paths: Vec<String> = manifest.paths.iter().map(|p| p.path.clone()).collect();
    let eval = manifest.paths.iter().filter(|p| p.eval_time).count();
    let key_strings: Vec<String> = keys.iter().map(ToString::to_string).collect();
    let valid = substitute(store, &paths, url, &key_strings)?;
    obs.note(&format!(
        "warm start from {name}: {valid} of {} paths valid ({eval} eval-time) in {:.2} s",
        paths.len(),
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Writes the manifest of what the push left in the cache: what it
/// uploaded and what was already there, merged with an earlier job's
/// manifest for the key (signed by this key).
pub fn write(
    store: &Store,
    k: &CacheKey,
    target: &dyn BinaryCache,
    secret: &SecretKey,
    plan: &PushPlan,
    report: &UploadReport,
    obs: &dyn Observer,
) -> Result<()> {
    let mut paths: Vec<StorePath> = report.uploaded.clone();
    paths.extend(
        plan.skipped
            .get(&Skip::OnTarget)
            .cloned()
            .unwrap_or_default(),
    );
    let infos: Vec<_> = store.path_infos(&paths)?.into_iter().flatten().collect();
    let mut manifest = warm::build(&k.key, &infos, store.store_dir());
    // One that cannot be read is replaced.
    let mine = [secret.public_key()];
    let old = match warm::read(target, &k.key, &[], &mine) {
        Ok(found) => found.map(|(_, m)| m),
        Err(e) => {
            tracing::warn!("replacing the warm-start manifest: {e}");
            None
        }
    };
    if let Some(old) = &old {
        let before = old.paths.len();
        manifest = warm::merge(old, manifest);
        if manifest.paths.len() == before {
            obs.note(&format!(
                "warm-start manifest {} kept ({before} paths, nothing new)",
                warm::manifest_name(&k.key)
            ));
            return Ok(());
        }
    }
    let prefixes: Vec<String> = k.restore_prefixes.last().cloned().into_iter().collect();
    warm::write(target, secret, &manifest, &prefixes)?;
    obs.note(&format!(
        "warm-start manifest {} ({} paths)",
        warm::manifest_name(&k.key),
        manifest.paths.len()
    ));
    Ok(())
}
