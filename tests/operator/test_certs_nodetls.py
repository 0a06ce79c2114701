"""The operator's node Secret as the node loads it (shardset_node.tls.NodeTls): every node
finds its own certificate in the shared layout, and a CA rotation driven by what the
nodes report never leaves two nodes, or the operator and a node, without trust, even
while one node lags behind the others in reloading its files."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from shardset_node.tls import NodeTls, PeerRefused
from shardset_operator.api.naming import Names
from shardset_operator.plan.certs import CertState, node_data, plan_certs
from shardset_proto import pki
from shardset_proto.identity import Identity

NAMES = Names("kv", "prod", tls=True)
STORE = NAMES.store_key
IDS = [1, 2, 3]


def mount(directory: Path, state: CertState) -> None:
    """What the kubelet does with the node Secret: every file replaced (new inodes)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in node_data(state.bundle(), state.nodes).items():
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / name)


def der(pem: bytes) -> bytes:
    return pki.load_certs(pem)[0].public_bytes(Encoding.DER)


def trusted_both_ways(a: NodeTls, b: NodeTls, a_pem: bytes, b_pem: bytes) -> None:
    assert b.verify_der(der(a_pem)) == Identity.node(STORE, a.node_id)
    assert a.verify_der(der(b_pem)) == Identity.node(STORE, b.node_id)


def test_each_node_loads_its_own_certificate_from_the_shared_secret(tmp_path: Path) -> None:
    state = plan_certs(CertState(ca=None), NAMES, IDS, None, datetime.now(UTC)).state
    mount(tmp_path, state)
    for i in IDS:
        report = NodeTls(tmp_path, STORE, i).report()
        assert report.identity == Identity.node(STORE, i).uri
        assert report.cert_fingerprint == pki.info_pem(state.nodes[i].cert_pem).fingerprint


def test_a_ca_rotation_keeps_every_pair_trusted_while_a_node_lags(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    # a CA issued long enough ago to be at two thirds of its life now
    aged = plan_certs(CertState(ca=None), NAMES, IDS, None, now - timedelta(days=2434)).state
    one = plan_certs(aged, NAMES, IDS, None, now)
    assert "CaRotationStarted" in [s.reason for s in one.steps]
    dirs = {i: tmp_path / f"pod-{i}" for i in IDS}
    for i in IDS:
        mount(dirs[i], one.state)
    nodes = {i: NodeTls(dirs[i], STORE, i) for i in IDS}

    # every node now trusts both CAs: the new one starts signing
    two = plan_certs(one.state, NAMES, IDS, {i: n.report() for i, n in nodes.items()}, now)
    assert two.steps[0].reason == "CaRotationPromoted"
    for i in (1, 2):  # node 3's kubelet has not swapped its files yet
        mount(dirs[i], two.state)
        assert nodes[i].reload()
    new, old = two.state, one.state
    trusted_both_ways(nodes[1], nodes[3], new.nodes[1].cert_pem, old.nodes[3].cert_pem)
    trusted_both_ways(nodes[1], nodes[2], new.nodes[1].cert_pem, new.nodes[2].cert_pem)
    assert new.operator is not None and old.operator is not None
    for n in nodes.values():  # the operator's new certificate, and its old one
        assert n.verify_der(der(new.operator.cert_pem)) == Identity.operator(STORE)
        assert n.verify_der(der(old.operator.cert_pem)) == Identity.operator(STORE)

    # node 3 still serves the old CA's leaf: the old CA stays
    held = plan_certs(new, NAMES, IDS, {i: n.report() for i, n in nodes.items()}, now)
    assert held.steps == () and "node 3" in (held.rotation or "")
    mount(dirs[3], new)
    assert nodes[3].reload()
    three = plan_certs(new, NAMES, IDS, {i: n.report() for i, n in nodes.items()}, now)
    assert [s.reason for s in three.steps] == ["OldCaDropped"]
    for i in IDS:
        mount(dirs[i], three.state)
        assert nodes[i].reload()
    trusted_both_ways(nodes[1], nodes[3], new.nodes[1].cert_pem, new.nodes[3].cert_pem)
    with pytest.raises(PeerRefused, match="not issued by a CA this node trusts"):
        nodes[1].verify_der(der(old.nodes[2].cert_pem))  # the old CA's leaves are done
