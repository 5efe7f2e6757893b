//! Warm start from the binary cache alone: `finish` writes a signed
//! manifest of what the job has in the cache under its cache key; `start
//! --restore-from-cache URL` has Nix substitute those paths before anything
//! is evaluated (so pinned `fetchurl`/`fetchTarball` evaluate offline).

use std::path::Path;
use std::time::Instant;

use nixdelta::cache;
use nixdelta::error::{Error, Result};
use nixdelta::nix::StorePath;
use nixdelta::pipeline::key;
use nixdelta::pipeline::plan::{PushPlan, Skip};
use nixdelta::pipeline::upload::UploadReport;
use nixdelta::pipeline::warm;
use nixdelta::store::{substitute::substitute, Store};

use super::common::{load_secret_key, load_trusted_keys, UploadArgs};
use super::track::ArchiveArgs;

fn cache_key(a: &ArchiveArgs) -> Result<key::CacheKey> {
    key::compute(
        a.key_dir(),
        &a.key_files,
        &key::current_system(),
        &a.restore_prefixes,
    )
}

/// Reads the manifest for this job's key and substitutes its paths.
pub fn restore(store_root: Option<&Path>, url: &str, a: &ArchiveArgs) -> Result<()> {
    let t = Instant::now();
    let keys = load_trusted_keys(&a.trusted_public_key)?;
    if keys.is_empty() {
        return Err(Error::Usage(
            "--restore-from-cache needs --trusted-public-key".into(),
        ));
    }
    let k = cache_key(a)?;
    let cache = cache::open_read_only(url)?;
    let Some((name, manifest)) = warm::read(cache.as_ref(), &k.key, &k.restore_prefixes, &keys)?
    else {
        eprintln!("nixdelta: warm start: no manifest for {} in {url}", k.key);
        return Ok(());
    };
    if let Some(root) = store_root {
        Store::init(root)?;
    }
    let paths: Vec<String> = manifest.paths.iter().map(|p| p.path.clone()).collect();
    let eval = manifest.paths.iter().filter(|p| p.eval_time).count();
    let key_strings: Vec<String> = keys.iter().map(ToString::to_string).collect();
    let valid = substitute(store_root, &paths, url, &key_strings)?;
    eprintln!(
        "nixdelta: warm start from {name}: {valid} of {} paths valid ({eval} eval-time) in {:.2} s",
        paths.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes the manifest of what the push left in the cache: what it
/// uploaded and what was already there.
pub fn write(
    store_root: Option<&Path>,
    to: &str,
    upload: &UploadArgs,
    a: &ArchiveArgs,
    plan: &PushPlan,
    report: &UploadReport,
) -> Result<()> {
    let k = match cache_key(a) {
        Ok(k) => k,
        Err(e) => {
            tracing::debug!("no warm-start manifest: {e}");
            return Ok(());
        }
    };
    let store = Store::open(store_root)?;
    let mut paths: Vec<StorePath> = report.uploaded.clone();
    paths.extend(
        plan.skipped
            .get(&Skip::OnTarget)
            .cloned()
            .unwrap_or_default(),
    );
    let infos: Vec<_> = store.path_infos(&paths)?.into_iter().flatten().collect();
    let mut manifest = warm::build(&k.key, &infos, store.store_dir());
    let secret = load_secret_key(upload.secret_key_file.as_deref())?;
    let target = cache::open(to)?;
    // An earlier job's manifest for this key (signed by this key): keep
    // what it lists. One that cannot be read is replaced.
    let mine = [secret.public_key()];
    let old = match warm::read(target.as_ref(), &k.key, &[], &mine) {
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
            eprintln!(
                "nixdelta: warm-start manifest {} kept ({before} paths, nothing new)",
                warm::manifest_name(&k.key)
            );
            return Ok(());
        }
    }
    let prefixes: Vec<String> = k.restore_prefixes.last().cloned().into_iter().collect();
    warm::write(target.as_ref(), &secret, &manifest, &prefixes)?;
    eprintln!(
        "nixdelta: warm-start manifest {} ({} paths)",
        warm::manifest_name(&k.key),
        manifest.paths.len()
    );
    Ok(())
}
