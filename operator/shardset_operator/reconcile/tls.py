"""Phase: the store's certificates (issue 16), before the store is observed so the node
client presents the operator's certificate, and again after, when what the nodes report
having loaded moves a CA rotation on (plan/certs.py).

spec.tls.mode Operator: the operator's CA issues and renews everything (three Secrets,
api/naming.py). Secrets: the user's Secrets (cert-manager's, typically) are copied into
the same layout on every change, so their rotation reaches the nodes. Disabled: nothing.
A failure is recorded like a failed apply (status says why; the phases that act on the
store wait); observation, applies and the status still happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kopf

from shardset_operator.api.models import TlsStatus
from shardset_operator.api.observed import Seen
from shardset_operator.builders.tlssecrets import ca_secret, node_secret, operator_secret
from shardset_operator.clients.kube import KubeError
from shardset_operator.clients.nodeclient import ClientTls, NodeClient
from shardset_operator.plan.certs import (
    CA_CRT,
    TLS_CRT,
    TLS_KEY,
    CertError,
    CertPlan,
    CertState,
    node_data,
    operator_data,
    parse_state,
    plan_certs,
)
from shardset_operator.reconcile.context import Context, Run
from shardset_operator.status.tls import tls_status
from shardset_proto import pki
from shardset_proto.status import TlsView
from shardset_proto.tlsfiles import TlsFilesError

Data = Mapping[str, bytes]


@dataclass(frozen=True)
class Tls:
    client: ClientTls | None  # the operator's credentials (None: no TLS, or none yet)
    status: TlsStatus | None
    state: CertState | None = None  # mode Operator: as written, for the second pass
    written: Mapping[str, Data | None] | None = None  # Secret name -> data, as stored


async def prepare_tls(ctx: Context, run: Run, ids: Sequence[int]) -> Tls:
    if not run.names.tls:  # spec.tls.mode Disabled, or a store created without TLS
        return Tls(None, None)
    try:
        if run.sset.spec.tls.mode == "Secrets":
            return await _copy_user_secrets(ctx, run, ids)
        return await _operator_ca(ctx, run, ids, None, None)
    except (KubeError, CertError, pki.PkiError) as e:
        _fail(run, str(e))
        return Tls(None, _keep_status(run))


async def rotate_tls(ctx: Context, run: Run, tls: Tls, seen: Seen, ids: Sequence[int]) -> Tls:
    """The second pass (mode Operator): CA rotation steps that waited for the nodes."""
    if tls.state is None or run.failure is not None:
        return tls
    reports = {i: (r.tls if r is not None else None) for i, r in seen.reports.items()}
    try:
        return await _operator_ca(ctx, run, ids, reports, tls)
    except (KubeError, CertError, pki.PkiError) as e:
        _fail(run, str(e))
        return tls


def node_client(ctx: Context, run: Run, tls: Tls) -> NodeClient:
    """The node client for this store: with the operator's certificate of this store."""
    try:
        return ctx.nodes.for_store(run.names.store_key, tls.client)
    except TlsFilesError as e:
        _fail(run, f"the operator's certificate does not load: {e}")
        return ctx.nodes.for_store(run.names.store_key, None)


def _fail(run: Run, message: str) -> None:
    if run.failure is None:
        run.failure = f"certificates: {message}"


def _keep_status(run: Run) -> TlsStatus | None:
    return run.sset.status.tls


async def _read(ctx: Context, run: Run, names: Sequence[str]) -> dict[str, Data | None]:
    ns = run.names.namespace
    found = await asyncio.gather(*(ctx.kube.secret_data(ns, n) for n in names))
    return dict(zip(names, found, strict=True))


async def _write(ctx: Context, run: Run, obj: dict[str, Any], data: Data, had: Data | None) -> None:
    """Apply the Secret unless it already holds exactly `data`."""
    if had is not None and dict(had) == dict(data):
        return
    kopf.adopt(obj, owner=run.body)  # type: ignore[arg-type]
    await ctx.kube.apply(obj)


async def _operator_ca(
    ctx: Context,
    run: Run,
    ids: Sequence[int],
    reports: Mapping[int, TlsView | None] | None,
    before: Tls | None,
) -> Tls:
    names = run.names
    secrets = (names.ca_secret, names.node_tls_secret, names.operator_tls_secret)
    if before is None or before.state is None or before.written is None:
        had = await _read(ctx, run, secrets)
        state = parse_state(*(had[s] for s in secrets))
    else:
        had, state = dict(before.written), before.state
    plan = plan_certs(state, names, ids, reports, run.now)
    new = plan.state
    bundle = new.bundle()
    datas = (new.ca_data(), node_data(bundle, new.nodes), operator_data(bundle, new.operator))
    builders = (ca_secret, node_secret, operator_secret)
    for name, build, data in zip(secrets, builders, datas, strict=True):
        await _write(ctx, run, build(names, data), data, had[name])  # the CA first
        had[name] = data
    run.notes.extend((s.reason, s.message) for s in plan.steps)
    return Tls(
        client=_client(datas[2]),
        status=_status(run, plan, bundle, datas[2]),
        state=new,
        written=had,
    )


def _status(run: Run, plan: CertPlan, bundle: bytes, operator: Data) -> TlsStatus:
    previous = run.sset.status.tls
    last = plan.steps[-1].message if plan.steps else (previous.last_change if previous else None)
    mode = run.sset.spec.tls.mode
    return tls_status(
        "Operator" if mode == "Disabled" else mode,  # Disabled: refused (plan/shape.py)
        bundle,
        [p.cert_pem for p in plan.state.nodes.values()],
        operator.get(TLS_CRT),
        plan.rotation,
        last,
    )


def _client(operator: Data) -> ClientTls | None:
    if not all(k in operator for k in (CA_CRT, TLS_CRT, TLS_KEY)):
        return None
    return ClientTls(operator[CA_CRT], operator[TLS_CRT], operator[TLS_KEY])


async def _copy_user_secrets(ctx: Context, run: Run, ids: Sequence[int]) -> Tls:
    """mode Secrets: the user's CA bundle, node and operator certificates, copied into
    the operator's layout whenever they change (cert-manager renews them in place)."""
    names, spec = run.names, run.sset.spec.tls
    assert spec.ca_secret and spec.node_secret_prefix and spec.operator_secret  # CEL
    sources = {i: names.node_secret(spec.node_secret_prefix, i) for i in ids}
    wanted = [spec.ca_secret, spec.operator_secret, *sources.values()]
    ours = [names.node_tls_secret, names.operator_tls_secret]
    had = await _read(ctx, run, [*wanted, *ours])
    ca = had[spec.ca_secret] or {}
    if CA_CRT not in ca:
        raise CertError(
            f"Secret {spec.ca_secret} (spec.tls.caSecret) is missing or has no {CA_CRT}"
        )
    bundle = ca[CA_CRT]
    pairs = {
        i: pki.KeyPair(d[TLS_CRT], d[TLS_KEY])
        for i, n in sources.items()
        if (d := had[n]) is not None and TLS_CRT in d and TLS_KEY in d
    }
    user_op = had[spec.operator_secret] or {}
    op = None
    if TLS_CRT in user_op and TLS_KEY in user_op:
        op = pki.KeyPair(user_op[TLS_CRT], user_op[TLS_KEY])
    nodes, operator = node_data(bundle, pairs), operator_data(bundle, op)
    await _write(ctx, run, node_secret(names, nodes), nodes, had[names.node_tls_secret])
    await _write(
        ctx, run, operator_secret(names, operator), operator, had[names.operator_tls_secret]
    )
    # A missing node Secret costs only that node (its pod waits for its certificate).
    gaps = [n for n in wanted if had[n] is None]
    gaps += [n for i, n in sources.items() if i not in pairs and had[n] is not None]
    if op is None and had[spec.operator_secret] is not None:
        gaps.append(spec.operator_secret)
    if gaps:
        _fail(run, "Secrets missing or without tls.crt/tls.key: " + ", ".join(sorted(set(gaps))))
    plan = CertPlan(CertState(ca=None, nodes=pairs, operator=op), (), None)
    return Tls(client=_client(operator), status=_status(run, plan, bundle, operator))
