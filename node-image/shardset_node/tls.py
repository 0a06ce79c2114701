"""The node's TLS state: its certificate, the CA bundle it trusts now, and the ssl
contexts every listener and dialer of the node uses (issue 16, docs/security.md).

A node's TLS directory is its Secret mounted as files: `ca.crt` (the CA bundle: two CAs
during a CA rotation), and its own certificate, `node-<id>.crt` / `node-<id>.key` when
present (the operator's Secret holds every node's pair) else `tls.crt` / `tls.key`.

At start the node refuses material that is not its own (a certificate of another store
or another node id, expired, a key that does not match, not issued by a CA of the
bundle), naming what is wrong. Then `run()` re-reads the directory every few seconds
and swaps in new material for every NEW handshake: servers keep the context they were
given, whose `sni_callback` moves each handshake onto the current generation's context;
dialers ask `client_context()` per dial. A reload that fails (a half-written Secret, a
key of the next certificate next to the old certificate) keeps the old material, so
rotation can never take a node down. Open connections live on.

The handshake proves "signed by a CA some context trusted"; `verify` then checks the
peer's identity AND that a CA of the CURRENT bundle issued it, so a CA dropped at the
end of a rotation stops being trusted without restarting any listener.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from shardset_proto import pki
from shardset_proto.identity import SCHEME, Identity, IdentityError, Kind, parse_uri
from shardset_proto.status import TlsView
from shardset_proto.tlsfiles import (
    CERT_FILE,
    KEY_FILE,
    TlsFiles,
    TlsFilesError,
    client_context,
    server_context,
)

__all__ = [
    "NodeFiles",
    "NodeTls",
    "PeerRefused",
    "TlsConfigError",
    "TlsStats",
]

DEFAULT_RELOAD_INTERVAL = 5.0
log = structlog.get_logger(__name__)
Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TlsConfigError(ValueError):
    """The TLS directory cannot serve this node; the message names the file and why."""


class PeerRefused(IdentityError):
    """A peer's certificate is not acceptable. `reason` is a short stable code (for
    metrics and logs): no_certificate, bad_certificate, no_identity, other_store,
    untrusted_ca, expired, not_a_node, id_mismatch, ..."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NodeFiles(TlsFiles):
    """A node's TLS directory: `node-<id>.crt/.key` when present, else `tls.crt/.key`."""

    node_id: int = 0

    @property
    def node_cert(self) -> Path:
        return self.directory / f"node-{self.node_id}.crt"

    @property
    def node_key(self) -> Path:
        return self.directory / f"node-{self.node_id}.key"

    @property
    def cert(self) -> Path:
        return self.node_cert if self.node_cert.exists() else self.directory / CERT_FILE

    @property
    def key(self) -> Path:
        return self.node_key if self.node_cert.exists() else self.directory / KEY_FILE

    def stamp(self) -> tuple[tuple[str, int, int], ...]:
        # Both pairs: a node-<id>.crt appearing (or going) is a change too.
        plain = TlsFiles(self.directory)
        extra = NodeFiles(self.directory, self.node_id)
        return plain.stamp() + _stamp_of(extra.node_cert, extra.node_key)


def _stamp_of(*paths: Path) -> tuple[tuple[str, int, int], ...]:
    out: list[tuple[str, int, int]] = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        out.append((str(path.resolve()), st.st_ino, st.st_mtime_ns))
    return tuple(out)


@dataclass(frozen=True)
class _Material:
    """One generation of loaded, checked TLS material and the contexts built from it."""

    generation: int
    stamp: tuple[tuple[str, int, int], ...]
    cert: pki.CertInfo
    cas: tuple[x509.Certificate, ...]
    ca_infos: tuple[pki.CertInfo, ...]
    server_required: ssl.SSLContext
    server_optional: ssl.SSLContext
    client: ssl.SSLContext
    loaded_at: float
    pems: tuple[bytes, bytes, bytes]  # ca.crt, certificate, key as loaded

    def server(self, require_client_cert: bool) -> ssl.SSLContext:
        return self.server_required if require_client_cert else self.server_optional


@dataclass(slots=True)
class TlsStats:
    reloads: int = 0  # successful reloads after the first load
    reload_failures: int = 0
    last_failure: str | None = None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise TlsConfigError(f"{what} {path} cannot be read: {exc}") from None


def _public(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_leaf(
    leaf: x509.Certificate,
    key_pem: bytes,
    cas: list[x509.Certificate],
    expected: Identity,
    files: NodeFiles,
    now: dt.datetime,
) -> pki.CertInfo:
    """Raise TlsConfigError unless `leaf` is this node's valid certificate."""
    cert_path, key_path = files.cert, files.key
    try:
        key = pki.load_key(key_pem)
    except pki.PkiError as exc:
        raise TlsConfigError(f"{key_path}: {exc}") from None
    if _public(key.public_key()) != _public(leaf.public_key()):
        raise TlsConfigError(f"{key_path} is not the key of {cert_path} (key mismatch)")
    info = pki.info(leaf)
    try:
        ident = pki.peer_identity(leaf.public_bytes(serialization.Encoding.DER), expected.store)
    except IdentityError as exc:
        raise TlsConfigError(f"{cert_path}: {exc}; this node is {expected}") from None
    if ident != expected:
        raise TlsConfigError(f"{cert_path} names {ident}, but this node is {expected}")
    if now >= info.not_after:
        raise TlsConfigError(f"{cert_path} expired at {info.not_after.isoformat()}")
    if now < info.not_before:
        raise TlsConfigError(f"{cert_path} is not valid before {info.not_before.isoformat()}")
    if not pki.issued_by(leaf, cas):
        raise TlsConfigError(f"{cert_path} was not issued by a CA in {files.ca}")
    return info


def _contexts(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> tuple[ssl.SSLContext, ...]:
    """Server (client cert required, optional) and client contexts from exactly these
    bytes: written to a private temporary directory, so a Secret updated between the
    reads of two files can never pair one generation's key with another's certificate."""
    with tempfile.TemporaryDirectory(prefix="shardset-tls-") as tmp:
        files = TlsFiles(Path(tmp))
        files.write(ca_pem, cert_pem, key_pem)
        try:
            required = server_context(files, require_client_cert=True)
            optional = server_context(files, require_client_cert=False)
            client = client_context(files, check_hostname=False)
        except TlsFilesError as exc:
            raise TlsConfigError(str(exc).replace(tmp, "<loaded copy>")) from None
    return required, optional, client


def load_material(
    files: NodeFiles, expected: Identity, now: dt.datetime, generation: int
) -> _Material:
    stamp = files.stamp()  # before reading: a change during the reads is seen next poll
    cert_path, key_path = files.cert, files.key
    ca_pem = _read(files.ca, "CA bundle")
    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "key")
    try:
        cas = pki.load_certs(ca_pem)
    except pki.PkiError as exc:
        raise TlsConfigError(f"{files.ca}: {exc}") from None
    try:
        leaf = pki.load_certs(cert_pem)[0]
    except pki.PkiError as exc:
        raise TlsConfigError(f"{cert_path}: {exc}") from None
    info = _check_leaf(leaf, key_pem, cas, expected, files, now)
    required, optional, client = _contexts(ca_pem, cert_pem, key_pem)
    return _Material(
        generation=generation,
        stamp=stamp,
        cert=info,
        cas=tuple(cas),
        ca_infos=tuple(pki.info(c) for c in cas),
        server_required=required,
        server_optional=optional,
        client=client,
        loaded_at=time.time(),
        pems=(ca_pem, cert_pem, key_pem),
    )


class NodeTls:
    """A node's TLS material, loaded and checked, reloaded live (see the module doc)."""

    def __init__(
        self,
        directory: Path,
        store: str,
        node_id: int,
        *,
        reload_interval: float = DEFAULT_RELOAD_INTERVAL,
        clock: Clock = _utcnow,
    ) -> None:
        """Load the directory; TlsConfigError naming what is wrong if it is not usable
        by node `node_id` of `store` (the node must refuse to start)."""
        try:
            self.identity = Identity.node(store, node_id)
        except IdentityError as exc:
            raise TlsConfigError(str(exc)) from None
        self.store = store
        self.node_id = node_id
        self.files = NodeFiles(directory, node_id)
        self.reload_interval = reload_interval
        self.stats = TlsStats()
        self._clock = clock
        self._failed_stamp: tuple[tuple[str, int, int], ...] | None = None
        # Called after each successful reload (e.g. a client pool dropping old contexts).
        self.on_reload: list[Callable[[], None]] = []
        self._material = load_material(self.files, self.identity, clock(), 1)

    # --- what the node presents ------------------------------------------------------
    @property
    def generation(self) -> int:
        """Bumped by every successful reload: contexts of an older one are stale."""
        return self._material.generation

    @property
    def cert(self) -> pki.CertInfo:
        return self._material.cert

    @property
    def cas(self) -> tuple[pki.CertInfo, ...]:
        return self._material.ca_infos

    def server_context(self, *, require_client_cert: bool) -> ssl.SSLContext:
        """A listener's context. Give it to a server once: every handshake it starts is
        moved (sni_callback) onto the current material's context, so a reload reaches
        listeners that were started before it."""
        m = self._material
        required, optional, _ = _contexts(*m.pems)
        ctx = required if require_client_cert else optional
        ctx.sni_callback = self._swapper(require_client_cert)
        return ctx

    def _swapper(
        self, require_client_cert: bool
    ) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]:
        def swap(obj: ssl.SSLObject, _name: str | None, ctx: ssl.SSLContext) -> int | None:
            current = self._material.server(require_client_cert)
            if current is not ctx:
                obj.context = current
            return None

        return swap

    def client_context(self) -> ssl.SSLContext:
        """A dialer's context for this generation (ask per dial): presents the node's
        certificate, trusts the current bundle, checks no host name (callers check the
        peer's identity with `verify`)."""
        return self._material.client

    # --- who the peer is -------------------------------------------------------------
    def verify(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> Identity:
        """The identity of THIS store the peer's certificate names, if a CA of the
        current bundle issued it; PeerRefused (an IdentityError) naming why not."""
        der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
        if not der:
            raise PeerRefused("no_certificate", "no certificate was presented")
        return self.verify_der(der)

    def verify_der(self, der: bytes) -> Identity:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise PeerRefused("bad_certificate", f"certificate does not parse: {exc}") from None
        try:
            ident = pki.peer_identity(der, self.store)
        except IdentityError as exc:
            raise PeerRefused(_identity_reason(cert, self.store), str(exc)) from None
        if not pki.issued_by(cert, list(self._material.cas)):
            raise PeerRefused(
                "untrusted_ca",
                f"certificate of {ident} was not issued by a CA this node trusts now",
            )
        now = self._clock()
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise PeerRefused(
                "expired", f"certificate of {ident} expired {cert.not_valid_after_utc.isoformat()}"
            )
        return ident

    def verify_node(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> int:
        """The id of the node of this store the peer's certificate names."""
        ident = self.verify(ssl_object)
        if ident.kind != Kind.NODE:
            raise PeerRefused("not_a_node", f"{ident} is not a node of store {self.store}")
        return ident.node_id

    # --- status ----------------------------------------------------------------------
    def report(self) -> TlsView:
        m = self._material
        return TlsView(
            identity=self.identity.uri,
            certSerial=f"{m.cert.serial:x}",
            certFingerprint=m.cert.fingerprint,
            certNotAfter=m.cert.not_after.timestamp(),
            caFingerprints=[c.fingerprint for c in m.ca_infos],
            caNotAfter=min(c.not_after for c in m.ca_infos).timestamp(),
            loadedAt=m.loaded_at,
        )

    # --- reloading -------------------------------------------------------------------
    def reload(self) -> bool:
        """Reload if the directory changed since the last (successful or failed) load;
        True if new material is in use. A failure keeps the old material."""
        stamp = self.files.stamp()
        if stamp == self._material.stamp or stamp == self._failed_stamp:
            return False
        old = self._material
        try:
            new = load_material(self.files, self.identity, self._clock(), old.generation + 1)
        except (TlsConfigError, TlsFilesError, OSError, ssl.SSLError) as exc:
            self._failed_stamp = stamp  # retried when the files change again
            self.stats.reload_failures += 1
            self.stats.last_failure = str(exc)
            log.error(
                "tls_reload_failed",
                node=self.node_id,
                reason=str(exc),
                kept_serial=f"{old.cert.serial:x}",
                kept_not_after=old.cert.not_after.isoformat(),
            )
            return False
        self._material = new
        self._failed_stamp = None
        self.stats.reloads += 1
        self.stats.last_failure = None
        log.info(
            "tls_reloaded",
            node=self.node_id,
            serial=f"{new.cert.serial:x}",
            not_after=new.cert.not_after.isoformat(),
            previous_serial=f"{old.cert.serial:x}",
            ca_fingerprints=[c.fingerprint[:16] for c in new.ca_infos],
            generation=new.generation,
        )
        for callback in self.on_reload:
            callback()
        return True

    async def run(self) -> None:
        """Poll the directory every `reload_interval` seconds, forever (cancel to stop)."""
        while True:
            await asyncio.sleep(self.reload_interval)
            try:
                self.reload()
            except Exception as exc:  # never let the poller die: the node keeps serving
                log.error("tls_reload_failed", node=self.node_id, reason=repr(exc))


def _identity_reason(cert: x509.Certificate, store: str) -> str:
    """Why a certificate names no identity of `store`: another store's, or none at all."""
    for uri in pki.info(cert).uris:
        if not uri.startswith(f"{SCHEME}://"):
            continue
        try:
            if parse_uri(uri).store != store:
                return "other_store"
        except IdentityError:
            continue
    return "no_identity"
