//! The read side: `nixdelta configure` makes a later Nix substitute from
//! the cache we pushed to, on top of the user's own configuration.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::servers::{Nginx, HTTP_PASSWORD};
use crate::helpers::util::*;

/// Pushes chain6 with a key Nix itself generated, then configures a fresh
/// store's Nix through each output form: it substitutes the whole closure
/// with nothing built and signatures required, with no substituter option
/// of its own, and the user's NIX_CONFIG and nix.conf still apply.
#[test]
fn configure_makes_a_fresh_store_substitute_from_the_cache() {
    let env = Env::new();
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let keys = env.path("nixkeys");
    std::fs::create_dir_all(&keys).unwrap();
    let (sec, public) = (keys.join("k.sec"), keys.join("k.pub"));
    ok(Command::new("nix-store")
        .args(["--generate-binary-cache-key", "read-side-1"])
        .arg(&sec)
        .arg(&public));
    let nix_pub = std::fs::read_to_string(&public).unwrap().trim().to_string();
    let cache = env.cache_url();
    ok(nixdelta()
        .arg("--store")
        .arg(env.store())
        .args(["push", "--to", &cache, "--secret-key-file"])
        .arg(&sec)
        .arg(&chain6));

    // nix.conf form, key derived from the secret: Nix's own public key.
    let conf = env.path("nixdelta.conf");
    let r = ok(nixdelta()
        .args(["configure", "--to", &cache, "--secret-key-file"])
        .arg(&sec)
        .arg("--output")
        .arg(&conf));
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(
        text.contains(&format!("extra-trusted-public-keys = {nix_pub}\n")),
        "{text}"
    );
    assert!(!show(&r).contains(std::fs::read_to_string(&sec).unwrap().trim()));
    // The user's own file sets `substituters =` and a setting of theirs.
    let user = env.path("user.conf");
    std::fs::write(&user, "substituters =\nkeep-failed = false\n").unwrap();
    let build = |store: &str, conf_files: Option<String>, nix_config: Option<&str>| {
        let mut cmd = Command::new("nix-build");
        cmd.arg("--store")
            .arg(env.path(store))
            .arg(example("fib.nix"))
            .args(["-A", "chain6", "--no-out-link", "--max-jobs", "0"])
            .args(["--option", "require-sigs", "true"])
            .env_remove("NIX_CONFIG");
        if let Some(files) = conf_files {
            cmd.env("NIX_USER_CONF_FILES", files);
        }
        if let Some(c) = nix_config {
            cmd.env("NIX_CONFIG", c);
        }
        cmd.output().unwrap()
    };
    // Nix reads NIX_USER_CONF_FILES last to first: ours, listed first,
    // comes after the user's `substituters =`.
    let files = format!("{}:{}", conf.display(), user.display());
    let out = build("fresh1", Some(files), None);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout_lines(&out), std::slice::from_ref(&chain6));
    // Without our settings the same build cannot succeed: the test is real.
    let out = build("fresh0", Some(user.display().to_string()), None);
    assert!(!out.status.success(), "built without the cache?");

    // github-env form, public key given: NIX_CONFIG for later steps,
    // after the job's own NIX_CONFIG.
    let gh = env.path("github-env");
    std::fs::write(&gh, "OTHER=1\n").unwrap();
    ok(nixdelta()
        .args(["configure", "--to", &cache, "--public-key"])
        .arg(&public)
        .args(["--format", "github-env", "--output"])
        .arg(&gh)
        .env("NIX_CONFIG", "substituters =\nkeep-failed = false"));
    let text = std::fs::read_to_string(&gh).unwrap();
    assert!(text.starts_with("OTHER=1\nNIX_CONFIG<<"), "appends: {text}");
    let value: Vec<&str> = text
        .lines()
        .skip(2)
        .take_while(|l| !l.starts_with("NIXDELTA_EOF"))
        .collect();
    let value = value.join("\n");
    assert!(
        value.starts_with("substituters =\nkeep-failed = false\nextra-substituters = "),
        "{value}"
    );
    let out = build("fresh2", None, Some(&value));
    assert!(out.status.success(), "{}", show(&out));

    // Bad input: one line, exit 2 for a URL Nix cannot read, 5 for a key.
    let r = nixdelta()
        .args(["configure", "--to", "ftp://x", "--public-key", &nix_pub])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2), "{}", show(&r));
    let r = nixdelta()
        .args(["configure", "--to", &cache, "--public-key"])
        .arg(&sec)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(5), "{}", show(&r));
    assert!(!stderr(&r).contains(std::fs::read_to_string(&sec).unwrap().trim()));
}

/// A user's own configuration for the read-side jobs below: a nix.conf
/// (`substituters =`, so nothing waits on DNS) and a `NIX_CONFIG`; both
/// must still apply after nixdelta configured the job.
fn user_config(env: &Env) -> (PathBuf, &'static str) {
    let home = env.path("xdg");
    std::fs::create_dir_all(home.join("nix")).unwrap();
    std::fs::write(home.join("nix/nix.conf"), "substituters =\n").unwrap();
    (
        home,
        "experimental-features = nix-command\nrequire-sigs = true",
    )
}

/// `nix-build` of chain6 on a fresh store with nothing built, the user's
/// configuration, plus `extra` environment (what `start` exported).
fn build_fresh(env: &Env, store: &str, extra: &[(String, String)]) -> std::process::Output {
    let (home, nix_config) = user_config(env);
    let mut cmd = Command::new("nix-build");
    cmd.arg("--store")
        .arg(env.path(store))
        .arg(example("fib.nix"))
        .args(["-A", "chain6", "--no-out-link", "--max-jobs", "0"])
        .env("XDG_CONFIG_HOME", &home)
        .env("NIX_CONFIG", nix_config)
        .env_remove("NIX_USER_CONF_FILES")
        .envs(extra.iter().map(|(k, v)| (k, v)));
    cmd.output().unwrap()
}

/// `export NAME='value'` lines, as `start` writes them for a shell.
fn exports(file: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

/// A pull-only job on a private HTTP cache (basic auth on reads too):
/// `start` with the cache URL and its public key exports the job's Nix
/// configuration; a fresh store then substitutes the closure through the
/// netrc file it wrote, signatures required; the password is in no log
/// and no config file; `finish --skip-push` pushes nothing, says why, and
/// removes the netrc.
#[test]
fn start_configures_a_pull_only_job_on_a_private_cache() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let nginx = Nginx::start(&env.path("nginx"));
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let (sec, public) = env.keygen("private-1");
    let url = nginx.private_url_with_credentials();
    ok(nixdelta()
        .arg("--store")
        .arg(env.store())
        .args(["push", "--to", &url, "--secret-key-file"])
        .arg(&sec)
        .arg(&chain6));

    // Without nixdelta's configuration the fresh store cannot build it.
    let out = build_fresh(&env, "fresh0", &[]);
    assert!(!out.status.success(), "built without the cache?");

    let state = env.path("state");
    let env_file = env.path("job.env");
    let fresh = env.path("fresh1");
    ok(Command::new("nix-store")
        .arg("--store")
        .arg(&fresh)
        .arg("--init"));
    let start = ok(nixdelta()
        .arg("--store")
        .arg(&fresh)
        .args(["start", "--to", &url, "--public-key", &public])
        .arg("--state-dir")
        .arg(&state)
        .env("NIXDELTA_ENV_FILE", &env_file)
        .env("XDG_CONFIG_HOME", user_config(&env).0)
        .env("NIXDELTA_CI", "none"));
    let vars = exports(&env_file);
    assert_eq!(vars.len(), 1, "{vars:?}");
    assert_eq!(vars[0].0, "NIX_USER_CONF_FILES");
    let conf = std::fs::read_to_string(state.join("nix.conf")).unwrap();
    let netrc = state.join("netrc");
    assert!(
        conf.contains(&format!("netrc-file = {}", netrc.display())),
        "{conf}"
    );
    assert_eq!(
        std::fs::metadata(&netrc).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for text in [
        show(&start),
        conf,
        std::fs::read_to_string(&env_file).unwrap(),
    ] {
        assert!(!text.contains(HTTP_PASSWORD), "{text}");
    }

    let out = build_fresh(&env, "fresh1", &vars);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout_lines(&out), std::slice::from_ref(&chain6));
    // The user's NIX_CONFIG still applied: nix-command is on.
    let (home, nix_config) = user_config(&env);
    let info = Command::new("nix")
        .args(["path-info", "--store"])
        .arg(&fresh)
        .arg(&chain6)
        .env("XDG_CONFIG_HOME", &home)
        .env("NIX_CONFIG", nix_config)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(info.status.success(), "{}", show(&info));

    // The same configuration without the netrc: the cache refuses Nix.
    let conf = std::fs::read_to_string(state.join("nix.conf")).unwrap();
    let bare = env.path("bare.conf");
    std::fs::write(&bare, conf.replace("netrc-file", "# netrc-file")).unwrap();
    let ours = state.join("nix.conf").display().to_string();
    let files = vars[0].1.replace(&ours, &bare.display().to_string());
    let out = build_fresh(&env, "fresh2", &[(vars[0].0.clone(), files)]);
    assert!(
        !out.status.success(),
        "read a private cache without credentials?"
    );
    // (Nix 2.8 reports the NAR's 401 as "does not exist".)
    let err = stderr(&out);
    assert!(
        err.contains("401") || err.contains("does not exist"),
        "{err}"
    );

    let fin = ok(nixdelta()
        .arg("--store")
        .arg(&fresh)
        .args(["finish", "--to", &url, "--skip-push"])
        .arg("--state-dir")
        .arg(&state));
    assert!(
        show(&fin).contains("a pull-only job: nothing pushed"),
        "{}",
        show(&fin)
    );
    assert!(!netrc.exists() && !state.join("nix.conf").exists());
}

/// `run` points its command's Nix at the cache; `--no-configure` does not;
/// a bad public key stops it before the command runs.
#[test]
fn run_configures_its_command() {
    let env = Env::new();
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let (sec, _) = env.keygen("run-read-1");
    let cache = env.cache_url();
    ok(nixdelta()
        .arg("--store")
        .arg(env.store())
        .args(["push", "--to", &cache, "--secret-key-file"])
        .arg(&sec)
        .arg(&chain6));
    let (home, nix_config) = user_config(&env);
    let run = |store: &str, extra: &[&str]| {
        let fresh = env.path(store);
        ok(Command::new("nix-store")
            .arg("--store")
            .arg(&fresh)
            .arg("--init"));
        let mut cmd = nixdelta();
        cmd.arg("--store")
            .arg(&fresh)
            .args(["run", "--to", &cache, "--secret-key-file"])
            .arg(&sec)
            .args(extra)
            .args(["--", "nix-build", "--store"])
            .arg(&fresh)
            .arg(example("fib.nix"))
            .args(["-A", "chain6", "--no-out-link", "--max-jobs", "0"])
            .env("XDG_CONFIG_HOME", &home)
            .env("NIX_CONFIG", nix_config)
            .env_remove("NIX_USER_CONF_FILES");
        cmd.output().unwrap()
    };
    let out = run("fresh1", &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stdout_lines(&out).contains(&chain6), "{}", show(&out));
    let out = run("fresh2", &["--no-configure"]);
    assert!(!out.status.success(), "built without the cache?");
    let out = run("fresh3", &["--public-key", "not-a-key"]);
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    assert!(!stderr(&out).contains("will be built"), "{}", show(&out));
}
