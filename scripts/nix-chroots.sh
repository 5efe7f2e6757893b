#!/usr/bin/env bash
# Creates (once) and caches debootstrapped Debian chroots with newer Nix for
# the version matrix (tests/integration/matrix.rs):
#   trixie -> Nix 2.26, sid -> Nix 2.34.
# Cached under $NIXDELTA_CHROOTS (default /var/cache/nixdelta-test/chroots)/<suite>;
# a chroot counts as built only when its .ok stamp exists (written last), so
# an interrupted build is redone from scratch. Needs root and the Debian mirror.
# Usage: scripts/nix-chroots.sh [suite...]   (default: trixie sid)
set -euo pipefail
ROOT=${NIXDELTA_CHROOTS:-/var/cache/nixdelta-test/chroots}
MIRROR=${NIXDELTA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$ROOT"
build() {
  local suite=$1 dir=$ROOT/$1
  [ -f "$dir/.ok" ] && return 0
  # Serialise concurrent builders of the same suite (parallel tests).
  exec {lock}>"$ROOT/$suite.lock"
  flock "$lock"
  if [ -f "$dir/.ok" ]; then exec {lock}>&-; return 0; fi
  rm -rf "$dir"
  debootstrap --variant=minbase "$suite" "$dir" "$MIRROR" >"$ROOT/$suite.log" 2>&1 ||
    { echo "nix-chroots: debootstrap $suite failed, see $ROOT/$suite.log" >&2; return 1; }
  # apt in the chroot; sid's Release files may be past Valid-Until on a
  # snapshot mirror. Mounts live only in this unshared namespace.
  unshare --mount --propagation private sh -euc '
    dir=$1
    mount -t proc proc "$dir/proc"
    mount --rbind /dev "$dir/dev"
    cp /etc/resolv.conf "$dir/etc/resolv.conf" || true
    chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false update -qq
    chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false \
      install -y -qq --no-install-recommends nix-bin busybox-static sudo
    chroot "$dir" apt-get clean
  ' sh "$dir" >>"$ROOT/$suite.log" 2>&1 ||
    { echo "nix-chroots: apt in $suite failed, see $ROOT/$suite.log" >&2; return 1; }
  mkdir -p "$dir/etc/nix"
  cat >"$dir/etc/nix/nix.conf" <<'CONF'
sandbox = false
substituters =
experimental-features = nix-command flakes
build-users-group =
CONF
  unshare --mount --propagation private sh -euc '
    mount -t proc proc "$1/proc"; chroot "$1" nix --version' sh "$dir" >"$dir/.nix-version"
  touch "$dir/.ok"
  exec {lock}>&-
}
# The daemon topologies' job users (tests/integration/matrix.rs): one the
# chroot's nix-daemon trusts, one it does not. Added to cached chroots too.
users() {
  local dir=$ROOT/$1 u
  exec {ulock}>"$ROOT/$1.lock"
  flock "$ulock"
  for u in nixdelta-trusted nixdelta-untrusted; do
    chroot "$dir" id -u "$u" >/dev/null 2>&1 ||
      chroot "$dir" useradd --system --no-create-home --shell /bin/sh "$u"
  done
  exec {ulock}>&-
}
for s in "${@:-trixie sid}"; do
  for one in $s; do build "$one"; users "$one"; done
done
