//! `nixdelta start` / `finish` / `run`: snapshot the store, let the build
//! run, push what it newly realised.

use std::io::Write;
use std::path::{Path, PathBuf};

use regex::Regex;

use nixdelta::cache;
use nixdelta::error::{exit, Error, Result};
use nixdelta::pipeline::plan::{plan, PlanOptions, PushPlan};
use nixdelta::pipeline::snapshot::{self, State};
use nixdelta::pipeline::upload::UploadReport;
use nixdelta::pipeline::{diff, push, self_source, summary};
use nixdelta::store::Store;

use super::common::{load_secret_key, upload_options, UploadArgs};

#[derive(clap::Args, Clone, Debug)]
pub struct StateArgs {
    /// Where `start` leaves its state for `finish` (default: $RUNNER_TEMP/nixdelta
    /// or $TMPDIR/nixdelta-<uid>).
    #[arg(long, value_name = "DIR", env = "NIXDELTA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    fn dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(snapshot::default_state_dir)
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct FinishArgs {
    /// Binary cache to push to (`file:///DIR`); without it nothing is pushed.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    #[command(flatten)]
    pub upload: UploadArgs,
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
    /// Print the push plan and upload nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan (and report) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Fail (non-zero exit) on cache errors instead of warning.
    #[arg(long, env = "NIXDELTA_STRICT")]
    pub strict: bool,
}

pub fn start(store_root: Option<&Path>, state: &StateArgs) -> Result<i32> {
    let st = snapshot::take(store_root)?;
    let dir = state.dir();
    st.save(&dir)?;
    match &st.snapshot {
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

/// `finish` as a command: the state from `start`, then [`finish_with`].
pub fn finish(store_root: Option<&Path>, state: &StateArgs, args: &FinishArgs) -> Result<i32> {
    let st = State::load(&state.dir())?;
    let out = std::io::stdout();
    finish_with(store_root, &st, args, &mut out.lock())
}

/// Diff, plan and push. Cache-side failures are warnings unless `--strict`.
pub fn finish_with(
    store_root: Option<&Path>,
    st: &State,
    args: &FinishArgs,
    out: &mut dyn Write,
) -> Result<i32> {
    match try_finish(store_root, st, args, out) {
        Ok(()) => Ok(exit::OK),
        Err(e) if args.strict || matches!(e, Error::Usage(_)) => Err(e),
        Err(e) => {
            eprintln!(
                "nixdelta: warning: push incomplete (not failing the job; use --strict to): {e}"
            );
            Ok(exit::OK)
        }
    }
}

fn try_finish(
    store_root: Option<&Path>,
    st: &State,
    args: &FinishArgs,
    out: &mut dyn Write,
) -> Result<()> {
    if st.store_root.as_deref() != store_root {
        tracing::warn!(
            "start ran on store {:?}, finish on {:?}",
            st.store_root,
            store_root
        );
    }
    let store = Store::open(store_root)?;
    let new = diff::diff(&store, st)?;
    let excludes = args
        .exclude
        .iter()
        .map(|r| Regex::new(r).map_err(|e| Error::Usage(format!("--exclude {r:?}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let self_sources = if args.include_self_source {
        Default::default()
    } else {
        let dir = match &args.source_dir {
            Some(d) => d.clone(),
            None => std::env::current_dir().map_err(|e| Error::Other(e.into()))?,
        };
        self_source::find(&store, &new, &dir)
    };
    let opts = PlanOptions {
        include_drv: args.include_drv,
        excludes,
        self_sources,
        upstream_keys: args.upstream_key.clone(),
    };
    let Some(to) = &args.to else {
        writeln!(
            out,
            "nixdelta: {} new paths; no --to given, nothing pushed",
            new.len()
        )
        .ok();
        return Ok(());
    };
    let key = if args.dry_run {
        None
    } else {
        Some(load_secret_key(args.upload.secret_key_file.as_deref())?)
    };
    let target = if args.dry_run {
        cache::open_read_only(to)?
    } else {
        cache::open(to)?
    };
    let upstream = args
        .upstream
        .as_deref()
        .map(cache::open_read_only)
        .transpose()?;
    let plan = plan(&store, new, &opts, target.as_ref(), upstream.as_deref())?;
    let Some(key) = key else {
        print_plan(out, &plan, None, &store, args.json);
        return Ok(());
    };
    target.ensure_cache_info(store.store_dir())?;
    let report = push::run_plan(
        &store,
        &plan,
        target.as_ref(),
        &key,
        &upload_options(&args.upload),
    );
    print_plan(out, &plan, Some(&report), &store, args.json);
    match push::report_error(&report, target.url()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn print_plan(
    out: &mut dyn Write,
    plan: &PushPlan,
    report: Option<&UploadReport>,
    store: &Store,
    json: bool,
) {
    if json {
        let v = summary::plan_json(plan, report, store.store_dir());
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        )
        .ok();
        return;
    }
    for line in summary::plan_lines(plan) {
        writeln!(out, "nixdelta: {line}").ok();
    }
    if let Some(r) = report {
        writeln!(out, "nixdelta: pushed: {}", summary::push_line(plan, r)).ok();
    }
}

/// `run -- COMMAND`: start, the command (stdio passed through, signals
/// forwarded), finish — also when the command failed. Exits with the
/// command's code.
pub fn run(store_root: Option<&Path>, args: &FinishArgs, command: &[String]) -> Result<i32> {
    let st = snapshot::take(store_root)?;
    let code = run_command(command)?;
    if code != 0 {
        eprintln!("nixdelta: command exited with {code}; pushing what it realised anyway");
    }
    let finished = finish_with(store_root, &st, args, &mut std::io::stderr());
    match finished {
        Ok(_) => Ok(code),
        Err(e) if code == 0 => Err(e),
        Err(e) => {
            eprintln!("nixdelta: error: {e}");
            Ok(code)
        }
    }
}

fn run_command(command: &[String]) -> Result<i32> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| Error::Usage("run: no command given".into()))?;
    let mut child = std::process::Command::new(program)
        .args(rest)
        .spawn()
        .map_err(|e| Error::Usage(format!("cannot run {program}: {e}")))?;
    let pid = child.id() as libc::pid_t;
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
        .map_err(|e| Error::Other(e.into()))?;
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
