//! The cache key of a store archive:
//! `nixdelta-v<format>-<system>-<sha256 of the key files>`.
//!
//! Key files default to `flake.lock`; several files and globs may be given.
//! Without a `flake.lock` (a flake with no inputs, a non-flake project) the
//! key hashes whichever of [`FALLBACK_KEY_FILES`] exist, and says which in
//! [`CacheKey::notes`]. Restore tries the exact key, then
//! each restore prefix (default: the key without its hash, i.e. the newest
//! archive of the same format and system).

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::nix::archive::FORMAT_VERSION;

/// The default key file.
pub const DEFAULT_KEY_FILE: &str = "flake.lock";

/// Without a `flake.lock`: whichever of these exist (a flake with no
/// inputs, a `shell.nix`/`default.nix` project, niv's and npins' pins).
pub const FALLBACK_KEY_FILES: &[&str] = &[
    "flake.nix",
    "shell.nix",
    "default.nix",
    "nix/sources.json",
    "npins/sources.json",
];

/// A computed cache key and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    /// `nixdelta-v1-x86_64-linux-<64 hex chars>`.
    pub key: String,
    /// Restore prefixes, most specific first (the key itself is tried before).
    pub restore_prefixes: Vec<String>,
    /// The files hashed, in hashing order, relative to the base directory.
    pub files: Vec<PathBuf>,
    /// Things the user should know (fallbacks taken).
    pub notes: Vec<String>,
}

/// An evaluated key: `nixdelta-v<format>-<system>-eval-<sha256 of the
/// sorted .drv paths>`. The same derivations give the same key whatever
/// changed around them (a README, a lock entry they do not use).
pub fn eval_key(drvs: &[crate::nix::StorePath], system: &str, store_dir: &str) -> CacheKey {
    let mut names: Vec<String> = drvs.iter().map(|d| d.to_absolute(store_dir)).collect();
    names.sort();
    names.dedup();
    let digest: [u8; 32] = Sha256::digest(names.join("\n").as_bytes()).into();
    let prefix = key_prefix(system);
    CacheKey {
        key: format!("{prefix}eval-{}", crate::nix::Sha256Hash(digest).to_hex()),
        restore_prefixes: vec![format!("{prefix}eval-"), prefix],
        files: Vec::new(),
        notes: vec![format!("evaluated key of {} derivation(s)", names.len())],
    }
}

/// The part of every key before the hash: `nixdelta-v<format>-<system>-`.
pub fn key_prefix(system: &str) -> String {
    format!("nixdelta-v{FORMAT_VERSION}-{system}-")
}

/// The Nix system double of this machine (`x86_64-linux`), as Nix's
/// `builtins.currentSystem` names it on the common platforms.
pub fn current_system() -> String {
    let arch = match std::env::consts::ARCH {
        "x86" => "i686",
        "arm" => "armv7l",
        a => a,
    };
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        o => o,
    };
    format!("{arch}-{os}")
}

/// Computes the key from `patterns` (files or globs, relative to `base`;
/// empty means `flake.lock`). Every pattern must match at least one file,
/// except the default `flake.lock`, which falls back to [`FALLBACK_KEY_FILES`].
/// `extra_prefixes` (`--restore-prefix`) are tried in order before the
/// default prefix.
pub fn compute(
    base: &Path,
    patterns: &[String],
    system: &str,
    extra_prefixes: &[String],
) -> Result<CacheKey> {
    let mut notes = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    if patterns.is_empty() {
        let lock = base.join(DEFAULT_KEY_FILE);
        if lock.is_file() {
            check_flake_lock(&lock)?;
            files.push(PathBuf::from(DEFAULT_KEY_FILE));
        } else {
            files = FALLBACK_KEY_FILES
                .iter()
                .map(PathBuf::from)
                .filter(|f| base.join(f).is_file())
                .collect();
            if files.is_empty() {
                return Err(Error::Input {
                    path: lock,
                    msg: format!(
                        "no such file, nor any of {}; pass --key-file",
                        FALLBACK_KEY_FILES.join(", ")
                    ),
                });
            }
            let used: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            notes.push(format!(
                "no {DEFAULT_KEY_FILE} in {}: keyed by {} instead",
                base.display(),
                used.join(", ")
            ));
        }
    } else {
        for pat in patterns {
            let matched = expand(base, pat)?;
            if matched.is_empty() {
                return Err(Error::Input {
                    path: base.join(pat),
                    msg: "key file pattern matches no file".into(),
                });
            }
            for m in matched {
                if m.file_name().and_then(|n| n.to_str()) == Some(DEFAULT_KEY_FILE) {
                    check_flake_lock(&base.join(&m))?;
                }
                if !files.contains(&m) {
                    files.push(m);
                }
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        let full = base.join(f);
        let data = std::fs::read(&full).map_err(|e| Error::Input {
            path: full.clone(),
            msg: format!("cannot read: {e}"),
        })?;
        // Name and length framed, so moving bytes between files changes the key.
        let name = f.to_string_lossy();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(&data);
    }
    let digest: [u8; 32] = h.finalize().into();
    let hex = crate::nix::Sha256Hash(digest).to_hex();
    let prefix = key_prefix(system);
    let mut restore_prefixes: Vec<String> = extra_prefixes.to_vec();
    if !restore_prefixes.contains(&prefix) {
        restore_prefixes.push(prefix.clone());
    }
    Ok(CacheKey {
        key: format!("{prefix}{hex}"),
        restore_prefixes,
        files,
        notes,
    })
}

/// Files matching `pat` under `base`, relative to `base`, sorted.
fn expand(base: &Path, pat: &str) -> Result<Vec<PathBuf>> {
    let is_glob = pat.contains(['*', '?', '[']);
    if !is_glob {
        let p = Path::new(pat);
        let full = base.join(p);
        return Ok(if full.is_file() {
            vec![p.to_path_buf()]
        } else {
            vec![]
        });
    }
    let full = base.join(pat);
    let full_s = full.to_string_lossy();
    let entries = glob::glob(&full_s).map_err(|e| Error::Input {
        path: PathBuf::from(pat),
        msg: format!("bad glob pattern: {e}"),
    })?;
    let mut out = Vec::new();
    for e in entries {
        let p = e.map_err(|e| Error::Input {
            path: e.path().to_path_buf(),
            msg: format!("cannot read: {}", e.error()),
        })?;
        if p.is_file() {
            out.push(p.strip_prefix(base).map(Path::to_path_buf).unwrap_or(p));
        }
    }
    out.sort();
    Ok(out)
}

/// A `flake.lock` must be JSON with `nodes` (object), `root` (string) and
/// `version` (number): a malformed one would give a key nobody else computes.
pub fn check_flake_lock(path: &Path) -> Result<()> {
    let bad = |msg: String| Error::Input {
        path: path.to_path_buf(),
        msg,
    };
    let text = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("not a flake lock file: expected a JSON object".into()))?;
    if !obj.get("nodes").is_some_and(|n| n.is_object()) {
        return Err(bad("not a flake lock file: missing object \"nodes\"".into()));
    }
    if !obj.get("root").is_some_and(|n| n.is_string()) {
        return Err(bad("not a flake lock file: missing string \"root\"".into()));
    }
    let Some(version) = obj.get("version").and_then(|n| n.as_u64()) else {
        return Err(bad(
            "not a flake lock file: missing number \"version\"".into()
        ));
    };
    // The versions Nix reads (5 to 7); Nix refuses the others, so would
    // every job whose key they name.
    if !(5..=7).contains(&version) {
        return Err(bad(format!(
            "lock file version {version} is not supported (Nix reads versions 5 to 7)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit;

    const LOCK: &str = r#"{"nodes":{"root":{}},"root":"root","version":7}"#;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (n, c) in files {
            let p = d.path().join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        }
        d
    }

    #[test]
    fn default_key_from_flake_lock() {
        let d = dir_with(&[("flake.lock", LOCK), ("flake.nix", "{}")]);
        let k = compute(d.path(), &[], "x86_64-linux", &[]).unwrap();
        assert!(k.key.starts_with("nixdelta-v1-x86_64-linux-"), "{}", k.key);
        assert_eq!(k.key.len(), "nixdelta-v1-x86_64-linux-".len() + 64);
        assert_eq!(k.files, vec![PathBuf::from("flake.lock")]);
        assert_eq!(k.restore_prefixes, vec!["nixdelta-v1-x86_64-linux-"]);
        assert!(k.notes.is_empty());
        // Deterministic, and sensitive to content and system.
        assert_eq!(k, compute(d.path(), &[], "x86_64-linux", &[]).unwrap());
        let k2 = compute(d.path(), &[], "aarch64-linux", &[]).unwrap();
        assert!(k2.key.starts_with("nixdelta-v1-aarch64-linux-"));
        std::fs::write(
            d.path().join("flake.lock"),
            LOCK.replace("\"version\":7", "\"version\":7 "),
        )
        .unwrap();
        let k3 = compute(d.path(), &[], "x86_64-linux", &[]).unwrap();
        assert_ne!(k.key, k3.key);
    }

    #[test]
    fn missing_lock_falls_back_to_flake_nix() {
        let d = dir_with(&[("flake.nix", "{ outputs = _: {}; }")]);
        let k = compute(d.path(), &[], "x86_64-linux", &[]).unwrap();
        assert_eq!(k.files, vec![PathBuf::from("flake.nix")]);
        assert!(k.notes[0].contains("flake.nix"), "{:?}", k.notes);
        let empty = tempfile::tempdir().unwrap();
        let e = compute(empty.path(), &[], "x86_64-linux", &[]).unwrap_err();
        assert_eq!(e.exit_code(), exit::INPUT);
        assert!(e.to_string().contains("npins/sources.json"), "{e}");
    }

    #[test]
    fn a_non_flake_project_is_keyed_by_the_files_it_has() {
        let d = dir_with(&[
            ("shell.nix", "{ }"),
            ("default.nix", "{ }"),
            ("README", "not a key file"),
        ]);
        std::fs::create_dir_all(d.path().join("nix")).unwrap();
        std::fs::write(d.path().join("nix/sources.json"), "{}").unwrap();
        let k = compute(d.path(), &[], "x86_64-linux", &[]).unwrap();
        let names: Vec<String> = k.files.iter().map(|f| f.display().to_string()).collect();
        assert_eq!(names, ["default.nix", "nix/sources.json", "shell.nix"]);
        assert!(
            k.notes[0].contains("keyed by shell.nix, default.nix, nix/sources.json"),
            "{:?}",
            k.notes
        );
        // A changed pin changes the key; an unrelated file does not.
        std::fs::write(d.path().join("README"), "changed").unwrap();
        assert_eq!(
            compute(d.path(), &[], "x86_64-linux", &[]).unwrap().key,
            k.key
        );
        std::fs::write(d.path().join("nix/sources.json"), "{\"a\":1}").unwrap();
        assert_ne!(
            compute(d.path(), &[], "x86_64-linux", &[]).unwrap().key,
            k.key
        );
    }

    #[test]
    fn malformed_lock_is_an_input_error() {
        for bad in [
            "not json",
            "[]",
            r#"{"nodes":{},"root":"root"}"#,
            r#"{"root":"r","version":7}"#,
        ] {
            let d = dir_with(&[("flake.lock", bad)]);
            let e = compute(d.path(), &[], "x86_64-linux", &[]).unwrap_err();
            assert_eq!(e.exit_code(), exit::INPUT, "{bad}: {e}");
            assert!(e.to_string().contains("flake.lock"), "{e}");
        }
    }

    #[test]
    fn several_files_and_globs() {
        let d = dir_with(&[
            ("flake.lock", LOCK),
            ("a/x.nix", "x"),
            ("a/y.nix", "y"),
            ("a/z.txt", "z"),
        ]);
        let pats = vec!["flake.lock".to_string(), "a/*.nix".to_string()];
        let k = compute(d.path(), &pats, "x86_64-linux", &["mine-".into()]).unwrap();
        assert_eq!(
            k.files,
            vec![
                PathBuf::from("a/x.nix"),
                PathBuf::from("a/y.nix"),
                PathBuf::from("flake.lock")
            ]
        );
        assert_eq!(
            k.restore_prefixes,
            vec!["mine-".to_string(), "nixdelta-v1-x86_64-linux-".to_string()]
        );
        // Order of patterns does not matter.
        let rev = vec!["a/*.nix".to_string(), "flake.lock".to_string()];
        assert_eq!(
            compute(d.path(), &rev, "x86_64-linux", &[]).unwrap().key,
            k.key
        );
        let e = compute(d.path(), &["nope/*.lock".into()], "x86_64-linux", &[]).unwrap_err();
        assert_eq!(e.exit_code(), exit::INPUT);
        let e = compute(d.path(), &["missing.lock".into()], "x86_64-linux", &[]).unwrap_err();
        assert_eq!(e.exit_code(), exit::INPUT);
    }

    #[test]
    fn system_double() {
        let s = current_system();
        assert!(s.contains('-'), "{s}");
    }
}
