"""ConfigMap <name>-config: the bootstrap shard map, the read consistency, and once the
store exists, the `store-created` marker: a node that finds it but has an empty volume
lost its data, and rejoins instead of bootstrapping (shardset_node --store-created-file)."""

from __future__ import annotations

from typing import Any

from shardset_operator.api.consistency import ReadSetting
from shardset_operator.api.naming import Names

# The store's first shard map (plan/bootstrap.py): written once, never changed.
BOOTSTRAP_KEY = "bootstrap.json"
STORE_CREATED_KEY = "store-created"


def configmap(
    names: Names, bootstrap_json: str, reads: ReadSetting, created: bool = False
) -> dict[str, Any]:
    marker = {STORE_CREATED_KEY: "true"} if created else {}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.configmap,
            "namespace": names.namespace,
            "labels": names.labels(),
        },
        "data": {BOOTSTRAP_KEY: bootstrap_json, **reads.configmap_data(), **marker},
    }
