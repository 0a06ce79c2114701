"""ConfigMap <name>-config: the bootstrap shard map and the read consistency."""

from __future__ import annotations

from typing import Any

from shardset_operator.bootstrap import BOOTSTRAP_KEY
from shardset_operator.consistency import ReadSetting
from shardset_operator.naming import Names


def configmap(names: Names, bootstrap_json: str, reads: ReadSetting) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.configmap,
            "namespace": names.namespace,
            "labels": names.labels(),
        },
        "data": {BOOTSTRAP_KEY: bootstrap_json, **reads.configmap_data()},
    }
