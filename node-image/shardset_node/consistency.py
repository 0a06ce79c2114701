"""Read consistency modes: their names, validation, and the pure rules that decide
whether a replica may serve a read (docs/consistency.md says what each one guarantees).

* linearizable: ReadIndex on the leader (a heartbeat round confirms leadership; no log
  write per read).
* lease: the leader answers from its lease, without a round trip, when the lease is valid
  (safe while clocks drift less than RaftConfig.max_clock_drift_ticks per election timeout).
* bounded: any replica that can prove its state is at most `max_staleness_ms` old.
* session: any replica whose applied index reached the client's session token.
* eventual: any replica, at once, from what it has applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardset_proto.consistency import DEFAULT_MODE, MAX_STALENESS_LIMIT_MS, MODES
from shardset_proto.errors import ApiError


@dataclass(frozen=True)
class ReadPolicy:
    """A node's default read consistency (changed live through the admin API)."""

    mode: str = DEFAULT_MODE
    max_staleness_ms: int | None = None

    def view(self) -> dict[str, object]:
        return {"mode": self.mode, "maxStalenessMs": self.max_staleness_ms}


def check_mode(mode: object, field: str = "mode") -> str:
    if not isinstance(mode, str) or mode not in MODES:
        raise ApiError(
            400,
            "bad_field",
            f"{field!r} must be one of {', '.join(MODES)}; got {mode!r}",
            field=field,
        )
    return mode


def check_staleness(value: object, field: str = "maxStalenessMs") -> int | None:
    if value is None:
        return None
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not 0 < value <= MAX_STALENESS_LIMIT_MS
    ):
        raise ApiError(
            400,
            "bad_field",
            f"{field!r} must be null or an integer of milliseconds in "
            f"[1, {MAX_STALENESS_LIMIT_MS}]; got {value!r}",
            field=field,
        )
    return value


def policy_from_body(body: dict[str, object]) -> ReadPolicy:
    """The admin body {"mode": ..., "maxStalenessMs": ...}; a bounded mode needs a bound."""
    unknown = sorted(set(body) - {"mode", "maxStalenessMs"})
    if unknown:
        raise ApiError(400, "bad_field", f"unknown field(s) {unknown}", field=unknown[0])
    if "mode" not in body:
        raise ApiError(400, "missing_field", "'mode' is required", field="mode")
    mode = check_mode(body["mode"])
    bound = check_staleness(body.get("maxStalenessMs"))
    if mode == "bounded" and bound is None:
        raise ApiError(
            400,
            "bad_field",
            "'maxStalenessMs' is required (an integer of milliseconds) for mode 'bounded'",
            field="maxStalenessMs",
        )
    return ReadPolicy(mode, bound)


def resolve(
    default: ReadPolicy, mode: str | None, max_staleness_ms: int | None
) -> tuple[str, int | None]:
    """The mode and bound one read runs under: the request's, else the node's default."""
    chosen = check_mode(mode, "consistency") if mode is not None else default.mode
    bound = check_staleness(max_staleness_ms, "max_staleness_ms")
    if bound is None and chosen == "bounded":
        bound = default.max_staleness_ms
        if bound is None:
            raise ApiError(
                400,
                "bad_parameter",
                "consistency=bounded needs max_staleness_ms (this node has no default bound)",
                field="max_staleness_ms",
            )
    return chosen, bound


@dataclass(frozen=True)
class FreshnessProof:
    """A follower's evidence about its staleness: the leader answered a ReadIndex request
    that the follower sent at `asked_at` (its monotonic clock, seconds) with `index`.
    Every write acknowledged before `asked_at` has a log index <= `index` (ReadIndex is
    linearizable), so once this replica has applied `index`, its state misses no write
    acknowledged before `asked_at`: it is at most `now - asked_at` stale."""

    asked_at: float
    index: int

    def staleness_ms(self, now: float, applied: int) -> float | None:
        """The proven bound, or None if this replica has not applied `index` yet."""
        if applied < self.index:
            return None
        return max(0.0, (now - self.asked_at) * 1000.0)


def proves(proof: FreshnessProof | None, now: float, applied: int, bound_ms: int) -> bool:
    if proof is None:
        return False
    staleness = proof.staleness_ms(now, applied)
    return staleness is not None and staleness <= bound_ms
