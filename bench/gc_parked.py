"""What the cyclic garbage collector does while 100,000 jobs are in flight.

Parks ``--n`` jobs at once (each waits on one shared event), releases them, and waits for
all; with the GC on and then off, for our executor and for Semaphore + TaskGroup (a task
per job), interleaved ``--repeats`` times.  For each it prints the µs per job, the
collections of each generation and the time spent in them (``gc.callbacks``).

With ``--census`` it instead parks ``--n`` jobs once per contender and, while they are all
parked, counts the GC-tracked objects they hold, by type, and the bytes ``tracemalloc``
traces, per job: what an in-flight job costs the collector.

    python -m bench.gc_parked [--n 100000] [--uvloop]
    python -m bench.gc_parked --census [--n 20000] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import coroexecutor
from coroexecutor import CoroutineExecutor


class GcWatch:
    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.pause = 0.0
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.pause += time.perf_counter() - self._t
            self.collections[info["generation"]] += 1


Hook = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    pass


async def ours(n: int, release: asyncio.Event, parked: Hook = _nothing) -> None:
    async def job() -> None:
        await release.wait()

    async with CoroutineExecutor(max_workers=n) as exe:
        for _ in range(n):
            await exe.submit(job)
        await parked()
        release.set()


async def semaphore_taskgroup(n: int, release: asyncio.Event, parked: Hook = _nothing) -> None:
    sem = asyncio.Semaphore(n)

    async def job() -> None:
        try:
            await release.wait()
        finally:
            sem.release()

    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            await sem.acquire()
            tg.create_task(job())
        await parked()
        release.set()


CONTENDERS = {"coroexecutor": ours, "semaphore-taskgroup": semaphore_taskgroup}


def once(name: str, n: int, gc_on: bool, loop_factory: Any) -> tuple[float, GcWatch]:
    watch = GcWatch()
    gc.collect()
    if gc_on:
        gc.enable()
    else:
        gc.disable()
    gc.callbacks.append(watch)

    async def main() -> float:
        t0 = time.perf_counter()
        await CONTENDERS[name](n, asyncio.Event())
        return time.perf_counter() - t0

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            wall = runner.run(main())
    finally:
        gc.callbacks.remove(watch)
        gc.enable()
    return wall, watch


def census(name: str, n: int, loop_factory: Any) -> tuple[collections.Counter[str], float]:
    """GC-tracked objects (by type) and traced bytes that ``n`` parked jobs add, per job."""
    before: collections.Counter[str] = collections.Counter()
    held: collections.Counter[str] = collections.Counter()
    traced = [0, 0]

    def count(into: collections.Counter[str], at: int) -> None:
        gc.collect()
        into.update(type(o).__name__ for o in gc.get_objects())
        traced[at] = tracemalloc.get_traced_memory()[0]

    async def parked() -> None:
        for _ in range(3):  # let every new task take its first step: all are parked now
            await asyncio.sleep(0)
        count(held, 1)

    async def main() -> None:
        count(before, 0)
        await CONTENDERS[name](n, asyncio.Event(), parked)

    tracemalloc.start()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())
    finally:
        tracemalloc.stop()
    held.subtract(before)
    return held, (traced[1] - traced[0]) / n


def print_census(n: int, factory: Any) -> None:
    found = {name: census(name, n, factory) for name in CONTENDERS}
    names = sorted(
        {t for held, _ in found.values() for t, c in held.items() if c >= n // 2},
        key=lambda t: -max(held[t] for held, _ in found.values()),
    )
    print(f"{'GC-tracked objects per job':<28}" + "".join(f"{c:>22}" for c in CONTENDERS))
    for t in names:
        print(f"{t:<28}" + "".join(f"{found[c][0][t] / n:>22.2f}" for c in CONTENDERS))
    total = {c: sum(v for v in found[c][0].values() if v > 0) / n for c in CONTENDERS}
    print(f"{'all':<28}" + "".join(f"{total[c]:>22.2f}" for c in CONTENDERS))
    print(f"{'bytes traced per job':<28}" + "".join(f"{found[c][1]:>22,.0f}" for c in CONTENDERS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--census", action="store_true", help="objects held per parked job")
    args = parser.parse_args(argv)
    factory = None
    if args.uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    engine = "compiled" if coroexecutor.__compiled__ else "pure-Python"
    print(
        f"{args.n:,} jobs parked at once, {'uvloop' if args.uvloop else 'asyncio'}, "
        f"Python {sys.version.split()[0]}, {engine} engine"
        + ("" if args.census else f", medians of {args.repeats}")
    )
    if args.census:
        print_census(args.n, factory)
        return 0
    runs: dict[tuple[str, bool], list[tuple[float, GcWatch]]] = {}
    for _ in range(args.repeats):
        for name in CONTENDERS:
            for gc_on in (True, False):
                runs.setdefault((name, gc_on), []).append(once(name, args.n, gc_on, factory))
    print(f"{'contender':<22}{'GC':<5}{'µs/job':>8}{'gen0':>7}{'gen1':>6}{'gen2':>6}{'GC ms':>8}")
    for (name, gc_on), results in runs.items():
        us = statistics.median(w for w, _ in results) / args.n * 1e6
        mid = sorted(results, key=lambda r: r[0])[len(results) // 2][1]
        g0, g1, g2 = mid.collections
        print(
            f"{name:<22}{'on' if gc_on else 'off':<5}{us:>8.2f}{g0:>7}{g1:>6}{g2:>6}"
            f"{mid.pause * 1e3:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
