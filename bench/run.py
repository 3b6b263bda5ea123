"""Run every (contender x workload x loop) in its own subprocess and report.

    python -m bench.run                      # the default run (make bench), a few minutes
    python -m bench.run --n 10000000         # ten million jobs (slow peers take long)
    python -m bench.run --contenders floor,coroexecutor-submit --loops uvloop
    python -m bench.run --out bench/results  # what make bench-publish does

Each run is ``bench/contenders.py`` in a fresh interpreter (so its memory is its own),
printing one JSON line.  Ours is imported from ``src/`` (PYTHONPATH).  Two peers need a
venv of their own, made here on first use with the same interpreter as the rest:
coroexecutor 2022.8.1 (same package name as ours) in ``bench/.venv-legacy-pyX.Y`` and
aiolibs-executor (Python 3.13+) in ``bench/.venv-aiolibs-pyX.Y``.  Repeats are
interleaved (every run of repeat 1, then of repeat 2, ...) so that a noisy stretch of
time hits every contender rather than one.

Writes ``latest.json`` (every run, medians, machine, targets), ``latest.md`` (the
tables and the targets, also printed) and ``latest.png`` (bar charts) into
``bench/results/local/`` (untracked) unless ``--out`` says otherwise.  Runs that fail,
time out, or cannot run here (library not installed, Python too old) are reported; they
never stop the run.  The performance targets come from ``bench/targets.json``.

Exit status: 0 when the report was written, even if targets are missed (this is a
report; ``make bench-check`` is the regression gate); 1 if a run of ours failed (crashed,
timed out, lost a job), or with ``--fail-on-missed-targets`` if a target was missed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # python -m bench.run
    from bench import contenders as C
except ImportError:  # python bench/run.py
    import contenders as C  # type: ignore[no-redef]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SRC = ROOT / "src"
PUBLISHED = BENCH / "results"  # committed: what the README quotes (make bench-publish)
RESULTS = PUBLISHED / "local"  # the default: untracked (.gitignore)
TARGETS = BENCH / "targets.json"
PY_TAG = f"py{sys.version_info[0]}.{sys.version_info[1]}"


@dataclass(frozen=True)
class VenvSpec:
    """A peer that cannot share our venv gets one of its own, per Python version."""

    path: Path
    requirements: tuple[str, ...]
    dist: str  # the distribution whose version the probe checks
    version: str


LEGACY = VenvSpec(
    BENCH / f".venv-legacy-{PY_TAG}",
    ("coroexecutor==2022.8.1", "uvloop", "psutil"),
    "coroexecutor",
    "2022.8.1",
)
# Requires-Python >= 3.13, so it cannot be in the bench extra of a 3.11 venv.
AIOLIBS = VenvSpec(
    BENCH / f".venv-aiolibs-{PY_TAG}",
    ("aiolibs-executor==0.0.0", "uvloop", "psutil"),
    "aiolibs-executor",
    "0.0.0",
)
OWN_VENV = {"legacy-2022.8.1": LEGACY, "legacy-2022.8.1-map": LEGACY, "aiolibs-executor": AIOLIBS}
LEGACY_VENV = LEGACY.path  # (kept for whoever imported it)

DEFAULT_N = 30_000
PARKED_N = 100_000  # "parked" always parks this many jobs at once (W = n)
BIG_N = 5_000_000  # from here on, one repeat by default
# The default workloads; any other sleep10ms-w<W> may be asked for by name.
WORKLOADS = ("noop", "sleep0", "sleep10ms-w1000", "sleep10ms-w10000", "parked")
SLEEP10MS = re.compile(r"sleep10ms-w([1-9][0-9]*)")
LOOPS = ("asyncio", "uvloop")
X = "\u00d7"  # multiplication sign, for the tables
OURS = "coroexecutor-submit"  # the "x submit" column divides by this one
PEERS_EXCLUDED = ("floor", *C.OURS_CONTENDERS)  # "fastest-peer" is among the others

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


def base_workload(workload: str) -> str:
    """The workload of bench/contenders.py that ``workload`` runs (its W aside)."""
    return "sleep10ms" if SLEEP10MS.fullmatch(workload) else workload


def workload_workers(workload: str) -> int:
    if workload == "parked":
        return PARKED_N
    m = SLEEP10MS.fullmatch(workload)
    if m:
        return int(m.group(1))
    return int(C.DEFAULT_WORKERS[workload])


def workload_n(workload: str, n: int) -> int:
    """Jobs per run for a workload, from the --n the user asked for."""
    if workload == "parked":
        return PARKED_N
    if base_workload(workload) == "sleep10ms":
        # The steady state is what matters; 5..20 rounds of W sleepers gets there,
        # and more rounds add minutes, not information.
        w = workload_workers(workload)
        return max(5, min(20, n // w)) * w
    return n


def default_repeat(n: int) -> int:
    # Every workload gets three interleaved repeats: a single run of the parked or the
    # W=10,000 workload moved by 15 % from one make bench to the next on the shared
    # machine, enough to flip a verdict against the peers.
    return 1 if n >= BIG_N else 3


def workload_label(workload: str) -> str:
    """What a workload is, for people."""
    if workload == "noop":
        return "no-op jobs, W=1,000"
    if workload == "sleep0":
        return "jobs that yield once (sleep(0)), W=1,000"
    if workload == "parked":
        return f"{PARKED_N:,} jobs parked at once"
    if base_workload(workload) == "sleep10ms":
        return f"jobs of sleep(10 ms), W={workload_workers(workload):,}"
    return workload


def split(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if items == ("all",):
        return allowed
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def split_workloads(value: str) -> tuple[str, ...]:
    """--workloads: names from WORKLOADS, any sleep10ms-w<W>; sleep10ms means both Ws."""
    out: list[str] = []
    for item in (v.strip() for v in value.split(",") if v.strip()):
        names = (
            WORKLOADS
            if item == "all"
            else (
                [w for w in WORKLOADS if base_workload(w) == "sleep10ms"]
                if item == "sleep10ms"
                else [item]
            )
        )
        for name in names:
            if name not in WORKLOADS and not SLEEP10MS.fullmatch(name):
                raise SystemExit(
                    f"unknown workload: {name} (choose from {', '.join(WORKLOADS)}, or "
                    "sleep10ms-w<W> for another W)"
                )
            if name not in out:
                out.append(name)
    return tuple(out)


# --------------------------------------------------------------------------- environments


def clean_env(extra_path: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return env


def venv_python(spec: VenvSpec) -> Path:
    return spec.path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_ok(spec: VenvSpec, python: Path) -> bool:
    if not python.exists():
        return False
    probe = (
        "import importlib.metadata as m, sys;"
        f"sys.exit(m.version({spec.dist!r}) != {spec.version!r}"
        f" or sys.version_info[:3] != {tuple(sys.version_info[:3])});"
        "import psutil"
    )
    r = subprocess.run(
        [str(python), "-c", probe], env=clean_env(None), capture_output=True, timeout=60
    )
    return r.returncode == 0


def ensure_venv(spec: VenvSpec, log: Any) -> tuple[Path | None, str | None]:
    """Create the peer's venv (this interpreter + its requirements) unless it is there."""
    python = venv_python(spec)
    try:
        if venv_ok(spec, python):
            return python, None
        log(f"creating {spec.path} with {' '.join(spec.requirements)} ...")
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(spec.path)],
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *spec.requirements,
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
        if not venv_ok(spec, python):
            return None, f"{spec.path.name} created but {spec.dist} {spec.version} does not import"
        return python, None
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not create {spec.path.name}: {exc}"


def ensure_legacy_venv(log: Any) -> tuple[Path | None, str | None]:
    return ensure_venv(LEGACY, log)


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
        base_workload(workload),
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
    record["workload"] = workload  # contenders.py knows sleep10ms, not sleep10ms-w<W>
    if r.returncode != 0 and record.get("ok"):
        record["ok"] = False
        record["error"] = f"exit code {r.returncode}"
    if not record.get("ok") and not record.get("skipped"):
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
            m["skipped"] = bool(bad[0].get("skipped"))
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


def short(text: Any, width: int = 90) -> str:
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- targets

METRIC_UNITS = {
    "us_per_job": "µs/job",
    "bytes_per_job": "B/job",
    "wall_s": "s",
    "rss_growth_mb": "MB",
}
COMPARISONS = ("ratio_to", "speedup_over", "pct_throughput_of")
FASTEST_PEER = "fastest-peer"


def load_targets(path: Path) -> list[dict[str, Any]]:
    """Read and check bench/targets.json; raise ValueError naming what is wrong."""
    data = json.loads(path.read_text())
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, list):
        raise ValueError(f"{path}: no 'targets' list")
    for i, t in enumerate(targets):
        where = f"{path}: targets[{i}]"
        if not isinstance(t, dict):
            raise ValueError(f"{where} is not an object")
        for key in ("text", "workload", "contenders", "metric"):
            if key not in t:
                raise ValueError(f"{where} has no {key!r}")
        if t["metric"] not in METRIC_UNITS:
            raise ValueError(f"{where}: unknown metric {t['metric']!r}")
        if sum(key in t for key in COMPARISONS) > 1:
            raise ValueError(f"{where}: at most one of {', '.join(COMPARISONS)}")
        limits = [key for key in ("at_most", "at_least") if key in t]
        if len(limits) != 1 or not isinstance(t[limits[0]], (int, float)):
            raise ValueError(f"{where}: needs a number as exactly one of at_most, at_least")
    return targets


@dataclass(frozen=True)
class TargetResult:
    """One target judged for one (loop, contender of ours)."""

    text: str
    workload: str
    loop: str
    contender: str
    status: str  # "met", "missed" or "not judged"
    measured: str = ""  # the value, in words: "1.78 µs/job", "49 % of floor's throughput"
    limit: str = ""  # "≤ 0.6 µs/job", "≥ 95 %"
    factor: float | None = None  # how far from the limit: > 1 missed by, <= 1 met
    why: str = ""  # for "not judged"

    @property
    def verdict(self) -> str:
        if self.status == "not judged" or self.factor is None:
            return f"not judged: {self.why}"
        if self.status == "missed":
            return f"**missed**: needs {self.factor:.2f}{X} better"
        return f"met ({1 / self.factor:.2f}{X} to spare)" if self.factor > 0 else "met"


def _why_not_measured(m: dict[str, Any] | None, name: str) -> str:
    if m is None:
        return f"{name} was not in this run"
    if m.get("skipped") or m.get("not_installed"):
        return f"{name} not measured: {m.get('error')}"
    return f"{name} failed: {short(m.get('error'), 60)}"


def judge_targets(targets: list[dict[str, Any]], summary: dict[str, Any]) -> list[TargetResult]:
    """Every target that applies to this run, judged from its medians.

    A target applies when its workload, one of its loops and one of its contenders were
    in the run; it is "not judged" when what it compares was not measured (a peer that
    needs a newer Python, a failed run) or when the run was too small (``min_n``).
    """
    cfg = summary["config"]
    idx = {(m["workload"], m["loop"], m["contender"]): m for m in summary["medians"]}
    out = []
    for t in targets:
        workload, metric = t["workload"], t["metric"]
        if workload not in cfg["workloads"]:
            continue
        unit = METRIC_UNITS[metric]
        at_most = "at_most" in t
        limit = float(t["at_most"] if at_most else t["at_least"])
        compare = next((key for key in COMPARISONS if key in t), None)
        ref = t.get(compare) if compare else None
        sign = "≤" if at_most else "≥"
        if compare is None:
            limit_text = f"{sign} {limit:g} {unit}"
        elif compare == "pct_throughput_of":
            limit_text = f"{sign} {limit:g} %"
        else:
            limit_text = f"{sign} {limit:g}{X}"
        for loop in cfg["loops"]:
            if t.get("loops") and loop not in t["loops"]:
                continue
            for ours in t["contenders"]:
                if ours not in cfg["contenders"]:
                    continue
                base = {"text": t["text"], "workload": workload, "loop": loop, "contender": ours}
                base["limit"] = limit_text

                def not_judged(why: str, base: dict[str, Any] = base) -> TargetResult:
                    return TargetResult(status="not judged", why=why, **base)

                n = cfg["n_per_workload"][workload]
                if t.get("min_n") and n < t["min_n"]:
                    out.append(not_judged(f"needs n ≥ {t['min_n']:,}, as make bench-10m runs"))
                    continue
                mine = idx.get((workload, loop, ours))
                if not mine or mine.get(metric) is None:
                    out.append(not_judged(_why_not_measured(mine, ours)))
                    continue
                value = float(mine[metric])
                other_name = ref
                if ref == FASTEST_PEER:
                    peers = [
                        m
                        for (w, lp, c), m in idx.items()
                        if w == workload
                        and lp == loop
                        and c not in PEERS_EXCLUDED
                        and m.get(metric) is not None
                    ]
                    if not peers:
                        out.append(not_judged("no peer was measured"))
                        continue
                    other = min(peers, key=lambda m: m[metric])
                    other_name = f"{other['contender']} (the fastest peer)"
                elif ref is not None:
                    other = idx.get((workload, loop, ref))
                    if not other or other.get(metric) is None:
                        out.append(not_judged(_why_not_measured(other, ref)))
                        continue
                if compare is None:
                    v, text = value, f"{value:.3g} {unit}"
                else:
                    theirs = float(other[metric])
                    if value <= 0 or theirs <= 0:
                        out.append(not_judged(f"a {metric} of 0 cannot be compared"))
                        continue
                    if compare == "ratio_to":
                        v, text = value / theirs, f"{value / theirs:.2f}{X} {other_name}"
                    elif compare == "speedup_over":
                        v = theirs / value
                        text = f"{v:.2f}{X} as fast as {other_name}"
                    else:
                        v = 100 * theirs / value
                        text = f"{v:.0f} % of {other_name}'s throughput"
                factor = v / limit if at_most else (limit / v if v > 0 else float("inf"))
                status = "missed" if factor > 1 else "met"
                out.append(TargetResult(status=status, measured=text, factor=factor, **base))
    return out


# --------------------------------------------------------------------------- report


def not_measured(summary: dict[str, Any]) -> dict[str, list[str]]:
    """Contender -> the reasons it was not measured (skipped or not installed), with where."""
    cfg = summary["config"]
    by: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for m in summary["medians"]:
        if m.get("ok_runs") or not (m.get("skipped") or m.get("not_installed")):
            continue
        by.setdefault(m["contender"], {}).setdefault(m.get("error") or "?", []).append(
            (m["workload"], m["loop"])
        )
    out: dict[str, list[str]] = {}
    every = {(w, lp) for w in cfg["workloads"] for lp in cfg["loops"]}
    for contender, reasons in by.items():
        for why, where in reasons.items():
            loops = sorted({lp for _w, lp in where}, key=cfg["loops"].index)
            if set(where) == every:
                scope = ""
            elif {(w, lp) for w in cfg["workloads"] for lp in loops} == set(where):
                scope = f" (on {', '.join(loops)})"
            else:
                scope = f" ({', '.join(f'{w} on {lp}' for w, lp in where)})"
            out.setdefault(contender, []).append(f"{why}{scope}")
    return out


def failed_runs(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        m
        for m in summary["medians"]
        if m.get("ok_runs", 0) < m.get("runs", 0)
        and not (m.get("skipped") or m.get("not_installed"))
    ]


def summary_lines(summary: dict[str, Any], results: list[TargetResult]) -> list[str]:
    """What the run measured and what it says, in a few lines a newcomer can read."""
    cfg, info = summary["config"], summary["machine"]
    missing = not_measured(summary)
    measured = [
        c
        for c in cfg["contenders"]
        if c not in missing
        or any(m.get("ok_runs") for m in summary["medians"] if m["contender"] == c)
    ]
    runs = sum(1 for r in summary["runs"] if not (r.get("skipped") or r.get("not_installed")))
    lines = [
        f"Measured {len(cfg['workloads'])} workloads {X} {len(measured)} contenders {X} "
        f"{len(cfg['loops'])} loops ({', '.join(cfg['loops'])}): {runs} runs, each in its own "
        f"process, in {fmt_duration(summary['duration_s'])} on Python {info['python']}. "
        "Workloads: " + "; ".join(workload_label(w) for w in cfg["workloads"]) + "."
    ]
    if missing:
        lines.append(
            "Not measured: "
            + "; ".join(f"{c}: {', '.join(why)}" for c, why in missing.items())
            + "."
        )
    bad = failed_runs(summary)
    if bad:
        lines.append(
            "FAILED runs: "
            + "; ".join(
                f"{m['contender']} {m['workload']} on {m['loop']}: {short(m.get('error'), 60)}"
                for m in bad
            )
            + "."
        )
    met = [r for r in results if r.status == "met"]
    missed = [r for r in results if r.status == "missed"]
    unjudged = [r for r in results if r.status == "not judged"]
    if results:
        text = (
            f"Targets ({cfg.get('targets_file', 'bench/targets.json')}): "
            f"{len(met)} met, {len(missed)} missed, of {len(met) + len(missed)} judged"
        )
        if unjudged:
            reasons: dict[str, int] = {}
            for r in unjudged:
                reasons[r.why] = reasons.get(r.why, 0) + 1
            text += (
                f"; {len(unjudged)} not judged ("
                + "; ".join(f"{count}: {why}" for why, count in reasons.items())
                + ")"
            )
        lines.append(text + ". Details: the targets table in latest.md.")
        for r in sorted(missed, key=lambda r: -(r.factor or 0))[:3]:
            lines.append(
                f"  furthest off: {r.text} — {r.contender} on {r.loop}: {r.measured} "
                f"({r.factor:.2f}{X} short)"
            )
    return lines


def exit_lines(out: Path, status: int, fail_on_missed: bool) -> list[str]:
    where = out.resolve()
    try:
        shown = where.relative_to(ROOT)
    except ValueError:
        shown = where
    if where == RESULTS.resolve():
        place = f"{shown}/ (untracked; `make bench-publish` writes them to bench/results/)"
    elif where == PUBLISHED.resolve():
        place = f"{shown}/ (committed: the figures the README quotes)"
    else:
        place = f"{shown}/"
    if fail_on_missed:
        rule = "missed targets exit 1 (--fail-on-missed-targets)"
    else:
        rule = (
            "this is a report, so missed targets do not change the exit status "
            "(--fail-on-missed-targets makes them exit 1); the regression gate is "
            "`make bench-check`, which CI runs"
        )
    return [
        f"Results: latest.md, latest.json and latest.png in {place}.",
        f"Exit status {status}: {rule}. A failed run of ours always exits 1.",
    ]


def at_a_glance(summary: dict[str, Any]) -> list[str]:
    """One row per workload and loop, one column per contender measured: µs/job medians."""
    cfg = summary["config"]
    idx = {(m["workload"], m["loop"], m["contender"]): m for m in summary["medians"]}
    shown = [
        c
        for c in cfg["contenders"]
        if any(
            idx.get((w, lp, c), {}).get("ok_runs") for w in cfg["workloads"] for lp in cfg["loops"]
        )
    ]
    lines = [
        "| workload | loop | " + " | ".join(shown) + " |",
        "|---|---|" + "--:|" * len(shown),
    ]

    def cell(workload: str, loop: str, contender: str, field: str) -> str:
        m = idx.get((workload, loop, contender))
        if m is None:
            return ""
        if not m.get("ok_runs"):
            return "n/a" if m.get("skipped") or m.get("not_installed") else "FAILED"
        v = m.get(field)
        if v is None:
            return "—"
        text = f"{v:,.0f}" if field == "bytes_per_job" or v >= 100 else f"{v:.3g}"
        return f"**{text}**" if contender in C.OURS_CONTENDERS else text

    rows = [(w, "us_per_job", workload_label(w) + ", µs/job") for w in cfg["workloads"]]
    if "parked" in cfg["workloads"]:
        rows.append(("parked", "bytes_per_job", workload_label("parked") + ", bytes/job"))
    for workload, field, label in rows:
        for loop in cfg["loops"]:
            cells = [cell(workload, loop, c, field) for c in shown]
            lines.append(f"| {label} | {loop} | " + " | ".join(cells) + " |")
    return lines


def markdown(summary: dict[str, Any], results: list[TargetResult] | None = None) -> str:
    info, cfg = summary["machine"], summary["config"]
    results = results or []
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
        "Every contender (ours, the executor-free floor, and the peers) runs each workload in "
        "a fresh process, on the default asyncio loop and on uvloop, with the same job "
        "functions; W is max_workers. See bench/README.md for what each workload and "
        "contender is.",
        "",
        f"n per run: {n_text} · W: {w_text} · repeats: {rep_text} (medians shown) · "
        f"{fmt_duration(summary['duration_s'])} in all",
        "",
        "## Summary",
        "",
        *[f"- {line.strip()}" for line in summary_lines(summary, results)],
        "",
        "## At a glance",
        "",
        "Medians; lower is better. Ours in bold. n/a: not measured here (see the summary).",
        "",
        *at_a_glance(summary),
    ]
    if results:
        lines += [
            "",
            f"## Performance targets ({cfg.get('targets_file', 'bench/targets.json')})",
            "",
            "Judged from this run's medians. Timings on the shared 2-core machine move by "
            "±30 % from minute to minute: trust the ratios (taken side by side in one run) "
            "more than µs.",
            "",
            "| target | loop | ours | measured | target | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for r in results:
            lines.append(
                f"| {r.text} | {r.loop} | {r.contender} | {r.measured or '—'} | {r.limit} "
                f"| {r.verdict} |"
            )
    lines += [
        "",
        "## Every run",
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
        if m.get("skipped") or m.get("not_installed"):
            continue  # listed under "Not measured" in the summary
        if m.get("ok_runs"):
            notes = []
            if base_workload(m["workload"]) == "sleep10ms" and m.get("pct_of_ideal") is not None:
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
            row = ["FAILED", "", "", "", "", "", "", short(m.get("error"))]
        lines.append(
            f"| {m['workload']} | {m['loop']} | {m['contender']} | " + " | ".join(row) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError as exc:
        return f"matplotlib not available ({exc}); no chart"
    cfg = summary["config"]
    workloads, loops = cfg["workloads"], cfg["loops"]
    idx = {(m["workload"], m["loop"], m["contender"]): m for m in summary["medians"]}
    # Only contenders with a number somewhere: a peer skipped on this Python has no bar.
    contenders = [
        c
        for c in cfg["contenders"]
        if any(idx.get((w, lp, c), {}).get("us_per_job") for w in workloads for lp in loops)
    ]
    panels = [(w, "us_per_job") for w in workloads]
    if "parked" in workloads:
        panels.append(("parked", "bytes_per_job"))
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 4.2 * rows), squeeze=False)
    colors = plt.get_cmap("tab10")
    width = 0.8 / max(1, len(contenders))
    for ax, (workload, field) in zip(axes.flat, panels, strict=False):
        memory = field == "bytes_per_job"
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
        w = cfg["workers_per_workload"][workload]
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
            ax.set_title(
                f"{workload}: {workload_label(workload)}, n = {n:,}"
                if workload != "parked"
                else f"parked: time per job (n = W = {w:,})"
            )
        ax.grid(axis="y", which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    ncol = min(5, len(labels)) or 1
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    info = summary["machine"]
    fig.suptitle(
        f"coroexecutor benchmark — {info['cpu_model']}, {info['cpu_count']} cores, "
        f"Python {info['python']} (lower is better)"
    )
    legend_rows = (len(labels) + ncol - 1) // ncol
    fig.tight_layout(rect=(0, 0.025 * legend_rows / rows * 3, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
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
        help=f"runs per combination, medians reported (default 3, 1 when n >= {BIG_N:,})",
    )
    p.add_argument(
        "--contenders",
        default=",".join(C.DEFAULT_CONTENDERS),
        help="comma-separated, or 'all' (adds "
        f"{', '.join(C.EXTRA_CONTENDERS)}); default: %(default)s",
    )
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help="comma-separated; sleep10ms-w<W> for any W, sleep10ms for both defaults; "
        "default: %(default)s",
    )
    p.add_argument("--loops", default=",".join(LOOPS), help="default: %(default)s")
    p.add_argument(
        "--timeout", type=float, default=None, help="seconds per run (default 60 + 200 µs per job)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="results folder (default bench/results/local, untracked; bench/results is "
        "the committed one: make bench-publish)",
    )
    p.add_argument("--targets", type=Path, default=TARGETS, help="(bench/targets.json)")
    p.add_argument(
        "--fail-on-missed-targets",
        action="store_true",
        help="exit 1 if a target is missed (default: report it, exit 0)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip latest.png")
    args = p.parse_args(argv)
    all_contenders = C.DEFAULT_CONTENDERS + C.EXTRA_CONTENDERS
    args.contenders = split(args.contenders, all_contenders, "contender")
    args.workloads = split_workloads(args.workloads)
    args.loops = split(args.loops, LOOPS, "loop")
    if args.n <= 0 or (args.repeat is not None and args.repeat <= 0):
        p.error("--n and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        targets = load_targets(args.targets)
    except (OSError, ValueError) as exc:
        log(f"cannot read the targets: {exc}")
        return 2

    n_per = {w: workload_n(w, args.n) for w in args.workloads}
    w_per = {w: workload_workers(w) for w in args.workloads}
    rep_per = {w: args.repeat or default_repeat(n_per[w]) for w in args.workloads}

    # contender -> (python to run it with, or None and why not, and whether it is "skipped"
    # (cannot run on this Python) rather than "not installed")
    pythons: dict[str, tuple[Path | str | None, str | None, bool]] = {}
    venvs: dict[Path, tuple[Path | None, str | None]] = {}
    for c in args.contenders:
        why = C.needs_python(c)
        if why:
            pythons[c] = (None, why, True)
        elif c in OWN_VENV:
            spec = OWN_VENV[c]
            if spec.path not in venvs:
                venvs[spec.path] = ensure_venv(spec, log)
            python, why = venvs[spec.path]
            pythons[c] = (python, why, False)
        else:
            pythons[c] = (sys.executable, None, False)
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
        python, why, skipped = pythons[contender]
        if key in failed:
            continue  # failed or skipped in an earlier repeat: don't pay for it again
        if python is None:
            record = {
                "contender": contender,
                "workload": workload,
                "loop": loop,
                "n": n,
                "max_workers": workers,
                "ok": False,
                "skipped" if skipped else "not_installed": True,
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
            if base_workload(workload) == "sleep10ms":
                result += f"  {record.get('pct_of_ideal', 0):5.1f} % of ideal"
        elif record.get("skipped") or record.get("not_installed"):
            failed.add(key)
            result = f"not measured: {short(record.get('error'), 70)}"
        else:
            failed.add(key)
            result = f"FAILED: {short(record.get('error'), 70)}"
        log(
            f"[{i:3d}/{len(plan)}] {fmt_duration(elapsed)} elapsed, ETA "
            f"{fmt_duration(remaining)}  {workload:16s} {loop:7s} {contender:25s} "
            f"rep {rep + 1}  {result}"
        )
        if not record.get("ok") and record.get("stderr_tail"):
            log("    " + record["stderr_tail"].replace("\n", "\n    "))

    try:
        targets_file = str(args.targets.resolve().relative_to(ROOT))
    except ValueError:
        targets_file = str(args.targets)
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
            "venvs": {c: str(OWN_VENV[c].path) for c in args.contenders if c in OWN_VENV},
            "targets_file": targets_file,
            "argv": sys.argv,
        },
        "medians": [],
        "runs": runs,
    }
    summary["medians"] = summarise(runs)
    results = judge_targets(targets, summary)
    summary["targets"] = [{**r.__dict__, "verdict": r.verdict.replace("**", "")} for r in results]
    ours_failed = any(m["contender"] in C.OURS_CONTENDERS for m in failed_runs(summary))
    missed = any(r.status == "missed" for r in results)
    status = 1 if ours_failed or (missed and args.fail_on_missed_targets) else 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = markdown(summary, results)
    (args.out / "latest.md").write_text(table)
    if not args.no_plot:
        problem = plot(summary, args.out / "latest.png")
        if problem:
            log(problem)
    print(table)
    print("Summary")
    for line in summary_lines(summary, results) + exit_lines(
        args.out, status, args.fail_on_missed_targets
    ):
        print(f"  {line}")
    return status


if __name__ == "__main__":
    sys.exit(main())
