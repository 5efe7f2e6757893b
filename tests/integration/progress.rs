//! Progress (issue 15 item 3): in a log (no terminal) one line per
//! interval, and none for a step shorter than it; on a terminal (a pty from
//! util-linux `script`) a redrawn bar.

use std::process::Command;

use crate::helpers::util::*;

/// A 40 MB path that does not compress, so each step takes a moment.
fn big_path(env: &Env) -> String {
    let mut data = vec![0u8; 40 << 20];
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut f, &mut data).unwrap();
    std::fs::write(env.path("big.bin"), &data).unwrap();
    stdout_lines(&ok(env
        .nix("nix-store")
        .arg("--add")
        .arg(env.path("big.bin"))))
    .remove(0)
}

#[test]
fn log_lines_per_interval_and_none_for_short_steps() {
    let env = Env::new();
    let path = big_path(&env);
    let (sec, _) = env.keygen("prog-1");
    let push = |cache: &str, interval: Option<&str>| {
        let mut cmd = env.nixdelta(&["push", "--to"]);
        cmd.arg(format!("file://{}", env.path(cache).display()))
            .arg("--secret-key-file")
            .arg(&sec)
            .arg(&path);
        if let Some(i) = interval {
            cmd.env("NIXDELTA_PROGRESS_INTERVAL", i);
        }
        ok(&mut cmd)
    };
    let out = push("c1", Some("0.01"));
    let lines: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| l.starts_with("nixdelta: push: "))
        .map(String::from)
        .collect();
    assert!(!lines.is_empty(), "{}", show(&out));
    assert!(
        lines[0].contains("/1 paths, ") && lines[0].contains("/41.9 MB, "),
        "{lines:?}"
    );
    assert!(lines[0].contains(" MB/s, ETA "), "{lines:?}");
    // The default interval (10 s) is longer than this push: no line.
    let quiet = push("c2", None);
    assert!(
        !stderr(&quiet).contains("nixdelta: push: "),
        "{}",
        show(&quiet)
    );

    // Archive save and restore count too.
    let backend = format!("dir:{}", env.path("archives").display());
    let save = ok(env
        .nixdelta(&[
            "archive",
            "save",
            "--archive",
            &backend,
            "--key",
            "prog",
            &path,
        ])
        .env("NIXDELTA_PROGRESS_INTERVAL", "0.01"));
    assert!(
        stderr(&save).contains("nixdelta: save: "),
        "{}",
        show(&save)
    );
    let fresh = env.path("fresh");
    ok(env.nix_on(&fresh, "nix-store").arg("--init"));
    let restore = ok(nixdelta()
        .arg("--store")
        .arg(&fresh)
        .args(["archive", "restore", "--archive", &backend, "--key", "prog"])
        .env("NIXDELTA_PROGRESS_INTERVAL", "0.01"));
    assert!(
        stderr(&restore).contains("nixdelta: restore: "),
        "{}",
        show(&restore)
    );
}

#[test]
fn a_terminal_gets_a_bar() {
    let Some(script) = which("script") else {
        panic!("util-linux script is missing");
    };
    let env = Env::new();
    let path = big_path(&env);
    let (sec, _) = env.keygen("prog-2");
    let line = format!(
        "{} --store {} push --to file://{} --secret-key-file {} {}",
        env!("CARGO_BIN_EXE_nixdelta"),
        env.store().display(),
        env.path("cache").display(),
        sec.display(),
        path
    );
    let out = Command::new(script)
        .args(["-qefc", &line, "/dev/null"])
        .env("NIX_CONFIG", NIX_CONFIG)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // Redrawn in place (carriage returns), with the bar and byte counts.
    assert!(text.contains("push: 0/1 paths ["), "{text}");
    assert!(text.contains('\r') && text.contains("MiB"), "{text}");
    assert!(
        !text.contains("nixdelta: push: "),
        "no log lines on a terminal: {text}"
    );
}
