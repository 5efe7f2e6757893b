//! `start --watch`: the checks before anything happens, the uploader's
//! command line, and the hidden `watch` command the uploader runs.

use std::path::Path;

use nixdelta::error::{exit, Error, Result};
use nixdelta::job::{self, JobConfig};
use nixdelta::nix::StoreSpec;
use nixdelta::pipeline::snapshot::State;

use super::track::start_config;
use super::track_args::StartArgs;

/// What `start --watch` needs, checked before anything happens: a cache,
/// a signing key, a timeout, and no uploader already on this state dir.
pub(super) fn check_watch(cfg: &JobConfig, args: &StartArgs, dir: &Path) -> Result<()> {
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
pub(super) fn watch_argv(argv: &[std::ffi::OsString]) -> Vec<std::ffi::OsString> {
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
pub fn watch(store: &StoreSpec, args: &StartArgs) -> Result<i32> {
    let cfg = start_config(store, args)?;
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
