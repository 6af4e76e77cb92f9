"""DVCLive output directories: per-metric TSVs, ``params.yaml`` and ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gitruns.errors import ImportFormatError
from gitruns.importers.model import (
    ImportedRun,
    ImportOptions,
    ParsedSource,
    Record,
    digest_bytes,
    load_yaml,
)
from gitruns.importers.table import Table, as_step, read_table

_PLOTS = Path("plots") / "metrics"


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"val": {"loss": 1}}`` as ``{"val/loss": 1}``: DVCLive's own metric names."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def _live_dirs(path: Path) -> list[Path]:
    """Directories under ``path`` (or ``path`` itself) that DVCLive wrote."""
    if not path.is_dir():
        raise ImportFormatError(
            f"{path}: not a directory; give the dvclive/ directory (or one above it)",
            path=str(path),
        )
    found = sorted(p.parent.parent for p in path.rglob("plots/metrics") if p.is_dir())
    if (path / _PLOTS).is_dir() and path not in found:
        found.insert(0, path)
    if not found:
        raise ImportFormatError(
            f"{path}: no DVCLive output (plots/metrics/) under it; check the path",
            path=str(path),
        )
    return found


def _step_collision(
    file: Path, table: Table, siblings: dict[Path, Table]
) -> list[int] | None:
    """Steps for a metric named ``step``, whose column hid DVCLive's own.

    DVCLive writes ``step<TAB><name>``; for a metric called ``step`` both
    columns share a name and only the metric's value survives. DVCLive logs
    every metric of a directory at the same steps, so the steps are taken
    from a sibling TSV with the same number of rows.
    """
    for other, sib in sorted(siblings.items()):
        if other != file and sib.rows == table.rows and "step" in sib.header:
            steps = sib.column("step") or []
            return [as_step(other, "step", s, i + 2) for i, s in enumerate(steps)]
    return None


def _read_live(live: Path) -> ImportedRun:
    files = sorted((live / _PLOTS).rglob("*.tsv"))
    extra_files = [live / n for n in ("params.yaml", "metrics.json")]
    run = ImportedRun(
        format="dvclive",
        path=str(live),
        name=(live.parent if live.name == "dvclive" else live).name,
        digest=digest_bytes(
            [f.relative_to(live).as_posix().encode() for f in files]
            + [f.read_bytes() for f in files + extra_files if f.is_file()]
        ),
    )
    if (live / "params.yaml").is_file():
        params = load_yaml(live / "params.yaml")
        if isinstance(params, dict):
            run.config = {str(k): v for k, v in params.items()}
    if (live / "metrics.json").is_file():
        summary = json.loads((live / "metrics.json").read_bytes())
        # The top-level "step" is DVCLive's step counter, not a metric.
        summary.pop("step", None)
        run.summary = _flatten(summary)

    tables = {f: read_table(f, delimiter="\t") for f in files}
    for file, table in tables.items():
        name = file.relative_to(live / _PLOTS).with_suffix("").as_posix()
        metric = file.stem
        if table.header == ["step"]:
            siblings = {f: t for f, t in tables.items() if f.parent == file.parent}
            steps = _step_collision(file, table, siblings)
            if steps is None:
                run.notes.append(
                    f"skipped {name}: a metric named 'step' hides DVCLive's step "
                    "column and no sibling file gives its steps"
                )
                continue
            values = table.column("step") or []
            run.notes.append(
                f"{name}: a metric named 'step' hides DVCLive's step column; its "
                "steps come from a sibling file with as many rows"
            )
        else:
            column = table.column("step")
            values = table.column(metric) or []
            if column is None or metric not in table.header:
                raise ImportFormatError(
                    f"{file}: expected columns 'step' and {metric!r}, found "
                    f"{', '.join(table.header)}; is this DVCLive output?",
                    path=str(file),
                )
            steps = [as_step(file, "step", s, i + 2) for i, s in enumerate(column)]
        timestamps = table.column("timestamp")
        for i, (step, value) in enumerate(zip(steps, values, strict=False)):
            if value is None:
                continue
            # Older DVCLive wrote a millisecond timestamp column.
            when = timestamps[i] / 1000 if timestamps and timestamps[i] else None
            run.records.append(Record(step, when, {name: value}))

    # One file per metric: order by step, as DVCLive's own plots do.
    run.records.sort(key=lambda r: r.step)
    return run


def parse_dvclive(path: Path, options: ImportOptions) -> ParsedSource:
    """Read the DVCLive output directories at or under ``path``.

    Each ``plots/metrics/**/<name>.tsv`` is one metric named by its path
    (``val/synth/loss_strong``); its rows merge with the other metrics' by
    step. ``params.yaml`` is the config and ``metrics.json``, flattened with
    ``/``, the summary. A metric named ``step`` collides with the step column
    (only the metric survives in the file): see :func:`_step_collision`.

    Raises:
        ImportFormatError: no DVCLive output, or a TSV not laid out by DVCLive.
    """
    parsed = ParsedSource()
    for live in _live_dirs(path):
        parsed.runs.append(_read_live(live))
    return parsed
