//! `nixdelta.yml`: the job's options from a file in the directory the job
//! runs in, under the command line and the environment; `nixdelta config`
//! shows where each value came from; bad files are usage errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::util::*;

/// A project directory with `nixdelta.yml` (and the key file it names).
fn project(env: &Env, yml: &str) -> PathBuf {
    let dir = env.path("project");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key.txt"), "v1\n").unwrap();
    std::fs::write(dir.join("nixdelta.yml"), yml).unwrap();
    dir
}

/// `nixdelta run ARGS` in `dir` building fib(6) from fib.nix.
fn run_fib(env: &Env, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = env.nixdelta(&["run"]);
    cmd.current_dir(dir)
        .args(args)
        .arg("--")
        .arg("nix-build")
        .arg("--store")
        .arg(env.store())
        .arg(example("fib.nix"))
        .args(["-A", "fib6", "--no-out-link"]);
    cmd
}

fn fib_outputs(env: &Env) -> Vec<String> {
    let drvs = stdout_lines(&ok(env
        .nix("nix-instantiate")
        .arg(example("fib.nix"))
        .args(["-A", "fib3", "-A", "fib4", "-A", "fib6"])));
    stdout_lines(&ok(env
        .nix("nix-store")
        .args(["-q", "--outputs"])
        .args(&drvs)))
}

fn cached(cache: &Path) -> Vec<String> {
    narinfos(cache)
        .iter()
        .map(|n| {
            let t = std::fs::read_to_string(cache.join(n)).unwrap();
            narinfo_field(&t, "StorePath").unwrap()
        })
        .collect()
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// The file alone sets the cache, the key, the archive and an exclude:
/// `run` pushes accordingly, a fresh store substitutes with --max-jobs 0,
/// the archive is saved, the excluded path is not pushed.
#[test]
fn the_file_sets_the_job() {
    let env = Env::new();
    let (sec, public) = env.keygen("k-1");
    let yml = format!(
        "# the job's nixdelta options\nbinary-cache: {}\nsecret-key-file: {}\narchive: dir:{}\nkey-files: key.txt\nexclude:\n  - -fib-3$\n",
        env.cache_url(),
        sec.display(),
        env.path("archive").display()
    );
    let dir = project(&env, &yml);
    let r = ok(&mut run_fib(&env, &dir, &[]));
    let outs = fib_outputs(&env);
    let pushed = cached(&env.path("cache"));
    assert!(
        pushed.contains(&outs[1]) && pushed.contains(&outs[2]),
        "{pushed:?}\n{}",
        show(&r)
    );
    assert!(!pushed.contains(&outs[0]), "fib-3 is excluded: {pushed:?}");
    assert!(
        files_in(&env.path("archive")) > 0,
        "no archive saved:\n{}",
        show(&r)
    );
    let f = env.realise_fresh("fresh", &env.cache_url(), &public, &[&outs[1], &outs[2]]);
    assert!(f.status.success(), "{}", show(&f));
}

/// The command line and the environment outrank the file, and
/// `nixdelta config` says which set what.
#[test]
fn command_line_and_environment_outrank_the_file() {
    let env = Env::new();
    let (sec, _) = env.keygen("k-1");
    let file_cache = env.path("file-cache");
    let yml = format!(
        "binary-cache: file://{}\nsecret-key-file: {}\narchive: dir:{}\nkey-files: [key.txt]\nresave-threshold: 1M\n",
        file_cache.display(),
        sec.display(),
        env.path("file-archive").display()
    );
    let dir = project(&env, &yml);
    let env_archive = format!("dir:{}", env.path("env-archive").display());
    let to = format!("--to={}", env.cache_url());
    let r = ok(run_fib(&env, &dir, &[&to]).env("NIXDELTA_ARCHIVE", &env_archive));
    assert!(!narinfos(&env.path("cache")).is_empty(), "{}", show(&r));
    assert_eq!(files_in(&file_cache), 0, "the file's cache was used");
    assert!(files_in(&env.path("env-archive")) > 0, "{}", show(&r));
    assert_eq!(files_in(&env.path("file-archive")), 0);

    let shown = ok(env
        .nixdelta(&["config", "run", "--to", "file:///cli"])
        .current_dir(&dir)
        .env("NIXDELTA_ARCHIVE", &env_archive)
        .env("NIXDELTA_SECRET_KEY", "k-1:c2VjcmV0LXZhbHVl"));
    let text = String::from_utf8_lossy(&shown.stdout).into_owned();
    let line = |key: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
            .to_string()
    };
    assert!(
        line("binary-cache").contains("file:///cli  (command line)"),
        "{text}"
    );
    assert!(
        line("archive").ends_with(&format!("{env_archive}  (env NIXDELTA_ARCHIVE)")),
        "{text}"
    );
    assert!(
        line("key-files").ends_with("key.txt  (nixdelta.yml:4)"),
        "{text}"
    );
    assert!(
        line("resave-threshold").ends_with("1M  (nixdelta.yml:5)"),
        "{text}"
    );
    assert!(
        line("compression-level").ends_with("3  (default)"),
        "{text}"
    );
    assert!(
        line("secret-key").contains("***  (env NIXDELTA_SECRET_KEY)"),
        "{text}"
    );
    assert!(!text.contains("c2VjcmV0"), "{text}");

    let json = ok(env
        .nixdelta(&["config", "--format", "json", "finish"])
        .current_dir(&dir));
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let opts = doc["options"].as_array().unwrap();
    let kf = opts.iter().find(|o| o["key"] == "key-files").unwrap();
    assert_eq!(kf["value"], serde_json::json!(["key.txt"]));
    assert_eq!(kf["source"], "nixdelta.yml:4");
    assert_eq!(kf["option"], "--key-file");

    // `--get KEY`: the value alone, for scripts (a list one per line);
    // the file's `strict: true` is what the GitLab template asks about.
    let get = |key: &str, extra: &[(&str, &str)]| {
        let out = ok(env
            .nixdelta(&["config", "--get", key, "start"])
            .current_dir(&dir)
            .envs(extra.iter().copied()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get("key-files", &[]), "key.txt\n");
    assert_eq!(get("strict", &[]), "false\n");
    std::fs::write(dir.join("nixdelta.yml"), format!("{yml}strict: true\n")).unwrap();
    assert_eq!(get("strict", &[]), "true\n");
    assert_eq!(get("strict", &[("NIXDELTA_CI", "gitlab")]), "true\n");
    let bad = env
        .nixdelta(&["config", "--get", "no-such-key", "start"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", show(&bad));
}

/// Unknown keys, wrong types and secrets are exit 2 with the place, and
/// nothing runs; `--no-config` skips the file, `--config` names another.
#[test]
fn bad_files_are_usage_errors() {
    let env = Env::new();
    let marker = env.path("ran");
    let run = |dir: &Path, extra: &[&str]| {
        env.nixdelta(&["run"])
            .current_dir(dir)
            .args(extra)
            .args(["--", "touch"])
            .arg(&marker)
            .output()
            .unwrap()
    };
    let cases = [
        (
            "archive: none\nbinary-cach: file:///c\n",
            "nixdelta.yml:2:1: unknown key \"binary-cach\" (did you mean \"binary-cache\"?)",
        ),
        (
            "archive: none\nstrict: maybe\n",
            "nixdelta.yml:2:9: strict: invalid type: string \"maybe\", expected a boolean",
        ),
        ("exclude:\n  x: y\n", "nixdelta.yml:2:3: exclude: invalid type: map"),
        (
            "archive: none\nsecret-key: k-1:c2VjcmV0\n",
            "nixdelta.yml:2:1: secret-key is a secret and is not accepted in nixdelta.yml: use secret-key-file",
        ),
        ("cache-token: abc\n", "cache-token is a secret"),
    ];
    for (yml, want) in cases {
        let dir = project(&env, yml);
        let r = run(&dir, &[]);
        let err = stderr(&r);
        assert_eq!(r.status.code(), Some(2), "{yml}\n{}", show(&r));
        assert!(err.contains(want), "{yml}\nwant {want}\n{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
        assert!(!marker.exists(), "the command ran despite {yml}");
    }
    let dir = env.path("project");
    let r = run(&dir, &["--no-config"]);
    assert!(r.status.success() && marker.exists(), "{}", show(&r));
    let r = run(&dir, &["--config", "missing.yml"]);
    assert_eq!(r.status.code(), Some(2), "{}", show(&r));
    assert!(
        stderr(&r).contains("missing.yml: cannot read the config file"),
        "{}",
        show(&r)
    );
    // A file the option (or $NIXDELTA_CONFIG) names is read instead.
    std::fs::write(dir.join("other.yml"), "archive: none\nscope: sometimes\n").unwrap();
    let r = env
        .nixdelta(&["config"])
        .current_dir(&dir)
        .env("NIXDELTA_CONFIG", "other.yml")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2), "{}", show(&r));
    let err = stderr(&r);
    assert!(
        err.contains("'sometimes'") && err.contains("the value is from other.yml:2: scope\n"),
        "{err}"
    );
}
