# Eval-time dependencies: store paths that appear while *evaluating*, not
# building: a `builtins.fetchurl` and a `builtins.fetchTarball` (pinned by
# hash) and an import-from-derivation (IFD) whose output is a Nix file.
#
#   nix-build eval-time.nix --argstr fileUrl file:///.../data.txt --argstr fileHash sha256-... \
#     --argstr tarUrl file:///.../src.tar.gz --argstr tarHash sha256-...
{ fileUrl, fileHash, tarUrl, tarHash, salt ? "" }:
let
  busybox = builtins.path {
    name = "busybox-static";
    path = /usr/bin;
    filter = p: t: baseNameOf p == "busybox";
  };
  sh = name: script: derivation {
    inherit name salt;
    system = builtins.currentSystem;
    builder = "${busybox}/busybox";
    args = [ "sh" "-c" script ];
  };
  fetched = builtins.fetchurl { url = fileUrl; sha256 = fileHash; };
  tarball = builtins.fetchTarball { url = tarUrl; sha256 = tarHash; };
  # IFD: a derivation whose output is Nix code, imported during evaluation.
  generated = sh "generated-nix" "echo '{ answer = 42; }' > $out";
  answer = (import generated).answer;
in {
  inherit fetched tarball generated;
  result = sh "eval-time-result" ''
    echo ${toString answer} > $out
    cat ${fetched} >> $out
    cat ${tarball}/hello.txt >> $out
  '';
}
