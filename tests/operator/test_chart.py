"""The Helm chart charts/shardset-operator: lint, render, and what the render holds.

Needs the helm binary (hack/cluster/build.sh helm puts it in
~/.cache/shardset/helm-*/bin); skipped without one, except the CRD copy check.
Validation of the rendered objects against the API server's own schemas is in
tests/e2e/test_operator_e2e.py (kubectl apply --dry-run=server).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardset_operator.api.rbac import RULES
from shardset_operator.api.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "shardset-operator"
CACHE = Path(os.environ.get("SHARDSET_CACHE", Path.home() / ".cache" / "shardset"))
KUBE_VERSION = "1.34.0"
RECOMMENDED = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)


def find_helm() -> str | None:
    ours = sorted(CACHE.glob("helm-*/bin/helm"))
    if ours:
        return str(ours[-1])
    return shutil.which("helm")


@pytest.fixture(scope="module")
def helm() -> str:
    found = find_helm()
    if not found:
        pytest.skip("no helm binary: run hack/cluster/build.sh helm")
    return found


def render(helm: str, *sets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    args = [helm, "template", "rel", str(CHART), "--namespace", "ops"]
    args += ["--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"helm template {' '.join(sets)} failed: {r.stderr}")
    return r


def objects(helm: str, *sets: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render(helm, *sets).stdout) if d]


def one(objs: Iterable[dict[str, Any]], kind: str, namespace: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in objs
        if o["kind"] == kind and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def triples(rules: Iterable[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def operator_triples(cluster_scoped: bool | None) -> set[tuple[str, str, str]]:
    """shardset_operator.api.rbac.RULES (the operator's own list of its API calls)."""
    picked = [r for r in RULES if cluster_scoped is None or r.cluster_scoped == cluster_scoped]
    return triples(r.as_k8s() for r in picked)


def test_chart_copies_are_in_sync() -> None:
    """The chart's CRDs (copies of crds/, which Helm cannot reach) and RBAC rules
    (written from shardset_operator.api.rbac.RULES) match their sources: `make chart-sync`."""
    r = subprocess.run(
        [sys.executable, str(REPO / "hack" / "chart_sync.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_lint_strict(helm: str) -> None:
    r = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_object_has_the_recommended_labels(helm: str) -> None:
    objs = objects(helm, "watchNamespaces={a,b}") + objects(helm)
    for o in objs:
        labels = o["metadata"].get("labels", {})
        missing = [k for k in RECOMMENDED if k not in labels]
        assert not missing, f"{o['kind']}/{o['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == "rel"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
    dep = one(objs[len(objects(helm, "watchNamespaces={a,b}")) :], "Deployment")
    selector = dep["spec"]["selector"]["matchLabels"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    # the selector must not hold labels that change between releases (it is immutable)
    assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}


def test_clusterwide_rbac_is_exactly_what_the_operator_uses(helm: str) -> None:
    objs = objects(helm)
    role = one(objs, "ClusterRole")
    assert triples(role["rules"]) == operator_triples(None)
    assert not [o for o in objs if o["kind"] in ("Role", "RoleBinding")]
    binding = one(objs, "ClusterRoleBinding")
    sa = one(objs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "ops"}
    ]


def test_namespaced_rbac_when_watching_listed_namespaces(helm: str) -> None:
    objs = objects(helm, "watchNamespaces={team-a,team-b}")
    for ns in ("team-a", "team-b"):
        role = one(objs, "Role", ns)
        assert triples(role["rules"]) == operator_triples(False)
        binding = one(objs, "RoleBinding", ns)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"][0]["namespace"] == "ops"
        assert one(objs, "KopfPeering", ns)["metadata"]["name"] == "shardset-operator"
    # cluster-wide, only CRD discovery: no access to other namespaces' objects
    cluster = one(objs, "ClusterRole")
    assert triples(cluster["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")
    }
    assert not [o for o in objs if o["kind"] == "ClusterKopfPeering"]


def test_no_wildcards_and_no_listing_secrets_in_rbac(helm: str) -> None:
    # The operator reads the Secrets it names (its stores' certificates, those spec.tls
    # names) and never lists or watches Secrets: it cannot enumerate other credentials.
    for sets in ((), ("watchNamespaces={a}",)):
        for o in objects(helm, *sets):
            if o["kind"] in ("ClusterRole", "Role"):
                for g, r, v in triples(o["rules"]):
                    assert "*" not in (g, r, v), (o["kind"], g, r, v)
                    assert r != "secrets" or v not in ("list", "watch"), (o["kind"], v)


def test_deployment_is_hardened_and_probed(helm: str) -> None:
    dep = one(objects(helm), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    assert ports["metrics"] == 9090
    assert dep["spec"]["replicas"] == 1
    assert container["image"] == "shardset/operator:dev"


def test_rendered_env_is_accepted_by_the_operator(helm: str) -> None:
    """The Deployment's environment, parsed by the operator's own settings loader."""
    sets = (
        "watchNamespaces={team-a,team-b}",
        "nodeImage=registry.example/node:1.2",
        "peering.name=blue",
        "reconcileIntervalSeconds=30",
        "metrics.port=9191",
    )
    container = one(objects(helm, *sets), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = OperatorSettings.from_env(env)
    assert settings.watch_namespaces == ("team-a", "team-b")
    assert settings.node_image == "registry.example/node:1.2"
    assert settings.peering == "blue"
    assert settings.interval_s == 30
    assert settings.metrics_port == 9191
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == 9191
    clusterwide = OperatorSettings.from_env(
        {
            e["name"]: e["value"]
            for e in one(objects(helm), "Deployment")["spec"]["template"]["spec"]["containers"][0][
                "env"
            ]
            if "value" in e
        }
    )
    assert clusterwide.clusterwide


def test_peering_object_matches_the_operators_peering_name(helm: str) -> None:
    objs = objects(helm, "peering.name=blue")
    assert one(objs, "ClusterKopfPeering")["metadata"]["name"] == "blue"
    assert not [o for o in objects(helm, "peering.create=false") if "KopfPeering" in o["kind"]]


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("replicaCount=-1", "/replicaCount"),
        ("replicaCount=4", "/replicaCount"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("imagePullPolicy=Always", "'imagePullPolicy' not allowed"),
        ("watchNamespaces={Team_A}", "/watchNamespaces/0"),
        ("metrics.port=8080", "/metrics/port"),
        ("logFormat=xml", "/logFormat"),
        ("reconcileIntervalSeconds=0", "/reconcileIntervalSeconds"),
        ("resources.requests.cpu=lots", "/resources/requests/cpu"),
    ],
)
def test_values_schema_refuses_bad_values_naming_them(helm: str, setting: str, named: str) -> None:
    r = render(helm, setting, check=False)
    assert r.returncode != 0, f"{setting} accepted"
    assert named in r.stderr, r.stderr


def test_every_value_is_documented() -> None:
    """values.yaml: every key has a comment just above it, or sits inside a
    documented group (e.g. resources.limits.memory under `# -- ... resources`)."""
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "-")) and ":" in stripped:
            indent = len(line) - len(line.lstrip())
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.startswith("#") or any(d for _, d in stack)
            if not documented:
                undocumented.append(stripped.partition(":")[0])
            stack.append((indent, documented))
        if stripped:
            previous = stripped
    assert not undocumented, f"values without a comment: {undocumented}"
