"""ShardSetUsers: the planner's decisions, and one user converged against in-memory
stand-ins for the API server and the store (what a user's application relies on: a
Secret whose certificate the store accepts and whose token it knows; a role change that
reaches the store; renewal before expiry; revocation on delete)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shardset_operator.api.naming import Names
from shardset_operator.api.usermodels import ShardSetUser
from shardset_operator.clients.nodeclient import ClientTls, NodeCallError
from shardset_operator.plan.users import (
    REPUT_AFTER,
    StoredSecret,
    StoreTls,
    blocked,
    plan_user,
    put_due,
    record_digest,
)
from shardset_operator.reconcile.context import Context
from shardset_operator.reconcile.users import (
    StoreUnreachable,
    converge_user,
    new_token,
    revoke_user,
)
from shardset_proto import pki
from shardset_proto.admin import AdminBody
from shardset_proto.identity import Identity, Kind, token_digest

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
NAMES = Names("kv", "prod")
STORE = NAMES.store_key
CA = pki.issue_ca(STORE, NOW)
TLS = StoreTls("Operator", CA.cert_pem, CA)


def _body(
    role: str = "read", prefixes: list[str] | None = None, status: Any = None, generation: int = 1
) -> dict[str, Any]:
    spec: dict[str, Any] = {"shardSet": "kv", "role": role}
    if prefixes is not None:
        spec["prefixes"] = prefixes
    return {
        "apiVersion": "shardset.io/v1alpha1",
        "kind": "ShardSetUser",
        "metadata": {
            "name": "app",
            "namespace": "prod",
            "uid": "user-uid",
            "generation": generation,
        },
        "spec": spec,
        "status": status or {},
    }


def _user(**kw: Any) -> ShardSetUser:
    return ShardSetUser.from_body(_body(**kw))


def _stored(
    token: str, leaf: pki.KeyPair | None, owners: tuple[str, ...] = ("user-uid",)
) -> StoredSecret:
    data = {"token": token.encode(), "ca.crt": CA.cert_pem}
    if leaf is not None:
        data.update({"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem})
    return StoredSecret(data, owners)


# --- the planner ----------------------------------------------------------------------
def test_a_new_user_gets_a_token_and_a_certificate() -> None:
    plan = plan_user(_user(), NAMES, TLS, None, NOW)
    assert plan.token is None and plan.issue_certs
    assert plan.cert_reason == "no certificate yet"
    assert plan.identity.uri == "shardset://prod.kv/user/app"


def test_a_valid_token_and_certificate_are_kept() -> None:
    token = new_token()
    leaf = pki.issue_leaf(CA, Identity.user(STORE, "app"), NOW)
    plan = plan_user(_user(), NAMES, TLS, _stored(token, leaf), NOW + dt.timedelta(days=1))
    assert plan.token == token and plan.cert_reason is None


def test_the_certificate_is_renewed_at_two_thirds_of_its_life() -> None:
    leaf = pki.issue_leaf(CA, Identity.user(STORE, "app"), NOW, days=90)
    stored = _stored(new_token(), leaf)
    assert plan_user(_user(), NAMES, TLS, stored, NOW + dt.timedelta(days=59)).cert_reason is None
    reason = plan_user(_user(), NAMES, TLS, stored, NOW + dt.timedelta(days=61)).cert_reason
    assert reason is not None and "2/3" in reason


def test_a_certificate_of_another_ca_or_identity_is_replaced() -> None:
    other_ca = pki.issue_ca(STORE, NOW)
    foreign = pki.issue_leaf(other_ca, Identity.user(STORE, "app"), NOW)
    reason = plan_user(_user(), NAMES, TLS, _stored(new_token(), foreign), NOW).cert_reason
    assert reason is not None and "another CA" in reason
    wrong = pki.issue_leaf(CA, Identity.user(STORE, "someone"), NOW)
    reason = plan_user(_user(), NAMES, TLS, _stored(new_token(), wrong), NOW).cert_reason
    assert reason is not None and "user/someone" in reason


def test_a_malformed_token_is_replaced() -> None:
    assert plan_user(_user(), NAMES, TLS, _stored("sst_short", None), NOW).token is None


def test_without_the_ca_key_the_user_gets_a_token_only() -> None:
    given = StoreTls("Secrets", CA.cert_pem, None)
    plan = plan_user(_user(), NAMES, given, None, NOW)
    assert not plan.issue_certs and plan.cert_reason is None
    assert blocked(_user(), True, given, None) is None


@pytest.mark.parametrize(
    ("found", "tls", "stored", "reason"),
    [
        (False, TLS, None, "ShardSetNotFound"),
        (True, StoreTls("Disabled"), None, "TlsDisabled"),
        (True, StoreTls("Operator"), None, "WaitingForCA"),
        (True, TLS, StoredSecret({"password": b"x"}, ("someone-else",)), "SecretConflict"),
    ],
)
def test_what_blocks_a_user_is_named(
    found: bool, tls: StoreTls, stored: StoredSecret | None, reason: str
) -> None:
    why = blocked(_user(), found, tls, stored)
    assert why is not None and why.reason == reason and why.message


def test_the_record_is_written_again_when_it_changed_or_is_due() -> None:
    token = new_token()
    user = _user()
    digest = record_digest(user, token, "sset-1")
    assert digest != record_digest(_user(role="readwrite"), token, "sset-1")
    assert digest != record_digest(_user(prefixes=["a/"]), token, "sset-1")
    assert digest != record_digest(user, new_token(), "sset-1")
    assert digest != record_digest(user, token, "sset-2")  # the store was re-created
    ready = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "UserReady",
                "lastTransitionTime": NOW.isoformat(),
            }
        ],
        "appliedDigest": digest,
        "appliedAt": NOW.isoformat(),
    }
    applied = _user(status=ready)
    assert not put_due(applied, digest, NOW + dt.timedelta(minutes=1))
    assert put_due(applied, "other", NOW + dt.timedelta(minutes=1))
    assert put_due(applied, digest, NOW + REPUT_AFTER)
    assert put_due(user, digest, NOW)  # never written


# --- one user converged ---------------------------------------------------------------
class FakeKube:
    def __init__(self, tls: dict[str, Any] | None = None) -> None:
        op = pki.issue_leaf(CA, Identity.operator(STORE), NOW)
        self.secrets: dict[str, StoredSecret] = {
            "kv-ca": StoredSecret({"ca.crt": CA.cert_pem, "ca.key": CA.key_pem}),
            "kv-operator-tls": StoredSecret(
                {"ca.crt": CA.cert_pem, "tls.crt": op.cert_pem, "tls.key": op.key_pem}
            ),
        }
        self.shardsets: dict[str, dict[str, Any]] = {
            "kv": {
                "metadata": {"name": "kv", "uid": "sset-1"},
                "spec": {"nodes": 3, **({"tls": tls} if tls else {})},
            }
        }
        self.applied: list[dict[str, Any]] = []

    async def shardset(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.shardsets.get(name)

    async def secret(self, namespace: str, name: str) -> StoredSecret | None:
        return self.secrets.get(name)

    async def apply(self, obj: dict[str, Any]) -> None:
        self.applied.append(obj)
        data = {k: base64.b64decode(v) for k, v in obj["data"].items()}
        owners = tuple(o["uid"] for o in obj["metadata"]["ownerReferences"])
        self.secrets[obj["metadata"]["name"]] = StoredSecret(data, owners)


class FakeNodes:
    def __init__(self) -> None:
        self.calls: list[tuple[str, AdminBody]] = []
        self.down: set[str] = set()
        self.stores: list[tuple[str, bytes]] = []

    def for_store(self, store: str, tls: ClientTls | None) -> FakeNodes:
        """The client of one store, with the operator's certificate of that store."""
        assert tls is not None, "users are written over the admin port: TLS only"
        self.stores.append((store, tls.cert_pem))
        return self

    async def admin(self, url: str, body: AdminBody) -> dict[str, Any]:
        if url in self.down:
            raise NodeCallError(f"POST {url}{body.path()}: ClientConnectorError")
        self.calls.append((url, body))
        return {}


def _converge(
    kube: FakeKube, nodes: FakeNodes, body: dict[str, Any], now: dt.datetime = NOW
) -> dict[str, Any]:
    ctx = Context(kube, nodes, "img")  # type: ignore[arg-type]
    out = asyncio.run(converge_user(ctx, body, now))
    body["status"] = out.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return body


def test_a_new_user_gets_a_secret_the_store_accepts() -> None:
    kube, nodes = FakeKube(), FakeNodes()
    body = _converge(kube, nodes, _body(role="readwrite", prefixes=["orders/"]))
    assert body["status"]["conditions"][0]["status"] == "True"
    data = kube.secrets["app"].data
    assert set(data) >= {"ca.crt", "tls.crt", "tls.key", "token", "url", "wire"}
    assert data["url"] == b"https://kv.prod.svc:8000" and data["wire"] == b"kv.prod.svc:7001"
    # the certificate is one the store's nodes accept for this user, with its own key
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    der = cert.public_bytes(serialization.Encoding.DER)
    ident = pki.peer_identity(der, STORE)
    assert (ident.kind, ident.name) == (Kind.USER, "app")
    assert pki.issued_by(cert, pki.load_certs(data["ca.crt"]))
    assert pki.load_key(data["tls.key"]).public_key() == cert.public_key()
    # the store knows the user, its role, prefixes and the token's digest (not the token)
    [(url, put)] = nodes.calls
    assert url == NAMES.admin_url(1)
    # over the admin port, with the operator's certificate of this store
    assert nodes.stores == [(STORE, kube.secrets["kv-operator-tls"].data["tls.crt"])]
    assert put.to_json() == {
        "name": "app",
        "role": "readwrite",
        "prefixes": ["orders/"],
        "token_sha256": token_digest(data["token"].decode()),
    }
    assert body["status"]["secret"] == "app"
    assert body["status"]["identity"] == "shardset://prod.kv/user/app"
    owner = kube.applied[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("ShardSetUser", "user-uid")


def test_a_second_run_changes_nothing_and_a_role_change_reaches_the_store() -> None:
    kube, nodes = FakeKube(), FakeNodes()
    body = _converge(kube, nodes, _body())
    first = dict(kube.secrets["app"].data)
    _converge(kube, nodes, body, NOW + dt.timedelta(seconds=10))
    assert kube.secrets["app"].data == first and len(nodes.calls) == 1
    assert len(kube.applied) == 1  # an unchanged Secret is not written again
    body["spec"]["role"] = "readwrite"
    _converge(kube, nodes, body, NOW + dt.timedelta(seconds=20))
    assert kube.secrets["app"].data["token"] == first["token"]  # same credentials
    assert [b.to_json()["role"] for _, b in nodes.calls] == ["read", "readwrite"]


def test_renewal_keeps_the_token_and_needs_no_store_write() -> None:
    kube, nodes = FakeKube(), FakeNodes()
    body = _converge(kube, nodes, _body())
    first = dict(kube.secrets["app"].data)
    later = NOW + dt.timedelta(days=61)
    body["status"]["appliedAt"] = later.isoformat()  # written recently: not due again
    _converge(kube, nodes, body, later)
    renewed = kube.secrets["app"].data
    assert renewed["tls.crt"] != first["tls.crt"] and renewed["token"] == first["token"]
    assert pki.info_pem(renewed["tls.crt"]).not_after > pki.info_pem(first["tls.crt"]).not_after
    assert len(nodes.calls) == 1


def test_a_store_no_node_answers_is_named_and_retried() -> None:
    kube, nodes = FakeKube(), FakeNodes()
    nodes.down = {NAMES.admin_url(n) for n in (1, 2, 3)}
    body = _converge(kube, nodes, _body())
    cond = body["status"]["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", "StoreUnreachable")
    assert "put-user" in cond["message"] or "PUT_USER" in cond["message"].upper()
    nodes.down = {NAMES.admin_url(1)}  # the next run reaches node 2
    body = _converge(kube, nodes, body, NOW + dt.timedelta(seconds=10))
    assert body["status"]["conditions"][0]["status"] == "True"
    assert [u for u, _ in nodes.calls] == [NAMES.admin_url(2)]


def test_without_the_operators_certificate_the_store_is_not_called() -> None:
    kube, nodes = FakeKube(), FakeNodes()
    del kube.secrets["kv-operator-tls"]
    body = _converge(kube, nodes, _body())
    cond = body["status"]["conditions"][0]
    assert (cond["reason"], "kv-operator-tls" in cond["message"]) == ("StoreUnreachable", True)
    assert not nodes.calls


def test_a_secret_the_user_does_not_own_is_left_alone() -> None:
    kube, nodes = FakeKube(), FakeNodes()
    kube.secrets["app"] = StoredSecret({"password": b"hunter2"}, ("other",))
    body = _converge(kube, nodes, _body())
    assert body["status"]["conditions"][0]["reason"] == "SecretConflict"
    assert kube.secrets["app"].data == {"password": b"hunter2"} and not nodes.calls


def test_user_provided_certificates_give_a_token_only_user() -> None:
    kube, nodes = FakeKube(tls={"mode": "Secrets", "caSecret": "my-ca"}), FakeNodes()
    kube.secrets["my-ca"] = StoredSecret({"ca.crt": CA.cert_pem})
    body = _converge(kube, nodes, _body())
    assert body["status"]["conditions"][0]["status"] == "True"
    assert "tls.crt" not in kube.secrets["app"].data
    assert kube.secrets["app"].data["ca.crt"] == CA.cert_pem


def test_deleting_a_user_deletes_it_in_the_store() -> None:
    kube, nodes = FakeKube(), FakeNodes()
    body = _converge(kube, nodes, _body())
    ctx = Context(kube, nodes, "img")  # type: ignore[arg-type]
    asyncio.run(revoke_user(ctx, body))
    assert nodes.calls[-1][1].to_json() == {"name": "app"}
    nodes.down = {NAMES.admin_url(n) for n in (1, 2, 3)}
    with pytest.raises(StoreUnreachable):  # the finalizer holds the user; Kopf retries
        asyncio.run(revoke_user(ctx, body))
    del kube.shardsets["kv"]  # a store that is gone has nothing left to revoke
    assert "gone" in asyncio.run(revoke_user(ctx, body))
