"""No job leaves anything behind, on the engine this run tests (make test runs both).

scripts/leakcheck.py runs jobs of every kind (completed, failed, cancelled by handle,
timed out; ending in their first step or after suspending) and checks reference counts,
traced memory and RSS around them.  `make leakcheck` runs it with a million jobs of each
kind; here it runs with fewer, on both loops, in a fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import coroexecutor

SCRIPT = Path(__file__).parent.parent / "scripts" / "leakcheck.py"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_jobs_of_every_kind_leave_no_reference_or_memory_behind(loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)  # debug mode keeps tracebacks on purpose
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--jobs",
            "20000",
            *(["--uvloop"] if loop == "uvloop" else []),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    engine = "compiled" if coroexecutor.__compiled__ else "pure-Python"
    assert f"leakcheck: {engine} engine, {loop}" in done.stdout  # the engine under test
    assert done.stdout.count(" ok\n") == 6, done.stdout
    assert "leakcheck: no growth" in done.stdout
