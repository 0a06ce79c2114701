"""Fixtures for the front ends' authentication tests (authkit.py has the PKI)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The test modules import their helpers (authkit.py) from this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from authkit import STORE, Pki, Users, make_pki

from shardset_node.auth import Authenticator


@pytest.fixture(scope="session")
def store_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def users() -> Users:
    return Users()


@pytest.fixture
def authenticator(users: Users) -> Authenticator:
    return Authenticator(STORE, users)
