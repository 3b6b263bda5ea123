"""AdaptiveLimit against simulated services: does it find and hold the service's capacity?

Two services of capacity C, each a coroutine function of no argument:

- ``reject``: serves C requests at once in 10 ms each; a request beyond those is
  rejected after 1 ms with ``Overloaded`` (an HTTP 429, say);
- ``latency``: never fails; it serves C at once in 10 ms and queues the rest, so that
  latency grows with load past C.

For each C and service this runs an executor with ``max_workers=AdaptiveLimit(...)``
fed without pause for ``--seconds``, samples its limit and throughput every 0.25 s, and
checks the targets: the limit settles within 0.7·C … 1.5·C inside 10 s, fewer than 5 %
of requests are rejected in steady state (the second half), and the throughput is at
least 85 % of the best fixed ``max_workers`` that ``coroexecutor-plan`` finds for the
same service (a sweep around C, run after it, on the same loop).

    python -m bench.adaptive                       # C = 50, 200, 1000, both services
    python -m bench.adaptive --capacity 200 --service reject --seconds 10
    python -m bench.adaptive --out bench/results/adaptive   # .json, .md and .png

``coroexecutor-plan --job bench.adaptive:reject_200`` runs the same service: the
functions ``reject_<C>`` and ``latency_<C>`` exist for any C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coroexecutor import AdaptiveLimit, CoroutineExecutor

SERVICE_TIME = 0.010
REJECT_TIME = 0.001


class Overloaded(Exception):
    """The reject service's answer beyond its capacity (an HTTP 429)."""


class Service:
    """A service of capacity ``capacity``: ``await service()`` is one request."""

    def __init__(self, capacity: int, mode: str) -> None:
        if mode not in ("reject", "latency"):
            raise ValueError(f"mode must be 'reject' or 'latency', got {mode!r}")
        self.capacity = capacity
        self.mode = mode
        self.in_service = 0
        self.served = 0
        self.rejected = 0
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self) -> None:
        if self.mode == "reject":
            if self.in_service >= self.capacity:
                await asyncio.sleep(REJECT_TIME)
                self.rejected += 1
                raise Overloaded(f"over capacity ({self.capacity})")
            self.in_service += 1
            try:
                await asyncio.sleep(SERVICE_TIME)
            finally:
                self.in_service -= 1
        else:
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.capacity)
            async with self._slots:  # the rest queue: latency grows past capacity
                await asyncio.sleep(SERVICE_TIME)
        self.served += 1


_SERVICES: dict[str, Service] = {}


def __getattr__(name: str) -> Callable[[], Awaitable[None]]:
    """``reject_<C>`` and ``latency_<C>``: one service per process, for the planner."""
    mode, _, capacity = name.partition("_")
    if mode in ("reject", "latency") and capacity.isdigit():
        service = _SERVICES.get(name)
        if service is None:
            service = _SERVICES[name] = Service(int(capacity), mode)
        return service
    raise AttributeError(name)


# --------------------------------------------------------------------- one run


@dataclass
class Run:
    capacity: int
    service: str
    seconds: float
    trace: list[tuple[float, int, float, float]] = field(default_factory=list)
    # (t, limit, served per second, rejected per second), every 0.25 s
    settled_at: float | None = None  # from then on the limit stayed in 0.7C..1.5C
    throughput: float = 0.0  # served per second, second half
    overload_rate: float = 0.0  # rejected / requests, second half
    limit_range: tuple[int, int] = (0, 0)  # second half
    best_fixed: float | None = None  # the planner's best fixed max_workers: served/s
    best_workers: int | None = None

    def verdicts(self) -> dict[str, bool | None]:
        c = self.capacity
        low, high = self.limit_range
        return {
            "settles within 0.7C..1.5C inside 10 s": (
                self.settled_at is not None
                and self.settled_at <= 10
                and 0.7 * c <= low
                and high <= 1.5 * c
            ),
            "overload rate <= 5 %": self.overload_rate <= 0.05,
            "throughput >= 85 % of best fixed": (
                None if self.best_fixed is None else self.throughput >= 0.85 * self.best_fixed
            ),
        }


async def converge(capacity: int, mode: str, seconds: float, step: float = 0.25) -> Run:
    """Feed an adaptive executor without pause; sample its limit and throughput."""
    service = Service(capacity, mode)
    run = Run(capacity, mode, seconds)
    limit = AdaptiveLimit(1, 10 * capacity, overload=Overloaded)
    exe = CoroutineExecutor(limit, suppress_task_errors=True)
    stop = False

    async def sample() -> None:
        start = last_t = time.monotonic()
        served = rejected = 0
        while not stop:
            await asyncio.sleep(step)
            now = time.monotonic()
            dt = now - last_t
            run.trace.append(
                (
                    round(now - start, 3),
                    exe.max_workers,
                    (service.served - served) / dt,
                    (service.rejected - rejected) / dt,
                )
            )
            served, rejected, last_t = service.served, service.rejected, now

    async with exe:
        sampler = asyncio.create_task(sample())
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await exe.submit(service)
        stop = True
        await sampler
    _summarize(run)
    return run


def _summarize(run: Run) -> None:
    c = run.capacity
    inside = [0.7 * c <= limit <= 1.5 * c for _, limit, _, _ in run.trace]
    run.settled_at = None
    for i in range(len(inside)):
        if all(inside[i:]):
            run.settled_at = run.trace[i][0]
            break
    half = run.trace[len(run.trace) // 2 :]
    served = sum(s for _, _, s, _ in half)
    rejected = sum(r for _, _, _, r in half)
    run.throughput = served / len(half) if half else 0.0
    run.overload_rate = rejected / (served + rejected) if served + rejected else 0.0
    limits = [limit for _, limit, _, _ in half]
    run.limit_range = (min(limits), max(limits)) if limits else (0, 0)


def best_fixed(capacity: int, mode: str, seconds: float, loop: str) -> tuple[int, float]:
    """The planner's sweep of fixed max_workers around C: (the best, its served/s)."""
    workers = sorted({max(1, int(capacity * f)) for f in (0.25, 0.5, 0.75, 1, 1.25, 1.5, 2)})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan.json"
        cmd = [
            sys.executable,
            "-m",
            "coroexecutor.plan",
            "--job",
            f"bench.adaptive:{mode}_{capacity}",
            "--max-workers",
            ",".join(map(str, workers)),
            "--duration",
            f"{seconds}s",
            "--loop",
            loop,
            "--csv",
            "",
            "--json",
            str(out),
            "--no-progress",
        ]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path.cwd()), *sys.path]))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        report = json.loads(out.read_text())
    best = max(report["steps"], key=lambda s: s["ok_per_s"])
    return best["max_workers"], best["ok_per_s"]


# --------------------------------------------------------------------- report


def markdown(runs: list[Run], loop: str) -> str:
    lines = [
        f"AdaptiveLimit against simulated services ({loop}, Python "
        f"{platform.python_version()}, {os.cpu_count()} cores); `python -m bench.adaptive`.",
        "",
        "| C | service | settled at | limit (2nd half) | served/s | overload | best fixed "
        "(planner) | ratio | verdict |",
        "|--:|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in runs:
        verdicts = r.verdicts()
        missed = [k for k, v in verdicts.items() if v is False]
        best = "—" if r.best_fixed is None else f"{r.best_fixed:,.0f} (W={r.best_workers})"
        ratio = "—" if not r.best_fixed else f"{r.throughput / r.best_fixed:.2f}"
        settled = "never" if r.settled_at is None else f"{r.settled_at:.2f} s"
        lines.append(
            f"| {r.capacity} | {r.service} | {settled} | {r.limit_range[0]}-{r.limit_range[1]} "
            f"| {r.throughput:,.0f} | {r.overload_rate:.2%} | {best} | {ratio} | "
            f"{'met' if not missed else 'missed: ' + '; '.join(missed)} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(runs) // 2 or 1, figsize=(4 * max(1, len(runs) // 2), 6))
    axes = axes.reshape(2, -1)
    for i, r in enumerate(runs):
        ax = axes[0 if r.service == "reject" else 1][i // 2]
        t = [p[0] for p in r.trace]
        ax.plot(t, [p[1] for p in r.trace], label="limit", color="tab:blue")
        ax.axhspan(0.7 * r.capacity, 1.5 * r.capacity, color="tab:green", alpha=0.12)
        ax.axhline(r.capacity, color="tab:green", lw=0.8, ls="--")
        ax.set_ylim(0, 2.2 * r.capacity)
        ax.set_title(f"{r.service}, C={r.capacity}", fontsize=9)
        ax.set_xlabel("s", fontsize=8)
        tw = ax.twinx()
        tw.plot(t, [p[2] for p in r.trace], color="tab:orange", lw=0.8, label="served/s")
        tw.set_ylim(0, None)
        tw.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle("AdaptiveLimit: limit (blue, band 0.7C..1.5C) and throughput (orange)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.adaptive", description=__doc__)
    p.add_argument("--capacity", type=int, action="append", help="C (default 50, 200, 1000)")
    p.add_argument("--service", choices=["reject", "latency"], action="append")
    p.add_argument("--seconds", type=float, default=12.0, help="each run (default 12)")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--plan-seconds", type=float, default=3.0, help="each planner step")
    p.add_argument("--no-plan", action="store_true", help="skip the planner's sweep")
    p.add_argument("--out", type=Path, help="write OUT.json, OUT.md and OUT.png")
    args = p.parse_args(argv)
    capacities = args.capacity or [50, 200, 1000]
    services = args.service or ["reject", "latency"]
    if args.loop == "uvloop":
        import uvloop

        factory: Any = uvloop.new_event_loop
    else:
        factory = None
    runs = []
    for c in capacities:
        for mode in services:
            with asyncio.Runner(loop_factory=factory) as runner:
                r = runner.run(converge(c, mode, args.seconds))
            if not args.no_plan:
                r.best_workers, r.best_fixed = best_fixed(c, mode, args.plan_seconds, args.loop)
            runs.append(r)
            print(markdown([r], args.loop).splitlines()[-1], flush=True)
    report = markdown(runs, args.loop)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
        args.out.with_suffix(".md").write_text(report)
        plot(runs, args.out.with_suffix(".png"))
    missed = any(v is False for r in runs for v in r.verdicts().values())
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
