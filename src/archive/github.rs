//! `github`: the GitHub Actions cache service (v2 twirp, v1 artifactcache).

use super::Backend;
use crate::error::{Error, Result};

pub fn open(spec: &str, _read_only: bool) -> Result<Box<dyn Backend>> {
    Err(Error::Usage(format!("{spec}: not implemented yet")))
}
