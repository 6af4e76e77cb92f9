"""gitruns: experiment runs stored as Git branches.

A training script calls :func:`init`, :meth:`Run.log` per step and
:meth:`Run.finish`; :class:`Api` reads runs back.
"""

from __future__ import annotations

from gitruns.api import Api
from gitruns.errors import GitRunsError
from gitruns.reader import RunView
from gitruns.run import Run, init

__version__ = "0.1.0"

__all__ = ["Api", "GitRunsError", "Run", "RunView", "__version__", "init"]
