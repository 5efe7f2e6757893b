//! `push --to http://…` against a real nginx with WebDAV PUT (Debian's
//! nginx, `dav_methods PUT; create_full_put_path on;`): writes need
//! credentials (netrc basic auth, or a bearer token), Nix reads anonymously.

use crate::helpers::servers::*;
use crate::helpers::util::*;

fn push(env: &Env, url: &str, sec: &std::path::Path, path: &str) -> std::process::Command {
    let mut cmd = env.nixdelta(&["push", "--to", url, "--secret-key-file"]);
    cmd.arg(sec).arg(path);
    clean_creds(&mut cmd);
    cmd
}

#[test]
fn http_push_with_netrc_then_fresh_nix_substitutes() {
    let env = Env::new();
    let nginx = Nginx::start(&env.path("nginx"));
    let out = env.build("fib.nix", &["chain6"]);
    let chain6 = out[0].as_str();
    let (sec, public) = env.keygen("http-1");
    let url = nginx.url();

    // No credentials: refused with one line and exit 6, nothing published.
    let r = push(&env, &url, &sec, chain6).output().unwrap();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    let err = stderr(&r);
    assert!(
        err.contains("HTTP 401") && err.contains("access denied"),
        "{err}"
    );
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("nixdelta: error:"))
            .count(),
        1,
        "{err}"
    );
    assert!(narinfos(&nginx.root).is_empty());

    let netrc = nginx.netrc(&env.path(""));
    let r = ok(push(&env, &url, &sec, chain6)
        .arg("--netrc-file")
        .arg(&netrc)
        .env("NIXDELTA_LOG", "nixdelta=debug"));
    assert!(
        String::from_utf8_lossy(&r.stdout)
            .contains("7 paths considered, 0 already cached, 7 uploaded"),
        "{}",
        show(&r)
    );
    assert!(!stderr(&r).contains(HTTP_PASSWORD), "{}", show(&r));
    assert_eq!(narinfos(&nginx.root).len(), 7);

    // nginx's directory index lets verify list the narinfos.
    let v = assert_verify_clean(&env, &url, &[&public], &["--check-contents"]);
    assert!(
        v.contains("7 narinfos, 7 NARs present, 7 NARs hashed"),
        "{v}"
    );

    let fresh = realise_fresh(&env, "fresh", &url, &public, &[chain6]);
    assert!(fresh.status.success(), "{}", show(&fresh));

    // The netrc file through the environment, as CI would set it.
    let r = ok(push(&env, &url, &sec, chain6).env("NIXDELTA_NETRC_FILE", &netrc));
    assert!(String::from_utf8_lossy(&r.stdout).contains("7 already cached, 0 uploaded"));
}

#[test]
fn http_push_with_bearer_token_or_url_credentials() {
    let env = Env::new();
    let nginx = Nginx::start(&env.path("nginx"));
    let out = env.build("fib.nix", &["chain6"]);
    let chain6 = out[0].as_str();
    let (sec, public) = env.keygen("bearer-1");

    let url = format!("{}/bearer", nginx.bearer_url());
    let r = push(&env, &url, &sec, chain6)
        .env("NIXDELTA_CACHE_TOKEN", "wrong-token-123")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    assert!(!stderr(&r).contains("wrong-token-123"), "{}", show(&r));
    let r = ok(push(&env, &url, &sec, chain6).env("NIXDELTA_CACHE_TOKEN", HTTP_TOKEN));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("7 uploaded"),
        "{}",
        show(&r)
    );
    assert_verify_clean(&env, &url, &[&public], &[]);
    let fresh = realise_fresh(&env, "fresh", &url, &public, &[chain6]);
    assert!(fresh.status.success(), "{}", show(&fresh));

    // user:password in the URL: used, and never shown.
    let bad = format!(
        "http://{HTTP_USER}:wrong-pw-456@127.0.0.1:{}/userinfo",
        nginx.port
    );
    let r = push(&env, &bad, &sec, chain6).output().unwrap();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    assert!(!stderr(&r).contains("wrong-pw-456"), "{}", show(&r));
    assert!(
        stderr(&r).contains(&format!(
            "binary cache http://127.0.0.1:{}/userinfo",
            nginx.port
        )),
        "{}",
        show(&r)
    );
    let good = format!(
        "http://{HTTP_USER}:{HTTP_PASSWORD}@127.0.0.1:{}/userinfo",
        nginx.port
    );
    let r = ok(&mut push(&env, &good, &sec, chain6));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("7 uploaded"),
        "{}",
        show(&r)
    );
    assert!(!stderr(&r).contains(HTTP_PASSWORD), "{}", show(&r));
}

/// HTTPS behind a private CA: trusted through `NIX_SSL_CERT_FILE`, the
/// bundle Nix itself reads; without it the push is refused with one line.
/// Nix then substitutes over HTTPS with the same bundle.
#[test]
fn https_cache_behind_a_private_ca() {
    let env = Env::new();
    let nginx = Nginx::start(&env.path("nginx"));
    let out = env.build("fib.nix", &["chain6"]);
    let (sec, public) = env.keygen("https-1");
    let url = format!("{}/cache", nginx.tls_url());
    let mut untrusted = push(&env, &url, &sec, &out[0]);
    untrusted
        .env("NIXDELTA_CACHE_TOKEN", HTTP_TOKEN)
        .env("NIXDELTA_RETRY_DEADLINE", "2");
    let r = untrusted
        .env_remove("NIX_SSL_CERT_FILE")
        .env_remove("SSL_CERT_FILE")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    assert!(
        stderr(&r).to_lowercase().contains("certificate"),
        "{}",
        show(&r)
    );
    let mut trusted = push(&env, &url, &sec, &out[0]);
    trusted
        .env("NIXDELTA_CACHE_TOKEN", HTTP_TOKEN)
        .env("NIX_SSL_CERT_FILE", &nginx.ca);
    ok(&mut trusted);
    assert_eq!(narinfos(&nginx.root.join("cache")).len(), 7);
    let mut fresh = env.nix_on(&env.path("fresh"), "nix-store");
    fresh
        .env("NIX_SSL_CERT_FILE", &nginx.ca)
        .arg("--realise")
        .arg(&out[0]);
    fresh.args(["--max-jobs", "0", "--option", "substituters", &url]);
    fresh.args(["--option", "trusted-public-keys", &public]);
    let f = fresh.output().unwrap();
    assert!(f.status.success(), "{}", show(&f));
}
