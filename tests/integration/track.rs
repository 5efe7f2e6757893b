//! `start` / `finish` / `run`: the store diff captures build-time and
//! eval-time paths, and the push plan keeps exactly what it should.

use std::path::Path;
use std::process::Command;

use crate::helpers::util::*;

/// Output paths of attributes of an example, instantiated in `env`'s store.
fn outputs(env: &Env, file: &str, attrs: &[&str]) -> Vec<String> {
    let mut cmd = env.nix("nix-instantiate");
    cmd.arg(example(file));
    for a in attrs {
        cmd.args(["-A", a]);
    }
    let drvs = stdout_lines(&ok(&mut cmd));
    stdout_lines(&ok(env
        .nix("nix-store")
        .args(["-q", "--outputs"])
        .args(&drvs)))
}

fn push_args(env: &Env, sec: &Path) -> Vec<String> {
    vec![
        "--to".into(),
        env.cache_url(),
        "--secret-key-file".into(),
        sec.display().to_string(),
    ]
}

/// The narinfo StorePaths present in `env`'s cache.
fn cached_paths(env: &Env) -> Vec<String> {
    let dir = env.path("cache");
    let mut v: Vec<String> = narinfos(&dir)
        .iter()
        .map(|n| {
            let t = std::fs::read_to_string(dir.join(n)).unwrap();
            narinfo_field(&t, "StorePath").unwrap()
        })
        .collect();
    v.sort();
    v
}

/// fib(6) built under `run`: a fresh store then realises fib(3) and fib(4),
/// intermediate build-time deps that are not in fib(6)'s runtime closure.
#[test]
fn build_time_deps_are_pushed() {
    let env = Env::new();
    let (sec, public) = env.keygen("k-1");
    let mut run = env.nixdelta(&["run"]);
    run.args(push_args(&env, &sec))
        .arg("--")
        .arg("nix-build")
        .arg("--store")
        .arg(env.store());
    run.arg(example("fib.nix"))
        .args(["-A", "fib6", "--no-out-link"]);
    let r = ok(&mut run);
    let err = stderr(&r);
    assert!(err.contains("skipped: derivations (.drv)"), "{err}");
    let outs = outputs(&env, "fib.nix", &["fib3", "fib4", "fib6"]);
    assert_eq!(
        closure(&env, &outs[2]).len(),
        1,
        "fib-6 has no runtime references"
    );
    let paths: Vec<&str> = outs.iter().map(String::as_str).collect();
    let f = env.realise_fresh("fresh", &env.cache_url(), &public, &paths);
    assert!(f.status.success(), "{}", show(&f));
    let v = std::fs::read_to_string(env.path("fresh").join(&outs[1][1..])).unwrap();
    assert_eq!(v.trim(), "3", "fib(4)");
    assert!(cached_paths(&env).iter().all(|p| !p.ends_with(".drv")));
}

/// `run` passes the command's exit code through, and pushes what a failing
/// build realised before it failed.
#[test]
fn run_pushes_even_when_the_command_fails() {
    let env = Env::new();
    let (sec, _) = env.keygen("k-1");
    let script = format!(
        "nix-build --store {} {} -A fib3 --no-out-link && exit 7",
        env.store().display(),
        example("fib.nix").display()
    );
    let mut run = env.nixdelta(&["run"]);
    run.args(push_args(&env, &sec))
        .args(["--", "sh", "-c", &script]);
    let r = run.output().unwrap();
    assert_eq!(r.status.code(), Some(7), "{}", show(&r));
    assert!(stderr(&r).contains("command exited with 7"), "{}", show(&r));
    let cached = cached_paths(&env);
    assert!(cached.iter().any(|p| p.ends_with("-fib-3")), "{cached:?}");
}

fn sri(path: &Path, flat: bool) -> String {
    let mut cmd = Command::new("nix-hash");
    cmd.args(["--type", "sha256", "--base32"]);
    if flat {
        cmd.arg("--flat");
    }
    let h = stdout_lines(&ok(cmd.arg(path)))[0].clone();
    format!("sha256:{h}")
}

/// A file for `builtins.fetchurl` and a tarball for `builtins.fetchTarball`
/// served from `file://` URLs, and the `--argstr`s of eval-time.nix.
pub(crate) fn eval_fixture(env: &Env) -> Vec<(&'static str, String)> {
    let data = env.path("data.txt");
    std::fs::write(&data, "fetched by url\n").unwrap();
    let src = env.path("tar/src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "from a tarball\n").unwrap();
    let tar = env.path("src.tar.gz");
    ok(Command::new("tar")
        .arg("-czf")
        .arg(&tar)
        .arg("-C")
        .arg(env.path("tar"))
        .arg("src"));
    vec![
        ("fileUrl", format!("file://{}", data.display())),
        ("fileHash", sri(&data, true)),
        ("tarUrl", format!("file://{}", tar.display())),
        ("tarHash", sri(&src, false)),
    ]
}

fn eval_args(cmd: &mut Command, args: &[(&str, String)]) {
    cmd.arg(example("eval-time.nix"));
    for (k, v) in args {
        cmd.args(["--argstr", k, v]);
    }
}

/// IFD output, `builtins.fetchurl` and `builtins.fetchTarball` results are
/// captured and pushed; a fresh store evaluates (IFD substituted) and builds
/// with nothing built.
#[test]
fn eval_time_paths_are_pushed() {
    let env = Env::new();
    let (sec, public) = env.keygen("k-1");
    let args = eval_fixture(&env);
    let nix_args = |cmd: &mut Command| eval_args(cmd, &args);
    let mut run = env.nixdelta(&["run"]);
    run.args(push_args(&env, &sec))
        .args(["--", "nix-build", "--store"])
        .arg(env.store());
    nix_args(&mut run);
    run.args(["-A", "result", "--no-out-link"]);
    let r = ok(&mut run);
    let result = stdout_lines(&r).pop().unwrap();

    let eval = |attr: &str| -> String {
        let mut cmd = env.nix("nix-instantiate");
        cmd.args(["--eval", "--strict"]);
        nix_args(&mut cmd);
        cmd.args(["-A", attr]);
        stdout_lines(&ok(&mut cmd))[0].trim_matches('"').to_string()
    };
    let cached = cached_paths(&env);
    for attr in ["fetched", "tarball"] {
        let p = eval(attr);
        assert!(cached.contains(&p), "{attr} {p} not pushed: {cached:?}");
    }
    assert!(
        cached.iter().any(|p| p.ends_with("-generated-nix")),
        "IFD output: {cached:?}"
    );
    assert!(cached.contains(&result));

    // A fresh store: IFD is substituted during evaluation, nothing built.
    let mut fresh = env.nix_on(&env.path("fresh"), "nix-build");
    nix_args(&mut fresh);
    fresh.args(["-A", "result", "--no-out-link", "--max-jobs", "0"]);
    fresh.args(["--option", "substituters", &env.cache_url()]);
    fresh.args(["--option", "trusted-public-keys", &public]);
    let f = fresh.output().unwrap();
    assert!(f.status.success(), "{}", show(&f));
    let text = std::fs::read_to_string(env.path("fresh").join(&result[1..])).unwrap();
    assert_eq!(text, "42\nfetched by url\nfrom a tarball\n");
}

/// Writes a flake whose one input is a `path:` directory, locks it, and
/// returns (flake dir, input dir).
fn make_flake(env: &Env) -> (std::path::PathBuf, std::path::PathBuf) {
    let input = env.path("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("message.txt"), "hello from a flake input\n").unwrap();
    let flake = env.path("repo");
    std::fs::create_dir_all(&flake).unwrap();
    std::fs::write(
        flake.join("flake.nix"),
        format!(
            r#"{{
  inputs.dep = {{ url = "path:{}"; flake = false; }};
  outputs = {{ self, dep }}: let
    busybox = builtins.path {{ name = "busybox-static"; path = /usr/bin;
      filter = p: t: baseNameOf p == "busybox"; }};
  in {{
    packages.x86_64-linux.default = derivation {{
      name = "flake-result"; system = "x86_64-linux";
      builder = "${{busybox}}/busybox";
      args = [ "sh" "-c" "cat ${{dep}}/message.txt ${{self}}/README > $out" ];
    }};
    # Refers to the flake's own source at runtime.
    packages.x86_64-linux.withsrc = derivation {{
      name = "with-source"; system = "x86_64-linux";
      builder = "${{busybox}}/busybox";
      args = [ "sh" "-c" "echo ${{self}} > $out" ];
    }};
  }};
}}
"#,
            input.display()
        ),
    )
    .unwrap();
    std::fs::write(flake.join("README"), "the repository's own source\n").unwrap();
    // Locked in a scratch store, as a committed flake.lock would be: the
    // job's store has neither the input nor the flake's source yet.
    let lock_store = env.path("lock-store");
    ok(env
        .nix_on(&lock_store, "nix")
        .args(["flake", "lock"])
        .arg(format!("path:{}", flake.display())));
    let lock = std::fs::read_to_string(flake.join("flake.lock")).unwrap();
    assert!(lock.contains("narHash"), "{lock}");
    (flake, input)
}

/// A locked flake input is pushed (and substituted by narHash in a fresh
/// store after the input is gone); the flake's own source is not pushed.
#[test]
fn flake_input_is_pushed_self_source_is_not() {
    let env = Env::new();
    let (sec, public) = env.keygen("k-1");
    let (flake, input) = make_flake(&env);
    let flake_ref = format!("path:{}", flake.display());
    let mut run = env.nixdelta(&["run"]);
    run.current_dir(&flake)
        .args(push_args(&env, &sec))
        .args(["--json", "--"]);
    run.args(["nix", "build", "--impure", "--no-link", "--store"]);
    run.arg(env.store()).arg(&flake_ref);
    let r = ok(&mut run);
    let err = stderr(&r);
    let json_start = err.find('{').unwrap();
    let plan: serde_json::Value = serde_json::Deserializer::from_str(&err[json_start..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let self_src = plan["skipped"]["self-source"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(self_src.len(), 1, "the flake's own source: {plan:#}");
    let cached = cached_paths(&env);
    assert!(!cached.contains(&self_src[0].as_str().unwrap().to_string()));
    let uploaded: Vec<String> = plan["report"]["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut uploaded_sorted = uploaded.clone();
    uploaded_sorted.sort();
    assert_eq!(uploaded_sorted, cached, "plan and cache agree");

    // The input goes away; a fresh store gets it from the cache by narHash.
    std::fs::rename(&input, env.path("input-moved")).unwrap();
    let mut fresh = env.nix_on(&env.path("fresh"), "nix");
    fresh.args([
        "build",
        "--impure",
        "--no-link",
        "--json",
        "--max-jobs",
        "0",
    ]);
    fresh.args(["--option", "substituters", &env.cache_url()]);
    fresh.args(["--option", "trusted-public-keys", &public]);
    fresh.arg(&flake_ref);
    let f = fresh.output().unwrap();
    assert!(f.status.success(), "{}", show(&f));
    let built: serde_json::Value = serde_json::from_slice(&f.stdout).unwrap();
    let out = built[0]["outputs"]["out"].as_str().unwrap();
    let text = std::fs::read_to_string(env.path("fresh").join(&out[1..])).unwrap();
    assert_eq!(
        text,
        "hello from a flake input\nthe repository's own source\n"
    );
}

/// Paths from before `start` are not pushed; a second run of the same build
/// pushes nothing; excluded and upstream-signed paths stay out; the JSON
/// plan's counts match the cache.
#[test]
fn precision() {
    let env = Env::new();
    let (sec, _) = env.keygen("k-1");
    env.build("fib.nix", &["fib3"]);
    let state = env.path("state");
    let finish = |extra: &[&str]| -> serde_json::Value {
        let mut cmd = env.nixdelta(&["finish", "--json", "--state-dir"]);
        cmd.arg(&state).args(push_args(&env, &sec)).args(extra);
        serde_json::from_slice(&ok(&mut cmd).stdout).unwrap()
    };
    ok(env.nixdelta(&["start", "--state-dir"]).arg(&state));
    env.build("fib.nix", &["fib6"]);
    // fib-5 excluded; fib-4 "upstream": signed by a key named like cache.nixos.org's.
    let fib4 = &outputs(&env, "fib.nix", &["fib4"])[0];
    let upstream = Env::new();
    let (up_sec, _) = upstream.keygen("cache.nixos.org-1");
    ok(env
        .nix("nix")
        .args(["store", "sign", "--key-file"])
        .arg(&up_sec)
        .arg(fib4));
    let plan = finish(&["--exclude=-fib-5$"]);
    let uploaded: Vec<String> = plan["report"]["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let names: Vec<&str> = uploaded.iter().map(|p| &p[44..]).collect();
    assert_eq!(names, ["fib-6"], "{plan:#}");
    assert_eq!(plan["considered"], 6, "fib-4..6 and their .drv: {plan:#}");
    assert_eq!(plan["skipped"]["derivation"].as_array().unwrap().len(), 3);
    assert_eq!(plan["skipped"]["excluded"].as_array().unwrap().len(), 1);
    assert_eq!(plan["skipped"]["upstream-signed"][0], fib4.as_str());
    let mut cached = cached_paths(&env);
    cached.sort();
    assert_eq!(cached, uploaded);

    // Same build again under a new start: nothing new, nothing pushed.
    ok(env.nixdelta(&["start", "--state-dir"]).arg(&state));
    env.build("fib.nix", &["fib6"]);
    let again = finish(&[]);
    assert_eq!(again["considered"], 0, "{again:#}");
    assert_eq!(again["report"]["uploaded"].as_array().unwrap().len(), 0);
}

/// An `--upstream` cache's paths are not duplicated; a reference that the
/// upstream lacks is pulled in so the target stays consistent.
#[test]
fn upstream_cache_and_pulled_in_references() {
    let env = Env::new();
    let (sec, _) = env.keygen("k-1");
    let state = env.path("state");
    ok(env.nixdelta(&["start", "--state-dir"]).arg(&state));
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let chain2 = closure(&env, &chain6)
        .into_iter()
        .find(|p| p.ends_with("-chain-2"))
        .unwrap();
    // The upstream has chain-0..2.
    let up = format!("file://{}", env.path("upstream").display());
    ok(env
        .nixdelta(&["push", "--to", &up, "--secret-key-file"])
        .arg(&sec)
        .arg(&chain2));
    let mut cmd = env.nixdelta(&["finish", "--json", "--state-dir"]);
    cmd.arg(&state)
        .args(push_args(&env, &sec))
        .args(["--upstream", &up, "--exclude=-chain-5$"]);
    let plan: serde_json::Value = serde_json::from_slice(&ok(&mut cmd).stdout).unwrap();
    assert_eq!(
        plan["skipped"]["upstream"].as_array().unwrap().len(),
        3,
        "{plan:#}"
    );
    // chain-6 references chain-5: excluded, but pulled in for consistency.
    let pulled = plan["pulled_in"].as_array().unwrap();
    assert_eq!(pulled.len(), 1, "{plan:#}");
    assert!(pulled[0].as_str().unwrap().ends_with("-chain-5"));
    let cached = cached_paths(&env);
    let names: Vec<&str> = cached.iter().map(|p| &p[44..]).collect();
    assert_eq!(names.len(), 5, "busybox + chain-3..6: {names:?}");
    assert!(names
        .iter()
        .all(|n| !["chain-0", "chain-1", "chain-2"].contains(n)));
}

/// `finish` computes the same diff as an unprivileged user while the store
/// belongs to root (read-only DB access, WAL mode).
#[test]
fn finish_as_non_root_user() {
    if unsafe_getuid() != 0 || Command::new("runuser").arg("--help").output().is_err() {
        eprintln!("skipped: needs root and runuser to switch to an unprivileged user");
        return;
    }
    let env = Env::new();
    let (sec, _) = env.keygen("k-1");
    let state = env.path("state");
    ok(env.nixdelta(&["start", "--state-dir"]).arg(&state));
    env.build("fib.nix", &["chain6"]);
    for p in [
        env.dir.path().to_path_buf(),
        env.path("keys"),
        sec.clone(),
        state.clone(),
        state.join("state.json"),
    ] {
        ok(Command::new("chmod").arg("a+rX").arg(&p));
    }
    let dry = |as_nobody: bool| -> serde_json::Value {
        let mut cmd = if as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"])
                .arg(env!("CARGO_BIN_EXE_nixdelta"));
            c
        } else {
            nixdelta()
        };
        cmd.current_dir("/").arg("--store").arg(env.store()).args([
            "finish",
            "--dry-run",
            "--json",
        ]);
        cmd.arg("--state-dir")
            .arg(&state)
            .args(["--to", "file:///tmp/nixdelta-never-written"]);
        let out = ok(&mut cmd);
        assert!(!stderr(&out).contains("falling back"), "{}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let root = dry(false);
    let nobody = dry(true);
    assert_eq!(root, nobody);
    assert_eq!(
        root["upload"].as_array().unwrap().len(),
        8,
        "busybox + chain-0..6: {root:#}"
    );
}

/// Without a readable DB (forced here), start/finish diff by listing the
/// whole store through the nix CLI, with a warning, and reach the same plan
/// as the DB diff does on an identical store.
#[test]
fn cli_fallback_gives_the_same_diff() {
    let plan = |backend: &str| -> serde_json::Value {
        let env = Env::new();
        env.build("fib.nix", &["fib3"]);
        let state = env.path("state");
        let mut start = env.nixdelta(&["start", "--state-dir"]);
        ok(start.arg(&state).env("NIXDELTA_STORE_BACKEND", backend));
        env.build("fib.nix", &["chain6"]);
        let mut fin = env.nixdelta(&["finish", "--dry-run", "--json", "--to", &env.cache_url()]);
        let out = ok(fin
            .arg("--state-dir")
            .arg(&state)
            .env("NIXDELTA_STORE_BACKEND", backend));
        assert_eq!(
            backend == "cli",
            stderr(&out).contains("whole store"),
            "{}",
            show(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (db, cli) = (plan("db"), plan("cli"));
    assert_eq!(
        db["upload"].as_array().unwrap().len(),
        7,
        "chain-0..6: {db:#}"
    );
    let sorted = |v: &serde_json::Value| {
        let mut a: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.sort();
        a
    };
    assert_eq!(sorted(&db["upload"]), sorted(&cli["upload"]));
    assert_eq!(db["considered"], cli["considered"]);
}

fn unsafe_getuid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Warm start from the binary cache alone: `finish` leaves a signed manifest
/// under the cache key; on a fresh machine whose fetch URLs are gone, `start
/// --restore-from-cache` substitutes the fetched sources and IFD output so
/// that evaluation needs no network; Nix itself would re-download them.
#[test]
fn warm_start_makes_fetchers_evaluate_offline() {
    let env = Env::new();
    let (sec, public) = env.keygen("k-1");
    let args = eval_fixture(&env);
    let repo = env.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("flake.lock"),
        r#"{"nodes":{"root":{}},"root":"root","version":7}"#,
    )
    .unwrap();
    let mut run = env.nixdelta(&["run"]);
    run.args(push_args(&env, &sec)).arg("--key-dir").arg(&repo);
    run.args(["--", "nix-build", "--store"]).arg(env.store());
    eval_args(&mut run, &args);
    run.args(["-A", "result", "--no-out-link"]);
    let r = ok(&mut run);
    assert!(
        stderr(&r).contains("warm-start manifest nixdelta/nixdelta-v1-"),
        "{}",
        show(&r)
    );
    let result = stdout_lines(&r).pop().unwrap();

    // The fetch URLs vanish: only the binary cache can provide the sources.
    std::fs::remove_file(env.path("data.txt")).unwrap();
    std::fs::remove_file(env.path("src.tar.gz")).unwrap();
    let build_fresh = |store: &str| {
        let mut b = env.nix_on(&env.path(store), "nix-build");
        eval_args(&mut b, &args);
        b.args(["-A", "result", "--no-out-link", "--max-jobs", "0"]);
        b.args(["--option", "substituters", &env.cache_url()]);
        b.args(["--option", "trusted-public-keys", &public]);
        b.output().unwrap()
    };
    let cold = build_fresh("cold");
    assert!(
        !cold.status.success(),
        "Nix evaluated without the sources: {}",
        show(&cold)
    );

    // A manifest signed by a key we do not trust is refused.
    let other = Env::new().keygen("k-1").1;
    let mut bad = nixdelta();
    bad.arg("--store")
        .arg(env.path("warm"))
        .args(["start", "--strict", "--state-dir"]);
    bad.arg(env.path("state-bad"))
        .args(["--restore-from-cache", &env.cache_url()]);
    bad.args(["--trusted-public-key", &other])
        .arg("--key-dir")
        .arg(&repo);
    let b = bad.output().unwrap();
    assert_eq!(b.status.code(), Some(6), "{}", show(&b));
    assert!(
        stderr(&b).contains("not signed by a trusted key"),
        "{}",
        show(&b)
    );

    let mut start = nixdelta();
    start
        .arg("--store")
        .arg(env.path("warm"))
        .args(["start", "--state-dir"]);
    start
        .arg(env.path("state"))
        .args(["--restore-from-cache", &env.cache_url()]);
    start
        .args(["--trusted-public-key", &public])
        .arg("--key-dir")
        .arg(&repo);
    let s = ok(&mut start);
    assert!(
        stderr(&s).contains("warm start from nixdelta/nixdelta-v1-"),
        "{}",
        show(&s)
    );
    let warm = build_fresh("warm");
    assert!(warm.status.success(), "{}", show(&warm));
    let text = std::fs::read_to_string(env.path("warm").join(&result[1..])).unwrap();
    assert_eq!(text, "42\nfetched by url\nfrom a tarball\n");
}

/// A path deleted and built again during the job has a new DB id: it is new.
#[test]
fn deleted_and_re_added_paths_count_as_new() {
    let env = Env::new();
    let fib3 = env.build("fib.nix", &["fib3"]).remove(0);
    let state = env.path("state");
    ok(env.nixdelta(&["start", "--state-dir"]).arg(&state));
    ok(env.nix("nix-store").args(["--delete", &fib3]));
    assert_eq!(env.build("fib.nix", &["fib3"])[0], fib3);
    let mut fin = env.nixdelta(&["finish", "--dry-run", "--json", "--to", &env.cache_url()]);
    let out = ok(fin.arg("--state-dir").arg(&state));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["upload"], serde_json::json!([fib3]), "{plan:#}");
}

/// `run` forwards SIGTERM to the command and exits with the command's code.
#[test]
fn run_forwards_signals_to_the_command() {
    let env = Env::new();
    let marker = env.path("got-term");
    let script = format!(
        "trap 'touch {}; exit 42' TERM; echo ready; sleep 30 & wait",
        marker.display()
    );
    let mut child = env
        .nixdelta(&["run", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");
    ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42));
    assert!(marker.exists(), "the command did not receive SIGTERM");
}

/// A path that refers to the repository's own source is held back rather
/// than the source being pulled in: the source is uploaded only when asked.
#[test]
fn paths_needing_the_self_source_are_held_back() {
    let env = Env::new();
    let (sec, _) = env.keygen("k-1");
    let (flake, _) = make_flake(&env);
    let plan_of = |extra: &[&str]| -> serde_json::Value {
        let store = env.path(&format!("store{}", extra.len()));
        let state = env.path(&format!("state{}", extra.len()));
        let cache = format!(
            "file://{}",
            env.path(&format!("cache{}", extra.len())).display()
        );
        let mut start = nixdelta();
        ok(start
            .arg("--store")
            .arg(&store)
            .args(["start", "--state-dir"])
            .arg(&state));
        let mut build = env.nix_on(&store, "nix");
        build.args(["build", "--impure", "--no-link"]);
        ok(build.arg(format!("path:{}#withsrc", flake.display())));
        let mut fin = nixdelta();
        fin.current_dir(&flake)
            .arg("--store")
            .arg(&store)
            .args(["finish", "--json", "--to", &cache]);
        fin.arg("--secret-key-file")
            .arg(&sec)
            .arg("--state-dir")
            .arg(&state)
            .args(extra);
        serde_json::from_slice(&ok(&mut fin).stdout).unwrap()
    };
    let plan = plan_of(&[]);
    let held = plan["skipped"]["needs-self-source"].as_array().unwrap();
    assert_eq!(held.len(), 1, "{plan:#}");
    assert!(held[0].as_str().unwrap().ends_with("-with-source"));
    let self_src = plan["skipped"]["self-source"].as_array().unwrap().clone();
    assert_eq!(self_src.len(), 1, "{plan:#}");
    let self_src = self_src[0].as_str().unwrap().to_string();
    assert!(plan["pulled_in"].as_array().unwrap().is_empty(), "{plan:#}");
    let uploaded = plan["report"]["uploaded"].as_array().unwrap();
    assert!(
        uploaded
            .iter()
            .all(|p| !p.as_str().unwrap().ends_with("-with-source")),
        "{plan:#}"
    );
    // Asked for: both go up.
    let plan = plan_of(&["--include-self-source"]);
    let uploaded: Vec<&str> = plan["report"]["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        uploaded.iter().any(|p| p.ends_with("-with-source")),
        "{plan:#}"
    );
    assert!(uploaded.contains(&self_src.as_str()), "{plan:#}");
}
