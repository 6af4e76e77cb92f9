"""Committing a run's journal: rows read back as columns, one chunk per window.

A :class:`Committer` reads what a writer journaled (:class:`JournalReader`),
keeps what is not committed yet, and writes it as commits of the run's
branch: one segment (chunk) per window, or per part of a window flushed
before it filled, all the segments ready at once in one commit, with the
run's metadata and state. The journal is the only source: the same code
commits in the writer's process (``background=False``, a run finished before
its committer process was up, recovery after a crash) and in the committer
process (:mod:`gitruns.committer_process`).

Rows are merged as log() merges them: the records of one step (``commit=
False``, or ``log(step=s)`` twice) become one row, a key logged twice keeping
the later value, and the row's time is that of its first record.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from gitruns.chunk import (
    MAX_CHUNK_BYTES,
    MAX_METRICS,
    Chunk,
    Digest,
    build_chunk,
    encode_chunk,
)
from gitruns.commits import commit_run, summary_overrides
from gitruns.errors import ChunkTooLargeError, GitRunsError, InvalidValueError
from gitruns.files import FILES_TREE
from gitruns.journal import Item, Journal, JournalReader, Record, Rows
from gitruns.refs import RunRef, Sha
from gitruns.store import RUN_JSON, TREE_MODE, RunStore, Snapshot, now_iso
from gitruns.summary import summarize
from gitruns.values import INT64_MAX, Value, check_key, clean_row

logger = logging.getLogger(__name__)

#: A segment is cut once it holds this many journaled bytes or this many
#: metrics, so that every segment fits in one chunk.
SEGMENT_BYTES = MAX_CHUNK_BYTES // 8
SEGMENT_METRICS = MAX_METRICS // 2

#: The conflict advice of a window commit that lost its branch to someone else.
MOVED = (
    "something outside this writer moved the branch (a pull, git itself); the "
    "journal keeps what was logged: `gitruns recover` commits it once that is done"
)


def journal_dir(store: RunStore, run: RunRef) -> Path:
    """Where the journal of ``run`` keeps what is not committed yet."""
    return store.data_dir / "journal" / run.project / run.run_id


def last_step_for(window: int) -> int:
    """The last step a run with ``window`` can log: its window must fit in int64."""
    last_start = (INT64_MAX - window + 1) // window * window
    return last_start + window - 1


@dataclass(frozen=True)
class CommitOptions:
    """How a committer writes a run.

    Attributes:
        window: the run's window size, from its run.json.
        float32: store float metrics as float32.
        fsync: sync every object written to disk.
    """

    window: int
    float32: bool = False
    fsync: bool = False

    @property
    def max_step(self) -> int:
        """The last step the run can hold (see :func:`last_step_for`)."""
        return last_step_for(self.window)


class Failures:
    """A commit that keeps failing: said once, and said again when it works.

    A full disk fails every commit until space is back; one error line for
    the lot, and one line when committing works again.

    Args:
        run: the run's path, for the messages.
    """

    def __init__(self, run: str) -> None:
        self.run = run
        #: The last failure, until a commit works again.
        self.error: Exception | None = None

    def failed(self, exc: Exception) -> None:
        """A commit failed (the journal keeps its rows)."""
        if self.error is None or str(self.error) != str(exc):
            logger.error(
                "run %s: commit failed, the journal keeps the rows: %s", self.run, exc
            )
        self.error = exc

    def worked(self) -> None:
        """A commit worked."""
        if self.error is not None:
            logger.warning(
                "run %s: committing works again after: %s", self.run, self.error
            )
            self.error = None


@dataclass
class _Pending:
    """What was read from the journal and is not committed yet."""

    items: list[Item] = field(default_factory=list)
    #: Metadata records merged in order (patches applied), or None.
    meta: dict[str, Any] | None = None


class Committer:
    """Commits what a run's journal holds beyond the branch's tip.

    Args:
        store: the run's repository.
        run: the run.
        snapshot: the run at its branch's tip, as read by the caller.
        options: how to write.
        folder: the run's journal folder (default: :func:`journal_dir`).
        trusted_from: the first journal file this process writes itself,
            whose checksums need no computing (see :class:`JournalReader`).
    """

    def __init__(
        self,
        store: RunStore,
        run: RunRef,
        snapshot: Snapshot,
        options: CommitOptions,
        folder: Path | None = None,
        trusted_from: int | None = None,
    ) -> None:
        if snapshot.commit is None:
            raise ValueError("a Committer starts from a commit")
        self.store = store
        self.run = run
        self.options = options
        self.window = options.window
        self.max_step = options.max_step
        self.reader = JournalReader(
            (folder or journal_dir(store, run)).resolve(), trusted_from
        )
        self.snapshot = snapshot
        self.tip: Sha = snapshot.commit
        self.totals = tip_totals(store, run, snapshot)
        self._pending = _Pending()
        self._floor = -1 if snapshot.last_step is None else snapshot.last_step
        #: The last step read, committed or not: steps below it are closed.
        self.last_read = self._floor
        # Highest step each finished journal file holds (None: none).
        self._file_steps: dict[Path, int | None] = {}
        self._known: set[str] = set()
        # The key lists of schemas whose keys were checked.
        self._checked: set[tuple[str, ...]] = set()
        self._last_commit = time.monotonic()
        if options.fsync:
            store.repo.object_store.fsync_object_files = True

    def close(self) -> None:
        """Close the journal file being read."""
        self.reader.close()

    # -- reading -------------------------------------------------------------

    def read(self, *, final: bool = False) -> int:
        """Take in what the journal holds since the last read.

        Args:
            final: the writer is done: read every file to its end.

        Returns:
            How many rows and records were read.
        """
        # All or nothing: a read cut short (Ctrl-C in log(), a SIGTERM
        # handler's SystemExit) is read again by the next call.
        mark = self.reader.mark()
        pending = self._pending
        items_before = len(pending.items)
        meta_before = None if pending.meta is None else dict(pending.meta)
        last_read_before = self.last_read
        file_steps_before = dict(self._file_steps)
        try:
            return self._take(self.reader.read(final=final), mark.done)
        except BaseException:
            self.reader.rewind(mark)
            del pending.items[items_before:]
            pending.meta = meta_before
            self.last_read = last_read_before
            self._file_steps = file_steps_before
            raise

    def _take(self, items: list[Item], done_before: int) -> int:
        count = 0
        for item in items:
            if isinstance(item, Rows):
                kept = self._rows(item)
                if kept is not None:
                    self._pending.items.append(kept)
                    count += len(kept)
            elif item.step is None:
                problem = meta_problem(item.data)
                if problem:  # a bug or a tampered journal, as for rows
                    logger.error(
                        "run %s: journaled metadata left out: %s; the rest of "
                        "the journal is committed: set that metadata again "
                        "(resume the run) if it is needed",
                        self.run.path,
                        problem,
                    )
                    continue
                self._pending.meta = merge_meta(
                    self._pending.meta or {}, item.data, self.snapshot
                )
                count += 1
            elif self._record(item):
                self._pending.items.append(item)
                count += 1
        # A file finished by this read holds no step beyond those read so far.
        for path in self.reader.done[done_before:]:
            self._file_steps[path] = self.last_read if self.last_read >= 0 else None
        return count

    def _rows(self, rows: Rows) -> Rows | None:
        """``rows`` without what is committed already or cannot be stored."""
        schema = rows.schema
        if schema.keys not in self._checked:
            try:
                for key in schema.keys:
                    if key not in self._known:
                        check_key(key)
                        self._known.add(key)
            except GitRunsError as exc:
                logger.error(
                    "run %s: %d journaled rows left out: %s",
                    self.run.path,
                    len(rows),
                    exc,
                )
                return None
            self._checked.add(schema.keys)
        steps = rows.steps
        # Already committed (a crash between moving the branch and deleting
        # the journal), out of order (only a bug or a tampered journal), or
        # beyond what the window allows.
        keep = (steps > self._floor) & (steps <= self.max_step)
        order = np.maximum.accumulate(np.concatenate(([self.last_read], steps)))[:-1]
        keep &= steps >= order
        if not keep.all():
            dropped = steps[~keep]
            late = dropped[dropped > self._floor]
            if len(late):
                logger.warning(
                    "run %s: %d journaled rows out of step order or range left "
                    "out (first: step %d)",
                    self.run.path,
                    len(late),
                    int(late[0]),
                )
            if not keep.any():
                return None
            where = np.flatnonzero(keep)
            if len(where) == where[-1] - where[0] + 1:
                rows = rows.after(int(where[0])).upto(len(where))
            else:
                rows = Rows(
                    schema,
                    rows.steps[keep],
                    rows.times[keep],
                    [c[keep] for c in rows.columns],
                    rows.size * len(where) // len(steps),
                )
        self.last_read = max(self.last_read, int(rows.steps[-1]))
        return rows

    def _record(self, record: Record) -> bool:
        """Whether a journaled record of a row is to be committed."""
        step = record.step
        assert step is not None
        problem = ""
        if not 0 <= step <= self.max_step:
            problem = f"step {step!r} is outside 0..{self.max_step}"
        else:
            try:
                clean_row(record.data, self._known)
            except GitRunsError as exc:
                problem = str(exc)
        if problem:
            # Only a bug or a tampered journal gets here; the rest of the
            # journal must still reach Git.
            logger.error(
                "run %s: journal record of step %d left out: %s",
                self.run.path,
                step,
                problem,
            )
            return False
        if step <= self._floor:
            return False
        if step < self.last_read:
            logger.warning(
                "run %s: journal step %d after %d ignored",
                self.run.path,
                step,
                self.last_read,
            )
            return False
        self.last_read = step
        return True

    # -- what is pending -------------------------------------------------------

    @property
    def pending_steps(self) -> bool:
        """Whether rows are read and not committed."""
        return bool(self._pending.items)

    @property
    def pending_meta(self) -> bool:
        """Whether metadata is read and not committed."""
        return bool(self._pending.meta)

    def complete_windows(self) -> int | None:
        """The last step of the windows the journal has gone past, if any pending.

        A window is complete once a step of a later window is read: no record
        can add to it any more.
        """
        if not self._pending.items:
            return None
        first = _first(self._pending.items[0])
        current = self.last_read - self.last_read % self.window
        if first >= current:
            return None
        return current - 1

    def pending_step_range(self) -> tuple[int, int, int] | None:
        """How many distinct steps are pending, and the first and last; or None."""
        items = self._pending.items
        if not items:
            return None
        parts = [i.steps if isinstance(i, Rows) else [i.step] for i in items]
        steps = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
        count = 1 + int(np.count_nonzero(steps[1:] != steps[:-1]))
        return count, int(steps[0]), int(steps[-1])

    def pending_totals(self) -> dict[str, Digest]:
        """Digests of everything committed and read, the open step included."""
        return self._chunks(self._pending.items, dict(self.totals))[1]

    def since_commit(self) -> float:
        """Seconds since the last commit (or since this committer started)."""
        return time.monotonic() - self._last_commit

    # -- committing ------------------------------------------------------------

    def commit(
        self,
        through: int | None = None,
        *,
        state: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Sha | None:
        """Commit the rows read up to step ``through`` (all with None).

        A caller passes only steps that are closed: no record can add to them
        any more.

        Args:
            through: the last step to commit; None commits every row read.
            state: the run's new state (``finished``, ``crashed``), if it changes.
            meta: metadata to commit besides what the journal holds.

        Returns:
            The new commit, or None when there was nothing to commit.

        Raises:
            RepositoryError, ConflictError: the commit could not be written;
                nothing read is lost (the journal keeps it, and so does this
                committer, which tries again on the next call).
            InvalidValueError: rows that no chunk can hold (a journal made
                by hand); the journal keeps them.
            ChunkTooLargeError: a step whose strings no chunk can hold; the
                journal keeps it.
        """
        pending = self._pending
        last = self.snapshot.last_step
        if last is not None and pending.items and _first(pending.items[0]) <= last:
            # A commit cut short (Ctrl-C) after it moved the branch.
            pending.items = _split(pending.items, last)[1]
        items, rest = (
            (pending.items, []) if through is None else _split(pending.items, through)
        )
        journal_meta = dict(pending.meta or {})
        journal_meta.update(meta or {})
        sha = self._write(items, journal_meta, state)

        self._pending = _Pending(rest, None)
        self._last_commit = time.monotonic()
        if self.snapshot.last_step is not None:
            self._floor = self.snapshot.last_step
        self._retire()
        return sha

    def _retire(self) -> None:
        """Delete finished journal files whose every row is committed."""
        gone = [
            path
            for path, last in self._file_steps.items()
            if last is None or last <= self._floor
        ]
        Journal.retire(gone)
        for path in gone:
            del self._file_steps[path]

    def _chunks(
        self, items: Sequence[Item], prefix: dict[str, Digest]
    ) -> tuple[list[Chunk], dict[str, Digest]]:
        """The segments of ``items``, and the digests of history through them.

        One segment per window, cut where a window holds too much.
        """
        chunks: list[Chunk] = []
        totals = prefix
        for part in _segments(items, self.window):
            chunk = self._chunk(part, totals)
            chunks.append(chunk)
            totals = dict(chunk.totals())
        return chunks, totals

    def _chunk(self, part: Sequence[Item], prefix: dict[str, Digest]) -> Chunk:
        steps, times, metrics = _columns(part)
        start = int(steps[0]) - int(steps[0]) % self.window
        try:
            return build_chunk(
                self.window,
                start,
                cast(Sequence[int], steps),
                cast(Sequence[float], times),
                metrics,
                prefix=prefix,
                float32=self.options.float32,
            )
        except GitRunsError:
            raise
        except ValueError as exc:  # rows no chunk holds: a journal made by hand
            raise InvalidValueError(
                "<rows>",
                f"<steps {int(steps[0])}..{int(steps[-1])}>",
                f"{exc}; move the run's journal folder away to commit without them",
            ) from exc

    def _encoded(
        self, items: Sequence[Item], prefix: dict[str, Digest]
    ) -> tuple[list[tuple[Chunk, bytes]], dict[str, Digest]]:
        """The chunks of ``items``, encoded, and the digests through them.

        A segment that encodes to too many bytes (long strings, which a chunk
        holds with their digests) is cut in two at its middle step, until
        each part fits.
        """
        out: list[tuple[Chunk, bytes]] = []
        totals = prefix
        todo = list(_segments(items, self.window))
        while todo:
            part = todo.pop(0)
            chunk = self._chunk(part, totals)
            try:
                # build_chunk checked what decode_chunk would: no second decode.
                data = encode_chunk(chunk, check=False)
            except ChunkTooLargeError as exc:
                steps = chunk.steps
                if len(steps) < 2:
                    raise ChunkTooLargeError(
                        exc.start,
                        exc.steps,
                        exc.size,
                        exc.limit,
                        "its strings (and the first and last string of every "
                        "string metric before it) hold too much to commit; "
                        "moving the run's journal folder "
                        f"({self.reader.folder}) away lets the run go on, "
                        f"without steps {_first(items[0])} and after or any "
                        "config or summary change since its last commit (log "
                        "long text as a file with gitruns.save())",
                    ) from exc
                head, tail = _split(part, int(steps[(len(steps) - 1) // 2]))
                todo[:0] = [head, tail]
                continue
            out.append((chunk, data))
            totals = dict(chunk.totals())
        return out, totals

    def _write(
        self, items: Sequence[Item], meta: dict[str, Any], state: str | None
    ) -> Sha | None:
        """One commit of ``items``' segments, ``meta`` and ``state``."""
        # Everything is committed that is new: rows, a state, metadata that
        # changes something (a state is committed even when the run has it
        # already: a resumed run finished again records when).
        force = bool(items) or state is not None
        files = _updated_files(self.snapshot, meta, state, force=force)
        if files is None:
            return None
        info, config, overrides, extra = files
        if info.get("float32", False) != self.options.float32:
            info["float32"] = self.options.float32

        with self.store.batched_objects():
            return self._write_commit(items, info, config, overrides, extra, state)

    def _write_commit(
        self,
        items: Sequence[Item],
        info: dict[str, Any],
        config: dict[str, Any],
        overrides: dict[str, Any],
        extra: dict[bytes, Any],
        state: str | None,
    ) -> Sha:
        # One segment blob per window (or window part), each chunk's prefix
        # the digests of everything before it.
        history = self.snapshot.history.copy()
        segments: list[tuple[int, Sha]] = []
        encoded, totals = self._encoded(items, self.totals)
        for chunk, data in encoded:
            first = int(chunk.steps[0])
            blob = self.store.chunk_blob(data)
            history.add(first, blob)
            segments.append((first, blob))
            info["last_step"] = int(chunk.steps[-1])
        info["updated"] = now_iso()

        summary = summarize(totals, info.get("metrics", {}), overrides)
        new = Snapshot(None, info, config, summary, history, extra)
        if segments:
            what = f"steps {segments[0][0]}..{info['last_step']}"
        else:
            what = f"state {info['state']}" if state else "config and summary"
        # No reflog entry: a run's own history is its first-parent line, and
        # an entry per window would cost a read of the Git config each.
        sha = commit_run(self.store, self.run, new, [self.tip], what, conflict=MOVED)
        new.commit = sha
        self.snapshot, self.tip, self.totals = new, sha, totals
        if segments:
            self.store.record_segments(self.run, segments, sha)
        logger.info(
            "run %s: committed %s as %s", self.run.path, what, sha[:10].decode()
        )
        return sha


def _updated_files(
    snapshot: Snapshot,
    meta: dict[str, Any],
    state: str | None,
    *,
    force: bool = False,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[bytes, Any]] | None:
    """run.json, config, summary overrides and saved files with ``meta`` applied.

    A run being written is running; ``state`` (``finished``, ``crashed``)
    replaces that.

    Returns:
        The four, or None when ``meta`` changes none of them (unless ``force``).
    """
    info = dict(snapshot.info)
    config = snapshot.config
    extra = snapshot.extra
    overrides = summary_overrides(snapshot)
    if meta:
        meta = dict(meta)
        config = meta.pop("config", config)
        overrides = meta.pop("summary_overrides", overrides)
        extra = {**extra, **meta.pop("extra", {})}
        info.update(meta)
        info["summary_set"] = sorted(overrides)
    unchanged = (
        info == snapshot.info
        and config == snapshot.config
        and extra == snapshot.extra
        and overrides == summary_overrides(snapshot)
    )
    if unchanged and not force:
        return None
    info["state"] = state or "running"
    return info, config, overrides, extra


def tip_totals(store: RunStore, run: RunRef, snapshot: Snapshot) -> dict[str, Digest]:
    """The digests of a run's whole history at ``snapshot``, from its last segment."""
    if not snapshot.history.starts:
        return {}
    start = snapshot.history.starts[-1]
    chunk = store.read_segment(run.path, snapshot.history, start)
    return dict(chunk.totals())


def float32_of(store: RunStore, info: dict[str, Any]) -> bool:
    """Whether a run stores float32: its run.json says, or its fork source's does."""
    # Up the fork chain, a bounded way: a tampered chain could loop.
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


# -- metadata ----------------------------------------------------------------------

#: Metadata journaled as patches (``<key>_patch``: ``{"set": {}, "del": []}``).
PATCHED = frozenset({"config", "summary_overrides"})
PATCH = "_patch"


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(type(v) is str for v in value)


def _is_patch(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.keys() <= {"set", "del"}
        and isinstance(value.get("set", {}), dict)
        and all(type(k) is str for k in value.get("set", {}))
        and _is_text_list(value.get("del", []))
    )


def _is_files_entry(value: Any) -> bool:
    # (mode, hex id) of the saved files' tree, as Run.save() journals it.
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and value[0] == TREE_MODE
        and isinstance(value[1], bytes)
        and len(value[1]) == 40
        and all(c in b"0123456789abcdef" for c in value[1])
    )


def _is_text(value: Any) -> bool:
    return type(value) is str


def _is_rules(value: Any) -> bool:
    return isinstance(value, dict) and all(
        type(k) is str and isinstance(r, dict) for k, r in value.items()
    )


def _is_extra(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.keys() <= {FILES_TREE}
        and all(_is_files_entry(e) for e in value.values())
    )


_A_PATCH = "a patch {set: {str: value}, del: [str]}"

#: The metadata a writer journals: what each must be, and the check.
_JOURNALED_META: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "name": ("a str", _is_text),
    "notes": ("a str", _is_text),
    "tags": ("a list of str", _is_text_list),
    "metrics": ("a map of metric names to rules", _is_rules),
    "extra": ("the saved files' tree", _is_extra),
    "config" + PATCH: (_A_PATCH, _is_patch),
    "summary_overrides" + PATCH: (_A_PATCH, _is_patch),
}


def meta_problem(record: dict[str, Any]) -> str:
    """Why a journaled metadata record cannot be committed; "" if it can."""
    for key, value in record.items():
        if key not in _JOURNALED_META:
            return f"{key!r:.60} is not metadata a writer journals"
        expected, valid = _JOURNALED_META[key]
        if not valid(value):
            return f"{key} is not {expected}"
    return ""


def committed_meta(snapshot: Snapshot, key: str) -> dict[str, Any]:
    """``config`` or ``summary_overrides`` as a commit holds it."""
    if key == "config":
        return dict(snapshot.config)
    return summary_overrides(snapshot)


def merge_meta(
    into: dict[str, Any], record: dict[str, Any], snapshot: Snapshot
) -> dict[str, Any]:
    """Merge one journaled metadata record into ``into``, applying its patches.

    A patch applies to what the records before it made of the key, else to
    what the run's last commit holds. Patches set keys and remove keys, so
    applying again records that were committed before (a committer that
    reads a journal from its start) ends where they ended.

    Returns:
        ``into``, changed.
    """
    for key, value in record.items():
        if not key.endswith(PATCH) or key[: -len(PATCH)] not in PATCHED:
            into[key] = value
            continue
        name = key[: -len(PATCH)]
        current = dict(into.get(name, committed_meta(snapshot, name)))
        current.update(value.get("set", {}))
        for gone in value.get("del", []):
            current.pop(gone, None)
        into[name] = current
    return into


# -- from journal items to columns -------------------------------------------------


def _first(item: Item) -> int:
    return int(item.steps[0]) if isinstance(item, Rows) else int(item.step or 0)


def _last(item: Item) -> int:
    return int(item.steps[-1]) if isinstance(item, Rows) else int(item.step or 0)


def _split(items: Sequence[Item], step: int) -> tuple[list[Item], list[Item]]:
    """Items up to and including ``step``, and the items after it."""
    for i, item in enumerate(items):
        if _last(item) <= step:
            continue
        head, tail = list(items[:i]), list(items[i:])
        if isinstance(item, Rows) and _first(item) <= step:
            cut = int(np.searchsorted(item.steps, step, side="right"))
            head.append(item.upto(cut))
            tail[0] = item.after(cut)
        return head, tail
    return list(items), []


def _segments(items: Sequence[Item], window: int) -> Iterable[list[Item]]:
    """``items`` cut into segments: by window, and where one grows too large."""
    rest = list(items)
    while rest:
        first = _first(rest[0])
        end = first - first % window + window - 1
        part, rest = _split(rest, end)
        yield from _limited(part)


def _limited(items: list[Item]) -> Iterable[list[Item]]:
    """One window's items, cut between steps where they hold too much."""
    size = sum(i.size for i in items)
    width = len({k for i in items for k in _keys(i)})
    if size <= SEGMENT_BYTES and width < SEGMENT_METRICS:
        yield items
        return
    # Rare (very wide or very large windows): cut at the first step where
    # the bytes or the metrics of the segment so far reach the bound.
    steps = _step_sizes(items)
    total = 0
    keys: set[str] = set()
    for step, nbytes, names in steps:
        total += nbytes
        keys |= names
        if (total >= SEGMENT_BYTES or len(keys) >= SEGMENT_METRICS) and step < _last(
            items[-1]
        ):
            head, tail = _split(items, step)
            yield head
            yield from _limited(tail)
            return
    yield items


def _keys(item: Item) -> Iterable[str]:
    return item.schema.keys if isinstance(item, Rows) else item.data.keys()


def _step_sizes(items: list[Item]) -> list[tuple[int, int, set[str]]]:
    """(step, bytes, keys) of every step of ``items``, in order."""
    out: list[tuple[int, int, set[str]]] = []
    for item in items:
        if isinstance(item, Rows):
            per_row = item.size // max(1, len(item))
            names = set(item.schema.keys)
            pairs: Iterable[tuple[int, int, set[str]]] = (
                (s, per_row, names) for s in item.steps.tolist()
            )
        else:
            pairs = [(int(item.step or 0), item.size, set(item.data))]
        for step, nbytes, names in pairs:
            if out and out[-1][0] == step:
                out[-1] = (step, out[-1][1] + nbytes, out[-1][2] | names)
            else:
                out.append((step, nbytes, names))
    return out


def _columns(
    items: Sequence[Item],
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], dict[str, tuple[Any, Any]]]:
    """The steps, times and metric columns of one segment's items.

    Returns:
        The distinct steps, the time of each (its first record's), and
        metric -> (row indices into the steps, values), as build_chunk takes
        them. A key logged twice at one step keeps the later value.
    """
    step_parts: list[np.ndarray[Any, Any]] = []
    time_parts: list[np.ndarray[Any, Any]] = []
    pieces: dict[str, list[tuple[np.ndarray[Any, Any], Any]]] = {}
    for group in _groups(items):
        if isinstance(group, Rows):
            step_parts.append(group.steps)
            time_parts.append(group.times)
            for key, values in zip(group.schema.keys, group.columns, strict=True):
                pieces.setdefault(key, []).append((group.steps, values))
            continue
        steps = np.array([r.step for r in group], dtype=np.int64)
        step_parts.append(steps)
        time_parts.append(np.array([r.when for r in group], dtype=np.float64))
        for key, (at, values) in _transposed(group).items():
            pieces.setdefault(key, []).append((steps[at], values))

    all_steps = np.concatenate(step_parts) if len(step_parts) > 1 else step_parts[0]
    all_times = np.concatenate(time_parts) if len(time_parts) > 1 else time_parts[0]
    first = np.ones(len(all_steps), dtype=bool)
    np.not_equal(all_steps[1:], all_steps[:-1], out=first[1:])
    steps = all_steps[first]
    times = all_times[first]

    metrics: dict[str, tuple[Any, Any]] = {}
    for key, parts in pieces.items():
        at = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        column: Any = _joined([p[1] for p in parts])
        last = np.ones(len(at), dtype=bool)
        np.not_equal(at[1:], at[:-1], out=last[:-1])
        if not last.all():
            at = at[last]
            if isinstance(column, np.ndarray):
                column = column[last]
            else:
                column = list(itertools.compress(column, last.tolist()))
        # A metric at every step needs no rows (build_chunk takes None).
        rows = np.searchsorted(steps, at) if len(at) != len(steps) else None
        metrics[key] = (rows, column)
    return steps, times, metrics


def _groups(items: Sequence[Item]) -> Iterable[Rows | list[Record]]:
    """Items with consecutive records gathered into lists."""
    for is_rows, run in itertools.groupby(items, key=lambda i: isinstance(i, Rows)):
        if is_rows:
            yield from run  # type: ignore[misc]
        else:
            yield list(run)  # type: ignore[arg-type]


def _transposed(records: list[Record]) -> dict[str, tuple[np.ndarray[Any, Any], Any]]:
    """metric -> (indices of the records holding it, their values), in order.

    Consecutive records with the same keys are transposed in one go.
    """
    parts: dict[str, list[tuple[range, Sequence[Value]]]] = {}
    first = 0
    for keys, block in itertools.groupby(tuple(r.data) for r in records):
        stop = first + len(list(block))
        if keys:
            rows = records[first:stop]
            columns = zip(*(r.data.values() for r in rows), strict=True)
            for key, values in zip(keys, columns, strict=True):
                parts.setdefault(key, []).append((range(first, stop), values))
        first = stop
    out: dict[str, tuple[np.ndarray[Any, Any], Any]] = {}
    for key, pieces in parts.items():
        at = np.concatenate([np.arange(r.start, r.stop) for r, _ in pieces])
        out[key] = (at, [v for _, values in pieces for v in values])
    return out


def _joined(parts: list[Any]) -> Any:
    """Value pieces as one array when they share a dtype, else as one list."""
    if all(isinstance(p, np.ndarray) for p in parts):
        if len(parts) == 1:
            return parts[0]
        if len({p.dtype for p in parts}) == 1:
            return np.concatenate(parts)
    values: list[Value] = []
    for part in parts:
        values.extend(part.tolist() if isinstance(part, np.ndarray) else part)
    return values
