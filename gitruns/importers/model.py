"""Neutral records every importer produces, and the rules that make them runs."""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gitruns.errors import GitRunsError, ImportFormatError, require
from gitruns.refs import check_name
from gitruns.values import check_key

logger = logging.getLogger(__name__)

#: What a metric value may be once imported (the chunk codec's own kinds).
Value = int | float | bool | str | None

#: What to do when one step holds two different values of one metric.
ConflictPolicy = Literal["last", "first", "error"]

RunState = Literal["finished", "crashed", "running"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: Metrics whose drop back to a lower value marks a resumed job (section "resets").
_COUNTER = re.compile(r"(?:.*/)?epoch")

_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_BAD_PROJECT_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ImportOptions:
    """Choices that apply to every format.

    Attributes:
        on_conflict: which value a step keeps when a metric has several.
        include_deleted: also import runs the source marks deleted (MLflow).
    """

    on_conflict: ConflictPolicy = "last"
    include_deleted: bool = False


@dataclass
class Record:
    """One row of a foreign log: a step, maybe a wall-clock time, some metrics."""

    step: int
    timestamp: float | None
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Conflict:
    """One step at which a metric was written with different values.

    Attributes:
        step: the step.
        key: the metric.
        values: every distinct value seen, in the order the source wrote them.
        kept: the value the import keeps (see :func:`normalise`).
    """

    step: int
    key: str
    values: tuple[Value, ...]
    kept: Value


@dataclass(frozen=True)
class Skipped:
    """Something found in a source that was deliberately not imported."""

    path: str
    reason: str


@dataclass
class Stats:
    """Counts of what happened to a run's rows on the way in."""

    rows: int = 0
    merged: int = 0
    duplicates: int = 0
    dropped_values: int = 0
    resets: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class ImportedRun:
    """A run read from a foreign log, in gitruns terms, before it is written.

    Attributes:
        format: the importer's format name (``hf-trainer``, ``wandb``, ...).
        path: the file or directory the run was read from.
        name: a display name, or None.
        records: the rows; after :func:`normalise`, one per step, steps
            strictly increasing (for a fork, only the steps after its fork point).
        config: hyper-parameters as the source stored them.
        summary: summary values the source stored beside its history.
        state: ``finished``, ``crashed`` or ``running``.
        exit_code: the exit code the source recorded, if any.
        source_id: the source's own run id (W&B, MLflow), reused as the gitruns
            run id; None for formats without one.
        project: the project the source names (W&B project, MLflow experiment).
        parent: the source id of a parent run that is not a fork of this run's
            history (an MLflow nested run).
        digest: a hash of the source bytes, for idempotent re-imports.
        extra: more about the source, recorded in ``run.json`` beside it.
        metric_defs: ``define_metric`` declarations (W&B step metrics).
        notes: what was merged, lost or skipped, in words.
        conflicts: steps where one metric had several different values.
        stats: counts (rows read, rows merged, dropped values, counter resets).
        run_id: the gitruns run id, set by :func:`normalise`.
        fork_of: ``(run_id, step)`` of the run this one forks from, if any.
        keep_empty_steps: write steps that hold no metric (gitruns' own
            exports have them; other tools' empty rows are noise).
    """

    format: str
    path: str
    name: str | None = None
    records: list[Record] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    state: RunState = "finished"
    exit_code: int | None = None
    source_id: str | None = None
    project: str | None = None
    parent: str | None = None
    digest: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    metric_defs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    run_id: str = ""
    fork_of: tuple[str, int] | None = None
    keep_empty_steps: bool = False

    @property
    def steps(self) -> list[int]:
        """The steps this run's own records hold."""
        return [r.step for r in self.records]

    @property
    def keys(self) -> set[str]:
        """Every metric name in this run's own records."""
        return {k for r in self.records for k in r.metrics}


@dataclass
class ParsedSource:
    """What one import call found: runs to write and what it left out."""

    runs: list[ImportedRun] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: ParsedSource) -> None:
        """Add another source's runs, skips and notes to this one."""
        self.runs.extend(other.runs)
        self.skipped.extend(other.skipped)
        self.notes.extend(other.notes)


# --- small helpers the format modules share ---------------------------------


def short_id(seed: str) -> str:
    """Return 8 base-36 characters derived from ``seed`` (a stable run id)."""
    number = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")
    chars = []
    for _ in range(8):
        number, rem = divmod(number, 36)
        chars.append(_ID_ALPHABET[rem])
    return "".join(chars)


def digest_bytes(parts: Iterable[bytes]) -> str:
    """Return the hex sha256 of ``parts`` taken in order, each length-prefixed."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def project_name(name: str) -> str:
    """Turn a foreign project or experiment name into a valid gitruns project.

    Runs of characters gitruns refuses become ``-``; the original name is kept
    in the run's source record by the caller.
    """
    cleaned = _BAD_PROJECT_CHARS.sub("-", name).strip(".-")
    cleaned = cleaned.replace("..", ".")[:64].rstrip(".-")
    if cleaned.endswith(".lock"):
        cleaned = cleaned[: -len(".lock")]
    return cleaned or "imported"


def find_files(path: Path, patterns: tuple[str, ...], what: str) -> list[Path]:
    """Return ``path`` if it is a file, else the files under it matching a pattern.

    Raises:
        ImportFormatError: ``path`` does not exist or holds no such file.
    """
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ImportFormatError(
            f"{path}: no such file or directory; check the path", path=str(path)
        )
    found = sorted({p for pat in patterns for p in path.rglob(pat) if p.is_file()})
    if not found:
        raise ImportFormatError(
            f"{path}: no {what} found under it ({', '.join(patterns)}); "
            "check the path or choose another format",
            path=str(path),
        )
    return found


def load_yaml(path: Path) -> Any:
    """Read a YAML file with the safe loader (PyYAML is an optional extra)."""
    yaml = require("yaml", "import", f"reading {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ImportFormatError(
            f"{path}: not valid YAML ({exc}); fix the file", path=str(path)
        ) from None


def string_keys(obj: Any) -> Any:
    """Return ``obj`` with every mapping key turned into a str, recursively.

    YAML allows integer keys (W&B's ``_wandb.t``) that JSON cannot hold;
    converting them here keeps config files exact and says so in one place.
    """
    if isinstance(obj, Mapping):
        return {str(k): string_keys(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [string_keys(v) for v in obj]
    return obj


# --- normalising: one record per step, restarts, conflicts ------------------


def _same(a: Any, b: Any) -> bool:
    """True when two values are the same stored value (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def _scalar(key: str, value: Any, dropped: dict[str, int]) -> tuple[bool, Value]:
    """Return ``(True, value)`` if gitruns can store ``value``, else count it."""
    if value is None or isinstance(value, (bool, float, str)):
        return True, value
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return True, value
        # Beyond int64 the chunk codec refuses ints; the digits survive as text.
        dropped[f"{key} (int beyond int64, kept as text)"] = (
            dropped.get(f"{key} (int beyond int64, kept as text)", 0) + 1
        )
        return True, str(value)
    dropped[f"{key} ({type(value).__name__})"] = (
        dropped.get(f"{key} ({type(value).__name__})", 0) + 1
    )
    return False, None


def _valid_key(key: str) -> bool:
    """True if gitruns accepts ``key`` as a metric name."""
    try:
        check_key(key)
    except GitRunsError:
        return False
    return True


def _split_restarts(records: list[Record]) -> list[list[Record]]:
    """Cut a stream of records wherever its step goes backwards."""
    segments: list[list[Record]] = [[]]
    top = -1
    for rec in records:
        if rec.step < top:
            segments.append([])
            top = -1
        segments[-1].append(rec)
        top = max(top, rec.step)
    return [s for s in segments if s] or [[]]


def _merge_steps(
    run: ImportedRun, records: list[Record], policy: ConflictPolicy
) -> list[Record]:
    """Fold records of one step into one; report and resolve conflicts."""
    out: list[Record] = []
    seen: dict[tuple[int, str], list[Value]] = {}
    for rec in records:
        if out and out[-1].step == rec.step:
            cur = out[-1]
            run.stats.merged += 1
            if rec.timestamp is not None:
                cur.timestamp = (
                    rec.timestamp
                    if cur.timestamp is None
                    else max(cur.timestamp, rec.timestamp)
                )
            for key, value in rec.metrics.items():
                if key not in cur.metrics:
                    cur.metrics[key] = value
                    continue
                if _same(cur.metrics[key], value):
                    run.stats.duplicates += 1
                    continue
                values = seen.setdefault((rec.step, key), [cur.metrics[key]])
                if not any(_same(v, value) for v in values):
                    values.append(value)
                if policy == "error":
                    raise ImportFormatError(
                        f"{run.path}: step {rec.step} holds two values of {key!r} "
                        f"({values[0]!r} and {value!r}); choose which to keep "
                        "with --on-conflict first or --on-conflict last"
                    )
                if policy == "last":
                    cur.metrics[key] = value
        else:
            out.append(Record(rec.step, rec.timestamp, dict(rec.metrics)))
    by_step = {r.step: r for r in out} if seen else {}
    for (step, key), values in seen.items():
        kept = by_step[step].metrics[key]
        run.conflicts.append(Conflict(step, key, tuple(values), kept))
    return out


def _clean_values(run: ImportedRun) -> None:
    """Drop values and keys gitruns cannot store, and say which."""
    dropped: dict[str, int] = {}
    bad_keys: dict[str, int] = {}
    valid: dict[str, bool] = {}
    for rec in run.records:
        clean: dict[str, Any] = {}
        for key, value in rec.metrics.items():
            ok_key = valid.get(key)
            if ok_key is None:
                ok_key = valid[key] = isinstance(key, str) and _valid_key(key)
            if not ok_key:
                bad_keys[key] = bad_keys.get(key, 0) + 1
                continue
            ok, stored = _scalar(key, value, dropped)
            if ok:
                clean[key] = stored
            else:
                run.stats.dropped_values += 1
        rec.metrics = clean
    for what, count in sorted(dropped.items()):
        verb = "converted" if "kept as text" in what else "skipped"
        run.notes.append(f"{verb} {count} value(s) of {what}")
    for key, count in sorted(bad_keys.items(), key=lambda kv: str(kv[0])):
        run.stats.dropped_values += count
        run.notes.append(
            f"skipped metric {key!r} ({count} value(s)): gitruns refuses the name"
        )


def _find_resets(run: ImportedRun, records: list[Record]) -> None:
    """Note where an epoch-like counter drops back: a resumed job."""
    last: dict[str, float] = {}
    for rec in records:
        for key, value in rec.metrics.items():
            if not _COUNTER.fullmatch(key) or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)):
                continue
            if key in last and value < last[key]:
                run.stats.resets.setdefault(key, []).append(rec.step)
            last[key] = value
    for key, steps in sorted(run.stats.resets.items()):
        run.notes.append(
            f"{key!r} drops back at step(s) {', '.join(map(str, steps))}: the job "
            "was resumed there; its steps stay in order, so it is one run"
        )


def _base_id(run: ImportedRun) -> str:
    if run.source_id is not None:
        return check_name("run id", run.source_id)
    return short_id(f"{run.format}\0{run.digest}")


def _fork_step(records: list[Record], before: int) -> int | None:
    """The last step in ``records`` below ``before``, or None."""
    steps = [r.step for r in records if r.step < before]
    return max(steps) if steps else None


def normalise(run: ImportedRun, policy: ConflictPolicy = "last") -> list[ImportedRun]:
    """Turn a run as read into runs gitruns can store.

    The rules, in order:

    1. A record whose step is below an earlier one starts a new segment (a
       resumed job that went back). Every segment after the first becomes a
       fork of the one before it, at the last step of that one's history below
       the new segment's first step; a segment that starts below all of it
       becomes a run of its own. A run's steps never go backwards.
    2. Records of one step merge. Disjoint keys simply join; a key written
       again with the same value is a duplicate; a key written with a
       different value is a :class:`Conflict`. ``policy`` says which value is
       kept: ``last`` (as ``log()`` does when a step is logged twice),
       ``first``, or ``error`` to refuse the import. The step's time is the
       latest time any of its records carries.
    3. Values gitruns cannot store (lists, dicts) are dropped and counted; an
       int beyond int64 is kept as its decimal text; a metric name gitruns
       refuses is dropped, with a note.

    Args:
        run: the run as a format module read it; ``records`` in source order.
        policy: which value a conflicting step keeps.

    Returns:
        The run itself (records merged, ``run_id`` set), then its forks.

    Raises:
        ImportFormatError: a negative step, or a conflict under ``error``.
    """
    for rec in run.records:
        if rec.step < 0:
            raise ImportFormatError(
                f"{run.path}: negative step {rec.step}; gitruns steps start at 0. "
                "Shift the steps in the source before importing it"
            )
    run.stats.rows = len(run.records)
    run.run_id = _base_id(run)
    segments = _split_restarts(run.records)

    runs: list[ImportedRun] = []
    history: list[Record] = []
    for index, segment in enumerate(segments):
        part = run if index == 0 else _segment_run(run, index, segment[0].step)
        part.records = _merge_steps(part, segment, policy)
        _clean_values(part)
        if index > 0:
            prev = runs[-1]
            at = _fork_step(history, segment[0].step)
            if at is None:
                part.notes.append(
                    f"steps restart at {segment[0].step}, below all of "
                    f"{prev.run_id}; imported as a run of its own"
                )
                history = []
            else:
                part.fork_of = (prev.run_id, at)
                history = [r for r in history if r.step <= at]
                run.notes.append(
                    f"steps go back to {segment[0].step} after row "
                    f"{sum(len(s) for s in segments[:index])}: the rest is fork "
                    f"{part.run_id} at step {at}"
                )
        history = history + part.records
        _find_resets(part, part.records)
        runs.append(part)
    for part in runs:
        _note_merges(part, policy)
    return runs


def _segment_run(run: ImportedRun, index: int, first: int) -> ImportedRun:
    """A new run for the ``index``-th restart segment of ``run``."""
    name = run.name or run.run_id
    return ImportedRun(
        format=run.format,
        path=run.path,
        name=f"{name} (resumed at step {first})",
        config=dict(run.config),
        state=run.state,
        exit_code=run.exit_code,
        project=run.project,
        digest=run.digest,
        extra={**run.extra, "segment": index},
        metric_defs=list(run.metric_defs),
        run_id=short_id(f"{run.run_id}\0segment {index}"),
    )


def _note_merges(run: ImportedRun, policy: ConflictPolicy) -> None:
    if run.stats.merged:
        run.notes.append(
            f"merged {run.stats.merged} row(s) into steps already seen "
            f"({run.stats.duplicates} repeated value(s), {len(run.conflicts)} "
            "conflict(s))"
        )
    if not run.conflicts:
        return
    by_key: dict[str, int] = {}
    for c in run.conflicts:
        by_key[c.key] = by_key.get(c.key, 0) + 1
    listing = ", ".join(f"{k} at {n} step(s)" for k, n in sorted(by_key.items()))
    run.notes.append(
        f"conflicting values at one step, kept the {policy} one: {listing}"
    )


# --- snapshots: checkpoint copies that are prefixes of a longer log ----------


def _common_prefix(short: list[Record], long: list[Record]) -> tuple[int, bool]:
    """How many leading records agree, and whether ``short`` is a whole prefix.

    A snapshot may have been taken in the middle of a step (after the train
    row, before the eval row), so its last record only has to be a subset of
    the long log's record at that step.
    """
    n = 0
    for a, b in zip(short, long, strict=False):
        if a.step != b.step or a.timestamp != b.timestamp:
            break
        if a.metrics.keys() != b.metrics.keys() or not all(
            _same(v, b.metrics[k]) for k, v in a.metrics.items()
        ):
            break
        n += 1
    if n == len(short):
        return n, True
    if n == len(short) - 1 and n < len(long):
        a, b = short[n], long[n]
        subset = a.step == b.step and all(
            k in b.metrics and _same(v, b.metrics[k]) for k, v in a.metrics.items()
        )
        return n, subset
    return n, False


def collapse_snapshots(
    runs: list[ImportedRun],
) -> tuple[list[ImportedRun], list[Skipped]]:
    """Import checkpoint copies of one log once, or as forks of it.

    Runs are compared within one format and, where the source has run ids,
    within one id. A run without restarts whose history (steps, times and
    values) is a prefix of a longer one is a snapshot of it: it is skipped and
    the longer run notes it. A run that agrees with a longer one for some
    leading steps and then differs becomes a fork of it at the last step they
    share. Runs that share nothing stay as they are.

    Returns:
        The runs to write, and the snapshots left out.
    """
    groups: dict[tuple[str, str | None], list[ImportedRun]] = {}
    for run in runs:
        groups.setdefault((run.format, run.source_id), []).append(run)
    restarted = {r.fork_of[0] for r in runs if r.fork_of} | {
        r.run_id for r in runs if r.fork_of
    }

    skipped: list[Skipped] = []
    dropped: set[int] = set()
    for group in groups.values():
        candidates = [r for r in group if r.run_id not in restarted]
        # Longest first; at equal length the one whose steps hold more values
        # (a copy taken before the last step was complete holds fewer).
        candidates.sort(
            key=lambda r: (
                -len(r.records),
                -sum(len(x.metrics) for x in r.records),
                r.path,
            )
        )
        kept: list[ImportedRun] = []
        for run in candidates:
            best: tuple[int, ImportedRun] | None = None
            for longer in kept:
                n, whole = _common_prefix(run.records, longer.records)
                if whole:
                    skipped.append(
                        Skipped(run.path, f"a snapshot (prefix) of {longer.path}")
                    )
                    longer.notes.append(
                        f"{run.path} is a snapshot of this log up to step "
                        f"{run.records[-1].step if run.records else 0}; imported once"
                    )
                    dropped.add(id(run))
                    break
                if n and (best is None or n > best[0]):
                    best = (n, longer)
            else:
                if best is None:
                    kept.append(run)
                    continue
                # A fork keeps only its own steps, so it is no base to compare to.
                n, longer = best
                at = run.records[n - 1].step
                if run.run_id == longer.run_id:  # one source id, two diverging logs
                    run.run_id = short_id(f"{run.run_id}\0{run.digest}")
                run.fork_of = (longer.run_id, at)
                run.records = run.records[n:]
                run.notes.append(
                    f"shares steps up to {at} with {longer.path}; imported "
                    f"as a fork of {longer.run_id} at step {at}"
                )
        _note_reruns([r for r in kept if r.fork_of is None])
    return [r for r in runs if id(r) not in dropped], skipped


def _note_reruns(runs: list[ImportedRun]) -> None:
    """Note runs whose values repeat a longer one's but for a few metrics.

    Two executions of one script with one seed log the same values at the same
    steps, except for timings such as ``time/fps``; they are separate runs
    (their times differ), but the user should hear that one repeats the other.
    """
    for i, short in enumerate(runs):
        for long in runs[:i]:  # longest first
            n, differ = _same_values(short.records, long.records)
            if n and n == len(short.records):
                last = short.records[-1].step
                but = f" except {', '.join(sorted(differ))}" if differ else ""
                short.notes.append(
                    f"its values equal those of {long.path} at every step up to "
                    f"{last}{but}: a rerun of it, or an aborted duplicate"
                )
                break


def _same_values(short: list[Record], long: list[Record]) -> tuple[int, set[str]]:
    """Leading steps with the same keys and, but for a few metrics, values.

    Returns:
        How many records agree so, and the metrics whose values differed.
    """
    differ: set[str] = set()
    seen: set[str] = set()
    n = 0
    for a, b in zip(short, long, strict=False):
        if a.step != b.step or a.metrics.keys() != b.metrics.keys():
            break
        seen.update(a.metrics)
        differ.update(k for k, v in a.metrics.items() if not _same(v, b.metrics[k]))
        if len(seen) >= 4 and 2 * len(differ) > len(seen):
            break  # most metrics differ: another run, not a repeat
        n += 1
    # A repeat shares most of at least a handful of metrics.
    if len(seen) < 4 or 4 * len(differ) > len(seen):
        return 0, differ
    return n, differ


def finish(parsed: ParsedSource, policy: ConflictPolicy = "last") -> ParsedSource:
    """Normalise every run of ``parsed`` and fold snapshots; return the result."""
    runs: list[ImportedRun] = []
    for run in parsed.runs:
        runs.extend(normalise(run, policy))
    runs, skipped = collapse_snapshots(runs)
    for run in runs:
        logger.debug("read %s run %s from %s", run.format, run.run_id, run.path)
    return ParsedSource(runs, parsed.skipped + skipped, parsed.notes)
