"""Reading CSV and TSV logs: line-ending traps, padding, typed columns."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitruns.errors import ImportFormatError

_INT = re.compile(r"[+-]?\d+")


@dataclass
class Table:
    """A delimited file read into a header and typed columns.

    Attributes:
        header: column names, stripped of the padding some writers add.
        columns: one list per column, a row's empty cell as None (not logged).
        comment: the text of a leading ``#`` line, if the file has one.
        notes: what was unusual about the file.
    """

    header: list[str]
    columns: list[list[Any]]
    comment: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """The number of data rows."""
        return len(self.columns[0]) if self.columns else 0

    def column(self, name: str) -> list[Any] | None:
        """The column called ``name``, or None."""
        if name not in self.header:
            return None
        return self.columns[self.header.index(name)]


def _typed(cells: list[str | None]) -> list[Any]:
    """Give a column one type: int if every cell is, else float, else text.

    Every CSV cell is text, so reading numbers is not a coercion; but a column
    that holds any non-number stays text in every row, as written.
    """
    present = [c for c in cells if c is not None]
    if present and all(_INT.fullmatch(c) for c in present):
        return [None if c is None else int(c) for c in cells]
    try:
        floats = [None if c is None else float(c) for c in cells]
    except ValueError:
        return list(cells)
    # float() also reads "nan", "inf" and "1_000"; keep underscores as text.
    if any("_" in c for c in present):
        return list(cells)
    return floats


def read_table(path: Path, delimiter: str = ",") -> Table:
    """Read a CSV/TSV log written by a training library.

    Handles what such files do in the wild: a UTF-8 byte-order mark, ``\\r\\n``
    and the ``\\r\\r\\n`` endings of a CSV writer opened in Windows text mode
    (blank lines in between are skipped and counted), cells and names padded
    with spaces for alignment, and one leading ``#`` comment line (as SB3
    writes a JSON header).

    Raises:
        ImportFormatError: the file is not text, is empty, or a row has the
            wrong number of cells.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFormatError(
            f"{path}: not UTF-8 text ({exc.reason}); is it really a CSV log?",
            path=str(path),
        ) from None
    notes: list[str] = []
    if "\r\r\n" in text:
        notes.append("lines end in \\r\\r\\n (a CSV written in Windows text mode)")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last row

    comment = None
    if lines and lines[0].startswith("#"):
        comment = lines[0][1:]
        lines = lines[1:]
    blank = sum(1 for line in lines if not line.strip())
    body = [line for line in lines if line.strip()]
    if not body:
        raise ImportFormatError(
            f"{path}: no header row; the file is empty", path=str(path)
        )

    reader = csv.reader(io.StringIO("\n".join(body)), delimiter=delimiter)
    rows = list(reader)
    header = [h.strip() for h in rows[0]]
    cells: list[list[str | None]] = [[] for _ in header]
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ImportFormatError(
                f"{path}: row {number} has {len(row)} cells, the header "
                f"{len(header)}; fix or cut that row and import again",
                path=str(path),
            )
        for i, cell in enumerate(row):
            cell = cell.strip()
            cells[i].append(cell if cell else None)
    if blank:
        notes.append(f"skipped {blank} blank line(s)")
    return Table(header, [_typed(c) for c in cells], comment, notes)


def as_step(path: Path, column: str, value: Any, row: int) -> int:
    """Read one step cell as an int, refusing fractions and gaps."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ImportFormatError(
        f"{path}: row {row} has {value!r} in step column {column!r}, not a whole "
        "number; choose another preset or fix that row",
        path=str(path),
    )
