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
    ok(Command::new(&script)
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("WORKDIR", workdir)
        .env("SCALE", scale)
        .env("SALT", salt));
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
