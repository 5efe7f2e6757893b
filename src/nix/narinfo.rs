//! `.narinfo` files: render and parse, fields in Nix's order.

use super::{FormatError, Sha256Hash, StorePath};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Relative to the cache root, e.g. `nar/<nix32 file hash>.nar.zst`.
    pub url: String,
    /// `zstd`, `xz`, `none`, ...
    pub compression: String,
    pub file_hash: Option<Sha256Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    /// Sorted by base name, as Nix writes them.
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    /// `keyname:base64sig`, one `Sig:` line each.
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

impl NarInfo {
    /// Renders exactly as Nix does: StorePath, URL, Compression, FileHash,
    /// FileSize, NarHash, NarSize, References (base names, space-separated;
    /// the line is present even when empty), Deriver, Sig..., CA.
    ///
    /// Like Nix (which keeps both in sets), References are written sorted by
    /// base name and Sig lines sorted, duplicates dropped; FileHash and
    /// FileSize are omitted when `None` (Nix always has them).
    pub fn render(&self, store_dir: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(512 + 50 * self.references.len());
        // Writing to a String cannot fail.
        let _ = writeln!(out, "StorePath: {}", self.store_path.to_absolute(store_dir));
        let _ = writeln!(out, "URL: {}", self.url);
        let _ = writeln!(out, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(out, "FileHash: {h}");
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(out, "FileSize: {n}");
        }
        let _ = writeln!(out, "NarHash: {}", self.nar_hash);
        let _ = writeln!(out, "NarSize: {}", self.nar_size);
        out.push_str("References: ");
        for (i, r) in sorted_unique(&self.references).into_iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let _ = write!(out, "{r}");
        }
        out.push('\n');
        if let Some(d) = &self.deriver {
            let _ = writeln!(out, "Deriver: {d}");
        }
        for sig in sorted_unique(&self.sigs) {
            let _ = writeln!(out, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(out, "CA: {ca}");
        }
        out
    }
    /// Parses a narinfo; unknown keys are ignored, required keys
    /// (StorePath, URL, NarHash, NarSize) must be present.
    ///
    /// As Nix: lines are `Key: value`; a missing Compression means `bzip2`;
    /// `Deriver: unknown-deriver` means none; NarSize 0 is rejected; a
    /// repeated key overrides except References and CA (an error).
    pub fn parse(text: &str, store_dir: &str) -> Result<Self, FormatError> {
        let err = |msg: String| FormatError::NarInfo(msg);
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references: Option<Vec<StorePath>> = None;
        let mut deriver = None;
        let mut sigs = Vec::new();
        let mut ca = None;
        for (no, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(':')
                .ok_or_else(|| err(format!("line {}: expected 'Key: value'", no + 1)))?;
            let value = value.strip_prefix(' ').unwrap_or(value);
            let field = |e: FormatError| err(format!("line {} ({key}): {e}", no + 1));
            let int = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| err(format!("line {} ({key}): not a number: {v:?}", no + 1)))
            };
            match key {
                "StorePath" => {
                    store_path = Some(StorePath::from_absolute(value, store_dir).map_err(field)?)
                }
                "URL" => url = Some(value.to_owned()),
                "Compression" => compression = Some(value.to_owned()),
                "FileHash" => file_hash = Some(Sha256Hash::parse(value).map_err(field)?),
                "FileSize" => file_size = Some(int(value)?),
                "NarHash" => nar_hash = Some(Sha256Hash::parse(value).map_err(field)?),
                "NarSize" => nar_size = Some(int(value)?),
                "References" => {
                    if references.as_ref().is_some_and(|r| !r.is_empty()) {
                        return Err(err(format!("line {}: References repeated", no + 1)));
                    }
                    let refs = value
                        .split(' ')
                        .filter(|r| !r.is_empty())
                        .map(StorePath::from_base_name)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(field)?;
                    references = Some(refs);
                }
                "Deriver" => {
                    deriver = if value == "unknown-deriver" {
                        None
                    } else {
                        Some(StorePath::from_base_name(value).map_err(field)?)
                    }
                }
                "Sig" => sigs.push(value.to_owned()),
                "CA" => {
                    if ca.is_some() {
                        return Err(err(format!("line {}: CA repeated", no + 1)));
                    }
                    ca = Some(value.to_owned());
                }
                _ => {}
            }
        }
        let store_path = store_path.ok_or_else(|| err("missing StorePath".into()))?;
        let url = url
            .filter(|u| !u.is_empty())
            .ok_or_else(|| err(format!("{store_path}: missing URL")))?;
        let nar_hash = nar_hash.ok_or_else(|| err(format!("{store_path}: missing NarHash")))?;
        let nar_size = nar_size
            .filter(|&n| n != 0)
            .ok_or_else(|| err(format!("{store_path}: missing or zero NarSize")))?;
        let compression = compression
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "bzip2".to_owned());
        Ok(NarInfo {
            store_path,
            url,
            compression,
            file_hash,
            file_size,
            nar_hash,
            nar_size,
            references: references.unwrap_or_default(),
            deriver,
            sigs,
            ca,
        })
    }
    /// `1;<path>;sha256:<nix32>;<narSize>;<sorted full ref paths, comma-joined>`
    pub fn fingerprint(&self, store_dir: &str) -> String {
        fingerprint(
            store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }
}

pub fn fingerprint(
    store_dir: &str,
    path: &StorePath,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let mut out = format!("1;{};{nar_hash};{nar_size};", path.to_absolute(store_dir));
    for (i, r) in sorted_unique(references).into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&r.to_absolute(store_dir));
    }
    out
}

/// Sorted, deduplicated view, as Nix's `std::set` iterates.
fn sorted_unique<T: Ord>(items: &[T]) -> Vec<&T> {
    let mut v: Vec<&T> = items.iter().collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::{PublicKey, SecretKey, DEFAULT_STORE_DIR as SD};

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/",
                $name
            ))
        };
    }
    /// (name, narinfo text) as `nix copy --to file://...?compression=zstd` wrote them.
    const NARINFOS: [(&str, &str); 4] = [
        ("fx-lib", fixture!("fx-lib.narinfo")),
        ("fx", fixture!("fx.narinfo")),
        ("fx-app", fixture!("fx-app.narinfo")),
        ("busybox-static", fixture!("busybox-static.narinfo")),
    ];
    const PUB: &str = fixture!("key.pub");
    const SEC: &str = fixture!("key.sec");

    fn get(name: &str) -> NarInfo {
        let text = NARINFOS.iter().find(|(n, _)| *n == name).unwrap().1;
        NarInfo::parse(text, SD).unwrap()
    }

    #[test]
    fn render_parse_round_trips_nix_output_byte_for_byte() {
        for (name, text) in NARINFOS {
            let info = NarInfo::parse(text, SD).unwrap();
            assert_eq!(info.store_path.name(), name);
            assert_eq!(info.render(SD), text, "{name}");
            assert_eq!(NarInfo::parse(&info.render(SD), SD).unwrap(), info);
        }
    }

    #[test]
    fn parses_fields() {
        let app = get("fx-app");
        assert_eq!(app.compression, "zstd");
        assert_eq!(app.file_size, Some(289));
        assert_eq!(app.nar_size, 664);
        let fh = app.file_hash.unwrap();
        assert_eq!(app.url, format!("nar/{}.nar.zst", fh.to_nix32()));
        let refs: Vec<&str> = app.references.iter().map(|r| r.name()).collect();
        assert_eq!(refs, ["fx", "fx-app", "busybox-static"]); // includes itself
        assert_eq!(app.deriver.as_ref().unwrap().name(), "fx-app.drv");
        assert_eq!(app.sigs.len(), 1);
        assert_eq!(app.ca, None);

        let lib = get("fx-lib");
        assert!(lib.references.is_empty());
        // Nix writes "References: " (trailing space) even when empty.
        assert!(fixture!("fx-lib.narinfo").contains("\nReferences: \n"));

        let bb = get("busybox-static");
        assert_eq!(bb.deriver, None); // no Deriver line at all
        assert!(!fixture!("busybox-static.narinfo").contains("Deriver"));
        assert_eq!(
            bb.ca.as_deref(),
            Some(format!("fixed:r:{}", bb.nar_hash).as_str())
        );
    }

    #[test]
    fn nix_signatures_verify_and_we_sign_identically() {
        let pk = PublicKey::parse(PUB).unwrap();
        let sk = SecretKey::parse(SEC).unwrap();
        for (name, _) in NARINFOS {
            let info = get(name);
            let fp = info.fingerprint(SD);
            assert!(fp.starts_with(&format!("1;{SD}/")));
            assert!(pk.verify(&fp, &info.sigs[0]), "{name}: {fp}");
            assert_eq!(sk.sign(&fp).to_string(), info.sigs[0], "{name}");
            // tampered fingerprints fail
            let bumped = fingerprint(
                SD,
                &info.store_path,
                &info.nar_hash,
                info.nar_size + 1,
                &info.references,
            );
            assert!(!pk.verify(&bumped, &info.sigs[0]));
            let mut fewer = info.references.clone();
            if fewer.pop().is_some() {
                let fp2 = fingerprint(SD, &info.store_path, &info.nar_hash, info.nar_size, &fewer);
                assert!(!pk.verify(&fp2, &info.sigs[0]));
            }
            let other_hash = Sha256Hash::digest(b"tampered");
            let fp3 = fingerprint(
                SD,
                &info.store_path,
                &other_hash,
                info.nar_size,
                &info.references,
            );
            assert!(!pk.verify(&fp3, &info.sigs[0]));
            assert!(!pk.verify(&format!("{fp} "), &info.sigs[0]));
        }
    }

    #[test]
    fn fingerprint_layout() {
        let app = get("fx-app");
        let mut shuffled = app.references.clone();
        shuffled.reverse();
        shuffled.push(shuffled[0].clone());
        let fp = fingerprint(SD, &app.store_path, &app.nar_hash, app.nar_size, &shuffled);
        assert_eq!(fp, app.fingerprint(SD));
        assert_eq!(
            fp,
            "1;/nix/store/dq0sczw1jrwad76lxr7ki5mznk5slsds-fx-app;\
             sha256:1cz4ajs9xpv38vckqs4lpn0asnmbqcy27c89wz01rfqfnfdm0x0f;664;\
             /nix/store/4a8i4a6xwn7lpbdkdf483zgppnis8p9c-fx,\
             /nix/store/dq0sczw1jrwad76lxr7ki5mznk5slsds-fx-app,\
             /nix/store/r9zgkzc5zab416qddj283jlsvp18ydzr-busybox-static"
        );
        let lib = get("fx-lib");
        assert!(lib.fingerprint(SD).ends_with(";120;"));
    }

    #[test]
    fn render_sorts_like_nix() {
        let mut app = get("fx-app");
        let text = app.render(SD);
        app.references.reverse();
        app.sigs = vec!["z:b".into(), "a:c".into(), "z:b".into()];
        let r = app.render(SD);
        assert_eq!(r.lines().nth(7), text.lines().nth(7));
        assert!(r.contains("Sig: a:c\nSig: z:b\n"));
        assert_eq!(r.matches("Sig:").count(), 2);
    }

    #[test]
    fn parse_rejects_and_tolerates() {
        let lib = fixture!("fx-lib.narinfo");
        // unknown keys ignored; missing final newline ok; unknown-deriver
        let extra = format!("{lib}System: x86_64-linux\n");
        assert_eq!(NarInfo::parse(&extra, SD).unwrap(), get("fx-lib"));
        assert_eq!(NarInfo::parse(lib.trim_end(), SD).unwrap(), get("fx-lib"));
        let unk = lib.replace(
            "Deriver: 9agfqy2y1pxh8p2lzf1047cvadn7xp5g-fx.drv",
            "Deriver: unknown-deriver",
        );
        assert_eq!(NarInfo::parse(&unk, SD).unwrap().deriver, None);
        let no_comp: String = lib
            .lines()
            .filter(|l| !l.starts_with("Compression"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(NarInfo::parse(&no_comp, SD).unwrap().compression, "bzip2");
        for required in ["StorePath", "URL", "NarHash", "NarSize"] {
            let without: String = lib
                .lines()
                .filter(|l| !l.starts_with(required))
                .map(|l| format!("{l}\n"))
                .collect();
            let e = NarInfo::parse(&without, SD).unwrap_err();
            assert!(matches!(e, FormatError::NarInfo(_)), "{required}");
        }
        for (from, to) in [
            ("NarSize: 120", "NarSize: 0"),
            ("NarSize: 120", "NarSize: x"),
            ("FileSize: 91", "FileSize: -1"),
            ("NarHash: sha256:04", "NarHash: sha256:e4"),
            ("References: ", "References: not-a-path"),
            ("/nix/store/0cwc", "/other/store/0cwc"),
            ("Deriver: 9agf", "Deriver: /9agf"),
            ("URL: nar", "garbage line\nURL: nar"),
        ] {
            assert!(lib.contains(from), "{from}");
            let bad = lib.replace(from, to);
            assert!(NarInfo::parse(&bad, SD).is_err(), "{to}");
        }
        // another store dir round-trips too
        let other = lib.replace("/nix/store/", "/tmp/store/");
        let info = NarInfo::parse(&other, "/tmp/store").unwrap();
        assert_eq!(info.render("/tmp/store"), other);
    }
}
