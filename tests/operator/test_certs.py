"""Certificate planning (plan/certs.py) with a fake clock: what is issued, when leaves are
renewed, and a CA rotation step by step, each step waiting for what the nodes report."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from shardset_operator.api.naming import Names
from shardset_operator.plan.certs import (
    CA_CRT,
    CertError,
    CertPlan,
    CertState,
    node_data,
    operator_data,
    parse_state,
    plan_certs,
)
from shardset_proto import pki
from shardset_proto.identity import Identity, identity_of
from shardset_proto.status import TlsView

NAMES = Names("kv", "prod", tls=True)
IDS = [1, 2, 3]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
EMPTY = CertState(ca=None)


def reasons(plan: CertPlan) -> list[str]:
    return [s.reason for s in plan.steps]


def cert(pem: bytes) -> x509.Certificate:
    return pki.load_certs(pem)[0]


def fingerprint(pem: bytes) -> str:
    return pki.info_pem(pem).fingerprint


def view(leaf: bytes, cas: bytes) -> TlsView:
    """A node's report of the files it loaded: its leaf and the bundle it trusts."""
    bundle = [pki.info(c) for c in pki.load_certs(cas)]
    return TlsView.model_validate(
        {
            "identity": pki.info_pem(leaf).uris[0],
            "certSerial": format(pki.info_pem(leaf).serial, "x"),
            "certFingerprint": fingerprint(leaf),
            "certNotAfter": pki.info_pem(leaf).not_after.timestamp(),
            "caFingerprints": [c.fingerprint for c in bundle],
            "caNotAfter": min(c.not_after for c in bundle).timestamp(),
            "loadedAt": T0.timestamp(),
        }
    )


def loaded(state: CertState, ids: list[int] = IDS) -> dict[int, TlsView | None]:
    """Every node in `ids` reloaded the node Secret as `state` writes it."""
    return {i: view(state.nodes[i].cert_pem, state.bundle()) for i in ids}


def test_a_new_store_gets_a_ca_and_a_certificate_per_node_and_for_the_operator() -> None:
    plan = plan_certs(EMPTY, NAMES, IDS, None, T0)
    assert reasons(plan) == ["CaIssued"] + ["NodeCertificateIssued"] * 3 + [
        "OperatorCertificateIssued"
    ]
    state = plan.state
    assert state.ca is not None and state.operator is not None
    ca = cert(state.ca.cert_pem)
    for i in IDS:
        leaf = cert(state.nodes[i].cert_pem)
        got = pki.info(leaf)
        assert pki.issued_by(leaf, [ca])
        assert identity_of(list(got.uris), "prod.kv") == Identity.node("prod.kv", i)
        # reached through the peers Service by pod name, and through the client Service
        assert f"kv-{i - 1}.kv-peers.prod.svc" in got.dns
        assert f"kv-{i - 1}.kv-peers.prod.svc.cluster.local" in got.dns
        assert {"kv", "kv.prod.svc", "localhost"} <= set(got.dns)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    op = pki.info_pem(state.operator.cert_pem)
    assert identity_of(list(op.uris), "prod.kv") == Identity.operator("prod.kv")
    assert plan.rotation is None


def test_nothing_due_changes_nothing() -> None:
    state = plan_certs(EMPTY, NAMES, IDS, None, T0).state
    again = plan_certs(state, NAMES, IDS, loaded(state), T0 + timedelta(days=59))
    assert again.steps == () and again.state == state


def test_leaves_are_renewed_at_two_thirds_of_their_life_by_the_same_ca() -> None:
    state = plan_certs(EMPTY, NAMES, IDS, None, T0).state
    assert plan_certs(state, NAMES, IDS, None, T0 + timedelta(days=59)).steps == ()
    later = plan_certs(state, NAMES, IDS, None, T0 + timedelta(days=61))
    assert reasons(later) == ["NodeCertificateIssued"] * 3 + ["OperatorCertificateIssued"]
    assert all("two thirds" in s.message for s in later.steps)
    assert later.state.ca == state.ca and later.state.bundle() == state.bundle()
    for i in IDS:
        assert later.state.nodes[i] != state.nodes[i]
        assert pki.info_pem(later.state.nodes[i].cert_pem).not_after > T0 + timedelta(days=150)


def test_nodes_joining_get_a_certificate_and_nodes_gone_lose_theirs() -> None:
    state = plan_certs(EMPTY, NAMES, IDS, None, T0).state
    grown = plan_certs(state, NAMES, [1, 2, 3, 4], None, T0)
    assert [s.message for s in grown.steps] == ["node 4: no certificate yet"]
    shrunk = plan_certs(grown.state, NAMES, [1, 2], None, T0)
    assert reasons(shrunk) == ["NodeCertificateDropped"] * 2
    assert sorted(shrunk.state.nodes) == [1, 2]


def test_a_leaf_of_another_ca_is_reissued() -> None:
    state = plan_certs(EMPTY, NAMES, IDS, None, T0).state
    other = plan_certs(EMPTY, NAMES, IDS, None, T0).state
    mixed = CertState(
        ca=state.ca, nodes={**state.nodes, 2: other.nodes[2]}, operator=state.operator
    )
    plan = plan_certs(mixed, NAMES, IDS, None, T0)
    assert [s.message for s in plan.steps] == ["node 2: issued by another CA than the signing one"]


def test_ca_rotation_waits_for_the_nodes_at_each_step() -> None:
    # a store whose CA reached two thirds of its life, leaves fresh
    start = plan_certs(EMPTY, NAMES, IDS, None, T0).state
    late = T0 + timedelta(days=pki.CA_DAYS * 2 // 3 + 1)
    state = plan_certs(start, NAMES, IDS, None, late - timedelta(days=1)).state
    old_ca = state.ca
    assert old_ca is not None

    # 1. the new CA joins the bundle; leaves are still signed by the old one
    plan = plan_certs(state, NAMES, IDS, loaded(state), late)
    assert reasons(plan) == ["CaRotationStarted"]
    one = plan.state
    assert one.ca == old_ca and one.next_ca is not None
    assert len(pki.load_certs(one.bundle())) == 2
    assert "waiting for nodes 1, 2, 3 to trust it" in (plan.rotation or "")

    # not observed yet, or a node still on the old bundle: the rotation holds
    assert plan_certs(one, NAMES, IDS, None, late).steps == ()
    behind = {**loaded(one, [1, 2]), 3: view(one.nodes[3].cert_pem, old_ca.cert_pem)}
    held = plan_certs(one, NAMES, IDS, behind, late)
    assert held.steps == () and "waiting for node 3 to trust it" in (held.rotation or "")
    silent = plan_certs(one, NAMES, IDS, {**loaded(one, [1, 2]), 3: None}, late)
    assert silent.steps == ()

    # 2. every node trusts both: the new CA signs, every leaf is re-issued by it
    plan = plan_certs(one, NAMES, IDS, loaded(one), late)
    assert reasons(plan) == ["CaRotationPromoted"] + ["NodeCertificateIssued"] * 3 + [
        "OperatorCertificateIssued"
    ]
    two = plan.state
    assert two.ca == one.next_ca and two.previous_ca == old_ca.cert_pem
    new_ca = cert(two.ca.cert_pem)
    assert all(pki.issued_by(cert(two.nodes[i].cert_pem), [new_ca]) for i in IDS)
    assert two.operator is not None and pki.issued_by(cert(two.operator.cert_pem), [new_ca])
    assert len(pki.load_certs(two.bundle())) == 2
    assert "waiting for nodes 1, 2, 3 to load theirs" in (plan.rotation or "")

    # a node that has not reloaded its new leaf yet holds the rotation
    stale = {**loaded(two, [1, 2]), 3: view(one.nodes[3].cert_pem, two.bundle())}
    held = plan_certs(two, NAMES, IDS, stale, late)
    assert held.steps == () and "waiting for node 3 to load theirs" in (held.rotation or "")

    # 3. every node serves its new leaf: the old CA leaves the bundle
    plan = plan_certs(two, NAMES, IDS, loaded(two), late)
    assert reasons(plan) == ["OldCaDropped"] and plan.rotation is None
    three = plan.state
    assert [pki.info(c).fingerprint for c in pki.load_certs(three.bundle())] == [
        fingerprint(two.ca.cert_pem)
    ]
    assert plan_certs(three, NAMES, IDS, loaded(three), late).steps == ()


def test_the_secrets_read_back_as_the_state_they_were_written_from() -> None:
    state = plan_certs(EMPTY, NAMES, IDS, None, T0).state
    one = plan_certs(state, NAMES, IDS, None, T0 + timedelta(days=2500)).state
    bundle = one.bundle()
    back = parse_state(
        one.ca_data(), node_data(bundle, one.nodes), operator_data(bundle, one.operator)
    )
    assert back == CertState(
        ca=one.ca,
        next_ca=one.next_ca,
        previous_ca=None,
        nodes=dict(one.nodes),
        operator=one.operator,
    )


@pytest.mark.parametrize(
    "ca",
    [{CA_CRT: b"not a certificate", "ca.key": b"nor a key"}, {CA_CRT: b"half of a pair"}],
)
def test_a_ca_secret_that_does_not_parse_is_refused_not_replaced(ca: Mapping[str, bytes]) -> None:
    with pytest.raises(CertError, match=r"CA Secret"):
        parse_state(ca, None, None)
