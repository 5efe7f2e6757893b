//! Bad input: one clear line, the documented exit code, nothing partial at
//! the target.

use std::os::unix::fs::PermissionsExt;

use crate::helpers::util::*;

/// Runs nixdelta expecting failure with `code`; returns its stderr.
fn fails(cmd: &mut std::process::Command, code: i32) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(code), "{}", show(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("nixdelta: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{err}");
    err
}

fn only_keys(env: &Env) -> bool {
    !env.path("cache").exists() || narinfos(&env.path("cache")).is_empty()
}

#[test]
fn missing_nix_db() {
    let env = Env::new();
    let (sec, _) = env.keygen("k-1");
    let err = fails(
        env.nixdelta(&["push", "--to", &env.cache_url(), "--secret-key-file"])
            .arg(&sec)
            .arg("/nix/store/3hwq2xx5krw904d987djcd0vbxa7hyrk-chain-6"),
        3,
    );
    assert!(err.contains("no Nix database at"), "{err}");
    assert!(err.contains(&env.store().display().to_string()), "{err}");
    assert!(!env.store().exists(), "a missing store must not be created");
    assert!(!env.path("cache").exists());
}

#[test]
fn unknown_and_invalid_paths() {
    let env = Env::new();
    env.build("fib.nix", &["fib3"]);
    let (sec, _) = env.keygen("k-1");
    let url = env.cache_url();
    let err = fails(
        env.nixdelta(&["push", "--to", &url, "--secret-key-file"])
            .arg(&sec)
            .arg("/etc/passwd"),
        4,
    );
    assert!(
        err.contains("/etc/passwd: not a path in the Nix store"),
        "{err}"
    );
    let err = fails(
        env.nixdelta(&["push", "--to", &url, "--secret-key-file"])
            .arg(&sec)
            .arg("/nix/store/not-a-hash"),
        4,
    );
    assert!(err.contains("not-a-hash"), "{err}");
    let missing = "/nix/store/3hwq2xx5krw904d987djcd0vbxa7hyrk-never-built";
    let err = fails(
        env.nixdelta(&["push", "--to", &url, "--secret-key-file"])
            .arg(&sec)
            .arg(missing),
        4,
    );
    assert!(err.contains(&format!("{missing} is not valid")), "{err}");
    assert!(only_keys(&env));
}

#[test]
fn bad_key_files() {
    let env = Env::new();
    let out = env.build("fib.nix", &["fib3"]);
    let url = env.cache_url();
    let (_, public) = env.keygen("k-1");
    let cases = [
        ("missing", None),
        ("garbage", Some("this is not a key")),
        ("short", Some("k-1:AAAA")),
        ("public", Some(public.as_str())),
    ];
    for (name, content) in cases {
        let f = env.path(name);
        if let Some(c) = content {
            std::fs::write(&f, c).unwrap();
        }
        let err = fails(
            env.nixdelta(&["push", "--to", &url, "--secret-key-file"])
                .arg(&f)
                .arg(&out[0]),
            5,
        );
        assert!(err.contains(&format!("{}: ", f.display())), "{name}: {err}");
        assert!(!err.contains("AAAA"), "key material in the message: {err}");
    }
    assert!(only_keys(&env));
}

#[test]
fn unwritable_target() {
    let env = Env::new();
    let out = env.build("fib.nix", &["fib3"]);
    let (sec, _) = env.keygen("k-1");
    let ro = env.path("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores permission bits: a path under a regular file can't be a directory.
    let blocked = env.path("file");
    std::fs::write(&blocked, "x").unwrap();
    let url = format!("file://{}/cache", blocked.display());
    let err = fails(
        env.nixdelta(&["push", "--to", &url, "--secret-key-file"])
            .arg(&sec)
            .arg(&out[0]),
        6,
    );
    assert!(err.contains(&format!("binary cache {url}")), "{err}");
    let err = fails(
        env.nixdelta(&["push", "--to", "ftp://example/x", "--secret-key-file"])
            .arg(&sec)
            .arg(&out[0]),
        6,
    );
    assert!(err.contains("unsupported URL scheme"), "{err}");
}

/// A store path changed behind Nix's back: the NAR hash differs from the DB,
/// the push fails naming the path, and no narinfo for it (or anything that
/// references it) appears.
#[test]
fn corrupted_store_path_is_refused() {
    let env = Env::new();
    let out = env.build("fib.nix", &["chain6"]);
    let (sec, _) = env.keygen("k-1");
    let chain3 = closure(&env, &out[0])
        .into_iter()
        .find(|p| p.ends_with("-chain-3"))
        .unwrap();
    let value = env.store().join(&chain3[1..]).join("value");
    std::fs::set_permissions(&value, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&value, "999\n").unwrap();
    let url = env.cache_url();
    let err = fails(
        env.nixdelta(&["push", "--to", &url, "--secret-key-file"])
            .arg(&sec)
            .arg(&out[0]),
        7,
    );
    assert!(err.contains(&chain3), "{err}");
    let cached: Vec<String> = narinfos(&env.path("cache"));
    // chain-0..2 don't depend on chain-3 and are published; 3..6 are not.
    assert_eq!(cached.len(), 3, "{cached:?}");
    for name in &cached {
        let text = std::fs::read_to_string(env.path("cache").join(name)).unwrap();
        let p = narinfo_field(&text, "StorePath").unwrap();
        assert!(
            p.ends_with("-chain-0") || p.ends_with("-chain-1") || p.ends_with("-chain-2"),
            "{p}"
        );
    }
    let nars = std::fs::read_dir(env.path("cache/nar")).unwrap().count();
    assert!(nars <= 6, "no NAR of the corrupt path: {nars}");
}

/// A store nixdelta cannot read must not stop the build: `run` warns, runs
/// the command, and exits with its code (with --strict it refuses instead).
#[test]
fn run_still_runs_the_command_when_the_store_is_unreadable() {
    let env = Env::new();
    // A directory where the DB file should be: neither SQLite nor Nix can open it.
    std::fs::create_dir_all(env.store().join("nix/var/nix/db/db.sqlite")).unwrap();
    let out = env
        .nixdelta(&["run", "--", "sh", "-c", "echo ran; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    assert!(
        stderr(&out).contains("not tracking this run"),
        "{}",
        show(&out)
    );
    let strict = env
        .nixdelta(&["run", "--strict", "--", "sh", "-c", "echo ran"])
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(3), "{}", show(&strict));
    assert!(
        strict.stdout.is_empty(),
        "the command must not run under --strict"
    );
}
