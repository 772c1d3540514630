#!/usr/bin/env python3
"""Generates nixpkgs_golden.json: what Nix 2.8 (`nix-instantiate`) gives for
several hundred attributes of the nixpkgs tree in ../shared/nixpkgs, beyond
those of expected-nix-2.8.json (read by nixpkgs_golden.rs).

Usage: gen_nixpkgs_golden.py TREE OUT.json
  TREE: the unpacked tree (`tar -xJf nixpkgs-20.09pre-13b5fc1e.tar.xz`,
        then TREE/nixpkgs-20.09); run with NIX_PATH unset.

Each attribute is run as the corpus README says:
  nix-instantiate --option substituters '' TREE -A ATTR --arg config '{}' --arg overlays '[]'
and recorded as {"attr", "exit", "stdout"} plus, when Nix refuses it,
"error": the first line of its message (what Kiln must say too), with
"@TREE@" where it names the tree's directory.

The attributes: a fixed list across language ecosystems and the cross and
static package sets, then every 60th package of pkgs/top-level/all-packages.nix
(a deterministic sample).
"""
import json
import os
import re
import subprocess
import sys

FIXED = """
hello stdenv bash coreutils gnused gnugrep gawk findutils diffutils gzip bzip2 xz
gnutar patch file which less nano vim emacs git mercurial subversion curl wget
openssh openssl gnutls libressl sqlite postgresql mysql redis nginx apacheHttpd
python2 python3 python37 python38 pypy3 perl ruby php lua luajit tcl guile
nodejs nodejs-10_x yarn go rustc cargo ghc jdk openjdk8 maven gradle scala sbt
ocaml opam erlang elixir rebar3 racket chicken gcc clang llvm cmake meson ninja
autoconf automake libtool pkg-config gnumake bison flex gettext texinfo
glib gtk3 gtk2 qt5.qtbase libxml2 libxslt zlib libpng libjpeg giflib freetype
fontconfig cairo pango harfbuzz ffmpeg imagemagick gimp inkscape firefox
thunderbird chromium libreoffice systemd dbus udev linux linuxPackages.kernel
docker podman qemu libvirt busybox musl glibc binutils gdb valgrind strace
python3Packages.numpy python3Packages.requests python3Packages.scipy
python3Packages.pandas python3Packages.django python3Packages.flask
python3Packages.pytest python3Packages.setuptools python3Packages.six
python3Packages.pyyaml python3Packages.lxml python3Packages.pillow
python2Packages.six python2Packages.setuptools
perlPackages.JSON perlPackages.LWP perlPackages.Moose perlPackages.DBI
nodePackages.npm nodePackages.typescript nodePackages.eslint
rubyPackages.rake rubyPackages.nokogiri
luaPackages.luafilesystem lua53Packages.lpeg
ocamlPackages.findlib ocamlPackages.dune ocamlPackages.lwt
haskellPackages.hello haskellPackages.pandoc pandoc shellcheck
emacsPackages.magit vimPlugins.fugitive
xorg.xorgserver xorg.libX11 xorg.xrandr
gnome3.gnome-shell plasma5.plasma-desktop xfce.xfce4-session
pkgsStatic.hello pkgsStatic.zlib pkgsStatic.busybox pkgsStatic.openssl
pkgsStatic.curl pkgsStatic.xz
pkgsCross.aarch64-multiplatform.hello pkgsCross.aarch64-multiplatform.zlib
pkgsCross.aarch64-multiplatform.busybox pkgsCross.aarch64-multiplatform.openssl
pkgsCross.aarch64-multiplatform.stdenv pkgsCross.raspberryPi.hello
pkgsCross.musl64.hello pkgsCross.mingwW64.hello pkgsCross.riscv64.hello
pkgsi686Linux.hello pkgsi686Linux.zlib pkgsi686Linux.glibc pkgsi686Linux.openssl
pkgsi686Linux.stdenv pkgsMusl.hello
steam spotify vscode google-chrome unrar
""".split()


def sample(tree, step=60):
    text = open(os.path.join(tree, "pkgs/top-level/all-packages.nix")).read()
    names = re.findall(r"^  ([a-zA-Z][a-zA-Z0-9_-]*) = callPackage", text, re.M)
    return names[::step]


def main():
    tree, out = sys.argv[1], sys.argv[2]
    attrs = list(dict.fromkeys(FIXED + sample(tree)))
    env = {k: v for k, v in os.environ.items() if k != "NIX_PATH"}
    results = []
    for attr in attrs:
        cmd = ["nix-instantiate", "--option", "substituters", "", tree, "-A", attr,
               "--arg", "config", "{}", "--arg", "overlays", "[]"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
            entry = {"attr": attr, "exit": r.returncode, "stdout": r.stdout}
            if r.returncode != 0:
                first = next((l for l in r.stderr.splitlines() if l.startswith("error:")), "")
                # The tree's location is not part of the result.
                entry["error"] = first.replace(tree.rstrip("/"), "@TREE@")
        except subprocess.TimeoutExpired:
            continue
        results.append(entry)
        print(attr, entry["exit"], (entry.get("error") or entry["stdout"]).strip()[:100],
              flush=True)
        # Written after each attribute: an interrupted run keeps what it did.
        with open(out + ".tmp", "w") as f:
            json.dump({"nix": "2.8.0", "tree": "nixpkgs-20.09pre-13b5fc1e",
                       "attributes": results}, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
