//! Closure mode on a warm runner: dependencies built by an earlier job
//! predate `start`, so the store diff never sees them; the build-time
//! closure of the job's roots does.

use std::path::Path;
use std::process::Output;

use crate::helpers::util::*;

/// The outputs (no `.drv`) of the build-time closure of `drv`, as Nix's
/// own `nix-store -qR --include-outputs` lists them.
fn build_closure_outputs(env: &Env, drv: &str) -> Vec<String> {
    let out = ok(env.nix("nix-store").args(["-qR", "--include-outputs", drv]));
    let mut v: Vec<String> = stdout_lines(&out)
        .into_iter()
        .filter(|p| !p.ends_with(".drv"))
        .collect();
    v.sort();
    v
}

fn deriver(env: &Env, path: &str) -> String {
    stdout_lines(&ok(env.nix("nix-store").args(["-qd", path]))).remove(0)
}

/// `finish` on the job's state, pushing to `cache` with `extra` options.
fn finish(env: &Env, dir: &Path, sec: &Path, cache: &str, extra: &[&str]) -> Output {
    ok(env
        .nixdelta(&["finish", "--to", cache, "--secret-key-file"])
        .arg(sec)
        .arg("--state-dir")
        .arg(env.path("state"))
        .args(extra)
        .current_dir(dir)
        .env("NIXDELTA_CI", "none"))
}

/// fib4 (and so fib0..fib3 and busybox) is built before `start`; the job
/// builds only fib5 and fib6. Diff mode pushes those two and says how many
/// build-time dependencies it left behind; a fresh store cannot get the
/// build closure from that cache. `--closure-of ./result`, of the `.drv`,
/// and `--closure auto` each push the whole build closure: a fresh store
/// substitutes every output in it with `--max-jobs 0`, signatures required.
#[test]
fn a_warm_runner_pushes_the_build_closure_with_closure_mode() {
    let env = Env::new();
    let (sec, public) = env.keygen("closure-1");
    env.build("fib.nix", &["fib4"]);
    let work = env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    // The cache key (so the warm manifest) comes from the project's flake.
    std::fs::write(work.join("flake.nix"), "{ outputs = _: { }; }\n").unwrap();
    ok(env
        .nixdelta(&["start", "--state-dir"])
        .arg(env.path("state"))
        .env("NIXDELTA_CI", "none"));
    let b = ok(env
        .nix("nix-build")
        .arg(example("fib.nix"))
        .args(["-A", "fib6", "-o"])
        .arg(work.join("result")));
    let built = stderr(&b).matches("building '").count();
    assert_eq!(
        built,
        2,
        "only fib5 and fib6 are built in the job: {}",
        show(&b)
    );
    let fib6 = stdout_lines(&b).remove(0);
    let drv = deriver(&env, &fib6);
    let outputs = build_closure_outputs(&env, &drv);
    assert!(outputs.len() > 5, "{outputs:?}");
    let refs: Vec<&str> = outputs.iter().map(String::as_str).collect();

    // Diff mode: the two new outputs, and the hint with the exact count.
    let cache = |n: &str| format!("file://{}", env.path(n).display());
    let out = finish(&env, &work, &sec, &cache("diff"), &[]);
    let predating = outputs.len() - 2;
    let err = show(&out);
    assert!(
        err.contains(&format!("{predating} build-time dependencies"))
            && err.contains("closure: auto"),
        "{err}"
    );
    assert_eq!(narinfos(&env.path("diff")).len(), 2);
    let f = env.realise_fresh("fresh-diff", &cache("diff"), &public, &refs);
    assert!(
        !f.status.success(),
        "the diff's cache had the whole closure?"
    );

    for (name, extra) in [
        ("result", vec!["--closure-of", "./result"]),
        ("drv", vec!["--closure-of", drv.as_str()]),
        ("auto", vec!["--closure", "auto"]),
    ] {
        let out = finish(&env, &work, &sec, &cache(name), &extra);
        let err = show(&out);
        assert!(
            !err.contains("closure: auto` ("),
            "{name}: no hint in closure mode: {err}"
        );
        assert!(err.contains("existence checks"), "{name}: {err}");
        let mut cached = narinfos(&env.path(name));
        cached.sort();
        let mut want: Vec<String> = outputs
            .iter()
            .map(|p| format!("{}.narinfo", &p.trim_start_matches("/nix/store/")[..32]))
            .collect();
        want.sort();
        assert_eq!(cached, want, "{name}: exactly the build closure's outputs");
        let f = env.realise_fresh(&format!("fresh-{name}"), &cache(name), &public, &refs);
        assert!(f.status.success(), "{name}: {}", show(&f));
    }

    // A second closure push to the same cache: the warm manifest (written
    // by the first) answers the existence checks.
    let out = finish(
        &env,
        &work,
        &sec,
        &cache("result"),
        &["--closure-of", "./result"],
    );
    let err = show(&out);
    assert!(err.contains("      0  to upload"), "{err}");
    assert!(
        err.contains(&format!(
            "({} known without asking: warm manifest, background uploader)",
            outputs.len()
        )),
        "{err}"
    );

    // Bad roots: one line, before anything is pushed.
    for (bad, code) in [("no-such-thing", 2), ("./missing-result", 4)] {
        let r = env
            .nixdelta(&["finish", "--to", &cache("bad"), "--secret-key-file"])
            .arg(&sec)
            .arg("--state-dir")
            .arg(env.path("state"))
            .args(["--closure-of", bad, "--strict"])
            .current_dir(&work)
            .env("NIXDELTA_CI", "none")
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(code), "{bad}: {}", show(&r));
        assert!(stderr(&r).contains(bad), "{}", show(&r));
    }
    assert!(
        !env.path("bad").join("nix-cache-info").exists() || narinfos(&env.path("bad")).is_empty()
    );
}

/// A flake installable as the root: its derivation's closure, evaluated
/// into the job's store.
#[test]
fn a_flake_installable_is_a_closure_root() {
    let env = Env::new();
    let (sec, public) = env.keygen("closure-2");
    let repo = env.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::create_dir_all(repo.join("bin")).unwrap();
    std::fs::copy("/usr/bin/busybox", repo.join("bin/busybox")).unwrap();
    std::fs::write(
        repo.join("flake.nix"),
        r#"{
  outputs = { self }: let
    sh = name: script: deps: derivation ({
      inherit name; system = "x86_64-linux";
      builder = "${./bin}/busybox"; args = [ "sh" "-c" script ];
    } // deps);
    a = sh "dep-a" "echo a > $out" {};
    b = sh "top-b" "cat $a > $out; echo b >> $out" { inherit a; };
  in { packages.x86_64-linux.default = b; };
}
"#,
    )
    .unwrap();
    let flake = format!("path:{}#default", repo.display());
    // dep-a is built by an earlier job; the job builds top-b.
    ok(env
        .nix("nix")
        .args(["build", "--no-link"])
        .arg(format!("path:{}#default", repo.display())));
    ok(env
        .nixdelta(&["start", "--state-dir"])
        .arg(env.path("state"))
        .env("NIXDELTA_CI", "none"));
    let out = finish(
        &env,
        &repo,
        &sec,
        &env.cache_url(),
        &["--closure-of", &flake],
    );
    let err = show(&out);
    assert!(err.contains("closure: "), "{err}");
    let drv = stdout_lines(&ok(env
        .nix("nix")
        .args(["path-info", "--derivation"])
        .arg(&flake)))
    .remove(0);
    let outputs = build_closure_outputs(&env, &drv);
    let refs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let f = env.realise_fresh("fresh", &env.cache_url(), &public, &refs);
    assert!(f.status.success(), "{}", show(&f));
}
