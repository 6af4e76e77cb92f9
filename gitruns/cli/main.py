"""The root ``gitruns`` command group; each verb group lives in its own module."""

from __future__ import annotations

import click

from gitruns import __version__
from gitruns.cli.branch import fork_command, recover_command, rewind_command
from gitruns.cli.common import GitRunsGroup
from gitruns.cli.demo import demo_command
from gitruns.cli.export import export_command, plot_command, report_command
from gitruns.cli.hooks import hooks, setup, textconv
from gitruns.cli.imports import import_command
from gitruns.cli.remote import fetch, pull, push
from gitruns.cli.runs import (
    diff_command,
    history_command,
    lineage_command,
    runs_command,
    show_command,
)


@click.group(cls=GitRunsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gitruns")
def main() -> None:
    """Experiment runs stored as Git branches: log, fork, compare, share.

    Exit codes: 0 ok, 1 other error (such as a missing optional extra), 2 bad
    input or usage, 3 run or metric not found, or ambiguous run, 4 run exists or
    is locked, 5 malformed chunk, 6 repository error, 7 remote error, 8 import
    error.
    """


for command in (
    runs_command,
    show_command,
    history_command,
    lineage_command,
    diff_command,
    fork_command,
    rewind_command,
    recover_command,
    demo_command,
    push,
    pull,
    fetch,
    import_command,
    export_command,
    plot_command,
    report_command,
    hooks,
    setup,
    textconv,
):
    main.add_command(command)
