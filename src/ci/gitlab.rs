//! GitLab CI: the include template (`templates/nixdelta.gitlab-ci.yml`)
//! turns its `spec: inputs:` into job variables `NIXDELTA_INPUT_<NAME>`
//! (dashes to underscores, upper case), read here. Log sections are
//! collapsible (`section_start`/`section_end`). The secret key is a masked
//! CI/CD variable `NIXDELTA_SECRET_KEY` (GitLab masks it) or a File
//! variable given as `secret-key-file`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use nixdelta::error::Result;

use super::{Frontend, Inputs, Source, Step};

pub struct GitLab;

struct InputEnv<'a>(&'a dyn Fn(&str) -> Option<String>);

/// `NIXDELTA_INPUT_BINARY_CACHE` for `binary-cache`.
pub fn input_var(name: &str) -> String {
    format!("NIXDELTA_INPUT_{}", name.replace('-', "_").to_uppercase())
}

impl Source for InputEnv<'_> {
    /// An input at the template's default counts as unset: GitLab sets
    /// every input, so a default would hide nixdelta.yml (the default is
    /// applied under the file instead, see [`GitLab::inputs`]).
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(&input_var(name))
            .map(|v| v.trim().to_string())
            .filter(|v| template_defaults().get(name) != Some(v))
    }
}

/// The template's `spec: inputs: NAME: default:` values, non-empty ones,
/// read from the template itself so that the two never disagree.
fn template_defaults() -> &'static HashMap<String, String> {
    static DEFAULTS: OnceLock<HashMap<String, String>> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        let text = include_str!("../../templates/nixdelta.gitlab-ci.yml");
        let Some(doc) = serde_norway::Deserializer::from_str(text).next() else {
            return HashMap::new();
        };
        let Ok(spec) = <serde_norway::Value as serde::Deserialize>::deserialize(doc) else {
            return HashMap::new();
        };
        let Some(inputs) = spec["spec"]["inputs"].as_mapping() else {
            return HashMap::new();
        };
        inputs
            .iter()
            .filter_map(|(k, v)| {
                let d = match &v["default"] {
                    serde_norway::Value::String(s) => s.clone(),
                    serde_norway::Value::Bool(b) => b.to_string(),
                    serde_norway::Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                Some((k.as_str()?.to_string(), d)).filter(|(_, d)| !d.is_empty())
            })
            .collect()
    })
}

/// A merge request pipeline whose source project is not the target.
pub fn fork_mr(env: &dyn Fn(&str) -> Option<String>) -> bool {
    match (
        env("CI_MERGE_REQUEST_SOURCE_PROJECT_ID"),
        env("CI_MERGE_REQUEST_PROJECT_ID"),
    ) {
        (Some(src), Some(dst)) => src != dst,
        _ => false,
    }
}

static SECTION: AtomicU32 = AtomicU32::new(0);
static OPEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Frontend for GitLab {
    fn name(&self) -> &'static str {
        "gitlab"
    }
    fn kind(&self) -> super::Kind {
        super::Kind::Gitlab
    }

    fn inputs(&self, env: &dyn Fn(&str) -> Option<String>, step: Step) -> Result<Inputs> {
        // The template's defaults, under nixdelta.yml.
        let defaults: Vec<(&str, &str)> = template_defaults()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut i = Inputs::read_with(&InputEnv(env), &defaults)?;
        i.fork_pr = fork_mr(env);
        if step != Step::Run {
            if let Some(job) = env("CI_JOB_ID") {
                i.state_dir = Some(std::env::temp_dir().join(format!("nixdelta-gl-{job}")));
            }
        }
        Ok(i)
    }

    fn group_start(&self, title: &str) {
        // A stable name from the title (`nixdelta_restore_the_store_archive`),
        // numbered so that two sections never share one.
        let n = SECTION.fetch_add(1, Ordering::Relaxed);
        let slug: String = title
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let slug = slug
            .split('_')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join("_");
        let name = if n == 0 { slug } else { format!("{slug}_{n}") };
        eprintln!(
            "\x1b[0Ksection_start:{}:{name}[collapsed=true]\r\x1b[0K{title}",
            now()
        );
        OPEN.lock().unwrap_or_else(|e| e.into_inner()).push(name);
    }

    fn group_end(&self) {
        let name = OPEN.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(name) = name {
            eprintln!("\x1b[0Ksection_end:{}:{name}\r\x1b[0K", now());
        }
    }

    fn warning(&self, msg: &str) {
        // Yellow, as the runner prints its own warnings.
        eprintln!("\x1b[0;33mnixdelta: warning: {msg}\x1b[0m");
    }

    fn summary(&self, markdown: &str) {
        eprint!("{markdown}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_env::Map;
    use super::*;

    #[test]
    fn reads_template_variables() {
        let m = Map::of(&[
            ("NIXDELTA_INPUT_BINARY_CACHE", "file:///c"),
            ("NIXDELTA_INPUT_ARCHIVE", "dir:.nixdelta-archive"),
            ("NIXDELTA_INPUT_EXCLUDE", "a\nb"),
            ("NIXDELTA_INPUT_INCLUDE_DRV", "false"),
            ("NIXDELTA_INPUT_MAX_ARCHIVE_SIZE", "2G"),
            ("CI_JOB_ID", "77"),
        ]);
        let i = GitLab.inputs(&m.lookup(), Step::Finish).unwrap();
        assert_eq!(i.binary_cache.as_deref(), Some("file:///c"));
        assert_eq!(i.archive.as_deref(), Some("dir:.nixdelta-archive"));
        assert_eq!(i.exclude, ["a", "b"]);
        assert_eq!(i.max_archive_size.as_deref(), Some("2G"));
        assert!(i.state_dir.unwrap().ends_with("nixdelta-gl-77"));
        assert!(!i.fork_pr);
        let fork = Map::of(&[
            ("CI_MERGE_REQUEST_SOURCE_PROJECT_ID", "9"),
            ("CI_MERGE_REQUEST_PROJECT_ID", "1"),
        ]);
        assert!(fork_mr(&fork.lookup()));
    }

    #[test]
    fn inputs_at_the_template_default_count_as_unset() {
        let d = template_defaults();
        assert_eq!(d["archive"], "dir:.nixdelta-archive");
        assert_eq!(d["strict"], "false");
        assert_eq!(d["watch"], "true");
        assert!(!d.contains_key("binary-cache"));
        let m = Map::of(&[
            ("NIXDELTA_INPUT_ARCHIVE", "dir:.nixdelta-archive"),
            ("NIXDELTA_INPUT_STRICT", "true"),
            ("NIXDELTA_INPUT_WATCH", "true"),
        ]);
        let src = InputEnv(&m.lookup());
        assert_eq!(src.get("archive"), None);
        assert_eq!(src.get("watch"), None);
        assert_eq!(src.get("strict").as_deref(), Some("true"));
        // Below the file, the defaults still apply.
        let i = GitLab.inputs(&m.lookup(), Step::Start).unwrap();
        assert_eq!(i.archive.as_deref(), Some("dir:.nixdelta-archive"));
        assert!(i.watch && i.strict);
    }
}
