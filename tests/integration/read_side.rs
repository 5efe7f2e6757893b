//! The read side: `nixdelta configure` makes a later Nix substitute from
//! the cache we pushed to, on top of the user's own configuration.

use std::process::Command;

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
