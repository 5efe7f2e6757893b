//! The Nix daemon of a multi-user install: whether the job's Nix goes
//! through it, whether it trusts the job's user, its `nix.conf`, and
//! changing that file (with `sudo -n` when not root, as on GitHub's hosted
//! runners) and restarting it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::nix::conf::NixConf;
use crate::nix::StoreSpec;

/// The job's user, as the daemon sees it.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub root: bool,
}

/// The user this process runs as, with its groups.
pub fn current_user() -> User {
    // SAFETY: getuid/getgroups/getpwuid/getgrgid with valid arguments; the
    // returned records are copied out before the next call.
    unsafe {
        let uid = libc::getuid();
        let pw = libc::getpwuid(uid);
        let name = if pw.is_null() {
            uid.to_string()
        } else {
            std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned()
        };
        let n = libc::getgroups(0, std::ptr::null_mut());
        let mut gids = vec![0 as libc::gid_t; n.max(0) as usize];
        let n = libc::getgroups(n, gids.as_mut_ptr());
        gids.truncate(n.max(0) as usize);
        gids.push(libc::getgid());
        let mut groups: Vec<String> = gids
            .iter()
            .filter_map(|&g| {
                let gr = libc::getgrgid(g);
                (!gr.is_null()).then(|| {
                    std::ffi::CStr::from_ptr((*gr).gr_name)
                        .to_string_lossy()
                        .into_owned()
                })
            })
            .collect();
        groups.sort();
        groups.dedup();
        User {
            name,
            groups,
            root: uid == 0,
        }
    }
}

/// The daemon's socket, as Nix finds it.
pub fn socket() -> PathBuf {
    std::env::var_os("NIX_DAEMON_SOCKET_PATH")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/nix/var/nix/daemon-socket/socket"))
}

/// Whether the job's Nix goes through the daemon: `NIX_REMOTE=daemon`
/// (or a `unix://` socket), or, unset, as Nix decides it: the store's
/// database is not writable and the socket exists. A `daemon` or
/// `unix://` store always, a chroot or `local` store never.
pub fn in_use(store: &StoreSpec) -> bool {
    match store {
        StoreSpec::System => {}
        other => return other.via_daemon(),
    }
    match std::env::var("NIX_REMOTE").ok().filter(|v| !v.is_empty()) {
        Some(r) => r == "daemon" || r.starts_with("unix://"),
        None => {
            let db = std::ffi::CString::new("/nix/var/nix/db").expect("no NUL");
            // SAFETY: access() with a valid C string.
            let writable = unsafe { libc::access(db.as_ptr(), libc::W_OK) } == 0;
            !writable && socket().exists()
        }
    }
}

/// What the daemon says of this user's trust, where Nix reports it
/// (`nix store ping`, `Trusted:` since Nix 2.15); `None` for older Nix.
pub fn reported_trust(store: &StoreSpec) -> Option<bool> {
    let url = match store {
        StoreSpec::Daemon { .. } => store.to_string(),
        _ => "daemon".to_string(),
    };
    let out = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command"])
        .args(["store", "ping", "--json", "--store", &url])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        return match &v["trusted"] {
            serde_json::Value::Bool(b) => Some(*b),
            serde_json::Value::Number(n) => Some(n.as_u64() == Some(1)),
            _ => None,
        };
    }
    None
}

/// The daemon's configuration file: `$NIX_CONF_DIR/nix.conf`, as Nix.
pub fn conf_path() -> PathBuf {
    std::env::var_os("NIX_CONF_DIR")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/nix"))
        .join("nix.conf")
}

/// The daemon's settings (empty when the file is missing or unreadable).
pub fn read_conf() -> NixConf {
    NixConf::parse(&std::fs::read_to_string(conf_path()).unwrap_or_default())
}

/// Appends `text` to the daemon's `nix.conf`: directly as root, else
/// through `sudo -n tee -a` (never a password prompt).
pub fn append_conf(text: &str, user: &User) -> Result<()> {
    let path = conf_path();
    let fail = |msg: String| {
        Error::Store(format!(
            "cannot add to the Nix daemon's configuration {}: {msg}",
            path.display()
        ))
    };
    if user.root {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| fail(e.to_string()))?;
        return f
            .write_all(text.as_bytes())
            .map_err(|e| fail(e.to_string()));
    }
    let mut child = Command::new("sudo")
        .args(["-n", "tee", "-a"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("not root, and sudo cannot run ({e})")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "not root, and `sudo -n` refused ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Restarts the daemon so that it reads its configuration again, and
/// waits for its socket. `$NIXDELTA_DAEMON_RESTART` (a shell command)
/// first, then systemd, then launchd; says how it did it.
pub fn restart(user: &User) -> Result<String> {
    let custom = std::env::var("NIXDELTA_DAEMON_RESTART")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let (how, argv): (String, Vec<String>) = if let Some(c) = custom {
        (
            "$NIXDELTA_DAEMON_RESTART".into(),
            vec!["sh".into(), "-c".into(), c],
        )
    } else if Path::new("/run/systemd/system").exists() {
        (
            "systemctl restart nix-daemon".into(),
            ["systemctl", "restart", "nix-daemon.service"]
                .map(String::from)
                .to_vec(),
        )
    } else if cfg!(target_os = "macos") {
        (
            "launchctl kickstart -k system/org.nixos.nix-daemon".into(),
            [
                "launchctl",
                "kickstart",
                "-k",
                "system/org.nixos.nix-daemon",
            ]
            .map(String::from)
            .to_vec(),
        )
    } else {
        return Err(Error::Store(
            "the Nix daemon's configuration changed, but there is no systemd or launchd here to \
             restart it: restart nix-daemon yourself, or set NIXDELTA_DAEMON_RESTART to the \
             command that does"
                .into(),
        ));
    };
    let mut cmd = if user.root {
        Command::new(&argv[0])
    } else {
        let mut c = Command::new("sudo");
        c.arg("-n").arg(&argv[0]);
        c
    };
    let out = cmd
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Store(format!("cannot restart the Nix daemon ({how}): {e}")))?;
    if !out.status.success() {
        return Err(Error::Store(format!(
            "restarting the Nix daemon ({how}) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(socket()).is_err() {
        if t.elapsed() > Duration::from_secs(20) {
            return Err(Error::Store(format!(
                "the Nix daemon did not come back on {} after {how}",
                socket().display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(how)
}
