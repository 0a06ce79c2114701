"""The deterministic simulator: clean on the real core, failing on broken ones."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from shardset_sim.cli import run_range
from shardset_sim.simulator import run_seed

SEEDS = range(0, 300)  # the regular suite; `make soak` runs 100,000


def test_a_few_hundred_seeds_hold_every_safety_property() -> None:
    results = list(run_range(SEEDS, jobs=2))
    failures = [(r.seed, r.violation) for r in results if not r.ok]
    assert not failures, failures[:5]
    # The schedules must exercise the cluster, not idle: a core that never
    # commits would pass every safety check trivially.
    assert sum(r.ops for r in results) > 20 * len(SEEDS)
    assert sum(r.elections for r in results) > len(SEEDS)
    assert sum(1 for r in results if r.committed > 10) > 0.7 * len(SEEDS)


def test_a_seed_replays_exactly() -> None:
    a, b = run_seed(1234, trace=True), run_seed(1234, trace=True)
    assert (a.steps, a.ops, a.committed, a.events) == (b.steps, b.ops, b.committed, b.events)


@pytest.mark.parametrize("mutant", ["vote-ignores-log", "read-without-quorum", "ignores-lost-tail"])
def test_a_broken_core_is_caught_within_a_few_hundred_seeds(mutant: str) -> None:
    from shardset_sim.mutants import MUTANTS

    caught = [r for r in run_range(range(0, 300), jobs=2, mutant=mutant) if not r.ok]
    assert caught, f"the simulator did not catch mutant {mutant}"
    assert MUTANTS[mutant] is not None


def test_command_line_prints_one_summary_line_and_a_repro_on_failure() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "shardset_sim", "run", "--seeds", "0:20"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    last = ok.stdout.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split())
    assert fields["seeds"] == "20" and fields["violations"] == "0"
    assert {"steps", "histories", "non-linearizable"} <= fields.keys()

    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardset_sim",
            "run",
            "--seeds",
            "0:10",
            "--mutant",
            "vote-ignores-log",
            "--show",
            "1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    repro = re.search(
        r"reproduce: (python -m shardset_sim repro --seed \d+ --ticks \d+ .*)", bad.stdout
    )
    assert repro, bad.stdout
    replay = subprocess.run(
        [sys.executable, "-m", *repro.group(1).split()[2:]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert replay.returncode == 1 and "violation=" in replay.stdout
