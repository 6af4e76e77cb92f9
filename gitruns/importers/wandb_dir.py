"""W&B run folders: config, summary and the ``.wandb`` transaction log."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitruns.errors import ImportFormatError, require
from gitruns.importers.model import (
    ImportedRun,
    ImportOptions,
    ParsedSource,
    Record,
    digest_bytes,
    load_yaml,
    string_keys,
)
from gitruns.importers.wandb_log import scan

_RUN_FILE = re.compile(r"run-([A-Za-z0-9_-]+)\.wandb")
#: History keys W&B adds itself; the step and time become the record's own.
_SYSTEM = ("_step", "_timestamp", "_runtime")


def _protobuf() -> Any:
    """W&B's record classes, or the error that says how to get them."""
    return require(
        "wandb.proto.wandb_internal_pb2",
        "wandb",
        "reading the history of a W&B run (its .wandb file)",
    )


@dataclass
class _LogContents:
    """What the records of one ``.wandb`` file say."""

    run_id: str | None = None
    project: str | None = None
    entity: str | None = None
    name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[Record] = field(default_factory=list)
    metric_defs: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    seen: set[str] = field(default_factory=set)


def _item_key(item: Any) -> str:
    # W&B shows a nested dict's keys joined with ".".
    return str(item.key) if item.key else ".".join(item.nested_key)


def _items(items: Any) -> dict[str, Any]:
    return {_item_key(i): json.loads(i.value_json) for i in items}


def _read_log(data: bytes, source: str, pb: Any) -> tuple[_LogContents, Any]:
    framing = scan(data, source)
    out = _LogContents()
    for body in framing.records:
        record = pb.Record()
        try:
            record.ParseFromString(body)
        except Exception:  # protobuf's DecodeError has no stable import path
            framing.problem = framing.problem or "a record that is not a W&B protobuf"
            break
        kind = record.WhichOneof("record_type")
        out.seen.add(kind or "")
        if kind == "history":
            row = _items(record.history.item)
            step = record.history.step.num if record.history.HasField("step") else None
            step = row.get("_step", step) if step is None else step
            when = row.get("_timestamp")
            metrics = {k: v for k, v in row.items() if k not in _SYSTEM}
            out.history.append(
                Record(
                    int(step or 0), float(when) if when is not None else None, metrics
                )
            )
        elif kind == "run":
            run = record.run
            out.run_id = run.run_id or None
            out.project = run.project or None
            out.entity = run.entity or None
            out.name = run.display_name or None
            out.config.update(_items(run.config.update))
        elif kind == "config":
            out.config.update(_items(record.config.update))
            for item in record.config.remove:
                out.config.pop(_item_key(item), None)
        elif kind == "summary":
            out.summary.update(_items(record.summary.update))
        elif kind == "metric" and record.metric.step_metric:
            out.metric_defs.append(
                {
                    "name": record.metric.name or record.metric.glob_name,
                    "step_metric": record.metric.step_metric,
                }
            )
        elif kind == "exit":
            out.exit_code = record.exit.exit_code
    return out, framing


def _unwrap_config(raw: Any) -> dict[str, Any]:
    """``{key: {desc, value}}`` as W&B's config.yaml stores it, to ``{key: value}``."""
    if not isinstance(raw, dict):
        return {}
    return {
        str(k): v["value"] if isinstance(v, dict) and "value" in v else v
        for k, v in raw.items()
    }


def _owns_files(run_dir: Path, run_id: str | None) -> bool:
    """True when ``run_dir/files`` belongs to the run of the log.

    ``latest-run`` is a symlink that Git may have stored as a directory with
    another run's files in it; only a ``run-<date>-<id>`` folder is trusted.
    """
    return run_id is not None and run_dir.name.endswith(f"-{run_id}")


def _read_run(log_file: Path, pb: Any) -> ImportedRun:
    run_dir = log_file.parent
    data = log_file.read_bytes()
    contents, framing = _read_log(data, str(log_file), pb)
    match = _RUN_FILE.fullmatch(log_file.name)
    run_id = contents.run_id or (match.group(1) if match else None)

    config, summary = dict(contents.config), dict(contents.summary)
    files = run_dir / "files"
    owned = _owns_files(run_dir, run_id)
    digest_parts = [data]
    if owned and (files / "config.yaml").is_file():
        config = _unwrap_config(load_yaml(files / "config.yaml"))
        digest_parts.append((files / "config.yaml").read_bytes())
    if owned and (files / "wandb-summary.json").is_file():
        summary = json.loads((files / "wandb-summary.json").read_bytes())
        digest_parts.append((files / "wandb-summary.json").read_bytes())

    run = ImportedRun(
        format="wandb",
        path=str(log_file),
        name=contents.name,
        records=contents.history,
        source_id=run_id,
        project=contents.project,
        digest=digest_bytes(digest_parts),
        metric_defs=contents.metric_defs,
    )
    # W&B's own bookkeeping goes to the source record, not the config.
    meta = {k: config.pop(k) for k in ("_wandb", "wandb_version") if k in config}
    run.config = string_keys(config)
    run.summary = {
        k: v
        for k, v in summary.items()
        if not k.startswith("_") and (v is None or isinstance(v, (int, float, str)))
    }
    run.extra = {
        "wandb_run_id": run_id,
        "wandb_project": contents.project,
        "wandb_entity": contents.entity,
        **string_keys(meta),
    }
    if (
        run_dir.name != "files"
        and not owned
        and (files.is_dir() or run_dir.name == "latest-run")
    ):
        run.notes.append(
            f"{run_dir.name}/ is not this run's own folder; config and summary "
            "come from the log's records"
        )

    if contents.exit_code is None:
        run.state = "crashed"
        run.notes.append(
            "no exit record: the log was copied while the run was live or after "
            "it died; marked crashed"
        )
    else:
        run.exit_code = contents.exit_code
        run.state = "finished" if contents.exit_code == 0 else "crashed"
    if framing.problem:
        run.extra["truncated"] = framing.problem
        missing = [k for k in ("exit", "summary", "footer") if k not in contents.seen]
        run.notes.append(
            f"the .wandb file {framing.problem} ({framing.lost_bytes} byte(s) "
            f"unread); imported the {len(contents.history)} history row(s) before "
            f"it" + (f"; it has no {', '.join(missing)} record" if missing else "")
        )
    return run


def _logs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ImportFormatError(
            f"{path}: no such file or directory; check the path", path=str(path)
        )
    found = sorted(p for p in path.rglob("*.wandb") if p.is_file())
    if not found:
        raise ImportFormatError(
            f"{path}: no .wandb files under it; give a wandb/run-<date>-<id> "
            "folder or the wandb/ directory above it",
            path=str(path),
        )
    return found


def parse_wandb(path: Path, options: ImportOptions) -> ParsedSource:
    """Read the W&B runs at or under ``path`` (run folders or ``.wandb`` files).

    The run keeps its W&B id and project. History comes from the ``.wandb``
    log, one record per W&B step (``_step``; ``_timestamp`` is the time;
    ``_runtime`` is dropped, the times say it). Config comes from
    ``files/config.yaml`` with the ``{desc, value}`` wrappers taken off and
    YAML's integer keys made strings; ``_wandb`` and ``wandb_version`` go to
    the source record. Summary comes from ``files/wandb-summary.json``. When
    the folder is not the run's own (``latest-run``), both come from the log.
    A log cut off mid-write imports every complete record before the cut and
    says what was lost; a run without an exit record is marked crashed.

    Raises:
        ImportFormatError: no ``.wandb`` file, or not a W&B log.
        MissingExtraError: the wandb package, which parses the records, is
            missing.
    """
    pb = _protobuf()
    parsed = ParsedSource()
    for log_file in _logs(path):
        parsed.runs.append(_read_run(log_file, pb))
    return parsed
