# Benchmark set for bench/farm_bench.sh: `n` independent derivations that
# each sleep `secs` seconds (a static busybox as builder), as an attribute
# set, so every one is a root. `tag` keeps runs apart in one store.
{ busybox, n ? 200, secs ? "0.5", tag ? "" }:
let
  bb = "${busybox}/bin/busybox";
  one = i: derivation {
    name = "sleep-${tag}-${toString i}";
    system = "x86_64-linux";
    builder = bb;
    args = [ "sh" "-c" "${bb} sleep ${secs}; echo ${toString i} > $out" ];
  };
in builtins.listToAttrs (builtins.genList (i: { name = "s${toString i}"; value = one i; }) n)
