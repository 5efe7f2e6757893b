//! The only code that touches the Nix store's metadata: the SQLite DB
//! (read-only) or, where that can't be read, the `nix` CLI.
//!
//! A store is addressed as Nix's `--store` ([`StoreSpec`]): the DB lives
//! under `ROOT/nix/var/nix/db`, the files under `ROOT/nix/store`, while
//! store paths keep their logical directory (`/nix/store`). Every `nix`
//! command run here gets the spec's `--store`, so a daemon store is
//! written only by its daemon.

mod cli;
pub mod daemon;
mod db;
pub mod features;
pub mod import;
pub mod jobs;
pub mod leftovers;
pub mod substitute;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::nix::{StorePath, StoreSpec, DEFAULT_STORE_DIR};

pub use crate::nix::PathInfo;

/// Where the store stands at a moment: the highest `ValidPaths.id` and the
/// number of valid paths (ids are AUTOINCREMENT, never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub max_id: i64,
    pub count: u64,
}

enum Backend {
    Db(db::Db),
    Cli(cli::Cli),
}

pub struct Store {
    spec: StoreSpec,
    /// Where the store's `nix/` tree is; `None` for `/`.
    root: Option<PathBuf>,
    store_dir: String,
    backend: Backend,
}

impl Store {
    /// Opens the store `spec` names. Reads the DB under its root directly;
    /// falls back to the `nix` CLI with a warning when the DB exists but
    /// can't be opened, or when `NIXDELTA_STORE_BACKEND=cli`.
    pub fn open(spec: &StoreSpec) -> Result<Store> {
        let spec = spec.absolute();
        let root = spec.root();
        let store_dir = DEFAULT_STORE_DIR.to_string();
        // The system store's DB is at /nix/var/nix/db whatever the working directory.
        let prefix = root.map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let db_path = prefix.join("nix/var/nix/db/db.sqlite");
        if !db_path.exists() {
            let hint = if root.is_some() {
                ""
            } else {
                " (is Nix installed?)"
            };
            return Err(Error::Store(format!(
                "no Nix database at {}{hint}",
                db_path.display()
            )));
        }
        let backend = if std::env::var("NIXDELTA_STORE_BACKEND").as_deref() == Ok("cli") {
            tracing::warn!("NIXDELTA_STORE_BACKEND=cli: reading the store through the nix CLI");
            Backend::Cli(cli::Cli::new(&spec)?)
        } else {
            match db::Db::open(&db_path) {
                Ok(db) => Backend::Db(db),
                Err(e) => {
                    tracing::warn!(
                        "cannot read {} ({e}); falling back to the nix CLI (slower)",
                        db_path.display()
                    );
                    Backend::Cli(cli::Cli::new(&spec)?)
                }
            }
        };
        Ok(Store {
            root: root.map(Path::to_path_buf),
            spec,
            store_dir,
            backend,
        })
    }

    /// Whether a Nix DB exists for the store (a store nothing was ever
    /// added to has none yet).
    pub fn exists(spec: &StoreSpec) -> bool {
        spec.root()
            .unwrap_or(Path::new("/"))
            .join("nix/var/nix/db/db.sqlite")
            .exists()
    }

    /// Creates an empty chroot store through Nix (a fresh runner's store
    /// volume) unless it has a DB already. Only a local store under a root
    /// is created: the system store and a daemon's are Nix's business.
    pub fn init(spec: &StoreSpec) -> Result<()> {
        let root = match spec {
            StoreSpec::Dir(r) | StoreSpec::Local { root: Some(r) } => r,
            _ if daemon::in_use(spec) && !Store::exists(spec) => return Store::wake_daemon(spec),
            _ => return Ok(()),
        };
        if Store::exists(spec) {
            return Ok(());
        }
        let out = std::process::Command::new("nix-store")
            .arg("--store")
            .arg(root)
            .arg("--init")
            .output()
            .map_err(|e| Error::Store(format!("cannot run nix-store --init: {e}")))?;
        if !out.status.success() {
            return Err(Error::Store(format!(
                "nix-store --store {} --init: {}",
                root.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// A daemon that has served nothing yet has no DB: one query through
    /// it (allowed to any user) makes it open, and create, its store.
    fn wake_daemon(spec: &StoreSpec) -> Result<()> {
        let mut cmd = std::process::Command::new("nix-store");
        if let Some(s) = spec.nix_arg() {
            cmd.arg("--store").arg(s);
        }
        let out = cmd
            .args(["--check-validity", "--print-invalid"])
            .arg("/nix/store/00000000000000000000000000000000-nixdelta-probe")
            .output()
            .map_err(|e| Error::Store(format!("cannot run nix-store: {e}")))?;
        if !out.status.success() {
            return Err(Error::Store(format!(
                "the Nix daemon's store has no DB yet, and asking the daemon failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// The store as given (roots made absolute).
    pub fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    /// The logical store directory (`/nix/store`).
    pub fn store_dir(&self) -> &str {
        &self.store_dir
    }

    /// True when the DB is read directly (snapshot ids are available).
    pub fn reads_db(&self) -> bool {
        matches!(self.backend, Backend::Db(_))
    }

    /// Where the files of `path` are on this machine.
    pub fn real_path(&self, path: &StorePath) -> PathBuf {
        let logical = path.to_absolute(&self.store_dir);
        match &self.root {
            Some(root) => root.join(logical.trim_start_matches('/')),
            None => PathBuf::from(logical),
        }
    }

    /// Turns a user argument into a store path: `/nix/store/...` (with or
    /// without a sub-path), a path inside a chroot store, or a symlink to
    /// one such as `./result` (followed link by link, since a chroot store's
    /// links point at logical paths that don't exist on this machine).
    pub fn parse_path_arg(&self, arg: &str) -> Result<StorePath> {
        let not_store = || {
            Error::Path(format!(
                "{arg}: not a path in the Nix store {}",
                self.store_dir
            ))
        };
        let mut current = PathBuf::from(arg);
        for _ in 0..40 {
            let s = current.to_string_lossy().to_string();
            if let Some(p) = self.logical_of(&s) {
                return StorePath::from_absolute_prefix(&p, &self.store_dir)
                    .map_err(|e| Error::Path(format!("{arg}: {e}")));
            }
            match std::fs::read_link(&current) {
                Ok(target) => {
                    current = match current.parent() {
                        Some(dir) if target.is_relative() => dir.join(target),
                        _ => target,
                    }
                }
                Err(_) if current.exists() => {
                    let canon = current.canonicalize().map_err(|_| not_store())?;
                    if canon == current {
                        return Err(not_store());
                    }
                    current = canon;
                }
                Err(_) => return Err(Error::Path(format!("{arg}: no such file or directory"))),
            }
        }
        Err(not_store())
    }

    /// `s` as a logical store path string, if it lies in this store.
    fn logical_of(&self, s: &str) -> Option<String> {
        let in_dir = |s: &str| s.starts_with(&format!("{}/", self.store_dir));
        if let Some(root) = &self.root {
            let root = root.to_string_lossy();
            if let Some(rest) = s.strip_prefix(root.trim_end_matches('/')) {
                if in_dir(rest) {
                    return Some(rest.to_string());
                }
            }
        }
        in_dir(s).then(|| s.to_string())
    }

    /// Path info of one path; `None` when it is not valid.
    pub fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>> {
        Ok(self.path_infos(std::slice::from_ref(path))?.pop().flatten())
    }

    /// Path infos in the order given; `None` for paths that are not valid.
    pub fn path_infos(&self, paths: &[StorePath]) -> Result<Vec<Option<PathInfo>>> {
        match &self.backend {
            Backend::Db(db) => db.path_infos(paths, &self.store_dir),
            Backend::Cli(cli) => cli.path_infos(paths, &self.store_dir),
        }
    }

    /// The closure of `roots` (each root must be valid), every path once.
    pub fn closure(&self, roots: &[StorePath]) -> Result<Vec<PathInfo>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut frontier: Vec<StorePath> = roots.to_vec();
        frontier.retain(|p| seen.insert(p.clone()));
        while !frontier.is_empty() {
            let infos = self.path_infos(&frontier)?;
            let mut next = Vec::new();
            for (path, info) in frontier.iter().zip(infos) {
                let info = info.ok_or_else(|| {
                    Error::Path(format!(
                        "{}: not valid in the store",
                        path.to_absolute(&self.store_dir)
                    ))
                })?;
                for r in &info.references {
                    if seen.insert(r.clone()) {
                        next.push(r.clone());
                    }
                }
                out.push(info);
            }
            frontier = next;
        }
        Ok(out)
    }

    /// The build-time closure of `roots` present in the store, as
    /// `nix-store -qR --include-outputs`: references, and for every `.drv`
    /// reached, its outputs that are valid. Invalid roots are an error.
    pub fn build_closure(&self, roots: &[StorePath]) -> Result<Vec<PathInfo>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut frontier: Vec<StorePath> = roots.to_vec();
        frontier.retain(|p| seen.insert(p.clone()));
        let mut is_root = true;
        while !frontier.is_empty() {
            let infos = self.path_infos(&frontier)?;
            let mut next = Vec::new();
            let mut drvs = Vec::new();
            for (path, info) in frontier.iter().zip(infos) {
                let Some(info) = info else {
                    // Outputs are checked for validity here, not before.
                    if is_root {
                        return Err(Error::Path(format!(
                            "{}: not valid in the store",
                            path.to_absolute(&self.store_dir)
                        )));
                    }
                    continue;
                };
                for r in &info.references {
                    if seen.insert(r.clone()) {
                        next.push(r.clone());
                    }
                }
                if path.is_derivation() {
                    drvs.push(path.clone());
                }
                out.push(info);
            }
            for outputs in self.derivation_outputs(&drvs)? {
                next.extend(outputs.into_iter().filter(|o| seen.insert(o.clone())));
            }
            frontier = next;
            is_root = false;
        }
        Ok(out)
    }

    /// The outputs of each derivation (valid or not).
    pub fn derivation_outputs(&self, drvs: &[StorePath]) -> Result<Vec<Vec<StorePath>>> {
        match &self.backend {
            Backend::Db(db) => db.derivation_outputs(drvs, &self.store_dir),
            Backend::Cli(cli) => cli.derivation_outputs(drvs, &self.store_dir),
        }
    }

    /// The `.drv` of an installable, evaluated by Nix into this store.
    pub fn derivation_of(&self, installable: &str) -> Result<StorePath> {
        cli::Cli::new(&self.spec)?.derivation_of(installable, &self.store_dir)
    }

    /// The derivations `what` evaluates to: a flake installable (`.#pkg`),
    /// or a Nix file (`shell.nix`, `default.nix`: every derivation it
    /// yields), instantiated into this store.
    pub fn derivations_of(&self, what: &str) -> Result<Vec<StorePath>> {
        let is_file = !what.contains('#') && Path::new(what).exists();
        let cli = cli::Cli::new(&self.spec)?;
        if is_file {
            cli.instantiate(what, &self.store_dir)
        } else {
            Ok(vec![cli.derivation_of(what, &self.store_dir)?])
        }
    }

    /// What entering the development environment `what` needs, as roots
    /// whose closures the store holds: for a Nix file (`shell.nix`), the
    /// inputs of each derivation it yields (its input derivations' outputs
    /// and its input sources: what `nix-shell` realises before it starts a
    /// shell); for a flake installable, the environment `nix develop`
    /// builds (`nix print-dev-env --profile`, into `scratch`).
    pub fn env_roots(&self, what: &str, scratch: &Path) -> Result<Vec<StorePath>> {
        let is_file = !what.contains('#') && Path::new(what).exists();
        if !is_file {
            let cli = cli::Cli::new(&self.spec)?;
            return Ok(vec![cli.dev_env(
                what,
                &scratch.join("profile"),
                &self.store_dir,
            )?]);
        }
        let mut roots = Vec::new();
        for drv in self.derivations_of(what)? {
            let info = self.path_info(&drv)?.ok_or_else(|| {
                Error::Path(format!(
                    "{}: not valid after evaluation",
                    drv.to_absolute(&self.store_dir)
                ))
            })?;
            let (drvs, srcs): (Vec<StorePath>, Vec<StorePath>) = info
                .references
                .into_iter()
                .filter(|r| *r != drv)
                .partition(|r| r.is_derivation());
            roots.extend(srcs);
            for outs in self.derivation_outputs(&drvs)? {
                roots.extend(outs);
            }
        }
        roots.sort();
        roots.dedup();
        Ok(roots)
    }

    /// The current snapshot. Needs the DB.
    pub fn snapshot(&self) -> Result<Snapshot> {
        match &self.backend {
            Backend::Db(db) => db.snapshot(),
            Backend::Cli(_) => Err(Error::Store("snapshot ids need the Nix DB".into())),
        }
    }

    /// Paths registered after `snapshot` (id above its max), ordered by id.
    pub fn paths_since(&self, snapshot: &Snapshot) -> Result<Vec<PathInfo>> {
        match &self.backend {
            Backend::Db(db) => db.paths_since(snapshot.max_id, &self.store_dir),
            Backend::Cli(_) => Err(Error::Store("diff by id needs the Nix DB".into())),
        }
    }

    /// Every valid path (used for the whole-store diff fallback).
    pub fn all_paths(&self) -> Result<Vec<StorePath>> {
        match &self.backend {
            Backend::Db(db) => db.all_paths(&self.store_dir),
            Backend::Cli(cli) => cli.all_paths(&self.store_dir),
        }
    }
}
