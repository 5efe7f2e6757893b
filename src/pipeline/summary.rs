//! Human-readable summaries of a push plan and an upload.

use std::fmt::Write;

use super::plan::PushPlan;
use super::upload::UploadReport;

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The one-line push summary.
pub fn push_line(plan: &PushPlan, up: &UploadReport) -> String {
    let rate = if up.seconds > 0.0 {
        up.nar_bytes as f64 / 1e6 / up.seconds
    } else {
        0.0
    };
    let mut line = format!(
        "{} paths considered, {} already cached, {} uploaded",
        plan.considered,
        plan.considered + plan.pulled_in.len() - plan.upload.len(),
        up.uploaded.len()
    );
    if !up.failed.is_empty() || !up.blocked.is_empty() {
        let _ = write!(
            line,
            ", {} failed, {} held back",
            up.failed.len(),
            up.blocked.len()
        );
    }
    let _ = write!(
        line,
        "; NAR {} -> {} zstd in {:.2} s ({rate:.1} MB/s)",
        mb(up.nar_bytes),
        mb(up.file_bytes),
        up.seconds
    );
    line
}

/// One line per reason, for `--dry-run` and the finish summary.
pub fn plan_lines(plan: &PushPlan) -> Vec<String> {
    let mut lines = vec![format!("{:>7}  new paths considered", plan.considered)];
    for (why, paths) in &plan.skipped {
        lines.push(format!("{:>7}  skipped: {}", paths.len(), why.describe()));
    }
    if !plan.pulled_in.is_empty() {
        lines.push(format!(
            "{:>7}  pulled in: referenced by an uploaded path",
            plan.pulled_in.len()
        ));
    }
    lines.push(format!(
        "{:>7}  to upload ({} of NAR)",
        plan.upload.len(),
        mb(plan.upload_nar_bytes())
    ));
    lines
}
