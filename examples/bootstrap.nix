# A minimal toolchain imported from the host, for building without Nixpkgs.
#
# A sandboxed build sees only its declared inputs under /nix/store, so the
# tools it runs must be store paths too. This file copies three host files
# into the store with `builtins.path` and uses them to run build scripts:
#
#   glibc  a directory holding only the dynamic loader and libc.so.6, taken
#          from /lib/x86_64-linux-gnu (Debian's multiarch directory);
#   dash   the host's /bin/dash, a single executable file.
#
# The builder is the loader itself: it loads dash with libc from `glibc`, so
# nothing outside the store is needed. Scripts can only use dash builtins
# (echo, printf, read, test, redirections, `while`, `case`); there is no
# mkdir or cat, so every output is a file.
#
# `builtins.path` copies a symlink as a symlink, so the files picked here
# must be regular files. They are on Debian 12; the assertions below say so
# clearly when they are not.
{ system ? "x86_64-linux" }:

let
  libDir = /lib/x86_64-linux-gnu;
  loaderName = "ld-linux-x86-64.so.2";
  glibcFiles = [ loaderName "libc.so.6" ];

  hostLibs = builtins.readDir libDir;
  checkRegular = file:
    if (hostLibs.${file} or null) == "regular" then true
    else throw "bootstrap.nix: ${toString libDir}/${file} must be a regular file (it is ${hostLibs.${file} or "missing"})";
in

assert builtins.all checkRegular glibcFiles;

rec {
  glibc = builtins.path {
    name = "glibc";
    path = libDir;
    filter = path: type: type == "regular" && builtins.elem (baseNameOf path) glibcFiles;
  };

  # The last path component is the file itself (`/bin` may be a symlink to
  # `usr/bin`, which the kernel resolves), so the store path is the binary.
  dash = builtins.path {
    name = "dash";
    path = /bin/dash;
  };

  # `mkDerivation { name; script; ... }`: run `script` with dash (with
  # `set -eu`, so a failing command fails the build). Every other
  # attribute becomes an environment variable of the build, as with
  # `derivation`; each output's path is in the variable named after it.
  mkDerivation = { name, script, ... }@attrs:
    derivation (removeAttrs attrs [ "script" ] // {
      inherit name system;
      builder = "${glibc}/${loaderName}";
      args = [ "--library-path" "${glibc}" "${dash}" "-c" ("set -eu\n" + script) ];
    });
}
