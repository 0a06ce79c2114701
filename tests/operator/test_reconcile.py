"""converge() end to end against in-memory stand-ins for the API server and the nodes.

The stand-ins record every call in order, so these tests check what users rely on:
objects are created, the bootstrap map is written once, a consistency change reaches
the ConfigMap before any node, scale changes are refused, failures are explained.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from shardset_operator.api.naming import Names
from shardset_operator.api.observed import PodState, StatefulSetState
from shardset_operator.builders.configmap import BOOTSTRAP_KEY
from shardset_operator.clients.kube import KubeError
from shardset_operator.clients.nodeclient import ClientTls, NodeCallError
from shardset_operator.reconcile.context import Context, Outcome
from shardset_operator.reconcile.converge import converge
from shardset_proto import pki
from shardset_proto.admin import AdminBody, SetConsistency
from shardset_proto.identity import Identity
from shardset_proto.placement import initial_slots
from shardset_proto.status import NodeStatus, ShardMapView

from .conftest import group, node_report


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.fail_kind: str | None = None
        self.ready = 3

    async def apply(self, obj: dict[str, Any]) -> None:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == self.fail_kind:
            raise KubeError(f"apply {kind} prod/{name}: 403 Forbidden: no")
        self.calls.append(f"apply {kind} {name}")
        self.objects[(kind, name)] = copy.deepcopy(obj)

    async def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        if self.fail_kind == "Secret":
            raise KubeError(f"read Secret {namespace}/{name}: 403 Forbidden: no")
        secret = self.objects.get(("Secret", name))
        if secret is None:
            return None
        return {k: base64.b64decode(v) for k, v in secret["data"].items()}

    async def patch_shardset_status(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.calls.append(f"patch status {sorted(body)}")

    async def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        if self.fail_kind == "read":
            raise KubeError(f"read ConfigMap {namespace}/{name}: 403 Forbidden")
        cm = self.objects.get(("ConfigMap", name))
        return dict(cm["data"]) if cm else None

    async def statefulset(self, namespace: str, name: str) -> StatefulSetState | None:
        sts = self.objects.get(("StatefulSet", name))
        if sts is None:
            return None
        n = sts["spec"]["replicas"]
        partition = sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
        annotations = sts["metadata"]["annotations"]
        return StatefulSetState(n, self.ready, n, "r1", "r1", 1, 1, partition, annotations)

    async def pods(self, namespace: str, selector: str) -> list[PodState]:
        return [PodState(f"kv-{i}", i < self.ready, False, "r1") for i in range(3)]


class FakeNodes:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.tls: ClientTls | None = None  # the operator's credentials it was given
        self.urls: list[str] = []
        self.modes = {i: "linearizable" for i in range(1, 8)}
        self.down: set[int] = set()
        self.no_admin: set[int] = set()

    def for_store(self, store: str, tls: ClientTls | None) -> FakeNodes:
        self.tls = tls
        return self

    def _id(self, url: str) -> int:
        self.urls.append(url)
        return int(url.split("//kv-")[1].split(".")[0]) + 1

    async def status(self, url: str) -> NodeStatus:
        node = self._id(url)
        if node in self.down:
            raise NodeCallError(f"GET {url}/v1/status: ClientConnectorError")
        voters = [1, 2, 3]
        groups = {
            str(s): group("leader" if s % 3 + 1 == node else "follower", 1, s % 3 + 1, voters)
            for s in range(1, 5)
        }
        return node_report(node, groups, self.modes[node])

    async def shardmap(self, url: str) -> ShardMapView:
        node = self._id(url)
        if node in self.down:
            raise NodeCallError(f"GET {url}/v1/shardmap: ClientConnectorError")
        names = Names("kv", "prod")
        view = {
            "epoch": 1,
            "slots": [[r.start, r.end, r.shard] for r in initial_slots(4)],
            "replicas": {str(s): [1, 2, 3] for s in range(1, 5)},
            "nodes": {
                str(n): {"peer": names.peer_address(n), "api": names.api_url(n)}
                for n in range(1, 4)
            },
        }
        return ShardMapView.model_validate(view)

    async def admin(self, url: str, body: AdminBody) -> dict[str, Any]:
        self.calls.append(f"admin node {self._id(url)} {body.action} {body.to_json()}")
        return {}

    async def set_consistency(self, url: str, body: SetConsistency) -> dict[str, Any]:
        node = self._id(url)
        if node in self.no_admin:
            raise NodeCallError(f"POST {url}/v1/admin/consistency: HTTP 404: unknown action")
        self.calls.append(f"switch node {node} {body.mode}")
        self.modes[node] = body.mode
        return body


def _body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shardset.io/v1alpha1",
        "kind": "ShardSet",
        "metadata": {"name": "kv", "namespace": "prod", "uid": "u-1", "generation": 1},
        "spec": spec,
        "status": {},
    }


def _run(kube: FakeKube, nodes: FakeNodes, body: dict[str, Any]) -> Outcome:
    ctx = Context(kube, nodes, "shardset/node:test")  # type: ignore[arg-type]
    return asyncio.run(converge(body, ctx))


def _cond(outcome: Outcome, kind: str) -> tuple[str, str, str]:
    [c] = [c for c in outcome.status.conditions if c.type == kind]
    return c.status, c.reason, c.message


@pytest.fixture
def world() -> tuple[FakeKube, FakeNodes]:
    kube = FakeKube()
    return kube, FakeNodes(kube.calls)


def test_first_reconcile_creates_everything_and_reports_a_ready_store(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    out = _run(kube, nodes, _body())
    assert kube.calls == [
        "apply Secret kv-ca",
        "apply Secret kv-node-tls",
        "apply Secret kv-operator-tls",
        "apply ConfigMap kv-config",
        "apply Service kv-peers",
        "apply Service kv",
        "apply PodDisruptionBudget kv",
        "apply StatefulSet kv",
    ]
    sts = kube.objects[("StatefulSet", "kv")]
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "shardset/node:test"
    assert sts["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert out.failure is None
    assert "BootstrapMapWritten" in [r for r, _ in out.notes]
    assert _cond(out, "Ready")[0] == "True"
    assert out.status.bootstrapped
    assert out.status.shards.total == 4 and out.status.shards.healthy == 4


def test_bootstrap_map_is_written_once_even_if_the_spec_changes(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    _run(kube, nodes, _body())
    first = kube.objects[("ConfigMap", "kv-config")]["data"][BOOTSTRAP_KEY]
    out = _run(kube, nodes, _body(nodes=5))
    assert kube.objects[("ConfigMap", "kv-config")]["data"][BOOTSTRAP_KEY] == first
    # The new pods start; they join the store once they answer (test_operation.py).
    assert kube.objects[("StatefulSet", "kv")]["spec"]["replicas"] == 5
    assert out.status.members == [1, 2, 3]


def test_consistency_change_reaches_the_configmap_before_any_node(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    _run(kube, nodes, _body())
    kube.calls.clear()
    out = _run(kube, nodes, _body(consistency={"mode": "bounded", "maxStalenessMs": 200}))
    switches = [c for c in kube.calls if c.startswith("switch")]
    assert switches == ["switch node 1 bounded", "switch node 2 bounded", "switch node 3 bounded"]
    assert kube.calls.index("apply ConfigMap kv-config") < kube.calls.index(switches[0])
    data = kube.objects[("ConfigMap", "kv-config")]["data"]
    assert (data["consistency"], data["maxStalenessMs"]) == ("bounded", "200")
    assert out.status.consistency.nodes_applied == 3


def test_a_node_that_cannot_switch_keeps_the_change_in_progress_and_named(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    _run(kube, nodes, _body())
    nodes.no_admin = {2}
    out = _run(kube, nodes, _body(consistency={"mode": "lease"}))
    status, reason, message = _cond(out, "Progressing")
    assert (status, reason) == ("True", "ApplyingConsistency")
    assert "2/3 nodes switched" in message and "node 2" in message and "404" in message
    assert out.status.consistency.mode is None  # the nodes disagree


def test_unreachable_node_degrades_the_store(world: tuple[FakeKube, FakeNodes]) -> None:
    kube, nodes = world
    _run(kube, nodes, _body())
    nodes.down = {3}
    kube.ready = 2
    body = _body()
    body["status"] = {"bootstrapped": True}
    out = _run(kube, nodes, body)
    assert _cond(out, "Degraded")[:2] == ("True", "ShardsLeaderless")
    assert out.status.shards.leaderless == 1  # shard 2 was led by node 3
    assert out.status.shards.under_replicated == 3
    assert _cond(out, "Ready")[:2] == ("False", "NodesNotReady")


def test_failed_apply_is_explained_in_the_status(world: tuple[FakeKube, FakeNodes]) -> None:
    kube, nodes = world
    kube.fail_kind = "StatefulSet"
    out = _run(kube, nodes, _body())
    assert out.failure and "403 Forbidden" in out.failure
    status, reason, message = _cond(out, "Progressing")
    assert (status, reason) == ("False", "ReconcileFailed")
    assert "apply StatefulSet prod/kv" in message


def test_unreadable_bootstrap_map_is_refused_not_rewritten(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    first = _run(kube, nodes, _body())
    kube.objects[("ConfigMap", "kv-config")]["data"][BOOTSTRAP_KEY] = "{not json"
    kube.calls.clear()
    body = _body()
    body["status"] = first.status.model_dump(by_alias=True, mode="json")
    out = _run(kube, nodes, body)
    assert out.failure and "unreadable" in out.failure
    assert kube.calls == []
    status, reason, message = _cond(out, "Progressing")
    assert (status, reason) == ("False", "ReconcileFailed") and "restore it" in message
    assert _cond(out, "Ready")[0] == "True"  # what was last observed stays


def test_refused_replication_change_does_not_loosen_the_disruption_budget(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    _run(kube, nodes, _body(nodes=5, replicationFactor=3))
    assert kube.objects[("PodDisruptionBudget", "kv")]["spec"]["maxUnavailable"] == 1
    out = _run(kube, nodes, _body(nodes=5, replicationFactor=5))
    assert kube.objects[("PodDisruptionBudget", "kv")]["spec"]["maxUnavailable"] == 1
    assert _cond(out, "Progressing")[1] == "ReplicationChangeNotSupported"


def test_unreadable_configmap_is_explained(world: tuple[FakeKube, FakeNodes]) -> None:
    kube, nodes = world
    kube.fail_kind = "read"
    out = _run(kube, nodes, _body())
    assert _cond(out, "Progressing") == (
        "False",
        "ReconcileFailed",
        "read ConfigMap prod/kv-config: 403 Forbidden",
    )
    assert kube.calls == []


def test_without_a_trusted_shard_map_the_statefulset_is_never_shrunk(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    _run(kube, nodes, _body(nodes=5))
    assert kube.objects[("StatefulSet", "kv")]["spec"]["replicas"] == 5
    # Scaled back to 3, but no node answers: nodes 4 and 5 may hold replicas.
    nodes.down = {1, 2, 3, 4, 5}
    _run(kube, nodes, _body(nodes=3))
    assert kube.objects[("StatefulSet", "kv")]["spec"]["replicas"] == 5
    # A map older than one already seen (a node cut off from the metadata group).
    nodes.down = set()
    body = _body(nodes=3)
    body["status"] = {"bootstrapped": True, "members": [1, 2, 3, 4, 5], "mapEpoch": 7}
    out = _run(kube, nodes, body)
    assert kube.objects[("StatefulSet", "kv")]["spec"]["replicas"] == 5
    assert out.status.members == [1, 2, 3, 4, 5]


def test_a_new_pod_template_is_applied_with_every_pod_held(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    _run(kube, nodes, _body(image="node:1"))
    sts = kube.objects[("StatefulSet", "kv")]
    assert sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"] == 0
    out = _run(kube, nodes, _body(image="node:2"))
    sts = kube.objects[("StatefulSet", "kv")]
    # The very apply that changes the template holds all 3 pods; the roll planner then
    # releases them one at a time (test_upgrade.py).
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "node:2"
    assert sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"] == 3
    status, reason, message = _cond(out, "Progressing")
    assert (status, reason) == ("True", "RollingOut") and "holding every pod" in message


# --- TLS (issue 16) -------------------------------------------------------------------
def _secret(kube: FakeKube, name: str) -> dict[str, bytes]:
    data = kube.objects[("Secret", name)]["data"]
    return {k: base64.b64decode(v) for k, v in data.items()}


def test_a_tls_store_is_called_over_https_with_the_operators_certificate(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    out = _run(kube, nodes, _body(consistency={"mode": "lease"}))
    node_tls, operator = _secret(kube, "kv-node-tls"), _secret(kube, "kv-operator-tls")
    assert sorted(node_tls) == [
        "ca.crt", "node-1.crt", "node-1.key", "node-2.crt", "node-2.key", "node-3.crt",
        "node-3.key",
    ]  # fmt: skip
    assert "ca.key" not in node_tls and "ca.key" in _secret(kube, "kv-ca")
    assert nodes.tls == ClientTls(operator["ca.crt"], operator["tls.crt"], operator["tls.key"])
    assert operator["ca.crt"] == node_tls["ca.crt"]
    # status and shard map on the HTTPS API port, admin calls on the admin port
    assert "https://kv-0.kv-peers.prod.svc:8000" in nodes.urls
    assert "https://kv-0.kv-peers.prod.svc:8001" in nodes.urls  # the consistency switch
    assert not [u for u in nodes.urls if u.startswith("http:")]
    tls = out.status.tls
    assert tls is not None and tls.mode == "Operator" and tls.rotation is None
    assert tls.ca_not_after and tls.node_not_after and tls.operator_not_after
    assert (tls.ca_not_after - out.status.conditions[0].last_transition_time).days > 3000
    assert 80 < (tls.node_not_after - out.status.conditions[0].last_transition_time).days <= 90
    notes = [r for r, _ in out.notes]
    assert notes.count("NodeCertificateIssued") == 3 and "CaIssued" in notes


def test_certificates_are_written_once_not_on_every_reconcile(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    _run(kube, nodes, _body())
    node_tls = _secret(kube, "kv-node-tls")
    kube.calls.clear()
    out = _run(kube, nodes, _body())
    assert not [c for c in kube.calls if c.startswith("apply Secret")]
    assert _secret(kube, "kv-node-tls") == node_tls
    assert not [r for r, _ in out.notes if "Certificate" in r or r.startswith("Ca")]


def test_a_store_without_tls_has_no_secrets_and_is_called_over_http(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    out = _run(kube, nodes, _body(tls={"mode": "Disabled"}))
    assert not [c for c in kube.calls if c.startswith("apply Secret")]
    assert nodes.tls is None and out.status.tls is None
    assert nodes.urls and all(u.startswith("http://") and ":8000" in u for u in nodes.urls)


def _user_secrets(kube: FakeKube, skip: int | None = None) -> pki.KeyPair:
    """What cert-manager would have written: a CA, one Secret per pod, the operator's."""
    now = datetime.now(UTC)
    ca = pki.issue_ca("prod.kv", now)

    def put(name: str, pair: pki.KeyPair | None) -> None:
        data = {"ca.crt": ca.cert_pem} | (
            {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem} if pair else {}
        )
        kube.objects[("Secret", name)] = {
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}
        }

    put("store-ca", None)
    put("kv-operator", pki.issue_leaf(ca, Identity.operator("prod.kv"), now))
    for i in (1, 2, 3):
        if i != skip:
            put(f"kvnode-{i - 1}", pki.issue_leaf(ca, Identity.node("prod.kv", i), now))
    return ca


SECRETS = {
    "mode": "Secrets",
    "caSecret": "store-ca",
    "nodeSecretPrefix": "kvnode",
    "operatorSecret": "kv-operator",
}


def test_user_certificates_are_copied_to_the_nodes_and_again_when_they_change(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    ca = _user_secrets(kube)
    out = _run(kube, nodes, _body(tls=SECRETS))
    assert out.failure is None
    node_tls = _secret(kube, "kv-node-tls")
    assert node_tls["ca.crt"] == ca.cert_pem
    assert node_tls["node-2.crt"] == _secret(kube, "kvnode-1")["tls.crt"]
    assert nodes.tls is not None and nodes.tls.cert_pem == _secret(kube, "kv-operator")["tls.crt"]
    assert ("Secret", "kv-ca") not in kube.objects  # no CA of the operator's own
    # cert-manager renews a node's certificate in place: the copy follows
    renewed = pki.issue_leaf(ca, Identity.node("prod.kv", 2), datetime.now(UTC))
    kube.objects[("Secret", "kvnode-1")]["data"]["tls.crt"] = base64.b64encode(
        renewed.cert_pem
    ).decode()
    _run(kube, nodes, _body(tls=SECRETS))
    assert _secret(kube, "kv-node-tls")["node-2.crt"] == renewed.cert_pem


def test_a_missing_user_secret_is_named_and_the_others_still_reach_the_nodes(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    _user_secrets(kube, skip=3)
    out = _run(kube, nodes, _body(tls=SECRETS))
    assert out.failure is not None and "kvnode-2" in out.failure
    assert "node-1.crt" in _secret(kube, "kv-node-tls")
    assert "node-3.crt" not in _secret(kube, "kv-node-tls")
    assert ("StatefulSet", "kv") in kube.objects  # the other phases went on


def test_certificates_that_cannot_be_read_do_not_stop_observing_and_applying(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    kube, nodes = world
    kube.fail_kind = "Secret"
    out = _run(kube, nodes, _body())
    assert out.failure and out.failure.startswith("certificates: read Secret prod/kv-ca: 403")
    assert ("StatefulSet", "kv") in kube.objects and ("ConfigMap", "kv-config") in kube.objects
    status, reason, message = _cond(out, "Progressing")
    assert (status, reason) == ("False", "ReconcileFailed") and "kv-ca" in message


def test_a_store_created_without_tls_keeps_running_without_and_says_why(
    world: tuple[FakeKube, FakeNodes],
) -> None:
    # A store created before spec.tls existed reads the default (Operator) afterwards.
    kube, nodes = world
    _run(kube, nodes, _body(tls={"mode": "Disabled"}))
    kube.calls.clear()
    nodes.urls.clear()
    out = _run(kube, nodes, _body())
    assert not [c for c in kube.calls if c.startswith("apply Secret")]
    assert nodes.urls and all(u.startswith("http://") for u in nodes.urls)
    pod = kube.objects[("StatefulSet", "kv")]["spec"]["template"]["spec"]
    assert "--tls-dir" not in pod["containers"][0]["args"]
    status, reason, message = _cond(out, "Progressing")
    assert (status, reason) == ("False", "TlsModeChangeNotSupported")
    assert "created without TLS" in message
