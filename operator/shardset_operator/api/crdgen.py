"""Generate the ShardSet and ShardSetUser CustomResourceDefinitions from the pydantic models.

`python -m shardset_operator.api.crdgen` writes crds/shardset.io_shardsets.yaml and
crds/shardset.io_shardsetusers.yaml; tests/operator/test_crds.py fails when they differ
from what this prints.

Kubernetes wants a *structural* schema: every node typed, no $ref, no anyOf of
unrelated types, no `additionalProperties` next to `properties`. Pydantic's JSON
schema is turned into one here: references inlined, Optional[X] folded into X,
titles dropped, free-form Kubernetes structs marked x-kubernetes-preserve-unknown-fields,
and the CEL rules of models.CEL_RULES attached.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from shardset_operator.api import models, usermodels

Schema = dict[str, Any]

CRD_DIR = Path(__file__).resolve().parents[3] / "crds"
CRD_FILE = CRD_DIR / f"{models.GROUP}_{models.PLURAL}.yaml"
USER_CRD_FILE = CRD_DIR / f"{models.GROUP}_{usermodels.USER_PLURAL}.yaml"

# JSON-schema keywords the API server does not accept in a CRD schema.
_DROPPED = {"title", "$defs", "$schema", "examples"}


def _resolve(node: Any, defs: dict[str, Schema]) -> Any:
    """Inline every $ref; keywords beside a $ref (description, default) win."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return {k: _resolve(v, defs) for k, v in node.items()}


def _structural(node: Schema) -> Schema:
    """One pydantic schema node as a structural CRD schema node."""
    out = {k: v for k, v in node.items() if k not in _DROPPED}
    variants = out.pop("anyOf", None)
    if variants is not None:
        # Optional[X] is anyOf [X, null]: None means absent. Not `nullable`: the operator
        # writes status by merge patch, where null removes a field.
        real = [v for v in variants if v.get("type") != "null"]
        if len(real) != 1:
            raise ValueError(f"cannot express anyOf {variants} in a structural schema")
        out = {**_structural(real[0]), **out}
    if "default" in out and out["default"] is None:
        del out["default"]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if out.get("type") == "object":
        extra = out.get("additionalProperties")
        if "properties" in out:
            out.pop("additionalProperties", None)
            out["properties"] = {k: _structural(v) for k, v in out["properties"].items()}
        elif extra is True or extra is None or extra == {}:
            # dict[str, Any]: a free-form Kubernetes struct, validated where it is used.
            out.pop("additionalProperties", None)
            out["x-kubernetes-preserve-unknown-fields"] = True
        else:
            out["additionalProperties"] = _structural(extra)
    if out.get("type") == "array" and "items" in out:
        out["items"] = _structural(out["items"])
    return out


def _default_objects(node: Schema, default: dict[str, Any]) -> None:
    """Give optional sub-objects their whole default (from the model) so it applies.

    The API server only defaults fields of objects that are present, so an object needs
    a default of its own; and it checks that default against the object's CEL rules
    before nested defaults apply, so `{}` would not do: it is the model's own default.
    """
    for name, child in node.get("properties", {}).items():
        if child.get("type") == "object" and "properties" in child and name in default:
            child.setdefault("default", default[name])
            _default_objects(child, default[name])


def _strip_defaults(node: Any) -> None:
    """Status is written by the operator only; defaults there would only mislead."""
    if isinstance(node, dict):
        node.pop("default", None)
        for v in node.values():
            _strip_defaults(v)
    elif isinstance(node, list):
        for v in node:
            _strip_defaults(v)


def _model_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(_resolve(raw, raw.get("$defs", {})))


def _attach_cel(root: Schema, cel_rules: dict[str, list[dict[str, str]]]) -> None:
    for path, rules in cel_rules.items():
        node = root
        for part in path.split(".") if path else []:
            node = node["properties"][part]
        node["x-kubernetes-validations"] = rules


@dataclass(frozen=True)
class Kind:
    """One custom resource: its names, models, CEL rules and printer columns."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    cel_rules: dict[str, list[dict[str, str]]]
    columns: list[dict[str, str]]

    @property
    def file(self) -> Path:
        return CRD_DIR / f"{models.GROUP}_{self.plural}.yaml"


SHARDSET = Kind(
    models.KIND,
    models.PLURAL,
    models.SINGULAR,
    models.SHORT_NAMES,
    "A sharded, replicated key-value store run by the Shardset operator.",
    models.ShardSetSpec,
    models.ShardSetStatus,
    models.CEL_RULES,
    models.PRINTER_COLUMNS,
)
SHARDSETUSER = Kind(
    usermodels.USER_KIND,
    usermodels.USER_PLURAL,
    usermodels.USER_SINGULAR,
    usermodels.USER_SHORT_NAMES,
    "A user of one ShardSet: its role, and a Secret with its certificate and token.",
    usermodels.ShardSetUserSpec,
    usermodels.ShardSetUserStatus,
    usermodels.USER_CEL_RULES,
    usermodels.USER_PRINTER_COLUMNS,
)
KINDS = (SHARDSET, SHARDSETUSER)


def openapi_schema(kind: Kind = SHARDSET) -> Schema:
    spec = _model_schema(kind.spec)
    if not spec.get("required"):  # a spec with a required field has no default of its own
        spec["default"] = kind.spec().model_dump(by_alias=True, exclude_none=True)
        _default_objects(spec, spec["default"])
    status = _model_schema(kind.status)
    _strip_defaults(status)
    conditions = status["properties"]["conditions"]
    # One condition per type, merged by type (API conventions).
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    root: Schema = {
        "type": "object",
        "description": kind.description,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if spec.get("required"):
        root["required"] = ["spec"]
    _attach_cel(root, kind.cel_rules)
    return root


def crd(kind: Kind = SHARDSET) -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["shardset"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.columns,
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                }
            ],
        },
    }


def render(kind: Kind = SHARDSET) -> str:
    source = "usermodels.py" if kind is SHARDSETUSER else "models.py"
    header = (
        "# Generated by `python -m shardset_operator.api.crdgen` (make crds) from\n"
        f"# operator/shardset_operator/api/{source}. Do not edit by hand.\n"
    )
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


def _stale(path: Path, text: str) -> bool:
    current = path.read_text() if path.exists() else ""
    if current != text:
        print(f"{path} is stale: run `make crds`", file=sys.stderr)
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write the CRDs generated from the models.")
    p.add_argument("--out", type=Path, default=CRD_FILE, help=f"default: {CRD_FILE}")
    p.add_argument("--user-out", type=Path, default=USER_CRD_FILE, help=f"default: {USER_CRD_FILE}")
    p.add_argument("--check", action="store_true", help="exit 1 if a file is not up to date")
    ns = p.parse_args(argv)
    files = {ns.out: render(SHARDSET), ns.user_out: render(SHARDSETUSER)}
    if ns.check:
        stale = [path for path, text in files.items() if _stale(path, text)]
        return 1 if stale else 0
    for path, text in files.items():
        if path.exists() and path.read_text() == text:
            continue  # unchanged: not rewritten (a reader never sees it half written)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
