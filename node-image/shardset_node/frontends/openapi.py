"""The OpenAPI 3.1 description served at /v1/openapi.json."""

from __future__ import annotations

from typing import Any

from shardset_proto.consistency import MODES

_META = {
    "shard": {"type": "integer", "description": "the shard that owns the key"},
    "index": {
        "type": "integer",
        "description": "Raft index of the write; for a read, the index of the state it was "
        "read from (the read index on the leader, the applied index on other replicas)",
    },
    "epoch": {"type": "integer", "description": "shard-map epoch the request was served at"},
    "replica": {"type": "integer", "description": "node that served the request"},
}
_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "machine-readable code"},
        "message": {"type": "string", "description": "what is wrong, for a person"},
        "leader": {"type": ["integer", "null"], "description": "on 307: the shard's leader"},
    },
}
_KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 1024},
    "description": "UTF-8 key, 1 to 1024 bytes, percent-encoded",
}
_READ_PARAMS = [
    {
        "name": "consistency",
        "in": "query",
        "schema": {"type": "string", "enum": list(MODES)},
        "description": "read mode (default: the node's, see /v1/status); docs/consistency.md",
    },
    {
        "name": "max_staleness_ms",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1},
        "description": "bounded: the staleness bound (default: the node's maxStalenessMs)",
    },
    {
        "name": "min_index",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0},
        "description": "session: the client's token for the key's shard (highest index it "
        "wrote or read); the replica serves once it has applied it",
    },
]
_READ_FIELDS = {
    "consistency": {"type": "string", "enum": list(MODES), "description": "mode that served"},
    "staleness_ms": {
        "type": "number",
        "description": "bounded only: proven upper bound of the staleness of the state read",
    },
}
_READ_HEADERS = {
    "X-Shardset-Consistency": {"schema": {"type": "string"}, "description": "mode that served"},
    "X-Shardset-Replica": {"schema": {"type": "integer"}, "description": "node that served"},
    "X-Shardset-Index": {"schema": {"type": "integer"}, "description": "index of the state"},
}
_POLICY = {
    "type": "object",
    "required": ["mode", "maxStalenessMs"],
    "properties": {
        "mode": {"type": "string", "enum": list(MODES)},
        "maxStalenessMs": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "default bound of bounded reads; required when mode is bounded",
        },
    },
}
_IDEM = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "same key on a retry = applied once, original result returned",
}


def _write_response(extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["shard", "index", "epoch"],
        "properties": {**_META, **extra},
    }


def _responses(ok: dict[str, Any]) -> dict[str, Any]:
    err = {"content": {"application/json": {"schema": _ERROR}}}
    return {
        "200": {"description": "done", "content": {"application/json": {"schema": ok}}},
        "307": {"description": "not the leader: follow Location", **err},
        "400": {"description": "malformed request", **err},
        "503": {"description": "no leader yet: retry after Retry-After", **err},
    }


def _read_responses(ok: dict[str, Any]) -> dict[str, Any]:
    out = _responses(ok)
    out["200"] = {**out["200"], "headers": _READ_HEADERS}
    return out


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Shardset node API", "version": "v1"},
    "paths": {
        "/v1/kv/{key}": {
            "parameters": [_KEY],
            "put": {
                "summary": "write a value (raw bytes body, up to 1 MiB)",
                "parameters": [_IDEM],
                "requestBody": {"content": {"application/octet-stream": {}}},
                "responses": {
                    **_responses(_write_response({"prev_exists": {"type": "boolean"}})),
                    "413": {"description": "value too large"},
                },
            },
            "get": {
                "summary": "read a value (base64 in `value`; 404 if absent) under a consistency "
                "mode; the body and X-Shardset-* headers name the mode and the replica that "
                "served it. 307: this replica cannot serve the mode, read from the leader; "
                "503: no leader known here (e.g. the minority side of a partition)",
                "parameters": _READ_PARAMS,
                "responses": {
                    **_read_responses(
                        _write_response(
                            {
                                "value": {"type": ["string", "null"], "contentEncoding": "base64"},
                                **_READ_FIELDS,
                            }
                        )
                    ),
                    "404": {
                        "description": "no such key (same metadata, value null)",
                        "headers": _READ_HEADERS,
                    },
                },
            },
            "delete": {
                "summary": "delete a key",
                "parameters": [_IDEM],
                "responses": _responses(_write_response({"existed": {"type": "boolean"}})),
            },
        },
        "/v1/cas/{key}": {
            "parameters": [_KEY],
            "post": {
                "summary": "compare-and-set: write `value` if the key holds `expected`",
                "parameters": [_IDEM],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["expected", "value"],
                                "properties": {
                                    "expected": {
                                        "type": ["string", "null"],
                                        "description": "base64; null = absent",
                                    },
                                    "value": {
                                        "type": ["string", "null"],
                                        "description": "base64; null = delete",
                                    },
                                },
                            }
                        }
                    }
                },
                "responses": _responses(
                    _write_response(
                        {"ok": {"type": "boolean"}, "current": {"type": ["string", "null"]}}
                    )
                ),
            },
        },
        "/v1/scan": {
            "get": {
                "summary": "keys of one shard in [start, end), in key order, under a "
                "consistency mode as for GET /v1/kv/{key}",
                "parameters": [
                    {"name": n, "in": "query", "schema": {"type": t}}
                    for n, t in (
                        ("shard", "integer"),
                        ("start", "string"),
                        ("end", "string"),
                        ("limit", "integer"),
                    )
                ]
                + _READ_PARAMS,
                "responses": _read_responses(
                    _write_response({"items": {"type": "array"}, **_READ_FIELDS})
                ),
            }
        },
        "/v1/shardmap": {
            "get": {
                "summary": "slots, replicas, node addresses, known leaders",
                "responses": {"200": {"description": "the shard map"}},
            }
        },
        "/v1/status": {
            "get": {
                "summary": "this node's replicas (role, term, commit, applied, lag) and its "
                "default read consistency (`consistency`: {mode, maxStalenessMs})",
                "responses": {"200": {"description": "status"}},
            }
        },
        "/v1/admin/consistency": {
            "post": {
                "summary": "change this node's default read consistency, live (no restart)",
                "requestBody": {"content": {"application/json": {"schema": _POLICY}}},
                "responses": {
                    "200": {
                        "description": "the policy now in force",
                        "content": {"application/json": {"schema": _POLICY}},
                    },
                    "400": {
                        "description": "invalid: `field` names the bad field",
                        "content": {"application/json": {"schema": _ERROR}},
                    },
                },
            }
        },
        "/v1/admin/{action}": {
            "post": {
                "summary": "admin operations (idempotent): transfer-leader, add-learner, promote, "
                "remove-replica, create-replica, drop-replica, split-shard, read-index (on a "
                "shard's leader: a linearizable read index, for followers' bounded reads)",
                "parameters": [
                    {"name": "action", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _responses({"type": "object"}),
            }
        },
        "/healthz": {
            "get": {
                "summary": "process is alive (503 once its Raft loop died or is stuck)",
                "responses": {"200": {"description": "ok"}, "503": {"description": "failed"}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "every local replica knows its leader",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}
        },
    },
}
