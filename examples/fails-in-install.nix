# A build that fails in its install phase, for keep-failed: the build
# phase leaves src/, build.log and private/ (mode 0700: under a daemon,
# only root and the build user read it), the install phase writes
# install-progress.txt and fails. Hermetic like fib.nix (a static busybox).
#
#   nixdelta run --keep-failed --archive dir:/tmp/a -- nix-build fails-in-install.nix
{ salt ? "" }:
let
  busybox = builtins.path {
    name = "busybox-static";
    path = /usr/bin;
    filter = p: t: baseNameOf p == "busybox";
  };
in
derivation {
  name = "fails-in-install";
  system = builtins.currentSystem;
  builder = "${busybox}/busybox";
  inherit salt;
  args = [ "sh" "-c" ''
    buildPhase() {
      mkdir -p src && echo 'int main() { return 0; }' > src/main.c
      echo compiled > build.log
      mkdir private && echo "the build user's" > private/notes && chmod 700 private
    }
    installPhase() {
      echo "copied 1 of 2 files" > install-progress.txt
      echo "install: cannot create $out/bin/tool" >&2
      return 1
    }
    for phase in buildPhase installPhase; do
      echo "running $phase"
      $phase || exit 1
    done
  '' ];
}
