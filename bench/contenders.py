"""One benchmark run: one contender, one workload, one event loop, one process.

    python bench/contenders.py --contender coroexecutor-submit --workload noop \
        --n 1000000 --loop uvloop [--max-workers 1000]

Prints exactly one JSON line on stdout (diagnostics go to stderr) and exits 0, or
prints a JSON line with ``"ok": false`` and exits 1 when the run failed.

A contender that cannot run here (too old a Python, a loop it does not work with) prints
``"ok": false, "skipped": true`` with the reason and exits 0.

This file must run unchanged in the legacy venv (``bench/.venv-legacy-pyX.Y``, which has
coroexecutor==2022.8.1 under the same package name as ours), so it imports only the
standard library at top level; each contender imports its library lazily.  psutil is
optional (``/proc/self/statm`` is read when it is missing).

Every contender drives the same job functions (see ``Workload``), written the way that
library's documentation shows, without micro-optimisations that only one of them gets:

- ``floor``: no executor at all: the cost of the jobs themselves on this loop.
- ``coroexecutor-submit`` / ``coroexecutor-map``: ours (imported from ``src/`` via
  PYTHONPATH, with the compiled engine that ``pip install -e .`` built there);
  handles from ``submit`` are dropped at once, so memory stays flat.
- ``coroexecutor-submit-pure``: ``submit`` on the pure-Python engine
  (``COROEXECUTOR_NO_EXTENSIONS=1``), what runs where no C compiler was found.
- ``semaphore-taskgroup``: ``asyncio.Semaphore`` + ``asyncio.TaskGroup`` by hand.
- ``semaphore-taskgroup-eager``: the same with ``asyncio.eager_task_factory`` (3.12+).
- ``legacy-2022.8.1`` / ``legacy-2022.8.1-map``: coroexecutor 2022.8.1 from PyPI.
- ``aiolibs-executor``: ``aiolibs_executor.Executor`` (Python 3.13+), in its own venv.
- ``aiojobs``: ``aiojobs.Scheduler(limit=W, pending_limit=W)`` + ``spawn``.
- ``asyncio-pool``: ``AioPool(size=W)`` + ``spawn``.
- ``aiometer``: ``aiometer.run_on_each(fn, range(n), max_at_once=W)``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import platform
import resource
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

WORKLOADS = ("noop", "sleep0", "sleep10ms", "parked")

# Default max_workers per workload (overridable with --max-workers).  For "parked"
# the default is n itself: every job is in flight at once.
DEFAULT_WORKERS = {"noop": 1000, "sleep0": 1000, "sleep10ms": 10_000, "parked": None}
DEFAULT_N = {"noop": 100_000, "sleep0": 100_000, "sleep10ms": 100_000, "parked": 100_000}
SLEEP10MS = 0.01


# --------------------------------------------------------------------------- memory


def _rss_reader() -> Callable[[], int]:
    """Return a function giving the current RSS in bytes."""
    try:
        import psutil

        proc = psutil.Process()
        return lambda: proc.memory_info().rss
    except ImportError:
        page = os.sysconf("SC_PAGE_SIZE")

        def statm() -> int:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * page

        return statm


rss_now = _rss_reader()


def ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakSampler:
    """Samples RSS every ``interval`` seconds on a daemon thread.

    ``ru_maxrss`` is the exact high-water mark but it covers the whole process life
    (and on Linux survives the ``exec`` from the parent), so it is only trusted when it
    rose during the measured window; otherwise the sampled maximum is used.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = rss_now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = rss_now()
            if rss > self.peak:
                self.peak = rss

    def __enter__(self) -> PeakSampler:
        self.maxrss_before = ru_maxrss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_now())
        maxrss_after = ru_maxrss_bytes()
        if maxrss_after > self.maxrss_before:
            self.peak = max(self.peak, maxrss_after)
            self.peak_source = "ru_maxrss"
        else:
            self.peak_source = "sampled"


# --------------------------------------------------------------------------- workloads


class Workload:
    """The jobs every contender runs, plus the executor-free floor for them.

    ``job`` is called with no argument (submit/spawn style APIs) and, as ``job1``, with
    one (map style APIs: map, run_on_each): one function, so that neither pays a
    wrapper coroutine the other does not.  The map-style contenders map over ``items()``,
    n times ``None``: a range's ints above 256 would be an object per job that the
    benchmark makes and every map job holds while it is parked (32 bytes, 35 of the 1,580
    per parked map job), which the submit-style contenders and the floor never pay.
    ``state.done`` counts finished jobs where that is free relative to the job (not for
    "noop", whose job must stay a true no-op).
    """

    def __init__(self, name: str, n: int, max_workers: int, park_timeout: float) -> None:
        self.name = name
        self.n = n
        self.max_workers = max_workers
        self.done = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.parked = 0
        self.rss_parked: int | None = None
        self.park_error: str | None = None
        self.park_timeout = park_timeout
        self.counts = name != "noop"
        getattr(self, f"_make_{name}")()

    def items(self) -> Iterator[None]:
        """What the map-style contenders map over (the class docstring says why)."""
        return itertools.repeat(None, self.n)

    # noop ------------------------------------------------------------------
    def _make_noop(self) -> None:
        async def job(_i: object = None) -> None:
            pass

        async def floor() -> None:
            for _i in range(self.n):
                await job()

        self.job = self.job1 = job
        self.floor = floor

    # sleep0 / sleep10ms ----------------------------------------------------
    def _make_sleeper(self, delay: float) -> None:
        sleep = asyncio.sleep
        wl = self

        # Each job also counts itself in flight, to check that no contender ever runs
        # more than max_workers at once (a few tens of ns against a µs-scale sleep).
        async def job(_i: object = None) -> None:
            wl.in_flight += 1
            if wl.in_flight > wl.max_in_flight:
                wl.max_in_flight = wl.in_flight
            await sleep(delay)
            wl.in_flight -= 1
            wl.done += 1

        async def bare(rounds: int) -> None:
            # The job function awaited in a loop by a coroutine that is never replaced,
            # as for noop: what any runner of `job` pays, with no executor.
            for _i in range(rounds):
                await job()

        async def floor() -> None:
            # max_workers bare coroutines, each doing its share of the n jobs.
            w = min(self.max_workers, self.n)
            q, r = divmod(self.n, w)
            await asyncio.gather(*(bare(q + (i < r)) for i in range(w)))

        self.job = self.job1 = job
        self.floor = floor

    def _make_sleep0(self) -> None:
        self._make_sleeper(0)

    def _make_sleep10ms(self) -> None:
        self._make_sleeper(SLEEP10MS)

    # parked ----------------------------------------------------------------
    def _make_parked(self) -> None:
        wl = self
        self.all_parked = asyncio.Event()
        self.release = asyncio.Event()

        async def job(_i: object = None) -> None:
            wl.parked += 1
            if wl.parked == wl.n:
                wl.all_parked.set()
            await wl.release.wait()
            wl.done += 1

        async def floor() -> None:
            # One bare Task per job: what any task-based executor must pay at least.
            create_task = asyncio.get_running_loop().create_task
            tasks = [create_task(job()) for _i in range(self.n)]
            for t in tasks:
                await t

        self.job = self.job1 = job
        self.floor = floor

    async def monitor(self) -> None:
        """For "parked": once every job is parked, measure RSS, then release them."""
        try:
            await asyncio.wait_for(self.all_parked.wait(), self.park_timeout)
            self.rss_parked = rss_now()
        except TimeoutError:
            self.park_error = (
                f"only {self.parked} of {self.n} jobs were in flight at once "
                f"after {self.park_timeout:.0f} s (max_workers={self.max_workers})"
            )
        finally:
            self.release.set()


# --------------------------------------------------------------------------- contenders

Driver = Callable[[Workload], Awaitable[None]]
CONTENDERS: dict[str, Callable[[], tuple[Driver, dict[str, Any]]]] = {}
# The oldest Python a contender runs on (bench.run does not even start the others).
MIN_PYTHON = {"semaphore-taskgroup-eager": (3, 12), "aiolibs-executor": (3, 13)}


class Unsupported(Exception):
    """This contender cannot run on this Python or loop: reported as skipped, not failed."""


def needs_python(name: str) -> str | None:
    """Why ``name`` cannot run on this Python, or None."""
    need = MIN_PYTHON.get(name)
    if need and sys.version_info[:2] < need:
        return f"needs Python {need[0]}.{need[1]}+, this run is on {platform.python_version()}"
    return None


def contender(name: str) -> Callable[[Callable[[], tuple[Driver, dict[str, Any]]]], Any]:
    """Register a loader: it imports the library and returns (driver, impl-info)."""

    def register(loader: Callable[[], tuple[Driver, dict[str, Any]]]) -> Any:
        CONTENDERS[name] = loader
        return loader

    return register


def _dist_version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _import_ours() -> Any:
    import coroexecutor

    if not hasattr(coroexecutor, "__path__"):
        # 2022.8.1 is a single module; ours is a package under src/.
        raise ImportError(f"expected our coroexecutor package, got {coroexecutor.__file__}")
    if not hasattr(coroexecutor, "CoroutineExecutor"):
        raise ImportError(f"{coroexecutor.__file__} does not export CoroutineExecutor (yet)")
    return coroexecutor


def _import_legacy() -> Any:
    import coroexecutor

    version = _dist_version("coroexecutor")
    if hasattr(coroexecutor, "__path__") or version != "2022.8.1":
        raise ImportError(
            f"expected coroexecutor 2022.8.1 (run in bench/.venv-legacy-pyX.Y), got "
            f"{coroexecutor.__file__} version {version}"
        )
    return coroexecutor


@contender("floor")
def _floor() -> tuple[Driver, dict[str, Any]]:
    async def drive(wl: Workload) -> None:
        await wl.floor()

    return drive, {}


@contender("coroexecutor-submit")
def _ours_submit() -> tuple[Driver, dict[str, Any]]:
    mod = _import_ours()
    CoroutineExecutor = mod.CoroutineExecutor

    async def drive(wl: Workload) -> None:
        job = wl.job
        async with CoroutineExecutor(max_workers=wl.max_workers) as exe:
            for _i in range(wl.n):
                await exe.submit(job)  # the handle is dropped: memory stays flat

    return drive, _our_impl(mod)


@contender("coroexecutor-submit-pure")
def _ours_submit_pure() -> tuple[Driver, dict[str, Any]]:
    # The pure-Python engine, which runs where no C compiler was found at install.
    os.environ["COROEXECUTOR_NO_EXTENSIONS"] = "1"
    return _ours_submit()


def _our_impl(mod: Any) -> dict[str, Any]:
    return {
        "module": mod.__file__,
        "version": getattr(mod, "__version__", None),
        "compiled": mod.__compiled__,
    }


@contender("coroexecutor-map")
def _ours_map() -> tuple[Driver, dict[str, Any]]:
    mod = _import_ours()
    CoroutineExecutor = mod.CoroutineExecutor

    async def drive(wl: Workload) -> None:
        async with CoroutineExecutor(max_workers=wl.max_workers) as exe:
            async for _r in exe.map(wl.job1, wl.items()):
                pass

    return drive, _our_impl(mod)


@contender("semaphore-taskgroup")
def _semaphore_taskgroup() -> tuple[Driver, dict[str, Any]]:
    async def drive(wl: Workload) -> None:
        # The hand-written pattern: acquire before creating the task (back-pressure,
        # so at most W tasks exist), release from a done-callback.  The callback is
        # made once, not per task.
        job = wl.job
        sem = asyncio.Semaphore(wl.max_workers)
        release = sem.release

        def on_done(_task: asyncio.Task[None]) -> None:
            release()

        async with asyncio.TaskGroup() as tg:
            for _i in range(wl.n):
                await sem.acquire()
                tg.create_task(job()).add_done_callback(on_done)

    return drive, {"module": asyncio.__file__, "version": platform.python_version()}


async def _nothing() -> None:
    pass


@contender("semaphore-taskgroup-eager")
def _semaphore_taskgroup_eager() -> tuple[Driver, dict[str, Any]]:
    why = needs_python("semaphore-taskgroup-eager")
    if why:
        raise Unsupported(f"{why} (asyncio.eager_task_factory is new in 3.12)")
    factory = asyncio.eager_task_factory
    by_hand, impl = _semaphore_taskgroup()

    async def drive(wl: Workload) -> None:
        # The same pattern, with each task's first step run inside create_task.
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        try:
            coro = _nothing()
            try:
                await loop.create_task(coro)
            except TypeError as exc:
                coro.close()
                module = type(loop).__module__.split(".")[0]
                if "eager_start" in str(exc):
                    why = (
                        f"{module} {_dist_version(module) or ''} passes eager_start= to task "
                        f"factories, which Python {platform.python_version()}'s "
                        "eager_task_factory refuses"
                    )
                else:
                    why = f"{module}'s create_task cannot use eager_task_factory: {exc}"
                raise Unsupported(why) from None
            await by_hand(wl)
        finally:
            loop.set_task_factory(None)

    return drive, {**impl, "task_factory": "asyncio.eager_task_factory"}


@contender("legacy-2022.8.1")
def _legacy_submit() -> tuple[Driver, dict[str, Any]]:
    mod = _import_legacy()
    CoroutineExecutor = mod.CoroutineExecutor

    async def drive(wl: Workload) -> None:
        job = wl.job
        async with CoroutineExecutor(max_workers=wl.max_workers) as exe:
            for _i in range(wl.n):
                await exe.submit(job)

    return drive, {"module": mod.__file__, "version": "2022.8.1"}


@contender("legacy-2022.8.1-map")
def _legacy_map() -> tuple[Driver, dict[str, Any]]:
    mod = _import_legacy()
    CoroutineExecutor = mod.CoroutineExecutor

    async def drive(wl: Workload) -> None:
        async with CoroutineExecutor(max_workers=wl.max_workers) as exe:
            async for _r in exe.map(wl.job1, wl.items()):
                pass

    return drive, {"module": mod.__file__, "version": "2022.8.1"}


@contender("aiojobs")
def _aiojobs() -> tuple[Driver, dict[str, Any]]:
    import aiojobs

    async def drive(wl: Workload) -> None:
        job = wl.job
        # wait_timeout=None: the default (60 s) would make the closing wait give up
        # and cancel the rest on long runs.  pending_limit=W: spawn() blocks once W
        # jobs run and W more wait, which is aiojobs' form of back-pressure.
        async with aiojobs.Scheduler(
            limit=wl.max_workers, pending_limit=wl.max_workers, wait_timeout=None
        ) as scheduler:
            for _i in range(wl.n):
                await scheduler.spawn(job())

    return drive, {"module": aiojobs.__file__, "version": _dist_version("aiojobs")}


@contender("asyncio-pool")
def _asyncio_pool() -> tuple[Driver, dict[str, Any]]:
    from asyncio_pool import AioPool

    async def drive(wl: Workload) -> None:
        job = wl.job
        async with AioPool(size=wl.max_workers) as pool:
            for _i in range(wl.n):
                await pool.spawn(job())  # waits for a free slot; the future is dropped

    mod = sys.modules["asyncio_pool"]
    return drive, {"module": mod.__file__, "version": _dist_version("asyncio-pool")}


@contender("aiometer")
def _aiometer() -> tuple[Driver, dict[str, Any]]:
    import aiometer

    async def drive(wl: Workload) -> None:
        # range() is a Sequence, so nothing is materialised.
        await aiometer.run_on_each(wl.job1, wl.items(), max_at_once=wl.max_workers)

    return drive, {"module": aiometer.__file__, "version": _dist_version("aiometer")}


@contender("aiolibs-executor")
def _aiolibs_executor() -> tuple[Driver, dict[str, Any]]:
    why = needs_python("aiolibs-executor")
    if why:
        raise Unsupported(why)
    from aiolibs_executor import Executor

    async def drive(wl: Workload) -> None:
        job = wl.job
        # W worker tasks pull work items from a queue and run each job in a task of its
        # own.  max_pending=W: submit waits once W jobs are queued (the default, 0, is an
        # unbounded queue: no back-pressure, memory O(n)).
        async with Executor(num_workers=wl.max_workers, max_pending=wl.max_workers) as exe:
            for _i in range(wl.n):
                await exe.submit(job())  # the future is dropped

    mod = sys.modules["aiolibs_executor"]
    return drive, {"module": mod.__file__, "version": _dist_version("aiolibs-executor")}


DEFAULT_CONTENDERS = (
    "floor",
    "coroexecutor-submit",
    "coroexecutor-map",
    "coroexecutor-submit-pure",
    "semaphore-taskgroup",
    "semaphore-taskgroup-eager",
    "legacy-2022.8.1",
    "aiolibs-executor",
    "aiojobs",
    "asyncio-pool",
    "aiometer",
)
EXTRA_CONTENDERS = ("legacy-2022.8.1-map",)
LEGACY_CONTENDERS = ("legacy-2022.8.1", "legacy-2022.8.1-map")
OURS_CONTENDERS = ("coroexecutor-submit", "coroexecutor-map", "coroexecutor-submit-pure")
assert set(DEFAULT_CONTENDERS + EXTRA_CONTENDERS) == set(CONTENDERS)


# --------------------------------------------------------------------------- running


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if loop == "asyncio":
        return None
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    raise ValueError(f"unknown loop {loop!r}")


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    workload = args.workload
    n = args.n if args.n is not None else DEFAULT_N[workload]
    workers = args.max_workers or DEFAULT_WORKERS[workload] or n
    record: dict[str, Any] = {
        "contender": args.contender,
        "workload": workload,
        "loop": args.loop,
        "n": n,
        "max_workers": workers,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pid": os.getpid(),
    }
    driver, impl = CONTENDERS[args.contender]()
    record["impl"] = impl
    factory = loop_factory(args.loop)
    result: dict[str, Any] = {}

    async def main() -> None:
        wl = Workload(workload, n, workers, park_timeout=args.park_timeout)
        loop = asyncio.get_running_loop()
        record["loop_class"] = f"{type(loop).__module__}.{type(loop).__qualname__}"
        monitor = loop.create_task(wl.monitor()) if workload == "parked" else None
        gc.collect()
        rss_start = rss_now()
        with PeakSampler() as sampler:
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            await driver(wl)
            t1 = time.perf_counter()
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
        if monitor is not None:
            await monitor
        result.update(wl=wl, rss_start=rss_start, sampler=sampler, t0=t0, t1=t1, ru0=ru0, ru1=ru1)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())

    wl = result["wl"]
    wall = result["t1"] - result["t0"]
    user = result["ru1"].ru_utime - result["ru0"].ru_utime
    sys_ = result["ru1"].ru_stime - result["ru0"].ru_stime
    mb = 1024 * 1024
    rss_start = result["rss_start"]
    peak = result["sampler"].peak
    record.update(
        wall_s=round(wall, 6),
        us_per_job=round(wall / n * 1e6, 4),
        jobs_per_s=round(n / wall, 1) if wall > 0 else None,
        cpu_user_s=round(user, 4),
        cpu_sys_s=round(sys_, 4),
        cpu_pct=round((user + sys_) / wall * 100, 1) if wall > 0 else None,
        rss_start_mb=round(rss_start / mb, 2),
        rss_peak_mb=round(peak / mb, 2),
        rss_growth_mb=round(max(0, peak - rss_start) / mb, 2),
        rss_peak_source=result["sampler"].peak_source,
    )
    if workload == "sleep10ms":
        ideal = n * SLEEP10MS / workers
        record["ideal_s"] = round(ideal, 6)
        record["pct_of_ideal"] = round(ideal / wall * 100, 2)
    if workload == "parked" and wl.rss_parked is not None:
        record["rss_parked_mb"] = round(wl.rss_parked / mb, 2)
        record["bytes_per_job"] = round((wl.rss_parked - rss_start) / n, 1)
    if wl.counts:
        record["completed"] = wl.done
    errors = []
    if workload in ("sleep0", "sleep10ms"):
        record["max_in_flight"] = wl.max_in_flight
        if wl.max_in_flight > workers:
            errors.append(f"{wl.max_in_flight} jobs ran at once, more than max_workers={workers}")
    if wl.park_error:
        errors.append(wl.park_error)
    if wl.counts and wl.done != n:
        errors.append(f"{wl.done} of {n} jobs completed")
    record["ok"] = not errors
    if errors:
        record["error"] = "; ".join(errors)
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contender", required=True, choices=sorted(CONTENDERS))
    p.add_argument("--workload", required=True, choices=WORKLOADS)
    p.add_argument("--n", type=int, default=None, help="jobs (default depends on workload)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument(
        "--max-workers",
        type=int,
        default=None,
        help="W (default: 1000; 10000 for sleep10ms; n for parked)",
    )
    p.add_argument(
        "--park-timeout",
        type=float,
        default=60.0,
        help="parked: give up waiting for all n jobs to be in flight after this many s",
    )
    return p.parse_args(argv)


def _not_run(args: argparse.Namespace, error: str, **extra: Any) -> dict[str, Any]:
    """The JSON record of a run that did not happen (skipped or failed)."""
    return {
        "contender": args.contender,
        "workload": args.workload,
        "loop": args.loop,
        "n": args.n,
        "ok": False,
        **extra,
        "error": error,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        record = run_one(args)
    except Unsupported as exc:
        record = _not_run(args, str(exc), skipped=True)
    except BaseException as exc:  # report every failure as a JSON line
        traceback.print_exc(file=sys.stderr)
        record = _not_run(args, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, ImportError):
            record["not_installed"] = True
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    return 0 if record.get("ok") or record.get("skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
