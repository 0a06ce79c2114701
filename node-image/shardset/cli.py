"""`shardset`: the command line for a Shardset store.

Each connection setting (endpoints, CA, client certificate and key, token) comes from
its flag, else its environment variable (SHARDSET_ENDPOINTS, SHARDSET_CACERT,
SHARDSET_CERT, SHARDSET_KEY, SHARDSET_TOKEN, SHARDSET_TOKEN_FILE), else the config file
(--config, else SHARDSET_CONFIG, else ~/.config/shardset/config.yaml), else, when
nothing names endpoints, the local cluster started last with `shardset local up` and
the config file it wrote. --insecure speaks plain HTTP and TCP (no TLS, no auth).

Exit codes: 0 done, 1 a runtime failure (no node answers, a key not found, a token
refused, forbidden), 2 a usage error (a bad argument, a value over the limit, a CA that
does not sign the node's certificate, an expired client certificate, a wrong host name,
no credentials). Errors are one line on stderr, never a traceback (`SHARDSET_DEBUG=1`
shows the traceback of an unexpected one).
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

import aiohttp

from shardset import clientconfig, local
from shardset.cliargs import (
    UsageError,
    bounded,
    key_arg,
    optional_key_arg,
    positive,
    read_value,
    safe_text,
    write_value,
)
from shardset.client import PROTOCOLS, Client, ShardsetError
from shardset.localpki import CLI_USER
from shardset.neterrors import describe
from shardset.tlserrors import TlsError
from shardset_proto.consistency import LEADER_MODES, MODES


def _settings(ns: argparse.Namespace) -> clientconfig.Settings:
    """Endpoints and credentials: flag > environment > config file > the last local
    cluster (shardset.clientconfig)."""
    last = local.last_cluster()
    if ns.insecure:
        print(f"shardset: {clientconfig.INSECURE_SAYS}", file=sys.stderr)
    return clientconfig.resolve(
        vars(ns),
        os.environ,
        config=ns.config,
        insecure=ns.insecure,
        local_config=last.config_path if last is not None else None,
        local_endpoints=last.endpoints if last is not None else None,
    )


def _protocol(ns: argparse.Namespace) -> str:
    protocol = ns.protocol or os.environ.get("SHARDSET_PROTOCOL") or "http"
    if protocol not in PROTOCOLS:
        raise UsageError(f"SHARDSET_PROTOCOL must be one of {', '.join(PROTOCOLS)}: {protocol!r}")
    return protocol


def _run(ns: argparse.Namespace, action: Callable[[Client], Awaitable[int]]) -> int:
    settings, protocol = _settings(ns), _protocol(ns)

    async def go() -> int:
        async with Client(settings.endpoints, protocol=protocol, tls=settings.tls) as client:
            return await action(client)

    return asyncio.run(go())


def cmd_put(ns: argparse.Namespace) -> int:
    value = read_value(ns.value, ns.value_file)

    async def act(c: Client) -> int:
        r = await c.put(ns.key, value)
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
        if ns.replica is not None and r.replica != ns.replica:
            print(f"shardset: {_other_node(ns.replica, r.replica, r.consistency)}", file=sys.stderr)
        if r.value is None:
            print(f"shardset: key {ns.key!r} not found (shard {r.shard})", file=sys.stderr)
            return 1
        write_value(r.value, raw=ns.raw, output=ns.output)
        return 0

    return _run(ns, act)


def _other_node(asked: int, served: int, consistency: str) -> str:
    why = (
        f"{consistency} reads are served by the shard's leader"
        if consistency in LEADER_MODES
        else "it did not serve the read itself"
    )
    return f"answered by node {served}, not by replica {asked} as asked ({why})"


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
            print(f"{safe_text(key.encode())}\t{safe_text(value)}")
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
        disk = view.get("disk") or {}
        if disk.get("full") or disk.get("stalled"):
            state = "stalled" if disk.get("stalled") else "full"
            print(f"{node:>4} disk {state}, writes refused: {disk.get('reason')}")
        for group, g in view["groups"].items():
            lag = ",".join(f"{p}:{f['lag']}" for p, f in g.get("followers", {}).items())
            print(
                f"{node:>4} {group:>5} {g['role']:<10} {g['term']:>5} {g['leader']:>6} "
                f"{g['commit']:>7} {g['applied']:>7} {lag}{_group_notes(g)}"
            )


def _group_notes(g: dict[str, Any]) -> str:
    """Issue 15's marks on a replica, which otherwise show only in the JSON and logs."""
    notes = []
    if g.get("recovering"):
        notes.append(f"recovering (no vote until commit {g['recovering']})")
    if g.get("corrupt"):
        notes.append(f"corrupt: {g['corrupt']}")
    return "".join(f" [{n}]" for n in notes)


def cmd_local_up(ns: argparse.Namespace) -> int:
    if ns.replication > ns.nodes:
        raise UsageError(f"--replication {ns.replication} needs as many --nodes, got {ns.nodes}")
    insecure = ns.insecure or ns.insecure_local
    if insecure:
        print(f"shardset: {LOCAL_INSECURE_SAYS}", file=sys.stderr)
    cluster = local.up(
        ns.data_dir, ns.nodes, ns.shards, ns.replication, no_fsync=ns.no_fsync, tls=not insecure
    )
    if cluster.rejoining:
        _say_rejoining(cluster)  # leaders cannot go to nodes that host nothing yet
    else:
        cluster.balance_leaders()
    print(",".join(cluster.endpoints))
    if cluster.tls:
        print(
            f"shardset: TLS on (store {cluster.store}); this machine's shardset commands "
            f"find this cluster and its credentials (user {CLI_USER}) by themselves; "
            f"elsewhere: export SHARDSET_CONFIG={cluster.config_path}",
            file=sys.stderr,
        )
    return 0


LOCAL_INSECURE_SAYS = (
    "--insecure: a new cluster without TLS: plain HTTP and TCP on every port, peers "
    "not authenticated, no client authentication, the admin API on the client port "
    "(a restarted cluster keeps the mode it was created with)"
)


def _say_rejoining(cluster: local.LocalCluster) -> None:
    for node in cluster.rejoining:
        print(
            f"shardset: node {node} started without its Raft log ({cluster.node_dir(node)} "
            "was empty or missing): it rejoined empty and votes in no group; run "
            f"`shardset local rebuild-node {node}` to give its replicas back",
            file=sys.stderr,
        )


def cmd_local_down(ns: argparse.Namespace) -> int:
    local.down(ns.data_dir)
    return 0


def cmd_local_rebuild_node(ns: argparse.Namespace) -> int:
    from shardset import rebuild  # aiohttp and the admin bodies: only for this command

    def say(text: str) -> None:
        print(f"shardset: {text}", file=sys.stderr)

    cluster = local.LocalCluster.load(ns.data_dir.resolve())
    moved = rebuild.rebuild_node(cluster, ns.node, timeout=ns.timeout, say=say)
    say(
        f"node {ns.node} rebuilt: it holds its replicas again"
        + (f"; old data in {moved}" if moved else "")
    )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shardset", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    clientconfig.add_flags(p)
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="client protocol for key-value operations (default: SHARDSET_PROTOCOL, else "
        "http); wire is the binary protocol on the nodes' peer ports",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    _put_parser(sub)
    _get_parser(sub)
    s = sub.add_parser("delete", help="delete KEY")
    s.add_argument("key", type=key_arg)
    s.set_defaults(func=cmd_delete)
    s = sub.add_parser("scan", help="keys in [start, end) in order (values shown escaped)")
    s.add_argument("--start", type=optional_key_arg, default="")
    s.add_argument("--end", type=key_arg)
    s.add_argument("--limit", type=positive, default=100)
    s.set_defaults(func=cmd_scan)
    s = sub.add_parser("status", help="shards, leaders, terms, lag per node")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    _local_parser(sub)
    return p


Subparsers = Any  # argparse's _SubParsersAction is private


def _put_parser(sub: Subparsers) -> None:
    s = sub.add_parser(
        "put",
        help="write KEY=VALUE",
        description="Write VALUE under KEY. VALUE is taken byte for byte; `-` reads it "
        "from stdin, --value-file from a file (for values over the argv limit or binary).",
    )
    s.add_argument("key", type=key_arg)
    s.add_argument("value", nargs="?", help="the value; - reads stdin")
    s.add_argument(
        "--value-file", "--file", type=Path, metavar="PATH", help="read the value from PATH"
    )
    s.set_defaults(func=cmd_put)


def _get_parser(sub: Subparsers) -> None:
    s = sub.add_parser("get", help="print the value of KEY (exit 1 if missing)")
    s.add_argument("key", type=key_arg)
    s.add_argument(
        "--consistency",
        choices=MODES,
        help="read mode (default: the serving node's); see docs/consistency.md",
    )
    s.add_argument("--max-staleness-ms", type=positive, help="bound for --consistency bounded (ms)")
    s.add_argument("--replica", type=positive, help="ask this node first (non-leader modes)")
    s.add_argument(
        "-v", "--verbose", action="store_true", help="say which mode and replica served it"
    )
    out = s.add_mutually_exclusive_group()
    out.add_argument(
        "--raw",
        action="store_true",
        help="write the value's bytes as they are, with no newline (binary values)",
    )
    out.add_argument("-o", "--output", type=Path, metavar="PATH", help="write the value to PATH")
    s.set_defaults(func=cmd_get)


def _local_parser(sub: Subparsers) -> None:
    loc = sub.add_parser("local", help="a multi-process cluster on 127.0.0.1")
    lsub = loc.add_subparsers(dest="local_cmd", required=True)
    s = lsub.add_parser("up", help="start (or restart) a local cluster")
    s.add_argument("--nodes", type=bounded(local.MAX_NODES), default=3)
    s.add_argument("--shards", type=bounded(local.MAX_SHARDS), default=8)
    s.add_argument("--replication", type=bounded(local.MAX_REPLICATION), default=3)
    s.add_argument("--data-dir", type=Path, default=Path("./shardset-data"))
    s.add_argument("--no-fsync", action="store_true", help="tests only")
    s.add_argument(
        "--insecure",
        dest="insecure_local",
        action="store_true",
        help="a new cluster without TLS or authentication (default: TLS, a local CA, "
        "user local-admin and a CLI config file in --data-dir)",
    )
    s.set_defaults(func=cmd_local_up)
    s = lsub.add_parser("down", help="stop a local cluster (data stays)")
    s.add_argument("--data-dir", type=Path, default=Path("./shardset-data"))
    s.set_defaults(func=cmd_local_down)
    s = lsub.add_parser(
        "rebuild-node",
        help="rebuild node N empty from its peers (e.g. its Raft log is corrupt)",
        description="Stop node N, move its data directory aside, remove it from every "
        "group, start it empty (it rejoins, never as a voter with a cut log) and add its "
        "replicas back as learners that catch up from their leaders, then promote them.",
    )
    s.add_argument("node", type=positive)
    s.add_argument("--data-dir", type=Path, default=Path("./shardset-data"))
    s.add_argument("--timeout", type=positive, default=300, help="seconds (default 300)")
    s.set_defaults(func=cmd_local_rebuild_node)


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    try:
        code = int(ns.func(ns))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return code
    except BaseException as e:  # the one place errors become exit codes
        return fail(e)


def fail(error: BaseException) -> int:
    """One line on stderr and an exit code for any error; a traceback never."""
    if isinstance(error, BrokenPipeError):
        # The reader went away (`| head`): say nothing, like any Unix tool, and keep
        # the interpreter from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if isinstance(error, KeyboardInterrupt):
        return 130
    if isinstance(error, SystemExit):
        raise error
    if os.environ.get("SHARDSET_DEBUG"):
        raise error
    code, message = _classify(error)
    print(f"shardset: {message}", file=sys.stderr)
    return code


def _classify(error: BaseException) -> tuple[int, str]:
    """(exit code, message): 2 for what the user asked wrong, 1 for what went wrong."""
    if isinstance(error, UsageError):
        return 2, str(error)
    if isinstance(error, TlsError):
        return error.exit_code, str(error)
    if isinstance(error, ShardsetError):
        return (2 if error.status in (400, 413) else 1), str(error)
    if isinstance(error, local.LocalClusterError):
        return 1, str(error)
    if isinstance(error, aiohttp.ClientError | TimeoutError):
        return 1, describe(error)
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        return 1, f"{error.strerror or error}{where}"
    return 1, f"unexpected {error.__class__.__name__}: {error} (SHARDSET_DEBUG=1 for details)"


if __name__ == "__main__":
    sys.exit(main())
