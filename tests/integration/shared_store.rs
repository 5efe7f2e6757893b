//! Job scoping (issue 12 item 2): two jobs of different projects share one
//! store through a real nix-daemon, overlapping in time, each pushing to
//! its own cache. Neither cache may get the other project's paths.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::daemon::NixDaemon;
use crate::helpers::util::*;

/// A project: a build-time dependency, a top that uses it, and an
/// import-from-derivation whose output only evaluation reads (no build
/// closure reaches it: the eval-time case of the scoping rule).
fn project(ws: &Path, name: &str) {
    std::fs::create_dir_all(ws).unwrap();
    let nix = r#"{ tag ? "0" }:
let
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
  };
  dep = sh "NAME-dep" "echo NAME > $out";
  gen = sh "NAME-gen-${tag}" "echo '\"NAME-${tag}\"' > $out";
in {
  # Evaluation alone builds gen (IFD); the string carries no context.
  word = import gen;
  top = sh "NAME-top" "cat ${dep} > $out; echo ${import gen} >> $out";
}
"#;
    std::fs::write(ws.join("default.nix"), nix.replace("NAME", name)).unwrap();
}

/// A Nix command of a job: through the daemon, in its workspace.
fn nix(d: &NixDaemon, ws: &Path, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(ws)
        .env("NIX_CONFIG", NIX_CONFIG)
        // `root`: the client reads the daemon's (chroot) store files
        // there, as an import-from-derivation must.
        .env(
            "NIX_REMOTE",
            format!(
                "unix://{}?root={}",
                d.socket().display(),
                d.store().display()
            ),
        );
    cmd
}

/// nixdelta of a job on the daemon's store, in its workspace (no CI
/// checkout variable: the workspace is where it runs).
fn nixdelta_in(d: &NixDaemon, ws: &Path, args: &[&str]) -> Command {
    let mut cmd = nixdelta();
    cmd.current_dir(ws)
        .env("NIXDELTA_CI", "none")
        .env_remove("GITHUB_WORKSPACE")
        .env_remove("BUILDKITE_BUILD_CHECKOUT_PATH")
        .env_remove("CI_PROJECT_DIR")
        .arg("--store")
        .arg(d.store())
        .args(args);
    cmd
}

fn start(d: &NixDaemon, ws: &Path, state: &Path) {
    ok(
        nixdelta_in(d, ws, &["start", "--archive", "none", "--no-configure"])
            .arg("--state-dir")
            .arg(state),
    );
}

fn finish(d: &NixDaemon, ws: &Path, state: &Path, cache: &Path, sec: &Path) -> Output {
    ok(nixdelta_in(d, ws, &["finish"])
        .arg("--state-dir")
        .arg(state)
        .arg("--to")
        .arg(format!("file://{}", cache.display()))
        .arg("--secret-key-file")
        .arg(sec))
}

/// The names (without hash) of the paths a file:// cache holds.
fn names(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = narinfos(cache)
        .iter()
        .map(|n| {
            let t = std::fs::read_to_string(cache.join(n)).unwrap();
            narinfo_field(&t, "StorePath").unwrap()[44..].to_string()
        })
        .collect();
    v.sort();
    v
}

fn build_top(d: &NixDaemon, ws: &Path) -> String {
    let out = ok(nix(d, ws, "nix-build").args(["-A", "top"]));
    stdout_lines(&out).pop().unwrap()
}

#[test]
fn concurrent_jobs_on_a_daemon_store_push_only_their_own_paths() {
    let env = Env::new();
    let d = NixDaemon::start(&env.path("daemon"));
    let (sec, public) = env.keygen("scope-1");
    let (ws_a, ws_b) = (env.path("alpha"), env.path("beta"));
    project(&ws_a, "alpha");
    project(&ws_b, "beta");
    let (state_a, state_b) = (env.path("state-a"), env.path("state-b"));
    let (cache_a, cache_b) = (env.path("cache-a"), env.path("cache-b"));

    // Job A starts alone and evaluates (its IFD output appears while no
    // other job runs: it is A's by the window rule).
    start(&d, &ws_a, &state_a);
    ok(nix(&d, &ws_a, "nix-instantiate").args(["--eval", "--read-write-mode", "-A", "word"]));
    // Job B starts; both build while the other runs.
    start(&d, &ws_b, &state_b);
    let top_b = build_top(&d, &ws_b);
    ok(nix(&d, &ws_a, "nix-instantiate").args([
        "--eval",
        "--read-write-mode",
        "-A",
        "word",
        "--argstr",
        "tag",
        "1",
    ]));
    let top_a = build_top(&d, &ws_a);
    // The daemon registered both result links as GC roots.
    let auto = d.store().join("nix/var/nix/gcroots/auto");
    let links: Vec<PathBuf> = std::fs::read_dir(&auto)
        .unwrap()
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect();
    for ws in [&ws_a, &ws_b] {
        assert!(links.contains(&ws.join("result")), "{links:?}");
    }

    let fin_a = finish(&d, &ws_a, &state_a, &cache_a, &sec);
    let fin_b = finish(&d, &ws_b, &state_b, &cache_b, &sec);

    // A: its build closure, and its IFD output from before B started. Not
    // B's, and not A's own IFD output from while B ran (nobody can tell
    // whose it is: held back, counted).
    assert_eq!(
        names(&cache_a),
        ["alpha-dep", "alpha-gen-0", "alpha-top", "busybox-static"],
        "{}",
        show(&fin_a)
    );
    // B: its build closure only (busybox predates B: A realised it).
    assert_eq!(
        names(&cache_b),
        ["beta-dep", "beta-top"],
        "{}",
        show(&fin_b)
    );
    for fin in [&fin_a, &fin_b] {
        let text = show(fin);
        assert!(text.contains("realised by another job"), "{text}");
        assert!(text.contains("other job(s) ran"), "{text}");
    }

    // Each fresh store gets its job's result from its own cache, nothing built.
    for (cache, top, fresh) in [(&cache_a, &top_a, "fresh-a"), (&cache_b, &top_b, "fresh-b")] {
        let url = format!("file://{}", cache.display());
        let out = env.realise_fresh(fresh, &url, &public, &[top]);
        assert!(out.status.success(), "{}", show(&out));
    }

    // A third job after both finished overlaps nobody: its whole diff,
    // eval-time paths included, is pushed as without scoping.
    let state_c = env.path("state-c");
    let cache_c = env.path("cache-c");
    start(&d, &ws_a, &state_c);
    ok(nix(&d, &ws_a, "nix-instantiate").args([
        "--eval",
        "--read-write-mode",
        "-A",
        "word",
        "--argstr",
        "tag",
        "2",
    ]));
    let fin_c = finish(&d, &ws_a, &state_c, &cache_c, &sec);
    assert_eq!(names(&cache_c), ["alpha-gen-2"], "{}", show(&fin_c));
    assert!(!show(&fin_c).contains("realised by another job"));
}

/// Where a job cannot write the registry (a non-root job, no shared dir),
/// start says so and the job goes on unscoped; `--scope off` skips it.
#[test]
fn an_unwritable_registry_is_a_warning_and_scope_off_skips_it() {
    let env = Env::new();
    ok(env.nix("nix-store").arg("--init"));
    let blocked = env.path("blocked");
    std::fs::write(&blocked, "a file, not a directory").unwrap();
    let state = env.path("state");
    let out = ok(env
        .nixdelta(&[
            "start",
            "--archive",
            "none",
            "--no-configure",
            "--state-dir",
        ])
        .arg(&state)
        .arg("--jobs-dir")
        .arg(blocked.join("jobs")));
    let text = stderr(&out);
    assert!(
        text.contains("jobs sharing this store cannot see this one"),
        "{text}"
    );
    assert!(text.contains(&blocked.display().to_string()), "{text}");
    let off = ok(env
        .nixdelta(&[
            "start",
            "--archive",
            "none",
            "--no-configure",
            "--scope",
            "off",
        ])
        .arg("--state-dir")
        .arg(&state));
    assert!(!stderr(&off).contains("registry"), "{}", show(&off));
    assert!(!env.store().join("nix/var/nixdelta").exists());
    let bad = env
        .nixdelta(&["start", "--scope", "maybe"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", show(&bad));
}
