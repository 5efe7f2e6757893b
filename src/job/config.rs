//! A job's configuration, typed and validated, with no command-line parser
//! in it: the CLI and the CI front ends build one, the job steps read it.

use std::path::{Path, PathBuf};

use regex::Regex;

use super::key::{self, CacheKey};
use crate::error::{Error, Result};
use crate::nix::StoreSpec;
use crate::pipeline::filter::{compile_excludes, Filters};
use crate::pipeline::self_source;
use crate::pipeline::upload::UploadOptions;
use crate::size::Size;
use crate::store::{PathInfo, Store};

/// Everything `start`, `finish` and `run` act on.
#[derive(Clone, Debug, Default)]
pub struct JobConfig {
    /// The store, as Nix's `--store` (default: the system store).
    pub store: StoreSpec,
    pub key: KeySpec,
    pub archive: ArchiveConfig,
    pub warm: WarmConfig,
    pub filters: FilterConfig,
    pub push: PushConfig,
    pub read: ReadConfig,
    /// Where `start` left its state, and its background uploader's files
    /// (`finish` stops the uploader found there).
    pub state_dir: Option<PathBuf>,
    /// Telling this job's paths from other jobs' on a shared store.
    pub scope: super::scope::ScopeConfig,
    /// GitHub cache housekeeping after the saves.
    pub purge: super::purge::PurgeConfig,
    /// Cache faults fail the job instead of warning.
    pub strict: bool,
}

/// How the cache key is computed.
#[derive(Clone, Debug)]
pub struct KeySpec {
    /// The directory the key files are relative to.
    pub dir: PathBuf,
    /// Globs; empty: `flake.lock` (or `flake.nix` without one).
    pub files: Vec<String>,
    /// Prefixes tried, in order, when the exact key misses.
    pub restore_prefixes: Vec<String>,
    /// `--key-from-eval`: installables or Nix files whose derivations key
    /// the archive too (saved under both keys).
    pub eval: Vec<String>,
}

impl Default for KeySpec {
    fn default() -> Self {
        KeySpec {
            dir: PathBuf::from("."),
            files: Vec::new(),
            restore_prefixes: Vec::new(),
            eval: Vec::new(),
        }
    }
}

impl KeySpec {
    /// The evaluated key of `what` (installables or Nix files, resolved
    /// against the key dir), and the seconds evaluation took.
    pub fn evaluate(&self, store: &StoreSpec, what: &[String]) -> Result<(CacheKey, f64)> {
        let t = std::time::Instant::now();
        // A fresh runner's store has no DB before its first path.
        if store.root().is_some() && !Store::exists(store) {
            Store::init(store)?;
        }
        let store = Store::open(store)?;
        let mut drvs = Vec::new();
        for w in what {
            let arg = if w.contains('#') || Path::new(w).is_absolute() {
                w.clone()
            } else {
                self.dir.join(w).display().to_string()
            };
            let found = store.derivations_of(&arg).map_err(|e| Error::Input {
                path: PathBuf::from(w),
                msg: format!("cannot evaluate: {e}"),
            })?;
            drvs.extend(found);
        }
        let k = key::eval_key(&drvs, &key::current_system(), store.store_dir());
        Ok((k, t.elapsed().as_secs_f64()))
    }

    pub fn compute(&self) -> Result<CacheKey> {
        let dir = if self.dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.dir
        };
        key::compute(
            dir,
            &self.files,
            &key::current_system(),
            &self.restore_prefixes,
        )
    }
}

/// The store archive `start` restores and `finish` saves.
#[derive(Clone, Debug)]
pub struct ArchiveConfig {
    /// The backend spec (`dir:PATH`, `github`, `s3://…`); `None`: no
    /// archive (`finish` still saves to the one `start` restored from).
    pub backend: Option<String>,
    /// Restore only, never save.
    pub read_only: bool,
    /// Cap on the saved archive's NAR bytes.
    pub max_size: Option<Size>,
    /// On an exact hit, save a grown archive when the job realised more.
    pub resave_threshold: Size,
    /// `--env`: the archive holds what entering these development
    /// environments needs (Nix files or flake installables), not the diff.
    pub env: Vec<String>,
}

/// `--resave-threshold`'s default.
pub const RESAVE_THRESHOLD: Size = Size(64 << 20);

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            backend: None,
            read_only: false,
            max_size: None,
            resave_threshold: RESAVE_THRESHOLD,
            env: Vec::new(),
        }
    }
}

/// The archive backend a spec names; `None` for an empty spec or `none`.
pub fn archive_spec(spec: Option<&str>) -> Option<String> {
    spec.map(str::trim)
        .filter(|s| !s.is_empty() && *s != "none")
        .map(str::to_string)
}

/// Warm start from the binary cache (the signed manifest of an earlier job).
#[derive(Clone, Debug, Default)]
pub struct WarmConfig {
    /// Substitute the manifest's paths from this cache before the snapshot.
    pub restore_from: Option<String>,
    /// Keys (`name:base64` or files) that must have signed it.
    pub trusted_public_keys: Vec<String>,
    /// Write the manifest on finish.
    pub write_manifest: bool,
}

/// The path filters, as configured (the self-source scan needs the store).
#[derive(Clone, Debug, Default)]
pub struct FilterConfig {
    pub include_drv: bool,
    pub excludes: Vec<Regex>,
    pub include_self_source: bool,
    /// The repository whose source is not pushed (default: the working
    /// directory).
    pub source_dir: Option<PathBuf>,
}

impl FilterConfig {
    /// Compiles `--exclude` patterns (a usage error names a bad one).
    pub fn new(
        include_drv: bool,
        excludes: &[String],
        include_self_source: bool,
        source_dir: Option<PathBuf>,
    ) -> Result<FilterConfig> {
        Ok(FilterConfig {
            include_drv,
            excludes: compile_excludes(excludes)?,
            include_self_source,
            source_dir,
        })
    }

    /// The filters for the paths `candidates` of this job: the
    /// self-source scan runs here, once.
    pub fn filters(&self, store: &Store, candidates: &[PathInfo]) -> Result<Filters> {
        let self_sources = if self.include_self_source {
            Default::default()
        } else {
            let dir = match &self.source_dir {
                Some(d) => d.clone(),
                None => std::env::current_dir().map_err(|e| Error::Other(e.into()))?,
            };
            self_source::find(store, candidates, &dir)
        };
        Ok(Filters {
            include_drv: self.include_drv,
            excludes: self.excludes.clone(),
            self_sources,
        })
    }
}

/// Where and how `finish` pushes.
#[derive(Clone, Debug, Default)]
pub struct PushConfig {
    /// The binary cache; `None`: nothing is pushed.
    pub to: Option<String>,
    /// The signing key's file; `None`: `$NIXDELTA_SECRET_KEY`.
    pub secret_key_file: Option<PathBuf>,
    pub upload: UploadOptions,
    /// Paths signed by these keys are upstream.
    pub upstream_keys: Vec<String>,
    /// A cache never duplicated.
    pub upstream: Option<String>,
    /// Plan only.
    pub dry_run: bool,
    /// A pull-only job: the cache is read, nothing is pushed.
    pub skip: bool,
    /// What is pushed: the diff, closures of roots, or both.
    pub closure: crate::pipeline::closure::Mode,
}

impl PushConfig {
    /// What a push would refuse, checked before a user command runs: the
    /// URL and the signing key.
    pub fn validate(&self) -> Result<()> {
        if let Some(to) = self.to.as_ref().filter(|_| !self.skip) {
            crate::cache::open(to)?;
            if !self.dry_run {
                super::keys::load_secret_key(self.secret_key_file.as_deref())?;
            }
        }
        Ok(())
    }
}

/// How `start` makes the job's Nix read the binary cache (the read side).
#[derive(Clone, Debug, Default)]
pub struct ReadConfig {
    /// Configure Nix to read the cache (`--no-configure` turns it off).
    pub configure: bool,
    /// The URL Nix reads the cache from, when not the push URL.
    pub read_url: Option<String>,
    /// The cache's public key (`name:base64` or a file); default: the
    /// public half of the signing key.
    pub public_key: Option<String>,
    /// Other caches the job reads (`extra-pull-substituters`).
    pub extra_substituters: Vec<String>,
    /// Their keys (`name:base64` or files).
    pub extra_public_keys: Vec<String>,
    /// Add what a Nix daemon lacks to its `nix.conf` and restart it.
    pub configure_daemon: bool,
    /// `keep-failed = true` for the job's Nix (`--keep-failed`).
    pub keep_failed: bool,
}
