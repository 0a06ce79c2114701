"""The node's OpenAPI document names every admin action the contract defines."""

from __future__ import annotations

from shardset_node.frontends.openapi import OPENAPI
from shardset_proto.admin import AdminAction


def test_every_admin_action_is_named_in_the_document() -> None:
    summary = OPENAPI["paths"]["/v1/admin/{action}"]["post"]["summary"]
    missing = [a.value for a in AdminAction if a.value not in summary]
    assert missing == []
