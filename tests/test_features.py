"""The options beyond the peers: job_timeout, max_per_second, submit_nowait and
max_pending, async-iterable and unordered map, errors="group", on_error, stats(),
a settable max_workers, progress."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from coroexecutor import CoroutineExecutor, ExecutorFull, ExecutorStats


class Boom(Exception):
    pass


async def echo(x: Any) -> Any:
    return x


async def turns(n: int, value: Any = None) -> Any:
    for _ in range(n):
        await asyncio.sleep(0)
    return value


async def fail(msg: str = "boom") -> None:
    await asyncio.sleep(0)
    raise Boom(msg)


async def sleep_forever() -> None:
    await asyncio.sleep(3600)


# --------------------------------------------------------------------- job_timeout


def test_job_timeout_cancels_a_long_job_with_timeout_error(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(job_timeout=0.02, suppress_task_errors=True) as exe:
            slow = await exe.submit(sleep_forever)
            quick = await exe.submit(turns, 3, "quick")
        assert isinstance(slow.exception(), TimeoutError)
        assert quick.result() == "quick"

    run(main())


def test_job_timeout_is_a_job_failure_in_fail_fast_mode(run) -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with CoroutineExecutor(job_timeout=0.02) as exe:
                await exe.submit(sleep_forever)
                await asyncio.sleep(3600)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    run(main())


def test_job_timeout_counts_per_job_not_for_the_executor(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(max_workers=1, job_timeout=0.05) as exe:
            hs = [await exe.submit(asyncio.sleep, 0.01, i) for i in range(10)]
        assert [h.result() for h in hs] == list(range(10))  # 0.1 s in all, each 0.01

    run(main())


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf")])
def test_job_timeout_bad_values_raise_value_error_naming_it(value: float) -> None:
    with pytest.raises(ValueError, match="job_timeout"):
        CoroutineExecutor(job_timeout=value)


# --------------------------------------------------------------------- max_per_second


def test_max_per_second_spreads_starts_without_burst(run) -> None:
    rate = 50.0
    starts: list[float] = []

    async def job() -> None:
        starts.append(asyncio.get_running_loop().time())

    async def main() -> None:
        async with CoroutineExecutor(max_per_second=rate) as exe:
            for _ in range(15):
                await exe.submit(job)

    run(main())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    slack = 0.002  # a loop may fire a timer up to its clock resolution early
    assert all(g >= 1 / rate - slack for g in gaps), gaps
    assert starts[-1] - starts[0] < 10 * 14 / rate  # and not absurdly slow


def test_max_per_second_combines_with_max_workers(run) -> None:
    running = 0
    peak = 0

    async def job() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.03)
        running -= 1

    async def main() -> None:
        async with CoroutineExecutor(max_workers=2, max_per_second=1000) as exe:
            for _ in range(8):
                await exe.submit(job)

    run(main())
    assert peak == 2


def test_max_per_second_applies_to_submit_nowait(run) -> None:
    rate = 100.0
    starts: list[float] = []

    async def job() -> None:
        starts.append(asyncio.get_running_loop().time())

    async def main() -> None:
        async with CoroutineExecutor(max_per_second=rate) as exe:
            hs = [exe.submit_nowait(job) for _ in range(8)]
            await asyncio.gather(*hs)

    run(main())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 8
    # A start is claimed just before the job runs and reads the clock: on a loaded
    # machine the two can be a few ms apart.  Unpaced, the gaps would be about 0.
    assert all(g >= 1 / rate / 2 for g in gaps), gaps


@pytest.mark.parametrize("value", [0, -5, float("nan")])
def test_max_per_second_bad_values_raise_value_error_naming_it(value: float) -> None:
    with pytest.raises(ValueError, match="max_per_second"):
        CoroutineExecutor(max_per_second=value)


# --------------------------------------------------------------------- submit_nowait


def test_submit_nowait_starts_at_once_when_a_worker_is_free(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(max_workers=2) as exe:
            h = exe.submit_nowait(echo, 5)
            assert h.done()  # a no-op job ends in its first step
            assert h.result() == 5

    run(main())


def test_submit_nowait_queues_when_full_and_keeps_fifo_with_submit(run) -> None:
    order: list[str] = []

    async def record(tag: str) -> None:
        order.append(tag)

    async def main() -> None:
        gate = asyncio.Event()
        async with CoroutineExecutor(max_workers=1) as exe:
            await exe.submit(gate.wait)
            a = exe.submit_nowait(record, "a")
            waiter = asyncio.ensure_future(exe.submit(record, "b"))
            await asyncio.sleep(0)
            c = exe.submit_nowait(record, "c")
            assert not a.done() and not c.done()
            assert exe.stats().pending == 2
            gate.set()
            await asyncio.gather(a, waiter, c)

    run(main())
    assert order == ["a", "b", "c"]


def test_submit_nowait_raises_executor_full_at_max_pending(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(max_workers=1, max_pending=2) as exe:
            exe.submit_nowait(sleep_forever)
            q1 = exe.submit_nowait(echo, 1)
            q2 = exe.submit_nowait(echo, 2)
            with pytest.raises(ExecutorFull, match="max_pending=2"):
                exe.submit_nowait(echo, 3)
            await exe.shutdown(cancel_futures=True)
        assert q1.cancelled() and q2.cancelled()

    run(main())


def test_submit_nowait_with_max_pending_zero_never_queues(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(
            max_workers=1, max_pending=0, suppress_task_errors=True
        ) as exe:
            h = exe.submit_nowait(sleep_forever)
            with pytest.raises(ExecutorFull):
                exe.submit_nowait(echo, 1)
            h.cancel()

    run(main())


def test_submit_nowait_cancelled_while_queued_never_runs(run) -> None:
    ran: list[int] = []

    async def job(i: int) -> None:
        ran.append(i)

    async def main() -> None:
        gate = asyncio.Event()
        async with CoroutineExecutor(max_workers=1, suppress_task_errors=True) as exe:
            await exe.submit(gate.wait)
            hs = [exe.submit_nowait(job, i) for i in range(3)]
            hs[1].cancel()
            gate.set()
        st = exe.stats()
        assert (st.completed, st.cancelled, st.pending) == (3, 1, 0)

    run(main())
    assert ran == [0, 2]


def test_submit_nowait_bad_input_and_closed(run) -> None:
    async def f(x: int) -> int:
        return x

    async def main() -> None:
        async with CoroutineExecutor() as exe:
            with pytest.raises(TypeError, match=r"not submit_nowait\(f\(x\)\)"):
                exe.submit_nowait(f(1))  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="after shutdown"):
            exe.submit_nowait(f, 1)

    run(main())


def test_max_pending_bad_values() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        CoroutineExecutor(max_pending=-1)
    with pytest.raises(TypeError, match="max_pending"):
        CoroutineExecutor(max_pending=1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------- map inputs


async def agen(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(0)
        yield i


async def add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def test_map_takes_async_iterables_mixed_with_sync_ones(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor() as exe:
            assert [r async for r in exe.map(add, agen(5), [10, 20, 30])] == [10, 21, 32]
            assert [r async for r in exe.map(echo, agen(4))] == [0, 1, 2, 3]

    run(main())


def test_map_pulls_an_async_iterable_lazily(run) -> None:
    pulled = 0

    async def endless() -> AsyncIterator[int]:
        nonlocal pulled
        i = 0
        while True:
            pulled += 1
            yield i
            i += 1

    async def main() -> None:
        async with CoroutineExecutor(max_workers=5) as exe:
            async with contextlib.aclosing(exe.map(turns, endless())) as results:
                async for r in results:
                    if r is None and pulled >= 20:
                        break
            assert pulled <= 20 + 2 * 5 + 1

    run(main())


def test_map_unordered_yields_results_as_jobs_finish(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor() as exe:
            out = [r async for r in exe.map_unordered(turns, [6, 1, 3], ["slow", "fast", "mid"])]
        assert out == ["fast", "mid", "slow"]

    run(main())


def test_map_unordered_with_async_input_and_noop_jobs(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(max_workers=3) as exe:
            out = [r async for r in exe.map_unordered(echo, agen(50))]
        assert sorted(out) == list(range(50))

    run(main())


def test_map_unordered_error_cancels_the_rest(run) -> None:
    cancelled: list[int] = []

    async def job(i: int) -> int:
        if i == 2:
            await asyncio.sleep(0)
            raise Boom
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    async def main() -> None:
        async with CoroutineExecutor(max_workers=10) as exe:
            with pytest.raises(Boom):
                async for _ in exe.map_unordered(job, range(5)):
                    pass
            assert (await exe.submit(echo, "open")).result() == "open"

    run(main())
    assert sorted(cancelled) == [0, 1, 3, 4]


def test_map_unordered_early_exit_cancels_unfinished(run) -> None:
    async def job(i: int) -> int:
        await asyncio.sleep(0 if i == 0 else 3600)
        return i

    async def main() -> None:
        async with CoroutineExecutor(max_workers=4) as exe:
            it = exe.map_unordered(job, range(10))
            assert await it.__anext__() == 0
            await it.aclose()
            for _ in range(3):
                await asyncio.sleep(0)  # the cancelled jobs unwind in their workers
            st = exe.stats()
            assert (st.running, st.completed, st.cancelled) == (0, 1, 4)

    run(main())


# --------------------------------------------------------------------- errors, on_error


def test_errors_group_raises_every_job_error(run) -> None:
    async def fail_later(msg: str, n: int) -> None:
        await turns(n)
        raise Boom(msg)

    async def cleanup_fails() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            raise Boom("in cleanup")

    async def main() -> None:
        with pytest.raises(ExceptionGroup) as info:
            async with CoroutineExecutor(errors="group") as exe:
                await exe.submit(cleanup_fails)
                await exe.submit(fail_later, "one", 2)
                await exe.submit(fail_later, "two", 2)  # cancelled by one's failure first
                await asyncio.sleep(3600)
        msgs = sorted(str(e) for e in info.value.exceptions)
        assert msgs == ["in cleanup", "one"]

    run(main())


def test_errors_group_includes_the_bodys_error_like_taskgroup(run) -> None:
    async def main() -> None:
        with pytest.raises(ExceptionGroup) as info:
            async with CoroutineExecutor(errors="group") as exe:
                await exe.submit(fail)
                try:
                    await asyncio.sleep(3600)
                finally:
                    raise KeyError("body")
        assert {type(e) for e in info.value.exceptions} == {Boom, KeyError}

    run(main())


def test_errors_group_without_job_errors_raises_plainly(run) -> None:
    async def main() -> None:
        with pytest.raises(KeyError):
            async with CoroutineExecutor(errors="group") as exe:
                await exe.submit(echo, 1)
                raise KeyError("body")
        async with CoroutineExecutor(errors="group", suppress_task_errors=True) as exe:
            await exe.submit(fail)

    run(main())


def test_errors_bad_value() -> None:
    with pytest.raises(ValueError, match="errors must be"):
        CoroutineExecutor(errors="all")  # type: ignore[arg-type]


def test_on_error_is_called_once_per_failed_job_also_when_suppressed(run) -> None:
    calls: list[tuple[asyncio.Future[Any], BaseException]] = []

    async def fail_now() -> None:
        raise Boom("now")

    async def main() -> None:
        async with CoroutineExecutor(
            suppress_task_errors=True, on_error=lambda h, e: calls.append((h, e))
        ) as exe:
            h1 = await exe.submit(fail)
            h2 = await exe.submit(fail_now)
            ok = await exe.submit(echo, 1)
            victim = await exe.submit(sleep_forever)
            victim.cancel()
        assert [(h, str(e)) for h, e in calls] == [(h2, "now"), (h1, "boom")]
        assert ok.result() == 1

    run(main())


def test_on_error_that_raises_is_reported_not_fatal(loop_kind: str) -> None:
    reported: list[dict[str, Any]] = []

    def bad_hook(h: asyncio.Future[Any], e: BaseException) -> None:
        raise RuntimeError("hook broke")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _l, c: reported.append(c))
        async with CoroutineExecutor(suppress_task_errors=True, on_error=bad_hook) as exe:
            await exe.submit(fail)
            h = await exe.submit(echo, "still fine")
        assert h.result() == "still fine"

    asyncio.run(main())
    assert len(reported) == 1
    assert "on_error" in reported[0]["message"]


# --------------------------------------------------------------------- cancel()


def test_a_job_that_found_what_it_looked_for_cancels_the_rest(run) -> None:
    """A search: the job that finds the answer stops the executor (TaskGroup.cancel()).
    It is cancelled with the others once it awaits, and the block exits normally."""

    async def main() -> None:
        found: list[int] = []

        async def look(exe: CoroutineExecutor, i: int) -> int:
            await asyncio.sleep(0)
            if i == 7:
                found.append(i)
                exe.cancel()
                await asyncio.sleep(0)  # cancelled here, as the others are
            elif i > 7:
                await asyncio.sleep(3600)
            return i

        handles: list[asyncio.Future[int]] = []
        async with CoroutineExecutor(max_workers=4) as exe:
            for i in range(100):  # the loop ends where the body's cancellation lands
                handles.append(await exe.submit(look, exe, i))
        assert found == [7]
        done = [h.result() for h in handles if not h.cancelled()]
        assert done == list(range(7))
        st = exe.stats()
        assert st.completed == 7 and st.failed == 0 and len(handles) < 100
        assert st.submitted == len(handles) == st.completed + st.cancelled

    run(main())


def test_cancel_ends_a_map_with_the_rest(run) -> None:
    async def main() -> None:
        seen: list[int] = []
        async with CoroutineExecutor(max_workers=4) as exe:
            async for r in exe.map(turns, [1] * 1000, range(1000)):
                seen.append(r)
                if r == 10:
                    exe.cancel()
        assert seen[:11] == list(range(11)) and len(seen) < 1000
        st = exe.stats()
        assert st.submitted == st.completed + st.cancelled and st.failed == 0

    run(main())


# --------------------------------------------------------------------- stats, repr


def test_stats_counts_add_up(run) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        async with CoroutineExecutor(max_workers=3, suppress_task_errors=True) as exe:
            await exe.submit(echo, 1)
            await exe.submit(fail)
            c = await exe.submit(sleep_forever)
            await exe.submit(gate.wait)
            await asyncio.sleep(0)
            c.cancel()
            for _ in range(3):
                await asyncio.sleep(0)  # the cancelled job unwinds in its worker
            st = exe.stats()
            assert isinstance(st, ExecutorStats)
            assert st.running == 1 and st.max_workers == 3
            assert "running=1" in repr(exe)
            gate.set()
        st = exe.stats()
        assert (st.submitted, st.completed, st.failed, st.cancelled, st.running) == (4, 2, 1, 1, 0)
        assert st.submitted == st.pending + st.running + st.completed + st.failed + st.cancelled
        with pytest.raises(dataclasses.FrozenInstanceError):
            st.completed = 9  # type: ignore[misc]

    run(main())


# --------------------------------------------------------------------- max_workers


def test_max_workers_growing_wakes_blocked_submitters(run) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        async with CoroutineExecutor(max_workers=1) as exe:
            await exe.submit(gate.wait)
            blocked = asyncio.ensure_future(exe.submit(gate.wait))
            queued = exe.submit_nowait(echo, "queued")
            await asyncio.sleep(0)
            assert not blocked.done()
            exe.max_workers = 3
            assert exe.max_workers == 3
            await blocked
            await queued
            gate.set()

    run(main())


def test_max_workers_shrinking_starts_nothing_until_under_the_new_limit(run) -> None:
    running = 0
    peak_after_shrink = 0
    shrunk = False

    async def job() -> None:
        nonlocal running, peak_after_shrink
        running += 1
        if shrunk:
            peak_after_shrink = max(peak_after_shrink, running)
        await turns(3)
        running -= 1

    async def main() -> None:
        nonlocal shrunk
        async with CoroutineExecutor(max_workers=4) as exe:
            for _ in range(4):
                await exe.submit(job)
            exe.max_workers = 1
            shrunk = True
            for _ in range(6):
                await exe.submit(job)

    run(main())
    assert peak_after_shrink == 1


def test_max_workers_setter_validates() -> None:
    exe = CoroutineExecutor()
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        exe.max_workers = 0


# --------------------------------------------------------------------- progress


def test_progress_bar_shows_completed_failed_and_total(
    run, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        async with CoroutineExecutor(progress=True, suppress_task_errors=True) as exe:
            async for _ in exe.map(turns, [1] * 30):
                pass
            await exe.submit(fail)
            await asyncio.sleep(0.15)

    run(main())
    err = capsys.readouterr().err
    assert "failed=1" in err
    assert "/30" in err  # the map's length became the total


def test_progress_takes_a_total_for_a_submit_loop_and_prints_whole_counts(
    run, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        async with CoroutineExecutor(progress=200_000) as exe:
            for _ in range(200_000):
                await exe.submit(turns, 0)

    run(main(), debug=False)
    err = capsys.readouterr().err
    assert "/200000" in err  # the total: tqdm shows the ETA against it
    assert "completed=200000" in err
    assert "e+" not in err  # never 2e+5


@pytest.mark.parametrize("bad", ["yes", 0, -5, 1.5, None])
def test_progress_refuses_a_bad_value(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"progress must be True, False, or the number of jobs"):
        CoroutineExecutor(progress=bad)


def test_progress_without_tqdm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.delitem(sys.modules, "coroexecutor._progress", raising=False)
    with pytest.raises(ImportError, match=r"coroexecutor\[progress\]"):
        CoroutineExecutor(progress=True)


def test_shutdown_waits_for_queued_submit_nowait_jobs(run) -> None:
    ran: list[int] = []

    async def job(i: int) -> None:
        await asyncio.sleep(0)
        ran.append(i)

    async def main() -> None:
        exe = CoroutineExecutor(max_workers=2)
        hs = [exe.submit_nowait(job, i) for i in range(10)]
        assert exe.stats().pending == 8
        await exe.shutdown()  # submitted jobs run; only new submissions are refused
        assert all(h.done() and not h.cancelled() for h in hs)
        st = exe.stats()
        assert (st.completed, st.pending, st.running) == (10, 0, 0)

    run(main())
    assert sorted(ran) == list(range(10))


def test_exit_waits_for_queued_noop_jobs(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(max_workers=1) as exe:
            gate = asyncio.Event()
            await exe.submit(gate.wait)
            hs = [exe.submit_nowait(echo, i) for i in range(5)]
            gate.set()
        assert [h.result() for h in hs] == list(range(5))

    run(main())


def test_fail_fast_cancels_queued_jobs(run) -> None:
    async def main() -> None:
        with pytest.raises(Boom):
            async with CoroutineExecutor(max_workers=1) as exe:
                await exe.submit(fail)
                queued = [exe.submit_nowait(echo, i) for i in range(3)]
                await asyncio.sleep(3600)
        assert all(h.cancelled() for h in queued)
        assert exe.stats().cancelled == 3

    run(main())


def test_worker_tasks_are_named_after_their_executor_and_number(run) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        me = asyncio.current_task()
        async with CoroutineExecutor(3) as a, CoroutineExecutor(2) as b:
            for _ in range(3):
                await a.submit(gate.wait)
            for _ in range(2):
                await b.submit(gate.wait)
            names = sorted(t.get_name() for t in asyncio.all_tasks() if t is not me)
            gate.set()
        workers: dict[str, set[int]] = {}
        for name in names:
            m = re.fullmatch(r"(CoroutineExecutor-\d+) worker (\d+)", name)
            assert m, name
            workers.setdefault(m.group(1), set()).add(int(m.group(2)))
        assert sorted(workers.values(), key=len) == [{1, 2}, {1, 2, 3}]

    run(main())
