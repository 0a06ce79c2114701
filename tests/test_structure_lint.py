"""hack/lint/structure.py finds what it is for, and nothing in a clean module."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "hack" / "lint" / "structure.py"
spec = importlib.util.spec_from_file_location("structure_lint", SCRIPT)
assert spec is not None and spec.loader is not None
structure = importlib.util.module_from_spec(spec)
spec.loader.exec_module(structure)


def findings(tmp_path: Path, source: str) -> list[str]:
    path = tmp_path / "mod.py"
    path.write_text(source)
    return list(structure.check(path))


def test_a_function_over_sixty_lines_is_named(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    found = findings(tmp_path, f"def long():\n{body}")
    assert len(found) == 1 and "function long is 61 lines" in found[0]
    assert findings(tmp_path, f"def fits():\n{body[: body.rindex('    x59')]}") == []


def test_a_private_name_of_another_module_is_named(tmp_path: Path) -> None:
    found = findings(tmp_path, "from shardset.cli import _helper\n")
    assert found and "imports private name _helper from shardset.cli" in found[0]
    found = findings(tmp_path, "def f(node):\n    return node._await()\n")
    assert found and "._await" in found[0]


def test_own_private_names_are_fine(tmp_path: Path) -> None:
    source = (
        "class A:\n"
        "    def __init__(self) -> None:\n"
        "        self._x = 1\n"
        "    def same(self, other: 'A') -> int:\n"
        "        return self._x + other._x + self.__class__.__name__.count('A')\n"
    )
    assert findings(tmp_path, source) == []
