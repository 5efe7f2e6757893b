//! A multi-user Nix: a real `nix-daemon` (its own chroot store, socket and
//! nix.conf) serving a job that runs as an untrusted, non-root user, as on
//! GitHub's hosted runners (where root is reached only by `sudo -n`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::helpers::util::*;

/// The untrusted user the job runs as (created once, kept).
pub(crate) const USER: &str = "nixdelta-job";

/// A `nix-daemon` started (and restarted, by nixdelta) through scripts,
/// as an init system would; stopped on drop.
pub(crate) struct NixDaemon {
    dir: PathBuf,
    restart: PathBuf,
    stop: PathBuf,
}

impl NixDaemon {
    pub(crate) fn start(dir: &Path) -> NixDaemon {
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("nix.conf"),
            "sandbox = false\nbuild-users-group =\nsubstituters =\ntrusted-users = root\n\
             experimental-features = nix-command\n",
        )
        .unwrap();
        let (store, socket, pid) = (dir.join("dstore"), dir.join("socket"), dir.join("pid"));
        let stop = dir.join("stop.sh");
        let script = |path: &Path, body: String| {
            std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script(
            &stop,
            format!(
                "[ -f {p} ] && kill $(cat {p}) 2>/dev/null\nwhile [ -S {s} ] && [ -f {p} ] && \
                 kill -0 $(cat {p}) 2>/dev/null; do sleep 0.1; done\nrm -f {s} {p}\n",
                p = pid.display(),
                s = socket.display()
            ),
        );
        let restart = dir.join("restart.sh");
        script(
            &restart,
            format!(
                "{stop}\nNIX_CONF_DIR={etc} NIX_DAEMON_SOCKET_PATH={socket} setsid nix-daemon \
                 --option store {store} >>{log} 2>&1 </dev/null &\necho $! > {pid}\n",
                stop = stop.display(),
                etc = etc.display(),
                socket = socket.display(),
                store = store.display(),
                log = dir.join("daemon.log").display(),
                pid = pid.display(),
            ),
        );
        ok(&mut Command::new(&restart));
        let d = NixDaemon {
            dir: dir.to_path_buf(),
            restart,
            stop,
        };
        let t = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(d.socket()).is_err() {
            assert!(t.elapsed().as_secs() < 20, "nix-daemon did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        d
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join("socket")
    }

    /// The store it serves (a chroot store: nixdelta's `--store`).
    pub(crate) fn store(&self) -> PathBuf {
        self.dir.join("dstore")
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("etc/nix.conf")
    }

    fn pid(&self) -> String {
        std::fs::read_to_string(self.dir.join("pid")).unwrap_or_default()
    }
}

impl Drop for NixDaemon {
    fn drop(&mut self) {
        let _ = Command::new(&self.stop).status();
    }
}

/// Lets `USER` run anything as root without a password, for as long as it
/// lives (GitHub's hosted runners give their user that).
struct Sudoers(PathBuf);

/// Held for the whole of each test that grants sudo to `USER` or expects
/// it refused: a grant is machine-wide.
static SUDO_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sudo_tests() -> std::sync::MutexGuard<'static, ()> {
    SUDO_TESTS.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sudoers {
    fn grant(tag: &str) -> Sudoers {
        let f = PathBuf::from(format!(
            "/etc/sudoers.d/nixdelta-test-{}-{tag}",
            std::process::id()
        ));
        std::fs::write(&f, format!("{USER} ALL=(root) NOPASSWD: ALL\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o440)).unwrap();
        Sudoers(f)
    }
}

impl Drop for Sudoers {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The uid and gid of `USER`, created when missing.
pub(crate) fn job_user() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, USER]).output().unwrap();
        out.status
            .success()
            .then(|| stdout_lines(&out)[0].parse::<u32>().unwrap())
    };
    if id("-u").is_none() {
        ok(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/bin/sh",
            USER,
        ]));
    }
    (id("-u").unwrap(), id("-g").unwrap())
}

/// A command as the job's user, on the daemon, with a clean Nix
/// environment (no NIX_CONFIG: its `substituters =` would wipe the job's).
fn as_job(d: &NixDaemon, home: &Path, program: &str) -> Command {
    let (uid, gid) = job_user();
    let mut cmd = Command::new(program);
    cmd.uid(uid)
        .gid(gid)
        .current_dir(home)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", home)
        .env("NIX_CONF_DIR", d.dir.join("etc"))
        .env("NIX_DAEMON_SOCKET_PATH", d.socket())
        .env("NIX_REMOTE", "daemon")
        .env("NIXDELTA_CI", "none")
        .env("NIXDELTA_DAEMON_RESTART", &d.restart);
    cmd
}

/// `start` for a pull-only job on the daemon's Nix, its environment file.
fn start(
    d: &NixDaemon,
    home: &Path,
    name: &str,
    cache: &str,
    public: &str,
    extra: &[&str],
) -> (Output, PathBuf) {
    let env_file = home.join(format!("{name}.env"));
    let out = as_job(d, home, nixdelta_bin())
        .args([
            "start",
            "--to",
            cache,
            "--public-key",
            public,
            "--archive",
            "none",
        ])
        .arg("--state-dir")
        .arg(home.join(name))
        .args(extra)
        .env("NIXDELTA_ENV_FILE", &env_file)
        .output()
        .unwrap();
    (out, env_file)
}

/// chain6 through the daemon, nothing built, with the job's environment.
fn build(d: &NixDaemon, home: &Path, env_file: &Path) -> Output {
    let text = std::fs::read_to_string(env_file).unwrap_or_default();
    let vars = text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()));
    as_job(d, home, "nix-build")
        .arg(example("fib.nix"))
        .args(["-A", "chain6", "--no-out-link", "--max-jobs", "0"])
        .args(["--option", "require-sigs", "true"])
        .envs(vars)
        .output()
        .unwrap()
}

/// An untrusted user's `start` warns with the exact lines the daemon
/// lacks, and its build cannot substitute; `--daemon` without root or
/// sudo says it failed (an error with `--strict`) and changes nothing;
/// with `sudo -n` it adds the lines once, restarts the daemon, and the
/// daemon then substitutes the whole closure, signatures required; a
/// second `--daemon` adds nothing.
#[test]
fn an_untrusted_user_reads_the_cache_once_the_daemon_allows_it() {
    if unsafe { libc::getuid() } != 0 || which("nix-daemon").is_none() || which("sudo").is_none() {
        panic!("needs root, nix-daemon and sudo (scripts/setup.sh installs them)");
    }
    let _serial = sudo_tests();
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let (sec, public) = env.keygen("daemon-1");
    let cache = env.cache_url();
    ok(env
        .nixdelta(&["push", "--to", &cache, "--secret-key-file"])
        .arg(&sec)
        .arg(&chain6));
    let d = NixDaemon::start(&env.path("daemon"));
    let home = env.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let (uid, gid) = job_user();
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    let conf0 = std::fs::read_to_string(d.conf()).unwrap();

    let (out, env_file) = start(&d, &home, "plain", &cache, &public, &[]);
    assert!(out.status.success(), "{}", show(&out));
    let lines = [
        format!("extra-trusted-substituters = {cache}"),
        format!("extra-trusted-public-keys = {public}"),
    ];
    let err = stderr(&out);
    for l in &lines {
        assert!(err.contains(l.as_str()), "{err}");
    }
    assert!(err.contains(&d.conf().display().to_string()), "{err}");
    let b = build(&d, &home, &env_file);
    assert!(
        !b.status.success(),
        "the daemon substituted for an untrusted user?"
    );
    assert!(
        stderr(&b).contains("ignoring untrusted substituter"),
        "{}",
        show(&b)
    );

    // No sudo: --daemon says so, and the daemon's file is untouched.
    let (out, _) = start(&d, &home, "nosudo", &cache, &public, &["--daemon"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("--daemon failed"), "{}", show(&out));
    let (out, _) = start(
        &d,
        &home,
        "strict",
        &cache,
        &public,
        &["--daemon", "--strict"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(
        stderr(&out).lines().filter(|l| l.contains("error")).count(),
        1,
        "{}",
        show(&out)
    );
    assert_eq!(std::fs::read_to_string(d.conf()).unwrap(), conf0);

    let _sudo = Sudoers::grant("daemon");
    let pid0 = d.pid();
    let (out, env_file) = start(&d, &home, "daemon", &cache, &public, &["--daemon"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stderr(&out).contains("restarted the Nix daemon"),
        "{}",
        show(&out)
    );
    assert_ne!(d.pid(), pid0, "not restarted");
    let conf1 = std::fs::read_to_string(d.conf()).unwrap();
    assert!(conf1.starts_with(&conf0), "{conf1}");
    for l in &lines {
        assert_eq!(conf1.matches(l.as_str()).count(), 1, "{conf1}");
    }
    let b = build(&d, &home, &env_file);
    assert!(b.status.success(), "{}", show(&b));
    assert_eq!(stdout_lines(&b), std::slice::from_ref(&chain6));
    let real = d.dir.join("dstore").join(chain6.trim_start_matches('/'));
    assert!(
        real.exists(),
        "not in the daemon's store: {}",
        real.display()
    );

    // Once is enough: nothing more added, no restart, no warning.
    let pid1 = d.pid();
    let (out, _) = start(&d, &home, "again", &cache, &public, &["--daemon"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!stderr(&out).contains("warning"), "{}", show(&out));
    assert_eq!(std::fs::read_to_string(d.conf()).unwrap(), conf1);
    assert_eq!(d.pid(), pid1);
}

/// A non-root job on a root-owned store (as on GitHub's hosted runners:
/// the daemon, passwordless sudo) restores an archive with the direct
/// method as root by `sudo -n`: chosen by itself for `local?root=…`, on
/// request (`--method direct`) for the daemon's URL. The daemon then
/// serves every path (a build through it with `--max-jobs 0` succeeds),
/// and the store verifies. Without sudo, `--method direct` is exit 2, one
/// line, the store untouched.
#[test]
fn a_non_root_job_restores_directly_as_root_by_sudo() {
    if unsafe { libc::getuid() } != 0 || which("nix-daemon").is_none() || which("sudo").is_none() {
        panic!("needs root, nix-daemon and sudo (scripts/setup.sh installs them)");
    }
    let _serial = sudo_tests();
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let archive = format!("dir:{}", env.path("archives").display());
    ok(env
        .nixdelta(&["archive", "save", "--archive", &archive, "--key", "k1"])
        .arg(&chain6));
    ok(Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(env.path("archives")));
    let home = env.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let (uid, gid) = job_user();
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    let restore = |d: &NixDaemon, store: &str, extra: &[&str]| {
        as_job(d, &home, nixdelta_bin())
            .args([
                "--store",
                store,
                "archive",
                "restore",
                "--archive",
                &archive,
            ])
            .args(["--key", "k1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let served = |d: &NixDaemon| {
        as_job(d, &home, "nix-build")
            .arg(example("fib.nix"))
            .args(["-A", "chain6", "--no-out-link", "--max-jobs", "0"])
            .output()
            .unwrap()
    };

    // No sudo: refused, nothing written (the daemon's DB made first, as a
    // daemon that has served anything has one).
    let d = NixDaemon::start(&env.path("d0"));
    ok(Command::new("nix-store")
        .env("NIX_CONFIG", NIX_CONFIG)
        .arg("--store")
        .arg(d.store())
        .arg("--init"));
    let url = format!(
        "unix://{}?root={}",
        d.socket().display(),
        d.store().display()
    );
    let out = restore(&d, &url, &["--method", "direct"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--method direct") && err.contains("sudo -n"),
        "{err}"
    );
    assert!(!d.store().join(chain6.trim_start_matches('/')).exists());

    let _sudo = Sudoers::grant("direct");
    for (name, how) in [("auto", "local"), ("asked", "url")] {
        let d = NixDaemon::start(&env.path(name));
        let store = match how {
            "local" => format!("local?root={}", d.store().display()),
            _ => format!(
                "unix://{}?root={}",
                d.socket().display(),
                d.store().display()
            ),
        };
        let extra: &[&str] = if how == "url" {
            &["--method", "direct"]
        } else {
            &[]
        };
        let out = restore(&d, &store, extra);
        assert!(out.status.success(), "{name}: {}", show(&out));
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(report.contains("paths: 7 added"), "{name}: {}", show(&out));
        assert!(
            report.contains("(direct, as root by sudo -n)"),
            "{name}: {}",
            show(&out)
        );
        let real = d.store().join(chain6.trim_start_matches('/'));
        let meta = std::fs::symlink_metadata(&real).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            0,
            "root's, as the daemon's own"
        );
        let b = served(&d);
        assert!(
            b.status.success(),
            "{name}: the daemon serves it: {}",
            show(&b)
        );
        assert_eq!(stdout_lines(&b), std::slice::from_ref(&chain6));
        let v = ok(Command::new("nix-store")
            .env("NIX_CONFIG", NIX_CONFIG)
            .args(["--store"])
            .arg(d.store())
            .args(["--verify", "--check-contents"]));
        assert!(!stderr(&v).contains("error"), "{name}: {}", show(&v));
    }
}

/// keep-failed on a daemon: the job's user (untrusted, not root) runs
/// `start --keep-failed`; its build, done by the daemon, fails in its
/// install phase and the daemon keeps the tree in its temp dir, part of it
/// readable by root only. `finish` without `sudo -n` says what it left out;
/// with it, streams the tree with `sudo -n tar`, packs it (no archive: a
/// file on this machine)
/// and the printed `failed-tree fetch` shows the files, the private ones too.
#[test]
fn keep_failed_collects_the_daemon_s_build_tree_through_sudo() {
    if unsafe { libc::getuid() } != 0 || which("nix-daemon").is_none() || which("sudo").is_none() {
        panic!("needs root, nix-daemon and sudo (scripts/setup.sh installs them)");
    }
    let _serial = sudo_tests();
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = NixDaemon::start(&env.path("daemon"));
    let home = env.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let (uid, gid) = job_user();
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    let env_file = home.join("job.env");
    let out = as_job(&d, &home, nixdelta_bin())
        .args(["start", "--keep-failed", "--archive", "none"])
        .arg("--state-dir")
        .arg(home.join("state"))
        .env("NIXDELTA_ENV_FILE", &env_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let text = std::fs::read_to_string(&env_file).unwrap();
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    let b = as_job(&d, &home, "nix-build")
        .arg(example("fails-in-install.nix"))
        .args([
            "--argstr",
            "salt",
            &format!("daemon-{}", std::process::id()),
        ])
        .arg("--no-out-link")
        .envs(vars)
        .output()
        .unwrap();
    assert!(!b.status.success(), "{}", show(&b));
    let kept = stderr(&b)
        .lines()
        .find_map(|l| l.split("keeping build directory '").nth(1))
        .and_then(|l| l.split('\'').next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("the daemon kept no tree: {}", show(&b)));
    // Removed at the end, whatever happens.
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(kept.clone());
    assert_eq!(
        kept.parent(),
        Some(Path::new("/tmp")),
        "the daemon builds in its TMPDIR, here the test's: run the tests without TMPDIR"
    );
    let finish = || {
        as_job(&d, &home, nixdelta_bin())
            .arg("finish")
            .arg("--state-dir")
            .arg(home.join("state"))
            .output()
            .unwrap()
    };
    // No sudo: the tree is not readable whole, and finish says why.
    let out = finish();
    assert!(out.status.success(), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("keep-failed: left out"), "{err}");
    assert!(err.contains("`sudo -n` refused"), "{err}");
    assert!(!err.contains("kept 1 failed build trees"), "{err}");

    let _sudo = Sudoers::grant("keep-failed");
    let out = finish();
    assert!(out.status.success(), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("kept 1 failed build trees"), "{err}");
    let fetch = err
        .lines()
        .find_map(|l| l.split("Fetch them: ").nth(1))
        .and_then(|l| l.split(" ; ").next())
        .expect("the fetch command")
        .to_string();
    let args: Vec<&str> = fetch.split_whitespace().collect();
    assert_eq!(
        args[..4],
        ["nixdelta", "failed-tree", "fetch", "--file"],
        "{fetch}"
    );
    let packed = PathBuf::from(args[4]);
    let fresh = env.path("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    ok(nixdelta()
        .current_dir(&fresh)
        .args(["failed-tree", "fetch", "--file"])
        .arg(&packed)
        .args(["--out", "./failed-tree"]));
    let _ = std::fs::remove_file(&packed);
    let tree = fresh.join("failed-tree").join(kept.file_name().unwrap());
    assert_eq!(
        std::fs::read_to_string(tree.join("install-progress.txt")).unwrap(),
        "copied 1 of 2 files\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("private/notes")).unwrap(),
        "the build user's\n"
    );
}
