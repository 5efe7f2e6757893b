//! What `start` keeps for `finish` besides the snapshot: the archive facts,
//! in the state file's `extra.archive` (the state file is versioned by
//! [`crate::pipeline::snapshot::STATE_VERSION`]; these fields only grow).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::archive::Outcome;
use crate::pipeline::snapshot::State;

/// How the archive restore of `start` ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restored {
    Hit,
    Partial,
    Miss,
    /// The restore failed (a warning unless strict).
    #[default]
    Error,
}

impl From<Outcome> for Restored {
    fn from(o: Outcome) -> Restored {
        match o {
            Outcome::Hit => Restored::Hit,
            Outcome::Partial => Restored::Partial,
            Outcome::Miss => Restored::Miss,
        }
    }
}

/// What `start` learnt about the archive.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ArchiveFacts {
    /// The archive backend spec.
    pub backend: String,
    /// The cache key (absent when it could not be computed).
    pub key: Option<String>,
    pub matched_key: Option<String>,
    pub outcome: Restored,
    pub read_only: bool,
    /// Paths the restore added, and their NAR bytes.
    pub restored_paths: usize,
    pub restored_nar_bytes: u64,
    /// The snapshot before the restore, when it added paths: the diff from
    /// it is what an archive saved by `finish` holds (restored + new).
    pub base: Option<Box<State>>,
    /// `--key-from-eval`: the evaluated key (finish saves under it too),
    /// and the seconds evaluation took.
    #[serde(default)]
    pub eval_key: Option<String>,
    #[serde(default)]
    pub eval_secs: f64,
}

const FACTS: &str = "archive";

impl ArchiveFacts {
    /// The facts `start` recorded, if it had an archive.
    pub fn of(st: &State) -> Option<ArchiveFacts> {
        serde_json::from_value(st.extra.get(FACTS)?.clone()).ok()
    }

    pub fn record(&self, st: &mut State) {
        if let Ok(v) = serde_json::to_value(self) {
            st.extra.insert(FACTS.into(), v);
        }
    }
}

/// The state directory: the one given, else the one the CI front end
/// remembered for this job, else the default.
pub fn state_dir(given: Option<PathBuf>, remembered: Option<String>) -> PathBuf {
    given
        .or_else(|| remembered.map(PathBuf::from))
        .unwrap_or_else(crate::pipeline::snapshot::default_state_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_keep_their_json_names() {
        let f = ArchiveFacts {
            backend: "dir:/x".into(),
            outcome: Restored::Partial,
            ..Default::default()
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["outcome"], "partial");
        let back: ArchiveFacts = serde_json::from_value(v).unwrap();
        assert_eq!(back.outcome, Restored::Partial);
        let old: ArchiveFacts =
            serde_json::from_str(r#"{"backend":"github","outcome":"error","read_only":false,"restored_paths":0,"restored_nar_bytes":0}"#)
                .unwrap();
        assert_eq!(old.outcome, Restored::Error);
    }
}
