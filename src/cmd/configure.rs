//! `nixdelta configure`: the Nix settings that make this job's Nix read the
//! binary cache (see [`nixdelta::job::read`]), printed or written.

use std::io::Write;
use std::path::PathBuf;

use nixdelta::error::{exit, Error, Result};
use nixdelta::job::{self, JobConfig, PushConfig};

use super::common::ReadArgs;

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
    pub to: Option<String>,
    #[command(flatten)]
    pub read: ReadArgs,
    /// The signing key the public key is derived from (or $NIXDELTA_SECRET_KEY).
    #[arg(long, value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "nix-conf")]
    pub format: Format,
    /// Write to FILE instead of stdout (github-env appends, as $GITHUB_ENV
    /// wants; the others replace it).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn configure(args: &ConfigureArgs) -> Result<i32> {
    let cfg = JobConfig {
        push: PushConfig {
            to: args.to.clone(),
            secret_key_file: args.secret_key_file.clone(),
            ..Default::default()
        },
        read: args.read.config(true),
        ..Default::default()
    };
    let Some(side) = job::read::plan(&cfg, &env_var)? else {
        return Err(Error::Usage(
            "configure: give --to or --extra-substituter".into(),
        ));
    };
    for w in &side.warnings {
        eprintln!("nixdelta: warning: {w}");
    }
    if side.credentials.is_some() {
        eprintln!(
            "nixdelta: note: Nix reads the cache's credentials from its netrc-file, not the URL \
             (`nixdelta start` writes one for the job)"
        );
    }
    let existing = env_var("NIX_CONFIG");
    let text = match args.format {
        Format::NixConf => side.nix_conf(None),
        Format::Env => side.env(existing.as_deref(), None),
        Format::GithubEnv => side.github_env(existing.as_deref(), None),
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
        "nixdelta: Nix reads {} via {}",
        side.substituters.join(" "),
        path.display()
    );
    Ok(exit::OK)
}
