"""Run each step of a sweep in a fresh Python process and collect what it measured."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._model import StepConfig, StepResult
from ._recommend import effective_rate

__all__ = ("fastest_runs", "run_step")

STARTUP_ALLOWANCE = 30.0  # seconds a step's process may take beyond its budgets
RAMP_ALLOWANCE = 0.001  # and per worker, to start the first max_workers jobs


def _child_env() -> dict[str, str]:
    """The step's environment: ours, with this coroexecutor importable first."""
    import coroexecutor

    env = dict(os.environ)
    root = str(Path(coroexecutor.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # A step measures the loop as it runs in production, not under asyncio's debug mode.
    env.pop("PYTHONASYNCIODEBUG", None)
    return env


def run_step(
    config: StepConfig, on_progress: Callable[[dict[str, Any]], None] | None = None
) -> StepResult:
    """Run one step in a new process; a step that fails comes back with ``error`` set."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "coroexecutor.plan._step"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
        text=True,
        encoding="utf-8",
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    # The job may print a lot to stderr: keep only the end, for the error message.
    tail: collections.deque[str] = collections.deque(maxlen=20)
    reader = threading.Thread(target=tail.extend, args=(proc.stderr,), daemon=True)
    reader.start()
    limit = (
        config.duration
        + config.grace
        + STARTUP_ALLOWANCE * (2 if config.shards > 1 else 1)
        + RAMP_ALLOWANCE * config.max_workers * config.shards
    )
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    watchdog = threading.Timer(limit, kill)
    watchdog.daemon = True
    watchdog.start()
    result: StepResult | None = None
    try:
        proc.stdin.write(json.dumps(config.to_json()))
        proc.stdin.close()
        for line in proc.stdout:
            message = json.loads(line)
            if "result" in message:
                result = StepResult.from_json(message["result"])
            elif on_progress is not None:
                on_progress(message)
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        watchdog.cancel()
        reader.join(timeout=5)
        proc.stdout.close()
        proc.stderr.close()
    if result is not None and proc.returncode == 0:
        return result
    if killed.is_set():
        why = f"the step overran its budget ({limit:.0f} s) and was killed"
    else:
        lines = [t.strip() for t in tail if t.strip()]
        why = lines[-1] if lines else f"its process exited with status {proc.returncode}"
    return StepResult(max_workers=config.max_workers, error=why)


def fastest_runs(runs: Sequence[StepResult], *, correct: bool = True) -> list[StepResult]:
    """One result per max_workers, ascending: its fastest run (or its error if none ran).

    Other processes can only slow a step down, so the fastest of several runs is the
    closest to what the machine does for this job alone.
    """

    def merit(step: StepResult) -> tuple[bool, bool, float]:
        return step.error is None, step.jobs > 0, effective_rate(step, correct=correct)

    by_workers: dict[int, StepResult] = {}
    for step in runs:
        kept = by_workers.get(step.max_workers)
        if kept is None or merit(step) > merit(kept):
            by_workers[step.max_workers] = step
    return [by_workers[w] for w in sorted(by_workers)]
