"""The node's authentication and authorization decisions (shardset_node.auth), as pure
functions: the whole role x action table, key and scan scopes, and each credential
failure named (missing, malformed, unknown or revoked token; a certificate of another
store, of a deleted user)."""

from __future__ import annotations

import ssl
from typing import cast

import pytest
from authkit import OTHER, STORE, TOKENS, Pki, Users
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from shardset_node.auth import Authenticator, AuthError, Principal, Via, authorize
from shardset_proto.identity import Action, Identity, Kind, Role, token_digest
from shardset_proto.users import User

R, W, SR, SA, P = (
    Action.KV_READ, Action.KV_WRITE, Action.STORE_READ, Action.STORE_ADMIN, Action.PEER,
)  # fmt: skip
# Written out here, not read from identity.ALLOWED: a change to the table must be seen.
EXPECTED: dict[Role | Kind, set[Action]] = {
    Role.READ: {R, SR},
    Role.READWRITE: {R, W, SR},
    Role.ADMIN: {R, W, SR, SA},
    Kind.OPERATOR: {R, W, SR, SA},
    Kind.NODE: {R, W, SR, SA, P},
}


def _principal(row: Role | Kind, prefixes: tuple[str, ...] = ()) -> Principal:
    if isinstance(row, Role):
        return Principal(Kind.USER, "u", Via.TOKEN, row, prefixes, "digest")
    return Principal(row, "1" if row == Kind.NODE else "", Via.CERT)


@pytest.mark.parametrize("row", list(EXPECTED))
@pytest.mark.parametrize("action", list(Action))
def test_role_x_action_table(row: Role | Kind, action: Action) -> None:
    who = _principal(row)
    if action in EXPECTED[row]:
        authorize(who, action, "any/key")
        return
    with pytest.raises(AuthError) as refused:
        authorize(who, action, "any/key")
    assert (refused.value.status, refused.value.code) == (403, "forbidden")
    message = str(refused.value)
    assert str(action) in message and str(row) in message


def test_key_outside_the_prefixes_is_refused_naming_key_and_prefixes() -> None:
    app = _principal(Role.READWRITE, ("app/", "shared/"))
    authorize(app, W, "app/x")
    authorize(app, R, b"shared/y")
    with pytest.raises(AuthError) as refused:
        authorize(app, W, "other/x")
    assert refused.value.status == 403
    assert "'other/x'" in str(refused.value) and "app/" in str(refused.value)


@pytest.mark.parametrize(
    ("start", "end", "ok"),
    [
        ("app/", "app0", True),  # the whole prefix ("0" follows "/")
        ("app/a", "app/b", True),
        ("app/", None, False),  # to the end of the key space: past the prefix
        ("", "app/b", False),  # starts before the prefix
        ("app/a", "zzz", False),  # ends past it
    ],
)
def test_scan_range_within_one_prefix(start: str, end: str | None, ok: bool) -> None:
    app = _principal(Role.READ, ("app/",))
    if ok:
        authorize(app, R, scan=(start, end))
        return
    with pytest.raises(AuthError) as refused:
        authorize(app, R, scan=(start, end))
    assert refused.value.status == 403 and "outside the prefixes" in str(refused.value)


def test_no_prefixes_is_every_key_and_range() -> None:
    authorize(_principal(Role.READ), R, "x", ("", None))


class _Tls:
    """Stands in for ssl.SSLObject: what the handshake gave (a DER certificate)."""

    def __init__(self, der: bytes | None) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        return self.der


def _tls(store_pki: Pki, name: str | None) -> ssl.SSLObject:
    if name is None:
        return cast(ssl.SSLObject, _Tls(None))
    cert = x509.load_pem_x509_certificate(store_pki.files(name).cert.read_bytes())
    return cast(ssl.SSLObject, _Tls(cert.public_bytes(Encoding.DER)))


def _refusal(call: object, *args: object) -> str:
    with pytest.raises(AuthError) as refused:
        call(*args)  # type: ignore[operator]
    assert (refused.value.status, refused.value.code) == (401, "unauthenticated")
    return str(refused.value)


def test_certificates_name_their_principal(store_pki: Pki, authenticator: Authenticator) -> None:
    node = authenticator.from_certificate(_tls(store_pki, "node-2"))
    assert node == Principal(Kind.NODE, "2", Via.CERT)
    assert authenticator.from_certificate(_tls(store_pki, "operator")) == Principal(
        Kind.OPERATOR, "", Via.CERT
    )
    reader = authenticator.from_certificate(_tls(store_pki, "reader"))
    assert reader is not None and (reader.role, reader.via) == (Role.READ, Via.CERT)
    assert authenticator.from_certificate(_tls(store_pki, None)) is None
    assert authenticator.from_certificate(None) is None


def test_user_certificate_takes_role_and_prefixes_from_the_table(
    store_pki: Pki, users: Users, authenticator: Authenticator
) -> None:
    users.table = users.table.put(User("reader", Role.ADMIN, ("ops/",)))
    principal = authenticator.from_certificate(_tls(store_pki, "reader"))
    assert principal is not None and (principal.role, principal.prefixes) == (
        Role.ADMIN,
        ("ops/",),
    )


def test_certificate_failures_are_named(store_pki: Pki, authenticator: Authenticator) -> None:
    gone = _refusal(authenticator.from_certificate, _tls(store_pki, "gone"))
    assert "user gone" in gone and "deleted" in gone
    other = _refusal(authenticator.from_certificate, _tls(store_pki, "other-operator"))
    assert OTHER in other and STORE in other


def test_verify_is_the_nodes_certificate_check(store_pki: Pki, users: Users) -> None:
    def refuse(tls: ssl.SSLObject) -> Identity:
        raise ValueError("issued by a CA no longer trusted")

    auth = Authenticator(STORE, users, refuse)
    assert "no longer trusted" in _refusal(auth.from_certificate, _tls(store_pki, "operator"))


def test_token_failures_are_each_named(users: Users, authenticator: Authenticator) -> None:
    assert "no credentials" in _refusal(authenticator.authenticate, None, None)
    assert "missing bearer token" in _refusal(authenticator.authenticate, None, "Bearer ")
    assert "'Basic'" in _refusal(authenticator.authenticate, None, "Basic dXNlcg==")
    unknown = _refusal(authenticator.authenticate, None, "Bearer sst_never-issued")
    assert "unknown token" in unknown
    assert authenticator.authenticate(None, f"Bearer {TOKENS['writer']}").name == "writer"
    users.delete("writer")
    revoked = _refusal(authenticator.authenticate, None, f"Bearer {TOKENS['writer']}")
    assert "revoked token" in revoked and "writer" in revoked


def test_token_wins_over_certificate_and_admin_takes_no_token(
    store_pki: Pki, authenticator: Authenticator
) -> None:
    tls = _tls(store_pki, "operator")
    assert authenticator.authenticate(tls, f"Bearer {TOKENS['reader']}").name == "reader"
    assert "not a bearer token" in _refusal(
        authenticator.certificate_only, tls, f"Bearer {TOKENS['boss']}"
    )
    assert "needs a client certificate" in _refusal(authenticator.certificate_only, None, None)
    assert authenticator.certificate_only(tls, None).kind == Kind.OPERATOR


def test_refresh_follows_the_table(
    store_pki: Pki, users: Users, authenticator: Authenticator
) -> None:
    by_token = authenticator.from_token(TOKENS["app"])
    by_cert = authenticator.from_certificate(_tls(store_pki, "app"))
    assert by_cert is not None
    users.table = users.table.put(User("app", Role.READ, ("app/",), token_digest(TOKENS["app"])))
    assert authenticator.refresh(by_token).role == Role.READ  # role changes apply at once
    users.table = users.table.put(User("app", Role.READ, ("app/",), token_digest("sst_new")))
    assert "revoked token" in _refusal(authenticator.refresh, by_token)  # token replaced
    assert authenticator.refresh(by_cert).role == Role.READ  # its certificate still counts
    users.delete("app")
    assert "no longer a user" in _refusal(authenticator.refresh, by_cert)
    node = Principal(Kind.NODE, "1", Via.CERT)
    assert authenticator.refresh(node) is node
