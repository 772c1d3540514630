# Benchmark graph for bench/build_bench.sh: 1,000 trivial derivations with
# fan-out and chains (with the default sizes), each built by a static busybox
# (`busybox`: a directory holding bin/busybox) running `echo … > $out`.
#
#   seed                          1   no inputs
#   fan0-0 … fan0-298           299   each depends on seed (one → many)
#   fan1-0 … fan1-199           200   each depends on 3 fan0 nodes
#   fan2-0 … fan2-98             99   each depends on 4 fan1 nodes
#   chain<c>-0 … chain<c>-99    400   4 chains: chain<c>-i depends on chain<c>-(i-1)
#   root                          1   depends on every fan2 node and every chain end
#                             -----
#                             1,000
#
# Every edge is a string-context reference (`${dep}` in the script), so each
# output also records its inputs as references, as in a real package set.
{ busybox
, fan0 ? 299
, fan1 ? 200
, fan2 ? 99
, chains ? 4
, chainLength ? 100
}:
let
  bb = "${busybox}/bin/busybox";
  mk = name: deps: derivation {
    inherit name;
    system = "x86_64-linux";
    builder = bb;
    args = [ "sh" "-c" "echo ${name} ${builtins.concatStringsSep " " (map toString deps)} > $out" ];
  };
  mod = a: b: a - (builtins.div a b) * b;
  # Node `i` of a layer of `m` nodes depends on `k` consecutive nodes of
  # `prev` (wrapping around), starting where `i` falls proportionally, so
  # neighbouring nodes share inputs and every node of `prev` is used when
  # `k` is at least `length prev / m` (rounded up).
  pick = prev: m: k: i:
    let n = builtins.length prev;
    in builtins.genList (j: builtins.elemAt prev (mod (builtins.div (i * n) m + j) n)) k;
  seed = mk "seed" [ ];
  layer0 = builtins.genList (i: mk "fan0-${toString i}" [ seed ]) fan0;
  layer1 = builtins.genList (i: mk "fan1-${toString i}" (pick layer0 fan1 3 i)) fan1;
  layer2 = builtins.genList (i: mk "fan2-${toString i}" (pick layer1 fan2 4 i)) fan2;
  # Chain `c`: a list whose element i depends on element i - 1 (the list
  # memoises, so each derivation is evaluated once).
  chain = c:
    let
      nodes = builtins.genList (i:
        mk "chain${toString c}-${toString i}" (if i == 0 then [ ] else [ (builtins.elemAt nodes (i - 1)) ])
      ) chainLength;
    in nodes;
  chainEnds = builtins.genList (c: builtins.elemAt (chain c) (chainLength - 1)) chains;
in
{
  root = mk "root" (layer2 ++ chainEnds);
}
