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
    return await _Step(config, report).run()


class _Step:
    """One measured step: the executor and its job, the clocks, and the figures.

    ``run()`` goes through the phases in order: ``_submit_all()`` feeds jobs until the
    job or time budget is spent (the ramp of the first ``max_workers`` starts is timed
    apart, and the warm-up is forgotten by ``_warm()``); the executor's exit drains
    what still runs, cancelling it ``grace`` after the budget; ``_result()`` turns the
    snapshots taken at the window's two ends into a StepResult.
    """

    def __init__(self, config: StepConfig, report: Callable[[dict[str, Any]], None] | None) -> None:
        self.config = config
        self.report = report
        self.loop = asyncio.get_running_loop()
        self.latency = Histogram()
        self.waited = WaitClock()
        self.gate = _Gate()  # whether jobs ending now are counted
        self.probe = _LagProbe(self.gate, self.waited)
        self.kinds: collections.Counter[str] = collections.Counter()  # failures by kind
        self.sharded = config.shards > 1
        self.shard_peaks: dict[int, float] = {}
        self.exe: Any = None
        self.progress_timer: asyncio.TimerHandle | None = None
        self.warm_timer: asyncio.TimerHandle | None = None
        self.ended_by = "duration"
        self.ramp_s = 0.0

    # ------------------------------------------------------------------ the executor
    def _on_error(self, handle: asyncio.Future[Any], exc: BaseException) -> None:
        if self.gate.on:
            self.kinds[getattr(exc, "kind", None) or type(exc).__name__] += 1

    async def _executor(
        self, stack: contextlib.AsyncExitStack
    ) -> tuple[Callable[[Any, Any], Awaitable[Any]], Any, Any]:
        """The executor for this step: (submit, its first argument, the items)."""
        config, perf, add = self.config, time.perf_counter, self.latency.add
        if self.sharded:
            job, items = sharded_workload(config)
            exe = self.exe = ShardedExecutor(
                shards=config.shards,
                max_workers=config.max_workers,
                suppress_task_errors=True,
                job_timeout=config.job_timeout,
            )

            def ended(t0: float, handle: asyncio.Future[Any]) -> None:
                # A job's latency here runs from its submit to its outcome's arrival.
                exc = None if handle.cancelled() else handle.exception()
                if self.gate.on:
                    add(perf() - t0)
                    if exc is not None:
                        self._on_error(handle, exc)

            async def submit_sharded(_: Any, args: Any) -> Any:
                t0 = perf()
                handle = await exe.submit(job, *args)
                handle.add_done_callback(functools.partial(ended, t0))
                return handle

            return submit_sharded, None, items

        fn, items = await stack.enter_async_context(open_workload(config))

        async def timed(item: Any) -> Any:
            t0 = perf()
            try:
                return await fn(item)
            finally:
                if self.gate.on:
                    add(perf() - t0)

        self.exe = CoroutineExecutor(
            config.max_workers,
            suppress_task_errors=True,
            job_timeout=config.job_timeout,
            on_error=self._on_error,
        )
        return self.exe.submit, timed, items

    # ------------------------------------------------------------------ clocks
    def _snap(self) -> _Snap:
        st = self.exe.stats()
        done = st.completed + st.failed + st.cancelled
        shard_cpu = children_cpu() if self.sharded else 0.0
        return _Snap(
            time.perf_counter(), time.process_time(), done, st.completed, self.waited(), shard_cpu
        )

    def _sample_shards(self) -> None:
        if self.sharded:
            for pid in self.exe.shard_pids:
                if pid is not None:
                    self.shard_peaks[pid] = max(self.shard_peaks.get(pid, 0.0), _peak_rss_of(pid))

    def _warm(self) -> None:
        # Forget the start-up: the window opens now.  (A step that ends before this
        # keeps all it measured.)
        self.window_start = self._snap()
        for h in (self.latency, self.probe.lag, self.probe.own):
            h.clear()
        self.kinds.clear()

    def _progress(self) -> None:
        self._sample_shards()
        if self.report is not None:
            st = self.exe.stats()
            done = st.completed + st.failed + st.cancelled
            elapsed = time.perf_counter() - self.start.t
            self.report({"t": elapsed, "jobs": done, "running": st.running})
        self.progress_timer = self.loop.call_later(self.config.progress_every, self._progress)

    # ------------------------------------------------------------------ phases
    async def run(self) -> StepResult:
        async with contextlib.AsyncExitStack() as stack:
            submit, first, items = await self._executor(stack)
            probe_task = self.loop.create_task(self.probe.run())
            self.rss_start = current_rss_mb()
            self.start = self.window_start = self._snap()
            self.gate.on = True
            self.end: _Snap | None = None
            self.progress_timer = self.loop.call_later(self.config.progress_every, self._progress)
            self.stopped_at = self.start.t
            self.cut = 0
            try:
                # `hard` bounds the drain: what still runs `grace` after the time
                # budget is cancelled (and counted as cut).
                async with asyncio.timeout(None) as hard, self.exe:
                    await self._submit_all(submit, first, items, hard)
            except TimeoutError:
                self.cut = self.exe.stats().cancelled
            self.drained_at = time.perf_counter()
            if self.end is None:  # the job budget ended the step: count until its last job
                self.probe.finish()
                self.end = self._snap()
            self.gate.on = False
            for timer in (self.warm_timer, self.progress_timer):
                if timer is not None:
                    timer.cancel()
            probe_task.cancel()
            await asyncio.wait([probe_task])
            self.waited.close()
        return self._result()

    async def _submit_all(
        self,
        submit: Callable[[Any, Any], Awaitable[Any]],
        first: Any,
        items: Any,
        hard: asyncio.Timeout,
    ) -> None:
        """Submit until the job or time budget is spent.

        Both clocks start once the first max_workers jobs have started: each starts
        inside submit(), so that ramp can keep the loop busy for seconds at large
        max_workers, and is reported apart (ramp_s) rather than eaten into the budget.
        """
        config, loop, perf = self.config, self.loop, time.perf_counter
        budget = config.jobs if config.jobs is not None else -1
        to_ramp = config.max_workers * config.shards
        deadline = math.inf
        try:
            # `soft` stops a submit blocked behind slow jobs; the clock check stops a
            # run of jobs that never suspend (and so never let the timeout's callback run).
            async with asyncio.timeout(None) as soft:
                for item in items:
                    await submit(first, item)
                    if to_ramp:
                        to_ramp -= 1
                        if not to_ramp:
                            self.ramp_s = perf() - self.start.t
                            deadline = perf() + config.duration
                            soft.reschedule(loop.time() + config.duration)
                            hard.reschedule(loop.time() + config.duration + config.grace)
                            self.warm_timer = loop.call_later(config.warmup, self._warm)
                    budget -= 1
                    if budget == 0:
                        self.ended_by = "jobs"
                        break
                    if perf() >= deadline:
                        break
        except TimeoutError:
            pass
        self.stopped_at = perf()
        self._sample_shards()
        if to_ramp:  # the job budget ran out before max_workers jobs started
            self.ramp_s = self.stopped_at - self.start.t
            hard.reschedule(loop.time() + config.duration + config.grace)
        if self.ended_by == "duration":
            self.probe.finish()
            self.end = self._snap()
            self.gate.on = False

    def _result(self) -> StepResult:
        """The figures of the window between the warm-up's end and the budget's."""
        config, start, end, probe = self.config, self.window_start, self.end, self.probe
        assert end is not None
        window = end.t - start.t
        jobs = end.finished - start.finished
        ok = end.completed - start.completed
        shard_cpu_s = end.shard_cpu - start.shard_cpu
        cpu_s = end.cpu - start.cpu + shard_cpu_s
        wait_s = end.wait - start.wait
        if self.cut:
            self.kinds["cut after the grace period"] += self.cut
        peak, source = peak_rss_mb()

        def per_s(x: float) -> float:
            return x / window if window > 0 else 0.0

        return StepResult(
            max_workers=config.max_workers,
            shards=config.shards,
            ended_by=self.ended_by,
            window_s=window,
            jobs=jobs,
            jobs_per_s=per_s(jobs),
            ok_per_s=per_s(ok),
            failed=jobs - ok,
            failure_kinds=dict(self.kinds),
            latency_mean_s=self.latency.mean,
            latency_p50_s=self.latency.quantile(0.50),
            latency_p95_s=self.latency.quantile(0.95),
            latency_p99_s=self.latency.quantile(0.99),
            latency_max_s=self.latency.max,
            cpu_pct=100.0 * per_s(cpu_s),
            shard_cpu_pct=100.0 * per_s(shard_cpu_s),
            cpu_per_job_s=cpu_s / jobs if jobs else 0.0,
            cpu_wait_pct=100.0 * per_s(wait_s),
            rss_start_mb=self.rss_start,
            peak_rss_mb=peak,
            shard_peak_rss_mb=sum(self.shard_peaks.values()),
            rss_source=source,
            lag_p50_s=probe.lag.quantile(0.50),
            lag_p99_s=probe.lag.quantile(0.99),
            lag_max_s=probe.lag.max,
            own_lag_p99_s=probe.own.quantile(0.99),
            total_jobs=self._snap().finished,
            cut=self.cut,
            drain_s=self.drained_at - self.stopped_at,
            ramp_s=self.ramp_s,
            loop=type(self.loop).__module__.partition(".")[0],
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
