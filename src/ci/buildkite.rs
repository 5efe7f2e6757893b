//! Buildkite: the plugin's options arrive as `BUILDKITE_PLUGIN_NIXDELTA_<NAME>`
//! (dashes to underscores, upper case; arrays as `_0`, `_1`, ...); log
//! groups are `~~~` lines (`^^^ +++` opens the current one on a warning);
//! the summary becomes an annotation when `buildkite-agent` is on PATH,
//! which also redacts a secret key given through `secret-key-env`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nixdelta::error::Result;

use super::{split_lines, Frontend, Inputs, Source, Step};

pub struct Buildkite;

const PREFIX: &str = "BUILDKITE_PLUGIN_NIXDELTA_";

struct PluginEnv<'a>(&'a dyn Fn(&str) -> Option<String>);

/// `BUILDKITE_PLUGIN_NIXDELTA_KEY_FILES` for `key-files`.
pub fn option_var(name: &str) -> String {
    format!("{PREFIX}{}", name.replace('-', "_").to_uppercase())
}

impl Source for PluginEnv<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(&option_var(name)).map(|v| v.trim().to_string())
    }

    /// An array (`_0`, `_1`, ...) or a string of lines.
    fn list(&self, name: &str) -> Vec<String> {
        let base = option_var(name);
        let mut out = Vec::new();
        for i in 0.. {
            match (self.0)(&format!("{base}_{i}")) {
                Some(v) => out.push(v.trim().to_string()),
                None => break,
            }
        }
        if out.is_empty() {
            if let Some(v) = (self.0)(&base) {
                out = split_lines(&v);
            }
        }
        out
    }
}

/// `owner/repo` of a git remote in any of its spellings.
fn repo_slug(url: &str) -> String {
    let url = url.trim().trim_end_matches('/').trim_end_matches(".git");
    let parts: Vec<&str> = url.rsplit(['/', ':']).take(2).collect();
    parts.iter().rev().copied().collect::<Vec<_>>().join("/")
}

/// A pull request build whose head repository is not the pipeline's.
pub fn fork_pr(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let is_pr = env("BUILDKITE_PULL_REQUEST").is_some_and(|v| v != "false");
    match (env("BUILDKITE_PULL_REQUEST_REPO"), env("BUILDKITE_REPO")) {
        (Some(head), Some(base)) if is_pr => repo_slug(&head) != repo_slug(&base),
        _ => false,
    }
}

fn agent() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("buildkite-agent"))
        .find(|p| p.is_file())
}

/// Runs `buildkite-agent ARGS` with `input` on stdin; false if it failed.
fn run_agent(args: &[&str], input: &str) -> bool {
    let Some(agent) = agent() else { return false };
    let child = Command::new(agent)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn();
    let Ok(mut child) = child else { return false };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    child.wait().is_ok_and(|s| s.success())
}

/// `buildkite-agent artifact upload FILE` run in `dir` (so the artifact's
/// path is the file's name); the agent's complaint when it fails.
pub fn artifact_upload(dir: &std::path::Path, file: &str) -> std::result::Result<(), String> {
    let agent = agent().ok_or("no buildkite-agent on PATH")?;
    let out = Command::new(agent)
        .args(["artifact", "upload", file])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("buildkite-agent cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "buildkite-agent artifact upload failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Frontend for Buildkite {
    fn name(&self) -> &'static str {
        "buildkite"
    }
    fn kind(&self) -> super::Kind {
        super::Kind::Buildkite
    }

    fn inputs(&self, env: &dyn Fn(&str) -> Option<String>, step: Step) -> Result<Inputs> {
        let src = PluginEnv(env);
        let mut i = Inputs::read(&src)?;
        // Secrets come from the environment (agent hooks, secrets plugins),
        // never from pipeline.yml: `secret-key-env` names the variable.
        if let Some(var) = src.get("secret-key-env") {
            if var != "NIXDELTA_SECRET_KEY" {
                i.secret_key = env(&var).map(nixdelta::secret::Secret::new);
            }
        }
        i.fork_pr = fork_pr(env);
        if step != Step::Run {
            if let Some(job) = env("BUILDKITE_JOB_ID") {
                i.state_dir = Some(std::env::temp_dir().join(format!("nixdelta-bk-{job}")));
            }
        }
        Ok(i)
    }

    fn mask(&self, secret: &str) {
        // Agents since v3.67 redact values added at run time.
        run_agent(&["redactor", "add"], secret);
    }

    fn group_start(&self, title: &str) {
        eprintln!("~~~ {title}");
    }

    fn warning(&self, msg: &str) {
        eprintln!("nixdelta: warning: {msg}");
        eprintln!("^^^ +++");
    }

    fn set_output(&self, name: &str, value: &str) {
        // Later steps read these with `buildkite-agent meta-data get`.
        if std::env::var_os("BUILDKITE_JOB_ID").is_some() {
            run_agent(&["meta-data", "set", &format!("nixdelta-{name}")], value);
        }
    }

    fn summary(&self, markdown: &str) {
        eprint!("{markdown}");
        let annotated = run_agent(
            &[
                "annotate",
                "--style",
                "info",
                "--context",
                "nixdelta",
                "--append",
            ],
            markdown,
        );
        if !annotated && agent().is_some() {
            eprintln!("nixdelta: warning: buildkite-agent annotate failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_env::Map;
    use super::*;

    #[test]
    fn reads_plugin_options() {
        let m = Map::of(&[
            ("BUILDKITE_PLUGIN_NIXDELTA_BINARY_CACHE", "file:///c"),
            ("BUILDKITE_PLUGIN_NIXDELTA_ARCHIVE", "dir:/var/cache/nix"),
            ("BUILDKITE_PLUGIN_NIXDELTA_EXCLUDE_0", "-source$"),
            ("BUILDKITE_PLUGIN_NIXDELTA_EXCLUDE_1", "\\.iso$"),
            ("BUILDKITE_PLUGIN_NIXDELTA_KEY_FILES", "flake.lock"),
            ("BUILDKITE_PLUGIN_NIXDELTA_STRICT", "true"),
            ("BUILDKITE_PLUGIN_NIXDELTA_SECRET_KEY_ENV", "MY_KEY"),
            ("MY_KEY", "k-1:c2VjcmV0"),
            ("BUILDKITE_JOB_ID", "0190-abc"),
        ]);
        let i = Buildkite.inputs(&m.lookup(), Step::Start).unwrap();
        assert_eq!(i.binary_cache.as_deref(), Some("file:///c"));
        assert_eq!(i.archive.as_deref(), Some("dir:/var/cache/nix"));
        assert_eq!(i.exclude, ["-source$", "\\.iso$"]);
        assert_eq!(i.key_files, ["flake.lock"]);
        assert!(i.strict);
        assert_eq!(
            i.secret_key.as_ref().map(|k| k.expose().as_str()),
            Some("k-1:c2VjcmV0")
        );
        assert!(i.state_dir.unwrap().ends_with("nixdelta-bk-0190-abc"));
    }

    #[test]
    fn fork_pull_requests() {
        let m = Map::of(&[
            ("BUILDKITE_PULL_REQUEST", "12"),
            (
                "BUILDKITE_PULL_REQUEST_REPO",
                "https://github.com/someone/r.git",
            ),
            ("BUILDKITE_REPO", "git@github.com:o/r.git"),
        ]);
        assert!(fork_pr(&m.lookup()));
        let same = Map::of(&[
            ("BUILDKITE_PULL_REQUEST", "12"),
            ("BUILDKITE_PULL_REQUEST_REPO", "https://github.com/o/r"),
            ("BUILDKITE_REPO", "git@github.com:o/r.git"),
        ]);
        assert!(!fork_pr(&same.lookup()));
        let branch = Map::of(&[
            ("BUILDKITE_PULL_REQUEST", "false"),
            (
                "BUILDKITE_PULL_REQUEST_REPO",
                "https://github.com/someone/r.git",
            ),
            ("BUILDKITE_REPO", "git@github.com:o/r.git"),
        ]);
        assert!(!fork_pr(&branch.lookup()));
    }
}
