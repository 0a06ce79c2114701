"""The CRD in crds/ is generated from the models and says what users rely on."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from shardset_operator.api import crdgen, models


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(crdgen.render())
    return loaded


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: Any) -> list[dict[str, Any]]:
    out = []
    if isinstance(node, dict):
        out.append(node)
        for v in node.values():
            out.extend(_walk(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_walk(v))
    return out


def test_committed_crd_is_up_to_date() -> None:
    assert crdgen.CRD_FILE.read_text() == crdgen.render(), (
        f"{crdgen.CRD_FILE} is stale: run `make crds` and commit it"
    )


def test_check_mode_fails_on_a_stale_file(tmp_path: Any) -> None:
    out = tmp_path / "crd.yaml"
    out.write_text("stale\n")
    assert crdgen.main(["--out", str(out), "--check"]) == 1
    assert crdgen.main(["--out", str(out)]) == 0
    assert crdgen.main(["--out", str(out), "--check"]) == 0


def test_names_scope_and_status_subresource(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "shardsets.shardset.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ShardSet"
    assert spec["names"]["shortNames"] == ["sset"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Nodes", "Shards", "Replication", "Consistency", "Ready", "Age"]


def test_schema_is_structural(crd: dict[str, Any]) -> None:
    """No $ref/anyOf/nullable-free gaps: every node typed, no properties+additionalProperties."""
    for node in _walk(_schema(crd)):
        if "properties" in node and all(isinstance(v, dict) for v in node["properties"].values()):
            assert node.get("type") == "object", node
            assert "additionalProperties" not in node, node
        for bad in ("$ref", "anyOf", "allOf", "oneOf", "$defs", "title", "const"):
            assert bad not in node, (bad, node)
    spec = _schema(crd)["properties"]["spec"]
    for name, prop in spec["properties"].items():
        assert prop.get("type") in {"object", "array", "string", "integer", "boolean"}, name
        assert prop.get("description"), f"spec.{name} has no description"


def test_defaults_make_an_empty_spec_complete(crd: dict[str, Any]) -> None:
    spec = _schema(crd)["properties"]["spec"]
    props = spec["properties"]
    # Whole defaults, not {}: the API server checks a default against the CEL rules
    # before nested defaults apply (a `{}` default is refused by it).
    assert spec["default"]["replicationFactor"] == 3
    assert spec["default"]["consistency"] == {"mode": "linearizable"}
    assert props["nodes"]["default"] == 3
    assert props["shards"]["default"] == 4
    assert props["replicationFactor"]["default"] == 3
    assert props["consistency"]["default"] == {"mode": "linearizable"}
    assert props["consistency"]["properties"]["mode"]["default"] == "linearizable"
    assert props["storage"]["default"] == {"size": "1Gi", "retainOnDelete": True}
    assert props["storage"]["properties"]["size"]["default"] == "1Gi"
    assert props["storage"]["properties"]["retainOnDelete"]["default"] is True
    assert props["imagePullPolicy"]["default"] == "IfNotPresent"
    assert props["failover"]["properties"]["nodeGoneAfterSeconds"]["default"] == 300
    assert props["rebalance"]["properties"]["maxConcurrentMoves"]["default"] == 1
    assert props["rebalance"]["properties"]["paused"]["default"] is False
    # The image default lives in the operator (env SHARDSET_NODE_IMAGE), not the CRD.
    assert "default" not in props["image"]


def test_enums_and_bounds(crd: dict[str, Any]) -> None:
    props = _schema(crd)["properties"]["spec"]["properties"]
    assert props["consistency"]["properties"]["mode"]["enum"] == [
        "linearizable",
        "lease",
        "bounded",
        "session",
        "eventual",
    ]
    assert props["nodes"]["minimum"] == 1
    assert props["shards"]["minimum"] == 1
    assert props["replicationFactor"]["minimum"] == 1
    staleness = props["consistency"]["properties"]["maxStalenessMs"]
    assert (staleness["minimum"], staleness["maximum"]) == (1, models.MAX_STALENESS_LIMIT_MS)
    conditions = _schema(crd)["properties"]["status"]["properties"]["conditions"]
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_free_form_kubernetes_structs_keep_unknown_fields(crd: dict[str, Any]) -> None:
    props = _schema(crd)["properties"]["spec"]["properties"]
    assert props["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["resources"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["nodeSelector"]["additionalProperties"] == {"type": "string"}


def _rules(node: dict[str, Any]) -> list[str]:
    return [v["rule"] for v in node.get("x-kubernetes-validations", [])]


def test_cel_rules(crd: dict[str, Any]) -> None:
    root = _schema(crd)
    spec = root["properties"]["spec"]
    assert "self.replicationFactor <= self.nodes" in _rules(spec)
    assert _rules(spec["properties"]["shards"]) == ["self >= oldSelf"]  # grow only
    assert "self.mode != 'bounded' || has(self.maxStalenessMs)" in _rules(
        spec["properties"]["consistency"]
    )
    [storage_rule] = _rules(spec["properties"]["storage"])
    assert "oldSelf.storageClassName" in storage_rule
    assert any("metadata.name" in r for r in _rules(root))


def test_tls_mode_is_fixed_at_creation_and_secrets_mode_names_its_secrets(
    crd: dict[str, Any],
) -> None:
    tls = _schema(crd)["properties"]["spec"]["properties"]["tls"]
    assert tls["properties"]["mode"]["enum"] == ["Operator", "Secrets", "Disabled"]
    assert tls["default"] == {"mode": "Operator"}
    immutable, complete = tls["x-kubernetes-validations"]
    assert immutable["rule"] == "self.mode == oldSelf.mode"
    assert "immutable" in immutable["message"] and "shard map" in immutable["message"]
    for field in ("caSecret", "nodeSecretPrefix", "operatorSecret"):
        assert f"has(self.{field})" in complete["rule"] and field in complete["message"]


def test_status_has_no_defaults(crd: dict[str, Any]) -> None:
    status = _schema(crd)["properties"]["status"]
    assert all("default" not in node for node in _walk(status))


def test_models_round_trip_a_minimal_shardset() -> None:
    """What the API server stores for a three-line ShardSet parses with every default."""
    body = {
        "metadata": {"name": "demo", "namespace": "default", "generation": 1},
        "spec": {},
    }
    sset = models.ShardSet.from_body(body)
    assert sset.spec.nodes == 3 and sset.spec.replication_factor == 3
    assert sset.spec.consistency.mode == "linearizable"
    assert sset.spec.storage.retain_on_delete is True
    assert sset.status.bootstrapped is False
