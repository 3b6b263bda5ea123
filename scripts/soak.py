"""Soak test (issue 4): millions of jobs through one executor, every one accounted for,
memory flat.  For ``make soak``; not part of CI (ten million jobs take a minute or so).

Phase 1, ``suppress_task_errors=True``: ``--jobs`` jobs, of which 1 % fail (half in their
first step, inside submit, half after suspending), 1 % are cancelled through their
handle while they wait, 10 % suspend once and the rest end at once.  The accounting
(submitted, completed, failed, cancelled, in flight) and the RSS are printed every
``--every`` jobs.

Phase 2, fail-fast (the default mode): the same mix; the first failure ends the run, and
the script reports how many jobs completed, failed and were cancelled, and checks that
they add up to the number submitted.

Outcomes are counted from the handles (a done callback, or the state right after submit
for a job that ended inside it); no handle is kept beyond the few waiting to be cancelled.
The script exits non-zero if any count does not add up, if the counts disagree with
``exe.stats()`` or with the mix, or if the RSS grows by more than ``--rss-bound-mb`` after
the first report.

    python scripts/soak.py                      # ten million jobs, max_workers=1000
    python scripts/soak.py --jobs 1000000 --uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections import deque
from typing import Any

import coroexecutor
from coroexecutor import CoroutineExecutor, run

FAIL_AT = 37  # i % 100 == FAIL_AT: the job fails
CANCEL_AT = 73  # i % 100 == CANCEL_AT: the job waits until its handle is cancelled
YIELD_AT = 5  # i % 10 == YIELD_AT: the job suspends once
CANCEL_LAG = 4  # a waiting job is cancelled this many cancel-targets later


class JobFailure(Exception):
    pass


def rss_bytes() -> int:
    """The resident set size now (psutil if installed, else /proc, else peak RSS)."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.Process().memory_info().rss)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak * (1 if sys.platform == "darwin" else 1024))


class Tally:
    """Counts outcomes from handles; used as a done callback."""

    __slots__ = ("cancelled", "completed", "failed")

    def __init__(self) -> None:
        self.completed = 0
        self.failed = 0
        self.cancelled = 0

    def __call__(self, handle: asyncio.Future[Any]) -> None:
        if handle.cancelled():
            self.cancelled += 1
        elif handle.exception() is not None:
            self.failed += 1
        else:
            self.completed += 1

    @property
    def ended(self) -> int:
        return self.completed + self.failed + self.cancelled


async def noop() -> None:
    return None


async def yield_once() -> None:
    await asyncio.sleep(0)


async def fail_now() -> None:
    raise JobFailure("in the first step")


async def fail_later() -> None:
    await asyncio.sleep(0)
    raise JobFailure("after suspending")


async def wait_for_cancel() -> None:
    await asyncio.get_running_loop().create_future()  # only a cancellation ends it


def job_for(i: int) -> Any:
    r = i % 100
    if r == FAIL_AT:
        return fail_now if (i // 100) % 2 == 0 else fail_later
    if r == CANCEL_AT:
        return wait_for_cancel
    if i % 10 == YIELD_AT:
        return yield_once
    return noop


def expected_mix(n: int) -> tuple[int, int, int]:
    """(completed, failed, cancelled) for n jobs of the mix, all run to their end."""
    failed = sum(1 for i in range(FAIL_AT, n, 100))
    cancelled = sum(1 for i in range(CANCEL_AT, n, 100))
    return n - failed - cancelled, failed, cancelled


def line(phase: str, submitted: int, tally: Tally, t0: float, rss: int) -> str:
    elapsed = time.perf_counter() - t0
    in_flight = submitted - tally.ended
    return (
        f"[{phase}] submitted={submitted:>11,} completed={tally.completed:>11,} "
        f"failed={tally.failed:>9,} cancelled={tally.cancelled:>9,} in_flight={in_flight:>5,} "
        f"rss={rss / 2**20:7.1f} MiB  {elapsed:6.1f} s  "
        f"{submitted / max(elapsed, 1e-9) / 1e6:.2f} M jobs/s"
    )


async def settle(tally: Tally, submitted: int) -> None:
    """Let the handles' done callbacks (queued when the jobs ended) run."""
    for _ in range(10):
        if tally.ended == submitted:
            return
        await asyncio.sleep(0)


async def phase_suppress(args: argparse.Namespace, problems: list[str]) -> None:
    n = args.jobs
    every = args.every
    tally = Tally()
    to_cancel: deque[asyncio.Future[Any]] = deque()
    rss_first: int | None = None
    rss_max = 0
    submitted = 0
    t0 = time.perf_counter()
    async with CoroutineExecutor(max_workers=args.max_workers, suppress_task_errors=True) as exe:
        submit = exe.submit
        for i in range(n):
            h = await submit(job_for(i))
            submitted += 1
            if h.done():
                tally(h)
            else:
                h.add_done_callback(tally)
                if i % 100 == CANCEL_AT:
                    to_cancel.append(h)
                    if len(to_cancel) > CANCEL_LAG:
                        to_cancel.popleft().cancel()
            del h
            if submitted % every == 0:
                gc.collect()
                rss = rss_bytes()
                if rss_first is None:
                    rss_first = rss
                rss_max = max(rss_max, rss)
                print(line("suppress", submitted, tally, t0, rss), flush=True)
        while to_cancel:
            to_cancel.popleft().cancel()
    await settle(tally, submitted)
    gc.collect()
    rss = rss_bytes()
    rss_max = max(rss_max, rss)
    print(line("suppress", submitted, tally, t0, rss) + "  (after exit)", flush=True)
    stats = exe.stats()
    print(f"[suppress] stats(): {stats}", flush=True)

    if tally.ended != submitted:
        problems.append(f"suppress: {submitted - tally.ended} jobs never ended")
    exp = expected_mix(n)
    got = (tally.completed, tally.failed, tally.cancelled)
    if got != exp:
        problems.append(f"suppress: (completed, failed, cancelled) = {got}, the mix gives {exp}")
    if (stats.submitted, stats.completed, stats.failed, stats.cancelled) != (submitted, *got):
        problems.append(f"suppress: stats() {stats} disagree with the handles {got}")
    if stats.pending or stats.running:
        problems.append(f"suppress: stats() shows jobs left after exit: {stats}")
    if rss_first is not None:
        growth = rss_max - rss_first
        print(
            f"[suppress] RSS first report {rss_first / 2**20:.1f} MiB, max {rss_max / 2**20:.1f}"
            f" MiB, growth {growth / 2**20:.1f} MiB (bound {args.rss_bound_mb} MiB)",
            flush=True,
        )
        if growth > args.rss_bound_mb * 2**20:
            problems.append(f"suppress: RSS grew by {growth / 2**20:.1f} MiB")


async def phase_fail_fast(args: argparse.Namespace, problems: list[str]) -> None:
    n = args.jobs
    tally = Tally()
    to_cancel: deque[asyncio.Future[Any]] = deque()
    submitted = 0
    raised: BaseException | None = None
    body_stopped_by: str = "-"
    t0 = time.perf_counter()
    try:
        async with CoroutineExecutor(max_workers=args.max_workers) as exe:
            try:
                for i in range(n):
                    h = await exe.submit(job_for(i))
                    submitted += 1
                    if h.done():
                        tally(h)
                    else:
                        h.add_done_callback(tally)
                        if i % 100 == CANCEL_AT:
                            to_cancel.append(h)
                            if len(to_cancel) > CANCEL_LAG:
                                to_cancel.popleft().cancel()
                    del h
                while to_cancel:
                    to_cancel.popleft().cancel()
            except BaseException as e:
                body_stopped_by = type(e).__name__
                raise
    except (JobFailure, asyncio.CancelledError) as e:
        raised = e
    to_cancel.clear()
    await settle(tally, submitted)
    rss = rss_bytes()
    print(line("fail-fast", submitted, tally, t0, rss) + "  (after exit)", flush=True)
    stats = exe.stats()
    print(
        f"[fail-fast] exit raised {raised!r}; the body was stopped by {body_stopped_by}; "
        f"stats(): {stats}",
        flush=True,
    )
    total = tally.completed + tally.failed + tally.cancelled
    print(
        f"[fail-fast] completed {tally.completed} + failed {tally.failed} + cancelled "
        f"{tally.cancelled} = {total} of {submitted} submitted",
        flush=True,
    )
    if total != submitted:
        problems.append(f"fail-fast: {total} ended of {submitted} submitted")
    got = (tally.completed, tally.failed, tally.cancelled)
    if (stats.submitted, stats.completed, stats.failed, stats.cancelled) != (submitted, *got):
        problems.append(f"fail-fast: stats() {stats} disagree with the handles {got}")
    if n > FAIL_AT:
        # The first failure of the mix (job FAIL_AT, before any cancellation) ends it.
        if not isinstance(raised, JobFailure):
            problems.append(f"fail-fast: the exit raised {raised!r}, not the first JobFailure")
        if tally.failed < 1:
            problems.append("fail-fast: no job counted as failed")
        if submitted >= n:
            problems.append("fail-fast: the first failure did not stop the body")
    elif raised is not None:
        problems.append(f"fail-fast: {raised!r} raised though no job of the mix fails")


async def main(args: argparse.Namespace) -> int:
    problems: list[str] = []
    loop = asyncio.get_running_loop()
    print(
        f"soak: {args.jobs:,} jobs, max_workers={args.max_workers}, "
        f"loop={type(loop).__module__}.{type(loop).__name__}, Python {sys.version.split()[0]}, "
        f"{'compiled' if coroexecutor.__compiled__ else 'pure-Python'} engine",
        flush=True,
    )
    await phase_suppress(args, problems)
    await phase_fail_fast(args, problems)
    if problems:
        for p in problems:
            print(f"FAIL: {p}", flush=True)
        return 1
    print("OK: every job accounted for, RSS flat", flush=True)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--jobs", type=int, default=10_000_000)
    ap.add_argument("--max-workers", type=int, default=1000)
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop")
    ap.add_argument(
        "--every",
        type=int,
        default=None,
        help="report every this many jobs (default: a million, or a tenth of --jobs if fewer"
        " than two million)",
    )
    ap.add_argument("--rss-bound-mb", type=float, default=50.0)
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.max_workers < 1:
        ap.error("--jobs and --max-workers must be positive")
    if args.every is None:
        args.every = 1_000_000 if args.jobs >= 2_000_000 else max(args.jobs // 10, 1)
    return args


if __name__ == "__main__":
    ns = parse()
    sys.exit(run(main(ns), uvloop=ns.uvloop))
