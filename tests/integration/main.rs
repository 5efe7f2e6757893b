//! One integration-test binary driving the built `nixdelta` against real
//! Nix (Debian's nix-bin) on temporary chroot stores (`--store DIR`).
//! Nothing is mocked: every cache is read back by real Nix.

// Helpers: test tools, real servers, the Actions cache fake.
mod helpers;

mod archive;
mod archive_github;
mod archive_s3;
mod ci_buildkite;
mod ci_github;
mod ci_gitlab;
mod ci_track;
mod closure;
mod config_file;
mod daemon;
mod docs;
mod docs_run;
mod docs_run_ci;
mod env_archive;
mod errors;
mod hardening;
mod keep_failed;
mod key_eval;
mod matrix;
mod passthrough;
mod progress;
mod purge;
mod push;
mod read_side;
mod shared_store;
mod track;
mod watch;
mod workload;

// Network binary caches (real SeaweedFS and nginx on 127.0.0.1).
mod faults;
mod http;
mod s3;
mod verify;
