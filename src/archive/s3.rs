//! `s3://bucket/prefix?endpoint=…&region=…`.

use std::io::Read;

use super::{Backend, Found, Produce, SaveOutcome};
use crate::error::{Error, Result};

pub struct S3Backend;

impl S3Backend {
    pub fn from_url(url: &str, _read_only: bool) -> Result<S3Backend> {
        Err(Error::Usage(format!("{url}: not implemented yet")))
    }
}

impl Backend for S3Backend {
    fn describe(&self) -> String {
        String::new()
    }
    fn lookup(&self, _key: &str, _prefixes: &[String]) -> Result<Option<Found>> {
        Ok(None)
    }
    fn open(&self, _found: &Found) -> Result<Box<dyn Read + Send>> {
        unimplemented!()
    }
    fn save(&self, _key: &str, _produce: Produce<'_>) -> Result<SaveOutcome> {
        unimplemented!()
    }
}
