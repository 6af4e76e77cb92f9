"""Bringing runs of other tools into gitruns: one module per format, one writer.

Every importer reads a foreign log into neutral :class:`ImportedRun` records
(pure functions, no Git); :func:`~gitruns.importers.model.finish` applies the
shared rules (one record per step, conflicts reported, restarts as forks,
checkpoint snapshots folded); :func:`write_runs` writes them with the public
API, under ids derived from the source so that importing twice writes once.

::

    report = import_runs("hf-trainer", ["out/"], repo="runs.git")
    for outcome in report.outcomes:
        print(outcome.status, outcome.path)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gitruns.errors import ImportFormatError
from gitruns.importers import csv_logs
from gitruns.importers.dvclive_dir import parse_dvclive
from gitruns.importers.gitruns_export import parse_csv_export, parse_jsonl_export
from gitruns.importers.hf_trainer import parse_llamafactory, parse_trainer_state
from gitruns.importers.mlflow_store import parse_mlflow
from gitruns.importers.model import (
    Conflict,
    ConflictPolicy,
    ImportedRun,
    ImportOptions,
    ParsedSource,
    Record,
    Skipped,
    finish,
)
from gitruns.importers.tfevents import parse_tensorboard
from gitruns.importers.wandb_dir import parse_wandb
from gitruns.importers.writer import ImportReport, RunOutcome, write_runs

Parser = Callable[[Path, ImportOptions], ParsedSource]


@dataclass(frozen=True)
class Format:
    """One format gitruns imports.

    Attributes:
        name: what ``gitruns import NAME`` takes.
        summary: one line for the help text.
        parse: reads one path (file or directory) into runs.
    """

    name: str
    summary: str
    parse: Parser


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "hf-trainer",
            "Hugging Face trainer_state.json (log_history)",
            parse_trainer_state,
        ),
        Format("llamafactory", "LLaMA-Factory trainer_log.jsonl", parse_llamafactory),
        Format(
            "tensorboard",
            "TensorBoard event files, one run per folder",
            parse_tensorboard,
        ),
        Format(
            "lightning",
            "PyTorch Lightning CSVLogger metrics.csv",
            csv_logs.parser("lightning"),
        ),
        Format("keras", "Keras CSVLogger file", csv_logs.parser("keras")),
        Format(
            "ultralytics",
            "Ultralytics results.csv (+ args.yaml)",
            csv_logs.parser("ultralytics"),
        ),
        Format(
            "sb3-monitor",
            "Stable-Baselines3 monitor.csv, one row per episode",
            csv_logs.parser("sb3-monitor"),
        ),
        Format(
            "dvclive",
            "DVCLive output folder (plots/metrics, params.yaml)",
            parse_dvclive,
        ),
        Format(
            "mlflow",
            "MLflow mlruns/ file store or mlflow.db SQLite store",
            parse_mlflow,
        ),
        Format("wandb", "W&B run folders or .wandb files", parse_wandb),
        Format(
            "gitruns-csv",
            "gitruns export --format csv files (_step, _timestamp, metrics)",
            parse_csv_export,
        ),
        Format(
            "gitruns-jsonl",
            "gitruns export --format jsonl files, types exact",
            parse_jsonl_export,
        ),
    )
}


def read_source(
    format: str,  # noqa: A002 - the word users know
    paths: Sequence[str | os.PathLike[str]],
    *,
    on_conflict: ConflictPolicy = "last",
    include_deleted: bool = False,
) -> ParsedSource:
    """Read foreign logs into normalised runs, without touching any repository.

    Args:
        format: a key of :data:`FORMATS`.
        paths: files or directories; directories are searched.
        on_conflict: which value a step keeps when a metric has several
            (``last``, ``first``) or ``error`` to refuse.
        include_deleted: also read runs the source marks deleted (MLflow).

    Raises:
        ImportFormatError: an unknown format or an unreadable source.
    """
    chosen = FORMATS.get(format)
    if chosen is None:
        raise ImportFormatError(
            f"unknown format {format!r}; choose one of {', '.join(FORMATS)}"
        )
    options = ImportOptions(on_conflict=on_conflict, include_deleted=include_deleted)
    parsed = ParsedSource()
    for path in paths:
        parsed.extend(chosen.parse(Path(path), options))

    # The same file reached through two paths is one source.
    seen: set[str] = set()
    unique = []
    for run in parsed.runs:
        where = os.path.realpath(run.path.split("#")[0]) + run.path.partition("#")[2]
        if where not in seen:
            seen.add(where)
            unique.append(run)
    parsed.runs = unique
    return finish(parsed, on_conflict)


def import_runs(
    format: str,  # noqa: A002 - the word users know
    paths: Sequence[str | os.PathLike[str]],
    *,
    repo: str | os.PathLike[str] | None = None,
    project: str | None = None,
    on_conflict: ConflictPolicy = "last",
    include_deleted: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Read foreign logs and write them as gitruns runs (see :func:`write_runs`).

    Args:
        format: a key of :data:`FORMATS`.
        paths: files or directories; directories are searched.
        repo: the repository (resolved as ``gitruns.init`` does); made if
            there is none.
        project: the project for every run; default: the project the source
            names, else ``imported``.
        on_conflict: which value a step keeps when a metric has several
            (``last``, ``first``) or ``error`` to refuse.
        include_deleted: also read runs the source marks deleted (MLflow).
        progress: called with a number of rows each time that many were written.

    Returns:
        What happened to each run, and what the source held that was skipped.

    Raises:
        ImportFormatError: an unknown format or an unreadable source.
        InvalidNameError: ``project`` is not a valid project name.
        GitRunsError: a run could not be written (the ones before it are kept).
    """
    parsed = read_source(
        format, paths, on_conflict=on_conflict, include_deleted=include_deleted
    )
    return write_runs(parsed, repo=repo, project=project, progress=progress)


__all__ = [
    "FORMATS",
    "Conflict",
    "Format",
    "ImportOptions",
    "ImportReport",
    "ImportedRun",
    "ParsedSource",
    "Record",
    "RunOutcome",
    "Skipped",
    "import_runs",
    "read_source",
    "write_runs",
]
