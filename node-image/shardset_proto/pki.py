"""The store's certificates: a CA per store, and node, operator and user certificates.

Pure functions of their inputs (keys, names, the time): the operator's CA
(shardset_operator), `shardset local` and the tests issue with the same code, so a
certificate the operator issues is exactly one the nodes accept. Keys are ECDSA P-256
(what etcd's benchmarks and cert-manager's defaults use; cheap handshakes).

Every leaf carries its identity as a URI SAN (shardset_proto.identity) and is valid for
both TLS server and client use, so a node presents the same certificate when it accepts
and when it dials. PEM in and out, as Kubernetes TLS Secrets hold them
(`ca.crt`, `tls.crt`, `tls.key`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shardset_proto.identity import Identity, IdentityError, identity_of

CA_DAYS = 3650  # a store's CA: ten years (renewed by the operator at two thirds)
LEAF_DAYS = 90  # node, operator and user certificates (renewed at two thirds)
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clocks a little behind the issuer's


class PkiError(ValueError):
    """PEM that does not parse, a key that does not match its certificate."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What status, metrics and rotation planning need from a certificate."""

    subject: str
    serial: int
    fingerprint: str  # SHA-256 of the DER, hex
    not_before: dt.datetime
    not_after: dt.datetime
    uris: tuple[str, ...]
    dns: tuple[str, ...]
    is_ca: bool

    def remaining(self, now: dt.datetime) -> dt.timedelta:
        return self.not_after - now

    def due(self, now: dt.datetime, fraction: float = 2 / 3) -> bool:
        """Past `fraction` of its lifetime: time to renew (CloudNativePG and cert-manager
        renew at two thirds, leaving a third of the lifetime to recover from failures)."""
        life = self.not_after - self.not_before
        return now >= self.not_before + life * fraction


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"private key does not parse: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"private key is {type(key).__name__}, not an EC key")
    return key


def load_certs(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (a CA bundle holds two during a CA rotation)."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise PkiError(f"certificate PEM does not parse: {exc}") from exc
    if not certs:
        raise PkiError("no certificate in PEM")
    return certs


def issue_ca(store: str, now: dt.datetime, days: int = CA_DAYS) -> KeyPair:
    """A self-signed CA for one store; its name says which store (for humans)."""
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shardset"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"shardset CA {store} {now:%Y%m%d%H%M%S}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(name, name, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def issue_leaf(
    ca: KeyPair,
    identity: Identity,
    now: dt.datetime,
    *,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    days: int = LEAF_DAYS,
) -> KeyPair:
    """A certificate for `identity`, signed by `ca`, for TLS server and client use."""
    ca_cert = load_certs(ca.cert_pem)[0]
    ca_key = load_key(ca.key_pem)
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(identity))])
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    sans += [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def _common_name(identity: Identity) -> str:
    # The CN is for humans and for logs; the URI SAN is what nodes check.
    return f"{identity.kind}:{identity.name}" if identity.name else str(identity.kind)


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey,
    now: dt.datetime, days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )


def info(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        uris, dns = (), ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        serial=cert.serial_number,
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        uris=uris,
        dns=dns,
        is_ca=is_ca,
    )


def info_pem(pem: bytes) -> CertInfo:
    return info(load_certs(pem)[0])


def peer_identity(der: bytes, store: str) -> Identity:
    """The identity of `store` a peer's certificate (DER, as ssl's getpeercert(True)
    gives it) names; IdentityError naming the reason otherwise."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise IdentityError(f"peer certificate does not parse: {exc}") from exc
    return identity_of(list(info(cert).uris), store)


def issued_by(cert: x509.Certificate, cas: list[x509.Certificate]) -> bool:
    """`cert` carries a valid signature of one of `cas` (the TLS handshake already
    checked the chain against every CA the context was ever given; this check against
    the CURRENT bundle is what makes a CA removed at the end of a rotation untrusted
    without rebuilding listeners)."""
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


__all__ = [
    "CA_DAYS",
    "LEAF_DAYS",
    "CertInfo",
    "IdentityError",
    "KeyPair",
    "PkiError",
    "info",
    "info_pem",
    "issue_ca",
    "issue_leaf",
    "issued_by",
    "load_certs",
    "load_key",
    "peer_identity",
]
