"""Checks the declared minimum Rust version against `cargo metadata` (on
standard input) and this machine's rustc; see scripts/check-msrv.sh."""
import json
import subprocess
import sys


def version(s):
    return tuple(int(x) for x in s.split("-")[0].split("."))


def main():
    m = json.load(sys.stdin)
    members = set(m["workspace_members"])
    resolved = {n["id"] for n in m["resolve"]["nodes"]}
    ours = [p for p in m["packages"] if p["id"] in members and p["name"].startswith("kiln")]
    problems = []
    for p in ours:
        if not p["rust_version"]:
            problems.append(f"{p['name']} does not inherit the workspace rust-version")
    declared = {p["rust_version"] for p in ours if p["rust_version"]}
    if len(declared) != 1:
        problems.append(f"Kiln crates declare different rust-versions: {sorted(declared)}")
    msrv = max(declared, key=version, default="0")
    deps = [p for p in m["packages"] if p["id"] in resolved and p["id"] not in members]
    for p in deps:
        if p.get("rust_version") and version(p["rust_version"]) > version(msrv):
            problems.append(
                f"{p['name']} {p['version']} needs Rust {p['rust_version']}, newer than the declared {msrv}"
            )
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    if version(rustc) < version(msrv):
        problems.append(f"this toolchain ({rustc}) is older than the declared {msrv}")
    newest = max((p.get("rust_version") or "0" for p in deps), key=version)
    for line in problems:
        print("check-msrv:", line, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(
        f"check-msrv: rust-version {msrv}: every Kiln crate inherits it; "
        f"the newest dependency needs {newest}; toolchain {rustc}",
        file=sys.stderr,
    )


main()
