//! The direct method as root, through `sudo -n`, for a job that is not
//! root on a multi-user install (GitHub's hosted runners: a Nix daemon and
//! passwordless sudo). The compressed archive stream is piped into
//! `sudo -n nixdelta --store local… archive import-stream`, which unpacks
//! and registers directly on the local store, as root's own Nix commands
//! do beside the daemon (SQLite and Nix's path locks keep them apart),
//! instead of every NAR going through `nix-store --import` and the daemon.
//!
//! Only for a root-owned store (a multi-user install): a single-user
//! store belongs to its user, and root-owned paths would break it.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{ImportMethod, ImportOptions, ImportStats, Layout};
use crate::error::{Error, Result};
use crate::nix::StoreSpec;

/// Whether root may be had without a password and can write the store
/// and its DB (asked once per process: `sudo -n test -w …`).
pub(super) fn allowed(l: &Layout) -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| probe(l))
}

fn probe(l: &Layout) -> bool {
    if unsafe { libc::geteuid() } == 0 || std::env::var_os("NIXDELTA_NO_SUDO").is_some() {
        return false;
    }
    let db = l.real_store_dir.join("../var/nix/db");
    let root_owned = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.uid() == 0);
    if !root_owned(&l.real_store_dir) || !root_owned(&db) {
        return false;
    }
    let out = Command::new("sudo")
        .arg("-n")
        .args(["test", "-w"])
        .arg(&l.real_store_dir)
        .args(["-a", "-w"])
        .arg(&db)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let ok = out.is_ok_and(|s| s.success());
    tracing::debug!(
        "sudo -n for the direct method: {}",
        if ok { "allowed" } else { "refused" }
    );
    ok
}

/// The same store as root opens it itself, bypassing the daemon.
fn local_spec(spec: &StoreSpec) -> String {
    match spec.root() {
        Some(r) => format!("local?root={}", r.display()),
        None => "local".into(),
    }
}

/// Imports `src` (the compressed archive) through the root child.
pub(super) fn import_as_root<R: Read>(
    l: &Layout,
    mut src: R,
    what: &str,
    opts: &ImportOptions,
) -> Result<ImportStats> {
    let exe = std::env::current_exe().map_err(|e| Error::Other(e.into()))?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut cmd = Command::new("sudo");
    // sudo resets the environment: PATH as the job has it (root's secure
    // path may not hold Nix), and nothing else of ours.
    cmd.arg("-n")
        .arg("env")
        .arg(format!("PATH={}", path.to_string_lossy()))
        .arg(exe)
        .args(["--ci", "none", "--store"])
        .arg(local_spec(&l.spec))
        .args(["archive", "import-stream", "--what", what])
        .arg(format!("--jobs={}", opts.jobs));
    if let Some(k) = &opts.expect_key {
        cmd.arg(format!("--expect-key={k}"));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::Other(anyhow::anyhow!("cannot run sudo -n: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let copied = std::io::copy(&mut src, &mut stdin);
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Other(e.into()))?;
    if !out.status.success() {
        return Err(super::input_err(
            what,
            format!(
                "the direct restore as root (sudo -n) failed ({}); nothing it did not verify was registered",
                out.status
            ),
        ));
    }
    copied.map_err(|e| super::read_err(what, e))?;
    let mut stats: ImportStats = serde_json::from_slice(&out.stdout).map_err(|e| {
        super::input_err(what, format!("unreadable answer of the root import: {e}"))
    })?;
    stats.method = Some(ImportMethod::SudoDirect);
    Ok(stats)
}

/// The root side: reads the archive on stdin, imports it directly, prints
/// the stats as JSON on stdout.
pub fn serve(store: &crate::store::Store, what: &str, opts: &ImportOptions) -> Result<()> {
    let opts = ImportOptions {
        method: ImportMethod::Direct,
        ..opts.clone()
    };
    let stats = super::import(store, std::io::stdin().lock(), what, &opts)?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &stats).map_err(|e| Error::Other(e.into()))?;
    let _ = out.flush();
    Ok(())
}
