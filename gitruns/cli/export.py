"""Commands that take runs out: export (CSV, JSON lines), plot and report."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from gitruns.cli.common import split_keys, with_store
from gitruns.export import FORMATS, ExportFormat, export_history
from gitruns.reader import RunView
from gitruns.store import RunStore

if TYPE_CHECKING:
    from gitruns.report import ImageKind

output_file = click.Path(dir_okay=False, writable=True, path_type=Path)


@contextmanager
def _replacing(path: Path) -> Iterator[TextIO]:
    """Write beside ``path`` and move into place only once all of it is written."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@click.command("export")
@click.argument("run")
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(FORMATS),
    default="csv",
    show_default=True,
    help="csv (a header, one row per step) or jsonl (one JSON object per step).",
)
@click.option(
    "--output",
    "-o",
    type=output_file,
    default=None,
    help="File to write (default: standard output).",
)
@click.option(
    "--keys",
    "-k",
    multiple=True,
    help="Only steps with these metrics, only these columns (repeat or comma-list).",
)
@click.option("--min-step", type=int, default=None, help="First step (inclusive).")
@click.option("--max-step", type=int, default=None, help="Stop before this step.")
@with_store
def export_command(
    store: RunStore,
    run: str,
    fmt: ExportFormat,
    output: Path | None,
    keys: tuple[str, ...],
    min_step: int | None,
    max_step: int | None,
) -> None:
    """Write RUN's history as CSV or JSON lines, values exact.

    Every step is one row (CSV) or one object (JSON lines) with _step,
    _timestamp and the metrics logged at it. Floats are written so that they
    read back bit for bit; NaN and the infinities as nan/inf (CSV) or
    NaN/Infinity (JSON lines). CSV cannot tell a number from text that looks
    like one, nor None from "not logged"; JSON lines can.
    """
    view = RunView(store, store.resolve(run))
    wanted = split_keys(keys)
    if output is None or str(output) == "-":
        count = export_history(view, sys.stdout, fmt, wanted, min_step, max_step)
        sys.stdout.flush()
        return
    with _replacing(output) as handle:
        count = export_history(view, handle, fmt, wanted, min_step, max_step)
    click.echo(f"exported {count} steps of {view.path} to {output}", err=True)


@click.command("plot")
@click.argument("runs", nargs=-1, required=True)
@click.option("--metric", "-m", required=True, help="The metric to draw.")
@click.option(
    "--x",
    "x_axis",
    default="_step",
    show_default=True,
    help="The x axis: _step, _timestamp, or a metric such as epoch.",
)
@click.option(
    "--output",
    "-o",
    type=output_file,
    required=True,
    help="Image file; .png, .svg or .pdf.",
)
@click.option("--title", default=None, help="Title (default: the metric).")
@click.option(
    "--lineage",
    "with_lineage",
    is_flag=True,
    help="Also draw every ancestor and fork of the runs.",
)
@with_store
def plot_command(
    store: RunStore,
    runs: tuple[str, ...],
    metric: str,
    x_axis: str,
    output: Path,
    title: str | None,
    with_lineage: bool,
) -> None:
    """Draw a metric of RUNS, one line per run, forks drawn off their parents.

    A fork's line starts at its fork point on its parent's line, marked with
    a diamond labelled with the fork step; the legend names each run and
    where it was forked. Needs matplotlib (pip install 'gitruns[plot]').
    """
    from gitruns.plot import family, image_format, plot_runs

    try:
        image_format(output)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--output") from None
    refs = [store.resolve(r) for r in runs]
    if with_lineage:
        refs = family(store, refs)
    views = [RunView(store, ref) for ref in refs]
    curves = plot_runs(store, views, metric, output, x_axis, title)
    forks = sum(1 for c in curves if c.fork)
    click.echo(
        f"drew {metric} of {len(curves)} run(s) ({forks} fork(s)) to {output}", err=True
    )


@click.command("report")
@click.argument("run")
@click.option(
    "--output",
    "-o",
    type=output_file,
    default=None,
    help="HTML file to write (default: <project>-<run_id>.html here).",
)
@click.option(
    "--metric",
    "-m",
    "metrics",
    multiple=True,
    help="Metrics to plot (repeatable; default: every metric with numbers).",
)
@click.option(
    "--lineage/--no-lineage",
    "with_lineage",
    default=True,
    show_default=True,
    help="Draw the run's ancestors and forks in its plots.",
)
@click.option(
    "--images",
    type=click.Choice(["svg", "png"]),
    default="svg",
    show_default=True,
    help="Plots as inline SVG or as embedded PNG.",
)
@with_store
def report_command(
    store: RunStore,
    run: str,
    output: Path | None,
    metrics: tuple[str, ...],
    with_lineage: bool,
    images: ImageKind,
) -> None:
    """Write one self-contained HTML page about RUN.

    The page holds the run's identity, lineage, plots, config and summary,
    and loads nothing from anywhere: open it from disk in any browser. Needs
    matplotlib (pip install 'gitruns[plot]').
    """
    from gitruns.report import write_report

    view = RunView(store, store.resolve(run))
    out = output or Path(f"{view.project}-{view.id}.html")
    write_report(store, view, out, split_keys(metrics), with_lineage, images)
    click.echo(f"wrote the report of {view.path} to {out}", err=True)
