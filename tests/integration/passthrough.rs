//! Host passthrough: a real `nix-daemon` serves a host store H; a job sees
//! H's `/nix` bind-mounted read-only at M/nix (as a container sees the
//! host's `/nix` at `/mnt/nix`) and reaches the daemon through
//! `unix://M/nix/var/nix/daemon-socket/socket?root=M`. nixdelta reads the
//! DB on the read-only mount while the daemon writes it, and builds,
//! imports and substitutes through the daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::helpers::servers::Daemon;
use crate::helpers::store::save_chain;
use crate::helpers::util::*;

/// Another job's build through the same daemon: many small derivations,
/// so that the daemon keeps writing its DB for seconds.
const MANY: &str = r#"{ salt, n ? 40 }:
let
  busybox = builtins.path { name = "busybox-static"; path = /usr/bin;
    filter = p: t: baseNameOf p == "busybox"; };
  one = i: derivation {
    name = "many-${toString i}"; system = builtins.currentSystem;
    builder = "${busybox}/busybox";
    args = [ "sh" "-c" "sleep 0.2; echo ${toString i} > $out" ];
    inherit salt;
  };
in builtins.genList one n
"#;

/// A host store with its daemon, socket at the usual place under it.
struct Host {
    root: PathBuf,
    _daemon: Daemon,
}

impl Host {
    fn start(env: &Env, name: &str) -> Host {
        let root = env.path(name);
        ok(Command::new("nix-store")
            .env("NIX_CONFIG", NIX_CONFIG)
            .arg("--store")
            .arg(&root)
            .arg("--init"));
        let etc = env.path(&format!("{name}-etc"));
        std::fs::create_dir_all(&etc).unwrap();
        // The daemon trusts the job's non-root user too (a runner's user).
        std::fs::write(
            etc.join("nix.conf"),
            format!(
                "sandbox = false\nbuild-users-group =\nsubstituters =\n\
                 trusted-users = root {}\nexperimental-features = nix-command\n",
                crate::daemon::USER
            ),
        )
        .unwrap();
        let socket = root.join("nix/var/nix/daemon-socket/socket");
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let daemon = Daemon::spawn(
            "nix-daemon",
            Command::new("nix-daemon")
                .args(["--option", "store"])
                .arg(&root)
                .env_remove("NIX_CONFIG")
                .env("NIX_CONF_DIR", &etc)
                .env("NIX_DAEMON_SOCKET_PATH", &socket),
            env.path(&format!("{name}-daemon.log")),
        );
        let t = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(t.elapsed().as_secs() < 20, "nix-daemon did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Host {
            root,
            _daemon: daemon,
        }
    }

    /// The daemon as the host itself reaches it.
    fn url(&self) -> String {
        format!(
            "unix://{}/nix/var/nix/daemon-socket/socket?root={}",
            self.root.display(),
            self.root.display()
        )
    }
}

/// The store URL of the job, whose view of H is the mount at `m`.
fn job_url(m: &Path) -> String {
    format!(
        "unix://{}/nix/var/nix/daemon-socket/socket?root={}",
        m.display(),
        m.display()
    )
}

/// `program args` in a private mount namespace where H/nix is mounted
/// read-only at M/nix, as root or (`user`) as a non-root user.
fn in_job(host: &Host, m: &Path, user: Option<(u32, u32)>, program: &str) -> Command {
    std::fs::create_dir_all(m.join("nix")).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --bind \"$H/nix\" \"$M/nix\" && mount -o remount,bind,ro \"$M/nix\" \
             && exec \"$@\"",
        )
        .arg("sh");
    if let Some((uid, gid)) = user {
        cmd.arg("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--"]);
    }
    cmd.arg(program)
        .env("H", &host.root)
        .env("M", m)
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("NIXDELTA_CI", "none");
    cmd
}

fn root_or_panic() {
    if unsafe { libc::getuid() } != 0 || which("nix-daemon").is_none() || which("unshare").is_none()
    {
        panic!("needs root, nix-daemon and unshare (scripts/setup.sh installs them)");
    }
}

/// Starts another job's build through the daemon and waits until it
/// builds (its sources and `.drv`s are registered by then).
fn other_job(env: &Env, host: &Host) -> Child {
    let file = env.path("many.nix");
    std::fs::write(&file, MANY).unwrap();
    let log = env.path("many.log");
    let child = Command::new("nix-build")
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["--store", &host.url()])
        .arg(&file)
        .args(["--argstr", "salt", &format!("{:?}", env.dir.path())])
        .args(["--no-out-link", "--max-jobs", "2"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("building '")
    {
        assert!(t.elapsed().as_secs() < 60, "other job never built");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

fn base_hash(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap();
    format!("{}.narinfo", &base[..32])
}

/// start, a build through the daemon and finish, all through the
/// read-only mount while another job keeps the daemon writing: the cache
/// gets exactly the job's chain6 closure (the other job's paths are
/// excluded by pattern, so the assertion does not depend on timing), and a
/// fresh store substitutes all of it with `--max-jobs 0` and signatures.
#[test]
fn a_job_on_a_read_only_host_store_pushes_its_paths() {
    root_or_panic();
    job_on_read_only_host(None);
}

/// The same as a trusted non-root user (the daemon's `trusted-users`).
#[test]
fn a_trusted_non_root_job_on_a_read_only_host_store() {
    root_or_panic();
    job_on_read_only_host(Some(crate::daemon::job_user()));
}

fn job_on_read_only_host(user: Option<(u32, u32)>) {
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let host = Host::start(&env, "host");
    let m = env.path("mnt");
    let url = job_url(&m);
    let (sec, public) = env.keygen("pt-1");
    let cache = env.cache_url();
    let home = env.path("home");
    let state = home.join("state");
    for d in [&home, &env.path("cache")] {
        std::fs::create_dir_all(d).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
        }
    }
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&sec, Some(uid), Some(gid)).unwrap();
        std::os::unix::fs::chown(env.path("keys"), Some(uid), Some(gid)).unwrap();
    }
    let job = |program: &str| {
        let mut cmd = in_job(&host, &m, user, program);
        cmd.env("HOME", &home).current_dir(&home);
        cmd
    };
    let mut other = other_job(&env, &host);

    let out = job(nixdelta_bin())
        .args([
            "--store",
            &url,
            "start",
            "--to",
            &cache,
            "--archive",
            "none",
        ])
        .args(["--no-configure", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("snapshot at id"), "{}", show(&out));

    let b = job("nix-build")
        .args(["--store", &url])
        .arg(example("fib.nix"))
        .args(["-A", "chain6", "--no-out-link"])
        .args(["--argstr", "salt", &format!("pt-{:?}", env.dir.path())])
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", show(&b));
    let chain6 = stdout_lines(&b).remove(0);
    assert!(
        host.root.join(chain6.trim_start_matches('/')).exists(),
        "not built in the host store"
    );

    let fin = job(nixdelta_bin())
        .args([
            "--store",
            &url,
            "finish",
            "--to",
            &cache,
            "--archive",
            "none",
        ])
        .args(["--exclude", "many-[0-9]+$", "--secret-key-file"])
        .arg(&sec)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(fin.status.success(), "{}", show(&fin));
    let still_building = other.try_wait().unwrap().is_none();
    eprintln!("the other job was still building after finish: {still_building}");
    assert!(other.wait().unwrap().success(), "the other job failed");

    let q = ok(Command::new("nix-store")
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["--store", &host.url(), "-qR", &chain6]));
    let mut want: Vec<String> = stdout_lines(&q).iter().map(|p| base_hash(p)).collect();
    want.sort();
    assert_eq!(want.len(), 7, "chain-0..6: {want:?}");
    assert_eq!(narinfos(&env.path("cache")), want, "{}", show(&fin));

    let r = env.realise_fresh("fresh", &cache, &public, &[&chain6]);
    assert!(r.status.success(), "{}", show(&r));
    assert!(env
        .path("fresh")
        .join(chain6.trim_start_matches('/'))
        .join("value")
        .exists());
}

/// `archive restore` through the URL into a fresh host store: the Import
/// method through the daemon (the mount is read-only, and a daemon's DB is
/// its own), every path valid and intact in H. `--method direct` is exit 2.
#[test]
fn archive_restore_goes_through_the_daemon() {
    root_or_panic();
    let env = Env::new();
    let (chain6, _) = save_chain(
        &env,
        &format!("dir:{}", env.path("archives").display()),
        "k1",
    );
    let host = Host::start(&env, "host");
    let m = env.path("mnt");
    let url = job_url(&m);
    let archive = format!("dir:{}", env.path("archives").display());

    let direct = in_job(&host, &m, None, nixdelta_bin())
        .args(["--store", &url, "archive", "restore", "--archive", &archive])
        .args(["--key", "k1", "--method", "direct"])
        .output()
        .unwrap();
    assert_eq!(direct.status.code(), Some(2), "{}", show(&direct));
    let err = stderr(&direct);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--method direct"), "{err}");

    let out = in_job(&host, &m, None, nixdelta_bin())
        .args(["--store", &url, "archive", "restore", "--archive", &archive])
        .args(["--key", "k1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("(nix-store --import)"), "{}", show(&out));
    assert!(
        host.root.join(chain6.trim_start_matches('/')).exists(),
        "not in the host store"
    );
    let v = ok(Command::new("nix-store")
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["--store", &host.url(), "--verify", "--check-contents"]));
    assert!(!stderr(&v).contains("error"), "{}", show(&v));
    let q = ok(Command::new("nix-store")
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["--store", &host.url(), "-qR", &chain6]));
    assert_eq!(stdout_lines(&q).len(), 7);
}

/// Bad store URLs: exit 2, one line, before anything runs.
#[test]
fn bad_store_urls_are_usage_errors() {
    let env = Env::new();
    for bad in ["ssh://host", "unix://relative/socket", "local?rooot=/x"] {
        let out: Output = nixdelta()
            .args([
                "--store",
                bad,
                "start",
                "--archive",
                "none",
                "--no-configure",
            ])
            .arg("--state-dir")
            .arg(env.path("s"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", show(&out));
        assert!(stderr(&out).contains("bad store"), "{}", show(&out));
    }
}
