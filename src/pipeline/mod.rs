//! The steps of a job, one module each, in data-flow order.

pub mod closure;
pub mod daemon;
pub mod diff;
pub mod filter;
pub mod pack;
pub mod plan;
pub mod push;
pub mod read_side;
pub mod scope;
pub mod self_source;
pub mod snapshot;
pub mod summary;
pub mod upload;
pub mod verify;
pub mod warm;
