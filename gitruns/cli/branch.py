"""Commands that write history: fork, rewind, recover."""

from __future__ import annotations

import json

import click

from gitruns.cli.common import failure, with_store
from gitruns.errors import (
    GitRunsError,
    InvalidArgumentError,
    RunExistsError,
    RunLockedError,
)
from gitruns.fork import ForkPoint, fork_run, rewind_run
from gitruns.refs import RunRef, check_name, new_run_id
from gitruns.run import new_run_info
from gitruns.store import RunStore
from gitruns.writer import RunWriter, WriterOptions, journaled_runs


@click.command("fork")
@click.argument("run")
@click.option(
    "--step",
    "step",
    required=True,
    help="Last step the fork inherits (or metric=value).",
)
@click.option(
    "--id", "new_id", default=None, help="Id of the new run (default: random)."
)
@click.option("--name", default=None, help="Display name of the new run.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Config to change in the fork (repeatable; VALUE is JSON or text).",
)
@with_store
def fork_command(
    store: RunStore,
    run: str,
    step: str,
    new_id: str | None,
    name: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Fork RUN after a step into a new run that shares its history."""
    source = store.resolve(run)
    point = ForkPoint.of(source.path, step)
    new = RunRef(
        source.project, check_name("run id", new_id) if new_id else new_run_id()
    )
    config = {}
    for item in overrides:
        k, sep, v = item.partition("=")
        if not sep:
            raise InvalidArgumentError("--set", item, "write it as KEY=VALUE")
        try:
            config[k] = json.loads(v)
        except ValueError:
            config[k] = v
    # fork_run gives the fork its source's window, whatever the options say.
    info = new_run_info(new, WriterOptions(), name=name)
    info["state"] = "finished"
    try:
        fork_run(store, source, point, new, info, config)
    except RunExistsError:
        raise RunExistsError(new.path, "pass another --id, or leave it out") from None
    click.echo(f"forked {source.path} at {point.key}={point.value} into {new.path}")
    click.echo(
        f"continue it with gitruns.init(project={new.project!r}, "
        f"id={new.run_id!r}, resume='must')"
    )


@click.command("rewind")
@click.argument("run")
@click.option(
    "--step", "step", required=True, help="Last step to keep (or metric=value)."
)
@with_store
def rewind_command(store: RunStore, run: str, step: str) -> None:
    """Rewind RUN to a step with a new commit; later steps stay in its Git history."""
    ref = store.resolve(run)
    point = ForkPoint.of(ref.path, step)
    writer = RunWriter.open(store, ref, WriterOptions(background=False))
    try:
        sha = rewind_run(store, ref, point)
    finally:
        writer.abandon()
    click.echo(
        f"rewound {ref.path} to "
        + (f"step {point.value}" if point.key == "_step" else step)
        + f" ({sha[:10].decode()}); "
        f"the removed steps stay in `git log {ref.branch}`"
    )


@click.command("recover")
@click.argument("runs", nargs=-1)
@with_store
def recover_command(store: RunStore, runs: tuple[str, ...]) -> None:
    """Commit what crashed writers journaled but never committed.

    Without RUN, every run whose journal holds records. A run left
    ``running`` by a writer that is gone is marked ``crashed``.
    """
    refs = [store.resolve(r) for r in runs] if runs else journaled_runs(store)
    if not refs:
        click.echo("nothing to recover")
        return
    locked: list[str] = []
    failed: list[str] = []
    code = 0
    for ref in refs:
        try:
            click.echo(_recover_one(store, ref))
        except RunLockedError as exc:
            # A live writer commits its own journal; go on with the others.
            click.echo(f"skipped {ref.path}: {exc}", err=True)
            locked.append(ref.path)
            code = max(code, exc.exit_code)
        except GitRunsError as exc:
            click.echo(f"Error: {ref.path}: {exc}", err=True)
            failed.append(ref.path)
            code = max(code, exc.exit_code)
    problems = []
    if failed:
        problems.append(
            f"{len(failed)} run(s) could not be recovered ({', '.join(failed)}); "
            "their journals are kept as they were: fix what each error above "
            "says and run `gitruns recover RUN` again"
        )
    if locked:
        problems.append(
            f"{len(locked)} run(s) are being written by live processes, which "
            "commit their own journals; run `gitruns recover` again once they stop"
        )
    if problems:
        raise failure("\n".join(problems), code)


def _recover_one(store: RunStore, ref: RunRef) -> str:
    """Commit one run's journal; the line that says what was done.

    Raises:
        RunLockedError: a live writer holds the run.
        GitRunsError: the journal could not be committed (it is kept).
    """
    writer = RunWriter.open(store, ref, WriterOptions(background=False))
    state = writer.snapshot.info.get("state")
    if state != "running" and not writer.recovered:
        writer.abandon()
        return f"nothing to recover in {ref.path} ({state})"
    writer.finish("crashed" if state == "running" else str(state))
    last = writer.snapshot.last_step
    return (
        f"recovered {ref.path}: {writer.recovered} journaled step(s), "
        f"steps up to {last}, now {writer.snapshot.info.get('state')}"
    )
