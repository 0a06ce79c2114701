"""The load generator's keys, values and loops, against an in-process fake store."""

import asyncio

import pytest

from bench import loadgen
from bench.loadgen import Job, make_key, run_job, split, value_of


def test_keys_are_8_bytes_unique_and_values_256() -> None:
    keys = {make_key("a0z", w, c) for w in range(4) for c in range(1, 2000)}
    assert len(keys) == 4 * 1999
    assert all(len(k.encode()) == 8 for k in keys)
    assert all(len(value_of(k)) == 256 and value_of(k).startswith(k.encode()) for k in keys)
    with pytest.raises(ValueError):
        make_key("a0z", 36, 1)


def test_split_spreads_clients() -> None:
    assert split(1, 4) == [1]
    assert split(8, 4) == [2, 2, 2, 2]
    assert split(10, 4) == [3, 3, 2, 2]
    assert sum(split(256, 4)) == 256


class FakeStore:
    def __init__(self, delay: float = 0.001, fail_every: int = 0) -> None:
        self.data: dict[str, bytes] = {}
        self.delay = delay
        self.fail_every = fail_every
        self.calls = 0

    async def put(self, key: str, value: bytes) -> None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError("injected")
        self.data[key] = value

    async def get(self, key: str, linearizable: bool) -> bytes | None:
        await asyncio.sleep(self.delay)
        return self.data.get(key)

    async def close(self) -> None:
        pass


def _job(**kw: object) -> Job:
    base = dict(
        system="fake",
        endpoints=[],
        worker=0,
        clients=4,
        op="put",
        start_at=0.0,
        warmup=0.05,
        measure=0.3,
        tag="t00",
    )
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def test_closed_loop_acks_are_stored_and_counted() -> None:
    store = FakeStore(fail_every=7)
    res = asyncio.run(run_job(_job(), store))
    assert res.latencies and res.errors > 0
    assert all(store.data[k] == value_of(k) for k in res.acked)
    assert len(res.acked) == len(store.data)
    assert res.window == pytest.approx(0.3)


def test_closed_loop_by_count_stops_after_count() -> None:
    store = FakeStore()
    res = asyncio.run(run_job(_job(clients=1, count=50, warmup=0.0, measure=0.0), store))
    assert len(res.latencies) == 50
    assert res.window > 0


def test_open_loop_measures_from_the_scheduled_send() -> None:
    # A store that stalls every request for 50 ms at 200/s: with coordinated omission
    # latencies would stay near 50 ms; from the schedule they are at least that.
    store = FakeStore(delay=0.05)
    res = asyncio.run(run_job(_job(mode="open", rate=200.0, clients=0), store))
    assert len(res.latencies) == pytest.approx(60, abs=3)
    assert min(res.latencies) >= 0.05


def test_reads_check_values() -> None:
    store = FakeStore()
    store.data = {k: value_of(k) for k in ("aaaaaaa1", "aaaaaaa2")}
    store.data["aaaaaaa2"] = b"wrong"
    res = asyncio.run(run_job(_job(op="get_lin", read_keys=["aaaaaaa1", "aaaaaaa2"]), store))
    assert res.bad_values > 0 and res.latencies


def test_inflight_cap_sheds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen, "INFLIGHT_CAP", 5)
    store = FakeStore(delay=0.2)
    res = asyncio.run(run_job(_job(mode="open", rate=500.0, clients=0), store))
    assert res.shed > 0
