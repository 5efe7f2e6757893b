//! Environment archives (issue 13 item 1): `--env shell.nix` saves what
//! entering the shell needs; a fresh store with no substituters and the
//! network gone (the pinned file deleted) restores and enters the shell
//! with nothing built or fetched. The project's own build output is not in
//! the archive.

use std::path::Path;
use std::process::Command;

use crate::helpers::util::*;

/// A non-flake project: `shell.nix` needs a tool built from source and a
/// pinned file fetched during evaluation (as `import (fetchTarball …)`
/// of nixpkgs would be); `default.nix` is the project's build.
fn project(dir: &Path, pin: &Path, pin_hash: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let common = r#"
  busybox = builtins.path {
    name = "busybox-static";
    path = /usr/bin;
    filter = p: t: baseNameOf p == "busybox";
  };
  sh = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "${busybox}/busybox";
    args = [ "sh" "-c" script ];
  };"#;
    let shell = format!(
        r#"let {common}
  pinned = import (builtins.fetchurl {{ url = "file://{pin}"; sha256 = "{pin_hash}"; }});
  tool = sh "env-tool" "echo tool > $out";
in derivation {{
  name = "dev-shell-${{pinned}}";
  system = builtins.currentSystem;
  builder = "${{busybox}}/busybox";
  args = [ "sh" "-c" "exit 1" ];
  inherit tool;
}}
"#,
        pin = pin.display()
    );
    std::fs::write(dir.join("shell.nix"), shell).unwrap();
    let app = format!("let {common} in sh \"project-app\" \"echo app > $out\"\n");
    std::fs::write(dir.join("default.nix"), app).unwrap();
}

fn nix_shell(env: &Env, store: &Path, dir: &Path) -> Command {
    let mut cmd = env.nix_on(store, "nix-shell");
    cmd.current_dir(dir)
        .env("NIX_BUILD_SHELL", "/bin/sh")
        .args(["shell.nix", "--run", "true"]);
    cmd
}

#[test]
fn a_shell_nix_environment_is_entered_offline_from_its_archive() {
    let env = Env::new();
    let pin = env.path("pin.nix");
    std::fs::write(&pin, "\"v1\"\n").unwrap();
    let hash = {
        let out = ok(Command::new("nix-hash")
            .args(["--type", "sha256", "--flat", "--base32"])
            .arg(&pin));
        stdout_lines(&out)[0].clone()
    };
    let p = env.path("project");
    project(&p, &pin, &hash);
    let archives = env.path("archives");
    let backend = format!("dir:{}", archives.display());
    let job = |cmd: &str, store: &Path| {
        let mut c = nixdelta();
        c.current_dir(&p)
            .arg("--store")
            .arg(store)
            .args([cmd, "--archive", &backend, "--env", "shell.nix"])
            .arg("--state-dir")
            .arg(store.with_extension("state"));
        if cmd == "start" {
            c.arg("--no-configure");
        }
        c
    };

    // Job 1: a miss; it enters the shell, builds the project, saves.
    let one = env.path("one");
    let out = ok(&mut job("start", &one));
    assert!(show(&out).contains("miss"), "{}", show(&out));
    ok(&mut nix_shell(&env, &one, &p));
    let app = stdout_lines(&ok(env
        .nix_on(&one, "nix-build")
        .current_dir(&p)
        .args(["default.nix", "--no-out-link"])))
    .pop()
    .unwrap();
    let fin = ok(&mut job("finish", &one));
    assert!(show(&fin).contains(": saved:"), "{}", show(&fin));

    // Job 2: a fresh machine, no substituters, the pinned URL gone.
    std::fs::remove_file(&pin).unwrap();
    let two = env.path("two");
    let out = ok(&mut job("start", &two));
    assert!(show(&out).contains("hit"), "{}", show(&out));
    let mut enter = nix_shell(&env, &two, &p);
    enter.args(["--max-jobs", "0"]);
    let entered = enter.output().unwrap();
    assert!(entered.status.success(), "{}", show(&entered));
    assert!(
        !stderr(&entered).contains("will be built"),
        "{}",
        show(&entered)
    );
    // The archive held the shell's needs, not the project's output.
    assert!(
        !two.join(&app[1..]).exists(),
        "the project's output was archived"
    );
    assert!(one.join(&app[1..]).exists());
}

/// A flake devShell (its builder is Debian's static bash, as `nix
/// develop` wants bash): the archive holds the environment `nix develop`
/// builds; a fresh store enters it `--offline` with nothing built.
#[test]
fn a_flake_dev_shell_is_entered_offline_from_its_archive() {
    let bash = Path::new("/bin/bash-static");
    assert!(
        bash.exists(),
        "bash-static is not installed (scripts/setup.sh does it)"
    );
    let env = Env::new();
    let p = env.path("flake");
    std::fs::create_dir_all(p.join("bashdir")).unwrap();
    std::fs::copy(bash, p.join("bashdir/bash")).unwrap();
    std::fs::write(
        p.join("flake.nix"),
        r#"{
  outputs = { self }: let
    system = "x86_64-linux";
    bash = builtins.path { name = "bash-static"; path = ./bashdir; };
    sh = name: script: derivation {
      inherit name system;
      builder = "${bash}/bash";
      args = [ "-c" script ];
    };
    tool = sh "flake-tool" "echo tool > $out";
  in {
    packages.${system}.default = sh "flake-app" "echo app > $out";
    devShells.${system}.default = derivation {
      name = "flake-shell";
      inherit system tool;
      outputs = [ "out" ];
      builder = "${bash}/bash";
      args = [ "-c" "exit 1" ];
    };
  };
}
"#,
    )
    .unwrap();
    let shell = ".#devShells.x86_64-linux.default";
    let archives = env.path("archives");
    let backend = format!("dir:{}", archives.display());
    let job = |cmd: &str, store: &Path| {
        let mut c = nixdelta();
        c.current_dir(&p)
            .arg("--store")
            .arg(store)
            .args([cmd, "--archive", &backend, "--env", shell])
            .arg("--state-dir")
            .arg(store.with_extension("state"));
        if cmd == "start" {
            c.arg("--no-configure");
        }
        c
    };
    let develop = |store: &Path, extra: &[&str]| {
        let mut c = env.nix_on(store, "nix");
        c.current_dir(&p)
            .args(["develop", shell])
            .args(extra)
            .args(["-c", "true"]);
        c.output().unwrap()
    };

    let one = env.path("one");
    ok(&mut job("start", &one));
    let entered = develop(&one, &[]);
    assert!(entered.status.success(), "{}", show(&entered));
    let built = ok(env.nix_on(&one, "nix").current_dir(&p).args([
        "build",
        ".#default",
        "--no-link",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&built.stdout).unwrap();
    let app = v[0]["outputs"]["out"].as_str().unwrap().to_string();
    assert!(one.join(&app[1..]).exists());
    let fin = ok(&mut job("finish", &one));
    assert!(show(&fin).contains(": saved:"), "{}", show(&fin));

    let two = env.path("two");
    ok(&mut job("start", &two));
    let entered = develop(&two, &["--offline", "--max-jobs", "0"]);
    assert!(entered.status.success(), "{}", show(&entered));
    assert!(
        !stderr(&entered).contains("will be built"),
        "{}",
        show(&entered)
    );
    assert!(
        !two.join(&app[1..]).exists(),
        "the project's output was archived"
    );
}
