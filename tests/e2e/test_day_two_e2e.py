"""Day two on a real cluster: failover, a lost volume, scaling up and down with an
operator restart in the middle, a refused scale-down below the replication factor,
more shards split online, and a rolling image change.

One ShardSet (3 nodes, 8 shards, replication 3) serves every scenario in turn. During
each one, a workload runs from inside the cluster through the client Service; its
history is checked for linearizability, and it ends with a read of every key, so an
acknowledged write that was lost fails the check. Each scenario logs its time to
recover and the longest gap between acknowledged writes (docs/operations.md).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections import Counter
from typing import Any

import pytest
from test_operator_e2e import (  # the shared installation and helpers
    NODE_IMAGE,
    READY_TIMEOUT,
    Install,
    history_of,
    inst,
    operator_logs,
    result_of,
    start_in_cluster,
    wait_until,
)

from shardset_sim.linearizability import check_kv

pytestmark = pytest.mark.e2e

__all__ = ["inst"]  # the module-scoped installation fixture, imported for its tests

NAME = "dt"
WORKLOAD_SECONDS = int(os.environ.get("E2E_DAY_TWO_WORKLOAD_S", "60"))


def log(msg: str) -> None:
    print(f"[day-two] {msg}", flush=True)


def sset(inst: Install) -> dict[str, Any]:
    return inst.app.json("get", "sset", NAME)


def status(inst: Install) -> dict[str, Any]:
    return sset(inst).get("status", {})


def conditions(st: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in st.get("conditions", [])}


def settled(inst: Install, members: list[int]) -> dict[str, Any] | None:
    """The status once the store is Ready, idle, has exactly `members` and every shard
    of the spec healthy."""
    obj = sset(inst)
    st = obj.get("status", {})
    ok = (
        conditions(st).get("Ready") == "True"
        and st.get("members") == members
        and not st.get("journal")
        and st.get("shards", {}).get("healthy") == obj["spec"]["shards"]
        and st.get("shards", {}).get("total") == obj["spec"]["shards"]
    )
    return st if ok else None


def wait_settled(inst: Install, members: list[int], timeout: float = READY_TIMEOUT) -> float:
    started = time.monotonic()
    try:
        wait_until(
            f"{NAME} Ready and idle with members {members}", lambda: settled(inst, members), timeout
        )
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- operator\n{operator_logs(inst)}") from None
    return time.monotonic() - started


def node_statuses(inst: Install, count: int) -> dict[int, dict[str, Any]]:
    """Every node's GET /v1/status, asked from inside node 1's pod."""
    script = (
        "import json, urllib.request\n"
        "out = {}\n"
        f"for i in range({count}):\n"
        f"    url = f'http://{NAME}-{{i}}.{NAME}-peers:8000/v1/status'\n"
        "    try:\n"
        "        out[i + 1] = json.load(urllib.request.urlopen(url, timeout=3))\n"
        "    except Exception as e:\n"
        "        out[i + 1] = None\n"
        "print(json.dumps(out))\n"
    )
    raw = inst.app("exec", f"{NAME}-0", "-c", "node", "--", "python", "-c", script)
    return {int(k): v for k, v in json.loads(raw).items()}


def replace_pod(inst: Install, pod: str) -> None:
    """Delete `pod` and wait until the StatefulSet's new pod of that name is Ready."""
    old = inst.app.json("get", "pod", pod)["metadata"]["uid"]
    inst.app("delete", "pod", pod, "--wait=false")

    def back() -> bool:
        got = inst.app.json("get", "pods", "--field-selector", f"metadata.name={pod}")["items"]
        if not got or got[0]["metadata"]["uid"] == old:
            return False
        conds = got[0].get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    wait_until(f"pod {pod} to be replaced and Ready", back, READY_TIMEOUT)


def start_workload(inst: Install, prefix: str, seconds: int = WORKLOAD_SECONDS) -> str:
    return start_in_cluster(
        inst,
        [
            "--timeout",
            "10",
            "workload",
            "--clients",
            "4",
            "--ops",
            "100000",
            "--keys",
            "16",
            "--prefix",
            prefix,
            "--seconds",
            str(seconds),
            "--final-reads",
        ],
        store=NAME,
    )


def check_workload(inst: Install, pod: str, scenario: str) -> dict[str, float]:
    result = result_of(inst, pod, timeout=WORKLOAD_SECONDS + 300)
    history = history_of(result)
    writes = sorted(o.complete for o in history if o.kind != "get" and o.complete is not None)
    gap = max((b - a for a, b in itertools.pairwise(writes)), default=0.0)
    failed = sum(o.complete is None for o in history)
    errors = Counter(o.get("error", "")[:120] for o in result["history"] if o["complete"] is None)
    log(f"{scenario}: unanswered operations by error: {dict(errors)}")
    finals = history[-16:]
    assert all(o.kind == "get" and o.complete is not None for o in finals), (
        f"{scenario}: final reads failed: {result['history'][-16:]}"
    )
    # The store must really have served the workload while the scenario ran.
    assert len(writes) >= 100 and failed <= len(history) // 10, (
        f"{scenario}: {len(writes)} acknowledged writes, {failed}/{len(history)} unanswered"
    )
    verdict = check_kv(history)
    assert verdict.ok and not verdict.unknown, f"{scenario}: {verdict.explanation}"
    facts = {
        "ops": float(len(history)),
        "acked_writes": float(len(writes)),
        "unanswered": float(failed),
        "max_write_gap_s": round(gap, 2),
    }
    log(f"{scenario}: workload {facts}")
    return facts


def test_day_two_store_becomes_ready(inst: Install) -> None:
    inst.app.apply(
        {
            "apiVersion": "shardset.io/v1alpha1",
            "kind": "ShardSet",
            "metadata": {"name": NAME},
            # Plain HTTP into the pods (the status probe, the workload): TLS is covered by
            # test_security_e2e.py's store.
            "spec": {"nodes": 3, "shards": 8, "replicationFactor": 3, "tls": {"mode": "Disabled"}},
        }
    )
    took = wait_settled(inst, [1, 2, 3])
    log(f"created, Ready and leaders balanced in {took:.0f}s")


def test_delete_the_pod_leading_most_shards(inst: Install) -> None:
    pod = start_workload(inst, "fo")
    time.sleep(10)
    statuses = node_statuses(inst, 3)
    led = {
        n: sum(g.get("role") == "leader" for k, g in s["groups"].items() if k != "meta")
        for n, s in statuses.items()
    }
    victim = max(led, key=lambda n: (led[n], -n))
    started = time.monotonic()
    replace_pod(inst, f"{NAME}-{victim - 1}")
    log(f"deleted pod {NAME}-{victim - 1} (node {victim}, leading {led[victim]} shards)")
    took = wait_settled(inst, [1, 2, 3])
    log(f"failover: store Ready and idle again {time.monotonic() - started:.0f}s after the delete")
    facts = check_workload(inst, pod, "delete leader-heavy pod")
    assert took < READY_TIMEOUT and facts["acked_writes"] > 0


def test_delete_a_pod_and_its_volume(inst: Install) -> None:
    pod = start_workload(inst, "pvc")
    time.sleep(10)
    claim = f"data-{NAME}-1"
    started = time.monotonic()
    inst.app("delete", "pvc", claim, "--wait=false")
    replace_pod(inst, f"{NAME}-1")
    log(f"deleted pod {NAME}-1 and its volume claim {claim}")

    def rejoined() -> bool:
        st = node_statuses(inst, 3).get(2)
        return bool(st) and st.get("origin") == "rejoin"

    wait_until("node 2 to start on an empty volume and rejoin", rejoined, READY_TIMEOUT)
    wait_settled(inst, [1, 2, 3])
    recovered = time.monotonic() - started
    st2 = node_statuses(inst, 3)[2]
    held = sorted(g for g in st2["groups"] if g != "meta")
    log(f"lost volume: node 2 rejoined and holds shards {held}; {recovered:.0f}s after the delete")
    assert held, st2
    check_workload(inst, pod, "delete pod and volume")


def test_scale_up_to_five_with_an_operator_restart_then_back_to_three(inst: Install) -> None:
    pod = start_workload(inst, "scale", seconds=WORKLOAD_SECONDS * 3)
    time.sleep(5)
    started = time.monotonic()
    inst.app("patch", "sset", NAME, "--type=merge", "-p", json.dumps({"spec": {"nodes": 5}}))

    def moving() -> dict[str, Any] | None:
        journal = status(inst).get("journal") or {}
        return journal if journal.get("movesDone", 0) >= 1 else None

    journal = wait_until("the first replica move to finish", moving, READY_TIMEOUT)
    log(f"scale-up in progress: {journal}")
    inst.k(
        "-n",
        inst.operator_ns,
        "delete",
        "pod",
        "-l",
        "app.kubernetes.io/name=shardset-operator",
        "--wait=false",
    )
    log("deleted the operator pod in the middle of the rebalance")
    wait_settled(inst, [1, 2, 3, 4, 5])
    up = time.monotonic() - started
    st = status(inst)
    log(f"scale 3 -> 5 done in {up:.0f}s: {st.get('lastOperation')}")
    assert "scale up to 5" in (st.get("lastOperation") or ""), st

    started = time.monotonic()
    inst.app("patch", "sset", NAME, "--type=merge", "-p", json.dumps({"spec": {"nodes": 3}}))
    wait_settled(inst, [1, 2, 3])
    wait_until(
        "the StatefulSet to shrink to 3",
        lambda: inst.app.json("get", "statefulset", NAME)["status"].get("replicas") == 3,
        120,
    )
    down = time.monotonic() - started
    log(f"scale 5 -> 3 done in {down:.0f}s: {status(inst).get('lastOperation')}")

    def claims_gone() -> bool:
        names = {c["metadata"]["name"] for c in inst.app.json("get", "pvc")["items"]}
        return not names & {f"data-{NAME}-3", f"data-{NAME}-4"}

    wait_until("the volumes of the removed nodes to be deleted", claims_gone, 120)
    check_workload(inst, pod, "scale 3 -> 5 -> 3")


def test_scale_below_the_replication_factor_is_refused(inst: Install) -> None:
    r = subprocess.run(
        [*kubectl_cmd(inst), "patch", "sset", NAME, "--type=merge", "-p", '{"spec":{"nodes":2}}'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode != 0 and "replicationFactor must not exceed nodes" in r.stderr, r
    assert sset(inst)["spec"]["nodes"] == 3
    assert inst.app.json("get", "statefulset", NAME)["spec"]["replicas"] == 3


def test_more_shards_are_split_online(inst: Install) -> None:
    pod = start_workload(inst, "split")
    time.sleep(5)
    started = time.monotonic()
    inst.app("patch", "sset", NAME, "--type=merge", "-p", json.dumps({"spec": {"shards": 12}}))
    wait_settled(inst, [1, 2, 3])
    st = status(inst)
    log(f"shards 8 -> 12 done in {time.monotonic() - started:.0f}s: {st.get('lastOperation')}")
    assert st["shards"]["total"] == 12
    check_workload(inst, pod, "shards 8 -> 12")
    # Fewer shards is refused by the API server: merging is not supported.
    r = subprocess.run(
        [*kubectl_cmd(inst), "patch", "sset", NAME, "--type=merge", "-p", '{"spec":{"shards":8}}'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode != 0 and "shards can only grow" in r.stderr, r


def kubectl_cmd(inst: Install) -> list[str]:
    return [inst.k.binary, "--kubeconfig", inst.k.kubeconfig, "-n", inst.app.namespace]


def tag_in_cluster(image: str, tag: str) -> None:
    """A second tag of `image` in the local cluster's containerd (no registry here)."""
    state = os.environ.get("SHARDSET_STATE", "/var/lib/shardset-cluster")
    sock = f"{state}/run/containerd.sock"
    if not os.path.exists(sock):
        pytest.skip(f"no local cluster containerd at {sock} to tag {image} as {tag}")
    names = [f"docker.io/{image}", f"docker.io/{tag}"]
    ctr = ["ctr", "-a", sock, "-n", "k8s.io", "images", "tag", "--force", *names]
    subprocess.run(ctr, check=True, capture_output=True, timeout=60)


def test_rolling_image_change(inst: Install) -> None:
    tag = f"{NODE_IMAGE.rsplit(':', 1)[0]}:e2e-roll"
    tag_in_cluster(NODE_IMAGE, tag)
    pod = start_workload(inst, "roll", seconds=WORKLOAD_SECONDS * 3)
    time.sleep(5)
    started = time.monotonic()
    inst.app("patch", "sset", NAME, "--type=merge", "-p", json.dumps({"spec": {"image": tag}}))

    def rolled() -> bool:
        sts = inst.app.json("get", "statefulset", NAME)
        s = sts["status"]
        images = {c["image"] for c in sts["spec"]["template"]["spec"]["containers"]}
        # The status must be the controller's answer to this template: right after the
        # operator applies it, the status still describes the old revision (every pod
        # "updated", current == update revision), which once ended this wait at once.
        return (
            images == {tag}
            and s.get("observedGeneration") == sts["metadata"]["generation"]
            and s.get("updatedReplicas") == 3
            and s.get("currentRevision") == s.get("updateRevision")
            and s.get("readyReplicas") == 3
        )

    wait_until("every pod to run the new image", rolled, 2 * READY_TIMEOUT)
    wait_settled(inst, [1, 2, 3])
    log(f"rolling image change done in {time.monotonic() - started:.0f}s")
    pods = inst.app.json("get", "pods", "-l", f"app.kubernetes.io/instance={NAME}")["items"]
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {tag}
    check_workload(inst, pod, "rolling image change")
