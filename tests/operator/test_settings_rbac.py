"""The operator's environment contract and its RBAC list."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shardset_operator.api import rbac
from shardset_operator.api.settings import OperatorSettings, SettingsError

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "shardset_operator"


def test_defaults_watch_everything_with_the_default_peering() -> None:
    s = OperatorSettings.from_env({})
    assert s.clusterwide and s.watch_namespaces == ()
    assert s.peering == "shardset-operator"
    assert s.node_image == "shardset/node:dev"
    assert s.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert s.metrics_port == 9090 and s.interval_s == 10.0


def test_environment_overrides() -> None:
    s = OperatorSettings.from_env(
        {
            "WATCH_NAMESPACE": "a, b",
            "SHARDSET_PEERING": "p",
            "SHARDSET_NODE_IMAGE": "reg/node:1",
            "SHARDSET_RECONCILE_INTERVAL": "3",
        }
    )
    assert s.watch_namespaces == ("a", "b") and not s.clusterwide
    assert (s.peering, s.node_image, s.interval_s) == ("p", "reg/node:1", 3.0)


def test_each_replica_draws_its_own_peering_priority_unless_pinned() -> None:
    # Kopf pauses all replicas of equal priority; distinct ones leave exactly one active.
    drawn = {OperatorSettings.from_env({}).peering_priority for _ in range(20)}
    assert len(drawn) > 1 and all(p > 0 for p in drawn)
    assert OperatorSettings.from_env({"SHARDSET_PEERING_PRIORITY": "7"}).peering_priority == 7


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"WATCH_NAMESPACE": "Bad_NS"}, "WATCH_NAMESPACE"),
        ({"SHARDSET_RECONCILE_INTERVAL": "soon"}, "not a number"),
        ({"SHARDSET_METRICS_PORT": "70000"}, "SHARDSET_METRICS_PORT"),
        ({"SHARDSET_LOG_FORMAT": "xml"}, "SHARDSET_LOG_FORMAT"),
        ({"SHARDSET_PEERING_PRIORITY": "high"}, "SHARDSET_PEERING_PRIORITY"),
    ],
)
def test_bad_environment_is_named(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        OperatorSettings.from_env(env)


# Every Kubernetes client method clients/kube.py calls, and the (group, resource, verb) it needs.
CALLS = {
    "patch_namespaced_config_map": ("", "configmaps", "patch"),
    "patch_namespaced_service": ("", "services", "patch"),
    "patch_namespaced_stateful_set": ("apps", "statefulsets", "patch"),
    "patch_namespaced_pod_disruption_budget": ("policy", "poddisruptionbudgets", "patch"),
    "read_namespaced_config_map": ("", "configmaps", "get"),
    "patch_namespaced_secret": ("", "secrets", "patch"),
    "read_namespaced_secret": ("", "secrets", "get"),
    "read_namespaced_stateful_set": ("apps", "statefulsets", "get"),
    "list_namespaced_pod": ("", "pods", "list"),
    "list_namespaced_persistent_volume_claim": ("", "persistentvolumeclaims", "list"),
    "delete_namespaced_persistent_volume_claim": ("", "persistentvolumeclaims", "delete"),
    "patch_namespaced_custom_object_status": ("shardset.io", "shardsets/status", "patch"),
}


def _allowed(group: str, resource: str, verb: str) -> bool:
    return any(
        r.api_group == group and resource in r.resources and verb in r.verbs for r in rbac.RULES
    )


def test_every_client_call_is_covered_by_a_rule() -> None:
    tree = ast.parse((PACKAGE / "clients" / "kube.py").read_text())
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith(("patch_", "read_", "list_", "delete_"))
    }
    assert used == set(CALLS), "update CALLS (and rbac.RULES) for new client calls"
    for method, need in CALLS.items():
        assert _allowed(*need), f"{method} needs {need}, missing from rbac.RULES"
    # Server-side apply creates missing objects through PATCH, which RBAC checks as create.
    applied = [
        ("", "configmaps"),
        ("", "services"),
        ("apps", "statefulsets"),
        ("policy", "poddisruptionbudgets"),
    ]
    for group, resource in applied:
        assert _allowed(group, resource, "create")
    assert _allowed("shardset.io", "shardsets/finalizers", "update")
    assert _allowed("shardset.io", "shardsets/status", "patch")
    assert _allowed("", "events", "create")
    assert _allowed("kopf.dev", "clusterkopfpeerings", "patch")


def test_docs_list_the_same_rules() -> None:
    doc = (PACKAGE.parents[1] / "docs" / "operator.md").read_text()
    assert rbac.table() in doc, "docs/operator.md: paste rbac.table() into the RBAC section"
