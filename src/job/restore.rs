//! The start of a job: warm start from the binary cache and the archive
//! restore (when configured), then the snapshot. Restoring *before* the
//! snapshot means restored paths are never pushed again.

use crate::archive::{self, ImportOptions, RestoreReport};
use crate::error::{Error, Result};
use crate::pipeline::snapshot::{self, State};
use crate::pipeline::summary::mb;
use crate::store::Store;

use super::config::JobConfig;
use super::key::CacheKey;
use super::observer::{grouped, Observer};
use super::state::{ArchiveFacts, Restored};
use super::{save::grown_prefix, warm};

/// What `start` did: the state for `finish`, and the archive restore.
pub struct Started {
    pub state: State,
    /// With an archive: what `start` learnt, and the restore's report
    /// (`None` when it failed).
    pub archive: Option<(ArchiveFacts, Option<RestoreReport>)>,
}

/// Warm start and archive restore (when asked), then the snapshot. A
/// restore that fails is a warning unless `strict`; the snapshot is taken
/// either way.
pub fn start(cfg: &JobConfig, obs: &dyn Observer) -> Result<Started> {
    let root = &cfg.store;
    // Before the restore: the paths it adds are this job's.
    let job = super::scope::register(cfg, obs)?;
    let take = || -> Result<State> {
        let mut st = snapshot::take(root)?;
        if let Some(j) = &job {
            j.record(&mut st);
        }
        Ok(st)
    };
    // One key for the warm start and the archive, computed once.
    let key = std::cell::OnceCell::new();
    let key = || key.get_or_init(|| cfg.key.compute());
    if let Some(url) = &cfg.warm.restore_from {
        let warmed = grouped(obs, "nixdelta: warm start from the binary cache", || {
            warm::restore(cfg, key(), url, obs)
        });
        match warmed {
            Ok(()) => {}
            Err(e) if cfg.strict || matches!(e, Error::Usage(_)) => return Err(e),
            Err(e) => obs.warning(&format!(
                "warm start from {url} failed (not failing the job; use --strict to): {e}"
            )),
        }
    }
    let a = &cfg.archive;
    let Some(backend) = &a.backend else {
        let state = take()?;
        // The key is still worth having (a Docker tag, say).
        if !cfg.key.eval.is_empty() {
            evaluate(cfg, &mut ArchiveFacts::default(), obs)?;
        }
        return Ok(Started {
            state,
            archive: None,
        });
    };
    let mut facts = ArchiveFacts {
        backend: backend.clone(),
        read_only: a.read_only,
        outcome: Restored::Error,
        ..Default::default()
    };
    let restored = grouped(obs, "nixdelta: restore the store archive", || {
        restore_archive(cfg, key(), backend, &mut facts, obs)
    });
    let report = match restored {
        Ok(r) => Some(r),
        Err(e) if cfg.strict || matches!(e, Error::Usage(_)) => return Err(e),
        Err(e) => {
            obs.warning(&format!(
                "store archive not restored (not failing the job; use --strict to): {e}"
            ));
            None
        }
    };
    let mut state = take()?;
    // After the restore (evaluation may need sources only the archive
    // has) and after the snapshot (what evaluation adds is the job's).
    if !cfg.key.eval.is_empty() {
        evaluate(cfg, &mut facts, obs)?;
    } else {
        obs.output("key", facts.key.as_deref().unwrap_or(""));
    }
    facts.record(&mut state);
    obs.output("cache-key", facts.key.as_deref().unwrap_or(""));
    let hit = facts.outcome == Restored::Hit;
    obs.output("cache-hit", if hit { "true" } else { "false" });
    obs.output("matched-key", facts.matched_key.as_deref().unwrap_or(""));
    obs.output("restored-paths", &facts.restored_paths.to_string());
    Ok(Started {
        state,
        archive: Some((facts, report)),
    })
}

/// The evaluated key (`--key-from-eval`), into `facts` and the `key`
/// output. A failed evaluation is a warning unless strict: the build says
/// what is wrong with the expression.
fn evaluate(cfg: &JobConfig, facts: &mut ArchiveFacts, obs: &dyn Observer) -> Result<()> {
    match cfg.key.evaluate(&cfg.store, &cfg.key.eval) {
        Ok((k, secs)) => {
            obs.note(&format!(
                "evaluated key {} in {secs:.2} s ({})",
                k.key,
                k.notes.join("; ")
            ));
            obs.output("key", &k.key);
            facts.eval_key = Some(k.key);
            facts.eval_secs = secs;
            Ok(())
        }
        Err(e) if cfg.strict || matches!(e, Error::Usage(_)) => Err(e),
        Err(e) => {
            obs.warning(&format!(
                "no evaluated key (not failing the job; use --strict to): {e}"
            ));
            obs.output("key", facts.key.as_deref().unwrap_or(""));
            Ok(())
        }
    }
}

fn restore_archive(
    cfg: &JobConfig,
    k: &Result<CacheKey>,
    spec: &str,
    facts: &mut ArchiveFacts,
    obs: &dyn Observer,
) -> Result<RestoreReport> {
    let store = &cfg.store;
    let backend = archive::open(spec, cfg.archive.read_only)?;
    let k = k.as_ref().map_err(Error::again)?;
    for n in &k.notes {
        tracing::info!("{n}");
    }
    facts.key = Some(k.key.clone());
    obs.note(&format!("cache key {}", k.key));
    Store::init(store)?;
    let base = snapshot::take(store)?;
    let store = Store::open(store)?;
    // An archive that grew on an exact hit is saved as `<key>-g<time>`:
    // the newest of those wins over the key's first archive.
    let grown = grown_prefix(&k.key);
    let (want, prefixes) =
        match backend.lookup(&format!("{grown}0"), std::slice::from_ref(&grown))? {
            Some(found) => (found.key, vec![]),
            None => (k.key.clone(), k.restore_prefixes.clone()),
        };
    let r = archive::restore(
        &store,
        backend.as_ref(),
        &want,
        &prefixes,
        &ImportOptions::default(),
    )?;
    facts.matched_key = r.matched_key.clone();
    facts.outcome = r.outcome.into();
    facts.restored_paths = r.import.added;
    facts.restored_nar_bytes = r.import.nar_bytes_added;
    if r.import.added > 0 {
        facts.base = Some(Box::new(base));
    }
    obs.note(&match &r.matched_key {
        None => format!("restore: miss ({}) in {:.2} s", r.backend, r.seconds),
        Some(m) => format!(
            "restore: {} ({m}): {} paths added, {} already valid, {} of NAR from {} of archive in {:.2} s",
            r.outcome,
            r.import.added,
            r.import.present,
            mb(r.import.nar_bytes_added),
            mb(r.archive_bytes),
            r.seconds
        ),
    });
    Ok(r)
}
