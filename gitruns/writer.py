"""The writer's side of a run: log() calls journaled, windows left to a committer.

log() is the hot path of a training loop. It finds a row like the rows before
it (or validates it), copies it into the run's journal, a mapped file (no
system call), and counts steps and windows. Committing happens elsewhere:

- with ``background`` (the default) a committer process of the run's own
  (:mod:`gitruns.committer_process`) reads the journal as it grows and commits
  each window once it is complete, on another core, so that a window boundary
  costs log() nothing and the training process never holds Git data. The
  process starts with the run as a bootstrap that imports nothing, and loads
  gitruns when the first window fills or the flush interval passes: a run
  that ends sooner never pays for it, and is committed by its writer at
  finish(). Until the process is up, complete windows wait in the journal;
- without ``background``, or when the committer process cannot start or
  dies, the writer commits each window itself when it completes (in log()).

The journal is the source of truth until a commit lands, whoever commits: a
commit that fails (a full disk) is tried again at the next window, a run that
crashed is committed from it, and the committer process of a writer that was
killed commits what the journal holds and marks the run crashed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gitruns.chunk import MAX_CHUNK_BYTES, MAX_METRICS, MAX_ROWS, Digest
from gitruns.committer import (
    PATCH,
    PATCHED,
    CommitOptions,
    Committer,
    Failures,
    committed_meta,
    float32_of,
    journal_dir,
    last_step_for,
    tip_totals,
)
from gitruns.committer_process import CommitterGone, CommitterLink
from gitruns.errors import (
    GitRunsError,
    InvalidArgumentError,
    InvalidValueError,
    RepositoryError,
    RunNotFoundError,
    StepOrderError,
)
from gitruns.journal import Journal, RunLock, journal_files
from gitruns.refs import RunRef, Sha
from gitruns.store import MAX_OBJECT_BYTES, RunStore, Snapshot, dumps_json
from gitruns.values import Value, check_unicode, identical, unencodable

logger = logging.getLogger(__name__)


FSYNC_MODES = ("never", "commit", "always")

#: The most one log() call may hold, as a journal record.
MAX_CALL_BYTES = 16 << 20

#: How often log() looks at the committer process (and at the clock) at most.
CHECK_SECONDS = 0.01

#: How long complete windows may wait for the committer process to come up
#: before the writer commits them itself (the flush interval, if shorter).
DEFER_SECONDS = 10.0

#: Journal bytes past which the writer commits waiting windows itself.
DEFER_BYTES = 256 << 20

#: How long a run lasts before its committer process is told to boot. Booting
#: (importing numpy, dulwich...) takes a few tenths of a second of the other
#: core, which slows a training loop sharing it; a run that ends sooner is
#: committed by finish() at once, in one pack.
BOOT_AFTER_SECONDS = 1.0

#: The most UTF-8 bytes of strings a chunk of one step may carry: the first
#: and last strings of every string metric before the step (its prefix
#: digests), and the step's own three times (as values, first and last).
STRING_BYTES = MAX_CHUNK_BYTES // 2

#: The most bytes the first and last strings of a run's string metrics may
#: take together as JSON: its summary may hold them, in a file of
#: MAX_OBJECT_BYTES (with the summary values set by hand, and the numbers).
SUMMARY_STRING_BYTES = MAX_OBJECT_BYTES // 2

#: The most bytes the summary's derived values may take together: a line
#: per metric name, and its strings (the rest of MAX_OBJECT_BYTES is left to
#: values set by hand).
SUMMARY_BYTES = MAX_OBJECT_BYTES * 7 // 8

# The summary file's limit, less room for its braces and rounding.
_SUMMARY_LIMIT = MAX_OBJECT_BYTES - 4096

#: Journaled metadata bytes after which set_meta checks that config and the
#: summary overrides still fit the size a run's JSON file may have.
_RECHECK_BYTES = 1 << 20

# Bound once: log() calls them at every call or every row.
_time = time.time
_monotonic = time.monotonic

# Writers of this process; a forked child must not write into their journals.
_live_writers: weakref.WeakSet[RunWriter] = weakref.WeakSet()

#: What turns log()'s argument into a stored row (gitruns.run gives clean_row
#: with W&B's media left out); rows already clean need none.
Cleaner = Callable[[Any], dict[str, Value]]


def journaled_runs(store: RunStore) -> list[RunRef]:
    """The runs whose journal holds records (a live or a crashed writer's)."""
    root = store.data_dir / "journal"
    if not root.exists():
        return []
    return [
        RunRef(folder.parent.name, folder.name)
        for folder in sorted(root.glob("*/*"))
        if journal_files(folder)
    ]


@dataclass(frozen=True)
class WriterOptions:
    """How a run is written.

    Attributes:
        window: steps per window; a new run's window is fixed for its life.
        flush_interval: seconds after which logged steps are committed even
            though their window is not full.
        fsync: ``never`` (what log() accepted survives a process crash),
            ``commit`` (also fsync each commit's objects: committed steps
            survive a power loss) or ``always`` (also sync the journal at
            every log() call: every accepted step survives a power loss).
        background: commit in a committer process of the run's own rather
            than in log().
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
        if snapshot.commit is None:
            raise ValueError("a RunWriter starts from a commit; use RunWriter.open()")
        self.store = store
        self.run = run
        self.options = options
        self.window = snapshot.window
        #: The last step whose window still fits in int64, as chunks need.
        self.max_step = last_step_for(snapshot.window)
        self._lock = lock
        # An absolute folder: the script may change its directory later.
        self._journal = Journal(
            journal_dir(store, run).resolve(), fsync=options.fsync == "always"
        )
        self._write_row = self._journal.write_row
        # One thread at a time logs, flushes, finishes or abandons: the step
        # and the journal's place are this writer's, and a second thread
        # writing between them would lose rows. (reload() and recover() run
        # in open(), before the writer is handed out.)
        self._guard = threading.RLock()
        # The totals of the branch's tip, once the writer is finished.
        self._tip_totals: tuple[Sha | None, dict[str, Digest]] | None = None
        #: Every metric name the run holds or has journaled.
        self._names: set[str] = set()
        #: Steps that a previous writer journaled and open() committed.
        self.recovered = 0
        self.float32 = (
            float32_of(store, snapshot.info)
            if options.float32 is None
            else options.float32
        )
        self._commit_options = CommitOptions(
            self.window, self.float32, options.fsync != "never"
        )
        #: Commits in this process: always, until a committer process takes
        #: over (and again if it dies).
        self._local: Committer | None = self._committer(snapshot)
        self._names.update(self._local.totals)
        #: Room the summary and chunks have left for names and strings.
        self._room = _Room()
        self._seed_room(self._local.totals)
        self._link: CommitterLink | None = None
        self._failures = Failures(run.path)

        self._step = _next_step(snapshot)
        self._open = False  # a row is open at self._step
        self._window_end = 0  # the end of the window of the last row opened
        self._done_through = -1  # windows through this step are complete
        now = _monotonic()
        self._boot_at = now + BOOT_AFTER_SECONDS
        self._last_flush = now
        self._next_check = now + min(options.flush_interval, CHECK_SECONDS)
        # Since when complete windows wait for the committer process to be up.
        self._waiting_since: float | None = None
        # What the journal had written at the last commit in this process.
        self._committed_at = 0

        #: config and summary_overrides as last journaled, for the next patch.
        self._latest: dict[str, dict[str, Any]] = {}
        #: Bytes of metadata journaled since its size was last checked, and
        #: the largest file it made then.
        self._grown = 0
        self._sized = 0

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
                process is started for the run.

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
            store.clear_stale_ref_lock(run, lock.stale_holder is not None)
            tip = store.tip(run)
            if tip is None:
                raise RunNotFoundError(run.path, str(store.git_dir))
            writer = cls(store, run, store.read_snapshot(tip, run), options, lock)
            writer.recovered = writer.recover()
            writer._journal.open()
        except BaseException:
            lock.release()
            raise
        if options.background:
            writer._link = CommitterLink.spawn(
                store,
                run,
                writer._commit_options,
                options.flush_interval,
                lock.fd,
            )
        return writer

    def _seed_room(self, totals: dict[str, Digest]) -> None:
        """Count the names, strings and summary values the run holds."""
        self._room.seed(totals, committed_meta(self.snapshot, "summary_overrides"))

    def reload(self) -> None:
        """Re-read the branch tip after an operation moved it under our lock.

        Called before anything is logged (a rewind at init()).

        Raises:
            RunNotFoundError: if the run's branch was deleted meanwhile.
            RepositoryError: if the tip cannot be read.
        """
        tip = self.store.tip(self.run)
        if tip is None:
            raise RunNotFoundError(self.run.path, str(self.store.git_dir))
        snapshot = self.store.read_snapshot(tip, self.run)
        if self._local is not None:
            self._local.close()
        self._local = self._committer(snapshot)
        self._names = set(self._local.totals)  # a rewind drops names too
        self._seed_room(self._local.totals)
        self._step = _next_step(snapshot)
        self._open = False

    def recover(self) -> int:
        """Commit the rows a previous writer journaled but never committed.

        Returns:
            How many steps were recovered.
        """
        local = self._local
        if local is None or not journal_files(self._journal.folder):
            return 0
        local.read(final=True)
        steps = local.pending_step_range()
        local.commit()
        self._names.update(local.totals)
        self._seed_room(local.totals)
        if steps is None:
            return 0
        count, first, last = steps
        self._step = max(self._step, last + 1)
        logger.warning(
            "run %s: recovered %d journaled steps (%d..%d)",
            self.run.path,
            count,
            first,
            last,
        )
        return count

    # -- the caller's side --------------------------------------------------

    @property
    def step(self) -> int:
        """The step the next plain log() call writes to."""
        return self._step

    def log(
        self,
        data: Any,
        step: int | None = None,
        commit: bool | None = None,
        when: float | None = None,
        clean: Cleaner | None = None,
    ) -> None:
        """Journal one row; see DESIGN.md §5 for step and commit.

        The row is in the journal when this returns, so a crash of the
        process after that loses none of it.

        Args:
            data: the metrics: what the caller logged when ``clean`` is given,
                else a row already checked by :func:`gitruns.values.clean_row`.
            step: the step to log at; None for the current one.
            commit: whether the call ends its step; None ends it unless
                ``step`` is given.
            when: the time stamp in seconds since the epoch; None for now.
            clean: turns ``data`` into a stored row, raising for bad data;
                skipped for a row like those before it (same keys, same types).

        Raises:
            StepOrderError: for a step below the current one.
            InvalidValueError: for a step beyond the run's last step, a bad
                time stamp, a str that is not valid Unicode, or a call over
                the size limit; and whatever ``clean`` raises.
            RepositoryError: if the journal cannot be written (disk full,
                read-only repository); the call is then not recorded.
            GitRunsError: if the writer is finished, or belongs to the
                process this one was forked from.
        """
        with self._guard:
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
                when = _time()
            elif type(when) is not float:
                when = _as_time(when)
            if type(data) is not dict or not self._write_row(step, when, data):
                self._write_new(step, when, data, clean)

            # Nothing above changed any state: a refused call leaves no trace.
            if (step != current or not self._open) and (
                step >= self._window_end or _monotonic() >= self._next_check
            ):
                self._opened(step)
            if ends_step:
                self._open = False
                self._step = step + 1
                if step + 1 == self._window_end:
                    self._window_done(step)
            else:
                self._open = True
                self._step = step

    def _write_new(
        self, step: int, when: float, data: Any, clean: Cleaner | None
    ) -> None:
        """Journal a row unlike the rows before it, checking it first."""
        row = data if clean is None else clean(data)
        names = self._names
        new = row.keys() - names
        if len(names) + len(new) > MAX_METRICS:
            first = min(new)
            raise InvalidValueError(
                first,
                row[first],
                f"a run may hold {MAX_METRICS} distinct metric names and "
                f"{self.run.path} has {len(names)}; log a name that keeps "
                "changing as one metric (the sample as its step), or in another run",
            )
        count_names = self._room.check_names(new, row, self.run.path)
        self._journal_new(step, when, data, row)
        names.update(new)
        count_names()

    def _journal_new(
        self, step: int, when: float, data: Any, row: dict[str, Value]
    ) -> None:
        """Journal a checked row, declaring its keys when it has new ones."""
        journal = self._journal
        # Declared as the caller wrote it (numpy scalars and all) when it is
        # the same row, so that the next such row needs no check at all.
        if (
            row is not data
            and type(data) is dict
            and tuple(row) == tuple(data)
            and journal.declare(data)
            and journal.write_row(step, when, data)
        ):
            return
        if journal.declare(row) and journal.write_row(step, when, row):
            return
        try:
            record = journal.encode(step, when, row)
        except ValueError:
            # A str that is not valid Unicode (UnicodeEncodeError).
            raise unencodable(row) from None
        if len(record) > MAX_CALL_BYTES:
            raise InvalidValueError(
                "<row>",
                f"<{len(row)} keys>",
                f"one log() call may hold {MAX_CALL_BYTES >> 20} MiB; split it",
            )
        count_strings = self._room.check(step, row, self.run.path)
        place = (journal.current, journal.size)
        try:
            journal.write(record)
        finally:
            # Also when the record landed and only syncing it failed.
            if (journal.current, journal.size) != place:
                count_strings()

    def _opened(self, step: int) -> None:
        """A new row is open at ``step`` in a new window, or a check is due."""
        if step >= self._window_end:
            if self._window_end:
                self._window_done(step - step % self.window - 1)
            self._window_end = step - step % self.window + self.window
        now = _monotonic()
        if now >= self._next_check:
            self._check(now, step - 1)

    def _window_done(self, through: int) -> None:
        """Windows up to step ``through`` are complete: commit, or wake a committer."""
        if through <= self._done_through:
            return
        self._done_through = through
        link = self._link
        if link is None or link.gone:
            self._commit_locally(through)
        elif not link.active and self._waiting_since is None:
            # Work for the committer process: the next check wakes it (a pipe
            # write that wakes a process takes tens of microseconds, which a
            # window boundary need not pay), and a later one hands over.
            self._waiting_since = _monotonic()

    def _check(self, now: float, closed: int) -> None:
        """What log() looks at now and then: its committer process, the interval.

        Args:
            now: the monotonic clock.
            closed: the last step no record can add to any more.
        """
        link = self._link
        if link is not None and not link.gone:
            self._check_link(link, now, closed)
        if link is None or link.gone:
            self._check_interval(now, closed)

    def _check_interval(self, now: float, closed: int) -> None:
        """This process commits: what is closed, once the flush interval passed."""
        if self._local is None:
            self._take_over()  # its committer process died: try again
        interval = self.options.flush_interval
        if now - self._last_flush >= interval:
            self._last_flush = now
            self._commit_locally(closed)
        self._next_check = self._last_flush + interval

    def _check_link(self, link: CommitterLink, now: float, closed: int) -> None:
        """Take in what the committer process said; wake it, or hand over to it."""
        interval = self.options.flush_interval
        self._next_check = now + min(CHECK_SECONDS, interval)
        link.poll()
        if link.active:
            if link.gone:
                self._take_over()
            return  # it keeps the flush interval itself
        if link.gone:
            return  # died booting: this process commits (see _check)
        if link.ready:
            self._hand_over(link)
            return

        # Not up yet: wake it once there is work and the run has lasted
        # BOOT_AFTER_SECONDS, and commit here meanwhile only when it is late,
        # or the journal has grown large.
        due = now - self._last_flush >= interval
        if due and self._waiting_since is None:
            self._waiting_since = now
        if self._waiting_since is None:
            return
        if now >= self._boot_at:
            link.boot()
        late = now - self._waiting_since >= min(interval, DEFER_SECONDS)
        if late or self._journal.written - self._committed_at >= DEFER_BYTES:
            self._commit_locally(closed if due else self._done_through)
            self._waiting_since = now
            if due:
                self._last_flush = now

    def _commit_locally(self, through: int) -> None:
        """Commit closed rows in this process; a failure waits for the next try."""
        local = self._local
        if local is None:
            return
        try:
            local.read()
            local.commit(through)
        except Exception as exc:  # noqa: BLE001 - reported at flush/finish
            self._failures.failed(exc)
            return
        self._failures.worked()
        self._committed_at = self._journal.written

    def _hand_over(self, link: CommitterLink) -> None:
        """The committer process is up: it commits from the branch's tip on."""
        local = self._local
        assert local is not None
        link.go(local.tip)
        local.close()
        self._local = None
        self._waiting_since = None
        logger.debug("run %s: committer process %d took over", self.run.path, link.pid)

    def _take_over(self) -> None:
        """The committer process is gone: commit in this process from the tip.

        A failure (the repository unreadable for a moment) is logged and
        tried again at the next check: it must not end the training loop.
        """
        link = self._link
        assert link is not None
        try:
            # It may have died moving the branch: its ref lock is ours to clear.
            self.store.clear_stale_ref_lock(self.run, holder_died=True)
            tip = self.store.tip(self.run)
            if tip is None:
                raise RunNotFoundError(self.run.path, str(self.store.git_dir))
            snapshot = self.store.read_snapshot(tip, self.run)
        except GitRunsError as exc:
            self._failures.failed(exc)
            return
        logger.warning(
            "run %s: the committer process ended (%s); committing in this process",
            self.run.path,
            link.gone,
        )
        self._local = self._committer(snapshot)
        self._commit_locally(self._done_through)

    def _committer(self, snapshot: Snapshot) -> Committer:
        """A committer in this process, from ``snapshot`` on."""
        return Committer(
            self.store,
            self.run,
            snapshot,
            self._commit_options,
            trusted_from=self._journal.first_seq,
        )

    def _closed_error(self) -> GitRunsError:
        if os.getpid() != self._pid:
            return GitRunsError(
                f"run {self.run.path} is written by process {self._pid}, which "
                "forked this one; log from that process, or start a run here"
            )
        return GitRunsError(
            f"run {self.run.path} is finished; start a new run or resume it"
        )

    def set_meta(self, **meta: Any) -> None:
        """Journal run metadata (config, name, summary overrides...) to commit next.

        ``config`` and ``summary_overrides`` are whole dicts here, but the
        journal gets only what changed since the last call: a script that sets
        thousands of summary keys one by one journals each key once.

        Raises:
            InvalidArgumentError: a str in it has no UTF-8 form; nothing of
                this call is journaled.
        """
        with self._guard:
            if self._closed:
                logger.warning(
                    "%s; %s not stored", self._closed_error(), ", ".join(meta)
                )
                return
            journaled = dict(meta)
            for key in PATCHED & meta.keys():
                before = self._latest.get(key)
                if before is None:
                    before = committed_meta(self.snapshot, key)
                journaled[key + PATCH] = _patch(before, journaled.pop(key))
            # What is new is checked; the rest was, when it was journaled.
            for key, value in journaled.items():
                check_unicode(value, key.removesuffix(PATCH))
            count_overrides = self._room.check_overrides(
                journaled.get("summary_overrides" + PATCH), self.run.path
            )
            record = self._journal.encode_meta(time.time(), journaled)
            self._grown += len(record)
            # Not at every call, sizing a large dict costs: when enough has been
            # journaled, or the largest one may be near the limit (a journaled
            # byte can take a few in the indented file).
            if (
                self._grown > _RECHECK_BYTES
                or self._sized + 4 * self._grown > MAX_OBJECT_BYTES
            ):
                sizes = [len(dumps_json(meta[k], k)) for k in PATCHED & meta.keys()]
                self._sized, self._grown = max(sizes, default=self._sized), 0
            for key in PATCHED & meta.keys():
                self._latest[key] = dict(meta[key])
            self._journal.write(record)
            count_overrides()

    def flush(self) -> None:
        """Commit every finished row now and wait until it is committed.

        Raises:
            RepositoryError: if committing failed; the journal keeps the rows.
        """
        with self._guard:
            if self._closed:
                return
            through = self._step - 1
            link = self._link
            if link is not None and link.active and not link.gone:
                try:
                    link.flush(through)
                    return
                except CommitterGone:
                    self._take_over()
                except RepositoryError as exc:
                    raise self._commit_failed(exc) from exc
            self._local_committer()
            self._commit_locally(through)
            if self._failures.error is not None:
                raise self._commit_failed(
                    self._failures.error
                ) from self._failures.error

    def _local_committer(self) -> Committer:
        """The committer of this process, taking over from a dead process first.

        Raises:
            RepositoryError: the run could not be read to take over.
        """
        if self._local is None:
            self._take_over()
        if self._local is None:
            raise self._commit_failed(self._failures.error)
        return self._local

    def _commit_failed(self, exc: BaseException | None) -> RepositoryError:
        """The error of a commit that failed, saying the rows are kept."""
        return RepositoryError(
            f"run {self.run.path}: committing failed: {exc}; what was logged is "
            f"kept in the journal, run `gitruns recover {self.run.path}` once the "
            "cause is fixed"
        )

    def live_totals(self) -> dict[str, Digest]:
        """Digests of everything accepted so far, committed or not.

        Once the writer is finished (or in a forked child): of what the
        branch holds.

        Raises:
            RepositoryError: the journal or the run cannot be read.
        """
        with self._guard:
            if self._closed:
                # Finished, or this is the copy in a forked child, which must
                # not commit its parent's journal: what the branch holds, read
                # once per tip (a summary is read a key at a time).
                tip = self.store.tip(self.run)
                if self._tip_totals is None or self._tip_totals[0] != tip:
                    totals = tip_totals(self.store, self.run, self.snapshot)
                    self._tip_totals = (tip, totals)
                return dict(self._tip_totals[1])
            link = self._link
            if link is not None and link.active and not link.gone:
                with contextlib.suppress(CommitterGone):
                    return link.totals()
            local = self._local_committer()
            local.read()
            return local.pending_totals()

    @property
    def snapshot(self) -> Snapshot:
        """The committed state (what the committer has written so far)."""
        if self._local is not None:
            return self._local.snapshot
        tip = self.store.tip(self.run)
        if tip is None:
            raise RunNotFoundError(self.run.path, str(self.store.git_dir))
        return self.store.read_snapshot(tip, self.run)

    def finish(self, state: str, **meta: Any) -> Sha | None:
        """Commit everything with the run's final state; release the run.

        Returns:
            The run's last commit; None where this writer commits nothing (it
            is finished already, or it is a forked child's copy).

        Raises:
            RepositoryError: if committing failed; the journal keeps what
                was logged, and ``gitruns recover`` commits it later.
        """
        if os.getpid() != self._pid:
            # A forked child (a data loader worker) exiting through atexit
            # must not finish its parent's run under the parent's feet.
            logger.warning("run %s: not finished from a forked child", self.run.path)
            return None
        with self._guard:
            if self._closed:
                return None
            try:
                self._journal.close()
                link = self._link
                if link is not None and link.active and not link.gone:
                    try:
                        tip = link.finish(state, meta)
                        self._local = None
                        return tip
                    except CommitterGone:
                        self._take_over()
                    except RepositoryError as exc:
                        link.cancel()
                        raise self._commit_failed(exc) from exc
                try:
                    return self._finish_locally(state, meta)
                finally:
                    # Only now: if this process is killed while it commits, the
                    # committer process (booted by its pipe closing) commits the
                    # journal and marks the run crashed, as for any other kill.
                    if link is not None:
                        link.cancel()
            finally:
                self._closed = True
                self._lock.release()

    def _finish_locally(self, state: str, meta: dict[str, Any]) -> Sha:
        local = self._local_committer()
        try:
            local.read(final=True)
            local.commit(state=state, meta=meta)
        except Exception as exc:
            raise self._commit_failed(exc) from exc
        finally:
            local.close()
        self._failures.worked()
        try:
            self.store.tidy()
        except GitRunsError as exc:
            # Housekeeping: everything is committed; git gc packs later.
            logger.warning(
                "run %s: objects not packed or packs not merged (git gc does it "
                "later): %s",
                self.run.path,
                exc,
            )
        return local.tip

    def abandon(self) -> None:
        """Stop without committing; the journal keeps what was accepted."""
        with self._guard:
            if self._link is not None:
                self._link.abandon()
            self._journal.close()
            if self._local is not None:
                self._local.close()
            self._closed = True
            self._lock.release()


class _Room:
    """What a run's chunks and summary carry of its names and strings.

    Every chunk carries the first and last value of each string metric, and
    the summary a line per metric name, those strings and the values set by
    hand, so names and strings logged without end could make a run no chunk
    or summary file can hold. log() and the summary refuse what would, before
    it is journaled, where finish() could only fail.
    """

    def __init__(self) -> None:
        self.seed({}, {})

    def seed(self, totals: dict[str, Digest], overrides: dict[str, Any]) -> None:
        """Count what the run holds (committed or recovered)."""
        #: Per string metric, the UTF-8 bytes of its first and last values,
        #: which every later chunk carries, and their bytes as JSON, which
        #: the summary may hold (it escapes control characters).
        self.first: dict[str, tuple[int, int]] = {}
        self.last: dict[str, tuple[int, int]] = {}
        for name, digest in totals.items():
            if type(digest.first) is str:
                self.first[name] = _sizes(digest.first)
            if type(digest.last) is str:
                self.last[name] = _sizes(digest.last)
        ends = [*self.first.values(), *self.last.values()]
        self.edges = sum(raw for raw, _ in ends)
        self.summary = sum(json for _, json in ends)
        #: What the summary takes for every metric's name and a number.
        self.names = sum(_name_cost(name) for name in totals)
        #: What the summary takes for each value set by hand.
        self.overrides = {k: _override_cost(k, v) for k, v in overrides.items()}
        #: The step strings were last logged at, the edges before it (what
        #: a chunk of that step alone carries), and its strings' bytes.
        self.step, self.base = -1, self.edges
        self.at_step: dict[str, int] = {}

    def check(self, step: int, row: dict[str, Value], run: str) -> Callable[[], None]:
        """Refuse ``row``'s strings if the run could not hold them.

        Returns:
            What counts the row, to be called once it is journaled.

        Raises:
            InvalidValueError: a chunk of the step alone would carry more
                than STRING_BYTES of strings (the edges before the step,
                and the step's own three times: as values, first and last),
                or the summary more than SUMMARY_STRING_BYTES of them (or
                too much with its names and values set by hand).
        """
        sizes = {k: _sizes(v) for k, v in row.items() if type(v) is str}
        if not sizes:
            return lambda: None
        first = {k: n for k, n in sizes.items() if k not in self.first}
        changed = [*first.values(), *sizes.values()]
        gone = [self.last[k] for k in sizes if k in self.last]
        edges = self.edges + sum(r for r, _ in changed) - sum(r for r, _ in gone)
        summary = self.summary + sum(j for _, j in changed) - sum(j for _, j in gone)
        base, at_step = (
            (self.base, dict(self.at_step)) if step == self.step else (self.edges, {})
        )
        # A key logged again at the step keeps only its latest value.
        at_step.update((k, r) for k, (r, _) in sizes.items())
        chunk = base + 3 * sum(at_step.values())
        whole = summary + self.names + sum(self.overrides.values())
        if (
            chunk > STRING_BYTES
            or summary > SUMMARY_STRING_BYTES
            or summary + self.names > SUMMARY_BYTES
            or whole > _SUMMARY_LIMIT
        ):
            key = max(sizes, key=sizes.__getitem__)
            raise InvalidValueError(
                key,
                row[key],
                f"run {run}'s string metrics would put {chunk / 2**20:.1f} MiB "
                f"of strings in a chunk (at most {STRING_BYTES >> 20}: each "
                "carries the first and last value of every string metric, and "
                f"its step's own three times) or {summary / 2**20:.1f} MiB in "
                f"its summary (at most {SUMMARY_STRING_BYTES >> 20}; "
                f"{whole / 2**20:.1f} MiB with its names and values set by "
                f"hand, at most {_SUMMARY_LIMIT / 2**20:.0f}); log long text as "
                "a file with gitruns.save(), or shorter strings",
            )

        def count() -> None:
            self.first.update(first)
            self.last.update(sizes)
            self.edges, self.summary = edges, summary
            self.step, self.base, self.at_step = step, base, at_step

        return count

    def check_overrides(
        self, patch: dict[str, Any] | None, run: str
    ) -> Callable[[], None]:
        """Refuse summary values set by hand the summary could not hold.

        Returns:
            What counts them, to be called once they are journaled.

        Raises:
            InvalidArgumentError: with the summary's derived values, they
                would take it past MAX_OBJECT_BYTES.
        """
        if not patch:
            return lambda: None
        costs = {k: _override_cost(k, v) for k, v in patch["set"].items()}
        after = dict(self.overrides)
        for key in patch["del"]:
            after.pop(key, None)
        after.update(costs)
        total = sum(after.values())
        if costs and total + self.names + self.summary > _SUMMARY_LIMIT:
            key = max(costs, key=costs.__getitem__)
            raise InvalidArgumentError(
                f"summary[{key!r}]",
                patch["set"][key],
                f"run {run}'s summary would take {total / 2**20:.1f} MiB for "
                f"values set by hand and {(self.names + self.summary) / 2**20:.1f} "
                "MiB for those it derives from metrics, over "
                f"{_SUMMARY_LIMIT / 2**20:.0f}; keep large "
                "things in a file with gitruns.save()",
            )

        def count() -> None:
            self.overrides = after

        return count

    def check_names(
        self, new: set[str], row: dict[str, Value], run: str
    ) -> Callable[[], None]:
        """Refuse new metric names the summary could not hold.

        Returns:
            What counts them, to be called once they are journaled.

        Raises:
            InvalidValueError: the summary's names, numbers and strings would
                pass SUMMARY_BYTES.
        """
        if not new:
            return lambda: None
        names = self.names + sum(_name_cost(name) for name in new)
        derived = names + self.summary
        if derived > SUMMARY_BYTES or (
            derived + sum(self.overrides.values()) > _SUMMARY_LIMIT
        ):
            first = min(new)
            raise InvalidValueError(
                first,
                row[first],
                f"run {run}'s summary would take {names / 2**20:.1f} MiB for its "
                f"metrics' names and {self.summary / 2**20:.1f} MiB for their "
                f"strings, over {SUMMARY_BYTES >> 20}; log values under fewer "
                "(or shorter) names, the sample as the step",
            )

        def count() -> None:
            self.names = names

        return count


def _override_cost(key: str, value: Any) -> int:
    # Its line in the summary file, indented (dumps_json checks the value's
    # Unicode, which set_meta did).
    text = json.dumps({key: value}, indent=2, ensure_ascii=False)
    return len(text.encode("utf-8", "surrogatepass"))


def _name_cost(name: str) -> int:
    # A summary line: the name, quoted, and a number (as long as a float's
    # repr gets), indented.
    return len(name.encode("utf-8", "surrogatepass")) + 40


def _sizes(text: str) -> tuple[int, int]:
    """A string's UTF-8 bytes, and its bytes in a JSON file."""
    raw = len(text.encode("utf-8", "surrogatepass"))
    return raw, len(
        json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass")
    )


def _patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What turns ``before`` into ``after``: keys set (or changed), keys removed."""
    changed = {
        k: v for k, v in after.items() if k not in before or not identical(before[k], v)
    }
    return {"set": changed, "del": [k for k in before if k not in after]}


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
    # would overwrite the parent's. Its copies of the writers write nothing,
    # and let go of the parent's committer processes.
    for writer in list(_live_writers):
        writer._closed = True
        # A thread of the parent may have held the guard at the fork; it has
        # no thread here to release it, and the child's calls must not wait.
        writer._guard = threading.RLock()
        if writer._link is not None:
            writer._link.forget()


os.register_at_fork(after_in_child=_forget_in_child)
