//! CI front ends. The shims (`dist/*.js` for GitHub, `hooks/*` for
//! Buildkite, the GitLab template) only find the binary and run
//! `nixdelta --ci <name> start|finish`; the binary itself speaks the CI's
//! conventions, one file per CI:
//!
//! * **inputs**: each CI hands over the same options its own way
//!   (`INPUT_*`, `BUILDKITE_PLUGIN_NIXDELTA_*`, `NIXDELTA_INPUT_*` set by the
//!   GitLab template); [`Inputs`] turns them into the command line options
//!   of `start`/`finish`/`run`, so there is one parser and one validation.
//!   A secret key given as content goes to `$NIXDELTA_SECRET_KEY` of this
//!   process only (never argv), masked first.
//! * **output**: log folding, warnings, notices, outputs, state for the
//!   post step, and a Markdown summary ([`Frontend`]).

pub mod buildkite;
pub mod github;
pub mod gitlab;
pub mod inputs;

pub use inputs::{split_lines, Inputs, Source};

use std::ffi::OsString;
use std::fmt::Write as _;
use std::sync::OnceLock;

use nixdelta::error::{Error, Result};

/// `--ci` / `$NIXDELTA_CI`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// GitHub Actions (also act, Gitea/Forgejo runners).
    Github,
    Buildkite,
    Gitlab,
    /// Whichever of the above the environment says (`GITHUB_ACTIONS`,
    /// `BUILDKITE`, `GITLAB_CI`), else none.
    Auto,
    /// Plain command line.
    None,
}

impl Kind {
    fn resolve(self, env: &dyn Fn(&str) -> Option<String>) -> Kind {
        if self != Kind::Auto {
            return self;
        }
        let on = |v: &str| env(v).is_some_and(|s| s == "true");
        if on("GITHUB_ACTIONS") {
            Kind::Github
        } else if on("BUILDKITE") {
            Kind::Buildkite
        } else if on("GITLAB_CI") {
            Kind::Gitlab
        } else {
            Kind::None
        }
    }
}

/// The subcommands a CI runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Start,
    Finish,
    Run,
}

// ------------------------------------------------------------- front end

/// A CI's conventions for what the binary prints and leaves behind.
/// The defaults are the plain command line's.
pub trait Frontend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Which CI this is ([`Kind::None`]: the plain command line).
    fn kind(&self) -> Kind;
    /// The options, read from the CI's environment.
    fn inputs(&self, env: &dyn Fn(&str) -> Option<String>, step: Step) -> Result<Inputs>;
    /// Hides `secret` from the rest of the job's log.
    fn mask(&self, _secret: &str) {}
    /// Starts a folded section of the log.
    fn group_start(&self, _title: &str) {}
    fn group_end(&self) {}
    /// Prefix for a warning line (e.g. GitHub's `::warning::`).
    fn warning_prefix(&self) -> &'static str {
        ""
    }
    fn error_prefix(&self) -> &'static str {
        ""
    }
    /// A cache fault or degraded mode the user should see.
    fn warning(&self, msg: &str) {
        eprintln!("nixdelta: warning: {msg}");
    }
    fn notice(&self, msg: &str) {
        eprintln!("nixdelta: notice: {msg}");
    }
    /// A step output (`cache-hit`, `pushed-paths`, ...).
    fn set_output(&self, _name: &str, _value: &str) {}
    /// Something `finish` reads back in the post step.
    fn save_state(&self, _name: &str, _value: &str) {}
    fn load_state(&self, _name: &str) -> Option<String> {
        None
    }
    /// The Markdown summary of a step.
    fn summary(&self, markdown: &str) {
        let _ = markdown;
    }
    /// Sets `name=value` for the rest of the job. By default as shell
    /// `export` lines appended to `$NIXDELTA_ENV_FILE`, which the Buildkite
    /// hook and the GitLab template source after `start`. False when
    /// there is no way to (a plain command line without that file).
    fn export_env(&self, name: &str, value: &str) -> Result<bool> {
        let Some(file) = std::env::var_os("NIXDELTA_ENV_FILE").filter(|f| !f.is_empty()) else {
            return Ok(false);
        };
        append_line(
            std::path::Path::new(&file),
            &nixdelta::pipeline::read_side::shell_export(name, value),
        )?;
        Ok(true)
    }
}

/// Appends `text` to `file` (an environment file a CI reads back).
pub fn append_line(file: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| Error::Input {
            path: file.to_path_buf(),
            msg: format!("cannot write the job's environment: {e}"),
        })
}

/// The plain command line.
pub struct Plain;

impl Frontend for Plain {
    fn name(&self) -> &'static str {
        "none"
    }
    fn kind(&self) -> Kind {
        Kind::None
    }
    fn inputs(&self, _env: &dyn Fn(&str) -> Option<String>, _step: Step) -> Result<Inputs> {
        Ok(Inputs::default())
    }
}

static FRONTEND: OnceLock<Box<dyn Frontend>> = OnceLock::new();

/// The front end in use ([`Plain`] unless [`init`] chose one).
pub fn frontend() -> &'static dyn Frontend {
    FRONTEND.get().map_or(&Plain, |b| b.as_ref())
}

fn make(kind: Kind) -> Box<dyn Frontend> {
    match kind {
        Kind::Github => Box::new(github::GitHub),
        Kind::Buildkite => Box::new(buildkite::Buildkite),
        Kind::Gitlab => Box::new(gitlab::GitLab),
        Kind::Auto | Kind::None => Box::new(Plain),
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Chooses the front end and, for `step`, returns `argv` with the CI's
/// inputs added as options (before a `--`, after anything given). Called
/// once, early in `main`, while the process has one thread: a secret key
/// given as content is masked and put in `$NIXDELTA_SECRET_KEY`.
pub fn init(kind: Kind, step: Option<Step>, argv: Vec<OsString>) -> Result<Vec<OsString>> {
    let kind = kind.resolve(&env_var);
    let fe = make(kind);
    let Some(step) = step.filter(|_| kind != Kind::None) else {
        let _ = FRONTEND.set(fe);
        return Ok(argv);
    };
    let mut inputs = fe.inputs(&env_var, step)?;
    if let Some(key) = &inputs.secret_key {
        let key = key.expose();
        mask_key(fe.as_ref(), key);
        // Single-threaded here (see above); the key stays in this process.
        std::env::set_var("NIXDELTA_SECRET_KEY", key.as_str());
    }
    if let Some(token) = &inputs.cache_token {
        fe.mask(token.expose().trim());
        std::env::set_var(nixdelta::cache::http::TOKEN_ENV, token.expose().trim());
    }
    if let Some(token) = &inputs.github_token {
        fe.mask(token.expose().trim());
        std::env::set_var("NIXDELTA_GITHUB_TOKEN", token.expose().trim());
    }
    inputs.settle(env_var("NIXDELTA_SECRET_KEY").is_some());
    let _ = FRONTEND.set(fe);
    for n in &inputs.notices {
        frontend().notice(n);
    }
    tracing::debug!("{} inputs: {inputs:?}", frontend().name());
    let split = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    let extra = inputs.args(step, &argv[..split]);
    let mut out = argv;
    let tail = out.split_off(split);
    out.extend(extra);
    out.extend(tail);
    Ok(out)
}

/// Masks a Nix secret key (`name:base64`): the whole value, and the
/// base64 part on its own.
fn mask_key(fe: &dyn Frontend, key: &str) {
    let key = key.trim();
    fe.mask(key);
    if let Some((_, b64)) = key.split_once(':') {
        if !b64.is_empty() {
            fe.mask(b64);
        }
    }
}

/// `%`, CR and LF escaped as GitHub's workflow commands want them.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

// --------------------------------------------------------------- summary

/// Rows of a two-column Markdown table.
#[derive(Default)]
pub struct Table {
    title: String,
    head: (String, String),
    rows: Vec<(String, String)>,
}

impl Table {
    pub fn new(title: &str, head: (&str, &str)) -> Table {
        Table {
            title: title.into(),
            head: (head.0.into(), head.1.into()),
            rows: vec![],
        }
    }

    pub fn row(&mut self, k: impl Into<String>, v: impl Into<String>) -> &mut Self {
        self.rows.push((k.into(), v.into()));
        self
    }

    pub fn markdown(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut s = format!("### {}\n\n", self.title);
        let _ = writeln!(s, "| {} | {} |", cell(&self.head.0), cell(&self.head.1));
        s.push_str("|---|---|\n");
        for (k, v) in &self.rows {
            let _ = writeln!(s, "| {} | {} |", cell(k), cell(v));
        }
        s.push('\n');
        s
    }
}

/// Seconds, as the summaries show them.
pub fn secs(s: f64) -> String {
    format!("{s:.2} s")
}

/// A CI environment for the front ends' unit tests.
#[cfg(test)]
pub(crate) mod test_env {
    use std::collections::HashMap;

    /// Environment variables as a lookup function (empty counts as unset,
    /// as [`super::env_var`] does).
    pub struct Map(pub HashMap<String, String>);

    impl Map {
        pub fn of(pairs: &[(&str, &str)]) -> Map {
            Map(pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect())
        }
        pub fn lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
            |k| self.0.get(k).cloned().filter(|v| !v.trim().is_empty())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_env::Map;
    use super::*;

    #[test]
    fn auto_detects_the_ci() {
        let m = Map::of(&[("BUILDKITE", "true")]);
        assert_eq!(Kind::Auto.resolve(&m.lookup()), Kind::Buildkite);
        let m = Map::of(&[("GITHUB_ACTIONS", "true"), ("GITLAB_CI", "true")]);
        assert_eq!(Kind::Auto.resolve(&m.lookup()), Kind::Github);
        assert_eq!(Kind::Auto.resolve(&Map::of(&[]).lookup()), Kind::None);
        assert_eq!(Kind::Gitlab.resolve(&Map::of(&[]).lookup()), Kind::Gitlab);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let i = Inputs {
            secret_key: Some(nixdelta::secret::Secret::new("k-1:c2VjcmV0".into())),
            ..Default::default()
        };
        let d = format!("{i:?}");
        assert!(!d.contains("c2VjcmV0") && d.contains("redacted"), "{d}");
    }

    #[test]
    fn tables_escape_pipes() {
        let mut t = Table::new("Restore", ("", ""));
        t.row("key", "a|b");
        let md = t.markdown();
        assert!(md.contains("| key | a\\|b |"), "{md}");
    }
}
