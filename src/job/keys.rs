//! Signing and public keys as a job is given them: `name:base64` in an
//! option or a file, or the secret in `$NIXDELTA_SECRET_KEY`. Errors name
//! the option or the file, never the value.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::nix::{PublicKey, SecretKey};

/// Key files hold one line; anything larger is not a key file (and must
/// not be read whole into memory).
const KEY_FILE_MAX: u64 = 1 << 20;

/// Reads a small file (a key), refusing files over `KEY_FILE_MAX`.
fn read_key_file(path: &Path) -> Result<zeroize::Zeroizing<String>> {
    let err = |msg: String| Error::Key {
        path: path.to_path_buf(),
        msg,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read key file: {e}")))?;
    if meta.len() > KEY_FILE_MAX {
        return Err(err(format!(
            "{} bytes: not a key file (a key file is one line, under 1 MiB)",
            meta.len()
        )));
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    std::io::Read::read_to_string(
        &mut std::io::Read::take(
            std::fs::File::open(path).map_err(|e| err(format!("cannot read key file: {e}")))?,
            KEY_FILE_MAX,
        ),
        &mut text,
    )
    .map_err(|e| err(format!("cannot read key file: {e}")))?;
    Ok(text)
}

/// A public key given to `option` as `name:base64` or as a file holding
/// one. Errors name the option or the file, never the value: a secret key
/// pasted here must not reach a CI log.
pub fn load_public_key(option: &str, spec: &str) -> Result<PublicKey> {
    let spec = spec.trim();
    let path = Path::new(spec);
    if !path.exists() {
        return PublicKey::parse(spec).map_err(|e| Error::Key {
            path: PathBuf::from(option),
            msg: if spec.contains(':') {
                e.to_string()
            } else {
                format!("{e}, and no file of that name exists")
            },
        });
    }
    let text = read_key_file(path)?;
    PublicKey::parse(&text).map_err(|e| Error::Key {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Every `--trusted-public-key` given (keys or files holding one).
pub fn load_trusted_keys(specs: &[String]) -> Result<Vec<PublicKey>> {
    specs
        .iter()
        .map(|s| load_public_key("--trusted-public-key", s))
        .collect()
}

pub fn load_secret_key(file: Option<&Path>) -> Result<SecretKey> {
    let (origin, text) = match file {
        Some(f) => (f.to_path_buf(), read_key_file(f)?),
        None => match std::env::var("NIXDELTA_SECRET_KEY") {
            Ok(text) => (
                PathBuf::from("$NIXDELTA_SECRET_KEY"),
                zeroize::Zeroizing::new(text),
            ),
            Err(_) => {
                return Err(Error::Usage(
                    "a signing key is needed: --secret-key-file FILE or $NIXDELTA_SECRET_KEY"
                        .into(),
                ))
            }
        },
    };
    SecretKey::parse(&text).map_err(|e| Error::Key {
        path: origin,
        msg: e.to_string(),
    })
}
