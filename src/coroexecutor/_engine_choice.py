"""Which engine runs jobs: the compiled one where it was built, else the pure-Python one.

``_engine.py`` is the one source of both.  Where a C compiler was present at install,
setup.py compiled a copy of it with Cython as ``coroexecutor._cengine``, with the C
fields declared in ``_engine.pxd``.  Setting ``COROEXECUTOR_NO_EXTENSIONS`` to any
non-empty value before the import forces the pure-Python engine, as aiohttp's
``AIOHTTP_NO_EXTENSIONS`` does.  ``coroexecutor.__compiled__`` says which one loaded.

A compiled engine built from another ``_engine.py`` than the one beside it (an
editable install whose engine was edited since) is not used: it warns and the
pure-Python engine runs, so a test run never tests stale code.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ("COMPILED", "_Engine", "_Feed")


def _built_from_this_source(module: ModuleType) -> bool:
    try:
        source = Path(__file__).with_name("_engine.py").read_bytes()
    except OSError:  # pragma: no cover - installed without its sources: trust the build
        return True
    built_from: str = module._SOURCE_SHA256
    return hashlib.sha256(source).hexdigest() == built_from


COMPILED = False
if not os.environ.get("COROEXECUTOR_NO_EXTENSIONS"):
    try:
        from . import _cengine  # type: ignore[attr-defined]
    except ImportError:  # built without a C compiler, or run from a bare source tree
        pass
    else:
        if _built_from_this_source(_cengine):
            COMPILED = True
        else:
            warnings.warn(
                f"coroexecutor: {_cengine.__file__} was compiled from an older _engine.py; "
                "running the pure-Python engine (rebuild with: pip install -e .)",
                RuntimeWarning,
                stacklevel=2,
            )

if COMPILED and not TYPE_CHECKING:  # the type checker reads the one source, _engine.py
    _Engine = _cengine._Engine
    _Feed = _cengine._Feed
else:
    from ._engine import _Engine, _Feed
