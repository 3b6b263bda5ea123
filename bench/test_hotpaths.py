"""Micro-benchmarks of coroexecutor's hot paths (pytest-benchmark), on asyncio and uvloop.

Not part of the test suite (pyproject's ``testpaths`` is ``tests/``); run them by name:

    .venv/bin/python -m pytest bench/test_hotpaths.py --benchmark-only -p no:cacheprovider

Every round runs a batch of ``BATCH`` (10,000) jobs inside one event loop: the loop is
made once per test and each round is one ``runner.run()`` of the batch, so the per-round
overhead (tens of µs) is small next to the batch.  Read the times as "per 10,000 jobs":
1 ms per round is 0.1 µs per job; ``extra_info["us_per_job"]`` (in ``--benchmark-json``)
has the median divided out.  Benchmarks are grouped by loop, so each table compares
ours with that loop's floors.  The machine is shared and noisy: compare rows of one run
(``bench/check.py`` does that for CI), not runs of different days.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from coroexecutor import CoroutineExecutor

BATCH = 10_000  # jobs per round
ROUNDS = 20
WARMUP_ROUNDS = 2
WORKERS = 1000  # "spare capacity": no-op jobs finish at once, so a slot is always free

Batch = Callable[[], Coroutine[Any, Any, None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "uvloop":
        pytest.importorskip("uvloop")
    return name


@pytest.fixture
def runner(loop_name: str) -> Iterator[asyncio.Runner]:
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory, debug=False) as r:
        yield r


@pytest.fixture
def bench_batch(benchmark: Any, runner: asyncio.Runner, loop_name: str) -> Callable[[Batch], None]:
    """bench_batch(fn): time ``runner.run(fn())``, one batch of BATCH jobs per round."""

    def run(fn: Batch) -> None:
        benchmark.group = loop_name
        benchmark.extra_info["jobs_per_round"] = BATCH
        benchmark.pedantic(
            runner.run,
            setup=lambda: ((fn(),), {}),  # the coroutine is made outside the timing
            rounds=ROUNDS,
            warmup_rounds=WARMUP_ROUNDS,
            iterations=1,
        )
        stats = getattr(benchmark, "stats", None)
        if stats is not None:  # None under --benchmark-disable
            benchmark.extra_info["us_per_job"] = round(stats.stats.median / BATCH * 1e6, 4)

    return run


async def noop() -> None:
    pass


async def noop1(_i: int) -> None:
    pass


async def sleep0() -> None:
    await asyncio.sleep(0)


def test_floor_noop(bench_batch: Callable[[Batch], None]) -> None:
    """The floor: ``await noop()`` in a loop, BATCH times; no executor, no task.

    What a no-op job costs the loop itself; ours over this is the executor's overhead.
    """

    async def batch() -> None:
        for _i in range(BATCH):
            await noop()

    bench_batch(batch)


def test_submit_noop(bench_batch: Callable[[Batch], None]) -> None:
    """``await exe.submit(noop)`` with spare capacity (W=1000), BATCH times.

    The job finishes in its first step, inside submit (eager start), so this is the
    submit fast path: take a slot, run the coroutine one step, finish the handle,
    free the slot; handles are dropped.  Includes one ``async with`` per batch.
    """

    async def batch() -> None:
        async with CoroutineExecutor(max_workers=WORKERS) as exe:
            for _i in range(BATCH):
                await exe.submit(noop)

    bench_batch(batch)


def test_map_noop(bench_batch: Callable[[Batch], None]) -> None:
    """``async for _ in exe.map(noop1, range(BATCH))`` at W=1000.

    map's inlined fast path plus yielding each result in order; every job is done by
    the time it is yielded, so the reorder buffer stays empty.
    """

    async def batch() -> None:
        async with CoroutineExecutor(max_workers=WORKERS) as exe:
            async for _r in exe.map(noop1, range(BATCH)):
                pass

    bench_batch(batch)


def test_submit_sleep0(bench_batch: Callable[[Batch], None]) -> None:
    """``await exe.submit(job)`` where the job suspends once (``await asyncio.sleep(0)``).

    W=1000: the job starts inside submit, parks, and is resumed later by the loop, so
    this adds the slow path of a job: a real Task-like step after its first suspension,
    finishing off the loop, and submit waiting for a slot once 1000 are in flight.
    Compare with ``test_floor_bare_sleep0`` (bench/targets.json: submit at most 2.5x it).
    """

    async def batch() -> None:
        async with CoroutineExecutor(max_workers=WORKERS) as exe:
            for _i in range(BATCH):
                await exe.submit(sleep0)

    bench_batch(batch)


def test_submit_backpressure(bench_batch: Callable[[Batch], None]) -> None:
    """Submit under back-pressure: W=1 and jobs that suspend once (``sleep(0)``).

    Every submit after the first finds the only slot taken, so it waits; the running
    job resumes, finishes, hands the slot over and wakes the submitter.  This is the
    waiting path of submit, paid once per job.
    """

    async def batch() -> None:
        async with CoroutineExecutor(max_workers=1) as exe:
            for _i in range(BATCH):
                await exe.submit(sleep0)

    bench_batch(batch)


def test_floor_bare_sleep0(bench_batch: Callable[[Batch], None]) -> None:
    """The loop's own cost of ``sleep(0)`` jobs: 1000 bare coroutines, each doing
    ``await asyncio.sleep(0)`` BATCH/1000 times (under one ``gather``).

    The denominator for ``test_submit_sleep0``: the same number of trips through the
    loop, without a job object per trip.
    """

    async def bare(rounds: int) -> None:
        for _i in range(rounds):
            await asyncio.sleep(0)

    async def batch() -> None:
        await asyncio.gather(*(bare(BATCH // WORKERS) for _i in range(WORKERS)))

    bench_batch(batch)
