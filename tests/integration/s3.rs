//! `push --to s3://…` against a real SeaweedFS (`weed mini`) that checks
//! SigV4 signatures. Debian's Nix 2.8 has no s3:// store, so the fresh Nix
//! store reads the bucket as a plain HTTP binary cache
//! (`http://127.0.0.1:PORT/BUCKET`, anonymous GET allowed on the bucket).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::helpers::servers::*;
use crate::helpers::util::*;

fn push(env: &Env, url: &str, sec: &std::path::Path, paths: &[&str]) -> std::process::Command {
    let mut cmd = env.nixdelta(&["push", "--to", url, "--secret-key-file"]);
    cmd.arg(sec).args(paths);
    clean_creds(&mut cmd);
    with_aws_keys(&mut cmd);
    cmd
}

/// `N requests (HEAD a, PUT b), r retried` from a push's debug log.
fn requests(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(" requests (") && l.contains("binary cache s3://"))
        .unwrap_or_else(|| panic!("no request count in:\n{stderr}"));
    let before = line.split(" requests (").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn s3_push_then_fresh_nix_substitutes_over_http() {
    let env = Env::new();
    let weed = Seaweed::start(&env.path("weed"));
    let out = env.build("fib.nix", &["chain6"]);
    let chain6 = out[0].as_str();
    let (sec, public) = env.keygen("s3test-1");
    let url = weed.s3_url();

    // The server checks SigV4: no keys, or a wrong secret, is refused with
    // one clear line, exit 6, and the secret never shows.
    let mut anon = push(&env, &url, &sec, &[chain6]);
    anon.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let r = anon.output().unwrap();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    assert!(stderr(&r).contains("access denied"), "{}", show(&r));
    let mut wrong = push(&env, &url, &sec, &[chain6]);
    wrong.env("AWS_SECRET_ACCESS_KEY", "not-the-secret-xyz");
    let r = wrong.output().unwrap();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    // (A HEAD answer has no body, so no S3 error code: just the status.)
    assert!(stderr(&r).contains("HTTP 403"), "{}", show(&r));
    assert!(!stderr(&r).contains("not-the-secret-xyz"), "{}", show(&r));

    let r = ok(push(&env, &url, &sec, &[chain6]).env("NIXDELTA_LOG", "nixdelta=debug"));
    let line = String::from_utf8_lossy(&r.stdout);
    assert!(
        line.contains("7 paths considered, 0 already cached, 7 uploaded"),
        "{}",
        show(&r)
    );
    let err = stderr(&r);
    assert!(!err.contains(SECRET_KEY), "secret in the log:\n{err}");
    // Cold cache: HEAD narinfo, PUT NAR, PUT narinfo per path, plus
    // nix-cache-info (HEAD + PUT).
    assert!(requests(&err) <= 3 * 7 + 2, "{err}");

    let v = assert_verify_clean(&env, &url, &[&public], &["--check-contents"]);
    assert!(
        v.contains("7 narinfos, 7 NARs present, 7 NARs hashed"),
        "{v}"
    );

    let fresh = realise_fresh(&env, "fresh", &weed.http_url(), &public, &[chain6]);
    assert!(fresh.status.success(), "{}", show(&fresh));
    let value =
        std::fs::read_to_string(env.path("fresh").join(&chain6[1..]).join("value")).unwrap();
    assert_eq!(value.trim(), "8");

    let again = ok(&mut push(&env, &url, &sec, &[chain6]));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("7 already cached, 0 uploaded"),
        "{}",
        show(&again)
    );

    // A key prefix in the URL: the cache lives under it.
    let prefixed = format!(
        "s3://{BUCKET}/ci/main?endpoint={}&region=us-east-1",
        weed.endpoint()
    );
    ok(&mut push(&env, &prefixed, &sec, &[chain6]));
    let fresh = realise_fresh(
        &env,
        "fresh2",
        &format!("{}/ci/main", weed.http_url()),
        &public,
        &[chain6],
    );
    assert!(fresh.status.success(), "{}", show(&fresh));
    assert_verify_clean(&env, &prefixed, &[&public], &[]);
}

/// `verify` reports what a broken cache lacks: a NAR deleted behind the
/// cache's back, a narinfo whose reference is gone, a wrong signature key.
#[test]
fn s3_verify_finds_faults() {
    let env = Env::new();
    let weed = Seaweed::start(&env.path("weed"));
    let out = env.build("fib.nix", &["chain6"]);
    let (sec, public) = env.keygen("s3v-1");
    let url = weed.s3_url();
    ok(&mut push(&env, &url, &sec, &[&out[0]]));
    let (_, other) = {
        let e2 = Env::new();
        e2.keygen("other-1")
    };
    let r = verify(&env, &url, &[&other], &[]);
    assert_eq!(r.status.code(), Some(9), "{}", show(&r));
    let faults = String::from_utf8_lossy(&r.stdout);
    assert_eq!(
        faults
            .matches("no signature by a trusted key (signed by s3v-1)")
            .count(),
        7,
        "{faults}"
    );
    assert!(stderr(&r).contains("7 fault(s)"), "{}", show(&r));

    // Delete chain-0's narinfo (its dependents now point at nothing) and
    // one NAR, with the S3 API.
    let chain0 = closure(&env, &out[0])
        .into_iter()
        .find(|p| p.ends_with("-chain-0"))
        .unwrap();
    let hash0 = &chain0["/nix/store/".len()..][..32];
    let narinfo6 = weed_get(
        &weed,
        &format!("{}.narinfo", &out[0]["/nix/store/".len()..][..32]),
    );
    let nar6 = narinfo_field(&narinfo6, "URL").unwrap();
    weed.delete(&format!("{hash0}.narinfo"));
    weed.delete(&nar6);
    let r = verify(&env, &url, &[&public], &[]);
    assert_eq!(r.status.code(), Some(9), "{}", show(&r));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains(&format!("NAR {nar6} is missing")), "{text}");
    // chain-2 references chain-0 (chain-n references n-1 and n-2).
    assert_eq!(
        text.matches(&format!("references {chain0}, which has no narinfo"))
            .count(),
        1,
        "{text}"
    );
}

/// Anonymous GET of an object (the bucket is publicly readable).
fn weed_get(weed: &Seaweed, key: &str) -> String {
    let (code, body) = http_get(weed.port, &format!("/{BUCKET}/{key}")).unwrap();
    assert_eq!(code, 200, "{key}: {body}");
    body
}

/// `kill -9` of a push in the middle of a large multipart upload: the cache
/// stays consistent (`verify` clean: no narinfo for the interrupted path or
/// what references it), and a rerun completes it.
#[test]
fn s3_kill_9_mid_push_then_rerun() {
    let env = Env::new();
    let weed = Seaweed::start(&env.path("weed"));
    let top = build_blob_top(&env, 300, "kill");
    let (sec, public) = env.keygen("kill-1");
    let url = weed.s3_url();
    let mut child = push(&env, &url, &sec, &[&top])
        .env("NIXDELTA_LOG", "nixdelta=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut log = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Kill once two parts of the blob's NAR are in (of 19): mid-upload.
    let mut parts = 0;
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("part ") && line.contains(" uploaded") {
            parts += 1;
            if parts == 2 {
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{log}");
    }
    assert_eq!(parts, 2, "the push ended before a multipart upload:\n{log}");
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());

    let v = assert_verify_clean(&env, &url, &[&public], &[]);
    // The blob and top were not published; chain-0..6 may have been.
    let published: usize = v
        .split(" narinfos")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(published <= 7, "{v}");
    let r = realise_fresh(&env, "early", &weed.http_url(), &public, &[&top]);
    assert!(
        !r.status.success(),
        "top was substitutable before the push completed"
    );

    let rerun = ok(&mut push(&env, &url, &sec, &[&top]));
    let line = String::from_utf8_lossy(&rerun.stdout).into_owned();
    assert!(
        line.contains(&format!(
            "9 paths considered, {published} already cached, {} uploaded",
            9 - published
        )),
        "{line}"
    );
    assert_verify_clean(&env, &url, &[&public], &[]);
    let fresh = realise_fresh(&env, "fresh", &weed.http_url(), &public, &[&top]);
    assert!(fresh.status.success(), "{}", show(&fresh));
}

/// Four pushes at once, overlapping closures (the same 40 MB multipart NAR
/// in three of them), each job with its own signing key, into one bucket:
/// nothing is corrupted, every narinfo verifies, Nix substitutes it all.
#[test]
fn s3_four_concurrent_pushes_overlapping() {
    let env = Env::new();
    let weed = Seaweed::start(&env.path("weed"));
    let top = build_blob_top(&env, 40, "conc");
    let all = closure(&env, &top);
    assert_eq!(all.len(), 9, "{all:?}");
    let chain5 = all
        .iter()
        .find(|p| p.ends_with("-chain-5"))
        .unwrap()
        .clone();
    let blob = all.iter().find(|p| p.contains("-blob-")).unwrap().clone();
    let url = weed.s3_url();
    let roots: [&[&str]; 4] = [&[&top], &[&chain5], &[&blob, &chain5], &[&top]];
    let mut keys = Vec::new();
    let children: Vec<_> = roots
        .iter()
        .enumerate()
        .map(|(i, paths)| {
            let (sec, public) = env.keygen(&format!("job{i}-1"));
            keys.push(public);
            push(&env, &url, &sec, paths)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
    }
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let v = assert_verify_clean(&env, &url, &keys, &["--check-contents"]);
    assert!(
        v.contains("9 narinfos, 9 NARs present, 9 NARs hashed"),
        "{v}"
    );
    // Each narinfo carries the key of the job that wrote it last: trusting
    // the four jobs' keys, the whole closure is substitutable.
    let all_keys = keys.join(" ");
    let r = realise_fresh(&env, "fresh", &weed.http_url(), &all_keys, &[&top]);
    assert!(r.status.success(), "{}", show(&r));
}
