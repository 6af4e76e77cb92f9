"""Hugging Face ``trainer_state.json`` and LLaMA-Factory ``trainer_log.jsonl``."""

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
    find_files,
)

#: Top-level TrainerState fields that are results, not settings: summary.
_RESULTS = ("best_metric", "best_model_checkpoint", "best_global_step")


def _step_of(path: Path, entry: dict[str, Any], key: str, row: int) -> int:
    step = entry.get(key)
    if isinstance(step, bool) or not isinstance(step, int):
        raise ImportFormatError(
            f"{path}: entry {row} has {key}={step!r}, not a whole number; "
            "is this file really a trainer log?",
            path=str(path),
        )
    return step


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportFormatError(
            f"{path}: not valid JSON ({exc}); fix the file", path=str(path)
        ) from None


def parse_trainer_state(path: Path, options: ImportOptions) -> ParsedSource:
    """Read every ``trainer_state.json`` at or under ``path``.

    Each ``log_history`` entry is a record at its ``step``; the train, eval and
    final-summary entries of one step merge. The other top-level fields go to
    config, except ``best_metric``, ``best_model_checkpoint`` and
    ``best_global_step``, which go to the summary. Checkpoint copies of the
    file (``checkpoint-*/``, ``last-checkpoint/``) are folded into the longest
    log they are a prefix of by :func:`~gitruns.importers.model.finish`.

    Raises:
        ImportFormatError: no such file, not JSON, or no ``log_history``.
    """
    parsed = ParsedSource()
    for file in find_files(path, ("trainer_state.json",), "trainer_state.json"):
        raw = file.read_bytes()
        state = _read_json(file)
        history = state.get("log_history") if isinstance(state, dict) else None
        if not isinstance(history, list):
            raise ImportFormatError(
                f"{file}: no log_history list; is this a Hugging Face "
                "trainer_state.json?",
                path=str(file),
            )
        run = ImportedRun(
            format="hf-trainer",
            path=str(file),
            name=file.parent.name,
            digest=digest_bytes([raw]),
        )
        for row, entry in enumerate(history):
            if not isinstance(entry, dict):
                raise ImportFormatError(
                    f"{file}: log_history[{row}] is not an object", path=str(file)
                )
            metrics = {k: v for k, v in entry.items() if k != "step"}
            run.records.append(
                Record(_step_of(file, entry, "step", row), None, metrics)
            )
        for key, value in state.items():
            if key == "log_history":
                continue
            (run.summary if key in _RESULTS else run.config)[key] = value
        parsed.runs.append(run)
    return parsed


def parse_llamafactory(path: Path, options: ImportOptions) -> ParsedSource:
    """Read every LLaMA-Factory ``trainer_log.jsonl`` at or under ``path``.

    The step is ``current_steps`` (not kept as a metric); every other field is
    a metric with the type the file gave it: ``"0.00"`` and ``"5:39:46"`` stay
    strings. The last line repeats the last step without ``loss``; it merges.

    Raises:
        ImportFormatError: no such file, or a line that is not a JSON object
            with an integer ``current_steps``.
    """
    parsed = ParsedSource()
    for file in find_files(path, ("trainer_log.jsonl",), "trainer_log.jsonl"):
        raw = file.read_bytes()
        run = ImportedRun(
            format="llamafactory",
            path=str(file),
            name=file.parent.name,
            digest=digest_bytes([raw]),
        )
        for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ImportFormatError(
                    f"{file}: line {number} is not JSON ({exc.msg}); a log cut "
                    "mid-write loses only its last line: delete it and retry",
                    path=str(file),
                ) from None
            if not isinstance(entry, dict):
                raise ImportFormatError(
                    f"{file}: line {number} is not an object", path=str(file)
                )
            step = _step_of(file, entry, "current_steps", number)
            metrics = {k: v for k, v in entry.items() if k != "current_steps"}
            run.records.append(Record(step, None, metrics))
        parsed.runs.append(run)
    return parsed
