"""The record framing of W&B's ``.wandb`` transaction log (LevelDB's log layout).

The installed ``wandb`` package parses the records (protobuf) but no longer
ships a Python reader of this framing, so the framing is read here: a 7-byte
file header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of
records, each with a 7-byte header (CRC-32 of type and body, body length,
type). A record longer than a block's remainder is split into FIRST, MIDDLE
and LAST pieces. A block's last 6 bytes or fewer are zero padding.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from gitruns.errors import ImportFormatError

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32 * 1024
_HEAD = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class LogScan:
    """The records read from one ``.wandb`` file, and where reading stopped.

    Attributes:
        records: the bodies of every complete record, in order.
        problem: why reading stopped before the end of the file, or None.
        lost_bytes: bytes after the last complete record that were not read.
    """

    records: list[bytes] = field(default_factory=list)
    problem: str | None = None
    lost_bytes: int = 0


def scan(data: bytes, source: str) -> LogScan:
    """Split a ``.wandb`` file into record bodies, stopping cleanly at damage.

    A file cut off mid-write (the usual state of a running or killed job) or
    a record whose checksum fails ends the scan: what came before is
    returned, and ``problem`` says what was lost.

    Raises:
        ImportFormatError: the file does not start with the W&B header.
    """
    if data[: len(FILE_HEADER)] != FILE_HEADER:
        raise ImportFormatError(
            f"{source}: not a W&B transaction log (no ':W&B' header with "
            "version 0); is it a .wandb file of a wandb run?",
            path=str(source),
        )
    result = LogScan()
    pos = len(FILE_HEADER)
    pieces: list[bytes] = []
    piece_start = pos
    while pos < len(data):
        room = BLOCK - pos % BLOCK
        if room < _HEAD.size:
            pos += room  # the block's trailer
            continue
        if pos + _HEAD.size > len(data):
            result.problem = f"ends inside a record header at offset {pos}"
            break
        crc, length, kind = _HEAD.unpack_from(data, pos)
        if kind == 0 and length == 0 and crc == 0 and not any(data[pos:]):
            break  # zero-filled tail of a preallocated file
        body_start = pos + _HEAD.size
        if length > room - _HEAD.size:
            result.problem = (
                f"record at offset {pos} claims {length} bytes, past its block"
            )
            break
        if body_start + length > len(data):
            missing = body_start + length - len(data)
            result.problem = (
                f"ends inside a record at offset {pos}: {missing} of its "
                f"{length} body bytes are missing"
            )
            break
        body = data[body_start : body_start + length]
        if zlib.crc32(bytes([kind]) + body) & 0xFFFFFFFF != crc:
            result.problem = f"checksum mismatch in the record at offset {pos}"
            break
        if kind == _FULL and not pieces:
            result.records.append(body)
        elif kind == _FIRST and not pieces:
            pieces, piece_start = [body], pos
        elif kind == _MIDDLE and pieces:
            pieces.append(body)
        elif kind == _LAST and pieces:
            result.records.append(b"".join(pieces + [body]))
            pieces = []
        else:
            result.problem = f"record of type {kind} out of place at offset {pos}"
            break
        pos = body_start + length
    if pieces and result.problem is None:
        result.problem = (
            f"ends inside a record split across blocks (from offset {piece_start})"
        )
    if result.problem is not None:
        end = piece_start if pieces else pos
        result.lost_bytes = len(data) - end
    return result
