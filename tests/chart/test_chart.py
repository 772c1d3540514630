"""The Helm chart, rendered by Helm's own engine: lint, Kubernetes schemas
(core kinds from kubernetes-validate, KEDA and prometheus-operator CRDs from
their published schemas), the values schema's strictness, and what an
operator relies on (secrets, probes, drain, scaling, disruption budgets).
"""

from __future__ import annotations

import copy
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from conftest import (
    BAD_VALUES,
    CHART,
    NAMESPACE,
    RELEASE,
    SCHEMAS,
    helm_module,
    load_values,
    manifests,
    merged_values,
    need,
    pod_specs,
    render,
    rendered_set,
    strip_private,
    value_set_names,
)

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover
    kubernetes_validate = None

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the
# newest kubernetes-validate knows.
MIN_KUBE = "1.30.0"

# Custom resources and where their schemas come from (tests/chart/schemas/).
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
}
# Kinds rendered without any schema check. Empty: every kind is checked.
UNCHECKED: set[tuple[str, str]] = set()


def kv():
    if kubernetes_validate is None:
        need("the kubernetes-validate package")
    return kubernetes_validate


def strictify(schema: Any) -> Any:
    """A CRD's structural schema with unknown fields refused. The API server
    silently prunes unknown fields of a custom resource, so a typo there
    would be lost, not reported: the tests refuse it instead."""
    if isinstance(schema, dict):
        out = {k: strictify(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strictify(v) for v in schema]
    return schema


_crd_schemas: dict[tuple[str, str], dict] = {}


def crd_schema(api_version: str, kind: str) -> dict:
    key = (api_version, kind)
    if key not in _crd_schemas:
        crd = yaml.safe_load((SCHEMAS / CRDS[key]).read_text())
        version = api_version.split("/")[1]
        (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        assert crd["spec"]["names"]["kind"] == kind
        _crd_schemas[key] = strictify(entry["schema"]["openAPIV3Schema"])
    return _crd_schemas[key]


def validate_object(doc: dict, version: str) -> None:
    """Raises when `doc` does not satisfy its kind's schema."""
    obj = strip_private(doc)
    key = (obj["apiVersion"], obj["kind"])
    if key in CRDS:
        jsonschema.validate(obj, crd_schema(*key))
        # The CRD schema leaves metadata open; check it as ObjectMeta.
        carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
        kv().validate(carrier, version, strict=True)
        return
    if key in UNCHECKED:
        return
    kv().validate(obj, version, strict=True)


# --- rendering, lint, Kubernetes schemas -----------------------------------


def test_value_sets_cover_the_issue():
    names = set(value_set_names())
    assert {"default", "keda", "ingress", "existing-secrets"} <= names


def test_renders(value_set):
    docs = manifests(rendered_set(value_set))
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ConfigMap", "Service", "PodDisruptionBudget"} <= kinds
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


def test_lint(value_set):
    h = helm_module()
    report = h.lint(str(CHART), load_values(value_set), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
    assert report["total_charts_linted"] == 1


@pytest.mark.parametrize("version", ["min", "latest"])
def test_manifests_validate_against_kubernetes_schemas(value_set, version):
    ver = MIN_KUBE if version == "min" else kv().latest_version()
    failures = []
    for doc in manifests(rendered_set(value_set)):
        key = (doc["apiVersion"], doc["kind"])
        try:
            validate_object(doc, ver)
        except kv().utils.SchemaNotFoundError:
            failures.append(f"{key}: no schema (add it to CRDS or, knowingly, to UNCHECKED)")
        except kv().ValidationError as e:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {e.caught.message} at {list(e.caught.absolute_path)}")
        except jsonschema.ValidationError as e:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {e.message} at {list(e.absolute_path)}")
    assert not failures, "\n".join(failures)


def test_validators_refuse_mistakes():
    """The checks above can fail: a typo'd field is refused by each validator."""
    docs = manifests(rendered_set("keda"))
    (deploy,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-builder")]
    bad = copy.deepcopy(strip_private(deploy))
    bad["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kv().ValidationError):
        validate_object(bad, kv().latest_version())
    (so,) = [d for d in docs if d["kind"] == "ScaledObject"]
    bad = copy.deepcopy(strip_private(so))
    bad["spec"]["pollingInteval"] = 30
    with pytest.raises(jsonschema.ValidationError):
        validate_object(bad, kv().latest_version())
    bad = copy.deepcopy(strip_private(so))
    bad["spec"]["triggers"][0]["authenticationRef"]["nam"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        validate_object(bad, kv().latest_version())
    bad = copy.deepcopy(strip_private(so))
    bad["metadata"]["labelz"] = {}
    with pytest.raises(kv().ValidationError):
        validate_object(bad, kv().latest_version())


# --- the values schema ------------------------------------------------------


@pytest.mark.parametrize("bad", sorted(p.name for p in BAD_VALUES.glob("*.yaml")))
def test_bad_values_are_refused(bad):
    h = helm_module()
    values = h.values_from_yaml((BAD_VALUES / bad).read_text())
    with h.Chart.load(str(CHART)) as chart:
        with pytest.raises(h.HelmValuesError):
            chart.validate_schema(values)
        with pytest.raises(h.HelmValuesError):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_bad_value_files_exist():
    names = {p.stem for p in BAD_VALUES.glob("*.yaml")}
    assert {"typo-key", "wrong-type"} <= names


# Objects of the values schema that are maps by design (free keys) or
# Kubernetes objects passed through to the pod spec (checked by the
# Kubernetes schemas once rendered).
OPEN_OBJECTS = {
    "/properties/global",
    "/$defs/stringMap",
    "/$defs/resourceList",
    "/$defs/affinity/properties/nodeAffinity",
    "/$defs/affinity/properties/podAffinity",
    "/$defs/affinity/properties/podAntiAffinity",
}


def test_values_schema_is_strict_everywhere():
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            is_object = node.get("type") == "object" or "properties" in node
            if is_object and path not in OPEN_OBJECTS and node.get("additionalProperties") is not False:
                loose.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(schema, "")
    assert not loose, f"objects without additionalProperties: false: {loose}"
    # The open maps still constrain their values.
    defs = schema["$defs"]
    assert defs["stringMap"]["additionalProperties"] == {"type": "string"}
    assert "$ref" in defs["resourceList"]["additionalProperties"]


def test_defaults_satisfy_the_schema():
    h = helm_module()
    with h.Chart.load(str(CHART)) as chart:
        chart.validate_schema({})
        for name in value_set_names():
            chart.validate_schema(load_values(name))


def leaf_paths(values: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the values; a `resources` block counts as one value."""
    out = []
    if isinstance(values, dict) and values and not prefix.endswith("resources"):
        for k, v in values.items():
            out += leaf_paths(v, f"{prefix}.{k}" if prefix else k)
    else:
        out.append(prefix)
    return out


def test_readme_lists_every_value():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    missing = [p for p in leaf_paths(defaults) if p not in listed]
    assert not missing, f"values missing from charts/kiln/README.md: {missing}"
    unknown = sorted(listed - set(leaf_paths(defaults)))
    assert not unknown, f"README lists values that do not exist: {unknown}"


def test_values_yaml_holds_no_secret():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    suspicious = re.compile(r"password|secret|token|accesskey|credential", re.I)
    for path in leaf_paths(defaults):
        last = path.split(".")[-1]
        value = defaults
        for part in path.split("."):
            value = value[part]
        if suspicious.search(last) and not re.search(r"(Key|existingSecret|fromSecret|enabled)$", last):
            assert value in ("", None, {}, []), f"{path} holds a value"


# --- what the rendered objects must say ----------------------------------------


def kiln_containers(docs):
    for d, spec in pod_specs(docs):
        for c in spec["containers"]:
            yield d, spec, c


def env_of(container) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_nothing_secret_in_values_configmaps_or_plain_env(value_set):
    docs = manifests(rendered_set(value_set))
    assert not [d for d in docs if d["kind"] == "Secret"], "the chart must not create Secrets"
    for d in docs:
        if d["kind"] == "ConfigMap":
            for k, v in d.get("data", {}).items():
                assert not re.search(r"(?i)secret|password|aws_|://[^/]*:[^/@]*@", v), (k, v)
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
    for d, _, c in kiln_containers(docs):
        for e in c.get("env", []):
            if secretish.search(e["name"]):
                assert "secretKeyRef" in e.get("valueFrom", {}), (d["metadata"]["name"], e)
        amqp = env_of(c).get("KILN_AMQP_URL")
        if amqp:
            assert "$(KILN_AMQP_USERNAME):$(KILN_AMQP_PASSWORD)@" in amqp["value"]


def test_probes_on_healthz(value_set):
    docs = manifests(rendered_set(value_set))
    for d, _, c in kiln_containers(docs):
        ports = {p["name"] for p in c["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] == "/healthz", (d["metadata"]["name"], probe)
            assert get["port"] in ports


def test_prometheus_annotations_point_at_a_port(value_set):
    values = merged_values(value_set)
    docs = manifests(rendered_set(value_set))
    for d, spec in pod_specs(docs):
        ann = d["spec"]["template"]["metadata"].get("annotations", {})
        if not values["metrics"]["podAnnotations"]:
            assert "prometheus.io/scrape" not in ann
            continue
        assert ann["prometheus.io/scrape"] == "true"
        assert ann["prometheus.io/path"] == "/metrics"
        ports = {p["containerPort"] for c in spec["containers"] for p in c["ports"]}
        assert int(ann["prometheus.io/port"]) in ports


def builder(docs):
    (d,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-builder")]
    return d, d["spec"]["template"]["spec"], d["spec"]["template"]["spec"]["containers"][0]


def test_builder_sandbox_privileged_by_default():
    _, spec, c = builder(manifests(rendered_set("default")))
    sc = c["securityContext"]
    assert sc["privileged"] is True and sc["runAsUser"] == 0
    assert spec["terminationGracePeriodSeconds"] >= 600
    assert "hostUsers" not in spec


def test_builder_sandbox_userns_mode():
    _, spec, c = builder(manifests(rendered_set("everything")))
    sc = c["securityContext"]
    assert spec["hostUsers"] is False
    assert sc["privileged"] is False
    assert sc["procMount"] == "Unmasked"
    assert sc["capabilities"]["add"] == ["SYS_ADMIN"]
    assert sc["seccompProfile"] == {"type": "Unconfined"}
    assert sc["appArmorProfile"] == {"type": "Unconfined"}


def test_other_roles_are_unprivileged(value_set):
    docs = manifests(rendered_set(value_set))
    for d, _, c in kiln_containers(docs):
        if d["metadata"]["name"].endswith("-builder"):
            continue
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_builder_drains_on_sigterm():
    """SIGTERM drains a builder: no preStop hook may kill it sooner, and the
    rollout starts a new builder before an old one drains."""
    d, spec, c = builder(manifests(rendered_set("default")))
    assert "lifecycle" not in c
    assert spec["terminationGracePeriodSeconds"] == merged_values("default")["builder"]["terminationGracePeriodSeconds"]
    assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_store_gateway_prestop_sleeps():
    docs = manifests(rendered_set("default"))
    (gw,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-store-gateway")]
    c = gw["spec"]["template"]["spec"]["containers"][0]
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert c["args"][:3] == ["store-gateway", "--store", "$(KILN_STORE_URL)"]


def test_keda_scaled_object():
    docs = manifests(rendered_set("keda"))
    values = merged_values("keda")
    d, _, _ = builder(docs)
    assert "replicas" not in d["spec"], "the ScaledObject owns the replica count"
    (so,) = [x for x in docs if x["kind"] == "ScaledObject"]
    (ta,) = [x for x in docs if x["kind"] == "TriggerAuthentication"]
    assert so["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]
    assert so["spec"]["minReplicaCount"] == 0 and so["spec"]["maxReplicaCount"] == 40
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["authenticationRef"]["name"] == ta["metadata"]["name"]
    m = trigger["metadata"]
    assert m["protocol"] == "http"
    assert m["useRegex"] == "true" and m["operation"] == "sum"
    assert m["excludeUnacknowledged"] == "false", "unacked messages must count"
    assert m["mode"] == "QueueLength" and m["value"] == str(values["builder"]["maxJobs"])
    assert m["vhostName"] == "kiln-prod"
    assert m["host"] == "http://rabbitmq.messaging.svc:15672"
    pattern = re.compile(m["queueName"])
    for queue in ("kiln.build.x86_64-linux", "kiln.build.x86_64-linux.big-parallel,kvm"):
        assert pattern.search(queue), queue
    for queue in ("kiln.build-events", "kiln.builds", "kiln.drvs", "kiln.eval"):
        assert not pattern.search(queue), queue
    refs = {(r["parameter"], r["name"], r["key"]) for r in ta["spec"]["secretTargetRef"]}
    assert refs == {("username", "kiln-rabbitmq", "username"), ("password", "kiln-rabbitmq", "password")}
    assert not [x for x in docs if x["kind"] == "HorizontalPodAutoscaler"]


def test_hpa_fallback():
    docs = manifests(rendered_set("everything"))
    d, _, _ = builder(docs)
    assert "replicas" not in d["spec"]
    (hpa,) = [x for x in docs if x["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]
    kinds = [m["type"] for m in hpa["spec"]["metrics"]]
    assert kinds == ["Resource", "External"]
    ext = hpa["spec"]["metrics"][1]["external"]
    assert ext["metric"]["name"] == "rabbitmq_queue_messages"
    assert ext["target"]["averageValue"] == "6"
    assert not [x for x in docs if x["kind"].startswith("Scaled")]


def selects(selector: dict, labels: dict) -> bool:
    if "matchLabels" in selector or "matchExpressions" in selector:
        ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
        for e in selector.get("matchExpressions", []):
            assert e["operator"] == "In"
            ok = ok and labels.get(e["key"]) in e["values"]
        return ok
    return all(labels.get(k) == v for k, v in selector.items())


def test_disruption_budgets_cover_every_role(value_set):
    docs = manifests(rendered_set(value_set))
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for d, _ in pod_specs(docs):
        labels = d["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if selects(p["spec"]["selector"], labels)]
        assert len(covering) == 1, d["metadata"]["name"]
        # The Deployment's own selector and its PDB's agree.
        assert covering[0]["spec"]["selector"] == d["spec"]["selector"]


def test_services_and_policies_select_pods(value_set):
    docs = manifests(rendered_set(value_set))
    pods = [d["spec"]["template"]["metadata"]["labels"] for d, _ in pod_specs(docs)]
    ports = {
        d["metadata"]["name"]: {p["name"] for c in spec["containers"] for p in c["ports"]}
        for d, spec in pod_specs(docs)
    }
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for name, svc in services.items():
        matched = [l for l in pods if selects(svc["spec"]["selector"], l)]
        assert matched, f"Service {name} selects no pod"
        for p in svc["spec"]["ports"]:
            assert any(p["targetPort"] in names for names in ports.values()), (name, p)
    for ing in [d for d in docs if d["kind"] == "Ingress"]:
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = services[backend["name"]]
                assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    for np in [d for d in docs if d["kind"] == "NetworkPolicy"]:
        assert [l for l in pods if selects(np["spec"]["podSelector"], l)], np["metadata"]["name"]
    for sm in [d for d in docs if d["kind"] == "ServiceMonitor"]:
        chosen = [s for s in services.values() if selects(sm["spec"]["selector"], s["metadata"]["labels"])]
        roles = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in chosen}
        assert roles == {"coordinator", "evaluator", "builder", "store-gateway"}
        assert all("metrics" in {p["name"] for p in s["spec"]["ports"]} for s in chosen)


def secret_refs(docs) -> set[tuple[str, str]]:
    refs = set()
    for d, spec, c in kiln_containers(docs):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
        for v in spec.get("volumes", []):
            if "secret" in v:
                for item in v["secret"]["items"]:
                    refs.add((v["secret"]["secretName"], item["key"]))
    for d in docs:
        if d["kind"] == "TriggerAuthentication":
            for r in d["spec"]["secretTargetRef"]:
                refs.add((r["name"], r["key"]))
    return refs


def test_default_secret_names():
    assert secret_refs(manifests(rendered_set("default"))) == {
        ("kiln-rabbitmq", "username"),
        ("kiln-rabbitmq", "password"),
        ("kiln-s3", "access-key-id"),
        ("kiln-s3", "secret-access-key"),
        ("kiln-signing-key", "secret-key"),
    }


def test_existing_secrets_are_used():
    docs = manifests(rendered_set("existing-secrets"))
    assert secret_refs(docs) == {
        ("broker-credentials", "user"),
        ("broker-credentials", "pass"),
        ("object-store", "AWS_ACCESS_KEY_ID"),
        ("object-store", "AWS_SECRET_ACCESS_KEY"),
        ("nix-cache-signing", "cache.example.org-1.sec"),
        ("gateway-upload", "bearer"),
    }
    (gw,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-store-gateway")]
    args = gw["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--secret-key-file") + 1] == "/etc/kiln/signing/cache.example.org-1.sec"
    assert args[args.index("--upload-token-file") + 1] == "/etc/kiln/upload/bearer"


def test_ingress():
    docs = manifests(rendered_set("ingress"))
    (ing,) = [d for d in docs if d["kind"] == "Ingress"]
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"secretName": "cache-kiln-tls", "hosts": ["cache.kiln.example"]}]
    assert ing["spec"]["rules"][0]["host"] == "cache.kiln.example"
    assert not [d for d in manifests(rendered_set("default")) if d["kind"] == "Ingress"]


def test_store_and_broker_urls():
    docs = manifests(rendered_set("keda"))
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    url = urllib.parse.urlsplit(cm["data"]["store-url"])
    assert (url.scheme, url.netloc) == ("s3", "kiln-cache")
    query = dict(urllib.parse.parse_qsl(url.query))
    assert query == {"endpoint": "http://garage.storage.svc:3900", "region": "garage", "path-style": "true"}
    _, _, c = builder(docs)
    assert env_of(c)["KILN_AMQP_URL"]["value"] == (
        "amqp://$(KILN_AMQP_USERNAME):$(KILN_AMQP_PASSWORD)@rabbitmq.messaging.svc:5672/kiln-prod"
    )
    _, _, c = builder(manifests(rendered_set("default")))
    assert env_of(c)["KILN_AMQP_URL"]["value"].endswith("@rabbitmq:5672/%2F")
    _, _, c = builder(manifests(rendered_set("everything")))
    assert env_of(c)["KILN_AMQP_URL"]["value"].startswith("amqps://")


def test_builders_without_store_credentials():
    """upload=via-coordinator: builders hold no S3 credentials and read the
    store through the gateway."""
    docs = manifests(rendered_set("everything"))
    _, _, c = builder(docs)
    env = env_of(c)
    assert not [n for n in env if n.startswith("AWS_")]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    url = urllib.parse.urlsplit(env["KILN_STORE_URL"]["value"])
    host, port = url.hostname, url.port
    assert host in services and port in {p["port"] for p in services[host]["spec"]["ports"]}
    assert c["args"][c["args"].index("--upload") + 1] == "via-coordinator"


def test_via_coordinator_needs_the_gateway():
    h = helm_module()
    with pytest.raises(h.HelmError, match="storeGateway.enabled"):
        render({"builder": {"upload": "via-coordinator"}, "storeGateway": {"enabled": False}})


def test_config_files_are_mounted():
    docs = manifests(rendered_set("everything"))
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    for role in ("coordinator", "evaluator", "builder"):
        assert f"{role}.toml" in cm["data"]
        (d,) = [x for x in docs if x["kind"] == "Deployment" and x["metadata"]["name"] == f"farm-{role}"]
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["args"][c["args"].index("--config") + 1] == f"/etc/kiln/{role}.toml"
        assert {"name": "config", "mountPath": "/etc/kiln", "readOnly": True} in c["volumeMounts"]


def test_names_are_prefixed(value_set):
    values = merged_values(value_set)
    prefix = values["fullnameOverride"] or RELEASE
    for d in manifests(rendered_set(value_set)):
        assert d["metadata"]["name"].startswith(prefix), d["metadata"]["name"]
        assert len(d["metadata"]["name"]) <= 63


def test_helpers_are_prefixed_with_the_chart_name():
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    defined = re.findall(r'define "([^"]+)"', text)
    assert defined and all(n.startswith("kiln.") for n in defined), defined
    for tpl in (CHART / "templates").glob("*"):
        for name in re.findall(r'(?:include|template) "([^"]+)"', tpl.read_text()):
            assert name in defined, f"{tpl.name} uses undefined {name}"


def test_notes_tell_how_to_submit_a_build(value_set):
    notes = rendered_set(value_set)["kiln/templates/NOTES.txt"]
    assert "kiln submit" in notes and "--wait" in notes
    assert "create secret generic" in notes


def test_packaged_chart_renders_the_same(tmp_path):
    """`helm package` keeps everything the chart needs (schema included)."""
    h = helm_module()
    archive = h.package(str(CHART), destination=str(tmp_path))
    with h.Chart.load(archive) as packaged:
        assert packaged.schema is not None
        assert packaged.render({}, name=RELEASE, namespace=NAMESPACE) == rendered_set("default")
        with pytest.raises(h.HelmValuesError):
            packaged.validate_schema({"builder": {"maxJob": 1}})


def test_long_names_fit():
    """Object names stay valid DNS labels (63 characters) with the longest prefix."""
    values = {
        "fullnameOverride": "k" * 63,
        "metrics": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {"enabled": True},
        "builder": {"autoscaling": {"mode": "keda"}},
        "storeGateway": {"ingress": {"enabled": True}},
    }
    docs = manifests(render(values))
    names = [d["metadata"]["name"] for d in docs]
    assert all(len(n) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) for n in names), names
    assert len(names) == len(set((d["kind"], d["metadata"]["name"]) for d in docs))
