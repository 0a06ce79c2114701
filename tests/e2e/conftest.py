"""Fixtures for end-to-end tests against a real Kubernetes cluster.

`kubeconfig` yields the kubeconfig of whichever cluster is up, tried in order:
$KUBECONFIG, the local cluster of hack/cluster/up.sh, the kind cluster of
`make cluster-up CLUSTER=kind`. With none reachable, the tests are skipped with
the reason. `kubectl` runs our own kubectl (built by hack/cluster/build.sh) or
the one on PATH against that cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

# Test modules share helpers by importing each other (pytest runs with importlib mode).
sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SHARDSET_CACHE", Path.home() / ".cache" / "shardset"))
STATE = Path(os.environ.get("SHARDSET_STATE", "/var/lib/shardset-cluster"))
KIND_CLUSTER_NAME = os.environ.get("KIND_CLUSTER_NAME", "shardset")


def _versions() -> dict[str, str]:
    out = {}
    for line in (REPO / "hack" / "cluster" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def kubectl_binary() -> str:
    ours = CACHE / f"k8s-{_versions()['K8S_VERSION']}" / "bin" / "kubectl"
    if ours.exists():
        return str(ours)
    found = shutil.which("kubectl")
    if not found:
        pytest.skip("no kubectl: run hack/cluster/build.sh k8s")
    return found


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end tests against a real cluster")


def candidate_kubeconfigs() -> list[Path]:
    out = []
    if os.environ.get("KUBECONFIG"):
        out.append(Path(os.environ["KUBECONFIG"]))
    out.append(STATE / "kubeconfig")
    out.append(CACHE / f"kind-{KIND_CLUSTER_NAME}.kubeconfig")
    return out


def _reachable(kubectl: str, path: Path) -> str | None:
    """None if the cluster at `path` answers /readyz, else why not."""
    if not path.exists():
        return f"{path}: no such file"
    try:
        r = subprocess.run(
            [kubectl, "--kubeconfig", str(path), "get", "--raw", "/readyz", "--request-timeout=5s"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        return f"{path}: timed out"
    if r.returncode != 0:
        return f"{path}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'not ready'}"
    return None


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    kubectl = kubectl_binary()
    why = []
    for path in candidate_kubeconfigs():
        reason = _reachable(kubectl, path)
        if reason is None:
            return str(path)
        why.append(reason)
    reason = "no Kubernetes cluster is up (run `make cluster-up`): " + "; ".join(why)
    if os.environ.get("E2E_REQUIRE_CLUSTER"):  # CI brought one up: its absence is a failure
        pytest.fail(reason)
    pytest.skip(reason)


class Kubectl:
    """kubectl bound to one kubeconfig (and optionally one namespace)."""

    def __init__(self, binary: str, kubeconfig: str, namespace: str | None = None):
        self.binary, self.kubeconfig, self.namespace = binary, kubeconfig, namespace

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> str:
        cmd = [self.binary, "--kubeconfig", self.kubeconfig]
        if self.namespace:
            cmd += ["--namespace", self.namespace]
        r = subprocess.run(
            [*cmd, *args], input=stdin, capture_output=True, text=True, timeout=timeout
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}"
            )
        return r.stdout

    def apply(self, *objects: dict) -> None:
        self(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
        )

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json"))


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str) -> Kubectl:
    return Kubectl(kubectl_binary(), kubeconfig)


@pytest.fixture
def namespace(kubectl: Kubectl):
    """A fresh namespace, deleted after the test; yields a Kubectl bound to it."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    try:
        yield Kubectl(kubectl.binary, kubectl.kubeconfig, name)
    finally:
        if not os.environ.get("E2E_KEEP_NAMESPACE"):
            kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def helm() -> str:
    """Our Helm v3 (built by hack/cluster/build.sh helm), or the one on PATH."""
    ours = CACHE / f"helm-{_versions()['HELM_VERSION']}" / "bin" / "helm"
    if ours.exists():
        return str(ours)
    found = shutil.which("helm")
    if not found:
        pytest.skip("no helm: run hack/cluster/build.sh helm")
    return found
