//! `nixdelta.yml`: the job's options in one file at the repository root,
//! with the names of the CI inputs (`binary-cache`, `archive`,
//! `key-files`, ...). Typed here (unknown keys and wrong types are usage
//! errors with file, line and column); the command line layers it under
//! its options, the environment and the CI inputs. Secrets are refused:
//! a file in the repository is no place for a key.

use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file looked for in the directory the job runs in.
pub const FILE_NAME: &str = "nixdelta.yml";

/// Keys that hold secrets: known, so that the error says what to do.
const SECRETS: &[(&str, &str)] = &[
    (
        "secret-key",
        "use secret-key-file or the NIXDELTA_SECRET_KEY environment variable (a CI secret) instead",
    ),
    (
        "cache-token",
        "use the NIXDELTA_CACHE_TOKEN environment variable (a CI secret) or netrc-file instead",
    ),
    (
        "github-token",
        "the action's github-token input (default: the job's token) or $NIXDELTA_GITHUB_TOKEN gives it",
    ),
];

/// Every key of the file. Scalars take strings and numbers; lists take a
/// sequence or a string (one item per line).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    // Where the store and the caches are.
    pub store: Option<Scalar>,
    pub netrc_file: Option<Scalar>,
    pub binary_cache: Option<Scalar>,
    pub secret_key_file: Option<Scalar>,
    // The store archive and its key.
    pub archive: Option<Scalar>,
    pub key_files: Option<List>,
    pub key_dir: Option<Scalar>,
    pub restore_prefixes: Option<List>,
    pub key_from_eval: Option<List>,
    pub env: Option<List>,
    pub max_archive_size: Option<Scalar>,
    pub read_only: Option<bool>,
    pub resave_threshold: Option<Scalar>,
    pub restore_from_cache: Option<Scalar>,
    pub trusted_public_keys: Option<List>,
    pub no_warm_manifest: Option<bool>,
    // What is pushed.
    pub exclude: Option<List>,
    pub include_drv: Option<bool>,
    pub include_self_source: Option<bool>,
    pub source_dir: Option<Scalar>,
    pub upstream_keys: Option<List>,
    pub upstream: Option<Scalar>,
    pub paths_to_push: Option<List>,
    pub closure: Option<Scalar>,
    pub skip_push: Option<bool>,
    pub jobs: Option<Scalar>,
    pub compression_level: Option<Scalar>,
    pub dry_run: Option<bool>,
    // The read side.
    pub public_key: Option<Scalar>,
    pub substituter: Option<Scalar>,
    pub extra_pull_substituters: Option<List>,
    pub extra_trusted_public_keys: Option<List>,
    pub skip_adding_substituter: Option<bool>,
    pub configure_daemon: Option<bool>,
    // Shared stores, the uploader, failures.
    pub scope: Option<Scalar>,
    pub workspace: Option<Scalar>,
    pub jobs_dir: Option<Scalar>,
    pub watch: Option<bool>,
    pub watch_timeout: Option<Scalar>,
    pub strict: Option<bool>,
    pub keep_failed: Option<bool>,
    pub keep_failed_max: Option<Scalar>,
    // GitHub cache housekeeping.
    pub purge: Option<bool>,
    pub purge_prefixes: Option<List>,
    pub purge_created_before: Option<Scalar>,
    pub purge_last_accessed_before: Option<Scalar>,
    // Refused (see `SECRETS`); accepted by the parser only to say so.
    #[serde(skip_serializing)]
    pub secret_key: Option<de::IgnoredAny>,
    #[serde(skip_serializing)]
    pub cache_token: Option<de::IgnoredAny>,
    #[serde(skip_serializing)]
    pub github_token: Option<de::IgnoredAny>,
}

/// A string value (a number is taken as written).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Scalar(pub String);

/// A list value: a sequence of strings, or one string of lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct List(pub Vec<String>);

/// One value of the file, as the layers above take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(String),
    List(Vec<String>),
    Bool(bool),
}

impl Value {
    /// As a CI input would give it: a list as lines.
    pub fn as_input(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::List(l) => l.join("\n"),
            Value::Bool(b) => b.to_string(),
        }
    }
}

/// A key set in the file, with its line (1-based) for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    pub line: usize,
}

/// The file as read: where it is and what it sets, in file order.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
}

impl Loaded {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// `nixdelta.yml:7`, as the sources are shown.
    pub fn origin(&self, e: &Entry) -> String {
        format!("{}:{}", self.path.display(), e.line)
    }
}

/// Every key the file takes (sorted; the secrets left out).
pub fn keys() -> Vec<String> {
    // Serialising a file with every key set lists them: no second list
    // to keep in step with the struct.
    let full = ConfigFile::every_key();
    match serde_json::to_value(full) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

impl ConfigFile {
    /// A file with every key set (for [`keys`]).
    fn every_key() -> ConfigFile {
        let s = || Some(Scalar(String::new()));
        let l = || Some(List(Vec::new()));
        let b = Some(false);
        ConfigFile {
            store: s(),
            netrc_file: s(),
            binary_cache: s(),
            secret_key_file: s(),
            archive: s(),
            key_files: l(),
            key_dir: s(),
            restore_prefixes: l(),
            key_from_eval: l(),
            env: l(),
            max_archive_size: s(),
            read_only: b,
            resave_threshold: s(),
            restore_from_cache: s(),
            trusted_public_keys: l(),
            no_warm_manifest: b,
            exclude: l(),
            include_drv: b,
            include_self_source: b,
            source_dir: s(),
            upstream_keys: l(),
            upstream: s(),
            paths_to_push: l(),
            closure: s(),
            skip_push: b,
            jobs: s(),
            compression_level: s(),
            dry_run: b,
            public_key: s(),
            substituter: s(),
            extra_pull_substituters: l(),
            extra_trusted_public_keys: l(),
            skip_adding_substituter: b,
            configure_daemon: b,
            scope: s(),
            workspace: s(),
            jobs_dir: s(),
            watch: b,
            watch_timeout: s(),
            strict: b,
            keep_failed: b,
            keep_failed_max: s(),
            purge: b,
            purge_prefixes: l(),
            purge_created_before: s(),
            purge_last_accessed_before: s(),
            secret_key: None,
            cache_token: None,
            github_token: None,
        }
    }
}

/// Reads `path`; `Ok(None)` when it does not exist and `required` is
/// false (the default file is optional, a named one is not).
pub fn load(path: &Path, required: bool) -> Result<Option<Loaded>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(e) => {
            return Err(Error::Usage(format!(
                "{}: cannot read the config file: {e}",
                path.display()
            )))
        }
    };
    parse(path, &text).map(Some)
}

/// Parses the file's text; errors name `path`, the line and the column.
pub fn parse(path: &Path, text: &str) -> Result<Loaded> {
    let where_ = |line: usize, col: usize| format!("{}:{line}:{col}", path.display());
    // An empty file (or only comments) sets nothing.
    let file: ConfigFile = if text.trim().is_empty() || all_comments(text) {
        ConfigFile::default()
    } else {
        serde_norway::from_str(text).map_err(|e| {
            let (line, col) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            Error::Usage(format!(
                "{}: {}",
                where_(line, col),
                explain(&e.to_string())
            ))
        })?
    };
    for (key, instead) in SECRETS {
        let set = match *key {
            "secret-key" => file.secret_key.is_some(),
            "github-token" => file.github_token.is_some(),
            _ => file.cache_token.is_some(),
        };
        if set {
            let line = key_line(text, key).unwrap_or(1);
            return Err(Error::Usage(format!(
                "{}: {key} is a secret and is not accepted in {FILE_NAME}: {instead}",
                where_(line, 1)
            )));
        }
    }
    let entries = entries(&file, text);
    Ok(Loaded {
        path: path.to_path_buf(),
        entries,
    })
}

fn all_comments(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---")
}

/// The keys set, with their values and lines, in file order.
fn entries(file: &ConfigFile, text: &str) -> Vec<Entry> {
    let Ok(serde_json::Value::Object(m)) = serde_json::to_value(file) else {
        return Vec::new();
    };
    let mut out: Vec<Entry> = m
        .into_iter()
        .filter_map(|(key, v)| {
            let value = match v {
                serde_json::Value::String(s) => Value::Str(s),
                serde_json::Value::Bool(b) => Value::Bool(b),
                serde_json::Value::Array(a) => Value::List(
                    a.into_iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect(),
                ),
                _ => return None,
            };
            let line = key_line(text, &key).unwrap_or(0);
            Some(Entry { key, value, line })
        })
        .collect();
    out.sort_by_key(|e| e.line);
    out
}

/// The line of top-level `key:` (the file is one flat mapping).
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_end();
            let name = l.split(':').next().unwrap_or("");
            let name = name.trim_matches(|c| c == '"' || c == '\'');
            l.contains(':') && name == key && !l.starts_with([' ', '\t', '#'])
        })
        .map(|i| i + 1)
}

/// serde's message, without its own location (we print ours first), and
/// for an unknown key the nearest known one.
fn explain(msg: &str) -> String {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    let unknown = msg
        .find("unknown field `")
        .map(|i| &msg[i + "unknown field `".len()..])
        .and_then(|r| r.split('`').next());
    let Some(name) = unknown else {
        return msg.to_string();
    };
    let near = keys()
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(name, &k), k))
        .min();
    match near {
        Some((d, k)) if d <= 3 => format!("unknown key {name:?} (did you mean {k:?}?)"),
        _ => format!("unknown key {name:?} (see README, \"Config file\", for the keys)"),
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Scalar, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<List, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = List;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of strings, or a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<List, E> {
                Ok(List(
                    v.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from)
                        .collect(),
                ))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<List, A::Error> {
                let mut out = Vec::new();
                while let Some(Scalar(s)) = seq.next_element::<Scalar>()? {
                    out.push(s);
                }
                Ok(List(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Loaded> {
        parse(Path::new("nixdelta.yml"), text)
    }

    #[test]
    fn values_and_lines() {
        let f = parse_str(
            "# the cache\nbinary-cache: file:///c\nexclude:\n  - -doc$\n  - -man$\nkey-files: flake.lock\nstrict: true\njobs: 4\n",
        )
        .unwrap();
        let e = f.get("binary-cache").unwrap();
        assert_eq!(
            (e.value.clone(), e.line),
            (Value::Str("file:///c".into()), 2)
        );
        assert_eq!(
            f.get("exclude").unwrap().value,
            Value::List(vec!["-doc$".into(), "-man$".into()])
        );
        assert_eq!(
            f.get("key-files").unwrap().value,
            Value::List(vec!["flake.lock".into()])
        );
        assert_eq!(f.get("strict").unwrap().value, Value::Bool(true));
        assert_eq!(f.get("jobs").unwrap().value, Value::Str("4".into()));
        assert_eq!(f.get("jobs").unwrap().line, 8);
        assert!(f.get("archive").is_none());
        assert_eq!(f.origin(e), "nixdelta.yml:2");
    }

    #[test]
    fn unknown_keys_name_the_place_and_the_nearest_key() {
        let e = parse_str("archive: none\nbinary-cach: file:///c\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("nixdelta.yml:2:1: "), "{e}");
        assert!(e.contains("did you mean \"binary-cache\""), "{e}");
    }

    #[test]
    fn wrong_types_name_the_place() {
        let e = parse_str("archive: none\nstrict: maybe\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("nixdelta.yml:2:9: "), "{e}");
        assert!(e.contains("expected a boolean"), "{e}");
        let e = parse_str("exclude:\n  a: b\n").unwrap_err().to_string();
        assert!(e.starts_with("nixdelta.yml:2:"), "{e}");
        assert!(e.contains("a list of strings"), "{e}");
    }

    #[test]
    fn secrets_are_refused() {
        let e = parse_str("archive: none\nsecret-key: k:abc\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("nixdelta.yml:2:1: secret-key is a secret"),
            "{e}"
        );
        assert!(e.contains("secret-key-file"), "{e}");
        assert!(!e.contains("k:abc"), "{e}");
        let e = parse_str("cache-token: t\n").unwrap_err().to_string();
        assert!(e.contains("cache-token is a secret"), "{e}");
    }

    #[test]
    fn empty_files_set_nothing() {
        assert!(parse_str("").unwrap().entries.is_empty());
        assert!(parse_str("# nothing yet\n").unwrap().entries.is_empty());
    }

    #[test]
    fn every_key_is_listed() {
        let k = keys();
        assert!(k.contains(&"binary-cache".to_string()));
        assert!(k.contains(&"keep-failed-max".to_string()));
        assert!(!k.contains(&"secret-key".to_string()));
        assert_eq!(k.len(), 46, "{k:?}");
    }

    /// The README's example is a valid file that sets every key.
    #[test]
    fn the_readme_example_sets_every_key() {
        let readme = include_str!("../../README.md");
        let at = readme.find("## Config file").expect("the README section");
        let block = readme[at..].split("```yaml\n").nth(1).unwrap();
        let block = block.split("```").next().unwrap();
        let f = parse_str(block).unwrap();
        let mut set: Vec<String> = f.entries.iter().map(|e| e.key.clone()).collect();
        set.sort();
        assert_eq!(set, keys());
        assert!(f.entries.iter().all(|e| e.line > 0));
    }
}
