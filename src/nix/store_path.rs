//! `StorePath`: 20-byte hash part + name. The store directory is kept apart
//! (a chroot store at `/tmp/x` still has the logical store dir `/nix/store`).

use super::{nix32, FormatError};

/// Length of the nix32 hash part of a store path.
pub const HASH_PART_LEN: usize = 32;
/// Longest name Nix accepts.
pub const MAX_NAME_LEN: usize = 211;

/// Ordered like Nix orders store paths: by base name (`<hash>-<name>`), so a
/// `BTreeSet<StorePath>` iterates in the order narinfo References and
/// signature fingerprints list them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorePath {
    /// Digest as decoded from the 32 nix32 chars.
    hash: [u8; 20],
    name: String,
}

impl Ord for StorePath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // nix32 writes the last byte's high bits first and its alphabet is in
        // ASCII order, so comparing the bytes from the end compares the
        // 32-char hash parts as strings; both are followed by '-' and the name.
        self.hash
            .iter()
            .rev()
            .cmp(other.hash.iter().rev())
            .then_with(|| self.name.cmp(&other.name))
    }
}

impl PartialOrd for StorePath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl StorePath {
    /// From a base name `<32 nix32 chars>-<name>`. Name: 1..=211 chars of
    /// `[A-Za-z0-9+._?=-]`. Like Nix (2.8 accepts any leading char, newer
    /// Nix rejects only these), the names `.` and `..` and names starting
    /// with `.-` or `..-` are rejected; other names starting with `.`
    /// (e.g. `.config` from `builtins.path`) are valid store paths.
    pub fn from_base_name(s: &str) -> Result<Self, FormatError> {
        let err = |why: &'static str| FormatError::StorePath(s.to_owned(), why);
        if s.len() < HASH_PART_LEN + 2 {
            return Err(err("too short"));
        }
        let (hash_part, rest) = s.split_at(HASH_PART_LEN);
        let name = rest
            .strip_prefix('-')
            .ok_or_else(|| err("expected '-' after the hash part"))?;
        if !hash_part.bytes().all(nix32::is_nix32_char) {
            return Err(err("hash part contains a non-nix32 character"));
        }
        check_name(name).map_err(err)?;
        let bytes = nix32::decode(hash_part).map_err(|_| err("invalid hash part"))?;
        let hash: [u8; 20] = bytes
            .try_into()
            .map_err(|_| err("invalid hash part length"))?;
        Ok(StorePath {
            hash,
            name: name.to_owned(),
        })
    }
    /// From `<store_dir>/<base name>` (no trailing components).
    pub fn from_absolute(s: &str, store_dir: &str) -> Result<Self, FormatError> {
        let base = strip_store_dir(s, store_dir)?;
        if base.contains('/') {
            return Err(FormatError::StorePath(
                s.to_owned(),
                "has components after the store path",
            ));
        }
        Self::from_base_name(base).map_err(|e| rename(e, s))
    }
    /// Like `from_absolute` but accepts and ignores a sub-path
    /// (`/nix/store/xxx-foo/bin/foo` → `xxx-foo`).
    pub fn from_absolute_prefix(s: &str, store_dir: &str) -> Result<Self, FormatError> {
        let base = strip_store_dir(s, store_dir)?;
        let base = base.split('/').next().unwrap_or(base);
        Self::from_base_name(base).map_err(|e| rename(e, s))
    }
    /// From the raw 20 hash bytes and a name (the name is validated).
    pub fn from_parts(hash: [u8; 20], name: &str) -> Result<Self, FormatError> {
        check_name(name).map_err(|why| {
            FormatError::StorePath(format!("{}-{name}", nix32::encode(&hash)), why)
        })?;
        Ok(StorePath {
            hash,
            name: name.to_owned(),
        })
    }
    pub fn hash_bytes(&self) -> &[u8; 20] {
        &self.hash
    }
    /// The 32-char nix32 hash part, as in `<hash>.narinfo`.
    pub fn hash_part(&self) -> String {
        nix32::encode(&self.hash)
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(".drv")
    }
    pub fn to_absolute(&self, store_dir: &str) -> String {
        format!("{store_dir}/{self}")
    }
}

/// Checks a store path name the way Nix does.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("name longer than 211 characters");
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
    {
        return Err("name contains a character outside [A-Za-z0-9+-._?=]");
    }
    if name == "." || name == ".." || name.starts_with(".-") || name.starts_with("..-") {
        return Err("name must not be '.' or '..' (alone or before a '-')");
    }
    Ok(())
}

fn strip_store_dir<'a>(s: &'a str, store_dir: &str) -> Result<&'a str, FormatError> {
    let store_dir = store_dir.trim_end_matches('/');
    s.strip_prefix(store_dir)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| FormatError::StorePath(s.to_owned(), "not in the store directory"))
}

/// Reports errors against the full input rather than the base name.
fn rename(e: FormatError, full: &str) -> FormatError {
    match e {
        FormatError::StorePath(_, why) => FormatError::StorePath(full.to_owned(), why),
        other => other,
    }
}

/// The base name `<hash>-<name>`.
impl std::fmt::Display for StorePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.hash_part(), self.name)
    }
}

impl std::fmt::Debug for StorePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StorePath({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::DEFAULT_STORE_DIR as SD;

    const PATHS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/store-paths.txt"
    ));
    const H: &str = "4a8i4a6xwn7lpbdkdf483zgppnis8p9c";

    #[test]
    fn parses_nix_store_paths() {
        let mut n = 0;
        for line in PATHS.lines() {
            let p = StorePath::from_absolute(line, SD).unwrap();
            assert_eq!(p.to_absolute(SD), line);
            assert_eq!(line, format!("{SD}/{}-{}", p.hash_part(), p.name()));
            assert_eq!(StorePath::from_base_name(&p.to_string()).unwrap(), p);
            assert_eq!(format!("{p:?}"), format!("StorePath({p})"));
            let again = StorePath::from_parts(*p.hash_bytes(), p.name()).unwrap();
            assert_eq!(again, p);
            n += 1;
        }
        assert_eq!(n, 4);
    }

    #[test]
    fn absolute_and_prefix() {
        let full = format!("/nix/store/{H}-fx");
        let p = StorePath::from_absolute(&full, "/nix/store").unwrap();
        assert_eq!(p.name(), "fx");
        assert_eq!(p.hash_part(), H);
        assert!(!p.is_derivation());
        assert_eq!(StorePath::from_absolute(&full, "/nix/store/").unwrap(), p);
        let sub = format!("{full}/bin/x");
        assert!(StorePath::from_absolute(&sub, SD).is_err());
        assert_eq!(StorePath::from_absolute_prefix(&sub, SD).unwrap(), p);
        assert_eq!(StorePath::from_absolute_prefix(&full, SD).unwrap(), p);
        assert_eq!(
            StorePath::from_absolute_prefix(&format!("{full}/"), SD).unwrap(),
            p
        );
        // other store dir
        let other = format!("/tmp/s/{H}-fx");
        assert_eq!(StorePath::from_absolute(&other, "/tmp/s").unwrap(), p);
        assert!(StorePath::from_absolute(&other, SD).is_err());
        assert!(StorePath::from_absolute(&format!("/nix/storex/{H}-fx"), SD).is_err());
        assert!(StorePath::from_absolute(&format!("{H}-fx"), SD).is_err());
        let e = StorePath::from_absolute_prefix(&format!("/nix/store/{H}-f!x/bin"), SD);
        assert!(matches!(e, Err(FormatError::StorePath(s, _)) if s.ends_with("f!x/bin")));
        let drv = StorePath::from_base_name(&format!("{H}-fx.drv")).unwrap();
        assert!(drv.is_derivation());
    }

    #[test]
    fn validates_names() {
        let ok = |n: &str| StorePath::from_base_name(&format!("{H}-{n}"));
        for good in [
            "a",
            "fx-app",
            "A+Za-z0-9._?=",
            "foo-1.2.3",
            ".config",
            "..foo",
            "-leading-dash",
            &"x".repeat(211),
        ] {
            let p = ok(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
            assert_eq!(p.name(), good);
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "é",
            "a:b",
            "a~",
            ".",
            "..",
            ".-x",
            "..-x",
            &"x".repeat(212),
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validates_hash_part() {
        for bad in [
            "4a8i4a6xwn7lpbdkdf483zgppnis8p9c".to_string() + "fx", // no dash
            "4a8i4a6xwn7lpbdkdf483zgppnis8p9e-fx".to_string(),     // 'e'
            "4a8i4a6xwn7lpbdkdf483zgppnis8p9C-fx".to_string(),     // upper
            "4a8i4a6xwn7lpbdkdf483zgppnis8p9-fx".to_string(),      // 31 chars
            "4a8i4a6xwn7lpbdkdf483zgppnis8p9cc-fx".to_string(),    // 33 chars
            format!("{H}-"),
            H.to_string(),
            String::new(),
        ] {
            assert!(StorePath::from_base_name(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn orders_like_base_names() {
        let mut paths: Vec<StorePath> = PATHS
            .lines()
            .map(|l| StorePath::from_absolute(l, SD).unwrap())
            .collect();
        // plus hash parts that differ only in the first / last char, and names
        let base = [
            format!("{H}-fx"),
            format!("{H}-fx-app"),
            format!("{H}-f"),
            "0000000000000000000000000000000z-a".to_string(),
            "z0000000000000000000000000000000-a".to_string(),
            "10000000000000000000000000000000-a".to_string(),
            "00000000000000000000000000000001-a".to_string(),
        ];
        paths.extend(base.iter().map(|b| StorePath::from_base_name(b).unwrap()));
        for _ in 0..3 {
            paths.reverse();
            paths.rotate_left(3);
            let mut by_ord = paths.clone();
            by_ord.sort();
            let mut by_name = paths.clone();
            by_name.sort_by_key(|p| p.to_string());
            assert_eq!(by_ord, by_name);
        }
    }
}
