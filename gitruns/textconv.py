"""The gitruns diff driver: metric chunks as text for `git diff` and `git log -p`."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from dulwich.repo import Repo

from gitruns.chunk import MAX_CHUNK_BYTES, Chunk, Value, decode_chunk
from gitruns.errors import ChunkFormatError, mapped_errors
from gitruns.store import GITATTRIBUTES_TEXT, chunk_dirs

logger = logging.getLogger(__name__)

#: The diff driver's name, as run trees' ``.gitattributes`` spell it.
DRIVER = "gitruns"

#: What a step shows for a metric it did not log.
MISSING = "-"

# A segment's file name, as git hands it over: the path in the tree, or a
# temporary file that ends with the file's own name.
_SEGMENT_NAME = re.compile(
    r"(?:(?:^|/)history/([0-9a-f]{4})/([0-9a-f]{2})/|^|[/_])(\d{12,19})\.msgpack$"
)


def format_value(value: Value) -> str:
    """One cell: exact floats, JSON strings, so a changed value shows as changed."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _timestamp(seconds: float) -> str:
    if not math.isfinite(seconds):
        return repr(seconds)
    try:
        moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return repr(seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def chunk_text(chunk: Chunk) -> str:
    """A chunk as a tab-separated table: a header, then one row per step.

    Columns are ``_step``, ``_timestamp`` (UTC) and the metrics in name order;
    a step without a value of a metric shows ``-``.
    """
    names = sorted(chunk.columns)
    steps = chunk.steps.tolist()
    first, last = (steps[0], steps[-1]) if steps else (None, None)
    lines = [
        f"# gitruns chunk: window {chunk.window} from step {chunk.start}, "
        f"steps {first}..{last} ({len(steps)} rows), {len(names)} metrics",
        "\t".join(["_step", "_timestamp", *names]),
    ]
    for row in chunk.rows():
        cells = [str(row["_step"]), _timestamp(float(row["_timestamp"] or 0.0))]
        cells += [format_value(row[n]) if n in row else MISSING for n in names]
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def file_text(path: str | Path) -> str:
    """The text of a chunk file, or one line saying why it is not readable.

    git calls the driver on every file the attributes match; a line instead of
    an error keeps ``git log -p`` going past a damaged or foreign file. Where
    the file's name says which segment it is (``000000000010.msgpack``, in
    ``history/0000/00/`` when git passes the tree's path), the chunk must
    start there, as a reader of the run requires.
    """
    size = os.stat(path).st_size
    if size > MAX_CHUNK_BYTES:
        return (
            f"# not a readable gitruns chunk ({size} bytes): "
            f"over the limit of {MAX_CHUNK_BYTES}\n"
        )
    data = Path(path).read_bytes()
    try:
        chunk = decode_chunk(data, source=str(path))
        problem = _placement_problem(chunk, os.fspath(path))
        if problem:
            raise ChunkFormatError(str(path), problem)
        return chunk_text(chunk)
    except ChunkFormatError as exc:
        return f"# not a readable gitruns chunk ({len(data)} bytes): {exc.reason}\n"


def _placement_problem(chunk: Chunk, path: str) -> str:
    # What the file's name says against what the chunk holds.
    named = _SEGMENT_NAME.search(path.replace(os.sep, "/"))
    if named is None:
        return ""
    start = int(named[3])
    if not len(chunk.steps):
        return "it holds no steps"
    if int(chunk.steps[0]) != start:
        return (
            f"it starts at step {int(chunk.steps[0])}, not at {start} "
            "as its file name says"
        )
    dirs = named[1], named[2]
    if dirs[0] is not None and chunk_dirs(start, chunk.window) != (
        dirs[0].encode(),
        dirs[1].encode(),
    ):
        return "it is stored outside its fan-out directory"
    return ""


def driver_command(python: str, package_parent: str) -> str:
    """The shell command git runs as the driver: this interpreter, this gitruns."""
    return (
        f"env PYTHONPATH={shlex.quote(package_parent)} "
        f"{shlex.quote(python)} -m gitruns.textconv"
    )


def configure(repo: Repo, command: str) -> list[str]:
    """Set up the ``gitruns`` diff driver in a repository; return what changed.

    Sets ``diff.gitruns.textconv`` in the repository's config and marks the
    chunks in ``info/attributes``. Git reads a tree's ``.gitattributes`` only
    from a checked-out work tree, so a bare repository, or a code repository
    with its code branch checked out, needs ``info/attributes`` to apply the
    driver to run branches.
    """
    changed: list[str] = []
    with mapped_errors("configuring the gitruns diff driver"):
        config = repo.get_config()
        section = (b"diff", DRIVER.encode())
        try:
            current = config.get(section, b"textconv")
        except KeyError:
            current = None
        if current != command.encode():
            config.set(section, b"textconv", command.encode())
            config.write_to_path()
            changed.append(f"diff.{DRIVER}.textconv = {command}")

        attributes = Path(repo.controldir()) / "info" / "attributes"
        line = GITATTRIBUTES_TEXT.decode().strip()
        existing = attributes.read_text() if attributes.exists() else ""
        if line not in existing.splitlines():
            attributes.parent.mkdir(parents=True, exist_ok=True)
            prefix = "" if not existing or existing.endswith("\n") else "\n"
            attributes.write_text(existing + prefix + line + "\n")
            changed.append(f"{attributes}: {line}")
    for change in changed:
        logger.info("diff driver: %s", change)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gitruns.textconv FILE``: what git runs for each chunk it shows."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m gitruns.textconv FILE\n")
        return 2
    sys.stdout.write(file_text(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
