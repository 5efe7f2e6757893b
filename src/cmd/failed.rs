//! `nixdelta failed-tree fetch`: a failed build's kept trees, back from
//! the archive backend `--keep-failed` saved them in, or from a CI
//! artifact downloaded here.

use std::path::PathBuf;

use nixdelta::error::{exit, Error, Result};

#[derive(clap::Subcommand)]
pub enum FailedTreeCommand {
    /// Fetch and unpack the build trees saved under KEY (or a
    /// downloaded `.tar.zst`, or the GitHub artifact's zip, given with --file).
    Fetch {
        /// The archive backend (`dir:PATH`, `github`, `s3://…`).
        #[arg(long, value_name = "BACKEND", env = "NIXDELTA_ARCHIVE")]
        archive: Option<String>,
        /// The `failed-…` key the run printed.
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        key: Option<String>,
        /// A packed tree already on this machine: a downloaded CI artifact
        /// (the `.tar.zst`, or the zip GitHub serves it in).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Where to unpack them.
        #[arg(long, value_name = "DIR", default_value = "failed-tree")]
        out: PathBuf,
    },
}

pub fn run(cmd: &FailedTreeCommand) -> Result<i32> {
    match cmd {
        FailedTreeCommand::Fetch {
            archive,
            key,
            file,
            out,
        } => {
            let from = match (file, key) {
                (Some(file), _) => {
                    nixdelta::job::failed::fetch_file(file, out)?;
                    file.display().to_string()
                }
                (None, Some(key)) => {
                    let archive = archive.as_deref().ok_or_else(|| {
                        Error::Usage("failed-tree fetch --key needs --archive".into())
                    })?;
                    nixdelta::job::failed::fetch(archive, key, out)?;
                    key.clone()
                }
                (None, None) => return Err(Error::Usage("give --key or --file".into())),
            };
            eprintln!("nixdelta: build trees of {from} in {}", out.display());
            Ok(exit::OK)
        }
    }
}
