"""The chunk codec: one window of a run's metrics as one validated msgpack document."""

from __future__ import annotations

import logging
import math
import re
import struct
import threading
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import lru_cache
from itertools import islice, repeat
from operator import setitem
from typing import Any, TypeAlias, Union

import msgpack
import numpy as np
import zstandard

from gitruns.errors import (
    ChunkFormatError,
    ChunkTooLargeError,
    InvalidNameError,
    InvalidValueError,
    UnsupportedVersionError,
)

__all__ = [
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "KINDS",
    "MAX_CHUNK_BYTES",
    "MAX_METRICS",
    "MAX_NAME_CHARS",
    "MAX_ROWS",
    "Chunk",
    "Column",
    "Digest",
    "RowsLike",
    "Value",
    "ValuesLike",
    "build_chunk",
    "check_metric_name",
    "compressed_chunk",
    "decode_chunk",
    "decode_digests",
    "encode_chunk",
    "encode_digests",
    "fill_rows",
    "values_into_rows",
]

logger = logging.getLogger(__name__)

FORMAT_MAJOR = 3
FORMAT_MINOR = 0

#: zstd level of the numeric arrays a writer compresses (docs/FORMAT.md,
#: section 6), chosen by measurement on training curves (the table there).
ZSTD_LEVEL = -1

#: Blobs larger than this are refused before a single byte is unpacked; the
#: numeric arrays of a chunk hold at most this many bytes decompressed, too.
MAX_CHUNK_BYTES = 64 * 2**20
#: Steps (rows) in one chunk.
MAX_ROWS = 1_000_000
#: Metric columns in one chunk, and digests in one prefix.
MAX_METRICS = 100_000
#: Characters in one metric name.
MAX_NAME_CHARS = 256

#: The column kinds, in the order a reader meets them in docs/FORMAT.md.
KINDS = ("f8", "f4", "i8", "bool", "str", "obj")

#: A logged value, as it round-trips: exact type and, for floats, exact bits.
Value: TypeAlias = float | int | bool | str | None
#: Row indices or values as a writer buffers them: a sequence or a numpy array.
RowsLike: TypeAlias = Union[Sequence[int], "np.ndarray[Any, Any]"]
ValuesLike: TypeAlias = Union[Sequence[Value], "np.ndarray[Any, Any]"]

# The first entry of every chunk document: this key, then [major, minor].
_MAGIC = "gitruns.chunk"
_DIGESTS_MAGIC = "gitruns.digests"
# Names rows() uses for a step's own fields; a metric may not take them.
_RESERVED = frozenset({"_step", "_timestamp"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# Arrays outside bins are tiny ([major, minor], digests). Keeping their length
# small bounds what msgpack preallocates for a hostile array header.
_MAX_LOOSE_ARRAY = 64
# Entries of one column's map: the five keys of this version and room for
# keys of later minor versions (docs/FORMAT.md, section 9).
_MAX_COLUMN_ENTRIES = 16
# Arrays in one document: the version and a digest per column and per prefix.
_MAX_ARRAYS = 2 * MAX_METRICS + 64
# How deep msgpack nests containers before it gives up (its stack size).
_MAX_NESTING = 1024
# The entries of a document read as plain values, per document type; the map
# of digests each type holds. Anything else is skipped unread.
_DOCUMENT_VALUES = {
    _MAGIC: frozenset({_MAGIC, "window", "start", "steps", "times"}),
    _DIGESTS_MAGIC: frozenset({_DIGESTS_MAGIC}),
}
_DIGEST_MAPS = {_MAGIC: "prefix", _DIGESTS_MAGIC: "digests"}
_COLUMN_KEYS = frozenset({"kind", "present", "delta", "values", "digest"})
# The value types an obj column may hold.
_SCALARS = (type(None), bool, int, float, str)

_F8_BITS = struct.Struct("<d")
# How the kinds of fixed width are stored: the little-endian dtype of a value,
# and the unsigned dtype of the same width that byte shuffling and delta
# coding work on.
_STORED: dict[str, np.dtype[Any]] = {
    "f8": np.dtype("<f8"),
    "f4": np.dtype("<f4"),
    "i8": np.dtype("<i8"),
}
_BITS: dict[int, np.dtype[Any]] = {8: np.dtype("<u8"), 4: np.dtype("<u4")}
# The dtype of the values of each kind that numpy holds (f4 is widened); str
# and obj values are lists.
_ARRAY_DTYPE: dict[str, np.dtype[Any]] = {
    "f8": np.dtype(np.float64),
    "f4": np.dtype(np.float64),
    "i8": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
}
# The kinds whose columns values_into_rows() unpacks several at once: those
# whose values are held as they are stored.
_TOGETHER = frozenset({"f8", "i8"})


@dataclass(frozen=True)
class Digest:
    """What a run's summary needs of one metric over a stretch of its history.

    A digest covers the present values of one metric in one chunk, or in a
    prefix of a run (then it is several chunk digests merged in step order).

    Attributes:
        count: number of present values, of every type.
        first: the first present value, of any type.
        last: the last present value, of any type.
        first_step: the step of ``first``.
        last_step: the step of ``last``.
        min: smallest numeric value; None if there is none. Numeric means an
            int or a float that is not NaN; a bool is not numeric.
        max: largest numeric value; None if there is none.
        sum: float sum of the numeric values; None if there is none.
        numeric_count: how many values entered ``min``, ``max`` and ``sum``.
    """

    count: int
    first: Value
    last: Value
    first_step: int
    last_step: int
    min: float | None
    max: float | None
    sum: float | None
    numeric_count: int

    def merged(self, later: Digest) -> Digest:
        """Return the digest of this stretch of history followed by ``later``.

        Every field but ``sum`` is exact and associative; ``sum`` is a float
        addition, so regrouping merges may change its last bits.
        """
        return Digest(
            count=self.count + later.count,
            first=self.first,
            last=later.last,
            first_step=self.first_step,
            last_step=later.last_step,
            min=_pick(self.min, later.min, lower=True),
            max=_pick(self.max, later.max, lower=False),
            sum=later.sum if self.sum is None else _add(self.sum, later.sum),
            numeric_count=self.numeric_count + later.numeric_count,
        )

    def mean(self) -> float | None:
        """Return the mean of the numeric values, or None if there is none."""
        if self.sum is None or self.numeric_count == 0:
            return None
        return self.sum / self.numeric_count


def _pick(a: float | None, b: float | None, *, lower: bool) -> float | None:
    # IEEE 754 minimum/maximum: -0.0 is below 0.0, so the result does not
    # depend on which side a zero came from and merged() stays associative.
    if a is None:
        return b
    if b is None:
        return a
    if a == b:
        a_negative = math.copysign(1.0, a) < 0
        return a if a_negative == lower else b
    if lower:
        return a if a < b else b
    return a if a > b else b


def _extremes(values: np.ndarray[Any, Any]) -> tuple[float, float]:
    """The smallest and largest of non-NaN ``values``, -0.0 below 0.0.

    numpy's min and max return either zero when both signs are present,
    depending on its version and SIMD path; a chunk's bytes may not.
    """
    lo, hi = float(values.min()), float(values.max())
    if lo == 0.0 or hi == 0.0:
        negative = np.signbit(values[values == 0.0])
        if lo == 0.0:
            lo = -0.0 if negative.any() else 0.0
        if hi == 0.0:
            hi = 0.0 if not negative.all() else -0.0
    return lo, hi


def _add(a: float, b: float | None) -> float:
    return a if b is None else a + b


class Column:
    """One metric's values in a chunk.

    A decoded column of fixed-width numbers (f8, f4, i8) keeps its shuffled
    bytes, inflated from their frame, and turns them into an array the first
    time ``values`` is read, so reading one metric of a chunk does not pay for
    unshuffling the others. A chunk decoded with ``lazy`` keeps the frame
    itself, its header checked, and inflates it then too; a frame that does
    not inflate to what its header says raises ChunkFormatError from that
    first read.

    Attributes:
        kind: "f8", "f4" (floats stored as float32), "i8", "bool", "str" or
            "obj" (mixed types or None).
        rows: int64 row indices into ``Chunk.steps`` where the metric is
            present, strictly increasing; None when it is present at every row.
        values: a read-only array for f8 and f4 (float64; an f4 column's
            values are float32 values, widened exactly), i8 (int64) and bool;
            a list for str and obj. One value per present row.
    """

    __slots__ = ("kind", "rows", "_values", "_stored", "_count")

    def __init__(
        self,
        kind: str,
        rows: np.ndarray[Any, np.dtype[np.int64]] | None,
        values: np.ndarray[Any, Any] | list[Value],
    ) -> None:
        self.kind = kind
        self.rows = rows
        self._values: np.ndarray[Any, Any] | list[Value] | None = values
        self._stored: tuple[bytes | _Frame, bool] | None = None
        self._count = len(values)

    @classmethod
    def _packed(
        cls,
        kind: str,
        rows: np.ndarray[Any, np.dtype[np.int64]] | None,
        count: int,
        blob: bytes | _Frame,
        delta: bool,
    ) -> Column:
        # A column whose shuffled bytes (or the frame that holds them) were
        # checked (length, kind) but not unpacked: every bit pattern is a
        # valid value, so unpacking later cannot fail.
        col = cls.__new__(cls)
        col.kind, col.rows, col._count = kind, rows, count
        col._values, col._stored = None, (blob, delta)
        return col

    def _shuffled(self) -> tuple[bytes, bool] | None:
        # The shuffled bytes and delta flag of a column still packed (its
        # frame inflated first, if a lazy decode left it); None once unpacked.
        stored = self._stored
        if stored is None:
            return None
        planes, delta = stored
        if isinstance(planes, _Frame):
            # A thread racing this one inflates the frame too; either result
            # is the same bytes. Kept only if the column is still packed as
            # it was, which narrows (without a lock, not closes) the window in
            # which a thread that unpacked it meanwhile gets the bytes back:
            # then they are held twice, never wrong.
            planes = planes.inflated()
            if self._stored is stored:
                self._stored = (planes, delta)
        return planes, delta

    @property
    def values(self) -> np.ndarray[Any, Any] | list[Value]:
        """The values, one per present row (see the class docstring)."""
        values = self._values
        if values is not None:
            return values
        stored = self._shuffled()
        if stored is None:
            # Another thread unpacked them between the two reads above.
            return self.values
        values = _unpack_numbers(self.kind, stored[0], self._count, stored[1])
        # _values first: a thread that finds _stored gone finds _values set.
        self._values = values
        self._stored = None
        return values

    @property
    def count(self) -> int:
        """Number of present values."""
        return self._count

    @property
    def dtype(self) -> np.dtype[Any] | None:
        """The dtype of ``values`` as an array; None for str and obj (lists)."""
        return _ARRAY_DTYPE.get(self.kind)

    def values_into(self, out: np.ndarray[Any, Any], start: int = 0) -> None:
        """Copy ``values[start:start + len(out)]`` into ``out``, of ``dtype``.

        All the values of a column still packed are unshuffled straight into
        ``out``, and not kept: a reader joining a metric across segments
        copies each value once.
        """
        values = self._values
        stored = self._shuffled() if values is None else None
        if stored is not None and start == 0 and len(out) == self._count:
            _unshuffle_into(self.kind, stored[0], stored[1], out)
        else:
            out[...] = self.values[start : start + len(out)]

    def present_steps(
        self, steps: np.ndarray[Any, np.dtype[np.int64]]
    ) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Return the steps (of the chunk's ``steps``) where the metric is present."""
        return steps if self.rows is None else steps[self.rows]

    def value_list(self) -> list[Value]:
        """Return the values as Python objects of their exact type."""
        values = self.values
        if isinstance(values, list):
            return values
        out: list[Value] = values.tolist()
        return out

    def __repr__(self) -> str:
        where = "dense" if self.rows is None else f"{len(self.rows)} rows"
        return f"Column(kind={self.kind!r}, count={self._count}, {where})"


class _Times:
    """``Chunk.times``: an array, or a decoded chunk's times still packed.

    A chunk is made with its times as an array, or (by decode_chunk) as the
    f8 column of their shuffled bytes, whose values become the array when
    first read: a reader of columns unpacks the times of a segment with its
    metrics, and none of it twice.
    """

    def __get__(self, chunk: Chunk | None, owner: type) -> Any:
        if chunk is None:
            return self
        times = chunk.__dict__["_times"]
        if isinstance(times, Column):
            times = times.values
            chunk.__dict__["_times"] = times
        return times

    def __set__(self, chunk: Chunk, times: np.ndarray[Any, Any] | Column) -> None:
        # Only __init__ sets it (the chunk is frozen).
        chunk.__dict__["_times"] = times


@dataclass(frozen=True, eq=False)
class Chunk:
    """The metrics a run logged in one window of steps, or in one segment of it.

    Arrays are read-only; the lists of str and obj columns are shared, not
    copied, so treat them as read-only too.

    Attributes:
        window: the run's window size W (steps per window), at least 1.
        start: the first step of this chunk's window, a multiple of W.
        steps: int64 steps, strictly increasing, all in [start, start + W).
        times: float64 wall-clock unix seconds, one per step (given as an
            array, or as an f8 column at every step, unpacked when read).
        columns: metric name -> column.
        prefix: digests of the run's history before this chunk (may be empty),
            read-only. A chunk decoded with ``lazy`` checks them when
            first read, and raises ChunkFormatError then if they are malformed.
    """

    window: int
    start: int
    steps: np.ndarray[Any, np.dtype[np.int64]]
    times: np.ndarray[Any, np.dtype[np.float64]]
    columns: dict[str, Column]
    prefix: Mapping[str, Digest]
    _digests: dict[str, Digest] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def times_column(self) -> Column:
        """The times as an f8 column at every step: packed, if not read yet.

        What a reader that unpacks columns together takes the times as.
        """
        times = self.__dict__["_times"]
        return times if isinstance(times, Column) else Column("f8", None, times)

    def digests(self) -> dict[str, Digest]:
        """Return this chunk's own digest of every metric it holds."""
        if self._digests is None:
            computed = _digests_of(self.columns, self.steps)
            object.__setattr__(self, "_digests", computed)
            return computed
        return self._digests

    def totals(self) -> dict[str, Digest]:
        """Return the digest of the run's history up to and including this chunk."""
        out = dict(self.prefix)
        for name, digest in self.digests().items():
            before = out.get(name)
            out[name] = digest if before is None else before.merged(digest)
        return out

    def sliced(self, max_step: int) -> Chunk:
        """Return the chunk cut to the steps ``<= max_step``, with the same prefix."""
        keep = int(np.searchsorted(self.steps, max_step, side="right"))
        if keep == len(self.steps):
            return self

        columns: dict[str, Column] = {}
        for name, col in self.columns.items():
            if col.rows is None:
                if keep:
                    columns[name] = Column(col.kind, None, col.values[:keep])
                continue
            cut = int(np.searchsorted(col.rows, keep))
            if cut == 0:
                continue
            rows = col.rows[:cut]
            # A sparse column can be dense in the shorter chunk.
            dense = cut == keep
            columns[name] = Column(col.kind, None if dense else rows, col.values[:cut])
        return Chunk(
            self.window,
            self.start,
            self.steps[:keep],
            self.times[:keep],
            columns,
            self.prefix,
        )

    def rows(self) -> Iterator[dict[str, Value]]:
        """One dict per step: ``_step``, ``_timestamp``, the metrics present."""
        # The values of each column are converted to Python once. When every
        # metric is dense, each row is made in one call from its values;
        # otherwise each row starts as a copy of one dict of the keys all
        # rows have, and is filled a column at a time.
        keys = ["_step", "_timestamp"]
        lists = self._value_lists()
        if all(col.rows is None for col in self.columns.values()):
            keys += self.columns
            make = _row_maker(tuple(keys))
            if make is not None:
                values = (lists[key] for key in keys[1:])
                return map(make, self.steps.tolist(), *values)
        template = dict.fromkeys(keys)
        out: list[dict[str, Value]] = list(
            map(dict.copy, repeat(template, len(self.steps)))
        )
        fill_rows(out, "_step", self.steps.tolist())
        fill_rows(out, "_timestamp", lists.pop("_timestamp"))
        for name, col in self.columns.items():
            rows = out if col.rows is None else [out[i] for i in col.rows.tolist()]
            fill_rows(rows, name, lists[name])
        # An iterator of the list, not a generator: a scan of a run yields
        # every row, and a generator would add a frame switch to each.
        return iter(out)

    def _value_lists(self) -> dict[str, list[Value]]:
        # The values of every column, and the times as _timestamp, as Python
        # objects. Dense float and int columns still packed are unshuffled
        # together, a kind at a time.
        columns = {"_timestamp": self.times_column(), **self.columns}
        lists: dict[str, list[Value]] = {}
        together: dict[str, list[str]] = {}
        for name, col in columns.items():
            if col.rows is None and col.kind in _TOGETHER and col._stored is not None:
                together.setdefault(col.kind, []).append(name)
            else:
                lists[name] = col.value_list()
        for kind, names in together.items():
            if len(names) == 1:
                lists[names[0]] = columns[names[0]].value_list()
                continue
            values = np.empty((len(names), len(self.steps)), dtype=_STORED[kind])
            values_into_rows([[columns[name] for name in names]], values)
            # Row by row: tolist() of a 2-d array takes twice as long.
            lists.update(zip(names, map(np.ndarray.tolist, values)))
        return lists

    def column(
        self, name: str
    ) -> tuple[np.ndarray[Any, np.dtype[np.int64]], np.ndarray[Any, Any] | list[Value]]:
        """Return (steps where ``name`` is present, its values there).

        Raises:
            KeyError: the chunk holds no value of ``name``.
        """
        col = self.columns[name]
        return col.present_steps(self.steps), col.values


# Installed once the dataclass is made, so that its __init__ (and mypy) see a
# plain field: __init__ sets it through the descriptor.
Chunk.times = _Times()  # type: ignore[assignment]


def _row_maker(keys: tuple[str, ...]) -> Callable[..., dict[str, Value]] | None:
    """A function of one value per key that returns the dict of them, or None.

    ``lambda v0, v1: {"_step": v0, "loss": v1}``: a dict display of constant
    keys builds a row in one step, where filling a copy of a template costs a
    call per key, and a pass over all rows per key; a scan of a run makes a
    row for every step. Each key is written as its ``repr()``, which for a
    ``str`` (exactly; not a subclass, whose repr may be anything) is a string
    literal of exactly that string, so a key is never more than a string,
    whatever it holds. None for other keys, or more than 255 of them: the
    functions are cached, and one for hundreds of keys would be compiled
    from a source as long as all of them, for a scan seldom that wide.
    """
    # Checked before the cache, which takes equal tuples for the same.
    if len(keys) > 255 or any(type(key) is not str for key in keys):
        return None
    return _made_row_maker(keys)


@lru_cache(maxsize=64)
def _made_row_maker(keys: tuple[str, ...]) -> Callable[..., dict[str, Value]]:
    # _row_maker's function for keys that are all str.
    params = ", ".join(f"v{i}" for i in range(len(keys)))
    items = ", ".join(f"{key!r}: v{i}" for i, key in enumerate(keys))
    make: Callable[..., dict[str, Value]] = eval(f"lambda {params}: {{{items}}}")
    return make


def fill_rows(rows: Sequence[dict[str, Any]], key: str, values: Iterable[Any]) -> None:
    """Set ``rows[i][key] = values[i]`` for every row, in one pass.

    A pass of ``map`` rather than a loop of Python statements: reading a run
    step by step sets a value for every metric of every step.
    """
    deque(map(setitem, rows, repeat(key), values), maxlen=0)


# --------------------------------------------------------------------------
# Building


def check_metric_name(name: object) -> str:
    """Return ``name`` if a chunk may store it as a metric name, else raise.

    A metric name is a non-empty str of at most 256 characters, without
    control characters, and not ``_step`` or ``_timestamp``.

    Raises:
        InvalidNameError: naming the rule that was broken.
    """
    if not isinstance(name, str):
        raise InvalidNameError("metric key", name, "must be a string")
    reason = _name_problem(name)
    if reason:
        raise InvalidNameError("metric key", name, reason)
    return name


@lru_cache(maxsize=4096)
def _name_problem(name: str) -> str:
    # Cached: a run's chunks repeat the same names, and decode checks them all.
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"must be at most {MAX_NAME_CHARS} characters"
    if _CONTROL.search(name):
        return "must not contain control characters"
    if name in _RESERVED:
        return "is reserved for the step's own fields"
    return ""


def build_chunk(
    window: int,
    start: int,
    steps: Sequence[int],
    times: Sequence[float],
    metrics: Mapping[str, tuple[RowsLike | None, ValuesLike]],
    prefix: Mapping[str, Digest] | None = None,
    *,
    float32: bool = False,
) -> Chunk:
    """Build a chunk from the writer's columnar buffers.

    Args:
        window: the run's window size W, at least 1.
        start: the first step of the window, a multiple of W.
        steps: the steps of the segment, strictly increasing, in the window.
        times: wall-clock unix seconds, one per step.
        metrics: name -> (row indices into ``steps``, values at those rows);
            rows strictly increasing, or None for a value at every row. A
            metric with no value is left out.
        prefix: digests of the run's history before ``steps[0]`` (earlier
            segments of the same window included).
        float32: store float columns as float32 (kind f4), a lossy choice of
            the user's: each value is rounded to the nearest float32 and every
            NaN becomes the one quiet NaN. A column with a finite value beyond
            float32's range stays f8 in this chunk. Times are never narrowed.

    Returns:
        The chunk; each column's kind is chosen from the Python types of its
        values (all float: f8, or f4 with ``float32``; all int: i8; all bool:
        bool; all str: str; anything else, or None present: obj). The values
        of an f4 column are already rounded, so its digest and what a reader
        decodes agree.

    Raises:
        InvalidNameError: a metric name a chunk cannot hold.
        InvalidValueError: a value of a type gitruns does not store, or an
            int outside int64.
        ValueError: the arguments break the layout above (a writer bug) or
            exceed MAX_ROWS / MAX_METRICS.
    """
    steps_arr = _frozen(np.array(steps, dtype=np.int64, ndmin=1))
    times_arr = _frozen(np.array(times, dtype=np.float64, ndmin=1))
    if len(metrics) > MAX_METRICS:
        raise ValueError(
            f"{len(metrics)} metrics in one chunk, over {MAX_METRICS}; "
            "log fewer distinct keys per window"
        )
    problem = _layout_problem(window, start, steps_arr, times_arr)
    if problem:
        raise ValueError(f"cannot build a chunk: {problem}")

    n = len(steps_arr)
    columns: dict[str, Column] = {}
    for name, (rows, values) in metrics.items():
        check_metric_name(name)
        if len(values) == 0:
            logger.debug("metric %r has no value in this chunk; left out", name)
            continue
        columns[name] = _build_column(name, n, rows, values, float32)

    prefix_dict = dict(prefix or {})
    first = int(steps_arr[0]) if n else start
    for name, digest in prefix_dict.items():
        check_metric_name(name)
        if digest.last_step >= first:
            raise ValueError(
                f"prefix digest of {name!r} reaches step {digest.last_step}, "
                f"not before the chunk's first step {first}"
            )
    return Chunk(window, start, steps_arr, times_arr, columns, prefix_dict)


def _frozen(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    arr.setflags(write=False)
    return arr


def _build_column(
    name: str, n: int, rows: RowsLike | None, values: ValuesLike, float32: bool
) -> Column:
    count = len(values)
    if rows is None:
        # Present at every row: nothing to check but the count.
        if count != n:
            raise ValueError(f"metric {name!r}: {count} values for {n} rows")
        kind, stored = _typed_values(name, values)
        if float32 and kind == "f8":
            assert isinstance(stored, np.ndarray)
            kind, stored = _narrowed(name, stored)
        return Column(kind, None, stored)
    if len(rows) != count:
        raise ValueError(f"metric {name!r}: {len(rows)} rows for {count} values")
    if isinstance(rows, np.ndarray):
        rows_arr = rows.astype(np.int64)
    else:
        rows_arr = np.fromiter(rows, dtype=np.int64, count=count)
    if rows_arr[0] < 0 or rows_arr[-1] >= n or (rows_arr[1:] <= rows_arr[:-1]).any():
        raise ValueError(
            f"metric {name!r}: rows must be strictly increasing and in [0, {n})"
        )
    dense = count == n

    kind, stored = _typed_values(name, values)
    if float32 and kind == "f8":
        assert isinstance(stored, np.ndarray)
        kind, stored = _narrowed(name, stored)
    return Column(kind, None if dense else _frozen(rows_arr), stored)


# float32's quiet NaN: the one NaN an f4 column holds.
_F4_NAN = np.frombuffer(b"\x00\x00\xc0\x7f", dtype="<f4")[0]


def _narrowed(
    name: str, values: np.ndarray[Any, Any]
) -> tuple[str, np.ndarray[Any, Any]]:
    # Rounding is the user's choice; turning a finite value into an infinity
    # is not, so such a column keeps float64 in this chunk.
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = values.astype(np.float32)
    if np.count_nonzero(np.isinf(narrow)) != np.count_nonzero(np.isinf(values)):
        logger.debug("metric %r: a value is beyond float32; kept as float64", name)
        return "f8", values
    nans = np.isnan(narrow)
    if nans.any():
        narrow[nans] = _F4_NAN
    return "f4", _frozen(narrow.astype(np.float64))


def _typed_values(
    name: str, values: ValuesLike
) -> tuple[str, np.ndarray[Any, Any] | list[Value]]:
    # A numpy array already says its kind; no scan needed.
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "f":
            return "f8", _frozen(values.astype(np.float64))
        if values.dtype.kind in "iu":
            return "i8", _frozen(_int64_array(name, values.tolist()))
        if values.dtype.kind == "b":
            return "bool", _frozen(values.astype(np.bool_))
    seq: Sequence[Any] = values.tolist() if isinstance(values, np.ndarray) else values

    # The one pass over the values: the set of their types.
    types = set(map(type, seq))
    bases = {_base_kind(t) for t in types}
    if bases == {"f8"}:
        return "f8", _frozen(np.array(seq, dtype=np.float64))
    if bases == {"i8"}:
        return "i8", _frozen(_int64_array(name, seq))
    if bases == {"bool"}:
        return "bool", _frozen(np.array(seq, dtype=np.bool_))
    if types == {str}:
        return "str", list(seq)
    return "obj", [_scalar(name, v) for v in seq]


def _base_kind(t: type) -> str:
    # Subclasses (numpy.float64 is a float) count as their base type.
    if issubclass(t, (bool, np.bool_)):
        return "bool"
    if issubclass(t, (int, np.integer)):
        return "i8"
    if issubclass(t, (float, np.floating)):
        return "f8"
    return "obj"


def _int64_array(name: str, values: Sequence[Any]) -> np.ndarray[Any, Any]:
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        bad = next(v for v in values if not _INT64_MIN <= v <= _INT64_MAX)
        raise InvalidValueError(
            name, bad, "ints must fit in 64 bits; log it as a float or a str"
        ) from None


def _scalar(name: str, value: object) -> Value:
    # Exact types only, so a value decodes to what was logged (a float
    # subclass such as numpy.float64 comes back as float).
    if value is None or type(value) in _SCALARS:
        if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidValueError(
                name, value, "ints must fit in 64 bits; log it as a float or a str"
            )
        return value  # type: ignore[return-value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return _scalar(name, int(value))
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return str(value)
    raise InvalidValueError(
        name, value, "log a number, bool, str or None (convert other objects first)"
    )


# --------------------------------------------------------------------------
# Digests


def _digests_of(
    columns: dict[str, Column], steps: np.ndarray[Any, np.dtype[np.int64]]
) -> dict[str, Digest]:
    """The digest of each column, in the columns' order.

    The float columns present at every row, most of a training run's, are
    reduced together as the rows of one array: three numpy calls in all
    rather than a dozen per column, which is most of what a column of a
    thousand values costs. The sum of a row is the sum of that column alone,
    to the bit (numpy adds each row pairwise, as it adds a 1-d array). A
    column holding a NaN (left out of min, max and sum) or a zero at an end
    (whose sign numpy's min and max do not fix) takes the general path.
    """
    found: dict[str, Digest] = {}
    dense = _dense_floats(columns)
    if dense is not None:
        names, block = dense
        with np.errstate(invalid="ignore", over="ignore"):
            sums = block.sum(axis=1).tolist()
        lows, highs = block.min(axis=1).tolist(), block.max(axis=1).tolist()
        firsts, lasts = block[:, 0].tolist(), block[:, -1].tolist()
        count = block.shape[1]
        first_step, last_step = int(steps[0]), int(steps[-1])
        for i, name in enumerate(names):
            total, lo, hi = sums[i], lows[i], highs[i]
            if math.isnan(total) or lo == 0.0 or hi == 0.0:
                continue
            found[name] = Digest(
                count=count,
                first=firsts[i],
                last=lasts[i],
                first_step=first_step,
                last_step=last_step,
                min=lo,
                max=hi,
                sum=total,
                numeric_count=count,
            )
    return {
        name: found[name] if name in found else _digest_of(col, steps)
        for name, col in columns.items()
    }


def _dense_floats(
    columns: dict[str, Column],
) -> tuple[list[str], np.ndarray[Any, np.dtype[np.float64]]] | None:
    """The f8 columns present at every row, stacked as the rows of one array.

    None when there are fewer than two: one column gains nothing from it.
    """
    names: list[str] = []
    arrays: list[np.ndarray[Any, Any]] = []
    for name, col in columns.items():
        values = col.values if col.kind == "f8" and col.rows is None else None
        if isinstance(values, np.ndarray):
            names.append(name)
            arrays.append(values)
    if len(arrays) < 2:
        return None
    return names, np.stack(arrays)


def _digest_of(col: Column, steps: np.ndarray[Any, np.dtype[np.int64]]) -> Digest:
    first_row = 0 if col.rows is None else int(col.rows[0])
    last_row = len(steps) - 1 if col.rows is None else int(col.rows[-1])
    values = col.values
    count = len(values)
    lo: float | None = None
    hi: float | None = None
    total: float | None = None
    numeric_count = 0

    if col.kind in ("f8", "f4"):
        assert isinstance(values, np.ndarray)
        # Any NaN makes the sum NaN, so a sum that is a number means there is
        # no NaN to leave out: the common case costs three passes, not five.
        numeric = values
        total = _fsum(values)
        if math.isnan(total):
            numeric = values[~np.isnan(values)]
            total = _fsum(numeric) if len(numeric) else None
        numeric_count = len(numeric)
        if numeric_count:
            lo, hi = _extremes(numeric)
    elif col.kind == "i8":
        assert isinstance(values, np.ndarray)
        numeric_count = count
        lo, hi = float(values.min()), float(values.max())
        total = _fsum(values.astype(np.float64))
    elif col.kind == "obj":
        numbers = [
            v
            for v in values
            if type(v) is int or (type(v) is float and not math.isnan(v))
        ]
        numeric_count = len(numbers)
        if numeric_count:
            arr = np.array(numbers, dtype=np.float64)
            (lo, hi), total = _extremes(arr), _fsum(arr)

    first: Value
    last: Value
    if isinstance(values, np.ndarray):
        first, last = values[0].item(), values[-1].item()
    else:
        first, last = values[0], values[-1]
    return Digest(
        count=count,
        first=first,
        last=last,
        first_step=int(steps[first_row]),
        last_step=int(steps[last_row]),
        min=lo,
        max=hi,
        sum=total,
        numeric_count=numeric_count,
    )


def _fsum(values: np.ndarray[Any, Any]) -> float:
    # numpy's pairwise sum: fast, and far closer than a running sum; readers
    # in other languages may differ in the last bits (see docs/FORMAT.md).
    # +inf and -inf make NaN, and large values overflow: both are the sum's
    # right value, not something to warn a training loop about.
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.sum(values, dtype=np.float64))


# --------------------------------------------------------------------------
# Byte layout of numeric arrays
#
# Numbers are stored byte-shuffled: byte 0 of every value, then byte 1, and so
# on. The high bytes of a metric's values (sign, exponent, the top of the
# mantissa) barely change from step to step, so shuffled they form long runs
# that the zlib of Git's objects compresses; interleaved they do not. Delta
# coding (each value minus the one before, on the bit patterns, wrapping)
# turns a steady series (steps, times, a learning rate schedule) into a
# repetitive one first. Both are exact for every bit pattern.


def _shuffled(items: np.ndarray[Any, Any]) -> bytes:
    width = items.dtype.itemsize
    flat = np.ascontiguousarray(items).view(np.uint8)
    planes: bytes = flat.reshape(-1, width).T.tobytes()
    return planes


def _deltas(items: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # Along the last axis. Unsigned arrays wrap around silently, which is
    # what makes this exact.
    out: np.ndarray[Any, Any] = items.copy()
    out[..., 1:] -= items[..., :-1]
    return out


def _delta_pays(items: np.ndarray[Any, Any], deltas: np.ndarray[Any, Any]) -> Any:
    """Whether delta coding pays, for a column (or for each row of columns).

    The compressor gains where a byte repeats the one before it in its plane;
    the bytes that do not are counted for both codings (a cheap stand-in for
    trying).
    """
    return _byte_changes(deltas) < _byte_changes(items)


def _byte_changes(arr: np.ndarray[Any, Any]) -> Any:
    # Per array along the last axis: bytes unlike the same byte of the item
    # before.
    planes = arr.view(np.uint8).reshape(*arr.shape, arr.dtype.itemsize)
    return np.count_nonzero(planes[..., 1:, :] != planes[..., :-1, :], axis=(-2, -1))


def _unpack_numbers(
    kind: str, planes: bytes, count: int, delta: bool
) -> np.ndarray[Any, Any]:
    # The length was checked when the chunk was decoded.
    out = np.empty(count, dtype=_ARRAY_DTYPE[kind])
    _unshuffle_into(kind, planes, delta, out)
    return _frozen(out)


def _unshuffle_into(
    kind: str, planes: bytes, delta: bool, out: np.ndarray[Any, Any]
) -> None:
    """Write the values that a column's shuffled bytes hold into ``out``.

    ``out`` has the dtype of the kind's values (``_ARRAY_DTYPE``) and one
    item per value; a reader's slice of a whole run's array, say, so the
    bytes are copied once, straight to where they are read.
    """
    stored = _STORED[kind]
    count = len(out)
    # f8 and i8 land in place on a little-endian machine; f4 is widened.
    direct = out.dtype == stored
    target = out if direct else np.empty(count, dtype=stored)
    width = stored.itemsize
    items = target.view(_BITS[width])
    items.view(np.uint8).reshape(count, width)[...] = (
        np.frombuffer(planes, dtype=np.uint8).reshape(width, count).T
    )
    if delta:
        np.add.accumulate(items, out=items)
    if not direct:
        # Widening is exact; a signalling NaN becomes quiet, which numpy
        # would otherwise report as an invalid cast.
        with np.errstate(invalid="ignore"):
            out[...] = target


def values_into_rows(
    segments: Sequence[Sequence[Column]], out: np.ndarray[Any, Any]
) -> None:
    """Copy the values of the columns of one or more segments into rows of ``out``.

    ``segments[s][j]`` is column ``j`` of segment ``s``: row ``j`` of ``out``
    gets the values of column ``j`` of each segment in turn. The columns are
    of one kind whose values are stored as they are held (f8 or i8: ``out``
    has their dtype, and its rows may be slices of longer rows), and each
    holds as many values, ``out.shape[1]`` over the number of segments.

    Columns still packed are unshuffled straight into their rows, all at
    once: byte ``k`` of every value of every column is placed in one
    assignment, so each of the 8 passes runs along whole rows. A column at a
    time, a transposed copy runs along the 8 bytes of one value, then the
    next, which costs twice as much and more; the longer the rows, the
    faster they go.

    Raises:
        ValueError: columns of another kind, number or length than ``out``
            holds.
    """
    rows, length = out.shape
    count = length // len(segments) if segments else 0
    columns = [col for segment in segments for col in segment]
    kinds = {col.kind for col in columns}
    if (
        count * len(segments) != length
        or any(len(segment) != rows for segment in segments)
        or any(col.count != count for col in columns)
    ):
        raise ValueError(f"columns of {len(segments)} segments do not fit {out.shape}")
    if not kinds <= _TOGETHER or any(out.dtype != _STORED[k] for k in kinds):
        raise ValueError(f"columns of kinds {sorted(kinds)} into an {out.dtype} array")
    stored = [col._shuffled() for col in columns]
    if len(columns) < 2 or any(item is None for item in stored):
        for at, segment in enumerate(segments):
            part = out[:, at * count : (at + 1) * count]
            for col, row in zip(segment, part):
                col.values_into(row)
        return

    # The planes of each column, one after another: [segment, column, byte,
    # value]; splitting the rows' bytes into values is a view, as they are
    # contiguous.
    width = out.dtype.itemsize
    planes = np.frombuffer(b"".join(item[0] for item in stored if item), np.uint8)
    planes = planes.reshape(len(segments), rows, width, count)
    target = out.view(np.uint8).reshape(rows, len(segments), count, width)
    for k in range(width):
        target[:, :, :, k] = planes[:, :, k, :].transpose(1, 0, 2)
    items = out.view(_BITS[width]).reshape(rows, len(segments), count)
    for at, item in enumerate(stored):
        if item and item[1]:
            row = items[at % rows, at // rows]
            np.add.accumulate(row, out=row)


def _stored_items(name: str, col: Column) -> np.ndarray[Any, Any]:
    # The bit patterns a column of fixed width stores, as unsigned ints.
    stored = _STORED[col.kind]
    values = np.ascontiguousarray(col.values)
    if col.kind != "f4":
        return values.astype(stored, copy=False).view(_BITS[stored.itemsize])
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = values.astype(stored)
    # Only build_chunk(float32=True) and decode make f4 columns; a column made
    # by hand must hold float32 values already, or it would not read back.
    if not np.array_equal(
        narrow.astype(np.float64).view(np.int64),
        values.astype(np.float64).view(np.int64),
    ):
        raise ValueError(
            f"metric {name!r}: an f4 column holds values that are not float32; "
            "build it with build_chunk(..., float32=True)"
        )
    return narrow.view(_BITS[4])


# --------------------------------------------------------------------------
# zstd frames
#
# From version 3.0 each numeric array (times, steps as a bin, the values of
# f8, f4 and i8 columns) is one zstd frame holding the shuffled bytes above.
# Git's zlib inflates shuffled floats at about 1 GB/s and deflates them at
# 60 MB/s; zstd stores them as small several times faster both ways, and Git
# then keeps the chunk at zlib level 0 (RunStore.chunk_blob).

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Skippable frames carry other bytes than data: magic 0x184D2A50..5F.
_SKIPPABLE_MAGIC = b"\x2a\x4d\x18"
# The largest window a frame may ask a decoder for. The largest array of a
# chunk (MAX_ROWS float64, 8 MB) fits in it, so no valid frame needs more.
_MAX_WINDOW = 1 << 23
# The most bytes one frame of a chunk may hold: MAX_ROWS items of 8 bytes.
_MAX_FRAME = 8 * MAX_ROWS


class _Zstd(threading.local):
    """A zstd compressor and decompressor per thread, as zstandard asks."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL,
            write_checksum=False,
            write_content_size=True,
            write_dict_id=False,
        )
        self.decompressor = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)


_zstd = _Zstd()


def _framed(planes: bytes) -> bytes:
    """Return ``planes`` as one zstd frame that declares its content size."""
    frame: bytes = _zstd.compressor.compress(planes)
    return frame


class _Frame:
    """A zstd frame of a chunk whose header passed :func:`_frame_size`.

    What a lazy decode keeps of a column's values (or its times) until they
    are first read: the frame is inflated then, and refused then, with the
    ChunkFormatError an eager decode would have raised, if it does not
    inflate to exactly what it declares.
    """

    __slots__ = ("frame", "size", "source", "field", "metric")

    def __init__(
        self, frame: bytes, size: int, source: str, field: str, metric: str | None
    ) -> None:
        self.frame = frame
        self.size = size
        self.source = source
        self.field = field
        self.metric = metric

    def inflated(self) -> bytes:
        """The frame's content: ``size`` bytes."""
        # As _inflated() does, its header known to pass.
        try:
            data: bytes = _zstd.decompressor.decompress(
                self.frame, self.size, False, False
            )
            if len(data) == self.size:
                return data
        except zstandard.ZstdError:
            pass
        what = _bin_label(self.field, self.metric)
        return _inflated_slowly(self.frame, self.size, self.source, what)


def _frame_size(frame: bytes, size: int | None) -> int:
    """The content size ``frame`` declares, if its header passes; else -1.

    The header passes when the frame is a zstd frame (not a skippable one)
    that declares its content size, which is ``size`` (at most
    ``_MAX_FRAME`` when ``size`` is None) and not 0, and that needs no
    dictionary and a window of at most ``_MAX_WINDOW``.
    """
    try:
        header = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError:
        return -1
    declared: int = header.content_size
    if (
        frame.startswith(_ZSTD_MAGIC)
        and 0 < declared <= _MAX_FRAME
        and (size is None or declared == size)
        and not header.dict_id
        and header.window_size <= _MAX_WINDOW
    ):
        return declared
    return -1


def _inflated(
    frame: bytes, size: int | None, source: str, field: str, metric: str | None = None
) -> bytes:
    """Return the content of ``frame``, checked to be one zstd frame of ``size`` bytes.

    The header is read first: the frame must declare its content size, which
    must be ``size`` (at most ``_MAX_FRAME`` when ``size`` is None), need no
    dictionary and ask for a window of at most ``_MAX_WINDOW``. Only then is
    it decompressed, into exactly that many bytes, and nothing may follow it;
    so a hostile frame costs no more memory than the array the chunk says it
    holds.

    Args:
        frame: the bin's bytes.
        size: the bytes the chunk implies the frame holds; None for times,
            whose frame says how many rows there are.
        source: the chunk, for messages.
        field: the bin's key ("times", "steps", "values"), for messages.
        metric: the metric whose values the bin holds, for messages.
    """
    # The usual frame, in as few steps as its checks take (a read decodes
    # about ten per segment); messages are made only for a frame refused.
    declared = _frame_size(frame, size)
    if declared > 0:
        try:
            # (max_output_size, read_across_frames, allow_extra_data), passed
            # by position: their names cost a tenth of a small frame's time.
            data: bytes = _zstd.decompressor.decompress(frame, declared, False, False)
            if len(data) == declared:
                return data
        except zstandard.ZstdError:
            pass
    return _inflated_slowly(frame, size, source, _bin_label(field, metric))


def _bin_label(field: str, metric: str | None) -> str:
    # How messages name a bin: "times", or "metric 'loss': values".
    return field if metric is None else f"metric {metric!r}: {field}"


def _inflated_slowly(frame: bytes, size: int | None, source: str, what: str) -> bytes:
    # What _inflated does, one check at a time, to say what is wrong; and an
    # empty frame, which zstandard's one-shot call answers without reading.
    if not frame.startswith(_ZSTD_MAGIC):
        if frame[1:4] == _SKIPPABLE_MAGIC and frame[0] & 0xF0 == 0x50:
            reason = "is a skippable zstd frame, which holds no data"
        else:
            reason = f"is not a zstd frame (it starts {frame[:4].hex(' ') or 'empty'})"
        raise ChunkFormatError(source, f"{what} {reason}")
    with _Inflating(source, what):
        header = zstandard.get_frame_parameters(frame)
        declared = header.content_size
        fits = declared <= _MAX_FRAME if size is None else declared == size
        problem = ""
        if declared == zstandard.CONTENTSIZE_UNKNOWN:
            problem = "does not declare its content size"
        elif not fits:
            holds = f"at most {_MAX_FRAME}" if size is None else str(size)
            problem = f"declares {declared} bytes where the chunk holds {holds}"
        elif header.dict_id:
            problem = f"needs zstd dictionary {header.dict_id}; chunks use none"
        elif header.window_size > _MAX_WINDOW:
            problem = (
                f"asks for a window of {header.window_size} bytes, over {_MAX_WINDOW}"
            )
        if problem:
            raise ChunkFormatError(source, f"{what}: the zstd frame {problem}")

        decompressor = _zstd.decompressor
        if declared:
            data: bytes = decompressor.decompress(
                frame, max_output_size=declared, allow_extra_data=False
            )
        else:
            # decompress() answers b"" for an empty frame without reading
            # its blocks; a stream reads them, and says what follows.
            stream = decompressor.decompressobj()
            data = stream.decompress(frame)
            if not stream.eof or stream.unused_data:
                raise ChunkFormatError(
                    source, f"{what} is not one complete zstd frame and nothing else"
                )
    if len(data) != declared:
        raise ChunkFormatError(
            source,
            f"{what}: the zstd frame decompresses to {len(data)} bytes, "
            f"not the {declared} it declares",
        )
    return data


class _Inflating:
    """Turn zstandard's errors inside the block into ChunkFormatError.

    The codec's one mapping of its decompressor's errors, as ``_unpacking``
    is of msgpack's (gitruns.errors says which module maps which library's).
    The reason is ``what`` and that it is no valid frame, then zstandard's
    account in brackets. Only frames the fast path of :func:`_inflated`
    refuses come here, to be read slowly and told apart.

    Args:
        source: the chunk, for the message.
        what: the bin ("times", "metric 'loss': values").
    """

    __slots__ = ("source", "what")

    def __init__(self, source: str, what: str) -> None:
        self.source = source
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, zstandard.ZstdError):
            raise ChunkFormatError(
                self.source, f"{self.what} is not one valid zstd frame ({exc})"
            ) from None


# --------------------------------------------------------------------------
# Encoding


def encode_chunk(chunk: Chunk, *, check: bool = True) -> bytes:
    """Return the msgpack bytes of ``chunk`` (layout: docs/FORMAT.md).

    Args:
        chunk: what to encode.
        check: decode the bytes again before returning them, so that what
            encode_chunk writes, decode_chunk reads. The committer leaves it
            out for the chunks build_chunk made from checked rows (it costs
            half as much as encoding); a chunk made any other way needs it.

    Raises:
        InvalidValueError: a str value that is not valid unicode.
        ChunkTooLargeError: a chunk that encodes to more than MAX_CHUNK_BYTES.
        ValueError: a chunk that decode_chunk would refuse (a writer bug).
    """
    problem = _layout_problem(chunk.window, chunk.start, chunk.steps, chunk.times)
    if problem:
        raise ValueError(f"cannot encode a chunk: {problem}")
    n = len(chunk.steps)
    digests = chunk.digests()
    arrays = _Framer()
    dense = _dense_float_planes(chunk)

    columns: dict[str, dict[str, Any]] = {}
    for name in sorted(chunk.columns):
        col = chunk.columns[name]
        doc: dict[str, Any] = {"kind": col.kind}
        if col.rows is not None:
            mask = np.zeros(n, dtype=np.bool_)
            mask[col.rows] = True
            doc["present"] = np.packbits(mask, bitorder="little").tobytes()
        if name in dense:
            delta, planes = dense[name]
            if delta:
                doc["delta"] = True
            doc["values"] = arrays.framed_planes(planes)
        elif col.kind in _STORED:
            items = _stored_items(name, col)
            deltas = _deltas(items)
            if _delta_pays(items, deltas):
                doc["delta"] = True
                items = deltas
            doc["values"] = arrays.framed(items)
        else:
            doc["values"] = _encode_values(name, col)
        doc["digest"] = _digest_doc(digests[name])
        columns[name] = doc

    # Contiguous steps, the usual case, are stored as the first one alone.
    steps = chunk.steps
    contiguous = n > 0 and int(steps[-1]) - int(steps[0]) == n - 1
    times = chunk.times.astype(_STORED["f8"], copy=False).view(_BITS[8])
    document = {
        _MAGIC: [FORMAT_MAJOR, FORMAT_MINOR],
        "window": chunk.window,
        "start": chunk.start,
        "steps": int(steps[0])
        if contiguous
        else arrays.framed(_deltas(steps.astype(_STORED["i8"]).view(_BITS[8]))),
        "times": arrays.framed(_deltas(times)),
        "columns": columns,
        "prefix": {
            name: _digest_doc(chunk.prefix[name]) for name in sorted(chunk.prefix)
        },
    }
    data = _pack(document)
    size = max(len(data), arrays.plain)
    if size > MAX_CHUNK_BYTES:
        raise ChunkTooLargeError(
            int(chunk.steps[0]),
            n,
            size,
            MAX_CHUNK_BYTES,
            "encode its steps as two chunks or more",
        )

    # Read it back, so no chunk is stored that a reader would refuse (a Chunk
    # made by hand, or a prefix that overlaps the steps).
    if check:
        try:
            decode_chunk(data, source="being written")
        except ChunkFormatError as exc:
            reason = exc.reason
            raise ValueError(f"refusing to write a malformed chunk: {reason}") from None
    return data


class _Framer:
    """Shuffles and compresses a chunk's numeric arrays, counting their bytes."""

    def __init__(self) -> None:
        self.plain = 0

    def framed(self, items: np.ndarray[Any, Any]) -> bytes:
        """Return ``items`` byte-shuffled, as one zstd frame."""
        return self.framed_planes(_shuffled(items))

    def framed_planes(self, planes: bytes) -> bytes:
        """Return bytes shuffled already as one zstd frame."""
        self.plain += len(planes)
        return _framed(planes)


def _dense_float_planes(chunk: Chunk) -> dict[str, tuple[bool, bytes]]:
    """The f8 columns present at every row: whether delta coding pays, and planes.

    As :func:`_digests_of` does for digests, the columns are coded together
    as the rows of one array, with exactly the bytes and choices of
    ``_stored_items``, ``_delta_pays`` and ``_shuffled`` one column at a time.
    """
    dense = _dense_floats(chunk.columns)
    if dense is None:
        return {}
    names, block = dense
    items = block.astype(_STORED["f8"], copy=False).view(_BITS[8])
    deltas = _deltas(items)
    k, n = items.shape
    pays = _delta_pays(items, deltas)
    chosen = np.where(pays[:, None], deltas, items)
    planes = np.ascontiguousarray(chosen.view(np.uint8).reshape(k, n, 8).swapaxes(1, 2))
    return {name: (bool(pays[i]), planes[i].tobytes()) for i, name in enumerate(names)}


def _encode_values(name: str, col: Column) -> bytes:
    # bool, str and obj; the kinds of fixed width are shuffled above.
    if col.kind == "bool":
        return np.asarray(col.values).astype(np.uint8).tobytes()
    try:
        return _pack(list(col.values))
    except UnicodeEncodeError as exc:
        raise InvalidValueError(name, exc.object, "not valid unicode") from None


def _digest_doc(d: Digest) -> list[Any]:
    # An array, not a map: a run's chunks hold one digest per metric twice
    # over, and keyless arrays unpack twice as fast.
    return [
        d.count,
        d.first,
        d.last,
        d.first_step,
        d.last_step,
        d.min,
        d.max,
        d.sum,
        d.numeric_count,
    ]


def _pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True, use_single_float=False)
    return data


def encode_digests(digests: Mapping[str, Digest]) -> bytes:
    """Return the msgpack bytes of a map of digests (a run's totals, say).

    The document is ``{"gitruns.digests": [major, minor], "digests": {...}}``
    with each digest laid out as in a chunk.
    """
    return _pack(
        {
            _DIGESTS_MAGIC: [FORMAT_MAJOR, FORMAT_MINOR],
            "digests": {name: _digest_doc(digests[name]) for name in sorted(digests)},
        }
    )


# --------------------------------------------------------------------------
# Decoding


def decode_chunk(
    data: bytes,
    *,
    source: str = "chunk",
    verify: bool = False,
    lazy: bool = False,
) -> Chunk:
    """Decode and validate a chunk that may come from an untrusted remote.

    The structure is always checked in full: types, lengths, limits, step
    order and window, names, and each stored digest's shape, counts, steps and
    what its column's kind implies. A decoded chunk computes its own digests
    from its values, so a stored column digest never leaks into a summary
    unchecked. The zstd frames of numeric arrays are all checked and
    inflated here (but see ``lazy``); a column's values are unpacked from
    those bytes when first read, and nothing about them is left that could
    fail.

    Args:
        data: the blob's bytes.
        source: how errors name the blob (a path or object id).
        verify: also compare every stored column digest's first, last, min,
            max, sum and numeric count with the values (O(values); what hooks
            want).
        lazy: leave what a reader of some values may not use to when it is
            first used: the prefix digests, checked and built when the
            chunk's ``prefix`` is first read (a reader of history never
            reads them, and they cost a tenth of a decode), and the zstd
            frames of the times and of the columns' values, whose headers are
            checked (and what they declare counted) now, but which are
            inflated when first read. Either raises the ChunkFormatError a
            decode would have then. Ignored with ``verify``, which checks
            everything now.

    Raises:
        UnsupportedVersionError: the chunk has a newer major format version.
        ChunkFormatError: anything else malformed; nothing else is raised.
    """
    try:
        doc, major = _unpack_document(data, _MAGIC, source)
        lazy = lazy and not verify
        return _chunk_from(doc, source, verify, framed=major >= 3, lazy=lazy)
    except ChunkFormatError:
        raise
    except Exception as exc:
        raise _unexpected(source, exc) from exc


def _unexpected(source: str, exc: Exception) -> ChunkFormatError:
    """The error for an exception that no check of a decode raised itself.

    Every check raises ChunkFormatError itself. A check that was missed still
    meets the caller as the one error type, never as a crash; the tests and
    the fuzz harness fail when this is called.
    """
    logger.debug("unexpected error decoding %s", source, exc_info=True)
    return ChunkFormatError(source, f"{type(exc).__name__}: {exc}")


def decode_digests(data: bytes, *, source: str = "digests") -> dict[str, Digest]:
    """Decode and validate the bytes of ``encode_digests``.

    Raises:
        UnsupportedVersionError: a newer major format version.
        ChunkFormatError: anything else malformed.
    """
    try:
        doc, _ = _unpack_document(data, _DIGESTS_MAGIC, source)
        digests = _get(doc, "digests", dict, source)
        return _digest_map(digests, _INT64_MAX + 1, source)
    except ChunkFormatError:
        raise
    except Exception as exc:
        raise _unexpected(source, exc) from exc


def _unpack_document(
    data: bytes, magic: str, source: str
) -> tuple[dict[str, Any], int]:
    # The document's known entries, and its major version.
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ChunkFormatError(source, f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_CHUNK_BYTES:
        raise ChunkFormatError(
            source, f"{len(data)} bytes, over the limit of {MAX_CHUNK_BYTES}"
        )
    major = _check_version(data, magic, source)
    with _unpacking(source, "not valid msgpack"):
        return _read_document(data, magic, source), major


@contextmanager
def _unpacking(source: str, what: str) -> Iterator[None]:
    """Turn msgpack's errors inside the block into ChunkFormatError.

    The codec's one mapping of its parser's errors (gitruns.errors says which
    module maps which library's). The reason is ``what``, then msgpack's
    account in brackets. RecursionError is msgpack's too: its pure-Python
    fallback nests by recursion.

    Args:
        source: the chunk, for the message.
        what: what was wrong ("not valid msgpack", "metric 'loss': bad values").
    """
    try:
        yield
    except ChunkFormatError:
        raise
    except (ValueError, msgpack.UnpackException, RecursionError) as exc:
        raise ChunkFormatError(source, f"{what} ({_why(exc)})") from None


def _why(exc: BaseException) -> str:
    # What went wrong in msgpack's words, where it has some: StackError and
    # OutOfData carry no text.
    if isinstance(exc, msgpack.StackError):
        return f"containers nested more than {_MAX_NESTING} deep"
    if isinstance(exc, msgpack.OutOfData):
        return "the document is truncated"
    return str(exc) or type(exc).__name__


#: Why a map holding one key twice is refused: readers that keep the first
#: and readers that keep the last would see different data.
_TWICE = "a map holds a key twice, so readers could differ on its value"


def _read_document(data: bytes, magic: str, source: str) -> dict[str, Any]:
    """Return a document's known entries, reading it once from the front.

    The document, ``columns`` and the digest map are read entry by entry
    from their headers. An entry of the document under a key this version
    does not know is skipped by the msgpack reader without being built
    (docs/FORMAT.md, section 11), whatever it holds. A column is built in
    one call, limited to a map of a few entries holding no map, and loses
    its unknown entries at once. Arrays are short and counted. So a decode
    costs memory in proportion to what it uses, never to what a hostile
    document packs beside it.
    """
    # How many maps the value being unpacked may hold (a column is one), and
    # how many arrays the document has held. No hook refers to the unpacker:
    # a reference cycle would keep its copy of the document alive.
    maps = [0]
    arrays = [0]

    def count_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        maps[0] -= 1
        if maps[0] < 0:
            raise ChunkFormatError(source, "a map where the format has a value")
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise ChunkFormatError(source, _TWICE)
        return obj

    def count_array(items: list[Any]) -> list[Any]:
        arrays[0] += 1
        if arrays[0] > _MAX_ARRAYS:
            raise ChunkFormatError(source, f"more than {_MAX_ARRAYS} arrays")
        return items

    unpacker = msgpack.Unpacker(
        raw=False,
        max_buffer_size=len(data) or 1,
        max_bin_len=MAX_CHUNK_BYTES,
        max_str_len=MAX_CHUNK_BYTES,
        max_array_len=_MAX_LOOSE_ARRAY,
        max_map_len=_MAX_COLUMN_ENTRIES,
        max_ext_len=0,
        object_pairs_hook=count_map,
        # Every array takes a byte at least, so a document no longer than the
        # limit cannot pass it: counting would cost a call per digest.
        list_hook=count_array if len(data) > _MAX_ARRAYS else None,
    )
    unpacker.feed(data)
    unpack, skip = unpacker.unpack, unpacker.skip

    def header(what: str) -> int:
        # The format's large maps are read by their headers, never built
        # whole; read_map_header does not apply max_map_len.
        with _unpacking(source, f"{what} is not a map"):
            count: int = unpacker.read_map_header()
        if count > MAX_METRICS:
            raise ChunkFormatError(
                source, f"{what} has {count} entries, over {MAX_METRICS}"
            )
        return count

    def key() -> str:
        maps[0] = 0
        name = unpack()
        if type(name) is not str:
            raise ChunkFormatError(
                source, f"a map key is a {type(name).__name__}, not a str"
            )
        return name

    def small_map(maps_inside: int) -> dict[Any, Any] | None:
        # A map of at most 15 entries (a fixmap: most chunks' columns and
        # prefix) is built in one call; its maps are counted as it is. Its
        # keys are checked with the metric names, in _chunk_from.
        at = unpacker.tell()
        if at < len(data) and 0x80 <= data[at] <= 0x8F:
            maps[0] = 1 + maps_inside * (data[at] & 0x0F)
            found: dict[Any, Any] = unpack()
            return found
        return None

    def new_key(taken: Container[str]) -> str:
        name = key()
        if name in taken:
            raise ChunkFormatError(source, f"{_TWICE} ({name!r})")
        return name

    values = _DOCUMENT_VALUES[magic]
    digest_map = _DIGEST_MAPS[magic]
    doc: dict[str, Any] = {}
    seen: set[str] = set()
    for _ in range(header("the document")):
        entry = new_key(seen)
        seen.add(entry)
        if entry in values:
            doc[entry] = unpack()
        elif entry == digest_map:
            digests = small_map(0)
            if digests is None:
                digests = {}
                for _ in range(header(entry)):
                    name = new_key(digests)
                    digests[name] = unpack()
            doc[entry] = digests
        elif entry == "columns" and magic == _MAGIC:
            columns = small_map(1)
            if columns is None:
                columns = {}
                for _ in range(header(entry)):
                    name = new_key(columns)
                    maps[0] = 1
                    columns[name] = unpack()
            for name, column in columns.items():
                if type(column) is dict and not column.keys() <= _COLUMN_KEYS:
                    # Keys of a later minor version: not kept.
                    _check_keys(column, source)
                    columns[name] = {
                        k: v for k, v in column.items() if k in _COLUMN_KEYS
                    }
            doc[entry] = columns
        else:
            skip()

    extra = len(data) - unpacker.tell()
    if extra:
        raise ChunkFormatError(source, f"{extra} bytes after the document")
    return doc


def _check_keys(column: dict[Any, Any], source: str) -> None:
    for name in column:
        if type(name) is not str:
            raise ChunkFormatError(
                source, f"a map key is a {type(name).__name__}, not a str"
            )


# Room for a map header, a key of up to 64 bytes and [major, minor].
_VERSION_ENTRY_BYTES = 128


# What every document of this major version starts with, after its fixmap
# header: the magic key, then a fixarray of 2 and the major as a fixint.
_CURRENT_HEAD = {
    magic: msgpack.packb(magic) + bytes([0x92, FORMAT_MAJOR])
    for magic in (_MAGIC, _DIGESTS_MAGIC)
}

#: The oldest major version this reader reads. Released gitruns wrote 2.x,
#: whose numeric arrays are plain bins; 3.x holds them as zstd frames.
_OLDEST_MAJOR = 2


def compressed_chunk(data: bytes) -> bool:
    """Whether ``data`` looks like a chunk whose numbers are compressed already.

    A storage hint, told from the first bytes without decoding anything: a
    chunk of this major version keeps its numeric arrays as zstd frames, so
    zlib (Git's compression) would spend time on it for almost nothing. A
    wrong answer costs only that time or a little room; it checks nothing.
    """
    head = _CURRENT_HEAD[_MAGIC]
    return (
        len(data) > len(head) and 0x80 <= data[0] <= 0x8F and data.startswith(head, 1)
    )


def _check_version(data: bytes, magic: str, source: str) -> int:
    """Return the document's major version, if this reader reads it.

    Raises:
        UnsupportedVersionError: a newer major version.
        ChunkFormatError: no version entry first, a malformed version, or a
            major version older than any released gitruns wrote.
    """
    # The common case, a document of this major version whose minor is a
    # fixint, is told by its bytes; the Unpacker below reads anything else.
    head = _CURRENT_HEAD[magic]
    minor_at = 1 + len(head)
    if (
        len(data) > minor_at + 1
        and 0x80 <= data[0] <= 0x8F
        and data[minor_at] < 0x80
        and data[1:minor_at] == head
    ):
        return FORMAT_MAJOR

    # The version is read on its own first, so a newer major version is
    # reported as such even if the rest uses a layout this reader rejects.
    unpacker = msgpack.Unpacker(
        raw=False,
        max_buffer_size=_VERSION_ENTRY_BYTES,
        max_array_len=2,
        max_map_len=0,
        max_str_len=64,
        max_bin_len=0,
        max_ext_len=0,
    )
    # Only the head is fed: the Unpacker copies what it is given.
    unpacker.feed(memoryview(data)[:_VERSION_ENTRY_BYTES])
    with _unpacking(source, "not a gitruns document: no version entry"):
        unpacker.read_map_header()
        key = unpacker.unpack()
        version = unpacker.unpack()
    if key != magic:
        raise ChunkFormatError(
            source, f"not a gitruns document (first key {key!r:.40}, not {magic!r})"
        )
    if (
        not isinstance(version, list)
        or len(version) != 2
        or not all(type(v) is int and v >= 0 for v in version)
    ):
        raise ChunkFormatError(source, f"bad format version {version!r:.40}")
    major: int = version[0]
    if major > FORMAT_MAJOR:
        raise UnsupportedVersionError(source, f"{major}.{version[1]}", FORMAT_MAJOR)
    if major < _OLDEST_MAJOR:
        # Version 1 was a layout of development builds, never released.
        raise ChunkFormatError(
            source,
            f"format version {major}.{version[1]} is older than any released "
            f"gitruns wrote (they write {_OLDEST_MAJOR}.x and later)",
        )
    return major


def _chunk_from(
    doc: dict[str, Any],
    source: str,
    verify: bool,
    *,
    framed: bool,
    lazy: bool = False,
) -> Chunk:
    window = _get_int(doc, "window", 1, _INT64_MAX, source)
    start = _get_int(doc, "start", 0, _INT64_MAX, source)
    times_bin = _get(doc, "times", bytes, source)
    columns_doc = _get(doc, "columns", dict, source)
    prefix_doc = _get(doc, "prefix", dict, source)
    arrays = _Arrays(source, framed, lazy)

    # Times say how many rows there are; steps are checked against them.
    times_planes = arrays.times(times_bin)
    size = _length(times_planes)
    if size % 8:
        raise ChunkFormatError(source, f"times is {size} bytes, not 8 * n")
    n = size // 8
    if n > MAX_ROWS:
        raise ChunkFormatError(source, f"{n} steps, over the limit of {MAX_ROWS}")
    problem = _window_problem(window, start)
    if problem:
        raise ChunkFormatError(source, problem)
    steps = _steps_from(doc.get("steps"), n, start, window, arrays)
    # Chunk.times unpacks them when first read (see _Times).
    times: Any = Column._packed("f8", None, n, times_planes, True)

    # Columns, each checked against its stored digest.
    if len(columns_doc) > MAX_METRICS:
        raise ChunkFormatError(
            source, f"{len(columns_doc)} metrics, over {MAX_METRICS}"
        )
    columns: dict[str, Column] = {}
    digests: dict[str, Digest] = {}
    ends = (int(steps[0]), int(steps[-1])) if n else (0, 0)
    for name, col_doc in columns_doc.items():
        _check_name(name, source)
        col, stored = _column_from(name, col_doc, n, arrays)
        mismatch = _quick_mismatch(stored, col, steps, ends)
        if verify and not mismatch:
            digests[name] = _digest_of(col, steps)
            mismatch = _digest_mismatch(_new_digest(stored), digests[name])
        if mismatch:
            raise ChunkFormatError(
                source, f"metric {name!r}: digest {mismatch} does not match the values"
            )
        columns[name] = col

    # A window flushed in parts has several segments: the prefix of a later
    # one covers earlier steps of the same window, so bound it by the first step.
    before = int(steps[0]) if n else start
    prefix: Mapping[str, Digest]
    if lazy:
        prefix = _Prefix(prefix_doc, before, source)
    else:
        prefix = _digest_map(prefix_doc, before, source)
    chunk = Chunk(window, start, steps, times, columns, prefix)
    if verify:
        object.__setattr__(chunk, "_digests", digests)
    return chunk


class _Arrays:
    """Reads the numeric arrays of one chunk: zstd frames (3.x) or plain (2.x).

    Either way it gives the shuffled bytes of section 5 of docs/FORMAT.md,
    of the length the chunk implies (or, when lazy, the frame of the times
    or of a column's values, its header checked, to inflate when first
    read), and keeps count of what frames inflate to, so that a chunk's
    arrays never take more than MAX_CHUNK_BYTES whatever their frames
    declare (a 2.x chunk's plain bins are in its bytes, which have that
    limit already).
    """

    def __init__(self, source: str, framed: bool, lazy: bool = False) -> None:
        self.source = source
        self.framed = framed
        self.lazy = lazy
        self.left = MAX_CHUNK_BYTES

    def times(self, blob: bytes) -> bytes | _Frame:
        """The planes of ``times``, whose length says how many rows there are."""
        if not self.framed:
            return blob
        planes = self._inflated(blob, None, "times", None)
        self._spend(_length(planes))
        return planes

    def steps(self, blob: bytes, count: int) -> bytes:
        """The planes of the ``count`` int64 steps that a bin holds."""
        if self._plain(blob, "i8", count, None):
            return blob
        return _inflated(blob, _STORED["i8"].itemsize * count, self.source, "steps")

    def values(self, blob: bytes, kind: str, count: int, metric: str) -> bytes | _Frame:
        """The planes of the ``count`` values of ``kind`` of ``metric``."""
        if self._plain(blob, kind, count, metric):
            return blob
        return self._inflated(blob, _STORED[kind].itemsize * count, "values", metric)

    def _plain(self, blob: bytes, kind: str, count: int, metric: str | None) -> bool:
        # Whether the bin is the planes themselves (2.x), checked; else its
        # frame's size is counted, before it is inflated.
        size = _STORED[kind].itemsize * count
        if self.framed:
            self._spend(size)
            return False
        if len(blob) != size:
            field = "steps" if metric is None else "values"
            holds = f"{count} steps" if metric is None else f"{count} {kind} values"
            raise ChunkFormatError(
                self.source,
                f"{_bin_label(field, metric)} is {len(blob)} bytes for {holds}",
            )
        return True

    def _inflated(
        self, frame: bytes, size: int | None, field: str, metric: str | None
    ) -> bytes | _Frame:
        # Inflated now, or kept when lazy and its header passes (a frame that
        # fails is inflated now, to be refused with what is wrong with it).
        if self.lazy:
            declared = _frame_size(frame, size)
            if declared > 0:
                return _Frame(frame, declared, self.source, field, metric)
        return _inflated(frame, size, self.source, field, metric)

    def _spend(self, size: int) -> None:
        # Checked before a frame is inflated: what it declares is all it makes.
        self.left -= size
        if self.left < 0:
            raise ChunkFormatError(
                self.source,
                f"the numeric arrays inflate to over {MAX_CHUNK_BYTES} bytes, "
                "the limit of a chunk",
            )


def _length(planes: bytes | _Frame) -> int:
    # The bytes of an array, inflated or not yet.
    return planes.size if isinstance(planes, _Frame) else len(planes)


def _steps_from(
    value: object, n: int, start: int, window: int, arrays: _Arrays
) -> np.ndarray[Any, np.dtype[np.int64]]:
    # An int is the first of n contiguous steps; a bin holds them delta-coded.
    source = arrays.source
    if type(value) is int:
        if not (n and start <= value and value + n <= start + window):
            raise ChunkFormatError(
                source,
                f"{n} steps from {value} are not in [{start}, {start + window})",
            )
        return _frozen(np.arange(value, value + n, dtype=np.int64))
    if type(value) is not bytes:
        raise ChunkFormatError(
            source, f"field 'steps' must be an int or a bin, not {type(value).__name__}"
        )
    planes = arrays.steps(value, n)
    steps = _unpack_numbers("i8", planes, n, delta=True)
    problem = _steps_problem(steps, start, window)
    if problem:
        raise ChunkFormatError(source, problem)
    return steps


def _layout_problem(
    window: object,
    start: object,
    steps: np.ndarray[Any, Any],
    times: np.ndarray[Any, Any],
) -> str:
    problem = _window_problem(window, start)
    if problem:
        return problem
    assert isinstance(window, int) and isinstance(start, int)
    n = len(steps)
    if steps.ndim != 1 or times.shape != (n,):
        return f"{n} steps but {times.shape} times"
    if n > MAX_ROWS:
        return f"{n} steps, over the limit of {MAX_ROWS}"
    return _steps_problem(steps, start, window)


def _window_problem(window: object, start: object) -> str:
    if type(window) is not int or window < 1:
        return f"window must be an int >= 1, not {window!r:.40}"
    if type(start) is not int or start < 0 or start % window:
        return f"start {start!r:.40} is not a multiple of the window {window}"
    if start + window - 1 > _INT64_MAX:
        return f"window {window} at {start} passes the int64 step range"
    return ""


def _steps_problem(
    steps: np.ndarray[Any, np.dtype[np.int64]], start: int, window: int
) -> str:
    n = len(steps)
    if n and (steps[0] < start or steps[-1] >= start + window):
        return f"steps {steps[0]}..{steps[-1]} are outside [{start}, {start + window})"
    if n > 1 and not (steps[1:] > steps[:-1]).all():
        return "steps are not strictly increasing"
    return ""


def _column_from(
    name: str, doc: object, n: int, arrays: _Arrays
) -> tuple[Column, _DigestFields]:
    source = arrays.source
    if type(doc) is not dict:
        raise ChunkFormatError(source, f"metric {name!r}: column is not a map")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ChunkFormatError(source, f"metric {name!r}: unknown kind {kind!r:.40}")

    # Presence: a little-endian bitmap over the rows, absent when dense.
    rows: np.ndarray[Any, np.dtype[np.int64]] | None = None
    count = n
    present = doc.get("present")
    if present is not None:
        if type(present) is not bytes or len(present) != (n + 7) // 8:
            raise ChunkFormatError(
                source, f"metric {name!r}: present must be {(n + 7) // 8} bytes"
            )
        bits = np.unpackbits(np.frombuffer(present, dtype=np.uint8), bitorder="little")
        if bits[n:].any():
            raise ChunkFormatError(
                source, f"metric {name!r}: present has bits past the rows"
            )
        rows = _frozen(np.flatnonzero(bits).astype(np.int64, copy=False))
        count = len(rows)
        if count == n:
            raise ChunkFormatError(
                source, f"metric {name!r}: present given for a dense column"
            )
    if count == 0:
        raise ChunkFormatError(source, f"metric {name!r}: the column holds no value")

    blob = doc.get("values")
    if type(blob) is not bytes:
        raise ChunkFormatError(source, f"metric {name!r}: values must be a bin")
    delta = doc.get("delta", False)
    stored = _STORED.get(kind)
    if delta is not False and (delta is not True or stored is None):
        raise ChunkFormatError(
            source, f"metric {name!r}: delta must be true, and only for f8, f4, i8"
        )
    if kind == "bool" and len(blob) != count:
        raise ChunkFormatError(
            source,
            f"metric {name!r}: values is {len(blob)} bytes for {count} bool values",
        )

    # Numbers are inflated now, so that every frame is checked (when lazy,
    # its header now and the rest when first read), and unpacked when read:
    # any bit pattern of the right length is a value.
    if stored is not None:
        planes = arrays.values(blob, kind, count, name)
        col = Column._packed(kind, rows, count, planes, delta)
    else:
        col = Column(kind, rows, _values_from(name, kind, blob, count, source))
    return col, _digest_fields(name, doc.get("digest"), source)


def _values_from(
    name: str, kind: str, blob: bytes, count: int, source: str
) -> np.ndarray[Any, Any] | list[Value]:
    # bool, str and obj: the kinds whose bytes can be invalid.
    if kind == "bool":
        raw = np.frombuffer(blob, dtype=np.uint8)
        if (raw > 1).any():
            raise ChunkFormatError(source, f"metric {name!r}: a bool is not 0 or 1")
        return raw.view(np.bool_)

    items = _unpack_scalars(name, blob, count, source)
    types = set(map(type, items))
    if kind == "str" and types != {str}:
        raise ChunkFormatError(source, f"metric {name!r}: a str column holds a non-str")
    if kind == "obj":
        if not types <= set(_SCALARS):
            raise ChunkFormatError(
                source, f"metric {name!r}: an obj column holds a container"
            )
        if int in types and not all(_is_value(v) for v in items if type(v) is int):
            raise ChunkFormatError(source, f"metric {name!r}: an int outside int64")
    return items


def _unpack_scalars(name: str, blob: bytes, count: int, source: str) -> list[Value]:
    # The nested array is read header first and then item by item with
    # containers forbidden, so a hostile array costs no more than its bytes.
    unpacker = msgpack.Unpacker(
        raw=False,
        max_buffer_size=len(blob) or 1,
        max_array_len=0,
        max_map_len=0,
        max_bin_len=0,
        max_ext_len=0,
        max_str_len=len(blob),
    )
    unpacker.feed(blob)
    with _unpacking(source, f"metric {name!r}: bad values"):
        declared = unpacker.read_array_header()
        if declared == count:
            items: list[Value] = list(islice(unpacker, count))
    if declared != count:
        raise ChunkFormatError(
            source, f"metric {name!r}: {declared} values for {count} present rows"
        )
    if len(items) != count or unpacker.tell() != len(blob):
        raise ChunkFormatError(
            source, f"metric {name!r}: values array is truncated or padded"
        )
    return items


# Digest fields in the order of Digest's constructor.
_DigestFields: TypeAlias = tuple[
    int, Value, Value, int, int, "float | None", "float | None", "float | None", int
]
_DIGEST_FIELDS = tuple(f.name for f in fields(Digest))
_DIGEST_LEN = len(_DIGEST_FIELDS)


def _new_digest(values: _DigestFields) -> Digest:
    # Decoding builds one digest per metric per chunk from checked fields;
    # filling __dict__ skips the nine object.__setattr__ calls of a frozen
    # dataclass's __init__, which would be most of a decode's time.
    digest = object.__new__(Digest)
    digest.__dict__.update(zip(_DIGEST_FIELDS, values))
    return digest


def _digest_map(doc: dict[str, Any], before: int, source: str) -> dict[str, Digest]:
    if len(doc) > MAX_METRICS:
        raise ChunkFormatError(source, f"{len(doc)} digests, over {MAX_METRICS}")
    out: dict[str, Digest] = {}
    for name, item in doc.items():
        _check_name(name, source)
        values = _digest_fields(name, item, source, prefix=True)
        if values[4] >= before:
            raise ChunkFormatError(
                source,
                f"prefix digest of {name!r} reaches step {values[4]}, "
                f"not before the chunk's first step {before}",
            )
        out[name] = _new_digest(values)
    return out


class _Prefix(Mapping[str, Digest]):
    """The prefix digests of a chunk, checked and built when first read.

    What ``decode_chunk(..., lazy=True)`` gives a chunk: its stored
    prefix, unpacked within the document's limits but not yet checked. Any
    read of it (a name, a digest, its length) checks every digest first, as
    decode_chunk would have, so a malformed prefix is never seen, only
    refused with ChunkFormatError.
    """

    __slots__ = ("_doc", "_before", "_source", "_digests")

    def __init__(self, doc: dict[str, Any], before: int, source: str) -> None:
        self._doc: dict[str, Any] | None = doc
        self._before = before
        self._source = source
        self._digests: dict[str, Digest] | None = None

    def _checked(self) -> dict[str, Digest]:
        digests = self._digests
        if digests is None:
            doc = self._doc
            if doc is None:
                # Another thread checked them between the two reads above.
                return self._checked()
            try:
                digests = _digest_map(doc, self._before, self._source)
            except ChunkFormatError:
                raise
            except Exception as exc:
                raise _unexpected(self._source, exc) from exc
            # _digests first: a thread that finds _doc gone finds it set.
            self._digests = digests
            self._doc = None
        return digests

    def __getitem__(self, name: str) -> Digest:
        return self._checked()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._checked())

    def __len__(self) -> int:
        return len(self._checked())

    def __repr__(self) -> str:
        if self._digests is None:
            return "<prefix digests, not read yet>"
        return repr(self._digests)


def _digest_fields(
    name: str, doc: object, source: str, *, prefix: bool = False
) -> _DigestFields:
    """Return a stored digest's fields, checked one by one and against each other."""
    if type(doc) is not list or len(doc) < _DIGEST_LEN:
        raise _bad_digest(name, source, prefix, f"is not an array of {_DIGEST_LEN}")
    # Later minor versions may append fields; they are ignored here.
    count, first, last, first_step, last_step, lo, hi, total, numeric_count = (
        doc if len(doc) == _DIGEST_LEN else doc[:_DIGEST_LEN]
    )

    if not (
        type(count) is int
        and type(numeric_count) is int
        and type(first_step) is int
        and type(last_step) is int
    ):
        raise _bad_digest(name, source, prefix, "counts and steps must be ints")
    if not (
        1 <= count <= _INT64_MAX
        and 0 <= numeric_count <= count
        and 0 <= first_step <= last_step <= _INT64_MAX
    ):
        raise _bad_digest(name, source, prefix, "counts or steps out of range")
    if (count == 1) != (first_step == last_step):
        raise _bad_digest(name, source, prefix, "steps do not match the count")
    # Ints must fit in int64; the other scalars are values as they are.
    if not (
        (type(first) in _UNBOUNDED or _is_value(first))
        and (type(last) in _UNBOUNDED or _is_value(last))
    ):
        raise _bad_digest(name, source, prefix, "first/last is not a value")
    if numeric_count == 0:
        if not (lo is None and hi is None and total is None):
            raise _bad_digest(name, source, prefix, "has stats but no numbers")
    else:
        if not (type(lo) is float and type(hi) is float and type(total) is float):
            raise _bad_digest(name, source, prefix, "min/max/sum must be floats")
        if not lo <= hi:
            raise _bad_digest(name, source, prefix, "min is not <= max")
    return (count, first, last, first_step, last_step, lo, hi, total, numeric_count)


# The value types that are values whatever they hold.
_UNBOUNDED = frozenset({float, str, bool, type(None)})


def _bad_digest(name: str, source: str, prefix: bool, reason: str) -> ChunkFormatError:
    where = "prefix digest" if prefix else "digest"
    return ChunkFormatError(source, f"{where} of {name!r}: {reason}")


def _is_value(value: object) -> bool:
    kind = type(value)
    if kind is int:
        return _INT64_MIN <= value <= _INT64_MAX  # type: ignore[operator]
    return kind in _SCALARS


def _digest_mismatch(stored: Digest, computed: Digest) -> str:
    # Everything is compared exactly except sum, which another writer may
    # have added up in another order.
    for name in ("count", "numeric_count", "first_step", "last_step", "min", "max"):
        if getattr(stored, name) != getattr(computed, name):
            return name
    for name in ("first", "last"):
        if not _same_value(getattr(stored, name), getattr(computed, name)):
            return name
    if not _close_sum(stored, computed):
        return "sum"
    return ""


def _quick_mismatch(
    stored: _DigestFields,
    col: Column,
    steps: np.ndarray[Any, np.dtype[np.int64]],
    ends: tuple[int, int],
) -> str:
    # What a digest must say that needs no pass over the values: its count,
    # its steps, and what the column's kind implies. ``ends`` are the first
    # and last of ``steps``, as ints: a dense column's steps.
    count, first, last, first_step, last_step, _, _, _, numeric_count = stored
    if count != col.count:
        return "count"
    rows = col.rows
    if rows is not None:
        ends = (int(steps[rows[0]]), int(steps[rows[-1]]))
    if first_step != ends[0]:
        return "first_step"
    if last_step != ends[1]:
        return "last_step"

    kind = col.kind
    expected = _FIRST_LAST_TYPE.get(kind)
    if expected is not None and (
        type(first) is not expected or type(last) is not expected
    ):
        return "first/last"
    if kind in ("bool", "str") and numeric_count:
        return "numeric_count"
    if kind == "i8" and numeric_count != count:
        return "numeric_count"
    return ""


# The type of a digest's first and last value, by the kind of its column.
_FIRST_LAST_TYPE: dict[str, type] = {
    "f8": float,
    "f4": float,
    "i8": int,
    "bool": bool,
    "str": str,
}


def _same_value(a: Value, b: Value) -> bool:
    # Floats compare by bit pattern: NaN payloads and -0.0 included.
    if isinstance(a, float) and isinstance(b, float):
        return _F8_BITS.pack(a) == _F8_BITS.pack(b)
    return type(a) is type(b) and a == b


def _close_sum(stored: Digest, computed: Digest) -> bool:
    a, b = stored.sum, computed.sum
    if a is None or b is None or computed.min is None or computed.max is None:
        return a is b
    if not (math.isfinite(a) and math.isfinite(b)):
        return _same_value(a, b)
    # Any summation order stays within n * eps * sum(|x|) of the true sum,
    # and sum(|x|) <= n * max(|min|, |max|).
    n = computed.numeric_count
    bound = n * n * 2.0**-52 * max(abs(computed.min), abs(computed.max))
    return abs(a - b) <= 2 * bound


def _check_name(name: object, source: str) -> None:
    reason = _name_problem(name) if type(name) is str else "must be a string"
    if reason:
        raise ChunkFormatError(source, f"metric name {name!r:.80} {reason}")


def _get(doc: dict[str, Any], key: str, kind: type, source: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise ChunkFormatError(
            source,
            f"field {key!r} must be a {kind.__name__}, not {type(value).__name__}",
        )
    return value


def _get_int(doc: dict[str, Any], key: str, low: int, high: int, source: str) -> int:
    value = doc.get(key)
    if type(value) is not int or not low <= value <= high:
        raise ChunkFormatError(
            source, f"field {key!r} must be an int in [{low}, {high}]"
        )
    return value
