"""A run's history written out as CSV or JSON lines, exact enough to import back."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Sequence
from typing import Literal, TextIO

from gitruns.chunk import Value
from gitruns.errors import InvalidArgumentError, MetricNotFoundError
from gitruns.reader import RunView

logger = logging.getLogger(__name__)

ExportFormat = Literal["csv", "jsonl"]

#: The formats :func:`export_history` writes, as the CLI offers them.
FORMATS: tuple[ExportFormat, ...] = ("csv", "jsonl")

#: The columns every exported row starts with, before the metrics.
STEP_COLUMNS = ("_step", "_timestamp")


def csv_cell(value: Value) -> str:
    """Spell one logged value as a CSV cell that reads back as the same value.

    Floats are written by ``repr``, the shortest text that parses back to the
    same bits, so ``nan``, ``inf``, ``-inf`` and ``-0.0`` survive and ``float()``
    reads every cell back. None (and a metric not logged at a step) is an
    empty cell. Booleans are ``True`` and ``False``.

    Args:
        value: a value as the chunk codec returns it.
    """
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _rows(
    view: RunView,
    keys: Sequence[str] | None,
    min_step: int | None,
    max_step: int | None,
) -> tuple[list[str], Iterator[dict[str, Value]]]:
    """The export's header and its rows, each row with ``_step`` and ``_timestamp``.

    With ``keys``, only the steps where all of them were logged, as
    ``scan_history(keys=...)`` picks them.

    Raises:
        MetricNotFoundError: a key the run never logged in that range.
    """
    # The header needs every metric before the first row; the decoded chunks
    # are compact (one array per column), so keep them rather than read twice.
    chunks = list(view.chunks(min_step, max_step))
    names = sorted({name for chunk in chunks for name in chunk.columns})
    wanted = names
    if keys is not None:
        wanted = [k for k in dict.fromkeys(keys) if k not in STEP_COLUMNS]
        for key in wanted:
            if key not in names:
                raise MetricNotFoundError(view.path, key, names)
    lo = -1 if min_step is None else min_step

    def rows() -> Iterator[dict[str, Value]]:
        for chunk in chunks:
            for row in chunk.rows():
                step = row["_step"]
                assert isinstance(step, int)
                if step < lo or (max_step is not None and step >= max_step):
                    continue
                if keys is None:
                    yield row
                elif all(k in row for k in wanted):
                    yield {c: row[c] for c in (*STEP_COLUMNS, *wanted)}

    return [*STEP_COLUMNS, *wanted], rows()


def write_csv(
    view: RunView,
    out: TextIO,
    keys: Sequence[str] | None = None,
    min_step: int | None = None,
    max_step: int | None = None,
) -> int:
    """Write the run's history to ``out`` as CSV, one row per step.

    The header is ``_step,_timestamp`` and then the metrics (sorted, or in the
    order of ``keys``). Cells are spelled by :func:`csv_cell`. CSV keeps values,
    not types: a string that looks like a number reads back as a number, and
    None is indistinguishable from "not logged". :func:`write_jsonl` keeps both.

    Args:
        view: the run.
        out: a text stream; open files with ``newline=""``.
        keys: only steps where all these metrics were logged, only these columns.
        min_step: first step to write (inclusive).
        max_step: step to stop before (exclusive).

    Returns:
        The number of rows written (the header not counted).

    Raises:
        MetricNotFoundError: a key the run never logged.
    """
    header, rows = _rows(view, keys, min_step, max_step)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    count = 0
    for row in rows:
        writer.writerow([csv_cell(row.get(name)) for name in header])
        count += 1
    logger.info("exported %d steps of %s as CSV", count, view.path)
    return count


def write_jsonl(
    view: RunView,
    out: TextIO,
    keys: Sequence[str] | None = None,
    min_step: int | None = None,
    max_step: int | None = None,
) -> int:
    """Write the run's history to ``out`` as JSON lines, one object per step.

    Each object is what ``scan_history()`` yields: ``_step``, ``_timestamp``
    and the metrics logged at that step, so types survive (1 and 1.0 differ,
    None is ``null``, a logged string stays a string). Floats are written as
    Python writes them, which round-trips every bit; NaN and the infinities are
    spelled ``NaN``, ``Infinity`` and ``-Infinity`` as Python's and
    JavaScript's readers expect (strict JSON has no spelling for them).

    Args:
        view: the run.
        out: a text stream.
        keys: only steps where all these metrics were logged, only these keys.
        min_step: first step to write (inclusive).
        max_step: step to stop before (exclusive).

    Returns:
        The number of lines written.

    Raises:
        MetricNotFoundError: a key the run never logged.
    """
    _, rows = _rows(view, keys, min_step, max_step)
    count = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
        out.write("\n")
        count += 1
    logger.info("exported %d steps of %s as JSON lines", count, view.path)
    return count


def export_history(
    view: RunView,
    out: TextIO,
    fmt: ExportFormat,
    keys: Sequence[str] | None = None,
    min_step: int | None = None,
    max_step: int | None = None,
) -> int:
    """Write the run's history to ``out`` in ``fmt`` (``csv`` or ``jsonl``).

    See :func:`write_csv` and :func:`write_jsonl`.

    Args:
        view: the run.
        out: a text stream; open files with ``newline=""`` for CSV.
        fmt: ``csv`` or ``jsonl``.
        keys: only steps where all these metrics were logged, only these keys.
        min_step: first step to write (inclusive).
        max_step: step to stop before (exclusive).

    Returns:
        The number of steps written.

    Raises:
        InvalidArgumentError: an unknown format.
        MetricNotFoundError: a key the run never logged.
        ChunkFormatError: a metric chunk of the run is malformed.
    """
    if fmt == "csv":
        return write_csv(view, out, keys, min_step, max_step)
    if fmt == "jsonl":
        return write_jsonl(view, out, keys, min_step, max_step)
    raise InvalidArgumentError("format", fmt, f"use one of {', '.join(FORMATS)}")
