"""schemathesis against a real one-node store on loopback, with the node's own
/v1/openapi.json: its stateless checks (no server error, documented status codes,
documented content types, response bodies matching their schemas) on every operation,
bounded in examples so the whole module stays well under 90 s on a small machine."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shardset import local
from shardset_proto import urls

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 25  # per operation (13 operations): bounded for CI, not exhaustive


@pytest.fixture(scope="module")
def node(one_node_store: local.LocalCluster) -> local.LocalCluster:
    return one_node_store


def _fuzz(operation: Any, base: str) -> str | None:
    """The first failure of one operation's cases, or None."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same cases every run: a failure in CI reproduces
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=base, checks=CHECKS, timeout=15)

    try:
        run()
    except Exception as e:  # a failed check: reported with the operation's name
        return f"{operation.label}: {e}"
    return None


def test_node_conforms_to_its_openapi_document(node: local.LocalCluster) -> None:
    base = node.endpoints[0]
    schema = schemathesis.openapi.from_url(base + urls.OPENAPI, timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    failures = [f for f in (_fuzz(op, base) for op in operations) if f is not None]
    assert not failures, "\n\n".join(failures)
