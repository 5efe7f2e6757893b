//! Fallback store access through the `nix` CLI, for when the DB can't be
//! opened (a daemon-only setup, permissions). Slower: one process per batch.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use super::PathInfo;
use crate::error::{Error, Result};
use crate::nix::{Sha256Hash, StorePath, StoreSpec};

/// Paths per command line, well under the kernel's argument limit.
const BATCH: usize = 500;

pub struct Cli {
    store_arg: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonInfo {
    path: String,
    nar_hash: Option<String>,
    nar_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
    deriver: Option<String>,
    #[serde(default)]
    signatures: Vec<String>,
    ca: Option<String>,
}

impl Cli {
    pub fn new(spec: &StoreSpec) -> Result<Cli> {
        let cli = Cli {
            store_arg: spec.nix_arg(),
        };
        cli.run("nix-store", &["--version".to_string()])?;
        Ok(cli)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        if let Some(store) = &self.store_arg {
            cmd.arg("--store").arg(store);
        }
        cmd.args(["--option", "experimental-features", "nix-command"]);
        cmd
    }

    fn run(&self, program: &str, args: &[String]) -> Result<String> {
        let out = self.command(program).args(args).output().map_err(|e| {
            Error::Store(format!(
                "cannot run {program}: {e} (is Nix installed and on PATH?)"
            ))
        })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .find(|l| l.contains("error"))
                .unwrap_or(err.trim());
            return Err(Error::Store(format!("{program} failed: {line}")));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn path_infos(
        &self,
        paths: &[StorePath],
        store_dir: &str,
    ) -> Result<Vec<Option<PathInfo>>> {
        let mut found: HashMap<StorePath, PathInfo> = HashMap::new();
        for chunk in paths.chunks(BATCH) {
            let abs: Vec<String> = chunk.iter().map(|p| p.to_absolute(store_dir)).collect();
            let mut args = vec![
                "--check-validity".to_string(),
                "--print-invalid".to_string(),
            ];
            args.extend(abs.iter().cloned());
            let invalid: HashSet<String> = self
                .run("nix-store", &args)?
                .lines()
                .map(str::to_string)
                .collect();
            // `--derivation` makes a .drv stand for itself rather than its outputs.
            for drvs in [true, false] {
                let batch: Vec<String> = abs
                    .iter()
                    .filter(|p| p.ends_with(".drv") == drvs && !invalid.contains(*p))
                    .cloned()
                    .collect();
                if batch.is_empty() {
                    continue;
                }
                let mut args = vec!["path-info".to_string(), "--json".to_string()];
                if drvs {
                    args.push("--derivation".to_string());
                }
                args.extend(batch);
                let json = self.run("nix", &args)?;
                let infos: Vec<JsonInfo> = serde_json::from_str(&json)
                    .map_err(|e| Error::Store(format!("nix path-info --json: {e}")))?;
                for j in infos {
                    if let Some(info) = to_info(j, store_dir)? {
                        found.insert(info.path.clone(), info);
                    }
                }
            }
        }
        Ok(paths.iter().map(|p| found.remove(p)).collect())
    }

    /// The outputs of each derivation, valid or not (the caller checks).
    pub fn derivation_outputs(
        &self,
        drvs: &[StorePath],
        store_dir: &str,
    ) -> Result<Vec<Vec<StorePath>>> {
        drvs.iter()
            .map(|d| {
                let args = [
                    "--query".into(),
                    "--outputs".into(),
                    d.to_absolute(store_dir),
                ];
                self.run("nix-store", &args)?
                    .lines()
                    .map(|l| parse(l, store_dir))
                    .collect()
            })
            .collect()
    }

    /// The `.drv` an installable (`.#pkg`, `nixpkgs#hello`, a file with
    /// `-A`) evaluates to, instantiated in the store.
    pub fn derivation_of(&self, installable: &str, store_dir: &str) -> Result<StorePath> {
        let args = [
            "--extra-experimental-features".into(),
            "flakes".into(),
            "path-info".into(),
            "--derivation".into(),
            installable.to_string(),
        ];
        let out = self.run("nix", &args)?;
        let line = out.lines().next().ok_or_else(|| {
            Error::Store(format!(
                "{installable}: nix path-info printed no derivation"
            ))
        })?;
        parse(line, store_dir)
    }

    /// A flake's development environment, built by Nix (`nix
    /// print-dev-env --profile`): the store path the profile points to.
    pub fn dev_env(&self, installable: &str, profile: &Path, store_dir: &str) -> Result<StorePath> {
        let args = [
            "--extra-experimental-features".into(),
            "nix-command flakes".into(),
            "print-dev-env".into(),
            "--profile".into(),
            profile.display().to_string(),
            installable.to_string(),
        ];
        self.run("nix", &args)?;
        let target = std::fs::read_link(profile).map_err(|e| {
            Error::Store(format!(
                "{installable}: no dev profile at {}: {e}",
                profile.display()
            ))
        })?;
        // The profile links to a generation link, which links to the store.
        let target = if target.starts_with(store_dir) {
            target
        } else {
            let gen = profile.parent().unwrap_or(Path::new(".")).join(&target);
            std::fs::read_link(&gen).unwrap_or(target)
        };
        parse(&target.display().to_string(), store_dir)
    }

    /// The `.drv` paths a Nix file evaluates to (`nix-instantiate FILE`).
    pub fn instantiate(&self, file: &str, store_dir: &str) -> Result<Vec<StorePath>> {
        let out = self.run("nix-instantiate", &[file.to_string()])?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| parse(l.trim(), store_dir))
            .collect()
    }

    pub fn all_paths(&self, store_dir: &str) -> Result<Vec<StorePath>> {
        let out = self.run("nix", &["path-info".into(), "--all".into()])?;
        out.lines().map(|l| parse(l, store_dir)).collect()
    }
}

fn parse(s: &str, store_dir: &str) -> Result<StorePath> {
    StorePath::from_absolute(s, store_dir).map_err(|e| Error::Store(format!("nix CLI: {e}")))
}

fn to_info(j: JsonInfo, store_dir: &str) -> Result<Option<PathInfo>> {
    let (Some(hash), Some(nar_size)) = (j.nar_hash, j.nar_size) else {
        return Ok(None);
    };
    let nar_hash =
        Sha256Hash::parse(&hash).map_err(|e| Error::Store(format!("nix CLI: {}: {e}", j.path)))?;
    let mut references = j
        .references
        .iter()
        .map(|r| parse(r, store_dir))
        .collect::<Result<Vec<_>>>()?;
    references.sort();
    Ok(Some(PathInfo {
        path: parse(&j.path, store_dir)?,
        id: 0,
        nar_hash,
        nar_size,
        references,
        deriver: j
            .deriver
            .as_deref()
            .map(|d| parse(d, store_dir))
            .transpose()?,
        sigs: j.signatures,
        ca: j.ca,
    }))
}
