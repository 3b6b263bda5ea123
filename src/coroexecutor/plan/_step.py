"""One step of a sweep, measured in a process of its own.

``python -m coroexecutor.plan._step`` reads a StepConfig (JSON) on stdin, runs the job
through a ``CoroutineExecutor`` at that ``max_workers`` in a fresh event loop (or, with
``shards`` > 1, through a ``ShardedExecutor`` of that many processes with ``max_workers``
each; their CPU time counts in the step's, and this module is import-safe, as the
shards' "spawn" start needs), and
writes JSON lines on its stdout: progress reports, then the StepResult.  The job's own
prints go to stderr, so they cannot garble those lines.

A fresh process per step makes the memory figure honest: the high-water mark of RSS
(``VmHWM``) belongs to this step alone, and nothing the last step allocated (worker
tasks, sockets, the allocator's free lists) is still around.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from coroexecutor import CoroutineExecutor, ShardedExecutor, run

from ._model import Histogram, StepConfig, StepResult
from ._workloads import open_workload, sharded_workload

__all__ = ("main", "measure")

LAG_PERIOD = 0.010  # the loop-lag probe's timer, seconds


class _Snap(NamedTuple):
    t: float  # perf_counter
    cpu: float  # process CPU time
    finished: int  # jobs that ended, whichever way
    completed: int  # jobs that ended with a result
    wait: float  # seconds this thread was runnable but waiting for a CPU
    shard_cpu: float = 0.0  # CPU time of the child processes (the shards)


class _Gate:
    """Whether jobs ending now are counted: off once the time budget has run out."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = False


class WaitClock:
    """Seconds this thread has spent ready to run but waiting for a CPU (Linux; else 0.0).

    Other processes on a busy machine take that time from us: it slows a CPU-bound step
    down and makes timers late whatever max_workers is, and the planner corrects for it.
    Reading it costs about a microsecond (one pread of /proc/thread-self/schedstat).
    """

    def __init__(self) -> None:
        self._fd = -1
        if hasattr(os, "pread"):
            try:
                self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            except OSError:  # pragma: no cover - not Linux, or no schedstat
                pass

    def __call__(self) -> float:
        if self._fd < 0:
            return 0.0  # pragma: no cover
        return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def current_rss_mb() -> float:
    """The resident set size now, in MB (0.0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):
        pass
    try:  # pragma: no cover - not Linux
        psutil = importlib.import_module("psutil")
        return float(psutil.Process().memory_info().rss) / 2**20
    except ImportError:  # pragma: no cover
        return 0.0


def peak_rss_mb() -> tuple[float, str]:
    """This process's peak resident set size in MB, and where the figure comes from."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "VmHWM"
    except OSError:  # pragma: no cover - not Linux
        pass
    try:  # pragma: no cover - not Linux
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (kb / 2**20 if sys.platform == "darwin" else kb / 1024), "ru_maxrss"
    except ImportError:  # pragma: no cover - Windows
        pass
    try:  # pragma: no cover - Windows
        psutil = importlib.import_module("psutil")
        return float(psutil.Process().memory_info().peak_wset) / 2**20, "peak_wset"
    except (ImportError, AttributeError):  # pragma: no cover
        return 0.0, ""


def _peak_rss_of(pid: int) -> float:
    """Another process's peak RSS in MB (its RSS now where the peak cannot be read)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux, or gone
        pass
    try:  # pragma: no cover - not Linux
        psutil = importlib.import_module("psutil")
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except Exception:  # pragma: no cover
        return 0.0


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's children: those reaped (os.times)
    plus, with psutil, those still running."""
    t = os.times()
    total = t.children_user + t.children_system
    try:
        psutil = importlib.import_module("psutil")
    except ImportError:  # pragma: no cover - running shards count once they exit
        return total
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:  # pragma: no cover
        return total
    for child in children:
        try:
            ct = child.cpu_times()
        except psutil.Error:  # pragma: no cover - just ended
            continue
        total += ct.user + ct.system
    return total


class _LagProbe:
    """A task that sleeps 10 ms over and over and records how late each wake-up is.

    ``own`` leaves out the time the thread waited for a CPU meanwhile: the part of the
    lateness that this process's own work caused.
    """

    def __init__(self, gate: _Gate, waited: WaitClock) -> None:
        self.lag = Histogram()
        self.own = Histogram()
        self._gate = gate
        self._waited = waited
        self._t = time.perf_counter()
        self._w = 0.0

    async def run(self) -> None:
        perf = time.perf_counter
        sleep = asyncio.sleep
        while True:
            self._w = self._waited()
            self._t = perf()
            await sleep(LAG_PERIOD)
            self._record(perf())

    def finish(self) -> None:
        """Count the tick still pending: a loop blocked for the whole window has no
        finished tick, but this one is late already."""
        now = time.perf_counter()
        if now - self._t > LAG_PERIOD:
            self._record(now)

    def _record(self, now: float) -> None:
        if self._gate.on:
            late = now - self._t - LAG_PERIOD
            own = late - (self._waited() - self._w)
            self.lag.add(late if late > 0.0 else 0.0)
            self.own.add(own if own > 0.0 else 0.0)


async def measure(
    config: StepConfig, report: Callable[[dict[str, Any]], None] | None = None
) -> StepResult:
    """Run the step in the running loop and measure it."""
    loop = asyncio.get_running_loop()
    perf = time.perf_counter
    cpu = time.process_time
    latency = Histogram()
    waited = WaitClock()
    gate = _Gate()
    probe = _LagProbe(gate, waited)
    kinds: collections.Counter[str] = collections.Counter()

    def on_error(handle: asyncio.Future[Any], exc: BaseException) -> None:
        if gate.on:
            kinds[getattr(exc, "kind", None) or type(exc).__name__] += 1

    sharded = config.shards > 1
    shard_peaks: dict[int, float] = {}
    async with contextlib.AsyncExitStack() as stack:
        lat_add = latency.add
        exe: Any
        submit: Callable[[Any, Any], Awaitable[Any]]
        if sharded:
            job, items = sharded_workload(config)
            exe = ShardedExecutor(
                shards=config.shards,
                max_workers=config.max_workers,
                suppress_task_errors=True,
                job_timeout=config.job_timeout,
            )

            def ended(t0: float, handle: asyncio.Future[Any]) -> None:
                # A job's latency here runs from its submit to its outcome's arrival.
                exc = None if handle.cancelled() else handle.exception()
                if gate.on:
                    lat_add(perf() - t0)
                    if exc is not None:
                        on_error(handle, exc)

            async def submit_sharded(_: Any, args: Any) -> Any:
                t0 = perf()
                handle = await exe.submit(job, *args)
                handle.add_done_callback(functools.partial(ended, t0))
                return handle

            submit = submit_sharded
            first: Any = None
        else:
            fn, items = await stack.enter_async_context(open_workload(config))

            async def timed(item: Any) -> Any:
                t0 = perf()
                try:
                    return await fn(item)
                finally:
                    if gate.on:
                        lat_add(perf() - t0)

            exe = CoroutineExecutor(
                config.max_workers,
                suppress_task_errors=True,
                job_timeout=config.job_timeout,
                on_error=on_error,
            )
            submit = exe.submit
            first = timed

        def sample_shards() -> None:
            if sharded:
                for pid in exe.shard_pids:
                    if pid is not None:
                        shard_peaks[pid] = max(shard_peaks.get(pid, 0.0), _peak_rss_of(pid))

        def snap() -> _Snap:
            st = exe.stats()
            done = st.completed + st.failed + st.cancelled
            shard_cpu = children_cpu() if sharded else 0.0
            return _Snap(perf(), cpu(), done, st.completed, waited(), shard_cpu)

        probe_task = loop.create_task(probe.run())
        rss_start = current_rss_mb()
        start = window_start = snap()
        gate.on = True
        end: _Snap | None = None

        def warm() -> None:
            # Forget the start-up: the window opens now.  (A step that ends before
            # this keeps all it measured.)
            nonlocal window_start
            window_start = snap()
            for h in (latency, probe.lag, probe.own):
                h.clear()
            kinds.clear()

        progress_timer: asyncio.TimerHandle | None = None

        def progress() -> None:
            nonlocal progress_timer
            sample_shards()
            if report is not None:
                st = exe.stats()
                done = st.completed + st.failed + st.cancelled
                report({"t": perf() - start.t, "jobs": done, "running": st.running})
            progress_timer = loop.call_later(config.progress_every, progress)

        progress_timer = loop.call_later(config.progress_every, progress)
        warm_timer: asyncio.TimerHandle | None = None
        ended_by = "duration"
        budget = config.jobs if config.jobs is not None else -1
        to_ramp = config.max_workers * config.shards
        ramp_s = 0.0
        deadline = math.inf
        stopped_at = start.t
        cut = 0
        try:
            # `hard` bounds the drain: what still runs `grace` after the time budget is
            # cancelled (and counted as cut).  Both clocks start once the first
            # max_workers jobs have started: each starts inside submit(), so that ramp
            # can keep the loop busy for seconds at large max_workers, and is reported
            # apart (ramp_s) rather than eaten into the budget.
            async with asyncio.timeout(None) as hard, exe:
                try:
                    # `soft` stops a submit blocked behind slow jobs; the clock check
                    # stops a run of jobs that never suspend (and so never let the
                    # timeout's callback run).
                    async with asyncio.timeout(None) as soft:
                        for item in items:
                            await submit(first, item)
                            if to_ramp:
                                to_ramp -= 1
                                if not to_ramp:
                                    ramp_s = perf() - start.t
                                    deadline = perf() + config.duration
                                    soft.reschedule(loop.time() + config.duration)
                                    hard.reschedule(loop.time() + config.duration + config.grace)
                                    warm_timer = loop.call_later(config.warmup, warm)
                            budget -= 1
                            if budget == 0:
                                ended_by = "jobs"
                                break
                            if perf() >= deadline:
                                break
                except TimeoutError:
                    pass
                stopped_at = perf()
                sample_shards()
                if to_ramp:  # the job budget ran out before max_workers jobs started
                    ramp_s = stopped_at - start.t
                    hard.reschedule(loop.time() + config.duration + config.grace)
                if ended_by == "duration":
                    probe.finish()
                    end = snap()
                    gate.on = False
        except TimeoutError:
            cut = exe.stats().cancelled
        drained_at = perf()
        if end is None:  # the job budget ended the step: count until its last job ended
            probe.finish()
            end = snap()
        gate.on = False
        for timer in (warm_timer, progress_timer):
            if timer is not None:
                timer.cancel()
        probe_task.cancel()
        await asyncio.wait([probe_task])
        waited.close()

    window = end.t - window_start.t
    jobs = end.finished - window_start.finished
    ok = end.completed - window_start.completed
    shard_cpu_s = end.shard_cpu - window_start.shard_cpu
    cpu_s = end.cpu - window_start.cpu + shard_cpu_s
    wait_s = end.wait - window_start.wait
    if cut:
        kinds["cut after the grace period"] += cut
    peak, source = peak_rss_mb()
    return StepResult(
        max_workers=config.max_workers,
        shards=config.shards,
        ended_by=ended_by,
        window_s=window,
        jobs=jobs,
        jobs_per_s=jobs / window if window > 0 else 0.0,
        ok_per_s=ok / window if window > 0 else 0.0,
        failed=jobs - ok,
        failure_kinds=dict(kinds),
        latency_mean_s=latency.mean,
        latency_p50_s=latency.quantile(0.50),
        latency_p95_s=latency.quantile(0.95),
        latency_p99_s=latency.quantile(0.99),
        latency_max_s=latency.max,
        cpu_pct=100.0 * cpu_s / window if window > 0 else 0.0,
        shard_cpu_pct=100.0 * shard_cpu_s / window if window > 0 else 0.0,
        cpu_per_job_s=cpu_s / jobs if jobs else 0.0,
        cpu_wait_pct=100.0 * wait_s / window if window > 0 else 0.0,
        rss_start_mb=rss_start,
        peak_rss_mb=peak,
        shard_peak_rss_mb=sum(shard_peaks.values()),
        rss_source=source,
        lag_p50_s=probe.lag.quantile(0.50),
        lag_p99_s=probe.lag.quantile(0.99),
        lag_max_s=probe.lag.max,
        own_lag_p99_s=probe.own.quantile(0.99),
        total_jobs=snap().finished,
        cut=cut,
        drain_s=drained_at - stopped_at,
        ramp_s=ramp_s,
        loop=type(loop).__module__.partition(".")[0],
    )


def _raise_fd_limit(needed: int) -> None:
    # Each HTTP job holds a socket: let this process open as many as the hard limit allows.
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, new), hard))
        except (ValueError, OSError):  # pragma: no cover
            pass


def main() -> int:
    config = StepConfig.from_json(json.loads(sys.stdin.read()))
    # Our stdout is the planner's channel; the job's prints go to stderr instead.
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)

    def report(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")

    if config.kind == "http":
        _raise_fd_limit(config.max_workers + 256)
    use_uvloop = {"auto": None, "asyncio": False, "uvloop": True}[config.loop]
    result = run(measure(config, report), uvloop=use_uvloop, debug=False)
    report({"result": result.to_json()})
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
