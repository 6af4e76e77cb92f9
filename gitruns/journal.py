"""What is logged but not yet committed: a memory-mapped journal, and run locks.

Each accepted log() call is one msgpack record ``[step, time, row]`` copied
into a journal file mapped into memory before log() returns. A mapped file is
the kernel's page cache itself, so the record is the kernel's the moment the
copy ends: a killed process loses nothing it accepted, and log() makes no
system call (and never lets go of the GIL) to get there. Run metadata (config,
name, summary overrides, saved files) is journaled too, as
``[nil, time, {"json": ..., "extra": ...}]``.

A file starts with :data:`MAGIC` and holds frames ``<length> <crc32> <record>``
(little-endian u32 each) in room reserved ahead by writing zeros, so that the
file system has set the blocks aside before a record is copied into the
mapping: there it could not report a full disk, only kill the process with
SIGBUS. (Zeros rather than ``posix_fallocate``: the pages are then already in
the page cache when log() touches them, and deleting a file whose blocks were
never allocated costs no discard.) The room past the last frame stays zero: a
zero length ends the file. A record is copied before its frame header, so a process
killed half-way through a copy leaves a zero header, and a record torn by a
power loss fails its checksum: either way the damage can only be at the end of
what was written, and log() never returned for it. ``fsync="always"`` syncs
the pages of every record before log() returns.

A journal file covers the rows of one pending segment; the writer moves on to
a new file when it hands a segment to be committed and deletes the old one
once the run's branch points at the commit that holds it. The committer thread
prepares the next file ahead (:meth:`Journal.prepare`), so that moving on
costs the caller no system call either.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import mmap
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from gitruns.errors import RepositoryError, RunLockedError

logger = logging.getLogger(__name__)

SUFFIX = ".jnl"

#: The first bytes of a framed journal file. A file without them was written
#: by gitruns 0.1 as bare msgpack records, and is still read.
MAGIC = b"gitrunsJ"

#: A frame header: the record's length and its CRC-32.
_FRAME = struct.Struct("<II")

#: Room reserved for a new file at first; a file grows by doubling, and the
#: next file starts with the room the last one needed.
INITIAL_ROOM = 64 * 1024
_ROOM_STEP = 64 * 1024
MAX_INITIAL_ROOM = 32 * 2**20

#: msgpack's buffer bound when replaying; a single record is one log() call.
_MAX_RECORD = 2**30

_PAGE_MASK = ~(mmap.PAGESIZE - 1)


class Record(NamedTuple):
    """One journaled call: a row of metrics, or run metadata when step is None."""

    step: int | None
    when: float
    data: dict[str, Any]


class JournalFile:
    """One open journal file: its path, descriptor and mapping.

    The writer hands a file it has finished with to the committer thread,
    which closes it (unmapping costs time the caller should not pay).
    """

    __slots__ = ("path", "fd", "map")

    def __init__(self, path: Path, fd: int, mapping: mmap.mmap) -> None:
        self.path = path
        self.fd = fd
        self.map = mapping

    def close(self) -> None:
        """Unmap and close; the file and its records stay on disk."""
        with contextlib.suppress(OSError, ValueError, BufferError):
            self.map.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Journal:
    """The journal files of one run, in a folder of their own.

    Args:
        folder: the run's journal folder; created on the first write.
        fsync: sync every record (and the folder when a file is created),
            so that what log() accepted also survives a power loss.
    """

    def __init__(self, folder: Path, *, fsync: bool = False) -> None:
        self.folder = folder
        self.fsync = fsync
        existing = self.files()
        self._seq = int(existing[-1].stem) + 1 if existing else 0
        #: Bytes used in the current file (its magic and frames).
        self.size = 0
        self._file: JournalFile | None = None
        self._map: mmap.mmap | None = None
        self._room = 0
        self._next_room = INITIAL_ROOM
        # The spare file and the sequence numbers are shared with the
        # committer thread: files must be used in the order they are named.
        self._spare: JournalFile | None = None
        self._lock = threading.Lock()
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
        return None if self._file is None else self._file.path

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
        """Append one record; it is in the kernel's page cache when this returns.

        Raises:
            RepositoryError: if the file could not be created or grown (disk
                full, read-only file system); nothing was written then.
        """
        mapping = self._map
        if mapping is None:
            mapping = self._start()
        start = self.size
        end = start + _FRAME.size + len(record)
        if end > self._room:
            self._grow(end)
            mapping = self._map
            assert mapping is not None
        # The record first, then its header: a copy cut short by a kill
        # leaves a zero header, which ends the file before the cut record.
        mapping[start + _FRAME.size : end] = record
        _FRAME.pack_into(mapping, start, len(record), zlib.crc32(record))
        self.size = end
        if self.fsync:
            self._sync(start, end)

    def _sync(self, start: int, end: int) -> None:
        assert self._map is not None
        page = start & _PAGE_MASK
        try:
            self._map.flush(page, end - page)
        except OSError as exc:
            # The record is in the page cache, so a crash of the process
            # loses nothing; say that the power-loss promise is broken.
            raise RepositoryError(
                f"journal {self.current} could not be synced to disk ({exc}); "
                "this log() call is recorded but may not survive a power loss. "
                + _fix_for(exc)
            ) from exc

    def _grow(self, end: int) -> None:
        assert self._file is not None and self._map is not None
        room = _round_up(max(end, 2 * self._room))
        try:
            _append_zeros(self._file.fd, room - self._room)
            self._map.resize(room)
        except OSError as exc:
            raise RepositoryError(
                f"journal {self._file.path} could not grow ({exc}); this log() "
                "call was not recorded, what was accepted before it is kept. "
                + _fix_for(exc)
            ) from exc
        if self.fsync:
            os.fsync(self._file.fd)
        self._room = room

    def _start(self) -> mmap.mmap:
        """Move on to the spare file, or create one now if there is none."""
        with self._lock:
            spare, self._spare = self._spare, None
            if spare is None:
                seq = self._seq
                self._seq += 1
        if spare is None:
            spare = self._create(seq, self._next_room)
        self._file, self._map = spare, spare.map
        self._room, self.size = len(spare.map), len(MAGIC)
        return spare.map

    def prepare(self) -> None:
        """Create the next file ahead of need, off the caller's path.

        Called by the committer thread; any error is left for :meth:`write`
        to meet (and report) when it has to create the file itself.
        """
        with self._lock:
            if self._spare is not None:
                return
            try:
                self._spare = self._create(self._seq, self._next_room)
            except RepositoryError as exc:
                logger.debug("no spare journal file: %s", exc)
                return
            self._seq += 1

    def _create(self, seq: int, room: int) -> JournalFile:
        path = self.folder / f"{seq:08d}{SUFFIX}"
        fd = -1
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # O_APPEND: a stray write(2) on this descriptor can only land past
            # the mapped room, never over a record.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            os.write(fd, MAGIC)
            _append_zeros(fd, room - len(MAGIC))
            mapping = mmap.mmap(fd, room)
            if self.fsync:
                os.fsync(fd)
                _fsync_dir(self.folder)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()
            raise RepositoryError(
                f"cannot create the journal {path} ({exc}); this log() call was "
                "not recorded, what was accepted before it is kept. " + _fix_for(exc)
            ) from exc
        return JournalFile(path, fd, mapping)

    def rotate(self) -> JournalFile | None:
        """Stop writing to the current file and return it; the next write moves on.

        The caller closes the returned file once it no longer needs it
        mapped (the committer does, off the caller's path).
        """
        done = self._file
        if done is not None:
            used = self.size
            self._next_room = min(
                MAX_INITIAL_ROOM, max(INITIAL_ROOM, _round_up(used + used // 4))
            )
        self._file, self._map = None, None
        self._room = self.size = 0
        return done

    def close(self) -> None:
        """Close the open file, keeping it on disk; delete the unused spare."""
        done = self.rotate()
        if done is not None:
            done.close()
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()
            with contextlib.suppress(OSError):
                spare.path.unlink()

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


def _round_up(size: int) -> int:
    return -(-size // _ROOM_STEP) * _ROOM_STEP


def _append_zeros(fd: int, count: int) -> None:
    """Reserve ``count`` more bytes at the end of a file, or raise OSError."""
    zeros = memoryview(bytes(count))
    done = 0
    while done < count:
        more = os.write(fd, zeros[done:])
        if more <= 0:
            # A regular file writes whole unless space runs out.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += more


def read_records(path: Path) -> Iterator[Record]:
    """The well-formed records of one journal file, stopping at a damaged one.

    A damaged record can only be the last one written to a file (see the
    module docstring), and log() never returned for it.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data.startswith(MAGIC):
        yield from _framed_records(path, data)
    elif data:
        yield from _bare_records(path, data)


def _framed_records(path: Path, data: bytes) -> Iterator[Record]:
    view = memoryview(data)
    pos, count, size = len(MAGIC), 0, len(data)
    problem = ""
    while pos + _FRAME.size <= size:
        length, crc = _FRAME.unpack_from(data, pos)
        if length == 0:
            break
        end = pos + _FRAME.size + length
        if end > size or zlib.crc32(view[pos + _FRAME.size : end]) != crc:
            problem = "a record fails its checksum"
            break
        try:
            item = msgpack.unpackb(
                view[pos + _FRAME.size : end], raw=False, strict_map_key=True
            )
            record = _record(item)
        except (ValueError, msgpack.UnpackException) as exc:
            problem = str(exc)
            break
        count += 1
        pos = end
        yield record
    if not problem and data.count(0, pos) != size - pos:
        problem = "bytes past the last record"
    if problem:
        _warn_damaged(path, count, problem)


def _bare_records(path: Path, data: bytes) -> Iterator[Record]:
    # gitruns 0.1 wrote records back to back, with no frame.
    count = end = 0
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=_MAX_RECORD
    )
    unpacker.feed(data)
    try:
        for item in unpacker:
            record = _record(item)
            count += 1
            # Where this record ends; at the end, tell() may count a cut one.
            end = unpacker.tell()
            yield record
        if end < len(data):
            raise ValueError(f"{len(data) - end} bytes of a cut record")
    except (ValueError, msgpack.UnpackException) as exc:
        _warn_damaged(path, count, str(exc))


def _warn_damaged(path: Path, count: int, problem: str) -> None:
    logger.warning(
        "journal %s: stopped after %d records at a damaged one (%s); it was "
        "never acknowledged to the caller",
        path,
        count,
        problem,
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
