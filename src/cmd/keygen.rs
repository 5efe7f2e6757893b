//! `nixdelta keygen`.

use std::path::Path;

use nixdelta::error::{exit, Error, Result};
use nixdelta::nix::SecretKey;

pub fn keygen(name: &str, out: &Path, force: bool) -> Result<i32> {
    // The name becomes NAME.sec / NAME.pub inside --out: it must not
    // reach outside it (`../evil`, `a/b`) or be hidden (`.x`).
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    if !plain {
        return Err(Error::Usage(format!(
            "key name {name:?}: use letters, digits, '.', '-', '_' or '+' \
             (not starting with '.'), e.g. cache.example.org-1"
        )));
    }
    let key = SecretKey::generate(name).map_err(|e| Error::Usage(format!("key name: {e}")))?;
    let sec = out.join(format!("{name}.sec"));
    let public = out.join(format!("{name}.pub"));
    for f in [&sec, &public] {
        if f.exists() && !force {
            return Err(Error::Usage(format!(
                "{} exists (use --force to overwrite)",
                f.display()
            )));
        }
    }
    let io = |p: &Path, e: std::io::Error| Error::Other(anyhow::anyhow!("{}: {e}", p.display()));
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    write_private(&sec, key.to_file_string().as_bytes()).map_err(|e| io(&sec, e))?;
    std::fs::write(&public, key.public_key().to_string()).map_err(|e| io(&public, e))?;
    println!("{}", key.public_key());
    eprintln!("wrote {} (secret) and {}", sec.display(), public.display());
    Ok(exit::OK)
}

/// Creates `path` readable by its owner only, from the first byte on.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}
