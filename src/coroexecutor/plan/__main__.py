"""``python -m coroexecutor.plan``: the capacity planner (also ``coroexecutor-plan``)."""

import sys

from ._cli import main

__all__ = ("main",)

if __name__ == "__main__":
    sys.exit(main())
