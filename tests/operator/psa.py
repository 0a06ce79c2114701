"""The Pod Security Admission `restricted` profile (Kubernetes 1.34), as a check of one pod
spec: the list of what violates it, empty when the pod would be admitted.

Written from the profile's documented controls (kubernetes.io/docs/concepts/security/
pod-security-standards): baseline (no host namespaces, ports or paths, no privileged
containers, no added capabilities beyond the default set, default /proc mount, no
unsafe sysctls, no SELinux type/user overrides) and restricted (volume types, no
privilege escalation, non-root, seccomp RuntimeDefault or Localhost, drop ALL and add
at most NET_BIND_SERVICE). The e2e test runs the real admission controller.
"""

from __future__ import annotations

from typing import Any

ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(key)
    for vol in pod.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {vol['name']}: {sorted(kinds)}")
    psc = pod.get("securityContext", {})
    for c in _containers(pod):
        out += [f"container {c['name']}: {v}" for v in _container(c, psc)]
    return out


def _container(c: dict[str, Any], psc: dict[str, Any]) -> list[str]:
    sc = c.get("securityContext", {})
    out: list[str] = []
    if sc.get("privileged"):
        out.append("privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append("allowPrivilegeEscalation must be false")
    if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
        out.append("runAsNonRoot must be true")
    if sc.get("runAsUser", psc.get("runAsUser")) == 0:
        out.append("runAsUser 0")
    seccomp = sc.get("seccompProfile", psc.get("seccompProfile")) or {}
    if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
        out.append("seccompProfile must be RuntimeDefault or Localhost")
    caps = sc.get("capabilities", {})
    if "ALL" not in caps.get("drop", []):
        out.append("capabilities must drop ALL")
    if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
        out.append(f"capabilities add {caps['add']}")
    if any(p.get("hostPort") for p in c.get("ports", [])):
        out.append("hostPort")
    return out
