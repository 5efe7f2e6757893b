//! Pieces shared by several subcommands.

use std::path::PathBuf;

use nixdelta::job::ReadConfig;
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

/// How the job's Nix reads the binary cache (the read side).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ReadArgs {
    /// The URL Nix reads the cache from, when not `--to` (e.g. an S3
    /// bucket's public HTTPS URL).
    #[arg(long, value_name = "URL", env = "NIXDELTA_READ_URL")]
    pub read_url: Option<String>,
    /// The cache's public key (`name:base64`, or a file); default: derived
    /// from the signing key.
    #[arg(long, value_name = "KEY", env = "NIXDELTA_PUBLIC_KEY")]
    pub public_key: Option<String>,
    /// Another binary cache the job's Nix reads (repeatable).
    #[arg(long = "extra-substituter", value_name = "URL")]
    pub extra_substituters: Vec<String>,
    /// A key the extra caches sign with (`name:base64` or a file; repeatable).
    #[arg(long = "extra-trusted-public-key", value_name = "KEY")]
    pub extra_public_keys: Vec<String>,
}

impl ReadArgs {
    pub fn config(&self, configure: bool) -> ReadConfig {
        ReadConfig {
            configure,
            read_url: self.read_url.clone(),
            public_key: self.public_key.clone(),
            extra_substituters: self.extra_substituters.clone(),
            extra_public_keys: self.extra_public_keys.clone(),
            configure_daemon: false,
            keep_failed: false,
        }
    }
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

pub fn upload_options(args: &UploadArgs) -> UploadOptions {
    UploadOptions::new(args.jobs, args.compression_level)
}
