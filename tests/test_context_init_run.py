"""Context variables, initializer/initargs, coroexecutor.run()."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import warnings
from typing import Any

import pytest

import coroexecutor
from coroexecutor import CoroutineExecutor

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def read_var() -> str:
    await asyncio.sleep(0)
    return request_id.get()


def test_context_default_jobs_see_the_context_the_executor_was_entered_in(run) -> None:
    async def main() -> None:
        request_id.set("outer")
        async with CoroutineExecutor() as exe:
            request_id.set("changed after entering")
            h = await exe.submit(read_var)
        assert h.result() == "outer"

    run(main())


def test_context_a_job_sees_the_same_context_across_its_steps(run) -> None:
    async def job() -> tuple[str, str]:
        request_id.set("mine")
        before = request_id.get()
        await asyncio.sleep(0)
        return before, request_id.get()

    async def main() -> None:
        async with CoroutineExecutor() as exe:
            h = await exe.submit(job)
        assert h.result() == ("mine", "mine")

    run(main())


def test_context_copy_context_runs_each_job_in_a_copy_of_the_submitters(run) -> None:
    async def set_and_read(value: str) -> tuple[str, str]:
        seen = request_id.get()
        request_id.set(value)  # must not leak into the submitter or other jobs
        await asyncio.sleep(0)
        return seen, request_id.get()

    async def main() -> None:
        async with CoroutineExecutor(max_workers=2, copy_context=True) as exe:
            handles = []
            for i in range(6):
                request_id.set(f"submitter {i}")
                handles.append(await exe.submit(set_and_read, f"job {i}"))
            quick = await exe.submit(read_var)
            assert request_id.get() == "submitter 5"
        assert [h.result() for h in handles] == [(f"submitter {i}", f"job {i}") for i in range(6)]
        assert quick.result() == "submitter 5"

    run(main())


def test_initializer_sync_runs_before_each_job(run) -> None:
    calls: list[Any] = []

    def init(tag: str) -> None:
        calls.append(tag)

    async def job(i: int) -> int:
        calls.append(i)
        await asyncio.sleep(0)
        return i

    async def main() -> None:
        async with CoroutineExecutor(initializer=init, initargs=("init",)) as exe:
            hs = [await exe.submit(job, i) for i in range(3)]
        assert [h.result() for h in hs] == [0, 1, 2]

    run(main())
    assert calls == ["init", 0, "init", 1, "init", 2]


def test_initializer_async_runs_before_each_job_in_its_context(run) -> None:
    async def init() -> None:
        await asyncio.sleep(0)
        request_id.set("initialised")

    async def main() -> None:
        async with CoroutineExecutor(initializer=init, copy_context=True) as exe:
            h = await exe.submit(read_var)
        assert h.result() == "initialised"

    run(main())


def test_initializer_error_fails_the_job(run) -> None:
    def init() -> None:
        raise LookupError("no config")

    async def main() -> None:
        async with CoroutineExecutor(initializer=init, suppress_task_errors=True) as exe:
            h = await exe.submit(read_var)
        assert isinstance(h.exception(), LookupError)

    run(main())


def test_initializer_is_validated_at_construction() -> None:
    with pytest.raises(TypeError, match="initializer must be callable"):
        CoroutineExecutor(initializer=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initargs must be a sequence"):
        CoroutineExecutor(initializer=print, initargs=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"initargs must be a sequence .* got str 'ab'"):
        CoroutineExecutor(initializer=print, initargs="ab")
    with pytest.raises(TypeError, match="initargs must be a sequence"):
        CoroutineExecutor(initializer=print, initargs={1, 2})  # type: ignore[arg-type]


def test_initargs_takes_any_sequence_as_concurrent_futures_does(run) -> None:
    seen: list[tuple[int, ...]] = []

    def init(*args: int) -> None:
        seen.append(args)

    async def main() -> None:
        args = [1, 2, 3]
        async with CoroutineExecutor(initializer=init, initargs=args) as exe:
            args.append(4)  # taken at construction, as a tuple
            await exe.submit(asyncio.sleep, 0)
        async with CoroutineExecutor(initializer=init, initargs=range(2)) as exe:
            await exe.submit(asyncio.sleep, 0)

    run(main())
    assert seen == [(1, 2, 3), (0, 1)]


def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_run_uses_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")

    async def main() -> str:
        return _loop_module()

    assert coroexecutor.run(main()).startswith("uvloop")
    assert coroexecutor.run(main(), uvloop=True).startswith("uvloop")
    assert coroexecutor.run(main(), uvloop=False).startswith("asyncio")


def test_run_without_uvloop_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError

    async def main() -> str:
        return _loop_module()

    assert coroexecutor.run(main()).startswith("asyncio")
    coro = main()
    with pytest.raises(ImportError, match=r"coroexecutor\[uvloop\]"):
        coroexecutor.run(coro, uvloop=True)
    coro.close()


def test_run_with_a_loop_factory_uses_it_and_warns_of_nothing() -> None:
    made: list[asyncio.AbstractEventLoop] = []

    def factory() -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        made.append(loop)
        return loop

    async def main() -> asyncio.AbstractEventLoop:
        async with CoroutineExecutor() as exe:
            h = await exe.submit(asyncio.sleep, 0)
        await h
        return asyncio.get_running_loop()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeprecationWarning (no event-loop policy)
        assert coroexecutor.run(main(), loop_factory=factory, debug=True) is made[0]
    assert made[0].is_closed()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loop_factory": "asyncio"}, TypeError, "loop_factory must be callable"),
        ({"loop_factory": asyncio.new_event_loop, "uvloop": False}, ValueError, "not both"),
        ({"uvloop": "yes"}, TypeError, "uvloop must be True, False or None"),
    ],
)
def test_run_refuses_bad_arguments_by_name(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    async def main() -> None:
        pass

    coro = main()
    with pytest.raises(error, match=match):
        coroexecutor.run(coro, **kwargs)
    coro.close()


def test_run_returns_the_result_and_propagates_errors() -> None:
    async def ok() -> int:
        async with CoroutineExecutor() as exe:
            h = await exe.submit(asyncio.sleep, 0, 42)
        return h.result()

    async def bad() -> None:
        raise KeyError("x")

    assert coroexecutor.run(ok()) == 42
    with pytest.raises(KeyError):
        coroexecutor.run(bad())


def test_public_names() -> None:
    assert coroexecutor.__all__ == (
        "AdaptiveLimit",
        "CoroutineExecutor",
        "ExecutorFull",
        "ExecutorStats",
        "PerKey",
        "Retry",
        "ShardCrashed",
        "ShardedExecutor",
        "run",
    )
    assert isinstance(coroexecutor.__all__, tuple)


def test_copy_context_keeps_tasks_bounded_by_max_workers(run) -> None:
    async def noop() -> None:
        pass

    async def main() -> None:
        async with CoroutineExecutor(max_workers=8, copy_context=True) as exe:
            for i in range(3000):
                await exe.submit(noop if i % 3 else read_var)
                assert len(asyncio.all_tasks()) <= 1 + 8

    run(main())
