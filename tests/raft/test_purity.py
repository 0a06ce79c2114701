"""The Raft core stays sans-I/O: no sockets, clocks, threads, disks or entropy.

The same rule is an import-linter contract in pyproject.toml (run by `make lint`);
this test keeps it enforced by `make test` too, by reading every import statement.
"""

from __future__ import annotations

import ast
from pathlib import Path

import shardset_raft

ALLOWED = {"__future__", "bisect", "collections", "dataclasses", "enum", "typing", "shardset_raft"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_raft_core_imports_only_pure_modules() -> None:
    package = Path(shardset_raft.__file__).parent
    files = sorted(package.glob("*.py"))
    assert files
    for path in files:
        extra = _imports(path) - ALLOWED
        assert not extra, f"{path.name} imports {sorted(extra)}: the Raft core must stay sans-I/O"


def test_the_check_would_catch_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom asyncio import sleep\n")
    assert _imports(bad) - ALLOWED == {"time", "asyncio"}
