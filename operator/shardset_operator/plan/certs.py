"""The store's certificates: what to issue, renew or rotate next (spec.tls.mode Operator).

Everything lives in three Secrets (api/naming.py), so the plan is a function of what
they hold, what the nodes report having loaded (`TlsView`) and the time: a reconcile
interrupted anywhere resumes from the Secrets. Issuance uses shardset_proto.pki, the
code `shardset local` and the tests use, so the nodes accept exactly what is issued here.

Leaves (node and operator certificates) are renewed at two thirds of their lifetime
(`CertInfo.due`). The CA is rotated at two thirds of its own, in three steps that each
wait for the nodes, so no handshake ever meets a certificate its peer does not trust:

1. `CaRotationStarted`: a new CA is added to the trusted bundle (`next.crt`); leaves are
   still signed by the old one.
2. `CaRotationPromoted`: once every node reports the new CA among those it trusts, the
   new CA signs, and every leaf is re-issued by it (the old CA stays in the bundle).
3. `OldCaDropped`: once every node reports the leaf it was issued in step 2, the old CA
   leaves the bundle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from shardset_operator.api.naming import Names
from shardset_proto import pki
from shardset_proto.identity import Identity
from shardset_proto.status import TlsView

CA_CRT = "ca.crt"
CA_KEY = "ca.key"
NEXT_CRT = "next.crt"  # step 1 of a CA rotation: trusted, not signing yet
NEXT_KEY = "next.key"
PREVIOUS_CRT = "previous.crt"  # step 2: the old CA, trusted until every node moved on
TLS_CRT = "tls.crt"
TLS_KEY = "tls.key"


class CertError(ValueError):
    """A Secret holds what cannot be used (and must not be silently replaced)."""


def node_crt(node_id: int) -> str:
    return f"node-{node_id}.crt"


def node_key(node_id: int) -> str:
    return f"node-{node_id}.key"


@dataclass(frozen=True)
class CertState:
    """The store's CA (and the one it is rotating to or from) and its leaves."""

    ca: pki.KeyPair | None
    next_ca: pki.KeyPair | None = None
    previous_ca: bytes | None = None
    nodes: Mapping[int, pki.KeyPair] = field(default_factory=dict)
    operator: pki.KeyPair | None = None

    def bundle(self) -> bytes:
        """Every CA trusted now: the signing one, and the other one during a rotation."""
        parts = [
            self.ca.cert_pem if self.ca else b"",
            self.next_ca.cert_pem if self.next_ca else b"",
            self.previous_ca or b"",
        ]
        return b"".join(p if p.endswith(b"\n") else p + b"\n" for p in parts if p)

    def ca_data(self) -> dict[str, bytes]:
        data: dict[str, bytes] = {}
        if self.ca is not None:
            data |= {CA_CRT: self.ca.cert_pem, CA_KEY: self.ca.key_pem}
        if self.next_ca is not None:
            data |= {NEXT_CRT: self.next_ca.cert_pem, NEXT_KEY: self.next_ca.key_pem}
        if self.previous_ca is not None:
            data[PREVIOUS_CRT] = self.previous_ca
        return data


def node_data(bundle: bytes, nodes: Mapping[int, pki.KeyPair]) -> dict[str, bytes]:
    """`<name>-node-tls`: the bundle, and every node's pair (shardset_proto.tlsfiles)."""
    data = {CA_CRT: bundle}
    for i, pair in sorted(nodes.items()):
        data |= {node_crt(i): pair.cert_pem, node_key(i): pair.key_pem}
    return data


def operator_data(bundle: bytes, pair: pki.KeyPair | None) -> dict[str, bytes]:
    """`<name>-operator-tls`: the operator's client certificate, Kubernetes TLS layout."""
    data = {CA_CRT: bundle}
    if pair is not None:
        data |= {TLS_CRT: pair.cert_pem, TLS_KEY: pair.key_pem}
    return data


def parse_state(
    ca: Mapping[str, bytes] | None,
    nodes: Mapping[str, bytes] | None,
    operator: Mapping[str, bytes] | None,
) -> CertState:
    """The Secrets as read (None: absent). A CA Secret that does not parse raises
    CertError: issuing another CA would silently cut every node off from its peers."""
    ca = ca or {}
    nodes = nodes or {}
    pairs: dict[int, pki.KeyPair] = {}
    for name in nodes:
        if name.startswith("node-") and name.endswith(".crt"):
            i = name.removeprefix("node-").removesuffix(".crt")
            if i.isdigit() and node_key(int(i)) in nodes:
                pairs[int(i)] = pki.KeyPair(nodes[name], nodes[node_key(int(i))])
    op = operator or {}
    return CertState(
        ca=_ca_pair(ca, CA_CRT, CA_KEY),
        next_ca=_ca_pair(ca, NEXT_CRT, NEXT_KEY),
        previous_ca=ca.get(PREVIOUS_CRT),
        nodes=pairs,
        operator=pki.KeyPair(op[TLS_CRT], op[TLS_KEY]) if TLS_CRT in op and TLS_KEY in op else None,
    )


def _ca_pair(data: Mapping[str, bytes], crt: str, key: str) -> pki.KeyPair | None:
    if crt not in data and key not in data:
        return None
    if crt not in data or key not in data:
        raise CertError(f"CA Secret has {crt if crt in data else key} without its pair")
    try:
        pki.load_certs(data[crt])
        pki.load_key(data[key])
    except pki.PkiError as e:
        raise CertError(f"CA Secret's {crt}/{key}: {e}; restore it") from e
    return pki.KeyPair(data[crt], data[key])


@dataclass(frozen=True)
class Step:
    reason: str  # CamelCase, an Event reason
    message: str


@dataclass(frozen=True)
class CertPlan:
    state: CertState  # after the steps
    steps: tuple[Step, ...]
    rotation: str | None  # the CA rotation in progress, in words


def plan_certs(
    state: CertState,
    names: Names,
    ids: Sequence[int],
    reports: Mapping[int, TlsView | None] | None,
    now: datetime,
) -> CertPlan:
    """`ids`: the node ids that need a certificate; `reports`: what each node reported
    loading (None for a node that did not answer), None before the nodes were asked
    (then rotation steps that wait for the nodes wait)."""
    steps: list[Step] = []
    state = _ca_steps(state, names, ids, reports, now, steps)
    state = _leaf_steps(state, names, ids, now, steps)
    state, rotation = _finish_rotation(state, ids, reports, steps)
    if rotation is None and state.next_ca is not None:
        rotation = "new CA in the trusted bundle; " + _waiting(
            _not_trusting(state.next_ca, ids, reports), "trust it"
        )
    return CertPlan(state, tuple(steps), rotation)


def _ca_steps(
    state: CertState,
    names: Names,
    ids: Sequence[int],
    reports: Mapping[int, TlsView | None] | None,
    now: datetime,
    steps: list[Step],
) -> CertState:
    store = names.store_key
    if state.ca is None:
        steps.append(Step("CaIssued", f"issued the store's CA ({pki.CA_DAYS} days)"))
        return replace(state, ca=pki.issue_ca(store, now))
    current = pki.info_pem(state.ca.cert_pem)
    rotating = state.next_ca is not None or state.previous_ca is not None
    if not rotating and current.due(now):
        steps.append(
            Step(
                "CaRotationStarted",
                f"the CA expires {current.not_after:%Y-%m-%d}: a new CA joined the trusted "
                "bundle; leaves move to it once every node trusts it",
            )
        )
        return replace(state, next_ca=pki.issue_ca(store, now))
    if (
        state.next_ca is not None
        and reports is not None
        and not _not_trusting(state.next_ca, ids, reports)
    ):
        steps.append(
            Step(
                "CaRotationPromoted",
                "every node trusts the new CA: it signs from now on, every leaf is re-issued by it",
            )
        )
        return replace(state, ca=state.next_ca, next_ca=None, previous_ca=state.ca.cert_pem)
    return state


def _not_trusting(
    ca: pki.KeyPair, ids: Sequence[int], reports: Mapping[int, TlsView | None] | None
) -> list[int]:
    fingerprint = pki.info_pem(ca.cert_pem).fingerprint
    out = []
    for i in ids:
        view = reports.get(i) if reports is not None else None
        if view is None or fingerprint not in {f.lower() for f in view.ca_fingerprints}:
            out.append(i)
    return out


def _leaf_steps(
    state: CertState, names: Names, ids: Sequence[int], now: datetime, steps: list[Step]
) -> CertState:
    assert state.ca is not None
    store = names.store_key
    nodes = {i: pair for i, pair in state.nodes.items() if i in ids}
    for gone in sorted(set(state.nodes) - set(ids)):
        steps.append(Step("NodeCertificateDropped", f"node {gone} is no longer in the store"))
    for i in ids:
        why = renewal(nodes.get(i), state.ca, now, names.dns_names(i))
        if why is not None:
            steps.append(Step("NodeCertificateIssued", f"node {i}: {why}"))
            nodes[i] = pki.issue_leaf(
                state.ca, Identity.node(store, i), now, dns=names.dns_names(i), ips=("127.0.0.1",)
            )
    operator = state.operator
    why = renewal(operator, state.ca, now, None)
    if why is not None:
        steps.append(Step("OperatorCertificateIssued", f"operator: {why}"))
        operator = pki.issue_leaf(state.ca, Identity.operator(store), now)
    return replace(state, nodes=nodes, operator=operator)


def renewal(
    pair: pki.KeyPair | None, ca: pki.KeyPair, now: datetime, dns: Sequence[str] | None
) -> str | None:
    """Why this leaf must be (re-)issued, None when it is fine."""
    if pair is None:
        return "no certificate yet"
    try:
        cert = pki.load_certs(pair.cert_pem)[0]
        pki.load_key(pair.key_pem)
    except pki.PkiError as e:
        return f"the certificate does not load ({e})"
    got = pki.info(cert)
    if not pki.issued_by(cert, pki.load_certs(ca.cert_pem)):
        return "issued by another CA than the signing one"
    if got.due(now):
        return f"renewed at two thirds of its lifetime (expires {got.not_after:%Y-%m-%d %H:%M})"
    if dns is not None and set(got.dns) != set(dns):
        return "its DNS names changed"
    return None


def _finish_rotation(
    state: CertState,
    ids: Sequence[int],
    reports: Mapping[int, TlsView | None] | None,
    steps: list[Step],
) -> tuple[CertState, str | None]:
    """Drop the old CA once every node serves the leaf the new CA issued it."""
    if state.previous_ca is None:
        return state, None
    behind = []
    for i in ids:
        view = reports.get(i) if reports is not None else None
        want = pki.info_pem(state.nodes[i].cert_pem).fingerprint
        if view is None or view.cert_fingerprint.lower() != want:
            behind.append(i)
    if reports is None or behind:
        return state, "leaves re-issued by the new CA; " + _waiting(behind, "load theirs")
    steps.append(
        Step(
            "OldCaDropped",
            "every node serves a leaf of the new CA: the old CA is no longer trusted",
        )
    )
    return replace(state, previous_ca=None), None


def _waiting(nodes: Sequence[int], what: str) -> str:
    if not nodes:
        return f"waiting for the nodes to {what}"
    return f"waiting for node{'s' if len(nodes) > 1 else ''} {', '.join(map(str, nodes))} to {what}"
