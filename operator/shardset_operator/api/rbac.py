"""Exactly the Kubernetes API access the operator needs (for least-privilege RBAC).

The Helm chart's (Cluster)Role is written from `RULES`; docs/operator.md lists the
same table, and tests/operator/test_rbac.py checks that every API call the operator
makes is covered. With WATCH_NAMESPACE set, the namespaced rules can be a Role in each
watched namespace, but Kopf still needs the cluster-scoped rules marked below.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    api_group: str  # "" is the core group
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    cluster_scoped: bool = False

    def as_k8s(self) -> dict[str, list[str]]:
        return {
            "apiGroups": [self.api_group],
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


RULES: tuple[Rule, ...] = (
    Rule(
        "shardset.io",
        ("shardsets",),
        ("get", "list", "watch", "patch"),
        "watch ShardSets; Kopf patches its finalizer and progress annotations",
    ),
    Rule("shardset.io", ("shardsets/status",), ("get", "patch"), "write status"),
    Rule(
        "shardset.io",
        ("shardsets/finalizers",),
        ("update",),
        "owned objects block their owner's deletion (blockOwnerDeletion); clusters with "
        "the OwnerReferencesPermissionEnforcement admission plugin check this",
    ),
    Rule(
        "",
        ("configmaps",),
        ("get", "create", "patch"),
        "read the bootstrap map; server-side apply of `<name>-config`",
    ),
    Rule("", ("services",), ("create", "patch"), "server-side apply of `<name>`, `<name>-peers`"),
    Rule(
        "",
        ("secrets",),
        ("get", "create", "patch"),
        "the store's CA and certificates (`<name>-ca`, `<name>-node-tls`, "
        "`<name>-operator-tls`); read the Secrets spec.tls names",
    ),
    Rule(
        "apps",
        ("statefulsets",),
        ("get", "create", "patch"),
        "server-side apply; read its rollout",
    ),
    Rule("policy", ("poddisruptionbudgets",), ("create", "patch"), "server-side apply"),
    Rule("", ("pods",), ("list",), "count ready node pods"),
    Rule(
        "",
        ("persistentvolumeclaims",),
        ("list", "delete"),
        "delete volumes on ShardSet deletion when storage.retainOnDelete is false",
    ),
    Rule("", ("events",), ("create",), "Kopf posts Events about each ShardSet"),
    Rule(
        "kopf.dev",
        ("clusterkopfpeerings",),
        ("get", "list", "watch", "patch"),
        "peering (one active replica) when watching all namespaces",
        cluster_scoped=True,
    ),
    Rule(
        "kopf.dev",
        ("kopfpeerings",),
        ("get", "list", "watch", "patch"),
        "peering in each watched namespace when WATCH_NAMESPACE is set",
    ),
    Rule(
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        ("list", "watch"),
        "Kopf discovers the ShardSet and peering resources",
        cluster_scoped=True,
    ),
    Rule(
        "",
        ("namespaces",),
        ("list", "watch"),
        "Kopf follows namespaces when watching all of them",
        cluster_scoped=True,
    ),
)


def table() -> str:
    """The rules as a Markdown table (docs/operator.md)."""
    lines = ["| API group | Resources | Verbs | Why |", "|---|---|---|---|"]
    for r in RULES:
        group = r.api_group or "(core)"
        scope = " (cluster-scoped)" if r.cluster_scoped else ""
        lines.append(
            f"| {group} | {', '.join(r.resources)}{scope} | {', '.join(r.verbs)} | {r.why} |"
        )
    return "\n".join(lines)
