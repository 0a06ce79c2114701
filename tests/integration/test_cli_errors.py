"""The `shardset` CLI on bad input and broken surroundings: one line on stderr naming
what is wrong, exit 2 for a usage error and 1 for a runtime one, never a traceback
(issue 15, "CLI"). Each case runs the CLI as a subprocess: the traceback is the point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardset.local import LocalCluster

TIMEOUT = 60.0
NOWHERE = "http://127.0.0.1:9"  # discard port: nothing listens, the connect is refused


def shardset(
    *args: str | bytes,
    stdin: bytes = b"",
    stdout: int | None = subprocess.PIPE,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[int, bytes, str]:
    """`python -m shardset ARGS` (bytes arguments reach it as they are, UTF-8 or not):
    (exit code, stdout, stderr)."""
    full_env = {k: v for k, v in os.environ.items() if k != "SHARDSET_ENDPOINTS"}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "shardset", *args],
        input=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=full_env,
        cwd=cwd,
        timeout=TIMEOUT,
        check=False,
    )
    return proc.returncode, proc.stdout or b"", proc.stderr.decode(errors="replace")


def assert_clean_error(rc: int, err: str, code: int, *words: str) -> None:
    assert rc == code, (rc, err)
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("shardset"), err
    for word in words:
        assert word in last, (word, err)


@pytest.fixture
def cache(tmp_path: Path) -> dict[str, str]:
    """A private "last local cluster" file, so no test touches the user's."""
    return {"SHARDSET_CACHE": str(tmp_path / "cache")}


@pytest.mark.parametrize(
    "args", [["put", b"\xff\xfe", "v"], ["get", b"\xff"], ["delete", b"k\xc3"]]
)
def test_a_key_that_is_not_utf8_is_a_usage_error(args: list[str | bytes]) -> None:
    rc, out, err = shardset("--endpoints", NOWHERE, *args)
    assert_clean_error(rc, err, 2, "not valid UTF-8", r"\xff" if b"\xff" in args[1] else r"\xc3")
    assert out == b""


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--nodes", "0"),
        ("--nodes", "-1"),
        ("--nodes", "100000"),
        ("--shards", "0"),
        ("--shards", "-3"),
        ("--shards", "100000000"),
        ("--replication", "0"),
        ("--replication", "-1"),
        ("--replication", "99"),
    ],
)
def test_local_up_with_an_impossible_shape_is_a_usage_error(
    tmp_path: Path, cache: dict[str, str], flag: str, value: str
) -> None:
    data = tmp_path / "data"
    rc, _, err = shardset("local", "up", "--data-dir", str(data), flag, value, env=cache)
    assert_clean_error(rc, err, 2, flag, repr(value))
    assert not data.exists()  # nothing was started or written


def test_local_up_with_more_replicas_than_nodes_is_a_usage_error(
    tmp_path: Path, cache: dict[str, str]
) -> None:
    data = tmp_path / "data"
    rc, _, err = shardset(
        "local", "up", "--data-dir", str(data), "--nodes", "2", "--replication", "3", env=cache
    )
    assert_clean_error(rc, err, 2, "--replication 3", "got 2")
    assert not data.exists()


def test_local_up_on_a_data_dir_that_is_a_file(tmp_path: Path, cache: dict[str, str]) -> None:
    data = tmp_path / "a-file"
    data.write_text("not a directory")
    rc, _, err = shardset("local", "up", "--data-dir", str(data), env=cache)
    assert_clean_error(rc, err, 1, str(data), "not a directory")


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A directory nothing may write to: a read-only tmpfs as root (root ignores the
    mode bits), else a directory with mode 0555."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"root, but cannot mount a read-only tmpfs: {mounted.stderr!r}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_local_up_on_an_unwritable_data_dir(unwritable: Path, cache: dict[str, str]) -> None:
    for data in (unwritable, unwritable / "sub"):
        rc, _, err = shardset("local", "up", "--data-dir", str(data), env=cache)
        assert_clean_error(rc, err, 1, "cannot write to data dir", str(data))


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"nodes": 3, "no_fsync": false}', b"", b'{"nodes": [{"id": "x"}]}'],
)
def test_a_corrupt_cluster_json_is_named(
    tmp_path: Path, cache: dict[str, str], content: bytes
) -> None:
    (tmp_path / "cluster.json").write_bytes(content)
    for cmd in ("up", "down"):
        rc, _, err = shardset("local", cmd, "--data-dir", str(tmp_path), env=cache)
        assert_clean_error(rc, err, 1, str(tmp_path / "cluster.json"), "corrupt")


def test_no_node_answers_names_the_cause_not_the_exception_class() -> None:
    rc, out, err = shardset("--endpoints", NOWHERE, "get", "k")
    assert_clean_error(rc, err, 1, f"cannot reach node at {NOWHERE}: connection refused")
    assert "ClientConnectorError" not in err and out == b""


def test_put_value_sources(tmp_path: Path) -> None:
    """A put needs one value source; a missing file and an oversized value are named."""
    rc, _, err = shardset("--endpoints", NOWHERE, "put", "k")
    assert_clean_error(rc, err, 2, "VALUE", "--value-file")
    path = tmp_path / "v"
    path.write_bytes(b"x")
    rc, _, err = shardset("--endpoints", NOWHERE, "put", "k", "v", "--value-file", str(path))
    assert_clean_error(rc, err, 2, "one of them")
    rc, _, err = shardset("--endpoints", NOWHERE, "put", "k", "--value-file", str(tmp_path / "no"))
    assert_clean_error(rc, err, 1, str(tmp_path / "no"))
    big = b"x" * ((1 << 20) + 1)
    rc, _, err = shardset("--endpoints", NOWHERE, "put", "k", "-", stdin=big)
    assert_clean_error(rc, err, 2, "limit of 1048576 bytes")


def test_state_file_written_by_save_loads_back(tmp_path: Path) -> None:
    """cluster.json is now checked when read: what save() writes must pass."""
    raw = {
        "nodes": [{"id": 1, "peer_port": 7001, "api_port": 7101, "pid": 0}],
        "no_fsync": True,
    }
    (tmp_path / "cluster.json").write_text(json.dumps(raw))
    cluster = LocalCluster.load(tmp_path)
    cluster.save()
    assert LocalCluster.load(tmp_path).nodes == cluster.nodes


def test_a_node_stopped_by_a_corrupt_log_is_named_with_the_way_out(tmp_path: Path) -> None:
    """What `local up` says of a node that exited with a `storage_corrupt` event."""
    raw = {
        "nodes": [{"id": n, "peer_port": 7000 + n, "api_port": 7100 + n} for n in (1, 2)],
        "no_fsync": True,
    }
    (tmp_path / "cluster.json").write_text(json.dumps(raw))
    event = {"event": "storage_corrupt", "file": "/d/raft/wal/wal-1.log", "offset": 4096}
    (tmp_path / "node-2.log").write_text(f"starting\n{json.dumps(event)}\n")
    cluster = LocalCluster.load(tmp_path)
    hint = cluster.stopped_because(2)
    assert "/d/raft/wal/wal-1.log, offset 4096" in hint, hint
    assert "shardset local rebuild-node 2" in hint, hint
    assert cluster.stopped_because(1) == ""  # no log, nothing known


@pytest.mark.parametrize(
    "endpoint", ["notaurl", "http://[::1", "http://127.0.0.1:99999", "ftp://x", b"http://\xff"]
)
def test_a_bad_endpoint_is_a_usage_error(endpoint: str | bytes) -> None:
    rc, _, err = shardset("--endpoints", endpoint, "get", "k")
    assert_clean_error(rc, err, 2, "not a node API URL")
    rc, _, err = shardset("get", "k", env={"SHARDSET_ENDPOINTS": os.fsdecode(endpoint)})
    assert_clean_error(rc, err, 2, "SHARDSET_ENDPOINTS", "not a node API URL")


def test_configuration_errors_are_usage_errors(cache: dict[str, str]) -> None:
    rc, _, err = shardset("get", "k", env=cache)  # no endpoints anywhere
    assert_clean_error(rc, err, 2, "no endpoints")
    env = {**cache, "SHARDSET_PROTOCOL": "bogus"}
    rc, _, err = shardset("--endpoints", NOWHERE, "get", "k", env=env)
    assert_clean_error(rc, err, 2, "SHARDSET_PROTOCOL", "'bogus'")
