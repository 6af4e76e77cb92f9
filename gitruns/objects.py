"""Reading Git objects without inflating more than a limit, whatever they hold.

Git stores every object zlib-compressed, and a few megabytes on disk can
inflate to gigabytes. dulwich inflates an object whole before anyone sees its
size, so a hostile repository (or push) could make a reader allocate without
bound. :class:`ObjectReader` finds objects with dulwich's own lookups (pack
indexes, loose object paths, alternates), reads the size an object declares
first (a loose object's header, a pack entry's header, a delta's target size)
and refuses it when that is over the caller's limit, before inflating the
rest. Deltas are resolved one link at a time, every link checked, so reading
costs a few times the limit at most.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections import OrderedDict
from typing import Any

from dulwich.errors import ApplyDeltaError
from dulwich.object_store import BaseObjectStore, DiskObjectStore
from dulwich.objects import ObjectID, RawObjectID, hex_to_filename, sha_to_hex
from dulwich.pack import OFS_DELTA, REF_DELTA, Pack, PackFileDisappeared, apply_delta

__all__ = [
    "MAX_DELTA_CHAIN",
    "CorruptObject",
    "ObjectReader",
    "ObjectTooLarge",
]

#: Deltas in one chain at most: git's own ceiling for ``--depth``.
MAX_DELTA_CHAIN = 4095

# A chain may inflate this many times the limit in all (every base and delta
# on the way). Git's chains are of small deltas, so only a crafted chain of
# large objects reaches it.
_CHAIN_WORK = 16

# Pack entry and loose object types that are objects, not deltas.
_OBJECT_TYPES = frozenset({1, 2, 3, 4})  # commit, tree, blob, tag
_LOOSE_TYPES = {b"commit": 1, b"tree": 2, b"blob": 3, b"tag": 4}

# Bytes read at once: a pack entry's header, or compressed data.
_ENTRY_HEADER = 64
_PIECE = 1 << 16

# Objects made by applying deltas are kept for the next read, as dulwich
# keeps them: a chain's links are shared by many objects of a pack. Only
# objects up to a quarter of the cache are kept.
_DELTA_CACHE_BYTES = 32 * 2**20


class ObjectTooLarge(Exception):
    """An object, or a delta base it is stored against, is over the limit.

    Attributes:
        size: the size the object declares, in bytes.
        limit: the caller's limit.
        part: "" for the object itself, else what was too large ("its delta
            base").
    """

    def __init__(self, size: int, limit: int, part: str = "") -> None:
        self.size = size
        self.limit = limit
        self.part = part
        super().__init__(
            f"{part or 'the object'} is {size} bytes, over the limit of {limit}"
        )


class CorruptObject(Exception):
    """An object whose stored bytes do not make the object they claim to."""


class ObjectReader:
    """Reads a repository's objects, inflating no more bytes than a limit.

    A reader keeps the list of packs and the pack files it opened; close it
    when done. It may be shared by threads.

    Args:
        objects: the object store, usually ``repo.object_store``. A store
            that is not on disk (the in-memory stores of tests) holds its
            objects whole already, and is read whole.
    """

    def __init__(self, objects: BaseObjectStore) -> None:
        self.objects = objects
        self._disk = objects if isinstance(objects, DiskObjectStore) else None
        self._packs: list[Pack] | None = None
        self._files: dict[str, int] = {}
        self._alternates: list[ObjectReader] | None = None
        self._lock = threading.Lock()
        self._made: OrderedDict[tuple[str, int], tuple[int, bytes]] = OrderedDict()
        self._made_bytes = 0

    def close(self) -> None:
        """Close the pack files this reader opened."""
        with self._lock:
            files, self._files = self._files, {}
            alternates, self._alternates = self._alternates or [], None
        for fd in files.values():
            os.close(fd)
        with self._lock:
            self._made.clear()
            self._made_bytes = 0
        for alternate in alternates:
            alternate.close()

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read(self, sha: bytes, limit: int) -> tuple[int, bytes]:
        """Return an object's type number and bytes, if they fit in ``limit``.

        Args:
            sha: the object id, as 40 hex digits.
            limit: the most bytes the object (and each delta base on the way
                to it) may have.

        Raises:
            KeyError: the object is not in the repository.
            ObjectTooLarge: it, or a delta base it needs, declares more than
                ``limit`` bytes; nothing past that declaration was inflated.
            CorruptObject: its stored bytes are malformed.
        """
        return self._read(sha, limit, 0)

    def contains(self, sha: bytes) -> bool:
        """Whether the repository has the object, without reading any of it.

        (dulwich's ``sha in store`` parses a loose object whole to answer.)
        """
        if self._disk is None:
            return ObjectID(sha) in self.objects
        if self._locate(sha) is not None:
            return True
        path = hex_to_filename(os.fspath(self._disk.path), sha.decode())
        if os.path.exists(path) or (self._refresh() and self._locate(sha)):
            return True
        return any(a.contains(sha) for a in self._alternate_readers(self._disk))

    def _read(self, sha: bytes, limit: int, depth: int) -> tuple[int, bytes]:
        if self._disk is None:
            type_num, data = self.objects.get_raw(ObjectID(sha))
            if len(data) > limit:
                raise ObjectTooLarge(len(data), limit)
            return type_num, data
        for attempt in range(3):
            try:
                return self._read_disk(self._disk, sha, limit, depth)
            except (PackFileDisappeared, FileNotFoundError):
                # A repack or prune moved the object while we looked for it.
                self._packs = None
            except KeyError:
                # Or `git gc` moved it between our look at the packs and at
                # the loose object: look again, once its new pack is in place.
                if attempt == 2:
                    raise
                self._packs = None
                time.sleep(0.01)
            except zlib.error as exc:
                raise CorruptObject(
                    f"its compressed bytes are malformed ({exc})"
                ) from None
        raise KeyError(sha)

    def _read_disk(
        self, objects: DiskObjectStore, sha: bytes, limit: int, depth: int
    ) -> tuple[int, bytes]:
        # Packs first, then the loose object, then packs that landed since
        # the last look (the order of dulwich's own get_raw), then alternates.
        found = self._locate(sha)
        if found is None:
            path = hex_to_filename(os.fspath(objects.path), sha.decode())
            loose = _read_loose_file(path, limit)
            if loose is not None:
                return loose
            if self._refresh():
                found = self._locate(sha)
        if found is not None:
            return self._read_packed(found[0], found[1], limit, depth)
        for alternate in self._alternate_readers(objects):
            try:
                return alternate._read(sha, limit, depth)
            except KeyError:
                continue
        raise KeyError(sha)

    def _locate(self, sha: bytes) -> tuple[Pack, int] | None:
        if self._packs is None:
            self._refresh()
        for pack in self._packs or []:
            try:
                return pack, pack.index.object_offset(ObjectID(sha))
            except (KeyError, PackFileDisappeared):
                # Not there, or removed by `git gc` since the list was made:
                # its objects are in the pack that replaced it, further on.
                continue
        return None

    def _refresh(self) -> bool:
        # Look at the pack directory again; True when the packs changed.
        assert self._disk is not None
        before = {id(pack) for pack in self._packs or []}
        self._packs = list(self._disk.packs)
        with self._lock:
            gone = [path for path in self._files if not os.path.exists(path)]
            closing = [self._files.pop(path) for path in gone]
        for fd in closing:
            os.close(fd)
        return before != {id(pack) for pack in self._packs}

    def _alternate_readers(self, objects: DiskObjectStore) -> list[ObjectReader]:
        with self._lock:
            if self._alternates is None:
                self._alternates = [ObjectReader(a) for a in objects.alternates]
            return self._alternates

    def _pack_file(self, pack: Pack) -> tuple[str, int]:
        # One descriptor per pack, read with pread: no shared file position.
        path = os.fspath(pack.data.path)
        with self._lock:
            fd = self._files.get(path)
            if fd is None:
                fd = self._files[path] = os.open(path, os.O_RDONLY)
        return path, fd

    def _recall(self, key: tuple[str, int]) -> tuple[int, bytes] | None:
        with self._lock:
            made = self._made.get(key)
            if made is not None:
                self._made.move_to_end(key)
            return made

    def _keep(self, key: tuple[str, int], made: tuple[int, bytes]) -> None:
        size = len(made[1])
        if size > _DELTA_CACHE_BYTES // 4:
            return
        with self._lock:
            if key in self._made:
                return
            self._made[key] = made
            self._made_bytes += size
            while self._made_bytes > _DELTA_CACHE_BYTES:
                _, (_, old) = self._made.popitem(last=False)
                self._made_bytes -= len(old)

    def _read_packed(
        self, pack: Pack, offset: int, limit: int, depth: int
    ) -> tuple[int, bytes]:
        # Walk the delta chain down to its base (or to an object made before),
        # checking every declared size on the way; then inflate the base and
        # apply the deltas back up.
        path, fd = self._pack_file(pack)
        deltas: list[tuple[str, int, int, int, int]] = []  # path, entry, file, at, size
        work = 0
        while True:
            if depth + len(deltas) >= MAX_DELTA_CHAIN:
                raise CorruptObject(
                    f"a delta chain longer than {MAX_DELTA_CHAIN}; "
                    "repack the repository (git repack -adf)"
                )
            made = self._recall((path, offset))
            if made is not None:
                if len(made[1]) > limit:
                    part = "its delta base" if deltas else ""
                    raise ObjectTooLarge(len(made[1]), limit, part)
                base = made
                break
            head = os.pread(fd, _ENTRY_HEADER, offset)
            type_num, size, at = _entry_header(head)
            if type_num in _OBJECT_TYPES:
                if size > limit:
                    part = "its delta base" if deltas else ""
                    raise ObjectTooLarge(size, limit, part)
                base = (type_num, _inflate(fd, offset + at, size))
                break

            base_offset = 0
            base_sha = b""
            if type_num == OFS_DELTA:
                distance, used = _ofs_distance(head, at)
                at += used
                base_offset = offset - distance
                if base_offset < 12:
                    raise CorruptObject("a delta whose base lies outside its pack")
            elif type_num == REF_DELTA:
                oid_length = pack.object_format.oid_length
                base_sha = head[at : at + oid_length]
                if len(base_sha) != oid_length:
                    raise CorruptObject("a pack entry cut short")
                at += oid_length
            else:
                raise CorruptObject(f"a pack entry of unknown type {type_num}")

            # A delta is never larger than what it makes, plus its opcodes.
            if size > limit + limit // 64 + 1024:
                raise CorruptObject(f"a delta of {size} bytes, larger than its object")
            source_size, target_size = _delta_sizes(fd, offset + at)
            if target_size > limit:
                part = "a delta base" if deltas else ""
                raise ObjectTooLarge(target_size, limit, part)
            if source_size > limit:
                raise ObjectTooLarge(source_size, limit, "its delta base")
            work += size + target_size
            if work > _CHAIN_WORK * limit:
                raise CorruptObject(
                    f"a delta chain that inflates over {_CHAIN_WORK * limit} bytes; "
                    "repack the repository (git repack -adf)"
                )
            deltas.append((path, offset, fd, offset + at, size))

            # The base: earlier in this pack, or named by its id anywhere.
            if type_num == OFS_DELTA:
                offset = base_offset
                continue
            base_hex = sha_to_hex(RawObjectID(base_sha))
            found = self._locate(base_hex)
            if found is None:
                base = self._read(base_hex, limit, depth + len(deltas))
                break
            pack, offset = found
            path, fd = self._pack_file(pack)

        type_num, data = base
        for path, entry, file, at, size in reversed(deltas):
            try:
                data = b"".join(apply_delta(data, _inflate(file, at, size)))
            except ApplyDeltaError as exc:
                raise CorruptObject(f"a delta does not apply ({exc})") from None
            self._keep((path, entry), (type_num, data))
        return type_num, data


def _read_loose_file(path: str, limit: int) -> tuple[int, bytes] | None:
    """A loose object's type and bytes; None if there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        stored = _read_stored_loose(fd, limit)
        if stored is not None:
            return stored

        # The header, "<type> <size>\0", comes first in the compressed stream.
        type_num, size, skip = _loose_header(_Inflater(fd, 0, 4096).take(64))
        if size > limit:
            raise ObjectTooLarge(size, limit)
        return type_num, _inflate(fd, 0, size, skip=skip)
    finally:
        os.close(fd)


def _read_stored_loose(fd: int, limit: int) -> tuple[int, bytes] | None:
    """A loose object of stored blocks, read in one go; else None.

    How gitruns keeps chunks (zlib level 0), and the usual read of a run: the
    file is read whole when it is no larger than a stream of an object
    within ``limit`` can be, so no more than that is ever read, and its
    header is taken from its first block. A file of any other stream, or one
    whose header is not whole in its first block, is left to the general
    path (None), which inflates the header first.
    """
    length = os.fstat(fd).st_size
    if length > _deflated_bound(limit + _LOOSE_HEADER):
        return None
    raw = memoryview(os.pread(fd, length, 0))
    pieces = _stored_blocks(raw)
    if not pieces:
        return None
    head = bytes(pieces[0][:_LOOSE_HEADER])
    if b"\0" not in head:
        return None

    type_num, size, skip = _loose_header(head)
    if size > limit:
        raise ObjectTooLarge(size, limit)
    if sum(map(len, pieces)) != skip + size:
        raise CorruptObject("an object whose size is not what it says")
    pieces[0] = pieces[0][skip:]
    return type_num, b"".join(pieces)


#: The longest header of a loose object read: "<type> <size>\0".
_LOOSE_HEADER = 64


def _loose_header(head: bytes) -> tuple[int, int, int]:
    """A loose object's type number, size, and header length, from its start."""
    nul = head.find(b"\0")
    kind, _, size_text = head[: max(nul, 0)].partition(b" ")
    type_num = _LOOSE_TYPES.get(kind)
    if nul < 0 or type_num is None or not size_text.isdigit():
        raise CorruptObject("a loose object without a valid header")
    return type_num, int(size_text), nul + 1


class _Inflater:
    """A zlib stream at an offset of a file, inflated on demand."""

    def __init__(
        self, fd: int, at: int, piece: int = _PIECE, stream: Any = None
    ) -> None:
        self.fd = fd
        self.at = at
        self.piece = piece
        # A stream begun elsewhere goes on with the bytes at ``at``.
        self._zlib = zlib.decompressobj() if stream is None else stream

    def take(self, count: int) -> bytes:
        """The next ``count`` bytes of output, fewer only where the stream ends."""
        stream = self._zlib
        out = []
        while count > 0 and not stream.eof:
            data = stream.unconsumed_tail
            if not data:
                data = os.pread(self.fd, self.piece, self.at)
                if not data:
                    raise CorruptObject("its compressed bytes end too soon")
                self.at += len(data)
            piece = stream.decompress(data, count)
            count -= len(piece)
            out.append(piece)
        return b"".join(out)


def _inflate(fd: int, at: int, size: int, skip: int = 0) -> bytes:
    """The ``size`` bytes after the first ``skip`` of the zlib stream at ``at``.

    The stream must end right there. It is read in one go: zlib never makes
    a stream longer than its bound for that many bytes. Stored blocks (zlib
    level 0, what chunks are kept at) are copied out here, checksum checked:
    zlib takes three times as long over them, growing its output piece by
    piece. Anything else is inflated by zlib, to at most one byte more than
    the object holds, reading on if it must.
    """
    total = skip + size
    raw = memoryview(os.pread(fd, _deflated_bound(total), at))
    pieces = _stored_blocks(raw)
    if pieces is not None:
        if sum(map(len, pieces)) != total:
            raise CorruptObject("an object whose size is not what it says")
        while skip and pieces and len(pieces[0]) <= skip:
            skip -= len(pieces.pop(0))
        if pieces:
            pieces[0] = pieces[0][skip:]
        return b"".join(pieces)

    stream = zlib.decompressobj()
    data = stream.decompress(raw, total + 1)
    if not stream.eof and len(data) <= total and not stream.unconsumed_tail:
        # Longer than zlib ever writes (padded with empty blocks, say): read
        # on, never inflating past one byte more than the object.
        more = _Inflater(fd, at + len(raw), total + 64, stream)
        data += more.take(total + 1 - len(data))
    if len(data) != total or not stream.eof:
        raise CorruptObject("an object whose size is not what it says")
    return data[skip:] if skip else data


def _deflated_bound(size: int) -> int:
    # The most bytes zlib makes of ``size`` bytes at any level (its
    # compressBound), and room for a pack entry's next header.
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 13 + _ENTRY_HEADER


def _stored_blocks(raw: memoryview) -> list[memoryview] | None:
    """The content of a zlib stream of stored blocks only, as views of ``raw``.

    None for any other stream: another kind of block, a zlib header this
    does not read, a malformed length, a stream that runs past ``raw`` or a
    checksum that does not match. zlib reads those, and says what is wrong.
    """
    # zlib's header: deflate, a window of at most 32 KiB, no preset dictionary.
    if len(raw) < 2 or raw[0] & 0x8F != 0x08 or raw[1] & 0x20:
        return None
    if (raw[0] << 8 | raw[1]) % 31:
        return None
    pieces = []
    checksum = 1
    at = 2
    while True:
        # A stored block after another is byte-aligned: a byte with BFINAL
        # and BTYPE 00, then LEN and its complement NLEN, then LEN bytes.
        if at + 5 > len(raw) or raw[at] & 0b110:
            return None
        length = raw[at + 1] | raw[at + 2] << 8
        piece = raw[at + 5 : at + 5 + length]
        if length ^ (raw[at + 3] | raw[at + 4] << 8) != 0xFFFF or len(piece) < length:
            return None
        pieces.append(piece)
        checksum = zlib.adler32(piece, checksum)
        last = raw[at] & 1
        at += 5 + length
        if last:
            break
    if raw[at : at + 4] != checksum.to_bytes(4, "big"):
        return None
    return pieces


def _entry_header(head: bytes) -> tuple[int, int, int]:
    # A pack entry starts with its type and size: 3 + 4 bits, then 7 bits a byte.
    if not head:
        raise CorruptObject("a pack entry past the end of its pack")
    byte = head[0]
    type_num, size, shift, used = (byte >> 4) & 7, byte & 0x0F, 4, 1
    while byte & 0x80:
        if used >= min(len(head), 10):
            raise CorruptObject("a pack entry header that does not end")
        byte = head[used]
        size |= (byte & 0x7F) << shift
        shift += 7
        used += 1
    return type_num, size, used


def _ofs_distance(head: bytes, at: int) -> tuple[int, int]:
    # How far back an OFS_DELTA's base starts: big-endian 7 bits a byte, each
    # continuation adding one (git's offset encoding).
    used = 0
    byte = 0x80
    distance = -1
    while byte & 0x80:
        if at + used >= len(head) or used >= 10:
            raise CorruptObject("a delta base offset that does not end")
        byte = head[at + used]
        distance = ((distance + 1) << 7) | (byte & 0x7F)
        used += 1
    return distance, used


def _delta_sizes(fd: int, at: int) -> tuple[int, int]:
    # A delta starts with its base's size and its result's size.
    head = _Inflater(fd, at, 4096).take(20)
    source, used = _varint(head, 0)
    target, _ = _varint(head, used)
    return source, target


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise CorruptObject("a delta header that does not end")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        shift += 7
        at += 1
        if not byte & 0x80:
            return value, at
