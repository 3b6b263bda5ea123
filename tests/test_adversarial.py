"""Adversarial scenarios (issue 4): same-tick races, double cancels, hostile jobs, bad
input, interrupts, garbage collection, huge inputs.  One test per scenario; each
docstring says what it protects.

Everything is synchronised with events, futures and loop turns (``spin``), never with
sleeps; ``GUARD`` turns a hang into a failure long before the 60 s per-test timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import os
import signal
import sys
import threading
import time
import tracemalloc
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

import coroexecutor
from coroexecutor import CoroutineExecutor

GUARD = 5.0  # seconds; every scenario here takes milliseconds


class Boom(Exception):
    pass


async def spin(turns: int) -> None:
    """Let the loop go round ``turns`` times."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def sleep_forever() -> None:
    await asyncio.sleep(3600)


async def echo(x: Any) -> Any:
    return x


def me() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    assert task is not None
    return task


async def check_capacity(exe: CoroutineExecutor, w: int) -> None:
    """Exactly ``w`` jobs run on ``exe`` side by side: w start at once, a (w+1)-th waits.

    A count leaked by the executor makes a submit below hang (GUARD fails it); a count
    released twice lets the extra job start.
    """
    arrived = 0
    all_in = asyncio.Event()
    release = asyncio.Event()

    async def member() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == w:
            all_in.set()
        await release.wait()

    async with asyncio.timeout(GUARD):
        handles = [await exe.submit(member) for _ in range(w)]
        await all_in.wait()
        extra = asyncio.ensure_future(exe.submit(member))
        await spin(5)
        assert not extra.done(), f"a job beyond max_workers={w} was let in"
        assert arrived == w
        release.set()
        handles.append(await extra)
        await asyncio.gather(*handles)
    assert arrived == w + 1


def run_outside(loop_kind: str, main: Coroutine[Any, Any, Any]) -> Any:
    """Run ``main`` as coroexecutor.run() does (asyncio.Runner, SIGINT handler installed),
    on this loop kind, debug on.  For scenarios whose exception escapes the event loop,
    which the ``run`` fixture cannot host."""
    if loop_kind == "eager":
        with asyncio.Runner(debug=True) as runner:
            runner.get_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
            return runner.run(main)
    return coroexecutor.run(main, uvloop=loop_kind == "uvloop", debug=True)


def install_handler(errors: list[dict[str, Any]]) -> None:
    loop = asyncio.get_running_loop()
    loop.slow_callback_duration = 10.0
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))


def asyncio_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ============================================================ same-tick races


@pytest.mark.parametrize("outcome", ["returns", "raises"])
def test_cancel_in_the_same_tick_right_after_the_job_finishes(run, outcome: str) -> None:
    """handle.cancel() in the same loop iteration as the job's last step, just after it:
    the handle is already done, so cancel() is False, the result (or error) is kept, and a
    finished job is not turned into a cancelled one (no fail-fast on CancelledError; a
    bystander completes; a failure is raised as itself)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        release: asyncio.Future[None] = loop.create_future()
        cancel_returned: list[bool] = []

        async def job() -> str:
            await release
            if outcome == "raises":
                raise Boom("kept")
            return "kept"

        async def bystander() -> str:
            await spin(10)
            return "bystander"

        def finish_then_cancel(h: asyncio.Future[Any]) -> None:
            release.set_result(None)  # queues the job's resumption ...
            loop.call_soon(lambda: cancel_returned.append(h.cancel()))  # ... and this after it

        if outcome == "returns":
            async with CoroutineExecutor() as exe:
                h = await exe.submit(job)
                other = await exe.submit(bystander)
                await spin(3)
                loop.call_soon(finish_then_cancel, h)
            assert h.result() == "kept"
            assert other.result() == "bystander"
        else:
            with pytest.raises(Boom, match="kept"):
                async with CoroutineExecutor() as exe:
                    h = await exe.submit(job)
                    other = await exe.submit(sleep_forever)
                    await spin(3)
                    loop.call_soon(finish_then_cancel, h)
            assert isinstance(h.exception(), Boom)
            assert other.cancelled()
        assert cancel_returned == [False]
        assert me().cancelling() == 0

    run(main())


def test_cancel_in_the_same_tick_right_before_the_job_finishes(run) -> None:
    """handle.cancel() in the same loop iteration as the job's (already queued) last step,
    just before it: as with Task.cancel(), the cancellation wins over the queued
    resumption (the job gets CancelledError where it waited and never returns), the
    handle reads cancelled, no InvalidStateError, the job counts once, as cancelled, and
    fail-fast raises CancelledError at exit."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        release: asyncio.Future[None] = loop.create_future()
        cancel_returned: list[bool] = []
        returned: list[str] = []

        async def job() -> str:
            await release
            returned.append("late")
            return "late"

        def cancel_then_finish(h: asyncio.Future[Any]) -> None:
            loop.call_soon(lambda: cancel_returned.append(h.cancel()))  # runs first ...
            release.set_result(None)  # ... then the job's resumption, queued after it

        with pytest.raises(asyncio.CancelledError):
            async with CoroutineExecutor() as exe:
                h = await exe.submit(job)
                other = await exe.submit(sleep_forever)
                await spin(3)
                loop.call_soon(cancel_then_finish, h)
        assert cancel_returned == [True]
        assert returned == [], "cancel() before the queued resumption must win, as a task's"
        assert h.cancelled()
        assert other.cancelled()
        assert "cancelled=2" in repr(exe) and "completed=0" in repr(exe), repr(exe)
        assert me().cancelling() == 0

    run(main())


def test_two_jobs_awaiting_the_same_future_in_their_first_step(run) -> None:
    """Several jobs whose first step awaits one shared future (a shared Task, a "ready"
    future), submitted back to back on fresh workers and on reused ones: each waits on it
    as a task of its own would (no "await wasn't used with future"), and each gets its
    result when it is set."""

    async def waiter(fut: asyncio.Future[int]) -> int:
        return await fut

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with CoroutineExecutor(max_workers=4) as exe:
            for _round in range(2):  # fresh worker slots, then parked ones
                fut: asyncio.Future[int] = loop.create_future()
                hs = [await exe.submit(waiter, fut) for _ in range(4)]
                loop.call_soon(fut.set_result, 7)
                assert await asyncio.gather(*hs) == [7] * 4
                await spin(3)

    run(main())


def test_job_cancelling_its_own_task_in_its_first_step_counts_once(run) -> None:
    """A job that cancels its own task during its first step (as an inner TaskGroup,
    asyncio.timeout or executor does when something fails at once) and then uncancels it
    sees cancelling() back at 0, as in a task of its own -- on a fresh worker and on a
    reused (parked) one.  A cancellation counted twice would break asyncio.timeout and
    TaskGroup inside jobs."""

    async def job() -> int:
        t = me()
        t.cancel()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            t.uncancel()
        return t.cancelling()

    async def main() -> None:
        assert await asyncio.ensure_future(job()) == 0  # the reference: a plain task
        async with CoroutineExecutor(max_workers=1, suppress_task_errors=True) as exe:
            fresh = await exe.submit(job)
            assert await fresh == 0
            await exe.submit(asyncio.sleep, 0)  # a worker that parks when done
            await spin(3)
            reused = await exe.submit(job)
            assert await reused == 0

    run(main())


# ============================================================ back-pressure


def test_cancelled_blocked_submitter_leaks_no_slot(run) -> None:
    """A task blocked in submit() on a full executor is cancelled: CancelledError comes out
    of submit, its job never starts, and no count is leaked or doubled: afterwards exactly
    max_workers jobs run side by side and one more waits."""
    w = 3

    async def main() -> None:
        gate = asyncio.Event()
        started: list[str] = []

        async def never_started() -> None:
            started.append("started")

        async with CoroutineExecutor(max_workers=w) as exe:
            for _ in range(w):
                await exe.submit(gate.wait)
            submitter = asyncio.ensure_future(exe.submit(never_started))
            await spin(3)
            assert not submitter.done()
            submitter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await submitter
            assert started == []
            gate.set()
            await check_capacity(exe, w)
            await check_capacity(exe, w)

    run(main())


def test_owner_cancelled_while_blocked_on_back_pressure(run) -> None:
    """The task that entered the executor is cancelled from outside while its submit() is
    blocked: CancelledError comes out of that submit (the job is never started), every
    running job is cancelled and awaited, and CancelledError leaves the block."""

    async def main() -> None:
        seen: list[str] = []
        blocked = asyncio.Event()

        async def holder() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                seen.append("holder cancelled")
                raise

        async def body() -> None:
            async with CoroutineExecutor(max_workers=2) as exe:
                await exe.submit(holder)
                await exe.submit(holder)
                blocked.set()
                try:
                    await exe.submit(seen.append, "never")
                except asyncio.CancelledError:
                    seen.append("submit raised CancelledError")
                    raise

        t = asyncio.ensure_future(body())
        await blocked.wait()
        await spin(2)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert seen == ["submit raised CancelledError", "holder cancelled", "holder cancelled"]

    run(main())


@pytest.mark.parametrize("when", ["just_after_handoff", "just_before_handoff"])
def test_blocked_submitter_cancelled_as_it_is_woken_passes_the_slot_on(run, when: str) -> None:
    """Two submitters wait on a full executor (max_workers=1); the job that ends hands its
    count to the first, which is cancelled in that same loop iteration (just after the
    hand-off, before it resumes; or just before it).  The count must go on to the second
    submitter, which proceeds; it must neither vanish nor be doubled."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        release: asyncio.Future[None] = loop.create_future()
        ran: list[str] = []

        async def record(tag: str) -> None:
            ran.append(tag)
            await asyncio.sleep(0)

        async with CoroutineExecutor(max_workers=1) as exe:
            holder = await exe.submit(lambda: release)
            first = asyncio.ensure_future(exe.submit(record, "first"))
            await spin(2)
            second = asyncio.ensure_future(exe.submit(record, "second"))
            await spin(2)
            assert not first.done() and not second.done()
            if when == "just_after_handoff":
                # The holder's handle callbacks run in the iteration where the first
                # submitter's wake-up is queued, just before it.
                holder.add_done_callback(lambda _: first.cancel())
                release.set_result(None)
            else:
                first.cancel()
                release.set_result(None)
            with pytest.raises(asyncio.CancelledError):
                await first
            async with asyncio.timeout(GUARD):
                h = await second
                await h
            assert ran == ["second"]
            await check_capacity(exe, 1)

    run(main())


# ============================================================ outer cancellation in __aexit__


def test_outer_cancel_during_exit_twice_in_a_row_and_again_during_cleanup(run) -> None:
    """The task waiting in __aexit__ is cancelled twice in the same iteration, then once
    more while the jobs' cleanup is still running: the jobs are cancelled once (a second
    cancellation would break their cleanup), the exit waits for the cleanup to finish,
    then CancelledError leaves the block; nothing is left behind."""

    async def main() -> None:
        in_exit = asyncio.Event()
        may_finish_cleanup = asyncio.Event()
        cleanups_started = 0
        all_cleanups_started = asyncio.Event()
        cleaned: list[int] = []

        async def stubborn(i: int) -> None:
            nonlocal cleanups_started
            try:
                await asyncio.sleep(3600)
            finally:
                cleanups_started += 1
                if cleanups_started == 3:
                    all_cleanups_started.set()
                await may_finish_cleanup.wait()
                cleaned.append(i)

        async def body() -> None:
            async with CoroutineExecutor() as exe:
                for i in range(3):
                    await exe.submit(stubborn, i)
                in_exit.set()  # the body ends now: __aexit__ starts waiting

        t = asyncio.ensure_future(body())
        await in_exit.wait()
        t.cancel()
        t.cancel()
        async with asyncio.timeout(GUARD):
            await all_cleanups_started.wait()
        t.cancel()
        await spin(5)
        assert not t.done(), "the exit must wait for the jobs' cleanup"
        may_finish_cleanup.set()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert sorted(cleaned) == [0, 1, 2]

    run(main())


@pytest.mark.parametrize("where", ["body", "exit"])
@pytest.mark.parametrize("order", ["cancel_first", "fail_first"])
def test_outer_cancel_at_the_same_moment_a_job_fails(run, where: str, order: str) -> None:
    """The outer task is cancelled in the same loop iteration as a job fails (in the body,
    or while __aexit__ waits), in either order.  Every job is cancelled and awaited, the
    outer cancellation is never swallowed (the task still has cancelling() == 1 as the
    exception leaves the block, so an enclosing timeout or TaskGroup sees it), and what
    leaves is CancelledError, or the job's error if the job failed first (the executor had
    already shut down because of it, as TaskGroup does)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fail: asyncio.Future[None] = loop.create_future()
        ready = asyncio.Event()
        outcome: list[tuple[type[BaseException], int]] = []
        victims: list[str] = []

        async def failer() -> None:
            await fail
            raise AssertionError("unreachable: the future holds an exception")

        async def victim() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                victims.append("cancelled")
                raise

        async def body() -> None:
            try:
                async with CoroutineExecutor() as exe:
                    await exe.submit(victim)
                    await exe.submit(failer)
                    ready.set()
                    if where == "body":
                        await asyncio.sleep(3600)
            except BaseException as e:
                outcome.append((type(e), me().cancelling()))
                raise

        t = asyncio.ensure_future(body())
        await ready.wait()
        await spin(2)  # the body now waits in its sleep, or in __aexit__

        def same_tick() -> None:
            if order == "cancel_first":
                t.cancel()
                fail.set_exception(Boom("job"))
            else:
                fail.set_exception(Boom("job"))  # the job's resumption is queued first
                t.cancel()

        loop.call_soon(same_tick)
        with contextlib.suppress(Boom, asyncio.CancelledError):
            await t
        assert victims == ["cancelled"]
        assert len(outcome) == 1
        exc_type, cancelling = outcome[0]
        if order == "cancel_first":
            assert exc_type is asyncio.CancelledError
        else:
            assert exc_type in (Boom, asyncio.CancelledError)
        assert cancelling == 1, "the outer cancellation was swallowed"

    run(main())


# ============================================================ error caught outside


@pytest.mark.parametrize(
    "where",
    ["first_step", "blocked_in_submit", "in_exit", "two_at_once", "inside_a_job"],
)
def test_job_error_caught_outside_the_block_leaves_no_cancellation(run, where: str) -> None:
    """A job error raised out of the block and caught right after it leaves the task with
    cancelling() == 0 and no pending cancellation, so the code after it runs through real
    suspensions -- whether the error came in the job's first step (inside submit), while
    the body was blocked on back-pressure, while __aexit__ waited, from two jobs at once,
    or in an executor opened inside another executor's job (the job catches it; on a
    fresh worker, after a suspension, and in the first step on a reused worker)."""

    async def fail_now() -> None:
        raise Boom("now")

    async def fail_after(fut: asyncio.Future[None]) -> None:
        await fut
        raise Boom("after")

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        try:
            if where == "first_step":
                async with CoroutineExecutor() as exe:
                    await exe.submit(sleep_forever)
                    await exe.submit(fail_now)  # the body does not suspend after this
            elif where == "blocked_in_submit":
                async with CoroutineExecutor(max_workers=1) as exe:
                    await exe.submit(fail_after, fut)
                    loop.call_soon(fut.set_result, None)
                    await exe.submit(sleep_forever)
            elif where == "in_exit":
                async with CoroutineExecutor() as exe:
                    await exe.submit(sleep_forever)
                    await exe.submit(fail_after, fut)
                    loop.call_soon(fut.set_result, None)
            elif where == "two_at_once":
                async with CoroutineExecutor() as exe:
                    await exe.submit(fail_after, fut)
                    await exe.submit(fail_after, fut)
                    fut.set_result(None)
                    await asyncio.sleep(3600)
            else:
                raise AssertionError(where)
        except Boom:
            pass
        assert me().cancelling() == 0
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        done: asyncio.Future[str] = loop.create_future()
        loop.call_soon(done.set_result, "went on")
        return await done

    async def job_catching_inner_error(suspend_first: bool) -> str:
        if suspend_first:
            await asyncio.sleep(0)  # from here on the job runs in its worker task
        try:
            async with CoroutineExecutor() as inner:
                await inner.submit(sleep_forever)
                await inner.submit(fail_now)
        except Boom:
            pass
        assert me().cancelling() == 0
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        return "went on"

    async def main() -> None:
        if where == "inside_a_job":
            async with CoroutineExecutor(max_workers=2) as outer:
                fresh = await outer.submit(job_catching_inner_error, False)
                later = await outer.submit(job_catching_inner_error, True)
                await asyncio.gather(fresh, later)
                # Again on a reused (parked) worker, in the job's first step.
                reused = await outer.submit(job_catching_inner_error, False)
            assert fresh.result() == "went on"
            assert later.result() == "went on"
            assert reused.result() == "went on"
        else:
            assert await scenario() == "went on"

    run(main())


# ============================================================ outer asyncio.timeout


@pytest.mark.parametrize(
    "where", ["blocked_in_submit", "exit_waits_for_cleanup", "same_deadline", "inner_first"]
)
def test_outer_asyncio_timeout_around_the_executor(run, where: str) -> None:
    """An asyncio.timeout around the executor expires while the body is blocked in submit,
    while __aexit__ waits for a slow cleanup, at the same deadline as the executor's own
    timeout, or after the executor's own (shorter) timeout already fired: TimeoutError
    comes out (never swallowed, never a bare CancelledError), the jobs were awaited, and
    afterwards the task has cancelling() == 0 and goes on."""

    async def main() -> str:
        cleaned: list[str] = []

        async def slow_cleanup() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                await asyncio.sleep(0.05)
                cleaned.append("done")

        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                if where == "blocked_in_submit":
                    async with CoroutineExecutor(max_workers=1) as exe:
                        await exe.submit(sleep_forever)
                        await exe.submit(sleep_forever)
                elif where == "exit_waits_for_cleanup":
                    async with CoroutineExecutor() as exe:
                        await exe.submit(slow_cleanup)
                elif where == "same_deadline":
                    async with CoroutineExecutor(timeout=0.05) as exe:
                        await exe.submit(slow_cleanup)
                        await asyncio.sleep(3600)
                else:
                    async with CoroutineExecutor(timeout=0.01) as exe:
                        await exe.submit(slow_cleanup)  # cleanup outlives the outer deadline
        assert time.monotonic() - t0 < 10 * (0.05 + 0.05)  # deadline + cleanup, 10x margin
        if where != "blocked_in_submit":
            assert cleaned == ["done"], "the exit must await the job's cleanup"
        assert me().cancelling() == 0
        await asyncio.sleep(0.001)
        return "went on"

    assert run(main()) == "went on"


# ============================================================ KeyboardInterrupt, SystemExit


@pytest.mark.parametrize(
    "where", ["job_first_step", "job_later", "body", "job_while_being_cancelled"]
)
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_escape_unchanged(
    loop_kind: str, caplog: pytest.LogCaptureFixture, exc_type: type[BaseException], where: str
) -> None:
    """KeyboardInterrupt/SystemExit raised in a job's first step (inside submit), in a job
    that had suspended, in the body, or by a job while the executor cancels it (the body
    raised): the very same exception object escapes the event loop, every other job is
    cancelled (its cleanup ran), and nothing is logged (no "never retrieved", no task
    destroyed while pending)."""
    errors: list[dict[str, Any]] = []
    cleaned: list[str] = []
    raised = exc_type("marker")

    async def victim() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append("victim")

    async def raise_now() -> None:
        raise raised

    async def raise_later() -> None:
        await asyncio.sleep(0)
        raise raised

    async def raise_when_cancelled() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise raised from None

    async def main() -> None:
        install_handler(errors)
        async with CoroutineExecutor() as exe:
            await exe.submit(victim)
            if where == "job_first_step":
                await exe.submit(raise_now)
                await asyncio.sleep(3600)
            elif where == "job_later":
                await exe.submit(raise_later)
                await asyncio.sleep(3600)
            elif where == "body":
                await asyncio.sleep(0)
                raise raised
            else:
                await exe.submit(raise_when_cancelled)
                await asyncio.sleep(0)
                raise Boom("the body fails; the jobs are cancelled")

    caplog.set_level(logging.DEBUG, logger="asyncio")
    with pytest.raises(exc_type) as info:
        run_outside(loop_kind, main())
    gc.collect()
    assert info.value is raised
    assert cleaned == ["victim"]
    assert errors == []
    assert asyncio_errors(caplog) == []


@pytest.mark.parametrize("how", ["loop_callback", "thread"])
def test_real_sigint_during_a_long_map(
    loop_kind: str, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A real SIGINT (signal.raise_signal from a loop callback, or os.kill from another
    thread) arrives while run() drives a ten-million-item map: asyncio.Runner cancels the
    main task, the executor cancels the map's jobs, and KeyboardInterrupt comes out of
    run() promptly, with every started job ended and nothing logged.

    Job 5,000 sends the interrupt and then waits for something that never comes, so a job
    is certainly in flight when the cancellation lands and only the cancellation can end
    it.  (The short jobs around it may all finish in the tick before the cancelled main
    task runs again: that is allowed, as in a TaskGroup, so the test does not count on
    them being cancelled.)"""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("asyncio.Runner installs its SIGINT handler only over the default one")
    errors: list[dict[str, Any]] = []
    started = 0
    ended = 0
    cancelled = 0
    stuck_cancelled = False
    yielded = 0
    interrupt_sent = threading.Event()
    send_now = threading.Event()
    give_up = threading.Event()

    async def job(i: int) -> int:
        nonlocal started, ended, cancelled, stuck_cancelled
        started += 1
        try:
            if i == 5_000:
                if how == "thread":
                    send_now.set()
                else:
                    asyncio.get_running_loop().call_soon(interrupt)
                try:
                    await asyncio.Event().wait()  # only Ctrl-C ends this job
                except asyncio.CancelledError:
                    stuck_cancelled = True
                    raise
            for _ in range(i % 3):
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        finally:
            ended += 1
        return i

    def sender() -> None:
        # Sends only when the map asks for it: a SIGINT after run() has returned would
        # hit pytest itself.
        if send_now.wait(GUARD) and not give_up.is_set():
            os.kill(os.getpid(), signal.SIGINT)
            interrupt_sent.set()

    def interrupt() -> None:
        signal.raise_signal(signal.SIGINT)
        interrupt_sent.set()

    async def main() -> None:
        nonlocal yielded
        install_handler(errors)
        async with CoroutineExecutor(max_workers=50) as exe:
            async for _ in exe.map(job, range(10_000_000)):
                yielded += 1

    caplog.set_level(logging.DEBUG, logger="asyncio")
    thread = threading.Thread(target=sender, daemon=True)
    if how == "thread":
        thread.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_outside(loop_kind, main())
    finally:
        if how == "thread":
            give_up.set()
            send_now.set()
            thread.join(GUARD)
    gc.collect()
    assert interrupt_sent.is_set()
    assert time.monotonic() - t0 < GUARD
    # The map yields in order, so it stops at the stuck job; its reorder buffer holds at
    # most 2 * max_workers results, so it got at least that close to it.
    assert 5_000 - 100 <= yielded <= 5_000
    assert stuck_cancelled, "the job in flight when the interrupt came must be cancelled"
    assert cancelled >= 1
    assert started == ended
    assert errors == []
    assert asyncio_errors(caplog) == []


# ============================================================ bad input


async def _coro_fn() -> str:
    return "x"


def _not_async() -> int:
    return 42


def _raises_before_returning_a_coroutine() -> Any:
    raise Boom("before the coroutine")


async def _async_gen() -> Any:
    yield 1


@pytest.mark.parametrize(
    ("fn", "match"),
    [(_not_async, "not awaitable"), (_async_gen, "async generator")],
    ids=["not_async", "async_generator_function"],
)
def test_fn_returning_no_awaitable_is_refused_at_the_call(
    run, fn: Callable[..., Any], match: str
) -> None:
    """A job function that is not async, or is an async generator function, is refused by
    submit with TypeError (on the fast path and on a full executor); nothing fails."""

    async def main() -> None:
        for full in (False, True):
            async with CoroutineExecutor(max_workers=1 if full else 10) as exe:
                bystander = await exe.submit(asyncio.sleep, 0, "ok")
                with pytest.raises(TypeError, match=match):
                    await exe.submit(fn)
            assert bystander.result() == "ok"
            assert exe.stats().failed == 0
            assert me().cancelling() == 0

    run(main())


@pytest.mark.parametrize(
    ("fn", "exc_type", "match"),
    [(_raises_before_returning_a_coroutine, Boom, "before the coroutine")],
    ids=["raises_before_coroutine"],
)
def test_bad_fn_fails_that_job_and_fails_fast(
    run, fn: Callable[..., Any], exc_type: type[BaseException], match: str
) -> None:
    """A job function that raises before returning a coroutine fails that job (on the
    fast path and on a full executor), as ``concurrent.futures`` does; in fail-fast mode
    the exit raises that very error and the other jobs are cancelled."""

    async def main() -> None:
        for full in (False, True):
            with pytest.raises(exc_type, match=match):
                async with CoroutineExecutor(max_workers=1 if full else 10) as exe:
                    if full:
                        # Full: the bad submit waits for the slot, then fails.
                        await exe.submit(asyncio.sleep, 0)
                        bystander = None
                    else:
                        bystander = await exe.submit(sleep_forever)
                    await exe.submit(fn)
                    await asyncio.sleep(3600)
            if bystander is not None:
                assert bystander.cancelled()
            assert me().cancelling() == 0

    run(main())


def test_bad_fn_leaks_no_slot_and_warns_nothing(run) -> None:
    """Every kind of bad job function -- not async or an async generator function (refused
    by submit with a TypeError once its turn comes), raising before returning a coroutine
    (a job failure), a coroutine object (refused by submit with a TypeError naming the
    mistake, even on a full executor, without waiting, and closed: no "never awaited"
    warning) -- submitted many times on the fast path and on a full executor leaks no count:
    exactly max_workers jobs still run side by side."""
    w = 3

    async def main() -> None:
        async with CoroutineExecutor(max_workers=w, suppress_task_errors=True) as exe:
            for _ in range(2 * w):
                h = await exe.submit(_raises_before_returning_a_coroutine)
                assert h.done() and h.exception() is not None
                for fn in (_not_async, _async_gen):
                    with pytest.raises(TypeError, match="not awaitable"):
                        await exe.submit(fn)
                with pytest.raises(TypeError, match=r"not submit\(_coro_fn\(x\)\)"):
                    await exe.submit(_coro_fn())  # type: ignore[arg-type]
            await check_capacity(exe, w)
            gate = asyncio.Event()
            for _ in range(w):
                await exe.submit(gate.wait)
            with pytest.raises(TypeError, match=r"not submit\(_coro_fn\(x\)\)"):
                async with asyncio.timeout(GUARD):  # refused at once, not after a wait
                    await exe.submit(_coro_fn())  # type: ignore[arg-type]
            pending = [asyncio.ensure_future(exe.submit(fn)) for fn in (_not_async, _async_gen)]
            await spin(2)
            assert not any(p.done() for p in pending)
            gate.set()
            for p in pending:
                with pytest.raises(TypeError, match="not awaitable"):
                    await p
            await check_capacity(exe, w)
        gc.collect()

    run(main())


# ============================================================ hostile jobs


def test_job_swallowing_cancellation_keeps_its_slot_until_it_really_ends(run) -> None:
    """A job that swallows CancelledError and keeps going: its handle reads cancelled at
    once, but the job still holds its slot (max_workers=1: the next submit waits until the
    job really returns), its late return value is dropped without an InvalidStateError,
    and nothing is logged."""

    async def main() -> None:
        may_return = asyncio.Event()
        swallowed = asyncio.Event()
        running = 0
        peak = 0

        async def swallower() -> str:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed.set()
            await may_return.wait()
            running -= 1
            return "ignored"

        async def next_job() -> str:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0)
            running -= 1
            return "next"

        async with CoroutineExecutor(max_workers=1, suppress_task_errors=True) as exe:
            h = await exe.submit(swallower)
            await spin(2)
            assert h.cancel() is True
            assert h.cancelled()
            async with asyncio.timeout(GUARD):
                await swallowed.wait()
            nxt = asyncio.ensure_future(exe.submit(next_job))
            await spin(5)
            assert not nxt.done(), "a job that swallowed its cancellation still runs"
            may_return.set()
            async with asyncio.timeout(GUARD):
                h2 = await nxt
            assert await h2 == "next"
        assert h.cancelled()
        assert peak == 1

    run(main())


@pytest.mark.parametrize(
    "cause",
    [
        "fail_fast",
        "timeout",
        "outer_cancel",
        "outer_asyncio_timeout",
        "handle_cancel",
        "handle_cancel_suppressed",
    ],
)
def test_job_turning_cancellation_into_another_error(run, cause: str) -> None:
    """A job that answers CancelledError by raising ValueError: its handle reads cancelled,
    its ValueError is never taken for the first error, and what leaves the block is what
    caused the cancellation -- the failing job's error, the executor's TimeoutError, the
    outer CancelledError (so an outer asyncio.timeout still raises TimeoutError),
    CancelledError for a cancelled handle, or nothing under suppress_task_errors -- with
    nothing logged as never retrieved."""
    converted: list[str] = []

    async def converter() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            converted.append("ValueError")
            raise ValueError("converted") from None

    async def fail_soon() -> None:
        await spin(3)
        raise Boom("first")

    async def main() -> None:
        if cause == "outer_cancel":
            ready = asyncio.Event()

            async def body() -> None:
                async with CoroutineExecutor() as exe:
                    hs.append(await exe.submit(converter))
                    ready.set()
                    await asyncio.sleep(3600)

            hs: list[asyncio.Future[Any]] = []
            t = asyncio.ensure_future(body())
            await ready.wait()
            await spin(1)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            h = hs[0]
        elif cause == "outer_asyncio_timeout":
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.02), CoroutineExecutor() as exe:
                    h = await exe.submit(converter)
                    await asyncio.sleep(3600)
        else:
            expected: type[BaseException] | None = {
                "fail_fast": Boom,
                "timeout": TimeoutError,
                "handle_cancel": asyncio.CancelledError,
                "handle_cancel_suppressed": None,
            }[cause]
            ctx = pytest.raises(expected) if expected is not None else contextlib.nullcontext()
            with ctx:
                async with CoroutineExecutor(
                    timeout=0.02 if cause == "timeout" else None,
                    suppress_task_errors=cause == "handle_cancel_suppressed",
                ) as exe:
                    h = await exe.submit(converter)
                    if cause == "fail_fast":
                        await exe.submit(fail_soon)
                    elif cause.startswith("handle_cancel"):
                        await spin(1)
                        h.cancel()
                    if cause != "handle_cancel_suppressed":
                        await asyncio.sleep(3600)
        assert converted == ["ValueError"]
        assert h.cancelled()
        assert me().cancelling() == 0

    run(main())


@pytest.mark.parametrize("cleanup", ["finishes_in_time", "times_out"])
def test_job_cleanup_under_asyncio_timeout(run, cleanup: str) -> None:
    """A job cancelled by fail-fast runs async cleanup under asyncio.timeout: inside the
    cancelled job the timeout works as in any cancelled task (in time: the cleanup
    completes; too slow: TimeoutError inside the cleanup, which the job handles), the exit
    waits for the cleanup, and the first error (the failing job's) is raised."""

    async def main() -> None:
        log: list[str] = []
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def careful() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                try:
                    async with asyncio.timeout(0.02):
                        if cleanup == "finishes_in_time":
                            await asyncio.sleep(0)
                        else:
                            await never
                    log.append("cleanup done")
                except TimeoutError:
                    log.append("cleanup timed out")

        async def fail() -> None:
            await asyncio.sleep(0)
            raise Boom("first")

        with pytest.raises(Boom, match="first"):
            async with CoroutineExecutor() as exe:
                h = await exe.submit(careful)
                await exe.submit(fail)
                await asyncio.sleep(3600)
        assert log == ["cleanup done" if cleanup == "finishes_in_time" else "cleanup timed out"]
        assert h.cancelled()
        assert me().cancelling() == 0

    run(main())


def test_cancelled_job_leaves_no_stale_cancellation_for_later_jobs(run) -> None:
    """A job cancelled through its handle (suppress mode, max_workers=1, so later jobs may
    reuse its worker) whose cleanup uses asyncio.timeout: later jobs see a clean task --
    asyncio.timeout inside them still turns its expiry into TimeoutError, a job that
    does not time out is not cancelled, current_task().cancelling() is 0 in each."""

    async def main() -> None:
        async def cancelled_with_cleanup() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                async with asyncio.timeout(1):
                    await asyncio.sleep(0)

        async def times_out() -> str:
            assert me().cancelling() == 0
            try:
                async with asyncio.timeout(0.001):
                    await asyncio.sleep(3600)
            except TimeoutError:
                return "timed out"
            return "no"

        async def does_not_time_out() -> str:
            assert me().cancelling() == 0
            async with asyncio.timeout(5):
                await asyncio.sleep(0)
                await asyncio.sleep(0.001)
            return "fine"

        async with CoroutineExecutor(max_workers=1, suppress_task_errors=True) as exe:
            results = []
            for _ in range(3):
                h = await exe.submit(cancelled_with_cleanup)
                await asyncio.sleep(0)
                h.cancel()
                results.append(await exe.submit(times_out))
                results.append(await exe.submit(does_not_time_out))
            assert [await r for r in results] == ["timed out", "fine"] * 3

    run(main())


@pytest.mark.parametrize("style", ["finishes_shielded_work", "abandons_shielded_work"])
def test_job_inside_shield_when_the_executor_timeout_fires(run, style: str) -> None:
    """A job awaiting asyncio.shield(inner) when the executor's timeout fires: the job is
    cancelled (the shield does not protect the job itself) and TimeoutError is raised.  A
    job that then waits for its shielded work makes the exit wait for it; a job that
    abandons it does not hold the exit back, and the shielded task (not a job) goes on."""

    async def main() -> None:
        may_finish = asyncio.Event()
        log: list[str] = []

        async def critical() -> str:
            await may_finish.wait()
            log.append("critical done")
            return "critical"

        inner: list[asyncio.Task[str]] = []

        async def job() -> str:
            t = asyncio.ensure_future(critical())
            inner.append(t)
            if style == "abandons_shielded_work":
                return await asyncio.shield(t)
            try:
                return await asyncio.shield(t)
            except asyncio.CancelledError:
                log.append("job cancelled")
                may_finish.set()
                await t
                raise

        with pytest.raises(TimeoutError):
            async with CoroutineExecutor(timeout=0.02) as exe:
                h = await exe.submit(job)
        assert h.cancelled()
        if style == "finishes_shielded_work":
            assert log == ["job cancelled", "critical done"]
        else:
            assert log == []
            assert not inner[0].done()
            may_finish.set()
            assert await inner[0] == "critical"
        assert me().cancelling() == 0

    run(main())


# ============================================================ nesting


def test_nested_executors_failing_together(run) -> None:
    """Four outer jobs each open an executor of their own; a job in every inner executor
    fails in the same loop iteration.  Each inner executor shuts down and cancels its
    outer job's code (the worker task), the outer executor takes the first outer job's
    error and cancels the rest: Boom("0") leaves, every sleeper is cancelled, nothing is
    left behind or logged, and the task has cancelling() == 0 afterwards."""

    async def main() -> None:
        go = asyncio.Event()
        sleepers_cancelled = 0

        async def sleeper() -> None:
            nonlocal sleepers_cancelled
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                sleepers_cancelled += 1
                raise

        async def inner_fail(i: int) -> None:
            await go.wait()
            raise Boom(str(i))

        async def outer_job(i: int) -> None:
            async with CoroutineExecutor() as inner:
                await inner.submit(sleeper)
                await inner.submit(inner_fail, i)
                await inner.submit(sleeper)
                await asyncio.sleep(3600)

        with pytest.raises(Boom) as info:
            async with CoroutineExecutor() as outer:
                handles = [await outer.submit(outer_job, i) for i in range(4)]
                await outer.submit(sleeper)
                await spin(2)
                go.set()
                await asyncio.sleep(3600)
        assert str(info.value) == "0"
        assert sleepers_cancelled == 4 * 2 + 1
        assert all(h.done() for h in handles)
        assert me().cancelling() == 0

    run(main())


@pytest.mark.parametrize("w", [1, 4], ids=["w1", "w4"])
@pytest.mark.parametrize("children_suspend", [True, False], ids=["suspend", "end_at_once"])
@pytest.mark.parametrize("with_failure", [False, True], ids=["ok", "failing_child"])
def test_w_jobs_all_submitting_to_their_own_executor_at_once(
    run, with_failure: bool, children_suspend: bool, w: int
) -> None:
    """max_workers producer jobs fill every slot and, released in the same iteration, all
    submit children (which submit grandchildren) to their own executor at once: no
    deadlock -- also when the children end in their first step, inside the producer's
    submit --, never more than max_workers jobs running (a producer blocked in submit does
    not count), every child runs; with a failing child, everything unwinds and the first
    error is raised instead of hanging."""

    async def main() -> None:
        go = asyncio.Event()
        running = 0
        peak = 0
        done_children = 0

        def enter() -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)

        async def lend(exe: CoroutineExecutor, fn: Callable[..., Any], *args: Any) -> None:
            nonlocal running
            running -= 1  # blocked in submit: not running
            try:
                await exe.submit(fn, *args)
            finally:
                running += 1

        def leave() -> None:
            nonlocal running
            running -= 1

        async def grandchild() -> None:
            nonlocal done_children
            enter()
            if children_suspend:
                await asyncio.sleep(0)
            done_children += 1
            leave()

        async def child(exe: CoroutineExecutor, i: int) -> None:
            nonlocal done_children
            enter()
            try:
                if children_suspend:
                    await asyncio.sleep(0)
                if with_failure and i == 7:
                    raise Boom("child 7")
                if i % 2:
                    await lend(exe, grandchild)
                done_children += 1
            finally:
                leave()

        async def producer(exe: CoroutineExecutor, p: int) -> None:
            enter()
            try:
                await go.wait()
                for i in range(10):
                    await lend(exe, child, exe, p * 10 + i)
            finally:
                leave()

        async with asyncio.timeout(GUARD):
            if with_failure:
                with pytest.raises(Boom, match="child 7"):
                    async with CoroutineExecutor(max_workers=w) as exe:
                        for p in range(w):
                            await exe.submit(producer, exe, p)
                        go.set()
            else:
                async with CoroutineExecutor(max_workers=w) as exe:
                    for p in range(w):
                        await exe.submit(producer, exe, p)
                    go.set()
                assert done_children == w * 10 + w * 5
        assert peak <= w
        assert running == 0

    run(main())


# ============================================================ garbage collection


def test_jobs_referenced_only_by_the_executor_survive_gc(run) -> None:
    """Jobs that wait on futures nobody else references, with their handles dropped and
    gc.collect() run: the jobs are kept alive by the executor (no "Task was destroyed but
    it is pending", no coroutine collected half-way), and shutdown(cancel_futures=True)
    then cancels each of them exactly once."""

    async def main() -> None:
        cancelled: list[int] = []
        alive: list[weakref.ref[Any]] = []

        async def orphan(i: int) -> None:
            fut = asyncio.get_running_loop().create_future()  # only this frame holds it
            alive.append(weakref.ref(fut))
            try:
                await fut
            except asyncio.CancelledError:
                cancelled.append(i)
                raise

        async with CoroutineExecutor(max_workers=32) as exe:
            for i in range(16):
                await exe.submit(orphan, i)  # the handle is dropped at once
            for _ in range(3):
                gc.collect()
                await asyncio.sleep(0)
            assert cancelled == []
            assert all(r() is not None for r in alive)
            await exe.shutdown(cancel_futures=True)
        assert sorted(cancelled) == list(range(16))

    run(main())


_WORKER_TASK: contextvars.ContextVar[Any] = contextvars.ContextVar("worker_task")


def test_workers_in_a_reference_cycle_are_collected_after_shutdown(run) -> None:
    """Jobs that keep their worker's task in a context variable make a reference cycle
    through each worker (task -> context -> task).  The compiled engine keeps its live
    workers out of the cyclic GC's sight; once the executor has shut down, the GC must
    see them again and free them, as it frees a task of the user's own."""

    async def main() -> None:
        tasks: list[weakref.ref[Any]] = []

        async def job() -> None:
            task = asyncio.current_task()
            _WORKER_TASK.set(task)
            tasks.append(weakref.ref(task))  # type: ignore[arg-type]
            await asyncio.sleep(0)

        async with CoroutineExecutor(max_workers=4) as exe:
            for _ in range(8):
                await exe.submit(job)
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        assert tasks and all(ref() is None for ref in tasks)

    run(main())


@pytest.mark.skipif(not coroexecutor.__compiled__, reason="the compiled engine's doing")
def test_a_live_worker_is_out_of_the_collectors_sight_until_it_ends(run) -> None:
    """While a worker lives, its task, its runner and the task's wake-up on what the job
    waits for are reachable through the executor, and the compiled engine hides them
    from the cyclic GC; when the worker ends, the GC sees them again."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        tasks: list[Any] = []

        async def job() -> Any:
            tasks.append(asyncio.current_task())
            return await fut

        async with CoroutineExecutor(max_workers=4) as exe:
            handle = await exe.submit(job)
            (task,) = tasks
            ((wakeup, _context),) = fut._callbacks  # type: ignore[attr-defined]
            hidden = [task, task.get_coro(), wakeup]
            assert [gc.is_tracked(o) for o in hidden] == [False, False, False]
            fut.set_result(1)
            assert await handle == 1
        assert [gc.is_tracked(o) for o in hidden] == [True, True, True]

    run(main())


def test_dropped_executor_with_pending_jobs_logs_nothing(
    loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An executor used without a context manager, with jobs waiting on orphan futures,
    dropped along with every handle and gc.collect()ed: the jobs are neither destroyed
    while pending nor logged; when the loop ends they are cancelled like any task."""
    errors: list[dict[str, Any]] = []
    cancelled: list[int] = []

    async def orphan(i: int) -> None:
        fut = asyncio.get_running_loop().create_future()
        try:
            await fut
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    async def main() -> None:
        install_handler(errors)
        exe = CoroutineExecutor(max_workers=8, suppress_task_errors=True)
        for i in range(8):
            await exe.submit(orphan, i)
        del exe
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
        assert cancelled == []

    caplog.set_level(logging.DEBUG, logger="asyncio")
    run_outside(loop_kind, main())
    gc.collect()
    assert sorted(cancelled) == list(range(8))
    assert errors == []
    assert asyncio_errors(caplog) == []


# ============================================================ map


@pytest.mark.parametrize("leave", ["plain_break", "aclosing_break", "aclose", "consumer_cancelled"])
def test_map_left_early_cancels_its_jobs_and_the_executor_goes_on(run, leave: str) -> None:
    """Leaving a map early -- a plain break (the generator is finalised by the loop's
    asyncgen hook), a break inside contextlib.aclosing, aclose() with jobs in flight, or
    the consuming task being cancelled -- cancels the map's unfinished jobs (each exactly
    once), does not count as a job failure (fail-fast is not triggered), and the executor
    takes new jobs afterwards."""

    async def main() -> None:
        cancelled: list[int] = []
        started: list[int] = []

        async def f(i: int) -> int:
            started.append(i)
            try:
                await asyncio.sleep(0 if i < 2 else 3600)
            except asyncio.CancelledError:
                cancelled.append(i)
                raise
            return i

        async with asyncio.timeout(GUARD):
            async with CoroutineExecutor(max_workers=8) as exe:
                if leave == "plain_break":
                    async for r in exe.map(f, range(100)):
                        if r == 1:
                            break
                    await spin(3)  # the loop's asyncgen finaliser closes the generator
                elif leave == "aclosing_break":
                    async with contextlib.aclosing(exe.map(f, range(100))) as it:
                        async for r in it:
                            if r == 1:
                                break
                elif leave == "aclose":
                    it = exe.map(f, range(100))
                    assert await it.__anext__() == 0
                    await it.aclose()
                else:
                    got: list[int] = []
                    ready = asyncio.Event()

                    async def consume() -> None:
                        async for r in exe.map(f, range(100)):
                            got.append(r)
                            if r == 1:
                                ready.set()

                    t = asyncio.ensure_future(consume())
                    await ready.wait()
                    await spin(1)
                    t.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await t
                after = await exe.submit(echo, "still open")
        # The handles read cancelled at once; the jobs unwind in their workers, and the
        # exit has waited for that.
        assert sorted(cancelled) == [i for i in started if i >= 2]
        assert len(cancelled) == len(set(cancelled)) > 0
        assert after.result() == "still open"

    run(main())


def test_map_over_ten_million_items_is_lazy_fast_and_bounded(run) -> None:
    """A ten-million-item generator through map, left after 5000 results: the input is
    pulled lazily (about max_workers in flight plus the reorder buffer, never the whole
    generator), so it finishes in well under a second and the traced memory peak stays
    small; materialising the input would take hundreds of MB."""
    pulled = 0
    w = 100

    def ten_million() -> Iterator[int]:
        nonlocal pulled
        for i in range(10_000_000):
            pulled += 1
            yield i

    async def f(i: int) -> int:
        if i % 3 == 0:
            await asyncio.sleep(0)
        return i

    async def main() -> None:
        got = 0
        async with (
            CoroutineExecutor(max_workers=w) as exe,
            contextlib.aclosing(exe.map(f, ten_million())) as results,
        ):
            async for r in results:
                assert r == got
                got += 1
                if got == 5_000:
                    break

    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        run(main(), debug=False)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pulled <= 5_000 + 2 * w + 1, pulled
    assert elapsed < 5.0, elapsed  # about 0.1 s here; ten million would take minutes
    assert peak < 8 * 2**20, f"traced peak {peak / 2**20:.1f} MiB"


# ============================================================ memory


def test_many_failing_jobs_under_suppress_keep_memory_flat(run) -> None:
    """200k failing jobs (half in their first step, half after suspending; the million is
    in scripts/soak.py) under suppress_task_errors, handles dropped as they end: the
    executor keeps nothing of a finished job -- after 200k jobs the interpreter holds no
    more memory blocks and no more gc-tracked objects than after a 20k warm-up (a leak of
    one small object per job would show as 200k), and every job is accounted for, by its
    handle and by stats()."""
    warmup = 20_000
    n = 200_000
    failed = 0

    def count(h: asyncio.Future[Any]) -> None:
        nonlocal failed
        assert isinstance(h.exception(), Boom)
        failed += 1

    async def fail_now(i: int) -> None:
        raise Boom(i)

    async def fail_later(i: int) -> None:
        await asyncio.sleep(0)
        raise Boom(i)

    async def main() -> tuple[int, int, int, int, Any]:
        async with CoroutineExecutor(max_workers=100, suppress_task_errors=True) as exe:
            for i in range(warmup):
                h = await exe.submit(fail_later if i % 2 else fail_now, i)
                h.add_done_callback(count)
            await spin(3)
            gc.collect()
            blocks, objects = sys.getallocatedblocks(), len(gc.get_objects())
            for i in range(n):
                h = await exe.submit(fail_later if i % 2 else fail_now, i)
                h.add_done_callback(count)
            del h
            await spin(3)
            gc.collect()
            blocks_after, objects_after = sys.getallocatedblocks(), len(gc.get_objects())
        await spin(1)
        return blocks, blocks_after, objects, objects_after, exe.stats()

    t0 = time.perf_counter()
    blocks, blocks_after, objects, objects_after, stats = run(main(), debug=False)
    elapsed = time.perf_counter() - t0
    assert blocks_after - blocks < n // 100, f"{blocks_after - blocks} more blocks after {n} jobs"
    assert objects_after - objects < n // 100, f"{objects_after - objects} more objects"
    assert failed == warmup + n
    assert (stats.submitted, stats.failed, stats.completed, stats.cancelled) == (
        warmup + n,
        warmup + n,
        0,
        0,
    ), stats
    assert elapsed < 20.0, elapsed
