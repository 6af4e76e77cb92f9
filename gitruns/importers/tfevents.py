"""TensorBoard event files: scalars, old ``simple_value`` and TF2 tensor form alike."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gitruns.errors import ImportFormatError, require
from gitruns.importers.model import (
    ImportedRun,
    ImportOptions,
    ParsedSource,
    Record,
    Skipped,
    digest_bytes,
)

logger = logging.getLogger(__name__)

_PATTERN = "*tfevents*"


def _loader() -> Any:
    """The tensorboard package's raw event reader, or a clear error."""
    loader = require(
        "tensorboard.backend.event_processing.event_file_loader",
        "import",
        "reading TensorBoard event files",
    )
    return loader.EventFileLoader


def _run_dirs(path: Path) -> dict[Path, list[Path]]:
    """Group event files by directory: one directory is one run, as in TensorBoard."""
    if path.is_file():
        return {path.parent: [path]}
    if not path.is_dir():
        raise ImportFormatError(
            f"{path}: no such file or directory; check the path", path=str(path)
        )
    runs: dict[Path, list[Path]] = {}
    for file in sorted(path.rglob(_PATTERN)):
        if file.is_file():
            runs.setdefault(file.parent, []).append(file)
    if not runs:
        raise ImportFormatError(
            f"{path}: no TensorBoard event files (*tfevents*) under it; "
            "check the path or choose another format",
            path=str(path),
        )
    return runs


def _events(files: list[Path]) -> Iterator[Any]:
    """Every event of the files, oldest file first (their names start with a time)."""
    loader = _loader()
    for file in files:
        yield from loader(str(file)).Load()


def _text(value: Any) -> str | None:
    """The string a text-plugin tensor holds, if it holds exactly one."""
    from tensorboard.util import tensor_util

    array = tensor_util.make_ndarray(value.tensor)
    if array.size != 1:
        return None
    item = array.reshape(()).item()
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def _scalar(value: Any) -> Any:
    """The Python number a scalars-plugin tensor holds (float32 widened exactly)."""
    from tensorboard.util import tensor_util

    array = tensor_util.make_ndarray(value.tensor)
    if array.size != 1:
        return None
    return array.reshape(()).item()


def _read_run(directory: Path, files: list[Path], name: str) -> ImportedRun:
    run = ImportedRun(
        format="tensorboard",
        path=str(directory),
        name=name,
        digest=digest_bytes(f.read_bytes() for f in files),
        extra={"files": [f.name for f in files]},
    )
    plugins: dict[str, str] = {}
    skipped: Counter[str] = Counter()
    for event in _events(files):
        kind = event.WhichOneof("what")
        if kind in ("file_version", None):
            continue
        if kind != "summary":
            skipped[kind] += 1
            continue
        metrics: dict[str, Any] = {}
        for value in event.summary.value:
            # TF2 writes a tag's plugin only with its first value.
            plugin = value.metadata.plugin_data.plugin_name
            if plugin:
                plugins.setdefault(value.tag, plugin)
            plugin = plugins.get(value.tag, "")
            if plugin == "scalars":
                number = _scalar(value)
                if number is None:
                    skipped["non-scalar tensors in the scalars plugin"] += 1
                else:
                    metrics[value.tag] = number
            elif plugin == "text" and _as_config(run, value):
                continue
            else:
                skipped[f"{plugin or value.WhichOneof('value')} ({value.tag})"] += 1
        if metrics:
            run.records.append(Record(event.step, event.wall_time, metrics))
    for what, count in sorted(skipped.items()):
        run.notes.append(f"skipped {count} {what} event(s): not scalars")
    run.extra["skipped"] = dict(sorted(skipped.items()))
    return run


def _as_config(run: ImportedRun, value: Any) -> bool:
    """Keep a text summary that holds a JSON object (HF writes its args so)."""
    text = _text(value)
    if text is None:
        return False
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return False
    if not isinstance(obj, dict):
        return False
    key = value.tag.removesuffix("/text_summary")
    run.config[key] = obj
    run.notes.append(f"text summary {value.tag!r} holds JSON: kept as config {key!r}")
    return True


def parse_tensorboard(path: Path, options: ImportOptions) -> ParsedSource:
    """Read the TensorBoard runs at or under ``path``.

    Every directory holding event files is one run, named by its path below
    ``path``; its files are read oldest first, so a job that wrote a second
    file (HF's final eval) continues the same run. Scalars come from the
    ``scalars`` plugin whether written as ``simple_value`` or as TF2 tensors;
    float32 values are widened to float64 exactly. A text summary holding a
    JSON object (HF's ``args/text_summary``) becomes a config entry; graphs,
    profiler traces, images, histograms and other text are skipped and noted.

    Raises:
        ImportFormatError: no event files.
        MissingExtraError: the tensorboard package is missing.
    """
    parsed = ParsedSource()
    root = path if path.is_dir() else path.parent
    for directory, files in _run_dirs(path).items():
        name = directory.relative_to(root).as_posix()
        if name == ".":
            name = directory.name
        run = _read_run(directory, files, name)
        if run.records or run.config:
            parsed.runs.append(run)
        else:
            parsed.skipped.append(Skipped(str(directory), "no scalars in its events"))
    return parsed
