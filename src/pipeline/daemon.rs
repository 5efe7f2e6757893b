//! Whether a Nix daemon honours the read side for the job's user. A
//! client's `extra-substituters` count only for a trusted user, or for
//! URLs the daemon lists in `trusted-substituters` (or `substituters`);
//! its keys only for a trusted user. Pure: the facts come from
//! `store::daemon`.

use crate::nix::conf::NixConf;

/// Nix's defaults for the settings read here.
const DEFAULT_TRUSTED_USERS: &[&str] = &["root"];
const DEFAULT_SUBSTITUTERS: &[&str] = &["https://cache.nixos.org/"];
const DEFAULT_KEYS: &[&str] = &["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="];

/// How the daemon treats the job's read side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// A trusted user: the job's settings apply.
    Trusted,
    /// Not trusted, but the daemon itself allows these caches and keys.
    Allowed,
    /// The daemon ignores them; `lines` is what its `nix.conf` lacks.
    Ignored { lines: Vec<String> },
}

/// The trust of `user` (in `groups`) for `substituters` signed by `keys`,
/// from the daemon's own answer where it gave one, else its `conf`.
pub fn trust(
    user: &str,
    groups: &[String],
    reported: Option<bool>,
    conf: &NixConf,
    substituters: &[String],
    keys: &[String],
) -> Trust {
    let trusted = reported.unwrap_or_else(|| {
        conf.value("trusted-users", DEFAULT_TRUSTED_USERS)
            .iter()
            .any(|t| {
                t == "*"
                    || t == user
                    || t.strip_prefix('@')
                        .is_some_and(|g| groups.iter().any(|m| m == g))
            })
    });
    if trusted {
        return Trust::Trusted;
    }
    let mut allowed = conf.value("trusted-substituters", &[]);
    allowed.extend(conf.value("substituters", DEFAULT_SUBSTITUTERS));
    let known_keys = conf.value("trusted-public-keys", DEFAULT_KEYS);
    let urls: Vec<&str> = substituters
        .iter()
        .filter(|s| !allowed.contains(s))
        .map(String::as_str)
        .collect();
    let missing_keys: Vec<&str> = keys
        .iter()
        .filter(|k| !known_keys.contains(k))
        .map(String::as_str)
        .collect();
    let mut lines = Vec::new();
    if !urls.is_empty() {
        lines.push(format!("extra-trusted-substituters = {}", urls.join(" ")));
    }
    if !missing_keys.is_empty() {
        lines.push(format!(
            "extra-trusted-public-keys = {}",
            missing_keys.join(" ")
        ));
    }
    if lines.is_empty() {
        Trust::Allowed
    } else {
        Trust::Ignored { lines }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(user: &str, reported: Option<bool>, conf: &str) -> Trust {
        let groups = vec!["wheel".to_string(), "users".to_string()];
        trust(
            user,
            &groups,
            reported,
            &NixConf::parse(conf),
            &["file:///c".to_string()],
            &["c-1:AAAA".to_string()],
        )
    }

    #[test]
    fn trusted_users_groups_and_the_daemons_word() {
        assert_eq!(t("root", None, ""), Trust::Trusted);
        assert_eq!(
            t("alice", None, "trusted-users = root @wheel"),
            Trust::Trusted
        );
        assert_eq!(
            t("alice", None, "extra-trusted-users = alice"),
            Trust::Trusted
        );
        assert_eq!(t("alice", None, "trusted-users = *"), Trust::Trusted);
        assert_eq!(t("root", Some(false), ""), t("bob", None, ""));
        assert_eq!(t("bob", Some(true), ""), Trust::Trusted);
    }

    #[test]
    fn untrusted_users_get_what_the_daemon_allows_or_the_lines_it_lacks() {
        assert_eq!(
            t("bob", None, ""),
            Trust::Ignored {
                lines: vec![
                    "extra-trusted-substituters = file:///c".into(),
                    "extra-trusted-public-keys = c-1:AAAA".into()
                ]
            }
        );
        assert_eq!(
            t(
                "bob",
                None,
                "trusted-substituters = file:///c\nextra-trusted-public-keys = c-1:AAAA"
            ),
            Trust::Allowed
        );
        // A substituter of the daemon's own counts; the key still lacks.
        assert_eq!(
            t("bob", None, "substituters = file:///c"),
            Trust::Ignored {
                lines: vec!["extra-trusted-public-keys = c-1:AAAA".into()]
            }
        );
    }
}
