"""Writing imported runs into a repository through the public gitruns API."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from gitruns.api import Api
from gitruns.chunk import MAX_ROWS
from gitruns.errors import GitRunsError, RunNotFoundError
from gitruns.importers.model import ImportedRun, ParsedSource, Skipped, project_name
from gitruns.refs import RunRef
from gitruns.repository import open_store
from gitruns.run import init
from gitruns.settings import env_repo

logger = logging.getLogger(__name__)

#: Rows a chunk of an imported run should hold, about (see :func:`_window`).
_ROWS_PER_WINDOW = 1000

Status = Literal["imported", "exists", "clash", "incomplete"]


@dataclass
class RunOutcome:
    """What happened to one imported run.

    Attributes:
        run: the run as read.
        path: ``<project>/<run_id>`` in the repository.
        status: ``imported``; ``exists`` (imported before from the same
            source, nothing written); ``clash`` (the id is taken by another
            source, nothing written); ``incomplete`` (an earlier import of
            this source stopped part-way, nothing written).
        message: the outcome in words, for the CLI.
    """

    run: ImportedRun
    path: str
    status: Status
    message: str


@dataclass
class ImportReport:
    """The outcome of one import: each run, and what was left out."""

    outcomes: list[RunOutcome] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, status: Status) -> int:
        """How many runs ended with ``status``."""
        return sum(1 for o in self.outcomes if o.status == status)


def _window(run: ImportedRun) -> int:
    """A window that puts about a thousand rows in a chunk.

    A log written every 500 steps would otherwise make a chunk, and a commit,
    of one row each. The window is 1, 2 or 5 times a power of ten, never
    below the default of 1000 nor above the most rows a chunk may hold
    (a run may be dense later, and a window must fit one chunk).
    """
    if len(run.records) < 2:
        return 1000
    span = run.records[-1].step - run.records[0].step + 1
    wanted = span * _ROWS_PER_WINDOW / len(run.records)
    for exponent in range(3, 19):
        for factor in (1, 2, 5):
            window: int = factor * 10**exponent
            if window >= wanted:
                return min(window, MAX_ROWS)
    return MAX_ROWS


def _source(run: ImportedRun, refs: dict[str, RunRef]) -> dict[str, Any]:
    source: dict[str, Any] = {
        "format": run.format,
        "path": os.path.abspath(run.path) if "#" not in run.path else run.path,
        "digest": run.digest,
        "rows": run.stats.rows,
        "steps": len(run.records),
        **{k: v for k, v in run.extra.items() if v is not None},
    }
    if run.parent is not None:
        parent = refs.get(run.parent)
        source["parent"] = parent.path if parent else run.parent
    if run.project and run.project != project_name(run.project):
        source["project"] = run.project
    if run.conflicts:
        by_key: dict[str, int] = {}
        for c in run.conflicts:
            by_key[c.key] = by_key.get(c.key, 0) + 1
        source["conflicts"] = by_key
    if run.stats.resets:
        source["resets"] = run.stats.resets
    if not any(r.timestamp is not None for r in run.records):
        source["times"] = (
            "the source has no wall-clock times; _timestamp is the import's"
        )
    if run.notes:
        source["notes"] = list(run.notes)
    return source


def _order(runs: list[ImportedRun]) -> list[ImportedRun]:
    """Runs with every fork after the run it forks from."""
    done: set[str] = set()
    out: list[ImportedRun] = []
    pending = list(runs)
    while pending:
        rest = []
        for run in pending:
            if (
                run.fork_of is None
                or run.fork_of[0] in done
                or not any(r.run_id == run.fork_of[0] for r in runs)
            ):
                out.append(run)
                done.add(run.run_id)
            else:
                rest.append(run)
        if len(rest) == len(pending):  # a cycle cannot happen; keep going anyway
            out.extend(rest)
            break
        pending = rest
    return out


def _existing(api: Any, ref: RunRef, run: ImportedRun) -> tuple[Status, str] | None:
    """None if the run is new; else why it is not written again."""
    try:
        view = api.run(ref.path)
    except RunNotFoundError:
        return None
    source = view.source or {}
    if source.get("digest") != run.digest or source.get("format") != run.format:
        return "clash", (
            f"{ref.path} exists and was not imported from this source; nothing "
            "written. Import into another --project to keep both"
        )
    logged = [r.step for r in run.records if r.metrics or run.keep_empty_steps]
    expected = logged[-1] if logged else None
    if view.last_step != expected or view.state == "running":
        return "incomplete", (
            f"{ref.path} holds an unfinished import of this source (last step "
            f"{view.last_step}, expected {expected}); delete its branch "
            f"({ref.branch}) and import again"
        )
    return "exists", f"{ref.path} already imported from this source; nothing written"


def _write(
    run: ImportedRun,
    ref: RunRef,
    refs: dict[str, RunRef],
    repo: Any,
    progress: Callable[[int], None] | None,
) -> None:
    fork_from = None
    if run.fork_of is not None:
        parent = refs[run.fork_of[0]]
        fork_from = f"{parent.path}?_step={run.fork_of[1]}"
    source = _source(run, refs)
    new = init(
        project=ref.project,
        id=ref.run_id,
        name=run.name,
        config=run.config,
        repo=repo,
        fork_from=fork_from,
        # A nested run (MLflow's child of a search) shares no history with
        # its parent, so it is no fork; W&B's word for the tie is group.
        group=source.get("parent"),
        source=source,
        save_code=False,
        window=_window(run),
        background=False,
        flush_interval=math.inf,
        # Whatever GITRUNS_* says for training scripts, an import writes, and
        # writes the source's values exactly.
        mode="online",
        fsync="never",
        float32=False,
        # An import inside a training script must not replace its current run.
        reinit="create_new",
    )
    try:
        for definition in run.metric_defs:
            new.define_metric(definition["name"], step_metric=definition["step_metric"])
        done = 0
        for rec in run.records:
            if rec.metrics or run.keep_empty_steps:
                new.log(rec.metrics, step=rec.step, timestamp=rec.timestamp)
            done += 1
            if progress is not None and done % 256 == 0:
                progress(256)
        if progress is not None and done % 256:
            progress(done % 256)
        for key, value in run.summary.items():
            new.summary[key] = value
    except BaseException:
        new.finish(exit_code=1)
        raise
    # A run that ended without an exit code is still not a finished one.
    code = (
        run.exit_code
        if run.exit_code is not None
        else (0 if run.state == "finished" else 1)
    )
    new.finish(exit_code=code)


def write_runs(
    parsed: ParsedSource,
    *,
    repo: str | os.PathLike[str] | None = None,
    project: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Write parsed runs into a repository, skipping those already imported.

    Each run is created with ``gitruns.init`` under its deterministic id and
    the source recorded in ``run.json`` (format, path, digest of the source
    bytes, notes of what was merged or lost); a fork is created with
    ``fork_from`` at its fork step, after the run it forks from. A run whose
    id exists is never written again: ``exists`` if it came from the same
    source, ``clash`` if not.

    Args:
        parsed: the runs, normalised (see :func:`gitruns.importers.read_source`).
        repo: the repository (resolved as ``gitruns.init`` does).
        project: the project for every run; default: the project the source
            names (W&B project, MLflow experiment), else ``imported``.
        progress: called with a number of rows each time that many were written.

    Raises:
        GitRunsError: a run cannot be written (the ones before it are kept).
    """
    report = ImportReport(skipped=list(parsed.skipped), notes=list(parsed.notes))
    refs: dict[str, RunRef] = {}
    for run in parsed.runs:
        chosen = project or (project_name(run.project) if run.project else "imported")
        refs[run.run_id] = RunRef(chosen, run.run_id)
    for run in parsed.runs:
        if run.parent is not None and run.parent not in refs:
            parent_ref = refs[run.run_id]
            refs[run.parent] = RunRef(parent_ref.project, run.parent)

    # Importing brings runs in: make the repository if there is none yet.
    api = Api(repo=open_store(repo, env_repo=env_repo()))
    try:
        for run in _order(parsed.runs):
            ref = refs[run.run_id]
            known = _existing(api, ref, run)
            if known is not None:
                status, message = known
                report.outcomes.append(RunOutcome(run, ref.path, status, message))
                if progress is not None:
                    progress(len(run.records))
                continue
            try:
                _write(run, ref, refs, repo, progress)
            except GitRunsError:
                logger.error("import of %s into %s failed", run.path, ref.path)
                raise
            logger.info("imported %s run %s from %s", run.format, ref.path, run.path)
            report.outcomes.append(
                RunOutcome(run, ref.path, "imported", f"{ref.path} imported")
            )
    finally:
        api.store.close()
    return report
