//! The shared bench workload (`../shared/bench`, SCALE=small) in the system
//! store: every path's NAR from `nixdelta nar` is byte-identical to
//! `nix-store --dump`, and a push of the output closure is substituted by a
//! fresh store with nothing built.
//!
//! The workload needs `/bin/sh` and host files, so it is built into the
//! system store (not a chroot store); its paths stay there between runs,
//! which makes the next build instant.

use std::process::Command;

use crate::helpers::util::*;

/// Fixed salt: the same store paths every run (distinct from the bench's).
const SALT: &str = "ndtest";

#[test]
fn workload_nars_match_nix_and_push_substitutes() {
    let shared = shared_dir();
    if !shared.is_dir() {
        eprintln!(
            "skipping workload test: {} does not exist (the shared bench workload lives there)",
            shared.display()
        );
        return;
    }
    let env = Env::new();
    let workdir = env.path("workload");
    std::fs::create_dir(&workdir).unwrap();
    let wl = build_workload(&workdir, "small", SALT);
    assert!(wl.outputs.len() > 100, "{} outputs", wl.outputs.len());
    assert!(wl.all.len() > wl.outputs.len());

    // 1. NAR byte identity on every path the build added (outputs, .drv
    //    files, the eval-time source), two paths at a time.
    let mismatches: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let all = &wl.all;
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for path in all.iter().skip(t).step_by(2) {
                        let ours = stdout_sha256(nixdelta().args(["nar", path]));
                        let nix = stdout_sha256(
                            Command::new("nix-store")
                                .env("NIX_CONFIG", NIX_CONFIG)
                                .args(["--dump", path]),
                        );
                        if ours != nix {
                            bad.push(format!(
                                "{path}: nixdelta {} ({} bytes), nix-store --dump {} ({} bytes)",
                                ours.0, ours.1, nix.0, nix.1
                            ));
                        }
                    }
                    bad
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(
        mismatches.is_empty(),
        "{} of {} NARs differ:\n{}",
        mismatches.len(),
        wl.all.len(),
        mismatches.join("\n")
    );

    // 2. Push the output closure from the system store (no --store), run
    //    from a directory that is not `/`, as a user would.
    let (sec, public) = env.keygen("workload-1");
    let url = env.cache_url();
    let push = ok(nixdelta()
        .current_dir(env.dir.path())
        .args(["push", "--to", &url, "--secret-key-file"])
        .arg(&sec)
        .arg(&wl.result));
    let line = String::from_utf8_lossy(&push.stdout);
    let n = wl.outputs.len();
    assert!(
        line.contains(&format!(
            "{n} paths considered, 0 already cached, {n} uploaded"
        )),
        "{line}"
    );
    assert_eq!(narinfos(&env.path("cache")).len(), n);

    // 3. A fresh store substitutes every output, signatures required,
    //    nothing built.
    let outputs: Vec<&str> = wl.outputs.iter().map(String::as_str).collect();
    let r = env.realise_fresh("fresh", &url, &public, &outputs);
    assert!(r.status.success(), "{}", show(&r));
    ok(env
        .nix_on(&env.path("fresh"), "nix-store")
        .arg("--check-validity")
        .args(&outputs));
    let missing: Vec<&&str> = outputs
        .iter()
        .filter(|p| !env.path("fresh").join(&p[1..]).exists())
        .collect();
    assert!(missing.is_empty(), "not in the fresh store: {missing:?}");
}
