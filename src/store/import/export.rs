//! The import way in: Nix's export format streamed into
//! `nix-store --import`, each NAR verified while it streams.

use super::*;

const EXPORT_MAGIC: u64 = 0x4558_494e;

fn nix_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
}

struct ImportChild {
    child: Child,
}

impl ImportChild {
    /// Ends the import after the entries fully sent: what is buffered goes
    /// to Nix, which registers every complete entry and fails on the
    /// unfinished one (no metadata: nothing of it is registered).
    fn fail(mut self, stdin: io::BufWriter<std::process::ChildStdin>, why: Error) -> Error {
        let mut stdin = stdin;
        let _ = stdin.flush();
        drop(stdin);
        let _ = self.child.wait();
        why
    }
}

/// Why `nix-store --import` failed, and what to do when the reason is a
/// daemon that does not trust this user (archives carry no signatures, so
/// only a trusted user may import them).
fn import_failed(stderr: &str) -> Error {
    let err = stderr.trim();
    let untrusted = [
        "lacks a signature",
        "lacks a valid signature",
        "not a trusted user",
    ]
    .iter()
    .any(|m| err.contains(m));
    if untrusted {
        return Error::Store(format!(
            "the Nix daemon refused the import: this user is not trusted by it. Add it to \
             `trusted-users` in the daemon's nix.conf, or restore as root with --method direct \
             (Nix said: {err})"
        ));
    }
    Error::Store(format!("nix-store --import failed: {err}"))
}

pub(super) fn via_import<R: Read>(
    l: &Layout,
    src: &mut R,
    entries: &[ParsedEntry],
    actions: &[Action],
    what: &str,
) -> Result<(usize, u64, usize)> {
    if !actions.contains(&Action::Import) {
        for e in entries {
            discard(src, e.nar_size, what)?;
        }
        format::read_trailer(src, what)?;
        return Ok((0, 0, 0));
    }
    let store_dir = crate::nix::DEFAULT_STORE_DIR;
    let mut cmd = nix_command(l, "nix-store");
    cmd.arg("--import")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| Error::Store(format!("cannot run nix-store --import: {e}")))?;
    let mut ic = ImportChild { child };
    let mut stdin = io::BufWriter::with_capacity(1 << 20, ic.child.stdin.take().unwrap());
    let mut added = 0;
    let mut bytes = 0;
    let pipe_err = |e: io::Error| Error::Store(format!("nix-store --import: {e}"));
    let mut buf = vec![0u8; CHUNK];
    for (i, e) in entries.iter().enumerate() {
        if actions[i] != Action::Import {
            if let Err(err) = discard(src, e.nar_size, what) {
                return Err(ic.fail(stdin, err));
            }
            continue;
        }
        let step = (|| -> Result<()> {
            stdin.write_all(&1u64.to_le_bytes()).map_err(pipe_err)?;
            let mut h = Sha256::new();
            let mut left = e.nar_size;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                src.read_exact(&mut buf[..n])
                    .map_err(|e| read_err(what, e))?;
                h.update(&buf[..n]);
                stdin.write_all(&buf[..n]).map_err(pipe_err)?;
                left -= n as u64;
            }
            let got = Sha256Hash(h.finalize().into());
            if got != e.nar_hash {
                return Err(Error::Integrity(format!(
                    "store archive {what}: {}",
                    mismatch(e, got, store_dir)
                )));
            }
            let mut meta = Vec::new();
            meta.extend_from_slice(&EXPORT_MAGIC.to_le_bytes());
            nix_str(&mut meta, &e.path.to_absolute(store_dir));
            meta.extend_from_slice(&(e.references.len() as u64).to_le_bytes());
            for r in &e.references {
                nix_str(&mut meta, &r.to_absolute(store_dir));
            }
            nix_str(
                &mut meta,
                &e.deriver
                    .as_ref()
                    .map(|d| d.to_absolute(store_dir))
                    .unwrap_or_default(),
            );
            meta.extend_from_slice(&0u64.to_le_bytes());
            stdin.write_all(&meta).map_err(pipe_err)
        })();
        if let Err(err) = step {
            return Err(ic.fail(stdin, err));
        }
        added += 1;
        bytes += e.nar_size;
        crate::progress::add(1, e.nar_size);
    }
    let end = stdin
        .write_all(&0u64.to_le_bytes())
        .and_then(|()| stdin.flush())
        .map_err(pipe_err);
    drop(stdin);
    let out = ic.child.wait_with_output().map_err(pipe_err)?;
    if !out.status.success() {
        return Err(import_failed(&String::from_utf8_lossy(&out.stderr)));
    }
    end?;
    format::read_trailer(src, what)?;
    Ok((added, bytes, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_daemon_refusals_say_what_to_do() {
        let e = import_failed(
            "error: cannot add path '/nix/store/abc-x' because it lacks a signature by a trusted key\n",
        )
        .to_string();
        assert!(
            e.contains("trusted-users") && e.contains("--method direct"),
            "{e}"
        );
        assert!(!e.starts_with("cannot read"), "{e}");
        let other = import_failed("error: disk on fire").to_string();
        assert!(
            other.contains("nix-store --import failed: error: disk on fire"),
            "{other}"
        );
    }
}
