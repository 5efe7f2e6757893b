//! The store a job works on, spelt as Nix's `--store` spells it.
//!
//! * nothing: the system store (Nix's `auto`);
//! * `DIR` (absolute or relative path): a chroot store, as `--store DIR`;
//! * `local` or `local?root=DIR`: the same, in URL form;
//! * `daemon`, `unix://SOCKET`, either with `?root=DIR`: through a Nix
//!   daemon. `root` says where this machine sees that daemon's store
//!   (`/mnt` when the host's `/nix` is bind-mounted at `/mnt/nix`).
//!
//! nixdelta reads the DB and files under [`StoreSpec::root`] and hands
//! [`StoreSpec::nix_arg`] to every `nix` command it runs.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StoreSpec {
    /// No `--store`: the system store.
    #[default]
    System,
    /// `--store DIR`.
    Dir(PathBuf),
    /// `local`, `local?root=DIR`.
    Local { root: Option<PathBuf> },
    /// `daemon` (socket `None`) or `unix://SOCKET`, maybe with `?root=DIR`.
    Daemon {
        socket: Option<PathBuf>,
        root: Option<PathBuf>,
    },
}

impl StoreSpec {
    /// Parses a `--store` value. Errors are one line naming the value.
    pub fn parse(s: &str) -> Result<StoreSpec, String> {
        let bad = |why: &str| format!("bad store {s:?}: {why}");
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (base, query) = match s.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (s, None),
        };
        let is_url = base == "local" || base == "daemon" || base == "auto" || base.contains("://");
        if !is_url {
            if query.is_some() {
                return Err(bad("a directory store takes no ?parameters"));
            }
            return Ok(StoreSpec::Dir(PathBuf::from(s)));
        }
        let root = match query {
            None => None,
            Some(q) => Some(root_param(q).map_err(|w| bad(&w))?),
        };
        match base {
            "auto" if root.is_none() => Ok(StoreSpec::System),
            "auto" => Err(bad("use local?root=DIR for a store under a root")),
            "local" => Ok(StoreSpec::Local { root }),
            "daemon" => Ok(StoreSpec::Daemon { socket: None, root }),
            _ => {
                let Some(socket) = base.strip_prefix("unix://") else {
                    return Err(bad(
                        "not a store nixdelta can read (DIR, local, daemon, unix://SOCKET)",
                    ));
                };
                if !socket.starts_with('/') {
                    return Err(bad("the socket path must be absolute (unix:///path)"));
                }
                Ok(StoreSpec::Daemon {
                    socket: Some(PathBuf::from(socket)),
                    root,
                })
            }
        }
    }

    /// Where the store's `nix/` tree is on this machine (`None`: `/`).
    pub fn root(&self) -> Option<&Path> {
        match self {
            StoreSpec::System => None,
            StoreSpec::Dir(d) => Some(d),
            StoreSpec::Local { root } | StoreSpec::Daemon { root, .. } => root.as_deref(),
        }
    }

    /// The `--store` argument for the `nix` commands nixdelta runs
    /// (`None`: give none).
    pub fn nix_arg(&self) -> Option<String> {
        match self {
            StoreSpec::System => None,
            other => Some(other.to_string()),
        }
    }

    /// True when Nix reaches this store through a daemon: nixdelta must
    /// then never write its DB or store directory itself.
    pub fn via_daemon(&self) -> bool {
        matches!(self, StoreSpec::Daemon { .. })
    }

    /// The same store with its root made absolute (a relative root would
    /// mean another thing to a command run elsewhere).
    pub fn absolute(&self) -> StoreSpec {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        match self {
            StoreSpec::System => StoreSpec::System,
            StoreSpec::Dir(d) => StoreSpec::Dir(abs(d)),
            StoreSpec::Local { root } => StoreSpec::Local {
                root: root.as_deref().map(abs),
            },
            StoreSpec::Daemon { socket, root } => StoreSpec::Daemon {
                socket: socket.clone(),
                root: root.as_deref().map(abs),
            },
        }
    }
}

/// The value of `root` in a query string: the only parameter accepted.
fn root_param(query: &str) -> Result<PathBuf, String> {
    let mut root = None;
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("root", v)) if !v.is_empty() => {
                if root.replace(PathBuf::from(v)).is_some() {
                    return Err("root given twice".into());
                }
            }
            Some(("root", _)) => return Err("empty root".into()),
            _ => return Err(format!("unsupported parameter {kv:?} (only root=DIR)")),
        }
    }
    root.ok_or_else(|| "no root=DIR after ?".into())
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_root = |f: &mut fmt::Formatter<'_>, root: &Option<PathBuf>| match root {
            Some(r) => write!(f, "?root={}", r.display()),
            None => Ok(()),
        };
        match self {
            StoreSpec::System => write!(f, "auto"),
            StoreSpec::Dir(d) => write!(f, "{}", d.display()),
            StoreSpec::Local { root } => {
                write!(f, "local")?;
                with_root(f, root)
            }
            StoreSpec::Daemon { socket, root } => {
                match socket {
                    Some(s) => write!(f, "unix://{}", s.display())?,
                    None => write!(f, "daemon")?,
                }
                with_root(f, root)
            }
        }
    }
}

impl std::str::FromStr for StoreSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        StoreSpec::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> StoreSpec {
        StoreSpec::parse(s).unwrap()
    }

    #[test]
    fn a_directory_is_a_chroot_store() {
        assert_eq!(p("/tmp/s"), StoreSpec::Dir("/tmp/s".into()));
        assert_eq!(p("rel/s"), StoreSpec::Dir("rel/s".into()));
        assert_eq!(p("/tmp/s").root(), Some(Path::new("/tmp/s")));
        assert_eq!(p("/tmp/s").nix_arg().as_deref(), Some("/tmp/s"));
        assert!(!p("/tmp/s").via_daemon());
    }

    #[test]
    fn local_urls() {
        assert_eq!(p("local"), StoreSpec::Local { root: None });
        assert_eq!(p("local").root(), None);
        let l = p("local?root=/mnt");
        assert_eq!(l.root(), Some(Path::new("/mnt")));
        assert_eq!(l.nix_arg().as_deref(), Some("local?root=/mnt"));
        assert!(!l.via_daemon());
        assert_eq!(p("auto"), StoreSpec::System);
        assert_eq!(StoreSpec::System.nix_arg(), None);
    }

    #[test]
    fn daemon_urls() {
        let d = p("daemon");
        assert_eq!(d.root(), None);
        assert!(d.via_daemon());
        assert_eq!(d.nix_arg().as_deref(), Some("daemon"));
        let u = p("unix:///mnt/nix/var/nix/daemon-socket/socket?root=/mnt");
        assert_eq!(
            u,
            StoreSpec::Daemon {
                socket: Some("/mnt/nix/var/nix/daemon-socket/socket".into()),
                root: Some("/mnt".into()),
            }
        );
        assert_eq!(u.root(), Some(Path::new("/mnt")));
        assert!(u.via_daemon());
        assert_eq!(
            u.to_string(),
            "unix:///mnt/nix/var/nix/daemon-socket/socket?root=/mnt"
        );
        assert_eq!(p("daemon?root=/r").to_string(), "daemon?root=/r");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "/tmp/x",
            "local",
            "local?root=/a",
            "daemon",
            "unix:///s",
            "unix:///s?root=/r",
        ] {
            assert_eq!(p(s).to_string(), s);
            assert_eq!(p(&p(s).to_string()), p(s));
        }
    }

    #[test]
    fn bad_specs_say_why_in_one_line() {
        for (s, why) in [
            ("", "empty"),
            ("s3://bucket", "not a store nixdelta can read"),
            ("ssh://host", "not a store nixdelta can read"),
            ("unix://rel/sock", "absolute"),
            ("local?root=", "empty root"),
            ("local?", "unsupported parameter"),
            ("daemon?trusted=1", "unsupported parameter \"trusted=1\""),
            ("local?root=/a&root=/b", "twice"),
            ("/dir?root=/a", "no ?parameters"),
            ("auto?root=/a", "local?root=DIR"),
        ] {
            let e = StoreSpec::parse(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
            assert!(e.starts_with("bad store"), "{s}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn absolute_makes_roots_absolute() {
        let a = p("local?root=rel").absolute();
        assert!(a.root().unwrap().is_absolute());
        assert!(p("rel").absolute().root().unwrap().is_absolute());
        assert_eq!(p("daemon").absolute(), p("daemon"));
    }
}
