//! The docs stand alone and say what the front ends accept: every YAML
//! example in `docs/` parses, every option it gives nixdelta is one that
//! `action.yml`, the GitLab template's `spec: inputs` or `plugin.yml`
//! declares, and every link in `docs/` and the README stays inside the
//! repository and points at a file that exists. `docs_run.rs` runs them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_norway::Value;

use crate::helpers::util::*;

pub(crate) fn pages() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    v.sort();
    v
}

/// The fenced blocks of a Markdown text whose info string is `lang`.
pub(crate) fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start().strip_prefix("```")) {
            (None, Some(info)) if info.trim() == lang => current = Some(String::new()),
            (None, Some(_)) => current = Some("\u{0}skip".into()),
            (Some(_), Some(_)) => {
                let b = current.take().unwrap();
                if !b.starts_with('\u{0}') {
                    out.push(b);
                }
            }
            (Some(b), None) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

pub(crate) fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("bad YAML ({e}):\n{text}"))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn action_inputs() -> BTreeSet<String> {
    let a = yaml(&std::fs::read_to_string(repo().join("action.yml")).unwrap());
    keys(&a["inputs"])
}

fn template_inputs() -> BTreeSet<String> {
    let t = std::fs::read_to_string(repo().join("templates/nixdelta.gitlab-ci.yml")).unwrap();
    // The template's first YAML document is its `spec:`.
    let spec = t.split("\n---").next().unwrap();
    keys(&yaml(spec)["spec"]["inputs"])
}

fn plugin_options() -> BTreeSet<String> {
    let p = yaml(&std::fs::read_to_string(repo().join("plugin.yml")).unwrap());
    keys(&p["configuration"]["properties"])
}

/// The options one example gives nixdelta, by front end.
fn options_used(doc: &Value) -> Vec<(&'static str, BTreeSet<String>)> {
    let mut out = Vec::new();
    if let Some(jobs) = doc["jobs"].as_mapping() {
        for job in jobs.values() {
            for step in job["steps"].as_sequence().into_iter().flatten() {
                let uses = step["uses"].as_str().unwrap_or_default();
                if uses.starts_with("nixdelta/nixdelta@") {
                    out.push(("github", keys(&step["with"])));
                }
            }
        }
    }
    for inc in doc["include"].as_sequence().into_iter().flatten() {
        let remote = inc["remote"].as_str().unwrap_or_default();
        if remote.ends_with("templates/nixdelta.gitlab-ci.yml") {
            out.push(("gitlab", keys(&inc["inputs"])));
        }
    }
    for step in doc["steps"].as_sequence().into_iter().flatten() {
        for plugin in step["plugins"].as_sequence().into_iter().flatten() {
            for (name, cfg) in plugin.as_mapping().into_iter().flatten() {
                if name
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("nixdelta/nixdelta#")
                {
                    out.push(("buildkite", keys(cfg)));
                }
            }
        }
    }
    out
}

#[test]
fn docs_examples_use_only_options_the_front_ends_declare() {
    let declared = |ci: &str| match ci {
        "github" => action_inputs(),
        "gitlab" => template_inputs(),
        _ => plugin_options(),
    };
    let mut seen = BTreeSet::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        // Fragments (` ```yaml fragment `, not run by docs_run.rs) are
        // checked too.
        let fragments = blocks(&text, "yaml fragment");
        for block in blocks(&text, "yaml").into_iter().chain(fragments) {
            let uses = options_used(&yaml(&block));
            assert!(
                !uses.is_empty(),
                "{}: a YAML example that uses no nixdelta front end:\n{block}",
                page.display()
            );
            for (ci, opts) in uses {
                let known = declared(ci);
                let unknown: Vec<_> = opts.difference(&known).collect();
                assert!(
                    unknown.is_empty(),
                    "{}: {ci} options not declared: {unknown:?}",
                    page.display()
                );
                seen.insert(ci);
            }
        }
    }
    // One complete example per front end at least.
    assert_eq!(seen.len(), 3, "front ends with an example: {seen:?}");
}

/// Markdown link targets `](target)` outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let line: String = line.split('`').step_by(2).collect();
        for part in line.split("](").skip(1) {
            if let Some(t) = part.split(')').next() {
                out.push(t.to_string());
            }
        }
    }
    out
}

#[test]
fn docs_and_readme_link_only_to_files_in_the_repository() {
    let mut files = pages();
    files.push(repo().join("README.md"));
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let dir = f.parent().unwrap();
        for target in links(&text) {
            let path = target.split('#').next().unwrap();
            assert!(
                !target.contains("://"),
                "{}: links outside the repository: {target}",
                f.display()
            );
            if path.is_empty() {
                continue;
            }
            let full = dir.join(path);
            let canon = full
                .canonicalize()
                .unwrap_or_else(|_| panic!("{}: broken link {target}", f.display()));
            assert!(
                canon.starts_with(repo().canonicalize().unwrap()),
                "{}: {target} is outside the repository",
                f.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} links found");
}

#[test]
fn the_link_finder_sees_links_and_skips_code() {
    let t = "see [a](x.md) and `[b](y.md)`\n```\n[c](z.md)\n```\n[d](../w.md#s)\n";
    assert_eq!(links(t), vec!["x.md", "../w.md#s"]);
}
