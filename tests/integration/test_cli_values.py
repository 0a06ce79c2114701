"""The `shardset` CLI against a real 3-node cluster: values over the argv limit and
binary values in and out (stdin, --value-file, --raw, -o), output into a closed pipe,
and `get --replica` naming the node that answered (issue 15, "CLI")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from test_cli_errors import assert_clean_error, shardset

BINARY = bytes(range(256)) * 3 + b"\x00\xff\n\r\x1b[2J"
LARGE = os.urandom(300 * 1024)  # over the 128 KiB a single argv string may hold


def test_values_in_and_out_byte_for_byte(cluster_factory: Any, tmp_path: Path) -> None:
    cluster = cluster_factory()
    ep = ("--endpoints", ",".join(cluster.endpoints))

    rc, _, err = shardset(*ep, "put", "bin", "-", stdin=BINARY)
    assert rc == 0 and err.startswith("OK shard="), err
    rc, out, err = shardset(*ep, "get", "bin", "--raw")
    assert (rc, out) == (0, BINARY), err

    path = tmp_path / "large"
    path.write_bytes(LARGE)
    rc, _, err = shardset(*ep, "put", "large", "--value-file", str(path))
    assert rc == 0, err
    rc, _, err = shardset(*ep, "get", "large", "-o", str(tmp_path / "back"))
    assert rc == 0, err
    assert (tmp_path / "back").read_bytes() == LARGE

    # A value given in argv is taken as its bytes, UTF-8 or not.
    rc, _, err = shardset(*ep, "put", "argv", b"caf\xe9")
    assert rc == 0, err
    rc, out, err = shardset(*ep, "get", "argv", "--raw")
    assert (rc, out) == (0, b"caf\xe9"), err

    # scan lists binary values escaped, one line each.
    rc, out, err = shardset(*ep, "scan", "--start", "argv", "--end", "argw")
    assert (rc, out) == (0, b"argv\tcaf\\xe9\n"), err


def test_output_into_a_closed_pipe_is_quiet(cluster_factory: Any) -> None:
    """`shardset get k | head -c0`: the reader is gone before the value is written."""
    cluster = cluster_factory()
    ep = ("--endpoints", ",".join(cluster.endpoints))
    assert shardset(*ep, "put", "k", "v" * 100_000)[0] == 0
    for args in (("get", "k"), ("scan",), ("status",)):
        r, w = os.pipe()
        os.close(r)
        try:
            rc, _, err = shardset(*ep, *args, stdout=w)
        finally:
            os.close(w)
        assert rc == 1 and "Traceback" not in err and "Exception ignored" not in err, err


def test_get_replica_names_the_node_that_answered(cluster_factory: Any) -> None:
    cluster = cluster_factory()
    ep = ("--endpoints", ",".join(cluster.endpoints))
    assert shardset(*ep, "put", "k", "v")[0] == 0

    rc, out, err = shardset(*ep, "get", "k", "--consistency", "eventual", "--replica", "99")
    assert_clean_error(rc, err, 2, "replica 99", "nodes 1, 2, 3")
    assert out == b""

    # An eventual read any replica may serve: the one asked serves it, no remark.
    rc, out, err = shardset(*ep, "get", "k", "--consistency", "eventual", "--replica", "2", "-v")
    assert (rc, out) == (0, b"v\n") and "replica=2" in err and "answered by" not in err, err

    # A linearizable read asked of a follower is the leader's: the CLI says so.
    cluster.stop_node(2)
    answered = []
    for replica in ("1", "3"):
        rc, out, err = shardset(
            *ep, "get", "k", "--consistency", "linearizable", "--replica", replica
        )
        assert (rc, out) == (0, b"v\n"), err
        answered.append("answered by node" in err)
    assert answered.count(True) == 1, answered  # exactly the one that is not the leader


def test_binary_value_to_a_terminal_is_refused(cluster_factory: Any) -> None:
    """Without --raw, bytes that are not printable text never reach a terminal."""
    cluster = cluster_factory()
    ep = ("--endpoints", ",".join(cluster.endpoints))
    assert shardset(*ep, "put", "esc", "-", stdin=b"\x1b]0;owned\x07")[0] == 0
    main, sub = os.openpty()
    try:
        rc, _, err = shardset(*ep, "get", "esc", stdout=sub)
        os.close(sub)
        assert_clean_error(rc, err, 2, "not printable text", "--raw")
        os.set_blocking(main, False)
        try:
            shown = os.read(main, 1024)
        except (BlockingIOError, OSError):
            shown = b""
        assert b"\x1b" not in shown, shown
    finally:
        os.close(main)
