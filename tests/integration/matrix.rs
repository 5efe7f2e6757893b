//! The Nix version matrix (issue 12 item 5): the host-built `nixdelta` runs
//! in debootstrapped Debian chroots against their own, newer Nix
//! (trixie: 2.26, sid: 2.34), created once and cached by
//! scripts/nix-chroots.sh. No chroot (no mirror) fails the test loudly.

use crate::helpers::util::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The cached chroot for `suite`, built on first use; panics if it cannot be.
fn chroot(suite: &str) -> PathBuf {
    let out = Command::new(repo().join("scripts/nix-chroots.sh"))
        .arg(suite)
        .output()
        .unwrap();
    assert!(out.status.success(), "no {suite} chroot:\n{}", show(&out));
    let root = std::env::var("NIXDELTA_CHROOTS")
        .unwrap_or_else(|_| "/var/cache/nixdelta-test/chroots".into());
    PathBuf::from(root).join(suite)
}

/// Runs `args` inside `root` with the test dir and the repo (examples, the
/// built binary) bind-mounted at their own paths, and `env/<store>/nix`
/// bind-mounted on the chroot's /nix: the store is at /nix/store there, as
/// Nix ≥ 2.26 with `sandbox = false` runs builders unmapped, so a diverted
/// `--store DIR` cannot build (found here; Nix 2.8 forced a chroot). Every mount lives in a
/// private mount namespace and dies with the command, so parallel tests
/// never see each other's mounts and nothing is left behind.
fn inside(root: &Path, env: &Env, store: &str, args: &[&str]) -> Output {
    let script = r#"set -e; r=$1; shift
mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"
for d in "$T" "$R"; do mount --bind "$d" "$r$d"; done
mkdir -p "$S"; mount --bind "$S" "$r/nix"
exec chroot "$r" env NIX_CONFIG="$NC" "$@""#;
    let test_dir = env.dir.path();
    for d in [test_dir, &repo(), Path::new("/nix")] {
        std::fs::create_dir_all(root.join(d.strip_prefix("/").unwrap())).unwrap();
    }
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(root)
        .args(args)
        .env("T", test_dir)
        .env("R", repo())
        .env("S", env.path(store).join("nix"))
        .env("NC", NIX_CONFIG)
        .output()
        .unwrap()
}

fn good(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what}:\n{}", show(&out));
    out
}

/// Single-user root on the chroot's Nix, one store per step: push,
/// fresh-store substitution, archive round trip.
fn single_user(suite: &str, version: &str) {
    let root = chroot(suite);
    let env = Env::new();
    let s = |p: &str| env.path(p).display().to_string();
    let run = |store: &str, what: &str, args: &[&str]| good(inside(&root, &env, store, args), what);
    let bin = env!("CARGO_BIN_EXE_nixdelta");
    let ver = run("store", "nix --version", &["nix", "--version"]);
    assert!(
        String::from_utf8_lossy(&ver.stdout).contains(version),
        "{}",
        show(&ver)
    );

    let fib = example("fib.nix").display().to_string();
    let b = run(
        "store",
        "build chain6",
        &["nix-build", &fib, "-A", "chain6", "--no-out-link"],
    );
    let chain6 = stdout_lines(&b).pop().unwrap();
    run(
        "store",
        "keygen",
        &[bin, "keygen", "m-1", "--out", &s("keys")],
    );
    let public = std::fs::read_to_string(env.path("keys/m-1.pub")).unwrap();
    let public = public.trim();

    // Push, then a fresh store substitutes the closure, nothing built.
    let url = format!("file://{}", s("cache"));
    let sec = s("keys/m-1.sec");
    let push = run(
        "store",
        "push",
        &[
            bin,
            "push",
            "--to",
            &url,
            "--secret-key-file",
            &sec,
            &chain6,
        ],
    );
    let line = String::from_utf8_lossy(&push.stdout);
    assert!(
        line.contains("7 paths considered, 0 already cached, 7 uploaded"),
        "{line}"
    );
    assert_eq!(narinfos(&env.path("cache")).len(), 7);
    let realise = [
        "nix-store",
        "--realise",
        &chain6,
        "--max-jobs",
        "0",
        "--option",
        "substituters",
        &url,
        "--option",
        "trusted-public-keys",
        public,
        "--option",
        "require-sigs",
        "true",
    ];
    run("fresh", "fresh store substitutes", &realise);
    let value = env.path("fresh").join(&chain6[1..]).join("value");
    assert_eq!(std::fs::read_to_string(value).unwrap().trim(), "8");

    // The store diff reads this Nix's DB schema: start, build, finish pushes
    // only what was realised after start (fib-0..6), none of the chain.
    let state = s("state");
    run("store", "start", &[bin, "start", "--state-dir", &state]);
    run(
        "store",
        "build fib6",
        &["nix-build", &fib, "-A", "fib6", "--no-out-link"],
    );
    let url2 = format!("file://{}", s("cache2"));
    let fin = run(
        "store",
        "finish",
        &[
            bin,
            "finish",
            "--json",
            "--state-dir",
            &state,
            "--to",
            &url2,
            "--secret-key-file",
            &sec,
        ],
    );
    let plan: serde_json::Value = serde_json::from_slice(&fin.stdout).unwrap();
    let mut names: Vec<String> = plan["report"]["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap()[44..].to_string())
        .collect();
    names.sort();
    let want: Vec<String> = (0..7).map(|i| format!("fib-{i}")).collect();
    assert_eq!(names, want, "{plan:#}");

    // Archive round trip with the dir: backend, read back by this Nix.
    let backend = format!("dir:{}", s("archives"));
    let save = run(
        "store",
        "archive save",
        &[
            bin,
            "archive",
            "save",
            "--archive",
            &backend,
            "--key",
            "k1",
            &chain6,
        ],
    );
    assert!(show(&save).contains("paths: 7"), "{}", show(&save));
    // A runner's store has a DB; make this empty one like it.
    run("restored", "init", &["nix-store", "--init"]);
    let r = run(
        "restored",
        "archive restore",
        &[
            bin,
            "archive",
            "restore",
            "--archive",
            &backend,
            "--key",
            "k1",
        ],
    );
    assert!(show(&r).contains("paths: 7 added"), "{}", show(&r));
    let q = run(
        "restored",
        "restored closure",
        &["nix-store", "-qR", &chain6],
    );
    assert_eq!(stdout_lines(&q).len(), 7);
    run(
        "restored",
        "restored store verifies",
        &["nix", "store", "verify", "--all", "--no-trust"],
    );
}

#[test]
fn nix_2_26_single_user_root() {
    single_user("trixie", "2.26");
}

#[test]
fn nix_2_34_single_user_root() {
    single_user("sid", "2.34");
}
