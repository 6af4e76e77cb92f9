"""The pack files gitruns writes: one per large commit, merged when they are many.

A commit of many windows (a short run's ``finish()``, a committer process
catching up) writes its objects as one pack and its index instead of a loose
file each. Every such pack is named in a record beside the repository's Git
data, and only packs named there are ever merged: they hold no deltas and no
``.keep`` file, so merging them rewrites no object larger and takes nothing
from Git's own packs (a fetch's deltas, a ``git gc``'s pack, a kept pack).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from dulwich.file import GitFile
from dulwich.object_store import DiskObjectStore
from dulwich.objects import Blob, ShaFile, hex_to_sha
from dulwich.pack import Pack, write_pack_header, write_pack_index, write_pack_object

from gitruns.chunk import compressed_chunk

logger = logging.getLogger(__name__)

#: zlib level of the objects that hold chunks, loose or packed. Their numeric
#: arrays are zstd frames already: zlib at level 1 deflates those at about
#: 60 MB/s and inflates them at 1 GB/s to save a few percent, while level 0
#: (stored) costs a copy both ways. Git itself is free to deflate them again.
CHUNK_COMPRESSION = 0

#: Bytes of packs that one merge reads at most (and so writes, as gitruns'
#: packs hold no deltas): the merge takes the smallest packs first, so its
#: cost stays bounded however large the repository grows.
MERGE_PACK_BYTES = 256 << 20

#: Files beside a pack that belong to it (Git writes some of them for packs
#: it indexes itself); they go with the pack.
_PACK_FILES = (".idx", ".pack", ".rev", ".bitmap", ".mtimes")

#: A pack with one of these beside it is Git's to keep as it is.
_KEPT = (".keep", ".promisor")

#: What a ``.keep`` of gitruns says (Git shows it as the reason the pack is kept).
_KEEP_REASON = b"gitruns: a commit being written names these objects\n"

#: A ``gc.pid`` newer than this means a ``git gc`` may be at work (Git's own
#: ``gc`` waits twelve hours for a lock it finds).
_GC_PID_SECONDS = 12 * 3600.0


def write_pack(
    objects: DiskObjectStore,
    batch: Iterable[ShaFile],
    count: int,
    *,
    keep: bool = False,
) -> str:
    """Write the ``count`` objects of ``batch`` as one new pack and its index.

    ``batch`` may be a generator: one object is in memory at a time. Chunks
    are written at :data:`CHUNK_COMPRESSION`, other objects at the store's
    pack level: dulwich's ``add_objects`` deflates everything at zlib's
    default, ~20 MB/s on chunks' zstd frames for nothing. Each entry's offset
    and CRC are kept as it is written, so the index needs no second pass over
    the pack (which dulwich's ``add_pack`` makes). The pack is named by its
    checksum, as Git names packs, and is seen by readers once its index is
    there.

    Args:
        objects: the object store.
        batch: the objects.
        count: how many objects ``batch`` yields.
        keep: give the pack a ``.keep`` file before it is moved in, as
            ``git receive-pack`` does: objects no ref names yet would be
            deleted by a ``git repack -ad`` running meanwhile. The caller
            calls :func:`release` once a ref names them.

    Returns:
        The pack's name (``pack-<checksum>``). A pack of that name that is
        there already holds the same bytes, and is left as it is (given a
        ``.keep`` if it has none and ``keep`` is set).

    Raises:
        OSError: the pack could not be written (nothing is left behind).
    """
    level = objects.pack_compression_level
    entries: list[tuple[bytes, int, int]] = []
    pack_dir = objects.pack_dir
    fd, tmp = tempfile.mkstemp(prefix="tmp_pack_", dir=pack_dir)
    try:
        with os.fdopen(fd, "wb") as file:
            digest = objects.object_format.new_hash()
            offset = 0

            def write(data: bytes) -> int:
                nonlocal offset
                digest.update(data)
                offset += len(data)
                written: int = file.write(data)
                return written

            write_pack_header(write, count)
            for obj in batch:
                chunks = obj.as_raw_chunks()
                stored = obj.type_num == Blob.type_num and compressed_chunk(chunks[0])
                at = offset
                crc = write_pack_object(
                    write,
                    obj.type_num,
                    chunks,
                    objects.object_format,
                    compression_level=CHUNK_COMPRESSION if stored else level,
                )
                entries.append((hex_to_sha(obj.id), at, crc))
            if len(entries) != count:
                raise ValueError(
                    f"a pack of {count} objects was given {len(entries)} "
                    "(a gitruns bug; please report it)"
                )
            checksum = digest.digest()
            file.write(checksum)
            if objects.fsync_object_files:
                file.flush()
                os.fsync(file.fileno())
        name = "pack-" + checksum.hex()
        base = os.path.join(pack_dir, name)
        if keep:
            _keep(base + ".keep")
        if os.path.exists(base + ".idx"):
            return name  # the same objects in the same order, packed before
        os.chmod(tmp, 0o444)
        # The pack first, then its index: Git and dulwich see a pack only
        # once its index is there.
        os.replace(tmp, base + ".pack")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    entries.sort()
    try:
        with GitFile(
            base + ".idx",
            "wb",
            mask=0o444,
            fsync=objects.fsync_object_files,
            shared_perm=objects.shared_perm,
        ) as index:
            write_pack_index(
                index, entries, checksum, version=objects.pack_index_version
            )
    except BaseException:
        # A pack without its index is one nobody reads: do not leave it.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(base + ".pack")
        if keep:
            release(objects, name)
        raise
    return name


def _keep(path: str) -> None:
    """Give a pack gitruns' ``.keep``, unless it has one of another's.

    One of gitruns' that is there already (a killed writer's, for the same
    objects) is made fresh, so that release_stale() leaves it to this writer.
    The file is written whole, then linked in: one cut short by a kill would
    be nobody's, and kept for good.
    """
    fd, tmp = tempfile.mkstemp(prefix="tmp_keep_", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(_KEEP_REASON)
        try:
            os.link(tmp, path)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if Path(path).read_bytes() == _KEEP_REASON:
                    os.utime(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def release(objects: DiskObjectStore, name: str) -> None:
    """Remove the ``.keep`` that :func:`write_pack` gave pack ``name``.

    A ``.keep`` that gitruns did not write is left as it is.
    """
    path = Path(objects.pack_dir, name + ".keep")
    with contextlib.suppress(FileNotFoundError):
        if path.read_bytes() == _KEEP_REASON:
            path.unlink()


def release_stale(objects: DiskObjectStore, older_than: float) -> int:
    """Remove gitruns' ``.keep`` files older than ``older_than`` seconds.

    A writer killed between writing a pack and moving its branch leaves the
    pack kept for good; Git would never repack it.

    Returns:
        How many were removed.
    """
    removed = 0
    for path in Path(objects.pack_dir).glob("pack-*.keep"):
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime < older_than:
                continue
            if path.read_bytes() == _KEEP_REASON:
                path.unlink()
                removed += 1
    return removed


class PackRecord:
    """The names of the packs gitruns wrote in a repository, one per line.

    Every read and change of the file holds a lock on it, for the moment it
    takes: writers add names as they commit, while a merge rewrites it.

    Args:
        path: the record's file (in gitruns' own folder of the Git directory).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, name: str) -> None:
        """Note a pack gitruns wrote.

        Raises:
            OSError: the record could not be written.
        """
        with self._locked() as record:
            record.seek(0, os.SEEK_END)
            record.write(name.encode() + b"\n")

    def names(self) -> set[str]:
        """The names noted, of packs that may since have gone."""
        if not self.path.exists():
            return set()
        with self._locked() as record:
            return _names(record.read())

    def merged(self, gone: Iterable[str], new: str, pack_dir: Path) -> None:
        """Note that the packs ``gone`` were merged into ``new``.

        Names of packs no longer in ``pack_dir`` (a ``git gc`` repacked them)
        are dropped too.

        Raises:
            OSError: the record could not be written.
        """
        with self._locked() as record:
            # Listed under the lock: a pack written and added meanwhile is
            # then present, and kept.
            present = {p.stem for p in pack_dir.glob("pack-*.idx")}
            names = (_names(record.read()) & present) - set(gone) | {new}
            record.seek(0)
            record.truncate()
            record.write("".join(n + "\n" for n in sorted(names)).encode())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[BinaryIO]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as record:
            fcntl.flock(record.fileno(), fcntl.LOCK_EX)
            record.seek(0)
            yield record


def _names(data: bytes) -> set[str]:
    return {n for n in data.decode(errors="replace").split() if n.startswith("pack-")}


def merge_packs(
    objects: DiskObjectStore, record: PackRecord, max_packs: int
) -> list[str]:
    """Merge the smallest of gitruns' packs while the repository has too many.

    Only packs named in ``record`` are merged, at most
    :data:`MERGE_PACK_BYTES` of them, smallest first, down to half of
    ``max_packs`` in all where they suffice. Nothing is merged while a
    multi-pack index names the packs (removing one would break it) or a
    ``git gc`` may be at work. One object is in memory at a time. The caller
    holds the repository's pack lock.

    Returns:
        The names of the packs merged (none, or two and more).

    Raises:
        OSError, dulwich errors: a pack could not be read or written. Every
            object is still in a pack: before the merged pack is complete,
            the packs are as they were; after, some of those merged may be
            left beside it (their objects twice over, until `git gc`), and
            the new one unrecorded (left to `git gc` too).
    """
    pack_dir = Path(objects.pack_dir)
    on_disk = sorted(p.stem for p in pack_dir.glob("pack-*.idx"))
    if len(on_disk) <= max_packs or _git_owns_packs(pack_dir):
        return []
    ours = record.names()
    chosen = _smallest(
        [n for n in on_disk if n in ours and not _kept(pack_dir, n)],
        pack_dir,
        len(on_disk) - max_packs // 2 + 1,
    )
    if len(chosen) < 2:
        return []

    packs = [
        Pack(str(pack_dir / name), object_format=objects.object_format)
        for name in chosen
    ]
    try:
        # Object ids first: an object in two packs is written once, and the
        # new pack's header needs the count.
        ids = {sha for pack in packs for sha in pack}

        def merged() -> Iterator[ShaFile]:
            for pack in packs:
                for sha in pack:
                    if sha in ids:
                        ids.discard(sha)
                        yield pack[sha]

        new = write_pack(objects, merged(), len(ids))
    finally:
        for pack in packs:
            pack.close()
    gone = [name for name in chosen if name != new]
    for name in gone:
        _remove_pack(pack_dir, name)
    # A multi-pack index written since the look above may name the packs
    # just removed; without one, Git reads each pack's own index.
    with contextlib.suppress(FileNotFoundError):
        (pack_dir / "multi-pack-index").unlink()
    record.merged(gone, new, pack_dir)
    # dulwich drops the packs removed from its cache when it lists them again.
    objects.packs  # noqa: B018
    logger.info("merged %d packs of gitruns into %s", len(chosen), new)
    return chosen


def _smallest(names: list[str], pack_dir: Path, most: int) -> list[str]:
    """Up to ``most`` of ``names``, smallest first, within MERGE_PACK_BYTES."""
    sized = sorted((_size(pack_dir / (n + ".pack")), n) for n in names)
    chosen: list[str] = []
    total = 0
    for size, name in sized[: max(0, most)]:
        if total + size > MERGE_PACK_BYTES:
            break
        chosen.append(name)
        total += size
    return chosen


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return MERGE_PACK_BYTES + 1  # gone: never chosen


def _kept(pack_dir: Path, name: str) -> bool:
    return any((pack_dir / (name + suffix)).exists() for suffix in _KEPT)


def _git_owns_packs(pack_dir: Path) -> bool:
    # A multi-pack index names packs that must stay; a fresh gc.pid says a
    # `git gc` may be repacking right now.
    if (pack_dir / "multi-pack-index").exists():
        return True
    try:
        age = time.time() - (pack_dir.parent.parent / "gc.pid").stat().st_mtime
    except FileNotFoundError:
        return False
    return age < _GC_PID_SECONDS


def _remove_pack(pack_dir: Path, name: str) -> None:
    # The index goes first: a pack file without its index is one Git ignores
    # (and git gc removes), an index without its pack is an error to readers.
    for suffix in _PACK_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(pack_dir / (name + suffix))
