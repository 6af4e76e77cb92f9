"""What is logged but not yet committed: an append-only journal, and run locks.

Each accepted log() call is one msgpack record ``[step, time, row]`` written
to the journal with a single ``write(2)`` before log() returns, so a killed
process loses nothing it accepted: the kernel holds the bytes. Run metadata
(config, name, summary overrides, saved files) is journaled too, as
``[nil, time, {"json": ..., "extra": ...}]``.
A journal file covers the rows of one pending segment; the writer starts a
new file when it hands a segment to be committed and deletes the old one once
the run's branch points at the commit that holds it.

A write that fails part-way (a full disk, a file size limit) is cut back off
the file, so a damaged record can only ever be the last one of a file, and
only after a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from gitruns.errors import RepositoryError, RunLockedError

logger = logging.getLogger(__name__)

SUFFIX = ".jnl"

#: msgpack's buffer bound when replaying; a single record is one log() call.
_MAX_RECORD = 2**30


class Record(NamedTuple):
    """One journaled call: a row of metrics, or run metadata when step is None."""

    step: int | None
    when: float
    data: dict[str, Any]


class Journal:
    """The journal files of one run, in a folder of their own.

    Args:
        folder: the run's journal folder; created on the first write.
        fsync: fsync every record (and the folder when a file is created),
            so that what log() accepted also survives a power loss.
    """

    def __init__(self, folder: Path, *, fsync: bool = False) -> None:
        self.folder = folder
        self.fsync = fsync
        existing = self.files()
        self._seq = int(existing[-1].stem) + 1 if existing else 0
        self._fd = -1
        #: Bytes written to the current file.
        self.size = 0
        self._path: Path | None = None
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        #: ``pack([step, time, row])``: :meth:`encode` without a call around it,
        #: for the hot path (it raises what msgpack raises).
        self.pack = self._packer.pack

    def files(self) -> list[Path]:
        """The journal files present, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*" + SUFFIX) if p.stem.isdigit())

    @property
    def current(self) -> Path | None:
        """The file being appended to, if one is open."""
        return self._path

    def encode(self, step: int, when: float, row: dict[str, Any]) -> bytes:
        """The record of one log() call, ready for :meth:`write`.

        Raises:
            ValueError: for a value msgpack cannot encode (a str that is not
                valid Unicode); the caller names the key.
        """
        try:
            return bytes(self._packer.pack([step, when, row]))
        except (TypeError, ValueError, OverflowError) as exc:
            # UnicodeEncodeError is a ValueError; a bad value never leaves
            # half a record in the packer (autoreset).
            raise ValueError(str(exc)) from exc

    def encode_meta(self, when: float, meta: dict[str, Any]) -> bytes:
        """The record of a metadata change.

        Metadata is kept as JSON (values JSON cannot hold become str, as in
        run.json), except ``extra``: saved-file tree entries, kept as bytes.
        """
        extra = meta.get("extra")
        rest = {k: v for k, v in meta.items() if k != "extra"}
        data: dict[str, Any] = {"json": json.dumps(rest, default=str, sort_keys=True)}
        if extra:
            data["extra"] = [[name, mode, sha] for name, (mode, sha) in extra.items()]
        return bytes(self._packer.pack([None, when, data]))

    def write(self, record: bytes) -> None:
        """Append one record; it is on the kernel's side when this returns.

        Raises:
            RepositoryError: if the record could not be written whole (disk
                full, read-only file system); the file is left as it was.
        """
        fd = self._fd
        if fd < 0:
            fd = self._open()
        try:
            done = os.write(fd, record)
            if done != len(record):
                self._write_rest(fd, record, done)
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            self._cut_back()
            raise RepositoryError(
                f"journal {self._path} could not be written ({exc}); this log() "
                "call was not recorded, what was accepted before it is kept. "
                + _fix_for(exc)
            ) from exc
        self.size += len(record)

    @staticmethod
    def _write_rest(fd: int, record: bytes, done: int) -> None:
        # A regular file writes whole unless space runs out; go on so that
        # the kernel says why.
        while done < len(record):
            more = os.write(fd, record[done:])
            if more <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += more

    def _cut_back(self) -> None:
        # Leave no partial record behind: the next record must be readable.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self.size)

    def rotate(self) -> Path | None:
        """Close the current file, if any, and return it; the next write starts one."""
        path = self._path
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)
        self._path, self.size = None, 0
        return path

    def close(self) -> None:
        """Close the open file, keeping it on disk."""
        self.rotate()

    def _open(self) -> int:
        path = self.folder / f"{self._seq:08d}{SUFFIX}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise RepositoryError(
                f"cannot create the journal {path} ({exc}); this log() call was "
                "not recorded, what was accepted before it is kept. " + _fix_for(exc)
            ) from exc
        self._seq += 1
        self._fd, self._path, self.size = fd, path, os.fstat(fd).st_size
        if self.fsync:
            _fsync_dir(self.folder)
        return fd

    @staticmethod
    def retire(paths: list[Path]) -> None:
        """Delete journal files whose rows are committed."""
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def replay(self, paths: list[Path] | None = None) -> Iterator[Record]:
        """Every record of the given files (default: all), oldest first."""
        for path in self.files() if paths is None else paths:
            yield from read_records(path)


def read_records(path: Path) -> Iterator[Record]:
    """The well-formed records of one journal file, stopping at a damaged one.

    A damaged record can only be a file's last one (see the module
    docstring), and log() never returned for it.
    """
    count = end = 0
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            unpacker = msgpack.Unpacker(
                f, raw=False, strict_map_key=True, max_buffer_size=_MAX_RECORD
            )
            for item in unpacker:
                record = _record(item)
                count += 1
                # Where this record ends; at the end, tell() may count a cut one.
                end = unpacker.tell()
                yield record
            if end < size:
                raise ValueError(f"{size - end} bytes of a cut record")
    except FileNotFoundError:
        return
    except (ValueError, msgpack.UnpackException) as exc:
        logger.warning(
            "journal %s: stopped after %d records at a damaged one (%s); it was "
            "never acknowledged to the caller",
            path,
            count,
            exc,
        )


def _record(item: Any) -> Record:
    if not isinstance(item, list) or len(item) != 3:
        raise ValueError("not a journal record")
    step, when, data = item
    if not isinstance(when, (float, int)) or isinstance(when, bool):
        raise ValueError("a journal record's time is not a number")
    if step is None:
        return Record(None, float(when), _meta(data))
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError("a journal record's step is not a step")
    if not isinstance(data, dict):
        raise ValueError("a journal record's row is not a map")
    return Record(step, float(when), data)


def _meta(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("json"), str):
        raise ValueError("a metadata record holds no JSON")
    meta = json.loads(data["json"])
    if not isinstance(meta, dict):
        raise ValueError("a metadata record is not an object")
    if "extra" in data:
        entries = data["extra"]
        if not isinstance(entries, list) or not all(
            isinstance(e, list)
            and len(e) == 3
            and isinstance(e[0], bytes)
            and isinstance(e[1], int)
            and isinstance(e[2], bytes)
            for e in entries
        ):
            raise ValueError("a metadata record has malformed tree entries")
        meta["extra"] = {name: (mode, sha) for name, mode, sha in entries}
    return meta


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fix_for(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "Free some disk space, then go on logging."
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "Make the repository writable, then go on logging."
    return "Fix the cause, then go on logging."


class RunLock:
    """One writer per run: an flock'ed file naming the holder's host and pid.

    The kernel releases the flock when its holder dies, so a lock file that
    still names a holder but can be locked was left by a dead process: it is
    taken over, the recovery is logged, and :attr:`stale_holder` says who it was.

    Args:
        path: the lock file.
        run: the run's path, for messages.
    """

    def __init__(self, path: Path, run: str) -> None:
        self.path = path
        self.run = run
        self.stale_holder: tuple[str, int] | None = None
        self._fd = -1

    def acquire(self) -> None:
        """Take the lock, or raise RunLockedError naming the live holder.

        Raises:
            RunLockedError: another live writer, in this process or another,
                holds the run.
            RepositoryError: the lock file cannot be created (read-only repository).
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RepositoryError(
                f"cannot lock run {self.run} at {self.path} ({exc}); "
                "check that the repository is writable"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            host, pid = _holder(fd, wait=True)
            os.close(fd)
            raise RunLockedError(self.run, host, pid) from None

        stale = _holder(fd, wait=False)
        if stale != ("?", -1):
            self.stale_holder = stale
            logger.warning(
                "run %s: recovered the lock left by pid %d on %s, which is gone",
                self.run,
                stale[1],
                stale[0],
            )
        me = f"{socket.gethostname()} {os.getpid()} {time.time():.0f}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd >= 0

    def release(self) -> None:
        """Clear the holder and unlock; the file stays for the next writer."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        with contextlib.suppress(OSError):
            # An empty file tells the next writer that nobody died holding it.
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _holder(fd: int, *, wait: bool) -> tuple[str, int]:
    """The host and pid a lock file names, or ("?", -1) if it names none."""
    # The holder writes its name just after it takes the flock; give it a
    # moment so the error can name it.
    for _ in range(20 if wait else 1):
        words = os.pread(fd, 4096, 0).decode(errors="replace").split()
        if len(words) >= 2 and words[1].isdigit():
            return words[0], int(words[1])
        if wait:
            time.sleep(0.01)
    return "?", -1
