"""Build the compiled engine: ``_engine.py`` compiled with Cython as ``coroexecutor._cengine``.

Everything else about the package is in pyproject.toml.  The engine has one source,
``src/coroexecutor/_engine.py``; ``_engine.pxd`` beside it gives its classes C fields.
Cython names a module after its file, so both are copied to build/ as ``_cengine.*``
and compiled from there; the copy records the SHA-256 of the source it came from, so
that an engine compiled from an older ``_engine.py`` is never used (_engine_choice.py).

Without a C compiler (or with COROEXECUTOR_NO_EXTENSIONS set) the install goes on
with the pure-Python engine, after a one-line warning, as aiohttp and yarl do.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
SOURCE = HERE / "src" / "coroexecutor" / "_engine.py"
DECLARATIONS = SOURCE.with_suffix(".pxd")
GENERATED = HERE / "build" / "cengine"


def source_digest() -> str:
    """What _engine_choice.py compares with the running _engine.py."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def cengine_source() -> str:
    """Copy the engine to build/cengine/coroexecutor/_cengine.{py,pxd} for Cython."""
    package = GENERATED / "coroexecutor"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    text = SOURCE.read_text()
    text += f'\n_SOURCE_SHA256 = "{source_digest()}"  # added by setup.py\n'
    target = package / "_cengine.py"
    if not target.exists() or target.read_text() != text:  # keep Cython's cache valid
        target.write_text(text)
    pxd = package / "_cengine.pxd"
    if not pxd.exists() or pxd.read_text() != DECLARATIONS.read_text():
        pxd.write_text(DECLARATIONS.read_text())
    return str(target.relative_to(HERE))


class OptionalBuildExt(build_ext):
    """Build the engine if possible; otherwise warn in one line and go on without it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (distutils' CCompilerError & co.)
            self._fall_back(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fall_back(exc)

    @staticmethod
    def _fall_back(exc: BaseException) -> None:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        print(
            f"WARNING: coroexecutor: the compiled engine was not built ({reason}); "
            "installing the pure-Python engine",
            file=sys.stderr,
        )


def extensions() -> list[Extension]:
    if os.environ.get("COROEXECUTOR_NO_EXTENSIONS"):
        print("coroexecutor: COROEXECUTOR_NO_EXTENSIONS is set: pure-Python engine only")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:  # only when built without build isolation
        OptionalBuildExt._fall_back(exc)
        return []
    return cythonize(
        [Extension("coroexecutor._cengine", [cengine_source()])],
        build_dir=str(GENERATED / "c"),
        compiler_directives={
            "language_level": 3,
            "binding": False,  # C methods, not cyfunctions: cheaper calls
        },
        quiet=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
