"""The operator installed for listed namespaces only (values watchNamespaces).

The chart then grants namespaced RBAC (a Role in each watched namespace) and a
KopfPeering there, and only CRD discovery cluster-wide. This checks that Kopf
and the operator work with exactly that: a ShardSet in the watched namespace
becomes Ready, one in another namespace is left alone, and the operator's
ServiceAccount has no access outside its namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

OPERATOR_IMAGE = os.environ.get("E2E_OPERATOR_IMAGE", "shardset/operator:dev")
NODE_IMAGE = os.environ.get("E2E_NODE_IMAGE", "shardset/node:dev")
READY_TIMEOUT = int(os.environ.get("E2E_READY_TIMEOUT", "300"))


def run(cmd: list[str], timeout: float) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:4])}... failed ({r.returncode}):\n{r.stderr}")


CHART = Path(__file__).resolve().parents[2] / "charts" / "shardset-operator"
SMALL = {"nodes": 1, "shards": 2, "replicationFactor": 1}


def shardset(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "shardset.io/v1alpha1",
        "kind": "ShardSet",
        "metadata": {"name": name},
        "spec": SMALL,
    }


@pytest.fixture(scope="module")
def setup(kubectl, helm) -> Iterator[dict[str, Any]]:
    suffix = uuid.uuid4().hex[:6]
    ops, watched, other = f"ops-{suffix}", f"watched-{suffix}", f"other-{suffix}"
    release = f"nsop-{suffix}"
    helm_cmd = [helm, "--kubeconfig", kubectl.kubeconfig]
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kubectl("create", "namespace", watched)
    kubectl("create", "namespace", other)
    repo, tag = OPERATOR_IMAGE.rsplit(":", 1)
    ns = {"ops": ops, "watched": watched, "other": other, "release": release}
    try:
        run(
            [
                *helm_cmd,
                "install",
                release,
                str(CHART),
                "--namespace",
                ops,
                "--create-namespace",
                "--set",
                f"image.repository={repo}",
                "--set",
                f"image.tag={tag}",
                "--set",
                f"nodeImage={NODE_IMAGE}",
                "--set",
                f"watchNamespaces={{{watched}}}",
                "--set",
                f"peering.name={release}",
                "--wait",
                "--timeout",
                "3m",
            ],
            timeout=240,
        )
        yield ns
    finally:
        for n in (watched, other):
            kubectl("-n", n, "delete", "shardsets", "--all", "--wait=false", check=False)
        # the one in the unwatched namespace never got the operator's finalizer
        subprocess.run(
            [*helm_cmd, "uninstall", release, "-n", ops, "--wait"],
            capture_output=True,
            timeout=200,
            check=False,
        )
        kubectl("delete", "namespace", ops, watched, other, "--wait=false", check=False)


def can_i(kubectl, ns: dict[str, Any], verb: str, resource: str, namespace: str) -> bool:
    sa = f"system:serviceaccount:{ns['ops']}:{ns['release']}-shardset-operator"
    where = ["-n", namespace] if namespace else []
    out = kubectl("auth", "can-i", verb, resource, *where, "--as", sa, check=False).strip()
    return out == "yes"


def test_namespaced_operator_serves_only_its_namespaces(kubectl, setup) -> None:
    ns = setup
    watched = type(kubectl)(kubectl.binary, kubectl.kubeconfig, ns["watched"])
    other = type(kubectl)(kubectl.binary, kubectl.kubeconfig, ns["other"])
    assert watched.json("get", "kopfpeering", ns["release"])["metadata"]["name"]
    watched("apply", "-f", "-", stdin=json.dumps(shardset("inside")))
    other("apply", "-f", "-", stdin=json.dumps(shardset("outside")))
    watched(
        "wait",
        "--for=condition=Ready",
        "sset/inside",
        f"--timeout={READY_TIMEOUT}s",
        timeout=READY_TIMEOUT + 30,
    )
    # the unwatched one: no status, no StatefulSet, no finalizer
    outside = other.json("get", "sset", "outside")
    assert not outside.get("status"), outside.get("status")
    assert not outside["metadata"].get("finalizers")
    assert not other("get", "statefulsets", "-o", "name").strip()
    # least privilege: the ServiceAccount reaches its namespace only
    assert can_i(kubectl, ns, "patch", "statefulsets", ns["watched"])
    assert can_i(kubectl, ns, "patch", "shardsets/status", ns["watched"])
    assert not can_i(kubectl, ns, "list", "statefulsets", ns["other"])
    assert not can_i(kubectl, ns, "list", "shardsets", ns["other"])
    # Secrets: read and written one by name (the store's CA and certificates, users'
    # credentials), never listed or watched, and only in the watched namespace.
    assert can_i(kubectl, ns, "get", "secrets", ns["watched"])
    assert not can_i(kubectl, ns, "list", "secrets", ns["watched"])
    assert not can_i(kubectl, ns, "get", "secrets", ns["other"])
    assert not can_i(kubectl, ns, "list", "namespaces", "")
    # the ShardSet can be deleted while the operator runs (its finalizer is released)
    watched("delete", "sset", "inside", "--wait=true", "--timeout=120s", timeout=150)
