"""Tests for the key-value linearizability checker (shardset_sim.linearizability)."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shardset_sim import linearizability as lin
from shardset_sim.linearizability import CheckResult, Op, check_kv

NEVER = "never-written"


def put(key: str, value: object, t0: float, t1: float | None, client: int = 0) -> Op:
    return Op(client=client, kind="put", key=key, value=value, invoke=t0, complete=t1)


def delete(key: str, t0: float, t1: float | None, client: int = 0) -> Op:
    return Op(client=client, kind="delete", key=key, invoke=t0, complete=t1)


def get(key: str, result: object, t0: float, t1: float | None, client: int = 0) -> Op:
    return Op(client=client, kind="get", key=key, invoke=t0, complete=t1, result=result)


def cas(
    key: str,
    expected: object,
    value: object,
    result: bool | None,
    t0: float,
    t1: float | None,
    client: int = 0,
) -> Op:
    return Op(
        client=client,
        kind="cas",
        key=key,
        value=value,
        expected=expected,
        invoke=t0,
        complete=t1,
        result=result,
    )


def assert_ok(history: list[Op]) -> None:
    res = check_kv(history)
    assert res.ok, res.explanation
    assert not res.unknown, res.explanation
    assert res.bad_key is None


def assert_bad(history: list[Op], key: str = "k") -> CheckResult:
    res = check_kv(history)
    assert not res.ok, "expected a linearizability violation"
    assert not res.unknown
    assert res.bad_key == key
    assert repr(key) in res.explanation
    return res


# --- sequential histories ------------------------------------------------------------------------


def test_empty_history() -> None:
    assert_ok([])


def test_sequential_history_is_accepted() -> None:
    assert_ok(
        [
            get("k", None, 0, 1),
            put("k", "a", 2, 3),
            get("k", "a", 4, 5),
            cas("k", "a", "b", True, 6, 7),
            cas("k", "a", "c", False, 8, 9),
            get("k", "b", 10, 11),
            delete("k", 12, 13),
            get("k", None, 14, 15),
            cas("k", None, "d", True, 16, 17),
            get("k", "d", 18, 19),
        ]
    )


def test_unhashable_values_compare_by_equality() -> None:
    assert_ok(
        [
            put("k", [1, 2], 0, 1),
            get("k", [1, 2], 2, 3),
            cas("k", [1, 2], {"x": 1}, True, 4, 5),
            get("k", {"x": 1}, 6, 7),
        ]
    )
    assert_bad([put("k", [1, 2], 0, 1), get("k", [2, 1], 2, 3)])


def test_long_sequential_history_needs_no_recursion() -> None:
    history: list[Op] = []
    for i in range(3000):
        history.append(put("k", i, 4 * i, 4 * i + 1))
        history.append(get("k", i, 4 * i + 2, 4 * i + 3))
    assert_ok(history)
    history[-1] = get("k", 0, 4 * 2999 + 2, 4 * 2999 + 3)
    assert_bad(history)


# --- classic violations --------------------------------------------------------------------------


def test_stale_read_after_completed_write() -> None:
    res = assert_bad([put("k", 1, 0, 1), put("k", 2, 2, 3), get("k", 1, 4, 5)])
    assert "Longest linearizable prefix" in res.explanation
    assert "#2" in res.explanation  # the unplaceable get is named


def test_read_of_initial_value_after_write() -> None:
    assert_bad([put("k", 1, 0, 1), get("k", None, 2, 3)])


def test_two_readers_see_concurrent_writes_in_opposite_orders() -> None:
    assert_bad(
        [
            put("k", 1, 0, 100, client=1),
            put("k", 2, 0, 100, client=2),
            get("k", 1, 10, 20, client=3),
            get("k", 2, 30, 40, client=3),
            get("k", 2, 10, 20, client=4),
            get("k", 1, 30, 40, client=4),
        ]
    )


def test_read_of_value_never_written() -> None:
    assert_bad([put("k", 1, 0, 1), get("k", 7, 2, 3)])


def test_read_of_value_never_written_is_found_by_the_search_alone() -> None:
    history = [put("k", 1, 0, 1), get("k", 7, 2, 3)]
    kh = lin._compile(list(enumerate(history)))
    outcome, explanation = lin._check_key("k", kh, 1000, precheck=False)
    assert outcome is lin._Outcome.FAIL
    assert "read 7 but the value is 1" in explanation


def test_successful_cas_contradicting_the_state() -> None:
    assert_bad([put("k", 1, 0, 1), cas("k", 2, 3, True, 2, 3)])


def test_failed_cas_contradicting_the_state() -> None:
    assert_bad([put("k", 1, 0, 1), cas("k", 1, 3, False, 2, 3)])


def test_two_successful_cas_from_the_same_value() -> None:
    assert_bad(
        [
            put("k", 0, 0, 1),
            cas("k", 0, 1, True, 2, 10, client=1),
            cas("k", 0, 2, True, 2, 10, client=2),
        ]
    )


def test_read_after_delete_completed() -> None:
    assert_bad([put("k", 1, 0, 1), delete("k", 2, 3), get("k", 1, 4, 5)])


# --- concurrency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seen", [1, 2])
def test_concurrent_writes_either_order(seen: int) -> None:
    assert_ok([put("k", 1, 0, 10), put("k", 2, 0, 10), get("k", seen, 11, 12)])


@pytest.mark.parametrize("seen", [None, 1])
def test_read_concurrent_with_write_sees_old_or_new(seen: object) -> None:
    assert_ok([put("k", 1, 0, 10), get("k", seen, 5, 6)])


def test_read_concurrent_with_write_then_stale_read_is_rejected() -> None:
    assert_bad([put("k", 1, 0, 10), get("k", 1, 2, 3), get("k", None, 4, 5)])


def test_concurrent_cas_one_wins() -> None:
    assert_ok(
        [
            put("k", 0, 0, 1),
            cas("k", 0, 1, False, 2, 10, client=1),
            cas("k", 0, 2, True, 2, 10, client=2),
            get("k", 2, 11, 12),
        ]
    )


def test_touching_intervals_count_as_concurrent() -> None:
    # Inclusive end points: an op invoked exactly when another completes may precede it.
    assert_ok([put("k", 1, 0, 1), get("k", None, 1, 2)])
    assert_bad([put("k", 1, 0, 1), get("k", None, 1.5, 2)])


# --- indeterminate operations --------------------------------------------------------------------


def test_indeterminate_write_that_happened() -> None:
    assert_ok([put("k", 1, 0, 1), put("k", 2, 2, None), get("k", 2, 5, 6)])


def test_indeterminate_write_that_did_not_happen() -> None:
    assert_ok([put("k", 1, 0, 1), put("k", 2, 2, None), get("k", 1, 5, 6)])


def test_indeterminate_write_may_happen_late() -> None:
    assert_ok([put("k", 1, 0, 1), put("k", 2, 2, None), get("k", 1, 5, 6), get("k", 2, 1000, 1001)])


def test_indeterminate_write_cannot_be_undone() -> None:
    assert_bad([put("k", 1, 0, 1), put("k", 2, 2, None), get("k", 2, 5, 6), get("k", 1, 7, 8)])


def test_indeterminate_write_cannot_be_seen_before_its_invoke() -> None:
    assert_bad([put("k", 2, 10, None), get("k", 2, 0, 5)])


def test_indeterminate_write_cannot_be_seen_before_its_invoke_by_search_alone() -> None:
    history = [put("k", 2, 10, None), get("k", 2, 0, 5)]
    kh = lin._compile(list(enumerate(history)))
    outcome, _ = lin._check_key("k", kh, 1000, precheck=False)
    assert outcome is lin._Outcome.FAIL


def test_indeterminate_delete() -> None:
    assert_ok([put("k", 1, 0, 1), delete("k", 2, None), get("k", None, 5, 6)])
    assert_ok([put("k", 1, 0, 1), delete("k", 2, None), get("k", 1, 5, 6)])
    assert_bad([put("k", 1, 0, 1), delete("k", 10, None), get("k", None, 5, 6)])


@pytest.mark.parametrize("seen", [1, 2])
def test_indeterminate_cas_either_outcome(seen: int) -> None:
    assert_ok([put("k", 1, 0, 1), cas("k", 1, 2, None, 2, None), get("k", seen, 5, 6)])


def test_indeterminate_cas_cannot_succeed_on_wrong_value() -> None:
    assert_bad([put("k", 3, 0, 1), cas("k", 1, 2, None, 2, None), get("k", 2, 5, 6)])


def test_indeterminate_get_is_ignored() -> None:
    assert_ok([put("k", 1, 0, 1), get("k", 99, 2, None)])


def test_only_indeterminate_ops() -> None:
    assert_ok([put("k", 1, 0, None), cas("k", 5, 6, None, 1, None), get("k", 3, 2, None)])


# --- per-key independence ------------------------------------------------------------------------


def test_keys_are_independent() -> None:
    assert_ok([put("a", 1, 0, 1), get("b", None, 2, 3), put("b", 2, 4, 5), get("a", 1, 6, 7)])


def test_violation_is_reported_with_its_key() -> None:
    history = [
        put("a", 1, 0, 1),
        get("a", 1, 2, 3),
        put("b", 1, 0, 1),
        put("b", 2, 2, 3),
        get("b", 1, 4, 5),
        put("c", 1, 0, 1),
    ]
    res = assert_bad(history, key="b")
    assert "'a'" not in res.explanation


# --- budget and validation -----------------------------------------------------------------------


def test_exhausted_budget_is_unknown_not_failure() -> None:
    res = check_kv([put("k", 1, 0, 1), get("k", 1, 2, 3)], max_states=1)
    assert res.ok
    assert res.unknown
    assert "'k'" in res.explanation


@pytest.mark.parametrize(
    "op",
    [
        Op(client=0, kind="append", key="k", invoke=0, complete=1),
        Op(client=0, kind="put", key="k", value=1, invoke=2, complete=1),
        Op(client=0, kind="cas", key="k", value=1, invoke=0, complete=1, result=None),
    ],
)
def test_malformed_ops_are_rejected(op: Op) -> None:
    with pytest.raises(ValueError):
        check_kv([op])


# --- generated histories -------------------------------------------------------------------------

VALUES = [0, 1, 2, 3]


@dataclass(frozen=True)
class Spec:
    """One op of a generated sequential execution and the interval drawn around it."""

    key: str
    kind: str
    value: int
    expected: int | None
    before: float  # invoke = linearization point - before
    after: float  # complete = linearization point + after
    fate: str  # "done", "lost-applied" (indeterminate, took effect), "lost-dropped" (never did)


def build_history(specs: list[Spec]) -> list[Op]:
    """Run the specs sequentially on a dict (linearization point of op i at 10 * i) and record
    intervals that contain those points."""
    store: dict[str, object] = {}
    history: list[Op] = []
    for i, s in enumerate(specs):
        point = 10.0 * i
        applied = s.fate != "lost-dropped"
        result: object = None
        current = store.get(s.key)
        if s.kind == "put":
            if applied:
                store[s.key] = s.value
        elif s.kind == "delete":
            if applied:
                store.pop(s.key, None)
        elif s.kind == "get":
            result = current
        else:
            result = current == s.expected
            if applied and result:
                store[s.key] = s.value
        done = s.fate == "done"
        history.append(
            Op(
                client=i,
                kind=s.kind,
                key=s.key,
                value=s.value if s.kind in ("put", "cas") else None,
                expected=s.expected if s.kind == "cas" else None,
                invoke=point - s.before,
                complete=point + s.after if done else None,
                result=result if done else None,
            )
        )
    return history


spec_strategy = st.builds(
    Spec,
    key=st.sampled_from(["a", "b", "c"]),
    kind=st.sampled_from(["put", "put", "get", "get", "get", "delete", "cas"]),
    value=st.sampled_from(VALUES),
    expected=st.sampled_from([None, *VALUES]),
    before=st.floats(min_value=0, max_value=45),
    after=st.floats(min_value=0, max_value=45),
    fate=st.sampled_from(["done"] * 8 + ["lost-applied", "lost-dropped"]),
)
histories = st.lists(spec_strategy, max_size=60).map(build_history)


def shuffled(history: list[Op], seed: int) -> list[Op]:
    out = list(history)
    random.Random(seed).shuffle(out)
    return out


@settings(max_examples=300, deadline=None)
@given(histories, st.integers(min_value=0, max_value=2**32))
def test_histories_from_a_sequential_execution_are_accepted(history: list[Op], seed: int) -> None:
    res = check_kv(shuffled(history, seed))
    assert res.ok, res.explanation
    assert not res.unknown, res.explanation


def completed_gets(history: list[Op]) -> list[int]:
    return [i for i, op in enumerate(history) if op.kind == "get" and op.complete is not None]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(histories, st.data())
def test_a_read_of_a_never_written_value_is_rejected(
    history: list[Op], data: st.DataObject
) -> None:
    gets = completed_gets(history)
    assume(gets)
    victim = data.draw(st.sampled_from(gets))
    history[victim] = replace(history[victim], result=NEVER)
    res = check_kv(history)
    assert not res.ok
    assert res.bad_key == history[victim].key
    assert f"#{victim}" in res.explanation


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(histories, st.data())
def test_the_search_alone_rejects_a_never_written_read(
    history: list[Op], data: st.DataObject
) -> None:
    # Same property with the fast pre-check disabled, so the Wing & Gong search itself is tested.
    gets = completed_gets(history)
    assume(gets)
    victim = data.draw(st.sampled_from(gets))
    history[victim] = replace(history[victim], result=NEVER)
    key = history[victim].key
    entries = [(i, op) for i, op in enumerate(history) if op.key == key]
    outcome, explanation = lin._check_key(key, lin._compile(entries), 2_000_000, precheck=False)
    assert outcome is lin._Outcome.FAIL
    assert f"#{victim}" in explanation


def random_specs(
    rng: random.Random, n: int, spread: float, keys: list[str], lost: bool = True
) -> list[Spec]:
    fates = ["done"] * 9 + (["lost-applied", "lost-dropped"] if lost else [])
    return [
        Spec(
            key=rng.choice(keys),
            kind=rng.choice(["put", "get", "get", "delete", "cas"]),
            value=rng.choice(VALUES),
            expected=rng.choice([None, *VALUES]),
            before=rng.uniform(0, spread),
            after=rng.uniform(0, spread),
            fate=rng.choice(fates),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_200_op_single_key_history_with_high_concurrency(seed: int) -> None:
    # Each op's interval spans up to ~20 neighbouring linearization points on either side.
    rng = random.Random(seed)
    history = build_history(random_specs(rng, 200, spread=200.0, keys=["k"]))
    assert_ok(history)


@pytest.mark.parametrize("seed", range(5))
def test_200_op_single_key_history_with_a_stale_read_is_rejected(seed: int) -> None:
    # A read, after everything else completed, of a value that was written earlier but then
    # overwritten must be rejected; only completed ops, so nothing can take effect late.
    rng = random.Random(1000 + seed)
    history = build_history(random_specs(rng, 200, spread=40.0, keys=["k"], lost=False))
    end = max(op.complete or op.invoke for op in history)
    history += [put("k", "last", end + 1, end + 2), get("k", 0, end + 3, end + 4)]
    assert_bad(history)


# --- differential test against brute force -------------------------------------------------------


def brute_force_linearizable(history: list[Op]) -> bool:
    """Try every subset of the indeterminate writes and every order: the definition, directly."""
    ops = [op for op in history if not (op.kind == "get" and op.complete is None)]
    done = [op for op in ops if op.complete is not None]
    lost = [op for op in ops if op.complete is None]

    def end(op: Op) -> float:
        return math.inf if op.complete is None else op.complete

    def valid(order: tuple[Op, ...]) -> bool:
        for a, b in itertools.combinations(order, 2):  # a is placed before b
            if end(b) < a.invoke:  # b finished before a started, so b must come first
                return False
        store: dict[str, object] = {}
        for op in order:
            current = store.get(op.key)
            if op.kind == "put":
                store[op.key] = op.value
            elif op.kind == "delete":
                store.pop(op.key, None)
            elif op.kind == "get":
                if current != op.result:
                    return False
            else:
                success = current == op.expected
                if op.complete is not None and success != op.result:
                    return False
                if success:
                    store[op.key] = op.value
        return True

    for r in range(len(lost) + 1):
        for chosen in itertools.combinations(lost, r):
            if any(valid(order) for order in itertools.permutations([*done, *chosen])):
                return True
    return False


small_values = st.sampled_from([None, 0, 1])
times = st.integers(min_value=0, max_value=8)


@st.composite
def arbitrary_op(draw: st.DrawFn) -> Op:
    kind = draw(st.sampled_from(["put", "get", "get", "delete", "cas"]))
    invoke = draw(times)
    complete = draw(st.one_of(st.none(), st.integers(min_value=invoke, max_value=10)))
    if complete is not None and draw(st.booleans()):
        complete = draw(st.integers(min_value=invoke, max_value=invoke + 1))  # short ops
    result: object = None
    if kind == "get":
        result = draw(small_values)
    elif kind == "cas" and complete is not None:
        result = draw(st.booleans())
    return Op(
        client=0,
        kind=kind,
        key=draw(st.sampled_from(["a", "a", "b"])),
        value=draw(st.sampled_from([0, 1])) if kind in ("put", "cas") else None,
        expected=draw(small_values) if kind == "cas" else None,
        invoke=float(invoke),
        complete=None if complete is None else float(complete),
        result=result,
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(arbitrary_op(), max_size=6))
def test_agrees_with_brute_force_on_arbitrary_small_histories(history: list[Op]) -> None:
    expected = brute_force_linearizable(history)
    res = check_kv(history)
    assert not res.unknown
    assert res.ok == expected, res.explanation
    if not res.ok:
        assert res.bad_key in {op.key for op in history}
    # The search alone (no pre-check) must agree too.
    outcomes = [
        lin._check_key(key, lin._compile(entries), 10**6, precheck=False)[0]
        for key, entries in per_key(history).items()
    ]
    assert (lin._Outcome.FAIL not in outcomes) == expected


def per_key(history: list[Op]) -> dict[str, list[tuple[int, Op]]]:
    out: dict[str, list[tuple[int, Op]]] = {}
    for index, op in enumerate(history):
        out.setdefault(op.key, []).append((index, op))
    return out
