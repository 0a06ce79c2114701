"""`shardset status` shows issue 15's marks: a full or stalled disk, a replica that
recovers a cut log tail (no vote until its shard commits past an index), a corrupt one."""

from __future__ import annotations

import pytest

from shardset.cli import print_status


def _group(**extra: object) -> dict[str, object]:
    return {"role": "follower", "term": 3, "leader": 1, "commit": 40, "applied": 40, **extra}


def test_status_table_names_recovering_and_corrupt_replicas_and_a_full_disk(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_status(
        {
            "epoch": 2,
            "nodes": {
                "1": {"groups": {"meta": _group(), "1": _group()}},
                "2": {
                    "groups": {"1": _group(recovering=57), "2": _group(corrupt="row crc")},
                    "disk": {"full": True, "stalled": True, "reason": "no space left"},
                },
            },
        }
    )
    lines = capsys.readouterr().out.splitlines()
    assert any("disk stalled, writes refused: no space left" in line for line in lines), lines
    (recovering,) = [line for line in lines if "recovering" in line]
    assert recovering.split()[:2] == ["2", "1"] and "until commit 57" in recovering
    (corrupt,) = [line for line in lines if "corrupt" in line]
    assert corrupt.split()[:2] == ["2", "2"] and "row crc" in corrupt
    healthy = [line for line in lines if line.split()[:1] == ["1"]]
    assert len(healthy) == 2 and not any("[" in line for line in healthy), healthy
