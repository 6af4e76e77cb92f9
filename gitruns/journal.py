"""What is logged but not yet committed: a memory-mapped journal, and run locks.

Each accepted log() call is one record copied into a journal file mapped into
memory before log() returns. A mapped file is the kernel's page cache itself,
so the record is the kernel's the moment the copy ends: a killed process
loses nothing it accepted, and log() makes no system call (and never lets go
of the GIL) to get there.

A file starts with :data:`MAGIC` and holds frames ``<length> <crc32>
<payload>`` (little-endian u32 each). A payload is one of:

- a *row*, for the rows of a training loop: a byte 0xC1 (a byte msgpack never
  uses), the kind :data:`ROW`, the id of the file's *schema* that names the
  row's keys and value types, then the step, the time and the values as
  fixed-width little-endian numbers. Rows of one schema all have the same
  length, so a reader turns a run of them into columns with a few numpy
  operations, never a loop over values;
- a *schema*: 0xC1, :data:`SCHEMA`, then msgpack ``[id, keys, codes]``, written
  before the first row that uses it (ids count from 0 in each file);
- a *record*: msgpack ``[step, time, row]`` for any other row (text, None, a
  value too large for a row), and ``[nil, time, {"json": ..., "extra": ...}]``
  for run metadata (config, name, summary overrides, saved files);
- the *end* of the file: 0xC1, :data:`END`, written when the writer moves on
  to the next file.

Room for frames is reserved ahead by writing zeros, so that the file system
has set the blocks aside before a record is copied into the mapping: there it
could not report a full disk, only kill the process with SIGBUS. (Zeros rather
than ``posix_fallocate``: the pages are then in the page cache already, and
the first write into a page of an allocated but unwritten extent can wait a
millisecond on the file system's own journal.) The room past the last frame
stays zero: a zero length ends the frame list. A payload is copied before its
frame header, so a process killed half-way through a copy leaves a zero
header, and a payload torn by a power loss fails its checksum: either way the
damage can only be at the end of what was written, and log() never returned
for it. Damage inside what was written (failing storage, a hand edit) is
skipped to the next whole frame with a warning; the rows it held are lost.

``fsync="always"`` syncs the pages of every record before log() returns.

A file grows four times its room each time, into room a thread makes ahead
(:class:`_Ahead`), up to :data:`MAX_ROOM`; past that the writer ends it and
goes on in a new one. Files are deleted by whoever commits their rows, once
the run's branch holds every row of a file the writer has left (see
:class:`JournalReader`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import mmap
import os
import queue
import socket
import stat
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import numpy as np

from gitruns.errors import RepositoryError, RunLockedError, os_error_fix

logger = logging.getLogger(__name__)

SUFFIX = ".jnl"

#: The first bytes of a journal file.
MAGIC = b"gitrunJ2"
#: The first bytes of a journal of framed records only (no rows, no schemas),
#: which earlier gitruns wrote; still read.
OLD_MAGIC = b"gitrunsJ"

#: A frame header: the payload's length and its CRC-32.
_FRAME = struct.Struct("<II")
# Bound once for the hot path.
_pack_frame = _FRAME.pack_into
_crc32 = zlib.crc32

#: The first byte of the payloads that are not msgpack records; msgpack
#: never uses it, so a reader tells the two apart by one byte.
TAG = 0xC1
#: The second byte of such payloads: what they hold.
SCHEMA, ROW, END = 1, 2, 3
_END_PAYLOAD = bytes([TAG, END])
#: Room kept free in every file for the frame that ends it.
_END_ROOM = _FRAME.size + len(_END_PAYLOAD)

#: A row's fixed head: tag, kind, two pad bytes, schema id, step, time.
_ROW_HEAD = "<BB2xIqd"
_ROW_HEAD_SIZE = struct.calcsize(_ROW_HEAD)
#: Where, in a frame, the payload's kind and a row's schema id are.
_KIND_AT = _FRAME.size + 1
_SCHEMA_AT = _FRAME.size + 4

#: How each value type a row may hold is stored: float64, int64 or bool.
#: numpy's scalars go the same way, as values.to_value turns them into the
#: plain kind (a float32 widened exactly).
_CODES: dict[type, str] = {
    float: "d",
    int: "q",
    bool: "?",
    np.float64: "d",
    np.float32: "d",
    np.float16: "d",
    np.int64: "q",
    np.int32: "q",
    np.int16: "q",
    np.int8: "q",
    np.uint32: "q",
    np.uint16: "q",
    np.uint8: "q",
    np.bool_: "?",
}
_DTYPES = {"d": "<f8", "q": "<i8", "?": "?"}

#: Schemas one file may declare; rows beyond them are written as records.
MAX_SCHEMAS = 1024

#: Room reserved for a new file (at most an eighth of the free space); a file
#: grows fourfold each time it fills, into room made ahead.
INITIAL_ROOM = 1 << 20
_GROWTH = 4
#: The room past which a file is ended and the next one started.
MAX_ROOM = 64 << 20
_ROOM_STEP = 64 * 1024

#: msgpack's buffer bound when reading records; a record is one log() call.
_MAX_RECORD = 2**30

#: Bytes a reader takes from a file at a time: at first, and at most. It reads
#: twice what the last read found, so that the zero room past the last frame
#: (megabytes of it) is not copied at every look.
_FIRST_READ = 64 * 1024
_READ_BYTES = 8 << 20

_PAGE_MASK = ~(mmap.PAGESIZE - 1)


@dataclass(frozen=True, slots=True)
class Record:
    """One journaled call: a row of metrics, or run metadata when step is None.

    Attributes:
        step: the row's step; None for metadata.
        when: its time stamp, seconds since the epoch.
        data: the row, or the metadata.
        size: the journal bytes its frame took (0 where not read from a file).
    """

    step: int | None
    when: float
    data: dict[str, Any]
    size: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Schema:
    """The keys and value types of the rows a file stores as fixed-width rows.

    Attributes:
        id: the schema's number in its file.
        keys: the metric names, in the order of the values.
        codes: one struct code per value: ``d`` float64, ``q`` int64, ``?`` bool.
    """

    id: int
    keys: tuple[str, ...]
    codes: str

    @property
    def size(self) -> int:
        """Bytes of one row's payload."""
        return _ROW_HEAD_SIZE + struct.calcsize("<" + self.codes)

    def packer(self) -> struct.Struct:
        """The struct that lays out one row's payload."""
        return struct.Struct(_ROW_HEAD + self.codes)

    @cached_property
    def frames(self) -> np.dtype[Any]:
        """A numpy view of one whole frame holding a row of this schema."""
        fields = [
            ("length", "<u4"),
            ("crc", "<u4"),
            ("tag", "u1"),
            ("kind", "u1"),
            ("pad", "<u2"),
            ("schema", "<u4"),
            ("step", "<i8"),
            ("time", "<f8"),
        ]
        fields += [(f"v{i}", _DTYPES[code]) for i, code in enumerate(self.codes)]
        return np.dtype(fields)


@dataclass(frozen=True)
class Rows:
    """Consecutive rows of one schema, read from a journal as columns.

    Attributes:
        schema: the rows' keys and value types.
        steps: their steps (int64), in journal order.
        times: their times (float64).
        columns: one array per key of the schema, in its order.
        size: the journal bytes the rows took.
    """

    schema: Schema
    steps: np.ndarray[Any, np.dtype[np.int64]]
    times: np.ndarray[Any, np.dtype[np.float64]]
    columns: list[np.ndarray[Any, Any]]
    size: int

    def __len__(self) -> int:
        return len(self.steps)

    def upto(self, count: int) -> Rows:
        """The first ``count`` rows."""
        per_row = self.size // max(1, len(self.steps))
        return Rows(
            self.schema,
            self.steps[:count],
            self.times[:count],
            [c[:count] for c in self.columns],
            per_row * count,
        )

    def after(self, count: int) -> Rows:
        """The rows after the first ``count``."""
        per_row = self.size // max(1, len(self.steps))
        return Rows(
            self.schema,
            self.steps[count:],
            self.times[count:],
            [c[count:] for c in self.columns],
            self.size - per_row * count,
        )

    def records(self) -> Iterator[Record]:
        """The rows one by one, as records (for tools and tests, not speed)."""
        keys = self.schema.keys
        columns = [c.tolist() for c in self.columns]
        size = self.size // max(1, len(self.steps))
        for i, (step, when) in enumerate(
            zip(self.steps.tolist(), self.times.tolist(), strict=True)
        ):
            row = {k: col[i] for k, col in zip(keys, columns, strict=True)}
            yield Record(step, when, row, size)


#: What a journal holds, in order: runs of rows and single records.
Item = Rows | Record


class JournalFile:
    """One open journal file: its path, descriptor and mapping."""

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
    """The journal files a writer appends to, in a folder of their own.

    Args:
        folder: the run's journal folder; created with the first file.
        fsync: sync every record (and the folder when a file is created),
            so that what log() accepted also survives a power loss.
    """

    def __init__(self, folder: Path, *, fsync: bool = False) -> None:
        self.folder = folder
        self.fsync = fsync
        # Past every name taken, by a regular file or not.
        taken = [int(p.stem) for p in _journal_names(folder)]
        self._seq = max(taken) + 1 if taken else 0
        #: The number of the first file this journal writes.
        self.first_seq = self._seq
        #: Bytes used in the current file (its magic and frames).
        self.size = 0
        # Bytes of the files this journal finished.
        self._finished = 0
        self._file: JournalFile | None = None
        self._map: mmap.mmap | None = None
        self._room = 0
        #: Past this many bytes, write_row asks _make_room first: the room's
        #: end, or its middle while the next room is still to be asked for.
        self._limit = 0
        # The next room is asked for once the current one is half full.
        self._half_way = False
        self._ahead = _Ahead()
        self._last: _RowPacker | None = None
        # (keys, value types) -> how to pack the rows of this file with them.
        self._schemas: dict[tuple[tuple[str, ...], tuple[type, ...]], _RowPacker] = {}
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)

    def files(self) -> list[Path]:
        """The journal files present, oldest first."""
        return journal_files(self.folder)

    @property
    def current(self) -> Path | None:
        """The file being appended to, if one is open."""
        return None if self._file is None else self._file.path

    @property
    def written(self) -> int:
        """Bytes this journal has written, in every file."""
        return self._finished + self.size

    # -- writing --------------------------------------------------------------

    def open(self) -> None:
        """Create the first file now, so that the first log() need not.

        Raises:
            RepositoryError: if the file cannot be created (see :meth:`write`).
        """
        if self._map is None:
            self._start()
        self._ahead.start()

    def write_row(self, step: int, when: float, row: dict[str, Any]) -> int:
        """Append ``row`` as a fixed-width row if its schema is known; else 0.

        The hot path: a row whose keys and value types (in order) are those
        of a schema this file declared is stored without any other check.
        Rows are declared by :meth:`declare`, after the caller validated one.

        Returns:
            The bytes written, or 0 when the row must go another way (a new
            schema, or an int that int64 cannot hold).

        Raises:
            RepositoryError: as :meth:`write`.
        """
        values = row.values()
        keys = tuple(row)
        kinds = tuple(map(type, values))
        found = self._last
        # Most rows are like the row before: two tuple comparisons, no hash.
        if found is None or keys != found.keys or kinds != found.kinds:
            found = self._schemas.get((keys, kinds))
            if found is None:
                return 0
            self._last = found
        start = self.size
        end = start + found.frame_size
        if end > self._limit:
            self._make_room(found.frame_size)
            found = self._schemas.get((keys, kinds))
            if found is None:
                return 0  # a new file, which declares its own schemas
            start = self.size
            end = start + found.frame_size
        try:
            payload = found.pack(TAG, ROW, found.schema_id, step, when, *values)
        except struct.error:
            return 0  # an int beyond int64: the caller's checks say so
        # As in _append: the payload first, its header last.
        mapping = self._map
        mapping[start + _FRAME.size : end] = payload  # type: ignore[index]
        crc = _crc32(payload)
        _pack_frame(mapping, start, found.payload_size, crc)  # type: ignore[arg-type]
        self.size = end
        if self.fsync:
            self._sync(start, end)
        return end - start

    def declare(self, row: dict[str, Any]) -> bool:
        """Declare the schema of a validated row, so that rows like it are fast.

        Returns:
            Whether rows with these keys and value types are now written as
            fixed-width rows (not when a value has no fixed width, or the file
            holds :data:`MAX_SCHEMAS` schemas already).
        """
        kinds = tuple(map(type, row.values()))
        codes = [_CODES.get(kind, "") for kind in kinds]
        if not row or "" in codes or len(self._schemas) >= MAX_SCHEMAS:
            return False
        keys = tuple(row)
        body = self._packer.pack([len(self._schemas), list(keys), "".join(codes)])
        # Room first: a new file would number its schemas from 0 again.
        self._make_room(_FRAME.size + 2 + len(body) + _ROW_HEAD_SIZE + 8 * len(row))
        schema = Schema(len(self._schemas), keys, "".join(codes))
        body = self._packer.pack([schema.id, list(keys), schema.codes])
        self._append(bytes([TAG, SCHEMA]) + body)
        self._schemas[(keys, kinds)] = _RowPacker(schema, kinds)
        return True

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

    def write(self, payload: bytes) -> None:
        """Append one payload; it is in the kernel's page cache when this returns.

        Raises:
            RepositoryError: if the file could not be created or grown (disk
                full, read-only file system); nothing was written then.
        """
        self._make_room(_FRAME.size + len(payload))
        self._append(payload)

    def _append(self, payload: bytes) -> None:
        """Copy one frame into room already made for it."""
        mapping = self._map
        assert mapping is not None
        start = self.size
        end = start + _FRAME.size + len(payload)
        # The payload first, then its header: a copy cut short by a kill
        # leaves a zero header, which ends the file before the cut payload.
        mapping[start + _FRAME.size : end] = payload
        _FRAME.pack_into(mapping, start, len(payload), zlib.crc32(payload))
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

    def _make_room(self, frame: int) -> None:
        """Make room for a frame of ``frame`` bytes: grow, or start the next file.

        Past half its room, a file has its next room made ahead, by the
        journal's helper thread (see :class:`_Ahead`); when the room runs out
        the writer takes that mapping in place of its own, which costs it no
        system call. Only if the helper has not finished (or failed) does the
        writer grow the file itself.

        Raises:
            RepositoryError: as :meth:`write`.
        """
        if self._map is None:
            self._start(frame)
            return
        if self.size + frame <= self._limit:
            return
        if self._half_way:
            self._half_way = False
            self._limit = self._room - _END_ROOM
            if self.size + frame <= self._limit:
                self._grow_ahead()
                return
            # Past the end too: this writer grows the file, and alone.
        need = self.size + frame + _END_ROOM
        assert self._file is not None
        full = _round_up(max(need, _GROWTH * self._room)) > MAX_ROOM
        if full and self.size > len(MAGIC):
            # Full: end this file and go on in the next (a reader follows).
            self._end_file()
            self._start(frame)
            return
        room = self._grown_room(need)
        made = self._ahead.take(self._file)
        if made is not None and not need <= made[0] <= _file_size(self._file.fd):
            # Too small, or made before this writer grew the file itself
            # (its mapping may reach past the end of the file, where a read
            # or write would kill the process with SIGBUS).
            _unmap(made[1])
            made = None
        if made is not None:
            old, (room, mapping) = self._map, made
            self._file.map = self._map = mapping
            self._room = room
            self._ahead.switched(old, self._file, None)  # unmaps the old one
        else:
            try:
                _append_zeros(self._file.fd, room - self._room)
                self._map.resize(room)
            except OSError as exc:
                raise RepositoryError(
                    f"journal {self._file.path} could not grow ({exc}); this "
                    "log() call was not recorded, what was accepted before it "
                    "is kept. " + _fix_for(exc)
                ) from exc
            if self.fsync:
                os.fsync(self._file.fd)
            self._room = room
        self._set_limit(need)

    def _set_limit(self, need: int) -> None:
        """Where write_row next calls _make_room, in a room of ``self._room``.

        At its middle while the next room is still to be made, so that a short
        run never has megabytes of zeros written for it, on the core its
        training loop shares; else at its end, and the next room is asked of
        the journal's thread now.
        """
        end = self._room - _END_ROOM
        middle = self._room // 2
        self._half_way = self._next_room() is not None and need <= middle
        self._limit = middle if self._half_way else end
        if not self._half_way:
            self._grow_ahead()

    def _next_room(self) -> int | None:
        # The room after this one, or None past the largest.
        if _round_up(_GROWTH * self._room) > MAX_ROOM:
            return None
        return self._grown_room(self._room + _ROOM_STEP)

    def _grown_room(self, need: int) -> int:
        """The room to grow to, holding ``need`` bytes: fourfold, but by at
        most a quarter of the free space, so that a journal never fills a disk.
        """
        try:
            disk = os.statvfs(self.folder)
            free = disk.f_bavail * disk.f_frsize
        except OSError:
            free = MAX_ROOM
        grown = min(_GROWTH * self._room, self._room + free // 4)
        return _round_up(max(need, grown))

    def _grow_ahead(self) -> None:
        # The next room, made while this one fills.
        ahead = self._next_room()
        if self._file is not None and ahead is not None:
            self._ahead.switched(None, self._file, ahead)

    def _end_file(self) -> None:
        assert self._map is not None
        start = self.size
        self._map[start + _FRAME.size : start + _END_ROOM] = _END_PAYLOAD
        _FRAME.pack_into(self._map, start, len(_END_PAYLOAD), zlib.crc32(_END_PAYLOAD))
        self.size = start + _END_ROOM
        if self.fsync:
            self._sync(start, self.size)
        self._close_file()

    def _start(self, frame: int = 0) -> None:
        """Create and map the next file, with room for a frame of ``frame`` bytes."""
        room = _round_up(max(self._first_room(), len(MAGIC) + frame + _END_ROOM))
        opened = self._create(self._seq, room)
        self._seq += 1
        self._file, self._map = opened, opened.map
        self._room, self.size = room, len(MAGIC)
        self._set_limit(self.size + frame + _END_ROOM)
        self._schemas = {}
        self._last = None

    def _first_room(self) -> int:
        """A new file's room: :data:`INITIAL_ROOM`, or an eighth of the free space."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            disk = os.statvfs(self.folder)
        except OSError:
            return INITIAL_ROOM
        return max(_ROOM_STEP, min(INITIAL_ROOM, disk.f_bavail * disk.f_frsize // 8))

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

    def _close_file(self) -> None:
        done, self._file, self._map = self._file, None, None
        empty = self.size <= len(MAGIC)
        self._finished += self.size
        self._room = self.size = self._limit = 0
        if done is not None:
            self._ahead.forget(done)
            done.close()
            if empty:  # no frame: nothing for a reader, so no file to leave
                with contextlib.suppress(FileNotFoundError):
                    done.path.unlink()

    def close(self) -> None:
        """Close the open file, keeping it on disk for whoever commits it.

        A file that holds no frame is deleted.
        """
        self._close_file()
        self._ahead.stop()

    @staticmethod
    def retire(paths: list[Path]) -> None:
        """Delete journal files whose rows are committed."""
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def replay(self, paths: list[Path] | None = None) -> Iterator[Record]:
        """Every record of the given files (default: all), rows included, in order."""
        for path in self.files() if paths is None else paths:
            yield from read_records(path)


class _Ahead:
    """A thread that makes a journal file's next room before the writer needs it.

    Growing a file means writing megabytes of zeros and mapping the file again:
    milliseconds that log() would wait, more on a busy disk. As soon as a file
    has its room, the thread appends the next room's zeros (four times as
    much) through a descriptor of its own and maps the file at that size;
    when the room runs out, the writer switches to that mapping (both map
    the same pages) and leaves the old one for the thread to unmap. The
    thread holds the GIL only between those system calls. It is started with
    the journal (starting a thread waits for it) and stopped with it, without
    waiting: what it was making is then thrown away.
    """

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # What the thread made: file path -> (room, mapping).
        self._made: dict[Path, tuple[int, mmap.mmap]] = {}
        self._lock = threading.Lock()

    def switched(
        self, old: mmap.mmap | None, file: JournalFile, room: int | None
    ) -> None:
        """Unmap ``old`` (if any), and have ``file`` grown to ``room`` and mapped.

        Args:
            old: a mapping the writer no longer uses.
            file: the file being written.
            room: the size to make ready next; None for none.
        """
        # A descriptor of the thread's own: the writer may close its own
        # (and the number be reused) while the thread still writes zeros.
        fd = os.dup(file.fd) if room is not None else -1
        self.start()
        self._tasks.put(_Task(old, file.path, fd, room))

    def take(self, file: JournalFile) -> tuple[int, mmap.mmap] | None:
        """The room made for ``file``, if it is ready."""
        with self._lock:
            return self._made.pop(file.path, None)

    def forget(self, file: JournalFile) -> None:
        """The writer is done with ``file``: drop any room made for it."""
        made = self.take(file)
        if made is not None:
            _unmap(made[1])

    def start(self) -> None:
        """Start the thread now (starting it waits for it, a pause log() avoids)."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(
                target=self._work, name="gitruns-journal", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Let the thread end; what it is making is thrown away."""
        if self._thread is not None:
            self._stopping = True
            self._tasks.put(None)
            self._thread = None

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            if task.old is not None:
                _unmap(task.old)
            if task.fd < 0:
                continue
            try:
                mapping = self._make(task)
            except (OSError, ValueError) as exc:
                # The writer grows the file itself, and reports what fails.
                logger.debug("journal %s: no room made ahead: %s", task.path, exc)
                continue
            finally:
                os.close(task.fd)
            if mapping is None:
                continue
            with self._lock:
                if self._stopping:
                    _unmap(mapping)
                else:
                    self._made[task.path] = (task.room or 0, mapping)

    def _make(self, task: _Task) -> mmap.mmap | None:
        room = task.room or 0
        size = os.fstat(task.fd).st_size
        while size < room:
            if self._stopping:
                return None
            size += _append_zeros(task.fd, min(room - size, _ZEROS_AT_ONCE))
        return mmap.mmap(task.fd, room)


class _Task(NamedTuple):
    """What the journal's thread is asked to do."""

    old: mmap.mmap | None  # to unmap
    path: Path  # the file to grow
    fd: int  # the thread's own descriptor of it (-1: nothing to grow)
    room: int | None  # the size to grow it to


def _unmap(mapping: mmap.mmap) -> None:
    with contextlib.suppress(OSError, ValueError, BufferError):
        mapping.close()


class _RowPacker:
    """Packs the rows of one schema (the hot path's only object)."""

    __slots__ = ("pack", "schema_id", "payload_size", "frame_size", "keys", "kinds")

    pack: Any
    schema_id: int
    payload_size: int
    frame_size: int
    keys: tuple[str, ...]
    kinds: tuple[type, ...]

    def __init__(self, schema: Schema, kinds: tuple[type, ...]) -> None:
        self.pack = schema.packer().pack
        self.schema_id = schema.id
        self.payload_size = schema.size
        self.frame_size = _FRAME.size + schema.size
        self.keys = schema.keys
        self.kinds = kinds


def journal_files(folder: Path) -> list[Path]:
    """The journal files in ``folder``, oldest first.

    Only regular files count: a FIFO, device or link under a journal's name
    was put there by something else, and reading it could hang.
    """
    found = []
    for path in _journal_names(folder):
        try:
            regular = stat.S_ISREG(path.lstat().st_mode)
        except FileNotFoundError:
            continue
        if regular:
            found.append(path)
        elif path not in _WARNED:
            _WARNED.add(path)
            logger.warning(
                "journal %s is not a regular file and is left alone; remove it", path
            )
    return sorted(found)


#: Journal names that are not regular files, warned about once.
_WARNED: set[Path] = set()


def _journal_names(folder: Path) -> list[Path]:
    """Every entry of ``folder`` named as a journal file."""
    if not folder.is_dir():
        return []
    return [p for p in folder.glob("*" + SUFFIX) if p.stem.isdigit()]


def _open_journal_file(path: Path) -> int:
    """A descriptor reading the regular file ``path``, never following a link.

    Raises:
        FileNotFoundError: if ``path`` is gone or is no longer a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link put in its place
            raise FileNotFoundError(
                errno.ENOENT, "not a regular file", str(path)
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
    return fd


def _file_size(fd: int) -> int:
    # 0 when it cannot be known: a room made ahead is then not taken (it
    # could reach past the end of the file), and the writer grows the file.
    try:
        return os.fstat(fd).st_size
    except OSError:
        return 0


def _round_up(size: int) -> int:
    return -(-size // _ROOM_STEP) * _ROOM_STEP


#: A buffer of zeros, written as many times as a file grows by.
_ZEROS = 1 << 20
_ZERO_BYTES = memoryview(bytes(_ZEROS))
#: The most zeros one system call writes (the journal thread checks between
#: calls whether it was stopped).
_ZEROS_AT_ONCE = 16 << 20


def _append_zeros(fd: int, count: int) -> int:
    """Reserve ``count`` more bytes at the end of a file, or raise OSError.

    One ``writev`` of the same zeros many times over: the journal's thread
    gets the GIL back after every system call only when the training loop
    lets go of it (every 5 ms, by default), so a write per megabyte would
    take it longer than the room it makes lasts.

    Returns:
        ``count``.
    """
    done = 0
    while done < count:
        left = min(count - done, _ZEROS_AT_ONCE)
        whole, rest = divmod(left, _ZEROS)
        parts = [_ZERO_BYTES] * whole + ([_ZERO_BYTES[:rest]] if rest else [])
        more = os.writev(fd, parts)
        if more <= 0:
            # A regular file writes whole unless space runs out.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += more
    return done


# -- reading -------------------------------------------------------------------


#: What a reader finds past the last frame after a kill mid-copy.
_TORN = "bytes past the last record"


class _Parse(NamedTuple):
    """What reading the frames of a buffer found."""

    items: list[Item]
    end: int  # where reading stopped
    ended: bool  # an end frame: the writer went on to the next file
    problem: str  # why reading stopped at damage ("" if it did not)
    short: int = 0  # the bytes the frame at ``end`` needs, where the buffer ends first


def _parse_frames(
    data: bytes,
    pos: int,
    schemas: dict[int, Schema],
    *,
    final: bool,
    verify: bool = True,
) -> _Parse:
    """Read the frames of ``data`` from ``pos`` into items.

    Reading stops at a zero header (the end of what was written), at a frame
    that runs past ``data`` (the rest is read later), at an end frame, and at
    a damaged frame. While the writer may still be writing (``final`` false),
    a frame that fails its checksum, or a row of a schema not seen yet, is
    taken for a frame being written, and read again next time. Without
    ``verify`` (frames this process wrote itself and never left) the
    checksums of rows are not computed.
    """
    items: list[Item] = []
    size = len(data)
    view = memoryview(data)
    while True:
        if pos + _FRAME.size > size:
            return _Parse(items, pos, False, "", _FRAME.size)
        length, crc = _FRAME.unpack_from(data, pos)
        if length == 0:
            break
        if length > _MAX_RECORD:
            return _Parse(items, pos, False, "a frame longer than any record")
        end = pos + _FRAME.size + length
        if end > size:
            return _Parse(items, pos, False, "", _FRAME.size + length)
        head = data[pos + _FRAME.size]
        if head == TAG and length >= _ROW_HEAD_SIZE and data[pos + _KIND_AT] == ROW:
            rows, used, problem = _read_rows(data, pos, length, schemas, verify)
            if rows is not None:
                items.append(rows)
            pos += used
            if problem:
                return _Parse(items, pos, False, problem if final else "")
            continue
        payload = view[pos + _FRAME.size : end]
        if zlib.crc32(payload) != crc:
            damage = "a record fails its checksum" if final else ""
            return _Parse(items, pos, False, damage)
        if head != TAG:
            try:
                item = msgpack.unpackb(payload, raw=False, strict_map_key=True)
                items.append(_record(item, end - pos))
            except (ValueError, msgpack.UnpackException) as exc:
                return _Parse(items, pos, False, str(exc) or type(exc).__name__)
        elif length >= 2 and payload[1] == END:
            return _Parse(items, end, True, "")
        elif length >= 2 and payload[1] == SCHEMA:
            try:
                schema = _schema_from(bytes(payload[2:]))
            except (ValueError, msgpack.UnpackException) as exc:
                return _Parse(items, pos, False, str(exc) or "a malformed schema")
            schemas[schema.id] = schema
        else:
            return _Parse(items, pos, False, "a frame of an unknown kind")
        pos = end
    return _Parse(items, pos, False, "")


def _read_rows(
    data: bytes, pos: int, length: int, schemas: dict[int, Schema], verify: bool
) -> tuple[Rows | None, int, str]:
    """The run of rows of one schema that starts at ``pos``.

    Returns:
        The rows (None if none could be read), the bytes they took, and why
        reading stops after them ("" if it may go on).
    """
    (schema_id,) = struct.unpack_from("<I", data, pos + _SCHEMA_AT)
    schema = schemas.get(schema_id)
    if schema is None or schema.size != length:
        return None, 0, f"a row of an undeclared schema ({schema_id})"
    stride = _FRAME.size + length
    available = (len(data) - pos) // stride

    # numpy's fixed costs pay for a run of rows, not for one: look at the next
    # frame's head first (length, tag, kind and schema: all but the CRC),
    # then take runs in growing batches so a short run costs little.
    count = 1
    if available > 1 and _same_head(data, pos, pos + stride):
        batch = 64
        while True:
            count = min(available, batch)
            frames = np.frombuffer(data, dtype=schema.frames, count=count, offset=pos)
            same = (
                (frames["length"] == length)
                & (frames["tag"] == TAG)
                & (frames["kind"] == ROW)
                & (frames["schema"] == schema_id)
            )
            if not same.all():
                count = int(np.argmin(same))
                break
            if count == available:
                break
            batch *= 8
    frames = np.frombuffer(data, dtype=schema.frames, count=count, offset=pos)
    problem = ""
    bad: Any = ()
    if verify:
        view = memoryview(data)
        crcs = np.fromiter(
            [
                _crc32(view[at : at + length])
                for at in range(pos + _FRAME.size, pos + count * stride, stride)
            ],
            dtype=np.uint32,
            count=count,
        )
        bad = np.flatnonzero(crcs != frames["crc"])
    if len(bad):
        count = int(bad[0])
        frames = frames[:count]
        problem = "a record fails its checksum"
    if not count:
        return None, 0, problem
    rows = Rows(
        schema,
        frames["step"],
        frames["time"],
        [frames[f"v{i}"] for i in range(len(schema.keys))],
        count * stride,
    )
    return rows, count * stride, problem


def _same_head(data: bytes, a: int, b: int) -> bool:
    # Two frames' lengths, tags, kinds, pads and schema ids (not their CRCs).
    return (
        data[a : a + 4] == data[b : b + 4]
        and data[a + 8 : a + 16] == data[b + 8 : b + 16]
    )


def _schema_from(data: bytes) -> Schema:
    item = msgpack.unpackb(data, raw=False)
    if not (
        isinstance(item, list)
        and len(item) == 3
        and type(item[0]) is int
        and 0 <= item[0] < MAX_SCHEMAS
        and isinstance(item[1], list)
        and all(type(k) is str for k in item[1])
        and len(set(item[1])) == len(item[1])
        and type(item[2]) is str
        and len(item[2]) == len(item[1])
        and set(item[2]) <= set(_DTYPES)
    ):
        raise ValueError("a malformed schema")
    return Schema(item[0], tuple(item[1]), item[2])


def _count(items: list[Item]) -> int:
    return sum(len(i) if isinstance(i, Rows) else 1 for i in items)


@dataclass(frozen=True, slots=True)
class ReaderMark:
    """A :class:`JournalReader`'s place (see :meth:`JournalReader.mark`).

    Attributes:
        done: how many files the reader had finished.
        path: the file it was reading, if any.
        pos: where in that file it was.
        records: the records it had read from that file.
        schemas: the schemas that file had declared so far.
        read_size: how many bytes its next read takes.
        verify: whether it checks the checksums of that file's rows.
    """

    done: int
    path: Path | None
    pos: int
    records: int
    schemas: dict[int, Schema]
    read_size: int
    verify: bool


class JournalReader:
    """Reads a run's journal as its writer appends to it, item by item.

    The reader keeps its place: each :meth:`read` returns what was written
    since the last one. It moves on to the next file where the writer ended
    one (or left one without an end, a writer killed before a new one
    started), and with ``final`` (the writer is gone) reads every file to its
    end, skips damage inside a file and reports damage at its end.

    Args:
        folder: the run's journal folder.
        trusted_from: files numbered from this on were written by this very
            process, whose mapped pages cannot be torn: their rows are read
            without computing checksums. None trusts no file.
    """

    def __init__(self, folder: Path, trusted_from: int | None = None) -> None:
        self.folder = folder
        self.trusted_from = trusted_from
        #: Files read to their end, whose rows the caller may commit and then
        #: retire; the file being read is not among them.
        self.done: list[Path] = []
        self._path: Path | None = None
        self._fd = -1
        self._pos = 0
        self._records = 0
        self._schemas: dict[int, Schema] = {}
        self._read_size = _FIRST_READ
        self._verify = True

    def close(self) -> None:
        """Close the file being read."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def mark(self) -> ReaderMark:
        """Where the reader is, for :meth:`rewind` to come back to."""
        return ReaderMark(
            len(self.done),
            self._path,
            self._pos,
            self._records,
            dict(self._schemas),
            self._read_size,
            self._verify,
        )

    def rewind(self, mark: ReaderMark) -> None:
        """Go back to ``mark``: the next read returns again what was read since.

        A caller whose handling of what it read was cut short (Ctrl-C, an
        exception) rewinds, so nothing read is lost.
        """
        del self.done[mark.done :]
        if self._path != mark.path:
            self.close()
            self._path = mark.path
            if mark.path is not None:
                try:
                    self._fd = _open_journal_file(mark.path)
                except FileNotFoundError:
                    self._path = None
        self._pos, self._records = mark.pos, mark.records
        self._schemas = dict(mark.schemas)
        self._read_size, self._verify = mark.read_size, mark.verify

    def files(self) -> list[Path]:
        """Every file present that the reader has not finished, oldest first."""
        done = set(self.done)
        return [p for p in journal_files(self.folder) if p not in done]

    def read(self, *, final: bool = False) -> list[Item]:
        """The items written since the last call.

        Args:
            final: the writer is done (finished, or dead): read every file to
                its end, skip damage inside a file (with a warning), report
                damage at its end, and count every file as done.
        """
        items: list[Item] = []
        while self._path is not None or self._next_file():
            parse = self._read_file(final)
            items += parse.items
            finished = parse.ended or final or bool(parse.problem)
            if not finished and self._newer_exists():
                # Left without an end frame by a writer that is gone.
                again = self._read_file(True)
                items += again.items
                parse, finished = again, True
            if parse.problem:
                _warn_damaged(self._path, self._records, parse.problem)
            if not finished:
                break
            assert self._path is not None
            self.done.append(self._path)
            self.close()
            self._path = None
        return items

    def _next_file(self) -> bool:
        for path in self.files():
            try:
                self._fd = _open_journal_file(path)
            except FileNotFoundError:
                continue
            self._path, self._schemas, self._records = path, {}, 0
            self._read_size = _FIRST_READ
            trusted = self.trusted_from
            self._verify = trusted is None or int(path.stem) < trusted
            head = os.pread(self._fd, len(MAGIC), 0)
            self._pos = len(MAGIC) if head in (MAGIC, OLD_MAGIC) else -1
            return True
        return False

    def _newer_exists(self) -> bool:
        assert self._path is not None
        return any(p > self._path for p in journal_files(self.folder))

    def _read_file(self, final: bool) -> _Parse:
        assert self._path is not None
        if self._pos < 0:
            # Bare records (the first journal layout, with no frames): a
            # crashed writer's, read whole once.
            records: list[Item] = list(_bare_records(self._path, self._read_all()))
            return _Parse(records, 0, True, "")
        items: list[Item] = []
        found = 0
        size = self._read_size
        while True:
            data = os.pread(self._fd, size, self._pos)
            parse = _parse_frames(
                data, 0, self._schemas, final=final, verify=self._verify
            )
            items += parse.items
            self._records += _count(parse.items)
            self._pos += parse.end
            found += parse.end
            if parse.short and len(data) == size:
                # The buffer ended before a frame did: read on, from it.
                size = min(_READ_BYTES, 2 * size) if parse.end else 0
                size = max(size, parse.short)
                continue
            self._read_size = max(_FIRST_READ, min(_READ_BYTES, 2 * found))
            problem = parse.problem
            if final and not problem and not parse.ended:
                # Bytes past the last frame: a torn tail, or a zeroed header
                # or a length past the end inside what was written.
                problem = self._torn_tail()
            if final and problem:
                skip = self._resync()
                if skip:
                    # Damage inside what was written (bad storage, a hand
                    # edit), not a torn tail: read on past it, and say so.
                    if not parse.problem:
                        problem = "a frame header that is zero or runs past the end"
                    _warn_skipped(self._path, self._pos, skip, problem)
                    self._pos += skip
                    continue
            return _Parse(items, self._pos, parse.ended, problem)

    def _resync(self) -> int:
        """Bytes from the damaged frame to the next whole frame; 0 if none."""
        # Most damage is followed by a whole frame within a few bytes: look
        # near first, so that many damaged spots do not each read the file.
        rest = os.fstat(self._fd).st_size - self._pos
        near = min(rest, _RESYNC_NEAR)
        found = _next_frame(os.pread(self._fd, near, self._pos), self._schemas)
        if found or near == rest:
            return found
        return _next_frame(os.pread(self._fd, rest, self._pos), self._schemas)

    def _torn_tail(self) -> str:
        # A payload a kill cut short lies just past the last frame, its
        # header still zero: say so (log() never returned for it).
        tail = os.pread(self._fd, _FIRST_READ, self._pos)
        return _TORN if tail.count(0) != len(tail) else ""

    def _read_all(self) -> bytes:
        assert self._path is not None
        with contextlib.suppress(FileNotFoundError):
            return self._path.read_bytes()
        return b""


def read_records(path: Path) -> Iterator[Record]:
    """The well-formed records of one journal file, rows as records, in order.

    Reading stops at a damaged frame, which can only be the last one written
    to a file (see the module docstring): log() never returned for it.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data.startswith(MAGIC) or data.startswith(OLD_MAGIC):
        parse = _parse_frames(data, len(MAGIC), {}, final=True)
        for item in parse.items:
            if isinstance(item, Rows):
                yield from item.records()
            else:
                yield item
        problem = parse.problem
        rest = len(data) - parse.end
        if not problem and not parse.ended and data.count(0, parse.end) != rest:
            problem = _TORN
        if problem:
            _warn_damaged(path, _count(parse.items), problem)
    elif data:
        yield from _bare_records(path, data)


def _bare_records(path: Path, data: bytes) -> Iterator[Record]:
    # The first journal layout: records back to back, with no frame.
    count = end = 0
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=_MAX_RECORD
    )
    unpacker.feed(data)
    try:
        for item in unpacker:
            start = end
            # Where this record ends; at the end, tell() may count a cut one.
            end = unpacker.tell()
            record = _record(item, end - start)
            count += 1
            yield record
        if end < len(data):
            raise ValueError(f"{len(data) - end} bytes of a cut record")
    except (ValueError, msgpack.UnpackException) as exc:
        _warn_damaged(path, count, str(exc))


#: Bytes past damage looked at first for the next whole frame.
_RESYNC_NEAR = 1 << 20
#: Offsets looked at per numpy pass while looking for a frame past damage.
_SCAN_BLOCK = 1 << 20
#: The first byte of a record's payload: msgpack's array of three.
_RECORD_HEAD = 0x93


def _next_frame(data: bytes, schemas: dict[int, Schema]) -> int:
    """The offset, past 0, of the first whole frame in ``data``; 0 if none.

    A frame is whole when its checksum holds, what follows it could be a
    frame too (or is the end of what was written), and, for rows, its schema
    is known with that width (rows of a schema lost to the damage cannot be
    read, so they are passed over as well).
    """
    size = len(data)
    written = len(data.rstrip(b"\0"))  # the zero room past the frames
    last = min(written, size - _FRAME.size - 1)  # a frame holds a byte at least
    view = np.frombuffer(data, dtype=np.uint8)
    for start in range(1, last, _SCAN_BLOCK):
        stop = min(last, start + _SCAN_BLOCK)
        lengths = np.ndarray((stop - start,), "<u4", data, start, (1,))
        heads = view[start + _FRAME.size : stop + _FRAME.size]
        room = size - _FRAME.size - np.arange(start, stop)
        plausible = (
            (lengths > 0)
            & (lengths <= room)
            & ((heads == TAG) | (heads == _RECORD_HEAD))
        )
        for at in (np.flatnonzero(plausible) + start).tolist():
            length, crc = _FRAME.unpack_from(data, at)
            end = at + _FRAME.size + length
            if end < written and not _may_start_frame(data, end):
                continue  # cheap, and random bytes rarely pass it
            payload = data[at + _FRAME.size : end]
            if zlib.crc32(payload) != crc:
                continue
            if payload[0] == TAG and len(payload) > 1 and payload[1] == ROW:
                (schema_id,) = struct.unpack_from("<I", data, at + _SCHEMA_AT)
                schema = schemas.get(schema_id)
                if schema is None or schema.size != length:
                    continue
            return int(at)
    return 0


def _may_start_frame(data: bytes, at: int) -> bool:
    """Whether a frame header could start at ``at``: zero (no more frames),
    or a length that fits and a payload's first byte."""
    if at + _FRAME.size >= len(data):
        return False
    (length,) = struct.unpack_from("<I", data, at)
    if length == 0:
        return True
    fits = length <= len(data) - at - _FRAME.size
    return fits and data[at + _FRAME.size] in (TAG, _RECORD_HEAD)


def _warn_skipped(path: Path | None, at: int, count: int, problem: str) -> None:
    logger.warning(
        "journal %s: %d damaged bytes at offset %d (%s) were skipped and "
        "reading went on after them; rows they held are lost (the storage "
        "may be failing, or the file was edited)",
        path,
        count,
        at,
        problem,
    )


def _warn_damaged(path: Path | None, count: int, problem: str) -> None:
    # A torn tail is what a kill leaves; other damage with no whole frame
    # after it may be a power loss's torn record too, or failing storage.
    why = (
        "a record a kill cut short, which log() never returned for"
        if problem == _TORN
        else "if it is the last record written, log() never returned for it; "
        "if not, nothing after it could be read (failing storage, an edit)"
    )
    logger.warning(
        "journal %s: stopped after %d records at a damaged one (%s): %s",
        path,
        count,
        problem,
        why,
    )


def _record(item: Any, size: int = 0) -> Record:
    if not isinstance(item, list) or len(item) != 3:
        raise ValueError("not a journal record")
    step, when, data = item
    if not isinstance(when, (float, int)) or isinstance(when, bool):
        raise ValueError("a journal record's time is not a number")
    if step is None:
        return Record(None, float(when), _meta(data), size)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError("a journal record's step is not a step")
    if not isinstance(data, dict):
        raise ValueError("a journal record's row is not a map")
    return Record(step, float(when), data, size)


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
    fix = os_error_fix(exc) or "fix the cause"
    return f"{fix[0].upper()}{fix[1:]}, then go on logging."


# -- locks -----------------------------------------------------------------------

#: How long a writer waits for the committer of a dead writer to finish its run.
ORPHAN_WAIT_SECONDS = 60.0
#: How long a writer waits on a lock whose file names no holder.
_UNNAMED_WAIT_SECONDS = 2.0


class RunLock:
    """One writer per run: an flock'ed file naming the holder's host and pid.

    The kernel releases the flock when every process holding it is gone, so
    a lock file that still names a holder but can be locked was left by a
    dead process: it is taken over, the recovery is logged, and
    :attr:`stale_holder` says who it was. A writer's committer process
    shares its lock: when a writer dies, its committer commits what the
    journal holds first, and a new writer waits for it.

    Args:
        path: the lock file.
        run: the run's path, for messages.
    """

    def __init__(self, path: Path, run: str) -> None:
        self.path = path
        self.run = run
        self.stale_holder: tuple[str, int] | None = None
        self._fd = -1

    @property
    def fd(self) -> int:
        """The locked descriptor (a committer process inherits it), or -1."""
        return self._fd

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
                f"{os_error_fix(exc) or 'fix the cause and try again'}"
            ) from None
        started = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                host, pid = _holder(fd, wait=not told)
            # A holder that is gone while its lock is not has a committer
            # process committing what it journaled: wait for it. A lock that
            # names no one is being let go (or taken) at this moment.
            waited = time.monotonic() - started
            gone = _gone(host, pid)
            if (not gone and pid >= 0) or waited > (
                ORPHAN_WAIT_SECONDS if gone else _UNNAMED_WAIT_SECONDS
            ):
                os.close(fd)
                raise RunLockedError(self.run, host, pid)
            if gone and not told:
                told = True
                logger.info(
                    "run %s: waiting for the committer of pid %d, which is gone, "
                    "to commit what it journaled",
                    self.run,
                    pid,
                )
            time.sleep(0.01)

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


def release_orphaned_lock(fd: int) -> None:
    """Let go of the lock of a writer that is gone, saying its run is in order.

    The committer process of a dead writer calls this once it has committed
    what the writer journaled, so the next writer sees no stale holder.
    """
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)


def _gone(host: str, pid: int) -> bool:
    """Whether the named holder is a process of this host that has ended."""
    if host != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
