"""Shared fixtures of the deployment tests: the chart rendered with Helm's own
engine (helm-python-sdk, which bundles Helm's Go SDK), the value sets, and
the rule that under CI=true a missing dependency fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kiln"
HERE = Path(__file__).resolve().parent
VALUE_SETS = HERE / "values"
BAD_VALUES = HERE / "bad-values"
SCHEMAS = HERE / "schemas"
RELEASE = "kiln"
NAMESPACE = "kiln-ci"

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(what: str) -> None:
    """A dependency is missing: fail under CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"missing under CI=true: {what}")
    pytest.skip(f"missing: {what}")


try:
    import helm_python as helm
except ImportError:  # pragma: no cover - reported by the fixtures below
    helm = None


def helm_module():
    if helm is None:
        need("the helm-python-sdk package (import helm_python)")
    return helm


def value_set_names() -> list[str]:
    """`default` plus every file of tests/chart/values/."""
    return ["default"] + sorted(p.stem for p in VALUE_SETS.glob("*.yaml"))


def load_values(name: str) -> dict[str, Any]:
    """A value set, parsed by Helm's own YAML reader."""
    if name == "default":
        return {}
    text = (VALUE_SETS / f"{name}.yaml").read_text()
    return helm_module().values_from_yaml(text)


def merged_values(name: str) -> dict[str, Any]:
    """The values a release would use: the chart's defaults and the set."""
    h = helm_module()
    with h.Chart.load(str(CHART)) as chart:
        return chart.merge_values(load_values(name))


def render(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` computes it."""
    h = helm_module()
    with h.Chart.load(str(CHART)) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a rendering (NOTES.txt excluded)."""
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__template__", path)
                docs.append(doc)
    return docs


_cache: dict[str, dict[str, str]] = {}


def rendered_set(name: str) -> dict[str, str]:
    if name not in _cache:
        _cache[name] = render(load_values(name))
    return _cache[name]


@pytest.fixture(params=value_set_names())
def value_set(request) -> str:
    return request.param


def strip_private(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not k.startswith("__")}


def pod_specs(docs: list[dict[str, Any]]):
    """(workload, pod spec) of every Deployment."""
    for d in docs:
        if d["kind"] == "Deployment":
            yield d, d["spec"]["template"]["spec"]


def find_tool(name: str) -> str | None:
    """A tool from the venv running the tests, else from PATH."""
    venv_bin = Path(os.sys.executable).parent / name
    if venv_bin.exists():
        return str(venv_bin)
    return shutil.which(name)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "kiln_cli: runs the kiln binary ($KILN_BIN) to check the command lines "
        "of the chart, its NOTES and compose.yaml",
    )
