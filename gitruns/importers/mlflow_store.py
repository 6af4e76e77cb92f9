"""MLflow tracking stores: the ``mlruns/`` file store and an SQLite ``mlflow.db``."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gitruns.errors import ImportFormatError
from gitruns.importers.model import (
    ImportedRun,
    ImportOptions,
    ParsedSource,
    Record,
    RunState,
    Skipped,
    digest_bytes,
    load_yaml,
    project_name,
)

#: RunStatus numbers of the file store's meta.yaml, and the names SQLite keeps.
_STATUS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
_STATE: dict[str, tuple[RunState, int | None]] = {
    "FINISHED": ("finished", 0),
    "FAILED": ("crashed", 1),
    "KILLED": ("crashed", 1),
    "RUNNING": ("running", None),
    "SCHEDULED": ("running", None),
}
_PARENT_TAG = "mlflow.parentRunId"
_NAME_TAG = "mlflow.runName"


@dataclass
class _Run:
    """One MLflow run as either store describes it."""

    run_id: str
    experiment: str
    name: str | None
    status: str
    deleted: bool
    where: str
    meta: dict[str, Any]
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    # (key, timestamp in ms, value, step), in the order the store lists them.
    points: list[tuple[str, int, float, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _to_run(run: _Run, experiment_deleted: bool) -> ImportedRun:
    status = run.status.upper()
    state, exit_code = _STATE.get(status, ("crashed", None))
    points = sorted(run.points, key=lambda p: (p[3], p[1]))
    imported = ImportedRun(
        format="mlflow",
        path=run.where,
        name=run.name or run.tags.get(_NAME_TAG) or None,
        config=dict(run.params),
        state=state,
        exit_code=exit_code,
        source_id=run.run_id,
        project=project_name(run.experiment),
        parent=run.tags.get(_PARENT_TAG),
        digest=digest_bytes(
            repr(x).encode() for x in (run.params, run.tags, run.meta, points)
        ),
        extra={
            "mlflow_run_id": run.run_id,
            "experiment": run.experiment,
            "status": status,
            "tags": dict(sorted(run.tags.items())),
            **{k: v for k, v in run.meta.items() if v not in (None, "")},
        },
    )
    imported.notes.extend(run.notes)
    if run.deleted or experiment_deleted:
        imported.notes.append("deleted in MLflow; imported because it was asked for")
    # MLflow orders a metric's points by step, then time: so do we, and a
    # step written twice is a conflict like any other.
    for key, ts, value, step in points:
        imported.records.append(Record(step, ts / 1000.0, {key: value}))
    return imported


def _collect(
    runs: list[tuple[_Run, bool]], options: ImportOptions, where: str
) -> ParsedSource:
    parsed = ParsedSource()
    kept = {
        r.run_id
        for r, exp_deleted in runs
        if options.include_deleted or not (r.deleted or exp_deleted)
    }
    for run, exp_deleted in runs:
        if run.run_id not in kept:
            parsed.skipped.append(
                Skipped(run.where, "deleted in MLflow (pass --include-deleted)")
            )
            continue
        imported = _to_run(run, exp_deleted)
        if imported.parent and imported.parent not in kept:
            imported.notes.append(
                f"its MLflow parent {imported.parent} is not imported (deleted or "
                "absent); the link is kept in source.parent"
            )
        parsed.runs.append(imported)
    deleted = len(runs) - len(kept)
    if deleted:
        parsed.notes.append(
            f"{where}: skipped {deleted} deleted run(s); --include-deleted imports them"
        )
    return parsed


# --- the file store ----------------------------------------------------------


def _files(directory: Path) -> dict[str, str]:
    """``params/`` or ``tags/``: one file per key (a ``/`` in a key is a folder)."""
    if not directory.is_dir():
        return {}
    return {
        f.relative_to(directory).as_posix(): f.read_text(encoding="utf-8")
        for f in sorted(directory.rglob("*"))
        if f.is_file()
    }


def _metric_points(run_dir: Path) -> list[tuple[str, int, float, int]]:
    points: list[tuple[str, int, float, int]] = []
    metrics = run_dir / "metrics"
    if not metrics.is_dir():
        return points
    for file in sorted(metrics.rglob("*")):
        if not file.is_file():
            continue
        key = file.relative_to(metrics).as_posix()
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                # Old stores wrote "<timestamp> <value>", with no step.
                ts, value = int(parts[0]), float(parts[1])
                step = int(parts[2]) if len(parts) > 2 else 0
            except (ValueError, IndexError):
                raise ImportFormatError(
                    f"{file}: line {number} is not '<timestamp> <value> <step>'; "
                    "is this an MLflow metric file?",
                    path=str(file),
                ) from None
            points.append((key, ts, value, step))
    return points


def _file_store(root: Path) -> list[tuple[_Run, bool]]:
    runs: list[tuple[_Run, bool]] = []
    experiment_dirs = [d for d in sorted(root.iterdir()) if (d / "meta.yaml").is_file()]
    trash = root / ".trash"
    if trash.is_dir():
        experiment_dirs += [
            d for d in sorted(trash.iterdir()) if (d / "meta.yaml").is_file()
        ]
    for exp_dir in experiment_dirs:
        exp = load_yaml(exp_dir / "meta.yaml") or {}
        exp_deleted = exp.get("lifecycle_stage") == "deleted" or exp_dir.parent == trash
        for run_dir in sorted(exp_dir.iterdir()):
            meta_file = run_dir / "meta.yaml"
            if not meta_file.is_file():
                continue
            meta = load_yaml(meta_file) or {}
            status = meta.get("status", "")
            tags = _files(run_dir / "tags")
            run = _Run(
                run_id=str(meta.get("run_id") or meta.get("run_uuid") or run_dir.name),
                experiment=str(exp.get("name", exp_dir.name)),
                name=meta.get("run_name") or None,
                status=_STATUS.get(status, str(status))
                if isinstance(status, int)
                else str(status),
                deleted=meta.get("lifecycle_stage") == "deleted",
                where=str(run_dir),
                meta={
                    k: meta.get(k)
                    for k in ("start_time", "end_time", "user_id", "artifact_uri")
                },
                params=_files(run_dir / "params"),
                tags=tags,
                points=_metric_points(run_dir),
            )
            if any((run_dir / "artifacts").rglob("*tfevents*")):
                run.notes.append(
                    "its artifacts hold TensorBoard event files, not imported here: "
                    f"gitruns import tensorboard {run_dir / 'artifacts'}"
                )
            runs.append((run, exp_deleted))
    return runs


# --- the SQLite store --------------------------------------------------------


def _connect(db: Path) -> sqlite3.Connection:
    """Open the database read-only; never create, migrate or lock it for writes."""
    uri = f"file:{quote(str(db.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.execute("SELECT count(*) FROM runs").fetchone()
    except sqlite3.Error as exc:
        raise ImportFormatError(
            f"{db}: cannot read it as an MLflow SQLite store ({exc}); "
            "give the mlflow.db file that `mlflow server` or `mlflow ui` used",
            path=str(db),
        ) from None
    return conn


def _sqlite_store(db: Path) -> list[tuple[_Run, bool]]:
    conn = _connect(db)
    try:
        experiments = {
            row[0]: (row[1], row[2] == "deleted")
            for row in conn.execute(
                "SELECT experiment_id, name, lifecycle_stage FROM experiments"
            )
        }
        runs: dict[str, _Run] = {}
        exp_of: dict[str, bool] = {}
        for row in conn.execute(
            "SELECT run_uuid, name, status, lifecycle_stage, experiment_id, "
            "start_time, end_time, user_id, artifact_uri FROM runs "
            "ORDER BY start_time, run_uuid"
        ):
            run_id, name, status, stage, exp_id, start, end, user, uri = row
            exp_name, exp_deleted = experiments.get(exp_id, (str(exp_id), False))
            runs[run_id] = _Run(
                run_id=run_id,
                experiment=exp_name,
                name=name or None,
                status=status or "",
                deleted=stage == "deleted",
                where=f"{db}#{run_id}",
                meta={
                    "start_time": start,
                    "end_time": end,
                    "user_id": user,
                    "artifact_uri": uri,
                },
            )
            exp_of[run_id] = exp_deleted
        for key, value, run_id in conn.execute(
            "SELECT key, value, run_uuid FROM params ORDER BY key"
        ):
            if run_id in runs:
                runs[run_id].params[key] = value
        for key, value, run_id in conn.execute(
            "SELECT key, value, run_uuid FROM tags ORDER BY key"
        ):
            if run_id in runs:
                runs[run_id].tags[key] = value
        for key, value, ts, run_id, step, is_nan in conn.execute(
            "SELECT key, value, timestamp, run_uuid, step, is_nan FROM metrics "
            "ORDER BY run_uuid, key, step, timestamp"
        ):
            if run_id in runs:
                number = float("nan") if is_nan else float(value)
                runs[run_id].points.append((key, int(ts), number, int(step)))
    except sqlite3.Error as exc:
        raise ImportFormatError(
            f"{db}: unexpected MLflow schema ({exc}); this importer reads the "
            "runs, params, tags, metrics and experiments tables",
            path=str(db),
        ) from None
    finally:
        conn.close()
    return [(run, exp_of[run.run_id]) for run in runs.values()]


def parse_mlflow(path: Path, options: ImportOptions) -> ParsedSource:
    """Read an MLflow store: an ``mlruns/`` directory or an SQLite ``.db`` file.

    Each MLflow run becomes a gitruns run with the same id, in a project named
    after its experiment (characters gitruns refuses become ``-``; the name
    as written is kept in the source record). Params are the config, as the
    strings MLflow stored (``"None"`` stays ``"None"``); tags, status, times
    and the parent go into the source record. A nested run is not a fork of
    its parent's history: its parent is recorded as ``source.parent``.
    Metric points are ordered by step then time; two values at one step are
    a conflict. Runs (and experiments) marked deleted are skipped unless
    ``options.include_deleted``, and counted.

    Raises:
        ImportFormatError: not an MLflow store, or one this reader cannot parse.
    """
    if path.is_file():
        runs = _sqlite_store(path)
    elif path.is_dir():
        if any((d / "meta.yaml").is_file() for d in path.iterdir()):
            runs = _file_store(path)
        elif (path / "mlruns").is_dir():
            runs = _file_store(path / "mlruns")
        elif (path / "mlflow.db").is_file():
            runs = _sqlite_store(path / "mlflow.db")
        else:
            raise ImportFormatError(
                f"{path}: no MLflow experiments (*/meta.yaml), mlruns/ or "
                "mlflow.db in it; give the mlruns/ directory or the mlflow.db file",
                path=str(path),
            )
    else:
        raise ImportFormatError(
            f"{path}: no such file or directory; check the path", path=str(path)
        )
    return _collect(runs, options, str(path))
