"""Fields of an admin request's JSON body, checked: a bad one is a 400 naming it."""

from __future__ import annotations

from typing import Any

from shardset_node.errors import ApiError

Body = dict[str, Any]


def id_list(body: Body, name: str) -> list[int]:
    raw = body.get(name)
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw)
    ):
        raise ApiError(400, "bad_field", f"{name!r} must be a non-empty list of node ids")
    return sorted(set(raw))


def str_field(body: Body, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, "bad_field", f"{name!r} must be a non-empty string", field=name)
    return value


def int_field(body: Body, name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApiError(400, "bad_field", f"{name!r} must be a non-negative integer, got {value!r}")
    return value
