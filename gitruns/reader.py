"""Reading runs back: run views, history scans and fast columnar reads."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from itertools import chain, repeat
from typing import Any, TypeVar

import numpy as np

from gitruns.chunk import Chunk, Column, Value, fill_rows, values_into_rows
from gitruns.errors import GitRunsError, RepositoryError, RunNotFoundError, require
from gitruns.refs import RunRef, Sha
from gitruns.store import (
    CONFIG_JSON,
    RUN_JSON,
    SUMMARY_JSON,
    History,
    RunStore,
    Snapshot,
)

logger = logging.getLogger(__name__)


class RunView:
    """A stored run, read-only, as of its branch tip when first read."""

    def __init__(self, store: RunStore, run: RunRef, commit: Sha | None = None) -> None:
        self.store = store
        self.ref = run
        self._commit = commit

    def __repr__(self) -> str:
        return f"<RunView {self.path}>"

    @cached_property
    def commit(self) -> Sha:
        """The commit the view reads: the branch tip when first asked."""
        commit = self._commit or self.store.tip(self.ref)
        if commit is None:
            raise RunNotFoundError(self.path, str(self.store.git_dir))
        return commit

    @cached_property
    def snapshot(self) -> Snapshot:
        """The run's tree at its tip, parsed (history trees included).

        Raises:
            RepositoryError: a file of the run is missing, malformed or holds
                fields of the wrong type, or run.json names another run.
        """
        return self.store.read_snapshot(self.commit, self.ref)

    def _json(self, name: bytes) -> Any:
        # run.json, config.json or summary.json alone: listing runs and their
        # state need not read history trees.
        if "snapshot" in self.__dict__:
            snapshot = self.snapshot
            return {RUN_JSON: snapshot.info, CONFIG_JSON: snapshot.config}.get(
                name, snapshot.summary
            )
        cache = self.__dict__.setdefault("_json_cache", {})
        if name not in cache:
            if name != RUN_JSON:
                # A run whose run.json is unreadable is unreadable throughout.
                self.info  # noqa: B018
            cache[name] = self.store.read_json(self.commit, name, self.ref)
        return cache[name]

    def check(self, everything: bool = True) -> None:
        """Read run.json, and config.json and summary.json, so using them works.

        Args:
            everything: also read config.json and summary.json; False reads
                run.json alone (what a listing shows).

        Raises:
            RunNotFoundError: the run's branch is gone.
            RepositoryError: run.json is missing, or a file is malformed, too
                large or holds fields of the wrong type.
        """
        self.info  # noqa: B018 - read for its checks
        for name in (CONFIG_JSON, SUMMARY_JSON) if everything else ():
            self._json(name)

    def refresh(self) -> None:
        """Forget what was read, so the next access reads the branch tip again."""
        for name in ("commit", "snapshot", "_json_cache"):
            self.__dict__.pop(name, None)

    # -- identity -----------------------------------------------------------

    @property
    def id(self) -> str:
        """The run id."""
        return self.ref.run_id

    @property
    def project(self) -> str:
        """The run's project."""
        return self.ref.project

    @property
    def path(self) -> str:
        """``<project>/<run_id>``."""
        return self.ref.path

    @property
    def branch(self) -> str:
        """The branch, as ``git log`` takes it."""
        return self.ref.branch

    @property
    def tip(self) -> str:
        """The commit the view reads, as hex."""
        return self.commit.decode()

    @property
    def url(self) -> str:
        """Where the run lives: the repository and branch."""
        return f"{self.store.git_dir}#{self.branch}"

    @property
    def info(self) -> dict[str, Any]:
        """The run's ``run.json``.

        Raises:
            RepositoryError: the branch's commit has no run.json, or one that
                is malformed, holds fields of the wrong type or names another
                run.
        """
        info = self._json(RUN_JSON)
        if not isinstance(info, dict):
            raise RepositoryError(
                f"commit {self.tip[:10]} of {self.branch} has no run.json; it is "
                "not a gitruns run commit: fetch the run again from a good copy"
            )
        return info

    @property
    def name(self) -> str:
        """The display name (the id if none was given)."""
        return str(self.info.get("name") or self.id)

    @property
    def state(self) -> str:
        """``running``, ``finished`` or ``crashed``."""
        return str(self.info.get("state"))

    @property
    def config(self) -> dict[str, Any]:
        """The run's hyper-parameters."""
        return dict(self._json(CONFIG_JSON) or {})

    @property
    def summary(self) -> dict[str, Any]:
        """Per metric summary, as of the tip."""
        return dict(self._json(SUMMARY_JSON) or {})

    @property
    def fork_from(self) -> dict[str, Any] | None:
        """``{"run", "step", "commit"}`` of the source, or None for a root run."""
        value = self.info.get("fork_from")
        return dict(value) if value else None

    @property
    def source(self) -> dict[str, Any] | None:
        """Where an imported run came from, or None."""
        value = self.info.get("source")
        return dict(value) if value else None

    @property
    def tags(self) -> list[str]:
        """The run's tags."""
        return list(self.info.get("tags") or [])

    @property
    def notes(self) -> str:
        """The run's notes."""
        return str(self.info.get("notes") or "")

    @property
    def group(self) -> str | None:
        """The run's group, as W&B names it."""
        return self.info.get("group")

    @property
    def job_type(self) -> str | None:
        """The run's job type, as W&B names it."""
        return self.info.get("job_type")

    @property
    def first_step(self) -> int | None:
        """The first committed step, or None."""
        starts = self.snapshot.history.starts
        return starts[0] if starts else None

    @property
    def last_step(self) -> int | None:
        """The last committed step, or None."""
        value = self.info.get("last_step")
        return value if isinstance(value, int) else None

    # -- history ------------------------------------------------------------

    def chunks(
        self, min_step: int | None = None, max_step: int | None = None
    ) -> Iterator[Chunk]:
        """Decoded segments that may hold steps in ``[min_step, max_step)``.

        A segment's prefix digests, and the frames of its times and of its
        columns' values, are checked when first read (see ``lazy`` of
        :func:`gitruns.chunk.decode_chunk`): reading history never needs the
        digests, nor a read of some metrics the others' values.

        Raises:
            ChunkFormatError: naming the run and the file, for a malformed
                segment or one stored where its steps do not belong; from
                ``prefix``, or from a read of values, for malformed ones.
        """
        history = self.snapshot.history
        for start, _ in history.segments(min_step, max_step):
            yield self.store.read_segment(self.path, history, start, lazy=True)

    def scan_history(
        self,
        keys: Sequence[str] | None = None,
        page_size: int | None = None,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One dict per step, with ``_step`` and the metrics logged there.

        The arguments are W&B's, in W&B's order.

        Args:
            keys: only steps where all these keys were logged, with those keys.
            page_size: accepted for W&B compatibility; reads go by segment.
            min_step: first step to yield (inclusive).
            max_step: step to stop before (exclusive).
        """
        # A segment's rows at a time, chained: each row reaches the caller
        # without a switch into a generator of its own.
        return chain.from_iterable(self._row_pages(keys, min_step, max_step))

    def _row_pages(
        self,
        keys: Sequence[str] | None,
        min_step: int | None,
        max_step: int | None,
    ) -> Iterator[Iterable[dict[str, Any]]]:
        # The rows of scan_history(), a segment's at a time.
        lo = -1 if min_step is None else min_step
        hi = None if max_step is None else max_step
        for chunk in self.chunks(min_step, max_step):
            if keys is not None:
                yield _rows_with_keys(chunk, keys, lo, hi)
            elif chunk.steps[0] >= lo and (hi is None or chunk.steps[-1] < hi):
                yield chunk.rows()
            else:
                steps = chunk.steps.tolist()
                yield [
                    row
                    for step, row in zip(steps, chunk.rows())
                    if step >= lo and (hi is None or step < hi)
                ]

    def history(
        self,
        samples: int | None = None,
        keys: Sequence[str] | None = None,
        x_axis: str = "_step",
        pandas: bool = True,
        *,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> Any:
        """The history as a pandas DataFrame (or a list of dicts).

        The arguments are W&B's, in W&B's order.

        Args:
            samples: at most this many rows, evenly spaced; None (the default,
                unlike W&B's 500) returns every step.
            keys: only steps where all these keys were logged.
            x_axis: a column to put first (``_step`` by default).
            pandas: return a DataFrame (needs pandas) instead of a list.
            min_step: first step (inclusive).
            max_step: step to stop before (exclusive).

        Raises:
            MissingExtraError: pandas=True without pandas installed.
        """
        want = None if keys is None else list(keys)
        if want is not None and x_axis != "_step" and x_axis not in want:
            want.append(x_axis)
        if not pandas:
            rows = list(self.scan_history(want, min_step=min_step, max_step=max_step))
            return [rows[i] for i in _sample(len(rows), samples)]
        pd = require("pandas", "pandas", "history(pandas=True)")

        # Built column by column: no dict per step on the way, and the frame
        # is copied only where rows are dropped.
        wanted = None if want is None else [*want, "_step", "_timestamp"]
        data = self.columns(wanted, min_step, max_step)
        steps = data.pop("_step", (np.empty(0, np.int64),) * 2)[0]
        table: dict[str, Any] = {"_step": steps}
        if "_timestamp" in data:
            table["_timestamp"] = data.pop("_timestamp")[1]
        keep: np.ndarray | None = None
        for name, (at, values) in sorted(data.items()):
            table[name] = _spread(steps, at, values)
            if want is not None and name in want and len(at) != len(steps):
                logged = np.isin(steps, at)
                keep = logged if keep is None else keep & logged
        if want is not None and any(k not in data and k != "_step" for k in want):
            keep = np.zeros(len(steps), dtype=bool)  # a key never logged
        if x_axis in table:
            table = {x_axis: table.pop(x_axis), **table}

        frame = pd.DataFrame(table, copy=False)
        if keep is not None:
            frame = frame[keep].reset_index(drop=True)
        picks = _sample(len(frame), samples)
        if len(picks) != len(frame):
            frame = frame.iloc[picks].reset_index(drop=True)
        return frame

    def columns(
        self,
        keys: Iterable[str] | None = None,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> dict[str, tuple[np.ndarray, Any]]:
        """Whole metrics as arrays: ``{metric: (steps, values)}``.

        Numeric metrics come back as numpy arrays; str and mixed metrics (and
        a metric whose type changes between segments) as lists. ``_step``
        and ``_timestamp`` map to (steps, steps) and (steps, times).
        ``min_step`` is inclusive and ``max_step`` exclusive, as in
        :meth:`scan_history`. Metrics logged at every step share one steps
        array, and their values are rows of one array per dtype (so one
        of them kept alive keeps the others' memory too): copy an array
        before changing it, or to keep one metric of many.
        """
        wanted = None if keys is None else set(keys)
        history = self.snapshot.history
        segments = history.segments(min_step, max_step)
        room = _rows_room(history, segments, self.last_step)

        # Segment by segment, each value is copied once, straight to where it
        # is returned; the segment's bytes are let go once its values are.
        # The metrics of the first segment logged at every step, the usual
        # ones, keep their values as rows of one array per dtype, which a
        # few segments that have them all so fill at once.
        steps = _Steps(np.empty(0, dtype=np.int64))
        joins: dict[str, _Join] = {}
        blocks: list[_Block] = []
        for index, (start, _) in enumerate(segments):
            chunk = self.store.read_segment(self.path, history, start, lazy=True)
            lo, hi = 0, len(chunk.steps)
            if (min_step is not None and chunk.steps[0] < min_step) or (
                max_step is not None and chunk.steps[-1] >= max_step
            ):
                lo, hi = _row_range(chunk.steps, min_step, max_step)
            if index == 0:
                steps, blocks = _Block.of(chunk, wanted, joins, len(segments), room)
            at = steps.extend(chunk.steps[lo:hi])
            added = set()
            for block in blocks:
                if hi - lo == len(chunk.steps) and block.add(chunk, at):
                    added.update(block.names)
                else:
                    block.flush()
            for name, col in _chunk_columns(chunk, wanted):
                if name in added:
                    continue
                join = joins.get(name)
                if join is None:
                    join = joins[name] = _Join(steps, len(segments) - index, room)
                join.add(chunk, col, lo, hi, at)
        for block in blocks:
            block.flush()

        out = {}
        if (wanted is None or "_step" in wanted) and steps.count:
            read = steps.array[: steps.count]
            out["_step"] = (read, read)
        for name, join in joins.items():
            if join.count:
                out[name] = join.result()
        return out


View = TypeVar("View", bound=RunView)


def readable_runs(
    store: RunStore,
    project: str | None,
    view: Callable[[RunStore, RunRef], View],
    skipped: Callable[[RunRef, GitRunsError], None] | None = None,
    *,
    everything: bool = True,
) -> list[View]:
    """The runs of a repository (or of a project) whose metadata reads.

    A listing shows every run it can: a run whose run.json (and, with
    ``everything``, config.json or summary.json) cannot be read (malformed,
    too large, wrongly typed, or naming another run) is left out with a
    warning rather than ending the listing for the others. Reading that run
    by name still raises the error.

    Args:
        store: the repository.
        project: only this project's runs.
        view: what to make of each run (:class:`RunView`, or a subclass).
        skipped: called for each run left out; by default a warning is
            logged.
        everything: check config.json and summary.json too, not run.json
            alone.
    """
    found = []
    for ref in store.list_runs(project):
        run = view(store, ref)
        try:
            run.check(everything)
        except GitRunsError as exc:
            if skipped is None:
                logger.warning("skipping run %s: %s", ref.path, exc)
            else:
                skipped(ref, exc)
            continue
        found.append(run)
    return found


def _sample(count: int, samples: int | None) -> Sequence[int]:
    # At most ``samples`` indexes, evenly spaced, first and last included.
    if samples is None or samples <= 0 or count <= samples:
        return range(count)
    picks = np.linspace(0, count - 1, samples).round().astype(int)
    return sorted(set(picks.tolist()))


def _spread(steps: np.ndarray, at: np.ndarray, values: Any) -> Any:
    # A metric's values placed at their steps among all steps: NaN (or None
    # for text and mixed kinds) where it was not logged.
    if len(at) == len(steps):
        return values
    where = np.searchsorted(steps, at)
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        out = np.full(len(steps), np.nan)
        out[where] = values
        return out
    spread: list[Any] = [None] * len(steps)
    for i, value in zip(where.tolist(), list(values)):
        spread[i] = value
    return spread


def _chunk_columns(
    chunk: Chunk, wanted: set[str] | None
) -> Iterator[tuple[str, Column]]:
    # The metrics of a segment that a read wants, and _timestamp.
    if wanted is None or "_timestamp" in wanted:
        yield "_timestamp", chunk.times_column()
    for name, col in chunk.columns.items():
        if wanted is None or name in wanted:
            yield name, col


def _column(chunk: Chunk, name: str) -> Column | None:
    # A metric of a segment, or its times as the metric _timestamp.
    return chunk.times_column() if name == "_timestamp" else chunk.columns.get(name)


def _row_range(
    steps: np.ndarray, min_step: int | None, max_step: int | None
) -> tuple[int, int]:
    # The rows of a segment in [min_step, max_step): steps are increasing.
    lo = 0 if min_step is None else int(np.searchsorted(steps, min_step))
    hi = len(steps) if max_step is None else int(np.searchsorted(steps, max_step))
    return lo, max(lo, hi)


#: Rows a columnar read makes room for at first, per metric. Past it the
#: arrays grow, twice as large each time.
_FIRST_ROOM = 1 << 22


def _rows_room(
    history: History, segments: list[tuple[int, Sha]], last: int | None
) -> int:
    # The most rows these segments can hold: each holds steps from its first
    # to the next one's first, in its window. Exact for a run logged at every
    # step; room that is not filled is never touched, so costs no memory.
    window = history.window
    room = 0
    for start, _ in segments:
        end = history.next_start(start)
        if end is None:
            end = (last if last is not None and last >= start else start) + 1
        room += min(window - start % window, end - start)
    return max(1, min(room, _FIRST_ROOM))


def _grown(buffer: np.ndarray, used: int, more: int) -> np.ndarray:
    # ``buffer``, or a larger copy of its first ``used`` items, so that
    # ``more`` items fit after them.
    if used + more <= len(buffer):
        return buffer
    grown = np.empty(max(2 * len(buffer), used + more), dtype=buffer.dtype)
    grown[:used] = buffer[:used]
    return grown


def _trimmed(buffer: np.ndarray, used: int) -> np.ndarray:
    # The filled part; a copy when most of the room went unused.
    return buffer[:used] if 2 * used >= len(buffer) else buffer[:used].copy()


class _Steps:
    """Every step a columnar read has read, in order: what dense metrics share.

    Args:
        array: where to keep them, as long as they fit.
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.count = 0

    def extend(self, steps: np.ndarray) -> int:
        """Append ``steps``; return where they start."""
        at = self.count
        self.array = _grown(self.array, at, len(steps))
        self.array[at : at + len(steps)] = steps
        self.count += len(steps)
        return at


class _Join:
    """One metric of a columnar read, joined segment by segment as they are read.

    Its values go into one array, each segment's unshuffled straight into
    its place (into a list instead, once a segment's values are not of the
    array's dtype). While the metric has a value at every step read since its
    first, its steps are a stretch of the read's own; after a gap it keeps
    steps of its own. Its arrays start with room for as many values in each
    segment left as in its first, which is exact for a metric logged at
    every step or at a fixed interval, and small for one logged rarely.

    Args:
        steps: the read's steps.
        segments: how many segments are left to read, this one included.
        room: the most rows those segments can hold.
    """

    def __init__(self, steps: _Steps, segments: int, room: int) -> None:
        self.read_steps = steps
        self.segments = segments
        self.room = room
        self.first = 0
        self.count = 0
        self.capacity = 0
        self.values: np.ndarray | list[Value] | None = None
        self.steps: np.ndarray | None = None

    def add(self, chunk: Chunk, col: Column, lo: int, hi: int, at: int) -> None:
        """Add the values of ``col`` at rows ``lo`` to ``hi`` of ``chunk``.

        Row ``lo`` is the read's row ``at``.
        """
        # The usual case, in as few steps as it takes (a read adds each
        # metric of each segment): a metric logged at every step read since
        # its first, and in this segment too, whose values are still of its
        # array's dtype and fit in its room.
        values, dtype, end = self.values, col.dtype, self.count + hi - lo
        if (
            col.rows is None
            and self.steps is None
            and at == self.first + self.count
            and isinstance(values, np.ndarray)
            and dtype is not None
            and values.dtype == dtype
            and end <= len(values)
        ):
            col.values_into(values[self.count : end], lo)
            self.count = end
            return

        if col.rows is None:
            start, stop, steps = lo, hi, None
        else:
            start, stop = np.searchsorted(col.rows, (lo, hi)).tolist()
            steps = chunk.steps[col.rows[start:stop]]
        count = stop - start
        if not count:
            return
        if not self.capacity:
            self.capacity = max(count, min(self.room, count * self.segments))
        if self.count == 0 and steps is None:
            self.first = at
        if steps is not None or self.steps is not None or at != self.first + self.count:
            self._add_steps(at, count, steps)
        self._add_values(col, start, count)
        self.count += count

    def _add_steps(self, at: int, count: int, steps: np.ndarray | None) -> None:
        # A gap, or a sparse segment: from here on the metric keeps its steps.
        if self.steps is None:
            size = max(self.capacity, self.count + count)
            self.steps = np.empty(size, dtype=np.int64)
            self.steps[: self.count] = self.read_steps.array[
                self.first : self.first + self.count
            ]
        if steps is None:
            steps = self.read_steps.array[at : at + count]
        self.steps = _grown(self.steps, self.count, count)
        self.steps[self.count : self.count + count] = steps

    def _add_values(self, col: Column, start: int, count: int) -> None:
        values, dtype = self.values, col.dtype
        if values is None and dtype is not None:
            values = np.empty(self.capacity, dtype=dtype)
        elif isinstance(values, np.ndarray) and (
            dtype is None or values.dtype != dtype
        ):
            # (numpy takes a dtype of None for float64: it is tested first.)
            values = values[: self.count].tolist()
        if isinstance(values, np.ndarray):
            values = _grown(values, self.count, count)
            col.values_into(values[self.count : self.count + count], start)
        else:
            values = [] if values is None else values
            values.extend(col.value_list()[start : start + count])
        self.values = values

    def result(self) -> tuple[np.ndarray, Any]:
        """(steps, values) of the metric."""
        if self.steps is None:
            steps = self.read_steps.array[self.first : self.first + self.count]
        else:
            steps = _trimmed(self.steps, self.count)
        values = self.values
        if isinstance(values, np.ndarray):
            values = _trimmed(values, self.count)
        return steps, values


class _Block:
    """Metrics of one dtype logged at every step, whose values are rows of one array.

    Each metric is a :class:`_Join` whose values array is its row. A segment
    in which every one of them is a column of the dtype at every step, and
    follows where the read left them, is added to the block whole: its
    columns wait, with those of a few more segments of its length (up to
    ``_BATCH`` of them, ``_BATCH_ROWS`` rows), to have their values placed
    at once (:func:`gitruns.chunk.values_into_rows`). Any other segment is added
    metric by metric, each into its own row or, past it, its own array,
    once the block has placed what waits (:meth:`flush`); the block then
    adds only the segments that find its metrics in step again.

    Args:
        names: the metrics, one row each.
        joins: their joins, new; each is given its row.
        values: the rows, of the metrics' dtype, each as long as the most
            rows the read's segments can hold: every metric's room, being
            logged at every step.
    """

    def __init__(
        self, names: list[str], joins: list[_Join], values: np.ndarray
    ) -> None:
        self.names = names
        self.joins = joins
        self.values = values
        self.rows = list(values)
        for join, row in zip(joins, self.rows):
            join.capacity = len(row)
            join.values = row
        # Segments added whose values wait to be placed, from row ``start``,
        # ``length`` each.
        self.waiting: list[list[Column]] = []
        self.start = 0
        self.length = 0

    @classmethod
    def of(
        cls,
        chunk: Chunk,
        wanted: set[str] | None,
        joins: dict[str, _Join],
        segments: int,
        room: int,
    ) -> tuple[_Steps, list[_Block]]:
        """The read's steps, and blocks for the metrics (and times) of its
        first segment logged at every step.

        The metrics' joins are added to ``joins``. The steps and every block
        take rows of one array: a run's whole is one allocation, which the
        system backs with large pages where it can (numpy asks for them for
        arrays of 4 MiB and more), rather than a dozen that fault a page at a
        time as they are filled.
        """
        names: dict[np.dtype, list[str]] = {}
        for name, col in _chunk_columns(chunk, wanted):
            dtype = _BLOCK_KINDS.get(col.kind)
            if col.rows is None and dtype:
                names.setdefault(dtype, []).append(name)
        count = sum(map(len, names.values()))
        arena = np.empty((1 + count, room), dtype=np.int64)
        steps = _Steps(arena[0])
        blocks = []
        row = 1
        for dtype, block_names in names.items():
            block_joins = [_Join(steps, segments, room) for _ in block_names]
            joins.update(zip(block_names, block_joins))
            values = arena[row : row + len(block_names)].view(dtype)
            blocks.append(cls(block_names, block_joins, values))
            row += len(block_names)
        return steps, blocks

    def add(self, chunk: Chunk, at: int) -> bool:
        """Add the values of a whole segment, if it holds the block in step.

        Row 0 of the segment is the read's row ``at``. Returns whether it
        did; if not, it added nothing. The values may wait to be placed
        until :meth:`flush`.
        """
        fill = self.joins[0].count
        length = len(chunk.steps)
        end = fill + length
        for join, row in zip(self.joins, self.rows):
            if join.values is not row or join.steps is not None:
                return False
            if join.count != fill or (fill and at != join.first + fill):
                return False
        if end > self.values.shape[1]:
            return False
        columns = []
        kind = _BLOCK_KINDS_OF[self.values.dtype]
        for name in self.names:
            col = _column(chunk, name)
            if col is None or col.rows is not None or col.kind != kind:
                return False
            columns.append(col)

        if self.waiting and length != self.length:
            self.flush()
        if not self.waiting:
            self.start, self.length = fill, length
        self.waiting.append(columns)
        for join in self.joins:
            if not fill:
                join.first = at
            join.count = end
        if len(self.waiting) == _BATCH or len(self.waiting) * length >= _BATCH_ROWS:
            self.flush()
        return True

    def flush(self) -> None:
        """Place the values of the segments that wait."""
        if self.waiting:
            end = self.start + len(self.waiting) * self.length
            values_into_rows(self.waiting, self.values[:, self.start : end])
            self.waiting = []


#: The most segments whose values a block places at once, and the most
#: rows they may hold between them: longer rows go faster (a row of a window
#: of 1,000 steps is 8 KB), up to a point, and what waits holds its bytes.
_BATCH = 8
_BATCH_ROWS = 1 << 16


#: The kinds whose metrics a read joins in blocks, by the dtype of their
#: values: those stored as they are held.
_BLOCK_KINDS = {"f8": np.dtype(np.float64), "i8": np.dtype(np.int64)}
_BLOCK_KINDS_OF = {dtype: kind for kind, dtype in _BLOCK_KINDS.items()}


def _rows_with_keys(
    chunk: Chunk, keys: Sequence[str], lo: int, hi: int | None
) -> list[dict[str, Any]]:
    # The rows of a segment where every key was logged, with those keys.
    wanted = [k for k in keys if k not in ("_step", "_timestamp")]
    if any(k not in chunk.columns for k in wanted):
        return []
    rows = np.arange(len(chunk.steps))
    for key in wanted:
        present = chunk.columns[key].rows
        if present is not None:
            rows = np.intersect1d(rows, present, assume_unique=True)
    steps = chunk.steps[rows]
    inside = steps >= lo if hi is None else (steps >= lo) & (steps < hi)
    if not inside.all():
        rows, steps = rows[inside], steps[inside]

    fields: dict[str, list[Any]] = {"_step": steps.tolist()}
    if "_timestamp" in keys:
        fields["_timestamp"] = chunk.times[rows].tolist()
    for key in wanted:
        col = chunk.columns[key]
        at = rows if col.rows is None else np.searchsorted(col.rows, rows)
        values = col.values
        if isinstance(values, np.ndarray):
            fields[key] = values[at].tolist()
        else:
            fields[key] = [values[i] for i in at.tolist()]
    template = dict.fromkeys(fields)
    out = list(map(dict.copy, repeat(template, len(rows))))
    for key, values in fields.items():
        fill_rows(out, key, values)
    return out
