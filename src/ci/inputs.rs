//! The options every front end offers, read from the CI's own way of
//! handing them over, and turned into command line options of
//! `start`/`finish`/`run` (one parser, one validation).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use nixdelta::error::{Error, Result};
use nixdelta::secret::Secret;

use super::Step;

/// The options every front end offers (kebab-case names in each CI's
/// configuration: `binary-cache`, `secret-key`, `archive`, ...).
/// `Debug` shows no secret: the key is a [`Secret`].
#[derive(Debug, Default)]
pub struct Inputs {
    /// The store, as `--store` (a directory or a Nix store URL).
    pub store: Option<String>,
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
    /// The read side: the cache's public key, the URL Nix reads it from,
    /// other caches to read, and whether to configure Nix at all.
    pub public_key: Option<String>,
    pub substituter: Option<String>,
    pub extra_pull_substituters: Vec<String>,
    pub extra_trusted_public_keys: Vec<String>,
    pub skip_adding_substituter: bool,
    /// Add what a Nix daemon lacks to its nix.conf (`--daemon`).
    pub configure_daemon: bool,
    /// A pull-only job: nothing is pushed.
    pub skip_push: bool,
    /// Closure mode's roots (`--closure-of`, cachix-action's `pathsToPush`).
    pub paths_to_push: Vec<String>,
    /// `auto`: the diff plus its derivations' build closures.
    pub closure: Option<String>,
    /// Job scoping on a shared store (`--scope`), and its registry.
    pub scope: Option<String>,
    pub jobs_dir: Option<String>,
    /// Push while the job builds (`start --watch`); on unless `false`.
    pub watch: bool,
    /// `--key-from-eval`: installables or Nix files keying the archive too.
    pub key_from_eval: Vec<String>,
    /// `--env`: an environment archive of these shells.
    pub env: Vec<String>,
    /// Keep failed builds' trees (`--keep-failed`) and their cap.
    pub keep_failed: bool,
    pub keep_failed_max: Option<String>,
    /// A bearer token for an http(s) cache (GitHub's `cache-token`).
    pub cache_token: Option<Secret<String>>,
    /// GitHub cache housekeeping after a save (`purge`, on unless `false`),
    /// and the token it uses (GitHub's `github-token`).
    pub purge: bool,
    pub purge_prefixes: Vec<String>,
    pub purge_created_before: Option<String>,
    pub purge_last_accessed_before: Option<String>,
    pub github_token: Option<Secret<String>>,
    /// A signing key is given somewhere (set by [`Inputs::settle`]).
    pub has_key: bool,
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

/// An age input, checked at every step (so that `start` refuses a bad
/// one before the build, not only the post step that uses it).
fn age(src: &dyn Source, name: &str) -> Result<Option<String>> {
    let v = src.get(name);
    if let Some(v) = &v {
        nixdelta::archive::github_purge::parse_age(&format!("input {name}"), v)?;
    }
    Ok(v)
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

/// `nixdelta.yml` under a CI's own inputs: key -> value as an input
/// gives it (set once by `main`, before the inputs are read).
static FILE: OnceLock<HashMap<String, String>> = OnceLock::new();
/// The keys whose value came from the file (for `nixdelta config`).
static FROM_FILE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Layers `nixdelta.yml`'s values under the CI inputs.
pub fn set_file_layer(values: HashMap<String, String>) {
    let _ = FILE.set(values);
}

/// Whether `key`'s input was the file's value.
pub fn from_file(key: &str) -> bool {
    FROM_FILE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|k| k == key)
}

/// A CI's inputs over the file over the CI's defaults. The defaults live
/// here, not in action.yml or the template: an input with a default there
/// is set always and would hide the file.
struct Layered<'a> {
    src: &'a dyn Source,
    defaults: &'a [(&'a str, &'a str)],
}

impl Layered<'_> {
    fn file(&self, name: &str) -> Option<String> {
        let v = FILE.get()?.get(name)?.clone();
        FROM_FILE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_string());
        Some(v)
    }

    fn default(&self, name: &str) -> Option<String> {
        self.defaults
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

impl Source for Layered<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.src
            .get(name)
            .or_else(|| self.file(name))
            .or_else(|| self.default(name))
    }

    fn list(&self, name: &str) -> Vec<String> {
        let l = self.src.list(name);
        if !l.is_empty() {
            return l;
        }
        self.file(name)
            .or_else(|| self.default(name))
            .map(|v| split_lines(&v))
            .unwrap_or_default()
    }
}

impl Inputs {
    /// The options common to every CI, read from `src` (over the file).
    /// The secret key content, if any, is the caller's (it differs per CI).
    pub fn read(src: &dyn Source) -> Result<Inputs> {
        Inputs::read_with(src, &[])
    }

    /// As [`Inputs::read`], with the CI's defaults for inputs neither the
    /// CI nor the file sets.
    pub fn read_with(src: &dyn Source, defaults: &[(&str, &str)]) -> Result<Inputs> {
        Inputs::read_layered(&Layered { src, defaults })
    }

    fn read_layered(src: &dyn Source) -> Result<Inputs> {
        let archive = src.get("archive").filter(|a| a != "none");
        Ok(Inputs {
            store: src.get("store"),
            binary_cache: src.get("binary-cache"),
            secret_key: None,
            secret_key_file: src.get("secret-key-file"),
            archive,
            key_files: split_words(src.list("key-files")),
            restore_prefixes: split_words(src.list("restore-prefixes")),
            // `push-filter` is cachix-action's name for the same regexes.
            exclude: [src.list("exclude"), src.list("push-filter")].concat(),
            include_drv: parse_bool("include-drv", src.get("include-drv"))?,
            upstream: src.get("upstream"),
            strict: parse_bool("strict", src.get("strict"))?,
            max_archive_size: src.get("max-archive-size"),
            jobs: src.get("jobs"),
            read_only: parse_bool("read-only", src.get("read-only"))?,
            public_key: src.get("public-key"),
            substituter: src.get("substituter"),
            extra_pull_substituters: split_words(src.list("extra-pull-substituters")),
            extra_trusted_public_keys: split_words(src.list("extra-trusted-public-keys")),
            skip_adding_substituter: parse_bool(
                "skip-adding-substituter",
                src.get("skip-adding-substituter"),
            )?,
            configure_daemon: parse_bool("configure-daemon", src.get("configure-daemon"))?,
            skip_push: parse_bool("skip-push", src.get("skip-push"))?,
            paths_to_push: split_words(src.list("paths-to-push")),
            closure: match src.get("closure").as_deref() {
                None | Some("") | Some("diff") => None,
                Some("auto") => Some("auto".to_string()),
                Some(other) => {
                    return Err(Error::Usage(format!(
                        "input closure: expected diff or auto, got {other:?}"
                    )))
                }
            },
            scope: match src.get("scope").as_deref() {
                None | Some("") | Some("auto") => None,
                Some("off") => Some("off".to_string()),
                Some(other) => {
                    return Err(Error::Usage(format!(
                        "input scope: expected auto or off, got {other:?}"
                    )))
                }
            },
            jobs_dir: src.get("jobs-dir").filter(|s| !s.is_empty()),
            // On by default in CI: measured to pay (bench/watch.sh, README).
            watch: match src.get("watch").filter(|v| !v.trim().is_empty()) {
                None => true,
                v => parse_bool("watch", v)?,
            },
            key_from_eval: split_words(src.list("key-from-eval")),
            env: split_words(src.list("env")),
            keep_failed: parse_bool("keep-failed", src.get("keep-failed"))?,
            keep_failed_max: src.get("keep-failed-max"),
            cache_token: None,
            purge: match src.get("purge").filter(|v| !v.trim().is_empty()) {
                None => true,
                v => parse_bool("purge", v)?,
            },
            purge_prefixes: split_words(src.list("purge-prefixes")),
            purge_created_before: age(src, "purge-created-before")?,
            purge_last_accessed_before: age(src, "purge-last-accessed-before")?,
            github_token: None,
            has_key: false,
            state_dir: None,
            fork_pr: false,
            notices: vec![],
        })
    }

    /// Settles what cannot be done: with no signing key anywhere, nothing
    /// is pushed (said as a notice; `strict` keeps the push so that the
    /// missing key is an error), and a fork's pull request restores only.
    /// The binary cache is still read when its public key is given.
    pub fn settle(&mut self, env_has_key: bool) {
        let has_key = self.secret_key.is_some() || self.secret_key_file.is_some() || env_has_key;
        self.has_key = has_key;
        if self.skip_push && self.binary_cache.is_some() {
            self.notices
                .push("skip-push: a pull-only job, nothing is pushed to the binary cache".into());
        }
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
        if self.binary_cache.is_some() && !self.strict && !self.skip_push {
            self.skip_push = true;
            self.notices.push(if self.fork_pr {
                "pull request from a fork has no secrets: nothing is pushed to the binary cache"
                    .into()
            } else {
                "no signing key (secret-key, secret-key-file or $NIXDELTA_SECRET_KEY): nothing is pushed to the binary cache".into()
            });
        }
        if self.binary_cache.is_some() && self.public_key.is_none() && !self.skip_adding_substituter
        {
            self.notices.push(
                "the binary cache is not read either: give public-key (or a signing key) for \
                 the job's Nix to substitute from it"
                    .into(),
            );
        }
    }

    /// Whether `start` points the job's Nix at our binary cache: it needs
    /// the cache's key (given, or derived from the signing key).
    fn reads_binary_cache(&self) -> bool {
        !self.skip_adding_substituter
            && self.binary_cache.is_some()
            && (self.public_key.is_some() || self.has_key)
    }

    /// Command line options for `step`, leaving out those `given` already.
    pub fn args(&self, step: Step, given: &[OsString]) -> Vec<OsString> {
        let mut a = Args {
            given,
            out: Vec::new(),
        };
        // The store and the archive options: every step.
        a.one("--store", self.store.as_deref());
        a.one("--archive", self.archive.as_deref());
        a.many("--key-file", &self.key_files);
        a.many("--restore-prefix", &self.restore_prefixes);
        a.many("--key-from-eval", &self.key_from_eval);
        a.many("--env", &self.env);
        a.one("--max-archive-size", self.max_archive_size.as_deref());
        a.switch("--read-only", self.read_only);
        a.switch("--strict", self.strict);
        if step != Step::Run {
            let dir = self
                .state_dir
                .as_ref()
                .map(|d| d.to_string_lossy().into_owned());
            a.one("--state-dir", dir.as_deref());
        }
        // Scoping: start registers the job, finish reads the registry.
        a.one("--scope", self.scope.as_deref());
        a.one("--jobs-dir", self.jobs_dir.as_deref());
        if step != Step::Finish {
            self.read_args(step, &mut a);
            // finish knows it from start's state.
            a.switch("--keep-failed", self.keep_failed);
            if self.keep_failed {
                a.one("--keep-failed-max", self.keep_failed_max.as_deref());
            }
        }
        if step == Step::Start {
            // The uploader start leaves pushes as finish does: same filters.
            if self.watch && self.pushes() {
                a.switch("--watch", true);
                a.one("--to", self.binary_cache.as_deref());
                a.one("--secret-key-file", self.secret_key_file.as_deref());
                self.filter_args(&mut a);
            }
            return a.out;
        }
        a.one("--to", self.binary_cache.as_deref());
        a.switch("--skip-push", self.skip_push);
        a.one("--secret-key-file", self.secret_key_file.as_deref());
        self.filter_args(&mut a);
        a.one("--jobs", self.jobs.as_deref());
        a.many("--closure-of", &self.paths_to_push);
        a.one("--closure", self.closure.as_deref());
        a.switch("--no-purge", !self.purge);
        a.many("--purge-prefix", &self.purge_prefixes);
        a.one(
            "--purge-created-before",
            self.purge_created_before.as_deref(),
        );
        a.one(
            "--purge-last-accessed-before",
            self.purge_last_accessed_before.as_deref(),
        );
        a.out
    }

    /// What the push leaves out: finish's, and start's with watch.
    fn filter_args(&self, a: &mut Args) {
        a.many("--exclude", &self.exclude);
        a.switch("--include-drv", self.include_drv);
        a.one("--upstream", self.upstream.as_deref());
    }

    /// Whether this job pushes at all (a cache, a key, not pull-only).
    fn pushes(&self) -> bool {
        self.binary_cache.is_some() && self.has_key && !self.skip_push
    }

    /// The read-side options of `start` and `run`.
    fn read_args(&self, step: Step, a: &mut Args) {
        if self.reads_binary_cache() {
            if step == Step::Start {
                a.one("--to", self.binary_cache.as_deref());
                a.one("--secret-key-file", self.secret_key_file.as_deref());
            }
            a.one("--public-key", self.public_key.as_deref());
            a.one("--read-url", self.substituter.as_deref());
        }
        a.many("--extra-substituter", &self.extra_pull_substituters);
        a.many(
            "--extra-trusted-public-key",
            &self.extra_trusted_public_keys,
        );
        a.switch("--no-configure", self.skip_adding_substituter);
        a.switch("--daemon", self.configure_daemon);
    }
}

/// Options added to a command line, leaving out those given already.
struct Args<'a> {
    given: &'a [OsString],
    out: Vec<OsString>,
}

impl Args<'_> {
    /// Given by the user, or added already (an option two groups add).
    fn has(&self, flag: &str) -> bool {
        self.given.iter().chain(self.out.iter()).any(|a| {
            a.to_str()
                .is_some_and(|s| s == flag || s.starts_with(&format!("{flag}=")))
        })
    }

    fn one(&mut self, flag: &str, v: Option<&str>) {
        if let Some(v) = v.filter(|_| !self.has(flag)) {
            // One argument: a value may start with `-`.
            self.out.push(format!("{flag}={v}").into());
        }
    }

    fn many(&mut self, flag: &str, vs: &[String]) {
        if !self.has(flag) {
            self.out
                .extend(vs.iter().map(|v| format!("{flag}={v}").into()));
        }
    }

    fn switch(&mut self, flag: &str, on: bool) {
        if on && !self.has(flag) {
            self.out.push(flag.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
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
        i.keep_failed = true;
        i.keep_failed_max = Some("1G".into());
        let start = strs(&i.args(Step::Start, &[]));
        assert!(start.contains(&"--keep-failed".to_string()), "{start:?}");
        assert!(start.contains(&"--keep-failed-max=1G".to_string()));
        let finish = strs(&i.args(Step::Finish, &["--to=file:///mine".into()]));
        assert!(!finish.iter().any(|a| a.starts_with("--keep-failed")));
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
    fn the_store_input_is_store_on_every_step() {
        let i = Inputs {
            store: Some("unix:///mnt/nix/var/nix/daemon-socket/socket?root=/mnt".into()),
            ..Default::default()
        };
        for step in [Step::Start, Step::Finish, Step::Run] {
            let a = strs(&i.args(step, &[]));
            assert_eq!(
                a[0], "--store=unix:///mnt/nix/var/nix/daemon-socket/socket?root=/mnt",
                "{a:?}"
            );
        }
        let given = strs(&i.args(Step::Start, &["--store=/x".into()]));
        assert!(!given.iter().any(|a| a.starts_with("--store")), "{given:?}");
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
        assert!(i.skip_push && i.read_only);
        assert_eq!(i.notices.len(), 3, "{:?}", i.notices);
        let finish = strs(&i.args(Step::Finish, &[]));
        assert!(finish.contains(&"--skip-push".to_string()), "{finish:?}");
        // Without a key of the cache, start does not point Nix at it.
        let start = strs(&i.args(Step::Start, &[]));
        assert!(!start.iter().any(|a| a.starts_with("--to")), "{start:?}");
        let mut j = Inputs {
            binary_cache: Some("file:///c".into()),
            fork_pr: true,
            ..Default::default()
        };
        j.settle(true);
        assert!(!j.skip_push && !j.read_only);
        let mut k = Inputs {
            binary_cache: Some("file:///c".into()),
            strict: true,
            ..Default::default()
        };
        k.settle(false);
        assert!(!k.skip_push, "strict: the missing key is an error later");
    }

    #[test]
    fn pull_only_jobs_read_the_cache() {
        let mut i = Inputs {
            binary_cache: Some("https://cache.example.org".into()),
            public_key: Some("c-1:AAAA".into()),
            substituter: Some("https://read.example.org".into()),
            extra_pull_substituters: vec!["https://other.example.org".into()],
            extra_trusted_public_keys: vec!["o-1:BBBB".into()],
            skip_push: true,
            secret_key_file: Some("/k.sec".into()),
            ..Default::default()
        };
        i.settle(false);
        assert_eq!(i.notices.len(), 1, "{:?}", i.notices);
        assert_eq!(
            strs(&i.args(Step::Start, &[])),
            [
                "--to=https://cache.example.org",
                "--secret-key-file=/k.sec",
                "--public-key=c-1:AAAA",
                "--read-url=https://read.example.org",
                "--extra-substituter=https://other.example.org",
                "--extra-trusted-public-key=o-1:BBBB",
            ]
        );
        let finish = strs(&i.args(Step::Finish, &[]));
        assert!(finish.contains(&"--skip-push".to_string()));
        assert!(!finish.iter().any(|a| a.starts_with("--public-key")));
        let run = strs(&i.args(Step::Run, &[]));
        assert!(run.contains(&"--public-key=c-1:AAAA".to_string()));
        assert_eq!(run.iter().filter(|a| a.starts_with("--to=")).count(), 1);
        i.skip_adding_substituter = true;
        let start = strs(&i.args(Step::Start, &[]));
        assert!(start.contains(&"--no-configure".to_string()));
        assert!(!start.iter().any(|a| a.starts_with("--to")));
    }

    /// A source from name/value pairs.
    struct Pairs(Vec<(&'static str, &'static str)>);

    impl Source for Pairs {
        fn get(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
                .filter(|v| !v.is_empty())
        }
    }

    #[test]
    fn closure_inputs_reach_finish_only() {
        let src = Pairs(vec![
            ("paths-to-push", "./result\n.#default"),
            ("closure", "diff"),
        ]);
        let i = Inputs::read(&src).unwrap();
        let finish = strs(&i.args(Step::Finish, &[]));
        assert!(
            finish.contains(&"--closure-of=./result".to_string()),
            "{finish:?}"
        );
        assert!(
            finish.contains(&"--closure-of=.#default".to_string()),
            "{finish:?}"
        );
        assert!(!finish.iter().any(|a| a.starts_with("--closure=")));
        assert!(!strs(&i.args(Step::Start, &[]))
            .iter()
            .any(|a| a.starts_with("--closure")));
        let mut watch = Inputs::read(&Pairs(vec![
            ("watch", "true"),
            ("binary-cache", "file:///c"),
            ("secret-key-file", "/k"),
            ("exclude", "-doc$"),
        ]))
        .unwrap();
        watch.settle(false);
        let start = strs(&watch.args(Step::Start, &[]));
        for want in [
            "--watch",
            "--to=file:///c",
            "--secret-key-file=/k",
            "--exclude=-doc$",
        ] {
            assert_eq!(
                start.iter().filter(|a| *a == want).count(),
                1,
                "{want}: {start:?}"
            );
        }
        let off = Inputs::read(&Pairs(vec![("scope", "off"), ("jobs-dir", "/srv/jobs")])).unwrap();
        for step in [Step::Start, Step::Finish, Step::Run] {
            let a = strs(&off.args(step, &[]));
            assert!(a.contains(&"--scope=off".to_string()), "{a:?}");
            assert!(a.contains(&"--jobs-dir=/srv/jobs".to_string()), "{a:?}");
        }
        let e = Inputs::read(&Pairs(vec![("scope", "none")])).unwrap_err();
        assert!(e.to_string().contains("input scope"), "{e}");
        let auto = Inputs::read(&Pairs(vec![("closure", "auto")])).unwrap();
        assert!(strs(&auto.args(Step::Run, &[])).contains(&"--closure=auto".to_string()));
        let e = Inputs::read(&Pairs(vec![("closure", "all")])).unwrap_err();
        assert!(e.to_string().contains("input closure"), "{e}");
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
}
