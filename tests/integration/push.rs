//! `nixdelta push` to a file:// cache, read back by real Nix.

use crate::helpers::util::*;

/// The fib DAG with runtime references: push its closure, then a fresh store
/// substitutes every path with nothing built and signatures required.
#[test]
fn fresh_store_substitutes_pushed_closure() {
    let env = Env::new();
    let out = env.build("fib.nix", &["chain6"]);
    let chain6 = &out[0];
    let (sec, public) = env.keygen("test-1");
    let url = env.cache_url();
    let push = ok(env
        .nixdelta(&["push", "--to", &url, "--secret-key-file"])
        .arg(&sec)
        .arg(chain6));
    let line = String::from_utf8_lossy(&push.stdout);
    let want = closure(&env, chain6);
    assert_eq!(want.len(), 7, "chain-0..6");
    assert!(
        line.contains("7 paths considered, 0 already cached, 7 uploaded"),
        "{line}"
    );
    assert_eq!(narinfos(&env.path("cache")).len(), 7);

    let r = env.realise_fresh("fresh", &url, &public, &[chain6]);
    assert!(r.status.success(), "{}", show(&r));
    let mut got = ok(env
        .nix_on(&env.path("fresh"), "nix-store")
        .args(["-qR", chain6]))
    .stdout;
    got.retain(|_| true);
    let mut got: Vec<String> = String::from_utf8_lossy(&got)
        .lines()
        .map(String::from)
        .collect();
    got.sort();
    assert_eq!(got, want);
    let value =
        std::fs::read_to_string(env.path("fresh").join(&chain6[1..]).join("value")).unwrap();
    assert_eq!(value.trim(), "8");

    // Nix's own checker: every NAR's hash and one trusted signature.
    let v = env
        .nix_on(&env.store(), "nix")
        .args(["store", "verify", "--all", "--sigs-needed", "1"])
        .args(["--store", &url])
        .args(["--option", "trusted-public-keys", &public])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", show(&v));
}

/// A wrong trusted key must make Nix refuse the cache: the signatures are
/// really checked, not just present.
#[test]
fn fresh_store_rejects_untrusted_signatures() {
    let env = Env::new();
    let chain = env.build("fib.nix", &["chain6"]);
    let (sec, _) = env.keygen("test-1");
    let other = {
        let e2 = Env::new();
        e2.keygen("test-1").1
    };
    let url = env.cache_url();
    ok(env
        .nixdelta(&["push", "--to", &url, "--secret-key-file"])
        .arg(&sec)
        .arg(&chain[0]));
    let r = env.realise_fresh("fresh", &url, &other, &[&chain[0]]);
    assert!(
        !r.status.success(),
        "Nix accepted paths signed by an untrusted key"
    );
}

/// A second push of the same closure uploads nothing; a push of a larger
/// closure uploads only what is missing.
#[test]
fn push_skips_what_the_cache_has() {
    let env = Env::new();
    let out = env.build("fib.nix", &["chain6"]);
    let (sec, _) = env.keygen("k-1");
    let url = env.cache_url();
    let chain4 = closure(&env, &out[0])
        .into_iter()
        .find(|p| p.ends_with("-chain-4"))
        .unwrap();
    let first = ok(env
        .nixdelta(&["push", "--to", &url, "--secret-key-file"])
        .arg(&sec)
        .arg(&chain4));
    assert!(String::from_utf8_lossy(&first.stdout)
        .contains("5 paths considered, 0 already cached, 5 uploaded"));
    let second = ok(env
        .nixdelta(&["push", "--to", &url, "--secret-key-file"])
        .arg(&sec)
        .arg(&out[0]));
    let line = String::from_utf8_lossy(&second.stdout);
    assert!(
        line.contains("7 paths considered, 5 already cached, 2 uploaded"),
        "{line}"
    );
    let third = ok(env
        .nixdelta(&["push", "--to", &url, "--secret-key-file"])
        .arg(&sec)
        .arg(&out[0]));
    assert!(String::from_utf8_lossy(&third.stdout).contains("7 already cached, 0 uploaded"));
}

/// nixdelta's narinfo agrees with the one `nix copy` writes for the same
/// path on every field except URL, FileHash, FileSize and Sig.
#[test]
fn narinfo_matches_nix_copy() {
    let env = Env::new();
    let out = env.build("fib.nix", &["chain6"]);
    let (sec, _) = env.keygen("k-1");
    let ours = env.path("ours");
    ok(env
        .nixdelta(&[
            "push",
            "--to",
            &format!("file://{}", ours.display()),
            "--secret-key-file",
        ])
        .arg(&sec)
        .arg(&out[0]));
    let theirs = env.path("theirs");
    ok(env
        .nix("nix")
        .args(["copy", "--to"])
        .arg(format!(
            "file://{}?compression=zstd&secret-key={}",
            theirs.display(),
            sec.display()
        ))
        .arg(&out[0]));
    let names = narinfos(&theirs);
    assert_eq!(names, narinfos(&ours));
    for name in names {
        let a = std::fs::read_to_string(ours.join(&name)).unwrap();
        let b = std::fs::read_to_string(theirs.join(&name)).unwrap();
        let keep = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| {
                    !["URL:", "FileHash:", "FileSize:", "Sig:"]
                        .iter()
                        .any(|f| l.starts_with(f))
                })
                .map(String::from)
                .collect()
        };
        assert_eq!(keep(&a), keep(&b), "{name}");
        // Same key, same fingerprint: ed25519 signatures are deterministic.
        assert_eq!(narinfo_field(&a, "Sig"), narinfo_field(&b, "Sig"), "{name}");
    }
}

/// Store paths given through a `result`-style symlink and with a sub-path.
#[test]
fn push_accepts_links_and_subpaths() {
    let env = Env::new();
    let out = env.build("fib.nix", &["chain6"]);
    let link = env.path("result");
    std::os::unix::fs::symlink(&out[0], &link).unwrap();
    let (sec, _) = env.keygen("k-1");
    let url = env.cache_url();
    let sub = format!("{}/value", env.store().join(&out[0][1..]).display());
    let r = ok(env
        .nixdelta(&["push", "--to", &url, "--secret-key-file"])
        .arg(&sec)
        .arg(&link)
        .arg(&sub));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("7 paths considered"),
        "{}",
        show(&r)
    );
}
