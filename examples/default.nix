# A small package set in the style of Nixpkgs, built only from the host
# toolchain of ./bootstrap.nix (loader, libc and dash). Dependency chain:
#
#   greeting         fixed-output: its content is known in advance
#     -> libgreet    three outputs: out (a dash library), dev, doc
#       -> hello     the attribute the README builds
#         -> hello-report
#
# Build with `kiln build -f examples/default.nix -A hello` (or nix-build).
{ bootstrap ? import ./bootstrap.nix { } }:

let
  # A few helpers in the spirit of Nixpkgs' `lib`.
  lib = rec {
    # `callPackageWith scope fn args`: call `fn` (a function, or a file that
    # holds one) with the attributes of `scope` that it names, overridden by
    # `args`. The result gets `override`, to call it again with other args.
    callPackageWith = scope: fn: args:
      let
        f = if builtins.isFunction fn then fn else import fn;
        call = overrides: makeOverridable (f (builtins.intersectAttrs (builtins.functionArgs f) scope // overrides)) call overrides;
      in
      call args;

    makeOverridable = result: call: args:
      result // { override = newArgs: call (args // newArgs); };
  };

  pkgs = {
    inherit lib;
    inherit (bootstrap) mkDerivation;
    callPackage = lib.callPackageWith pkgs;

    # Like a source tarball fetched from the network: a fixed-output
    # derivation, whose output path depends only on its declared hash.
    greeting = pkgs.callPackage
      ({ mkDerivation }: mkDerivation {
        name = "greeting.txt";
        script = ''printf 'Hello, world!\n' > "$out"'';
        outputHashMode = "flat";
        outputHash = "sha256-2QFMRiSESqW6wxR3PWtomtRn+k4dGlChuKmdWpX3L/U=";
      })
      { };

    # A "library" with split outputs: `out` defines a dash function, `dev`
    # holds build-time settings and `doc` a short manual.
    libgreet = pkgs.callPackage
      ({ mkDerivation, greeting, version ? "1.0" }: mkDerivation {
        pname = "libgreet";
        inherit version greeting;
        name = "libgreet-${version}";
        outputs = [ "out" "dev" "doc" ];
        script = ''
          IFS= read -r text < "$greeting"
          printf 'greet() { printf "%%s\\n" "%s"; }\n' "$text" > "$out"
          printf 'LIBGREET_VERSION=%s\n' "$version" > "$dev"
          printf 'libgreet %s manual\n\ngreet: print "%s".\n' "$version" "$text" > "$doc"
        '';
      })
      { };

    hello = pkgs.callPackage
      ({ mkDerivation, libgreet }: mkDerivation {
        pname = "hello";
        version = "2.12";
        name = "hello-2.12";
        libgreet = libgreet.out;
        libgreetDev = libgreet.dev;
        script = ''
          . "$libgreetDev"
          . "$libgreet"
          {
            greet
            printf 'built with libgreet %s\n' "$LIBGREET_VERSION"
          } > "$out"
        '';
      })
      { };

    # Reads other packages' outputs line by line.
    hello-report = pkgs.callPackage
      ({ mkDerivation, hello, libgreet }: mkDerivation {
        name = "hello-report";
        inherit hello;
        manual = libgreet.doc;
        script = ''
          n=0
          {
            printf 'report for %s\n' "''${hello#*-}"
            while IFS= read -r line; do
              n=$((n + 1))
              printf 'line %d: %s\n' "$n" "$line"
            done < "$hello"
            IFS= read -r title < "$manual"
            printf 'documentation: %s\n' "$title"
          } > "$out"
        '';
      })
      { };
  };
in
pkgs
