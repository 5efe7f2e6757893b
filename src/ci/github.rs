//! GitHub Actions (and act, Gitea/Forgejo runners): inputs from
//! `INPUT_<NAME>` (the name upper-cased, dashes kept, as the runner sets
//! them), workflow commands (`::add-mask::`, `::group::`, `::warning::`,
//! `::notice::`) on stderr, `$GITHUB_OUTPUT`, `$GITHUB_STATE` (read back
//! as `STATE_<name>` in the post step), `$GITHUB_STEP_SUMMARY`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use nixdelta::error::Result;

use super::{escape_data, Frontend, Inputs, Source, Step};

pub struct GitHub;

/// State name under which `start` leaves the state directory.
pub const STATE_DIR: &str = "nixdelta_state_dir";

struct InputEnv<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Source for InputEnv<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(&input_var(name)).map(|v| v.trim().to_string())
    }
}

/// `INPUT_<NAME>` as the runner names it: spaces to `_`, upper case.
pub fn input_var(name: &str) -> String {
    format!("INPUT_{}", name.replace(' ', "_").to_uppercase())
}

/// A `pull_request` event whose head is another repository.
pub fn fork_pr(env: &dyn Fn(&str) -> Option<String>) -> bool {
    if env("GITHUB_EVENT_NAME").as_deref() != Some("pull_request") {
        return false;
    }
    let Some(path) = env("GITHUB_EVENT_PATH") else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return false;
    };
    let Ok(ev) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let pr = &ev["pull_request"];
    if pr["head"]["repo"]["fork"].as_bool() == Some(true) {
        return true;
    }
    match (
        pr["head"]["repo"]["full_name"].as_str(),
        pr["base"]["repo"]["full_name"].as_str(),
    ) {
        (Some(h), Some(b)) => h != b,
        _ => false,
    }
}

impl Frontend for GitHub {
    fn name(&self) -> &'static str {
        "github"
    }
    fn kind(&self) -> super::Kind {
        super::Kind::Github
    }

    fn inputs(&self, env: &dyn Fn(&str) -> Option<String>, step: Step) -> Result<Inputs> {
        let src = InputEnv(env);
        // The Actions cache unless the inputs or nixdelta.yml say otherwise.
        let mut i = Inputs::read_with(&src, &[("archive", "github")])?;
        i.secret_key = env(&input_var("secret-key")).map(nixdelta::secret::Secret::new);
        i.cache_token = env(&input_var("cache-token")).map(nixdelta::secret::Secret::new);
        i.github_token = env(&input_var("github-token")).map(nixdelta::secret::Secret::new);
        i.fork_pr = fork_pr(env);
        if step == Step::Finish {
            i.state_dir = env(&format!("STATE_{STATE_DIR}")).map(PathBuf::from);
        }
        Ok(i)
    }

    fn mask(&self, secret: &str) {
        for line in secret.lines().map(str::trim).filter(|l| !l.is_empty()) {
            eprintln!("::add-mask::{}", escape_data(line));
        }
    }

    fn group_start(&self, title: &str) {
        eprintln!("::group::{}", escape_data(title));
    }

    fn group_end(&self) {
        eprintln!("::endgroup::");
    }

    fn warning_prefix(&self) -> &'static str {
        "::warning title=nixdelta::"
    }

    fn error_prefix(&self) -> &'static str {
        "::error title=nixdelta::"
    }

    fn warning(&self, msg: &str) {
        eprintln!("::warning title=nixdelta::{}", escape_data(msg));
    }

    fn notice(&self, msg: &str) {
        eprintln!("::notice title=nixdelta::{}", escape_data(msg));
    }

    fn set_output(&self, name: &str, value: &str) {
        append_kv("GITHUB_OUTPUT", name, value);
    }

    fn save_state(&self, name: &str, value: &str) {
        append_kv("GITHUB_STATE", name, value);
    }

    fn load_state(&self, name: &str) -> Option<String> {
        std::env::var(format!("STATE_{name}"))
            .ok()
            .filter(|v| !v.is_empty())
    }

    /// Later steps get it through `$GITHUB_ENV`.
    fn export_env(&self, name: &str, value: &str) -> Result<bool> {
        let Some(file) = std::env::var_os("GITHUB_ENV").filter(|f| !f.is_empty()) else {
            return Ok(false);
        };
        let entry = nixdelta::pipeline::read_side::github_env_entry(name, value);
        super::append_line(Path::new(&file), &entry)?;
        Ok(true)
    }

    fn summary(&self, markdown: &str) {
        match std::env::var_os("GITHUB_STEP_SUMMARY") {
            Some(f) => append(Path::new(&f), markdown),
            None => eprint!("{markdown}"),
        }
    }
}

/// `name=value` (or a heredoc for multi-line values) appended to the
/// file named by `$var`; without it, the old `::set-output` command.
fn append_kv(var: &str, name: &str, value: &str) {
    let Some(file) = std::env::var_os(var) else {
        if var == "GITHUB_OUTPUT" {
            eprintln!("::set-output name={name}::{}", escape_data(value));
        }
        return;
    };
    let text = if value.contains('\n') {
        let mut delim = String::from("nixdelta_EOF");
        while value.contains(&delim) {
            delim.push('_');
        }
        format!("{name}<<{delim}\n{value}\n{delim}\n")
    } else {
        format!("{name}={value}\n")
    };
    append(Path::new(&file), &text);
}

fn append(path: &Path, text: &str) {
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = r {
        eprintln!(
            "::warning title=nixdelta::cannot write {}: {}",
            path.display(),
            escape_data(&e.to_string())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_env::Map;
    use super::*;

    #[test]
    fn reads_inputs_as_the_runner_names_them() {
        let m = Map::of(&[
            ("INPUT_BINARY-CACHE", "file:///c"),
            ("INPUT_SECRET-KEY", "k-1:c2VjcmV0"),
            ("INPUT_ARCHIVE", "github"),
            ("INPUT_KEY-FILES", "flake.lock\nnix/*.nix"),
            ("INPUT_EXCLUDE", "-source$\n\\.iso$"),
            ("INPUT_INCLUDE-DRV", "false"),
            ("INPUT_STRICT", "true"),
            ("INPUT_JOBS", ""),
            ("STATE_nixdelta_state_dir", "/tmp/st"),
        ]);
        let i = GitHub.inputs(&m.lookup(), Step::Finish).unwrap();
        assert_eq!(i.binary_cache.as_deref(), Some("file:///c"));
        assert_eq!(
            i.secret_key.as_ref().map(|k| k.expose().as_str()),
            Some("k-1:c2VjcmV0")
        );
        assert_eq!(i.key_files, ["flake.lock", "nix/*.nix"]);
        assert_eq!(i.exclude, ["-source$", "\\.iso$"]);
        assert!(i.strict && !i.include_drv && i.jobs.is_none());
        assert_eq!(i.state_dir, Some(PathBuf::from("/tmp/st")));
        let i = GitHub.inputs(&m.lookup(), Step::Start).unwrap();
        assert_eq!(i.state_dir, None);
        let bad = Map::of(&[("INPUT_STRICT", "sure")]);
        assert!(GitHub.inputs(&bad.lookup(), Step::Start).is_err());
        let none = Map::of(&[("INPUT_ARCHIVE", "none")]);
        assert!(GitHub
            .inputs(&none.lookup(), Step::Start)
            .unwrap()
            .archive
            .is_none());
    }

    /// action.yml's inputs default to empty; the binary's defaults apply
    /// (under nixdelta.yml): the Actions cache, watch on.
    #[test]
    fn defaults_live_in_the_binary() {
        let i = GitHub.inputs(&Map::of(&[]).lookup(), Step::Start).unwrap();
        assert_eq!(i.archive.as_deref(), Some("github"));
        assert!(i.watch && !i.strict);
        let none = Map::of(&[("INPUT_ARCHIVE", "none")]);
        let i = GitHub.inputs(&none.lookup(), Step::Start).unwrap();
        assert_eq!(i.archive, None);
        let text = include_str!("../../action.yml");
        for d in ["default: github", "default: 'false'", "default: 'true'"] {
            assert!(
                !text.contains(d),
                "action.yml has {d}: it would hide nixdelta.yml"
            );
        }
    }

    #[test]
    fn fork_pull_requests() {
        let dir = tempfile::tempdir().unwrap();
        let ev = dir.path().join("event.json");
        let write = |head: &str, fork: bool| {
            std::fs::write(
                &ev,
                serde_json::json!({"pull_request": {
                    "head": {"repo": {"full_name": head, "fork": fork}},
                    "base": {"repo": {"full_name": "o/r"}}}})
                .to_string(),
            )
            .unwrap();
        };
        let evs = ev.to_string_lossy().into_owned();
        let m = Map::of(&[
            ("GITHUB_EVENT_NAME", "pull_request"),
            ("GITHUB_EVENT_PATH", &evs),
        ]);
        write("o/r", false);
        assert!(!fork_pr(&m.lookup()));
        write("someone/r", true);
        assert!(fork_pr(&m.lookup()));
        let push = Map::of(&[("GITHUB_EVENT_NAME", "push"), ("GITHUB_EVENT_PATH", &evs)]);
        assert!(!fork_pr(&push.lookup()));
    }
}
