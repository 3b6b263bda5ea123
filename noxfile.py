"""The test matrix: every Python from 3.11 up found on this machine x both builds.

``make test`` runs everything on the running Python; ``make test-all`` (and CI) then runs
this: ``nox`` makes one virtualenv per Python and build and runs the suite there.

* ``compiled``: an install that compiles the engine (a C compiler is needed; the suite
  fails at once if the pure-Python engine loaded instead).
* ``pure``: an install with ``COROEXECUTOR_NO_EXTENSIONS=1``, as on a machine without a
  C compiler: the compiler is not run and the pure-Python engine is the only one.

Interpreters are looked up on PATH (``python3.12``) and in pyenv's versions; a Python the
machine lacks is reported as skipped, not failed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nox

PYTHONS = ["3.11", "3.12", "3.13", "3.14"]

nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = False
nox.options.reuse_existing_virtualenvs = True  # reinstalled by the session when needed


def _pyenv_bins() -> list[str]:
    """pyenv's interpreters are not on PATH unless its shims are: add their bin/."""
    try:
        root = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return []
    bins = []
    for version in PYTHONS:
        found = sorted(Path(root, "versions").glob(f"{version}.*"), key=_version_key)
        if found:
            bins.append(str(found[-1] / "bin"))
    return bins


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in path.name.split("."))


os.environ["PATH"] = os.pathsep.join([*_pyenv_bins(), os.environ.get("PATH", "")])


@nox.session(python=PYTHONS)
@nox.parametrize("build", ["compiled", "pure"])
def tests(session: nox.Session, build: str) -> None:
    """The suite on one Python and one build."""
    env = {"COROEXECUTOR_EXPECT_ENGINE": build}
    if build == "pure":
        env["COROEXECUTOR_NO_EXTENSIONS"] = "1"
    # --no-build-isolation is not used: the build backend and Cython come pinned from
    # pyproject.toml, as for a user's pip install.
    session.install("-q", "-e", ".[test]", env=env)
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *session.posargs, env=env)
