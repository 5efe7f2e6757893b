//! GitHub Actions artifacts (the v4 service, which `@actions/artifact` 2.x
//! and `act`'s artifact server speak): a failed build's packed trees
//! uploaded as one artifact of the run. Twirp JSON at
//! `$ACTIONS_RESULTS_URL/twirp/github.actions.results.api.v1.ArtifactService/`
//! with `Authorization: Bearer $ACTIONS_RUNTIME_TOKEN`:
//! `CreateArtifact` {workflow_run_backend_id, workflow_job_run_backend_id,
//! name, version: 4} → {ok, signedUploadUrl}; the zip goes to that blob URL
//! as blocks in order (`comp=block`, then `comp=blocklist`; act appends
//! blocks as they come, so they are sent one after the other);
//! `FinalizeArtifact` {…, name, size, hash: "sha256:…"} → {ok, artifactId}.
//! The backend ids are the token's `scp` claim `Actions.Results:RUN:JOB`,
//! as the official client reads them.
//!
//! An artifact is a zip (what `gh run download` and the web page unpack):
//! here one stored (uncompressed: the content is zstd already) entry.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::net::{Net, RetryPolicy};
use crate::secret::Secret;

const SERVICE: &str = "github.actions.results.api.v1.ArtifactService";
const AZURE_VERSION: &str = "2023-11-03";
/// Block size of the upload.
const BLOCK: usize = 8 << 20;

/// The artifact service of this job.
pub struct Artifacts {
    base: String,
    token: Secret<String>,
    run_id: String,
    job_id: String,
    net: Net,
}

/// An uploaded artifact.
#[derive(Clone, Debug)]
pub struct Uploaded {
    pub name: String,
    pub id: String,
    pub size: u64,
}

impl Artifacts {
    /// From the runner's environment; `None` outside a JavaScript action
    /// step (no `ACTIONS_RESULTS_URL` or token).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Option<Result<Artifacts>> {
        let url = env("ACTIONS_RESULTS_URL")?;
        let token = env("ACTIONS_RUNTIME_TOKEN")?;
        Some(Artifacts::new(&url, token))
    }

    pub fn new(results_url: &str, token: String) -> Result<Artifacts> {
        let (run_id, job_id) = backend_ids(&token).ok_or_else(|| {
            Error::cache(
                "github artifacts",
                "ACTIONS_RUNTIME_TOKEN has no Actions.Results scope",
            )
        })?;
        // The official client keeps only the origin of the URL.
        let base = match url::Url::parse(results_url) {
            Ok(u) => u.origin().ascii_serialization(),
            Err(e) => return Err(Error::cache("github artifacts", format!("bad URL: {e}"))),
        };
        let net = Net::new(
            format!("github artifacts at {base}"),
            RetryPolicy::from_env(),
        )?;
        Ok(Artifacts {
            base,
            token: Secret::new(token),
            run_id,
            job_id,
            net,
        })
    }

    fn twirp(&self, method: &str, body: Value) -> Result<Value> {
        let url = format!("{}/twirp/{SERVICE}/{method}", self.base);
        let body = body.to_string();
        let text = self.net.send_ok("POST", method, body.len() as u64, |c| {
            c.post(&url)
                .bearer_auth(self.token.expose())
                .header("Content-Type", "application/json")
                .body(body.clone())
        })?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| self.net.err(format!("{method}: bad JSON answer: {e}")))?;
        if v["ok"].as_bool() == Some(false) {
            return Err(self.net.err(format!("{method}: the service said no")));
        }
        Ok(v)
    }

    /// Uploads `file` as artifact `name`, the zip's one entry `entry`.
    pub fn upload(&self, name: &str, entry: &str, file: &Path) -> Result<Uploaded> {
        let dir = tempfile::tempdir().map_err(|e| Error::Other(e.into()))?;
        let zip = dir.path().join("artifact.zip");
        write_zip(entry, file, &zip)?;
        let ids = json!({
            "workflow_run_backend_id": self.run_id,
            "workflow_job_run_backend_id": self.job_id,
        });
        let mut create = ids.clone();
        create["name"] = name.into();
        create["version"] = 4.into();
        let v = self.twirp("CreateArtifact", create)?;
        let url = v["signedUploadUrl"]
            .as_str()
            .or(v["signed_upload_url"].as_str())
            .ok_or_else(|| self.net.err("CreateArtifact: no signedUploadUrl"))?
            .to_string();
        let (size, sha) = self.put_blocks(&url, &zip)?;
        let mut fin = ids;
        fin["name"] = name.into();
        fin["size"] = size.to_string().into();
        fin["hash"] = format!("sha256:{sha}").into();
        let v = self.twirp("FinalizeArtifact", fin)?;
        let id = match &v["artifactId"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok(Uploaded {
            name: name.to_string(),
            id,
            size,
        })
    }

    /// The zip as blocks, in order, then the block list; its size and sha256.
    fn put_blocks(&self, url: &str, zip: &Path) -> Result<(u64, String)> {
        let sep = if url.contains('?') { '&' } else { '?' };
        let mut f = std::fs::File::open(zip).map_err(|e| Error::Other(e.into()))?;
        let mut sha = Sha256::new();
        let mut ids = Vec::new();
        let mut size = 0u64;
        loop {
            let mut buf = Vec::with_capacity(BLOCK);
            (&mut f)
                .take(BLOCK as u64)
                .read_to_end(&mut buf)
                .map_err(|e| Error::Other(e.into()))?;
            if buf.is_empty() && !ids.is_empty() {
                break;
            }
            sha.update(&buf);
            size += buf.len() as u64;
            // Azure wants ids of one length: base64 of a fixed-width index.
            let id = crate::nix::hash::BASE64.encode(format!("block-{:010}", ids.len()));
            let u = format!("{url}{sep}comp=block&blockid={}", urlencode(&id));
            let last = buf.len() < BLOCK;
            self.net
                .send_ok("PUT", "artifact block", buf.len() as u64, |c| {
                    c.put(&u)
                        .header("x-ms-version", AZURE_VERSION)
                        .header("Content-Type", "application/octet-stream")
                        .body(buf.clone())
                })?;
            ids.push(id);
            if last {
                break;
            }
        }
        let mut xml = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
        for id in &ids {
            xml.push_str(&format!("<Latest>{id}</Latest>"));
        }
        xml.push_str("</BlockList>");
        let u = format!("{url}{sep}comp=blocklist");
        self.net
            .send_ok("PUT", "artifact block list", xml.len() as u64, |c| {
                c.put(&u)
                    .header("x-ms-version", AZURE_VERSION)
                    .header("Content-Type", "application/xml")
                    .body(xml.clone())
            })?;
        let hex: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok((size, hex))
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `(run, job)` from the JWT's `scp` claim `… Actions.Results:RUN:JOB …`.
fn backend_ids(token: &str) -> Option<(String, String)> {
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    v["scp"].as_str()?.split(' ').find_map(|s| {
        let mut p = s.split(':');
        (p.next() == Some("Actions.Results")).then_some(())?;
        Some((p.next()?.to_string(), p.next()?.to_string()))
    })
}

// ------------------------------------------------------------------- zip

fn crc32(data: impl Read) -> std::io::Result<(u32, u64)> {
    let table: Vec<u32> = (0..256u32)
        .map(|i| {
            (0..8).fold(i, |c, _| {
                if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                }
            })
        })
        .collect();
    let mut crc = !0u32;
    let mut len = 0u64;
    let mut r = std::io::BufReader::new(data);
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        for b in &buf[..n] {
            crc = table[((crc ^ *b as u32) & 0xff) as usize] ^ (crc >> 8);
        }
    }
    Ok((!crc, len))
}

/// A zip holding `src` as its one stored entry `name`.
pub fn write_zip(name: &str, src: &Path, dst: &Path) -> Result<()> {
    let io = |e: std::io::Error| Error::Other(anyhow::anyhow!("zipping {}: {e}", src.display()));
    let (crc, len) = crc32(std::fs::File::open(src).map_err(io)?).map_err(io)?;
    if len >= u32::MAX as u64 {
        return Err(Error::Usage(format!(
            "{}: over 4 GiB, too big for one artifact entry (lower --keep-failed-max)",
            src.display()
        )));
    }
    let len = len as u32;
    let n = name.as_bytes();
    let mut out = std::io::BufWriter::new(std::fs::File::create(dst).map_err(io)?);
    // Local file header: version 2.0, no flags, stored, no time.
    let mut h = Vec::new();
    h.extend(0x0403_4b50u32.to_le_bytes());
    h.extend([20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
    h.extend(crc.to_le_bytes());
    h.extend(len.to_le_bytes());
    h.extend(len.to_le_bytes());
    h.extend((n.len() as u16).to_le_bytes());
    h.extend(0u16.to_le_bytes());
    h.extend(n);
    out.write_all(&h).map_err(io)?;
    std::io::copy(&mut std::fs::File::open(src).map_err(io)?, &mut out).map_err(io)?;
    let cd_at = h.len() as u32 + len;
    // Central directory entry, then its end record.
    let mut c = Vec::new();
    c.extend(0x0201_4b50u32.to_le_bytes());
    c.extend([20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
    c.extend(crc.to_le_bytes());
    c.extend(len.to_le_bytes());
    c.extend(len.to_le_bytes());
    c.extend((n.len() as u16).to_le_bytes());
    c.extend([0, 0, 0, 0, 0, 0, 0, 0]);
    c.extend((0o100644u32 << 16).to_le_bytes());
    c.extend(0u32.to_le_bytes());
    c.extend(n);
    let mut e = Vec::new();
    e.extend(0x0605_4b50u32.to_le_bytes());
    e.extend([0, 0, 0, 0, 1, 0, 1, 0]);
    e.extend((c.len() as u32).to_le_bytes());
    e.extend(cd_at.to_le_bytes());
    e.extend(0u16.to_le_bytes());
    out.write_all(&c).map_err(io)?;
    out.write_all(&e).map_err(io)?;
    out.flush().map_err(io)
}

/// When `file` is a zip (a downloaded artifact), its first stored entry
/// (name and a reader positioned at its data); `None` when it is no zip.
pub fn open_zip_entry(file: &Path) -> Result<Option<(String, impl Read)>> {
    let io = |e: std::io::Error| Error::Input {
        path: file.to_path_buf(),
        msg: format!("cannot read: {e}"),
    };
    let mut f = std::fs::File::open(file).map_err(io)?;
    let mut h = [0u8; 30];
    if f.read_exact(&mut h).is_err() || h[..4] != [0x50, 0x4b, 0x03, 0x04] {
        return Ok(None);
    }
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]) as u64;
    let method = u16_at(8);
    let flags = u16_at(6);
    let size = u32::from_le_bytes([h[18], h[19], h[20], h[21]]) as u64;
    let (name_len, extra_len) = (u16_at(26), u16_at(28));
    let mut name = vec![0u8; name_len as usize];
    f.read_exact(&mut name).map_err(io)?;
    let name = String::from_utf8_lossy(&name).into_owned();
    if method != 0 || flags & 0x08 != 0 {
        return Err(Error::Input {
            path: file.to_path_buf(),
            msg: format!("a compressed zip: unzip it, then give the {name} inside with --file"),
        });
    }
    f.seek(SeekFrom::Current(extra_len as i64)).map_err(io)?;
    Ok(Some((name, f.take(size))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_a_known_string() {
        assert_eq!(crc32(&b"123456789"[..]).unwrap(), (0xCBF4_3926, 9));
    }

    #[test]
    fn a_zip_written_reads_back_and_unzip_agrees() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("t.tar.zst");
        std::fs::write(&src, b"packed trees").unwrap();
        let zip = d.path().join("a.zip");
        write_zip("failed-x.tar.zst", &src, &zip).unwrap();
        let (name, mut r) = open_zip_entry(&zip).unwrap().unwrap();
        assert_eq!(name, "failed-x.tar.zst");
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "packed trees");
        assert!(open_zip_entry(&src).unwrap().is_none());
        // The system's unzip, when there is one, checks the CRC too.
        if let Ok(out) = std::process::Command::new("unzip")
            .arg("-t")
            .arg(&zip)
            .output()
        {
            assert!(out.status.success(), "{out:?}");
        }
    }

    #[test]
    fn backend_ids_come_from_the_scp_claim() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let tok = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"HS256"}"#),
            b64(r#"{"scp":"Actions.GenericRead:x Actions.Results:12:34"}"#)
        );
        assert_eq!(backend_ids(&tok), Some(("12".into(), "34".into())));
        assert_eq!(backend_ids("no-jwt"), None);
    }
}
