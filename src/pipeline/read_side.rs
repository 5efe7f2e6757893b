//! The read side: the Nix settings that make a job's Nix substitute from
//! the binary cache we push to, added to what is configured (never
//! replacing it): `extra-substituters`, `extra-trusted-public-keys`, and
//! `narinfo-cache-negative-ttl = 0` so that a miss an earlier job cached
//! does not hide a path pushed since.

use crate::error::{Error, Result};
use crate::net::redact::without_userinfo;
use crate::nix::PublicKey;

/// What this job's Nix is told to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadSide {
    /// The substituter URL, as Nix reads it.
    pub substituter: String,
    pub public_key: PublicKey,
    /// Things the user should know (a URL Nix may not read, credentials).
    pub notes: Vec<String>,
}

/// The substituter Nix reads for a cache pushed to at `to`: the same URL
/// for `file://` and `http(s)://` (without user info: Nix reads
/// credentials from its netrc file), `read_url` when given (e.g. an S3
/// bucket's public HTTPS URL).
pub fn read_side(to: &str, read_url: Option<&str>, public_key: PublicKey) -> Result<ReadSide> {
    let mut notes = Vec::new();
    let substituter = match read_url.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) => u.to_string(),
        None if to.starts_with("file://")
            || to.starts_with("http://")
            || to.starts_with("https://") =>
        {
            let shown = without_userinfo(to);
            if shown != to {
                notes.push(
                    "the cache URL holds credentials: Nix reads them from its netrc-file, not \
                     the URL"
                        .to_string(),
                );
            }
            shown
        }
        None if to.starts_with("s3://") => {
            notes.push(
                "Nix reads s3:// only when built with S3 support (Debian's Nix 2.8 is not); \
                 give --read-url (e.g. the bucket's HTTPS URL) otherwise"
                    .to_string(),
            );
            to.to_string()
        }
        None => {
            return Err(Error::Usage(format!(
                "{}: not a binary cache URL Nix reads (file://, http(s)://, s3://)",
                without_userinfo(to)
            )))
        }
    };
    if substituter.contains(char::is_whitespace) {
        return Err(Error::Usage(format!(
            "{substituter:?}: a substituter URL has no spaces"
        )));
    }
    Ok(ReadSide {
        substituter,
        public_key,
        notes,
    })
}

impl ReadSide {
    /// The settings, one per line, in `nix.conf` syntax.
    pub fn nix_conf(&self) -> String {
        format!(
            "extra-substituters = {}\nextra-trusted-public-keys = {}\nnarinfo-cache-negative-ttl = 0\n",
            self.substituter, self.public_key
        )
    }

    /// `NIX_CONFIG` with these settings after `existing` (the job's own
    /// `NIX_CONFIG`, kept: Nix applies it after the config files, and
    /// `extra-` settings add to whatever came before).
    pub fn nix_config(&self, existing: Option<&str>) -> String {
        match existing.map(str::trim_end).filter(|e| !e.is_empty()) {
            Some(e) => format!("{e}\n{}", self.nix_conf()),
            None => self.nix_conf(),
        }
    }

    /// A shell line exporting [`ReadSide::nix_config`].
    pub fn env(&self, existing: Option<&str>) -> String {
        let v = self.nix_config(existing);
        format!("export NIX_CONFIG='{}'\n", v.replace('\'', r"'\''"))
    }

    /// The `$GITHUB_ENV` entry setting `NIX_CONFIG` for later steps, in
    /// the multi-line form with a delimiter the value cannot contain.
    pub fn github_env(&self, existing: Option<&str>) -> String {
        let v = self.nix_config(existing);
        let mut delim = "NIXDELTA_EOF".to_string();
        while v.contains(&delim) {
            delim.push('_');
        }
        format!("NIX_CONFIG<<{delim}\n{}\n{delim}\n", v.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::SecretKey;

    fn key() -> PublicKey {
        SecretKey::generate("ci.example.org-1")
            .unwrap()
            .public_key()
    }

    #[test]
    fn each_target_kind() {
        let k = key();
        let f = read_side("file:///srv/cache", None, k.clone()).unwrap();
        assert_eq!(
            f.nix_conf(),
            format!(
                "extra-substituters = file:///srv/cache\nextra-trusted-public-keys = {k}\nnarinfo-cache-negative-ttl = 0\n"
            )
        );
        assert!(f.notes.is_empty());
        let h = read_side(
            "https://u:pw@cache.example.org/x?priority=30",
            None,
            k.clone(),
        )
        .unwrap();
        assert_eq!(h.substituter, "https://cache.example.org/x?priority=30");
        assert!(!h.nix_conf().contains("pw") && h.notes[0].contains("netrc"));
        let s = read_side("s3://b?region=eu-west-1", None, k.clone()).unwrap();
        assert_eq!(s.substituter, "s3://b?region=eu-west-1");
        assert!(s.notes[0].contains("--read-url"));
        let r = read_side(
            "s3://b?region=eu-west-1",
            Some("https://b.s3.eu-west-1.amazonaws.com"),
            k.clone(),
        )
        .unwrap();
        assert_eq!(r.substituter, "https://b.s3.eu-west-1.amazonaws.com");
        assert!(r.notes.is_empty());
        assert!(read_side("ftp://x", None, k.clone()).is_err());
        assert!(read_side("file:///a b", None, k).is_err());
    }

    #[test]
    fn env_forms_keep_the_users_config() {
        let r = read_side("file:///c", None, key()).unwrap();
        let mine = "substituters = https://mirror.example\nsandbox = false";
        let v = r.nix_config(Some(mine));
        assert!(v.starts_with(mine) && v.ends_with(&r.nix_conf()), "{v}");
        assert_eq!(r.nix_config(Some("  ")), r.nix_conf());
        let gh = r.github_env(Some("x = 1\nNIXDELTA_EOF"));
        let first = gh.lines().next().unwrap();
        let delim = first.strip_prefix("NIX_CONFIG<<").unwrap();
        assert_eq!(gh.lines().last(), Some(delim));
        assert_ne!(delim, "NIXDELTA_EOF");
        let env = r.env(Some("a = 'q'"));
        assert!(
            env.starts_with("export NIX_CONFIG='a = '\\''q'\\''\n"),
            "{env}"
        );
    }
}
