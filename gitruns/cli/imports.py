"""``gitruns import FORMAT PATH...``: bring runs of other tools into the repository."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from gitruns.cli.common import dumps, failure, json_option, repo_option
from gitruns.errors import ImportFormatError, RunExistsError
from gitruns.importers import FORMATS, ImportReport, read_source, write_runs
from gitruns.importers.model import ImportedRun, ParsedSource

#: Imports with fewer rows than this finish before a bar would be worth drawing.
_BAR_FROM = 5000


def _format_help() -> str:
    width = max(len(name) for name in FORMATS)
    return "\n".join(
        f"  {name.ljust(width)}  {f.summary}" for name, f in FORMATS.items()
    )


def _describe(run: ImportedRun) -> str:
    parts = [f"{run.stats.rows} rows -> {len(run.records)} steps"]
    if run.fork_of is not None:
        parts.append(f"fork of {run.fork_of[0]} at step {run.fork_of[1]}")
    if run.conflicts:
        parts.append(f"{len(run.conflicts)} conflicts")
    return ", ".join(parts)


def _echo_parsed(parsed: ParsedSource, report: ImportReport | None) -> None:
    statuses = {id(o.run): o for o in report.outcomes} if report else {}
    for run in parsed.runs:
        outcome = statuses.get(id(run))
        head = outcome.status if outcome else "would import"
        where = outcome.path if outcome else run.run_id
        click.echo(f"{head:<12} {where}  {run.name or ''}  ({_describe(run)})")
        if outcome is not None and outcome.status in ("clash", "incomplete"):
            click.echo(f"    {outcome.message}")
        for note in run.notes:
            click.echo(f"    - {note}")
    for skipped in parsed.skipped:
        click.echo(f"{'skipped':<12} {skipped.path}: {skipped.reason}")
    for note in parsed.notes:
        click.echo(f"note: {note}")


def _as_json(parsed: ParsedSource, report: ImportReport | None) -> Any:
    statuses = {id(o.run): o for o in report.outcomes} if report else {}
    return {
        "runs": [
            {
                "run": statuses[id(r)].path if id(r) in statuses else r.run_id,
                "status": statuses[id(r)].status if id(r) in statuses else "dry-run",
                "name": r.name,
                "source": r.path,
                "rows": r.stats.rows,
                "steps": len(r.records),
                "fork_of": list(r.fork_of) if r.fork_of else None,
                "conflicts": len(r.conflicts),
                "notes": r.notes,
            }
            for r in parsed.runs
        ],
        "skipped": [{"path": s.path, "reason": s.reason} for s in parsed.skipped],
        "notes": parsed.notes,
    }


@click.command(
    "import",
    epilog="\b\nFormats:\n" + _format_help(),
)
@click.argument("format_name", metavar="FORMAT", type=click.Choice(list(FORMATS)))
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path())
@click.option(
    "--project",
    "-p",
    default=None,
    help="Project for every run (default: the W&B project or MLflow experiment "
    "the source names, else 'imported').",
)
@click.option(
    "--on-conflict",
    type=click.Choice(["last", "first", "error"]),
    default="last",
    show_default=True,
    help="Which value a step keeps when the source wrote a metric twice with "
    "different values; 'error' refuses the import.",
)
@click.option(
    "--include-deleted",
    is_flag=True,
    help="Also import runs the source marks deleted (MLflow).",
)
@click.option("--dry-run", "-n", is_flag=True, help="Read and report; write nothing.")
@json_option
@repo_option
def import_command(
    format_name: str,
    paths: tuple[str, ...],
    project: str | None,
    on_conflict: str,
    include_deleted: bool,
    dry_run: bool,
    as_json: bool,
    repo: str | None,
) -> None:
    """Import runs from another tool's logs at PATH (files or folders).

    Each run keeps its metric names and records its source in run.json;
    rows of one step merge, conflicting values are reported, a log whose
    steps restart becomes a run and forks, and importing the same source
    again writes nothing.
    """
    try:
        parsed = read_source(
            format_name,
            paths,
            on_conflict=on_conflict,  # type: ignore[arg-type]
            include_deleted=include_deleted,
        )
    except ImportFormatError as exc:
        if exc.path is None or not Path(exc.path).exists():
            raise
        # The usual cause of a log that does not parse: another format's file.
        raise ImportFormatError(
            f"{exc} (or, if it is not a {format_name} log, name its format: "
            "`gitruns import --help` lists them)",
            path=exc.path,
        ) from exc
    report = None
    if not dry_run:
        total = sum(len(r.records) for r in parsed.runs)
        # Not in a pipe or a log file, where click would print its label alone.
        if total >= _BAR_FROM and sys.stderr.isatty():
            with click.progressbar(
                length=total, label="importing", file=sys.stderr
            ) as bar:
                report = write_runs(
                    parsed, repo=repo, project=project, progress=bar.update
                )
        else:
            report = write_runs(parsed, repo=repo, project=project)

    if as_json:
        click.echo(dumps(_as_json(parsed, report)))
    else:
        _echo_parsed(parsed, report)
        if report is not None:
            click.echo(
                f"{report.count('imported')} imported, {report.count('exists')} "
                f"already imported, {len(parsed.skipped)} skipped",
                err=True,
            )
    if report is not None:
        refused = [o for o in report.outcomes if o.status in ("clash", "incomplete")]
        if refused:
            raise failure(
                f"{len(refused)} run(s) not written: {refused[0].message}",
                RunExistsError.exit_code,
            )
