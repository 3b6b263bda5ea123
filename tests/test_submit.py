"""submit(): the handle, back-pressure, FIFO fairness, cancellation, nested submission."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import weakref
from typing import Any
from unittest import mock

import pytest

from coroexecutor import CoroutineExecutor


async def noop() -> None:
    pass


async def echo(x: Any) -> Any:
    return x


def test_submit_returns_future_handle_with_result(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(max_workers=4) as exe:
            h1 = await exe.submit(echo, 1)
            gate = asyncio.Event()

            async def slow() -> str:
                await gate.wait()
                return "slow"

            h2 = await exe.submit(slow)
            assert isinstance(h1, asyncio.Future) and isinstance(h2, asyncio.Future)
            assert not h2.done()
            seen: list[str] = []
            h2.add_done_callback(lambda f: seen.append(f.result()))
            gate.set()
            assert await h2 == "slow"
        assert h1.result() == 1 and h1.exception() is None and not h1.cancelled()
        await asyncio.sleep(0)
        assert seen == ["slow"]

    run(main())


def test_submit_passes_args_and_kwargs(run) -> None:
    async def job(a: int, b: int, *, c: int = 0) -> int:
        await asyncio.sleep(0)
        return a * 100 + b * 10 + c

    async def main() -> None:
        async with CoroutineExecutor() as exe:
            h = await exe.submit(job, 1, 2, c=3)
        assert h.result() == 123

    run(main())


def test_submit_applies_back_pressure(run) -> None:
    async def main() -> None:
        gates = [asyncio.Event() for _ in range(4)]

        async def job(i: int) -> int:
            await gates[i].wait()
            return i

        async with CoroutineExecutor(max_workers=3) as exe:
            for i in range(3):
                await exe.submit(job, i)
            fourth = asyncio.ensure_future(exe.submit(job, 3))
            for _ in range(5):
                await asyncio.sleep(0)
            assert not fourth.done(), "a 4th submit must wait while 3 jobs run"
            gates[1].set()
            handle = await fourth  # returns once job 1 has ended
            gates[0].set()
            gates[2].set()
            gates[3].set()
        assert handle.result() == 3

    run(main())


def test_never_more_than_max_workers_run_at_once(run) -> None:
    running = 0
    peak = 0

    async def job(i: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(i % 4):
            await asyncio.sleep(0)
        running -= 1

    async def producer(exe: CoroutineExecutor, n: int) -> None:
        for i in range(n):
            await exe.submit(job, i)

    async def main() -> None:
        async with CoroutineExecutor(max_workers=5) as exe:
            await asyncio.gather(*(producer(exe, 200) for _ in range(3)))
        assert running == 0

    run(main())
    assert peak == 5


def test_blocked_submitters_are_served_first_in_first_out(run) -> None:
    order: list[int] = []

    async def main() -> None:
        gate = asyncio.Event()

        async def blocker() -> None:
            await gate.wait()

        async def record(i: int) -> None:
            order.append(i)

        async with CoroutineExecutor(max_workers=1) as exe:
            await exe.submit(blocker)
            submitters = []
            for i in range(5):
                submitters.append(asyncio.ensure_future(exe.submit(record, i)))
                await asyncio.sleep(0)  # each one blocks before the next arrives
            gate.set()
            await asyncio.gather(*submitters)

    run(main())
    assert order == [0, 1, 2, 3, 4]


def test_handle_cancel_cancels_running_job(run) -> None:
    seen: list[str] = []

    async def job() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> None:
        async with CoroutineExecutor(suppress_task_errors=True) as exe:
            h = await exe.submit(job)
            assert h.cancel() is True
            assert h.cancelled()
        assert seen == ["cancelled"]

    run(main())


def test_a_job_that_swallows_its_handles_cancel_and_returns_counts_as_cancelled(run) -> None:
    # The job catches the cancellation its handle's cancel() sent and returns a value:
    # the handle stays cancelled (as a task's would not, but a handle was cancelled
    # first, and says so), the job counts once, as cancelled, and its worker is reused.
    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        await asyncio.sleep(0)
        return "returned anyway"

    async def main() -> None:
        async with CoroutineExecutor(max_workers=1, suppress_task_errors=True) as exe:
            h = await exe.submit(stubborn)
            h.cancel()
            for _ in range(5):
                await asyncio.sleep(0)
            after = await exe.submit(echo, "next")
            assert await after == "next"
        assert h.cancelled()
        s = exe.stats()
        assert (s.submitted, s.completed, s.cancelled, s.failed) == (2, 1, 1, 0), s

    run(main())


def test_cancelling_whoever_awaits_a_handle_cancels_the_job(run) -> None:
    # Task.cancel() and wait_for() cancel the future they wait on through its cancel()
    # method: on a handle of a suspended job, that must reach the job itself.
    async def main() -> None:
        unwound: list[str] = []

        async def forever(name: str) -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                unwound.append(name)

        async def wait_on(h: asyncio.Future[None]) -> None:
            await h

        async with CoroutineExecutor(max_workers=4, suppress_task_errors=True) as exe:
            h1 = await exe.submit(forever, "awaited by a task")
            waiter = asyncio.create_task(wait_on(h1))
            await asyncio.sleep(0)
            waiter.cancel()
            h2 = await exe.submit(forever, "awaited by wait_for")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(h2, 0.01)
            assert isinstance(h1, asyncio.Future) and isinstance(h2, asyncio.Future)
            await asyncio.gather(waiter, return_exceptions=True)
        assert h1.cancelled() and h2.cancelled()
        assert sorted(unwound) == ["awaited by a task", "awaited by wait_for"]
        s = exe.stats()
        assert (s.submitted, s.completed, s.cancelled, s.failed) == (2, 0, 2, 0), s

    run(main())


def test_handle_cancel_cancels_job_waiting_on_event(run) -> None:
    async def main() -> None:
        ev = asyncio.Event()
        async with CoroutineExecutor(max_workers=2, suppress_task_errors=True) as exe:
            h = await exe.submit(ev.wait)
            await asyncio.sleep(0)
            h.cancel()
            other = await exe.submit(echo, "still works")
        assert h.cancelled()
        assert other.result() == "still works"

    run(main())


def test_handle_cancel_of_finished_job_keeps_result(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor() as exe:
            h = await exe.submit(echo, 7)
            assert h.cancel() is False
        assert h.result() == 7

    run(main())


def test_submit_from_inside_a_job_never_deadlocks(run) -> None:
    results: list[int] = []

    async def child(i: int) -> None:
        await asyncio.sleep(0)
        results.append(i)

    async def producer(exe: CoroutineExecutor, base: int) -> None:
        for i in range(10):
            await exe.submit(child, base + i)

    async def main() -> None:
        # W producers fill every slot, then each submits children: a Semaphore would
        # deadlock here; the producers lend their slot instead.
        async with CoroutineExecutor(max_workers=3) as exe:
            for p in range(3):
                await exe.submit(producer, exe, p * 100)

    run(main())
    assert sorted(results) == sorted(p * 100 + i for p in range(3) for i in range(10))


def test_producer_blocked_in_submit_lends_its_slot_and_limit_holds(run) -> None:
    running = 0
    peak = 0

    async def child() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running -= 1

    async def producer(exe: CoroutineExecutor) -> None:
        nonlocal running
        running += 1
        for _ in range(20):
            running -= 1  # blocked in submit: not counted
            await exe.submit(child)
            running += 1
        running -= 1

    async def main() -> None:
        async with CoroutineExecutor(max_workers=2) as exe:
            await exe.submit(producer, exe)
            await exe.submit(producer, exe)

    run(main())
    assert peak <= 2


def test_recursive_jobs_submitting_grandchildren(run) -> None:
    count = 0

    async def tree(exe: CoroutineExecutor, depth: int) -> None:
        nonlocal count
        count += 1
        await asyncio.sleep(0)
        if depth:
            for _ in range(3):
                await exe.submit(tree, exe, depth - 1)

    async def main() -> None:
        async with CoroutineExecutor(max_workers=2) as exe:
            await exe.submit(tree, exe, 4)

    run(main())
    assert count == 1 + 3 + 9 + 27 + 81


def test_job_runs_in_its_own_task_not_the_submitters(run) -> None:
    async def main() -> None:
        me = asyncio.current_task()

        async def job() -> tuple[bool, bool]:
            first = asyncio.current_task()
            await asyncio.sleep(0)
            return first is not me, asyncio.current_task() is first

        async with CoroutineExecutor() as exe:
            h = await exe.submit(job)
        assert h.result() == (True, True)

    run(main())


def test_asyncio_timeout_inside_a_job_cancels_only_that_job(run) -> None:
    async def job() -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        except TimeoutError:
            return "job timed out"
        return "no"

    async def main() -> None:
        async with CoroutineExecutor() as exe:
            h = await exe.submit(job)
            await asyncio.sleep(0.05)  # the body must not be hit by the job's timeout
        assert h.result() == "job timed out"
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    run(main())


def test_taskgroup_inside_a_job(run) -> None:
    async def job() -> int:
        async with asyncio.TaskGroup() as tg:
            ts = [tg.create_task(echo(i)) for i in range(3)]
        return sum(t.result() for t in ts)

    async def main() -> None:
        async with CoroutineExecutor() as exe:
            hs = [await exe.submit(job) for _ in range(5)]
        assert [h.result() for h in hs] == [3] * 5

    run(main())


def test_job_that_awaits_another_handle(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(max_workers=4) as exe:
            gate = asyncio.Event()

            async def first() -> int:
                await gate.wait()
                return 1

            h1 = await exe.submit(first)

            async def second() -> int:
                return await h1 + 1

            h2 = await exe.submit(second)
            gate.set()
        assert h2.result() == 2

    run(main())


def test_executor_keeps_no_reference_to_finished_jobs(run) -> None:
    class Result:
        pass

    refs: list[weakref.ref[Any]] = []

    async def job() -> Result:
        await asyncio.sleep(0)
        r = Result()
        refs.append(weakref.ref(r))
        return r

    async def quick() -> Result:
        r = Result()
        refs.append(weakref.ref(r))
        return r

    async def main() -> None:
        async with CoroutineExecutor(max_workers=10) as exe:
            for _ in range(50):
                await exe.submit(job)
                await exe.submit(quick)
            await asyncio.sleep(0.01)
            gc.collect()
            assert refs and all(r() is None for r in refs), "finished jobs must not be kept"

    run(main())


def test_worker_slots_are_bounded_by_max_workers(run) -> None:
    async def job(i: int) -> None:
        if i % 2:
            await asyncio.sleep(0)

    async def main() -> None:
        async with CoroutineExecutor(max_workers=8) as exe:
            for i in range(5000):
                await exe.submit(job, i)
                assert len(asyncio.all_tasks()) <= 1 + 8
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main())


@pytest.mark.parametrize("value", [0, -1])
def test_max_workers_must_be_positive(value: int) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        CoroutineExecutor(max_workers=value)


@pytest.mark.parametrize("value", ["10", 1.5, True, None])
def test_max_workers_must_be_an_int(value: Any) -> None:
    with pytest.raises(TypeError, match="max_workers must be an int"):
        CoroutineExecutor(max_workers=value)


def test_submit_after_exit_raises_runtime_error(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor() as exe:
            pass
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            await exe.submit(noop)

    run(main())


def test_executor_cannot_be_entered_twice(run) -> None:
    async def main() -> None:
        exe = CoroutineExecutor()
        async with exe:
            with pytest.raises(RuntimeError, match="already been entered"):
                await exe.__aenter__()

    run(main())


def test_executor_dropped_without_shutdown_leaves_no_destroyed_task(loop_kind: str) -> None:
    # Its parked workers must survive the garbage collector until the loop ends them.
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: errors.append(ctx))
        exe = CoroutineExecutor(max_workers=4)
        for _ in range(4):
            await exe.submit(asyncio.sleep, 0)
        await asyncio.sleep(0.01)
        del exe
        gc.collect()
        await asyncio.sleep(0)

    import coroexecutor

    if loop_kind == "eager":
        with asyncio.Runner() as r:
            r.get_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
            r.run(main())
    else:
        coroexecutor.run(main(), uvloop=loop_kind == "uvloop")
    gc.collect()
    assert errors == []


@pytest.mark.parametrize("first_loop_state", ["open", "closed"])
@pytest.mark.parametrize("how", ["submit", "submit_nowait", "map"])
def test_used_from_a_second_event_loop_is_refused_on_the_fast_path(
    loop_kind: str, how: str, first_loop_state: str
) -> None:
    """An executor bound to one loop, used from a second loop in the same thread while it
    has free workers (its fast path), the first loop still open (its workers parked) or
    closed (a second asyncio.run()): a clear RuntimeError at the call, the job never
    started (and no "never awaited" warning), its count given back."""
    ran: list[int] = []

    async def job(i: int) -> int:
        ran.append(i)
        await asyncio.sleep(0)
        return i

    async def use_first() -> CoroutineExecutor:
        exe = CoroutineExecutor(max_workers=4)
        assert await (await exe.submit(job, 1)) == 1  # binds it to this loop
        assert await (await exe.submit(job, 2)) == 2  # its worker is parked now
        return exe

    async def use_second(exe: CoroutineExecutor) -> None:
        with pytest.raises(RuntimeError, match="bound to another event loop"):
            if how == "submit":
                await exe.submit(job, 3)
            elif how == "submit_nowait":
                exe.submit_nowait(job, 3)
            else:
                async for _ in exe.map(job, [3]):
                    pass

    if loop_kind == "eager":
        pytest.skip("the loop is what is tested here, not the task factory")
    factory = None
    if loop_kind == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    first = asyncio.Runner(loop_factory=factory)
    exe = first.run(use_first())
    if first_loop_state == "closed":
        first.close()
    with asyncio.Runner(loop_factory=factory) as second:
        second.run(use_second(exe))
    assert ran == [1, 2]
    st = exe.stats()
    assert (st.submitted, st.completed, st.running) == (2, 2, 0), st
    assert exe._counted == 0  # the refused job's count was given back
    if first_loop_state == "open":
        first.run(exe.shutdown())
        first.close()


async def wait_for(fut: asyncio.Future[Any]) -> Any:
    return await fut


def test_a_new_workers_task_waits_on_the_job_before_submit_returns(run) -> None:
    """A new worker's task takes its first step inside its constructor on every Python
    (3.12+: eager_start; 3.11: the engine runs that step itself), so a job that suspends
    in submit() already has its task's wake-up on what it waits for, and no first step
    per new worker is left queued in the loop."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(50)]
        async with CoroutineExecutor(max_workers=100) as exe:
            handles = [await exe.submit(wait_for, f) for f in futs]
            # Without the first step taken, nothing waits on the futures yet.
            assert [len(f._callbacks) for f in futs] == [1] * 50  # type: ignore[attr-defined]
            assert "call_soon" not in vars(loop)  # what stood in for it while a task was made
            for i, f in enumerate(futs):
                f.set_result(i)
            assert [await h for h in handles] == list(range(50))

    run(main())


@pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="3.12+: eager_start, which calls no call_soon on any loop"
)
def test_a_loop_with_its_own_call_soon_schedules_every_worker_step() -> None:
    """3.11: a loop whose call_soon is not asyncio's or uvloop's own sees every call, the
    new workers' first steps too: the engine steps a task itself only on loops it knows."""
    calls: list[Any] = []

    class CountingLoop(asyncio.SelectorEventLoop):
        def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:
            calls.append(callback)
            return super().call_soon(callback, *args, context=context)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(20)]
        async with CoroutineExecutor(max_workers=100) as exe:
            before = len(calls)
            handles = [await exe.submit(wait_for, f) for f in futs]
            assert len(calls) - before >= 20  # one first step per new worker, at least
            for i, f in enumerate(futs):
                f.set_result(i)
            return [await h for h in handles]

    with asyncio.Runner(loop_factory=CountingLoop, debug=True) as runner:
        assert runner.run(main()) == list(range(20))


def test_call_soon_from_a_collection_while_workers_are_made_reaches_the_loop(run) -> None:
    """A garbage collection may run while a new worker's task is made, and a finalizer
    then may call loop.call_soon (a transport's close() does): that call is the loop's
    own, whatever stands in for the task's first step."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        counts = {"scheduled": 0, "ran": 0}

        def ran() -> None:
            counts["ran"] += 1

        loop_thread = threading.get_ident()

        def on_gc(phase: str, _info: dict[str, Any]) -> None:
            # Other threads collect too (tqdm's monitor thread, once a progress bar has
            # run): only a collection in the loop's thread may call its call_soon.
            if phase == "start" and threading.get_ident() == loop_thread:
                counts["scheduled"] += 1
                loop.call_soon(ran)

        futs = [loop.create_future() for _ in range(200)]
        threshold = gc.get_threshold()
        gc.callbacks.append(on_gc)
        gc.set_threshold(1)  # a young collection at nearly every allocation
        try:
            async with CoroutineExecutor(max_workers=1000) as exe:
                handles = [await exe.submit(wait_for, f) for f in futs]
                gc.callbacks.remove(on_gc)
                gc.set_threshold(*threshold)
                for i, f in enumerate(futs):
                    f.set_result(i)
                assert [await h for h in handles] == list(range(200))
        finally:
            if on_gc in gc.callbacks:
                gc.callbacks.remove(on_gc)
            gc.set_threshold(*threshold)
        await asyncio.sleep(0)
        assert counts["scheduled"] > 200 and counts["ran"] == counts["scheduled"]

    run(main())


def test_a_call_soon_patched_on_the_loop_stays_and_sees_the_workers_steps(run) -> None:
    """A call_soon set on the loop instance (mock.patch.object, a tracer) is left in
    place, and on 3.11 it schedules every new worker's first step (3.12+: eager_start
    schedules none)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(20)]
        with mock.patch.object(loop, "call_soon", wraps=loop.call_soon) as patched:
            async with CoroutineExecutor(max_workers=100) as exe:
                handles = [await exe.submit(wait_for, f) for f in futs]
                assert loop.call_soon is patched
                steps = patched.call_count
                for i, f in enumerate(futs):
                    f.set_result(i)
                assert [await h for h in handles] == list(range(20))
            assert loop.call_soon is patched
        assert "call_soon" not in vars(loop)
        if sys.version_info < (3, 12):
            assert steps >= 20  # one first step per new worker

    run(main())


def test_the_loops_instance_dict_is_never_materialized(run, loop_kind: str) -> None:
    """Reading loop.__dict__ (3.11, 3.12) turns the loop's inline attribute values into
    a dict object for good, and the interpreter then stops specializing the loop's
    method calls: asyncio's Python-level loop got 9 % dearer per suspending job.  The
    engine must make workers, park and wake them without doing so."""
    if loop_kind != "asyncio":
        pytest.skip("asyncio's own loop: its methods are Python code")

    def has_dict(loop: asyncio.AbstractEventLoop) -> bool:
        return any(type(r) is dict and "_ready" in r for r in gc.get_referents(loop))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if has_dict(loop):
            pytest.skip("this Python keeps instance attributes in a dict anyway")
        futs = [loop.create_future() for _ in range(50)]
        async with CoroutineExecutor(max_workers=100) as exe:
            handles = [await exe.submit(wait_for, f) for f in futs]
            for i, f in enumerate(futs):
                f.set_result(i)
            assert [await h for h in handles] == list(range(50))
        assert not has_dict(loop)

    run(main())
