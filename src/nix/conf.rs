//! `nix.conf` as Nix reads it: `name = value` lines, `#` comments, later
//! lines replacing earlier ones and `extra-name` adding to `name`. Enough
//! to read a daemon's trust settings; `include` lines are not followed
//! (nixdelta only ever reads the file it may append to).

use std::collections::BTreeMap;

/// The settings of one file; values are Nix's whitespace-separated words.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NixConf {
    settings: BTreeMap<String, Vec<String>>,
    /// Names set by a plain `name = …` line (else `extra-` adds to Nix's
    /// default).
    set: std::collections::BTreeSet<String>,
}

impl NixConf {
    pub fn parse(text: &str) -> NixConf {
        let mut conf = NixConf::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let (name, words) = (name.trim(), value.split_whitespace().map(String::from));
            match name.strip_prefix("extra-") {
                Some(base) => conf
                    .settings
                    .entry(base.to_string())
                    .or_default()
                    .extend(words),
                None => {
                    conf.settings.insert(name.to_string(), words.collect());
                    conf.set.insert(name.to_string());
                }
            }
        }
        conf
    }

    /// The words of `name` (with its `extra-` additions); `None` when the
    /// file does not set it (Nix's default applies).
    pub fn get(&self, name: &str) -> Option<&[String]> {
        self.settings.get(name).map(Vec::as_slice)
    }

    /// The value Nix ends with: Nix's `default` unless a plain line set
    /// it, plus the `extra-` words.
    pub fn value(&self, name: &str, default: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = if self.set.contains(name) {
            Vec::new()
        } else {
            default.iter().map(|s| s.to_string()).collect()
        };
        v.extend(self.get(name).unwrap_or_default().iter().cloned());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_lines_replace_and_extra_adds() {
        let c = NixConf::parse(
            "# comment\ntrusted-users = root alice # inline\nsubstituters = a\n\
             extra-substituters = b c\nsubstituters = d\nextra-trusted-public-keys = k:1\n\
             not a setting\n",
        );
        assert_eq!(c.get("trusted-users").unwrap(), ["root", "alice"]);
        assert_eq!(c.get("substituters").unwrap(), ["d"]);
        assert_eq!(c.get("trusted-public-keys").unwrap(), ["k:1"]);
        assert!(c.get("trusted-substituters").is_none());
        assert_eq!(
            NixConf::parse("substituters =\n")
                .get("substituters")
                .unwrap()
                .len(),
            0
        );
        let extra = NixConf::parse("extra-trusted-users = bob\n");
        assert_eq!(extra.value("trusted-users", &["root"]), ["root", "bob"]);
        assert_eq!(c.value("trusted-users", &["root"]), ["root", "alice"]);
        assert_eq!(c.value("trusted-substituters", &[]), Vec::<String>::new());
    }
}
