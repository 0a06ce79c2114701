"""Names, labels, annotations and addresses of everything a ShardSet owns, in one place.

Node ids are StatefulSet ordinals plus one (node ids are positive; the node program
derives its id from its hostname the same way with --id-from-hostname).
"""

from __future__ import annotations

from dataclasses import dataclass

RAFT_PORT = 7000
API_PORT = 8000
MANAGED_BY = "shardset-operator"
# The StatefulSet's annotation holding a hash of its pod template as last applied
# (builders/statefulset.py writes it, plan/upgrade.py reads it back).
TEMPLATE_HASH = "shardset.io/template-hash"


@dataclass(frozen=True)
class Names:
    """Everything named after one ShardSet `name` in `namespace`."""

    name: str
    namespace: str

    @property
    def statefulset(self) -> str:
        return self.name

    @property
    def peers_service(self) -> str:
        return f"{self.name}-peers"

    @property
    def client_service(self) -> str:
        return self.name

    @property
    def configmap(self) -> str:
        return f"{self.name}-config"

    @property
    def pdb(self) -> str:
        return self.name

    def pod(self, node_id: int) -> str:
        return f"{self.name}-{node_id - 1}"

    def host(self, node_id: int) -> str:
        """The pod's stable DNS name through the headless Service."""
        return f"{self.pod(node_id)}.{self.peers_service}.{self.namespace}.svc"

    def peer_address(self, node_id: int) -> str:
        return f"{self.host(node_id)}:{RAFT_PORT}"

    def api_url(self, node_id: int) -> str:
        return f"http://{self.host(node_id)}:{API_PORT}"

    def selector(self) -> dict[str, str]:
        """Labels that pick this store's node pods (and so its PVCs)."""
        return {
            "app.kubernetes.io/name": "shardset",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": "node",
        }

    def labels(self) -> dict[str, str]:
        return {**self.selector(), "app.kubernetes.io/managed-by": MANAGED_BY}

    def selector_string(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector().items()))


def node_id_of_pod(pod_name: str, names: Names) -> int | None:
    """The node id of a pod of this StatefulSet, None for a pod of anything else."""
    prefix = f"{names.statefulset}-"
    ordinal = pod_name.removeprefix(prefix)
    if ordinal == pod_name or not ordinal.isdigit():
        return None
    return int(ordinal) + 1
