"""Performance regression guard (``make bench-check``): our cost per job, side by side.

    python -m bench.check                        # measure, compare, exit 1 if a ratio rose
    python -m bench.check --n 100000 --repeat 9  # smaller runs, more repeats
    python -m bench.check --update               # rewrite bench/thresholds.json (see README)
    python -m bench.check --inject-slowdown-us 2.5  # proof that it fails: +2.5 µs per job

Everything runs in this one process, on each loop (asyncio, uvloop): twelve measurements
per loop (see ``KINDS``), repeated and interleaved (repeat 1 of every kind on every loop,
then repeat 2, ...; the order rotates from repeat to repeat), so a noisy stretch of time
hits all of them.  Each repeat gives seven ratios (see ``RATIOS``): ours over the loop's
own cost of the same work (no-op and yield-once jobs), and ours over the hand-written
``Semaphore`` + ``TaskGroup`` pattern (yield-once jobs, sleep(10 ms) at W=10,000, and
jobs all parked at once: time and bytes per job), each from the same repeat on the same
loop.  The median over repeats is compared with ``bench/thresholds.json``.  A ratio over
its threshold is measured again (its loop only) and fails only if the second
measurement is over it too.

Absolute µs/job are printed for information only: on the shared 2-core machine they
move by ±30 % from minute to minute, while ratios measured side by side stay put.

Only the standard library is imported at top level (uvloop and coroexecutor lazily), so
``import bench.check`` is cheap and works in the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SRC = ROOT / "src"
THRESHOLDS = BENCH / "thresholds.json"

LOOPS = ("asyncio", "uvloop")
WORKERS = 1000  # max_workers of the executor, and the number of bare sleep(0) coroutines
SLEEP10MS_WORKERS = 10_000  # W of the sleep(10 ms) measurements
DEFAULT_N = 200_000  # jobs per no-op measurement; the default check takes ~2 min on 2 cores
DEFAULT_REPEAT = 7
UPDATE_REPEAT = 15  # --update keeps what it measures, so it measures longer
# Noise, and the shift of the ratios from one CPU to another (about 20 %: bench/README.md).
DEFAULT_MARGIN = 1.8
# The floor is ~15x cheaper per job than the rest, so it runs this many times n jobs: a
# measurement of a few ms would be at the mercy of one scheduler tick.
FLOOR_SCALE = 5
# The other workloads cost 3 to 200 times more per job than a no-op, so they run fewer
# jobs (see jobs_of), sized so that each measurement takes roughly as long as a no-op one.
# A ratio below this fraction of its threshold is reported as "improved": time to tighten
# the thresholds with --update (at margin 1.8 the measured ratio sits at 0.56).
IMPROVED = 0.4

# What is measured, per loop and repeat (see `workload`): seconds, except the two
# "-bytes" kinds, which are bytes (traced by tracemalloc while every job is parked).
# "tg-" kinds are the hand-written asyncio.Semaphore + asyncio.TaskGroup pattern.
KINDS = (
    "floor",
    "submit",
    "map",
    "sleep0",
    "bare-sleep0",
    "tg-sleep0",
    "sleep10ms",
    "tg-sleep10ms",
    "parked",
    "tg-parked",
    "parked-bytes",
    "tg-parked-bytes",
)
MEMORY_KINDS = ("parked-bytes", "tg-parked-bytes")
# ratio name -> (numerator, denominator): ours over the same work done by the loop alone
# (the floors) or by Semaphore + TaskGroup, measured side by side.
RATIOS: dict[str, tuple[str, str]] = {
    "submit/floor": ("submit", "floor"),
    "map/floor": ("map", "floor"),
    "sleep0/bare-sleep0": ("sleep0", "bare-sleep0"),
    "sleep0/taskgroup": ("sleep0", "tg-sleep0"),
    "sleep10ms-w10000/taskgroup": ("sleep10ms", "tg-sleep10ms"),
    "parked/taskgroup": ("parked", "tg-parked"),
    "parked-bytes/taskgroup": ("parked-bytes", "tg-parked-bytes"),
}

# loop -> ratio name -> value (a measured ratio, or a threshold)
Ratios = dict[str, dict[str, float]]


# --------------------------------------------------------------------------- the verdict
# Pure functions: no timing in here, so bench/test_check.py can test them with fake data.


@dataclass(frozen=True)
class Verdict:
    loop: str
    ratio: str
    value: float
    threshold: float | None  # None: the thresholds file has none for this (not judged)

    @property
    def ok(self) -> bool:
        return self.threshold is None or self.value <= self.threshold


def judge(measured: Mapping[str, Mapping[str, float]], thresholds: Ratios) -> list[Verdict]:
    """One verdict per measured ratio, in a stable order (loop, then ratio)."""
    out = []
    for loop in sorted(measured, key=_loop_order):
        limits = thresholds.get(loop, {})
        for name in sorted(measured[loop], key=_ratio_order):
            out.append(Verdict(loop, name, measured[loop][name], limits.get(name)))
    return out


def failed(verdicts: Sequence[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if not v.ok]


def combine(first: Ratios, second: Ratios) -> Ratios:
    """Merge a re-measurement: a ratio counts as risen only if both measurements say so.

    Loops and ratios only in ``first`` (not re-measured) keep their value.
    """
    out = {loop: dict(values) for loop, values in first.items()}
    for loop, values in second.items():
        for name, value in values.items():
            old = out.setdefault(loop, {}).get(name)
            out[loop][name] = value if old is None else min(old, value)
    return out


def run_check(
    measure: Callable[[tuple[str, ...]], Ratios],
    thresholds: Ratios,
    loops: tuple[str, ...],
    *,
    retry: bool = True,
    log: Callable[[str], None] = lambda _msg: None,
) -> tuple[int, list[Verdict]]:
    """Measure, judge, re-measure the loops that failed once, judge again.

    Returns (exit status, final verdicts): 1 if some ratio is over its threshold in
    both measurements, else 0.
    """
    ratios = measure(loops)
    verdicts = judge(ratios, thresholds)
    bad = failed(verdicts)
    if bad and retry:
        again = tuple(loop for loop in loops if any(v.loop == loop for v in bad))
        names = ", ".join(f"{v.loop} {v.ratio}" for v in bad)
        log(f"over threshold: {names}; measuring {', '.join(again)} again before failing")
        ratios = combine(ratios, measure(again))
        verdicts = judge(ratios, thresholds)
        bad = failed(verdicts)
    return (1 if bad else 0), verdicts


def failure_message(bad: Sequence[Verdict], retried: bool = True) -> str:
    lines = [f"bench-check FAILED: {len(bad)} ratio(s) rose above the threshold"]
    for v in bad:
        assert v.threshold is not None
        lines.append(
            f"  {v.loop} {v.ratio} = {v.value:.3f} > threshold {v.threshold:.3f} "
            f"({v.value / v.threshold:.2f}x the threshold)"
        )
    lines.append(
        f"  ({'each was over it in two measurements; ' if retried else ''}if the slowdown "
        "is intended, rerun `python -m bench.check --update` and commit bench/thresholds.json)"
    )
    return "\n".join(lines)


def make_thresholds(measured: Ratios, margin: float) -> Ratios:
    """Thresholds from a measurement: each median ratio times the safety margin."""
    if margin <= 1:
        raise ValueError(f"margin must be > 1, got {margin}")
    return {
        loop: {name: round(value * margin, 2) for name, value in values.items()}
        for loop, values in measured.items()
    }


def load_thresholds(path: Path) -> Ratios:
    """Read ``thresholds`` from the file; raise ValueError if it is malformed."""
    data = json.loads(path.read_text())
    table = data.get("thresholds") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: no 'thresholds' object")
    out: Ratios = {}
    for loop, values in table.items():
        if not isinstance(values, dict):
            raise ValueError(f"{path}: thresholds.{loop} is not an object")
        out[loop] = {}
        for name, value in values.items():
            if name not in RATIOS:
                raise ValueError(f"{path}: unknown ratio {name!r} (known: {', '.join(RATIOS)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{path}: thresholds.{loop}.{name} must be a positive number")
            out[loop][name] = float(value)
    return out


def _loop_order(loop: str) -> tuple[int, str]:
    return (LOOPS.index(loop) if loop in LOOPS else len(LOOPS), loop)


def _ratio_order(name: str) -> tuple[int, str]:
    names = list(RATIOS)
    return (names.index(name) if name in names else len(names), name)


# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    """Totals per (loop, kind), one value per repeat, and what was asked for.

    A total is the seconds the kind's ``jobs_of`` jobs took, or the bytes they held
    while parked for the ``MEMORY_KINDS``.
    """

    loops: tuple[str, ...]
    n: int
    repeat: int
    slowdown_us: float
    totals: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    wall_s: float = 0.0

    def per_job(self, loop: str, kind: str) -> list[float]:
        """Seconds (or bytes) per job, one value per repeat."""
        jobs = jobs_of(kind, self.n)
        return [s / jobs for s in self.totals[loop][kind]]

    def us_per_job(self, loop: str, kind: str) -> float:
        """µs per job (bytes per job for the memory kinds), median over the repeats."""
        scale = 1 if kind in MEMORY_KINDS else 1e6
        return statistics.median(self.per_job(loop, kind)) * scale

    def ratio_samples(self, loop: str, name: str) -> list[float]:
        """The ratio in each repeat: both sides measured in the same repeat, same loop."""
        num, den = RATIOS[name]
        return [
            a / b for a, b in zip(self.per_job(loop, num), self.per_job(loop, den), strict=True)
        ]

    def ratios(self) -> Ratios:
        return {
            loop: {name: statistics.median(self.ratio_samples(loop, name)) for name in RATIOS}
            for loop in self.loops
        }


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop == "asyncio":
        return asyncio.new_event_loop
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    raise ValueError(f"unknown loop {loop!r}")


def available_loops(wanted: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """The loops that can run here, and a note for each one that cannot."""
    loops, notes = [], []
    for loop in wanted:
        try:
            loop_factory(loop)
        except ImportError as exc:
            notes.append(f"{loop} skipped: {exc}")
            continue
        loops.append(loop)
    return tuple(loops), notes


def _spin(ns: int) -> None:
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def jobs_of(kind: str, n: int) -> int:
    """How many jobs a measurement of ``kind`` runs, for ``--n`` = n.

    The floor runs more (it is cheap); the yield-once kinds n/2; sleep(10 ms) whole rounds
    of W=10,000 (about n/5, at least one round); parked holds n/10 jobs at once, n/40
    under tracemalloc.
    """
    if kind == "floor":
        return n * FLOOR_SCALE
    if kind in ("sleep10ms", "tg-sleep10ms"):
        return SLEEP10MS_WORKERS * max(1, round(n / 5 / SLEEP10MS_WORKERS))
    if kind in ("sleep0", "bare-sleep0", "tg-sleep0"):
        return max(WORKERS, n // 2)
    if kind in ("parked", "tg-parked"):
        return max(WORKERS, n // 10)
    if kind in MEMORY_KINDS:
        return max(WORKERS, n // 40)
    return n


Measure = Callable[[], Coroutine[Any, Any, float]]


def workload(kind: str, n: int, slowdown_ns: int = 0) -> Measure:
    """The measurement of ``kind``: a coroutine function returning its total.

    It runs ``jobs_of(kind, n)`` jobs (or bare rounds) and returns the seconds they took,
    or, for the memory kinds, the bytes traced while they were all parked.
    ``slowdown_ns`` > 0 busy-waits that long in every job of *ours* (submit, map, sleep0,
    sleep10ms, parked), never in the floors or Semaphore + TaskGroup's: a stand-in for an
    executor that got slower.  It cannot raise the memory ratio.
    """
    from coroexecutor import CoroutineExecutor

    jobs = jobs_of(kind, n)
    sleep = asyncio.sleep

    def ours(
        job: Callable[[], Coroutine[Any, Any, None]],
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        if not slowdown_ns:
            return job

        async def slowed() -> None:
            _spin(slowdown_ns)
            await job()

        return slowed

    async def noop() -> None:
        pass

    if slowdown_ns:

        async def noop1(_i: int) -> None:
            _spin(slowdown_ns)

    else:

        async def noop1(_i: int) -> None:
            pass

    async def sleep0() -> None:
        await sleep(0)

    async def sleep10ms() -> None:
        await sleep(0.01)

    async def with_executor(job: Callable[[], Coroutine[Any, Any, None]], w: int) -> None:
        async with CoroutineExecutor(max_workers=w) as exe:
            for _i in range(jobs):
                await exe.submit(job)

    async def with_taskgroup(job: Callable[[], Coroutine[Any, Any, None]], w: int) -> None:
        # The hand-written pattern, as bench/contenders.py's semaphore-taskgroup.
        sem = asyncio.Semaphore(w)
        release = sem.release

        def on_done(_task: asyncio.Task[None]) -> None:
            release()

        async with asyncio.TaskGroup() as tg:
            for _i in range(jobs):
                await sem.acquire()
                tg.create_task(job()).add_done_callback(on_done)

    async def floor() -> None:
        for _i in range(jobs):
            await noop()

    async def map_() -> None:
        async with CoroutineExecutor(max_workers=WORKERS) as exe:
            async for _r in exe.map(noop1, range(jobs)):
                pass

    async def bare(rounds: int) -> None:
        for _i in range(rounds):
            await sleep(0)

    async def bare_sleep0() -> None:
        w = min(WORKERS, jobs)
        q, r = divmod(jobs, w)
        await asyncio.gather(*(bare(q + (i < r)) for i in range(w)))

    def parked(
        run: Callable[[Callable[[], Coroutine[Any, Any, None]], int], Coroutine[Any, Any, None]],
        slowed: bool,
        on_all_parked: Callable[[], None] = lambda: None,
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        """All ``jobs`` in flight at once (W = jobs), each waiting on one Event; the last
        one to park calls ``on_all_parked`` and releases them all."""

        async def go() -> None:
            release = asyncio.Event()
            count = 0

            async def job() -> None:
                nonlocal count
                count += 1
                if count == jobs:
                    on_all_parked()
                    release.set()
                await release.wait()

            await run(ours(job) if slowed else job, jobs)

        return go

    def timed(fn: Callable[[], Coroutine[Any, Any, None]]) -> Measure:
        async def measure() -> float:
            t0 = time.perf_counter()
            await fn()
            return time.perf_counter() - t0

        return measure

    def traced(
        run: Callable[[Callable[[], Coroutine[Any, Any, None]], int], Coroutine[Any, Any, None]],
    ) -> Measure:
        # Bytes allocated through Python's allocators and still held when every job is
        # parked: exact and repeatable, unlike RSS in a process that has run other kinds.
        async def measure() -> float:
            held: list[int] = []
            gc.collect()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                fn = parked(run, False, lambda: held.append(tracemalloc.get_traced_memory()[0]))
                await fn()
            finally:
                tracemalloc.stop()
            return float(held[0] - base)

        return measure

    kinds: dict[str, Measure] = {
        "floor": timed(floor),
        "submit": timed(lambda: with_executor(ours(noop), WORKERS)),
        "map": timed(map_),
        "sleep0": timed(lambda: with_executor(ours(sleep0), WORKERS)),
        "bare-sleep0": timed(bare_sleep0),
        "tg-sleep0": timed(lambda: with_taskgroup(sleep0, WORKERS)),
        "sleep10ms": timed(lambda: with_executor(ours(sleep10ms), SLEEP10MS_WORKERS)),
        "tg-sleep10ms": timed(lambda: with_taskgroup(sleep10ms, SLEEP10MS_WORKERS)),
        "parked": timed(parked(with_executor, True)),
        "tg-parked": timed(parked(with_taskgroup, False)),
        "parked-bytes": traced(with_executor),
        "tg-parked-bytes": traced(with_taskgroup),
    }
    return kinds[kind]


def measure(
    loops: tuple[str, ...],
    n: int,
    repeat: int,
    slowdown_us: float = 0.0,
    progress: Callable[[str], None] = lambda _msg: None,
) -> Measurement:
    """Measure every kind on every loop, ``repeat`` times, interleaved."""
    m = Measurement(loops, n, repeat, slowdown_us)
    m.totals = {loop: {kind: [] for kind in KINDS} for loop in loops}
    slowdown_ns = round(slowdown_us * 1000)
    started = time.perf_counter()
    for r in range(repeat):
        for loop in loops:
            # Rotate the order so no kind always runs right after another one.
            order = KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)]
            with asyncio.Runner(loop_factory=loop_factory(loop), debug=False) as runner:
                for kind in order:
                    fn = workload(kind, n, slowdown_ns)
                    gc.collect()
                    m.totals[loop][kind].append(runner.run(fn()))
        done = time.perf_counter() - started
        eta = done / (r + 1) * (repeat - r - 1)
        progress(f"repeat {r + 1}/{repeat} of {', '.join(loops)}: {done:.0f} s, ~{eta:.0f} s left")
    m.wall_s = time.perf_counter() - started
    return m


# --------------------------------------------------------------------------- reporting


def table(measurements: Sequence[Measurement], verdicts: Sequence[Verdict]) -> str:
    """The per-ratio table (median, range over repeats, threshold) and µs/job."""
    latest: dict[str, Measurement] = {}
    for m in measurements:
        for loop in m.loops:
            latest[loop] = m
    rows = [
        "| loop | ratio | median | range over repeats | threshold | |",
        "|---|---|---:|---:|---:|---|",
    ]
    for v in verdicts:
        samples = latest[v.loop].ratio_samples(v.loop, v.ratio)
        if v.threshold is None:
            status = "no threshold"
        elif not v.ok:
            status = "ROSE"
        elif v.value < IMPROVED * v.threshold:
            status = "ok, improved: tighten with --update"
        else:
            status = "ok"
        limit = "—" if v.threshold is None else f"{v.threshold:.2f}"
        rows.append(
            f"| {v.loop} | {v.ratio} | {v.value:.3f} | {min(samples):.3f} to {max(samples):.3f} "
            f"| {limit} | {status} |"
        )
    loops = list(latest)
    rows += [
        "",
        "Per job, median (for information; absolute times are noisy here; "
        "bytes for the -bytes kinds):",
        "",
        "| kind | jobs | " + " | ".join(loops) + " |",
        "|---|---:|" + "---:|" * len(loops),
    ]
    for kind in KINDS:
        unit = "B" if kind in MEMORY_KINDS else "µs"
        jobs = jobs_of(kind, next(iter(latest.values())).n)
        cells = []
        for loop in loops:
            value = latest[loop].us_per_job(loop, kind)
            cells.append(f"{value:,.0f} {unit}" if kind in MEMORY_KINDS else f"{value:.3f} {unit}")
        rows.append(f"| {kind} | {jobs:,} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def thresholds_document(m: Measurement, margin: float) -> dict[str, Any]:
    measured = m.ratios()
    spread = {
        loop: {
            name: f"{min(s):.2f} to {max(s):.2f}"
            for name in RATIOS
            for s in [m.ratio_samples(loop, name)]
        }
        for loop in m.loops
    }
    return {
        "comment": (
            "Written by `python -m bench.check --update`. Each threshold is the median "
            f"ratio over {m.repeat} interleaved repeats of {m.n:,} jobs measured on this "
            f"machine ('measured', range over repeats in 'range') times a safety margin of "
            f"{margin}: wide enough that a noisy machine does not fail the check, narrow "
            "enough that a 2x regression of our per-job cost (relative to the floor or to "
            "Semaphore + TaskGroup) does. Ratios, not times: both sides are measured side by "
            "side in one process."
        ),
        "margin": margin,
        "thresholds": make_thresholds(measured, margin),
        "measured": {lp: {k: round(v, 3) for k, v in r.items()} for lp, r in measured.items()},
        "range": spread,
        "measured_with": {
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d"),
            "n": m.n,
            "repeat": m.repeat,
            "max_workers": WORKERS,
            "jobs": {kind: jobs_of(kind, m.n) for kind in KINDS},
            "python": platform.python_version(),
            "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
            "git_commit": _git("rev-parse", "--short", "HEAD"),
            "git_src_dirty": bool(_git("status", "--porcelain", "--", "src")),
        },
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.check",
        description="Fail (exit 1) if our cost per job rose relative to the event loop's own.",
    )
    p.add_argument(
        "--n",
        type=int,
        default=DEFAULT_N,
        help=f"no-op jobs per measurement ({DEFAULT_N:,}); the other kinds scale with it",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help=f"interleaved repeats, median taken ({DEFAULT_REPEAT}; {UPDATE_REPEAT} with --update)",
    )
    p.add_argument("--loops", default=",".join(LOOPS), help="comma-separated (asyncio,uvloop)")
    p.add_argument("--thresholds", type=Path, default=THRESHOLDS, help="(bench/thresholds.json)")
    p.add_argument(
        "--update",
        action="store_true",
        help="measure and rewrite the thresholds file (median ratio x --margin) instead of "
        "checking",
    )
    p.add_argument(
        "--margin", type=float, default=DEFAULT_MARGIN, help=f"with --update ({DEFAULT_MARGIN})"
    )
    p.add_argument("--no-retry", action="store_true", help="fail on the first measurement")
    p.add_argument(
        "--inject-slowdown-us",
        type=float,
        default=0.0,
        metavar="US",
        help="busy-wait US µs in each of our jobs (never in the floors), to see the check fail",
    )
    args = p.parse_args(argv)
    if args.n < WORKERS:
        p.error(f"--n must be at least {WORKERS}")
    if args.repeat is None:
        args.repeat = UPDATE_REPEAT if args.update else DEFAULT_REPEAT
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.update and args.inject_slowdown_us:
        p.error("--update with --inject-slowdown-us would record the slowdown")
    if args.margin <= 1:
        p.error("--margin must be greater than 1")
    args.loops = tuple(s.strip() for s in args.loops.split(",") if s.strip())
    bad = [lp for lp in args.loops if lp not in LOOPS]
    if bad:
        p.error(f"unknown loop(s): {', '.join(bad)}")
    return args


def _import_ours() -> str:
    """Import coroexecutor from this working tree's src/; return its path."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    import coroexecutor

    path = str(Path(coroexecutor.__file__ or "?").resolve())
    if not path.startswith(str(SRC)):
        print(f"warning: measuring {path}, not {SRC}", file=sys.stderr)
    # The thresholds were measured on the compiled engine: say which one this is.
    engine = "compiled engine" if coroexecutor.__compiled__ else "pure-Python engine"
    return f"{path} ({engine})"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(f"bench-check: {msg}", file=sys.stderr, flush=True)

    if sys.flags.dev_mode or os.environ.get("PYTHONASYNCIODEBUG"):
        log("warning: asyncio debug / dev mode is on; the ratios will not match the thresholds")
    loops, notes = available_loops(args.loops)
    for note in notes:
        log(note)
    if not loops:
        log("no event loop to measure")
        return 2
    thresholds: Ratios = {}
    if not args.update:
        try:
            thresholds = load_thresholds(args.thresholds)
        except (OSError, ValueError) as exc:
            log(f"cannot read thresholds: {exc} (create them with --update)")
            return 2
    where = _import_ours()
    started = time.perf_counter()
    slow = f", +{args.inject_slowdown_us:g} µs per job of ours" if args.inject_slowdown_us else ""
    log(f"{where}; n={args.n:,} per measurement, {args.repeat} repeats, W={WORKERS}{slow}")

    measurements: list[Measurement] = []

    def measure_ratios(which: tuple[str, ...]) -> Ratios:
        m = measure(which, args.n, args.repeat, args.inject_slowdown_us, progress=log)
        measurements.append(m)
        return m.ratios()

    if args.update:
        measure_ratios(loops)
        doc = thresholds_document(measurements[0], args.margin)
        args.thresholds.write_text(json.dumps(doc, indent=2) + "\n")
        verdicts = judge(measurements[0].ratios(), doc["thresholds"])
        print(table(measurements, verdicts))
        elapsed = time.perf_counter() - started
        print(f"\nwrote {args.thresholds} (margin {args.margin}) in {elapsed:.0f} s")
        return 0

    status, verdicts = run_check(
        measure_ratios, thresholds, loops, retry=not args.no_retry, log=log
    )
    print(table(measurements, verdicts))
    elapsed = time.perf_counter() - started
    missing = [f"{v.loop} {v.ratio}" for v in verdicts if v.threshold is None]
    if missing:
        print(f"\nnot judged (no threshold in {args.thresholds.name}): {', '.join(missing)}")
    if status:
        print("\n" + failure_message(failed(verdicts), retried=not args.no_retry))
    else:
        print(f"\nbench-check passed: every ratio within its threshold ({elapsed:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
