"""etcd's KV gRPC stubs, compiled from the vendored bench/proto/etcd_kv.proto with
grpcio-tools into bench/.gen/ (not committed) the first time they are needed."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

PROTO = Path(__file__).parent / "proto" / "etcd_kv.proto"
GEN = Path(__file__).parent / ".gen"


def compile_stubs() -> Path:
    out = GEN / "etcd_kv_pb2.py"
    grpc_out = GEN / "etcd_kv_pb2_grpc.py"
    newest = PROTO.stat().st_mtime
    if out.exists() and grpc_out.exists() and out.stat().st_mtime >= newest:
        return GEN
    from grpc_tools import protoc  # type: ignore[import-untyped]

    GEN.mkdir(exist_ok=True)
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO.parent}",
            f"--python_out={GEN}",
            f"--grpc_python_out={GEN}",
            str(PROTO),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed on {PROTO} ({rc})")
    return GEN


def load() -> tuple[ModuleType, ModuleType]:
    """(messages module, gRPC module)."""
    gen = str(compile_stubs())
    if gen not in sys.path:
        sys.path.insert(0, gen)
    return importlib.import_module("etcd_kv_pb2"), importlib.import_module("etcd_kv_pb2_grpc")
