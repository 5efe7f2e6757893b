//! Store helpers of the archive tests: save a closure, restore into a
//! fresh store, list and verify what is valid, build offline.

use std::path::Path;
use std::process::Output;

use crate::helpers::util::*;

/// Saves the chain6 closure of `env` to `dir:<env>/archives` under `key`.
pub fn save_chain(env: &Env, backend: &str, key: &str) -> (String, Output) {
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let out = ok(&mut env.nixdelta(&[
        "archive",
        "save",
        "--archive",
        backend,
        "--key",
        key,
        &chain6,
    ]));
    (chain6, out)
}

pub fn restore_into(env: &Env, store: &Path, backend: &str, key: &str, extra: &[&str]) -> Output {
    let mut cmd = nixdelta();
    cmd.arg("--store")
        .arg(store)
        .args(["archive", "restore", "--archive", backend, "--key", key])
        .args(extra);
    let _ = env;
    cmd.output().unwrap()
}

/// Valid paths of a chroot store, sorted.
pub fn valid_paths(env: &Env, store: &Path) -> Vec<String> {
    let db = store.join("nix/var/nix/db/db.sqlite");
    if !db.exists() {
        return vec![];
    }
    let out = ok(env.nix_on(store, "nix").args(["path-info", "--all"]));
    let mut v: Vec<String> = stdout_lines(&out);
    v.sort();
    v
}

/// Nix's own check: every valid path's contents match its narHash.
pub fn verify_store(env: &Env, store: &Path) {
    if !store.join("nix/var/nix/db/db.sqlite").exists() {
        return;
    }
    let out = ok(env
        .nix_on(store, "nix-store")
        .args(["--verify", "--check-contents"]));
    let err = stderr(&out);
    assert!(!err.contains("modified") && !err.contains("error"), "{err}");
}

/// `nix-build -A chain6` in `store` with nothing to build or substitute.
pub fn build_offline(env: &Env, store: &Path) -> Output {
    env.nix_on(store, "nix-build")
        .arg(example("fib.nix"))
        .args(["-A", "chain6", "--no-out-link", "--max-jobs", "0"])
        .args(["--option", "substituters", ""])
        .output()
        .unwrap()
}

/// A command's stdout (the archive commands print their report there).
pub fn report(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
