"""Read consistency (pure): which nodes still need to be switched to the desired setting
(api/consistency.py says what a setting is; status/consistency.py what is in force)."""

from __future__ import annotations

from collections.abc import Mapping

from shardset_operator.api.consistency import ReadSetting


def nodes_to_switch(
    desired: ReadSetting, reports: Mapping[int, ReadSetting | None], reachable: set[int]
) -> list[int]:
    """Reachable nodes whose reported setting is not the desired one, in id order.

    A node that reports nothing (an older image, or it has not answered) is asked too:
    the admin call is idempotent, and its answer tells why if it cannot comply.
    """
    return sorted(n for n in reachable if reports.get(n) != desired)
