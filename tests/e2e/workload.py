"""A client workload run inside the cluster, in a pod of the node image.

It talks to a ShardSet only through its client Service (the one endpoint a user
is given), with the `shardset.client.Client` library, and prints what it saw as
JSON on stdout, behind a marker line, for the test to read with `kubectl logs`:

    workload: N concurrent clients doing bounded put/get/cas on a few keys; the
              history (invoke/complete times from one monotonic clock) is then
              checked for linearizability on the host (shardset_sim.linearizability).
    read:     one write and one read of a key, reporting the consistency mode that
              served the read (with no mode asked for, the store's default).

This file is copied into a ConfigMap by tests/e2e/test_operator_e2e.py; it
needs only the node image's packages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from typing import Any

import aiohttp

from shardset.client import Client, ShardsetError

MARKER = "SHARDSET-E2E-RESULT "


async def one(
    client: Client, cid: int, kind: str, key: str, value: str, expected: str | None, timeout: float
) -> tuple[dict[str, Any], bool]:
    """One operation, as a history entry (the fields of shardset_sim's Op) and whether it
    was answered. An unanswered write is recorded as indeterminate (complete None); an
    unanswered read constrains nothing, and is recorded the same way."""
    op: dict[str, Any] = {"client": cid, "kind": kind, "key": key, "invoke": time.monotonic()}
    if kind in ("put", "cas"):
        op["value"] = value
    if kind == "cas":
        op["expected"] = expected
    try:
        if kind == "put":
            await asyncio.wait_for(client.put(key, value.encode()), timeout)
        elif kind == "get":
            r = await asyncio.wait_for(client.get(key), timeout)
            op["result"] = None if r.value is None else r.value.decode()
            op["consistency"] = r.consistency
        else:
            exp = None if expected is None else expected.encode()
            w = await asyncio.wait_for(client.cas(key, exp, value.encode()), timeout)
            op["result"] = bool(w.extra["ok"])
    except (ShardsetError, TimeoutError, aiohttp.ClientError, OSError) as e:
        op["complete"] = None
        op["error"] = f"{e.__class__.__name__}: {e}"[:200]
        return op, False
    op["complete"] = time.monotonic()
    return op, True


def make_client(ns: argparse.Namespace, attempts: int) -> Client:
    """A client of the store; with --creds, authenticated by the ShardSetUser's Secret
    mounted there (its CA, and its token or its certificate)."""
    if not ns.creds:
        return Client([ns.endpoint], timeout=ns.timeout, attempts=attempts)
    from pathlib import Path

    from shardset.clienttls import ClientTls  # TLS stores only (issue 16)

    creds = Path(ns.creds)
    by_cert = ns.auth == "cert"
    tls = ClientTls(
        cafile=creds / "ca.crt",
        cert=creds / "tls.crt" if by_cert else None,
        key=creds / "tls.key" if by_cert else None,
        token=None if by_cert else (creds / "token").read_text().strip(),
    )
    return Client([ns.endpoint], timeout=ns.timeout, attempts=attempts, tls=tls)


async def client_loop(ns: argparse.Namespace, cid: int, history: list[dict[str, Any]]) -> None:
    rng = random.Random(ns.seed * 1000 + cid)
    keys = [f"{ns.prefix}-{i}" for i in range(ns.keys)]
    seen: dict[str, str | None] = {}
    client = make_client(ns, attempts=12)
    stop_at = time.monotonic() + ns.seconds if ns.seconds else None
    try:
        for n in range(ns.ops):
            if stop_at is not None and time.monotonic() > stop_at:
                break
            key = rng.choice(keys)
            roll = rng.random()
            kind = "put" if roll < 0.4 else "get" if roll < 0.75 else "cas"
            value = f"c{cid}-{n}-{uuid.uuid4().hex[:6]}"
            op, answered = await one(client, cid, kind, key, value, seen.get(key), ns.timeout)
            history.append(op)
            if answered and kind == "get":
                seen[key] = op["result"]
            elif answered and (kind == "put" or op.get("result") is True):
                seen[key] = value
            elif not answered:  # start afresh: forget cached routes and leaders
                await client.close()
                client = make_client(ns, attempts=12)
            await asyncio.sleep(0.005 * rng.uniform(0.5, 1.5))
    finally:
        await client.close()


async def workload(ns: argparse.Namespace) -> dict[str, Any]:
    history: list[dict[str, Any]] = []
    start = time.monotonic()
    await asyncio.gather(*(client_loop(ns, cid, history) for cid in range(ns.clients)))
    if ns.final_reads:
        # One more read of every key once the clients are done: a lost acknowledged
        # write shows up as a read the checker cannot explain.
        client = make_client(ns, attempts=30)
        try:
            for i in range(ns.keys):
                op, _ = await one(client, ns.clients, "get", f"{ns.prefix}-{i}", "", None, 30.0)
                history.append(op)
        finally:
            await client.close()
    return {"history": history, "seconds": time.monotonic() - start}


async def read(ns: argparse.Namespace) -> dict[str, Any]:
    async with make_client(ns, attempts=20) as client:
        value = uuid.uuid4().hex
        await client.put(ns.key, value.encode())
        r = await client.get(ns.key)
        return {
            "key": ns.key,
            "wrote": value,
            "read": None if r.value is None else r.value.decode(),
            "consistency": r.consistency,
            "replica": r.replica,
            "shard": r.shard,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True, help="the client Service, e.g. http://demo:8000")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per operation")
    p.add_argument("--creds", default="", help="a mounted ShardSetUser Secret (TLS stores)")
    p.add_argument("--auth", choices=("token", "cert"), default="token", help="with --creds")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("workload")
    w.add_argument("--clients", type=int, default=4)
    w.add_argument("--ops", type=int, default=60, help="operations per client")
    w.add_argument("--keys", type=int, default=6)
    w.add_argument("--prefix", default="e2e")
    w.add_argument("--seed", type=int, default=1)
    w.add_argument("--seconds", type=float, default=0, help="stop after this long (0: no limit)")
    w.add_argument("--final-reads", action="store_true", help="read every key at the end")
    r = sub.add_parser("read")
    r.add_argument("--key", required=True)
    ns = p.parse_args(argv)
    result = asyncio.run(workload(ns) if ns.cmd == "workload" else read(ns))
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
