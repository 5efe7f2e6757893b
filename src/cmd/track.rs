//! `nixdelta start` / `finish` / `run`: the options, turned into a
//! [`JobConfig`], and the user's command with its signals. The job itself
//! (restore, snapshot, push, save, warm manifest) is [`nixdelta::job`].

use std::cell::RefCell;
use std::io::Write;
use std::path::Path;

use nixdelta::error::{exit, Error, Result};
use nixdelta::job::{self, JobConfig, PushConfig};
use nixdelta::nix::StoreSpec;
use nixdelta::pipeline::closure;
use nixdelta::pipeline::read_side::ReadSide;
use nixdelta::pipeline::snapshot::State;

use super::common::upload_options;
use super::keep_failed;
use super::report::{finish_summary, read_table, restore_table, Report};
use super::track_args::{
    ArchiveArgs, ConfigureArgs, FinishArgs, KeepFailedArgs, StartArgs, StateArgs,
};
use super::watch::{check_watch, watch_argv};
use crate::ci::{self, Kind};

/// The job `start` runs: the archive, warm-start and read-side options.
pub(super) fn start_config(store: &StoreSpec, args: &StartArgs) -> Result<JobConfig> {
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
        read: job::ReadConfig {
            keep_failed: args.keep.keep_failed,
            ..args.configure.config()
        },
        scope: args.scope.config(),
        ..archive_config(store, &args.archive, args.strict)?
    })
}

/// The archive and warm-start options of a job.
fn archive_config(store: &StoreSpec, a: &ArchiveArgs, strict: bool) -> Result<JobConfig> {
    Ok(JobConfig {
        store: store.clone(),
        key: a.key(),
        archive: a.config()?,
        warm: a.warm(),
        strict,
        ..JobConfig::default()
    })
}

/// The job `finish` and `run` run. Bad patterns and sizes are usage
/// errors here, before anything else happens.
fn job_config(store: &StoreSpec, f: &FinishArgs, a: &ArchiveArgs) -> Result<JobConfig> {
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
        purge: f.purge.config()?,
        ..archive_config(store, a, f.strict)?
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

pub fn start(store: &StoreSpec, args: &StartArgs) -> Result<i32> {
    let cfg = start_config(store, args)?;
    let dir = args.state.dir();
    if args.watch {
        check_watch(&cfg, args, &dir)?;
    }
    let keep = keep_ask(&args.keep)?;
    // First: a bad key or URL fails before the restore, and the job reads
    // the cache even when the snapshot cannot be taken.
    match job::read::plan(&cfg, &env_var)? {
        Some(side) => {
            configure(&cfg, side, &dir, true)?;
        }
        None if keep.is_some() => export_keep_failed(&dir)?,
        None => {}
    }
    let mut err = std::io::stderr();
    let mut started = job::start(&cfg, &report(&mut err, false))?;
    summarise_start(&started);
    if let Some(ask) = keep {
        keep_failed::mark(&mut started.state, ask);
    }
    // Frames a killed job kept in a reused state dir take disk for nothing.
    job::save::drop_frames(&dir);
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

/// `--keep-failed`: trees made from now on are this job's.
fn keep_ask(k: &KeepFailedArgs) -> Result<Option<keep_failed::Ask>> {
    if !k.keep_failed {
        return Ok(None);
    }
    let cap = nixdelta::size::Size::of_option("--keep-failed-max", &k.keep_failed_max)?;
    Ok(Some(keep_failed::Ask {
        since: nixdelta::store::jobs::now(),
        cap: cap.0,
    }))
}

/// `start --keep-failed` with no cache to read: a configuration of
/// `keep-failed` alone, for the rest of the job.
fn export_keep_failed(dir: &Path) -> Result<()> {
    let fe = ci::frontend();
    let env = job::read::write_keep_failed(dir, &env_var)?;
    let mut exported = true;
    for (k, v) in &env {
        exported &= fe.export_env(k, v)?;
    }
    if exported {
        eprintln!("nixdelta: keep-failed: the job's Nix keeps failed build directories");
    } else {
        let vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!(
            "nixdelta: keep-failed: for this shell's Nix to keep failed builds: export {}",
            vars.join(" ")
        );
    }
    Ok(())
}

/// `finish` as a command: the state from `start`, then [`finish_with`].
pub fn finish(
    store: &StoreSpec,
    state: &StateArgs,
    args: &FinishArgs,
    a: &ArchiveArgs,
) -> Result<i32> {
    let dir = state.dir();
    let cfg = JobConfig {
        state_dir: Some(dir.clone()),
        ..job_config(store, args, a)?
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
    // Before the push: a failed job's trees matter more than its cache.
    if let Some(ask) = keep_failed::asked(&st) {
        keep_failed::keep(&cfg, ask, Some(&st), "job");
    }
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
    store: &StoreSpec,
    args: &FinishArgs,
    a: &ArchiveArgs,
    c: &ConfigureArgs,
    keep: &KeepFailedArgs,
    command: &[String],
) -> Result<i32> {
    // Options are checked before the command runs (which may take an
    // hour): a bad regex, size, URL or key is reported now, not after it.
    let cfg = JobConfig {
        read: c.config(),
        ..job_config(store, args, a)?
    };
    let keep_cap = nixdelta::size::Size::of_option("--keep-failed-max", &keep.keep_failed_max)?;
    let started_at = nixdelta::store::jobs::now();
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
    let mut env = env;
    if keep.keep_failed {
        // NIX_CONFIG is applied last and keep-failed is no list: appending
        // keeps the user's settings.
        let user = std::env::var("NIX_CONFIG").unwrap_or_default();
        env.push(("NIX_CONFIG".into(), format!("{user}\nkeep-failed = true\n")));
    }
    let code = run_command(command, &env)?;
    if code != 0 && keep.keep_failed {
        let ask = keep_failed::Ask {
            since: started_at,
            cap: keep_cap.0,
        };
        keep_failed::keep(&cfg, ask, st.as_ref(), "run");
    }
    let Some(st) = st else { return Ok(code) };
    if code != 0 {
        eprintln!("nixdelta: command exited with {code}; pushing what it realised anyway");
    }
    // The run's temp dir holds what the push keeps for the archive save.
    let cfg = JobConfig {
        state_dir: Some(conf_dir.path().to_path_buf()),
        ..cfg
    };
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
        .env_remove(ci::github::input_var("github-token"))
        .env_remove("NIXDELTA_GITHUB_TOKEN")
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
