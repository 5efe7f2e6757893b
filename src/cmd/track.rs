//! `nixdelta start` / `finish` / `run`: restore the store archive (with
//! `--archive`), snapshot the store, let the build run, push what it newly
//! realised, then save an archive when the cache key missed.
//!
//! `start` restores *before* it takes the snapshot, so restored paths are
//! never pushed again; it records the cache key, the outcome and the
//! pre-restore snapshot in the state (`extra.archive`). `finish` pushes,
//! then saves the restored plus the newly realised paths on a miss or a
//! partial hit. Cache faults (binary cache or archive) are warnings unless
//! `--strict`.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use regex::Regex;
use serde::{Deserialize, Serialize};

use nixdelta::archive::{self, ImportOptions, Outcome, RestoreReport, SaveOptions, SaveReport};
use nixdelta::cache;
use nixdelta::error::{exit, Error, Result};
use nixdelta::nix::StorePath;
use nixdelta::pipeline::key;
use nixdelta::pipeline::plan::{plan, PlanOptions, PushPlan, Skip};
use nixdelta::pipeline::snapshot::{self, State};
use nixdelta::pipeline::summary::mb;
use nixdelta::pipeline::upload::UploadReport;
use nixdelta::pipeline::{diff, push, self_source, summary};
use nixdelta::store::{PathInfo, Store};

use super::common::{load_secret_key, upload_options, UploadArgs};
use crate::ci::{self, secs, Table};

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
            .or_else(|| {
                ci::frontend()
                    .load_state(ci::github::STATE_DIR)
                    .map(PathBuf::from)
            })
            .unwrap_or_else(snapshot::default_state_dir)
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

impl ArchiveArgs {
    /// The backend spec; `None` without `--archive` or with `none`.
    fn spec(&self) -> Option<&str> {
        self.archive
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "none")
    }

    fn resave_threshold(&self) -> Result<u64> {
        let s = &self.resave_threshold;
        nixdelta::size::Size::of_option("--resave-threshold", s).map(|s| s.0)
    }

    pub(crate) fn key_dir(&self) -> &Path {
        if self.key_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.key_dir
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct StartArgs {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Fail (non-zero exit) when the archive cannot be restored.
    #[arg(long, env = "NIXDELTA_STRICT")]
    pub strict: bool,
}

#[derive(clap::Args, Clone, Debug)]
pub struct FinishArgs {
    /// Binary cache to push to (`file:///DIR`, `s3://…`, `http(s)://…`, see
    /// below); without it nothing is pushed.
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

/// What `start` learnt about the archive, kept in `State::extra["archive"]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ArchiveFacts {
    /// The `--archive` spec.
    pub backend: String,
    /// The cache key (absent when it could not be computed).
    pub key: Option<String>,
    pub matched_key: Option<String>,
    /// `hit`, `partial`, `miss`, or `error` (restore failed).
    pub outcome: String,
    pub read_only: bool,
    /// Paths the restore added, and their NAR bytes.
    pub restored_paths: usize,
    pub restored_nar_bytes: u64,
    /// The snapshot before the restore, when it added paths: the diff from
    /// it is what an archive saved by `finish` holds (restored + new).
    pub base: Option<Box<State>>,
}

const FACTS: &str = "archive";

impl ArchiveFacts {
    fn of(st: &State) -> Option<ArchiveFacts> {
        serde_json::from_value(st.extra.get(FACTS)?.clone()).ok()
    }
}

pub fn start(store_root: Option<&Path>, args: &StartArgs) -> Result<i32> {
    let st = begin(store_root, &args.archive, args.strict)?;
    let dir = args.state.dir();
    st.save(&dir)?;
    ci::frontend().save_state(ci::github::STATE_DIR, &dir.to_string_lossy());
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

/// The archive restore (when asked), then the snapshot. A restore that
/// fails is a warning unless `strict`; the snapshot is taken either way.
fn begin(store_root: Option<&Path>, a: &ArchiveArgs, strict: bool) -> Result<State> {
    if let Some(url) = &a.restore_from_cache {
        let warmed = {
            let _g = ci::group("nixdelta: warm start from the binary cache");
            super::warm::restore(store_root, url, a)
        };
        match warmed {
            Ok(()) => {}
            Err(e) if strict || matches!(e, Error::Usage(_)) => return Err(e),
            Err(e) => ci::frontend().warning(&format!(
                "warm start from {url} failed (not failing the job; use --strict to): {e}"
            )),
        }
    }
    let Some(spec) = a.spec() else {
        return snapshot::take(store_root);
    };
    let fe = ci::frontend();
    let mut facts = ArchiveFacts {
        backend: spec.to_string(),
        read_only: a.read_only,
        outcome: "error".into(),
        ..Default::default()
    };
    let restored = {
        let _g = ci::group("nixdelta: restore the store archive");
        restore_step(store_root, spec, a, &mut facts)
    };
    let report = match restored {
        Ok(r) => Some(r),
        Err(e) if strict || matches!(e, Error::Usage(_)) => return Err(e),
        Err(e) => {
            fe.warning(&format!(
                "store archive not restored (not failing the job; use --strict to): {e}"
            ));
            None
        }
    };
    let mut st = snapshot::take(store_root)?;
    if let Ok(v) = serde_json::to_value(&facts) {
        st.extra.insert(FACTS.into(), v);
    }
    fe.set_output("cache-key", facts.key.as_deref().unwrap_or(""));
    fe.set_output(
        "cache-hit",
        if facts.outcome == "hit" {
            "true"
        } else {
            "false"
        },
    );
    fe.set_output("matched-key", facts.matched_key.as_deref().unwrap_or(""));
    fe.set_output("restored-paths", &facts.restored_paths.to_string());
    fe.summary(&restore_table(&facts, report.as_ref()).markdown());
    Ok(st)
}

fn restore_step(
    store_root: Option<&Path>,
    spec: &str,
    a: &ArchiveArgs,
    facts: &mut ArchiveFacts,
) -> Result<RestoreReport> {
    let backend = archive::open(spec, a.read_only)?;
    let k = key::compute(
        a.key_dir(),
        &a.key_files,
        &key::current_system(),
        &a.restore_prefixes,
    )?;
    for n in &k.notes {
        tracing::info!("{n}");
    }
    facts.key = Some(k.key.clone());
    eprintln!("nixdelta: cache key {}", k.key);
    if let Some(root) = store_root {
        Store::init(root)?;
    }
    let base = snapshot::take(store_root)?;
    let store = Store::open(store_root)?;
    // An archive that grew on an exact hit is saved as `<key>-g<time>`:
    // the newest of those wins over the key's first archive.
    let grown = grown_prefix(&k.key);
    let (want, prefixes) =
        match backend.lookup(&format!("{grown}0"), std::slice::from_ref(&grown))? {
            Some(found) => (found.key, vec![]),
            None => (k.key.clone(), k.restore_prefixes.clone()),
        };
    let r = archive::restore(
        &store,
        backend.as_ref(),
        &want,
        &prefixes,
        &ImportOptions::default(),
    )?;
    facts.matched_key = r.matched_key.clone();
    facts.outcome = r.outcome.to_string();
    facts.restored_paths = r.import.added;
    facts.restored_nar_bytes = r.import.nar_bytes_added;
    if r.import.added > 0 {
        facts.base = Some(Box::new(base));
    }
    match &r.matched_key {
        None => eprintln!(
            "nixdelta: restore: miss ({}) in {:.2} s",
            r.backend, r.seconds
        ),
        Some(m) => eprintln!(
            "nixdelta: restore: {} ({m}): {} paths added, {} already valid, {} of NAR from {} of archive in {:.2} s",
            r.outcome,
            r.import.added,
            r.import.present,
            mb(r.import.nar_bytes_added),
            mb(r.archive_bytes),
            r.seconds
        ),
    }
    Ok(r)
}

/// Keys of the archives saved when an exact hit grew.
fn grown_prefix(key: &str) -> String {
    format!("{key}-g")
}

fn restore_table(facts: &ArchiveFacts, r: Option<&RestoreReport>) -> Table {
    let mut t = Table::new("nixdelta: store archive restore", ("", ""));
    t.row("backend", format!("`{}`", facts.backend));
    if let Some(k) = &facts.key {
        t.row("cache key", format!("`{k}`"));
    }
    let result = match (facts.outcome.as_str(), &facts.matched_key) {
        ("hit", _) => "hit".to_string(),
        ("partial", Some(m)) => format!("partial (matched `{m}`)"),
        ("miss", _) => "miss".to_string(),
        (o, _) => format!("{o}: not restored"),
    };
    t.row("result", result);
    if let Some(r) = r {
        if r.matched_key.is_some() {
            t.row(
                "paths",
                format!(
                    "{} restored, {} already valid, {} in the archive",
                    r.import.added, r.import.present, r.import.in_archive
                ),
            );
            t.row(
                "bytes",
                format!(
                    "{} of NAR from {} of archive",
                    mb(r.import.nar_bytes_added),
                    mb(r.archive_bytes)
                ),
            );
        }
        t.row("time", secs(r.seconds));
    }
    t
}

/// `finish` as a command: the state from `start`, then [`finish_with`].
pub fn finish(
    store_root: Option<&Path>,
    state: &StateArgs,
    args: &FinishArgs,
    a: &ArchiveArgs,
) -> Result<i32> {
    let dir = state.dir();
    let fe = ci::frontend();
    let st = match State::load(&dir) {
        Ok(st) => st,
        // In CI, a start that never ran (no binary, a step skipped) leaves
        // nothing to finish: that is no reason to fail the job.
        Err(e) if fe.name() != "none" && !args.strict && !dir.join("state.json").exists() => {
            fe.warning(&format!("nothing to finish: {e}"));
            return Ok(exit::OK);
        }
        Err(e) => return Err(e),
    };
    eprintln!("nixdelta: state of start from {}", dir.display());
    if fe.name() == "none" || args.json {
        let out = std::io::stdout();
        return finish_with(store_root, &st, args, a, &mut out.lock());
    }
    // One stream, so CI log folding keeps its order.
    let code = finish_with(store_root, &st, args, a, &mut std::io::stderr());
    // A CI job's state is used once; on a persistent runner (a GitLab shell
    // executor) it would otherwise pile up in the temp directory.
    if !args.dry_run {
        let _ = std::fs::remove_dir_all(&dir);
    }
    code
}

/// Push, then save the archive. Cache-side failures are warnings unless
/// `--strict`; usage errors always fail.
pub fn finish_with(
    store_root: Option<&Path>,
    st: &State,
    args: &FinishArgs,
    a: &ArchiveArgs,
    out: &mut dyn Write,
) -> Result<i32> {
    same_store(st, store_root)?;
    let fe = ci::frontend();
    let mut md = String::new();
    let mut faults: Vec<Error> = Vec::new();
    let pushed = {
        let _g = ci::group("nixdelta: push to the binary cache");
        try_finish(store_root, st, args, out)
    };
    match pushed {
        Ok(p) => {
            md.push_str(&push_table(&p, args).markdown());
            if let Some(r) = &p.report {
                fe.set_output("pushed-paths", &r.uploaded.len().to_string());
                fe.set_output("pushed-bytes", &r.file_bytes.to_string());
            } else {
                fe.set_output("pushed-paths", "0");
                fe.set_output("pushed-bytes", "0");
            }
            match (p.error, &p.plan, &p.report, &args.to) {
                (Some(e), ..) => faults.push(e),
                (None, Some(plan), Some(report), Some(to)) if !a.no_warm_manifest => {
                    let wrote = super::warm::write(store_root, to, &args.upload, a, plan, report);
                    if let Err(e) = wrote {
                        faults.push(e);
                    }
                }
                _ => {}
            }
        }
        Err(e) if matches!(e, Error::Usage(_)) => return Err(e),
        Err(e) => faults.push(e),
    }
    // Failures head the summary: a job that passes must still show them.
    let mut headline = String::new();
    if let Some(err) = faults.first() {
        headline.push_str(&format!("**push incomplete: {}**\n\n", md_line(err)));
        if !args.strict {
            fe.warning(&format!(
                "push incomplete (not failing the job; use --strict to): {err}"
            ));
        }
    }
    if !args.dry_run {
        let saved = {
            let _g = ci::group("nixdelta: save the store archive");
            save_step(store_root, st, args, a)
        };
        match saved {
            Ok(Some((facts, r))) => md.push_str(&save_table(&facts, &r).markdown()),
            Ok(None) => {}
            Err(e) if matches!(e, Error::Usage(_)) => return Err(e),
            Err(e) => {
                headline.push_str(&format!("**archive NOT saved: {}**\n\n", md_line(&e)));
                if !args.strict {
                    fe.warning(&format!(
                        "archive NOT saved (not failing the job; use --strict to): {e}"
                    ));
                }
                faults.push(e);
            }
        }
    }
    if !md.is_empty() || !headline.is_empty() {
        fe.summary(&format!("{headline}{md}"));
    }
    match faults.into_iter().next() {
        Some(e) if args.strict => Err(e),
        _ => Ok(exit::OK),
    }
}

/// A diff against another store's snapshot would list nearly every path
/// of this one: refuse it.
fn same_store(st: &State, store_root: Option<&Path>) -> Result<()> {
    let canon = |p: Option<&Path>| p.map(|p| std::fs::canonicalize(p).unwrap_or(p.to_path_buf()));
    if canon(st.store_root.as_deref()) == canon(store_root) {
        return Ok(());
    }
    let name =
        |p: Option<&Path>| p.map_or("the system store".to_string(), |p| p.display().to_string());
    Err(Error::Input {
        path: "state of start".into(),
        msg: format!(
            "start ran on {}, finish on {}: run both on one store",
            name(st.store_root.as_deref()),
            name(store_root)
        ),
    })
}

/// An error on one Markdown line (no emphasis markers of its own).
fn md_line(e: &Error) -> String {
    e.to_string().replace(['\n', '\r'], " ").replace('*', "\\*")
}

/// What the push did: the plan (absent without `--to`), the upload's
/// report, and its error (the report is still worth summarising).
struct Pushed {
    new_paths: usize,
    target: Option<String>,
    plan: Option<PushPlan>,
    report: Option<UploadReport>,
    error: Option<Error>,
}

/// The push filters that also apply to the archive: `--exclude` patterns
/// and the repository's own source.
fn filters(
    store: &Store,
    new: &[PathInfo],
    args: &FinishArgs,
) -> Result<(Vec<Regex>, HashSet<StorePath>)> {
    let excludes = compile_excludes(&args.exclude)?;
    let self_sources = if args.include_self_source {
        Default::default()
    } else {
        let dir = match &args.source_dir {
            Some(d) => d.clone(),
            None => std::env::current_dir().map_err(|e| Error::Other(e.into()))?,
        };
        self_source::find(store, new, &dir)
    };
    Ok((excludes, self_sources))
}

fn try_finish(
    store_root: Option<&Path>,
    st: &State,
    args: &FinishArgs,
    out: &mut dyn Write,
) -> Result<Pushed> {
    let store = Store::open(store_root)?;
    let t = Instant::now();
    let new = diff::diff(&store, st)?;
    tracing::info!(
        "store diff: {} new paths in {:.1} ms",
        new.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let (excludes, self_sources) = filters(&store, &new, args)?;
    let opts = PlanOptions {
        include_drv: args.include_drv,
        excludes,
        self_sources,
        upstream_keys: args.upstream_key.clone(),
    };
    let mut pushed = Pushed {
        new_paths: new.len(),
        target: args.to.clone(),
        plan: None,
        report: None,
        error: None,
    };
    let Some(to) = &args.to else {
        writeln!(
            out,
            "nixdelta: {} new paths; no --to given, nothing pushed",
            new.len()
        )
        .ok();
        return Ok(pushed);
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
        pushed.plan = Some(plan);
        return Ok(pushed);
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
    pushed.error = push::report_error(&report, target.url());
    pushed.plan = Some(plan);
    pushed.report = Some(report);
    Ok(pushed)
}

fn push_table(p: &Pushed, args: &FinishArgs) -> Table {
    let title = match &p.target {
        Some(t) => format!("nixdelta: push to `{}`", redact_url(t)),
        None => "nixdelta: push".to_string(),
    };
    let mut t = Table::new(&title, ("", "paths"));
    let Some(plan) = &p.plan else {
        t.row("new paths", p.new_paths.to_string());
        t.row("pushed", "nothing: no binary cache given");
        return t;
    };
    t.row("new paths considered", plan.considered.to_string());
    for (why, paths) in &plan.skipped {
        t.row(
            format!("skipped: {}", why.describe()),
            paths.len().to_string(),
        );
    }
    if !plan.pulled_in.is_empty() {
        t.row(
            "pulled in (referenced by an upload)",
            plan.pulled_in.len().to_string(),
        );
    }
    let Some(r) = &p.report else {
        t.row(
            if args.dry_run {
                "to upload (dry run)"
            } else {
                "to upload"
            },
            format!(
                "{} ({} of NAR)",
                plan.upload.len(),
                mb(plan.upload_nar_bytes())
            ),
        );
        return t;
    };
    t.row("uploaded", r.uploaded.len().to_string());
    if !r.failed.is_empty() || !r.blocked.is_empty() {
        t.row("failed", r.failed.len().to_string());
        t.row("held back", r.blocked.len().to_string());
    }
    t.row(
        "bytes",
        format!("{} of NAR, {} zstd", mb(r.nar_bytes), mb(r.file_bytes)),
    );
    let rate = if r.seconds > 0.0 {
        r.nar_bytes as f64 / 1e6 / r.seconds
    } else {
        0.0
    };
    t.row("time", secs(r.seconds));
    t.row("throughput", format!("{rate:.1} MB/s"));
    if plan.skipped_count(Skip::OnTarget) > 0 {
        t.row(
            "already on the target",
            plan.skipped_count(Skip::OnTarget).to_string(),
        );
    }
    t
}

/// A URL without credentials or query (which may hold keys).
fn redact_url(u: &str) -> String {
    let no_query = u.split(['?', '#']).next().unwrap_or(u);
    match (no_query.find("://"), no_query.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            format!("{}***@{}", &no_query[..s + 3], &no_query[at + 1..])
        }
        _ => no_query.to_string(),
    }
}

/// Saves the restored and newly realised paths under the key `start`
/// computed, on a miss or partial hit. `None` when there is no archive.
fn save_step(
    store_root: Option<&Path>,
    st: &State,
    args: &FinishArgs,
    a: &ArchiveArgs,
) -> Result<Option<(ArchiveFacts, SaveReport)>> {
    let mut facts = match ArchiveFacts::of(st) {
        Some(f) => f,
        None => {
            // start ran without --archive: key it now, nothing was restored.
            let Some(spec) = a.spec() else {
                return Ok(None);
            };
            ArchiveFacts {
                backend: spec.to_string(),
                outcome: "miss".into(),
                ..Default::default()
            }
        }
    };
    if let Some(spec) = a.spec() {
        facts.backend = spec.to_string();
    }
    facts.read_only |= a.read_only;
    let key = match &facts.key {
        Some(k) => k.clone(),
        None => {
            let k = key::compute(
                a.key_dir(),
                &a.key_files,
                &key::current_system(),
                &a.restore_prefixes,
            )?;
            facts.key = Some(k.key.clone());
            k.key
        }
    };
    let t = Instant::now();
    let store = Store::open(store_root)?;
    let mut report = SaveReport {
        key: key.clone(),
        backend: facts.backend.clone(),
        outcome: archive::SaveOutcome::Exists,
        paths: 0,
        nar_bytes: 0,
        archive_bytes: 0,
        dropped: 0,
        dropped_nar_bytes: 0,
        derivations_left_out: 0,
        seconds: 0.0,
    };
    let mut save_key = key.clone();
    if facts.outcome == Outcome::Hit.to_string() {
        let new = diff::diff(&store, st)?;
        let (excludes, self_sources) = filters(&store, &new, args)?;
        let new: Vec<&PathInfo> = new
            .iter()
            .filter(|i| !i.path.is_derivation() && !self_sources.contains(&i.path))
            .filter(|i| {
                let full = i.path.to_absolute(store.store_dir());
                !excludes.iter().any(|r| r.is_match(&full))
            })
            .collect();
        let bytes: u64 = new.iter().map(|i| i.nar_size).sum();
        let threshold = a.resave_threshold()?;
        // Without the pre-restore snapshot (the restore added nothing: all
        // was there) the diff cannot tell what the archive held: keep it.
        if new.is_empty() || bytes <= threshold || facts.base.is_none() {
            eprintln!(
                "nixdelta: archive: exact key hit, nothing saved ({} new paths, {} of NAR, within --resave-threshold {})",
                new.len(),
                mb(bytes),
                mb(threshold)
            );
            return Ok(Some((facts, report)));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        save_key = format!("{}{now}", grown_prefix(&key));
        eprintln!(
            "nixdelta: archive: exact key hit, but the job realised {} new paths ({} of NAR): saving {save_key}",
            new.len(),
            mb(bytes)
        );
        report.key = save_key.clone();
    }
    let backend = archive::open(&facts.backend, facts.read_only)?;
    let base = facts.base.as_deref().unwrap_or(st);
    let candidates = diff::diff(&store, base)?;
    let (excludes, self_sources) = filters(&store, &candidates, args)?;
    let roots: Vec<StorePath> = candidates
        .into_iter()
        .map(|i| i.path)
        .filter(|p| !p.is_derivation() || args.include_drv)
        .filter(|p| !self_sources.contains(p))
        .filter(|p| {
            let full = p.to_absolute(store.store_dir());
            !excludes.iter().any(|r| r.is_match(&full))
        })
        .collect();
    if roots.is_empty() {
        eprintln!("nixdelta: archive: nothing new to save");
        report.outcome = archive::SaveOutcome::Exists;
        return Ok(Some((facts, report)));
    }
    let max_nar_size = a
        .max_archive_size
        .as_deref()
        .map(|s| nixdelta::size::Size::of_option("--max-archive-size", s).map(|s| s.0))
        .transpose()?;
    let opts = SaveOptions {
        max_nar_size,
        include_drv: args.include_drv,
        ..SaveOptions::default()
    };
    let sel = archive::select(&store, &roots, &opts)?;
    let r = archive::save_selection(&store, backend.as_ref(), &save_key, &sel, &opts, t)?;
    let what = match r.outcome {
        archive::SaveOutcome::Saved { .. } => "saved",
        archive::SaveOutcome::Exists => "exists already (not saved again)",
        archive::SaveOutcome::ReadOnly => "read-only (not saved)",
    };
    eprintln!(
        "nixdelta: archive {save_key}: {what}: {} paths, {} of NAR, {} of archive in {:.2} s",
        r.paths,
        mb(r.nar_bytes),
        mb(r.archive_bytes),
        r.seconds
    );
    Ok(Some((facts, r)))
}

fn save_table(facts: &ArchiveFacts, r: &SaveReport) -> Table {
    let mut t = Table::new("nixdelta: store archive save", ("", ""));
    t.row("cache key", format!("`{}`", r.key));
    if facts.outcome == Outcome::Hit.to_string() && r.paths == 0 {
        t.row("result", "not saved: exact key hit");
        return t;
    }
    let result = match r.outcome {
        archive::SaveOutcome::Saved { .. } => "saved",
        archive::SaveOutcome::Exists if r.paths == 0 => "not saved: nothing new",
        archive::SaveOutcome::Exists => "not saved: the key exists",
        archive::SaveOutcome::ReadOnly => "not saved: read-only",
    };
    t.row("result", result);
    if r.paths > 0 {
        t.row("paths", format!("{} ({} of NAR)", r.paths, mb(r.nar_bytes)));
    }
    if r.dropped > 0 {
        t.row(
            "left out by the size cap",
            format!("{} ({} of NAR)", r.dropped, mb(r.dropped_nar_bytes)),
        );
    }
    if r.archive_bytes > 0 {
        t.row("archive", mb(r.archive_bytes));
        t.row("time", secs(r.seconds));
    }
    t
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

/// `run -- COMMAND`: start (restore, snapshot), the command (stdio passed
/// through, signals forwarded), finish — also when the command failed.
/// Exits with the command's code.
pub fn run(
    store_root: Option<&Path>,
    args: &FinishArgs,
    a: &ArchiveArgs,
    command: &[String],
) -> Result<i32> {
    // Options are checked before the command runs (which may take an
    // hour): a bad regex, URL or key is reported now, not after it.
    validate_push_options(args)?;
    // The user's command runs even when nixdelta cannot take a snapshot
    // (unless --strict): a cache tool must not stop the build.
    let st = match begin(store_root, a, args.strict) {
        Ok(st) => Some(st),
        Err(e) if args.strict || matches!(e, Error::Usage(_)) => return Err(e),
        Err(e) => {
            ci::frontend().warning(&format!(
                "not tracking this run (nothing will be pushed): {e}"
            ));
            None
        }
    };
    let code = run_command(command)?;
    let Some(st) = st else { return Ok(code) };
    if code != 0 {
        eprintln!("nixdelta: command exited with {code}; pushing what it realised anyway");
    }
    let finished = finish_with(store_root, &st, args, a, &mut std::io::stderr());
    match finished {
        Ok(_) => Ok(code),
        Err(e) if code == 0 => Err(e),
        Err(e) => {
            eprintln!("nixdelta: error: {e}");
            Ok(code)
        }
    }
}

/// The `--exclude` patterns; a bad one is a usage error on one line
/// (regex errors draw a caret diagram over several).
fn compile_excludes(patterns: &[String]) -> Result<Vec<Regex>> {
    patterns
        .iter()
        .map(|r| {
            Regex::new(r).map_err(|e| {
                let why = e.to_string();
                let why = why.lines().last().unwrap_or("").trim().to_string();
                Error::Usage(format!("--exclude {r:?}: not a regular expression: {why}"))
            })
        })
        .collect()
}

/// What `finish` would refuse, checked up front: `--exclude` patterns,
/// the `--to` URL and its signing key.
fn validate_push_options(args: &FinishArgs) -> Result<()> {
    compile_excludes(&args.exclude)?;
    if let Some(to) = &args.to {
        nixdelta::cache::open(to)?;
        if !args.dry_run {
            load_secret_key(args.upload.secret_key_file.as_deref())?;
        }
    }
    Ok(())
}

fn run_command(command: &[String]) -> Result<i32> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| Error::Usage("run: no command given".into()))?;
    // Catch signals before the child exists, so one that arrives while it
    // starts is queued and forwarded rather than killing us.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
        .map_err(|e| Error::Other(e.into()))?;
    let child = std::process::Command::new(program)
        .args(rest)
        // The build has no use for our signing key.
        .env_remove("NIXDELTA_SECRET_KEY")
        .env_remove("INPUT_SECRET-KEY")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            redact_url("s3://bucket/p?endpoint=http://x&secret=1"),
            "s3://bucket/p"
        );
        assert_eq!(
            redact_url("https://user:pw@cache.example.org/x"),
            "https://***@cache.example.org/x"
        );
        assert_eq!(redact_url("file:///tmp/c"), "file:///tmp/c");
    }
}
