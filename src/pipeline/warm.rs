//! Warm start from the binary cache alone (no CI cache: a laptop, another
//! CI): `finish` writes a small signed manifest of the paths the job
//! realised under the cache key; `start --restore-from-cache` reads it and
//! has Nix substitute those paths before evaluation. That is what makes
//! `builtins.fetchurl`/`fetchTarball` pins evaluate offline: Nix itself does
//! not substitute them during evaluation (checked on Nix 2.8, 2.26, 2.34).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::BinaryCache;
use crate::error::{Error, Result};
use crate::nix::{PublicKey, SecretKey};
use crate::store::PathInfo;

pub const MANIFEST_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmManifest {
    pub version: u32,
    pub cache_key: String,
    pub created_at: u64,
    pub paths: Vec<WarmPath>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmPath {
    pub path: String,
    /// No deriver: a source, fetched or added during evaluation.
    pub eval_time: bool,
}

/// The file as stored: the manifest text exactly as signed, and the
/// signature, so no JSON canonicalisation is needed to verify it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    manifest: String,
    sig: String,
}

/// Where the manifest of `cache_key` lives in a binary cache.
pub fn manifest_name(cache_key: &str) -> String {
    format!("nixdelta/{cache_key}.json")
}

/// The newest manifest of any key starting with `prefix`.
pub fn latest_name(prefix: &str) -> String {
    format!("nixdelta/latest/{prefix}.json")
}

/// What is signed: domain-separated so it can never pass for a narinfo
/// fingerprint (those start with `1;`).
fn fingerprint(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("nixdelta-warm-manifest-1;{hex}")
}

pub fn build(cache_key: &str, paths: &[PathInfo], store_dir: &str) -> WarmManifest {
    let created_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut paths: Vec<WarmPath> = paths
        .iter()
        .map(|i| WarmPath {
            path: i.path.to_absolute(store_dir),
            eval_time: i.deriver.is_none(),
        })
        .collect();
    paths.sort_by(|a, b| a.path.cmp(&b.path));
    WarmManifest {
        version: MANIFEST_VERSION,
        cache_key: cache_key.to_string(),
        created_at,
        paths,
    }
}

/// The union of what an earlier job under the same key listed and what
/// this one adds: a job that realised nothing new (an archive hit) must
/// not shrink the manifest to what it uploaded.
pub fn merge(old: &WarmManifest, mut new: WarmManifest) -> WarmManifest {
    let mut seen: std::collections::HashSet<String> =
        new.paths.iter().map(|p| p.path.clone()).collect();
    for p in &old.paths {
        if seen.insert(p.path.clone()) {
            new.paths.push(p.clone());
        }
    }
    new.paths.sort_by(|a, b| a.path.cmp(&b.path));
    new
}

/// Writes the manifest under its key and as the latest of `prefixes`.
pub fn write(
    cache: &dyn BinaryCache,
    key: &SecretKey,
    manifest: &WarmManifest,
    prefixes: &[String],
) -> Result<()> {
    let text = serde_json::to_string(manifest).map_err(|e| Error::Other(e.into()))?;
    let sig = key.sign(&fingerprint(&text)).to_string();
    let body = serde_json::to_vec(&Envelope {
        manifest: text,
        sig,
    })
    .map_err(|e| Error::Other(e.into()))?;
    cache.put(&manifest_name(&manifest.cache_key), &body)?;
    for p in prefixes {
        cache.put(&latest_name(p), &body)?;
    }
    Ok(())
}

/// Reads the manifest of `cache_key`, else the latest of the first prefix
/// that has one. A manifest not signed by a trusted key is an error: it
/// would make the job substitute paths someone else chose.
pub fn read(
    cache: &dyn BinaryCache,
    cache_key: &str,
    prefixes: &[String],
    trusted: &[PublicKey],
) -> Result<Option<(String, WarmManifest)>> {
    let names =
        std::iter::once(manifest_name(cache_key)).chain(prefixes.iter().map(|p| latest_name(p)));
    for name in names {
        let Some(body) = cache.get(&name)? else {
            continue;
        };
        let bad = |msg: String| Error::cache(cache.url(), format!("{name}: {msg}"));
        let env: Envelope = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        let fp = fingerprint(&env.manifest);
        if !trusted.iter().any(|k| k.verify(&fp, &env.sig)) {
            return Err(bad("not signed by a trusted key".into()));
        }
        let m: WarmManifest =
            serde_json::from_str(&env.manifest).map_err(|e| bad(e.to_string()))?;
        if m.version != MANIFEST_VERSION {
            return Err(bad(format!(
                "manifest version {} (this nixdelta reads {MANIFEST_VERSION})",
                m.version
            )));
        }
        return Ok(Some((name, m)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::FileCache;

    #[test]
    fn round_trip_and_signature_checked() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let cache = FileCache::open(&url, dir.path()).unwrap();
        let key = SecretKey::generate("warm-1").unwrap();
        let other = SecretKey::generate("warm-1").unwrap();
        let m = WarmManifest {
            version: MANIFEST_VERSION,
            cache_key: "nixdelta-v1-x86_64-linux-abc".into(),
            created_at: 1,
            paths: vec![WarmPath {
                path: "/nix/store/x".into(),
                eval_time: true,
            }],
        };
        write(&cache, &key, &m, &["nixdelta-v1-x86_64-linux-".into()]).unwrap();
        let got = read(&cache, &m.cache_key, &[], &[key.public_key()])
            .unwrap()
            .unwrap();
        assert_eq!(got.1, m);
        let by_prefix = read(
            &cache,
            "other-key",
            &["nixdelta-v1-x86_64-linux-".into()],
            &[key.public_key()],
        );
        assert_eq!(by_prefix.unwrap().unwrap().1, m);
        let err = read(&cache, &m.cache_key, &[], &[other.public_key()]).unwrap_err();
        assert!(
            err.to_string().contains("not signed by a trusted key"),
            "{err}"
        );
        assert!(read(&cache, "missing", &[], &[key.public_key()])
            .unwrap()
            .is_none());
        // Tampering with the manifest text breaks the signature.
        let name = dir.path().join(manifest_name(&m.cache_key));
        let text = std::fs::read_to_string(&name)
            .unwrap()
            .replace("/nix/store/x", "/nix/store/y");
        std::fs::write(&name, text).unwrap();
        assert!(read(&cache, &m.cache_key, &[], &[key.public_key()]).is_err());
    }
}
