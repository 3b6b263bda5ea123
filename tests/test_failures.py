"""Fail-fast, suppress_task_errors, body errors, outer cancellation, KeyboardInterrupt,
SystemExit, bad input."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from coroexecutor import CoroutineExecutor


class Boom(Exception):
    pass


async def fail_soon(delay: float = 0.0) -> None:
    await asyncio.sleep(delay)
    raise Boom("job failed")


async def fail_now() -> None:
    raise Boom("job failed at once")


async def sleep_forever() -> None:
    await asyncio.sleep(3600)


# --------------------------------------------------------------------- bad input


def test_bad_input_coroutine_object_is_refused_and_closed(run) -> None:
    async def f(x: int) -> int:
        return x

    async def main() -> None:
        async with CoroutineExecutor() as exe:
            with pytest.raises(TypeError, match=r"write submit\(f, x\), not submit\(f\(x\)\)"):
                await exe.submit(f(1))  # type: ignore[arg-type]

    run(main())  # a "never awaited" RuntimeWarning would fail the test


def test_bad_input_not_callable(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor() as exe:
            with pytest.raises(TypeError, match="needs a callable"):
                await exe.submit(42)  # type: ignore[arg-type]

    run(main())


def test_bad_input_fn_raising_fails_that_job(run) -> None:
    def broken(x: int) -> Any:
        raise Boom(f"bad {x}")

    async def main() -> None:
        async with CoroutineExecutor(suppress_task_errors=True) as exe:
            h = await exe.submit(broken, 3)
        assert isinstance(h.exception(), Boom)
        assert str(h.exception()) == "bad 3"

    run(main())


def test_fn_returning_non_awaitable_is_refused_by_submit_and_the_executor_goes_on(run) -> None:
    """As ``TaskGroup.create_task(1)`` does: TypeError at the call, nothing started, the
    executor and its other jobs unharmed (the original coroexecutor's own test)."""

    def not_async(x: int) -> int:
        return x

    async def agen() -> Any:
        yield 1

    async def main() -> None:
        async with CoroutineExecutor() as exe:
            bystander = await exe.submit(asyncio.sleep, 0.01, "still here")
            with pytest.raises(TypeError, match=r"returned int 3, which is not awaitable"):
                await exe.submit(not_async, 3)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="async generator"):
                await exe.submit(agen)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="not awaitable"):
                exe.submit_nowait(len, "abc")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="not awaitable"):
                async for _ in exe.map(len, ["abc"]):  # type: ignore[arg-type]
                    pass
            after = await exe.submit(asyncio.sleep, 0, "after")
        assert bystander.result() == "still here"
        assert after.result() == "after"
        s = exe.stats()
        assert (s.submitted, s.completed, s.failed) == (2, 2, 0), s

    run(main())


def test_fn_returning_non_awaitable_is_refused_on_a_full_executor_and_with_a_wrapper(
    run,
) -> None:
    async def init() -> None:
        pass

    async def main() -> None:
        # Full: the submit waits for its turn, then refuses the function.
        async with CoroutineExecutor(max_workers=1) as exe:
            await exe.submit(asyncio.sleep, 0.01)
            with pytest.raises(TypeError, match="not awaitable"):
                await exe.submit(len, "abc")  # type: ignore[arg-type]
            h1 = await exe.submit(asyncio.sleep, 0, 1)
        # initializer/job_timeout wrap the job: the function is called in its first step.
        async with CoroutineExecutor(initializer=init, job_timeout=5) as exe:
            with pytest.raises(TypeError, match="not awaitable"):
                await exe.submit(len, "abc")  # type: ignore[arg-type]
            h2 = await exe.submit(asyncio.sleep, 0, 2)
        assert (h1.result(), h2.result()) == (1, 2)

    run(main())


def test_queued_job_whose_fn_returns_non_awaitable_fails_as_a_job(run) -> None:
    """A queued submit_nowait() job starts after its caller has gone: there is nobody to
    raise to, so it fails (fail-fast, as any job error) and its handle says why."""

    async def main() -> None:
        async with CoroutineExecutor(max_workers=1, suppress_task_errors=True) as exe:
            await exe.submit(asyncio.sleep, 0.01)
            h = exe.submit_nowait(len, "abc")  # type: ignore[arg-type]
        assert isinstance(h.exception(), TypeError)
        assert "not awaitable" in str(h.exception())
        assert exe.stats().failed == 1

    run(main())


def test_fn_returning_any_awaitable_is_run(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        def returns_future() -> asyncio.Future[int]:
            fut = loop.create_future()
            loop.call_soon(fut.set_result, 5)
            return fut

        async with CoroutineExecutor() as exe:
            h = await exe.submit(returns_future)
        assert h.result() == 5

    run(main())


# --------------------------------------------------------------------- fail-fast


def test_fail_fast_cancels_other_jobs_and_raises_first_error(run) -> None:
    async def main() -> None:
        handles = []
        with pytest.raises(Boom, match="job failed"):
            async with CoroutineExecutor() as exe:
                handles = [await exe.submit(sleep_forever) for _ in range(5)]
                bad = await exe.submit(fail_soon, 0.01)
                await asyncio.sleep(3600)  # the body is cancelled too
        assert all(h.cancelled() for h in handles)
        assert isinstance(bad.exception(), Boom)

    run(main())


def test_fail_fast_on_error_in_first_step(run) -> None:
    async def main() -> None:
        with pytest.raises(Boom):
            async with CoroutineExecutor() as exe:
                slow = await exe.submit(sleep_forever)
                await exe.submit(fail_now)
                await asyncio.sleep(3600)
        assert slow.cancelled()

    run(main())


def test_fail_fast_stops_body_blocked_in_submit(run) -> None:
    async def main() -> None:
        with pytest.raises(Boom):
            async with CoroutineExecutor(max_workers=1) as exe:
                await exe.submit(fail_soon, 0.01)
                await exe.submit(sleep_forever)  # blocked here, then cancelled
                pytest.fail("the body must not get past a blocked submit")

    run(main())


def test_fail_fast_body_submitting_without_awaiting_stops(run) -> None:
    async def main() -> None:
        submitted = 0
        with pytest.raises(Boom):
            async with CoroutineExecutor() as exe:
                for _ in range(10):
                    submitted += 1
                    await exe.submit(fail_now)  # never suspends
        assert submitted == 2  # the 2nd submit meets the shutdown

    run(main())


def test_fail_fast_new_submits_from_other_tasks_raise_runtime_error(run) -> None:
    async def main() -> None:
        exe = CoroutineExecutor()
        errors: list[BaseException] = []
        failing = asyncio.Event()

        async def fail_and_tell() -> None:
            await asyncio.sleep(0)
            failing.set()
            raise Boom

        async def outsider() -> None:
            await failing.wait()  # the executor shut down in the same step
            try:
                await exe.submit(sleep_forever)
            except RuntimeError as e:
                errors.append(e)

        other = asyncio.ensure_future(outsider())
        with pytest.raises(Boom):
            async with exe:
                await exe.submit(fail_and_tell)
                await asyncio.sleep(3600)
        await other
        assert len(errors) == 1
        assert "cannot schedule new futures after shutdown" in str(errors[0])

    run(main())


def test_fail_fast_cancelled_job_raises_cancelled_error_at_exit(run) -> None:
    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            async with CoroutineExecutor() as exe:
                h = await exe.submit(sleep_forever)
                other = await exe.submit(sleep_forever)
                await asyncio.sleep(0)
                h.cancel()
                await asyncio.sleep(3600)
        assert other.cancelled()
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    run(main())


def test_fail_fast_job_raising_cancelled_error_counts_as_cancelled(run) -> None:
    async def cancels_itself() -> None:
        await asyncio.sleep(0)
        raise asyncio.CancelledError

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            async with CoroutineExecutor() as exe:
                await exe.submit(cancels_itself)
                await asyncio.sleep(3600)

    run(main())


def test_error_caught_outside_block_leaves_cancelling_zero(run) -> None:
    async def main() -> str:
        try:
            async with CoroutineExecutor() as exe:
                await exe.submit(fail_soon)
                await asyncio.sleep(3600)
        except Boom:
            pass
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        await asyncio.sleep(0.001)  # no stray cancellation hits the code after the block
        return "went on"

    assert run(main()) == "went on"


def test_error_in_first_step_caught_outside_block_leaves_no_pending_cancel(run) -> None:
    async def main() -> str:
        try:
            async with CoroutineExecutor() as exe:
                await exe.submit(fail_now)  # the body never suspends after this
        except Boom:
            pass
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        return "went on"

    assert run(main()) == "went on"


def test_fail_fast_error_while_exiting(run) -> None:
    async def main() -> None:
        with pytest.raises(Boom):
            async with CoroutineExecutor() as exe:
                slow = await exe.submit(sleep_forever)
                await exe.submit(fail_soon, 0.01)
            # the body ended normally; __aexit__ was waiting when the job failed
        assert slow.cancelled()

    run(main())


def test_only_the_first_error_is_raised(run) -> None:
    async def fail_with(msg: str, delay: float) -> None:
        await asyncio.sleep(delay)
        raise Boom(msg)

    async def main() -> None:
        with pytest.raises(Boom, match="first"):
            async with CoroutineExecutor() as exe:
                await exe.submit(fail_with, "second", 0.05)
                await exe.submit(fail_with, "first", 0.01)

    run(main())


# --------------------------------------------------------------------- suppress


def test_suppress_task_errors_absorbs_errors_and_cancellations(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(suppress_task_errors=True) as exe:
            bad = await exe.submit(fail_soon)
            bad_now = await exe.submit(fail_now)
            victim = await exe.submit(sleep_forever)
            good = await exe.submit(asyncio.sleep, 0.02, "ok")
            await asyncio.sleep(0.01)
            victim.cancel()
        assert isinstance(bad.exception(), Boom)
        assert isinstance(bad_now.exception(), Boom)
        assert victim.cancelled()
        assert good.result() == "ok"

    run(main())  # the fixture fails on any "exception was never retrieved"


def test_suppress_task_errors_drops_handles_without_logging(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(suppress_task_errors=True) as exe:
            for _ in range(20):
                await exe.submit(fail_soon)
                await exe.submit(fail_now)

    run(main())


# --------------------------------------------------------------------- body / outer


def test_body_raises_cancels_all_jobs_and_propagates(run) -> None:
    async def main() -> None:
        with pytest.raises(KeyError):
            async with CoroutineExecutor() as exe:
                hs = [await exe.submit(sleep_forever) for _ in range(3)]
                raise KeyError("body")
        assert all(h.cancelled() for h in hs)

    run(main())


def test_outer_cancellation_in_body_cancels_jobs_and_propagates(run) -> None:
    async def main() -> None:
        handles: list[asyncio.Future[Any]] = []
        started = asyncio.Event()

        async def body() -> None:
            async with CoroutineExecutor() as exe:
                handles.extend([await exe.submit(sleep_forever) for _ in range(3)])
                started.set()
                await asyncio.sleep(3600)

        t = asyncio.ensure_future(body())
        await started.wait()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert all(h.cancelled() for h in handles)

    run(main())


def test_outer_cancellation_while_exit_waits(run) -> None:
    async def main() -> None:
        handles: list[asyncio.Future[Any]] = []
        cleanup_done = asyncio.Event()

        async def stubborn() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                await asyncio.sleep(0.01)  # cleanup that takes a while
                cleanup_done.set()

        async def body() -> None:
            async with CoroutineExecutor() as exe:
                handles.append(await exe.submit(stubborn))

        t = asyncio.ensure_future(body())
        for _ in range(3):
            await asyncio.sleep(0)  # body submits, leaves the block, waits in __aexit__
        t.cancel()
        await asyncio.sleep(0)
        t.cancel()  # twice in a row
        with pytest.raises(asyncio.CancelledError):
            await t
        assert cleanup_done.is_set(), "the job must be awaited before the exit returns"
        assert handles[0].cancelled()

    run(main())


def test_outer_asyncio_timeout_around_executor_is_not_swallowed(run) -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                async with CoroutineExecutor() as exe:
                    await exe.submit(sleep_forever)

    run(main())


@pytest.mark.parametrize("where", ["job", "body"])
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_propagate_unchanged(
    loop_kind: str, exc_type: type[BaseException], where: str
) -> None:
    # Not through the `run` fixture: the exception escapes the event loop, as it
    # does from any task, and asyncio.Runner then cancels and finishes what is left.
    import coroexecutor

    cancelled: list[bool] = []

    async def victim() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def raiser() -> None:
        await asyncio.sleep(0.01)
        raise exc_type()

    async def main() -> None:
        async with CoroutineExecutor() as exe:
            await exe.submit(victim)
            if where == "job":
                await exe.submit(raiser)
                await asyncio.sleep(3600)
            else:
                await asyncio.sleep(0.01)
                raise exc_type()

    with pytest.raises(exc_type):
        if loop_kind == "eager":
            with asyncio.Runner() as r:
                r.get_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
                r.run(main())
        else:
            coroexecutor.run(main(), uvloop=loop_kind == "uvloop")
    assert cancelled == [True]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.11+")
def test_job_swallowing_cancellation_still_ends_before_exit(run) -> None:
    ended: list[str] = []

    async def swallower() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)
            ended.append("swallowed")
        return "kept going"

    async def main() -> None:
        with pytest.raises(Boom):
            async with CoroutineExecutor() as exe:
                await exe.submit(swallower)
                await exe.submit(fail_soon, 0.01)
        assert ended == ["swallowed"]

    run(main())


def test_job_error_that_caused_the_shutdown_beats_the_bodys_reaction(run) -> None:
    async def main() -> None:
        with pytest.raises(Boom) as info:
            async with CoroutineExecutor() as exe:
                await exe.submit(fail_soon, 0.01)
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    raise ValueError("body reacting to the shutdown") from None
        assert isinstance(info.value.__context__, ValueError)

    run(main())


def test_body_error_of_its_own_beats_job_errors_during_cancellation(run) -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise Boom("while cancelled") from None

    async def main() -> None:
        with pytest.raises(KeyError):
            async with CoroutineExecutor() as exe:
                await exe.submit(fails_when_cancelled)
                await asyncio.sleep(0)
                raise KeyError("body")

    run(main())
