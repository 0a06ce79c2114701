"""The node's TLS command line (issue 16): what it refuses at start, naming why (a TLS
directory of another store or node, a missing --store, --admin without TLS), what it
warns about (insecure mode, a map entry that does not advertise the ports it serves),
and a real process refusing to start with another node's certificate."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardset_node.main import address_warnings, load_tls, parse
from shardset_proto import pki
from shardset_proto.identity import Identity
from shardset_proto.shardmap import NodeAddress, bootstrap_map
from shardset_proto.tlsfiles import TlsFiles

STORE = "ns.store"
NOW = dt.datetime.now(dt.UTC)
ROOT = Path(__file__).resolve().parents[2]
BASE = ["--id", "2", "--data-dir", "d", "--peer", "127.0.0.1:1", "--api", "127.0.0.1:2",
        "--bootstrap", "b.json"]  # fmt: skip


def tls_dir(path: Path, node: int, store: str = STORE) -> Path:
    ca = pki.issue_ca(STORE, NOW)
    pair = pki.issue_leaf(ca, Identity.node(store, node), NOW)
    TlsFiles(path).write(ca.cert_pem, pair.cert_pem, pair.key_pem)
    return path


def test_tls_flags_load_the_node_material(tmp_path: Path) -> None:
    d = tls_dir(tmp_path, 2)
    ns = parse([*BASE, "--tls-dir", str(d), "--store", STORE, "--tls-reload-s", "2",
                "--admin", "127.0.0.1:3", "--wire", "127.0.0.1:4"])  # fmt: skip
    tls = load_tls(ns, 2)
    assert tls is not None and tls.identity.uri == "shardset://ns.store/node/2"
    assert tls.reload_interval == 2.0
    assert (ns.admin, ns.wire) == (("127.0.0.1", 3), ("127.0.0.1", 4))


def test_without_tls_dir_the_node_is_insecure(tmp_path: Path) -> None:
    assert load_tls(parse(BASE), 2) is None


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--admin", "127.0.0.1:3"], "--admin needs --tls-dir"),
        (["--tls-dir", "{dir}"], "--store KEY is required with --tls-dir"),
        (["--tls-dir", "{dir}", "--store", "other.store"], "issued for store ns.store"),
        (["--tls-dir", "{dir}", "--store", STORE, "--tls-reload-s", "0"], "must be positive"),
    ],
)
def test_bad_tls_flags_are_refused_naming_why(tmp_path: Path, extra: list[str], words: str) -> None:
    d = tls_dir(tmp_path, 2)
    ns = parse(BASE + [e.format(dir=d) for e in extra])
    with pytest.raises(SystemExit) as err:
        load_tls(ns, 2)
    assert words in str(err.value)


def test_a_map_entry_that_does_not_advertise_the_served_ports_is_named() -> None:
    ns = parse([*BASE, "--admin", "0.0.0.0:8001", "--wire", "0.0.0.0:7001"])
    good = NodeAddress("h:7000", "https://h:8000", "https://h:8001", "h:7001")
    assert address_warnings(ns, True, good) == []
    plain = NodeAddress("h:7000", "http://h:8000")
    problems = address_warnings(ns, True, plain)
    assert len(problems) == 3
    assert "not https://" in problems[0] and "--admin" in problems[1] and "--wire" in problems[2]


def test_a_node_refuses_to_start_with_another_nodes_certificate(tmp_path: Path) -> None:
    d = tls_dir(tmp_path / "tls", node=3)  # node 3's certificate, for node 2
    boot = bootstrap_map({2: NodeAddress("127.0.0.1:1", "https://127.0.0.1:2")}, 1, 1)
    (tmp_path / "b.json").write_bytes(boot.encode())
    args = [
        sys.executable, "-m", "shardset_node", "--id", "2", "--data-dir", str(tmp_path / "data"),
        "--peer", "127.0.0.1:0", "--api", "127.0.0.1:0", "--bootstrap", str(tmp_path / "b.json"),
        "--tls-dir", str(d), "--store", STORE,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT / "node-image"))
    done = subprocess.run(args, capture_output=True, env=env, timeout=60, check=False)
    assert done.returncode != 0
    err = done.stderr.decode()
    assert "names shardset://ns.store/node/3, but this node is shardset://ns.store/node/2" in err
    assert "Traceback" not in err
    assert not (tmp_path / "data").exists()  # refused before touching any data
