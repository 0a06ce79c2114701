"""TLS material on disk and the ssl contexts built from it, for node, client and operator.

One directory holds what a Kubernetes TLS Secret (and cert-manager's Certificate Secret)
holds: `ca.crt` (the CA bundle this party trusts), `tls.crt` (its own certificate) and
`tls.key` (its key). A node mounts its Secret there; `shardset local` writes the same
layout; the CLI reads it.

Contexts are TLS 1.3 only (one round trip; no cipher choices to get wrong). Whoever
verifies a peer then checks the peer certificate's identity (shardset_proto.identity)
itself: the handshake proves "signed by a CA I trust", the identity says who.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


class TlsFilesError(ValueError):
    """A TLS directory is missing a file or holds one that does not load; names which."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE

    @property
    def cert(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE

    def has_cert(self) -> bool:
        return self.cert.exists() and self.key.exists()

    def stamp(self) -> tuple[tuple[str, int, int], ...]:
        """What changes when any file changes (a Secret volume swaps a symlink, so the
        resolved path's inode changes even when sizes and mtimes match)."""
        out: list[tuple[str, int, int]] = []
        for path in (self.ca, self.cert, self.key):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            out.append((os.path.realpath(path), st.st_ino, st.st_mtime_ns))
        return tuple(out)

    def write(self, ca_pem: bytes, cert_pem: bytes | None, key_pem: bytes | None) -> None:
        """Write the layout (the key readable by its owner only), each file atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic(self.ca, ca_pem, 0o644)
        if cert_pem is not None and key_pem is not None:
            _atomic(self.key, key_pem, 0o600)
            _atomic(self.cert, cert_pem, 0o644)


def _atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _base(purpose: ssl.Purpose, files: TlsFiles, cafile: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ca = cafile or files.ca
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except FileNotFoundError as exc:
        raise TlsFilesError(f"CA bundle {ca} does not exist") from exc
    except ssl.SSLError as exc:
        raise TlsFilesError(f"CA bundle {ca} does not load: {exc.reason or exc}") from exc
    return ctx


def load_chain(ctx: ssl.SSLContext, files: TlsFiles) -> None:
    try:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    except FileNotFoundError as exc:
        raise TlsFilesError(f"{exc.filename} does not exist") from exc
    except ssl.SSLError as exc:
        raise TlsFilesError(
            f"{files.cert} and {files.key} do not load as a key pair: {exc.reason or exc}"
        ) from exc


def server_context(files: TlsFiles, *, require_client_cert: bool) -> ssl.SSLContext:
    """A listener's context: our certificate; client certificates required (peer and
    admin ports) or optional (client ports: a token may stand in for one)."""
    ctx = _base(ssl.Purpose.CLIENT_AUTH, files, None)
    load_chain(ctx, files)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(
    files: TlsFiles | None = None,
    *,
    cafile: Path | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A dialer's context: trusts `cafile` (or the directory's CA), presents the
    directory's certificate when it has one. Nodes dial peers by address and check the
    identity in the certificate instead of the host name (check_hostname=False)."""
    if files is None and cafile is None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return ctx
    ctx = _base(ssl.Purpose.SERVER_AUTH, files or TlsFiles(Path(".")), cafile)
    ctx.check_hostname = check_hostname
    if files is not None and files.has_cert():
        load_chain(ctx, files)
    return ctx
