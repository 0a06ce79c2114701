"""The `shardset` CLI against a real 3-node cluster, found through `--endpoints` (and
`SHARDSET_ENDPOINTS`), while a concurrent workload runs; the CLI's own operations join
the checked history."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from clusterkit import Workload, check_end_state, layout, log, stable_leaders

from shardset.local import LocalCluster
from shardset_sim.linearizability import Op

CLI_TIMEOUT = 60.0
CLI_CLIENT = 700  # client id of the CLI's operations in the history


async def shardset(
    cluster: LocalCluster | None, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str, float, float]:
    """Run `python -m shardset [--endpoints ...] ARGS`: (exit code, stdout, stderr,
    invoke, complete)."""
    cmd = [sys.executable, "-m", "shardset"]
    if cluster is not None:
        cmd += ["--endpoints", ",".join(cluster.endpoints)]
    full_env = {k: v for k, v in os.environ.items() if k != "SHARDSET_ENDPOINTS"}
    full_env.update(env or {})
    invoke = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(
            f"shardset {' '.join(args)} did not finish in {CLI_TIMEOUT}s"
        ) from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), invoke, time.monotonic()


def test_cli_put_get_delete_status(cluster_factory: Any) -> None:
    cluster = cluster_factory()
    value = "hello, wörld ✓"

    async def scenario() -> None:
        lay = await layout(cluster)
        wl = Workload(cluster.endpoints, lay.keys("key", per_shard=2), clients=2)
        await stable_leaders(cluster, lay.shards)
        wl.start()
        history = wl.history
        key = "cli-key"

        rc, out, err, t0, t1 = await shardset(cluster, "put", key, value)
        assert rc == 0, err
        assert out == "" and err.startswith("OK shard="), (out, err)
        history.append(Op(CLI_CLIENT, "put", key, value, invoke=t0, complete=t1))

        rc, out, err, t0, t1 = await shardset(cluster, "get", key)
        assert (rc, out) == (0, value + "\n"), (rc, out, err)
        history.append(Op(CLI_CLIENT, "get", key, invoke=t0, complete=t1, result=value))

        # The same, finding the cluster through the environment.
        env = {"SHARDSET_ENDPOINTS": ",".join(reversed(cluster.endpoints))}
        rc, out, err, t0, t1 = await shardset(None, "get", key, env=env)
        assert (rc, out) == (0, value + "\n"), (rc, out, err)
        history.append(Op(CLI_CLIENT + 1, "get", key, invoke=t0, complete=t1, result=value))

        # The binary wire protocol, chosen by flag, then by the environment.
        rc, out, err, t0, t1 = await shardset(cluster, "--protocol", "wire", "put", key, value)
        assert rc == 0 and err.startswith("OK shard="), (rc, out, err)
        history.append(Op(CLI_CLIENT, "put", key, value, invoke=t0, complete=t1))
        rc, out, err, t0, t1 = await shardset(
            cluster, "get", key, env={"SHARDSET_PROTOCOL": "wire"}
        )
        assert (rc, out) == (0, value + "\n"), (rc, out, err)
        history.append(Op(CLI_CLIENT, "get", key, invoke=t0, complete=t1, result=value))
        rc, out, err, *_ = await shardset(cluster, "--protocol", "carrier-pigeon", "get", key)
        assert rc == 2 and "invalid choice: 'carrier-pigeon'" in err, (rc, out, err)

        rc, out, err, t0, t1 = await shardset(cluster, "delete", key)
        assert rc == 0 and "existed=True" in err, (rc, out, err)
        history.append(Op(CLI_CLIENT, "delete", key, invoke=t0, complete=t1))

        rc, out, err, t0, t1 = await shardset(cluster, "get", key)
        assert rc == 1 and out == "", (rc, out, err)
        assert "not found" in err and key in err, err
        history.append(Op(CLI_CLIENT, "get", key, invoke=t0, complete=t1, result=None))

        rc, out, err, *_ = await shardset(cluster, "get", "never-written")
        assert rc == 1 and out == "" and "not found" in err, (rc, out, err)

        # status: every node answers, every shard has one leader all nodes agree on.
        rc, out, err, *_ = await shardset(cluster, "status")
        assert rc == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("shard map epoch "), out
        rows = [line.split() for line in lines[2:]]
        for shard in lay.shards:
            mine = [r for r in rows if r[1] == str(shard)]
            assert len(mine) == 3, f"shard {shard}: {mine}\n{out}"
            assert sum(r[2] == "leader" for r in mine) == 1, out
            assert len({r[4] for r in mine}) == 1, out  # the leader column agrees
        rc, out, err, *_ = await shardset(cluster, "status", "--json")
        assert rc == 0, err
        status = json.loads(out)
        assert sorted(status["nodes"]) == ["1", "2", "3"], status
        for shard in lay.shards:
            views = [n["groups"][str(shard)] for n in status["nodes"].values()]
            assert sum(v["role"] == "leader" for v in views) == 1, views
            assert len({v["leader"] for v in views}) == 1, views

        # No store at the given endpoints: the cause and exit 1 (a runtime error; 2 is
        # for usage errors), nothing on stdout.
        rc, out, err, *_ = await shardset(
            None, "get", key, env={"SHARDSET_ENDPOINTS": "http://127.0.0.1:9"}
        )
        assert rc == 1 and out == "" and err.startswith("shardset: "), (rc, out, err)
        assert "connection refused" in err, err

        await wl.stop()
        log(f"client errors: {dict(wl.errors)}")
        await check_end_state(cluster, [*wl.keys, key], history)

    asyncio.run(asyncio.wait_for(scenario(), 150.0))


def test_balance_leaders_moves_each_leadership_to_its_preferred_replica(
    cluster_factory: Any,
) -> None:
    """What `shardset local up` does after start: each shard ends up led by the first
    replica of its placement, so leaderships are spread over the nodes."""
    cluster = cluster_factory()

    async def prepare() -> dict[int, list[int]]:
        lay = await layout(cluster)
        await stable_leaders(cluster, lay.shards)
        return lay.replicas

    replicas = asyncio.run(prepare())
    leaders = cluster.balance_leaders()
    assert leaders == {s: r[0] for s, r in replicas.items()}, (leaders, replicas)
    counts = [list(leaders.values()).count(n) for n in cluster.node_ids]
    assert max(counts) - min(counts) <= 1, counts
    seen = asyncio.run(stable_leaders(cluster, sorted(replicas)))
    assert seen == leaders
