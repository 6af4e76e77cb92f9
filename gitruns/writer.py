"""Buffering log() calls into windows of steps and committing them in groups.

The caller's thread only validates, journals and appends each finished row to
the buffer of its window. A buffer is handed to a committer thread when the
window fills, when the flush interval has passed, and on finish. The committer
takes every buffer queued by then and writes them in one commit: one segment
blob each, one tree, one commit and one compare-and-swap of the branch; then it
deletes the journal files that held those rows. A window flushed in several
parts is stored as several segment files, so no byte already committed is
written again.

Rows are kept whole in the caller's thread; the committer turns them into
columns, a run of rows with the same keys at a time, with C-level transposes.
The committer may fall :data:`MAX_BACKLOG` buffers, or rows of
:data:`MAX_BACKLOG_BYTES` journaled bytes, behind before log() waits for it:
the caller never waits while committing keeps up, and memory stays bounded,
whatever the length or the width of the run, when it does not (a group commit
catches up, since its cost per buffer is small).

The journal is the source of truth until a commit lands: a commit that fails
(a full disk) is retried from it at the next hand-off, a run that crashed is
committed from it rather than from buffers a signal may have cut short, and
the next writer of a killed run commits what it holds (:meth:`RunWriter.recover`).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gitruns.chunk import (
    MAX_CHUNK_BYTES,
    MAX_METRICS,
    MAX_ROWS,
    Chunk,
    Digest,
    RowsLike,
    ValuesLike,
    build_chunk,
    encode_chunk,
)
from gitruns.commits import commit_run, summary_overrides
from gitruns.errors import (
    GitRunsError,
    InvalidArgumentError,
    InvalidValueError,
    RepositoryError,
    RunNotFoundError,
    StepOrderError,
)
from gitruns.journal import Journal, JournalFile, RunLock
from gitruns.refs import RunRef, Sha
from gitruns.store import MAX_OBJECT_BYTES, RUN_JSON, RunStore, Snapshot, dumps_json
from gitruns.summary import summarize
from gitruns.values import INT64_MAX, Value, check_unicode, clean_row, unencodable

logger = logging.getLogger(__name__)

FSYNC_MODES = ("never", "commit", "always")

#: A ref lock file older than this is left over, even if no run lock says so.
STALE_REF_LOCK_SECONDS = 60.0

#: A segment is handed off once its journal holds this many bytes or its
#: buffer this many metrics: every segment fits in one chunk, and a wide run
#: holds a few MiB of journaled rows at a time, not a whole window of them.
SEGMENT_BYTES = MAX_CHUNK_BYTES // 8
SEGMENT_METRICS = MAX_METRICS // 2

#: The most one log() call may hold, journaled (the rest of a chunk's room).
MAX_CALL_BYTES = MAX_CHUNK_BYTES // 4

#: Buffers handed off but not yet taken by the committer, past which log()
#: waits. The committer takes them all at once, so rows in memory stay below
#: twice this many windows whatever the length of the run.
MAX_BACKLOG = 8

#: Journaled bytes of the rows handed off but not yet committed, past which
#: log() waits (a buffer larger than this alone still goes): it bounds the
#: memory of wide runs, whose windows each hold many MiB of rows.
MAX_BACKLOG_BYTES = 32 << 20

#: Whether the chunk codec can store float columns as float32.
CODEC_FLOAT32 = "float32" in inspect.signature(build_chunk).parameters

_FLOAT = frozenset({float})

# Writers of this process; a forked child must not write into their journals.
_live_writers: weakref.WeakSet[RunWriter] = weakref.WeakSet()


def journal_dir(store: RunStore, run: RunRef) -> Path:
    """Where the journal of ``run`` keeps what is not committed yet."""
    return store.data_dir / "journal" / run.project / run.run_id


def journaled_runs(store: RunStore) -> list[RunRef]:
    """The runs whose journal holds records (a live or a crashed writer's)."""
    root = store.data_dir / "journal"
    if not root.exists():
        return []
    return [
        RunRef(folder.parent.name, folder.name)
        for folder in sorted(root.glob("*/*"))
        if Journal(folder).files()
    ]


def now_iso(ts: float | None = None) -> str:
    """A UTC ISO-8601 time stamp, to the second."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WriterOptions:
    """How a run is written.

    Attributes:
        window: steps per window; a new run's window is fixed for its life.
        flush_interval: seconds after which buffered rows are committed even
            though their window is not full.
        fsync: ``never`` (what log() accepted survives a process crash),
            ``commit`` (also fsync each commit's objects: committed steps
            survive a power loss) or ``always`` (also sync the journal at
            every log() call: every accepted step survives a power loss).
        background: commit on a thread of its own rather than in log().
        float32: store float metrics as float32 (half the bytes; each value
            rounded to the nearest float32). None keeps the run's own choice:
            what its run.json says, else its fork source's, else float64.
    """

    window: int = 1000
    flush_interval: float = 30.0
    fsync: str = "never"
    background: bool = True
    float32: bool | None = None

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_MODES:
            raise InvalidArgumentError(
                "fsync", self.fsync, f"use one of {', '.join(FSYNC_MODES)}"
            )
        window = self.window
        if type(window) is not int or not 1 <= window <= MAX_ROWS:
            raise InvalidArgumentError(
                "window", window, f"use a whole number of steps in 1..{MAX_ROWS}"
            )
        interval = self.flush_interval
        if (
            isinstance(interval, bool)
            or not isinstance(interval, (int, float))
            or not interval >= 0
        ):
            raise InvalidArgumentError(
                "flush_interval",
                interval,
                "use a number of seconds, 0 or more (0: at every step, "
                "math.inf: never)",
            )
        for name in ("background", "float32"):
            value = getattr(self, name)
            if not isinstance(value, bool) and (
                name == "background" or value is not None
            ):
                raise InvalidArgumentError(name, value, "use True or False")


class Buffer:
    """The finished rows of one window (or of a part of one), row by row.

    Attributes:
        start: the window's first step, a multiple of the window size.
        end: the first step past the window.
        width: keys over all rows, a bound on the distinct metrics.
        size: bytes the journal took for the rows.
        width_limit: the width at which the distinct metrics are counted again.
    """

    __slots__ = (
        "steps",
        "times",
        "rows",
        "start",
        "end",
        "width",
        "size",
        "width_limit",
        "_distinct",
        "_counted",
    )

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.times: list[float] = []
        self.rows: list[dict[str, Value]] = []
        self.start = self.end = 0
        self.width = 0
        #: Bytes the journal took for these rows.
        self.size = 0
        self.width_limit = SEGMENT_METRICS
        self._distinct: set[str] = set()
        self._counted = 0

    def add(self, step: int, when: float, row: dict[str, Value], window: int) -> None:
        """Append one finished row (off the hot path, which inlines this)."""
        if not self.steps:
            self.start = step - step % window
            self.end = self.start + window
        self.steps.append(step)
        self.times.append(when)
        self.rows.append(row)
        self.width += len(row)

    def too_wide(self) -> bool:
        """Whether the rows hold :data:`SEGMENT_METRICS` distinct metrics."""
        # Rows are not changed once added: count only those added since.
        self._distinct.update(*self.rows[self._counted :])
        self._counted = len(self.rows)
        distinct = len(self._distinct)
        # No row can add more new metrics than it has keys: count again only
        # once the rows could have reached the bound.
        self.width_limit = self.width + SEGMENT_METRICS - distinct
        return distinct >= SEGMENT_METRICS

    def columns(self) -> dict[str, tuple[RowsLike, ValuesLike]]:
        """Metric name -> (row indices, values), as build_chunk takes them.

        Consecutive rows with the same keys (most rows of a training loop)
        are transposed in one go, with no Python work per value.
        """
        rows = self.rows
        parts: dict[str, list[tuple[range, ValuesLike]]] = {}
        first = 0
        for keys, group in itertools.groupby(map(tuple, rows)):
            stop = first + len(list(group))
            if keys:
                indices = range(first, stop)
                block = _transposed(rows[first:stop], len(keys))
                for key, values in zip(keys, block, strict=True):
                    parts.setdefault(key, []).append((indices, values))
            first = stop
        return {key: _joined(pieces) for key, pieces in parts.items()}


def _transposed(block: list[dict[str, Value]], width: int) -> Iterable[ValuesLike]:
    """The columns of rows that have the same keys, in the order of the keys."""
    flat = list(itertools.chain.from_iterable(map(dict.values, block)))
    if _FLOAT.issuperset(map(type, flat)):
        # All floats: typed arrays already, so the codec need not scan them.
        table = np.array(flat, dtype=np.float64).reshape(len(block), width)
        return list(np.ascontiguousarray(table.T))
    return zip(*map(dict.values, block), strict=True)


def _joined(pieces: list[tuple[range, ValuesLike]]) -> tuple[RowsLike, ValuesLike]:
    """One metric's pieces, from runs of rows with different keys, as one column."""
    if len(pieces) == 1:
        indices, values = pieces[0]
        return np.arange(indices.start, indices.stop), values
    rows = np.concatenate([np.arange(r.start, r.stop) for r, _ in pieces])
    if all(isinstance(values, np.ndarray) for _, values in pieces):
        return rows, np.concatenate([values for _, values in pieces])
    return rows, [
        value
        for _, values in pieces
        for value in (values.tolist() if isinstance(values, np.ndarray) else values)
    ]


@dataclass
class Job:
    """A segment (possibly empty) and the run metadata to commit with it.

    Attributes:
        buffer: the rows to commit.
        journals: the journal files that hold them; deleted once committed.
        meta: run metadata to commit with them.
        state: the run's new state, if it changes.
        upto: the newest journal file handed off with or before this job; a
            retry after a failed commit replays the journal up to it.
        handle: the journal file, still mapped, for the committer to close.
    """

    buffer: Buffer
    journals: list[Path]
    meta: dict[str, Any] | None = None
    state: str | None = None
    upto: Path | None = None
    handle: JournalFile | None = None


class RunWriter:
    """Writes one run: the single writer that holds the run's lock."""

    def __init__(
        self,
        store: RunStore,
        run: RunRef,
        snapshot: Snapshot,
        options: WriterOptions,
        lock: RunLock,
    ) -> None:
        self.store = store
        self.run = run
        self.options = options
        self.window = snapshot.window
        #: The last step whose window still fits in int64, as chunks need.
        self.max_step = last_step_for(snapshot.window)
        self._lock = lock
        self._journal = Journal(
            journal_dir(store, run), fsync=options.fsync == "always"
        )
        #: Steps that a previous writer journaled and open() committed.
        self.recovered = 0
        self._pack = self._journal.pack
        self._write = self._journal.write
        if options.fsync != "never":
            store.repo.object_store.fsync_object_files = True
        self.float32 = (
            _float32_of(store, snapshot.info)
            if options.float32 is None
            else options.float32
        )
        if self.float32 and not CODEC_FLOAT32:
            logger.warning(
                "run %s: this gitruns cannot store float32 yet; floats are "
                "stored as float64",
                run.path,
            )

        # Committed state; after start() only the committer thread changes it.
        if snapshot.commit is None:
            raise ValueError("a RunWriter starts from a commit; use RunWriter.open()")
        self._snapshot = snapshot
        self._tip: Sha = snapshot.commit
        self._totals = self._tip_totals(snapshot)

        # Pending state, owned by the caller's thread.
        self._step = _next_step(snapshot)
        self._row: dict[str, Value] | None = None
        self._row_time = 0.0
        self._row_size = 0
        self._buffer = Buffer()
        self._last_flush = time.monotonic()
        self._meta: dict[str, Any] | None = None
        #: config and summary_overrides as last journaled, for the next patch.
        self._latest: dict[str, dict[str, Any]] = {}
        #: Bytes of metadata journaled since its size was last checked, and
        #: the largest file it made then.
        self._grown = 0
        self._sized = 0
        self._handed_off: Path | None = None

        self._error: BaseException | None = None
        self._queue: queue.Queue[Job | None] = queue.Queue(MAX_BACKLOG)
        # Journaled bytes of the rows handed to the committer, not committed.
        self._backlog = threading.Condition()
        self._backlog_bytes = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pid = os.getpid()
        _live_writers.add(self)

    # -- opening ------------------------------------------------------------

    @classmethod
    def open(cls, store: RunStore, run: RunRef, options: WriterOptions) -> RunWriter:
        """Lock an existing run, commit what its journal holds, and start writing.

        Args:
            store: the repository of the run.
            run: the run, which must exist.
            options: how to write; with ``options.background`` a committer
                thread commits finished segments.

        Returns:
            The writer, holding the run's lock until finish() or abandon().

        Raises:
            RunLockedError: if another live writer holds the run.
            RunNotFoundError: if the run has no branch.
            RepositoryError: if the repository cannot be written.
        """
        lock = RunLock(
            store.data_dir / "locks" / run.project / f"{run.run_id}.lk", run.path
        )
        lock.acquire()
        try:
            _clear_stale_ref_lock(store, run, lock.stale_holder is not None)
            tip = store.tip(run)
            if tip is None:
                raise RunNotFoundError(run.path, str(store.git_dir))
            writer = cls(store, run, store.read_snapshot(tip, run), options, lock)
            writer.recovered = writer.recover()
        except BaseException:
            lock.release()
            raise
        if options.background:
            writer._thread = threading.Thread(
                target=writer._commit_loop, name=f"gitruns-{run.path}", daemon=True
            )
            writer._thread.start()
        return writer

    def reload(self) -> None:
        """Re-read the branch tip after an operation moved it under our lock.

        Raises:
            RunNotFoundError: if the run's branch was deleted meanwhile.
            RepositoryError: if the tip cannot be read.
        """
        self.flush()
        tip = self.store.tip(self.run)
        if tip is None:
            raise RunNotFoundError(self.run.path, str(self.store.git_dir))
        snapshot = self.store.read_snapshot(tip, self.run)
        self._snapshot, self._tip = snapshot, tip
        self._totals = self._tip_totals(snapshot)
        self._step = _next_step(snapshot)

    def _tip_totals(self, snapshot: Snapshot) -> dict[str, Digest]:
        if not snapshot.history.starts:
            return {}
        start = snapshot.history.starts[-1]
        chunk = self.store.read_segment(self.run.path, snapshot.history, start)
        return dict(chunk.totals())

    def recover(self) -> int:
        """Commit the rows a previous writer journaled but never committed.

        Returns:
            How many steps were recovered.
        """
        files = self._journal.files()
        if not files:
            return 0
        steps = self._replay(files)
        if steps:
            self._step = max(self._step, steps[-1] + 1)
            logger.warning(
                "run %s: recovered %d journaled steps (%d..%d)",
                self.run.path,
                len(steps),
                steps[0],
                steps[-1],
            )
        return len(steps)

    def _replay(
        self,
        files: list[Path],
        state: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> list[int]:
        """Commit what ``files`` hold beyond the committed steps, then retire them.

        Records at or below the last committed step were committed before a
        crash that came between moving the branch and deleting the journal.
        The committer thread calls this too, so it leaves the caller's step
        alone.

        Returns:
            The steps committed, in order.
        """
        last = self._snapshot.last_step
        floor = -1 if last is None else last
        rows: dict[int, tuple[float, dict[str, Value]]] = {}
        journaled_meta: dict[str, Any] = {}
        previous = floor
        known: set[str] = set()
        for record in self._journal.replay(files):
            step = record.step
            if step is None:
                _merge_meta(journaled_meta, record.data, self._snapshot)
                continue
            problem = _unstorable(step, record.data, known, self.max_step)
            if problem:
                # Only a bug or a tampered journal gets here; the rest of the
                # journal must still reach Git.
                logger.error(
                    "run %s: journal record of step %d left out: %s",
                    self.run.path,
                    step,
                    problem,
                )
                continue
            if step <= floor:
                continue
            if step < previous:
                logger.warning(
                    "run %s: journal step %d after %d ignored",
                    self.run.path,
                    step,
                    previous,
                )
                continue
            previous = step
            if step in rows:
                rows[step][1].update(record.data)
            else:
                rows[step] = (record.when, dict(record.data))
        journaled_meta.update(meta or {})

        # One segment per window, all in one commit that retires the journal.
        jobs = [Job(Buffer(), [])]
        for step in sorted(rows):
            buffer = jobs[-1].buffer
            if buffer.steps and step >= buffer.end:
                jobs.append(Job(Buffer(), []))
            jobs[-1].buffer.add(step, rows[step][0], rows[step][1], self.window)
        jobs.append(Job(Buffer(), files, journaled_meta or None, state))
        self._commit(jobs)
        return sorted(rows)

    # -- the caller's side --------------------------------------------------

    @property
    def step(self) -> int:
        """The step the next plain log() call writes to."""
        return self._step

    def log(
        self,
        row: dict[str, Value],
        step: int | None = None,
        commit: bool | None = None,
        when: float | None = None,
    ) -> None:
        """Accept one validated row; see DESIGN.md §5 for step and commit.

        The row is in the journal when this returns, so a crash of the
        process after that loses none of it. The writer keeps ``row`` itself
        (clean_row makes a new dict for each call): do not change it after.

        Args:
            row: the metrics, already checked by :func:`gitruns.values.clean_row`.
            step: the step to log at; None for the current one.
            commit: whether the call ends its step; None ends it unless
                ``step`` is given.
            when: the time stamp in seconds since the epoch; None for now.

        Raises:
            StepOrderError: for a step below the current one.
            InvalidValueError: for a step beyond the run's last step, a bad
                time stamp, a str that is not valid Unicode, or a call over
                the size limit.
            RepositoryError: if the journal cannot be written (disk full,
                read-only repository); the call is then not recorded.
            GitRunsError: if the writer is finished, or belongs to the
                process this one was forked from.
        """
        if self._closed:
            raise self._closed_error()
        current = self._step
        if step is None:
            step = current
            ends_step = True if commit is None else bool(commit)
        else:
            ends_step = bool(commit)
            if step < current:
                raise StepOrderError(self.run.path, step, current)
        if step > self.max_step:
            raise InvalidValueError(
                "step",
                step,
                f"the last step a run with window {self.window} can hold is "
                f"{self.max_step} (steps are int64); start a new run",
            )
        if when is None:
            when = time.time()
        elif type(when) is not float:
            when = _as_time(when)
        try:
            record = self._pack([step, when, row])
        except (TypeError, ValueError, OverflowError):
            # A str that is not valid Unicode (UnicodeEncodeError).
            raise unencodable(row) from None
        if len(record) > MAX_CALL_BYTES:
            raise InvalidValueError(
                "<row>",
                f"<{len(row)} keys>",
                f"one log() call may hold {MAX_CALL_BYTES >> 20} MiB; split it",
            )

        # Nothing above changed any state: a refused call leaves no trace.
        if step != current:
            if self._row is not None:
                self._close_row()
            self._step = step
        open_row = self._row
        if open_row is None:
            self._open_row(step, when)
            self._write(record)
            self._row = row
            self._row_size = len(record)
        else:
            self._write(record)
            open_row.update(row)
            self._row_size += len(record)
        if ends_step:
            self._close_row()
            self._step = step + 1

    def _closed_error(self) -> GitRunsError:
        if os.getpid() != self._pid:
            return GitRunsError(
                f"run {self.run.path} is written by process {self._pid}, which "
                "forked this one; log from that process, or start a run here"
            )
        return GitRunsError(
            f"run {self.run.path} is finished; start a new run or resume it"
        )

    def _open_row(self, step: int, when: float) -> None:
        buffer = self._buffer
        if buffer.steps and (
            step >= buffer.end
            or self._journal.size >= SEGMENT_BYTES
            or time.monotonic() - self._last_flush >= self.options.flush_interval
            or (buffer.width >= buffer.width_limit and buffer.too_wide())
        ):
            self._handoff()
        self._row_time = when

    def _close_row(self) -> None:
        step = self._step
        row = self._row
        if row is None:
            return
        buffer = self._buffer
        if not buffer.steps:
            buffer.start = step - step % self.window
            buffer.end = buffer.start + self.window
        buffer.steps.append(step)
        buffer.times.append(self._row_time)
        buffer.rows.append(row)
        buffer.width += len(row)
        buffer.size += self._row_size
        self._row = None
        if step + 1 == buffer.end:
            self._handoff()

    def _handoff(self, state: str | None = None) -> None:
        done = self._journal.rotate()
        if done is not None:
            self._handed_off = done.path
            if self._row is not None:
                # The open row's records went with the rotated file, which the
                # job deletes; keep them on disk for the row's own commit.
                self._write(self._journal.encode(self._step, self._row_time, self._row))
        job = Job(
            self._buffer,
            [done.path] if done else [],
            self._meta,
            state,
            self._handed_off,
            done,
        )
        self._buffer = Buffer()
        self._meta = None
        self._last_flush = time.monotonic()
        if self._thread is not None:
            size = job.buffer.size
            with self._backlog:
                while (
                    self._backlog_bytes
                    and self._backlog_bytes + size > MAX_BACKLOG_BYTES
                ):
                    self._backlog.wait(1.0)
                self._backlog_bytes += size
            self._queue.put(job)
        else:
            self._run_jobs([job])

    def set_meta(self, **meta: Any) -> None:
        """Journal run metadata (config, name, summary overrides...) to commit next.

        ``config`` and ``summary_overrides`` are whole dicts here, but the
        journal gets only what changed since the last call: a script that sets
        thousands of summary keys one by one journals each key once.

        Raises:
            InvalidArgumentError: a str in it has no UTF-8 form; nothing of
                this call is journaled.
        """
        if self._closed:
            logger.warning(
                "run %s is finished; %s not stored", self.run.path, ", ".join(meta)
            )
            return
        journaled = dict(meta)
        for key in _PATCHED & meta.keys():
            before = self._latest.get(key)
            if before is None:
                before = _committed(self._snapshot, key)
            journaled[key + _PATCH] = _patch(before, journaled.pop(key))
        # What is new is checked; the rest was, when it was journaled.
        for key, value in journaled.items():
            check_unicode(value, key.removesuffix(_PATCH))
        record = self._journal.encode_meta(time.time(), journaled)
        self._grown += len(record)
        # Not at every call, sizing a large dict costs: when enough has been
        # journaled, or the largest one may be near the limit (a journaled
        # byte can take a few in the indented file).
        if (
            self._grown > _RECHECK_BYTES
            or self._sized + 4 * self._grown > MAX_OBJECT_BYTES
        ):
            sizes = [len(dumps_json(meta[k], k)) for k in _PATCHED & meta.keys()]
            self._sized, self._grown = max(sizes, default=self._sized), 0
        for key in _PATCHED & meta.keys():
            self._latest[key] = dict(meta[key])
        self._write(record)
        self._add_meta(meta)

    def _add_meta(self, meta: dict[str, Any]) -> None:
        if self._meta is None:
            self._meta = {}
        self._meta.update(meta)

    def flush(self) -> None:
        """Commit every finished row now and wait until it is committed."""
        if self._buffer.steps or self._meta:
            self._handoff()
        self._wait()

    def _wait(self) -> None:
        if self._thread is not None:
            self._queue.join()
        if self._error is not None:
            raise RepositoryError(
                f"run {self.run.path}: committing failed: {self._error}; what was "
                "logged is kept in the journal, run `gitruns recover "
                f"{self.run.path}` once the cause is fixed"
            ) from self._error

    def live_totals(self) -> dict[str, Digest]:
        """Digests of everything accepted so far, committed or not."""
        self._wait()
        totals = dict(self._totals)
        pending = [self._buffer]
        if self._row is not None:
            open_row = Buffer()
            open_row.add(self._step, self._row_time, self._row, self.window)
            pending.append(open_row)
        for buffer in pending:
            if buffer.steps:
                totals = dict(self._build(buffer, totals).totals())
        return totals

    @property
    def snapshot(self) -> Snapshot:
        """The committed state (wait for the committer first with flush())."""
        return self._snapshot

    def finish(self, state: str, **meta: Any) -> Sha:
        """Commit everything with the run's final state; release the run.

        A run that ``crashed`` is committed from its journal, not from the
        buffers in memory: the crash (or the signal that stopped the
        process) may have struck half-way through updating them, while each
        journal record was written whole.

        Raises:
            RepositoryError: if committing failed; the journal keeps what
                was logged, and ``gitruns recover`` commits it later.
        """
        if os.getpid() != self._pid:
            # A forked child (a data loader worker) exiting through atexit
            # must not finish its parent's run under the parent's feet.
            logger.warning("run %s: not finished from a forked child", self.run.path)
            return self._tip
        if self._closed:
            return self._tip
        try:
            if state == "crashed":
                self._finish_from_journal(meta)
            else:
                if self._row is not None:
                    self._close_row()
                self._add_meta(meta)
                self._handoff(state=state)
                self._stop_thread()
                self._wait()
            try:
                self.store.tidy()
            except GitRunsError as exc:
                # Housekeeping: everything is committed; git gc packs later.
                logger.warning(
                    "run %s: loose objects not packed: %s", self.run.path, exc
                )
        finally:
            self._closed = True
            self._journal.close()
            self._lock.release()
        return self._tip

    def _finish_from_journal(self, meta: dict[str, Any]) -> None:
        self._stop_thread()
        self._journal.close()
        pending = dict(self._meta or {})
        pending.update(meta)
        self._row, self._buffer, self._meta = None, Buffer(), None
        self._error = None  # the journal holds whatever a failed commit held
        try:
            steps = self._replay(self._journal.files(), state="crashed", meta=pending)
        except Exception as exc:
            raise RepositoryError(
                f"run {self.run.path}: committing failed: {exc}; what was logged "
                f"is kept in the journal, run `gitruns recover {self.run.path}` "
                "once the cause is fixed"
            ) from exc
        if steps:
            self._step = max(self._step, steps[-1] + 1)

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def abandon(self) -> None:
        """Stop without committing; the journal keeps what was accepted."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        self._journal.close()
        self._closed = True
        self._lock.release()

    # -- the committer's side -----------------------------------------------

    def _commit_loop(self) -> None:
        self._journal.prepare()
        while True:
            jobs = [self._queue.get()]
            # Group commit: whatever was queued meanwhile joins this commit.
            while jobs[-1] is not None:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = jobs[-1] is None
            try:
                if not stop:
                    # The caller has just moved on from its file: have the
                    # next one ready before it needs it.
                    self._journal.prepare()
                self._run_jobs([job for job in jobs if job is not None])
            except Exception as exc:  # noqa: BLE001 - the loop must go on
                logger.error("run %s: committer: %s", self.run.path, exc)
                self._error = self._error or exc
            finally:
                done = sum(job.buffer.size for job in jobs if job is not None)
                with self._backlog:
                    self._backlog_bytes -= done
                    self._backlog.notify_all()
                for _ in jobs:
                    self._queue.task_done()
            if stop:
                return

    def _run_jobs(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.handle is not None:
                job.handle.close()
        if not jobs:
            return
        failed = self._error
        try:
            if failed is None:
                self._commit(jobs)
            else:
                # An earlier commit failed and left its rows in the journal;
                # commit everything up to these jobs from there, in order.
                upto = jobs[-1].upto
                files = [p for p in self._journal.files() if upto and p <= upto]
                meta, state = _merged(jobs)
                self._replay(files, state, meta)
        except Exception as exc:  # noqa: BLE001 - reported at flush/finish
            self._error = exc
            if failed is None:
                logger.error(
                    "run %s: commit failed, the journal keeps the rows: %s",
                    self.run.path,
                    exc,
                )
            return
        if failed is not None:
            self._error = None
            logger.warning(
                "run %s: committing works again after: %s", self.run.path, failed
            )

    def _commit(self, jobs: list[Job]) -> None:
        """Write every job's segment, metadata and state in one commit."""
        snapshot = self._snapshot
        info = dict(snapshot.info)
        config = snapshot.config
        extra = snapshot.extra
        overrides = summary_overrides(snapshot)
        meta, state = _merged(jobs)
        changes_meta = bool(meta)
        if meta:
            config = meta.pop("config", config)
            overrides = meta.pop("summary_overrides", overrides)
            extra = {**extra, **meta.pop("extra", {})}
            info.update(meta)
            info["summary_set"] = sorted(overrides)
        if state is not None:
            info["state"] = state
        elif info.get("state") != "running":
            info["state"] = "running"
        if info.get("float32", False) != self.float32:
            info["float32"] = self.float32

        # One blob per segment; a segment's digests start from the one before.
        history = snapshot.history.copy()
        totals = self._totals
        segments: list[tuple[int, Sha]] = []
        for job in jobs:
            buffer = job.buffer
            if buffer.steps:
                chunk = self._build(buffer, totals)
                blob = self.store.blob(encode_chunk(chunk))
                history.add(buffer.steps[0], blob)
                segments.append((buffer.steps[0], blob))
                totals = dict(chunk.totals())
                info["last_step"] = buffer.steps[-1]
        journals = [path for job in jobs for path in job.journals]
        if not segments and state is None and not changes_meta:
            Journal.retire(journals)
            return
        info["updated"] = now_iso()

        summary = summarize(totals, info.get("metrics", {}), overrides)
        new = Snapshot(None, info, config, summary, history, extra)
        if segments:
            what = f"steps {segments[0][0]}..{info['last_step']}"
        else:
            what = f"state {info['state']}" if state else "config and summary"
        # No reflog entry: a run's own history is its first-parent line, and
        # an entry per window would cost a read of the Git config each.
        sha = commit_run(
            self.store,
            self.run,
            new,
            [self._tip],
            what,
            conflict="something outside this writer moved the branch (a pull, "
            "git itself); the journal keeps what was logged: `gitruns recover` "
            "commits it once that is done",
        )
        new.commit = sha
        self._snapshot, self._tip, self._totals = new, sha, totals
        for first, blob in segments:
            self.store.record_segment(self.run, first, blob, sha)
        Journal.retire(journals)
        logger.info(
            "run %s: committed %s as %s", self.run.path, what, sha[:10].decode()
        )

    def _build(self, buffer: Buffer, prefix: dict[str, Digest]) -> Chunk:
        columns = buffer.columns()
        if self.float32 and CODEC_FLOAT32:
            return build_chunk(
                self.window,
                buffer.start,
                buffer.steps,
                buffer.times,
                columns,
                prefix=prefix,
                float32=True,
            )
        return build_chunk(
            self.window, buffer.start, buffer.steps, buffer.times, columns, prefix
        )


#: Metadata journaled as patches (``<key>_patch``: ``{"set": {}, "del": []}``).
_PATCHED = frozenset({"config", "summary_overrides"})

#: Journaled metadata bytes after which set_meta checks that config and the
#: summary overrides still fit the size a run's JSON file may have.
_RECHECK_BYTES = 1 << 20
_PATCH = "_patch"


def _committed(snapshot: Snapshot, key: str) -> dict[str, Any]:
    """``config`` or ``summary_overrides`` as a commit holds it."""
    if key == "config":
        return dict(snapshot.config)
    return summary_overrides(snapshot)


def _patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What turns ``before`` into ``after``: keys set (or changed), keys removed."""
    changed = {k: v for k, v in after.items() if k not in before or before[k] != v}
    return {"set": changed, "del": [k for k in before if k not in after]}


def _merge_meta(
    into: dict[str, Any], record: dict[str, Any], snapshot: Snapshot
) -> None:
    """Merge one journaled metadata record into ``into``, applying its patches.

    A patch applies to what the records before it made of the key, else to
    what the run's last commit holds.
    """
    for key, value in record.items():
        if not key.endswith(_PATCH) or key[: -len(_PATCH)] not in _PATCHED:
            into[key] = value
            continue
        name = key[: -len(_PATCH)]
        current = dict(into.get(name, _committed(snapshot, name)))
        current.update(value.get("set", {}))
        for gone in value.get("del", []):
            current.pop(gone, None)
        into[name] = current


def _merged(jobs: list[Job]) -> tuple[dict[str, Any] | None, str | None]:
    """The metadata of jobs merged in order, and the last state they set."""
    meta: dict[str, Any] | None = None
    state: str | None = None
    for job in jobs:
        if job.meta:
            meta = {**(meta or {}), **job.meta}
        if job.state is not None:
            state = job.state
    return meta, state


def last_step_for(window: int) -> int:
    """The last step a run with ``window`` can log: its window must fit in int64."""
    last_start = (INT64_MAX - window + 1) // window * window
    return last_start + window - 1


def _unstorable(step: int, data: Any, known: set[str], max_step: int) -> str | None:
    """Why a journal record cannot be committed, or None if it can."""
    if not isinstance(step, int) or not 0 <= step <= max_step:
        return f"step {step!r} is outside 0..{max_step}"
    try:
        clean_row(data, known)
    except GitRunsError as exc:
        return str(exc)
    return None


def _float32_of(store: RunStore, info: dict[str, Any]) -> bool:
    """Whether a run stores float32: its run.json says, or its fork source's does."""
    for _ in range(32):
        stored = info.get("float32")
        if isinstance(stored, bool):
            return stored
        fork = info.get("fork_from")
        if not isinstance(fork, dict) or not isinstance(fork.get("commit"), str):
            return False
        try:
            info = store.read_json(Sha(fork["commit"].encode()), RUN_JSON) or {}
        except GitRunsError:
            return False
    return False


def _next_step(snapshot: Snapshot) -> int:
    last = snapshot.last_step
    after = snapshot.info.get("next_step")
    floor = after if isinstance(after, int) and not isinstance(after, bool) else 0
    return max(0 if last is None else last + 1, floor)


def _as_time(when: Any) -> float:
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        try:
            return float(when.__float__())
        except (AttributeError, TypeError, ValueError):
            raise InvalidValueError(
                "timestamp", when, "a time stamp is seconds since the epoch, a float"
            ) from None
    return float(when)


def _forget_in_child() -> None:
    # A forked child shares the parent's journal mappings: a row it logged
    # would overwrite the parent's. Its copies of the writers write nothing.
    for writer in list(_live_writers):
        writer._closed = True


os.register_at_fork(after_in_child=_forget_in_child)


def _clear_stale_ref_lock(store: RunStore, run: RunRef, holder_died: bool) -> None:
    """Remove the lock file of the run's ref if a dead writer left it behind.

    A writer killed while moving the branch leaves ``<ref>.lock``, and no
    later update of the branch can succeed while it is there. The caller
    holds the run's lock, so only a dead writer (or a stuck foreign tool,
    after a minute) can own it.
    """
    path = store.git_dir / (run.ref.decode() + ".lock")
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return
    if holder_died or age > STALE_REF_LOCK_SECONDS:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        logger.warning(
            "run %s: removed %s, left %.0f s ago by a writer that is gone",
            run.path,
            path,
            age,
        )
