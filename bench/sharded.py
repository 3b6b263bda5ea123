"""ShardedExecutor against one CoroutineExecutor (issue 7, part 5).

    python -m bench.sharded                    # about a minute on the 2-core machine
    python -m bench.sharded --n-cpu 40000 --repeats 5
    python -m bench.sharded --help

Two workloads, every loop uvloop (the parent's and each shard's):

* ``cpu+sleep``: a job burns about 200 µs of CPU (a busy-wait on the thread's CPU
  clock) and then ``await asyncio.sleep(0.01)``: the scraper that parses what it fetched.
  One ``CoroutineExecutor(max_workers=1000)`` is bound by its one core at about
  1 / 200 µs = 5000 jobs/s; ``ShardedExecutor(shards=2, max_workers=1000)`` should use
  both cores.  Target: at least 1.8x the single executor's jobs/s.
* ``noop``: ``async def noop(): pass`` through ``await submit()``: the cost of the
  machinery itself, per job, for one CoroutineExecutor and ShardedExecutor(shards=1, 2).
  Target: 2 shards no slower per job than 10x the single executor.

Time runs from the first submit to the last job's outcome being back (shard start-up is
measured apart, as ``startup_s``).  Repeats are interleaved so that a noisy stretch hits
every contender; the table shows medians, and the best run of each (other load on a
shared machine only ever slows a run down).  CPU columns are the user+sys time of the
parent and of the shard processes during the measurement.

Writes ``sharded.json`` (every run, medians, machine), ``sharded.md`` (the table, also
printed) and ``sharded.png`` (bar charts) into ``bench/results/local/`` (untracked), or
into ``--out`` (``make bench-publish``: ``bench/results/``, committed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from coroexecutor import CoroutineExecutor, ShardedExecutor, run

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results" / "local"  # untracked; make bench-publish: --out bench/results
X = "\u00d7"

CPU_NS = 200_000  # 200 µs of CPU per cpu+sleep job
SLEEP_S = 0.01
MAX_WORKERS = 1000


# The jobs: module level, so that the shards can import them by name.
async def cpu_then_sleep() -> None:
    end = time.thread_time_ns() + CPU_NS
    while time.thread_time_ns() < end:
        pass
    await asyncio.sleep(SLEEP_S)


async def noop() -> None:
    pass


def _job(workload: str) -> Callable[[], Awaitable[None]]:
    # Through the module's import name, not __main__, when run with -m.
    import bench.sharded as me

    job: Callable[[], Awaitable[None]] = me.cpu_then_sleep if workload == "cpu+sleep" else me.noop
    return job


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def _wait_done(stats: Callable[[], Any], n: int) -> None:
    """Until every job's outcome is in, by the public stats(), every 2 ms: no callback
    per job (that would cost the parent), and no shorter sleep (uvloop's timers count
    whole milliseconds: a shorter one would spin and steal the shards' CPU)."""
    while True:
        st = stats()
        if st.completed + st.failed + st.cancelled >= n:
            if st.failed or st.cancelled:
                raise RuntimeError(f"jobs failed: {st}")
            return
        await asyncio.sleep(0.002)


async def _measure_single(workload: str, n: int) -> dict[str, Any]:
    job = _job(workload)
    me = psutil.Process()
    async with CoroutineExecutor(max_workers=MAX_WORKERS) as exe:
        cpu0 = _cpu_seconds([me])
        t0 = time.perf_counter()
        for _ in range(n):
            await exe.submit(job)
        await _wait_done(exe.stats, n)
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds([me]) - cpu0
    return {"wall_s": wall, "parent_cpu_s": cpu, "shards_cpu_s": 0.0, "startup_s": 0.0}


async def _measure_sharded(workload: str, n: int, shards: int) -> dict[str, Any]:
    job = _job(workload)
    me = psutil.Process()
    t_start = time.perf_counter()
    async with ShardedExecutor(shards, max_workers=MAX_WORKERS) as exe:
        startup = time.perf_counter() - t_start
        kids = [psutil.Process(pid) for pid in exe.shard_pids if pid is not None]
        cpu0 = _cpu_seconds([me])
        kids0 = _cpu_seconds(kids)
        t0 = time.perf_counter()
        for _ in range(n):
            await exe.submit(job)
        await _wait_done(exe.stats, n)
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds([me]) - cpu0
        kids_cpu = _cpu_seconds(kids) - kids0
    return {"wall_s": wall, "parent_cpu_s": cpu, "shards_cpu_s": kids_cpu, "startup_s": startup}


def _one(contender: str, workload: str, n: int) -> dict[str, Any]:
    if contender == "coroexecutor":
        result = run(_measure_single(workload, n), uvloop=None)
    else:
        shards = int(contender.split("=")[1])
        result = run(_measure_sharded(workload, n, shards), uvloop=None)
    result.update(
        contender=contender,
        workload=workload,
        n=n,
        us_per_job=result["wall_s"] / n * 1e6,
        jobs_per_s=n / result["wall_s"],
    )
    return result


CONTENDERS = {
    "cpu+sleep": ("coroexecutor", "sharded shards=2"),
    "noop": ("coroexecutor", "sharded shards=1", "sharded shards=2"),
}


def _machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        uvloop_version = version("uvloop")
    except ImportError:  # PackageNotFoundError
        uvloop_version = "not installed"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "uvloop": uvloop_version,
        "commit": commit,
        "loadavg": os.getloadavg(),
    }


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in runs))


def _table(medians: dict[tuple[str, str], dict[str, float]]) -> tuple[str, list[str]]:
    lines = [
        f"| workload | contender | jobs/s | µs/job | {X} coroexecutor | best jobs/s "
        f"| best {X} | parent CPU % | shards CPU % | start-up s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts: list[str] = []
    for workload, contenders in CONTENDERS.items():
        base = medians.get((workload, "coroexecutor"))
        for contender in contenders:
            m = medians.get((workload, contender))
            if m is None:
                continue
            if base is None:
                ratio = best_ratio = ""
            elif workload == "cpu+sleep":  # throughput: higher is better
                ratio = f"{m['jobs_per_s'] / base['jobs_per_s']:.2f}{X}"
                best_ratio = f"{m['best_jobs_per_s'] / base['best_jobs_per_s']:.2f}{X}"
            else:  # cost per job
                ratio = f"{m['us_per_job'] / base['us_per_job']:.2f}{X}"
                best_ratio = f"{base['best_jobs_per_s'] / m['best_jobs_per_s']:.2f}{X}"
            lines.append(
                f"| {workload} | {contender} | {m['jobs_per_s']:,.0f} | {m['us_per_job']:.2f} "
                f"| {ratio} | {m['best_jobs_per_s']:,.0f} | {best_ratio} "
                f"| {100 * m['parent_cpu_s'] / m['wall_s']:.0f} "
                f"| {100 * m['shards_cpu_s'] / m['wall_s']:.0f} | {m['startup_s']:.2f} |"
            )
    cpu_base = medians.get(("cpu+sleep", "coroexecutor"))
    cpu_two = medians.get(("cpu+sleep", "sharded shards=2"))
    if cpu_base and cpu_two:
        r = cpu_two["jobs_per_s"] / cpu_base["jobs_per_s"]
        best = cpu_two["best_jobs_per_s"] / cpu_base["best_jobs_per_s"]
        verdicts.append(
            f"- cpu+sleep, 2 shards {r:.2f}{X} the throughput of one CoroutineExecutor "
            f"(medians; best runs {best:.2f}{X}; target {X}1.8): "
            f"{'PASS' if r >= 1.8 else 'FAIL'}"
        )
    noop_base = medians.get(("noop", "coroexecutor"))
    noop_two = medians.get(("noop", "sharded shards=2"))
    if noop_base and noop_two:
        r = noop_two["us_per_job"] / noop_base["us_per_job"]
        verdicts.append(
            f"- noop, 2 shards cost {r:.1f}{X} a single CoroutineExecutor per job "
            f"(target at most 10{X}): {'PASS' if r <= 10 else 'FAIL'}"
        )
    return "\n".join(lines), verdicts


def _chart(medians: dict[tuple[str, str], dict[str, float]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (workload, key, label) in zip(
        axes,
        (
            ("cpu+sleep", "jobs_per_s", "jobs/s (higher is better)"),
            ("noop", "us_per_job", "µs per job (lower is better)"),
        ),
        strict=True,
    ):
        names = [c for c in CONTENDERS[workload] if (workload, c) in medians]
        values = [medians[(workload, c)][key] for c in names]
        bars = ax.bar(names, values, color=["#888888", "#4c72b0", "#dd8452"][: len(names)])
        ax.bar_label(bars, fmt="%.0f" if key == "jobs_per_s" else "%.2f")
        base = medians.get((workload, "coroexecutor"))
        if base is not None:  # the targets
            target, text = (
                (1.8 * base[key], f"target: 1.8{X} coroexecutor")
                if workload == "cpu+sleep"
                else (10 * base[key], f"limit: 10{X} coroexecutor")
            )
            ax.axhline(target, color="#c44e52", linestyle="--", linewidth=1)
            ax.annotate(text, (0.01, target), xycoords=("axes fraction", "data"), va="bottom")
        ax.set_title(
            "200 µs CPU + 10 ms sleep per job" if workload == "cpu+sleep" else "no-op jobs"
        )
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"ShardedExecutor vs CoroutineExecutor ({os.cpu_count()} cores, uvloop)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-cpu", type=int, default=20_000, help="cpu+sleep jobs per run")
    parser.add_argument("--n-noop", type=int, default=200_000, help="no-op jobs per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workloads", default="cpu+sleep,noop", help="comma-separated: cpu+sleep,noop"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where sharded.* go")
    args = parser.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in CONTENDERS:
            parser.error(f"unknown workload {w!r}")
    plan = [
        (w, c, args.n_cpu if w == "cpu+sleep" else args.n_noop)
        for w in workloads
        for c in CONTENDERS[w]
    ]
    machine_before = _machine()
    runs: list[dict[str, Any]] = []
    total = len(plan) * args.repeats
    done = 0
    for repeat in range(args.repeats):
        for workload, contender, n in plan:
            done += 1
            print(
                f"[{done}/{total}] repeat {repeat + 1}: {workload} / {contender} (n={n})",
                file=sys.stderr,
                flush=True,
            )
            result = _one(contender, workload, n)
            result["repeat"] = repeat
            runs.append(result)
    medians: dict[tuple[str, str], dict[str, float]] = {}
    for workload, contender, _ in plan:
        mine = [r for r in runs if r["workload"] == workload and r["contender"] == contender]
        medians[(workload, contender)] = {
            key: _median(mine, key)
            for key in (
                "wall_s",
                "us_per_job",
                "jobs_per_s",
                "parent_cpu_s",
                "shards_cpu_s",
                "startup_s",
            )
        }
        # Other load only ever slows a run down: the best run is the machine's own.
        medians[(workload, contender)]["best_jobs_per_s"] = max(r["jobs_per_s"] for r in mine)
    table, verdicts = _table(medians)
    machine = {**machine_before, "loadavg_after": os.getloadavg()}
    header = (
        f"ShardedExecutor benchmark, {_dt.datetime.now().isoformat(timespec='seconds')}: "
        f"{machine['cores']} cores ({machine['cpu']}), Python {machine['python']}, "
        f"uvloop {machine['uvloop']}, load average before {machine['loadavg'][0]:.2f}, "
        f"after {machine['loadavg_after'][0]:.2f}; medians of {args.repeats} "
        f"interleaved repeats; max_workers={MAX_WORKERS} (per shard)."
    )
    md = "\n".join([header, "", table, "", *verdicts, ""])
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sharded.md").write_text(md)
    (args.out / "sharded.json").write_text(
        json.dumps(
            {
                "command": [sys.executable, "-m", "bench.sharded", *(argv or sys.argv[1:])],
                "machine": machine,
                "config": {
                    "n_cpu": args.n_cpu,
                    "n_noop": args.n_noop,
                    "repeats": args.repeats,
                    "max_workers": MAX_WORKERS,
                    "cpu_us": CPU_NS / 1000,
                    "sleep_s": SLEEP_S,
                },
                "runs": runs,
                "medians": [{"workload": w, "contender": c, **m} for (w, c), m in medians.items()],
                "verdicts": verdicts,
            },
            indent=2,
        )
    )
    if not _chart(medians, args.out / "sharded.png"):
        print("matplotlib is not installed: no chart", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
