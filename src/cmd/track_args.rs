//! The options of `start`, `finish` and `run` (clap), each group with the
//! piece of [`nixdelta::job::JobConfig`] it fills in.

use std::path::PathBuf;

use nixdelta::error::Result;
use nixdelta::job::{self, ArchiveConfig, FilterConfig, KeySpec, WarmConfig};
use nixdelta::size::Size;

use super::common::{ReadArgs, UploadArgs};
use crate::ci;

#[derive(clap::Args, Clone, Debug)]
pub struct StateArgs {
    /// Where `start` leaves its state for `finish` (default: $RUNNER_TEMP/nixdelta
    /// or $TMPDIR/nixdelta-<uid>).
    #[arg(long, value_name = "DIR", env = "NIXDELTA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    pub(super) fn dir(&self) -> PathBuf {
        job::state::state_dir(
            self.state_dir.clone(),
            ci::frontend().load_state(ci::github::STATE_DIR),
        )
    }
}

/// What the push leaves out (finish, and start --watch's uploader).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FilterArgs {
    /// Push `.drv` files too.
    #[arg(long)]
    pub include_drv: bool,
    /// Do not push paths whose full store path matches REGEX (repeatable).
    #[arg(long, value_name = "REGEX")]
    pub exclude: Vec<String>,
    /// Push the repository's own source if it was copied into the store.
    #[arg(long)]
    pub include_self_source: bool,
    /// The repository whose source is not pushed (default: the working directory).
    #[arg(long, value_name = "DIR")]
    pub source_dir: Option<PathBuf>,
    /// Paths signed by this key are upstream and not pushed (repeatable).
    #[arg(long, value_name = "NAME", default_value = "cache.nixos.org-1")]
    pub upstream_key: Vec<String>,
    /// A cache never duplicated: paths whose narinfo it serves are not pushed.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
}

impl FilterArgs {
    pub(super) fn config(&self) -> Result<FilterConfig> {
        FilterConfig::new(
            self.include_drv,
            &self.exclude,
            self.include_self_source,
            self.source_dir.clone(),
        )
    }
}

/// Job scoping on a store shared by concurrent jobs.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ScopeArgs {
    /// `auto` (default): when other jobs realised paths in this store
    /// meanwhile, push only this job's (see README, "Shared stores");
    /// `off`: the whole diff.
    #[arg(long, value_name = "MODE", env = "NIXDELTA_SCOPE", value_parser = ["auto", "off"])]
    pub scope: Option<String>,
    /// The job's checkout, where its `result` links are (default: the CI's
    /// checkout variable, else the directory start runs in).
    #[arg(long, value_name = "DIR", env = "NIXDELTA_WORKSPACE")]
    pub workspace: Option<PathBuf>,
    /// The registry of the jobs sharing this store (default:
    /// <store>/nix/var/nixdelta/jobs); every job on the store must see it.
    #[arg(long, value_name = "DIR", env = "NIXDELTA_JOBS_DIR")]
    pub jobs_dir: Option<PathBuf>,
}

impl ScopeArgs {
    pub(super) fn config(&self) -> job::scope::ScopeConfig {
        job::scope::ScopeConfig {
            enabled: self.scope.as_deref() != Some("off"),
            workspace: self.workspace.clone(),
            jobs_dir: self.jobs_dir.clone(),
        }
    }
}

/// The store archive: restored by `start`, saved by `finish`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ArchiveArgs {
    /// Store archive backend: `dir:PATH`, `github` (Actions cache),
    /// `s3://bucket/prefix?endpoint=…&region=…`, `none`. start restores it
    /// before the snapshot; finish saves on a key miss.
    #[arg(long, value_name = "BACKEND", env = "NIXDELTA_ARCHIVE")]
    pub archive: Option<String>,
    /// Files hashed into the cache key (globs; default flake.lock, or
    /// flake.nix without one). Repeatable.
    #[arg(long = "key-file", value_name = "FILE")]
    pub key_files: Vec<String>,
    /// Directory the key files are relative to.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub key_dir: PathBuf,
    /// Key prefixes tried, in order, when the exact key misses (the key
    /// without its hash is tried last). Repeatable.
    #[arg(long = "restore-prefix", value_name = "PREFIX")]
    pub restore_prefixes: Vec<String>,
    /// Also key the archive by what X evaluates to (a flake installable or
    /// a Nix file; repeatable): start restores by the key files, then
    /// evaluates; finish saves under both keys (see `nixdelta key --eval`).
    #[arg(long, value_name = "X", env = "NIXDELTA_KEY_FROM_EVAL")]
    pub key_from_eval: Vec<String>,
    /// An environment archive: save what entering the development shell X
    /// needs offline (a Nix file such as shell.nix, or a flake installable
    /// such as .#devShells.x86_64-linux.default; repeatable), not the diff.
    #[arg(long = "env", value_name = "X", env = "NIXDELTA_DEV_ENV")]
    pub env: Vec<String>,
    /// Cap on the saved archive's NAR bytes (e.g. 4G): the largest leaves
    /// are left out first.
    #[arg(long, value_name = "SIZE")]
    pub max_archive_size: Option<String>,
    /// Restore only, never save (as for a fork's pull request).
    #[arg(long, env = "NIXDELTA_ARCHIVE_READ_ONLY")]
    pub read_only: bool,
    /// On an exact key hit, save a new archive (`<key>-g<time>`, which the
    /// next restore of the key prefers) when the job realised more than
    /// SIZE of new NAR; keys are immutable.
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub resave_threshold: String,
    /// Warm start: before the snapshot, substitute the paths an earlier job
    /// with this cache key left in the binary cache at URL (its signed
    /// manifest). Nix must be able to read URL (file://, http(s)://).
    #[arg(long, value_name = "URL", env = "NIXDELTA_RESTORE_FROM_CACHE")]
    pub restore_from_cache: Option<String>,
    /// Key (`name:base64`, or a file) that must have signed the warm-start
    /// manifest and the paths. Repeatable.
    #[arg(long, value_name = "KEY")]
    pub trusted_public_key: Vec<String>,
    /// Do not write the warm-start manifest into the binary cache on finish.
    #[arg(long)]
    pub no_warm_manifest: bool,
}

/// The read side: what makes the rest of the job's Nix substitute from
/// the binary cache (on by default when there is one).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConfigureArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Do not configure the job's Nix to read the binary cache.
    #[arg(long, env = "NIXDELTA_NO_CONFIGURE")]
    pub no_configure: bool,
    /// When a Nix daemon would ignore the cache (an untrusted user), add
    /// what it lacks to its nix.conf (sudo -n when not root) and restart it.
    #[arg(long, env = "NIXDELTA_CONFIGURE_DAEMON")]
    pub daemon: bool,
}

impl ConfigureArgs {
    pub(super) fn config(&self) -> job::ReadConfig {
        job::ReadConfig {
            configure_daemon: self.daemon,
            ..self.read.config(!self.no_configure)
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct StartArgs {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// The binary cache the job pushes to: the rest of the job's Nix
    /// reads it (`extra-substituters`, its key trusted).
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// The signing key, whose public half Nix is told to trust (or
    /// $NIXDELTA_SECRET_KEY; --public-key needs neither).
    #[arg(long, value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub configure: ConfigureArgs,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Leave a background uploader running that pushes each new path as
    /// the build registers it (needs --to and a signing key; takes the
    /// filters below); finish drains it and pushes the rest.
    #[arg(long, env = "NIXDELTA_WATCH")]
    pub watch: bool,
    /// The uploader stops on its own after this long without a finish
    /// (a cancelled job), e.g. `30m`, `6h`.
    #[arg(
        long,
        value_name = "TIME",
        env = "NIXDELTA_WATCH_TIMEOUT",
        default_value = "6h"
    )]
    pub watch_timeout: String,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Fail (non-zero exit) when the archive cannot be restored.
    #[arg(long, env = "NIXDELTA_STRICT")]
    pub strict: bool,
    #[command(flatten)]
    pub keep: KeepFailedArgs,
}

#[derive(clap::Args, Clone, Debug)]
pub struct FinishArgs {
    /// Binary cache to push to: `file:///DIR`, `s3://…` or `http(s)://…`
    /// (see below); without it nothing is pushed.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    #[command(flatten)]
    pub upload: UploadArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Push the build-time closure of X present in the store (repeatable;
    /// whitespace-separated in the variable): a store path, a `.drv`, a
    /// `result` link or a flake installable (`.#pkg`). It includes
    /// dependencies older than `start` (a warm runner's store).
    #[arg(long, value_name = "X", env = "NIXDELTA_CLOSURE_OF")]
    pub closure_of: Vec<String>,
    /// `auto`: the diff plus the build-time closures of its paths'
    /// derivations; `diff` (default): the diff only.
    #[arg(long, value_name = "MODE", env = "NIXDELTA_CLOSURE", value_parser = ["diff", "auto"])]
    pub closure: Option<String>,
    /// Print the push plan and upload nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A pull-only job (forks, release jobs): push nothing, and say so.
    #[arg(long, env = "NIXDELTA_SKIP_PUSH")]
    pub skip_push: bool,
    /// Print the plan (and report) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub purge: PurgeArgs,
    /// Fail (non-zero exit) on cache errors instead of warning.
    #[arg(long, env = "NIXDELTA_STRICT")]
    pub strict: bool,
}

/// GitHub cache housekeeping after a save to the `github` archive in
/// GitHub Actions, with a token ($NIXDELTA_GITHUB_TOKEN or $GITHUB_TOKEN)
/// that has `actions: write`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PurgeArgs {
    /// Keep superseded cache entries (by default, after a save, this ref's
    /// older nixdelta entries under the key's restore prefix are deleted).
    #[arg(long, env = "NIXDELTA_NO_PURGE")]
    pub no_purge: bool,
    /// Purge entries under these key prefixes instead (repeatable; other
    /// tools' entries too, e.g. an old cache-nix-action prefix).
    #[arg(long = "purge-prefix", value_name = "PREFIX")]
    pub purge_prefixes: Vec<String>,
    /// Only entries created at least AGE ago (seconds, or ISO 8601 such as
    /// P1DT12H).
    #[arg(long, value_name = "AGE")]
    pub purge_created_before: Option<String>,
    /// Only entries last used at least AGE ago.
    #[arg(long, value_name = "AGE")]
    pub purge_last_accessed_before: Option<String>,
}

impl PurgeArgs {
    pub(super) fn config(&self) -> Result<nixdelta::job::purge::PurgeConfig> {
        use nixdelta::archive::github_purge::{parse_age, PurgeOptions};
        let age =
            |flag: &str, v: &Option<String>| v.as_deref().map(|v| parse_age(flag, v)).transpose();
        let token = ["NIXDELTA_GITHUB_TOKEN", "GITHUB_TOKEN"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|t| !t.trim().is_empty()))
            .map(nixdelta::secret::Secret::new);
        Ok(nixdelta::job::purge::PurgeConfig {
            options: PurgeOptions {
                enabled: !self.no_purge,
                prefixes: self.purge_prefixes.clone(),
                created_before: age("--purge-created-before", &self.purge_created_before)?,
                last_accessed_before: age(
                    "--purge-last-accessed-before",
                    &self.purge_last_accessed_before,
                )?,
            },
            token,
        })
    }
}

impl ArchiveArgs {
    pub(super) fn config(&self) -> Result<ArchiveConfig> {
        Ok(ArchiveConfig {
            backend: job::config::archive_spec(self.archive.as_deref()),
            read_only: self.read_only,
            max_size: self
                .max_archive_size
                .as_deref()
                .map(|s| Size::of_option("--max-archive-size", s))
                .transpose()?,
            resave_threshold: Size::of_option("--resave-threshold", &self.resave_threshold)?,
            env: self.env.clone(),
        })
    }

    pub(super) fn key(&self) -> KeySpec {
        KeySpec {
            dir: self.key_dir.clone(),
            files: self.key_files.clone(),
            restore_prefixes: self.restore_prefixes.clone(),
            eval: self.key_from_eval.clone(),
        }
    }

    pub(super) fn warm(&self) -> WarmConfig {
        WarmConfig {
            restore_from: self.restore_from_cache.clone(),
            trusted_public_keys: self.trusted_public_key.clone(),
            write_manifest: !self.no_warm_manifest,
        }
    }
}

/// `run --keep-failed` / `start --keep-failed`: the build trees of a
/// failed build, kept and stored (by `run`, or by `finish`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KeepFailedArgs {
    /// Run the job's Nix with `keep-failed`; the build directories Nix
    /// kept (after `run`'s command fails, or at `finish`) are packed and
    /// stored: a CI artifact in CI, else the --archive backend (key
    /// `failed-…`), with the command that fetches them.
    #[arg(long, env = "NIXDELTA_KEEP_FAILED")]
    pub keep_failed: bool,
    /// At most this much of their files (the rest is listed in CUT.txt).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub keep_failed_max: String,
}
