"""Security on a real cluster (issue 16), on ONE store shared by every test, in a namespace
that enforces Pod Security Admission `restricted`:

* the store becomes Ready under `restricted` (node pods: non-root, seccomp RuntimeDefault,
  no capabilities, no service account token) and has its NetworkPolicy;
* ShardSetUsers get Secrets; an authenticated, checked workload (linearizable, no
  acknowledged write lost) runs through the client Service while the tests below run,
  and must see ZERO failed requests, across the certificate rotation too;
* an intruder pod in another namespace, with no credentials and then with a certificate
  of its own CA claiming to be node 1, is refused on every port (api 401, wire 401,
  admin and peer handshakes refused). The local cluster's bridge CNI does not enforce
  NetworkPolicies, so this is TLS and authentication refusing it on their own;
* a `read` user can read but not write (403), by token and by certificate;
* a deleted ShardSetUser loses access within seconds;
* the operator renews the node certificates and rotates the CA (triggered by making the
  current ones due: re-dated copies with the same keys, which every node still accepts)
  with zero failed requests and zero pod restarts.

Every probe runs in a pod of the node image (the only image this cluster has besides the
operator's): tests/e2e/secprobe.py and workload.py, from a ConfigMap.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time
import uuid
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_operator_e2e import (  # the shared installation and helpers
    MARKER,
    NODE_IMAGE,
    READY_TIMEOUT,
    WORKLOAD,
    Install,
    history_of,
    inst,
    operator_logs,
    result_of,
    wait_until,
)

from shardset_sim.linearizability import check_kv

pytestmark = pytest.mark.e2e

__all__ = ["inst"]

NAME = "sec"
PROBE = os.path.join(os.path.dirname(__file__), "secprobe.py")
WORKLOAD_SECONDS = int(os.environ.get("E2E_SECURITY_WORKLOAD_S", "420"))
REVOKE_WITHIN_S = 10.0
RUN: dict[str, Any] = {}  # the workload's pod and the node pods as first seen


def log(msg: str) -> None:
    print(f"[security] {msg}", flush=True)


def user(name: str, role: str) -> dict[str, Any]:
    return {
        "apiVersion": "shardset.io/v1alpha1",
        "kind": "ShardSetUser",
        "metadata": {"name": name},
        "spec": {"shardSet": NAME, "role": role},
    }


@pytest.fixture(scope="module")
def store(inst: Install) -> Any:
    ns = inst.app.namespace
    inst.k(
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
        "--overwrite",
    )
    scripts = inst.app(
        "create",
        "configmap",
        "e2e-security",
        f"--from-file=secprobe.py={PROBE}",
        f"--from-file=workload.py={WORKLOAD}",
        "--dry-run=client",
        "-o",
        "yaml",
    )
    inst.app("apply", "-f", "-", stdin=scripts)
    inst.app.apply(
        {
            "apiVersion": "shardset.io/v1alpha1",
            "kind": "ShardSet",
            "metadata": {"name": NAME},
            "spec": {
                "nodes": 3,
                "shards": 4,
                "replicationFactor": 3,
                "storage": {"retainOnDelete": False},
            },
        },
        user("app", "readwrite"),
        user("reader", "read"),
        user("temp", "readwrite"),
    )
    try:
        yield inst
    finally:  # users first: their finalizer needs the operator and the store
        inst.app(
            "delete",
            "shardsetusers",
            "--all",
            "--wait=true",
            "--timeout=90s",
            check=False,
            timeout=120,
        )


# --- pods ----------------------------------------------------------------------------
def probe_pod(
    k: Any,
    args: list[str],
    secret: str | None = None,
    script: str = "secprobe.py",
    configmap: str = "e2e-security",
) -> str:
    """A pod of the node image running `script` (restricted-compliant); its name."""
    pod = f"e2e-{script.split('.')[0]}-{uuid.uuid4().hex[:6]}"
    mounts = [{"name": "code", "mountPath": "/e2e"}]
    volumes: list[dict[str, Any]] = [{"name": "code", "configMap": {"name": configmap}}]
    if secret is not None:
        mounts.append({"name": "creds", "mountPath": "/creds", "readOnly": True})
        volumes.append({"name": "creds", "secret": {"secretName": secret}})
    k.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "labels": {"app.kubernetes.io/part-of": "shardset-e2e"}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "probe",
                        "image": NODE_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python", f"/e2e/{script}", *args],
                        "volumeMounts": mounts,
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
                "volumes": volumes,
            },
        }
    )
    return pod


def finished(k: Any, pod: str, timeout: float = 180) -> dict[str, Any]:
    """The JSON a pod printed behind the marker, once it finished."""
    wait_until(
        f"pod {pod} to finish",
        lambda: k.json("get", "pod", pod)["status"].get("phase") in ("Succeeded", "Failed"),
        timeout,
    )
    out = k("logs", pod)
    for line in out.splitlines():
        if line.startswith(MARKER):
            return dict(json.loads(line[len(MARKER) :]))
    raise AssertionError(f"pod {pod} printed no result:\n{out[-3000:]}")


def secret_data(k: Any, name: str) -> dict[str, bytes]:
    raw = k.json("get", "secret", name).get("data") or {}
    return {key: base64.b64decode(v) for key, v in raw.items()}


def node_pods(k: Any) -> dict[str, tuple[str, int]]:
    pods = k.json(
        "get", "pods", "-l", f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=node"
    )["items"]
    return {
        p["metadata"]["name"]: (
            p["metadata"]["uid"],
            sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses", [])),
        )
        for p in pods
    }


# --- the tests, in order ---------------------------------------------------------------
def test_store_is_ready_under_restricted_pod_security(store: Install) -> None:
    app = store.app

    def ready() -> bool:
        conds = app.json("get", "sset", NAME).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    try:
        wait_until(f"{NAME} Ready in a restricted namespace", ready, READY_TIMEOUT)
    except AssertionError as e:
        events = app("get", "events", "--sort-by=.lastTimestamp", check=False)[-3000:]
        raise AssertionError(
            f"{e}\n--- events\n{events}\n--- operator\n{operator_logs(store)}"
        ) from None
    ns = store.k.json("get", "namespace", app.namespace)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for pod in app.json("get", "pods", "-l", f"app.kubernetes.io/instance={NAME}")["items"]:
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    RUN["pods"] = node_pods(app)
    pol = app.json("get", "networkpolicy", NAME)
    fenced, open_ = pol["spec"]["ingress"]
    assert {p["port"] for p in fenced["ports"]} == {7000, 8001}
    assert {p["port"] for p in open_["ports"]} == {8000, 7001}


def test_users_get_their_credentials(store: Install) -> None:
    app = store.app

    def users_ready() -> bool:
        users = app.json("get", "shardsetusers")["items"]
        return (
            len(users) == 3
            and all(
                c["status"] == "True"
                for u in users
                for c in u.get("status", {}).get("conditions", [])
                if c["type"] == "Ready"
            )
            and all(u.get("status", {}).get("conditions") for u in users)
        )

    wait_until("three ShardSetUsers Ready", users_ready, 120)
    data = secret_data(app, "app")
    assert {"ca.crt", "tls.crt", "tls.key", "token", "url", "wire"} <= set(data)
    assert data["token"].startswith(b"sst_")
    assert data["url"] == f"https://{NAME}.{app.namespace}.svc:8000".encode()


def test_an_authenticated_workload_starts(store: Install) -> None:
    """Runs while the tests below do; checked at the end (after the rotation)."""
    url = secret_data(store.app, "app")["url"].decode()
    RUN["workload"] = probe_pod(
        store.app,
        [
            "--endpoint",
            url,
            "--timeout",
            "10",
            "--creds",
            "/creds",
            "workload",
            "--clients",
            "4",
            "--ops",
            "1000000",
            "--keys",
            "16",
            "--prefix",
            "sec",
            "--seconds",
            str(WORKLOAD_SECONDS),
            "--final-reads",
        ],
        secret="app",
        script="workload.py",
    )
    got = finished(
        store.app,
        probe_pod(
            store.app,
            ["user", "--creds", "/creds", "--auth", "cert", "--key", "by-cert"],
            secret="app",
        ),
    )
    assert got["put"] in ("200", "201", "204") and got["get"] == "200", got


def test_an_intruder_is_refused_on_every_port(store: Install) -> None:
    ns = f"intruder-{uuid.uuid4().hex[:6]}"
    store.k("create", "namespace", ns)
    k = type(store.app)(store.app.binary, store.app.kubeconfig, ns)
    try:
        cm = k(
            "create",
            "configmap",
            "e2e-security",
            f"--from-file=secprobe.py={PROBE}",
            "--dry-run=client",
            "-o",
            "yaml",
        )
        k("apply", "-f", "-", stdin=cm)
        target = store.app.namespace
        got = finished(
            k,
            probe_pod(
                k,
                [
                    "intruder",
                    "--service",
                    f"{NAME}.{target}.svc",
                    "--pod",
                    f"{NAME}-0.{NAME}-peers.{target}.svc",
                    "--store",
                    f"{target}.{NAME}",
                ],
            ),
        )
    finally:
        store.k("delete", "namespace", ns, "--wait=false", check=False)
    log(f"intruder: {got}")
    assert got["api"] == "401" and got["api_put"] == "401", got
    assert got["wire"] == "401", got
    for port in ("admin", "admin_consistency", "peer", "forged_admin", "forged_peer"):
        assert got[port].startswith("refused"), (port, got[port])
    assert got["forged_api"] == "401" or got["forged_api"].startswith("refused"), got
    # the store's read mode is what it was: the admin call changed nothing
    mode = store.app.json("get", "sset", NAME)["status"]["consistency"]["mode"]
    assert mode == "linearizable"


@pytest.mark.parametrize("auth", ["token", "cert"])
def test_a_read_user_can_read_but_not_write(store: Install, auth: str) -> None:
    got = finished(
        store.app,
        probe_pod(
            store.app,
            ["user", "--creds", "/creds", "--auth", auth, "--key", "by-cert"],
            secret="reader",
        ),
    )
    assert got["put"] == "403", got
    assert got["get"] == "200" and got["status"] == "200", got


def test_a_deleted_user_loses_access_within_seconds(store: Install) -> None:
    app = store.app
    pod = probe_pod(app, ["watch", "--creds", "/creds", "--seconds", "45"], secret="temp")
    wait_until(
        f"{pod} running",
        lambda: app.json("get", "pod", pod)["status"].get("phase") == "Running",
        120,
    )
    time.sleep(12)
    deleted_at = time.time()
    app("delete", "shardsetuser", "temp", "--wait=false")
    seen = [(t, s) for t, s in finished(app, pod, 120)["seen"]]
    before = [s for t, s in seen if t < deleted_at]
    assert before and all(s in ("200", "404") for s in before[-5:]), before[-10:]
    after = [(t, s) for t, s in seen if t >= deleted_at]
    first = next((t for t, s in after if s == "401"), None)
    assert first is not None, f"still answered after the delete: {after[-5:]}"
    assert all(s == "401" for t, s in after if t >= first), after
    log(f"revoked {first - deleted_at:.1f}s after the delete")
    assert first - deleted_at <= REVOKE_WITHIN_S
    wait_until(
        "ShardSetUser temp and its Secret gone",
        lambda: (
            not (
                app("get", "shardsetuser", "temp", "--ignore-not-found", "-o", "name").strip()
                or app("get", "secret", "temp", "--ignore-not-found", "-o", "name").strip()
            )
        ),
        60,
    )


# --- rotation --------------------------------------------------------------------------
def redate(pem: bytes, signer_pem: bytes, start: dt.datetime, end: dt.datetime) -> bytes:
    """The same certificate (subject, key, extensions) valid from `start` to `end`, signed
    again by `signer_pem`'s key: a node accepts it exactly as before, and the operator
    sees it past two thirds of its life."""
    cert = x509.load_pem_x509_certificate(pem)
    key = serialization.load_pem_private_key(signer_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def patch_secret(k: Any, name: str, data: dict[str, bytes]) -> None:
    body = {"data": {key: base64.b64encode(v).decode() for key, v in data.items()}}
    k("patch", "secret", name, "--type=merge", "-p", json.dumps(body))


def node_serials(k: Any) -> dict[int, str]:
    """Each node's loaded certificate serial (GET /v1/status from node 1's pod, with its
    own node certificate)."""
    script = (
        "import json, ssl, urllib.request\n"
        "ctx = ssl.create_default_context(cafile='/etc/shardset/tls/ca.crt')\n"
        "ctx.load_cert_chain('/etc/shardset/tls/node-1.crt', '/etc/shardset/tls/node-1.key')\n"
        "out = {}\n"
        "for i in range(3):\n"
        f"    url = f'https://{NAME}-{{i}}.{NAME}-peers:8000/v1/status'\n"
        "    try:\n"
        "        out[i + 1] = json.load(urllib.request.urlopen(url, context=ctx, timeout=3))"
        "['tls']['certSerial']\n"
        "    except Exception as e:\n"
        "        out[i + 1] = repr(e)\n"
        "print(json.dumps(out))\n"
    )
    return {
        int(n): s
        for n, s in json.loads(
            k("exec", f"{NAME}-0", "-c", "node", "--", "python", "-c", script)
        ).items()
    }


def test_certificates_rotate_with_no_failed_request_and_no_restart(store: Install) -> None:
    app = store.app
    now = dt.datetime.now(dt.UTC)
    ca = secret_data(app, f"{NAME}-ca")
    nodes = secret_data(app, f"{NAME}-node-tls")
    old_ca_key = (
        x509.load_pem_x509_certificate(ca["ca.crt"])
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # Leaves past 2/3 of their life (renewal), the CA past 2/3 of its own (rotation).
    due_leaves = {
        f"node-{i}.crt": redate(
            nodes[f"node-{i}.crt"],
            ca["ca.key"],
            now - dt.timedelta(days=80),
            now + dt.timedelta(days=10),
        )
        for i in (1, 2, 3)
    }
    patch_secret(app, f"{NAME}-node-tls", due_leaves)
    patch_secret(
        app,
        f"{NAME}-ca",
        {
            "ca.crt": redate(
                ca["ca.crt"],
                ca["ca.key"],
                now - dt.timedelta(days=3000),
                now + dt.timedelta(days=600),
            )
        },
    )
    log("node certificates and CA made due")

    def rotated() -> dict[int, str] | None:
        ca_now = secret_data(app, f"{NAME}-ca")
        bundle = secret_data(app, f"{NAME}-node-tls")
        new_ca = x509.load_pem_x509_certificate(ca_now["ca.crt"])
        key = new_ca.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if key == old_ca_key or set(ca_now) - {"ca.crt", "ca.key"}:
            return None  # not rotated, or the rotation is still in progress
        if len(x509.load_pem_x509_certificates(bundle["ca.crt"])) != 1:
            return None  # the old CA is still trusted
        want = {}
        for i in (1, 2, 3):
            leaf = x509.load_pem_x509_certificate(bundle[f"node-{i}.crt"])
            leaf.verify_directly_issued_by(new_ca)
            want[i] = format(leaf.serial_number, "x")
        loaded = node_serials(app)
        return (
            want
            if all(loaded[i].lower().lstrip("0") == want[i].lstrip("0") for i in want)
            else None
        )

    wait_until(
        "the CA rotated and every node serving its new certificate",
        rotated,
        READY_TIMEOUT * 2,
        every=5,
    )
    assert node_pods(app) == RUN["pods"], "a node pod restarted or was replaced"
    result = result_of(store, RUN["workload"], timeout=WORKLOAD_SECONDS + 300)
    history = history_of(result)
    failed = [o for o in result["history"] if o["complete"] is None]
    assert not failed, f"{len(failed)} failed requests, e.g. {failed[:3]}"
    writes = [o for o in history if o.kind != "get"]
    assert len(writes) >= 100, f"only {len(writes)} writes: the store did not serve the workload"
    verdict = check_kv(history)
    assert verdict.ok and not verdict.unknown, verdict.explanation
    assert node_pods(app) == RUN["pods"]
