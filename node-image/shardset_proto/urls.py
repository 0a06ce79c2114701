"""The node's HTTP paths, written once (the API serves them, clients and the operator
call them)."""

from __future__ import annotations

KV = "/v1/kv/"  # + the URL-quoted key: PUT, GET, DELETE
CAS = "/v1/cas/"  # + the URL-quoted key: POST
SCAN = "/v1/scan"
SHARDMAP = "/v1/shardmap"
STATUS = "/v1/status"
OPENAPI = "/v1/openapi.json"
ADMIN = "/v1/admin/"  # + the action's name: POST
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"


def admin_path(action: str) -> str:
    """The path of an admin action (`action` is an AdminAction, i.e. its URL name)."""
    return ADMIN + action
