//! The store archive format, version 1: zstd frames one after the other
//! (which a zstd decoder reads as one stream; frames compressed by the
//! archive writer carry a content checksum, NARs copied in as the push
//! compressed them may not) holding
//!
//! ```text
//! "nixdelta-archive"          16 bytes
//! version                     u32 LE (1)
//! flags                       u32 LE (0)
//! manifest length             u64 LE
//! manifest                    JSON (Manifest), that many bytes
//! sha256 of the manifest      32 bytes
//! NAR of paths[0] … paths[n-1]   exactly narSize bytes each, in manifest
//!                             order: every path after its references
//! "nixdelta-archive-end"      20 bytes, then the end of the stream
//! ```
//!
//! The manifest carries what Nix needs to register each path and what its
//! DB knew (narHash, narSize, references, deriver, ca, sigs), so a reader
//! verifies every NAR before it hands it to Nix.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{PathInfo, Sha256Hash, StorePath};
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 16] = b"nixdelta-archive";
pub const END_MAGIC: &[u8; 20] = b"nixdelta-archive-end";
/// The format version written, and the only one read.
pub const FORMAT_VERSION: u32 = 1;
/// Largest manifest accepted (about 2 M paths).
const MAX_MANIFEST: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The logical store directory of every path (`/nix/store`).
    pub store_dir: String,
    /// The key it was saved under (informational).
    #[serde(default)]
    pub key: String,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created: u64,
    pub paths: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Base name `<hash>-<name>`.
    pub path: String,
    /// `sha256:<nix32>`.
    pub nar_hash: String,
    pub nar_size: u64,
    /// Base names, sorted; may include the path itself.
    #[serde(default)]
    pub references: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deriver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sigs: Vec<String>,
}

/// An entry with its fields parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedEntry {
    pub path: StorePath,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub ca: Option<String>,
    pub sigs: Vec<String>,
}

impl Entry {
    pub fn from_info(info: &PathInfo) -> Entry {
        Entry {
            path: info.path.to_string(),
            nar_hash: info.nar_hash.to_string(),
            nar_size: info.nar_size,
            references: info.references.iter().map(|r| r.to_string()).collect(),
            deriver: info.deriver.as_ref().map(|d| d.to_string()),
            ca: info.ca.clone(),
            sigs: info.sigs.clone(),
        }
    }

    pub fn parse(&self) -> std::result::Result<ParsedEntry, String> {
        let sp = |s: &str| StorePath::from_base_name(s).map_err(|e| e.to_string());
        Ok(ParsedEntry {
            path: sp(&self.path)?,
            nar_hash: Sha256Hash::parse(&self.nar_hash).map_err(|e| e.to_string())?,
            nar_size: self.nar_size,
            references: self
                .references
                .iter()
                .map(|r| sp(r))
                .collect::<std::result::Result<_, _>>()?,
            deriver: self.deriver.as_deref().map(sp).transpose()?,
            ca: self.ca.clone(),
            sigs: self.sigs.clone(),
        })
    }
}

/// An `Error::Input` about the archive `what` (a key, a file name).
pub fn input_err(what: &str, msg: impl Into<String>) -> Error {
    Error::Input {
        path: PathBuf::from(format!("store archive {what}")),
        msg: msg.into(),
    }
}

/// Writes the header and manifest.
pub fn write_header<W: Write>(out: &mut W, manifest: &Manifest) -> io::Result<()> {
    let json = serde_json::to_vec(manifest).map_err(io::Error::other)?;
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    out.write_all(&Sha256Hash::digest(&json).0)
}

pub fn write_trailer<W: Write>(out: &mut W) -> io::Result<()> {
    out.write_all(END_MAGIC)
}

/// Maps an I/O error of reading the (decompressed) archive to a clear
/// input error: truncation and zstd damage are the archive's fault.
pub fn read_err(what: &str, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => input_err(what, "archive is truncated"),
        _ if is_zstd_error(&e) => input_err(
            what,
            format!("archive is corrupt (zstd: {e}); nothing past this point was imported"),
        ),
        _ => input_err(what, format!("cannot read the archive: {e}")),
    }
}

fn is_zstd_error(e: &io::Error) -> bool {
    // zstd-safe reports decoding errors as `Other` with zstd's own message.
    let s = e.to_string();
    e.kind() == io::ErrorKind::Other
        && [
            "Unknown frame descriptor",
            "Corrupted block",
            "checksum",
            "Data corruption",
            "Restored data doesn't match checksum",
            "Src size is incorrect",
            "Frame requires too much memory",
        ]
        .iter()
        .any(|m| s.contains(m))
}

/// Reads and checks the header; returns the manifest.
pub fn read_header<R: Read>(src: &mut R, what: &str) -> Result<Manifest> {
    let mut head = [0u8; 32];
    src.read_exact(&mut head).map_err(|e| {
        if is_zstd_error(&e) {
            input_err(what, format!("not a nixdelta store archive (zstd: {e})"))
        } else {
            read_err(what, e)
        }
    })?;
    if &head[..16] != MAGIC {
        return Err(input_err(what, "not a nixdelta store archive (bad magic)"));
    }
    let version = u32::from_le_bytes(head[16..20].try_into().unwrap());
    if version != FORMAT_VERSION {
        return Err(input_err(
            what,
            format!(
                "archive format version {version} is not supported (this nixdelta reads version {FORMAT_VERSION})"
            ),
        ));
    }
    let len = u64::from_le_bytes(head[24..32].try_into().unwrap());
    if len > MAX_MANIFEST {
        return Err(input_err(
            what,
            format!("manifest of {len} bytes is too large"),
        ));
    }
    let mut json = vec![0u8; len as usize];
    src.read_exact(&mut json).map_err(|e| read_err(what, e))?;
    let mut sum = [0u8; 32];
    src.read_exact(&mut sum).map_err(|e| read_err(what, e))?;
    if Sha256Hash::digest(&json).0 != sum {
        return Err(input_err(
            what,
            "archive is corrupt: the manifest's checksum does not match",
        ));
    }
    let m: Manifest =
        serde_json::from_slice(&json).map_err(|e| input_err(what, format!("bad manifest: {e}")))?;
    Ok(m)
}

/// Reads the end marker and checks that the stream ends there (which also
/// makes zstd verify its content checksum).
pub fn read_trailer<R: Read>(src: &mut R, what: &str) -> Result<()> {
    let mut end = [0u8; 20];
    src.read_exact(&mut end).map_err(|e| read_err(what, e))?;
    if &end != END_MAGIC {
        return Err(input_err(
            what,
            "archive is corrupt: bad end marker (NAR sizes disagree with the manifest)",
        ));
    }
    let mut extra = [0u8; 1];
    match src.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(input_err(what, "data after the end marker")),
        Err(e) => Err(read_err(what, e)),
    }
}

/// Orders `infos` so that every path comes after its references (those in
/// the set), deterministically (by store path among independent ones).
pub fn reference_order(mut infos: Vec<PathInfo>) -> Vec<PathInfo> {
    use std::collections::HashMap;
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    let index: HashMap<StorePath, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, p)| (p.path.clone(), i))
        .collect();
    // 0 = unvisited, 1 = in progress, 2 = done
    let mut state = vec![0u8; infos.len()];
    let mut order = Vec::with_capacity(infos.len());
    for start in 0..infos.len() {
        if state[start] != 0 {
            continue;
        }
        // Iterative DFS: (node, next reference to look at).
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some((node, next)) = stack.last_mut() {
            let refs = &infos[*node].references;
            if *next < refs.len() {
                let r = &refs[*next];
                *next += 1;
                if let Some(&j) = index.get(r) {
                    if state[j] == 0 {
                        state[j] = 1;
                        stack.push((j, 0));
                    }
                }
            } else {
                state[*node] = 2;
                order.push(*node);
                stack.pop();
            }
        }
    }
    let mut slots: Vec<Option<PathInfo>> = infos.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| slots[i].take().unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(n: &str) -> StorePath {
        StorePath::from_base_name(&format!("{}-{n}", "0".repeat(31) + &n[..1])).unwrap()
    }

    fn info(n: &str, refs: &[&str]) -> PathInfo {
        PathInfo {
            path: sp(n),
            id: 0,
            nar_hash: Sha256Hash([0; 32]),
            nar_size: 0,
            references: refs.iter().map(|r| sp(r)).collect(),
            deriver: None,
            sigs: vec![],
            ca: None,
        }
    }

    #[test]
    fn dependencies_first() {
        let set = vec![
            info("a", &["b", "c", "a"]),
            info("b", &["c", "z"]),
            info("c", &[]),
            info("d", &["a"]),
        ];
        let order: Vec<String> = reference_order(set)
            .iter()
            .map(|i| i.path.name().to_string())
            .collect();
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap();
        assert!(pos("c") < pos("b") && pos("b") < pos("a") && pos("a") < pos("d"));
        assert_eq!(order.len(), 4);
    }

    #[test]
    fn header_round_trip_and_version_check() {
        let m = Manifest {
            store_dir: "/nix/store".into(),
            key: "k".into(),
            created: 1,
            paths: vec![Entry::from_info(&info("a", &["a"]))],
        };
        let mut buf = Vec::new();
        write_header(&mut buf, &m).unwrap();
        assert_eq!(read_header(&mut &buf[..], "t").unwrap(), m);
        let mut v2 = buf.clone();
        v2[16] = 2;
        let e = read_header(&mut &v2[..], "t").unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        assert_eq!(e.exit_code(), crate::error::exit::INPUT);
        let e = read_header(&mut &buf[..40], "t").unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = read_header(&mut &b"garbage garbage garbage garbage garbage"[..], "t").unwrap_err();
        assert!(
            e.to_string().contains("not a nixdelta store archive"),
            "{e}"
        );
    }
}
