//! How a job's front end (the plain CLI, a CI) sees the job while it runs:
//! log sections, warnings, step outputs and the push plan as it is known.
//! The job decides what happens; the observer decides how it looks.

use crate::pipeline::plan::PushPlan;
use crate::pipeline::upload::UploadReport;

pub trait Observer {
    /// Starts a folded section of the log.
    fn begin_group(&self, _title: &str) {}
    fn end_group(&self) {}
    /// A cache fault or degraded mode the user should see.
    fn warning(&self, msg: &str) {
        eprintln!("nixdelta: warning: {msg}");
    }
    /// A progress line.
    fn note(&self, line: &str) {
        eprintln!("nixdelta: {line}");
    }
    /// A step output (`cache-hit`, `pushed-paths`, ...).
    fn output(&self, _name: &str, _value: &str) {}
    /// The push plan, and the upload's report once there is one.
    fn plan(&self, _plan: &PushPlan, _report: Option<&UploadReport>, _store_dir: &str) {}
    /// A line the plain command line prints where the plan would be.
    fn plan_note(&self, line: &str) {
        self.note(line);
    }
}

/// The plain command line with nothing special: notes on stderr.
pub struct Quiet;

impl Observer for Quiet {}

/// Runs `f` inside a log section of `obs`.
pub fn grouped<T>(obs: &dyn Observer, title: &str, f: impl FnOnce() -> T) -> T {
    obs.begin_group(title);
    let r = f();
    obs.end_group();
    r
}
