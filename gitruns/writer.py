"""Buffering log() calls into windows of steps and committing one segment each.

The caller's thread only validates, journals and appends to a columnar
buffer. A buffer holds the rows of one window; it is handed to a committer
thread when the window fills, when the flush interval has passed, and on
finish. The committer encodes the segment, writes its blob, trees and commit,
moves the branch by compare-and-swap and then deletes the journal file that
held those rows. A window flushed in several parts is stored as several
segment files, so no byte already committed is written again.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gitruns.chunk import Chunk, Digest, build_chunk, decode_chunk, encode_chunk
from gitruns.errors import (
    ConflictError,
    GitRunsError,
    InvalidValueError,
    RepositoryError,
    RunNotFoundError,
    StepOrderError,
)
from gitruns.journal import Journal, Record, RunLock
from gitruns.readme import render_readme
from gitruns.refs import RunRef, Sha
from gitruns.store import RunStore, Snapshot, chunk_path
from gitruns.summary import summarize
from gitruns.values import INT64_MAX, Value, unencodable

logger = logging.getLogger(__name__)

FSYNC_MODES = ("never", "commit", "always")


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
        fsync: ``never`` (survives a process crash), ``commit`` (also fsync
            Git objects at each commit) or ``always`` (also fsync the journal
            at every log() call, which survives power loss).
        background: commit on a thread of its own rather than in log().
    """

    window: int = 1000
    flush_interval: float = 30.0
    fsync: str = "never"
    background: bool = True

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {FSYNC_MODES}, not {self.fsync!r}")
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be a positive int, not {self.window!r}")


class Buffer:
    """The rows of one window, column by column."""

    __slots__ = ("steps", "times", "metrics", "window_index")

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.times: list[float] = []
        self.metrics: dict[str, tuple[list[int], list[Value]]] = {}
        self.window_index = -1

    def add(self, step: int, when: float, row: dict[str, Value], window: int) -> None:
        """Append one finished row."""
        index = len(self.steps)
        if not index:
            self.window_index = step // window
        self.steps.append(step)
        self.times.append(when)
        metrics = self.metrics
        for key, value in row.items():
            column = metrics.get(key)
            if column is None:
                column = metrics[key] = ([], [])
            column[0].append(index)
            column[1].append(value)


@dataclass
class Job:
    """A segment (possibly empty) and the run metadata to commit with it."""

    buffer: Buffer
    journals: list[Path]
    meta: dict[str, Any] | None = None
    state: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


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
        self._lock = lock
        self._journal = Journal(
            store.data_dir / "journal" / run.project / run.run_id,
            fsync=options.fsync == "always",
        )
        if options.fsync != "never":
            store.repo.object_store.fsync_object_files = True

        # Committed state; after start() only the committer thread changes it.
        self._snapshot = snapshot
        self._tip: Sha = snapshot.commit  # type: ignore[assignment]
        self._totals = self._tip_totals(snapshot)

        # Pending state, owned by the caller's thread.
        last = snapshot.last_step
        self._step = max(0 if last is None else last + 1, snapshot.info.get("next_step", 0))
        self._row: dict[str, Value] | None = None
        self._row_time = 0.0
        self._buffer = Buffer()
        self._last_flush = time.monotonic()
        self._meta: dict[str, Any] | None = None

        self._error: BaseException | None = None
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- opening ------------------------------------------------------------

    @classmethod
    def open(
        cls, store: RunStore, run: RunRef, options: WriterOptions
    ) -> RunWriter:
        """Lock an existing run, commit what its journal holds, and start writing.

        Raises:
            RunLockedError: if another live process writes the run.
            RunNotFoundError: if the run has no branch.
        """
        lock = RunLock(store.data_dir / "locks" / run.project / f"{run.run_id}.lk", run.path)
        lock.acquire()
        try:
            tip = store.tip(run)
            if tip is None:
                from gitruns.errors import RunNotFoundError

                raise RunNotFoundError(run.path, str(store.git_dir))
            writer = cls(store, run, store.read_snapshot(tip), options, lock)
            writer.recover()
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
        """Re-read the branch tip after an operation moved it under our lock."""
        self.flush()
        tip = self.store.tip(self.run)
        assert tip is not None
        snapshot = self.store.read_snapshot(tip)
        self._snapshot, self._tip = snapshot, tip
        self._totals = self._tip_totals(snapshot)
        last = snapshot.last_step
        self._step = max(0 if last is None else last + 1, snapshot.info.get("next_step", 0))

    def _tip_totals(self, snapshot: Snapshot) -> dict[str, Digest]:
        if not snapshot.history.starts:
            return {}
        start = snapshot.history.starts[-1]
        source = f"{self.run.path}:{chunk_path(start, self.window)}"
        data = self.store.read_blob(snapshot.history.blobs[start], source)
        return dict(decode_chunk(data, source=source).totals())

    def recover(self) -> int:
        """Commit the rows a previous writer journaled but never committed.

        Returns:
            How many steps were recovered.
        """
        stale = self._journal.files()
        if not stale:
            return 0
        last = self._snapshot.last_step
        rows: dict[int, tuple[float, dict[str, Value]]] = {}
        previous = -1 if last is None else last
        for step, when, data in self._journal.replay():
            if step <= (-1 if last is None else last):
                continue  # committed before the crash
            if step < previous:
                logger.warning("journal step %d after %d ignored", step, previous)
                continue
            previous = step
            if step in rows:
                rows[step][1].update(data)
            else:
                rows[step] = (when, dict(data))
        buffer = Buffer()
        for step in sorted(rows):
            if buffer.steps and step // self.window != buffer.window_index:
                self._commit(Job(buffer, []))
                buffer = Buffer()
            buffer.add(step, rows[step][0], rows[step][1], self.window)
        self._commit(Job(buffer, stale))
        if rows:
            self._step = max(rows) + 1
            logger.warning(
                "run %s: recovered %d journaled steps (%d..%d)",
                self.run.path,
                len(rows),
                min(rows),
                max(rows),
            )
        return len(rows)

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
        """Accept one validated row; see DESIGN.md §5 for step and commit."""
        if self._closed:
            raise GitRunsError(
                f"run {self.run.path} is finished; start a new run or resume it"
            )
        current = self._step
        ends_step = commit if commit is not None else step is None
        if step is None:
            step = current
        elif step != current:
            if step < current:
                raise StepOrderError(self.run.path, step, current)
            if self._row is not None:
                self._close_row()
            self._step = step
        if when is None:
            when = time.time()
        if self._row is None:
            self._open_row(step, when)
        self._journal.append(step, when, row)
        self._row.update(row)  # type: ignore[union-attr]
        if ends_step:
            self._close_row()
            self._step = step + 1

    def _open_row(self, step: int, when: float) -> None:
        buffer = self._buffer
        if buffer.steps and (
            step // self.window != buffer.window_index
            or time.monotonic() - self._last_flush >= self.options.flush_interval
        ):
            self._handoff()
        self._row = {}
        self._row_time = when

    def _close_row(self) -> None:
        step = self._step
        self._buffer.add(step, self._row_time, self._row or {}, self.window)
        self._row = None
        if (step + 1) % self.window == 0:
            self._handoff()

    def _handoff(self, state: str | None = None) -> None:
        journal = self._journal.rotate()
        job = Job(self._buffer, [journal] if journal else [], self._meta, state)
        self._buffer = Buffer()
        self._meta = None
        self._last_flush = time.monotonic()
        if self._thread is not None:
            self._queue.put(job)
        else:
            self._run_job(job)

    def set_meta(self, **meta: Any) -> None:
        """Queue run metadata (config, name, summary overrides...) for the next commit.

        ``extra`` maps root tree names to ``(mode, sha)`` entries (saved files)
        that the next commit adds or replaces; every other key goes to run.json.
        """
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
                totals = dict(_build(buffer, self.window, totals).totals())
        return totals

    @property
    def snapshot(self) -> Snapshot:
        """The committed state (wait for the committer first with flush())."""
        return self._snapshot

    def finish(self, state: str, **meta: Any) -> Sha:
        """Commit everything with the run's final state; release the run."""
        if self._closed:
            return self._tip
        if self._row is not None:
            self._close_row()
        self.set_meta(**meta)
        self._handoff(state=state)
        try:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None
            self._wait()
            self.store.pack_loose_objects()
        finally:
            self._closed = True
            self._journal.close()
            self._lock.release()
        return self._tip

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
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._run_job(job)
            finally:
                self._queue.task_done()

    def _run_job(self, job: Job) -> None:
        if self._error is not None:
            return  # keep the journal: later rows need the failed ones first
        try:
            self._commit(job)
        except Exception as exc:  # noqa: BLE001 - reported at flush/finish
            self._error = exc
            logger.error("run %s: commit failed, journal kept: %s", self.run.path, exc)

    def _commit(self, job: Job) -> None:
        snapshot = self._snapshot
        info = dict(snapshot.info)
        config = snapshot.config
        extra = snapshot.extra
        overrides = {k: snapshot.summary.get(k) for k in info.get("summary_set", [])}
        if job.meta:
            meta = dict(job.meta)
            config = meta.pop("config", config)
            overrides = meta.pop("summary_overrides", overrides)
            extra = {**extra, **meta.pop("extra", {})}
            info.update(meta)
            info["summary_set"] = sorted(overrides)
        if job.state is not None:
            info["state"] = job.state
        elif info.get("state") != "running":
            info["state"] = "running"

        history = snapshot.history.copy()
        totals = self._totals
        buffer = job.buffer
        if buffer.steps:
            chunk = _build(buffer, self.window, totals)
            history.add(buffer.steps[0], self.store.blob(encode_chunk(chunk)))
            totals = dict(chunk.totals())
            info["last_step"] = buffer.steps[-1]
        elif job.state is None and not job.meta:
            Journal.retire(job.journals)
            return
        info["updated"] = now_iso()

        summary = summarize(totals, info.get("metrics", {}), overrides)
        new = Snapshot(None, info, config, summary, history, extra)
        if buffer.steps:
            what = f"steps {buffer.steps[0]}..{buffer.steps[-1]}"
        else:
            what = f"state {info['state']}" if job.state else "config and summary"
        message = f"{self.run.path}: {what}\n\nGitruns-Run: {self.run.path}\n"
        sha = self.store.write_commit(
            new, [self._tip], message, render_readme(info, config, summary)
        )
        if not self.store.update_ref(self.run, self._tip, sha, f"gitruns: {what}"):
            raise ConflictError(self.run.branch, 1)
        new.commit = sha
        self._snapshot, self._tip, self._totals = new, sha, totals
        if buffer.steps:
            first = buffer.steps[0]
            self.store.record_segment(self.run, first, history.blobs[first], sha)
        Journal.retire(job.journals)
        logger.info("run %s: committed %s as %s", self.run.path, what, sha[:10].decode())


def _build(buffer: Buffer, window: int, prefix: dict[str, Digest]) -> Chunk:
    return build_chunk(
        window,
        buffer.window_index * window,
        buffer.steps,
        buffer.times,
        buffer.metrics,
        prefix=prefix,
    )
