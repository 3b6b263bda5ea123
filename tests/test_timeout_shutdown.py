"""The whole-executor timeout and shutdown(wait, cancel_futures)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from coroexecutor import CoroutineExecutor


class Boom(Exception):
    pass


async def sleep_then(dt: float, value: Any = None) -> Any:
    await asyncio.sleep(dt)
    return value


async def sleep_forever() -> None:
    await asyncio.sleep(3600)


# --------------------------------------------------------------------- timeout


def test_timeout_covers_every_job_and_keeps_finished_results(run) -> None:
    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            async with CoroutineExecutor(timeout=0.1) as exe:
                quick = await exe.submit(sleep_then, 0.01, "done")
                slow = [await exe.submit(sleep_forever) for _ in range(3)]
        assert time.monotonic() - t0 < 5.0  # 50x the timeout: a wide margin
        assert quick.result() == "done"
        assert all(h.cancelled() for h in slow)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    run(main())


def test_timeout_cancels_the_body_too(run) -> None:
    reached: list[str] = []

    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with CoroutineExecutor(timeout=0.05):
                await asyncio.sleep(3600)
                reached.append("no")

    run(main())
    assert reached == []


def test_timeout_cancels_body_blocked_in_submit(run) -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with CoroutineExecutor(max_workers=1, timeout=0.05) as exe:
                await exe.submit(sleep_forever)
                await exe.submit(sleep_forever)

    run(main())


def test_timeout_covers_jobs_submitted_by_jobs(run) -> None:
    grandchildren: list[asyncio.Future[Any]] = []

    async def producer(exe: CoroutineExecutor) -> None:
        for _ in range(3):
            grandchildren.append(await exe.submit(sleep_forever))

    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with CoroutineExecutor(timeout=0.05) as exe:
                await exe.submit(producer, exe)
        assert len(grandchildren) == 3 and all(h.cancelled() for h in grandchildren)

    run(main())


def test_timeout_not_reached_raises_nothing(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor(timeout=5) as exe:
            h = await exe.submit(sleep_then, 0.001, 1)
        assert h.result() == 1
        await asyncio.sleep(0)

    run(main())


def test_timeout_counts_from_entering_the_executor(run) -> None:
    async def main() -> None:
        exe = CoroutineExecutor(timeout=0.1)
        await asyncio.sleep(0.15)  # longer than the timeout, before entering
        async with exe:
            h = await exe.submit(sleep_then, 0.01, "fine")
        assert h.result() == "fine"

    run(main())


def test_timeout_without_context_manager_counts_from_construction(run) -> None:
    async def main() -> None:
        exe = CoroutineExecutor(timeout=0.05)
        h = await exe.submit(sleep_forever)
        await asyncio.sleep(0.1)
        assert h.cancelled()
        with pytest.raises(RuntimeError, match="after shutdown"):
            await exe.submit(sleep_forever)
        with pytest.raises(TimeoutError):
            await exe.shutdown()

    run(main())


@pytest.mark.parametrize("value", [0, -1, float("nan")])
def test_timeout_must_be_positive(value: float) -> None:
    with pytest.raises(ValueError, match="timeout must be greater than 0"):
        CoroutineExecutor(timeout=value)


def test_timeout_must_be_a_number() -> None:
    with pytest.raises(TypeError, match="timeout must be a number"):
        CoroutineExecutor(timeout="1")  # type: ignore[arg-type]


# --------------------------------------------------------------------- shutdown


def test_shutdown_wait_waits_for_every_job(run) -> None:
    async def main() -> None:
        exe = CoroutineExecutor()
        hs = [await exe.submit(sleep_then, 0.01 * i, i) for i in range(5)]
        await exe.shutdown()
        assert [h.result() for h in hs] == list(range(5))
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            await exe.submit(sleep_then, 0)

    run(main())


def test_shutdown_wait_raises_first_job_error_in_fail_fast_mode(run) -> None:
    async def fail() -> None:
        await asyncio.sleep(0.01)
        raise Boom("first")

    async def main() -> None:
        exe = CoroutineExecutor()
        victim = await exe.submit(sleep_forever)
        await exe.submit(fail)
        with pytest.raises(Boom, match="first"):
            await exe.shutdown()
        assert victim.cancelled()

    run(main())


def test_shutdown_wait_with_suppressed_errors_raises_nothing(run) -> None:
    async def fail() -> None:
        raise Boom

    async def main() -> None:
        exe = CoroutineExecutor(suppress_task_errors=True)
        h = await exe.submit(fail)
        await exe.shutdown()
        assert isinstance(h.exception(), Boom)

    run(main())


def test_shutdown_cancel_futures_cancels_unfinished_jobs(run) -> None:
    async def main() -> None:
        exe = CoroutineExecutor()
        done = await exe.submit(sleep_then, 0, "kept")
        await asyncio.sleep(0.01)
        pending = [await exe.submit(sleep_forever) for _ in range(3)]
        await exe.shutdown(cancel_futures=True)  # our own cancellations are not errors
        assert done.result() == "kept"
        assert all(h.cancelled() for h in pending)

    run(main())


def test_shutdown_wait_false_cancels_and_returns_without_raising(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor() as exe:
            pending = [await exe.submit(sleep_forever) for _ in range(3)]
            await exe.shutdown(wait=False)
            assert all(h.cancelled() for h in pending)
            with pytest.raises(RuntimeError, match="after shutdown"):
                await exe.submit(sleep_forever)
        # the exit awaited the cancelled jobs: no task is left behind (fixture checks)

    run(main())


def test_shutdown_inside_the_block_then_exit(run) -> None:
    async def main() -> None:
        async with CoroutineExecutor() as exe:
            h = await exe.submit(sleep_then, 0.01, 1)
            await exe.shutdown()
            assert h.result() == 1

    run(main())


def test_shutdown_of_unused_executor(run) -> None:
    async def main() -> None:
        exe = CoroutineExecutor()
        await exe.shutdown()
        with pytest.raises(RuntimeError, match="after shutdown"):
            await exe.submit(sleep_then, 0)

    run(main())


def test_shutdown_twice_is_harmless(run) -> None:
    async def main() -> None:
        exe = CoroutineExecutor()
        await exe.submit(sleep_then, 0)
        await exe.shutdown()
        await exe.shutdown()
        await exe.shutdown(wait=False)

    run(main())
