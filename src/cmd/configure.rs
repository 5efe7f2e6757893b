//! `nixdelta configure`: the Nix settings that make this job's Nix read the
//! binary cache (see [`nixdelta::pipeline::read_side`]), printed or written.

use std::io::Write;
use std::path::PathBuf;

use nixdelta::error::{exit, Error, Result};
use nixdelta::job::keys::{load_public_key, load_secret_key};
use nixdelta::pipeline::read_side::read_side;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `nix.conf` lines.
    NixConf,
    /// A shell `export NIX_CONFIG=…` (the job's own NIX_CONFIG kept first).
    Env,
    /// A `$GITHUB_ENV` entry setting NIX_CONFIG for later steps.
    GithubEnv,
}

#[derive(clap::Args, Clone, Debug)]
pub struct ConfigureArgs {
    /// The binary cache the job pushes to.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// The URL Nix reads the cache from, when not `--to` (e.g. an S3
    /// bucket's public HTTPS URL).
    #[arg(long, value_name = "URL")]
    pub read_url: Option<String>,
    /// The cache's public key (`name:base64`, or a file); default: derived
    /// from the signing key (--secret-key-file or $NIXDELTA_SECRET_KEY).
    #[arg(long, value_name = "KEY", env = "NIXDELTA_PUBLIC_KEY")]
    pub public_key: Option<String>,
    #[arg(long, value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "nix-conf")]
    pub format: Format,
    /// Write to FILE instead of stdout (github-env appends, as $GITHUB_ENV
    /// wants; the others replace it).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn configure(args: &ConfigureArgs) -> Result<i32> {
    // Only ever the public half: the secret key stays where it is.
    let key = match &args.public_key {
        Some(k) => load_public_key("--public-key", k)?,
        None => load_secret_key(args.secret_key_file.as_deref())?.public_key(),
    };
    let side = read_side(&args.to, args.read_url.as_deref(), key)?;
    for n in &side.notes {
        eprintln!("nixdelta: note: {n}");
    }
    let existing = std::env::var("NIX_CONFIG").ok();
    let text = match args.format {
        Format::NixConf => side.nix_conf(),
        Format::Env => side.env(existing.as_deref()),
        Format::GithubEnv => side.github_env(existing.as_deref()),
    };
    let Some(path) = &args.output else {
        print!("{text}");
        return Ok(exit::OK);
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(args.format == Format::GithubEnv)
        .truncate(args.format != Format::GithubEnv)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()).map(|_| f))
        .map_err(|e| Error::Input {
            path: path.clone(),
            msg: format!("cannot write: {e}"),
        })?;
    f.flush().ok();
    eprintln!(
        "nixdelta: Nix reads {} (key {}) via {}",
        side.substituter,
        side.public_key.name(),
        path.display()
    );
    Ok(exit::OK)
}
