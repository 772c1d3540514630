"""Every `kiln` command line of the deployment is one the binary accepts:
the container arguments the chart renders (every value set), the services
of compose.yaml, and the commands NOTES.txt, compose.yaml's header and
docs/deployment.md tell people to type.

For each command line, with the binary given by $KILN_BIN:
- each flag used appears in `kiln <subcommand> --help`;
- `kiln <the whole command line> --help` exits 0 with the subcommand's
  help: clap parses every argument before `--help` (an unknown flag, a
  value of the wrong type or outside its choices is an error), but does
  not run the command.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import (
    ROOT,
    manifests,
    need,
    pod_specs,
    rendered_set,
    value_set_names,
)

pytestmark = pytest.mark.kiln_cli

SERVICE_COMMANDS = {"coordinator", "evaluator", "builder", "store-gateway"}
# Stand-ins for what the kubelet substitutes in $(VAR) references.
FIELD_SAMPLES = {"metadata.name": "kiln-builder-5d9c7b-x2x7q"}


def substitute(arg: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def container_env(container: dict, docs: list[dict]) -> dict[str, str]:
    """The values a container's $(VAR) references resolve to."""
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = substitute(e["value"], env)
            continue
        src = e["valueFrom"]
        if "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            env[e["name"]] = configmaps[ref["name"]][ref["key"]]
        elif "fieldRef" in src:
            env[e["name"]] = FIELD_SAMPLES[src["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = "secret"
    return env


def chart_invocations() -> list[tuple[str, list[str]]]:
    out = []
    for name in value_set_names():
        docs = manifests(rendered_set(name))
        for d, spec in pod_specs(docs):
            for c in spec["containers"]:
                assert "command" not in c, "the image's entrypoint (tini -- kiln) must stay"
                env = container_env(c, docs)
                args = [substitute(a, env) for a in c["args"]]
                unresolved = [a for a in args if "$(" in a]
                assert not unresolved, f"{d['metadata']['name']}: unresolved {unresolved}"
                out.append((f"chart[{name}] {d['metadata']['name']}", args))
    return out


def compose_invocations() -> list[tuple[str, list[str]]]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    out = []
    for name, svc in compose["services"].items():
        if svc.get("image") == "kiln:local":
            out.append((f"compose {name}", list(svc["command"])))
    return out


COMMAND_LINE = re.compile(r"(?:\s--|\bexec\s+[\w./-]+)\s+kiln\s+([^\n`]+)")


def typed_invocations(label: str, text: str) -> list[tuple[str, list[str]]]:
    """`kiln …` command lines of a text, after `-- kiln` (kubectl exec) or
    `exec SERVICE kiln` (docker compose exec), continuation lines joined."""
    text = re.sub(r"\\\n[\s#]*", " ", text)
    out = []
    for m in COMMAND_LINE.finditer(text):
        words = shlex.split(m.group(1), comments=True)
        words = [w for w in words if w != "&"]
        out.append((f"{label}: kiln {' '.join(words)}", words))
    return out


def documented_invocations() -> list[tuple[str, list[str]]]:
    out = []
    for name in value_set_names():
        out += typed_invocations(f"NOTES[{name}]", rendered_set(name)["kiln/templates/NOTES.txt"])
    out += typed_invocations("compose.yaml", (ROOT / "compose.yaml").read_text())
    docs = ROOT / "docs" / "deployment.md"
    if docs.exists():
        out += typed_invocations("docs/deployment.md", docs.read_text())
    return out


def all_invocations() -> list[tuple[str, list[str]]]:
    seen = {}
    for label, args in chart_invocations() + compose_invocations() + documented_invocations():
        seen.setdefault(tuple(args), label)
    return [(label, list(args)) for args, label in seen.items()]


def test_invocations_are_found():
    """The collection itself: every role and the first build are covered."""
    invocations = all_invocations()
    firsts = {args[0] for _, args in invocations}
    assert SERVICE_COMMANDS <= firsts, firsts
    assert "submit" in firsts
    for _, args in compose_invocations():
        assert args[0] in SERVICE_COMMANDS


@functools.cache
def kiln_bin() -> str:
    explicit = os.environ.get("KILN_BIN")
    if explicit:
        if not Path(explicit).is_file():
            pytest.fail(f"KILN_BIN={explicit} does not exist")
        return explicit
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for candidate in (target / "release" / "kiln", target / "debug" / "kiln"):
        if candidate.is_file():
            return str(candidate)
    need("the kiln binary (set KILN_BIN, or cargo build -p kiln-cli)")
    raise AssertionError("unreachable")


def run_kiln(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([kiln_bin(), *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, KILN_LOG=""))


@functools.cache
def help_text(path: tuple[str, ...]) -> str:
    r = run_kiln([*path, "--help"])
    assert r.returncode == 0, f"`kiln {' '.join(path)} --help` failed ({r.returncode}): {r.stderr.strip()}"
    return r.stdout


OPTION_LINE = re.compile(r"^\s+(?:(-[A-Za-z0-9]),?\s*)?(--[A-Za-z0-9][A-Za-z0-9-]*)?")


def help_flags(text: str) -> set[str]:
    flags = set()
    for line in text.splitlines():
        m = OPTION_LINE.match(line)
        if m:
            flags |= {g for g in m.groups() if g}
    return flags


def has_subcommands(text: str) -> bool:
    return re.search(r"^Commands:", text, re.M) is not None


def command_path(args: list[str]) -> tuple[str, ...]:
    """The (sub)command an argument list invokes: `dlq list`, `builder`."""
    path: list[str] = []
    for word in args:
        if word.startswith("-"):
            break
        if path and not has_subcommands(help_text(tuple(path))):
            break
        path.append(word)
    return tuple(path)


def flags_used(args: list[str]) -> list[str]:
    out = []
    for word in args:
        if word == "--":
            break
        if re.match(r"^--?[A-Za-z]", word):
            out.append(word.split("=", 1)[0])
    return out


INVOCATIONS = all_invocations()


@pytest.mark.parametrize("args", [a for _, a in INVOCATIONS], ids=[l for l, _ in INVOCATIONS])
def test_kiln_accepts(args):
    path = command_path(args)
    assert path, f"no subcommand in {args}"
    top = help_flags(help_text(()))
    root_commands = re.findall(r"^\s{2}([a-z][a-z-]*)\s", help_text(()).split("Commands:")[-1], re.M)
    assert path[0] in root_commands, f"`kiln {path[0]}` is not a kiln command ({root_commands})"
    text = help_text(path)
    accepted = help_flags(text) | {"-h", "--help"}
    unknown = [f for f in flags_used(args) if f not in accepted and f not in top]
    assert not unknown, f"`kiln {' '.join(path)}` has no {unknown}; its help lists {sorted(accepted)}"
    r = run_kiln([*args, "--help"])
    assert r.returncode == 0, f"kiln {shlex.join(args)} --help: exit {r.returncode}: {r.stderr.strip()}"
    assert f"Usage: kiln {' '.join(path)}" in r.stdout, r.stdout[:500]


def test_help_parsing_sees_real_flags():
    """The flag reader finds what the binary documents (guards against a
    help format it cannot read, which would make every check vacuous)."""
    flags = help_flags(help_text(("store-gateway",)))
    assert {"--store", "--listen", "--secret-key-file", "--upload-token-file", "-h", "--help"} <= flags, flags


def test_unknown_flag_is_refused_before_help():
    """`kiln <args> --help` really checks the arguments before it."""
    r = run_kiln(["store-gateway", "--no-such-flag", "x", "--help"])
    assert r.returncode != 0
