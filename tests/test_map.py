"""map(): ordered, zip semantics, lazy and bounded, errors in order, clean early exit."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from coroexecutor import CoroutineExecutor


class Boom(Exception):
    pass


async def delayed(x: Any, dt: float = 0.0) -> Any:
    await asyncio.sleep(dt)
    return x


async def add(a: int, b: int) -> int:
    return a + b


def test_map_yields_results_in_input_order(run) -> None:
    async def main() -> None:
        delays = [0.03, 0.0, 0.02, 0.01, 0.0]
        async with CoroutineExecutor(max_workers=5) as exe:
            out = [r async for r in exe.map(delayed, range(5), delays)]
        assert out == [0, 1, 2, 3, 4]

    run(main())


def test_map_zips_iterables_and_stops_at_the_shortest(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor() as exe:
            out = [r async for r in exe.map(add, [1, 2, 3, 4], (10, 20, 30))]
        assert out == [11, 22, 33]

    run(main())


def test_map_of_empty_input_yields_nothing(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor() as exe:
            assert [r async for r in exe.map(add, [], [])] == []

    run(main())


def test_map_pulls_input_lazily_with_bounded_memory(run) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        i = 0
        while True:
            pulled += 1
            yield i
            i += 1

    async def main() -> None:
        async with CoroutineExecutor(max_workers=10) as exe:
            results = exe.map(delayed, endless(), itertools.repeat(0.001))
            got = []
            async for r in results:
                got.append(r)
                if len(got) == 50:
                    break
            await results.aclose()
            # max_workers in flight plus a reorder buffer of as many: never the input
            assert pulled <= 50 + 2 * 10 + 1
        assert got == list(range(50))

    run(main())


def test_map_reorder_buffer_is_bounded_behind_a_slow_job(run) -> None:
    pulled = 0

    def items() -> Iterator[float]:
        nonlocal pulled
        yield 0.05  # the first job is slow; the others finish at once
        for _ in range(10_000):
            pulled += 1
            yield 0.0

    async def main() -> None:
        async with CoroutineExecutor(max_workers=4) as exe:
            it = exe.map(delayed, items(), items())
            first = await it.__anext__()
            assert first == 0.05
            # Each item is counted once per source (two).  At most max_workers jobs in
            # flight plus as many finished results behind the slow one (README).
            assert pulled <= 2 * (2 * 4 + 1), pulled
            await it.aclose()

    run(main())


def test_map_error_is_raised_after_earlier_results(run) -> None:
    results: list[float] = []

    async def f(dt: float) -> float:
        await asyncio.sleep(dt)
        if dt == 0.02:
            raise Boom("oh noes")
        return dt

    async def main() -> None:
        # the failing job finishes *before* the earlier, slower one: the error still
        # comes in its place, after 0.05 has been yielded
        async with CoroutineExecutor() as exe:
            with pytest.raises(Boom):
                async for r in exe.map(f, [0.05, 0.02, 0.5]):
                    results.append(r)

    run(main())
    assert results == [0.05]


def test_map_error_cancels_the_other_map_jobs(run) -> None:
    cancelled: list[int] = []

    async def f(i: int) -> int:
        if i == 1:
            await asyncio.sleep(0.01)
            raise Boom
        try:
            await asyncio.sleep(0.01 if i == 0 else 3600)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    async def main() -> None:
        with pytest.raises(Boom):
            async with CoroutineExecutor() as exe:
                async for _ in exe.map(f, range(5)):
                    pass

    run(main())
    assert sorted(cancelled) == [2, 3, 4]


def test_map_error_under_suppress_task_errors_is_still_raised_from_the_loop(run) -> None:
    async def f(i: int) -> int:
        if i == 2:
            raise Boom
        return i

    async def main() -> None:
        got = []
        async with CoroutineExecutor(suppress_task_errors=True) as exe:
            with pytest.raises(Boom):
                async for r in exe.map(f, range(5)):
                    got.append(r)
            other = await exe.submit(delayed, "executor still open")
        assert got == [0, 1]
        assert other.result() == "executor still open"

    run(main())


def test_map_breaking_out_early_cancels_unfinished_jobs(run) -> None:
    cancelled: list[int] = []

    async def f(i: int) -> int:
        try:
            await asyncio.sleep(0 if i == 0 else 3600)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    async def main() -> None:
        async with (
            CoroutineExecutor(max_workers=4) as exe,
            contextlib.aclosing(exe.map(f, range(100))) as results,
        ):
            async for r in results:
                assert r == 0
                break

    run(main())
    assert sorted(cancelled) == [1, 2, 3, 4]  # the rest were never pulled


def test_map_aclose_cancels_unfinished_jobs_and_leaves_no_task(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(max_workers=8) as exe:
            it = exe.map(delayed, range(20), [0.0] + [3600.0] * 19)
            assert await it.__anext__() == 0
            await it.aclose()
            other = await exe.submit(delayed, "go on")
        assert other.result() == "go on"
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main())


def test_map_fails_fast_for_other_executor_jobs_too(run) -> None:
    async def main() -> None:
        with pytest.raises(Boom):
            async with CoroutineExecutor() as exe:

                async def fail() -> None:
                    await asyncio.sleep(0.01)
                    raise Boom

                await exe.submit(fail)
                async for _ in exe.map(delayed, range(3), [3600] * 3):
                    pass

    run(main())


def test_map_of_a_million_noop_items_keeps_memory_flat(run) -> None:
    async def ident(x: int) -> int:
        return x

    async def main() -> None:
        total = 0
        async with CoroutineExecutor(max_workers=100) as exe:
            async for r in exe.map(ident, range(200_000)):
                total += r
        assert total == sum(range(200_000))

    run(main(), debug=False)


def test_map_bad_input(run) -> None:
    async def f(x: int) -> int:
        return x

    async def main() -> None:
        async with CoroutineExecutor() as exe:
            with pytest.raises(TypeError, match=r"not map\(f\(x\)\)"):
                exe.map(f(1), [1])  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="at least one iterable"):
                exe.map(f)
            with pytest.raises(TypeError):
                exe.map(f, 5)  # type: ignore[arg-type]

    run(main())


# A full map shares the executor's gate with everybody else, first in first out.


def test_full_map_shares_the_gate_first_in_first_out(run) -> None:
    order: list[str] = []

    async def job(name: str) -> None:
        order.append(name)
        await asyncio.sleep(0.005)

    async def main() -> None:
        async with CoroutineExecutor(max_workers=2) as exe:

            async def other() -> None:
                await asyncio.sleep(0.012)  # the map is full and its feed queued by now
                order.append("submitted")
                await exe.submit(job, "other")

            side = asyncio.create_task(other())
            async for _ in exe.map(job, [f"m{i}" for i in range(20)]):
                pass
            await side
        # The blocked submitter is served within a job or two of its turn, not after the
        # whole map (the feed goes back to the end of the line after each count).
        at = order.index("other")
        assert at - order.index("submitted") <= 3, order
        assert order.index("m19") > at, order

    run(main())


def test_map_input_that_fails_mid_way_is_raised_and_no_job_is_lost(run) -> None:
    def items() -> Iterator[int]:
        yield from range(10)
        raise Boom("input broke")

    async def job(i: int) -> int:
        await asyncio.sleep(0.001)
        return i

    async def main() -> None:
        got = []
        async with CoroutineExecutor(max_workers=3) as exe:
            with pytest.raises(Boom, match="input broke"):
                async for r in exe.map(job, items()):
                    got.append(r)
        s = exe.stats()
        # Nothing is lost: every started job ended, completed or cancelled.
        assert s.submitted == 10 == s.completed + s.cancelled, s
        assert got == list(range(len(got)))

    run(main())


def test_map_follows_a_raised_max_workers(run) -> None:
    peak = running = 0

    async def job(i: int) -> int:
        nonlocal peak, running
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return i

    async def main() -> None:
        async with CoroutineExecutor(max_workers=2) as exe:
            async for r in exe.map(job, range(40)):
                if r == 0:
                    exe.max_workers = 6  # the map follows the new limit at once
        assert peak == 6

    run(main())


def test_map_stops_pulling_when_the_executor_shuts_down(run) -> None:
    pulled = 0

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield i

    async def job(i: int) -> int:
        await asyncio.sleep(0.002)
        return i

    async def main() -> None:
        got = []
        async with CoroutineExecutor(max_workers=2) as exe:
            with pytest.raises(RuntimeError, match="after shutdown"):
                async for r in exe.map(job, items()):
                    got.append(r)
                    if r == 5:
                        closing = asyncio.create_task(exe.shutdown())
                        await asyncio.sleep(0)
            await closing
        # The jobs started before the shutdown ran to their end; no item after them.
        assert pulled < 6 + 2 * 2 + 3, pulled
        assert got[:6] == list(range(6))

    run(main())


# Jobs that return in their first step take the engine's batched fast path (no handle
# each); the tests below pin what that path keeps of map's contract.


async def ident(i: int) -> int:
    return i


@pytest.mark.parametrize("max_workers", [4, 1000])
def test_map_of_jobs_that_end_at_once_looks_ahead_a_bounded_number_of_items(
    run, max_workers: int
) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    async def main() -> None:
        async with CoroutineExecutor(max_workers=max_workers) as exe:
            results = exe.map(ident, endless())
            assert await results.__anext__() == 0
            # At most 32 items (max_workers if fewer) are started ahead of the result
            # being yielded, whatever max_workers is.
            assert pulled <= min(max_workers, 32) + 1, pulled
            await results.aclose()
        s = exe.stats()
        assert s.submitted == s.completed == pulled, s

    run(main())


def test_map_of_jobs_that_end_at_once_keeps_order_with_suspending_ones(run) -> None:
    async def some_suspend(i: int) -> int:
        if i % 3 == 0:
            await asyncio.sleep(0)
        if i % 7 == 0:
            await asyncio.sleep(0.001)
        return i

    async def main() -> None:
        async with CoroutineExecutor(max_workers=8) as exe:
            assert [r async for r in exe.map(some_suspend, range(500))] == list(range(500))

    run(main())


@pytest.mark.parametrize(
    ("workers", "suspend"),
    [(1000, False), (2, True)],
    ids=["started-by-the-map", "started-by-a-worker-whose-job-ended"],
)
def test_map_error_in_a_first_step_is_raised_in_its_place_and_stops_the_input(
    run, workers: int, suspend: bool
) -> None:
    started = 0

    async def f(i: int) -> int:
        nonlocal started
        started += 1
        if i == 5:
            raise Boom(i)
        if suspend:
            await asyncio.sleep(0)  # so the next items are started by the workers
        return i

    async def main() -> None:
        got = []
        async with CoroutineExecutor(max_workers=workers) as exe:
            with pytest.raises(Boom):
                async for r in exe.map(f, range(100)):
                    got.append(r)
        assert got == [0, 1, 2, 3, 4]
        assert started == 6  # no item after the failing one was started
        s = exe.stats()
        assert (s.submitted, s.failed, s.completed + s.cancelled) == (6, 1, 5), s

    run(main())


def test_map_input_that_fails_after_jobs_that_ended_at_once_yields_them_first(run) -> None:
    def items() -> Iterator[int]:
        yield from range(10)
        raise Boom("input broke")

    async def main() -> None:
        got = []
        async with CoroutineExecutor(max_workers=1000) as exe:
            with pytest.raises(Boom, match="input broke"):
                async for r in exe.map(ident, items()):
                    got.append(r)
        assert got == list(range(10))
        s = exe.stats()
        assert s.submitted == s.completed == 10, s

    run(main())


def test_map_fn_that_returns_no_awaitable_mid_way_yields_the_results_before_it(run) -> None:
    def sometimes_sync(i: int) -> Any:
        return 42 if i == 3 else ident(i)

    async def main() -> None:
        got = []
        async with CoroutineExecutor(max_workers=1000) as exe:
            with pytest.raises(TypeError, match="awaitable"):
                async for r in exe.map(sometimes_sync, range(10)):
                    got.append(r)
        assert got == [0, 1, 2]
        s = exe.stats()
        assert s.submitted == s.completed == 3, s

    run(main())


def test_map_workers_take_the_next_items_while_the_consumer_is_busy(run) -> None:
    # Pull-style: a worker whose job ends starts the map's next item itself, so the map
    # goes on while the `async for` body is busy, up to max_workers in flight plus as
    # many finished results waiting their turn.
    started = 0

    async def job(i: int) -> int:
        nonlocal started
        started += 1
        await asyncio.sleep(0)
        return i

    async def main() -> None:
        async with CoroutineExecutor(max_workers=2) as exe:
            results = exe.map(job, range(100))
            assert await results.__anext__() == 0
            before = started
            await asyncio.sleep(0.05)  # the consumer is busy elsewhere
            assert started > before, (before, started)
            assert started <= 1 + 2 * 2, started  # the one yielded, and 2W behind it
            rest = [r async for r in results]
        assert rest == list(range(1, 100))
        s = exe.stats()
        assert s.submitted == s.completed == 100, s

    run(main())


# --------------------------------------------------------------------- return_exceptions


async def fails_every_tenth(i: int) -> int:
    if i % 10 == 3:
        raise Boom(f"at once {i}")  # in its first step: the runners' pull sees it
    await asyncio.sleep(0)
    if i % 10 == 7:
        raise Boom(f"later {i}")
    return i


def _as_seen(r: Any) -> Any:
    return f"{type(r).__name__}: {r}" if isinstance(r, BaseException) else r


def test_map_return_exceptions_goes_on_through_the_pull_path(run) -> None:
    """A long map at a small max_workers: freed workers start the next items in place
    (the pull path), and an item failing in its first step does not stop them."""

    async def main() -> None:
        want = [
            f"Boom: at once {i}" if i % 10 == 3 else f"Boom: later {i}" if i % 10 == 7 else i
            for i in range(5000)
        ]
        async with CoroutineExecutor(max_workers=2) as exe:
            got = [
                _as_seen(r)
                async for r in exe.map(fails_every_tenth, range(5000), return_exceptions=True)
            ]
            unordered = [
                _as_seen(r)
                async for r in exe.map_unordered(
                    fails_every_tenth, range(5000), return_exceptions=True
                )
            ]
        assert got == want
        assert sorted(map(str, unordered)) == sorted(map(str, want))
        st = exe.stats()
        assert (st.completed, st.failed, st.cancelled) == (8000, 2000, 0)

    run(main())


def test_map_return_exceptions_still_propagates_the_consumers_cancellation(run) -> None:
    async def main() -> None:
        started: list[int] = []
        all_started = asyncio.Event()

        async def hang(i: int) -> None:
            started.append(i)
            if len(started) == 4:
                all_started.set()
            await asyncio.sleep(3600)

        async with CoroutineExecutor(max_workers=4) as exe:

            async def consume() -> list[Any]:
                return [r async for r in exe.map(hang, range(10), return_exceptions=True)]

            consumer = asyncio.create_task(consume())
            await all_started.wait()
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
        st = exe.stats()
        assert st.cancelled == st.submitted == 4  # the map's jobs went with it

    run(main())
