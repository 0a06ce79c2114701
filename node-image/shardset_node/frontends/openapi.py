"""The OpenAPI 3.1 description served at /v1/openapi.json.

`openapi_document(secure, admin)` is the document of the app that serves it: with TLS
(`secure`) it names the two ways to authenticate (a bearer token, a client certificate:
`mutualTLS`), which operations need which, and their 401 and 403 answers; the admin
paths are in it only where the app serves them (an insecure node's API; a node with TLS
serves them on its admin port, client certificate only). `OPENAPI` is the insecure
node's document."""

from __future__ import annotations

import copy
from typing import Any

from shardset_proto.admin import AdminAction
from shardset_proto.commands import MAX_KEY_BYTES
from shardset_proto.consistency import MODES
from shardset_proto.limits import MAX_IDEMPOTENCY_KEY, MAX_INTEGER, MAX_SCAN_LIMIT

# JSON Schema counts a string's characters, the server a key's UTF-8 bytes (at most 4
# a character): any string of this many characters is a key the server accepts. Longer
# keys are accepted too while their UTF-8 is within MAX_KEY_BYTES.
_KEY_CHARS = MAX_KEY_BYTES // 4
_INT = {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER}

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
    "schema": {"type": "string", "minLength": 1, "maxLength": _KEY_CHARS},
    "description": f"UTF-8 key, 1 to {MAX_KEY_BYTES} bytes, percent-encoded (the schema "
    f"says {_KEY_CHARS} characters, which always fit; a longer key is accepted while its "
    "UTF-8 fits). Bytes that are not UTF-8 are refused (400 bad_key).",
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
        "schema": {**_INT, "minimum": 1},
        "description": "bounded: the staleness bound (default: the node's maxStalenessMs)",
    },
    {
        "name": "min_index",
        "in": "query",
        "schema": _INT,
        "description": "session: the client's token for the key's shard (highest index it "
        "wrote or read); the replica serves once it has applied it (400 index_ahead when "
        "the shard's leader never logged that index)",
    },
]
_SCAN_BOUND = {"type": "string", "maxLength": _KEY_CHARS}
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
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_IDEMPOTENCY_KEY,
        "pattern": "^[!-~]+$",
    },
    "description": "same key on a retry = applied once, original result returned",
}


def _write_response(extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["shard", "index", "epoch"],
        "properties": {**_META, **extra},
    }


_ERR = {"content": {"application/json": {"schema": _ERROR}}}
# A request the HTTP server cannot parse (e.g. a request line over 16 KiB) is answered
# by aiohttp itself, in plain text, before any route sees it.
_BAD_REQUEST = {
    "description": "malformed request: `error` names the problem",
    "content": {**_ERR["content"], "text/plain": {"schema": {"type": "string"}}},
}


_OBJECT = {"content": {"application/json": {"schema": {"type": "object"}}}}
_DOWN = {"description": "not live or not ready: the body says why", **_OBJECT}


def _responses(ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "200": {"description": "done", "content": {"application/json": {"schema": ok}}},
        "307": {"description": "not the leader: follow Location", **_ERR},
        "400": _BAD_REQUEST,
        "404": {"description": "no such shard", **_ERR},
        "408": {"description": "the request body did not arrive in time", **_ERR},
        "409": {"description": "stale shard-map epoch, or a conflicting state", **_ERR},
        "413": {"description": "body or value too large", **_ERR},
        "415": {"description": "a body in a charset the node cannot read", **_ERR},
        "503": {"description": "no leader yet, or not caught up: retry after Retry-After", **_ERR},
        "507": {"description": "the node's disk is full", **_ERR},
    }


def _read_responses(ok: dict[str, Any]) -> dict[str, Any]:
    out = _responses(ok)
    out["200"] = {**out["200"], "headers": _READ_HEADERS}
    return out


_PLAIN: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Shardset node API", "version": "v1"},
    "paths": {
        "/v1/kv/{key}": {
            "parameters": [_KEY],
            "put": {
                "summary": "write a value (raw bytes body, up to 1 MiB)",
                "parameters": [_IDEM],
                "requestBody": {"content": {"application/octet-stream": {}}},
                "responses": _responses(_write_response({"prev_exists": {"type": "boolean"}})),
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
                        "description": "no such key (same metadata, value null), or no such "
                        "shard (an error body)",
                        "headers": _READ_HEADERS,
                        "content": {"application/json": {"schema": {"type": "object"}}},
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
                    {"name": "shard", "in": "query", "required": True, "schema": _INT},
                    {"name": "start", "in": "query", "schema": _SCAN_BOUND},
                    {"name": "end", "in": "query", "schema": _SCAN_BOUND},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {**_INT, "minimum": 1, "maximum": MAX_SCAN_LIMIT},
                        "description": "at most this many keys (default 1000)",
                    },
                    *_READ_PARAMS,
                ],
                "responses": _read_responses(
                    _write_response({"items": {"type": "array"}, **_READ_FIELDS})
                ),
            }
        },
        "/v1/shardmap": {
            "get": {
                "summary": "slots, replicas, node addresses, known leaders",
                "responses": {"200": {"description": "the shard map", **_OBJECT}},
            }
        },
        "/v1/status": {
            "get": {
                "summary": "this node's replicas (role, term, commit, applied, lag) and its "
                "default read consistency (`consistency`: {mode, maxStalenessMs})",
                "responses": {"200": {"description": "status", **_OBJECT}},
            }
        },
        "/v1/admin/consistency": {
            "post": {
                "summary": "change this node's default read consistency, live (no restart)",
                "requestBody": {"content": {"application/json": {"schema": _POLICY}}},
                "responses": {
                    **_responses({"type": "object"}),
                    "200": {
                        "description": "the policy now in force",
                        "content": {"application/json": {"schema": _POLICY}},
                    },
                },
            }
        },
        "/v1/admin/{action}": {
            "post": {
                # The list comes from the contract, so a new action is never missing here.
                "summary": "admin operations (idempotent), one typed JSON body each: "
                + ", ".join(a.value for a in AdminAction),
                "parameters": [
                    {"name": "action", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _responses({"type": "object"}),
            }
        },
        "/healthz": {
            "get": {
                "summary": "process is alive (503 once its Raft loop died or is stuck)",
                "responses": {"200": {"description": "ok", **_OBJECT}, "503": _DOWN},
            }
        },
        "/readyz": {
            "get": {
                "summary": "every local replica knows its leader",
                "responses": {"200": {"description": "ready", **_OBJECT}, "503": _DOWN},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "text", "content": {"text/plain": {"schema": {}}}}
                },
            }
        },
    },
}


# --- security (a node with TLS) ---------------------------------------------------------
_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "a user's token (`sst_...`, from its ShardSetUser Secret)",
    },
    "mutualTLS": {
        "type": "mutualTLS",
        "description": "a client certificate issued by the store's CA naming an identity of "
        "this store (shardset://<store>/user/<name>, /operator or /node/<id>)",
    },
}
_OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/v1/openapi.json")
_401 = {
    "description": "unauthenticated: no credential, an unknown or revoked token, or a "
    "certificate of another store or of no user (the message names which)",
    "headers": {
        "WWW-Authenticate": {
            "schema": {"type": "string"},
            "description": '`Bearer realm="shardset"` (not on the admin paths)',
        }
    },
    **_ERR,
}
_403 = {
    "description": "forbidden: the role may not do this, or the key or scan range is "
    "outside the user's prefixes (the message names the role, the action and the key)",
    **_ERR,
}


def openapi_document(*, secure: bool, admin: bool) -> dict[str, Any]:
    """The document of an app: with `secure`, its security schemes and requirements and
    the 401/403 answers; with `admin`, the admin paths."""
    doc = copy.deepcopy(_PLAIN)
    if not admin:
        doc["paths"] = {p: v for p, v in doc["paths"].items() if not p.startswith("/v1/admin/")}
    if not secure:
        return doc
    doc["components"] = {"securitySchemes": _SCHEMES}
    doc["security"] = [{"bearer": []}, {"mutualTLS": []}]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            if path in _OPEN_PATHS:
                op["security"] = []  # no credential needed
                continue
            if path.startswith("/v1/admin/"):
                op["security"] = [{"mutualTLS": []}]  # never a token
            op["responses"] = {**op["responses"], "401": _401, "403": _403}
    return doc


OPENAPI: dict[str, Any] = openapi_document(secure=False, admin=True)
