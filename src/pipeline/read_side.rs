//! The read side: the Nix settings that make a job's Nix substitute from
//! the binary cache we push to (and any other cache the user names), added
//! to what is configured, never replacing it: `extra-substituters`,
//! `extra-trusted-public-keys`, `narinfo-cache-negative-ttl = 0` (so that a
//! miss an earlier job cached does not hide a path pushed since), and a
//! `netrc-file` when the cache needs credentials. Pure: the job writes the
//! files, the front ends export them.

use url::Url;

use crate::error::{Error, Result};
use crate::net::redact::without_userinfo;
use crate::nix::PublicKey;
use crate::secret::Secret;

/// What the read side is computed from.
#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    /// The binary cache the job pushes to (`None`: only the extra caches).
    pub to: Option<&'a str>,
    /// The URL Nix reads it from, when not `to` (e.g. an S3 bucket's
    /// public HTTPS URL).
    pub read_url: Option<&'a str>,
    /// Whether this job's Nix opens `s3://` stores.
    pub nix_reads_s3: bool,
    /// A bearer token for an http(s) cache (`$NIXDELTA_CACHE_TOKEN`).
    pub token: Option<&'a str>,
    /// Other caches to read (`extra-pull-substituters`).
    pub extra_substituters: &'a [String],
    /// Their keys (`extra-trusted-public-keys`).
    pub extra_public_keys: &'a [PublicKey],
}

/// What this job's Nix is told to read.
#[derive(Clone, Debug)]
pub struct ReadSide {
    /// Substituter URLs as Nix reads them: our cache (when Nix can read
    /// it), then the extra ones.
    pub substituters: Vec<String>,
    /// `name:base64`, ours first.
    pub public_keys: Vec<String>,
    /// Credentials Nix needs for our cache, for its netrc file.
    pub credentials: Option<Credentials>,
    /// Things the user should know (a URL Nix cannot read).
    pub warnings: Vec<String>,
}

/// One netrc entry. The password never reaches `Debug` or a message.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub host: String,
    /// `None` for a token: Nix sends netrc entries as HTTP basic auth,
    /// which token-checking caches (attic, cachix) read as the password.
    pub login: Option<String>,
    pub password: Secret<String>,
}

/// The read side of `req`, with `public_key` for our cache.
pub fn read_side(req: &Request, public_key: &PublicKey) -> Result<ReadSide> {
    let mut side = ReadSide {
        substituters: Vec::new(),
        public_keys: vec![public_key.to_string()],
        credentials: None,
        warnings: Vec::new(),
    };
    let given = req.read_url.map(str::trim).filter(|u| !u.is_empty());
    if let Some(url) = given.or(req.to) {
        ours(&mut side, req, url, given.is_some())?;
    }
    for s in req.extra_substituters {
        check_substituter(s)?;
        if !side.substituters.contains(s) {
            side.substituters.push(s.clone());
        }
    }
    for k in req.extra_public_keys {
        let k = k.to_string();
        if !side.public_keys.contains(&k) {
            side.public_keys.push(k);
        }
    }
    Ok(side)
}

/// Our cache's substituter (and credentials), read from `url`.
fn ours(side: &mut ReadSide, req: &Request, url: &str, given: bool) -> Result<()> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        "file" | "http" | "https" => {
            if scheme != "file" {
                side.credentials = credentials(url, req.token)?;
            }
            side.substituters.push(without_userinfo(url));
        }
        "s3" if req.nix_reads_s3 || given => side.substituters.push(url.to_string()),
        "s3" => side.warnings.push(format!(
            "this job's Nix cannot read s3:// (it was built without S3 support), so it will not \
             substitute from {}: give `substituter` / --read-url (e.g. the bucket's HTTPS URL)",
            url.split('?').next().unwrap_or(url)
        )),
        _ => {
            return Err(Error::Usage(format!(
                "{}: not a binary cache URL Nix reads (file://, http(s)://, s3://)",
                without_userinfo(url)
            )))
        }
    }
    if let Some(s) = side.substituters.last() {
        check_substituter(s)?;
    }
    Ok(())
}

/// A substituter Nix can be given on one `nix.conf` line.
fn check_substituter(s: &str) -> Result<()> {
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(Error::Usage(format!(
            "{:?}: a substituter URL is one word",
            without_userinfo(s)
        )));
    }
    if !s.contains("://") {
        return Err(Error::Usage(format!(
            "{}: a substituter is a store URL (https://…, s3://…, file://…)",
            without_userinfo(s)
        )));
    }
    if without_userinfo(s) != s {
        return Err(Error::Usage(format!(
            "{}: credentials of an extra substituter go in Nix's netrc-file, not the URL",
            without_userinfo(s)
        )));
    }
    Ok(())
}

/// The netrc entry for `url`: its user info, else `token`.
fn credentials(url: &str, token: Option<&str>) -> Result<Option<Credentials>> {
    let parsed = Url::parse(url).map_err(|e| {
        Error::Usage(format!(
            "{}: invalid URL: {e}",
            url.split(['?', '#'])
                .next()
                .map(without_userinfo)
                .unwrap_or_default()
        ))
    })?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    if !parsed.username().is_empty() {
        return Ok(Some(Credentials {
            host,
            login: Some(decode(parsed.username())),
            password: Secret::new(parsed.password().map(decode).unwrap_or_default()),
        }));
    }
    Ok(token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| Credentials {
            host,
            login: None,
            password: Secret::new(t.to_string()),
        }))
}

impl ReadSide {
    /// The settings, one per line, in `nix.conf` syntax; `netrc` is the
    /// file holding [`ReadSide::credentials`], when there are any.
    pub fn nix_conf(&self, netrc: Option<&str>) -> String {
        let mut s = String::new();
        if !self.substituters.is_empty() {
            s += &format!("extra-substituters = {}\n", self.substituters.join(" "));
        }
        s += &format!(
            "extra-trusted-public-keys = {}\nnarinfo-cache-negative-ttl = 0\n",
            self.public_keys.join(" ")
        );
        if let Some(f) = netrc {
            s += &format!("netrc-file = {f}\n");
        }
        s
    }

    /// The netrc file Nix is pointed at: our entry first (curl takes the
    /// first that matches), then `existing` (the netrc Nix read before,
    /// which `netrc-file` would otherwise hide).
    pub fn netrc(&self, existing: Option<&str>) -> Option<zeroize::Zeroizing<String>> {
        let c = self.credentials.as_ref()?;
        let mut s = zeroize::Zeroizing::new(format!("machine {}", c.host));
        if let Some(l) = &c.login {
            s.push_str(&format!(" login {l}"));
        }
        s.push_str(&format!(" password {}\n", c.password.expose()));
        if let Some(e) = existing.filter(|e| !e.trim().is_empty()) {
            s.push_str(e);
            if !e.ends_with('\n') {
                s.push('\n');
            }
        }
        Some(s)
    }

    /// `NIX_CONFIG` with these settings after `existing` (the job's own
    /// `NIX_CONFIG`, kept: Nix applies it after the config files, and
    /// `extra-` settings add to whatever came before).
    pub fn nix_config(&self, existing: Option<&str>, netrc: Option<&str>) -> String {
        let mine = self.nix_conf(netrc);
        match existing.map(str::trim_end).filter(|e| !e.is_empty()) {
            Some(e) => format!("{e}\n{mine}"),
            None => mine,
        }
    }

    /// A shell line exporting [`ReadSide::nix_config`].
    pub fn env(&self, existing: Option<&str>, netrc: Option<&str>) -> String {
        shell_export("NIX_CONFIG", &self.nix_config(existing, netrc))
    }

    /// The `$GITHUB_ENV` entry setting `NIX_CONFIG` for later steps.
    pub fn github_env(&self, existing: Option<&str>, netrc: Option<&str>) -> String {
        github_env_entry("NIX_CONFIG", &self.nix_config(existing, netrc))
    }
}

/// `export NAME='value'` for a POSIX shell.
pub fn shell_export(name: &str, value: &str) -> String {
    format!("export {name}='{}'\n", value.replace('\'', r"'\''"))
}

/// A `$GITHUB_ENV` entry in the multi-line form, with a delimiter the
/// value cannot contain.
pub fn github_env_entry(name: &str, value: &str) -> String {
    let mut delim = "NIXDELTA_EOF".to_string();
    while value.contains(&delim) {
        delim.push('_');
    }
    format!("{name}<<{delim}\n{}\n{delim}\n", value.trim_end())
}

/// `NIX_USER_CONF_FILES` with `ours` first. Nix reads that list instead
/// of its default user files (`$XDG_CONFIG_HOME/nix/nix.conf`, then each
/// `$XDG_CONFIG_DIRS/…/nix/nix.conf`), the first file winning; so those
/// defaults (or the list already set) follow ours, and the user's
/// configuration is still read.
pub fn user_conf_files(ours: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut files = vec![ours.to_string()];
    match env("NIX_USER_CONF_FILES").filter(|v| !v.is_empty()) {
        Some(list) => files.extend(
            list.split(':')
                .filter(|f| !f.is_empty() && *f != ours)
                .map(String::from),
        ),
        None => {
            let config_home = env("XDG_CONFIG_HOME")
                .filter(|v| !v.is_empty())
                .or_else(|| env("HOME").map(|h| format!("{}/.config", h.trim_end_matches('/'))));
            files.extend(config_home.map(|h| format!("{h}/nix/nix.conf")));
            let dirs = env("XDG_CONFIG_DIRS")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "/etc/xdg".into());
            files.extend(
                dirs.split(':')
                    .filter(|d| !d.is_empty())
                    .map(|d| format!("{d}/nix/nix.conf")),
            );
        }
    }
    files.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::SecretKey;

    fn key(name: &str) -> PublicKey {
        SecretKey::generate(name).unwrap().public_key()
    }

    fn side(to: &str) -> Result<ReadSide> {
        read_side(
            &Request {
                to: Some(to),
                ..Default::default()
            },
            &key("ci.example.org-1"),
        )
    }

    #[test]
    fn each_target_kind() {
        let k = key("ci.example.org-1");
        let req = |to| Request {
            to: Some(to),
            ..Default::default()
        };
        let f = read_side(&req("file:///srv/cache"), &k).unwrap();
        assert_eq!(
            f.nix_conf(None),
            format!(
                "extra-substituters = file:///srv/cache\nextra-trusted-public-keys = {k}\nnarinfo-cache-negative-ttl = 0\n"
            )
        );
        assert!(f.warnings.is_empty() && f.credentials.is_none());
        let h = read_side(&req("https://u:p%40w@cache.example.org/x?priority=50"), &k).unwrap();
        assert_eq!(h.substituters, ["https://cache.example.org/x?priority=50"]);
        let c = h.credentials.as_ref().unwrap();
        assert_eq!(
            (c.host.as_str(), c.login.as_deref()),
            ("cache.example.org", Some("u"))
        );
        assert_eq!(c.password.expose(), "p@w");
        let conf = h.nix_conf(Some("/tmp/n/netrc"));
        assert!(!conf.contains("p@w") && conf.ends_with("netrc-file = /tmp/n/netrc\n"));
        assert!(!format!("{h:?}").contains("p@w"));

        // s3:// as given when Nix reads it; else a warning and no substituter.
        let s3 = |nix_reads_s3, read_url| Request {
            to: Some("s3://b?region=eu-west-1&endpoint=http://127.0.0.1:9000"),
            nix_reads_s3,
            read_url,
            ..Default::default()
        };
        let s = read_side(&s3(true, None), &k).unwrap();
        assert_eq!(s.substituters, [s3(true, None).to.unwrap()]);
        let s = read_side(&s3(false, None), &k).unwrap();
        assert!(s.substituters.is_empty() && s.warnings[0].contains("--read-url"));
        assert!(!s.nix_conf(None).contains("extra-substituters"));
        let r = read_side(&s3(false, Some("https://b.s3.eu-west-1.amazonaws.com")), &k).unwrap();
        assert_eq!(r.substituters, ["https://b.s3.eu-west-1.amazonaws.com"]);
        assert!(r.warnings.is_empty());

        assert!(side("ftp://x").is_err());
        assert!(side("file:///a b").is_err());
    }

    #[test]
    fn tokens_and_extra_caches() {
        let ours = key("ours-1");
        let theirs = key("nix-community.cachix.org-1");
        let extra = vec!["https://nix-community.cachix.org".to_string()];
        let req = Request {
            to: Some("https://cache.example.org"),
            token: Some(" tok123 "),
            extra_substituters: &extra,
            extra_public_keys: std::slice::from_ref(&theirs),
            ..Default::default()
        };
        let s = read_side(&req, &ours).unwrap();
        assert_eq!(
            s.nix_conf(None).lines().take(2).collect::<Vec<_>>(),
            [
                "extra-substituters = https://cache.example.org https://nix-community.cachix.org"
                    .to_string(),
                format!("extra-trusted-public-keys = {ours} {theirs}"),
            ]
        );
        let netrc = s.netrc(Some("machine other login a password b")).unwrap();
        assert_eq!(
            netrc.as_str(),
            "machine cache.example.org password tok123\nmachine other login a password b\n"
        );
        for bad in ["https://u:p@x.org", "not a url", "cachix-name"] {
            let extra = vec![bad.to_string()];
            let r = Request {
                extra_substituters: &extra,
                ..req.clone()
            };
            let e = read_side(&r, &ours).unwrap_err().to_string();
            assert!(!e.contains(":p@"), "{e}");
        }
        assert!(side("file:///c").unwrap().netrc(None).is_none());
    }

    #[test]
    fn env_forms_keep_the_users_config() {
        let r = side("file:///c").unwrap();
        let mine = "substituters = https://mirror.example\nsandbox = false";
        let v = r.nix_config(Some(mine), None);
        assert!(v.starts_with(mine) && v.ends_with(&r.nix_conf(None)), "{v}");
        assert_eq!(r.nix_config(Some("  "), None), r.nix_conf(None));
        let gh = r.github_env(Some("x = 1\nNIXDELTA_EOF"), None);
        let first = gh.lines().next().unwrap();
        let delim = first.strip_prefix("NIX_CONFIG<<").unwrap();
        assert_eq!(gh.lines().last(), Some(delim));
        assert_ne!(delim, "NIXDELTA_EOF");
        let env = r.env(Some("a = 'q'"), None);
        assert!(
            env.starts_with("export NIX_CONFIG='a = '\\''q'\\''\n"),
            "{env}"
        );
    }

    #[test]
    fn user_conf_files_keep_the_default_user_files() {
        let map = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            user_conf_files("/t/nix.conf", &map(&[("HOME", "/home/u/")])),
            "/t/nix.conf:/home/u/.config/nix/nix.conf:/etc/xdg/nix/nix.conf"
        );
        assert_eq!(
            user_conf_files(
                "/t/nix.conf",
                &map(&[("XDG_CONFIG_HOME", "/c"), ("XDG_CONFIG_DIRS", "/a:/b")])
            ),
            "/t/nix.conf:/c/nix/nix.conf:/a/nix/nix.conf:/b/nix/nix.conf"
        );
        assert_eq!(
            user_conf_files(
                "/t/nix.conf",
                &map(&[("NIX_USER_CONF_FILES", "/x.conf:/t/nix.conf")])
            ),
            "/t/nix.conf:/x.conf"
        );
    }
}
