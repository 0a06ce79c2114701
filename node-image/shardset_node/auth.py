"""Who is asking, and may they: the node's authentication and authorization decisions.

Both front ends (frontends/http.py, frontends/wire.py) turn what a connection presents
(its TLS client certificate, a bearer token) into a `Principal` with `Authenticator`,
then ask `Authenticator.authorize` before every request. The decisions are pure
functions of the certificate's identity, the token and the store's user table
(shardset_proto.users, kept in the metadata Raft group); the table is read at each
decision, so a user deleted or changed takes effect on the next request.

* A node's or the operator's certificate of this store is that identity (its row of
  `identity.ALLOWED`).
* A user's certificate counts only while the user exists in the table; its role and
  prefixes come from the table, never from the certificate (deleting the user revokes
  the certificate too).
* A bearer token is looked up by its SHA-256 in the table.

Refusals are `AuthError`s: 401 `unauthenticated` (no credential, an unknown or revoked
token, a certificate of another store or of no user) and 403 `forbidden` (the role lacks
the action, the key or scan range is outside the user's prefixes); each message names
what failed. `claimed` (the identity the request claimed, for the log) is not sent.
"""

from __future__ import annotations

import contextlib
import ssl
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from shardset_proto import pki
from shardset_proto.errors import FORBIDDEN, UNAUTHENTICATED, ApiError
from shardset_proto.identity import (
    Action,
    Identity,
    Kind,
    Role,
    allowed,
    key_in_scope,
    range_in_scope,
    token_digest,
)
from shardset_proto.users import User, UserTable

# How many revoked token digests a node remembers, to tell "revoked" from "unknown" in
# its answer (the table keeps no deleted users); beyond that both read "unknown".
_REMEMBERED_TOKENS = 4096
_SHOWN = 120  # characters of a key shown in a refusal


class Via(StrEnum):
    CERT = "cert"
    TOKEN = "token"


class AuthError(ApiError):
    """A refusal (401 or 403); `claimed` names who the request said it was, for logs."""

    def __init__(self, status: int, message: str, claimed: str = "") -> None:
        super().__init__(status, UNAUTHENTICATED if status == 401 else FORBIDDEN, message)
        self.claimed = claimed


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a node, the operator, or a user (with its role and key
    prefixes from the user table)."""

    kind: Kind
    name: str  # the node id, the user name; "" for the operator
    via: Via
    role: Role | None = None  # users only
    prefixes: tuple[str, ...] = ()  # users only; () is every key
    # The digest of the token that authenticated it (to re-check against the table).
    token_sha256: str | None = field(default=None, repr=False)

    @property
    def row(self) -> Role | Kind:
        """Its row of the authorization table."""
        return self.role if self.role is not None else self.kind

    def __str__(self) -> str:
        if self.kind == Kind.USER:
            return f"user {self.name} (role {self.role}, {self.via})"
        return f"node {self.name}" if self.kind == Kind.NODE else "the operator"


def _user(user: User, via: Via) -> Principal:
    return Principal(
        Kind.USER, user.name, via, user.role, user.prefixes,
        user.token_sha256 if via == Via.TOKEN else None,
    )  # fmt: skip


class Authenticator:
    """From a connection's TLS object and/or bearer token to a Principal, and the
    authorization of a Principal's request (see the module doc).

    `verify` is the node's certificate check (its current CA bundle, the identity of
    this store); without it the identity in the peer certificate is read as it is (the
    TLS handshake checked the chain)."""

    def __init__(
        self,
        store: str,
        users: Callable[[], UserTable],
        verify: Callable[[ssl.SSLObject], Identity] | None = None,
    ) -> None:
        self.store = store
        self.users = users
        self.verify = verify or self._identity
        self._revoked: OrderedDict[str, str] = OrderedDict()  # token digest -> user name
        self._granted: OrderedDict[str, str] = OrderedDict()  # digest seen valid -> user
        # A connection's certificate is checked once, at its first request, like the
        # handshake itself: an open connection lives on through a rotation (a CA dropped
        # from the bundle refuses new connections only), and a keep-alive connection does
        # not pay a signature check per request. The user table is read every request.
        self._checked: weakref.WeakKeyDictionary[ssl.SSLObject, Identity | str] = (
            weakref.WeakKeyDictionary()
        )

    def _identity(self, tls: ssl.SSLObject) -> Identity:
        der = tls.getpeercert(binary_form=True)
        assert der is not None  # only called when a certificate was presented
        return pki.peer_identity(der, self.store)

    # --- authentication ---------------------------------------------------------------
    def authenticate(self, tls: ssl.SSLObject | None, authorization: str | None) -> Principal:
        """An HTTP request's principal: its bearer token when it sends one (a token
        names the user even over a connection with some other certificate), else its
        client certificate; 401 naming what is missing or wrong."""
        if authorization is not None:
            return self.from_token(bearer(authorization))
        principal = self.from_certificate(tls)
        if principal is None:
            raise AuthError(
                401, "no credentials: send a client certificate of store "
                f"{self.store} or a bearer token (Authorization: Bearer <token>)",
            )  # fmt: skip
        return principal

    def certificate_only(self, tls: ssl.SSLObject | None, authorization: str | None) -> Principal:
        """The admin port's principal: a client certificate, never a token."""
        if authorization is not None:
            raise AuthError(
                401, "the admin API takes a client certificate, not a bearer token", "token"
            )
        principal = self.from_certificate(tls)
        if principal is None:
            raise AuthError(401, f"the admin API needs a client certificate of store {self.store}")
        return principal

    def from_certificate(self, tls: ssl.SSLObject | None) -> Principal | None:
        """The principal a client certificate names; None when none was presented."""
        if tls is None or tls.getpeercert(binary_form=True) is None:
            return None
        ident = self._checked.get(tls)
        if ident is None:
            try:
                ident = self.verify(tls)
            except ValueError as e:  # IdentityError, PkiError: a certificate we cannot use
                ident = f"client certificate refused: {e}"
            with contextlib.suppress(TypeError):  # an object without weak references
                self._checked[tls] = ident
        if isinstance(ident, str):
            raise AuthError(401, ident)
        if ident.store != self.store:
            raise AuthError(
                401, f"certificate was issued for store {ident.store}, not {self.store}",
                ident.uri,
            )  # fmt: skip
        if ident.kind != Kind.USER:
            return Principal(ident.kind, ident.name, Via.CERT)
        user = self.users().get(ident.name)
        if user is None:
            raise AuthError(
                401, f"certificate of user {ident.name}, who is not a user of store "
                f"{self.store} (deleted, or never created)", ident.uri,
            )  # fmt: skip
        return _user(user, Via.CERT)

    def from_token(self, token: str) -> Principal:
        """The user a bearer token belongs to; 401 naming an unknown or revoked token."""
        if not token:
            raise AuthError(401, "missing bearer token (Authorization: Bearer <token>)")
        user = self.users().by_token(token)
        digest = token_digest(token)
        if user is None:
            raise AuthError(401, self._token_refusal(digest), "token")
        _remember(self._granted, digest, user.name)
        return _user(user, Via.TOKEN)

    def _token_refusal(self, digest: str) -> str:
        name = self._revoked.get(digest) or self._granted.pop(digest, None)
        if name is None:
            return f"unknown token: no user of store {self.store} has it"
        _remember(self._revoked, digest, name)
        return f"revoked token: user {name} was deleted or given a new token"

    def refresh(self, principal: Principal) -> Principal:
        """The principal as the CURRENT user table has it (a long-lived connection checks
        again before every batch): 401 when its user was deleted or its token replaced;
        the new role and prefixes when they changed. Nodes and the operator as they are."""
        if principal.kind != Kind.USER:
            return principal
        user = self.users().get(principal.name)
        if principal.via == Via.TOKEN:
            if user is None or user.token_sha256 != principal.token_sha256:
                assert principal.token_sha256 is not None
                _remember(self._revoked, principal.token_sha256, principal.name)
                self._granted.pop(principal.token_sha256, None)
                raise AuthError(
                    401, f"revoked token: user {principal.name} was deleted or given a new "
                    "token", str(principal),
                )  # fmt: skip
        elif user is None:
            raise AuthError(
                401, f"certificate of user {principal.name}, who is no longer a user of "
                f"store {self.store}", str(principal),
            )  # fmt: skip
        return _user(user, principal.via)

    # --- authorization ----------------------------------------------------------------
    def authorize(
        self,
        principal: Principal,
        action: Action,
        key: str | bytes | None = None,
        scan: tuple[str, str | None] | None = None,
    ) -> None:
        """Raises a 403 naming the principal, the action and the key or range when the
        principal may not do `action` (on `key`, or over the scan range [start, end))."""
        authorize(principal, action, key, scan)


def authorize(
    principal: Principal,
    action: Action,
    key: str | bytes | None = None,
    scan: tuple[str, str | None] | None = None,
) -> None:
    """See Authenticator.authorize (a pure function of its arguments)."""
    if not allowed(principal.row, action):
        raise AuthError(
            403, f"{principal} may not do {action} (role {principal.row} allows "
            f"{', '.join(sorted(_allowed(principal.row))) or 'nothing'})", str(principal),
        )  # fmt: skip
    if not principal.prefixes:
        return
    if key is not None:
        text = key.decode(errors="replace") if isinstance(key, bytes) else key
        if not key_in_scope(principal.prefixes, text):
            raise AuthError(
                403, f"key {text[:_SHOWN]!r} is outside the prefixes of {principal}: "
                f"{list(principal.prefixes)}", str(principal),
            )  # fmt: skip
    if scan is not None:
        start, end = scan
        if not range_in_scope(principal.prefixes, start, end):
            shown = "the end of the key space" if end is None else repr(end[:_SHOWN])
            raise AuthError(
                403, f"scan from {start[:_SHOWN]!r} to {shown} is outside the prefixes of "
                f"{principal}: {list(principal.prefixes)} (scan within one prefix: "
                "start at or after it, end at or before its end)", str(principal),
            )  # fmt: skip


def _allowed(row: Role | Kind) -> list[str]:
    return [a.value for a in Action if allowed(row, a)]


def bearer(authorization: str) -> str:
    """The token of an `Authorization: Bearer <token>` header; 401 naming a malformed one."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(
            401, f"Authorization header must be 'Bearer <token>', not scheme {scheme[:20]!r}"
        )
    token = token.strip()
    if not token:
        raise AuthError(401, "missing bearer token after 'Bearer' in the Authorization header")
    return token


def _remember(memory: OrderedDict[str, str], digest: str, name: str) -> None:
    memory[digest] = name
    memory.move_to_end(digest)
    while len(memory) > _REMEMBERED_TOKENS:
        memory.popitem(last=False)
