"""Retry on CoroutineExecutor: the backoff schedule on a fake clock, full jitter, and a
job that holds its worker while it backs off.  What both executors share is in
tests/test_contract.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import coroexecutor._retry
from coroexecutor import CoroutineExecutor, Retry, ShardedExecutor


class Flaky(Exception):
    pass


class FakeClock:
    """Stands in for the backoff's sleep: the wait is recorded and the clock jumps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    async def sleep(self, delay: float) -> None:
        self.waits.append(delay)
        self.now += delay
        await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(coroexecutor._retry, "_sleep", fake.sleep)
    return fake


def failing(times: int) -> Any:
    calls: list[float] = []

    async def job(clock: FakeClock) -> int:
        calls.append(clock.now)
        await asyncio.sleep(0)
        if len(calls) <= times:
            raise Flaky(f"call {len(calls)}")
        return len(calls)

    job.calls = calls  # type: ignore[attr-defined]
    return job


def test_backoff_doubles_up_to_max_backoff(run, clock: FakeClock) -> None:
    async def main() -> None:
        job = failing(5)
        retry = Retry(6, on=Flaky, backoff=0.5, max_backoff=3.0, jitter=False)
        async with CoroutineExecutor(retry=retry) as exe:
            h = await exe.submit(job, clock)
        assert await h == 6
        assert clock.waits == [0.5, 1.0, 2.0, 3.0, 3.0]
        assert job.calls == [0.0, 0.5, 1.5, 3.5, 6.5, 9.5]  # each call after its wait
        assert exe.stats().retried == 5

    run(main())


def test_full_jitter_waits_a_random_part_of_the_backoff(run, clock: FakeClock) -> None:
    async def main() -> None:
        retry = Retry(200, on=Flaky, backoff=1.0, max_backoff=1.0)
        async with CoroutineExecutor(retry=retry) as exe:
            await exe.submit(failing(199), clock)
        assert len(clock.waits) == 199
        assert all(0 <= w <= 1.0 for w in clock.waits)
        assert len(set(clock.waits)) > 190  # random, not one fixed fraction
        assert 0.3 < sum(clock.waits) / len(clock.waits) < 0.7  # uniform over [0, 1]

    run(main())


def test_delay_is_the_schedule() -> None:
    retry = Retry(backoff=0.1, max_backoff=10.0)
    assert retry.delay(1, rand=lambda: 1.0) == pytest.approx(0.1)
    assert retry.delay(4, rand=lambda: 0.5) == pytest.approx(0.4)
    assert retry.delay(10_000, rand=lambda: 1.0) == 10.0  # no overflow on a long run
    assert Retry(jitter=False).delay(2, rand=lambda: 0.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="retry numbers start at 1"):
        retry.delay(0)


def test_a_job_holds_its_worker_while_it_backs_off(run, clock: FakeClock) -> None:
    """max_workers=1: the next job starts only once the retried one has ended."""

    async def main() -> None:
        order: list[str] = []

        async def first() -> None:
            order.append("first call")
            await asyncio.sleep(0)
            if order.count("first call") == 1:
                raise Flaky

        async def second() -> None:
            order.append("second job")

        async with CoroutineExecutor(max_workers=1, retry=Retry(on=Flaky)) as exe:
            await exe.submit(first)
            await exe.submit(second)
        assert order == ["first call", "first call", "second job"]

    run(main())


def test_a_retried_job_sees_its_own_arguments_each_time(run, clock: FakeClock) -> None:
    async def main() -> None:
        seen: list[tuple[Any, ...]] = []

        async def job(*args: Any, **kwargs: Any) -> None:
            seen.append((args, kwargs))
            await asyncio.sleep(0)
            if len(seen) < 3:
                raise Flaky

        async with CoroutineExecutor(retry=Retry(on=Flaky)) as exe:
            await exe.submit(job, 1, [2], k="v")
        assert seen == [((1, [2]), {"k": "v"})] * 3

    run(main())


def test_a_function_that_returns_no_awaitable_is_not_retried(run) -> None:
    async def main() -> None:
        def not_async() -> int:
            return 1

        async with CoroutineExecutor(retry=Retry(5, backoff=0)) as exe:
            with pytest.raises(TypeError, match="not awaitable"):
                await exe.submit(not_async)
        assert exe.stats().retried == 0

    run(main())


def test_sharded_retry_needs_exception_types_importable_by_name() -> None:
    class Local(Exception):
        pass

    with pytest.raises(TypeError, match="retry cannot be pickled"):
        ShardedExecutor(1, retry=Retry(on=Local))
