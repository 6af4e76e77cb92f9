"""Reading commands: runs, show, history, lineage, diff."""

from __future__ import annotations

import csv
import sys
from typing import Any

import click

from gitruns.cli.common import (
    dumps,
    echo_mapping,
    echo_table,
    fmt,
    json_option,
    split_keys,
    with_store,
)
from gitruns.committer import journal_dir
from gitruns.diff import MISSING, diff_runs
from gitruns.errors import GitRunsError, MetricNotFoundError
from gitruns.journal import Journal
from gitruns.lineage import ancestors, descendants
from gitruns.reader import RunView, readable_runs
from gitruns.refs import RunRef
from gitruns.remote import tracked_run_counts
from gitruns.store import RunStore
from gitruns.summary import visible


def _view(store: RunStore, path: str) -> RunView:
    return RunView(store, store.resolve(path))


def _warn_if_journaled(store: RunStore, view: RunView) -> None:
    """Say on stderr that the run has logged steps its branch does not hold yet.

    After a kill -9 a run looks cut short until its journal is committed; the
    same holds for a live writer between two commits.
    """
    if Journal(journal_dir(store, view.ref)).files():
        click.echo(
            f"note: {view.path} has logged steps that are not committed yet: its "
            "writer is live, or died; once no process writes it, `gitruns "
            f"recover {view.path}` commits them",
            err=True,
        )


@click.command("runs")
@click.option("--project", "-p", default=None, help="Only this project.")
@json_option
@with_store
def runs_command(store: RunStore, project: str | None, as_json: bool) -> None:
    """List the runs of the repository."""

    def skipped(ref: RunRef, exc: GitRunsError) -> None:
        click.echo(f"warning: skipped run {ref.path}: {exc}", err=True)

    views = readable_runs(store, project, RunView, skipped, everything=False)
    records: list[dict[str, Any]] = [
        {
            "run": v.path,
            "name": v.name,
            "state": v.state,
            "last_step": v.last_step,
            "fork_from": v.fork_from,
            "updated": v.info.get("updated"),
        }
        for v in views
    ]
    if as_json:
        click.echo(dumps(records))
        return
    if not records:
        click.echo(f"no runs in {store.git_dir}", err=True)
        tracked = tracked_run_counts(store.repo)
        for remote, count in sorted(tracked.items()):
            click.echo(
                f"{count} run(s) are on remote {remote!r} (refs/remotes/{remote}/"
                f"runs/); bring them in with `gitruns pull {remote}`",
                err=True,
            )
        return
    echo_table(
        ["RUN", "NAME", "STATE", "LAST STEP", "FORKED FROM", "UPDATED"],
        [
            [
                r["run"],
                r["name"],
                r["state"],
                r["last_step"],
                f"{r['fork_from']['run']}@{r['fork_from']['step']}"
                if r["fork_from"]
                else "",
                r["updated"],
            ]
            for r in records
        ],
    )


@click.command("show")
@click.argument("run")
@json_option
@with_store
def show_command(store: RunStore, run: str, as_json: bool) -> None:
    """Show a run: identity, lineage, config and summary."""
    view = _view(store, run)
    if as_json:
        click.echo(
            dumps(
                {
                    "run": view.info,
                    "branch": view.branch,
                    "commit": view.tip,
                    "config": view.config,
                    "summary": view.summary,
                }
            )
        )
        return
    info = view.info
    _warn_if_journaled(store, view)
    click.echo(click.style(f"{view.path}", bold=True) + f"  ({view.name})")
    click.echo(f"  state      {view.state}")
    click.echo(f"  steps      {_span(view)}")
    click.echo(f"  branch     {view.branch}  ({view.tip[:10]})")
    click.echo(f"  created    {info.get('created')}  updated {info.get('updated')}")
    if view.fork_from:
        f = view.fork_from
        click.echo(
            f"  forked     from {f['run']} at step {f['step']} ({f['commit'][:10]})"
        )
    for rewind in info.get("rewinds") or []:
        click.echo(f"  rewound    to step {rewind['step']} at {rewind['at']}")
    code = info.get("code")
    if code:
        dirty = " (dirty)" if code.get("dirty") else ""
        click.echo(
            f"  code       {code.get('commit', '')[:10]} on {code.get('branch')}{dirty}"
        )
    if view.source:
        click.echo(f"  imported   {dumps(view.source)}")
    echo_mapping("config", view.config)
    echo_mapping("summary", visible(view.summary, view.info.get("metrics") or {}))


@click.command("history")
@click.argument("run")
@click.option(
    "--keys",
    "-k",
    multiple=True,
    help="Only steps at which all these metrics were logged (repeat or "
    "comma-separate).",
)
@click.option("--min-step", type=int, default=None, help="First step (inclusive).")
@click.option("--max-step", type=int, default=None, help="Stop before this step.")
@click.option(
    "--format",
    "-f",
    "form",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table for people, csv, or json (one object per line).",
)
@with_store
def history_command(
    store: RunStore,
    run: str,
    keys: tuple[str, ...],
    min_step: int | None,
    max_step: int | None,
    form: str,
) -> None:
    """Print a run's metric history, one row per step."""
    view = _view(store, run)
    _warn_if_journaled(store, view)
    wanted = split_keys(keys)
    rows_list = list(view.scan_history(wanted, min_step=min_step, max_step=max_step))
    if not rows_list and wanted:
        _explain_no_rows(view, wanted)
    if form == "json":
        for row in rows_list:
            click.echo(dumps(row))
        return
    columns = ["_step"] + sorted(
        {k for r in rows_list for k in r} - {"_step", "_timestamp"}
    )
    if form == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in rows_list:
            writer.writerow([_csv(row.get(c)) for c in columns])
        return
    echo_table(columns, ([row.get(c) for c in columns] for row in rows_list))


def _explain_no_rows(view: RunView, wanted: list[str]) -> None:
    # Tell "never logged" (an error) from "never logged together" (a note).
    logged = {name for chunk in view.chunks() for name in chunk.columns}
    for key in wanted:
        if key not in logged and key not in ("_step", "_timestamp"):
            raise MetricNotFoundError(view.path, key, sorted(logged))
    click.echo(f"no step of {view.path} has all of: {', '.join(wanted)}", err=True)


def _cell(value: Any) -> str:
    if value is MISSING:
        return "(missing)"
    if value is None:
        return "None"
    return fmt(value) or repr(value)


def _span(view: RunView) -> str:
    if view.first_step is None or view.last_step is None:
        return "none"
    return f"{view.first_step}..{view.last_step}"


def _csv(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


@click.command("lineage")
@click.argument("run")
@json_option
@with_store
def lineage_command(store: RunStore, run: str, as_json: bool) -> None:
    """Show a run's ancestors and descendants with their fork steps."""
    ref = store.resolve(run)
    up = ancestors(store, ref)
    down = descendants(store, ref)
    if as_json:
        click.echo(
            dumps(
                {
                    "run": ref.path,
                    "ancestors": [vars(e) for e in up],
                    "descendants": [vars(e) for e in down],
                }
            )
        )
        return
    chain = [ref.path]
    for edge in up:
        chain.append(f"{edge.parent} (forked at step {edge.step})")
    click.echo(
        "ancestors:   " + (" <- ".join(chain) if up else f"{ref.path} (a root run)")
    )
    if not down:
        click.echo("descendants: none")
        return
    click.echo("descendants:")
    depth = {ref.path: 0}
    for edge in down:
        depth[edge.child] = depth.get(edge.parent, 0) + 1
        indent = "  " * depth[edge.child]
        click.echo(
            f"{indent}{edge.child}  forked from {edge.parent} at step {edge.step}"
        )


@click.command("diff")
@click.argument("a")
@click.argument("b")
@json_option
@with_store
def diff_command(store: RunStore, a: str, b: str, as_json: bool) -> None:
    """Compare two runs: config, summary, and where their histories diverge."""
    view_a, view_b = _view(store, a), _view(store, b)
    result = diff_runs(store, view_a, view_b)
    if as_json:
        click.echo(dumps(result.as_dict()))
        return
    click.echo(f"--- {result.a}\n+++ {result.b}")
    shared = result.last_shared_step
    # A run's last step with data may lie before the step it was forked at.
    ends = [
        -1 if last is None else last for last in (view_a.last_step, view_b.last_step)
    ]
    if result.common_run is None or shared is None:
        click.echo("history: no shared history")
    elif max(ends) < 0:
        click.echo("history: neither run has logged a step")
    elif min(ends) < 0:
        empty = result.a if ends[0] < 0 else result.b
        click.echo(f"history: {empty} has logged no step")
    elif ends[0] == ends[1] and ends[0] <= shared:
        click.echo(f"history: the same through step {ends[0]} (of {result.common_run})")
    elif min(ends) <= shared:
        short, long = (
            (result.a, result.b) if ends[0] < ends[1] else (result.b, result.a)
        )
        click.echo(
            f"history: all of {short} (through step {min(ends)}, of "
            f"{result.common_run}) is in {long}, which goes on to step {max(ends)}"
        )
    else:
        click.echo(
            f"history: shared up to step {shared} "
            f"(of {result.common_run}), diverges at step {shared + 1}"
        )
    for title, changes in (("config", result.config), ("summary", result.summary)):
        click.echo(click.style(title, bold=True) + ("" if changes else ": same"))
        for key, (x, y) in changes.items():
            click.echo(f"  {key}: {_cell(x)} -> {_cell(y)}")
    if result.metrics:
        click.echo(
            click.style("metrics", bold=True) + "  (at divergence -> last of each)"
        )
        echo_table(
            ["  METRIC", "AT DIVERGENCE", result.a, result.b],
            [
                ["  " + m.name, m.at_divergence, m.last_a, m.last_b]
                for m in result.metrics
            ],
        )
