"""`shardset`: the command line for a Shardset store.

It finds the store from `--endpoints`, else `SHARDSET_ENDPOINTS`, else the local
cluster started last with `shardset local up`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from shardset import local
from shardset.client import PROTOCOLS, Client, ShardsetError
from shardset_proto.consistency import MODES


def _endpoints(ns: argparse.Namespace) -> list[str]:
    raw = ns.endpoints or os.environ.get("SHARDSET_ENDPOINTS", "")
    found = [e.strip() for e in raw.split(",") if e.strip()]
    return found or local.last_endpoints()


def _run(ns: argparse.Namespace, action: Callable[[Client], Awaitable[int]]) -> int:
    async def go() -> int:
        protocol = ns.protocol or os.environ.get("SHARDSET_PROTOCOL") or "http"
        async with Client(_endpoints(ns), protocol=protocol) as client:
            return await action(client)

    try:
        return asyncio.run(go())
    except ShardsetError as e:
        print(f"shardset: {e}", file=sys.stderr)
        return 2


def cmd_put(ns: argparse.Namespace) -> int:
    async def act(c: Client) -> int:
        r = await c.put(ns.key, ns.value.encode())
        print(f"OK shard={r.shard} index={r.index} epoch={r.epoch}", file=sys.stderr)
        return 0

    return _run(ns, act)


def cmd_get(ns: argparse.Namespace) -> int:
    async def act(c: Client) -> int:
        r = await c.get(
            ns.key,
            consistency=ns.consistency,
            max_staleness_ms=ns.max_staleness_ms,
            replica=ns.replica,
        )
        served = f"consistency={r.consistency} replica={r.replica} shard={r.shard} index={r.index}"
        if r.staleness_ms is not None:
            served += f" staleness_ms<={r.staleness_ms:g}"
        if ns.verbose or r.value is None:
            print(f"served: {served}", file=sys.stderr)
        if r.value is None:
            print(f"shardset: key {ns.key!r} not found (shard {r.shard})", file=sys.stderr)
            return 1
        sys.stdout.buffer.write(r.value + b"\n")
        return 0

    return _run(ns, act)


def cmd_delete(ns: argparse.Namespace) -> int:
    async def act(c: Client) -> int:
        r = await c.delete(ns.key)
        print(
            f"OK shard={r.shard} index={r.index} existed={r.extra.get('existed')}", file=sys.stderr
        )
        return 0

    return _run(ns, act)


def cmd_scan(ns: argparse.Namespace) -> int:
    async def act(c: Client) -> int:
        for key, value in await c.scan(ns.start, ns.end, ns.limit):
            print(f"{key}\t{value.decode(errors='replace')}")
        return 0

    return _run(ns, act)


def cmd_status(ns: argparse.Namespace) -> int:
    async def act(c: Client) -> int:
        status = await c.status()
        if ns.json:
            print(json.dumps(status, indent=2))
        else:
            print_status(status)
        return 0

    return _run(ns, act)


def print_status(status: dict[str, Any]) -> None:
    print(f"shard map epoch {status['epoch']}")
    print(
        f"{'node':>4} {'group':>5} {'role':<10} {'term':>5} {'leader':>6} "
        f"{'commit':>7} {'applied':>7} lag"
    )
    for node, view in sorted(status["nodes"].items(), key=lambda kv: int(kv[0])):
        if "error" in view:
            print(f"{node:>4} {view['error']}")
            continue
        for group, g in view["groups"].items():
            lag = ",".join(f"{p}:{f['lag']}" for p, f in g.get("followers", {}).items())
            print(
                f"{node:>4} {group:>5} {g['role']:<10} {g['term']:>5} {g['leader']:>6} "
                f"{g['commit']:>7} {g['applied']:>7} {lag}"
            )


def cmd_local_up(ns: argparse.Namespace) -> int:
    try:
        cluster = local.up(ns.data_dir, ns.nodes, ns.shards, ns.replication, no_fsync=ns.no_fsync)
        cluster.balance_leaders()
    except (local.LocalClusterError, TimeoutError) as e:
        print(f"shardset: {e}", file=sys.stderr)
        return 2
    print(",".join(cluster.endpoints))
    return 0


def cmd_local_down(ns: argparse.Namespace) -> int:
    try:
        local.down(ns.data_dir)
    except local.LocalClusterError as e:
        print(f"shardset: {e}", file=sys.stderr)
        return 2
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"want a positive integer, got {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shardset", description=__doc__)
    p.add_argument("--endpoints", help="comma-separated node API URLs")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="client protocol for key-value operations (default: SHARDSET_PROTOCOL, else "
        "http); wire is the binary protocol on the nodes' peer ports",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("put", help="write KEY=VALUE")
    s.add_argument("key")
    s.add_argument("value")
    s.set_defaults(func=cmd_put)
    s = sub.add_parser("get", help="print the value of KEY (exit 1 if missing)")
    s.add_argument("key")
    s.add_argument(
        "--consistency",
        choices=MODES,
        help="read mode (default: the serving node's); see docs/consistency.md",
    )
    s.add_argument(
        "--max-staleness-ms", type=_positive, help="bound for --consistency bounded (ms)"
    )
    s.add_argument("--replica", type=_positive, help="ask this node first (non-leader modes)")
    s.add_argument(
        "-v", "--verbose", action="store_true", help="say which mode and replica served it"
    )
    s.set_defaults(func=cmd_get)
    s = sub.add_parser("delete", help="delete KEY")
    s.add_argument("key")
    s.set_defaults(func=cmd_delete)
    s = sub.add_parser("scan", help="keys in [start, end) in order")
    s.add_argument("--start", default="")
    s.add_argument("--end")
    s.add_argument("--limit", type=int, default=100)
    s.set_defaults(func=cmd_scan)
    s = sub.add_parser("status", help="shards, leaders, terms, lag per node")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    loc = sub.add_parser("local", help="a multi-process cluster on 127.0.0.1")
    lsub = loc.add_subparsers(dest="local_cmd", required=True)
    s = lsub.add_parser("up", help="start (or restart) a local cluster")
    s.add_argument("--nodes", type=int, default=3)
    s.add_argument("--shards", type=int, default=8)
    s.add_argument("--replication", type=int, default=3)
    s.add_argument("--data-dir", type=Path, default=Path("./shardset-data"))
    s.add_argument("--no-fsync", action="store_true", help="tests only")
    s.set_defaults(func=cmd_local_up)
    s = lsub.add_parser("down", help="stop a local cluster (data stays)")
    s.add_argument("--data-dir", type=Path, default=Path("./shardset-data"))
    s.set_defaults(func=cmd_local_down)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    return int(ns.func(ns))


if __name__ == "__main__":
    sys.exit(main())
