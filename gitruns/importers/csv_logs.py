"""CSV logs of training libraries: Lightning, Keras, Ultralytics, SB3 Monitor."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from gitruns.errors import ImportFormatError
from gitruns.importers.model import (
    ImportedRun,
    ImportOptions,
    ParsedSource,
    Record,
    digest_bytes,
    find_files,
    load_yaml,
)
from gitruns.importers.table import Table, as_step, read_table


@dataclass(frozen=True)
class CsvPreset:
    """How one library lays out its CSV log.

    Attributes:
        format: the importer's format name.
        patterns: file names to look for under a directory.
        step: the column that is the step, or None for the row number.
        keep_step: also keep the step column as a metric (``epoch`` is one
            users plot against; a bare ``step`` counter is not).
        config: a YAML file beside the CSV that holds the config, if any.
        time: a column of seconds to add to the header's ``t_start``.
    """

    format: str
    patterns: tuple[str, ...]
    step: str | None
    keep_step: bool = False
    config: str | None = None
    time: str | None = None


PRESETS = {
    "lightning": CsvPreset(
        "lightning", ("metrics.csv",), "step", config="hparams.yaml"
    ),
    "keras": CsvPreset("keras", ("*.csv",), "epoch", keep_step=True),
    "ultralytics": CsvPreset(
        "ultralytics", ("results.csv",), "epoch", keep_step=True, config="args.yaml"
    ),
    "sb3-monitor": CsvPreset("sb3-monitor", ("*monitor.csv",), None, time="t"),
}


def _header_json(path: Path, table: Table) -> dict[str, Any]:
    """The JSON object of a ``#{...}`` first line (SB3 Monitor), or {}."""
    if table.comment is None:
        return {}
    try:
        obj = json.loads(table.comment)
    except json.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _read(preset: CsvPreset, file: Path) -> ImportedRun:
    table = read_table(file)
    run = ImportedRun(
        format=preset.format,
        path=str(file),
        name=file.parent.name,
        digest=digest_bytes([file.read_bytes()]),
        notes=list(table.notes),
    )
    run.config.update(_header_json(file, table))
    if preset.config and (file.parent / preset.config).is_file():
        loaded = load_yaml(file.parent / preset.config)
        if isinstance(loaded, dict):
            run.config.update({str(k): v for k, v in loaded.items()})

    # Which column is the step, and which columns are metrics.
    if preset.step is not None and preset.step not in table.header:
        raise ImportFormatError(
            f"{file}: no {preset.step!r} column (columns: "
            f"{', '.join(table.header)}); is this a {preset.format} log? "
            "Choose the preset that wrote it",
            path=str(file),
        )
    steps = table.column(preset.step) if preset.step else list(range(table.rows))
    metric_columns = [
        (name, table.columns[i])
        for i, name in enumerate(table.header)
        if name and (preset.keep_step or name != preset.step)
    ]
    if "" in table.header:
        run.notes.append("skipped a column with an empty name")
    start = run.config.get("t_start")
    times = table.column(preset.time) if preset.time else None

    for i in range(table.rows):
        if steps is None or steps[i] is None:
            raise ImportFormatError(
                f"{file}: row {i + 2} has no {preset.step!r}; fix or cut that row",
                path=str(file),
            )
        step = as_step(file, preset.step or "row", steps[i], i + 2)
        metrics = {name: col[i] for name, col in metric_columns if col[i] is not None}
        when = None
        if times is not None and isinstance(start, (int, float)):
            t = times[i]
            when = float(start) + t if isinstance(t, (int, float)) else None
        run.records.append(Record(step, when, metrics))
    if preset.step is None:
        run.notes.append("the step is the row number (0-based), one row per episode")
    return run


def parse_csv(preset: CsvPreset, path: Path, options: ImportOptions) -> ParsedSource:
    """Read every log of ``preset``'s kind at or under ``path``.

    Empty cells are metrics not logged at that row; rows of one step merge
    (Lightning writes its learning-rate row and its training row apart). A
    column whose cells are all whole numbers is int, all numbers float,
    otherwise text as written.

    Raises:
        ImportFormatError: no such file, or not laid out as the preset expects.
    """
    parsed = ParsedSource()
    for file in find_files(path, preset.patterns, f"{preset.format} CSV log"):
        parsed.runs.append(_read(preset, file))
    return parsed


def parser(name: str) -> Callable[[Path, ImportOptions], ParsedSource]:
    """The parse function of the preset called ``name``."""
    return partial(parse_csv, PRESETS[name])
