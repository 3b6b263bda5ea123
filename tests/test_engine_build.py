"""The compiled engine and its pure-Python fallback: which one loads, and how it is built.

The behaviour of both engines is the rest of the suite, which `make test` runs once on
each (COROEXECUTOR_EXPECT_ENGINE makes a run fail if the other one loaded).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import coroexecutor

PACKAGE = Path(coroexecutor.__file__).parent
ROOT = Path(__file__).parent.parent
BUILT = sorted(PACKAGE.glob("_cengine.*"))


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COROEXECUTOR_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


CHECK = (
    "import asyncio, coroexecutor\n"
    "async def job(x):\n"
    "    await asyncio.sleep(0)\n"
    "    return x * 2\n"
    "async def main():\n"
    "    async with coroexecutor.CoroutineExecutor(max_workers=3) as exe:\n"
    "        return [r async for r in exe.map(job, range(10))]\n"
    "assert asyncio.run(main()) == [x * 2 for x in range(10)]\n"
    "print(coroexecutor.__compiled__, coroexecutor.CoroutineExecutor.__mro__[1].__module__)\n"
)


def test_compiled_says_which_engine_runs_the_jobs() -> None:
    assert isinstance(coroexecutor.__compiled__, bool)
    engine = coroexecutor.CoroutineExecutor.__mro__[1]
    expected = "coroexecutor._cengine" if coroexecutor.__compiled__ else "coroexecutor._engine"
    assert engine.__module__ == expected


needs_build = pytest.mark.skipif(not BUILT, reason="the compiled engine is not built here")


@needs_build
def test_no_extensions_forces_the_pure_engine() -> None:
    done = _python(CHECK, COROEXECUTOR_NO_EXTENSIONS="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "coroexecutor._engine"]
    done = _python(CHECK)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "coroexecutor._cengine"]


@needs_build
def test_an_engine_compiled_from_an_older_source_is_not_used(tmp_path: Path) -> None:
    copy = tmp_path / "coroexecutor"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "_engine.py").open("a") as f:
        f.write("\n# edited after the build\n")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + CHECK
    done = _python(code)
    assert done.returncode == 1, done.stdout  # -W error: the warning is raised
    assert "was compiled from an older _engine.py" in done.stderr
    assert "rebuild with: pip install -e ." in done.stderr
    relaxed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("COROEXECUTOR_")},
    )
    assert relaxed.returncode == 0, relaxed.stderr
    assert relaxed.stdout.split() == ["False", "coroexecutor._engine"]


packaging = pytest.mark.skipif(
    not os.environ.get("COROEXECUTOR_PACKAGING_TESTS"),
    reason="builds an sdist and two wheels (~1 min): set COROEXECUTOR_PACKAGING_TESTS=1",
)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (archive,) = out.glob("coroexecutor-*.tar.gz")
    return archive


def _wheel(sdist: Path, out: Path, **env: str) -> tuple[list[str], str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COROEXECUTOR_")}
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(sdist)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("coroexecutor-*.whl")
    return zipfile.ZipFile(wheel).namelist(), done.stdout + done.stderr


@packaging
def test_the_sdist_compiles_the_engine(sdist: Path, tmp_path: Path) -> None:
    names, _ = _wheel(sdist, tmp_path)
    assert any(n.startswith("coroexecutor/_cengine.") for n in names), names
    assert "coroexecutor/_engine.py" in names  # the fallback ships too
    assert "coroexecutor/py.typed" in names


@packaging
def test_without_a_compiler_the_install_warns_once_and_ships_the_pure_engine(
    sdist: Path, tmp_path: Path
) -> None:
    names, output = _wheel(sdist, tmp_path, CC="/bin/false")
    assert not any("_cengine." in n for n in names), names
    assert "coroexecutor/_engine.py" in names
    warnings = [line for line in output.splitlines() if "WARNING: coroexecutor" in line]
    assert len(warnings) == 1, output[-3000:]
    assert "installing the pure-Python engine" in warnings[0]
