"""Kopf handlers: thin. Each one runs `reconcile.converge` and writes what it found.

Creation, spec changes and operator restarts reconcile at once; a timer reconciles
every few seconds anyway, which is what makes the operator level-based: whatever was
interrupted or changed behind its back is noticed and converged on the next tick.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import kopf
import structlog
from prometheus_client import start_http_server

from shardset_operator import metrics
from shardset_operator.api.models import GROUP, PLURAL, VERSION, ShardSet, ShardSetStatus
from shardset_operator.api.naming import Names
from shardset_operator.api.settings import OperatorSettings
from shardset_operator.clients.kube import Kube, KubeError, load_credentials
from shardset_operator.clients.nodeclient import NodeClient
from shardset_operator.reconcile.context import Context
from shardset_operator.reconcile.converge import converge
from shardset_operator.status.patch import changed, status_patch, transitions

FINALIZER = f"{GROUP}/finalizer"
log = structlog.get_logger("shardset_operator")


class Runtime:
    """Holds the API clients created at startup (they need the running event loop)."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.ctx: Context | None = None
        self.session: aiohttp.ClientSession | None = None
        # Reconciles of one ShardSet never overlap (a timer tick and a spec change).
        self.locks: dict[str, asyncio.Lock] = {}
        # The status this process last computed per ShardSet. The body a handler gets can
        # predate the previous run's status patch; conditions are compared with this so
        # a transition is announced once and keeps its time. A cache only: after a
        # restart the status in the object is used, and patches compare with the object.
        self.last: dict[str, ShardSetStatus] = {}


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> Runtime:
    rt = Runtime(settings)
    _operator_handlers(registry, rt)
    _shardset_handlers(registry, rt)
    return rt


def _operator_handlers(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    """The operator's own start, login and stop."""

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        await start(rt, settings)

    # A registry of our own does not get Kopf's default login handlers: in a pod the
    # service account, elsewhere the kubeconfig (the same the kubernetes client uses).
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if rt.session is not None:
            await rt.session.close()


def _shardset_handlers(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    """Every event of a ShardSet reconciles it; its deletion may delete its volumes."""
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.create(*resource, registry=registry)
    async def created(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        sset = ShardSet.from_body(dict(body))
        kopf.info(
            body,
            reason="Creating",
            message=f"store of {sset.spec.nodes} nodes, {sset.spec.shards} shards, "
            f"replication {sset.spec.replication_factor}",
        )
        await reconcile(rt, "create", body, patch)

    @kopf.on.update(*resource, field="spec", registry=registry)
    async def updated(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconcile(rt, "update", body, patch)

    @kopf.on.resume(*resource, registry=registry)
    async def resumed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconcile(rt, "resume", body, patch)

    @kopf.timer(*resource, interval=rt.settings.interval_s, registry=registry)
    async def tick(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconcile(rt, "timer", body, patch)

    @kopf.on.delete(*resource, registry=registry)
    async def deleted(body: kopf.Body, **_: Any) -> None:
        await forget(rt, body)


async def start(rt: Runtime, settings: kopf.OperatorSettings) -> None:
    """Kopf's settings, then the API clients and the metrics server."""
    settings.persistence.finalizer = FINALIZER
    settings.peering.priority = rt.settings.peering_priority
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = 20  # Events for INFO and above
    try:
        await asyncio.to_thread(load_credentials)
    except Exception as e:
        # No credentials will not fix itself: exit, so the pod restarts visibly.
        raise kopf.PermanentError(f"no Kubernetes credentials: {e}") from e
    rt.session = aiohttp.ClientSession()
    rt.ctx = Context(Kube(), NodeClient(rt.session), rt.settings.node_image)
    start_http_server(rt.settings.metrics_port)
    log.info(
        "operator started",
        node_image=rt.settings.node_image,
        namespaces=list(rt.settings.watch_namespaces) or "all",
        peering=rt.settings.peering,
    )


async def forget(rt: Runtime, body: kopf.Body) -> None:
    """A deleted ShardSet: drop what this process keeps about it, and delete its
    volumes unless storage.retainOnDelete keeps them."""
    assert rt.ctx is not None, "startup handler did not run"
    sset = ShardSet.from_body(dict(body))
    names = Names(sset.name, sset.namespace)
    metrics.record_conditions(str(body.metadata.uid), None)
    metrics.record_certs(names.namespace, names.name, None)
    rt.ctx.nodes.forget(names.store_key)  # its ssl context
    rt.locks.pop(str(body.metadata.uid), None)
    rt.last.pop(str(body.metadata.uid), None)
    if sset.spec.storage.retain_on_delete:
        kopf.info(
            body,
            reason="VolumesRetained",
            message=f"volumes of {names.statefulset} kept (storage.retainOnDelete); "
            f"delete PVCs labelled {names.selector_string()} to drop the data",
        )
        return
    try:
        claims = await rt.ctx.kube.delete_volume_claims(names.namespace, names.selector_string())
    except KubeError as e:
        kopf.warn(body, reason="VolumeDeleteFailed", message=str(e))
        raise kopf.TemporaryError(str(e), delay=10) from e
    kopf.info(
        body,
        reason="VolumesDeleted",
        message=f"deleted {len(claims)} volume claims: {', '.join(claims) or 'none'}",
    )


async def reconcile(rt: Runtime, trigger: str, body: Any, patch: Any) -> None:
    """Run one converge for `body` and put the status in Kopf's `patch` if it changed."""
    assert rt.ctx is not None, "startup handler did not run"
    raw: dict[str, Any] = dict(body)
    uid = str(raw["metadata"]["uid"])
    lock = rt.locks.setdefault(uid, asyncio.Lock())
    started = time.monotonic()
    in_object = ShardSet.from_body(raw).status
    async with lock:
        previous = rt.last.get(uid, in_object)
        raw["status"] = previous.model_dump(by_alias=True, exclude_none=True, mode="json")
        try:
            outcome = await converge(raw, rt.ctx)
        except Exception:
            metrics.RECONCILES.labels(trigger, "error").inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.labels(trigger).observe(time.monotonic() - started)
        rt.last[uid] = outcome.status
    metrics.RECONCILES.labels(trigger, "error" if outcome.failure else "ok").inc()
    for reason, message in outcome.notes:
        kopf.info(body, reason=reason, message=message)
    _post_transitions(body, previous, outcome.status)
    if outcome.failure:
        log.error("reconcile failed", shardset=raw["metadata"]["name"], error=outcome.failure)
    if changed(in_object, outcome.status):
        patch.status.update(status_patch(outcome.status))
    metrics.record_conditions(uid, outcome.status)
    meta = raw["metadata"]
    metrics.record_certs(meta["namespace"], meta["name"], outcome.status.tls)


def _post_transitions(body: Any, old: ShardSetStatus, new: ShardSetStatus) -> None:
    """An Event for every condition that changed status or reason; a Warning when it
    went bad (not while the store is still being created)."""
    for cond in transitions(old, new):
        refused = cond.type == "Progressing" and cond.status == "False"
        unhealthy = (cond.type == "Ready" and cond.status == "False") or (
            cond.type == "Degraded" and cond.status == "True"
        )
        bad = (refused and cond.reason != "Reconciled") or (unhealthy and new.bootstrapped)
        message = f"{cond.type}={cond.status}: {cond.message}"
        if bad:
            kopf.warn(body, reason=cond.reason, message=message)
        else:
            kopf.info(body, reason=cond.reason, message=message)
