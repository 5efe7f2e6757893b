//! `nixdelta archive save|restore` with the `dir:` backend, read back by a
//! fresh chroot store that must then build nothing; faults; concurrency.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use crate::helpers::store::*;
use crate::helpers::util::*;

const KEY: &str = "nixdelta-v1-x86_64-linux-0123456789abcdef";

#[test]
fn round_trip_through_dir_into_fresh_store() {
    let env = Env::new();
    let backend = format!("dir:{}", env.path("archives").display());
    let (chain6, save) = save_chain(&env, &backend, KEY);
    let s = report(&save);
    assert!(s.contains("result: saved") && s.contains("paths: 7"), "{s}");
    let file = env.path("archives").join(format!("{KEY}.nda"));
    assert!(file.is_file());

    // Saving the same key again is a no-op: keys are immutable.
    let again = ok(&mut env.nixdelta(&[
        "archive",
        "save",
        "--archive",
        &backend,
        "--key",
        KEY,
        &chain6,
    ]));
    assert!(report(&again).contains("exists"), "{}", report(&again));

    for method in ["direct", "import"] {
        let fresh = env.path(&format!("fresh-{method}"));
        let r = restore_into(&env, &fresh, &backend, KEY, &["--method", method]);
        assert!(r.status.success(), "{}", show(&r));
        let s = report(&r);
        assert!(s.contains("result: hit"), "{s}");
        assert!(s.contains(&format!("matched key: {KEY}")), "{s}");
        assert!(s.contains("paths: 7 added, 0 already valid"), "{s}");
        assert_eq!(valid_paths(&env, &fresh), closure(&env, &chain6));
        verify_store(&env, &fresh);
        let b = build_offline(&env, &fresh);
        assert!(b.status.success(), "nothing may be built:\n{}", show(&b));
        assert_eq!(stdout_lines(&b), vec![chain6.clone()]);
        let value = std::fs::read_to_string(fresh.join(&chain6[1..]).join("value")).unwrap();
        assert_eq!(value.trim(), "8");
        // Restoring again adds nothing.
        let r = restore_into(&env, &fresh, &backend, KEY, &["--method", method]);
        assert!(
            report(&r).contains("paths: 0 added, 7 already valid"),
            "{}",
            show(&r)
        );
    }
}

#[test]
fn key_from_flake_lock_and_prefix_fallback() {
    let env = Env::new();
    let backend = format!("dir:{}", env.path("archives").display());
    let proj = env.path("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(
        proj.join("flake.lock"),
        r#"{"nodes":{"root":{}},"root":"root","version":7}"#,
    )
    .unwrap();
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let save = ok(env
        .nixdelta(&["archive", "save", "--archive", &backend, "--key-dir"])
        .arg(&proj)
        .arg(&chain6));
    let saved_key = report(&save)
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("key: ")
        .to_string();
    assert!(saved_key.starts_with("nixdelta-v1-"), "{saved_key}");

    // Same lock: hit. Changed lock: partial hit through the default prefix.
    let r = ok(nixdelta()
        .arg("--store")
        .arg(env.path("b"))
        .args(["archive", "restore", "--archive", &backend, "--key-dir"])
        .arg(&proj));
    assert!(report(&r).contains("result: hit"), "{}", report(&r));
    std::fs::write(
        proj.join("flake.lock"),
        r#"{"nodes":{"root":{}},"root":"root","version":7,"x":1}"#,
    )
    .unwrap();
    let r = ok(nixdelta()
        .arg("--store")
        .arg(env.path("c"))
        .args(["archive", "restore", "--archive", &backend, "--key-dir"])
        .arg(&proj));
    let s = report(&r);
    assert!(
        s.contains("result: partial") && s.contains(&format!("matched key: {saved_key}")),
        "{s}"
    );
    assert!(s.contains("paths: 7 added"), "{s}");
    // An unrelated prefix only: miss.
    let r = ok(nixdelta().arg("--store").arg(env.path("d")).args([
        "archive",
        "restore",
        "--archive",
        &backend,
        "--key",
        "other-1",
        "--restore-prefix",
        "other-",
    ]));
    assert!(report(&r).contains("result: miss"), "{}", report(&r));

    // Malformed flake.lock: input error, exit 8.
    std::fs::write(proj.join("flake.lock"), "{ not json").unwrap();
    let r = nixdelta()
        .args(["archive", "restore", "--archive", &backend, "--key-dir"])
        .arg(&proj)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(8), "{}", show(&r));
    assert!(
        stderr(&r).contains("flake.lock") && stderr(&r).contains("not valid JSON"),
        "{}",
        show(&r)
    );
}

/// Decompresses a `.nda`, lets `edit` change the plain stream, recompresses.
fn rewrite(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let data = std::fs::read(src).unwrap();
    let mut plain = zstd_cli(&["-d", "-c"], &data);
    edit(&mut plain);
    std::fs::write(dst, zstd_cli(&["-c", "-3"], &plain)).unwrap();
}

fn zstd_cli(args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("zstd")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let t = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    t.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

struct Fault {
    name: &'static str,
    exit: i32,
    message: &'static str,
    /// Paths the fault may leave valid (all fully verified).
    max_added: usize,
}

#[test]
fn faults_leave_only_verified_paths() {
    let env = Env::new();
    let dir = env.path("archives");
    let backend = format!("dir:{}", dir.display());
    let (chain6, _) = save_chain(&env, &backend, KEY);
    let good = dir.join(format!("{KEY}.nda"));
    let len = std::fs::metadata(&good).unwrap().len();

    let faults = [
        Fault {
            name: "truncated",
            exit: 8,
            message: "truncated",
            max_added: 6,
        },
        Fault {
            name: "corrupt-nar",
            exit: 7,
            message: "does not match the manifest",
            max_added: 6,
        },
        Fault {
            name: "version",
            exit: 8,
            message: "version 9 is not supported",
            max_added: 0,
        },
        Fault {
            name: "not-zstd",
            exit: 8,
            message: "not a nixdelta store archive",
            max_added: 0,
        },
        Fault {
            name: "bad-zstd-block",
            exit: 0,
            message: "corrupt",
            max_added: 6,
        },
    ];
    for f in &faults {
        // Each damaged copy under the key it was saved under (a copy
        // under another key would be refused for its name alone).
        let fdir = env.path(&format!("archives-{}", f.name));
        std::fs::create_dir_all(&fdir).unwrap();
        let fbackend = format!("dir:{}", fdir.display());
        let key = KEY.to_string();
        let path = fdir.join(format!("{key}.nda"));
        match f.name {
            "truncated" => {
                let data = std::fs::read(&good).unwrap();
                std::fs::write(&path, &data[..(len as usize) * 2 / 3]).unwrap();
            }
            "corrupt-nar" => rewrite(&good, &path, |plain| {
                // The last NAR is chain-6's: flip a byte of its `deps` file
                // or `prev` symlink target (a store path string).
                let needle = b"/nix/store/";
                let at = plain
                    .windows(needle.len())
                    .rposition(|w| w == needle)
                    .unwrap();
                plain[at + needle.len() + 3] ^= 0x01;
            }),
            "version" => rewrite(&good, &path, |plain| plain[16] = 9),
            "not-zstd" => {
                std::fs::write(&path, b"this is not an archive at all, not even zstd").unwrap()
            }
            "bad-zstd-block" => {
                let mut data = std::fs::read(&good).unwrap();
                let mid = data.len() / 2;
                for b in &mut data[mid..mid + 16] {
                    *b ^= 0x5a;
                }
                std::fs::write(&path, data).unwrap();
            }
            _ => unreachable!(),
        }
        for method in ["direct", "import"] {
            let store = env.path(&format!("s-{}-{method}", f.name));
            let r = restore_into(&env, &store, &fbackend, &key, &["--method", method]);
            let err = stderr(&r);
            if f.exit == 0 {
                // Damage anywhere: the manifest's checksum, a NAR's hash or
                // zstd's own checksum catches it (exit 7 or 8).
                assert!(
                    matches!(r.status.code(), Some(7 | 8)),
                    "{} {method}: {}",
                    f.name,
                    show(&r)
                );
            } else {
                assert_eq!(
                    r.status.code(),
                    Some(f.exit),
                    "{} {method}: {}",
                    f.name,
                    show(&r)
                );
            }
            assert!(err.contains(f.message), "{} {method}: {err}", f.name);
            assert_eq!(err.lines().count(), 1, "one clear line: {err}");
            let valid = valid_paths(&env, &store);
            assert!(valid.len() <= f.max_added, "{} {method}: {valid:?}", f.name);
            if f.name != "bad-zstd-block" {
                assert!(
                    !valid.contains(&chain6),
                    "{}: the damaged path was added",
                    f.name
                );
            }
            verify_store(&env, &store);
            // No leftovers: no temporary trees, nothing unregistered.
            let leftovers: Vec<String> = std::fs::read_dir(store.join("nix/store"))
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| {
                            n != ".links"
                                && !n.ends_with(".lock")
                                && !valid.contains(&format!("/nix/store/{n}"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert!(leftovers.is_empty(), "{} {method}: {leftovers:?}", f.name);
        }
    }
}

/// Several jobs on one machine: concurrent saves of one key (one wins),
/// concurrent restores into one shared store while saves run.
#[test]
fn concurrent_jobs_share_a_dir_and_a_store() {
    let env = Env::new();
    let dir = env.path("archives");
    let backend = format!("dir:{}", dir.display());
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let saves: Vec<_> = (0..4)
        .map(|_| {
            env.nixdelta(&[
                "archive",
                "save",
                "--archive",
                &backend,
                "--key",
                KEY,
                &chain6,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let outs: Vec<Output> = saves
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let saved = outs
        .iter()
        .filter(|o| report(o).contains("result: saved"))
        .count();
    for o in &outs {
        assert!(o.status.success(), "{}", show(o));
    }
    assert_eq!(saved, 1, "exactly one save publishes the key");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![format!("{KEY}.nda")], "no temporary files left");

    // Four restores into the same fresh store at once, and a save of
    // another key running meanwhile.
    let shared: PathBuf = env.path("shared");
    ok(env.nix_on(&shared, "nix-store").arg("--init"));
    let mut kids: Vec<_> = (0..4)
        .map(|i| {
            let mut c = nixdelta();
            c.arg("--store").arg(&shared).args([
                "archive",
                "restore",
                "--archive",
                &backend,
                "--key",
                KEY,
                "--method",
                if i % 2 == 0 { "direct" } else { "import" },
            ]);
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    kids.push(
        env.nixdelta(&[
            "archive",
            "save",
            "--archive",
            &backend,
            "--key",
            &format!("{KEY}-2"),
            &chain6,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", show(&o));
    }
    assert_eq!(valid_paths(&env, &shared), closure(&env, &chain6));
    verify_store(&env, &shared);
    let b = build_offline(&env, &shared);
    assert!(b.status.success(), "{}", show(&b));
}
