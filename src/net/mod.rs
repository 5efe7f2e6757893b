//! The one network stack: an HTTP client whose every request goes through
//! one retry policy (deadline, backoff with jitter, `Retry-After`), chunked
//! transfers (parallel upload behind a `Write`, ranged download behind a
//! `Read`), S3 (URL, credentials including profiles, SigV4, list,
//! multipart), and URL redaction. Binary caches (`cache/`) and archive
//! backends (`archive/`) both use it; it knows neither.

mod aws_credentials;
pub mod client;
pub mod redact;
pub mod retry;
pub mod s3;
pub mod transfer;

pub use client::{parallel_map, Net, MAX_IN_FLIGHT, STREAM_TIMEOUT};
pub use retry::RetryPolicy;
