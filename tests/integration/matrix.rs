//! The Nix version matrix (issue 12 item 5): the host-built `nixdelta` runs
//! in debootstrapped Debian chroots against their own, newer Nix
//! (trixie: 2.26, sid: 2.34), created once and cached by
//! scripts/nix-chroots.sh. No chroot (no mirror) fails the test loudly.

use crate::helpers::util::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The cached chroot for `suite`, built on first use; panics if it cannot be.
fn chroot(suite: &str) -> PathBuf {
    let out = Command::new(repo().join("scripts/nix-chroots.sh"))
        .arg(suite)
        .output()
        .unwrap();
    assert!(out.status.success(), "no {suite} chroot:\n{}", show(&out));
    let root = std::env::var("NIXDELTA_CHROOTS")
        .unwrap_or_else(|_| "/var/cache/nixdelta-test/chroots".into());
    PathBuf::from(root).join(suite)
}

/// Runs `args` inside `root` with the test dir and the repo (examples, the
/// built binary) bind-mounted at their own paths, and `env/<store>/nix`
/// bind-mounted on the chroot's /nix: the store is at /nix/store there, as
/// Nix ≥ 2.26 with `sandbox = false` runs builders unmapped, so a diverted
/// `--store DIR` cannot build (found here; Nix 2.8 forced a chroot). Every mount lives in a
/// private mount namespace and dies with the command, so parallel tests
/// never see each other's mounts and nothing is left behind.
fn inside(root: &Path, env: &Env, store: &str, args: &[&str]) -> Output {
    let script = r#"set -e; r=$1; shift
mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"
for d in "$T" "$R"; do mount --bind "$d" "$r$d"; done
mkdir -p "$S"; mount --bind "$S" "$r/nix"
exec chroot "$r" env NIX_CONFIG="$NC" "$@""#;
    let test_dir = env.dir.path();
    for d in [test_dir, &repo(), Path::new("/nix")] {
        std::fs::create_dir_all(root.join(d.strip_prefix("/").unwrap())).unwrap();
    }
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(root)
        .args(args)
        .env("T", test_dir)
        .env("R", repo())
        .env("S", env.path(store).join("nix"))
        .env("NC", NIX_CONFIG)
        .output()
        .unwrap()
}

fn good(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what}:\n{}", show(&out));
    out
}

/// Single-user root on the chroot's Nix, one store per step: push,
/// fresh-store substitution, archive round trip.
fn single_user(suite: &str, version: &str) {
    let root = chroot(suite);
    let env = Env::new();
    let s = |p: &str| env.path(p).display().to_string();
    let run = |store: &str, what: &str, args: &[&str]| good(inside(&root, &env, store, args), what);
    let bin = env!("CARGO_BIN_EXE_nixdelta");
    let ver = run("store", "nix --version", &["nix", "--version"]);
    assert!(
        String::from_utf8_lossy(&ver.stdout).contains(version),
        "{}",
        show(&ver)
    );

    let fib = example("fib.nix").display().to_string();
    let b = run(
        "store",
        "build chain6",
        &["nix-build", &fib, "-A", "chain6", "--no-out-link"],
    );
    let chain6 = stdout_lines(&b).pop().unwrap();
    run(
        "store",
        "keygen",
        &[bin, "keygen", "m-1", "--out", &s("keys")],
    );
    let public = std::fs::read_to_string(env.path("keys/m-1.pub")).unwrap();
    let public = public.trim();

    // Push, then a fresh store substitutes the closure, nothing built.
    let url = format!("file://{}", s("cache"));
    let sec = s("keys/m-1.sec");
    let push = run(
        "store",
        "push",
        &[
            bin,
            "push",
            "--to",
            &url,
            "--secret-key-file",
            &sec,
            &chain6,
        ],
    );
    let line = String::from_utf8_lossy(&push.stdout);
    assert!(
        line.contains("7 paths considered, 0 already cached, 7 uploaded"),
        "{line}"
    );
    assert_eq!(narinfos(&env.path("cache")).len(), 7);
    let realise = [
        "nix-store",
        "--realise",
        &chain6,
        "--max-jobs",
        "0",
        "--option",
        "substituters",
        &url,
        "--option",
        "trusted-public-keys",
        public,
        "--option",
        "require-sigs",
        "true",
    ];
    run("fresh", "fresh store substitutes", &realise);
    let value = env.path("fresh").join(&chain6[1..]).join("value");
    assert_eq!(std::fs::read_to_string(value).unwrap().trim(), "8");

    // The store diff reads this Nix's DB schema: start, build, finish pushes
    // only what was realised after start (fib-0..6), none of the chain.
    let state = s("state");
    run("store", "start", &[bin, "start", "--state-dir", &state]);
    run(
        "store",
        "build fib6",
        &["nix-build", &fib, "-A", "fib6", "--no-out-link"],
    );
    let url2 = format!("file://{}", s("cache2"));
    let fin = run(
        "store",
        "finish",
        &[
            bin,
            "finish",
            "--json",
            "--state-dir",
            &state,
            "--to",
            &url2,
            "--secret-key-file",
            &sec,
        ],
    );
    let plan: serde_json::Value = serde_json::from_slice(&fin.stdout).unwrap();
    let mut names: Vec<String> = plan["report"]["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap()[44..].to_string())
        .collect();
    names.sort();
    let want: Vec<String> = (0..7).map(|i| format!("fib-{i}")).collect();
    assert_eq!(names, want, "{plan:#}");

    // Archive round trip with the dir: backend, read back by this Nix.
    let backend = format!("dir:{}", s("archives"));
    let save = run(
        "store",
        "archive save",
        &[
            bin,
            "archive",
            "save",
            "--archive",
            &backend,
            "--key",
            "k1",
            &chain6,
        ],
    );
    assert!(show(&save).contains("paths: 7"), "{}", show(&save));
    // A runner's store has a DB; make this empty one like it.
    run("restored", "init", &["nix-store", "--init"]);
    let r = run(
        "restored",
        "archive restore",
        &[
            bin,
            "archive",
            "restore",
            "--archive",
            &backend,
            "--key",
            "k1",
        ],
    );
    assert!(show(&r).contains("paths: 7 added"), "{}", show(&r));
    let q = run(
        "restored",
        "restored closure",
        &["nix-store", "-qR", &chain6],
    );
    assert_eq!(stdout_lines(&q).len(), 7);
    run(
        "restored",
        "restored store verifies",
        &["nix", "store", "verify", "--all", "--no-trust"],
    );
    single_user_eval_time(&root, &env);
}

/// Eval-time paths on single-user root: start, a build whose evaluation
/// fetches and imports from a derivation, finish pushes the fetched
/// file, the tarball, the IFD output and the builtins.path; a fresh store
/// then builds the project from the cache with `--max-jobs 0`.
fn single_user_eval_time(root: &Path, env: &Env) {
    let bin = env!("CARGO_BIN_EXE_nixdelta");
    let fixture = crate::track::eval_fixture(env);
    let args: String = fixture
        .iter()
        .map(|(k, v)| format!(" --argstr {k} '{v}'"))
        .collect();
    let vars = [
        ("BIN", bin.to_string()),
        ("EVAL", example("eval-time.nix").display().to_string()),
        ("ARGS", args),
    ];
    let job = r#"set -eu
"$BIN" start --state-dir "$T/ev-st" --archive none
eval "nix-build $EVAL -A result --no-out-link --argstr salt ev $ARGS" > "$T/ev-out.txt"
"$BIN" finish --json --state-dir "$T/ev-st" --to "file://$T/ev-cache" --secret-key-file "$T/keys/m-1.sec" > "$T/ev-finish.json"
"#;
    good(script_inside(root, env, "ev", &vars, job), "eval-time job");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("ev-finish.json")).unwrap())
            .unwrap();
    let names: Vec<String> = plan["report"]["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap()[44..].to_string())
        .collect();
    for want in [
        "eval-time-result",
        "generated-nix",
        "data.txt",
        "busybox-static",
        "source",
    ] {
        assert!(names.iter().any(|n| n == want), "pushed {names:?}");
    }
    let public = std::fs::read_to_string(env.path("keys/m-1.pub")).unwrap();
    let fresh = format!(
        "eval \"nix-build $EVAL -A result --no-out-link --argstr salt ev $ARGS --max-jobs 0 \
         --option substituters file://$T/ev-cache --option trusted-public-keys '{}' \
         --option require-sigs true\"",
        public.trim()
    );
    let out = good(
        script_inside(root, env, "ev-fresh", &vars, &fresh),
        "fresh eval-time build",
    );
    let want = std::fs::read_to_string(env.path("ev-out.txt")).unwrap();
    assert_eq!(
        stdout_lines(&out).last().map(String::as_str),
        Some(want.trim())
    );
}

#[test]
fn nix_2_26_single_user_root() {
    single_user("trixie", "2.26");
}

#[test]
fn nix_2_34_single_user_root() {
    single_user("sid", "2.34");
}

/// Runs `script` (sh) as root inside the chroot, the store `store` at
/// /nix, with `vars` in its environment.
fn script_inside(
    root: &Path,
    env: &Env,
    store: &str,
    vars: &[(&str, String)],
    script: &str,
) -> Output {
    let mut args: Vec<String> = vec!["env".into()];
    args.extend(vars.iter().map(|(k, v)| format!("{k}={v}")));
    args.extend(["sh".into(), "-c".into(), script.into(), "sh".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    inside(root, env, store, &args)
}

/// The chroot's own nix-daemon, with a trusted and an untrusted job user;
/// `$AS user cmd…` runs a command as that user on the daemon. Stops the
/// daemon when the script ends.
const DAEMON: &str = r#"set -eu
C=$T/dconf; mkdir -p "$C"
printf 'sandbox = false\nbuild-users-group =\nsubstituters =\ntrusted-users = root nixdelta-trusted\nexperimental-features = nix-command flakes\n' > "$C/nix.conf"
NIX_CONF_DIR=$C nix-daemon > "$T/daemon-$$.log" 2>&1 &
dpid=$!
trap 'kill $dpid 2>/dev/null || true; wait $dpid 2>/dev/null || true' EXIT
i=0; while [ ! -S /nix/var/nix/daemon-socket/socket ]; do
  i=$((i+1)); [ $i -lt 400 ] || { echo "nix-daemon did not start" >&2; exit 9; }; sleep 0.05
done
as() { u=$1; shift; setpriv --reuid="$u" --regid="$u" --init-groups env -i PATH=/usr/bin:/bin \
  HOME="$T/home-$u" NIX_CONF_DIR="$C" NIX_REMOTE=daemon NIXDELTA_CI=none "$@"; }
for u in nixdelta-trusted nixdelta-untrusted; do
  mkdir -p "$T/home-$u" "$T/cache-$u"; chown "$u" "$T/home-$u" "$T/cache-$u"
done
mkdir -p "$T/arch"; chown nixdelta-trusted "$T/arch"
"#;

/// The daemon topologies on the chroot's own nix-daemon: a trusted and an
/// untrusted non-root job user each run start / a build with eval-time
/// paths / finish (which pushes them, signed); the trusted one saves an
/// archive. On a second, empty daemon store, the untrusted user's restore
/// is refused with what to do and adds nothing, the trusted one's imports
/// the closure. A fresh single-user store then builds the project from
/// each user's cache with `--max-jobs 0` and signatures required (the IFD
/// output substituted, not built).
fn daemon_users(suite: &str, version: &str) {
    let root = chroot(suite);
    let env = Env::new();
    std::fs::set_permissions(
        env.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let s = |p: &str| env.path(p).display().to_string();
    let bin = env!("CARGO_BIN_EXE_nixdelta");
    good(
        inside(
            &root,
            &env,
            "d1",
            &[bin, "keygen", "m-1", "--out", &s("keys")],
        ),
        "keygen",
    );
    std::fs::set_permissions(
        env.path("keys/m-1.sec"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let public = std::fs::read_to_string(env.path("keys/m-1.pub")).unwrap();
    let public = public.trim().to_string();
    let fixture = crate::track::eval_fixture(&env);
    let argstrs: String = fixture
        .iter()
        .map(|(k, v)| format!(" --argstr {k} '{v}'"))
        .collect();
    let eval = example("eval-time.nix").display().to_string();
    let vars = [
        ("BIN", bin.to_string()),
        ("EVAL", eval.clone()),
        ("ARGS", argstrs.clone()),
    ];

    let jobs = format!(
        r#"{DAEMON}
nix --version > "$T/version.txt"
for u in nixdelta-trusted nixdelta-untrusted; do
  as $u "$BIN" start --state-dir "$T/home-$u/st" --archive none > "$T/$u-start.log" 2>&1
  eval "as $u nix-build $EVAL -A result --no-out-link --argstr salt $u $ARGS" > "$T/$u-out.txt" 2> "$T/$u-build.log"
  as $u "$BIN" finish --json --state-dir "$T/home-$u/st" --to "file://$T/cache-$u" \
    --secret-key-file "$T/keys/m-1.sec" > "$T/$u-finish.json" 2> "$T/$u-finish.log"
done
as nixdelta-trusted "$BIN" archive save --archive "dir:$T/arch" --key k1 "$(cat "$T/nixdelta-trusted-out.txt")" > "$T/save.log" 2>&1
"#
    );
    let out = script_inside(&root, &env, "d1", &vars, &jobs);
    let read = |n: &str| std::fs::read_to_string(env.path(n)).unwrap_or_default();
    assert!(
        out.status.success(),
        "jobs on the daemon:\n{}\n{}",
        show(&out),
        [
            "version.txt",
            "nixdelta-trusted-build.log",
            "nixdelta-trusted-finish.log",
            "nixdelta-untrusted-build.log",
            "nixdelta-untrusted-finish.log"
        ]
        .iter()
        .map(|f| format!("--- {f}\n{}", read(f)))
        .collect::<String>()
    );
    assert!(
        read("version.txt").contains(version),
        "{}",
        read("version.txt")
    );
    for u in ["nixdelta-trusted", "nixdelta-untrusted"] {
        let plan: serde_json::Value = serde_json::from_str(&read(&format!("{u}-finish.json")))
            .unwrap_or_else(|e| panic!("{u}: {e}: {}", read(&format!("{u}-finish.log"))));
        let names: Vec<String> = plan["report"]["uploaded"]
            .as_array()
            .unwrap_or_else(|| panic!("{u}: {plan:#}"))
            .iter()
            .map(|v| v.as_str().unwrap()[44..].to_string())
            .collect();
        // The untrusted job runs second: the unsalted eval-time paths (the
        // fetched file, the builtins.path) are the trusted job's by then.
        let wants: &[&str] = if u == "nixdelta-trusted" {
            &[
                "eval-time-result",
                "generated-nix",
                "data.txt",
                "busybox-static",
            ]
        } else {
            &["eval-time-result", "generated-nix"]
        };
        for want in wants {
            assert!(names.iter().any(|n| n == want), "{u} pushed {names:?}");
        }
        assert_eq!(
            narinfos(&env.path(&format!("cache-{u}"))).len(),
            names.len(),
            "{u}"
        );
    }
    assert!(
        read("save.log").contains("result: saved"),
        "{}",
        read("save.log")
    );

    // A second, empty daemon store: archive restores.
    let restores = format!(
        r#"{DAEMON}
set +e
as nixdelta-untrusted "$BIN" archive restore --archive "dir:$T/arch" --key k1 > "$T/ru.out" 2> "$T/ru.err"
echo $? > "$T/ru.code"
set -e
as nixdelta-trusted "$BIN" archive restore --archive "dir:$T/arch" --key k1 > "$T/rt.out" 2> "$T/rt.err"
as nixdelta-trusted nix-store -qR "$(cat "$T/nixdelta-trusted-out.txt")" > "$T/rt.closure"
"#
    );
    let out = script_inside(&root, &env, "d2", &vars, &restores);
    assert!(
        out.status.success(),
        "restores:\n{}\n{}",
        show(&out),
        read("rt.err")
    );
    assert_eq!(read("ru.code").trim(), "3", "{}", read("ru.err"));
    let ru = read("ru.err");
    assert!(
        ru.contains("the Nix daemon refused the import") && ru.contains("trusted-users"),
        "{ru}"
    );
    assert!(
        read("rt.out").contains("(nix-store --import)"),
        "{}",
        read("rt.out")
    );
    let added = read("rt.out");
    assert!(added.contains(" added"), "{added}");
    assert!(!read("rt.closure").trim().is_empty());

    // A fresh machine builds the project from each cache, nothing built.
    for u in ["nixdelta-trusted", "nixdelta-untrusted"] {
        let fresh = format!("fresh-{u}");
        let cmd = format!(
            "nix-build $EVAL -A result --no-out-link --argstr salt {u} $ARGS --max-jobs 0 \
             --option substituters file://{cache} --option trusted-public-keys '{public}' \
             --option require-sigs true",
            cache = s(&format!("cache-{u}"))
        );
        let out = script_inside(&root, &env, &fresh, &vars, &format!("eval \"{cmd}\""));
        assert!(
            out.status.success(),
            "{u}'s cache on a fresh store:\n{}",
            show(&out)
        );
        assert_eq!(
            stdout_lines(&out).last().map(String::as_str),
            Some(read(&format!("{u}-out.txt")).trim())
        );
    }
}

#[test]
fn nix_2_26_daemon_trusted_and_untrusted_users() {
    daemon_users("trixie", "2.26");
}

#[test]
fn nix_2_34_daemon_trusted_and_untrusted_users() {
    daemon_users("sid", "2.34");
}
