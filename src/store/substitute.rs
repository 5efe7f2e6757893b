//! Has Nix substitute paths from a binary cache (warm start).

use std::process::Command;

use crate::error::{Error, Result};
use crate::nix::StoreSpec;

/// Paths per `nix-store --realise` call.
const BATCH: usize = 1000;

/// Realises `paths` by substitution only (`--max-jobs 0`: nothing is
/// built) from `substituter`, trusting `trusted_keys`. Nix substitutes in
/// parallel itself. Returns how many paths are valid afterwards.
pub fn substitute(
    store: &StoreSpec,
    paths: &[String],
    substituter: &str,
    trusted_keys: &[String],
) -> Result<usize> {
    let mut valid = 0;
    for chunk in paths.chunks(BATCH) {
        let mut cmd = Command::new("nix-store");
        if let Some(s) = store.nix_arg() {
            cmd.arg("--store").arg(s);
        }
        cmd.arg("--realise").args(chunk).args(["--max-jobs", "0"]);
        cmd.args(["--option", "substituters", substituter]);
        cmd.args(["--option", "trusted-public-keys", &trusted_keys.join(" ")]);
        let out = cmd.output().map_err(|e| {
            Error::Store(format!(
                "cannot run nix-store: {e} (is Nix installed and on PATH?)"
            ))
        })?;
        // Exit status is non-zero when any path could not be substituted;
        // the rest were: count what is valid now.
        valid += chunk.len() - invalid(store, chunk)?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .rev()
                .find(|l| l.contains("error"))
                .unwrap_or("")
                .to_string();
            tracing::warn!("warm start: some paths were not substituted: {line}");
        }
    }
    Ok(valid)
}

fn invalid(store: &StoreSpec, paths: &[String]) -> Result<usize> {
    let mut cmd = Command::new("nix-store");
    if let Some(s) = store.nix_arg() {
        cmd.arg("--store").arg(s);
    }
    let out = cmd
        .args(["--check-validity", "--print-invalid"])
        .args(paths)
        .output()
        .map_err(|e| Error::Store(format!("cannot run nix-store: {e}")))?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}
