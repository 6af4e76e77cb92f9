"""The ``gitruns`` command line (also ``git runs``): a thin layer over the library."""

from __future__ import annotations

from gitruns.cli.main import main

__all__ = ["main"]
