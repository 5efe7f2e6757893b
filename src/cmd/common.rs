//! Pieces shared by several subcommands.

use std::path::{Path, PathBuf};

use nixdelta::error::{Error, Result};
use nixdelta::nix::{PublicKey, SecretKey};
use nixdelta::pipeline::pack::PackOptions;
use nixdelta::pipeline::upload::UploadOptions;

#[derive(clap::Args, Clone, Debug)]
pub struct PushArgs {
    /// Binary cache to push to: `file:///DIR`, `s3://BUCKET[/PREFIX]?…`,
    /// `http(s)://HOST/PATH` (see below).
    #[arg(long, value_name = "URL")]
    pub to: String,
    #[command(flatten)]
    pub upload: UploadArgs,
}

/// How uploads are signed and compressed.
#[derive(clap::Args, Clone, Debug)]
pub struct UploadArgs {
    /// Nix secret key file (`name:base64`); or the key itself in $NIXDELTA_SECRET_KEY.
    #[arg(long, value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Paths compressed in parallel (default: number of cores).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// zstd level (Nix uses 3).
    #[arg(long, value_name = "L", default_value_t = 3)]
    pub compression_level: i32,
}

/// The URL forms every option naming a binary cache takes, for `--help`
/// (a macro: `concat!` in clap attributes takes only literals).
#[macro_export]
macro_rules! cache_urls {
    () => {
        "\
Binary cache URLs:
  file:///DIR                      a directory, as Nix's file:// store
  s3://BUCKET[/PREFIX]?region=R[&endpoint=URL][&profile=P]
                                   AWS S3 or compatible (credentials: environment, profile)
  http://HOST/PATH, https://...    HTTP PUT (nginx dav, ...); credentials from --netrc-file"
    };
}

/// The archive backends `--archive` takes, for `--help`.
#[macro_export]
macro_rules! archive_backends {
    () => {
        "\
Archive backends:
  dir:PATH[?max-size=10G]          a directory (a persistent runner, a CI cache folder)
  github                           the GitHub Actions cache (v2, or v1 on older servers)
  s3://BUCKET/PREFIX?region=R[&endpoint=URL][&profile=P]   credentials as for --to"
    };
}

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

pub fn upload_options(args: &UploadArgs) -> UploadOptions {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let jobs = args.jobs.unwrap_or(cores).max(1);
    UploadOptions {
        jobs,
        pack: PackOptions {
            level: args.compression_level,
            threads: cores as u32,
        },
    }
}
