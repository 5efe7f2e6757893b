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
    let on_target = plan.skipped_count(super::plan::Skip::OnTarget);
    let filtered: usize = plan.skipped.values().map(Vec::len).sum::<usize>() - on_target;
    let mut line = format!(
        "{} paths considered, {on_target} already cached",
        plan.considered
    );
    if filtered > 0 {
        let _ = write!(line, ", {filtered} skipped by filters");
    }
    let _ = write!(line, ", {} uploaded", up.uploaded.len());
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
    if plan.asked > 0 || plan.known > 0 {
        lines.push(format!(
            "{:>7}  existence checks asked of the caches in {:.2} s ({} known without asking: \
             warm manifest, background uploader)",
            plan.asked, plan.asked_secs, plan.known
        ));
    }
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

/// The plan (and the upload's outcome) as JSON, paths in full.
pub fn plan_json(
    plan: &PushPlan,
    report: Option<&UploadReport>,
    store_dir: &str,
) -> serde_json::Value {
    let full = |ps: &[crate::nix::StorePath]| -> Vec<String> {
        ps.iter().map(|p| p.to_absolute(store_dir)).collect()
    };
    let skipped: serde_json::Map<String, serde_json::Value> = plan
        .skipped
        .iter()
        .map(|(why, ps)| {
            let key = serde_json::to_value(why)
                .ok()
                .and_then(|v| v.as_str().map(String::from));
            (key.unwrap_or_default(), serde_json::json!(full(ps)))
        })
        .collect();
    let upload: Vec<crate::nix::StorePath> = plan.upload.iter().map(|i| i.path.clone()).collect();
    let mut v = serde_json::json!({
        "considered": plan.considered,
        "skipped": skipped,
        "pulled_in": full(&plan.pulled_in),
        "upload": full(&upload),
        "upload_nar_bytes": plan.upload_nar_bytes(),
    });
    if let Some(r) = report {
        v["report"] = serde_json::json!({
            "uploaded": full(&r.uploaded),
            "failed": r.failed.iter().map(|(p, e)| serde_json::json!({
                "path": p.to_absolute(store_dir), "error": e.to_string()})).collect::<Vec<_>>(),
            "held_back": full(&r.blocked),
            "nar_bytes": r.nar_bytes,
            "file_bytes": r.file_bytes,
            "seconds": r.seconds,
        });
    }
    v
}
