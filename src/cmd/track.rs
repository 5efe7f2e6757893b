//! `nixdelta start` / `finish` / `run`: the options, turned into a
//! [`JobConfig`], and the user's command with its signals. The job itself
//! (restore, snapshot, push, save, warm manifest) is [`nixdelta::job`].

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};

use nixdelta::error::{exit, Error, Result};
use nixdelta::job::{
    self, ArchiveConfig, FilterConfig, JobConfig, KeySpec, PushConfig, WarmConfig,
};
use nixdelta::pipeline::closure;
use nixdelta::pipeline::read_side::ReadSide;
use nixdelta::pipeline::snapshot::State;
use nixdelta::size::Size;

use super::common::{upload_options, ReadArgs, UploadArgs};
use super::report::{finish_summary, read_table, restore_table, Report};
use crate::ci::{self, Kind};

#[derive(clap::Args, Clone, Debug)]
pub struct StateArgs {
    /// Where `start` leaves its state for `finish` (default: $RUNNER_TEMP/nixdelta
    /// or $TMPDIR/nixdelta-<uid>).
    #[arg(long, value_name = "DIR", env = "NIXDELTA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    fn dir(&self) -> PathBuf {
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
    fn config(&self) -> Result<FilterConfig> {
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
    fn config(&self) -> job::scope::ScopeConfig {
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
    fn config(&self) -> job::ReadConfig {
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
    /// Fail (non-zero exit) on cache errors instead of warning.
    #[arg(long, env = "NIXDELTA_STRICT")]
    pub strict: bool,
}

impl ArchiveArgs {
    fn config(&self) -> Result<ArchiveConfig> {
        Ok(ArchiveConfig {
            backend: job::config::archive_spec(self.archive.as_deref()),
            read_only: self.read_only,
            max_size: self
                .max_archive_size
                .as_deref()
                .map(|s| Size::of_option("--max-archive-size", s))
                .transpose()?,
            resave_threshold: Size::of_option("--resave-threshold", &self.resave_threshold)?,
        })
    }

    fn key(&self) -> KeySpec {
        KeySpec {
            dir: self.key_dir.clone(),
            files: self.key_files.clone(),
            restore_prefixes: self.restore_prefixes.clone(),
        }
    }

    fn warm(&self) -> WarmConfig {
        WarmConfig {
            restore_from: self.restore_from_cache.clone(),
            trusted_public_keys: self.trusted_public_key.clone(),
            write_manifest: !self.no_warm_manifest,
        }
    }
}

/// The job `start` runs: the archive, warm-start and read-side options.
fn start_config(store_root: Option<&Path>, args: &StartArgs) -> Result<JobConfig> {
    let f = &args.filter;
    Ok(JobConfig {
        filters: f.config()?,
        push: PushConfig {
            to: args.to.clone(),
            secret_key_file: args.secret_key_file.clone(),
            upstream_keys: f.upstream_key.clone(),
            upstream: f.upstream.clone(),
            ..PushConfig::default()
        },
        read: args.configure.config(),
        scope: args.scope.config(),
        ..archive_config(store_root, &args.archive, args.strict)?
    })
}

/// The archive and warm-start options of a job.
fn archive_config(store_root: Option<&Path>, a: &ArchiveArgs, strict: bool) -> Result<JobConfig> {
    Ok(JobConfig {
        store_root: store_root.map(Path::to_path_buf),
        key: a.key(),
        archive: a.config()?,
        warm: a.warm(),
        strict,
        ..JobConfig::default()
    })
}

/// The job `finish` and `run` run. Bad patterns and sizes are usage
/// errors here, before anything else happens.
fn job_config(store_root: Option<&Path>, f: &FinishArgs, a: &ArchiveArgs) -> Result<JobConfig> {
    Ok(JobConfig {
        filters: f.filter.config()?,
        push: PushConfig {
            to: f.to.clone(),
            secret_key_file: f.upload.secret_key_file.clone(),
            upload: upload_options(&f.upload),
            upstream_keys: f.filter.upstream_key.clone(),
            upstream: f.filter.upstream.clone(),
            dry_run: f.dry_run,
            skip: f.skip_push,
            closure: closure_mode(f)?,
        },
        scope: f.scope.config(),
        ..archive_config(store_root, a, f.strict)?
    })
}

/// `--closure-of` (each value split on whitespace, as a multi-line CI
/// input gives it) or `--closure auto`; not both.
fn closure_mode(f: &FinishArgs) -> Result<closure::Mode> {
    let of: Vec<String> = f
        .closure_of
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(str::to_string)
        .collect();
    match (of.is_empty(), f.closure.as_deref()) {
        (false, Some("auto")) => Err(Error::Usage(
            "--closure-of and --closure auto: give one (auto finds the roots itself)".into(),
        )),
        (false, _) => Ok(closure::Mode::Of(of)),
        (true, Some("auto")) => Ok(closure::Mode::Auto),
        (true, _) => Ok(closure::Mode::Diff),
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Writes the read side into `dir`; with `export`, makes the rest of the
/// job read it (through the CI). Returns the environment (for `run`'s
/// command, which gets it directly).
fn configure(
    cfg: &JobConfig,
    side: ReadSide,
    dir: &Path,
    export: bool,
) -> Result<Vec<(String, String)>> {
    let fe = ci::frontend();
    for w in &side.warnings {
        fe.warning(w);
    }
    let done = job::read::write(cfg, side, dir, &env_var)?;
    if let Some(d) = &done.daemon {
        if let Some(w) = d.warning() {
            fe.warning(&w);
        }
        if let Some(n) = d.notice() {
            eprintln!("nixdelta: {n}");
        }
    }
    for s in &done.secrets {
        fe.mask(s.expose());
    }
    if !export {
        fe.summary(&read_table(&done, "for the command (`NIX_USER_CONF_FILES`)").markdown());
        return Ok(done.env);
    }
    let mut exported = true;
    for (k, v) in &done.env {
        exported &= fe.export_env(k, v)?;
    }
    let how = if exported {
        "for the rest of the job (`NIX_USER_CONF_FILES`)"
    } else {
        "not exported: no CI to export it to (see the log)"
    };
    fe.summary(&read_table(&done, how).markdown());
    if !exported {
        eprintln!(
            "nixdelta: for this shell's Nix to read the cache: export {}",
            done.env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(done.env)
}

/// A CI front end watching the job, printing the plan to `out`.
fn report(out: &mut dyn Write, json: bool) -> Report<'_> {
    Report {
        fe: ci::frontend(),
        out: RefCell::new(out),
        json,
    }
}

/// The archive restore's table, when there was one.
fn summarise_start(started: &job::Started) {
    if let Some((facts, r)) = &started.archive {
        ci::frontend().summary(&restore_table(facts, r.as_ref()).markdown());
    }
}

pub fn start(store_root: Option<&Path>, args: &StartArgs) -> Result<i32> {
    let cfg = start_config(store_root, args)?;
    let dir = args.state.dir();
    if args.watch {
        check_watch(&cfg, args, &dir)?;
    }
    // First: a bad key or URL fails before the restore, and the job reads
    // the cache even when the snapshot cannot be taken.
    if let Some(side) = job::read::plan(&cfg, &env_var)? {
        configure(&cfg, side, &dir, true)?;
    }
    let mut err = std::io::stderr();
    let started = job::start(&cfg, &report(&mut err, false))?;
    summarise_start(&started);
    started.state.save(&dir)?;
    ci::frontend().save_state(ci::github::STATE_DIR, &dir.to_string_lossy());
    if args.watch {
        let exe = std::env::current_exe().map_err(|e| Error::Other(e.into()))?;
        match job::watch::spawn(&dir, &exe, &watch_argv(&super::argv())) {
            Ok(pid) => eprintln!(
                "nixdelta: background uploader {pid} pushes new paths as they appear (log: {})",
                dir.join(job::watch::LOG).display()
            ),
            Err(e) if args.strict || matches!(e, Error::Usage(_)) => return Err(e),
            Err(e) => ci::frontend().warning(&format!(
                "no background uploader (finish pushes everything; use --strict to fail): {e}"
            )),
        }
    }
    match &started.state.snapshot {
        Some(s) => eprintln!(
            "nixdelta: snapshot at id {} ({} valid paths) in {}",
            s.max_id,
            s.count,
            dir.display()
        ),
        None => eprintln!(
            "nixdelta: snapshot of every valid path in {}",
            dir.display()
        ),
    }
    Ok(exit::OK)
}

/// What `start --watch` needs, checked before anything happens: a cache,
/// a signing key, a timeout, and no uploader already on this state dir.
fn check_watch(cfg: &JobConfig, args: &StartArgs, dir: &Path) -> Result<()> {
    if cfg.push.to.is_none() {
        return Err(Error::Usage(
            "start --watch needs --to (the binary cache)".into(),
        ));
    }
    job::keys::load_secret_key(cfg.push.secret_key_file.as_deref())?;
    job::watch::parse_timeout(&args.watch_timeout)?;
    if job::watch::is_running(dir) {
        return Err(Error::Usage(format!(
            "an uploader already watches for the state dir {}: one start --watch per job",
            dir.display()
        )));
    }
    Ok(())
}

/// The uploader's command line: start's, as `watch`, without `--ci` (it
/// speaks no CI: its options are all there already).
fn watch_argv(argv: &[std::ffi::OsString]) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut renamed = false;
    let mut it = argv.iter().skip(1).peekable();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--ci" {
            it.next();
            continue;
        }
        if s.starts_with("--ci=") {
            continue;
        }
        if !renamed && s == "start" {
            renamed = true;
            out.push("watch".into());
            continue;
        }
        // Values of the options before the subcommand are never it.
        if !renamed && (s == "--store" || s == "--netrc-file") {
            out.push(a.clone());
            if let Some(v) = it.next() {
                out.push(v.clone());
            }
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// The background uploader's life (`start --watch` runs it).
pub fn watch(store_root: Option<&Path>, args: &StartArgs) -> Result<i32> {
    let cfg = start_config(store_root, args)?;
    let dir = args.state.dir();
    let st = State::load(&dir)?;
    let opts = job::watch::WatchOptions {
        timeout: job::watch::parse_timeout(&args.watch_timeout)?,
        ..Default::default()
    };
    let r = job::watch::run(&cfg, &dir, &st, opts)?;
    eprintln!(
        "nixdelta: uploader {:?} after {:.0} s: {} paths ({}) uploaded, {} left for finish",
        r.ended,
        r.seconds,
        r.paths,
        nixdelta::pipeline::summary::mb(r.file_bytes),
        r.failed
    );
    Ok(exit::OK)
}

/// `finish` as a command: the state from `start`, then [`finish_with`].
pub fn finish(
    store_root: Option<&Path>,
    state: &StateArgs,
    args: &FinishArgs,
    a: &ArchiveArgs,
) -> Result<i32> {
    let dir = state.dir();
    let cfg = JobConfig {
        state_dir: Some(dir.clone()),
        ..job_config(store_root, args, a)?
    };
    let fe = ci::frontend();
    let in_ci = fe.kind() != Kind::None;
    let st = match State::load(&dir) {
        Ok(st) => st,
        // In CI, a start that never ran (no binary, a step skipped) leaves
        // nothing to finish: that is no reason to fail the job.
        Err(e) if in_ci && !args.strict && !dir.join("state.json").exists() => {
            fe.warning(&format!("nothing to finish: {e}"));
            return Ok(exit::OK);
        }
        Err(e) => return Err(e),
    };
    eprintln!("nixdelta: state of start from {}", dir.display());
    unconfigure(&dir, args.dry_run);
    if !in_ci || args.json {
        let out = std::io::stdout();
        return finish_with(&cfg, &st, args.json, &mut out.lock());
    }
    // One stream, so CI log folding keeps its order.
    let code = finish_with(&cfg, &st, args.json, &mut std::io::stderr());
    // A CI job's state is used once; on a persistent runner (a GitLab shell
    // executor) it would otherwise pile up in the temp directory.
    if !args.dry_run {
        let _ = std::fs::remove_dir_all(&dir);
    }
    code
}

/// The job is over: its Nix configuration and netrc go.
fn unconfigure(dir: &Path, dry_run: bool) {
    if !dry_run {
        job::read::remove(dir);
    }
}

/// The job's finish, its summary, and the exit code (a cache fault fails
/// only a strict job).
fn finish_with(cfg: &JobConfig, st: &State, json: bool, out: &mut dyn Write) -> Result<i32> {
    let done = job::finish(cfg, st, &report(out, json))?;
    let fe = ci::frontend();
    let md = finish_summary(fe, &done, cfg.strict);
    if !md.is_empty() {
        fe.summary(&md);
    }
    match done.faults.into_iter().next() {
        Some((_, e)) if cfg.strict => Err(e),
        _ => Ok(exit::OK),
    }
}

/// `run -- COMMAND`: start (restore, snapshot), the command (stdio passed
/// through, signals forwarded), finish — also when the command failed.
/// Exits with the command's code.
pub fn run(
    store_root: Option<&Path>,
    args: &FinishArgs,
    a: &ArchiveArgs,
    c: &ConfigureArgs,
    command: &[String],
) -> Result<i32> {
    // Options are checked before the command runs (which may take an
    // hour): a bad regex, size, URL or key is reported now, not after it.
    let cfg = JobConfig {
        read: c.config(),
        ..job_config(store_root, args, a)?
    };
    cfg.push.validate()?;
    let read = job::read::plan(&cfg, &env_var)?;
    // The user's command runs even when nixdelta cannot take a snapshot
    // (unless --strict): a cache tool must not stop the build.
    let mut err = std::io::stderr();
    let st = match job::start(&cfg, &report(&mut err, false)) {
        Ok(started) => {
            summarise_start(&started);
            Some(started.state)
        }
        Err(e) if args.strict || matches!(e, Error::Usage(_)) => return Err(e),
        Err(e) => {
            ci::frontend().warning(&format!(
                "not tracking this run (nothing will be pushed): {e}"
            ));
            None
        }
    };
    // The command's Nix configuration lives as long as the run.
    let conf_dir = tempfile::Builder::new()
        .prefix("nixdelta-run-")
        .tempdir()
        .map_err(|e| Error::Other(e.into()))?;
    let env = match read {
        Some(side) => configure(&cfg, side, conf_dir.path(), false)?,
        None => Vec::new(),
    };
    let code = run_command(command, &env)?;
    let Some(st) = st else { return Ok(code) };
    if code != 0 {
        eprintln!("nixdelta: command exited with {code}; pushing what it realised anyway");
    }
    match finish_with(&cfg, &st, args.json, &mut std::io::stderr()) {
        Ok(_) => Ok(code),
        Err(e) if code == 0 => Err(e),
        Err(e) => {
            eprintln!("nixdelta: error: {e}");
            Ok(code)
        }
    }
}

fn run_command(command: &[String], env: &[(String, String)]) -> Result<i32> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| Error::Usage("run: no command given".into()))?;
    // Catch signals before the child exists, so one that arrives while it
    // starts is queued and forwarded rather than killing us.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
        .map_err(|e| Error::Other(e.into()))?;
    // The build has no use for the signing key: ours, and the GitHub
    // action's input it may come from.
    let child = std::process::Command::new(program)
        .args(rest)
        .env_remove("NIXDELTA_SECRET_KEY")
        .env_remove(nixdelta::cache::http::TOKEN_ENV)
        .env_remove(ci::github::input_var("secret-key"))
        .env_remove(ci::github::input_var("cache-token"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn();
    // As a shell does: 127 when the command is not found, 126 when it
    // cannot be executed. The job still finishes (nothing new to push).
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!("nixdelta: cannot run {program}: {e}");
            return Ok(code);
        }
    };
    let pid = child.id() as libc::pid_t;
    let handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            // SAFETY: kill with a pid we spawned and a valid signal number.
            unsafe { libc::kill(pid, sig) };
        }
    });
    let status = child.wait().map_err(|e| Error::Other(e.into()));
    handle.close();
    let _ = forwarder.join();
    let status = status?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
