"""Every builder: the object a user's cluster gets, field by field that matters."""

from __future__ import annotations

import json

import kopf
import pytest

from shardset_operator.api.consistency import ReadSetting
from shardset_operator.api.models import ShardSet
from shardset_operator.api.naming import TLS_MOUNT, Names
from shardset_operator.builders.configmap import BOOTSTRAP_KEY, STORE_CREATED_KEY, configmap
from shardset_operator.builders.pdb import max_unavailable, pdb
from shardset_operator.builders.services import client_service, peers_service
from shardset_operator.builders.statefulset import default_affinity, node_args, statefulset
from shardset_operator.builders.tlssecrets import ca_secret, node_secret, operator_secret
from shardset_operator.plan.bootstrap import bootstrap_document, first_map
from shardset_operator.plan.repair import MetaView, join_step
from shardset_operator.plan.shape import Shape
from shardset_operator.reconcile.apply import desired_objects
from shardset_proto.admin import AddNode
from shardset_proto.shardmap import NodeAddress

from .conftest import NAMES, spec


def test_statefulset_shape_and_identity() -> None:
    sts = statefulset(NAMES, spec(), "img:1", replicas=3)
    s = sts["spec"]
    assert sts["metadata"]["name"] == "kv"
    assert s["replicas"] == 3
    assert s["serviceName"] == "kv-peers"
    assert s["podManagementPolicy"] == "Parallel"
    template_labels = s["template"]["metadata"]["labels"]
    assert s["selector"]["matchLabels"].items() <= template_labels.items()
    assert s["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    [claim] = s["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"]


def test_statefulset_container_runs_the_node_with_its_flags() -> None:
    sts = statefulset(NAMES, spec(), "img:1", replicas=3)
    [c] = sts["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "img:1" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == ["python", "-m", "shardset_node"]
    args = c["args"]
    assert args == node_args()

    def flag(name: str) -> str:
        return str(args[args.index(name) + 1])

    assert "--id-from-hostname" in args
    assert flag("--data-dir") == "/data"
    assert flag("--peer") == "0.0.0.0:7000" and flag("--api") == "0.0.0.0:8000"
    assert flag("--bootstrap") == f"/etc/shardset/{BOOTSTRAP_KEY}"
    assert flag("--log-format") == "json"
    assert flag("--consistency") == "$(SHARDSET_CONSISTENCY)"
    # The bound comes from the env var only: an empty value (no bound) cannot be a flag.
    assert "--max-staleness-ms" not in args
    env = {e["name"]: e["valueFrom"]["configMapKeyRef"] for e in c["env"]}
    assert env["SHARDSET_CONSISTENCY"] == {"name": "kv-config", "key": "consistency"}
    assert env["SHARDSET_MAX_STALENESS_MS"] == {"name": "kv-config", "key": "maxStalenessMs"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"raft": 7000, "api": 8000}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["data"] == "/data" and mounts["config"] == "/etc/shardset"


def test_consistency_change_does_not_change_the_pod_template() -> None:
    """A live switch must never restart pods: the template is the same for every mode."""
    a = statefulset(NAMES, spec(consistency={"mode": "linearizable"}), "img", 3)
    b = statefulset(NAMES, spec(consistency={"mode": "bounded", "maxStalenessMs": 250}), "img", 3)
    assert a == b


def test_the_store_created_marker_reaches_the_pods() -> None:
    pod = statefulset(NAMES, spec(), "img", 3)["spec"]["template"]["spec"]
    [config] = [v["configMap"] for v in pod["volumes"] if "configMap" in v]
    assert {"key": STORE_CREATED_KEY, "path": STORE_CREATED_KEY} in config["items"]
    assert config["optional"] is True  # absent until the store exists
    args = pod["containers"][0]["args"]
    assert args[args.index("--store-created-file") + 1].endswith(STORE_CREATED_KEY)


def test_retention_policy_follows_retain_on_delete() -> None:
    kept = statefulset(NAMES, spec(), "img", 3)["spec"]["persistentVolumeClaimRetentionPolicy"]
    dropped = statefulset(NAMES, spec(storage={"retainOnDelete": False}), "img", 3)["spec"][
        "persistentVolumeClaimRetentionPolicy"
    ]
    assert kept == {"whenDeleted": "Retain", "whenScaled": "Delete"}
    assert dropped["whenDeleted"] == "Delete"


def test_storage_class_and_size_reach_the_claim() -> None:
    s = spec(storage={"size": "20Gi", "storageClassName": "fast"})
    [claim] = statefulset(NAMES, s, "img", 3)["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"


def test_default_affinity_spreads_nodes_softly_and_user_affinity_replaces_it() -> None:
    pod = statefulset(NAMES, spec(), "img", 3)["spec"]["template"]["spec"]
    assert pod["affinity"] == default_affinity(NAMES)
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"]
        == "kv"
    )
    mine = {"nodeAffinity": {"x": 1}}
    s = spec(
        affinity=mine,
        tolerations=[{"key": "dedicated", "operator": "Exists"}],
        nodeSelector={"disk": "ssd"},
        topologySpreadConstraints=[{"maxSkew": 1}],
        resources={"limits": {"memory": "1Gi"}},
    )
    sts = statefulset(NAMES, s, "img", 3)["spec"]["template"]["spec"]
    assert sts["affinity"] == mine
    assert sts["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert sts["nodeSelector"] == {"disk": "ssd"}
    assert sts["topologySpreadConstraints"] == [{"maxSkew": 1}]
    assert sts["containers"][0]["resources"] == {"limits": {"memory": "1Gi"}}


def test_peers_service_is_headless_and_publishes_not_ready_pods() -> None:
    svc = peers_service(NAMES)
    assert svc["metadata"]["name"] == "kv-peers"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"raft": 7000, "api": 8000}


def test_client_service_serves_the_api_port() -> None:
    svc = client_service(NAMES)
    assert svc["metadata"]["name"] == "kv"
    assert [p["port"] for p in svc["spec"]["ports"]] == [8000]
    assert "publishNotReadyAddresses" not in svc["spec"]
    assert svc["spec"]["selector"] == NAMES.selector()


@pytest.mark.parametrize(("rf", "allowed"), [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (7, 3)])
def test_pdb_never_allows_a_shard_to_lose_quorum(rf: int, allowed: int) -> None:
    assert max_unavailable(rf) == allowed
    # Losing `allowed` voters of rf leaves a majority; one more would not (rf >= 3).
    assert rf - allowed > rf // 2
    if rf >= 3:
        assert rf - (allowed + 1) <= rf // 2
    budget = pdb(NAMES, rf)
    assert budget["spec"]["maxUnavailable"] == allowed
    assert budget["spec"]["selector"]["matchLabels"] == NAMES.selector()


def test_configmap_carries_bootstrap_and_consistency() -> None:
    doc = bootstrap_document(NAMES, spec(), None)
    cm = configmap(NAMES, doc, ReadSetting("bounded", 250))
    assert cm["metadata"]["name"] == "kv-config"
    assert cm["data"] == {BOOTSTRAP_KEY: doc, "consistency": "bounded", "maxStalenessMs": "250"}
    no_bound = configmap(NAMES, doc, ReadSetting("lease", None))
    assert no_bound["data"]["maxStalenessMs"] == ""


def test_bootstrap_map_addresses_pods_by_ordinal_and_uses_shared_placement() -> None:
    m = first_map(NAMES, spec(nodes=3, shards=4, replicationFactor=3))
    assert sorted(m.nodes) == [1, 2, 3]
    assert m.nodes[1].peer == "kv-0.kv-peers.prod.svc:7000"
    assert m.nodes[3].api == "http://kv-2.kv-peers.prod.svc:8000"
    assert sorted(m.replicas) == [1, 2, 3, 4]
    assert all(len(set(h)) == 3 for h in m.replicas.values())
    raw = json.loads(bootstrap_document(NAMES, spec(), None))
    assert raw["epoch"] == 1


def test_bootstrap_document_is_never_rewritten() -> None:
    written = bootstrap_document(NAMES, spec(nodes=3), None)
    assert bootstrap_document(NAMES, spec(nodes=5, replicationFactor=5), written) == written


def test_every_owned_object_is_adopted_by_the_shardset() -> None:
    body = {
        "apiVersion": "shardset.io/v1alpha1",
        "kind": "ShardSet",
        "metadata": {"name": "kv", "namespace": "prod", "uid": "u-1", "generation": 1},
        "spec": {},
    }
    sset = ShardSet.from_body(body)
    doc = bootstrap_document(NAMES, sset.spec, None)
    objs = desired_objects(sset, NAMES, doc, "img", Shape(replicas=3, replication=3))
    kinds = [o["kind"] for o in objs]
    assert kinds == ["ConfigMap", "Service", "Service", "PodDisruptionBudget", "StatefulSet"]
    for obj in objs:
        kopf.adopt(obj, owner=body)  # type: ignore[arg-type]
        [ref] = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "ShardSet",
            "kv",
            "u-1",
            True,
        )
        assert obj["metadata"]["namespace"] == "prod"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "shardset-operator"


# --- TLS (spec.tls.mode Operator or Secrets; issue 16) ------------------------------------
TLS = Names("kv", "prod", tls=True)


def test_a_tls_node_gets_its_certificates_store_and_ports_on_the_command_line() -> None:
    sts = statefulset(TLS, spec(), "img:1", replicas=3)
    pod = sts["spec"]["template"]["spec"]
    [c] = pod["containers"]
    args = c["args"]

    def flag(name: str) -> str:
        return str(args[args.index(name) + 1])

    assert flag("--tls-dir") == TLS_MOUNT == "/etc/shardset/tls"
    assert flag("--store") == "prod.kv"
    assert flag("--admin") == "0.0.0.0:8001" and flag("--wire") == "0.0.0.0:7001"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"raft": 7000, "api": 8000, "wire": 7001, "admin": 8001}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS"
    # the whole Secret (no subPath): the kubelet swaps renewed certificates in live
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "tls"]
    assert mount == {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}
    [volume] = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "kv-node-tls"
    assert volume["secret"]["defaultMode"] == 0o440


def test_node_pods_pass_the_restricted_pod_security_profile() -> None:
    for names in (NAMES, TLS):
        pod = statefulset(names, spec(), "img:1", replicas=3)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        [c] = pod["containers"]
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["capabilities"] == {"drop": ["ALL"]}
        assert not [v for v in pod["volumes"] if "hostPath" in v]


def test_without_tls_the_node_runs_as_before() -> None:
    pod = statefulset(NAMES, spec(), "img:1", replicas=3)["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert not {"--tls-dir", "--store", "--admin", "--wire"} & set(c["args"])
    assert [p["name"] for p in c["ports"]] == ["raft", "api"]
    assert "scheme" not in c["readinessProbe"]["httpGet"]
    assert not [v for v in pod["volumes"] if v["name"] == "tls"]


def test_the_client_service_never_exposes_the_admin_or_raft_ports() -> None:
    ports = {p["name"]: p["port"] for p in client_service(TLS)["spec"]["ports"]}
    assert ports == {"api": 8000, "wire": 7001}
    peers = {p["name"] for p in peers_service(TLS)["spec"]["ports"]}
    assert peers == {"raft", "api", "wire", "admin"}


def test_a_tls_store_map_holds_https_admin_and_wire_addresses() -> None:
    m = first_map(TLS, spec())
    assert m.nodes[2] == NodeAddress(
        peer="kv-1.kv-peers.prod.svc:7000",
        api="https://kv-1.kv-peers.prod.svc:8000",
        admin="https://kv-1.kv-peers.prod.svc:8001",
        wire="kv-1.kv-peers.prod.svc:7001",
    )
    meta = MetaView(leader=1, voters=frozenset({1}), hosts=frozenset({1, 4}))
    step = join_step(4, meta, TLS.node_address(4))
    assert isinstance(step.body, AddNode)
    assert (step.body.admin, step.body.wire) == (TLS.admin_url(4), TLS.wire_address(4))
    plain = first_map(NAMES, spec())
    assert plain.nodes[2] == NodeAddress(
        "kv-1.kv-peers.prod.svc:7000", "http://kv-1.kv-peers.prod.svc:8000"
    )


def test_tls_secrets_hold_their_files_and_the_operators_is_a_tls_secret() -> None:
    ca = ca_secret(TLS, {"ca.crt": b"C", "ca.key": b"K"})
    assert ca["metadata"]["name"] == "kv-ca" and ca["type"] == "Opaque"
    assert ca["data"] == {"ca.crt": "Qw==", "ca.key": "Sw=="}
    op = operator_secret(TLS, {"ca.crt": b"C", "tls.crt": b"T", "tls.key": b"K"})
    assert op["metadata"]["name"] == "kv-operator-tls" and op["type"] == "kubernetes.io/tls"
    assert node_secret(TLS, {})["metadata"]["name"] == "kv-node-tls"
