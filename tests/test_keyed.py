"""per_key: a limit per key under the executor's own (PerKey, exe.keyed(key), map(key=)).

Bounds per key and in all, no head-of-line blocking between keys in submit, submit_nowait
and both maps, every job accounted for (also when cancelled, queued, or shut down), key
state dropped when idle, and a GCRA per key.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections import Counter
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coroexecutor import AdaptiveLimit, CoroutineExecutor, ExecutorFull, PerKey


class Tracker:
    """Counts jobs in flight, per key and in all, and the peaks."""

    def __init__(self) -> None:
        self.now: Counter[Any] = Counter()
        self.peak: Counter[Any] = Counter()
        self.total = 0
        self.total_peak = 0
        self.ran: list[Any] = []

    async def job(self, key: Any, steps: int = 1, value: Any = None) -> Any:
        self.now[key] += 1
        self.total += 1
        self.peak[key] = max(self.peak[key], self.now[key])
        self.total_peak = max(self.total_peak, self.total)
        try:
            for _ in range(steps):
                await asyncio.sleep(0)
        finally:
            self.now[key] -= 1
            self.total -= 1
        self.ran.append(key)
        return value if value is not None else key


def assert_accounted(exe: CoroutineExecutor, submitted: int) -> None:
    st_ = exe.stats()
    assert st_.submitted == submitted
    assert st_.pending == st_.running == 0
    assert st_.completed + st_.failed + st_.cancelled == submitted
    assert st_.keys == 0


def test_per_key_and_global_limits_hold_in_every_way_of_submitting(run) -> None:
    async def main() -> None:
        t = Tracker()
        keys = ["a", "b", "c", "d"]
        async with CoroutineExecutor(5, per_key=PerKey(2)) as exe:
            handles = [
                exe.keyed(keys[i % 4]).submit_nowait(t.job, keys[i % 4], 3) for i in range(40)
            ]
            for i in range(40):
                handles.append(await exe.keyed(keys[i % 4]).submit(t.job, keys[i % 4], 2))
            got = [r async for r in exe.map(t.job, [keys[i % 4] for i in range(40)], key=str)]
            assert got == [keys[i % 4] for i in range(40)]
            got = [
                r
                async for r in exe.map_unordered(
                    t.job, [keys[i % 4] for i in range(40)], key=lambda k: k
                )
            ]
            assert Counter(got) == Counter(keys[i % 4] for i in range(40))
            assert await (await exe.keyed("a").submit(t.job, "a")) == "a"
        assert all(h.result() in keys for h in handles)
        assert max(t.peak.values()) == 2
        assert t.total_peak == 5
        assert_accounted(exe, 161)

    run(main())


def test_a_saturated_key_does_not_delay_other_keys_in_submit_and_submit_nowait(run) -> None:
    async def main() -> None:
        release = asyncio.Event()
        done: list[int] = []

        async def stuck() -> None:
            await release.wait()

        async def quick(i: int) -> None:
            await asyncio.sleep(0)
            done.append(i)

        async with CoroutineExecutor(10, per_key=PerKey(2)) as exe:
            slow = exe.keyed("slow")
            stuck_handles = [slow.submit_nowait(stuck) for _ in range(50)]  # 48 queued
            assert exe.stats().pending == 48
            waiting = asyncio.create_task(slow.submit(stuck))  # waits behind its key
            for i in range(30):
                await exe.keyed(f"fast{i % 3}").submit(quick, i)
            fast = [exe.keyed(f"fast{i % 3}").submit_nowait(quick, i) for i in range(30, 60)]
            await asyncio.wait_for(asyncio.gather(*fast), 10)
            assert sorted(done) == list(range(60))
            assert not waiting.done()
            release.set()
            await waiting
        assert all(h.done() for h in stuck_handles)
        assert_accounted(exe, 111)

    run(main())


def test_a_saturated_key_does_not_delay_other_keys_in_the_maps(run) -> None:
    async def main() -> None:
        release = asyncio.Event()
        fast_done: list[int] = []
        expected = 90

        async def job(host: str, i: int) -> int:
            if host == "slow":
                await release.wait()
            else:
                await asyncio.sleep(0)
                fast_done.append(i)
                if len(fast_done) == expected:
                    release.set()  # the slow key's jobs go on only once all fast ones ran
            return i

        hosts = ["slow" if i % 10 == 0 else "fast" for i in range(100)]

        # A map runs ahead of its oldest item by max_workers items (map_unordered by
        # twice as many): 200 holds the whole input.
        async with CoroutineExecutor(200, per_key=PerKey(1)) as exe:
            # Ordered: the first result (a slow one) comes last; every fast item ran first.
            got = await asyncio.wait_for(
                _collect(exe.map(job, hosts, range(100), key=lambda h, i: h)), 20
            )
            assert got == list(range(100))
            release.clear()
            fast_done.clear()
            first: list[int] = []
            async with asyncio.timeout(20):
                async for r in exe.map_unordered(job, hosts, range(100), key=lambda h, i: h):
                    first.append(r)
            assert sorted(first[:90]) == [i for i in range(100) if i % 10]
        assert_accounted(exe, 200)

    run(main())


async def _collect(agen: Any) -> list[Any]:
    return [x async for x in agen]


def test_keyed_map_and_map_unordered_of_one_key(run) -> None:
    async def main() -> None:
        t = Tracker()
        async with CoroutineExecutor(10, per_key=PerKey(3)) as exe:
            k = exe.keyed("k")
            assert [r async for r in k.map(t.job, ["k"] * 20, [2] * 20, range(20))] == list(
                range(20)
            )
            got = [r async for r in k.map_unordered(t.job, ["k"] * 20, [2] * 20, range(20))]
            assert sorted(got) == list(range(20))
        assert t.peak["k"] == 3
        assert_accounted(exe, 40)

    run(main())


def test_a_queued_keyed_job_cancelled_before_it_starts_gives_its_place_back(run) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        ran: list[int] = []

        async def job(i: int) -> int:
            await gate.wait()
            ran.append(i)
            return i

        # A cancelled job is a failure in fail-fast mode: suppressed here.
        async with CoroutineExecutor(1, per_key=PerKey(1), suppress_task_errors=True) as exe:
            k = exe.keyed("k")
            a = k.submit_nowait(job, 0)
            queued_by_key = k.submit_nowait(job, 1)
            other = exe.keyed("other").submit_nowait(job, 2)  # has a place; waits for a worker
            queued_by_key.cancel()
            other.cancel()
            await asyncio.sleep(0)
            c = k.submit_nowait(job, 3)
            d = exe.keyed("other").submit_nowait(job, 4)
            gate.set()
            assert await a == 0 and await c == 3 and await d == 4
            assert queued_by_key.cancelled() and other.cancelled()
        assert sorted(ran) == [0, 3, 4]
        st_ = exe.stats()
        assert (st_.completed, st_.cancelled) == (3, 2)
        assert_accounted(exe, 5)

    run(main())


def test_a_cancelled_keyed_submitter_leaves_no_place_taken(run) -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def job() -> None:
            await gate.wait()

        async with CoroutineExecutor(10, per_key=PerKey(1)) as exe:
            first = await exe.keyed("k").submit(job)
            waiter = asyncio.create_task(exe.keyed("k").submit(job))
            await asyncio.sleep(0)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            gate.set()
            await first
            second = await exe.keyed("k").submit(job)
            await second
        assert_accounted(exe, 2)

    run(main())


def test_shutdown_runs_jobs_queued_behind_their_key_and_cancel_futures_cancels_them(run) -> None:
    async def main() -> None:
        t = Tracker()
        exe = CoroutineExecutor(4, per_key=PerKey(1))
        async with exe:
            handles = [exe.keyed("k").submit_nowait(t.job, "k", 3) for _ in range(10)]
            await exe.shutdown()
            assert all(h.result() == "k" for h in handles)
        assert_accounted(exe, 10)

        exe = CoroutineExecutor(4, per_key=PerKey(1))
        async with exe:
            handles = [exe.keyed("k").submit_nowait(t.job, "k", 3) for _ in range(10)]
            await exe.shutdown(cancel_futures=True)
        assert sum(h.cancelled() for h in handles) >= 9
        assert_accounted(exe, 10)

    run(main())


def test_cancel_stops_key_queues_and_waiting_keyed_submitters(run) -> None:
    async def main() -> None:
        async def forever() -> None:
            await asyncio.sleep(3600)

        async with CoroutineExecutor(4, per_key=PerKey(1)) as exe:
            queued = [exe.keyed("k").submit_nowait(forever) for _ in range(5)]
            exe.cancel()
            await exe.keyed("k").submit(forever)  # the body's cancellation lands here
            raise AssertionError("not reached")
        assert all(h.cancelled() for h in queued)
        assert_accounted(exe, 5)

    run(main())


def test_a_keyed_submitter_of_another_task_raises_once_the_executor_closes(run) -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def job() -> None:
            await gate.wait()

        exe = CoroutineExecutor(4, per_key=PerKey(1))
        async with exe:
            await exe.keyed("k").submit(job)
            other = asyncio.create_task(exe.keyed("k").submit(job))
            await asyncio.sleep(0)
            closing = asyncio.create_task(exe.shutdown())
            await asyncio.sleep(0)
            with pytest.raises(RuntimeError, match="after shutdown"):
                await other
            gate.set()
            await closing
        assert_accounted(exe, 1)

    run(main())


def test_keyed_submit_nowait_obeys_max_pending(run) -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def job() -> None:
            await gate.wait()

        async with CoroutineExecutor(4, per_key=PerKey(1), max_pending=2) as exe:
            k = exe.keyed("k")
            handles = [k.submit_nowait(job), k.submit_nowait(job), k.submit_nowait(job)]
            with pytest.raises(ExecutorFull):
                k.submit_nowait(job)
            gate.set()
        assert all(h.done() for h in handles)
        assert_accounted(exe, 3)

    run(main())


def test_keyed_errors_follow_the_executors_rules(run) -> None:
    class Boom(Exception):
        pass

    async def bad() -> None:
        await asyncio.sleep(0)
        raise Boom

    async def main() -> None:
        with pytest.raises(Boom):
            async with CoroutineExecutor(4, per_key=PerKey(1)) as exe:
                await exe.keyed("k").submit(bad)
                await asyncio.sleep(3600)
        assert_accounted(exe, 1)
        async with CoroutineExecutor(4, per_key=PerKey(1)) as exe:
            results = [
                r
                async for r in exe.keyed("k").map(lambda i: bad(), range(5), return_exceptions=True)
            ]
        assert len(results) == 5 and all(isinstance(r, Boom) for r in results)
        with pytest.raises(TypeError, match="not awaitable"):
            async with CoroutineExecutor(4, per_key=PerKey(1)) as exe:
                await exe.keyed("k").submit(lambda: 3)
        assert_accounted(exe, 0)

    run(main())


def test_per_key_rate_allows_burst_starts_then_spaces_them(run) -> None:
    async def main() -> None:
        starts: list[float] = []
        loop = asyncio.get_running_loop()

        async def job() -> None:
            starts.append(loop.time())

        async with CoroutineExecutor(100, per_key=PerKey(10, max_per_second=5, burst=3)) as exe:
            handles = [exe.keyed("k").submit_nowait(job) for _ in range(6)]
            other = [exe.keyed("j").submit_nowait(job) for _ in range(3)]
            await asyncio.gather(*handles, *other)
        first = starts[0]
        # 3 of "k" and 3 of "j" at once (in one step of the loop), then 3 more of "k",
        # 1/5 s apart (0.6 s after the first).
        assert starts[5] - first < 0.05
        assert starts[-1] - first >= 0.4
        assert_accounted(exe, 9)

    run(main())


def test_key_state_is_dropped_when_idle_and_stats_counts_keys_in_flight(run) -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def job() -> None:
            await gate.wait()

        async with CoroutineExecutor(100, per_key=PerKey(2)) as exe:
            for i in range(10):
                await exe.keyed(i).submit(job)
                await exe.keyed(i).submit(job)
            assert exe.stats().keys == 10
            gate.set()
            await asyncio.sleep(0.01)
            assert exe.stats().keys == 0
            assert exe.keyed(3).max_workers == 2
        assert_accounted(exe, 20)

    run(main())


def test_a_million_distinct_keys_keep_memory_flat(run) -> None:
    async def main() -> int:
        async def job() -> None:
            await asyncio.sleep(0)

        proc = psutil.Process(os.getpid())
        async with CoroutineExecutor(1000, per_key=PerKey(1)) as exe:
            for i in range(20_000):  # warm up: the pools and free lists reach their size
                await exe.keyed(("warm", i)).submit(job)
            gc.collect()
            before = proc.memory_info().rss
            for i in range(1_000_000):
                await exe.keyed(i).submit(job)
        gc.collect()
        assert_accounted(exe, 1_020_000)
        return proc.memory_info().rss - before

    growth = run(main(), debug=False)
    assert growth < 10 * 2**20, f"RSS grew {growth / 2**20:.1f} MB over a million keys"


def test_per_key_adaptive_limits_adapt_per_key(run) -> None:
    class Busy(Exception):
        pass

    async def main() -> None:
        in_flight: Counter[str] = Counter()
        capacity = {"small": 3, "big": 30}

        async def call(host: str) -> None:
            if in_flight[host] >= capacity[host]:
                await asyncio.sleep(0.001)
                raise Busy
            in_flight[host] += 1
            try:
                await asyncio.sleep(0.005)
            finally:
                in_flight[host] -= 1

        per_key = PerKey(AdaptiveLimit(1, 100, overload=Busy))
        async with CoroutineExecutor(200, per_key=per_key, suppress_task_errors=True) as exe:
            for _ in range(60):
                for host in ("small", "big"):
                    for _ in range(10):
                        exe.keyed(host).submit_nowait(call, host)
                await asyncio.sleep(0.01)
            small, big = exe.keyed("small").max_workers, exe.keyed("big").max_workers
        assert small <= 6, small
        assert big >= 15, big

    run(main(), debug=False)


def test_bad_per_key_input_names_the_mistake() -> None:
    with pytest.raises(TypeError, match="PerKey max_workers"):
        PerKey("3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="PerKey max_workers"):
        PerKey(0)
    with pytest.raises(ValueError, match="PerKey max_per_second"):
        PerKey(1, max_per_second=-1)
    with pytest.raises(ValueError, match="burst"):
        PerKey(1, burst=3)
    with pytest.raises(TypeError, match="per_key must be a PerKey"):
        CoroutineExecutor(per_key=3)  # type: ignore[arg-type]
    exe = CoroutineExecutor()
    with pytest.raises(ValueError, match="keyed\\(\\) needs per_key"):
        exe.keyed("k")
    with pytest.raises(ValueError, match="needs per_key"):
        exe.map(abs, [1], key=str)
    exe = CoroutineExecutor(per_key=PerKey(2))
    with pytest.raises(TypeError, match="hashable"):
        exe.keyed([1])
    with pytest.raises(TypeError, match="key must be a function"):
        exe.map(abs, [1], key="host")  # type: ignore[arg-type]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    workers=st.integers(1, 8),
    per_key=st.integers(1, 4),
    jobs=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 3), st.sampled_from(["await", "nowait"])),
        max_size=60,
    ),
    cancel_every=st.integers(0, 7),
)
def test_per_key_bounds_and_accounting_hold_for_any_mix(
    workers: int, per_key: int, jobs: list[tuple[int, int, str]], cancel_every: int
) -> None:
    async def main() -> None:
        t = Tracker()
        handles = []
        async with CoroutineExecutor(
            workers, per_key=PerKey(per_key), suppress_task_errors=True
        ) as exe:
            for n, (key, steps, how) in enumerate(jobs):
                k = exe.keyed(key)
                if how == "await":
                    h = await k.submit(t.job, key, steps)
                else:
                    h = k.submit_nowait(t.job, key, steps)
                if cancel_every and n % cancel_every == 0:
                    h.cancel()
                handles.append(h)
                st_ = exe.stats()
                assert st_.running <= workers
        assert all(h.done() for h in handles)
        assert all(v <= per_key for v in t.peak.values())
        assert t.total_peak <= workers
        st_ = exe.stats()
        assert st_.cancelled == sum(h.cancelled() for h in handles)
        assert st_.completed == sum(not h.cancelled() for h in handles)
        assert_accounted(exe, len(jobs))

    asyncio.run(main())
