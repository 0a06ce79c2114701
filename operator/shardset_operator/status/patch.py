"""The status as written to the API server, and what changed since the last one (pure)."""

from __future__ import annotations

from shardset_operator.api.models import Condition, ShardSetStatus


def status_patch(status: ShardSetStatus) -> dict[str, object]:
    """The status as sent to the API server: camelCase, absent fields left out."""
    body = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    # A merge patch keeps fields it does not mention: say null to remove them.
    for key in ("operation", "journal", "lastOperation", "mapEpoch"):
        body.setdefault(key, None)
    body["consistency"].setdefault("mode", None)
    body["consistency"].setdefault("maxStalenessMs", None)
    body.setdefault("tls", None)
    if body["tls"] is not None:  # a rotation that ended, an expiry no longer known
        for key in ("rotation", "caNotAfter", "nodeNotAfter", "operatorNotAfter"):
            body["tls"].setdefault(key, None)
    return body


def changed(previous: ShardSetStatus, new: ShardSetStatus) -> bool:
    return previous.model_dump(by_alias=True, mode="json") != new.model_dump(
        by_alias=True, mode="json"
    )


def transitions(previous: ShardSetStatus, new: ShardSetStatus) -> list[Condition]:
    """Conditions of `new` whose status or reason differ from `previous`."""
    before = {c.type: (c.status, c.reason) for c in previous.conditions}
    return [c for c in new.conditions if before.get(c.type) != (c.status, c.reason)]
