//! After the saves: GitHub cache housekeeping (superseded entries deleted,
//! usage read) when the archive is the Actions cache and a token is given.

use crate::archive::github_purge::{self, Client, PurgeOptions, PurgeReport, PurgeRequest, Repo};
use crate::archive::{github::cache_version, SaveOutcome, SaveReport};
use crate::secret::Secret;

use super::config::JobConfig;
use super::key;
use super::observer::Observer;
use super::state::ArchiveFacts;

/// What the housekeeping needs of the job's configuration.
#[derive(Clone, Debug, Default)]
pub struct PurgeConfig {
    pub options: PurgeOptions,
    /// A GitHub token with `actions: write` (the action's `github-token`).
    pub token: Option<Secret<String>>,
}

/// Whether `backend` is the GitHub Actions cache.
fn is_github(backend: &str) -> bool {
    matches!(backend, "github" | "github-v1" | "github-v2")
}

/// Purges after the saves that saved something, then reads usage. `None`
/// when there is nothing to keep (not the Actions cache, not in GitHub
/// Actions); a missing token is said once.
pub fn after_saves(
    cfg: &JobConfig,
    saves: &[&(ArchiveFacts, SaveReport)],
    obs: &dyn Observer,
) -> Option<PurgeReport> {
    let backend = &saves.first()?.0.backend;
    if !is_github(backend) || std::env::var_os("GITHUB_ACTIONS").is_none() {
        return None;
    }
    let Some(token) = cfg.purge.token.clone() else {
        obs.note("GitHub cache housekeeping skipped: no github-token (superseded caches are kept)");
        return None;
    };
    let env = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
    let repo = Repo::from_env(token, &env)?;
    let saved: Vec<&SaveReport> = saves
        .iter()
        .map(|(_, r)| r)
        .filter(|r| matches!(r.outcome, SaveOutcome::Saved { .. }))
        .collect();
    let mut keep: Vec<String> = saves.iter().map(|(_, r)| r.key.clone()).collect();
    for (f, _) in saves {
        keep.extend(f.key.iter().chain(&f.eval_key).cloned());
    }
    let prefixes: Vec<String> = saved.iter().map(|r| default_prefix(cfg, r)).collect();
    let version = cache_version();
    let reqs: Vec<PurgeRequest> = saved
        .iter()
        .zip(&prefixes)
        .map(|(r, p)| PurgeRequest {
            saved: &r.key,
            default_prefix: p,
            keep: &keep,
            version: &version,
        })
        .collect();
    let client = match Client::new(repo) {
        Ok(c) => c,
        Err(e) => {
            obs.warning(&format!("GitHub cache housekeeping: {e}"));
            return None;
        }
    };
    let mut opts = cfg.purge.options.clone();
    // Only after a save is anything superseded; usage is read always.
    opts.enabled &= !reqs.is_empty();
    let report = github_purge::run(&client, &reqs, &opts);
    if let Some(w) = &report.warning {
        obs.warning(w);
    }
    if !report.deleted.is_empty() {
        let bytes: u64 = report.deleted.iter().map(|(_, b)| b).sum();
        obs.note(&format!(
            "GitHub cache: deleted {} superseded entr{} ({})",
            report.deleted.len(),
            if report.deleted.len() == 1 {
                "y"
            } else {
                "ies"
            },
            crate::pipeline::summary::mb(bytes)
        ));
    }
    Some(report)
}

/// The saved key's most specific restore prefix: an evaluated key's own,
/// else the longest restore prefix the key starts with (at least the
/// system's: a broad `restore-prefixes: nixdelta-v1-` must not purge
/// other systems' archives).
fn default_prefix(cfg: &JobConfig, r: &SaveReport) -> String {
    let system = key::key_prefix(&key::current_system());
    if r.key.starts_with(&format!("{system}eval-")) {
        return format!("{system}eval-");
    }
    cfg.key
        .compute()
        .ok()
        .and_then(|k| {
            k.restore_prefixes
                .into_iter()
                .filter(|p| r.key.starts_with(p.as_str()))
                .max_by_key(String::len)
        })
        .filter(|p| p.len() >= system.len())
        .unwrap_or(system)
}
