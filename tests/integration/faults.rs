//! Faults between nixdelta and a real server (SeaweedFS, nginx), injected by
//! the proxy in `proxy.rs`: pushes through a flaky link complete and leave a
//! clean cache; failures that never stop end the push with one clear error
//! and still leave a clean cache (no narinfo without its NAR and references).

use std::time::{Duration, Instant};

use crate::helpers::proxy::*;
use crate::helpers::servers::*;
use crate::helpers::util::*;

/// Client timeout per attempt in these tests; the proxy's stalls outlast it.
const TIMEOUT_SECS: &str = "1";
const STALL: Duration = Duration::from_millis(2500);

fn push(env: &Env, url: &str, sec: &std::path::Path, paths: &[&str]) -> std::process::Command {
    let mut cmd = env.nixdelta(&["push", "--to", url, "--secret-key-file"]);
    cmd.arg(sec).args(paths);
    clean_creds(&mut cmd);
    with_aws_keys(&mut cmd);
    cmd.env("NIXDELTA_REQUEST_TIMEOUT", TIMEOUT_SECS);
    cmd
}

fn flaky(seed: u64) -> Rule {
    Rule::Flaky {
        share: 0.3,
        faults: ALL_FAULTS.to_vec(),
        seed,
    }
}

fn assert_every_fault_injected(proxy: &Proxy) {
    for f in ALL_FAULTS {
        if proxy.count(f) == 0 {
            let seen: Vec<String> = proxy
                .seen()
                .iter()
                .map(|s| format!("{} {} {:?}", s.method, s.path, s.fault))
                .collect();
            panic!("{f:?} never injected in:\n{}", seen.join("\n"));
        }
    }
}

#[test]
fn s3_through_flaky_link_push_completes_and_verifies() {
    let env = Env::new();
    let weed = Seaweed::start(&env.path("weed"));
    // A 40 MB NAR goes up in parts: part uploads are retried too.
    let top = build_blob_top(&env, 40, "flaky");
    let (sec, public) = env.keygen("flaky-1");
    let proxy = Proxy::start(weed.port, flaky(7), STALL);
    let r = ok(push(&env, &weed.s3_url_via(proxy.port), &sec, &[&top])
        .env("NIXDELTA_LOG", "nixdelta=info"));
    assert!(
        String::from_utf8_lossy(&r.stdout)
            .contains("9 paths considered, 0 already cached, 9 uploaded"),
        "{}",
        show(&r)
    );
    // The retries are summarised in one line, not one per request.
    assert!(stderr(&r).contains(" retried"), "{}", show(&r));
    assert_every_fault_injected(&proxy);
    assert_verify_clean(&env, &weed.s3_url(), &[&public], &["--check-contents"]);
    let fresh = realise_fresh(&env, "fresh", &weed.http_url(), &public, &[&top]);
    assert!(fresh.status.success(), "{}", show(&fresh));
}

#[test]
fn http_through_flaky_link_push_completes_and_verifies() {
    let env = Env::new();
    let nginx = Nginx::start(&env.path("nginx"));
    let out = env.build("fib.nix", &["chain6"]);
    let (sec, public) = env.keygen("flakyh-1");
    let proxy = Proxy::start(nginx.port, flaky(11), STALL);
    let netrc = nginx.netrc(&env.path(""));
    // Enough requests for every kind of fault: push, then push a second
    // copy of the closure under another prefix.
    for sub in ["a", "b", "c"] {
        let url = format!("http://127.0.0.1:{}/{sub}", proxy.port);
        let r = ok(push(&env, &url, &sec, &[&out[0]])
            .arg("--netrc-file")
            .arg(&netrc));
        assert!(
            String::from_utf8_lossy(&r.stdout).contains("7 uploaded"),
            "{}",
            show(&r)
        );
        assert_verify_clean(&env, &format!("{}/{sub}", nginx.url()), &[&public], &[]);
    }
    assert_every_fault_injected(&proxy);
    let fresh = realise_fresh(
        &env,
        "fresh",
        &format!("{}/a", nginx.url()),
        &public,
        &[&out[0]],
    );
    assert!(fresh.status.success(), "{}", show(&fresh));
}

#[test]
fn s3_failures_that_never_stop_end_the_push_and_keep_the_cache_clean() {
    let env = Env::new();
    let weed = Seaweed::start(&env.path("weed"));
    let out = env.build("fib.nix", &["chain6"]);
    let chain6 = out[0].as_str();
    let (sec, public) = env.keygen("never-1");
    // Every NAR upload fails, forever.
    let proxy = Proxy::start(
        weed.port,
        Rule::Always {
            method: "PUT",
            path_contains: "/nar/".into(),
            fault: Fault::Error500,
        },
        STALL,
    );
    let url = weed.s3_url_via(proxy.port);
    let start = Instant::now();
    let r = push(&env, &url, &sec, &[chain6])
        .env("NIXDELTA_RETRY_DEADLINE", "2")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    let err = stderr(&r);
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("nixdelta: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("HTTP 500"), "{err}");
    let v = assert_verify_clean(&env, &weed.s3_url(), &[&public], &[]);
    assert!(v.contains(" 0 narinfos"), "{v}");

    // One narinfo (chain-3's) can never be written: chain-0..2 are
    // published, chain-3 and everything that references it are not.
    let chain3 = closure(&env, chain6)
        .into_iter()
        .find(|p| p.ends_with("-chain-3"))
        .unwrap();
    let hash3 = chain3["/nix/store/".len()..][..32].to_string();
    proxy.set_rule(Rule::Always {
        method: "PUT",
        path_contains: format!("/{hash3}.narinfo"),
        fault: Fault::Error500,
    });
    let r = push(&env, &url, &sec, &[chain6])
        .env("NIXDELTA_RETRY_DEADLINE", "2")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    let line = String::from_utf8_lossy(&r.stdout);
    assert!(
        line.contains("3 uploaded, 1 failed, 3 held back"),
        "{}",
        show(&r)
    );
    assert!(stderr(&r).contains(&hash3), "{}", show(&r));
    let v = assert_verify_clean(&env, &weed.s3_url(), &[&public], &[]);
    assert!(v.contains(" 3 narinfos"), "{v}");

    // The link heals: a rerun completes the cache.
    proxy.set_rule(Rule::Pass);
    let r = ok(&mut push(&env, &url, &sec, &[chain6]));
    assert!(
        String::from_utf8_lossy(&r.stdout)
            .contains("7 paths considered, 3 already cached, 4 uploaded"),
        "{}",
        show(&r)
    );
    assert_verify_clean(&env, &weed.s3_url(), &[&public], &[]);

    // A target that fails everything: planning fails, one line, quickly.
    proxy.set_rule(Rule::Always {
        method: "HEAD",
        path_contains: "/".into(),
        fault: Fault::TooMany,
    });
    let out2 = env.build("fib.nix", &["fib6"]);
    let start = Instant::now();
    let r = push(&env, &url, &sec, &[&out2[0]])
        .env("NIXDELTA_RETRY_DEADLINE", "2")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    assert!(stderr(&r).contains("HTTP 429"), "{}", show(&r));
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
}
