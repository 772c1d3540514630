# Kiln's <nix/fetchurl.nix>: a fixed-output derivation that the builtin
# `builtin:fetchurl` builder realises by downloading `url`. Its arguments,
# their defaults and the derivation it yields are those of Nix 2.8's own
# corepkgs file, so that its `.drv` is byte for byte the one Nix writes.
{
  # Ignored; kept so that older callers that pass it still work.
  system ? "",
  url,
  # An SRI hash; when given it takes precedence over the legacy ones below.
  hash ? "",
  md5 ? "",
  sha1 ? "",
  sha256 ? "",
  sha512 ? "",
  outputHash ?
    if hash != "" then hash
    else if sha512 != "" then sha512
    else if sha1 != "" then sha1
    else if md5 != "" then md5
    else sha256,
  # An SRI hash names its own algorithm, hence the empty string.
  outputHashAlgo ?
    if hash != "" then ""
    else if sha512 != "" then "sha512"
    else if sha1 != "" then "sha1"
    else if md5 != "" then "md5"
    else "sha256",
  executable ? false,
  unpack ? false,
  name ? baseNameOf (toString url)
}:

derivation {
  inherit name url executable unpack outputHash outputHashAlgo;
  system = "builtin";
  builder = "builtin:fetchurl";
  # An executable or unpacked download is hashed as a NAR.
  outputHashMode = if executable || unpack then "recursive" else "flat";
  # Downloading is as cheap locally as on a remote builder.
  preferLocalBuild = true;
  # Proxy settings are taken from the caller's environment.
  impureEnvVars = [ "http_proxy" "https_proxy" "ftp_proxy" "all_proxy" "no_proxy" ];
  # What `nix-prefetch-url` reads.
  urls = [ url ];
}
