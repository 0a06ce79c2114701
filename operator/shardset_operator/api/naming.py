"""Names, labels, annotations and addresses of everything a ShardSet owns, in one place.

Node ids are StatefulSet ordinals plus one (node ids are positive; the node program
derives its id from its hostname the same way with --id-from-hostname).
"""

from __future__ import annotations

from dataclasses import dataclass

from shardset_proto.shardmap import NodeAddress

RAFT_PORT = 7000
API_PORT = 8000
# With TLS (issue 16): the binary client protocol and the admin API on ports of their own,
# so the client Service exposes API_PORT and WIRE_PORT, and the NetworkPolicy admits only
# the operator and the store's pods to RAFT_PORT and ADMIN_PORT.
WIRE_PORT = 7001
ADMIN_PORT = 8001
# Where a node pod mounts its TLS Secret (shardset_proto.tlsfiles layout:
# ca.crt, and node-<id>.crt / node-<id>.key for every node of the store).
TLS_MOUNT = "/etc/shardset/tls"
MANAGED_BY = "shardset-operator"
# The StatefulSet's annotation holding a hash of its pod template as last applied
# (builders/statefulset.py writes it, plan/upgrade.py reads it back).
TEMPLATE_HASH = "shardset.io/template-hash"


@dataclass(frozen=True)
class Names:
    """Everything named after one ShardSet `name` in `namespace`."""

    name: str
    namespace: str
    # spec.tls.mode is not Disabled: nodes serve https, admin and wire on ports of their
    # own (fixed at creation: the first shard map holds the addresses).
    tls: bool = False

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

    @property
    def store_key(self) -> str:
        """The store in every certificate's identity (shardset_proto.identity)."""
        return f"{self.namespace}.{self.name}"

    @property
    def ca_secret(self) -> str:
        """The operator's CA for this store: ca.crt and ca.key (never mounted by a pod)."""
        return f"{self.name}-ca"

    @property
    def node_tls_secret(self) -> str:
        """ca.crt (the CA bundle nodes trust), node-<id>.crt and node-<id>.key."""
        return f"{self.name}-node-tls"

    @property
    def operator_tls_secret(self) -> str:
        """The operator's client certificate for this store: ca.crt, tls.crt, tls.key."""
        return f"{self.name}-operator-tls"

    def pod(self, node_id: int) -> str:
        return f"{self.name}-{node_id - 1}"

    def host(self, node_id: int) -> str:
        """The pod's stable DNS name through the headless Service."""
        return f"{self.pod(node_id)}.{self.peers_service}.{self.namespace}.svc"

    def peer_address(self, node_id: int) -> str:
        return f"{self.host(node_id)}:{RAFT_PORT}"

    def api_url(self, node_id: int) -> str:
        return f"http://{self.host(node_id)}:{API_PORT}"

    def tls_api_url(self, node_id: int) -> str:
        return f"https://{self.host(node_id)}:{API_PORT}"

    def admin_url(self, node_id: int) -> str:
        return f"https://{self.host(node_id)}:{ADMIN_PORT}"

    def wire_address(self, node_id: int) -> str:
        return f"{self.host(node_id)}:{WIRE_PORT}"

    def node_api(self, node_id: int) -> str:
        """Where the operator reads a node's status and shard map."""
        return self.tls_api_url(node_id) if self.tls else self.api_url(node_id)

    def node_admin(self, node_id: int) -> str:
        """Where the operator sends a node's admin calls."""
        return self.admin_url(node_id) if self.tls else self.api_url(node_id)

    def node_address(self, node_id: int) -> NodeAddress:
        """The node's addresses in the shard map (bootstrap map, AddNode)."""
        if not self.tls:
            return NodeAddress(peer=self.peer_address(node_id), api=self.api_url(node_id))
        return NodeAddress(
            peer=self.peer_address(node_id),
            api=self.tls_api_url(node_id),
            admin=self.admin_url(node_id),
            wire=self.wire_address(node_id),
        )

    def dns_names(self, node_id: int) -> tuple[str, ...]:
        """Every name a node pod is reached by (its certificate's DNS SANs): its own
        names through the peers Service, and the client Service's."""
        pod, peers, ns = self.pod(node_id), self.peers_service, self.namespace
        client = self.client_service
        return (
            f"{pod}.{peers}.{ns}.svc",
            f"{pod}.{peers}.{ns}.svc.cluster.local",
            f"{pod}.{peers}",
            f"{pod}.{peers}.{ns}",
            client,
            f"{client}.{ns}",
            f"{client}.{ns}.svc",
            f"{client}.{ns}.svc.cluster.local",
            "localhost",
        )

    def node_secret(self, prefix: str, node_id: int) -> str:
        """spec.tls mode Secrets: the user's Secret for a node (cert-manager names a
        Certificate's Secret; one per pod ordinal)."""
        return f"{prefix}-{node_id - 1}"

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
