"""Run every (contender x workload x loop) in its own subprocess and report.

    python -m bench.run                      # the default run, about two minutes
    python -m bench.run --n 10000000         # ten million jobs (slow peers take long)
    python -m bench.run --contenders floor,coroexecutor-submit --loops uvloop

Each run is ``bench/contenders.py`` in a fresh interpreter (so its memory is its own),
printing one JSON line.  Ours is imported from ``src/`` (PYTHONPATH); coroexecutor
2022.8.1 has the same package name, so it runs in ``bench/.venv-legacy-pyX.Y``, created here on
first use.  Repeats are interleaved (every run of repeat 1, then of repeat 2, ...) so
that a noisy stretch of time hits every contender rather than one.

Writes ``bench/results/latest.json`` (every run, medians, machine), ``latest.md`` (the
table, also printed) and ``latest.png`` (bar chart).  Runs that fail, time out or whose
library is not installed are reported in the table; they never stop the run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:  # python -m bench.run
    from bench import contenders as C
except ImportError:  # python bench/run.py
    import contenders as C  # type: ignore[no-redef]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SRC = ROOT / "src"
RESULTS = BENCH / "results"
# One per Python version: the legacy contender runs on the same interpreter as the rest.
LEGACY_VENV = BENCH / f".venv-legacy-py{sys.version_info[0]}.{sys.version_info[1]}"
LEGACY_REQUIREMENTS = ("coroexecutor==2022.8.1", "uvloop", "psutil")

DEFAULT_N = 30_000
PARKED_N = 100_000  # "parked" always parks this many jobs at once (W = n)
SLEEP10MS_WORKERS = 10_000
BIG_N = 5_000_000  # from here on, one repeat by default
LOOPS = ("asyncio", "uvloop")
X = "\u00d7"  # multiplication sign, for the tables
OURS = "coroexecutor-submit"  # the "x submit" column divides by this one

# Environment variables that would change what is measured.
SCRUBBED_ENV = (
    "PYTHONASYNCIODEBUG",
    "PYTHONDEVMODE",
    "PYTHONTRACEMALLOC",
    "PYTHONMALLOC",
    "PYTHONMALLOCSTATS",
    "PYTHONPROFILEIMPORTTIME",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONWARNINGS",
)


# --------------------------------------------------------------------------- planning


def workload_n(workload: str, n: int, sleep_workers: int) -> int:
    """Jobs per run for a workload, from the --n the user asked for."""
    if workload == "parked":
        return PARKED_N
    if workload == "sleep10ms":
        # The steady state is what matters; 5..20 rounds of W sleepers gets there,
        # and more rounds add minutes, not information.
        rounds = max(5, min(20, n // sleep_workers))
        return rounds * sleep_workers
    return n


def workload_workers(workload: str, sleep_workers: int) -> int:
    if workload == "parked":
        return PARKED_N
    if workload == "sleep10ms":
        return sleep_workers
    return C.DEFAULT_WORKERS[workload]


def default_repeat(workload: str, n: int) -> int:
    if workload == "parked":
        return 1  # a memory figure, stable run to run; and 100k jobs is slow for some peers
    if workload == "sleep10ms":
        return 1  # each run is already 5+ rounds of 10 ms timers, a second or more
    return 1 if n >= BIG_N else 3


def split(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if items == ("all",):
        return allowed
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


# --------------------------------------------------------------------------- environments


def clean_env(extra_path: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return env


def legacy_python() -> Path:
    return LEGACY_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def legacy_ok(python: Path) -> bool:
    if not python.exists():
        return False
    probe = (
        "import importlib.metadata as m, sys;"
        "sys.exit(m.version('coroexecutor') != '2022.8.1'"
        f" or sys.version_info[:3] != {tuple(sys.version_info[:3])});"
        "import psutil"
    )
    r = subprocess.run(
        [str(python), "-c", probe], env=clean_env(None), capture_output=True, timeout=60
    )
    return r.returncode == 0


def ensure_legacy_venv(log: Any) -> tuple[Path | None, str | None]:
    """Create bench/.venv-legacy-pyX.Y with coroexecutor 2022.8.1 unless it is already there."""
    python = legacy_python()
    try:
        if legacy_ok(python):
            return python, None
        log(f"creating {LEGACY_VENV} with {' '.join(LEGACY_REQUIREMENTS)} ...")
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(LEGACY_VENV)],
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *LEGACY_REQUIREMENTS,
            ],
        ]
        for cmd in steps:
            r = subprocess.run(
                cmd, env=clean_env(None), capture_output=True, text=True, timeout=600
            )
            if r.returncode != 0:
                out = (r.stderr or r.stdout).strip().splitlines()
                why = [line for line in out if line.startswith("ERROR")] or out[-3:]
                return None, f"`{' '.join(cmd[:4])} ...` failed: {' '.join(why)}"
        if not legacy_ok(python):
            return None, "legacy venv created but coroexecutor 2022.8.1 does not import"
        return python, None
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not create legacy venv: {exc}"


# --------------------------------------------------------------------------- running


def run_one(
    python: Path | str,
    env: dict[str, str],
    contender: str,
    workload: str,
    loop: str,
    n: int,
    workers: int,
    timeout: float,
) -> dict[str, Any]:
    cmd = [
        str(python),
        str(BENCH / "contenders.py"),
        "--contender",
        contender,
        "--workload",
        workload,
        "--loop",
        loop,
        "--n",
        str(n),
        "--max-workers",
        str(workers),
        "--park-timeout",
        str(max(30.0, timeout / 2)),
    ]
    base = {
        "contender": contender,
        "workload": workload,
        "loop": loop,
        "n": n,
        "max_workers": workers,
    }
    started = time.perf_counter()
    try:
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr or ""
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        return {
            **base,
            "ok": False,
            "error": f"timed out after {timeout:.0f} s",
            "stderr_tail": tail(stderr),
            "elapsed_s": time.perf_counter() - started,
        }
    elapsed = time.perf_counter() - started
    record: dict[str, Any] | None = None
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            try:
                record = json.loads(line)
                break
            except ValueError:
                pass
    if record is None:
        record = {**base, "ok": False, "error": f"exit code {r.returncode}, no JSON line on stdout"}
    elif r.returncode != 0 and record.get("ok"):
        record["ok"] = False
        record["error"] = f"exit code {r.returncode}"
    if not record.get("ok"):
        record["stderr_tail"] = tail(r.stderr)
    record["elapsed_s"] = round(elapsed, 3)
    record["command"] = " ".join(cmd)
    return record


def estimate(
    durations: dict[tuple[str, str, str], float], workload: str, loop: str, contender: str, n: int
) -> float:
    """Expected seconds for a run, for the ETA: the same run before, else a neighbour's."""
    if (workload, loop, contender) in durations:
        return durations[(workload, loop, contender)]
    same = [d for (w, _lp, c), d in durations.items() if w == workload and c == contender]
    if same:
        return sum(same) / len(same)
    same = [d for (w, _lp, _c), d in durations.items() if w == workload]
    if same:
        return sum(same) / len(same)
    return 0.15 + n * 15e-6  # a prior: peers average ~15 µs/job here


def tail(text: str, lines: int = 15) -> str:
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


def fmt_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# --------------------------------------------------------------------------- summary


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "hostname": platform.node(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        import psutil

        info["memory_total_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        info["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
        info["git_src_dirty"] = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--", "src"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


MEDIAN_FIELDS = (
    "wall_s",
    "us_per_job",
    "cpu_user_s",
    "cpu_sys_s",
    "cpu_pct",
    "rss_start_mb",
    "rss_peak_mb",
    "rss_growth_mb",
    "pct_of_ideal",
    "bytes_per_job",
    "rss_parked_mb",
    "max_in_flight",
)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["workload"], r["loop"], r["contender"]), []).append(r)
    out = []
    for (workload, loop, contender), rs in groups.items():
        good = [r for r in rs if r.get("ok")]
        m: dict[str, Any] = {
            "contender": contender,
            "workload": workload,
            "loop": loop,
            "n": rs[0].get("n"),
            "max_workers": rs[0].get("max_workers"),
            "runs": len(rs),
            "ok_runs": len(good),
        }
        if good:
            for field in MEDIAN_FIELDS:
                values = [r[field] for r in good if r.get(field) is not None]
                if values:
                    m[field] = statistics.median(values)
            us = [r["us_per_job"] for r in good]
            if len(us) > 1:
                m["us_min"], m["us_max"] = min(us), max(us)
                m["spread_pct"] = round((max(us) - min(us)) / statistics.median(us) * 100, 1)
        bad = [r for r in rs if not r.get("ok")]
        if bad:
            m["error"] = bad[0].get("error", "failed")
            m["not_installed"] = bool(bad[0].get("not_installed"))
        out.append(m)
    # Ratios within the same run: to our submit and to the floor, per workload+loop.
    index = {(m["workload"], m["loop"], m["contender"]): m for m in out}
    for m in out:
        for ref, key in ((OURS, "ratio_to_submit"), ("floor", "ratio_to_floor")):
            other = index.get((m["workload"], m["loop"], ref))
            if other and other.get("us_per_job") and m.get("us_per_job"):
                m[key] = round(m["us_per_job"] / other["us_per_job"], 3)
    return out


def fnum(x: Any, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def ordered(
    medians: list[dict[str, Any]],
    workloads: tuple[str, ...],
    loops: tuple[str, ...],
    contenders: tuple[str, ...],
) -> list[dict[str, Any]]:
    def key(m: dict[str, Any]) -> tuple[int, int, int]:
        return (
            workloads.index(m["workload"]),
            loops.index(m["loop"]),
            contenders.index(m["contender"]),
        )

    return sorted(medians, key=key)


def markdown(summary: dict[str, Any]) -> str:
    info, cfg = summary["machine"], summary["config"]
    medians = ordered(
        summary["medians"], tuple(cfg["workloads"]), tuple(cfg["loops"]), tuple(cfg["contenders"])
    )
    n_text = ", ".join(f"{w} {cfg['n_per_workload'][w]:,}" for w in cfg["workloads"])
    w_text = ", ".join(f"{w} {cfg['workers_per_workload'][w]:,}" for w in cfg["workloads"])
    rep_text = ", ".join(f"{w} {cfg['repeat_per_workload'][w]}" for w in cfg["workloads"])
    lines = [
        "# coroexecutor benchmark",
        "",
        f"{summary['finished_at']} · {info['cpu_model']} · {info['cpu_count']} cores · "
        f"Python {info['python']} · {info['platform']} · "
        f"load {summary.get('loadavg_before')} → {summary.get('loadavg_after')} · "
        f"commit {info.get('git_commit') or '—'}"
        f"{' (src dirty)' if info.get('git_src_dirty') else ''}",
        "",
        f"n per run: {n_text} · W: {w_text} · repeats: {rep_text} (medians shown) · "
        f"{fmt_duration(summary['duration_s'])} in all",
        "",
        f"µs/job is wall time / n. {X} submit and {X} floor divide by `coroexecutor-submit` and by "
        "`floor` in the same run, same workload and loop (lower is better; the floor is the "
        "jobs with no executor). Peak RSS is for the whole process; growth is peak - RSS "
        "before the first job.",
        "",
        f"| workload | loop | contender | µs/job | spread | {X} submit | {X} floor | CPU % "
        "| peak RSS MB | RSS growth MB | notes |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for m in medians:
        if m.get("ok_runs"):
            notes = []
            if m["workload"] == "sleep10ms" and m.get("pct_of_ideal") is not None:
                note = f"{m['pct_of_ideal']:.1f} % of ideal"
                if m.get("ratio_to_floor"):
                    note += f", {100 / m['ratio_to_floor']:.0f} % of floor throughput"
                notes.append(note)
            mif = m.get("max_in_flight")
            if mif is not None and mif < (m.get("max_workers") or 0):
                notes.append(f"only {mif:,.0f} of W={m['max_workers']:,} ever in flight")
            if m["workload"] == "parked" and m.get("bytes_per_job") is not None:
                notes.append(f"**{m['bytes_per_job']:,.0f} B/job** parked")
            if m["ok_runs"] < m["runs"]:
                notes.append(
                    f"{m['runs'] - m['ok_runs']} of {m['runs']} runs failed: "
                    f"{short(m.get('error'))}"
                )
            row = [
                fnum(m.get("us_per_job"), 3),
                f"±{m['spread_pct'] / 2:.0f} %" if m.get("spread_pct") is not None else "—",
                fnum(m.get("ratio_to_submit")),
                fnum(m.get("ratio_to_floor")),
                fnum(m.get("cpu_pct"), 0),
                fnum(m.get("rss_peak_mb"), 1),
                fnum(m.get("rss_growth_mb"), 1),
                "; ".join(notes),
            ]
        else:
            status = "not installed" if m.get("not_installed") else "FAILED"
            row = [status, "", "", "", "", "", "", short(m.get("error"))]
        lines.append(
            f"| {m['workload']} | {m['loop']} | {m['contender']} | " + " | ".join(row) + " |"
        )
    targets = check_targets(summary)
    if targets:
        lines += ["", "## SPEC performance targets (from this run)", ""]
        lines += [f"- {t}" for t in targets]
    return "\n".join(lines) + "\n"


def short(text: Any, width: int = 90) -> str:
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def check_targets(summary: dict[str, Any]) -> list[str]:
    """The targets of SPEC.md "Performance targets" that one run can judge."""
    idx = {(m["workload"], m["loop"], m["contender"]): m for m in summary["medians"]}
    out = []

    def get(workload: str, loop: str, contender: str, field: str = "us_per_job") -> Any:
        return idx.get((workload, loop, contender), {}).get(field)

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "**FAIL**"

    for loop in summary["config"]["loops"]:
        sub = get("noop", loop, OURS)
        if sub is not None:
            out.append(f"{verdict(sub <= 1.0)} noop submit ≤ 1.0 µs/job on {loop}: {sub:.3f}")
            for peer in ("legacy-2022.8.1", "semaphore-taskgroup"):
                p = get("noop", loop, peer)
                if p is not None:
                    out.append(
                        f"{verdict(p / sub >= 6)} noop submit ≥ 6{X} faster than {peer} "
                        f"on {loop}: {p / sub:.1f}{X}"
                    )
        mp = get("noop", loop, "coroexecutor-map")
        if mp is not None:
            out.append(f"{verdict(mp <= 1.3)} noop map ≤ 1.3 µs/job on {loop}: {mp:.3f}")
        for c in (OURS, "coroexecutor-map"):
            r = get("sleep0", loop, c, "ratio_to_floor")
            if r is not None:
                out.append(f"{verdict(r <= 1.3)} sleep0 {c} ≤ 1.3{X} floor on {loop}: {r:.2f}{X}")
            r = get("sleep10ms", loop, c, "ratio_to_floor")
            if r is not None:
                w = get("sleep10ms", loop, c, "max_workers")
                note = "" if w == 1000 else "; SPEC states it at W=1000: --sleep10ms-workers 1000"
                out.append(
                    f"{verdict(100 / r >= 95)} sleep10ms {c} ≥ 95 % of floor throughput "
                    f"on {loop} (W={w}{note}): {100 / r:.0f} %"
                )
    n = summary["config"]["n_per_workload"].get("noop")
    if n and n >= 10_000_000:
        for loop in summary["config"]["loops"]:
            w = get("noop", loop, OURS, "wall_s")
            if w is not None:
                out.append(
                    f"{verdict(w <= 10)} {n:,} noop submits in ≤ 10 s on {loop}: "
                    f"{w:.1f} s (peak RSS {get('noop', loop, OURS, 'rss_peak_mb')} MB; "
                    "compare with a 100k run: target within 30 MB)"
                )
    return out


def plot(summary: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError as exc:
        return f"matplotlib not available ({exc}); no chart"
    cfg = summary["config"]
    workloads, loops, contenders = cfg["workloads"], cfg["loops"], cfg["contenders"]
    idx = {(m["workload"], m["loop"], m["contender"]): m for m in summary["medians"]}
    cols = 2 if len(workloads) > 1 else 1
    rows = (len(workloads) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.2 * rows), squeeze=False)
    colors = plt.get_cmap("tab10")
    width = 0.8 / max(1, len(contenders))
    for ax, workload in zip(axes.flat, workloads, strict=False):
        memory = workload == "parked"
        field = "bytes_per_job" if memory else "us_per_job"
        for ci, contender in enumerate(contenders):
            xs, ys = [], []
            for li, loop in enumerate(loops):
                v = idx.get((workload, loop, contender), {}).get(field)
                if v is not None and v > 0:
                    xs.append(li - 0.4 + width * (ci + 0.5))
                    ys.append(v)
            bars = ax.bar(xs, ys, width, label=contender, color=colors(ci % 10))
            labels = [f"{v:,.0f}" if memory or v >= 10 else f"{v:.2g}" for v in ys]
            ax.bar_label(bars, labels=labels, fontsize=6, padding=1)
        ax.set_xticks(range(len(loops)))
        ax.set_xticklabels(loops)
        n = cfg["n_per_workload"][workload]
        if memory:
            ax.set_ylabel("bytes per parked job (RSS)")
            ax.set_title(f"parked: memory per in-flight job (n = W = {n:,})")
        else:
            ax.set_yscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _p: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=7)
            ax.set_ylabel("µs per job (log)")
            ax.set_title(f"{workload}: n = {n:,}, W = {cfg['workers_per_workload'][workload]:,}")
        ax.grid(axis="y", which="both", alpha=0.3)
    for ax in list(axes.flat)[len(workloads) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
    info = summary["machine"]
    fig.suptitle(
        f"coroexecutor benchmark — {info['cpu_model']}, {info['cpu_count']} cores, "
        f"Python {info['python']} (lower is better)"
    )
    fig.tight_layout(rect=(0, 0.07 if len(labels) <= 4 else 0.1, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--n",
        type=int,
        default=DEFAULT_N,
        help=f"jobs per run for noop and sleep0 (default {DEFAULT_N:,}); sleep10ms "
        f"runs 5-20 rounds of W, parked always {PARKED_N:,}",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help=f"runs per combination, medians reported (default 3, 1 when n >= "
        f"{BIG_N:,}; 1 for sleep10ms and parked)",
    )
    p.add_argument(
        "--contenders",
        default=",".join(C.DEFAULT_CONTENDERS),
        help="comma-separated, or 'all' (adds "
        f"{', '.join(C.EXTRA_CONTENDERS)}); default: %(default)s",
    )
    p.add_argument("--workloads", default=",".join(C.WORKLOADS), help="default: %(default)s")
    p.add_argument("--loops", default=",".join(LOOPS), help="default: %(default)s")
    p.add_argument(
        "--sleep10ms-workers",
        type=int,
        default=SLEEP10MS_WORKERS,
        help="W for sleep10ms (default %(default)s; SPEC's target is stated at 1000)",
    )
    p.add_argument(
        "--timeout", type=float, default=None, help="seconds per run (default 60 + 200 µs per job)"
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (%(default)s)")
    p.add_argument("--no-plot", action="store_true", help="skip latest.png")
    args = p.parse_args(argv)
    all_contenders = C.DEFAULT_CONTENDERS + C.EXTRA_CONTENDERS
    args.contenders = split(args.contenders, all_contenders, "contender")
    args.workloads = split(args.workloads, C.WORKLOADS, "workload")
    args.loops = split(args.loops, LOOPS, "loop")
    if args.n <= 0 or (args.repeat is not None and args.repeat <= 0):
        p.error("--n and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    n_per = {w: workload_n(w, args.n, args.sleep10ms_workers) for w in args.workloads}
    w_per = {w: workload_workers(w, args.sleep10ms_workers) for w in args.workloads}
    rep_per = {w: args.repeat or default_repeat(w, n_per[w]) for w in args.workloads}

    pythons: dict[str, tuple[Path | str | None, str | None]] = {}
    for c in args.contenders:
        if c in C.LEGACY_CONTENDERS:
            if "legacy" not in pythons:
                pythons["legacy"] = ensure_legacy_venv(log)
            pythons[c] = pythons["legacy"]
        else:
            pythons[c] = (sys.executable, None)
    envs = {c: clean_env(SRC if c in C.OURS_CONTENDERS else None) for c in args.contenders}

    plan = []
    for rep in range(max(rep_per.values())):
        for loop in args.loops:
            for workload in args.workloads:
                if rep >= rep_per[workload]:
                    continue
                for contender in args.contenders:
                    plan.append((rep, workload, loop, contender))

    started_at = _dt.datetime.now().astimezone()
    load_before = loadavg()
    if load_before and load_before[0] > 0.5 * (os.cpu_count() or 1):
        log(
            f"warning: load average {load_before} — the machine is busy; trust ratios, "
            "not absolute numbers"
        )
    log(
        f"{len(plan)} runs: contenders {', '.join(args.contenders)}; loops "
        f"{', '.join(args.loops)}; n {n_per}; repeats {rep_per}"
    )
    t_start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    durations: dict[tuple[str, str, str], float] = {}
    failed: set[tuple[str, str, str]] = set()
    for i, (rep, workload, loop, contender) in enumerate(plan, 1):
        key = (workload, loop, contender)
        n, workers = n_per[workload], w_per[workload]
        python, why = pythons[contender]
        if key in failed:
            continue  # failed in an earlier repeat: don't pay for it again
        if python is None:
            record = {
                "contender": contender,
                "workload": workload,
                "loop": loop,
                "n": n,
                "max_workers": workers,
                "ok": False,
                "not_installed": True,
                "error": why,
                "elapsed_s": 0.0,
            }
        else:
            timeout = args.timeout or 60 + n * 200e-6
            record = run_one(
                python, envs[contender], contender, workload, loop, n, workers, timeout
            )
        record["repeat"] = rep
        runs.append(record)
        durations[key] = record.get("elapsed_s") or 0.0
        elapsed = time.perf_counter() - t_start
        remaining = sum(
            estimate(durations, w, lp, c, n_per[w])
            for _r, w, lp, c in plan[i:]
            if (w, lp, c) not in failed
        )
        if record.get("ok"):
            result = f"{record['us_per_job']:10.3f} µs/job"
            if workload == "parked" and record.get("bytes_per_job") is not None:
                result += f"  {record['bytes_per_job']:8,.0f} B/job"
            if workload == "sleep10ms":
                result += f"  {record.get('pct_of_ideal', 0):5.1f} % of ideal"
        else:
            failed.add(key)
            result = f"FAILED: {short(record.get('error'), 70)}"
        log(
            f"[{i:3d}/{len(plan)}] {fmt_duration(elapsed)} elapsed, ETA "
            f"{fmt_duration(remaining)}  {workload:9s} {loop:7s} {contender:20s} "
            f"rep {rep + 1}  {result}"
        )
        if not record.get("ok") and record.get("stderr_tail") and not record.get("not_installed"):
            log("    " + record["stderr_tail"].replace("\n", "\n    "))

    summary: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t_start, 1),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "machine": machine_info(),
        "config": {
            "n": args.n,
            "contenders": list(args.contenders),
            "workloads": list(args.workloads),
            "loops": list(args.loops),
            "n_per_workload": n_per,
            "workers_per_workload": w_per,
            "repeat_per_workload": rep_per,
            "legacy_venv": str(LEGACY_VENV),
            "argv": sys.argv,
        },
        "medians": summarise(runs),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = markdown(summary)
    (args.out / "latest.md").write_text(table)
    if not args.no_plot:
        problem = plot(summary, args.out / "latest.png")
        if problem:
            log(problem)
    print(table)
    log(f"wrote {args.out}/latest.json, latest.md" + ("" if args.no_plot else ", latest.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
