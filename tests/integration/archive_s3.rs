//! The `s3://` archive backend against a real SeaweedFS (`weed mini`) that
//! checks SigV4: multipart save, exact and prefix lookup (ListObjectsV2),
//! parallel ranged download into a fresh store that then builds nothing.

use std::process::Command;

use crate::helpers::servers::{with_aws_keys, Seaweed};
use crate::helpers::store::{build_offline, report, valid_paths, verify_store};
use crate::helpers::util::*;

fn archive_cmd(env: &Env, store: &std::path::Path, args: &[&str]) -> Command {
    let _ = env;
    let mut cmd = nixdelta();
    cmd.arg("--store").arg(store).arg("archive").args(args);
    with_aws_keys(&mut cmd);
    cmd.env("NIXDELTA_HTTP_CHUNK_SIZE", "1024");
    cmd
}

#[test]
fn s3_save_then_restore_into_fresh_store() {
    let env = Env::new();
    let weed = Seaweed::start(&env.path("weed"));
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let s3 = weed.s3_url();
    let (bucket, query) = s3.split_once('?').unwrap();
    let url = format!("{bucket}/archives/ci?{query}");
    let key = "nixdelta-v1-x86_64-linux-s3test01";

    // Unsigned: refused by the server, one clear line, exit 6.
    let mut anon = archive_cmd(
        &env,
        &env.store(),
        &["save", "--archive", &url, "--key", key, &chain6],
    );
    anon.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let r = anon.output().unwrap();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    assert_eq!(
        stderr(&r).lines().filter(|l| l.contains("error")).count(),
        1,
        "{}",
        show(&r)
    );

    let s = ok(&mut archive_cmd(
        &env,
        &env.store(),
        &["save", "--archive", &url, "--key", key, &chain6],
    ));
    assert!(
        String::from_utf8_lossy(&s.stdout).contains("result: saved"),
        "{}",
        show(&s)
    );
    let again = ok(&mut archive_cmd(
        &env,
        &env.store(),
        &["save", "--archive", &url, "--key", key, &chain6],
    ));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("result: exists"),
        "{}",
        show(&again)
    );

    let fresh = env.path("fresh");
    let r = ok(&mut archive_cmd(
        &env,
        &fresh,
        &["restore", "--archive", &url, "--key", key],
    ));
    let out = String::from_utf8_lossy(&r.stdout).to_string();
    assert!(
        out.contains("result: hit") && out.contains("paths: 7 added"),
        "{out}"
    );
    assert_eq!(valid_paths(&env, &fresh), closure(&env, &chain6));
    verify_store(&env, &fresh);
    assert!(build_offline(&env, &fresh).status.success());

    let other = env.path("other");
    let r = ok(&mut archive_cmd(
        &env,
        &other,
        &[
            "restore",
            "--archive",
            &url,
            "--key",
            "nixdelta-v1-x86_64-linux-newlock",
        ],
    ));
    let out = String::from_utf8_lossy(&r.stdout).to_string();
    assert!(
        out.contains("result: partial") && out.contains(&format!("matched key: {key}")),
        "{out}"
    );
    let r = ok(&mut archive_cmd(
        &env,
        &other,
        &[
            "restore",
            "--archive",
            &url,
            "--key",
            "zz-1",
            "--restore-prefix",
            "zz-",
        ],
    ));
    assert!(String::from_utf8_lossy(&r.stdout).contains("result: miss"));
}

/// The archive's S3 backend is the binary cache's: `?profile=` reads the
/// shared credentials file, and the retry settings bound every request.
#[test]
fn s3_archive_reads_profiles_and_follows_the_retry_settings() {
    use crate::helpers::proxy::{Fault, Proxy, Rule};
    use crate::helpers::servers::{ACCESS_KEY, SECRET_KEY};
    use std::time::{Duration, Instant};

    let env = Env::new();
    let weed = Seaweed::start(&env.path("weed"));
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let creds = env.path("aws-credentials");
    std::fs::write(
        &creds,
        format!("[ci]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
    )
    .unwrap();
    let profile_cmd = |store: &std::path::Path, args: &[&str]| {
        let mut cmd = archive_cmd(&env, store, args);
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_CONFIG_FILE", env.path("no-aws-config"));
        cmd
    };
    let url = format!("{}&profile=ci", weed.s3_url());
    let key = "nixdelta-v1-x86_64-linux-profile01";
    // Saved, then restored into a fresh store, with the profile's keys only.
    for (store, args, result) in [
        (
            env.store(),
            vec!["save", "--archive", &url, "--key", key, &chain6],
            "saved",
        ),
        (
            env.path("fresh"),
            vec!["restore", "--archive", &url, "--key", key],
            "hit",
        ),
    ] {
        let out = ok(&mut profile_cmd(&store, &args));
        let want = format!("result: {result}");
        assert!(report(&out).contains(&want), "{}", show(&out));
    }
    let fresh = env.path("fresh");
    assert_eq!(valid_paths(&env, &fresh), closure(&env, &chain6));

    // Every lookup fails with 500: the retry deadline bounds the restore
    // (the archive's old loop took five attempts, 7.5 s, whatever it was).
    let proxy = Proxy::start(
        weed.port,
        Rule::Always {
            method: "HEAD",
            path_contains: ".nda".into(),
            fault: Fault::Error500,
        },
        Duration::from_secs(5),
    );
    let via = weed.s3_url_via(proxy.port);
    let start = Instant::now();
    let r = archive_cmd(
        &env,
        &env.path("other"),
        &["restore", "--archive", &via, "--key", key],
    )
    .env("NIXDELTA_RETRY_DEADLINE", "1")
    .output()
    .unwrap();
    let took = start.elapsed();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    let err = stderr(&r);
    // "… (gave up after N attempts in 1.0 s)": within the deadline.
    let secs: f64 = err
        .split(" attempts in ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry summary: {err}"));
    assert!(err.contains("HTTP 500") && secs <= 1.5, "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {err}");
    assert!(proxy.count(Fault::Error500) >= 2, "no retry: {err}");
}
