//! The Buildkite plugin: its hooks run by bats (Debian's `bats`) as the
//! agent runs them, against the built binary and real Nix, and plugin.yml
//! checked against its own JSON schema (tests/bats/buildkite.bats).

use std::process::Command;

use crate::helpers::util::*;

#[test]
fn plugin_hooks_under_bats() {
    let Some(bats) = runner("bats", "apt-get install bats") else {
        return;
    };
    let mut cmd = Command::new(bats);
    cmd.arg("--tap")
        .arg(repo().join("tests/bats"))
        .env("NIXDELTA_BIN", nixdelta_bin())
        .env("REPO", repo())
        .env("NIX_CONFIG", NIX_CONFIG)
        .env_remove("BUILDKITE")
        .env_remove("NIXDELTA_SECRET_KEY")
        .env_remove("NIXDELTA_STORE");
    let out = run_bounded(&mut cmd, 300);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "bats failed:\n{}", show(&out));
    assert!(!text.contains("not ok"), "{text}");
    assert!(
        text.lines().filter(|l| l.starts_with("ok ")).count() >= 6,
        "{text}"
    );
}
