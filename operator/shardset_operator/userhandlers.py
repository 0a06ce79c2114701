"""Kopf handlers of ShardSetUsers: thin, like handlers.py's for ShardSets.

Create, spec changes, resume and a timer converge the user (`reconcile/users.py`); the
timer is what renews certificates at 2/3 of their life and writes the user record again
after a store lost it. Deletion waits (Kopf's finalizer) until the store deleted the
user, so access is revoked before the resource and its Secret go.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import kopf
import structlog

from shardset_operator.api.models import GROUP, VERSION
from shardset_operator.api.usermodels import USER_PLURAL
from shardset_operator.clients.kube import KubeError
from shardset_operator.reconcile.context import Context
from shardset_operator.reconcile.users import StoreUnreachable, converge_user, revoke_user

log = structlog.get_logger("shardset_operator.users")
RETRY_DELETE_S = 5  # a revocation that failed is retried this often


class HasContext(Protocol):
    ctx: Context | None

    @property
    def settings(self) -> Any: ...


def register_users(registry: kopf.OperatorRegistry, rt: HasContext) -> None:
    resource = (GROUP, VERSION, USER_PLURAL)

    @kopf.on.create(*resource, registry=registry)
    async def user_created(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconcile_user(rt, body, patch)

    @kopf.on.update(*resource, field="spec", registry=registry)
    async def user_updated(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconcile_user(rt, body, patch)

    @kopf.on.resume(*resource, registry=registry)
    async def user_resumed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconcile_user(rt, body, patch)

    @kopf.timer(*resource, interval=rt.settings.interval_s, registry=registry)
    async def user_tick(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconcile_user(rt, body, patch)

    @kopf.on.delete(*resource, registry=registry)
    async def user_deleted(body: kopf.Body, **_: Any) -> None:
        await delete_user(rt, body)


async def reconcile_user(rt: HasContext, body: Any, patch: Any) -> None:
    assert rt.ctx is not None, "startup handler did not run"
    raw: dict[str, Any] = dict(body)
    outcome = await converge_user(rt.ctx, raw, datetime.now(UTC))
    for reason, message in outcome.notes:
        kopf.info(body, reason=reason, message=message)
    new = outcome.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    old = dict(raw.get("status") or {})
    if new != old:
        patch.status.update(new)
        _announce(body, old, new)


def _announce(body: Any, old: dict[str, Any], new: dict[str, Any]) -> None:
    """An Event when Ready changes status or reason (a Warning when it went False)."""
    before: dict[str, Any] = next(iter(old.get("conditions") or []), {})
    after = new["conditions"][0]
    if (before.get("status"), before.get("reason")) == (after["status"], after["reason"]):
        return
    message = f"Ready={after['status']}: {after['message']}"
    if after["status"] == "True":
        kopf.info(body, reason=after["reason"], message=message)
    else:
        kopf.warn(body, reason=after["reason"], message=message)
        log.warning(
            "user not ready",
            user=body["metadata"]["name"],
            reason=after["reason"],
            message=after["message"],
        )


async def delete_user(rt: HasContext, body: Any) -> None:
    assert rt.ctx is not None, "startup handler did not run"
    try:
        done = await revoke_user(rt.ctx, dict(body))
    except (KubeError, StoreUnreachable) as e:
        kopf.warn(body, reason="RevokeFailed", message=f"{e}; retrying in {RETRY_DELETE_S}s")
        raise kopf.TemporaryError(str(e), delay=RETRY_DELETE_S) from e
    kopf.info(body, reason="UserDeleted", message=done)
