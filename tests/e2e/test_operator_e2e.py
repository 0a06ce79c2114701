"""The operator end to end, on a real cluster, as a user meets it.

The tests run in order and share one installation (module-scoped fixtures):

1. the Helm chart installs the operator (CRDs from the chart's crds/), and its
   rendered templates pass the API server's own validation (server dry run);
2. examples/shardset-minimal.yaml becomes Ready, with the objects the operator
   promises (StatefulSet, client and peers Services, PDB, ConfigMap);
3. a workload from inside the cluster, through the client Service only,
   produces a history that shardset_sim's checker finds linearizable;
4. a live consistency change (spec.consistency.mode) reaches status and the
   nodes' read responses, without restarting a node pod;
5. invalid ShardSets are refused by the API server with a message naming the field;
6. deleting the ShardSet with retainOnDelete false removes its volumes, and
   `helm uninstall` plus namespace deletion leave nothing behind.

Images: shardset/operator:dev and shardset/node:dev must be in the cluster
(`make images`; `make e2e` builds and loads them first).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardset_sim.linearizability import Op, check_kv

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "shardset-operator"
EXAMPLE = REPO / "examples" / "shardset-minimal.yaml"
WORKLOAD = Path(__file__).with_name("workload.py")
OPERATOR_IMAGE = os.environ.get("E2E_OPERATOR_IMAGE", "shardset/operator:dev")
NODE_IMAGE = os.environ.get("E2E_NODE_IMAGE", "shardset/node:dev")
READY_TIMEOUT = int(os.environ.get("E2E_READY_TIMEOUT", "300"))
MARKER = "SHARDSET-E2E-RESULT "


@dataclass
class Install:
    k: Any  # conftest.Kubectl, unbound
    helm: list[str]
    release: str
    operator_ns: str
    app: Any  # conftest.Kubectl bound to the ShardSet's namespace
    name: str  # the ShardSet's name


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if r.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd[:4])}... failed ({r.returncode}):\n{r.stderr}{r.stdout}"
        )
    return r


def wait_until(what: str, probe, timeout: float, every: float = 2.0) -> Any:
    """Polls probe() until it returns something truthy; fails naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def operator_logs(inst: Install, tail: int = 80) -> str:
    return inst.k(
        "-n", inst.operator_ns, "logs", f"deploy/{inst.release}", f"--tail={tail}", check=False
    )


@pytest.fixture(scope="module")
def inst(kubectl, helm) -> Iterator[Install]:
    suffix = uuid.uuid4().hex[:6]
    operator_ns, app_ns = f"shardset-system-{suffix}", f"e2e-sset-{suffix}"
    release = "shardset-operator"
    helm_cmd = [helm, "--kubeconfig", kubectl.kubeconfig]
    # Helm installs a chart's CRDs only when they are absent: apply this checkout's
    # (server-side) so a cluster that ran an older chart tests the current schema.
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kubectl("create", "namespace", app_ns)
    image_repo, image_tag = OPERATOR_IMAGE.rsplit(":", 1)
    app = type(kubectl)(kubectl.binary, kubectl.kubeconfig, app_ns)
    installed = Install(kubectl, helm_cmd, release, operator_ns, app, "demo")
    try:
        run(
            [
                *helm_cmd,
                "install",
                release,
                str(CHART),
                "--namespace",
                operator_ns,
                "--create-namespace",
                "--set",
                f"image.repository={image_repo}",
                "--set",
                f"image.tag={image_tag}",
                "--set",
                f"nodeImage={NODE_IMAGE}",
                "--wait",
                "--timeout",
                "3m",
            ],
            timeout=240,
        )
        yield installed
    finally:
        if not os.environ.get("E2E_KEEP_NAMESPACE"):
            cleanup(installed)


def cleanup(inst: Install) -> None:
    """Whatever the tests left: ShardSets first (their finalizer needs the operator)."""
    inst.app(
        "delete", "shardsets", "--all", "--wait=true", "--timeout=120s", check=False, timeout=150
    )
    subprocess.run(
        [*inst.helm, "uninstall", inst.release, "-n", inst.operator_ns, "--wait"],
        capture_output=True,
        timeout=200,
        check=False,
    )
    inst.k(
        "delete",
        "namespace",
        inst.app.namespace,
        inst.operator_ns,
        "--wait=false",
        "--ignore-not-found",
        check=False,
    )


def test_helm_install_runs_the_operator(inst: Install) -> None:
    k = inst.k
    dep = k.json("-n", inst.operator_ns, "get", "deployment", inst.release)
    assert dep["status"].get("readyReplicas") == 1, dep["status"]
    pod = k.json(
        "-n", inst.operator_ns, "get", "pods", "-l", "app.kubernetes.io/name=shardset-operator"
    )["items"][0]
    assert pod["spec"]["containers"][0]["image"] == OPERATOR_IMAGE
    # Kopf found its peering object (no "standalone" fallback) and is serving
    assert k.json("get", "clusterkopfpeering", "shardset-operator")["metadata"]["name"]
    metrics = k.json("-n", inst.operator_ns, "get", "service", f"{inst.release}-metrics")
    assert metrics["spec"]["ports"][0]["port"] == 9090


def test_rendered_templates_pass_server_validation(inst: Install) -> None:
    """Every object the chart renders is valid for this API server (dry run, nothing stored)."""
    rendered = run(
        [
            *inst.helm,
            "template",
            inst.release,
            str(CHART),
            "--namespace",
            inst.operator_ns,
            "--kube-version",
            "1.34.0",
            "--include-crds",
            "--set",
            "watchNamespaces={default,kube-public}",
        ]
    ).stdout
    out = inst.k("apply", "--dry-run=server", "-f", "-", stdin=rendered)
    assert "(server dry run)" in out, out


def test_examples_pass_server_validation(inst: Install) -> None:
    """Every ShardSet in examples/ is accepted by the CRD's schema and CEL rules."""
    for example in sorted((REPO / "examples").glob("*.yaml")):
        out = inst.app("apply", "--dry-run=server", "-f", str(example))
        assert "(server dry run)" in out, (example.name, out)


def test_minimal_example_becomes_ready(inst: Install) -> None:
    app = inst.app
    # This file's scenarios (workload through the client Service, live consistency change,
    # deletion) talk plain HTTP into the store, so its store runs with TLS off; the TLS
    # default (the example as written, in a restricted namespace, authenticated clients,
    # rotation) is test_security_e2e.py's store and the demo's.
    example = yaml.safe_load(EXAMPLE.read_text())
    example["spec"]["tls"] = {"mode": "Disabled"}
    app.apply(example)
    try:
        app(
            "wait",
            "--for=condition=Ready",
            f"sset/{inst.name}",
            f"--timeout={READY_TIMEOUT}s",
            timeout=READY_TIMEOUT + 30,
        )
    except AssertionError as e:
        pods = app("get", "pods", "-o", "wide", check=False)
        sset = app("get", "sset", inst.name, "-o", "yaml", check=False)
        raise AssertionError(
            f"{e}\n--- pods\n{pods}\n--- sset\n{sset}\n--- operator\n{operator_logs(inst)}"
        ) from None
    sset = app.json("get", "sset", inst.name)
    status = sset["status"]
    assert status["readyNodes"] == 3, status
    assert status["shards"]["total"] == 4 and status["shards"]["healthy"] == 4, status
    assert status.get("observedGeneration") == sset["metadata"]["generation"], status
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Ready": "True", "Progressing": "False", "Degraded": "False"}, status
    # the objects the operator promises, owned by the ShardSet (so deletion cascades)
    for kind, name in [
        ("statefulset", inst.name),
        ("service", inst.name),
        ("service", f"{inst.name}-peers"),
        ("poddisruptionbudget", inst.name),
    ]:
        obj = app.json("get", kind, name)
        owners = [o["kind"] for o in obj["metadata"].get("ownerReferences", [])]
        assert owners == ["ShardSet"], (kind, name, owners)
    client_svc = app.json("get", "service", inst.name)
    assert [p["port"] for p in client_svc["spec"]["ports"]] == [8000]
    assert app.json("get", "service", f"{inst.name}-peers")["spec"]["clusterIP"] == "None"
    # `kubectl get sset` shows the printer columns a user reads
    table = app("get", "sset")
    assert "CONSISTENCY" in table and "READY" in table and inst.name in table, table


def run_in_cluster(inst: Install, args: list[str], timeout: int = 300) -> dict[str, Any]:
    """Runs workload.py in a pod of the node image against the client Service; returns
    its JSON result (read from the pod's log)."""
    return result_of(inst, start_in_cluster(inst, args), timeout)


def start_in_cluster(inst: Install, args: list[str], store: str | None = None) -> str:
    """Starts workload.py in a pod of the node image against the client Service of
    `store` (default: the example's); returns the pod's name (result_of waits for it)."""
    app = inst.app
    configmap = app(
        "create",
        "configmap",
        "e2e-workload",
        f"--from-file=workload.py={WORKLOAD}",
        "--dry-run=client",
        "-o",
        "yaml",
    )
    app("apply", "-f", "-", stdin=configmap)
    pod = f"e2e-client-{uuid.uuid4().hex[:6]}"
    app.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "labels": {"app.kubernetes.io/part-of": "shardset-e2e"}},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {
                    "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "client",
                        "image": NODE_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": [
                            "python",
                            "/e2e/workload.py",
                            "--endpoint",
                            f"http://{store or inst.name}:8000",
                            *args,
                        ],
                        "volumeMounts": [{"name": "code", "mountPath": "/e2e"}],
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
                "volumes": [{"name": "code", "configMap": {"name": "e2e-workload"}}],
            },
        }
    )
    return pod


def result_of(inst: Install, pod: str, timeout: int = 300) -> dict[str, Any]:
    app = inst.app
    phase = wait_until(
        f"pod {pod} to finish",
        lambda: (
            (p := app.json("get", "pod", pod)["status"].get("phase")) in ("Succeeded", "Failed")
            and p
        ),
        timeout,
    )
    logs = app("logs", pod, timeout=60)
    assert phase == "Succeeded", f"{pod} {phase}:\n{logs[-3000:]}"
    app("delete", "pod", pod, "--wait=false", check=False)
    lines = [line for line in logs.splitlines() if line.startswith(MARKER)]
    assert lines, f"no result line in {pod}'s log:\n{logs[-3000:]}"
    return json.loads(lines[-1][len(MARKER) :])


def test_workload_through_client_service_is_linearizable(inst: Install) -> None:
    result = run_in_cluster(inst, ["workload", "--clients", "4", "--ops", "60", "--keys", "6"])
    raw = result["history"]
    history = history_of(result)
    answered = [o for o in raw if o["complete"] is not None]
    errors = [o["error"] for o in raw if o["complete"] is None]
    # a healthy store answers (nearly) everything; the checker is meaningless on nothing
    assert len(raw) == 240 and len(answered) >= 228, f"{len(answered)}/240 answered: {errors[:5]}"
    assert {o["kind"] for o in answered} == {"put", "get", "cas"}
    assert any(o["kind"] == "cas" and o["result"] is True for o in answered)
    assert {o["consistency"] for o in answered if o["kind"] == "get"} == {"linearizable"}
    verdict = check_kv(history)
    assert verdict.ok and not verdict.unknown, verdict.explanation


def history_of(result: dict[str, Any]) -> list[Op]:
    """The workload's history as the linearizability checker's operations."""
    return [
        Op(
            client=o["client"],
            kind=o["kind"],
            key=o["key"],
            value=o.get("value"),
            expected=o.get("expected"),
            invoke=o["invoke"],
            complete=o["complete"],
            result=o.get("result"),
        )
        for o in result["history"]
    ]


def test_live_consistency_change(inst: Install) -> None:
    app = inst.app
    pods_before = {
        p["metadata"]["name"]: p["metadata"]["uid"]
        for p in app.json("get", "pods", "-l", f"app.kubernetes.io/instance={inst.name}")["items"]
    }
    assert len(pods_before) == 3, pods_before
    app(
        "patch",
        "sset",
        inst.name,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"consistency": {"mode": "lease"}}}),
    )

    def applied() -> dict[str, Any] | None:
        st = app.json("get", "sset", inst.name).get("status", {}).get("consistency", {})
        return st if st.get("mode") == "lease" and st.get("nodesApplied") == 3 else None

    wait_until("status.consistency.mode=lease on 3 nodes", applied, 90)
    read = run_in_cluster(inst, ["read", "--key", "e2e-consistency"], timeout=120)
    assert read["read"] == read["wrote"], read
    assert read["consistency"] == "lease", read
    # switched live: the same pods, none restarted
    pods_after = {
        p["metadata"]["name"]: (
            p["metadata"]["uid"],
            p["status"]["containerStatuses"][0]["restartCount"],
        )
        for p in app.json("get", "pods", "-l", f"app.kubernetes.io/instance={inst.name}")["items"]
    }
    assert {n: uid for n, (uid, _) in pods_after.items()} == pods_before
    assert all(restarts == 0 for _, restarts in pods_after.values()), pods_after


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"nodes": 3, "shards": 4, "replicationFactor": 5}, "spec.replicationFactor"),
        ({"nodes": 3, "consistency": {"mode": "strong"}}, "spec.consistency.mode"),
        ({"nodes": 3, "consistency": {"mode": "bounded"}}, "spec.consistency.maxStalenessMs"),
        ({"nodes": 0}, "spec.nodes"),
    ],
    ids=["replication-over-nodes", "bad-mode-enum", "bounded-without-bound", "zero-nodes"],
)
def test_invalid_shardset_is_refused_naming_the_field(
    inst: Install, spec: dict[str, Any], field: str
) -> None:
    obj = {
        "apiVersion": "shardset.io/v1alpha1",
        "kind": "ShardSet",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    r = subprocess.run(
        [
            inst.app.binary,
            "--kubeconfig",
            inst.app.kubeconfig,
            "-n",
            inst.app.namespace,
            "create",
            "-f",
            "-",
        ],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0, f"accepted: {r.stdout}"
    assert "is invalid" in r.stderr and field in r.stderr, r.stderr
    assert not inst.app("get", "sset", "bad", "--ignore-not-found", "-o", "name").strip()


def test_delete_and_uninstall_clean_up(inst: Install) -> None:
    app, k = inst.app, inst.k
    selector = f"app.kubernetes.io/instance={inst.name}"
    assert len(app.json("get", "pvc", "-l", selector)["items"]) == 3
    # the policy says: retainOnDelete false deletes the volumes with the ShardSet
    app(
        "patch",
        "sset",
        inst.name,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"storage": {"retainOnDelete": False}}}),
    )
    app("delete", "sset", inst.name, "--wait=true", "--timeout=180s", timeout=200)
    wait_until(
        "the StatefulSet, pods and PVCs to go",
        lambda: not app("get", "statefulset,pods,pvc", "-l", selector, "-o", "name").strip(),
        180,
    )
    run(
        [
            *inst.helm,
            "uninstall",
            inst.release,
            "-n",
            inst.operator_ns,
            "--wait",
            "--timeout",
            "2m",
        ],
        timeout=180,
    )
    # helm's --wait covers the Deployment, not its pod's graceful stop
    wait_until(
        "the operator's objects and pod to go",
        lambda: not k("-n", inst.operator_ns, "get", "all", "-o", "name").strip(),
        90,
    )
    assert not k(
        "get",
        "clusterrole,clusterrolebinding",
        "-l",
        f"app.kubernetes.io/instance={inst.release}",
        "-o",
        "name",
    ).strip()
    # Helm never deletes CRDs: the API stays for other releases and any kept data
    assert k("get", "crd", "shardsets.shardset.io", "-o", "name").strip()
    k(
        "delete",
        "namespace",
        inst.operator_ns,
        app.namespace,
        "--wait=true",
        "--timeout=120s",
        timeout=150,
    )
    for ns in (inst.operator_ns, app.namespace):
        assert not k("get", "namespace", ns, "--ignore-not-found", "-o", "name").strip()

    def volumes_of_app() -> list[str]:
        pvs = yaml.safe_load(k("get", "pv", "-o", "yaml"))["items"]
        return [
            pv["metadata"]["name"]
            for pv in pvs
            if (pv["spec"].get("claimRef") or {}).get("namespace") == app.namespace
        ]

    wait_until("the released volumes to be deleted", lambda: not volumes_of_app(), 60)
