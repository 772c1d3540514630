#!/usr/bin/env python3
"""Write a synthetic package set in Nixpkgs style for the evaluator benchmark.

Usage: gen_pkgset.py OUT_DIR [COUNT]   (COUNT defaults to 10000)

OUT_DIR/default.nix evaluates to the package set; its attribute `all` is a
list of every package, so `nix-instantiate OUT_DIR -A all` instantiates all
COUNT derivations in one call. The set exercises what evaluating Nixpkgs
costs: one file per package loaded through `callPackage`, `override` on
`makeOverridable` results, overlays combined with `//` over a fixed point,
dependency edges (a DAG: a package depends only on lower-numbered ones) and
string-heavy environment attributes built with `concatStringsSep`, `map` and
interpolation of dependencies' output paths. Nothing is built
(`builder = "/bin/sh"`). The contents come from a seeded PRNG, so every run
evaluates the same expressions.
"""

import os
import random
import sys

LIB = r"""# Helpers in the spirit of Nixpkgs' lib.
rec {
  fix = f: let x = f x; in x;

  # Apply an overlay `self: super: { ... }` on top of a package set function.
  extends = overlay: f: self:
    let super = f self; in super // overlay self super;

  composeOverlays = overlays: f: builtins.foldl' (acc: o: extends o acc) f overlays;

  makeOverridable = f: args:
    let result = f args; in
    result // {
      override = newArgs: makeOverridable f (args // newArgs);
    };

  callPackageWith = scope: fn: args:
    let
      f = if builtins.isFunction fn then fn else import fn;
      auto = builtins.intersectAttrs (builtins.functionArgs f) scope;
    in
    makeOverridable f (auto // args);

  concatMapStringsSep = sep: f: list: builtins.concatStringsSep sep (map f list);

  optionalString = cond: s: if cond then s else "";

  hasPrefix = prefix: s:
    builtins.substring 0 (builtins.stringLength prefix) s == prefix;

  makeSearchPath = sub: concatMapStringsSep ":" (d: "${d}/${sub}");
}
"""

MK_DERIVATION = r"""{ lib }:

{ pname
, version
, buildInputs ? [ ]
, nativeBuildInputs ? [ ]
, configureFlags ? [ ]
, patches ? [ ]
, meta ? { }
, ...
}@args:

let
  deps = buildInputs ++ nativeBuildInputs;
  name = "${pname}-${version}";
in
derivation (removeAttrs args [ "meta" "nativeBuildInputs" ] // {
  inherit name;
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "echo building ${name}; exit 1" ];
  outputs = [ "out" ] ++ (if meta.splitDev or false then [ "dev" ] else [ ]);
  inherit buildInputs nativeBuildInputs;
  configureFlags = builtins.concatStringsSep " " (configureFlags ++ [ "--prefix=${placeholder "out"}" ]);
  patches = lib.concatMapStringsSep " " (p: "${pname}/${p}.patch") patches;
  NIX_CFLAGS_COMPILE = lib.concatMapStringsSep " " (d: "-isystem ${d}/include") deps;
  NIX_LDFLAGS = lib.concatMapStringsSep " " (d: "-L${d}/lib -rpath ${d}/lib") buildInputs;
  PKG_CONFIG_PATH = lib.makeSearchPath "lib/pkgconfig" deps;
  PATH = lib.makeSearchPath "bin" nativeBuildInputs;
  description = meta.description or "";
  homepage = "https://example.org/${pname}/v${version}";
  licenseText = lib.optionalString (meta ? license) "license: ${meta.license}";
})
"""

DEFAULT = r"""{ overlays ? [ ] }:

let
  lib = import ./lib.nix;

  base = self: import ./all-packages.nix { inherit lib self; } // {
    inherit lib;
    callPackage = lib.callPackageWith self;
    mkDerivation = import ./mk-derivation.nix { inherit lib; };
  };

  pkgs = lib.fix (lib.composeOverlays (import ./overlays.nix ++ overlays) base);

  names = builtins.filter (lib.hasPrefix "pkg-") (builtins.attrNames pkgs);
in
pkgs // { all = map (n: pkgs.${n}) names; }
"""

LICENSES = ["mit", "gpl3Plus", "asl20", "bsd3", "lgpl21Only"]
WORDS = ["fast", "small", "portable", "secure", "modern", "classic", "tiny",
         "parallel", "streaming", "embedded", "network", "graphics", "audio",
         "compression", "parser", "library", "daemon", "toolkit", "engine"]


def pkg_name(i):
    return f"pkg-{i:05d}"


def pkg_file(i):
    return f"pkgs/p{i // 100:03d}/{pkg_name(i)}.nix"


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def package_expr(i, rng):
    # Dependencies: mostly recent packages (like libraries near each other),
    # sometimes a "core" one among the first hundred.
    n_deps = 0 if i == 0 else rng.randint(0, min(i, 6))
    deps = set()
    while len(deps) < n_deps:
        if rng.random() < 0.3:
            deps.add(rng.randrange(0, min(i, 100)))
        else:
            deps.add(rng.randrange(max(0, i - 300), i))
    deps = sorted(deps)
    native = [d for d in deps if d % 3 == 0]
    build = [d for d in deps if d % 3 != 0]
    flags = [f"--enable-{rng.choice(WORDS)}" for _ in range(rng.randint(1, 4))]
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
    formals = ", ".join(["mkDerivation", "lib"] + [pkg_name(d) for d in deps]
                        + ['flavour ? "default"', "withDocs ? false"])
    nl = "\n"
    return f"""{{ {formals} }}:

mkDerivation {{
  pname = "{pkg_name(i)}";
  version = "{i % 7}.{i % 13}.${{if flavour == "default" then "0" else flavour}}";
  buildInputs = [ {" ".join(pkg_name(d) for d in build)} ];
  nativeBuildInputs = [ {" ".join(pkg_name(d) for d in native)} ];
  configureFlags = [ {" ".join(f'"{f}"' for f in flags)} ]
    ++ (if withDocs then [ "--enable-docs" ] else [ ]);
  patches = map (n: "fix-${{toString n}}") [ {" ".join(str(rng.randint(1, 99)) for _ in range(rng.randint(0, 3)))} ];
  meta = {{
    description = "A {words} ({pkg_name(i)})";
    license = "{rng.choice(LICENSES)}";
    splitDev = {"true" if i % 5 == 0 else "false"};
  }};
}}{nl}"""


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    out = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) == 3 else 10000
    rng = random.Random(20261125)

    write(os.path.join(out, "lib.nix"), LIB)
    write(os.path.join(out, "mk-derivation.nix"), MK_DERIVATION)
    write(os.path.join(out, "default.nix"), DEFAULT)

    lines = ["{ lib, self }:", "", "{"]
    for i in range(count):
        write(os.path.join(out, pkg_file(i)), package_expr(i, rng))
        lines.append(f"  {pkg_name(i)} = self.callPackage ./{pkg_file(i)} {{ }};")
    lines += ["}", ""]
    write(os.path.join(out, "all-packages.nix"), "\n".join(lines))

    # Two overlays, as a distribution would stack them: one overrides every
    # tenth package's arguments, the other adds attributes with `//`.
    ov1 = ["self: super: {"]
    for i in range(0, count, 10):
        ov1.append(f'  {pkg_name(i)} = super.{pkg_name(i)}.override {{ flavour = "tuned"; withDocs = true; }};')
    ov1.append("}")
    ov2 = ["self: super: {"]
    for i in range(3, count, 25):
        ov2.append(f'  {pkg_name(i)} = super.{pkg_name(i)} // {{ passthru = {{ tests = [ self.{pkg_name(i // 2)} ]; }}; }};')
    ov2.append("}")
    write(os.path.join(out, "overlays.nix"),
          "[\n(" + "\n".join(ov1) + ")\n(" + "\n".join(ov2) + ")\n]\n")
    print(f"wrote {count} packages to {out}")


if __name__ == "__main__":
    main()
