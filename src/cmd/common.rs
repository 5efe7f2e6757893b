//! Pieces shared by several subcommands.

use std::path::{Path, PathBuf};

use nixdelta::error::{Error, Result};
use nixdelta::nix::SecretKey;
use nixdelta::pipeline::pack::PackOptions;
use nixdelta::pipeline::upload::UploadOptions;

#[derive(clap::Args, Clone, Debug)]
pub struct PushArgs {
    /// Binary cache URL (`file:///DIR`).
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

pub fn load_secret_key(file: Option<&Path>) -> Result<SecretKey> {
    let (origin, text) = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| Error::Key {
                path: f.to_path_buf(),
                msg: format!("cannot read: {e}"),
            })?;
            (f.to_path_buf(), zeroize::Zeroizing::new(text))
        }
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
