"""Linearizability checker for key-value histories.

A history is a list of client operations (:class:`Op`) on a key-value store, each with the time
the client invoked it and the time it saw the answer (or ``None`` if it never did). The history is
*linearizable* if every operation can be given a single instant (its linearization point) inside
its own interval such that executing the operations one at a time in that order, on a sequential
key-value map, gives exactly the results the clients observed (Herlihy & Wing 1990).

Model
-----
Each key is an independent register whose initial value is ``None`` (absent):

* ``put(value)`` sets it; ``delete`` sets it to ``None``;
* ``get`` returns the current value (``None`` = absent);
* ``cas(expected, value)`` succeeds (result ``True``) iff the current value equals ``expected``
  (``None`` = "key absent") and then sets ``value``; otherwise it returns ``False`` and changes
  nothing.

Values are compared with ``==`` (so ``1``, ``1.0`` and ``True`` are the same value); they need not
be hashable.

Indeterminate operations (``complete is None``: timed out, client crashed) are treated as returning
at time +infinity, the usual convention (Knossos' ``:info`` ops, Porcupine's pending calls):

* an indeterminate ``get`` constrains nothing and is dropped;
* an indeterminate ``put``/``delete``/``cas`` may take effect at any point after its invoke, or not
  at all. "Not at all" needs no special case: once every completed operation has been placed, the
  remaining indeterminate ones can be appended at the end, where nobody observes them. An
  indeterminate ``cas`` has no known result, so if it takes effect it behaves as the state dictates
  (it writes iff the current value equals ``expected``).

Interval end points are inclusive: if one operation completes at exactly the time another is
invoked they are treated as concurrent (either order is allowed). This errs towards accepting.

Algorithm
---------
1. **P-compositionality** (Herlihy & Wing 1990, "locality"; used by Porcupine and by Horn & Kroening
   2015): a history of independent registers is linearizable iff its restriction to each key is.
   The history is partitioned per key and each key is checked on its own, which turns one search
   exponential in the whole history into many small ones.
2. **Wing & Gong's search** (J. M. Wing and C. Gong, "Testing and verifying concurrent objects",
   JPDC 17(1), 1993): depth-first search for a linearization. At each step, the candidates to be
   linearized next are the not-yet-linearized operations invoked no later than the earliest
   completion among the not-yet-linearized operations (``minret``); an operation invoked after
   some pending operation already completed cannot come before it. A candidate is applied to the
   sequential model; if its recorded result disagrees, it is rejected; otherwise the search
   descends. Operations are sorted by invoke time, so the candidates are a prefix of that order and
   the scan stops at the first one invoked after ``minret``.
3. **Lowe's memoization** (G. Lowe, "Testing for linearizability", Concurrency and Computation:
   Practice and Experience 29(4), 2017; the same cache as Porcupine's ``(bitset, state)`` cache,
   A. Athalye, https://github.com/anishathalye/porcupine): two search nodes with the same set of
   linearized operations and the same model state have the same future, so each
   ``(linearized bitmask, state)`` pair is explored at most once. Values are interned to small
   integers, so the state is an int and the bitmask is a Python int.

4. **Sound reductions** on top of the plain search, each justified by an exchange argument (if a
   linearization through a pruned branch exists, one through a kept branch exists too):

   * a read-only candidate (completed ``get``, failed ``cas``) whose result matches the current
     value is linearized at once, with no branching: moving it to the front of any valid
     continuation keeps it valid, since it changes nothing and, being a candidate, was invoked
     before every pending op completed;
   * of several candidates with the same effect (same kind, value and expected value), only the
     one that completes first is tried (swapping two of them keeps a linearization valid);
   * an indeterminate op that would leave the value unchanged is never placed (it may as well be
     appended at the end), and indeterminate ops are tried after completed ones;
   * a node is dropped when the value just overwritten must still be observed by some pending
     completed op (a ``get`` of it, a successful ``cas`` expecting it) but no pending op can write
     it again;
   * subsumption for indeterminate ops: a node that differs from an already failed node only by
     having placed more indeterminate ops (same completed ops, same value) fails too, because
     from the failed one those extra ops could have been appended at the end.

   Candidates are otherwise tried earliest-completion first, which tends to follow the real order.

The search is iterative (explicit stack), so deep histories do not hit the recursion limit. Before
searching, a cheap sound pre-check rejects a read of a value that no write invoked before the read
completed could have produced (including values never written at all).

The search for one key is bounded by ``max_states`` distinct ``(bitmask, state)`` nodes; if that
budget is exhausted the key is reported as *unknown* (``ok=True, unknown=True``), never as a
violation.

On a violation, the explanation gives the longest linearizable prefix the search found for the bad
key, the model value after it, and the operations that could have come next and why each of them
could not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = ["CheckResult", "Op", "check_kv"]

KINDS = frozenset({"put", "get", "delete", "cas"})


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation on one key, as the client saw it."""

    client: int
    """Who issued it (informational only)."""
    kind: str
    """``"put"``, ``"get"``, ``"delete"`` or ``"cas"``."""
    key: str
    value: object = None
    """put / cas: the new value; get / delete: unused."""
    expected: object = None
    """cas only: the value compared against (``None`` means "key absent")."""
    invoke: float = 0.0
    """Time the client sent the request."""
    complete: float | None = None
    """Time the client saw the answer; ``None`` = indeterminate (timed out, crashed)."""
    result: object = None
    """get: the value read (``None`` = absent); cas: ``True``/``False``; put/delete: ignored."""


@dataclass(frozen=True)
class CheckResult:
    """Outcome of :func:`check_kv`."""

    ok: bool
    """False iff some key's history is proven not linearizable."""
    unknown: bool
    """True if the search budget ran out for some key: then ``ok`` is True but not proven."""
    bad_key: str | None
    """The key whose history is not linearizable (None when ``ok``)."""
    explanation: str
    """Human-readable: for a failure, the longest linearizable prefix and the unplaceable ops."""


# Step codes of the per-key model. "delete" is a put of the interned None (id 0).
_PUT = 0
_GET = 1
_CAS_TRUE = 2
_CAS_FALSE = 3
_CAS_ANY = 4  # indeterminate cas: outcome decided by the state

_NONE_ID = 0
_INF = math.inf
_MAX_LISTED = 12
_MAX_REPR = 60


class _Outcome(Enum):
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


class _Interner:
    """Maps values to small ints by equality (``==``); works for unhashable values too."""

    def __init__(self) -> None:
        self.values: list[object] = []
        self._hashable: dict[object, int] = {}
        self._unhashable: list[tuple[object, int]] = []
        self.intern(None)  # id 0 == _NONE_ID

    def intern(self, value: object) -> int:
        try:
            found = self._hashable.get(value)
        except TypeError:
            for other, ident in self._unhashable:
                if other == value:
                    return ident
            ident = len(self.values)
            self.values.append(value)
            self._unhashable.append((value, ident))
            return ident
        if found is not None:
            return found
        ident = len(self.values)
        self.values.append(value)
        self._hashable[value] = ident
        return ident


@dataclass(slots=True)
class _KeyHistory:
    """One key's operations, sorted by invoke time, compiled to ints for the search."""

    origin: list[int]  # index of each op in the caller's history
    ops: list[Op]
    codes: list[int]
    vals: list[int]  # new value id (put/delete/cas)
    exps: list[int]  # cas expected id
    ress: list[int]  # get result id
    inv: list[float]
    ret: list[float]  # +inf for indeterminate ops
    required: int  # bitmask of completed ops (must all be linearized)
    interner: _Interner


def _validate(index: int, op: Op) -> None:
    if op.kind not in KINDS:
        raise ValueError(f"op #{index}: unknown kind {op.kind!r} (expected one of {sorted(KINDS)})")
    if op.complete is not None and op.complete < op.invoke:
        raise ValueError(f"op #{index}: complete {op.complete} is before invoke {op.invoke}")
    if op.kind == "cas" and op.complete is not None and not isinstance(op.result, bool):
        raise ValueError(f"op #{index}: a completed cas needs a bool result, got {op.result!r}")


def _compile(entries: list[tuple[int, Op]]) -> _KeyHistory:
    # Indeterminate gets impose nothing.
    kept = [(i, op) for i, op in entries if not (op.kind == "get" and op.complete is None)]
    kept.sort(key=lambda e: (e[1].invoke, e[0]))
    interner = _Interner()
    kh = _KeyHistory([], [], [], [], [], [], [], [], 0, interner)
    for pos, (index, op) in enumerate(kept):
        val = exp = res = _NONE_ID
        if op.kind == "put":
            code, val = _PUT, interner.intern(op.value)
        elif op.kind == "delete":
            code = _PUT
        elif op.kind == "get":
            code, res = _GET, interner.intern(op.result)
        else:  # cas
            val, exp = interner.intern(op.value), interner.intern(op.expected)
            code = _CAS_TRUE if op.result else _CAS_FALSE
            if op.complete is None:
                code = _CAS_ANY
        kh.origin.append(index)
        kh.ops.append(op)
        kh.codes.append(code)
        kh.vals.append(val)
        kh.exps.append(exp)
        kh.ress.append(res)
        kh.inv.append(op.invoke)
        if op.complete is None:
            kh.ret.append(_INF)
        else:
            kh.ret.append(op.complete)
            kh.required |= 1 << pos
    return kh


def _step(code: int, val: int, exp: int, res: int, state: int) -> int:
    """Apply one op to the model: the new state, or -1 if the op's result contradicts it."""
    if code == _PUT:
        return val
    if code == _GET:
        return state if state == res else -1
    if code == _CAS_TRUE:
        return val if state == exp else -1
    if code == _CAS_FALSE:
        return state if state != exp else -1
    return val if state == exp else state  # _CAS_ANY


def _search(kh: _KeyHistory, max_states: int) -> tuple[_Outcome, list[int]]:
    """Wing & Gong DFS with Lowe's (bitmask, state) cache.

    Returns the outcome and, for FAIL, the longest linearizable prefix found (as op positions).
    """
    n = len(kh.inv)
    required = kh.required
    if required == 0:
        return _Outcome.OK, []
    codes, vals, exps, ress = kh.codes, kh.vals, kh.exps, kh.ress
    inv, ret = kh.inv, kh.ret
    by_ret = sorted(range(n), key=lambda i: (ret[i], i))
    cache: set[tuple[int, int]] = {(0, _NONE_ID)}

    optional = ~required & ((1 << n) - 1)  # indeterminate ops
    optional_positions = [i for i in range(n) if (optional >> i) & 1]  # sorted by invoke

    # Which ops may produce each value (writers) and which completed ops must observe it (gets
    # reading it, successful cas expecting it); used to prune nodes that left a value behind
    # for good while some op still has to observe it.
    producers = [0] * len(kh.interner.values)
    observers = [0] * len(kh.interner.values)
    for i, code in enumerate(codes):
        if code in (_PUT, _CAS_TRUE, _CAS_ANY):
            producers[vals[i]] |= 1 << i
        if code == _GET:
            observers[ress[i]] |= 1 << i
        elif code == _CAS_TRUE:
            observers[exps[i]] |= 1 << i

    def children(mask: int, state: int, rp: int) -> list[tuple[int, int]]:
        """(op position, new state) of each op that may be linearized next, best first."""
        minret = ret[by_ret[rp]] if rp < n else _INF
        out: list[tuple[int, int]] = []
        # Completed ops, from the lowest one not yet linearized.
        taken = mask | optional
        i = ((taken + 1) & ~taken).bit_length() - 1
        while i < n and inv[i] <= minret:
            if not (taken >> i) & 1:
                code = codes[i]
                if code == _PUT:
                    out.append((i, vals[i]))
                elif code == _GET:
                    if state == ress[i]:
                        return [(i, state)]  # consistent read-only op: take it now (module doc)
                elif code == _CAS_TRUE:
                    if state == exps[i]:
                        out.append((i, vals[i]))
                elif state != exps[i]:  # _CAS_FALSE
                    return [(i, state)]
            i += 1
        # Of several candidate ops with the same effect (same kind, value and expected value),
        # only the one with the earliest completion needs trying: in any linearization that
        # places another of them next, swapping the two gives one that places it next.
        out.sort(key=lambda c: ret[c[0]])
        seen: set[tuple[int, int, int]] = set()
        unique: list[tuple[int, int]] = []
        for child in out:
            i = child[0]
            effect = (codes[i], vals[i], exps[i])
            if effect not in seen:
                seen.add(effect)
                unique.append(child)
        # Indeterminate ops last. One that would not change the state is never worth placing:
        # it may as well be appended at the end.
        for i in optional_positions:
            if inv[i] > minret:
                break
            if not (mask >> i) & 1:
                new_state = vals[i] if codes[i] == _PUT or state == exps[i] else state
                effect = (codes[i] + 100, vals[i], exps[i])
                if new_state != state and effect not in seen:
                    seen.add(effect)
                    unique.append((i, new_state))
        return unique

    # Lowe's cache holds every node reached; all of them but the ones on the stack have failed.
    # On top of it, indeterminate ops get a subsumption check: node (mask, s) is at least as
    # constrained as (mask', s) when mask' lacks some indeterminate ops of mask and is otherwise
    # equal, because those ops can always be appended at the end. So once (mask', s) has failed,
    # (mask, s) need not be searched. `failed` maps (completed-ops mask, state) to the
    # indeterminate-ops masks of nodes that failed.
    failed: dict[tuple[int, int], list[int]] = {}

    # Explicit DFS stack. Per frame: linearized mask, model state, position in by_ret of the first
    # non-linearized op (gives minret), the frame's children and how many have been tried.
    masks = [0]
    states = [_NONE_ID]
    rptrs = [0]
    kids = [children(0, _NONE_ID, 0)]
    tried = [0]
    path: list[int] = []  # path[k] = op linearized between frame k and frame k + 1
    best: list[int] = []

    while masks:
        mine = kids[-1]
        k = tried[-1]
        pushed = False
        while k < len(mine):
            i, new_state = mine[k]
            k += 1
            new_mask = masks[-1] | (1 << i)
            done = new_mask & required
            if done == required:
                return _Outcome.OK, []
            old_state = states[-1]
            if (
                new_state != old_state
                and observers[old_state] & ~new_mask
                and not producers[old_state] & ~new_mask
            ):
                continue  # the value just overwritten must still be observed but never returns
            node = (new_mask, new_state)
            if node in cache:
                continue
            if optional:
                extra = new_mask & optional
                dead = failed.get((done, new_state))
                if dead is not None and any(not f & ~extra for f in dead):
                    continue
            cache.add(node)
            if len(cache) > max_states:
                return _Outcome.UNKNOWN, []
            tried[-1] = k
            new_rp = rptrs[-1]
            while new_rp < n and (new_mask >> by_ret[new_rp]) & 1:
                new_rp += 1
            masks.append(new_mask)
            states.append(new_state)
            rptrs.append(new_rp)
            kids.append(children(new_mask, new_state, new_rp))
            tried.append(0)
            path.append(i)
            if len(path) > len(best):
                best = path.copy()
            pushed = True
            break
        if not pushed:
            mask = masks.pop()
            state = states.pop()
            rptrs.pop()
            kids.pop()
            tried.pop()
            if path:
                path.pop()
            if optional:
                failed.setdefault((mask & required, state), []).append(mask & optional)
    return _Outcome.FAIL, best


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _fmt_time(t: float | None) -> str:
    return "?" if t is None else f"{t:g}"


def _fmt_op(index: int, op: Op) -> str:
    if op.kind == "put":
        body = f"put({_short(op.value)})"
    elif op.kind == "delete":
        body = "delete()"
    elif op.kind == "get":
        body = f"get() -> {_short(op.result)}"
    else:
        outcome = "?" if op.complete is None else str(op.result)
        body = f"cas({_short(op.expected)} -> {_short(op.value)}) = {outcome}"
    return f"#{index} c{op.client} {body} [{_fmt_time(op.invoke)}, {_fmt_time(op.complete)}]"


def _fmt_list(items: list[str]) -> str:
    if len(items) > _MAX_LISTED:
        hidden = len(items) - _MAX_LISTED
        items = [*items[: _MAX_LISTED // 2], f"... {hidden} more ...", *items[-_MAX_LISTED // 2 :]]
    return "; ".join(items) if items else "(none)"


def _why_not(kh: _KeyHistory, pos: int, state: int, mask: int) -> str:
    """Why op ``pos`` cannot be linearized after the prefix ``mask`` that left value ``state``."""
    values = kh.interner.values
    code = kh.codes[pos]
    current = _short(values[state])
    new_state = _step(code, kh.vals[pos], kh.exps[pos], kh.ress[pos], state)
    if new_state < 0:
        if code == _GET:
            return f"read {_short(values[kh.ress[pos]])} but the value is {current}"
        if code == _CAS_TRUE:
            return f"succeeded but the value is {current}, not {_short(values[kh.exps[pos]])}"
        return f"failed but the value is {current}, which equals its expected value"
    if new_state != state:
        pending = [p for p in range(len(kh.inv)) if p != pos and not (mask >> p) & 1]
        writes_again = any(
            kh.codes[p] in (_PUT, _CAS_TRUE, _CAS_ANY) and kh.vals[p] == state for p in pending
        )
        readers = [
            p
            for p in pending
            if (kh.codes[p] == _GET and kh.ress[p] == state)
            or (kh.codes[p] == _CAS_TRUE and kh.exps[p] == state)
        ]
        if readers and not writes_again:
            reader = _fmt_op(kh.origin[readers[0]], kh.ops[readers[0]])
            return f"it would overwrite {current}, which {reader} must still observe"
    return "its result fits, but no linearization of the remaining ops follows it"


def _explain_failure(key: str, kh: _KeyHistory, best: list[int]) -> str:
    n = len(kh.inv)
    mask = 0
    state = _NONE_ID
    for pos in best:
        state = _step(kh.codes[pos], kh.vals[pos], kh.exps[pos], kh.ress[pos], state)
        mask |= 1 << pos
    pending = [p for p in range(n) if not mask >> p & 1]
    minret = min((kh.ret[p] for p in pending), default=_INF)
    candidates = [p for p in pending if kh.inv[p] <= minret]
    # Completed ops that must come after some unplaceable one.
    blocked = [p for p in pending if kh.inv[p] > minret and kh.ret[p] != _INF]
    prefix = [_fmt_op(kh.origin[p], kh.ops[p]) for p in best]
    cannot = [
        f"{_fmt_op(kh.origin[p], kh.ops[p])}: {_why_not(kh, p, state, mask)}" for p in candidates
    ]
    later = [_fmt_op(kh.origin[p], kh.ops[p]) for p in blocked]
    return (
        f"key {key!r} is not linearizable ({n} ops checked). "
        f"Longest linearizable prefix ({len(best)} ops): {_fmt_list(prefix)}. "
        f"Value after it: {_short(kh.interner.values[state])}. "
        f"Ops that could come next but cannot be placed: {_fmt_list(cannot)}. "
        f"Completed ops left unplaced after those: {_fmt_list(later)}."
    )


def _precheck(key: str, kh: _KeyHistory) -> str | None:
    """Sound fast rejection: a value observed (get result, successful cas expected value) must have
    been written by an op invoked no later than the observing op completed."""
    first_write: dict[int, float] = {}
    for pos, code in enumerate(kh.codes):
        if code in (_PUT, _CAS_TRUE, _CAS_ANY):
            val = kh.vals[pos]
            first_write[val] = min(first_write.get(val, _INF), kh.inv[pos])
    for pos, code in enumerate(kh.codes):
        if code == _GET:
            seen = kh.ress[pos]
        elif code == _CAS_TRUE:
            seen = kh.exps[pos]
        else:
            continue
        if seen != _NONE_ID and first_write.get(seen, _INF) > kh.ret[pos]:
            return (
                f"key {key!r} is not linearizable: "
                f"{_fmt_op(kh.origin[pos], kh.ops[pos])} observes "
                f"{_short(kh.interner.values[seen])}, which no write invoked before it completed "
                f"could have produced. No linearization can place it."
            )
    return None


def _check_key(
    key: str, kh: _KeyHistory, max_states: int, *, precheck: bool = True
) -> tuple[_Outcome, str]:
    if precheck:
        reason = _precheck(key, kh)
        if reason is not None:
            return _Outcome.FAIL, reason
    outcome, best = _search(kh, max_states)
    if outcome is _Outcome.FAIL:
        return outcome, _explain_failure(key, kh, best)
    return outcome, ""


def check_kv(history: Sequence[Op], *, max_states: int = 2_000_000) -> CheckResult:
    """Check that ``history`` is linearizable with respect to a key-value map.

    Each key is checked independently (P-compositionality); keys are checked in sorted order and
    the first non-linearizable one is reported. ``max_states`` bounds the number of distinct
    ``(linearized set, value)`` search nodes per key; a key that exhausts it is reported as unknown.

    Raises ``ValueError`` for a malformed op (unknown kind, ``complete < invoke``, or a completed
    cas whose result is not a bool).
    """
    if max_states < 1:
        raise ValueError("max_states must be positive")
    per_key: dict[str, list[tuple[int, Op]]] = {}
    for index, op in enumerate(history):
        _validate(index, op)
        per_key.setdefault(op.key, []).append((index, op))
    unknown_keys: list[str] = []
    for key in sorted(per_key):
        kh = _compile(per_key[key])
        outcome, explanation = _check_key(key, kh, max_states)
        if outcome is _Outcome.FAIL:
            return CheckResult(ok=False, unknown=False, bad_key=key, explanation=explanation)
        if outcome is _Outcome.UNKNOWN:
            unknown_keys.append(key)
    if unknown_keys:
        return CheckResult(
            ok=True,
            unknown=True,
            bad_key=None,
            explanation=(
                f"search budget of {max_states} states exhausted for "
                f"{len(unknown_keys)} key(s): {_fmt_list([repr(k) for k in unknown_keys])}; "
                f"the other {len(per_key) - len(unknown_keys)} key(s) are linearizable"
            ),
        )
    return CheckResult(
        ok=True,
        unknown=False,
        bad_key=None,
        explanation=f"linearizable: {len(history)} ops over {len(per_key)} key(s)",
    )
