//! nixdelta: push exactly what a CI job newly realised in its Nix store to a
//! binary cache, and restore store archives keyed by `flake.lock`.
//!
//! Data flow (one direction): key files → cache key → archive restore →
//! snapshot → user build → diff → push plan → NAR → hash → zstd → sign →
//! upload NARs, then narinfos in reference order → save archive → summary.
//!
//! * [`nix`]: pure Nix formats (store paths, nix32, NAR, narinfo, signing).
//! * [`store`]: the only code that reads the Nix DB or spawns `nix`.
//! * [`cache`]: binary-cache targets.
//! * [`archive`]: store archives (format, restore, save, CI cache backends).
//! * [`pipeline`]: one module per step.

pub mod archive;
pub mod cache;
pub mod error;
pub mod job;
pub mod net;
pub mod nix;
pub mod pipeline;
pub mod size;
pub mod store;
