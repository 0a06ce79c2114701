"""Repository layout rules.

Packages live one level below `node-image/` and `operator/`, under their own names. Those two
folders must never become packages themselves, and nothing in the repo may be importable as a
top-level `operator`, which would shadow the standard library module.
"""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE_ROOTS = [REPO / "node-image", REPO / "operator"]
SEARCH_PATH = [REPO, *PACKAGE_ROOTS]
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def test_package_roots_are_not_packages() -> None:
    for root in PACKAGE_ROOTS:
        assert not (root / "__init__.py").exists(), f"{root} must not contain __init__.py"


def test_no_regular_operator_module_in_repo_folders() -> None:
    spec = importlib.machinery.PathFinder.find_spec("operator", [str(p) for p in SEARCH_PATH])
    # None, or at most a namespace-package portion (which never shadows the stdlib module).
    assert spec is None or spec.origin is None, f"repo provides an `operator` module: {spec}"


def test_import_operator_resolves_to_stdlib() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in PACKAGE_ROOTS)
    out = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.__file__)"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(out).resolve().is_relative_to(STDLIB), f"`import operator` resolved to {out}"
