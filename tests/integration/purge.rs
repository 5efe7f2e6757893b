//! GitHub cache housekeeping (issue 15 item 1): after a save to the Actions
//! cache, `finish` deletes this ref's superseded nixdelta entries through
//! GitHub's REST API and reports the repository's cache usage. No GitHub
//! API runs here: the REST fake (helpers/github_rest.rs) shares its entries
//! with the cache service fake, speaks GitHub's paths, headers and `Link`
//! pagination, and refuses what api.github.com refuses.

use std::process::Output;

use crate::helpers::actions_cache::TwirpCacheTestServer;
use crate::helpers::github_rest::{OWNER, REPO};
use crate::helpers::util::*;

/// A GitHub Actions job's `start` / build / `finish` against `server`,
/// with the inputs `inputs` (`INPUT_<NAME>` as the runner sets them).
struct Job<'a> {
    server: &'a TwirpCacheTestServer,
    env: Env,
    src: std::path::PathBuf,
}

impl<'a> Job<'a> {
    fn new(server: &'a TwirpCacheTestServer) -> Job<'a> {
        let env = Env::new();
        let src = env.path("src");
        std::fs::create_dir_all(&src).unwrap();
        write_flake_lock(&src, 7);
        Job { server, env, src }
    }

    fn step(&self, name: &str, args: &[&str], inputs: &[(&str, &str)]) -> Output {
        let mut cmd = nixdelta();
        cmd.current_dir(&self.src)
            .arg("--store")
            .arg(self.env.path(&format!("stores/{name}")))
            .args(["--ci", "github"])
            .args(args)
            .arg("--state-dir")
            .arg(self.env.path(&format!("state/{name}")))
            .env("GITHUB_ACTIONS", "true")
            .env(
                "GITHUB_STEP_SUMMARY",
                self.env.path(&format!("summary-{name}-{}.md", args[0])),
            )
            .env("GITHUB_OUTPUT", self.env.path("github-output"))
            .env("ACTIONS_RESULTS_URL", self.server.url())
            .env("ACTIONS_RUNTIME_TOKEN", &self.server.token)
            .env("GITHUB_API_URL", self.server.api_url())
            .env("GITHUB_REPOSITORY", format!("{OWNER}/{REPO}"))
            .env("GITHUB_REF", "refs/heads/main")
            .env("INPUT_ARCHIVE", "github")
            .env("INPUT_GITHUB-TOKEN", self.server.rest_token())
            .env_remove("ACTIONS_CACHE_URL")
            .env_remove("GITHUB_TOKEN")
            .env_remove("NIXDELTA_GITHUB_TOKEN");
        for (k, v) in inputs {
            cmd.env(format!("INPUT_{}", k.to_uppercase()), v);
        }
        cmd.output().unwrap()
    }

    /// start, a build of chain6 (salted), then `finish` with `inputs`;
    /// `between` runs after start (entries seeded then are not restored).
    fn run(&self, name: &str, inputs: &[(&str, &str)], between: impl FnOnce()) -> Output {
        let s = self.step(name, &["start"], inputs);
        assert!(s.status.success(), "{}", show(&s));
        let store = self.env.path(&format!("stores/{name}"));
        let mut b = self.env.nix_on(&store, "nix-build");
        b.arg(example("fib.nix"))
            .args(["-A", "chain6", "--no-out-link", "--argstr", "salt", name]);
        ok(&mut b);
        between();
        self.step(name, &["finish"], inputs)
    }

    fn summary(&self, name: &str) -> String {
        std::fs::read_to_string(self.env.path(&format!("summary-{name}-finish.md")))
            .unwrap_or_default()
    }

    /// The key prefix of this job's keys (`nixdelta-v<n>-<system>-`).
    fn prefix(&self) -> String {
        let out = ok(nixdelta().current_dir(&self.src).arg("key"));
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (p, _) = key.rsplit_once('-').unwrap();
        format!("{p}-")
    }
}

fn ok_or_code(cmd: &mut std::process::Command) -> Output {
    cmd.output().unwrap()
}

fn ours() -> String {
    nixdelta::archive::github::cache_version()
}

fn keys(server: &TwirpCacheTestServer) -> Vec<String> {
    let mut k: Vec<String> = server.entries().into_iter().map(|(k, _)| k).collect();
    k.sort();
    k
}

#[test]
fn superseded_entries_go_across_pages_and_usage_is_reported() {
    let server = TwirpCacheTestServer::start();
    let job = Job::new(&server);
    let p = job.prefix();
    let f = job.run("one", &[], || {
        // 105 older nixdelta entries on this ref: two pages of 100.
        for i in 0..105 {
            server.seed(
                &format!("{p}old{i:03}"),
                &ours(),
                "refs/heads/main",
                7200 + i,
                1000,
            );
        }
        // Kept: another ref, another tool's version, another prefix, an
        // evaluated key (a lock-file save does not take those).
        server.seed(&format!("{p}dev"), &ours(), "refs/heads/dev", 7200, 1000);
        server.seed(
            &format!("{p}foreign"),
            "other-tool",
            "refs/heads/main",
            7200,
            1000,
        );
        server.seed(
            "cache-nix-action-x",
            "other-tool",
            "refs/heads/main",
            7200,
            1000,
        );
        server.seed(
            &format!("{p}eval-abc"),
            &ours(),
            "refs/heads/main",
            7200,
            1000,
        );
    });
    assert!(f.status.success(), "{}", show(&f));
    let saved: Vec<String> = keys(&server)
        .into_iter()
        .filter(|k| !k.contains("old") && *k != format!("{p}dev"))
        .filter(|k| !k.contains("foreign") && !k.contains("eval-") && !k.starts_with("cache-"))
        .collect();
    assert_eq!(saved.len(), 1, "the saved entry: {:?}", keys(&server));
    let mut want = vec![
        format!("{p}dev"),
        format!("{p}eval-abc"),
        format!("{p}foreign"),
        "cache-nix-action-x".to_string(),
        saved[0].clone(),
    ];
    want.sort();
    assert_eq!(keys(&server), want, "only the superseded entries went");

    // The request sequence: page 1 as asked, page 2 by the Link header's
    // URL, one DELETE per entry, then the usage.
    let log = server.rest_log();
    let list = format!(
        "GET /repos/{OWNER}/{REPO}/actions/caches?key={p}&per_page=100&ref=refs/heads/main"
    );
    assert_eq!(log[0], list, "{log:#?}");
    assert_eq!(
        log[1],
        format!(
            "GET /repositories/4242/actions/caches?key={p}&page=2&per_page=100&ref=refs/heads/main"
        ),
        "{log:#?}"
    );
    let deletes = &log[2..log.len() - 1];
    assert_eq!(deletes.len(), 105, "{log:#?}");
    assert!(deletes
        .iter()
        .all(|l| l.starts_with(&format!("DELETE /repos/{OWNER}/{REPO}/actions/caches/"))));
    assert_eq!(
        log.last().unwrap(),
        &format!("GET /repos/{OWNER}/{REPO}/actions/cache/usage?")
    );

    let summary = job.summary("one");
    assert!(summary.contains("### GitHub Actions cache"), "{summary}");
    assert!(summary.contains("in 5 entries"), "{summary}");
    assert!(
        summary.contains("| superseded entries deleted | 105 ("),
        "{summary}"
    );
    // The token is masked, and appears nowhere else.
    let token = server.rest_token();
    let text = show(&f);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&token)).collect();
    assert!(
        lines.iter().all(|l| l.starts_with("::add-mask::")) && !lines.is_empty(),
        "{lines:?}"
    );
}

#[test]
fn without_actions_write_one_warning_names_the_permission() {
    let server = TwirpCacheTestServer::start();
    server.rest_permissions(true, false);
    let job = Job::new(&server);
    let p = job.prefix();
    let f = job.run("one", &[], || {
        server.seed(&format!("{p}old"), &ours(), "refs/heads/main", 7200, 1000);
    });
    assert!(f.status.success(), "the job still passes: {}", show(&f));
    let text = show(&f);
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("permissions: actions: write"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].starts_with("::warning"), "{}", warnings[0]);
    assert!(keys(&server).contains(&format!("{p}old")));
    let summary = job.summary("one");
    assert!(summary.contains("permissions: actions: write"), "{summary}");
    assert!(
        summary.contains("in 2 entries"),
        "usage still read: {summary}"
    );

    // No token at all: said once, nothing is asked of the API.
    let before = server.rest_log().len();
    let f = job.run("two", &[("github-token", "")], || {});
    assert!(f.status.success(), "{}", show(&f));
    assert!(
        show(&f).contains("housekeeping skipped: no github-token"),
        "{}",
        show(&f)
    );
    assert_eq!(server.rest_log().len(), before);
}

#[test]
fn purge_inputs_work_as_cache_nix_actions_and_bad_ages_are_refused() {
    let server = TwirpCacheTestServer::start();
    let job = Job::new(&server);
    let p = job.prefix();

    // purge: false: nothing deleted, usage still reported.
    let f = job.run("off", &[("purge", "false")], || {
        server.seed(&format!("{p}old"), &ours(), "refs/heads/main", 7200, 1000);
    });
    assert!(f.status.success(), "{}", show(&f));
    assert!(keys(&server).contains(&format!("{p}old")));
    assert!(!server.rest_log().iter().any(|l| l.starts_with("DELETE")));
    assert!(
        job.summary("off").contains("usage"),
        "{}",
        job.summary("off")
    );

    // Explicit prefixes and an age: another tool's old entries go, the
    // young one and our own (not under the prefixes) stay. A new lock
    // file: only a save purges.
    let lock = job.src.join("flake.lock");
    let text = std::fs::read_to_string(&lock).unwrap();
    std::fs::write(&lock, format!("{text} ")).unwrap();
    let inputs = [
        ("purge-prefixes", "cache-nix-action-\nother-"),
        ("purge-created-before", "P1D"),
    ];
    let f = job.run("prefixes", &inputs, || {
        server.seed(
            "cache-nix-action-a",
            "theirs",
            "refs/heads/main",
            2 * 86400,
            10,
        );
        server.seed("cache-nix-action-b", "theirs", "refs/heads/main", 3600, 10);
        server.seed("other-c", "theirs", "refs/heads/main", 3 * 86400, 10);
    });
    assert!(f.status.success(), "{}", show(&f));
    let k = keys(&server);
    assert!(!k.contains(&"cache-nix-action-a".to_string()), "{k:?}");
    assert!(!k.contains(&"other-c".to_string()), "{k:?}");
    assert!(k.contains(&"cache-nix-action-b".to_string()), "{k:?}");
    assert!(k.contains(&format!("{p}old")), "{k:?}");

    // A bad age: exit 2, one line naming the input, at start (before the
    // build), and nothing asked of the cache.
    let before = server.log().len();
    let f = job.step("bad", &["start"], &[("purge-created-before", "P1M")]);
    assert_eq!(f.status.code(), Some(2), "{}", show(&f));
    let err = stderr(&f);
    assert!(
        err.contains("input purge-created-before") && err.contains("P1M"),
        "{err}"
    );
    assert_eq!(server.log().len(), before, "nothing was asked of the cache");
    // And the CLI's own option, the same way.
    let f = ok_or_code(nixdelta().args(["finish", "--purge-last-accessed-before", "1d"]));
    assert_eq!(f.status.code(), Some(2), "{}", show(&f));
    assert!(
        stderr(&f).contains("--purge-last-accessed-before"),
        "{}",
        show(&f)
    );
}

const OCTOKIT_CHECK: &str = r#"
import { Octokit } from '@octokit/rest';
const [owner, repo] = ['OWNER', 'REPO'];
const baseUrl = process.env.API, prefix = process.env.PREFIX;
const o = new Octokit({ auth: process.env.TOKEN, baseUrl });
const all = await o.paginate(o.rest.actions.getActionsCacheList,
  { owner, repo, key: prefix, ref: 'refs/heads/main', per_page: 100 });
await o.rest.actions.deleteActionsCacheById({ owner, repo, cache_id: all[0].id });
const u = await o.rest.actions.getActionsCacheUsage({ owner, repo });
let bad = 0;
try { await new Octokit({ auth: 'wrong', baseUrl }).rest.actions.getActionsCacheUsage({ owner, repo }); }
catch (e) { bad = e.status; }
console.log(JSON.stringify({ listed: all.length, keys: [...new Set(all.map(c => c.key))].length,
  count: u.data.active_caches_count, bad }));
"#;

/// The official client, `@octokit/rest`, pages through the fake's list
/// (its `Link` URLs), deletes by id and reads usage: the fake's wire
/// format is GitHub's.
#[test]
fn the_rest_fake_is_checked_by_octokit() {
    let server = TwirpCacheTestServer::start();
    for i in 0..130 {
        server.seed(&format!("pfx-{i}"), &ours(), "refs/heads/main", 100 + i, 10);
    }
    server.seed("pfx-dev", &ours(), "refs/heads/dev", 100, 10);
    let npm = crate::archive_github::actions_cache_client();
    assert!(
        npm.join("node_modules/@octokit/rest/package.json").exists(),
        "@octokit/rest is missing: run scripts/setup.sh"
    );
    let script = npm.join(format!("nixdelta-octokit-{}.mjs", std::process::id()));
    let text = OCTOKIT_CHECK.replace("OWNER", OWNER).replace("REPO", REPO);
    std::fs::write(&script, text).unwrap();
    let mut cmd = std::process::Command::new("node");
    cmd.arg(&script)
        .env("API", server.api_url())
        .env("PREFIX", "pfx-")
        .env("TOKEN", server.rest_token());
    let out = run_bounded(&mut cmd, 120);
    let _ = std::fs::remove_file(&script);
    assert!(
        out.status.success(),
        "{}\n{:?}",
        show(&out),
        server.rest_log()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["listed"], 130, "{v}");
    assert_eq!(v["keys"], 130, "no page listed twice: {v}");
    assert_eq!(v["count"], 130, "one of 131 deleted: {v}");
    assert_eq!(v["bad"], 401, "{v}");
    let pages = server
        .rest_log()
        .iter()
        .filter(|l| l.contains("/actions/caches?"))
        .count();
    assert_eq!(pages, 2, "{:?}", server.rest_log());
}
