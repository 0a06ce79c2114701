"""A disk that loses a synced log tail, plus one more fault (issue 15).

The seeds below lost acknowledged writes before nodes that cut a log tail began to
abstain from elections and commitment (Protocol-Aware Recovery): the mutant that
forgets the cut reproduces that, the real core holds.
"""

from __future__ import annotations

import pytest

from shardset_sim.mutants import IgnoresLostTail
from shardset_sim.simulator import Simulation, run_seed

# Found by `python -m shardset_sim run --seeds 0:1000 --mutant ignores-lost-tail`.
LOST_WRITES_BEFORE = (52, 54, 125, 153)


@pytest.mark.parametrize("seed", LOST_WRITES_BEFORE)
def test_a_lying_disk_plus_a_crash_loses_no_acknowledged_write(seed: int) -> None:
    assert "disk_lied" in Simulation(seed).cfg.nemesis
    result = run_seed(seed)
    assert result.ok, result.violation


@pytest.mark.parametrize("seed", LOST_WRITES_BEFORE)
def test_the_same_schedule_loses_writes_when_the_cut_is_forgotten(seed: int) -> None:
    result = run_seed(seed, raft_class=IgnoresLostTail)
    assert not result.ok
    assert result.violation is not None
