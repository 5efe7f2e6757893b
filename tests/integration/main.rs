//! One integration-test binary driving the built `nixdelta` against real
//! Nix (Debian's nix-bin) on temporary chroot stores (`--store DIR`).
//! Nothing is mocked: every cache is read back by real Nix.

mod util;

mod errors;
mod push;
mod track;
mod workload;
