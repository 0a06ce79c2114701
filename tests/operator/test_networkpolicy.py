"""The store's NetworkPolicy: peer and admin ports for the store's pods and the operator
only; api and wire open to clients; on by default, off by the chart's setting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shardset_operator.api.naming import ADMIN_PORT, API_PORT, RAFT_PORT, WIRE_PORT, Names
from shardset_operator.api.settings import OperatorSettings, PolicySettings, SettingsError
from shardset_operator.builders.networkpolicy import networkpolicy
from shardset_operator.reconcile.context import Context

from .test_reconcile import FakeKube, FakeNodes, _body, _run

NAMES = Names("kv", "prod")
OPERATOR = PolicySettings("shardset-system", (("app.kubernetes.io/name", "shardset-operator"),))


def _ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule["ports"]}


def test_peer_and_admin_ports_admit_only_the_store_and_the_operator() -> None:
    pol = networkpolicy(NAMES, OPERATOR)
    spec = pol["spec"]
    assert spec["podSelector"]["matchLabels"] == NAMES.selector()
    assert spec["policyTypes"] == ["Ingress"]
    fenced, open_ = spec["ingress"]
    assert _ports(fenced) == {RAFT_PORT, ADMIN_PORT}
    store, operator = fenced["from"]
    assert store == {"podSelector": {"matchLabels": NAMES.selector()}}  # this namespace only
    assert operator["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "shardset-system"
    }
    assert operator["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "shardset-operator"}
    # clients authenticate themselves on these; no `from`: every source
    assert _ports(open_) == {API_PORT, WIRE_PORT} and "from" not in open_


def test_settings_default_on_and_off_by_environment() -> None:
    env = {
        "POD_NAMESPACE": "shardset-system",
        "SHARDSET_OPERATOR_POD_LABELS": "app.kubernetes.io/name=shardset-operator,"
        "app.kubernetes.io/instance=so",
    }
    on = OperatorSettings.from_env(env)
    assert on.policy == PolicySettings(
        "shardset-system",
        (("app.kubernetes.io/name", "shardset-operator"), ("app.kubernetes.io/instance", "so")),
    )
    assert OperatorSettings.from_env({**env, "SHARDSET_NETWORK_POLICY": "false"}).policy is None
    # outside a cluster there is no namespace of the operator to admit
    assert OperatorSettings.from_env({}).policy is None


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SHARDSET_NETWORK_POLICY": "maybe"}, "SHARDSET_NETWORK_POLICY"),
        ({"POD_NAMESPACE": "Bad_NS"}, "POD_NAMESPACE"),
        ({"SHARDSET_OPERATOR_POD_LABELS": "novalue"}, "SHARDSET_OPERATOR_POD_LABELS"),
    ],
)
def test_bad_policy_settings_are_named(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        OperatorSettings.from_env(env)


class PolicyKube(FakeKube):
    async def delete_network_policy(self, namespace: str, name: str) -> None:
        self.calls.append(f"delete NetworkPolicy {name}")


def _converge(ctx: Context) -> None:
    from shardset_operator.reconcile.converge import converge

    asyncio.run(converge(_body(), ctx))


def test_the_policy_is_applied_before_the_pods() -> None:
    kube = PolicyKube()
    _converge(Context(kube, FakeNodes(kube.calls), "img", policy=OPERATOR))  # type: ignore[arg-type]
    applies = [c for c in kube.calls if c.startswith("apply")]
    assert applies.index("apply NetworkPolicy kv") < applies.index("apply StatefulSet kv")
    assert kube.objects[("NetworkPolicy", "kv")]["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_turned_off_the_policy_is_deleted() -> None:
    kube = PolicyKube()
    _converge(Context(kube, FakeNodes(kube.calls), "img", policy_off=True))  # type: ignore[arg-type]
    assert "delete NetworkPolicy kv" in kube.calls
    assert ("NetworkPolicy", "kv") not in kube.objects


def test_without_settings_nothing_about_policies_happens() -> None:
    kube = FakeKube()
    _run(kube, FakeNodes(kube.calls), _body())
    assert not [c for c in kube.calls if "NetworkPolicy" in c]


def test_node_pods_pass_pod_security_restricted() -> None:
    """The node pod template as the operator applies it (the e2e test runs it in a
    namespace that enforces the profile)."""
    from shardset_operator.builders.statefulset import statefulset

    from .conftest import spec
    from .psa import restricted_violations

    for names in (NAMES, Names("kv", "prod", tls=True)):
        pod = statefulset(names, spec(), "img", 3)["spec"]["template"]["spec"]
        assert restricted_violations(pod) == []
        # nodes never call the Kubernetes API: no token to steal from a node pod
        assert pod["automountServiceAccountToken"] is False
