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

/// How many NARs finish's archive save took as the push compressed them.
fn reused_nars(finish: &str) -> usize {
    let Some(end) = finish.find(" NARs as the push compressed them)") else {
        return 0;
    };
    let start = finish[..end].rfind('(').unwrap() + 1;
    finish[start..end].parse().unwrap()
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
    // The archive took the push's compressed NARs instead of compressing
    // them again, and the frames kept for it are gone.
    let pushed = narinfos(&env.path("cache1")).len();
    assert!(pushed > 0);
    assert_eq!(reused_nars(&text(&f)), pushed, "{}", text(&f));
    assert!(!one.state.join("frames").exists());

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
    let before = narinfos(&env.path("cache2")).len();
    let f = three.finish(&archive, &cache2, &sec);
    assert!(text(&f).contains(": saved: 13 paths"), "{}", text(&f));
    // The 5 new paths as the push compressed them (and restored paths
    // whose NARs are byte for byte the same), the other restored ones
    // compressed by the save: job 4 reads both kinds of frames.
    assert_eq!(narinfos(&env.path("cache2")).len() - before, 5);
    let spliced = reused_nars(&text(&f));
    assert!((5..13).contains(&spliced), "{spliced}: {}", text(&f));
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

/// The archive save copies in the NARs the uploader compressed during the
/// build. A kept frame that changed on disk before the save (a bad disk,
/// another process) cannot slip into a store: restore checks every NAR
/// against the manifest, the push's cache is unaffected.
#[test]
fn a_changed_kept_frame_is_refused_at_restore() {
    let env = Env::new();
    setup(&env);
    let (sec, public) = env.keygen("t-1");
    let archive = format!("dir:{}", env.path("archives").display());
    let cache = env.cache_url();
    let one = Job::new(&env, "one");
    let mut start = one.nixdelta(&["start", "--watch", "--archive", &archive, "--to", &cache]);
    start.arg("--secret-key-file").arg(&sec);
    let s = start.output().unwrap();
    assert!(s.status.success(), "{}", text(&s));
    let b = one.build("chain6", "", false);
    assert!(b.status.success(), "{}", text(&b));
    let top = stdout_lines(&b).pop().unwrap();
    let frames = one.state.join("frames");
    let t = std::time::Instant::now();
    let narinfo = env.path(&format!("cache/{}.narinfo", &top[11..43]));
    while !narinfo.exists() {
        assert!(
            t.elapsed().as_secs() < 60,
            "the uploader did not push {top}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // chain(6)'s kept frame now decompresses to a NAR of the right size
    // with one byte of a file changed (in the store path it names).
    let q = |flag: &str| {
        let out = ok(env.nix_on(&one.store, "nix-store").args(["-q", flag, &top]));
        stdout_lines(&out).pop().unwrap()
    };
    let (hash, size) = (q("--hash"), q("--size"));
    let frame = frames.join(format!(
        "{}-{size}.zst",
        hash.strip_prefix("sha256:").unwrap()
    ));
    let mut nar = zstd::decode_all(std::fs::File::open(&frame).unwrap()).unwrap();
    let needle = b"/nix/store/";
    let at = nar
        .windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap();
    nar[at + needle.len() + 3] ^= 0x01;
    std::fs::write(&frame, zstd::encode_all(&nar[..], 3).unwrap()).unwrap();
    let f = one.finish(&archive, &cache, &sec);
    assert!(f.status.success(), "{}", text(&f));
    assert!(
        text(&f).contains("NARs as the push compressed them"),
        "{}",
        text(&f)
    );
    assert!(!frames.exists());

    let saved: Vec<_> = std::fs::read_dir(env.path("archives")).unwrap().collect();
    assert_eq!(saved.len(), 1);
    let name = saved[0].as_ref().unwrap().file_name();
    let key = name.to_str().unwrap().strip_suffix(".nda").unwrap();
    let fresh = env.path("fresh");
    let r = crate::helpers::store::restore_into(&env, &fresh, &archive, key, &[]);
    assert_eq!(r.status.code(), Some(7), "{}", text(&r));
    assert!(
        stderr(&r).contains("does not match the manifest"),
        "{}",
        text(&r)
    );
    let valid = crate::helpers::store::valid_paths(&env, &fresh);
    assert!(!valid.contains(&top), "{valid:?}");
    crate::helpers::store::verify_store(&env, &fresh);
    // The binary cache got the NARs as the store has them.
    let got = env.realise_fresh("fresh-cache", &cache, &public, &[&top]);
    assert!(got.status.success(), "{}", show(&got));
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
