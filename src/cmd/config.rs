//! `nixdelta.yml` on the command line: its keys become options of
//! `start`/`finish`/`run` where neither the command line, the environment
//! nor a CI input set them (clap's `value_source` says which did), and
//! `nixdelta config` shows the outcome with each value's origin.
//!
//! Precedence: command line > environment / CI inputs > file > defaults.
//! Under a CI the file is read with the inputs (`ci::inputs`), so that
//! the CI's rules (watch on by default, no key means no push) see it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use nixdelta::error::{exit, Result};
use nixdelta::job::config_file::{self, Entry, Loaded, Value};

/// A key of the file, the option it sets, and whether it is a CI input
/// (read by `ci::inputs` under a CI, which decides per step).
pub struct Key {
    pub key: &'static str,
    pub flag: &'static str,
    pub ci: bool,
    /// The flag says the opposite of the key (`purge: false` is `--no-purge`).
    pub invert: bool,
}

const fn k(key: &'static str, flag: &'static str, ci: bool) -> Key {
    Key {
        key,
        flag,
        ci,
        invert: false,
    }
}

/// A key whose `false` is the flag.
const fn not(key: &'static str, flag: &'static str, ci: bool) -> Key {
    Key {
        key,
        flag,
        ci,
        invert: true,
    }
}

/// Every key of [`config_file::ConfigFile`] (a unit test checks).
pub const KEYS: &[Key] = &[
    k("store", "store", true),
    k("netrc-file", "netrc-file", false),
    k("binary-cache", "to", true),
    k("secret-key-file", "secret-key-file", true),
    k("archive", "archive", true),
    k("key-files", "key-file", true),
    k("key-dir", "key-dir", false),
    k("restore-prefixes", "restore-prefix", true),
    k("key-from-eval", "key-from-eval", true),
    k("env", "env", true),
    k("max-archive-size", "max-archive-size", true),
    k("read-only", "read-only", true),
    k("resave-threshold", "resave-threshold", false),
    k("restore-from-cache", "restore-from-cache", false),
    k("trusted-public-keys", "trusted-public-key", false),
    k("no-warm-manifest", "no-warm-manifest", false),
    k("exclude", "exclude", true),
    k("include-drv", "include-drv", true),
    k("include-self-source", "include-self-source", false),
    k("source-dir", "source-dir", false),
    k("upstream-keys", "upstream-key", false),
    k("upstream", "upstream", true),
    k("paths-to-push", "closure-of", true),
    k("closure", "closure", true),
    k("skip-push", "skip-push", true),
    k("jobs", "jobs", true),
    k("compression-level", "compression-level", false),
    k("dry-run", "dry-run", false),
    k("public-key", "public-key", true),
    k("substituter", "read-url", true),
    k("extra-pull-substituters", "extra-substituter", true),
    k(
        "extra-trusted-public-keys",
        "extra-trusted-public-key",
        true,
    ),
    k("skip-adding-substituter", "no-configure", true),
    k("configure-daemon", "daemon", true),
    k("scope", "scope", true),
    k("workspace", "workspace", false),
    k("jobs-dir", "jobs-dir", true),
    k("watch", "watch", true),
    k("watch-timeout", "watch-timeout", false),
    k("strict", "strict", true),
    k("keep-failed", "keep-failed", true),
    k("keep-failed-max", "keep-failed-max", true),
    not("purge", "no-purge", true),
    k("purge-prefixes", "purge-prefix", true),
    k("purge-created-before", "purge-created-before", true),
    k(
        "purge-last-accessed-before",
        "purge-last-accessed-before",
        true,
    ),
];

/// Secrets `nixdelta config` names (never their values), with the
/// variable holding each and the CI input that may have set it.
const SECRETS: &[(&str, &str)] = &[
    ("secret-key", "NIXDELTA_SECRET_KEY"),
    ("cache-token", nixdelta::cache::http::TOKEN_ENV),
    ("github-token", "NIXDELTA_GITHUB_TOKEN"),
];

/// The file to read: `--config`/`$NIXDELTA_CONFIG` (must exist), else
/// `nixdelta.yml` in the working directory (if any); none with
/// `--no-config`.
pub fn load(named: Option<&Path>, no_config: bool) -> Result<Option<Loaded>> {
    if no_config {
        return Ok(None);
    }
    match named {
        Some(p) => config_file::load(p, true),
        None => config_file::load(Path::new(config_file::FILE_NAME), false),
    }
}

/// The subcommand's option for `flag` (`to` for `--to`).
fn arg<'a>(sub: &'a clap::Command, flag: &str) -> Option<&'a clap::Arg> {
    sub.get_arguments().find(|a| a.get_long() == Some(flag))
}

/// Set in the environment (clap's `env`), which outranks the file.
fn env_set(a: &clap::Arg) -> bool {
    a.get_env()
        .is_some_and(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// The file's CI inputs, for `ci::inputs::set_file_layer`: all but those
/// the environment sets.
pub fn ci_layer(file: &Loaded, sub: &clap::Command) -> HashMap<String, String> {
    KEYS.iter()
        .filter(|k| k.ci)
        .filter_map(|k| {
            let e = file.get(k.key)?;
            let set_by_env = arg(sub, k.flag).is_some_and(env_set);
            (!set_by_env).then(|| (k.key.to_string(), e.value.as_input()))
        })
        .collect()
}

/// Options from the file for what `matches` has from neither the command
/// line nor the environment; under a CI (`ci`), the CI inputs are left
/// to `ci::inputs`. Each option with the key it came from.
pub fn file_args(
    file: &Loaded,
    sub: &clap::Command,
    matches: &clap::ArgMatches,
    ci: bool,
) -> Vec<(OsString, &'static str)> {
    let mut out = Vec::new();
    for k in KEYS.iter().filter(|k| !(ci && k.ci)) {
        let (Some(e), Some(a)) = (file.get(k.key), arg(sub, k.flag)) else {
            continue;
        };
        let src = matches.value_source(a.get_id().as_str());
        if matches!(
            src,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = k.flag;
        match &e.value {
            Value::Bool(b) if *b != k.invert => out.push((format!("--{flag}").into(), k.key)),
            Value::Bool(_) => {}
            Value::Str(s) => out.push((format!("--{flag}={s}").into(), k.key)),
            Value::List(l) => out.extend(l.iter().map(|v| (format!("--{flag}={v}").into(), k.key))),
        }
    }
    out
}

/// Where the options came from, for `nixdelta config`.
pub struct Origins {
    /// The command line as the user gave it.
    pub user: Vec<OsString>,
    /// Options the CI inputs added (`None`: no CI).
    pub ci: Option<(String, Vec<OsString>)>,
    /// Keys whose options the file added.
    pub file_keys: Vec<&'static str>,
    pub file: Option<Loaded>,
    /// Secrets set in the environment before the CI inputs were read.
    pub env_secrets: Vec<&'static str>,
}

/// One row of `nixdelta config`.
#[derive(serde::Serialize)]
struct Row {
    key: String,
    option: String,
    value: serde_json::Value,
    source: String,
}

fn has_flag(argv: &[OsString], flag: &str) -> bool {
    let long = format!("--{flag}");
    argv.iter().take_while(|a| *a != "--").any(|a| {
        a.to_str()
            .is_some_and(|s| s == long || s.starts_with(&format!("{long}=")))
    })
}

fn origin(o: &Origins, k: &Key, a: &clap::Arg, src: Option<ValueSource>) -> Option<String> {
    let at_file = |e: Option<&Entry>| {
        let f = o.file.as_ref()?;
        Some(f.origin(e?))
    };
    let in_file = || at_file(o.file.as_ref().and_then(|f| f.get(k.key)));
    Some(match src? {
        ValueSource::EnvVariable => format!("env {}", a.get_env()?.to_string_lossy()),
        // `key: false` in the file adds no option: the default it is.
        ValueSource::DefaultValue => match o.file.as_ref().and_then(|f| f.get(k.key)) {
            Some(e) if e.value == Value::Bool(k.invert) => in_file()?,
            _ => "default".into(),
        },
        _ if has_flag(&o.user, k.flag) => "command line".into(),
        _ if o.file_keys.contains(&k.key) => in_file()?,
        _ => match &o.ci {
            Some((_, added)) if has_flag(added, k.flag) => {
                if crate::ci::inputs::from_file(k.key) {
                    in_file().unwrap_or_else(|| config_file::FILE_NAME.into())
                } else {
                    format!("CI input {}", k.key)
                }
            }
            _ => "command line".into(),
        },
    })
}

fn rows(sub: &clap::Command, m: &clap::ArgMatches, o: &Origins) -> Vec<Row> {
    let mut rows = Vec::new();
    for k in KEYS {
        let Some(a) = arg(sub, k.flag) else { continue };
        let id = a.get_id().as_str();
        let src = m.value_source(id);
        let Some(source) = origin(o, k, a, src) else {
            continue;
        };
        let raw: Vec<String> = m
            .get_raw(id)
            .map(|v| v.map(|x| x.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let many = matches!(a.get_action(), clap::ArgAction::Append);
        let value = if many {
            serde_json::json!(raw)
        } else {
            serde_json::json!(raw.join(" "))
        };
        rows.push(Row {
            key: k.key.into(),
            option: format!("--{}", k.flag),
            value,
            source,
        });
    }
    for (key, var) in SECRETS {
        if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
            continue;
        }
        let source = if o.env_secrets.contains(var) {
            format!("env {var}")
        } else {
            format!("CI input {key}")
        };
        rows.push(Row {
            key: key.to_string(),
            option: format!("${var}"),
            value: serde_json::json!("***"),
            source,
        });
    }
    rows
}

/// `nixdelta config`: the effective options of `step` and their origins.
pub fn print(
    format: &str,
    step: &str,
    sub: &clap::Command,
    m: &clap::ArgMatches,
    o: &Origins,
) -> Result<i32> {
    let rows = rows(sub, m, o);
    let file = o.file.as_ref().map(|f| f.path.display().to_string());
    // A closed pipe (`| head`) ends the listing, not the process.
    let mut out = std::io::stdout().lock();
    if let Some(key) = format.strip_prefix("get:") {
        let Some(r) = rows.iter().find(|r| r.key == key) else {
            return Err(nixdelta::error::Error::Usage(format!(
                "config --get {key}: not a key of {step}'s options"
            )));
        };
        let _ = writeln!(out, "{}", plain(&r.value, "\n"));
        return Ok(exit::OK);
    }
    if format == "json" {
        let doc = serde_json::json!({
            "step": step,
            "file": file,
            "ci": o.ci.as_ref().map(|c| c.0.clone()),
            "options": rows,
        });
        let _ = writeln!(out, "{doc:#}");
        return Ok(exit::OK);
    }
    match &file {
        Some(f) => writeln!(out, "# {step}, with {f}"),
        None => writeln!(out, "# {step}, no config file"),
    }
    .ok();
    let width = rows.iter().map(|r| r.key.len()).max().unwrap_or(0);
    for r in &rows {
        let v = plain(&r.value, ", ");
        let _ = writeln!(out, "{:width$}  {v}  ({})", r.key, r.source);
    }
    Ok(exit::OK)
}

/// A row's value as text, a list's items joined by `sep`.
fn plain(value: &serde_json::Value, sep: &str) -> String {
    match value {
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(sep),
        v => v.as_str().unwrap_or_default().to_string(),
    }
}

/// The command line `nixdelta config STEP ARGS` resolves: what came
/// before `config`, then STEP and ARGS (`run` gets a command).
pub fn step_argv(user: &[OsString], step: &str, args: &[OsString]) -> Vec<OsString> {
    let at = user
        .iter()
        .position(|a| a == "config")
        .unwrap_or(user.len());
    let mut v: Vec<OsString> = user[..at].to_vec();
    v.push(step.into());
    v.extend(args.iter().cloned());
    if step == "run" && !args.iter().any(|a| a == "--") {
        v.extend(["--".into(), "true".into()]);
    }
    v
}

/// Which of the file's `keys` a clap error is about (`nixdelta.yml:3:
/// scope`), all of them when it names none.
pub fn blame(file: &Loaded, keys: &[&'static str], err: &str) -> String {
    let named = |k: &&&str| {
        KEYS.iter()
            .find(|x| x.key == **k)
            .is_some_and(|x| err.contains(&format!("--{} ", x.flag)))
    };
    let mut hit: Vec<&&str> = keys.iter().filter(named).collect();
    if hit.is_empty() {
        hit = keys.iter().collect();
    }
    hit.dedup();
    hit.iter()
        .map(|k| match file.get(k) {
            Some(e) => format!("{}: {k}", file.origin(e)),
            None => k.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The secrets' variables set before the CI inputs are read.
pub fn env_secrets() -> Vec<&'static str> {
    SECRETS
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
        .collect()
}

/// The options `after` has that `before` lacks (those a CI added, before
/// the `--`).
pub fn added(before: &[OsString], after: &[OsString]) -> Vec<OsString> {
    let split = before
        .iter()
        .position(|a| a == "--")
        .unwrap_or(before.len());
    let n = after.len().saturating_sub(before.len());
    after[split..split + n].to_vec()
}

/// `argv` with `extra` before its `--`.
pub fn insert(mut argv: Vec<OsString>, extra: Vec<OsString>) -> Vec<OsString> {
    let split = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    let tail = argv.split_off(split);
    argv.extend(extra);
    argv.extend(tail);
    argv
}

/// `--config`, `--no-config`: on every subcommand.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConfigOpt {
    /// The config file (default: nixdelta.yml in the working directory, if any).
    #[arg(long, global = true, value_name = "FILE", env = "NIXDELTA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Read no config file.
    #[arg(long, global = true)]
    pub no_config: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_key_has_an_option() {
        let file: Vec<String> = config_file::keys();
        let mut table: Vec<String> = KEYS.iter().map(|k| k.key.to_string()).collect();
        table.sort();
        assert_eq!(file, table);
    }

    fn demo() -> clap::Command {
        clap::Command::new("run")
            .arg(clap::Arg::new("to").long("to"))
            .arg(
                clap::Arg::new("exclude")
                    .long("exclude")
                    .action(clap::ArgAction::Append),
            )
            .arg(
                clap::Arg::new("strict")
                    .long("strict")
                    .action(clap::ArgAction::SetTrue),
            )
            .arg(
                clap::Arg::new("archive")
                    .long("archive")
                    .env("NIXDELTA_TEST_CONFIG_ARCHIVE"),
            )
    }

    #[test]
    fn the_file_fills_in_what_nothing_else_set() {
        let file = config_file::parse(
            Path::new("nixdelta.yml"),
            "binary-cache: file:///c\nexclude: [a, b]\nstrict: true\narchive: dir:/x\n",
        )
        .unwrap();
        let cmd = demo();
        let m = cmd
            .clone()
            .get_matches_from(["run", "--to", "file:///mine"]);
        let args: Vec<_> = file_args(&file, &cmd, &m, false)
            .into_iter()
            .map(|(a, _)| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            ["--archive=dir:/x", "--exclude=a", "--exclude=b", "--strict"]
        );
        // The environment outranks the file (clap reads it as the
        // command is built).
        std::env::set_var("NIXDELTA_TEST_CONFIG_ARCHIVE", "dir:/env");
        let cmd = demo();
        let m = cmd.clone().get_matches_from(["run"]);
        let args = file_args(&file, &cmd, &m, false);
        std::env::remove_var("NIXDELTA_TEST_CONFIG_ARCHIVE");
        assert!(!args.iter().any(|(_, k)| *k == "archive"), "{args:?}");
        assert!(args.iter().any(|(_, k)| *k == "binary-cache"), "{args:?}");
        // Under a CI, its inputs are the inputs' business.
        let ci = file_args(&file, &cmd, &m, true);
        assert!(ci.is_empty(), "{ci:?}");
    }

    #[test]
    fn step_argv_keeps_what_came_before_config() {
        let user: Vec<OsString> = ["nixdelta", "--store", "/s", "config", "--to", "x"]
            .map(OsString::from)
            .to_vec();
        let v = step_argv(&user, "run", &user[4..]);
        assert_eq!(
            v,
            ["nixdelta", "--store", "/s", "run", "--to", "x", "--", "true"].map(OsString::from)
        );
        let i = insert(v, vec!["--strict".into()]);
        assert_eq!(i[6], "--strict");
    }
}
