//! Test harness: temporary chroot stores, real `nix` commands, the built
//! `nixdelta` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Nix settings for every command: no network substituters (or every build
/// waits on DNS), flakes enabled.
pub const NIX_CONFIG: &str = "substituters =\nexperimental-features = nix-command flakes\n";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn example(name: &str) -> PathBuf {
    repo().join("examples").join(name)
}

/// A scratch directory with a chroot store `store/`, deleted on drop.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("nixdelta-test-")
            .tempdir_in("/tmp")
            .unwrap();
        Env { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// `nixdelta --store <store> ARGS`.
    pub fn nixdelta(&self, args: &[&str]) -> Command {
        let mut cmd = nixdelta();
        cmd.arg("--store").arg(self.store()).args(args);
        cmd
    }

    /// A `nix`/`nix-store`/`nix-build` command on a given chroot store.
    pub fn nix_on(&self, store: &Path, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("NIX_CONFIG", NIX_CONFIG).arg("--store").arg(store);
        cmd
    }

    pub fn nix(&self, program: &str) -> Command {
        self.nix_on(&self.store(), program)
    }

    /// Builds attributes of an example into this env's store; output paths.
    pub fn build(&self, file: &str, attrs: &[&str]) -> Vec<String> {
        let mut cmd = self.nix("nix-build");
        cmd.arg(example(file)).arg("--no-out-link");
        for a in attrs {
            cmd.args(["-A", a]);
        }
        stdout_lines(&ok(&mut cmd))
    }

    /// A fresh signing key pair; returns (secret key file, public key).
    pub fn keygen(&self, name: &str) -> (PathBuf, String) {
        let out = self.path("keys");
        ok(nixdelta().args(["keygen", name, "--out"]).arg(&out));
        let public = std::fs::read_to_string(out.join(format!("{name}.pub"))).unwrap();
        (out.join(format!("{name}.sec")), public.trim().to_string())
    }

    pub fn cache_url(&self) -> String {
        format!("file://{}", self.path("cache").display())
    }

    /// Realises `paths` in a brand-new chroot store whose only substituter is
    /// `cache_url`, trusting only `public_key`, with `--max-jobs 0` so that
    /// nothing may be built: everything must be substituted and signed.
    pub fn realise_fresh(
        &self,
        fresh: &str,
        cache_url: &str,
        public_key: &str,
        paths: &[&str],
    ) -> Output {
        let mut cmd = self.nix_on(&self.path(fresh), "nix-store");
        cmd.arg("--realise")
            .args(paths)
            .args(["--max-jobs", "0"])
            .args(["--option", "substituters", cache_url])
            .args(["--option", "trusted-public-keys", public_key])
            .args(["--option", "require-sigs", "true"]);
        cmd.output().unwrap()
    }
}

pub fn nixdelta() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixdelta"));
    cmd.env("NIX_CONFIG", NIX_CONFIG)
        .env_remove("NIXDELTA_SECRET_KEY");
    cmd
}

/// Runs `cmd`, panicking with its output unless it succeeds.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", show(&out));
    out
}

pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `<hash>.narinfo` files of a file:// cache directory.
pub fn narinfos(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cache)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".narinfo"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The store path a narinfo file stands for, as Nix wrote it inside.
pub fn narinfo_field(text: &str, field: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}: ")).map(str::to_string))
}

/// Base names of `nix-store -qR` of `path` in `store`.
pub fn closure(env: &Env, path: &str) -> Vec<String> {
    let out = ok(env.nix("nix-store").args(["-qR", path]));
    let mut v = stdout_lines(&out);
    v.sort();
    v
}

/// `../shared` next to the crate: the team's bench workload lives there.
pub fn shared_dir() -> PathBuf {
    repo().join("..").join("shared")
}

/// The shared bench workload, built into the system store.
pub struct Workload {
    /// The output closure (`paths-<tag>.txt`).
    pub outputs: Vec<String>,
    /// Everything the build added: outputs, `.drv` files, sources (`all-<tag>.txt`).
    pub all: Vec<String>,
    /// GC root of the top-level output (`result-<tag>`).
    pub result: PathBuf,
}

/// Runs `shared/bench/make-workload.sh` with its lists and GC roots in
/// `workdir` (its own folder is read-only). Instant when already built.
pub fn build_workload(workdir: &Path, scale: &str, salt: &str) -> Workload {
    let script = shared_dir().join("bench").join("make-workload.sh");
    // The script pipes `sort` into an `awk` that may exit first; under its
    // `pipefail` that is exit 141 (SIGPIPE) now and then. It is idempotent:
    // run it again rather than fail the test on the shared script's race.
    for attempt in 1.. {
        let out = Command::new(&script)
            .env("NIX_CONFIG", NIX_CONFIG)
            .env("WORKDIR", workdir)
            .env("SCALE", scale)
            .env("SALT", salt)
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            out.status.code() == Some(141) && attempt < 4,
            "{script:?}:\n{}",
            show(&out)
        );
    }
    let tag = format!("{scale}-{salt}");
    let list = |name: &str| -> Vec<String> {
        let file = workdir.join(format!("{name}-{tag}.txt"));
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .lines()
            .map(str::to_string)
            .collect()
    };
    Workload {
        outputs: list("paths"),
        all: list("all"),
        result: workdir.join(format!("result-{tag}")),
    }
}

/// The sha256 (hex) and length of what `cmd` writes to stdout, read as a
/// stream (never held in memory); panics unless `cmd` succeeds.
pub fn stdout_sha256(cmd: &mut Command) -> (String, u64) {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped");
    let (mut hasher, mut len, mut buf) = (Sha256::new(), 0u64, vec![0u8; 256 * 1024]);
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("{cmd:?}: reading stdout: {e}"),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed:\n{}", show(&out));
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (hex, len)
}

// ------------------------------------------------ CI runners (ci_*.rs)

/// Where `scripts/setup.sh` installs npm tools (Node 22, gitlab-ci-local).
pub fn tools_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NIXDELTA_TOOLS") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/nixdelta-test/tools")
}

/// `tool` on PATH or in the npm tools' bin directory.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([tools_dir().join("node_modules/.bin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A CI runner a test drives. Missing: the test is skipped with a clear
/// message, except under CI (`$CI` set), where setup.sh must have
/// installed it and its absence fails the test.
pub fn runner(tool: &str, install: &str) -> Option<PathBuf> {
    if let Some(p) = which(tool) {
        return Some(p);
    }
    let msg = format!("{tool} is not installed ({install}; scripts/setup.sh does it)");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// Runs `cmd` in its own process group with stdout and stderr to files
/// (no pipe can fill up); after `secs` the whole group is killed and the
/// test fails with what was printed so far.
pub fn run_bounded(cmd: &mut Command, secs: u64) -> Output {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // The group's leftovers (servers a runner started) go too.
    // SAFETY: signalling the process group we created.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    let status = status.unwrap_or_else(|| child.wait().unwrap());
    let out = Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    };
    let timed_out = std::time::Instant::now() > deadline;
    assert!(
        !timed_out,
        "{cmd:?} timed out after {secs}s:\n{}",
        show(&out)
    );
    out
}

/// A git repository at `dir` with everything in it committed and an
/// `origin` remote (runners read the repository's name from it).
pub fn git_commit_all(dir: &Path, origin: &str) {
    let git = |args: &[&str]| {
        ok(Command::new("git")
            .current_dir(dir)
            .args([
                "-c",
                "user.name=nixdelta-test",
                "-c",
                "user.email=test@nixdelta.invalid",
            ])
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args));
    };
    if !dir.join(".git").exists() {
        git(&["init", "-q"]);
        git(&["remote", "add", "origin", origin]);
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "--allow-empty", "-m", "test"]);
}

/// Copies the files of the repository the CI front ends are made of
/// (`action.yml`, `dist/`, `plugin.yml`, `hooks/`, `templates/`) into `dst`.
pub fn copy_frontends(dst: &Path) {
    for rel in ["action.yml", "plugin.yml", "dist", "hooks", "templates"] {
        if repo().join(rel).exists() {
            copy_tree(&repo().join(rel), &dst.join(rel));
        }
    }
}

pub fn copy_tree(src: &Path, dst: &Path) {
    let meta = std::fs::metadata(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    if meta.is_dir() {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &dst.join(e.file_name()));
        }
    } else {
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    }
}

/// A flake.lock of a flake without inputs, as `nix flake lock` writes it.
pub const EMPTY_FLAKE_LOCK: &str =
    "{\n  \"nodes\": {\n    \"root\": {}\n  },\n  \"root\": \"root\",\n  \"version\": 7\n}\n";

/// The built binary's path.
pub fn nixdelta_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nixdelta")
}

/// Creates `dir` with a minimal `flake.lock` of lock file `version` (a
/// project whose archive key comes from it).
pub fn write_flake_lock(dir: &Path, version: u32) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("flake.lock"),
        format!(r#"{{"nodes":{{"root":{{}}}},"root":"root","version":{version}}}"#),
    )
    .unwrap();
}
