"""Why a store refused us, or we refused it, in words that name what failed.

Each failure has its class (all are ShardsetErrors) and `exit_code` for the CLI: 2 when
the user's own settings must change (a CA file that does not sign the node's
certificate, our certificate expired, a host name the certificate does not name, no
credentials at all), 1 when the store refused what was sent (the node's certificate
expired, a token revoked or never issued, a role that lacks the action).

TLS failures reach the client as ssl exceptions buried in aiohttp's or asyncio's
(`diagnose`); to name the node certificate's issuer, names and dates, `diagnose` fetches
it once more with verification off (a probe that sends nothing but a handshake).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509

from shardset.errors import ShardsetError

# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code).
_NOT_YET_VALID, _EXPIRED = 9, 10
_UNTRUSTED = {2, 18, 19, 20, 21}  # no issuer known, self-signed, chain not to our CA
_HOSTNAME_MISMATCH, _IP_MISMATCH = 62, 64
PROBE_TIMEOUT_S = 2.0


class TlsError(ShardsetError):
    """A TLS or authentication failure; `exit_code` is the CLI's."""

    exit_code = 1


class BadCredentials(TlsError):
    """A CA, certificate, key or token file that is missing or does not load."""

    exit_code = 2


class UnknownCA(TlsError):
    """The node's certificate is not signed by the CA we trust."""

    exit_code = 2


class CertificateExpired(TlsError):
    """Our certificate (`ours`) or the node's is past its notAfter (or before notBefore)."""

    def __init__(self, message: str, *, ours: bool) -> None:
        super().__init__(message)
        self.ours = ours
        self.exit_code = 2 if ours else 1


class WrongHostName(TlsError):
    """The node's certificate does not name the host we dialled."""

    exit_code = 2


class CertificateRefused(TlsError):
    """The node refused our certificate in the handshake (or wanted one)."""


class NotTls(TlsError):
    """The node answered the handshake with something that is not TLS."""

    exit_code = 2


class MissingToken(TlsError):
    """401 and we sent no credentials: the store wants a token or a certificate."""

    exit_code = 2


class TokenRejected(TlsError):
    """401 with credentials: a token revoked or never issued, a certificate of a user
    that no longer exists, or of another store."""


class Forbidden(TlsError):
    """403: our role lacks the action, or the key is outside our prefixes."""


def when(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


# --- answers (401, 403) -------------------------------------------------------------
def from_answer(
    status: int, body: dict[str, Any], what: str, *, token: bool, cert: bool
) -> TlsError | None:
    """The named error for a 401 or 403 answer; None for any other status."""
    said = str(body.get("message") or body.get("error") or f"HTTP {status}")
    if status == 401:
        if not token and not cert:
            return MissingToken(
                f"{what}: the store wants credentials (401: {said}); pass a token "
                "(--token, --token-file, SHARDSET_TOKEN or the config file) or a client "
                "certificate (--cert and --key)",
                status,
                body,
            )
        sent = "token" if token else "client certificate"
        return TokenRejected(
            f"{what}: the store refused your {sent} (401: {said}); it was revoked, never "
            "issued, or is of another store",
            status,
            body,
        )
    if status == 403:
        facts = ", ".join(
            f"{k} {body[k]!r}" for k in ("user", "role", "action", "key") if body.get(k)
        )
        return Forbidden(
            f"{what}: forbidden (403: {said})" + (f"; {facts}" if facts else ""), status, body
        )
    return None


# --- TLS handshakes -----------------------------------------------------------------
def ssl_cause(error: BaseException) -> ssl.SSLError | None:
    """The ssl error inside `error` (aiohttp keeps it as `certificate_error` or
    `os_error`, asyncio as the exception itself or its cause), if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        # aiohttp's wrappers are SSLErrors too (with no reason): the ssl module's own is
        # the one that says what failed.
        if isinstance(e, ssl.SSLError) and type(e).__module__ == "ssl":
            return e
        for attr in ("certificate_error", "os_error", "__cause__", "__context__"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                todo.append(inner)
    return None


async def diagnose(
    error: BaseException, where: str, host: str, port: int, cafile: Path | None
) -> TlsError | None:
    """The named error for a failed TLS connection to `where` (host:port); None when
    `error` is no TLS failure (a refused connection, a timeout: the caller retries)."""
    cause = ssl_cause(error)
    if cause is None:
        return None
    if isinstance(cause, ssl.SSLCertVerificationError):
        cert = await probe(host, port)
        return _verify_failure(cause, where, host, cafile, cert)
    reason = (cause.reason or "").upper()
    if "CERTIFICATE_EXPIRED" in reason:
        return CertificateExpired(
            f"TLS: the node at {where} says your client certificate has expired", ours=True
        )
    if "CERTIFICATE_REQUIRED" in reason:
        return CertificateRefused(
            f"TLS: the node at {where} requires a client certificate (--cert and --key)"
        )
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "DECRYPT_ERROR" in reason:
        return CertificateRefused(
            f"TLS: the node at {where} refused your client certificate ({cause.reason}): "
            "it is not signed by the store's CA"
        )
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
        return NotTls(
            f"TLS: the node at {where} does not speak TLS (an insecure node? use http:// "
            "endpoints or --insecure)"
        )
    return TlsError(f"TLS: handshake with the node at {where} failed: {cause.reason or cause}")


def _verify_failure(
    cause: ssl.SSLCertVerificationError,
    where: str,
    host: str,
    cafile: Path | None,
    cert: x509.Certificate | None,
) -> TlsError:
    code = cause.verify_code
    subject = f" ({cert.subject.rfc4514_string()})" if cert is not None else ""
    if code == _EXPIRED:
        date = f" on {when(cert.not_valid_after_utc)}" if cert is not None else ""
        return CertificateExpired(
            f"TLS: the certificate of the node at {where}{subject} expired{date}", ours=False
        )
    if code == _NOT_YET_VALID:
        date = f" before {when(cert.not_valid_before_utc)}" if cert is not None else ""
        return CertificateExpired(
            f"TLS: the certificate of the node at {where}{subject} is not valid{date} "
            "(a clock off on the node or here?)",
            ours=False,
        )
    if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
        names = ", ".join(cert_names(cert)) if cert is not None else "other names"
        return WrongHostName(
            f"TLS: the certificate of the node at {where} is for {names}, not for host "
            f"{host!r}; connect by one of its names"
        )
    if code in _UNTRUSTED:
        ca = (
            f"the CA in {cafile}"
            if cafile is not None
            else "a CA this system trusts (no --cacert given)"
        )
        issuer = f" (issued by {cert.issuer.rfc4514_string()})" if cert is not None else ""
        return UnknownCA(
            f"TLS: the certificate of the node at {where}{issuer} is not signed by {ca}; "
            "pass the store's CA with --cacert"
        )
    return TlsError(
        f"TLS: the certificate of the node at {where} is refused: {cause.verify_message}"
    )


def cert_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = [f"DNS:{d}" for d in san.get_values_for_type(x509.DNSName)]
    ips = [f"IP:{i}" for i in san.get_values_for_type(x509.IPAddress)]
    return dns + ips


async def probe(host: str, port: int) -> x509.Certificate | None:
    """The certificate a node presents, fetched with verification off (only to describe
    why verification failed); None when it cannot be had."""
    try:
        pem = await asyncio.wait_for(
            asyncio.to_thread(ssl.get_server_certificate, (host, port), timeout=PROBE_TIMEOUT_S),
            PROBE_TIMEOUT_S + 1,
        )
        return x509.load_pem_x509_certificate(pem.encode())
    except (OSError, ValueError, TimeoutError):
        return None
