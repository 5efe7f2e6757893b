//! The read side of a job: `start` makes the rest of the job's Nix
//! substitute from the binary cache (and the extra caches the user names).
//! It writes a `nix.conf` (and, for a cache with credentials, a netrc file
//! of mode 0600) into the state directory, which `finish` removes, and
//! hands the front end the environment that points Nix at it.
//!
//! Why `NIX_USER_CONF_FILES` and not `NIX_CONFIG`: a job often sets its
//! own `NIX_CONFIG` (`env:` of a job or step, e.g. for `access-tokens`),
//! and that would silently replace one we exported; `NIX_USER_CONF_FILES`
//! is rarely set, and we keep whatever it (or Nix's default user files)
//! held after our file. cachix-action, hestia and niks3 do the same. The
//! one thing that undoes it: a plain `substituters =` (not `extra-`) in
//! `NIX_CONFIG`, which Nix applies after every file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cache::http::TOKEN_ENV;
use crate::error::{Error, Result};
use crate::pipeline::daemon::{trust, Trust};
use crate::pipeline::read_side::{read_side, user_conf_files, ReadSide, Request};
use crate::secret::Secret;
use crate::store::daemon;
use crate::store::features::nix_reads_s3;

use super::config::JobConfig;
use super::keys::{load_public_key, load_secret_key};

/// The file names in the state directory.
pub const CONF_FILE: &str = "nix.conf";
pub const NETRC_FILE: &str = "netrc";

/// The environment lookup (the process's, or a test's).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What the read side set up.
#[derive(Debug)]
pub struct Configured {
    pub side: ReadSide,
    pub conf_file: PathBuf,
    pub netrc_file: Option<PathBuf>,
    /// Variables for the rest of the job.
    pub env: Vec<(String, String)>,
    /// Values a CI log must mask (the cache's password or token).
    pub secrets: Vec<Secret<String>>,
    /// How the Nix daemon treats it, when the job's Nix uses one.
    pub daemon: Option<Daemon>,
}

/// The Nix daemon and the read side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Daemon {
    /// The job's user is trusted.
    Trusted,
    /// Not trusted, but the daemon allows the caches and keys.
    Allowed,
    /// The daemon ignores them: `lines` are what its `conf` lacks.
    Ignored {
        user: String,
        conf: PathBuf,
        lines: Vec<String>,
    },
    /// `--daemon` added `lines` to `conf` and restarted it (`how`).
    Configured {
        conf: PathBuf,
        lines: Vec<String>,
        how: String,
    },
    /// `--daemon` could not (no root, `sudo -n` refused, no restart): the
    /// daemon still ignores the cache. Fatal only with `--strict`.
    Failed {
        conf: PathBuf,
        lines: Vec<String>,
        error: String,
    },
}

impl Daemon {
    /// The one line a user reads when the daemon ignores the cache.
    pub fn warning(&self) -> Option<String> {
        match self {
            Daemon::Ignored { user, conf, lines } => Some(format!(
                "the Nix daemon ignores this job's binary cache ({user} is not a trusted user): \
                 add `{}` to {}, then restart nix-daemon; or let nixdelta do it: --daemon \
                 (input configure-daemon)",
                lines.join("` and `"),
                conf.display()
            )),
            Daemon::Failed { conf, lines, error } => Some(format!(
                "--daemon failed, so the Nix daemon still ignores this job's binary cache: \
                 {error}; add `{}` to {} as root, then restart nix-daemon",
                lines.join("` and `"),
                conf.display()
            )),
            _ => None,
        }
    }

    /// The line saying what `--daemon` changed, when it changed something.
    pub fn notice(&self) -> Option<String> {
        let Daemon::Configured { conf, lines, how } = self else {
            return None;
        };
        Some(format!(
            "added `{}` to {} and restarted the Nix daemon ({how})",
            lines.join("` and `"),
            conf.display()
        ))
    }
}

/// The read side `cfg` asks for, checked (keys, URLs) but not written:
/// `None` when there is nothing to read or `--no-configure`.
pub fn plan(cfg: &JobConfig, env: Env) -> Result<Option<ReadSide>> {
    let r = &cfg.read;
    let to = cfg.push.to.as_deref().filter(|t| !t.trim().is_empty());
    if !r.configure || (to.is_none() && r.extra_substituters.is_empty()) {
        return Ok(None);
    }
    let extra_keys = r
        .extra_public_keys
        .iter()
        .map(|k| load_public_key("--extra-trusted-public-key", k))
        .collect::<Result<Vec<_>>>()?;
    let key = match &r.public_key {
        Some(k) => Some(load_public_key("--public-key", k)?),
        None if cfg.push.secret_key_file.is_some() || env("NIXDELTA_SECRET_KEY").is_some() => {
            // Only ever the public half: the secret stays where it is.
            Some(load_secret_key(cfg.push.secret_key_file.as_deref())?.public_key())
        }
        None => None,
    };
    let mut to = to;
    let mut warnings = Vec::new();
    if key.is_none() && to.is_some() && !extra_keys.is_empty() {
        // No key of our cache: only the extra caches are read.
        warnings.push(
            "no public key for the binary cache (public-key, or a signing key): Nix reads only \
             the extra substituters"
                .to_string(),
        );
        to = None;
    }
    let Some(key) = key.or_else(|| extra_keys.first().cloned()) else {
        return Err(Error::Usage(
            "the binary cache cannot be read without its public key: give --public-key \
             (input public-key) or a signing key, or --no-configure"
                .into(),
        ));
    };
    let wants_s3 = r.read_url.is_none() && to.is_some_and(|t| t.starts_with("s3://"));
    let token = env(TOKEN_ENV);
    let req = Request {
        to,
        read_url: r.read_url.as_deref(),
        nix_reads_s3: wants_s3 && nix_reads_s3(),
        token: token.as_deref(),
        extra_substituters: &r.extra_substituters,
        extra_public_keys: &extra_keys,
    };
    let mut side = read_side(&req, &key)?;
    side.warnings.splice(0..0, warnings);
    Ok(Some(side))
}

/// Writes the read side into `dir` and returns the environment that
/// points the job's Nix at it.
pub fn write(cfg: &JobConfig, side: ReadSide, dir: &Path, env: Env) -> Result<Configured> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut secrets = Vec::new();
    let netrc_file = match side.netrc(existing_netrc(env).as_deref().map(|s| s.as_str())) {
        Some(text) => {
            let f = dir.join(NETRC_FILE);
            write_private(&f, text.as_bytes())?;
            if let Some(c) = &side.credentials {
                secrets.push(c.password.clone());
            }
            Some(f)
        }
        None => None,
    };
    let conf_file = dir.join(CONF_FILE);
    let netrc_str = netrc_file
        .as_ref()
        .map(|f| f.to_string_lossy().into_owned());
    let mut conf = side.nix_conf(netrc_str.as_deref());
    if cfg.read.keep_failed {
        conf.push_str(KEEP_FAILED);
    }
    std::fs::write(&conf_file, conf).map_err(|e| io(&conf_file, e))?;
    seed_cache_info(cfg, env);
    let files = user_conf_files(&conf_file.to_string_lossy(), env);
    let daemon = check_daemon(cfg, &side)?;
    Ok(Configured {
        side,
        conf_file,
        netrc_file,
        env: vec![("NIX_USER_CONF_FILES".to_string(), files)],
        secrets,
        daemon,
    })
}

/// A job that will push writes the cache's `nix-cache-info` now, if it
/// is missing: the job's Nix reads the cache from the start, and an empty
/// one would make it warn that this "does not appear to be a binary
/// cache" until the first push. Best effort: the push writes it anyway.
fn seed_cache_info(cfg: &JobConfig, env: Env) {
    let has_key = cfg.push.secret_key_file.is_some() || env("NIXDELTA_SECRET_KEY").is_some();
    let Some(to) = cfg.push.to.as_deref().filter(|_| has_key && !cfg.push.skip) else {
        return;
    };
    let store_dir = crate::store::Store::open(&cfg.store)
        .map(|s| s.store_dir().to_string())
        .unwrap_or_else(|_| crate::nix::DEFAULT_STORE_DIR.to_string());
    let r = crate::cache::open(to).and_then(|c| c.ensure_cache_info(&store_dir));
    if let Err(e) = r {
        tracing::debug!("nix-cache-info not written at start: {e}");
    }
}

/// What `--keep-failed` adds to the job's Nix configuration. Not a list
/// setting, so the user's own files (read after ours) could still turn it
/// off; their `NIX_CONFIG` too.
const KEEP_FAILED: &str =
    "# nixdelta --keep-failed: failed builds leave their build directory\nkeep-failed = true\n";

/// `--keep-failed` without a cache to read: a configuration of that one
/// setting, and the environment that makes the job's Nix read it.
pub fn write_keep_failed(dir: &Path, env: Env) -> Result<Vec<(String, String)>> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let conf_file = dir.join(CONF_FILE);
    std::fs::write(&conf_file, KEEP_FAILED).map_err(|e| io(&conf_file, e))?;
    let files = user_conf_files(&conf_file.to_string_lossy(), env);
    Ok(vec![("NIX_USER_CONF_FILES".to_string(), files)])
}

/// How the daemon (when the job's Nix uses one) treats the read side;
/// with `--daemon`, what it lacks is added to its `nix.conf` once (the
/// lines are only those missing) and it is restarted.
fn check_daemon(cfg: &JobConfig, side: &ReadSide) -> Result<Option<Daemon>> {
    if !daemon::in_use(&cfg.store) {
        return Ok(None);
    }
    let user = daemon::current_user();
    let reported = daemon::reported_trust(&cfg.store);
    let judge = || {
        trust(
            &user.name,
            &user.groups,
            reported,
            &daemon::read_conf(),
            &side.substituters,
            &side.public_keys,
        )
    };
    let lines = match judge() {
        Trust::Trusted => return Ok(Some(Daemon::Trusted)),
        Trust::Allowed => return Ok(Some(Daemon::Allowed)),
        Trust::Ignored { lines } => lines,
    };
    let conf = daemon::conf_path();
    if !cfg.read.configure_daemon {
        return Ok(Some(Daemon::Ignored {
            user: user.name,
            conf,
            lines,
        }));
    }
    let text = format!(
        "\n# Added by nixdelta (--daemon): untrusted jobs may read these caches.\n{}\n",
        lines.join("\n")
    );
    let done = daemon::append_conf(&text, &user).and_then(|()| daemon::restart(&user));
    match done {
        Ok(how) => Ok(Some(Daemon::Configured { conf, lines, how })),
        Err(e) if !cfg.strict => Ok(Some(Daemon::Failed {
            conf,
            lines,
            error: e.to_string(),
        })),
        Err(e) => Err(e),
    }
}

/// Removes what [`write`] left in `dir` (the netrc holds a password).
pub fn remove(dir: &Path) {
    for f in [NETRC_FILE, CONF_FILE] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// The netrc Nix reads today, which ours replaces for this job and so
/// must carry on: nixdelta's (`$NIXDELTA_NETRC_FILE`), else Nix's default.
fn existing_netrc(env: Env) -> Option<zeroize::Zeroizing<String>> {
    let file = env("NIXDELTA_NETRC_FILE")
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/nix/netrc"));
    std::fs::read_to_string(file)
        .ok()
        .map(zeroize::Zeroizing::new)
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, e))?;
    f.write_all(data).map_err(|e| io(path, e))
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        msg: format!("cannot write the job's Nix configuration: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::config::{PushConfig, ReadConfig};
    use crate::nix::SecretKey;

    fn cfg(to: &str, public_key: Option<String>) -> JobConfig {
        JobConfig {
            push: PushConfig {
                to: Some(to.into()),
                ..Default::default()
            },
            read: ReadConfig {
                configure: true,
                public_key,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn writes_the_conf_and_a_private_netrc() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let k = SecretKey::generate("c-1").unwrap().public_key().to_string();
        let env = |n: &str| match n {
            "HOME" => Some("/home/u".to_string()),
            "NIXDELTA_NETRC_FILE" => Some("/nonexistent".to_string()),
            _ => None,
        };
        let c = cfg("https://ci:s3cret@cache.example.org", Some(k.clone()));
        let side = plan(&c, &env).unwrap().unwrap();
        let done = write(&c, side, dir.path(), &env).unwrap();
        let conf = std::fs::read_to_string(&done.conf_file).unwrap();
        assert!(conf.contains("extra-substituters = https://cache.example.org\n"));
        assert!(conf.contains(&format!("extra-trusted-public-keys = {k}\n")));
        let netrc = done.netrc_file.as_ref().unwrap();
        assert!(conf.contains(&format!("netrc-file = {}", netrc.display())));
        assert!(!conf.contains("s3cret"));
        let mode = std::fs::metadata(netrc).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(netrc).unwrap(),
            "machine cache.example.org login ci password s3cret\n"
        );
        assert_eq!(done.secrets[0].expose(), "s3cret");
        assert_eq!(
            done.env[0].1,
            format!(
                "{}:/home/u/.config/nix/nix.conf:/etc/xdg/nix/nix.conf",
                done.conf_file.display()
            )
        );
        remove(dir.path());
        assert!(!netrc.exists() && !done.conf_file.exists());
        assert!(!conf.contains("keep-failed"));
        // --keep-failed: the same file, one setting more.
        let mut c = c;
        c.read.keep_failed = true;
        let side = plan(&c, &env).unwrap().unwrap();
        let done = write(&c, side, dir.path(), &env).unwrap();
        let conf = std::fs::read_to_string(&done.conf_file).unwrap();
        assert!(conf.contains("extra-substituters = https://cache.example.org\n"));
        assert!(conf.contains("\nkeep-failed = true\n"), "{conf}");
    }

    #[test]
    fn a_key_is_needed_and_off_means_off() {
        let none = |_: &str| None;
        let e = plan(&cfg("file:///c", None), &none).unwrap_err();
        assert!(e.to_string().contains("--public-key"), "{e}");
        let mut off = cfg("file:///c", None);
        off.read.configure = false;
        assert!(plan(&off, &none).unwrap().is_none());
        // A secret pasted as the public key is not echoed.
        let sk = SecretKey::generate("c-1")
            .unwrap()
            .to_file_string()
            .to_string();
        let e = plan(&cfg("file:///c", Some(sk.clone())), &none).unwrap_err();
        assert!(!e.to_string().contains(&sk[5..]), "{e}");
    }
}
