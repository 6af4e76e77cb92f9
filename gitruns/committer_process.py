"""A run's committer process: commits the run's journal beside the training loop.

A writer with ``background`` starts the process when the run starts, as a
bootstrap that imports nothing of gitruns (a Python interpreter waiting on a
pipe, a few milliseconds of CPU), and sends it one word: ``boot`` once the
run has a complete window (or its flush interval has passed), ``stop`` at
finish() if it never did. Booted, the process loads gitruns, opens the
repository, says it is ready, and waits to be told the commit to start from.
From then on it reads the journal as the writer appends to it and commits
each window once a later one has begun (and what is logged, every flush
interval), while the writer only journals. The two share the run's lock (the
process inherits its descriptor): if the writer dies, the process commits what
the journal holds, marks the run ``crashed``, and only then lets the lock go.

After the bootstrap's word, the two exchange msgpack maps on the process's
standard input and output:

====================================  ========================================
writer -> committer                   committer -> writer
====================================  ========================================
                                      ``{"ready": pid}``
``{"go": tip}``
``{"flush": step, "id": n}``          ``{"flushed": n}`` or ``{"failed": msg, "id": n}``
``{"totals": n}``                     ``{"totals": n, "digests": bytes}``
``{"finish": state, "meta": {...},    ``{"done": tip, "id": n}`` or
"id": n}``                            ``{"failed": msg, "id": n}``
``{"cancel": true}``                  (the process exits, committing nothing)
end of input, or a new parent pid     (the process commits, as ``crashed``)
(the writer is gone)
                                      ``{"log": [level, logger, message]}``
                                      (a failed commit is logged, and tried
                                      again; the journal keeps its rows)
====================================  ========================================
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from gitruns.chunk import Digest, decode_digests, encode_digests
from gitruns.committer import CommitOptions, Committer, Failures
from gitruns.errors import GitRunsError, RepositoryError
from gitruns.journal import release_orphaned_lock
from gitruns.refs import RunRef, Sha
from gitruns.store import RunStore

logger = logging.getLogger(__name__)

#: How often the committer process looks at the journal, in seconds.
POLL_SECONDS = 0.02

#: How long the committer process waits after a failed commit to try again.
RETRY_SECONDS = 1.0

#: How long a writer waits for an answer from a committer process that says
#: nothing at all (no log record, no reply) before it gives up on it.
SILENT_SECONDS = 600.0

#: The words the bootstrap reads, all of one length.
BOOT = b"boot\n"
STOP = b"stop\n"

#: The bootstrap: a Python process that reads one word and imports nothing of
#: gitruns unless it is told to boot (or its writer died without a word). It
#: starts without ``site`` (``-S``), which takes most of an interpreter's
#: start-up (20-30 ms of the core a short training loop shares), and imports
#: it only to boot.
_BOOTSTRAP = """\
import os, sys
word = b""
while len(word) < 5:
    more = os.read(0, 5 - len(word))
    if not more:
        break
    word += more
if word != b"stop\\n":
    import site
    site.main()
    sys.path.insert(0, sys.argv[1])
    from gitruns.committer_process import serve
    serve(word, sys.argv[2])
"""

# Processes told to stop but not waited for; reaped later, so none lingers
# as a zombie of a long training process.
_stopped: list[subprocess.Popen[bytes]] = []


class CommitterGone(Exception):
    """The committer process ended before it answered.

    Internal to the writer, which takes over when it meets it; never raised
    to a caller of gitruns (so not a GitRunsError).
    """


class CommitterLink:
    """The writer's end of a committer process.

    Attributes:
        pid: the process id.
        booted: it was told to boot.
        ready: the process has booted and waits for ``go``.
        active: it commits the run (``go`` was sent).
        gone: why the process is no longer there ("" while it is).
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._process = process
        # Descriptors of our own: the Popen's file objects close theirs now,
        # so that nothing closes a descriptor twice later.
        self._to = os.dup(process.stdin.fileno())
        self._from = os.dup(process.stdout.fileno())
        process.stdin.close()
        process.stdout.close()
        process.stdin = process.stdout = None
        os.set_blocking(self._from, False)
        self._unpacker = msgpack.Unpacker(raw=False)
        self.pid = process.pid
        self.booted = False
        self.ready = False
        self.active = False
        self.gone = ""
        self._replies: list[dict[str, Any]] = []
        self._asked = 0

    @classmethod
    def spawn(
        cls,
        store: RunStore,
        run: RunRef,
        options: CommitOptions,
        flush_interval: float,
        lock_fd: int,
    ) -> CommitterLink | None:
        """Start the bootstrap of a committer process for ``run``.

        Returns:
            The link, or None where no process can be started (no Python
            executable, no processes left): the writer then commits itself.
        """
        _reap()
        params = {
            "repo": str(store.git_dir.resolve()),
            "project": run.project,
            "run": run.run_id,
            "window": options.window,
            "float32": options.float32,
            "fsync": options.fsync,
            "flush_interval": flush_interval,
            "parent": os.getpid(),
            "lock_fd": lock_fd,
        }
        # The directory the writer's gitruns was imported from, so that the
        # process runs the same gitruns.
        root = str(Path(__file__).resolve().parent.parent)
        executable = sys.executable
        if not Path(executable or "/").name.startswith(("python", "pypy")):
            # Embedded interpreters (uWSGI, an application's own Python)
            # name their host program here, which would not run our code.
            logger.debug("no Python executable (%r) to start a committer", executable)
            return None
        try:
            process = subprocess.Popen(
                [executable, "-S", "-c", _BOOTSTRAP, root, json.dumps(params)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(lock_fd,) if lock_fd >= 0 else (),
                start_new_session=True,
            )
        except OSError as exc:
            logger.warning(
                "run %s: no committer process (%s); committing in this process",
                run.path,
                exc,
            )
            return None
        return cls(process)

    # -- the bootstrap's word ---------------------------------------------------

    def boot(self) -> None:
        """Tell the bootstrap to load gitruns and get ready."""
        if not self.booted and not self.gone:
            self.booted = True
            self._write(BOOT)

    # -- messages -----------------------------------------------------------------

    def poll(self) -> None:
        """Take in what the process said, without waiting."""
        if self.gone or self._from < 0:
            return
        try:
            data = os.read(self._from, 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(f"reading from it failed: {exc}")
            return
        if not data:
            self._lost(self._exit_status())
            return
        self._unpacker.feed(data)
        for message in self._unpacker:
            self._take(message)

    def _take(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if "log" in message:
            level, name, text = message["log"]
            logging.getLogger(str(name)).log(int(level), "%s", text)
        elif "ready" in message:
            self.ready = True
        else:
            self._replies.append(message)

    def _lost(self, why: str) -> None:
        self.gone = why or "it ended"
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._to, self._from):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to = self._from = -1

    def _exit_status(self) -> str:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "it closed its output"
        if code < 0:
            return f"killed by signal {-code}"
        return f"exit code {code}"

    def _write(self, data: bytes) -> None:
        if self._to < 0:
            return
        try:
            os.write(self._to, data)
        except OSError as exc:
            self._lost(f"writing to it failed: {exc}")

    def _send(self, message: dict[str, Any]) -> None:
        self._write(msgpack.packb(message, use_bin_type=True))

    def _wait(self, key: str, ident: int) -> dict[str, Any]:
        """The reply to question ``ident``: the one holding ``key``, or ``failed``.

        Raises:
            RepositoryError: the reply says the commit failed.
            CommitterGone: the process ended, or said nothing for
                :data:`SILENT_SECONDS` (then it is killed).
        """
        heard = time.monotonic()
        while True:
            for i, reply in enumerate(self._replies):
                if reply.get("id") == ident and ("failed" in reply or key in reply):
                    del self._replies[i]
                    if "failed" in reply:
                        raise RepositoryError(str(reply["failed"]))
                    return reply
            if self.gone:
                raise CommitterGone(self.gone)
            if select.select([self._from], [], [], 0.5)[0]:
                heard = time.monotonic()
            elif time.monotonic() - heard > SILENT_SECONDS:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                self._lost(f"it said nothing for {SILENT_SECONDS:.0f} s")
            self.poll()

    # -- what the writer asks -------------------------------------------------------

    def go(self, tip: Sha) -> None:
        """Start committing from the commit ``tip``."""
        self._send({"go": tip.decode()})
        self.active = True

    def flush(self, through: int) -> None:
        """Commit the rows up to step ``through``; return once committed.

        Raises:
            RepositoryError: the commit failed (the journal keeps the rows).
            CommitterGone: the process ended first.
        """
        self._asked += 1
        self._send({"flush": through, "id": self._asked})
        self._wait("flushed", self._asked)

    def totals(self) -> dict[str, Digest]:
        """Digests of everything journaled so far, committed or not.

        Raises:
            CommitterGone: the process ended first.
        """
        self._asked += 1
        self._send({"totals": self._asked, "id": self._asked})
        reply = self._wait("totals", self._asked)
        return decode_digests(reply["digests"], source="the committer's totals")

    def finish(self, state: str, meta: dict[str, Any]) -> Sha:
        """Commit everything with the final ``state``; wait for the process to end.

        Raises:
            RepositoryError: the commit failed (the journal keeps the rows).
            CommitterGone: the process ended first.
        """
        self._asked += 1
        self._send({"finish": state, "meta": meta, "id": self._asked})
        reply = self._wait("done", self._asked)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=60)
        self._close()
        return Sha(str(reply["done"]).encode())

    def cancel(self) -> None:
        """Let the process go without committing anything; do not wait for it."""
        if not self.gone:
            self._write(self._cancel_message())
        self._close()
        _stopped.append(self._process)

    def _cancel_message(self) -> bytes:
        # The bootstrap takes a word; a booted process, a message.
        if not self.booted:
            return STOP
        return bytes(msgpack.packb({"cancel": True}))

    def abandon(self) -> None:
        """Stop the process without committing more; wait until it has stopped."""
        if not self.gone:
            self._write(self._cancel_message())
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=30)
        self._close()

    def forget(self) -> None:
        """In a forked child: let go of the parent's process, saying nothing."""
        self.gone = "it belongs to the parent process"
        self._close()

    def _close(self) -> None:
        self._close_fds()
        if not self.gone:
            self.gone = "it was let go"


def _reap() -> None:
    """Collect stopped processes that have ended."""
    _stopped[:] = [p for p in _stopped if p.poll() is None]


atexit.register(_reap)


# -- the process itself -------------------------------------------------------------


class _Channel:
    """The committer's end of the pipes: msgpack maps in and out."""

    def __init__(self) -> None:
        # Standard output is the channel; anything a library prints goes to
        # standard error instead of into the stream.
        self._out = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        os.set_blocking(self._out, False)
        self._unpacker = msgpack.Unpacker(raw=False)
        self._queue: list[dict[str, Any]] = []
        self.closed = False

    def send(self, message: dict[str, Any], *, drop: bool = False) -> None:
        """Send one message; with ``drop``, only if the pipe has room now.

        Log records are dropped rather than wait for a writer that is busy
        elsewhere; replies wait (the writer is waiting for them).
        """
        data = memoryview(msgpack.packb(message, use_bin_type=True))
        while data:
            try:
                data = data[os.write(self._out, data) :]
            except BlockingIOError:
                if drop:
                    return
                select.select([], [self._out], [], 1.0)
            except OSError:
                return

    def receive(self, timeout: float | None) -> list[dict[str, Any]]:
        """The messages not taken yet, waiting ``timeout`` seconds (None: until one)."""
        if not self._queue:
            self._fill(timeout)
        taken, self._queue = self._queue, []
        return taken

    def unread(self, messages: list[dict[str, Any]]) -> None:
        """Put back messages taken but not acted on, for the next receive()."""
        self._queue[:0] = messages

    def _fill(self, timeout: float | None) -> None:
        if self.closed:
            if timeout:
                time.sleep(timeout)
            return
        ready, _, _ = select.select([0], [], [], timeout)
        if not ready:
            return
        data = os.read(0, 1 << 16)
        if not data:
            self.closed = True
            return
        self._unpacker.feed(data)
        self._queue += [m for m in self._unpacker if isinstance(m, dict)]


class _Forward(logging.Handler):
    """Sends the process's log records to the writer, which logs them."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__(logging.INFO)
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            # A busy writer may miss an INFO line, never a warning.
            self.channel.send(
                {"log": [record.levelno, record.name, record.getMessage()]},
                drop=record.levelno < logging.WARNING,
            )


def serve(word: bytes, params_text: str) -> None:
    """The committer process: commit one run's journal until told to stop.

    Args:
        word: what the bootstrap read: ``boot``, or nothing when the writer
            ended without a word (then the journal is committed as crashed).
        params_text: JSON of the run and how to commit it (see
            :meth:`CommitterLink.spawn`).
    """
    # Ctrl-C and a scheduler's SIGTERM reach the writer too, which finishes
    # the run through this process: it must outlive them. It ends on its own
    # once the writer is done or gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    params = json.loads(params_text)
    channel = _Channel()
    root = logging.getLogger("gitruns")
    root.addHandler(_Forward(channel))
    root.setLevel(logging.INFO)
    root.propagate = False

    try:
        store = RunStore.open(params["repo"], create=False)
    except GitRunsError as exc:
        # The repository went away (a test's scratch folder, say): there is
        # nothing to commit into.
        logger.warning("committer of %s: %s", params["run"], exc)
        return
    run = RunRef(params["project"], params["run"])
    options = CommitOptions(
        int(params["window"]), bool(params["float32"]), bool(params["fsync"])
    )
    session = _Session(store, run, options, params, channel)
    if word != BOOT:
        session.crashed()
        return
    channel.send({"ready": os.getpid()})
    while True:
        messages = channel.receive(None)
        if channel.closed and not messages:
            session.crashed()
            return
        for i, message in enumerate(messages):
            if "go" in message:
                channel.unread(messages[i + 1 :])
                session.commit_from(Sha(str(message["go"]).encode()))
                return
            if "cancel" in message:
                return


class _Session:
    """What the committer process does for its run."""

    def __init__(
        self,
        store: RunStore,
        run: RunRef,
        options: CommitOptions,
        params: dict[str, Any],
        channel: _Channel,
    ) -> None:
        self.store = store
        self.run_ref = run
        self.options = options
        self.channel = channel
        self.parent = int(params["parent"])
        self.lock_fd = int(params["lock_fd"])
        self.interval = float(params["flush_interval"])
        self.committer: Committer | None = None
        self._failures = Failures(run.path)
        self._retry_at = 0.0

    def _committer(self, tip: Sha | None = None) -> Committer:
        if self.committer is None:
            if tip is None:
                tip = self.store.tip(self.run_ref)
                if tip is None:
                    raise RepositoryError(f"run {self.run_ref.path} has no branch")
            snapshot = self.store.read_snapshot(tip, self.run_ref)
            self.committer = Committer(self.store, self.run_ref, snapshot, self.options)
        return self.committer

    def commit_from(self, tip: Sha) -> None:
        """Commit the journal from commit ``tip`` on, until the writer is done."""
        committer = self._committer(tip)
        while True:
            messages = self.channel.receive(POLL_SECONDS)
            for i, message in enumerate(messages):
                if self._answer(message):
                    self.channel.unread(messages[i + 1 :])
                    return
            if self.channel.closed or os.getppid() != self.parent:
                self.crashed()
                return
            committer.read()
            self._commit_ready(committer)

    def _commit_ready(self, committer: Committer) -> None:
        """Commit complete windows, and everything closed once an interval passed."""
        if time.monotonic() < self._retry_at:
            return
        through = committer.complete_windows()
        waiting = committer.pending_meta or committer.pending_steps
        if through is None and waiting and committer.since_commit() >= self.interval:
            through = committer.last_read - 1
        if through is None:
            return
        self._try(lambda: committer.commit(through))

    def _try(self, action: Callable[[], object]) -> bool:
        """Run a commit; a failure is logged once and tried again in a second."""
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - reported, and tried again
            self._failures.failed(exc)
            self._retry_at = time.monotonic() + RETRY_SECONDS
            return False
        self._failures.worked()
        return True

    @property
    def _failed(self) -> str:
        return str(self._failures.error)

    def _answer(self, message: dict[str, Any]) -> bool:
        """Act on one message; True when the process is done."""
        committer = self._committer()
        if "flush" in message:
            committer.read()
            done = self._try(lambda: committer.commit(int(message["flush"])))
            key = "flushed" if done else "failed"
            self.channel.send(
                {key: message["id"] if done else self._failed, "id": message["id"]}
            )
        elif "totals" in message:
            committer.read()
            digests = encode_digests(committer.pending_totals())
            ident = message["totals"]
            self.channel.send({"totals": ident, "digests": digests, "id": ident})
        elif "finish" in message:
            meta = dict(message.get("meta") or {})
            self._finish(str(message["finish"]), meta, message.get("id"))
            return True
        elif "cancel" in message:
            return True
        return False

    def _finish(self, state: str, meta: dict[str, Any], ident: Any) -> None:
        committer = self._committer()
        committer.read(final=True)
        if not self._try(lambda: committer.commit(state=state, meta=meta)):
            self.channel.send({"failed": self._failed, "id": ident})
            return
        self._tidy()
        self.channel.send({"done": committer.tip.decode(), "id": ident})

    def crashed(self) -> None:
        """The writer is gone: commit what its journal holds, as crashed."""
        try:
            self.store.clear_stale_ref_lock(self.run_ref, holder_died=True)
            # The writer may have committed the journal's rows since our
            # last read; start again from the branch's tip.
            self.committer = None
            committer = self._committer()
            committer.read(final=True)
            state = committer.snapshot.info.get("state")
            if state == "running" or committer.pending_steps:
                committer.commit(state="crashed")
                logger.warning(
                    "run %s: its writer is gone; committed what it journaled "
                    "and marked it crashed",
                    self.run_ref.path,
                )
            self._tidy()
        except GitRunsError as exc:
            # The journal stays: the next open of the run commits it.
            logger.warning(
                "run %s: its writer is gone, and what it journaled could not "
                "be committed (%s); `gitruns recover %s` commits it",
                self.run_ref.path,
                exc,
                self.run_ref.path,
            )
        release_orphaned_lock(self.lock_fd)

    def _tidy(self) -> None:
        try:
            self.store.tidy()
        except GitRunsError as exc:
            logger.warning(
                "run %s: loose objects not packed: %s", self.run_ref.path, exc
            )
