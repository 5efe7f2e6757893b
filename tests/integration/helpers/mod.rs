//! What the tests share, kept apart from the tests themselves: the test
//! environment and commands (`util`), real servers (`servers`: SeaweedFS,
//! nginx), a fault-injecting proxy, store helpers, and the one fake (the
//! GitHub Actions cache service, which cannot run here).

pub mod actions_cache;
pub mod github_rest;
pub mod proxy;
pub mod servers;
pub mod store;
pub mod util;
