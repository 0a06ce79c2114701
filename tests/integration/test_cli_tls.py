"""`shardset local up` with TLS (the default) and the CLI against it (issue 16): the
written config works for put and get, over HTTPS and the wire protocol; without
credentials, with a revoked token, with a role that lacks the action, each failure is
its named error on one line with its exit code."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shardset.client import Client
from shardset.local import LocalCluster
from shardset.localpki import new_token
from shardset.tlserrors import TokenRejected
from shardset_proto.admin import DeleteUser, PutUser
from shardset_proto.identity import Role, token_digest

TIMEOUT = 60.0


def shardset(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "shardset", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private HOME and cache: no user config file, no "last local cluster" shared."""
    home = tmp_path_factory.mktemp("home")
    keep = {"PATH", "PYTHONPATH", "LANG", "TMPDIR"}
    base = {k: v for k, v in os.environ.items() if k in keep}
    return {**base, "HOME": str(home), "SHARDSET_CACHE": str(home / "cache")}


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("tls-local") / "store"
    rc, out, err = shardset(
        "local", "up", "--nodes", "1", "--shards", "2", "--replication", "1",
        "--no-fsync", "--data-dir", str(data), env=env,
    )  # fmt: skip
    try:
        assert rc == 0, err
        assert out.strip().startswith("https://127.0.0.1:"), out
        assert f"export SHARDSET_CONFIG={data / 'shardset.yaml'}" in err, err
        yield LocalCluster.load(data)
    finally:
        subprocess.run(
            [sys.executable, "-m", "shardset", "local", "down", "--data-dir", str(data)],
            env=env, timeout=TIMEOUT, check=False, capture_output=True,
        )  # fmt: skip


def test_put_and_get_with_the_config_local_up_wrote(
    cluster: LocalCluster, env: dict[str, str]
) -> None:
    # The last local cluster, found by itself, with its credentials.
    rc, _, err = shardset("put", "greeting", "hello", env=env)
    assert rc == 0, err
    # Elsewhere: SHARDSET_CONFIG, over HTTPS and over the wire protocol with TLS.
    cfg = {**env, "SHARDSET_CACHE": "/nonexistent", "SHARDSET_CONFIG": str(cluster.config_path)}
    for protocol in ("http", "wire"):
        rc, out, err = shardset("--protocol", protocol, "get", "greeting", env=cfg)
        assert (rc, out) == (0, "hello\n"), err


def test_no_credentials_is_a_missing_token(cluster: LocalCluster, env: dict[str, str]) -> None:
    endpoints = ",".join(cluster.endpoints)
    rc, _, err = shardset(
        "--endpoints", endpoints, "--cacert", str(cluster.pki.ca_file), "get", "k", env=env
    )
    assert rc == 2, err
    assert "the store wants credentials (401" in err and "--token" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_the_wrong_ca_is_named(cluster: LocalCluster, env: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "other"
    rc, _, err = shardset(
        "local", "up", "--nodes", "1", "--shards", "1", "--replication", "1", "--no-fsync",
        "--data-dir", str(other), env={**env, "SHARDSET_CACHE": str(tmp_path / "c")},
    )  # fmt: skip
    try:
        assert rc == 0, err
        wrong_ca = other / "tls" / "ca" / "ca.crt"
        rc, _, err = shardset(
            "--endpoints", cluster.endpoints[0], "--cacert", str(wrong_ca),
            "--token-file", str(cluster.pki.token_file), "get", "k", env=env,
        )  # fmt: skip
        assert rc == 2, err
        assert f"is not signed by the CA in {wrong_ca}" in err, err
    finally:
        LocalCluster.load(other).shutdown(kill=True)


def test_a_read_user_is_forbidden_to_write_and_a_deleted_one_is_refused(
    cluster: LocalCluster, env: dict[str, str]
) -> None:
    token = new_token()
    cluster.on_meta_leader(PutUser(name="reader", role=Role.READ, token_sha256=token_digest(token)))
    base = ["--endpoints", ",".join(cluster.endpoints), "--cacert", str(cluster.pki.ca_file)]
    rc, _, err = _until_ok(lambda: shardset(*base, "--token", token, "get", "k", env=env))
    assert rc in (0, 1) and "401" not in err, err  # read: allowed (k may be missing)
    rc, _, err = shardset(*base, "--token", token, "put", "k", "v", env=env)
    assert rc == 1 and "forbidden (403" in err, err
    assert "kv.write" in err and "role read" in err, err
    cluster.on_meta_leader(DeleteUser(name="reader"))
    rc, _, err = _until(lambda: shardset(*base, "--token", token, "get", "k", env=env), 1)
    assert "refused your token (401" in err, err


def test_wire_protocol_with_a_revoked_token_is_named(
    cluster: LocalCluster, env: dict[str, str]
) -> None:
    token = new_token()
    cluster.on_meta_leader(
        PutUser(name="gone", role=Role.READWRITE, token_sha256=token_digest(token))
    )
    cluster.on_meta_leader(DeleteUser(name="gone"))

    async def go() -> None:
        tls = cluster.client_tls()
        assert tls is not None
        revoked = type(tls)(cafile=tls.cafile, token=token)
        async with Client(cluster.endpoints, tls=revoked, protocol="wire", attempts=3) as c:
            await c.put("k", b"v")

    with pytest.raises(TokenRejected, match="refused your token"):
        asyncio.run(go())


Run = Callable[[], tuple[int, str, str]]


def _until_ok(run: Run) -> tuple[int, str, str]:
    return _until(run, 0, also=(1,))


def _until(run: Run, code: int, also: tuple[int, ...] = ()) -> tuple[int, str, str]:
    """A user change reaches the node in one commit: ask a few times, bounded."""
    for _ in range(20):
        rc, out, err = run()
        if rc == code or rc in also:
            break
        time.sleep(0.2)
    return rc, out, err


def test_insecure_against_a_tls_store_says_what_happened(
    cluster: LocalCluster, env: dict[str, str]
) -> None:
    rc, _, err = shardset("--insecure", "--endpoints", cluster.endpoints[0], "get", "k", env=env)
    assert rc == 1, err
    assert err.count("--insecure:") == 1, err
    assert "a TLS node? use its https:// URL and --cacert" in err, err
