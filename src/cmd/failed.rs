//! `nixdelta failed-tree fetch`: a failed build's kept trees, back from
//! the archive backend `run --keep-failed` saved them in.

use std::path::PathBuf;

use nixdelta::error::{exit, Result};

#[derive(clap::Subcommand)]
pub enum FailedTreeCommand {
    /// Fetch and unpack the build trees saved under KEY.
    Fetch {
        /// The archive backend (`dir:PATH`, `github`, `s3://…`).
        #[arg(long, value_name = "BACKEND", env = "NIXDELTA_ARCHIVE")]
        archive: String,
        /// The `failed-…` key the run printed.
        #[arg(long)]
        key: String,
        /// Where to unpack them.
        #[arg(long, value_name = "DIR", default_value = "failed-tree")]
        out: PathBuf,
    },
}

pub fn run(cmd: &FailedTreeCommand) -> Result<i32> {
    match cmd {
        FailedTreeCommand::Fetch { archive, key, out } => {
            nixdelta::job::failed::fetch(archive, key, out)?;
            eprintln!("nixdelta: build trees of {key} in {}", out.display());
            Ok(exit::OK)
        }
    }
}
