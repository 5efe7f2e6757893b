//! Hardening (issue 11): each fault found by a real server or bad input,
//! with the behaviour a user relies on afterwards.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::archive::{restore_into, verify_store};
use crate::util::*;

/// A derivation whose output is random bytes, written after `secs` of
/// sleep: two builds never agree, so a copy swapped over a built path
/// shows up as a hash mismatch.
fn write_random_nix(env: &Env, secs: u32) -> std::path::PathBuf {
    let file = env.path("random.nix");
    std::fs::write(
        &file,
        format!(
            r#"{{ salt }}:
let busybox = builtins.path {{
  name = "busybox-static"; path = /usr/bin;
  filter = p: t: baseNameOf p == "busybox";
}}; in
derivation {{
  name = "random"; system = builtins.currentSystem; inherit salt;
  builder = "${{busybox}}/busybox";
  args = [ "sh" "-c" "sleep {secs}; head -c 4096 /dev/urandom > $out" ];
}}
"#
        ),
    )
    .unwrap();
    file
}

fn build_random(env: &Env, store: &Path, file: &Path, salt: &str) -> std::process::Command {
    let mut cmd = env.nix_on(store, "nix-build");
    cmd.arg(file)
        .args(["--argstr", "salt", salt, "--no-out-link"]);
    cmd
}

/// Severe 1: `archive restore` into a store where Nix is building the very
/// path being restored. After taking the path's lock the restore must see
/// that Nix made it valid meanwhile and leave it alone.
#[test]
fn restore_racing_a_build_leaves_the_built_path() {
    let env = Env::new();
    let salt = format!("race-{}", std::process::id());
    let file = write_random_nix(&env, 6);
    // Another machine built it (with other random bytes) and saved it.
    let other = env.path("other");
    let out = stdout_lines(&ok(&mut build_random(&env, &other, &file, &salt))).remove(0);
    let backend = format!("dir:{}", env.path("archives").display());
    ok(nixdelta().arg("--store").arg(&other).args([
        "archive",
        "save",
        "--archive",
        &backend,
        "--key",
        "race",
        &out,
    ]));

    // This machine starts the same build; Nix holds the output's lock
    // while the builder sleeps.
    let store = env.store();
    let build = build_random(&env, &store, &file, &salt)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let real = store.join(out.trim_start_matches('/'));
    let lock = format!("{}.lock", real.display());
    let t = Instant::now();
    while !Path::new(&lock).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the build never locked {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let restore = restore_into(&env, &store, &backend, "race", &["--method", "direct"]);
    let built = build.wait_with_output().unwrap();
    assert!(built.status.success(), "{}", show(&built));
    assert!(restore.status.success(), "{}", show(&restore));
    let report = String::from_utf8_lossy(&restore.stdout);
    assert!(
        report.contains("0 added, 1 already valid"),
        "the restore must count the built path as already valid:\n{report}"
    );
    verify_store(&env, &store);
    // And the content is the build's, as the DB says.
    let listed = ok(env
        .nix_on(&store, "nix-store")
        .args(["--verify-path", &out]));
    assert!(listed.status.success());
}
