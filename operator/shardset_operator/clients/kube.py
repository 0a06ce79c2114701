"""Idempotent I/O against the Kubernetes API (the kubernetes client, off the event loop).

Objects are written with server-side apply under one field manager: applying the same
object twice changes nothing (no new resourceVersion, no events), fields set by others
(e.g. a HorizontalPodAutoscaler, kubectl annotate) are left alone, and a field the
operator stops setting is removed. The client is synchronous, so every call runs in a
worker thread.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from shardset_operator.api.models import GROUP, PLURAL, VERSION
from shardset_operator.api.observed import PodState, StatefulSetState
from shardset_operator.plan.users import StoredSecret

FIELD_MANAGER = "shardset-operator"
APPLY = "application/apply-patch+yaml"


class KubeError(RuntimeError):
    """A Kubernetes API call failed; the message names the object and the verb."""


def load_credentials() -> None:
    """In a pod: the service account; elsewhere: the current kubeconfig context."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Kube:
    def __init__(self) -> None:
        self.core = client.CoreV1Api()
        self.apps = client.AppsV1Api()
        self.policy = client.PolicyV1Api()
        self.custom = client.CustomObjectsApi()
        self.networking = client.NetworkingV1Api()

    async def _call(
        self, what: str, fn: Callable[..., Any], *args: Any, missing_ok: bool = False, **kw: Any
    ) -> Any:
        """`fn` off the event loop; with `missing_ok`, None when the object is not there."""
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except ApiException as e:
            if missing_ok and e.status == 404:
                return None
            raise KubeError(f"{what}: {e.status} {e.reason}: {_api_message(e)}") from e

    async def apply(self, obj: dict[str, Any]) -> None:
        kind, meta = obj["kind"], obj["metadata"]
        patch = {
            "ConfigMap": self.core.patch_namespaced_config_map,
            "Service": self.core.patch_namespaced_service,
            "StatefulSet": self.apps.patch_namespaced_stateful_set,
            "PodDisruptionBudget": self.policy.patch_namespaced_pod_disruption_budget,
            "NetworkPolicy": self.networking.patch_namespaced_network_policy,
            "Secret": self.core.patch_namespaced_secret,
        }[kind]
        await self._call(
            f"apply {kind} {meta['namespace']}/{meta['name']}",
            patch,
            meta["name"],
            meta["namespace"],
            obj,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
        )

    async def delete_network_policy(self, namespace: str, name: str) -> None:
        """Gone already is fine (networkPolicy.enabled false: the policy is removed)."""
        await self._call(
            f"delete NetworkPolicy {namespace}/{name}",
            self.networking.delete_namespaced_network_policy,
            name,
            namespace,
            missing_ok=True,
        )

    async def secret(self, namespace: str, name: str) -> StoredSecret | None:
        """A Secret's data (decoded) and its owners' uids; None when there is none."""
        sec = await self._call(
            f"read Secret {namespace}/{name}",
            self.core.read_namespaced_secret,
            name,
            namespace,
            missing_ok=True,
        )
        if sec is None:
            return None
        data = {k: base64.b64decode(v) for k, v in (sec.data or {}).items()}
        owners = tuple(o.uid for o in (sec.metadata.owner_references or []))
        return StoredSecret(data, owners)

    async def shardset(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ShardSet as the API server has it; None when there is none."""
        found = await self._call(
            f"read ShardSet {namespace}/{name}",
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            missing_ok=True,
        )
        return dict(found) if found is not None else None

    async def patch_shardset_status(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """A merge patch of a ShardSet's status (progress shown while a reconcile runs)."""
        await self._call(
            f"patch status of ShardSet {namespace}/{name}",
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": body},
        )

    async def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The ConfigMap's data; None when there is no such ConfigMap."""
        cm = await self._call(
            f"read ConfigMap {namespace}/{name}",
            self.core.read_namespaced_config_map,
            name,
            namespace,
            missing_ok=True,
        )
        return None if cm is None else dict(cm.data or {})

    async def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """The Secret's data, decoded; None when there is no such Secret."""
        found = await self.secret(namespace, name)
        return None if found is None else found.data

    async def statefulset(self, namespace: str, name: str) -> StatefulSetState | None:
        sts = await self._call(
            f"read StatefulSet {namespace}/{name}",
            self.apps.read_namespaced_stateful_set,
            name,
            namespace,
            missing_ok=True,
        )
        if sts is None:
            return None
        st = sts.status
        return StatefulSetState(
            replicas=sts.spec.replicas or 0,
            ready=(st.ready_replicas or 0) if st else 0,
            updated=(st.updated_replicas or 0) if st else 0,
            current_revision=st.current_revision if st else None,
            update_revision=st.update_revision if st else None,
            observed_generation=st.observed_generation if st else None,
            generation=sts.metadata.generation,
            partition=_partition(sts),
            annotations=dict(sts.metadata.annotations or {}),
        )

    async def pods(self, namespace: str, selector: str) -> list[PodState]:
        pods = await self._call(
            f"list pods in {namespace} ({selector})",
            self.core.list_namespaced_pod,
            namespace,
            label_selector=selector,
        )
        return [_pod_state(p) for p in pods.items]

    async def delete_volume_claims(self, namespace: str, selector: str) -> list[str]:
        """Delete the PVCs matching `selector`; their names. In-use claims go once their
        pods are gone (pvc-protection)."""
        claims = await self._call(
            f"list PVCs in {namespace} ({selector})",
            self.core.list_namespaced_persistent_volume_claim,
            namespace,
            label_selector=selector,
        )
        names = [c.metadata.name for c in claims.items]
        for name in names:
            await self._call(
                f"delete PVC {namespace}/{name}",
                self.core.delete_namespaced_persistent_volume_claim,
                name,
                namespace,
                missing_ok=True,
            )
        return names


def _pod_state(pod: Any) -> PodState:
    conditions = (pod.status.conditions or []) if pod.status else []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    return PodState(
        name=pod.metadata.name,
        ready=ready,
        terminating=pod.metadata.deletion_timestamp is not None,
        revision=(pod.metadata.labels or {}).get("controller-revision-hash"),
    )


def _partition(sts: Any) -> int:
    strategy = sts.spec.update_strategy
    rolling = strategy.rolling_update if strategy is not None else None
    return int(rolling.partition or 0) if rolling is not None else 0


def _api_message(e: ApiException) -> str:
    import json

    try:
        return str(json.loads(e.body or "{}").get("message", e.body))
    except (ValueError, AttributeError):
        return str(e.body)
