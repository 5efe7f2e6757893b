//! Push while the job builds (issue 16): `start --watch` leaves a
//! background uploader that pushes each path as the build registers it;
//! `finish` drains it and pushes the rest, also when it was killed, and an
//! uploader whose job never finishes stops on its own.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::helpers::servers::assert_verify_clean;
use crate::helpers::util::*;

struct Job {
    env: Env,
    sec: PathBuf,
    public: String,
    state: PathBuf,
}

impl Job {
    fn new(name: &str) -> Job {
        let env = Env::new();
        ok(env.nix("nix-store").arg("--init"));
        let (sec, public) = env.keygen(name);
        let state = env.path("state");
        Job {
            env,
            sec,
            public,
            state,
        }
    }

    fn push_args(&self) -> Vec<String> {
        vec![
            "--to".into(),
            self.env.cache_url(),
            "--secret-key-file".into(),
            self.sec.display().to_string(),
            "--state-dir".into(),
            self.state.display().to_string(),
        ]
    }

    fn start_watch(&self, extra: &[&str]) -> Output {
        let mut cmd =
            self.env
                .nixdelta(&["start", "--watch", "--archive", "none", "--no-configure"]);
        cmd.args(self.push_args()).args(extra);
        cmd.output().unwrap()
    }

    fn finish(&self) -> Output {
        ok(self.env.nixdelta(&["finish"]).args(self.push_args()))
    }

    fn build(&self, attr: &str) -> String {
        self.env.build("fib.nix", &[attr]).pop().unwrap()
    }

    fn cached(&self, path: &str) -> bool {
        let hash = &path["/nix/store/".len()..][..32];
        self.env.path(&format!("cache/{hash}.narinfo")).exists()
    }

    /// Waits (at most 60 s) until `f` holds.
    fn wait(&self, what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            let log = std::fs::read_to_string(self.state.join("watch.log")).unwrap_or_default();
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{what}; uploader log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn uploader_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.state.join("watch.pid")).unwrap();
        text.trim().parse().unwrap()
    }

    fn fresh_gets(&self, path: &str) {
        let out = self
            .env
            .realise_fresh("fresh", &self.env.cache_url(), &self.public, &[path]);
        assert!(out.status.success(), "{}", show(&out));
        assert_verify_clean(&self.env, &self.env.cache_url(), &[&self.public], &[]);
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn watched_build_is_in_the_cache_before_finish() {
    let job = Job::new("watch-1");
    let out = job.start_watch(&[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stderr(&out).contains("background uploader"),
        "{}",
        show(&out)
    );
    // A build of several steps; each output reaches the cache while the
    // job still runs (no finish yet).
    let fib3 = job.build("fib3");
    job.wait("fib3 uploaded during the build", || job.cached(&fib3));
    let chain6 = job.build("chain6");
    job.wait("chain6 uploaded during the build", || job.cached(&chain6));
    let fin = job.finish();
    let text = show(&fin);
    assert!(text.contains("uploaded during the build"), "{text}");
    assert!(!alive(job.uploader_pid()), "the uploader outlived finish");
    // finish asked nothing the uploader had pushed.
    assert!(text.contains("0 uploaded"), "{text}");
    job.fresh_gets(&chain6);
    job.fresh_gets(&fib3);
}

#[test]
fn finish_completes_the_push_after_a_kill_9() {
    let job = Job::new("watch-2");
    assert!(job.start_watch(&[]).status.success());
    let fib3 = job.build("fib3");
    job.wait("fib3 uploaded", || job.cached(&fib3));
    let pid = job.uploader_pid();
    // SAFETY: a signal to the uploader this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    job.wait("uploader gone", || !alive(pid));
    let chain6 = job.build("chain6");
    let fin = job.finish();
    let text = show(&fin);
    assert!(text.contains("died before finish"), "{text}");
    assert!(job.cached(&chain6), "{text}");
    job.fresh_gets(&chain6);
}

#[test]
fn a_cancelled_job_s_uploader_stops_on_its_own() {
    let job = Job::new("watch-3");
    assert!(job.start_watch(&["--watch-timeout", "3s"]).status.success());
    let chain6 = job.build("chain6");
    let pid = job.uploader_pid();
    // No finish: the uploader drains what there is and exits.
    job.wait("uploader exits on its timeout", || !alive(pid));
    let done = std::fs::read_to_string(job.state.join("watch.done")).unwrap();
    assert!(done.contains("\"ended\":\"timeout\""), "{done}");
    assert_verify_clean(&job.env, &job.env.cache_url(), &[&job.public], &[]);
    // Whatever it left is pushed by a late finish (here: nothing, or the rest).
    job.finish();
    job.fresh_gets(&chain6);
}

#[test]
fn one_uploader_per_state_dir_and_options_checked_first() {
    let job = Job::new("watch-4");
    assert!(job.start_watch(&[]).status.success());
    let again = job.start_watch(&[]);
    assert_eq!(again.status.code(), Some(2), "{}", show(&again));
    assert!(
        stderr(&again).contains("already watches"),
        "{}",
        show(&again)
    );
    job.finish();
    // Bad options: exit 2 before any snapshot or uploader.
    let other = job.env.path("state-2");
    let key = job.sec.display().to_string();
    let url = job.env.cache_url();
    for (args, says) in [
        (
            vec![
                "--to",
                &url,
                "--secret-key-file",
                &key,
                "--watch-timeout",
                "soon",
            ],
            "--watch-timeout",
        ),
        (vec!["--secret-key-file", &key], "needs --to"),
    ] {
        let out = job
            .env
            .nixdelta(&["start", "--watch", "--archive", "none"])
            .args(&args)
            .arg("--state-dir")
            .arg(&other)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        assert!(stderr(&out).contains(says), "{}", show(&out));
        assert!(!other.join("state.json").exists());
    }
}
