//! Failed build trees kept (issue 13 item 4, the CLI): `run --keep-failed`
//! runs the command's Nix with keep-failed; the tree of the failed build is
//! packed (size-capped) into the archive backend, and the printed
//! `nixdelta failed-tree fetch` command brings it back.

use crate::helpers::util::*;

const FAILING: &str = r#"let
  busybox = builtins.path {
    name = "busybox-static";
    path = /usr/bin;
    filter = p: t: baseNameOf p == "busybox";
  };
in derivation {
  name = "fails-in-install-SALT";
  system = builtins.currentSystem;
  builder = "${busybox}/busybox";
  args = [ "sh" "-c" ''
    mkdir -p src && echo 'int main() {}' > src/main.c
    ${busybox}/busybox head -c 300000 /dev/zero > big.o
    ln -s /etc/hostname host-link
    echo compiled > build.log
    exit 3
  '' ];
}
"#;

#[test]
fn a_failed_build_s_tree_is_kept_and_fetched_back() {
    let env = Env::new();
    let salt = format!("{}", std::process::id());
    std::fs::write(env.path("fail.nix"), FAILING.replace("SALT", &salt)).unwrap();
    let tmp = env.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let backend = format!("dir:{}", env.path("archives").display());
    let out = env
        .nixdelta(&[
            "run",
            "--keep-failed",
            "--keep-failed-max",
            "100K",
            "--archive",
            &backend,
        ])
        .env("TMPDIR", &tmp)
        .arg("--")
        .arg("nix-build")
        .arg("--store")
        .arg(env.store())
        .arg(env.path("fail.nix"))
        .arg("--no-out-link")
        .output()
        .unwrap();
    let text = show(&out);
    // The command's failure (nix-build: 100) is the run's exit code.
    assert_eq!(out.status.code(), Some(100), "{text}");
    assert!(text.contains("kept 1 failed build trees"), "{text}");
    assert!(text.contains("1 files over the cap left out"), "{text}");
    let fetch = text
        .lines()
        .find_map(|l| l.split("Fetch them: ").nth(1))
        .and_then(|l| l.split(" ; ").next())
        .expect("the fetch command")
        .to_string();
    let args: Vec<&str> = fetch.split_whitespace().collect();
    assert_eq!(args[..2], ["nixdelta", "failed-tree"]);
    let dest = env.path("fetched");
    ok(nixdelta()
        .current_dir(env.dir.path())
        .args(&args[1..args.len() - 1])
        .arg(&dest));
    let tree = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a tree");
    assert!(tree
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("nix-build-fails-in-install"));
    assert_eq!(
        std::fs::read_to_string(tree.join("build.log")).unwrap(),
        "compiled\n"
    );
    assert!(tree.join("src/main.c").exists());
    // Over the cap: listed, not packed; a link stays a link.
    assert!(!tree.join("big.o").exists());
    let cut = std::fs::read_to_string(dest.join("CUT.txt")).unwrap();
    assert!(cut.contains("big.o"), "{cut}");
    assert_eq!(
        std::fs::read_link(tree.join("host-link")).unwrap(),
        std::path::Path::new("/etc/hostname")
    );

    // The packed file itself (as a CI artifact is downloaded) unpacks with --file.
    let packed = walk(&env.path("archives"))
        .into_iter()
        .find(|p| p.to_string_lossy().contains("failed-run"))
        .expect("the packed trees in the archive dir");
    let from_file = env.path("from-file");
    ok(nixdelta()
        .args(["failed-tree", "fetch", "--file"])
        .arg(&packed)
        .arg("--out")
        .arg(&from_file));
    let tree2 = std::fs::read_dir(&from_file)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a tree from the file");
    assert_eq!(
        std::fs::read_to_string(tree2.join("build.log")).unwrap(),
        "compiled\n"
    );

    // Without --keep-failed nothing is kept or saved.
    let plain = env
        .nixdelta(&["run", "--archive", &backend])
        .env("TMPDIR", &tmp)
        .arg("--")
        .arg("nix-build")
        .arg("--store")
        .arg(env.store())
        .arg(env.path("fail.nix"))
        .arg("--no-out-link")
        .output()
        .unwrap();
    assert_eq!(plain.status.code(), Some(100), "{}", show(&plain));
    assert!(
        !show(&plain).contains("failed build trees"),
        "{}",
        show(&plain)
    );
}

/// `start --keep-failed` and `finish`, outside a CI: start makes the job's
/// Nix keep failed builds (a configuration of that alone, exported through
/// `$NIXDELTA_ENV_FILE`: there is no cache to read); finish stores the
/// tree made since start in the archive backend under `failed-…`. A tree
/// kept before start is not this job's and stays out.
#[test]
fn start_keep_failed_then_finish_store_the_job_s_failed_tree() {
    let env = Env::new();
    let tmp = env.path("tmp");
    let earlier = tmp.join("nix-build-earlier.drv-0");
    std::fs::create_dir_all(&earlier).unwrap();
    std::fs::write(earlier.join("secret.txt"), "another job's").unwrap();
    // Start's clock is in seconds: the earlier tree is a second older.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let backend = format!("dir:{}", env.path("archives").display());
    let state = env.path("state").display().to_string();
    let env_file = env.path("job.env");
    let out = ok(env
        .nixdelta(&["start", "--keep-failed", "--archive", &backend])
        .args(["--state-dir", &state])
        .current_dir(env.dir.path())
        .env("TMPDIR", &tmp)
        .env("NIXDELTA_ENV_FILE", &env_file));
    let text = show(&out);
    assert!(
        text.contains("the job's Nix keeps failed build directories"),
        "{text}"
    );
    let exported = std::fs::read_to_string(&env_file).unwrap();
    let files = exported
        .lines()
        .find_map(|l| l.strip_prefix("export NIX_USER_CONF_FILES='"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("NIX_USER_CONF_FILES exported")
        .to_string();
    let conf = files.split(':').next().unwrap();
    assert!(
        std::fs::read_to_string(conf)
            .unwrap()
            .contains("keep-failed = true"),
        "{conf}"
    );
    // The job's build, reading what start exported, fails in its install phase.
    let build = env
        .nix_on(&env.store(), "nix-build")
        .arg(example("fails-in-install.nix"))
        .arg("--no-out-link")
        .env("TMPDIR", &tmp)
        .env("NIX_USER_CONF_FILES", &files)
        .output()
        .unwrap();
    assert!(!build.status.success());
    assert!(
        show(&build).contains("keeping build directory"),
        "{}",
        show(&build)
    );

    let out = ok(env
        .nixdelta(&["finish", "--archive", &backend])
        .args(["--state-dir", &state])
        .current_dir(env.dir.path())
        .env("TMPDIR", &tmp));
    let text = show(&out);
    assert!(text.contains("kept 1 failed build trees"), "{text}");
    let fetch = text
        .lines()
        .find_map(|l| l.split("Fetch them: ").nth(1))
        .and_then(|l| l.split(" ; ").next())
        .expect("the fetch command")
        .to_string();
    let args: Vec<&str> = fetch.split_whitespace().collect();
    assert_eq!(args[..3], ["nixdelta", "failed-tree", "fetch"], "{fetch}");
    assert!(args.contains(&"--key"), "{fetch}");
    let fresh = env.path("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    ok(nixdelta().current_dir(&fresh).args(&args[1..]));
    let out = fresh.join("failed-tree");
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"CUT.txt".to_string()), "{names:?}");
    let tree = names
        .iter()
        .find(|n| n.starts_with("nix-build-fails-in-install.drv-"))
        .expect("the job's tree, and not the earlier one");
    assert_eq!(
        std::fs::read_to_string(out.join(tree).join("install-progress.txt")).unwrap(),
        "copied 1 of 2 files\n"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
