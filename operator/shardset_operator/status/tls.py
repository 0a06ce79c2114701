"""status.tls (pure): when the store's certificates expire, and the rotation in progress."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from shardset_operator.api.models import TlsMode, TlsStatus
from shardset_proto import pki


def not_after(pems: Iterable[bytes]) -> datetime | None:
    """The earliest expiry among the certificates in `pems` (bundles too); None when
    there is none, or none that parses."""
    found: list[datetime] = []
    for pem in pems:
        try:
            found += [pki.info(c).not_after for c in pki.load_certs(pem)]
        except pki.PkiError:
            continue
    return min(found, default=None)


def tls_status(
    mode: TlsMode,
    bundle: bytes,
    node_certs: Iterable[bytes],
    operator_cert: bytes | None,
    rotation: str | None,
    last_change: str | None,
) -> TlsStatus:
    return TlsStatus(
        mode=mode,
        ca_not_after=not_after([bundle]),
        node_not_after=not_after(node_certs),
        operator_not_after=not_after([operator_cert] if operator_cert else []),
        rotation=rotation,
        last_change=last_change,
    )
