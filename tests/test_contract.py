"""The contract: what a user relies on, written once and run against every executor.

Each test takes ``make``, which builds the executor under test with the options it is
given: ``CoroutineExecutor`` (on every loop), ``ShardedExecutor`` with the process
backend at 1 and at 2 shards, and, in tests/test_sharded_ray.py (``make test-ray``), on
Ray.  ``max_workers`` is per shard for ShardedExecutor (the README's "max_workers"):
a test that needs the total reads ``exe.stats().max_workers``.

An option one executor does not offer is a skip that says why (``offers``), and the
README's option table lists the same.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from tests import contract_jobs as jobs

from coroexecutor import CoroutineExecutor, ExecutorFull, Retry, ShardedExecutor

# (executor, loop): ShardedExecutor's parent runs on asyncio here; its shards use uvloop
# when installed, whatever the parent's loop.
KINDS = [
    ("coroutine", "asyncio"),
    ("coroutine", "uvloop"),
    ("coroutine", "eager"),
    ("sharded-1", "asyncio"),
    ("sharded-2", "asyncio"),
]

# What ShardedExecutor does not offer yet, and why (the README's option table says so).
NOT_SHARDED = {
    "copy_context": "not offered by ShardedExecutor: a shard cannot see the submitter's context",
}


@pytest.fixture(params=KINDS, ids=[f"{k}-{loop}" for k, loop in KINDS])
def kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    value: tuple[str, str] = request.param
    return value


@pytest.fixture
def loop_kind(kind: tuple[str, str]) -> str:
    loop = kind[1]
    if loop == "eager" and sys.version_info < (3, 12):
        pytest.skip("asyncio.eager_task_factory needs Python 3.12+")
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    return loop


@pytest.fixture
def make(kind: tuple[str, str]) -> Callable[..., Any]:
    name = kind[0]

    def _make(max_workers: int = 8, **options: Any) -> Any:
        if name == "coroutine":
            return CoroutineExecutor(max_workers, **options)
        backend, _, shards = name.rpartition("-")
        return ShardedExecutor(
            int(shards),
            max_workers=max_workers,
            backend="ray" if backend == "ray" else "process",
            **options,
        )

    _make.kind = name  # type: ignore[attr-defined]
    return _make


def offers(make: Callable[..., Any], feature: str) -> None:
    if make.kind != "coroutine" and feature in NOT_SHARDED:  # type: ignore[attr-defined]
        pytest.skip(NOT_SHARDED[feature])


def adds_up(exe: Any) -> None:
    st = exe.stats()
    assert st.submitted == st.pending + st.running + st.completed + st.failed + st.cancelled


# ---------------------------------------------------------------------- submit and map


def test_submit_returns_a_future_of_the_result(run, make) -> None:
    async def main() -> None:
        async with make() as exe:
            h = await exe.submit(jobs.add, 2, b=3)
            slow = await exe.submit(jobs.sleep_echo, 0.02, "slow")
            assert isinstance(h, asyncio.Future)
            assert await slow == "slow"
        assert h.result() == 5
        st = exe.stats()
        assert (st.submitted, st.completed, st.failed, st.cancelled) == (2, 2, 0, 0)

    run(main())


def test_map_yields_in_input_order_and_zips(run, make) -> None:
    async def main() -> None:
        async with make() as exe:
            got = [r async for r in exe.map(jobs.add, range(20), range(100, 150))]
            unordered = sorted([r async for r in exe.map_unordered(jobs.echo, range(30))])
        assert got == [i + 100 + i for i in range(20)]
        assert unordered == list(range(30))

    run(main())


def test_map_error_comes_in_its_turn_and_does_not_fail_fast(run, make) -> None:
    async def main() -> None:
        got = []
        async with make() as exe:
            with pytest.raises(ValueError, match="bad 3"):
                async for r in exe.map(jobs.fail_if, range(8), [3] * 8):
                    got.append(r)
            after = await exe.submit(jobs.echo, "still open")
        assert got == [0, 1, 2]
        assert after.result() == "still open"
        adds_up(exe)

    run(main())


def _kinds(n: int) -> list[str]:
    cycle = ["ok", "error", "ok", "cancel", "ok", "hang", "quick-error", "ok"]
    return [cycle[i % len(cycle)] for i in range(n)]


def _expected(i: int, kind: str) -> Any:
    return {"error": f"ValueError('bad {i}')", "quick-error": f"ValueError('quick {i}')"}.get(
        kind, {"cancel": "CancelledError()", "hang": "TimeoutError"}.get(kind, i)
    )


def _seen(r: Any) -> Any:
    if isinstance(r, TimeoutError):
        assert "timed out after 0.1 s" in str(r)
        return "TimeoutError"
    return repr(r) if isinstance(r, BaseException) else r


def test_map_return_exceptions_yields_each_failure_in_its_place(run, make) -> None:
    """One bad item (an error, a cancellation, a job_timeout) does not end the map."""

    async def main() -> None:
        kinds = _kinds(40)
        async with make(max_workers=4, job_timeout=0.1) as exe:
            got = [
                _seen(r)
                async for r in exe.map(jobs.outcome, range(40), kinds, return_exceptions=True)
            ]
            unordered = [
                _seen(r)
                async for r in exe.map_unordered(
                    jobs.outcome, range(40), kinds, return_exceptions=True
                )
            ]
        want = [_expected(i, k) for i, k in enumerate(kinds)]
        assert got == want
        assert sorted(map(str, unordered)) == sorted(map(str, want))
        st = exe.stats()
        assert (st.completed, st.failed, st.cancelled) == (40, 30, 10)  # twice 20/15/5
        adds_up(exe)

    run(main())


def test_map_return_exceptions_must_be_a_bool(run, make) -> None:
    async def main() -> None:
        async with make() as exe:
            for method in (exe.map, exe.map_unordered):
                with pytest.raises(TypeError, match="return_exceptions must be True or False"):
                    method(jobs.echo, range(3), return_exceptions="yes")

    run(main())


# ---------------------------------------------------------------------- errors


def test_fail_fast_raises_the_first_error_and_cancels_the_rest(run, make) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="first"):
            async with make() as exe:
                bystander = await exe.submit(jobs.sleep_echo, 3600)
                await exe.submit(jobs.fail, 0.01, "first")
                await asyncio.sleep(3600)  # fail-fast cancels the body too
        assert bystander.cancelled()
        st = exe.stats()
        assert (st.failed, st.cancelled) == (1, 1)
        adds_up(exe)

    run(main())


def test_suppress_task_errors_keeps_errors_on_handles(run, make) -> None:
    async def main() -> None:
        async with make(suppress_task_errors=True) as exe:
            bad = await exe.submit(jobs.fail, 0, "kept")
            good = await exe.submit(jobs.sleep_echo, 0.01, "ok")
        assert isinstance(bad.exception(), ValueError)
        assert good.result() == "ok"
        assert exe.stats().failed == 1

    run(main())


def test_errors_group_raises_every_job_error(run, make) -> None:
    """As TaskGroup: the first error, and those raised by jobs unwinding from the
    cancellation it caused, in one ExceptionGroup."""

    async def main() -> None:
        with pytest.raises(ExceptionGroup) as info:
            async with make(errors="group") as exe:
                await exe.submit(jobs.fail_when_cancelled, "while cancelled")
                await exe.submit(jobs.fail, 0.05, "first")
        errors = info.value.exceptions
        assert all(isinstance(e, ValueError) for e in errors)
        assert sorted(str(e) for e in errors) == ["first", "while cancelled"]
        st = exe.stats()
        assert (st.failed, st.cancelled) == (1, 1)  # the unwinding one was cancelled

    run(main())


def test_on_error_sees_each_failed_job_and_its_error(run, make) -> None:
    seen: list[tuple[bool, str]] = []

    def on_error(handle: asyncio.Future[Any], exc: BaseException) -> None:
        seen.append((handle.done() and handle.exception() is exc, str(exc)))

    async def main() -> None:
        async with make(suppress_task_errors=True, on_error=on_error) as exe:
            for i in range(3):
                await exe.submit(jobs.fail, 0, f"e{i}")
            await exe.submit(jobs.echo, "fine")

    run(main())
    assert sorted(seen) == [(True, "e0"), (True, "e1"), (True, "e2")]


def test_cancelling_a_handle_cancels_its_job(run, make) -> None:
    async def main() -> None:
        async with make(suppress_task_errors=True) as exe:
            h = await exe.submit(jobs.sleep_echo, 3600)
            await asyncio.sleep(0.05)
            assert h.cancel()
            assert h.cancelled()
        assert exe.stats().cancelled == 1
        adds_up(exe)

    run(main())


# ---------------------------------------------------------------------- time


def test_timeout_cancels_what_is_left_and_raises_timeout_error(run, make) -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with make(timeout=0.3) as exe:
                done = await exe.submit(jobs.echo, 1)
                slow = await exe.submit(jobs.sleep_echo, 3600)
                await asyncio.sleep(3600)
        assert done.result() == 1
        assert slow.cancelled()

    run(main())


def test_timeout_inf_is_no_deadline(run, make) -> None:
    async def main() -> None:
        async with make(timeout=math.inf) as exe:
            h = await exe.submit(jobs.sleep_echo, 0.01, "fine")
        assert h.result() == "fine"

    run(main())


def test_job_timeout_fails_a_slow_job_with_timeout_error(run, make) -> None:
    async def main() -> None:
        async with make(job_timeout=0.05, suppress_task_errors=True) as exe:
            slow = await exe.submit(jobs.sleep_echo, 3600)
            quick = await exe.submit(jobs.sleep_echo, 0.001, "quick")
        assert isinstance(slow.exception(), TimeoutError)
        assert quick.result() == "quick"
        # The message says what timed out, and after how long.
        assert str(slow.exception()) == "job sleep_echo(3600) timed out after 0.05 s (job_timeout)"

    run(main())


def test_job_timeout_leaves_a_jobs_own_timeout_error_as_it_is(run, make) -> None:
    async def main() -> None:
        async with make(job_timeout=60, suppress_task_errors=True) as exe:
            own = await exe.submit(jobs.raise_timeout, "the job's own")
            long_args = await exe.submit(jobs.sleep_echo, 3600, "x" * 500)
            await asyncio.sleep(0.05)
            exe.cancel()
        assert str(own.exception()) == "the job's own"
        assert long_args.cancelled()

    run(main())


def test_job_timeout_message_shortens_long_arguments(run, make) -> None:
    async def main() -> None:
        async with make(job_timeout=0.02, suppress_task_errors=True) as exe:
            h = await exe.submit(jobs.sleep_echo, 3600, x="y" * 10_000)
        message = str(h.exception())
        assert message.startswith("job sleep_echo(3600, x='yyyy") and len(message) < 200
        assert message.endswith("timed out after 0.02 s (job_timeout)")

    run(main())


# ---------------------------------------------------------------------- shutdown


def test_shutdown_waits_then_refuses_new_jobs(run, make) -> None:
    async def main() -> None:
        exe = make()
        h = await exe.submit(jobs.sleep_echo, 0.02, "waited")
        await exe.shutdown()
        assert h.result() == "waited"
        with pytest.raises(RuntimeError, match="after shutdown"):
            await exe.submit(jobs.echo, 1)

    run(main())


def test_shutdown_cancel_futures_and_wait_false(run, make) -> None:
    async def main() -> None:
        async with make() as exe:
            h = await exe.submit(jobs.sleep_echo, 3600)
            await exe.shutdown(cancel_futures=True)
        assert h.cancelled()
        async with make() as exe:
            h = await exe.submit(jobs.sleep_echo, 3600)
            await exe.shutdown(wait=False)  # returns at once, raises nothing
            assert h.cancelled()

    run(main())


def test_shutdown_grace_lets_jobs_finish_then_cancels_the_rest(run, make) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with make(max_workers=2) as exe:
            quick = await exe.submit(jobs.sleep_echo, 0.01, "quick")
            slow = await exe.submit(jobs.sleep_echo, 3600)
            queued = [exe.submit_nowait(jobs.sleep_echo, 3600) for _ in range(3)]
            started = loop.time()
            await exe.shutdown(grace=0.2)  # returns, raises nothing
            waited = loop.time() - started
            with pytest.raises(RuntimeError, match="after shutdown"):
                await exe.submit(jobs.echo, 1)
        assert quick.result() == "quick"
        assert slow.cancelled() and all(h.cancelled() for h in queued)
        assert 0.15 < waited < 30  # the grace, not the hour
        st = exe.stats()
        assert (st.submitted, st.completed, st.cancelled, st.failed) == (5, 1, 4, 0)
        # Every job ended within the grace: nothing is cancelled, nothing waits for it.
        async with make() as exe:
            h = await exe.submit(jobs.sleep_echo, 0.01, "in time")
            started = loop.time()
            await exe.shutdown(grace=600)
            assert loop.time() - started < 60
        assert h.result() == "in time"

    run(main())


def test_shutdown_grace_still_raises_a_job_error_that_came_first(run, make) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="first"):
            async with make() as exe:
                await exe.submit(jobs.fail, 0, "first")
                await exe.submit(jobs.sleep_echo, 3600)
                await exe.shutdown(grace=0.05)

    run(main())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"grace": "5"}, TypeError, "grace must be a number of seconds"),
        ({"grace": True}, TypeError, "grace must be a number of seconds"),
        ({"grace": -1}, ValueError, "grace must be 0 seconds or more"),
        ({"grace": math.nan}, ValueError, "grace must be 0 seconds or more"),
        ({"grace": 1, "wait": False}, ValueError, "grace needs wait=True"),
        ({"grace": 1, "cancel_futures": True}, ValueError, "cancel_futures=True"),
    ],
)
def test_shutdown_grace_bad_values_name_the_mistake(
    run, make, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    async def main() -> None:
        async with make() as exe:
            h = await exe.submit(jobs.sleep_echo, 0.01, "still runs")
            with pytest.raises(error, match=match):
                await exe.shutdown(**kwargs)
        assert h.result() == "still runs"  # a refused shutdown changed nothing

    run(main())


# ---------------------------------------------------------------------- cancel()


def test_cancel_stops_every_job_and_the_body_and_exits_without_raising(run, make) -> None:
    async def main() -> None:
        reached: list[str] = []
        async with make(max_workers=2) as exe:
            running = [await exe.submit(jobs.sleep_echo, 3600) for _ in range(2)]
            queued = [exe.submit_nowait(jobs.sleep_echo, 3600) for _ in range(3)]
            exe.cancel()
            exe.cancel()  # idempotent
            with pytest.raises(RuntimeError, match="after shutdown"):
                exe.submit_nowait(jobs.echo, 1)  # no new job, as TaskGroup.create_task
            reached.append("body goes on until its next await")
            await exe.submit(jobs.echo, 1)  # the body's cancellation lands here
            reached.append("never")  # pragma: no cover
        assert reached == ["body goes on until its next await"]
        assert all(h.cancelled() for h in running + queued)
        st = exe.stats()
        assert (st.submitted, st.cancelled, st.failed, st.running, st.pending) == (5, 5, 0, 0, 0)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the cancellation is taken back
        exe.cancel()  # a no-op once closed
        await asyncio.sleep(0)

    run(main())


def test_cancel_before_entry_cancels_on_entry(run, make) -> None:
    async def main() -> None:
        exe = make()
        exe.cancel()
        async with exe:
            for i in range(1000):  # a producer loop ends at its first submit
                await exe.submit(jobs.echo, i)
        assert exe.stats().submitted == 0

        async def other_task() -> None:
            await exe.submit(jobs.echo, 1)

        exe = make()
        async with exe:
            exe.cancel()
            with pytest.raises(RuntimeError, match="after shutdown"):
                await asyncio.shield(asyncio.create_task(other_task()))  # not the body

    run(main())


def test_cancel_after_a_job_error_still_raises_it(run, make) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="boom"):
            async with make(suppress_task_errors=False) as exe:
                h = await exe.submit(jobs.fail, 0, "boom")
                await asyncio.wait([h])
                exe.cancel()
                await asyncio.sleep(3600)

    run(main())


def test_cancel_while_cancelled_from_outside_still_propagates(run, make) -> None:
    async def body(exe: Any, entered: asyncio.Event) -> None:
        async with exe:
            await exe.submit(jobs.sleep_echo, 3600)
            entered.set()
            await asyncio.sleep(3600)

    async def main() -> None:
        exe = make()
        entered = asyncio.Event()
        task = asyncio.create_task(body(exe, entered))
        await entered.wait()
        task.cancel()  # someone else's cancellation
        exe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert exe.stats().cancelled == 1

    run(main())


# ---------------------------------------------------------------------- retry


def _key(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex}"  # flaky()'s counts live as long as the process


def test_retry_calls_a_failing_job_again_until_it_succeeds(run, make) -> None:
    async def main() -> None:
        seen: list[BaseException] = []
        retry = Retry(3, backoff=0.001)
        async with make(retry=retry, on_error=lambda h, e: seen.append(e)) as exe:
            twice = await exe.submit(jobs.flaky, _key("twice"), 2)
            got = [r async for r in exe.map(jobs.flaky, [_key(f"m{i}") for i in range(5)], [1] * 5)]
        assert twice.result().endswith("took 3")
        assert all(r.endswith("took 2") for r in got)
        st = exe.stats()
        assert (st.completed, st.failed, st.retried) == (6, 0, 2 + 5)
        assert seen == []  # on_error sees only a final failure

    run(main())


def test_retry_gives_up_after_its_attempts_with_the_last_error(run, make) -> None:
    async def main() -> None:
        seen: list[BaseException] = []
        with pytest.raises(ValueError, match=r"call 3\n") as info:
            async with make(retry=Retry(3, backoff=0), on_error=lambda h, e: seen.append(e)) as exe:
                await exe.submit(jobs.flaky, _key("always"), 100)
        assert info.value.__notes__ == ["coroexecutor: failed 3 times (Retry(attempts=3))"]
        assert [str(e).rsplit(" ", 2)[1:] for e in seen] == [["call", "3"]]  # once, the last
        st = exe.stats()
        assert (st.failed, st.retried) == (1, 2)

    run(main())


def test_retry_only_retries_what_on_names_and_never_a_cancellation(run, make) -> None:
    async def main() -> None:
        retry = Retry(5, on=(ValueError, asyncio.CancelledError), backoff=0)
        async with make(retry=retry, suppress_task_errors=True) as exe:
            other = await exe.submit(jobs.flaky, _key("key"), 1, "KeyError")
            cancelled = await exe.submit(jobs.flaky, _key("cancel"), 1, "CancelledError")
            retried = await exe.submit(jobs.flaky, _key("value"), 1)
        assert isinstance(other.exception(), KeyError)
        assert cancelled.cancelled()
        assert retried.result().endswith("took 2")
        st = exe.stats()
        assert (st.completed, st.failed, st.cancelled, st.retried) == (1, 1, 1, 1)

    run(main())


def test_retry_with_job_timeout_times_each_attempt(run, make) -> None:
    async def main() -> None:
        retry = Retry(2, on=TimeoutError, backoff=0)
        async with make(retry=retry, job_timeout=0.1) as exe:
            h = await exe.submit(jobs.hang_then_answer, _key("slow"))
        assert h.result().endswith("took 2")
        assert exe.stats().retried == 1

    run(main())


def test_retry_cancelled_while_backing_off_is_not_tried_again(run, make) -> None:
    async def main() -> None:
        key = _key("backoff")
        retry = Retry(5, backoff=3600, max_backoff=3600, jitter=False)
        async with make(retry=retry, suppress_task_errors=True) as exe:
            h = await exe.submit(jobs.flaky, key, 100)
            await asyncio.sleep(0.3)  # its first call failed at once: it backs off now
            h.cancel()
        assert h.cancelled()
        st = exe.stats()
        assert (st.cancelled, st.retried, st.failed) == (1, 1, 0)

    run(main())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attempts": 0}, ValueError, "attempts must be 1 or more"),
        ({"attempts": 2.5}, TypeError, "attempts must be an int"),
        ({"on": 42}, TypeError, "on must be an exception type or a tuple"),
        ({"on": ()}, TypeError, "on must be an exception type or a tuple"),
        ({"on": (ValueError, int)}, TypeError, "on must be an exception type or a tuple"),
        ({"backoff": -1}, ValueError, "backoff must be a finite number"),
        ({"max_backoff": math.inf}, ValueError, "max_backoff must be a finite number"),
        ({"backoff": "1"}, TypeError, "backoff must be a number"),
        ({"jitter": 1}, TypeError, "jitter must be True or False"),
    ],
)
def test_retry_bad_values_name_the_mistake(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Retry(**kwargs)


def test_retry_option_must_be_a_retry(make) -> None:
    with pytest.raises(TypeError, match=r"retry must be a Retry\(...\) or None, got 3"):
        make(retry=3)


# ---------------------------------------------------------------------- options


def test_initializer_runs_before_each_job_where_the_job_runs(run, make) -> None:
    async def main() -> None:
        async with make(initializer=jobs.init, initargs=["a", 1]) as exe:
            h = await exe.submit(jobs.seen_by_init)
        assert h.result() == ["a", 1]

    run(main())


def test_progress_bar_counts_jobs(run, make, capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        async with make(progress=20, suppress_task_errors=True) as exe:
            async for _ in exe.map(jobs.echo, range(19)):
                pass
            await exe.submit(jobs.fail, 0, "x")

    run(main())
    err = capsys.readouterr().err
    assert re.search(r"20/20", err), err
    assert "failed=1" in err


def test_stats_and_repr(run, make) -> None:
    async def main() -> None:
        async with make(max_workers=4) as exe:
            await exe.submit(jobs.echo, 1)
            assert "state=open" in repr(exe)
        st = exe.stats()
        assert st.max_workers == 4  # per event loop: each shard's, for ShardedExecutor
        assert (st.submitted, st.completed) == (1, 1)
        assert "state=closed" in repr(exe) and "completed=1" in repr(exe)

    run(main())


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_workers": 0}, ValueError, "max_workers must be greater than 0"),
        ({"timeout": 0}, ValueError, "timeout must be greater than 0"),
        ({"job_timeout": -1}, ValueError, "job_timeout must be a finite number"),
        ({"errors": "all"}, ValueError, 'errors must be "first" or "group"'),
        ({"on_error": 5}, TypeError, "on_error must be callable"),
        ({"progress": "yes"}, TypeError, "progress must be True, False, or"),
        ({"initargs": 5}, TypeError, "initargs must be a sequence"),
        ({"max_per_second": 5, "burst": 0}, ValueError, "burst must be greater than 0"),
        ({"max_per_second": 5, "burst": 2.0}, TypeError, "burst must be an int"),
        ({"burst": 3}, ValueError, "burst=3 needs max_per_second"),
        ({"retry": 3}, TypeError, r"retry must be a Retry\(\.\.\.\) or None"),
    ],
)
def test_bad_options_are_refused_alike(
    make, options: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        make(**options)


def test_max_per_second_is_one_rate_for_the_whole_executor(run, make) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with make(max_per_second=50) as exe:
            await exe.submit(jobs.echo, -1)  # the clock starts at the first start
            t0 = loop.time()
            async for _ in exe.map(jobs.echo, range(10)):
                pass
            # 10 starts 1/50 s apart, over however many shards: at least 0.2 s
            assert loop.time() - t0 >= 10 / 50 * 0.9

    run(main())


def test_max_per_second_burst_allows_that_many_starts_at_once_after_idle(run, make) -> None:
    """GCRA: 5 starts at once, then one per 1/rate; after an idle spell, 5 again."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with make(max_workers=50, max_per_second=5, burst=5) as exe:
            t0 = loop.time()
            first = [await exe.submit(jobs.echo, i) for i in range(5)]
            burst_took = loop.time() - t0
            await exe.submit(jobs.echo, 5)  # the 6th waits its turn: 1/5 s
            sixth_took = loop.time() - t0
            await asyncio.sleep(1.2)  # idle: the burst is banked again
            t1 = loop.time()
            again = [await exe.submit(jobs.echo, i) for i in range(5)]
            again_took = loop.time() - t1
        await asyncio.gather(*first, *again)
        assert burst_took < 0.1 and again_took < 0.1  # a 10x margin under 1 s for 5
        assert sixth_took >= 0.15

    run(main())


def test_submit_nowait_queues_first_in_first_out_up_to_max_pending(run, make) -> None:
    async def main() -> None:
        order: list[int] = []
        async with make(max_workers=1, max_pending=3) as exe:
            room = exe._max_in_flight  # what the executor holds before it queues
            placed = [exe.submit_nowait(jobs.sleep_echo, 0.05, i) for i in range(room)]
            queued = [exe.submit_nowait(jobs.sleep_echo, 0, room + i) for i in range(3)]
            with pytest.raises(ExecutorFull, match="max_pending=3"):
                exe.submit_nowait(jobs.echo, "over")
            assert exe.stats().pending >= 3
            # a blocked submit takes its turn after the queued jobs
            late = await exe.submit(jobs.echo, "after the queue")
            for h in placed + queued:
                h.add_done_callback(lambda h: order.append(h.result()))
            await asyncio.gather(*placed, *queued)
            assert [h.done() for h in queued] == [True] * 3
        assert late.result() == "after the queue"
        assert sorted(order) == list(range(room + 3))
        st = exe.stats()
        assert (st.submitted, st.completed, st.pending, st.running) == (room + 4,) * 2 + (0, 0)

    run(main())


def test_submit_nowait_jobs_still_run_at_shutdown_unless_cancelled(run, make) -> None:
    async def main() -> None:
        async with make(max_workers=1, suppress_task_errors=True) as exe:
            handles = [exe.submit_nowait(jobs.sleep_echo, 0.01, i) for i in range(40)]
        assert [h.result() for h in handles] == list(range(40))
        async with make(max_workers=1, suppress_task_errors=True) as exe:
            handles = [exe.submit_nowait(jobs.sleep_echo, 3600, i) for i in range(40)]
            await exe.shutdown(cancel_futures=True)
        assert all(h.cancelled() for h in handles)
        st = exe.stats()
        assert (st.submitted, st.cancelled, st.pending, st.running) == (40, 40, 0, 0)

    run(main())


def test_max_workers_can_be_resized_while_running(run, make) -> None:
    """Growing lets more jobs run at once, at once; shrinking lets running jobs finish
    and starts no new one until under the new limit (per event loop: per shard).  Each
    job reports how many ran beside it in its own process when it started."""

    async def main() -> None:
        async with make(max_workers=2) as exe:
            shards = getattr(exe, "shards", 1)
            await exe.submit(jobs.echo, 0)  # started (a ShardedExecutor's shards are up)
            exe.max_workers = 6
            assert exe.max_workers == 6 == exe.stats().max_workers
            grown = [await exe.submit(jobs.track, 0.3, i) for i in range(6 * shards)]
            exe.max_workers = 1  # these six (per loop) go on to their end
            shrunk = [await exe.submit(jobs.track, 0.02, i) for i in range(3 * shards)]
            grown_seen = [seen for _, seen in await asyncio.gather(*grown)]
            shrunk_seen = [seen for _, seen in await asyncio.gather(*shrunk)]
        assert max(grown_seen) == 6  # all six of a loop ran side by side
        assert max(shrunk_seen) == 1  # then one at a time

    run(main())


def test_copy_context_runs_each_job_in_the_submitters_context(run, make) -> None:
    offers(make, "copy_context")

    async def main() -> None:
        var = jobs.context_var("request_id")
        async with make(copy_context=True) as exe:
            var.set("first")
            a = await exe.submit(jobs.read_var, "request_id")
            var.set("second")
            b = await exe.submit(jobs.read_var, "request_id")
        assert (a.result(), b.result()) == ("first", "second")

    run(main())
