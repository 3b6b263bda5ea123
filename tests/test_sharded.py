"""ShardedExecutor, process backend: the behaviour suite.

tests/test_sharded_ray.py runs the same tests (the ``backend`` fixture) on Ray.  Job
functions live in tests/sharded_jobs.py: shards import jobs by module and name.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests import sharded_jobs as jobs

from coroexecutor import AdaptiveLimit, CoroutineExecutor, PerKey, ShardCrashed, ShardedExecutor

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def backend() -> str:
    return "process"


@pytest.fixture
def loop_kind() -> str:
    """conftest's ``run`` on one loop here (each test starts processes)."""
    return "uvloop"


def make(backend: str, shards: int = 2, **kwargs: Any) -> ShardedExecutor:
    return ShardedExecutor(shards, backend=backend, **kwargs)  # type: ignore[arg-type]


def gone(pids: list[int | None], backend: str, timeout: float = 10.0) -> bool:
    """Whether none of ``pids`` is a live process (zombies of ours count as gone)."""
    deadline = time.monotonic() + (timeout if backend == "ray" else 2.0)
    while True:
        alive = []
        for pid in pids:
            if pid is None:
                continue
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.05)


def add_up(exe: ShardedExecutor) -> None:
    st = exe.stats()
    assert st.submitted == st.pending + st.running + st.completed + st.failed + st.cancelled
    assert st.pending == st.running == 0, st


# ---------------------------------------------------------------------- submit, map


def test_submit_results_and_handles(run, backend: str) -> None:
    async def main() -> None:
        async with make(backend) as exe:
            assert len(exe.shard_pids) == 2 and all(exe.shard_pids)
            h1 = await exe.submit(jobs.echo, {"a": [1, 2]})
            h2 = await exe.submit(jobs.add, 2, b=3)
            h3 = await exe.submit(jobs.sleep_echo, 0.05, "slow")
            h4 = await exe.submit(jobs.Jobs(3).times, 5)  # a bound method
            h5 = await exe.submit(functools.partial(jobs.add, 10), b=1)
            assert isinstance(h1, asyncio.Future)
            assert not h3.done()
            seen: list[Any] = []
            h3.add_done_callback(lambda f: seen.append(f.result()))
            assert await h3 == "slow"
            pids = [await exe.submit(jobs.pid) for _ in range(4)]
            await asyncio.sleep(0)
            assert {await h for h in pids} == set(exe.shard_pids)  # both shards used
            assert await (await exe.submit(jobs.loop_module)) == "uvloop"  # in the shards
        assert h1.result() == {"a": [1, 2]}
        assert (h2.result(), h4.result(), h5.result()) == (5, 15, 11)
        assert seen == ["slow"]
        st = exe.stats()
        assert st.completed == st.submitted == 10 and st.max_workers == 1000  # per shard
        add_up(exe)

    run(main())


def test_map_is_ordered_lazy_and_zips(run, backend: str) -> None:
    async def agen() -> AsyncIterator[int]:
        for i in range(30):
            await asyncio.sleep(0)
            yield i

    async def main() -> None:
        async with make(backend, max_workers=4) as exe:
            delays = [0.02 * ((i * 7) % 5) for i in range(40)]
            got = [r async for r in exe.map(jobs.sleep_echo, delays, range(40))]
            assert got == list(range(40))
            # zip semantics, sync and async input mixed
            got = [r async for r in exe.map(jobs.add, range(100), agen())]
            assert got == [2 * i for i in range(30)]
            # lazy and bounded: an endless input is fine
            pulled = 0

            def endless() -> Any:
                nonlocal pulled
                while True:
                    pulled += 1
                    yield pulled

            async for r in exe.map(jobs.echo, endless()):
                assert exe.stats().submitted - exe.stats().completed <= 2 * exe._capacity
                if r == 500:
                    break
            assert pulled < 500 + 2 * exe._capacity + 2
        add_up(exe)

    run(main())


def test_map_unordered_yields_as_jobs_end(run, backend: str) -> None:
    async def main() -> None:
        async with make(backend) as exe:
            got = [r async for r in exe.map_unordered(jobs.sleep_echo, [0.6, 0.3, 0.0], "abc")]
            assert got == ["c", "b", "a"]
            got = [r async for r in exe.map_unordered(jobs.add, range(300))]
            assert sorted(got) == list(range(300))
        add_up(exe)

    run(main())


def test_map_error_is_raised_in_turn_and_cancels_the_rest(run, backend: str) -> None:
    async def main() -> None:
        results: list[Any] = []
        async with make(backend) as exe:
            with pytest.raises(Exception, match="oh noes"):
                async for r in exe.map(jobs.fail_if, [0.01, 0.02, 0.1, 5, 5]):
                    results.append(r)
            # the map owns its jobs' errors: the executor goes on
            assert await (await exe.submit(jobs.echo, 1)) == 1
        assert results == [0.01, 0.02]
        st = exe.stats()
        assert (st.failed, st.cancelled) == (1, 2)
        add_up(exe)

    run(main())


# ---------------------------------------------------------------------- error rules


def test_fail_fast_cancels_every_shard_and_raises_at_exit(run, backend: str) -> None:
    async def main() -> None:
        sleepers: list[asyncio.Future[Any]] = []
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="boom"):
            async with make(backend) as exe:
                for _ in range(6):
                    sleepers.append(await exe.submit(jobs.sleep_echo, 30))
                await exe.submit(jobs.fail, 0.1)
                await asyncio.sleep(30)  # cancelled by the failure, as TaskGroup does
                pytest.fail("the body was not cancelled")
        assert time.monotonic() - t0 < 20
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        assert all(h.cancelled() for h in sleepers)
        st = exe.stats()
        assert (st.submitted, st.failed, st.cancelled) == (7, 1, 6)
        add_up(exe)
        with pytest.raises(RuntimeError, match="after shutdown"):
            await exe.submit(jobs.noop)

    run(main())


def test_suppress_task_errors_keeps_errors_on_handles(run, backend: str) -> None:
    async def main() -> None:
        async with make(backend, suppress_task_errors=True) as exe:
            bad = [await exe.submit(jobs.fail, 0.01, f"e{i}") for i in range(4)]
            good = await exe.submit(jobs.sleep_echo, 0.2, "ok")
            raw = await exe.submit(jobs.raise_unpicklable)
            unsendable = await exe.submit(jobs.return_unpicklable)
        assert good.result() == "ok"
        assert [str(h.exception()) for h in bad] == ["e0", "e1", "e2", "e3"]
        # the shard's traceback comes along as the cause
        assert "in fail" in str(bad[0].exception().__cause__)  # type: ignore[union-attr]
        exc = raw.exception()
        assert isinstance(exc, RuntimeError) and "Unpicklable" in str(exc)
        exc = unsendable.exception()
        assert isinstance(exc, TypeError) and "cannot be pickled" in str(exc)
        st = exe.stats()
        assert (st.completed, st.failed) == (1, 6)
        add_up(exe)

    run(main())


def test_handle_cancel_cancels_the_job_in_its_shard(run, backend: str) -> None:
    async def main() -> None:
        async with make(backend, suppress_task_errors=True) as exe:
            h = await exe.submit(jobs.ignore_cancel, 30)
            other = await exe.submit(jobs.sleep_echo, 0.2, "kept")
            await asyncio.sleep(0.2)
            assert h.cancel()
            assert h.cancelled()
        assert other.result() == "kept"
        st = exe.stats()
        assert (st.completed, st.cancelled) == (1, 1)
        add_up(exe)

        # fail-fast: a cancelled job counts as a failure, as in CoroutineExecutor
        with pytest.raises(asyncio.CancelledError):
            async with make(backend, shards=1) as exe:
                h = await exe.submit(jobs.sleep_echo, 30)
                await exe.submit(jobs.sleep_echo, 30)
                await asyncio.sleep(0.1)
                h.cancel()
                await asyncio.sleep(30)
        assert exe.stats().cancelled == 2
        add_up(exe)

    run(main())


def test_timeout_covers_every_job(run, backend: str) -> None:
    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            async with make(backend, timeout=1.5) as exe:
                quick = await exe.submit(jobs.echo, "done")
                slow = [await exe.submit(jobs.sleep_echo, 30) for _ in range(4)]
                await asyncio.sleep(30)
        assert time.monotonic() - t0 < 20
        assert quick.result() == "done"
        assert all(h.cancelled() for h in slow)
        add_up(exe)

    run(main())


def test_job_timeout_is_each_shards(run, backend: str) -> None:
    async def main() -> None:
        async with make(backend, job_timeout=0.5, suppress_task_errors=True) as exe:
            slow = await exe.submit(jobs.sleep_echo, 10)
            fast = await exe.submit(jobs.sleep_echo, 0.01, "fast")
        assert fast.result() == "fast"
        assert isinstance(slow.exception(), TimeoutError)
        with pytest.raises(TimeoutError):
            async with make(backend, job_timeout=0.5) as exe:
                await exe.submit(jobs.sleep_echo, 10)
        add_up(exe)

    run(main())


def test_body_error_cancels_jobs_and_propagates(run, backend: str) -> None:
    async def main() -> None:
        with pytest.raises(ZeroDivisionError):
            async with make(backend) as exe:
                h = await exe.submit(jobs.sleep_echo, 30)
                await asyncio.sleep(0.05)
                1 / 0  # noqa: B018
        assert h.cancelled()
        add_up(exe)

    run(main())


def test_outer_cancellation_cancels_jobs_and_propagates(run, backend: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(None) as deadline:
                async with make(backend) as exe:
                    deadline.reschedule(loop.time() + 0.5)  # shards started: now
                    h = await exe.submit(jobs.sleep_echo, 30)
                    await asyncio.sleep(30)
        assert h.cancelled()
        add_up(exe)

        # cancelled while the shards start: none is left behind
        exe = make(backend)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                async with exe:
                    pytest.fail("entered")
        assert gone(exe.shard_pids, backend)
        with pytest.raises(RuntimeError, match="after shutdown"):
            await exe.submit(jobs.noop)

    run(main())


def test_blocked_submitters_are_served_in_order(run, backend: str) -> None:
    async def main() -> None:
        async with make(backend, shards=1, max_workers=1) as exe:
            assert exe._capacity == 2
            first = [await exe.submit(jobs.sleep_echo, 1.0, i) for i in range(2)]
            order: list[int] = []

            async def producer(i: int) -> None:
                h = await exe.submit(jobs.echo, i)
                order.append(i)
                await h

            tasks = [asyncio.create_task(producer(i)) for i in range(4)]
            await asyncio.sleep(0.05)
            tasks[1].cancel()  # a blocked submitter gives up: nothing is lost
            await asyncio.gather(*tasks, return_exceptions=True)
            assert order == [0, 2, 3]
            assert [await h for h in first] == [0, 1]
        assert exe.stats().completed == 5
        add_up(exe)

    run(main())


def test_back_pressure_bounds_what_is_in_flight(run, backend: str) -> None:
    async def main() -> None:
        async with make(backend, max_workers=3) as exe:
            bound = 2 * exe._capacity  # shards x (max_workers + batch buffer)
            peak = 0
            for i in range(60):
                await exe.submit(jobs.sleep_echo, 0.01, i)
                st = exe.stats()
                peak = max(peak, st.submitted - st.completed)
                assert sum(len(s.jobs) for s in exe._shards) <= bound
            assert peak <= bound
        st = exe.stats()
        assert st.completed == 60
        add_up(exe)

    run(main())


def test_shutdown_without_context_manager(run, backend: str) -> None:
    async def main() -> None:
        exe = make(backend)
        h = await exe.submit(jobs.sleep_echo, 0.05, 1)  # starts the shards
        pids = list(exe.shard_pids)
        await exe.shutdown()
        assert h.result() == 1
        with pytest.raises(RuntimeError, match="after shutdown"):
            await exe.submit(jobs.noop)
        assert gone(pids, backend)

        exe = make(backend)
        h = await exe.submit(jobs.sleep_echo, 30)
        await exe.shutdown(cancel_futures=True)
        assert h.cancelled()
        add_up(exe)

    run(main())


# ---------------------------------------------------------------------- bad input


def test_bad_jobs_are_type_errors_at_submit_before_sending(run, backend: str) -> None:
    async def local_job() -> None:
        pass

    async def main() -> None:
        async with make(backend) as exe:
            with pytest.raises(TypeError, match="lambda"):
                await exe.submit(lambda: jobs.noop())
            with pytest.raises(TypeError, match="inside a function"):
                await exe.submit(local_job)
            with pytest.raises(TypeError, match="not a coroutine function"):
                await exe.submit(jobs.not_async, 1)
            with pytest.raises(TypeError, match=r"not submit\(noop\(x\)\)"):
                await exe.submit(jobs.noop())  # closed: no "never awaited" warning
            with pytest.raises(TypeError, match="cannot be pickled"):
                await exe.submit(jobs.echo, threading.Lock())
            with pytest.raises(TypeError, match="cannot be pickled"):
                await exe.submit(jobs.echo, x=lambda: 1)
            with pytest.raises(TypeError, match=r"importing tests\.sharded_jobs:shadowed"):
                await exe.submit(jobs.shadowed_original)
            with pytest.raises(TypeError, match="needs a coroutine function"):
                await exe.submit(42)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="lambda"):
                exe.map(lambda x: x, [1])
            with pytest.raises(TypeError, match="cannot be pickled"):
                async for _ in exe.map(jobs.echo, [threading.Lock()]):
                    pass
            assert exe.stats().submitted == 0  # nothing was sent
        add_up(exe)

    run(main())


def test_a_job_its_shard_cannot_import_fails_alone(
    run, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with make(backend, suppress_task_errors=True) as exe:
            # on the parent's path only after the shards have started
            (tmp_path / "late_jobs_for_shards.py").write_text("async def job():\n    return 1\n")
            monkeypatch.syspath_prepend(str(tmp_path))
            import late_jobs_for_shards  # type: ignore[import-not-found]

            try:
                bad = [await exe.submit(late_jobs_for_shards.job) for _ in range(3)]
                good = await exe.submit(jobs.echo, 2)
            finally:
                del sys.modules["late_jobs_for_shards"]
        assert good.result() == 2
        for h in bad:
            exc = h.exception()
            assert isinstance(exc, ModuleNotFoundError), exc
            assert any("could not import the job function" in n for n in exc.__notes__)
        add_up(exe)

    run(main())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="shards"):
        ShardedExecutor(0)
    with pytest.raises(TypeError, match="max_workers"):
        ShardedExecutor(2, max_workers=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend"):
        ShardedExecutor(2, backend="thread")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fork"):
        ShardedExecutor(2, start_method="fork")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        ShardedExecutor(2, timeout=0)
    with pytest.raises(ValueError, match="ray"):
        ShardedExecutor(2, ray_address="auto")
    # Not offered across shards yet (the README's option table says why).
    with pytest.raises(TypeError, match="max_workers must be an int"):
        ShardedExecutor(2, max_workers=AdaptiveLimit())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="per_key"):
        ShardedExecutor(2, per_key=PerKey(2))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="needs per_key"):
        ShardedExecutor(2).map(abs, [1], key=str)


def test_ray_backend_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'coroexecutor\[ray\]'"):
        ShardedExecutor(2, backend="ray")


# ---------------------------------------------------------------------- faults


def test_kill_9_fails_exactly_its_jobs_then_the_rest_shut_down(run, backend: str) -> None:
    async def main() -> None:
        handles: list[asyncio.Future[Any]] = []
        with pytest.raises(ShardCrashed) as info:
            async with make(backend) as exe:
                for _ in range(10):
                    handles.append(await exe.submit(jobs.sleep_pid, 30))
                victim = exe.shard_pids[0]
                assert victim is not None
                await asyncio.sleep(0.3)
                os.kill(victim, signal.SIGKILL)
                await asyncio.sleep(30)
        assert info.value.pid == victim and info.value.shard == 0
        crashed = [h for h in handles if not h.cancelled() and h.exception() is not None]
        assert len(crashed) == 5  # placement alternates between the two shards
        assert all(isinstance(h.exception(), ShardCrashed) for h in crashed)
        assert sum(h.cancelled() for h in handles) == 5
        st = exe.stats()
        assert (st.submitted, st.failed, st.cancelled) == (10, 5, 5)
        add_up(exe)
        assert gone(exe.shard_pids, backend)

    run(main())


def test_kill_9_with_suppressed_errors_goes_on_with_the_other_shard(run, backend: str) -> None:
    async def main() -> None:
        async with make(backend, suppress_task_errors=True) as exe:
            handles = [await exe.submit(jobs.sleep_pid, 2.0) for _ in range(10)]
            victim, survivor = exe.shard_pids
            await asyncio.sleep(0.3)
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            await asyncio.wait(handles)
            later = [await exe.submit(jobs.pid) for _ in range(4)]
        crashed = [h for h in handles if isinstance(h.exception(), ShardCrashed)]
        assert len(crashed) == 5
        assert [h.result() for h in handles if h not in crashed] == [survivor] * 5
        assert [h.result() for h in later] == [survivor] * 4
        st = exe.stats()
        assert (st.completed, st.failed) == (9, 5)
        add_up(exe)

    run(main())


def test_keyboard_interrupt_in_the_body_stops_every_shard(backend: str) -> None:
    pids: list[int | None] = []

    async def main() -> None:
        async with make(backend) as exe:
            pids.extend(exe.shard_pids)
            for _ in range(4):
                await exe.submit(jobs.sleep_echo, 30)
            await asyncio.sleep(0.1)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    assert len(pids) == 2
    assert gone(pids, backend)
    if backend == "process":
        me = psutil.Process()
        assert not [p for p in me.children() if p.pid in pids]


@pytest.mark.parametrize("kind", ["kbi", "exit"])
def test_keyboard_interrupt_or_system_exit_in_a_job_propagates(
    run, backend: str, kind: str
) -> None:
    """As in CoroutineExecutor: the other jobs are cancelled and the exception comes out
    of the block unchanged (the shard reports it and goes on; it does not crash)."""
    expected = KeyboardInterrupt if kind == "kbi" else SystemExit
    seen: list[Any] = []

    async def main() -> None:
        exe = make(backend)
        seen.append(exe)
        async with exe:
            for _ in range(4):
                seen.append(await exe.submit(jobs.sleep_echo, 30))
            await exe.submit(jobs.raise_base, kind)
            await asyncio.sleep(30)

    with pytest.raises(expected):
        run(main())
    exe, *others = seen
    assert all(h.cancelled() for h in others)
    st = exe.stats()
    assert (st.failed, st.cancelled) == (1, 4)
    add_up(exe)


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import asyncio, signal, sys
    from coroexecutor import ShardedExecutor
    from tests import sharded_jobs as jobs

    # A suite started as a background job of a non-interactive shell (`make test &`,
    # nohup) passes SIGINT on ignored, and Ctrl-C would do nothing: as in a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    async def main():
        async with ShardedExecutor(2) as exe:
            for _ in range(8):
                await exe.submit(jobs.sleep_echo, 60)
            print(*exe.shard_pids, flush=True)
            await asyncio.sleep(60)

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


def test_ctrl_c_stops_every_shard_and_leaves_no_orphan(tmp_path: Path) -> None:
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,  # its own process group, as a terminal's job is
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, (line, proc.stderr.read() if proc.stderr else "")
        family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "KeyboardInterrupt" in err
    assert "ShardCrashed" not in err
    assert gone(pids, "process")
    assert gone(family, "process", timeout=5.0)


PARENT_KILLED_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from coroexecutor import ShardedExecutor
    from tests import sharded_jobs as jobs

    async def main():
        async with ShardedExecutor(2) as exe:
            await exe.submit(jobs.block_loop, 60)  # shard 0's loop cannot see the EOF
            await exe.submit(jobs.sleep_echo, 60)
            await asyncio.sleep(0.3)
            print(*exe.shard_pids, flush=True)
            await asyncio.sleep(60)

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


def test_shards_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = tmp_path / "parent_killed.py"
    script.write_text(PARENT_KILLED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        proc.kill()  # the parent only: no cleanup code of its runs
        proc.wait(timeout=10)
        assert gone(pids, "ray", timeout=10.0)  # EOF; the blocked one by its watch thread
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop", "eager"])
def test_on_every_loop(run, loop_kind: str) -> None:
    if loop_kind == "eager" and sys.version_info < (3, 12):
        pytest.skip("asyncio.eager_task_factory needs Python 3.12+")

    async def main() -> None:
        async with ShardedExecutor(2, suppress_task_errors=True) as exe:
            h = await exe.submit(jobs.sleep_echo, 0.01, "x")
            assert [r async for r in exe.map(jobs.add, range(5), range(5))] == [0, 2, 4, 6, 8]
            assert sorted([r async for r in exe.map_unordered(jobs.echo, range(5))]) == [
                0,
                1,
                2,
                3,
                4,
            ]
            bad = await exe.submit(jobs.fail_now)
            await asyncio.wait([bad])
            os.kill(exe.shard_pids[1] or 0, signal.SIGKILL)
            await asyncio.sleep(0.2)
            crashed = await exe.submit(jobs.sleep_echo, 10)  # placed before the loss is seen?
            await exe.shutdown(wait=False)
        assert h.result() == "x" and isinstance(bad.exception(), ValueError)
        assert crashed.cancelled() or isinstance(crashed.exception(), ShardCrashed)
        add_up(exe)
        with pytest.raises(ValueError, match="boom"):
            async with ShardedExecutor(1) as exe:
                await exe.submit(jobs.fail, 0.05)
                await asyncio.sleep(10)
        add_up(exe)

    run(main())


def test_a_few_thousand_jobs_go_through_two_shards(run) -> None:
    """Not a benchmark (bench/sharded.py is): a few thousand no-op jobs go through."""

    async def main() -> None:
        async with ShardedExecutor(2, max_workers=100) as exe:
            for _ in range(5000):
                await exe.submit(jobs.noop)
        assert exe.stats().completed == 5000
        async with CoroutineExecutor() as single:
            await single.submit(jobs.noop)

    run(main())


def test_import_coroexecutor_loads_no_transport() -> None:
    """The process transport (and multiprocessing) load when shards start, Ray only for
    backend="ray": a user of CoroutineExecutor alone pays for neither."""
    code = (
        "import sys, coroexecutor\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('ray', 'multiprocessing') or m.startswith('coroexecutor.sharded._'))\n"
        "print(' '.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert out == ["coroexecutor.sharded._executor", "coroexecutor.sharded._protocol"], out


NO_MAIN_GUARD_SCRIPT = textwrap.dedent(
    """
    import asyncio
    from coroexecutor import ShardedExecutor
    from tests import sharded_jobs as jobs

    async def main():
        async with ShardedExecutor(2, max_workers=4) as exe:
            await exe.submit(jobs.sleep_echo, 0)

    asyncio.run(main())   # no `if __name__ == "__main__":`
    """
)


def test_script_without_main_guard_is_told_in_one_line_what_to_add(tmp_path: Path) -> None:
    script = tmp_path / "no_guard.py"
    script.write_text(NO_MAIN_GUARD_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: coroexecutor: this script starts a ShardedExecutor")
    assert last.endswith('under if __name__ == "__main__":')
    # not multiprocessing's page of tracebacks from each shard
    assert "An attempt has been made to start a new process" not in proc.stderr
    assert len(proc.stderr.splitlines()) < 40, proc.stderr


def test_queued_submit_nowait_jobs_fail_when_every_shard_has_died(run) -> None:
    async def main() -> None:
        async with make("process", shards=1, max_workers=1, suppress_task_errors=True) as exe:
            handles = [exe.submit_nowait(jobs.sleep_pid, 30) for _ in range(6)]
            assert exe.stats().pending >= 4  # 2 in the shard (one runs), the rest queued
            await asyncio.sleep(0.3)
            victim = exe.shard_pids[0]
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            await asyncio.wait(handles)
        assert all(isinstance(h.exception(), ShardCrashed) for h in handles)
        st = exe.stats()
        assert (st.submitted, st.failed, st.pending, st.running) == (6, 6, 0, 0)
        add_up(exe)

    run(main())


def test_submit_nowait_before_entry_starts_the_shards(run) -> None:
    async def main() -> None:
        exe = make("process", shards=2)
        h = exe.submit_nowait(jobs.echo, "early")
        assert await h == "early"
        await exe.shutdown()

    run(main())
