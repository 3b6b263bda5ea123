"""Leak check: a million jobs of every kind leave nothing behind.

For each kind of job end (completed in its first step, completed after suspending,
failed in its first step, failed after suspending, cancelled through its handle, timed
out by ``job_timeout``), this runs a warm-up round, takes a baseline, runs ``--jobs``
more of that kind through the same executor, and checks that:

- ``sys.getrefcount`` of every object the jobs touch (the job functions, their
  argument, the result they return, the exception class they raise, the executor and
  the loop) is exactly what it was;
- the memory traced by tracemalloc has not grown by more than ``--traced-bound-kb``;
- the resident set size has not grown by more than ``--rss-bound-mb``.

It prints one line per kind and exits 1 if any check fails.  ``make leakcheck`` runs it
on both loops with a million jobs of each kind (a few minutes);
tests/test_leaks.py runs it with fewer jobs on every test run, on both engines.

    python scripts/leakcheck.py --jobs 1000000 [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import coroexecutor
from coroexecutor import CoroutineExecutor


class Boom(Exception):
    pass


ARG = object()  # what every job is given
RESULT = object()  # what every completed job returns


async def returns(arg: object) -> object:
    return RESULT


async def returns_after_yield(arg: object) -> object:
    await asyncio.sleep(0)
    return RESULT


async def raises(arg: object) -> object:
    raise Boom


async def raises_after_yield(arg: object) -> object:
    await asyncio.sleep(0)
    raise Boom


async def waits(arg: object) -> object:
    await asyncio.Event().wait()  # until cancelled (by handle) or timed out
    return RESULT


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def run_kind(
    exe: CoroutineExecutor, kind: str, fn: Callable[[object], Awaitable[object]], n: int
) -> None:
    """n jobs of one kind; every handle is checked, none is kept."""
    if kind == "cancelled by handle":
        batch: list[asyncio.Future[Any]] = []
        for _ in range(n):
            batch.append(await exe.submit(fn, ARG))
            if len(batch) == 500:
                await cancel_all(batch)
        await cancel_all(batch)
        await exe_drained(exe)
        return
    last: asyncio.Future[Any] | None = None
    for _ in range(n):
        last = await exe.submit(fn, ARG)
    assert last is not None
    await asyncio.wait([last])
    await exe_drained(exe)


async def cancel_all(batch: list[asyncio.Future[Any]]) -> None:
    for handle in batch:
        handle.cancel()
    await asyncio.sleep(0)
    batch.clear()


async def exe_drained(exe: CoroutineExecutor) -> None:
    # No public event says "nothing running" short of shutdown(), which ends the executor.
    while exe.stats().running:  # noqa: ASYNC110
        await asyncio.sleep(0.001)


KINDS: list[tuple[str, Callable[[object], Awaitable[object]], float | None]] = [
    ("completed in submit", returns, None),
    ("completed after a yield", returns_after_yield, None),
    ("failed in submit", raises, None),
    ("failed after a yield", raises_after_yield, None),
    ("cancelled by handle", waits, None),
    ("timed out", waits, 1e-6),
]


async def check(jobs: int, traced_bound: int, rss_bound: int) -> list[str]:
    loop = asyncio.get_running_loop()
    failures = []
    for kind, fn, job_timeout in KINDS:
        async with CoroutineExecutor(
            max_workers=1000, suppress_task_errors=True, job_timeout=job_timeout
        ) as exe:
            watched = {
                "fn": fn,
                "arg": ARG,
                "result": RESULT,
                "Boom": Boom,
                "exe": exe,
                "loop": loop,
            }
            # Warm-up: the free list, caches, and the allocator: on 3.13 the RSS takes a
            # one-time step of ~10 MiB in the first ten thousand cancellations.
            await run_kind(exe, kind, fn, min(max(jobs, 2000), 100_000))
            gc.collect()
            refs = {name: sys.getrefcount(obj) for name, obj in watched.items()}
            traced = tracemalloc.get_traced_memory()[0]
            rss = rss_bytes()
            before = exe.stats()
            await run_kind(exe, kind, fn, jobs)
            gc.collect()
            after = exe.stats()
            grown = {
                name: sys.getrefcount(obj) - refs[name]
                for name, obj in watched.items()
                if sys.getrefcount(obj) != refs[name]
            }
            traced_growth = tracemalloc.get_traced_memory()[0] - traced
            rss_growth = rss_bytes() - rss
        done = sum(
            getattr(after, f) - getattr(before, f) for f in ("completed", "failed", "cancelled")
        )
        ok = not grown and traced_growth <= traced_bound and rss_growth <= rss_bound
        ok = ok and done == jobs
        print(
            f"{kind:<24} {jobs:>9,} jobs  ended {done:>9,}  refcount growth {grown or 'none'}  "
            f"traced {traced_growth / 1024:+8.1f} KiB  RSS {rss_growth / 2**20:+6.1f} MiB  "
            f"{'ok' if ok else 'LEAK'}",
            flush=True,
        )
        if not ok:
            failures.append(kind)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs of each kind")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--traced-bound-kb", type=int, default=256)
    parser.add_argument("--rss-bound-mb", type=int, default=8)
    args = parser.parse_args(argv)
    engine = "compiled" if coroexecutor.__compiled__ else "pure-Python"
    loop = "uvloop" if args.uvloop else "asyncio"
    print(f"leakcheck: {engine} engine, {loop}, Python {sys.version.split()[0]}")
    tracemalloc.start()
    main_coro = check(args.jobs, args.traced_bound_kb * 1024, args.rss_bound_mb * 2**20)
    failures = coroexecutor.run(main_coro, uvloop=args.uvloop)
    if failures:
        print(f"leakcheck: FAILED: {', '.join(failures)}")
        return 1
    print("leakcheck: no growth")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
