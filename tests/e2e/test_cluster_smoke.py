"""Smoke test of the cluster the project builds (hack/cluster) or of kind.

1. A Deployment from our own test-server image answers on its port through a
   Service name that CoreDNS resolves, asked from another pod.
2. A StatefulSet with a PersistentVolumeClaim (default StorageClass) keeps a
   written file across the deletion of its pod, and its pod's DNS name resolves.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

IMAGE = os.environ.get("SMOKE_IMAGE", "shardset.local/testserver:dev")
LABELS = {"app.kubernetes.io/part-of": "shardset-e2e"}


def server_container(**extra) -> dict:
    return {
        "name": "server",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": 8080, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
        **extra,
    }


def in_pod(k, pod: str, code: str, timeout: float = 60) -> str:
    """Runs Python `code` in the pod's server container and returns its output."""
    return k("exec", pod, "-c", "server", "--", "python3", "-c", code, timeout=timeout)


def http(url: str, method: str = "GET", data: str | None = None) -> str:
    body = "None" if data is None else repr(data.encode())
    return (
        "import urllib.request as u;"
        f"r=u.urlopen(u.Request({url!r}, data={body}, method={method!r}), timeout=10);"
        "print(r.read().decode(), end='')"
    )


def http_when_served(url: str, attempts: int = 30) -> str:
    """Like http(), retried once a second while the connection is refused."""
    return (
        "import time, urllib.error, urllib.request as u\n"
        f"for i in range({attempts}):\n"
        "    try:\n"
        f"        r = u.urlopen({url!r}, timeout=10); break\n"
        "    except urllib.error.URLError:\n"
        f"        if i == {attempts - 1}: raise\n"
        "        time.sleep(1)\n"
        "print(r.read().decode(), end='')"
    )


def resolve(name: str) -> str:
    return f"import socket; print(socket.gethostbyname({name!r}))"


def wait_pods_ready(k, selector: str, timeout: int = 180) -> None:
    k(
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        selector,
        f"--timeout={timeout}s",
        timeout=timeout + 10,
    )


def test_service_answers_through_cluster_dns(namespace):
    k = namespace
    ns = k.namespace
    k.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": LABELS},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web", **LABELS}},
                    "spec": {"containers": [server_container()]},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "labels": LABELS},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client", "labels": {"app": "client", **LABELS}},
            "spec": {"containers": [server_container()]},
        },
    )
    k("rollout", "status", "deployment/web", "--timeout=180s", timeout=200)
    wait_pods_ready(k, "app=client")
    cluster_ip = k.json("get", "service", "web")["spec"]["clusterIP"]

    # CoreDNS: the short name (search path), and the fully qualified one.
    assert in_pod(k, "client", resolve("web")).strip() == cluster_ip
    assert in_pod(k, "client", resolve(f"web.{ns}.svc.cluster.local")).strip() == cluster_ip
    # kube-proxy: the Service forwards to the Deployment's pod.
    web_pod = k.json("get", "pods", "-l", "app=web")["items"][0]["metadata"]["name"]
    reply = in_pod(k, "client", http("http://web/"))
    assert reply.strip() == f"ok {web_pod}"
    reply = in_pod(k, "client", http(f"http://web.{ns}.svc.cluster.local:80/"))
    assert reply.strip() == f"ok {web_pod}"


def test_statefulset_keeps_data_across_pod_deletion(namespace):
    k = namespace
    ns = k.namespace
    k.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "store", "labels": LABELS},
            "spec": {
                "clusterIP": "None",
                "selector": {"app": "store"},
                "ports": [{"port": 8080, "name": "http"}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "store", "labels": LABELS},
            "spec": {
                "serviceName": "store",
                "replicas": 1,
                "selector": {"matchLabels": {"app": "store"}},
                "template": {
                    "metadata": {"labels": {"app": "store", **LABELS}},
                    "spec": {
                        "terminationGracePeriodSeconds": 2,
                        "containers": [
                            server_container(volumeMounts=[{"name": "data", "mountPath": "/data"}])
                        ],
                    },
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "16Mi"}},
                        },
                    }
                ],
            },
        },
    )
    k("rollout", "status", "statefulset/store", "--timeout=180s", timeout=200)
    pvc = k.json("get", "pvc", "data-store-0")
    assert pvc["status"]["phase"] == "Bound"
    assert pvc["spec"].get("storageClassName"), "the default StorageClass was not applied"

    token = f"shardset-{uuid.uuid4().hex}"
    assert (
        in_pod(k, "store-0", http("http://localhost:8080/file", "PUT", token)).strip() == "written"
    )
    assert in_pod(k, "store-0", http("http://localhost:8080/file")) == token

    old_uid = k.json("get", "pod", "store-0")["metadata"]["uid"]
    k("delete", "pod", "store-0", "--wait=true", "--timeout=120s", timeout=130)
    deadline = time.monotonic() + 180
    while True:
        pod = k.json("get", "pods", "-l", "app=store")
        items = [p for p in pod["items"] if p["metadata"]["uid"] != old_uid]
        if items and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in items[0].get("status", {}).get("conditions", [])
        ):
            break
        assert time.monotonic() < deadline, "store-0 did not come back Ready"
        time.sleep(1)

    # Same claim, same data, in a new pod.
    assert in_pod(k, "store-0", http("http://localhost:8080/file")) == token
    assert k.json("get", "pvc", "data-store-0")["metadata"]["uid"] == pvc["metadata"]["uid"]
    # The StatefulSet pod's stable DNS name resolves to its IP.
    pod_ip = k.json("get", "pod", "store-0")["status"]["podIP"]
    assert in_pod(k, "store-0", resolve(f"store-0.store.{ns}.svc.cluster.local")).strip() == pod_ip


def test_helm_installs_a_chart(namespace, helm):
    """Helm v3 (built from its module) installs a chart and waits for it."""
    k = namespace
    chart = Path(__file__).parent / "charts" / "smoke"
    helm = [helm, "--kubeconfig", k.kubeconfig, "--namespace", k.namespace]
    r = subprocess.run(
        [*helm, "install", "smoke", str(chart), "--wait", "--timeout", "3m"],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert r.returncode == 0, r.stderr
    status = subprocess.run([*helm, "status", "smoke"], capture_output=True, text=True, timeout=30)
    assert "STATUS: deployed" in status.stdout
    pod = k.json("get", "pods", "-l", "app=smoke")["items"][0]["metadata"]["name"]
    # `helm --wait` returns once the pod is Ready; kube-proxy may program the new
    # Service's rules a moment later (seen: connection refused on a loaded machine).
    assert in_pod(k, pod, http_when_served("http://smoke/")).strip() == f"ok {pod}"
    r = subprocess.run(
        [*helm, "uninstall", "smoke", "--wait"], capture_output=True, text=True, timeout=200
    )
    assert r.returncode == 0, r.stderr
