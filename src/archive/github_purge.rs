//! Housekeeping of the GitHub Actions cache through GitHub's REST API
//! (octocrab, the crate the design names for it): after a save, delete the
//! repository's entries that the new one supersedes, and read how much of
//! the repository's cache is used.
//!
//! What is deleted (see docs/github.md): entries on the job's own ref
//! (`GITHUB_REF`), whose key starts with one of the purge prefixes
//! (default: the saved key's most specific restore prefix), created before
//! the entry just saved, and not this job's own keys. With the default
//! prefix only nixdelta's entries (our cache `version`) go, and a lock-file
//! key never takes evaluated keys (`…-eval-…`) with it, nor the reverse.
//! `purge-created-before` / `purge-last-accessed-before` narrow it further,
//! as cache-nix-action's `purge-created` / `purge-last-accessed` do.
//!
//! REST: `GET /repos/{o}/{r}/actions/caches?key=&ref=&per_page=100`
//! (prefix match, `Link: rel="next"` pages), `DELETE
//! /repos/{o}/{r}/actions/caches/{id}`, `GET /repos/{o}/{r}/actions/cache/usage`.
//! Deleting needs `actions: write`; a 403 becomes one warning naming it.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// GitHub's default per-repository cache limit.
pub const DEFAULT_LIMIT: u64 = 10 << 30;
const API_VERSION: &str = "2022-11-28";

/// What a job asks of the housekeeping.
#[derive(Clone, Debug)]
pub struct PurgeOptions {
    /// Delete superseded entries after a save (default on).
    pub enabled: bool,
    /// Key prefixes to purge under; empty: the saved key's restore prefix.
    pub prefixes: Vec<String>,
    /// Only entries created at least this long before now.
    pub created_before: Option<Duration>,
    /// Only entries last used at least this long before now.
    pub last_accessed_before: Option<Duration>,
}

impl Default for PurgeOptions {
    fn default() -> Self {
        PurgeOptions {
            enabled: true,
            prefixes: Vec::new(),
            created_before: None,
            last_accessed_before: None,
        }
    }
}

/// The repository whose cache is kept: from the runner's environment.
#[derive(Clone, Debug)]
pub struct Repo {
    pub api_url: String,
    pub owner: String,
    pub name: String,
    pub git_ref: String,
    pub token: Secret<String>,
}

impl Repo {
    /// `GITHUB_API_URL`, `GITHUB_REPOSITORY` and `GITHUB_REF` as runners set
    /// them; `None` outside GitHub Actions (nothing to keep).
    pub fn from_env(token: Secret<String>, env: &dyn Fn(&str) -> Option<String>) -> Option<Repo> {
        let repo = env("GITHUB_REPOSITORY")?;
        let (owner, name) = repo.split_once('/')?;
        Some(Repo {
            api_url: env("GITHUB_API_URL")
                .unwrap_or_else(|| "https://api.github.com".into())
                .trim_end_matches('/')
                .to_string(),
            owner: owner.to_string(),
            name: name.to_string(),
            git_ref: env("GITHUB_REF")?,
            token,
        })
    }

    fn url(&self, tail: &str) -> String {
        format!(
            "{}/repos/{}/{}/actions/{tail}",
            self.api_url,
            enc(&self.owner),
            enc(&self.name)
        )
    }
}

/// Everything but RFC 3986's unreserved characters, percent-encoded.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

/// One entry of `GET …/actions/caches`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Entry {
    pub id: u64,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub key: String,
    #[serde(default)]
    pub version: Option<String>,
    pub created_at: String,
    pub last_accessed_at: String,
    pub size_in_bytes: u64,
}

#[derive(Deserialize)]
struct EntryList {
    actions_caches: Vec<Entry>,
}

/// `GET …/actions/cache/usage`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Usage {
    pub active_caches_size_in_bytes: u64,
    pub active_caches_count: u64,
}

/// What the housekeeping did, for the summary.
#[derive(Clone, Debug, Default)]
pub struct PurgeReport {
    /// Deleted entries: key and size.
    pub deleted: Vec<(String, u64)>,
    pub usage: Option<Usage>,
    /// One line when something could not be done (never fails the job).
    pub warning: Option<String>,
}

/// What one save asks to purge.
pub struct PurgeRequest<'a> {
    /// The key just saved.
    pub saved: &'a str,
    /// Its most specific restore prefix (the default purge prefix).
    pub default_prefix: &'a str,
    /// Every key this job restored or saved: never deleted.
    pub keep: &'a [String],
    /// nixdelta's cache version (the default purge takes only ours).
    pub version: &'a str,
}

/// Seconds since the epoch of an RFC 3339 time as GitHub writes it.
fn epoch(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.timestamp())
}

/// The prefixes purged under: the options', else the saved key's own.
fn purge_prefixes<'a>(req: &PurgeRequest<'a>, opts: &'a PurgeOptions) -> Vec<&'a str> {
    if opts.prefixes.is_empty() {
        vec![req.default_prefix]
    } else {
        opts.prefixes.iter().map(String::as_str).collect()
    }
}

/// The entries to delete out of `listed`, given the request and `now`.
pub fn select(
    listed: &[Entry],
    req: &PurgeRequest<'_>,
    opts: &PurgeOptions,
    git_ref: &str,
    now: SystemTime,
) -> Vec<Entry> {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Older than what was saved; without it listed (a list that lags),
    // older than now.
    let saved_at = listed
        .iter()
        .filter(|e| e.key == req.saved && e.git_ref == git_ref)
        .filter_map(|e| epoch(&e.created_at))
        .max()
        .unwrap_or(now);
    let defaulted = opts.prefixes.is_empty();
    let prefixes = purge_prefixes(req, opts);
    let is_eval = |k: &str, p: &str| k.strip_prefix(p).is_some_and(|r| r.starts_with("eval-"));
    let before = |t: &str, d: Option<Duration>| match d {
        None => true,
        Some(d) => epoch(t).is_some_and(|t| t <= now - d.as_secs() as i64),
    };
    let mut out: Vec<Entry> = listed
        .iter()
        .filter(|e| e.git_ref == git_ref && e.key != req.saved)
        .filter(|e| !req.keep.contains(&e.key))
        .filter(|e| prefixes.iter().any(|p| e.key.starts_with(p)))
        .filter(|e| epoch(&e.created_at).is_some_and(|t| t <= saved_at))
        .filter(|e| {
            !defaulted
                || (e.version.as_deref().is_none_or(|v| v == req.version)
                    && is_eval(&e.key, req.default_prefix)
                        == is_eval(req.saved, req.default_prefix))
        })
        .filter(|e| before(&e.created_at, opts.created_before))
        .filter(|e| before(&e.last_accessed_at, opts.last_accessed_before))
        .cloned()
        .collect();
    out.sort_by_key(|e| e.id);
    out.dedup_by_key(|e| e.id);
    out
}

/// An age as cache-nix-action takes it: seconds, or an ISO 8601 duration
/// of weeks, days, hours, minutes and seconds (`P1DT12H`). Hand-written:
/// the ISO 8601 crates read years and months as fixed lengths, which an
/// age on a cache should not pretend to; they are refused here instead.
pub fn parse_age(option: &str, v: &str) -> Result<Duration> {
    let v = v.trim();
    let bad = |why: &str| {
        Error::Usage(format!(
            "{option}: {why}, got {v:?} (e.g. 86400 or P1DT12H)"
        ))
    };
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let rest = v
        .strip_prefix('P')
        .ok_or_else(|| bad("expected seconds or an ISO 8601 duration"))?;
    let (mut secs, mut num, mut time, mut any) = (0u64, String::new(), false, false);
    for c in rest.chars() {
        match c {
            '0'..='9' => num.push(c),
            'T' if !time && num.is_empty() => time = true,
            _ => {
                let n: u64 = num
                    .parse()
                    .map_err(|_| bad("a number must precede each unit"))?;
                let unit = match (c, time) {
                    ('W', false) => 7 * 86400,
                    ('D', false) => 86400,
                    ('H', true) => 3600,
                    ('M', true) => 60,
                    ('S', true) => 1,
                    ('Y' | 'M', false) => return Err(bad("years and months have no fixed length")),
                    _ => return Err(bad("unknown unit")),
                };
                secs = n
                    .checked_mul(unit)
                    .and_then(|s| s.checked_add(secs))
                    .ok_or_else(|| bad("too long"))?;
                num.clear();
                any = true;
            }
        }
    }
    if !num.is_empty() || !any || v.ends_with('T') {
        return Err(bad("a unit must follow each number"));
    }
    Ok(Duration::from_secs(secs))
}

/// Lists, deletes and reads usage through octocrab, on a small runtime of
/// its own (the rest of nixdelta is synchronous).
pub struct Client {
    crab: octocrab::Octocrab,
    rt: tokio::runtime::Runtime,
    repo: Repo,
}

/// A REST failure: its status (0: no answer) and one line.
#[derive(Debug)]
struct Failure {
    status: u16,
    line: String,
}

impl Client {
    pub fn new(repo: Repo) -> Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Other(e.into()))?;
        let base = repo.api_url.clone();
        let crab = rt.block_on(async {
            // The token goes only to the base URI's host (octocrab's rule).
            octocrab::Octocrab::builder()
                .base_uri(base)?
                .personal_token(repo.token.expose().trim().to_string())
                .add_header(
                    http::header::ACCEPT,
                    "application/vnd.github+json".to_string(),
                )
                .add_header(
                    http::HeaderName::from_static("x-github-api-version"),
                    API_VERSION.to_string(),
                )
                .set_connect_timeout(Some(Duration::from_secs(10)))
                .set_read_timeout(Some(Duration::from_secs(30)))
                .build()
        });
        let crab = crab.map_err(|e| Error::Other(anyhow::anyhow!("GitHub API client: {e}")))?;
        Ok(Client { crab, rt, repo })
    }

    /// GET `url`: the body, and the `Link: rel="next"` URL.
    fn get(&self, url: &str) -> std::result::Result<(String, Option<String>), Failure> {
        self.rt.block_on(async {
            let r = self.crab._get(url).await.map_err(no_answer)?;
            let next = r
                .headers()
                .get(http::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let status = r.status();
            let body = self.crab.body_to_string(r).await.map_err(no_answer)?;
            if !status.is_success() {
                return Err(refused(status.as_u16(), &body));
            }
            Ok((body, next))
        })
    }

    fn delete(&self, id: u64) -> std::result::Result<(), Failure> {
        let url = self.repo.url(&format!("caches/{id}"));
        self.rt.block_on(async {
            let r = self
                .crab
                ._delete(url, None::<&()>)
                .await
                .map_err(no_answer)?;
            let status = r.status();
            if status.is_success() || status.as_u16() == 404 {
                // 404: gone already (another job's purge, or evicted).
                return Ok(());
            }
            let body = self.crab.body_to_string(r).await.unwrap_or_default();
            Err(refused(status.as_u16(), &body))
        })
    }

    /// Every entry on `git_ref` whose key starts with `prefix`.
    fn list(&self, prefix: &str) -> std::result::Result<Vec<Entry>, Failure> {
        let mut url = format!(
            "{}?key={}&ref={}&per_page=100",
            self.repo.url("caches"),
            enc(prefix),
            enc(&self.repo.git_ref)
        );
        let mut out = Vec::new();
        // Pages are followed as GitHub links them; the bound stops a server
        // that links in a circle.
        for _ in 0..1000 {
            let (body, next) = self.get(&url)?;
            let page: EntryList = serde_json::from_str(&body).map_err(|e| Failure {
                status: 0,
                line: format!("unexpected answer listing caches: {e}"),
            })?;
            out.extend(page.actions_caches);
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        Ok(out)
    }

    fn usage(&self) -> std::result::Result<Usage, Failure> {
        let (body, _) = self.get(&self.repo.url("cache/usage"))?;
        serde_json::from_str(&body).map_err(|e| Failure {
            status: 0,
            line: format!("unexpected answer reading cache usage: {e}"),
        })
    }
}

fn no_answer(e: octocrab::Error) -> Failure {
    Failure {
        status: 0,
        line: e.to_string(),
    }
}

/// GitHub's error body is `{"message": …}`.
fn refused(status: u16, body: &str) -> Failure {
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(String::from))
        .unwrap_or_else(|| body.chars().take(200).collect());
    Failure {
        status,
        line: format!("HTTP {status}: {msg}"),
    }
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(v: &str) -> Option<String> {
    v.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// The one warning of a failure: a 403 names the permission to add.
fn warning(what: &str, f: &Failure, permission: &str) -> String {
    if f.status == 403 || f.status == 401 {
        format!(
            "GitHub cache housekeeping: cannot {what} ({}): give the job `permissions: actions: {permission}` and the action's github-token",
            f.line
        )
    } else {
        format!("GitHub cache housekeeping: cannot {what}: {}", f.line)
    }
}

/// Purges for each request (one per saved key), then reads the usage.
/// Never fails: what could not be done is the report's one warning.
pub fn run(client: &Client, reqs: &[PurgeRequest<'_>], opts: &PurgeOptions) -> PurgeReport {
    let mut report = PurgeReport::default();
    if opts.enabled {
        match purge(client, reqs, opts, &mut report) {
            // Gitea's and Forgejo's runners set GITHUB_API_URL to an API
            // without these routes: nothing to keep there, and no warning.
            Err(f) if f.status == 404 && report.deleted.is_empty() => {
                tracing::info!("no Actions cache REST API at {}", client.repo.api_url);
                return report;
            }
            Err(f) => report.warning = Some(warning("delete superseded caches", &f, "write")),
            Ok(()) => {}
        }
    }
    match client.usage() {
        Ok(u) => report.usage = Some(u),
        Err(f) if f.status == 404 => {}
        Err(f) if report.warning.is_none() => {
            report.warning = Some(warning("read the cache usage", &f, "read"));
        }
        Err(_) => {}
    }
    report
}

fn purge(
    client: &Client,
    reqs: &[PurgeRequest<'_>],
    opts: &PurgeOptions,
    report: &mut PurgeReport,
) -> std::result::Result<(), Failure> {
    for req in reqs {
        let mut listed = Vec::new();
        for p in purge_prefixes(req, opts) {
            listed.extend(client.list(p)?);
        }
        let doomed = select(&listed, req, opts, &client.repo.git_ref, SystemTime::now());
        for e in doomed {
            if report.deleted.iter().any(|(k, _)| *k == e.key) {
                continue;
            }
            client.delete(e.id)?;
            tracing::info!("purged cache {} ({} bytes)", e.key, e.size_in_bytes);
            report.deleted.push((e.key, e.size_in_bytes));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, key: &str, created: &str) -> Entry {
        Entry {
            id,
            git_ref: "refs/heads/main".into(),
            key: key.into(),
            version: Some("v".into()),
            created_at: created.into(),
            last_accessed_at: created.into(),
            size_in_bytes: 10,
        }
    }

    const P: &str = "nixdelta-v1-x86_64-linux-";

    fn req<'a>(saved: &'a str, keep: &'a [String]) -> PurgeRequest<'a> {
        PurgeRequest {
            saved,
            default_prefix: P,
            keep,
            version: "v",
        }
    }

    fn at(t: &str) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(epoch(t).unwrap() as u64)
    }

    fn keys(v: Vec<Entry>) -> Vec<String> {
        v.into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn older_entries_of_the_same_prefix_and_ref_go() {
        let mut other_ref = entry(4, &format!("{P}ccc"), "2026-01-01T00:00:00Z");
        other_ref.git_ref = "refs/heads/dev".into();
        let mut foreign = entry(5, &format!("{P}ddd"), "2026-01-01T00:00:00Z");
        foreign.version = Some("other-tool".into());
        let listed = vec![
            entry(1, &format!("{P}aaa"), "2026-01-01T00:00:00Z"),
            entry(2, &format!("{P}bbb"), "2026-01-02T00:00:00Z"),
            entry(3, &format!("{P}new"), "2026-01-03T00:00:00Z"),
            other_ref,
            foreign,
            entry(6, &format!("{P}later"), "2026-01-04T00:00:00Z"),
            entry(7, &format!("{P}eval-123"), "2026-01-01T00:00:00Z"),
            entry(8, "other-prefix-aaa", "2026-01-01T00:00:00Z"),
        ];
        let now = at("2026-01-05T00:00:00Z");
        let got = select(
            &listed,
            &req(&format!("{P}new"), &[]),
            &PurgeOptions::default(),
            "refs/heads/main",
            now,
        );
        assert_eq!(keys(got), [format!("{P}aaa"), format!("{P}bbb")]);
        // An evaluated key purges only evaluated keys.
        let got = select(
            &listed,
            &req(&format!("{P}eval-999"), &[]),
            &PurgeOptions::default(),
            "refs/heads/main",
            now,
        );
        assert_eq!(keys(got), [format!("{P}eval-123")]);
    }

    #[test]
    fn the_jobs_own_keys_and_time_limits_are_respected() {
        let listed = vec![
            entry(1, &format!("{P}aaa"), "2026-01-01T00:00:00Z"),
            entry(2, &format!("{P}bbb"), "2026-01-04T12:00:00Z"),
            entry(3, &format!("{P}new"), "2026-01-05T00:00:00Z"),
        ];
        let now = at("2026-01-05T00:00:00Z");
        let keep = vec![format!("{P}aaa")];
        let got = select(
            &listed,
            &req(&format!("{P}new"), &keep),
            &PurgeOptions::default(),
            "refs/heads/main",
            now,
        );
        assert_eq!(keys(got), [format!("{P}bbb")]);
        let opts = PurgeOptions {
            created_before: Some(Duration::from_secs(86400)),
            ..PurgeOptions::default()
        };
        let got = select(
            &listed,
            &req(&format!("{P}new"), &[]),
            &opts,
            "refs/heads/main",
            now,
        );
        assert_eq!(keys(got), [format!("{P}aaa")]);
        // Explicit prefixes take other tools' entries too.
        let mut foreign = entry(9, "cache-nix-action-old", "2026-01-01T00:00:00Z");
        foreign.version = Some("theirs".into());
        let opts = PurgeOptions {
            prefixes: vec!["cache-nix-action-".into()],
            ..PurgeOptions::default()
        };
        let got = select(
            &[foreign],
            &req(&format!("{P}new"), &[]),
            &opts,
            "refs/heads/main",
            now,
        );
        assert_eq!(keys(got), ["cache-nix-action-old"]);
    }

    #[test]
    fn ages_parse_as_cache_nix_action_takes_them() {
        assert_eq!(parse_age("o", "0").unwrap(), Duration::ZERO);
        assert_eq!(parse_age("o", "86400").unwrap().as_secs(), 86400);
        assert_eq!(parse_age("o", "P1DT12H").unwrap().as_secs(), 36 * 3600);
        assert_eq!(parse_age("o", "PT90M").unwrap().as_secs(), 5400);
        assert_eq!(parse_age("o", "P2W").unwrap().as_secs(), 14 * 86400);
        for bad in [
            "", "P", "PT", "1d", "P1M", "P1Y", "P1H", "PT1D", "P1DT", "-5", "P1.5D",
        ] {
            let e = parse_age("--purge-created-before", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("--purge-created-before"), "{bad}: {e}");
        }
    }

    #[test]
    fn next_links_are_found() {
        let h = r#"<https://api.github.com/repositories/1/actions/caches?page=2>; rel="next", <https://api.github.com/repositories/1/actions/caches?page=5>; rel="last""#;
        assert_eq!(
            next_link(h).as_deref(),
            Some("https://api.github.com/repositories/1/actions/caches?page=2")
        );
        assert_eq!(next_link(r#"<https://x/?page=1>; rel="prev""#), None);
    }

    #[test]
    fn a_403_names_the_permission() {
        let f = refused(
            403,
            r#"{"message":"Resource not accessible by integration"}"#,
        );
        let w = warning("delete superseded caches", &f, "write");
        assert!(w.contains("permissions: actions: write"), "{w}");
        assert!(w.contains("Resource not accessible by integration"), "{w}");
    }
}
