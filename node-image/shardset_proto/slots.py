"""Hash slots: the unit in which key ownership moves between shards (Redis Cluster's scheme)."""

from __future__ import annotations

import binascii

__all__ = ["SLOTS", "slot_of"]

SLOTS = 16384


def slot_of(key: bytes) -> int:
    """The slot of ``key``: CRC16-CCITT (XModem), as Redis Cluster uses, modulo ``SLOTS``."""
    return binascii.crc_hqx(key, 0) % SLOTS
