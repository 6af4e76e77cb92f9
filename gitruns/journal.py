"""What is logged but not yet committed: an append-only journal, and run locks.

Each accepted log() call is one msgpack record ``[step, time, data]`` written
to the journal with a single ``write(2)`` before log() returns, so a killed
process loses nothing it accepted: the kernel holds the bytes. A journal file
covers the rows of one pending segment; the writer starts a new file when it
hands a segment to be committed and deletes the old one once the run's branch
points at the commit that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from gitruns.errors import RunLockedError

logger = logging.getLogger(__name__)

SUFFIX = ".jnl"


class Journal:
    """The journal files of one run, in a folder of their own."""

    def __init__(self, folder: Path, *, fsync: bool = False) -> None:
        self.folder = folder
        self.fsync = fsync
        folder.mkdir(parents=True, exist_ok=True)
        existing = self.files()
        self._seq = int(existing[-1].stem) + 1 if existing else 0
        self._fd = -1
        self._path: Path | None = None
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)

    def files(self) -> list[Path]:
        """The journal files present, oldest first."""
        return sorted(self.folder.glob("*" + SUFFIX))

    def append(self, step: int, when: float, data: dict[str, Any]) -> None:
        """Record one log() call; it is on the kernel's side when this returns."""
        if self._fd < 0:
            self._open()
        os.write(self._fd, self._packer.pack([step, when, data]))
        if self.fsync:
            os.fsync(self._fd)

    def rotate(self) -> Path | None:
        """Close the current file (if any) and return it; the next append opens another."""
        path = self._path
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._path = -1, None
        return path

    def close(self) -> None:
        """Close the open file, keeping it on disk."""
        self.rotate()

    def _open(self) -> None:
        path = self.folder / f"{self._seq:08d}{SUFFIX}"
        self._seq += 1
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._path = path
        if self.fsync:
            dir_fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    @staticmethod
    def retire(paths: list[Path]) -> None:
        """Delete journal files whose rows are committed."""
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def replay(self) -> Iterator[tuple[int, float, dict[str, Any]]]:
        """Every record of every file, oldest first; a torn tail is skipped."""
        for path in self.files():
            yield from read_records(path)


def read_records(path: Path) -> Iterator[tuple[int, float, dict[str, Any]]]:
    """The well-formed records of one journal file, stopping at a torn one."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=2**26)
    with open(path, "rb") as f:
        unpacker.feed(f.read())
    count = 0
    try:
        for record in unpacker:
            if (
                not isinstance(record, list)
                or len(record) != 3
                or not isinstance(record[0], int)
                or not isinstance(record[1], float)
                or not isinstance(record[2], dict)
            ):
                raise ValueError("not a journal record")
            count += 1
            yield record[0], record[1], record[2]
    except (ValueError, msgpack.UnpackException) as exc:
        logger.warning(
            "journal %s: stopped after %d records at a damaged one (%s); it was "
            "never acknowledged to the caller",
            path,
            count,
            exc,
        )


class RunLock:
    """One writer per run: an flock'ed file naming the holder's host and pid.

    The kernel releases the flock when its holder dies, so a lock file that
    still names a holder but can be locked was left by a dead process: it is
    taken over and the recovery is logged.
    """

    def __init__(self, path: Path, run: str) -> None:
        self.path = path
        self.run = run
        self._fd = -1

    def acquire(self) -> None:
        """Take the lock or raise RunLockedError naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").split()
            os.close(fd)
            host = holder[0] if holder else "?"
            pid = int(holder[1]) if len(holder) > 1 and holder[1].isdigit() else -1
            raise RunLockedError(self.run, host, pid) from None
        stale = os.pread(fd, 4096, 0).decode(errors="replace").split()
        if stale:
            logger.warning(
                "run %s: recovered the lock left by dead pid %s on %s",
                self.run,
                stale[1] if len(stale) > 1 else "?",
                stale[0],
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()} {time.time():.0f}\n".encode(), 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd >= 0

    def release(self) -> None:
        """Clear the holder and unlock; the file stays for the next writer."""
        if self._fd < 0:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1
