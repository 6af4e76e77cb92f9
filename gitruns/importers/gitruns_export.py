"""gitruns' own exports (``gitruns export --format csv|jsonl``), read back as runs."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gitruns.errors import ImportFormatError
from gitruns.importers.model import (
    INT64_MAX,
    INT64_MIN,
    ImportedRun,
    ImportOptions,
    ParsedSource,
    Record,
    Skipped,
    Value,
    digest_bytes,
    find_files,
)
from gitruns.importers.table import as_step

#: The columns (CSV) or keys (JSON lines) that are not metrics.
STEP = "_step"
TIME = "_timestamp"

_INT = re.compile(r"[+-]?[0-9]+")
# What repr() writes for a finite float, and the other decimal forms people
# type; no underscores or spaces, which float() would also take.
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_BOOLS = {"True": True, "False": False}


def read_cell(text: str) -> Value:
    """Read one CSV cell as the value ``gitruns export`` spelled, typed per cell.

    The inverse of :func:`gitruns.export.csv_cell`: an empty cell is a metric
    not logged at that row (None); a whole number is an int (beyond int64 it
    stays text, since gitruns never stored such an int); a decimal number and
    ``nan``, ``inf``, ``-inf`` are floats, bit for bit; ``True`` and ``False``
    are bools; anything else is text exactly as written, spaces included.
    Because each cell is read alone, a column that mixes ints and floats keeps
    its ints.

    Args:
        text: the cell as the CSV reader returned it.
    """
    if not text:
        return None
    if _INT.fullmatch(text):
        number = int(text)
        return number if INT64_MIN <= number <= INT64_MAX else text
    if _FLOAT.fullmatch(text) or _SPECIAL.fullmatch(text):
        return float(text)
    return _BOOLS.get(text, text)


def _time(file: Path, value: Any, where: str) -> float | None:
    """A ``_timestamp`` value as seconds since the epoch, or None if absent."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ImportFormatError(
        f"{file}: {where} has {TIME}={value!r}, not seconds since the epoch; "
        "fix or empty that cell",
        path=str(file),
    )


def _not_an_export(file: Path, given: bool, what: str) -> Skipped:
    """Refuse a file named on the command line; skip one found in a folder."""
    if given:
        raise ImportFormatError(
            f"{file}: {what}; is this a gitruns export? "
            "`gitruns export RUN -o FILE` writes one",
            path=str(file),
        )
    return Skipped(str(file), f"not a gitruns export ({what})")


def _new_run(fmt: str, file: Path, raw: bytes) -> ImportedRun:
    return ImportedRun(
        format=fmt,
        path=str(file),
        name=file.stem,
        digest=digest_bytes([raw]),
        keep_empty_steps=True,
    )


# --- CSV ---------------------------------------------------------------------


def _csv_rows(file: Path) -> Iterator[tuple[int, list[str]]]:
    """The rows of ``file`` with the line each starts on (cells not stripped)."""
    with file.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        line = 1
        for row in reader:
            yield line, row
            line = reader.line_num + 1


def _read_csv(file: Path, given: bool) -> ImportedRun | Skipped:
    raw = file.read_bytes()
    try:
        rows = list(_csv_rows(file))
    except UnicodeDecodeError as exc:
        return _not_an_export(file, given, f"not UTF-8 text ({exc.reason})")
    except csv.Error as exc:
        raise ImportFormatError(
            f"{file}: not valid CSV ({exc}); fix the file", path=str(file)
        ) from None
    if not rows:
        return _not_an_export(file, given, "the file is empty")

    header = rows[0][1]
    if STEP not in header:
        return _not_an_export(file, given, f"no {STEP} column")
    doubled = sorted({name for name in header if header.count(name) > 1})
    if doubled:
        raise ImportFormatError(
            f"{file}: the header names {', '.join(map(repr, doubled))} twice; "
            "rename or drop one of each",
            path=str(file),
        )
    step_at = header.index(STEP)
    time_at = header.index(TIME) if TIME in header else None
    metrics = [(i, name) for i, name in enumerate(header) if name not in (STEP, TIME)]

    run = _new_run("gitruns-csv", file, raw)
    for line, row in rows[1:]:
        if not row:
            continue  # a blank line between rows holds nothing
        if len(row) != len(header):
            raise ImportFormatError(
                f"{file}: line {line} has {len(row)} cells, the header "
                f"{len(header)}; fix or cut that row and import again",
                path=str(file),
            )
        step = as_step(file, STEP, read_cell(row[step_at]), line)
        when = None
        if time_at is not None:
            when = _time(file, read_cell(row[time_at]), f"line {line}")
        # An empty cell is a metric not logged at this step.
        values = {name: read_cell(row[i]) for i, name in metrics if row[i]}
        run.records.append(Record(step, when, values))
    if time_at is None:
        run.notes.append(f"no {TIME} column; the steps get the import's time")
    return run


# --- JSON lines --------------------------------------------------------------


def _read_jsonl(file: Path, given: bool) -> ImportedRun | Skipped:
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _not_an_export(file, given, f"not UTF-8 text ({exc.reason})")

    run = _new_run("gitruns-jsonl", file, raw)
    # splitlines() would also cut at U+2028 and friends, which JSON strings
    # may hold unescaped; only \n ends a line here.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            if not run.records:
                return _not_an_export(file, given, f"line {number} is not JSON")
            raise ImportFormatError(
                f"{file}: line {number} is not JSON ({exc.msg}); a file cut "
                "mid-write loses only its last line: delete it and retry",
                path=str(file),
            ) from None
        if not isinstance(entry, dict) or STEP not in entry:
            if not run.records:
                return _not_an_export(file, given, f"line {number} has no {STEP}")
            raise ImportFormatError(
                f"{file}: line {number} is not an object with {STEP}; "
                "fix or cut that line",
                path=str(file),
            )
        step = as_step(file, STEP, entry.pop(STEP), number)
        when = _time(file, entry.pop(TIME, None), f"line {number}")
        run.records.append(Record(step, when, entry))
    if not run.records:
        return _not_an_export(file, given, "the file holds no rows")
    return run


def _parse(
    path: Path,
    patterns: tuple[str, ...],
    what: str,
    reader: Callable[[Path, bool], ImportedRun | Skipped],
) -> ParsedSource:
    parsed = ParsedSource()
    given = path.is_file()
    for file in find_files(path, patterns, what):
        found = reader(file, given)
        if isinstance(found, Skipped):
            parsed.skipped.append(found)
        else:
            parsed.runs.append(found)
    return parsed


def parse_csv_export(path: Path, options: ImportOptions) -> ParsedSource:
    """Read every ``gitruns export --format csv`` file at or under ``path``.

    Each file is one run: ``_step`` is the step, ``_timestamp`` (seconds since
    the epoch) the step's time, every other column a metric, each cell typed
    by :func:`read_cell`. CSV keeps values, not types, so three things do not
    come back as they were logged: text that reads as a number or a bool
    (``"1.5"``, ``"True"``) comes back as one, and None and the empty
    string come back as "not logged". ``gitruns-jsonl`` has none of these
    limits. Under a folder,
    ``*.csv`` files without a ``_step`` column are skipped.

    Raises:
        ImportFormatError: no such file, a file given by name that is not an
            export, or a malformed row.
    """
    return _parse(path, ("*.csv",), "gitruns CSV export", _read_csv)


def parse_jsonl_export(path: Path, options: ImportOptions) -> ParsedSource:
    """Read every ``gitruns export --format jsonl`` file at or under ``path``.

    Each line is one step, as ``scan_history()`` yielded it: ``_step``,
    ``_timestamp`` and the metrics with their exact types (ints stay ints,
    ``null`` is a logged None, ``NaN``, ``Infinity`` and ``-Infinity`` as
    Python writes them).
    Under a folder, ``*.jsonl`` files whose first line has no ``_step`` are
    skipped.

    Raises:
        ImportFormatError: no such file, a file given by name that is not an
            export, or a line that is not a JSON object with an integer ``_step``.
    """
    return _parse(path, ("*.jsonl",), "gitruns JSON lines export", _read_jsonl)
