"""Structure rules that ruff, mypy and import-linter do not express (run by `make lint`).

- No function or method longer than MAX_FUNCTION_LINES (decorators included): long
  functions are where phases hide inside one another (the old 167-line `converge`).
- No module uses a private name (`_x`) that another module defines: neither
  `from m import _x` of a first-party module nor `obj._x` where `_x` is not defined in
  the module doing the access. A private name is a promise that only its module
  depends on it; reaching in from outside is how the node's reads and wire front end
  came to call the node's internals.

    python hack/lint/structure.py DIR...

Prints one line per finding (path:line: what) and exits 1 when there is any.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_FUNCTION_LINES = 60
FIRST_PARTY = ("shardset", "shardset_node", "shardset_operator", "shardset_proto", "shardset_raft")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def long_functions(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - start + 1
            if length > MAX_FUNCTION_LINES:
                limit = MAX_FUNCTION_LINES
                yield start, f"function {node.name} is {length} lines (at most {limit})"


def _defined_names(tree: ast.Module) -> set[str]:
    """Every name this module defines anywhere: functions, classes, assignments,
    attributes assigned on any object, annotated fields, parameters."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias) and node.asname:
            names.add(node.asname)
    return names


def foreign_private_uses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    own = _defined_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in FIRST_PARTY:
                continue
            for alias in node.names:
                if _is_private(alias.name):
                    yield node.lineno, f"imports private name {alias.name} from {node.module}"
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Load)
            and _is_private(node.attr)
            and node.attr not in own
        ):
            yield node.lineno, f"uses private name .{node.attr} defined in another module"


def check(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    findings = [*long_functions(tree), *foreign_private_uses(tree)]
    return [f"{path}:{line}: {what}" for line, what in sorted(findings)]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    findings: list[str] = []
    for root in argv:
        for path in sorted(Path(root).rglob("*.py")):
            findings.extend(check(path))
    for line in findings:
        print(line)
    if findings:
        print(f"{len(findings)} structure finding(s)", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
