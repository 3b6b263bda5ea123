"""What the cyclic garbage collector does while 100,000 jobs are in flight.

Parks ``--n`` jobs at once (each waits on one shared event), releases them, and waits for
all; with the GC on and then off, for our executor and for Semaphore + TaskGroup (a task
per job), interleaved ``--repeats`` times.  For each it prints the µs per job, the
collections of each generation and the time spent in them (``gc.callbacks``).

    python -m bench.gc_parked [--n 100000] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
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


async def ours(n: int, release: asyncio.Event) -> None:
    async def job() -> None:
        await release.wait()

    async with CoroutineExecutor(max_workers=n) as exe:
        for _ in range(n):
            await exe.submit(job)
        release.set()


async def semaphore_taskgroup(n: int, release: asyncio.Event) -> None:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    factory = None
    if args.uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    engine = "compiled" if coroexecutor.__compiled__ else "pure-Python"
    print(
        f"{args.n:,} jobs parked at once, {'uvloop' if args.uvloop else 'asyncio'}, "
        f"Python {sys.version.split()[0]}, {engine} engine, medians of {args.repeats}"
    )
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
