"""The root ``gitruns`` command group; each verb group lives in its own module."""

from __future__ import annotations

import click

from gitruns import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gitruns")
def main() -> None:
    """Experiment runs stored as Git branches: log, fork, compare, share."""
