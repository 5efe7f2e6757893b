# The classic build-time-dependency example, hermetic: no nixpkgs, no
# network, a static busybox (Debian's busybox-static) as the only builder.
#
#   nix-build fib.nix -A fib6          # value only: fib(n-1), fib(n-2) are
#                                      # build-time deps, not runtime refs
#   nix-build fib.nix -A chain6        # keeps references: a real closure
#
# `salt` gives a fresh set of store paths (tests use it to stay apart).
{ salt ? "" }:
let
  busybox = builtins.path {
    name = "busybox-static";
    path = /usr/bin;
    filter = p: t: baseNameOf p == "busybox";
  };
  sh = script: deps: derivation ({
    system = builtins.currentSystem;
    builder = "${busybox}/busybox";
    args = [ "sh" "-c" script ];
    inherit salt;
  } // deps);

  # fib(n) = fib(n-1) + fib(n-2), computed at build time from the outputs
  # of the two previous derivations; the output holds only the number.
  fib = n:
    if n < 2 then sh "echo ${toString n} > $out" { name = "fib-${toString n}"; }
    else sh "echo $(( $(cat $a) + $(cat $b) )) > $out" {
      name = "fib-${toString n}";
      a = fib (n - 1);
      b = fib (n - 2);
    };

  # Same shape, but each output refers to its inputs: its runtime closure
  # is the whole DAG.
  chain = n:
    if n < 2 then sh "mkdir $out; echo ${toString n} > $out/value" { name = "chain-${toString n}"; }
    else sh ''
      mkdir $out
      echo $(( $(cat $a/value) + $(cat $b/value) )) > $out/value
      echo $a $b > $out/deps
      ${busybox}/busybox ln -s $a $out/prev
    '' {
      name = "chain-${toString n}";
      a = chain (n - 1);
      b = chain (n - 2);
    };
in {
  inherit busybox;
  fib3 = fib 3; fib4 = fib 4; fib6 = fib 6;
  chain6 = chain 6;
}
