//! Evaluated keys (issue 13 item 3): `nixdelta key --eval` keys by the
//! derivations a Nix file or installable evaluates to, and
//! `--key-from-eval` saves the job's archive under that key too.

use std::path::Path;
use std::process::Output;

use crate::helpers::util::*;

const PROJECT: &str = r#"# a project
let
  busybox = builtins.path {
    name = "busybox-static";
    path = /usr/bin;
    filter = p: t: baseNameOf p == "busybox";
  };
in derivation {
  name = "keyed-TAG";
  system = builtins.currentSystem;
  builder = "${busybox}/busybox";
  args = [ "sh" "-c" "echo TAG > $out" ];
}
"#;

fn project(dir: &Path, tag: &str, comment: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!("# {comment}\n{}", PROJECT.replace("TAG", tag));
    std::fs::write(dir.join("default.nix"), text).unwrap();
}

fn key(env: &Env, dir: &Path, extra: &[&str]) -> (String, Output) {
    let out = ok(env.nixdelta(&["key", "--key-dir"]).arg(dir).args(extra));
    (stdout_lines(&out)[0].clone(), out)
}

#[test]
fn an_evaluated_key_follows_the_derivation_not_the_files() {
    let env = Env::new();
    let p = env.path("project");
    project(&p, "one", "first");
    std::fs::write(p.join("README"), "v1").unwrap();
    let (files1, _) = key(&env, &p, &[]);
    let (eval1, out) = key(&env, &p, &["--eval", "default.nix"]);
    assert!(
        eval1.starts_with("nixdelta-v1-x86_64-linux-eval-"),
        "{eval1}"
    );
    assert!(stderr(&out).contains("evaluation took"), "{}", show(&out));

    // A comment and an unrelated file change the file key, not the evaluated one.
    project(&p, "one", "second");
    std::fs::write(p.join("README"), "v2").unwrap();
    let (files2, _) = key(&env, &p, &[]);
    let (eval2, _) = key(&env, &p, &["--eval", "default.nix"]);
    assert_ne!(files1, files2);
    assert_eq!(eval1, eval2);
    // Another derivation, another key.
    project(&p, "two", "second");
    let (eval3, _) = key(&env, &p, &["--eval", "default.nix"]);
    assert_ne!(eval1, eval3);

    // JSON: the key and the evaluation's cost.
    let (_, out) = key(&env, &p, &["--eval", "default.nix", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["key"], eval3.as_str());
    assert!(v["eval_seconds"].as_f64().unwrap() > 0.0, "{v}");

    // An expression that does not evaluate: one line, input error.
    std::fs::write(p.join("broken.nix"), "{ nope").unwrap();
    let bad = env
        .nixdelta(&["key", "--eval", "broken.nix", "--key-dir"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(8), "{}", show(&bad));
    assert!(stderr(&bad).contains("broken.nix"), "{}", show(&bad));
}

#[test]
fn key_from_eval_saves_the_archive_under_both_keys() {
    let env = Env::new();
    let p = env.path("project");
    project(&p, "saved", "x");
    let (sec, _) = env.keygen("eval-1");
    let archives = env.path("archives");
    let backend = format!("dir:{}", archives.display());
    let common = |cmd: &mut std::process::Command| {
        cmd.current_dir(&p)
            .args(["--archive", &backend, "--key-from-eval", "default.nix"])
            .arg("--state-dir")
            .arg(env.path("state"));
    };
    let mut start = env.nixdelta(&["start", "--no-configure"]);
    common(&mut start);
    let out = ok(&mut start);
    assert!(
        stderr(&out).contains("evaluated key nixdelta-v1-"),
        "{}",
        show(&out)
    );
    let built = stdout_lines(&ok(env
        .nix("nix-build")
        .arg(p.join("default.nix"))
        .arg("--no-out-link")))
    .pop()
    .unwrap();
    let mut finish = env.nixdelta(&["finish", "--to", &env.cache_url(), "--secret-key-file"]);
    finish.arg(&sec);
    common(&mut finish);
    let fin = ok(&mut finish);

    let (file_key, _) = key(&env, &p, &[]);
    let (eval_key, _) = key(&env, &p, &["--eval", "default.nix"]);
    for k in [&file_key, &eval_key] {
        let found = std::fs::read_dir(&archives).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(k.as_str())
        });
        assert!(found, "no archive for {k}: {}", show(&fin));
    }
    assert!(
        show(&fin).contains(&format!("archive {eval_key}: saved")),
        "{}",
        show(&fin)
    );

    // A fresh machine restores by the evaluated key alone (a Docker tag).
    let fresh = env.path("fresh");
    ok(env.nix_on(&fresh, "nix-store").arg("--init"));
    let r = ok(nixdelta().arg("--store").arg(&fresh).args([
        "archive",
        "restore",
        "--archive",
        &backend,
        "--key",
        &eval_key,
    ]));
    assert!(show(&r).contains("paths: 2 added"), "{}", show(&r));
    assert!(fresh.join(&built[1..]).exists());
}
