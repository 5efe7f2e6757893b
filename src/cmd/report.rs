//! How a job looks: the CI front end as the job's [`Observer`], the push
//! plan as lines or JSON, and the Markdown summary tables (failures first).

use std::cell::RefCell;
use std::io::Write;

use nixdelta::archive::{RestoreReport, SaveOutcome, SaveReport};
use nixdelta::error::Error;
use nixdelta::job::read::Configured;
use nixdelta::job::{ArchiveFacts, Finished, Observer, Restored, Step};
use nixdelta::net::redact::redact_url;
use nixdelta::pipeline::plan::{PushPlan, Skip};
use nixdelta::pipeline::summary::{self, mb};
use nixdelta::pipeline::upload::UploadReport;

use crate::ci::{secs, Frontend, Table};
use nixdelta::job::push::Pushed;
use nixdelta::job::scope::ScopeFacts;
use nixdelta::job::watch::{Ended, Watched};

/// The front end in use, watching a job; the plan goes to `out`.
pub struct Report<'a> {
    pub fe: &'static dyn Frontend,
    pub out: RefCell<&'a mut dyn Write>,
    pub json: bool,
}

impl Observer for Report<'_> {
    fn begin_group(&self, title: &str) {
        self.fe.group_start(title);
    }
    fn end_group(&self) {
        self.fe.group_end();
    }
    fn warning(&self, msg: &str) {
        self.fe.warning(msg);
    }
    fn output(&self, name: &str, value: &str) {
        self.fe.set_output(name, value);
    }
    fn plan(&self, plan: &PushPlan, report: Option<&UploadReport>, store_dir: &str) {
        print_plan(*self.out.borrow_mut(), plan, report, store_dir, self.json);
    }
    fn plan_note(&self, line: &str) {
        writeln!(self.out.borrow_mut(), "nixdelta: {line}").ok();
    }
}

fn print_plan(
    out: &mut dyn Write,
    plan: &PushPlan,
    report: Option<&UploadReport>,
    store_dir: &str,
    json: bool,
) {
    if json {
        let v = summary::plan_json(plan, report, store_dir);
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

/// What later steps' Nix reads, and how it was told.
pub fn read_table(c: &Configured, how: &str) -> Table {
    let mut t = Table::new("nixdelta: later steps substitute from", ("", ""));
    for s in &c.side.substituters {
        t.row("substituter", format!("`{}`", redact_url(s)));
    }
    let names: Vec<&str> = c
        .side
        .public_keys
        .iter()
        .map(|k| k.split(':').next().unwrap_or(k))
        .collect();
    t.row("trusted keys", format!("`{}`", names.join(" ")));
    if c.netrc_file.is_some() {
        t.row("credentials", "netrc file (mode 0600, removed by finish)");
    }
    t.row("configured", how);
    use nixdelta::job::read::Daemon;
    match &c.daemon {
        None => {}
        Some(Daemon::Trusted) => {
            t.row("Nix daemon", "trusts this user");
        }
        Some(Daemon::Allowed) => {
            t.row("Nix daemon", "allows these caches for untrusted users");
        }
        Some(Daemon::Ignored { .. }) => {
            t.row(
                "Nix daemon",
                "**ignores them: this user is not trusted** (see the warning)",
            );
        }
        Some(Daemon::Configured { conf, how, .. }) => {
            t.row(
                "Nix daemon",
                format!(
                    "configured: added to `{}`, restarted ({how})",
                    conf.display()
                ),
            );
        }
        Some(Daemon::Failed { .. }) => {
            t.row(
                "Nix daemon",
                "**ignores them: --daemon failed** (see the warning)",
            );
        }
    }
    t
}

pub fn restore_table(facts: &ArchiveFacts, r: Option<&RestoreReport>) -> Table {
    let mut t = Table::new("nixdelta: store archive restore", ("", ""));
    t.row("backend", format!("`{}`", facts.backend));
    if let Some(k) = &facts.key {
        t.row("cache key", format!("`{k}`"));
    }
    let result = match (facts.outcome, &facts.matched_key) {
        (Restored::Hit, _) => "hit".to_string(),
        (Restored::Partial, Some(m)) => format!("partial (matched `{m}`)"),
        (Restored::Miss, _) => "miss".to_string(),
        (Restored::Partial, None) => "partial: not restored".to_string(),
        (Restored::Error, _) => "error: not restored".to_string(),
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
            if let Some(m) = r.import.method {
                t.row("method", m.describe());
            }
        }
        t.row("time", secs(r.seconds));
    }
    t
}

fn push_table(p: &Pushed, scope: Option<&ScopeFacts>) -> Table {
    let title = match &p.target {
        Some(t) => format!("nixdelta: push to `{}`", redact_url(t)),
        None => "nixdelta: push".to_string(),
    };
    let mut t = Table::new(&title, ("", "paths"));
    let Some(plan) = &p.plan else {
        t.row("new paths", p.new_paths.to_string());
        t.row(
            "pushed",
            if p.skipped {
                "nothing: a pull-only job"
            } else {
                "nothing: no binary cache given"
            },
        );
        return t;
    };
    match &p.closure {
        Some(c) => {
            t.row("new paths (store diff)", p.new_paths.to_string());
            t.row(
                if c.auto {
                    "closure: auto (the diff's derivations)".to_string()
                } else {
                    format!("closure of {} roots", c.roots)
                },
                format!("{} paths, {} older than start", c.candidates, c.predating),
            );
            if c.without_drv > 0 {
                t.row(
                    "roots without their .drv (runtime closure only)",
                    c.without_drv.to_string(),
                );
            }
            t.row("paths considered", plan.considered.to_string());
        }
        None => {
            t.row("new paths considered", plan.considered.to_string());
        }
    }
    if let Some(w) = &p.watched {
        watch_rows(&mut t, w);
    }
    if let Some(s) = scope {
        t.row(
            "shared store: other jobs overlapping",
            format!("{} (this job's roots: {})", s.overlapping, s.roots),
        );
        t.row("claimed by this job's roots", s.by_roots.to_string());
        t.row(
            "not pushed: realised by another job",
            format!("{} ({} of NAR)", s.held, mb(s.held_bytes)),
        );
    }
    if plan.asked > 0 || plan.known > 0 {
        t.row(
            "existence checks",
            format!(
                "{} asked in {}, {} known without asking (warm manifest, background uploader)",
                plan.asked,
                secs(plan.asked_secs),
                plan.known
            ),
        );
    }
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
            if p.dry_run {
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

fn save_table(facts: &ArchiveFacts, r: &SaveReport) -> Table {
    let mut t = Table::new("nixdelta: store archive save", ("", ""));
    t.row("cache key", format!("`{}`", r.key));
    if facts.outcome == Restored::Hit && r.paths == 0 {
        t.row("result", "not saved: exact key hit");
        return t;
    }
    let result = match r.outcome {
        SaveOutcome::Saved { .. } => "saved",
        SaveOutcome::Exists if r.paths == 0 => "not saved: nothing new",
        SaveOutcome::Exists => "not saved: the key exists",
        SaveOutcome::ReadOnly => "not saved: read-only",
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

/// An error on one Markdown line (no emphasis markers of its own).
fn md_line(e: &Error) -> String {
    e.to_string().replace(['\n', '\r'], " ").replace('*', "\\*")
}

/// The summary of `finish`: failures head it (a job that passes must
/// still show them), then the push and save tables. Unless `strict`, each
/// failure is also a warning annotation.
/// What diff mode misses on a warm runner, and the way out.
fn warm_hint(n: usize) -> String {
    format!(
        "{n} build-time dependencies of this job's outputs predate start and are not known to be \
         in the cache (a warm runner's store): the diff does not push them, so a fresh runner \
         rebuilds them. `closure: auto` (finish --closure auto) pushes them too"
    )
}

/// What the background uploader did before finish.
fn watch_rows(t: &mut Table, w: &Watched) {
    match &w.report {
        Some(r) => {
            t.row(
                "uploaded during the build",
                format!(
                    "{} ({}; finish waited {} for the last)",
                    r.paths,
                    mb(r.file_bytes),
                    secs(w.wait_secs)
                ),
            );
            if r.ended == Ended::Timeout {
                t.row("background uploader", "had stopped on its timeout");
            }
        }
        None => {
            t.row(
                "background uploader",
                format!(
                    "died before finish: {} paths it uploaded kept, the rest pushed now",
                    w.uploaded.len()
                ),
            );
        }
    }
}

/// Why paths of a shared store were held back, and the ways out.
fn scope_hint(s: &ScopeFacts) -> String {
    format!(
        "{} paths realised on this store while {} other job(s) ran are in no build closure of \
         this job's roots: not pushed (realised by another job). Name this job's outputs with \
         `paths-to-push` (finish --closure-of), or keep their result links in the workspace; \
         `scope: off` (--scope off) if the jobs sharing this store may share a cache",
        s.held, s.overlapping
    )
}

pub fn finish_summary(fe: &dyn Frontend, done: &Finished, strict: bool) -> String {
    let mut headline = String::new();
    let push_fault = done.faults.iter().find(|(s, _)| *s == Step::Push);
    if let Some((_, e)) = push_fault {
        headline.push_str(&format!("**push incomplete: {}**\n\n", md_line(e)));
        if !strict {
            fe.warning(&format!(
                "push incomplete (not failing the job; use --strict to): {e}"
            ));
        }
    }
    for (_, e) in done.faults.iter().filter(|(s, _)| *s == Step::Save) {
        headline.push_str(&format!("**archive NOT saved: {}**\n\n", md_line(e)));
        if !strict {
            fe.warning(&format!(
                "archive NOT saved (not failing the job; use --strict to): {e}"
            ));
        }
    }
    let mut md = String::new();
    if let Some(p) = &done.pushed {
        if p.warm_misses > 0 {
            let hint = warm_hint(p.warm_misses);
            fe.notice(&hint);
            headline.push_str(&format!("{hint}\n\n"));
        }
        if let Some(s) = done.scope.as_ref().filter(|s| s.held > 0) {
            let hint = scope_hint(s);
            fe.notice(&hint);
            headline.push_str(&format!("{hint}\n\n"));
        }
        md.push_str(&push_table(p, done.scope.as_ref()).markdown());
    }
    for (facts, r) in done.saved.iter().chain(&done.eval_saved) {
        md.push_str(&save_table(facts, r).markdown());
    }
    if let Some(p) = &done.purge {
        let (t, near) = purge_table(p);
        if near {
            headline.push_str("**The repository's Actions cache is near its limit: GitHub evicts the least recently used entries beyond it.**\n\n");
        }
        md.push_str(&t.markdown());
    }
    format!("{headline}{md}")
}

/// The Actions cache's usage and what was purged; whether usage is over
/// 80 % of the limit.
fn purge_table(p: &nixdelta::archive::github_purge::PurgeReport) -> (Table, bool) {
    use nixdelta::archive::github_purge::DEFAULT_LIMIT;
    let mut t = Table::new("GitHub Actions cache", ("", ""));
    let mut near = false;
    if let Some(u) = &p.usage {
        let pct = u.active_caches_size_in_bytes as f64 * 100.0 / DEFAULT_LIMIT as f64;
        near = pct >= 80.0;
        t.row(
            "usage",
            format!(
                "{} in {} entries ({pct:.0} % of GitHub's default 10 GB limit)",
                mb(u.active_caches_size_in_bytes),
                u.active_caches_count
            ),
        );
    }
    let bytes: u64 = p.deleted.iter().map(|(_, b)| b).sum();
    let keys: Vec<&str> = p.deleted.iter().map(|(k, _)| k.as_str()).collect();
    t.row(
        "superseded entries deleted",
        if keys.is_empty() {
            "none".to_string()
        } else {
            format!("{} ({}): {}", keys.len(), mb(bytes), keys.join(", "))
        },
    );
    if let Some(w) = &p.warning {
        t.row("**housekeeping**", format!("**{w}**"));
    }
    (t, near)
}
