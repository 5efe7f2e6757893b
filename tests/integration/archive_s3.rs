//! The `s3://` archive backend against a real SeaweedFS (`weed mini`) that
//! checks SigV4: multipart save, exact and prefix lookup (ListObjectsV2),
//! parallel ranged download into a fresh store that then builds nothing.

use std::process::Command;

use crate::archive::{build_offline, valid_paths, verify_store};
use crate::servers::{with_aws_keys, Seaweed};
use crate::util::*;

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
