//! `verify`: checks that a binary cache is consistent, as a substituting
//! Nix would need it: every narinfo parses and names its own store path, its
//! NAR exists with the narinfo's FileSize (and, optionally downloaded, its
//! FileHash, NarHash and NarSize), every reference has a narinfo (on the
//! cache or an upstream), and signatures verify against trusted keys.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use crate::cache::BinaryCache;
use crate::error::{Error, Result};
use crate::nix::{NarInfo, PublicKey, Sha256Hash, StorePath, DEFAULT_STORE_DIR};

pub struct VerifyOptions {
    /// Every narinfo needs a valid signature by one of these (none given:
    /// signatures are not checked).
    pub trusted_keys: Vec<PublicKey>,
    /// Download and hash every NAR.
    pub check_contents: bool,
    /// Caches whose narinfos satisfy references missing from the target.
    pub upstreams: Vec<Box<dyn BinaryCache>>,
    /// Narinfos checked at once.
    pub jobs: usize,
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub store_dir: String,
    pub narinfos: usize,
    /// NARs whose size was checked.
    pub nars: usize,
    /// NARs downloaded and hashed (`check_contents`).
    pub nars_hashed: usize,
    /// NARs whose compression we can't decompress (contents unchecked).
    pub nars_unhashable: usize,
    /// References found on an upstream rather than the target.
    pub upstream_refs: usize,
    /// NAR files no narinfo points at (left by interrupted pushes: harmless).
    pub orphan_nars: Option<usize>,
    /// What is wrong, one line each, sorted.
    pub faults: Vec<String>,
}

/// One narinfo's findings.
struct Checked {
    /// Hash part from the file name.
    name: String,
    info: Option<NarInfo>,
    faults: Vec<String>,
    hashed: bool,
    unhashable: bool,
}

pub fn verify(cache: &dyn BinaryCache, opts: &VerifyOptions) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let store_dir = match cache.get("nix-cache-info") {
        Ok(Some(text)) => {
            crate::cache::info_store_dir(&text).unwrap_or_else(|| DEFAULT_STORE_DIR.to_string())
        }
        Ok(None) => {
            // Nothing at all there: a wrong URL, not a faulty cache.
            if cache.list("").map(|l| l.is_empty()).unwrap_or(false) {
                return Err(Error::cache(
                    cache.url(),
                    "no binary cache here (no nix-cache-info, no files)",
                ));
            }
            report
                .faults
                .push("nix-cache-info: missing (Nix will not use this cache)".into());
            DEFAULT_STORE_DIR.to_string()
        }
        Err(e) => return Err(e),
    };
    report.store_dir = store_dir.clone();
    let mut names: Vec<String> = cache
        .list("")?
        .into_iter()
        .filter_map(|n| n.strip_suffix(".narinfo").map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    report.narinfos = names.len();

    let next = AtomicUsize::new(0);
    let mut checked: Vec<Checked> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..opts.jobs.clamp(1, names.len().max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(name) = names.get(i) else { break };
                        out.push(check_one(cache, name, &store_dir, opts));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("verify worker panicked"))
            .collect()
    });
    checked.sort_by(|a, b| a.name.cmp(&b.name));

    // References: present on the target (listed), else asked again (a
    // concurrent push may have added it after the listing), else upstream.
    let listed: HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut missing: BTreeMap<StorePath, Vec<String>> = BTreeMap::new();
    for c in &checked {
        let Some(info) = &c.info else { continue };
        for r in &info.references {
            if *r != info.store_path && !listed.contains(r.hash_part().as_str()) {
                missing
                    .entry(r.clone())
                    .or_default()
                    .push(format!("{}.narinfo", c.name));
            }
        }
    }
    let mut need: Vec<StorePath> = missing.keys().cloned().collect();
    if !need.is_empty() {
        need = still_missing(cache, need)?;
    }
    for up in &opts.upstreams {
        if need.is_empty() {
            break;
        }
        let before = need.len();
        need = still_missing(up.as_ref(), need)?;
        report.upstream_refs += before - need.len();
    }
    let need: HashSet<StorePath> = need.into_iter().collect();

    let mut nar_urls = HashSet::new();
    for c in checked {
        report.nars_hashed += usize::from(c.hashed);
        report.nars_unhashable += usize::from(c.unhashable);
        if let Some(info) = &c.info {
            report.nars += 1;
            nar_urls.insert(info.url.clone());
        }
        report.faults.extend(c.faults);
    }
    for (r, referrers) in missing {
        if need.contains(&r) {
            for referrer in referrers {
                report.faults.push(format!(
                    "{referrer}: references {}, which has no narinfo (here{})",
                    r.to_absolute(&store_dir),
                    if opts.upstreams.is_empty() {
                        ""
                    } else {
                        " or upstream"
                    }
                ));
            }
        }
    }
    report.orphan_nars = cache.list("nar").ok().map(|files| {
        files
            .iter()
            .filter(|f| !nar_urls.contains(&format!("nar/{f}")))
            .count()
    });
    report.faults.sort();
    Ok(report)
}

/// The paths of `paths` without a narinfo on `cache`.
fn still_missing(cache: &dyn BinaryCache, paths: Vec<StorePath>) -> Result<Vec<StorePath>> {
    let has = cache.has_narinfos(&paths)?;
    Ok(paths
        .into_iter()
        .zip(has)
        .filter(|(_, h)| !h)
        .map(|(p, _)| p)
        .collect())
}

fn check_one(
    cache: &dyn BinaryCache,
    name: &str,
    store_dir: &str,
    opts: &VerifyOptions,
) -> Checked {
    let mut c = Checked {
        name: name.to_string(),
        info: None,
        faults: Vec::new(),
        hashed: false,
        unhashable: false,
    };
    let file = format!("{name}.narinfo");
    let fault = |c: &mut Checked, msg: String| c.faults.push(format!("{file}: {msg}"));
    let text = match cache.get(&file) {
        Ok(Some(t)) => t,
        Ok(None) => {
            fault(&mut c, "listed but cannot be read (deleted?)".into());
            return c;
        }
        Err(e) => {
            fault(&mut c, format!("cannot read: {e}"));
            return c;
        }
    };
    let info = match NarInfo::parse(&String::from_utf8_lossy(&text), store_dir) {
        Ok(i) => i,
        Err(e) => {
            fault(&mut c, e.to_string());
            return c;
        }
    };
    if info.store_path.hash_part() != name {
        fault(
            &mut c,
            format!(
                "is for {}, not for hash {name}",
                info.store_path.to_absolute(store_dir)
            ),
        );
    }
    // Nix names NARs by their file hash: a name of that form must match.
    if let (Some(fh), Some(stem)) = (&info.file_hash, nar_url_hash(&info.url)) {
        if stem != fh.to_nix32() {
            fault(
                &mut c,
                format!(
                    "URL {} names another file hash than FileHash {fh}",
                    info.url
                ),
            );
        }
    }
    match cache.size(&info.url) {
        Ok(None) => fault(&mut c, format!("NAR {} is missing", info.url)),
        Ok(Some(size)) => {
            if let Some(want) = info.file_size {
                if size != want {
                    fault(
                        &mut c,
                        format!("NAR {} has {size} bytes, FileSize says {want}", info.url),
                    );
                }
            }
        }
        Err(e) => fault(&mut c, format!("cannot check NAR {}: {e}", info.url)),
    }
    if !opts.trusted_keys.is_empty() {
        let fp = info.fingerprint(store_dir);
        let valid = info
            .sigs
            .iter()
            .any(|s| opts.trusted_keys.iter().any(|k| k.verify(&fp, s)));
        if !valid {
            let names: Vec<&str> = info
                .sigs
                .iter()
                .filter_map(|s| s.split_once(':').map(|(n, _)| n))
                .collect();
            let trusted: Vec<&str> = opts.trusted_keys.iter().map(|k| k.name()).collect();
            let msg = if names.iter().any(|n| trusted.contains(n)) {
                "signature by a trusted key does not verify (narinfo altered?)".to_string()
            } else if names.is_empty() {
                "not signed".to_string()
            } else {
                format!(
                    "no signature by a trusted key (signed by {})",
                    names.join(", ")
                )
            };
            fault(&mut c, msg);
        }
    }
    if opts.check_contents {
        match check_contents(cache, &info) {
            Ok(Contents::Checked(faults)) => {
                c.hashed = true;
                for f in faults {
                    fault(&mut c, f);
                }
            }
            Ok(Contents::Unsupported) => c.unhashable = true,
            Ok(Contents::Missing) => {} // reported above
            Err(e) => fault(&mut c, format!("cannot read NAR {}: {e}", info.url)),
        }
    }
    c.info = Some(info);
    c
}

/// `nar/<52 nix32 chars>.nar[.ext]` → the hash.
fn nar_url_hash(url: &str) -> Option<&str> {
    let file = url.strip_prefix("nar/")?;
    let (stem, _) = file.split_once(".nar")?;
    (stem.len() == 52).then_some(stem)
}

enum Contents {
    Checked(Vec<String>),
    Unsupported,
    Missing,
}

fn check_contents(cache: &dyn BinaryCache, info: &NarInfo) -> Result<Contents, String> {
    let decoder = |r: Box<dyn Read + Send>| -> io::Result<Option<Box<dyn Read + Send>>> {
        Ok(match info.compression.as_str() {
            "none" | "" => Some(r),
            "zstd" => Some(Box::new(zstd::stream::read::Decoder::new(r)?)),
            _ => None,
        })
    };
    let Some(reader) = cache.reader(&info.url).map_err(|e| e.to_string())? else {
        return Ok(Contents::Missing);
    };
    let (file_hasher, file_state) = HashingReader::new(reader);
    let Some(mut nar) = decoder(Box::new(file_hasher)).map_err(|e| e.to_string())? else {
        return Ok(Contents::Unsupported);
    };
    let mut nar_hasher = Sha256::new();
    let mut nar_size = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    let mut faults = Vec::new();
    loop {
        match nar.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                nar_hasher.update(&buf[..n]);
                nar_size += n as u64;
            }
            Err(e) => {
                faults.push(format!("NAR {} does not decompress: {e}", info.url));
                break;
            }
        }
    }
    // Whatever the decoder left unread still belongs to the file.
    drop(nar);
    let (file_hash, file_size) = file_state.finish();
    let nar_hash = Sha256Hash(nar_hasher.finalize().into());
    if let Some(want) = &info.file_hash {
        if *want != file_hash {
            faults.push(format!(
                "NAR {} has file hash {file_hash}, FileHash says {want}",
                info.url
            ));
        }
    }
    if let Some(want) = info.file_size {
        if want != file_size {
            faults.push(format!(
                "NAR {} has {file_size} bytes, FileSize says {want}",
                info.url
            ));
        }
    }
    if faults.is_empty() && (nar_hash != info.nar_hash || nar_size != info.nar_size) {
        faults.push(format!(
            "NAR {} unpacks to {nar_hash} ({nar_size} bytes), narinfo says {} ({} bytes)",
            info.url, info.nar_hash, info.nar_size
        ));
    }
    Ok(Contents::Checked(faults))
}

/// Hashes what is read through it; the state outlives the reader (which
/// the decoder owns).
struct HashingReader {
    inner: Box<dyn Read + Send>,
    state: std::sync::Arc<std::sync::Mutex<(Sha256, u64)>>,
}

struct HashState(std::sync::Arc<std::sync::Mutex<(Sha256, u64)>>);

impl HashingReader {
    fn new(inner: Box<dyn Read + Send>) -> (HashingReader, HashState) {
        let state = std::sync::Arc::new(std::sync::Mutex::new((Sha256::new(), 0)));
        (
            HashingReader {
                inner,
                state: state.clone(),
            },
            HashState(state),
        )
    }
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.state.lock().expect("hash state");
        s.0.update(&buf[..n]);
        s.1 += n as u64;
        Ok(n)
    }
}

impl Drop for HashingReader {
    fn drop(&mut self) {
        // Hash the rest of the file too (bytes after the compressed frame).
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = self.inner.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut s = self.state.lock().expect("hash state");
            s.0.update(&buf[..n]);
            s.1 += n as u64;
        }
    }
}

impl HashState {
    fn finish(self) -> (Sha256Hash, u64) {
        let s = self.0.lock().expect("hash state");
        (Sha256Hash(s.0.clone().finalize().into()), s.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nar_url_forms() {
        let h = "1".repeat(52);
        assert_eq!(nar_url_hash(&format!("nar/{h}.nar.zst")), Some(h.as_str()));
        assert_eq!(nar_url_hash(&format!("nar/{h}.nar")), Some(h.as_str()));
        assert_eq!(nar_url_hash("nar/abc.nar.xz"), None);
        assert_eq!(nar_url_hash("elsewhere/x"), None);
    }
}
