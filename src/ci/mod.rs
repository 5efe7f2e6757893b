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

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

use nixdelta::error::{Error, Result};
use nixdelta::secret::Secret;

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

/// The options every front end offers (kebab-case names in each CI's
/// configuration: `binary-cache`, `secret-key`, `archive`, ...).
/// `Debug` shows no secret: the key is a [`Secret`].
#[derive(Debug, Default)]
pub struct Inputs {
    pub binary_cache: Option<String>,
    /// Key content (GitHub's `secret-key`, Buildkite's `secret-key-env`).
    pub secret_key: Option<Secret<String>>,
    pub secret_key_file: Option<String>,
    pub archive: Option<String>,
    pub key_files: Vec<String>,
    pub restore_prefixes: Vec<String>,
    pub exclude: Vec<String>,
    pub include_drv: bool,
    pub upstream: Option<String>,
    pub strict: bool,
    pub max_archive_size: Option<String>,
    pub jobs: Option<String>,
    pub read_only: bool,
    /// Where start leaves its state for finish (per job).
    pub state_dir: Option<PathBuf>,
    /// A pull request from a fork: no secrets, so restore only.
    pub fork_pr: bool,
    /// Said once the options are settled (e.g. why nothing is pushed).
    pub notices: Vec<String>,
}

/// How a CI hands over one named option.
pub trait Source {
    /// A single value; `None` when unset or empty.
    fn get(&self, name: &str) -> Option<String>;
    /// A list: by default one value split on new lines.
    fn list(&self, name: &str) -> Vec<String> {
        self.get(name).map(|v| split_lines(&v)).unwrap_or_default()
    }
}

/// Non-empty trimmed lines.
pub fn split_lines(v: &str) -> Vec<String> {
    v.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Lines, each also split on commas and blanks (for file names and key
/// prefixes, which have neither).
pub fn split_words(items: Vec<String>) -> Vec<String> {
    items
        .iter()
        .flat_map(|l| l.split([',', ' ', '\t']))
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// `true`/`false` as YAML and the CIs spell them.
pub fn parse_bool(name: &str, v: Option<String>) -> Result<bool> {
    let Some(v) = v else { return Ok(false) };
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" | "" => Ok(false),
        other => Err(Error::Usage(format!(
            "input {name}: expected true or false, got {other:?}"
        ))),
    }
}

impl Inputs {
    /// The options common to every CI, read from `src`. The secret key
    /// content, if any, is the caller's (it differs per CI).
    pub fn read(src: &dyn Source) -> Result<Inputs> {
        let archive = src.get("archive").filter(|a| a != "none");
        Ok(Inputs {
            binary_cache: src.get("binary-cache"),
            secret_key: None,
            secret_key_file: src.get("secret-key-file"),
            archive,
            key_files: split_words(src.list("key-files")),
            restore_prefixes: split_words(src.list("restore-prefixes")),
            exclude: src.list("exclude"),
            include_drv: parse_bool("include-drv", src.get("include-drv"))?,
            upstream: src.get("upstream"),
            strict: parse_bool("strict", src.get("strict"))?,
            max_archive_size: src.get("max-archive-size"),
            jobs: src.get("jobs"),
            read_only: parse_bool("read-only", src.get("read-only"))?,
            state_dir: None,
            fork_pr: false,
            notices: vec![],
        })
    }

    /// Settles what cannot be done: with no signing key anywhere, nothing
    /// is pushed (said as a notice; `strict` keeps the option so that the
    /// missing key is an error), and a fork's pull request restores only.
    pub fn settle(&mut self, env_has_key: bool) {
        let has_key = self.secret_key.is_some() || self.secret_key_file.is_some() || env_has_key;
        if has_key {
            return;
        }
        if self.fork_pr {
            self.read_only = true;
            if self.archive.is_some() {
                self.notices.push(
                    "pull request from a fork: the store archive is restored read-only".into(),
                );
            }
        }
        if self.binary_cache.is_some() && !self.strict {
            self.binary_cache = None;
            self.notices.push(if self.fork_pr {
                "pull request from a fork has no secrets: nothing is pushed to the binary cache"
                    .into()
            } else {
                "no signing key (secret-key, secret-key-file or $NIXDELTA_SECRET_KEY): nothing is pushed to the binary cache".into()
            });
        }
    }

    /// Command line options for `step`, leaving out those `given` already.
    pub fn args(&self, step: Step, given: &[OsString]) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        let has = |flag: &str| {
            given.iter().any(|a| {
                a.to_str()
                    .is_some_and(|s| s == flag || s.starts_with(&format!("{flag}=")))
            })
        };
        let one = |out: &mut Vec<OsString>, flag: &str, v: Option<&str>| {
            if let Some(v) = v {
                if !has(flag) {
                    // One argument: a value may start with `-`.
                    out.push(format!("{flag}={v}").into());
                }
            }
        };
        let many = |out: &mut Vec<OsString>, flag: &str, vs: &[String]| {
            if !has(flag) {
                for v in vs {
                    out.push(format!("{flag}={v}").into());
                }
            }
        };
        let switch = |out: &mut Vec<OsString>, flag: &str, on: bool| {
            if on && !has(flag) {
                out.push(flag.into());
            }
        };
        // Archive options: every step.
        one(&mut out, "--archive", self.archive.as_deref());
        many(&mut out, "--key-file", &self.key_files);
        many(&mut out, "--restore-prefix", &self.restore_prefixes);
        one(
            &mut out,
            "--max-archive-size",
            self.max_archive_size.as_deref(),
        );
        switch(&mut out, "--read-only", self.read_only);
        switch(&mut out, "--strict", self.strict);
        if step != Step::Run {
            let dir = self
                .state_dir
                .as_ref()
                .map(|d| d.to_string_lossy().into_owned());
            one(&mut out, "--state-dir", dir.as_deref());
        }
        if step == Step::Start {
            return out;
        }
        one(&mut out, "--to", self.binary_cache.as_deref());
        one(
            &mut out,
            "--secret-key-file",
            self.secret_key_file.as_deref(),
        );
        many(&mut out, "--exclude", &self.exclude);
        switch(&mut out, "--include-drv", self.include_drv);
        one(&mut out, "--upstream", self.upstream.as_deref());
        one(&mut out, "--jobs", self.jobs.as_deref());
        out
    }
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

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

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
    fn inputs_become_options_per_step() {
        let mut i = Inputs {
            binary_cache: Some("file:///c".into()),
            archive: Some("dir:/a".into()),
            key_files: vec!["flake.lock".into(), "x/*.nix".into()],
            exclude: vec!["-source$".into()],
            strict: true,
            include_drv: true,
            state_dir: Some("/tmp/s".into()),
            ..Default::default()
        };
        let start = strs(&i.args(Step::Start, &[]));
        assert_eq!(
            start,
            [
                "--archive=dir:/a",
                "--key-file=flake.lock",
                "--key-file=x/*.nix",
                "--strict",
                "--state-dir=/tmp/s"
            ]
        );
        let finish = strs(&i.args(Step::Finish, &["--to=file:///mine".into()]));
        assert!(
            !finish.iter().any(|a| a.starts_with("--to")),
            "given: {finish:?}"
        );
        assert!(finish.contains(&"--include-drv".to_string()));
        assert!(finish.contains(&"--exclude=-source$".to_string()));
        i.state_dir = None;
        let run = strs(&i.args(Step::Run, &[]));
        assert!(run.contains(&"--to=file:///c".to_string()));
        assert!(!run.iter().any(|a| a.starts_with("--state-dir")));
    }

    #[test]
    fn no_key_means_no_push_and_forks_restore_only() {
        let mut i = Inputs {
            binary_cache: Some("file:///c".into()),
            archive: Some("github".into()),
            fork_pr: true,
            ..Default::default()
        };
        i.settle(false);
        assert!(i.binary_cache.is_none());
        assert!(i.read_only);
        assert_eq!(i.notices.len(), 2, "{:?}", i.notices);
        let mut j = Inputs {
            binary_cache: Some("file:///c".into()),
            fork_pr: true,
            ..Default::default()
        };
        j.settle(true);
        assert!(j.binary_cache.is_some() && !j.read_only);
        let mut k = Inputs {
            binary_cache: Some("file:///c".into()),
            strict: true,
            ..Default::default()
        };
        k.settle(false);
        assert!(
            k.binary_cache.is_some(),
            "strict: the missing key is an error later"
        );
    }

    #[test]
    fn booleans_and_lists() {
        assert!(parse_bool("x", Some("True".into())).unwrap());
        assert!(!parse_bool("x", None).unwrap());
        assert!(parse_bool("x", Some("maybe".into())).is_err());
        assert_eq!(
            split_words(vec!["a.lock, b.lock".into(), "c".into()]),
            ["a.lock", "b.lock", "c"]
        );
        assert_eq!(split_lines(" a \n\n b{1,2}\n"), ["a", "b{1,2}"]);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let i = Inputs {
            secret_key: Some(Secret::new("k-1:c2VjcmV0".into())),
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
