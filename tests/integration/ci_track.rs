//! The archive wiring of `start` / `finish` / `run` (what every CI front
//! end runs): start restores before the snapshot, so restored paths are
//! never pushed again; finish pushes, then saves on a miss or a partial
//! hit (restored + new paths), not on an exact hit; archive faults warn
//! unless `--strict`.

use std::path::Path;

use crate::helpers::util::*;

struct Job<'a> {
    env: &'a Env,
    store: std::path::PathBuf,
    state: std::path::PathBuf,
    src: std::path::PathBuf,
}

impl<'a> Job<'a> {
    fn new(env: &'a Env, name: &str) -> Job<'a> {
        Job {
            env,
            store: env.path(&format!("stores/{name}")),
            state: env.path(&format!("state/{name}")),
            src: env.path("src"),
        }
    }

    fn nixdelta(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = nixdelta();
        cmd.current_dir(&self.src)
            .arg("--store")
            .arg(&self.store)
            .args(args)
            .arg("--state-dir")
            .arg(&self.state);
        cmd
    }

    fn start(&self, archive: &str, extra: &[&str]) -> std::process::Output {
        let mut cmd = self.nixdelta(&["start", "--archive", archive]);
        cmd.args(extra);
        cmd.output().unwrap()
    }

    fn finish(&self, archive: &str, cache: &str, sec: &Path) -> std::process::Output {
        let mut cmd = self.nixdelta(&["finish", "--archive", archive, "--to", cache]);
        cmd.arg("--secret-key-file").arg(sec);
        cmd.output().unwrap()
    }

    /// `nix-build fib.nix -A ATTR` (salted when `salt` is not empty).
    fn build(&self, attr: &str, salt: &str, offline: bool) -> std::process::Output {
        let mut cmd = self.env.nix_on(&self.store, "nix-build");
        cmd.current_dir(&self.src).args([
            "fib.nix",
            "-A",
            attr,
            "--no-out-link",
            "--argstr",
            "salt",
            salt,
        ]);
        if offline {
            cmd.args(["--max-jobs", "0"]);
        }
        cmd.output().unwrap()
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn cache_store_paths(dir: &Path) -> Vec<String> {
    narinfos(dir)
        .iter()
        .map(|n| {
            let t = std::fs::read_to_string(dir.join(n)).unwrap();
            narinfo_field(&t, "StorePath").unwrap()
        })
        .collect()
}

fn setup(env: &Env) {
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(example("fib.nix"), src.join("fib.nix")).unwrap();
    std::fs::write(src.join("flake.lock"), EMPTY_FLAKE_LOCK).unwrap();
}

#[test]
fn restored_paths_are_never_pushed_and_partial_hits_save_a_new_archive() {
    let env = Env::new();
    setup(&env);
    let (sec, _) = env.keygen("t-1");
    let archive = format!("dir:{}", env.path("archives").display());
    let cache1 = format!("file://{}", env.path("cache1").display());
    let cache2 = format!("file://{}", env.path("cache2").display());

    // Job 1: miss, build fib(6), push, save.
    let one = Job::new(&env, "one");
    let s = one.start(&archive, &[]);
    assert!(
        s.status.success() && text(&s).contains("restore: miss"),
        "{}",
        text(&s)
    );
    assert!(one.build("fib6", "", false).status.success());
    let f = one.finish(&archive, &cache1, &sec);
    assert!(f.status.success(), "{}", text(&f));
    assert!(text(&f).contains(": saved: 8 paths"), "{}", text(&f));

    // Job 2, a fresh store: exact hit; fib(6) needs no build; a salted
    // fib(4) is new. Only the 5 new outputs go to an empty cache: the 8
    // restored paths (busybox included) are not pushed again.
    let two = Job::new(&env, "two");
    let s = two.start(&archive, &[]);
    assert!(text(&s).contains("restore: hit"), "{}", text(&s));
    let b = two.build("fib6", "", true);
    assert!(
        b.status.success() && !text(&b).contains("will be built"),
        "{}",
        text(&b)
    );
    assert!(two.build("fib4", "two", false).status.success());
    let f = two.finish(&archive, &cache2, &sec);
    assert!(f.status.success(), "{}", text(&f));
    let pushed = cache_store_paths(&env.path("cache2"));
    assert_eq!(pushed.len(), 5, "{pushed:?}\n{}", text(&f));
    assert!(pushed.iter().all(|p| p.contains("-fib-")), "{pushed:?}");
    assert!(
        text(&f).contains("exact key hit, nothing saved"),
        "{}",
        text(&f)
    );

    // Job 3: the key files changed: a partial hit under the prefix; the
    // archive saved under the new key holds the restored and the new paths.
    std::fs::write(
        env.path("src/flake.lock"),
        EMPTY_FLAKE_LOCK.replace("\"root\": {}", "\"root\": { }"),
    )
    .unwrap();
    let three = Job::new(&env, "three");
    let s = three.start(&archive, &[]);
    assert!(text(&s).contains("restore: partial"), "{}", text(&s));
    assert!(three.build("fib4", "three", false).status.success());
    let f = three.finish(&archive, &cache2, &sec);
    assert!(text(&f).contains(": saved: 13 paths"), "{}", text(&f));
    let saved = std::fs::read_dir(env.path("archives")).unwrap().count();
    assert_eq!(saved, 2);

    // Job 4: the new key's archive alone makes both builds offline.
    let four = Job::new(&env, "four");
    let s = four.start(&archive, &[]);
    assert!(
        text(&s).contains("restore: hit") && text(&s).contains("13 paths added"),
        "{}",
        text(&s)
    );
    for (attr, salt) in [("fib6", ""), ("fib4", "three")] {
        let b = four.build(attr, salt, true);
        assert!(b.status.success(), "{attr} {salt}: {}", text(&b));
    }
}

#[test]
fn archive_faults_warn_unless_strict() {
    let env = Env::new();
    setup(&env);
    let (sec, _) = env.keygen("t-1");
    let archive = format!("dir:{}", env.path("archives").display());
    let cache = format!("file://{}", env.path("cache").display());

    // A damaged archive under the job's key: a warning, and the job goes on
    // (snapshot taken, push done).
    let probe = Job::new(&env, "probe");
    let s = probe.start(&archive, &[]);
    assert!(s.status.success(), "{}", text(&s));
    let state = std::fs::read_to_string(env.path("state/probe/state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&state).unwrap();
    let key = v["extra"]["archive"]["key"].as_str().unwrap().to_string();
    assert_eq!(v["extra"]["archive"]["outcome"], "miss");
    std::fs::create_dir_all(env.path("archives")).unwrap();
    std::fs::write(env.path(&format!("archives/{key}.nda")), b"not an archive").unwrap();

    let job = Job::new(&env, "job");
    let s = job.start(&archive, &[]);
    assert!(s.status.success(), "{}", text(&s));
    assert!(
        text(&s).contains("warning: store archive not restored (not failing the job"),
        "{}",
        text(&s)
    );
    assert!(job.build("fib3", "", false).status.success());
    let f = job.finish(&archive, &cache, &sec);
    assert!(f.status.success(), "{}", text(&f));
    assert_eq!(narinfos(&env.path("cache")).len(), 5, "{}", text(&f));

    // --strict: the same restore fails start.
    let strict = Job::new(&env, "strict");
    let s = strict.start(&archive, &["--strict"]);
    assert!(!s.status.success(), "{}", text(&s));
    assert!(text(&s).contains("nixdelta: error:"), "{}", text(&s));

    // A bad backend spec is a usage error either way.
    let s = strict.start("ftp://nope", &[]);
    assert_eq!(s.status.code(), Some(2), "{}", text(&s));
}

/// `run --archive`: restore, command, push, save in one process.
#[test]
fn run_restores_and_saves() {
    let env = Env::new();
    setup(&env);
    let (sec, _) = env.keygen("t-1");
    let archive = format!("dir:{}", env.path("archives").display());
    let cache = format!("file://{}", env.path("cache").display());
    for (i, name) in ["a", "b"].iter().enumerate() {
        let store = env.path(&format!("stores/{name}"));
        let mut cmd = nixdelta();
        cmd.current_dir(env.path("src"))
            .arg("--store")
            .arg(&store)
            .args(["run", "--archive", &archive, "--to", &cache])
            .arg("--secret-key-file")
            .arg(&sec)
            .args(["--", "nix-build", "--store"])
            .arg(&store)
            .args(["fib.nix", "-A", "fib6", "--no-out-link"]);
        if i == 1 {
            cmd.args(["--max-jobs", "0"]);
        }
        let out = cmd.output().unwrap();
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        if i == 0 {
            assert!(
                t.contains("restore: miss") && t.contains(": saved: 8 paths"),
                "{t}"
            );
        } else {
            assert!(
                t.contains("restore: hit") && !t.contains("will be built"),
                "{t}"
            );
        }
    }
}

/// An exact hit whose job realised more than `--resave-threshold` saves
/// `<key>-g<time>`, which the next restore of the key prefers.
#[test]
fn an_exact_hit_that_grew_saves_a_newer_archive_for_the_key() {
    let env = Env::new();
    setup(&env);
    let (sec, _) = env.keygen("t-1");
    let archive = format!("dir:{}", env.path("archives").display());
    let cache = format!("file://{}", env.path("cache").display());

    let one = Job::new(&env, "one");
    assert!(one.start(&archive, &[]).status.success());
    assert!(one.build("fib4", "", false).status.success());
    assert!(one.finish(&archive, &cache, &sec).status.success());

    // A hit; a salted fib(4) adds 5 small paths: over a 100-byte threshold.
    let two = Job::new(&env, "two");
    let s = two.start(&archive, &["--resave-threshold", "100"]);
    assert!(text(&s).contains("restore: hit"), "{}", text(&s));
    assert!(two.build("fib4", "grown", false).status.success());
    let mut f = two.nixdelta(&["finish", "--archive", &archive, "--to", &cache]);
    f.arg("--secret-key-file")
        .arg(&sec)
        .args(["--resave-threshold", "100"]);
    let f = f.output().unwrap();
    let t = text(&f);
    assert!(
        t.contains("exact key hit, but the job realised 5 new paths"),
        "{t}"
    );
    assert!(t.contains("-g") && t.contains(": saved: 11 paths"), "{t}");

    // The default threshold (64M) keeps the archive as it is.
    let three = Job::new(&env, "three");
    let s = three.start(&archive, &[]);
    let t = text(&s);
    assert!(
        t.contains("restore: hit (nixdelta-v1-") && t.contains("-g"),
        "{t}"
    );
    assert!(t.contains("11 paths added"), "{t}");
    let b = three.build("fib4", "grown", true);
    assert!(b.status.success(), "{}", text(&b));
    assert!(three.build("fib3", "three", false).status.success());
    let f = three.finish(&archive, &cache, &sec);
    assert!(
        text(&f).contains("exact key hit, nothing saved"),
        "{}",
        text(&f)
    );
    assert_eq!(std::fs::read_dir(env.path("archives")).unwrap().count(), 2);
}
