//! Push while the job builds: `start --watch` leaves this uploader running
//! in the background. It polls the Nix DB for paths registered since the
//! last poll (one indexed range query) and pushes each batch through the
//! same push plan as `finish`: filters, upstream, already on the target,
//! the repository's source, references pulled in. Nix registers a path
//! only once its references are valid, so id order is a safe upload order,
//! and the upload still writes a narinfo only after its NAR and its
//! references' narinfos.
//!
//! Its files live in the job's state dir: `watch.lock` (held for its whole
//! life: two watchers on one state dir are refused, and `finish` sees
//! whether it still runs), `watch.uploaded` (one store path per line,
//! appended after each batch: what survives a `kill -9`), `watch.done`
//! (its report, written last). `finish` creates `watch.stop`, waits for it
//! to drain, and pushes what is left; a watcher that died leaves no
//! `watch.done`, and `finish` then does the whole push as without watch.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cache;
use crate::error::{Error, Result};
use crate::nix::StorePath;
use crate::pipeline::pack::PackOptions;
use crate::pipeline::plan::{plan, PlanOptions};
use crate::pipeline::push;
use crate::pipeline::scope::{self as rule, Window};
use crate::pipeline::snapshot::State;
use crate::pipeline::upload::UploadOptions;
use crate::store::{jobs, PathInfo, Store};

use super::config::JobConfig;
use super::scope::JobFacts;

const LOCK: &str = "watch.lock";
const STOP: &str = "watch.stop";
const UPLOADED: &str = "watch.uploaded";
const DONE: &str = "watch.done";
pub const LOG: &str = "watch.log";

/// How the uploader polls, and when it gives up on a `finish` that never
/// comes (a cancelled job).
#[derive(Clone, Copy, Debug)]
pub struct WatchOptions {
    pub poll: Duration,
    pub timeout: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            poll: Duration::from_secs(1),
            // GitHub's longest job.
            timeout: Duration::from_secs(6 * 3600),
        }
    }
}

/// Why the uploader stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ended {
    /// `finish` asked it to.
    Drained,
    /// No `finish` came within the timeout.
    Timeout,
}

/// The uploader's report (`watch.done`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchReport {
    pub ended: Ended,
    pub paths: usize,
    pub file_bytes: u64,
    pub failed: usize,
    pub seconds: f64,
}

/// What `finish` found of the uploader.
#[derive(Clone, Debug, Default)]
pub struct Watched {
    /// Paths it uploaded (from `watch.uploaded`): on the target already.
    pub uploaded: HashSet<StorePath>,
    /// Its report; `None` when it died (killed, out of memory).
    pub report: Option<WatchReport>,
    /// Seconds `finish` waited for it to drain.
    pub wait_secs: f64,
}

/// `flock` on the state dir's lock file: exclusive, never blocking.
fn try_lock(dir: &Path) -> Result<Option<File>> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))
        .map_err(|e| Error::Other(anyhow::anyhow!("{}: {e}", dir.join(LOCK).display())))?;
    // SAFETY: flock on a file descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((r == 0).then_some(f))
}

/// Whether an uploader holds the state dir's lock.
pub fn is_running(dir: &Path) -> bool {
    dir.join(LOCK).exists() && matches!(try_lock(dir), Ok(None))
}

/// Starts the uploader: `exe args` in its own session (a CI step ending,
/// or a terminal closing, does not take it along), low priority, output
/// to `watch.log`. Returns once it holds the lock, so a `finish` right
/// after sees it.
pub fn spawn(dir: &Path, exe: &Path, args: &[std::ffi::OsString]) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    if is_running(dir) {
        return Err(Error::Usage(format!(
            "an uploader already watches for the state dir {}: one start --watch per job",
            dir.display()
        )));
    }
    for f in [STOP, UPLOADED, DONE] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let log = File::create(dir.join(LOG)).map_err(|e| Error::Other(e.into()))?;
    let err = log.try_clone().map_err(|e| Error::Other(e.into()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env("NIXDELTA_CI", "none")
        .env("NIXDELTA_STATE_DIR", dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err);
    // SAFETY: setsid, fcntl and close are async-signal-safe and touch
    // only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            // Inherited descriptors that stay open across exec (a CI
            // runner's output pipe, bats' fd 3) would make the runner wait
            // for the uploader: close them. Close-on-exec ones (std's own
            // exec-error pipe) are left to exec.
            for fd in 3..1024 {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                    libc::close(fd);
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| Error::Other(e.into()))?;
    let t = Instant::now();
    while !is_running(dir) {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join(LOG)).unwrap_or_default();
            return Err(Error::Other(anyhow::anyhow!(
                "the uploader exited at once ({status}): {}",
                log.lines().last().unwrap_or("")
            )));
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err(Error::Other(anyhow::anyhow!("the uploader did not start")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.id())
}

/// The uploader's pid file content is not needed: the lock says it lives;
/// tests and users find it as `watch.lock`'s holder, or here.
pub fn pid_file(dir: &Path) -> PathBuf {
    dir.join("watch.pid")
}

/// Lowest CPU priority and best-effort IO at its lowest level, so the
/// build keeps the machine.
fn lower_priority() {
    // SAFETY: plain syscalls on this process.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        // ioprio_set(IOPRIO_WHO_PROCESS, self, IOPRIO_CLASS_BE << 13 | 7):
        // no wrapper in libc; the raw syscall is stable.
        libc::syscall(libc::SYS_ioprio_set, 1, 0, (2 << 13) | 7);
    }
}

/// The uploader's life: poll, push, until `finish` asks it to stop or the
/// timeout passes.
pub fn run(cfg: &JobConfig, dir: &Path, st: &State, opts: WatchOptions) -> Result<WatchReport> {
    let Some(_lock) = try_lock(dir)? else {
        return Err(Error::Usage(format!(
            "an uploader already watches for the state dir {}",
            dir.display()
        )));
    };
    let _ = std::fs::write(pid_file(dir), std::process::id().to_string());
    lower_priority();
    let t = Instant::now();
    let facts = super::finish::archive_facts(cfg, st);
    let cfg = &super::save::keeping_frames(cfg, dir, facts.as_ref());
    let mut up = Uploader::open(cfg, dir, st)?;
    let mut report = WatchReport {
        ended: Ended::Drained,
        paths: 0,
        file_bytes: 0,
        failed: 0,
        seconds: 0.0,
    };
    let root = &cfg.store;
    // A fresh runner's store gets its DB with the build's first path.
    let mut ended = stop_reason(dir, t, opts);
    while !Store::exists(root) && ended.is_none() {
        nap(dir, opts.poll);
        ended = stop_reason(dir, t, opts);
    }
    if Store::exists(root) {
        let store = Store::open(root)?;
        loop {
            ended = stop_reason(dir, t, opts);
            up.poll(cfg, &store, ended.is_some(), &mut report)?;
            if ended.is_some() {
                break;
            }
            nap(dir, opts.poll);
        }
    }
    report.ended = ended.unwrap_or(Ended::Drained);
    report.seconds = t.elapsed().as_secs_f64();
    let json = serde_json::to_vec(&report).map_err(|e| Error::Other(e.into()))?;
    std::fs::write(dir.join(DONE), json).map_err(|e| Error::Other(e.into()))?;
    Ok(report)
}

/// Sleeps `poll`, waking early when `finish` asks to drain: the post step
/// should not wait out a poll interval.
fn nap(dir: &Path, poll: Duration) {
    let t = Instant::now();
    while t.elapsed() < poll && !dir.join(STOP).exists() {
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `finish` asked (a stop file), or the timeout passed; `None`: go on.
fn stop_reason(dir: &Path, t: Instant, opts: WatchOptions) -> Option<Ended> {
    if dir.join(STOP).exists() {
        Some(Ended::Drained)
    } else if t.elapsed() > opts.timeout {
        Some(Ended::Timeout)
    } else {
        None
    }
}

/// What every poll needs: the caches, the key, where the last poll ended.
struct Uploader {
    target: Box<dyn cache::BinaryCache>,
    upstream: Option<Box<dyn cache::BinaryCache>>,
    key: crate::nix::SecretKey,
    job: Option<JobFacts>,
    since: crate::store::Snapshot,
    uploaded: File,
}

impl Uploader {
    fn open(cfg: &JobConfig, dir: &Path, st: &State) -> Result<Uploader> {
        let since = st.snapshot.ok_or_else(|| {
            Error::Store("the uploader needs the Nix DB (start could not read it)".into())
        })?;
        let to = cfg
            .push
            .to
            .as_deref()
            .ok_or_else(|| Error::Usage("start --watch needs --to".into()))?;
        let target = cache::open(to)?;
        let key = super::keys::load_secret_key(cfg.push.secret_key_file.as_deref())?;
        target.ensure_cache_info(crate::nix::DEFAULT_STORE_DIR)?;
        let upstream = cfg
            .push
            .upstream
            .as_deref()
            .map(cache::open_read_only)
            .transpose()?;
        let uploaded = File::options()
            .create(true)
            .append(true)
            .open(dir.join(UPLOADED))
            .map_err(|e| Error::Other(e.into()))?;
        Ok(Uploader {
            target,
            upstream,
            key,
            job: JobFacts::of(st),
            since,
            uploaded,
        })
    }

    /// Pushes what was registered since the last poll; `drain`: finish
    /// waits, so every core.
    fn poll(
        &mut self,
        cfg: &JobConfig,
        store: &Store,
        drain: bool,
        report: &mut WatchReport,
    ) -> Result<()> {
        let new = store.paths_since(&self.since)?;
        let Some(last) = new.last() else {
            return Ok(());
        };
        self.since.max_id = last.id;
        let batch = own_paths(self.job.as_ref(), new, self.since.max_id);
        // While the build runs: one path at a time, one zstd thread.
        let upload = if drain {
            cfg.push.upload.clone()
        } else {
            UploadOptions {
                jobs: 1,
                pack: PackOptions {
                    level: cfg.push.upload.pack.level,
                    threads: 1,
                },
                frames: cfg.push.upload.frames.clone(),
            }
        };
        let plan_opts = PlanOptions {
            filters: cfg.filters.filters(store, &batch)?,
            upstream_keys: cfg.push.upstream_keys.clone(),
            known_on_target: Default::default(),
        };
        let target = self.target.as_ref();
        let p = match plan(store, batch, &plan_opts, target, self.upstream.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("push plan failed (finish retries): {e}");
                return Ok(());
            }
        };
        let r = push::run_plan(store, &p, target, &self.key, &upload);
        for path in &r.uploaded {
            let _ = writeln!(self.uploaded, "{}", path.to_absolute(store.store_dir()));
        }
        report.paths += r.uploaded.len();
        report.file_bytes += r.file_bytes;
        // A path gone meanwhile (collected, a failed build's) is no
        // fault; anything else finish pushes again.
        report.failed += r.failed.len();
        for (path, e) in &r.failed {
            tracing::info!("not uploaded now (finish retries): {path}: {e}");
        }
        Ok(())
    }
}

/// On a shared store, only the paths realised while no other job ran are
/// pushed now; the rest waits for `finish`, which knows this job's roots.
fn own_paths(job: Option<&JobFacts>, new: Vec<PathInfo>, now: i64) -> Vec<PathInfo> {
    let Some(job) = job else { return new };
    let own = Window {
        start: job.start_id,
        end: Some(now),
    };
    let others: Vec<Window> = jobs::list(&job.registry)
        .into_iter()
        .filter(|e| e.id != job.id)
        .map(|e| Window {
            start: e.start_id,
            end: e.end_id,
        })
        .filter(|w| w.overlaps(&own))
        .collect();
    rule::split(&new, &others, &HashSet::new()).mine
}

/// Asks a running uploader to drain and waits for it (at most `limit`);
/// reads what it uploaded. `None`: no uploader was started for this dir.
pub fn stop(dir: &Path, limit: Duration) -> Option<Watched> {
    if !dir.join(LOCK).exists() {
        return None;
    }
    let t = Instant::now();
    let _ = File::create(dir.join(STOP));
    let mut said = Instant::now();
    while is_running(dir) && t.elapsed() < limit {
        if said.elapsed() > Duration::from_secs(10) {
            eprintln!("nixdelta: waiting for the background uploader to drain…");
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_running(dir) {
        if let Some(pid) = std::fs::read_to_string(pid_file(dir))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: a signal to the uploader we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let report = std::fs::read(dir.join(DONE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let uploaded = std::fs::read_to_string(dir.join(UPLOADED))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| StorePath::from_absolute(l, crate::nix::DEFAULT_STORE_DIR).ok())
        .collect();
    let _ = std::fs::remove_file(dir.join(LOCK));
    Some(Watched {
        uploaded,
        report,
        wait_secs: t.elapsed().as_secs_f64(),
    })
}

/// `90`, `90s`, `30m`, `6h`: the uploader's timeout. Hand-written: four
/// units do not need a crate.
pub fn parse_timeout(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| Duration::from_secs(n * mult))
        .ok_or_else(|| {
            Error::Usage(format!(
                "--watch-timeout {s:?}: expected seconds or a time such as 90s, 30m, 6h"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timeout("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_timeout("6h").unwrap(), Duration::from_secs(6 * 3600));
        assert_eq!(parse_timeout("5s").unwrap(), Duration::from_secs(5));
        for bad in ["", "0", "1d", "m", "-5s"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_uploader_per_state_dir() {
        let d = tempfile::tempdir().unwrap();
        assert!(!is_running(d.path()));
        let held = try_lock(d.path()).unwrap().expect("free");
        assert!(is_running(d.path()));
        assert!(try_lock(d.path()).unwrap().is_none());
        drop(held);
        assert!(!is_running(d.path()));
    }
}
