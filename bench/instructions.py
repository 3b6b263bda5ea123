"""Instructions per job, counted by valgrind's callgrind: repeatable on a noisy machine.

Wall time on a shared 2-core machine moves by 30 % from one minute to the next; the number
of instructions a job costs does not.  This runs a workload at two sizes under
``valgrind --tool=callgrind`` and prints (instructions(b) - instructions(a)) / (b - a),
which cancels start-up and teardown.  Use it to compare two versions of the hot path:

    python -m bench.instructions submit map sleep0 bare-sleep0 floor
    python -m bench.instructions submit --src /tmp/old/src     # another checkout's src/

It needs valgrind (``apt-get install valgrind``); it is a development tool, not run in CI.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each workload runs n jobs; what is measured is the cost of one more job.
WORKLOADS = {
    "floor": """
async def main(n):
    for _ in range(n):
        await noop()
""",
    "submit": """
async def main(n):
    async with CoroutineExecutor(max_workers=1000) as exe:
        for _ in range(n):
            await exe.submit(noop)
""",
    "map": """
async def main(n):
    async with CoroutineExecutor(max_workers=1000) as exe:
        async for _ in exe.map(noop1, range(n)):
            pass
""",
    "sleep0": """
async def main(n):
    async with CoroutineExecutor(max_workers=1000) as exe:
        for _ in range(n):
            await exe.submit(sleep0)
""",
    "map-sleep0": """
async def main(n):
    async with CoroutineExecutor(max_workers=1000) as exe:
        async for _ in exe.map(sleep01, range(n)):
            pass
""",
    "bare-sleep0": """
async def main(n):
    async def loop(k):
        for _ in range(k):
            await asyncio.sleep(0)
    await asyncio.gather(*[loop(n // 1000) for _ in range(1000)])
""",
    # make bench's floor for yield-once jobs: the job function awaited in a loop.
    "floor-sleep0": """
async def main(n):
    async def loop(k):
        for _ in range(k):
            await sleep0()
    await asyncio.gather(*[loop(n // 1000) for _ in range(1000)])
""",
}

PRELUDE = """
import asyncio, sys
from coroexecutor import CoroutineExecutor
async def noop(): pass
async def noop1(x): pass
async def sleep0(): await asyncio.sleep(0)
async def sleep01(x): await asyncio.sleep(0)
"""

EPILOGUE = """
n = int(sys.argv[1])
if sys.argv[2] == "uvloop":
    import uvloop
    uvloop.run(main(n))
else:
    asyncio.run(main(n))
"""


def instructions(script: str, n: int, loop: str, src: Path) -> int:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-c",
            script,
            str(n),
            loop,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if not found:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the src/ to import")
    parser.add_argument("--sizes", type=int, nargs=2, default=[10_000, 30_000], metavar="N")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("bench.instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    a, b = args.sizes
    print(f"{'workload':<12} {'instructions/job':>16}   ({args.loop}, {args.src})")
    for name in args.workloads:
        script = PRELUDE + WORKLOADS[name] + EPILOGUE
        ia = instructions(script, a, args.loop, args.src)
        ib = instructions(script, b, args.loop, args.src)
        print(f"{name:<12} {(ib - ia) // (b - a):>16,}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
